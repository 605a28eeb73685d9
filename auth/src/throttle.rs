//! Throttling of failed logins: exponential back-off per client address and per user name at
//! that address.
//!
//! Every failed password check counts against two keys: the client address (IPv6 clients by
//! their /64, which one host usually holds whole) and the pair (user name, address). A key
//! may fail a few times for free; from then on each failure doubles the time the key must
//! wait before its next attempt (1 s, 2 s, 4 s, … up to a cap). While a key waits, attempts
//! are refused *before* the password is checked, so a guessing client costs no bcrypt time. A
//! success resets the (user, address) key. A key that has not failed for twice the cap is
//! forgotten.
//!
//! Nothing here depends on whether the user exists: an unknown name is counted like a known
//! one, so the answers (and their timing) say nothing about which names are real. Failures at
//! one address never hold back the same user at another address, so an attacker cannot lock
//! a user out; they can only slow themselves (and whoever shares their address) down.
//!
//! Memory is bounded: at most [`MAX_TRACKED`] keys are kept, and when full the key that was
//! touched longest ago is dropped. User names are kept only as keyed digests.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sha2::{Digest as _, Sha256};

/// Most keys tracked at once (about 100 bytes each).
pub const MAX_TRACKED: usize = 100_000;
/// The first back-off.
const BASE_BACKOFF: Duration = Duration::from_secs(1);

/// Settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Whether failed logins are throttled at all.
    pub enabled: bool,
    /// Failures of one user name at one address before back-off starts.
    pub free_attempts: u32,
    /// Failures from one address (all user names) before back-off starts.
    pub address_free_attempts: u32,
    /// Longest back-off.
    pub max_backoff: Duration,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            enabled: true,
            free_attempts: 5,
            address_free_attempts: 20,
            max_backoff: Duration::from_secs(15 * 60),
        }
    }
}

impl ThrottleConfig {
    /// No throttling.
    pub fn disabled() -> ThrottleConfig {
        ThrottleConfig {
            enabled: false,
            ..ThrottleConfig::default()
        }
    }
}

/// A refused attempt: the client must wait this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many failed logins; retry in {} s", retry_after_secs(*.retry_after))]
pub struct Throttled {
    /// Time until the next attempt is taken.
    pub retry_after: Duration,
}

impl Throttled {
    /// Whole seconds for `Retry-After` (rounded up, at least 1).
    pub fn retry_after_secs(&self) -> u64 {
        retry_after_secs(self.retry_after)
    }
}

fn retry_after_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0).max(u64::from(d.as_secs() == 0))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Address(Option<IpAddr>),
    User([u8; 32], Option<IpAddr>),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last_failure: Instant,
    blocked_until: Instant,
    /// Position in [`State::order`].
    seq: u64,
}

#[derive(Default)]
struct State {
    entries: HashMap<Key, Entry>,
    /// seq → key, oldest touch first.
    order: BTreeMap<u64, Key>,
    next_seq: u64,
}

/// The failed-login book.
pub struct Throttle {
    config: ThrottleConfig,
    capacity: usize,
    salt: [u8; 32],
    state: Mutex<State>,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle")
            .field("config", &self.config)
            .field("tracked", &self.tracked())
            .finish()
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new(ThrottleConfig::default())
    }
}

/// The address as throttled: IPv4 (and v4-mapped IPv6) as is, other IPv6 by its /64.
fn address_key(client: Option<IpAddr>) -> Option<IpAddr> {
    client.map(|c| match c.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    })
}

impl Throttle {
    /// A throttle with these settings.
    pub fn new(config: ThrottleConfig) -> Throttle {
        Throttle::with_capacity(config, MAX_TRACKED)
    }

    /// A throttle that tracks at most `capacity` keys.
    pub fn with_capacity(config: ThrottleConfig, capacity: usize) -> Throttle {
        Throttle {
            config,
            capacity: capacity.max(2),
            salt: rand::random(),
            state: Mutex::new(State::default()),
        }
    }

    /// The settings.
    pub fn config(&self) -> ThrottleConfig {
        self.config
    }

    /// Keys tracked now.
    pub fn tracked(&self) -> usize {
        self.state.lock().entries.len()
    }

    fn keys(&self, user: &str, client: Option<IpAddr>) -> [Key; 2] {
        let addr = address_key(client);
        let mut h = Sha256::new();
        h.update(self.salt);
        h.update(user.as_bytes());
        [Key::Address(addr), Key::User(h.finalize().into(), addr)]
    }

    fn forget_after(&self) -> Duration {
        self.config.max_backoff.saturating_mul(2).max(Duration::from_secs(60))
    }

    /// Whether an attempt by `user` from `client` may be checked now; `Err` while either key
    /// is in back-off.
    pub fn check(&self, user: &str, client: Option<IpAddr>) -> Result<(), Throttled> {
        self.check_at(user, client, Instant::now())
    }

    fn check_at(&self, user: &str, client: Option<IpAddr>, now: Instant) -> Result<(), Throttled> {
        if !self.config.enabled {
            return Ok(());
        }
        let state = self.state.lock();
        let wait = self
            .keys(user, client)
            .iter()
            .filter_map(|k| state.entries.get(k))
            .map(|e| e.blocked_until.saturating_duration_since(now))
            .max()
            .unwrap_or_default();
        if wait.is_zero() {
            Ok(())
        } else {
            Err(Throttled { retry_after: wait })
        }
    }

    /// Count a failed attempt.
    pub fn failed(&self, user: &str, client: Option<IpAddr>) {
        self.failed_at(user, client, Instant::now());
    }

    fn failed_at(&self, user: &str, client: Option<IpAddr>, now: Instant) {
        if !self.config.enabled {
            return;
        }
        let forget = self.forget_after();
        let keys = self.keys(user, client);
        let frees = [self.config.address_free_attempts, self.config.free_attempts];
        let mut state = self.state.lock();
        for (key, free) in keys.into_iter().zip(frees) {
            let old = state.entries.get(&key).copied();
            if let Some(e) = old {
                state.order.remove(&e.seq);
            }
            let failures = match old {
                Some(e) if now.saturating_duration_since(e.last_failure) < forget => e.failures.saturating_add(1),
                _ => 1,
            };
            let blocked_until = if failures > free {
                let doublings = (failures - free - 1).min(31);
                let backoff = BASE_BACKOFF
                    .saturating_mul(1u32 << doublings)
                    .min(self.config.max_backoff);
                now + backoff
            } else {
                now
            };
            let seq = state.next_seq;
            state.next_seq += 1;
            while !state.entries.contains_key(&key) && state.entries.len() >= self.capacity {
                let Some((_, oldest)) = state.order.pop_first() else {
                    break;
                };
                state.entries.remove(&oldest);
            }
            state.order.insert(seq, key);
            state.entries.insert(
                key,
                Entry {
                    failures,
                    last_failure: now,
                    blocked_until,
                    seq,
                },
            );
        }
    }

    /// Count a successful login: the (user, address) key starts afresh. The address key is
    /// left alone, so one good account does not let an address guess at others.
    pub fn succeeded(&self, user: &str, client: Option<IpAddr>) {
        if !self.config.enabled {
            return;
        }
        let [_, user_key] = self.keys(user, client);
        let mut state = self.state.lock();
        if let Some(e) = state.entries.remove(&user_key) {
            state.order.remove(&e.seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(free: u32, address_free: u32, max: u64) -> ThrottleConfig {
        ThrottleConfig {
            enabled: true,
            free_attempts: free,
            address_free_attempts: address_free,
            max_backoff: Duration::from_secs(max),
        }
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn back_off_doubles_after_the_free_attempts_and_is_capped() {
        let t = Throttle::new(cfg(3, 100, 10));
        let now = Instant::now();
        let a = ip("192.0.2.1");
        let mut waits = Vec::new();
        let mut at = now;
        for _ in 0..8 {
            t.check_at("alice", a, at).unwrap();
            t.failed_at("alice", a, at);
            let wait = t
                .check_at("alice", a, at)
                .err()
                .map(|e| e.retry_after)
                .unwrap_or_default();
            waits.push(wait.as_secs());
            at += wait;
        }
        assert_eq!(waits, vec![0, 0, 0, 1, 2, 4, 8, 10]);
        assert!(t.check_at("alice", a, at).is_ok(), "the back-off has passed");
        t.failed_at("alice", a, at);
        assert_eq!(t.check_at("alice", a, at).unwrap_err().retry_after_secs(), 10);
        // A minute (at least twice the cap) without a failure: forgotten.
        let later = at + Duration::from_secs(61);
        t.failed_at("alice", a, later);
        assert!(t.check_at("alice", a, later).is_ok());
    }

    #[test]
    fn a_success_resets_the_user_and_other_addresses_are_not_held_back() {
        let t = Throttle::new(cfg(2, 100, 60));
        let now = Instant::now();
        let (attacker, office) = (ip("198.51.100.7"), ip("203.0.113.9"));
        for _ in 0..5 {
            t.failed_at("alice", attacker, now);
        }
        assert!(t.check_at("alice", attacker, now).is_err());
        assert!(t.check_at("alice", office, now).is_ok(), "alice elsewhere logs in");
        assert!(t.check_at("bob", attacker, now).is_ok(), "per user at an address");
        t.failed_at("alice", office, now);
        t.failed_at("alice", office, now);
        t.succeeded("alice", office);
        t.failed_at("alice", office, now);
        t.failed_at("alice", office, now);
        assert!(t.check_at("alice", office, now).is_ok(), "the success started afresh");
    }

    #[test]
    fn the_address_key_covers_every_user_name() {
        let t = Throttle::new(cfg(5, 3, 60));
        let now = Instant::now();
        let a = ip("2001:db8:1:2:aaaa::1");
        for user in ["u1", "u2", "u3", "u4"] {
            t.failed_at(user, a, now);
        }
        assert!(t.check_at("anyone", a, now).is_err(), "password spraying is slowed");
        assert!(
            t.check_at("anyone", ip("2001:db8:1:2:bbbb::9"), now).is_err(),
            "the same /64"
        );
        assert!(t.check_at("anyone", ip("2001:db8:1:3::1"), now).is_ok());
        assert!(t.check_at("anyone", ip("192.0.2.1"), now).is_ok());
    }

    #[test]
    fn unknown_and_known_users_are_counted_alike_and_disabled_does_nothing() {
        // The throttle never learns whether a name exists: the same failures give the same waits.
        let t = Throttle::new(cfg(1, 100, 60));
        let now = Instant::now();
        for user in ["alice", "no-such-user"] {
            t.failed_at(user, ip("192.0.2.1"), now);
            t.failed_at(user, ip("192.0.2.1"), now);
        }
        assert_eq!(
            t.check_at("alice", ip("192.0.2.1"), now),
            t.check_at("no-such-user", ip("192.0.2.1"), now)
        );
        let off = Throttle::new(ThrottleConfig::disabled());
        for _ in 0..100 {
            off.failed("alice", None);
        }
        assert!(off.check("alice", None).is_ok());
        assert_eq!(off.tracked(), 0);
    }

    #[test]
    fn memory_is_bounded_and_the_stalest_key_goes() {
        let t = Throttle::with_capacity(cfg(1, 1_000_000, 60), 50);
        let now = Instant::now();
        let attacker = ip("198.51.100.7");
        t.failed_at("victim", ip("192.0.2.1"), now);
        t.failed_at("victim", ip("192.0.2.1"), now);
        for i in 0..10_000 {
            t.failed_at(&format!("spray-{i}"), attacker, now);
            assert!(t.tracked() <= 50);
        }
        // The attacker's address key is touched by every failure, so it is never the stalest.
        let state = t.state.lock();
        assert!(state.entries.contains_key(&Key::Address(attacker)));
        assert_eq!(state.entries.len(), state.order.len());
    }

    #[test]
    fn retry_after_rounds_up() {
        let s = |ms| {
            Throttled {
                retry_after: Duration::from_millis(ms),
            }
            .retry_after_secs()
        };
        assert_eq!((s(1), s(999), s(1000), s(1001), s(0)), (1, 1, 1, 2, 1));
    }
}
