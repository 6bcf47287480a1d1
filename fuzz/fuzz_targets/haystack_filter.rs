//! Fuzz target: Haystack filters (encoding::parse_filter, the read op's parser).
#![no_main]

use libfuzzer_sys::fuzz_target;

use castpoint_fuzz::encoding::parse_filter;
use castpoint_fuzz::small_stack;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let s = s.to_string();
        small_stack(move || {
            let _ = parse_filter(&s);
        });
    }
});
