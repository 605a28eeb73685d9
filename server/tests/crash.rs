//! Crash safety: `berth` is SIGKILLed at random moments while 50 clients push (monolithic,
//! streamed and chunked uploads, then a manifest each), restarted on the same storage, and
//! checked: everything that was acknowledged with a 201 is there and re-hashes to its digest;
//! nothing half-written is served, listed or left in the blob store; and the upload sessions of
//! the dead pushes are cleaned up by the reaper.
//!
//! `BERTH_CRASH_ROUNDS` sets the number of kill/restart rounds (default 20);
//! `BERTH_CRASH_DEBUG=1` prints why each interrupted push stopped.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, Registry, random_bytes, sha256};
use parking_lot::Mutex;
use reqwest::{Client, Url};

const PUSHERS: usize = 50;

#[derive(Default)]
struct Outcome {
    /// (repo, digest) of blobs whose upload got a 201.
    blobs: Vec<(String, String)>,
    /// (repo, tag, digest, bytes) of manifests whose PUT got a 201.
    manifests: Vec<(String, String, String, Vec<u8>)>,
    /// (repo, digest) of every blob a client tried to push.
    attempted: Vec<(String, String)>,
}

type Shared = Arc<Mutex<Outcome>>;

fn resolve(base: &str, location: &str) -> Result<Url, String> {
    Url::parse(base)
        .and_then(|b| b.join(location))
        .map_err(|e| format!("bad Location {location}: {e}"))
}

fn with_digest(mut url: Url, digest: &str) -> Url {
    url.query_pairs_mut().append_pair("digest", digest);
    url
}

async fn expect_status(r: reqwest::RequestBuilder, want: u16) -> Result<reqwest::Response, String> {
    let resp = r.send().await.map_err(|e| e.to_string())?;
    if resp.status().as_u16() == want {
        Ok(resp)
    } else {
        Err(format!("status {}", resp.status()))
    }
}

fn location(resp: &reqwest::Response) -> Result<String, String> {
    resp.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| "no Location".to_owned())
}

/// Push one blob the given way; Ok after the 201.
async fn push_blob(client: &Client, base: &str, repo: &str, data: &[u8], how: usize) -> Result<(), String> {
    let digest = sha256(data);
    let start = format!("{base}/v2/{repo}/blobs/uploads/");
    match how % 3 {
        // Monolithic: POST ?digest= with the body.
        0 => {
            let url = with_digest(Url::parse(&start).map_err(|e| e.to_string())?, &digest);
            expect_status(client.post(url).body(data.to_vec()), 201).await?;
        }
        // Streamed: POST, one PATCH with everything, PUT ?digest=.
        1 => {
            let r = expect_status(client.post(&start), 202).await?;
            let url = resolve(base, &location(&r)?)?;
            let r = expect_status(
                client
                    .patch(url)
                    .header("Content-Type", "application/octet-stream")
                    .body(data.to_vec()),
                202,
            )
            .await?;
            let url = resolve(base, &location(&r)?)?;
            expect_status(client.put(with_digest(url, &digest)), 201).await?;
        }
        // Chunked: POST, PATCH with Content-Range per chunk, PUT ?digest= with the last chunk.
        _ => {
            let r = expect_status(client.post(&start), 202).await?;
            let mut url = resolve(base, &location(&r)?)?;
            let chunk = (data.len() / 4).max(1);
            let mut off = 0;
            while data.len() - off > chunk {
                let end = off + chunk;
                let r = expect_status(
                    client
                        .patch(url.clone())
                        .header("Content-Type", "application/octet-stream")
                        .header("Content-Range", format!("{off}-{}", end - 1))
                        .body(data[off..end].to_vec()),
                    202,
                )
                .await?;
                url = resolve(base, &location(&r)?)?;
                off = end;
            }
            expect_status(
                client
                    .put(with_digest(url, &digest))
                    .header("Content-Type", "application/octet-stream")
                    .body(data[off..].to_vec()),
                201,
            )
            .await?;
        }
    }
    Ok(())
}

/// One client: a layer and a config blob, then a manifest under a tag.
async fn pusher(client: Client, base: String, repo: String, seed: u64, layer: Vec<u8>, out: Shared) {
    let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":{seed}}}"#).into_bytes();
    let mut acked = Vec::new();
    for (i, data) in [&layer, &config].into_iter().enumerate() {
        out.lock().attempted.push((repo.clone(), sha256(data)));
        if let Err(e) = push_blob(&client, &base, &repo, data, (seed % 3) as usize + i).await {
            if std::env::var_os("BERTH_CRASH_DEBUG").is_some() {
                eprintln!("{repo}: {e}");
            }
            return;
        }
        out.lock().blobs.push((repo.clone(), sha256(data)));
        acked.push(data);
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(&config), "size": config.len()},
        "layers": [{"mediaType": OCI_LAYER, "digest": sha256(&layer), "size": layer.len()}],
    }))
    .unwrap();
    let tag = format!("t{seed}");
    let r = client
        .put(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("Content-Type", OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await;
    if r.is_ok_and(|r| r.status().as_u16() == 201) {
        out.lock().manifests.push((repo, tag, sha256(&manifest), manifest));
    }
}

/// Every file in the blob store holds exactly the bytes its name says.
fn check_blob_store(storage: &Path) -> usize {
    let mut n = 0;
    let root = storage.join("blobs").join("sha256");
    let Ok(shards) = std::fs::read_dir(&root) else {
        return 0;
    };
    for shard in shards {
        for f in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            let path = f.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(
                sha256(&bytes),
                format!("sha256:{name}"),
                "{} holds bytes of another digest: a partial or corrupt blob",
                path.display()
            );
            n += 1;
        }
    }
    n
}

async fn verify(reg: &Registry, out: &Outcome) {
    // Acknowledged blobs are there, byte for byte.
    for (repo, digest) in &out.blobs {
        let r = reg.get(&format!("/v2/{repo}/blobs/{digest}")).await;
        assert_eq!(r.status, 200, "acknowledged blob {repo}@{digest} is gone");
        assert_eq!(&sha256(&r.body), digest, "blob {repo}@{digest} is corrupt");
    }
    // Acknowledged manifests are there under their tag and digest.
    for (repo, tag, digest, bytes) in &out.manifests {
        for reference in [tag, digest] {
            let r = reg.get_manifest(repo, reference).await;
            assert_eq!(r.status, 200, "acknowledged manifest {repo}:{reference} is gone");
            assert_eq!(&r.body, bytes, "manifest {repo}:{reference} differs");
        }
    }
    // Whatever else is served is whole: a blob that was not acknowledged is absent or complete.
    for (repo, digest) in &out.attempted {
        let r = reg.get(&format!("/v2/{repo}/blobs/{digest}")).await;
        assert!(r.status == 200 || r.status == 404, "{repo}@{digest}: {}", r.status);
        if r.status == 200 {
            assert_eq!(
                &sha256(&r.body),
                digest,
                "partially written blob {repo}@{digest} served"
            );
        }
    }
    // Every listed tag leads to a manifest whose blobs are all there.
    let repos: BTreeSet<&String> = out.attempted.iter().map(|(r, _)| r).collect();
    for repo in repos {
        let r = reg.get(&format!("/v2/{repo}/tags/list")).await;
        if r.status == 404 {
            continue;
        }
        assert_eq!(r.status, 200, "{repo} tags: {}", r.text());
        for tag in r.json()["tags"].as_array().cloned().unwrap_or_default() {
            let tag = tag.as_str().unwrap();
            let m = reg.get_manifest(repo, tag).await;
            assert_eq!(m.status, 200, "listed tag {repo}:{tag} has no manifest");
            let doc: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
            let mut refs = vec![doc["config"]["digest"].as_str().unwrap().to_owned()];
            refs.extend(
                doc["layers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|l| l["digest"].as_str().unwrap().to_owned()),
            );
            for d in refs {
                let b = reg.head(&format!("/v2/{repo}/blobs/{d}")).await;
                assert_eq!(b.status, 200, "{repo}:{tag} lists blob {d}, which is not there");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_during_concurrent_pushes_loses_nothing_acknowledged() {
    let rounds: u64 = std::env::var("BERTH_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let Some(mut reg) = Registry::start_local(&[]).await else {
        return;
    };
    let started = Instant::now();
    let mut all = Outcome::default();
    let (mut acked_blobs, mut acked_manifests) = (0, 0);
    // Round 0 is not killed: it measures how long the 50 pushes take on this machine, so that
    // the kills of the later rounds land anywhere from the first request to the last manifest.
    let mut full_round = Duration::ZERO;
    for round in 0..=rounds {
        let out: Shared = Arc::default();
        // The layers (16 KiB to 784 KiB) are made before the clock starts.
        let layers: Vec<(u64, Vec<u8>)> = (0..PUSHERS)
            .map(|_| {
                let seed = common::unique_u64();
                let size = 16 * 1024 + (seed.wrapping_mul(7919) % (768 * 1024)) as usize;
                (seed, random_bytes(size, seed))
            })
            .collect();
        let mut tasks = Vec::new();
        for (i, (seed, layer)) in layers.into_iter().enumerate() {
            let repo = format!("crash/r{round}/p{i}");
            let (client, base) = (reg.client.clone(), reg.base.clone());
            tasks.push(tokio::spawn(pusher(client, base, repo, seed, layer, out.clone())));
        }
        if round == 0 {
            let t0 = Instant::now();
            for t in tasks {
                let _ = t.await;
            }
            full_round = t0.elapsed();
        } else {
            // Kill at a moment between 2 % and 110 % of an undisturbed round.
            let span = full_round.as_millis() as u64 + 1;
            let frac = (common::unique_u64().wrapping_mul(7_919).wrapping_add(round * 104_729)) % 1080 + 20;
            tokio::time::sleep(Duration::from_millis(span * frac / 1000)).await;
            reg.restart().await; // SIGKILL, then start on the same storage
            for t in tasks {
                let _ = t.await;
            }
        }
        let out = std::mem::take(&mut *out.lock());
        acked_blobs += out.blobs.len();
        acked_manifests += out.manifests.len();
        verify(&reg, &out).await;
        all.blobs.extend(out.blobs);
        all.manifests.extend(out.manifests);
        all.attempted.extend(out.attempted);
    }
    // Everything acknowledged in any round is still there after all the later crashes.
    verify(&reg, &all).await;
    let files = check_blob_store(&reg.storage());
    assert!(
        acked_blobs > 0 && acked_manifests > 0,
        "no push completed before the kills"
    );
    eprintln!(
        "{rounds} SIGKILL rounds x {PUSHERS} pushers (an undisturbed round: {} ms) in {:.1}s: {acked_blobs} blobs and {acked_manifests} manifests acknowledged, all intact; {files} files in the blob store, all whole",
        full_round.as_millis(),
        started.elapsed().as_secs_f64()
    );
    // The sessions of the killed uploads are on disk (resumable) until the reaper removes them.
    let uploads = reg.storage().join("uploads");
    let left = || std::fs::read_dir(&uploads).map(|d| d.count()).unwrap_or(0);
    reg.set_env("REGISTRY_UPLOAD_TIMEOUT", "1s");
    reg.set_env("REGISTRY_UPLOAD_CLEANUP_INTERVAL", "1s");
    reg.restart().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while left() > 0 {
        assert!(
            Instant::now() < deadline,
            "{} dead upload sessions still on disk",
            left()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    verify(&reg, &all).await;
}
