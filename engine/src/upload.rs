//! Upload sessions: a lock-free table of sessions, each with its open data file, running hash
//! and offset, checkpointed to disk after every request so a session survives a restart and can
//! be continued by any Berth process that shares the storage directory.
//!
//! Across processes, the data file's `flock` orders requests: a request takes it, adopts the
//! checkpoint on disk (another process may have moved the session on, or died half-way through
//! a write, in which case the unacknowledged tail is cut off), writes, checkpoints, and lets go.

use std::ops::{Deref, DerefMut};
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

impl SessionState {
    /// The open data file.
    pub fn file(&self) -> Result<&UploadFile> {
        self.file.as_ref().ok_or(Error::UploadUnknown)
    }
}

/// One upload session.
pub struct Session {
    /// Its id.
    pub id: UploadId,
    /// The repository it uploads into.
    pub repo: RepoName,
    started: u64,
    last_active: AtomicU64,
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

/// A session taken for writing by one request: in this process (its mutex) and in every process
/// sharing the storage (the data file's lock, released when the guard goes).
pub struct SessionGuard<'a>(MutexGuard<'a, SessionState>);

impl Deref for SessionGuard<'_> {
    type Target = SessionState;
    fn deref(&self) -> &SessionState {
        &self.0
    }
}

impl DerefMut for SessionGuard<'_> {
    fn deref_mut(&mut self) -> &mut SessionState {
        &mut self.0
    }
}

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        if let Some(f) = &self.0.file {
            f.unlock();
        }
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

impl Checkpoint {
    fn parse(raw: &[u8]) -> Result<(Checkpoint, Hasher)> {
        let cp: Checkpoint = serde_json::from_slice(raw).map_err(|_| Error::UploadUnknown)?;
        let hasher = hex::decode(&cp.hash_state)
            .ok()
            .and_then(|b| Hasher::restore(&b))
            .ok_or(Error::UploadUnknown)?;
        Ok((cp, hasher))
    }
}

/// A session's checkpoint as stored in its `state` file.
fn checkpoint_bytes(repo: &RepoName, offset: u64, hasher: &Hasher, started: u64) -> Result<Vec<u8>> {
    let cp = Checkpoint {
        version: 1,
        repo: repo.to_string(),
        offset,
        hash_state: hex::encode(hasher.save()),
        started,
    };
    Ok(serde_json::to_vec(&cp).map_err(std::io::Error::other)?)
}

/// The sessions this process has open.
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
        let now = now_secs();
        let hasher = Hasher::new(Algorithm::Sha256);
        let first = checkpoint_bytes(repo, 0, &hasher, now)?;
        let file = UploadFile::create(self.layout.upload_data(id), self.layout.upload_state(id), first).await?;
        let session = Arc::new(Session {
            id,
            repo: repo.clone(),
            started: now,
            last_active: AtomicU64::new(now),
            state: Mutex::new(SessionState {
                file: Some(file),
                hasher: hasher.clone(),
                offset: 0,
            }),
        });
        self.table.pin().insert(id, session.clone());
        Ok(session)
    }

    /// Find a session of `repo`, opening it from disk when this process does not have it (after
    /// a restart, or when another process started it).
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
        let (cp, hasher) = Checkpoint::parse(&raw)?;
        let repo: RepoName = cp.repo.parse().map_err(|_| Error::UploadUnknown)?;
        let file = UploadFile::reopen(self.layout.upload_data(id))
            .await
            .map_err(|_| Error::UploadUnknown)?;
        Ok(Session {
            id,
            repo,
            started: cp.started,
            last_active: AtomicU64::new(now_secs()),
            state: Mutex::new(SessionState {
                file: Some(file),
                hasher,
                offset: cp.offset,
            }),
        })
    }

    /// Take a session for writing. A session another request (of any process) is writing is
    /// refused at once rather than waited for. The state is the checkpoint's, and the data file
    /// is cut to it.
    pub async fn lock<'a>(&self, session: &'a Session) -> Result<SessionGuard<'a>> {
        let guard = session.state.try_lock().map_err(|_| Error::UploadBusy)?;
        let mut guard = SessionGuard(guard);
        session.last_active.store(now_secs(), Ordering::Relaxed);
        let claimed = match guard.file()?.claim(self.layout.upload_state(session.id)).await {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                drop(guard);
                return Err(Error::UploadBusy);
            }
            Err(e) => return Err(e.into()),
        };
        // From here the file lock is held: the guard releases it.
        let Some((raw, len)) = claimed else {
            // Committed or cancelled (perhaps by another process): forget it here too.
            guard.file = None;
            self.table.pin().remove(&session.id);
            return Err(Error::UploadUnknown);
        };
        let (cp, hasher) = Checkpoint::parse(&raw)?;
        if len < cp.offset {
            return Err(Error::Io(std::io::Error::other(format!(
                "upload data ({len} bytes) is shorter than its checkpoint ({} bytes)",
                cp.offset
            ))));
        }
        if len > cp.offset {
            // A request that was never acknowledged (its process died mid-write) left a tail.
            guard.file()?.truncate(cp.offset).await?;
        }
        guard.offset = cp.offset;
        guard.hasher = hasher;
        Ok(guard)
    }

    /// Bytes of a session that the last finished request left, from its checkpoint (so every
    /// process sharing the storage answers the same).
    pub async fn status(&self, repo: &RepoName, id: UploadId) -> Result<u64> {
        let raw = io::read_small(self.layout.upload_state(id))
            .await?
            .ok_or(Error::UploadUnknown)?;
        let (cp, _) = Checkpoint::parse(&raw)?;
        if cp.repo != repo.as_str() {
            return Err(Error::UploadUnknown);
        }
        Ok(cp.offset)
    }

    /// Persist offset and hash state after a request (with the session still taken).
    pub async fn checkpoint(&self, session: &Session, offset: u64, hasher: &Hasher) -> Result<()> {
        let bytes = checkpoint_bytes(&session.repo, offset, hasher, session.started)?;
        io::write_atomic(self.layout.upload_state(session.id), bytes).await?;
        Ok(())
    }

    /// Forget a session whose files are gone (committed: the commit removed them) or may have
    /// changed on disk (a later request loads it again from its checkpoint).
    pub fn forget(&self, id: UploadId) {
        self.table.pin().remove(&id);
    }

    /// Forget a session and delete its files (cancelled, or a failed commit left no data).
    pub async fn remove(&self, id: UploadId) -> Result<()> {
        self.forget(id);
        io::remove_dir_all(self.layout.upload_dir(id)).await?;
        Ok(())
    }

    /// Number of sessions this process has open.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Close sessions this process has not used for `timeout`, and delete sessions on disk that
    /// no process has written for `timeout` (judged by their directory, which every checkpoint
    /// touches) and that no request holds. Returns how many were deleted.
    pub async fn reap(&self, timeout: Duration) -> Result<usize> {
        let cutoff = now_secs().saturating_sub(timeout.as_secs());
        let idle: Vec<Arc<Session>> = self
            .table
            .pin()
            .values()
            .filter(|s| s.last_active.load(Ordering::Relaxed) < cutoff)
            .cloned()
            .collect();
        for s in idle {
            // A session being written right now is not idle; another process may still use it,
            // so only this process's handle goes.
            let Ok(mut guard) = s.state.try_lock() else { continue };
            guard.file = None;
            self.table.pin().remove(&s.id);
        }
        let mut removed = 0;
        for name in io::list_dir(self.layout.uploads_dir()).await? {
            let Ok(id) = name.parse::<UploadId>() else { continue };
            if self
                .table
                .pin()
                .get(&id)
                .is_some_and(|s| s.last_active.load(Ordering::Relaxed) >= cutoff)
            {
                continue;
            }
            let dir = self.layout.upload_dir(id);
            let modified = io::modified_secs(dir.clone()).await?;
            if modified.is_some_and(|m| m < cutoff)
                && io::remove_session_if_idle(dir, self.layout.upload_data(id)).await?
            {
                self.table.pin().remove(&id);
                removed += 1;
            }
        }
        Ok(removed)
    }
}
