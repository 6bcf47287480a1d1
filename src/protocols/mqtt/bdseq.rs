//! The last Sparkplug bdSeq used, kept in the data dir (`mqtt-bdseq`) so the sequence goes on increasing across castpoint restarts instead of starting at 0 again.
//!
//! Sparkplug 3.0 matches an NDEATH to its NBIRTH by bdSeq; a host that saw
//! bdSeq 5 die and then 0 born after a restart cannot tell an old will
//! delivered late from the new session's. The value is written *before*
//! the CONNECT that registers the will carrying it, so a process killed at
//! any moment restarts above every bdSeq a broker may still hold.
//!
//! A small text file rather than a SQLite table: it is rewritten on every
//! connect attempt (a migration for one integer would couple the MQTT node
//! to the store's schema), replaced atomically (write a temporary file,
//! rename), mode 0600 like the database. Not fsynced: a process crash
//! keeps it (page cache); an OS crash may lose the last write, and then one
//! bdSeq may repeat — documented in docs/mqtt.md.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The file in the data dir.
pub const FILE: &str = "mqtt-bdseq";

/// Where the bdSeq of a data dir lives.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

/// The last bdSeq stored, if the file exists and holds one (0..=255); a
/// damaged file is logged and ignored (the sequence restarts at 0).
pub fn load(p: &Path) -> Option<u64> {
    let text = match std::fs::read_to_string(p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!("mqtt: {}: {e}: bdSeq starts at 0", p.display());
            return None;
        }
    };
    match text.trim().parse::<u64>() {
        Ok(b) if b <= 255 => Some(b),
        _ => {
            tracing::warn!(
                "mqtt: {}: not a bdSeq (0..=255): {:?}: bdSeq starts at 0",
                p.display(),
                text.chars().take(20).collect::<String>()
            );
            None
        }
    }
}

/// Stores `b` as the last bdSeq used (atomically replaces the file).
pub fn save(p: &Path, b: u64) -> std::io::Result<()> {
    let tmp = p.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(format!("{b}\n").as_bytes())?;
    drop(f);
    std::fs::rename(&tmp, p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_missing_and_damaged() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = path(d.path());
        assert_eq!(load(&p), None, "no file yet");
        save(&p, 41).expect("save");
        assert_eq!(load(&p), Some(41));
        save(&p, 42).expect("save again");
        assert_eq!(load(&p), Some(42));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        for bad in ["", "256", "-1", "x", "99999999999999999999999"] {
            std::fs::write(&p, bad).expect("write");
            assert_eq!(load(&p), None, "{bad:?}");
        }
    }
}
