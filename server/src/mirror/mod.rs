//! Pull-through cache (mirror mode): repositories under a configured prefix are the upstream
//! registry's, fetched on first pull and served from local storage after.
//!
//! [`Mirrors`] routes a local repository name to its upstream ([`Mirrors::target`]) and answers
//! the reads a mirror must treat differently from a local registry: a manifest by tag (served
//! from the cache within the tag's TTL; after it served at once and refreshed in the background,
//! and kept when the upstream fails), a manifest by digest, and a blob that is not stored
//! (linked from another repository when the upstream confirms it, otherwise fetched by one
//! coalesced [`fill`] that every request for it reads from). `upstream` is the HTTP client of
//! the upstream registry; `tags` the freshness of mirrored tags.

pub mod evict;
pub mod fill;
pub mod peer;
pub mod report;
pub mod tags;
pub mod upstream;
mod upstream_auth;
mod upstream_http;
mod upstream_tls;

use std::path::PathBuf;
use std::sync::Arc;

use futures_util::StreamExt as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use berth_engine::meta::StoredManifest;
use berth_engine::{Digest, Engine, Error as EngineError, FillClaim, Reference, RepoName, Tag};

use crate::config::MirrorConfig;
use crate::error::ApiError;
use fill::{Fill, FillFailure, Fills, Job, Joined};
use peer::{Holder, Peers};
use tags::Tags;
use upstream::{Upstream, UpstreamError, UpstreamSettings};

/// Counters of one upstream, for `/metrics`.
#[derive(Default)]
pub struct Stats {
    /// Manifests and blobs served from what is stored.
    pub hits: AtomicU64,
    /// Manifests and blobs fetched from the upstream for a client.
    pub misses: AtomicU64,
    /// Requests fed from a fill another request started (in this process or another one).
    pub coalesced: AtomicU64,
    /// Requests fed from another process's download, streamed from it (`http.peerurl`).
    pub from_peers: AtomicU64,
    /// Blobs linked from another repository after the upstream confirmed them (no download).
    pub linked: AtomicU64,
    /// Tags served past their TTL while the upstream was asked in the background.
    pub stale: AtomicU64,
    /// Tags served from the cache because the upstream failed (stale-if-error).
    pub stale_errors: AtomicU64,
    /// Tags the upstream moved to another manifest, found by a refresh.
    pub tag_updates: AtomicU64,
    /// Fills that did not store their blob (upstream failures included).
    pub fill_errors: AtomicU64,
    /// Fills whose bytes did not match the digest.
    pub mismatches: AtomicU64,
    /// Bytes of blobs stored by fills.
    pub filled_bytes: AtomicU64,
    /// Interrupted downloads resumed with a Range request.
    pub resumed: AtomicU64,
    /// Images evicted to keep within the budget.
    pub evicted_images: AtomicU64,
    /// Bytes of the blob links those evictions removed.
    pub evicted_bytes: AtomicU64,
}

/// One upstream and what it serves.
pub struct Entry {
    /// Its settings.
    pub config: MirrorConfig,
    /// Its client.
    pub upstream: Arc<Upstream>,
    /// Its counters.
    pub stats: Arc<Stats>,
    /// Its `repositories` allow-list, compiled (the access rules' patterns: `*` within one path
    /// segment, `**` across segments).
    repositories: Vec<berth_auth::Pattern>,
}

/// Where a local repository comes from.
pub struct Target<'a> {
    /// The upstream.
    pub entry: &'a Entry,
    /// The repository's name there.
    pub upstream_repo: String,
}

/// A blob of a mirrored repository that is not in it yet.
pub enum Missing {
    /// Now linked into the repository (it was stored for another one): serve it as usual.
    Linked,
    /// Being fetched: serve it from the fill.
    Filling(Arc<Fill>, u64),
    /// The upstream has it with this size (for HEAD, which fetches nothing).
    Upstream(u64),
    /// Being fetched by another process: the whole blob as it streams from there, and its size.
    Peer(upstream::BlobBody, u64),
}

/// Every configured upstream.
pub struct Mirrors {
    /// This process, as the owner of download claims.
    id: String,
    /// Where the other processes reach this one (`http.peerurl`).
    peer_url: Option<String>,
    /// The client of the other processes.
    peers: Peers,
    entries: Vec<Entry>,
    fills: Arc<Fills>,
    tags: Arc<Tags>,
    pulls: Arc<evict::Pulls>,
}

impl Mirrors {
    /// The upstreams of `configs`; fills spool into `spool`. Other processes reach this one's
    /// downloads at `peer_url`; `own_certificate` is the listener's (trusted for `https` peers).
    /// The error names the upstream.
    pub fn new(
        configs: &[MirrorConfig],
        spool: PathBuf,
        peer_url: Option<String>,
        own_certificate: Option<PathBuf>,
    ) -> Result<Mirrors, String> {
        std::fs::create_dir_all(&spool).map_err(|e| format!("creating {}: {e}", spool.display()))?;
        let mut entries = Vec::new();
        for c in configs {
            let upstream = Upstream::new(UpstreamSettings {
                name: c.name.clone(),
                url: c.url.clone(),
                username: c.username.clone(),
                password: c.password.clone(),
                ca_file: c.ca_file.clone(),
                insecure: c.insecure,
                timeout: c.timeout,
            })
            .map_err(|e| format!("mirror {:?} ({}): {e}", c.name, c.url))?;
            entries.push(Entry {
                config: c.clone(),
                upstream: Arc::new(upstream),
                stats: Arc::default(),
                repositories: c.repositories.iter().map(|p| berth_auth::Pattern::new(p)).collect(),
            });
        }
        // Longest prefix first, so that the first match is the most specific one.
        entries.sort_by_key(|e| std::cmp::Reverse(e.config.prefix.len()));
        let nonce: u64 = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Ok(Mirrors {
            id: format!("pid-{}-{nonce:x}", std::process::id()),
            peer_url,
            peers: Peers::new(own_certificate, PEER_TIMEOUT)?,
            entries,
            fills: Arc::new(Fills::new(spool)),
            tags: Arc::default(),
            pulls: Arc::default(),
        })
    }

    /// The upstreams.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Blob fills in progress.
    pub fn fills_in_progress(&self) -> usize {
        self.fills.len()
    }

    /// This process's download of `digest` in progress, for another process presenting its
    /// token (see [`peer`]).
    pub fn fill_for_peer(&self, digest: &Digest, token: &str) -> Option<Arc<Fill>> {
        self.fills.get(digest).filter(|f| f.admits(token))
    }

    /// The local name of `repo` in a request whose `ns` query parameter (containerd's mirror
    /// requests) is `ns`: `<prefix>/<repo>` of the upstream serving that host, when one does.
    pub fn local_name(&self, repo: &RepoName, ns: &str) -> Option<RepoName> {
        let ns = ns.to_ascii_lowercase();
        let e = self.entries.iter().find(|e| e.config.hosts.contains(&ns))?;
        if e.config.prefix.is_empty() {
            return Some(repo.clone());
        }
        format!("{}/{repo}", e.config.prefix).parse().ok()
    }

    /// The upstream a local repository comes from, when it is mirrored and its upstream name is
    /// allowed.
    pub fn target(&self, repo: &RepoName) -> Option<Target<'_>> {
        let e = self.owner(repo)?;
        let name = repo.as_str();
        let upstream_repo = if e.config.prefix.is_empty() {
            name
        } else {
            &name[e.config.prefix.len() + 1..]
        };
        let allowed = e.repositories.is_empty() || e.repositories.iter().any(|p| p.matches(upstream_repo, None));
        allowed.then(|| Target {
            entry: e,
            upstream_repo: upstream_repo.to_owned(),
        })
    }

    /// The upstream whose namespace `repo` is in (its longest prefix; the allow-list aside).
    pub fn owner(&self, repo: &RepoName) -> Option<&Entry> {
        let name = repo.as_str();
        self.entries.iter().find(|e| {
            e.config.prefix.is_empty()
                || name
                    .strip_prefix(e.config.prefix.as_str())
                    .is_some_and(|r| r.starts_with('/'))
        })
    }

    /// The upstream whose namespace `repo` is in, when that namespace refuses pushes.
    pub fn refuses_writes(&self, repo: &RepoName) -> Option<&Entry> {
        self.owner(repo).filter(|e| !e.config.push)
    }

    /// A manifest of a mirrored repository.
    pub async fn manifest(
        &self,
        engine: &Arc<Engine>,
        t: &Target<'_>,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Arc<StoredManifest>, ApiError> {
        let stats = &t.entry.stats;
        let cached = match engine.manifest_get(repo, reference).await {
            Ok(m) => Some(m),
            Err(EngineError::ManifestUnknown(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let m = match (reference, cached) {
            (Reference::Digest(_), Some(m)) => {
                stats.hits.fetch_add(1, Relaxed);
                m
            }
            (Reference::Tag(tag), Some(m)) => {
                if self.tags.fresh(repo, tag, t.entry.config.tag_ttl) {
                    stats.hits.fetch_add(1, Relaxed);
                } else {
                    stats.stale.fetch_add(1, Relaxed);
                    self.refresh_in_background(engine, t, repo, tag, &m.digest);
                }
                m
            }
            (_, None) => {
                stats.misses.fetch_add(1, Relaxed);
                let m = fetch_manifest(engine, t.entry, &t.upstream_repo, repo, reference).await?;
                if let Reference::Tag(tag) = reference {
                    self.tags.confirmed(repo, tag);
                }
                self.pulls.stored();
                m
            }
        };
        self.pulls.note(repo, &m.digest);
        Ok(m)
    }

    /// Ask the upstream (one HEAD) whether a tag served past its TTL still names `digest`, and
    /// fetch the manifest it names now when it moved; at most one refresh per tag at a time.
    fn refresh_in_background(&self, engine: &Arc<Engine>, t: &Target<'_>, repo: &RepoName, tag: &Tag, digest: &Digest) {
        let Some(claim) = self.tags.claim(repo, tag) else {
            return;
        };
        let (engine, tags, upstream, stats) = (
            engine.clone(),
            self.tags.clone(),
            t.entry.upstream.clone(),
            t.entry.stats.clone(),
        );
        let (up_repo, repo, tag, digest) = (t.upstream_repo.clone(), repo.clone(), tag.clone(), digest.clone());
        tokio::spawn(async move {
            let _claim = claim;
            let refreshed = async {
                let now = upstream
                    .manifest(&up_repo, tag.as_str(), true)
                    .await
                    .map_err(|e| e.to_string())?
                    .digest;
                if now.as_deref() == Some(digest.to_string().as_str()) {
                    return Ok(None);
                }
                // Moved (or the upstream gave no digest on HEAD): fetch what the tag names now.
                let m = upstream
                    .manifest(&up_repo, tag.as_str(), false)
                    .await
                    .map_err(|e| e.to_string())?;
                store_manifest(&engine, upstream.name(), &repo, &Reference::Tag(tag.clone()), m)
                    .await
                    .map(|stored| Some(stored.digest))
                    .map_err(|e| {
                        format!(
                            "storing the refreshed manifest failed: {}",
                            e.message.unwrap_or_default()
                        )
                    })
            };
            match refreshed.await {
                Ok(moved) => {
                    if let Some(to) = moved.filter(|to| *to != digest) {
                        stats.tag_updates.fetch_add(1, Relaxed);
                        tracing::info!(upstream = upstream.name(), repo = %repo, tag = %tag, from = %digest, to = %to, "mirrored tag moved upstream");
                    }
                    tags.confirmed(&repo, &tag);
                }
                Err(e) => {
                    // Stale-if-error: the cached image stays; the next pull asks again.
                    stats.stale_errors.fetch_add(1, Relaxed);
                    tracing::warn!(upstream = upstream.name(), repo = %repo, tag = %tag, error = %e, "refreshing a mirrored tag failed; serving the cached manifest");
                }
            }
        });
    }

    /// A blob of a mirrored repository that the repository does not link: linked from another
    /// repository when it is stored and the upstream confirms it is in this one, or fetched.
    /// `head` only asks the upstream for its size.
    pub async fn missing_blob(
        &self,
        engine: &Arc<Engine>,
        t: &Target<'_>,
        repo: &RepoName,
        digest: &Digest,
        owner: &str,
        head: bool,
    ) -> Result<Missing, ApiError> {
        let stats = &t.entry.stats;
        // The blob's size upstream, once the upstream confirmed that this repository has it
        // (asked once per request): a blob stored, or a download started, for another
        // repository is no evidence that this one may read it.
        let mut confirmed = None;
        if (head || engine.blob_stored(digest).await?.is_some())
            && let Some(m) = link_stored(engine, t, repo, digest, head, &mut confirmed).await?
        {
            return Ok(m);
        }
        // A download this process runs already: read it (no database write).
        if let Some(m) = self.join_local(t, repo, digest, &mut confirmed).await? {
            return Ok(m);
        }
        // One download per blob among every process sharing the metadata: when another one
        // holds the claim, stream its download from it, or wait for the blob it stores.
        let token = peer::new_token();
        let claim = peer::owner_text(&self.id, &token, self.peer_url.as_deref());
        let (started, mut unreachable) = (Instant::now(), None::<String>);
        while let FillClaim::Held(holder) = engine.claim_fill(digest, &claim, FILL_LEASE).await? {
            if engine.blob_stored(digest).await?.is_some()
                && let Some(m) = link_stored(engine, t, repo, digest, false, &mut confirmed).await?
            {
                stats.coalesced.fetch_add(1, Relaxed);
                return Ok(m);
            }
            if let Some(m) = self.join_local(t, repo, digest, &mut confirmed).await? {
                return Ok(m);
            }
            // A holder that could not serve the blob is not asked again for this request.
            if let Some(h) = peer::parse_holder(&holder)
                .filter(|h| h.process != self.id && h.url.is_some() && unreachable.as_ref() != Some(&h.token))
            {
                match self
                    .stream_from_peer(engine, t, repo, digest, &h, &mut confirmed)
                    .await?
                {
                    Some(m) => return Ok(m),
                    None => unreachable = Some(h.token),
                }
            }
            if started.elapsed() > t.entry.config.timeout.max(FILL_LEASE) * 10 {
                return Err(crate::error::upstream(&UpstreamError::Unavailable {
                    reason: format!("another registry process has been fetching {digest} for too long"),
                    retry_after: None,
                }));
            }
            tokio::time::sleep(ELSEWHERE_POLL).await;
        }
        // Claimed: given up again on every way out but the download (an error, the client
        // gone), so that other requests do not wait for the lease to expire.
        let claim = ClaimGuard {
            engine: engine.clone(),
            digest: digest.clone(),
            owner: Some(claim),
        };
        // Perhaps another process stored it just before it let go.
        if engine.blob_stored(digest).await?.is_some()
            && let Some(m) = link_stored(engine, t, repo, digest, false, &mut confirmed).await?
        {
            return Ok(m);
        }
        let upstream = &t.entry.upstream;
        let job = Job {
            upstream: upstream.clone(),
            upstream_repo: t.upstream_repo.clone(),
            local: repo.clone(),
            digest: digest.clone(),
            owner: owner.to_owned(),
            engine: engine.clone(),
            token,
        };
        let (done_stats, pulls) = (stats.clone(), self.pulls.clone());
        let name = upstream.name().to_owned();
        let fill = match self.fills.join_or_start(job, move |o| {
            if o.result.is_ok() {
                pulls.stored();
            }
            finished(&name, &done_stats, o)
        }) {
            Joined::Started(f) => {
                stats.misses.fetch_add(1, Relaxed);
                keep_claim(engine.clone(), f.clone(), digest.clone(), claim.hand_over());
                f
            }
            Joined::Coalesced(f) => {
                // Started here meanwhile (under a claim that had expired): that fill renews its
                // own, and the guard gives this one up.
                stats.coalesced.fetch_add(1, Relaxed);
                f
            }
        };
        from_fill(fill, digest).await
    }

    /// The download of `digest` this process runs, when there is one; for a download another
    /// repository started, once the upstream confirms that `repo` has the blob.
    async fn join_local(
        &self,
        t: &Target<'_>,
        repo: &RepoName,
        digest: &Digest,
        confirmed: &mut Option<u64>,
    ) -> Result<Option<Missing>, ApiError> {
        let Some(f) = self.fills.get(digest) else {
            return Ok(None);
        };
        if f.repo() != repo {
            confirm(t, digest, confirmed).await?;
        }
        t.entry.stats.coalesced.fetch_add(1, Relaxed);
        from_fill(f, digest).await.map(Some)
    }

    /// The blob streamed from the process downloading it, once the upstream confirms that this
    /// repository has it (`confirmed` remembers that across attempts). `None`: that process
    /// cannot serve it (it finished, or cannot be reached); the caller waits for the blob.
    async fn stream_from_peer(
        &self,
        engine: &Arc<Engine>,
        t: &Target<'_>,
        repo: &RepoName,
        digest: &Digest,
        holder: &Holder,
        confirmed: &mut Option<u64>,
    ) -> Result<Option<Missing>, ApiError> {
        let want = confirm(t, digest, confirmed).await?;
        match self.peers.fetch(holder, digest).await {
            Ok(Some((size, _))) if size != want => {
                tracing::warn!(digest = %digest, peer = holder.url.as_deref().unwrap_or("-"), size, upstream_size = want, "the replica downloading a blob gave another size than the upstream; waiting until it is stored");
                Ok(None)
            }
            Ok(Some((size, body))) => {
                let stats = &t.entry.stats;
                stats.coalesced.fetch_add(1, Relaxed);
                stats.from_peers.fetch_add(1, Relaxed);
                Ok(Some(Missing::Peer(
                    linked_when_done(body, size, engine.clone(), repo.clone(), digest.clone()),
                    size,
                )))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                tracing::warn!(digest = %digest, peer = holder.url.as_deref().unwrap_or("-"), error = %e, "streaming a blob from the replica downloading it failed; waiting until it is stored (check that replica's http.peerurl)");
                Ok(None)
            }
        }
    }
}

/// A request's view of a fill: its size once the upstream answered, or the client's error.
async fn from_fill(fill: Arc<Fill>, digest: &Digest) -> Result<Missing, ApiError> {
    match fill.size().await {
        Ok(size) => Ok(Missing::Filling(fill, size)),
        Err(FillFailure::Upstream(UpstreamError::NotFound)) => Err(EngineError::BlobUnknown(digest.clone()).into()),
        Err(FillFailure::Upstream(e)) => Err(crate::error::upstream(&e)),
        Err(FillFailure::Store(e)) => Err(crate::error::fill_store(&e)),
        Err(f @ FillFailure::Mismatch(_)) => Err(crate::error::upstream(&UpstreamError::Invalid(f.to_string()))),
    }
}

/// The size of `digest` upstream, once the upstream confirmed that the target's repository has
/// it (asked once per request: `confirmed` keeps the answer).
async fn confirm(t: &Target<'_>, digest: &Digest, confirmed: &mut Option<u64>) -> Result<u64, ApiError> {
    if let Some(size) = *confirmed {
        return Ok(size);
    }
    match t
        .entry
        .upstream
        .blob_exists(&t.upstream_repo, &digest.to_string())
        .await
    {
        Ok(Some(size)) => {
            *confirmed = Some(size);
            Ok(size)
        }
        Ok(None) => Err(EngineError::BlobUnknown(digest.clone()).into()),
        Err(e) => Err(crate::error::upstream(&e)),
    }
}

/// `body`, a blob of `size` bytes streamed from another process. Its last piece comes only once
/// that process has stored the blob; before it is passed on, the blob is linked into `repo`, so
/// that the next pull reads it here.
fn linked_when_done(
    body: upstream::BlobBody,
    size: u64,
    engine: Arc<Engine>,
    repo: RepoName,
    digest: Digest,
) -> upstream::BlobBody {
    Box::pin(futures_util::stream::unfold((body, 0u64), move |(mut body, seen)| {
        let (engine, repo, digest) = (engine.clone(), repo.clone(), digest.clone());
        async move {
            let piece = body.next().await?;
            let seen = seen + piece.as_ref().map_or(0, |b| b.len() as u64);
            if piece.is_ok()
                && seen == size
                && let Err(e) = engine.blob_mount(&repo, &digest, None).await
            {
                tracing::warn!(repo = %repo, digest = %digest, error = %e, "linking a blob streamed from another replica failed (the next pull links it)");
            }
            Some((piece, (body, seen)))
        }
    }))
}

/// A claim on a download, given up when dropped unless handed to [`keep_claim`].
struct ClaimGuard {
    engine: Arc<Engine>,
    digest: Digest,
    owner: Option<String>,
}

impl ClaimGuard {
    /// The claim's owner text, for the download that now renews and releases it.
    fn hand_over(mut self) -> String {
        self.owner.take().unwrap_or_default()
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if let Some(owner) = self.owner.take() {
            let (engine, digest) = (self.engine.clone(), self.digest.clone());
            tokio::spawn(async move {
                if let Err(e) = engine.release_fill(&digest, &owner).await {
                    tracing::warn!(digest = %digest, error = %e, "releasing the claim on a mirrored blob's download failed (it expires)");
                }
            });
        }
    }
}

/// Longest wait for another process's answer, and longest pause in the blob it streams.
const PEER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a claim on a download lasts unless renewed (a process that dies loses it then).
const FILL_LEASE: Duration = Duration::from_secs(30);
/// How often a process waiting for another one's download looks for the blob.
const ELSEWHERE_POLL: Duration = Duration::from_millis(100);

/// Renew this process's claim on a download while its fill runs; give it up when it ends.
fn keep_claim(engine: Arc<Engine>, fill: Arc<Fill>, digest: Digest, owner: String) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = fill.settled() => break,
                () = tokio::time::sleep(FILL_LEASE / 3) => {
                    if let Err(e) = engine.claim_fill(&digest, &owner, FILL_LEASE).await {
                        tracing::warn!(digest = %digest, error = %e, "renewing the claim on a mirrored blob's download failed");
                    }
                }
            }
        }
        if let Err(e) = engine.release_fill(&digest, &owner).await {
            tracing::warn!(digest = %digest, error = %e, "releasing the claim on a mirrored blob's download failed (it expires)");
        }
    });
}

/// A blob stored already (for this or another repository): linked into `repo` when the upstream
/// says the repository has it — a digest stored for some other repository is not evidence that
/// a client of this one may read it. With `head`, only the upstream's size. `None`: not
/// linkable after all (removed meanwhile). `confirmed` holds the upstream's answer ([`confirm`]).
async fn link_stored(
    engine: &Engine,
    t: &Target<'_>,
    repo: &RepoName,
    digest: &Digest,
    head: bool,
    confirmed: &mut Option<u64>,
) -> Result<Option<Missing>, ApiError> {
    let size = confirm(t, digest, confirmed).await?;
    if head {
        return Ok(Some(Missing::Upstream(size)));
    }
    if engine.blob_mount(repo, digest, None).await? {
        t.entry.stats.linked.fetch_add(1, Relaxed);
        return Ok(Some(Missing::Linked));
    }
    Ok(None)
}

/// Count and log how a fill ended.
fn finished(upstream: &str, stats: &Stats, o: fill::Outcome) {
    stats.resumed.fetch_add(u64::from(o.resumed), Relaxed);
    match &o.result {
        Ok(size) => {
            stats.filled_bytes.fetch_add(*size, Relaxed);
            tracing::info!(upstream, digest = %o.digest, bytes = size, received = o.received, resumed = o.resumed, "mirrored blob stored");
        }
        Err(f) => {
            stats.fill_errors.fetch_add(1, Relaxed);
            if matches!(f, FillFailure::Mismatch(_)) {
                stats.mismatches.fetch_add(1, Relaxed);
                tracing::error!(upstream, digest = %o.digest, error = %f, "an upstream sent wrong bytes for a blob; nothing was stored and its readers were cut off");
            } else if !matches!(f, FillFailure::Upstream(UpstreamError::NotFound)) {
                tracing::warn!(upstream, digest = %o.digest, error = %f, "fetching a mirrored blob failed");
            }
        }
    }
}

/// Fetch a manifest from the upstream and store it; by digest, the bytes must hash to it.
async fn fetch_manifest(
    engine: &Arc<Engine>,
    entry: &Entry,
    upstream_repo: &str,
    repo: &RepoName,
    reference: &Reference,
) -> Result<Arc<StoredManifest>, ApiError> {
    let upstream = &entry.upstream;
    let m = match upstream.manifest(upstream_repo, &reference.to_string(), false).await {
        Ok(m) => m,
        Err(UpstreamError::NotFound) => return Err(EngineError::ManifestUnknown(reference.to_string()).into()),
        Err(e) => return Err(crate::error::upstream(&e)),
    };
    store_manifest(engine, upstream.name(), repo, reference, m).await?;
    Ok(engine.manifest_get(repo, reference).await?)
}

/// Store what the upstream sent for `reference`. The digest it names (Docker-Content-Digest)
/// must be the bytes' digest; by digest, the reference must be too (the engine checks that).
async fn store_manifest(
    engine: &Arc<Engine>,
    upstream: &str,
    repo: &RepoName,
    reference: &Reference,
    m: upstream::UpstreamManifest,
) -> Result<berth_engine::PushedManifest, ApiError> {
    let stored = engine
        .manifest_put_cached(repo, reference, Some(&m.media_type), m.bytes)
        .await
        .map_err(|e| match e {
            EngineError::DigestMismatch { expected, actual } => crate::error::upstream(&UpstreamError::Invalid(
                format!("{upstream} sent a manifest for {expected} whose digest is {actual}"),
            )),
            other => other.into(),
        })?;
    if let Some(named) = m.digest.as_deref()
        && named.starts_with("sha256:")
        && named != stored.digest.to_string()
    {
        tracing::warn!(upstream, repo = %repo, reference = %reference, named, actual = %stored.digest, "the upstream's Docker-Content-Digest does not match the manifest it sent");
    }
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mirrors(repositories: &[&str]) -> Mirrors {
        let yaml =
            format!("mirrors: [{{name: hub, url: 'https://registry-1.docker.io', repositories: {repositories:?}}}]");
        let tree = crate::config::parse_yaml(&yaml).unwrap();
        let (c, _) = crate::config::from_tree(tree, None, &Default::default()).unwrap();
        Mirrors::new(
            &c.mirrors,
            std::env::temp_dir().join("berth-mirror-test-spool"),
            None,
            None,
        )
        .unwrap()
    }

    #[test]
    fn the_allow_list_takes_the_access_rules_patterns() {
        let m = mirrors(&["library/*", "team-*/app", "vendor/**"]);
        let ok = |n: &str| m.target(&format!("hub/{n}").parse().unwrap()).is_some();
        assert!(ok("library/alpine") && ok("team-x/app") && ok("vendor/a/b/c"));
        assert!(!ok("library/a/b") && !ok("team-x/y/app") && !ok("other/app"));
        let all = mirrors(&[]);
        assert!(all.target(&"hub/any/thing".parse().unwrap()).is_some());
        assert!(all.target(&"elsewhere/app".parse().unwrap()).is_none());
        assert_eq!(
            all.target(&"hub/any/thing".parse().unwrap()).unwrap().upstream_repo,
            "any/thing"
        );
    }
}
