//! Muxer tests: packet structure, continuity, PSI, PES round-trip (property-based) and an ffprobe decode of real x264/AAC output.

use super::*;
use crate::mpegts::ts::{payload, pid, pusi, PsiTracker};
use castpoint_sim::tsgen::TsAnalyzer;
use proptest::prelude::*;

/// AAC-LC, 48 kHz, stereo.
const ASC: [u8; 2] = [0x11, 0x90];

fn cfg(video: bool, audio: bool) -> MuxConfig {
    MuxConfig {
        video: video.then(|| VideoConfig {
            sps: vec![vec![0x67, 0x42, 0xC0, 0x1E, 0xD9]],
            pps: vec![vec![0x68, 0xCE, 0x3C, 0x80]],
        }),
        audio: audio.then(|| AacConfig::from_asc(&ASC).expect("valid ASC")),
    }
}

/// Reassembles the PES packets of one PID: (PTS, DTS, payload).
fn pes_of(ts: &[u8], want: u16) -> Vec<(u64, Option<u64>, Vec<u8>)> {
    let mut all: Vec<Vec<u8>> = Vec::new();
    for p in ts.chunks_exact(TS) {
        if pid(p) != want {
            continue;
        }
        let Some(pl) = payload(p) else { continue };
        if pusi(p) {
            all.push(pl.to_vec());
        } else if let Some(last) = all.last_mut() {
            last.extend_from_slice(pl);
        }
    }
    all.into_iter()
        .map(|pes| {
            assert_eq!(&pes[..3], &[0, 0, 1]);
            let hlen = usize::from(pes[8]);
            let rd = |b: &[u8]| {
                (u64::from(b[0] >> 1) & 7) << 30
                    | u64::from(b[1]) << 22
                    | u64::from(b[2] >> 1) << 15
                    | u64::from(b[3]) << 7
                    | u64::from(b[4] >> 1)
            };
            let pts = rd(&pes[9..14]);
            let dts = (pes[7] & 0x40 != 0).then(|| rd(&pes[14..19]));
            let plen = usize::from(u16::from_be_bytes([pes[4], pes[5]]));
            if plen != 0 {
                assert_eq!(plen, pes.len() - 6, "PES_packet_length");
            }
            (pts, dts, pes[9 + hlen..].to_vec())
        })
        .collect()
}

fn check_packets(ts: &[u8]) {
    assert_eq!(ts.len() % TS, 0);
    assert!(ts.chunks_exact(TS).all(|p| p[0] == 0x47));
    let mut a = TsAnalyzer::new();
    a.feed(ts, 0);
    for (pid, st) in a.pids() {
        assert_eq!(st.cc_errors, 0, "cc errors on pid {pid:#x}");
    }
}

#[test]
fn adts_header_from_asc() {
    let c = AacConfig::from_asc(&ASC).expect("LC");
    let p = c.adts_params().expect("params");
    assert_eq!(
        p,
        AdtsParams {
            profile: 1,
            sampling_index: 3,
            channels: 2
        }
    );
    assert_eq!(c.sample_rate(), Some(48000));
    let h = p.header(100).expect("fits");
    assert_eq!(h[0], 0xFF);
    assert_eq!(h[1] & 0xF6, 0xF0);
    let fl = (usize::from(h[3] & 3) << 11) | (usize::from(h[4]) << 3) | usize::from(h[5] >> 5);
    assert_eq!(fl, 107);
    assert!(p.header(9000).is_none());
    assert!(AacConfig::from_asc(&[]).is_err());
    assert!(AacConfig::from_asc(&[0xF8, 0x00]).is_err(), "AOT 31");
    assert!(
        AacConfig::from_asc(&[0x10, 0x00]).is_err(),
        "channel config 0"
    );
}

#[test]
fn psi_first_and_before_keyframes() {
    let mut m = TsMuxer::new(cfg(true, true));
    let mut out = BytesMut::new();
    m.push_video(0, 0, true, &[0, 0, 0, 1, 0x65, 1, 2, 3], &mut out);
    assert_eq!(pid(&out[..TS]), 0, "PAT first");
    assert_eq!(pid(&out[TS..2 * TS]), PMT_PID);
    let mut psi = PsiTracker::default();
    psi.observe(&out);
    assert_eq!(psi.pmt_pid(), Some(PMT_PID));
    assert_eq!(psi.video, Some((VIDEO_PID, STREAM_TYPE_H264)));
    // The keyframe packet carries random_access_indicator and a PCR.
    let v = &out[2 * TS..3 * TS];
    assert_eq!(pid(v), VIDEO_PID);
    assert_eq!(v[3] & 0x20, 0x20);
    assert_eq!(v[5] & 0x50, 0x50);
    // SPS and PPS were inserted (the AU had none), after an AUD.
    let pes = pes_of(&out, VIDEO_PID);
    let nals: Vec<u8> = annexb_nals(&pes[0].2).map(|n| n[0] & 0x1F).collect();
    assert_eq!(nals, vec![9, 7, 8, 5]);
    // A non-keyframe 40 ms later: no PSI. A keyframe: PSI again.
    let mut out2 = BytesMut::new();
    m.push_video(3600, 3600, false, &[0, 0, 1, 0x41, 9], &mut out2);
    assert!(out2.chunks_exact(TS).all(|p| pid(p) == VIDEO_PID));
    let mut out3 = BytesMut::new();
    m.push_video(7200, 7200, true, &[0, 0, 1, 0x65, 9], &mut out3);
    assert_eq!(pid(&out3[..TS]), 0);
    // 100 ms of audio only: PSI repeats.
    let mut out4 = BytesMut::new();
    for i in 0..10u64 {
        m.push_audio(7200 + i * 1920, &[0x21, 0x10, 0x05], &mut out4);
    }
    assert!(out4.chunks_exact(TS).any(|p| pid(p) == 0));
    let mut all = out.clone();
    all.extend_from_slice(&out2);
    all.extend_from_slice(&out3);
    all.extend_from_slice(&out4);
    check_packets(&all);
}

#[test]
fn audio_only_carries_pcr_on_audio() {
    let mut m = TsMuxer::new(cfg(false, true));
    let mut out = BytesMut::new();
    m.push_audio(90_000, &[1, 2, 3, 4], &mut out);
    let a = out
        .chunks_exact(TS)
        .find(|p| pid(p) == AUDIO_PID)
        .expect("audio packet");
    assert_eq!(a[5] & 0x10, 0x10, "PCR flag");
    let pes = pes_of(&out, AUDIO_PID);
    assert_eq!(pes[0].0, 90_000);
    assert_eq!(&pes[0].2[7..], &[1, 2, 3, 4]);
    check_packets(&out);
}

#[test]
fn slow_video_gets_pcr_from_audio_pushes() {
    let mut m = TsMuxer::new(cfg(true, true));
    let mut out = BytesMut::new();
    m.push_video(0, 0, true, &[0, 0, 1, 0x65, 1], &mut out);
    let mut out2 = BytesMut::new();
    // 1 fps video: audio frames over the next second must bring PCRs.
    for i in 1..40u64 {
        m.push_audio(i * 1920, &[0x21, 0x10], &mut out2);
    }
    let pcrs = out2
        .chunks_exact(TS)
        .filter(|p| pid(p) == VIDEO_PID && p[3] & 0x20 != 0 && p[5] & 0x10 != 0)
        .count();
    assert!(pcrs >= 7, "{pcrs} PCR packets");
    out.extend_from_slice(&out2);
    check_packets(&out);
}

fn arb_au() -> impl Strategy<Value = (bool, Vec<u8>, u32, u8)> {
    (
        any::<bool>(),
        proptest::collection::vec(any::<u8>(), 1..3000),
        0u32..9000,
        0u8..3,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the payload, timestamps or mix, the output is whole packets
    /// with continuous CCs, and every PES carries back exactly its input.
    #[test]
    fn roundtrip_through_ts_parser(aus in proptest::collection::vec(arb_au(), 1..20),
                                   start in any::<u64>()) {
        let mut m = TsMuxer::new(cfg(true, true));
        let mut out = BytesMut::new();
        let mut t = start;
        let mut sent_v = Vec::new();
        let mut sent_a = Vec::new();
        for (key, data, step, kind) in &aus {
            t = t.wrapping_add(u64::from(*step));
            if *kind == 0 {
                let len = data.len().min(8000);
                m.push_audio(t, &data[..len], &mut out);
                sent_a.push((t & TS_MASK, data[..len].to_vec()));
            } else {
                // Annex B: a start code then arbitrary bytes.
                let mut au = vec![0, 0, 0, 1, 0x41];
                au.extend_from_slice(data);
                let dts = t;
                let pts = t.wrapping_add(u64::from(*step) * u64::from(*kind));
                m.push_video(pts, dts, *key, &au, &mut out);
                sent_v.push((pts & TS_MASK, au));
            }
        }
        check_packets(&out);
        let got_v = pes_of(&out, VIDEO_PID);
        prop_assert_eq!(got_v.len(), sent_v.len());
        for ((pts, _, es), (spts, au)) in got_v.iter().zip(&sent_v) {
            prop_assert_eq!(pts, spts);
            prop_assert!(es.ends_with(au));
        }
        let got_a = pes_of(&out, AUDIO_PID);
        prop_assert_eq!(got_a.len(), sent_a.len());
        for ((pts, _, es), (spts, raw)) in got_a.iter().zip(&sent_a) {
            prop_assert_eq!(pts, spts);
            prop_assert_eq!(&es[7..], &raw[..]);
        }
    }

    /// Arbitrary bytes as an ASC never panic.
    #[test]
    fn asc_never_panics(asc in proptest::collection::vec(any::<u8>(), 0..8)) {
        if let Ok(c) = AacConfig::from_asc(&asc) {
            let _ = c.sample_rate();
        }
    }

    /// The NAL iterator never panics and yields slices of the input.
    #[test]
    fn nal_iter_total(buf in proptest::collection::vec(0u8..3, 0..200)) {
        let n: usize = annexb_nals(&buf).map(|n| n.len()).sum();
        prop_assert!(n <= buf.len());
    }
}

/// Runs a command, failing the test with its stderr when it fails.
fn run(cmd: &mut std::process::Command) -> Vec<u8> {
    let out = cmd
        .output()
        .expect("ffmpeg/ffprobe installed (scripts/test-all.sh)");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Real x264 + AAC elementary streams through the muxer decode with ffprobe
/// (right codecs, sizes, frame counts, no decoder errors).
#[test]
fn ffprobe_decodes_muxed_x264_and_aac() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h264 = dir.path().join("v.h264");
    let aac = dir.path().join("a.aac");
    run(std::process::Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x180:rate=25",
            "-t",
            "2",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "25",
            "-x264-params",
            "aud=1",
            "-f",
            "h264",
        ])
        .arg(&h264));
    run(std::process::Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000",
            "-t",
            "2",
            "-ac",
            "2",
            "-c:a",
            "aac",
            "-f",
            "adts",
        ])
        .arg(&aac));
    let v = std::fs::read(&h264).expect("h264");
    let a = std::fs::read(&aac).expect("aac");
    // Access units: split at each AUD; keyframe = contains an IDR slice.
    let mut aus: Vec<Vec<u8>> = Vec::new();
    for nal in annexb_nals(&v) {
        if nal[0] & 0x1F == 9 || aus.is_empty() {
            aus.push(Vec::new());
        }
        let au = aus.last_mut().expect("one AU");
        au.extend_from_slice(&[0, 0, 0, 1]);
        au.extend_from_slice(nal);
    }
    // Parameter sets come from the config, as RTMP/RTSP deliver them: strip
    // them from the stream so the muxer's insertion is what makes it decode.
    let mut sps = Vec::new();
    let mut pps = Vec::new();
    let aus: Vec<(bool, Vec<u8>)> = aus
        .into_iter()
        .map(|au| {
            let mut key = false;
            let mut o = Vec::new();
            for n in annexb_nals(&au) {
                match n[0] & 0x1F {
                    7 => sps = vec![n.to_vec()],
                    8 => pps = vec![n.to_vec()],
                    t => {
                        key |= t == 5;
                        o.extend_from_slice(&[0, 0, 0, 1]);
                        o.extend_from_slice(n);
                    }
                }
            }
            (key, o)
        })
        .collect();
    let mut frames = Vec::new();
    let mut i = 0;
    while i + 7 <= a.len() {
        let fl = (usize::from(a[i + 3] & 3) << 11)
            | (usize::from(a[i + 4]) << 3)
            | usize::from(a[i + 5] >> 5);
        frames.push(a[i + 7..i + fl].to_vec());
        i += fl;
    }
    // ASC for the ADTS header's profile / rate / channels.
    let profile = (a[2] >> 6) + 1;
    let sfi = (a[2] >> 2) & 0x0F;
    let ch = ((a[2] & 1) << 2) | (a[3] >> 6);
    let asc = vec![(profile << 3) | (sfi >> 1), ((sfi & 1) << 7) | (ch << 3)];
    let mut m = TsMuxer::new(MuxConfig {
        video: Some(VideoConfig { sps, pps }),
        audio: Some(AacConfig::from_asc(&asc).expect("asc")),
    });
    let mut out = BytesMut::new();
    let base = 10 * 90_000u64;
    let (mut vi, mut ai) = (0, 0);
    while vi < aus.len() || ai < frames.len() {
        let vt = base + vi as u64 * 3600;
        let at = base + ai as u64 * 1024 * 90_000 / 48_000;
        if vi < aus.len() && (ai >= frames.len() || vt <= at) {
            m.push_video(vt, vt, aus[vi].0, &aus[vi].1, &mut out);
            vi += 1;
        } else {
            m.push_audio(at, &frames[ai], &mut out);
            ai += 1;
        }
    }
    check_packets(&out);
    let ts = dir.path().join("out.ts");
    std::fs::write(&ts, &out).expect("write ts");
    let probe = run(std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-show_entries",
            "stream=codec_name,width,height,channels,sample_rate,nb_read_frames",
            "-of",
            "compact",
        ])
        .arg(&ts));
    let probe = String::from_utf8_lossy(&probe);
    assert!(
        probe.contains("codec_name=h264|width=320|height=180"),
        "{probe}"
    );
    assert!(probe.contains("nb_read_frames=50"), "{probe}");
    assert!(
        probe.contains("codec_name=aac")
            && probe.contains("sample_rate=48000")
            && probe.contains("channels=2"),
        "{probe}"
    );
    // Decoding the whole file reports no errors.
    let dec = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&ts)
        .args(["-f", "null", "-"])
        .output()
        .expect("ffmpeg");
    assert!(dec.status.success());
    assert!(
        dec.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&dec.stderr)
    );
}
