//! What the `berth` subcommands do. `main.rs` only parses the command line and calls these.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_engine::Engine;

use crate::access::Access;
use crate::api::{self, App, TokenApp};
use crate::authn::Authn;
use crate::config::{self, Config};
use crate::serve;

/// Where the configuration comes from, as given on the command line.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigSource {
    /// Configuration file (distribution's config.yml format). Without one, $REGISTRY_CONFIG,
    /// /etc/distribution/config.yml and /etc/docker/registry/config.yml are tried, then the
    /// built-in defaults (./data, port 5000, no auth).
    #[arg(value_name = "CONFIG")]
    pub file: Option<PathBuf>,
    /// Same as the positional CONFIG.
    #[arg(long = "config", value_name = "CONFIG", conflicts_with = "file")]
    pub config: Option<PathBuf>,
    /// Do not look for a configuration file: built-in defaults and REGISTRY_* variables only.
    #[arg(long, conflicts_with_all = ["file", "config"])]
    pub no_config_file: bool,
}

/// Print `msg` and exit with status 2 (usage or configuration problem).
pub fn fail(msg: &str) -> ! {
    eprintln!("berth: {msg}");
    std::process::exit(2);
}

fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{},hyper=warn,h2=warn", cfg.log_level)));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    if cfg.log_json { b.json().init() } else { b.init() }
}

/// Load and validate the configuration, start logging, log the warnings. Exits on errors.
pub fn load(src: &ConfigSource) -> Config {
    if let Err(e) = berth_engine::io::check_settings() {
        fail(&format!("configuration error: {e}"));
    }
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let file = src.file.as_ref().or(src.config.as_ref());
    let source = match (file, src.no_config_file) {
        (Some(f), _) => config::Source::File(f),
        (None, true) => config::Source::DefaultsOnly,
        (None, false) => config::Source::Search,
    };
    match config::load(source, &env) {
        Ok((cfg, warnings)) => {
            init_logging(&cfg);
            match (&cfg.file, cfg.file_origin) {
                (Some(f), Some(origin)) => tracing::info!(
                    file = %f.display(),
                    how = origin.as_str(),
                    "loaded configuration file"
                ),
                _ => tracing::info!("no configuration file: built-in defaults and REGISTRY_* variables"),
            }
            for w in warnings {
                tracing::warn!("{w}");
            }
            cfg
        }
        Err(e) => {
            for line in e.0.lines() {
                eprintln!("berth: configuration error: {line}");
            }
            std::process::exit(2);
        }
    }
}

/// Authentication and access rules from the configuration, opening every file they name.
pub fn security(cfg: &Config) -> Result<(Arc<Authn>, Arc<Access>), String> {
    let authn = Arc::new(Authn::from_config(&cfg.auth, cfg.auth_throttle)?);
    let rules = match &cfg.access_rules {
        Some(p) => Some(berth_auth::AccessRules::load(p).map_err(|e| format!("accesscontrol.config: {e}"))?),
        None => None,
    };
    Ok((authn, Arc::new(Access::new(rules))))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            ctrl_c.await.unwrap_or(());
            tracing::warn!("received SIGINT: shutting down");
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => tracing::warn!("received SIGINT: shutting down"),
        _ = term.recv() => tracing::warn!("received SIGTERM: shutting down"),
    }
}

/// Run `fut` on a multi-thread runtime; an error is logged and exits with status 1.
pub fn run_async(fut: impl std::future::Future<Output = Result<(), String>>) {
    berth_engine::io::disable_huge_pages();
    berth_engine::io::tune_allocator();
    // File writes, syncs and metadata transactions run on the blocking pool. Tokio's default of
    // up to 512 threads let 64 concurrent pushes grow to 515 threads and ~700 MiB RSS (each
    // thread waiting on the disk or the metadata write lock, with its own stack and allocator
    // cache); past this many the work queues instead, which the disk cannot tell apart.
    let blocking = std::env::var("BERTH_BLOCKING_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(BLOCKING_THREADS);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(blocking)
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(fut) {
        tracing::error!("{e}");
        eprintln!("berth: {e}");
        std::process::exit(1);
    }
}

async fn bind(addr: SocketAddr, setting: &str) -> Result<tokio::net::TcpListener, String> {
    match tokio::net::TcpListener::bind(addr).await {
        // `:port` asks for a dual-stack socket; without IPv6 fall back to IPv4.
        Err(e) if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) => {
            tracing::warn!(error = %e, "cannot listen on [::]; listening on IPv4 only");
            tokio::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, addr.port())).await
        }
        other => other,
    }
    .map_err(|e| format!("cannot listen on {addr} ({setting}): {e}"))
}

/// Load the TLS files, if configured, and keep them current.
fn tls(cfg: &Config) -> Result<Option<Arc<crate::tls::Tls>>, String> {
    let Some(t) = &cfg.tls else { return Ok(None) };
    let tls = Arc::new(crate::tls::Tls::load(t.clone())?);
    tracing::info!(
        certificate = %t.certificate.display(),
        client_certificates = if tls.requires_client_certificates() { "required" } else { "not asked for" },
        minimum = if t.tls13_only { "TLS 1.3" } else { "TLS 1.2" },
        "TLS on (HTTP/2 and HTTP/1.1 by ALPN)"
    );
    Ok(Some(tls))
}

/// Raise the soft limit of open files to the hard limit (as Go programs such as distribution
/// do): every connection and every blob being read or written holds a descriptor.
fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) if n < 4096 => tracing::warn!(
            open_files = n,
            "the open-files limit is low: connections beyond it are refused; raise it (ulimit -n, LimitNOFILE=)"
        ),
        Ok(n) => tracing::info!(open_files = n, "open-files limit (soft limit raised to the hard limit)"),
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the open-files limit"),
    }
}

/// Threads of the blocking pool (file I/O, syncs, metadata); `BERTH_BLOCKING_THREADS` overrides.
pub const BLOCKING_THREADS: usize = 32;

/// The engine over the configured storage: the directory, with its metadata in SQLite there or
/// in the shared database (`database.enabled`).
async fn open_engine(cfg: &Config, exclusive: bool) -> berth_engine::Result<Engine> {
    if let Some(s3) = &cfg.s3 {
        // The configuration refuses storage.s3 without database.enabled.
        let Some(db) = &cfg.database else {
            return Err(berth_engine::Error::Meta(berth_engine::MetaError::Settings(
                "storage.s3 needs database.enabled: true".into(),
            )));
        };
        return Engine::open_s3(db, s3).await;
    }
    match (&cfg.database, exclusive) {
        (Some(db), _) => Engine::open_shared(&cfg.root, db, exclusive).await,
        (None, false) => Engine::open(&cfg.root).await,
        (None, true) => Engine::open_exclusive(&cfg.root).await,
    }
}

/// What start-up says when the storage does not open: the setting to look at.
fn open_error(cfg: &Config, e: &berth_engine::Error) -> String {
    use berth_engine::{Error, MetaError, ObjectStoreError};
    match e {
        // The message names the setting already.
        Error::Meta(MetaError::Settings(m)) | Error::ObjectStore(ObjectStoreError::Settings(m)) => {
            format!("cannot open the storage: {m}")
        }
        Error::ObjectStore(ObjectStoreError::Unavailable(m)) => {
            format!("cannot reach the object store (storage.s3.regionendpoint): {m}")
        }
        Error::ObjectStore(_) => format!("cannot use the object store (storage.s3.*): {e}"),
        Error::Meta(MetaError::Unavailable(m)) if cfg.database.is_some() => {
            format!("cannot reach the database (database.host, database.port): {m}")
        }
        Error::Meta(_) if cfg.database.is_some() => format!("cannot use the database (database.*): {e}"),
        _ => format!(
            "cannot open storage at {} (storage.filesystem.rootdirectory): {e}",
            cfg.root.display()
        ),
    }
}

/// Where the blobs are, for the start-up line.
fn storage_shown(cfg: &Config) -> String {
    match &cfg.s3 {
        Some(s3) => format!(
            "s3 bucket {} at {} (root {:?})",
            s3.bucket, s3.endpoint, s3.root_directory
        ),
        None => cfg.root.display().to_string(),
    }
}

/// The upstreams of the pull-through cache, when any is configured. Fills spool under the
/// storage root (`mirror-spool`), or in the temporary directory when blobs are in S3.
fn mirrors(cfg: &Config) -> Result<Option<Arc<crate::mirror::Mirrors>>, String> {
    if cfg.mirrors.is_empty() {
        return Ok(None);
    }
    let spool = match &cfg.s3 {
        Some(_) => std::env::temp_dir().join("berth-mirror-spool"),
        None => cfg.root.join("mirror-spool"),
    };
    let own_certificate = cfg.tls.as_ref().map(|t| t.certificate.clone());
    let m = crate::mirror::Mirrors::new(&cfg.mirrors, spool, cfg.peer_url.clone(), own_certificate)?;
    match (&cfg.peer_url, &cfg.database) {
        (Some(url), _) => {
            tracing::info!(peer_url = %url, "other replicas stream this one's mirror downloads from here")
        }
        (None, Some(_)) => tracing::info!(
            "http.peerurl is not set and http.addr listens on every interface: other replicas wait until this one's mirror downloads are stored; set http.peerurl (env REGISTRY_HTTP_PEERURL) so that they stream them"
        ),
        (None, None) => {}
    }
    for e in m.entries() {
        let c = &e.config;
        tracing::info!(
            upstream = %c.name,
            url = %c.url,
            prefix = %if c.prefix.is_empty() { "(every repository)" } else { c.prefix.as_str() },
            hosts = ?c.hosts,
            tag_ttl = ?c.tag_ttl,
            push = c.push,
            credentials = c.username.is_some(),
            "mirroring an upstream registry"
        );
    }
    Ok(Some(Arc::new(m)))
}

/// `berth serve`: the registry.
pub async fn serve(cfg: Config) -> Result<(), String> {
    raise_open_files_limit();
    let (authn, access) = security(&cfg)?;
    let tls = tls(&cfg)?;
    let engine = open_engine(&cfg, false)
        .await
        .map_err(|e| open_error(&cfg, &e))?
        .with_upload_limits(cfg.upload_limits)
        .with_cache_budget(cfg.cache_budget)
        .with_blob_cache(cfg.blob_cache.0, cfg.blob_cache.1);
    let listener = bind(cfg.addr, "http.addr / REGISTRY_HTTP_ADDR").await?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(
        addr = %local,
        storage = %storage_shown(&cfg),
        blobs = engine.blob_store_kind(),
        metadata = engine.metadata_kind(),
        config = %cfg.file.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "(defaults)".into()),
        delete = cfg.delete_enabled,
        auth = authn.mode(),
        access_rules = access.rules().is_some(),
        io = berth_engine::io_engine(),
        hash_pairs = berth_engine::digest::sha256x2::available(),
        "berth {} listening", env!("CARGO_PKG_VERSION")
    );
    if cfg.read_only {
        tracing::warn!(
            "read-only maintenance mode (storage.maintenance.readonly.enabled): pushes and deletes are refused"
        );
    }
    authn.spawn_reloader();
    let debug = match cfg.debug_addr {
        Some(addr) => Some(bind(addr, "http.debug.addr / REGISTRY_HTTP_DEBUG_ADDR").await?),
        None => None,
    };
    let mirrors = mirrors(&cfg)?;
    let app = Arc::new(App {
        engine: Arc::new(engine),
        config: cfg,
        authn,
        access,
        metrics: Arc::default(),
        inflight: Default::default(),
        mirrors,
    });
    serve::spawn_upload_reaper(app.clone());
    if let Some(m) = &app.mirrors
        && !app.config.read_only
    {
        crate::mirror::evict::spawn(app.engine.clone(), m.clone());
    }
    serve::spawn_gc(app.clone());
    if let Some(t) = &tls {
        t.spawn_reloader();
    }
    let opts = serve::ServeOptions {
        tls,
        header_timeout: app.config.header_timeout,
    };
    if let Some(listener) = debug {
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        tracing::info!(addr = %local, metrics = app.config.metrics_path.as_deref().unwrap_or("off"), "debug listener (plain HTTP: /healthz, /readyz, metrics)");
        let (app, plain) = (
            app.clone(),
            serve::ServeOptions {
                tls: None,
                ..opts.clone()
            },
        );
        tokio::spawn(async move {
            let handler = move |req| api::handle_debug(app.clone(), req);
            if let Err(e) = serve::serve_with(handler, listener, plain, std::future::pending()).await {
                tracing::error!(error = %e, "debug listener failed");
            }
        });
    }
    serve::serve(app, listener, opts, shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}

/// `berth token-server`: only the token endpoint and the JWKS.
pub async fn token_server(cfg: Config, addr: SocketAddr) -> Result<(), String> {
    let (authn, access) = security(&cfg)?;
    let tls = tls(&cfg)?;
    if let Some(t) = &tls {
        t.spawn_reloader();
    }
    let Some(server) = authn.token_server() else {
        return Err("berth token-server needs token mode with the built-in server: set auth.token.server.enabled: true (env REGISTRY_AUTH_TOKEN_SERVER_ENABLED=true) and auth.token.server.key".into());
    };
    let path = server.path.clone();
    let listener = bind(addr, "--addr").await?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(addr = %local, path = %path, "berth {} token server listening", env!("CARGO_PKG_VERSION"));
    authn.spawn_reloader();
    let app = Arc::new(TokenApp {
        authn,
        access,
        access_log: cfg.access_log,
        trusted_proxies: cfg.trusted_proxies.clone(),
        body_limits: cfg.body_limits,
    });
    serve::serve_with(
        move |req| api::handle_token_only(app.clone(), req),
        listener,
        serve::ServeOptions {
            tls,
            header_timeout: cfg.header_timeout,
        },
        shutdown_signal(),
    )
    .await
    .map_err(|e| e.to_string())
}

/// `berth migrate`: the metadata of a stopped registry from SQLite into PostgreSQL, and its blob
/// files into S3 when the configuration names a bucket.
pub async fn migrate(cfg: Config, from: Option<std::path::PathBuf>) -> Result<(), String> {
    let Some(db) = cfg.database.clone() else {
        return Err("berth migrate copies the metadata into the database that database.* names: set database.enabled: true and its settings (or REGISTRY_DATABASE_*)".into());
    };
    let (root, setting) = match (&cfg.s3, from) {
        (_, Some(dir)) => (dir, "--from"),
        (None, None) => (cfg.root.clone(), "storage.filesystem.rootdirectory"),
        (Some(_), None) => {
            return Err("berth migrate into S3 (storage.s3) needs the filesystem registry to copy: name its root directory with --from DIR".into());
        }
    };
    let engine = Engine::open_exclusive(&root).await.map_err(|e| {
        let hint = if matches!(e, berth_engine::Error::StorageInUse { .. }) {
            ": stop every berth on it first"
        } else {
            ""
        };
        format!("cannot open storage at {} ({setting}): {e}{hint}", root.display())
    })?;
    let started = std::time::Instant::now();
    let r = engine
        .migrate_metadata(&db, cfg.s3.as_ref(), |r| {
            eprintln!(
                "berth migrate: {} blob links, {} manifests, {} tags copied; {} blob files ({} bytes) into S3",
                r.links, r.manifests, r.tags, r.blobs, r.bytes
            );
        })
        .await
        .map_err(|e| {
            format!(
                "migration to {} failed: {e} (run berth migrate again to go on)",
                db.name()
            )
        })?;
    let blobs = match &cfg.s3 {
        Some(s3) => format!(
            "; {} blob files ({} bytes) into bucket {} (root {:?})",
            r.blobs, r.bytes, s3.bucket, s3.root_directory
        ),
        None => String::new(),
    };
    println!(
        "copied {} blob links, {} manifests and {} tags into {}{blobs} ({:.1}s); {} now opens with database.enabled only",
        r.links,
        r.manifests,
        r.tags,
        db.name(),
        started.elapsed().as_secs_f64(),
        root.display()
    );
    Ok(())
}

/// `berth gc`: collect garbage in the storage of a stopped registry (a running one collects
/// online with storage.maintenance.gc.enabled).
pub async fn gc(cfg: Config, grace: Option<std::time::Duration>, untagged: bool, dry_run: bool) -> Result<(), String> {
    let engine = open_engine(&cfg, true).await.map_err(|e| {
        let hint = if matches!(e, berth_engine::Error::StorageInUse { .. }) {
            ": stop every berth on it first, or let them collect online (storage.maintenance.gc.enabled: true)"
        } else {
            ""
        };
        format!("{}{hint}", open_error(&cfg, &e))
    })?;
    let opts = berth_engine::GcOptions {
        grace: grace.unwrap_or(cfg.gc.grace),
        untagged: untagged || cfg.gc.untagged,
        dry_run,
    };
    let started = std::time::Instant::now();
    let r = engine
        .gc(opts)
        .await
        .map_err(|e| format!("garbage collection failed: {e}"))?;
    if r.elsewhere {
        return Err(
            "another berth is collecting garbage in this database now (online collection); try again when it is done"
                .into(),
        );
    }
    let verb = if dry_run { "would remove" } else { "removed" };
    println!(
        "{verb}: {} untagged manifests, {} blob links, {} blobs ({} bytes), {} stray files ({} bytes){} in {} repositories; grace {:?}{} ({:.1}s)",
        r.manifests,
        r.links,
        r.blobs,
        r.bytes,
        r.stray_files,
        r.stray_bytes,
        if r.stray_uploads > 0 {
            format!(", {} stray multipart uploads", r.stray_uploads)
        } else {
            String::new()
        },
        r.repositories,
        opts.grace,
        if opts.untagged {
            ", untagged manifests included"
        } else {
            ""
        },
        started.elapsed().as_secs_f64()
    );
    for s in r.skipped {
        println!("skipped {s}");
    }
    Ok(())
}

/// `berth check-config` / `berth config check`.
pub fn check_config(src: &ConfigSource) {
    let cfg = load(src);
    if let Err(e) = security(&cfg) {
        fail(&e);
    }
    if let Some(t) = &cfg.tls
        && let Err(e) = crate::tls::server_config(t)
    {
        fail(&e);
    }
    if let Some(db) = &cfg.database
        && let Err(e) = berth_engine::postgres::check_tls_files(db)
    {
        let file = cfg
            .file
            .as_ref()
            .map_or_else(|| "REGISTRY_* variables".to_owned(), |f| f.display().to_string());
        fail(&format!("configuration error: {file}: {e}"));
    }
    println!("{cfg:#?}");
    println!("configuration OK");
}

/// `berth token`: mint a token with the configured signing key.
pub fn token(src: &ConfigSource, user: &str, scopes: &[String]) {
    let cfg = load(src);
    let authn = Authn::from_config(&cfg.auth, cfg.auth_throttle).unwrap_or_else(|e| fail(&e));
    let Some(server) = authn.token_server() else {
        fail(
            "berth token needs token mode with the built-in token server (auth.token.server.enabled and auth.token.server.key)",
        );
    };
    let granted: Vec<berth_auth::Scope> = scopes
        .iter()
        .map(|s| s.parse().unwrap_or_else(|e| fail(&format!("--scope {s}: {e}"))))
        .collect();
    let issued = server.issuer.issue(user, &granted, None).unwrap_or_else(|e| fail(&e));
    println!("{}", issued.token);
}

/// `berth htpasswd`: an htpasswd line for a password read from standard input.
pub fn htpasswd(user: &str, cost: u32) {
    let mut password = String::new();
    if let Err(e) = std::io::stdin().read_line(&mut password) {
        fail(&format!("reading the password from standard input failed: {e}"));
    }
    let password = password.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        fail(&format!(
            "no password on standard input (example: echo \"$PASSWORD\" | berth htpasswd {user})"
        ));
    }
    println!(
        "{}",
        berth_auth::htpasswd::entry(user, password, cost).unwrap_or_else(|e| fail(&e))
    );
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path)?.write_all(bytes)
}

/// `berth keygen`: a signing key (mode 0600) and a self-signed certificate. With `if_missing`,
/// an existing pair is kept (for init containers); one file without the other is an error.
pub fn keygen(alg: &str, key: &Path, cert: &Path, name: &str, days: u32, if_missing: bool) {
    if if_missing {
        match (key.exists(), cert.exists()) {
            (true, true) => {
                println!("{} and {} exist; keeping them", key.display(), cert.display());
                return;
            }
            (false, false) => {}
            (k, _) => {
                let (have, missing) = if k { (key, cert) } else { (cert, key) };
                fail(&format!(
                    "{} exists but {} does not: remove the other file or restore the pair",
                    have.display(),
                    missing.display()
                ))
            }
        }
    }
    let alg = match alg.to_ascii_lowercase().as_str() {
        "rs256" => jsonwebtoken::Algorithm::RS256,
        "es256" => jsonwebtoken::Algorithm::ES256,
        "es384" => jsonwebtoken::Algorithm::ES384,
        other => fail(&format!("--alg {other}: use rs256, es256 or es384")),
    };
    let (key_pem, cert_pem) = berth_auth::token::signing::generate(alg, name, days).unwrap_or_else(|e| fail(&e));
    write_private(key, key_pem.as_bytes()).unwrap_or_else(|e| fail(&format!("{}: {e}", key.display())));
    std::fs::write(cert, cert_pem).unwrap_or_else(|e| fail(&format!("{}: {e}", cert.display())));
    println!(
        "wrote {} (private key, mode 0600) and {} (certificate)",
        key.display(),
        cert.display()
    );
}

/// `berth jwks`: a JWKS document for PEM files.
pub fn jwks(files: &[PathBuf]) {
    let keys: Vec<_> = files
        .iter()
        .map(|f| {
            let pem = std::fs::read(f).unwrap_or_else(|e| fail(&format!("{}: {e}", f.display())));
            berth_auth::token::public_jwk(f, &pem).unwrap_or_else(|e| fail(&e))
        })
        .collect();
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({ "keys": keys })).unwrap_or_default()
    );
}

/// `berth healthcheck`: one HTTP/1.0 GET, exit 0 when the status is 200.
pub fn healthcheck(addr: SocketAddr, path: &str, timeout: std::time::Duration) {
    use std::io::{Read as _, Write as _};
    let probe = || -> Result<String, String> {
        if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(format!("{path:?} is not a request path"));
        }
        let mut s = std::net::TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
        write!(
            s,
            "GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: berth-healthcheck\r\n\r\n"
        )
        .map_err(|e| format!("send: {e}"))?;
        let mut head = Vec::new();
        s.take(256).read_to_end(&mut head).map_err(|e| format!("read: {e}"))?;
        let line = String::from_utf8_lossy(&head).lines().next().unwrap_or("").to_owned();
        Ok(line)
    };
    match probe() {
        Ok(line) if line.split(' ').nth(1) == Some("200") => println!("{addr}{path}: {line}"),
        Ok(line) => {
            eprintln!("berth healthcheck: {addr}{path} answered {line:?}");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("berth healthcheck: {e}");
            std::process::exit(1);
        }
    }
}
