//! Fuzz target: MPEG-TS parsing (mpegts/ts.rs): alignment, CC checks, PSI, keyframes, PES timestamps, frame loss.
#![no_main]

use libfuzzer_sys::fuzz_target;

use castpoint_fuzz::ts;

fuzz_target!(|data: &[u8]| {
    let mut a = ts::Aligner::new();
    let mut cc = ts::CcChecker::default();
    let mut psi = ts::PsiCache::default();
    let mut loss = ts::FrameLoss::default();
    let mut gaps = ts::VideoGapCounter::default();
    for piece in data.chunks(1316) {
        let chunk = a.push(piece);
        let chunk = &chunk[..];
        cc.check(chunk);
        psi.observe(chunk);
        let _ = psi.header();
        if let Some((vpid, st)) = psi.psi.video {
            let _ = ts::keyframe_start(chunk, vpid, st);
            gaps.observe(chunk, vpid);
            loss.dropped(chunk, vpid);
            loss.delivered(chunk, vpid);
        }
        for p in chunk.chunks_exact(ts::TS) {
            let _ = ts::pes_timestamps(p);
            let _ = ts::section(p);
            let _ = ts::payload(p);
        }
    }
});
