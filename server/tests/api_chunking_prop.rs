//! Property: however a blob is cut into chunks, and whether each chunk is streamed or sent with
//! `Content-Range`, the stored blob has the same digest and bytes as a monolithic upload.

mod common;

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use reqwest::Method;

#[derive(Debug, Clone)]
struct Case {
    len: usize,
    seed: u64,
    /// Cut points as fractions (per mille) of the length.
    cuts: Vec<u16>,
    /// Per chunk: send Content-Range (true) or stream it without one (false).
    ranged: Vec<bool>,
    /// Send the last chunk in the closing PUT instead of a PATCH.
    last_in_put: bool,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop_oneof![Just(0usize), 1usize..64, 0usize..=300 * 1024],
        any::<u64>(),
        prop::collection::vec(0u16..=1000, 0..8),
        prop::collection::vec(any::<bool>(), 9),
        any::<bool>(),
    )
        .prop_map(|(len, seed, cuts, ranged, last_in_put)| Case {
            len,
            seed,
            cuts,
            ranged,
            last_in_put,
        })
}

fn chunks(c: &Case) -> Vec<(usize, usize)> {
    let mut points: Vec<usize> = c.cuts.iter().map(|&p| c.len * p as usize / 1000).collect();
    points.push(0);
    points.push(c.len);
    points.sort();
    points.dedup();
    let parts: Vec<(usize, usize)> = points.windows(2).map(|w| (w[0], w[1])).collect();
    if parts.is_empty() { vec![(0, 0)] } else { parts }
}

async fn run_case(reg: &Registry, c: &Case) -> Result<(), TestCaseError> {
    let data = random_bytes(c.len, c.seed);
    let d = sha256(&data);
    let repo = unique_repo("prop/chunked");
    let mono = unique_repo("prop/mono");

    // Reference: monolithic upload (asserts 201 and the digest header).
    prop_assert_eq!(reg.push_blob(&mono, &data).await, d.clone());

    let mut url = reg.start_upload(&repo).await;
    let parts = chunks(c);
    let n = parts.len();
    for (i, &(a, b)) in parts.iter().enumerate() {
        let last = i + 1 == n;
        if last && c.last_in_put {
            break;
        }
        let mut rb = reg.client.patch(url.clone()).header("content-type", OCTET);
        if c.ranged[i % c.ranged.len()] && b > a {
            rb = rb
                .header("content-range", format!("{}-{}", a, b - 1))
                .body(data[a..b].to_vec());
        } else {
            let pieces: Vec<Result<bytes::Bytes, std::io::Error>> = data[a..b]
                .chunks(4096)
                .map(|p| Ok(bytes::Bytes::copy_from_slice(p)))
                .collect();
            rb = rb.body(reqwest::Body::wrap_stream(futures_util::stream::iter(pieces)));
        }
        let r = reg.send(rb).await;
        prop_assert_eq!(r.status.as_u16(), 202, "PATCH {}-{}: {:?}", a, b, r.text());
        if b > 0 {
            prop_assert_eq!(r.header("range"), Some(format!("0-{}", b - 1)), "PATCH {}-{}", a, b);
        }
        url = reg.resolve(&r.must_header("location"));
    }
    let mut put = reg
        .client
        .put(Registry::with_digest(&url, &d))
        .header("content-type", OCTET);
    if c.last_in_put {
        let (a, b) = parts[n - 1];
        if c.ranged[(n - 1) % c.ranged.len()] && b > a {
            put = put.header("content-range", format!("{}-{}", a, b - 1));
        }
        put = put.body(data[a..b].to_vec());
    }
    let r = reg.send(put).await;
    prop_assert_eq!(r.status.as_u16(), 201, "PUT: {:?}", r.text());
    prop_assert_eq!(r.header("docker-content-digest"), Some(d.clone()));

    for rp in [&repo, &mono] {
        let g = reg.get(&format!("/v2/{rp}/blobs/{d}")).await;
        prop_assert_eq!(g.status.as_u16(), 200);
        prop_assert_eq!(g.header("content-length"), Some(c.len.to_string()));
        prop_assert!(g.body == data, "{}: bytes differ", rp);
    }
    // The session is closed.
    let s = reg.request(Method::GET, url).await;
    prop_assert_eq!(s.status.as_u16(), 404);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn chunked_uploads_match_monolithic() {
    let reg = Registry::start().await;
    let handle = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| {
        let mut runner = TestRunner::new(Config {
            cases: 16,
            max_shrink_iters: 24,
            failure_persistence: None,
            ..Config::default()
        });
        let ran = std::sync::atomic::AtomicUsize::new(0);
        let result = runner.run(&case(), |c| {
            ran.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            handle.block_on(run_case(&reg, &c))
        });
        if let Err(e) = result {
            panic!("{e}");
        }
        assert!(ran.into_inner() >= 16, "fewer cases ran than configured");
    });
}
