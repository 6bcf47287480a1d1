//! Intrinsic alarm evaluation, sans-IO: ASHRAE 135 clause 13's event states, OUT_OF_RANGE and CHANGE_OF_STATE algorithms, fault from bad quality, time delays, Event_Enable, Acked_Transitions and AcknowledgeAlarm.
//!
//! One [`AlarmState`] per alarm-capable point, fed every value/quality change
//! and ticked at [`AlarmState::next_deadline`]; it returns the transitions to
//! record and notify. Every protocol shows the same state because there is
//! only this one: BACnet renders it as Event_State / Acked_Transitions /
//! Event_Time_Stamps, REST and Haystack as the alarm document, Modbus as the
//! summary block. The rules follow 135-2020:
//!
//! - **Fault first** (13.2.2.1, 13.4): a point whose value has no fresh
//!   source (quality Unavailable, Fault or Stale — castpoint's Reliability
//!   other than NO_FAULT_DETECTED) or an enum in its fault values goes to
//!   FAULT at once, with no time delay; it leaves FAULT for NORMAL when the
//!   fault clears, and the event algorithm then starts over from NORMAL.
//! - **OUT_OF_RANGE** (13.3.6) for numbers: HIGH_LIMIT when the value stays
//!   above High_Limit for Time_Delay, LOW_LIMIT below Low_Limit, each only if
//!   its Limit_Enable bit is set; back to NORMAL when it stays below
//!   High_Limit − Deadband (above Low_Limit + Deadband) for
//!   Time_Delay_Normal; HIGH_LIMIT ↔ LOW_LIMIT directly.
//! - **CHANGE_OF_STATE** (13.3.2) for enums and bools: OFFNORMAL while the
//!   value is one of the alarm values for Time_Delay, a new OFFNORMAL
//!   transition when it moves to another alarm value, NORMAL when it stays
//!   out of them for Time_Delay_Normal.
//! - **Event_Enable** (13.2.5) masks notifications, never state changes: a
//!   disabled transition still changes Event_State and its time stamp, is not
//!   notified and needs no acknowledgement.
//! - **Acked_Transitions**: a notified transition whose notification class
//!   requires an ack clears its bit until AcknowledgeAlarm names that
//!   transition with its exact time stamp (13.5: else INVALID_TIME_STAMP).
//!
//! Monotonic time (`Instant`) drives the delays, so a wall-clock step never
//! fires or holds an alarm; wall-clock time (`DateTime<Utc>`) stamps the
//! transitions, as BACnet and the audit log show them.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::{Quality, Value};

/// BACnet Event_State (the values are BACnetEventState's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventState {
    Normal = 0,
    Fault = 1,
    Offnormal = 2,
    HighLimit = 3,
    LowLimit = 4,
}

impl EventState {
    pub fn as_str(self) -> &'static str {
        match self {
            EventState::Normal => "normal",
            EventState::Fault => "fault",
            EventState::Offnormal => "offnormal",
            EventState::HighLimit => "high-limit",
            EventState::LowLimit => "low-limit",
        }
    }

    /// Which of the three transition kinds entering this state is.
    pub fn entered_by(self) -> TransitionKind {
        match self {
            EventState::Normal => TransitionKind::ToNormal,
            EventState::Fault => TransitionKind::ToFault,
            _ => TransitionKind::ToOffnormal,
        }
    }
}

/// The three transitions of Event_Enable, Acked_Transitions,
/// Event_Time_Stamps and a notification class's Priority / Ack_Required, in
/// BACnet's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransitionKind {
    ToOffnormal = 0,
    ToFault = 1,
    ToNormal = 2,
}

impl TransitionKind {
    pub const ALL: [TransitionKind; 3] = [
        TransitionKind::ToOffnormal,
        TransitionKind::ToFault,
        TransitionKind::ToNormal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TransitionKind::ToOffnormal => "to-offnormal",
            TransitionKind::ToFault => "to-fault",
            TransitionKind::ToNormal => "to-normal",
        }
    }
}

/// A value per transition kind (BACnetEventTransitionBits and friends).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PerTransition<T> {
    pub to_offnormal: T,
    pub to_fault: T,
    pub to_normal: T,
}

impl<T: Copy> PerTransition<T> {
    pub fn all(v: T) -> Self {
        PerTransition {
            to_offnormal: v,
            to_fault: v,
            to_normal: v,
        }
    }

    pub fn get(&self, k: TransitionKind) -> T {
        match k {
            TransitionKind::ToOffnormal => self.to_offnormal,
            TransitionKind::ToFault => self.to_fault,
            TransitionKind::ToNormal => self.to_normal,
        }
    }

    pub fn set(&mut self, k: TransitionKind, v: T) {
        match k {
            TransitionKind::ToOffnormal => self.to_offnormal = v,
            TransitionKind::ToFault => self.to_fault = v,
            TransitionKind::ToNormal => self.to_normal = v,
        }
    }
}

/// The event algorithm of a point.
#[derive(Debug, Clone, PartialEq)]
pub enum Algorithm {
    /// Fault detection only (e.g. a point that must simply have a source).
    None,
    /// OUT_OF_RANGE: a limit is `None` when its Limit_Enable bit is clear.
    OutOfRange {
        high_limit: Option<f64>,
        low_limit: Option<f64>,
        deadband: f64,
    },
    /// CHANGE_OF_STATE: the values that are off-normal (Alarm_Values).
    ChangeOfState { alarm_values: Vec<Value> },
}

/// A point's alarm configuration (resolved and validated by config).
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmSpec {
    pub algorithm: Algorithm,
    /// Enum values that are faults (Fault_Values), checked before the
    /// algorithm.
    pub fault_values: Vec<Value>,
    /// Whether a value with no fresh source (quality Unavailable, Fault or
    /// Stale) is a FAULT. Off for points whose absence is normal (a GPU
    /// measurement on a machine without one).
    pub fault_on_bad_quality: bool,
    /// How long an off-normal condition must hold (Time_Delay).
    pub time_delay: Duration,
    /// How long the normal condition must hold to return (Time_Delay_Normal;
    /// `None` = `time_delay`).
    pub time_delay_normal: Option<Duration>,
    /// Event_Enable.
    pub event_enable: PerTransition<bool>,
    /// The Notification Class this point's events go to.
    pub notification_class: u32,
}

impl AlarmSpec {
    fn delay_normal(&self) -> Duration {
        self.time_delay_normal.unwrap_or(self.time_delay)
    }
}

#[cfg(test)]
impl AlarmSpec {
    /// Test fixture shared by the views' tests: HIGH_LIMIT above `limit`
    /// (deadband 1), no time delay, no fault detection, class `class`.
    pub fn high_limit_for_tests(limit: f64, class: u32) -> AlarmSpec {
        AlarmSpec {
            algorithm: Algorithm::OutOfRange {
                high_limit: Some(limit),
                low_limit: None,
                deadband: 1.0,
            },
            fault_values: vec![],
            fault_on_bad_quality: false,
            time_delay: Duration::ZERO,
            time_delay_normal: None,
            event_enable: PerTransition::all(true),
            notification_class: class,
        }
    }
}

/// What a point's notification class says about its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassRules {
    /// Priority per transition (0 highest .. 255).
    pub priority: PerTransition<u8>,
    /// Ack_Required per transition.
    pub ack_required: PerTransition<bool>,
}

#[cfg(test)]
impl ClassRules {
    /// Test fixture: priority 1, every transition needs an ack.
    pub fn acked_for_tests() -> ClassRules {
        ClassRules {
            priority: PerTransition::all(1),
            ack_required: PerTransition::all(true),
        }
    }
}

impl Default for ClassRules {
    fn default() -> Self {
        ClassRules {
            priority: PerTransition::all(255),
            ack_required: PerTransition::all(false),
        }
    }
}

/// One event-state transition, as recorded and notified.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub from: EventState,
    pub to: EventState,
    pub kind: TransitionKind,
    /// Wall-clock time stamp (Event_Time_Stamps, the notification's time).
    pub at: DateTime<Utc>,
    /// Event_Enable allowed a notification.
    pub notify: bool,
    /// The transition waits for an acknowledgement.
    pub ack_required: bool,
    pub priority: u8,
    /// The value that caused it (`None` when it had none).
    pub value: Option<Value>,
    /// Why, in words (for the message text and the audit log).
    pub reason: String,
}

/// Why an acknowledgement was refused (BACnet error codes of 13.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    /// The time stamp is not that of the most recent transition of this
    /// kind (INVALID_TIME_STAMP).
    #[error("the time stamp does not match the most recent {0:?} transition")]
    InvalidTimeStamp(TransitionKind),
    /// There never was a transition of this kind (INVALID_EVENT_STATE).
    #[error("no {0:?} transition to acknowledge")]
    NoSuchTransition(TransitionKind),
}

/// A condition waiting out its time delay.
#[derive(Debug, Clone, PartialEq)]
struct Pending {
    to: EventState,
    since: Instant,
    /// CHANGE_OF_STATE: the alarm value the condition is about (a move to
    /// another alarm value restarts the delay).
    value: Option<Value>,
}

/// A point's live alarm state.
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmState {
    pub event_state: EventState,
    /// Event_Time_Stamps: the last transition of each kind.
    pub time_stamps: PerTransition<Option<DateTime<Utc>>>,
    /// Acked_Transitions: `false` while a transition awaits its ack.
    pub acked: PerTransition<bool>,
    /// The alarm value of the current OFFNORMAL state (CHANGE_OF_STATE).
    offnormal_value: Option<Value>,
    pending: Option<Pending>,
}

impl Default for AlarmState {
    fn default() -> Self {
        AlarmState {
            event_state: EventState::Normal,
            time_stamps: PerTransition::all(None),
            acked: PerTransition::all(true),
            offnormal_value: None,
            pending: None,
        }
    }
}

/// What the inputs say the state should be, before time delays.
fn target(
    spec: &AlarmSpec,
    current: EventState,
    value: Option<Value>,
    quality: Quality,
) -> (EventState, String) {
    let bad = matches!(
        quality,
        Quality::Unavailable | Quality::Fault | Quality::Stale
    );
    if spec.fault_on_bad_quality && (bad || value.is_none()) {
        return (
            EventState::Fault,
            format!("no valid value (quality {quality:?})"),
        );
    }
    let Some(v) = value else {
        // No value and faults not reported: nothing to judge; hold NORMAL.
        return (EventState::Normal, "no value".into());
    };
    if spec.fault_values.contains(&v) {
        return (EventState::Fault, format!("value {v:?} is a fault value"));
    }
    match &spec.algorithm {
        Algorithm::None => (EventState::Normal, "normal".into()),
        Algorithm::OutOfRange {
            high_limit,
            low_limit,
            deadband,
        } => {
            let x = v.as_f64();
            let above = high_limit.is_some_and(|h| x > h);
            let below = low_limit.is_some_and(|l| x < l);
            if above {
                return (
                    EventState::HighLimit,
                    format!("{x} above the high limit {}", high_limit.unwrap_or(x)),
                );
            }
            if below {
                return (
                    EventState::LowLimit,
                    format!("{x} below the low limit {}", low_limit.unwrap_or(x)),
                );
            }
            // Inside the limits: the deadband keeps a limit state until
            // the value is clearly back (13.3.6 (c), (d)).
            match current {
                EventState::HighLimit if high_limit.is_some_and(|h| x >= h - deadband) => (
                    EventState::HighLimit,
                    format!("{x} within the deadband below the high limit"),
                ),
                EventState::LowLimit if low_limit.is_some_and(|l| x <= l + deadband) => (
                    EventState::LowLimit,
                    format!("{x} within the deadband above the low limit"),
                ),
                _ => (EventState::Normal, format!("{x} within limits")),
            }
        }
        Algorithm::ChangeOfState { alarm_values } => {
            if alarm_values.contains(&v) {
                (
                    EventState::Offnormal,
                    format!("value {v:?} is an alarm value"),
                )
            } else {
                (EventState::Normal, format!("value {v:?} is normal"))
            }
        }
    }
}

impl AlarmState {
    /// Feeds the point's current value and quality (`now` monotonic, `wall`
    /// its wall-clock reading); returns the transition that happened, if
    /// any. Call it on every change of the point and at
    /// [`next_deadline`](Self::next_deadline).
    pub fn evaluate(
        &mut self,
        spec: &AlarmSpec,
        rules: &ClassRules,
        value: Option<Value>,
        quality: Quality,
        now: Instant,
        wall: DateTime<Utc>,
    ) -> Option<Transition> {
        let (to, reason) = target(spec, self.event_state, value, quality);
        let cos_value = match (&spec.algorithm, to) {
            (Algorithm::ChangeOfState { .. }, EventState::Offnormal) => value,
            _ => None,
        };
        if self.event_state == EventState::Fault && to != EventState::Fault {
            // The fault cleared: NORMAL at once (13.2.2.1), and the event
            // algorithm starts over from there — an off-normal condition
            // that already holds waits its full delay from now.
            self.pending = (to != EventState::Normal).then_some(Pending {
                to,
                since: now,
                value: cos_value,
            });
            return Some(self.transition(
                spec,
                rules,
                EventState::Normal,
                None,
                value,
                wall,
                "fault cleared".into(),
            ));
        }
        let same = to == self.event_state
            && (to != EventState::Offnormal || cos_value == self.offnormal_value);
        if same {
            // The condition that was pending went away before its delay.
            self.pending = None;
            return None;
        }
        // Fault transitions are immediate (13.2.2.1).
        let delay = if to == EventState::Fault {
            Duration::ZERO
        } else if to == EventState::Normal {
            spec.delay_normal()
        } else {
            spec.time_delay
        };
        let since = match &self.pending {
            Some(p) if p.to == to && p.value == cos_value => p.since,
            _ => now,
        };
        if now.saturating_duration_since(since) < delay {
            self.pending = Some(Pending {
                to,
                since,
                value: cos_value,
            });
            return None;
        }
        self.pending = None;
        Some(self.transition(spec, rules, to, cos_value, value, wall, reason))
    }

    #[allow(clippy::too_many_arguments)]
    fn transition(
        &mut self,
        spec: &AlarmSpec,
        rules: &ClassRules,
        to: EventState,
        cos_value: Option<Value>,
        value: Option<Value>,
        wall: DateTime<Utc>,
        reason: String,
    ) -> Transition {
        let from = self.event_state;
        let kind = to.entered_by();
        let notify = spec.event_enable.get(kind);
        let ack_required = notify && rules.ack_required.get(kind);
        self.event_state = to;
        self.offnormal_value = cos_value;
        self.time_stamps.set(kind, Some(wall));
        self.acked.set(kind, !ack_required);
        Transition {
            from,
            to,
            kind,
            at: wall,
            notify,
            ack_required,
            priority: rules.priority.get(kind),
            value,
            reason,
        }
    }

    /// When a pending condition's delay runs out (evaluate again then).
    pub fn next_deadline(&self, spec: &AlarmSpec) -> Option<Instant> {
        let p = self.pending.as_ref()?;
        let delay = if p.to == EventState::Normal {
            spec.delay_normal()
        } else {
            spec.time_delay
        };
        Some(p.since + delay)
    }

    /// AcknowledgeAlarm for one transition kind, naming its time stamp.
    /// Acknowledging an already acknowledged transition succeeds (135
    /// allows repeating an ack). Returns whether the state changed.
    pub fn acknowledge(
        &mut self,
        kind: TransitionKind,
        time_stamp: DateTime<Utc>,
    ) -> Result<bool, AckError> {
        match self.time_stamps.get(kind) {
            None => Err(AckError::NoSuchTransition(kind)),
            Some(t) if t != time_stamp => Err(AckError::InvalidTimeStamp(kind)),
            Some(_) => {
                let was = self.acked.get(kind);
                self.acked.set(kind, true);
                Ok(!was)
            }
        }
    }

    /// Active (not NORMAL) or waiting for an acknowledgement: what
    /// GetEventInformation and `/api/alarms` list.
    pub fn is_listed(&self) -> bool {
        self.event_state != EventState::Normal
            || TransitionKind::ALL.iter().any(|k| !self.acked.get(*k))
    }

    /// Restores a persisted state (after a restart): the state, time stamps
    /// and acks survive; pending delays start over.
    pub fn restore(
        event_state: EventState,
        time_stamps: PerTransition<Option<DateTime<Utc>>>,
        acked: PerTransition<bool>,
        offnormal_value: Option<Value>,
    ) -> AlarmState {
        AlarmState {
            event_state,
            time_stamps,
            acked,
            offnormal_value,
            pending: None,
        }
    }

    /// The alarm value of the current OFFNORMAL state, for persistence.
    pub fn offnormal_value(&self) -> Option<Value> {
        self.offnormal_value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(high: Option<f64>, low: Option<f64>, deadband: f64, delay: u64) -> AlarmSpec {
        AlarmSpec {
            algorithm: Algorithm::OutOfRange {
                high_limit: high,
                low_limit: low,
                deadband,
            },
            fault_values: vec![],
            fault_on_bad_quality: true,
            time_delay: Duration::from_secs(delay),
            time_delay_normal: None,
            event_enable: PerTransition::all(true),
            notification_class: 1,
        }
    }

    fn acked_rules() -> ClassRules {
        ClassRules {
            priority: PerTransition {
                to_offnormal: 100,
                to_fault: 50,
                to_normal: 200,
            },
            ack_required: PerTransition {
                to_offnormal: true,
                to_fault: true,
                to_normal: false,
            },
        }
    }

    /// Drives one state through (seconds from t0, value) steps; returns the
    /// state after each step.
    struct Run {
        st: AlarmState,
        spec: AlarmSpec,
        rules: ClassRules,
        t0: Instant,
        w0: DateTime<Utc>,
    }

    impl Run {
        fn new(spec: AlarmSpec) -> Run {
            Run {
                st: AlarmState::default(),
                spec,
                rules: acked_rules(),
                t0: Instant::now(),
                w0: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
            }
        }

        fn at(&mut self, secs: f64, v: Option<Value>, q: Quality) -> Option<Transition> {
            let d = Duration::from_secs_f64(secs);
            self.st.evaluate(
                &self.spec,
                &self.rules,
                v,
                q,
                self.t0 + d,
                self.w0 + chrono::Duration::from_std(d).unwrap(),
            )
        }

        fn num(&mut self, secs: f64, x: f64) -> Option<EventState> {
            self.at(secs, Some(Value::Number(x)), Quality::Ok)
                .map(|t| t.to)
        }
    }

    #[test]
    fn high_limit_waits_out_the_time_delay_and_returns_past_the_deadband() {
        let mut r = Run::new(range(Some(90.0), Some(10.0), 5.0, 10));
        assert_eq!(r.num(0.0, 50.0), None);
        assert_eq!(r.num(1.0, 95.0), None, "not before Time_Delay");
        assert_eq!(
            r.st.next_deadline(&r.spec),
            Some(r.t0 + Duration::from_secs(11))
        );
        assert_eq!(r.num(10.9, 96.0), None);
        assert_eq!(r.num(11.0, 96.0), Some(EventState::HighLimit));
        // Below the limit but inside the deadband: still high.
        assert_eq!(r.num(12.0, 86.0), None);
        assert_eq!(r.num(30.0, 86.0), None);
        assert_eq!(r.st.event_state, EventState::HighLimit);
        // Past the deadband for Time_Delay_Normal (= Time_Delay here).
        assert_eq!(r.num(31.0, 84.0), None);
        assert_eq!(r.num(41.0, 84.0), Some(EventState::Normal));
    }

    #[test]
    fn a_condition_that_ends_before_its_delay_never_fires() {
        let mut r = Run::new(range(Some(90.0), None, 0.0, 10));
        assert_eq!(r.num(0.0, 95.0), None);
        assert_eq!(r.num(5.0, 80.0), None, "back before the delay");
        assert_eq!(r.num(12.0, 95.0), None, "the delay starts over");
        assert_eq!(r.num(21.9, 95.0), None);
        assert_eq!(r.num(22.0, 95.0), Some(EventState::HighLimit));
    }

    #[test]
    fn limits_switch_directly_and_disabled_limits_never_fire() {
        let mut r = Run::new(range(Some(90.0), Some(10.0), 1.0, 0));
        assert_eq!(r.num(0.0, 95.0), Some(EventState::HighLimit));
        assert_eq!(r.num(1.0, 5.0), Some(EventState::LowLimit));
        assert_eq!(r.num(2.0, 10.5), None, "inside the low deadband");
        assert_eq!(r.num(3.0, 11.5), Some(EventState::Normal));
        let mut r = Run::new(range(None, Some(10.0), 1.0, 0));
        assert_eq!(r.num(0.0, 1e9), None, "high limit disabled");
    }

    #[test]
    fn bad_quality_is_fault_at_once_and_clears_to_normal() {
        let mut r = Run::new(range(Some(90.0), None, 0.0, 30));
        let t = r.at(0.0, None, Quality::Unavailable).unwrap();
        assert_eq!(
            (t.from, t.to, t.kind),
            (
                EventState::Normal,
                EventState::Fault,
                TransitionKind::ToFault
            )
        );
        assert_eq!(t.priority, 50);
        assert!(t.ack_required && !r.st.acked.to_fault);
        for q in [Quality::Stale, Quality::Fault] {
            assert_eq!(r.at(1.0, Some(Value::Number(1.0)), q), None, "still fault");
        }
        // The fault clears at once, then the algorithm starts from NORMAL:
        // an out-of-range value waits its own delay.
        let t = r.at(2.0, Some(Value::Number(95.0)), Quality::Ok).unwrap();
        assert_eq!(t.to, EventState::Normal);
        assert_eq!(r.num(3.0, 95.0), None);
        assert_eq!(r.num(32.0, 95.0), Some(EventState::HighLimit));
        // Without fault reporting, an absent value is simply not judged.
        let mut spec = range(Some(90.0), None, 0.0, 0);
        spec.fault_on_bad_quality = false;
        let mut r = Run::new(spec);
        assert_eq!(r.at(0.0, None, Quality::Unavailable), None);
    }

    #[test]
    fn change_of_state_with_a_new_alarm_value_is_a_new_transition() {
        let spec = AlarmSpec {
            algorithm: Algorithm::ChangeOfState {
                alarm_values: vec![Value::Enum(2), Value::Enum(3)],
            },
            fault_values: vec![Value::Enum(4)],
            fault_on_bad_quality: true,
            time_delay: Duration::from_secs(2),
            time_delay_normal: Some(Duration::from_secs(5)),
            event_enable: PerTransition::all(true),
            notification_class: 1,
        };
        let mut r = Run::new(spec);
        let e =
            |r: &mut Run, s: f64, v: u16| r.at(s, Some(Value::Enum(v)), Quality::Ok).map(|t| t.to);
        assert_eq!(e(&mut r, 0.0, 1), None);
        assert_eq!(e(&mut r, 1.0, 2), None);
        assert_eq!(e(&mut r, 3.0, 2), Some(EventState::Offnormal));
        // Another alarm value: its own delay, then a new OFFNORMAL.
        assert_eq!(e(&mut r, 4.0, 3), None);
        let t = r.at(6.0, Some(Value::Enum(3)), Quality::Ok).unwrap();
        assert_eq!(
            (t.from, t.to, t.value),
            (
                EventState::Offnormal,
                EventState::Offnormal,
                Some(Value::Enum(3))
            )
        );
        // Normal needs Time_Delay_Normal (5 s), not Time_Delay.
        assert_eq!(e(&mut r, 7.0, 1), None);
        assert_eq!(e(&mut r, 11.9, 1), None);
        assert_eq!(e(&mut r, 12.0, 1), Some(EventState::Normal));
        // A fault value is FAULT at once.
        assert_eq!(e(&mut r, 13.0, 4), Some(EventState::Fault));
    }

    #[test]
    fn event_enable_masks_notification_not_the_state() {
        let mut spec = range(Some(90.0), None, 0.0, 0);
        spec.event_enable.to_offnormal = false;
        let mut r = Run::new(spec);
        let t = r.at(0.0, Some(Value::Number(95.0)), Quality::Ok).unwrap();
        assert_eq!(t.to, EventState::HighLimit);
        assert!(!t.notify && !t.ack_required);
        assert!(
            r.st.acked.to_offnormal,
            "a disabled transition needs no ack"
        );
        assert!(r.st.time_stamps.to_offnormal.is_some());
    }

    #[test]
    fn acknowledgement_needs_the_transition_time_stamp() {
        let mut r = Run::new(range(Some(90.0), None, 0.0, 0));
        assert_eq!(
            r.st.acknowledge(TransitionKind::ToOffnormal, r.w0),
            Err(AckError::NoSuchTransition(TransitionKind::ToOffnormal))
        );
        let t = r.at(1.0, Some(Value::Number(95.0)), Quality::Ok).unwrap();
        assert!(t.ack_required && r.st.is_listed());
        assert_eq!(
            r.st.acknowledge(TransitionKind::ToOffnormal, r.w0),
            Err(AckError::InvalidTimeStamp(TransitionKind::ToOffnormal))
        );
        assert_eq!(
            r.st.acknowledge(TransitionKind::ToOffnormal, t.at),
            Ok(true)
        );
        assert_eq!(
            r.st.acknowledge(TransitionKind::ToOffnormal, t.at),
            Ok(false),
            "repeat"
        );
        assert!(r.st.is_listed(), "still active");
        // To-normal needs no ack in these rules: NORMAL and acked = not listed.
        let t = r.at(2.0, Some(Value::Number(1.0)), Quality::Ok).unwrap();
        assert!(!t.ack_required);
        assert!(!r.st.is_listed());
    }

    #[test]
    fn restore_keeps_state_and_acks_but_restarts_delays() {
        let mut r = Run::new(range(Some(90.0), None, 0.0, 10));
        r.num(0.0, 95.0);
        r.num(10.0, 95.0);
        let st = AlarmState::restore(
            r.st.event_state,
            r.st.time_stamps,
            r.st.acked,
            r.st.offnormal_value(),
        );
        assert_eq!(st.event_state, EventState::HighLimit);
        assert!(!st.acked.to_offnormal);
        assert_eq!(st.next_deadline(&r.spec), None);
    }

    proptest::proptest! {
        /// Any sequence of inputs: never a panic, Event_State always one the
        /// algorithm can reach, FAULT exactly when the last quality was bad.
        #[test]
        fn arbitrary_inputs_keep_the_invariants(
            steps in proptest::collection::vec((0u64..5_000, proptest::option::of(-1e6f64..1e6), 0u8..5), 0..64)
        ) {
            let mut r = Run::new(range(Some(100.0), Some(-100.0), 10.0, 1));
            let mut t = 0.0;
            for (dt, v, q) in steps {
                t += dt as f64 / 1000.0;
                let q = [Quality::Ok, Quality::Stale, Quality::Fault, Quality::Unavailable, Quality::Overridden][q as usize];
                let _ = r.at(t, v.map(Value::Number), q);
                let bad = matches!(q, Quality::Stale | Quality::Fault | Quality::Unavailable) || v.is_none();
                proptest::prop_assert_eq!(r.st.event_state == EventState::Fault, bad);
                proptest::prop_assert!(r.st.event_state != EventState::Offnormal);
            }
        }
    }
}
