//! EDE 2.3 export (the semicolon CSV "Engineering Data Exchange" point list BMS integrators import) of the BACnet device.

use super::alarms::ClassDef;
use super::BacnetSection;
use crate::points::alarm::Algorithm;
use crate::points::Maps;
use crate::points::{BacnetObject, BacnetObjectType, PointDef};

use super::units;

/// BACnet object type numbers (Clause 21 BACnetObjectType).
fn type_number(t: BacnetObjectType) -> u32 {
    match t {
        BacnetObjectType::AnalogInput => 0,
        BacnetObjectType::AnalogValue => 2,
        BacnetObjectType::BinaryOutput => 4,
        BacnetObjectType::BinaryValue => 5,
        BacnetObjectType::MultiStateValue => 19,
    }
}

/// EDE cells are `;`-separated: keep a field free of separators and line breaks.
fn cell(s: &str) -> String {
    s.replace([';', '\n', '\r'], " ")
}

fn header(project: &str, stamp: &str) -> String {
    format!(
        "# Proposal_Engineering-Data-Exchange - B. Butenuth, Version 2.3\n\
         PROJECT_NAME;{}\n\
         VERSION_OF_REFERENCEFILE;1\n\
         TIMESTAMP_OF_LAST_CHANGE;{stamp}\n\
         AUTHOR_OF_LAST_CHANGE;castpoint\n\
         VERSION_OF_LAYOUT;2.3\n",
        cell(project)
    )
}

fn num(v: Option<f64>) -> String {
    v.map(|v| format!("{v}")).unwrap_or_default()
}

/// The EDE data file and its state-text file (`*_StateTexts.csv`), as text,
/// of the server's objects.
pub fn export(
    b: &BacnetSection,
    points: &[PointDef],
    maps: &Maps,
    classes: &[ClassDef],
    stamp: &str,
) -> (String, String) {
    export_all(b, points, maps, classes, None, stamp)
}

/// The route objects an export lists: the rule and the routes with their
/// slots, over a database whose blocks are open for them.
pub struct RouteRows<'a> {
    pub db: &'a crate::points::PointDb,
    pub rule: super::routes::InstanceRule,
}

/// The EDE files of the server's objects and, with `routes`, each open
/// route block's view and objects after the server's view. The config glue
/// (which routes, which slots) is `crate::exports`, above config and the
/// protocols, so that this module never names the config.
pub fn export_all(
    b: &BacnetSection,
    points: &[PointDef],
    maps: &Maps,
    classes: &[ClassDef],
    routes: Option<&RouteRows>,
    stamp: &str,
) -> (String, String) {
    let dev = b.device_instance;
    let mut ede = device_rows(b, stamp);
    let mut states = header(&b.device_name, stamp);
    states.push_str("#Reference Number;Text 1;Text 2;Text 3;Text 4;Text 5;Text 6;Text 7;Text 8\n");
    let mut next_ref = 1u32;
    for o in &maps.bacnet.objects {
        let Some(def): Option<&PointDef> = points.get(o.point.index()) else {
            continue;
        };
        let state_ref = state_text_ref(&def.states, &mut states, &mut next_ref);
        ede.push_str(&object_row(def, o, dev, maps, &state_ref));
    }
    // Trend Logs (object type 20): read-only, no COV, no present value.
    for t in &maps.bacnet.trend_logs {
        let Some(def) = points.get(t.point.index()) else {
            continue;
        };
        ede.push_str(&format!(
            "{key}_trend;{dev};{name} Trend Log;20;{inst};history of {short}{li} ({name});;;;N;N;;;;;TL{inst}\n",
            key = cell(&def.id),
            name = cell(&def.name),
            inst = t.instance,
            short = t.logged_type.short(),
            li = t.logged_instance,
        ));
    }
    // Notification Classes (object type 15): the Recipient_List is their
    // one writable property, not a present value, so "settable" is N.
    for c in classes {
        ede.push_str(&format!(
            "notification_class_{id};{dev};{name};15;{id};{desc};;;;N;N;;;;;NC{id}\n",
            id = c.id,
            name = cell(&c.name),
            desc = cell(&c.description),
        ));
    }
    if let Some(r) = routes {
        route_rows(r, dev, maps, &mut ede, &mut states, &mut next_ref);
    }
    (ede, states)
}

/// The EDE data file's header and column lines, then the device object
/// and its Network Port.
fn device_rows(b: &BacnetSection, stamp: &str) -> String {
    let dev = b.device_instance;
    let mut ede = header(&b.device_name, stamp);
    ede.push_str(
        "#mandatory;mandatory;mandatory;mandatory;mandatory;optional;optional;optional;optional;optional;optional;optional;optional;optional;optional;optional\n\
         # keyname;device obj.-instance;object-name;object-type;object-instance;description;present-value-default;min-present-value;max-present-value;settable;supports COV;hi-limit;low-limit;state-text-reference;unit-code;vendor-specific-address\n",
    );
    ede.push_str(&format!(
        "{};{dev};{};8;{dev};castpoint device;;;;;;;;;;\n",
        cell(&b.device_name),
        cell(&b.device_name)
    ));
    // The Network Port is in Object_List and Protocol_Object_Types_Supported,
    // so the EDE lists it too (type 56, read-only configuration).
    ede.push_str(&format!(
        "network_port;{dev};port-{np};56;{np};BACnet/IP port;;;;N;N;;;;;\n",
        np = super::NETWORK_PORT_INSTANCE
    ));
    ede
}

/// The state-text reference of an object with state texts `texts`: the
/// next reference number, whose row goes to `states`; empty for none.
fn state_text_ref(texts: &[String], states: &mut String, next_ref: &mut u32) -> String {
    if texts.is_empty() {
        return String::new();
    }
    let r = *next_ref;
    *next_ref += 1;
    let texts: Vec<String> = texts.iter().map(|s| cell(s)).collect();
    states.push_str(&format!("{r};{}\n", texts.join(";")));
    r.to_string()
}

/// The EDE row of one of the server's point objects.
fn object_row(def: &PointDef, o: &BacnetObject, dev: u32, maps: &Maps, state_ref: &str) -> String {
    let analog = matches!(
        o.object_type,
        BacnetObjectType::AnalogInput | BacnetObjectType::AnalogValue
    );
    let unit = if analog {
        units::units_code(def, o, maps.bacnet.bitrate_units_fallback)
            .map(|c| c.to_string())
            .unwrap_or_default()
    } else {
        String::new()
    };
    let default = def
        .relinquish_default
        .map(|v| format!("{}", v.as_f64()))
        .unwrap_or_default();
    let (min, max) = if analog {
        (num(def.min), num(def.max))
    } else {
        (String::new(), String::new())
    };
    // hi-limit / low-limit: the alarm's High_Limit / Low_Limit (the
    // object's own properties), where it has them.
    let (hi, lo) = match def.alarm.as_ref().map(|a| &a.algorithm) {
        Some(Algorithm::OutOfRange {
            high_limit,
            low_limit,
            ..
        }) => (num(*high_limit), num(*low_limit)),
        _ => (String::new(), String::new()),
    };
    format!(
        "{key};{dev};{name};{ty};{inst};{desc};{default};{min};{max};{settable};Y;{hi};{lo};{state_ref};{unit};{short}{inst}\n",
        key = cell(&def.id),
        name = cell(&def.name),
        ty = type_number(o.object_type),
        inst = o.instance,
        desc = cell(&def.description),
        settable = if o.object_type.commandable() { "Y" } else { "N" },
        short = o.object_type.short(),
    )
}

/// The EDE row of one route block object.
fn route_object_row(
    def: &PointDef,
    o: &super::routes::RouteObjectInfo,
    dev: u32,
    state_ref: &str,
) -> String {
    let analog = matches!(
        o.ty,
        BacnetObjectType::AnalogInput | BacnetObjectType::AnalogValue
    );
    let default = def
        .relinquish_default
        .map(|v| format!("{}", v.as_f64()))
        .unwrap_or_default();
    let (min, max, unit) = if analog {
        (num(def.min), num(def.max), o.units.to_string())
    } else {
        (String::new(), String::new(), String::new())
    };
    format!(
        "{key};{dev};{name};{ty};{inst};{desc};{default};{min};{max};{settable};Y;;;{state_ref};{unit};{short}{inst}\n",
        key = cell(&def.id),
        name = cell(&o.name),
        ty = type_number(o.ty),
        inst = o.instance,
        desc = cell(&o.description),
        settable = if o.commandable { "Y" } else { "N" },
        short = o.ty.short(),
    )
}

/// The server's Structured View, then per route its view, its objects and
/// its Trend Logs.
fn route_rows(
    r: &RouteRows,
    dev: u32,
    maps: &Maps,
    ede: &mut String,
    states: &mut String,
    next_ref: &mut u32,
) {
    let site = r.db.site();
    ede.push_str(&format!(
        "server_view;{dev};{name};29;{sv};structured view: the server's points and its routes;;;;N;N;;;;;SV{sv}\n",
        name = cell(&site.equip_dis),
        sv = super::routes::SERVER_VIEW_INSTANCE,
    ));
    for (slot, info) in r.db.blocks() {
        ede.push_str(&format!(
            "route.{slot};{dev};{name};29;{slot};structured view: route {name} (slot {slot});;;;N;N;;;;;SV{slot}\n",
            name = cell(&info.route),
        ));
        let objs = match super::routes::block_objects(
            r.db,
            r.rule,
            slot,
            &info,
            maps.bacnet.bitrate_units_fallback,
        ) {
            Ok(o) => o,
            Err(e) => {
                ede.push_str(&format!("# route {}: {}\n", cell(&info.route), cell(&e)));
                continue;
            }
        };
        for o in &objs {
            let Some(def) = r.db.def(o.point) else {
                continue;
            };
            let state_ref = state_text_ref(&o.states, states, next_ref);
            ede.push_str(&route_object_row(def, o, dev, &state_ref));
        }
        // The route's Trend Logs (type 20): TLn logs the object n.
        let logged = objs.iter().filter(|o| o.trend_log);
        for o in logged.filter(|_| maps.bacnet.route_trend_buffer_size > 0) {
            ede.push_str(&format!(
                "{key}_trend;{dev};{name} Trend Log;20;{inst};history of {short}{inst} ({name});;;;N;N;;;;;TL{inst}\n",
                key = cell(&r.db.def(o.point).map_or_else(String::new, |d| d.id.clone())),
                name = cell(&o.name),
                inst = o.instance,
                short = o.ty.short(),
            ));
        }
    }
}
