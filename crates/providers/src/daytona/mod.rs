//! The `daytona` provider: Daytona sandboxes made from a snapshot, reached
//! over SSH through Daytona's short-lived SSH access tokens — an SSH lease
//! whose login is a token at Daytona's gateway (`<token>@ssh.app.daytona.io`).
//!
//! - **Credentials** come from the environment only: `DAYTONA_API_KEY`, or
//!   `DAYTONA_JWT_TOKEN` with `DAYTONA_ORGANIZATION_ID` (`CRABBOX_DAYTONA_…`
//!   forms win, as in Crabbox). The API URL must be HTTPS unless loopback.
//! - **Create**: the executor has written the pending claim; a sandbox
//!   already carrying this lease's labels (an attempt whose answer was
//!   lost) is adopted, else `POST /sandbox` carries every label (plus
//!   Crabbox's `lease_name`, `work_root`, `server_type=snapshot`). Then it
//!   waits for a started state, re-asserts the labels with a replace and
//!   reads them back (Crabbox's ownership check), opens SSH with a fresh
//!   access token and prepares the work root in that one login. A failure
//!   after the sandbox exists deletes it again.
//! - **Listing** is `GET /sandbox?labels={"crabbox":"true","pond":…}`,
//!   following `nextCursor`; only sandboxes with Crabbox's ownership labels
//!   (`crabbox=true`, `provider=daytona`, a lease ID) are leases. A page
//!   that cannot be read fails the listing.
//! - **SSH**: each lease's target holds an access token, minted when first
//!   needed and again once two thirds of its life (by Daytona's own
//!   `createdAt`/`expiresAt`) have passed, so setup, services, `run` and
//!   `pond connect` never log in with a token about to expire. Tokens live
//!   in memory only (they are credentials); a later process mints its own.
//!   The client presents the member's `ssh_key`, else one key of this
//!   provider's in the state directory: the gateway authenticates the token.
//! - **Upload** goes through the sandbox's toolbox (`files/upload`), then is
//!   unpacked into the workspace over SSH.
//! - **Release** reads the sandbox, deletes it only when it carries this
//!   lease's labels; a 404 is "already gone".
//! - Every call is retried on its own on 429, 5xx and time-outs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;

mod api;
mod settings;

pub use settings::{Credentials, DEFAULT_API_URL, EnvDefaults};

use api::{Api, Sandbox, is_gone};
use settings::{MemberSettings, member_settings, ssh_destination};

use crate::http::{ApiError, check_api_url};
use crate::registry::Descriptor;
use crate::ssh_lease::keys::{openssh_ed25519, write_new_private};
use crate::ssh_lease::names::server_name;
use crate::ssh_lease::{carries_lease_labels, check_lease_id, check_pond, keeps_lease_labels};
use crate::{CreateRequest, Provider};
use crabbox_core::labels::{self, Labels};
use crabbox_core::lease::{Endpoint, Lease, is_lease_id};
use crabbox_core::provider::{OutputSink, ProviderError, ProviderName};
use crabbox_exec::output::NullSink;
use crabbox_exec::session::{ExecRequest, Session, SshSession, SshTargets};
use crabbox_exec::ssh::SshTarget;
use crabbox_spec::desired::Probe;

/// Crabbox's extra labels on a Daytona sandbox.
const LEASE_NAME: &str = "lease_name";
const WORK_ROOT: &str = "work_root";
/// States in which a sandbox runs (Crabbox's `daytonaStateReady`).
const READY_STATES: [&str; 4] = ["started", "running", "ready", "active"];
/// States a sandbox does not come back from (Crabbox's `daytonaStateFailed`).
const FAILED_STATES: [&str; 6] = [
    "error",
    "errored",
    "failed",
    "build_failed",
    "destroyed",
    "deleted",
];
/// Crabbox polls a starting sandbox every 3 s for up to 5 min.
const POLL_INTERVAL: Duration = Duration::from_secs(3);
const BOOT_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// How long the first SSH login may take once the sandbox runs.
const SSH_TIMEOUT: Duration = Duration::from_secs(2 * 60);
/// What Crabbox's SSH wait checks on a Daytona sandbox
/// (`daytonaSSHTargetFromAccess`'s `ReadyCheck`): the sync tools exist.
const READY_CHECK: &str = "command -v tar >/dev/null";

/// The `daytona` adapter in the registry's table.
pub const DESCRIPTOR: Descriptor = Descriptor {
    name: ProviderName::Daytona,
    build: |dir, _| DaytonaProvider::from_env(dir).map(|p| Arc::new(p) as Arc<dyn Provider>),
    credentials: Some("DAYTONA_API_KEY (or DAYTONA_JWT_TOKEN with DAYTONA_ORGANIZATION_ID)"),
    help: "  DAYTONA_API_KEY             Daytona API key (enables `daytona`); or DAYTONA_JWT_TOKEN
                              with DAYTONA_ORGANIZATION_ID; CRABBOX_DAYTONA_* forms win
  DAYTONA_API_URL             Daytona API URL (default https://app.daytona.io/api)",
    transport_refusal: None,
};

/// A lease's SSH target with its token, and until when it is used.
#[derive(Debug, Clone)]
struct Access {
    target: SshTarget,
    fresh_until: Instant,
}

/// The `daytona` provider.
#[derive(Debug)]
pub struct DaytonaProvider {
    api: Api,
    env: EnvDefaults,
    state_dir: PathBuf,
    poll_interval: Duration,
    boot_timeout: Duration,
    ssh_timeout: Duration,
    /// Lease ID → its current access (token) and target.
    access: Mutex<HashMap<String, Access>>,
    /// Lease ID → the member's own settings, for leases created by this
    /// process (lifetime of tokens, key, gateway).
    members: Mutex<HashMap<String, MemberSettings>>,
    /// Serializes making this provider's own key.
    key_lock: tokio::sync::Mutex<()>,
}

impl DaytonaProvider {
    /// The provider configured from the environment (`None` without
    /// credentials).
    #[must_use]
    pub fn from_env(state_dir: &Path) -> Option<Self> {
        let credentials = Credentials::from_env()?;
        Some(Self::new(&credentials, EnvDefaults::from_env(), state_dir))
    }

    /// A provider with these credentials and defaults (`env.api_url` is
    /// the API it talks to).
    #[must_use]
    pub fn new(credentials: &Credentials, env: EnvDefaults, state_dir: &Path) -> Self {
        Self {
            api: Api::new(
                &env.api_url(),
                &credentials.token,
                credentials.organization.as_deref(),
            ),
            env,
            state_dir: state_dir.to_owned(),
            poll_interval: POLL_INTERVAL,
            boot_timeout: BOOT_TIMEOUT,
            ssh_timeout: SSH_TIMEOUT,
            access: Mutex::new(HashMap::new()),
            members: Mutex::new(HashMap::new()),
            key_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Polls a starting sandbox every `interval` for at most `timeout`.
    #[must_use]
    pub fn with_boot_polling(mut self, interval: Duration, timeout: Duration) -> Self {
        self.poll_interval = interval;
        self.boot_timeout = timeout;
        self
    }

    /// Per-request HTTP time limit (default 30 s).
    #[must_use]
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.api.http = self.api.http.clone().with_timeout(timeout);
        self
    }

    fn check_url(&self) -> Result<(), ProviderError> {
        check_api_url("the Daytona API URL", self.api.http.base_url())
    }

    /// This provider's own SSH key (`<state>/ssh/daytona/id_ed25519`),
    /// made on first use: the gateway authenticates the token, so one key
    /// serves every lease that names none.
    async fn own_key(&self) -> Result<PathBuf, ProviderError> {
        let path = self
            .state_dir
            .join("ssh")
            .join("daytona")
            .join("id_ed25519");
        let _held = self.key_lock.lock().await;
        if path.exists() {
            return Ok(path);
        }
        let key = openssh_ed25519::generate("crabbox-daytona")?;
        let failed = |e: std::io::Error| {
            ProviderError::Failed(format!(
                "writing the Daytona SSH key {}: {e}",
                path.display()
            ))
        };
        if let Some(dir) = path.parent() {
            crabbox_fs::atomic_file::create_private_dir(dir).map_err(failed)?;
        }
        let mut public = path.clone().into_os_string();
        public.push(".pub");
        let _ = std::fs::remove_file(&public);
        write_new_private(Path::new(&public), key.public.as_bytes()).map_err(failed)?;
        match write_new_private(&path, key.private.as_bytes()) {
            // Another process made it meanwhile: theirs serves as well.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(path),
            other => other.map(|()| path.clone()).map_err(failed),
        }
    }

    /// The lease's SSH target, with a token that is not about to expire:
    /// the current one while it is fresh, else a new one.
    async fn target(&self, lease: &Lease) -> Result<SshTarget, ProviderError> {
        if let Some(access) = self
            .access
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&lease.id)
            .filter(|a| Instant::now() < a.fresh_until)
        {
            return Ok(access.target.clone());
        }
        check_lease_id(&lease.id)?;
        self.check_url()?;
        let member = self
            .members
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&lease.id)
            .cloned();
        let minutes = member
            .as_ref()
            .map_or_else(|| self.env.access_minutes(), |m| m.access_minutes);
        let gateway = member.as_ref().map_or_else(
            || {
                self.env
                    .gateway
                    .clone()
                    .unwrap_or_else(|| settings::DEFAULT_GATEWAY.to_owned())
            },
            |m| m.gateway.clone(),
        );
        let key = match member.as_ref().and_then(|m| m.key.clone()) {
            Some(key) => key,
            None => self.own_key().await?,
        };
        let asked = Instant::now();
        let access = retried(|| self.api.ssh_access(&lease.cloud_id, minutes))
            .await
            .map_err(|e| {
                if is_gone(&e) {
                    ProviderError::NotFound(format!(
                        "daytona sandbox {} (lease {})",
                        lease.cloud_id, lease.id
                    ))
                } else {
                    e.into()
                }
            })?;
        let (user, host, port) = ssh_destination(&access.token, &access.ssh_command, &gateway)?;
        let lifetime = access
            .lifetime()
            .unwrap_or(Duration::from_secs(u64::from(minutes) * 60));
        let work_root = lease
            .label(WORK_ROOT)
            .filter(|w| w.starts_with('/'))
            .map_or_else(|| self.env.work_root(), str::to_owned);
        let target = SshTarget {
            host,
            port,
            user,
            key: Some(key),
            work_root,
            state_dir: self.state_dir.clone(),
            lease_id: lease.id.clone(),
        };
        self.access
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                lease.id.clone(),
                Access {
                    target: target.clone(),
                    fresh_until: asked + lifetime * 2 / 3,
                },
            );
        Ok(target)
    }

    /// Forgets the lease's token and closes its SSH connection.
    async fn forget(&self, lease_id: &str) {
        let access = self
            .access
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(lease_id);
        self.members
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(lease_id);
        if let Some(a) = access {
            a.target.close().await;
        }
    }

    fn lease_of(&self, sandbox: Sandbox) -> Option<Lease> {
        let id = owned_lease(&sandbox)?.to_owned();
        Some(Lease {
            id,
            provider: ProviderName::Daytona,
            cloud_id: sandbox.id,
            labels: sandbox
                .labels
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            endpoint: Endpoint::default(),
            listed: true,
            claimed: false,
        })
    }

    /// Sandboxes carrying all of `filter`, with Crabbox's ownership labels.
    async fn owned(&self, filter: &[(&str, &str)]) -> Result<Vec<Sandbox>, ProviderError> {
        self.check_url()?;
        let filter: BTreeMap<&str, &str> = filter.iter().copied().collect();
        Ok(self
            .api
            .list(&filter)
            .await?
            .into_iter()
            .filter(|s| owned_lease(s).is_some())
            .collect())
    }

    /// The sandbox of a lease, read afresh, only if it carries the lease's
    /// labels.
    async fn owned_sandbox(&self, lease: &Lease) -> Result<Sandbox, ProviderError> {
        let sandbox = retried(|| self.api.get(&lease.cloud_id))
            .await
            .map_err(|e| {
                if is_gone(&e) {
                    ProviderError::NotFound(format!(
                        "daytona sandbox {} (lease {})",
                        lease.cloud_id, lease.id
                    ))
                } else {
                    e.into()
                }
            })?;
        let get = |k: &str| sandbox.labels.get(k).map(|v| v.as_str());
        if carries_lease_labels(get, &lease.id, lease.label(labels::POND))
            && sandbox.id == lease.cloud_id
        {
            Ok(sandbox)
        } else {
            Err(ProviderError::Failed(format!(
                "refusing to touch daytona sandbox {} (`{}`): it does not carry crabbox's labels for lease {} (crabbox=true, pond, lease)",
                sandbox.id, sandbox.name, lease.id
            )))
        }
    }

    /// Polls until the sandbox is started.
    async fn wait_started(&self, id: &str) -> Result<Sandbox, ProviderError> {
        let deadline = Instant::now() + self.boot_timeout;
        loop {
            let last = match self.api.get(id).await {
                Ok(s) if READY_STATES.contains(&s.state()) => return Ok(s),
                Ok(s) if FAILED_STATES.contains(&s.state()) => {
                    return Err(ProviderError::Failed(format!(
                        "daytona sandbox {id} entered terminal state `{}`{}",
                        s.state(),
                        s.error_reason
                            .as_deref()
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default()
                    )));
                }
                Ok(s) => format!("state `{}`", s.state()),
                Err(e) if is_gone(&e) => {
                    return Err(ProviderError::Failed(format!(
                        "daytona sandbox {id} disappeared while starting"
                    )));
                }
                Err(e) => e.poll_again()?.0,
            };
            if Instant::now() + self.poll_interval > deadline {
                return Err(ProviderError::Failed(format!(
                    "daytona sandbox {id} did not start within {}s ({last})",
                    self.boot_timeout.as_secs()
                )));
            }
            tokio::time::sleep(self.poll_interval).await;
        }
    }

    /// After the sandbox exists: started, labels re-asserted and verified,
    /// SSH ready with the work root made.
    async fn bootstrap(&self, request: &CreateRequest, id: &str) -> Result<Lease, ProviderError> {
        let started = self.wait_started(id).await?;
        retried(|| self.api.replace_labels(id, &started.labels))
            .await
            .map_err(ProviderError::from)?;
        let verified = retried(|| self.api.get(id))
            .await
            .map_err(ProviderError::from)?;
        if owned_lease(&verified) != Some(request.lease_id.as_str())
            || verified.label(labels::POND) != Some(request.pond.as_str())
        {
            return Err(ProviderError::Failed(format!(
                "daytona sandbox {id} did not keep crabbox's labels for lease {}",
                request.lease_id
            )));
        }
        let lease = self.lease_of(verified).ok_or_else(|| {
            ProviderError::Failed(format!("daytona sandbox {id} lost its `lease` label"))
        })?;
        let target = self.target(&lease).await?;
        // A new sandbox's gateway host key may be new to this machine.
        let _ = crabbox_exec::ssh::forget_host_key(&self.state_dir, &target.host, target.port);
        target.wait_prepared(READY_CHECK, self.ssh_timeout).await?;
        Ok(lease)
    }

    /// The sandbox an earlier attempt of this create made, if any.
    async fn earlier_attempt(
        &self,
        request: &CreateRequest,
    ) -> Result<Option<Sandbox>, ProviderError> {
        Ok(self
            .owned(&[
                (labels::CRABBOX, "true"),
                (labels::LEASE, request.lease_id.as_str()),
            ])
            .await?
            .into_iter()
            .find(|s| s.label(labels::POND) == Some(request.pond.as_str())))
    }

    /// Best-effort undo of a create that did not finish: only a sandbox
    /// carrying this lease's labels is deleted.
    async fn roll_back(&self, lease_id: &str, id: &str) {
        self.forget(lease_id).await;
        if let Ok(s) = retried(|| self.api.get(id)).await
            && owned_lease(&s) == Some(lease_id)
        {
            let _ = retried(|| self.api.delete(id)).await;
        }
    }
}

/// The lease ID of a sandbox carrying Crabbox's ownership labels
/// (`crabbox=true`, `provider=daytona`, a lease ID), as Crabbox's
/// `daytonaSandboxOwnership` reads them.
fn owned_lease(sandbox: &Sandbox) -> Option<&str> {
    let lease = sandbox.label(labels::LEASE)?;
    (!sandbox.id.is_empty()
        && sandbox
            .label(labels::CRABBOX)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        && sandbox
            .label(labels::PROVIDER)
            .is_some_and(|v| v.eq_ignore_ascii_case("daytona"))
        && is_lease_id(lease))
    .then_some(lease)
}

/// `call` retried on its own (429, 5xx, time-outs; `Retry-After`
/// honoured), keeping the last [`ApiError`] so callers can branch on it.
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

#[async_trait]
impl Provider for DaytonaProvider {
    fn name(&self) -> ProviderName {
        ProviderName::Daytona
    }

    async fn list(&self, pond: &str) -> Result<Vec<Lease>, ProviderError> {
        check_pond(pond)?;
        let mut leases: Vec<Lease> = self
            .owned(&[(labels::CRABBOX, "true"), (labels::POND, pond)])
            .await?
            .into_iter()
            .filter(|s| s.label(labels::POND) == Some(pond))
            .filter_map(|s| self.lease_of(s))
            .collect();
        leases.sort_by(|a, b| a.id.cmp(&b.id).then(a.cloud_id.cmp(&b.cloud_id)));
        leases.dedup_by(|a, b| a.cloud_id == b.cloud_id);
        Ok(leases)
    }

    async fn ponds(&self) -> Result<Vec<String>, ProviderError> {
        let ponds: BTreeSet<String> = self
            .owned(&[(labels::CRABBOX, "true")])
            .await?
            .into_iter()
            .filter_map(|s| s.labels.get(labels::POND).cloned())
            .collect();
        Ok(ponds.into_iter().collect())
    }

    async fn slugs_in_use(&self) -> Result<Vec<String>, ProviderError> {
        Ok(self
            .owned(&[(labels::CRABBOX, "true")])
            .await?
            .into_iter()
            .filter_map(|s| s.labels.get(labels::SLUG).cloned())
            .collect())
    }

    async fn create(&self, request: &CreateRequest) -> Result<Lease, ProviderError> {
        check_lease_id(&request.lease_id)?;
        check_pond(&request.pond)?;
        self.check_url()?;
        let settings = member_settings(&request.member, &self.env)?;
        if request.member.class.is_some() || request.member.server_type.is_some() {
            return Err(ProviderError::Config {
                message: format!(
                    "member `{}`: `class` and `type` are not supported by provider `daytona`",
                    request.member.slug
                ),
                hint: "choose CPU, memory and disk in the Daytona snapshot".to_owned(),
            });
        }
        self.members
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(request.lease_id.clone(), settings.clone());
        let mut sandbox_labels: BTreeMap<String, String> = request
            .labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let name = server_name(&request.member.slug, &request.lease_id);
        sandbox_labels.insert(LEASE_NAME.to_owned(), name.clone());
        sandbox_labels.insert(WORK_ROOT.to_owned(), settings.work_root.clone());
        sandbox_labels.insert(labels::SERVER_TYPE.to_owned(), "snapshot".to_owned());
        let mut body = serde_json::json!({
            "name": name,
            "snapshot": settings.snapshot,
            "labels": sandbox_labels,
            "user": settings.user,
            "autoStopInterval": idle_minutes(&request.labels),
        });
        if let Some(target) = &settings.target {
            body["target"] = target.clone().into();
        }
        // An earlier attempt whose answer was lost is adopted, never
        // created twice; each attempt looks again before it posts.
        let created = crabbox_core::retry::with_retries(|| async {
            if let Some(s) = self.earlier_attempt(request).await? {
                return Ok(s);
            }
            self.api.create(&body).await.map_err(ProviderError::from)
        })
        .await?;
        match self.bootstrap(request, &created.id).await {
            Ok(lease) => Ok(lease),
            Err(e) => {
                self.roll_back(&request.lease_id, &created.id).await;
                Err(e)
            }
        }
    }

    async fn relabel(&self, lease: &Lease, labels: &Labels) -> Result<(), ProviderError> {
        self.check_url()?;
        self.owned_sandbox(lease).await?;
        if !keeps_lease_labels(labels, &lease.id)
            || labels
                .get(crabbox_core::labels::PROVIDER)
                .map(|v| v.as_str())
                != Some("daytona")
        {
            return Err(ProviderError::Failed(format!(
                "refusing to relabel daytona sandbox {}: the new labels drop crabbox=true, provider=daytona, pond or lease={}",
                lease.cloud_id, lease.id
            )));
        }
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        retried(|| self.api.replace_labels(&lease.cloud_id, &labels))
            .await
            .map_err(ProviderError::from)
    }

    fn session<'a>(&'a self, lease: &'a Lease) -> Box<dyn Session + 'a> {
        Box::new(DaytonaSession {
            provider: self,
            lease,
            ssh: SshSession::new(self, lease),
        })
    }

    async fn release(&self, lease: &Lease) -> Result<(), ProviderError> {
        self.check_url()?;
        let outcome = match self.owned_sandbox(lease).await {
            Ok(_) => match retried(|| self.api.delete(&lease.cloud_id)).await {
                Ok(()) => Ok(()),
                Err(e) if is_gone(&e) => Err(ProviderError::NotFound(format!(
                    "daytona sandbox {} (lease {})",
                    lease.cloud_id, lease.id
                ))),
                Err(e) => Err(e.into()),
            },
            Err(e) => Err(e),
        };
        if matches!(outcome, Ok(()) | Err(ProviderError::NotFound(_))) {
            self.forget(&lease.id).await;
        }
        outcome
    }

    async fn ssh_target(&self, lease: &Lease) -> Option<SshTarget> {
        self.target(lease).await.ok()
    }
}

#[async_trait]
impl SshTargets for DaytonaProvider {
    async fn ssh_target_of(&self, lease: &Lease) -> Result<SshTarget, ProviderError> {
        self.target(lease).await
    }
}

/// A Daytona lease's session: SSH for commands, services and probes; the
/// toolbox for the upload.
struct DaytonaSession<'a> {
    provider: &'a DaytonaProvider,
    lease: &'a Lease,
    ssh: SshSession<'a, DaytonaProvider>,
}

#[async_trait]
impl Session for DaytonaSession<'_> {
    async fn upload(&self, archive: &Path) -> Result<(), ProviderError> {
        let p = self.provider;
        let sandbox = retried(|| p.api.get(&self.lease.cloud_id))
            .await
            .map_err(ProviderError::from)?;
        let toolbox = sandbox
            .toolbox_proxy_url
            .clone()
            .filter(|u| !u.is_empty())
            .ok_or_else(|| {
                ProviderError::Failed(format!(
                    "daytona sandbox {} has no toolbox proxy URL",
                    sandbox.id
                ))
            })?;
        check_api_url("Daytona's toolbox URL", &toolbox)?;
        let bytes = tokio::fs::read(archive)
            .await
            .map_err(|e| ProviderError::Failed(format!("reading {}: {e}", archive.display())))?;
        let target = p.target(self.lease).await?;
        let remote = format!("/tmp/crabbox-sync-{}.tar.gz", self.lease.id);
        retried(|| p.api.upload(&toolbox, &sandbox.id, &remote, bytes.clone()))
            .await
            .map_err(ProviderError::from)?;
        // The workspace exists once the work root is prepared; the step
        // then runs there.
        target.wait_prepared("true", p.ssh_timeout).await?;
        let unpack = format!(
            "tar -x -z -m -o -f {remote} -C . ; status=$?; rm -f -- {remote}; exit $status"
        );
        let code = target
            .exec(&unpack, &BTreeMap::new(), Arc::new(NullSink), None)
            .await?;
        if code == 0 {
            Ok(())
        } else {
            Err(ProviderError::Failed(format!(
                "unpacking the uploaded archive in daytona sandbox {} exited with {code}",
                sandbox.id
            )))
        }
    }

    async fn exec(
        &self,
        request: &ExecRequest,
        sink: Arc<dyn OutputSink>,
    ) -> Result<i32, ProviderError> {
        self.ssh.exec(request, sink).await
    }

    fn logs_dir(&self) -> Option<String> {
        self.ssh.logs_dir()
    }

    async fn start_background(
        &self,
        request: &ExecRequest,
        name: &str,
    ) -> Result<(), ProviderError> {
        self.ssh.start_background(request, name).await
    }

    async fn stop_background(&self) -> Result<(), ProviderError> {
        self.ssh.stop_background().await
    }

    async fn probe(
        &self,
        probe: &Probe,
        env: &BTreeMap<String, String>,
    ) -> Result<bool, ProviderError> {
        self.ssh.probe(probe, env).await
    }
}

/// Daytona's auto-stop interval: the member's idle timeout in whole
/// minutes, rounded up (Crabbox's `durationMinutesCeil`); 0 (never) when
/// the labels do not say.
fn idle_minutes(labels: &Labels) -> u64 {
    labels
        .get(labels::IDLE_TIMEOUT_SECS)
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(0, |secs| secs.div_ceil(60))
}
