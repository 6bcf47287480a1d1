//! BACnet Trend Log objects (type 20) over the point history: one per mapped `his` measurement, served to ReadRange.
//!
//! # Where the records come from
//!
//! The point database keeps each `his` point's history (`PointDb::history`,
//! the samples Haystack hisRead and `GET /api/points/{id}/history` serve): a
//! sample is kept when the value moved by at least the point's
//! COV_Increment since the last kept one. A Trend Log is a bounded copy of the
//! newest of those samples, in BACnet's record form:
//!
//! - at start-up, the history (restored from SQLite by then) fills the buffer,
//!   newest `buffer_size` samples, followed by a LOG_INTERRUPTED status record
//!   stamped with the start (Clause 12.25.14: collection was broken by the
//!   restart, samples may be missing);
//! - then every change of the point pulls the history samples recorded up to
//!   that change (so the log and the history hold the same values with the
//!   same timestamps, to the hundredth of a second BACnet carries);
//! - a quality other than ok is logged when the point turns to it, as a
//!   `failure` record carrying an error class/code ([`failure_of`]), never as a
//!   number; when the point is good again its current value is logged, even if
//!   unchanged (the history only keeps changes), so the log never ends on a
//!   stale failure.
//!
//! # Why a wrapper around the stack's TrendLogObject
//!
//! rusty-bacnet's `TrendLogObject` brings the record buffer, sequence
//! numbers, Total_Record_Count wrap, the properties of Clause 12.25 and the
//! ReadRange paging (by position, sequence number and time), all exercised by
//! its own tests. But the stack also *acquires* for every POLLED Trend Log: its
//! poller would read the AI's Present_Value each Log_Interval and log it, a
//! second, different series (and 0.0 for a point without a value). The
//! wrapper ignores the poller's acquisitions: `add_trend_record` only drains
//! the inbox castpoint fills from the history. Everything else is delegated.
//!
//! Network writes to a Trend Log are refused by the object itself with
//! WRITE_ACCESS_DENIED (castpoint's object set is its configuration), so
//! Log_Enable stays TRUE, Stop_When_Full FALSE and the reference fixed. The
//! log has no intrinsic reporting: its BUFFER_READY rows ([`REPORTING`]) are
//! not served.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Arc;

use bacnet_objects::clock::ClockReader;
use bacnet_objects::log_buffer::{LogBufferRecords, LogRecordIdentity};
use bacnet_objects::property_metadata::PropertyMetadata;
use bacnet_objects::traits::BACnetObject;
use bacnet_objects::trend::TrendLogObject;
use bacnet_types::constructed::{BACnetDeviceObjectPropertyReference, BACnetLogRecord, LogDatum};
use bacnet_types::enums::{ErrorClass, ErrorCode, PropertyIdentifier as P};
use bacnet_types::error::Error;
use bacnet_types::primitives::{Date, ObjectIdentifier, PropertyValue, StatusFlags, Time};
use chrono::{DateTime, Datelike, Timelike, Utc};
use parking_lot::Mutex;

use crate::points::{BacnetTrendLog, PointDb, PointDef, PointId, PointState, Quality, Value};

use super::objects::object_type;

/// Records waiting to enter a log (filled by [`TrendFeed`], drained by the
/// log under the server's database lock).
type Inbox = Arc<Mutex<VecDeque<BACnetLogRecord>>>;

/// Resident size of one record slot (`size_of::<BACnetLogRecord>()`, checked
/// in the tests; REAL, failure and status records own no heap). The stack's
/// ring is a `VecDeque` that grows by doubling, so a full log of N records
/// holds `N.next_power_of_two() * RECORD_BYTES`: 768 KiB for the default
/// 10,000, 6 MiB for the maximum 100,000 (docs/bacnet-pics.md).
pub const RECORD_BYTES: usize = 48;

/// A castpoint Trend Log: the stack's TrendLogObject, fed from the point
/// history instead of the stack's poller.
pub struct PointTrendLog {
    inner: TrendLogObject,
    inbox: Inbox,
}

/// BACnet date of a UTC instant (the Device clock runs at UTC_Offset 0).
pub fn bacnet_date(at: DateTime<Utc>) -> Date {
    Date {
        // Years 1900..=2154 fit; later ones are clamped (no log lives that long).
        year: u8::try_from(at.year().saturating_sub(1900).clamp(0, 254)).unwrap_or(254),
        month: at.month() as u8,
        day: at.day() as u8,
        day_of_week: at.weekday().number_from_monday() as u8,
    }
}

/// BACnet time of a UTC instant, truncated to hundredths.
pub fn bacnet_time(at: DateTime<Utc>) -> Time {
    Time {
        hour: at.hour() as u8,
        minute: at.minute() as u8,
        second: at.second().min(59) as u8,
        // A leap second shows as nanosecond >= 1e9: keep it in range.
        hundredths: (at.nanosecond() / 10_000_000).min(99) as u8,
    }
}

/// The log datum of a sample value in the logged object's datatype.
fn datum_of(v: Value) -> LogDatum {
    match v {
        Value::Number(n) if n.is_finite() => LogDatum::RealValue(n as f32),
        // The database refuses non-finite numbers; should one appear, log
        // that it could not be represented rather than a made-up value.
        Value::Number(_) => LogDatum::Failure {
            error_class: ErrorClass::PROPERTY,
            error_code: ErrorCode::VALUE_OUT_OF_RANGE,
        },
        Value::Bool(b) => LogDatum::BooleanValue(b),
        Value::Enum(e) => LogDatum::UnsignedValue(u64::from(e)),
    }
}

/// The failure a non-ok quality is logged as (`None` for good qualities).
///
/// - Stale: the source stopped refreshing within its sample period:
///   COMMUNICATION / TIMEOUT.
/// - Fault: the source reports an error: DEVICE / OPERATIONAL_PROBLEM.
/// - Unavailable: no source exists (no GPU, feature off): PROPERTY /
///   VALUE_NOT_INITIALIZED.
pub fn failure_of(q: Quality) -> Option<LogDatum> {
    let (error_class, error_code) = match q {
        Quality::Ok | Quality::Overridden => return None,
        Quality::Stale => (ErrorClass::COMMUNICATION, ErrorCode::TIMEOUT),
        Quality::Fault => (ErrorClass::DEVICE, ErrorCode::OPERATIONAL_PROBLEM),
        Quality::Unavailable => (ErrorClass::PROPERTY, ErrorCode::VALUE_NOT_INITIALIZED),
    };
    Some(LogDatum::Failure {
        error_class,
        error_code,
    })
}

fn record(
    at: DateTime<Utc>,
    log_datum: LogDatum,
    status_flags: Option<StatusFlags>,
) -> BACnetLogRecord {
    BACnetLogRecord {
        date: bacnet_date(at),
        time: bacnet_time(at),
        log_datum,
        status_flags,
    }
}

/// Log_Interval in hundredths of a second (at least 1: 0 would mean COV).
pub fn log_interval(def: &PointDef) -> u32 {
    let h = def.sample_period.as_millis() / 10;
    u32::try_from(h).unwrap_or(u32::MAX).max(1)
}

/// Builds one Trend Log, filled from the history up to `now`, and the feed
/// that keeps it current. `buffer_size` records are kept. Named after the
/// point: "`<point name>` Trend Log".
pub fn build(
    db: &PointDb,
    tl: &BacnetTrendLog,
    buffer_size: u32,
    now: DateTime<Utc>,
) -> Result<(PointTrendLog, TrendFeed), String> {
    let def = db
        .def(tl.point)
        .ok_or_else(|| format!("trend log TL{}: point does not exist", tl.instance))?;
    let name = format!("{} Trend Log", def.name);
    build_named(db, tl, &name, &def.name, buffer_size, now)
}

/// As [`build`], with the Object_Name `name`; `logged` names the logged
/// object in the Description (a route's log: "cam Input Bitrate").
pub fn build_named(
    db: &PointDb,
    tl: &BacnetTrendLog,
    name: &str,
    logged: &str,
    buffer_size: u32,
    now: DateTime<Utc>,
) -> Result<(PointTrendLog, TrendFeed), String> {
    let def = db
        .def(tl.point)
        .ok_or_else(|| format!("trend log TL{}: point does not exist", tl.instance))?;
    let e = |e: Error| format!("trend log TL{}: {e}", tl.instance);
    let mut log = TrendLogObject::new(tl.instance, name, buffer_size).map_err(e)?;
    log.set_description(format!(
        "history of {}{} ({logged}), kept when it moves by COV_Increment",
        tl.logged_type.short(),
        tl.logged_instance,
    ));
    let logged =
        ObjectIdentifier::new(object_type(tl.logged_type), tl.logged_instance).map_err(e)?;
    log.set_log_device_object_property(Some(BACnetDeviceObjectPropertyReference {
        object_identifier: logged,
        property_identifier: P::PRESENT_VALUE.to_raw(),
        property_array_index: None,
        device_identifier: None,
    }))
    .map_err(e)?;
    log.set_log_interval(log_interval(def)).map_err(e)?;

    // The newest Buffer_Size samples only: a point's history may hold
    // 200,000 (a route opening copies seven of them under the stack's lock).
    let history = db.history_tail(tl.point, buffer_size as usize, now);
    let restored: Vec<BACnetLogRecord> = history
        .iter()
        .map(|s| record(s.at, datum_of(s.value), None))
        .collect();
    let cursor = history
        .last()
        .map(|s| s.at + chrono::Duration::nanoseconds(1))
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    if !restored.is_empty() {
        log.restore_log_buffer(restored.len() as u32, restored)
            .map_err(e)?;
        // The samples before the restart are back; the time the process was
        // down was not collected, and a reader should know.
        log.record_interruption(bacnet_date(now), bacnet_time(now))
            .map_err(e)?;
    }
    let inbox: Inbox = Arc::new(Mutex::new(VecDeque::new()));
    let quality = db
        .read(tl.point)
        .map(|s| s.quality)
        .unwrap_or(Quality::Unavailable);
    Ok((
        PointTrendLog {
            inner: log,
            inbox: inbox.clone(),
        },
        TrendFeed {
            oid: ObjectIdentifier::new(bacnet_types::enums::ObjectType::TREND_LOG, tl.instance)
                .map_err(e)?,
            point: tl.point,
            inbox,
            cursor,
            quality,
        },
    ))
}

/// Moves what the point database records into one Trend Log.
pub struct TrendFeed {
    pub oid: ObjectIdentifier,
    pub point: PointId,
    inbox: Inbox,
    /// History samples at or after this instant have not been logged yet.
    cursor: DateTime<Utc>,
    /// Quality at the last change seen.
    quality: Quality,
}

impl TrendFeed {
    /// Queues the records one change of the point (`state`, as published)
    /// adds: the history samples recorded up to it, then a failure record if
    /// the point turned bad, or the current value if it turned good again
    /// without a new sample. Returns whether anything was queued; the
    /// records enter the log at the next `add_trend_record`.
    pub fn on_change(&mut self, db: &PointDb, state: &PointState) -> bool {
        let upto = state.updated + chrono::Duration::nanoseconds(1);
        let mut out = Vec::new();
        let samples = if upto > self.cursor {
            db.history(self.point, self.cursor, upto)
        } else {
            Vec::new()
        };
        let mut sample_at_change = false;
        for s in &samples {
            out.push(record(s.at, datum_of(s.value), None));
            sample_at_change |= s.at == state.updated;
        }
        if let Some(last) = samples.last() {
            self.cursor = last.at + chrono::Duration::nanoseconds(1);
        }
        if state.quality != self.quality {
            match failure_of(state.quality) {
                Some(f) => out.push(record(state.updated, f, None)),
                None => {
                    if let (false, true, Some(v)) = (
                        sample_at_change,
                        failure_of(self.quality).is_some(),
                        state.value,
                    ) {
                        out.push(record(state.updated, datum_of(v), None));
                    }
                }
            }
            self.quality = state.quality;
        }
        if out.is_empty() {
            return false;
        }
        self.inbox.lock().extend(out);
        true
    }
}

/// The feeds of every served Trend Log (the server's and the routes'),
/// found by point, and which of their logs owe a drain. Route logs come and
/// go with their blocks.
pub struct Feeds {
    feeds: Vec<TrendFeed>,
    /// Point index -> its feed's place in `feeds`.
    index: Vec<Option<usize>>,
    /// Per feed: records queued since the last drain.
    dirty: Vec<bool>,
}

impl Feeds {
    /// `n_points` is the database's point count (server and route blocks).
    pub fn new(n_points: usize, feeds: Vec<TrendFeed>) -> Feeds {
        let mut f = Feeds {
            feeds: Vec::with_capacity(feeds.len()),
            index: vec![None; n_points],
            dirty: Vec::with_capacity(feeds.len()),
        };
        for feed in feeds {
            f.add(feed);
        }
        f
    }

    /// Starts following a log (replacing the point's previous feed).
    pub fn add(&mut self, feed: TrendFeed) {
        let Some(slot) = self.index.get_mut(feed.point.index()) else {
            return;
        };
        match *slot {
            Some(i) => {
                self.feeds[i] = feed;
                self.dirty[i] = false;
            }
            None => {
                *slot = Some(self.feeds.len());
                self.feeds.push(feed);
                self.dirty.push(false);
            }
        }
    }

    /// Stops following the log of `point` (its object is gone).
    pub fn remove(&mut self, point: PointId) {
        let Some(i) = self.index.get_mut(point.index()).and_then(Option::take) else {
            return;
        };
        self.feeds.swap_remove(i);
        self.dirty.swap_remove(i);
        if let Some(moved) = self.feeds.get(i) {
            self.index[moved.point.index()] = Some(i);
        }
    }

    /// Logs followed now.
    pub fn len(&self) -> usize {
        self.feeds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.feeds.is_empty()
    }

    /// Queues what one change of a point adds to its log, if it has one.
    pub fn note(&mut self, db: &PointDb, id: PointId, state: &PointState) {
        if let Some(Some(i)) = self.index.get(id.index()) {
            self.dirty[*i] |= self.feeds[*i].on_change(db, state);
        }
    }

    /// After lost changes: every log catches up on the history from where
    /// it stood (a quality flip that came and went in the gap is lost).
    pub fn catch_up(&mut self, db: &PointDb) {
        for (f, d) in self.feeds.iter_mut().zip(self.dirty.iter_mut()) {
            if let Some(st) = db.read(f.point) {
                *d |= f.on_change(db, &st);
            }
        }
    }

    /// The logs with queued records, cleared: each is drained with
    /// `add_trend_record(drain_signal())`.
    pub fn take_dirty(&mut self) -> Vec<ObjectIdentifier> {
        let mut out = Vec::new();
        for (f, d) in self.feeds.iter().zip(self.dirty.iter_mut()) {
            if std::mem::take(d) {
                out.push(f.oid);
            }
        }
        out
    }
}

impl PointTrendLog {
    fn drain(&mut self) {
        let pending: Vec<BACnetLogRecord> = self.inbox.lock().drain(..).collect();
        for r in pending {
            if let Err(e) = self.inner.add_record(r) {
                // Only a record that would not encode or an invalid device
                // clock refuse a record; neither comes from a peer.
                tracing::warn!(
                    "bacnet: trend log {:?}: record dropped: {e}",
                    self.inner.object_identifier()
                );
            }
        }
    }

    /// The resident records (tests and diagnostics).
    pub fn records(&self) -> &VecDeque<BACnetLogRecord> {
        self.inner.records()
    }
}

/// The Trend Log rows of intrinsic (BUFFER_READY) reporting. castpoint has
/// no Notification Class object and sends no event notifications, so a log
/// must not advertise them: with Notification_Class and Event_Enable in its
/// Property_List, GetEventInformation and GetEnrollmentSummary treat it as
/// event-initiating and fail on the missing class (Clause 13.12 expects an
/// empty list from a device with no active events).
pub const REPORTING: [P; 13] = [
    P::NOTIFICATION_THRESHOLD,
    P::RECORDS_SINCE_NOTIFICATION,
    P::LAST_NOTIFY_RECORD,
    P::NOTIFICATION_CLASS,
    P::EVENT_ENABLE,
    P::ACKED_TRANSITIONS,
    P::NOTIFY_TYPE,
    P::EVENT_TIME_STAMPS,
    P::EVENT_MESSAGE_TEXTS,
    P::EVENT_MESSAGE_TEXTS_CONFIG,
    P::EVENT_DETECTION_ENABLE,
    P::EVENT_ALGORITHM_INHIBIT_REF,
    P::EVENT_ALGORITHM_INHIBIT,
];

fn unknown_property() -> Error {
    Error::protocol(ErrorClass::PROPERTY, ErrorCode::UNKNOWN_PROPERTY)
}

impl BACnetObject for PointTrendLog {
    fn object_identifier(&self) -> ObjectIdentifier {
        self.inner.object_identifier()
    }

    fn object_name(&self) -> &str {
        self.inner.object_name()
    }

    fn read_property(&self, property: P, array_index: Option<u32>) -> Result<PropertyValue, Error> {
        if REPORTING.contains(&property) {
            return Err(unknown_property());
        }
        if property == P::PROPERTY_LIST {
            return super::config_objects::read_property_list(&self.property_list(), array_index);
        }
        self.inner.read_property(property, array_index)
    }

    /// Every property is read-only from the network, Log_Enable and
    /// Record_Count included (a documented deviation, docs/bacnet-pics.md):
    /// the log is a window onto the point history that Haystack hisRead and
    /// the REST API serve too, so a purge or a pause here would hold only
    /// until the next restart refills the buffer from that history.
    fn write_property(
        &mut self,
        property: P,
        _array_index: Option<u32>,
        _value: PropertyValue,
        _priority: Option<u8>,
    ) -> Result<(), Error> {
        if property == P::PROPERTY_LIST || self.property_list().contains(&property) {
            Err(Error::protocol(
                ErrorClass::PROPERTY,
                ErrorCode::WRITE_ACCESS_DENIED,
            ))
        } else {
            Err(unknown_property())
        }
    }

    fn property_metadata(&self) -> Cow<'_, [PropertyMetadata]> {
        Cow::Owned(super::config_objects::read_only_rows(
            &self.inner.property_metadata(),
            &REPORTING,
        ))
    }

    fn property_list(&self) -> Cow<'static, [P]> {
        bacnet_objects::property_metadata::property_list_from_metadata(&self.property_metadata())
    }

    /// The log set is configuration: DeleteObject gets
    /// OBJECT_DELETION_NOT_PERMITTED.
    fn is_deleteable(&self) -> bool {
        false
    }

    fn bind_clock_internal(&mut self, clock: Option<Arc<dyn ClockReader>>) {
        self.inner.bind_clock_internal(clock)
    }

    fn advance_monotonic_time_internal(&mut self, now: std::time::Duration) -> bool {
        self.inner.advance_monotonic_time_internal(now)
    }

    fn log_record_identities_internal(&self) -> Option<Vec<LogRecordIdentity>> {
        self.inner.log_record_identities_internal()
    }

    fn log_buffer_internal(&self) -> Option<&dyn LogBufferRecords> {
        self.inner.log_buffer_internal()
    }

    /// Called by the stack's poller with what it read from the logged
    /// object (ignored: the history is the source), and by castpoint's sync
    /// loop to move the inbox in. Either way the inbox is drained, in order.
    fn add_trend_record(&mut self, _record: BACnetLogRecord) -> Result<(), Error> {
        self.drain();
        Ok(())
    }

    fn refresh_log_window_internal(&mut self) -> bool {
        self.inner.refresh_log_window_internal()
    }

    fn log_collecting_internal(&self) -> bool {
        self.inner.log_collecting_internal()
    }

    // No intrinsic reporting (see REPORTING): the trait's defaults (no
    // enrollment, no transitions, no BUFFER_READY report) stand for the
    // event hooks, which are not forwarded to the inner log.
}

/// The record handed to `add_trend_record` to make a castpoint log drain its
/// inbox; its content is ignored.
pub fn drain_signal() -> BACnetLogRecord {
    BACnetLogRecord {
        date: Date {
            year: Date::UNSPECIFIED,
            month: Date::UNSPECIFIED,
            day: Date::UNSPECIFIED,
            day_of_week: Date::UNSPECIFIED,
        },
        time: Time {
            hour: Time::UNSPECIFIED,
            minute: Time::UNSPECIFIED,
            second: Time::UNSPECIFIED,
            hundredths: Time::UNSPECIFIED,
        },
        log_datum: LogDatum::NullValue,
        status_flags: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::points::{DbOptions, Sample};
    use chrono::TimeZone;

    fn setup() -> (Config, PointDb) {
        let cfg = Config::embedded().expect("embedded config");
        let db = PointDb::new(cfg.points.clone(), cfg.site.clone(), DbOptions::default());
        (cfg, db)
    }

    fn cpu_log(cfg: &Config) -> BacnetTrendLog {
        *cfg.maps
            .bacnet
            .trend_logs
            .iter()
            .find(|t| t.instance == 3)
            .expect("TL3 logs cpu_usage")
    }

    fn unsigned(log: &PointTrendLog, p: P) -> u64 {
        match log.read_property(p, None) {
            Ok(PropertyValue::Unsigned(n)) => n,
            other => panic!("{p:?}: {other:?}"),
        }
    }

    #[test]
    fn the_embedded_map_logs_every_his_measurement_under_its_own_instance() {
        let (cfg, db) = setup();
        let logs = &cfg.maps.bacnet.trend_logs;
        assert_eq!(logs.len(), 10, "AI0..AI9");
        for t in logs {
            let def = db.def(t.point).expect("point");
            assert!(def.his && def.role == crate::points::Role::Measurement);
            assert_eq!(t.instance, t.logged_instance);
        }
        assert_eq!(
            cfg.maps.bacnet.trend_buffer_size,
            crate::points::DEFAULT_TREND_BUFFER
        );
    }

    #[test]
    fn restores_the_newest_history_then_marks_the_interruption() {
        let (cfg, db) = setup();
        let tl = cpu_log(&cfg);
        let t0 = Utc
            .with_ymd_and_hms(2026, 11, 20, 10, 0, 0)
            .single()
            .expect("date");
        for k in 0..5 {
            db.insert_history(
                tl.point,
                Sample {
                    at: t0 + chrono::Duration::milliseconds(1234 * k),
                    value: Value::Number(k as f64),
                },
            );
        }
        let now = t0 + chrono::Duration::hours(1);
        // The tail: the newest n before the end, oldest first.
        let tail = |n, to| -> Vec<Value> {
            db.history_tail(tl.point, n, to)
                .iter()
                .map(|s| s.value)
                .collect()
        };
        assert_eq!(tail(2, now), [Value::Number(3.0), Value::Number(4.0)]);
        assert_eq!(tail(9, now).len(), 5);
        assert_eq!(
            tail(1, t0 + chrono::Duration::seconds(2)),
            [Value::Number(1.0)]
        );
        assert!(tail(3, t0).is_empty());
        let (log, _) = build(&db, &tl, 3, now).expect("log");
        let r = log.records();
        // Buffer_Size 3: the two newest samples, then LOG_INTERRUPTED.
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].log_datum, LogDatum::RealValue(3.0));
        assert_eq!(r[1].log_datum, LogDatum::RealValue(4.0));
        assert!(
            matches!(r[2].log_datum, LogDatum::LogStatus(_)),
            "{:?}",
            r[2]
        );
        let at4 = t0 + chrono::Duration::milliseconds(1234 * 4);
        assert_eq!((r[1].date, r[1].time), (bacnet_date(at4), bacnet_time(at4)));
        assert_eq!(
            r[1].time.hundredths, 93,
            "4.936 s truncates to 93 hundredths"
        );
        assert_eq!((r[2].date, r[2].time), (bacnet_date(now), bacnet_time(now)));
        assert_eq!(unsigned(&log, P::RECORD_COUNT), 3);
        assert_eq!(unsigned(&log, P::BUFFER_SIZE), 3);
        // 4 restored (numbered 1..=4, the oldest pushed out) + the status.
        assert_eq!(unsigned(&log, P::TOTAL_RECORD_COUNT), 4);
        assert_eq!(unsigned(&log, P::LOG_INTERVAL), 3000);
        assert_eq!(
            log.read_property(P::LOG_ENABLE, None).expect("enable"),
            PropertyValue::Boolean(true)
        );
        assert_eq!(
            log.read_property(P::STOP_WHEN_FULL, None).expect("swf"),
            PropertyValue::Boolean(false)
        );
    }

    #[test]
    fn an_empty_history_starts_an_empty_log() {
        let (cfg, db) = setup();
        let (log, _) = build(&db, &cpu_log(&cfg), 10, Utc::now()).expect("log");
        assert!(log.records().is_empty());
        assert_eq!(unsigned(&log, P::TOTAL_RECORD_COUNT), 0);
    }

    #[test]
    fn feed_logs_samples_failures_and_recovery_but_ignores_the_poller() {
        let (cfg, db) = setup();
        let tl = cpu_log(&cfg);
        let (mut log, mut feed) = build(&db, &tl, 100, Utc::now()).expect("log");
        let mut rx = db.subscribe();
        let mut step = |v: Option<f64>, q: Quality| {
            db.set(tl.point, v.map(Value::Number), q, None)
                .expect("set");
            while let Ok(c) = rx.try_recv() {
                feed.on_change(&db, &c.state);
            }
            // The stack's poller hands in what it read: ignored.
            log.add_trend_record(record(Utc::now(), LogDatum::RealValue(-1.0), None))
                .expect("drain");
            log.records()
                .iter()
                .map(|r| r.log_datum.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(step(Some(5.0), Quality::Ok), [LogDatum::RealValue(5.0)]);
        // Within COV_Increment: no history sample, no record.
        assert_eq!(step(Some(5.5), Quality::Ok).len(), 1);
        let r = step(Some(5.5), Quality::Stale);
        assert_eq!(
            r[1],
            LogDatum::Failure {
                error_class: ErrorClass::COMMUNICATION,
                error_code: ErrorCode::TIMEOUT
            }
        );
        // No value at all: one failure per change of quality, not per set.
        let r = step(None, Quality::Unavailable);
        assert_eq!(r.len(), 3);
        assert_eq!(step(None, Quality::Unavailable).len(), 3);
        // Good again at an unchanged value: logged once, not in history.
        let r = step(Some(5.5), Quality::Ok);
        assert_eq!(r.len(), 4);
        assert_eq!(r[3], LogDatum::RealValue(5.5));
        let r = step(Some(9.0), Quality::Ok);
        assert_eq!(r[4], LogDatum::RealValue(9.0));
        assert_eq!(r.len(), 5);
        assert!(r.iter().all(|d| *d != LogDatum::RealValue(-1.0)));
    }

    #[test]
    fn a_bounded_buffer_keeps_the_newest_records() {
        let (cfg, db) = setup();
        let tl = cpu_log(&cfg);
        let (mut log, mut feed) = build(&db, &tl, 4, Utc::now()).expect("log");
        for k in 0..10 {
            db.set(
                tl.point,
                Some(Value::Number(f64::from(k) * 10.0)),
                Quality::Ok,
                None,
            )
            .expect("set");
            let st = db.read(tl.point).expect("state");
            feed.on_change(&db, &st);
        }
        log.add_trend_record(drain_signal()).expect("drain");
        assert_eq!(log.records().len(), 4);
        assert_eq!(log.records()[0].log_datum, LogDatum::RealValue(60.0));
        assert_eq!(unsigned(&log, P::TOTAL_RECORD_COUNT), 10);
    }

    #[test]
    fn feeds_follow_logs_as_they_come_and_go() {
        let (cfg, db) = setup();
        let tls: Vec<BacnetTrendLog> = cfg.maps.bacnet.trend_logs[..3].to_vec();
        let built: Vec<(PointTrendLog, TrendFeed)> = tls
            .iter()
            .map(|t| build(&db, t, 10, Utc::now()).expect("log"))
            .collect();
        let oids: Vec<ObjectIdentifier> = built.iter().map(|(_, f)| f.oid).collect();
        let mut feeds = Feeds::new(db.len(), built.into_iter().map(|(_, f)| f).collect());
        assert_eq!(feeds.len(), 3);
        let set = |p: PointId, v: f64| {
            db.set(p, Some(Value::Number(v)), Quality::Ok, None)
                .expect("set");
            db.read(p).expect("state")
        };
        // The first log goes; the last takes its place in the table and
        // still receives its point's changes; the gone one's are ignored.
        feeds.remove(tls[0].point);
        assert_eq!(feeds.len(), 2);
        let st = set(tls[0].point, 1000.0);
        feeds.note(&db, tls[0].point, &st);
        let st = set(tls[2].point, 1000.0);
        feeds.note(&db, tls[2].point, &st);
        assert_eq!(feeds.take_dirty(), vec![oids[2]]);
        assert!(feeds.take_dirty().is_empty(), "taken once");
        // Removing twice, or a point without a log, changes nothing.
        feeds.remove(tls[0].point);
        feeds.remove(PointId(0));
        assert_eq!(feeds.len(), 2);
        // Back (a route re-opened): followed again.
        let (_, f) = build(&db, &tls[0], 10, Utc::now()).expect("log");
        feeds.add(f);
        let st = set(tls[0].point, 2000.0);
        feeds.note(&db, tls[0].point, &st);
        assert_eq!(feeds.take_dirty(), vec![oids[0]]);
    }

    #[test]
    fn a_full_route_log_holds_at_most_48_kib_of_records() {
        let (cfg, db) = setup();
        let n = crate::points::DEFAULT_ROUTE_TREND_BUFFER;
        let (mut log, _) = build(&db, &cpu_log(&cfg), n, Utc::now()).expect("log");
        let t0 = Utc::now();
        for k in 0..3 * n {
            log.inner
                .add_record(record(
                    t0 + chrono::Duration::milliseconds(i64::from(k)),
                    LogDatum::RealValue(k as f32),
                    None,
                ))
                .expect("record");
        }
        assert_eq!(log.records().len(), n as usize);
        // The ring's allocation: the stack pops before it pushes into a
        // full log, so it stops growing at the first power of two >= n.
        let ring = log.records().capacity() * std::mem::size_of::<BACnetLogRecord>();
        println!(
            "route log of {n} records: ring {} records x {} octets = {ring} octets; object {} octets",
            log.records().capacity(),
            std::mem::size_of::<BACnetLogRecord>(),
            std::mem::size_of::<PointTrendLog>()
        );
        assert!(ring <= (n as usize).next_power_of_two() * RECORD_BYTES);
        assert!(ring <= 48 * 1024, "{ring} octets");
    }

    #[test]
    fn record_memory_matches_the_documented_bound() {
        assert!(
            std::mem::size_of::<BACnetLogRecord>() <= RECORD_BYTES,
            "{} bytes",
            std::mem::size_of::<BACnetLogRecord>()
        );
    }
}
