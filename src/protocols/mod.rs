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

#[cfg(test)]
mod tests {
    use super::*;

    /// A section's `read_only` / `write_allow` become the policy; entries
    /// that are not CIDR networks are reported by index (a wrong type, e.g.
    /// `read_only = 1` or a number in the list, is refused by serde when the
    /// section is read: config/keys_tests.rs).
    #[test]
    fn sections_give_policies_and_bad_networks_are_named() {
        let p = policy_of(false, &["192.0.2.10".into()]);
        assert_eq!(p.check(Some("192.0.2.10".parse().unwrap())), Ok(()));
        assert_eq!(
            p.check(Some("192.0.2.11".parse().unwrap())),
            Err(crate::points::Denial::SourceNotAllowed)
        );
        assert!(policy_of(true, &[]).read_only);
        let bad = policy_problems(&["x".into(), "10.0.0.0/8".into(), "y/99".into()]);
        let keys: Vec<_> = bad.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["write_allow[0]", "write_allow[2]"]);
    }
}
