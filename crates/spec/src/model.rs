//! The pond.yaml document, version 1, as Rust types. These types are the
//! single source of the JSON Schema (`crabbox schema`): every doc comment here
//! becomes a description that editors show on hover.
//!
//! The types describe what may be written; they are deliberately permissive
//! where a check can say something more useful than "wrong type" (ports are
//! plain integers here and range-checked in `check`).

use std::collections::BTreeMap;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

use crate::providers::ProviderBlocks;
use crabbox_core::provider::ProviderName;

/// A checked-in description of a Crabbox pond: which leases exist, on which
/// providers, how they are set up, and how they reach each other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "pond.yaml")]
pub struct PondFile {
    /// Version of the pond.yaml format. Only `1` exists.
    #[schemars(range(min = 1, max = 1))]
    pub version: u32,
    /// Name of the pond: the `pond=<name>` label every member carries.
    /// Lowercased, runs of characters outside `[a-z0-9]` become `-`, at most
    /// 41 characters after that. Supports `${VAR}`, e.g. `pr-${PR_NUMBER}`.
    pub pond: String,
    /// Settings every member inherits, field by field; a member's own value
    /// wins. May hold blocks for several providers: each member inherits only
    /// the block of its own provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<MemberDefaults>,
    /// The leases of the pond, one per slug.
    pub members: Vec<MemberSpec>,
    /// Where peers.json, hosts, env and user templates are written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Outputs>,
    /// Where crabbox keeps what providers do not store themselves: the claims
    /// of label-less providers (`ssh`, `islo`, `tensorlake`) and the pond's
    /// apply lock. Default: local files in the state directory. The
    /// `CRABBOX_STATE_URL` environment variable wins over this block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<State>,
}

/// The state backend of the pond.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// `local`: files in the state directory of the machine that applies.
    /// `postgres`: a PostgreSQL database every runner reaches, so a pond
    /// applied on one machine can be destroyed from another.
    pub backend: StateBackend,
    /// The database of the `postgres` backend, e.g.
    /// `postgres://crabbox@db.internal:5432/crabbox`. Write
    /// `${CRABBOX_STATE_URL}` rather than a password. Not used by `local`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// A state backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StateBackend {
    /// Files in the state directory (`CRABBOX_STATE_DIR`): one machine.
    Local,
    /// A PostgreSQL database (`url`) shared by every runner; the pond lock is
    /// a lease that expires when its holder dies.
    Postgres,
}

/// One lease of the pond.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields, extend("required" = ["slug"]))]
pub struct MemberSpec {
    /// Stable role name of the member (`db`, `api`): its identity in the
    /// pond, the `slug` label and the `<slug>.cbx` host name. Normalized like
    /// the pond name.
    #[serde(default)]
    #[schemars(transform = no_default)]
    pub slug: String,
    /// Where the lease runs. `local` (the default) runs real processes on
    /// this machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ProviderName>,
    /// Machine size class; the provider picks its types for it, falling back
    /// across them on capacity errors. Use `type` instead for an exact type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<Class>,
    /// Exact provider machine type (e.g. `cpx62`, `c7a.large`); never falls
    /// back. Mutually exclusive with `class`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub server_type: Option<String>,
    /// Enroll the lease in the tailnet so peers reach it as `<slug>.cbx`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tailscale: Option<bool>,
    /// Ports other members reach on this member: integers or comma lists
    /// (`"5432,8080"`), each 1..65535, at most 10 distinct.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expose: Option<Vec<PortSpec>>,
    /// Members that must be ready (or, with `completed`, have finished their
    /// setup successfully) before this member's setup starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depends_on: Option<DependsOn>,
    /// Environment variables for every command run on the member. Values may
    /// use peer references such as `{{peers.db.host}}`, resolved at run time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, EnvValue>>,
    /// Variables of crabbox's own environment passed to the member's commands
    /// by name (`local` members see only PATH, HOME, locale and terminal
    /// variables otherwise, never credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass_env: Option<Vec<EnvName>>,
    /// Commands run after warmup and sync, in order, once dependencies are
    /// ready. A step is a shell command or `{run, background, timeout, env}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup: Option<Vec<SetupStep>>,
    /// How to tell the member is ready for its dependents. Without it, the
    /// member is ready when its setup is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<Ready>,
    /// Whether and how the repository is copied into the lease's workspace
    /// (default: on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<Sync>,
    /// Hard lifetime of the lease, e.g. `90m`, `1h30m` (default `90m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(h|ms|m|s))+$"))]
    pub ttl: Option<String>,
    /// Idle time after which the lease may be reclaimed (default `30m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(h|ms|m|s))+$"))]
    pub idle_timeout: Option<String>,
    /// Exempt the lease from Crabbox's automatic cleanup (`keep=true` label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep: Option<bool>,
    /// Guards on how the member may be replaced or destroyed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<Lifecycle>,
    /// Brokered mode: lease through a Crabbox coordinator, `{ url, token }`
    /// (the token only as `${VAR}`, e.g. `${CRABBOX_COORDINATOR_TOKEN}`), or
    /// `false` to lease directly even when `CRABBOX_COORDINATOR` is set.
    /// Applies to the providers a coordinator serves (hetzner, aws, azure,
    /// gcp, daytona).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<Broker>,
    /// Provider-specific settings; only the block of the member's own
    /// provider may be written on a member.
    #[serde(flatten)]
    pub blocks: ProviderBlocks,
}

/// `slug` defaults to empty only so that `defaults` can reuse this type; the
/// schema must not advertise that default.
fn no_default(schema: &mut Schema) {
    schema.remove("default");
}

/// Member settings shared by all members: every member field except `slug`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MemberDefaults(pub MemberSpec);

impl JsonSchema for MemberDefaults {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "MemberDefaults".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let mut schema = MemberSpec::json_schema(generator);
        if let Some(props) = schema.get_mut("properties").and_then(|p| p.as_object_mut()) {
            props.remove("slug");
        }
        if let Some(required) = schema.get_mut("required").and_then(|r| r.as_array_mut()) {
            required.retain(|r| r != "slug");
            if required.is_empty() {
                schema.remove("required");
            }
        }
        schema.insert(
            "description".into(),
            "Member settings shared by all members: every member field except `slug`.".into(),
        );
        schema
    }
}

/// Machine size class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    /// The smallest class.
    Tiny,
    /// Small machines.
    Small,
    /// General-purpose machines.
    Standard,
    /// More and faster cores.
    Fast,
    /// Many cores and much memory.
    Large,
    /// The largest machines a provider offers.
    Beast,
}

impl Class {
    /// The label value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tiny => "tiny",
            Self::Small => "small",
            Self::Standard => "standard",
            Self::Fast => "fast",
            Self::Large => "large",
            Self::Beast => "beast",
        }
    }
}

/// One `expose` entry: a port, or a comma list of ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum PortSpec {
    /// A single port, 1..65535.
    Port(#[schemars(range(min = 1, max = 65535))] i64),
    /// A comma-separated list of ports, e.g. `"5432,8080"`.
    List(String),
}

/// Dependencies of a member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum DependsOn {
    /// Slugs that must be ready first.
    List(Vec<String>),
    /// Slug to condition: `ready` (the default meaning) or `completed`
    /// (setup finished successfully; for run-to-completion members).
    Map(BTreeMap<String, Condition>),
}

impl DependsOn {
    /// The dependencies with their conditions, in the order written (lists)
    /// or sorted by slug (maps).
    #[must_use]
    pub fn entries(&self) -> Vec<(String, Condition)> {
        match self {
            Self::List(slugs) => slugs
                .iter()
                .map(|s| (s.clone(), Condition::Ready))
                .collect(),
            Self::Map(map) => map.iter().map(|(s, c)| (s.clone(), *c)).collect(),
        }
    }
}

/// What a dependent waits for.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Condition {
    /// The dependency's ready check passes (or its setup is done when it has none).
    Ready,
    /// The dependency's setup finished successfully.
    Completed,
}

/// An environment value; numbers and booleans are written as text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum EnvValue {
    /// Text, possibly with `{{peers.<slug>.host}}` references.
    Text(String),
    /// An integer, passed as its decimal text.
    Int(i64),
    /// A number, passed as its text.
    Float(f64),
    /// A boolean, passed as `true` / `false`.
    Bool(bool),
}

impl EnvValue {
    /// The value as the environment sees it.
    #[must_use]
    pub fn to_text(&self) -> String {
        match self {
            Self::Text(s) => s.clone(),
            Self::Int(i) => i.to_string(),
            Self::Float(f) => f.to_string(),
            Self::Bool(b) => b.to_string(),
        }
    }
}

/// One setup step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum SetupStep {
    /// A shell command run to completion.
    Command(String),
    /// A command with options.
    Full(SetupCommand),
}

/// A setup command with options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetupCommand {
    /// The shell command (`sh -c`), run in the member's workspace.
    pub run: String,
    /// Start the command detached as a long-running service; its output goes
    /// to the lease's logs and it is stopped when the lease is released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub background: Option<bool>,
    /// How long the step may take, e.g. `10m` (default: no limit beyond the
    /// apply's own). Ignored for background steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(h|ms|m|s))+$"))]
    pub timeout: Option<String>,
    /// Extra environment for this step only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, EnvValue>>,
}

/// A readiness check; exactly one of `tcp`, `http`, `command`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Ready {
    /// A port (on the member's own address) or `host:port` that must accept
    /// TCP connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpTarget>,
    /// A URL that must answer with a 2xx or 3xx status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// A shell command run on the member that must exit 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// The member's tailnet address is recorded and the tailnet lists its
    /// device with the pond's tag (needs `tailscale: true`); alone or with
    /// one of `tcp`, `http`, `command`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tailnet: Option<bool>,
    /// Time between attempts, e.g. `2s` (default `500ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(h|ms|m|s))+$"))]
    pub interval: Option<String>,
    /// How long to keep trying before the member fails (default `2m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(h|ms|m|s))+$"))]
    pub timeout: Option<String>,
}

/// A TCP readiness target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum TcpTarget {
    /// A port on the member's own address.
    Port(#[schemars(range(min = 1, max = 65535))] i64),
    /// `host:port`.
    Address(String),
}

/// Repository sync: `true`/`false`, or options.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Sync {
    /// Turn sync on (the default) or off.
    Enabled(bool),
    /// Sync with options.
    Options(SyncOptions),
}

/// Sync options.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncOptions {
    /// Glob patterns (relative to the repository root) left out of the archive,
    /// on top of what git ignores.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// Guardrail: refuse to sync an archive larger than this many MiB
    /// (default 512).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_mb: Option<u64>,
}

/// Lifecycle guards.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Lifecycle {
    /// Make any plan that would destroy or replace this member an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prevent_destroy: Option<bool>,
    /// On replacement, create the new lease and wait for it to be ready
    /// before destroying the old one (`+/-` instead of `-/+`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_before_destroy: Option<bool>,
}

/// Rendered outputs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Outputs {
    /// Directory for peers.json, hosts, env and templates
    /// (default `~/.crabbox/pond/<pond>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    /// Handlebars templates rendered with the pond's peers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub templates: Vec<Template>,
}

/// One user template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Template {
    /// Template file, relative to the pond.yaml's directory.
    pub src: String,
    /// Output file name, relative to `outputs.dir`.
    pub dest: String,
}

/// The name of an environment variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct EnvName(#[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$"))] pub String);

/// `broker:`: `false`, or a coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Broker {
    /// `false` leases directly; `true` means the coordinator the
    /// environment names (`CRABBOX_COORDINATOR`).
    Enabled(bool),
    /// A coordinator.
    Coordinator(BrokerSpec),
}

/// A coordinator to lease through.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BrokerSpec {
    /// Its base URL (`https://…`).
    pub url: String,
    /// Its bearer token, only as a `${VAR}` reference (default: the
    /// `CRABBOX_COORDINATOR_TOKEN` variable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl std::fmt::Debug for BrokerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerSpec")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}
