//! `cloudmine node`: the embedded dev chain with its Bitcoin Core JSON-RPC face.

use anyhow::Context as _;
use chain::dev::{DevNode, DevRpc};
use core_rpc::server::{self, Credentials};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// Flags of `cloudmine node`.
#[derive(clap::Args, Debug)]
pub struct NodeArgs {
    /// Data directory (blocks.dat, devchain.json, .cookie).
    #[arg(long, default_value = "./cloudmine-data", env = "CLOUDMINE_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Target seconds between dev chain blocks (difficulty retargets every block toward it).
    #[arg(long, default_value_t = 30)]
    pub dev_block_interval: u32,
    /// Address for the Core-compatible JSON-RPC server (127.0.0.1:0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:18443")]
    pub dev_rpc_listen: SocketAddr,
    /// RPC credentials USER:PASS; without it a cookie file is written to DATA_DIR/.cookie, as Core does.
    #[arg(long, env = "CLOUDMINE_DEV_RPC_AUTH")]
    pub dev_rpc_auth: Option<String>,
    /// Publish ZMQ `hashblock` notifications as Core's -zmqpubhashblock does (e.g. tcp://127.0.0.1:28332).
    #[arg(long)]
    pub dev_zmqpubhashblock: Option<String>,
}

/// Warns about secrets given as command-line flags (every user of the machine sees them in `ps`);
/// the environment variable or the `--config` file keeps them out of sight.
pub(crate) fn warn_secret_flags(flags: &[(&str, &str)]) {
    for arg in std::env::args() {
        for (flag, env) in flags {
            if arg == *flag || arg.starts_with(&format!("{flag}=")) {
                eprintln!(
                    "warning: {flag} on the command line is visible to every user in `ps`; set {env} or put it in the --config file instead"
                );
            }
        }
    }
}

/// Runs the node until SIGINT or SIGTERM.
pub async fn run(args: NodeArgs) -> anyhow::Result<()> {
    // Installed first (see `shutdown_signal`).
    let stop = shutdown_signal();
    warn_secret_flags(&[("--dev-rpc-auth", "CLOUDMINE_DEV_RPC_AUTH")]);
    let dir = args.data_dir.clone();
    let interval = args.dev_block_interval;
    let chain = tokio::task::spawn_blocking(move || devchain::DevChain::open(&dir, interval))
        .await
        .context("opening the dev chain")??;
    let node = DevNode::new(chain);
    let (creds, cookie) = match &args.dev_rpc_auth {
        Some(pair) if pair.contains(':') => (Credentials::new(vec![pair.clone()]), None),
        Some(_) => anyhow::bail!("--dev-rpc-auth must be USER:PASS"),
        None => {
            let secret: [u8; 32] = bitcoin::secp256k1::rand::random();
            let pair = format!(
                "__cookie__:{}",
                secret.iter().map(|b| format!("{b:02x}")).collect::<String>()
            );
            let path = args.data_dir.join(".cookie");
            write_private(&path, &pair)
                .with_context(|| format!("writing the RPC cookie {}", path.display()))?;
            (Credentials::new(vec![pair]), Some(path))
        }
    };
    let listener = tokio::net::TcpListener::bind(args.dev_rpc_listen)
        .await
        .with_context(|| format!("binding the JSON-RPC listener on {}", args.dev_rpc_listen))?;
    let addr = listener.local_addr()?;
    {
        let c = node.lock();
        println!(
            "cloudmine dev chain: height {} tip {} (data {}, block interval {} s)",
            c.height(),
            c.tip().hash,
            args.data_dir.display(),
            c.params().interval_at(c.height() + 1)
        );
    }
    match &cookie {
        Some(p) => println!(
            "JSON-RPC listening on http://{addr} (auth: cookie {})",
            p.display()
        ),
        None => println!("JSON-RPC listening on http://{addr} (auth: --dev-rpc-auth)"),
    }
    let zmq = match &args.dev_zmqpubhashblock {
        Some(ep) => {
            let (bound, task) = chain::zmq::publish(ep, node.tip_watch())
                .await
                .map_err(anyhow::Error::msg)?;
            println!("ZMQ hashblock publisher on {bound}");
            Some(task)
        }
        None => None,
    };
    let handler: Arc<dyn server::RpcHandler> = Arc::new(DevRpc::new(node.clone()));
    server::serve(listener, handler, creds, stop).await?;
    if let Some(t) = zmq {
        t.abort();
    }
    if let Some(p) = cookie {
        let _ = std::fs::remove_file(p);
    }
    let c = node.lock();
    println!(
        "cloudmine dev chain stopped at height {} tip {}",
        c.height(),
        c.tip().hash
    );
    Ok(())
}

/// Writes a secret file readable by its owner alone (0600, also when the file existed before with
/// wider permissions).
pub(crate) fn write_private(path: &std::path::Path, body: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(body.as_bytes())?;
    f.sync_all()
}

/// Completes on SIGINT or SIGTERM. The handlers are installed when this is called, not when the
/// future is first polled: call it before announcing readiness, so a signal sent right after the
/// announcement stops the process in order (with a default handler it would just die).
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let int = signal(SignalKind::interrupt()).ok();
        let term = signal(SignalKind::terminate()).ok();
        async move {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = wait(int) => {},
                () = wait(term) => {},
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
