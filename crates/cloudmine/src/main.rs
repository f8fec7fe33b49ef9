//! `cloudmine`: one binary, clap subcommands. `main` parses flags and dispatches; the work lives in the crates.

mod bench;
mod config;
mod ledger_cmd;
mod loadgen;
mod mine;
mod node;
mod serve;

use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "cloudmine",
    version,
    about = "Self-hostable cloud-mining platform: dev chain, pool, miner, ledger"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Run the whole platform: chain backend (embedded dev chain by default) and the Stratum pool.
    #[command(args_override_self = true)]
    Serve(Box<serve::ServeArgs>),
    /// CPU miner: Stratum V1 client hashing SHA-256d (`--benchmark` without a pool).
    Mine(Box<mine::MineArgs>),
    /// Read the ledger: balances, history, verify.
    Ledger(ledger_cmd::LedgerArgs),
    /// Run the embedded dev chain with its Bitcoin Core JSON-RPC face.
    Node(node::NodeArgs),
    /// Benchmarks that print figures (see BENCHMARKS.md).
    Bench {
        #[command(subcommand)]
        what: bench::BenchCmd,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse_from(config::expand(std::env::args_os().collect(), &Cli::command())?);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CLOUDMINE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Serve(args) => runtime()?.block_on(serve::run(*args)),
        Command::Mine(args) => mine::run(*args),
        Command::Ledger(args) => runtime()?.block_on(ledger_cmd::run(args)),
        Command::Node(args) => runtime()?.block_on(node::run(args)),
        Command::Bench { what } => bench::run(what),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}
