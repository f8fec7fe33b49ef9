//! `cloudmine ledger balance|history|verify|payouts|import-psbt`: read the ledger that `serve` writes, from the same
//! `--data-dir` (SQLite, `DATA/ledger.sqlite`) or `--database-url` (PostgreSQL).

use clap::{Args, Subcommand};
use ledger::{Account, Ledger};
use std::path::PathBuf;

/// Where the ledger is.
#[derive(Args, Debug)]
pub struct LedgerArgs {
    /// Data directory (the SQLite ledger is `DATA/ledger.sqlite`).
    #[arg(
        long,
        default_value = "./cloudmine-data",
        env = "CLOUDMINE_DATA_DIR",
        global = true
    )]
    pub data_dir: PathBuf,
    /// `postgres://…` (overrides the SQLite file in the data directory).
    #[arg(long, env = "CLOUDMINE_DATABASE_URL", hide_env_values = true, global = true)]
    pub database_url: Option<String>,
    /// JSON output.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub what: LedgerCmd,
}

/// What to show.
#[derive(Subcommand, Debug)]
pub enum LedgerCmd {
    /// Balances of a user (every bucket) or of one account (`user/<owner>/available`, `platform/fees`, …).
    Balance {
        /// Owner (payout address) or full account name.
        who: String,
    },
    /// An account's postings, newest first.
    History {
        /// Owner (its available balance) or full account name.
        who: String,
        /// Lines at most.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Recompute every balance from the entries and check every invariant (exit status 1 on a problem).
    Verify,
    /// On-chain payouts, newest first: txid, state, fee, payees; and owners skipped with the reason.
    Payouts {
        /// Payouts at most (up to 1,000).
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Records the signed PSBT of a payout exported for an external signer (`--payout-signer psbt`;
    /// the file `DATA/payouts/<txid>.psbt` after signing, binary or base64). Every input's signature
    /// is checked; the running pool broadcasts it at its next pass.
    ImportPsbt {
        /// The signed PSBT file.
        file: PathBuf,
    },
}

/// The ledger's location for a data directory and optional database URL.
pub fn ledger_url(data_dir: &std::path::Path, database_url: Option<&str>) -> String {
    database_url.map_or_else(
        || data_dir.join("ledger.sqlite").to_string_lossy().into_owned(),
        str::to_string,
    )
}

fn account(who: &str) -> anyhow::Result<Account> {
    if who.contains('/') {
        Ok(Account::parse(who)?)
    } else {
        Ok(Account::available(who))
    }
}

/// Runs the command.
pub async fn run(a: LedgerArgs) -> anyhow::Result<()> {
    if a.database_url.is_none() && !a.data_dir.join("ledger.sqlite").exists() {
        anyhow::bail!(
            "no ledger at {}: run `cloudmine serve --data-dir {}` first, or pass --database-url",
            a.data_dir.join("ledger.sqlite").display(),
            a.data_dir.display()
        );
    }
    let l = Ledger::open(&ledger_url(&a.data_dir, a.database_url.as_deref())).await?;
    match a.what {
        LedgerCmd::Balance { who } => {
            let rows = if who.contains('/') {
                let acc = account(&who)?;
                vec![(acc.name(), l.balance(&acc).await?)]
            } else {
                l.balances_of(&who).await?
            };
            if a.json {
                let v: serde_json::Map<String, serde_json::Value> = rows
                    .iter()
                    .map(|(n, b)| (n.clone(), serde_json::json!(b)))
                    .collect();
                println!("{}", serde_json::json!({"balances_msat": v}));
            } else if rows.is_empty() {
                println!("{who}: no accounts");
            } else {
                for (n, b) in rows {
                    println!("{n:<60} {b:>20} msat  ({}.{:03} sat)", b / 1000, (b % 1000).abs());
                }
            }
        }
        LedgerCmd::History { who, limit } => {
            let acc = account(&who)?;
            let lines = l.history(&acc, limit).await?;
            if a.json {
                let v: Vec<serde_json::Value> = lines
                    .iter()
                    .map(|h| serde_json::json!({"tx": h.tx_id, "key": h.key, "memo": h.memo, "posted_at_ms": h.posted_at_ms, "msat": h.msat}))
                    .collect();
                println!("{}", serde_json::json!({"account": acc.name(), "history": v}));
            } else {
                println!("{}", acc.name());
                for h in lines {
                    println!("  #{:<8} {:>20} msat  {}  {}", h.tx_id, h.msat, h.key, h.memo);
                }
            }
        }
        LedgerCmd::Payouts { limit } => {
            let list = l.payouts(None, limit).await?;
            let skips = l.payout_skips().await?;
            if a.json {
                let v: Vec<serde_json::Value> = list
                    .iter()
                    .map(|p| {
                        serde_json::json!({
                            "txid": p.txid, "key": p.key, "state": p.state.as_str(), "fee_sat": p.fee_sat,
                            "method": p.method.as_str(), "signed": p.signed,
                            "created_ms": p.created_ms, "confirmed_height": p.confirmed_height, "note": p.note,
                            "payees": p.lines.iter().map(|x| serde_json::json!({"owner": x.owner, "address": x.address, "debit_msat": x.debit_msat, "paid_sat": x.paid_sat})).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                let k: Vec<serde_json::Value> = skips
                    .iter()
                    .map(|x| serde_json::json!({"owner": x.owner, "reason": x.reason, "balance_msat": x.balance_msat, "at_ms": x.at_ms}))
                    .collect();
                println!("{}", serde_json::json!({"payouts": v, "skipped": k}));
            } else {
                for p in &list {
                    println!(
                        "{} {} ({}{}) fee {} sat, {} payees{}{}",
                        p.txid,
                        p.state.as_str(),
                        p.method.as_str(),
                        if p.signed {
                            ""
                        } else {
                            ", awaiting signature or send"
                        },
                        p.fee_sat,
                        p.lines.len(),
                        p.confirmed_height
                            .map(|h| format!(", height {h}"))
                            .unwrap_or_default(),
                        if p.note.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", p.note)
                        }
                    );
                    for x in &p.lines {
                        println!(
                            "  {} {} sat (debited {} msat)",
                            x.address, x.paid_sat, x.debit_msat
                        );
                    }
                }
                for x in &skips {
                    println!(
                        "skipped {}: {} (balance {} msat)",
                        x.owner, x.reason, x.balance_msat
                    );
                }
            }
            l.close().await;
        }
        LedgerCmd::ImportPsbt { file } => {
            let meta = std::fs::metadata(&file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            anyhow::ensure!(
                meta.len() <= payouts::psbt::PSBT_BYTES_MAX as u64,
                "{}: {} bytes, more than PSBT_BYTES_MAX ({})",
                file.display(),
                meta.len(),
                payouts::psbt::PSBT_BYTES_MAX
            );
            let bytes = std::fs::read(&file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let r = payouts::import_signed_psbt(&l, &bytes).await;
            l.close().await;
            let txid = r.map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            if a.json {
                println!("{}", serde_json::json!({"txid": txid, "imported": true}));
            } else {
                println!("payout {txid}: signed transaction recorded; the running pool broadcasts it at its next pass");
            }
        }
        LedgerCmd::Verify => {
            let v = l.verify().await?;
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({"ok": v.problems.is_empty(), "transactions": v.transactions, "entries": v.entries, "accounts": v.accounts, "balance_sum_msat": v.balance_sum, "problems": v.problems})
                );
            } else {
                println!(
                    "ledger ({}): {} transactions, {} entries, {} accounts, balances sum to {} msat",
                    l.backend(),
                    v.transactions,
                    v.entries,
                    v.accounts,
                    v.balance_sum
                );
                for p in &v.problems {
                    println!("PROBLEM: {p}");
                }
                if v.problems.is_empty() {
                    println!("ok: every transaction balanced and sealed, every balance equals its entries");
                }
            }
            l.close().await;
            if !v.problems.is_empty() {
                std::process::exit(1);
            }
        }
    }
    l.close().await;
    Ok(())
}
