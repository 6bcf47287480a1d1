//! Fuzz target: Modbus TCP frames: MBAP splitting and request PDU decoding (frame.rs's public decode functions).
#![no_main]

use libfuzzer_sys::fuzz_target;

use castpoint_fuzz::modbus_frame::{decode_request, split_frame, MBAP_LEN};

fuzz_target!(|data: &[u8]| {
    let mut buf = data;
    while let Ok(Some((_, used))) = split_frame(buf) {
        assert!(used >= MBAP_LEN && used <= buf.len());
        let _ = decode_request(&buf[MBAP_LEN..used]);
        buf = &buf[used..];
    }
    let _ = decode_request(data);
});
