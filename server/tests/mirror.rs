//! The pull-through cache against real upstreams started here: a Berth with token auth (its
//! built-in token server, htpasswd users and access rules), fed by an open Berth on the same
//! storage; and a small HTTP server in this file that serves wrong bytes for a digest, or breaks
//! off an answer.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{OCI_MANIFEST, Registry, htpasswd, keygen, random_bytes, sha256};

const RULES: &str = r#"{"defaultPolicy":"deny",
  "rules":[{"repository":"team/**","users":["mirror"],"permissions":["pull"]}]}"#;

/// An upstream with token auth (only the user `mirror` may pull `team/**`) and an open
/// registry on the same storage to push into it. Drop the upstream first.
struct Upstream {
    auth: Registry,
    open: Registry,
    _dir: tempfile::TempDir,
}

async fn upstream() -> Option<Upstream> {
    let dir = tempfile::tempdir().unwrap();
    let pw = htpasswd(dir.path(), &[("mirror", "m-pass")]);
    let rules = dir.path().join("rules.json");
    std::fs::write(&rules, RULES).unwrap();
    let (key, cert) = keygen(dir.path());
    let open = Registry::start_local(&[]).await?;
    let rules = rules.display().to_string();
    // On the open registry's metadata too (its PostgreSQL database in the pg runs).
    let db = open.database_env();
    let mut env: Vec<(&str, &str)> = db.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.extend([
        ("REGISTRY_AUTH_TYPE", "token"),
        ("REGISTRY_AUTH_TOKEN_REALM", "@BASE@/auth"),
        ("REGISTRY_AUTH_TOKEN_SERVICE", "upstream-test"),
        ("REGISTRY_AUTH_TOKEN_ISSUER", "upstream-issuer"),
        ("REGISTRY_AUTH_TOKEN_SERVER_ENABLED", "true"),
        ("REGISTRY_AUTH_TOKEN_SERVER_KEY", key.as_str()),
        ("REGISTRY_AUTH_TOKEN_SERVER_CERTIFICATE", cert.as_str()),
        ("REGISTRY_AUTH_HTPASSWD", pw.as_str()),
        ("REGISTRY_ACCESS_CONTROL_CONFIG", rules.as_str()),
    ]);
    let auth = Registry::spawn_sharing(&open, &env).await;
    // Anonymous pulls are refused: the mirror must log in.
    auth.get("/v2/team/app/tags/list").await.expect(401);
    Some(Upstream { auth, open, _dir: dir })
}

/// A mirror of `url` under the prefix `up`, logging in as `mirror`.
async fn mirror_of(url: &str, password: &str, extra: &str) -> Registry {
    let mirrors = format!(
        "[{{name: up, url: '{url}', prefix: up, username: mirror, password: '{password}', tagttl: 1s, timeout: 5s{extra}}}]"
    );
    Registry::start_local(&[("REGISTRY_MIRRORS", mirrors.as_str())])
        .await
        .expect("a local registry")
}

/// The value of a counter in a registry's `/metrics` (0 when absent).
async fn metric(reg: &Registry, series: &str) -> u64 {
    let text = reg.get("/metrics").await.expect(200).text();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

/// Blob GETs the upstream answered with 200.
async fn upstream_blob_gets(up: &Upstream) -> u64 {
    metric(
        &up.auth,
        "berth_http_requests_total{route=\"blob\",method=\"GET\",status=\"200\"}",
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn pulls_through_a_token_upstream_and_keeps_serving_when_it_is_gone() {
    let Some(up) = upstream().await else {
        return;
    };
    let (manifest, digest) = up.open.push_image("team/app", "v1").await;
    let m: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let mirror = mirror_of(&up.auth.base, "m-pass", "").await;

    // By tag: the upstream's bytes, digest and type.
    mirror
        .assert_manifest("up/team/app", "v1", OCI_MANIFEST, &manifest)
        .await;
    mirror
        .get_manifest("up/team/app", "v1")
        .await
        .expect_header("docker-content-digest", &digest);
    // Blobs: config and layers, the same bytes as upstream.
    let mut blobs = vec![m["config"]["digest"].as_str().unwrap().to_owned()];
    blobs.extend(
        m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_owned()),
    );
    for d in &blobs {
        let want = up
            .open
            .get(&format!("/v2/team/app/blobs/{d}"))
            .await
            .expect(200)
            .body
            .clone();
        let got = mirror.get(&format!("/v2/up/team/app/blobs/{d}")).await;
        got.expect(200);
        assert_eq!(got.body, want, "{d}");
        assert_eq!(sha256(&got.body), *d);
    }
    let fetched = upstream_blob_gets(&up).await;
    assert_eq!(fetched, blobs.len() as u64, "each blob fetched once");
    // Pulled again: from storage, nothing more upstream.
    for d in &blobs {
        mirror.get(&format!("/v2/up/team/app/blobs/{d}")).await.expect(200);
    }
    assert_eq!(upstream_blob_gets(&up).await, fetched);
    assert!(metric(&mirror, "berth_mirror_hits_total{upstream=\"up\"}").await >= blobs.len() as u64);
    assert!(metric(&mirror, "berth_mirror_upstream_token_fetches_total{upstream=\"up\"}").await >= 1);
    // A HEAD of a stored blob is answered here; a never-pulled one asks the upstream.
    mirror
        .head(&format!("/v2/up/team/app/blobs/{}", blobs[0]))
        .await
        .expect(200);
    mirror
        .head(&format!("/v2/up/team/app/blobs/{}", common::random_digest()))
        .await
        .expect(404);

    // Pushes into the mirrored namespace are refused; elsewhere they work.
    mirror
        .raw("POST", "/v2/up/team/app/blobs/uploads/", &[], b"")
        .await
        .expect_error(405, &["UNSUPPORTED"]);
    mirror.push_image("local/app", "v1").await;

    // The upstream goes away: by tag past the TTL (stale-if-error) and by digest, still served.
    let base = up.auth.base.clone();
    drop(up);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..2 {
        mirror
            .assert_manifest("up/team/app", "v1", OCI_MANIFEST, &manifest)
            .await;
        mirror
            .assert_manifest("up/team/app", &digest, OCI_MANIFEST, &manifest)
            .await;
        for d in &blobs {
            mirror.get(&format!("/v2/up/team/app/blobs/{d}")).await.expect(200);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(metric(&mirror, "berth_mirror_stale_errors_total{upstream=\"up\"}").await >= 1);
    // Never cached and the upstream down: an error that names the upstream.
    let r = mirror.get_manifest("up/team/other", "v1").await;
    let e = r.expect_error(503, &["UNAVAILABLE"]);
    let msg = e["message"].as_str().unwrap_or_default().to_owned();
    assert!(
        msg.contains("\"up\"") || msg.contains(base.trim_start_matches("http://")),
        "{msg}"
    );
    assert!(r.header("retry-after").is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_cold_pulls_fetch_each_blob_once() {
    let Some(up) = upstream().await else {
        return;
    };
    let big = random_bytes(24 << 20, common::unique_u64());
    let d = up.open.push_blob("team/big", &big).await;
    let mirror = mirror_of(&up.auth.base, "m-pass", "").await;
    let want = Arc::new(big);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (base, d, want) = (mirror.base.clone(), d.clone(), want.clone());
        tasks.push(tokio::spawn(async move {
            let reg = Registry::attach(&base);
            let r = reg.get(&format!("/v2/up/team/big/blobs/{d}")).await;
            r.expect(200);
            assert_eq!(r.body.len(), want.len());
            assert!(r.body == *want, "wrong bytes");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        upstream_blob_gets(&up).await,
        1,
        "one upstream fetch for 20 concurrent pulls"
    );
    assert!(metric(&mirror, "berth_mirror_coalesced_total{upstream=\"up\"}").await >= 1);
    // Ranges of the stored blob.
    let r = mirror
        .send(
            mirror
                .client
                .get(mirror.url(&format!("/v2/up/team/big/blobs/{d}")))
                .header("Range", "bytes=1000-1999"),
        )
        .await;
    r.expect(206);
    assert_eq!(r.body, want[1000..2000]);
    drop(up);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_moved_tag_is_seen_after_its_ttl() {
    let Some(up) = upstream().await else {
        return;
    };
    let (m1, d1) = up.open.push_image("team/app", "latest").await;
    let mirror = mirror_of(&up.auth.base, "m-pass", "").await;
    mirror.assert_manifest("up/team/app", "latest", OCI_MANIFEST, &m1).await;
    let (m2, d2) = up.open.push_image("team/app", "latest").await;
    assert_ne!(d1, d2);
    // Within the TTL: the cached manifest.
    mirror.assert_manifest("up/team/app", "latest", OCI_MANIFEST, &m1).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Past it: served at once, checked in the background; the new one comes soon after.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = mirror.get_manifest("up/team/app", "latest").await;
        r.expect(200);
        if r.body == m2 {
            break;
        }
        assert_eq!(r.body, m1, "either the old manifest or the new one");
        assert!(Instant::now() < deadline, "the moved tag was never seen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    mirror
        .get_manifest("up/team/app", "latest")
        .await
        .expect_header("docker-content-digest", &d2);
    assert!(metric(&mirror, "berth_mirror_tag_updates_total{upstream=\"up\"}").await >= 1);
    drop(up);
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_credentials_and_unlisted_repositories_are_refused() {
    let Some(up) = upstream().await else {
        return;
    };
    up.open.push_image("team/app", "v1").await;
    let wrong = mirror_of(&up.auth.base, "not-the-password", "").await;
    let e = wrong
        .get_manifest("up/team/app", "v1")
        .await
        .expect_error(502, &["UNKNOWN"]);
    assert!(e["message"].as_str().unwrap().contains("up"), "{e}");
    let listed = mirror_of(&up.auth.base, "m-pass", ", repositories: ['team/other']").await;
    listed.get_manifest("up/team/app", "v1").await.expect(404);
    let before = metric(
        &up.auth,
        "berth_http_requests_total{route=\"manifest\",method=\"GET\",status=\"200\"}",
    )
    .await;
    assert_eq!(before, 0, "an unlisted repository is never asked upstream");
    // containerd's ns parameter routes to the upstream serving that host.
    let mirror = mirror_of(&up.auth.base, "m-pass", "").await;
    let host = up.auth.base.trim_start_matches("http://").to_owned();
    let r = mirror.get(&format!("/v2/team/app/manifests/v1?ns={host}")).await;
    r.expect(200);
    assert_eq!(
        r.header("oci-namespace").as_deref(),
        Some(host.as_str()),
        "the spec's OCI-Namespace header"
    );
    // An ns no upstream serves is answered from local content only, and not echoed.
    let r = mirror.get("/v2/team/app/manifests/v1?ns=elsewhere.example").await;
    r.expect(404);
    assert_eq!(r.header("oci-namespace"), None);
    drop(up);
}

/// How the test upstream serves its blob.
const GOOD: usize = 0;
/// The last byte flipped.
const CORRUPT: usize = 1;
/// The first answer breaks off after half the bytes (then GOOD, honouring Range).
const CUT_ONCE: usize = 2;
/// Right bytes, slowly: 32 pieces 40 ms apart.
const SLOW: usize = 3;

/// What the test upstream saw: blob requests, and the Range headers among them.
#[derive(Default)]
struct Seen {
    /// Blob GETs (HEADs are not counted).
    hits: AtomicUsize,
    /// Blob HEADs.
    heads: AtomicUsize,
    ranges: parking_lot::Mutex<Vec<String>>,
    /// Whether a SLOW answer has sent its last piece.
    sent_all: std::sync::atomic::AtomicBool,
}

/// Whether the test upstream has the blob at `path`: in `bad/app` and `bad/copy`.
fn served(path: &str, digest: &str) -> bool {
    ["bad/app", "bad/copy"]
        .iter()
        .any(|r| path == format!("/v2/{r}/blobs/{digest}"))
}

/// A registry that serves one blob (in `bad/app` and `bad/copy`), in the way `mode` says.
async fn test_upstream(data: Arc<Vec<u8>>, mode: Arc<AtomicUsize>, seen: Arc<Seen>) -> String {
    use futures_util::StreamExt as _;
    use http_body_util::{BodyExt, Full, StreamBody};
    use hyper::service::service_fn;
    type Body = http_body_util::combinators::BoxBody<bytes::Bytes, std::io::Error>;
    let full = |b: Vec<u8>| -> Body { Full::new(bytes::Bytes::from(b)).map_err(|e| match e {}).boxed() };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let digest = sha256(&data);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (data, mode, seen, digest) = (data.clone(), mode.clone(), seen.clone(), digest.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (data, mode, seen, digest) = (data.clone(), mode.clone(), seen.clone(), digest.clone());
                    async move {
                        let path = req.uri().path().to_owned();
                        let resp = if served(&path, &digest) && req.method() == hyper::Method::HEAD {
                            seen.heads.fetch_add(1, Ordering::SeqCst);
                            hyper::Response::builder()
                                .header("content-length", data.len())
                                .body(full(Vec::new()))
                        } else if served(&path, &digest) {
                            seen.hits.fetch_add(1, Ordering::SeqCst);
                            let range = req
                                .headers()
                                .get("range")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned);
                            let from = range
                                .as_deref()
                                .and_then(|r| r.strip_prefix("bytes="))
                                .and_then(|r| r.strip_suffix('-'))
                                .and_then(|n| n.parse::<usize>().ok())
                                .unwrap_or(0);
                            if let Some(r) = range {
                                seen.ranges.lock().push(r);
                            }
                            let mut body = data.as_ref().clone();
                            match mode.load(Ordering::SeqCst) {
                                CORRUPT => {
                                    let last = body.len() - 1;
                                    body[last] ^= 0xff;
                                }
                                CUT_ONCE => {
                                    mode.store(GOOD, Ordering::SeqCst);
                                    let half = bytes::Bytes::from(body[..body.len() / 2].to_vec());
                                    let frames = futures_util::stream::iter(vec![
                                        Ok(hyper::body::Frame::data(half)),
                                        Err(std::io::Error::other("cut off")),
                                    ]);
                                    let resp = hyper::Response::builder()
                                        .header("content-length", body.len())
                                        .body(BodyExt::boxed(StreamBody::new(frames)));
                                    return Ok::<_, std::convert::Infallible>(resp.unwrap());
                                }
                                SLOW if from == 0 => {
                                    let total = body.len();
                                    let pieces: Vec<bytes::Bytes> = body
                                        .chunks(total.div_ceil(32))
                                        .map(bytes::Bytes::copy_from_slice)
                                        .collect();
                                    let n = pieces.len();
                                    let seen = seen.clone();
                                    let frames = futures_util::stream::iter(pieces.into_iter().enumerate()).then(
                                        move |(i, p)| {
                                            let seen = seen.clone();
                                            async move {
                                                tokio::time::sleep(Duration::from_millis(40)).await;
                                                if i + 1 == n {
                                                    seen.sent_all.store(true, Ordering::SeqCst);
                                                }
                                                Ok::<_, std::io::Error>(hyper::body::Frame::data(p))
                                            }
                                        },
                                    );
                                    let resp = hyper::Response::builder()
                                        .header("content-length", total)
                                        .body(BodyExt::boxed(StreamBody::new(frames)));
                                    return Ok::<_, std::convert::Infallible>(resp.unwrap());
                                }
                                _ => {}
                            }
                            let total = body.len();
                            if from > 0 {
                                hyper::Response::builder()
                                    .status(206)
                                    .header("content-length", total - from)
                                    .header("content-range", format!("bytes {from}-{}/{total}", total - 1))
                                    .body(full(body[from..].to_vec()))
                            } else {
                                hyper::Response::builder()
                                    .header("content-length", total)
                                    .body(full(body))
                            }
                        } else if path == "/v2/" {
                            hyper::Response::builder().body(full(b"{}".to_vec()))
                        } else {
                            hyper::Response::builder()
                                .status(404)
                                .body(full(b"{\"errors\":[]}".to_vec()))
                        };
                        Ok::<_, std::convert::Infallible>(resp.unwrap())
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

/// A mirror of a [`test_upstream`] under `up`.
async fn mirror_of_test_upstream(url: &str) -> Option<Registry> {
    let mirrors = format!("[{{name: up, url: '{url}', prefix: up}}]");
    Registry::start_local(&[("REGISTRY_MIRRORS", mirrors.as_str())]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_bytes_from_the_upstream_are_never_stored_or_completed() {
    let data = Arc::new(random_bytes(3 << 20, common::unique_u64()));
    let digest = sha256(&data);
    let (mode, seen) = (Arc::new(AtomicUsize::new(CORRUPT)), Arc::new(Seen::default()));
    let url = test_upstream(data.clone(), mode.clone(), seen.clone()).await;
    let Some(mirror) = mirror_of_test_upstream(&url).await else {
        return;
    };
    let path = format!("/v2/up/bad/app/blobs/{digest}");
    for _ in 0..2 {
        let resp = mirror.client.get(mirror.url(&path)).send().await.unwrap();
        // The headers may come (the size is known), but the body never completes.
        if resp.status() == 200 {
            let body = resp.bytes().await;
            assert!(body.is_err(), "a complete body of wrong bytes was delivered");
        } else {
            assert!(resp.status().is_server_error(), "{}", resp.status());
        }
    }
    assert!(metric(&mirror, "berth_mirror_digest_mismatches_total{upstream=\"up\"}").await >= 1);
    assert_eq!(
        seen.hits.load(Ordering::SeqCst),
        2,
        "nothing was stored: each pull asked again"
    );
    // Fixed upstream: the pull works, and the blob is stored.
    mode.store(GOOD, Ordering::SeqCst);
    let r = mirror.get(&path).await;
    r.expect(200);
    assert!(r.body == *data);
    mirror.get(&path).await.expect(200);
    assert_eq!(seen.hits.load(Ordering::SeqCst), 3);
    assert!(mirror.log_text().contains("wrong bytes"), "the mismatch is logged");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_download_resumes_with_a_range_request() {
    let data = Arc::new(random_bytes(4 << 20, common::unique_u64()));
    let digest = sha256(&data);
    let (mode, seen) = (Arc::new(AtomicUsize::new(CUT_ONCE)), Arc::new(Seen::default()));
    let url = test_upstream(data.clone(), mode.clone(), seen.clone()).await;
    let Some(mirror) = mirror_of_test_upstream(&url).await else {
        return;
    };
    let r = mirror.get(&format!("/v2/up/bad/app/blobs/{digest}")).await;
    r.expect(200);
    assert!(r.body == *data, "the client got the whole blob, right");
    assert_eq!(
        seen.hits.load(Ordering::SeqCst),
        2,
        "the first answer and one resumed request"
    );
    assert_eq!(*seen.ranges.lock(), vec![format!("bytes={}-", data.len() / 2)]);
    assert_eq!(metric(&mirror, "berth_mirror_resumed_total{upstream=\"up\"}").await, 1);
    mirror.head(&format!("/v2/up/bad/app/blobs/{digest}")).await.expect(200);
    assert_eq!(seen.hits.load(Ordering::SeqCst), 2, "stored: no more upstream requests");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_streams_the_download_another_one_runs() {
    use futures_util::StreamExt as _;
    let data = Arc::new(random_bytes(4 << 20, common::unique_u64()));
    let digest = sha256(&data);
    let (mode, seen) = (Arc::new(AtomicUsize::new(SLOW)), Arc::new(Seen::default()));
    let url = test_upstream(data.clone(), mode.clone(), seen.clone()).await;
    let Some(a) = mirror_of_test_upstream(&url).await else {
        return;
    };
    let b = a.share().await;
    let path = format!("/v2/up/bad/app/blobs/{digest}");
    // B's clients pull it from another repository that the upstream has it in too.
    let b_path = format!("/v2/up/bad/copy/blobs/{digest}");
    // A starts the download (about 1.3 s at the upstream's pace).
    let first = {
        let (client, url, want) = (a.client.clone(), a.url(&path), data.clone());
        tokio::spawn(async move {
            let body = client.get(url).send().await.unwrap().bytes().await.unwrap();
            assert!(body == *want, "A's client got wrong bytes");
        })
    };
    let t0 = Instant::now();
    while seen.hits.load(Ordering::SeqCst) == 0 {
        assert!(t0.elapsed() < Duration::from_secs(10), "A never asked the upstream");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A's download serves only its own token.
    let stolen = a
        .client
        .get(a.url(&format!("/v2/_berth/fills/{digest}")))
        .header("berth-fill-token", "0123456789abcdef0123456789abcdef")
        .send()
        .await
        .unwrap();
    assert_eq!(stolen.status(), 404, "a wrong token gets nothing");
    // Nor does a repository the upstream does not have the blob in, though this process is
    // downloading it for another one.
    let other = a.get(&format!("/v2/up/bad/other/blobs/{digest}")).await;
    other.expect(404);
    // B's client gets bytes while the upstream is still sending them to A.
    let resp = b.client.get(b.url(&b_path)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut got = body.next().await.unwrap().unwrap().to_vec();
    assert!(
        !seen.sent_all.load(Ordering::SeqCst),
        "B's first bytes came only after the whole download: it waited instead of streaming"
    );
    while let Some(piece) = body.next().await {
        got.extend_from_slice(&piece.unwrap());
    }
    assert!(got == *data, "B's client got wrong bytes");
    first.await.unwrap();
    let heads = seen.heads.load(Ordering::SeqCst);
    assert_eq!(
        heads, 1,
        "B asked the upstream once whether the repository has the blob"
    );
    assert_eq!(
        seen.hits.load(Ordering::SeqCst),
        1,
        "one upstream download for both processes"
    );
    assert_eq!(metric(&b, "berth_mirror_peer_streams_total{upstream=\"up\"}").await, 1);
    // B linked the blob when the stream ended: its next pull reads local storage, asking the
    // upstream nothing.
    let r = b.get(&b_path).await;
    r.expect(200);
    assert!(r.body == *data);
    assert_eq!(seen.hits.load(Ordering::SeqCst), 1);
    assert_eq!(
        seen.heads.load(Ordering::SeqCst),
        heads,
        "B linked the blob it streamed"
    );
    drop(b);
}

/// Push an image with one layer of `layer` bytes; returns (manifest digest, layer digest).
async fn push_sized_image(reg: &Registry, repo: &str, tag: &str, layer: &[u8]) -> (String, String) {
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","x":"{}"}}"#,
        common::unique_u64()
    );
    let parts = common::ImageParts {
        config: common::Desc {
            media_type: common::OCI_CONFIG.into(),
            digest: reg.push_blob(repo, config.as_bytes()).await,
            size: config.len(),
        },
        layers: vec![common::Desc {
            media_type: common::OCI_LAYER.into(),
            digest: reg.push_blob(repo, layer).await,
            size: layer.len(),
        }],
    };
    let m = parts.oci_manifest(serde_json::json!({}));
    let d = reg.push_manifest(repo, tag, OCI_MANIFEST, &m).await;
    (d, parts.layers[0].digest.clone())
}

/// Pull an image through `reg` by tag: its manifest and every blob; false when any fails.
async fn pull_whole(reg: &Registry, repo: &str, tag: &str) -> bool {
    let r = reg.get_manifest(repo, tag).await;
    if r.status != 200 {
        return false;
    }
    let m = r.json();
    let mut blobs = vec![m["config"]["digest"].as_str().unwrap_or_default().to_owned()];
    blobs.extend(
        m["layers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["digest"].as_str())
            .map(str::to_owned),
    );
    for d in blobs {
        let b = reg.get(&format!("/v2/{repo}/blobs/{d}")).await;
        if b.status != 200 || sha256(&b.body) != d {
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread")]
async fn least_recently_pulled_images_are_evicted_whole_within_the_budget() {
    let Some(up) = upstream().await else {
        return;
    };
    const LAYER: usize = 600 << 10;
    let shared_layer = random_bytes(LAYER, common::unique_u64());
    let mut images = Vec::new();
    for (i, name) in ["e1", "e2", "e3", "e4"].iter().enumerate() {
        let layer = if i == 0 {
            shared_layer.clone()
        } else {
            random_bytes(LAYER, common::unique_u64())
        };
        images.push(push_sized_image(&up.open, &format!("team/{name}"), "v1", &layer).await);
    }
    // Room for two of the four images.
    let mirror = mirror_of(&up.auth.base, "m-pass", ", budget: 1400KiB").await;
    // A local image beside the mirrored ones, sharing e1's layer.
    let (_, local_layer) = push_sized_image(&mirror, "local/app", "v1", &shared_layer).await;
    assert_eq!(local_layer, images[0].1);
    // Pulled in this order, a second apart: e3 and e1 are the least recently pulled (not the
    // first two by name).
    for name in ["e3", "e1", "e4", "e2"] {
        assert!(pull_whole(&mirror, &format!("up/team/{name}"), "v1").await, "{name}");
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while metric(&mirror, "berth_mirror_evicted_images_total{upstream=\"up\"}").await < 2 {
        assert!(
            Instant::now() < deadline,
            "nothing was evicted:\n{}",
            mirror.get("/metrics").await.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // With the upstream gone, what stayed is whole, what went is gone entirely (tag first).
    drop(up);
    for name in ["e4", "e2"] {
        assert!(
            pull_whole(&mirror, &format!("up/team/{name}"), "v1").await,
            "{name} stayed whole"
        );
    }
    for name in ["e3", "e1"] {
        mirror
            .get_manifest(&format!("up/team/{name}"), "v1")
            .await
            .expect_error(503, &["UNAVAILABLE"]);
    }
    // The local image keeps the layer it shares with the evicted e1.
    assert!(pull_whole(&mirror, "local/app", "v1").await);
    assert!(metric(&mirror, "berth_mirror_evicted_bytes_total{upstream=\"up\"}").await >= 2 * LAYER as u64);
}

#[tokio::test(flavor = "multi_thread")]
async fn processes_sharing_the_storage_download_a_blob_once() {
    let Some(up) = upstream().await else {
        return;
    };
    let big = Arc::new(random_bytes(16 << 20, common::unique_u64()));
    let d = up.open.push_blob("team/shared", &big).await;
    let a = mirror_of(&up.auth.base, "m-pass", "").await;
    let b = a.share().await;
    let mut tasks = Vec::new();
    for i in 0..12 {
        let (base, d, want) = (if i % 2 == 0 { &a } else { &b }.base.clone(), d.clone(), big.clone());
        tasks.push(tokio::spawn(async move {
            let r = Registry::attach(&base)
                .get(&format!("/v2/up/team/shared/blobs/{d}"))
                .await;
            r.expect(200);
            assert!(r.body == *want, "wrong bytes from {base}");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        upstream_blob_gets(&up).await,
        1,
        "one upstream download for 12 pulls through two processes"
    );
    drop(b);
    drop(up);
}
