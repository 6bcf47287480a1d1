//! Durable state in SQLite (WAL): every command point's priority array, the audit log, and point history; restored at start-up.
//!
//! Durability: WAL with `synchronous = NORMAL` makes every committed
//! transaction survive a process crash (kill -9); only an OS crash or power
//! loss can lose the last transactions. Commands are committed inside
//! `PointDb::write` before the write is acknowledged (see [`Persister`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Value as J};

pub mod alarms;
mod datadir;
pub use datadir::{DataDirLock, StoreOptions, DB_FILE, LOCK_FILE};

use crate::points::{
    Kind, Persister, PointDb, PointId, PriorityArray, Protocol, Sample, SlotValue, Source, Value,
    WriteRecord, PRIORITY_LEVELS,
};

/// Schema migrations, applied in order; `PRAGMA user_version` records how
/// many have run. Append only: never edit a released migration.
const MIGRATIONS: &[&str] = &[
    // 1: priority arrays, audit log, history.
    "CREATE TABLE priority_array (
        point TEXT PRIMARY KEY,
        array TEXT NOT NULL,
        updated TEXT NOT NULL
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        kind TEXT NOT NULL,
        target TEXT,
        protocol TEXT,
        peer TEXT,
        user TEXT,
        priority INTEGER,
        requested TEXT,
        old TEXT,
        new TEXT,
        result TEXT NOT NULL,
        detail TEXT
    );
    CREATE INDEX audit_at ON audit(at);
    CREATE INDEX audit_kind ON audit(kind, id);
    CREATE INDEX audit_target ON audit(target, id);
    CREATE INDEX audit_protocol ON audit(protocol, id);
    CREATE TABLE history (
        point TEXT NOT NULL,
        at INTEGER NOT NULL,
        value REAL NOT NULL
    );
    CREATE INDEX history_point_at ON history(point, at);",
    // 2: the shared user store (REST JWT and Haystack SCRAM) and secrets.
    "CREATE TABLE users (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        salt TEXT NOT NULL,
        iterations INTEGER NOT NULL,
        stored_key TEXT NOT NULL,
        server_key TEXT NOT NULL,
        created TEXT NOT NULL
    );
    CREATE TABLE secrets (
        name TEXT PRIMARY KEY,
        value BLOB NOT NULL
    );",
    // 3: routes created or changed through the operator API (desired state).
    // doc NULL = a tombstone: a route of the config file deleted by the API.
    "CREATE TABLE routes (
        name TEXT PRIMARY KEY,
        doc TEXT,
        updated TEXT NOT NULL
    );",
    // 4: output profiles created or changed through the operator API.
    // doc NULL = a tombstone: a profile of the config file deleted by the API.
    "CREATE TABLE profiles (
        number INTEGER PRIMARY KEY,
        doc TEXT,
        updated TEXT NOT NULL
    );",
    // 5: token revocation and API keys. `epoch` is a random number
    // replaced at every password change: a JWT carries the epoch it was
    // issued under, so changing the password (or removing and re-adding
    // the user) revokes every older token. API keys are kept as SHA-256
    // of a 256-bit random key: never the key itself.
    "ALTER TABLE users ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE api_keys (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        hash BLOB NOT NULL UNIQUE,
        created TEXT NOT NULL
    );",
    // 6: the point-block slot of each route (issue 20), kept across
    // restarts and reorders.
    "CREATE TABLE route_slots (
        name TEXT PRIMARY KEY,
        slot INTEGER NOT NULL UNIQUE
    );",
    // 7: alarms (issue 21, persist/alarms.rs): the live event state of
    // each alarm-capable point, and the transition history with its acks.
    "CREATE TABLE alarm_state (
        point TEXT PRIMARY KEY,
        event_state TEXT NOT NULL,
        ts_offnormal TEXT,
        ts_fault TEXT,
        ts_normal TEXT,
        acked_offnormal INTEGER NOT NULL,
        acked_fault INTEGER NOT NULL,
        acked_normal INTEGER NOT NULL,
        offnormal_value TEXT,
        updated TEXT NOT NULL
    );
    CREATE TABLE alarm_history (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        point TEXT NOT NULL,
        route TEXT,
        from_state TEXT NOT NULL,
        to_state TEXT NOT NULL,
        kind TEXT NOT NULL,
        notify INTEGER NOT NULL,
        ack_required INTEGER NOT NULL,
        priority INTEGER NOT NULL,
        value TEXT,
        reason TEXT NOT NULL,
        acked_at TEXT,
        ack_protocol TEXT,
        ack_peer TEXT,
        ack_user TEXT,
        ack_comment TEXT
    );
    CREATE INDEX alarm_history_point ON alarm_history(point, id);
    CREATE INDEX alarm_history_route ON alarm_history(route, id);
    CREATE INDEX alarm_history_at ON alarm_history(at);",
    // 8: the route an alarm state was judged for (a state never carries
    // over to the next route given the same slot; alarms/mod.rs).
    "ALTER TABLE alarm_state ADD COLUMN route TEXT;",
];

/// A stored user: SCRAM-SHA-256 keys only, never the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub name: String,
    pub role: String,
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
    /// Token epoch: tokens issued under another epoch are refused.
    pub epoch: i64,
}

/// A stored API key: its name, role and creation time (never the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRow {
    pub name: String,
    pub role: String,
    pub created: String,
}

/// `[audit]` and `[history]` settings.
#[derive(Debug, Clone)]
pub struct PersistConfig {
    /// Audit events kept (oldest pruned), default 100,000 (seed 001).
    pub audit_retention: usize,
    /// History kept, default 7 days (seed 001).
    pub history_retention: std::time::Duration,
}

impl Default for PersistConfig {
    fn default() -> Self {
        PersistConfig {
            audit_retention: 100_000,
            history_retention: std::time::Duration::from_secs(7 * 86_400),
        }
    }
}

/// `[audit]`: how many audit events are kept.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditSection {
    pub retention: usize,
}

impl Default for AuditSection {
    fn default() -> Self {
        AuditSection {
            retention: PersistConfig::default().audit_retention,
        }
    }
}

impl crate::section::Section for AuditSection {
    fn validate(&self) -> Vec<crate::section::Problem> {
        if self.retention < 1 {
            let m = "expected a number of events >= 1";
            return vec![crate::section::Problem::new("retention", m)];
        }
        Vec::new()
    }
}

/// `[history]`: how long point history is kept.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistorySection {
    #[serde(with = "crate::section::duration")]
    pub retention: std::time::Duration,
}

impl Default for HistorySection {
    fn default() -> Self {
        HistorySection {
            retention: PersistConfig::default().history_retention,
        }
    }
}

impl crate::section::Section for HistorySection {
    fn validate(&self) -> Vec<crate::section::Problem> {
        if self.retention < std::time::Duration::from_secs(60) {
            let m = "expected a duration such as \"7d\" (at least 1min)";
            return vec![crate::section::Problem::new("retention", m)];
        }
        Vec::new()
    }
}

impl PersistConfig {
    /// The store's settings from `[audit]` and `[history]`.
    pub fn new(audit: &AuditSection, history: &HistorySection) -> Self {
        PersistConfig {
            audit_retention: audit.retention,
            history_retention: history.retention,
        }
    }
}

/// Audit query filters (all optional) and paging.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub kind: Option<String>,
    /// Point id or route name.
    pub target: Option<String>,
    /// Protocol (`bacnet`, `modbus`, `haystack`, `rest`, `internal`).
    pub source: Option<String>,
    /// Only events with an id below this (the `next` of the previous page).
    pub before_id: Option<i64>,
    pub limit: usize,
}

/// One stored audit event.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    pub id: i64,
    pub at: String,
    pub kind: String,
    pub target: Option<String>,
    pub protocol: Option<String>,
    pub peer: Option<String>,
    pub user: Option<String>,
    pub priority: Option<i64>,
    pub requested: Option<String>,
    pub old: Option<String>,
    pub new: Option<String>,
    pub result: String,
    pub detail: Option<String>,
}

impl AuditEvent {
    pub fn to_json(&self) -> J {
        json!({
            "id": self.id, "at": self.at, "kind": self.kind, "target": self.target,
            "protocol": self.protocol, "peer": self.peer, "user": self.user,
            "priority": self.priority, "requested": self.requested, "old": self.old,
            "new": self.new, "result": self.result, "detail": self.detail,
        })
    }
}

/// The SQLite store. One connection behind a mutex: SQLite serialises
/// writers anyway, and commands are rare next to reads of the in-memory
/// point database.
pub struct Store {
    conn: Mutex<Connection>,
    audit_cap: i64,
    pub path: PathBuf,
}

fn ts(t: DateTime<Utc>) -> String {
    // Fixed-width UTC with milliseconds sorts lexically in time order.
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// Text form of a value in the audit log and stored arrays.
pub fn value_text(v: Option<Value>) -> Option<String> {
    v.map(|v| match v {
        Value::Number(n) => format!("{n}"),
        Value::Bool(b) => format!("{b}"),
        Value::Enum(e) => format!("#{e}"),
    })
}

fn value_json(v: Value) -> J {
    match v {
        Value::Number(n) => json!({"n": n}),
        Value::Bool(b) => json!({"b": b}),
        Value::Enum(e) => json!({"e": e}),
    }
}

fn value_from_json(j: &J) -> Option<Value> {
    if let Some(n) = j.get("n").and_then(J::as_f64) {
        return Some(Value::Number(n));
    }
    if let Some(b) = j.get("b").and_then(J::as_bool) {
        return Some(Value::Bool(b));
    }
    j.get("e")
        .and_then(J::as_u64)
        .and_then(|e| u16::try_from(e).ok())
        .map(Value::Enum)
}

fn protocol_from(s: &str) -> Protocol {
    match s {
        "bacnet" => Protocol::Bacnet,
        "modbus" => Protocol::Modbus,
        "haystack" => Protocol::Haystack,
        "rest" => Protocol::Rest,
        "mqtt" => Protocol::Mqtt,
        _ => Protocol::Internal,
    }
}

fn array_json(pa: &PriorityArray) -> String {
    let slots: Vec<J> = pa
        .slots
        .iter()
        .map(|s| match s {
            None => J::Null,
            Some(s) => json!({
                "v": value_json(s.value),
                "protocol": s.who.protocol.as_str(),
                "peer": s.who.peer.map(|p| p.to_string()),
                "user": s.who.user,
                "at": ts(s.at),
            }),
        })
        .collect();
    json!({"slots": slots, "default": value_json(pa.default)}).to_string()
}

fn array_from_json(text: &str) -> Option<PriorityArray> {
    let j: J = serde_json::from_str(text).ok()?;
    let default = value_from_json(j.get("default")?)?;
    let mut pa = PriorityArray {
        slots: Default::default(),
        default,
    };
    let slots = j.get("slots")?.as_array()?;
    for (i, s) in slots.iter().enumerate().take(PRIORITY_LEVELS) {
        if s.is_null() {
            continue;
        }
        let at = s
            .get("at")
            .and_then(J::as_str)
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(Utc::now);
        pa.slots[i] = Some(SlotValue {
            value: value_from_json(s.get("v")?)?,
            who: Source {
                protocol: protocol_from(s.get("protocol").and_then(J::as_str).unwrap_or("")),
                peer: s
                    .get("peer")
                    .and_then(J::as_str)
                    .and_then(|p| p.parse().ok()),
                user: s.get("user").and_then(J::as_str).map(String::from),
            },
            at,
        });
    }
    Some(pa)
}

impl Store {
    /// Opens (creating) `castpoint.db` in `dir` and applies migrations,
    /// with the secure defaults of [`StoreOptions`].
    pub fn open(dir: &Path, audit_cap: usize) -> anyhow::Result<Store> {
        Store::open_with(dir, audit_cap, &StoreOptions::default())
    }

    /// Opens (creating) `castpoint.db` in `dir` and applies migrations. The
    /// start-up checks: the data dir is created 0700 and the database 0600
    /// (whatever the umask); a data dir or database open to group/others is
    /// made private when this user owns it and refused otherwise, unless
    /// `opts` allows it; a 0-byte database is refused (not
    /// taken for a fresh one); `PRAGMA quick_check` must pass.
    pub fn open_with(dir: &Path, audit_cap: usize, opts: &StoreOptions) -> anyhow::Result<Store> {
        datadir::create_private_dir(dir)?;
        datadir::secure_modes(dir, opts.allow_insecure_permissions)?;
        let path = dir.join(datadir::DB_FILE);
        datadir::ensure_db(&path)?;
        let damaged = |e: &dyn std::fmt::Display| {
            anyhow::anyhow!(
                "{p}: {e}. The database is damaged or not a castpoint database: restore it \
                 from a backup, or move it away to start empty: mv '{p}' '{p}.damaged'",
                p = path.display()
            )
        };
        let conn = Connection::open(&path)
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| damaged(&e))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // A damaged file must stop the start rather than be half-read: it
        // costs one pass over the database (about a second per GB).
        let problems: Vec<String> = conn
            .prepare("PRAGMA quick_check(5)")
            .and_then(|mut st| {
                st.query_map([], |r| r.get::<_, String>(0))?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(|e| damaged(&e))?;
        if problems != ["ok"] {
            return Err(damaged(&format_args!(
                "integrity check (PRAGMA quick_check) failed: {}",
                problems.join("; ")
            )));
        }
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let version = usize::try_from(version).unwrap_or(0);
        if version > MIGRATIONS.len() {
            anyhow::bail!(
                "{} has schema version {version}, newer than this castpoint ({}): refusing to downgrade",
                path.display(),
                MIGRATIONS.len()
            );
        }
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = conn.unchecked_transaction()?;
            tx.execute_batch(m)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(Store {
            conn: Mutex::new(conn),
            audit_cap: i64::try_from(audit_cap.max(1)).unwrap_or(i64::MAX),
            path,
        })
    }

    pub fn schema_version(&self) -> i64 {
        self.conn
            .lock()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap_or(0)
    }

    /// Restores every stored priority array into the database; arrays of
    /// points that no longer exist or no longer validate are skipped (logged).
    pub fn restore(&self, db: &PointDb) -> anyhow::Result<usize> {
        let rows: Vec<(String, String)> = {
            let c = self.conn.lock();
            let mut st = c.prepare("SELECT point, array FROM priority_array")?;
            let rows = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            rows
        };
        let mut n = 0;
        for (point, text) in rows {
            // Route blocks are not present yet at start: restore them too.
            let Some(id) = db.lookup_any(&point) else {
                tracing::warn!("stored commands for unknown point {point} ignored");
                continue;
            };
            match array_from_json(&text) {
                Some(pa) => match db.restore_priority_array(id, pa) {
                    Ok(()) => n += 1,
                    Err(e) => tracing::warn!("stored commands for {point} not restored: {e}"),
                },
                None => tracing::warn!("stored commands for {point} unreadable, ignored"),
            }
        }
        Ok(n)
    }

    /// Appends a non-write event (restart, route change) to the audit log.
    pub fn record_event(
        &self,
        kind: &str,
        target: Option<&str>,
        source: &Source,
        result: &str,
        detail: &str,
    ) -> anyhow::Result<i64> {
        let c = self.conn.lock();
        let tx = c.unchecked_transaction()?;
        tx.execute(
            "INSERT INTO audit (at, kind, target, protocol, peer, user, result, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                ts(Utc::now()),
                kind,
                target,
                source.protocol.as_str(),
                source.peer.map(|p| p.to_string()),
                source.user,
                result,
                detail
            ],
        )?;
        let id = tx.last_insert_rowid();
        self.prune_audit(&tx, id)?;
        tx.commit()?;
        Ok(id)
    }

    fn prune_audit(&self, c: &Connection, last_id: i64) -> rusqlite::Result<()> {
        // Ids only grow, so the newest `cap` events are the ids above
        // last - cap: a primary-key range delete, cheap at any size.
        c.execute(
            "DELETE FROM audit WHERE id <= ?1",
            params![last_id - self.audit_cap],
        )?;
        Ok(())
    }

    /// Audit events, newest first, with the filters applied.
    pub fn query_audit(&self, f: &AuditFilter) -> anyhow::Result<Vec<AuditEvent>> {
        let mut q = Filtered::new(
            "SELECT id, at, kind, target, protocol, peer, user, priority, requested, old, new, result, detail
             FROM audit",
        );
        q.and("at >= ?", f.from.map(ts));
        q.and("at < ?", f.to.map(ts));
        q.and("kind = ?", f.kind.clone());
        q.and("target = ?", f.target.clone());
        q.and("protocol = ?", f.source.clone());
        let c = self.conn.lock();
        q.newest_first(&c, f.before_id, f.limit, |r| {
            Ok(AuditEvent {
                id: r.get(0)?,
                at: r.get(1)?,
                kind: r.get(2)?,
                target: r.get(3)?,
                protocol: r.get(4)?,
                peer: r.get(5)?,
                user: r.get(6)?,
                priority: r.get(7)?,
                requested: r.get(8)?,
                old: r.get(9)?,
                new: r.get(10)?,
                result: r.get(11)?,
                detail: r.get(12)?,
            })
        })
    }

    pub fn audit_count(&self) -> anyhow::Result<i64> {
        Ok(self
            .conn
            .lock()
            .query_row("SELECT COUNT(*) FROM audit", [], |r| r.get(0))?)
    }

    /// Appends history samples of one point.
    pub fn append_history(&self, point: &str, samples: &[Sample]) -> anyhow::Result<()> {
        self.append_histories(&[(point, samples)])
    }

    /// Appends the samples of several points in one transaction: one
    /// commit (one WAL write) per flush instead of one per point, which
    /// made the flusher the largest share of an idle castpoint's CPU.
    /// All or nothing: on an error no point's samples are stored.
    pub fn append_histories(&self, batch: &[(&str, &[Sample])]) -> anyhow::Result<()> {
        if batch.iter().all(|(_, s)| s.is_empty()) {
            return Ok(());
        }
        let c = self.conn.lock();
        let tx = c.unchecked_transaction()?;
        {
            let mut st =
                tx.prepare_cached("INSERT INTO history (point, at, value) VALUES (?1, ?2, ?3)")?;
            for (point, samples) in batch {
                for s in *samples {
                    st.execute(params![point, s.at.timestamp_millis(), s.value.as_f64()])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The points that have stored history, each with its newest sample's
    /// time: one query instead of one per point (start-up with thousands
    /// of reserved route points, issue 20).
    pub fn history_points(&self) -> anyhow::Result<HashMap<String, DateTime<Utc>>> {
        let c = self.conn.lock();
        let mut st = c.prepare("SELECT point, MAX(at) FROM history GROUP BY point")?;
        let rows = st
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
            .filter_map(Result::ok)
            .filter_map(|(p, ms)| Some((p, Utc.timestamp_millis_opt(ms).single()?)))
            .collect();
        Ok(rows)
    }

    /// The newest stored sample time of a point (to resume flushing).
    pub fn last_history_at(&self, point: &str) -> anyhow::Result<Option<DateTime<Utc>>> {
        let c = self.conn.lock();
        let ms: Option<i64> = c
            .query_row(
                "SELECT MAX(at) FROM history WHERE point = ?1",
                params![point],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        Ok(ms.and_then(|m| Utc.timestamp_millis_opt(m).single()))
    }

    /// Stored samples of a point since `from`, oldest first.
    pub fn load_history(
        &self,
        point: &str,
        kind: Kind,
        from: DateTime<Utc>,
    ) -> anyhow::Result<Vec<Sample>> {
        let c = self.conn.lock();
        let mut st = c.prepare_cached(
            "SELECT at, value FROM history WHERE point = ?1 AND at >= ?2 ORDER BY at",
        )?;
        let rows = st
            .query_map(params![point, from.timestamp_millis()], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, f64>(1)?))
            })?
            .filter_map(Result::ok)
            .filter_map(|(ms, v)| {
                let at = Utc.timestamp_millis_opt(ms).single()?;
                let value = match kind {
                    Kind::Number => Value::Number(v),
                    Kind::Bool => Value::Bool(v != 0.0),
                    Kind::Enum => Value::Enum(v as u16),
                };
                Some(Sample { at, value })
            })
            .collect();
        Ok(rows)
    }

    /// Deletes samples older than `before`; returns how many.
    pub fn prune_history(&self, before: DateTime<Utc>) -> anyhow::Result<usize> {
        Ok(self.conn.lock().execute(
            "DELETE FROM history WHERE at < ?1",
            params![before.timestamp_millis()],
        )?)
    }
}

impl Store {
    /// Adds or replaces a user.
    pub fn user_put(&self, u: &UserRow) -> anyhow::Result<()> {
        self.conn.lock().execute(
            "INSERT INTO users (name, role, salt, iterations, stored_key, server_key, created, epoch)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT(name) DO UPDATE SET role = excluded.role, salt = excluded.salt,
               iterations = excluded.iterations, stored_key = excluded.stored_key,
               server_key = excluded.server_key, epoch = excluded.epoch",
            params![
                u.name,
                u.role,
                u.salt,
                i64::from(u.iterations),
                u.stored_key,
                u.server_key,
                ts(Utc::now()),
                u.epoch
            ],
        )?;
        Ok(())
    }

    /// Removes a user; false if there was none.
    pub fn user_remove(&self, name: &str) -> anyhow::Result<bool> {
        Ok(self
            .conn
            .lock()
            .execute("DELETE FROM users WHERE name = ?1", params![name])?
            > 0)
    }

    pub fn user_get(&self, name: &str) -> anyhow::Result<Option<UserRow>> {
        let c = self.conn.lock();
        Ok(c.query_row(
            "SELECT name, role, salt, iterations, stored_key, server_key, epoch FROM users WHERE name = ?1",
            params![name],
            |r| {
                Ok(UserRow {
                    name: r.get(0)?,
                    role: r.get(1)?,
                    salt: r.get(2)?,
                    iterations: u32::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
                    stored_key: r.get(4)?,
                    server_key: r.get(5)?,
                    epoch: r.get(6)?,
                })
            },
        )
        .optional()?)
    }

    /// (name, role) of every user.
    pub fn user_list(&self) -> anyhow::Result<Vec<(String, String)>> {
        let c = self.conn.lock();
        let mut st = c.prepare("SELECT name, role FROM users ORDER BY name")?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// A named secret, created with `make` on first use (the JWT key).
    pub fn secret(&self, name: &str, make: impl FnOnce() -> Vec<u8>) -> anyhow::Result<Vec<u8>> {
        let c = self.conn.lock();
        if let Some(v) = c
            .query_row(
                "SELECT value FROM secrets WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()?
        {
            return Ok(v);
        }
        let v = make();
        c.execute(
            "INSERT INTO secrets (name, value) VALUES (?1, ?2)",
            params![name, v],
        )?;
        Ok(v)
    }
}

impl Store {
    /// Adds an API key (its SHA-256); false if the name is taken.
    pub fn apikey_add(&self, name: &str, role: &str, hash: &[u8]) -> anyhow::Result<bool> {
        Ok(self.conn.lock().execute(
            "INSERT INTO api_keys (name, role, hash, created) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(name) DO NOTHING",
            params![name, role, hash, ts(Utc::now())],
        )? > 0)
    }

    /// Removes an API key; false if there was none.
    pub fn apikey_remove(&self, name: &str) -> anyhow::Result<bool> {
        Ok(self
            .conn
            .lock()
            .execute("DELETE FROM api_keys WHERE name = ?1", params![name])?
            > 0)
    }

    /// Every API key, in name order.
    pub fn apikey_list(&self) -> anyhow::Result<Vec<ApiKeyRow>> {
        let c = self.conn.lock();
        let mut st = c.prepare("SELECT name, role, created FROM api_keys ORDER BY name")?;
        let rows = st
            .query_map([], |r| {
                Ok(ApiKeyRow {
                    name: r.get(0)?,
                    role: r.get(1)?,
                    created: r.get(2)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// The (name, role) of the key with this SHA-256.
    pub fn apikey_by_hash(&self, hash: &[u8]) -> anyhow::Result<Option<(String, String)>> {
        Ok(self
            .conn
            .lock()
            .query_row(
                "SELECT name, role FROM api_keys WHERE hash = ?1",
                params![hash],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// True when any API key exists (the API is then closed like with users).
    pub fn apikey_any(&self) -> anyhow::Result<bool> {
        Ok(self
            .conn
            .lock()
            .query_row("SELECT EXISTS(SELECT 1 FROM api_keys)", [], |r| r.get(0))?)
    }
}

impl Store {
    /// Stores a route document (`None` = deleted).
    pub fn route_put(&self, name: &str, doc: Option<&J>) -> anyhow::Result<()> {
        self.conn.lock().execute(
            "INSERT INTO routes (name, doc, updated) VALUES (?1, ?2, ?3)
             ON CONFLICT(name) DO UPDATE SET doc = excluded.doc, updated = excluded.updated",
            params![name, doc.map(|d| d.to_string()), ts(Utc::now())],
        )?;
        Ok(())
    }

    /// Renames a stored route in one transaction: `old` is marked deleted
    /// and `new` gets `doc`, so a crash leaves either the old route or the
    /// renamed one, never both or neither.
    pub fn route_rename(&self, old: &str, new: &str, doc: &J) -> anyhow::Result<()> {
        let c = self.conn.lock();
        let tx = c.unchecked_transaction()?;
        let now = ts(Utc::now());
        for (name, d) in [(old, None), (new, Some(doc.to_string()))] {
            tx.execute(
                "INSERT INTO routes (name, doc, updated) VALUES (?1, ?2, ?3)
                 ON CONFLICT(name) DO UPDATE SET doc = excluded.doc, updated = excluded.updated",
                params![name, d, now],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Every stored route document, in name order (`None` = deleted).
    pub fn routes(&self) -> anyhow::Result<Vec<(String, Option<J>)>> {
        let c = self.conn.lock();
        let mut st = c.prepare("SELECT name, doc FROM routes ORDER BY name")?;
        let rows = st
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
            })?
            .filter_map(Result::ok)
            .map(|(n, d)| (n, d.and_then(|d| serde_json::from_str(&d).ok())))
            .collect();
        Ok(rows)
    }
}

impl Store {
    /// Stores an output profile document (`None` = deleted).
    pub fn profile_put(&self, number: u32, doc: Option<&J>) -> anyhow::Result<()> {
        self.conn.lock().execute(
            "INSERT INTO profiles (number, doc, updated) VALUES (?1, ?2, ?3)
             ON CONFLICT(number) DO UPDATE SET doc = excluded.doc, updated = excluded.updated",
            params![number, doc.map(|d| d.to_string()), ts(Utc::now())],
        )?;
        Ok(())
    }

    /// Every stored profile document, in number order (`None` = deleted).
    pub fn profiles(&self) -> anyhow::Result<Vec<(u32, Option<J>)>> {
        let c = self.conn.lock();
        let mut st = c.prepare("SELECT number, doc FROM profiles ORDER BY number")?;
        let rows = st
            .query_map([], |r| {
                Ok((r.get::<_, u32>(0)?, r.get::<_, Option<String>>(1)?))
            })?
            .filter_map(Result::ok)
            .map(|(n, d)| (n, d.and_then(|d| serde_json::from_str(&d).ok())))
            .collect();
        Ok(rows)
    }
}

impl crate::points::routes::SlotStore for Store {
    fn load(&self) -> Result<Vec<(String, u16)>, String> {
        let run = || -> rusqlite::Result<Vec<(String, u16)>> {
            let c = self.conn.lock();
            let mut st = c.prepare("SELECT name, slot FROM route_slots ORDER BY slot")?;
            let rows = st
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u16>(1)?)))?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        };
        run().map_err(|e| e.to_string())
    }

    fn save(&self, all: &[(String, u16)]) -> Result<(), String> {
        let run = || -> rusqlite::Result<()> {
            let c = self.conn.lock();
            let tx = c.unchecked_transaction()?;
            tx.execute("DELETE FROM route_slots", [])?;
            for (name, slot) in all {
                tx.execute(
                    "INSERT INTO route_slots (name, slot) VALUES (?1, ?2)",
                    params![name, slot],
                )?;
            }
            tx.commit()
        };
        run().map_err(|e| e.to_string())
    }
}

impl Persister for Store {
    fn forget(&self, points: &[String]) -> Result<(), String> {
        let run = || -> rusqlite::Result<()> {
            let c = self.conn.lock();
            let tx = c.unchecked_transaction()?;
            for p in points {
                tx.execute("DELETE FROM priority_array WHERE point = ?1", params![p])?;
            }
            tx.commit()
        };
        run().map_err(|e| e.to_string())
    }

    fn persist(&self, rec: &WriteRecord, pa: Option<(&str, &PriorityArray)>) -> Result<(), String> {
        let run = || -> rusqlite::Result<()> {
            let c = self.conn.lock();
            let tx = c.unchecked_transaction()?;
            if let Some((point, pa)) = pa {
                tx.execute(
                    "INSERT INTO priority_array (point, array, updated) VALUES (?1, ?2, ?3)
                     ON CONFLICT(point) DO UPDATE SET array = excluded.array, updated = excluded.updated",
                    params![point, array_json(pa), ts(rec.at)],
                )?;
            }
            tx.execute(
                "INSERT INTO audit (at, kind, target, protocol, peer, user, priority, requested, old, new, result)
                 VALUES (?1, 'write', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    ts(rec.at),
                    rec.point,
                    rec.source.protocol.as_str(),
                    rec.source.peer.map(|p| p.to_string()),
                    rec.source.user,
                    i64::from(rec.priority),
                    value_text(rec.requested).unwrap_or_else(|| "null".into()),
                    value_text(rec.old),
                    value_text(rec.new),
                    match &rec.result {
                        Ok(()) => "ok".to_string(),
                        Err(e) => format!("refused: {e}"),
                    },
                ],
            )?;
            let id = tx.last_insert_rowid();
            self.prune_audit(&tx, id)?;
            tx.commit()
        };
        run().map_err(|e| e.to_string())
    }
}

/// Copies new in-memory history samples to the store every `every`, and
/// prunes samples older than the retention once an hour.
pub async fn history_flusher(
    store: Arc<Store>,
    db: PointDb,
    retention: std::time::Duration,
    every: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let stored = store.history_points().unwrap_or_default();
    let mut last: Vec<DateTime<Utc>> = db
        .defs()
        .iter()
        .map(|d| {
            stored
                .get(&d.id)
                .map(|t| *t + chrono::Duration::milliseconds(1))
                .unwrap_or_else(Utc::now)
        })
        .collect();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_prune = std::time::Instant::now();
    loop {
        let stopping = tokio::select! {
            _ = shutdown.cancelled() => true,
            _ = tick.tick() => false,
        };
        // Only the points that got samples since the last flush (absent
        // route blocks included: history is kept per slot, and `last` is
        // indexed like the definitions). The list is taken before `now`,
        // so every sample of a listed point is older than `now`, and a
        // point that gets one later is listed again.
        let dirty = db.take_history_dirty();
        let now = Utc::now() + chrono::Duration::milliseconds(1);
        let batch: Vec<(PointId, &str, Vec<Sample>)> = dirty
            .into_iter()
            .filter_map(|id| {
                let def = db.def(id).filter(|d| d.his)?;
                let samples = db.history(id, last[id.index()], now);
                (!samples.is_empty()).then_some((id, def.id.as_str(), samples))
            })
            .collect();
        let named: Vec<(&str, &[Sample])> = batch
            .iter()
            .map(|(_, name, s)| (*name, s.as_slice()))
            .collect();
        match store.append_histories(&named) {
            Ok(()) => {
                for (id, _, s) in &batch {
                    if let Some(s) = s.last() {
                        last[id.index()] = s.at + chrono::Duration::nanoseconds(1);
                    }
                }
            }
            Err(e) => {
                // Kept in memory and tried again at the next flush.
                tracing::warn!("history of {} points not stored: {e}", batch.len());
                for (id, _, _) in &batch {
                    db.mark_history_dirty(*id);
                }
            }
        }
        if last_prune.elapsed() > std::time::Duration::from_secs(3600) {
            last_prune = std::time::Instant::now();
            let cutoff = Utc::now()
                - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::days(7));
            if let Err(e) = store.prune_history(cutoff) {
                tracing::warn!("history prune failed: {e}");
            }
        }
        if stopping {
            return;
        }
    }
}

/// A filtered, paged query over a table with an `id` column: the
/// conditions a filter sets, newest first, `before_id` paging, at most 1000
/// rows (the audit log and the alarm history share it).
pub(crate) struct Filtered {
    sql: String,
    args: Vec<Box<dyn rusqlite::ToSql>>,
}

impl Filtered {
    /// `select` is the SELECT ... FROM part, without a WHERE.
    pub(crate) fn new(select: &str) -> Filtered {
        Filtered {
            sql: format!("{select} WHERE 1=1"),
            args: Vec::new(),
        }
    }

    /// Adds `AND <cond>` with its one `?` bound to `v`, when there is a value.
    pub(crate) fn and<T: rusqlite::ToSql + 'static>(&mut self, cond: &str, v: Option<T>) {
        if let Some(v) = v {
            self.sql.push_str(" AND ");
            self.sql.push_str(cond);
            self.args.push(Box::new(v));
        }
    }

    /// Runs it: rows with `id < before_id` (when given), newest first,
    /// `limit` clamped to 1..=1000.
    pub(crate) fn newest_first<T>(
        mut self,
        c: &rusqlite::Connection,
        before_id: Option<i64>,
        limit: usize,
        row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> anyhow::Result<Vec<T>> {
        self.and("id < ?", before_id);
        self.sql.push_str(" ORDER BY id DESC LIMIT ?");
        self.args.push(Box::new(limit.clamp(1, 1000) as i64));
        let mut st = c.prepare_cached(&self.sql)?;
        let rows = st
            .query_map(
                rusqlite::params_from_iter(self.args.iter().map(|b| b.as_ref())),
                row,
            )?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests;
