//! Environment overrides: `REGISTRY_*` variables onto the tree, and the variables Kubernetes
//! injects for Services, which are never settings.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::SETTINGS;
use super::load::parse_yaml_value;
use super::tree::set_path;

/// What the environment says that is not a path in the tree.
pub(super) struct EnvOverrides {
    /// `REGISTRY_HOST`.
    pub(super) host: Option<String>,
    /// `REGISTRY_PORT` (unless it is a Kubernetes service link).
    pub(super) port: Option<String>,
    /// `REGISTRY_AUTH_TYPE`, trimmed and lower-case.
    pub(super) auth_type: Option<String>,
}

/// Apply the `REGISTRY_*` variables of `env` to the tree; a variable that is not a Berth setting
/// is ignored with a warning.
pub(super) fn env_overrides(
    tree: &mut Value,
    env: &BTreeMap<String, String>,
    warnings: &mut Vec<String>,
) -> EnvOverrides {
    let mut host_override = None;
    let mut port_override = None;
    let mut auth_type: Option<String> = None;
    for (name, value) in env.iter().filter(|(k, _)| k.starts_with("REGISTRY_")) {
        if name == "REGISTRY_CONFIG" {
            continue;
        }
        if name == "REGISTRY_PORT" && !is_kubernetes_service_var(name, value) {
            port_override = Some(value.clone());
            continue;
        }
        if name == "REGISTRY_HOST" {
            host_override = Some(value.clone());
            continue;
        }
        if is_kubernetes_service_var(name, value) {
            warnings.push(format!(
                "ignoring {name}: it looks like a variable Kubernetes injects for a Service, not a Berth setting (set enableServiceLinks: false in the pod spec to stop them)"
            ));
            continue;
        }
        if name == "REGISTRY_STORAGE" {
            // The storage driver (filesystem or s3), read with the s3 section (s3.rs).
            continue;
        }
        if name == "REGISTRY_AUTH_TYPE" {
            auth_type = Some(value.trim().to_ascii_lowercase());
            continue;
        }
        if let Some(s) = SETTINGS.iter().find(|s| s.env.contains(&name.as_str())) {
            set_path(tree, s.path, Value::String(value.clone()));
            continue;
        }
        if let Some(header) = name.strip_prefix("REGISTRY_HTTP_HEADERS_") {
            // The rest of the name is the header, as written (Access-Control-Allow-Origin).
            let value = parse_yaml_value(value);
            if let Some(obj) = tree.as_object_mut() {
                let http = obj.entry("http").or_insert_with(|| Value::Object(Map::new()));
                if !http.is_object() {
                    *http = Value::Object(Map::new());
                }
                if let Some(http) = http.as_object_mut() {
                    let headers = http.entry("headers").or_insert_with(|| Value::Object(Map::new()));
                    if !headers.is_object() {
                        *headers = Value::Object(Map::new());
                    }
                    if let Some(h) = headers.as_object_mut() {
                        h.insert(header.to_owned(), value);
                    }
                }
            }
            continue;
        }
        if name.starts_with("REGISTRY_HTTP_TLS_LETSENCRYPT_") {
            set_path(tree, "http.tls.letsencrypt.env", Value::String(name.clone()));
            continue;
        }
        warnings.push(format!(
            "ignoring {name}: not a Berth setting (see docs/configuration.md)"
        ));
    }
    EnvOverrides {
        host: host_override,
        port: port_override,
        auth_type,
    }
}

/// Is this a variable Kubernetes injects for a Service (docker link style)? Such variables are
/// named after the Service (`registry`, `registry-auth`, …) and must never stop the server.
fn is_kubernetes_service_var(name: &str, value: &str) -> bool {
    let parts: Vec<&str> = name.split('_').collect();
    let n = parts.len();
    let is_num = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    // <SVC>_SERVICE_HOST, <SVC>_SERVICE_PORT, <SVC>_SERVICE_PORT_<PORTNAME>
    if let Some(i) = parts.iter().rposition(|p| *p == "SERVICE")
        && i > 0
        && i + 1 < n
        && (parts[i + 1] == "HOST" && i + 2 == n || parts[i + 1] == "PORT")
    {
        return true;
    }
    // <SVC>_PORT_<num>_<PROTO>[_ADDR|_PORT|_PROTO]
    if let Some(i) = parts.iter().rposition(|p| *p == "PORT")
        && i + 2 < n + 1
        && i + 1 < n
        && is_num(parts[i + 1])
        && parts.get(i + 2).is_some_and(|p| matches!(*p, "TCP" | "UDP" | "SCTP"))
    {
        return true;
    }
    // <SVC>_PORT=tcp://ip:port
    name.ends_with("_PORT") && ["tcp://", "udp://", "sctp://"].iter().any(|p| value.starts_with(p))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::super::testing::load_str;

    #[test]
    fn distribution_file_and_env_overrides() {
        let yaml = "version: 0.1\nlog: {level: debug}\nstorage:\n  filesystem: {rootdirectory: /var/lib/registry}\n  delete: {enabled: true}\n  cache: {blobdescriptor: inmemory}\nhttp: {addr: ':5001', secret: s}\n";
        let (c, w) = load_str(yaml, &[]).unwrap();
        assert_eq!(c.addr, "[::]:5001".parse().unwrap());
        assert_eq!(c.root, PathBuf::from("/var/lib/registry"));
        assert!(c.delete_enabled);
        assert_eq!(c.log_level, "debug");
        assert!(w.iter().any(|w| w.contains("storage.cache")));
        let (c, _) = load_str(
            yaml,
            &[
                ("REGISTRY_STORAGE_PATH", "/x"),
                ("REGISTRY_PORT", "6000"),
                ("REGISTRY_HOST", "127.0.0.1"),
                ("REGISTRY_STORAGE_DELETE_ENABLED", "false"),
                ("REGISTRY_UPLOAD_TIMEOUT", "60"),
                ("REGISTRY_PAGINATION_DEFAULT_LIMIT", "5"),
            ],
        )
        .unwrap();
        assert_eq!(c.root, PathBuf::from("/x"));
        assert_eq!(c.addr, "127.0.0.1:6000".parse().unwrap());
        assert!(!c.delete_enabled);
        assert_eq!(c.upload_timeout, Duration::from_secs(60));
        assert_eq!(c.page_default, 5);
    }

    #[test]
    fn kubernetes_service_variables_are_ignored() {
        let vars = [
            ("REGISTRY_PORT", "tcp://10.0.0.7:5000"),
            ("REGISTRY_PORT_5000_TCP", "tcp://10.0.0.7:5000"),
            ("REGISTRY_PORT_5000_TCP_ADDR", "10.0.0.7"),
            ("REGISTRY_PORT_5000_TCP_PORT", "5000"),
            ("REGISTRY_PORT_5000_TCP_PROTO", "tcp"),
            ("REGISTRY_SERVICE_HOST", "10.0.0.7"),
            ("REGISTRY_SERVICE_PORT", "5000"),
            ("REGISTRY_SERVICE_PORT_HTTP", "5000"),
            ("REGISTRY_AUTH_PORT", "tcp://10.0.0.8:80"),
            ("REGISTRY_AUTH_PORT_80_TCP_ADDR", "10.0.0.8"),
            ("REGISTRY_AUTH_SERVICE_HOST", "10.0.0.8"),
            ("REGISTRY_AUTH_SERVICE_PORT", "80"),
        ];
        let (c, w) = load_str("", &vars).unwrap();
        assert_eq!(c.addr.port(), 5000);
        assert_eq!(w.len(), vars.len(), "{w:?}");
    }
}
