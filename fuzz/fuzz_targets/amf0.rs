//! Fuzz target: AMF0 (RTMP command payloads): decode, and re-encode what decodes.
#![no_main]

use libfuzzer_sys::fuzz_target;

use castpoint_fuzz::amf0;
use castpoint_fuzz::small_stack;

fuzz_target!(|data: &[u8]| {
    let data = data.to_vec();
    small_stack(move || {
        if let Ok(vs) = amf0::decode_all(&data) {
            // What we encode decodes back, to the same values where the
            // encoding is lossless (NaN != NaN; keys over 64 KiB after lossy
            // UTF-8 repair are truncated).
            let again = amf0::decode_all(&amf0::encode_all(&vs)).expect("our encoding decodes");
            if vs.iter().all(lossless) {
                assert_eq!(again, vs);
            }
        }
    });
});

fn lossless(v: &amf0::Amf) -> bool {
    match v {
        amf0::Amf::Number(n) | amf0::Amf::Date(n) => !n.is_nan(),
        amf0::Amf::Object(kv) => kv.iter().all(|(k, v)| k.len() <= 0xFFFF && lossless(v)),
        amf0::Amf::Array(a) => a.iter().all(lossless),
        _ => true,
    }
}
