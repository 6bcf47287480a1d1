//! The data dir on disk: private modes (0700 dir, 0600 database files), made private when castpoint owns them and refused when not, a fresh database created whole (never a 0-byte file), and the one-instance lock.
//!
//! `castpoint.db` holds the JWT signing key, the users' SCRAM keys and the
//! routes' stream secrets (SRT passphrases, RTMP keys, camera passwords): a
//! local user who can read it can forge an admin token. So castpoint creates
//! its files private whatever the umask, makes private the ones it owns
//! that it finds open to group or others (with a warning), and refuses to
//! start on such files owned by another user (the error names the `chmod` to
//! run); `allow_insecure_permissions = true` leaves modes alone and starts.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The database file in the data dir.
pub const DB_FILE: &str = "castpoint.db";
/// The lock file a running server holds (its content is the holder's pid).
pub const LOCK_FILE: &str = "castpoint.lock";
/// `PRAGMA application_id` of a castpoint database ("cast").
pub const APPLICATION_ID: i32 = 0x6361_7374;

/// How the store treats the data dir.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreOptions {
    /// Leave a data dir or database open to group/others as it is and
    /// start (only a warning).
    pub allow_insecure_permissions: bool,
}

/// Creates `dir` (and missing parents) with mode 0700 if it does not exist.
/// An existing dir is left as it is ([`secure_modes`] judges it).
pub fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        return Ok(());
    }
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create data dir {}", dir.display()))?;
    // The umask could have narrowed 0700 (never widened it); set it
    // explicitly so the mode does not depend on the environment.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot set mode 0700 on {}", dir.display()))?;
    Ok(())
}

/// Mode bits and owner of `p` (None: it does not exist).
fn mode_owner(p: &Path) -> anyhow::Result<Option<(u32, u32)>> {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(p) {
        Ok(m) => Ok(Some((m.permissions().mode() & 0o777, m.uid()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", p.display())),
    }
}

/// The data dir and its database files that group or others can access,
/// as (path, mode, owner uid, the private mode it should have); empty when
/// everything is private.
pub fn insecure_paths(dir: &Path) -> anyhow::Result<Vec<(PathBuf, u32, u32, u32)>> {
    let mut bad = Vec::new();
    let files = [DB_FILE, "castpoint.db-wal", "castpoint.db-shm"];
    let paths = std::iter::once((dir.to_path_buf(), 0o700))
        .chain(files.iter().map(|f| (dir.join(f), 0o600)));
    for (p, private) in paths {
        if let Some((m, uid)) = mode_owner(&p)? {
            if m & 0o077 != 0 {
                bad.push((p, m, uid, private));
            }
        }
    }
    Ok(bad)
}

/// Makes the data dir and database files private. One that group or
/// others can access is set to 0700/0600 (with a warning) when this
/// process's user owns it: the files are castpoint's, and an install from
/// before this check (SQLite created them under the umask, 0644) is fixed
/// without a manual step. One owned by another user is not castpoint's to
/// change: the start is refused, naming the `chmod` to run. With `allow`
/// (`allow_insecure_permissions = true`) nothing is changed or refused,
/// only warned about.
pub fn secure_modes(dir: &Path, allow: bool) -> anyhow::Result<()> {
    let me = nix::unistd::geteuid().as_raw();
    let mut refused = Vec::new();
    for (p, m, uid, private) in insecure_paths(dir)? {
        if allow {
            tracing::warn!(
                "{} (mode {m:04o}) is accessible by group or others and holds or guards \
                 castpoint's secrets; left as it is (allow_insecure_permissions = true)",
                p.display()
            );
            continue;
        }
        if uid == me {
            match std::fs::set_permissions(&p, std::fs::Permissions::from_mode(private)) {
                Ok(()) => {
                    tracing::warn!(
                        "{} was mode {m:04o} (accessible by group or others): set to {private:04o}, \
                         it holds or guards the JWT signing key, user keys and stream secrets",
                        p.display()
                    );
                    continue;
                }
                Err(e) => tracing::warn!("cannot set mode {private:04o} on {}: {e}", p.display()),
            }
        }
        refused.push((p, m, private));
    }
    if refused.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = refused
        .iter()
        .map(|(p, m, _)| format!("{} (mode {m:04o})", p.display()))
        .collect();
    let fix: Vec<String> = refused
        .iter()
        .map(|(p, _, private)| format!("chmod {private:o} '{}'", p.display()))
        .collect();
    anyhow::bail!(
        "{} readable by group or others and not owned by this user, so castpoint does not \
         change it: castpoint.db holds the JWT signing key, user keys and stream secrets. \
         Fix with: {}; or set allow_insecure_permissions = true in the config to start anyway",
        list.join(", "),
        fix.join(" && ")
    )
}

/// Makes sure `path` (castpoint.db) is a database to open: an existing
/// 0-byte file is refused (a truncated or damaged database, not a fresh
/// start: starting on it would come up with no users and an open API); a
/// missing one is created whole, private, under a temporary name and
/// renamed into place, so a crash never leaves a 0-byte `castpoint.db`.
/// SQLite gives `-wal`/`-shm` the database file's mode, so they are 0600 too.
pub fn ensure_db(path: &Path) -> anyhow::Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.len() == 0 => anyhow::bail!(
            "{p} is empty (0 bytes): a truncated or damaged database, not a fresh start \
             (starting on it would lose every user, command and route, and open the API). \
             Restore it from a backup, or move it away to start empty: mv '{p}' '{p}.empty'",
            p = path.display()
        ),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_fresh(path),
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    }
}

fn create_fresh(path: &Path) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".init");
    let tmp = PathBuf::from(tmp);
    // Leftovers of a start that crashed half-way hold nothing yet.
    for suffix in ["", "-journal"] {
        let mut p = tmp.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot set mode 0600 on {}", tmp.display()))?;
    {
        let conn = rusqlite::Connection::open(&tmp)
            .with_context(|| format!("cannot open {}", tmp.display()))?;
        // Writes page 1: from here on the file is a valid, non-empty database.
        conn.pragma_update(None, "application_id", APPLICATION_ID)
            .with_context(|| format!("cannot initialise {}", tmp.display()))?;
    }
    File::open(&tmp)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot sync {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
    if let Some(dir) = path.parent() {
        // Best effort: makes the rename durable; some filesystems refuse.
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// The data dir's lock, held (flock) for as long as the server runs: a
/// second castpoint on the same data dir is refused (two writers would each
/// take the other's commands, routes and recordings for their own).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    pub path: PathBuf,
}

impl DataDirLock {
    /// Creates the data dir (0700) if needed and locks `castpoint.lock` in
    /// it, writing this process's pid there; refuses when another process
    /// holds it, naming its pid.
    pub fn acquire(dir: &Path) -> anyhow::Result<DataDirLock> {
        create_private_dir(dir)?;
        let path = dir.join(LOCK_FILE);
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match f.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut s = String::new();
                let _ = f.read_to_string(&mut s);
                let holder = match s.trim().parse::<u32>() {
                    Ok(pid) => format!("pid {pid}"),
                    Err(_) => "pid unknown".to_string(),
                };
                anyhow::bail!(
                    "data dir {} is in use by another castpoint ({holder}, lock {}): two \
                     instances on one data dir would overwrite each other's state. Stop the \
                     other one, or give this one its own data dir (--data-dir)",
                    dir.display(),
                    path.display()
                );
            }
            Err(std::fs::TryLockError::Error(e)) => {
                anyhow::bail!("cannot lock {}: {e}", path.display())
            }
        }
        // Only the holder writes: the pid is for the message above.
        f.set_len(0)
            .and_then(|()| f.rewind())
            .and_then(|()| writeln!(f, "{}", std::process::id()))
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(DataDirLock { _file: f, path })
    }
}
