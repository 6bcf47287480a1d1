//! The Device object as castpoint serves it: the stack's built-in Device behind a wrapper that makes it read-only from the network and states only what castpoint does.
//!
//! Why a wrapper and not the server's mutation policy: a policy can only
//! answer SERVICES / SERVICE_REQUEST_DENIED, while Clause 15.9.1.3.1 wants
//! PROPERTY / WRITE_ACCESS_DENIED for a property that exists but may not be
//! written (and UNKNOWN_PROPERTY for one that does not). The stack's Device
//! object would also accept writes to Description: castpoint's device
//! identity is its configuration file's, so every write is refused here, by
//! the object. (The Network Port cannot be wrapped: the stack finds the
//! registered port by downcasting to its own type; see `authorize` in
//! `mod.rs`.)
//!
//! The Device wrapper also replaces two values the stack cannot be told:
//! - Protocol_Object_Types_Supported: the stack's Device flags the 64 types
//!   the crate implements; castpoint serves only the types in its database.
//! - Last_Restart_Reason: the stack keeps it at UNKNOWN; castpoint sets it
//!   when a ReinitializeDevice restart is carried out.
//!
//! Every other trait method is forwarded, so the stack's own Device duties
//! (clock, Device authority, Tags persistence) are unchanged.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use bacnet_objects::clock::ClockReader;
use bacnet_objects::property_metadata::{PropertyMetadata, PropertyWriteCapability};
use bacnet_objects::traits::BACnetObject;
use bacnet_types::enums::{ErrorClass, ErrorCode, ObjectType, PropertyIdentifier as P};
use bacnet_types::error::{Error, RemoteError};
use bacnet_types::primitives::{ObjectIdentifier, PropertyValue};

/// `rows` with every row read-only and the `hidden` ones left out.
pub fn read_only_rows(rows: &[PropertyMetadata], hidden: &[P]) -> Vec<PropertyMetadata> {
    rows.iter()
        .filter(|r| !hidden.contains(&r.property_identifier))
        .cloned()
        .map(|mut r| {
            r.write_capability = PropertyWriteCapability::ReadOnly;
            r
        })
        .collect()
}

/// Property_List (Clause 12.1.1.4.1: without the four universal ones) as a
/// BACnetARRAY read.
pub fn read_property_list(list: &[P], index: Option<u32>) -> Result<PropertyValue, Error> {
    let items: Vec<PropertyValue> = list
        .iter()
        .filter(|p| {
            !matches!(
                **p,
                P::OBJECT_IDENTIFIER | P::OBJECT_NAME | P::OBJECT_TYPE | P::PROPERTY_LIST
            )
        })
        .map(|p| PropertyValue::Enumerated(p.to_raw()))
        .collect();
    match index {
        None => Ok(PropertyValue::List(items)),
        Some(0) => Ok(PropertyValue::Unsigned(items.len() as u64)),
        Some(i) => usize::try_from(i - 1)
            .ok()
            .and_then(|i| items.into_iter().nth(i))
            .ok_or_else(|| Error::protocol(ErrorClass::PROPERTY, ErrorCode::INVALID_ARRAY_INDEX)),
    }
}

/// Protocol_Object_Types_Supported for exactly `types` (Clause 12.11.15):
/// one bit per type, MSB first, sized through the highest type served.
pub fn object_types_bits(types: &[ObjectType]) -> PropertyValue {
    let max = types.iter().map(|t| t.to_raw()).max().unwrap_or(0) as usize;
    let mut data = vec![0u8; max / 8 + 1];
    for t in types {
        let n = t.to_raw() as usize;
        data[n / 8] |= 0x80 >> (n % 8);
    }
    PropertyValue::BitString {
        unused_bits: (7 - (max % 8)) as u8,
        data,
    }
}

/// Last_Restart_Reason shared between the Device object and the
/// ReinitializeDevice handler (BACnetRestartReason: 0 unknown, 1 coldstart,
/// 2 warmstart).
pub type RestartReason = Arc<AtomicU32>;

/// A stack object served read-only, with replaced values.
pub struct ConfigObject<O> {
    inner: O,
    object_types: Option<PropertyValue>,
    restart_reason: Option<RestartReason>,
}

impl<O: BACnetObject> ConfigObject<O> {
    /// The Device: `types` served in Protocol_Object_Types_Supported,
    /// `restart` in Last_Restart_Reason.
    pub fn device(inner: O, types: &[ObjectType], restart: RestartReason) -> Self {
        ConfigObject {
            inner,
            object_types: Some(object_types_bits(types)),
            restart_reason: Some(restart),
        }
    }

    /// Any other stack object served read-only with its own values (the
    /// route and server Structured Views, `routes.rs`).
    pub fn read_only(inner: O) -> Self {
        ConfigObject {
            inner,
            object_types: None,
            restart_reason: None,
        }
    }

    fn has(&self, property: P) -> bool {
        property == P::PROPERTY_LIST
            || self.inner.property_list().contains(&property)
            || !matches!(
                self.inner.read_property(property, None),
                Err(Error::Remote(RemoteError::Error {
                    code: ErrorCode::UNKNOWN_PROPERTY,
                    ..
                }))
            )
    }
}

impl<O: BACnetObject> BACnetObject for ConfigObject<O> {
    fn object_identifier(&self) -> ObjectIdentifier {
        self.inner.object_identifier()
    }

    fn object_name(&self) -> &str {
        self.inner.object_name()
    }

    fn read_property(&self, property: P, array_index: Option<u32>) -> Result<PropertyValue, Error> {
        match (property, &self.object_types, &self.restart_reason) {
            (P::PROTOCOL_OBJECT_TYPES_SUPPORTED, Some(bits), _) => {
                if array_index.is_some() {
                    Err(Error::protocol(
                        ErrorClass::PROPERTY,
                        ErrorCode::PROPERTY_IS_NOT_AN_ARRAY,
                    ))
                } else {
                    Ok(bits.clone())
                }
            }
            (P::LAST_RESTART_REASON, _, Some(r)) => {
                if array_index.is_some() {
                    Err(Error::protocol(
                        ErrorClass::PROPERTY,
                        ErrorCode::PROPERTY_IS_NOT_AN_ARRAY,
                    ))
                } else {
                    Ok(PropertyValue::Enumerated(r.load(Ordering::Relaxed)))
                }
            }
            _ => self.inner.read_property(property, array_index),
        }
    }

    /// Every write is refused by the object, with the error Clause 15.9
    /// names: WRITE_ACCESS_DENIED for a property it has, UNKNOWN_PROPERTY
    /// otherwise.
    fn write_property(
        &mut self,
        property: P,
        _array_index: Option<u32>,
        _value: PropertyValue,
        _priority: Option<u8>,
    ) -> Result<(), Error> {
        if self.has(property) {
            Err(Error::protocol(
                ErrorClass::PROPERTY,
                ErrorCode::WRITE_ACCESS_DENIED,
            ))
        } else {
            Err(Error::protocol(
                ErrorClass::PROPERTY,
                ErrorCode::UNKNOWN_PROPERTY,
            ))
        }
    }

    fn property_metadata(&self) -> Cow<'_, [PropertyMetadata]> {
        Cow::Owned(read_only_rows(&self.inner.property_metadata(), &[]))
    }

    fn property_list(&self) -> Cow<'static, [P]> {
        self.inner.property_list()
    }

    fn required_properties(&self) -> Cow<'static, [P]> {
        self.inner.required_properties()
    }

    fn is_writable_property(&self, _property: P) -> bool {
        false
    }

    fn is_createable(&self) -> bool {
        false
    }

    fn is_deleteable(&self) -> bool {
        false
    }

    fn device_authority_internal(&mut self) -> Option<bacnet_objects::device::DeviceAuthority<'_>> {
        self.inner.device_authority_internal()
    }

    fn durable_writes_internal(
        &mut self,
    ) -> Option<&mut dyn bacnet_objects::durable::DurableWrites> {
        self.inner.durable_writes_internal()
    }

    fn advance_monotonic_time_internal(&mut self, now: std::time::Duration) -> bool {
        self.inner.advance_monotonic_time_internal(now)
    }

    fn bind_clock_internal(&mut self, clock: Option<Arc<dyn ClockReader>>) {
        self.inner.bind_clock_internal(clock)
    }
}
