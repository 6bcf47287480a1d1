//! Fuzz target: Sparkplug B payloads as an NCMD/DCMD brings them from the broker (protocols/mqtt/spb.rs's decoder), re-encoded and decoded again.
#![no_main]

use libfuzzer_sys::fuzz_target;

use castpoint_fuzz::spb::{Payload, MAX_METRICS};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Payload::decode(data) {
        assert!(p.metrics.len() <= MAX_METRICS);
        // What castpoint decoded it can encode; one encode/decode round
        // normalises (a null metric's value, unpaired property keys), and
        // from there the round trip is exact. NaN never compares equal, so
        // the comparison is on the Debug text.
        let p1 = Payload::decode(&p.encode()).expect("own encoding decodes");
        let p2 = Payload::decode(&p1.encode()).expect("own encoding decodes");
        assert_eq!(format!("{p1:?}"), format!("{p2:?}"));
    }
});
