//! Fuzz target: SDP (RTSP DESCRIBE bodies): parse, then derive codecs and control URLs.
#![no_main]

use libfuzzer_sys::fuzz_target;

use castpoint_fuzz::sdp;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(s) = sdp::parse(text) {
            for m in &s.media {
                let _ = m.codec();
                let _ = sdp::resolve_control("rtsp://h/p/", m.control.as_deref());
            }
        }
    }
});
