//! Supervised ffmpeg child processes: spawn, progress parsing, restart with backoff, reaping (transcode and RTMP push).
