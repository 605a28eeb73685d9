//! The statements the operations share: running a cached statement, and the record changes
//! that pushes, deletions and sweeps make alike (links, manifests, the catalog entry).

use deadpool_postgres::{GenericClient, Transaction};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::digest::Digest;
use crate::error::{Error, MetaError, Result};

/// Seconds since the epoch by the database's clock (one clock for every replica).
pub(super) const NOW: &str = "CAST(extract(epoch FROM now()) AS bigint)";

/// Statement parameters.
pub(super) type Params<'a> = [&'a (dyn ToSql + Sync)];

pub(super) async fn exec(c: &impl GenericClient, sql: &str, params: &Params<'_>) -> Result<u64> {
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.execute(&stmt, params).await?)
}

pub(super) async fn rows(c: &impl GenericClient, sql: &str, params: &Params<'_>) -> Result<Vec<Row>> {
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.query(&stmt, params).await?)
}

pub(super) async fn row(c: &impl GenericClient, sql: &str, params: &Params<'_>) -> Result<Option<Row>> {
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.query_opt(&stmt, params).await?)
}

pub(super) fn digest(s: &str) -> Result<Digest> {
    s.parse()
        .map_err(|_| Error::Meta(MetaError::Corrupt(format!("a stored digest {s:?} is not valid"))))
}

pub(super) fn size(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Link a blob of `size` bytes into `repo` (refreshing the link's time when it is there), its
/// data stored as `object` when the blob is new. Returns whether the blob was stored already.
pub(super) async fn link_blob(
    tx: &Transaction<'_>,
    repo: &str,
    d: &str,
    size: i64,
    object: Option<&str>,
) -> Result<bool> {
    let added = exec(
        tx,
        &format!(
            "INSERT INTO repo_blobs(repo, digest, size, linked) VALUES ($1, $2, $3, {NOW}) ON CONFLICT DO NOTHING"
        ),
        &[&repo, &d, &size],
    )
    .await?;
    if added == 0 {
        exec(
            tx,
            &format!("UPDATE repo_blobs SET linked = {NOW} WHERE repo = $1 AND digest = $2"),
            &[&repo, &d],
        )
        .await?;
        return Ok(true);
    }
    // xmax is 0 in a row this statement inserted, and set in one it updated.
    let existed = row(
        tx,
        "INSERT INTO blobs(digest, size, refs, object) VALUES ($1, $2, 1, $3)
         ON CONFLICT(digest) DO UPDATE SET refs = blobs.refs + 1
         RETURNING xmax <> 0",
        &[&d, &size, &object],
    )
    .await?
    .is_some_and(|r| r.get::<_, bool>(0));
    exec(
        tx,
        "INSERT INTO repos(name) VALUES ($1) ON CONFLICT DO NOTHING",
        &[&repo],
    )
    .await?;
    Ok(existed)
}

/// Remove manifest `d` from `repo` with its tags and referrer entry; false when it was not there.
pub(super) async fn remove_manifest(tx: &Transaction<'_>, repo: &str, d: &str) -> Result<bool> {
    if exec(
        tx,
        "DELETE FROM repo_manifests WHERE repo = $1 AND digest = $2",
        &[&repo, &d],
    )
    .await?
        == 0
    {
        return Ok(false);
    }
    if exec(tx, "DELETE FROM manifests WHERE digest = $1 AND refs <= 1", &[&d]).await? == 0 {
        exec(tx, "UPDATE manifests SET refs = refs - 1 WHERE digest = $1", &[&d]).await?;
    }
    exec(tx, "DELETE FROM tags WHERE repo = $1 AND digest = $2", &[&repo, &d]).await?;
    exec(tx, "DELETE FROM pulls WHERE repo = $1 AND digest = $2", &[&repo, &d]).await?;
    exec(
        tx,
        "DELETE FROM referrers WHERE repo = $1 AND digest = $2",
        &[&repo, &d],
    )
    .await?;
    Ok(true)
}

/// Remove `repo`'s link to blob `d`: (size, whether it was the last link), or `None`.
/// Unlink a blob from `repo`: its size, whether that was the last link (the blob's row is then
/// gone), and the object the row named.
pub(super) async fn unlink_blob(
    tx: &Transaction<'_>,
    repo: &str,
    d: &str,
) -> Result<Option<(u64, bool, Option<String>)>> {
    if exec(
        tx,
        "DELETE FROM repo_blobs WHERE repo = $1 AND digest = $2",
        &[&repo, &d],
    )
    .await?
        == 0
    {
        return Ok(None);
    }
    let Some(r) = row(
        tx,
        "UPDATE blobs SET refs = refs - 1 WHERE digest = $1 RETURNING size, refs, object",
        &[&d],
    )
    .await?
    else {
        return Ok(Some((0, true, None)));
    };
    let (size, refs, object): (i64, i64, Option<String>) = (r.get(0), r.get(1), r.get(2));
    let last = refs <= 0;
    if last {
        exec(tx, "DELETE FROM blobs WHERE digest = $1", &[&d]).await?;
    }
    Ok(Some((self::size(size), last, object.filter(|_| last))))
}

/// Drop `repo` from the catalog when it links nothing any more.
pub(super) async fn forget_repo_if_empty(tx: &Transaction<'_>, repo: &str) -> Result<()> {
    exec(
        tx,
        "DELETE FROM repos WHERE name = $1
         AND NOT EXISTS (SELECT 1 FROM repo_blobs WHERE repo = $1)
         AND NOT EXISTS (SELECT 1 FROM repo_manifests WHERE repo = $1)",
        &[&repo],
    )
    .await?;
    Ok(())
}
