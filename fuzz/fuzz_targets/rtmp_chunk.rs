//! Fuzz target: RTMP handshake and chunk stream (chunk::ChunkDecoder with the default limits), bytes fed in fuzzer-chosen pieces.
#![no_main]

use libfuzzer_sys::fuzz_target;

use bytes::BytesMut;
use castpoint_fuzz::chunk::{handshake_reply, ChunkDecoder, Limits};

fuzz_target!(|data: &[u8]| {
    let _ = handshake_reply(data, 0);
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let mut d = ChunkDecoder::new(Limits::default());
    let mut buf = BytesMut::new();
    // First byte: the piece size, so messages straddle reads as on a socket.
    for piece in rest.chunks(usize::from(split).max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match d.decode(&mut buf) {
                Ok(Some(m)) => {
                    // Control messages the session acts on.
                    if m.type_id == 1 && m.payload.len() >= 4 {
                        let n = u32::from_be_bytes([
                            m.payload[0],
                            m.payload[1],
                            m.payload[2],
                            m.payload[3],
                        ]);
                        let _ = d.set_chunk_size(n);
                    }
                    if m.type_id == 2 && m.payload.len() >= 4 {
                        let n = u32::from_be_bytes([
                            m.payload[0],
                            m.payload[1],
                            m.payload[2],
                            m.payload[3],
                        ]);
                        d.abort(n);
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
