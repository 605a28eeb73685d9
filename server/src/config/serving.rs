//! The `http` and `pagination` sections: listen address, TLS, response headers, trusted
//! proxies, request body limits, metrics and page sizes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::ConfigError;
use super::tree::{bad, env_names, get_bool, get_file, get_list, get_path, get_str, get_usize};

/// Bounds on request bodies: how slow one may be, and how much of an unread one is drained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// Least bytes per second over each `window` (0: no minimum).
    pub min_rate: u64,
    /// The period the rate is measured over (`http.timeouts.body`).
    pub window: Duration,
    /// Longest time for one body (`None`: no limit).
    pub total: Option<Duration>,
    /// Most bytes of an unread body read and discarded before an early answer (0: none).
    pub drain_bytes: u64,
    /// Longest time spent draining.
    pub drain_time: Duration,
}

impl Default for BodyLimits {
    fn default() -> Self {
        BodyLimits {
            min_rate: 1024,
            window: Duration::from_secs(60),
            total: None,
            drain_bytes: 64 << 20,
            drain_time: Duration::from_secs(10),
        }
    }
}

fn parse_host(host: &str) -> Option<IpAddr> {
    match host.trim_start_matches('[').trim_end_matches(']') {
        // `:5000` means every interface, IPv6 and IPv4 (a dual-stack socket), as in distribution.
        "" => Some(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)),
        "localhost" => Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        h => h.parse().ok(),
    }
}

/// `http.peerurl`: how the other processes sharing this registry's database reach this one
/// directly (not through the balancer), to stream a mirrored blob it is downloading. Without the
/// setting, the listen address when it names one interface (`None` for every interface: the
/// others then wait until the blob is stored).
pub(super) fn peer_url(tree: &Value, addr: SocketAddr, tls: bool) -> Result<Option<String>, ConfigError> {
    let setting = "http.peerurl";
    match get_str(tree, setting)?.map(str::trim) {
        Some(u) => match super::mirror::url_host(u) {
            Some(_) => Ok(Some(u.trim_end_matches('/').to_owned())),
            None => Err(ConfigError(format!(
                "{setting}{}: {u:?} is not an http:// or https:// URL with only a host and port, such as http://10.0.0.5:5000",
                env_names(setting)
            ))),
        },
        None if addr.ip().is_unspecified() => Ok(None),
        None => Ok(Some(format!("{}://{addr}", if tls { "https" } else { "http" }))),
    }
}

/// `http.tls.*`: none of it, or a certificate with its key.
pub(super) fn tls_settings(tree: &Value) -> Result<Option<crate::tls::TlsConfig>, ConfigError> {
    let certificate = get_file(tree, "http.tls.certificate")?;
    let key = get_file(tree, "http.tls.key")?;
    let clientcas: Vec<PathBuf> = get_list(tree, "http.tls.clientcas", "a file name", "file names")?
        .into_iter()
        .map(PathBuf::from)
        .collect();
    let minimum = get_str(tree, "http.tls.minimumtls")?
        .unwrap_or("tls1.2")
        .trim()
        .to_ascii_lowercase();
    let tls13_only = match minimum.as_str() {
        "tls1.2" | "" => false,
        "tls1.3" => true,
        "tls1.0" | "tls1.1" => {
            return Err(ConfigError(format!(
                "http.tls.minimumtls (env REGISTRY_HTTP_TLS_MINIMUMTLS): {minimum} is not offered (TLS 1.0 and 1.1 are insecure); use tls1.2 or tls1.3"
            )));
        }
        other => {
            return Err(ConfigError(format!(
                "http.tls.minimumtls (env REGISTRY_HTTP_TLS_MINIMUMTLS): {other:?} is not tls1.2 or tls1.3"
            )));
        }
    };
    match (certificate, key) {
        (None, None) if clientcas.is_empty() => Ok(None),
        (Some(certificate), Some(key)) => Ok(Some(crate::tls::TlsConfig {
            certificate,
            key,
            clientcas,
            tls13_only,
        })),
        (c, k) => {
            let missing: Vec<&str> = [
                c.is_none()
                    .then_some("http.tls.certificate (env REGISTRY_HTTP_TLS_CERTIFICATE)"),
                k.is_none().then_some("http.tls.key (env REGISTRY_HTTP_TLS_KEY)"),
            ]
            .into_iter()
            .flatten()
            .collect();
            Err(ConfigError(format!(
                "{} is required for TLS: name the PEM certificate chain and its private key (the registry would otherwise serve plain HTTP)",
                missing.join(" and ")
            )))
        }
    }
}

/// `http.debug.prometheus.*` and `http.debug.addr`.
pub(super) fn metrics_settings(tree: &Value) -> Result<(Option<String>, Option<SocketAddr>), ConfigError> {
    // The debug listener serves /healthz and /readyz too, so its address counts with or without
    // the metrics; `:5001` means every interface, as in http.addr.
    let addr = match get_str(tree, "http.debug.addr")?
        .map(str::trim)
        .filter(|a| !a.is_empty())
    {
        None => None,
        Some(a) => {
            let parsed = a
                .rsplit_once(':')
                .and_then(|(host, port)| Some(SocketAddr::new(parse_host(host)?, port.parse().ok()?)));
            Some(parsed.ok_or_else(|| {
                ConfigError(format!(
                    "http.debug.addr (env REGISTRY_HTTP_DEBUG_ADDR): {a:?} is not host:port, e.g. 127.0.0.1:5001"
                ))
            })?)
        }
    };
    if !get_bool(tree, "http.debug.prometheus.enabled", true)? {
        return Ok((None, addr));
    }
    let path = get_str(tree, "http.debug.prometheus.path")?
        .unwrap_or("/metrics")
        .trim();
    if !path.starts_with('/') || path.starts_with("/v2") || path == "/" {
        return Err(ConfigError(format!(
            "http.debug.prometheus.path (env REGISTRY_HTTP_DEBUG_PROMETHEUS_PATH): {path:?} must start with / and not be under /v2, e.g. /metrics"
        )));
    }
    Ok((Some(path.to_owned()), addr))
}

/// `http.trustedproxies`: addresses or networks.
pub(super) fn trusted_proxy_list(tree: &Value) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    let setting = "http.trustedproxies";
    get_list(tree, setting, "an address or a network", "addresses or networks")?
        .iter()
        .map(|i| {
            berth_auth::access::parse_network(i.trim()).ok_or_else(|| {
                ConfigError(format!(
                    "{setting}{}: {i:?} is not an address or a network such as 10.0.0.0/8",
                    env_names(setting)
                ))
            })
        })
        .collect()
}

/// `http.headers`: header name → value or list of values, each added to every response.
pub(super) fn response_headers(tree: &Value) -> Result<Vec<(http::HeaderName, http::HeaderValue)>, ConfigError> {
    let Some(map) = get_path(tree, "http.headers") else {
        return Ok(Vec::new());
    };
    let Value::Object(map) = map else {
        return Err(bad("http.headers", "a map of header name to a list of values", map));
    };
    let mut out = Vec::new();
    for (name, values) in map {
        let header = http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            ConfigError(format!(
                "http.headers.{name} (env REGISTRY_HTTP_HEADERS_{name}): not a valid header name"
            ))
        })?;
        let list: Vec<&Value> = match values {
            Value::Array(a) => a.iter().collect(),
            v => vec![v],
        };
        for v in list {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => {
                    return Err(bad(
                        &format!("http.headers.{name}"),
                        "a string or a list of strings",
                        other,
                    ));
                }
            };
            let value = http::HeaderValue::from_str(&text)
                .map_err(|_| ConfigError(format!("http.headers.{name}: {text:?} is not a valid header value")))?;
            out.push((header.clone(), value));
        }
    }
    Ok(out)
}

pub(super) fn listen_addr(
    tree: &Value,
    host_override: Option<&str>,
    port_override: Option<&str>,
) -> Result<SocketAddr, ConfigError> {
    let addr_text = get_str(tree, "http.addr")?.unwrap_or("0.0.0.0:5000");
    let (host, port) = addr_text.rsplit_once(':').ok_or_else(|| {
        ConfigError(format!(
            "http.addr (env REGISTRY_HTTP_ADDR): {addr_text:?} is not host:port, e.g. 0.0.0.0:5000 or :5000"
        ))
    })?;
    let host = host_override.unwrap_or(host);
    let ip = parse_host(host).ok_or_else(|| {
        ConfigError(format!("listen host {host:?} (http.addr / REGISTRY_HOST) is not an IP address; use 0.0.0.0, 127.0.0.1, :: or localhost"))
    })?;
    let port_text = port_override.unwrap_or(port);
    let port: u16 = port_text.trim().parse().map_err(|_| {
        ConfigError(format!(
            "listen port {port_text:?} (http.addr / REGISTRY_PORT) is not a port number between 0 and 65535"
        ))
    })?;
    Ok(SocketAddr::new(ip, port))
}

pub(super) fn pagination(tree: &Value) -> Result<(usize, usize), ConfigError> {
    let page_default = get_usize(tree, "pagination.defaultlimit", 100)?;
    let page_max = get_usize(tree, "pagination.maxlimit", 1000)?;
    if page_max == 0 || page_default == 0 {
        return Err(ConfigError("pagination.defaultlimit and pagination.maxlimit (env REGISTRY_PAGINATION_DEFAULT_LIMIT, REGISTRY_PAGINATION_MAX_LIMIT) must be at least 1".into()));
    }
    if page_default > page_max {
        return Err(ConfigError(format!(
            "pagination.defaultlimit ({page_default}) is larger than pagination.maxlimit ({page_max}); raise REGISTRY_PAGINATION_MAX_LIMIT or lower REGISTRY_PAGINATION_DEFAULT_LIMIT"
        )));
    }
    Ok((page_default, page_max))
}

#[cfg(test)]
mod tests {
    use super::super::testing::load_str;
    use super::*;

    #[test]
    fn the_peer_url_defaults_to_a_specific_listen_address() {
        let peer = |yaml: &str, env: &[(&str, &str)]| load_str(yaml, env).map(|(c, _)| c.peer_url);
        assert_eq!(peer("", &[]).unwrap(), None, "every interface: no address to give");
        assert_eq!(
            peer("http: {addr: '10.0.0.5:5001'}", &[]).unwrap().as_deref(),
            Some("http://10.0.0.5:5001")
        );
        assert_eq!(
            peer("", &[("REGISTRY_HTTP_PEERURL", "https://berth-0.berth:5000/")])
                .unwrap()
                .as_deref(),
            Some("https://berth-0.berth:5000")
        );
        for bad in ["10.0.0.5:5000", "ftp://x", "http://u:p@x:5000", "http://x:5000/v2"] {
            let e = peer("", &[("REGISTRY_HTTP_PEERURL", bad)]).unwrap_err().to_string();
            assert!(e.contains("http.peerurl") && e.contains("REGISTRY_HTTP_PEERURL"), "{e}");
        }
    }

    #[test]
    fn metrics_settings() {
        let (c, w) = load_str("", &[]).unwrap();
        assert_eq!((c.metrics_path.as_deref(), c.debug_addr), (Some("/metrics"), None));
        assert!(w.is_empty());
        let (c, w) = load_str(
            "http: {debug: {addr: 'localhost:5001', prometheus: {enabled: true, path: /m}}}",
            &[],
        )
        .unwrap();
        assert_eq!(c.metrics_path.as_deref(), Some("/m"));
        assert_eq!(c.debug_addr, Some("127.0.0.1:5001".parse().unwrap()));
        assert!(w.is_empty(), "{w:?}");
        let (c, _) = load_str("", &[("REGISTRY_HTTP_DEBUG_PROMETHEUS_ENABLED", "false")]).unwrap();
        assert_eq!(c.metrics_path, None);
        // Without metrics the debug listener still serves the probes.
        let (c, _) = load_str(
            "",
            &[
                ("REGISTRY_HTTP_DEBUG_PROMETHEUS_ENABLED", "false"),
                ("REGISTRY_HTTP_DEBUG_ADDR", ":5001"),
            ],
        )
        .unwrap();
        assert_eq!((c.metrics_path, c.debug_addr.map(|a| a.port())), (None, Some(5001)));
        assert!(load_str("", &[("REGISTRY_HTTP_DEBUG_PROMETHEUS_PATH", "/v2/metrics")]).is_err());
        assert!(load_str("", &[("REGISTRY_HTTP_DEBUG_ADDR", "nowhere")]).is_err());
    }

    #[test]
    fn trusted_proxies() {
        let (c, _) = load_str("http: {trustedproxies: [10.0.0.0/8, '::1']}", &[]).unwrap();
        assert_eq!(c.trusted_proxies.len(), 2);
        assert!(c.trusted_proxies[1].contains(&"::1".parse::<IpAddr>().unwrap()));
        let (c, _) = load_str("", &[("REGISTRY_HTTP_TRUSTEDPROXIES", "172.16.0.0/12, 127.0.0.1")]).unwrap();
        assert_eq!(c.trusted_proxies.len(), 2);
        let (c, _) = load_str("", &[("REGISTRY_HTTP_TRUSTEDPROXIES", "['192.168.0.0/16']")]).unwrap();
        assert_eq!(c.trusted_proxies.len(), 1);
        let e = load_str("", &[("REGISTRY_HTTP_TRUSTEDPROXIES", "10.0.0.0/99")])
            .unwrap_err()
            .0;
        assert!(
            e.contains("REGISTRY_HTTP_TRUSTEDPROXIES") && e.contains("10.0.0.0/99"),
            "{e}"
        );
    }

    #[test]
    fn tls_settings() {
        let (c, w) = load_str(
            "http: {tls: {certificate: /c.pem, key: /k.pem, clientcas: [/ca1.pem, /ca2.pem], minimumtls: tls1.3}}",
            &[],
        )
        .unwrap();
        let t = c.tls.unwrap();
        assert_eq!(t.certificate, PathBuf::from("/c.pem"));
        assert_eq!(t.clientcas.len(), 2);
        assert!(t.tls13_only);
        assert!(w.is_empty(), "{w:?}");
        let (c, _) = load_str(
            "",
            &[
                ("REGISTRY_HTTP_TLS_CERTIFICATE", "/c.pem"),
                ("REGISTRY_HTTP_TLS_KEY", "/k.pem"),
                ("REGISTRY_HTTP_TLS_CLIENTCAS", "/a.pem,/b.pem"),
            ],
        )
        .unwrap();
        assert_eq!(c.tls.unwrap().clientcas.len(), 2);
        assert!(load_str("", &[]).unwrap().0.tls.is_none());
        // Half a TLS configuration never falls back to plain HTTP.
        let e = load_str("http: {tls: {certificate: /c.pem}}", &[]).unwrap_err().0;
        assert!(
            e.contains("http.tls.key (env REGISTRY_HTTP_TLS_KEY) is required"),
            "{e}"
        );
        let e = load_str("", &[("REGISTRY_HTTP_TLS_CLIENTCAS", "/ca.pem")])
            .unwrap_err()
            .0;
        assert!(e.contains("http.tls.certificate") && e.contains("http.tls.key"), "{e}");
        assert!(load_str("http: {tls: {certificate: c, key: k, minimumtls: tls1.0}}", &[]).is_err());
        let e = load_str("", &[("REGISTRY_HTTP_TLS_LETSENCRYPT_EMAIL", "a@b")])
            .unwrap_err()
            .0;
        assert!(e.starts_with("http.tls.letsencrypt"), "{e}");
    }

    #[test]
    fn response_headers_from_file_and_env() {
        let yaml = "http: {headers: {X-Content-Type-Options: [nosniff]}}";
        let (c, w) = load_str(
            yaml,
            &[
                ("REGISTRY_HTTP_HEADERS_Access-Control-Allow-Origin", "['*']"),
                (
                    "REGISTRY_HTTP_HEADERS_Access-Control-Allow-Methods",
                    "['GET', 'HEAD', 'OPTIONS']",
                ),
            ],
        )
        .unwrap();
        assert!(w.is_empty(), "{w:?}");
        let h: Vec<(String, String)> = c
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        assert!(h.contains(&("x-content-type-options".into(), "nosniff".into())));
        assert!(h.contains(&("access-control-allow-origin".into(), "*".into())));
        assert!(h.contains(&("access-control-allow-methods".into(), "OPTIONS".into())));
        assert_eq!(h.iter().filter(|(k, _)| k == "access-control-allow-methods").count(), 3);
        assert!(load_str("http: {headers: {\"bad name\": [x]}}", &[]).is_err());
    }
}
