//! rtsp-camera: a simulated IP camera (RTSP 1.0, H.264 + AAC over RTP, TCP-interleaved or UDP, optional Digest auth) for castpoint's RTSP inputs and benchmarks.

use castpoint_sim::rtsp_camera::{Camera, CameraConfig};
use castpoint_sim::util::parse_bitrate;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Simulated RTSP IP camera serving the tsgen H.264 (+AAC) picture")]
struct Args {
    /// Listen address (port 0 = ephemeral; the chosen URL is printed).
    #[arg(long, default_value = "127.0.0.1:8554")]
    bind: std::net::SocketAddr,
    /// Stream path: /PATH is H.264 + AAC, /PATH.ts is one MP2T track.
    #[arg(long, default_value = "stream")]
    path: String,
    /// Video bit rate (pictures padded with filler NAL units).
    #[arg(long, default_value = "2M", value_parser = parse_bitrate)]
    bitrate: u64,
    #[arg(long, default_value_t = 25)]
    fps: u32,
    #[arg(long, default_value_t = 25)]
    gop: u32,
    #[arg(long)]
    no_audio: bool,
    /// Require Digest authentication with this user (and --password).
    #[arg(long, env = "RTSP_CAMERA_USER")]
    user: Option<String>,
    #[arg(long, env = "RTSP_CAMERA_PASSWORD", hide_env_values = true)]
    password: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let cam = Camera::start(CameraConfig {
        bind: a.bind,
        path: a.path.clone(),
        fps: a.fps,
        gop: a.gop,
        bitrate: a.bitrate,
        audio: !a.no_audio,
        user: a.user,
        password: a.password,
        ..CameraConfig::default()
    })
    .await?;
    println!("listening {}", cam.url(&a.path));
    tokio::signal::ctrl_c().await?;
    cam.stop();
    Ok(())
}
