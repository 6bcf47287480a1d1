//! Native MPEG-TS muxer: H.264 (Annex B) and AAC (ADTS) access units in, whole 188-byte TS packets out.
