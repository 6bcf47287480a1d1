//! RTMP ingest: the RTMP server OBS-like encoders publish to (`rtmp://HOST:1935/live/KEY`), remuxed to MPEG-TS for any route.
