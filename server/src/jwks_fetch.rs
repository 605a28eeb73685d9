//! Fetching a JWKS from a URL (`auth.token.jwksurl`): at start-up, every few minutes, and again
//! when a token names a `kid` that is not known — at most once per [`MIN_INTERVAL`], so a flood of
//! tokens with made-up `kid`s cannot turn into a flood of fetches.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;

use berth_auth::token::{KeySet, Verifier};

/// Shortest time between two fetches.
pub const MIN_INTERVAL: Duration = Duration::from_secs(10);
/// Regular refresh interval.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(300);
const TIMEOUT: Duration = Duration::from_secs(10);
const MAX_BODY: usize = 1024 * 1024;

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// A JWKS URL and the keys that come from files, which every fetched set is added to.
pub struct RemoteJwks {
    url: String,
    base: KeySet,
    client: HttpsClient,
    last: Mutex<Option<Instant>>,
}

impl RemoteJwks {
    /// A fetcher for `url`; `base` are the keys from files.
    pub fn new(url: String, base: KeySet) -> Result<RemoteJwks, String> {
        // The system's roots when it has any; an image FROM scratch has none, and then the
        // Mozilla roots compiled into the binary are used.
        let builder = match hyper_rustls::HttpsConnectorBuilder::new().with_native_roots() {
            Ok(b) => b,
            Err(e) => {
                tracing::info!(reason = %e, "no system root certificates; using the built-in Mozilla roots for auth.token.jwksurl");
                hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots()
            }
        };
        let https = builder.https_or_http().enable_http1().build();
        let client = Client::builder(TokioExecutor::new()).build(https);
        Ok(RemoteJwks {
            url,
            base,
            client,
            last: Mutex::new(None),
        })
    }

    /// The URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    async fn fetch(&self) -> Result<KeySet, String> {
        let uri: http::Uri = self.url.parse().map_err(|e| format!("{e}"))?;
        let resp = tokio::time::timeout(TIMEOUT, self.client.get(uri))
            .await
            .map_err(|_| format!("no answer within {} s", TIMEOUT.as_secs()))?
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status()));
        }
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let text = std::str::from_utf8(&body).map_err(|_| "the JWKS is not UTF-8".to_string())?;
        let mut keys = self.base.clone();
        keys.add_jwks(Path::new(&self.url), text)?;
        Ok(keys)
    }

    /// Fetch and install the keys unless a fetch happened less than [`MIN_INTERVAL`] ago.
    /// Returns whether new keys were installed.
    pub async fn refresh(&self, verifier: &Verifier) -> bool {
        {
            let mut last = self.last.lock();
            if last.is_some_and(|t| t.elapsed() < MIN_INTERVAL) {
                return false;
            }
            *last = Some(Instant::now());
        }
        match self.fetch().await {
            Ok(keys) => {
                let kids: Vec<String> = keys.kids().into_iter().map(str::to_owned).collect();
                verifier.replace_keys(keys);
                tracing::info!(url = %self.url, ?kids, "JWKS fetched");
                true
            }
            Err(e) => {
                tracing::warn!(url = %self.url, error = %e, "fetching the JWKS failed; keeping the keys we have");
                false
            }
        }
    }
}
