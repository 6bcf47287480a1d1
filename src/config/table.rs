//! The human point table (`castpoint points`): every point with its BACnet, Modbus and HTTP addresses.

use super::Config;
use crate::points::PointId;

pub fn point_table(c: &Config) -> String {
    let mut rows: Vec<[String; 8]> = vec![[
        "id".into(),
        "name".into(),
        "role".into(),
        "kind".into(),
        "unit".into(),
        "bacnet".into(),
        "modbus".into(),
        "http".into(),
    ]];
    for (i, d) in c.points.iter().enumerate() {
        let id = PointId(i as u16);
        let http: Vec<String> = c
            .maps
            .http_paths(id)
            .into_iter()
            .map(|(m, p)| match m {
                crate::points::HttpMethod::Get => p,
                crate::points::HttpMethod::Post => format!("POST {p}"),
            })
            .collect();
        rows.push([
            d.id.clone(),
            d.name.clone(),
            d.role.as_str().into(),
            kind_cell(d),
            d.unit.clone().unwrap_or_else(|| "-".into()),
            c.maps.bacnet_address(id).unwrap_or_else(|| "-".into()),
            c.maps.modbus_addresses(id).join(","),
            http.join(", "),
        ]);
    }
    // Route blocks (issue 20): slot 1's points; slot N's ids say N and
    // their Modbus numbers and BACnet instances add (N - 1) x stride
    // (docs/route-points.md).
    if let Some(tpl) = &c.route_template {
        let one = crate::points::routes::RouteTemplate {
            max_slots: 1,
            ..tpl.clone()
        };
        let regs = crate::points::route_addresses::route_registers(
            &one,
            c.points.len(),
            &c.maps.modbus.route_blocks,
            c.maps.modbus.word_order,
        )
        .unwrap_or_default();
        for (k, &(t, o)) in one.layout().iter().enumerate() {
            let d = one.expand(1, t, o);
            let pid = c.points.len() + k;
            let modbus: Vec<String> = regs
                .iter()
                .filter(|r| r.point.index() == pid && r.field == crate::points::ModbusField::Value)
                .map(|r| format!("{:06}", r.number))
                .collect();
            let rule = c.server.route_points.bacnet_rule();
            let bacnet = format!(
                "{}{}",
                crate::points::route_addresses::type_of(&d).0.short(),
                rule.instance(1, k)
            );
            rows.push([
                d.id.clone(),
                d.name.clone(),
                d.role.as_str().into(),
                kind_cell(&d),
                d.unit.clone().unwrap_or_else(|| "-".into()),
                bacnet,
                modbus.join(","),
                format!(
                    "/api/routes/{{route}}/points/{}",
                    d.id.trim_start_matches("route.1.")
                ),
            ]);
        }
    }
    let mut w = [0usize; 8];
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The kind column: `number`, `bool`, or `enum(A/B/...)` with the states.
fn kind_cell(d: &crate::points::PointDef) -> String {
    if d.states.is_empty() {
        d.kind.as_str().into()
    } else {
        format!("enum({})", d.states.join("/"))
    }
}
