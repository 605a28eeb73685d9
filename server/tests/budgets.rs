//! Resource budgets and early answers, over TCP against a `berth` process: answers given before
//! a request's body was read reach a client that writes its whole body first; idle upload
//! sessions hold no file descriptors; caps on open sessions answer 429 without touching what is
//! stored; a body that drips is cut instead of being kept alive by each byte.

mod common;

use std::time::{Duration, Instant};

use common::{Registry, random_bytes, sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn hostport(reg: &Registry) -> String {
    reg.base.trim_start_matches("http://").to_owned()
}

/// A response read off a raw connection.
#[derive(Debug)]
struct RawReply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawReply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// Read one response (head and a Content-Length body) from `s`, with `pending` holding bytes
/// already read past the previous response.
async fn read_reply(s: &mut TcpStream, pending: &mut Vec<u8>) -> std::io::Result<RawReply> {
    let mut buf = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        pending.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&pending[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    pending.drain(..head_end);
    while pending.len() < len {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        pending.extend_from_slice(&buf[..n]);
    }
    let body = pending.drain(..len).collect();
    Ok(RawReply { status, headers, body })
}

/// A PATCH of `body` declared as `start-end`, as a whole request in one buffer.
fn patch_request(path: &str, start: u64, body: &[u8]) -> Vec<u8> {
    let end = start + body.len() as u64 - 1;
    let mut req = format!(
        "PATCH {path} HTTP/1.1\r\nHost: registry\r\nContent-Type: application/octet-stream\r\nContent-Range: {start}-{end}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

/// Write the whole request before reading anything, as simple HTTP clients do; then read the
/// answer. Reconnects when the previous answer closed the connection.
struct PlainClient {
    addr: String,
    conn: Option<(TcpStream, Vec<u8>)>,
    reconnects: usize,
}

impl PlainClient {
    fn new(reg: &Registry) -> PlainClient {
        PlainClient {
            addr: hostport(reg),
            conn: None,
            reconnects: 0,
        }
    }

    async fn send(&mut self, req: &[u8]) -> Result<RawReply, String> {
        if self.conn.is_none() {
            let s = TcpStream::connect(&self.addr).await.map_err(|e| e.to_string())?;
            self.conn = Some((s, Vec::new()));
            self.reconnects += 1;
        }
        let (s, pending) = self.conn.as_mut().unwrap();
        let sent = s.write_all(req).await;
        let reply = match sent {
            Ok(()) => read_reply(s, pending)
                .await
                .map_err(|e| format!("reading the answer: {e}")),
            Err(e) => Err(format!("writing the request: {e}")),
        };
        match &reply {
            Ok(r) if !r.closes() => {}
            _ => self.conn = None,
        }
        reply
    }
}

/// The case: out-of-order 8 MiB PATCHes and retried earlier chunks, each written whole
/// before the client reads. Every one gets its 416 with a Range header (none sees a reset), and
/// the upload goes on afterwards as if they had not happened.
#[tokio::test(flavor = "multi_thread")]
async fn early_416s_reach_clients_that_write_the_whole_body_first() {
    let Some(reg) = Registry::start_with(&[]).await else {
        return;
    };
    let reps: usize = std::env::var("BERTH_TEST_EARLY_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let repo = "budgets/early";
    let first = random_bytes(1 << 20, 7);
    let chunk = random_bytes(8 << 20, 8);
    let loc = reg.start_upload(repo).await;
    let path = format!("{}?{}", loc.path(), loc.query().unwrap_or(""));
    let mut client = PlainClient::new(&reg);
    let r = client.send(&patch_request(&path, 0, &first)).await.unwrap();
    assert_eq!(r.status, 202, "{:?}", String::from_utf8_lossy(&r.body));
    let ahead = patch_request(&path, first.len() as u64 + 4096, &chunk);
    let again = {
        // The first chunk once more (a retry of a chunk already stored), padded to 8 MiB.
        let mut b = first.clone();
        b.resize(8 << 20, 1);
        patch_request(&path, 0, &b)
    };
    let started = Instant::now();
    let mut failures = Vec::new();
    for i in 0..reps {
        for (what, req) in [("out of order", &ahead), ("retried", &again)] {
            match client.send(req).await {
                Ok(r) if r.status == 416 && r.header("range") == Some("0-1048575") => {}
                Ok(r) => failures.push(format!(
                    "#{i} {what}: {} range={:?} {}",
                    r.status,
                    r.header("range"),
                    String::from_utf8_lossy(&r.body)
                )),
                Err(e) => failures.push(format!("#{i} {what}: {e}")),
            }
        }
    }
    let took = started.elapsed();
    assert!(
        failures.is_empty(),
        "{} of {} early answers did not arrive, e.g. {:?}",
        failures.len(),
        2 * reps,
        &failures[..failures.len().min(5)]
    );
    eprintln!(
        "{} early 416s delivered in {took:?} over {} connection(s)",
        2 * reps,
        client.reconnects
    );
    // The upload is intact and usable.
    let r = client
        .send(&patch_request(&path, first.len() as u64, &chunk))
        .await
        .unwrap();
    assert_eq!(r.status, 202);
    let mut whole = first.clone();
    whole.extend_from_slice(&chunk);
    let d = sha256(&whole);
    let put = format!("PUT {path}&digest={d} HTTP/1.1\r\nHost: registry\r\nContent-Length: 0\r\n\r\n");
    let r = client.send(put.as_bytes()).await.unwrap();
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    reg.assert_blob(repo, &whole).await;
}

/// Answers before the body is read for other reasons reach the client too: an unknown upload
/// (404), an oversized manifest (413), a malformed tag on a push (400); and the connection stays
/// open for the next request when the body could be drained.
#[tokio::test(flavor = "multi_thread")]
async fn other_early_answers_arrive_and_keep_the_connection() {
    let Some(reg) = Registry::start_with(&[]).await else {
        return;
    };
    let mut client = PlainClient::new(&reg);
    let big = random_bytes(6 << 20, 3);
    let unknown = "/v2/budgets/other/blobs/uploads/6f2a7b1c-1111-4222-8333-944455556666";
    let manifest = |reference: &str, body: &[u8]| {
        let mut req = format!(
            "PUT /v2/budgets/other/manifests/{reference} HTTP/1.1\r\nHost: registry\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        req
    };
    for _ in 0..20 {
        let r = client.send(&patch_request(unknown, 0, &big)).await.unwrap();
        assert_eq!(r.status, 404);
        let r = client.send(&manifest("v1", &big)).await.unwrap();
        assert_eq!(r.status, 413);
        let r = client.send(&manifest("-bad", &big[..4 << 20])).await.unwrap();
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
        assert!(String::from_utf8_lossy(&r.body).contains("TAG_INVALID"));
    }
    assert_eq!(client.reconnects, 1, "drained answers keep the connection open");
    reg.get("/v2/").await.expect(200);
}

/// A body larger than `http.limits.drain` is not drained: the answer is sent with
/// `Connection: close`.
#[tokio::test(flavor = "multi_thread")]
async fn bodies_beyond_the_drain_limit_close_the_connection() {
    let Some(reg) = Registry::start_with(&[("REGISTRY_HTTP_LIMITS_DRAIN", "65536")]).await else {
        return;
    };
    let mut s = TcpStream::connect(hostport(&reg)).await.unwrap();
    let head = "PATCH /v2/budgets/x/blobs/uploads/6f2a7b1c-1111-4222-8333-944455556666 HTTP/1.1\r\nHost: r\r\nContent-Length: 10000000\r\n\r\n";
    s.write_all(head.as_bytes()).await.unwrap();
    let r = read_reply(&mut s, &mut Vec::new()).await.unwrap();
    assert_eq!(r.status, 404);
    assert!(r.closes(), "{:?}", r.headers);
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Idle upload sessions hold no file descriptors: 300 sessions, each with data, change the
/// server's descriptor count by less than a handful (figure in docs/operations.md).
#[tokio::test(flavor = "multi_thread")]
async fn idle_upload_sessions_hold_no_descriptors() {
    let Some(reg) = Registry::start_with(&[]).await else {
        return;
    };
    let Some(pid) = reg.pid() else { return };
    reg.get("/v2/").await.expect(200);
    let before = open_fds(pid);
    let data = random_bytes(4096, 5);
    let mut sessions = Vec::new();
    for _ in 0..300 {
        let loc = reg.start_upload("budgets/fds").await;
        let r = reg
            .send(
                reg.client
                    .patch(loc.clone())
                    .header("content-type", "application/octet-stream")
                    .body(data.clone()),
            )
            .await;
        r.expect(202);
        sessions.push(reg.resolve(&r.must_header("location")));
    }
    let after = open_fds(pid);
    eprintln!("descriptors: {before} before, {after} with 300 idle sessions");
    assert!(
        after <= before + 4,
        "{before} descriptors before, {after} with 300 idle sessions"
    );
    // They all still work.
    for loc in sessions.iter().take(20) {
        let mut whole = data.clone();
        whole.extend_from_slice(b"end");
        let r = reg
            .send(
                reg.client
                    .put(Registry::with_digest(loc, &sha256(&whole)))
                    .header("content-type", "application/octet-stream")
                    .body(b"end".to_vec()),
            )
            .await;
        r.expect(201);
    }
}

/// The caps on open sessions: a client beyond its cap gets 429 TOOMANYREQUESTS with
/// Retry-After naming the setting; another client is not affected; cancelling frees a place;
/// the repository and total caps work the same way; nothing stored is touched.
#[tokio::test(flavor = "multi_thread")]
async fn upload_session_caps_answer_429_and_spare_other_clients() {
    let Some(reg) = Registry::start_with(&[
        ("REGISTRY_HTTP_LIMITS_UPLOADSPERCLIENT", "5"),
        ("REGISTRY_HTTP_LIMITS_UPLOADSPERREPOSITORY", "8"),
        ("REGISTRY_HTTP_LIMITS_UPLOADS", "10"),
    ])
    .await
    else {
        return;
    };
    let stored = random_bytes(10_000, 9);
    reg.push_blob("budgets/caps", &stored).await;
    // Clients are told apart by address: 127.0.0.1, 127.0.0.2, … are all loopback.
    let from = |n: u8| {
        reqwest::Client::builder()
            .no_proxy()
            .local_address(std::net::IpAddr::from([127, 0, 0, n]))
            .build()
            .unwrap()
    };
    let start = |c: reqwest::Client, repo: &'static str| {
        let url = reg.url(&format!("/v2/{repo}/blobs/uploads/"));
        async move { c.post(url).send().await.unwrap() }
    };
    let mut mine = Vec::new();
    for _ in 0..5 {
        let r = start(from(2), "budgets/caps").await;
        assert_eq!(r.status(), 202);
        mine.push(r.headers()["location"].to_str().unwrap().to_owned());
    }
    let r = start(from(2), "budgets/caps").await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "30");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "TOOMANYREQUESTS");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("http.limits.uploadsperclient")
    );
    // Another client still pushes.
    let r = start(from(3), "budgets/caps").await;
    assert_eq!(r.status(), 202);
    // Cancelling one frees a place for the first client.
    let r = reg.delete(&mine.pop().unwrap()).await;
    r.expect(204);
    assert_eq!(start(from(2), "budgets/caps").await.status(), 202);
    // The repository cap: 5 + 1 in budgets/caps now; two more fit, the third does not.
    assert_eq!(start(from(4), "budgets/caps").await.status(), 202);
    assert_eq!(start(from(4), "budgets/caps").await.status(), 202);
    let r = start(from(5), "budgets/caps").await;
    assert_eq!(r.status(), 429);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("uploadsperrepository")
    );
    // The total cap: 8 open; two more in another repository, then none.
    assert_eq!(start(from(6), "budgets/other").await.status(), 202);
    assert_eq!(start(from(6), "budgets/other").await.status(), 202);
    let r = start(from(7), "budgets/third").await;
    assert_eq!(r.status(), 429);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("http.limits.uploads)")
    );
    // Reads and what is stored are untouched.
    reg.assert_blob("budgets/caps", &stored).await;
    reg.get("/v2/").await.expect(200);
}

/// A body that drips (a byte every 200 ms) is cut after one period of http.timeouts.body for
/// bringing less than http.limits.bodyminrate, not kept alive by each byte; the upload keeps
/// what it had.
#[tokio::test(flavor = "multi_thread")]
async fn a_dripping_body_is_cut_by_the_least_rate() {
    let Some(reg) = Registry::start_with(&[
        ("REGISTRY_HTTP_TIMEOUTS_BODY", "2s"),
        ("REGISTRY_HTTP_LIMITS_BODYMINRATE", "1000"),
    ])
    .await
    else {
        return;
    };
    let loc = reg.start_upload("budgets/drip").await;
    let path = format!("{}?{}", loc.path(), loc.query().unwrap_or(""));
    let mut s = TcpStream::connect(hostport(&reg)).await.unwrap();
    let head = format!(
        "PATCH {path} HTTP/1.1\r\nHost: r\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let (mut rd, mut wr) = s.into_split();
    let drip = tokio::spawn(async move {
        for _ in 0..1000 {
            if wr.write_all(b"x").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), rd.read_to_end(&mut buf)).await;
    let took = started.elapsed();
    drip.abort();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("http.limits.bodyminrate"), "{text}");
    assert!(took < Duration::from_secs(6), "cut after {took:?}");
    let r = reg.get(&path).await;
    r.expect(204).expect_header("range", "0-0");
}
