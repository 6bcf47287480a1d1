//! Fuzz target: Haystack GET query strings (encoding::decode_query: %-decoding, Zinc scalars).
#![no_main]

use libfuzzer_sys::fuzz_target;

use castpoint_fuzz::encoding::decode_query;
use castpoint_fuzz::{encode_all, small_stack};

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let s = s.to_string();
        small_stack(move || {
            if let Ok(g) = decode_query(&s) {
                encode_all(g);
            }
        });
    }
});
