//! `[[notification_class]]` tables: the classes alarms are routed through (BACnet Notification Class objects, webhooks), with the defaults shipped when the file names none.
//!
//! A class says, per transition (to-offnormal, to-fault, to-normal, in
//! BACnet's order), the event priority (0 highest .. 255) and whether the
//! transition must be acknowledged. Points name their class in their
//! `[point.alarm]` table; `check-config` refuses a point naming a class
//! that does not exist.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::points::alarm::{ClassRules, PerTransition, TransitionKind};
use crate::section::Problem;

/// One `[[notification_class]]` table as written.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationClassTable {
    /// The class number (BACnet Notification_Class and the object
    /// instance), 0..=4194302.
    pub id: u32,
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Event priority per transition [to-offnormal, to-fault, to-normal].
    #[serde(default = "default_priority")]
    pub priority: [u8; 3],
    /// Transitions that must be acknowledged: "to-offnormal", "to-fault",
    /// "to-normal".
    #[serde(default)]
    pub ack_required: Vec<String>,
}

fn default_priority() -> [u8; 3] {
    [128, 128, 200]
}

/// The classes in force when the file has no `[[notification_class]]`:
/// 1 for stream failures, 2 for server health, 3 for advisories. The
/// priorities sit in BACnet's "urgent" and "high" bands (Niagara's and
/// 135 Annex M's conventions: lower is more urgent), so a BMS sorts a
/// dark stream above a warm CPU.
pub fn defaults() -> Vec<NotificationClassTable> {
    let acks = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
    vec![
        NotificationClassTable {
            id: 1,
            name: "Stream alarms".into(),
            description: "A route or output without media".into(),
            priority: [64, 64, 200],
            ack_required: acks(&["to-offnormal", "to-fault"]),
        },
        NotificationClassTable {
            id: 2,
            name: "Server alarms".into(),
            description: "Server, encoder, GPU and CDN health".into(),
            priority: [96, 96, 200],
            ack_required: acks(&["to-offnormal", "to-fault"]),
        },
        NotificationClassTable {
            id: 3,
            name: "Advisories".into(),
            description: "Load and usage limits".into(),
            priority: [160, 160, 220],
            ack_required: Vec::new(),
        },
    ]
}

/// Parses a transition name (`to-offnormal`, `to-fault`, `to-normal`).
pub fn transition_kind(s: &str) -> Option<TransitionKind> {
    TransitionKind::ALL.into_iter().find(|k| k.as_str() == s)
}

impl NotificationClassTable {
    /// The class's rules as the evaluation uses them.
    pub fn rules(&self) -> ClassRules {
        let mut ack = PerTransition::all(false);
        for s in &self.ack_required {
            if let Some(k) = transition_kind(s) {
                ack.set(k, true);
            }
        }
        ClassRules {
            priority: PerTransition {
                to_offnormal: self.priority[0],
                to_fault: self.priority[1],
                to_normal: self.priority[2],
            },
            ack_required: ack,
        }
    }
}

/// Validates the tables (problems keyed `[i].key`).
pub fn validate(tables: &[NotificationClassTable]) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut seen = HashMap::new();
    for (i, t) in tables.iter().enumerate() {
        let at = format!("[{i}]");
        if t.id > 4_194_302 {
            out.push(Problem::new(
                format!("{at}.id"),
                "must be 0..=4194302 (a BACnet object instance)",
            ));
        }
        if let Some(j) = seen.insert(t.id, i) {
            out.push(Problem::new(
                format!("{at}.id"),
                format!("duplicate notification class {} (also [{j}])", t.id),
            ));
        }
        if t.name.trim().is_empty() {
            out.push(Problem::new(format!("{at}.name"), "must not be empty"));
        }
        for (j, s) in t.ack_required.iter().enumerate() {
            if transition_kind(s).is_none() {
                out.push(Problem::new(
                    format!("{at}.ack_required[{j}]"),
                    format!("unknown transition {s:?} (to-offnormal, to-fault or to-normal)"),
                ));
            }
        }
    }
    out
}

/// The classes in force: the shipped defaults, each replaced by the
/// file's table of the same id, plus the file's other classes (so adding
/// a class never silently drops the ones the shipped points name).
pub fn effective(tables: &[NotificationClassTable]) -> Vec<NotificationClassTable> {
    let mut out: Vec<NotificationClassTable> = defaults()
        .into_iter()
        .filter(|d| !tables.iter().any(|t| t.id == d.id))
        .collect();
    out.extend(tables.iter().cloned());
    out.sort_by_key(|c| c.id);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_require_acks_for_failures() {
        assert!(validate(&defaults()).is_empty());
        let r = defaults()[0].rules();
        assert!(r.ack_required.to_offnormal && r.ack_required.to_fault);
        assert!(!r.ack_required.to_normal);
        assert_eq!(r.priority.to_normal, 200);
    }

    #[test]
    fn bad_tables_are_named() {
        let mut t = defaults();
        t[1].id = 1;
        t[2].ack_required = vec!["to-off".into()];
        let p = validate(&t);
        assert!(p.iter().any(|p| p.key == "[1].id"), "{p:?}");
        assert!(p.iter().any(|p| p.key == "[2].ack_required[0]"), "{p:?}");
    }

    #[test]
    fn a_file_class_replaces_its_default_and_keeps_the_others() {
        let mut mine = defaults()[1].clone();
        mine.priority = [1, 2, 3];
        let extra = NotificationClassTable {
            id: 9,
            ..defaults()[2].clone()
        };
        let e = effective(&[extra, mine]);
        let ids: Vec<u32> = e.iter().map(|c| c.id).collect();
        assert_eq!(ids, [1, 2, 3, 9]);
        assert_eq!(e[1].priority, [1, 2, 3]);
    }
}
