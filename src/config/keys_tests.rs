//! Table-driven proof that every section and every route, input and output field refuses an unknown key, naming its full key path.

use super::errors_of;

/// The one error a text gets (it must get exactly one).
fn only_error(text: &str) -> super::ConfigError {
    let e = errors_of(text);
    assert_eq!(e.len(), 1, "{text}\n{e:?}");
    e.into_iter().next().expect("one error")
}

/// Asserts `text` is refused with one error at `key` saying "unknown key",
/// printed as the one line `t.toml: key: unknown key ...`.
fn refused_at(text: &str, key: &str) {
    let e = only_error(text);
    assert_eq!(e.key, key, "{text}");
    let line = e.to_string();
    assert!(
        line.starts_with(&format!("t.toml: {key}: unknown key")),
        "{line}"
    );
    assert!(!line.contains('\n'), "{line}");
}

/// Every top-level table or array of tables, with a minimal valid body for
/// the `bogus` key to be the only problem, and where it is reported.
const SECTIONS: &[(&str, &str, &str)] = &[
    ("(top)", "bogus = 1\n", "bogus"),
    ("mappings", "[mappings]\nbogus = 1\n", "mappings.bogus"),
    ("http", "[http]\nbogus = 1\n", "http.bogus"),
    ("bacnet", "[bacnet]\nbogus = 1\n", "bacnet.bogus"),
    ("modbus", "[modbus]\nbogus = 1\n", "modbus.bogus"),
    ("haystack", "[haystack]\nbogus = 1\n", "haystack.bogus"),
    (
        "haystack",
        "[[haystack.user]]\nname = \"a\"\nrole = \"admin\"\nsalt = \"c2FsdA\"\niterations = 4096\nstored_key = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"\nserver_key = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"\nbogus = 1\n",
        "haystack.user[0].bogus",
    ),
    ("telemetry", "[telemetry]\nbogus = 1\n", "telemetry.bogus"),
    (
        "telemetry",
        "[telemetry.periods]\ncpu_usage = \"5s\"\nbogus = \"5s\"\n",
        "telemetry.periods.bogus",
    ),
    ("api", "[api]\nbogus = 1\n", "api.bogus"),
    ("audit", "[audit]\nbogus = 1\n", "audit.bogus"),
    ("history", "[history]\nbogus = 1\n", "history.bogus"),
    ("media", "[media]\nbogus = 1\n", "media.bogus"),
    ("rtmp", "[rtmp]\nbogus = 1\n", "rtmp.bogus"),
    ("mqtt", "[mqtt]\nbogus = 1\n", "mqtt.bogus"),
    ("route_points", "[route_points]\nbogus = 1\n", "route_points.bogus"),
    (
        "route_defaults",
        "[route_defaults]\nbogus = 1\n",
        "route_defaults.bogus",
    ),
    (
        "notification_class",
        "[[notification_class]]\nid = 5\nname = \"x\"\nbogus = 1\n",
        "notification_class[0].bogus",
    ),
    // Accepted and ignored before: no part read it.
    ("users", "[users]\nadmin = \"x\"\n", "users"),
    (
        "profile",
        "[[profile]]\nnumber = 1\n[[profile]]\nnumber = 2\nbogus = 1\n",
        "profile[1].bogus",
    ),
    (
        "profile",
        "[[profile]]\nnumber = 1\n[[profile.audio_track]]\ndownmix = \"stereo\"\nbogus = 1\n",
        "profile[0].audio_track[0].bogus",
    ),
    (
        "route",
        "[[route]]\nname = \"a\"\n[[route]]\nname = \"b\"\nbogus = 1\n",
        "route[1].bogus",
    ),
];

/// Top-level keys that hold a value, not a section.
const SCALARS: &[&str] = &[
    "data_dir",
    "allow_insecure_permissions",
    "points_file",
    "primary_route",
];

#[test]
fn an_unknown_key_in_every_section_is_refused_with_its_path() {
    for (_, text, key) in SECTIONS {
        refused_at(text, key);
    }
    // A section added without a row here fails this test.
    for k in super::file::KNOWN {
        assert!(
            SCALARS.contains(k) || SECTIONS.iter().any(|(s, _, _)| s == k),
            "[{k}] has no row in SECTIONS"
        );
    }
}

const SRT: &[&str] = &[
    "mode",
    "addr",
    "latency",
    "passphrase",
    "pbkeylen",
    "streamid",
    "allow",
];

/// Input types: the keys that make one valid, and every key the type
/// takes besides `name` and `type` (docs/configuration.md).
type Types = &'static [(&'static str, &'static str, &'static [&'static str])];
const INPUTS: Types = &[
    (
        "udp",
        "bind = \"127.0.0.1:0\"",
        &["bind", "multicast", "interface"],
    ),
    ("http", "url = \"http://127.0.0.1/x.ts\"", &["url"]),
    ("srt", "mode = \"caller\"\naddr = \"127.0.0.1:9000\"", SRT),
    ("generator", "", &["bitrate"]),
    ("rtmp", "key = \"k\"", &["app", "key"]),
    (
        "rtsp",
        "url = \"rtsp://127.0.0.1/x\"",
        &[
            "url",
            "transport",
            "user",
            "password",
            "timeout",
            "udp_bind",
        ],
    ),
];

/// Output types, as `INPUTS` (besides `name`, `type`, `enabled`, `queue`,
/// `source`, which every output takes).
const OUTPUTS: Types = &[
    ("udp", "dest = \"127.0.0.1:5000\"", &["dest", "ttl"]),
    ("http", "", &["path"]),
    ("hls", "", &["path", "segment", "window", "store"]),
    ("record", "", &["segment", "keep"]),
    ("srt", "mode = \"caller\"\naddr = \"127.0.0.1:9000\"", SRT),
    (
        "rtmp",
        "url = \"rtmp://127.0.0.1/app\"",
        &["preset", "url", "key"],
    ),
];

/// A value of the right TOML type for each route table field, so the only
/// problem is the field's place.
fn sample(field: &str) -> &'static str {
    match field {
        "pbkeylen" => "16",
        "bitrate" | "queue" | "ttl" | "window" | "keep" => "4",
        "enabled" => "true",
        "allow" => "[\"a\"]",
        _ => "\"x\"",
    }
}

/// Every field of a table type, from serde's own list in the unknown-key
/// message (so a field added to the struct is covered without editing this).
fn fields(of: &str) -> Vec<String> {
    let e = only_error(&format!("[[route]]\nname = \"r\"\n{of}bogus = 1\n"));
    let list = e.message.split("expected one of ").nth(1).unwrap_or("");
    let f: Vec<String> = list
        .split(", ")
        .map(|s| s.trim_matches(|c| c == '`' || c == ')').to_string())
        .collect();
    assert!(f.len() > 5, "{}", e.message);
    f
}

/// For `table` (`input` or `output`) of every type: an unknown key, and
/// every field of the table type that this type does not take, is refused
/// at `route[0].<table>[1].<key>` (a valid first table keeps indexes honest).
fn every_field_of(table: &str, types: Types) {
    let first = if table == "output" {
        "record"
    } else {
        "generator"
    };
    let all = fields(&format!("[[route.{table}]]\ntype = \"{first}\"\n"));
    let common: &[&str] = if table == "output" {
        &["name", "type", "enabled", "queue", "source"]
    } else {
        &["name", "type"]
    };
    for (ty, body, takes) in types {
        let head = format!(
            "[[route]]\nname = \"r\"\n[[route.{table}]]\nname = \"first\"\ntype = \"{first}\"\n[[route.{table}]]\ntype = \"{ty}\"\n{body}\n"
        );
        assert!(
            errors_of(&head).is_empty(),
            "{head}\n{:?}",
            errors_of(&head)
        );
        refused_at(
            &format!("{head}bogus = 1\n"),
            &format!("route[0].{table}[1].bogus"),
        );
        let taken: Vec<&str> = head.lines().filter_map(|l| l.split(" = ").next()).collect();
        for f in &all {
            if taken.contains(&f.as_str()) {
                continue;
            }
            let text = format!("{head}{f} = {}\n", sample(f));
            let e = errors_of(&text);
            let unknown = e.iter().any(|e| e.message.starts_with("unknown key"));
            if takes.contains(&f.as_str()) || common.contains(&f.as_str()) {
                // Taken: never refused as unknown (its value may still be
                // judged on its own merits).
                assert!(!unknown, "{table} {ty} takes {f}: {e:?}");
            } else {
                refused_at(&text, &format!("route[0].{table}[1].{f}"));
            }
        }
    }
}

#[test]
fn every_input_and_output_type_refuses_keys_it_does_not_take() {
    every_field_of("input", INPUTS);
    every_field_of("output", OUTPUTS);
}

#[test]
fn keys_of_other_types_are_refused_by_name() {
    // Fields that exist on the table type but not on this type.
    let head = "[[route]]\nname = \"r\"\n[[route.output]]\ntype = \"http\"\n";
    refused_at(&format!("{head}ttl = 4\n"), "route[0].output[0].ttl");
    let head = "[[route]]\nname = \"r\"\n[[route.input]]\ntype = \"udp\"\nbind = \"127.0.0.1:0\"\n";
    refused_at(&format!("{head}url = \"x\"\n"), "route[0].input[0].url");
}

#[test]
fn one_bad_section_does_not_hide_the_others() {
    let e = errors_of(
        "[http]\nbind = \"nope\"\n[modbus]\nunit_ids = [1, 300]\n[haystack]\nuser = 3\n[[route]]\nname = \"a\"\n[[route.output]]\ntype = \"udp\"\ndest = \"x\"\n",
    );
    let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
    for k in [
        "http.bind",
        "modbus.unit_ids[1]",
        "haystack.user",
        "route[0].output[0].dest",
    ] {
        assert!(keys.contains(&k), "{k} in {keys:?}");
    }
}

#[test]
fn bacnet_modbus_and_haystack_values_are_checked_at_load() {
    for (text, key) in [
        ("[bacnet]\nforeign_ttl = 1\n", "bacnet.foreign_ttl"),
        (
            "[bacnet]\ndevice_instance = 4194303\n",
            "bacnet.device_instance",
        ),
        (
            "[bacnet]\nwrite_allow = [\"10.0.0.0/33\"]\n",
            "bacnet.write_allow[0]",
        ),
        (
            "[modbus]\nmax_connections_per_ip = 0\n",
            "modbus.max_connections_per_ip",
        ),
        ("[modbus]\nwrite_allow = [\"x\"]\n", "modbus.write_allow[0]"),
        ("[haystack]\naction_level = 17\n", "haystack.action_level"),
        ("[haystack]\nwatch_lease = \"2h\"\n", "haystack.watch_lease"),
    ] {
        let e = only_error(text);
        assert_eq!(e.key, key, "{text}");
    }
}
