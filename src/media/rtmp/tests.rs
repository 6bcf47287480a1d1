//! RTMP decoder tests: fuzz (proptest) of the handshake, chunk, AMF0 and FLV decoders, round-trips through our encoders, and config parsing.

use super::amf0::{self, Amf};
use super::chunk::{self, ChunkDecoder, ChunkEncoder, Limits, Message};
use super::flv::{self, Tag};
use super::RtmpConfig;
use bytes::BytesMut;
use proptest::prelude::*;

fn decode_all(dec: &mut ChunkDecoder, bytes: &[u8], split: usize) -> Result<Vec<Message>, String> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in bytes.chunks(split.max(1)) {
        buf.extend_from_slice(piece);
        while let Some(m) = dec.decode(&mut buf).map_err(|e| e.to_string())? {
            if m.type_id == chunk::msg::SET_CHUNK_SIZE {
                let n =
                    u32::from_be_bytes([m.payload[0], m.payload[1], m.payload[2], m.payload[3]]);
                dec.set_chunk_size(n).map_err(|e| e.to_string())?;
            }
            out.push(m);
        }
    }
    Ok(out)
}

#[test]
fn handshake_echoes_c1_and_refuses_other_versions() {
    let mut c = vec![3u8];
    c.extend((0..1536).map(|i| i as u8));
    let r = chunk::handshake_reply(&c, 42).expect("v3");
    assert_eq!(r.len(), 1 + 2 * 1536);
    assert_eq!(r[0], 3);
    assert_eq!(&r[1 + 1536..], &c[1..]);
    c[0] = 6;
    assert!(chunk::handshake_reply(&c, 0)
        .unwrap_err()
        .contains("version 6"));
    assert!(chunk::handshake_reply(&[3, 1, 2], 0).is_err());
}

#[test]
fn all_header_types_and_extended_timestamps() {
    // Hand-built: fmt 0 with extended timestamp, then fmt 3 continuation
    // (carrying the extended timestamp again), fmt 1, fmt 2, and a fmt 3
    // starting a new message (same delta again).
    let mut b = vec![0x04, 0xFF, 0xFF, 0xFF, 0, 0, 200, 9, 1, 0, 0, 0];
    b.extend_from_slice(&0x0100_0000u32.to_be_bytes());
    b.extend(std::iter::repeat_n(1u8, 128));
    b.push(0xC4);
    b.extend_from_slice(&0x0100_0000u32.to_be_bytes());
    b.extend(std::iter::repeat_n(2u8, 72));
    // fmt 1: delta 40, len 3, type 8.
    b.extend_from_slice(&[0x44, 0, 0, 40, 0, 0, 3, 8, 7, 7, 7]);
    // fmt 2: delta 20.
    b.extend_from_slice(&[0x84, 0, 0, 20, 5, 5, 5]);
    // fmt 3 new message: delta 20 again.
    b.extend_from_slice(&[0xC4, 6, 6, 6]);
    let mut d = ChunkDecoder::new(Limits::default());
    let m = decode_all(&mut d, &b, 7).expect("valid");
    assert_eq!(m.len(), 4);
    assert_eq!(m[0].timestamp, 0x0100_0000);
    assert_eq!(m[0].payload.len(), 200);
    assert_eq!(m[0].stream_id, 1);
    assert_eq!(
        (m[1].timestamp, m[1].type_id, &m[1].payload[..]),
        (0x0100_0000 + 40, 8, &[7u8, 7, 7][..])
    );
    assert_eq!(m[2].timestamp, 0x0100_0000 + 60);
    assert_eq!(m[3].timestamp, 0x0100_0000 + 80);
    assert_eq!(&m[3].payload[..], &[6, 6, 6]);
}

#[test]
fn limits_are_enforced() {
    let limits = Limits {
        max_message: 1000,
        max_streams: 2,
        ..Limits::default()
    };
    // Declared length over the limit: refused before any allocation.
    let mut d = ChunkDecoder::new(limits);
    let mut b = BytesMut::from(&[0x03, 0, 0, 0, 0xFF, 0xFF, 0xFF, 9, 0, 0, 0, 0][..]);
    assert!(d.decode(&mut b).is_err());
    // Compressed header on an unknown chunk stream.
    let mut d = ChunkDecoder::new(limits);
    let mut b = BytesMut::from(&[0xC5][..]);
    assert!(d.decode(&mut b).is_err());
    // A third chunk stream.
    let mut d = ChunkDecoder::new(limits);
    let mut b = BytesMut::new();
    for cs in 3..6u8 {
        b.extend_from_slice(&[cs, 0, 0, 0, 0, 0, 1, 9, 0, 0, 0, 0, 0xAA]);
    }
    assert!(decode_all(&mut d, &b, 100).is_err());
    assert!(ChunkDecoder::new(limits).set_chunk_size(0).is_err());
    assert!(ChunkDecoder::new(limits)
        .set_chunk_size(0x8000_0000)
        .is_err());
}

#[test]
fn config_parses_and_names_bad_keys() {
    let c = crate::config::section_from_str::<RtmpConfig>(
        "rtmp",
        "bind = \"127.0.0.1:1936\"\nmax_connections = 4\nidle_timeout = \"5s\"\n",
    )
    .expect("valid");
    assert_eq!(c.bind.port(), 1936);
    assert_eq!(c.max_connections, 4);
    assert!(c.enabled);
    for (text, key) in [
        ("bind = \"nope\"", "rtmp.bind"),
        ("max_connections = 0", "rtmp.max_connections"),
        ("foo = 1", "rtmp.foo"),
    ] {
        let e = crate::config::errors_of(&format!("[rtmp]\n{text}\n"));
        assert!(e.iter().any(|e| e.key == key), "{key}: {e:?}");
    }
    assert_eq!(
        crate::config::section_from_str::<RtmpConfig>("rtmp", "").expect("valid"),
        RtmpConfig::default()
    );
}

#[test]
fn flv_avc_and_aac() {
    // AVC sequence header: 1 SPS, 1 PPS, 4-byte lengths.
    let seq = [
        0x17, 0, 0, 0, 0, 1, 0x64, 0, 0x1F, 0xFF, 0xE1, 0, 3, 0x67, 0x64, 0x00, 1, 0, 2, 0x68, 0xEE,
    ];
    assert_eq!(
        flv::video(&seq, 4),
        Ok(Tag::AvcConfig {
            sps: vec![vec![0x67, 0x64, 0x00]],
            pps: vec![vec![0x68, 0xEE]],
            nalu_len: 4
        })
    );
    // Keyframe, cts = -1 (0xFFFFFF), two NALUs.
    let f = [
        0x17, 1, 0xFF, 0xFF, 0xFF, 0, 0, 0, 2, 0x65, 1, 0, 0, 0, 1, 0x06,
    ];
    assert_eq!(
        flv::video(&f, 4),
        Ok(Tag::Video {
            keyframe: true,
            cts: -1,
            annexb: vec![0, 0, 0, 1, 0x65, 1, 0, 0, 0, 1, 0x06]
        })
    );
    // HEVC (legacy id 12) and enhanced RTMP are refused with a reason.
    assert!(flv::video(&[0x1C, 1, 0, 0, 0], 4)
        .unwrap_err()
        .0
        .contains("HEVC"));
    assert!(flv::video(&[0x90, b'h', b'v', b'c', b'1'], 4)
        .unwrap_err()
        .0
        .contains("hvc1"));
    assert!(flv::audio(&[0x2F, 1, 2]).unwrap_err().0.contains("MP3"));
    assert_eq!(
        flv::audio(&[0xAF, 0, 0x11, 0x90]),
        Ok(Tag::AacConfig(vec![0x11, 0x90]))
    );
    assert_eq!(flv::audio(&[0xAF, 1, 9, 9]), Ok(Tag::Audio(vec![9, 9])));
    // Empty or unusable sequence headers (ffmpeg relays send an empty AAC
    // one first) are not fatal: the session waits for a usable one.
    assert!(matches!(flv::audio(&[0xAF, 0]), Ok(Tag::BadConfig(_))));
    assert!(matches!(
        flv::video(&[0x17, 0, 0, 0, 0], 4),
        Ok(Tag::BadConfig(_))
    ));
    // A NALU length past the end is an error, not a panic.
    assert!(flv::video(&[0x27, 1, 0, 0, 0, 0, 0, 9, 9, 1], 4).is_err());
}

fn arb_amf() -> impl Strategy<Value = Amf> {
    let leaf = prop_oneof![
        any::<f64>()
            .prop_filter("NaN != NaN", |f| !f.is_nan())
            .prop_map(Amf::Number),
        any::<bool>().prop_map(Amf::Bool),
        ".{0,20}".prop_map(Amf::String),
        Just(Amf::Null),
        Just(Amf::Undefined),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(("[a-z]{1,8}", inner.clone()), 0..4).prop_map(Amf::Object),
            proptest::collection::vec(inner, 0..4).prop_map(Amf::Array),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn handshake_never_panics(b in proptest::collection::vec(any::<u8>(), 0..1600)) {
        let _ = chunk::handshake_reply(&b, 1);
    }

    /// Arbitrary bytes, split arbitrarily, never panic the chunk decoder
    /// nor make it buffer past its limits.
    #[test]
    fn chunk_decoder_never_panics(b in proptest::collection::vec(any::<u8>(), 0..4096),
                                  split in 1usize..300) {
        let limits = Limits { max_message: 4096, max_buffered: 8192, max_chunk_size: 1 << 16, max_streams: 8 };
        let mut d = ChunkDecoder::new(limits);
        let _ = decode_all(&mut d, &b, split);
    }

    /// What our encoder writes (any chunk size, any timestamps, any
    /// split of the byte stream) decodes to the same messages.
    #[test]
    fn chunk_roundtrip(msgs in proptest::collection::vec(
                           (2u32..400, any::<u32>(), 1u8..30, 0u32..3,
                            proptest::collection::vec(any::<u8>(), 0..3000)), 1..8),
                       chunk_size in 1usize..5000, split in 1usize..2000) {
        let mut enc = ChunkEncoder::new();
        let mut bytes = BytesMut::new();
        // Announce the chunk size first, as a peer does.
        enc.write(&mut bytes, &chunk::control(chunk::msg::SET_CHUNK_SIZE,
                                              (chunk_size as u32).to_be_bytes().to_vec()));
        enc.chunk_size = chunk_size;
        let mut want = Vec::new();
        for (csid, ts, ty, sid, payload) in msgs {
            // Type 1 is Set Chunk Size: keep the stream's chunk size fixed.
            let ty = if ty == 1 { 9 } else { ty };
            let m = Message { csid, timestamp: ts, type_id: ty, stream_id: sid, payload: payload.into() };
            enc.write(&mut bytes, &m);
            want.push(m);
        }
        let mut d = ChunkDecoder::new(Limits::default());
        let got = decode_all(&mut d, &bytes, split).map_err(TestCaseError::fail)?;
        prop_assert_eq!(&got[1..], &want[..]);
    }

    #[test]
    fn amf0_decoder_never_panics(b in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = amf0::decode_all(&b);
    }

    #[test]
    fn amf0_roundtrip(vs in proptest::collection::vec(arb_amf(), 0..5)) {
        let b = amf0::encode_all(&vs);
        prop_assert_eq!(amf0::decode_all(&b), Ok(vs));
    }

    #[test]
    fn flv_never_panics(b in proptest::collection::vec(any::<u8>(), 0..256), n in 0u8..6) {
        let _ = flv::video(&b, n);
        let _ = flv::audio(&b);
    }

    /// Length-prefixed NALUs come back as the same NALUs in Annex B.
    #[test]
    fn avcc_to_annexb_roundtrip(nals in proptest::collection::vec(
                                    proptest::collection::vec(any::<u8>(), 1..300), 0..6),
                                size in prop_oneof![Just(2u8), Just(4u8)]) {
        let mut avcc = Vec::new();
        let mut want = Vec::new();
        for n in &nals {
            let l = n.len() as u32;
            avcc.extend_from_slice(&l.to_be_bytes()[4 - usize::from(size)..]);
            avcc.extend_from_slice(n);
            want.extend_from_slice(&[0, 0, 0, 1]);
            want.extend_from_slice(n);
        }
        prop_assert_eq!(flv::length_to_annexb(&avcc, size), Ok(want));
    }
}
