//! `cloudmine mine`: the CPU miner (cpuminer-style flags) and `--benchmark`.

use clap::Args;
use miner::connection::PoolUrl;
use miner::report::Output;
use miner::run::{Backoff, MinerConfig};
use std::time::Duration;
use stratum::client::ClientOptions;
use tokio_util::sync::CancellationToken;

/// Flags of `cloudmine mine`.
#[derive(Args, Debug)]
pub struct MineArgs {
    /// Pool URL, `stratum+tcp://HOST:PORT`; repeat for failover in order.
    #[arg(
        short = 'o',
        long = "url",
        value_name = "URL",
        required_unless_present = "benchmark"
    )]
    pub urls: Vec<String>,
    /// User: payout address, optionally `.worker`.
    #[arg(short = 'u', long = "user", required_unless_present = "benchmark")]
    pub user: Option<String>,
    /// Password (`d=` difficulty hints go here).
    #[arg(
        short = 'p',
        long = "pass",
        env = "CLOUDMINE_MINE_PASSWORD",
        default_value = "x",
        hide_env_values = true
    )]
    pub pass: String,
    /// Hashing threads (default: available cores).
    #[arg(short = 't', long = "threads")]
    pub threads: Option<usize>,
    /// Difficulty to suggest to the pool (mining.suggest_difficulty).
    #[arg(long = "suggest-diff")]
    pub suggest_diff: Option<f64>,
    /// Do not ask for version rolling (mining.configure).
    #[arg(long)]
    pub no_version_rolling: bool,
    /// Do not send mining.extranonce.subscribe.
    #[arg(long)]
    pub no_extranonce_subscribe: bool,
    /// Only warnings and the summary.
    #[arg(short = 'q', long, conflicts_with = "json")]
    pub quiet: bool,
    /// One JSON object per line (events, status, summary).
    #[arg(long)]
    pub json: bool,
    /// Seconds between status lines.
    #[arg(long, default_value_t = 10.0)]
    pub interval: f64,
    /// Stop after this many seconds.
    #[arg(long = "time-limit")]
    pub time_limit: Option<f64>,
    /// First reconnect wait after every pool failed, milliseconds (doubles each round).
    #[arg(long, default_value_t = 500)]
    pub backoff_min_ms: u64,
    /// Longest reconnect wait, seconds.
    #[arg(long, default_value_t = 60)]
    pub backoff_max_s: u64,
    /// On a backup pool, seconds between checks whether the first pool is back (0: never switch back
    /// while the backup works).
    #[arg(long, default_value_t = 60)]
    pub failback_s: u64,
    /// Hash a synthetic job without a pool and print H/s per thread and total.
    #[arg(long)]
    pub benchmark: bool,
    /// Seconds per benchmark window.
    #[arg(long, default_value_t = 3.0)]
    pub benchmark_seconds: f64,
    /// Benchmark windows per phase (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub benchmark_runs: usize,
}

fn seconds(name: &str, s: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| !d.is_zero() && *d <= Duration::from_secs(365 * 86_400))
        .ok_or_else(|| {
            anyhow::anyhow!("--{name} must be a positive number of seconds (at most a year), not {s}")
        })
}

/// Runs the miner (or the benchmark).
pub fn run(a: MineArgs) -> anyhow::Result<()> {
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if threads == 0 || threads > miner::engine::THREADS_MAX {
        anyhow::bail!("--threads must be 1..={}", miner::engine::THREADS_MAX);
    }
    if a.benchmark {
        return benchmark(&a, threads);
    }
    let pools = a
        .urls
        .iter()
        .map(|u| u.parse::<PoolUrl>().map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(d) = a.suggest_diff {
        if !(d.is_finite() && d > 0.0) {
            anyhow::bail!("--suggest-diff must be a positive number, not {d}");
        }
    }
    let cfg = MinerConfig {
        pools,
        client: ClientOptions {
            agent: format!("cloudmine/{}", env!("CARGO_PKG_VERSION")),
            user: a.user.clone().unwrap_or_default(),
            password: a.pass.clone(),
            version_rolling_mask: (!a.no_version_rolling).then_some(0x1fff_e000),
            suggest_difficulty: a.suggest_diff,
            extranonce_subscribe: !a.no_extranonce_subscribe,
        },
        threads,
        status_every: seconds("interval", a.interval)?,
        output: if a.json {
            Output::Json
        } else if a.quiet {
            Output::Quiet
        } else {
            Output::Human
        },
        time_limit: a.time_limit.map(|t| seconds("time-limit", t)).transpose()?,
        backoff: Backoff {
            min: Duration::from_millis(a.backoff_min_ms.max(1)),
            max: Duration::from_secs(a.backoff_max_s.max(1)),
        },
        failback: (a.failback_s > 0).then(|| Duration::from_secs(a.failback_s)),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let s = shutdown.clone();
        let signal = crate::node::shutdown_signal();
        let signals = tokio::spawn(async move {
            signal.await;
            s.cancel();
        });
        let r = miner::run::run(cfg, shutdown).await;
        signals.abort();
        r.map(|_| ()).map_err(anyhow::Error::from)
    })
}

fn benchmark(a: &MineArgs, threads: usize) -> anyhow::Result<()> {
    use miner::bench::median;
    let r = miner::bench::run(threads, a.benchmark_seconds, a.benchmark_runs)?;
    let one = median(&r.one_thread);
    let all = median(&r.all_threads);
    let sw = median(&r.switch_ms);
    let sw_max = r.switch_ms.iter().copied().fold(0.0, f64::max);
    if a.json {
        println!(
            "{}",
            serde_json::json!({"event": "benchmark", "sha_ni": r.sha_ni, "threads": r.threads,
                "one_thread_hps": r.one_thread, "all_threads_hps": r.all_threads, "per_thread_hps": r.per_thread,
                "median_one_thread_hps": one, "median_all_threads_hps": all, "scaling": all / one.max(1.0),
                "job_switch_ms_median": sw, "job_switch_ms_max": sw_max})
        );
        return Ok(());
    }
    let mh = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{:.2}", x / 1e6))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "cloudmine mine --benchmark: synthetic job (12-level branch, version rolling 1fffe000, difficulty 1), {} kernel, {} s windows, median of {}",
        if r.sha_ni { "SHA-NI 4-way" } else { "portable" },
        a.benchmark_seconds,
        r.one_thread.len()
    );
    println!(
        "  1 thread : {:.2} MH/s   (runs: {})",
        one / 1e6,
        mh(&r.one_thread)
    );
    println!(
        "  {} threads: {:.2} MH/s = {} per thread, {:.2}x one thread   (runs: {})",
        r.threads,
        all / 1e6,
        r.per_thread
            .iter()
            .map(|x| format!("{:.2}", x / 1e6))
            .collect::<Vec<_>>()
            .join(" + "),
        all / one.max(1.0),
        mh(&r.all_threads)
    );
    println!(
        "  new job to every thread: median {:.3} ms, max {:.3} ms ({} switches)",
        sw,
        sw_max,
        r.switch_ms.len()
    );
    Ok(())
}
