//! The one share validator: steps 2–6 of stratum-v1.md §9 for one connection's jobs, with no I/O,
//! no clock (time is passed in) and nothing only a pool would assume, so the pool, the marketplace
//! proxy and any other downstream server judge shares the same way.
//!
//! A connection's [`ShareValidator`] holds the jobs it issued (each with the difficulty in force
//! when it was sent, the per-connection coinbase prefix, and a caller payload `T`) and the
//! submissions already accepted per job. [`ShareValidator::check`] runs, in order: extranonce2
//! size, job lookup (stale), version bits inside the negotiated mask, ntime window, duplicate
//! (keyed on the parsed EN2, ntime, nonce and rolled version, per [`IssuedJob::dedup_id`]), then
//! hashes the header and compares it with the job's target. Subscription and authorization (step
//! 1) and what to do with an accepted share (block submission, durability) stay with the caller.
//!
//! **One piece of work, one live id, one difficulty.** Were the same work live under ids at two
//! difficulties, a miner could send each hash under whichever id pays more (the "difficulty
//! ladder": 1.7× the honest credit with two ids). The pool never re-sends the same work (a
//! difficulty change sends a variant with its own coinbase); a caller that does re-issue it (same
//! `dedup_id`) has [`ShareValidator::issue`] retire every older id of that work, so its shares are
//! judged and credited at the newest difficulty only, and a late share on a retired id is stale
//! ([`Reject::JobNotFound`]). Retiring alone does not stop a ladder climbed one rung after another
//! (suggest `4d`, send the hashes that meet it, suggest `d`, send the rest): only new work per
//! difficulty does.
//!
//! **Seen once durable.** [`ShareValidator::check`] reserves an accepted submission so a second copy
//! is a duplicate at once (pipelined copies cannot both pass); a caller that could not make the share
//! durable calls [`ShareValidator::release`], so the miner's retry is judged afresh, not refused as a
//! duplicate.

use crate::share::{BatchHasher, CoinbasePrefix, PreparedJob, ShareCheck, ShareInput};
use std::collections::{HashMap, HashSet, VecDeque};
use units::{Difficulty, Target};

/// What the validator needs to know of the caller's job payload.
pub trait IssuedWork {
    /// The prepared job (coinbase halves, branch, version, nbits) the share is hashed against.
    fn prepared(&self) -> &PreparedJob;
}

/// A job as sent on one connection.
#[derive(Debug, Clone)]
pub struct IssuedJob<T> {
    /// The id the miner was given.
    pub id: u64,
    /// The work's id: the same work re-sent under another id (at a new difficulty) carries the same
    /// `dedup_id`, shares its duplicates, and retires the older id ([`ShareValidator::issue`]).
    pub dedup_id: u64,
    /// The coinbase prefix (`coinb1 ‖ EN1`) precomputed for this connection's extranonce1.
    pub prefix: CoinbasePrefix,
    /// Smallest ntime the chain allows for this job (its template's `mintime`).
    pub min_time: u32,
    /// The difficulty in force when the job was sent: the share is judged and credited at it.
    pub difficulty: Difficulty,
    /// `difficulty.to_target()`.
    pub target: Target,
    /// The caller's data (the pool: its job and coinbase; a proxy: the upstream mapping).
    pub payload: T,
}

/// One parsed `mining.submit`.
#[derive(Debug, Clone, Copy)]
pub struct Submission<'a> {
    /// The job id as sent by the miner, parsed (`None` when it is not a number: unknown job).
    pub job_id: Option<u64>,
    /// Extranonce2 bytes.
    pub extranonce2: &'a [u8],
    /// ntime.
    pub ntime: u32,
    /// nonce.
    pub nonce: u32,
    /// Version bits (BIP310), if sent.
    pub version_bits: Option<u32>,
}

/// Why a share was refused, in §9 order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    /// Extranonce2 is not the size the connection was given.
    #[error("extranonce2 must be {0} bytes")]
    Extranonce2Size(usize),
    /// No such job on this connection (never sent, or dropped by a newer block): stale.
    #[error("Job not found")]
    JobNotFound,
    /// Version bits outside the negotiated mask.
    #[error("Invalid version bits: {0}")]
    VersionBits(String),
    /// ntime before the job's mintime or too far past the caller's clock.
    #[error("Ntime out of range")]
    NtimeOutOfRange,
    /// The same submission was accepted before.
    #[error("Duplicate share")]
    Duplicate,
    /// The hash does not meet the job's target.
    #[error("Low difficulty share")]
    LowDifficulty,
}

/// A reserved submission: what [`ShareValidator::release`] takes to forget it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    dedup_id: u64,
    key: ShareKey,
}

/// An accepted share: the job it was for, the hashed header, the rolled version, and whether the
/// hash also meets the network target.
#[derive(Debug)]
pub struct Accepted<'a, T> {
    /// The submission as reserved against duplicates; give it back to
    /// [`ShareValidator::release`] if the share could not be made durable.
    pub reservation: Reservation,
    /// The job.
    pub job: &'a IssuedJob<T>,
    /// Header and hash.
    pub check: ShareCheck,
    /// The header's version after rolling.
    pub version: u32,
    /// The hash meets the network target: a block.
    pub is_block: bool,
}

/// The parsed submission, the duplicate key (stratum-v1.md §9 step 5).
#[derive(Debug, Hash, PartialEq, Eq, Clone, Copy)]
struct ShareKey {
    en2: u64,
    ntime: u32,
    nonce: u32,
    version: u32,
}

/// One connection's issued jobs and accepted submissions.
#[derive(Debug)]
pub struct ShareValidator<T> {
    jobs: VecDeque<IssuedJob<T>>,
    seen: HashMap<u64, HashSet<ShareKey>>,
    hasher: BatchHasher,
    keep: usize,
    extranonce2_size: usize,
}

impl<T: IssuedWork> ShareValidator<T> {
    /// Keeps the newest `keep` (at least 1) jobs; extranonce2 must be `extranonce2_size` (1–8) bytes.
    pub fn new(keep: usize, extranonce2_size: usize) -> ShareValidator<T> {
        ShareValidator {
            jobs: VecDeque::new(),
            seen: HashMap::new(),
            hasher: BatchHasher::new(),
            keep: keep.max(1),
            extranonce2_size: extranonce2_size.clamp(1, 8),
        }
    }

    /// The newest job sent.
    pub fn newest(&self) -> Option<&IssuedJob<T>> {
        self.jobs.back()
    }

    /// Whether work with this dedup id is among the kept jobs.
    pub fn has_dedup_id(&self, dedup_id: u64) -> bool {
        self.jobs.iter().any(|j| j.dedup_id == dedup_id)
    }

    /// Forgets every job and accepted submission (e.g. a new extranonce1: old work is void).
    pub fn clear(&mut self) {
        self.jobs.clear();
        self.seen.clear();
    }

    /// Records a job as sent. `clean` (a new prevhash) drops the older jobs first; the same work
    /// sent before under other ids (same `dedup_id`) is retired, so one piece of work is live under
    /// one id at one difficulty; past `keep` the oldest is dropped; accepted submissions are
    /// forgotten with the last job that carries their dedup id.
    pub fn issue(&mut self, job: IssuedJob<T>, clean: bool) {
        if clean {
            self.jobs.clear();
            let keep = job.dedup_id;
            self.seen.retain(|id, _| *id == keep);
        }
        self.jobs.retain(|j| j.dedup_id != job.dedup_id);
        self.jobs.push_back(job);
        while self.jobs.len() > self.keep {
            if let Some(old) = self.jobs.pop_front() {
                if !self.has_dedup_id(old.dedup_id) {
                    self.seen.remove(&old.dedup_id);
                }
            }
        }
    }

    /// Judges a submission (§9 steps 2–6) with version-rolling `mask` (0 if not negotiated), at
    /// `now_s` (unix seconds) allowing ntime up to `ntime_future_s` ahead. An accepted share is
    /// recorded, so the same submission is a duplicate from then on.
    pub fn check(
        &mut self,
        s: &Submission<'_>,
        mask: u32,
        now_s: u32,
        ntime_future_s: u32,
    ) -> Result<Accepted<'_, T>, Reject> {
        if s.extranonce2.len() != self.extranonce2_size {
            return Err(Reject::Extranonce2Size(self.extranonce2_size));
        }
        let idx = s
            .job_id
            .and_then(|id| self.jobs.iter().position(|j| j.id == id))
            .ok_or(Reject::JobNotFound)?;
        let job = self.jobs.get(idx).ok_or(Reject::JobNotFound)?;
        let prepared = job.payload.prepared();
        let version = crate::roll_version(prepared.version, s.version_bits.unwrap_or(0), mask)
            .map_err(|e| Reject::VersionBits(e.to_string()))?;
        if s.ntime < job.min_time || s.ntime > now_s.saturating_add(ntime_future_s) {
            return Err(Reject::NtimeOutOfRange);
        }
        let mut en2 = [0u8; 8];
        en2.get_mut(..s.extranonce2.len())
            .ok_or(Reject::Extranonce2Size(self.extranonce2_size))?
            .copy_from_slice(s.extranonce2);
        let key = ShareKey {
            en2: u64::from_le_bytes(en2),
            ntime: s.ntime,
            nonce: s.nonce,
            version,
        };
        if self.seen.get(&job.dedup_id).is_some_and(|set| set.contains(&key)) {
            return Err(Reject::Duplicate);
        }
        let check = self.hasher.hash_one(&ShareInput {
            job: prepared,
            prefix: &job.prefix,
            en2: s.extranonce2,
            ntime: s.ntime,
            nonce: s.nonce,
            version,
        });
        if !check.meets(job.target) {
            return Err(Reject::LowDifficulty);
        }
        let is_block = check.meets(prepared.network_target);
        self.seen.entry(job.dedup_id).or_default().insert(key);
        Ok(Accepted {
            reservation: Reservation {
                dedup_id: job.dedup_id,
                key,
            },
            job,
            check,
            version,
            is_block,
        })
    }
}

impl<T> ShareValidator<T> {
    /// Forgets an accepted submission that was not made durable (a failed commit, a refusal after
    /// validation): the miner's retry is judged again instead of refused as a duplicate.
    pub fn release(&mut self, r: Reservation) {
        if let Some(set) = self.seen.get_mut(&r.dedup_id) {
            set.remove(&r.key);
        }
    }

    /// Submissions held against duplicates (for limits and tests).
    pub fn seen_len(&self) -> usize {
        self.seen.values().map(HashSet::len).sum()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
    use super::*;

    #[derive(Debug)]
    struct Work(PreparedJob);
    impl IssuedWork for Work {
        fn prepared(&self) -> &PreparedJob {
            &self.0
        }
    }

    const EN1: [u8; 4] = [1, 2, 3, 4];
    const NTIME: u32 = 1_700_000_000;

    /// A job on regtest's easiest bits, at difficulty 2^-31: about half of all nonces meet it.
    fn job(id: u64, dedup_id: u64, min_time: u32) -> IssuedJob<Work> {
        let d = Difficulty::from_fixed(2);
        let p = PreparedJob::new(
            vec![0x01; 42],
            vec![0x02; 60],
            vec![[7u8; 32]],
            0x2000_0000,
            [9u8; 32],
            0x207f_ffff,
            NTIME,
        )
        .unwrap();
        IssuedJob {
            id,
            dedup_id,
            prefix: p.prefix(&EN1),
            min_time,
            difficulty: d,
            target: d.to_target(),
            payload: Work(p),
        }
    }

    fn sub(job_id: Option<u64>, en2: &[u8], nonce: u32, bits: Option<u32>) -> Submission<'_> {
        Submission {
            job_id,
            extranonce2: en2,
            ntime: NTIME,
            nonce,
            version_bits: bits,
        }
    }

    /// A nonce whose share meets the job's target, from `from` on.
    fn good_nonce(v: &mut ShareValidator<Work>, id: u64, en2: &[u8], from: u32) -> u32 {
        (from..from + 1000)
            .find(|n| {
                let j = v.jobs.iter().find(|j| j.id == id).unwrap();
                let c = v.hasher.hash_one(&ShareInput {
                    job: &j.payload.0,
                    prefix: &j.prefix,
                    en2,
                    ntime: NTIME,
                    nonce: *n,
                    version: j.payload.0.version,
                });
                c.meets(j.target)
            })
            .unwrap()
    }

    #[test]
    fn rejects_in_the_order_of_the_brief_and_accepts_exactly_once() {
        let mut v = ShareValidator::new(4, 4);
        v.issue(job(5, 5, NTIME - 10), true);
        let en2 = [0u8, 0, 0, 1];
        let n = good_nonce(&mut v, 5, &en2, 0);
        let now = NTIME;
        assert_eq!(
            v.check(&sub(Some(5), &[0; 3], n, None), 0, now, 7200)
                .unwrap_err(),
            Reject::Extranonce2Size(4)
        );
        assert_eq!(
            v.check(&sub(Some(6), &en2, n, None), 0, now, 7200).unwrap_err(),
            Reject::JobNotFound
        );
        assert_eq!(
            v.check(&sub(None, &en2, n, None), 0, now, 7200).unwrap_err(),
            Reject::JobNotFound
        );
        assert!(matches!(
            v.check(&sub(Some(5), &en2, n, Some(0x0000_2000)), 0, now, 7200)
                .unwrap_err(),
            Reject::VersionBits(_)
        ));
        assert_eq!(
            v.check(&sub(Some(5), &en2, n, None), 0, NTIME - 7201, 7200)
                .unwrap_err(),
            Reject::NtimeOutOfRange
        );
        let a = v.check(&sub(Some(5), &en2, n, None), 0, now, 7200).unwrap();
        assert_eq!(a.job.id, 5);
        assert!(a.check.meets(Difficulty::from_fixed(2).to_target()));
        assert_eq!(
            v.check(&sub(Some(5), &en2, n, None), 0, now, 7200).unwrap_err(),
            Reject::Duplicate
        );
        // A nonce whose hash misses the target.
        let bad = (0..1000u32)
            .find(|m| *m != n && good_nonce(&mut v, 5, &en2, *m) != *m)
            .unwrap();
        assert_eq!(
            v.check(&sub(Some(5), &en2, bad, None), 0, now, 7200).unwrap_err(),
            Reject::LowDifficulty
        );
    }

    #[test]
    fn a_resend_retires_the_older_id_and_clean_work_drops_the_old_jobs() {
        let mut v = ShareValidator::new(4, 4);
        v.issue(job(5, 5, 0), true);
        let en2 = [0u8, 0, 0, 2];
        let n = good_nonce(&mut v, 5, &en2, 0);
        v.check(&sub(Some(5), &en2, n, None), 0, NTIME, 7200).unwrap();
        // The same work re-sent under id 9 (a new difficulty): id 5 is retired (stale), and what was
        // accepted under it is still a duplicate under 9.
        v.issue(job(9, 5, 0), false);
        assert!(v.has_dedup_id(5));
        assert_eq!(
            v.check(&sub(Some(5), &en2, n, None), 0, NTIME, 7200).unwrap_err(),
            Reject::JobNotFound
        );
        assert_eq!(
            v.check(&sub(Some(9), &en2, n, None), 0, NTIME, 7200).unwrap_err(),
            Reject::Duplicate
        );
        // Rolled version bits make another submission.
        let mask = 0x1fff_e000;
        let rolled = (0..1000u32)
            .find(|m| {
                let mut w = ShareValidator::new(1, 4);
                w.issue(job(1, 1, 0), true);
                w.check(&sub(Some(1), &en2, *m, Some(0x2000)), mask, NTIME, 7200)
                    .is_ok()
            })
            .unwrap();
        assert!(v
            .check(&sub(Some(9), &en2, rolled, Some(0x2000)), mask, NTIME, 7200)
            .is_ok());
        // A new prevhash: the old jobs are stale.
        v.issue(job(12, 12, 0), true);
        assert!(!v.has_dedup_id(5));
        assert_eq!(
            v.check(&sub(Some(9), &en2, n, None), 0, NTIME, 7200).unwrap_err(),
            Reject::JobNotFound
        );
        // Past `keep` the oldest goes.
        for id in 13..17 {
            v.issue(job(id, id, 0), false);
        }
        assert_eq!(v.newest().unwrap().id, 16);
        assert!(!v.has_dedup_id(12));
    }

    /// The difficulty ladder: the same work under ids at difficulties d and 4d. With only the newest
    /// id live, no hash can be credited at a difficulty other than the one in force.
    #[test]
    fn no_two_ids_of_one_work_are_live_at_once() {
        let mut v = ShareValidator::new(16, 4);
        v.issue(job(1, 1, 0), true);
        for id in 2..10 {
            v.issue(job(id, 1, 0), false);
            let live: Vec<u64> = v.jobs.iter().filter(|j| j.dedup_id == 1).map(|j| j.id).collect();
            assert_eq!(live, vec![id]);
        }
        // Other work stays live beside it.
        v.issue(job(20, 20, 0), false);
        v.issue(job(21, 1, 0), false);
        let ids: Vec<u64> = v.jobs.iter().map(|j| j.id).collect();
        assert_eq!(ids, vec![20, 21]);
    }

    #[test]
    fn a_released_share_is_judged_again() {
        let mut v = ShareValidator::new(4, 4);
        v.issue(job(5, 5, 0), true);
        let en2 = [0u8, 0, 0, 3];
        let n = good_nonce(&mut v, 5, &en2, 0);
        let r = v
            .check(&sub(Some(5), &en2, n, None), 0, NTIME, 7200)
            .unwrap()
            .reservation;
        assert_eq!(
            v.check(&sub(Some(5), &en2, n, None), 0, NTIME, 7200).unwrap_err(),
            Reject::Duplicate
        );
        assert_eq!(v.seen_len(), 1);
        v.release(r);
        assert_eq!(v.seen_len(), 0);
        assert!(v.check(&sub(Some(5), &en2, n, None), 0, NTIME, 7200).is_ok());
    }
}
