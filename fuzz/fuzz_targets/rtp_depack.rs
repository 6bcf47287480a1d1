//! Fuzz target: RTP parsing and the H.264 (RFC 6184) and AAC (RFC 3640) depacketizers.
#![no_main]

use libfuzzer_sys::fuzz_target;

use castpoint_fuzz::rtp;

fuzz_target!(|data: &[u8]| {
    // First bytes: AAC-hbr field sizes within what sdp.rs's codec() lets
    // through (size 1..=16, index 0..=8, delta 0..=8); the rest:
    // length-prefixed packets.
    let Some((head, mut rest)) = data.split_at_checked(3) else {
        return;
    };
    let mut h264 = rtp::H264Depack::new(vec![vec![0x67, 0x42]], vec![vec![0x68, 0xce]], 0);
    let mut aac = rtp::AacDepack::new(48_000, 1 + head[0] % 16, head[1] % 9, head[2] % 9, 0);
    while let Some((&n, tail)) = rest.split_first() {
        let n = usize::from(n).min(tail.len());
        let (pkt, tail) = tail.split_at(n);
        rest = tail;
        if let Some(p) = rtp::parse(pkt) {
            let _ = h264.push(&p);
            let _ = aac.push(&p);
        }
    }
});
