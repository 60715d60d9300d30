//! Crabbox's provider labels: the keys every resource we create carries, the
//! value sanitizer, and the label set computed for a desired member.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::spec::desired::DesiredMember;

/// A resource's labels, sorted by key.
pub type Labels = BTreeMap<String, String>;

/// `crabbox=true`: the marker on everything crabbox creates.
pub const CRABBOX: &str = "crabbox";
/// `created_by=crabbox`.
pub const CREATED_BY: &str = "created_by";
/// Provider name.
pub const PROVIDER: &str = "provider";
/// Lease ID, `cbx_` + 12 hex.
pub const LEASE: &str = "lease";
/// Normalized slug.
pub const SLUG: &str = "slug";
/// Normalized pond name.
pub const POND: &str = "pond";
/// Exposed ports joined by `-` (`5432-8080`).
pub const EXPOSED_PORTS: &str = "crabbox_exposed_ports";
/// `true`/`false`.
pub const KEEP: &str = "keep";
/// `leased` at create, `ready` after setup, `failed` when setup failed.
pub const STATE: &str = "state";
/// Unix seconds.
pub const CREATED_AT: &str = "created_at";
/// Unix seconds: `created_at + ttl`.
pub const EXPIRES_AT: &str = "expires_at";
/// Integer seconds.
pub const TTL_SECS: &str = "ttl_secs";
/// Integer seconds.
pub const IDLE_TIMEOUT_SECS: &str = "idle_timeout_secs";
/// Size class.
pub const CLASS: &str = "class";
/// Exact machine type.
pub const SERVER_TYPE: &str = "server_type";
/// `true` when Tailscale was requested.
pub const TAILSCALE: &str = "tailscale";
/// Ours: hash of the member's whole normalized spec (drift at a glance).
pub const POND_SPEC: &str = "pond_spec";
/// Ours: hash of the fields that force a replacement (provider block, image…).
pub const POND_BLOCK: &str = "pond_block";
/// Ours: hash of setup, env, sync and ready; `pending` until setup succeeded.
pub const POND_SETUP: &str = "pond_setup";
/// Ours: why a lease is `failed` (e.g. `setup_step_2_exit_1`).
pub const FAILURE: &str = "failure";

/// `pond_setup` before setup has completed.
pub const SETUP_PENDING: &str = "pending";

/// Lease states as labels.
pub mod state {
    /// Created, not yet set up.
    pub const LEASED: &str = "leased";
    /// Setup and readiness done.
    pub const READY: &str = "ready";
    /// Setup or readiness failed: tainted, replaced by the next apply.
    pub const FAILED: &str = "failed";
}

/// Sanitizes a label value as Crabbox does: trim; characters outside
/// `[A-Za-z0-9_.-]` become `_`; cut at 63 bytes; trim `_.-` at both ends;
/// empty becomes `unknown`.
#[must_use]
pub fn sanitize(value: &str) -> String {
    let mapped: String = value
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let cut = &mapped[..mapped.len().min(63)];
    let trimmed = cut.trim_matches(|c| matches!(c, '_' | '.' | '-'));
    if trimmed.is_empty() {
        "unknown".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// `5432-8080` for `[5432, 8080]`; empty for none.
#[must_use]
pub fn encode_ports(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join("-")
}

/// Parses `crabbox_exposed_ports`, skipping bad tokens as Crabbox does.
#[must_use]
pub fn decode_ports(value: &str) -> Vec<u16> {
    let mut ports: Vec<u16> = value
        .split(['-', ','])
        .filter_map(|t| t.trim().parse().ok())
        .filter(|p| *p > 0)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// First 12 hex digits of the SHA-256 of `value`'s canonical JSON.
#[must_use]
pub fn short_hash(value: &serde_json::Value) -> String {
    let digest = Sha256::digest(value.to_string().as_bytes());
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// The hashes that make drift visible, from a desired member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecHashes {
    /// Whole member.
    pub spec: String,
    /// Replacement-forcing provider settings.
    pub block: String,
    /// Setup, env, sync, readiness, dependencies.
    pub setup: String,
}

impl SpecHashes {
    /// Hashes of a desired member.
    #[must_use]
    pub fn of(m: &DesiredMember) -> Self {
        let block = serde_json::json!({ "provider_block": m.provider_block });
        let mut setup = serde_json::json!({
            "setup": m.setup, "env": m.env, "sync": m.sync, "ready": m.ready, "depends_on": m.depends_on,
        });
        // Only when used, so that hashes of members without it stay as they were.
        if !m.pass_env.is_empty() {
            setup["pass_env"] = serde_json::json!(m.pass_env);
        }
        let spec = serde_json::json!({
            "provider": m.provider, "class": m.class, "type": m.server_type, "tailscale": m.tailscale,
            "expose": m.expose, "keep": m.keep, "ttl": m.ttl.as_secs(), "idle": m.idle_timeout.as_secs(),
            "block": block, "setup": setup,
        });
        Self {
            spec: short_hash(&spec),
            block: short_hash(&block),
            setup: short_hash(&setup),
        }
    }
}

/// Unix seconds now.
#[must_use]
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The full label set for creating `member`'s lease (state `leased`, setup pending).
#[must_use]
pub fn for_create(pond: &str, lease_id: &str, m: &DesiredMember, now: u64) -> Labels {
    let hashes = SpecHashes::of(m);
    let mut l = Labels::new();
    let mut put = |k: &str, v: &str| {
        l.insert(k.to_owned(), sanitize(v));
    };
    put(CRABBOX, "true");
    put(CREATED_BY, "crabbox");
    put(PROVIDER, m.provider.as_str());
    put(LEASE, lease_id);
    put(SLUG, &m.slug);
    put(POND, pond);
    if !m.expose.is_empty() {
        put(EXPOSED_PORTS, &encode_ports(&m.expose));
    }
    put(KEEP, if m.keep { "true" } else { "false" });
    put(STATE, state::LEASED);
    put(CREATED_AT, &now.to_string());
    put(EXPIRES_AT, &(now + m.ttl.as_secs()).to_string());
    put(TTL_SECS, &m.ttl.as_secs().to_string());
    put(IDLE_TIMEOUT_SECS, &m.idle_timeout.as_secs().to_string());
    if let Some(class) = m.class {
        put(CLASS, class.as_str());
    }
    if let Some(t) = &m.server_type {
        put(SERVER_TYPE, t);
    }
    if m.tailscale {
        put(TAILSCALE, "true");
    }
    put(POND_SPEC, &hashes.spec);
    put(POND_BLOCK, &hashes.block);
    put(POND_SETUP, SETUP_PENDING);
    l
}

/// The labels an in-place update changes on an existing lease: exposed
/// ports, keep, ttl/expiry and the spec hash. `created_at` is kept.
#[must_use]
pub fn for_update(current: &Labels, m: &DesiredMember) -> Labels {
    let mut l = current.clone();
    let created: u64 = current
        .get(CREATED_AT)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(now_secs);
    if m.expose.is_empty() {
        l.remove(EXPOSED_PORTS);
    } else {
        l.insert(EXPOSED_PORTS.to_owned(), encode_ports(&m.expose));
    }
    l.insert(KEEP.to_owned(), m.keep.to_string());
    l.insert(TTL_SECS.to_owned(), m.ttl.as_secs().to_string());
    l.insert(
        IDLE_TIMEOUT_SECS.to_owned(),
        m.idle_timeout.as_secs().to_string(),
    );
    l.insert(
        EXPIRES_AT.to_owned(),
        (created + m.ttl.as_secs()).to_string(),
    );
    l.insert(POND_SPEC.to_owned(), SpecHashes::of(m).spec);
    l
}

/// Seconds as a `Duration` from a label.
#[must_use]
pub fn secs(labels: &Labels, key: &str) -> Option<Duration> {
    labels
        .get(key)
        .and_then(|v| v.parse().ok())
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitizer_matches_crabbox() {
        assert_eq!(sanitize("  hello world "), "hello_world");
        assert_eq!(sanitize("tag:cbx,x"), "tag_cbx_x");
        assert_eq!(sanitize("__a.b-"), "a.b");
        assert_eq!(sanitize(""), "unknown");
        assert_eq!(sanitize("///"), "unknown");
        assert_eq!(sanitize(&"x".repeat(80)).len(), 63);
        assert_eq!(sanitize("pr-42"), "pr-42");
    }

    #[test]
    fn ports_round_trip() {
        assert_eq!(encode_ports(&[5432, 8080]), "5432-8080");
        assert_eq!(decode_ports("8080-5432-x-0"), vec![5432, 8080]);
        assert_eq!(decode_ports(""), Vec::<u16>::new());
    }
}
