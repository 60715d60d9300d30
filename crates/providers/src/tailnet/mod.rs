//! The Tailscale plane: what crabbox asks of a tailnet's control plane.
//!
//! - [`policy`]: the pond's rows in the tailnet policy file (read, merged
//!   into HuJSON without losing the user's comments);
//! - [`enroll`]: joining a new server — labels, cloud-init, auth key;
//! - [`hosts`]: the script that gives members `<slug>.cbx` names;
//! - [`api`]: Tailscale's REST API — the policy file with its ETag, written
//!   back with `If-Match` — and [`api::ensure_pond_rows`], the opt-in ACL
//!   bootstrap (`TS_API_KEY` and `CRABBOX_POND_ACL_BOOTSTRAP=1`).
//!
//! The settings are Crabbox's (internal/cli/pond_acl.go): the API at
//! `CRABBOX_TS_API_URL`, else `TS_API_URL`, else Tailscale's; the tailnet
//! `TS_TAILNET`, else `-` (the key's own tailnet). The API key is read from
//! the environment and sent only to that URL; it is never printed.

pub mod api;
pub mod enroll;
pub mod hosts;
pub mod policy;

use std::collections::HashMap;

/// Tailscale's hosted API.
pub const DEFAULT_API_URL: &str = "https://api.tailscale.com";
/// The API key's variable.
pub const API_KEY_VAR: &str = "TS_API_KEY";
/// Turns the ACL bootstrap on (`1`, `true`, `yes`, `on`: Crabbox's
/// `truthyEnv`, lease_flags.go:420).
pub const BOOTSTRAP_VAR: &str = "CRABBOX_POND_ACL_BOOTSTRAP";

/// Where the tailnet's API is and which tailnet to ask.
#[derive(Clone, PartialEq, Eq)]
pub struct Settings {
    /// The API's base URL, without a trailing `/`.
    pub api_url: String,
    /// The tailnet (`-`: the API key's own).
    pub tailnet: String,
    /// `TS_API_KEY`, when set.
    api_key: Option<String>,
    /// Whether the ACL bootstrap may write the policy.
    pub bootstrap: bool,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("api_url", &self.api_url)
            .field("tailnet", &self.tailnet)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("bootstrap", &self.bootstrap)
            .finish()
    }
}

impl Settings {
    /// The settings the environment `env` gives.
    #[must_use]
    pub fn from_env(env: &HashMap<String, String>) -> Self {
        let get = |k: &str| {
            env.get(k)
                .map(|v| v.trim().trim_end_matches('/').to_owned())
                .filter(|v| !v.is_empty())
        };
        Self {
            api_url: get("CRABBOX_TS_API_URL")
                .or_else(|| get("TS_API_URL"))
                .unwrap_or_else(|| DEFAULT_API_URL.to_owned()),
            tailnet: get("TS_TAILNET").unwrap_or_else(|| "-".to_owned()),
            api_key: get(API_KEY_VAR),
            bootstrap: get(BOOTSTRAP_VAR)
                .is_some_and(|v| matches!(v.to_lowercase().as_str(), "1" | "true" | "yes" | "on")),
        }
    }

    /// The settings of this process's environment.
    #[must_use]
    pub fn from_process() -> Self {
        Self::from_env(&std::env::vars().collect())
    }

    /// Whether an API key is set.
    #[must_use]
    pub fn has_api_key(&self) -> bool {
        self.api_key.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_env::env;

    #[test]
    fn crabbox_s_variables_in_crabbox_s_order() {
        let s = Settings::from_env(&env(&[]));
        assert_eq!(s.api_url, DEFAULT_API_URL);
        assert_eq!(s.tailnet, "-");
        assert!(!s.has_api_key() && !s.bootstrap);
        let s = Settings::from_env(&env(&[
            ("TS_API_URL", "https://hs.example/"),
            ("CRABBOX_TS_API_URL", " https://mine.example// "),
            ("TS_TAILNET", "example.com"),
            ("TS_API_KEY", "tskey-api-secret"),
            ("CRABBOX_POND_ACL_BOOTSTRAP", "1"),
        ]));
        assert_eq!(s.api_url, "https://mine.example");
        assert_eq!(s.tailnet, "example.com");
        assert!(s.has_api_key() && s.bootstrap);
        assert!(!format!("{s:?}").contains("secret"), "{s:?}");
        let s = Settings::from_env(&env(&[
            ("TS_API_URL", "https://hs.example/"),
            ("CRABBOX_POND_ACL_BOOTSTRAP", "Yes"),
        ]));
        assert_eq!(s.api_url, "https://hs.example");
        assert!(s.bootstrap, "Crabbox's truthy values");
        let s = Settings::from_env(&env(&[("CRABBOX_POND_ACL_BOOTSTRAP", "0")]));
        assert!(!s.bootstrap);
    }
}
