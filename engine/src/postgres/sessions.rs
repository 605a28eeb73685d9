//! The upload session rows ([`SessionRecords`]) in `upload_sessions` and `upload_pieces`.
//!
//! A claim is a random token written to the row with a lease end, by one conditional `UPDATE`
//! (the row lock makes it atomic: of two requests for the same offset, one updates the row and
//! the other finds it claimed). Times of leases are the database's clock, so replicas' clocks
//! do not matter.

use std::time::Duration;

use bytes::Bytes;

use super::PgStore;
use super::records::{NOW, exec, row, rows, size};
use crate::digest::Hasher;
use crate::error::{Error, MetaError, Result};
use crate::name::{RepoName, UploadId};
use crate::session_store::{Expired, SessionRecords, SessionRow, SessionUpdate, TailChange};
use crate::upload_caps::{UploadCap, UploadLimits};

fn token() -> String {
    UploadId::random().to_string()
}

fn lease_secs(lease: Duration) -> f64 {
    lease.as_secs_f64().max(1.0)
}

fn int(v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::Meta(MetaError::Database("a size out of range".into())))
}

fn corrupt(what: &str) -> Error {
    Error::Meta(MetaError::Corrupt(format!("upload session: {what}")))
}

impl SessionRecords for PgStore {
    async fn open_session(
        &self,
        id: UploadId,
        repo: &RepoName,
        owner: &str,
        hasher: &Hasher,
        limits: UploadLimits,
    ) -> Result<()> {
        let c = self.client().await?;
        let counts = row(
            &c,
            "SELECT count(*) FILTER (WHERE owner = $1), count(*) FILTER (WHERE repo = $2), count(*)
             FROM upload_sessions",
            &[&owner, &repo.as_str()],
        )
        .await?
        .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1), r.get::<_, i64>(2)))
        .unwrap_or_default();
        for (cap, limit, n) in [
            (UploadCap::Owner, limits.per_owner, counts.0),
            (UploadCap::Repository, limits.per_repository, counts.1),
            (UploadCap::Total, limits.total, counts.2),
        ] {
            if limit > 0 && n >= limit as i64 {
                return Err(Error::TooManyUploads { cap, limit });
            }
        }
        exec(
            &c,
            &format!(
                "INSERT INTO upload_sessions(id, repo, owner, started, touched, hash_state)
                 VALUES ($1, $2, $3, {NOW}, {NOW}, $4)"
            ),
            &[&id.to_string(), &repo.as_str(), &owner, &hasher.save()],
        )
        .await?;
        Ok(())
    }

    async fn claim_session(
        &self,
        repo: &RepoName,
        id: UploadId,
        start: Option<u64>,
        lease: Duration,
    ) -> Result<(SessionRow, String)> {
        let c = self.client().await?;
        let (tok, sid) = (token(), id.to_string());
        let start = start.map(int).transpose()?;
        let claimed = row(
            &c,
            &format!(
                "UPDATE upload_sessions
                 SET writer = $3, lease_until = now() + make_interval(secs => $4), touched = {NOW}
                 WHERE id = $1 AND repo = $2 AND (writer IS NULL OR lease_until < now())
                   AND ($5::BIGINT IS NULL OR received = $5)
                 RETURNING received, hash_state, multipart, etags, tail, stored"
            ),
            &[&sid, &repo.as_str(), &tok, &lease_secs(lease), &start],
        )
        .await?;
        if let Some(r) = claimed {
            let hasher = Hasher::restore(r.get::<_, &[u8]>(1)).ok_or_else(|| corrupt("its hash state"))?;
            return Ok((
                SessionRow {
                    offset: size(r.get(0)),
                    hasher,
                    multipart: r.get(2),
                    etags: r.get(3),
                    tail: size(r.get(4)),
                    stored: r.get(5),
                },
                tok,
            ));
        }
        // Why not: no such session, another offset, or another request holds it.
        let found = row(
            &c,
            "SELECT received FROM upload_sessions WHERE id = $1 AND repo = $2",
            &[&sid, &repo.as_str()],
        )
        .await?;
        let Some(found) = found else {
            return Err(Error::UploadUnknown);
        };
        let offset = size(found.get(0));
        match start {
            Some(s) => Err(Error::RangeMismatch {
                start: u64::try_from(s).unwrap_or(0),
                offset,
            }),
            None => Err(Error::UploadBusy),
        }
    }

    async fn renew_claim(&self, id: UploadId, token: &str, lease: Duration) -> Result<()> {
        let c = self.client().await?;
        let n = exec(
            &c,
            "UPDATE upload_sessions SET lease_until = now() + make_interval(secs => $3)
             WHERE id = $1 AND writer = $2",
            &[&id.to_string(), &token, &lease_secs(lease)],
        )
        .await?;
        if n == 0 { Err(Error::UploadBusy) } else { Ok(()) }
    }

    async fn release_claim(&self, id: UploadId, token: &str) -> Result<()> {
        let c = self.client().await?;
        exec(
            &c,
            "UPDATE upload_sessions SET writer = NULL, lease_until = NULL WHERE id = $1 AND writer = $2",
            &[&id.to_string(), &token],
        )
        .await?;
        Ok(())
    }

    async fn save_session(&self, id: UploadId, token: &str, u: SessionUpdate) -> Result<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let sid = id.to_string();
        let n = exec(
            &tx,
            &format!(
                "UPDATE upload_sessions
                 SET received = $3, hash_state = $4, multipart = $5, etags = etags || $6::TEXT[], tail = $7,
                     stored = $8, writer = NULL, lease_until = NULL, touched = {NOW}
                 WHERE id = $1 AND writer = $2"
            ),
            &[
                &sid,
                &token,
                &int(u.offset)?,
                &u.hasher.save(),
                &u.multipart,
                &u.new_etags,
                &int(u.tail_len)?,
                &u.stored,
            ],
        )
        .await?;
        if n == 0 {
            return Err(Error::UploadBusy);
        }
        let piece = match u.tail {
            TailChange::Append(p) => p,
            TailChange::Replace(p) => {
                exec(&tx, "DELETE FROM upload_pieces WHERE id = $1", &[&sid]).await?;
                p
            }
        };
        if let Some((start, bytes)) = piece {
            exec(
                &tx,
                "INSERT INTO upload_pieces(id, start, bytes) VALUES ($1, $2, $3)
                 ON CONFLICT (id, start) DO UPDATE SET bytes = excluded.bytes",
                &[&sid, &int(start)?, &bytes.as_ref()],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn session_pieces(&self, id: UploadId) -> Result<Vec<Bytes>> {
        let c = self.client().await?;
        let found = rows(
            &c,
            "SELECT bytes FROM upload_pieces WHERE id = $1 ORDER BY start",
            &[&id.to_string()],
        )
        .await?;
        Ok(found.into_iter().map(|r| Bytes::from(r.get::<_, Vec<u8>>(0))).collect())
    }

    async fn session_offset(&self, repo: &RepoName, id: UploadId) -> Result<u64> {
        let c = self.client().await?;
        row(
            &c,
            "SELECT received FROM upload_sessions WHERE id = $1 AND repo = $2",
            &[&id.to_string(), &repo.as_str()],
        )
        .await?
        .map(|r| size(r.get(0)))
        .ok_or(Error::UploadUnknown)
    }

    async fn end_session(&self, id: UploadId) -> Result<()> {
        let c = self.client().await?;
        exec(&c, "DELETE FROM upload_sessions WHERE id = $1", &[&id.to_string()]).await?;
        Ok(())
    }

    async fn claim_expired(&self, idle: Duration, lease: Duration, limit: usize) -> Result<Vec<Expired>> {
        let c = self.client().await?;
        let tok = token();
        let idle = i64::try_from(idle.as_secs()).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let found = rows(
            &c,
            &format!(
                "UPDATE upload_sessions SET writer = $1, lease_until = now() + make_interval(secs => $2)
                 WHERE id IN (
                   SELECT id FROM upload_sessions
                   WHERE touched < {NOW} - $3 AND (writer IS NULL OR lease_until < now())
                   ORDER BY touched LIMIT $4 FOR UPDATE SKIP LOCKED)
                 RETURNING id, multipart"
            ),
            &[&tok, &lease_secs(lease), &idle, &limit],
        )
        .await?;
        found
            .into_iter()
            .map(|r| {
                let id: String = r.get(0);
                Ok(Expired {
                    id: id.parse().map_err(|_| corrupt("an id"))?,
                    token: tok.clone(),
                    multipart: r.get(1),
                })
            })
            .collect()
    }

    async fn object_in_use(&self, id: UploadId) -> Result<bool> {
        let c = self.client().await?;
        let sid = id.to_string();
        let found = row(
            &c,
            "SELECT EXISTS(SELECT 1 FROM blobs WHERE object = $1)
                 OR EXISTS(SELECT 1 FROM upload_sessions WHERE id = $1)",
            &[&sid],
        )
        .await?;
        Ok(found.is_some_and(|r| r.get::<_, bool>(0)))
    }

    async fn session_count(&self) -> Result<u64> {
        let c = self.client().await?;
        let found = row(&c, "SELECT count(*) FROM upload_sessions", &[]).await?;
        Ok(found.map_or(0, |r| size(r.get(0))))
    }
}
