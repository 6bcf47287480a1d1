//! Haystack watches: subscriptions with leases; a poll returns the records whose live state changed since the previous poll.
//!
//! A watch keeps the last state it reported per record and compares on poll,
//! rather than queueing change events: a poll then costs one read per
//! watched point, coalesces bursts to the latest value, and needs no task
//! listening to the database on the watch's behalf.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::records::RecKey;
use crate::points::{PointDb, PointState};

/// The state a watch last reported for one record (`None` for site/equip,
/// which never change).
/// The alarm state is part of it: an alarm transition or an ack changes the
/// record's alarm tags, so a poll reports it.
type Seen = Option<(
    PointState,
    Option<(crate::points::Value, u8)>,
    Option<AlarmSeen>,
)>;

/// What the alarm tags show: event state, acks, time stamps (not a pending
/// time delay, which no tag shows).
type AlarmSeen = (
    crate::points::alarm::EventState,
    crate::points::alarm::PerTransition<bool>,
    crate::points::alarm::PerTransition<Option<chrono::DateTime<chrono::Utc>>>,
);

struct Watch {
    dis: String,
    owner: String,
    lease: Duration,
    last_touch: Instant,
    recs: Vec<(RecKey, Seen)>,
}

/// Limits that keep watches bounded per user and in total.
pub const MAX_WATCHES: usize = 256;
pub const MAX_WATCHES_PER_USER: usize = 32;
pub const MAX_RECS_PER_WATCH: usize = 10_000;

/// All open watches.
pub struct Watches {
    inner: Mutex<HashMap<String, Watch>>,
    /// The alarm runtime, when alarms run (set once at start-up).
    alarms: std::sync::OnceLock<crate::alarms::Alarms>,
    pub default_lease: Duration,
    pub max_lease: Duration,
}

fn snapshot(db: &PointDb, alarms: Option<&crate::alarms::Alarms>, key: RecKey) -> Seen {
    match key {
        RecKey::Point(pid) => {
            let st = db.read(pid)?;
            let pa = db.priority_array(pid).map(|pa| pa.resolve());
            // `updated` changes on every refresh even when nothing visible
            // does; a watch reports visible changes only.
            let st = PointState {
                updated: chrono::DateTime::<chrono::Utc>::UNIX_EPOCH,
                ..st
            };
            let alarm = alarms
                .and_then(|a| a.state(pid))
                .map(|s| (s.event_state, s.acked, s.time_stamps));
            Some((st, pa, alarm))
        }
        _ => None,
    }
}

impl Watches {
    pub fn new(default_lease: Duration, max_lease: Duration) -> Self {
        Watches {
            inner: Mutex::new(HashMap::new()),
            alarms: std::sync::OnceLock::new(),
            default_lease,
            max_lease,
        }
    }

    /// Makes polls report alarm changes (once, at start-up).
    pub fn set_alarms(&self, a: crate::alarms::Alarms) {
        let _ = self.alarms.set(a);
    }

    fn expire(map: &mut HashMap<String, Watch>, now: Instant) {
        map.retain(|_, w| now.duration_since(w.last_touch) <= w.lease);
    }

    /// Opens a watch, or adds records to an existing one. Returns the watch
    /// id and its lease.
    pub fn subscribe(
        &self,
        db: &PointDb,
        owner: &str,
        watch_id: Option<&str>,
        dis: Option<&str>,
        lease: Option<Duration>,
        keys: &[RecKey],
    ) -> Result<(String, Duration), String> {
        let now = Instant::now();
        let mut map = self.inner.lock();
        Self::expire(&mut map, now);
        let lease = lease.map(|l| l.clamp(Duration::from_secs(1), self.max_lease));
        let id = match watch_id {
            Some(id) => {
                let w = map
                    .get_mut(id)
                    .filter(|w| w.owner == owner)
                    .ok_or_else(|| format!("unknown watch {id:?} (closed or lease expired)"))?;
                if let Some(l) = lease {
                    w.lease = l;
                }
                id.to_string()
            }
            None => {
                if map.len() >= MAX_WATCHES {
                    return Err(format!("too many open watches ({MAX_WATCHES})"));
                }
                if map.values().filter(|w| w.owner == owner).count() >= MAX_WATCHES_PER_USER {
                    return Err(format!(
                        "too many open watches for this user ({MAX_WATCHES_PER_USER}); close some with watchUnsub"
                    ));
                }
                let rnd = super::auth::random_bytes::<8>().ok_or("no randomness available")?;
                let id = format!(
                    "w-{}",
                    rnd.iter().map(|b| format!("{b:02x}")).collect::<String>()
                );
                map.insert(
                    id.clone(),
                    Watch {
                        dis: dis.unwrap_or("watch").to_string(),
                        owner: owner.to_string(),
                        lease: lease.unwrap_or(self.default_lease),
                        last_touch: now,
                        recs: Vec::new(),
                    },
                );
                id
            }
        };
        let w = map.get_mut(&id).ok_or("watch vanished")?;
        w.last_touch = now;
        for k in keys {
            if w.recs.iter().any(|(x, _)| x == k) {
                continue;
            }
            if w.recs.len() >= MAX_RECS_PER_WATCH {
                return Err(format!(
                    "a watch holds at most {MAX_RECS_PER_WATCH} records"
                ));
            }
            // Subscribing reports the current state, so the next poll
            // returns only what changes after it.
            w.recs.push((*k, snapshot(db, self.alarms.get(), *k)));
        }
        Ok((id, w.lease))
    }

    /// Removes records from a watch, or closes it.
    pub fn unsubscribe(
        &self,
        owner: &str,
        id: &str,
        close: bool,
        keys: &[RecKey],
    ) -> Result<(), String> {
        let mut map = self.inner.lock();
        Self::expire(&mut map, Instant::now());
        let Some(w) = map.get_mut(id).filter(|w| w.owner == owner) else {
            return Err(format!("unknown watch {id:?} (closed or lease expired)"));
        };
        if close {
            map.remove(id);
        } else {
            w.recs.retain(|(k, _)| !keys.contains(k));
            w.last_touch = Instant::now();
        }
        Ok(())
    }

    /// Records that changed since the last poll (all of them on refresh),
    /// and the watch's lease.
    pub fn poll(
        &self,
        db: &PointDb,
        owner: &str,
        id: &str,
        refresh: bool,
    ) -> Result<(Vec<RecKey>, Duration), String> {
        let now = Instant::now();
        let mut map = self.inner.lock();
        Self::expire(&mut map, now);
        let Some(w) = map.get_mut(id).filter(|w| w.owner == owner) else {
            return Err(format!("unknown watch {id:?} (closed or lease expired)"));
        };
        w.last_touch = now;
        let mut out = Vec::new();
        for (k, seen) in w.recs.iter_mut() {
            let cur = snapshot(db, self.alarms.get(), *k);
            if refresh || cur != *seen {
                out.push(*k);
            }
            *seen = cur;
        }
        Ok((out, w.lease))
    }

    /// Display name of a watch (for the response meta).
    pub fn dis(&self, id: &str) -> Option<String> {
        self.inner.lock().get(id).map(|w| w.dis.clone())
    }

    /// Open watches (for tests and the about op).
    pub fn len(&self) -> usize {
        let mut map = self.inner.lock();
        Self::expire(&mut map, Instant::now());
        map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
