//! The building-automation protocol servers; each reads and writes only the point database.

pub mod bacnet;
pub mod haystack;
pub mod modbus;
pub mod mqtt;

use std::str::FromStr;

use crate::points::{Cidr, WritePolicy};
use crate::section::Problem;

/// `write_allow` entries that are not CIDR networks (`[bacnet]`, `[modbus]`).
pub fn policy_problems(write_allow: &[String]) -> Vec<Problem> {
    write_allow
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            Cidr::from_str(s)
                .err()
                .map(|e| Problem::new(format!("write_allow[{i}]"), e))
        })
        .collect()
}

/// The write policy of a protocol section's `read_only` / `write_allow`
/// (entries that do not parse are reported by `policy_problems`).
pub fn policy_of(read_only: bool, write_allow: &[String]) -> WritePolicy {
    WritePolicy {
        read_only,
        write_allow: write_allow
            .iter()
            .filter_map(|s| Cidr::from_str(s).ok())
            .collect(),
    }
}
