//! Pool configuration and its limits. Every limit is named here, configurable, and tested.

use bitcoin::{Network, ScriptBuf};
use mining_core::VardiffConfig;
use std::time::Duration;
use units::Difficulty;

/// Bytes of extranonce1 per connection (stratum-v1.md §3.2).
pub const EXTRANONCE1_BYTES: usize = 4;
/// Bytes of extranonce2 the miner rolls.
pub const EXTRANONCE2_BYTES: usize = 4;
/// The BIP310/BIP320 version-rolling mask offered.
pub const VERSION_MASK: u32 = 0x1fff_e000;
/// How far ntime may run ahead of the wall clock (Core's 2-hour limit).
pub const NTIME_FUTURE_S: u32 = 7_200;

/// Who the coinbase pays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PayoutScheme {
    /// The finder's address gets the whole block.
    Solo,
    /// The pool's address gets the block; miners are credited PPLNS in the ledger
    /// ([`crate::accounting`]), immature until the block matures.
    Pool(ScriptBuf),
}

/// Default bound on shares logged but not yet in the ledger: about an hour at 250 shares/s.
pub const LEDGER_BACKLOG_DEFAULT: u64 = 1_000_000;

/// How long accepted shares stay in the local share log once accounting is done with them: 3 days.
/// The share log is accounting's buffer and the raw audit trail (every header); what pays is the
/// ledger's work log, and delivery proofs (orders) keep their own log.
pub const SHARE_LOG_RETENTION_DEFAULT: Duration = Duration::from_secs(3 * 24 * 3600);
/// How long work records stay in the ledger's work log at least: 7 days. Records a payout window
/// may still need are kept longer, whatever their age ([`WORK_RETAIN_WINDOWS`]).
pub const WORK_LOG_RETENTION_DEFAULT: Duration = Duration::from_secs(7 * 24 * 3600);
/// The shortest retention accepted (either log): job rows and TIDES windows fixed when a job was
/// issued must outlive every job a miner can still submit to.
pub const RETENTION_MIN: Duration = Duration::from_secs(3600);
/// The work log keeps at least this many of the largest payout window (PPLNS `2·W`, TIDES `8·W`,
/// `W` the work of a block at the highest difficulty among recent jobs) behind the newest record,
/// so every block still to be credited, and every coinbase payee plan, reads its whole window.
pub const WORK_RETAIN_WINDOWS: u128 = 4;

/// Retention of the share log and the ledger's work log (`None`: keep forever).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Share rows older than this, and already accounted, are deleted ([`SHARE_LOG_RETENTION_DEFAULT`]).
    pub share_log: Option<Duration>,
    /// Work records older than this, and below every window still needed, are deleted
    /// ([`WORK_LOG_RETENTION_DEFAULT`]).
    pub work_log: Option<Duration>,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            share_log: Some(SHARE_LOG_RETENTION_DEFAULT),
            work_log: Some(WORK_LOG_RETENTION_DEFAULT),
        }
    }
}

/// PPLNS window in multiples of the block's work (product.md: `N = 2·D`).
pub const PPLNS_WINDOW_FACTOR: u128 = 2;
/// TIDES window in multiples of the block's work (product.md: `N = 8·D`).
pub const TIDES_WINDOW_FACTOR: u128 = 8;

/// How a pool-mode pool pays its miners (product.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sharing {
    /// Pay per last N shares, `N = 2·D`.
    #[default]
    Pplns,
    /// PPLNS with `N = 8·D`, the window fixed when the block's job was issued (it ends at the newest
    /// share durable then).
    Tides,
    /// Pay per share: `d/D × B × (1−f)` per accepted share, at once, from the pool reserve; the
    /// pool's blocks refill the reserve.
    Pps,
    /// Full pay per share: `d/D × (B + E[F]) × (1−f)`, `E[F]` the mean fees of the best chain's last 144 blocks.
    Fpps,
}

impl Sharing {
    /// The window in multiples of the block's work (PPLNS/TIDES; per-share schemes have none).
    pub fn window_factor(self) -> u128 {
        match self {
            Sharing::Pplns => PPLNS_WINDOW_FACTOR,
            Sharing::Tides => TIDES_WINDOW_FACTOR,
            Sharing::Pps | Sharing::Fpps => 0,
        }
    }
    /// Whether every share is paid at once (PPS, FPPS) rather than blocks split over a window.
    pub fn per_share(self) -> bool {
        matches!(self, Sharing::Pps | Sharing::Fpps)
    }
    /// Name for memos and logs.
    pub fn name(self) -> &'static str {
        match self {
            Sharing::Pplns => "PPLNS",
            Sharing::Tides => "TIDES",
            Sharing::Pps => "PPS",
            Sharing::Fpps => "FPPS",
        }
    }
}

/// Most payee outputs one coinbase may carry (product.md: "on the order of a hundred or two"). Each
/// costs 31–43 bytes of coinbase, hashed with every share and sent with every notify.
pub const COINBASE_PAYEES_MAX: usize = 200;
/// Default smallest coinbase payee output: smaller earners accrue a balance instead.
pub const COINBASE_PAYEE_MIN_SAT_DEFAULT: u64 = 10_000;

/// Default cap on open connections from one IP address: a large home or small farm fits; a
/// misbehaving host cannot take the whole server. Farms and proxies behind one address raise it.
pub const CONNECTIONS_PER_IP_DEFAULT: usize = 1_024;

/// Default cap on worker names one connection may authorize (a proxy multiplexing many workers
/// over one connection stays well inside it; repeated `mining.authorize` cannot grow a set forever).
pub const WORKERS_PER_CONNECTION_DEFAULT: usize = 256;

/// Pool settings.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Network of payout addresses (`bcrt1…` on the dev chain).
    pub network: Network,
    /// Payout scheme.
    pub payout: PayoutScheme,
    /// Pool fee in parts per million of a block's reward (pool mode; SOLO pays the finder in full).
    pub fee_ppm: u32,
    /// How pool-mode blocks are shared.
    pub sharing: Sharing,
    /// PPLNS/TIDES pool mode: pay up to this many of the window's largest earners directly in the
    /// coinbase ([`crate::payees`]; at most [`COINBASE_PAYEES_MAX`]); 0 pays the pool's address
    /// alone and every earner accrues a balance.
    pub coinbase_payees: usize,
    /// Smallest coinbase payee output, sat ([`COINBASE_PAYEE_MIN_SAT_DEFAULT`]).
    pub coinbase_payee_min_sat: u64,
    /// Tag in the coinbase scriptSig.
    pub coinbase_tag: Vec<u8>,
    /// Longest request line; longer closes the connection.
    pub line_bytes_max: usize,
    /// Subscribe and authorize must both happen within this long of accept.
    pub handshake_deadline: Duration,
    /// A connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// A write to a miner that does not complete within this long closes the connection (a peer
    /// that sends but never reads cannot hold its task, its permit, or a graceful shutdown).
    pub write_timeout: Duration,
    /// Open connections in total (a permit is taken before accept).
    pub connections_max: usize,
    /// Open connections per IP address (default [`CONNECTIONS_PER_IP_DEFAULT`]; raise it for a farm
    /// or a proxy behind one address).
    pub connections_per_ip_max: usize,
    /// Worker names one connection may authorize ([`WORKERS_PER_CONNECTION_DEFAULT`]); past it
    /// `mining.authorize` is refused (error 24, with the limit in the message).
    pub workers_per_connection_max: usize,
    /// Invalid shares (malformed, stale excluded) tolerated in a row before the IP is banned.
    pub invalid_shares_before_ban: u32,
    /// Accepted shares waiting in the share log for the ledger, at most ([`LEDGER_BACKLOG_DEFAULT`]).
    /// Past it, shares are refused (error 20, "accounting backlog full") instead of acknowledged:
    /// nothing is dropped, the miner keeps its work.
    pub ledger_backlog_max: u64,
    /// How long a ban lasts.
    pub ban_duration: Duration,
    /// How long the share log and the work log keep what accounting is done with.
    pub retention: Retention,
    /// Open HTTP API connections per IP address (IPv6: per /64) at most
    /// ([`crate::api::API_HTTP_LIMITS`]'s 64 by default; raise it behind a reverse proxy).
    pub http_connections_per_ip_max: usize,
    /// Jobs kept per connection (older ones are stale).
    pub jobs_kept: usize,
    /// A new template on the same tip at least this often (clean_jobs = false).
    pub job_refresh_interval: Duration,
    /// Starting difficulty.
    pub initial_difficulty: Difficulty,
    /// After work was sent, difficulty suggestions (`suggest_difficulty`, `suggest_target`) are
    /// applied at most this often (5 s); each applied one sends new work, so more would only cost
    /// the pool CPU. Others are answered `true` and ignored.
    pub suggest_interval: Duration,
    /// Vardiff settings (floor and ceiling included).
    pub vardiff: VardiffConfig,
}

impl PoolConfig {
    /// The rule that books coinbase payee outputs (pool mode), whether or not new jobs pay payees:
    /// a block of a job issued with payees is credited by it after a restart without them.
    pub fn payee_book(&self) -> Option<crate::payees::PayeeRule> {
        match &self.payout {
            PayoutScheme::Pool(script) => Some(crate::payees::PayeeRule {
                max: self.coinbase_payees.min(COINBASE_PAYEES_MAX),
                min_sat: self.coinbase_payee_min_sat,
                network: self.network,
                pool_script: script.clone(),
            }),
            PayoutScheme::Solo => None,
        }
    }

    /// The coinbase payee rule, if this configuration pays payees in coinbases (pool mode, PPLNS or
    /// TIDES, `coinbase_payees > 0`).
    pub fn payee_rule(&self) -> Option<crate::payees::PayeeRule> {
        self.payee_book()
            .filter(|_| self.coinbase_payees > 0 && !self.sharing.per_share())
    }

    /// Defaults for a network and payout scheme.
    pub fn new(network: Network, payout: PayoutScheme) -> PoolConfig {
        PoolConfig {
            network,
            payout,
            fee_ppm: 0,
            sharing: Sharing::Pplns,
            coinbase_payees: 0,
            coinbase_payee_min_sat: COINBASE_PAYEE_MIN_SAT_DEFAULT,
            coinbase_tag: b"/cloudmine/".to_vec(),
            line_bytes_max: stratum::framing::MINER_LINE_BYTES_MAX,
            handshake_deadline: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(600),
            write_timeout: Duration::from_secs(10),
            connections_max: 20_000,
            connections_per_ip_max: CONNECTIONS_PER_IP_DEFAULT,
            workers_per_connection_max: WORKERS_PER_CONNECTION_DEFAULT,
            invalid_shares_before_ban: 100,
            ledger_backlog_max: LEDGER_BACKLOG_DEFAULT,
            ban_duration: Duration::from_secs(600),
            retention: Retention::default(),
            http_connections_per_ip_max: crate::api::API_HTTP_LIMITS.connections_per_ip_max,
            jobs_kept: 16,
            job_refresh_interval: Duration::from_secs(30),
            initial_difficulty: Difficulty::from_int(1),
            suggest_interval: Duration::from_secs(5),
            vardiff: VardiffConfig::default(),
        }
    }
}
