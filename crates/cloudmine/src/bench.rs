//! `cloudmine bench …`: benchmarks that print figures. Method: a fixed synthetic workload, several timed
//! runs of about a second each on one thread, median and spread reported.

use clap::Subcommand;
use mining_core::{BatchHasher, PreparedJob, ShareInput};
use std::time::Instant;
use units::Difficulty;

/// Which benchmark.
#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// Share validation (coinbase of --coinbase-bytes, 12-level branch, header, compare) and bare header sha256d, one core.
    Validate {
        /// Timed runs (the median is reported).
        #[arg(long, default_value_t = 7)]
        runs: usize,
        /// Seconds per run.
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
        /// Shares hashed per batch (pairs are interleaved).
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Coinbase size in bytes (200: one payout output; coinbase payees add 31–43 bytes each,
        /// so 200 P2WPKH payees make about 6,400).
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(120..=100_000))]
        coinbase_bytes: u64,
    },
    /// Loopback load on a real `cloudmine serve`: connections held, server RSS, shares/s, latency.
    Pool(crate::loadgen::PoolBench),
    /// Balanced ledger transactions per second (durable batches), on SQLite or PostgreSQL.
    Ledger {
        /// `postgres://…`, `sqlite://PATH` or a path; default: a SQLite file in a temp directory.
        #[arg(long)]
        database_url: Option<String>,
        /// Transfers to post.
        #[arg(long, default_value_t = 200_000)]
        transactions: usize,
        /// Transactions per database transaction (one commit each).
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// Users the transfers move between.
        #[arg(long, default_value_t = 1000)]
        users: usize,
    },
    /// Accepted shares ingested into accounting (the ledger's work log), durable per batch.
    Ingest {
        /// `postgres://…`, `sqlite://PATH` or a path; default: a SQLite file in a temp directory.
        #[arg(long)]
        database_url: Option<String>,
        /// Shares to ingest.
        #[arg(long, default_value_t = 1_000_000)]
        shares: usize,
        /// Shares per call (one database transaction each).
        #[arg(long, default_value_t = 10_000)]
        batch: usize,
    },
    /// PPLNS/TIDES split of a block over a window of shares (in memory, one core).
    Split {
        /// Shares in the window.
        #[arg(long, default_value_t = 10_000_000)]
        shares: usize,
        /// Distinct owners.
        #[arg(long, default_value_t = 1000)]
        owners: usize,
        /// Timed runs (the median is reported).
        #[arg(long, default_value_t = 7)]
        runs: usize,
    },
    /// (internal) one load process of `bench pool`.
    #[command(hide = true)]
    PoolLoad {
        /// Pool address.
        #[arg(long)]
        addr: std::net::SocketAddr,
        /// Connections in this process.
        #[arg(long)]
        connections: usize,
        /// Seconds measured.
        #[arg(long)]
        seconds: u64,
        /// Seconds of warm-up.
        #[arg(long)]
        warmup: u64,
        /// Shares per second per connection (0: unpaced).
        #[arg(long, default_value_t = 0.0)]
        share_rate: f64,
        /// Submits in flight per connection.
        #[arg(long, default_value_t = 1)]
        pipeline: usize,
    },
}

/// Runs a benchmark.
pub fn run(cmd: BenchCmd) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Validate {
            runs,
            seconds,
            batch,
            coinbase_bytes,
        } => validate(runs.max(1), seconds, batch.max(1), coinbase_bytes),
        BenchCmd::Pool(b) => crate::loadgen::orchestrate(b),
        BenchCmd::Ledger {
            database_url,
            transactions,
            batch,
            users,
        } => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?
            .block_on(ledger_bench(
                database_url,
                transactions,
                batch.clamp(1, ledger::store::BATCH_MAX),
                users.max(2),
            )),
        BenchCmd::Ingest {
            database_url,
            shares,
            batch,
        } => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?
            .block_on(ingest_bench(
                database_url,
                shares,
                batch.clamp(1, ledger::store::WORK_INGEST_MAX),
            )),
        BenchCmd::Split { shares, owners, runs } => split_bench(shares.max(1), owners.max(1), runs.max(1)),
        BenchCmd::PoolLoad {
            addr,
            connections,
            seconds,
            warmup,
            share_rate,
            pipeline,
        } => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?
            .block_on(crate::loadgen::load(
                addr,
                connections,
                seconds,
                warmup,
                share_rate,
                pipeline.clamp(1, 64),
            )),
    }
}

fn median(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let mid = v.get(v.len() / 2).copied().unwrap_or(0.0);
    (
        mid,
        v.first().copied().unwrap_or(0.0),
        v.last().copied().unwrap_or(0.0),
    )
}

fn timed(runs: usize, seconds: f64, mut step: impl FnMut() -> u64) -> Vec<f64> {
    (0..runs)
        .map(|_| {
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed().as_secs_f64() < seconds {
                n += step();
            }
            n as f64 / start.elapsed().as_secs_f64()
        })
        .collect()
}

fn validate(runs: usize, seconds: f64, batch: usize, coinbase_bytes: u64) -> anyhow::Result<()> {
    println!("sha-ni: {}", sha256d::has_sha_ni());
    // Coinbase (200 bytes by default): coinb1 (100) + EN1 (4) + EN2 (4) + coinb2 (the rest, 92);
    // 12-level merkle branch.
    let coinb1: Vec<u8> = (0..100u8).collect();
    let coinb2: Vec<u8> = (0..coinbase_bytes.saturating_sub(108))
        .map(|b| (b as u8).wrapping_mul(7))
        .collect();
    println!("coinbase: {coinbase_bytes} bytes");
    let branch: Vec<[u8; 32]> = (0..12u8).map(|i| [i; 32]).collect();
    let job = PreparedJob::new(
        coinb1,
        coinb2,
        branch,
        0x2000_0000,
        [3; 32],
        0x1d00ffff,
        1_700_000_000,
    )?;
    let prefix = job.prefix(&[1, 2, 3, 4]);
    let target = Difficulty::from_int(1).to_target();
    let en2s: Vec<[u8; 4]> = (0..batch as u32).map(|i| i.to_le_bytes()).collect();
    let mut hasher = BatchHasher::new();
    let mut out = Vec::with_capacity(batch);
    let mut nonce = 0u32;
    let mut accepted = 0u64;

    let mut share_rates = timed(runs, seconds, || {
        let inputs: Vec<ShareInput<'_>> = en2s
            .iter()
            .map(|en2| {
                nonce = nonce.wrapping_add(1);
                ShareInput {
                    job: &job,
                    prefix: &prefix,
                    en2,
                    ntime: job.ntime,
                    nonce,
                    version: job.version,
                }
            })
            .collect();
        out.clear();
        hasher.hash_all(&inputs, &mut out);
        accepted += out.iter().filter(|c| c.meets(target)).count() as u64;
        inputs.len() as u64
    });
    let mut single_rates = timed(runs, seconds, || {
        nonce = nonce.wrapping_add(1);
        let s = ShareInput {
            job: &job,
            prefix: &prefix,
            en2: &[9, 9, 9, 9],
            ntime: job.ntime,
            nonce,
            version: job.version,
        };
        let c = hasher.hash_one(&s);
        accepted += u64::from(c.meets(target));
        1
    });
    let mut header = [0u8; 80];
    let mut header_b = [1u8; 80];
    let mut sink = 0u8;
    let mut hdr_rates = timed(runs, seconds, || {
        for _ in 0..1024 {
            nonce = nonce.wrapping_add(1);
            header[76..80].copy_from_slice(&nonce.to_le_bytes());
            header_b[76..80].copy_from_slice(&nonce.to_le_bytes());
            let (a, b) = sha256d::sha256d_80_x2(&header, &header_b);
            sink ^= a[31] ^ b[31];
        }
        2048
    });
    let mut hdr1_rates = timed(runs, seconds, || {
        for _ in 0..1024 {
            nonce = nonce.wrapping_add(1);
            header[76..80].copy_from_slice(&nonce.to_le_bytes());
            sink ^= sha256d::sha256d_80(&header)[31];
        }
        1024
    });
    let report = |name: &str, v: &mut [f64], unit: f64, label: &str| {
        let (m, lo, hi) = median(v);
        println!(
            "{name:<44} median {:>8.3} {label}  (min {:.3}, max {:.3}, {} runs)",
            m / unit,
            lo / unit,
            hi / unit,
            v.len()
        );
    };
    report(
        "share validation, batched (2-way interleaved)",
        &mut share_rates,
        1e6,
        "M shares/s",
    );
    report(
        "share validation, one at a time",
        &mut single_rates,
        1e6,
        "M shares/s",
    );
    report(
        "header sha256d, 2-way interleaved",
        &mut hdr_rates,
        1e6,
        "M headers/s",
    );
    report(
        "header sha256d, single stream",
        &mut hdr1_rates,
        1e6,
        "M headers/s",
    );
    println!("(checksum {sink} {accepted})");
    Ok(())
}

async fn ledger_bench(url: Option<String>, n: usize, batch: usize, users: usize) -> anyhow::Result<()> {
    use ledger::{Account, Ledger, PlatformAccount, Transaction};
    use units::MilliSats;
    let dir = tempfile_dir()?;
    let url = url.unwrap_or_else(|| dir.join("ledger.sqlite").to_string_lossy().into_owned());
    let l = Ledger::open(&url).await?;
    let run = std::process::id();
    let msat = |v: u64| MilliSats::new(v).map_err(|e| anyhow::anyhow!("{e}"));
    let user = |i: usize| Account::available(&format!("bench{run}-{i}"));
    // Fund every user (not timed).
    let funding: Vec<Transaction> = (0..users)
        .map(|i| {
            Transaction::transfer(
                &format!("fund-{run}-{i}"),
                "bench funding",
                Account::Platform(PlatformAccount::Mined),
                user(i),
                msat(1_000_000_000)?,
            )
            .map_err(anyhow::Error::from)
        })
        .collect::<anyhow::Result<_>>()?;
    for chunk in funding.chunks(batch) {
        l.post_batch(chunk).await?;
    }
    // Transfers between pseudo-random pairs, 1..1000 msat each: never an overdraft.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut txs = Vec::with_capacity(n);
    for i in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let a = (x % users as u64) as usize;
        let b = (a + 1 + ((x >> 20) % (users as u64 - 1)) as usize) % users;
        txs.push(Transaction::transfer(
            &format!("t-{run}-{i}"),
            "bench transfer",
            user(a),
            user(b),
            msat(1 + (x >> 40) % 1000)?,
        )?);
    }
    let start = Instant::now();
    let mut refused = 0usize;
    for chunk in txs.chunks(batch) {
        refused += l.post_batch(chunk).await?.iter().filter(|r| r.is_err()).count();
    }
    let secs = start.elapsed().as_secs_f64();
    let t = Instant::now();
    let v = l.verify().await?;
    println!(
        "ledger bench ({}): {n} transfers in batches of {batch} among {users} users: {:.3} s, {:.0} transactions/s, {refused} refused; verify {:.2} s over {} transactions: {}",
        l.backend(),
        secs,
        n as f64 / secs,
        t.elapsed().as_secs_f64(),
        v.transactions,
        if v.problems.is_empty() { "ok".to_string() } else { v.problems.join("; ") }
    );
    l.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("cloudmine-bench-ledger-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

fn split_bench(n: usize, owners: usize, runs: usize) -> anyhow::Result<()> {
    use ledger::schemes::{window_split, WindowShare};
    // Shares at difficulties 1..=4096 (work = d · 2^32), owners pseudo-random.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let shares: Vec<WindowShare> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            WindowShare {
                owner: (x % owners as u64) as u32,
                work: u128::from(1 + (x >> 32) % 4096) << 32,
            }
        })
        .collect();
    let total: u128 = shares.iter().map(|s| s.work).sum();
    // The window covers all but the oldest ~1 % of the shares, so the walk visits ~99 % of them.
    let window = total - total / 100;
    let part = units::MilliSats::new(312_500_000_000).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut times = Vec::new();
    let mut paid = 0u64;
    for _ in 0..runs {
        let t = Instant::now();
        let split = window_split(&shares, window, owners, part)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        paid = split.iter().map(|s| s.1).sum();
    }
    let (mid, lo, hi) = median(&mut times);
    println!(
        "PPLNS/TIDES split: {n} shares, {owners} owners, window = 99 % of the work: median {mid:.1} ms (min {lo:.1}, max {hi:.1}, {runs} runs); paid {paid} msat of {} (exact)",
        part.to_msat()
    );
    Ok(())
}

async fn ingest_bench(url: Option<String>, n: usize, batch: usize) -> anyhow::Result<()> {
    use ledger::{Ledger, WorkRecord};
    let dir = tempfile_dir()?;
    let url = url.unwrap_or_else(|| dir.join("ledger.sqlite").to_string_lossy().into_owned());
    let l = Ledger::open(&url).await?;
    let source = format!("bench-{}", std::process::id());
    let owners: Vec<String> = (0..1000).map(|i| format!("bcrt1qbenchowner{i:04}")).collect();
    let records: Vec<WorkRecord> = (0..n)
        .map(|i| WorkRecord {
            seq: i as u64,
            owner: owners[i % owners.len()].clone(),
            work: (1 + (i as u128 % 4096)) << 32,
            ts_ms: 1_790_000_000_000 + i as i64,
        })
        .collect();
    let start = Instant::now();
    let mut new = 0;
    for chunk in records.chunks(batch) {
        new += l.ingest_work(&source, chunk).await?;
    }
    let secs = start.elapsed().as_secs_f64();
    // Idempotence check: a second pass adds nothing.
    let again = l.ingest_work(&source, &records[..batch.min(n)]).await?;
    println!(
        "ingest bench ({}): {n} shares in batches of {batch}: {secs:.3} s, {:.0} shares/s durable; {new} new, re-ingest of {} added {again}",
        l.backend(),
        n as f64 / secs,
        batch.min(n)
    );
    // What a coinbase payee plan costs (pool::payees): read the window back from the work log (90 %
    // of the ingested work, newest first) and turn it into 200 payee outputs of a 3.125 BTC coinbase.
    let total: u128 = records.iter().map(|r| r.work).sum();
    let window = total / 10 * 9;
    let start = Instant::now();
    let shares = l
        .work_window_upto(&source, (n as u64).saturating_sub(1), window)
        .await?;
    let read = start.elapsed().as_secs_f64();
    let rule = pool::payees::PayeeRule {
        max: pool::config::COINBASE_PAYEES_MAX,
        min_sat: 1,
        network: bitcoin::Network::Regtest,
        pool_script: bitcoin::ScriptBuf::new(),
    };
    let in_window = shares.len();
    // The bench's owner names stand for addresses: give each a real regtest address (not timed).
    let addr_of: std::collections::HashMap<&String, String> = owners
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let script = bitcoin::ScriptBuf::from_bytes((i as u32).to_le_bytes().to_vec());
            (
                o,
                bitcoin::Address::p2wsh(&script, bitcoin::Network::Regtest).to_string(),
            )
        })
        .collect();
    let shares: Vec<(String, u128)> = shares
        .into_iter()
        .map(|(o, w)| (addr_of.get(&o).cloned().unwrap_or(o), w))
        .collect();
    let upto = i64::try_from(n).unwrap_or(i64::MAX) - 1;
    let start = Instant::now();
    let mut rolling = pool::payees::RollingWindow::load(shares, upto, window);
    let load = start.elapsed().as_secs_f64();
    // The pool keeps the window as shares arrive: 10,000 more (one ingest batch), then a plan.
    let more: Vec<(i64, String, u128)> = (0..10_000)
        .map(|k| {
            let o = &owners[k % owners.len()];
            (
                upto + 1 + k as i64,
                addr_of.get(o).cloned().unwrap_or_default(),
                (1 + (k as u128 % 4096)) << 32,
            )
        })
        .collect();
    let start = Instant::now();
    rolling.push(more.iter().map(|(s, o, w)| (*s, o.as_str(), *w)));
    let push = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let plan = rolling.plan(&rule);
    let outs = plan
        .outputs(312_500_000, 20_000, &rule, u64::MAX)
        .map_err(anyhow::Error::msg)?;
    let build = start.elapsed().as_secs_f64();
    println!(
        "coinbase payee plan ({}): window of {in_window} shares read from the work log in {read:.3} s (start-up), held in memory in {:.0} ms; \
         10,000 new shares added in {:.2} ms; plan of {} owners → {} outputs in {:.2} ms",
        l.backend(),
        load * 1e3,
        push * 1e3,
        plan.owners(),
        outs.len(),
        build * 1e3
    );
    l.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
