//! Caps on open upload sessions: per owner (the user, or the client's address when anonymous),
//! per repository and in total, so that one client cannot make the registry hold an unbounded
//! number of sessions for everyone else.
//!
//! Every session of this process holds a [`Ticket`] from the moment it is started (or loaded
//! from disk) until it leaves the session table (committed, cancelled or reaped); dropping the
//! ticket gives its place back. Sessions loaded from disk (after a restart, or started by
//! another process sharing the storage) are counted without being refused: they exist already.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

/// Caps on open upload sessions; `0` means no cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadLimits {
    /// Sessions one owner may have open.
    pub per_owner: usize,
    /// Sessions one repository may have open.
    pub per_repository: usize,
    /// Sessions open in total.
    pub total: usize,
}

impl UploadLimits {
    /// No caps.
    pub const NONE: UploadLimits = UploadLimits {
        per_owner: 0,
        per_repository: 0,
        total: 0,
    };
}

impl Default for UploadLimits {
    /// Far above what a CI fleet keeps open at once (a push holds one session per layer while it
    /// uploads), and far below what would exhaust memory or disk inodes.
    fn default() -> Self {
        UploadLimits {
            per_owner: 1000,
            per_repository: 2000,
            total: 10_000,
        }
    }
}

/// Which cap refused a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadCap {
    /// [`UploadLimits::per_owner`].
    Owner,
    /// [`UploadLimits::per_repository`].
    Repository,
    /// [`UploadLimits::total`].
    Total,
}

impl UploadCap {
    /// The word used in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            UploadCap::Owner => "client",
            UploadCap::Repository => "repository",
            UploadCap::Total => "registry",
        }
    }
}

#[derive(Default)]
struct Counts {
    owners: HashMap<Arc<str>, usize>,
    repos: HashMap<Arc<str>, usize>,
    total: usize,
}

/// Decrement `key` in `map`, removing it at zero, so the map never holds more keys than there
/// are open sessions.
fn release(map: &mut HashMap<Arc<str>, usize>, key: &Arc<str>) {
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

/// The counters behind the caps.
pub struct UploadCaps {
    limits: UploadLimits,
    counts: Arc<Mutex<Counts>>,
}

/// One session's place under the caps; dropping it gives the place back.
pub struct Ticket {
    counts: Arc<Mutex<Counts>>,
    owner: Arc<str>,
    repo: Arc<str>,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket").field("repo", &self.repo).finish()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut c = self.counts.lock();
        release(&mut c.owners, &self.owner);
        release(&mut c.repos, &self.repo);
        c.total = c.total.saturating_sub(1);
    }
}

impl UploadCaps {
    /// Counters enforcing `limits`.
    pub fn new(limits: UploadLimits) -> UploadCaps {
        UploadCaps {
            limits,
            counts: Arc::default(),
        }
    }

    /// The caps in force.
    pub fn limits(&self) -> UploadLimits {
        self.limits
    }

    /// A place for a new session of `owner` in `repo`, or the cap that refuses it.
    pub fn admit(&self, owner: &str, repo: &str) -> Result<Ticket, (UploadCap, usize)> {
        let over = |limit: usize, n: usize| limit > 0 && n >= limit;
        let mut c = self.counts.lock();
        if over(self.limits.total, c.total) {
            return Err((UploadCap::Total, self.limits.total));
        }
        if over(self.limits.per_owner, c.owners.get(owner).copied().unwrap_or(0)) {
            return Err((UploadCap::Owner, self.limits.per_owner));
        }
        if over(self.limits.per_repository, c.repos.get(repo).copied().unwrap_or(0)) {
            return Err((UploadCap::Repository, self.limits.per_repository));
        }
        Ok(self.count(&mut c, owner, repo))
    }

    /// A place for a session that exists already (loaded from disk): never refused.
    pub fn adopt(&self, owner: &str, repo: &str) -> Ticket {
        let mut c = self.counts.lock();
        self.count(&mut c, owner, repo)
    }

    fn count(&self, c: &mut Counts, owner: &str, repo: &str) -> Ticket {
        let owner = intern(&mut c.owners, owner);
        let repo = intern(&mut c.repos, repo);
        c.total += 1;
        Ticket {
            counts: self.counts.clone(),
            owner,
            repo,
        }
    }

    /// Sessions counted now: (total, distinct owners, distinct repositories).
    pub fn counts(&self) -> (usize, usize, usize) {
        let c = self.counts.lock();
        (c.total, c.owners.len(), c.repos.len())
    }
}

/// Count one more for `key`, returning the shared key.
fn intern(map: &mut HashMap<Arc<str>, usize>, key: &str) -> Arc<str> {
    if let Some((k, n)) = map.get_key_value(key).map(|(k, n)| (k.clone(), *n)) {
        map.insert(k.clone(), n + 1);
        return k;
    }
    let k: Arc<str> = key.into();
    map.insert(k.clone(), 1);
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cap_refuses_at_its_limit_and_frees_on_drop() {
        let caps = UploadCaps::new(UploadLimits {
            per_owner: 2,
            per_repository: 3,
            total: 4,
        });
        let a1 = caps.admit("alice", "r").unwrap();
        let _a2 = caps.admit("alice", "r").unwrap();
        assert_eq!(caps.admit("alice", "other").unwrap_err(), (UploadCap::Owner, 2));
        let _b1 = caps.admit("bob", "r").unwrap();
        assert_eq!(caps.admit("bob", "r").unwrap_err(), (UploadCap::Repository, 3));
        let _b2 = caps.admit("bob", "s").unwrap();
        assert_eq!(caps.admit("carol", "t").unwrap_err(), (UploadCap::Total, 4));
        drop(a1);
        assert_eq!(caps.counts(), (3, 2, 2));
        let _a3 = caps.admit("alice", "s").unwrap();
        assert_eq!(caps.counts(), (4, 2, 2));
    }

    #[test]
    fn adopted_sessions_count_but_are_never_refused() {
        let caps = UploadCaps::new(UploadLimits {
            per_owner: 1,
            per_repository: 0,
            total: 0,
        });
        let _a = caps.admit("alice", "r").unwrap();
        let _b = caps.adopt("alice", "r");
        assert_eq!(caps.counts(), (2, 1, 1));
        assert!(caps.admit("alice", "r").is_err());
    }

    #[test]
    fn no_key_outlives_its_sessions() {
        let caps = UploadCaps::new(UploadLimits::NONE);
        let tickets: Vec<Ticket> = (0..100)
            .map(|i| caps.admit(&format!("owner{i}"), &format!("repo{}", i % 7)).unwrap())
            .collect();
        assert_eq!(caps.counts(), (100, 100, 7));
        drop(tickets);
        assert_eq!(caps.counts(), (0, 0, 0));
    }
}
