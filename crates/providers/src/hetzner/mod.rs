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
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;

mod api;

use crate::claimed_ports::ClaimedPorts;
use crate::registry::Descriptor;
use crate::ssh_lease::boot::Seen;
use crate::ssh_lease::endpoint::EndpointRecord;
use crate::ssh_lease::keys;
use crate::ssh_lease::sightings::Sightings;
use crate::ssh_lease::{
    SshLeases, SshSettings, carries_lease_labels, check_lease_id, check_pond, keeps_lease_labels,
};
use api::{PublicNet, Server, ServerEnvelope, ServerList, SshKey, SshKeyEnvelope, SshKeyList};
use crabbox_exec::session::{Session, SshSession, SshTargets};
use serde_json::json;

pub use crate::ssh_lease::names::{key_name, server_name};

use crate::http::{ApiError, HttpClient};
use crate::{CreateRequest, Provider};
use crabbox_core::labels::{self, Labels};
use crabbox_core::lease::{Endpoint, Lease, is_lease_id};
use crabbox_core::provider::ProviderError;
use crabbox_core::provider::ProviderName;
use crabbox_exec::ssh::SshTarget;
use crabbox_spec::desired::DesiredMember;
use crabbox_spec::model::Class;
use crabbox_spec::providers::HetznerBlock;
use crabbox_spec::user_config::{Source, UserConfig};

/// Hetzner's public API.
pub const DEFAULT_ENDPOINT: &str = "https://api.hetzner.cloud/v1";
/// The token variable named in hints.
const TOKEN_ENV: &str = "HCLOUD_TOKEN";
/// Image when the block names none.
const DEFAULT_IMAGE: &str = "ubuntu-24.04";
/// Location when the block names none.
const DEFAULT_LOCATION: &str = "fsn1";
/// Class when the member names neither class nor type.
const DEFAULT_CLASS: Class = Class::Standard;
/// Hetzner's page-size maximum.
const PER_PAGE: u32 = 50;
/// Error codes that mean "this type, here, now: no", so the next type is tried.
const CAPACITY_CODES: [&str; 5] = [
    "resource_unavailable",
    "server_type_not_available",
    "dedicated_core_limit",
    "resource_limit_exceeded",
    "location_not_available",
];

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
    /// Keys, endpoint records, boot and SSH waits, SSH targets.
    leases: SshLeases,
    /// Location, image and class for members that leave them open.
    defaults: Defaults,
    /// Why Crabbox's user config could not be read, if it could not: its
    /// location, image and class would be guessed, so creates are refused
    /// (reading and releasing are not).
    config_problem: Option<String>,
    /// Server ID → the server as this provider last saw it (name and the
    /// labels that make it ours).
    sightings: Sightings<u64, Server>,
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
    /// Every server matching a label selector, handed to `on_page` a page
    /// at a time as the pages arrive (so what the caller makes of them is
    /// done while the later pages are on their way): the first page, then
    /// the rest concurrently (at most [`PAGE_FETCHES`] at a time) once the
    /// pagination meta says how many there are, each fetched and decoded
    /// in a task of its own (decoding a page costs about as much as
    /// waiting for it, so they share the runtime's threads).
    async fn servers_matching(
        &self,
        selector: &str,
        mut on_page: impl FnMut(Vec<Server>),
    ) -> Result<(), ProviderError> {
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
        match (first.meta.last_page(), first.meta.next_page()) {
            (Some(last), _) if last > 1 => {
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
                on_page(first.servers);
                while let Some(page) = pages.next().await {
                    match page {
                        Ok(Ok(list)) => on_page(list.servers),
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
                on_page(first.servers);
                loop {
                    let page: ServerList = self
                        .http
                        .get_json_with_retries("/servers", &query(next))
                        .await?;
                    on_page(page.servers);
                    match page.meta.next_page() {
                        Some(n) if n > next => next = n,
                        _ => break,
                    }
                }
            }
            _ => on_page(first.servers),
        }
        Ok(())
    }

    /// The pond's leases; their SSH ports from `claimed` when given
    /// (discovery), else from the endpoint records.
    async fn leases_of_pond(
        &self,
        pond: &str,
        claimed: Option<ClaimedPorts>,
    ) -> Result<Vec<Lease>, ProviderError> {
        check_pond(pond)?;
        let selector = format!("{}=true,{}={pond}", labels::CRABBOX, labels::POND);
        // Without the claims' ports, every endpoint record is read while
        // the pages are on their way.
        let recorded = claimed.is_none().then(|| self.leases.recorded_ports());
        let mut seen = HashSet::new();
        let mut leases = Vec::new();
        // Each page becomes leases as it arrives; only the ports are left
        // for after the last one.
        self.servers_matching(&selector, |page| {
            let page: Vec<Server> = page.into_iter().filter(|s| seen.insert(s.id)).collect();
            self.saw_all(&page);
            leases.extend(page.into_iter().filter_map(lease_without_port));
        })
        .await?;
        let claimed = match claimed {
            Some(claimed) => claimed.get().await,
            None => None,
        };
        let ports = match (claimed, recorded) {
            (Some(claimed), _) => claimed,
            // The claims could not be read: the records are.
            (None, recorded) => {
                let recorded = match recorded {
                    Some(recorded) => recorded,
                    None => self.leases.recorded_ports(),
                };
                // A read that did not finish is not "no records": every
                // port would silently fall back to the default.
                Arc::new(recorded.await.map_err(|e| {
                    ProviderError::Failed(format!("reading the SSH endpoint records: {e}"))
                })?)
            }
        };
        for lease in &mut leases {
            lease.endpoint.ssh_port = Some(self.leases.port_of(&lease.id, &ports));
        }
        leases.sort_by(|a, b| a.id.cmp(&b.id).then(a.cloud_id.cmp(&b.cloud_id)));
        Ok(leases)
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
        self.leases.use_user_config(config);
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
            leases: SshLeases::new("hetzner", "Hetzner's panel", state_dir),
            defaults: Defaults::default(),
            config_problem: None,
            sightings: Sightings::default(),
            user_keys: Mutex::new(HashMap::new()),
        }
    }

    /// Polls a booting server at most every `interval` (sooner while it has
    /// been booting for less than four intervals) for at most `timeout`.
    #[must_use]
    pub fn with_boot_polling(mut self, interval: Duration, timeout: Duration) -> Self {
        self.leases.poll_interval = interval;
        self.leases.boot_timeout = timeout;
        self
    }

    /// Waits at most `timeout` for SSH on a new server.
    #[must_use]
    pub fn with_ssh_timeout(mut self, timeout: Duration) -> Self {
        self.leases.ssh_timeout = timeout;
        self
    }

    /// With `false`, create returns once the server runs, without waiting
    /// for SSH or preparing the work root (tests of the API alone).
    #[must_use]
    pub fn with_ssh_bootstrap(mut self, on: bool) -> Self {
        self.leases.ssh_bootstrap = on;
        self
    }

    /// Puts work roots at `<base>/<lease>` instead of `crabbox/<lease>`
    /// (tests use a temporary directory rather than the login's home).
    #[must_use]
    pub fn with_work_base(mut self, base: &str) -> Self {
        self.leases.work_base = base.trim_end_matches('/').to_owned();
        self
    }

    /// Keeps generated lease keys under `<dir>/<lease>/` instead of
    /// `<user config>/crabbox/testboxes/` (tests).
    #[must_use]
    pub fn with_testboxes_dir(mut self, dir: &Path) -> Self {
        self.leases.testboxes = dir.to_owned();
        self
    }

    /// SSH ports tried after the member's primary one (default `[22]`);
    /// the bootstrap makes sshd serve them all.
    #[must_use]
    pub fn with_fallback_ports(mut self, ports: &[u16]) -> Self {
        self.leases.fallback_ports = ports.to_vec();
        self
    }

    /// Per-request HTTP time limit (default 30 s).
    #[must_use]
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.http = self.http.with_timeout(timeout);
        self
    }

    // ---- SSH targets ----

    /// Remembers the labels a server was just seen with (those
    /// [`check_owned`] reads).
    fn saw(&self, server: &Server) {
        self.sightings.saw(server.id, sighting(server));
    }

    /// [`Self::saw`] for a listed page.
    fn saw_all(&self, servers: &[Server]) {
        self.sightings
            .saw_all(servers.iter().map(|s| (s.id, sighting(s))));
    }

    /// The lease's SSH target: cached, else rebuilt from its endpoint record
    /// (or the defaults) and its address.
    async fn target(&self, lease: &Lease) -> Result<SshTarget, ProviderError> {
        self.leases
            .target(lease, || async {
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
                })
            })
            .await
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
            Err(e) if e.is_not_found() => self.sightings.forget(&id),
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
        let mut lease = lease_without_port(server.clone())?;
        lease.endpoint.ssh_port = Some(self.leases.port_of(&lease.id, &HashMap::new()));
        Some(lease)
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
            let label = |k: &str| key.labels.get(k).map(|v| v.as_str());
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
            labels.insert(labels::SERVER_TYPE.into(), labels::sanitize(server_type));
            // The key actually used, as Crabbox labels it (hetzner/backend.go:107).
            labels.insert(labels::PROVIDER_KEY.into(), labels::sanitize(key));
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
                        Some(s)
                            if s.labels.get(labels::LEASE).map(|v| v.as_str())
                                == Some(request.lease_id.as_str()) =>
                        {
                            Ok(s)
                        }
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

    /// Polls until the server runs with an IPv4 address (`starting`:
    /// powering on, the end is near).
    async fn wait_running(&self, id: u64) -> Result<Server, ProviderError> {
        self.leases
            .until_running(&format!("hetzner server {id}"), || async {
                match self.get_server(id).await {
                    Ok(s) if s.status == "running" && s.ipv4().is_some() => Ok(Seen::Ready(s)),
                    Ok(s) => Ok(Seen::Booting {
                        last: format!("status `{}`", s.status),
                        nearly: s.status == "starting",
                    }),
                    Err(e) if e.is_not_found() => Err(ProviderError::Failed(format!(
                        "hetzner server {id} disappeared while booting"
                    ))),
                    Err(e) => {
                        let (last, after) = e.poll_again()?;
                        Ok(Seen::Retry { last, after })
                    }
                }
            })
            .await
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
        self.leases.connect(&request.lease_id, host, record).await?;
        self.lease_of(&server).ok_or_else(|| {
            ProviderError::Failed(format!(
                "hetzner server {id} came back without its `lease` label"
            ))
        })
    }

    /// Best-effort undo of a create that did not finish.
    async fn roll_back(&self, lease_id: &str, server: Option<u64>) {
        self.leases.drop_target(lease_id).await;
        if let Some(id) = server {
            // Only ever a server this create made: it carries the lease label.
            if let Ok(s) = retried(|| self.get_server(id)).await
                && s.labels.get(labels::LEASE).map(|v| v.as_str()) == Some(lease_id)
                && s.labels.get(labels::CRABBOX).map(|v| v.as_str()) == Some("true")
            {
                let path = format!("/servers/{id}");
                let _ = retried(|| self.http.delete(&path)).await;
            }
        }
        let _ = self.delete_lease_key(lease_id).await;
        let _ = self.leases.remove_key_dir(lease_id);
    }
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
    key.labels.get(labels::CRABBOX).map(|v| v.as_str()) == Some("true")
        && key.labels.get(labels::LEASE).map(|v| v.as_str()) == Some(lease_id)
}

/// Same key type and blob (comments differ freely).
fn same_public_key(a: &str, b: &str) -> bool {
    let fields = |s: &str| s.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    fields(a) == fields(b)
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
    let get = |k: &str| server.labels.get(k).map(|v| v.as_str());
    if carries_lease_labels(get, &lease.id, lease.label(labels::POND)) {
        Ok(())
    } else {
        Err(ProviderError::Failed(format!(
            "refusing to touch hetzner server {} (`{}`): it does not carry crabbox's labels for lease {} (crabbox=true, pond, lease)",
            server.id, server.name, lease.id
        )))
    }
}

/// What a sighting keeps of a server: the labels [`check_owned`] reads.
fn sighting(server: &Server) -> Server {
    Server {
        id: server.id,
        name: server.name.clone(),
        status: Default::default(),
        labels: [labels::CRABBOX, labels::POND, labels::LEASE]
            .into_iter()
            .filter_map(|k| Some((k.into(), server.labels.get(k)?.clone())))
            .collect(),
        public_net: PublicNet::default(),
    }
}

/// The lease a server stands for (none without a `lease` label), its SSH
/// port not yet known.
fn lease_without_port(server: Server) -> Option<Lease> {
    let id = server.labels.get(labels::LEASE)?.clone();
    let host = server.ipv4().map(str::to_owned);
    Some(Lease {
        id: id.into(),
        provider: ProviderName::Hetzner,
        cloud_id: server.id.to_string(),
        labels: server.labels,
        endpoint: Endpoint {
            host,
            ssh_port: None,
            url: None,
            shares: Vec::new(),
        },
        listed: true,
        claimed: false,
    })
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
        self.leases_of_pond(pond, None).await
    }

    async fn list_with_claimed_ports(
        &self,
        pond: &str,
        claimed: ClaimedPorts,
    ) -> Result<Vec<Lease>, ProviderError> {
        self.leases_of_pond(pond, Some(claimed)).await
    }

    async fn ponds(&self) -> Result<Vec<String>, ProviderError> {
        let selector = format!("{}=true", labels::CRABBOX);
        let mut ponds = std::collections::BTreeSet::new();
        self.servers_matching(&selector, |page| {
            ponds.extend(
                page.into_iter()
                    .filter_map(|mut s| s.labels.remove(labels::POND)),
            );
        })
        .await?;
        Ok(ponds.into_iter().map(String::from).collect())
    }

    async fn slugs_in_use(&self) -> Result<Vec<String>, ProviderError> {
        // The whole account, as Crabbox lists it (hcloud.go:213-222).
        let selector = format!("{}=true", labels::CRABBOX);
        let mut slugs = Vec::new();
        self.servers_matching(&selector, |page| {
            slugs.extend(
                page.into_iter()
                    .filter_map(|mut s| s.labels.remove(labels::SLUG).map(String::from)),
            );
        })
        .await?;
        Ok(slugs)
    }

    async fn create(&self, request: &CreateRequest) -> Result<Lease, ProviderError> {
        if let Some(why) = &self.config_problem {
            return Err(ProviderError::Config {
                message: format!("Crabbox's user config cannot be read: {why}"),
                hint: "fix the file (`crabbox config show` points at the problem), or set CRABBOX_CONFIG to a good one".to_owned(),
            });
        }
        check_lease_id(&request.lease_id)?;
        let block: HetznerBlock = crate::block_of(&request.member)?;
        let (request, tailnet) = self.leases.enrolled(request).await?;
        let request = request.as_ref();
        let settings = SshSettings::from_block(
            block.ssh_user.as_deref(),
            block.ssh_port,
            block.ssh_key.as_deref(),
        );
        // The local files (a new key, the endpoint record) are written while
        // the key uploads; both are done before the server is created.
        let mut prepared = self.leases.prepare(request, &settings)?;
        let uploaded = if settings.key.is_some() {
            self.user_key(request, &prepared.key.public).await
        } else {
            match keys::fingerprint(&prepared.key.public) {
                Some(fp) => self
                    .upload_key(request, &prepared.key.public, &fp)
                    .await
                    .map(|k| k.name),
                None => Err(ProviderError::Failed(format!(
                    "lease {}: its key {} is not an OpenSSH public key; delete it to have a new one made",
                    request.lease_id,
                    prepared.key.private.display()
                ))),
            }
        };
        if let Err(e) = prepared.written().await {
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
        let user_data = self
            .leases
            .user_data(&settings, &prepared.key.public, tailnet.as_ref());
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
        match self.bootstrap(request, server.id, &prepared.record).await {
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
        match self.sightings.recent(&id) {
            Some(seen) => check_owned(&seen, lease)?,
            None => {
                self.owned_server(lease, id).await?;
            }
        }
        if !keeps_lease_labels(labels, &lease.id) {
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
                    self.sightings.forget(&id);
                }
            })?;
        self.saw(&updated.server);
        Ok(())
    }

    async fn sweep(&self, pond: &str) -> Result<Vec<String>, ProviderError> {
        check_pond(pond)?;
        let selector = format!("{}=true,{}={pond}", labels::CRABBOX, labels::POND);
        // Only what was observed counts: a failed listing sweeps nothing.
        let mut live = HashSet::new();
        let ((), keys) = tokio::try_join!(
            self.servers_matching(&selector, |page| {
                live.extend(
                    page.into_iter()
                        .filter_map(|mut s| s.labels.remove(labels::LEASE).map(String::from)),
                );
            }),
            self.keys_matching(&selector)
        )?;
        let mut removed = Vec::new();
        let mut left = Vec::new();
        let mut swept_leases = HashSet::new();
        for key in keys {
            let Some(lease) = key.labels.get(labels::LEASE).map(ToString::to_string) else {
                continue;
            };
            if live.contains(&lease)
                || !is_lease_id(&lease)
                || !key_is_ours(&key, &lease)
                || key.labels.get(labels::POND).map(|v| v.as_str()) != Some(pond)
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
        self.leases
            .finish_sweep(pond, &live, &swept_leases, removed, left)
            .await
    }

    async fn ssh_target(&self, lease: &Lease) -> Option<SshTarget> {
        self.leases.known_target(lease)
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
        let closing = self.leases.close_stale_master(&lease.id);
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
        self.sightings.forget(&id);
        // The server is gone: its key, host key and local state go too.
        self.leases.forget_server(lease).await;
        if is_lease_id(&lease.id) {
            let key_deleted = key_deleted.unwrap_or(Ok(()));
            key_deleted.map_err(|e| {
                ProviderError::Failed(format!(
                    "hetzner server {id} was deleted, but its SSH key `{}` was not: {e}",
                    key_name(&lease.id)
                ))
            })?;
            self.leases.remove_lease_files(&lease.id)?;
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
        self.leases.before_stop(target).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_map_to_crabbox_types() {
        assert_eq!(class_types(Class::Standard), ["ccx33", "cpx62", "cx53"]);
        assert_eq!(class_types(Class::Tiny), ["ccx13", "cpx22", "cx23"]);
        assert_eq!(class_types(Class::Beast)[0], "ccx63");
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
