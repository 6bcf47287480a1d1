//! `castpoint check-config` refuses an unknown key in every section, one line `file: key.path: message` each, all of them in one run (issue 19).

use std::process::Command;

/// Runs `check-config` on `text`; (exit code, stderr).
fn check(name: &str, text: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let p = dir.path().join(name);
    std::fs::write(&p, text).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_castpoint"))
        .args(["check-config", "--config"])
        .arg(&p)
        .output()
        .expect("check-config runs");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    // Lines name the file by its path; tests compare from the file name on.
    let prefix = format!("{}: ", p.display());
    (
        out.status.code(),
        err.replace(&prefix, &format!("{name}: ")),
    )
}

#[test]
fn every_section_refuses_an_unknown_key_and_all_are_reported_at_once() {
    let text = r#"
bogus_top = 1
[users]
admin = "x"
[mappings]
bogus = 1
[http]
bogus = 1
[bacnet]
bogus = 1
[modbus]
bogus = 1
[haystack]
bogus = 1
[telemetry]
bogus = 1
[telemetry.periods]
not_a_sampled_point = "5s"
[api]
bogus = 1
[audit]
bogus = 1
[history]
bogus = 1
[media]
bogus = 1
[rtmp]
bogus = 1
[[profile]]
number = 1
bogus = 1
[[profile.audio_track]]
downmix = "stereo"
bogus = 1
[[route]]
name = "r"
bogus = 1
[[route.input]]
type = "udp"
bind = "127.0.0.1:0"
bogus = 1
[[route.output]]
type = "http"
ttl = 4
"#;
    let (code, err) = check("all.toml", text);
    assert_eq!(code, Some(2), "{err}");
    for key in [
        "bogus_top",
        "users",
        "mappings.bogus",
        "http.bogus",
        "bacnet.bogus",
        "modbus.bogus",
        "haystack.bogus",
        "telemetry.bogus",
        "telemetry.periods.not_a_sampled_point",
        "api.bogus",
        "audit.bogus",
        "history.bogus",
        "media.bogus",
        "rtmp.bogus",
        "profile[0].bogus",
        "profile[0].audio_track[0].bogus",
        "route[0].bogus",
        "route[0].input[0].bogus",
        "route[0].output[0].ttl",
    ] {
        let line = format!("all.toml: {key}: unknown key");
        assert!(
            err.lines().any(|l| l.starts_with(&line)),
            "{line} missing from:\n{err}"
        );
    }
}

#[test]
fn keys_accepted_and_ignored_before_are_refused() {
    for (name, text, key) in [
        ("users.toml", "[users]\nadmin = \"x\"\n", "users"),
        (
            "periods.toml",
            "[telemetry.periods]\ncpu_usage = \"5s\"\nstream_status = \"5s\"\n",
            "telemetry.periods.stream_status",
        ),
    ] {
        let (code, err) = check(name, text);
        assert_eq!(code, Some(2), "{name}: {err}");
        assert!(
            err.starts_with(&format!("{name}: {key}: unknown key")),
            "{name}: {err}"
        );
    }
}
