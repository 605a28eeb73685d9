//! Replicas feeding each other's clients from one download: the process that claims a blob's
//! download (see [`berth_engine::FillClaim`]) writes, as its owner text, its process id, a
//! random token for that download and the URL other processes reach it at (`http.peerurl`).
//! Another process that needs the blob meanwhile reads that text and streams the fill in
//! progress from the holder at [`PATH`]`<digest>`, presenting the token in [`TOKEN_HEADER`]; the
//! holder serves only a download it is running, and only to that token. The holder withholds the
//! blob's last byte until it has verified and stored the blob, as it does for its own clients, so
//! a client of the other process never gets a complete wrong blob either.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use rand::RngCore;

use berth_engine::Digest;

use super::upstream::{BlobBody, UpstreamSettings};
use super::upstream_tls::{HttpsClient, https_client};

/// Where a process serves the downloads it is running (not a repository name: no name
/// component starts with `_`).
pub const PATH: &str = "/v2/_berth/fills/";
/// The header that carries a download's token.
pub const TOKEN_HEADER: &str = "berth-fill-token";

/// A claim's owner text, as [`owner_text`] wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The process.
    pub process: String,
    /// The download's token.
    pub token: String,
    /// Where the process is reached, if it said.
    pub url: Option<String>,
}

/// The owner text of a claim by `process` on one download: `process;token;url`.
pub fn owner_text(process: &str, token: &str, url: Option<&str>) -> String {
    format!("{process};{token};{}", url.unwrap_or(""))
}

/// What [`owner_text`] wrote (`None` for any other text, such as an older version's).
pub fn parse_holder(text: &str) -> Option<Holder> {
    let mut parts = text.splitn(3, ';');
    let (process, token, url) = (parts.next()?, parts.next()?, parts.next()?);
    if process.is_empty() || token.is_empty() {
        return None;
    }
    Some(Holder {
        process: process.to_owned(),
        token: token.to_owned(),
        url: (!url.is_empty()).then(|| url.to_owned()),
    })
}

/// A new download's token: 128 random bits, in hex.
pub fn new_token() -> String {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The client of the other processes.
pub struct Peers {
    client: HttpsClient,
    /// Longest wait for an answer, and longest pause in a body.
    timeout: Duration,
}

impl Peers {
    /// A client that verifies `https` peers against the system roots and `own_certificate` (the
    /// processes of one registry share its certificate).
    pub fn new(own_certificate: Option<std::path::PathBuf>, timeout: Duration) -> Result<Peers, String> {
        let settings = UpstreamSettings {
            name: "peer".into(),
            url: String::new(),
            username: None,
            password: None,
            ca_file: own_certificate,
            insecure: false,
            timeout,
        };
        Ok(Peers {
            client: https_client(&settings, "the replicas' client (http.peerurl)")?,
            timeout,
        })
    }

    /// The blob from the process holding its download: its size and a body that ends with an
    /// error if the download fails there. `Ok(None)`: that process runs no such download (any
    /// more); `Err`: it could not be asked.
    pub async fn fetch(&self, holder: &Holder, digest: &Digest) -> Result<Option<(u64, BlobBody)>, String> {
        let Some(url) = &holder.url else {
            return Ok(None);
        };
        let uri: Uri = format!("{url}{PATH}{digest}")
            .parse()
            .map_err(|e| format!("the peer URL {url:?}: {e}"))?;
        let req = Request::get(uri)
            .header(TOKEN_HEADER, holder.token.as_str())
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let resp = match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Err(_) => return Err(format!("{url} did not answer within {:?}", self.timeout)),
            Ok(Err(e)) => return Err(format!("{url}: {e}")),
            Ok(Ok(r)) => r,
        };
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(None),
            s => return Err(format!("{url} answered {s}")),
        }
        let size = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| format!("{url} sent no Content-Length"))?;
        let stall = self.timeout;
        let body = futures_util::stream::unfold(Some(resp.into_body()), move |b| next(b, stall));
        Ok(Some((size, Box::pin(body))))
    }
}

/// The next piece of a peer's body; a stall or a break ends the stream with an error.
async fn next(body: Option<Incoming>, stall: Duration) -> Option<(io::Result<Bytes>, Option<Incoming>)> {
    let mut body = body?;
    loop {
        match tokio::time::timeout(stall, body.frame()).await {
            Err(_) => {
                return Some((
                    Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the replica's download stalled",
                    )),
                    None,
                ));
            }
            Ok(None) => return None,
            Ok(Some(Err(e))) => {
                return Some((
                    Err(io::Error::other(format!("the replica's download broke off: {e}"))),
                    None,
                ));
            }
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data()
                    && !data.is_empty()
                {
                    return Some((Ok(data), Some(body)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_texts_round_trip() {
        let t = new_token();
        assert_eq!(t.len(), 32);
        assert_ne!(t, new_token());
        let h = parse_holder(&owner_text("p1", &t, Some("http://10.0.0.5:5000"))).unwrap();
        assert_eq!(
            (h.process.as_str(), h.url.as_deref()),
            ("p1", Some("http://10.0.0.5:5000"))
        );
        assert_eq!(h.token, t);
        assert_eq!(parse_holder(&owner_text("p1", &t, None)).unwrap().url, None);
        // Older or foreign owner texts carry no way to reach their download.
        assert_eq!(parse_holder("pid 12 at 5f"), None);
        assert_eq!(parse_holder(""), None);
        assert_eq!(parse_holder(";;"), None);
    }
}
