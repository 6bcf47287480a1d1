//! The export files of a config (`castpoint export`) and of the running device (`/api/export`): the glue that picks routes and slots from the config and hands them to the protocols' own writers.
//!
//! It sits above both `config` and `protocols` so that dependencies run one
//! way (config -> parts): the EDE writer in `protocols::bacnet::ede` takes
//! plain sections and rows and never names the config.

use crate::config::Config;
use crate::protocols::bacnet::{alarms, ede};

/// `castpoint export ede` of a configuration: the server's objects, then
/// the server's Structured View and, per route of the config, its view and
/// objects. Slots are the config's pins, else assigned as a first start
/// assigns them (a running server may hold others from its data dir or the
/// REST API: pin `slot = N` for addresses an export can promise).
pub fn ede_of_config(c: &Config, stamp: &str) -> (String, String) {
    let classes = alarms::class_defs(&c.server.notification_class);
    let Some(tpl) = c.route_template.clone() else {
        return ede::export(&c.server.bacnet, &c.points, &c.maps, &classes, stamp);
    };
    let max = tpl.max_slots;
    let db = crate::points::PointDb::with_routes(
        c.points.clone(),
        c.site.clone(),
        crate::points::DbOptions::default(),
        Some(tpl),
    );
    let descs = crate::config::routes::route_descs(&c.server);
    let (slots, _) =
        crate::points::routes::assign_slots(&descs, &std::collections::HashMap::new(), max);
    for d in &descs {
        if let Some(&slot) = slots.get(&d.name) {
            db.open_block(
                slot,
                crate::points::routes::BlockInfo {
                    route: d.name.clone(),
                    inputs: d.inputs.clone(),
                    outputs: d.outputs.clone(),
                },
            );
        }
    }
    ede_live(c, &db, stamp)
}

/// The EDE files of the running device: the server's objects, then the
/// route blocks open in `db` now (routes created over REST included, each
/// in the slot it holds), which is what the device serves. `/api/export`
/// uses it; for a config whose routes hold their first-start slots it is
/// byte for byte `ede_of_config`.
pub fn ede_live(c: &Config, db: &crate::points::PointDb, stamp: &str) -> (String, String) {
    let classes = alarms::class_defs(&c.server.notification_class);
    if db.route_template().is_none() {
        return ede::export(&c.server.bacnet, &c.points, &c.maps, &classes, stamp);
    }
    let rows = ede::RouteRows {
        db,
        rule: c.server.route_points.bacnet_rule(),
    };
    ede::export_all(
        &c.server.bacnet,
        &c.points,
        &c.maps,
        &classes,
        Some(&rows),
        stamp,
    )
}
