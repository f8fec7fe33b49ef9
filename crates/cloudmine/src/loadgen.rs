//! `cloudmine bench pool`: a loopback load generator for the pool, and its orchestrator.
//!
//! The orchestrator starts a real `cloudmine serve` (temporary data directory, minimum share
//! difficulty so a share costs about one hash), then `--processes` load processes (a process here may
//! hold at most 20,000 open files), each opening its share of `--connections` real TCP miners. When
//! every connection is authorized it reads the server's RSS from `/proc/<pid>/status` (per-connection
//! memory = (RSS − RSS before load) / connections), then every miner submits shares one at a time
//! (send, wait for the reply, next) for `--seconds` after a `--warmup`. Latency is measured by the
//! client from writing a submit to reading its reply. Figures are printed as one JSON object.

use mining_core::{BatchHasher, PreparedJob, ShareInput};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader as StdBufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stratum::{Incoming, ServerMessage};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use units::Difficulty;

const USER: &str = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080";

/// One `bench pool` run's settings.
#[derive(Debug, Clone, clap::Args)]
pub struct PoolBench {
    /// Concurrent authorized miner connections.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Load processes (each may hold at most 20,000 open files here).
    #[arg(long, default_value_t = 1)]
    processes: usize,
    /// Seconds measured.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 10)]
    warmup: u64,
    /// Shares per second per connection (0: as fast as replies come back).
    #[arg(long, default_value_t = 0.0)]
    share_rate: f64,
    /// Submits kept in flight per connection when unpaced (real firmware pipelines; 1 = strict
    /// request-reply; at most 64).
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// Blocks mined while every connection is idle, one per round, to time the clean_jobs notify
    /// fan-out (server side per round; client side for the first round; at most 20).
    #[arg(long, default_value_t = 3)]
    notify_rounds: usize,
    /// Scheduling of the load processes: `batch` (SCHED_BATCH via `chrt`: their wakeups do not
    /// preempt the server, as remote miners' never would) or `normal`.
    #[arg(long, default_value = "normal", value_parser = ["batch", "normal"])]
    load_sched: String,
}

/// Orchestrates a run and prints the figures.
pub fn orchestrate(b: PoolBench) -> anyhow::Result<()> {
    let connections = b.connections.max(1);
    let processes = b.processes.max(1);
    let (seconds, warmup, share_rate) = (b.seconds, b.warmup, b.share_rate);
    let pipeline = b.pipeline.clamp(1, 64);
    let notify_rounds = b.notify_rounds.clamp(1, 20);
    let load_batch = b.load_sched == "batch";
    let exe = std::env::current_exe()?;
    let dir = std::env::temp_dir().join(format!("cloudmine-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut server = Command::new(&exe)
        .args([
            "serve",
            "--stratum-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--status-interval",
            "0",
        ])
        .args([
            "--start-difficulty",
            "0.0000000003",
            "--min-difficulty",
            "0.0000000003",
            "--max-difficulty",
            "0.0000000003",
        ])
        .args([
            "--connections-max",
            &(connections + 100).to_string(),
            // Every load connection comes from 127.0.0.1.
            "--connections-per-ip-max",
            &(connections + 100).to_string(),
            "--dev-rpc-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&dir)
        // the secret through the environment, as serve asks (a flag would show in `ps`)
        .env("CLOUDMINE_DEV_RPC_AUTH", "bench:bench")
        .env("CLOUDMINE_LOG", "error")
        .stdout(Stdio::piped())
        .spawn()?;
    let pid = server.id();
    let mut lines =
        StdBufReader::new(server.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?).lines();
    let mut rpc_url = String::new();
    let mut http_addr = String::new();
    let addr: SocketAddr = loop {
        let l = lines.next().ok_or_else(|| anyhow::anyhow!("serve exited"))??;
        if let Some(rest) = l.strip_prefix("HTTP API on http://") {
            http_addr = rest.split_whitespace().next().unwrap_or("").to_string();
        }
        if let Some(rest) = l.strip_prefix("dev chain JSON-RPC on ") {
            rpc_url = format!("{}/", rest.trim());
        }
        if let Some(rest) = l.strip_prefix("cloudmine pool: stratum+tcp://") {
            break rest.split_whitespace().next().unwrap_or("").parse()?;
        }
    };
    std::thread::spawn(move || for _ in lines {});
    std::thread::sleep(Duration::from_millis(300));
    let rss_before = rss_kib(pid);
    let per = connections.div_ceil(processes.max(1));
    let mut kids = Vec::new();
    for p in 0..processes.max(1) {
        let n = per.min(connections.saturating_sub(p * per));
        if n == 0 {
            break;
        }
        // Under SCHED_BATCH (util-linux `chrt`) a load process's wakeups do not preempt the server,
        // as miners on other machines never would; `--load-sched normal` measures without it.
        let mut cmd = if load_batch {
            let mut c = Command::new("chrt");
            c.args(["--batch", "0"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let mut k = cmd
            .args([
                "bench",
                "pool-load",
                "--addr",
                &addr.to_string(),
                "--connections",
                &n.to_string(),
            ])
            .args([
                "--seconds",
                &seconds.to_string(),
                "--warmup",
                &warmup.to_string(),
                "--share-rate",
                &share_rate.to_string(),
                "--pipeline",
                &pipeline.to_string(),
            ])
            .stdout(Stdio::piped())
            .stdin(Stdio::piped())
            .spawn()?;
        let out = StdBufReader::new(k.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?);
        kids.push((k, out.lines()));
    }
    // Wait until every load process reports its connections authorized.
    for (_, out) in kids.iter_mut() {
        loop {
            let l = out
                .next()
                .ok_or_else(|| anyhow::anyhow!("load process exited early"))??;
            if l.starts_with("ready") {
                break;
            }
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let rss_loaded = rss_kib(pid);
    // A new block while every connection is idle: how fast does the clean_jobs notify reach all of
    // them? Client side for the first round (each load process timestamps the first clean notify of
    // each connection as it reads it); server side (template arrival → last completed write, from
    // /api/v1/pool) for every round.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let rpc = core_rpc::RpcClient::new(&rpc_url, core_rpc::Auth::UserPass("bench".into(), "bench".into()))?;
    let mut trigger_us = 0;
    let mut server_rounds = Vec::new();
    for round in 0..notify_rounds {
        let t = unix_us();
        if round == 0 {
            trigger_us = t;
        }
        if let Err(e) = rt.block_on(rpc.call("generatetoaddress", json!([1, USER]))) {
            eprintln!("could not trigger a block for the notify measurement: {e}");
        }
        std::thread::sleep(Duration::from_millis(1500));
        server_rounds.push(
            http_get_json(&http_addr, "/api/v1/pool")
                .map(|v| v["clean_notify"].clone())
                .unwrap_or_else(|e| json!({"error": e.to_string()})),
        );
    }
    let mut server_ms: Vec<f64> = server_rounds
        .iter()
        .filter_map(|v| v["template_to_last_write_ms"].as_f64())
        .collect();
    server_ms.sort_by(f64::total_cmp);
    let server_median = server_ms.get(server_ms.len() / 2).copied();
    // Start them all at once.
    for (k, _) in kids.iter_mut() {
        if let Some(stdin) = k.stdin.as_mut() {
            use std::io::Write;
            let _ = stdin.write_all(b"go\n");
            let _ = stdin.flush();
        }
    }
    let mut accepted = 0u64;
    let mut rejected = 0u64;
    let mut stale = 0u64;
    let mut lat: Vec<u32> = Vec::new();
    let mut measured_s = 0f64;
    let mut clean_first = u64::MAX;
    let mut clean_last = 0u64;
    let mut clean_n = 0u64;
    for (mut k, mut out) in kids {
        for l in out.by_ref() {
            let l = l?;
            if let Ok(v) = serde_json::from_str::<Value>(&l) {
                accepted += v["accepted"].as_u64().unwrap_or(0);
                rejected += v["rejected"].as_u64().unwrap_or(0);
                stale += v["stale"].as_u64().unwrap_or(0);
                measured_s = measured_s.max(v["seconds"].as_f64().unwrap_or(0.0));
                if let (Some(f), Some(l)) = (v["clean_first_us"].as_u64(), v["clean_last_us"].as_u64()) {
                    clean_first = clean_first.min(f);
                    clean_last = clean_last.max(l);
                    clean_n += v["clean_received"].as_u64().unwrap_or(0);
                }
                if let Some(a) = v["latency_us_sample"].as_array() {
                    lat.extend(
                        a.iter()
                            .filter_map(|x| x.as_u64())
                            .map(|x| u32::try_from(x).unwrap_or(u32::MAX)),
                    );
                }
            }
        }
        let _ = k.wait();
    }
    let rss_end = rss_kib(pid);
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    let per_conn = (rss_loaded.saturating_sub(rss_before)) as f64 * 1024.0 / connections as f64;
    let report = json!({
        "connections": connections,
        "share_rate_per_connection": share_rate,
        "submits_in_flight_per_connection": pipeline,
        "load_processes": processes,
        "load_scheduling": if load_batch { "SCHED_BATCH" } else { "normal" },
        "seconds": measured_s,
        "accepted_shares_per_s": accepted as f64 / measured_s.max(1e-9),
        "accepted": accepted, "rejected": rejected, "stale": stale,
        "latency_ms": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": pct(1.0), "samples": lat.len()},
        "server_rss_kib": {"before": rss_before, "all_authorized": rss_loaded, "end": rss_end},
        "server_rss_bytes_per_connection": per_conn,
        "clean_jobs_notify": {
            "connections_reached": clean_n,
            "trigger_to_first_ms": clean_first.saturating_sub(trigger_us) as f64 / 1000.0,
            "trigger_to_last_ms": clean_last.saturating_sub(trigger_us) as f64 / 1000.0,
            "first_to_last_ms": clean_last.saturating_sub(clean_first.min(clean_last)) as f64 / 1000.0,
            "server_rounds": server_rounds,
            "server_template_to_last_write_ms_median": server_median,
        },
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// A GET over plain HTTP/1.1 on loopback (the bench's own server), parsed as JSON.
fn http_get_json(addr: &str, path: &str) -> anyhow::Result<Value> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.take(1 << 20).read_to_string(&mut resp)?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .ok_or_else(|| anyhow::anyhow!("no HTTP body from {addr}{path}"))?;
    Ok(serde_json::from_str(body)?)
}

fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// One load process: `n` miners; prints `ready`, waits for `go` on stdin, runs, prints a JSON summary.
pub async fn load(
    addr: SocketAddr,
    n: usize,
    seconds: u64,
    warmup: u64,
    share_rate: f64,
    pipeline: usize,
) -> anyhow::Result<()> {
    let go = Arc::new(tokio::sync::Notify::new());
    let started = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let counters = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    // clean_jobs arrivals while idle: [count, first unix µs, last unix µs]
    let clean = Arc::new([AtomicU64::new(0), AtomicU64::new(u64::MAX), AtomicU64::new(0)]);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(n.max(1));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (go, started, stop, measuring, counters, ready_tx) = (
            go.clone(),
            started.clone(),
            stop.clone(),
            measuring.clone(),
            counters.clone(),
            ready_tx.clone(),
        );
        let clean = clean.clone();
        tasks.push(tokio::spawn(async move {
            // Stagger connects a little so the accept queue is not flooded.
            tokio::time::sleep(Duration::from_micros((i as u64 % 1000) * 50)).await;
            miner(
                addr, i, go, started, stop, measuring, counters, ready_tx, share_rate, clean, pipeline,
            )
            .await
        }));
    }
    drop(ready_tx);
    let mut ready = 0;
    while ready < n {
        if ready_rx.recv().await.is_none() {
            break;
        }
        ready += 1;
    }
    println!("ready {ready}");
    // wait for "go"
    tokio::task::spawn_blocking(|| {
        let mut s = String::new();
        let _ = std::io::stdin().read_line(&mut s);
    })
    .await?;
    started.store(true, Ordering::SeqCst);
    go.notify_waiters();
    tokio::time::sleep(Duration::from_secs(warmup)).await;
    measuring.store(true, Ordering::SeqCst);
    let t0 = Instant::now();
    let base = [
        counters[0].load(Ordering::Relaxed),
        counters[1].load(Ordering::Relaxed),
        counters[2].load(Ordering::Relaxed),
    ];
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let secs = t0.elapsed().as_secs_f64();
    measuring.store(false, Ordering::SeqCst);
    let end = [
        counters[0].load(Ordering::Relaxed),
        counters[1].load(Ordering::Relaxed),
        counters[2].load(Ordering::Relaxed),
    ];
    stop.store(true, Ordering::SeqCst);
    let mut lat = Vec::new();
    for t in tasks {
        if let Ok(Ok(mut l)) = t.await {
            lat.append(&mut l);
        }
    }
    // A bounded sample keeps the report small: every k-th latency.
    let k = (lat.len() / 20_000).max(1);
    let sample: Vec<u32> = lat.iter().step_by(k).copied().collect();
    println!(
        "{}",
        json!({"accepted": end[0] - base[0], "rejected": end[1] - base[1], "stale": end[2] - base[2], "seconds": secs, "latency_us_sample": sample,
               "clean_received": clean[0].load(Ordering::Relaxed), "clean_first_us": clean[1].load(Ordering::Relaxed), "clean_last_us": clean[2].load(Ordering::Relaxed)})
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn miner(
    addr: SocketAddr,
    i: usize,
    go: Arc<tokio::sync::Notify>,
    started: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    measuring: Arc<AtomicBool>,
    counters: Arc<[AtomicU64; 3]>,
    ready: tokio::sync::mpsc::Sender<()>,
    share_rate: f64,
    clean: Arc<[AtomicU64; 3]>,
    pipeline: usize,
) -> anyhow::Result<Vec<u32>> {
    // Paced miners start at a random phase and then submit every 1/rate seconds.
    let period = (share_rate > 0.0).then(|| Duration::from_secs_f64(1.0 / share_rate));
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    let user = format!("{USER}.l{i}");
    w.write_all(
        format!(
            "{}\n{}\n",
            json!({"id": 1, "method": "mining.subscribe", "params": ["bench/1"]}),
            json!({"id": 2, "method": "mining.authorize", "params": [user, "x"]})
        )
        .as_bytes(),
    )
    .await?;
    let mut en1 = Vec::new();
    let mut job: Option<LoadJob> = None;
    let mut diff = 1.0f64;
    let mut pending_diff = 1.0f64;
    let mut line = String::new();
    // Handshake: until subscribed, authorized and a job arrived.
    let mut authorized = false;
    while job.is_none() || !authorized {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            anyhow::bail!("closed during handshake");
        }
        match Incoming::parse(line.trim_end().as_bytes()) {
            Ok(Incoming::Response { id, result, .. }) => {
                if id == json!(1) {
                    en1 = result
                        .get(1)
                        .and_then(Value::as_str)
                        .and_then(|s| stratum::parse_hex(s, 8))
                        .unwrap_or_default();
                } else if id == json!(2) {
                    authorized = result == json!(true);
                }
            }
            Ok(Incoming::Notification { method, params }) => {
                apply(&method, &params, &en1, &mut job, &mut diff, &mut pending_diff)
            }
            _ => {}
        }
    }
    let _ = ready.send(()).await;
    // Idle until "go", but watch for the clean_jobs notify the orchestrator's block triggers.
    let mut deferred: Vec<String> = Vec::new();
    let mut clean_seen = false;
    if !started.load(Ordering::SeqCst) {
        let notified = go.notified();
        tokio::pin!(notified);
        loop {
            line.clear();
            tokio::select! {
                () = &mut notified => break,
                r = r.read_line(&mut line) => {
                    if r? == 0 { anyhow::bail!("closed while idle"); }
                    // Timestamp on arrival with a cheap check; parse later, so the load generator's own
                    // CPU (one thread serving thousands of sockets) does not inflate later timestamps.
                    if !clean_seen && line.contains("\"mining.notify\"") && line.trim_end().ends_with("true]}") {
                        clean_seen = true;
                        let t = unix_us();
                        clean[0].fetch_add(1, Ordering::Relaxed);
                        clean[1].fetch_min(t, Ordering::Relaxed);
                        clean[2].fetch_max(t, Ordering::Relaxed);
                    }
                    deferred.push(std::mem::take(&mut line));
                }
            }
        }
    }
    for l in deferred {
        if let Ok(Incoming::Notification { method, params }) = Incoming::parse(l.trim_end().as_bytes()) {
            apply(&method, &params, &en1, &mut job, &mut diff, &mut pending_diff);
        }
    }
    let mut hasher = BatchHasher::new();
    let mut en2 = 0u32;
    let mut lat = Vec::new();
    let mut id = 10u64;
    // Paced miners keep one submit in flight; unpaced ones keep `pipeline` (as ASIC firmware does).
    let depth = if period.is_some() { 1 } else { pipeline.max(1) };
    let mut inflight: std::collections::VecDeque<Instant> = std::collections::VecDeque::new();
    let mut batch = String::new();
    let mut next_at =
        tokio::time::Instant::now() + period.map_or(Duration::ZERO, |p| p.mul_f64((i % 997) as f64 / 997.0));
    while !stop.load(Ordering::Relaxed) {
        if let Some(p) = period {
            tokio::time::sleep_until(next_at).await;
            next_at += p;
        }
        while inflight.len() < depth {
            let Some((pj, prefix, job_id, ntime, target)) = job.as_ref() else {
                return Ok(lat);
            };
            let mut found = None;
            'search: for _ in 0..1000 {
                en2 = en2.wrapping_add(1);
                let e = en2.to_be_bytes();
                for nonce in 0..64u32 {
                    let c = hasher.hash_one(&ShareInput {
                        job: pj,
                        prefix,
                        en2: &e,
                        ntime: *ntime,
                        nonce,
                        version: pj.version,
                    });
                    if c.meets(*target) && !c.meets(pj.network_target) {
                        found = Some((e, nonce));
                        break 'search;
                    }
                }
            }
            let Some((e, nonce)) = found else { return Ok(lat) };
            id += 1;
            // The submit as cpuminer writes it (formatted directly: the load generator's CPU is
            // the server's CPU too on this machine).
            use std::fmt::Write as _;
            let _ = writeln!(
                batch,
                r#"{{"id":{id},"method":"mining.submit","params":["{user}","{job_id}","{:02x}{:02x}{:02x}{:02x}","{ntime:08x}","{nonce:08x}"]}}"#,
                e[0], e[1], e[2], e[3]
            );
            inflight.push_back(Instant::now());
        }
        if !batch.is_empty() {
            w.write_all(batch.as_bytes()).await?;
            batch.clear();
        }
        // Read until at least one reply, then take every reply already buffered, so the next
        // submits go out in one write (as pipelining firmware does).
        let mut replied = false;
        while !replied || r.buffer().contains(&b'\n') {
            line.clear();
            if r.read_line(&mut line).await? == 0 {
                return Ok(lat);
            }
            let t = line.trim_end();
            // Fast path for the common reply; anything else is parsed in full.
            let verdict = if !t.contains("\"method\"") && t.contains("\"result\":true") {
                Some(0)
            } else {
                match Incoming::parse(t.as_bytes()) {
                    Ok(Incoming::Response { error, .. }) => {
                        Some(if error.get(0) == Some(&json!(21)) { 2 } else { 1 })
                    }
                    Ok(Incoming::Notification { method, params }) => {
                        apply(&method, &params, &en1, &mut job, &mut diff, &mut pending_diff);
                        None
                    }
                    _ => None,
                }
            };
            if let Some(slot) = verdict {
                replied = true;
                let t = inflight.pop_front().unwrap_or_else(Instant::now);
                let us = u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX);
                if measuring.load(Ordering::Relaxed) {
                    lat.push(us);
                    counters[slot].fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    Ok(lat)
}

/// A job as the load miner keeps it: prepared job, coinbase prefix, job id, ntime, share target.
type LoadJob = (
    PreparedJob,
    mining_core::CoinbasePrefix,
    String,
    u32,
    units::Target,
);

fn apply(
    method: &str,
    params: &[Value],
    en1: &[u8],
    job: &mut Option<LoadJob>,
    diff: &mut f64,
    pending: &mut f64,
) {
    match ServerMessage::parse(method, params) {
        Ok(Some(ServerMessage::SetDifficulty(d))) => *pending = d,
        Ok(Some(ServerMessage::Notify(n))) => {
            if let Ok(pj) = miner::work::prepared_job(&n) {
                let prefix = pj.prefix(en1);
                *diff = *pending;
                let target = Difficulty::from_f64(*diff).unwrap_or(Difficulty::MIN).to_target();
                *job = Some((pj, prefix, n.job_id, n.ntime, target));
            }
        }
        _ => {}
    }
}
