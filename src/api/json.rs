//! JSON forms of points for the REST API (the wire format is owned here, not by the point types).

use serde_json::{json, Map, Value as J};

use crate::points::{Kind, Maps, PointDb, PointDef, PointId, TagValue, Value};

/// A point value as JSON: numbers and bools as themselves, enums as their ordinal.
pub fn value_json(v: Option<Value>) -> J {
    match v {
        None => J::Null,
        Some(Value::Number(n)) => json!(n),
        Some(Value::Bool(b)) => json!(b),
        Some(Value::Enum(e)) => json!(e),
    }
}

/// Parses a JSON value for a point: a number, a bool, an enum ordinal or
/// state name, or null (relinquish). Errors are messages for a 422.
pub fn value_from_json(def: &PointDef, v: &J) -> Result<Option<Value>, String> {
    let out = match (def.kind, v) {
        (_, J::Null) => return Ok(None),
        (Kind::Bool, J::Bool(b)) => Value::Bool(*b),
        (Kind::Bool, J::Number(n)) if n.as_f64() == Some(0.0) || n.as_f64() == Some(1.0) => {
            Value::Bool(n.as_f64() == Some(1.0))
        }
        (Kind::Bool, J::String(s)) => match s.to_ascii_lowercase().as_str() {
            "true" | "on" | "active" => Value::Bool(true),
            "false" | "off" | "inactive" => Value::Bool(false),
            _ => return Err(format!("expected true or false, got {s:?}")),
        },
        (Kind::Number, J::Number(n)) => Value::Number(n.as_f64().ok_or("number out of range")?),
        (Kind::Enum, J::Number(n)) => {
            let o = n
                .as_u64()
                .and_then(|x| u16::try_from(x).ok())
                .ok_or_else(|| format!("expected a state ordinal 1..={}", def.states.len()))?;
            Value::Enum(o)
        }
        (Kind::Enum, J::String(s)) => Value::Enum(
            def.state_ordinal(s)
                .ok_or_else(|| format!("unknown state {s:?} (one of {})", def.states.join(", ")))?,
        ),
        (k, other) => {
            return Err(format!(
                "expected a {} value, got {}",
                k.as_str(),
                match other {
                    J::Bool(_) => "a bool",
                    J::Number(_) => "a number",
                    J::String(_) => "a string",
                    J::Array(_) => "an array",
                    J::Object(_) => "an object",
                    J::Null => "null",
                }
            ))
        }
    };
    def.check_value(&out).map_err(|e| {
        let range = match (def.min, def.max) {
            (Some(a), Some(b)) if def.kind == Kind::Number => format!(" ({a}..={b})"),
            _ if def.kind == Kind::Enum => format!(" (1..={})", def.states.len()),
            _ => String::new(),
        };
        format!("{e}{range}")
    })?;
    Ok(Some(out))
}

fn tag_json(t: &TagValue) -> J {
    match t {
        TagValue::Marker => json!(true),
        TagValue::Str(s) => json!(s),
        TagValue::Number(n) => json!(n),
        TagValue::Bool(b) => json!(b),
    }
}

/// The full JSON of one point: value, status, definition and its addresses
/// on every protocol.
pub fn point_json(db: &PointDb, maps: &Maps, id: PointId) -> J {
    let (Some(def), Some(st)) = (db.def(id), db.read(id)) else {
        return J::Null;
    };
    let mut o = Map::new();
    o.insert("id".into(), json!(def.id));
    o.insert("name".into(), json!(def.name));
    o.insert("description".into(), json!(def.description));
    o.insert("role".into(), json!(def.role.as_str()));
    o.insert("kind".into(), json!(def.kind.as_str()));
    o.insert("value".into(), value_json(st.value));
    // Route points name their route, slot and output (issue 20); their
    // input states carry the route's input names.
    let states = db.state_names(id);
    if let Some(rp) = db.route_point(id) {
        let info = db.block(rp.slot);
        let mut r = json!({
            "slot": rp.slot,
            "name": info.as_ref().map(|i| i.route.clone()),
        });
        if let Some(n) = rp.output {
            r["output"] = json!(n);
            r["output_name"] = json!(info
                .as_ref()
                .and_then(|i| i.outputs.get(usize::from(n) - 1).cloned()));
        }
        o.insert("route".into(), r);
    }
    match st.value {
        Some(Value::Enum(e)) => {
            if let Some(name) = states.get(usize::from(e).wrapping_sub(1)) {
                o.insert("state".into(), json!(name));
            }
        }
        // No value: the "N/A" state names it (value stays null).
        None if def.na_state().is_some() => {
            o.insert("state".into(), json!(crate::points::NA_STATE));
        }
        _ => {}
    }
    o.insert("unit".into(), json!(def.unit));
    o.insert("status".into(), json!(st.quality.as_str()));
    if let Some(r) = &st.reason {
        o.insert("reason".into(), json!(r.as_ref()));
    }
    o.insert("updated".into(), json!(st.updated.to_rfc3339()));
    o.insert("writable".into(), json!(def.writable));
    if let Some(l) = st.level {
        o.insert("level".into(), json!(l));
    }
    if !states.is_empty() {
        o.insert("states".into(), json!(states));
    }
    if def.min.is_some() || def.max.is_some() {
        o.insert("range".into(), json!([def.min, def.max]));
    }
    o.insert("period_s".into(), json!(def.sample_period.as_secs_f64()));
    let tags: Map<String, J> = def
        .tags
        .iter()
        .map(|(k, v)| (k.clone(), tag_json(v)))
        .collect();
    o.insert("tags".into(), J::Object(tags));
    let http: Vec<String> = maps
        .http_paths(id)
        .into_iter()
        .map(|(m, p)| match m {
            crate::points::HttpMethod::Get => format!("GET {p}"),
            crate::points::HttpMethod::Post => format!("POST {p}"),
        })
        .collect();
    let addresses = match db.route_point(id) {
        Some(rp) => route_addresses(db, maps, def, rp),
        None => json!({
            "bacnet": maps.bacnet_address(id),
            "modbus": maps.modbus_addresses(id),
            "http": http,
        }),
    };
    o.insert("addresses".into(), addresses);
    if let Some(pa) = db.priority_array(id) {
        let slots: Vec<J> = pa
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| match s {
                None => json!({"level": i + 1, "value": null}),
                Some(s) => json!({
                    "level": i + 1,
                    "value": value_json(Some(s.value)),
                    "who": s.who.describe(),
                    "at": s.at.to_rfc3339(),
                }),
            })
            .collect();
        o.insert(
            "priority_array".into(),
            json!({"slots": slots, "default": value_json(Some(pa.default))}),
        );
    }
    J::Object(o)
}

/// A route point's addresses (docs/route-points.md): its Modbus value
/// registers by the `[route_blocks]` rule, and its REST paths under the
/// route. BACnet's is added by [`route_bacnet`] where the API knows the
/// `[route_points]` instance rule (null until then).
fn route_addresses(
    db: &PointDb,
    maps: &Maps,
    def: &PointDef,
    rp: crate::points::routes::RoutePoint,
) -> J {
    let mut modbus = Vec::new();
    let mut http = Vec::new();
    if let Some(tpl) = db.route_template() {
        let t = &tpl.points[rp.tpl].def;
        // Slot 1's registers, shifted by the stride: every block has the
        // same layout, so one slot is computed, not all that are reserved.
        let mut one = tpl.clone();
        one.max_slots = 1;
        let first = db.ids().count();
        let rb = &maps.modbus.route_blocks;
        let at = one
            .layout()
            .iter()
            .position(|&(i, o)| i == rp.tpl && o == rp.output);
        if let (Some(k), Ok(regs)) = (
            at,
            crate::points::route_addresses::route_registers(
                &one,
                first,
                rb,
                maps.modbus.word_order,
            ),
        ) {
            let shift = u32::from(rp.slot.saturating_sub(1)) * u32::from(rb.stride);
            modbus = regs
                .iter()
                .filter(|r| {
                    usize::from(r.point.0) == first + k
                        && r.field == crate::points::ModbusField::Value
                })
                .map(|r| format!("{:06}", r.number + shift))
                .collect();
        }
        if let Some(info) = db.block(rp.slot) {
            let tid = match rp.output {
                Some(n) => format!("{}.{n}", t.id),
                None => t.id.clone(),
            };
            let base = format!("/api/routes/{}/points/{tid}", info.route);
            http.push(format!("GET {base}"));
            if def.writable {
                http.push(format!("POST {base}"));
            }
        }
    }
    json!({"bacnet": null, "modbus": modbus, "http": http})
}

/// A route point's BACnet object (`BO1103`): type from the template point,
/// instance `base + slot x stride + k` (`k` its place in the block).
pub fn route_bacnet(
    db: &PointDb,
    id: PointId,
    rule: crate::points::route_addresses::InstanceRule,
) -> Option<String> {
    let rp = db.route_point(id)?;
    let tpl = db.route_template()?;
    let k = tpl
        .layout()
        .iter()
        .position(|&(i, o)| i == rp.tpl && o == rp.output)?;
    let def = db.def(id)?;
    Some(format!(
        "{}{}",
        crate::points::route_addresses::type_of(def).0.short(),
        rule.instance(rp.slot, k)
    ))
}
