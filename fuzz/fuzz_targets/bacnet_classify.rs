//! Fuzz target: the BACnet B/IP filter's classifier (`answer`, `apdu_type`, `acknowledge_alarm_request`) on arbitrary NPDUs.
#![no_main]

use libfuzzer_sys::fuzz_target;

use castpoint_fuzz::bacnet_classify::{acknowledge_alarm_request, answer, apdu_type, ReadOnly};

fuzz_target!(|data: &[u8]| {
    // The first 8 octets also name one read-only (object, property), so
    // the WriteProperty path can match and answer WRITE_ACCESS_DENIED.
    let ro: Vec<ReadOnly> = match data {
        [a, b, c, d, p0, p1, p2, p3, ..] => {
            vec![([*a, *b, *c, *d], u32::from_be_bytes([*p0, *p1, *p2, *p3]))]
        }
        _ => Vec::new(),
    };
    for npdu in [data, data.get(8..).unwrap_or_default()] {
        if let Some(reply) = answer(npdu, &ro) {
            // An answer is a whole NPDU carrying an APDU.
            assert!(apdu_type(&reply).is_some(), "{reply:02x?}");
        }
        let _ = apdu_type(npdu);
        let _ = acknowledge_alarm_request(npdu);
    }
});
