//! The metadata store suite: what every [`MetaStore`] implementation must do, run against each
//! of them (today the embedded SQLite store; the shared database joins it). Each check is a
//! generic function over the store, so a new implementation gets the whole suite by adding one
//! line per check to its module below.

mod support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use berth_engine::change::Change;
use berth_engine::meta::Meta;
use berth_engine::meta::SqliteStore;
use berth_engine::store::{BlobLink, Feed, ManifestRecord, Outcome, Placement, Removal, StagedBlob};
use berth_engine::{Algorithm, Descriptor, Digest, Error, FillClaim, MetaStore, Reference, RepoName, Sweep, Tag};

fn repo(s: &str) -> RepoName {
    s.parse().unwrap()
}

fn tag(s: &str) -> Tag {
    s.parse().unwrap()
}

const INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// An image index with no children: a manifest that needs no blobs, so the suite can record
/// manifests through the interface alone. `salt` makes each one distinct.
fn record(r: &str, salt: &str, tag_name: Option<&str>) -> ManifestRecord {
    let bytes = Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":"{INDEX}","manifests":[],"annotations":{{"salt":"{salt}"}}}}"#
    ));
    ManifestRecord {
        repo: repo(r),
        digest: Digest::of(Algorithm::Sha256, &bytes),
        media_type: INDEX.into(),
        bytes,
        tag: tag_name.map(tag),
        blobs: Vec::new(),
        children: Vec::new(),
        referrer: None,
    }
}

/// A manifest naming `subject`, with its referrer descriptor.
fn referrer(r: &str, salt: &str, subject: &Digest, artifact_type: &str) -> ManifestRecord {
    let bytes = Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":"{INDEX}","manifests":[],"artifactType":"{artifact_type}","subject":{{"mediaType":"{INDEX}","digest":"{subject}","size":1}},"annotations":{{"salt":"{salt}"}}}}"#
    ));
    let digest = Digest::of(Algorithm::Sha256, &bytes);
    let desc = Descriptor {
        media_type: INDEX.into(),
        digest: digest.clone(),
        size: bytes.len() as u64,
        artifact_type: Some(artifact_type.into()),
        annotations: None,
    };
    ManifestRecord {
        referrer: Some((subject.clone(), desc)),
        digest,
        bytes,
        ..record(r, salt, None)
    }
}

fn names<T: AsRef<str>>(items: &[T]) -> Vec<&str> {
    items.iter().map(AsRef::as_ref).collect()
}

async fn manifests_by_tag_and_digest<M: MetaStore>(s: &M) {
    let r = repo("suite/manifests");
    let m1 = record("suite/manifests", "one", Some("v1"));
    s.put_manifest(m1.clone()).await.unwrap();
    let by_tag = s.manifest(&r, &Reference::Tag(tag("v1"))).await.unwrap().unwrap();
    assert_eq!(by_tag.digest, m1.digest);
    assert_eq!(by_tag.bytes, m1.bytes);
    assert_eq!(by_tag.media_type, INDEX);
    let by_digest = s
        .manifest(&r, &Reference::Digest(m1.digest.clone()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_digest.bytes, m1.bytes);
    // The tag moves to a new manifest; the old one stays by digest.
    let m2 = record("suite/manifests", "two", Some("v1"));
    s.put_manifest(m2.clone()).await.unwrap();
    let moved = s.manifest(&r, &Reference::Tag(tag("v1"))).await.unwrap().unwrap();
    assert_eq!(moved.digest, m2.digest);
    assert!(
        s.manifest(&r, &Reference::Digest(m1.digest.clone()))
            .await
            .unwrap()
            .is_some()
    );
    // Another repository sees none of it.
    let other = repo("suite/other");
    assert!(s.manifest(&other, &Reference::Tag(tag("v1"))).await.unwrap().is_none());
    assert!(
        s.manifest(&other, &Reference::Digest(m1.digest.clone()))
            .await
            .unwrap()
            .is_none()
    );
    // Deleting the tag keeps the manifest; deleting the manifest removes its tags.
    assert!(s.delete_tag(&r, &tag("v1")).await.unwrap());
    assert!(!s.delete_tag(&r, &tag("v1")).await.unwrap());
    assert!(
        s.manifest(&r, &Reference::Digest(m2.digest.clone()))
            .await
            .unwrap()
            .is_some()
    );
    s.put_manifest(record("suite/manifests", "two", Some("again")))
        .await
        .unwrap();
    assert!(s.delete_manifest(&r, &m2.digest).await.unwrap());
    assert!(!s.delete_manifest(&r, &m2.digest).await.unwrap());
    assert!(s.manifest(&r, &Reference::Tag(tag("again"))).await.unwrap().is_none());
}

async fn manifests_need_their_content<M: MetaStore>(s: &M) {
    let missing = Digest::of(Algorithm::Sha256, b"not stored");
    let mut m = record("suite/needs", "blob", Some("v1"));
    m.blobs = vec![missing.clone()];
    assert!(matches!(s.put_manifest(m).await, Err(Error::ManifestBlobUnknown(d)) if d == missing));
    let mut m = record("suite/needs", "child", Some("v1"));
    m.children = vec![missing.clone()];
    assert!(matches!(s.put_manifest(m).await, Err(Error::ManifestBlobUnknown(d)) if d == missing));
    // Nothing of the refused pushes was kept.
    let r = repo("suite/needs");
    assert!(s.manifest(&r, &Reference::Tag(tag("v1"))).await.unwrap().is_none());
    // A child that is in the repository is accepted.
    let child = record("suite/needs", "the child", None);
    s.put_manifest(child.clone()).await.unwrap();
    let mut parent = record("suite/needs", "parent", Some("v2"));
    parent.children = vec![child.digest.clone()];
    s.put_manifest(parent).await.unwrap();
}

async fn tag_and_catalog_pages<M: MetaStore>(s: &M) {
    let r = repo("suite/pages");
    for t in ["b", "a", "d", "c"] {
        s.put_manifest(record("suite/pages", t, Some(t))).await.unwrap();
    }
    let first = s.tags(&r, None, 2).await.unwrap();
    assert_eq!(names(&first.items), ["a", "b"]);
    assert!(first.more);
    assert_eq!(first.next_after().map(AsRef::as_ref), Some("b"));
    let rest = s.tags(&r, Some("b".into()), 10).await.unwrap();
    assert_eq!(names(&rest.items), ["c", "d"]);
    assert!(!rest.more);
    assert!(matches!(
        s.tags(&repo("suite/none"), None, 10).await,
        Err(Error::NameUnknown(_))
    ));
    for name in ["suite/pages-z", "suite/pages-m"] {
        s.put_manifest(record(name, name, Some("t"))).await.unwrap();
    }
    let all = s.catalog(None, usize::MAX, Arc::new(|_| true)).await.unwrap();
    let listed = names(&all.items);
    let pos = |n: &str| listed.iter().position(|x| *x == n).unwrap();
    assert!(pos("suite/pages") < pos("suite/pages-m") && pos("suite/pages-m") < pos("suite/pages-z"));
    let page = s
        .catalog(
            Some("suite/pages".into()),
            1,
            Arc::new(|n: &str| n.starts_with("suite/pages")),
        )
        .await
        .unwrap();
    assert_eq!(names(&page.items), ["suite/pages-m"]);
    assert!(page.more);
    let filtered = s
        .catalog(None, 10, Arc::new(|n: &str| n.ends_with("-z")))
        .await
        .unwrap();
    assert_eq!(names(&filtered.items), ["suite/pages-z"]);
    assert!(!filtered.more);
}

async fn referrers_follow_their_manifests<M: MetaStore>(s: &M) {
    let r = repo("suite/referrers");
    let subject = record("suite/referrers", "subject", Some("v1"));
    s.put_manifest(subject.clone()).await.unwrap();
    let sig = referrer("suite/referrers", "sig", &subject.digest, "application/x.sig");
    let sbom = referrer("suite/referrers", "sbom", &subject.digest, "application/x.sbom");
    s.put_manifest(sig.clone()).await.unwrap();
    s.put_manifest(sbom.clone()).await.unwrap();
    let listed = s.referrers(&r, &subject.digest).await.unwrap();
    let mut want = vec![sig.digest.clone(), sbom.digest.clone()];
    want.sort_by_key(|d| d.to_string());
    assert_eq!(listed.iter().map(|d| d.digest.clone()).collect::<Vec<_>>(), want);
    assert!(
        listed
            .iter()
            .any(|d| d.artifact_type.as_deref() == Some("application/x.sig"))
    );
    assert!(
        s.referrers(&repo("suite/elsewhere"), &subject.digest)
            .await
            .unwrap()
            .is_empty()
    );
    // Deleting a referrer removes its entry (the store finds it through the subject it names).
    assert!(s.delete_manifest(&r, &sig.digest).await.unwrap());
    let listed = s.referrers(&r, &subject.digest).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].digest, sbom.digest);
}

/// A sink that keeps what it is given.
fn collector<M: MetaStore>(s: &M) -> Arc<Mutex<Vec<Change>>> {
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    s.subscribe(Arc::new(move |c: &[Change]| g.lock().unwrap().extend_from_slice(c)));
    got
}

/// What was delivered since the last call, once the feed is brought up to date.
async fn delivered<M: MetaStore>(s: &M, got: &Mutex<Vec<Change>>) -> Vec<Change> {
    if s.feed() == Feed::Behind {
        s.catch_up().await.unwrap();
    }
    assert_eq!(s.feed(), Feed::Current, "caught up");
    std::mem::take(&mut *got.lock().unwrap())
}

async fn commits_deliver_what_they_changed<M: MetaStore>(s: &M) {
    let got = collector(s);
    delivered(s, &got).await;
    let r = repo("suite/feed");
    let m = record("suite/feed", "x", Some("v1"));
    s.put_manifest(m.clone()).await.unwrap();
    let c = delivered(s, &got).await;
    assert!(c.contains(&Change::Tag(r.clone(), tag("v1"))), "{c:?}");
    assert!(c.contains(&Change::Manifest(r.clone(), m.digest.clone())), "{c:?}");
    assert!(!c.contains(&Change::All), "{c:?}");
    assert!(s.delete_tag(&r, &tag("v1")).await.unwrap());
    let c = delivered(s, &got).await;
    assert!(c.contains(&Change::Tag(r.clone(), tag("v1"))), "{c:?}");
    assert!(s.delete_manifest(&r, &m.digest).await.unwrap());
    let c = delivered(s, &got).await;
    assert!(c.contains(&Change::Repo(r.clone())), "{c:?}");
    // A removed blob link.
    let (steps, link) = (Steps::default(), link("suite/feed", b"linked, then unlinked"));
    s.commit_blob(link.clone(), staged(&steps, None)).await.unwrap();
    delivered(s, &got).await;
    assert!(s.unlink_blob(&r, &link.digest, steps.removal(false)).await.unwrap());
    let c = delivered(s, &got).await;
    assert!(c.contains(&Change::Blob(r.clone(), link.digest.clone())), "{c:?}");
}

/// Changes committed through `a` reach `b`'s subscriber (another process on the same SQLite
/// file; another replica on the same database) within a second.
async fn another_writers_changes_arrive<M: MetaStore>(a: &M, b: &M) {
    let got = collector(b);
    delivered(b, &got).await;
    a.put_manifest(record("suite/remote", "y", Some("latest")))
        .await
        .unwrap();
    let want = Change::Tag(repo("suite/remote"), tag("latest"));
    let start = std::time::Instant::now();
    let mut seen = Vec::new();
    while !seen.contains(&want) {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(1),
            "not delivered within 1 s: {seen:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        seen.extend(delivered(b, &got).await);
    }
}

async fn blobs_unknown_to_the_store<M: MetaStore>(s: &M) {
    s.check().await.unwrap();
    let d = Digest::of(Algorithm::Sha256, b"never stored");
    let r = repo("suite/blobs");
    assert_eq!(s.repo_blob(&r, &d).await.unwrap(), None);
    assert!(!s.mount_blob(&r, &d, None).await.unwrap());
    assert!(!s.mount_blob(&r, &d, Some(&repo("suite/source"))).await.unwrap());
    let (n, bytes) = s.blob_stats().await.unwrap();
    assert!(bytes == 0 || n > 0);
}

async fn gc_sweeps_untagged_manifests_only_past_the_grace<M: MetaStore>(s: &M) {
    let r = repo("suite/gc");
    let kept = record("suite/gc", "kept", Some("v1"));
    let loose = record("suite/gc", "loose", None);
    s.put_manifest(kept.clone()).await.unwrap();
    s.put_manifest(loose.clone()).await.unwrap();
    // Within the grace period nothing goes.
    let young = s.gc_repo(&r, 3600, &Sweep::Untagged, false).await.unwrap();
    assert!(young.manifests.is_empty(), "{young:?}");
    // A dry run reports without removing.
    let dry = s.gc_repo(&r, 0, &Sweep::Untagged, true).await.unwrap();
    assert_eq!(dry.manifests, vec![loose.digest.clone()]);
    assert!(
        s.manifest(&r, &Reference::Digest(loose.digest.clone()))
            .await
            .unwrap()
            .is_some()
    );
    let swept = s.gc_repo(&r, 0, &Sweep::Untagged, false).await.unwrap();
    assert_eq!(swept.manifests, vec![loose.digest.clone()]);
    assert!(
        s.manifest(&r, &Reference::Digest(loose.digest.clone()))
            .await
            .unwrap()
            .is_none()
    );
    assert!(s.manifest(&r, &Reference::Tag(tag("v1"))).await.unwrap().is_some());
}

/// An index of `children` (they must be recorded first), tagged `tag_name`.
fn index_of(r: &str, salt: &str, children: &[&ManifestRecord], tag_name: Option<&str>) -> ManifestRecord {
    let list: Vec<String> = children
        .iter()
        .map(|c| {
            format!(
                r#"{{"mediaType":"{INDEX}","digest":"{}","size":{}}}"#,
                c.digest,
                c.bytes.len()
            )
        })
        .collect();
    let bytes = Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":"{INDEX}","manifests":[{}],"annotations":{{"salt":"{salt}"}}}}"#,
        list.join(",")
    ));
    ManifestRecord {
        digest: Digest::of(Algorithm::Sha256, &bytes),
        bytes,
        children: children.iter().map(|c| c.digest.clone()).collect(),
        ..record(r, salt, tag_name)
    }
}

/// An image manifest whose config is `blob` (linked first).
fn image_of(r: &str, blob: &BlobLink) -> ManifestRecord {
    const IMAGE: &str = "application/vnd.oci.image.manifest.v1+json";
    let bytes = Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":"{IMAGE}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[]}}"#,
        blob.digest, blob.size
    ));
    ManifestRecord {
        digest: Digest::of(Algorithm::Sha256, &bytes),
        media_type: IMAGE.into(),
        bytes,
        blobs: vec![blob.digest.clone()],
        ..record(r, "image", None)
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn images_are_evicted_least_used_first_and_whole<M: MetaStore>(s: &M) {
    let r = repo("suite/mirror/app");
    let steps = Steps::default();
    let (only_old, both, loose) = (
        link("suite/mirror/app", b"only the old image's"),
        link("suite/mirror/app", b"both images'"),
        link("suite/mirror/app", b"a layer"),
    );
    for l in [&only_old, &both, &loose] {
        s.commit_blob(l.clone(), staged(&steps, None)).await.unwrap();
    }
    let total = only_old.size + both.size + loose.size;
    let outside = record("suite/mirrorx/app", "outside", Some("v1"));
    let child = image_of("suite/mirror/app", &only_old);
    let shared = image_of("suite/mirror/app", &both);
    for m in [&outside, &child, &shared] {
        s.put_manifest(m.clone()).await.unwrap();
    }
    let old = index_of("suite/mirror/app", "old", &[&child, &shared], Some("old"));
    let keep = index_of("suite/mirror/app", "keep", &[&shared], Some("keep"));
    s.put_manifest(old.clone()).await.unwrap();
    s.put_manifest(keep.clone()).await.unwrap();
    assert_eq!(s.repo_usage("suite/mirror").await.unwrap(), vec![(r.clone(), total)]);
    assert!(s.repo_usage("suite/nothing").await.unwrap().is_empty());
    // Pull times: later ones win, unknown manifests are skipped, an earlier time moves nothing back.
    let now = now_secs();
    s.record_pulls(vec![
        (r.clone(), keep.digest.clone(), now + 1000),
        (r.clone(), old.digest.clone(), now + 500),
        (r.clone(), Digest::of(Algorithm::Sha256, b"not here"), now + 9),
    ])
    .await
    .unwrap();
    s.record_pulls(vec![(r.clone(), keep.digest.clone(), now + 10)])
        .await
        .unwrap();
    let used = s.least_used("suite/mirror", 10).await.unwrap();
    assert_eq!(used.len(), 4, "{used:?}");
    assert!(
        used.iter().all(|u| u.repo == r),
        "only the prefix's repositories: {used:?}"
    );
    let order: Vec<&Digest> = used.iter().map(|u| &u.digest).collect();
    assert_eq!(order[2..], [&old.digest, &keep.digest]);
    assert_eq!((used[2].used, used[3].used), (now + 500, now + 1000));
    assert_eq!(s.least_used("suite/mirror", 1).await.unwrap().len(), 1);
    // A child of an index that stays is not evicted on its own.
    let none = s
        .gc_repo(&r, 0, &Sweep::Image(shared.digest.clone()), false)
        .await
        .unwrap();
    assert!(none.manifests.is_empty(), "{none:?}");
    // The image goes with its tag and what only it reaches; the other image stays whole.
    let gone = s
        .gc_repo(&r, 0, &Sweep::Image(old.digest.clone()), false)
        .await
        .unwrap();
    let mut want = vec![old.digest.clone(), child.digest.clone()];
    want.sort_by_key(|d| d.to_string());
    let mut got = gone.manifests.clone();
    got.sort_by_key(|d| d.to_string());
    assert_eq!(got, want);
    assert!(s.manifest(&r, &Reference::Tag(tag("old"))).await.unwrap().is_none());
    assert!(s.manifest(&r, &Reference::Tag(tag("keep"))).await.unwrap().is_some());
    assert!(
        s.manifest(&r, &Reference::Digest(shared.digest.clone()))
            .await
            .unwrap()
            .is_some()
    );
    // Its blob went; the one the other image references stayed; a link the evicted image did
    // not reference stays too (it may be a push on its way), until garbage collection. The pull
    // times of the removed manifests went with them.
    assert_eq!(gone.links, vec![(only_old.digest.clone(), only_old.size)]);
    assert_eq!(s.repo_blob(&r, &both.digest).await.unwrap(), Some(both.size));
    assert_eq!(
        s.repo_usage("suite/mirror").await.unwrap(),
        vec![(r.clone(), both.size + loose.size)]
    );
    s.gc_repo(&r, 0, &Sweep::Links, false).await.unwrap();
    assert_eq!(
        s.repo_usage("suite/mirror").await.unwrap(),
        vec![(r.clone(), both.size)]
    );
    let left: Vec<Digest> = s
        .least_used("suite/mirror", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.digest)
        .collect();
    assert_eq!(left.len(), 2);
    assert!(left.contains(&shared.digest) && left.contains(&keep.digest));
    assert!(
        s.manifest(&repo("suite/mirrorx/app"), &Reference::Tag(tag("v1")))
            .await
            .unwrap()
            .is_some()
    );
}

async fn a_download_is_claimed_by_one_owner_at_a_time<M: MetaStore>(s: &M) {
    let d = Digest::of(Algorithm::Sha256, b"a blob being mirrored");
    let held_by = |who: &str| FillClaim::Held(who.to_owned());
    assert_eq!(
        s.claim_fill(&d, "replica-a;t1;http://a:5000", 30).await.unwrap(),
        FillClaim::Ours
    );
    assert_eq!(
        s.claim_fill(&d, "replica-b", 30).await.unwrap(),
        held_by("replica-a;t1;http://a:5000"),
        "held by a, and b learns a's owner text (how to reach its download)"
    );
    assert!(
        s.claim_fill(&d, "replica-a;t1;http://a:5000", 30)
            .await
            .unwrap()
            .is_ours(),
        "a renews its own claim"
    );
    s.release_fill(&d, "replica-b").await.unwrap();
    assert!(
        !s.claim_fill(&d, "replica-b", 30).await.unwrap().is_ours(),
        "b cannot release a's claim"
    );
    s.release_fill(&d, "replica-a;t1;http://a:5000").await.unwrap();
    assert!(
        s.claim_fill(&d, "replica-b", 30).await.unwrap().is_ours(),
        "released: b takes it"
    );
    // A claim that is not renewed expires (its owner died).
    let other = Digest::of(Algorithm::Sha256, b"another");
    assert!(s.claim_fill(&other, "replica-a", 1).await.unwrap().is_ours());
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert!(
        s.claim_fill(&other, "replica-b", 30).await.unwrap().is_ours(),
        "an expired claim is taken over"
    );
    assert_eq!(
        s.claim_fill(&other, "replica-a", 30).await.unwrap(),
        held_by("replica-b")
    );
}

/// What a fake blob store's steps were asked to do, in order.
#[derive(Clone, Default)]
struct Steps(Arc<Mutex<Vec<String>>>);

impl Steps {
    fn push(&self, s: &str) {
        self.0.lock().unwrap().push(s.to_string());
    }
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
    fn removal(&self, fail: bool) -> Removal {
        let steps = self.clone();
        Box::new(move |_| {
            steps.push("remove");
            if fail {
                return Err(Error::Io(std::io::Error::other("removal refused")));
            }
            Ok(())
        })
    }
}

/// A staged upload whose steps record themselves; `fail` names the step that fails.
struct FakeStaged {
    steps: Steps,
    fail: Option<&'static str>,
}

struct FakePlacement {
    steps: Steps,
    fail: bool,
}

fn refused(step: &str) -> Error {
    Error::Io(std::io::Error::other(format!("{step} refused")))
}

impl StagedBlob for FakeStaged {
    fn prepare(&mut self) -> berth_engine::Result<Box<dyn Placement>> {
        self.steps.push("prepare");
        if self.fail == Some("prepare") {
            return Err(refused("prepare"));
        }
        Ok(Box::new(FakePlacement {
            steps: self.steps.clone(),
            fail: self.fail == Some("place"),
        }))
    }

    fn finish(self: Box<Self>, outcome: Outcome) {
        self.steps.push(if outcome == Outcome::Failed {
            "finish:failed"
        } else {
            "finish:committed"
        });
    }
}

impl Placement for FakePlacement {
    fn place(&self) -> berth_engine::Result<Option<PathBuf>> {
        self.steps.push("place");
        if self.fail {
            return Err(refused("place"));
        }
        Ok(None)
    }

    fn flush(&self, _dir: &Path) -> berth_engine::Result<()> {
        self.steps.push("flush");
        Ok(())
    }
}

fn staged(steps: &Steps, fail: Option<&'static str>) -> Box<dyn StagedBlob> {
    Box::new(FakeStaged {
        steps: steps.clone(),
        fail,
    })
}

fn link(r: &str, content: &[u8]) -> BlobLink {
    BlobLink {
        repo: repo(r),
        digest: Digest::of(Algorithm::Sha256, content),
        size: content.len() as u64,
        object: None,
    }
}

async fn a_commit_places_then_links<M: MetaStore>(s: &M) {
    let steps = Steps::default();
    let l = link("suite/commit", b"layer one");
    s.commit_blob(l.clone(), staged(&steps, None)).await.unwrap();
    assert_eq!(steps.take(), ["prepare", "place", "finish:committed"]);
    assert_eq!(s.repo_blob(&l.repo, &l.digest).await.unwrap(), Some(l.size));
    assert_eq!(s.blob(&l.digest).await.unwrap(), Some(l.size));
    // Committing the same blob again (another upload of the same bytes) keeps one record.
    let (n_before, bytes_before) = s.blob_stats().await.unwrap();
    s.commit_blob(l.clone(), staged(&steps, None)).await.unwrap();
    assert_eq!(s.blob_stats().await.unwrap(), (n_before, bytes_before));
    // A manifest may now reference it.
    let mut m = record("suite/commit", "uses-layer", Some("v1"));
    m.blobs = vec![l.digest.clone()];
    s.put_manifest(m).await.unwrap();
}

async fn a_failed_commit_links_nothing<M: MetaStore>(s: &M) {
    for step in ["prepare", "place"] {
        let steps = Steps::default();
        let l = link("suite/commit-fails", step.as_bytes());
        let err = s.commit_blob(l.clone(), staged(&steps, Some(step))).await.unwrap_err();
        assert!(err.to_string().contains("refused"), "{err}");
        let want: &[&str] = if step == "prepare" {
            &["prepare", "finish:failed"]
        } else {
            &["prepare", "place", "finish:failed"]
        };
        assert_eq!(steps.take(), want);
        assert_eq!(s.repo_blob(&l.repo, &l.digest).await.unwrap(), None);
        assert_eq!(s.blob(&l.digest).await.unwrap(), None);
    }
}

async fn concurrent_commits_each_get_their_own_result<M: MetaStore + Clone>(s: &M) {
    let mut tasks = Vec::new();
    for i in 0..16 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let steps = Steps::default();
            let l = link("suite/group", format!("blob {i}").as_bytes());
            let fail = (i % 4 == 0).then_some("place");
            let res = s.commit_blob(l.clone(), staged(&steps, fail)).await;
            (i, l, res.is_ok(), steps.take())
        }));
    }
    for t in tasks {
        let (i, l, ok, steps) = t.await.unwrap();
        assert_eq!(ok, i % 4 != 0, "blob {i}");
        assert_eq!(
            steps.last().map(String::as_str),
            Some(if ok { "finish:committed" } else { "finish:failed" })
        );
        let linked = s.repo_blob(&l.repo, &l.digest).await.unwrap();
        assert_eq!(linked.is_some(), ok, "blob {i}");
    }
}

async fn the_last_unlink_removes_the_data<M: MetaStore>(s: &M) {
    let steps = Steps::default();
    let l = link("suite/unlink-a", b"shared layer");
    let other = repo("suite/unlink-b");
    s.commit_blob(l.clone(), staged(&steps, None)).await.unwrap();
    assert!(s.mount_blob(&other, &l.digest, Some(&l.repo)).await.unwrap());
    steps.take();
    // Another repository still links it: its data stays.
    assert!(s.unlink_blob(&l.repo, &l.digest, steps.removal(false)).await.unwrap());
    assert!(steps.take().is_empty());
    assert_eq!(s.repo_blob(&l.repo, &l.digest).await.unwrap(), None);
    assert_eq!(s.blob(&l.digest).await.unwrap(), Some(l.size));
    // Not linked there any more.
    assert!(!s.unlink_blob(&l.repo, &l.digest, steps.removal(false)).await.unwrap());
    assert!(steps.take().is_empty());
    // A removal that fails leaves the link in place.
    assert!(s.unlink_blob(&other, &l.digest, steps.removal(true)).await.is_err());
    assert_eq!(steps.take(), ["remove"]);
    assert_eq!(s.repo_blob(&other, &l.digest).await.unwrap(), Some(l.size));
    // The last link goes with its data.
    assert!(s.unlink_blob(&other, &l.digest, steps.removal(false)).await.unwrap());
    assert_eq!(steps.take(), ["remove"]);
    assert_eq!(s.blob(&l.digest).await.unwrap(), None);
}

async fn only_unrecorded_data_is_removed<M: MetaStore>(s: &M) {
    let steps = Steps::default();
    let l = link("suite/stray", b"recorded");
    s.commit_blob(l.clone(), staged(&steps, None)).await.unwrap();
    steps.take();
    assert!(
        !s.remove_unrecorded(&l.digest, Some(steps.removal(false)))
            .await
            .unwrap()
    );
    assert!(!s.remove_unrecorded(&l.digest, None).await.unwrap());
    assert!(steps.take().is_empty());
    let stray = Digest::of(Algorithm::Sha256, b"left by a crash");
    assert!(s.remove_unrecorded(&stray, None).await.unwrap(), "a dry run reports it");
    assert!(steps.take().is_empty());
    assert!(s.remove_unrecorded(&stray, Some(steps.removal(false))).await.unwrap());
    assert_eq!(steps.take(), ["remove"]);
}

/// The embedded SQLite store.
mod sqlite {
    use super::*;

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta::open(&dir.path().join("meta.db")).unwrap();
        (dir, SqliteStore::new(meta))
    }

    macro_rules! suite {
        ($($check:ident),* $(,)?) => {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() {
                    let (_dir, s) = store();
                    super::$check(&s).await;
                }
            )*
        };
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn another_writers_changes_arrive() {
        let (dir, a) = store();
        let b = SqliteStore::new(Meta::open(&dir.path().join("meta.db")).unwrap());
        super::another_writers_changes_arrive(&a, &b).await;
    }

    suite!(
        manifests_by_tag_and_digest,
        manifests_need_their_content,
        tag_and_catalog_pages,
        referrers_follow_their_manifests,
        commits_deliver_what_they_changed,
        blobs_unknown_to_the_store,
        gc_sweeps_untagged_manifests_only_past_the_grace,
        images_are_evicted_least_used_first_and_whole,
        a_download_is_claimed_by_one_owner_at_a_time,
        a_commit_places_then_links,
        a_failed_commit_links_nothing,
        concurrent_commits_each_get_their_own_result,
        the_last_unlink_removes_the_data,
        only_unrecorded_data_is_removed,
    );
}

/// PostgreSQL, on a throwaway server this test binary starts (one database per check).
mod postgres {
    use berth_engine::postgres::PgStore;

    async fn store() -> PgStore {
        let settings = crate::support::postgres::shared().database().await;
        PgStore::connect(&settings).await.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn another_writers_changes_arrive() {
        let settings = crate::support::postgres::shared().database().await;
        let a = PgStore::connect(&settings).await.unwrap();
        let b = PgStore::connect(&settings).await.unwrap();
        super::another_writers_changes_arrive(&a, &b).await;
    }

    macro_rules! suite {
        ($($check:ident),* $(,)?) => {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() {
                    let s = store().await;
                    super::$check(&s).await;
                }
            )*
        };
    }

    suite!(
        manifests_by_tag_and_digest,
        manifests_need_their_content,
        tag_and_catalog_pages,
        referrers_follow_their_manifests,
        commits_deliver_what_they_changed,
        blobs_unknown_to_the_store,
        gc_sweeps_untagged_manifests_only_past_the_grace,
        images_are_evicted_least_used_first_and_whole,
        a_download_is_claimed_by_one_owner_at_a_time,
        a_commit_places_then_links,
        a_failed_commit_links_nothing,
        concurrent_commits_each_get_their_own_result,
        the_last_unlink_removes_the_data,
        only_unrecorded_data_is_removed,
    );
}
