//! `[api]`: the REST API's authentication policy. Its type lives here, not in `api`, because `api` sits above `config` (it re-validates operator route and profile documents with config's parsers).

use std::time::Duration;

use crate::section::{Problem, Section};

/// `[api]` settings.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    pub require_auth: bool,
    pub anonymous_read: bool,
    #[serde(with = "crate::section::duration")]
    pub token_ttl: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            require_auth: false,
            anonymous_read: true,
            token_ttl: Duration::from_secs(3600),
        }
    }
}

impl Section for ApiConfig {
    fn validate(&self) -> Vec<Problem> {
        if self.token_ttl < Duration::from_secs(60) {
            return vec![Problem::new(
                "token_ttl",
                "expected a duration of at least 1min",
            )];
        }
        Vec::new()
    }
}
