//! A throwaway PostgreSQL server for a test binary: `initdb` into a temporary directory, listening
//! on 127.0.0.1 only (a free port) with its Unix socket in that directory, password logins
//! (scram-sha-256) for a `berth` role that owns one new database per test.
//!
//! PostgreSQL refuses to run as root, so under root the server runs as the unprivileged system
//! user `berth-pg` (created when missing). The binaries are found on `PATH` or under
//! `/usr/lib/postgresql/*/bin`; when they are missing the test fails, saying so.
//!
//! [`Server::start_tls`] starts one with `ssl = on`: a server certificate for `localhost` only
//! (made with rcgen, by a test CA that also signs a client certificate), and a `pg_hba.conf`
//! that lets the `berth` roles in over TLS only (`hostssl`; the superuser the harness sets up
//! with keeps a plain `host` line); the plain server is as it was.
//!
//! [`shared`] starts one server per test binary. A static is never dropped, so every server also
//! has a watchdog process that stops it (`pg_ctl stop -m immediate`) and removes its directory
//! once the test process is gone, whatever way it ends; a server owned by a test ([`Server::start`])
//! is stopped at once when dropped.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use std::os::unix::process::CommandExt;

use berth_engine::postgres::PgSettings;

/// The superuser's password (the server listens on loopback only and lives for one test run).
const ADMIN_PASSWORD: &str = "berth-test-admin";
/// The role the stores log in as.
pub const USER: &str = "berth";
/// Its password.
pub const PASSWORD: &str = "berth-test-password";
/// The system user the server runs as when the tests run as root.
const RUN_AS: &str = "berth-pg";
/// On a TLS server: the role that must also present a client certificate
/// (`clientcert=verify-ca`); its password is [`PASSWORD`].
pub const CERT_USER: &str = "berth_cert";

/// The certificates of a TLS server, as the client side sees them (files readable by the test).
pub struct Pki {
    /// The CA that signed the server's certificate and [`Pki::client_cert`].
    pub ca: PathBuf,
    /// A CA that signed nothing the server has.
    pub other_ca: PathBuf,
    /// A client certificate (CN `berth_cert`) signed by [`Pki::ca`].
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
    /// A client certificate signed by [`Pki::other_ca`], which the server does not trust.
    pub untrusted_cert: PathBuf,
    /// Its key.
    pub untrusted_key: PathBuf,
    dir: tempfile::TempDir,
    server_cert: String,
    server_key: String,
    ca_pem: String,
}

fn ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
}

fn leaf(
    names: &[&str],
    cn: &str,
    usage: rcgen::ExtendedKeyUsagePurpose,
    by: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
) -> (String, String) {
    let mut params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    params.extended_key_usages = vec![usage];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, by).unwrap();
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::Builder::new().prefix("berth-pki-").tempdir().unwrap();
        let ca_one = ca("berth test CA");
        let ca_two = ca("another test CA");
        // The server's certificate names localhost only: a connection to 127.0.0.1 does not
        // match it (verify-full), and one to localhost does.
        let (server_cert, server_key) = leaf(
            &["localhost"],
            "localhost",
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            &ca_one,
        );
        let (client_cert, client_key) = leaf(&[], CERT_USER, rcgen::ExtendedKeyUsagePurpose::ClientAuth, &ca_one);
        let (untrusted_cert, untrusted_key) = leaf(&[], CERT_USER, rcgen::ExtendedKeyUsagePurpose::ClientAuth, &ca_two);
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        Pki {
            ca: write("ca.crt", &ca_one.pem()),
            other_ca: write("other-ca.crt", &ca_two.pem()),
            client_cert: write("client.crt", &client_cert),
            client_key: write("client.key", &client_key),
            untrusted_cert: write("untrusted.crt", &untrusted_cert),
            untrusted_key: write("untrusted.key", &untrusted_key),
            ca_pem: ca_one.pem(),
            server_cert,
            server_key,
            dir,
        }
    }

    /// The directory of the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// A running server.
pub struct Server {
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    bin: PathBuf,
    dir: PathBuf,
    user: Option<(u32, u32)>,
    watchdog: Option<Child>,
    /// The certificates, on a TLS server.
    pub tls: Option<Pki>,
}

static SHARED: LazyLock<Server> = LazyLock::new(Server::start);
static NEXT_DB: AtomicU64 = AtomicU64::new(0);

/// The server of this test binary.
pub fn shared() -> &'static Server {
    &SHARED
}

fn bin_dir() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file()));
    if let Some(d) = on_path {
        // A link (such as /usr/local/bin/initdb) leads to the directory of the whole set.
        return std::fs::canonicalize(d.join("initdb"))
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or(d);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "the PostgreSQL tests need a PostgreSQL server's binaries (initdb, pg_ctl), on PATH or under \
             /usr/lib/postgresql/*/bin; none were found. Install them (Debian: apt-get install postgresql; \
             scripts/install-deps.sh does)"
        ),
    }
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed ({}): {text}", out.status);
    text
}

/// The uid and gid to run the server as (creating the user when missing), or `None` when the
/// tests do not run as root.
fn server_user() -> Option<(u32, u32)> {
    let me = run(Command::new("id").arg("-u"), "id -u");
    if me.trim() != "0" {
        return None;
    }
    let exists = Command::new("id")
        .arg("-u")
        .arg(RUN_AS)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !exists {
        let made = Command::new("useradd")
            .args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", RUN_AS])
            .output()
            .expect("cannot run useradd");
        // Another test binary may have created it meanwhile.
        let now = Command::new("id")
            .arg("-u")
            .arg(RUN_AS)
            .output()
            .map(|o| o.status.success());
        assert!(
            now.unwrap_or(false),
            "cannot create the system user {RUN_AS} to run PostgreSQL as: {}",
            String::from_utf8_lossy(&made.stderr)
        );
    }
    let uid = run(Command::new("id").args(["-u", RUN_AS]), "id -u")
        .trim()
        .parse()
        .unwrap();
    let gid = run(Command::new("id").args(["-g", RUN_AS]), "id -g")
        .trim()
        .parse()
        .unwrap();
    Some((uid, gid))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Server {
    /// Start a new server (and its watchdog).
    pub fn start() -> Server {
        Server::start_with(None)
    }

    /// Start a new server with `ssl = on` that lets the `berth` roles in over TLS only, and
    /// [`CERT_USER`] only with a client certificate signed by [`Pki::ca`].
    pub fn start_tls() -> Server {
        Server::start_with(Some(Pki::new()))
    }

    fn start_with(tls: Option<Pki>) -> Server {
        let bin = bin_dir();
        let user = server_user();
        let dir = tempfile::Builder::new().prefix("berth-pg-").tempdir().unwrap().keep();
        std::fs::write(dir.join("pw"), ADMIN_PASSWORD).unwrap();
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
            std::os::unix::fs::chown(dir.join("pw"), Some(uid), Some(gid)).unwrap();
        }
        let mut server = Server {
            port: free_port(),
            bin,
            dir,
            user,
            watchdog: None,
            tls,
        };
        server.watchdog = Some(server.spawn_watchdog());
        run(
            server.as_server_user(&server.bin.join("initdb")).args([
                "-D",
                &server.data(),
                "-U",
                "postgres",
                "--pwfile",
                &server.path("pw"),
                "--auth=scram-sha-256",
                "--no-sync",
                "--no-instructions",
                "--locale=C",
                "-E",
                "UTF8",
            ]),
            "initdb",
        );
        if let Some(pki) = &server.tls {
            server.write_tls_files(pki);
        }
        server.start_again();
        server.psql(&format!("CREATE ROLE {USER} LOGIN CREATEDB PASSWORD '{PASSWORD}'"));
        if server.tls.is_some() {
            server.psql(&format!("CREATE ROLE {CERT_USER} LOGIN PASSWORD '{PASSWORD}'"));
        }
        server
    }

    /// The server's certificate, key and client CA, and a `pg_hba.conf` of `hostssl` lines for
    /// the stores' roles.
    fn write_tls_files(&self, pki: &Pki) {
        use std::os::unix::fs::PermissionsExt;
        let hba = format!(
            "# The harness's superuser: the Unix socket, or plain TCP, to set up databases.\n\
             local all postgres scram-sha-256\n\
             host all postgres 127.0.0.1/32 scram-sha-256\n\
             # The stores: TLS only; {CERT_USER} also with a client certificate.\n\
             hostssl all {CERT_USER} 127.0.0.1/32 scram-sha-256 clientcert=verify-ca\n\
             hostssl all {USER} 127.0.0.1/32 scram-sha-256\n"
        );
        for (name, text) in [
            ("server.crt", pki.server_cert.as_str()),
            ("server.key", pki.server_key.as_str()),
            ("client-ca.crt", pki.ca_pem.as_str()),
            ("data/pg_hba.conf", hba.as_str()),
        ] {
            let path = self.dir.join(name);
            std::fs::write(&path, text).unwrap();
            // PostgreSQL refuses a key that others can read.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            if let Some((uid, gid)) = self.user {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
            }
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_owned()
    }

    fn data(&self) -> String {
        self.path("data")
    }

    fn as_server_user(&self, program: &Path) -> Command {
        let mut c = Command::new(program);
        c.current_dir(&self.dir).stdin(Stdio::null());
        if let Some((uid, gid)) = self.user {
            c.uid(uid).gid(gid);
        }
        c
    }

    /// A process that waits for this test process to end, then stops the server and removes
    /// its directory.
    fn spawn_watchdog(&self) -> Child {
        let script = format!(
            "while [ -e /proc/{pid} ]; do sleep 0.5; done; \
             '{pg_ctl}' -D '{data}' stop -m immediate >/dev/null 2>&1; rm -rf '{dir}'",
            pid = std::process::id(),
            pg_ctl = self.bin.join("pg_ctl").display(),
            data = self.data(),
            dir = self.dir.display(),
        );
        let mut c = self.as_server_user(Path::new("/bin/sh"));
        c.arg("-c")
            .arg(script)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        c.spawn().expect("cannot start the PostgreSQL watchdog")
    }

    /// Start the server (again, after [`Server::stop_fast`]), on the same port.
    pub fn start_again(&self) {
        let mut options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=300",
            self.port,
            self.dir.display()
        );
        if self.tls.is_some() {
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={dir}/server.crt -c ssl_key_file={dir}/server.key \
                 -c ssl_ca_file={dir}/client-ca.crt",
                dir = self.dir.display()
            ));
        }
        let started = self
            .as_server_user(&self.bin.join("pg_ctl"))
            .args([
                "-D",
                &self.data(),
                "-l",
                &self.path("log"),
                "-w",
                "-t",
                "60",
                "-s",
                "-o",
                &options,
                "start",
            ])
            .output()
            .expect("cannot run pg_ctl");
        if !started.status.success() {
            let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
            panic!(
                "pg_ctl start failed: {}{}\nserver log:\n{log}",
                String::from_utf8_lossy(&started.stdout),
                String::from_utf8_lossy(&started.stderr)
            );
        }
    }

    /// Stop the server the way an operator would (`pg_ctl stop -m fast`: sessions are ended).
    pub fn stop_fast(&self) {
        run(
            self.as_server_user(&self.bin.join("pg_ctl"))
                .args(["-D", &self.data(), "-w", "-s", "stop", "-m", "fast"]),
            "pg_ctl stop",
        );
    }

    /// Run one statement as the superuser.
    pub fn psql(&self, sql: &str) -> String {
        run(
            Command::new(self.bin.join("psql"))
                .env("PGPASSWORD", ADMIN_PASSWORD)
                .args([
                    "-X",
                    "-q",
                    "-t",
                    "-A",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                ])
                .arg("-p")
                .arg(self.port.to_string())
                .arg("-c")
                .arg(sql),
            "psql",
        )
    }

    /// Settings for database `dbname` as the `berth` role.
    pub fn settings(&self, dbname: &str) -> PgSettings {
        PgSettings {
            host: "127.0.0.1".into(),
            port: self.port,
            user: USER.into(),
            password: PASSWORD.into(),
            dbname: dbname.into(),
            connect_timeout: Duration::from_secs(3),
            ..PgSettings::default()
        }
    }

    /// A new, empty database owned by the `berth` role, and the settings to reach it.
    pub async fn database(&self) -> PgSettings {
        self.database_of(USER).await
    }

    /// A new, empty database owned by `user` (`berth` or [`CERT_USER`]), and the settings to
    /// reach it as `user`.
    pub async fn database_of(&self, user: &str) -> PgSettings {
        let name = format!("t{}", NEXT_DB.fetch_add(1, Ordering::Relaxed));
        let admin = self.settings("postgres");
        let (client, conn) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .user("postgres")
            .password(ADMIN_PASSWORD)
            .dbname(&admin.dbname)
            .connect(tokio_postgres::NoTls)
            .await
            .expect("cannot log in to the test server as its superuser");
        let driver = tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name} OWNER {user}"))
            .await
            .expect("CREATE DATABASE");
        drop(client);
        let _ = driver.await;
        PgSettings {
            user: user.into(),
            ..self.settings(&name)
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self
            .as_server_user(&self.bin.join("pg_ctl"))
            .args(["-D", &self.data(), "-s", "stop", "-m", "immediate"])
            .output();
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Server {
    /// The directory of the server's Unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// A plain connection as the superuser to database `postgres` (also on a TLS server, whose
    /// `pg_hba.conf` lets the superuser in without TLS), to look at the server's views.
    pub async fn admin(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .user("postgres")
            .password(ADMIN_PASSWORD)
            .dbname("postgres")
            .connect(tokio_postgres::NoTls)
            .await
            .expect("cannot log in to the test server as its superuser");
        tokio::spawn(conn);
        client
    }
}

/// A plain connection (outside any store) to the database of `s`.
pub async fn raw(s: &PgSettings) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::Config::new()
        .host(&s.host)
        .port(s.port)
        .user(&s.user)
        .password(&s.password)
        .dbname(&s.dbname)
        .connect(tokio_postgres::NoTls)
        .await
        .expect("a plain connection to the test database");
    tokio::spawn(conn);
    client
}
