//! Hot-path benches: hashing, upload append, range reads, the read cache, JWT verification, route
//! and header parsing.

#![allow(missing_docs)]

use std::convert::Infallible;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::{FutureExt, StreamExt};
use sha2::Digest as _;

use berth_engine::{Algorithm, ByteRange, Digest, Engine, Hasher, RepoName};

const MIB: usize = 1024 * 1024;

fn hashing(c: &mut Criterion) {
    let data = vec![7u8; 4 * MIB];
    let mut g = c.benchmark_group("sha256");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("sha2", |b| b.iter(|| black_box(sha2::Sha256::digest(black_box(&data)))));
    g.bench_function("ring", |b| {
        b.iter(|| black_box(ring::digest::digest(&ring::digest::SHA256, black_box(&data))))
    });
    g.bench_function("engine_hasher", |b| {
        b.iter(|| {
            let mut h = Hasher::new(Algorithm::Sha256);
            h.update(black_box(&data));
            black_box(h.finish())
        })
    });
    g.finish();
    // Two uploads' data hashed side by side on one thread, as the engine's hashing threads do
    // with concurrent uploads: throughput counts both messages.
    let other = vec![9u8; 4 * MIB];
    let mut g = c.benchmark_group("sha256_two_streams");
    g.throughput(Throughput::Bytes(2 * data.len() as u64));
    g.bench_function("one_after_the_other", |b| {
        b.iter(|| {
            let (mut x, mut y) = (Hasher::new(Algorithm::Sha256), Hasher::new(Algorithm::Sha256));
            x.update(black_box(&data));
            y.update(black_box(&other));
            black_box((x.finish(), y.finish()))
        })
    });
    g.bench_function("paired", |b| {
        b.iter(|| {
            let (mut x, mut y) = (Hasher::new(Algorithm::Sha256), Hasher::new(Algorithm::Sha256));
            Hasher::update_pair(&mut x, black_box(&data), &mut y, black_box(&other));
            black_box((x.finish(), y.finish()))
        })
    });
    g.finish();
}

fn upload_append(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let engine = rt.block_on(Engine::open(dir.path())).unwrap();
    let repo: RepoName = "bench/upload".parse().unwrap();
    let frame = Bytes::from(vec![1u8; 64 * 1024]);
    let frames = 256; // 16 MiB per request
    let mut g = c.benchmark_group("upload");
    g.throughput(Throughput::Bytes((frames * frame.len()) as u64));
    g.sample_size(20);
    g.bench_function("append_16MiB_in_64KiB_frames", |b| {
        b.iter(|| {
            rt.block_on(async {
                let id = engine.upload_start(&repo).await.unwrap();
                let body = futures_util::stream::iter((0..frames).map(|_| Ok::<_, Infallible>(frame.clone())));
                let n = engine.upload_append(&repo, id, None, None, body).await.unwrap();
                engine.upload_cancel(&repo, id).await.unwrap();
                black_box(n)
            })
        })
    });
    g.finish();
}

fn range_read(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let engine = rt.block_on(Engine::open(dir.path())).unwrap();
    let repo: RepoName = "bench/read".parse().unwrap();
    let data = Bytes::from(vec![3u8; 8 * MIB]);
    let digest = Digest::of(Algorithm::Sha256, &data);
    rt.block_on(async {
        let id = engine.upload_start(&repo).await.unwrap();
        let body = futures_util::stream::iter([Ok::<_, Infallible>(data.clone())]);
        engine
            .upload_finish(&repo, id, &digest, None, None, body)
            .await
            .unwrap();
    });
    // Small blobs: the first read of each goes to its file, every later one is a hit in the
    // small-blob cache (56 B on the heap, 64 KiB as a memory map).
    let small: Vec<(Digest, u64)> = [56usize, 64 * 1024]
        .iter()
        .map(|&n| {
            let data = Bytes::from(vec![5u8; n]);
            let d = Digest::of(Algorithm::Sha256, &data);
            rt.block_on(async {
                let id = engine.upload_start(&repo).await.unwrap();
                let body = futures_util::stream::iter([Ok::<_, Infallible>(data.clone())]);
                engine.upload_finish(&repo, id, &d, None, None, body).await.unwrap();
            });
            (d, n as u64)
        })
        .collect();
    let uncached = engine_without_blob_cache(&rt, dir.path());
    let mut g = c.benchmark_group("read_small");
    g.throughput(Throughput::Elements(1));
    for (label, e) in [("cached", &engine), ("streamed_uncached", &uncached)] {
        for (d, n) in &small {
            g.bench_function(format!("{label}_{n}B"), |b| {
                b.iter(|| {
                    rt.block_on(async {
                        let mut s = e.blob_read(d, ByteRange { start: 0, len: *n }).await.unwrap();
                        let mut got = 0;
                        while let Some(chunk) = s.next().await {
                            got += chunk.unwrap().len();
                        }
                        black_box(got)
                    })
                })
            });
        }
    }
    g.finish();
    let mut g = c.benchmark_group("read");
    g.throughput(Throughput::Bytes(MIB as u64));
    g.bench_function("range_1MiB", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut s = engine
                    .blob_read(
                        &digest,
                        ByteRange {
                            start: MIB as u64,
                            len: MIB as u64,
                        },
                    )
                    .await
                    .unwrap();
                let mut n = 0;
                while let Some(chunk) = s.next().await {
                    n += chunk.unwrap().len();
                }
                black_box(n)
            })
        })
    });
    g.finish();
}

/// A second engine on the same storage with the small-blob cache off: every small read goes to
/// its file through the streaming path (two trips to the blocking pool, a reader task).
fn engine_without_blob_cache(rt: &tokio::runtime::Runtime, dir: &std::path::Path) -> Engine {
    rt.block_on(Engine::open(dir)).unwrap().with_blob_cache(0, 0)
}

/// The read cache: a hit through the engine (the store's feed checked, then the lookup), the
/// cache alone, and the two maps it was chosen between (papaya, the unbounded map of before, and
/// quick_cache, weighted with eviction), each over 100,000 keys.
fn cache(c: &mut Criterion) {
    use berth_engine::hot::Hot;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let engine = rt.block_on(Engine::open(dir.path())).unwrap();
    let repo: RepoName = "bench/cache".parse().unwrap();
    let data = Bytes::from_static(b"a small blob");
    let digest = Digest::of(Algorithm::Sha256, &data);
    rt.block_on(async {
        let id = engine.upload_start(&repo).await.unwrap();
        let body = futures_util::stream::iter([Ok::<_, Infallible>(data.clone())]);
        engine
            .upload_finish(&repo, id, &digest, None, None, body)
            .await
            .unwrap();
        engine.blob_size(&repo, &digest).await.unwrap();
    });
    const N: usize = 100_000;
    let keys: Vec<(RepoName, Digest)> = (0..N)
        .map(|i| {
            let r: RepoName = format!("bench/r{}", i % 1000).parse().unwrap();
            (r, Digest::of(Algorithm::Sha256, &i.to_le_bytes()))
        })
        .collect();
    let hot = Hot::new(256 << 20);
    let papaya_map = papaya::HashMap::new();
    let quick = quick_cache::sync::Cache::new(N);
    for (i, (r, d)) in keys.iter().enumerate() {
        hot.blob_size(true, r, d, async { Ok(i as u64) })
            .now_or_never()
            .unwrap()
            .unwrap();
        papaya_map.pin().insert((r.clone(), d.clone()), i as u64);
        quick.insert((r.clone(), d.clone()), i as u64);
    }
    let mut g = c.benchmark_group("cache");
    g.throughput(Throughput::Elements(1));
    g.bench_function("engine_blob_size_hit", |b| {
        b.iter(|| black_box(engine.blob_size(&repo, &digest).now_or_never().unwrap().unwrap()))
    });
    let mut i = 0usize;
    g.bench_function("hot_hit", |b| {
        b.iter(|| {
            i = (i + 7919) % N;
            let (r, d) = &keys[i];
            black_box(
                hot.blob_size(true, r, d, async { Ok(0) })
                    .now_or_never()
                    .unwrap()
                    .unwrap(),
            )
        })
    });
    g.bench_function("papaya_get", |b| {
        b.iter(|| {
            i = (i + 7919) % N;
            black_box(papaya_map.pin().get(&keys[i]).copied())
        })
    });
    g.bench_function("quick_cache_get", |b| {
        b.iter(|| {
            i = (i + 7919) % N;
            black_box(quick.get(&keys[i]))
        })
    });
    g.finish();
}

fn parsing(c: &mut Criterion) {
    let blob = "/v2/team/project/app/blobs/sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let manifest = "/v2/team/project/app/manifests/v1.2.3";
    c.bench_function("route_blob", |b| {
        b.iter(|| black_box(berth_server::route::parse(black_box(blob)).is_ok()))
    });
    c.bench_function("route_manifest", |b| {
        b.iter(|| black_box(berth_server::route::parse(black_box(manifest)).is_ok()))
    });
    c.bench_function("range_header", |b| {
        b.iter(|| {
            black_box(berth_server::range::parse_range(
                black_box(Some("bytes=1024-65535")),
                1 << 30,
            ))
        })
    });
}

/// Bearer-token verification as the registry does it per request: signature, claims and grant
/// (`verify_uncached`), and the same token again from the verified-token cache (`verify`).
fn jwt(c: &mut Criterion) {
    use berth_auth::token::signing::generate;
    use berth_auth::token::{Issuer, KeySet, KidFormat, SigningKey, Verifier};
    use jsonwebtoken::Algorithm as Alg;
    use std::time::Duration;

    let mut g = c.benchmark_group("jwt");
    for (alg, name) in [(Alg::RS256, "rs256"), (Alg::ES256, "es256")] {
        let (key, _cert) = generate(alg, "bench", 1).unwrap();
        let signer = SigningKey::from_pem("bench", key.as_bytes(), None, KidFormat::Thumbprint).unwrap();
        let mut keys = KeySet::default();
        signer.add_to(&mut keys).unwrap();
        let verifier = Verifier::new("bench".into(), "registry".into(), keys, Duration::from_secs(30));
        let issuer = Issuer::new(
            "bench".into(),
            "registry".into(),
            Duration::from_secs(3600),
            vec![signer],
        )
        .unwrap();
        let scope = "repository:team/app:pull,push".parse().unwrap();
        let token = issuer.issue("alice", &[scope], None).unwrap().token;
        assert!(verifier.verify(&token).is_ok(), "the bench token verifies");
        g.bench_function(format!("{name}_uncached"), |b| {
            b.iter(|| black_box(verifier.verify_uncached(black_box(&token)).unwrap()))
        });
        g.bench_function(format!("{name}_cached"), |b| {
            b.iter(|| black_box(verifier.verify(black_box(&token)).unwrap()))
        });
    }
    g.finish();
}

criterion_group!(benches, hashing, upload_append, range_read, cache, jwt, parsing);
criterion_main!(benches);
