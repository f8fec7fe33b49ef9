//! Variable difficulty, one implementation for pool, proxy and miner. Sans I/O: time is passed in.
//!
//! The estimate is work-based: the window sums the assigned difficulty of every share (`Σ D_i · 2^32`
//! expected hashes), so a difficulty change inside the window does not bias it. When the window is
//! long enough (or has plenty of shares) the ideal difficulty is
//! `hashrate · 60 / (shares_per_min · 2^32)`; it is applied only when it differs from the current one
//! by more than the hysteresis band, each step is bounded, and the result is clamped to `[min, max]`.
//! A connection that goes quiet is lowered on [`Vardiff::on_tick`]: with no share for
//! [`VardiffConfig::quiet_intervals`] expected share intervals (10 s at 18/min) the difficulty is cut
//! as if half a share had come, so a device far slower than the start difficulty assumes gets its
//! first share within seconds (a retarget on time, not only on shares).
//!
//! Suggestions (`mining.suggest_difficulty`, `d=`) are hints: [`Vardiff::set`] moves the difficulty
//! but keeps the work-based estimate, and a connection whose share rate exceeds
//! [`VardiffConfig::flood_factor`] × the target rate is raised at once to its estimated ideal (no
//! minimum interval; one step of up to `step_max²`), whatever it suggested. A suggestion therefore buys at most
//! about [`VardiffConfig::eval_shares`] cheap shares before the difficulty is back where the
//! hashrate puts it.

use units::{Difficulty, Work};

/// Vardiff settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VardiffConfig {
    /// Target share rate (default 18/min: ~10 % hashrate error over 5 minutes).
    pub shares_per_min: f64,
    /// Floor.
    pub min: Difficulty,
    /// Ceiling.
    pub max: Difficulty,
    /// Evaluate after this many shares (fast ramp for a miner far below its difficulty).
    pub eval_shares: u32,
    /// Evaluate after this long in any case.
    pub eval_window_ms: u64,
    /// Never retarget sooner than this after the last change.
    pub min_interval_ms: u64,
    /// No change while ideal/current is inside `[1/band, band]`.
    pub hysteresis_band: f64,
    /// Largest factor of one step, up or down (a flood is raised without this bound).
    pub step_max: f64,
    /// Share rate, in multiples of `shares_per_min`, past which the connection floods: it is raised
    /// to its ideal difficulty at once.
    pub flood_factor: f64,
    /// No share for this many expected share intervals (`60 / shares_per_min` s each): lower now.
    pub quiet_intervals: f64,
}

impl Default for VardiffConfig {
    fn default() -> Self {
        VardiffConfig {
            shares_per_min: 18.0,
            min: Difficulty::from_f64(0.001).unwrap_or(Difficulty::MIN),
            max: Difficulty::from_int(1u64 << 40),
            eval_shares: 36,
            eval_window_ms: 60_000,
            min_interval_ms: 5_000,
            hysteresis_band: 1.4,
            step_max: 64.0,
            flood_factor: 8.0,
            quiet_intervals: 3.0,
        }
    }
}

/// Per-connection vardiff state.
#[derive(Clone, Debug)]
pub struct Vardiff {
    cfg: VardiffConfig,
    current: Difficulty,
    window_start_ms: u64,
    window_work: Work,
    window_shares: u32,
    last_change_ms: u64,
}

impl Vardiff {
    /// Starts at `initial` (clamped) at time `now_ms`.
    pub fn new(cfg: VardiffConfig, initial: Difficulty, now_ms: u64) -> Vardiff {
        let current = initial.max(cfg.min).min(cfg.max);
        Vardiff {
            cfg,
            current,
            window_start_ms: now_ms,
            window_work: Work::ZERO,
            window_shares: 0,
            last_change_ms: now_ms,
        }
    }

    /// The difficulty for the next job.
    pub fn current(&self) -> Difficulty {
        self.current
    }

    /// Sets the difficulty from outside (a suggestion), clamped. The work-based estimate is kept
    /// (a difficulty change inside the window does not bias it), so a connection that floods after
    /// a low suggestion is raised again on its next evaluation.
    pub fn set(&mut self, d: Difficulty, now_ms: u64) -> Difficulty {
        self.current = d.max(self.cfg.min).min(self.cfg.max);
        self.last_change_ms = now_ms;
        self.current
    }

    /// Raises the floor (BIP310 `minimum-difficulty`).
    pub fn raise_min(&mut self, min: Difficulty) {
        self.cfg.min = min.min(self.cfg.max).max(self.cfg.min);
        self.current = self.current.max(self.cfg.min);
    }

    fn restart(&mut self, now_ms: u64) {
        self.window_start_ms = now_ms;
        self.window_work = Work::ZERO;
        self.window_shares = 0;
        self.last_change_ms = now_ms;
    }

    /// Records an accepted share credited at `assigned`; returns a new difficulty if one is due.
    pub fn on_share(&mut self, assigned: Difficulty, now_ms: u64) -> Option<Difficulty> {
        self.window_work = self.window_work.saturating_add(assigned.work());
        self.window_shares = self.window_shares.saturating_add(1);
        let elapsed = now_ms.saturating_sub(self.window_start_ms);
        if self.window_shares >= self.cfg.eval_shares || elapsed >= self.cfg.eval_window_ms {
            let flood = self.flooding(now_ms);
            return self.evaluate(now_ms, flood);
        }
        None
    }

    /// Periodic check; returns a lower difficulty if one is due: at once for a connection with no
    /// share for `quiet_intervals` expected intervals, otherwise after two windows of few shares.
    pub fn on_tick(&mut self, now_ms: u64) -> Option<Difficulty> {
        let elapsed = now_ms.saturating_sub(self.window_start_ms);
        let quiet_ms = self.cfg.quiet_intervals * 60_000.0 / self.cfg.shares_per_min.max(1e-9);
        if (self.window_shares == 0 && elapsed as f64 >= quiet_ms) || elapsed >= 2 * self.cfg.eval_window_ms {
            return self.evaluate(now_ms, false);
        }
        None
    }

    /// Whether the connection sends shares faster than the flood bound allows.
    pub fn flooding(&self, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.window_start_ms).max(1);
        f64::from(self.window_shares) * 60_000.0 / elapsed as f64
            > self.cfg.flood_factor * self.cfg.shares_per_min
    }

    fn evaluate(&mut self, now_ms: u64, flood: bool) -> Option<Difficulty> {
        let elapsed_ms = now_ms.saturating_sub(self.window_start_ms).max(1);
        if !flood && now_ms.saturating_sub(self.last_change_ms) < self.cfg.min_interval_ms {
            return None;
        }
        // With no share at all, assume half a share arrived (keeps the estimate finite and conservative).
        let work = if self.window_shares == 0 {
            self.current.work().hashes() as f64 / 2.0
        } else {
            self.window_work.hashes() as f64
        };
        let hashrate = work * 1000.0 / elapsed_ms as f64;
        let ideal = hashrate * 60.0 / (self.cfg.shares_per_min * 4_294_967_296.0);
        let cur = self.current.to_f64();
        let ratio = ideal / cur;
        if !ratio.is_finite()
            || (ratio <= self.cfg.hysteresis_band && ratio >= 1.0 / self.cfg.hysteresis_band)
        {
            // Keep the window growing when on target, but not forever (stale history).
            if elapsed_ms >= 5 * self.cfg.eval_window_ms {
                self.window_start_ms = now_ms;
                self.window_work = Work::ZERO;
                self.window_shares = 0;
            }
            return None;
        }
        // A flood is raised by up to step_max² at once (a burst right after a window restart cannot
        // throw the difficulty arbitrarily far); a value past what a difficulty can hold saturates
        // toward the side it was heading.
        let step = if flood && ratio > 1.0 {
            ratio.min(self.cfg.step_max * self.cfg.step_max)
        } else {
            ratio.clamp(1.0 / self.cfg.step_max, self.cfg.step_max)
        };
        let fallback = if step > 1.0 { self.cfg.max } else { self.cfg.min };
        let next = Difficulty::from_f64(cur * step)
            .unwrap_or(fallback)
            .max(self.cfg.min)
            .min(self.cfg.max);
        self.restart(now_ms);
        if next == self.current {
            return None;
        }
        self.current = next;
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic Poisson miner: exponential inter-arrival times from an LCG.
    struct Miner {
        hashrate: f64,
        state: u64,
    }
    impl Miner {
        fn next_gap_ms(&mut self, d: Difficulty) -> u64 {
            self.state = self
                .state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = ((self.state >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            let mean_s = d.to_f64() * 4_294_967_296.0 / self.hashrate;
            (-u.ln() * mean_s * 1000.0) as u64
        }
    }

    fn converge(hashrate: f64, start: Difficulty) -> (Difficulty, f64) {
        let cfg = VardiffConfig::default();
        let mut v = Vardiff::new(cfg, start, 0);
        let mut m = Miner { hashrate, state: 42 };
        let mut now = 0u64;
        // 20 simulated minutes
        while now < 20 * 60_000 {
            let d = v.current();
            now += m.next_gap_ms(d).max(1);
            v.on_share(d, now);
            v.on_tick(now);
        }
        let ideal = hashrate * 60.0 / (18.0 * 4_294_967_296.0);
        (v.current(), ideal)
    }

    #[test]
    fn converges_from_far_below_and_far_above() {
        for (h, start) in [(1.0e12, 1.0), (40.0e6, 1.0), (40.0e6, 0.001), (500.0e12, 1.0)] {
            let (got, ideal) = converge(h, Difficulty::from_f64(start).unwrap());
            let r = got.to_f64() / ideal;
            assert!((0.6..=1.6).contains(&r), "hashrate {h}: got {got}, ideal {ideal}");
        }
    }

    #[test]
    fn quiet_connection_is_lowered_and_floor_holds() {
        let cfg = VardiffConfig {
            min: Difficulty::from_int(1),
            ..VardiffConfig::default()
        };
        let mut v = Vardiff::new(cfg, Difficulty::from_int(1024), 0);
        assert!(v.on_tick(5_000).is_none());
        // no share for 3 expected intervals (10 s at 18/min): lowered as if half a share had come
        let lowered = v.on_tick(10_000).unwrap();
        assert!(lowered < Difficulty::from_int(200), "{lowered}");
        for t in 1..100u64 {
            v.on_tick(10_000 + t * 240_000);
        }
        assert_eq!(v.current(), Difficulty::from_int(1));
        // suggestions are clamped
        assert_eq!(
            v.set(Difficulty::from_f64(0.01).unwrap(), 0),
            Difficulty::from_int(1)
        );
    }

    /// A CPU thread (22 MH/s) at a start difficulty of 1 (a share every ~195 s): lowered on time
    /// alone, its first share comes within a minute, not after minutes.
    #[test]
    fn a_slow_device_is_lowered_on_time() {
        let cfg = VardiffConfig::default();
        let mut v = Vardiff::new(cfg, Difficulty::ONE, 0);
        let mut m = Miner {
            hashrate: 22.0e6,
            state: 7,
        };
        let mut now = 0u64;
        // ticks every 5 s until the first share
        let mut next_share = m.next_gap_ms(v.current());
        let mut d_at = v.current();
        while now < next_share {
            now += 5_000;
            if v.on_tick(now).is_some() && v.current() != d_at {
                // new difficulty: the search starts over (memoryless)
                d_at = v.current();
                next_share = now + m.next_gap_ms(d_at);
            }
        }
        assert!(now <= 45_000, "first share at {now} ms");
    }

    /// Re-suggesting the floor every 5 s does not pin a 1 TH/s device there: the flood bound raises
    /// it back within about `eval_shares` shares each time.
    #[test]
    fn suggestions_cannot_flood() {
        let cfg = VardiffConfig::default();
        let floor = Difficulty::from_f64(0.001).unwrap();
        let mut v = Vardiff::new(cfg, floor, 0);
        let mut m = Miner {
            hashrate: 1.0e12,
            state: 11,
        };
        let mut now = 0u64;
        let mut shares = 0u64;
        let mut next_suggest = 5_000u64;
        while now < 600_000 {
            if now >= next_suggest {
                v.set(floor, now);
                next_suggest += 5_000;
            }
            let d = v.current();
            now += m.next_gap_ms(d);
            shares += 1;
            v.on_share(d, now);
            v.on_tick(now);
        }
        // honest: 18/min = 180 in 10 minutes; each suggestion (120 of them) costs ~36·(a few) more.
        let per_s = shares as f64 / 600.0;
        assert!(per_s < 100.0, "{shares} shares in 600 s");
    }
}
