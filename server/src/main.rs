//! The `berth` binary: parse the command line, run the subcommand.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use berth_server::cli::{self, ConfigSource};

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
    Serve(ConfigSource),
    /// Run only the token server (token endpoint and JWKS), for registries that verify its tokens
    /// with auth.token.rootcertbundle or auth.token.jwks. Same configuration as serve: auth.token
    /// (with server.enabled and server.key), auth.htpasswd and the access rules.
    TokenServer {
        #[command(flatten)]
        src: ConfigSource,
        /// Listen address.
        #[arg(long, default_value = "0.0.0.0:5001")]
        addr: SocketAddr,
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
    /// Generate a token-signing key (PKCS#8 PEM, mode 0600) and a self-signed certificate for it.
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
        /// Keep an existing key and certificate instead of failing (for init containers).
        #[arg(long)]
        if_missing: bool,
    },
    /// Print a JWKS document for PEM certificates, public keys or private keys, with kid = the
    /// RFC 7638 thumbprint (what distribution v3's auth.token.jwks expects).
    #[command(group(clap::ArgGroup::new("inputs").required(true).multiple(true).args(["files", "cert", "key"])))]
    Jwks {
        /// PEM files (certificates, public keys or private keys).
        files: Vec<PathBuf>,
        /// A certificate (repeatable).
        #[arg(long)]
        cert: Vec<PathBuf>,
        /// A private or public key (repeatable; only the public half is printed).
        #[arg(long)]
        key: Vec<PathBuf>,
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
        #[command(flatten)]
        src: ConfigSource,
    },
    /// Validate the configuration, open the files it names, and print the settings in effect.
    CheckConfig(ConfigSource),
    /// Garbage collection on the storage of a stopped registry: remove blob links no manifest
    /// of their repository references, blob files no repository links, and (with --untagged)
    /// manifests no tag reaches. Prints what was (or, with --dry-run, would be) freed.
    Gc {
        #[command(flatten)]
        src: ConfigSource,
        /// Only report.
        #[arg(long)]
        dry_run: bool,
        /// Also remove manifests no tag reaches.
        #[arg(long)]
        untagged: bool,
        /// Spare what was linked or pushed less than this long ago (e.g. 0s, 30m, 2h); default
        /// storage.maintenance.gc.grace, else 1h.
        #[arg(long, value_parser = parse_duration)]
        grace: Option<std::time::Duration>,
    },
    /// Copy the metadata of a stopped registry from its SQLite database into the PostgreSQL
    /// database its configuration names (database.*), then bind the storage to it. Blobs stay
    /// where they are, or, when the configuration names an S3 bucket (storage.s3), are copied
    /// into it from the directory --from names. Run it again to finish an interrupted copy.
    Migrate {
        #[command(flatten)]
        src: ConfigSource,
        /// The filesystem registry to copy (its storage.filesystem.rootdirectory); required
        /// with storage.s3, else the configuration's root directory.
        #[arg(long, value_name = "DIR")]
        from: Option<std::path::PathBuf>,
    },
    /// Probe a running registry: GET the path over HTTP and exit 0 on 200, 1 otherwise. For
    /// container health checks in images without a shell or curl.
    Healthcheck {
        /// Address of the registry.
        #[arg(long, default_value = "127.0.0.1:5000")]
        addr: SocketAddr,
        /// Path to get (/healthz: the process answers; /readyz: storage and metadata work).
        #[arg(long, default_value = "/healthz")]
        path: String,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Same as check-config.
    Check(ConfigSource),
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    berth_server::config::parse_duration(s).ok_or_else(|| format!("{s:?} is not a duration such as 0s, 30m or 2h"))
}

fn main() {
    match Cli::parse().command {
        Command::Serve(src) => cli::run_async(cli::serve(cli::load(&src))),
        Command::TokenServer { src, addr } => cli::run_async(cli::token_server(cli::load(&src), addr)),
        Command::Htpasswd { user, cost } => cli::htpasswd(&user, cost),
        Command::Keygen {
            alg,
            key,
            cert,
            name,
            days,
            if_missing,
        } => cli::keygen(&alg, &key, &cert, &name, days, if_missing),
        Command::Jwks { files, cert, key } => cli::jwks(&[files, cert, key].concat()),
        Command::Token { user, scopes, src } => cli::token(&src, &user, &scopes),
        Command::CheckConfig(src) | Command::Config(ConfigCommand::Check(src)) => cli::check_config(&src),
        Command::Gc {
            src,
            dry_run,
            untagged,
            grace,
        } => cli::run_async(cli::gc(cli::load(&src), grace, untagged, dry_run)),
        Command::Migrate { src, from } => cli::run_async(cli::migrate(cli::load(&src), from)),
        Command::Healthcheck { addr, path, timeout } => {
            cli::healthcheck(addr, &path, std::time::Duration::from_secs(timeout))
        }
    }
}
