//! BACnet objects (AI, AV, BO, BV, MSV) that are live views of one point each: reads come from the point database, writes go into it.
//!
//! Why custom objects instead of rusty-bacnet's built-in ones: the point
//! database is the single source of truth, and a built-in object would be a
//! second copy to keep in sync both ways. A view object has nothing to keep in
//! sync: ReadProperty/RPM/COV read the database at the moment they run, and a
//! WriteProperty at priority P is one `PointDb::write(.., P, ..)`, so a refusal
//! comes back with the database's own reason mapped to the standard BACnet
//! error (VALUE_OUT_OF_RANGE, INVALID_DATA_TYPE, WRITE_ACCESS_DENIED) instead
//! of the SERVICE_REQUEST_DENIED a policy hook could give. Changes made by
//! other protocols reach COV subscribers through
//! `BACnetServer::set_present_value_local`, which calls
//! [`PointObject::set_present_value_internal`] (a refresh, nothing to store)
//! and then runs the stack's own COV evaluation (see `run` in `mod.rs`).

use std::borrow::Cow;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use bacnet_objects::command_source::CommandOrigin;
use bacnet_objects::event::{
    EnrollmentSummaryCapability, EventStateChange, EventTransitionCommit,
    EventTransitionCommitError, TransitionOutcome,
};
use bacnet_objects::traits::BACnetObject;
use bacnet_types::enums::EventState as BEventState;
use bacnet_types::enums::{
    ErrorClass, ErrorCode, ObjectType, PropertyIdentifier as P, Reliability,
};
use bacnet_types::error::Error;
use bacnet_types::primitives::{BACnetTimeStamp, ObjectIdentifier, PropertyValue};

use super::alarms::{self, AlarmLink};
use crate::points::alarm::EventState as AlarmEventState;
use crate::points::{
    BacnetObjectType, PointDb, PointDef, PointId, PointState, Protocol, Quality, Source, Value,
    WriteError,
};

/// BACnet priority 6 is reserved for Minimum On/Off (Clause 19.2.3); a
/// network write there is refused.
const MINIMUM_ON_OFF_PRIORITY: u8 = 6;
/// Priority a WriteProperty without one takes (Clause 15.9.1.1.5).
const DEFAULT_WRITE_PRIORITY: u8 = 16;
/// Event_State of an object without an alarm (Clause 12: NORMAL).
const EVENT_STATE_NORMAL: u32 = 0;
/// Polarity NORMAL.
const POLARITY_NORMAL: u32 = 0;

/// One point published as one BACnet object.
pub struct PointObject {
    oid: ObjectIdentifier,
    ty: BacnetObjectType,
    name: String,
    description: String,
    db: PointDb,
    id: PointId,
    /// Engineering units code (analog objects only).
    units: u32,
    cov_increment: f32,
    min: Option<f32>,
    max: Option<f32>,
    states: Vec<String>,
    /// Carries a priority array and takes Present_Value writes. The map's
    /// types decide it for the server's objects; a route's commandable
    /// Multi-state Value (Input Select) sets it itself (`routes.rs`).
    commandable: bool,
    /// The point's alarm, when it has one (intrinsic reporting: alarms.rs).
    alarm: Option<Arc<AlarmLink>>,
    /// `required()` then `optional()`, computed when the object is built
    /// and interned ([`intern`]): every ReadProperty checks membership
    /// here and Property_List / an RPM ALL borrow it. Building the lists per
    /// read was one allocation per property read and one more per object
    /// expanded, 8% of an RPM ALL's CPU (issue 25, bench/README.md).
    props: &'static [P],
}

/// The one `'static` copy of a property set. The stack's `property_list`
/// returns `Cow<'static, [P]>`, so a borrowed answer needs a `'static`
/// slice; leaking one per object would grow with every route reload, but
/// the distinct sets are few and fixed by this file and alarms.rs (object
/// type x commandable x Min/Max_Pres_Value present x the alarm's
/// algorithm: a few dozen at most), so each is leaked once and shared.
fn intern(set: Vec<P>) -> &'static [P] {
    static SETS: parking_lot::Mutex<Vec<&'static [P]>> = parking_lot::Mutex::new(Vec::new());
    let mut sets = SETS.lock();
    if let Some(s) = sets.iter().copied().find(|s| *s == &set[..]) {
        return s;
    }
    let s: &'static [P] = Box::leak(set.into_boxed_slice());
    sets.push(s);
    s
}

/// Maps a castpoint object type to the BACnet one.
pub fn object_type(ty: BacnetObjectType) -> ObjectType {
    match ty {
        BacnetObjectType::AnalogInput => ObjectType::ANALOG_INPUT,
        BacnetObjectType::AnalogValue => ObjectType::ANALOG_VALUE,
        BacnetObjectType::BinaryOutput => ObjectType::BINARY_OUTPUT,
        BacnetObjectType::BinaryValue => ObjectType::BINARY_VALUE,
        BacnetObjectType::MultiStateValue => ObjectType::MULTI_STATE_VALUE,
    }
}

fn err(class: ErrorClass, code: ErrorCode) -> Error {
    Error::protocol(class, code)
}

fn unknown_property() -> Error {
    err(ErrorClass::PROPERTY, ErrorCode::UNKNOWN_PROPERTY)
}

fn write_denied() -> Error {
    err(ErrorClass::PROPERTY, ErrorCode::WRITE_ACCESS_DENIED)
}

fn invalid_data_type() -> Error {
    err(ErrorClass::PROPERTY, ErrorCode::INVALID_DATA_TYPE)
}

fn out_of_range() -> Error {
    err(ErrorClass::PROPERTY, ErrorCode::VALUE_OUT_OF_RANGE)
}

fn invalid_array_index() -> Error {
    err(ErrorClass::PROPERTY, ErrorCode::INVALID_ARRAY_INDEX)
}

fn not_an_array() -> Error {
    err(ErrorClass::PROPERTY, ErrorCode::PROPERTY_IS_NOT_AN_ARRAY)
}

/// The standard error for a refusal by the point database.
pub fn write_error(e: WriteError) -> Error {
    match e {
        WriteError::UnknownPoint => err(ErrorClass::OBJECT, ErrorCode::UNKNOWN_OBJECT),
        WriteError::NotWritable => write_denied(),
        WriteError::InvalidPriority => out_of_range(),
        WriteError::TypeMismatch => invalid_data_type(),
        WriteError::OutOfRange => out_of_range(),
        WriteError::NullDefault => invalid_data_type(),
        // The command could not be made durable, so it was not applied.
        WriteError::Storage => err(ErrorClass::DEVICE, ErrorCode::OPERATIONAL_PROBLEM),
        // The site's [bacnet] write policy refuses this source.
        WriteError::Denied => write_denied(),
    }
}

/// BACnetARRAY read: the whole array, its size at index 0, or one element.
fn read_array(values: Vec<PropertyValue>, index: Option<u32>) -> Result<PropertyValue, Error> {
    match index {
        None => Ok(PropertyValue::List(values)),
        Some(0) => Ok(PropertyValue::Unsigned(values.len() as u64)),
        Some(i) => usize::try_from(i - 1)
            .ok()
            .and_then(|i| values.into_iter().nth(i))
            .ok_or_else(invalid_array_index),
    }
}

/// Status_Flags bits (Clause 12.x): in-alarm, fault, overridden, out-of-service.
fn status_flags(in_alarm: bool, fault: bool, overridden: bool) -> PropertyValue {
    let mut b = 0u8;
    if in_alarm {
        b |= 0x80;
    }
    if fault {
        b |= 0x40;
    }
    if overridden {
        b |= 0x20;
    }
    PropertyValue::BitString {
        unused_bits: 4,
        data: vec![b],
    }
}

/// What a point's quality means to a BACnet front-end: (fault flag,
/// overridden flag, Reliability).
///
/// - Unavailable: no source exists (no GPU, feature off), so the value is a
///   placeholder: FAULT + NO_SENSOR.
/// - Stale: the source stopped reporting; the last value may be wrong. That is
///   a fault of the data path, not an operator's decision, so FAULT +
///   COMMUNICATION_FAILURE rather than Out_Of_Service (which in BACnet means
///   "decoupled on purpose" and makes Present_Value writable).
/// - Fault: the source reports an error: FAULT + UNRELIABLE_OTHER.
/// - Overridden (the point database's name for "a level 1..8 holds the
///   value", shown as REST `status` / Haystack `curStatus` "overridden"):
///   no flag. Those levels are written over the network (BACnet, Modbus,
///   Haystack, REST), and in Clause 12 OVERRIDDEN means overridden by a
///   mechanism *local* to the device (a hand switch), which castpoint does
///   not have; a network command shows in Priority_Array and
///   Current_Command_Priority instead. So OVERRIDDEN is never set.
pub fn quality_flags(q: Quality) -> (bool, bool, Reliability) {
    match q {
        Quality::Ok | Quality::Overridden => (false, false, Reliability::NO_FAULT_DETECTED),
        Quality::Stale => (true, false, Reliability::COMMUNICATION_FAILURE),
        Quality::Fault => (true, false, Reliability::UNRELIABLE_OTHER),
        Quality::Unavailable => (true, false, Reliability::NO_SENSOR),
    }
}

/// The peer address of a network write (B/IP MAC = 4 octets IP + 2 port).
fn peer_of(origin: &CommandOrigin) -> Option<SocketAddr> {
    match origin {
        CommandOrigin::Remote { actual_address, .. } => {
            let m = actual_address.mac_address.as_slice();
            if m.len() == 6 && actual_address.network_number == 0 {
                let ip = Ipv4Addr::new(m[0], m[1], m[2], m[3]);
                let port = u16::from_be_bytes([m[4], m[5]]);
                Some(SocketAddr::V4(SocketAddrV4::new(ip, port)))
            } else {
                None
            }
        }
        _ => None,
    }
}

impl PointObject {
    pub fn new(
        db: PointDb,
        id: PointId,
        def: &PointDef,
        ty: BacnetObjectType,
        instance: u32,
        units: u32,
    ) -> Result<Self, Error> {
        let oid = ObjectIdentifier::new(object_type(ty), instance)?;
        let obj = PointObject {
            oid,
            ty,
            name: def.name.clone(),
            description: def.description.clone(),
            db,
            id,
            units,
            cov_increment: def.cov_increment as f32,
            min: def.min.map(|v| v as f32),
            max: def.max.map(|v| v as f32),
            states: def.states.clone(),
            commandable: ty.commandable(),
            alarm: None,
            props: &[],
        };
        Ok(obj.with_props())
    }

    /// Recomputes the property set after a change that decides it.
    fn with_props(mut self) -> Self {
        let mut v = self.required().to_vec();
        v.extend(self.optional());
        self.props = intern(v);
        self
    }

    /// The same view with the labels a route gives it (`routes.rs`):
    /// Object_Name, Description and State_Text, which a route's point
    /// shows with the route's own names rather than the template's.
    pub fn labelled(mut self, name: String, description: String, states: Vec<String>) -> Self {
        self.name = name;
        self.description = description;
        self.states = states;
        self
    }

    /// Whether the object is commandable (priority array, Present_Value
    /// writes), overriding what its type says in the map.
    pub fn with_commandable(mut self, commandable: bool) -> Self {
        self.commandable = commandable;
        self.with_props()
    }

    /// Makes this object alarm-capable: its event properties and intrinsic
    /// reporting become views of castpoint's alarm runtime (alarms.rs).
    pub fn with_alarm(mut self, link: Arc<AlarmLink>) -> Self {
        self.alarm = Some(link);
        self.with_props()
    }

    /// The point's alarm state, if it has an alarm.
    fn alarm_state(&self) -> Option<crate::points::alarm::EventState> {
        self.alarm.as_ref().map(|l| l.live().event_state)
    }

    fn commandable(&self) -> bool {
        self.commandable
    }

    fn analog(&self) -> bool {
        matches!(
            self.ty,
            BacnetObjectType::AnalogInput | BacnetObjectType::AnalogValue
        )
    }

    fn binary(&self) -> bool {
        matches!(
            self.ty,
            BacnetObjectType::BinaryOutput | BacnetObjectType::BinaryValue
        )
    }

    fn state(&self) -> PointState {
        // The id was resolved from this database at start-up, so it exists;
        // an absent state still reads as an honest "unavailable". Built
        // only then (`unwrap_or` took the clock on every read: 0.7 % of an
        // RPM ALL's CPU, issue 25).
        self.db.read(self.id).unwrap_or_else(|| PointState {
            value: None,
            quality: Quality::Unavailable,
            reason: None,
            updated: chrono::Utc::now(),
            level: None,
        })
    }

    /// A point value in this object's Present_Value datatype. An absent value
    /// (no source) is still a valid datatype: 0.0 / inactive / the "N/A"
    /// state (state 1 for a point without one), with
    /// Status_Flags FAULT and Reliability saying why.
    fn encode(&self, v: Option<Value>) -> PropertyValue {
        if self.analog() {
            let f = v.map(|v| v.as_f64()).unwrap_or(0.0) as f32;
            PropertyValue::Real(if f.is_finite() { f } else { 0.0 })
        } else if self.binary() {
            PropertyValue::Enumerated(u32::from(v.map(|v| v.as_bool()).unwrap_or(false)))
        } else {
            let n = match v {
                Some(Value::Enum(e)) if e >= 1 => u64::from(e),
                Some(other) => (other.as_f64().max(1.0)) as u64,
                // No value: the point's "N/A" state where it has one, so an
                // unavailable status never reads as a real (healthy) state.
                None => self
                    .states
                    .iter()
                    .position(|s| s == crate::points::NA_STATE)
                    .map_or(1, |i| i as u64 + 1),
            };
            PropertyValue::Unsigned(n)
        }
    }

    /// A BACnet value written to Present_Value, in point terms. `None` is a
    /// relinquish (NULL). Wrong datatypes are refused before the database sees them.
    fn decode(&self, v: &PropertyValue) -> Result<Option<Value>, Error> {
        match (v, self.analog(), self.binary()) {
            (PropertyValue::Null, _, _) => Ok(None),
            (PropertyValue::Real(f), true, _) => {
                if f.is_finite() {
                    Ok(Some(Value::Number(f64::from(*f))))
                } else {
                    Err(out_of_range())
                }
            }
            (PropertyValue::Enumerated(e), _, true) => match e {
                0 => Ok(Some(Value::Bool(false))),
                1 => Ok(Some(Value::Bool(true))),
                _ => Err(out_of_range()),
            },
            (PropertyValue::Unsigned(u), false, false) => {
                let n = u16::try_from(*u).map_err(|_| out_of_range())?;
                Ok(Some(Value::Enum(n)))
            }
            _ => Err(invalid_data_type()),
        }
    }

    fn required(&self) -> &'static [P] {
        const AI: &[P] = &[
            P::OBJECT_IDENTIFIER,
            P::OBJECT_NAME,
            P::OBJECT_TYPE,
            P::PRESENT_VALUE,
            P::STATUS_FLAGS,
            P::EVENT_STATE,
            P::OUT_OF_SERVICE,
            P::UNITS,
        ];
        const AV: &[P] = &[
            P::OBJECT_IDENTIFIER,
            P::OBJECT_NAME,
            P::OBJECT_TYPE,
            P::PRESENT_VALUE,
            P::STATUS_FLAGS,
            P::EVENT_STATE,
            P::OUT_OF_SERVICE,
            P::UNITS,
            P::PRIORITY_ARRAY,
            P::RELINQUISH_DEFAULT,
            P::CURRENT_COMMAND_PRIORITY,
        ];
        const BINARY: &[P] = &[
            P::OBJECT_IDENTIFIER,
            P::OBJECT_NAME,
            P::OBJECT_TYPE,
            P::PRESENT_VALUE,
            P::STATUS_FLAGS,
            P::EVENT_STATE,
            P::OUT_OF_SERVICE,
            P::POLARITY,
            P::PRIORITY_ARRAY,
            P::RELINQUISH_DEFAULT,
            P::CURRENT_COMMAND_PRIORITY,
        ];
        const BV_STATUS: &[P] = &[
            P::OBJECT_IDENTIFIER,
            P::OBJECT_NAME,
            P::OBJECT_TYPE,
            P::PRESENT_VALUE,
            P::STATUS_FLAGS,
            P::EVENT_STATE,
            P::OUT_OF_SERVICE,
        ];
        const MSV: &[P] = &[
            P::OBJECT_IDENTIFIER,
            P::OBJECT_NAME,
            P::OBJECT_TYPE,
            P::PRESENT_VALUE,
            P::STATUS_FLAGS,
            P::EVENT_STATE,
            P::OUT_OF_SERVICE,
            P::NUMBER_OF_STATES,
        ];
        // A commandable Multi-state Value (Clause 12.20: Priority_Array and
        // Relinquish_Default are required when it is commandable).
        const MSV_COMMAND: &[P] = &[
            P::OBJECT_IDENTIFIER,
            P::OBJECT_NAME,
            P::OBJECT_TYPE,
            P::PRESENT_VALUE,
            P::STATUS_FLAGS,
            P::EVENT_STATE,
            P::OUT_OF_SERVICE,
            P::NUMBER_OF_STATES,
            P::PRIORITY_ARRAY,
            P::RELINQUISH_DEFAULT,
            P::CURRENT_COMMAND_PRIORITY,
        ];
        match (self.ty, self.commandable) {
            (BacnetObjectType::AnalogInput, _) => AI,
            (BacnetObjectType::AnalogValue, _) => AV,
            (BacnetObjectType::BinaryOutput, _) => BINARY,
            (BacnetObjectType::BinaryValue, true) => BINARY,
            (BacnetObjectType::BinaryValue, false) => BV_STATUS,
            (BacnetObjectType::MultiStateValue, false) => MSV,
            (BacnetObjectType::MultiStateValue, true) => MSV_COMMAND,
        }
    }

    fn optional(&self) -> Vec<P> {
        let mut v = vec![P::DESCRIPTION, P::RELIABILITY];
        if self.analog() {
            v.push(P::COV_INCREMENT);
            if self.min.is_some() {
                v.push(P::MIN_PRES_VALUE);
            }
            if self.max.is_some() {
                v.push(P::MAX_PRES_VALUE);
            }
        }
        if self.binary() {
            v.push(P::ACTIVE_TEXT);
            v.push(P::INACTIVE_TEXT);
        }
        if self.ty == BacnetObjectType::MultiStateValue {
            v.push(P::STATE_TEXT);
        }
        if let Some(l) = &self.alarm {
            v.extend(alarms::event_properties(self.ty, &l.spec));
        }
        v
    }

    fn priority_values(&self) -> Vec<PropertyValue> {
        match self.db.priority_array(self.id) {
            Some(pa) => pa
                .slots
                .iter()
                .map(|s| match s {
                    Some(s) => self.encode(Some(s.value)),
                    None => PropertyValue::Null,
                })
                .collect(),
            None => vec![PropertyValue::Null; 16],
        }
    }
}

impl BACnetObject for PointObject {
    fn object_identifier(&self) -> ObjectIdentifier {
        self.oid
    }

    fn object_name(&self) -> &str {
        &self.name
    }

    fn read_property(&self, property: P, array_index: Option<u32>) -> Result<PropertyValue, Error> {
        if array_index.is_some() && !self.is_array_property(property) {
            return Err(not_an_array());
        }
        if !(property == P::PROPERTY_LIST || self.props.contains(&property)) {
            return Err(unknown_property());
        }
        if let Some(l) = &self.alarm {
            if let Some(r) = alarms::read(l, property, array_index) {
                return r;
            }
        }
        match property {
            P::OBJECT_IDENTIFIER => Ok(PropertyValue::ObjectIdentifier(self.oid)),
            P::OBJECT_NAME => Ok(PropertyValue::CharacterString(self.name.clone())),
            P::OBJECT_TYPE => Ok(PropertyValue::Enumerated(self.oid.object_type().to_raw())),
            // Clause 12.1.1.4.1: Property_List omits the four universal ones.
            P::PROPERTY_LIST => read_array(
                self.property_list()
                    .iter()
                    .filter(|p| {
                        !matches!(
                            **p,
                            P::OBJECT_IDENTIFIER
                                | P::OBJECT_NAME
                                | P::OBJECT_TYPE
                                | P::PROPERTY_LIST
                        )
                    })
                    .map(|p| PropertyValue::Enumerated(p.to_raw()))
                    .collect(),
                array_index,
            ),
            P::DESCRIPTION => Ok(PropertyValue::CharacterString(self.description.clone())),
            P::PRESENT_VALUE => Ok(self.encode(self.state().value)),
            P::STATUS_FLAGS => {
                let (fault, overridden, _) = quality_flags(self.state().quality);
                let alarm = self.alarm_state();
                // IN_ALARM: Event_State is not NORMAL; FAULT also when the
                // alarm's fault values put it in FAULT (Clause 12.20.10).
                let in_alarm = alarm.is_some_and(|s| s != AlarmEventState::Normal);
                let fault = fault || alarm == Some(AlarmEventState::Fault);
                Ok(status_flags(in_alarm, fault, overridden))
            }
            P::RELIABILITY => {
                let (_, _, r) = quality_flags(self.state().quality);
                // A value among the Fault_Values is a fault of its own
                // (MULTI_STATE_FAULT), whatever the source's quality.
                let r = if r == Reliability::NO_FAULT_DETECTED
                    && self.alarm_state() == Some(AlarmEventState::Fault)
                {
                    if self.ty == BacnetObjectType::MultiStateValue {
                        Reliability::MULTI_STATE_FAULT
                    } else {
                        Reliability::UNRELIABLE_OTHER
                    }
                } else {
                    r
                };
                Ok(PropertyValue::Enumerated(r.to_raw()))
            }
            P::EVENT_STATE => Ok(PropertyValue::Enumerated(EVENT_STATE_NORMAL)),
            P::OUT_OF_SERVICE => Ok(PropertyValue::Boolean(false)),
            P::UNITS => Ok(PropertyValue::Enumerated(self.units)),
            P::COV_INCREMENT => Ok(PropertyValue::Real(self.cov_increment)),
            P::MIN_PRES_VALUE => self
                .min
                .map(PropertyValue::Real)
                .ok_or_else(unknown_property),
            P::MAX_PRES_VALUE => self
                .max
                .map(PropertyValue::Real)
                .ok_or_else(unknown_property),
            P::POLARITY => Ok(PropertyValue::Enumerated(POLARITY_NORMAL)),
            P::ACTIVE_TEXT => Ok(PropertyValue::CharacterString("on".into())),
            P::INACTIVE_TEXT => Ok(PropertyValue::CharacterString("off".into())),
            P::NUMBER_OF_STATES => Ok(PropertyValue::Unsigned(self.states.len() as u64)),
            P::STATE_TEXT => read_array(
                self.states
                    .iter()
                    .map(|s| PropertyValue::CharacterString(s.clone()))
                    .collect(),
                array_index,
            ),
            P::PRIORITY_ARRAY => read_array(self.priority_values(), array_index),
            P::RELINQUISH_DEFAULT => {
                let d = self.db.priority_array(self.id).map(|pa| pa.default);
                Ok(self.encode(d))
            }
            P::CURRENT_COMMAND_PRIORITY => match self.state().level {
                Some(l @ 1..=16) => Ok(PropertyValue::Unsigned(u64::from(l))),
                _ => Ok(PropertyValue::Null),
            },
            _ => Err(unknown_property()),
        }
    }

    fn write_property(
        &mut self,
        property: P,
        array_index: Option<u32>,
        value: PropertyValue,
        priority: Option<u8>,
    ) -> Result<(), Error> {
        self.write_as(property, array_index, value, priority, None)
    }

    fn write_property_from(
        &mut self,
        property: P,
        array_index: Option<u32>,
        value: PropertyValue,
        priority: Option<u8>,
        origin: &CommandOrigin,
    ) -> Result<(), Error> {
        self.write_as(property, array_index, value, priority, peer_of(origin))
    }

    fn property_list(&self) -> Cow<'static, [P]> {
        Cow::Borrowed(self.props)
    }

    fn required_properties(&self) -> Cow<'static, [P]> {
        Cow::Borrowed(self.required())
    }

    fn is_writable_property(&self, property: P) -> bool {
        property == P::PRESENT_VALUE && self.commandable()
    }

    fn is_array_property(&self, property: P) -> bool {
        matches!(
            property,
            P::PRIORITY_ARRAY | P::STATE_TEXT | P::PROPERTY_LIST
        ) || (self.alarm.is_some() && alarms::is_array(property))
    }

    // ---- Intrinsic reporting (alarms.rs): castpoint's `Alarms` decided
    // every transition; the stack takes them from the link, distributes
    // them, and routes AcknowledgeAlarm back.

    fn evaluate_intrinsic_reporting(&mut self) -> Option<TransitionOutcome> {
        self.alarm.as_ref()?.proposal()
    }

    fn tick_intrinsic_reporting(&mut self) -> Option<TransitionOutcome> {
        self.alarm.as_ref()?.proposal()
    }

    fn commit_event_transition_internal(
        &mut self,
        commit: EventTransitionCommit,
    ) -> Result<(), EventTransitionCommitError> {
        match &self.alarm {
            Some(l) => l.commit(&commit),
            None => Err(EventTransitionCommitError::Unsupported),
        }
    }

    fn acknowledge_alarm_correlated_detailed_internal(
        &mut self,
        event_state: BEventState,
        timestamp: &BACnetTimeStamp,
    ) -> Result<Option<EventStateChange>, Error> {
        match &self.alarm {
            Some(l) => l.acknowledge(event_state, timestamp),
            None => Err(err(ErrorClass::OBJECT, ErrorCode::NO_ALARM_CONFIGURED)),
        }
    }

    fn enrollment_summary_capability_internal(&self) -> Option<EnrollmentSummaryCapability> {
        self.alarm.as_ref().map(|l| l.capability())
    }

    fn is_createable(&self) -> bool {
        false
    }

    fn is_deleteable(&self) -> bool {
        false
    }

    fn supports_cov(&self) -> bool {
        true
    }

    fn cov_increment(&self) -> Option<f64> {
        self.analog().then_some(f64::from(self.cov_increment))
    }

    /// The application's "value changed" signal (from
    /// `BACnetServer::set_present_value_local`). The value lives in the point
    /// database, so there is nothing to store: accepting it lets the stack
    /// run its COV evaluation against what `read_property` now returns.
    fn set_present_value_internal(&mut self, _value: PropertyValue) -> Result<(), Error> {
        Ok(())
    }
}

impl PointObject {
    fn write_as(
        &mut self,
        property: P,
        array_index: Option<u32>,
        value: PropertyValue,
        priority: Option<u8>,
        peer: Option<SocketAddr>,
    ) -> Result<(), Error> {
        let source = Source::new(Protocol::Bacnet, peer, None);
        let level = priority.unwrap_or(DEFAULT_WRITE_PRIORITY);
        // Refusals decided here, before the point database sees the write,
        // are audited like its own (every attempt is in the audit log).
        let refuse = |why: WriteError, answer: Error| -> Result<(), Error> {
            self.db.audit_refused(self.id, level, &source, why);
            Err(answer)
        };
        if property != P::PRESENT_VALUE {
            // Value-independent checks first (the trait's contract): an
            // unknown property is UNKNOWN_PROPERTY, a known one read-only.
            if array_index.is_some() && !self.is_array_property(property) {
                return refuse(WriteError::NotWritable, not_an_array());
            }
            if self.property_list().contains(&property) || property == P::PROPERTY_LIST {
                return refuse(WriteError::NotWritable, write_denied());
            }
            return refuse(WriteError::NotWritable, unknown_property());
        }
        if array_index.is_some() {
            return refuse(WriteError::TypeMismatch, not_an_array());
        }
        if !self.commandable() {
            return refuse(WriteError::NotWritable, write_denied());
        }
        if level == MINIMUM_ON_OFF_PRIORITY {
            return refuse(WriteError::InvalidPriority, write_denied());
        }
        if !(1..=16).contains(&level) {
            return refuse(WriteError::InvalidPriority, out_of_range());
        }
        let v = match self.decode(&value) {
            Ok(v) => v,
            Err(e) => return refuse(WriteError::TypeMismatch, e),
        };
        self.db
            .write(self.id, v, level, &source)
            .map(|_| ())
            .map_err(write_error)
    }
}
