//! Media work beyond TS passthrough: supervised ffmpeg children (transcode, RTMP push), the native TS muxer, RTMP ingest and RTSP pull.
//!
//! The engine (`src/engine`) owns routes and fan-out; it calls into this
//! module for inputs and outputs that need more than moving TS packets.

pub mod ffmpeg;
pub mod rtmp;
pub mod rtsp;
pub mod tsmux;
