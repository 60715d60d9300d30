//! The `hetzner` provider: Hetzner Cloud servers, reached over SSH.
//!
//! - **Discovery** is one label-selector list, `crabbox=true,pond=<pond>`,
//!   50 servers a page; pages after the first are fetched concurrently.
//! - **Create** uploads the lease's SSH key (a per-lease ed25519 key
//!   generated where Crabbox keeps one,
//!   `<user config>/crabbox/testboxes/<lease>/id_ed25519`; the member's own
//!   `ssh_key` is looked up once per process by its fingerprint, shared by
//!   concurrent creates, and uploaded only when the account lacks it), then creates the
//!   server carrying every label and Crabbox's cloud-init bootstrap
//!   ([`cloud_init`]: login `crabbox`, sshd on 2222 and 22, work root
//!   `/work/crabbox`) in that one request. Class
//!   members fall back across the class's server types on capacity errors
//!   only; an exact `type` never falls back. It then waits for `running`
//!   with an IPv4 address — polling adaptively: after a quarter of the time
//!   the server has been booting (a sixteenth once it is `starting`), at
//!   most the poll interval apart, so a short boot is seen soon after it
//!   ends and a long one is polled no more often than every interval — then
//!   for SSH on the first port candidate that logs in and passes Crabbox's
//!   ready check (2222, falling back to 22, as Crabbox connects), preparing
//!   the lease's work root `/work/crabbox/<lease>` in that same command (one
//!   round trip, on the login setup then reuses). If anything after
//!   the server exists fails, the server and key are deleted again.
//!   Every API call is retried on its own (429, 5xx, time-outs; honouring
//!   `Retry-After`), so one passing error does not start a create over.
//! - **Relabel** checks that the server carries crabbox's labels for the
//!   lease — from this provider's own sighting of it in the last minute
//!   (its create, a listing, an earlier relabel) when there is one, else by
//!   reading it — then replaces its labels with one `PUT`.
//! - **Commands** run through [`SshTarget`], one per lease, rebuilt after a
//!   restart from `<state>/ssh/keys/<lease>/endpoint.json`; a server
//!   without one (made by Crabbox) is reached as Crabbox reaches it:
//!   `crabbox` on 2222 with the key in `testboxes/<lease>/`.
//! - **Release** reads the server and deletes it only if it carries
//!   `crabbox=true`, a `pond` and this lease's `lease` label (always read
//!   afresh: a delete cannot be undone); meanwhile it deletes the lease's
//!   key (only one labelled for this lease), then the local key directory
//!   and the lease's `testboxes/<lease>/` directory.
//! - **Sweep** (after every apply and destroy): a process killed between a
//!   key's upload and its server's create, or between a server's deletion
//!   and its key's, leaves a key and a key directory without a server.
//!   Keys labelled `crabbox=true`, this pond and a lease that has no server
//!   are deleted, and so are the key directories whose endpoint record
//!   names this pond (written first of the lease's files, so every such
//!   directory has one) — never a key or directory of another pond.
//! - **Re-running setup** first waits for SSH (a server adopted after its
//!   creator was killed may still boot), then stops what earlier runs
//!   started and creates the work root if it is missing
//!   ([`SshTarget::stop_background`]).

use futures_util::StreamExt;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;

mod api;
mod cloud_init;
pub(crate) mod keys;

use crate::registry::Descriptor;
use api::{PublicNet, Server, ServerEnvelope, ServerList, SshKey, SshKeyEnvelope, SshKeyList};
use crabbox_exec::session::{Session, SshSession, SshTargets};
use keys::{LeaseKey, openssh_ed25519, staging_pond, write_lease_files, write_lease_key};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::http::{ApiError, HttpClient};
use crate::{CreateRequest, Provider};
use crabbox_core::labels::{self, Labels};
use crabbox_core::lease::{Endpoint, Lease, is_lease_id};
use crabbox_core::provider::ProviderError;
use crabbox_core::provider::ProviderName;
use crabbox_exec::ssh::SshTarget;
use crabbox_fs::dir_files::DirFiles;
use crabbox_spec::desired::DesiredMember;
use crabbox_spec::model::Class;
use crabbox_spec::providers::HetznerBlock;
use crabbox_spec::user_config::{Source, UserConfig};
use crabbox_state::state_dir::expand_tilde;

/// Hetzner's public API.
pub const DEFAULT_ENDPOINT: &str = "https://api.hetzner.cloud/v1";
/// The token variable named in hints.
const TOKEN_ENV: &str = "HCLOUD_TOKEN";
/// Image when the block names none.
const DEFAULT_IMAGE: &str = "ubuntu-24.04";
/// Location when the block names none.
const DEFAULT_LOCATION: &str = "fsn1";
/// SSH login when the block names none: the user Crabbox's bootstrap
/// creates (its default `SSHUser`, config.go:2975).
const DEFAULT_SSH_USER: &str = "crabbox";
/// SSH port when the block names none (Crabbox's `SSHPort`, config.go:2977).
const DEFAULT_SSH_PORT: u16 = 2222;
/// Ports tried after the primary one (Crabbox's `SSHFallbackPorts`,
/// config.go:2978): sshd serves them too, and an image whose sshd ignores
/// the bootstrap's port is still reached.
const DEFAULT_FALLBACK_PORTS: [u16; 1] = [22];
/// How long a port candidate may take to accept a TCP connection.
const PORT_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long SSH on an open port may take to answer before the next
/// candidate is tried.
const PORT_SSH_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between rounds over the port candidates.
const PORT_ROUND_PAUSE: Duration = Duration::from_millis(500);
/// Class when the member names neither class nor type.
const DEFAULT_CLASS: Class = Class::Standard;
/// Hetzner's page-size maximum.
const PER_PAGE: u32 = 50;
/// Longest time between status polls while a server boots.
const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// A booting server is polled again after this fraction of the time it has
/// been booting (within `[MIN_POLL_WAIT, poll interval]`).
const POLL_FRACTION: u32 = 4;
/// The fraction once the server is `starting`.
const STARTING_POLL_FRACTION: u32 = 16;
/// Shortest time between status polls.
const MIN_POLL_WAIT: Duration = Duration::from_millis(10);
/// How long a sighting of a server's labels stands in for reading them again
/// before a relabel.
const SIGHTING_TTL: Duration = Duration::from_secs(60);
/// How long a server may take to be `running` with an IPv4 address.
const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// How long SSH may take to answer once the server runs.
const DEFAULT_SSH_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// Error codes that mean "this type, here, now: no", so the next type is tried.
const CAPACITY_CODES: [&str; 5] = [
    "resource_unavailable",
    "server_type_not_available",
    "dedicated_core_limit",
    "resource_limit_exceeded",
    "location_not_available",
];
/// The per-lease endpoint record, next to a generated key.
const ENDPOINT_FILE: &str = "endpoint.json";
/// A key directory being removed is first renamed to this and its lease ID.
const RELEASED_PREFIX: &str = ".released-";
/// The generated key's file name.
const KEY_FILE: &str = "id_ed25519";
/// Work roots live under this directory: Crabbox's POSIX work root
/// (target.go:19), which the bootstrap creates for the login user.
const DEFAULT_WORK_BASE: &str = "/work/crabbox";
/// Where records written before `work_root` existed put work roots
/// (relative to the login's home).
const LEGACY_WORK_BASE: &str = "crabbox";

/// Server types tried for a class, in order (Crabbox's table).
#[must_use]
pub fn class_types(class: Class) -> &'static [&'static str] {
    match class {
        Class::Tiny => &["ccx13", "cpx22", "cx23"],
        Class::Small => &["ccx23", "cpx32", "cx33"],
        Class::Standard => &["ccx33", "cpx62", "cx53"],
        Class::Fast => &["ccx43", "cpx62", "cx53"],
        Class::Large => &["ccx53", "ccx43", "cpx62", "cx53"],
        Class::Beast => &["ccx63", "ccx53", "ccx43", "cpx62", "cx53"],
    }
}

/// `crabbox-<slug>-<8 hex of FNV-32a of the lease ID>`, a valid host name of
/// at most 63 characters.
#[must_use]
pub fn server_name(slug: &str, lease_id: &str) -> String {
    let slug: String = slug
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(63 - "crabbox--12345678".len())
        .collect();
    let slug = slug.trim_matches('-');
    let slug = if slug.is_empty() { "member" } else { slug };
    format!("crabbox-{slug}-{:08x}", fnv1a32(lease_id.as_bytes()))
}

/// The name of a lease's uploaded SSH key: Crabbox's, `crabbox-` and the
/// lease ID with `_` as `-` (`crabbox-cbx-0123456789ab`), the only shape
/// Crabbox's release deletes — so either tool cleans up the other's key.
#[must_use]
pub fn key_name(lease_id: &str) -> String {
    format!("crabbox-{}", lease_id.replace('_', "-"))
}

/// 32-bit FNV-1a.
fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// How a later process reaches a lease: written before the server is
/// created, next to the generated key.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct EndpointRecord {
    lease_id: String,
    user: String,
    port: u16,
    /// Private key used to log in.
    key: PathBuf,
    /// The lease's pond: lets a later apply of that pond remove this
    /// directory when the lease never got a server (empty in records
    /// written before it existed).
    #[serde(default)]
    pond: String,
    /// The lease's work root on the server (empty: `crabbox/<lease>`).
    #[serde(default)]
    work_root: String,
}

/// Location, image and class when a member leaves them open: crabbox's
/// (Crabbox's location and image, class `standard`), or the user config's.
#[derive(Debug, Clone)]
struct Defaults {
    location: String,
    image: String,
    class: ClassChoice,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            location: DEFAULT_LOCATION.to_owned(),
            image: DEFAULT_IMAGE.to_owned(),
            class: ClassChoice::Class(DEFAULT_CLASS),
        }
    }
}

/// A default class: one of the table's, or (as in Crabbox, provider.go:174-191)
/// an unknown name used as a literal server type.
#[derive(Debug, Clone)]
enum ClassChoice {
    Class(Class),
    Literal(String),
}

/// The SSH settings of one member, from its block.
#[derive(Debug, Clone)]
struct SshSettings {
    user: String,
    port: u16,
    /// The member's own private key, if it names one.
    key: Option<PathBuf>,
}
/// The `hetzner` adapter in the registry's table.
pub const DESCRIPTOR: Descriptor = Descriptor {
    name: ProviderName::Hetzner,
    build: |dir, _| HetznerProvider::from_env(dir).map(|p| Arc::new(p) as Arc<dyn Provider>),
    credentials: Some("HCLOUD_TOKEN (or HETZNER_TOKEN)"),
    help: "  HCLOUD_TOKEN, HETZNER_TOKEN Hetzner Cloud API token (enables the `hetzner` provider)
  HCLOUD_ENDPOINT             Hetzner API base URL (default https://api.hetzner.cloud/v1)",
    transport_refusal: None,
};

/// The `hetzner` provider.
#[derive(Debug)]
pub struct HetznerProvider {
    http: HttpClient,
    state_dir: PathBuf,
    poll_interval: Duration,
    boot_timeout: Duration,
    ssh_timeout: Duration,
    ssh_bootstrap: bool,
    work_base: String,
    /// Crabbox's per-lease key directories, `<user config>/crabbox/testboxes`.
    testboxes: PathBuf,
    /// SSH port candidates after the primary one.
    fallback_ports: Vec<u16>,
    /// Location, image and class for members that leave them open.
    defaults: Defaults,
    /// Why Crabbox's user config could not be read, if it could not: its
    /// location, image and class would be guessed, so creates are refused
    /// (reading and releasing are not).
    config_problem: Option<String>,
    /// Lease ID → how to reach it.
    targets: Mutex<HashMap<String, SshTarget>>,
    /// Server ID → when this provider last saw the server, and the server
    /// as it was then (name and the labels that make it ours).
    sightings: Mutex<HashMap<u64, (Instant, Server)>>,
    /// The users' own keys (a member's `ssh_key`) as Hetzner knows them, by
    /// fingerprint: looked up once per process, the lookup shared by every
    /// create that wants the key at the same time (50 parallel creates make
    /// one request). Dropped when this provider deletes the key.
    user_keys: Mutex<HashMap<String, Arc<tokio::sync::OnceCell<UploadedKey>>>>,
}

/// A key uploaded to Hetzner: what a server create names it by, and the ID
/// its deletion is recognised by.
#[derive(Debug, Clone)]
struct UploadedKey {
    id: u64,
    name: String,
}

/// How many list pages are fetched at once: enough to keep an API that
/// serves ten requests at once busy (with 8, 200 pages took 26 round trips
/// instead of 21), few enough not to be one burst that a rate limit answers
/// with 429s (those are retried after `Retry-After`).
pub const PAGE_FETCHES: usize = 16;

impl HetznerProvider {
    /// Every server matching a label selector: the first page, then the
    /// rest concurrently (at most [`PAGE_FETCHES`] at a time) once the pagination meta says how many there are,
    /// each fetched and decoded in a task of its own (decoding a page costs
    /// about as much as waiting for it, so they share the runtime's threads).
    async fn servers_matching(&self, selector: &str) -> Result<Vec<Server>, ProviderError> {
        let query = |page: u32| {
            vec![
                ("label_selector", selector.to_owned()),
                ("per_page", PER_PAGE.to_string()),
                ("page", page.to_string()),
            ]
        };
        let first: ServerList = self
            .http
            .get_json_with_retries("/servers", &query(1))
            .await?;
        let mut servers = Vec::new();
        match (first.meta.last_page(), first.meta.next_page()) {
            (Some(last), _) if last > 1 => {
                servers.extend(first.servers);
                // At most PAGE_FETCHES pages at once, however large the
                // account: concurrency without a burst the API would rate-limit.
                let mut pages = futures_util::stream::iter(2..=last)
                    .map(|page| {
                        let q = query(page);
                        let http = self.http.clone();
                        tokio::spawn(async move {
                            http.get_json_with_retries::<ServerList>("/servers", &q)
                                .await
                        })
                    })
                    .buffer_unordered(PAGE_FETCHES);
                while let Some(page) = pages.next().await {
                    match page {
                        Ok(Ok(list)) => servers.extend(list.servers),
                        Ok(Err(e)) => return Err(e),
                        Err(e) => {
                            return Err(ProviderError::Failed(format!(
                                "hetzner: listing servers: {e}"
                            )));
                        }
                    }
                }
            }
            (None, Some(mut next)) => {
                // Total unknown: follow the pages one by one.
                servers.extend(first.servers);
                loop {
                    let page: ServerList = self
                        .http
                        .get_json_with_retries("/servers", &query(next))
                        .await?;
                    servers.extend(page.servers);
                    match page.meta.next_page() {
                        Some(n) if n > next => next = n,
                        _ => break,
                    }
                }
            }
            _ => servers.extend(first.servers),
        }
        Ok(servers)
    }

    /// The provider configured from the environment: token from
    /// `HCLOUD_TOKEN`, else `HETZNER_TOKEN` (`None` when neither is set);
    /// API base from `HCLOUD_ENDPOINT`, default Hetzner's public API.
    #[must_use]
    pub fn from_env(state_dir: &Path) -> Option<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let token = var("HCLOUD_TOKEN").or_else(|| var("HETZNER_TOKEN"))?;
        let base = var("HCLOUD_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned());
        let provider = Self::new(&base, token.trim(), state_dir);
        Some(match UserConfig::load() {
            Ok(config) => provider.with_user_config(&config),
            Err(e) => provider.refusing_creates(e.to_string()),
        })
    }

    /// A provider that refuses to create, saying `why`: Crabbox's user
    /// config is malformed, and a server made with guessed defaults
    /// (location, image, class) would be one the user did not ask for.
    #[must_use]
    pub fn refusing_creates(mut self, why: String) -> Self {
        self.config_problem = Some(why);
        self
    }

    /// Takes the location, image and class a member leaves open from
    /// Crabbox's user config (`hetzner.location`, `hetzner.image`, `class`,
    /// or their environment variables) when it sets them.
    #[must_use]
    pub fn with_user_config(mut self, config: &UserConfig) -> Self {
        let set = |key: &str| {
            config
                .get(key)
                .filter(|_| !matches!(config.source(key), Some(Source::Default) | None))
                .map(str::to_owned)
        };
        if let Some(location) = set("hetzner.location") {
            self.defaults.location = location;
        }
        if let Some(image) = set("hetzner.image") {
            self.defaults.image = image;
        }
        if let Some(class) = set("class") {
            self.defaults.class =
                serde_json::from_value(serde_json::Value::String(class.to_ascii_lowercase()))
                    .map_or(ClassChoice::Literal(class), ClassChoice::Class);
        }
        self
    }

    /// A provider talking to `base_url` (e.g. `https://api.hetzner.cloud/v1`)
    /// with `token`, keeping keys under `<state_dir>/ssh/keys/`.
    #[must_use]
    pub fn new(base_url: &str, token: &str, state_dir: &Path) -> Self {
        Self {
            http: HttpClient::new("hetzner", base_url, token, TOKEN_ENV),
            state_dir: state_dir.to_owned(),
            poll_interval: DEFAULT_POLL_INTERVAL,
            boot_timeout: DEFAULT_BOOT_TIMEOUT,
            ssh_timeout: DEFAULT_SSH_TIMEOUT,
            ssh_bootstrap: true,
            work_base: DEFAULT_WORK_BASE.to_owned(),
            // Without a user config directory (Crabbox then refuses to
            // make leases) keys stay beside the endpoint records.
            testboxes: crabbox_spec::user_config::user_config_dir().map_or_else(
                || state_dir.join("ssh").join("keys"),
                |dir| dir.join("crabbox").join("testboxes"),
            ),
            fallback_ports: DEFAULT_FALLBACK_PORTS.to_vec(),
            defaults: Defaults::default(),
            config_problem: None,
            targets: Mutex::new(HashMap::new()),
            sightings: Mutex::new(HashMap::new()),
            user_keys: Mutex::new(HashMap::new()),
        }
    }

    /// Polls a booting server at most every `interval` (sooner while it has
    /// been booting for less than four intervals) for at most `timeout`.
    #[must_use]
    pub fn with_boot_polling(mut self, interval: Duration, timeout: Duration) -> Self {
        self.poll_interval = interval;
        self.boot_timeout = timeout;
        self
    }

    /// Waits at most `timeout` for SSH on a new server.
    #[must_use]
    pub fn with_ssh_timeout(mut self, timeout: Duration) -> Self {
        self.ssh_timeout = timeout;
        self
    }

    /// With `false`, create returns once the server runs, without waiting
    /// for SSH or preparing the work root (tests of the API alone).
    #[must_use]
    pub fn with_ssh_bootstrap(mut self, on: bool) -> Self {
        self.ssh_bootstrap = on;
        self
    }

    /// Puts work roots at `<base>/<lease>` instead of `crabbox/<lease>`
    /// (tests use a temporary directory rather than the login's home).
    #[must_use]
    pub fn with_work_base(mut self, base: &str) -> Self {
        self.work_base = base.trim_end_matches('/').to_owned();
        self
    }

    /// Keeps generated lease keys under `<dir>/<lease>/` instead of
    /// `<user config>/crabbox/testboxes/` (tests).
    #[must_use]
    pub fn with_testboxes_dir(mut self, dir: &Path) -> Self {
        self.testboxes = dir.to_owned();
        self
    }

    /// SSH ports tried after the member's primary one (default `[22]`);
    /// the bootstrap makes sshd serve them all.
    #[must_use]
    pub fn with_fallback_ports(mut self, ports: &[u16]) -> Self {
        self.fallback_ports = ports.to_vec();
        self
    }

    /// Per-request HTTP time limit (default 30 s).
    #[must_use]
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.http = self.http.with_timeout(timeout);
        self
    }

    /// `<state>/ssh/keys/<lease>/`: the endpoint record (and the keys of
    /// earlier versions).
    fn key_dir(&self, lease_id: &str) -> PathBuf {
        self.state_dir.join("ssh").join("keys").join(lease_id)
    }

    /// Crabbox's `testboxes/<lease>/`, where a generated lease key lives.
    fn testbox_dir(&self, lease_id: &str) -> PathBuf {
        self.testboxes.join(lease_id)
    }

    /// The lease's generated private key: where Crabbox keeps it, else
    /// where earlier versions of crabbox wrote it.
    fn stored_key(&self, lease_id: &str) -> PathBuf {
        let current = self.testbox_dir(lease_id).join(KEY_FILE);
        let legacy = self.key_dir(lease_id).join(KEY_FILE);
        if !current.exists() && legacy.exists() {
            legacy
        } else {
            current
        }
    }

    // ---- SSH targets ----

    fn cached_target(&self, lease_id: &str) -> Option<SshTarget> {
        self.targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(lease_id)
            .cloned()
    }

    fn remember_target(&self, target: SshTarget) {
        self.targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(target.lease_id.clone(), target);
    }

    fn forget_target(&self, lease_id: &str) -> Option<SshTarget> {
        self.targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(lease_id)
    }

    /// Remembers the labels a server was just seen with (those
    /// [`check_owned`] reads).
    fn saw(&self, server: &Server) {
        let seen = Server {
            id: server.id,
            name: server.name.clone(),
            status: String::new(),
            labels: [labels::CRABBOX, labels::POND, labels::LEASE]
                .into_iter()
                .filter_map(|k| Some((k.to_owned(), server.labels.get(k)?.clone())))
                .collect(),
            public_net: PublicNet::default(),
        };
        self.sightings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(server.id, (Instant::now(), seen));
    }

    fn forget_sighting(&self, id: u64) {
        self.sightings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }

    /// The server as seen in the last [`SIGHTING_TTL`].
    fn recent_sighting(&self, id: u64) -> Option<Server> {
        self.sightings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .filter(|(at, _)| at.elapsed() < SIGHTING_TTL)
            .map(|(_, server)| server.clone())
    }

    fn new_target(&self, lease_id: &str, host: String, record: &EndpointRecord) -> SshTarget {
        SshTarget {
            host,
            port: record.port,
            user: record.user.clone(),
            key: Some(record.key.clone()),
            work_root: if record.work_root.is_empty() {
                format!("{LEGACY_WORK_BASE}/{lease_id}")
            } else {
                record.work_root.clone()
            },
            state_dir: self.state_dir.clone(),
            lease_id: lease_id.to_owned(),
        }
    }

    fn read_endpoint(&self, lease_id: &str) -> Option<EndpointRecord> {
        let path = self.key_dir(lease_id).join(ENDPOINT_FILE);
        let bytes = std::fs::read(path).ok()?;
        serde_json::from_slice::<EndpointRecord>(&bytes)
            .ok()
            .filter(|r| r.lease_id == lease_id)
    }

    /// The lease's SSH target: cached, else rebuilt from its endpoint record
    /// (or the defaults) and its address.
    async fn target(&self, lease: &Lease) -> Result<SshTarget, ProviderError> {
        if let Some(t) = self.cached_target(&lease.id) {
            return Ok(t);
        }
        check_lease_id(&lease.id)?;
        let recorded = self.read_endpoint(&lease.id);
        let host = match lease.endpoint.host.clone().filter(|h| !h.is_empty()) {
            Some(host) => host,
            None => {
                let id = server_id(lease)?;
                let server = retried(|| self.get_server(id)).await.map_err(|e| {
                    if e.is_not_found() {
                        ProviderError::NotFound(format!("hetzner server {id} (lease {})", lease.id))
                    } else {
                        e.into()
                    }
                })?;
                server.ipv4().map(str::to_owned).ok_or_else(|| {
                    ProviderError::Failed(format!(
                        "hetzner server {id} (lease {}) has no public IPv4 address",
                        lease.id
                    ))
                })?
            }
        };
        // No record: a server Crabbox made, reached as Crabbox reaches it —
        // the first open port of 2222, then the fallbacks.
        let record = match recorded {
            Some(record) => record,
            None => {
                let primary = lease.endpoint.ssh_port.unwrap_or(DEFAULT_SSH_PORT);
                let mut port = primary;
                for candidate in cloud_init::port_candidates(primary, &self.fallback_ports) {
                    if port_open(&host, candidate).await {
                        port = candidate;
                        break;
                    }
                }
                EndpointRecord {
                    lease_id: lease.id.clone(),
                    user: DEFAULT_SSH_USER.to_owned(),
                    port,
                    key: self.stored_key(&lease.id),
                    pond: String::new(),
                    work_root: format!("{DEFAULT_WORK_BASE}/{}", lease.id),
                }
            }
        };
        let target = self.new_target(&lease.id, host, &record);
        self.remember_target(target.clone());
        Ok(target)
    }

    // ---- API calls ----

    async fn get_server(&self, id: u64) -> Result<Server, ApiError> {
        let server = self
            .http
            .get_json::<ServerEnvelope>(&format!("/servers/{id}"), &[])
            .await
            .map(|e| e.server);
        match &server {
            Ok(s) => self.saw(s),
            Err(e) if e.is_not_found() => self.forget_sighting(id),
            Err(_) => {}
        }
        server
    }

    /// The server if it carries crabbox's labels for this lease; else why not.
    async fn owned_server(&self, lease: &Lease, id: u64) -> Result<Server, ProviderError> {
        let server = retried(|| self.get_server(id)).await.map_err(|e| {
            if e.is_not_found() {
                ProviderError::NotFound(format!("hetzner server {id} (lease {})", lease.id))
            } else {
                e.into()
            }
        })?;
        check_owned(&server, lease)?;
        Ok(server)
    }

    fn lease_of(&self, server: &Server) -> Option<Lease> {
        self.lease_with_ports(server.clone(), &HashMap::new())
    }

    /// The SSH port of every lease with an endpoint record here (each record
    /// opened relative to `keys`, into one buffer: 10,000 of them are read
    /// at every discovery of a 10,000-member pond).
    fn recorded_ports(keys: &Path) -> HashMap<String, u16> {
        let (Ok(files), Ok(entries)) = (DirFiles::open(keys), std::fs::read_dir(keys)) else {
            return HashMap::new();
        };
        let mut bytes = Vec::with_capacity(1024);
        entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let lease = e.file_name().into_string().ok()?;
                let record = Path::new(&lease).join(ENDPOINT_FILE);
                files.read_into(&record, &mut bytes).ok()?;
                let record = serde_json::from_slice::<EndpointRecord>(&bytes).ok()?;
                (record.lease_id == lease).then_some((lease, record.port))
            })
            .collect()
    }

    /// [`Self::lease_of`] consuming the server, with endpoint records' ports
    /// read beforehand.
    fn lease_with_ports(&self, server: Server, ports: &HashMap<String, u16>) -> Option<Lease> {
        let id = server.labels.get(labels::LEASE)?.clone();
        let port = self
            .cached_target(&id)
            .map(|t| t.port)
            .or_else(|| ports.get(&id).copied())
            .or_else(|| {
                is_lease_id(&id)
                    .then(|| self.read_endpoint(&id))
                    .flatten()
                    .map(|r| r.port)
            })
            .unwrap_or(DEFAULT_SSH_PORT);
        let host = server.ipv4().map(str::to_owned);
        Some(Lease {
            id,
            provider: ProviderName::Hetzner,
            cloud_id: server.id.to_string(),
            labels: server.labels,
            endpoint: Endpoint {
                host,
                ssh_port: Some(port),
                url: None,
                shares: Vec::new(),
            },
            listed: true,
            claimed: false,
        })
    }

    /// The key with this fingerprint (Hetzner keeps fingerprints unique):
    /// one filtered request, however many keys the account holds.
    async fn key_with_fingerprint(
        &self,
        fingerprint: &str,
    ) -> Result<Option<UploadedKey>, ProviderError> {
        let list: SshKeyList = self
            .http
            .get_json_with_retries("/ssh_keys", &[("fingerprint", fingerprint.to_owned())])
            .await?;
        Ok(list
            .ssh_keys
            .into_iter()
            .find(|k| {
                k.fingerprint == fingerprint
                    || keys::fingerprint(&k.public_key).as_deref() == Some(fingerprint)
            })
            .map(|k| UploadedKey {
                id: k.id,
                name: k.name,
            }))
    }

    /// The name of the user's own key on Hetzner, uploading it (for this
    /// lease, as a generated key is) only when the account lacks it. The
    /// answer is kept for the rest of the process: a pond of members that
    /// share the key looks it up once, not once per member.
    async fn user_key(
        &self,
        request: &CreateRequest,
        public_key: &str,
    ) -> Result<String, ProviderError> {
        let fingerprint = keys::fingerprint(public_key).ok_or_else(|| ProviderError::Config {
            message: format!(
                "member `{}`: hetzner.ssh_key's public half is not an OpenSSH public key",
                request.member.slug
            ),
            hint: "write it with `ssh-keygen -y -f <key> > <key>.pub`".to_owned(),
        })?;
        let cell = self
            .user_keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(fingerprint.clone())
            .or_default()
            .clone();
        let key = cell
            .get_or_try_init(|| async {
                match self.key_with_fingerprint(&fingerprint).await? {
                    Some(key) => Ok(key),
                    None => self.upload_key(request, public_key, &fingerprint).await,
                }
            })
            .await?;
        Ok(key.name.clone())
    }

    /// Every key matching a label selector, all pages.
    async fn keys_matching(&self, selector: &str) -> Result<Vec<SshKey>, ProviderError> {
        let mut keys = Vec::new();
        let mut page = 1;
        loop {
            let query = [
                ("label_selector", selector.to_owned()),
                ("per_page", PER_PAGE.to_string()),
                ("page", page.to_string()),
            ];
            let list: SshKeyList = self.http.get_json_with_retries("/ssh_keys", &query).await?;
            keys.extend(list.ssh_keys);
            match list.meta.next_page() {
                Some(next) if next > page => page = next,
                _ => return Ok(keys),
            }
        }
    }

    /// Removes the lease's `testboxes/<lease>/` and `<state>/ssh/keys/<lease>/`
    /// (gone already is fine). The record's directory goes last, renamed
    /// to `.released-<lease>` first, so a removal cut short by a kill
    /// never leaves a directory that looks like a lease's but lacks the
    /// record naming its pond — [`Provider::sweep`] removes those.
    fn remove_key_dir(&self, lease_id: &str) -> std::io::Result<()> {
        let testbox = self.testbox_dir(lease_id);
        if testbox != self.key_dir(lease_id) {
            match std::fs::remove_dir_all(&testbox) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        let dir = self.key_dir(lease_id);
        let released = dir.with_file_name(format!("{RELEASED_PREFIX}{lease_id}"));
        match std::fs::rename(&dir, &released) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
        match std::fs::remove_dir_all(&released) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Ends the SSH control master a killed run left for `lease_id`, if
    /// any (it would otherwise live on for its `ControlPersist` time).
    async fn close_master(&self, lease_id: &str) {
        if !self
            .state_dir
            .join("ssh")
            .join("cm")
            .join(lease_id)
            .exists()
        {
            return;
        }
        // The control path names the lease only, so the destination is moot.
        let record = EndpointRecord {
            lease_id: lease_id.to_owned(),
            user: DEFAULT_SSH_USER.to_owned(),
            port: DEFAULT_SSH_PORT,
            key: self.stored_key(lease_id),
            pond: String::new(),
            work_root: String::new(),
        };
        self.new_target(lease_id, "127.0.0.1".to_owned(), &record)
            .close()
            .await;
    }

    /// Key directories whose removal began (`.released-<lease>`).
    fn released_key_dirs(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(self.state_dir.join("ssh").join("keys")) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix(RELEASED_PREFIX))
                    .is_some_and(is_lease_id)
            })
            .map(|e| e.path())
            .collect()
    }

    /// `pond`'s staging directories (`.creating-<lease>.<pond>`).
    fn staging_dirs(&self, pond: &str) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(self.state_dir.join("ssh").join("keys")) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_str().and_then(staging_pond) == Some(pond))
            .map(|e| e.path())
            .collect()
    }

    /// The lease directories under `<state>/ssh/keys/`, by lease ID.
    fn key_dirs(&self) -> Vec<(String, PathBuf)> {
        let Ok(entries) = std::fs::read_dir(self.state_dir.join("ssh").join("keys")) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let lease = e.file_name().into_string().ok()?;
                is_lease_id(&lease).then(|| (lease, e.path()))
            })
            .collect()
    }

    async fn keys_named(&self, name: &str) -> Result<Vec<SshKey>, ProviderError> {
        let list: SshKeyList = self
            .http
            .get_json_with_retries("/ssh_keys", &[("name", name.to_owned())])
            .await?;
        Ok(list
            .ssh_keys
            .into_iter()
            .filter(|k| k.name == name)
            .collect())
    }

    /// Uploads the lease's public key as `crabbox-<lease>` with labels;
    /// returns the key to put on the server. An earlier attempt's
    /// key for this lease is reused; the same public key uploaded under
    /// another name (Hetzner keeps fingerprints unique: a `409` from a
    /// concurrent upload) is found by its fingerprint and referenced by that
    /// name, never changed.
    async fn upload_key(
        &self,
        request: &CreateRequest,
        public_key: &str,
        fingerprint: &str,
    ) -> Result<UploadedKey, ProviderError> {
        let name = key_name(&request.lease_id);
        let body = json!({
            "name": name,
            "public_key": public_key,
            "labels": {
                labels::CRABBOX: "true",
                labels::LEASE: request.lease_id,
                labels::POND: request.pond,
            },
        });
        let mut replaced = false;
        loop {
            let err = match retried(|| self.http.post_json::<_, SshKeyEnvelope>("/ssh_keys", &body))
                .await
            {
                Ok(created) => {
                    return Ok(UploadedKey {
                        id: created.ssh_key.id,
                        name: created.ssh_key.name,
                    });
                }
                Err(e) if e.has_code("uniqueness_error") => e,
                Err(e) => return Err(e.into()),
            };
            if let Some(existing) = self.keys_named(&name).await?.into_iter().next() {
                if !key_is_ours(&existing, &request.lease_id) {
                    return Err(ProviderError::Failed(format!(
                        "hetzner: an SSH key named `{name}` exists that crabbox did not create for lease {}; delete or rename it",
                        request.lease_id
                    )));
                }
                if same_public_key(&existing.public_key, public_key) {
                    return Ok(UploadedKey {
                        id: existing.id,
                        name: existing.name,
                    });
                }
                if replaced {
                    return Err(err.into());
                }
                // Our own stale key from an earlier attempt, with another key pair.
                self.delete_key_id(existing.id).await?;
                replaced = true;
                continue;
            }
            return match self.key_with_fingerprint(fingerprint).await? {
                Some(k) => Ok(k),
                None => Err(err.into()),
            };
        }
    }

    async fn delete_key_id(&self, id: u64) -> Result<(), ProviderError> {
        let path = format!("/ssh_keys/{id}");
        match retried(|| self.http.delete(&path)).await {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        // A user's key released with the lease it was uploaded for is looked
        // up (and uploaded) afresh by the next create that wants it.
        self.user_keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, cell| cell.get().is_none_or(|k| k.id != id));
        Ok(())
    }

    /// Deletes the keys labelled for this lease: one listing by label finds
    /// the key whatever its name (today's Crabbox-shaped name, or the one
    /// earlier versions gave it).
    async fn delete_lease_key(&self, lease_id: &str) -> Result<(), ProviderError> {
        let keys = self.lease_keys(lease_id).await?;
        self.delete_listed_keys(lease_id, &keys).await
    }

    /// The keys labelled for this lease (one listing by label).
    async fn lease_keys(&self, lease_id: &str) -> Result<Vec<SshKey>, ProviderError> {
        let selector = format!("{}=true,{}={lease_id}", labels::CRABBOX, labels::LEASE);
        self.keys_matching(&selector).await
    }

    /// Deletes those of `keys` that are this lease's, all at once.
    async fn delete_listed_keys(
        &self,
        lease_id: &str,
        keys: &[SshKey],
    ) -> Result<(), ProviderError> {
        futures_util::future::try_join_all(
            keys.iter()
                .filter(|k| key_is_ours(k, lease_id))
                .map(|k| self.delete_key_id(k.id)),
        )
        .await
        .map(drop)
    }

    /// A release's key work once the server is known to be the lease's:
    /// the keys listed for it, then the one Crabbox's CLI made for it —
    /// looked up by name only when the listing did not already hold a key
    /// of that name (Hetzner's names are unique).
    async fn delete_release_keys(
        &self,
        lease: &Lease,
        listed: Result<Vec<SshKey>, ProviderError>,
    ) -> Result<(), ProviderError> {
        let listed = listed?;
        self.delete_listed_keys(&lease.id, &listed).await?;
        if listed.iter().any(|k| k.name == key_name(&lease.id)) {
            return Ok(());
        }
        self.delete_crabbox_made_key(lease).await
    }

    /// Deletes the key Crabbox's CLI made for a lease (adopted, or replaced
    /// with `--replace`): named by the server's `provider_key` label, as
    /// Crabbox's own release finds it (hetzner/backend.go:353-357), and
    /// labelled only `crabbox=true,created_by=crabbox`
    /// (internal/cli/hcloud.go:252-259) — never a key that names another lease.
    async fn delete_crabbox_made_key(&self, lease: &Lease) -> Result<(), ProviderError> {
        let Some(name) = lease
            .label("provider_key")
            .filter(|n| *n == key_name(&lease.id))
        else {
            return Ok(());
        };
        for key in self.keys_named(name).await? {
            let label = |k: &str| key.labels.get(k).map(String::as_str);
            if label(labels::CRABBOX) == Some("true")
                && label(labels::CREATED_BY) == Some("crabbox")
                && label(labels::LEASE).is_none_or(|l| l == lease.id)
            {
                self.delete_key_id(key.id).await?;
            }
        }
        Ok(())
    }

    /// Creates the server, falling back across class types on capacity errors.
    async fn create_server(
        &self,
        request: &CreateRequest,
        block: &HetznerBlock,
        key: &str,
        user_data: &str,
    ) -> Result<Server, ProviderError> {
        let (types, exact) = server_types(&request.member, &self.defaults.class);
        let name = server_name(&request.member.slug, &request.lease_id);
        let location = block.location.as_deref().unwrap_or(&self.defaults.location);
        let image = block.image.as_deref().unwrap_or(&self.defaults.image);
        let mut rejected: Vec<String> = Vec::new();
        for server_type in &types {
            let mut labels = request.labels.clone();
            labels.insert(
                labels::SERVER_TYPE.to_owned(),
                labels::sanitize(server_type),
            );
            // The key actually used, as Crabbox labels it (hetzner/backend.go:107).
            labels.insert(labels::PROVIDER_KEY.to_owned(), labels::sanitize(key));
            let body = json!({
                "name": name,
                "server_type": server_type,
                "image": image,
                "location": location,
                "labels": labels,
                "ssh_keys": [key],
                "user_data": user_data,
                "start_after_create": true,
                "public_net": { "enable_ipv4": true, "enable_ipv6": false },
            });
            // A create whose answer was lost is found by its name below.
            match retried(|| self.http.post_json::<_, ServerEnvelope>("/servers", &body)).await {
                Ok(created) => {
                    self.saw(&created.server);
                    return Ok(created.server);
                }
                Err(e) if e.has_code("uniqueness_error") => {
                    // An earlier attempt may have created it before its answer was lost.
                    return match self.server_named(&name).await? {
                        Some(s) if s.labels.get(labels::LEASE) == Some(&request.lease_id) => Ok(s),
                        _ => Err(e.into()),
                    };
                }
                Err(e) if is_capacity(&e) => {
                    if exact {
                        return Err(ProviderError::Failed(format!(
                            "{} (type `{server_type}` is pinned by the member's `type` and never falls back; use a `class` to allow other types)",
                            e.error
                        )));
                    }
                    rejected.push(format!(
                        "{server_type}: {}: {}",
                        e.code.as_deref().unwrap_or("capacity"),
                        e.message
                    ));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ProviderError::Failed(format!(
            "hetzner: no server type of class `{}` could be created in {location}: {}",
            match (request.member.class, &self.defaults.class) {
                (Some(c), _) | (None, &ClassChoice::Class(c)) => c.as_str(),
                (None, ClassChoice::Literal(t)) => t.as_str(),
            },
            rejected.join("; ")
        )))
    }

    async fn server_named(&self, name: &str) -> Result<Option<Server>, ProviderError> {
        let list: ServerList = self
            .http
            .get_json_with_retries("/servers", &[("name", name.to_owned())])
            .await?;
        Ok(list.servers.into_iter().find(|s| s.name == name))
    }

    /// Polls until the server runs with an IPv4 address.
    async fn wait_running(&self, id: u64) -> Result<Server, ProviderError> {
        let started = Instant::now();
        let deadline = started + self.boot_timeout;
        let floor = MIN_POLL_WAIT.min(self.poll_interval);
        loop {
            let answer = self.get_server(id).await;
            // A fraction of the time booting so far; a smaller one once the
            // server is `starting` (powering on: the end is near).
            let fraction = match &answer {
                Ok(s) if s.status == "starting" => STARTING_POLL_FRACTION,
                _ => POLL_FRACTION,
            };
            let mut wait = (started.elapsed() / fraction).clamp(floor, self.poll_interval);
            let last = match answer {
                Ok(s) if s.status == "running" && s.ipv4().is_some() => return Ok(s),
                Ok(s) => format!("status `{}`", s.status),
                Err(e) if e.is_not_found() => {
                    return Err(ProviderError::Failed(format!(
                        "hetzner server {id} disappeared while booting"
                    )));
                }
                Err(e) => {
                    let (message, after) = e.poll_again()?;
                    wait = wait.max(after);
                    message
                }
            };
            if Instant::now() + wait > deadline {
                return Err(ProviderError::Failed(format!(
                    "hetzner server {id} was not running with an IPv4 address after {}s (last: {last})",
                    self.boot_timeout.as_secs()
                )));
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// After the server exists: wait for it, for SSH, prepare the work root.
    async fn bootstrap(
        &self,
        request: &CreateRequest,
        id: u64,
        record: &EndpointRecord,
    ) -> Result<Lease, ProviderError> {
        let server = self.wait_running(id).await?;
        let host = server.ipv4().unwrap_or_default().to_owned();
        let mut target = self.new_target(&request.lease_id, host, record);
        let ports = cloud_init::port_candidates(record.port, &self.fallback_ports);
        // The address is newly ours: a key recorded for it belonged to an
        // earlier server (Hetzner reuses addresses).
        for port in &ports {
            self.forget_host_key(&target.host, *port);
        }
        if self.ssh_bootstrap {
            target.port = self.wait_for_ssh(&target, &ports).await?;
            if target.port != record.port {
                // Later processes go straight to the port that answered.
                self.rewrite_port(record, target.port)?;
            }
        }
        self.remember_target(target);
        self.lease_of(&server).ok_or_else(|| {
            ProviderError::Failed(format!(
                "hetzner server {id} came back without its `lease` label"
            ))
        })
    }

    /// Waits until SSH on one of `ports` (in order; each round tries the
    /// open ones) logs in and passes Crabbox's ready check, as Crabbox's
    /// `waitForSSHReady` does (ssh.go:265-315), and creates the lease's work
    /// root in that same command (one round trip, over the connection setup
    /// then reuses); returns that port. A refused login, a changed host key
    /// or a work root that cannot be made fails at once.
    async fn wait_for_ssh(&self, target: &SshTarget, ports: &[u16]) -> Result<u16, ProviderError> {
        let deadline = Instant::now() + self.ssh_timeout;
        // A server that runs often answers on its primary port already: one
        // login then, without the TCP probe first, which costs the host a
        // connection (an sshd process) of its own.
        if let Some(&first) = ports.first() {
            let probe = SshTarget {
                port: first,
                ..target.clone()
            };
            if probe
                .try_prepared(
                    cloud_init::READY_CHECK,
                    PORT_SSH_TIMEOUT.min(self.ssh_timeout),
                )
                .await?
            {
                return Ok(first);
            }
        }
        loop {
            let mut seen = Vec::new();
            for &port in ports {
                if !port_open(&target.host, port).await {
                    seen.push(format!("{port}: closed"));
                    continue;
                }
                let probe = SshTarget {
                    port,
                    ..target.clone()
                };
                let left = deadline.saturating_duration_since(Instant::now());
                match probe
                    .wait_prepared(cloud_init::READY_CHECK, PORT_SSH_TIMEOUT.min(left))
                    .await
                {
                    Ok(()) => return Ok(port),
                    Err(e @ ProviderError::Config { .. }) => return Err(e),
                    Err(e) => seen.push(format!("{port}: {e}")),
                }
            }
            if Instant::now() + PORT_ROUND_PAUSE >= deadline {
                return Err(ProviderError::Failed(format!(
                    "SSH to {}@{} was not ready on any port within {}s ({}); check the server's console in Hetzner's panel",
                    target.user,
                    target.host,
                    self.ssh_timeout.as_secs(),
                    seen.join("; ")
                )));
            }
            tokio::time::sleep(PORT_ROUND_PAUSE).await;
        }
    }

    /// Rewrites the lease's endpoint record with the port SSH answered on.
    fn rewrite_port(&self, record: &EndpointRecord, port: u16) -> Result<(), ProviderError> {
        let record = EndpointRecord {
            port,
            ..record.clone()
        };
        let path = self.key_dir(&record.lease_id).join(ENDPOINT_FILE);
        let bytes = serde_json::to_vec_pretty(&record)
            .map_err(|e| ProviderError::Failed(format!("endpoint record: {e}")))?;
        crabbox_fs::atomic_file::write(&path, &bytes)
            .map_err(|e| ProviderError::Failed(format!("writing {}: {e}", path.display())))
    }

    /// Best-effort undo of a create that did not finish.
    async fn roll_back(&self, lease_id: &str, server: Option<u64>) {
        if let Some(t) = self.forget_target(lease_id) {
            t.close().await;
        }
        if let Some(id) = server {
            // Only ever a server this create made: it carries the lease label.
            if let Ok(s) = retried(|| self.get_server(id)).await
                && s.labels.get(labels::LEASE).map(String::as_str) == Some(lease_id)
                && s.labels.get(labels::CRABBOX).map(String::as_str) == Some("true")
            {
                let path = format!("/servers/{id}");
                let _ = retried(|| self.http.delete(&path)).await;
            }
        }
        let _ = self.delete_lease_key(lease_id).await;
        let _ = self.remove_key_dir(lease_id);
    }

    /// Removes `host:port` from crabbox's known-hosts file (best effort).
    fn forget_host_key(&self, host: &str, port: u16) {
        let _ = crabbox_exec::ssh::forget_host_key(&self.state_dir, host, port);
    }

    /// The lease's SSH key: the member's own, the one generated for this
    /// lease by an earlier attempt, or a new one (its files not yet written).
    fn lease_key(&self, lease_id: &str, settings: &SshSettings) -> Result<LeaseKey, ProviderError> {
        if let Some(private) = &settings.key {
            let mut public = private.clone().into_os_string();
            public.push(".pub");
            let public = PathBuf::from(public);
            let text = std::fs::read_to_string(&public).map_err(|e| ProviderError::Config {
                message: format!(
                    "hetzner.ssh_key `{}`: cannot read its public half {}: {e}",
                    private.display(),
                    public.display()
                ),
                hint: format!(
                    "write it with `ssh-keygen -y -f {} > {}`, or leave `ssh_key` out to get a per-lease key",
                    private.display(),
                    public.display()
                ),
            })?;
            return Ok(LeaseKey {
                private: private.clone(),
                public: text.trim().to_owned(),
                new: None,
            });
        }
        let private = self.stored_key(lease_id);
        let mut public = private.clone().into_os_string();
        public.push(".pub");
        if let (true, Ok(text)) = (private.exists(), std::fs::read_to_string(&public)) {
            return Ok(LeaseKey {
                private,
                public: text.trim().to_owned(),
                new: None,
            });
        }
        // In-process, as Crabbox's `ssh-keygen -t ed25519 -N '' -C 'crabbox
        // <lease>'` (lease.go:220-242) would write it: starting ssh-keygen
        // cost more CPU than the rest of a create.
        let key = openssh_ed25519::generate(&format!("crabbox {lease_id}"))?;
        Ok(LeaseKey {
            private: self.testbox_dir(lease_id).join(KEY_FILE),
            public: key.public.trim().to_owned(),
            new: Some(key),
        })
    }
}

/// The member's Hetzner block.
fn block_of(member: &DesiredMember) -> Result<HetznerBlock, ProviderError> {
    member.block().map_err(|e| ProviderError::Config {
        message: format!("member `{}`: invalid hetzner block: {e}", member.slug),
        hint: "see `crabbox schema` for the fields of `hetzner:`".to_owned(),
    })
}

fn ssh_settings(block: &HetznerBlock) -> SshSettings {
    SshSettings {
        user: block
            .ssh_user
            .clone()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| DEFAULT_SSH_USER.to_owned()),
        port: block.ssh_port.unwrap_or(DEFAULT_SSH_PORT),
        key: block
            .ssh_key
            .as_deref()
            .filter(|k| !k.is_empty())
            .map(expand_tilde),
    }
}

/// Whether `host:port` accepts a TCP connection within [`PORT_PROBE_TIMEOUT`].
async fn port_open(host: &str, port: u16) -> bool {
    tokio::time::timeout(
        PORT_PROBE_TIMEOUT,
        tokio::net::TcpStream::connect((host, port)),
    )
    .await
    .is_ok_and(|c| c.is_ok())
}

/// The types to try and whether the member pinned one.
fn server_types(member: &DesiredMember, default: &ClassChoice) -> (Vec<String>, bool) {
    if let Some(t) = member.server_type.as_deref().filter(|t| !t.is_empty()) {
        return (vec![t.to_owned()], true);
    }
    match (member.class, default) {
        (Some(c), _) | (None, &ClassChoice::Class(c)) => (
            class_types(c).iter().map(|t| (*t).to_owned()).collect(),
            false,
        ),
        (None, ClassChoice::Literal(t)) => (vec![t.clone()], false),
    }
}

/// `call` retried as the executor retries a step (429, 5xx, time-outs;
/// `Retry-After` honoured), keeping the last [`ApiError`] so callers can
/// still branch on its code. Each call is retried on its own, so a create
/// or release made of several calls does not start over (and re-send
/// calls that succeeded) when one of them meets a passing error.
async fn retried<T, F, Fut>(mut call: F) -> Result<T, ApiError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ApiError>>,
{
    let last: Arc<Mutex<Option<ApiError>>> = Arc::default();
    let result = crabbox_core::retry::with_retries(|| {
        let attempt = call();
        let last = last.clone();
        async move {
            attempt.await.map_err(|e| {
                let error = e.error.clone();
                *last.lock().unwrap_or_else(PoisonError::into_inner) = Some(e);
                error
            })
        }
    })
    .await;
    result.map_err(|error| {
        last.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .unwrap_or(ApiError {
                status: None,
                code: None,
                message: error.to_string(),
                error,
            })
    })
}

fn is_capacity(e: &ApiError) -> bool {
    e.code
        .as_deref()
        .is_some_and(|c| CAPACITY_CODES.contains(&c))
}

fn key_is_ours(key: &SshKey, lease_id: &str) -> bool {
    key.labels.get(labels::CRABBOX).map(String::as_str) == Some("true")
        && key.labels.get(labels::LEASE).map(String::as_str) == Some(lease_id)
}

/// Same key type and blob (comments differ freely).
fn same_public_key(a: &str, b: &str) -> bool {
    let fields = |s: &str| s.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    fields(a) == fields(b)
}

fn check_pond(pond: &str) -> Result<(), ProviderError> {
    if pond.is_empty() || labels::sanitize(pond) != pond {
        Err(ProviderError::Failed(format!(
            "`{pond}` is not a valid pond label value"
        )))
    } else {
        Ok(())
    }
}

fn check_lease_id(id: &str) -> Result<(), ProviderError> {
    if is_lease_id(id) {
        Ok(())
    } else {
        Err(ProviderError::Failed(format!(
            "`{id}` is not a crabbox lease ID (cbx_ + 12 hex)"
        )))
    }
}

fn server_id(lease: &Lease) -> Result<u64, ProviderError> {
    lease.cloud_id.parse().map_err(|_| {
        ProviderError::Failed(format!(
            "lease {}: `{}` is not a Hetzner server ID",
            lease.id, lease.cloud_id
        ))
    })
}

/// crabbox changes or deletes only servers carrying `crabbox=true`, a pond
/// (the lease's, when it names one) and this lease's ID.
fn check_owned(server: &Server, lease: &Lease) -> Result<(), ProviderError> {
    let get = |k: &str| server.labels.get(k).map(String::as_str);
    let pond_ok = match (get(labels::POND), lease.label(labels::POND)) {
        (Some(p), Some(want)) => !p.is_empty() && p == want,
        (Some(p), None) => !p.is_empty(),
        (None, _) => false,
    };
    if get(labels::CRABBOX) == Some("true") && pond_ok && get(labels::LEASE) == Some(&lease.id) {
        Ok(())
    } else {
        Err(ProviderError::Failed(format!(
            "refusing to touch hetzner server {} (`{}`): it does not carry crabbox's labels for lease {} (crabbox=true, pond, lease)",
            server.id, server.name, lease.id
        )))
    }
}

#[async_trait]
impl Provider for HetznerProvider {
    fn session<'a>(&'a self, lease: &'a Lease) -> Box<dyn Session + 'a> {
        Box::new(SshSession::new(self, lease))
    }

    fn name(&self) -> ProviderName {
        ProviderName::Hetzner
    }

    async fn list(&self, pond: &str) -> Result<Vec<Lease>, ProviderError> {
        check_pond(pond)?;
        let selector = format!("{}=true,{}={pond}", labels::CRABBOX, labels::POND);
        // The endpoint records are read while the pages are on their way.
        let keys = self.state_dir.join("ssh").join("keys");
        let ports = tokio::task::spawn_blocking(move || Self::recorded_ports(&keys));
        let servers = self.servers_matching(&selector).await;
        let ports = ports.await.unwrap_or_default();
        let servers = servers?;
        let mut seen = HashSet::new();
        let mut leases: Vec<Lease> = servers
            .into_iter()
            .filter(|s| seen.insert(s.id))
            .filter_map(|s| {
                self.saw(&s);
                self.lease_with_ports(s, &ports)
            })
            .collect();
        leases.sort_by(|a, b| a.id.cmp(&b.id).then(a.cloud_id.cmp(&b.cloud_id)));
        Ok(leases)
    }

    async fn ponds(&self) -> Result<Vec<String>, ProviderError> {
        let selector = format!("{}=true", labels::CRABBOX);
        let ponds: std::collections::BTreeSet<String> = self
            .servers_matching(&selector)
            .await?
            .into_iter()
            .filter_map(|s| s.labels.get(labels::POND).cloned())
            .collect();
        Ok(ponds.into_iter().collect())
    }

    async fn slugs_in_use(&self) -> Result<Vec<String>, ProviderError> {
        // The whole account, as Crabbox lists it (hcloud.go:213-222).
        let selector = format!("{}=true", labels::CRABBOX);
        Ok(self
            .servers_matching(&selector)
            .await?
            .into_iter()
            .filter_map(|s| s.labels.get(labels::SLUG).cloned())
            .collect())
    }

    async fn create(&self, request: &CreateRequest) -> Result<Lease, ProviderError> {
        if let Some(why) = &self.config_problem {
            return Err(ProviderError::Config {
                message: format!("Crabbox's user config cannot be read: {why}"),
                hint: "fix the file (`crabbox config show` points at the problem), or set CRABBOX_CONFIG to a good one".to_owned(),
            });
        }
        check_lease_id(&request.lease_id)?;
        let block = block_of(&request.member)?;
        let settings = ssh_settings(&block);
        let mut key = self.lease_key(&request.lease_id, &settings)?;
        let record = EndpointRecord {
            lease_id: request.lease_id.clone(),
            user: settings.user.clone(),
            port: settings.port,
            key: key.private.clone(),
            pond: request.pond.clone(),
            work_root: format!("{}/{}", self.work_base, request.lease_id),
        };
        let bytes = serde_json::to_vec_pretty(&record)
            .map_err(|e| ProviderError::Failed(format!("endpoint record: {e}")))?;
        // The local files (a new key, the endpoint record) are written while
        // the key uploads; both are done before the server is created.
        let writing = {
            let dir = self.key_dir(&request.lease_id);
            let new = key.new.take();
            let private = key.private.clone();
            let pond = request.pond.clone();
            tokio::task::spawn_blocking(move || {
                write_lease_files(&dir, &pond, &bytes)?;
                new.map_or(Ok(()), |new| write_lease_key(&private, &new))
            })
        };
        let uploaded = if settings.key.is_some() {
            self.user_key(request, &key.public).await
        } else {
            match keys::fingerprint(&key.public) {
                Some(fp) => self
                    .upload_key(request, &key.public, &fp)
                    .await
                    .map(|k| k.name),
                None => Err(ProviderError::Failed(format!(
                    "lease {}: its key {} is not an OpenSSH public key; delete it to have a new one made",
                    request.lease_id,
                    key.private.display()
                ))),
            }
        };
        let written = match writing.await {
            Ok(written) => written,
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = written {
            self.roll_back(&request.lease_id, None).await;
            return Err(ProviderError::Failed(e));
        }
        // A retryable failure keeps the key (local and uploaded): the
        // executor calls create again with the same lease ID, which reuses
        // it, and adopts a server whose creation answer was lost.
        let key_name = match uploaded {
            Ok(name) => name,
            Err(e) => {
                if !e.is_retryable() {
                    self.roll_back(&request.lease_id, None).await;
                }
                return Err(e);
            }
        };
        let user_data = cloud_init::user_data(
            &settings.user,
            &key.public,
            &cloud_init::port_candidates(settings.port, &self.fallback_ports),
            DEFAULT_WORK_BASE,
        );
        let server = match self
            .create_server(request, &block, &key_name, &user_data)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                if !e.is_retryable() {
                    self.roll_back(&request.lease_id, None).await;
                }
                return Err(e);
            }
        };
        match self.bootstrap(request, server.id, &record).await {
            Ok(lease) => Ok(lease),
            Err(e) => {
                self.roll_back(&request.lease_id, Some(server.id)).await;
                Err(e)
            }
        }
    }

    async fn relabel(&self, lease: &Lease, labels: &Labels) -> Result<(), ProviderError> {
        let id = server_id(lease)?;
        // Labels can be put back, so a recent sighting is proof enough.
        match self.recent_sighting(id) {
            Some(seen) => check_owned(&seen, lease)?,
            None => {
                self.owned_server(lease, id).await?;
            }
        }
        let keeps = |k: &str, v: &str| labels.get(k).map(String::as_str) == Some(v);
        if !(keeps(labels::CRABBOX, "true")
            && keeps(labels::LEASE, &lease.id)
            && labels.get(labels::POND).is_some_and(|p| !p.is_empty()))
        {
            return Err(ProviderError::Failed(format!(
                "refusing to relabel hetzner server {id}: the new labels drop crabbox=true, pond or lease={}",
                lease.id
            )));
        }
        let body = json!({ "labels": labels });
        let path = format!("/servers/{id}");
        let updated: ServerEnvelope = retried(|| self.http.put_json(&path, &body))
            .await
            .inspect_err(|e| {
                if e.is_not_found() {
                    self.forget_sighting(id);
                }
            })?;
        self.saw(&updated.server);
        Ok(())
    }

    async fn sweep(&self, pond: &str) -> Result<Vec<String>, ProviderError> {
        check_pond(pond)?;
        let selector = format!("{}=true,{}={pond}", labels::CRABBOX, labels::POND);
        // Only what was observed counts: a failed listing sweeps nothing.
        let (servers, keys) = tokio::try_join!(
            self.servers_matching(&selector),
            self.keys_matching(&selector)
        )?;
        let live: HashSet<String> = servers
            .into_iter()
            .filter_map(|s| s.labels.get(labels::LEASE).cloned())
            .collect();
        let mut removed = Vec::new();
        let mut left = Vec::new();
        let mut swept_leases = HashSet::new();
        for key in keys {
            let Some(lease) = key.labels.get(labels::LEASE).cloned() else {
                continue;
            };
            if live.contains(&lease)
                || !is_lease_id(&lease)
                || !key_is_ours(&key, &lease)
                || key.labels.get(labels::POND).map(String::as_str) != Some(pond)
            {
                continue;
            }
            match self.delete_key_id(key.id).await {
                Ok(()) => removed.push(format!(
                    "hetzner SSH key `{}` (lease {lease} has no server)",
                    key.name
                )),
                Err(e) => left.push(format!(
                    "hetzner SSH key `{}` (id {}): {e}",
                    key.name, key.id
                )),
            }
            swept_leases.insert(lease);
        }
        for (lease, dir) in self.key_dirs() {
            if live.contains(&lease) {
                continue;
            }
            let of_pond = self.read_endpoint(&lease).is_some_and(|r| r.pond == pond);
            if !(of_pond || swept_leases.contains(&lease)) {
                continue;
            }
            self.close_master(&lease).await;
            match self.remove_key_dir(&lease) {
                Ok(()) => removed.push(format!("key directory {}", dir.display())),
                Err(e) => left.push(format!("key directory {}: {e}", dir.display())),
            }
        }
        // Directories a removal began and did not finish (already out of
        // every lease's name, so no run uses them), and this pond's staging
        // directories of creates that died (none runs: we hold the lock).
        for dir in self
            .released_key_dirs()
            .into_iter()
            .chain(self.staging_dirs(pond))
        {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => removed.push(format!("key directory {}", dir.display())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => left.push(format!("key directory {}: {e}", dir.display())),
            }
        }
        if left.is_empty() {
            Ok(removed)
        } else {
            Err(ProviderError::Failed(format!(
                "left behind by earlier runs of pond `{pond}` and not removed: {}",
                left.join("; ")
            )))
        }
    }

    async fn ssh_target(&self, lease: &Lease) -> Option<SshTarget> {
        if let Some(t) = self.cached_target(&lease.id) {
            return Some(t);
        }
        let record = self.read_endpoint(&lease.id)?;
        let host = lease.endpoint.host.clone().filter(|h| !h.is_empty())?;
        Some(self.new_target(&lease.id, host, &record))
    }

    async fn release(&self, lease: &Lease) -> Result<(), ProviderError> {
        let id = server_id(lease)?;
        let path = format!("/servers/{id}");
        let ours = is_lease_id(&lease.id);
        // A delete cannot be undone: ownership is always read afresh —
        // while the lease's keys are listed (reading them commits nothing).
        let listing = async {
            if ours {
                Some(self.lease_keys(&lease.id).await)
            } else {
                None
            }
        };
        // The master an earlier process opened outlives it by its
        // `ControlPersist` time; it closes meanwhile too (local only).
        let closing = async {
            if ours && self.cached_target(&lease.id).is_none() {
                self.close_master(&lease.id).await;
            }
        };
        let (owned, listed, ()) = tokio::join!(self.owned_server(lease, id), listing, closing);
        let (outcome, key_deleted) = match owned {
            Ok(_) => {
                // The key only served the server's creation: it goes meanwhile.
                let (deleted, key) = tokio::join!(retried(|| self.http.delete(&path)), async {
                    match listed {
                        Some(listed) => Some(self.delete_release_keys(lease, listed).await),
                        None => None,
                    }
                });
                match deleted {
                    Ok(()) => (Ok(()), key),
                    Err(e) if e.is_not_found() => (
                        Err(ProviderError::NotFound(format!(
                            "hetzner server {id} (lease {})",
                            lease.id
                        ))),
                        key,
                    ),
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e @ ProviderError::NotFound(_)) => (
                Err(e),
                match listed {
                    Some(Ok(keys)) => Some(self.delete_listed_keys(&lease.id, &keys).await),
                    Some(Err(e)) => Some(Err(e)),
                    None => None,
                },
            ),
            Err(e) => return Err(e),
        };
        self.forget_sighting(id);
        // The server is gone: its key, host key and local state go too.
        if let Some(t) = self.forget_target(&lease.id) {
            t.close().await;
            self.forget_host_key(&t.host, t.port);
        } else if let Some(host) = lease.endpoint.host.as_deref().filter(|h| !h.is_empty()) {
            let port = self
                .read_endpoint(&lease.id)
                .map(|r| r.port)
                .or(lease.endpoint.ssh_port)
                .unwrap_or(DEFAULT_SSH_PORT);
            self.forget_host_key(host, port);
        }
        if is_lease_id(&lease.id) {
            let key_deleted = key_deleted.unwrap_or(Ok(()));
            key_deleted.map_err(|e| {
                ProviderError::Failed(format!(
                    "hetzner server {id} was deleted, but its SSH key `{}` was not: {e}",
                    key_name(&lease.id)
                ))
            })?;
            self.remove_key_dir(&lease.id).map_err(|e| {
                ProviderError::Failed(format!(
                    "removing {}: {e}",
                    self.key_dir(&lease.id).display()
                ))
            })?;
        }
        outcome
    }
}

#[async_trait]
impl SshTargets for HetznerProvider {
    async fn ssh_target_of(&self, lease: &Lease) -> Result<SshTarget, ProviderError> {
        self.target(lease).await
    }

    async fn before_stop(&self, target: &SshTarget) -> Result<(), ProviderError> {
        if self.ssh_bootstrap {
            // A server adopted after its creator died may still be booting.
            target.wait_ready(self.ssh_timeout).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::keys::write_new_private;
    use super::*;

    #[test]
    fn fnv_and_names() {
        // FNV-1a reference values.
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
        let name = server_name("db", "cbx_0123456789ab");
        assert_eq!(
            name,
            format!("crabbox-db-{:08x}", fnv1a32(b"cbx_0123456789ab"))
        );
        let long = server_name(&"x".repeat(80), "cbx_0123456789ab");
        assert!(long.len() <= 63, "{long}");
        // Crabbox's shape (its `validCrabboxProviderKey` deletes no other).
        assert_eq!(key_name("cbx_0123456789ab"), "crabbox-cbx-0123456789ab");
    }

    #[test]
    fn classes_map_to_crabbox_types() {
        assert_eq!(class_types(Class::Standard), ["ccx33", "cpx62", "cx53"]);
        assert_eq!(class_types(Class::Tiny), ["ccx13", "cpx22", "cx23"]);
        assert_eq!(class_types(Class::Beast)[0], "ccx63");
    }

    #[test]
    fn generated_keys_are_openssh_ed25519_keys() {
        assert_eq!(openssh_ed25519::base64(b""), "");
        assert_eq!(openssh_ed25519::base64(b"f"), "Zg==");
        assert_eq!(openssh_ed25519::base64(b"fo"), "Zm8=");
        assert_eq!(openssh_ed25519::base64(b"foobar"), "Zm9vYmFy");
        let key = openssh_ed25519::generate("crabbox-cbx_0123456789ab").expect("key");
        assert!(
            key.public
                .starts_with("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI")
        );
        assert!(key.public.ends_with(" crabbox-cbx_0123456789ab\n"));
        // OpenSSH reads the private key and derives the same public key.
        let dir = tempfile::tempdir().expect("tempdir");
        let private = dir.path().join("id_ed25519");
        write_new_private(&private, key.private.as_bytes()).expect("write");
        let derived = std::process::Command::new("ssh-keygen")
            .arg("-y")
            .arg("-f")
            .arg(&private)
            .output()
            .expect("ssh-keygen runs (openssh-client)");
        assert!(derived.status.success(), "{derived:?}");
        assert_eq!(
            String::from_utf8_lossy(&derived.stdout).trim(),
            key.public.trim(),
            "ssh-keygen -y prints the same key and comment"
        );
    }

    #[test]
    fn fingerprints_are_hetzners_md5_as_ssh_keygen_prints_it() {
        let key = openssh_ed25519::generate("crabbox-fp").expect("key");
        let dir = tempfile::tempdir().expect("tempdir");
        let public = dir.path().join("id_ed25519.pub");
        std::fs::write(&public, &key.public).expect("write");
        let listed = std::process::Command::new("ssh-keygen")
            .args(["-l", "-E", "md5", "-f"])
            .arg(&public)
            .output()
            .expect("ssh-keygen runs (openssh-client)");
        assert!(listed.status.success(), "{listed:?}");
        // `256 MD5:aa:bb:… comment (ED25519)`
        let text = String::from_utf8_lossy(&listed.stdout);
        let expected = text
            .split_whitespace()
            .nth(1)
            .and_then(|f| f.strip_prefix("MD5:"))
            .expect("an MD5 fingerprint");
        assert_eq!(keys::fingerprint(&key.public).as_deref(), Some(expected));
        assert_eq!(keys::fingerprint("ssh-ed25519"), None, "no blob");
        assert_eq!(keys::fingerprint("ssh-ed25519 not*base64"), None);
    }

    #[test]
    fn public_keys_compare_without_comments() {
        assert!(same_public_key(
            "ssh-ed25519 AAAA me@host",
            "ssh-ed25519 AAAA crabbox"
        ));
        assert!(!same_public_key("ssh-ed25519 AAAA", "ssh-ed25519 BBBB"));
    }
}
