//! castpoint's decoders of untrusted bytes, compiled from castpoint's own source files for the fuzz targets.
//!
//! Why `#[path]` and not a dependency on the castpoint crate: these modules
//! are sans-IO and need only std, bytes, base64, serde_json and libhaystack,
//! while the castpoint crate pulls in tokio, axum, SQLite, rustls, BACnet and
//! NVML; instrumenting all of that for every CI run would cost many minutes
//! on a 2-core runner. The files are the same ones castpoint builds, so a
//! target fuzzes exactly the shipped code; if one of them grows a
//! dependency on the rest of castpoint, this crate stops compiling and the
//! CI fuzz step fails loudly rather than silently fuzzing something else.
#![allow(dead_code)]

#[path = "../../src/media/rtmp/amf0.rs"]
pub mod amf0;
/// The BACnet B/IP filter's classifier (`protocols/bacnet/classify.rs`):
/// every datagram the device receives passes it before the stack.
#[path = "../../src/protocols/bacnet/classify.rs"]
pub mod bacnet_classify;
#[path = "../../src/media/rtmp/chunk.rs"]
pub mod chunk;
/// Zinc / filter nesting pre-checks (`protocols/haystack/depth.rs`).
#[path = "../../src/protocols/haystack/depth.rs"]
pub mod depth;
/// Haystack request decoding and grid encoders
/// (`protocols/haystack/encoding.rs`; its `super::depth` is the module above).
#[path = "../../src/protocols/haystack/encoding.rs"]
pub mod encoding;
#[path = "../../src/protocols/modbus/frame.rs"]
pub mod modbus_frame;
#[path = "../../src/media/rtsp/msg.rs"]
pub mod msg;
#[path = "../../src/media/rtsp/rtp.rs"]
pub mod rtp;
#[path = "../../src/media/rtsp/sdp.rs"]
pub mod sdp;
/// Sparkplug B payloads (`protocols/mqtt/spb.rs`, NCMD/DCMD from the broker).
#[path = "../../src/protocols/mqtt/spb.rs"]
pub mod spb;
#[path = "../../src/mpegts/ts.rs"]
pub mod ts;

/// Runs `f` on a thread with a 1 MiB stack (half a tokio worker's), so a
/// recursion that escapes the nesting bounds overflows here, visibly, even
/// on inputs shorter than the fuzzer's length limit.
pub fn small_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(1 << 20)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("decoder panicked");
}

/// Encodes a decoded request grid in every response format (exercises the
/// encoders on hostile values, as an op echoing them would).
pub fn encode_all(g: encoding::ReqGrid) {
    let out = encoding::Grid::from_rows(g.meta, g.rows);
    for f in [
        encoding::Format::Zinc,
        encoding::Format::Json,
        encoding::Format::JsonV3,
        encoding::Format::Csv,
    ] {
        let _ = f.encode(&out);
    }
}
