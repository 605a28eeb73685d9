//! Upload sessions: a lock-free table of sessions, each with its running hash and offset,
//! checkpointed to disk after every request so a session survives a restart and can be continued
//! by any Berth process that shares the storage directory. A session's data file is open only
//! while a request writes it, so idle sessions hold no file descriptors; how many sessions may
//! be open at once is capped per owner, per repository and in total ([`crate::upload_caps`]).
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
use crate::upload_caps::{Ticket, UploadCaps, UploadLimits};

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The mutable part of a session, held while a request writes.
#[derive(Debug)]
pub struct SessionState {
    /// The data file, open while a request holds the session (`None` between requests).
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
    /// Who started it (recorded in the checkpoint, so that it counts for them after a restart).
    owner: String,
    started: u64,
    last_active: AtomicU64,
    state: Mutex<SessionState>,
    /// Its place under the caps, given back when the session leaves the table ([`Uploads::drop_entry`]:
    /// the table frees removed entries later, so dropping the session would be too late).
    ticket: parking_lot::Mutex<Option<Ticket>>,
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
        // Unlock, and close the file: a session holds no descriptor between requests.
        if let Some(f) = self.0.file.take() {
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
    /// The session's owner (absent in checkpoints written before owners were recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
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
fn checkpoint_bytes(session: &Session, offset: u64, hasher: &Hasher) -> Result<Vec<u8>> {
    let cp = Checkpoint {
        version: 1,
        repo: session.repo.to_string(),
        offset,
        hash_state: hex::encode(hasher.save()),
        started: session.started,
        owner: Some(session.owner.clone()),
    };
    Ok(serde_json::to_vec(&cp).map_err(std::io::Error::other)?)
}

/// The sessions this process has open.
pub struct Uploads {
    layout: Layout,
    table: papaya::HashMap<UploadId, Arc<Session>>,
    caps: UploadCaps,
}

impl Uploads {
    /// An empty table over `layout`, with `limits` on how many sessions may be open.
    pub fn new(layout: Layout, limits: UploadLimits) -> Uploads {
        Uploads {
            layout,
            table: papaya::HashMap::new(),
            caps: UploadCaps::new(limits),
        }
    }

    /// The caps on open sessions.
    pub fn caps(&self) -> &UploadCaps {
        &self.caps
    }

    /// Start a session of `owner` (the user, or the client's address; empty when unknown),
    /// unless a cap refuses it.
    pub async fn start(&self, repo: &RepoName, owner: &str) -> Result<Arc<Session>> {
        let ticket = self
            .caps
            .admit(owner, repo.as_str())
            .map_err(|(cap, limit)| Error::TooManyUploads { cap, limit })?;
        let id = UploadId::random();
        let now = now_secs();
        let hasher = Hasher::new(Algorithm::Sha256);
        let session = Arc::new(Session {
            id,
            repo: repo.clone(),
            owner: owner.to_owned(),
            started: now,
            last_active: AtomicU64::new(now),
            state: Mutex::new(SessionState {
                file: None,
                hasher,
                offset: 0,
            }),
            ticket: parking_lot::Mutex::new(Some(ticket)),
        });
        let first = checkpoint_bytes(&session, 0, &Hasher::new(Algorithm::Sha256))?;
        UploadFile::create(self.layout.upload_data(id), self.layout.upload_state(id), first).await?;
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
        let owner = cp.owner.unwrap_or_default();
        Ok(Session {
            id,
            ticket: parking_lot::Mutex::new(Some(self.caps.adopt(&owner, repo.as_str()))),
            repo,
            owner,
            started: cp.started,
            last_active: AtomicU64::new(now_secs()),
            state: Mutex::new(SessionState {
                file: None,
                hasher,
                offset: cp.offset,
            }),
        })
    }

    /// Take a session for writing: open its data file and lock it. A session another request
    /// (of any process) is writing is refused at once rather than waited for. The state is the
    /// checkpoint's, and the data file is cut to it. The guard closes the file again.
    pub async fn lock<'a>(&self, session: &'a Session) -> Result<SessionGuard<'a>> {
        let guard = session.state.try_lock().map_err(|_| Error::UploadBusy)?;
        let mut guard = SessionGuard(guard);
        session.last_active.store(now_secs(), Ordering::Relaxed);
        let (data, state) = (
            self.layout.upload_data(session.id),
            self.layout.upload_state(session.id),
        );
        let claimed = match UploadFile::open_claimed(data, state).await {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Err(Error::UploadBusy),
            Err(e) => return Err(e.into()),
        };
        let Some((file, raw, len)) = claimed else {
            // Committed or cancelled (perhaps by another process): forget it here too.
            self.drop_entry(session.id);
            return Err(Error::UploadUnknown);
        };
        // From here the file lock is held: the guard releases it.
        guard.file = Some(file);
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

    /// A session's checkpoint for `offset` and `hasher`, as [`Uploads::checkpoint`] writes it.
    pub fn checkpoint_bytes(&self, session: &Session, offset: u64, hasher: &Hasher) -> Result<Vec<u8>> {
        checkpoint_bytes(session, offset, hasher)
    }

    /// Persist offset and hash state after a request (with the session still taken).
    pub async fn checkpoint(&self, session: &Session, offset: u64, hasher: &Hasher) -> Result<()> {
        let bytes = checkpoint_bytes(session, offset, hasher)?;
        io::write_atomic(self.layout.upload_state(session.id), bytes).await?;
        Ok(())
    }

    /// Forget a session whose files are gone (committed: the commit removed them) or may have
    /// changed on disk (a later request loads it again from its checkpoint).
    pub fn forget(&self, id: UploadId) {
        self.drop_entry(id);
    }

    /// Forget a session and delete its files (cancelled, or a failed commit left no data).
    pub async fn remove(&self, id: UploadId) -> Result<()> {
        self.forget(id);
        io::remove_dir_all(self.layout.upload_dir(id)).await?;
        Ok(())
    }

    /// Remove a session from the table and give its place under the caps back.
    fn drop_entry(&self, id: UploadId) {
        if let Some(s) = self.table.pin().remove(&id) {
            s.ticket.lock().take();
        }
    }

    /// Number of sessions this process has open.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Drop from the table the sessions this process has not used for `timeout` (which gives
    /// their places under the caps back), and delete sessions on disk that no process has
    /// written for `timeout` (judged by their directory, which every checkpoint touches) and
    /// that no request holds. Returns how many were deleted.
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
            // so only this process's entry goes (a later request loads it again).
            let Ok(_guard) = s.state.try_lock() else { continue };
            self.drop_entry(s.id);
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
                self.drop_entry(id);
                removed += 1;
            }
        }
        Ok(removed)
    }
}
