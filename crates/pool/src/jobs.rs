//! Jobs from block templates.
//!
//! A [`Job`] is one template: branch, prevhash, version, nbits, ntime, and the coinbase payees fixed
//! when it was issued ([`crate::payees`]; none in SOLO). Its coinbase depends on who it
//! pays, so each payout script gets its own [`JobCoinbase`] (coinb1/coinb2, the prepared job and the
//! ready `mining.notify`), built on first use and shared by every connection paying that script.
//! The job's version never has a bit inside the rolling mask set (stratum-v1.md §5), and its ntime is
//! never ahead of the wall clock when the chain allows it.

use crate::config::{EXTRANONCE1_BYTES, EXTRANONCE2_BYTES, VERSION_MASK};
use bitcoin::hashes::Hash;
use bitcoin::{BlockHash, ScriptBuf, TxOut};
use mining_core::coinbase::{self, CoinbaseError, CoinbaseSpec};
use mining_core::{BlockTemplate, PreparedJob};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use stratum::Notify;

/// Job ids come from this one counter: global jobs and per-connection re-sends (a difficulty change)
/// never share an id.
pub static NEXT_JOB_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Most distinct payout scripts one job builds coinbases for (SOLO: one per miner address).
pub const COINBASES_PER_JOB_MAX: usize = 100_000;

/// The bytes a job adds to its coinbase scriptSig: its id, little-endian, without trailing zero
/// bytes (at least one byte).
fn job_tag(id: u64) -> Vec<u8> {
    let b = id.to_le_bytes();
    let len = 8 - (id.leading_zeros() as usize / 8);
    b.get(..len.max(1)).unwrap_or(&b).to_vec()
}

/// A coinbase variant of a job.
#[derive(Debug)]
pub struct JobCoinbase {
    /// The job decoded for hashing.
    pub prepared: PreparedJob,
    /// `mining.notify` params (job id = the global job id).
    pub notify: Notify,
    /// The `mining.notify` line with the global job id, `clean_jobs` false and true: formatted once
    /// and written to every connection paying this script (a new block reaches 19,000 miners fast).
    pub lines: [String; 2],
}

/// One template turned into work.
#[derive(Debug)]
pub struct Job {
    /// Global job number.
    pub id: u64,
    /// The template.
    pub template: Arc<BlockTemplate>,
    /// First job on a new prevhash.
    pub clean: bool,
    /// Job version (mask bits cleared).
    pub version: u32,
    /// ntime sent to miners.
    pub ntime: u32,
    /// The network difficulty of the job's nbits, floored: no share difficulty above it is ever
    /// assigned (ckpool's cap), so every hash that is a block is also a share the miner sends.
    pub network_difficulty: units::Difficulty,
    /// When the job was made (right after its template arrived).
    pub issued: std::time::Instant,
    /// Outputs paying window earners directly, ahead of the payout script's output (which gets the
    /// rest of the coinbase value); empty unless the pool pays coinbase payees.
    pub payees: Vec<TxOut>,
    branch: Vec<[u8; 32]>,
    tag: Vec<u8>,
    coinbases: Mutex<HashMap<ScriptBuf, Arc<JobCoinbase>>>,
}

impl Job {
    /// A job from a template at wall-clock time `now`, its coinbases paying `payees` first.
    pub fn new(
        id: u64,
        template: Arc<BlockTemplate>,
        clean: bool,
        tag: Vec<u8>,
        now: u32,
        payees: Vec<TxOut>,
    ) -> Job {
        let version = template.version & !VERSION_MASK;
        // Never ahead of the wall clock, never before mintime (the chain decides which wins).
        let ntime = template.cur_time.min(now).max(template.min_time);
        // The job id goes into the coinbase scriptSig after the tag: two jobs of one template (a
        // refresh with an unchanged mempool) are different work, so a hash found for one can never be
        // submitted under the other (the miner rolls ntime: ntime alone does not tell them apart).
        let mut tag = tag;
        tag.extend_from_slice(&job_tag(id));
        let network_difficulty = units::Target::from_compact(template.bits)
            .map_or(units::Difficulty::MIN, units::Difficulty::from_target);
        Job {
            id,
            network_difficulty,
            branch: template.merkle_branch(),
            template,
            clean,
            version,
            ntime,
            issued: std::time::Instant::now(),
            payees,
            tag,
            coinbases: Mutex::new(HashMap::new()),
        }
    }

    /// The previous block.
    pub fn prev_hash(&self) -> BlockHash {
        self.template.prev_hash
    }

    /// The coinbase variant paying `script` (the coinbase value less the payees' outputs; no output
    /// for `script` if the payees take it all).
    pub fn coinbase_for(&self, script: &ScriptBuf) -> Result<Arc<JobCoinbase>, CoinbaseError> {
        let mut map = self.coinbases.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(script) {
            return Ok(c.clone());
        }
        let c = Arc::new(self.build_coinbase(script, &self.tag, self.id)?);
        if map.len() >= COINBASES_PER_JOB_MAX {
            map.clear(); // bounded: rebuilt on demand (a cost, never a wrong answer)
        }
        map.insert(script.clone(), c.clone());
        Ok(c)
    }

    /// A variant of the job for one connection, under job id `variant` (a fresh id from
    /// [`NEXT_JOB_ID`]): the same template and outputs, with `variant` added to the coinbase tag, so
    /// it is *different work*. The pool sends it when a connection's difficulty changes mid-job: new
    /// work at the new difficulty, while the work already sent keeps its own difficulty. (Re-sending
    /// the same work at a second difficulty would let a miner choose, hash by hash, which difficulty
    /// to be credited at.) Not cached: difficulty changes are rare and rate-limited.
    pub fn coinbase_variant(
        &self,
        script: &ScriptBuf,
        variant: u64,
    ) -> Result<Arc<JobCoinbase>, CoinbaseError> {
        // Eight bytes, fixed: `tag ‖ job id ‖ variant` can never read as another job's `tag ‖ job id`.
        let mut tag = self.tag.clone();
        tag.extend_from_slice(&variant.to_le_bytes());
        Ok(Arc::new(self.build_coinbase(script, &tag, variant)?))
    }

    fn build_coinbase(&self, script: &ScriptBuf, tag: &[u8], id: u64) -> Result<JobCoinbase, CoinbaseError> {
        let t = &self.template;
        let to_payees: u64 = self
            .payees
            .iter()
            .map(|o| o.value.to_sat())
            .fold(0, u64::saturating_add);
        let mut outputs = self.payees.clone();
        let rest = t.coinbase_value.to_sat().saturating_sub(to_payees);
        if rest > 0 || outputs.is_empty() {
            outputs.push(TxOut {
                value: bitcoin::Amount::from_sat(rest),
                script_pubkey: script.clone(),
            });
        }
        let split = coinbase::split(&CoinbaseSpec {
            height: t.height,
            aux: &t.coinbase_aux,
            tag,
            extranonce_len: EXTRANONCE1_BYTES + EXTRANONCE2_BYTES,
            outputs,
            coinbase_value: t.coinbase_value,
            witness_commitment: t.default_witness_commitment.clone(),
        })?;
        let prev = t.prev_hash.to_byte_array();
        let prepared = PreparedJob::new(
            split.coinb1.clone(),
            split.coinb2.clone(),
            self.branch.clone(),
            self.version,
            prev,
            t.bits,
            self.ntime,
        )
        .map_err(|_| CoinbaseError::NoOutputs)?;
        let notify = Notify {
            job_id: id.to_string(),
            prevhash: mining_core::prevhash_to_stratum(&prev),
            coinb1: split.coinb1,
            coinb2: split.coinb2,
            merkle_branch: self.branch.clone(),
            version: self.version,
            nbits: t.bits,
            ntime: self.ntime,
            clean_jobs: self.clean,
        };
        let lines = [false, true].map(|clean| {
            stratum::ServerMessage::Notify(Notify {
                clean_jobs: clean,
                ..notify.clone()
            })
            .to_line()
        });
        Ok(JobCoinbase {
            prepared,
            notify,
            lines,
        })
    }
}

/// The jobs miners may currently work on: newest last, all on the same prevhash.
#[derive(Debug, Default)]
pub struct JobSet {
    /// Jobs, oldest first.
    pub jobs: Vec<Arc<Job>>,
}

impl JobSet {
    /// The newest job.
    pub fn newest(&self) -> Option<&Arc<Job>> {
        self.jobs.last()
    }

    /// Adds a job; a clean job (new prevhash) replaces all others. Keeps at most `keep`.
    pub fn with(&self, job: Arc<Job>, keep: usize) -> JobSet {
        let mut jobs: Vec<Arc<Job>> = if job.clean { Vec::new() } else { self.jobs.clone() };
        jobs.push(job);
        let excess = jobs.len().saturating_sub(keep.max(1));
        jobs.drain(..excess);
        JobSet { jobs }
    }
}
