//! The B/IP transport filter's classifier: pure, bounded decoding of a received NPDU (no stack types, std only), fuzzed by `fuzz/fuzz_targets/bacnet_classify.rs`.
//!
//! [`answer`] decides which confirmed requests castpoint answers itself
//! before the stack sees them (transport.rs says why), [`apdu_type`] reads
//! the APDU type for `/metrics`, and [`acknowledge_alarm_request`] names the
//! object and source of an AcknowledgeAlarm. Every read is a checked slice
//! access and every loop consumes at least one octet: a datagram is
//! attacker-controlled.

/// Confirmed service choices (Clause 21).
const CREATE_OBJECT: u8 = 10;
const DEVICE_COMMUNICATION_CONTROL: u8 = 17;
const REINITIALIZE_DEVICE: u8 = 20;
const CONFIRMED_AUDIT_NOTIFICATION: u8 = 32;
const WRITE_PROPERTY: u8 = 15;
const ERROR_CLASS_PROPERTY: u8 = 2;
const ERROR_WRITE_ACCESS_DENIED: u8 = 40;

/// BACnetRejectReason undefined-enumeration.
pub const REJECT_UNDEFINED_ENUMERATION: u8 = 8;
/// Error class OBJECT / error code DYNAMIC_CREATION_NOT_SUPPORTED.
pub const ERROR_CLASS_OBJECT: u8 = 1;
pub const ERROR_DYNAMIC_CREATION_NOT_SUPPORTED: u8 = 4;

/// Highest defined BACnetEnableDisable (enable 0, disable 1,
/// disable-initiation 2) and reinitialized-state-of-device (coldstart 0 ..
/// activate-changes 7): neither enumeration is extensible.
const MAX_ENABLE_DISABLE: u32 = 2;
const MAX_REINITIALIZED_STATE: u32 = 7;

/// An object property castpoint refuses to write: the object identifier's
/// four encoded octets and the property identifier.
pub type ReadOnly = ([u8; 4], u32);

/// The APDU type nibble of an NPDU that carries an APDU (`None` for a
/// network-layer message or a malformed header). Skips DNET/DADR, SNET/SADR
/// and the hop count (Clause 6.2).
pub fn apdu_type(npdu: &[u8]) -> Option<u8> {
    if *npdu.first()? != 0x01 {
        return None;
    }
    let control = *npdu.get(1)?;
    if control & 0x80 != 0 {
        return None;
    }
    let mut i = 2;
    if control & 0x20 != 0 {
        let dlen = usize::from(*npdu.get(i + 2)?);
        i += 3 + dlen;
    }
    if control & 0x08 != 0 {
        let slen = usize::from(*npdu.get(i + 2)?);
        i += 3 + slen;
    }
    if control & 0x20 != 0 {
        i += 1; // hop count
    }
    Some(*npdu.get(i)? >> 4)
}

// ---- The classifier: pure, bounded, no stack types. ----

/// The reply NPDU castpoint sends itself for this received NPDU, or `None`
/// when the frame goes to the stack untouched.
pub fn answer(npdu: &[u8], read_only: &[ReadOnly]) -> Option<Vec<u8>> {
    let (route, apdu) = split_npdu(npdu)?;
    // Confirmed-Request, not segmented: type 0, SEG bit clear.
    let first = *apdu.first()?;
    if first >> 4 != 0 || first & 0x08 != 0 {
        return None;
    }
    let invoke = *apdu.get(2)?;
    let service = *apdu.get(3)?;
    let data = apdu.get(4..)?;
    let reply_apdu = match service {
        DEVICE_COMMUNICATION_CONTROL => {
            (dcc_enable_disable(data)? > MAX_ENABLE_DISABLE).then_some(())?;
            vec![0x60, invoke, REJECT_UNDEFINED_ENUMERATION]
        }
        REINITIALIZE_DEVICE => {
            (reinitialized_state(data)? > MAX_REINITIALIZED_STATE).then_some(())?;
            vec![0x60, invoke, REJECT_UNDEFINED_ENUMERATION]
        }
        CREATE_OBJECT => {
            create_object_is_well_formed(data).then_some(())?;
            // CreateObject-Error: [0] Error { class, code }, [1]
            // first-failed-element-number 0 (not an initial value's fault).
            vec![
                0x50,
                invoke,
                CREATE_OBJECT,
                0x0E,
                0x91,
                ERROR_CLASS_OBJECT,
                0x91,
                ERROR_DYNAMIC_CREATION_NOT_SUPPORTED,
                0x0F,
                0x19,
                0x00,
            ]
        }
        CONFIRMED_AUDIT_NOTIFICATION => {
            audit_notification_is_well_formed(data).then_some(())?;
            vec![0x20, invoke, CONFIRMED_AUDIT_NOTIFICATION]
        }
        WRITE_PROPERTY => {
            read_only
                .contains(&write_property_target(data)?)
                .then_some(())?;
            vec![
                0x50,
                invoke,
                WRITE_PROPERTY,
                0x91,
                ERROR_CLASS_PROPERTY,
                0x91,
                ERROR_WRITE_ACCESS_DENIED,
            ]
        }
        _ => return None,
    };
    Some(reply_npdu(npdu.get(1).copied()? & 0x03, route, &reply_apdu))
}

/// Where a request came from beyond the link: its SNET and SADR.
type Route<'a> = Option<(&'a [u8], &'a [u8])>;

/// The request's source route and its APDU, for an NPDU castpoint may
/// answer: version 1, an APDU (not a network message), no DNET, no reserved
/// control bits, SLEN 1..=6 when SNET is present.
fn split_npdu(npdu: &[u8]) -> Option<(Route<'_>, &[u8])> {
    if *npdu.first()? != 0x01 {
        return None;
    }
    let control = *npdu.get(1)?;
    // 0x80 network message, 0x40/0x10 reserved, 0x20 DNET present.
    if control & 0xF0 != 0 {
        return None;
    }
    let mut i = 2;
    let route = if control & 0x08 != 0 {
        let snet = npdu.get(i..i + 2)?;
        let slen = usize::from(*npdu.get(i + 2)?);
        if slen == 0 || slen > 6 || snet == [0xFF, 0xFF] {
            return None;
        }
        let sadr = npdu.get(i + 3..i + 3 + slen)?;
        i += 3 + slen;
        Some((snet, sadr))
    } else {
        None
    };
    Some((route, npdu.get(i..)?))
}

/// A reply NPDU at `priority`, addressed back along `route`.
fn reply_npdu(priority: u8, route: Route<'_>, apdu: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(apdu.len() + 12);
    v.push(0x01);
    match route {
        Some((snet, sadr)) => {
            v.push(0x20 | priority);
            v.extend_from_slice(snet);
            // SADR is 1..=6 octets (split_npdu).
            v.push(sadr.len() as u8);
            v.extend_from_slice(sadr);
            v.push(0xFF); // hop count
        }
        None => v.push(priority),
    }
    v.extend_from_slice(apdu);
    v
}

/// One tag's header, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag<'a> {
    Open(u8),
    Close(u8),
    /// Context-tagged primitive: tag number and content.
    Context(u8, &'a [u8]),
    /// Application-tagged primitive: tag number and content.
    Application(u8, &'a [u8]),
}

/// The tag at `*i`, advancing past it and its content; `None` for a
/// malformed or truncated one.
fn read_tag<'a>(d: &'a [u8], i: &mut usize) -> Option<Tag<'a>> {
    let octet = *d.get(*i)?;
    let mut at = *i + 1;
    let mut number = octet >> 4;
    if number == 0x0F {
        number = *d.get(at)?;
        at += 1;
    }
    let context = octet & 0x08 != 0;
    let lvt = octet & 0x07;
    if context && lvt == 6 {
        *i = at;
        return Some(Tag::Open(number));
    }
    if context && lvt == 7 {
        *i = at;
        return Some(Tag::Close(number));
    }
    // An application BOOLEAN holds its value in the length field.
    let len = if !context && number == 1 {
        0
    } else if lvt < 5 {
        usize::from(lvt)
    } else {
        let ext = *d.get(at)?;
        at += 1;
        match ext {
            254 => {
                let b = d.get(at..at + 2)?;
                at += 2;
                usize::from(u16::from_be_bytes([b[0], b[1]]))
            }
            255 => {
                let b = d.get(at..at + 4)?;
                at += 4;
                usize::try_from(u32::from_be_bytes([b[0], b[1], b[2], b[3]])).ok()?
            }
            n => usize::from(n),
        }
    };
    let content = d.get(at..at.checked_add(len)?)?;
    *i = at + len;
    Some(if context {
        Tag::Context(number, content)
    } else {
        Tag::Application(number, content)
    })
}

/// WriteProperty-Request: object-identifier [0], property-identifier [1],
/// property-array-index [2] OPTIONAL, property-value [3] (constructed),
/// priority [4] OPTIONAL. The (object, property) of a well-formed request.
fn write_property_target(d: &[u8]) -> Option<ReadOnly> {
    let mut i = 0;
    let oid: [u8; 4] = match read_tag(d, &mut i)? {
        Tag::Context(0, c) => c.try_into().ok()?,
        _ => return None,
    };
    let prop = match read_tag(d, &mut i)? {
        Tag::Context(1, c) => uint(c)?,
        _ => return None,
    };
    let mut tag = read_tag(d, &mut i)?;
    if let Tag::Context(2, c) = tag {
        uint(c)?;
        tag = read_tag(d, &mut i)?;
    }
    if tag != Tag::Open(3) || !skip_to_close(d, &mut i, 3) {
        return None;
    }
    if i < d.len() {
        match read_tag(d, &mut i)? {
            Tag::Context(4, c) if (1..=16).contains(&uint(c)?) => {}
            _ => return None,
        }
    }
    (i == d.len()).then_some((oid, prop))
}

/// Confirmed service choice AcknowledgeAlarm (Clause 21).
const ACKNOWLEDGE_ALARM: u8 = 0;

/// The event object (encoded identifier) and Acknowledgment_Source of an
/// unsegmented AcknowledgeAlarm-Request in `npdu`, for the audit trail
/// (alarms.rs `AckSources`). Only notes who asked: the stack decodes and
/// judges the request itself. AcknowledgeAlarm-Request: acknowledging
/// process [0], event object [1], event state [2], time stamp [3]
/// (constructed), acknowledgment source [4] CharacterString, time of
/// acknowledgment [5] (constructed).
pub fn acknowledge_alarm_request(npdu: &[u8]) -> Option<(u32, Option<String>)> {
    let (_, apdu) = split_npdu(npdu)?;
    let first = *apdu.first()?;
    if first >> 4 != 0 || first & 0x08 != 0 || *apdu.get(3)? != ACKNOWLEDGE_ALARM {
        return None;
    }
    let d = apdu.get(4..)?;
    let mut i = 0;
    let Tag::Context(0, _) = read_tag(d, &mut i)? else {
        return None;
    };
    let Tag::Context(1, oid) = read_tag(d, &mut i)? else {
        return None;
    };
    let oid: [u8; 4] = oid.try_into().ok()?;
    let Tag::Context(2, _) = read_tag(d, &mut i)? else {
        return None;
    };
    if read_tag(d, &mut i)? != Tag::Open(3) || !skip_to_close(d, &mut i, 3) {
        return None;
    }
    // Character set 0 is UTF-8 (ANSI X3.4 included); another set is
    // noted as absent rather than guessed at.
    let source = match read_tag(d, &mut i)? {
        Tag::Context(4, [0, text @ ..]) => std::str::from_utf8(text)
            .ok()
            .map(|t| t.chars().filter(|c| !c.is_control()).take(64).collect()),
        Tag::Context(4, _) => None,
        _ => return None,
    };
    Some((u32::from_be_bytes(oid), source))
}

/// An unsigned or enumerated content of 1..=4 octets.
fn uint(content: &[u8]) -> Option<u32> {
    if content.is_empty() || content.len() > 4 {
        return None;
    }
    Some(content.iter().fold(0u32, |n, b| (n << 8) | u32::from(*b)))
}

/// A CharacterString content: a character set octet, then the characters.
fn is_char_string(content: &[u8]) -> bool {
    !content.is_empty()
}

/// DeviceCommunicationControl-Request: time-duration [0] Unsigned16
/// OPTIONAL, enable-disable [1] ENUMERATED, password [2] CharacterString
/// OPTIONAL. The enable-disable value of a well-formed request.
fn dcc_enable_disable(d: &[u8]) -> Option<u32> {
    let mut i = 0;
    let mut tag = read_tag(d, &mut i)?;
    if let Tag::Context(0, c) = tag {
        uint(c).filter(|n| *n <= u32::from(u16::MAX))?;
        tag = read_tag(d, &mut i)?;
    }
    let Tag::Context(1, c) = tag else {
        return None;
    };
    let value = uint(c)?;
    if i < d.len() {
        match read_tag(d, &mut i)? {
            Tag::Context(2, c) if is_char_string(c) => {}
            _ => return None,
        }
    }
    (i == d.len()).then_some(value)
}

/// ReinitializeDevice-Request: reinitialized-state-of-device [0]
/// ENUMERATED, password [1] CharacterString OPTIONAL. The state of a
/// well-formed request.
fn reinitialized_state(d: &[u8]) -> Option<u32> {
    let mut i = 0;
    let Tag::Context(0, c) = read_tag(d, &mut i)? else {
        return None;
    };
    let value = uint(c)?;
    if i < d.len() {
        match read_tag(d, &mut i)? {
            Tag::Context(1, c) if is_char_string(c) => {}
            _ => return None,
        }
    }
    (i == d.len()).then_some(value)
}

/// Skips balanced tags until the closing tag `number` at this depth;
/// false if the data ends first or is malformed.
fn skip_to_close(d: &[u8], i: &mut usize, number: u8) -> bool {
    // Open tags seen inside, innermost last; bounded by the input length
    // since every tag consumes at least one octet.
    let mut open: Vec<u8> = Vec::new();
    while let Some(tag) = read_tag(d, i) {
        match tag {
            Tag::Open(n) => open.push(n),
            Tag::Close(n) => match open.pop() {
                Some(m) if m == n => {}
                Some(_) => return false,
                None => return n == number,
            },
            Tag::Context(..) | Tag::Application(..) => {}
        }
    }
    false
}

/// CreateObject-Request: object-specifier [0] CHOICE { object-type [0]
/// ENUMERATED, object-identifier [1] BACnetObjectIdentifier },
/// list-of-initial-values [1] SEQUENCE OF BACnetPropertyValue OPTIONAL.
fn create_object_is_well_formed(d: &[u8]) -> bool {
    let mut i = 0;
    if read_tag(d, &mut i) != Some(Tag::Open(0)) {
        return false;
    }
    match read_tag(d, &mut i) {
        Some(Tag::Context(0, c)) if uint(c).is_some() => {}
        Some(Tag::Context(1, c)) if c.len() == 4 => {}
        _ => return false,
    }
    if read_tag(d, &mut i) != Some(Tag::Close(0)) {
        return false;
    }
    // The optional list of initial values: one balanced [1] to the end.
    if i < d.len() && (read_tag(d, &mut i) != Some(Tag::Open(1)) || !skip_to_close(d, &mut i, 1)) {
        return false;
    }
    i == d.len()
}

/// ConfirmedAuditNotification-Request: notifications [0] SEQUENCE OF
/// BACnetAuditNotification. Well-formed: one [0] list, balanced, holding
/// each required field of a notification at least once (source-device
/// [2], operation [4], target-device [10]).
fn audit_notification_is_well_formed(d: &[u8]) -> bool {
    let mut i = 0;
    if read_tag(d, &mut i) != Some(Tag::Open(0)) {
        return false;
    }
    let (mut source, mut operation, mut target) = (false, false, false);
    loop {
        let Some(tag) = read_tag(d, &mut i) else {
            return false;
        };
        match tag {
            Tag::Close(0) => break,
            Tag::Close(_) => return false,
            Tag::Open(n) => {
                source |= n == 2;
                target |= n == 10;
                if !skip_to_close(d, &mut i, n) {
                    return false;
                }
            }
            Tag::Context(4, c) => operation |= uint(c).is_some(),
            Tag::Context(..) => {}
            Tag::Application(..) => return false,
        }
    }
    source && operation && target && i == d.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The classifier with no read-only overrides.
    fn ans(npdu: &[u8]) -> Option<Vec<u8>> {
        answer(npdu, &[])
    }

    fn npdu(apdu: &[u8]) -> Vec<u8> {
        let mut v = vec![0x01, 0x04];
        v.extend_from_slice(apdu);
        v
    }

    fn request(service: u8, data: &[u8]) -> Vec<u8> {
        let mut a = vec![0x00, 0x05, 0x2A, service];
        a.extend_from_slice(data);
        npdu(&a)
    }

    #[test]
    fn acknowledge_alarm_requests_name_their_object_and_source() {
        // process 1, MSV 3, state OFFNORMAL, time stamp [2] date/time,
        // source "op", time of acknowledgment [1] sequence 7.
        let ts = [
            0x3E, 0x2E, 0xA4, 126, 12, 6, 7, 0xB4, 11, 22, 33, 45, 0x2F, 0x3F,
        ];
        let mut d = vec![0x09, 0x01, 0x1C, 0x04, 0xC0, 0x00, 0x03, 0x29, 0x02];
        d.extend_from_slice(&ts);
        d.extend_from_slice(&[0x4B, 0x00, b'o', b'p', 0x5E, 0x19, 0x07, 0x5F]);
        let oid = u32::from_be_bytes([0x04, 0xC0, 0x00, 0x03]);
        assert_eq!(
            acknowledge_alarm_request(&request(ACKNOWLEDGE_ALARM, &d)),
            Some((oid, Some("op".to_string())))
        );
        // Another character set: the object is still noted, the text not.
        let mut other = d.clone();
        let at = other.len() - 8;
        other[at + 1] = 4;
        assert_eq!(
            acknowledge_alarm_request(&request(ACKNOWLEDGE_ALARM, &other)),
            Some((oid, None))
        );
        // Another service, a truncated request, hostile bytes: nothing.
        assert_eq!(acknowledge_alarm_request(&request(15, &d)), None);
        for n in 0..d.len() - 8 {
            assert_eq!(
                acknowledge_alarm_request(&request(ACKNOWLEDGE_ALARM, &d[..n])),
                None,
                "{n} octets"
            );
        }
        for seed in 0u32..2000 {
            let junk: Vec<u8> = (0..(seed % 40))
                .map(|k| (seed.wrapping_mul(2654435761).wrapping_add(k * 97) >> 7) as u8)
                .collect();
            let _ = acknowledge_alarm_request(&request(ACKNOWLEDGE_ALARM, &junk));
        }
    }

    #[test]
    fn undefined_enumerations_are_rejected() {
        for v in [3u8, 7, 255] {
            let r = ans(&request(17, &[0x19, v])).expect("answered");
            assert_eq!(r, [0x01, 0x00, 0x60, 0x2A, 8]);
        }
        // With duration and password.
        let r = ans(&request(17, &[0x09, 0x05, 0x19, 0x07, 0x2A, 0x00, b'p']));
        assert_eq!(r.as_deref(), Some(&[0x01, 0x00, 0x60, 0x2A, 8][..]));
        // Four-octet value.
        assert!(ans(&request(17, &[0x1C, 0, 0, 1, 0])).is_some());
        for v in [8u8, 9, 200] {
            let r = ans(&request(20, &[0x09, v, 0x1A, 0x00, b'p'])).expect("answered");
            assert_eq!(r, [0x01, 0x00, 0x60, 0x2A, 8]);
        }
    }

    #[test]
    fn defined_values_and_malformed_requests_go_to_the_stack() {
        for v in 0..=2u8 {
            assert_eq!(ans(&request(17, &[0x19, v])), None);
        }
        for v in 0..=7u8 {
            assert_eq!(ans(&request(20, &[0x09, v])), None);
        }
        // Missing enable-disable, trailing garbage, wrong tags, empty value.
        assert_eq!(ans(&request(17, &[0x09, 0x05])), None);
        assert_eq!(ans(&request(17, &[0x19, 0x07, 0x00])), None);
        assert_eq!(ans(&request(17, &[0x29, 0x07])), None);
        assert_eq!(ans(&request(17, &[0x18])), None);
        assert_eq!(ans(&request(20, &[0x19, 0x09])), None);
        assert_eq!(ans(&request(20, &[0x09, 0x09, 0x18])), None);
        // Duration above Unsigned16.
        assert_eq!(ans(&request(17, &[0x0B, 1, 0, 0, 0x19, 7])), None);
        // Other services, unconfirmed, segmented, network messages, DNET.
        assert_eq!(ans(&request(12, &[0x19, 0x07])), None);
        assert_eq!(ans(&npdu(&[0x10, 17, 0x19, 0x07])), None);
        assert_eq!(ans(&npdu(&[0x08, 0x05, 0x2A, 0, 1, 17, 0x19, 0x07])), None);
        assert_eq!(ans(&[0x01, 0x80, 0x00]), None);
        let mut dnet = vec![0x01, 0x24, 0x00, 0x05, 0x01, 0x07, 0xFF];
        dnet.extend_from_slice(&[0x00, 0x05, 0x2A, 17, 0x19, 0x07]);
        assert_eq!(ans(&dnet), None);
    }

    #[test]
    fn create_object_gets_dynamic_creation_not_supported() {
        let err = [
            0x01, 0x00, 0x50, 0x2A, 10, 0x0E, 0x91, 1, 0x91, 4, 0x0F, 0x19, 0x00,
        ];
        // By type (analog-value), by identifier, with initial values.
        assert_eq!(ans(&request(10, &[0x0E, 0x09, 0x02, 0x0F])).unwrap(), err);
        let by_id = [0x0E, 0x1C, 0x00, 0x80, 0x00, 0x05, 0x0F];
        assert_eq!(ans(&request(10, &by_id)).unwrap(), err);
        let with_values = [
            0x0E, 0x09, 0x02, 0x0F, 0x1E, 0x09, 0x4D, 0x2E, 0x75, 0x02, 0x00, b'x', 0x2F, 0x1F,
        ];
        assert_eq!(ans(&request(10, &with_values)).unwrap(), err);
        // Malformed: the stack's.
        for bad in [
            &[][..],
            &[0x0E, 0x0F],
            &[0x0E, 0x09, 0x02],
            &[0x0E, 0x1B, 0, 0, 1, 0x0F],
            &[0x0E, 0x09, 0x02, 0x0F, 0x1E, 0x2E, 0x1F],
            &[0x0E, 0x09, 0x02, 0x0F, 0x00],
        ] {
            assert_eq!(ans(&request(10, bad)), None, "{bad:02x?}");
        }
    }

    #[test]
    fn audit_notifications_are_acknowledged_when_well_formed() {
        let mut d = vec![0x0E, 0x2E, 0x0C, 0x02, 0x00, 0x00, 0x01, 0x2F, 0x49, 0x00];
        d.extend_from_slice(&[0xAE, 0x0C, 0x02, 0x00, 0x00, 0x02, 0xAF, 0x0F]);
        assert_eq!(ans(&request(32, &d)).unwrap(), [0x01, 0x00, 0x20, 0x2A, 32]);
        // No target device / unbalanced / empty: the stack's.
        assert_eq!(ans(&request(32, &d[..10])), None);
        assert_eq!(ans(&request(32, &[0x0E, 0x0F])), None);
        let mut no_target = d[..10].to_vec();
        no_target.push(0x0F);
        assert_eq!(ans(&request(32, &no_target)), None);
    }

    #[test]
    fn routed_requests_are_answered_back_through_their_router() {
        // SNET 7, SADR 0x42, priority 2 (control 0x0E = SNET + expecting
        // reply + priority 2).
        let mut f = vec![0x01, 0x0E, 0x00, 0x07, 0x01, 0x42];
        f.extend_from_slice(&[0x00, 0x05, 0x09, 17, 0x19, 0x09]);
        let r = ans(&f).expect("answered");
        assert_eq!(r, [0x01, 0x22, 0x00, 0x07, 0x01, 0x42, 0xFF, 0x60, 0x09, 8]);
        // SLEN 0 / SNET 0xFFFF are not valid sources.
        let mut bad = vec![0x01, 0x0C, 0x00, 0x07, 0x00];
        bad.extend_from_slice(&[0x00, 0x05, 0x09, 17, 0x19, 0x09]);
        assert_eq!(ans(&bad), None);
        let mut bad = vec![0x01, 0x0C, 0xFF, 0xFF, 0x01, 0x42];
        bad.extend_from_slice(&[0x00, 0x05, 0x09, 17, 0x19, 0x09]);
        assert_eq!(ans(&bad), None);
    }

    /// xorshift64*: a dependency-free generator for the hostile-bytes run.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
    }

    /// Hostile bytes never panic and any answer is one of the three shapes,
    /// no longer than a routed CreateObject-Error.
    #[test]
    fn hostile_bytes_never_panic() {
        let check = |f: &[u8]| {
            if let Some(r) = ans(f) {
                assert!(r.len() <= 21, "{f:02x?} -> {r:02x?}");
                let at = if r[1] & 0x20 != 0 {
                    6 + r[5] as usize + 1
                } else {
                    2
                };
                assert!(matches!(r[at], 0x20 | 0x50 | 0x60), "{f:02x?} -> {r:02x?}");
            }
        };
        // Every input of up to two octets, and every one-octet tail of the
        // seeds.
        check(&[]);
        for a in 0..=255u8 {
            check(&[a]);
            for b in 0..=255u8 {
                check(&[a, b]);
            }
        }
        let seeds: Vec<Vec<u8>> = vec![
            request(17, &[0x09, 0x05, 0x19, 0x07, 0x2A, 0x00, b'p']),
            request(20, &[0x09, 0x09, 0x1A, 0x00, b'p']),
            request(
                10,
                &[
                    0x0E, 0x09, 0x02, 0x0F, 0x1E, 0x09, 0x4D, 0x2E, 0x75, 0x02, 0x00, b'x', 0x2F,
                    0x1F,
                ],
            ),
            request(
                32,
                &[
                    0x0E, 0x2E, 0x0C, 2, 0, 0, 1, 0x2F, 0x49, 0, 0xAE, 0x0C, 2, 0, 0, 2, 0xAF, 0x0F,
                ],
            ),
        ];
        for s in &seeds {
            for cut in 0..=s.len() {
                check(&s[..cut]);
                for b in 0..=255u8 {
                    let mut m = s[..cut].to_vec();
                    m.push(b);
                    check(&m);
                }
            }
        }
        // Random mutations of the seeds: flips, insertions, deletions,
        // huge extended lengths.
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..200_000 {
            let mut m = seeds[(rng.next() % seeds.len() as u64) as usize].clone();
            for _ in 0..1 + rng.next() % 4 {
                let pos = (rng.next() as usize) % (m.len() + 1);
                match rng.next() % 4 {
                    0 if pos < m.len() => m[pos] ^= 1 << (rng.next() % 8),
                    1 => m.insert(pos, rng.next() as u8),
                    2 if pos < m.len() => {
                        m.remove(pos);
                    }
                    _ => m
                        .splice(pos..pos, [0x7D, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF])
                        .for_each(drop),
                }
            }
            check(&m);
        }
    }

    #[test]
    fn a_write_to_a_property_castpoint_holds_read_only_is_write_access_denied() {
        // WriteProperty NETWORK_PORT 1, Description (28), "x", priority 8.
        let oid = [0x0E, 0x00, 0x00, 0x01];
        let ro: Vec<ReadOnly> = vec![(oid, 28)];
        let mut wp = vec![0x0C];
        wp.extend_from_slice(&oid);
        wp.extend_from_slice(&[0x19, 28, 0x3E, 0x72, 0x00, b'x', 0x3F]);
        let err = answer(&request(15, &wp), &ro).expect("answered");
        assert_eq!(&err[err.len() - 7..], &[0x50, 0x2A, 15, 0x91, 2, 0x91, 40]);
        let mut with_prio = wp.clone();
        with_prio.extend_from_slice(&[0x49, 8]);
        assert!(answer(&request(15, &with_prio), &ro).is_some());
        // Another property, or no override list: the stack's.
        let mut other = wp.clone();
        other[6] = 77;
        assert_eq!(answer(&request(15, &other), &ro), None);
        assert_eq!(answer(&request(15, &wp), &[]), None);
        // Malformed: no closing tag, a bad priority, trailing bytes.
        assert_eq!(answer(&request(15, &wp[..wp.len() - 1]), &ro), None);
        let mut bad = wp.clone();
        bad.extend_from_slice(&[0x49, 0]);
        assert_eq!(answer(&request(15, &bad), &ro), None);
        let mut trailing = wp;
        trailing.push(0x00);
        assert_eq!(answer(&request(15, &trailing), &ro), None);
    }

    #[test]
    fn apdu_types_through_every_npdu_header_shape() {
        assert_eq!(apdu_type(&[0x01, 0x04, 0x00, 0x05]), Some(0));
        assert_eq!(apdu_type(&[0x01, 0x00, 0x10, 0x08]), Some(1));
        // DNET 7, DLEN 1, DADR 0x42, hop count, then a Reject.
        assert_eq!(apdu_type(&[0x01, 0x20, 0, 7, 1, 0x42, 0xFF, 0x60]), Some(6));
        // SNET 5, SLEN 2.
        assert_eq!(apdu_type(&[0x01, 0x08, 0, 5, 2, 1, 2, 0x50]), Some(5));
        // Network message, truncated, wrong version.
        assert_eq!(apdu_type(&[0x01, 0x80, 0x00]), None);
        assert_eq!(apdu_type(&[0x01, 0x20, 0, 7]), None);
        assert_eq!(apdu_type(&[0x02, 0x00, 0x10]), None);
    }
}
