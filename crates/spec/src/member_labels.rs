//! The labels a desired member implies: the full set a create puts on a new
//! resource, the subset an in-place update changes, and the drift hashes
//! (`pond_spec`, `pond_block`, `pond_setup`) that make a changed spec
//! visible on a lease whose labels cannot hold the spec itself.

use crabbox_core::expiry;
use crabbox_core::labels::{
    CLASS, CRABBOX, CREATED_AT, CREATED_BY, EXPIRES_AT, EXPOSED_PORTS, IDLE_TIMEOUT,
    IDLE_TIMEOUT_SECS, KEEP, LAST_TOUCHED_AT, LEASE, Labels, POND, POND_BLOCK, POND_SETUP,
    POND_SPEC, PROFILE, PROVIDER, PROVIDER_KEY, SERVER_TYPE, SETUP_PENDING, SLUG, STATE, TAILSCALE,
    TARGET, TTL_SECS, encode_ports, sanitize, short_hash, state,
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
        // A size that does not apply to the provider is no part of the member.
        let (class, server_type) = if m.sizes_machine() {
            (m.class, m.server_type.clone())
        } else {
            (None, None)
        };
        let spec = serde_json::json!({
            "provider": m.provider, "class": class, "type": server_type, "tailscale": m.tailscale,
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

/// Crabbox's profile when none is configured (config.go:2894); crabbox has
/// no profiles.
const PROFILE_DEFAULT: &str = "default";
/// The only target crabbox creates.
const TARGET_LINUX: &str = "linux";

/// Integer seconds as Crabbox writes a duration label
/// (`durationSecondsLabel`, provider_labels.go:144-149): empty for zero,
/// which the sanitizer turns into `unknown`.
fn secs_label(d: std::time::Duration) -> String {
    if d.is_zero() {
        String::new()
    } else {
        d.as_secs().to_string()
    }
}

/// The full label set for creating `member`'s lease (state `leased`, setup
/// pending): every key of Crabbox's `directLeaseLabels`
/// (provider_labels.go:10-65), every value through its sanitizer, plus our
/// `pond_*` hashes. `provider_key` and `server_type` are `unknown` until the
/// provider knows them (Hetzner sets both in its create call).
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
    put(CLASS, m.class.map(|c| c.as_str()).unwrap_or_default());
    put(PROFILE, PROFILE_DEFAULT);
    put(PROVIDER_KEY, "");
    put(TARGET, TARGET_LINUX);
    put(SERVER_TYPE, m.server_type.as_deref().unwrap_or_default());
    put(CREATED_AT, &now.to_string());
    put(LAST_TOUCHED_AT, &now.to_string());
    put(IDLE_TIMEOUT, &secs_label(m.idle_timeout));
    put(IDLE_TIMEOUT_SECS, &secs_label(m.idle_timeout));
    put(TTL_SECS, &secs_label(m.ttl));
    put(
        EXPIRES_AT,
        &expiry::rule(now, now, m.ttl, m.idle_timeout).to_string(),
    );
    if m.tailscale {
        put(TAILSCALE, "true");
    }
    put(POND_SPEC, &hashes.spec);
    put(POND_BLOCK, &hashes.block);
    put(POND_SETUP, SETUP_PENDING);
    l
}

/// The labels an in-place update changes on an existing lease: exposed
/// ports, keep and the spec hash, then a touch as Crabbox's
/// (`expiry::touch`: `last_touched_at` = `now`, ttl and idle timeout from the
/// spec, `expires_at` recomputed, `created_at` and every other key kept).
/// Crabbox's keys a lease of an earlier crabbox version lacks are added as
/// its create would have written them.
#[must_use]
pub fn for_update(current: &Labels, m: &DesiredMember, now: u64) -> Labels {
    for_update_hashed(current, m, SpecHashes::of(m).spec, now)
}

/// [`for_update`] with the member's spec hash already known
/// (`SpecHashes::of(m).spec`): hashing builds a JSON tree of the member,
/// and a plan of 10,000 members should not pay for it twice.
#[must_use]
pub fn for_update_hashed(
    current: &Labels,
    m: &DesiredMember,
    spec_hash: String,
    now: u64,
) -> Labels {
    let mut l = current.clone();
    if m.expose.is_empty() {
        l.remove(EXPOSED_PORTS);
    } else {
        l.insert(EXPOSED_PORTS.to_owned(), encode_ports(&m.expose));
    }
    l.insert(KEEP.to_owned(), m.keep.to_string());
    l.insert(POND_SPEC.to_owned(), spec_hash);
    for (k, v) in [
        (CREATED_BY, "crabbox"),
        (CLASS, m.class.map(|c| c.as_str()).unwrap_or_default()),
        (PROFILE, PROFILE_DEFAULT),
        (PROVIDER_KEY, ""),
        (TARGET, TARGET_LINUX),
        (SERVER_TYPE, m.server_type.as_deref().unwrap_or_default()),
    ] {
        l.entry(k.to_owned()).or_insert_with(|| sanitize(v));
    }
    let ttl = (!m.ttl.is_zero()).then_some(m.ttl);
    let idle = (!m.idle_timeout.is_zero()).then_some(m.idle_timeout);
    expiry::touch(&l, now, ttl, idle)
}
