//! Route blocks: the route template (`points/route.toml`) expanded into one pre-allocated block of points per route slot, and the sans-IO rules that give each route a stable slot.
//!
//! The database reserves `max_slots` blocks at start, so point ids never
//! move and nothing is reallocated while routes come and go: a block is
//! *present* while a route owns its slot and simply not served otherwise.
//! Slots are 1-based (`1..=max_slots`); the point ids of slot `s` are
//! `route.<s>.<template id>` and, for per-output points,
//! `route.<s>.<template id>.<n>` (output `n`, 1-based). Ids name the slot,
//! never the route, so a rename or a reorder changes no address.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::model::{PointDef, TagValue, NA_STATE};

/// One point of the route template.
#[derive(Debug, Clone)]
pub struct TemplatePoint {
    /// The definition as written in the template (id without prefix;
    /// for `states_from_inputs`, `states` holds the fixed states only).
    pub def: PointDef,
    /// Repeated for outputs `1..=max_outputs`.
    pub per_output: bool,
    /// The enum's states are the fixed ones followed by one per input.
    pub states_from_inputs: bool,
}

/// The route template and the sizes of the reserved blocks.
#[derive(Debug, Clone)]
pub struct RouteTemplate {
    /// Display name of a route equip (`<route name>` is shown after it).
    pub equip_dis: String,
    /// Extra Haystack tags of every route equip.
    pub equip_tags: BTreeMap<String, TagValue>,
    pub points: Vec<TemplatePoint>,
    /// Blocks reserved (slots `1..=max_slots`).
    pub max_slots: u16,
    /// Per-output points are reserved for this many outputs per route.
    pub max_outputs: u16,
    /// `states_from = "inputs"` enums reserve this many input states.
    pub max_inputs: u16,
}

/// Default number of reserved route slots (`[route_points] max_routes`).
pub const DEFAULT_MAX_SLOTS: u16 = 128;
/// Default per-route output points (`[route_points] max_outputs`).
pub const DEFAULT_MAX_OUTPUTS: u16 = 8;
/// Default reserved input states (`[route_points] max_inputs`).
pub const DEFAULT_MAX_INPUTS: u16 = 8;

impl RouteTemplate {
    /// Template points that appear once per route, in template order.
    pub fn plain(&self) -> impl Iterator<Item = (usize, &TemplatePoint)> {
        self.points
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.per_output)
    }

    /// Template points repeated per output, in template order.
    pub fn per_output(&self) -> impl Iterator<Item = (usize, &TemplatePoint)> {
        self.points.iter().enumerate().filter(|(_, p)| p.per_output)
    }

    /// Points in one block.
    pub fn block_len(&self) -> usize {
        self.plain().count() + self.per_output().count() * usize::from(self.max_outputs)
    }

    /// The block's layout: (template index, output) for each point of a
    /// block, in id order: the plain points, then per output `1..=N` its
    /// per-output points.
    pub fn layout(&self) -> Vec<(usize, Option<u16>)> {
        let mut v: Vec<(usize, Option<u16>)> = self.plain().map(|(i, _)| (i, None)).collect();
        for o in 1..=self.max_outputs {
            v.extend(self.per_output().map(|(i, _)| (i, Some(o))));
        }
        v
    }

    /// The database definition of one point of slot `slot`.
    pub fn expand(&self, slot: u16, tpl: usize, output: Option<u16>) -> PointDef {
        let t = &self.points[tpl];
        let mut d = t.def.clone();
        d.id = point_id(slot, &t.def.id, output);
        if let Some(o) = output {
            d.name = format!("{} {o}", t.def.name);
        }
        if t.states_from_inputs {
            d.states = expand_states(&t.def.states, (1..=self.max_inputs).map(generic_input));
        }
        d
    }
}

/// The name an input state has in the static definition (BACnet
/// State_Text, exports): routes show their own input names instead.
pub fn generic_input(n: u16) -> String {
    format!("Input {n}")
}

/// Fixed states, then one per input, then "N/A" if the fixed states have it.
pub fn expand_states(fixed: &[String], inputs: impl Iterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = fixed.iter().filter(|s| *s != NA_STATE).cloned().collect();
    v.extend(inputs);
    if fixed.iter().any(|s| s == NA_STATE) {
        v.push(NA_STATE.to_string());
    }
    v
}

/// Database id of a route point: `route.<slot>.<id>[.<output>]`.
pub fn point_id(slot: u16, id: &str, output: Option<u16>) -> String {
    match output {
        Some(o) => format!("route.{slot}.{id}.{o}"),
        None => format!("route.{slot}.{id}"),
    }
}

/// Where a point sits in the route blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoutePoint {
    pub slot: u16,
    /// Index into the template's points.
    pub tpl: usize,
    /// Output number (1-based) of a per-output point.
    pub output: Option<u16>,
}

/// The route that owns a present block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockInfo {
    pub route: String,
    /// Input names, in the route's order (Input Select's states).
    pub inputs: Vec<String>,
    /// Output names, in the route's order (output `n` is `outputs[n-1]`).
    pub outputs: Vec<String>,
}

/// What slot assignment needs to know of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteDesc {
    pub name: String,
    /// `slot = N` in its `[[route]]` table or route document.
    pub pinned: Option<u16>,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
}

/// Durable name → slot assignments (SQLite in the server).
pub trait SlotStore: Send + Sync {
    fn load(&self) -> Result<Vec<(String, u16)>, String>;
    /// Replaces every stored assignment.
    fn save(&self, all: &[(String, u16)]) -> Result<(), String>;
}

/// Gives every route a slot in `1..=max`: its pinned slot; else the one
/// it had (`stored`) unless another route pins it; else the lowest free
/// one. Routes that find no slot are returned in the second list (more
/// routes than slots, or a pin out of range / pinned twice: config
/// validation refuses those, this only keeps the server up).
pub fn assign_slots(
    routes: &[RouteDesc],
    stored: &HashMap<String, u16>,
    max: u16,
) -> (BTreeMap<String, u16>, Vec<String>) {
    let mut out = BTreeMap::new();
    let mut taken = HashSet::new();
    let mut left = Vec::new();
    for r in routes {
        if let Some(p) = r.pinned {
            if (1..=max).contains(&p) && taken.insert(p) {
                out.insert(r.name.clone(), p);
            } else {
                left.push(r.name.clone());
            }
        }
    }
    let mut pending = Vec::new();
    for r in routes.iter().filter(|r| r.pinned.is_none()) {
        match stored.get(&r.name) {
            Some(&s) if (1..=max).contains(&s) && taken.insert(s) => {
                out.insert(r.name.clone(), s);
            }
            _ => pending.push(r.name.clone()),
        }
    }
    let mut next = 1u16;
    for name in pending {
        while next <= max && taken.contains(&next) {
            next += 1;
        }
        if next > max {
            left.push(name);
            continue;
        }
        taken.insert(next);
        out.insert(name, next);
    }
    (out, left)
}

/// Checks the pinned slots of a configuration: in range and not shared.
/// Returns (route index, message) for each problem.
pub fn pin_problems(pins: &[(usize, String, Option<u16>)], max: u16) -> Vec<(usize, String)> {
    let mut seen: HashMap<u16, &str> = HashMap::new();
    let mut out = Vec::new();
    for (i, name, p) in pins {
        let Some(p) = p else { continue };
        if !(1..=max).contains(p) {
            out.push((
                *i,
                format!("slot {p} is outside 1..={max} ([route_points] max_routes)"),
            ));
        } else if let Some(other) = seen.insert(*p, name) {
            out.push((*i, format!("slot {p} is already pinned by route {other:?}")));
        }
    }
    out
}

/// Keeps the database's blocks in step with the routes: called with the
/// desired routes whenever they may have changed (cheap when they did not).
pub struct SlotKeeper {
    store: Option<std::sync::Arc<dyn SlotStore>>,
    stored: HashMap<String, u16>,
    last: Option<Vec<RouteDesc>>,
}

impl SlotKeeper {
    /// Loads the stored assignments (a store that cannot be read is logged
    /// and treated as empty: routes then get the lowest free slots).
    pub fn new(store: Option<std::sync::Arc<dyn SlotStore>>) -> Self {
        let stored = match store.as_ref().map(|s| s.load()) {
            Some(Ok(v)) => v.into_iter().collect(),
            Some(Err(e)) => {
                tracing::warn!("stored route slots unreadable, reassigning: {e}");
                HashMap::new()
            }
            None => HashMap::new(),
        };
        SlotKeeper {
            store,
            stored,
            last: None,
        }
    }

    /// Opens, updates and closes blocks so that exactly `routes` own one.
    pub fn sync(&mut self, db: &super::PointDb, routes: &[RouteDesc]) {
        let Some(tpl) = db.route_template() else {
            return;
        };
        let renamed = self.take_renames(db, routes);
        if renamed.is_empty() && self.last.as_deref() == Some(routes) {
            return;
        }
        let (slots, left) = assign_slots(routes, &self.stored, tpl.max_slots);
        for name in &left {
            tracing::warn!(
                "route {name}: no point block (all {} slots taken, or its pinned slot is not usable)",
                tpl.max_slots
            );
        }
        let by_slot: HashMap<u16, &str> = slots.iter().map(|(n, s)| (*s, n.as_str())).collect();
        for (slot, info) in db.blocks() {
            let owner = by_slot.get(&slot).copied();
            // A renamed route's block is updated in place below, not freed:
            // the route is the same, only its name changed.
            let renamed_here = owner.is_some_and(|n| {
                renamed
                    .iter()
                    .any(|(old, new)| *old == info.route && new == n)
            });
            if owner != Some(info.route.as_str()) && !renamed_here {
                db.close_block(slot);
            }
        }
        for r in routes {
            if let Some(&slot) = slots.get(&r.name) {
                db.open_block(
                    slot,
                    BlockInfo {
                        route: r.name.clone(),
                        inputs: r.inputs.clone(),
                        outputs: r.outputs.clone(),
                    },
                );
            }
        }
        let now: HashMap<String, u16> = slots.into_iter().collect();
        if now != self.stored {
            if let Some(st) = &self.store {
                let mut all: Vec<(String, u16)> =
                    now.iter().map(|(n, s)| (n.clone(), *s)).collect();
                all.sort_by_key(|(_, s)| *s);
                if let Err(e) = st.save(&all) {
                    tracing::warn!("route slots not stored (kept in memory): {e}");
                }
            }
            self.stored = now;
        }
        self.last = Some(routes.to_vec());
    }

    /// Applies the renames announced on `db` that `routes` now show (the
    /// new name present, the old one gone): the new name takes the old
    /// one's slot. A rename the router has not made yet stays announced;
    /// one it will never make (both names gone) is dropped.
    fn take_renames(&mut self, db: &super::PointDb, routes: &[RouteDesc]) -> Vec<(String, String)> {
        let has = |n: &str| routes.iter().any(|r| r.name == n);
        let mut done = Vec::new();
        for (old, new) in db.pending_renames() {
            if has(&old) && !has(&new) {
                continue;
            }
            db.withdraw_rename(&old, &new);
            if has(&new) && !has(&old) {
                if let Some(slot) = self.stored.remove(&old) {
                    self.stored.insert(new.clone(), slot);
                }
                done.push((old, new));
            }
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str, pinned: Option<u16>) -> RouteDesc {
        RouteDesc {
            name: name.into(),
            pinned,
            inputs: vec![],
            outputs: vec![],
        }
    }

    #[test]
    fn slots_are_pinned_then_kept_then_lowest_free() {
        let stored: HashMap<String, u16> = [("b".to_string(), 5), ("c".to_string(), 2)].into();
        // c's stored slot 2 is pinned by a: c moves to the lowest free.
        let (got, left) = assign_slots(
            &[r("a", Some(2)), r("b", None), r("c", None), r("d", None)],
            &stored,
            8,
        );
        assert!(left.is_empty());
        assert_eq!(got["a"], 2);
        assert_eq!(got["b"], 5);
        assert_eq!(got["c"], 1);
        assert_eq!(got["d"], 3);
    }

    #[test]
    fn reorder_keeps_slots_and_overflow_is_reported() {
        let stored: HashMap<String, u16> = [("x".to_string(), 1), ("y".to_string(), 2)].into();
        let (got, _) = assign_slots(&[r("y", None), r("x", None)], &stored, 8);
        assert_eq!((got["x"], got["y"]), (1, 2));
        let (got, left) = assign_slots(&[r("x", None), r("y", None), r("z", None)], &stored, 2);
        assert_eq!(got.len(), 2);
        assert_eq!(left, vec!["z".to_string()]);
    }

    #[test]
    fn pins_out_of_range_or_shared_are_problems() {
        let p = pin_problems(
            &[
                (0, "a".into(), Some(3)),
                (1, "b".into(), Some(3)),
                (2, "c".into(), Some(0)),
                (3, "d".into(), None),
            ],
            4,
        );
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].0, 1);
        assert_eq!(p[1].0, 2);
    }

    #[test]
    fn input_states_keep_na_last() {
        let s = expand_states(
            &["Auto".to_string()],
            ["cam".to_string(), "bak".to_string()].into_iter(),
        );
        assert_eq!(s, ["Auto", "cam", "bak"]);
        let s = expand_states(&[NA_STATE.to_string()], (1..=2).map(generic_input));
        assert_eq!(s, ["Input 1", "Input 2", "N/A"]);
    }
}
