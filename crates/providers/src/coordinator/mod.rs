//! Brokered leases: the members of a coordinator-served provider
//! (`hetzner`, `aws`, `azure`, `gcp`, `daytona`) leased through a Crabbox
//! coordinator, which holds the cloud keys, labels the machines and expires
//! and cleans up leases centrally. The lease's `provider` stays the cloud's.
//!
//! - **Mode.** With `CRABBOX_COORDINATOR` set, the registry hands these
//!   provider names to this adapter instead of the direct one
//!   ([`Settings::from_env`], [`brokered`]); a direct adapter configured
//!   as well (e.g. `HCLOUD_TOKEN`) is kept inside it, so leases made
//!   directly earlier are still listed, reached and released.
//! - **Create** mints a per-lease ed25519 key (only the public half is
//!   sent; the private one is kept where Crabbox keeps lease keys,
//!   `testboxes/<lease>/`) and a `createAttemptID`, records the attempt in
//!   the pending claim the engine wrote, and only then POSTs. The identical
//!   POST is repeated on transport errors, 429 and 502-504 for up to 90 s
//!   (the coordinator answers a repeated attempt with the lease it made);
//!   a 500 `{"error"}` is the coordinator's message and not repeated. It
//!   then polls until the lease is `active`, pins the machine's
//!   `sshHostKey`, and waits for SSH on `sshPort`, then the fallbacks.
//! - **Discovery**: `GET /v1/leases` for `active` and `provisioning`
//!   (500 a page), this pond's leases joined with their claims — the
//!   coordinator takes no free-form labels, so our labels (drift hashes,
//!   setup state) live in the claim. A pending claim (a create whose
//!   answer never came) is resolved with `GET /v1/leases/{id}`: a live
//!   lease is adopted; one that does not exist is not a lease (discovery
//!   forgets the claim), and its attempt is cancelled by the next
//!   [`Provider::sweep`], which runs under the pond lock.
//! - **Heartbeats**: every lease this process creates or reaches gets a
//!   `POST …/heartbeat` every idle/3 (5-60 s) until it is released or the
//!   process ends, so long setup steps, `run` and a foreground `pond
//!   connect` keep it alive. Never the `/v1/control` websocket.
//! - **Release**: `POST …/release {delete: true}`, then polling until
//!   `cleanupStartedAt` is gone; `409 cleanup_in_progress` is a release
//!   under way, 404 a lease already gone.

pub mod api;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use crabbox_core::labels::{self, Labels};
use crabbox_core::lease::{Endpoint, Lease, is_lease_id};
use crabbox_core::provider::{ProviderError, ProviderName};
use crabbox_core::retry::{with_retries, with_retries_within};
use crabbox_exec::session::{Session, SshSession, SshTargets};
use crabbox_exec::ssh::SshTarget;
use crabbox_spec::broker::BrokerChoice;
use crabbox_spec::desired::DesiredMember;
use crabbox_spec::providers::HetznerBlock;
use crabbox_state::claims::{Claim, ClaimStore, claim_state};
use tokio::task::JoinHandle;

use crate::http::ApiError;
use crate::ssh_lease::keys::{openssh_ed25519, write_lease_key};
use crate::{CreateRequest, Provider};
use api::{Client, CoordLease, CreateBody, TOKEN_ENV, URL_ENV};

/// The provider names a coordinator serves (the protocol reference).
pub const BROKERED: [ProviderName; 5] = [
    ProviderName::Hetzner,
    ProviderName::Aws,
    ProviderName::Azure,
    ProviderName::Gcp,
    ProviderName::Daytona,
];
/// Claim field (ours) holding a brokered create's attempt ID.
pub const ATTEMPT_FIELD: &str = "createAttemptID";
/// Claim field (ours) naming the coordinator that holds the lease.
pub const COORDINATOR_FIELD: &str = "coordinator";
/// Claim field (ours): the owner the coordinator recorded for the lease.
/// A coordinator shows a lease only to its owner, so a claim naming
/// another owner explains why its lease is not listed.
pub const OWNER_FIELD: &str = "coordinatorOwner";
/// Test switch: `off` stops this process from sending heartbeats, so a
/// test can show that the coordinator expires a lease without them. For
/// tests only; never set it in real use.
pub const HEARTBEATS_ENV: &str = "CRABBOX_COORDINATOR_HEARTBEATS";
/// How long the identical create POST is repeated (Crabbox: 90 s).
const CREATE_RETRY_WINDOW: Duration = Duration::from_secs(90);
/// Between polls of a lease that is provisioning or being cleaned up
/// (Crabbox polls cleanup every 2 s).
const POLL: Duration = Duration::from_secs(2);
/// How long a lease may stay `provisioning`.
const ACTIVE_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// How long SSH may take to answer once the lease is active.
const SSH_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// How long a release's cleanup is waited for (Crabbox: 5 min).
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// Between progress lines while waiting.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// SSH login when the block names none (Crabbox's default).
const DEFAULT_SSH_USER: &str = "crabbox";
/// SSH port when the block names none (Crabbox's default).
const DEFAULT_SSH_PORT: u16 = 2222;
/// Fallback SSH ports (Crabbox's default).
const DEFAULT_FALLBACK_PORTS: [u16; 1] = [22];
/// Work root when the lease reports none (Crabbox's POSIX work root).
const DEFAULT_WORK_ROOT: &str = "/work/crabbox";
/// The lease key's file name.
const KEY_FILE: &str = "id_ed25519";

/// Where the coordinator is and who we are to it, from the environment.
#[derive(Clone, PartialEq, Eq)]
pub struct Settings {
    /// Base URL.
    pub url: String,
    /// Bearer token (`None`: not set; every call then names the variable).
    pub token: Option<String>,
    /// `X-Crabbox-Owner`.
    pub owner: Option<String>,
    /// `X-Crabbox-Org`.
    pub org: Option<String>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("owner", &self.owner)
            .field("org", &self.org)
            .finish()
    }
}

impl Settings {
    /// `CRABBOX_COORDINATOR` (+ `CRABBOX_COORDINATOR_TOKEN`,
    /// `CRABBOX_OWNER`, `CRABBOX_ORG`); `None` without a URL.
    #[must_use]
    pub fn from_env() -> Option<Self> {
        Some(Self {
            url: env_value(URL_ENV)?,
            token: env_value(TOKEN_ENV),
            owner: crate::owner::owner(),
            org: env_value("CRABBOX_ORG"),
        })
    }

    /// A client, or the error naming the token variable.
    ///
    /// # Errors
    /// [`ProviderError::Credentials`] when the token is not set.
    pub fn client(&self) -> Result<Client, ProviderError> {
        let token = self
            .token
            .as_deref()
            .ok_or_else(|| missing_token(&self.url))?;
        Ok(Client::new(
            &self.url,
            token,
            self.owner.as_deref(),
            self.org.as_deref(),
        ))
    }
}

/// A variable's trimmed value; empty counts as unset.
fn env_value(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

fn missing_token(url: &str) -> ProviderError {
    ProviderError::Credentials {
        message: format!("the Crabbox coordinator at {url} needs a token: {TOKEN_ENV} is not set"),
        hint: format!(
            "set {TOKEN_ENV} in the environment (a CI secret; never on the command line), or unset {URL_ENV} to lease directly"
        ),
    }
}

impl Settings {
    /// The settings a command uses: the environment's, else the first
    /// coordinator a member of `members` names in `broker:` (its token, else
    /// `CRABBOX_COORDINATOR_TOKEN`).
    #[must_use]
    pub fn for_members<'a>(members: impl IntoIterator<Item = &'a DesiredMember>) -> Option<Self> {
        if let Some(env) = Self::from_env() {
            return Some(env);
        }
        let (url, token) = members.into_iter().find_map(|m| match &m.broker {
            BrokerChoice::Coordinator { url, token } => Some((url.clone(), token.clone())),
            _ => None,
        })?;
        Some(Self {
            url,
            token: token.or_else(|| env_value(TOKEN_ENV)),
            owner: crate::owner::owner(),
            org: env_value("CRABBOX_ORG"),
        })
    }
}

/// How `member`'s leases are made under `settings` (the command's
/// coordinator): `brokered (<url>)` or `direct` — what plans show. Never
/// the token.
#[must_use]
pub fn mode_of(member: &DesiredMember, settings: Option<&Settings>) -> String {
    if !BROKERED.contains(&member.provider) {
        return "direct".to_owned();
    }
    match (&member.broker, settings) {
        (BrokerChoice::Direct, _) => "direct".to_owned(),
        (BrokerChoice::Coordinator { url, .. }, _) => format!("brokered ({url})"),
        (BrokerChoice::Environment, Some(s)) => format!("brokered ({})", s.url),
        (BrokerChoice::Environment, None) => "direct".to_owned(),
    }
}

/// The adapters of `providers` that a coordinator serves, replaced by
/// brokered ones (each keeping the direct one for leases made directly).
pub fn brokered(
    settings: &Settings,
    providers: &mut std::collections::BTreeMap<ProviderName, Arc<dyn Provider>>,
    state_dir: &Path,
    claims: &ClaimStore,
) {
    for name in BROKERED {
        let direct = providers.remove(&name);
        providers.insert(
            name,
            Arc::new(CoordinatorProvider::new(
                name, settings, state_dir, claims, direct,
            )),
        );
    }
}

/// A provider whose leases a coordinator holds.
pub struct CoordinatorProvider {
    name: ProviderName,
    settings: Settings,
    claims: ClaimStore,
    state_dir: PathBuf,
    testboxes: PathBuf,
    /// The direct adapter, for leases made without the coordinator.
    direct: Option<Arc<dyn Provider>>,
    poll: Duration,
    heartbeats_on: bool,
    /// Brokered leases seen in this process (by create, listing or lookup).
    known: Mutex<HashMap<String, CoordLease>>,
    targets: Mutex<HashMap<String, SshTarget>>,
    heartbeats: Mutex<HashMap<String, JoinHandle<()>>>,
    /// Creates found never to have landed: (lease, attempt), cancelled by `sweep`.
    unlanded: Mutex<Vec<(String, String)>>,
}

impl std::fmt::Debug for CoordinatorProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoordinatorProvider")
            .field("name", &self.name)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Drop for CoordinatorProvider {
    fn drop(&mut self) {
        for (_, beat) in self
            .heartbeats
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
        {
            beat.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A call's [`ApiError`] as the engine sees it.
fn pe(e: ApiError) -> ProviderError {
    e.error
}

impl CoordinatorProvider {
    /// The brokered `name` provider.
    #[must_use]
    pub fn new(
        name: ProviderName,
        settings: &Settings,
        state_dir: &Path,
        claims: &ClaimStore,
        direct: Option<Arc<dyn Provider>>,
    ) -> Self {
        Self {
            name,
            settings: settings.clone(),
            claims: claims.clone(),
            state_dir: state_dir.to_owned(),
            testboxes: crabbox_spec::user_config::user_config_dir().map_or_else(
                || state_dir.join("ssh").join("keys"),
                |dir| dir.join("crabbox").join("testboxes"),
            ),
            direct,
            poll: POLL,
            heartbeats_on: std::env::var(HEARTBEATS_ENV).map_or(true, |v| v.trim() != "off"),
            known: Mutex::new(HashMap::new()),
            targets: Mutex::new(HashMap::new()),
            heartbeats: Mutex::new(HashMap::new()),
            unlanded: Mutex::new(Vec::new()),
        }
    }

    fn client(&self) -> Result<Client, ProviderError> {
        self.settings.client()
    }

    fn key_path(&self, lease_id: &str) -> PathBuf {
        self.testboxes.join(lease_id).join(KEY_FILE)
    }

    fn is_brokered(&self, lease: &Lease) -> bool {
        self.direct.is_none() || lock(&self.known).contains_key(&lease.id)
    }

    fn remember(&self, lease: &CoordLease) {
        lock(&self.known).insert(lease.id.clone(), lease.clone());
    }

    /// The lease as the engine sees it: our labels from the claim, or, for
    /// a lease without one (made by Crabbox's CLI or another machine), the
    /// labels of Crabbox's ownership test, so that it is adopted.
    fn lease_of(&self, c: &CoordLease, claim: Option<&Claim>) -> Lease {
        let labels = match claim.filter(|c| !c.labels.is_empty()) {
            Some(claim) => claim.labels.clone(),
            None => [
                (labels::CRABBOX, "true"),
                (labels::CREATED_BY, "crabbox"),
                (labels::PROVIDER, self.name.as_str()),
                (labels::LEASE, c.id.as_str()),
                (labels::SLUG, c.slug.as_str()),
                (labels::POND, c.pond.as_str()),
            ]
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect(),
        };
        Lease {
            id: c.id.clone(),
            provider: self.name,
            cloud_id: c.resource_id(),
            labels,
            endpoint: Endpoint {
                host: Some(c.host.clone()).filter(|h| !h.is_empty()),
                ssh_port: c.ssh_port,
                url: None,
                shares: Vec::new(),
            },
            listed: true,
            claimed: claim.is_some(),
        }
    }

    /// Every live lease of the caller on this provider.
    async fn live(&self, client: &Client) -> Result<Vec<CoordLease>, ProviderError> {
        let (active, provisioning) = tokio::try_join!(
            with_retries(|| async { client.list("active").await.map_err(pe) }),
            with_retries(|| async { client.list("provisioning").await.map_err(pe) }),
        )?;
        let mut seen = BTreeSet::new();
        Ok(active
            .into_iter()
            .chain(provisioning)
            .filter(|l| l.provider == self.name.as_str() && l.is_live())
            .filter(|l| seen.insert(l.id.clone()))
            .collect())
    }

    /// `GET` the lease, `None` when the coordinator does not know it.
    async fn lookup(&self, client: &Client, id: &str) -> Result<Option<CoordLease>, ProviderError> {
        match with_retries(|| async { client.get(id).await.map_err(pe) }).await {
            Ok(lease) => Ok(Some(lease)),
            Err(ProviderError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A claimed lease the coordinator does not list is gone — unless the
    /// claim names another owner: a coordinator shows each token only its
    /// owner's leases, so it may well exist. That pond cannot be planned
    /// with this token (unobserved is not absent); say whose it is.
    async fn check_same_owner(
        &self,
        client: &Client,
        claim: &Claim,
        owner: &str,
    ) -> Result<(), ProviderError> {
        let me = with_retries(|| async { client.whoami().await.map_err(pe) }).await?;
        if me.owner.is_empty() || me.owner == owner {
            return Ok(());
        }
        Err(ProviderError::Failed(format!(
            "lease {} (`{}`) of pond `{}` was made on the coordinator by owner `{owner}`; this token acts as `{}` and cannot see it; run with that owner's CRABBOX_COORDINATOR_TOKEN (or, if the lease is gone, remove its claim)",
            claim.lease_id, claim.slug, claim.pond, me.owner
        )))
    }

    /// Polls until the lease is `active`.
    async fn wait_active(&self, client: &Client, id: &str) -> Result<CoordLease, ProviderError> {
        let started = Instant::now();
        let mut said = Instant::now();
        loop {
            let lease = self.lookup(client, id).await?.ok_or_else(|| {
                ProviderError::Failed(format!(
                    "the coordinator lost lease {id} while it was provisioning"
                ))
            })?;
            match lease.state.as_str() {
                "active" => return Ok(lease),
                "provisioning" => {}
                other => {
                    return Err(ProviderError::Failed(format!(
                        "coordinator lease {id} is {other}{}",
                        if lease.failure_error.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", lease.failure_error)
                        }
                    )));
                }
            }
            if started.elapsed() > ACTIVE_TIMEOUT {
                return Err(ProviderError::Failed(format!(
                    "coordinator lease {id} was still provisioning after {}s; see it with `crabbox list` and the coordinator's logs",
                    ACTIVE_TIMEOUT.as_secs()
                )));
            }
            if said.elapsed() >= PROGRESS_EVERY {
                eprintln!(
                    "{id}: the coordinator is still provisioning the machine ({}s elapsed)",
                    started.elapsed().as_secs()
                );
                said = Instant::now();
            }
            tokio::time::sleep(self.poll).await;
        }
    }

    /// How to reach a brokered lease: its address, login and work root from
    /// the lease, its host key pinned for every port candidate before the
    /// first connection, the first candidate that accepts TCP.
    async fn target_of_lease(&self, c: &CoordLease) -> Result<SshTarget, ProviderError> {
        if c.host.is_empty() {
            return Err(ProviderError::Failed(format!(
                "coordinator lease {} has no host yet (state {})",
                c.id, c.state
            )));
        }
        let mut ports = vec![c.ssh_port.unwrap_or(DEFAULT_SSH_PORT)];
        for p in &c.ssh_fallback_ports {
            if !ports.contains(p) {
                ports.push(*p);
            }
        }
        let work_base = if c.work_root.is_empty() {
            DEFAULT_WORK_ROOT
        } else {
            c.work_root.trim_end_matches('/')
        };
        let mut target = SshTarget {
            host: c.host.clone(),
            port: ports[0],
            user: if c.ssh_user.is_empty() {
                DEFAULT_SSH_USER.to_owned()
            } else {
                c.ssh_user.clone()
            },
            key: Some(self.key_path(&c.id)),
            work_root: format!("{work_base}/{}", c.id),
            state_dir: self.state_dir.clone(),
            lease_id: c.id.clone(),
        };
        if !c.ssh_host_key.is_empty() {
            for &port in &ports {
                SshTarget {
                    port,
                    ..target.clone()
                }
                .pin_host_key(&c.ssh_host_key)?;
            }
        }
        for &port in &ports {
            if port_open(&c.host, port).await {
                target.port = port;
                break;
            }
        }
        Ok(target)
    }

    /// The cached target of a brokered lease, else one built from the
    /// lease (looked up, waiting while it provisions); starts its heartbeat.
    async fn target(&self, lease: &Lease) -> Result<SshTarget, ProviderError> {
        if let Some(t) = lock(&self.targets).get(&lease.id).cloned() {
            return Ok(t);
        }
        let client = self.client()?;
        let known = lock(&self.known).get(&lease.id).cloned();
        let c = match known.filter(|c| c.state == "active") {
            Some(c) => c,
            None => self.wait_active(&client, &lease.id).await?,
        };
        self.remember(&c);
        let target = self.target_of_lease(&c).await?;
        lock(&self.targets).insert(lease.id.clone(), target.clone());
        self.start_heartbeat(&client, &c);
        Ok(target)
    }

    /// Sends a heartbeat for the lease every idle/3 (5-60 s) until it is
    /// released or this process ends; once per lease.
    fn start_heartbeat(&self, client: &Client, c: &CoordLease) {
        if !self.heartbeats_on || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let mut beats = lock(&self.heartbeats);
        if beats.get(&c.id).is_some_and(|b| !b.is_finished()) {
            return;
        }
        let idle = if c.idle_timeout_seconds == 0 {
            30 * 60
        } else {
            c.idle_timeout_seconds
        };
        let every = Duration::from_secs((idle / 3).clamp(5, 60));
        let (client, id, provider) = (client.clone(), c.id.clone(), self.name.as_str());
        let beat = tokio::spawn(async move {
            loop {
                match client.heartbeat(&id, provider, None).await {
                    Ok(_) => {}
                    // Ended or gone: nothing left to keep alive.
                    Err(e) if matches!(e.status, Some(404 | 409)) => {
                        eprintln!("warning: heartbeat for {id} stopped: {}", e.error);
                        return;
                    }
                    Err(e) => eprintln!("warning: heartbeat for {id} failed: {}", e.error),
                }
                tokio::time::sleep(every).await;
            }
        });
        beats.insert(c.id.clone(), beat);
    }

    fn stop_heartbeat(&self, id: &str) {
        if let Some(beat) = lock(&self.heartbeats).remove(id) {
            beat.abort();
        }
    }

    /// The lease key: the one an earlier attempt of this create wrote, or a
    /// new one written now (before the POST, so a crash leaves a key for
    /// the lease the next run adopts).
    fn lease_key(&self, lease_id: &str) -> Result<String, ProviderError> {
        let private = self.key_path(lease_id);
        let mut public = private.clone().into_os_string();
        public.push(".pub");
        if let (true, Ok(text)) = (private.exists(), std::fs::read_to_string(&public)) {
            return Ok(text.trim().to_owned());
        }
        let key = openssh_ed25519::generate(&format!("crabbox {lease_id}"))?;
        write_lease_key(&private, &key).map_err(ProviderError::Failed)?;
        Ok(key.public.trim().to_owned())
    }

    fn remove_key_dir(&self, lease_id: &str) {
        if is_lease_id(lease_id) {
            let _ = std::fs::remove_dir_all(self.testboxes.join(lease_id));
        }
    }

    /// Records the attempt in the pending claim, reusing one recorded by an
    /// earlier attempt of this create (so a repeated create is the
    /// identical request).
    async fn record_attempt(&self, lease_id: &str) -> Result<String, ProviderError> {
        let claim = crate::claim_backed::pending_claim(&self.claims, lease_id).await?;
        if let Some(attempt) = crate::claim_backed::extra_str(&claim, ATTEMPT_FIELD) {
            return Ok(attempt.to_owned());
        }
        let attempt = api::new_attempt_id()?;
        let url = self.settings.url.clone();
        self.claims
            .update(lease_id, |c| {
                c.extra
                    .insert(ATTEMPT_FIELD.to_owned(), attempt.clone().into());
                c.extra
                    .insert(COORDINATOR_FIELD.to_owned(), url.clone().into());
            })
            .await
            .map_err(ProviderError::state)?;
        Ok(attempt)
    }

    fn create_body(
        &self,
        request: &CreateRequest,
        attempt: String,
        public_key: String,
    ) -> Result<CreateBody, ProviderError> {
        let m = &request.member;
        let block: HetznerBlock = if self.name == ProviderName::Hetzner {
            crate::block_of(m)?
        } else {
            HetznerBlock::default()
        };
        let server_type = m.server_type.clone().unwrap_or_default();
        let class = m
            .class
            .and_then(|c| serde_json::to_value(c).ok())
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        Ok(CreateBody {
            lease_id: request.lease_id.clone(),
            create_attempt_id: attempt,
            slug: request
                .labels
                .get(labels::SLUG)
                .map(ToString::to_string)
                .unwrap_or_else(|| m.slug.clone()),
            pond: request.pond.clone(),
            exposed_ports: m.expose.iter().map(u16::to_string).collect(),
            provider: self.name.as_str().to_owned(),
            class,
            server_type_explicit: !server_type.is_empty(),
            server_type,
            location: block.location.unwrap_or_default(),
            image: block.image.unwrap_or_default(),
            target: "linux".to_owned(),
            ssh_user: block
                .ssh_user
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| DEFAULT_SSH_USER.to_owned()),
            ssh_port: block.ssh_port.unwrap_or(DEFAULT_SSH_PORT).to_string(),
            ssh_fallback_ports: DEFAULT_FALLBACK_PORTS.iter().map(u16::to_string).collect(),
            ssh_public_key: public_key,
            // The coordinator's: it knows the machines it makes.
            work_root: String::new(),
            ttl_seconds: m.ttl.as_secs(),
            idle_timeout_seconds: m.idle_timeout.as_secs(),
            keep: m.keep,
        })
    }

    /// After a create that may or may not have landed gave up: cancel the
    /// attempt, so a request still on its way is refused.
    async fn cancel(&self, client: &Client, lease_id: &str, attempt: &str) {
        let _ =
            with_retries(|| async { client.cancel_create(lease_id, attempt).await.map_err(pe) })
                .await;
    }

    /// Waits for the coordinator to finish deleting a released lease.
    async fn wait_cleanup(&self, client: &Client, id: &str) -> Result<(), ProviderError> {
        let started = Instant::now();
        let mut said = Instant::now();
        loop {
            match self.lookup(client, id).await? {
                None => return Ok(()),
                Some(l) if l.cleanup_started_at.as_deref().is_none_or(str::is_empty) => {
                    return Ok(());
                }
                Some(_) => {}
            }
            if started.elapsed() > CLEANUP_TIMEOUT {
                return Err(ProviderError::Failed(format!(
                    "the coordinator was still deleting the machine of {id} after {}s; it goes on in the background (see `crabbox list`)",
                    CLEANUP_TIMEOUT.as_secs()
                )));
            }
            if said.elapsed() >= PROGRESS_EVERY {
                eprintln!(
                    "{id}: waiting for the coordinator to delete the machine ({}s elapsed)",
                    started.elapsed().as_secs()
                );
                said = Instant::now();
            }
            tokio::time::sleep(self.poll).await;
        }
    }

    /// Forgets the lease here: heartbeat, SSH master, pinned keys, key.
    async fn forget_local(&self, id: &str) {
        self.stop_heartbeat(id);
        lock(&self.known).remove(id);
        let target = lock(&self.targets).remove(id);
        if let Some(t) = target {
            t.close().await;
        }
        self.remove_key_dir(id);
    }
}

/// Whether `host:port` accepts a TCP connection within 2 s.
async fn port_open(host: &str, port: u16) -> bool {
    tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect((host, port)),
    )
    .await
    .is_ok_and(|c| c.is_ok())
}

#[async_trait]
impl Provider for CoordinatorProvider {
    fn name(&self) -> ProviderName {
        self.name
    }

    async fn list(&self, pond: &str) -> Result<Vec<Lease>, ProviderError> {
        let client = self.client()?;
        let (live, claims) = tokio::join!(
            self.live(&client),
            crate::claim_backed::pond_claims(&self.claims, self.name, pond, |_| true)
        );
        let (live, claims) = (live?, claims?);
        let mut leases = Vec::new();
        let mut listed = BTreeSet::new();
        for c in live.iter().filter(|c| c.pond == pond) {
            self.remember(c);
            listed.insert(c.id.clone());
            let claim = claims.iter().find(|cl| cl.lease_id == c.id);
            leases.push(self.lease_of(c, claim));
        }
        let mut direct_claims = Vec::new();
        for claim in claims.iter().filter(|c| !listed.contains(&c.lease_id)) {
            let Some(attempt) = crate::claim_backed::extra_str(claim, ATTEMPT_FIELD) else {
                direct_claims.push(claim.lease_id.clone());
                continue;
            };
            if claim.state != claim_state::PENDING {
                if let Some(owner) = crate::claim_backed::extra_str(claim, OWNER_FIELD) {
                    self.check_same_owner(&client, claim, owner).await?;
                }
                continue;
            }
            // A create whose answer never came: did it land?
            match self.lookup(&client, &claim.lease_id).await? {
                Some(c) if c.is_live() && c.pond == pond => {
                    self.remember(&c);
                    leases.push(self.lease_of(&c, Some(claim)));
                }
                _ => lock(&self.unlanded).push((claim.lease_id.clone(), attempt.to_owned())),
            }
        }
        match &self.direct {
            // The coordinator's machines may live in the same cloud
            // project: a lease it holds is its, whatever the cloud lists.
            Some(direct) => {
                let brokered: BTreeSet<String> = leases.iter().map(|l| l.id.clone()).collect();
                leases.extend(
                    direct
                        .list(pond)
                        .await?
                        .into_iter()
                        .filter(|l| !brokered.contains(&l.id)),
                );
            }
            None if !direct_claims.is_empty() => {
                return Err(ProviderError::Credentials {
                    message: format!(
                        "pond `{pond}` has {} leases made without the coordinator ({}); they cannot be seen through it",
                        self.name,
                        direct_claims.join(", ")
                    ),
                    hint: format!(
                        "set the direct credentials of `{}` as well (e.g. HCLOUD_TOKEN) so they are listed, or destroy them in direct mode first",
                        self.name
                    ),
                });
            }
            None => {}
        }
        Ok(leases)
    }

    async fn ponds(&self) -> Result<Vec<String>, ProviderError> {
        let client = self.client()?;
        let mut ponds: BTreeSet<String> = self
            .live(&client)
            .await?
            .into_iter()
            .map(|l| l.pond)
            .filter(|p| !p.is_empty())
            .collect();
        if let Some(direct) = &self.direct {
            ponds.extend(direct.ponds().await?);
        }
        Ok(ponds.into_iter().collect())
    }

    async fn slugs_in_use(&self) -> Result<Vec<String>, ProviderError> {
        let client = self.client()?;
        let mut slugs: Vec<String> = self
            .live(&client)
            .await?
            .into_iter()
            .map(|l| l.slug)
            .filter(|s| !s.is_empty())
            .collect();
        if let Some(direct) = &self.direct {
            slugs.extend(direct.slugs_in_use().await?);
        }
        Ok(slugs)
    }

    async fn sweep(&self, pond: &str) -> Result<Vec<String>, ProviderError> {
        let mut removed = match &self.direct {
            Some(direct) => direct.sweep(pond).await?,
            None => Vec::new(),
        };
        let unlanded = std::mem::take(&mut *lock(&self.unlanded));
        if unlanded.is_empty() {
            return Ok(removed);
        }
        let client = self.client()?;
        for (lease, attempt) in unlanded {
            self.cancel(&client, &lease, &attempt).await;
            self.remove_key_dir(&lease);
            removed.push(format!(
                "coordinator create attempt {attempt} of {lease} (it never made a lease; cancelled)"
            ));
        }
        Ok(removed)
    }

    async fn create(&self, request: &CreateRequest) -> Result<Lease, ProviderError> {
        if !is_lease_id(&request.lease_id) {
            return Err(ProviderError::Failed(format!(
                "`{}` is not a crabbox lease ID (cbx_ + 12 hex)",
                request.lease_id
            )));
        }
        match (&request.member.broker, &self.direct) {
            (BrokerChoice::Direct, Some(direct)) => return direct.create(request).await,
            (BrokerChoice::Direct, None) => {
                return Err(ProviderError::Credentials {
                    message: format!(
                        "member `{}` says `broker: false`, but `{}` has no direct credentials here",
                        request.member.slug, self.name
                    ),
                    hint: format!(
                        "set the direct credentials of `{}` (e.g. HCLOUD_TOKEN), or remove `broker: false` to lease through the coordinator",
                        self.name
                    ),
                });
            }
            (BrokerChoice::Coordinator { url, .. }, _) if *url != self.settings.url => {
                return Err(ProviderError::Config {
                    message: format!(
                        "member `{}` names the coordinator {url}, but this run leases through {}",
                        request.member.slug, self.settings.url
                    ),
                    hint: "one coordinator per run: name the same `broker.url` on every member (or put it in `defaults`), and unset CRABBOX_COORDINATOR if it names another".to_owned(),
                });
            }
            _ => {}
        }
        if request.member.tailscale {
            // Crabbox's Worker mints the keys and enforces its own tag
            // allowlist (no pond tag): the pond's tailnet plane is not
            // what a brokered lease gets.
            return Err(ProviderError::Unsupported(format!(
                "member `{}`: `tailscale: true` is not supported through a coordinator (its Worker owns Tailscale enrollment and allows no pond tag); set `broker: false` on the member to lease it directly, or drop `tailscale`",
                request.member.slug
            )));
        }
        let client = self.client()?;
        let attempt = self.record_attempt(&request.lease_id).await?;
        let public_key = self.lease_key(&request.lease_id)?;
        let body = self.create_body(request, attempt.clone(), public_key)?;
        let created = with_retries_within(CREATE_RETRY_WINDOW, || async {
            client.create(&body).await.map_err(pe)
        })
        .await;
        let created = match created {
            Ok(lease) => lease,
            Err(e) => {
                // It may have landed: a late arrival must be refused.
                self.cancel(&client, &request.lease_id, &attempt).await;
                self.remove_key_dir(&request.lease_id);
                return Err(match e {
                    ProviderError::Retryable { message, .. } => ProviderError::Failed(format!(
                        "{message} (the coordinator did not answer within {}s; the create was cancelled)",
                        CREATE_RETRY_WINDOW.as_secs()
                    )),
                    other => other,
                });
            }
        };
        self.remember(&created);
        if !created.owner.is_empty() {
            let owner = created.owner.clone();
            self.claims
                .update(&request.lease_id, |c| {
                    c.extra.insert(OWNER_FIELD.to_owned(), owner.clone().into());
                })
                .await
                .map_err(ProviderError::state)?;
        }
        let finish = async {
            let active = self.wait_active(&client, &request.lease_id).await?;
            self.remember(&active);
            let target = self.target_of_lease(&active).await?;
            target.wait_prepared("true", SSH_TIMEOUT).await?;
            lock(&self.targets).insert(active.id.clone(), target);
            self.start_heartbeat(&client, &active);
            Ok::<_, ProviderError>(active)
        };
        match finish.await {
            Ok(active) => {
                let mut lease = self.lease_of(&active, None);
                lease.labels.clone_from(&request.labels);
                Ok(lease)
            }
            Err(e) => {
                // The lease exists but cannot be used: give it back.
                let _ = client.release(&request.lease_id, self.name.as_str()).await;
                self.forget_local(&request.lease_id).await;
                Err(e)
            }
        }
    }

    async fn relabel(&self, lease: &Lease, labels: &Labels) -> Result<(), ProviderError> {
        if !self.is_brokered(lease)
            && let Some(direct) = &self.direct
        {
            return direct.relabel(lease, labels).await;
        }
        // Our labels live in the claim (the engine writes it); the
        // coordinator learns that the lease is in use, and its idle
        // timeout when the spec changed it (a relabel in place).
        let client = self.client()?;
        let idle = labels
            .get(labels::IDLE_TIMEOUT_SECS)
            .and_then(|v| v.parse::<u64>().ok());
        let touched = with_retries(|| async {
            client
                .heartbeat(&lease.id, self.name.as_str(), idle)
                .await
                .map_err(pe)
        })
        .await?;
        self.remember(&touched);
        Ok(())
    }

    fn session<'a>(&'a self, lease: &'a Lease) -> Box<dyn Session + 'a> {
        match &self.direct {
            Some(direct) if !self.is_brokered(lease) => direct.session(lease),
            _ => Box::new(SshSession::new(self, lease)),
        }
    }

    async fn ssh_target(&self, lease: &Lease) -> Option<SshTarget> {
        match &self.direct {
            Some(direct) if !self.is_brokered(lease) => direct.ssh_target(lease).await,
            _ => self.target(lease).await.ok(),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<(), ProviderError> {
        if !self.is_brokered(lease)
            && let Some(direct) = &self.direct
        {
            return direct.release(lease).await;
        }
        let client = self.client()?;
        let provider = self.name.as_str();
        let released = with_retries(|| async {
            match client.release(&lease.id, provider).await {
                Ok(_) => Ok(true),
                Err(e) if e.has_code("cleanup_in_progress") => Ok(true),
                Err(e) if e.is_not_found() => Ok(false),
                Err(e) => Err(e.error),
            }
        })
        .await?;
        self.stop_heartbeat(&lease.id);
        if released {
            self.wait_cleanup(&client, &lease.id).await?;
        }
        self.forget_local(&lease.id).await;
        if released {
            Ok(())
        } else {
            Err(ProviderError::NotFound(format!(
                "coordinator lease {}",
                lease.id
            )))
        }
    }
}

#[async_trait]
impl SshTargets for CoordinatorProvider {
    async fn ssh_target_of(&self, lease: &Lease) -> Result<SshTarget, ProviderError> {
        self.target(lease).await
    }

    async fn before_stop(&self, target: &SshTarget) -> Result<(), ProviderError> {
        // A lease adopted after its creator died may still be booting.
        target.wait_ready(SSH_TIMEOUT).await
    }
}
