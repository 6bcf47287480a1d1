//! EDE 2.3 export (the semicolon CSV "Engineering Data Exchange" point list BMS integrators import) of the BACnet device.

use super::alarms::ClassDef;
use super::BacnetSection;
use crate::points::alarm::Algorithm;
use crate::points::Maps;
use crate::points::{BacnetObjectType, PointDef};

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

/// The EDE data file and its state-text file (`*_StateTexts.csv`), as text.
pub fn export(
    b: &BacnetSection,
    points: &[PointDef],
    maps: &Maps,
    classes: &[ClassDef],
    stamp: &str,
) -> (String, String) {
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
    let mut states = header(&b.device_name, stamp);
    states.push_str("#Reference Number;Text 1;Text 2;Text 3;Text 4;Text 5;Text 6;Text 7;Text 8\n");
    let mut next_ref = 1u32;
    for o in &maps.bacnet.objects {
        let Some(def): Option<&PointDef> = points.get(o.point.index()) else {
            continue;
        };
        let unit = if matches!(
            o.object_type,
            BacnetObjectType::AnalogInput | BacnetObjectType::AnalogValue
        ) {
            units::units_code(def, o, maps.bacnet.bitrate_units_fallback)
                .map(|c| c.to_string())
                .unwrap_or_default()
        } else {
            String::new()
        };
        let state_ref = if def.states.is_empty() {
            String::new()
        } else {
            let r = next_ref;
            next_ref += 1;
            let texts: Vec<String> = def.states.iter().map(|s| cell(s)).collect();
            states.push_str(&format!("{r};{}\n", texts.join(";")));
            r.to_string()
        };
        let default = def
            .relinquish_default
            .map(|v| format!("{}", v.as_f64()))
            .unwrap_or_default();
        let (min, max) = match o.object_type {
            BacnetObjectType::AnalogInput | BacnetObjectType::AnalogValue => {
                (num(def.min), num(def.max))
            }
            _ => (String::new(), String::new()),
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
        ede.push_str(&format!(
            "{key};{dev};{name};{ty};{inst};{desc};{default};{min};{max};{settable};Y;{hi};{lo};{state_ref};{unit};{short}{inst}\n",
            key = cell(&def.id),
            name = cell(&def.name),
            ty = type_number(o.object_type),
            inst = o.instance,
            desc = cell(&def.description),
            settable = if o.object_type.commandable() { "Y" } else { "N" },
            short = o.object_type.short(),
        ));
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
    (ede, states)
}
