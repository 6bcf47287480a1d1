//! Fuzz target: Haystack Zinc request grids (encoding::decode_request), decoded then re-encoded in every format.
#![no_main]

use libfuzzer_sys::fuzz_target;

use castpoint_fuzz::encoding::{decode_request, BodyFormat};
use castpoint_fuzz::{encode_all, small_stack};

fuzz_target!(|data: &[u8]| {
    let data = data.to_vec();
    small_stack(move || {
        if let Ok(g) = decode_request(BodyFormat::Zinc, &data) {
            encode_all(g);
        }
    });
});
