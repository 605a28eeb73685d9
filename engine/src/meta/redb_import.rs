//! One-time import of the redb store that Berth used before SQLite (`meta.redb`), so that an
//! upgrade keeps every repository, tag and manifest. The import runs inside the transaction that
//! creates the schema; the old file is then renamed to `meta.redb.imported` (kept as a backup).

use std::path::Path;

use redb::{ReadableDatabase, ReadableTable, TableDefinition, TableError};
use rusqlite::{Transaction, params};

use crate::error::{Error, MetaError, Result};

const BLOBS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("blobs");
const REPO_BLOBS: TableDefinition<&str, u64> = TableDefinition::new("repo_blobs");
const MANIFESTS: TableDefinition<&str, (u64, &str, &[u8])> = TableDefinition::new("manifests");
const REPO_MANIFESTS: TableDefinition<&str, ()> = TableDefinition::new("repo_manifests");
const TAGS: TableDefinition<&str, &str> = TableDefinition::new("tags");
const REFERRERS: TableDefinition<&str, &[u8]> = TableDefinition::new("referrers");
const REPOS: TableDefinition<&str, ()> = TableDefinition::new("repos");
const LINK_TIMES: TableDefinition<&str, u64> = TableDefinition::new("link_times");

const DONE_KEY: &str = "redb_imported";

fn split(key: &str) -> Vec<&str> {
    key.split('\0').collect()
}

fn err(e: impl std::fmt::Display) -> Error {
    Error::Meta(MetaError::Import(format!("importing meta.redb: {e}")))
}

/// Import `legacy` into the new tables unless that was done before.
pub(super) fn import_once(tx: &Transaction<'_>, legacy: &Path) -> Result<()> {
    if !legacy.exists() {
        return Ok(());
    }
    let done: bool = tx.prepare("SELECT 1 FROM info WHERE key = ?1")?.exists([DONE_KEY])?;
    if done {
        return Ok(());
    }
    let db = redb::Database::open(legacy).map_err(|e| {
        Error::Meta(MetaError::Import(format!(
            "cannot open {} to import it ({e}); if an older berth still runs on this storage, stop it first",
            legacy.display()
        )))
    })?;
    let r = db.begin_read().map_err(err)?;
    macro_rules! rows {
        ($def:expr, |$k:ident, $v:ident| $body:block) => {
            match r.open_table($def) {
                Ok(t) => {
                    for row in t.iter().map_err(err)? {
                        let (k, v) = row.map_err(err)?;
                        let $k = k.value();
                        let $v = v.value();
                        $body
                    }
                }
                Err(TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(err(e)),
            }
        };
    }
    let mut times = std::collections::HashMap::new();
    rows!(LINK_TIMES, |k, v| {
        times.insert(k.to_owned(), v as i64);
    });
    let time = |kind: &str, repo: &str, d: &str| times.get(&format!("{kind}\0{repo}\0{d}")).copied().unwrap_or(0);
    rows!(BLOBS, |k, v| {
        tx.execute(
            "INSERT OR REPLACE INTO blobs(digest, size, refs) VALUES (?1, ?2, ?3)",
            params![k, v.0 as i64, v.1 as i64],
        )?;
    });
    rows!(REPO_BLOBS, |k, v| {
        if let [repo, d] = split(k)[..] {
            tx.execute(
                "INSERT OR REPLACE INTO repo_blobs(repo, digest, size, linked) VALUES (?1, ?2, ?3, ?4)",
                params![repo, d, v as i64, time("b", repo, d)],
            )?;
        }
    });
    rows!(MANIFESTS, |k, v| {
        tx.execute(
            "INSERT OR REPLACE INTO manifests(digest, refs, media_type, bytes) VALUES (?1, ?2, ?3, ?4)",
            params![k, v.0 as i64, v.1, v.2],
        )?;
    });
    rows!(REPO_MANIFESTS, |k, _v| {
        if let [repo, d] = split(k)[..] {
            tx.execute(
                "INSERT OR REPLACE INTO repo_manifests(repo, digest, pushed) VALUES (?1, ?2, ?3)",
                params![repo, d, time("m", repo, d)],
            )?;
        }
    });
    rows!(TAGS, |k, v| {
        if let [repo, tag] = split(k)[..] {
            tx.execute(
                "INSERT OR REPLACE INTO tags(repo, tag, digest) VALUES (?1, ?2, ?3)",
                params![repo, tag, v],
            )?;
        }
    });
    rows!(REFERRERS, |k, v| {
        if let [repo, subject, d] = split(k)[..] {
            tx.execute(
                "INSERT OR REPLACE INTO referrers(repo, subject, digest, descriptor) VALUES (?1, ?2, ?3, ?4)",
                params![repo, subject, d, v],
            )?;
        }
    });
    rows!(REPOS, |k, _v| {
        tx.execute("INSERT OR IGNORE INTO repos(name) VALUES (?1)", [k])?;
    });
    tx.execute(
        "INSERT INTO info(key, value) VALUES (?1, ?2)",
        params![DONE_KEY, legacy.display().to_string()],
    )?;
    tracing::info!(file = %legacy.display(), "imported the metadata of an older berth (redb) into SQLite");
    Ok(())
}

/// Rename the imported file out of the way (another process may have done it already).
pub(super) fn retire(legacy: &Path) -> Result<()> {
    match std::fs::rename(legacy, legacy.with_extension("redb.imported")) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::Io(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::{Algorithm, Digest};
    use crate::meta::Meta;

    #[test]
    fn an_older_redb_store_is_imported_once() {
        let dir = tempfile::tempdir().unwrap();
        let legacy = dir.path().join("meta.redb");
        let blob = Digest::of(Algorithm::Sha256, b"layer").to_string();
        let man = Digest::of(Algorithm::Sha256, b"{}").to_string();
        {
            let db = redb::Database::create(&legacy).unwrap();
            let w = db.begin_write().unwrap();
            w.open_table(BLOBS).unwrap().insert(blob.as_str(), (5, 1)).unwrap();
            w.open_table(REPO_BLOBS)
                .unwrap()
                .insert(format!("lib/app\0{blob}").as_str(), 5)
                .unwrap();
            w.open_table(MANIFESTS)
                .unwrap()
                .insert(
                    man.as_str(),
                    (1, "application/vnd.oci.image.manifest.v1+json", &b"{}"[..]),
                )
                .unwrap();
            w.open_table(REPO_MANIFESTS)
                .unwrap()
                .insert(format!("lib/app\0{man}").as_str(), ())
                .unwrap();
            w.open_table(TAGS).unwrap().insert("lib/app\0v1", man.as_str()).unwrap();
            w.open_table(REPOS).unwrap().insert("lib/app", ()).unwrap();
            w.commit().unwrap();
        }
        let meta = Meta::open(&dir.path().join("meta.db")).unwrap();
        assert!(!legacy.exists(), "the old file is renamed");
        assert!(dir.path().join("meta.redb.imported").exists());
        let repo = "lib/app".parse().unwrap();
        let tag = "v1".parse().unwrap();
        let d = meta.resolve_tag(&repo, &tag).unwrap().expect("tag imported");
        assert_eq!(d.to_string(), man);
        let m = meta.manifest(&repo, &d).unwrap().expect("manifest imported");
        assert_eq!(&m.bytes[..], b"{}");
        assert_eq!(meta.repo_blob(&repo, &blob.parse().unwrap()).unwrap(), Some(5));
        assert_eq!(meta.blob_stats().unwrap(), (1, 5));
        let listed = meta.catalog(None, 10, &|_| true).unwrap().items;
        assert_eq!(listed, vec!["lib/app".parse::<crate::RepoName>().unwrap()]);
        drop(meta);
        // Opening again neither imports twice nor fails without the old file.
        let meta = Meta::open(&dir.path().join("meta.db")).unwrap();
        assert_eq!(meta.blob_stats().unwrap(), (1, 5));
    }
}
