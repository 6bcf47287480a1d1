//! Tests of configuration loading: the embedded defaults honour seed 000, and every broken file gives an error naming file and key.

use std::path::Path;

use super::*;
use crate::points::{BacnetObjectType, HttpMethod, Maps, ModbusTable, PointId, Value};

fn embedded() -> Config {
    Config::embedded().expect("embedded config is valid")
}

fn id(c: &Config, name: &str) -> PointId {
    PointId(
        c.points
            .iter()
            .position(|p| p.id == name)
            .unwrap_or_else(|| panic!("point {name}")) as u16,
    )
}

#[test]
fn seed_point_list_is_complete() {
    let c = embedded();
    assert_eq!(c.points.len(), 23);
    let count = |r: crate::points::Role| c.points.iter().filter(|p| p.role == r).count();
    assert_eq!(count(crate::points::Role::Measurement), 10);
    assert_eq!(count(crate::points::Role::Command), 6);
    assert_eq!(count(crate::points::Role::Status), 7);
    for p in &c.points {
        assert!(
            !p.description.is_empty(),
            "{} has the seed's description",
            p.id
        );
    }
}

#[test]
fn seed_mapping_rows_are_exact() {
    let c = embedded();
    let m: &Maps = &c.maps;
    let rows = [
        ("active_streams", "AI0", "30001", "/api/streams"),
        ("connected_viewers", "AI1", "30002", "/api/viewers"),
        ("total_bitrate_out", "AI2", "30003", "/api/stats"),
        ("server_status", "MSV0", "40001", "/api/status"),
        ("stream_status", "MSV1", "40002", "/api/stream"),
        ("stream_enable", "BO0", "00001", "/api/stream/start"),
    ];
    for (p, bacnet, modbus, http) in rows {
        let pid = id(&c, p);
        assert_eq!(m.bacnet_address(pid).as_deref(), Some(bacnet), "{p}");
        assert_eq!(
            m.modbus_addresses(pid).first().map(String::as_str),
            Some(modbus),
            "{p}"
        );
        assert!(
            m.http_paths(pid).iter().any(|(_, path)| path == http),
            "{p} at {http}"
        );
    }
    let start = m
        .http
        .endpoints
        .iter()
        .find(|e| e.path == "/api/stream/start")
        .expect("start");
    assert_eq!(start.method, HttpMethod::Post);
}

#[test]
fn every_point_has_an_address_on_every_protocol() {
    let c = embedded();
    for (i, p) in c.points.iter().enumerate() {
        let pid = PointId(i as u16);
        assert!(c.maps.bacnet_address(pid).is_some(), "{} bacnet", p.id);
        assert!(!c.maps.modbus_addresses(pid).is_empty(), "{} modbus", p.id);
        assert!(!c.maps.http_paths(pid).is_empty(), "{} http", p.id);
    }
    // Every measurement has a full-precision 32-bit form beside the 16-bit one.
    for (i, p) in c.points.iter().enumerate() {
        if p.role == crate::points::Role::Measurement {
            let regs: Vec<_> = c
                .maps
                .modbus
                .registers
                .iter()
                .filter(|r| r.point == PointId(i as u16) && r.table == ModbusTable::Input)
                .collect();
            assert!(regs.iter().any(|r| r.reg_type.width() == 2), "{} f32", p.id);
        }
    }
    let bo0 = c
        .maps
        .bacnet
        .objects
        .iter()
        .find(|o| o.object_type == BacnetObjectType::BinaryOutput && o.instance == 0)
        .expect("BO0");
    assert_eq!(c.points[bo0.point.index()].id, "stream_enable");
}

fn load_with(files: &[(&str, &str)], config: &str) -> Result<Config, ConfigErrors> {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in files {
        let p = dir.path().join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(p, text).expect("write");
    }
    let cfg = dir.path().join("castpoint.toml");
    std::fs::write(&cfg, config).expect("write config");
    Config::load(&cfg)
}

fn one_error(r: Result<Config, ConfigErrors>) -> ConfigError {
    let e = r.expect_err("must fail");
    assert!(!e.0.is_empty());
    e.0[0].clone()
}

#[test]
fn unknown_point_in_a_mapping_names_file_and_key() {
    let modbus = DEFAULT_MODBUS.replacen("point = \"cpu_usage\"", "point = \"cpu_usag\"", 1);
    let e = one_error(load_with(
        &[("m.toml", &modbus)],
        "[mappings]\nmodbus = \"m.toml\"\n",
    ));
    assert!(e.file.ends_with("m.toml"), "{e}");
    assert!(
        e.key.starts_with("register[") && e.key.ends_with("].point"),
        "{e}"
    );
    assert!(e.message.contains("cpu_usag"), "{e}");
    // One line, file first.
    assert!(!e.to_string().contains('\n'));
}

#[test]
fn duplicate_addresses_are_refused() {
    let bacnet = DEFAULT_BACNET.replacen("instance = 1\n", "instance = 0\n", 1);
    let e = one_error(load_with(
        &[("b.toml", &bacnet)],
        "[mappings]\nbacnet = \"b.toml\"\n",
    ));
    assert!(e.message.contains("duplicate object AI0"), "{e}");
    // A 32-bit register overlapping the next one.
    let modbus = DEFAULT_MODBUS.replacen("address = 30103", "address = 30102", 1);
    let e = one_error(load_with(
        &[("m.toml", &modbus)],
        "[mappings]\nmodbus = \"m.toml\"\n",
    ));
    assert!(e.message.contains("overlaps"), "{e}");
}

#[test]
fn writes_mapped_to_read_only_points_are_refused() {
    let extra = "\n[[register]]\npoint = \"cpu_usage\"\ntable = \"coil\"\naddress = 100\n";
    let e = one_error(load_with(
        &[("m.toml", &format!("{DEFAULT_MODBUS}{extra}"))],
        "[mappings]\nmodbus = \"m.toml\"\n",
    ));
    assert!(e.message.contains("read-only"), "{e}");
    let http = format!(
        "{DEFAULT_HTTP}\n[[endpoint]]\npoint = \"cpu_usage\"\nmethod = \"POST\"\npath = \"/api/cpu\"\n"
    );
    let e = one_error(load_with(
        &[("h.toml", &http)],
        "[mappings]\nhttp = \"h.toml\"\n",
    ));
    assert!(e.message.contains("read-only"), "{e}");
    let bacnet = DEFAULT_BACNET.replacen(
        "point = \"active_streams\"\ntype = \"analog-input\"",
        "point = \"active_streams\"\ntype = \"analog-value\"",
        1,
    );
    let e = one_error(load_with(
        &[("b.toml", &bacnet)],
        "[mappings]\nbacnet = \"b.toml\"\n",
    ));
    assert!(e.message.contains("commandable"), "{e}");
}

#[test]
fn type_mismatches_are_refused() {
    let bacnet = DEFAULT_BACNET.replacen(
        "point = \"server_status\"\ntype = \"multi-state-value\"\ninstance = 0",
        "point = \"server_status\"\ntype = \"analog-input\"\ninstance = 50",
        1,
    );
    let e = one_error(load_with(
        &[("b.toml", &bacnet)],
        "[mappings]\nbacnet = \"b.toml\"\n",
    ));
    assert!(e.key.ends_with(".type"), "{e}");
    assert!(e.message.contains("kind enum"), "{e}");
    let http = DEFAULT_HTTP.replacen("value = true", "value = 7", 1);
    let e = one_error(load_with(
        &[("h.toml", &http)],
        "[mappings]\nhttp = \"h.toml\"\n",
    ));
    assert!(e.key.ends_with(".value"), "{e}");
}

#[test]
fn broken_point_files_name_the_key() {
    let dup = DEFAULT_POINTS.replacen("id = \"memory_usage\"", "id = \"cpu_usage\"", 1);
    let e = one_error(load_with(&[("p.toml", &dup)], "points_file = \"p.toml\"\n"));
    assert!(e.file.ends_with("p.toml"));
    assert!(
        e.key.ends_with(".id") && e.message.contains("duplicate"),
        "{e}"
    );
    let bad_period = DEFAULT_POINTS.replacen("period = \"30s\"", "period = \"soon\"", 1);
    let e = one_error(load_with(
        &[("p.toml", &bad_period)],
        "points_file = \"p.toml\"\n",
    ));
    assert!(e.key.ends_with(".period"), "{e}");
}

#[test]
fn toml_syntax_errors_give_line_and_column() {
    let e = one_error(load_with(&[], "[http]\nbind = \n"));
    assert!(e.key.starts_with("line 2"), "{e}");
    let e = one_error(load_with(&[], "[http]\nbind = \"nonsense\"\n"));
    assert_eq!(e.key, "http.bind");
    let e = one_error(load_with(&[], "[http]\nbindd = \"0.0.0.0:1\"\n"));
    assert_eq!(e.key, "http.bindd");
    let e = one_error(load_with(&[], "[modbus]\nunit_ids = [1, 300]\n"));
    assert_eq!(e.key, "modbus.unit_ids[1]");
}

#[test]
fn missing_named_file_is_reported() {
    let e = one_error(load_with(&[], "[mappings]\nbacnet = \"nope.toml\"\n"));
    assert_eq!(e.key, "mappings.bacnet");
    assert!(e.message.contains("cannot read"));
}

#[test]
fn durations_parse() {
    assert_eq!(
        parse_duration("1s"),
        Some(std::time::Duration::from_secs(1))
    );
    assert_eq!(
        parse_duration("1min"),
        Some(std::time::Duration::from_secs(60))
    );
    assert_eq!(
        parse_duration("1h"),
        Some(std::time::Duration::from_secs(3600))
    );
    assert_eq!(
        parse_duration("500ms"),
        Some(std::time::Duration::from_millis(500))
    );
    assert_eq!(parse_duration("x"), None);
    assert_eq!(parse_duration("-1s"), None);
    assert_eq!(parse_duration("5"), None);
    let _ = Path::new(".");
}

#[test]
fn route_trend_log_buffer_is_validated() {
    // Default 1,000; 0 turns route Trend Logs off; above the maximum or
    // negative is refused under its key.
    let c = Config::embedded().expect("embedded");
    assert_eq!(c.maps.bacnet.route_trend_buffer_size, 1_000);
    let with = |v: &str| {
        let bacnet = DEFAULT_BACNET.replacen(
            "route_buffer_size = 1000",
            &format!("route_buffer_size = {v}"),
            1,
        );
        load_with(&[("b.toml", &bacnet)], "[mappings]\nbacnet = \"b.toml\"\n")
    };
    let c = with("0").expect("0: no route logs");
    assert_eq!(c.maps.bacnet.route_trend_buffer_size, 0);
    for bad in ["100001", "-1"] {
        let e = one_error(with(bad));
        assert_eq!(e.key, "trend_log.route_buffer_size", "{e}");
        assert!(e.message.contains("0..=100000"), "{e}");
    }
}

#[test]
fn trend_log_keys_are_validated() {
    // Default map: ten logs, TLn logs AIn.
    let c = Config::embedded().expect("embedded");
    assert_eq!(c.maps.bacnet.trend_logs.len(), 10);
    assert_eq!(c.maps.bacnet.trend_buffer_size, 10_000);
    // buffer_size out of range names the key.
    let bacnet = DEFAULT_BACNET.replacen("buffer_size = 10000", "buffer_size = 0", 1);
    let e = one_error(load_with(
        &[("b.toml", &bacnet)],
        "[mappings]\nbacnet = \"b.toml\"\n",
    ));
    assert_eq!(e.key, "trend_log.buffer_size", "{e}");
    let bacnet = DEFAULT_BACNET.replacen("buffer_size = 10000", "buffer_size = 100001", 1);
    let e = one_error(load_with(
        &[("b.toml", &bacnet)],
        "[mappings]\nbacnet = \"b.toml\"\n",
    ));
    assert!(e.message.contains("1..=100000"), "{e}");
    // Unknown keys in the table are refused.
    let bacnet = DEFAULT_BACNET.replacen("enabled = true", "enable = true", 1);
    assert!(load_with(&[("b.toml", &bacnet)], "[mappings]\nbacnet = \"b.toml\"\n").is_err());
    // A command has no history log.
    let bacnet = DEFAULT_BACNET.replacen(
        "point = \"stream_enable\"\ntype = \"binary-output\"",
        "point = \"stream_enable\"\ntype = \"binary-output\"\ntrend_log = true",
        1,
    );
    let e = one_error(load_with(
        &[("b.toml", &bacnet)],
        "[mappings]\nbacnet = \"b.toml\"\n",
    ));
    assert!(
        e.key.ends_with("].trend_log") && e.message.contains("his"),
        "{e}"
    );
    // Off globally, on for one object.
    let bacnet = DEFAULT_BACNET
        .replacen("enabled = true", "enabled = false", 1)
        .replacen(
            "point = \"cpu_usage\"\ntype = \"analog-input\"",
            "point = \"cpu_usage\"\ntype = \"analog-input\"\ntrend_log = true",
            1,
        );
    let c = load_with(&[("b.toml", &bacnet)], "[mappings]\nbacnet = \"b.toml\"\n").expect("valid");
    assert_eq!(c.maps.bacnet.trend_logs.len(), 1);
    assert_eq!(c.maps.bacnet.trend_logs[0].instance, 3);
}

/// The errors of a config text (it must be refused).
fn refused(text: &str) -> Vec<ConfigError> {
    match Config::from_text("t.toml", text, Path::new(".")) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.0,
    }
}

fn has(errs: &[ConfigError], key: &str, part: &str) -> bool {
    errs.iter()
        .any(|e| e.key == key && e.message.contains(part))
}

#[test]
fn an_empty_file_is_an_error() {
    for text in ["", "\n  \n", "# only a comment\n"] {
        let e = refused(text);
        assert!(has(&e, "(file)", "empty"), "{e:?}");
    }
}

#[test]
fn part_sections_are_validated_at_load_like_run_does() {
    let e = refused("[bacnet]\nbroadcst = \"10.0.0.255\"\n");
    assert!(has(&e, "bacnet.broadcst", "unknown key"), "{e:?}");
    let e = refused("[bacnet]\npassword = \"\"\n");
    assert!(has(&e, "bacnet.password", "1 to 20"), "{e:?}");
    let e = refused("[bacnet]\nbind = \"[::1]:47808\"\n");
    assert!(has(&e, "bacnet.bind", "IPv6"), "{e:?}");
    let e = refused("[modbus]\nunit_id = 1\n");
    assert!(has(&e, "modbus.unit_id", "unknown key"), "{e:?}");
    let e = refused("[haystack]\nanonymous_reads = true\n");
    assert!(has(&e, "haystack.anonymous_reads", "unknown"), "{e:?}");
    let e = refused("[haystack]\naction_level = 40\n");
    assert!(has(&e, "haystack.action_level", "1..=16"), "{e:?}");
    // Disabled sections are still checked: a typo is a typo.
    let e = refused("[haystack]\nenabled = false\nfoo = 1\n");
    assert!(has(&e, "haystack.foo", "unknown"), "{e:?}");
}

#[test]
fn every_static_bind_conflict_is_reported() {
    // Two routes on one UDP port.
    let e = refused(
        "[[route]]\nname = \"a\"\n[[route.input]]\ntype = \"udp\"\nbind = \"127.0.0.1:6000\"\n\
         [[route]]\nname = \"b\"\n[[route.input]]\ntype = \"udp\"\nbind = \"0.0.0.0:6000\"\n",
    );
    assert!(has(&e, "route \"b\" input \"in0\"", "route \"a\""), "{e:?}");
    // An SRT listener input and output on one port.
    let e = refused(
        "[[route]]\nname = \"s\"\n[[route.input]]\ntype = \"srt\"\nmode = \"listener\"\naddr = \"127.0.0.1:9000\"\n\
         [[route.output]]\nname = \"o\"\ntype = \"srt\"\nmode = \"listener\"\naddr = \"127.0.0.1:9000\"\n",
    );
    assert!(
        e.iter().any(|x| x.key == "route \"s\" output \"o\""),
        "{e:?}"
    );
    // Modbus and HTTP on one TCP port (the wildcard covers 127.0.0.1).
    let e = refused("[http]\nbind = \"0.0.0.0:8080\"\n[modbus]\nbind = \"127.0.0.1:8080\"\n");
    assert!(has(&e, "modbus.bind", "http.bind"), "{e:?}");
    // UDP and TCP may share a number; port 0 never collides; a disabled
    // listener binds nothing.
    let ok = "[http]\nbind = \"127.0.0.1:0\"\n[modbus]\nbind = \"127.0.0.1:0\"\n\
              [bacnet]\nbind = \"127.0.0.1:5020\"\n";
    Config::from_text("t.toml", ok, Path::new(".")).expect("no conflict");
    let ok = "[http]\nbind = \"0.0.0.0:5020\"\n[modbus]\nenabled = false\n";
    Config::from_text("t.toml", ok, Path::new(".")).expect("modbus off");
}

#[test]
fn route_template_is_embedded_validated_and_sized() {
    let c = embedded();
    let t = c
        .route_template
        .as_ref()
        .expect("route points on by default");
    for id in [
        "route_status",
        "active_input",
        "input_status",
        "input_bitrate",
        "output_bitrate",
        "viewers",
        "dropped_frames",
        "continuity_errors",
        "failover_count",
        "route_uptime",
        "route_enable",
        "input_select",
        "recording_enable",
        "transcode_enable",
        "output_profile",
        "output_enable",
        "output_status",
    ] {
        assert!(t.points.iter().any(|p| p.def.id == id), "{id}");
    }
    // A broken template file is reported by check-config with its key.
    let dir = std::env::temp_dir().join(format!("cp-tpl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(
        dir.join("route.toml"),
        "[[point]]\nid = \"x\"\nname = \"X\"\nrole = \"status\"\nkind = \"enum\"\nstates = [\"A\"]\nperiod = \"1s\"\nper_output = 3\n",
    )
    .expect("write");
    let e = Config::from_text(
        "c.toml",
        "[route_points]\ntemplate = \"route.toml\"\n",
        &dir,
    )
    .expect_err("bad template");
    assert!(e.to_string().contains("route.toml"), "{e}");
    std::fs::write(
        dir.join("route.toml"),
        "[[point]]\nid = \"x\"\nname = \"X\"\nrole = \"status\"\nkind = \"enum\"\nstates = [\"A\"]\nperiod = \"1s\"\n",
    )
    .expect("write");
    let e = Config::from_text(
        "c.toml",
        "[route_points]\ntemplate = \"route.toml\"\n",
        &dir,
    )
    .expect_err("one state");
    assert!(e.to_string().contains("point[0].states"), "{e}");
    // Too many points for 16-bit ids.
    let e = Config::from_text(
        "c.toml",
        "[route_points]\nmax_routes = 4096\nmax_outputs = 64\n",
        &dir,
    )
    .expect_err("too big");
    assert!(e.to_string().contains("more than 65535"), "{e}");
    // Off: no blocks.
    let c = Config::from_text("c.toml", "[route_points]\nenabled = false\n", &dir).expect("ok");
    assert!(c.route_template.is_none());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The shipped points carry alarms, resolved to specs the evaluation
/// uses (docs/alarms.md).
#[test]
fn shipped_alarms_resolve() {
    use crate::points::alarm::Algorithm;
    let c = embedded();
    let cpu = &c.points[id(&c, "cpu_usage").index()];
    let a = cpu.alarm.as_ref().expect("cpu_usage has an alarm");
    assert_eq!(
        a.algorithm,
        Algorithm::OutOfRange {
            high_limit: Some(90.0),
            low_limit: None,
            deadband: 5.0
        }
    );
    assert_eq!(a.notification_class, 3);
    let input = &c.points[id(&c, "input_status").index()];
    let a = input.alarm.as_ref().expect("input_status has an alarm");
    // NO_SIGNAL and ERROR are states 2 and 3.
    assert_eq!(
        a.algorithm,
        Algorithm::ChangeOfState {
            alarm_values: vec![Value::Enum(2), Value::Enum(3)]
        }
    );
    assert!(!a.fault_on_bad_quality);
    let tpl = c.route_template.as_ref().expect("route template");
    let rs = tpl
        .points
        .iter()
        .find(|p| p.def.id == "route_status")
        .expect("route_status");
    assert!(rs.def.alarm.is_some());
    assert!(c.points[id(&c, "stream_enable").index()].alarm.is_none());
}

/// The shipped point file without its alarm tables, and `alarm` as the
/// `[point.alarm]` of the point whose id line is `point`.
fn with_alarm(point: &str, alarm: &str) -> String {
    let mut lines: Vec<String> = Vec::new();
    let mut skip = false;
    for line in DEFAULT_POINTS.lines() {
        if line == "[point.alarm]" {
            skip = true;
            continue;
        }
        if skip && (line.is_empty() || line.starts_with("[[")) {
            skip = false;
        }
        if !skip {
            lines.push(line.to_string());
        }
    }
    let at = lines.iter().position(|l| l == point).expect("point line");
    // The point's table ends at the next blank line.
    let end = lines[at..]
        .iter()
        .position(|l| l.is_empty())
        .map_or(lines.len(), |i| at + i);
    lines.insert(end, format!("[point.alarm]\n{alarm}"));
    lines.join("\n") + "\n"
}

#[test]
fn bad_alarm_tables_name_the_key() {
    let cases = [
        (
            "id = \"cpu_usage\"",
            "alarm_values = [\"HIGH\"]",
            "alarm.alarm_values",
        ),
        (
            "id = \"server_status\"",
            "alarm_values = [\"BOGUS\"]",
            "alarm.alarm_values[0]",
        ),
        (
            "id = \"server_status\"",
            "high_limit = 3",
            "alarm.high_limit",
        ),
        (
            "id = \"cpu_usage\"",
            "high_limit = 10\nlow_limit = 20",
            "alarm.low_limit",
        ),
        (
            "id = \"cpu_usage\"",
            "high_limit = 10\ntime_delay = \"soon\"",
            "alarm.time_delay",
        ),
        (
            "id = \"cpu_usage\"",
            "high_limit = 10\nevent_enable = [\"up\"]",
            "alarm.event_enable[0]",
        ),
        // Point files are read in one piece: serde's message names the key.
        (
            "id = \"cpu_usage\"",
            "high_limit = 10\nbogus = 1",
            "`bogus`",
        ),
    ];
    for (point, alarm, key) in cases {
        let text = with_alarm(point, alarm);
        let errs = load_with(&[("p.toml", &text)], "points_file = \"p.toml\"\n")
            .err()
            .map(|e| e.0)
            .unwrap_or_default();
        assert!(
            errs.iter()
                .any(|e| e.key.ends_with(key) || e.message.contains(key)),
            "{point} / {alarm}: expected {key} in {errs:?}"
        );
    }
}

#[test]
fn an_alarm_naming_a_missing_class_is_refused() {
    let text = DEFAULT_POINTS.replacen("notification_class = 3", "notification_class = 42", 1);
    let e = one_error(load_with(
        &[("p.toml", &text)],
        "points_file = \"p.toml\"\n",
    ));
    assert!(
        e.key.contains("notification_class") && e.message.contains("42"),
        "{e}"
    );
    // Declaring it makes the same file valid; the shipped classes stay.
    let ok = load_with(
        &[("p.toml", &text)],
        "points_file = \"p.toml\"\n[[notification_class]]\nid = 42\nname = \"Plant\"\n",
    );
    assert!(ok.is_ok(), "{:?}", ok.err());
}

/// (key, message) of every error, in order.
fn keyed(errs: &[ConfigError]) -> Vec<(String, String)> {
    errs.iter()
        .map(|e| (e.key.clone(), e.message.clone()))
        .collect()
}

/// Every check of a `[[point]]` table reports at its key, in the file's
/// key order, and a point with a problem is left out (the split of
/// `parse_points` into steps changed none of it).
#[test]
fn point_table_errors_keep_their_keys_and_order() {
    let text = r#"
[site]
id = "s"
dis = "S"
[equip]
id = "e"
dis = "E"

[[point]]
id = "ok"
name = "Fine"
role = "command"
kind = "number"
period = "1s"
writable = true
default = 1

[[point]]
id = "Bad Id"
name = "All wrong"
role = "sensor"
kind = "text"
period = "1ms"
writable = true
states = ["A", "a", ""]
min = 5.0
max = 1.0
cov_increment = -1.0
states_from = "inputs"
per_output = true
default = 1
tags = { Bad = true, ok = [1], fine = "x" }

[[point]]
id = "ok"
name = "Dup"
role = "command"
kind = "enum"
states = ["ONE"]
period = "1s"

[[point]]
id = "st"
name = "Status"
role = "status"
kind = "bool"
period = "1s"
default = true
"#;
    let mut errs = Vec::new();
    let pf = points::parse("p.toml", text, &mut errs).expect("site and equip");
    let ids: Vec<&str> = pf.points.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["ok"]);
    let s = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(
        keyed(&errs),
        [
            s(
                "point[1].id",
                "invalid id \"Bad Id\": use a-z, 0-9, '_' or '-'"
            ),
            s(
                "point[1].role",
                "unknown role \"sensor\" (measurement, command or status)"
            ),
            s(
                "point[1].kind",
                "unknown kind \"text\" (number, bool or enum)"
            ),
            s(
                "point[1].period",
                "invalid period \"1ms\" (e.g. \"1s\", \"30s\", \"1min\", \"1h\"; at least 100ms)"
            ),
            s(
                "point[1].writable",
                "only command points can be writable (role is measurement)"
            ),
            s(
                "point[1].states_from",
                "only the route template (points/route.toml) has states_from"
            ),
            s(
                "point[1].per_output",
                "only the route template (points/route.toml) has per_output"
            ),
            s("point[1].states", "only enum points have states"),
            s("point[1].states[1]", "empty or duplicate state \"a\""),
            s("point[1].states[2]", "empty or duplicate state \"\""),
            s("point[1].min", "min 5 is above max 1"),
            s("point[1].cov_increment", "must be a finite number >= 0"),
            s("point[1].tags.Bad", "invalid Haystack tag name"),
            s(
                "point[1].tags.ok",
                "tag values are true (marker), strings or numbers"
            ),
            s(
                "point[1].default",
                "default 1 does not match kind number and range"
            ),
            s("point[2].id", "duplicate point id \"ok\""),
            s("point[2].writable", "command points must be writable"),
            s("point[2].states", "an enum point needs at least two states"),
            s(
                "point[3].default",
                "only writable points have a relinquish default"
            ),
        ]
    );
}

/// Every check of a `[[register]]` entry reports at its key and drops the
/// entry; overlaps are found across entries, both words of a 32-bit value
/// included (the split of `parse_modbus` into steps changed none of it).
#[test]
fn modbus_register_errors_keep_their_keys_and_order() {
    let c = embedded();
    let idx = maps::PointIndex::new(&c.points);
    let cmd = c
        .points
        .iter()
        .find(|p| p.writable && p.kind == crate::points::Kind::Number);
    let ro = c
        .points
        .iter()
        .find(|p| !p.writable && p.kind == crate::points::Kind::Number);
    let (cmd, ro) = (
        &cmd.expect("a number command").id,
        &ro.expect("a measurement").id,
    );
    let text = format!(
        r#"
[defaults]
word_order = "XYZW"
write_priority = 17

[route_blocks]
stride = 0

[[register]]
point = "{ro}"
table = "rom"
address = 30001

[[register]]
point = "{ro}"
table = "input"
address = 20001

[[register]]
point = "nope"
table = "input"
address = 30001

[[register]]
point = "{ro}"
table = "input"
address = 30001
field = "max"

[[register]]
point = "{ro}"
table = "coil"
address = 1
type = "u16"

[[register]]
point = "{ro}"
table = "input"
address = 30001
type = "u64"

[[register]]
point = "{ro}"
table = "input"
address = 30001
scale = 0.0

[[register]]
point = "{ro}"
table = "input"
address = 30001
word_order = "BAD"

[[register]]
point = "{ro}"
table = "coil"
address = 1

[[register]]
point = "{ro}"
table = "discrete"
address = 10001
field = "quality"

[[register]]
point = "{ro}"
table = "input"
address = 95536
type = "f32"

[[register]]
point = "{ro}"
table = "input"
address = 30010
type = "f32"

[[register]]
point = "{ro}"
table = "input"
address = 30011

[[register]]
point = "{cmd}"
table = "holding"
address = 40010
"#
    );
    let mut errs = Vec::new();
    let map = maps::parse_modbus("m.toml", &text, &idx, &mut errs);
    let got: Vec<(ModbusTable, u16, bool)> = map
        .registers
        .iter()
        .map(|r| (r.table, r.offset, r.writable))
        .collect();
    assert_eq!(
        got,
        [
            (ModbusTable::Input, 9, false),
            (ModbusTable::Holding, 9, true)
        ]
    );
    let s = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(
        keyed(&errs),
        [
            s(
                "defaults.word_order",
                "unknown word order \"XYZW\" (ABCD, CDAB, BADC, DCBA)"
            ),
            s("defaults.write_priority", "must be a priority 1..=16"),
            s("route_blocks.stride", "must be at least 1"),
            s(
                "register[0].table",
                "unknown table \"rom\" (coil, discrete, input, holding)"
            ),
            s(
                "register[1].address",
                "address 20001 is outside the input table (30001..95536)"
            ),
            s("register[2].point", "unknown point \"nope\""),
            s(
                "register[3].field",
                "unknown field \"max\" (value, quality, ok)"
            ),
            s(
                "register[4].type",
                "bit tables (coil, discrete) take no type"
            ),
            s(
                "register[5].type",
                "unknown type \"u64\" (u16, i16, u32, i32, f32)"
            ),
            s(
                "register[6].scale",
                "scale must be a finite, non-zero number"
            ),
            s(
                "register[7].word_order",
                "unknown word order \"BAD\" (ABCD, CDAB, BADC, DCBA)"
            ),
            s(
                "register[8].point",
                &format!(
                    "coils are writable but point {ro:?} is read-only (map it to a discrete input)"
                )
            ),
            s(
                "register[9].table",
                &format!("a discrete cannot carry the quality of point {ro:?} (kind number)")
            ),
            s(
                "register[10].address",
                "a 32-bit value cannot start at the table's last register"
            ),
            s(
                "register[12].address",
                "30011 overlaps register[11] in the input table"
            ),
        ]
    );
}

/// Every check of an `[[object]]` entry reports at its key and drops the
/// object; Trend Logs go to `his` measurements unless turned off, one per
/// instance (the split of `parse_bacnet` into steps changed none of it).
#[test]
fn bacnet_object_errors_keep_their_keys_and_order() {
    let pts = r#"
[site]
id = "s"
dis = "S"
[equip]
id = "e"
dis = "E"
[[point]]
id = "m1"
name = "M1"
role = "measurement"
kind = "number"
period = "1s"
his = true
[[point]]
id = "m2"
name = "M2"
role = "measurement"
kind = "enum"
states = ["A", "B"]
period = "1s"
his = true
[[point]]
id = "m4"
name = "M4"
role = "measurement"
kind = "number"
period = "1s"
[[point]]
id = "m5"
name = "M5"
role = "measurement"
kind = "enum"
states = ["A", "B"]
period = "1s"
his = true
[[point]]
id = "m3"
name = "M3"
role = "measurement"
kind = "number"
period = "1s"
[[point]]
id = "c1"
name = "C1"
role = "command"
kind = "number"
period = "1s"
writable = true
default = 0
[[point]]
id = "s1"
name = "S1"
role = "status"
kind = "enum"
states = ["A", "B"]
period = "1s"
"#;
    let mut errs = Vec::new();
    let pf = points::parse("p.toml", pts, &mut errs).expect("points");
    assert!(errs.is_empty(), "{errs:?}");
    let idx = maps::PointIndex::new(&pf.points);
    let obj = |p: &str, ty: &str, n: u32, extra: &str| {
        format!("[[object]]\npoint = \"{p}\"\ntype = \"{ty}\"\ninstance = {n}\n{extra}\n")
    };
    let text = [
        "[trend_log]\nbuffer_size = 0\n".to_string(),
        obj("m1", "analog-thing", 1, ""),
        obj("m1", "analog-input", 4_194_303, ""),
        obj("nope", "analog-input", 1, ""),
        obj("m1", "analog-input", 7, ""),
        obj("m3", "analog-input", 7, ""),
        obj("m1", "analog-input", 8, ""),
        obj("m3", "binary-value", 9, ""),
        obj("m3", "analog-value", 10, ""),
        obj("c1", "analog-input", 11, ""),
        obj("s1", "multi-state-value", 12, "trend_log = true"),
        obj("m2", "multi-state-value", 7, ""),
        obj("m2", "multi-state-value", 13, "trend_log = false"),
        obj("s1", "multi-state-value", 14, ""),
        obj("m4", "analog-input", 15, ""),
        obj("m5", "multi-state-value", 16, "trend_log = false"),
    ]
    .concat();
    let map = maps::parse_bacnet("b.toml", &text, &idx, &mut errs);
    let objects: Vec<(BacnetObjectType, u32)> = map
        .objects
        .iter()
        .map(|o| (o.object_type, o.instance))
        .collect();
    assert_eq!(
        objects,
        // A point stays taken by an object dropped for a later problem.
        [
            (BacnetObjectType::AnalogInput, 7),
            (BacnetObjectType::AnalogInput, 15),
            (BacnetObjectType::MultiStateValue, 16),
        ]
    );
    let logs: Vec<u32> = map.trend_logs.iter().map(|t| t.instance).collect();
    assert_eq!(logs, [7]);
    assert_eq!(map.trend_buffer_size, crate::points::DEFAULT_TREND_BUFFER);
    let got: Vec<String> = errs
        .iter()
        .map(|e| format!("{}: {}", e.key, e.message))
        .collect();
    assert_eq!(got, PINNED_BACNET);
}

const PINNED_BACNET: [&str; 13] = [
    "trend_log.buffer_size: 0 records: must be 1..=100000 (memory is bounded per log)",
    "object[0].type: unknown object type \"analog-thing\" (analog-input, analog-value, binary-output, binary-value, multi-state-value)",
    "object[1].instance: instance 4194303 is above 4194302",
    "object[2].point: unknown point \"nope\"",
    "object[4].instance: duplicate object AI7 (also object[3])",
    "object[5].point: point \"m1\" is already mapped by object[3]",
    "object[6].type: binary-value cannot carry point \"m3\" of kind number",
    "object[7].point: point \"m3\" is already mapped by object[6]",
    "object[8].type: analog-input is read-only but point \"c1\" is a command (use binary-output or analog-value)",
    "object[9].trend_log: point \"s1\" is not a `his` measurement: only those have a Trend Log",
    "object[10].instance: Trend Log TL7 would log both this object and object[3] (a Trend Log takes the logged object's instance; set trend_log = false on one)",
    "object[11].point: point \"m2\" is already mapped by object[10]",
    "object[12].point: point \"s1\" is already mapped by object[9]",
];
