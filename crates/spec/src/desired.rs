//! The normalized, fully resolved pond the rest of crabbox works with:
//! defaults merged, names normalized, ports parsed, durations read. Nothing
//! downstream looks at pond.yaml's raw shape.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::model::{Class, Condition};
use crabbox_core::provider::ProviderName;

/// Default lease lifetime (Crabbox's).
pub const DEFAULT_TTL: Duration = Duration::from_secs(90 * 60);
/// Default idle timeout (Crabbox's).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Default time between readiness attempts (compose's).
pub const DEFAULT_READY_INTERVAL: Duration = Duration::from_millis(500);
/// Default time a readiness check may take in all.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Default sync archive guardrail.
pub const DEFAULT_SYNC_MAX_BYTES: u64 = 512 * 1024 * 1024;

/// A validated pond.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DesiredPond {
    /// Normalized pond name.
    pub name: String,
    /// The name as written (after interpolation), when it differs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub written_name: Option<String>,
    /// Members in document order.
    pub members: Vec<DesiredMember>,
    /// Output directory as written (`~` not yet expanded), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outputs_dir: Option<String>,
    /// User templates: source path (resolved against the spec's directory) and destination.
    pub templates: Vec<(PathBuf, String)>,
    /// Where claims and the pond lock are kept (`state:`). Not part of the
    /// spec's hash: it changes where the pond is recorded, not the pond.
    #[serde(skip)]
    pub state: StateStore,
}

/// Where claims and the pond lock are kept.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum StateStore {
    /// Files in the state directory.
    #[default]
    Local,
    /// A PostgreSQL database.
    Postgres {
        /// Its URL (may hold a password: never printed as is).
        url: String,
    },
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Local => f.write_str("Local"),
            Self::Postgres { url } => f
                .debug_struct("Postgres")
                .field("url", &crabbox_core::state_url::redact(url))
                .finish(),
        }
    }
}

/// One member, resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DesiredMember {
    /// Normalized slug.
    pub slug: String,
    /// The slug as written, when it differs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub written_slug: Option<String>,
    /// Provider.
    pub provider: ProviderName,
    /// Size class, when no exact type is given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<Class>,
    /// Exact machine type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_type: Option<String>,
    /// Tailscale enrollment requested.
    pub tailscale: bool,
    /// Exposed ports, sorted and unique.
    pub expose: Vec<u16>,
    /// Dependencies (normalized slugs) and what to wait for.
    pub depends_on: Vec<(String, Condition)>,
    /// Environment for every command.
    pub env: BTreeMap<String, String>,
    /// Names of the `env` entries whose value came from `--var` or the
    /// environment (`${VAR}`): shown as `(sensitive)` in plans unless
    /// `--show-env`. Not serialized, not hashed: it is where a value came
    /// from, not the value.
    #[serde(skip)]
    pub sensitive_env: BTreeSet<String>,
    /// Names of crabbox's own environment variables passed to every command.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pass_env: Vec<String>,
    /// Setup steps in order.
    pub setup: Vec<Step>,
    /// Readiness check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready: Option<ReadyCheck>,
    /// Sync settings.
    pub sync: SyncSettings,
    /// Lease lifetime.
    #[serde(with = "secs")]
    pub ttl: Duration,
    /// Idle timeout.
    #[serde(with = "secs")]
    pub idle_timeout: Duration,
    /// `keep` label.
    pub keep: bool,
    /// Refuse plans that destroy or replace this member.
    pub prevent_destroy: bool,
    /// Replace by creating first.
    pub create_before_destroy: bool,
    /// The member's own provider block (defaults merged in), as JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_block: Option<serde_json::Value>,
    /// Brokered or direct (`broker:`). Never serialized: it holds a token,
    /// and it is not part of the member's hashes (switching modes is not
    /// drift of an existing lease).
    #[serde(skip)]
    pub broker: crate::broker::BrokerChoice,
}

/// One setup step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// Shell command.
    pub run: String,
    /// Started detached as a service.
    pub background: bool,
    /// Step time limit.
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_secs")]
    pub timeout: Option<Duration>,
    /// Step-only environment.
    pub env: BTreeMap<String, String>,
}

impl DesiredMember {
    /// Whether `class` and `type` mean anything on this member's provider:
    /// `local` and `ssh` use a machine that already exists, so there the
    /// settings are warned about and otherwise ignored (no drift, no
    /// replacement).
    #[must_use]
    pub fn sizes_machine(&self) -> bool {
        !matches!(self.provider, ProviderName::Local | ProviderName::Ssh)
    }

    /// A member as `pond.yaml` makes it when it says nothing but its slug
    /// and provider: no setup, readiness or dependencies, the whole
    /// repository synced within the default guardrail, Crabbox's ttl and idle
    /// timeout. Imperative commands and tests start from it.
    #[must_use]
    pub fn new(slug: &str, provider: ProviderName) -> Self {
        Self {
            slug: slug.to_owned(),
            written_slug: None,
            provider,
            class: None,
            server_type: None,
            tailscale: false,
            expose: Vec::new(),
            depends_on: Vec::new(),
            env: BTreeMap::new(),
            sensitive_env: BTreeSet::new(),
            pass_env: Vec::new(),
            setup: Vec::new(),
            ready: None,
            sync: SyncSettings {
                enabled: true,
                exclude: Vec::new(),
                max_bytes: DEFAULT_SYNC_MAX_BYTES,
            },
            ttl: DEFAULT_TTL,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            keep: false,
            prevent_destroy: false,
            create_before_destroy: false,
            provider_block: None,
            broker: crate::broker::BrokerChoice::Environment,
        }
    }

    /// The member's provider block as the provider's typed settings
    /// (`HetznerBlock`, `IsloBlock`…): nothing written is the default. Every
    /// adapter reads its block through this one call, so a key means the same
    /// to `validate`, to the drift hash and to the adapter (camelCase and
    /// snake_case alike, through the block's serde aliases). A block nested
    /// under the provider's name (`{"islo": {…}}`) is read as well.
    ///
    /// # Errors
    /// The block does not fit `T`. Validated members always fit; only a
    /// member built by hand can fail.
    pub fn block<T: DeserializeOwned + Default>(&self) -> Result<T, serde_json::Error> {
        match &self.provider_block {
            None | Some(serde_json::Value::Null) => Ok(T::default()),
            Some(value) => {
                let inner = value
                    .get(self.provider.as_str())
                    .filter(|b| b.is_object())
                    .unwrap_or(value);
                serde_json::from_value(inner.clone())
            }
        }
    }
}

/// How readiness is probed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Probe {
    /// TCP connect to a port on the member, or to `host:port`.
    Tcp {
        /// Host; `None` means the member's own address.
        host: Option<String>,
        /// Port.
        port: u16,
    },
    /// HTTP GET must answer 2xx/3xx.
    Http(String),
    /// Command on the member must exit 0.
    Command(String),
}

/// A readiness check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadyCheck {
    /// What is probed on the member, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe: Option<Probe>,
    /// Whether the member must also be on the tailnet (`ready.tailnet`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub tailnet: bool,
    /// Between attempts.
    #[serde(with = "secs")]
    pub interval: Duration,
    /// Overall limit.
    #[serde(with = "secs")]
    pub timeout: Duration,
}

/// Sync settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SyncSettings {
    /// Whether the repository is synced at all.
    pub enabled: bool,
    /// Extra exclude globs.
    pub exclude: Vec<String>,
    /// Archive size guardrail in bytes.
    pub max_bytes: u64,
}

mod secs {
    use std::time::Duration;

    pub(super) fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crabbox_core::duration::format(*d))
    }
}

mod opt_secs {
    use std::time::Duration;

    #[allow(clippy::ref_option)] // serde's `with` hands us `&Option<T>`
    pub(super) fn serialize<S: serde::Serializer>(
        d: &Option<Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::secs::serialize(d, s),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::interpolate::Variables;
    use crate::load::load_str;
    use crate::providers::{HetznerBlock, IsloBlock};

    use super::*;

    fn first_member(yaml: &str) -> DesiredMember {
        let loaded = load_str(
            "pond.yaml",
            yaml,
            Path::new("."),
            &Variables::fixed(Vec::new()),
        );
        assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
        loaded.pond.expect("pond").members.remove(0)
    }

    #[test]
    fn env_values_from_variables_are_sensitive() {
        let m = first_member(
            "version: 1\npond: p\ndefaults:\n  env: { A: \"${X:-a}\", B: \"${X:-b}\", C: plain }\nmembers:\n  - slug: db\n    env: { B: literal, D: \"pre-${X:-d}\", E: \"$$HOME\" }\n",
        );
        assert_eq!(m.env["D"], "pre-d");
        // A from a default's `${X}`, D partly interpolated; B overridden by
        // a literal, C and E (an escaped `$`) never came from a variable.
        assert_eq!(
            m.sensitive_env
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            ["A", "D"]
        );
    }

    #[test]
    fn a_member_reads_its_block_typed_in_either_spelling_and_merged_over_defaults() {
        let m = first_member(
            "version: 1\npond: p\ndefaults:\n  islo: { gatewayProfile: ci }\nmembers:\n  - slug: a\n    provider: islo\n    islo: { memory_mb: 2048, image: alpine }\n",
        );
        let block: IsloBlock = m.block().expect("typed");
        assert_eq!(block.memory_mb, Some(2048));
        assert_eq!(block.image.as_deref(), Some("alpine"));
        assert_eq!(block.gateway_profile.as_deref(), Some("ci"));
    }

    #[test]
    fn no_block_is_the_default_and_a_nested_block_is_read_too() {
        let mut m =
            first_member("version: 1\npond: p\nmembers:\n  - slug: a\n    provider: hetzner\n");
        assert_eq!(
            m.block::<HetznerBlock>().expect("default"),
            HetznerBlock::default()
        );
        m.provider_block = Some(serde_json::json!({ "hetzner": { "location": "fsn1" } }));
        let block: HetznerBlock = m.block().expect("nested");
        assert_eq!(block.location.as_deref(), Some("fsn1"));
        m.provider_block = Some(serde_json::json!({ "location": 7 }));
        assert!(
            m.block::<HetznerBlock>().is_err(),
            "a wrong type is an error"
        );
    }
}
