//! Claims, in Crabbox's format: by default local files in Crabbox's place,
//! `<state>/claims/<leaseID>.json`, one per lease, written atomically under a
//! per-lease lock (`<state>/claim-locks/<leaseID>.json.lock`); with the
//! PostgreSQL state backend, rows of `crabbox_claims` written by
//! compare-and-swap on their revision. Fields we do not know are kept as they
//! are, so the Go CLI's data survives our writes; our own fields live in the
//! claim's labels, so they survive Crabbox's (see [`Claim`]).

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::state_pg::{self, ClaimRow, Database, StateError};
use compact_str::format_compact;
use crabbox_core::labels::{LabelText, Labels};
use crabbox_core::lease::is_claim_id;
use crabbox_core::state_url::{is_postgres_url, redact};
use crabbox_fs::atomic_file;
use crabbox_fs::dir_files::DirFiles;

/// A claim's `state` field (ours): written before the create call so a crash
/// between the two is found by the next run.
pub mod claim_state {
    /// Written before the provider's create call.
    pub const PENDING: &str = "pending";
    /// The resource exists and the claim records it.
    pub const ACTIVE: &str = "active";
}

/// Claim field (ours) holding a URL-bridge lease's shares, so discovery can
/// show them without asking the provider again.
pub const SHARES_FIELD: &str = "crabboxShares";

/// One claim file.
///
/// Crabbox rewrites a claim through a fixed struct (claim.go:23-61) and
/// drops every key it does not know (§1.4 of docs/crabbox-compat.md). So a
/// claim is stored with Crabbox's fields at the top level and everything of
/// ours folded into its `labels` map (a `map[string]string` Crabbox keeps):
/// `state` and any extra field that is not one of Crabbox's become the
/// label `crabbox_claim.<field>` (strings as they are) or
/// `crabbox_claim_json.<field>` (other JSON values, as JSON text). Reading
/// unfolds them again, so in memory `labels` holds only the lease's labels;
/// claims of earlier versions, with these fields at the top level, are
/// read as before and folded on their next write.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Claim {
    /// The lease ID; must equal the file name.
    pub lease_id: String,
    /// Random 16-byte hex, new on every write.
    pub revision: String,
    /// Slug.
    pub slug: String,
    /// Provider name.
    pub provider: String,
    /// Provider resource ID.
    pub cloud_id: String,
    /// Pond name.
    pub pond: String,
    /// Repository the lease was claimed for (always written, as Crabbox does).
    pub repo_root: String,
    /// RFC 3339 (always written).
    pub claimed_at: String,
    /// RFC 3339 (always written).
    pub last_used_at: String,
    /// Idle timeout in seconds (left out when 0, as Crabbox does).
    pub idle_timeout_seconds: u64,
    /// Copy of the provider labels (for label-less providers: the labels);
    /// left out when empty, as Crabbox does.
    pub labels: Labels,
    /// SSH host.
    pub ssh_host: String,
    /// SSH port: a JSON number, left out when 0, as Crabbox writes it (its
    /// Go type is `int`; a string there makes Crabbox refuse every claim on
    /// the machine). Claims written by earlier crabbox versions hold a
    /// string, which is still read.
    pub ssh_port: u16,
    /// URL-bridge endpoint.
    pub bridge_url: String,
    /// Ours: `pending` or `active` (stored as the label `crabbox_claim.state`).
    pub state: String,
    /// Every other field: Crabbox's (kept at the top level, verbatim) and
    /// ours (folded into the labels when stored).
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// A claim as it is stored: Crabbox's fields at the top level, ours
/// folded into `labels` (see [`Claim`]). Read whole, with all its labels
/// ([`Labels`], for a [`Claim`]), or as a head, with ours alone
/// ([`FoldedLabels`]) and the text fields a [`ClaimHead`] has no room for
/// checked but not copied (`T` = [`SkippedValue`]).
#[derive(Serialize, Deserialize, Default)]
#[serde(
    rename_all = "camelCase",
    bound(serialize = "L: Serialize + ClaimLabels, T: Serialize + Default + PartialEq")
)]
struct ClaimWire<L = Labels, T = String> {
    /// The lease ID; must equal the file name.
    #[serde(rename = "leaseID")]
    lease_id: String,
    /// Random 16-byte hex, new on every write.
    #[serde(default, skip_serializing_if = "is_default")]
    revision: T,
    /// Slug.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    slug: String,
    /// Provider name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    provider: String,
    /// Provider resource ID.
    #[serde(rename = "cloudID", default, skip_serializing_if = "String::is_empty")]
    cloud_id: String,
    /// Pond name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pond: String,
    /// Repository the lease was claimed for (always written, as Crabbox does).
    #[serde(default)]
    repo_root: T,
    /// RFC 3339 (always written).
    #[serde(default)]
    claimed_at: T,
    /// RFC 3339 (always written).
    #[serde(default)]
    last_used_at: T,
    /// Idle timeout in seconds (left out when 0, as Crabbox does).
    #[serde(default, skip_serializing_if = "is_default")]
    idle_timeout_seconds: u64,
    /// Copy of the provider labels (for label-less providers: the labels);
    /// left out when empty, as Crabbox does.
    #[serde(default, skip_serializing_if = "ClaimLabels::is_empty")]
    labels: L,
    /// SSH host.
    #[serde(default, skip_serializing_if = "is_default")]
    ssh_host: T,
    /// SSH port: a JSON number, left out when 0, as Crabbox writes it (its
    /// Go type is `int`; a string there makes Crabbox refuse every claim on
    /// the machine). Claims written by earlier crabbox versions hold a
    /// string, which is still read.
    #[serde(
        default,
        skip_serializing_if = "is_default",
        deserialize_with = "port_number_or_text"
    )]
    ssh_port: u16,
    /// URL-bridge endpoint.
    #[serde(
        rename = "bridgeURL",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    bridge_url: String,
    /// Everything else Crabbox writes, kept verbatim.
    #[serde(flatten)]
    extra: BTreeMap<String, serde_json::Value>,
}

/// Crabbox's claim fields (claim.go:23-61) that [`Claim`] has no field for:
/// an extra field with one of these names stays at the top level.
const CRABBOX_EXTRA_FIELDS: [&str; 21] = [
    "cloudNumericID",
    "cloudImmutableID",
    "providerScope",
    "staticHost",
    "staticUser",
    "staticPort",
    "staticWorkRoot",
    "targetOS",
    "windowsMode",
    "tailscaleIPv4",
    "tailscaleFQDN",
    "tailscaleHostname",
    "tailscaleTags",
    "tailscaleLoginURL",
    "tailscaleExitNode",
    "tailscaleExitLAN",
    "coordinatorRegistrationURL",
    "runtimeAdapterRegistrationID",
    "runtimeAdapterPendingRegistrationID",
    "cacheVolumes",
    "fixedCreateIntent",
];
/// Label prefix of our string fields folded into a claim's labels.
const FOLDED: &str = "crabbox_claim.";
/// Label prefix of our other JSON fields, stored as JSON text.
const FOLDED_JSON: &str = "crabbox_claim_json.";
/// Our `state` field's name.
const STATE_FIELD: &str = "state";

impl Serialize for Claim {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut labels = self.labels.clone();
        let mut extra = BTreeMap::new();
        if !self.state.is_empty() {
            labels.insert(
                format_compact!("{FOLDED}{STATE_FIELD}"),
                self.state.as_str().into(),
            );
        }
        for (key, value) in &self.extra {
            if CRABBOX_EXTRA_FIELDS.contains(&key.as_str()) {
                extra.insert(key.clone(), value.clone());
            } else if let serde_json::Value::String(text) = value {
                labels.insert(format_compact!("{FOLDED}{key}"), text.as_str().into());
            } else {
                labels.insert(
                    format_compact!("{FOLDED_JSON}{key}"),
                    value.to_string().into(),
                );
            }
        }
        ClaimWire {
            lease_id: self.lease_id.clone(),
            revision: self.revision.clone(),
            slug: self.slug.clone(),
            provider: self.provider.clone(),
            cloud_id: self.cloud_id.clone(),
            pond: self.pond.clone(),
            repo_root: self.repo_root.clone(),
            claimed_at: self.claimed_at.clone(),
            last_used_at: self.last_used_at.clone(),
            idle_timeout_seconds: self.idle_timeout_seconds,
            labels,
            ssh_host: self.ssh_host.clone(),
            ssh_port: self.ssh_port,
            bridge_url: self.bridge_url.clone(),
            extra,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Claim {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = ClaimWire::<Labels>::deserialize(deserializer)?;
        let Unfolded {
            labels,
            state,
            extra,
        } = unfold(wire.labels, wire.extra);
        Ok(Self {
            lease_id: wire.lease_id,
            revision: wire.revision,
            slug: wire.slug,
            provider: wire.provider,
            cloud_id: wire.cloud_id,
            pond: wire.pond,
            repo_root: wire.repo_root,
            claimed_at: wire.claimed_at,
            last_used_at: wire.last_used_at,
            idle_timeout_seconds: wire.idle_timeout_seconds,
            labels,
            ssh_host: wire.ssh_host,
            ssh_port: wire.ssh_port,
            bridge_url: wire.bridge_url,
            state,
            extra,
        })
    }
}

/// What a stored claim's labels and extra fields hold once our folded
/// fields are taken back out of the labels.
struct Unfolded {
    /// The lease's own labels.
    labels: Labels,
    /// Our `state` field.
    state: String,
    /// Crabbox's fields we have no field for, and ours.
    extra: BTreeMap<String, serde_json::Value>,
}

/// Takes our fields (`crabbox_claim.*`, `crabbox_claim_json.*`) out of a
/// stored claim's labels. The labels stay as they were read: rebuilding
/// the map of every claim's twenty-odd labels was a quarter of reading the
/// claims of a 10,000-member pond.
fn unfold(mut labels: Labels, mut extra: BTreeMap<String, serde_json::Value>) -> Unfolded {
    let mut state = top_level_state(&mut extra);
    if let Some(folded) = take_folded(&mut labels, |field, value| {
        extra.insert(field, value);
    }) {
        state = folded;
    }
    Unfolded {
        labels,
        state,
        extra,
    }
}

/// The `state` earlier versions wrote at the top level, taken out of the
/// extra fields (left there when it is not a string).
fn top_level_state(extra: &mut BTreeMap<String, serde_json::Value>) -> String {
    match extra.remove(STATE_FIELD) {
        Some(serde_json::Value::String(state)) => state,
        Some(other) => {
            extra.insert(STATE_FIELD.to_owned(), other);
            String::new()
        }
        None => String::new(),
    }
}

/// Takes our folded fields out of `labels`: our `state`, if folded, is
/// returned; every other field is given to `put` with its value (strings
/// as they are, `crabbox_claim_json.*` parsed).
fn take_folded(
    labels: &mut Labels,
    mut put: impl FnMut(String, serde_json::Value),
) -> Option<String> {
    let mut state = None;
    for (key, value) in labels.take_where(is_folded) {
        if let Some(field) = key.strip_prefix(FOLDED) {
            if field == STATE_FIELD {
                state = Some(value.into_string());
            } else {
                put(
                    field.to_owned(),
                    serde_json::Value::String(value.into_string()),
                );
            }
        } else if let Some(field) = key.strip_prefix(FOLDED_JSON) {
            let parsed = serde_json::from_str(&value)
                .unwrap_or_else(|_| serde_json::Value::String(value.into_string()));
            put(field.to_owned(), parsed);
        }
    }
    state
}

/// Whether a claim label holds one of our folded fields.
fn is_folded(key: &str) -> bool {
    key.starts_with(FOLDED) || key.starts_with(FOLDED_JSON)
}

/// A claim as discovery reads it: everything [`Claim`] holds except the
/// copy of the lease's labels, which discovery takes from the provider's
/// listing. Those labels are skipped as they are read — each key compared
/// in place, no value copied — which was most of reading the claims of a
/// 10,000-member pond (BENCHMARKS.md, issue 15). It cannot be written back:
/// a claim to change is loaded whole ([`ClaimStore::load`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClaimHead {
    /// The lease ID; equals the file name.
    pub lease_id: String,
    /// Slug.
    pub slug: String,
    /// Provider name.
    pub provider: String,
    /// Provider resource ID.
    pub cloud_id: String,
    /// Pond name.
    pub pond: String,
    /// SSH port (0: none recorded).
    pub ssh_port: u16,
    /// URL-bridge endpoint.
    pub bridge_url: String,
    /// Ours: `pending` or `active`.
    pub state: String,
    /// Every other field, ours unfolded (as [`Claim::extra`]): sorted by
    /// name, each once, as in a map (see [`ClaimHead::extra`]). A list, not
    /// a map: a claim has one or two, and a map's first node was most of
    /// unfolding 10,000 claims.
    pub extra: Vec<(String, serde_json::Value)>,
}

impl ClaimHead {
    /// The extra field `name`.
    #[must_use]
    pub fn extra(&self, name: &str) -> Option<&serde_json::Value> {
        self.extra
            .iter()
            .find_map(|(field, value)| (field == name).then_some(value))
    }
}

/// Extra fields in the order read, Crabbox's then ours, as a head keeps
/// them: sorted by name, and of a name given twice the later (ours, as a
/// [`Claim`]'s map keeps it).
fn sorted_extra(mut extra: Vec<(String, serde_json::Value)>) -> Vec<(String, serde_json::Value)> {
    // Stable: of equal names, the later stays later.
    extra.sort_by(|a, b| a.0.cmp(&b.0));
    extra.dedup_by(|later, kept| {
        let same = later.0 == kept.0;
        if same {
            std::mem::swap(later, kept);
        }
        same
    });
    extra
}

impl<'de> Deserialize<'de> for ClaimHead {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut wire = ClaimWire::<FoldedLabels, SkippedValue>::deserialize(deserializer)?;
        let mut state = top_level_state(&mut wire.extra);
        // Crabbox's fields first (usually none), then ours.
        let mut extra: Vec<(String, serde_json::Value)> = wire.extra.into_iter().collect();
        if let Some(folded) = take_folded(&mut wire.labels.0, |field, value| {
            extra.push((field, value));
        }) {
            state = folded;
        }
        let extra = sorted_extra(extra);
        Ok(Self {
            lease_id: wire.lease_id,
            slug: wire.slug,
            provider: wire.provider,
            cloud_id: wire.cloud_id,
            pond: wire.pond,
            ssh_port: wire.ssh_port,
            bridge_url: wire.bridge_url,
            state,
            extra,
        })
    }
}

impl From<Claim> for ClaimHead {
    fn from(c: Claim) -> Self {
        Self {
            lease_id: c.lease_id,
            slug: c.slug,
            provider: c.provider,
            cloud_id: c.cloud_id,
            pond: c.pond,
            ssh_port: c.ssh_port,
            bridge_url: c.bridge_url,
            state: c.state,
            extra: c.extra.into_iter().collect(),
        }
    }
}

/// The labels of a stored claim, as one of its readers keeps them.
trait ClaimLabels {
    fn is_empty(&self) -> bool;
}

impl ClaimLabels for Labels {
    fn is_empty(&self) -> bool {
        Self::is_empty(self)
    }
}

/// Of a stored claim's labels, only our folded fields; the lease's own
/// labels are passed over unread (see [`ClaimHead`]).
#[derive(Default)]
struct FoldedLabels(Labels);

impl ClaimLabels for FoldedLabels {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de> Deserialize<'de> for FoldedLabels {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Ours;
        impl<'de> serde::de::Visitor<'de> for Ours {
            type Value = FoldedLabels;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of labels")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<FoldedLabels, A::Error> {
                let mut ours = Labels::new();
                while let Some(OurKey(key)) = map.next_key()? {
                    match key {
                        Some(key) => {
                            ours.insert(key, map.next_value()?);
                        }
                        None => {
                            map.next_value::<SkippedValue>()?;
                        }
                    }
                }
                Ok(FoldedLabels(ours))
            }
        }
        deserializer.deserialize_map(Ours)
    }
}

/// A label value passed over without a copy, yet refused when it is not a
/// string, as a [`Claim`] refuses it: a claim discovery reads as a head
/// reads whole too (a dangling one is read again whole).
#[derive(Default, PartialEq)]
struct SkippedValue;

impl<'de> Deserialize<'de> for SkippedValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = SkippedValue;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<SkippedValue, E> {
                Ok(SkippedValue)
            }
        }
        deserializer.deserialize_str(Text)
    }
}

/// A label key, copied only when it holds one of our folded fields.
struct OurKey(Option<LabelText>);

impl<'de> Deserialize<'de> for OurKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Key;
        impl serde::de::Visitor<'_> for Key {
            type Value = OurKey;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a label key")
            }
            fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<OurKey, E> {
                Ok(OurKey(is_folded(key).then(|| key.into())))
            }
        }
        deserializer.deserialize_str(Key)
    }
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// A port as Crabbox writes it (a number), or as earlier crabbox versions
/// wrote it (a decimal string, possibly empty for none).
fn port_number_or_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    use serde::de::Error as _;
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => Ok(0),
        serde_json::Value::Number(n) => n
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .ok_or_else(|| D::Error::custom(format!("sshPort {n} is not a port"))),
        serde_json::Value::String(s) if s.trim().is_empty() => Ok(0),
        serde_json::Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| D::Error::custom(format!("sshPort `{s}` is not a port"))),
        other => Err(D::Error::custom(format!("sshPort {other} is not a port"))),
    }
}

/// A claim file that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimProblem {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub message: String,
}

/// Where claims (and the pond lock, see [`crate::lock`]) are kept: Crabbox's
/// claim files under a state directory, or a PostgreSQL state database (see
/// [`crate::state_pg`]).
///
/// Every claim read and write in crabbox goes through this type. The command
/// line builds one per command ([`ClaimStore::configured`]) and passes it
/// down to the providers, discovery and the steps, so every part of a
/// command uses the same backend and, for PostgreSQL, the same connection;
/// nothing is looked up process-wide at each call. Cloning shares it.
///
/// Its calls are `async`: file locks and file I/O run on tokio's blocking
/// pool, database calls on the caller's runtime, so waiting for another
/// holder of a claim never stops the other tasks.
#[derive(Debug, Clone)]
pub struct ClaimStore {
    backend: Backend,
}

#[derive(Debug, Clone)]
enum Backend {
    Local(PathBuf),
    Postgres(Arc<Database>),
}

/// Where a store keeps things: the state directory, or the database.
pub(crate) enum Place<'a> {
    Files(&'a Path),
    Database(&'a Arc<Database>),
}

/// Most compare-and-swap attempts of one claim write.
const MAX_CAS_ATTEMPTS: u32 = 100;

impl ClaimStore {
    /// The claim files under `state_dir`, exactly as Crabbox keeps them.
    #[must_use]
    pub fn local(state_dir: &Path) -> Self {
        Self {
            backend: Backend::Local(state_dir.to_owned()),
        }
    }

    /// The PostgreSQL database at `url`, connected on first use (on the
    /// runtime of that call). Each store has its own connection.
    #[must_use]
    pub fn postgres(url: &str) -> Self {
        Self {
            backend: Backend::Postgres(Arc::new(Database::new(url))),
        }
    }

    /// The store a command uses: the database of `env_url`
    /// (`CRABBOX_STATE_URL`, which wins) or else of `spec_url` (the spec's
    /// `state:`), else the claim files under `state_dir`. A URL that is not
    /// a PostgreSQL URL is refused rather than silently replaced by local
    /// files, which would hide the pond's claims and lock.
    ///
    /// # Errors
    /// The chosen URL is not a `postgres://` or `postgresql://` URL.
    pub fn configured(
        state_dir: &Path,
        env_url: Option<&str>,
        spec_url: Option<&str>,
    ) -> Result<Self, StateError> {
        let env_url = env_url.filter(|u| !u.is_empty());
        let (url, from) = match (env_url, spec_url) {
            (Some(url), _) => (url, state_pg::URL_ENV.to_owned()),
            (None, Some(url)) => (url, "the spec's `state.url`".to_owned()),
            (None, None) => return Ok(Self::local(state_dir)),
        };
        if is_postgres_url(url) {
            Ok(Self::postgres(url))
        } else {
            Err(StateError(format!(
                "{from} is `{}`, which is not a postgres:// or postgresql:// URL; set a PostgreSQL URL, or unset it to keep the state in local files",
                redact(url)
            )))
        }
    }

    /// The state database, when the store is one (the pond lock and
    /// `state migrate` use it directly).
    #[must_use]
    pub fn database(&self) -> Option<&Arc<Database>> {
        match &self.backend {
            Backend::Local(_) => None,
            Backend::Postgres(db) => Some(db),
        }
    }

    /// The backend itself, for the pond lock.
    pub(crate) fn place(&self) -> Place<'_> {
        match &self.backend {
            Backend::Local(state_dir) => Place::Files(state_dir),
            Backend::Postgres(db) => Place::Database(db),
        }
    }

    /// Where the claims live, for messages (no password).
    #[must_use]
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Local(state_dir) => state_dir.join("claims").display().to_string(),
            Backend::Postgres(db) => db.display_url(),
        }
    }

    /// Every readable claim; a single unreadable claim is reported as a
    /// problem, never fatal. A store that cannot be read at all (database
    /// down, claims directory unreadable) is an error: what it holds was not
    /// observed, so nothing may be concluded from its absence.
    ///
    /// # Errors
    /// The backend could not be read.
    pub async fn load_all(&self) -> std::io::Result<(Vec<Claim>, Vec<ClaimProblem>)> {
        match &self.backend {
            Backend::Local(state_dir) => {
                let dir = state_dir.join("claims");
                blocking(move || load_all_files(&dir)).await
            }
            Backend::Postgres(db) => load_all_rows(db).await,
        }
    }

    /// [`Self::load_all`] as discovery reads it: each claim without the copy
    /// of its lease's labels ([`ClaimHead`]). Rows of the state database are
    /// read whole (each one's body is remembered for the next
    /// compare-and-swap), then cut down.
    ///
    /// # Errors
    /// The backend could not be read.
    pub async fn load_all_heads(&self) -> std::io::Result<(Vec<ClaimHead>, Vec<ClaimProblem>)> {
        match &self.backend {
            Backend::Local(state_dir) => {
                let dir = state_dir.join("claims");
                blocking(move || load_all_files(&dir)).await
            }
            Backend::Postgres(db) => {
                let (claims, problems) = load_all_rows(db).await?;
                Ok((claims.into_iter().map(ClaimHead::from).collect(), problems))
            }
        }
    }

    /// One claim by lease ID; `Ok(None)` when there is none (or the ID is not
    /// a lease ID).
    ///
    /// # Errors
    /// The claim exists but cannot be read or parsed, or the backend could
    /// not be read.
    pub async fn load(&self, lease_id: &str) -> std::io::Result<Option<Claim>> {
        if !is_claim_id(lease_id) {
            return Ok(None);
        }
        match &self.backend {
            Backend::Local(state_dir) => {
                let (dir, id) = (state_dir.join("claims"), lease_id.to_owned());
                blocking(move || load_file(&dir, &id)).await
            }
            Backend::Postgres(db) => load_row(db, lease_id).await,
        }
    }

    /// Writes a claim with a new revision. Local files: atomically, under the
    /// claim's lock. PostgreSQL: a compare-and-swap on the revision the
    /// claim was read with; when another writer changed the claim since,
    /// this write's changes are merged into the stored claim and tried
    /// again, so neither writer's changes are lost.
    ///
    /// # Errors
    /// I/O or database errors, or a lease ID of the wrong shape.
    pub async fn write(&self, claim: &Claim) -> std::io::Result<Claim> {
        check_lease_id(&claim.lease_id)?;
        match &self.backend {
            Backend::Local(state_dir) => {
                let state_dir = state_dir.clone();
                let mut claim = claim.clone();
                blocking(move || {
                    let id = claim.lease_id.clone();
                    locked(&state_dir, &id, || {
                        claim.revision = new_revision();
                        write_file(&state_dir.join("claims"), &claim)?;
                        Ok(claim)
                    })
                })
                .await
            }
            Backend::Postgres(db) => write_row(db, claim).await,
        }
    }

    /// Read-modify-write of one claim: `change` is applied to the stored
    /// claim and the result written; if another writer got in between,
    /// `change` is applied again to what it wrote. `Ok(None)` when the claim
    /// does not exist.
    ///
    /// # Errors
    /// I/O or database errors, or a lease ID of the wrong shape.
    pub async fn update(
        &self,
        lease_id: &str,
        mut change: impl FnMut(&mut Claim) + Send,
    ) -> std::io::Result<Option<Claim>> {
        check_lease_id(lease_id)?;
        match &self.backend {
            Backend::Local(state_dir) => {
                // The lock is held across the three steps; `change` runs
                // here, not on the blocking pool, so it may borrow.
                let (dir, id) = (state_dir.join("claims"), lease_id.to_owned());
                let lock = {
                    let (state_dir, id) = (state_dir.clone(), id.clone());
                    blocking(move || lock_claim(&state_dir, &id)).await?
                };
                let loaded = {
                    let (dir, id) = (dir.clone(), id.clone());
                    blocking(move || load_file(&dir, &id)).await?
                };
                let Some(mut claim) = loaded else {
                    return Ok(None);
                };
                change(&mut claim);
                claim.lease_id = id;
                claim.revision = new_revision();
                blocking(move || {
                    let written = write_file(&dir, &claim).map(|()| claim);
                    let _ = lock.unlock();
                    written
                })
                .await
                .map(Some)
            }
            Backend::Postgres(db) => {
                for attempt in 0..MAX_CAS_ATTEMPTS {
                    let Some(mut claim) = load_row(db, lease_id).await? else {
                        return Ok(None);
                    };
                    let expected = claim.revision.clone();
                    change(&mut claim);
                    lease_id.clone_into(&mut claim.lease_id);
                    claim.revision = new_revision();
                    let (row, body) = row_of(&claim)?;
                    if db.claim_cas(Some(&expected), &row).await? {
                        db.remember(lease_id, &claim.revision, &body);
                        return Ok(Some(claim));
                    }
                    state_pg::count_conflict();
                    backoff(attempt).await;
                }
                Err(gave_up(lease_id))
            }
        }
    }

    /// Removes a claim (absent is fine).
    ///
    /// # Errors
    /// I/O errors other than "not found", database errors.
    pub async fn remove(&self, lease_id: &str) -> std::io::Result<()> {
        check_lease_id(lease_id)?;
        match &self.backend {
            Backend::Local(state_dir) => {
                let (state_dir, id) = (state_dir.clone(), lease_id.to_owned());
                blocking(move || {
                    locked(&state_dir, &id, || {
                        match std::fs::remove_file(file_path(&state_dir.join("claims"), &id)) {
                            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                            _ => Ok(()),
                        }
                    })?;
                    // The lock file is kept, as Crabbox keeps it: removing it
                    // while another process waits on it would split the lock.
                    Ok(())
                })
                .await
            }
            Backend::Postgres(db) => Ok(db.claim_delete(lease_id).await?),
        }
    }
}

/// Runs file work (flock waits included) on tokio's blocking pool, so that
/// it never holds a runtime worker.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| std::io::Error::other(format!("a claim file operation failed: {e}")))?
}

fn check_lease_id(lease_id: &str) -> std::io::Result<()> {
    if is_claim_id(lease_id) {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("`{lease_id}` is not a lease ID"),
        ))
    }
}

fn file_path(dir: &Path, lease_id: &str) -> PathBuf {
    dir.join(format!("{lease_id}.json"))
}

/// What a claim file is read as: a whole [`Claim`] or a [`ClaimHead`].
trait ClaimFile: serde::de::DeserializeOwned {
    fn lease_id(&self) -> &str;
}

impl ClaimFile for Claim {
    fn lease_id(&self) -> &str {
        &self.lease_id
    }
}

impl ClaimFile for ClaimHead {
    fn lease_id(&self) -> &str {
        &self.lease_id
    }
}

fn load_all_files<T: ClaimFile>(dir: &Path) -> std::io::Result<(Vec<T>, Vec<ClaimProblem>)> {
    let mut claims = Vec::new();
    let mut problems = Vec::new();
    let cannot = |e: std::io::Error| {
        std::io::Error::new(
            e.kind(),
            format!("cannot read the claims in {}: {e}", dir.display()),
        )
    };
    // Each claim is opened relative to the directory, into one buffer:
    // 10,000 claims are read at every discovery of a 10,000-member pond.
    let files = match DirFiles::open(dir) {
        Ok(files) => files,
        // No directory: no claim was ever written here.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((claims, problems)),
        Err(e) => return Err(cannot(e)),
    };
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(cannot)?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort_unstable();
    let mut text = Vec::with_capacity(4096);
    for name in names {
        let stem = &name[..name.len() - ".json".len()];
        match files
            .read_into(Path::new(&name), &mut text)
            .map_err(|e| e.to_string())
            .and_then(|()| crabbox_core::json::from_bytes::<T>(&text).map_err(|e| e.to_string()))
        {
            Ok(claim) if claim.lease_id() != stem => problems.push(ClaimProblem {
                path: dir.join(&name),
                message: format!("lease_id_mismatch: the file says {}", claim.lease_id()),
            }),
            Ok(claim) => claims.push(claim),
            Err(message) => problems.push(ClaimProblem {
                path: dir.join(&name),
                message,
            }),
        }
    }
    Ok((claims, problems))
}

fn load_file(dir: &Path, lease_id: &str) -> std::io::Result<Option<Claim>> {
    let path = file_path(dir, lease_id);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(std::io::Error::new(
                e.kind(),
                format!("cannot read {}: {e}", path.display()),
            ));
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| std::io::Error::other(format!("{} is not a claim: {e}", path.display())))
}

fn write_file(dir: &Path, claim: &Claim) -> std::io::Result<()> {
    // Go's `MarshalIndent(…, "", "  ")` plus the newline Crabbox appends
    // (claim.go:1199-1203), so a claim written by either tool has the same
    // layout.
    let mut text = serde_json::to_string_pretty(claim).map_err(std::io::Error::other)?;
    text.push('\n');
    atomic_file::write(&file_path(dir, &claim.lease_id), text.as_bytes())
}

/// The per-lease lock file, as Crabbox names it.
fn lock_file(state_dir: &Path, lease_id: &str) -> PathBuf {
    state_dir
        .join("claim-locks")
        .join(format!("{lease_id}.json.lock"))
}

/// Takes the per-lease lock file, waiting for another holder (blocking: run
/// it through [`blocking`]); closing the file releases it.
fn lock_claim(state_dir: &Path, lease_id: &str) -> std::io::Result<File> {
    check_lease_id(lease_id)?;
    atomic_file::create_private_dir(&state_dir.join("claim-locks"))?;
    // Mode 0600, as Crabbox creates it.
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(lock_file(state_dir, lease_id))?;
    lock.lock()?;
    Ok(lock)
}

/// Holds the per-lease lock file for the duration of `f` (blocking: run it
/// through [`blocking`]).
fn locked<T>(
    state_dir: &Path,
    lease_id: &str,
    f: impl FnOnce() -> std::io::Result<T>,
) -> std::io::Result<T> {
    let lock = lock_claim(state_dir, lease_id)?;
    let result = f();
    let _ = lock.unlock();
    result
}

/// A stored claim: its body with the row's revision.
fn parse_row(h: &Database, lease_id: &str, revision: String, text: &str) -> Result<Claim, String> {
    let body: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let mut claim: Claim = serde_json::from_value(body.clone()).map_err(|e| e.to_string())?;
    if claim.lease_id != lease_id {
        return Err(format!(
            "lease_id_mismatch: the row says {}",
            claim.lease_id
        ));
    }
    h.remember(lease_id, &revision, &body);
    claim.revision = revision;
    Ok(claim)
}

fn row_path(h: &Database, lease_id: &str) -> PathBuf {
    PathBuf::from(format!("{}/crabbox_claims/{lease_id}", h.display_url()))
}

async fn load_all_rows(h: &Database) -> std::io::Result<(Vec<Claim>, Vec<ClaimProblem>)> {
    let rows = h.claim_rows().await.map_err(|e| {
        std::io::Error::other(format!(
            "cannot read the claims in {}: {}",
            h.display_url(),
            e.0
        ))
    })?;
    let mut claims = Vec::new();
    let mut problems = Vec::new();
    for (lease_id, revision, text) in rows {
        match parse_row(h, &lease_id, revision, &text) {
            Ok(claim) => claims.push(claim),
            Err(message) => problems.push(ClaimProblem {
                path: row_path(h, &lease_id),
                message,
            }),
        }
    }
    Ok((claims, problems))
}

async fn load_row(h: &Database, lease_id: &str) -> std::io::Result<Option<Claim>> {
    match h.claim_row(lease_id).await? {
        None => Ok(None),
        Some((revision, text)) => parse_row(h, lease_id, revision, &text)
            .map(Some)
            .map_err(std::io::Error::other),
    }
}

/// The row of a claim, and its body as JSON.
pub(crate) fn row_of(claim: &Claim) -> std::io::Result<(ClaimRow, serde_json::Value)> {
    let body = serde_json::to_value(claim).map_err(std::io::Error::other)?;
    Ok((
        ClaimRow {
            lease_id: claim.lease_id.clone(),
            pond: claim.pond.clone(),
            provider: claim.provider.clone(),
            revision: claim.revision.clone(),
            body: body.to_string(),
        },
        body,
    ))
}

async fn write_row(h: &Database, claim: &Claim) -> std::io::Result<Claim> {
    let lease_id = claim.lease_id.as_str();
    let mine = serde_json::to_value(claim).map_err(std::io::Error::other)?;
    // What the caller read, when it read through this process: the base of
    // a merge should the claim have changed since.
    let base = h.remembered(lease_id, &claim.revision);
    let mut expected = Some(claim.revision.clone()).filter(|r| !r.is_empty());
    let mut desired = claim.clone();
    for attempt in 0..MAX_CAS_ATTEMPTS {
        let mut next = desired.clone();
        next.revision = new_revision();
        let (row, body) = row_of(&next)?;
        if h.claim_cas(expected.as_deref(), &row).await? {
            h.remember(lease_id, &next.revision, &body);
            return Ok(next);
        }
        match h.claim_row(lease_id).await? {
            // Removed meanwhile (or never there): written anew, as a file would be.
            None => expected = None,
            Some((revision, text)) => {
                state_pg::count_conflict();
                let current: serde_json::Value =
                    serde_json::from_str(&text).map_err(std::io::Error::other)?;
                desired = match &base {
                    Some(base) => serde_json::from_value(state_pg::merge(base, &mine, &current))
                        .unwrap_or_else(|_| claim.clone()),
                    // Not read here: the caller's claim replaces the stored
                    // one, as it replaces a claim file.
                    None => claim.clone(),
                };
                desired.lease_id = lease_id.to_owned();
                expected = Some(revision);
                backoff(attempt).await;
            }
        }
    }
    Err(gave_up(lease_id))
}

fn gave_up(lease_id: &str) -> std::io::Error {
    std::io::Error::other(format!(
        "claim {lease_id} kept changing while it was written; gave up after {MAX_CAS_ATTEMPTS} attempts"
    ))
}

/// A short random pause before retrying a compare-and-swap, growing a little
/// with the attempts so that writers racing on one claim spread out.
async fn backoff(attempt: u32) {
    let mut byte = [0u8; 1];
    let _ = getrandom::fill(&mut byte);
    let ceiling = 2 + attempt.min(20);
    tokio::time::sleep(std::time::Duration::from_millis(
        u64::from(byte[0]) % u64::from(ceiling) + 1,
    ))
    .await;
}

fn new_revision() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS provides randomness");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// RFC 3339 UTC timestamp for now.
#[must_use]
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    /// Reading a claim: every field, a port as a number or as text,
    /// unknown keys kept (Crabbox's at the top level, ours unfolded from the
    /// labels, the lease's labels left as they are), `state` at the top
    /// level as earlier versions wrote it; and what is refused.
    #[test]
    fn claims_read_every_field_and_unfold_ours() {
        let text = r#"{
          "leaseID": "cbx_00154d30ccc1", "revision": "r1", "slug": "api",
          "provider": "hetzner", "cloudID": "42", "pond": "crab",
          "repoRoot": "/repo", "claimedAt": "t1", "lastUsedAt": "t2",
          "idleTimeoutSeconds": 1800, "sshHost": "10.0.0.1", "sshPort": "22",
          "bridgeURL": "https://b", "state": "pending",
          "labels": { "crabbox": "true", "crabbox_claim.note": "x",
                      "crabbox_claim_json.crabboxCommands": "[\"a\"]" },
          "targetOS": "linux", "future\u0046ield": { "n": [1, 2] }
        }"#;
        let claim: Claim = serde_json::from_str(text).expect("a claim");
        let expected = Claim {
            lease_id: "cbx_00154d30ccc1".to_owned(),
            revision: "r1".to_owned(),
            slug: "api".to_owned(),
            provider: "hetzner".to_owned(),
            cloud_id: "42".to_owned(),
            pond: "crab".to_owned(),
            repo_root: "/repo".to_owned(),
            claimed_at: "t1".to_owned(),
            last_used_at: "t2".to_owned(),
            idle_timeout_seconds: 1800,
            labels: [("crabbox".into(), "true".into())].into(),
            ssh_host: "10.0.0.1".to_owned(),
            ssh_port: 22,
            bridge_url: "https://b".to_owned(),
            state: "pending".to_owned(),
            extra: [
                ("targetOS".to_owned(), serde_json::json!("linux")),
                ("futureField".to_owned(), serde_json::json!({ "n": [1, 2] })),
                ("note".to_owned(), serde_json::json!("x")),
                ("crabboxCommands".to_owned(), serde_json::json!(["a"])),
            ]
            .into(),
        };
        assert_eq!(claim, expected);
        // Discovery's reading: the same claim without the lease's labels
        // (escaped keys included: `crabbox_claim.` spelled with an escape).
        let head: ClaimHead = serde_json::from_str(
            &text.replace("\"crabbox_claim.note\"", "\"crabbox\\u005fclaim.note\""),
        )
        .expect("a claim head");
        assert_eq!(head, ClaimHead::from(expected));
        // A field of ours both at the top level (an earlier version) and
        // folded: the folded one wins, in a head as in a whole claim.
        let twice = r#"{"leaseID": "cbx_00154d30ccc1", "note": "old", "zeta": 1,
                        "labels": {"crabbox_claim.note": "new"}}"#;
        let claim: Claim = serde_json::from_str(twice).expect("a claim");
        let head: ClaimHead = serde_json::from_str(twice).expect("a head");
        assert_eq!(claim.extra["note"], "new");
        assert_eq!(head.extra("note"), Some(&serde_json::json!("new")));
        assert_eq!(head, ClaimHead::from(claim));
        let minimal: Claim =
            serde_json::from_str(r#"{"leaseID": "cbx_00154d30ccc1", "sshPort": 2222}"#)
                .expect("only the ID");
        assert_eq!(minimal.ssh_port, 2222);
        assert_eq!(minimal.slug, "");
        for (bad, why) in [
            (r#"{"slug": "api"}"#, "missing field `leaseID`"),
            (
                r#"{"leaseID": "cbx_00154d30ccc1", "slug": "a", "slug": "b"}"#,
                "duplicate field `slug`",
            ),
            (
                r#"{"leaseID": "cbx_00154d30ccc1", "sshPort": 70000}"#,
                "not a port",
            ),
            (
                r#"{"leaseID": "cbx_00154d30ccc1", "slug": 3}"#,
                "invalid type",
            ),
            (r#"["cbx_00154d30ccc1"]"#, "invalid type"),
        ] {
            let e = serde_json::from_str::<Claim>(bad).expect_err(bad);
            assert!(e.to_string().contains(why), "{bad}: {e}");
            let e = serde_json::from_str::<ClaimHead>(bad).expect_err(bad);
            assert!(e.to_string().contains(why), "head, {bad}: {e}");
        }
        let e = serde_json::from_str::<ClaimHead>(
            r#"{"leaseID": "cbx_00154d30ccc1", "labels": {"crabbox_claim.state": 1}}"#,
        )
        .expect_err("a folded field is a string");
        assert!(e.to_string().contains("invalid type"), "{e}");
        // A label a head passes over is still a string, as a whole claim's.
        let other = r#"{"leaseID": "cbx_00154d30ccc1", "labels": {"pond": 1}}"#;
        let e = serde_json::from_str::<ClaimHead>(other).expect_err("a label is a string");
        assert!(e.to_string().contains("invalid type"), "{e}");
        assert!(serde_json::from_str::<Claim>(other).is_err());
    }

    #[tokio::test]
    async fn round_trip_keeps_unknown_fields_and_skips_corrupt_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ClaimStore::local(dir.path());
        let mut claim = Claim {
            lease_id: "cbx_0123456789ab".into(),
            slug: "api".into(),
            provider: "local".into(),
            pond: "p".into(),
            ..Claim::default()
        };
        claim
            .extra
            .insert("tailscaleTags".into(), serde_json::json!(["a"]));
        let written = store.write(&claim).await.expect("write");
        assert_eq!(written.revision.len(), 32);
        // Crabbox's layout: two-space indent and a final newline (claim.go:1199-1203).
        let bytes = std::fs::read_to_string(dir.path().join("claims/cbx_0123456789ab.json"))
            .expect("claim file");
        assert!(
            bytes.starts_with("{\n  \"leaseID\": ") && bytes.ends_with("}\n"),
            "{bytes}"
        );
        std::fs::write(dir.path().join("claims/cbx_ffffffffffff.json"), "{not json")
            .expect("plant");
        std::fs::write(
            dir.path().join("claims/cbx_eeeeeeeeeeee.json"),
            r#"{"leaseID":"cbx_000000000000"}"#,
        )
        .expect("plant");
        let (claims, problems) = store.load_all().await.expect("readable");
        assert_eq!(claims.len(), 1);
        assert_eq!(claims[0].extra["tailscaleTags"], serde_json::json!(["a"]));
        assert_eq!(problems.len(), 2);
        let (heads, head_problems) = store.load_all_heads().await.expect("readable");
        assert_eq!(heads, vec![ClaimHead::from(claims[0].clone())]);
        assert_eq!(head_problems, problems);
        assert!(
            problems
                .iter()
                .any(|p| p.message.contains("lease_id_mismatch"))
        );
        store.remove("cbx_0123456789ab").await.expect("remove");
        store
            .remove("cbx_0123456789ab")
            .await
            .expect("removing twice is fine");
        assert_eq!(store.load_all().await.expect("readable").0.len(), 0);
        assert!(
            store
                .write(&Claim {
                    lease_id: "../evil".into(),
                    ..Claim::default()
                })
                .await
                .is_err()
        );
    }

    /// A claim whose lock another holder keeps (Crabbox's Go CLI, another
    /// crabbox) makes its writer wait, never the runtime: on a
    /// single-threaded runtime a timer task keeps ticking meanwhile.
    #[tokio::test(flavor = "current_thread")]
    async fn waiting_for_a_claim_lock_does_not_block_other_tasks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ClaimStore::local(dir.path());
        let id = "cbx_0123456789ab";
        let claim = Claim {
            lease_id: id.into(),
            pond: "p".into(),
            ..Claim::default()
        };
        store.write(&claim).await.expect("first write");
        // Another open file description: its flock excludes ours.
        let other = File::create(lock_file(dir.path(), id)).expect("lock file");
        other.lock().expect("the other holder locks");

        let ticks = Arc::new(AtomicU32::new(0));
        let ticker = {
            let ticks = ticks.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    ticks.fetch_add(1, Ordering::SeqCst);
                }
            })
        };
        let writing = {
            let (store, claim) = (store.clone(), claim.clone());
            tokio::spawn(async move { store.write(&claim).await })
        };
        let updating = {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .update(id, |c| {
                        c.labels.insert("k".into(), "v".into());
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            ticks.load(Ordering::SeqCst) >= 10,
            "the timer kept ticking while the claim was locked"
        );
        assert!(
            !writing.is_finished() && !updating.is_finished(),
            "they wait for the lock"
        );
        other.unlock().expect("the other holder lets go");
        writing.await.expect("task").expect("written");
        let updated = updating.await.expect("task").expect("updated");
        assert_eq!(
            updated.and_then(|c| c.labels.get("k").cloned()).as_deref(),
            Some("v")
        );
        ticker.abort();
    }

    /// Two stores of one process are independent: what one is built with is
    /// never seen by the other (there is no process-wide choice).
    #[tokio::test]
    async fn stores_built_for_different_places_do_not_share_anything() {
        let (a, b) = (
            tempfile::tempdir().expect("a"),
            tempfile::tempdir().expect("b"),
        );
        let db = ClaimStore::configured(a.path(), None, Some("postgres://u:secret@db/x"))
            .expect("the spec's database");
        let env = ClaimStore::configured(
            a.path(),
            Some("postgresql://u:secret@other/y"),
            Some("postgres://u:secret@db/x"),
        )
        .expect("the environment wins");
        let local_a = ClaimStore::configured(a.path(), Some(""), None).expect("local");
        let local_b = ClaimStore::local(b.path());
        assert!(db.database().is_some() && env.database().is_some());
        assert!(!Arc::ptr_eq(
            db.database().expect("db"),
            env.database().expect("env")
        ));
        assert!(db.describe().contains("db/x") && !db.describe().contains("secret"));
        assert!(env.describe().contains("other/y"));
        assert!(local_a.database().is_none() && local_b.database().is_none());
        let claim = Claim {
            lease_id: "cbx_0123456789ab".into(),
            ..Claim::default()
        };
        local_a.write(&claim).await.expect("write in a");
        assert_eq!(local_a.load_all().await.expect("a").0.len(), 1);
        assert!(local_b.load_all().await.expect("b").0.is_empty());
        let refused = ClaimStore::configured(a.path(), Some("mysql://u:secret@db/x"), None)
            .expect_err("not postgres");
        assert!(refused.0.contains("not a postgres://"), "{refused}");
        assert!(!refused.0.contains("secret"), "{refused}");
    }
}
