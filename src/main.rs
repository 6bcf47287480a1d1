//! The `castpoint` command line: run the server, check a config, print the point table, export protocol maps.

#![deny(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use castpoint::app::App;
use castpoint::config::Config;

// mimalloc instead of glibc's malloc: the protocol stacks allocate per
// request (the BACnet stack per segment too), and a whole-device RPM spent
// about a fifth of its time allocating and copying (Cargo.toml says what
// was measured; why huge pages are off is there too). Only the binary sets
// it: the lib's unit tests and the in-process e2e tests keep the system
// allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "castpoint",
    // `castpoint --version`: the package version and the git commit it was
    // built from (build.rs), the first thing a bug report needs.
    version = castpoint::VERSION,
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
        /// RTMP ingest bind address, overriding `[rtmp] bind`.
        #[arg(long)]
        rtmp: Option<SocketAddr>,
        /// Data directory, overriding the config.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Log line format on stderr: `text` (colour only on a terminal,
        /// never with NO_COLOR) or `json` (one object per line, for
        /// journald/Loki/ELK). Levels and filters come from RUST_LOG.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Print a summary of a running server (routes, outputs, alarms, points
    /// out of order) read from its REST API.
    Status {
        /// The server's HTTP listener.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// A JWT or API key, when the server has users (default:
        /// CASTPOINT_TOKEN).
        #[arg(long)]
        token: Option<String>,
    },
    /// Write a shell completion script to stdout.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man page (roff) to stdout.
    Man,
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
    /// Print a `[[haystack.user]]` entry (salted SCRAM keys) for castpoint.toml;
    /// the password is read from CASTPOINT_PASSWORD or the first line of stdin.
    HaystackUser {
        name: String,
        #[arg(long, default_value = "operator")]
        role: String,
        #[arg(long, default_value_t = 10_000)]
        iterations: u32,
    },
    /// Manage the users of the REST API and Haystack (one shared store).
    User {
        #[command(subcommand)]
        what: UserCmd,
    },
    /// Manage API keys: long-lived, named, role-scoped REST credentials
    /// (`Authorization: Bearer <key>` or `X-API-Key: <key>`).
    Apikey {
        #[command(subcommand)]
        what: ApikeyCmd,
    },
    /// Write a protocol map document to stdout.
    Export {
        #[command(subcommand)]
        what: Export,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Where `user` and `apikey` find the store: the config's data dir, or
/// `--data-dir`.
#[derive(clap::Args, Clone)]
struct StoreArgs {
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum UserCmd {
    /// Add or replace a user; the password is read from stdin (first line).
    Add {
        name: String,
        /// viewer, operator or admin.
        #[arg(long, value_parser = ["viewer", "operator", "admin"])]
        role: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Remove a user (their tokens stop working at once).
    Remove {
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List users and roles.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
enum ApikeyCmd {
    /// Create a key and print it once (only its SHA-256 is stored).
    Add {
        name: String,
        /// viewer, operator or admin.
        #[arg(long, value_parser = ["viewer", "operator", "admin"])]
        role: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke a key (refused at once by the running server).
    Remove {
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List keys: name, role, creation time (never the key).
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
enum Export {
    /// The Modbus register map (docs/modbus-map.md is this, as Markdown).
    ModbusMap {
        #[arg(long)]
        config: Option<PathBuf>,
        /// md (Markdown) or csv.
        #[arg(long, default_value = "md", value_parser = ["md", "csv"])]
        format: String,
    },
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
    castpoint::api::live::mark_start();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::CheckConfig { config } => check_config(&config),
        Cmd::Points { config } => match load(&config) {
            Ok(c) => {
                print!("{}", castpoint::config::table::point_table(&c));
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Cmd::Export { what } => export_cmd(what),
        Cmd::HaystackUser {
            name,
            role,
            iterations,
        } => match castpoint::protocols::haystack::user_entry_cli(&name, &role, iterations) {
            Ok(entry) => {
                print!("{entry}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Cmd::User { what } => user_cmd(what),
        Cmd::Apikey { what } => apikey_cmd(what),
        Cmd::Run {
            config,
            http,
            bacnet,
            modbus,
            rtmp,
            data_dir,
            log_format,
        } => {
            let binds = Binds {
                http,
                bacnet,
                modbus,
                rtmp,
            };
            match run_config(&config, binds, data_dir) {
                Ok(cfg) => run(cfg, log_format),
                Err(code) => code,
            }
        }
        Cmd::Status { url, token } => status_cmd(&url, token),
        Cmd::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            // Into memory first: clap_complete panics when its writer
            // fails, and `castpoint completions bash | head` closes stdout.
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut cmd, "castpoint", &mut buf);
            emit(&buf)
        }
        Cmd::Man => man(),
    }
}

/// `castpoint check-config`: loads the configuration and says what it holds.
fn check_config(config: &Option<PathBuf>) -> ExitCode {
    match load(config) {
        Ok(c) => {
            println!(
                "{}: ok ({} points, {} BACnet objects + {} Trend Logs, {} Modbus registers, {} HTTP endpoints)",
                c.origin,
                c.points.len(),
                c.maps.bacnet.objects.len(),
                c.maps.bacnet.trend_logs.len(),
                c.maps.modbus.registers.len(),
                c.maps.http.endpoints.len()
            );
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn export_cmd(what: Export) -> ExitCode {
    match what {
        Export::ModbusMap { config, format } => match load(&config) {
            Ok(c) => {
                use castpoint::protocols::modbus::{export_csv, export_markdown};
                let f = if format == "csv" {
                    export_csv
                } else {
                    export_markdown
                };
                // With the route blocks (issue 20).
                print!(
                    "{}",
                    f(&c.points, &c.maps.modbus, c.route_template.as_ref())
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Export::Ede { config, out } => match load(&config) {
            Ok(c) => export_ede(&c, out),
            Err(code) => code,
        },
    }
}

/// The listener addresses `castpoint run` may override.
struct Binds {
    http: Option<SocketAddr>,
    bacnet: Option<SocketAddr>,
    modbus: Option<SocketAddr>,
    rtmp: Option<SocketAddr>,
}

/// The configuration `castpoint run` starts with: the file (or the
/// embedded one) with the command line's overrides.
fn run_config(
    config: &Option<PathBuf>,
    binds: Binds,
    data_dir: Option<PathBuf>,
) -> Result<Config, ExitCode> {
    let mut cfg = load(config)?;
    if let Some(a) = binds.http {
        cfg.server.http.bind = a;
    }
    if let Some(a) = binds.bacnet {
        cfg.server.bacnet.bind = a;
    }
    if let Some(a) = binds.modbus {
        cfg.server.modbus.bind = a;
    }
    if let Some(a) = binds.rtmp {
        cfg.server.rtmp.bind = a;
    }
    if let Some(d) = data_dir {
        cfg.server.data_dir = d;
    }
    // The overrides go through the file's bind check too.
    if let Err(e) = cfg.check_binds() {
        eprintln!("{e}");
        return Err(ExitCode::from(2));
    }
    Ok(cfg)
}

fn status_cmd(url: &str, token: Option<String>) -> ExitCode {
    let token = token.or_else(|| std::env::var("CASTPOINT_TOKEN").ok());
    match castpoint::statuscmd::Target::parse(url, token)
        .and_then(|t| castpoint::statuscmd::run(&t))
    {
        Ok(text) => emit(text.as_bytes()),
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn man() -> ExitCode {
    let cmd = <Cli as clap::CommandFactory>::command();
    let mut buf = Vec::new();
    match clap_mangen::Man::new(cmd).render(&mut buf) {
        Ok(()) => emit(&buf),
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes a generated document to stdout; a closed pipe (`| head`) is not
/// an error worth a panic, any other write failure is reported.
fn emit(bytes: &[u8]) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stdout: {e}");
            ExitCode::FAILURE
        }
    }
}

fn user_cmd(what: UserCmd) -> ExitCode {
    let StoreArgs { config, data_dir } = match &what {
        UserCmd::Add { store, .. } | UserCmd::Remove { store, .. } | UserCmd::List { store } => {
            store.clone()
        }
    };
    let cfg = match load(&config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let dir = data_dir.unwrap_or(cfg.server.data_dir);
    let opts = castpoint::persist::StoreOptions {
        allow_insecure_permissions: cfg.server.allow_insecure_permissions,
    };
    let users = castpoint::persist::Store::open_with(&dir, 100_000, &opts)
        .map(std::sync::Arc::new)
        .and_then(|s| castpoint::auth::Users::new(s, std::time::Duration::from_secs(3600)));
    let users = match users {
        Ok(u) => u,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::FAILURE;
        }
    };
    let r = match what {
        UserCmd::Add { name, role, .. } => {
            let mut pw = String::new();
            if let Err(e) = std::io::stdin().read_line(&mut pw) {
                eprintln!("cannot read the password from stdin: {e}");
                return ExitCode::FAILURE;
            }
            let pw = pw.trim_end_matches(['\r', '\n']);
            let role = castpoint::auth::Role::parse(&role).unwrap_or(castpoint::auth::Role::Viewer);
            users
                .add(&name, role, pw)
                .map(|()| println!("user {name} ({}) saved in {}", role.as_str(), dir.display()))
        }
        UserCmd::Remove { name, .. } => users.remove(&name).and_then(|found| {
            if found {
                println!("user {name} removed");
                Ok(())
            } else {
                Err(anyhow::anyhow!("no user {name}"))
            }
        }),
        UserCmd::List { .. } => users.list().map(|l| {
            for (n, r) in l {
                println!("{n}\t{r}");
            }
        }),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::from(2)
        }
    }
}

/// Opens the shared user store of a config's (or an explicit) data dir.
fn open_users(
    config: &Option<PathBuf>,
    data_dir: Option<PathBuf>,
) -> Result<(castpoint::auth::Users, PathBuf), ExitCode> {
    let cfg = load(config)?;
    let dir = data_dir.unwrap_or(cfg.server.data_dir);
    castpoint::persist::Store::open(&dir, 100_000)
        .map(std::sync::Arc::new)
        .and_then(|s| castpoint::auth::Users::new(s, std::time::Duration::from_secs(3600)))
        .map(|u| (u, dir))
        .map_err(|e| {
            eprintln!("{e:#}");
            ExitCode::FAILURE
        })
}

fn apikey_cmd(what: ApikeyCmd) -> ExitCode {
    let StoreArgs { config, data_dir } = match &what {
        ApikeyCmd::Add { store, .. }
        | ApikeyCmd::Remove { store, .. }
        | ApikeyCmd::List { store } => store.clone(),
    };
    let (users, dir) = match open_users(&config, data_dir) {
        Ok(u) => u,
        Err(code) => return code,
    };
    let r = match what {
        ApikeyCmd::Add { name, role, .. } => {
            let role = castpoint::auth::Role::parse(&role).unwrap_or(castpoint::auth::Role::Viewer);
            users.apikey_add(&name, role).map(|key| {
                // The key alone on stdout, so scripts can capture it.
                println!("{key}");
                eprintln!(
                    "API key {name} ({}) saved in {}; it is shown only this once",
                    role.as_str(),
                    dir.display()
                );
            })
        }
        ApikeyCmd::Remove { name, .. } => users.apikey_remove(&name).and_then(|found| {
            if found {
                println!("API key {name} removed");
                Ok(())
            } else {
                Err(anyhow::anyhow!("no API key {name}"))
            }
        }),
        ApikeyCmd::List { .. } => users.apikey_list().map(|l| {
            for k in l {
                println!("{}\t{}\t{}", k.name, k.role, k.created);
            }
        }),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::from(2)
        }
    }
}

fn export_ede(c: &Config, out: Option<PathBuf>) -> ExitCode {
    let stamp = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let (ede, states) = castpoint::exports::ede_of_config(c, &stamp);
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

fn run(cfg: Config, log_format: LogFormat) -> ExitCode {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match log_format {
        // One JSON object per line (timestamp, level, target, fields):
        // what log shippers parse without a regex; never coloured.
        LogFormat::Json => logs.json().with_ansi(false).init(),
        // Colour codes only for a person at a terminal: journald, files and
        // pipes get plain text, and NO_COLOR (no-color.org) turns them off.
        LogFormat::Text => logs
            .with_ansi(log_colour(
                std::io::IsTerminal::is_terminal(&std::io::stderr()),
                std::env::var_os("NO_COLOR").as_deref(),
            ))
            .init(),
    }
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
        // Handlers first: a SIGTERM that comes right after `ready` (systemd
        // stopping a unit that just started, a test) must shut down
        // cleanly, not kill by the default action. Installed after `ready`
        // before, it lost that race (`shutting down` never logged).
        let signals = Signals::install();
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
            ("rtmp", app.addrs.rtmp),
        ] {
            if let Some(a) = a {
                let _ = writeln!(out, "listening {name} {a}");
            }
        }
        // `ready` means every configured part is up. A part that failed
        // (a port in use) does not stop the others, but the process says
        // so instead: `degraded: <part>: <error>; ...` (docs/configuration.md).
        if app.faults.is_empty() {
            let _ = writeln!(out, "ready");
        } else {
            let _ = writeln!(out, "degraded: {}", app.faults.join("; "));
        }
        let _ = out.flush();
        drop(out);
        signals.wait().await;
        tracing::info!("shutting down");
        app.stop().await;
        ExitCode::SUCCESS
    })
}

/// Whether log lines may carry ANSI colour: stderr is a terminal and
/// NO_COLOR is unset or empty (an empty NO_COLOR does not count, per
/// no-color.org).
fn log_colour(tty: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    tty && no_color.is_none_or(|v| v.is_empty())
}

/// SIGINT (Ctrl-C) and SIGTERM (stop), and SIGHUP (reload the HTTPS
/// certificates), listened to from `install` on.
///
/// All three are installed before `App::start`: a handler installed later
/// (SIGHUP used to be, by the HTTP listener's own task) loses the race with
/// a signal sent right after `ready`, and SIGHUP's default action ends the
/// process (`test_sighup_without_https_does_not_stop_castpoint` failed in CI
/// that way).
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Signals {
                term: signal(SignalKind::terminate()).ok(),
                int: signal(SignalKind::interrupt()).ok(),
                hup: signal(SignalKind::hangup()).ok(),
            }
        }
        #[cfg(not(unix))]
        {
            Signals {}
        }
    }

    /// Reloads the certificates on each SIGHUP; returns at the first SIGTERM
    /// or SIGINT.
    async fn wait(self) {
        #[cfg(unix)]
        {
            async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        if s.recv().await.is_none() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending().await,
                }
            }
            let (mut term, mut int, mut hup) = (self.term, self.int, self.hup);
            if term.is_none() && int.is_none() {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
            loop {
                tokio::select! {
                    _ = recv(&mut term) => return,
                    _ = recv(&mut int) => return,
                    _ = recv(&mut hup) => {
                        castpoint::httpd::reload_all();
                    }
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::log_colour;
    use std::ffi::OsStr;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(log_colour(true, None));
        assert!(!log_colour(false, None), "piped or journald: plain text");
        assert!(!log_colour(true, Some(OsStr::new("1"))));
        // no-color.org: an empty NO_COLOR does not count.
        assert!(log_colour(true, Some(OsStr::new(""))));
    }
}
