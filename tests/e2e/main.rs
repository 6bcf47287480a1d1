//! The one end-to-end test binary: every module starts real servers on 127.0.0.1:0 and talks to them over real sockets.

mod auth;
mod bacnet;
mod datadir;
mod decoders;
mod derived;
mod engine;
mod haystack;
mod http;
mod listeners;
mod live;
mod modbus;
mod persist;
mod rates;
mod recording;
mod route_points;
mod routes_api;
mod rtmp;
mod rtsp;
mod secure;
mod srt_log;
mod status_live;
mod telemetry;
mod transcode;
mod truth;
mod util;
