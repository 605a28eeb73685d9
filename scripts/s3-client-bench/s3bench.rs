// S3 client benchmark: a scratch crate, NOT a workspace member (CI never builds it).
// To build it, make a crate outside the repo with this file as src/main.rs and this Cargo.toml:
//
//   [package]
//   name = "s3bench"
//   version = "0.1.0"
//   edition = "2024"
//   publish = false
//
//   # One S3 client per build. The common part (tokio, hyper, hyper-util, futures) is what Berth already
//   # compiles; it also does the plain GET of the presigned URLs.
//   [features]
//   rusty = ["dep:rusty-s3", "dep:url", "dep:jiff"]
//   objstore = ["dep:object_store"]
//   awssdk = ["dep:aws-sdk-s3"]
//
//   [dependencies]
//   tokio = { version = "1", features = ["rt-multi-thread", "macros", "time", "net"] }
//   bytes = "1"
//   futures = "0.3"
//   libc = "0.2"
//   http = "1"
//   hyper = { version = "1", features = ["client", "http1"] }
//   hyper-util = { version = "0.1", features = ["client-legacy", "tokio", "http1"] }
//   http-body-util = "0.1"
//   rusty-s3 = { version = "0.11", optional = true }
//   url = { version = "2", optional = true }
//   jiff = { version = "0.2", optional = true }
//   object_store = { version = "0.14", default-features = false, features = ["aws"], optional = true }
//   aws-sdk-s3 = { version = "1", optional = true }
//
//   [profile.release]
//   debug = false
//
// then: CARGO_TARGET_DIR=/work/target-s3bench/<feature> cargo build --release --features <feature>
// (one of rusty, objstore, awssdk per target dir), and run run.sh. See README.md.

//! S3 client benchmark for Berth's choice of S3 crate (docs/performance.md, "S3 client measurement").
//!
//! One client per run, chosen by a cargo feature (rusty = rusty-s3 + hyper-util, objstore =
//! object_store, awssdk = aws-sdk-s3):
//!
//!   s3bench upload VARIANT PART_MIB INFLIGHT   multipart upload of 1 GiB from memory in fixed parts,
//!                                              INFLIGHT parts at a time; ListParts (where the crate
//!                                              has it); Complete; a ranged GET; a presigned GET (where
//!                                              the crate presigns) with a Range header; delete.
//!                                              Prints one tab-separated result line.
//!   s3bench features VARIANT                   one part streamed from a body of 1 MiB frames,
//!                                              ListMultipartUploads, AbortMultipartUpload.
//!
//! Environment: S3_ENDPOINT, S3_ACCESS_KEY, S3_SECRET_KEY, S3_BUCKET, S3_REGION (scripts/lib/seaweedfs.sh),
//! WEED_PID (optional: the server's CPU time is read from /proc for the same interval).
//! CPU seconds are the client process's own (getrusage, user + system) over create → complete.

use std::env;
use std::time::{Duration, Instant};

use bytes::Bytes;

const GIB: usize = 1 << 30;
const MIB: usize = 1 << 20;

struct Cfg {
    endpoint: String,
    key: String,
    secret: String,
    bucket: String,
    region: String,
}

impl Cfg {
    fn from_env() -> Self {
        let v = |k: &str| env::var(k).unwrap_or_else(|_| panic!("{k} not set"));
        Cfg {
            endpoint: v("S3_ENDPOINT"),
            key: v("S3_ACCESS_KEY"),
            secret: v("S3_SECRET_KEY"),
            bucket: v("S3_BUCKET"),
            region: v("S3_REGION"),
        }
    }
}

/// Results of one upload run, filled in by the client module.
#[derive(Default)]
struct Outcome {
    list_parts: &'static str,
    ranged_get: &'static str,
    presigned_get: &'static str,
}

fn cpu_self() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn cpu_of(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / ticks
}

/// 1 GiB of incompressible bytes (xorshift), made before any timing starts.
fn data() -> Bytes {
    let mut v = vec![0u8; GIB];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for chunk in v.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    Bytes::from(v)
}

/// A body of 1 MiB frames for the streaming check, produced as it is read.
fn frames(part: Bytes) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let n = part.len().div_ceil(MIB);
    futures::stream::iter((0..n).map(move |i| Ok(part.slice(i * MIB..((i + 1) * MIB).min(part.len())))))
}

fn ranged_ok(got: &[u8], data: &Bytes, lo: usize, len: usize) -> &'static str {
    if got == &data[lo..lo + len] { "yes" } else { "WRONG" }
}

#[cfg(feature = "rusty")]
mod client {
    //! rusty-s3 signs (always presigned URLs, UNSIGNED-PAYLOAD); hyper-util's client sends.
    use super::*;
    use futures::{StreamExt, TryStreamExt};
    use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
    use hyper::body::Frame;
    use hyper_util::client::legacy::{Client, connect::HttpConnector};
    use hyper_util::rt::TokioExecutor;
    use rusty_s3::actions::{CreateMultipartUpload, ListParts};
    use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

    type Body = BoxBody<Bytes, std::io::Error>;
    const EXP: Duration = Duration::from_secs(3600);

    pub struct S3 {
        http: Client<HttpConnector, Body>,
        bucket: Bucket,
        creds: Credentials,
        cfg: Cfg,
    }

    fn full(b: Bytes) -> Body {
        Full::new(b).map_err(|never| match never {}).boxed()
    }

    impl S3 {
        pub fn new(cfg: Cfg, _variant: &str) -> Self {
            let bucket = Bucket::new(
                cfg.endpoint.parse().unwrap(),
                UrlStyle::Path,
                cfg.bucket.clone(),
                cfg.region.clone(),
            )
            .unwrap();
            let creds = Credentials::new(cfg.key.clone(), cfg.secret.clone());
            let http = Client::builder(TokioExecutor::new()).build_http();
            S3 {
                http,
                bucket,
                creds,
                cfg,
            }
        }

        async fn send(
            &self,
            method: &str,
            url: &url::Url,
            headers: &[(&str, String)],
            body: Body,
        ) -> (hyper::http::response::Parts, Bytes) {
            let mut req = hyper::Request::builder().method(method).uri(url.as_str());
            for (k, v) in headers {
                req = req.header(*k, v);
            }
            let resp = self.http.request(req.body(body).unwrap()).await.expect("request");
            let (parts, body) = resp.into_parts();
            let bytes = body.collect().await.expect("body").to_bytes();
            assert!(
                parts.status.is_success(),
                "{method} {url}: {} {}",
                parts.status,
                String::from_utf8_lossy(&bytes)
            );
            (parts, bytes)
        }

        async fn create(&self, key: &str) -> String {
            let url = self.bucket.create_multipart_upload(Some(&self.creds), key).sign(EXP);
            let (_, body) = self.send("POST", &url, &[], full(Bytes::new())).await;
            CreateMultipartUpload::parse_response(std::str::from_utf8(&body).unwrap())
                .unwrap()
                .upload_id()
                .to_owned()
        }

        async fn part(&self, key: &str, id: &str, n: u16, body: Body, len: usize) -> String {
            let url = self.bucket.upload_part(Some(&self.creds), key, n, id).sign(EXP);
            let (parts, _) = self
                .send("PUT", &url, &[("content-length", len.to_string())], body)
                .await;
            parts.headers["etag"].to_str().unwrap().to_owned()
        }

        pub async fn upload(&self, key: &str, data: &Bytes, part: usize, inflight: usize) -> (Vec<String>, String) {
            let id = self.create(key).await;
            let etags: Vec<String> = futures::stream::iter((0..data.len() / part).map(|i| {
                let id = &id;
                async move {
                    self.part(
                        key,
                        id,
                        (i + 1) as u16,
                        full(data.slice(i * part..(i + 1) * part)),
                        part,
                    )
                    .await
                }
            }))
            .buffered(inflight)
            .collect()
            .await;
            (etags, id)
        }

        pub async fn list_parts(&self, key: &str, id: &str, etags: &[String]) -> &'static str {
            let url = self.bucket.list_parts(Some(&self.creds), key, id).sign(EXP);
            let (_, body) = self.send("GET", &url, &[], full(Bytes::new())).await;
            let listed = ListParts::parse_response(std::str::from_utf8(&body).unwrap()).unwrap();
            let got: Vec<&str> = listed.parts.iter().map(|p| p.etag.as_str()).collect();
            if got == etags.iter().map(String::as_str).collect::<Vec<_>>() {
                "yes"
            } else {
                "WRONG"
            }
        }

        pub async fn complete(&self, key: &str, id: &str, etags: &[String]) {
            let action =
                self.bucket
                    .complete_multipart_upload(Some(&self.creds), key, id, etags.iter().map(String::as_str));
            let url = action.sign(EXP);
            self.send("POST", &url, &[], full(Bytes::from(action.body()))).await;
        }

        pub async fn range(&self, key: &str, lo: usize, len: usize) -> Bytes {
            let url = self.bucket.get_object(Some(&self.creds), key).sign(EXP);
            self.send(
                "GET",
                &url,
                &[("range", format!("bytes={lo}-{}", lo + len - 1))],
                full(Bytes::new()),
            )
            .await
            .1
        }

        pub async fn presigned(&self, key: &str) -> Option<String> {
            Some(self.bucket.get_object(Some(&self.creds), key).sign(EXP).to_string())
        }

        pub async fn delete(&self, key: &str) {
            let url = self.bucket.delete_object(Some(&self.creds), key).sign(EXP);
            self.send("DELETE", &url, &[], full(Bytes::new())).await;
        }

        pub async fn features(&self, key: &str, part: Bytes) -> Vec<(&'static str, String)> {
            let id = self.create(key).await;
            let len = part.len();
            let body = BodyExt::boxed(StreamBody::new(frames(part).map_ok(Frame::data)));
            let etag = self.part(key, &id, 1, body, len).await;
            // No ListMultipartUploads action: presign it with rusty_s3::signing::sign, parse the XML here.
            let url = rusty_s3::signing::sign(
                &jiff::Timestamp::now(),
                rusty_s3::Method::Get,
                self.bucket.base_url().clone(),
                &self.cfg.key,
                &self.cfg.secret,
                None,
                &self.cfg.region,
                3600,
                [("uploads", "")].into_iter(),
                std::iter::empty(),
            );
            let (_, body) = self.send("GET", &url, &[], full(Bytes::new())).await;
            let listed = String::from_utf8_lossy(&body).contains(&format!("<UploadId>{id}</UploadId>"));
            let url = self
                .bucket
                .abort_multipart_upload(Some(&self.creds), key, &id)
                .sign(EXP);
            self.send("DELETE", &url, &[], full(Bytes::new())).await;
            vec![
                ("streamed_part", format!("yes (etag {etag})")),
                ("list_uploads", format!("by hand (signing::sign): found={listed}")),
                ("abort", "yes".into()),
            ]
        }
    }
}

#[cfg(feature = "objstore")]
mod client {
    //! object_store's MultipartStore (part_idx chosen by the caller), its own reqwest client.
    use super::*;
    use futures::StreamExt;
    use object_store::aws::{AmazonS3, AmazonS3Builder};
    use object_store::multipart::{MultipartStore, PartId};
    use object_store::path::Path;
    use object_store::signer::Signer;
    use object_store::{ObjectStoreExt, PutPayload};

    pub struct S3 {
        s: AmazonS3,
    }

    impl S3 {
        /// VARIANT "default": signed payload (SHA-256 of every part); "unsigned": with_unsigned_payload(true).
        pub fn new(cfg: Cfg, variant: &str) -> Self {
            let s = AmazonS3Builder::new()
                .with_endpoint(&cfg.endpoint)
                .with_allow_http(true)
                .with_virtual_hosted_style_request(false)
                .with_bucket_name(&cfg.bucket)
                .with_region(&cfg.region)
                .with_access_key_id(&cfg.key)
                .with_secret_access_key(&cfg.secret)
                .with_unsigned_payload(variant == "unsigned")
                .build()
                .unwrap();
            S3 { s }
        }

        pub async fn upload(&self, key: &str, data: &Bytes, part: usize, inflight: usize) -> (Vec<PartId>, String) {
            let path = Path::from(key);
            let id = self.s.create_multipart(&path).await.unwrap();
            let parts: Vec<PartId> = futures::stream::iter((0..data.len() / part).map(|i| {
                let (path, id) = (&path, &id);
                async move {
                    self.s
                        .put_part(path, id, i, PutPayload::from(data.slice(i * part..(i + 1) * part)))
                        .await
                        .unwrap()
                }
            }))
            .buffered(inflight)
            .collect()
            .await;
            (parts, id)
        }

        pub async fn list_parts(&self, _key: &str, _id: &str, _parts: &[PartId]) -> &'static str {
            "no API"
        }

        pub async fn complete(&self, key: &str, id: &str, parts: &[PartId]) {
            self.s
                .complete_multipart(&Path::from(key), &id.to_owned(), parts.to_vec())
                .await
                .unwrap();
        }

        pub async fn range(&self, key: &str, lo: usize, len: usize) -> Bytes {
            self.s
                .get_range(&Path::from(key), lo as u64..(lo + len) as u64)
                .await
                .unwrap()
        }

        pub async fn presigned(&self, key: &str) -> Option<String> {
            let url = self
                .s
                .signed_url(http::Method::GET, &Path::from(key), Duration::from_secs(3600))
                .await
                .unwrap();
            Some(url.to_string())
        }

        pub async fn delete(&self, key: &str) {
            self.s.delete(&Path::from(key)).await.unwrap();
        }

        pub async fn features(&self, key: &str, part: Bytes) -> Vec<(&'static str, String)> {
            let path = Path::from(key);
            let id = self.s.create_multipart(&path).await.unwrap();
            // PutPayload is a list of in-memory Bytes: the part must be whole in memory (its chunks are not copied).
            let chunks: Vec<Bytes> = (0..part.len().div_ceil(MIB))
                .map(|i| part.slice(i * MIB..((i + 1) * MIB).min(part.len())))
                .collect();
            let etag = self
                .s
                .put_part(&path, &id, 0, chunks.into_iter().collect::<PutPayload>())
                .await
                .unwrap();
            self.s.abort_multipart(&path, &id).await.unwrap();
            vec![
                (
                    "streamed_part",
                    format!("no: PutPayload = in-memory Bytes chunks (sent: {})", etag.content_id),
                ),
                ("list_uploads", "no API".into()),
                ("abort", "yes".into()),
            ]
        }
    }
}

#[cfg(feature = "awssdk")]
mod client {
    //! aws-sdk-s3 with its default HTTP client; credentials given directly (no aws-config).
    use super::*;
    use aws_sdk_s3::Client;
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, RequestChecksumCalculation};
    use aws_sdk_s3::presigning::PresigningConfig;
    use aws_sdk_s3::primitives::ByteStream;
    use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
    use futures::{StreamExt, TryStreamExt};
    use http_body_util::StreamBody;
    use hyper::body::Frame;

    pub struct S3 {
        c: Client,
        bucket: String,
        lean: bool,
    }

    impl S3 {
        /// VARIANT "default": the SDK's defaults (CRC32 checksum of every part, signed payload);
        /// "lean": checksums only when required, payload signing disabled per UploadPart.
        pub fn new(cfg: Cfg, variant: &str) -> Self {
            let lean = variant == "lean";
            let mut b = aws_sdk_s3::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .endpoint_url(&cfg.endpoint)
                .region(Region::new(cfg.region.clone()))
                .credentials_provider(Credentials::new(&cfg.key, &cfg.secret, None, None, "bench"))
                .force_path_style(true);
            if lean {
                b = b.request_checksum_calculation(RequestChecksumCalculation::WhenRequired);
            }
            S3 {
                c: Client::from_conf(b.build()),
                bucket: cfg.bucket,
                lean,
            }
        }

        async fn part(&self, key: &str, id: &str, n: i32, body: ByteStream, len: usize) -> String {
            let req = self
                .c
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(id)
                .part_number(n)
                .content_length(len as i64)
                .body(body);
            let out = if self.lean {
                req.customize().disable_payload_signing().send().await
            } else {
                req.send().await
            };
            out.unwrap_or_else(|e| panic!("upload_part: {e:?}"))
                .e_tag()
                .unwrap()
                .to_owned()
        }

        pub async fn upload(&self, key: &str, data: &Bytes, part: usize, inflight: usize) -> (Vec<String>, String) {
            let out = self
                .c
                .create_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
                .unwrap();
            let id = out.upload_id().unwrap().to_owned();
            let etags = futures::stream::iter((0..data.len() / part).map(|i| {
                let id = &id;
                async move {
                    self.part(
                        key,
                        id,
                        (i + 1) as i32,
                        ByteStream::from(data.slice(i * part..(i + 1) * part)),
                        part,
                    )
                    .await
                }
            }))
            .buffered(inflight)
            .collect()
            .await;
            (etags, id)
        }

        pub async fn list_parts(&self, key: &str, id: &str, etags: &[String]) -> &'static str {
            let out = self
                .c
                .list_parts()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(id)
                .send()
                .await
                .unwrap();
            let got: Vec<&str> = out.parts().iter().map(|p| p.e_tag().unwrap()).collect();
            if got == etags.iter().map(String::as_str).collect::<Vec<_>>() {
                "yes"
            } else {
                "WRONG"
            }
        }

        pub async fn complete(&self, key: &str, id: &str, etags: &[String]) {
            let parts = etags
                .iter()
                .enumerate()
                .map(|(i, e)| CompletedPart::builder().part_number(i as i32 + 1).e_tag(e).build())
                .collect();
            self.c
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                .send()
                .await
                .unwrap();
        }

        pub async fn range(&self, key: &str, lo: usize, len: usize) -> Bytes {
            let out = self
                .c
                .get_object()
                .bucket(&self.bucket)
                .key(key)
                .range(format!("bytes={lo}-{}", lo + len - 1))
                .send()
                .await
                .unwrap();
            out.body.collect().await.unwrap().into_bytes()
        }

        pub async fn presigned(&self, key: &str) -> Option<String> {
            let p = self
                .c
                .get_object()
                .bucket(&self.bucket)
                .key(key)
                .presigned(PresigningConfig::expires_in(Duration::from_secs(3600)).unwrap())
                .await
                .unwrap();
            Some(p.uri().to_owned())
        }

        pub async fn delete(&self, key: &str) {
            self.c
                .delete_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
                .unwrap();
        }

        pub async fn features(&self, key: &str, part: Bytes) -> Vec<(&'static str, String)> {
            let out = self
                .c
                .create_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
                .unwrap();
            let id = out.upload_id().unwrap().to_owned();
            let len = part.len();
            let body = ByteStream::from_body_1_x(StreamBody::new(frames(part).map_ok(Frame::data)));
            let streamed = {
                let req = self
                    .c
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(&id)
                    .part_number(1)
                    .content_length(len as i64)
                    .body(body);
                let r = if self.lean {
                    req.customize().disable_payload_signing().send().await
                } else {
                    req.send().await
                };
                match r {
                    Ok(o) => format!("yes (etag {})", o.e_tag().unwrap_or("?")),
                    Err(e) => format!("FAILED: {e:?}").chars().take(300).collect(),
                }
            };
            let ups = self
                .c
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .send()
                .await
                .unwrap();
            let listed = ups.uploads().iter().any(|u| u.upload_id() == Some(id.as_str()));
            self.c
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&id)
                .send()
                .await
                .unwrap();
            vec![
                ("streamed_part", streamed),
                ("list_uploads", format!("yes: found={listed}")),
                ("abort", "yes".into()),
            ]
        }
    }
}

/// A plain GET of a presigned URL with a Range header, through a bare hyper connection.
async fn fetch_presigned(url: &str, lo: usize, len: usize) -> Bytes {
    use http_body_util::BodyExt;
    let uri: hyper::Uri = url.parse().unwrap();
    let addr = format!("{}:{}", uri.host().unwrap(), uri.port_u16().unwrap_or(80));
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get(uri.clone())
        .header("host", uri.authority().unwrap().as_str())
        .header("range", format!("bytes={lo}-{}", lo + len - 1))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert!(resp.status().is_success(), "presigned GET: {}", resp.status());
    resp.into_body().collect().await.unwrap().to_bytes()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = env::args().collect();
    let name = if cfg!(feature = "rusty") {
        "rusty-s3"
    } else if cfg!(feature = "objstore") {
        "object_store"
    } else if cfg!(feature = "awssdk") {
        "aws-sdk-s3"
    } else {
        panic!("build with one of the features rusty, objstore, awssdk")
    };
    let variant = args.get(2).cloned().unwrap_or_else(|| "default".into());
    let s3 = client::S3::new(Cfg::from_env(), &variant);
    let key = format!("bench/{name}-{}-{}", std::process::id(), args[1]);
    match args[1].as_str() {
        "features" => {
            let part = data().slice(0..16 * MIB);
            for (k, v) in s3.features(&key, part).await {
                println!("{name}\t{variant}\t{k}\t{v}");
            }
        }
        "upload" => {
            let part: usize = args[3].parse::<usize>().unwrap() * MIB;
            let inflight: usize = args[4].parse().unwrap();
            let data = data();
            let weed = env::var("WEED_PID").ok();
            let (c0, w0, t0) = (cpu_self(), weed.as_deref().map(cpu_of), Instant::now());
            let (parts, id) = s3.upload(&key, &data, part, inflight).await;
            let mut out = Outcome {
                list_parts: s3.list_parts(&key, &id, &parts).await,
                ..Default::default()
            };
            s3.complete(&key, &id, &parts).await;
            let secs = t0.elapsed().as_secs_f64();
            let cpu = cpu_self() - c0;
            let wcpu = weed
                .as_deref()
                .map(cpu_of)
                .zip(w0)
                .map(|(a, b)| a - b)
                .unwrap_or(f64::NAN);
            let (lo, len) = (700 * MIB + 12345, MIB);
            out.ranged_get = ranged_ok(&s3.range(&key, lo, len).await, &data, lo, len);
            out.presigned_get = match s3.presigned(&key).await {
                Some(url) => ranged_ok(&fetch_presigned(&url, lo, len).await, &data, lo, len),
                None => "no API",
            };
            s3.delete(&key).await;
            let gb = data.len() as f64 / 1e9;
            println!(
                "{name}\t{variant}\t{}\t{inflight}\t{secs:.2}\t{:.0}\t{cpu:.2}\t{:.2}\t{wcpu:.2}\t{}\t{}\t{}",
                part / MIB,
                gb * 1e3 / secs,
                cpu / gb,
                out.list_parts,
                out.ranged_get,
                out.presigned_get
            );
        }
        other => panic!("unknown mode {other}"),
    }
}
