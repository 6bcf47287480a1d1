//! The `castpoint` command line: run the server, check a config, print the point table, export protocol maps.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use castpoint::app::App;
use castpoint::config::Config;

#[derive(Parser)]
#[command(
    name = "castpoint",
    version,
    about = "Streaming router + BACnet/Modbus/Haystack gateway"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server (embedded default configuration unless --config).
    Run {
        #[arg(long)]
        config: Option<PathBuf>,
        /// HTTP bind address, overriding the config (e.g. 127.0.0.1:0).
        #[arg(long)]
        http: Option<SocketAddr>,
        /// BACnet/IP bind address, overriding the config.
        #[arg(long)]
        bacnet: Option<SocketAddr>,
        /// Modbus TCP bind address, overriding the config.
        #[arg(long)]
        modbus: Option<SocketAddr>,
        /// Data directory, overriding the config.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Validate a configuration and its point and mapping files.
    CheckConfig {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print the point table with every protocol address.
    Points {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Export a protocol point list for integrators.
    Export {
        #[command(subcommand)]
        what: Export,
    },
}

#[derive(Subcommand)]
enum Export {
    /// BACnet EDE 2.3 CSV: to stdout, or `<dir>/<device>_EDE.csv` and
    /// `<dir>/<device>_StateTexts.csv` with --out.
    Ede {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn load(config: &Option<PathBuf>) -> Result<Config, ExitCode> {
    let r = match config {
        Some(p) => Config::load(p),
        None => Config::embedded(),
    };
    r.map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::CheckConfig { config } => match load(&config) {
            Ok(c) => {
                println!(
                    "{}: ok ({} points, {} BACnet objects, {} Modbus registers, {} HTTP endpoints)",
                    c.origin,
                    c.points.len(),
                    c.maps.bacnet.objects.len(),
                    c.maps.modbus.registers.len(),
                    c.maps.http.endpoints.len()
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Cmd::Points { config } => match load(&config) {
            Ok(c) => {
                print!("{}", castpoint::config::table::point_table(&c));
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Cmd::Export {
            what: Export::Ede { config, out },
        } => match load(&config) {
            Ok(c) => export_ede(&c, out),
            Err(code) => code,
        },
        Cmd::Run {
            config,
            http,
            bacnet,
            modbus,
            data_dir,
        } => {
            let mut cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            if let Some(a) = http {
                cfg.server.http.bind = a;
            }
            if let Some(a) = bacnet {
                cfg.server.bacnet.bind = a;
            }
            if let Some(a) = modbus {
                cfg.server.modbus.bind = a;
            }
            if let Some(d) = data_dir {
                cfg.server.data_dir = d;
            }
            run(cfg)
        }
    }
}

fn export_ede(c: &Config, out: Option<PathBuf>) -> ExitCode {
    let stamp = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let (ede, states) = castpoint::protocols::bacnet::ede::export(c, &stamp);
    let Some(dir) = out else {
        print!("{ede}");
        return ExitCode::SUCCESS;
    };
    let base = c.server.bacnet.device_name.replace(['/', '\\'], "_");
    for (name, text) in [
        (format!("{base}_EDE.csv"), &ede),
        (format!("{base}_StateTexts.csv"), &states),
    ] {
        let path = dir.join(name);
        if let Err(e) = std::fs::write(&path, text) {
            eprintln!("{}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("{}", path.display());
    }
    ExitCode::SUCCESS
}

fn run(cfg: Config) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let app = match App::start(cfg).await {
            Ok(a) => a,
            Err(e) => {
                eprintln!("cannot start: {e:#}");
                return ExitCode::FAILURE;
            }
        };
        // One machine-readable line per listener: tests and scripts that
        // bind port 0 read the real ports from stdout.
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        for (name, a) in [
            ("http", app.addrs.http),
            ("bacnet", app.addrs.bacnet),
            ("modbus", app.addrs.modbus),
        ] {
            if let Some(a) = a {
                let _ = writeln!(out, "listening {name} {a}");
            }
        }
        let _ = writeln!(out, "ready");
        let _ = out.flush();
        drop(out);
        shutdown_signal().await;
        tracing::info!("shutting down");
        app.stop().await;
        ExitCode::SUCCESS
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
