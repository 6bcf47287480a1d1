//! BACnet intrinsic reporting (ASHRAE 135 clause 13) as a view of castpoint's one alarm runtime, `crate::alarms::Alarms`: the event properties, the stack's notification and acknowledgement machinery driven by castpoint's transitions, and the Notification Class objects.
//!
//! # Decision: castpoint evaluates, the stack distributes
//!
//! rusty-bacnet can run intrinsic reporting itself (its built-in objects
//! carry OUT_OF_RANGE / CHANGE_OF_STATE detectors), but that would be a
//! second evaluation of every alarm, with its own time delays (counted in
//! one-second ticks), its own fault rules (Reliability only) and its own
//! acknowledgement state — BACnet would show one Event_State and
//! `/api/alarms`, Haystack and Modbus another. So the stack never evaluates
//! anything here. What it does own is what it does well and castpoint need
//! not repeat: Notification Class objects with a writable, persisted
//! Recipient_List, recipient selection (valid days and times, transitions),
//! ConfirmedEventNotification with the APDU timeout/retries and
//! UnconfirmedEventNotification, AcknowledgeAlarm decoding, the
//! ACK_NOTIFICATION, GetEventInformation paging and GetAlarmSummary.
//!
//! The stack drives intrinsic reporting through object hooks, and a point
//! object implements them as a *view* of `Alarms`, as it already does for
//! Present_Value:
//!
//! - Every event property (Event_State, Acked_Transitions,
//!   Event_Time_Stamps, the limits, Alarm_Values, ...) reads `Alarms` or the
//!   point's `AlarmSpec` at the moment it is read, so GetEventInformation,
//!   GetAlarmSummary, RP/RPM and the stack's notification builder all see
//!   the same state as every other protocol.
//! - Each transition `Alarms` broadcasts is queued on the object's
//!   [`AlarmLink`]; `mod.rs` then pokes the stack
//!   (`set_present_value_local`), whose per-change path asks the object for
//!   a proposal ([`AlarmLink::proposal`] behind
//!   `evaluate_intrinsic_reporting`) and "commits" it
//!   ([`AlarmLink::commit`]: castpoint already did, so commit only takes
//!   the transition off the queue), then builds the notification from the
//!   object's properties and sends it to the recipients. The stack's
//!   one-second tick asks again, so a transition whose poke was lost still
//!   goes out within a second.
//! - AcknowledgeAlarm reaches the object
//!   (`acknowledge_alarm_correlated_detailed_internal`), which checks the
//!   transition and its time stamp against `Alarms` and calls
//!   `Alarms::acknowledge` — stored before the stack sends the SimpleACK —
//!   and hands the acknowledged transition back, so the stack sends the
//!   ACK_NOTIFICATION.
//!
//! Time stamps are BACnetDateTime in UTC (the Device runs at UTC_Offset 0),
//! to the hundredth of a second, the resolution BACnet carries; an
//! acknowledgement's time stamp is compared at that resolution.
//!
//! Limits: Event_Enable, the limits, Time_Delay and Alarm_Values are
//! configuration (`[point.alarm]`) and read-only from the network
//! (WRITE_ACCESS_DENIED). An acknowledgement made through another protocol
//! (REST) changes Acked_Transitions at once, but sends no BACnet
//! ACK_NOTIFICATION: the stack offers that only for its own AcknowledgeAlarm.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bacnet_encoding::primitives::encode_timestamp_choice;
use bacnet_objects::event::{
    EnrollmentSummaryCapability, EventStateChange, EventTransition, EventTransitionCommit,
    EventTransitionCommitError, TransitionOutcome,
};
use bacnet_objects::notification_class::{FileNotificationClassPersistence, NotificationClass};
use bacnet_types::bitstring::EventTransitionBits;
use bacnet_types::enums::{
    ErrorClass, ErrorCode, EventState as BEventState, EventType, NotifyType,
    PropertyIdentifier as P,
};
use bacnet_types::error::Error;
use bacnet_types::primitives::{BACnetTimeStamp, Date, PropertyValue, Time};
use bytes::BytesMut;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;

use crate::alarms::config::NotificationClassTable;
use crate::alarms::{AckFailure, AlarmRecord, Alarms};
use crate::points::alarm::{
    AckError, AlarmSpec, AlarmState, Algorithm, ClassRules, EventState, PerTransition,
    TransitionKind,
};
use crate::points::{BacnetObjectType, PointId, Protocol, Source, Value};

use super::trend::{bacnet_date, bacnet_time};

/// How many transitions an object keeps for the stack before the oldest is
/// dropped (never reached unless the stack stops taking them; the durable
/// history keeps every one).
const QUEUE_CAP: usize = 64;

/// castpoint's event state as BACnet's.
pub fn event_state(s: EventState) -> BEventState {
    BEventState::from_raw(s as u32)
}

fn kind_of(coordinate: EventTransition) -> TransitionKind {
    match coordinate {
        EventTransition::ToOffnormal => TransitionKind::ToOffnormal,
        EventTransition::ToFault => TransitionKind::ToFault,
        EventTransition::ToNormal => TransitionKind::ToNormal,
    }
}

/// A BACnetEventTransitionBits value (Event_Enable, Acked_Transitions).
pub fn transition_bits(v: PerTransition<bool>) -> PropertyValue {
    let mut b = 0u8;
    if v.to_offnormal {
        b |= 0x80;
    }
    if v.to_fault {
        b |= 0x40;
    }
    if v.to_normal {
        b |= 0x20;
    }
    PropertyValue::BitString {
        unused_bits: 5,
        data: vec![b],
    }
}

/// A transition's time stamp as BACnet carries it.
pub fn time_stamp(at: Option<DateTime<Utc>>) -> BACnetTimeStamp {
    match at {
        Some(at) => BACnetTimeStamp::DateTime {
            date: bacnet_date(at),
            time: bacnet_time(at),
        },
        // Clause 12: a transition that never happened shows the unspecified
        // date and time.
        None => BACnetTimeStamp::DateTime {
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
        },
    }
}

/// A time stamp as a property value (the framed CHOICE, as the stack's own
/// objects serve Event_Time_Stamps).
pub fn time_stamp_value(at: Option<DateTime<Utc>>) -> PropertyValue {
    let mut buf = BytesMut::new();
    // Encoding a BACnetTimeStamp CHOICE cannot fail for these values; an
    // error would still be an honest empty value, never a panic.
    let _ = encode_timestamp_choice(&mut buf, &time_stamp(at));
    PropertyValue::ApplicationData(buf.to_vec())
}

/// Whether a requester's time stamp names the transition stamped `at`, at
/// BACnet's resolution (the day of week is derived, so not compared).
pub fn same_time_stamp(asked: &BACnetTimeStamp, at: DateTime<Utc>) -> bool {
    let BACnetTimeStamp::DateTime { date, time } = asked else {
        return false;
    };
    let (d, t) = (bacnet_date(at), bacnet_time(at));
    (date.year, date.month, date.day) == (d.year, d.month, d.day)
        && (time.hour, time.minute, time.second, time.hundredths)
            == (t.hour, t.minute, t.second, t.hundredths)
}

/// Who sent the AcknowledgeAlarm the stack is executing: the transport
/// filter sees the request before the stack and notes its requester and
/// Acknowledgment_Source here, by event object, for the object hook (which
/// the stack calls without either) to put in the audit trail.
#[derive(Default)]
pub struct AckSources {
    by_object: Mutex<HashMap<u32, Requester>>,
}

/// An acknowledger: its B/IP address and its Acknowledgment_Source.
type Requester = (Option<SocketAddr>, Option<String>);

impl AckSources {
    /// Bounded: an entry is taken by the ack it belongs to; a flood of
    /// requests for objects that never take theirs is cut back.
    pub fn note(&self, object: u32, peer: Option<SocketAddr>, source: Option<String>) {
        let mut m = self.by_object.lock();
        if m.len() >= 1024 {
            m.clear();
        }
        m.insert(object, (peer, source));
    }

    fn take(&self, object: u32) -> Requester {
        self.by_object.lock().remove(&object).unwrap_or_default()
    }
}

/// One transition castpoint made, waiting for the stack to distribute it.
#[derive(Debug, Clone, PartialEq)]
struct Queued {
    from: EventState,
    to: EventState,
    notify: bool,
    text: String,
}

#[derive(Default)]
struct LinkState {
    queue: VecDeque<Queued>,
    /// Per transition kind, the last transition handed to the stack
    /// (from, to, message text): the ACK_NOTIFICATION's context and
    /// Event_Message_Texts.
    last: [Option<(EventState, EventState, String)>; 3],
    last_kind: Option<TransitionKind>,
}

impl LinkState {
    /// The link of an object built over a point whose alarm already has a
    /// history: restored at start-up, or a route object rebuilt after its
    /// route changed. The stack answers GetEnrollmentSummary from the last
    /// transition it was handed, and refuses the *whole* request
    /// (OPERATIONAL_PROBLEM) for an object that has none while it is not
    /// NORMAL and fully acknowledged; AcknowledgeAlarm's ACK_NOTIFICATION
    /// and Event_Message_Texts read the same. So each kind with a time
    /// stamp gets its entry, the newest being the last transition. Where
    /// the transition came from is not stored; the state it entered is the
    /// live one for the newest kind, the kind's own state otherwise.
    fn seeded(live: &AlarmState, name: &str) -> LinkState {
        let mut st = LinkState::default();
        let mut newest: Option<(DateTime<Utc>, TransitionKind)> = None;
        for k in TransitionKind::ALL {
            let Some(at) = live.time_stamps.get(k) else {
                continue;
            };
            if newest.is_none_or(|(t, _)| at > t) {
                newest = Some((at, k));
            }
            let (from, to) = match k {
                TransitionKind::ToOffnormal => (EventState::Normal, EventState::Offnormal),
                TransitionKind::ToFault => (EventState::Normal, EventState::Fault),
                TransitionKind::ToNormal => (EventState::Offnormal, EventState::Normal),
            };
            st.last[k as usize] = Some((from, to, format!("{name}: restored")));
        }
        if let Some((_, k)) = newest {
            if let Some(entry) = st.last[k as usize].as_mut() {
                entry.1 = live.event_state;
            }
        }
        st.last_kind = newest.map(|(_, k)| k);
        st
    }
}

/// The alarm side of one point object, shared by the object (owned by the
/// stack's database) and the BACnet sync loop that feeds it transitions.
pub struct AlarmLink {
    alarms: Alarms,
    point: PointId,
    /// The point's id string (`Alarms::acknowledge` takes it).
    name: String,
    pub spec: AlarmSpec,
    object_key: u32,
    acks: Arc<AckSources>,
    state: Mutex<LinkState>,
}

impl AlarmLink {
    pub fn new(
        alarms: Alarms,
        point: PointId,
        name: String,
        spec: AlarmSpec,
        object_key: u32,
        acks: Arc<AckSources>,
    ) -> AlarmLink {
        let state = Mutex::new(LinkState::seeded(
            &alarms.state(point).unwrap_or_default(),
            &name,
        ));
        AlarmLink {
            alarms,
            point,
            name,
            spec,
            object_key,
            acks,
            state,
        }
    }

    /// The point's live alarm state (NORMAL and acknowledged if `Alarms`
    /// does not know the point, which start-up rules out).
    pub fn live(&self) -> AlarmState {
        self.alarms.state(self.point).unwrap_or_default()
    }

    /// The event algorithm's Event_Type (Clause 13.3).
    pub fn event_type(&self) -> EventType {
        match self.spec.algorithm {
            Algorithm::OutOfRange { .. } => EventType::OUT_OF_RANGE,
            Algorithm::ChangeOfState { .. } => EventType::CHANGE_OF_STATE,
            // Fault detection only: every transition is to or from FAULT,
            // which the stack reports as CHANGE_OF_RELIABILITY anyway.
            Algorithm::None => EventType::CHANGE_OF_RELIABILITY,
        }
    }

    /// Queues a transition of this point for the stack.
    pub fn enqueue(&self, rec: &AlarmRecord) {
        let t = &rec.transition;
        let mut st = self.state.lock();
        if st.queue.len() >= QUEUE_CAP {
            tracing::warn!(point = %self.name, "bacnet: event queue full, oldest transition not notified");
            st.queue.pop_front();
        }
        st.queue.push_back(Queued {
            from: t.from,
            to: t.to,
            notify: t.notify,
            text: format!("{}: {}", self.name, t.reason),
        });
    }

    pub fn queued(&self) -> usize {
        self.state.lock().queue.len()
    }

    /// The next transition for the stack to commit and distribute.
    pub fn proposal(&self) -> Option<TransitionOutcome> {
        let st = self.state.lock();
        let q = st.queue.front()?;
        Some(TransitionOutcome {
            change: EventStateChange {
                from: event_state(q.from),
                to: event_state(q.to),
            },
            event_type: self.event_type(),
            distribute: q.notify,
        })
    }

    /// The stack commits the proposal: castpoint made the transition
    /// already, so this takes it off the queue and remembers it.
    pub fn commit(&self, c: &EventTransitionCommit) -> Result<(), EventTransitionCommitError> {
        let mut st = self.state.lock();
        let Some(q) = st.queue.front() else {
            return Err(EventTransitionCommitError::CurrentStateMismatch {
                expected: c.change.from,
                actual: event_state(self.live().event_state),
            });
        };
        if event_state(q.from) != c.change.from || event_state(q.to) != c.change.to {
            return Err(EventTransitionCommitError::CurrentStateMismatch {
                expected: c.change.from,
                actual: event_state(q.from),
            });
        }
        let kind = kind_of(c.coordinate);
        let Some(q) = st.queue.pop_front() else {
            return Err(EventTransitionCommitError::Unsupported);
        };
        st.last[kind as usize] = Some((q.from, q.to, q.text));
        st.last_kind = Some(kind);
        Ok(())
    }

    /// Event_Message_Texts element for `kind`.
    pub fn message_text(&self, kind: TransitionKind) -> String {
        self.state.lock().last[kind as usize]
            .as_ref()
            .map(|(_, _, t)| t.clone())
            .unwrap_or_default()
    }

    pub fn capability(&self) -> EnrollmentSummaryCapability {
        let last = self.state.lock().last_kind;
        EnrollmentSummaryCapability {
            event_type: self.event_type(),
            last_transition: last.map(|k| match k {
                TransitionKind::ToOffnormal => EventTransition::ToOffnormal,
                TransitionKind::ToFault => EventTransition::ToFault,
                TransitionKind::ToNormal => EventTransition::ToNormal,
            }),
        }
    }

    /// AcknowledgeAlarm (Clause 13.5) for `asked_state` stamped `asked`:
    /// checked against `Alarms`, then `Alarms::acknowledge` (stored before
    /// the stack answers). Returns the acknowledged transition for the
    /// ACK_NOTIFICATION when it is known.
    pub fn acknowledge(
        &self,
        asked_state: BEventState,
        asked: &BACnetTimeStamp,
    ) -> Result<Option<EventStateChange>, Error> {
        let kind = kind_of(EventTransition::for_target_state(asked_state));
        let (peer, who) = self.acks.take(self.object_key);
        let source = Source::new(Protocol::Bacnet, peer, who);
        let r = self.check_and_acknowledge(kind, asked_state, asked, &source);
        if let Err(e) = &r {
            // Like a refused write: who tried, what, and the answer given.
            self.alarms.audit_refused_ack(
                &self.name,
                kind,
                &source,
                &format!("event state {asked_state:?}, time stamp {asked:?}: {e}"),
            );
        }
        r
    }

    fn check_and_acknowledge(
        &self,
        kind: TransitionKind,
        asked_state: BEventState,
        asked: &BACnetTimeStamp,
        source: &Source,
    ) -> Result<Option<EventStateChange>, Error> {
        let services = |c| Error::protocol(ErrorClass::SERVICES, c);
        let live = self.live();
        let Some(at) = live.time_stamps.get(kind) else {
            // No transition of that kind ever happened.
            return Err(services(ErrorCode::INVALID_TIME_STAMP));
        };
        if !same_time_stamp(asked, at) {
            return Err(services(ErrorCode::INVALID_TIME_STAMP));
        }
        let known = self.state.lock().last[kind as usize].clone();
        // The state acknowledged must be the one that transition entered
        // (OFFNORMAL stands for any off-normal state, as the stack's own
        // objects accept).
        if let Some((_, to, _)) = &known {
            let ok = event_state(*to) == asked_state
                || (asked_state == BEventState::OFFNORMAL && kind == TransitionKind::ToOffnormal);
            if !ok {
                return Err(services(ErrorCode::INVALID_EVENT_STATE));
            }
        }
        match self.alarms.acknowledge(&self.name, kind, at, source) {
            Ok(_) => {}
            Err(AckFailure::Refused(AckError::InvalidTimeStamp(_)))
            | Err(AckFailure::Refused(AckError::NoSuchTransition(_))) => {
                return Err(services(ErrorCode::INVALID_TIME_STAMP))
            }
            Err(AckFailure::NoAlarm(_)) => {
                return Err(Error::protocol(
                    ErrorClass::OBJECT,
                    ErrorCode::NO_ALARM_CONFIGURED,
                ))
            }
            Err(AckFailure::Store(e)) => {
                tracing::error!(point = %self.name, "bacnet: acknowledgement not stored: {e}");
                return Err(Error::protocol(
                    ErrorClass::DEVICE,
                    ErrorCode::OPERATIONAL_PROBLEM,
                ));
            }
        }
        Ok(known.map(|(from, to, _)| EventStateChange {
            from: event_state(from),
            to: event_state(to),
        }))
    }
}

/// The event properties an object with an alarm adds, by object type
/// (Clause 12: AI 12.2, AV 12.4, BO 12.7, BV 12.8, MSV 12.20).
pub fn event_properties(ty: BacnetObjectType, spec: &AlarmSpec) -> Vec<P> {
    let mut v = vec![
        P::EVENT_ENABLE,
        P::ACKED_TRANSITIONS,
        P::NOTIFY_TYPE,
        P::EVENT_TIME_STAMPS,
        P::EVENT_MESSAGE_TEXTS,
        P::NOTIFICATION_CLASS,
        P::EVENT_DETECTION_ENABLE,
        P::TIME_DELAY,
        P::TIME_DELAY_NORMAL,
    ];
    match ty {
        BacnetObjectType::AnalogInput | BacnetObjectType::AnalogValue => {
            v.extend([P::HIGH_LIMIT, P::LOW_LIMIT, P::DEADBAND, P::LIMIT_ENABLE]);
        }
        BacnetObjectType::BinaryValue => {
            if matches!(spec.algorithm, Algorithm::ChangeOfState { .. }) {
                v.push(P::ALARM_VALUE);
            }
        }
        // A Binary Output's intrinsic algorithm is COMMAND_FAILURE, which
        // castpoint has no feedback for: only its fault reporting applies.
        BacnetObjectType::BinaryOutput => {}
        BacnetObjectType::MultiStateValue => {
            v.extend([P::ALARM_VALUES, P::FAULT_VALUES]);
        }
    }
    v
}

fn array3(items: [PropertyValue; 3], index: Option<u32>) -> Result<PropertyValue, Error> {
    match index {
        None => Ok(PropertyValue::List(items.to_vec())),
        Some(0) => Ok(PropertyValue::Unsigned(3)),
        Some(i @ 1..=3) => Ok(items[i as usize - 1].clone()),
        Some(_) => Err(Error::protocol(
            ErrorClass::PROPERTY,
            ErrorCode::INVALID_ARRAY_INDEX,
        )),
    }
}

fn enum_values(values: &[Value], binary: bool) -> Vec<PropertyValue> {
    values
        .iter()
        .map(|v| {
            if binary {
                PropertyValue::Enumerated(u32::from(v.as_bool()))
            } else {
                PropertyValue::Unsigned(v.as_f64().max(0.0) as u64)
            }
        })
        .collect()
}

/// Reads one event property of an object with an alarm (`None`: not an
/// event property; the caller answers it).
pub fn read(
    link: &AlarmLink,
    property: P,
    index: Option<u32>,
) -> Option<Result<PropertyValue, Error>> {
    let spec = &link.spec;
    let secs = |d: std::time::Duration| PropertyValue::Unsigned(d.as_secs());
    let limits = match &spec.algorithm {
        Algorithm::OutOfRange {
            high_limit,
            low_limit,
            deadband,
        } => Some((*high_limit, *low_limit, *deadband)),
        _ => None,
    };
    let real = |v: f64| PropertyValue::Real(v as f32);
    Some(Ok(match property {
        P::EVENT_STATE => PropertyValue::Enumerated(link.live().event_state as u32),
        P::EVENT_ENABLE => transition_bits(spec.event_enable),
        P::ACKED_TRANSITIONS => transition_bits(link.live().acked),
        P::NOTIFY_TYPE => PropertyValue::Enumerated(NotifyType::ALARM.to_raw()),
        P::EVENT_TIME_STAMPS => {
            let ts = link.live().time_stamps;
            return Some(array3(
                [
                    time_stamp_value(ts.to_offnormal),
                    time_stamp_value(ts.to_fault),
                    time_stamp_value(ts.to_normal),
                ],
                index,
            ));
        }
        P::EVENT_MESSAGE_TEXTS => {
            return Some(array3(
                TransitionKind::ALL.map(|k| PropertyValue::CharacterString(link.message_text(k))),
                index,
            ))
        }
        P::NOTIFICATION_CLASS => PropertyValue::Unsigned(u64::from(spec.notification_class)),
        P::EVENT_DETECTION_ENABLE => PropertyValue::Boolean(true),
        P::TIME_DELAY => secs(spec.time_delay),
        P::TIME_DELAY_NORMAL => secs(spec.time_delay_normal.unwrap_or(spec.time_delay)),
        // A disabled limit still reads as a REAL (the notification builder
        // reads both); Limit_Enable says it is off.
        P::HIGH_LIMIT => real(limits.and_then(|l| l.0).unwrap_or(0.0)),
        P::LOW_LIMIT => real(limits.and_then(|l| l.1).unwrap_or(0.0)),
        P::DEADBAND => real(limits.map(|l| l.2).unwrap_or(0.0)),
        P::LIMIT_ENABLE => {
            // BACnetLimitEnable: low-limit-enable (bit 0), high-limit-enable (bit 1).
            let mut b = 0u8;
            if limits.is_some_and(|l| l.1.is_some()) {
                b |= 0x80;
            }
            if limits.is_some_and(|l| l.0.is_some()) {
                b |= 0x40;
            }
            PropertyValue::BitString {
                unused_bits: 6,
                data: vec![b],
            }
        }
        P::ALARM_VALUE => match &spec.algorithm {
            Algorithm::ChangeOfState { alarm_values } => {
                // A binary point has one off-normal value; several are the
                // same value twice.
                PropertyValue::Enumerated(u32::from(
                    alarm_values.first().is_some_and(|v| v.as_bool()),
                ))
            }
            _ => return None,
        },
        P::ALARM_VALUES => match &spec.algorithm {
            Algorithm::ChangeOfState { alarm_values } => {
                PropertyValue::List(enum_values(alarm_values, false))
            }
            _ => PropertyValue::List(Vec::new()),
        },
        P::FAULT_VALUES => PropertyValue::List(enum_values(&spec.fault_values, false)),
        _ => return None,
    }))
}

/// A notification class as configured (`[[notification_class]]`).
#[derive(Debug, Clone, PartialEq)]
pub struct ClassDef {
    /// The class number, also the Notification Class object's instance.
    pub id: u32,
    pub name: String,
    pub description: String,
    pub rules: ClassRules,
}

/// The notification classes in force (the configured ones and the shipped
/// defaults they do not replace), as the device serves them.
pub fn class_defs(tables: &[NotificationClassTable]) -> Vec<ClassDef> {
    crate::alarms::config::effective(tables)
        .into_iter()
        .map(|t| ClassDef {
            id: t.id,
            rules: t.rules(),
            name: t.name,
            description: t.description,
        })
        .collect()
}

/// The file in the data directory that keeps class `id`'s written
/// Recipient_List (the stack's format: a tag, the object identifier, the
/// encoded list; replaced whole on each save).
pub fn recipient_list_file(data_dir: &Path, id: u32) -> PathBuf {
    data_dir.join(format!("bacnet-notification-class-{id}.rcp"))
}

/// The Notification Class object of a configured class: Priority and
/// Ack_Required from the configuration (the same `ClassRules` `Alarms`
/// applies, so both sides agree on which transitions need an ack), the
/// Recipient_List the network wrote last, kept in the data directory.
pub fn notification_class(def: &ClassDef, data_dir: &Path) -> Result<NotificationClass, String> {
    let store = FileNotificationClassPersistence::new(recipient_list_file(data_dir, def.id))
        .map_err(|e| format!("notification class {}: {e}", def.id))?;
    let mut nc = NotificationClass::with_persistence(def.id, def.name.clone(), Arc::new(store))
        .map_err(|e| format!("notification class {}: {e}", def.id))?;
    let p = def.rules.priority;
    nc.priority = [p.to_offnormal, p.to_fault, p.to_normal];
    let a = def.rules.ack_required;
    let mut bits = EventTransitionBits::empty();
    for (on, bit) in [
        (a.to_offnormal, EventTransitionBits::TO_OFFNORMAL),
        (a.to_fault, EventTransitionBits::TO_FAULT),
        (a.to_normal, EventTransitionBits::TO_NORMAL),
    ] {
        if on {
            bits |= bit;
        }
    }
    nc.ack_required = bits;
    nc.set_description(if def.description.is_empty() {
        format!("castpoint notification class {}", def.id)
    } else {
        def.description.clone()
    });
    Ok(nc)
}

/// Properties of a Notification Class that the stack's object would take
/// from the network but castpoint keeps as configuration (the class number
/// ties points to it; the description is generated): refused with
/// WRITE_ACCESS_DENIED like every read-only property. Recipient_List is
/// the one writable property.
pub const CLASS_READ_ONLY: [P; 2] = [P::NOTIFICATION_CLASS, P::DESCRIPTION];

/// The event properties that are lists or arrays.
pub fn is_array(property: P) -> bool {
    matches!(property, P::EVENT_TIME_STAMPS | P::EVENT_MESSAGE_TEXTS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_stamps_round_trip_at_hundredths() {
        let at = DateTime::parse_from_rfc3339("2026-12-06T11:22:33.456789Z")
            .unwrap()
            .with_timezone(&Utc);
        let ts = time_stamp(Some(at));
        assert!(same_time_stamp(&ts, at));
        let later = at + chrono::Duration::milliseconds(10);
        assert!(!same_time_stamp(&ts, later), "a hundredth apart");
        assert!(!same_time_stamp(&BACnetTimeStamp::SequenceNumber(0), at));
        // The framed CHOICE: [2] { Date, Time }.
        let PropertyValue::ApplicationData(b) = time_stamp_value(Some(at)) else {
            panic!("not framed");
        };
        assert_eq!(
            b,
            vec![0x2e, 0xa4, 126, 12, 6, 7, 0xb4, 11, 22, 33, 45, 0x2f]
        );
        let PropertyValue::ApplicationData(b) = time_stamp_value(None) else {
            panic!("not framed");
        };
        assert_eq!(
            b,
            vec![0x2e, 0xa4, 255, 255, 255, 255, 0xb4, 255, 255, 255, 255, 0x2f]
        );
    }

    #[test]
    fn transition_bits_are_msb_first() {
        let v = transition_bits(PerTransition {
            to_offnormal: true,
            to_fault: false,
            to_normal: true,
        });
        assert_eq!(
            v,
            PropertyValue::BitString {
                unused_bits: 5,
                data: vec![0xa0]
            }
        );
    }
}
