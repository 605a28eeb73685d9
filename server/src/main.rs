//! The `berth` binary.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use berth_engine::Engine;
use berth_server::api::App;
use berth_server::{config, serve};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "berth", version, about = "A fast OCI container registry")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the registry.
    Serve {
        /// Configuration file (distribution's config.yml format). Without one, $REGISTRY_CONFIG,
        /// /etc/distribution/config.yml and /etc/docker/registry/config.yml are tried, then the
        /// built-in defaults (./data, port 5000, no auth).
        #[arg(value_name = "CONFIG")]
        file: Option<PathBuf>,
        /// Same as the positional CONFIG.
        #[arg(long = "config", value_name = "CONFIG", conflicts_with = "file")]
        config: Option<PathBuf>,
        /// Do not look for a configuration file: built-in defaults and REGISTRY_* variables only.
        #[arg(long, conflicts_with_all = ["file", "config"])]
        no_config_file: bool,
    },
    /// Print an htpasswd line (bcrypt) for USER; the password is read from the first line of
    /// standard input. Append the output to the file named by auth.htpasswd.path.
    Htpasswd {
        /// User name.
        user: String,
        /// bcrypt cost (4–31).
        #[arg(long, default_value_t = berth_auth::htpasswd::DEFAULT_COST)]
        cost: u32,
    },
    /// Generate a token-signing key (PKCS#8 PEM) and a self-signed certificate for it.
    Keygen {
        /// Algorithm: rs256, es256 or es384.
        #[arg(long, default_value = "rs256")]
        alg: String,
        /// Where to write the private key.
        #[arg(long)]
        key: PathBuf,
        /// Where to write the certificate.
        #[arg(long)]
        cert: PathBuf,
        /// Certificate common name.
        #[arg(long, default_value = "berth token signer")]
        name: String,
        /// Certificate validity in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Print a JWKS document for PEM certificates, public keys or private keys, with kid = the
    /// RFC 7638 thumbprint (what distribution v3's auth.token.jwks expects).
    Jwks {
        /// PEM files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run only the token server (token endpoint and JWKS), for example next to registries
    /// that verify its tokens with auth.token.rootcertbundle or auth.token.jwks. Uses the same
    /// configuration as serve: auth.token (with server.enabled and server.key), auth.htpasswd and
    /// the access rules.
    TokenServer {
        /// Configuration file.
        #[arg(value_name = "CONFIG")]
        file: Option<PathBuf>,
        /// Same as the positional CONFIG.
        #[arg(long = "config", value_name = "CONFIG", conflicts_with = "file")]
        config: Option<PathBuf>,
        /// Do not look for a configuration file: built-in defaults and REGISTRY_* variables only.
        #[arg(long, conflicts_with_all = ["file", "config"])]
        no_config_file: bool,
        /// Listen address.
        #[arg(long, default_value = "0.0.0.0:5001")]
        addr: std::net::SocketAddr,
    },
    /// Mint a token offline with the token server's signing key from the configuration (for CI
    /// jobs and scripts). The scopes are granted as given: whoever can read the key can sign.
    Token {
        /// Subject (user name) of the token.
        #[arg(long)]
        user: String,
        /// Scope to grant, e.g. repository:team/app:pull,push (repeatable).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Configuration file.
        #[arg(long = "config", value_name = "CONFIG")]
        config: Option<PathBuf>,
        /// Do not look for a configuration file: built-in defaults and REGISTRY_* variables only.
        #[arg(long, conflicts_with = "config")]
        no_config_file: bool,
    },
    /// Validate the configuration and print the settings in effect.
    CheckConfig {
        /// Configuration file.
        #[arg(value_name = "CONFIG")]
        file: Option<PathBuf>,
        /// Same as the positional CONFIG.
        #[arg(long = "config", value_name = "CONFIG", conflicts_with = "file")]
        config: Option<PathBuf>,
        /// Do not look for a configuration file: built-in defaults and REGISTRY_* variables only.
        #[arg(long, conflicts_with_all = ["file", "config"])]
        no_config_file: bool,
    },
}

fn init_logging(cfg: &config::Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{},hyper=warn,h2=warn", cfg.log_level)));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    if cfg.log_json { b.json().init() } else { b.init() }
}

fn load(file: Option<PathBuf>, no_config_file: bool) -> config::Config {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let source = match (&file, no_config_file) {
        (Some(f), _) => config::Source::File(f),
        (None, true) => config::Source::DefaultsOnly,
        (None, false) => config::Source::Search,
    };
    match config::load(source, &env) {
        Ok((cfg, warnings)) => {
            init_logging(&cfg);
            for w in warnings {
                tracing::warn!("{w}");
            }
            cfg
        }
        Err(e) => {
            eprintln!("berth: configuration error: {e}");
            std::process::exit(2);
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
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
    #[cfg(not(unix))]
    {
        ctrl_c.await.unwrap_or(());
        tracing::warn!("received Ctrl-C: shutting down");
    }
}

async fn run(cfg: config::Config) -> Result<(), String> {
    let authn = Arc::new(berth_server::authn::Authn::from_config(&cfg.auth)?);
    let rules = match &cfg.access_rules {
        Some(p) => Some(berth_auth::AccessRules::load(p).map_err(|e| format!("accesscontrol.config: {e}"))?),
        None => None,
    };
    let access = Arc::new(berth_server::access::Access::new(rules));
    let engine = Engine::open(&cfg.root).await.map_err(|e| {
        format!(
            "cannot open storage at {} (storage.filesystem.rootdirectory): {e}",
            cfg.root.display()
        )
    })?;
    let listener = match tokio::net::TcpListener::bind(cfg.addr).await {
        // `:port` asks for a dual-stack socket; without IPv6 fall back to IPv4.
        Err(e) if cfg.addr.ip() == std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED) => {
            tracing::warn!(error = %e, "cannot listen on [::]; listening on IPv4 only");
            tokio::net::TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, cfg.addr.port())).await
        }
        other => other,
    }
    .map_err(|e| format!("cannot listen on {} (http.addr / REGISTRY_HTTP_ADDR): {e}", cfg.addr))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(
        addr = %local,
        storage = %cfg.root.display(),
        config = %cfg.file.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "(defaults)".into()),
        delete = cfg.delete_enabled,
        auth = authn.mode(),
        access_rules = access.rules().is_some(),
        "berth {} listening", env!("CARGO_PKG_VERSION")
    );
    authn.spawn_reloader();
    let app = Arc::new(App {
        engine,
        config: cfg,
        authn,
        access,
    });
    serve::spawn_upload_reaper(app.clone());
    serve::serve(app, listener, shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}

fn fail(msg: &str) -> ! {
    eprintln!("berth: {msg}");
    std::process::exit(2);
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path)?.write_all(bytes)
}

async fn run_token_server(cfg: config::Config, addr: std::net::SocketAddr) -> Result<(), String> {
    let authn = Arc::new(berth_server::authn::Authn::from_config(&cfg.auth)?);
    let Some(server) = authn.token_server() else {
        return Err("berth token-server needs token mode with the built-in server: set auth.token.server.enabled: true (env REGISTRY_AUTH_TOKEN_SERVER_ENABLED=true) and auth.token.server.key".into());
    };
    let path = server.path.clone();
    let rules = match &cfg.access_rules {
        Some(p) => Some(berth_auth::AccessRules::load(p).map_err(|e| format!("accesscontrol.config: {e}"))?),
        None => None,
    };
    let access = Arc::new(berth_server::access::Access::new(rules));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} (--addr): {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(addr = %local, path = %path, "berth {} token server listening", env!("CARGO_PKG_VERSION"));
    authn.spawn_reloader();
    let app = Arc::new(berth_server::api::TokenApp {
        authn,
        access,
        access_log: cfg.access_log,
    });
    serve::serve_with(
        move |req| berth_server::api::handle_token_only(app.clone(), req),
        listener,
        shutdown_signal(),
    )
    .await
    .map_err(|e| e.to_string())
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            file,
            config,
            no_config_file,
        } => {
            let cfg = load(file.or(config), no_config_file);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            if let Err(e) = rt.block_on(run(cfg)) {
                tracing::error!("{e}");
                eprintln!("berth: {e}");
                std::process::exit(1);
            }
        }
        Command::Keygen {
            alg,
            key,
            cert,
            name,
            days,
        } => {
            let alg = match alg.to_ascii_lowercase().as_str() {
                "rs256" => jsonwebtoken::Algorithm::RS256,
                "es256" => jsonwebtoken::Algorithm::ES256,
                "es384" => jsonwebtoken::Algorithm::ES384,
                other => fail(&format!("--alg {other}: use rs256, es256 or es384")),
            };
            let (key_pem, cert_pem) =
                berth_auth::token::signing::generate(alg, &name, days).unwrap_or_else(|e| fail(&e));
            write_private(&key, key_pem.as_bytes()).unwrap_or_else(|e| fail(&format!("{}: {e}", key.display())));
            std::fs::write(&cert, cert_pem).unwrap_or_else(|e| fail(&format!("{}: {e}", cert.display())));
            println!(
                "wrote {} (private key, mode 0600) and {} (certificate)",
                key.display(),
                cert.display()
            );
        }
        Command::Jwks { files } => {
            let mut keys = Vec::new();
            for f in &files {
                let pem = std::fs::read(f).unwrap_or_else(|e| fail(&format!("{}: {e}", f.display())));
                keys.push(berth_auth::token::public_jwk(f, &pem).unwrap_or_else(|e| fail(&e)));
            }
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({ "keys": keys })).unwrap_or_default()
            );
        }
        Command::TokenServer {
            file,
            config,
            no_config_file,
            addr,
        } => {
            let cfg = load(file.or(config), no_config_file);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            if let Err(e) = rt.block_on(run_token_server(cfg, addr)) {
                tracing::error!("{e}");
                eprintln!("berth: {e}");
                std::process::exit(1);
            }
        }
        Command::Token {
            user,
            scopes,
            config,
            no_config_file,
        } => {
            let cfg = load(config, no_config_file);
            let authn = berth_server::authn::Authn::from_config(&cfg.auth).unwrap_or_else(|e| fail(&e));
            let Some(server) = authn.token_server() else {
                fail(
                    "berth token needs token mode with the built-in token server (auth.token.server.enabled and auth.token.server.key)",
                );
            };
            let mut granted = Vec::new();
            for s in &scopes {
                granted.push(
                    s.parse::<berth_auth::Scope>()
                        .unwrap_or_else(|e| fail(&format!("--scope {s}: {e}"))),
                );
            }
            let issued = server.issuer.issue(&user, &granted, false).unwrap_or_else(|e| fail(&e));
            println!("{}", issued.token);
        }
        Command::Htpasswd { user, cost } => {
            let mut password = String::new();
            if let Err(e) = std::io::stdin().read_line(&mut password) {
                eprintln!("berth: reading the password from standard input failed: {e}");
                std::process::exit(2);
            }
            let password = password.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                eprintln!("berth: no password on standard input (example: echo \"$PASSWORD\" | berth htpasswd {user})");
                std::process::exit(2);
            }
            match berth_auth::htpasswd::entry(&user, password, cost) {
                Ok(line) => println!("{line}"),
                Err(e) => {
                    eprintln!("berth: {e}");
                    std::process::exit(2);
                }
            }
        }
        Command::CheckConfig {
            file,
            config,
            no_config_file,
        } => {
            let cfg = load(file.or(config), no_config_file);
            // Open what the settings name (htpasswd, keys, rules) as serve would.
            if let Err(e) = berth_server::authn::Authn::from_config(&cfg.auth) {
                fail(&e);
            }
            if let Some(p) = &cfg.access_rules
                && let Err(e) = berth_auth::AccessRules::load(p)
            {
                fail(&format!("accesscontrol.config: {e}"));
            }
            println!("{cfg:#?}");
            println!("configuration OK");
        }
    }
}
