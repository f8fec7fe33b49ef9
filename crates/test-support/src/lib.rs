//! Helpers for integration tests: [`Miner`], a Stratum test miner over real loopback TCP that hashes
//! for real with `mining-core` and speaks through the `stratum` crate's client half. It panics on any
//! protocol surprise, which is what a test wants. (The production miner is `cloudmine mine`.)
//! And [`fresh_databases`]: an empty ledger database per backend; [`pps_expected`]: what PPS/FPPS
//! should have paid for a range of logged shares, recomputed independently.

use mining_core::{BatchHasher, ShareInput};
use serde_json::{json, Value};
use std::time::Duration;
use stratum::server_to_client::reply_verdict;
use stratum::{Incoming, Notify, ServerMessage};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use units::Difficulty;

/// A test miner: real TCP, real hashing.
pub struct Miner {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
    /// Extranonce1 from subscribe.
    pub en1: Vec<u8>,
    /// The current job.
    pub job: Option<Notify>,
    /// Difficulty of the current job.
    pub diff: f64,
    /// Negotiated version-rolling mask.
    pub mask: u32,
    pending_diff: f64,
    /// Extranonce1 from `mining.set_extranonce`, applied with the next notify.
    pending_en1: Option<Vec<u8>>,
    en2: u32,
}

impl Miner {
    /// Connects to a pool.
    pub async fn connect(addr: std::net::SocketAddr) -> Miner {
        let s = TcpStream::connect(addr).await.expect("connect to the pool");
        let (r, w) = s.into_split();
        Miner {
            r: BufReader::new(r),
            w,
            en1: Vec::new(),
            job: None,
            diff: 1.0,
            mask: 0,
            pending_diff: 1.0,
            pending_en1: None,
            en2: 0,
        }
    }
    pub async fn send(&mut self, line: &str) {
        self.w.write_all(line.as_bytes()).await.expect("test miner");
        if !line.ends_with('\n') {
            self.w.write_all(b"\n").await.expect("test miner");
        }
    }
    /// Next line as JSON (None on EOF), applying notifications to the miner's state.
    pub async fn next(&mut self) -> Option<Value> {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(10), self.r.read_line(&mut line))
            .await
            .expect("pool silent")
            .ok()?;
        if n == 0 {
            return None;
        }
        let v: Value = serde_json::from_str(&line).expect("test miner");
        if let Ok(Incoming::Notification { method, params }) = Incoming::parse(line.trim_end().as_bytes()) {
            match ServerMessage::parse(&method, &params).expect("test miner") {
                Some(ServerMessage::SetDifficulty(d)) => self.pending_diff = d,
                Some(ServerMessage::Notify(n)) => {
                    self.job = Some(n);
                    self.diff = self.pending_diff;
                    if let Some(en1) = self.pending_en1.take() {
                        self.en1 = en1;
                    }
                }
                Some(ServerMessage::SetVersionMask(m)) => self.mask = m,
                Some(ServerMessage::SetExtranonce { extranonce1, .. }) => {
                    self.pending_en1 = Some(extranonce1)
                }
                _ => {}
            }
        }
        Some(v)
    }
    /// Sends a line; `false` if the pool is gone.
    pub async fn send_or_eof(&mut self, line: &str) -> bool {
        let mut l = line.to_string();
        if !l.ends_with('\n') {
            l.push('\n');
        }
        self.w.write_all(l.as_bytes()).await.is_ok()
    }
    /// The next reply, or `None` if the pool closed the connection (notifications are applied).
    pub async fn next_reply_or_eof(&mut self) -> Option<Value> {
        loop {
            let v = self.next().await?;
            if v.get("method").is_none() {
                return Some(v);
            }
        }
    }
    /// Reads until a response (a line with an id that is not a notification).
    pub async fn reply(&mut self) -> Value {
        loop {
            let v = self.next().await.expect("connection closed");
            if v.get("method").is_none() {
                return v;
            }
        }
    }
    pub async fn wait_job(&mut self) {
        while self.job.is_none() {
            self.next().await.expect("closed before a job");
        }
    }
    pub async fn handshake(&mut self, user: &str) {
        self.send(r#"{"id":1,"method":"mining.subscribe","params":["test/1"]}"#)
            .await;
        let r = self.reply().await;
        self.en1 = stratum::parse_hex(r["result"][1].as_str().expect("test miner"), 8).expect("test miner");
        self.send(&json!({"id": 2, "method": "mining.authorize", "params": [user, "x"]}).to_string())
            .await;
        assert_eq!(self.reply().await["result"], true);
        self.wait_job().await;
    }
    /// Finds a share for the current job at the current difficulty (brute force), returns submit params.
    pub fn find_share(&mut self, worker: &str, roll: bool) -> (Value, [u8; 80]) {
        self.find(worker, roll, false)
    }
    /// A share that is *not* a block (so the tip does not move and the job stays current).
    pub fn find_plain_share(&mut self, worker: &str) -> (Value, [u8; 80]) {
        self.find(worker, false, true)
    }
    fn find(&mut self, worker: &str, roll: bool, avoid_block: bool) -> (Value, [u8; 80]) {
        let n = self.job.clone().expect("test miner");
        let job = miner::work::prepared_job(&n).expect("test miner");
        let prefix = job.prefix(&self.en1);
        let target = Difficulty::from_f64(self.diff).expect("test miner").to_target();
        let mut h = BatchHasher::new();
        let top = sha256d::target_top_word(&target.to_le_bytes());
        let mut hits = Vec::new();
        // Bounded (2^32 hashes, ~2 minutes): a search that cannot succeed fails the test instead of
        // spinning. The nonce kernel pre-filters; every candidate is checked with the share hasher.
        for _ in 0..4096 {
            self.en2 += 1;
            let en2 = self.en2.to_be_bytes();
            let vbits = if roll { (self.en2 << 13) & self.mask } else { 0 };
            let version = (n.version & !self.mask) | vbits;
            let input = |nonce| ShareInput {
                job: &job,
                prefix: &prefix,
                en2: &en2,
                ntime: n.ntime,
                nonce,
                version,
            };
            let scan = sha256d::HeaderScan::new(&h.hash_one(&input(0)).header);
            // In slices of 2^16 nonces: an easy target is met in the first one.
            for slice in 0..16u32 {
                hits.clear();
                scan.scan(slice << 16, 1 << 16, top, &mut hits);
                for &nonce in &hits {
                    let c = h.hash_one(&input(nonce));
                    if c.meets(target) && !(avoid_block && c.meets(job.network_target)) {
                        let mut p = vec![
                            json!(worker),
                            json!(n.job_id),
                            json!(stratum::to_hex(&en2)),
                            json!(format!("{:08x}", n.ntime)),
                            json!(format!("{nonce:08x}")),
                        ];
                        if roll {
                            p.push(json!(format!("{vbits:08x}")));
                        }
                        return (Value::Array(p), c.header);
                    }
                }
            }
        }
        panic!(
            "no share found in 2^32 hashes at difficulty {} (avoid_block {avoid_block})",
            self.diff
        );
    }
    /// Submit params whose hash misses the current share target (a low-difficulty share, 23).
    pub fn find_low_share(&mut self, worker: &str) -> Value {
        let n = self.job.clone().expect("test miner");
        let job = miner::work::prepared_job(&n).expect("test miner");
        let prefix = job.prefix(&self.en1);
        let target = Difficulty::from_f64(self.diff).expect("test miner").to_target();
        let mut h = BatchHasher::new();
        self.en2 += 1;
        let en2 = self.en2.to_be_bytes();
        let nonce = (0..u32::MAX)
            .find(|nonce| {
                !h.hash_one(&ShareInput {
                    job: &job,
                    prefix: &prefix,
                    en2: &en2,
                    ntime: n.ntime,
                    nonce: *nonce,
                    version: n.version,
                })
                .meets(target)
            })
            .expect("a hash above the target");
        json!([
            worker,
            n.job_id,
            stratum::to_hex(&en2),
            format!("{:08x}", n.ntime),
            format!("{nonce:08x}")
        ])
    }
    pub async fn submit(&mut self, id: Value, params: &Value) -> Value {
        self.send(&json!({"id": id, "method": "mining.submit", "params": params}).to_string())
            .await;
        self.reply().await
    }
}

/// A reply as accepted or the reject reason.
pub fn verdict(v: &Value) -> Result<(), String> {
    reply_verdict(
        &v["result"],
        &v["error"],
        v.get("reject-reason").and_then(Value::as_str),
    )
}

static NEXT_DB: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A fresh, empty database per ledger backend: (backend name, URL, temp dir to keep alive). SQLite is
/// a temp file; PostgreSQL a new database in the server `scripts/test.sh` starts
/// (`CLOUDMINE_TEST_DATABASE_URL`). Without that variable PostgreSQL is skipped, loudly, unless
/// `CLOUDMINE_REQUIRE_POSTGRES` is set, which makes it a failure.
pub async fn fresh_databases() -> Vec<(&'static str, String, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("ledger.sqlite").to_string_lossy().into_owned();
    let mut out = vec![("sqlite", path, Some(dir))];
    match std::env::var("CLOUDMINE_TEST_DATABASE_URL") {
        Ok(admin) => {
            let name = format!(
                "ledger_{}_{}",
                std::process::id(),
                NEXT_DB.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            );
            let pool = sqlx::PgPool::connect(&admin)
                .await
                .expect("PostgreSQL admin connection");
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&pool)
                .await
                .expect("CREATE DATABASE");
            pool.close().await;
            let base = admin.rsplit_once('/').expect("URL with a database").0;
            out.push(("postgres", format!("{base}/{name}"), None));
        }
        Err(_) => {
            assert!(
                std::env::var("CLOUDMINE_REQUIRE_POSTGRES").is_err(),
                "CLOUDMINE_REQUIRE_POSTGRES is set but CLOUDMINE_TEST_DATABASE_URL is not"
            );
            eprintln!("PostgreSQL tests SKIPPED: set CLOUDMINE_TEST_DATABASE_URL or run scripts/test.sh");
        }
    }
    out
}

/// What a PPS/FPPS batch of the share log (`first..=last`) should pay each owner, recomputed with
/// rust-bitcoin's block work and plain u128 arithmetic: per (owner, bits, reward) the exact Σ work
/// (a share counting at most one block's work), then `floor(R · (10^6 − f) · Σw / (W · 10^6))`.
/// Owners owed nothing are left out.
pub async fn pps_expected(
    db: &sqlx::SqlitePool,
    first: i64,
    last: i64,
    fee_ppm: u128,
    fpps: bool,
) -> std::collections::BTreeMap<String, u128> {
    let rows = sqlx::query_as::<_, (String, i64, i64, i64, i64, i64)>(
        "SELECT s.address, s.diff_int, s.diff_frac, j.bits, j.subsidy_sat, j.expected_fees_sat \
         FROM shares s JOIN jobs j ON j.job_id = s.job_id WHERE s.id BETWEEN ? AND ?",
    )
    .bind(first)
    .bind(last)
    .fetch_all(db)
    .await
    .expect("share log");
    let block_work = |bits: i64| {
        let bits = u32::try_from(bits).expect("bits");
        let work = bitcoin::Target::from_compact(bitcoin::CompactTarget::from_consensus(bits)).to_work();
        let le = work.to_le_bytes();
        assert!(le[16..].iter().all(|b| *b == 0), "block work above 2^128");
        u128::from_le_bytes(le[..16].try_into().expect("16 bytes"))
    };
    let mut groups = std::collections::BTreeMap::<(String, i64, u128), u128>::new();
    for (owner, int, frac, bits, subsidy, fees) in rows {
        let reward = u128::try_from(subsidy + if fpps { fees } else { 0 }).expect("reward") * 1000;
        let work = (u128::try_from(int).expect("int") << 32 | u128::try_from(frac).expect("frac"))
            .min(block_work(bits));
        *groups.entry((owner, bits, reward)).or_default() += work;
    }
    let mut want = std::collections::BTreeMap::<String, u128>::new();
    for ((owner, bits, reward), work) in groups {
        *want.entry(owner).or_default() +=
            reward * (1_000_000 - fee_ppm) * work / (block_work(bits) * 1_000_000);
    }
    want.retain(|_, v| *v > 0);
    want
}

/// What an external signer (a hardware wallet, `bitcoin-cli walletprocesspsbt`) does with a
/// payout PSBT: signs every P2WPKH input with `secret` (SIGHASH_ALL, the input's `witness_utxo`)
/// and adds the signature as a partial signature, leaving finalization to the pool.
pub fn sign_psbt_p2wpkh(psbt: &mut bitcoin::psbt::Psbt, secret: &[u8; 32]) {
    use bitcoin::secp256k1::{Message, Secp256k1, SecretKey};
    use bitcoin::sighash::{EcdsaSighashType, SighashCache};
    let sk = SecretKey::from_slice(secret).expect("secret key");
    let secp = Secp256k1::new();
    let pk = bitcoin::PublicKey::new(sk.public_key(&secp));
    let tx = psbt.unsigned_tx.clone();
    let mut cache = SighashCache::new(&tx);
    for (i, input) in psbt.inputs.iter_mut().enumerate() {
        let prev = input.witness_utxo.clone().expect("witness_utxo");
        let h = cache
            .p2wpkh_signature_hash(i, &prev.script_pubkey, prev.value, EcdsaSighashType::All)
            .expect("sighash");
        let signature = secp.sign_ecdsa(&Message::from(h), &sk);
        input.partial_sigs.insert(
            pk,
            bitcoin::ecdsa::Signature {
                signature,
                sighash_type: EcdsaSighashType::All,
            },
        );
    }
}

/// Mines `n` blocks on the dev chain paying `script`, each 30 s after the one before by block time
/// (never earlier than about two hours ago, so the dev chain's difficulty stays where the blocks
/// before left it), with whatever its mempool holds. Straight on the locked chain, as a test's
/// "someone else mines" step.
pub async fn mine_dev_blocks(node: &chain::DevNode, script: &bitcoin::ScriptBuf, n: u32) {
    let node = node.clone();
    let script = script.clone();
    tokio::task::spawn_blocking(move || {
        let mut c = node.lock();
        for _ in 0..n {
            let now = c
                .tip()
                .block
                .header
                .time
                .max(chain::dev::now().saturating_sub(7_000))
                + 30;
            let b = c
                .generate_block(&script, now, 10_000_000)
                .expect("a dev-chain block");
            c.submit_block(b, now).expect("the dev chain takes its own block");
        }
    })
    .await
    .expect("mining task");
}

/// Mines blocks on the dev chain one second apart by block time (its retarget makes each about half
/// a bit harder) until its next block's difficulty is at least `difficulty`; returns that
/// difficulty. Tests that need shares which are not blocks, at several difficulties, start here.
pub async fn harden_dev_chain(node: &chain::DevNode, difficulty: f64) -> f64 {
    let node = node.clone();
    tokio::task::spawn_blocking(move || {
        let script = bitcoin::ScriptBuf::new_op_return([]);
        let start = chain::dev::now().saturating_sub(7_000);
        for _ in 0..200 {
            let b = {
                let c = node.lock();
                let now = c.tip().block.header.time.max(start) + 1;
                let t = c.template(now);
                let d = Difficulty::from_target(units::Target::from_compact(t.bits).expect("bits")).to_f64();
                if d >= difficulty {
                    return d;
                }
                c.generate_block(&script, now, u32::MAX)
                    .expect("a dev-chain block")
            };
            // Through the node, so the tip is published (a running pool follows it).
            assert_eq!(node.submit_block_blocking(b), chain::BlockFate::Accepted);
        }
        panic!("dev chain not at difficulty {difficulty} after 200 blocks");
    })
    .await
    .expect("mining task")
}
