//! The labels a desired member implies: the full set a create puts on a new
//! resource, the subset an in-place update changes, and the drift hashes
//! (`pond_spec`, `pond_block`, `pond_setup`) that make a changed spec
//! visible on a lease whose labels cannot hold the spec itself.

use crabbox_core::expiry;
use crabbox_core::labels::{
    CLASS, CRABBOX, CREATED_AT, CREATED_BY, EXPIRES_AT, EXPOSED_PORTS, IDLE_TIMEOUT,
    IDLE_TIMEOUT_SECS, KEEP, LAST_TOUCHED_AT, LEASE, LabelText, Labels, POND, POND_BLOCK,
    POND_SETUP, POND_SPEC, PROFILE, PROVIDER, PROVIDER_KEY, SERVER_TYPE, SETUP_PENDING, SLUG,
    STATE, TAILSCALE, TARGET, TTL_SECS, encode_ports, sanitize, set as set_label, short_hash,
    short_hash_of_text, state,
};

use std::collections::BTreeMap;

use crabbox_core::provider::ProviderName;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::desired::{DesiredMember, ReadyCheck, Step, SyncSettings};
use crate::model::{Class, Condition};

/// The hashes that make drift visible, from a desired member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecHashes {
    /// Whole member.
    pub spec: LabelText,
    /// Replacement-forcing provider settings.
    pub block: LabelText,
    /// Setup, env, sync, readiness, dependencies.
    pub setup: LabelText,
}

impl SpecHashes {
    /// Hashes of a desired member.
    ///
    /// Each hash is of the JSON text of an object whose keys come in a
    /// fixed order (the fields below, in declaration order): `pond_block`
    /// of `{"provider_block"}`; `pond_setup` of `{"setup", "env", "sync",
    /// "ready", "depends_on"}` plus `"pass_env"` only when it is used (so
    /// that hashes of members without it stay as they were); `pond_spec`
    /// of the member's other settings with both of those objects. The
    /// objects are serialized as they are, not built as JSON trees first:
    /// a plan hashes every member, 10,000 of them in a large pond. The
    /// two inner objects are written once, and `pond_spec`'s text takes
    /// them as written.
    #[must_use]
    pub fn of(m: &DesiredMember) -> Self {
        Hashed::of(m).hashes()
    }
}

/// [`SpecHashes::of`] for the members of a pond one after another, each
/// set of hashed settings hashed once: a large pond's members are mostly
/// alike (written from one template, differing in slug), and comparing a
/// member's settings with the last one's costs a fraction of serializing
/// and digesting them again.
#[derive(Default)]
pub struct SpecHashMemo<'a> {
    last: Option<(Hashed<'a>, SpecHashes)>,
}

impl<'a> SpecHashMemo<'a> {
    /// The hashes of `m`.
    pub fn of(&mut self, m: &'a DesiredMember) -> SpecHashes {
        let hashed = Hashed::of(m);
        match &self.last {
            Some((last, hashes)) if *last == hashed => hashes.clone(),
            _ => {
                let hashes = hashed.hashes();
                self.last = Some((hashed, hashes.clone()));
                hashes
            }
        }
    }
}

/// Everything of a member the hashes cover, borrowed.
#[derive(PartialEq)]
struct Hashed<'a> {
    block: Block<'a>,
    setup: Setup<'a>,
    spec: SpecFields<'a>,
}

impl<'a> Hashed<'a> {
    fn of(m: &'a DesiredMember) -> Self {
        // A size that does not apply to the provider is no part of the member.
        let sized = m.sizes_machine();
        Self {
            block: Block {
                provider_block: m.provider_block.as_ref(),
            },
            setup: Setup {
                setup: &m.setup,
                env: &m.env,
                sync: &m.sync,
                ready: m.ready.as_ref(),
                depends_on: &m.depends_on,
                pass_env: &m.pass_env,
            },
            spec: SpecFields {
                provider: m.provider,
                class: m.class.filter(|_| sized),
                server_type: m.server_type.as_deref().filter(|_| sized),
                tailscale: m.tailscale,
                expose: &m.expose,
                keep: m.keep,
                ttl: m.ttl.as_secs(),
                idle: m.idle_timeout.as_secs(),
            },
        }
    }

    fn hashes(&self) -> SpecHashes {
        // Only maps whose keys are not strings fail to serialize; neither
        // object has one.
        let block = serde_json::value::to_raw_value(&self.block).unwrap_or_default();
        let setup = serde_json::value::to_raw_value(&self.setup).unwrap_or_default();
        let spec = Spec {
            fields: &self.spec,
            block: &block,
            setup: &setup,
        };
        SpecHashes {
            spec: short_hash(&spec),
            block: short_hash_of_text(block.get().as_bytes()),
            setup: short_hash_of_text(setup.get().as_bytes()),
        }
    }
}

/// What `pond_block` hashes.
#[derive(Serialize)]
struct Block<'a> {
    provider_block: Option<&'a serde_json::Value>,
}

/// Equal as the hashes see them: written alike. `Value`'s own equality
/// holds for maps with their keys in another order and for `0.0` and
/// `-0.0`, which are written differently (keys keep their order here).
impl PartialEq for Block<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (self.provider_block, other.provider_block) {
            (Some(a), Some(b)) => written_alike(a, b),
            (a, b) => a.is_none() && b.is_none(),
        }
    }
}

/// Whether two JSON values serialize to the same text.
fn written_alike(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x == y && x.as_f64().map(f64::to_bits) == y.as_f64().map(f64::to_bits)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| written_alike(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((ka, va), (kb, vb))| ka == kb && written_alike(va, vb))
        }
        _ => a == b,
    }
}

/// What `pond_setup` hashes.
#[derive(Serialize, PartialEq)]
struct Setup<'a> {
    setup: &'a [Step],
    env: &'a BTreeMap<String, String>,
    sync: &'a SyncSettings,
    ready: Option<&'a ReadyCheck>,
    depends_on: &'a [(String, Condition)],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pass_env: &'a [String],
}

/// What `pond_spec` hashes: the member's own settings, then the two
/// inner objects as written.
#[derive(Serialize)]
struct Spec<'a> {
    #[serde(flatten)]
    fields: &'a SpecFields<'a>,
    /// [`Block`], as written.
    block: &'a RawValue,
    /// [`Setup`], as written.
    setup: &'a RawValue,
}

/// The member's own settings in `pond_spec`.
#[derive(Serialize, PartialEq)]
struct SpecFields<'a> {
    provider: ProviderName,
    class: Option<Class>,
    #[serde(rename = "type")]
    server_type: Option<&'a str>,
    tailscale: bool,
    expose: &'a [u16],
    keep: bool,
    ttl: u64,
    idle: u64,
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
        l.insert(k.into(), sanitize(v));
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
    spec_hash: LabelText,
    now: u64,
) -> Labels {
    let mut l = current.clone();
    if m.expose.is_empty() {
        l.remove(EXPOSED_PORTS);
    } else {
        set_label(&mut l, EXPOSED_PORTS, encode_ports(&m.expose));
    }
    set_label(&mut l, KEEP, m.keep);
    set_label(&mut l, POND_SPEC, spec_hash);
    for (k, v) in [
        (CREATED_BY, "crabbox"),
        (CLASS, m.class.map(|c| c.as_str()).unwrap_or_default()),
        (PROFILE, PROFILE_DEFAULT),
        (PROVIDER_KEY, ""),
        (TARGET, TARGET_LINUX),
        (SERVER_TYPE, m.server_type.as_deref().unwrap_or_default()),
    ] {
        if !l.contains_key(k) {
            l.insert(k.into(), sanitize(v));
        }
    }
    let ttl = (!m.ttl.is_zero()).then_some(m.ttl);
    let idle = (!m.idle_timeout.is_zero()).then_some(m.idle_timeout);
    expiry::touch_in_place(&mut l, now, ttl, idle);
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hashes as they were first defined: JSON trees built with
    /// `json!`, then hashed. Leases carry them as labels, so the direct
    /// serialization must give exactly these.
    fn tree_hashes(m: &DesiredMember) -> SpecHashes {
        let block = serde_json::json!({ "provider_block": m.provider_block });
        let mut setup = serde_json::json!({
            "setup": m.setup, "env": m.env, "sync": m.sync, "ready": m.ready, "depends_on": m.depends_on,
        });
        if !m.pass_env.is_empty() {
            setup["pass_env"] = serde_json::json!(m.pass_env);
        }
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
        SpecHashes {
            spec: short_hash(&spec),
            block: short_hash(&block),
            setup: short_hash(&setup),
        }
    }

    #[test]
    fn hashes_are_those_of_the_json_trees() {
        let yaml = r#"
version: 1
pond: demo
defaults: { provider: hetzner }
members:
  - slug: plain
  - slug: sized
    class: beast
    hetzner: { location: nbg1, image: debian-12 }
  - slug: typed
    type: cx52
    expose: [8080, 22]
    keep: true
    ttl: 3h
    idle_timeout: 20m
  - slug: busy
    provider: local
    env: { B: "2", A: "1" }
    pass_env: [GITHUB_TOKEN]
    setup: ["make deps", { run: "make", background: true }]
    ready: { http: "http://localhost:8080/health" }
    depends_on: [plain, sized]
    sync: false
"#;
        let loaded = crate::load::load_str(
            "pond.yaml",
            yaml,
            std::path::Path::new("."),
            &crate::interpolate::Variables::fixed(vec![]),
        );
        let pond = loaded
            .pond
            .unwrap_or_else(|| panic!("valid spec: {:?}", loaded.diagnostics));
        let mut members = pond.members;
        assert_eq!(members.len(), 4);
        // What the spec cannot say yet, as the hashes would see it.
        let mut tailnet = members[2].clone();
        tailnet.tailscale = true;
        tailnet.class = Some(Class::Beast);
        members.push(tailnet);
        for m in &members {
            assert_eq!(SpecHashes::of(m), tree_hashes(m), "member {}", m.slug);
        }
        // The memo hashes alike members once, and tells unlike ones apart
        // even when they differ in one setting only.
        let mut twin = members[3].clone();
        twin.slug = "busy-twin".to_owned();
        let mut other = twin.clone();
        other.env.insert("A".to_owned(), "3".to_owned());
        let mut memo = SpecHashMemo::default();
        for m in members.iter().chain([&twin, &other, &twin, &members[0]]) {
            assert_eq!(memo.of(m), tree_hashes(m), "member {}", m.slug);
        }
        assert_eq!(memo.of(&twin), memo.of(&members[3]));
        assert_ne!(memo.of(&other).setup, memo.of(&twin).setup);
        // Provider blocks equal as values but written differently: keys in
        // another order, `0.0` and `-0.0`. The memo hashes each as written.
        let with_block = |block: serde_json::Value| {
            let mut m = members[1].clone();
            m.provider_block = Some(block);
            m
        };
        let blocks = [
            with_block(serde_json::json!({"location": "nbg1", "image": "debian-12", "n": 0.0})),
            with_block(serde_json::json!({"image": "debian-12", "location": "nbg1", "n": 0.0})),
            with_block(serde_json::json!({"image": "debian-12", "location": "nbg1", "n": -0.0})),
            with_block(serde_json::json!({"image": "debian-12", "location": "nbg1", "n": -0.0})),
        ];
        for m in &blocks {
            assert_eq!(memo.of(m), SpecHashes::of(m));
        }
        assert_ne!(
            SpecHashes::of(&blocks[0]).block,
            SpecHashes::of(&blocks[1]).block
        );
        assert_ne!(
            SpecHashes::of(&blocks[1]).block,
            SpecHashes::of(&blocks[2]).block
        );
    }
}
