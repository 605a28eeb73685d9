//! What the scenarios (`scale`, `readers-under-push`, `pull-through`) share: the client and report flags,
//! the population flags, the runtime, Ctrl-C.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use crate::blob::Pattern;
use crate::client::{Credentials, Target};
use crate::ops::{Ctx, MonoMode};
use crate::population::Layout;
use crate::units::parse_size;

/// How a scenario reaches its registries: credentials and client threads.
#[derive(Debug, clap::Args, Clone, Default)]
pub struct ClientArgs {
    /// Basic-auth user.
    #[arg(long)]
    pub user: Option<String>,
    /// Basic-auth password.
    #[arg(long)]
    pub password: Option<String>,
    /// Bearer token (sent as-is, instead of basic auth).
    #[arg(long)]
    pub token: Option<String>,
    /// Client runtime threads (default: number of CPUs).
    #[arg(long)]
    pub threads: Option<usize>,
}

impl ClientArgs {
    /// Resolves a registry URL with these credentials.
    pub fn target(&self, url: &str) -> Result<Arc<Target>, String> {
        let creds = Credentials {
            user: self.user.clone(),
            password: self.password.clone(),
            token: self.token.clone(),
        };
        Target::resolve(url, None, &creds).map(Arc::new)
    }
}

/// Where a scenario writes its report.
#[derive(Debug, clap::Args, Clone, Default)]
pub struct OutputArgs {
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the markdown table to this file.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
}

/// Flags common to the population scenarios (`scale`, `readers-under-push`).
#[derive(Debug, clap::Args, Clone)]
pub struct Common {
    /// Layer blob size of the population and of pushes.
    #[arg(long, value_parser = parse_size, default_value = "512")]
    pub blob_size: u64,
    /// Repository prefix of the population.
    #[arg(long, default_value = "berth-scale")]
    pub repo: String,
    /// Seed of the blob content and of every random choice.
    #[arg(long, default_value_t = 0x5EED)]
    pub seed: u64,
    /// How blobs are uploaded: one `POST ?digest=` (`post`) or `POST` then `PUT ?digest=` (`post-put`).
    #[arg(long, value_enum, default_value = "post")]
    pub mono: MonoMode,
    /// Connections that populate the registry.
    #[arg(long, default_value_t = 32)]
    pub push_concurrency: usize,
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

impl Common {
    /// Resolves a registry URL with these credentials.
    pub fn target(&self, url: &str) -> Result<Arc<Target>, String> {
        self.client.target(url)
    }

    /// The operation settings and the population layout.
    pub fn ctx_layout(&self) -> (Arc<Ctx>, Arc<Layout>) {
        let pattern = Arc::new(Pattern::new(self.seed));
        let ctx = Arc::new(Ctx {
            pattern: Arc::clone(&pattern),
            mono: self.mono,
            chunk_size: None,
            verify_digest: false,
        });
        let layout = Arc::new(Layout {
            prefix: self.repo.trim_end_matches('/').to_string(),
            seed: self.seed,
            blob_size: self.blob_size,
            pattern,
        });
        (ctx, layout)
    }
}

/// A number unique to this run (clock and process id), to make blob contents and tags unique.
pub fn run_id() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        ^ u64::from(std::process::id()).rotate_left(32)
}

/// Runs `body` on a multi-thread runtime with a stop channel that Ctrl-C sets (twice exits at once).
pub fn block_on<F, Fut>(threads: Option<usize>, body: F) -> i32
where
    F: FnOnce(watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = i32>,
{
    let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return 2;
        }
    };
    let code = runtime.block_on(async {
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(async move {
            let mut interrupted = false;
            while tokio::signal::ctrl_c().await.is_ok() {
                if interrupted {
                    eprintln!("interrupted twice: exiting");
                    std::process::exit(130);
                }
                interrupted = true;
                eprintln!("\ninterrupted: stopping (Ctrl-C again to quit at once)");
                let _ = stop_tx.send(true);
            }
        });
        body(stop_rx).await
    });
    runtime.shutdown_timeout(Duration::from_millis(100));
    code
}

/// Writes the scenario's report as JSON to `--json` and its table to `--markdown`, when given;
/// returns whether every write worked.
pub fn write_reports(output: &OutputArgs, report: &impl serde::Serialize, table: &str) -> bool {
    let mut ok = true;
    if let Some(path) = &output.json {
        ok &= write_file(
            path,
            &(serde_json::to_string_pretty(report).expect("report serialises") + "\n"),
        );
    }
    if let Some(path) = &output.markdown {
        ok &= write_file(path, table);
    }
    ok
}

/// Writes `text` to `path`, reporting a failure; returns whether it worked.
pub fn write_file(path: &Path, text: &str) -> bool {
    match std::fs::write(path, text) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("error: writing {}: {e}", path.display());
            false
        }
    }
}
