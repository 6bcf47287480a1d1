//! The data dir at start-up: private modes, refusal of readable ones, of a 0-byte or damaged database, and of a second server on the same data dir.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use castpoint::app::App;
use castpoint::config::Config;
use castpoint::persist::Store;
use castpoint::points::Source;

use crate::util::TestApp;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

fn chmod(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod");
}

/// A loopback config whose data dir is `dir`.
fn config(dir: &Path) -> Config {
    let mut cfg = Config::embedded().expect("embedded");
    crate::util::loopback(&mut cfg);
    cfg.server.data_dir = dir.to_path_buf();
    cfg
}

async fn start_err(cfg: Config) -> String {
    match App::start(cfg).await {
        Ok(app) => {
            app.stop().await;
            panic!("castpoint started");
        }
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_data_dir_and_database_files_are_private_whatever_the_umask() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("a").join("data");
    // A umask that would make files world-readable (and writable): the
    // modes must not depend on it. (Restored below; the umask is
    // process-wide, and any other test creating files meanwhile only gets
    // wider modes it does not check.)
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o000));
    let app = App::start(config(&dir)).await;
    nix::sys::stat::umask(old);
    let app = app.expect("starts");
    // A write, so the WAL has content and the shared-memory index exists.
    let store = app.store.clone();
    store
        .record_event("test", None, &Source::internal(), "ok", "")
        .expect("event");
    assert_eq!(mode(&dir), 0o700, "data dir");
    for f in ["castpoint.db", "castpoint.db-wal", "castpoint.db-shm"] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
    drop(store);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readable_data_dir_or_database_is_made_private_or_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("data");
    // An install from before the check: SQLite created the files under
    // the umask (0644) in a 0755 dir, both owned by this user.
    drop(Store::open(&dir, 10).expect("store"));
    let db = dir.join("castpoint.db");
    chmod(&dir, 0o755);
    chmod(&db, 0o644);
    let app = App::start(config(&dir)).await.expect("starts");
    assert_eq!(mode(&dir), 0o700, "data dir made private");
    assert_eq!(mode(&db), 0o600, "database made private");
    app.stop().await;

    // Files of another user are not castpoint's to change: refused, with
    // the fix. (Needs root to hand a file to another user.)
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED the other-owner half: not root, cannot chown");
        return;
    }
    let nobody = Some(65534);
    chmod(&dir, 0o755);
    std::os::unix::fs::chown(&dir, nobody, nobody).expect("chown dir");
    let e = start_err(config(&dir)).await;
    assert!(
        e.contains(&format!("chmod 700 '{}'", dir.display())) && e.contains("mode 0755"),
        "{e}"
    );
    assert!(e.contains("allow_insecure_permissions"), "{e}");
    assert_eq!(mode(&dir), 0o755, "another user's dir left alone");
    std::os::unix::fs::chown(&dir, Some(0), Some(0)).expect("chown back");
    chmod(&dir, 0o700);
    chmod(&db, 0o640);
    std::os::unix::fs::chown(&db, nobody, nobody).expect("chown db");
    let e = start_err(config(&dir)).await;
    assert!(e.contains(&format!("chmod 600 '{}'", db.display())), "{e}");
    // The documented override starts anyway and changes nothing.
    let mut cfg = config(&dir);
    cfg.server.allow_insecure_permissions = true;
    let app = App::start(cfg).await.expect("starts with the override");
    app.stop().await;
    assert_eq!(mode(&db), 0o640);
    // And the key parses from a config file.
    let cfg = Config::from_text(
        "t.toml",
        "allow_insecure_permissions = true\n",
        Path::new("."),
    )
    .expect("valid");
    assert!(cfg.server.allow_insecure_permissions);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_byte_database_is_refused_not_taken_for_a_fresh_one() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("data");
    std::fs::create_dir(&dir).expect("mkdir");
    chmod(&dir, 0o700);
    let db = dir.join("castpoint.db");
    std::fs::File::create(&db).expect("create");
    chmod(&db, 0o600);
    let e = start_err(config(&dir)).await;
    assert!(e.contains("0 bytes") && e.contains("backup"), "{e}");
    // Nothing was written into it: the evidence stays as found.
    assert_eq!(std::fs::metadata(&db).expect("db").len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_database_fails_the_start_up_integrity_check() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("data");
    {
        // Enough audit events to fill many pages of a table the start
        // itself never reads: damage there goes unnoticed without a check.
        let store = Store::open(&dir, 100_000).expect("store");
        let detail = "x".repeat(900);
        for _ in 0..3000 {
            store
                .record_event("test", Some("t"), &Source::internal(), "ok", &detail)
                .expect("event");
        }
    } // closed: the WAL is checkpointed into castpoint.db
    let db = dir.join("castpoint.db");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&db)
        .expect("open db");
    let mut head = [0u8; 100];
    f.read_exact(&mut head).expect("header");
    let page = u64::from(u16::from_be_bytes([head[16], head[17]]));
    let pages = f.metadata().expect("meta").len() / page;
    assert!(pages > 100, "only {pages} pages");
    // Scribble over a page three quarters in (an audit leaf page).
    f.seek(SeekFrom::Start(pages * 3 / 4 * page)).expect("seek");
    f.write_all(&vec![0xA5; page as usize]).expect("write");
    drop(f);
    let e = start_err(config(&dir)).await;
    assert!(e.contains("quick_check") && e.contains("restore"), "{e}");
}

/// The real binary on `data`: the app once it printed `ready`, or its
/// exit status and stderr if it ended first.
fn spawn(data: &Path) -> Result<TestApp, (std::process::ExitStatus, String)> {
    TestApp::spawn(crate::util::run_command(data))
}

#[test]
fn second_server_on_one_data_dir_is_refused_naming_the_first() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("data");
    let mut first = spawn(&dir).unwrap_or_else(|(s, e)| panic!("first: {s}: {e}"));
    let t0 = Instant::now();
    match spawn(&dir) {
        Ok(second) => {
            drop(second);
            panic!("a second castpoint started on the same data dir");
        }
        Err((status, err)) => {
            assert!(!status.success(), "{status}");
            assert!(
                err.contains("in use by another castpoint")
                    && err.contains(&format!("pid {}", first.child().id())),
                "{err}"
            );
        }
    }
    assert!(t0.elapsed() < Duration::from_secs(30));
    // The user CLI still works beside the running server (it takes no
    // lock: SQLite serialises its one write).
    let out = Command::new(env!("CARGO_BIN_EXE_castpoint"))
        .args(["user", "list", "--data-dir"])
        .arg(&dir)
        .output()
        .expect("user list");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Once the first one is gone, the data dir is free again.
    drop(first);
    let again = spawn(&dir).unwrap_or_else(|(s, e)| panic!("restart: {s}: {e}"));
    drop(again);
}
