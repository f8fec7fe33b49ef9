//! `cloudmine serve`: the whole platform on one machine: chain backend, Stratum pool, share log.

use anyhow::Context as _;
use bitcoin::Network;
use chain::dev::{DevNode, DevRpc};
use chain::{Backend, BitcoindBackend, BitcoindConfig};
use core_rpc::server::{self, Credentials};
use pool::{PayoutScheme, Pool, PoolConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Default start difficulty on the dev chain: a CPU thread (2.7–30 MH/s) finds a share every
/// 0.15–1.6 s, and vardiff raises it from there.
pub const START_DIFFICULTY_DEV: f64 = 0.001;
/// Default start difficulty on Bitcoin Core (ckpool's `startdiff`): a 1 TH/s device sends about
/// 20 shares/s until vardiff raises it; a slow one is lowered on time.
pub const START_DIFFICULTY_BITCOIND: f64 = 42.0;

/// Default cap on Stratum connections.
pub const CONNECTIONS_MAX_DEFAULT: usize = 20_000;
/// Open files kept for everything but Stratum connections: databases (share log, ledger), the HTTP
/// API (256 connections) and dev RPC (64), Core RPC and ZMQ sockets, the block file, logs.
pub const FDS_RESERVED: u64 = 512;

/// Soft open-files limit asked for when the hard limit is unlimited (Linux's default `nr_open`).
pub const NOFILE_UNLIMITED_TARGET: u64 = 1_048_576;
/// Fewest Stratum connections serve starts with.
pub const CONNECTIONS_MIN: usize = 64;

/// Raises the soft open-files limit to the hard one and fits the Stratum connection cap inside it:
/// an explicit `--connections-max` that cannot fit is refused; the default is lowered to what fits,
/// and said so.
fn fit_connections(asked: Option<usize>) -> anyhow::Result<usize> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let cur = getrlimit(Resource::Nofile);
    let mut soft = cur.current.unwrap_or(u64::MAX);
    // An unlimited hard limit cannot be the soft one for open files (Linux caps it at nr_open).
    let target = cur.maximum.unwrap_or(NOFILE_UNLIMITED_TARGET);
    if cur.current.is_some_and(|c| c < target) {
        let raised = Rlimit {
            current: Some(target),
            maximum: cur.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => soft = target,
            Err(e) => eprintln!("warning: could not raise the open-files limit from {soft} to {target}: {e}"),
        }
    }
    let room = usize::try_from(soft.saturating_sub(FDS_RESERVED)).unwrap_or(usize::MAX);
    anyhow::ensure!(
        room >= CONNECTIONS_MIN,
        "the open-files limit {soft} leaves room for {room} Stratum connections beside {FDS_RESERVED} reserved files (at least {CONNECTIONS_MIN} needed): raise it (ulimit -n)"
    );
    match asked {
        Some(n) if n > room => anyhow::bail!(
            "--connections-max {n} does not fit the open-files limit: this process may open {soft} files and keeps {FDS_RESERVED} for databases, HTTP and RPC, so at most {room} Stratum connections; lower --connections-max or raise the hard limit (ulimit -Hn)"
        ),
        Some(n) => Ok(n.max(1)),
        None if CONNECTIONS_MAX_DEFAULT > room => {
            println!(
                "Stratum connections: at most {room} (the open-files limit {soft} less {FDS_RESERVED} reserved; raise `ulimit -Hn` for the default {CONNECTIONS_MAX_DEFAULT})"
            );
            Ok(room.max(1))
        }
        None => Ok(CONNECTIONS_MAX_DEFAULT),
    }
}

/// Which chain backend.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainKind {
    /// The embedded dev chain.
    Dev,
    /// Bitcoin Core over JSON-RPC.
    Bitcoind,
}

/// Payout scheme.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// The block pays the finder.
    Solo,
    /// The block pays --pool-address; miners are credited in the ledger (see --sharing).
    Pool,
}

/// Who signs balance payouts.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayoutSignerArg {
    /// The pool's own key (DATA/wallet.key, created on first start).
    Key,
    /// An external signer: payouts are exported as PSBTs to DATA/payouts/ (needs --payout-pubkey).
    Psbt,
    /// Bitcoin Core's wallet sends them (`sendmany`; needs --chain bitcoind, --payout-core-wallet
    /// and a --pool-address of that wallet).
    Core,
}

/// How pool-mode miners are paid.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SharingArg {
    /// Pay per last N = 2·D of work.
    Pplns,
    /// N = 8·D, the window fixed when the block's job was issued.
    Tides,
    /// Pay per share, d/D × subsidy × (1 − fee), at once, from the pool reserve.
    Pps,
    /// Full pay per share, d/D × (subsidy + mean fees of the last 144 blocks) × (1 − fee).
    Fpps,
}

/// Flags of `cloudmine serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// TOML file of settings: keys are these flags' names (`stratum_listen = "0.0.0.0:3333"`); flags given
    /// on the command line win. Secrets belong in the environment (CLOUDMINE_BITCOIND_AUTH, …).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Data directory (dev chain files, pool.sqlite).
    #[arg(long, default_value = "./cloudmine-data", env = "CLOUDMINE_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Ledger database: `postgres://…` (default: SQLite `DATA/ledger.sqlite`).
    #[arg(long, env = "CLOUDMINE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Stratum listen address.
    #[arg(long, default_value = "127.0.0.1:3333")]
    pub stratum_listen: SocketAddr,
    /// HTTP listen address (Prometheus /metrics, /api/v1/pool, /api/v1/miners/{address}, /api/client/{address}).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http_listen: SocketAddr,
    /// Chain backend.
    #[arg(long, value_enum, default_value_t = ChainKind::Dev)]
    pub chain: ChainKind,
    /// Dev chain: target seconds between blocks.
    #[arg(long, default_value_t = 30)]
    pub dev_block_interval: u32,
    /// Dev chain: also serve its Core-compatible JSON-RPC here (off unless given).
    #[arg(long)]
    pub dev_rpc_listen: Option<SocketAddr>,
    /// Dev chain RPC credentials USER:PASS (default: cookie file DATA_DIR/.cookie).
    #[arg(long, env = "CLOUDMINE_DEV_RPC_AUTH")]
    pub dev_rpc_auth: Option<String>,
    /// Bitcoin Core RPC URL(s); a found block goes to every one.
    #[arg(long)]
    pub bitcoind_url: Vec<String>,
    /// Bitcoin Core credentials: USER:PASS or a cookie file path.
    #[arg(long, env = "CLOUDMINE_BITCOIND_AUTH")]
    pub bitcoind_auth: Option<String>,
    /// Bitcoin Core's chain: main, test, testnet4, signet or regtest.
    #[arg(long, default_value = "main")]
    pub bitcoind_chain: String,
    /// Bitcoin Core's -zmqpubhashblock endpoint.
    #[arg(long)]
    pub bitcoind_zmq_hashblock: Option<String>,
    /// Payout scheme.
    #[arg(long, value_enum, default_value_t = Scheme::Solo)]
    pub payout_scheme: Scheme,
    /// The address pool-mode coinbases pay. Default: the pool wallet's own address (key in
    /// DATA/wallet.key, created on first start), which lets the pool pay balances on chain; another
    /// address turns balance payouts off (balances still accrue in the ledger).
    #[arg(long)]
    pub pool_address: Option<String>,
    /// Balance payouts: who signs them (the pool's key, an external signer via PSBT, or Core's wallet).
    #[arg(long, value_enum, default_value_t = PayoutSignerArg::Key)]
    pub payout_signer: PayoutSignerArg,
    /// --payout-signer psbt: the external signer's public key (compressed, 66 hex characters); the
    /// pool's coinbases pay its P2WPKH address unless --pool-address says otherwise.
    #[arg(long)]
    pub payout_pubkey: Option<String>,
    /// --payout-signer psbt: where that key sits in the signer's HD tree, `<fingerprint>/<path>`
    /// (e.g. `d34db33f/84h/0h/0h/0/0`), written into every PSBT so hardware wallets find it.
    #[arg(long)]
    pub payout_key_origin: Option<String>,
    /// --payout-signer core: the Core wallet's name (RPC at the first --bitcoind-url + /wallet/NAME).
    #[arg(long)]
    pub payout_core_wallet: Option<String>,
    /// Balance payouts: pay an owner once their matured balance reaches this many satoshis.
    #[arg(long, default_value_t = 100_000)]
    pub payout_threshold_sat: u64,
    /// Balance payouts: seconds between payout rounds (one batched transaction per round).
    #[arg(long, default_value_t = 3_600, value_parser = clap::value_parser!(u64).range(1..))]
    pub payout_interval_s: u64,
    /// Balance payouts: feerate of payout transactions in sat/vB (payees share the fee equally).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub payout_feerate: u64,
    /// Balance payouts: confirmations before a payout is settled as paid.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub payout_confirmations: u32,
    /// Accepted shares allowed to wait for the ledger (while it is down); past it shares are refused.
    #[arg(long, default_value_t = pool::config::LEDGER_BACKLOG_DEFAULT)]
    pub ledger_backlog_max: u64,
    /// Hours the share log keeps accepted shares once they are accounted (copied into the ledger's
    /// work log; credited under PPS/FPPS); block shares are kept for good. 0: keep forever. At
    /// least 1.
    #[arg(long, default_value_t = pool::config::SHARE_LOG_RETENTION_DEFAULT.as_secs() / 3600)]
    pub share_log_retention_hours: u64,
    /// Largest size of the share log's database in MiB (default: no cap but the disk). At the cap,
    /// shares are refused ("Pool storage full") until retention frees pages, exactly as on a full
    /// disk; a cap keeps room on the disk for the deletes themselves and for the other files.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=16_777_216))]
    pub share_log_max_mb: Option<u64>,
    /// Hours the ledger's work log keeps work records at least; records a payout window may still
    /// read (4 of the largest window behind the newest record) are kept whatever their age. 0: keep
    /// forever. At least 1.
    #[arg(long, default_value_t = pool::config::WORK_LOG_RETENTION_DEFAULT.as_secs() / 3600)]
    pub work_log_retention_hours: u64,
    /// How pool-mode miners are paid: a block split over a window (PPLNS, TIDES) or every share at
    /// once (PPS, FPPS: the pool reserve carries the variance).
    #[arg(long, value_enum, default_value_t = SharingArg::Pplns)]
    pub sharing: SharingArg,
    /// PPLNS/TIDES: pay up to this many of the window's largest earners directly in the coinbase (no
    /// custody; at most 200); smaller earners accrue a balance, and so do payees the block has no
    /// room for (weight, sigops: Core's default -blockreservedweight leaves about 45 P2WPKH payees in
    /// a full block). 0: the coinbase pays the pool alone.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=pool::config::COINBASE_PAYEES_MAX as u64))]
    pub coinbase_payees: u64,
    /// Smallest coinbase payee output in satoshis; an earner below it accrues a balance instead.
    #[arg(long, default_value_t = pool::config::COINBASE_PAYEE_MIN_SAT_DEFAULT, value_parser = clap::value_parser!(u64).range(1..))]
    pub coinbase_payee_min_sat: u64,
    /// Pool fee in parts per million of each block's reward, or of each share's PPS/FPPS value
    /// (pool mode; 10000 = 1 %).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub pool_fee_ppm: u32,
    /// Starting share difficulty (vardiff moves it toward ~18 shares/min; a quiet miner is lowered
    /// within seconds). Default: 0.001 on the dev chain (a CPU thread's size), 42 on Bitcoin Core
    /// (ckpool's). Never above the network difficulty.
    #[arg(long)]
    pub start_difficulty: Option<f64>,
    /// Lowest share difficulty vardiff may assign (fractions allowed, e.g. 0.001 for CPU miners).
    #[arg(long, default_value_t = 0.001)]
    pub min_difficulty: f64,
    /// Open Stratum connections at most (a permit is taken before accept). Default 20,000, or what
    /// the open-files limit leaves beside FDS_RESERVED if that is less (said at start); a value that
    /// does not fit is refused.
    #[arg(long)]
    pub connections_max: Option<usize>,
    /// Open HTTP API connections per IP address (IPv6: per /64) at most; one past it is answered
    /// 429. Raise it behind a reverse proxy (every client then has the proxy's address).
    #[arg(long, default_value_t = pool::api::API_HTTP_LIMITS.connections_per_ip_max as u64, value_parser = clap::value_parser!(u64).range(1..))]
    pub http_connections_per_ip_max: u64,
    /// Open Stratum connections per IP address at most (raise for a farm or proxy behind one address).
    #[arg(long, default_value_t = pool::config::CONNECTIONS_PER_IP_DEFAULT)]
    pub connections_per_ip_max: usize,
    /// Highest share difficulty vardiff may assign.
    #[arg(long, default_value_t = 1099511627776.0)]
    pub max_difficulty: f64,
    /// Seconds between status lines (0: none).
    #[arg(long, default_value_t = 5)]
    pub status_interval: u64,
}

fn network_of(chain: &str) -> anyhow::Result<Network> {
    Ok(match chain {
        "main" => Network::Bitcoin,
        "test" => Network::Testnet,
        "signet" => Network::Signet,
        "regtest" => Network::Regtest,
        other => anyhow::bail!("unsupported --bitcoind-chain '{other}' (main, test, signet, regtest)"),
    })
}

/// Pool mode: what the coinbase pays, and who signs balance payouts (`None`: payouts are off, the
/// coinbase pays an address the pool cannot spend).
fn pool_payout(
    args: &ServeArgs,
    network: Network,
) -> anyhow::Result<(PayoutScheme, Option<payouts::Signer>)> {
    let given = args
        .pool_address
        .as_deref()
        .map(|a| {
            bitcoin::Address::from_str(a)
                .with_context(|| format!("--pool-address '{a}'"))?
                .require_network(network)
                .with_context(|| format!("--pool-address '{a}' is not an address for {network}"))
        })
        .transpose()?;
    let signer = match args.payout_signer {
        PayoutSignerArg::Core => {
            let name = args
                .payout_core_wallet
                .as_deref()
                .context("--payout-signer core needs --payout-core-wallet NAME")?;
            anyhow::ensure!(
                args.chain == ChainKind::Bitcoind,
                "--payout-signer core needs --chain bitcoind (the dev chain has no wallet)"
            );
            let addr = given
                .context("--payout-signer core needs --pool-address (an address of that Core wallet)")?;
            let url = args
                .bitcoind_url
                .first()
                .context("--payout-signer core needs --bitcoind-url")?;
            let auth = core_rpc::Auth::parse(args.bitcoind_auth.as_deref().unwrap_or(""));
            let rpc = core_rpc::RpcClient::new(&format!("{}/wallet/{name}", url.trim_end_matches('/')), auth)
                .with_context(|| format!("--bitcoind-url {url}"))?
                .with_timeout(Duration::from_secs(60));
            println!("pool mode: coinbases pay {addr}; balances are paid by Core wallet '{name}' (sendmany)");
            return Ok((
                PayoutScheme::Pool(addr.script_pubkey()),
                Some(payouts::Signer::Core(payouts::core::CoreWallet::new(rpc))),
            ));
        }
        PayoutSignerArg::Psbt => {
            let hex = args
                .payout_pubkey
                .as_deref()
                .context("--payout-signer psbt needs --payout-pubkey (the signer's compressed public key)")?;
            let pk = bitcoin::CompressedPublicKey::from_str(hex)
                .with_context(|| format!("--payout-pubkey '{hex}' is not a compressed public key"))?;
            let origin = args
                .payout_key_origin
                .as_deref()
                .map(|o| o.parse::<payouts::psbt::KeyOrigin>().map_err(anyhow::Error::msg))
                .transpose()?;
            payouts::Signer::Psbt {
                wallet: payouts::Wallet::watch_only(pk),
                origin,
                dir: args.data_dir.join("payouts"),
            }
        }
        PayoutSignerArg::Key => {
            let key = args.data_dir.join(payouts::keyfile::KEY_FILE);
            let (w, created) = payouts::keyfile::load_or_create(&key)?;
            if created {
                println!(
                    "pool wallet: new key in {} (back it up: it holds the pool's coins)",
                    key.display()
                );
            }
            payouts::Signer::Key(w)
        }
    };
    let wallet = signer.wallet().context("a key or PSBT signer has a wallet")?;
    let own = wallet.address(network);
    match given {
        Some(addr) if addr != own => {
            println!("pool mode: coinbases pay {addr}, not the pool wallet ({own}): balance payouts are OFF, balances accrue in the ledger");
            Ok((PayoutScheme::Pool(addr.script_pubkey()), None))
        }
        _ => {
            println!(
                "pool mode: coinbases pay the pool wallet {own}; balances are paid on chain{}",
                if wallet.can_sign() {
                    ""
                } else {
                    " once an external signer signs each exported PSBT"
                }
            );
            Ok((PayoutScheme::Pool(own.script_pubkey()), Some(signer)))
        }
    }
}

/// Runs until SIGINT or SIGTERM.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    // Installed first: a SIGTERM at any point after start (even before the ready line) stops serve
    // in order (the RPC cookie removed, the share log drained).
    let stop = crate::node::shutdown_signal();
    crate::node::warn_secret_flags(&[
        ("--dev-rpc-auth", "CLOUDMINE_DEV_RPC_AUTH"),
        ("--bitcoind-auth", "CLOUDMINE_BITCOIND_AUTH"),
        ("--database-url", "CLOUDMINE_DATABASE_URL"),
    ]);
    let mut cookie: Option<PathBuf> = None;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let mut rpc_task = None;
    let rpc_stop = tokio_util::sync::CancellationToken::new();
    let (backend, network) = match args.chain {
        ChainKind::Dev => {
            let dir = args.data_dir.clone();
            let interval = args.dev_block_interval;
            let chain =
                tokio::task::spawn_blocking(move || devchain::DevChain::open(&dir, interval)).await??;
            let node = DevNode::new(chain);
            if let Some(listen) = args.dev_rpc_listen {
                let creds = match &args.dev_rpc_auth {
                    Some(p) => Credentials::new(vec![p.clone()]),
                    None => {
                        let secret: [u8; 32] = bitcoin::secp256k1::rand::random();
                        let pair = format!(
                            "__cookie__:{}",
                            secret.iter().map(|b| format!("{b:02x}")).collect::<String>()
                        );
                        let path = args.data_dir.join(".cookie");
                        crate::node::write_private(&path, &pair)
                            .with_context(|| format!("writing the RPC cookie {}", path.display()))?;
                        cookie = Some(path);
                        Credentials::new(vec![pair])
                    }
                };
                let l = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("binding {listen}"))?;
                println!("dev chain JSON-RPC on http://{}", l.local_addr()?);
                let handler: Arc<dyn server::RpcHandler> = Arc::new(DevRpc::new(node.clone()));
                let stop = rpc_stop.clone();
                rpc_task = Some(tokio::spawn(server::serve(l, handler, creds, async move {
                    stop.cancelled().await;
                })));
            }
            (Backend::Dev(node), Network::Regtest)
        }
        ChainKind::Bitcoind => {
            anyhow::ensure!(
                !args.bitcoind_url.is_empty(),
                "--chain bitcoind needs --bitcoind-url"
            );
            let auth = core_rpc::Auth::parse(args.bitcoind_auth.as_deref().unwrap_or(""));
            let mut cfg = BitcoindConfig::single(&args.bitcoind_url[0], auth.clone(), &args.bitcoind_chain);
            for u in args.bitcoind_url.iter().skip(1) {
                cfg.nodes.push((u.clone(), auth.clone()));
            }
            cfg.zmq_hashblock = args.bitcoind_zmq_hashblock.clone();
            let backend = loop {
                match BitcoindBackend::connect(cfg.clone()).await {
                    Ok(b) => break b,
                    Err(e @ chain::BackendError::Syncing { .. }) => {
                        eprintln!("{e}; retrying in 10 s");
                        tokio::time::sleep(Duration::from_secs(10)).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            (Backend::Bitcoind(backend), network_of(&args.bitcoind_chain)?)
        }
    };
    let (payout, signer) = match args.payout_scheme {
        Scheme::Solo => (PayoutScheme::Solo, None),
        Scheme::Pool => pool_payout(&args, network)?,
    };
    let mut cfg = PoolConfig::new(network, payout);
    let start = args.start_difficulty.unwrap_or(match args.chain {
        ChainKind::Dev => START_DIFFICULTY_DEV,
        ChainKind::Bitcoind => START_DIFFICULTY_BITCOIND,
    });
    cfg.initial_difficulty = units::Difficulty::from_f64(start).context("--start-difficulty")?;
    cfg.vardiff.min = units::Difficulty::from_f64(args.min_difficulty).context("--min-difficulty")?;
    cfg.connections_max = fit_connections(args.connections_max)?;
    cfg.fee_ppm = args.pool_fee_ppm;
    cfg.sharing = match args.sharing {
        SharingArg::Pplns => pool::config::Sharing::Pplns,
        SharingArg::Tides => pool::config::Sharing::Tides,
        SharingArg::Pps => pool::config::Sharing::Pps,
        SharingArg::Fpps => pool::config::Sharing::Fpps,
    };
    cfg.coinbase_payees = usize::try_from(args.coinbase_payees).unwrap_or(pool::config::COINBASE_PAYEES_MAX);
    cfg.coinbase_payee_min_sat = args.coinbase_payee_min_sat;
    if cfg.coinbase_payees > 0 {
        match (&cfg.payout, cfg.sharing.per_share()) {
            (PayoutScheme::Solo, _) => anyhow::bail!("--coinbase-payees needs --payout-scheme pool (SOLO coinbases pay the finder)"),
            (_, true) => anyhow::bail!("--coinbase-payees needs --sharing pplns or tides (PPS/FPPS pay every share from the reserve)"),
            _ => println!(
                "coinbase payouts: up to {} of the window's largest earners are paid in the coinbase (outputs of at least {} sat); the rest accrue",
                cfg.coinbase_payees, cfg.coinbase_payee_min_sat
            ),
        }
    }
    cfg.ledger_backlog_max = args.ledger_backlog_max.max(1);
    let hours = |flag: &str, h: u64| -> anyhow::Result<Option<std::time::Duration>> {
        match h {
            0 => Ok(None),
            h => {
                let d = std::time::Duration::from_secs(h.checked_mul(3600).context(flag.to_string())?);
                anyhow::ensure!(
                    d >= pool::config::RETENTION_MIN,
                    "{flag} {h}: at least {} hours (0 keeps forever)",
                    pool::config::RETENTION_MIN.as_secs() / 3600
                );
                Ok(Some(d))
            }
        }
    };
    cfg.retention = pool::config::Retention {
        share_log: hours("--share-log-retention-hours", args.share_log_retention_hours)?,
        work_log: hours("--work-log-retention-hours", args.work_log_retention_hours)?,
    };
    cfg.connections_per_ip_max = args.connections_per_ip_max.max(1);
    cfg.http_connections_per_ip_max = usize::try_from(args.http_connections_per_ip_max).unwrap_or(usize::MAX);
    cfg.vardiff.max = units::Difficulty::from_f64(args.max_difficulty).context("--max-difficulty")?;
    anyhow::ensure!(
        cfg.vardiff.min <= cfg.vardiff.max,
        "--min-difficulty is above --max-difficulty"
    );
    let db = args.data_dir.join("pool.sqlite");
    let (log, writer) =
        pool::share_log::ShareLog::open_with(&db, args.share_log_max_mb.map(|mb| mb * 1024 * 1024)).await?;
    if let Some(mb) = args.share_log_max_mb {
        println!(
            "share log: at most {mb} MiB ({}); past it shares are refused until retention frees room",
            db.display()
        );
    }
    let pool = Pool::start(cfg, backend.clone(), log, args.stratum_listen)
        .await
        .with_context(|| format!("binding the Stratum listener on {}", args.stratum_listen))?;
    let http = tokio::net::TcpListener::bind(args.http_listen)
        .await
        .with_context(|| format!("binding the HTTP listener on {}", args.http_listen))?;
    println!(
        "HTTP API on http://{} (/metrics, /api/v1/pool, /api/v1/miners/<address>)",
        http.local_addr()?
    );
    pool.serve_http(http);
    let ledger_url = crate::ledger_cmd::ledger_url(&args.data_dir, args.database_url.as_deref());
    let ledger = std::sync::Arc::new(ledger::Ledger::open(&ledger_url).await.with_context(|| {
        format!(
            "opening the ledger ({})",
            if args.database_url.is_some() {
                "--database-url"
            } else {
                "DATA/ledger.sqlite"
            }
        )
    })?);
    println!(
        "ledger: {} (accepted shares are copied into its work log)",
        ledger.backend()
    );
    pool.feed_ledger(ledger.clone());
    let payouts_token = tokio_util::sync::CancellationToken::new();
    let payouts_task = signer.map(|signer| {
        let cfg = payouts::PayoutConfig {
            network,
            threshold_sat: args.payout_threshold_sat,
            feerate_sat_per_vb: args.payout_feerate,
            confirmations: args.payout_confirmations,
            interval: Duration::from_secs(args.payout_interval_s),
        };
        println!(
            "payouts: balances of at least {} sat, every {} s, {} sat/vB, settled after {} confirmations",
            cfg.threshold_sat, args.payout_interval_s, cfg.feerate_sat_per_vb, cfg.confirmations
        );
        let engine = payouts::Engine::with_signer(ledger.clone(), backend.clone(), signer, cfg);
        tokio::spawn(engine.run(payouts_token.clone()))
    });
    println!(
        "cloudmine pool: stratum+tcp://{} (user = your {} address[.worker], any password; data {})",
        pool.local_addr(),
        if network == Network::Regtest {
            "bcrt1…"
        } else {
            "payout"
        },
        args.data_dir.display()
    );
    println!(
        "  try: cloudmine mine -o stratum+tcp://{} -u <address>.cpu",
        pool.local_addr()
    );
    let status = if args.status_interval > 0 {
        let stats = pool.stats();
        let tip = backend.tip();
        let every = Duration::from_secs(args.status_interval);
        Some(tokio::spawn(async move {
            let (mut last_acc, mut last_t) = (0u64, Instant::now());
            loop {
                tokio::time::sleep(every).await;
                let acc = stats.accepted.load(Ordering::Relaxed);
                let dt = last_t.elapsed().as_secs_f64().max(1e-3);
                let n = acc.saturating_sub(last_acc);
                let rate = stats.rate(pool::server::now_ms());
                let t = *tip.borrow();
                println!(
                    "miners {} | hashrate {} (last {:.0} s) | shares {:.1}/s (rejected {}) | height {} | blocks found {}",
                    stats.connections.load(Ordering::Relaxed),
                    units::Hashrate::from_hps(rate.hps),
                    rate.window_s,
                    n as f64 / dt,
                    stats.rejected.load(Ordering::Relaxed),
                    t.height,
                    stats.blocks.load(Ordering::Relaxed)
                );
                (last_acc, last_t) = (acc, Instant::now());
            }
        }))
    } else {
        None
    };
    stop.await;
    println!("shutting down: closing connections, draining the share log");
    payouts_token.cancel();
    if let Some(t) = payouts_task {
        let _ = t.await;
    }
    pool.shutdown().await;
    if let Some(s) = status {
        s.abort();
    }
    rpc_stop.cancel();
    if let Some(mut r) = rpc_task {
        // open RPC connections finish their request (core_rpc::http::SHUTDOWN_GRACE), then close
        if tokio::time::timeout(core_rpc::http::SHUTDOWN_GRACE + Duration::from_secs(1), &mut r)
            .await
            .is_err()
        {
            r.abort();
        }
    }
    if let Some(p) = cookie {
        let _ = std::fs::remove_file(p);
    }
    drop(backend);
    let _ = writer.await;
    ledger.close().await;
    println!("stopped");
    Ok(())
}
