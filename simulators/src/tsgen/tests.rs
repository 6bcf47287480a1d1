//! Tests of the generator: structure, continuity, stamps, pacing, and real
//! decoders (ffprobe/ffmpeg) accepting the stream.

use super::ts::{crc32_mpeg2, PACKET};
use super::*;
use std::time::{Duration, SystemTime};

fn generate(cfg: TsConfig, seconds: u64) -> Vec<u8> {
    let mut g = TsGenerator::new(cfg).expect("config");
    let chunks = seconds * 1_000_000_000 / g.chunk_duration().as_nanos() as u64;
    let t0 = SystemTime::now();
    let mut out = Vec::new();
    for i in 0..chunks {
        out.extend_from_slice(&g.next_chunk(t0 + g.chunk_duration() * i as u32));
    }
    out
}

fn pid(p: &[u8]) -> u16 {
    (u16::from(p[1] & 0x1F) << 8) | u16::from(p[2])
}

#[test]
fn rejects_bad_config() {
    for cfg in [
        TsConfig {
            bitrate: 1000,
            ..Default::default()
        },
        TsConfig {
            fps: 0,
            ..Default::default()
        },
        TsConfig {
            gop: 0,
            ..Default::default()
        },
        TsConfig {
            video_pid: 0x1FFF,
            ..Default::default()
        },
        TsConfig {
            audio_pid: 0x100,
            ..Default::default()
        },
    ] {
        assert!(TsGenerator::new(cfg).is_err());
    }
}

#[test]
fn stream_is_continuous_and_stamped() {
    for bitrate in [600_000, 4_000_000, 10_000_000, 20_000_000] {
        let data = generate(
            TsConfig {
                bitrate,
                ..Default::default()
            },
            1,
        );
        let mut a = TsAnalyzer::new();
        a.feed(&data, 0);
        assert_eq!(
            a.report().stamps,
            (data.len() / CHUNK_BYTES) as u64,
            "at {bitrate}"
        );
        assert_eq!(a.report().cc_errors, 0, "at {bitrate}");
    }
    let data = generate(TsConfig::default(), 3);
    assert_eq!(data.len() % CHUNK_BYTES, 0);
    let mut a = TsAnalyzer::new();
    a.feed(&data, unix_us(SystemTime::now()));
    let r = a.report();
    assert_eq!(r.cc_errors, 0);
    assert_eq!(r.sync_skipped_bytes, 0);
    assert_eq!(r.missing_chunks, 0);
    // Every chunk is stamped (none is all-null at this rate).
    assert_eq!(r.stamps, (data.len() / CHUNK_BYTES) as u64);
    // 25 pictures per second, each with an SEI stamp.
    assert!(
        (74..=76).contains(&r.sei_stamps),
        "sei stamps {}",
        r.sei_stamps
    );
    assert!(a.pids().contains_key(&0x100) && a.pids().contains_key(&0x101));
}

#[test]
fn bitrate_is_exact() {
    let g = TsGenerator::new(TsConfig {
        bitrate: 10_000_000,
        ..Default::default()
    })
    .expect("config");
    let per_s = 1e9 / g.chunk_duration().as_nanos() as f64;
    let bits = per_s * CHUNK_BYTES as f64 * 8.0;
    assert!((bits - 10e6).abs() / 10e6 < 1e-4, "{bits}");
}

#[test]
fn psi_sections_have_valid_crc_and_pcr_is_regular() {
    let cfg = TsConfig::default();
    let bitrate = cfg.bitrate;
    let data = generate(cfg, 2);
    let mut pats = 0;
    let mut pmts = 0;
    let mut pcrs = Vec::new();
    let mut keyframes = 0;
    for (i, p) in data.chunks(PACKET).enumerate() {
        let pid = pid(p);
        if pid == 0 || pid == 0x1000 {
            let off = if p[3] & 0x20 != 0 {
                5 + usize::from(p[4])
            } else {
                4
            };
            let ptr = usize::from(p[off]);
            let sec = &p[off + 1 + ptr..];
            let len = 3 + ((usize::from(sec[1] & 0x0F) << 8) | usize::from(sec[2]));
            assert_eq!(crc32_mpeg2(&sec[..len]), 0, "section CRC on PID {pid}");
            if pid == 0 {
                pats += 1
            } else {
                pmts += 1
            }
        }
        if pid == 0x100 && p[3] & 0x20 != 0 && p[4] > 0 {
            if p[5] & 0x10 != 0 {
                let base = (u64::from(p[6]) << 25)
                    | (u64::from(p[7]) << 17)
                    | (u64::from(p[8]) << 9)
                    | (u64::from(p[9]) << 1)
                    | (u64::from(p[10]) >> 7);
                let ext = (u64::from(p[10] & 1) << 8) | u64::from(p[11]);
                pcrs.push((i, base * 300 + ext));
            }
            if p[5] & 0x40 != 0 {
                keyframes += 1;
                // A random-access packet starts a PES whose picture is an IDR.
                assert!(p[1] & 0x40 != 0);
                let off = 5 + usize::from(p[4]);
                let es = &p[off..];
                assert!(
                    es.windows(5).any(|w| w == [0, 0, 0, 1, 0x67]),
                    "SPS in keyframe"
                );
            }
        }
    }
    assert!(
        (19..=21).contains(&pats) && (19..=21).contains(&pmts),
        "{pats} {pmts}"
    );
    assert_eq!(keyframes, 2);
    // PCR values match the packets' position at the stream's bit rate and
    // are never more than 40 ms apart.
    for w in pcrs.windows(2) {
        let (i0, p0) = w[0];
        let (i1, p1) = w[1];
        let expect = (i1 - i0) as u64 * 188 * 8 * 27_000_000 / bitrate;
        assert!(p1 - p0 <= 27_000 * 40, "PCR gap {}", p1 - p0);
        assert!((p1 - p0).abs_diff(expect) < 100, "PCR drift");
    }
}

#[test]
fn stamp_round_trip_and_corruption() {
    let s = Stamp {
        sent_unix_us: 1_700_000_000_123_456,
        seq: 42,
    };
    assert_eq!(Stamp::decode(&s.encode()), Some(s));
    let mut bad = s.encode();
    bad[0] = b'X';
    assert_eq!(Stamp::decode(&bad), None);
    assert_eq!(Stamp::decode(&s.encode()[..10]), None);
}

#[test]
fn analyzer_counts_loss_and_resyncs_byte_streams() {
    let data = generate(TsConfig::default(), 1);
    let chunks: Vec<&[u8]> = data.chunks(CHUNK_BYTES).collect();
    // Drop chunks 10 and 11: two missing stamps and CC errors on the video PID.
    let mut a = TsAnalyzer::new();
    for (i, c) in chunks.iter().enumerate() {
        if i != 10 && i != 11 {
            a.feed(c, 0);
        }
    }
    let r = a.report();
    assert_eq!(r.missing_chunks, 2);
    assert!(r.cc_errors >= 1);
    // Byte stream cut at odd places, with garbage in front: same result as clean.
    let mut b = TsAnalyzer::new();
    b.feed(&[1, 2, 3, 0x47, 9], 0);
    for piece in data.chunks(1000) {
        b.feed(piece, 0);
    }
    let rb = b.report();
    assert_eq!(rb.cc_errors, 0);
    assert_eq!(rb.stamps, chunks.len() as u64);
    assert_eq!(rb.sync_skipped_bytes, 5);
}

#[test]
fn pacer_schedules_chunks() {
    let start = std::time::Instant::now();
    let mut p = Pacer::new(start, Duration::from_millis(10));
    assert_eq!(p.due(start), 1);
    assert_eq!(p.due(start + Duration::from_millis(35)), 4);
    p.mark_sent(4);
    assert_eq!(p.next_deadline(), start + Duration::from_millis(40));
    assert_eq!(p.due(start + Duration::from_millis(35)), 0);
}

fn tool(name: &str) -> bool {
    let found = std::process::Command::new(name)
        .arg("-version")
        .output()
        .is_ok();
    if !found && std::env::var_os("CASTPOINT_SKIP_FFMPEG").is_none() {
        panic!("{name} not installed (set CASTPOINT_SKIP_FFMPEG=1 to skip)");
    }
    found
}

#[test]
fn ffprobe_identifies_streams_and_ffmpeg_decodes_cleanly() {
    if !tool("ffprobe") || !tool("ffmpeg") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gen.ts");
    std::fs::write(
        &path,
        generate(
            TsConfig {
                bitrate: 2_000_000,
                gop: 10,
                ..Default::default()
            },
            4,
        ),
    )
    .expect("write");
    let out = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_streams",
            "-show_format",
            "-of",
            "json",
        ])
        .arg(&path)
        .output()
        .expect("ffprobe");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "ffprobe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "\"codec_name\": \"h264\"",
        "\"codec_name\": \"aac\"",
        "\"width\": 640",
        "\"height\": 360",
        "\"r_frame_rate\": \"25/1\"",
        "\"format_name\": \"mpegts\"",
    ] {
        assert!(stdout.contains(needle), "missing {needle} in {stdout}");
    }
    // Full decode of every picture and audio frame: any error (CC, slice,
    // AAC) is printed at -v error.
    let out = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&path)
        .args(["-f", "null", "-"])
        .output()
        .expect("ffmpeg");
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "ffmpeg decode errors: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The picture really changes: the frame hashes differ over time.
    let out = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&path)
        .args(["-map", "0:v", "-f", "framemd5", "-"])
        .output()
        .expect("ffmpeg framemd5");
    let hashes: std::collections::HashSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit(',').next().map(|s| s.trim().to_string()))
        .collect();
    assert!(hashes.len() > 50, "only {} distinct pictures", hashes.len());
}

mod fuzz {
    use super::super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn stamp_readers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = read_stamp(&data);
            let _ = read_stamp_in_payload(&data);
            let mut a = TsAnalyzer::new();
            a.feed(&data, 0);
            let _ = a.report();
        }

        #[test]
        fn analyzer_survives_corrupted_packets(seed in any::<u64>(), flips in proptest::collection::vec((0usize..1316, any::<u8>()), 0..40)) {
            let mut g = TsGenerator::new(TsConfig::default()).expect("config");
            let mut chunk = g.next_chunk(std::time::UNIX_EPOCH + std::time::Duration::from_micros(seed >> 8)).to_vec();
            for (i, v) in flips { chunk[i] = v; }
            let mut a = TsAnalyzer::new();
            a.feed(&chunk, 0);
            a.feed(&chunk[3..], 0);
            let _ = a.report();
        }
    }
}
