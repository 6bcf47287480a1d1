//! Fuzz target: RTSP messages and interleaved frames (msg::parse_frame) on a byte stream.
#![no_main]

use libfuzzer_sys::fuzz_target;

use castpoint_fuzz::msg;

fuzz_target!(|data: &[u8]| {
    let mut buf = data;
    loop {
        match msg::parse_frame(buf) {
            Ok(Some((f, used))) => {
                assert!(used > 0 && used <= buf.len(), "progress within the buffer");
                if let msg::Frame::Response(r) = &f {
                    let _ = r.cseq();
                    if let Some(s) = r.header("session") {
                        let _ = msg::session_id(s);
                    }
                }
                buf = &buf[used..];
            }
            Ok(None) | Err(_) => break,
        }
    }
});
