//! The labels a desired member implies: the full set a create puts on a new
//! resource, the subset an in-place update changes, and the drift hashes
//! (`pond_spec`, `pond_block`, `pond_setup`) that make a changed spec
//! visible on a lease whose labels cannot hold the spec itself.

use crabbox_core::labels::{
    CLASS, CRABBOX, CREATED_AT, CREATED_BY, EXPIRES_AT, EXPOSED_PORTS, IDLE_TIMEOUT_SECS, KEEP,
    LEASE, Labels, POND, POND_BLOCK, POND_SETUP, POND_SPEC, PROVIDER, SERVER_TYPE, SETUP_PENDING,
    SLUG, STATE, TAILSCALE, TTL_SECS, encode_ports, now_secs, sanitize, short_hash, state,
};

use crate::desired::DesiredMember;

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
