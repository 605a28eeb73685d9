//! The `storage.s3` section: blobs in S3-compatible object storage, configured as distribution's
//! S3 storage driver is (`storage.s3.*`, `REGISTRY_STORAGE_S3_*`, `REGISTRY_STORAGE=s3`), with the
//! AWS variables (`AWS_ACCESS_KEY_ID`, `AWS_REGION`, `AWS_ENDPOINT_URL_S3`, …) as fallbacks, and
//! `storage.redirect.disable`.
//!
//! No message here carries a secret: the secret key and the session token are never shown, and
//! values read from `AWS_*` variables are never quoted.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use berth_engine::s3::S3Settings;
use berth_engine::s3::settings::{DEFAULT_PART_SIZE, Encryption, MAX_PART_SIZE, MIN_PART_SIZE};

use super::ConfigError;
use super::tree::{bad, env_names, get_bool, get_duration, get_path, get_str};

/// Settings of distribution's driver that change nothing in Berth, and why; each one found is
/// accepted with a warning.
const NOT_USED: &[(&str, &str)] = &[
    ("useragent", "Berth sends its own User-Agent"),
    (
        "usedualstack",
        "requests go to storage.s3.regionendpoint or to s3.<region>.amazonaws.com; for AWS's dual-stack endpoint set regionendpoint to https://s3.dualstack.<region>.amazonaws.com",
    ),
    ("accelerate", "S3 Transfer Acceleration is not used"),
    (
        "objectacl",
        "objects are written without a canned ACL, so the bucket's own settings decide who may read them",
    ),
    ("multipartcopychunksize", "Berth never copies objects inside the bucket"),
    (
        "multipartcopymaxconcurrency",
        "Berth never copies objects inside the bucket",
    ),
    (
        "multipartcopythresholdsize",
        "Berth never copies objects inside the bucket",
    ),
    ("loglevel", "the S3 client has no log of its own; log.level applies"),
    ("maxrequestspersecond", "Berth does not pace its requests to S3"),
    (
        "checksumdisabled",
        "Berth checks every blob against its sha256 digest itself; S3's additional checksums are not requested",
    ),
    (
        "checksumalgorithm",
        "Berth checks every blob against its sha256 digest itself; S3's additional checksums are not requested",
    ),
];

/// Longest validity of a SigV4 presigned URL (7 days).
const MAX_PRESIGN_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);

/// `storage.s3.*` (and `storage.redirect.disable`): `None` unless the S3 driver is chosen, by a
/// `storage.s3` section (in the file or from `REGISTRY_STORAGE_S3_*`) or by `REGISTRY_STORAGE=s3`.
/// Also refuses a second driver and S3 without the shared database. `env` is the process
/// environment (for `REGISTRY_STORAGE` and the `AWS_*` fallbacks); `warnings` receives one line
/// for each setting accepted but not used.
pub(super) fn s3_settings(
    tree: &Value,
    env: &BTreeMap<String, String>,
    warnings: &mut Vec<String>,
) -> Result<Option<S3Settings>, ConfigError> {
    let mut errors = Vec::new();
    let chosen = match driver(tree, env) {
        Ok(chosen) => chosen,
        Err(ConfigError(m)) => {
            errors.push(m);
            // A refused variable chooses nothing; the sections still say what was meant.
            has_s3_section(tree)
        }
    };
    if !chosen {
        if get_path(tree, "storage.redirect.disable").is_some() {
            warnings.push(
                "storage.redirect.disable: not used by Berth with the filesystem driver (blobs are served by Berth itself, never redirected)"
                    .into(),
            );
        }
        return if errors.is_empty() {
            Ok(None)
        } else {
            Err(ConfigError(errors.join("\n")))
        };
    }
    // An invalid database.enabled is reported by the database section.
    if matches!(get_bool(tree, "database.enabled", false), Ok(false)) {
        errors.push(
            "storage.s3 needs database.enabled: true (env REGISTRY_DATABASE_ENABLED): with blobs in S3, upload sessions and blob records live in the shared PostgreSQL database (see docs/scale-out.md)"
                .into(),
        );
    }
    let settings = build(tree, env, warnings);
    if let Err(ConfigError(m)) = &settings {
        errors.push(m.clone());
    }
    if errors.is_empty() {
        settings.map(Some)
    } else {
        Err(ConfigError(errors.join("\n")))
    }
}

/// Whether the tree has a `storage.s3` key (even an empty one: `storage: {s3: }` means S3 was
/// meant, and its missing bucket is then reported).
fn has_s3_section(tree: &Value) -> bool {
    tree.get("storage").and_then(|s| s.get("s3")).is_some()
}

/// Whether S3 is the storage driver: `REGISTRY_STORAGE` when set, else a `storage.s3` section.
/// Two drivers at once are refused, as distribution refuses them.
fn driver(tree: &Value, env: &BTreeMap<String, String>) -> Result<bool, ConfigError> {
    let section = has_s3_section(tree);
    let filesystem = get_path(tree, "storage.filesystem.rootdirectory").is_some();
    let both = |s3: &str| {
        ConfigError(format!(
            "{s3} and storage.filesystem.rootdirectory{} are both set: choose one storage driver (remove one of them)",
            env_names("storage.filesystem.rootdirectory")
        ))
    };
    let var = env
        .get("REGISTRY_STORAGE")
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty());
    match var.as_deref() {
        Some("s3") if filesystem => Err(both("REGISTRY_STORAGE=s3")),
        Some("s3") => Ok(true),
        Some("filesystem") if section => Err(ConfigError(
            "storage.s3 is set but REGISTRY_STORAGE=filesystem chooses the filesystem driver: choose one storage driver (remove storage.s3 or the variable)"
                .into(),
        )),
        Some("filesystem") => Ok(false),
        Some(other) => Err(ConfigError(format!(
            "REGISTRY_STORAGE: {other:?}: this storage driver is not available in this version of Berth; use filesystem or s3"
        ))),
        None if section && filesystem => Err(both("storage.s3")),
        None => Ok(section),
    }
}

/// The settings; every problem found, one a line (what cannot be read takes its default so
/// that the rest is still checked).
fn build(tree: &Value, env: &BTreeMap<String, String>, warnings: &mut Vec<String>) -> Result<S3Settings, ConfigError> {
    let d = S3Settings::default();
    let mut errors: Vec<String> = Vec::new();
    macro_rules! ok {
        ($r:expr) => {
            match $r {
                Ok(v) => Some(v),
                Err(ConfigError(m)) => {
                    errors.push(m);
                    None
                }
            }
        };
    }
    // An unset or empty variable counts as unset.
    let var = |name: &str| env.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
    let text = |key: &str| -> Result<Option<String>, ConfigError> {
        let path = format!("storage.s3.{key}");
        Ok(get_str(tree, &path)?
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned))
    };
    let flag = |key: &str, default: bool| get_bool(tree, &format!("storage.s3.{key}"), default);

    let secure = ok!(flag("secure", true)).unwrap_or(true);
    let path_style = ok!(flag("forcepathstyle", d.path_style)).unwrap_or(d.path_style);
    let skip_verify = ok!(flag("skipverify", d.skip_verify)).unwrap_or(d.skip_verify);
    if ok!(flag("v4auth", true)) == Some(false) {
        errors.push(format!(
            "storage.s3.v4auth{}: false is not available: Berth signs every request with AWS Signature Version 4 (SigV4) always; remove the setting or set it to true",
            env_names("storage.s3.v4auth")
        ));
    }
    // distribution's meaning: `encrypt` asks for SSE-S3, or with `keyid` for SSE-KMS with that key.
    let keyid = ok!(text("keyid")).flatten();
    let encryption = match (ok!(flag("encrypt", false)) == Some(true), keyid) {
        (true, Some(key)) => Some(Encryption::Kms(key)),
        (true, None) => Some(Encryption::Aes256),
        (false, Some(_)) => {
            warnings.push(
                "storage.s3.keyid: not used by Berth: a KMS key applies only with storage.s3.encrypt: true".into(),
            );
            None
        }
        (false, None) => None,
    };

    let region = ok!(text("region"))
        .flatten()
        .or_else(|| {
            var("AWS_REGION")
                .or_else(|| var("AWS_DEFAULT_REGION"))
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let named_endpoint = ok!(text("regionendpoint")).flatten().or_else(|| {
        var("AWS_ENDPOINT_URL_S3")
            .or_else(|| var("AWS_ENDPOINT_URL"))
            .map(str::to_owned)
    });
    let endpoint = match named_endpoint.as_deref() {
        // A scheme given wins over `secure`, as it does in distribution.
        Some(e) if e.contains("://") => e.trim_end_matches('/').to_owned(),
        Some(e) => format!(
            "{}://{}",
            if secure { "https" } else { "http" },
            e.trim_end_matches('/')
        ),
        None => S3Settings::aws_endpoint(&region, secure),
    };
    if named_endpoint.is_some() && get_path(tree, "storage.s3.forcepathstyle").is_none() {
        warnings.push(format!(
            "storage.s3.forcepathstyle is not set: requests go to <bucket>.{} (virtual-hosted style); MinIO and SeaweedFS need forcepathstyle: true",
            endpoint.split_once("://").map_or(endpoint.as_str(), |(_, host)| host)
        ));
    }
    if skip_verify {
        warnings.push("storage.s3.skipverify: the TLS certificate of the S3 endpoint is not verified".into());
    }

    let access = ok!(text("accesskey")).flatten().unwrap_or_default();
    let secret = ok!(secret_key(tree)).flatten().unwrap_or_default();
    let (access_key, secret_key, session_token) = if access.is_empty() && secret.is_empty() {
        let (id, key) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY"));
        if id.is_some() != key.is_some() {
            errors.push(
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set together (they are the S3 credentials when storage.s3.accesskey and storage.s3.secretkey are not set)"
                    .into(),
            );
        }
        (
            id.unwrap_or_default().to_owned(),
            key.unwrap_or_default().to_owned(),
            var("AWS_SESSION_TOKEN").filter(|_| id.is_some()).map(str::to_owned),
        )
    } else {
        (access, secret, None)
    };

    let root_directory =
        ok!(text("rootdirectory").and_then(|r| root_directory(r.as_deref().unwrap_or("")))).unwrap_or_default();
    let part_size = ok!(part_size(tree)).unwrap_or(d.part_size);
    // Unset, it holds at least two parts of whatever chunk size is set.
    let memory_default = d.upload_memory.max(part_size.saturating_mul(2));
    let upload_memory = ok!(byte_count(tree, "storage.s3.uploadmemory", memory_default)).unwrap_or(memory_default);
    let storage_class = ok!(text("storageclass").and_then(|c| storage_class(c.as_deref()))).flatten();
    let redirect = !ok!(get_bool(tree, "storage.redirect.disable", false)).unwrap_or(false);
    let presign_expiry = ok!(positive(
        tree,
        "storage.s3.presignexpiry",
        d.presign_expiry,
        MAX_PRESIGN_EXPIRY
    ))
    .unwrap_or(d.presign_expiry);
    let connect_timeout = ok!(positive(
        tree,
        "storage.s3.connecttimeout",
        d.connect_timeout,
        Duration::MAX
    ))
    .unwrap_or(d.connect_timeout);

    for (key, why) in NOT_USED {
        if get_path(tree, &format!("storage.s3.{key}")).is_some() {
            warnings.push(format!("storage.s3.{key}: not used by Berth: {why}"));
        }
    }

    let settings = S3Settings {
        endpoint,
        region,
        bucket: ok!(text("bucket")).flatten().unwrap_or_default(),
        access_key,
        secret_key,
        session_token,
        root_directory,
        path_style,
        part_size,
        upload_memory,
        skip_verify,
        storage_class,
        encryption,
        redirect,
        presign_expiry,
        connect_timeout,
    };
    // What the engine checks, when nothing above was wrong (a default taken for an unreadable
    // value would otherwise be reported twice).
    if errors.is_empty()
        && let Some(p) = settings.problem()
    {
        errors.push(with_env_names(&p));
    }
    if errors.is_empty() {
        Ok(settings)
    } else {
        Err(ConfigError(errors.join("\n")))
    }
}

/// `storage.s3.secretkey`, read without ever showing its value.
fn secret_key(tree: &Value) -> Result<Option<String>, ConfigError> {
    let path = "storage.s3.secretkey";
    match get_path(tree, path) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone()).filter(|s| !s.is_empty())),
        Some(_) => Err(ConfigError(format!(
            "{path}{}: expected a string (quote it in YAML; the value is not shown)",
            env_names(path)
        ))),
    }
}

/// `storage.s3.rootdirectory` as a key prefix: without leading or trailing `/`, and without
/// empty, `.` or `..` segments.
fn root_directory(raw: &str) -> Result<String, ConfigError> {
    let path = "storage.s3.rootdirectory";
    let root = raw.trim_matches('/');
    if !root.is_empty() && root.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return Err(ConfigError(format!(
            "{path}{}: {raw:?} has an empty, . or .. segment; name a prefix such as registry or team/registry",
            env_names(path)
        )));
    }
    Ok(root.to_owned())
}

/// `storage.s3.chunksize`: bytes, a number or a string of digits, within what S3 accepts.
fn part_size(tree: &Value) -> Result<u64, ConfigError> {
    let path = "storage.s3.chunksize";
    let size = byte_count(tree, path, DEFAULT_PART_SIZE)?;
    if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&size) {
        return Err(ConfigError(format!(
            "{path}{}: {size} bytes is outside what S3 accepts for a part ({MIN_PART_SIZE} to {MAX_PART_SIZE} bytes)",
            env_names(path)
        )));
    }
    Ok(size)
}

/// A number of bytes at `path`: a number or a string of digits (no units).
fn byte_count(tree: &Value, path: &str, default: u64) -> Result<u64, ConfigError> {
    let what = "a number of bytes such as 10485760 (units such as 10MB are not accepted)";
    match get_path(tree, path) {
        None => Ok(default),
        Some(Value::Number(n)) => n.as_u64().ok_or_else(|| bad(path, what, &Value::Number(n.clone()))),
        Some(Value::String(s)) => s.trim().parse().map_err(|_| bad(path, what, &Value::String(s.clone()))),
        Some(v) => Err(bad(path, what, v)),
    }
}

/// `storage.s3.storageclass`: `None` for the bucket's default (`STANDARD`, or distribution's
/// `NONE`), else the class as S3 names it (upper case).
fn storage_class(class: Option<&str>) -> Result<Option<String>, ConfigError> {
    let path = "storage.s3.storageclass";
    let Some(class) = class.map(str::to_ascii_uppercase) else {
        return Ok(None);
    };
    if class == "STANDARD" || class == "NONE" {
        return Ok(None);
    }
    if !class
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(ConfigError(format!(
            "{path}{}: {class:?} is not an S3 storage class (such as STANDARD, STANDARD_IA, INTELLIGENT_TIERING, REDUCED_REDUNDANCY)",
            env_names(path)
        )));
    }
    Ok(Some(class))
}

/// A duration greater than 0 and at most `max`.
fn positive(tree: &Value, path: &str, default: Duration, max: Duration) -> Result<Duration, ConfigError> {
    let d = get_duration(tree, path, default)?;
    if d.is_zero() {
        return Err(ConfigError(format!("{path}{} must be greater than 0", env_names(path))));
    }
    if d > max {
        return Err(ConfigError(format!(
            "{path}{}: {}s is longer than S3 allows for a presigned URL ({}s, 7 days)",
            env_names(path),
            d.as_secs(),
            max.as_secs()
        )));
    }
    Ok(d)
}

/// A message of [`S3Settings::problem`] with the variable named after each setting it names.
fn with_env_names(msg: &str) -> String {
    const PREFIX: &str = "storage.s3.";
    let mut out = String::with_capacity(msg.len() + 64);
    let mut rest = msg;
    while let Some(i) = rest.find(PREFIX) {
        let after = &rest[i + PREFIX.len()..];
        let key_len = after.find(|c: char| !c.is_ascii_lowercase()).unwrap_or(after.len());
        let end = i + PREFIX.len() + key_len;
        out.push_str(&rest[..end]);
        out.push_str(&env_names(&rest[i..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use berth_engine::s3::S3Settings;
    use berth_engine::s3::settings::{DEFAULT_PART_SIZE, Encryption};

    use super::super::testing::load_str;

    const DB: &str = "database: {enabled: true}\n";

    fn s3(yaml: &str, env: &[(&str, &str)]) -> (S3Settings, Vec<String>) {
        let (c, w) = load_str(&format!("{DB}{yaml}"), env).unwrap();
        (c.s3.expect("storage.s3 chosen"), w)
    }

    fn refused(yaml: &str, env: &[(&str, &str)]) -> String {
        load_str(yaml, env).unwrap_err().0
    }

    #[test]
    fn a_distribution_section_is_read() {
        let yaml = "storage:
  s3:
    accesskey: AKIAEXAMPLE
    secretkey: very-secret-key
    region: eu-west-1
    regionendpoint: http://minio:9000/
    forcepathstyle: true
    bucket: registry
    rootdirectory: /berth/registry/
    secure: true
    skipverify: false
    v4auth: true
    encrypt: false
    chunksize: 16777216
    uploadmemory: '67108864'
    storageclass: REDUCED_REDUNDANCY
    presignexpiry: 5m
    connecttimeout: 2s
  redirect:
    disable: true
  delete: {enabled: true}
";
        let (s, w) = s3(yaml, &[]);
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(
            s,
            S3Settings {
                endpoint: "http://minio:9000".into(),
                region: "eu-west-1".into(),
                bucket: "registry".into(),
                access_key: "AKIAEXAMPLE".into(),
                secret_key: "very-secret-key".into(),
                session_token: None,
                root_directory: "berth/registry".into(),
                path_style: true,
                part_size: 16 << 20,
                upload_memory: 64 << 20,
                skip_verify: false,
                storage_class: Some("REDUCED_REDUNDANCY".into()),
                encryption: None,
                redirect: false,
                presign_expiry: Duration::from_secs(300),
                connect_timeout: Duration::from_secs(2),
            }
        );
        assert!(!format!("{s:?}").contains("very-secret-key"));

        // The defaults: AWS's endpoint for the region, distribution's chunk size, redirects on.
        let (s, w) = s3(
            "storage: {s3: {bucket: b, region: us-west-2, accesskey: a, secretkey: s}}",
            &[],
        );
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(s.endpoint, "https://s3.us-west-2.amazonaws.com");
        assert_eq!(
            (s.path_style, s.part_size, s.redirect, s.root_directory.as_str()),
            (false, DEFAULT_PART_SIZE, true, "")
        );
        assert_eq!((s.presign_expiry.as_secs(), s.connect_timeout.as_secs()), (1200, 5));
        assert_eq!(s.storage_class, None);
        let (s, _) = s3(
            "storage: {s3: {bucket: b, region: r, accesskey: a, secretkey: s, secure: false, chunksize: '5242880', storageclass: standard}}",
            &[],
        );
        assert_eq!(
            (s.endpoint.as_str(), s.part_size),
            ("http://s3.r.amazonaws.com", 5 << 20)
        );
        assert_eq!(s.storage_class, None, "STANDARD is the bucket's default");
        // encrypt: SSE-S3; with keyid: SSE-KMS with that key (also from the environment).
        let base = "storage: {s3: {bucket: b, region: r, accesskey: a, secretkey: s";
        assert_eq!(s3(&format!("{base}}}}}"), &[]).0.encryption, None);
        assert_eq!(
            s3(&format!("{base}, encrypt: true}}}}"), &[]).0.encryption,
            Some(Encryption::Aes256)
        );
        let (s, w) = s3(
            &format!("{base}, encrypt: 'true', keyid: 'arn:aws:kms:eu-west-1:1:key/k'}}}}"),
            &[],
        );
        assert_eq!(
            s.encryption,
            Some(Encryption::Kms("arn:aws:kms:eu-west-1:1:key/k".into()))
        );
        assert!(w.is_empty(), "{w:?}");
        let env = [
            ("REGISTRY_STORAGE_S3_ENCRYPT", "true"),
            ("REGISTRY_STORAGE_S3_KEYID", "alias/registry"),
        ];
        assert_eq!(
            s3(&format!("{base}}}}}"), &env).0.encryption,
            Some(Encryption::Kms("alias/registry".into()))
        );
        // An endpoint without a scheme takes it from `secure`.
        let (s, w) = s3(
            "storage: {s3: {bucket: b, region: r, accesskey: a, secretkey: s, regionendpoint: 'seaweed:8333', secure: false}}",
            &[],
        );
        assert_eq!(s.endpoint, "http://seaweed:8333");
        assert!(
            w.iter()
                .any(|w| w.starts_with("storage.s3.forcepathstyle") && w.contains("<bucket>.seaweed:8333")),
            "{w:?}"
        );
    }

    #[test]
    fn the_environment_alone_configures_s3() {
        let env = [
            ("REGISTRY_STORAGE", "s3"),
            ("REGISTRY_DATABASE_ENABLED", "true"),
            ("REGISTRY_STORAGE_S3_ACCESSKEY", "AK"),
            ("REGISTRY_STORAGE_S3_SECRETKEY", "env-secret"),
            ("REGISTRY_STORAGE_S3_REGION", "us-east-1"),
            ("REGISTRY_STORAGE_S3_REGIONENDPOINT", "https://objects.internal"),
            ("REGISTRY_STORAGE_S3_FORCEPATHSTYLE", "true"),
            ("REGISTRY_STORAGE_S3_BUCKET", "images"),
            ("REGISTRY_STORAGE_S3_ROOTDIRECTORY", "/r"),
            ("REGISTRY_STORAGE_S3_CHUNKSIZE", "33554432"),
            ("REGISTRY_STORAGE_S3_PRESIGNEXPIRY", "1h"),
            ("REGISTRY_STORAGE_S3_CONNECTTIMEOUT", "10s"),
            ("REGISTRY_STORAGE_REDIRECT_DISABLE", "true"),
        ];
        let (c, w) = load_str("", &env).unwrap();
        assert!(w.is_empty(), "{w:?}");
        let s = c.s3.unwrap();
        assert_eq!(
            (
                s.endpoint.as_str(),
                s.bucket.as_str(),
                s.access_key.as_str(),
                s.secret_key.as_str()
            ),
            ("https://objects.internal", "images", "AK", "env-secret")
        );
        assert_eq!(
            (s.root_directory.as_str(), s.part_size, s.path_style),
            ("r", 32 << 20, true)
        );
        assert_eq!((s.presign_expiry.as_secs(), s.connect_timeout.as_secs()), (3600, 10));
        assert_eq!(
            s.upload_memory,
            64 << 20,
            "unset, it holds two parts of the chunk size set"
        );
        assert!(!s.redirect);
        // REGISTRY_STORAGE_S3_* alone is a storage.s3 section too; REGISTRY_STORAGE=filesystem
        // chooses the filesystem driver.
        let (c, _) = load_str("", &env[1..]).unwrap();
        assert!(c.s3.is_some());
        let (c, w) = load_str("", &[("REGISTRY_STORAGE", "filesystem")]).unwrap();
        assert!(c.s3.is_none() && w.is_empty(), "{w:?}");
        assert!(load_str("", &[]).unwrap().0.s3.is_none());
    }

    #[test]
    fn aws_variables_are_the_fallbacks() {
        let aws = [
            ("AWS_ACCESS_KEY_ID", "AKENV"),
            ("AWS_SECRET_ACCESS_KEY", "aws-secret"),
            ("AWS_SESSION_TOKEN", "aws-token"),
            ("AWS_REGION", "ap-south-1"),
            ("AWS_DEFAULT_REGION", "default-1"),
            ("AWS_ENDPOINT_URL_S3", "http://s3.local:9000"),
            ("AWS_ENDPOINT_URL", "http://fallback:1"),
        ];
        let (s, _) = s3("storage: {s3: {bucket: b}}", &aws);
        assert_eq!(
            (s.access_key.as_str(), s.secret_key.as_str(), s.session_token.as_deref()),
            ("AKENV", "aws-secret", Some("aws-token"))
        );
        assert_eq!(
            (s.region.as_str(), s.endpoint.as_str()),
            ("ap-south-1", "http://s3.local:9000")
        );
        let shown = format!("{s:?}");
        assert!(!shown.contains("aws-secret") && !shown.contains("aws-token"), "{shown}");
        // Each fallback after the first, and the AWS endpoint when none is named.
        let (s, _) = s3("storage: {s3: {bucket: b, region: r}}", &aws[..2]);
        assert_eq!(s.session_token, None);
        let (s, _) = s3("storage: {s3: {bucket: b}}", &[aws[0], aws[1], aws[4], aws[6]]);
        assert_eq!(
            (s.region.as_str(), s.endpoint.as_str()),
            ("default-1", "http://fallback:1")
        );
        let (s, _) = s3("storage: {s3: {bucket: b}}", &[aws[0], aws[1], aws[3]]);
        assert_eq!(s.endpoint, "https://s3.ap-south-1.amazonaws.com");
        // The file wins over the variables: its keys, without the variables' session token.
        let (s, _) = s3(
            "storage: {s3: {bucket: b, accesskey: FILE, secretkey: file-secret, region: eu-north-1, regionendpoint: 'https://e'}}",
            &aws,
        );
        assert_eq!(
            (s.access_key.as_str(), s.secret_key.as_str(), s.session_token.as_deref()),
            ("FILE", "file-secret", None)
        );
        assert_eq!((s.region.as_str(), s.endpoint.as_str()), ("eu-north-1", "https://e"));
    }

    #[test]
    fn refusals_name_the_setting_and_show_no_secret() {
        let ok = "accesskey: AK, secretkey: hush-hush, region: r, bucket: b";
        for (setting, want) in [
            ("v4auth: false", "storage.s3.v4auth (env REGISTRY_STORAGE_S3_V4AUTH)"),
            (
                "encrypt: perhaps",
                "storage.s3.encrypt (env REGISTRY_STORAGE_S3_ENCRYPT)",
            ),
            (
                "chunksize: 1MB",
                "storage.s3.chunksize (env REGISTRY_STORAGE_S3_CHUNKSIZE)",
            ),
            (
                "chunksize: 1048576",
                "storage.s3.chunksize (env REGISTRY_STORAGE_S3_CHUNKSIZE)",
            ),
            ("chunksize: 6442450944", "storage.s3.chunksize"),
            (
                "uploadmemory: 10485760",
                "storage.s3.uploadmemory (env REGISTRY_STORAGE_S3_UPLOADMEMORY)",
            ),
            ("uploadmemory: 96MB", "storage.s3.uploadmemory"),
            ("rootdirectory: 'a/../b'", "storage.s3.rootdirectory"),
            ("rootdirectory: 'a//b'", "storage.s3.rootdirectory"),
            (
                "presignexpiry: 0s",
                "storage.s3.presignexpiry (env REGISTRY_STORAGE_S3_PRESIGNEXPIRY)",
            ),
            ("presignexpiry: 200h", "storage.s3.presignexpiry"),
            ("connecttimeout: 0s", "storage.s3.connecttimeout"),
            ("storageclass: 'cold storage'", "storage.s3.storageclass"),
            ("secure: maybe", "storage.s3.secure (env REGISTRY_STORAGE_S3_SECURE)"),
            ("regionendpoint: 'ftp://x'", "storage.s3.regionendpoint"),
        ] {
            let e = refused(&format!("{DB}storage: {{s3: {{{ok}, {setting}}}}}"), &[]);
            assert!(e.contains(want), "{setting}: {e}");
            assert!(!e.contains("hush-hush"), "{e}");
        }
        let e = refused(&format!("{DB}storage: {{s3: {{{ok}, v4auth: false}}}}"), &[]);
        assert!(e.contains("SigV4"), "{e}");
        // Missing bucket, region, credentials (or half of them).
        let e = refused(
            &format!("{DB}storage: {{s3: {{accesskey: AK, secretkey: hush-hush, region: r}}}}"),
            &[],
        );
        assert!(e.contains("storage.s3.bucket (env REGISTRY_STORAGE_S3_BUCKET)"), "{e}");
        let e = refused(&format!("{DB}storage: {{s3: }}"), &[]);
        assert!(e.contains("storage.s3.bucket"), "an empty section still means S3: {e}");
        let e = refused(
            &format!("{DB}storage: {{s3: {{bucket: b, accesskey: AK, secretkey: s}}}}"),
            &[],
        );
        assert!(e.contains("storage.s3.region (env REGISTRY_STORAGE_S3_REGION)"), "{e}");
        let e = refused(&format!("{DB}storage: {{s3: {{bucket: b, region: r}}}}"), &[]);
        assert!(
            e.contains("storage.s3.accesskey (env REGISTRY_STORAGE_S3_ACCESSKEY)") && e.contains("AWS_ACCESS_KEY_ID"),
            "{e}"
        );
        let e = refused(
            &format!("{DB}storage: {{s3: {{bucket: b, region: r, secretkey: hush-hush}}}}"),
            &[],
        );
        assert!(e.contains("storage.s3.secretkey") && !e.contains("hush-hush"), "{e}");
        let e = refused(
            &format!("{DB}storage: {{s3: {{bucket: b, region: r}}}}"),
            &[("AWS_SECRET_ACCESS_KEY", "hush-hush")],
        );
        assert!(e.contains("AWS_ACCESS_KEY_ID") && !e.contains("hush-hush"), "{e}");
        let e = refused(
            &format!("{DB}storage: {{s3: {{bucket: b, region: r, accesskey: AK, secretkey: 12345}}}}"),
            &[],
        );
        assert!(e.contains("storage.s3.secretkey") && !e.contains("12345"), "{e}");
        // Every problem at once, each on a line of its own.
        let e = refused(
            &format!("{DB}storage: {{s3: {{{ok}, v4auth: false, encrypt: perhaps, chunksize: 1}}}}"),
            &[],
        );
        for want in ["storage.s3.v4auth", "storage.s3.encrypt", "storage.s3.chunksize"] {
            assert!(e.lines().any(|l| l.starts_with(want)), "{want} missing in {e}");
        }
    }

    #[test]
    fn one_driver_and_the_shared_database() {
        let section = "storage: {s3: {accesskey: AK, secretkey: hush-hush, region: r, bucket: b}}";
        let e = refused(section, &[]);
        assert!(
            e.contains("storage.s3 needs database.enabled: true") && e.contains("docs/scale-out.md"),
            "{e}"
        );
        let e = refused(
            &format!("{DB}storage: {{s3: {{bucket: b}}, filesystem: {{rootdirectory: /x}}}}"),
            &[],
        );
        assert!(
            e.contains("storage.s3 and storage.filesystem.rootdirectory") && e.contains("choose one storage driver"),
            "{e}"
        );
        let e = refused(DB, &[("REGISTRY_STORAGE", "s3"), ("REGISTRY_STORAGE_PATH", "/x")]);
        assert!(
            e.contains("REGISTRY_STORAGE=s3 and storage.filesystem.rootdirectory")
                && e.contains("REGISTRY_STORAGE_PATH"),
            "{e}"
        );
        let e = refused(&format!("{DB}{section}"), &[("REGISTRY_STORAGE", "filesystem")]);
        assert!(e.contains("choose one storage driver"), "{e}");
        let e = refused("", &[("REGISTRY_STORAGE", "gcs")]);
        assert!(e.starts_with("REGISTRY_STORAGE") && e.contains("not available"), "{e}");
        // Other drivers' sections stay refused.
        for driver in ["gcs", "azure", "swift", "inmemory", "oss"] {
            let e = refused(&format!("storage: {{{driver}: {{bucket: b}}}}"), &[]);
            assert!(e.starts_with(&format!("storage.{driver}: this storage driver")), "{e}");
        }
        // The filesystem driver keeps working as before.
        let (c, w) = load_str("storage: {filesystem: {rootdirectory: /srv}}", &[]).unwrap();
        assert!(c.s3.is_none() && w.is_empty(), "{w:?}");
    }

    #[test]
    fn settings_berth_does_not_use_are_warned_about() {
        let (s, w) = s3(
            "storage:
  s3:
    accesskey: AK
    secretkey: hush-hush
    region: r
    bucket: b
    keyid: arn:aws:kms:key
    useragent: registry
    usedualstack: true
    accelerate: false
    objectacl: bucket-owner-full-control
    multipartcopychunksize: 33554432
    multipartcopymaxconcurrency: 100
    multipartcopythresholdsize: 33554432
    loglevel: debug
    maxrequestspersecond: 350
    checksumdisabled: true
    checksumalgorithm: CRC32
    skipverify: true
    somethingnew: 1
",
            &[],
        );
        assert_eq!(s.bucket, "b");
        assert!(s.skip_verify);
        for key in [
            "keyid",
            "useragent",
            "usedualstack",
            "accelerate",
            "objectacl",
            "multipartcopychunksize",
            "multipartcopymaxconcurrency",
            "multipartcopythresholdsize",
            "loglevel",
            "maxrequestspersecond",
            "checksumdisabled",
            "checksumalgorithm",
        ] {
            let prefix = format!("storage.s3.{key}: not used by Berth: ");
            assert!(w.iter().any(|w| w.starts_with(&prefix)), "{key} not warned: {w:?}");
        }
        assert!(w.iter().any(|w| w.contains("never copies")), "{w:?}");
        assert!(w.iter().any(|w| w.starts_with("storage.s3.skipverify")), "{w:?}");
        assert!(
            w.iter()
                .any(|w| w.starts_with("storage.s3.somethingnew: unknown setting")),
            "{w:?}"
        );
        assert!(!w.iter().any(|w| w.contains("hush-hush")), "{w:?}");
        // storage.redirect means nothing to the filesystem driver.
        let (_, w) = load_str("storage: {redirect: {disable: true}}", &[]).unwrap();
        assert!(
            w.iter().any(|w| w.starts_with("storage.redirect.disable: not used")),
            "{w:?}"
        );
    }
}
