//! Crabbox's provider labels: the keys every resource we create carries and
//! the value sanitizer. The label set of a desired member is computed in
//! the spec crate (`member_labels`), which knows what a member is.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

/// A resource's labels, sorted by key (see [`crate::label_map`]).
///
/// Keys and values are [`LabelText`]: they are short (63 characters at
/// most on most providers, usually under 24), and kept inline they spare a
/// pond of 10,000 members two allocations per label each time its labels
/// are decoded, copied or projected.
pub use crate::label_map::Labels;

/// A label key or value: a string kept inline up to 24 bytes.
pub type LabelText = compact_str::CompactString;

/// `crabbox=true`: the marker on everything crabbox creates.
pub const CRABBOX: &str = "crabbox";
/// `created_by=crabbox`.
pub const CREATED_BY: &str = "created_by";
/// Provider name.
pub const PROVIDER: &str = "provider";
/// Lease ID, in its provider's shape.
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
/// Unix seconds: `min(last_touched_at + idle, created_at + ttl)` (see
/// [`crate::expiry`]).
pub const EXPIRES_AT: &str = "expires_at";
/// Unix seconds of the last touch (`created_at` at create).
pub const LAST_TOUCHED_AT: &str = "last_touched_at";
/// Integer seconds (the same value as `idle_timeout_secs`).
pub const IDLE_TIMEOUT: &str = "idle_timeout";
/// Crabbox's config profile (`default` unless configured).
pub const PROFILE: &str = "profile";
/// Name of the provider SSH key (Hetzner: the key the server was created with).
pub const PROVIDER_KEY: &str = "provider_key";
/// Target OS: `linux`.
pub const TARGET: &str = "target";
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
/// Ours: the pond member a lease belongs to, when its `slug` label is not
/// the member's slug (Crabbox's collision suffix made it `api-1a2b`).
pub const POND_MEMBER: &str = "pond_member";
/// Ours: why a lease is `failed` (e.g. `setup_step_2_exit_1`).
pub const FAILURE: &str = "failure";

/// What the sanitizer writes for an empty value.
pub const UNKNOWN: &str = "unknown";

/// A label's value unless it is [`UNKNOWN`], what Crabbox's sanitizer writes
/// for an empty value (provider_labels.go:194-215): a `class` or
/// `server_type` nobody chose.
#[must_use]
pub fn known(value: Option<&str>) -> Option<&str> {
    value.filter(|v| *v != UNKNOWN)
}

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

/// Sets `key` to `value` written in place: no new key when the label
/// exists, no new value when the old one's room suffices. A plan rewrites
/// the same few labels of every lease it projects (10,000 in a large pond),
/// and a fresh key and value for each was most of what that cost.
pub fn set(labels: &mut Labels, key: &str, value: impl std::fmt::Display) {
    use std::fmt::Write as _;
    match labels.get_mut(key) {
        Some(old) => {
            old.clear();
            // Writing into a string cannot fail.
            let _ = write!(old, "{value}");
        }
        None => {
            labels.insert(key.into(), compact_str::format_compact!("{value}"));
        }
    }
}

/// Sanitizes a label value as Crabbox does: trim; characters outside
/// `[A-Za-z0-9_.-]` become `_`; cut at 63 bytes; trim `_.-` at both ends;
/// empty becomes `unknown`.
#[must_use]
pub fn sanitize(value: &str) -> LabelText {
    let mapped: LabelText = value
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
        UNKNOWN.into()
    } else {
        trimmed.into()
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

/// First 12 hex digits of the SHA-256 of `value`'s canonical JSON (compact,
/// keys in the order the value serializes them — a `serde_json::Value`
/// hashes as its text). Serializing a value directly writes the same bytes
/// as building its `Value` tree first, without the tree.
#[must_use]
pub fn short_hash<T: serde::Serialize + ?Sized>(value: &T) -> LabelText {
    // Only maps with keys that are not strings fail to serialize; no hashed
    // value has one (a `Value` never fails).
    short_hash_of_text(&serde_json::to_vec(value).unwrap_or_default())
}

/// [`short_hash`] of JSON text already written.
#[must_use]
pub fn short_hash_of_text(text: &[u8]) -> LabelText {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(text);
    let mut hex = LabelText::default();
    for b in digest.iter().take(6) {
        hex.push(char::from(HEX[usize::from(b >> 4)]));
        hex.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    hex
}

/// Unix seconds now.
#[must_use]
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
    fn set_writes_a_new_label_and_rewrites_an_old_one_whatever_its_length() {
        let mut l = Labels::new();
        set(&mut l, EXPIRES_AT, 1_796_553_280_u64);
        set(&mut l, KEEP, true);
        assert_eq!(l[EXPIRES_AT], "1796553280");
        set(&mut l, EXPIRES_AT, 7);
        set(&mut l, KEEP, "a-longer-value-than-before");
        assert_eq!(l[EXPIRES_AT], "7");
        assert_eq!(l[KEEP], "a-longer-value-than-before");
        assert_eq!(l.len(), 2);
    }

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
