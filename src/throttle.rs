//! Login backoff shared by REST login and Haystack SCRAM: failures are counted per client address and per user name, and after a few free ones each further attempt must wait an exponentially growing delay.
//!
//! Why both keys: per address stops one client guessing many users'
//! passwords; per user stops many addresses guessing one password. The
//! per-user key lets an attacker delay a real user's login for at most
//! [`MAX_DELAY`], never lock them out for good: a bounded nuisance traded
//! for making online guessing thousands of times slower. Dependency-free
//! (std and parking_lot) so protocol servers can use it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Failures allowed before any delay (typos should not be punished).
pub const FREE_FAILURES: u32 = 5;
/// Longest wait between attempts.
pub const MAX_DELAY: Duration = Duration::from_secs(60);
/// A key with no failure for this long is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Keys tracked at most, so a flood of addresses cannot grow memory.
const MAX_KEYS: usize = 65_536;

/// Failed logins since start, by protocol (Prometheus counters).
pub static REST_FAILURES: AtomicU64 = AtomicU64::new(0);
pub static HAYSTACK_FAILURES: AtomicU64 = AtomicU64::new(0);
/// Attempts refused unverified because their key was backing off.
pub static THROTTLED: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last: Instant,
}

/// Delay owed after `failures` consecutive failures.
fn delay(failures: u32) -> Duration {
    if failures < FREE_FAILURES {
        return Duration::ZERO;
    }
    let exp = (failures - FREE_FAILURES).min(16);
    Duration::from_secs(1u64 << exp).min(MAX_DELAY)
}

/// Per-key failure counts.
#[derive(Default)]
pub struct Throttle {
    inner: Mutex<HashMap<String, Entry>>,
}

impl Throttle {
    pub fn new() -> Throttle {
        Throttle::default()
    }

    /// How long the caller must still wait before an attempt for any of
    /// `keys` is verified; `None` = go ahead.
    pub fn check(&self, keys: &[&str]) -> Option<Duration> {
        self.check_at(keys, Instant::now())
    }

    fn check_at(&self, keys: &[&str], now: Instant) -> Option<Duration> {
        let map = self.inner.lock();
        let wait = keys
            .iter()
            .filter_map(|k| map.get(*k))
            .map(|e| (e.last + delay(e.failures)).saturating_duration_since(now))
            .max()
            .filter(|w| !w.is_zero());
        if wait.is_some() {
            THROTTLED.fetch_add(1, Ordering::Relaxed);
        }
        wait
    }

    /// Counts a failed attempt against every key.
    pub fn failed(&self, keys: &[&str]) {
        self.failed_at(keys, Instant::now())
    }

    fn failed_at(&self, keys: &[&str], now: Instant) {
        let mut map = self.inner.lock();
        if map.len() + keys.len() > MAX_KEYS {
            map.retain(|_, e| now.duration_since(e.last) < FORGET_AFTER);
            while map.len() + keys.len() > MAX_KEYS {
                // Still full: forget the stalest key.
                let Some(k) = map
                    .iter()
                    .min_by_key(|(_, e)| e.last)
                    .map(|(k, _)| k.clone())
                else {
                    break;
                };
                map.remove(&k);
            }
        }
        for k in keys {
            let e = map.entry((*k).to_string()).or_insert(Entry {
                failures: 0,
                last: now,
            });
            if now.duration_since(e.last) >= FORGET_AFTER {
                e.failures = 0;
            }
            e.failures = e.failures.saturating_add(1);
            e.last = now;
        }
    }

    /// A successful login clears its keys.
    pub fn succeeded(&self, keys: &[&str]) {
        let mut map = self.inner.lock();
        for k in keys {
            map.remove(*k);
        }
    }
}

/// The throttle keys of an attempt: the client address and the user name.
pub fn keys(peer: std::net::IpAddr, user: &str) -> [String; 2] {
    [format!("ip:{peer}"), format!("user:{user}")]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_failures_are_free_then_the_delay_doubles_up_to_the_cap() {
        assert_eq!(delay(FREE_FAILURES - 1), Duration::ZERO);
        assert_eq!(delay(FREE_FAILURES), Duration::from_secs(1));
        assert_eq!(delay(FREE_FAILURES + 1), Duration::from_secs(2));
        assert_eq!(delay(FREE_FAILURES + 30), MAX_DELAY);
        assert_eq!(delay(u32::MAX), MAX_DELAY);
    }

    #[test]
    fn failures_lock_both_keys_and_success_clears() {
        let t = Throttle::new();
        let t0 = Instant::now();
        for _ in 0..FREE_FAILURES - 1 {
            t.failed_at(&["ip:a", "user:u"], t0);
            assert_eq!(t.check_at(&["ip:a", "user:u"], t0), None);
        }
        t.failed_at(&["ip:a", "user:u"], t0);
        assert_eq!(
            t.check_at(&["ip:b", "user:u"], t0),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            t.check_at(&["ip:a", "user:v"], t0),
            Some(Duration::from_secs(1))
        );
        assert_eq!(t.check_at(&["ip:b", "user:v"], t0), None);
        assert_eq!(
            t.check_at(&["ip:a"], t0 + Duration::from_secs(1)),
            None,
            "the delay runs out"
        );
        t.succeeded(&["ip:a", "user:u"]);
        assert_eq!(t.check_at(&["ip:a", "user:u"], t0), None);
    }

    #[test]
    fn stale_failures_are_forgotten() {
        let t = Throttle::new();
        let t0 = Instant::now();
        for _ in 0..FREE_FAILURES + 3 {
            t.failed_at(&["ip:a"], t0);
        }
        let later = t0 + FORGET_AFTER;
        t.failed_at(&["ip:a"], later);
        assert_eq!(t.check_at(&["ip:a"], later), None);
    }
}
