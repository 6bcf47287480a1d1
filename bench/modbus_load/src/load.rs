//! Closed-loop Modbus TCP load generator: N connections, each sending one FC04 read and waiting for its answer, counting answers per second.
//!
//! Usage: modbus-load ADDR CONNECTIONS SECONDS [QTY] [UNIT]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn arg<T: std::str::FromStr>(i: usize, default: Option<T>) -> T {
    match std::env::args().nth(i).map(|s| s.parse::<T>()) {
        Some(Ok(v)) => v,
        _ => default.unwrap_or_else(|| {
            eprintln!("usage: modbus-load ADDR CONNECTIONS SECONDS [QTY] [UNIT]");
            std::process::exit(2)
        }),
    }
}

async fn client(
    addr: SocketAddr,
    qty: u16,
    unit: u8,
    count: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let mut req = [0u8, 0, 0, 0, 0, 6, unit, 0x04, 0, 0, 0, 0];
    req[10..12].copy_from_slice(&qty.to_be_bytes());
    let mut resp = vec![0u8; 9 + 2 * usize::from(qty)];
    let mut tid: u16 = 0;
    while !stop.load(Ordering::Relaxed) {
        tid = tid.wrapping_add(1);
        req[0..2].copy_from_slice(&tid.to_be_bytes());
        s.write_all(&req).await?;
        s.read_exact(&mut resp[..9]).await?;
        if resp[7] != 0x04 {
            errors.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        s.read_exact(&mut resp[9..]).await?;
        if resp[0..2] != tid.to_be_bytes() || usize::from(resp[8]) != 2 * usize::from(qty) {
            errors.fetch_add(1, Ordering::Relaxed);
        }
        count.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let addr: SocketAddr = arg(1, None);
    let conns: usize = arg(2, None);
    let secs: f64 = arg(3, None);
    let qty: u16 = arg(4, Some(10));
    let unit: u8 = arg(5, Some(1));
    let count = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..conns {
        tasks.push(tokio::spawn(client(
            addr,
            qty,
            unit,
            count.clone(),
            errors.clone(),
            stop.clone(),
        )));
    }
    // Warm-up (connections, caches, CPU frequency), then the measured window.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c0 = count.load(Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let n = count.load(Ordering::Relaxed) - c0;
    let dt = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut failed = 0;
    for t in tasks {
        if !matches!(t.await, Ok(Ok(()))) {
            failed += 1;
        }
    }
    println!(
        "rps {:.0} requests {n} seconds {dt:.3} errors {} failed_connections {failed}",
        n as f64 / dt,
        errors.load(Ordering::Relaxed)
    );
}
