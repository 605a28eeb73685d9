//! Upload sessions: a lock-free table of sessions, each with its open data file, running hash
//! and offset, checkpointed to disk after every request so a session survives a restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, MutexGuard};

use crate::digest::{Algorithm, Hasher};
use crate::error::{Error, Result};
use crate::io::{self, UploadFile};
use crate::layout::Layout;
use crate::name::{RepoName, UploadId};

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The mutable part of a session, held while a request writes.
#[derive(Debug)]
pub struct SessionState {
    /// Open data file (`None` once committed or cancelled).
    pub file: Option<UploadFile>,
    /// Hash of the bytes received so far.
    pub hasher: Hasher,
    /// Bytes received so far.
    pub offset: u64,
}

/// One upload session.
pub struct Session {
    /// Its id.
    pub id: UploadId,
    /// The repository it uploads into.
    pub repo: RepoName,
    started: u64,
    last_active: AtomicU64,
    /// Bytes received so far, readable without waiting for a writer.
    received: AtomicU64,
    state: Mutex<SessionState>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("repo", &self.repo)
            .finish()
    }
}

impl Session {
    /// Take the session for writing; a session another request is writing is refused at once
    /// rather than waited for.
    pub fn lock(&self) -> Result<MutexGuard<'_, SessionState>> {
        let guard = self.state.try_lock().map_err(|_| Error::UploadBusy)?;
        if guard.file.is_none() {
            return Err(Error::UploadUnknown);
        }
        self.touch();
        Ok(guard)
    }

    /// Bytes received so far, without waiting for a request that is writing (a status query
    /// during a PATCH sees the offset before that PATCH).
    pub fn offset(&self) -> Result<u64> {
        if let Ok(guard) = self.state.try_lock()
            && guard.file.is_none()
        {
            return Err(Error::UploadUnknown);
        }
        Ok(self.received.load(Ordering::Acquire))
    }

    /// Record the offset after a request.
    pub fn set_offset(&self, offset: u64) {
        self.received.store(offset, Ordering::Release);
    }

    fn touch(&self) {
        self.last_active.store(now_secs(), Ordering::Relaxed);
    }
}

/// The checkpoint written after every request.
#[derive(Serialize, Deserialize)]
struct Checkpoint {
    version: u32,
    repo: String,
    offset: u64,
    hash_state: String,
    started: u64,
}

/// All sessions of this process.
pub struct Uploads {
    layout: Layout,
    table: papaya::HashMap<UploadId, Arc<Session>>,
}

impl Uploads {
    /// An empty table over `layout`.
    pub fn new(layout: Layout) -> Uploads {
        Uploads {
            layout,
            table: papaya::HashMap::new(),
        }
    }

    /// Start a session.
    pub async fn start(&self, repo: &RepoName) -> Result<Arc<Session>> {
        let id = UploadId::random();
        let file = UploadFile::create(self.layout.upload_data(id)).await?;
        let now = now_secs();
        let session = Arc::new(Session {
            id,
            repo: repo.clone(),
            started: now,
            last_active: AtomicU64::new(now),
            received: AtomicU64::new(0),
            state: Mutex::new(SessionState {
                file: Some(file),
                hasher: Hasher::new(Algorithm::Sha256),
                offset: 0,
            }),
        });
        self.checkpoint(
            &session,
            0,
            &session.state.try_lock().map_err(|_| Error::UploadBusy)?.hasher,
        )
        .await?;
        self.table.pin().insert(id, session.clone());
        Ok(session)
    }

    /// Find a session of `repo`, loading its checkpoint from disk when this process does not
    /// know it (after a restart, or when another process started it).
    pub async fn get(&self, repo: &RepoName, id: UploadId) -> Result<Arc<Session>> {
        let found = self.table.pin().get(&id).cloned();
        let session = match found {
            Some(s) => s,
            None => {
                let loaded = Arc::new(self.load(id).await?);
                self.table.pin().get_or_insert(id, loaded).clone()
            }
        };
        if &session.repo != repo {
            return Err(Error::UploadUnknown);
        }
        Ok(session)
    }

    async fn load(&self, id: UploadId) -> Result<Session> {
        let raw = io::read_small(self.layout.upload_state(id))
            .await?
            .ok_or(Error::UploadUnknown)?;
        let cp: Checkpoint = serde_json::from_slice(&raw).map_err(|_| Error::UploadUnknown)?;
        let repo: RepoName = cp.repo.parse().map_err(|_| Error::UploadUnknown)?;
        let hasher = hex::decode(&cp.hash_state)
            .ok()
            .and_then(|b| Hasher::restore(&b))
            .ok_or(Error::UploadUnknown)?;
        let file = UploadFile::reopen(self.layout.upload_data(id), cp.offset)
            .await
            .map_err(|_| Error::UploadUnknown)?;
        Ok(Session {
            id,
            repo,
            started: cp.started,
            last_active: AtomicU64::new(now_secs()),
            received: AtomicU64::new(cp.offset),
            state: Mutex::new(SessionState {
                file: Some(file),
                hasher,
                offset: cp.offset,
            }),
        })
    }

    /// Persist offset and hash state after a request.
    pub async fn checkpoint(&self, session: &Session, offset: u64, hasher: &Hasher) -> Result<()> {
        let cp = Checkpoint {
            version: 1,
            repo: session.repo.to_string(),
            offset,
            hash_state: hex::encode(hasher.save()),
            started: session.started,
        };
        let bytes = serde_json::to_vec(&cp).map_err(std::io::Error::other)?;
        io::write_atomic(self.layout.upload_state(session.id), bytes).await?;
        Ok(())
    }

    /// Forget a session and delete its files (after commit or cancel).
    pub async fn remove(&self, id: UploadId) -> Result<()> {
        self.table.pin().remove(&id);
        io::remove_dir_all(self.layout.upload_dir(id)).await?;
        Ok(())
    }

    /// Number of sessions this process holds.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Remove sessions idle for longer than `timeout`, including ones on disk that no process
    /// has loaded. Returns how many were removed.
    pub async fn reap(&self, timeout: Duration) -> Result<usize> {
        let cutoff = now_secs().saturating_sub(timeout.as_secs());
        let idle: Vec<Arc<Session>> = self
            .table
            .pin()
            .values()
            .filter(|s| s.last_active.load(Ordering::Relaxed) < cutoff)
            .cloned()
            .collect();
        let mut removed = 0;
        for s in idle {
            // A session being written right now is not idle.
            let Ok(mut guard) = s.state.try_lock() else { continue };
            guard.file = None;
            drop(guard);
            self.remove(s.id).await?;
            removed += 1;
        }
        for name in io::list_dir(self.layout.uploads_dir()).await? {
            let Ok(id) = name.parse::<UploadId>() else { continue };
            if self.table.pin().contains_key(&id) {
                continue;
            }
            let modified = io::modified_secs(self.layout.upload_dir(id)).await?;
            if modified.is_some_and(|m| m < cutoff) {
                io::remove_dir_all(self.layout.upload_dir(id)).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}
