//! A minimal HTTP/1.1 client: one keep-alive hyper connection per worker task, reconnected on error.
//!
//! Going straight to `hyper::client::conn::http1` (no pool, no lock, no URL parsing per request) keeps the client
//! cheap enough that small requests (HEAD, manifest GET) measure the server rather than the load generator.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST, LOCATION};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;

use crate::blob::ReqBody;

/// One registry under test: where it is and how to authenticate.
#[derive(Debug)]
pub struct Target {
    /// Label used in reports.
    pub label: String,
    /// Base URL as given.
    pub url: String,
    /// Resolved socket address.
    pub addr: SocketAddr,
    /// `Host` header value.
    pub host: HeaderValue,
    /// `Authorization` header value, if any.
    pub auth: Option<HeaderValue>,
}

/// Credentials given on the command line.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// Basic-auth user.
    pub user: Option<String>,
    /// Basic-auth password.
    pub password: Option<String>,
    /// Bearer token.
    pub token: Option<String>,
}

impl Target {
    /// Parses `http://host[:port]` (an `https` URL is refused: plain HTTP only) and resolves it.
    pub fn resolve(url: &str, label: Option<String>, creds: &Credentials) -> Result<Target, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("bad --url {url:?}: {e}"))?;
        match uri.scheme_str() {
            Some("http") | None => {}
            Some(other) => {
                return Err(format!(
                    "--url {url:?}: scheme {other:?} is not supported (plain http only)"
                ));
            }
        }
        let authority = uri.authority().ok_or_else(|| format!("--url {url:?} has no host"))?;
        if !matches!(uri.path(), "" | "/") {
            return Err(format!("--url {url:?}: a path prefix is not supported"));
        }
        let port = authority.port_u16().unwrap_or(80);
        let host = authority.host().trim_start_matches('[').trim_end_matches(']');
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
            .map_err(|e| format!("cannot resolve {url:?}: {e}"))?
            .next()
            .ok_or_else(|| format!("cannot resolve {url:?}: no address"))?;
        let auth = if let Some(token) = &creds.token {
            Some(format!("Bearer {token}"))
        } else {
            creds.user.as_ref().map(|user| {
                let pair = format!("{user}:{}", creds.password.as_deref().unwrap_or(""));
                format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
            })
        };
        let auth = auth
            .map(|a| HeaderValue::try_from(a).map_err(|_| "credentials contain invalid header characters".to_string()))
            .transpose()?;
        Ok(Target {
            label: label.unwrap_or_else(|| authority.to_string()),
            url: url.trim_end_matches('/').to_string(),
            addr,
            host: HeaderValue::try_from(authority.as_str()).map_err(|e| e.to_string())?,
            auth,
        })
    }
}

/// A keep-alive connection to one target, owned by a single worker task.
pub struct Conn {
    target: std::sync::Arc<Target>,
    sender: Option<SendRequest<ReqBody>>,
    /// HTTP requests sent (including failed ones).
    pub requests: u64,
}

impl Conn {
    /// A connection to `target`; it is opened lazily on the first request.
    pub fn new(target: std::sync::Arc<Target>) -> Self {
        Conn {
            target,
            sender: None,
            requests: 0,
        }
    }

    /// Drops the underlying connection so the next request opens a fresh one.
    pub fn reset(&mut self) {
        self.sender = None;
    }

    /// Opens a new TCP connection and HTTP/1.1 session.
    async fn connect(&mut self) -> Result<(), String> {
        let stream = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(self.target.addr))
            .await
            .map_err(|_| format!("connect {}: timed out", self.target.addr))?
            .map_err(|e| format!("connect {}: {e}", self.target.addr))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        self.sender = Some(sender);
        Ok(())
    }

    /// Sends one request (`path` in origin form, e.g. `/v2/`) and returns the response head with its body unread.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        extra: &[(http::HeaderName, HeaderValue)],
        body: ReqBody,
    ) -> Result<Response<Incoming>, String> {
        self.requests += 1;
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            self.connect().await?;
        }
        let mut builder = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(HOST, self.target.host.clone());
        if let Some(auth) = &self.target.auth {
            builder = builder.header(AUTHORIZATION, auth.clone());
        }
        let len = body.len();
        if len > 0 || matches!(method, Method::PUT | Method::POST | Method::PATCH) {
            builder = builder.header(CONTENT_LENGTH, len);
        }
        for (name, value) in extra {
            builder = builder.header(name, value);
        }
        let req = builder
            .body(body)
            .map_err(|e| format!("{method} {path}: bad request: {e}"))?;
        let sender = self.sender.as_mut().expect("connected above");
        let sent = async {
            sender.ready().await?;
            sender.send_request(req).await
        };
        match sent.await {
            Ok(resp) => Ok(resp),
            Err(e) => {
                self.sender = None;
                Err(format!("{method} {path}: {e}"))
            }
        }
    }

    /// Sends a request and checks the status, turning any other status into an error with the body's start.
    pub async fn expect(
        &mut self,
        method: Method,
        path: &str,
        extra: &[(http::HeaderName, HeaderValue)],
        body: ReqBody,
        want: StatusCode,
    ) -> Result<Response<Incoming>, String> {
        let resp = self.send(method.clone(), path, extra, body).await?;
        if resp.status() == want {
            return Ok(resp);
        }
        let status = resp.status();
        let text = match read_limited(resp.into_body(), 300).await {
            Ok(b) => String::from_utf8_lossy(&b).trim().replace('\n', " "),
            Err(e) => {
                self.sender = None;
                e
            }
        };
        Err(format!("{method} {}: {status} (want {want}) {text}", short_path(path))
            .trim_end()
            .to_string())
    }
}

/// Shortens long upload paths (with `_state` tokens) for error messages.
fn short_path(path: &str) -> &str {
    match path.find('?') {
        Some(i) if path.len() > 100 => &path[..i],
        _ => path,
    }
}

/// Reads at most `limit` bytes of a body (draining the rest so the connection can be reused).
async fn read_limited(mut body: Incoming, limit: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading body: {e}"))?;
        if let Ok(data) = frame.into_data()
            && out.len() < limit
        {
            let take = (limit - out.len()).min(data.len());
            out.extend_from_slice(&data[..take]);
        }
    }
    Ok(out)
}

/// Reads a whole body, returning its length and, when `hasher` is given, feeding it every byte.
pub async fn drain(mut body: Incoming, mut hasher: Option<&mut Sha256>) -> Result<u64, String> {
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading body: {e}"))?;
        if let Ok(data) = frame.into_data() {
            n += data.len() as u64;
            if let Some(h) = hasher.as_deref_mut() {
                h.update(&data);
            }
        }
    }
    Ok(n)
}

/// Reads a whole (small) body into memory.
pub async fn collect(body: Incoming) -> Result<Bytes, String> {
    body.collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| format!("reading body: {e}"))
}

/// The `Location` header of an upload response, reduced to origin form (`/v2/...?...`).
pub fn location<B>(resp: &Response<B>) -> Result<String, String> {
    let loc = resp
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| format!("{} response without a Location header", resp.status()))?;
    Ok(origin_form(loc))
}

/// Strips scheme and authority from an absolute URL; relative references are returned as they are.
pub fn origin_form(loc: &str) -> String {
    if let Some(rest) = loc.strip_prefix("http://").or_else(|| loc.strip_prefix("https://")) {
        match rest.find('/') {
            Some(i) => rest[i..].to_string(),
            None => "/".to_string(),
        }
    } else if loc.starts_with('/') {
        loc.to_string()
    } else {
        format!("/{loc}")
    }
}

/// Appends a `key=value` query parameter to a path that may already have a query.
pub fn with_param(path: &str, key: &str, value: &str) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}{key}={value}")
}

/// The `rel="next"` target of a `Link` header value, in origin form (`</v2/_catalog?n=2&last=b>; rel="next"`).
pub fn next_link(value: &str) -> Option<String> {
    value.split(',').find_map(|link| {
        let (target, params) = link.trim().strip_prefix('<')?.split_once('>')?;
        params
            .split(';')
            .any(|p| {
                let p = p.trim().to_ascii_lowercase().replace(' ', "");
                p == "rel=\"next\"" || p == "rel=next"
            })
            .then(|| origin_form(target.trim()))
    })
}

/// The `Content-Length` of a response, if present and numeric.
pub fn content_length<B>(resp: &Response<B>) -> Option<u64> {
    resp.headers().get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// `Content-Type: application/octet-stream`, for blob uploads.
pub fn octet_stream() -> (http::HeaderName, HeaderValue) {
    (CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_become_origin_form() {
        assert_eq!(
            origin_form("http://127.0.0.1:5001/v2/a/blobs/uploads/x?_state=y"),
            "/v2/a/blobs/uploads/x?_state=y"
        );
        assert_eq!(origin_form("/v2/a/blobs/uploads/x"), "/v2/a/blobs/uploads/x");
        assert_eq!(origin_form("v2/a"), "/v2/a");
        assert_eq!(
            with_param("/u/x?_state=y", "digest", "sha256:1"),
            "/u/x?_state=y&digest=sha256:1"
        );
        assert_eq!(with_param("/u/x", "digest", "sha256:1"), "/u/x?digest=sha256:1");
    }

    #[test]
    fn next_links_parse() {
        assert_eq!(
            next_link("</v2/_catalog?n=2&last=b>; rel=\"next\"").as_deref(),
            Some("/v2/_catalog?n=2&last=b")
        );
        assert_eq!(
            next_link("<http://h:1/v2/a/tags/list?n=5&last=t4>;rel=next").as_deref(),
            Some("/v2/a/tags/list?n=5&last=t4")
        );
        assert_eq!(
            next_link("</x>; rel=\"prev\", </v2/_catalog?last=c>; rel=\"next\"").as_deref(),
            Some("/v2/_catalog?last=c")
        );
        assert_eq!(next_link("</x>; rel=\"prev\""), None);
        assert_eq!(next_link("garbage"), None);
    }

    #[test]
    fn targets_parse() {
        let creds = Credentials {
            user: Some("u".into()),
            password: Some("p".into()),
            token: None,
        };
        let t = Target::resolve("http://127.0.0.1:5001/", None, &creds).unwrap();
        assert_eq!(t.label, "127.0.0.1:5001");
        assert_eq!(t.url, "http://127.0.0.1:5001");
        assert_eq!(t.auth.unwrap(), "Basic dTpw");
        assert!(Target::resolve("https://127.0.0.1:5001", None, &creds).is_err());
        assert!(Target::resolve("http://127.0.0.1:5001/prefix", None, &creds).is_err());
    }
}
