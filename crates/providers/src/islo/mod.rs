//! The `islo` provider: Islo sandboxes, a delegated-run provider. Islo owns
//! the sandbox and the command transport; crabbox talks to its HTTP API.
//!
//! - **Auth**: the API key is exchanged at `POST /auth/token` for a session
//!   token sent as `Authorization: Bearer`; the token is refreshed shortly
//!   before it expires and once on a 401. The key itself goes nowhere else:
//!   not into logs, errors or `Debug` output.
//! - **Membership**: Islo has no labels, so a lease lives in its claim file
//!   (provider `islo`). `create` records the sandbox name (`cloudID`), the
//!   workdir and the API base URL in the pending claim the executor wrote,
//!   *then* creates the sandbox, so a crash in between is adopted by the next
//!   `list` (the name matches). `list` joins this pond's claims with the
//!   sandboxes Islo lists; a sandbox no claim names is never returned or
//!   touched, and a claim whose sandbox is gone is not a lease.
//! - **Create** sends only the keys the member's `islo:` block sets (Islo's
//!   tenant defaults apply otherwise), waits for `running`, and creates
//!   `/workspace/<workdir>`. If anything after the sandbox exists fails, the
//!   sandbox is deleted again.
//! - **Commands** run through the SSE endpoint `POST /sandboxes/{name}/exec/stream`
//!   as `bash -lc <command>` in `/workspace/<workdir>`; output reaches the
//!   sink line by line as it arrives, and a command only succeeds once an
//!   `exit` event arrived. Background services, their stop and readiness
//!   probes are scripts run through the same endpoint (pid files and logs
//!   under `/workspace/<workdir>/.crabbox/`). A workdir Islo reports missing
//!   (`FILE_NOT_FOUND`, e.g. a sandbox adopted before its first command) is
//!   created and the command sent once more; stopping services where there
//!   is no state directory has nothing to stop.
//! - **Sync** uploads the gzipped archive as multipart to `files-archive`.
//! - **Shares** publish a port at an HTTPS URL; a share of the same port is
//!   reused while more than 30 s of it remain. The executor records them in
//!   the claim (discovery reads them back); the provider keeps no copy.
//!
//! JSON calls go through the shared [`HttpClient`] (its error mapping: 429 and
//! 5xx retryable, 401 a configuration error, 404 not found); the two
//! streaming calls (exec, upload) use the same rules.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;

mod api;
mod sse;

use api::{Api, Sandbox, SandboxPage, ShareRecord, api_error};
use sse::{LineBuffer, SseParser, StreamOutcome, apply_event};

use crate::claim_backed::{self, pending_claim, pond_claims};
use crate::registry::Descriptor;
use crabbox_exec::output::{Collect, NullSink};
use crabbox_exec::session;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::http::{ApiError, HttpClient, status_error, transport_error, user_agent};
use crate::{CreateRequest, Pausing, Provider, Share, UrlBridge};
use crabbox_core::duration;
use crabbox_core::labels::Labels;
use crabbox_core::lease::{Endpoint, ISLO_PREFIX, Lease, mint};
use crabbox_core::normalize::normalize_name;
use crabbox_core::provider::ProviderName;
use crabbox_core::provider::{OutputSink, ProviderError, Stream};
use crabbox_core::retry::with_retries;
use crabbox_exec::remote_shell::{
    ENV_LEASE_ID, ENV_WORKSPACE, EXITED_AT_ONCE, LOGS, NO_PROBE_TOOL, STATE_DIR, ServiceDirs,
    bash_tcp_probe_script, check_service_name, early_exit, http_probe_script, quote,
    stop_functions,
};
use crabbox_exec::session::ExecRequest;
use crabbox_spec::desired::{DesiredMember, Probe};
use crabbox_spec::providers::IsloBlock;
use crabbox_state::claims::{Claim, ClaimStore};

/// Islo's public API.
pub const DEFAULT_BASE_URL: &str = "https://api.islo.dev";
/// Where the key is read from, for hints.
const KEY_ENV: &str = "CRABBOX_ISLO_API_KEY (or ISLO_API_KEY)";
/// The provider's name in claims and messages.
const PROVIDER: &str = "islo";
/// Workdir under `/workspace` when the block names none.
pub const DEFAULT_WORKDIR: &str = IsloBlock::DEFAULT_WORKDIR;
/// The sandbox directory every workdir lives under.
const WORKSPACE: &str = "/workspace";
/// Longest sandbox name (a DNS label: sandboxes are reached as `<name>.islo`).
pub const NAME_MAX: usize = 63;
/// Page size of the sandbox listing.
const LIST_LIMIT: usize = 100;
/// Shortest and longest share lifetime Islo accepts.
const SHARE_TTL_MIN: u64 = 60;
const SHARE_TTL_MAX: u64 = 7 * 24 * 3600;
/// A share is reused only while more than this remains of it.
const SHARE_REUSE_MARGIN: Duration = Duration::from_secs(30);
/// Time between status polls while a sandbox starts.
const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How long a sandbox may take to be `running`.
const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// How long the streaming calls may wait for response headers.
const RESPONSE_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Time limit of an archive upload.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Longest SSE line accepted.
const SSE_LINE_LIMIT: usize = 4 * 1024 * 1024;
/// Session lifetime when `/auth/token` does not say (the SDK's default).
const DEFAULT_TOKEN_MAX_AGE: u64 = 600;
/// Refresh this long before the session expires (at most a quarter of it).
const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// Prefix of every sandbox name crabbox and Crabbox make.
const NAME_PREFIX: &str = "crabbox-";

/// Claim fields of this provider.
const CLAIM_WORKDIR: &str = "isloWorkdir";
const CLAIM_BASE_URL: &str = "isloBaseURL";
const CLAIM_SANDBOX_ID: &str = "isloSandboxID";

/// A probe command that runs longer counts as not ready.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// Statuses after which a sandbox never becomes `running`.
const TERMINAL: [&str; 4] = ["failed", "stopped", "stopping", "deleted"];

/// The sandbox name a lease ID stands for. An `isb_<name>` ID (what
/// crabbox mints, as Crabbox does: islo/backend.go:643) names it directly,
/// and Crabbox maps it back the same way (`TrimPrefix(leaseID, "isb_")`,
/// islo/backend.go:718-754). A `cbx_` ID of an earlier crabbox version
/// gives the name that version derived: `crabbox-<pond>-<slug>-<the ID's
/// first 6 hex>`.
#[must_use]
pub fn sandbox_name(pond: &str, slug: &str, lease_id: &str) -> String {
    if let Some(name) = lease_id.strip_prefix(ISLO_PREFIX) {
        return name.to_owned();
    }
    let hex: String = lease_id
        .strip_prefix("cbx_")
        .unwrap_or(lease_id)
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(6)
        .collect::<String>()
        .to_ascii_lowercase();
    compose_name(pond, slug, &hex)
}

/// A new sandbox name for `slug` of `pond`: `crabbox-<pond>-<slug>-<6
/// random hex>`, normalized so it passes Crabbox's check of a sandbox name
/// it may touch (`isCrabboxIsloSandboxName`, islo/backend.go:982-984:
/// equal to its own `normalizeLeaseSlug`, prefix `crabbox-`).
#[must_use]
pub fn new_sandbox_name(pond: &str, slug: &str) -> String {
    let mut bytes = [0u8; 3];
    getrandom::fill(&mut bytes).expect("the OS provides randomness");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    compose_name(pond, slug, &hex)
}

/// Whether Crabbox would touch sandbox `name` (islo/backend.go:982-984).
#[must_use]
pub fn is_crabbox_sandbox_name(name: &str) -> bool {
    name == normalize_name(name) && name.starts_with(NAME_PREFIX)
}

/// `crabbox-<pond>-<slug>-<hex>`: pond and slug normalized as Crabbox
/// normalizes names (runs of other characters become one `-`) and
/// shortened (the longer one first) so the name is a DNS label of at most
/// 63 characters.
fn compose_name(pond: &str, slug: &str, hex: &str) -> String {
    let mut pond = normalize_name(pond);
    let mut slug = normalize_name(slug);
    if slug.is_empty() {
        slug = "member".to_owned();
    }
    // `crabbox-` + pond + `-` + slug + `-` + hex.
    let budget = NAME_MAX - NAME_PREFIX.len() - 1 - hex.len();
    let room = budget.saturating_sub(if pond.is_empty() { 0 } else { 1 });
    if pond.len() + slug.len() > room {
        let half = room / 2;
        let (p, s) = if pond.len() <= half {
            (pond.len(), room - pond.len())
        } else if slug.len() <= room - half {
            (room - slug.len(), slug.len())
        } else {
            (half, room - half)
        };
        pond.truncate(p);
        slug.truncate(s);
        pond = pond.trim_end_matches('-').to_owned();
        slug = slug.trim_end_matches('-').to_owned();
    }
    let mut name = String::from(NAME_PREFIX);
    if !pond.is_empty() {
        name.push_str(&pond);
        name.push('-');
    }
    name.push_str(&slug);
    name.push('-');
    name.push_str(hex);
    name
}

/// Whether `name` is safe to put in a path: `[a-z0-9-]`, 1–63 characters.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= NAME_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The workdir, checked by the block's own rule
/// ([`IsloBlock::checked_workdir`], the one `validate` applies): relative,
/// under `/workspace`, no `..`; `.` segments and trailing slashes dropped.
///
/// # Errors
/// [`ProviderError::Config`] for an absolute path, `..`, or nothing left.
pub fn checked_workdir(workdir: &str) -> Result<String, ProviderError> {
    IsloBlock::checked_workdir(Some(workdir)).map_err(|p| ProviderError::Config {
        message: p.message,
        hint: p.hint,
    })
}

/// A secret that never shows in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
struct ApiKey(String);

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

// ---- the member's block ----

/// What the member's `islo:` block sets (only explicitly written keys).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Settings {
    base_url: Option<String>,
    workdir: String,
    /// The `POST /sandboxes` keys besides `name`, in Islo's spelling.
    create: Map<String, Value>,
}

/// Reads the member's block; both the camelCase keys and their snake_case
/// aliases are accepted (the block's serde aliases). Empty strings mean unset.
fn settings_of(member: &DesiredMember) -> Result<Settings, ProviderError> {
    let typed: IsloBlock = crate::block_of(member)?;
    // The block's own rules first, the ones `validate` reported.
    if let Some(problem) = typed.problems().into_iter().next() {
        return Err(ProviderError::Config {
            message: format!("member `{}`: {}", member.slug, problem.message),
            hint: problem.hint,
        });
    }
    let text = |v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let mut create = Map::new();
    for (key, value) in [
        ("image", &typed.image),
        ("gateway_profile", &typed.gateway_profile),
        ("snapshot_name", &typed.snapshot_name),
    ] {
        if let Some(value) = text(value) {
            create.insert(key.into(), Value::String(value));
        }
    }
    for (key, value) in [
        ("vcpus", typed.vcpus),
        ("memory_mb", typed.memory_mb),
        ("disk_gb", typed.disk_gb),
    ] {
        if let Some(n) = value {
            create.insert(key.into(), Value::from(n));
        }
    }
    let workdir = match &typed.workdir {
        None => DEFAULT_WORKDIR.to_owned(),
        Some(raw) => checked_workdir(raw)?,
    };
    Ok(Settings {
        base_url: text(&typed.base_url).map(|u| u.trim_end_matches('/').to_owned()),
        workdir,
        create,
    })
}

// ---- time ----

/// Parses an RFC 3339 timestamp (jiff); one without an offset is read as
/// UTC, as Islo's older answers give them. Anything else is `None`.
fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    let ts = text.parse::<jiff::Timestamp>().ok().or_else(|| {
        let civil = text.parse::<jiff::civil::DateTime>().ok()?;
        Some(civil.to_zoned(jiff::tz::TimeZone::UTC).ok()?.timestamp())
    })?;
    Some(SystemTime::from(ts))
}

// ---- the provider ----

/// Where one lease's sandbox lives, from its claim.
struct Target {
    api: Arc<Api>,
    name: String,
    workdir: String,
    lease_id: String,
}

impl Target {
    fn workspace(&self) -> String {
        format!("{WORKSPACE}/{}", self.workdir)
    }
}
/// The `islo` adapter in the registry's table.
pub const DESCRIPTOR: Descriptor = Descriptor {
    name: ProviderName::Islo,
    build: |dir, claims| {
        IsloProvider::from_env(dir)
            .map(|p| Arc::new(p.with_claims(claims.clone())) as Arc<dyn Provider>)
    },
    credentials: Some("CRABBOX_ISLO_API_KEY (or ISLO_API_KEY)"),
    help: "  CRABBOX_ISLO_API_KEY, ISLO_API_KEY
                              Islo API key (enables `islo`); CRABBOX_ISLO_BASE_URL or
                              ISLO_BASE_URL override https://api.islo.dev",
    transport_refusal: Some(
        "Islo owns the command transport and there is no Crabbox-managed SSH/rsync target to drive",
    ),
};

/// The `islo` provider.
pub struct IsloProvider {
    default_base_url: String,
    key: ApiKey,
    claims: ClaimStore,
    raw: reqwest::Client,
    request_timeout: Duration,
    poll_interval: Duration,
    boot_timeout: Duration,
    /// Base URL → its API and session.
    apis: Mutex<HashMap<String, Arc<Api>>>,
}

impl fmt::Debug for IsloProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IsloProvider")
            .field("base_url", &self.default_base_url)
            .field("api_key", &self.key)
            .field("poll_interval", &self.poll_interval)
            .field("boot_timeout", &self.boot_timeout)
            .finish_non_exhaustive()
    }
}

impl IsloProvider {
    /// The provider configured from the environment: API key from
    /// `CRABBOX_ISLO_API_KEY`, else `ISLO_API_KEY` (`None` when neither is
    /// set); base URL from `CRABBOX_ISLO_BASE_URL`, else `ISLO_BASE_URL`,
    /// else Islo's public API. A member's `islo.baseUrl` overrides it for
    /// that member.
    #[must_use]
    pub fn from_env(state_dir: &Path) -> Option<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let key = var("CRABBOX_ISLO_API_KEY").or_else(|| var("ISLO_API_KEY"))?;
        let base = var("CRABBOX_ISLO_BASE_URL")
            .or_else(|| var("ISLO_BASE_URL"))
            .unwrap_or_else(|| DEFAULT_BASE_URL.to_owned());
        Some(Self::new(base.trim(), key.trim(), state_dir))
    }

    /// A provider talking to `base_url` with `api_key`, keeping its leases
    /// in the claim files under `state_dir`.
    #[must_use]
    pub fn new(base_url: &str, api_key: &str, state_dir: &Path) -> Self {
        let raw = reqwest::Client::builder()
            .user_agent(user_agent())
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Self {
            default_base_url: base_url.trim_end_matches('/').to_owned(),
            key: ApiKey(api_key.to_owned()),
            claims: ClaimStore::local(state_dir),
            raw,
            request_timeout: crate::http::DEFAULT_TIMEOUT,
            poll_interval: DEFAULT_POLL_INTERVAL,
            boot_timeout: DEFAULT_BOOT_TIMEOUT,
            apis: Mutex::new(HashMap::new()),
        }
    }

    /// The same provider keeping its leases in `claims` (the command's store)
    /// instead of the claim files under its state directory.
    #[must_use]
    pub fn with_claims(self, claims: ClaimStore) -> Self {
        Self { claims, ..self }
    }

    /// Polls a starting sandbox every `interval` for at most `timeout`.
    #[must_use]
    pub fn with_boot_polling(mut self, interval: Duration, timeout: Duration) -> Self {
        self.poll_interval = interval;
        self.boot_timeout = timeout;
        self
    }

    /// Per-request time limit of the JSON calls (default 30 s).
    #[must_use]
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The default API base URL.
    #[must_use]
    pub fn base_url(&self) -> &str {
        &self.default_base_url
    }

    fn api(&self, base_url: &str) -> Arc<Api> {
        let base_url = base_url.trim_end_matches('/');
        self.apis
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(base_url.to_owned())
            .or_insert_with(|| {
                Arc::new(Api {
                    base_url: base_url.to_owned(),
                    key: self.key.clone(),
                    raw: self.raw.clone(),
                    request_timeout: self.request_timeout,
                    session: tokio::sync::Mutex::new(None),
                })
            })
            .clone()
    }

    fn claim_base_url(&self, claim: &Claim) -> String {
        claim
            .extra
            .get(CLAIM_BASE_URL)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map_or_else(|| self.default_base_url.clone(), str::to_owned)
    }

    /// The lease's sandbox, only when a claim of ours names it.
    async fn target(&self, lease: &Lease) -> Result<Target, ProviderError> {
        let refuse = |why: &str| {
            ProviderError::Failed(format!(
                "refusing to touch islo sandbox `{}` of lease {}: {why}",
                lease.cloud_id, lease.id
            ))
        };
        let claim = self
            .claims
            .load(&lease.id)
            .await
            .map_err(ProviderError::state)?
            .ok_or_else(|| refuse("no claim of crabbox names it"))?;
        if claim.provider != PROVIDER {
            return Err(refuse(&format!(
                "its claim belongs to provider `{}`",
                claim.provider
            )));
        }
        if claim.cloud_id.is_empty() || claim.cloud_id != lease.cloud_id {
            return Err(refuse(&format!(
                "its claim names sandbox `{}`",
                claim.cloud_id
            )));
        }
        if !valid_name(&claim.cloud_id) {
            return Err(refuse("the name is not an Islo sandbox name crabbox made"));
        }
        // Crabbox addresses an `isb_` lease by the name in its ID: a claim
        // naming another sandbox would make the two tools touch different ones.
        if let Some(named) = lease.id.strip_prefix(ISLO_PREFIX)
            && named != claim.cloud_id
        {
            return Err(refuse(&format!("its ID names sandbox `{named}`")));
        }
        let workdir = checked_workdir(
            claim
                .extra
                .get(CLAIM_WORKDIR)
                .and_then(Value::as_str)
                .unwrap_or(DEFAULT_WORKDIR),
        )?;
        Ok(Target {
            api: self.api(&self.claim_base_url(&claim)),
            name: claim.cloud_id,
            workdir,
            lease_id: lease.id.clone(),
        })
    }

    async fn get_sandbox(&self, api: &Api, name: &str) -> Result<Sandbox, ApiError> {
        api.get(&format!("/sandboxes/{name}"), &[]).await
    }

    /// Every sandbox at one API, all pages (the pages after the first are
    /// fetched concurrently once the total is known), by name.
    async fn all_sandboxes(&self, api: &Api) -> Result<HashMap<String, Sandbox>, ProviderError> {
        let page = |offset: usize| async move {
            let query = [
                ("limit", LIST_LIMIT.to_string()),
                ("offset", offset.to_string()),
            ];
            with_retries(|| async {
                api.get::<SandboxPage>("/sandboxes", &query)
                    .await
                    .map_err(ProviderError::from)
            })
            .await
        };
        let first = page(0).await?;
        let step = first
            .limit
            .filter(|l| *l > 0)
            .unwrap_or(LIST_LIMIT)
            .min(first.items.len().max(1));
        let mut all: Vec<Sandbox> = Vec::new();
        let full = first.items.len() >= step && !first.items.is_empty();
        let total = first.total;
        all.extend(first.items);
        match total {
            Some(total) if full && total > all.len() => {
                let offsets: Vec<usize> = (step..total).step_by(step).collect();
                let pages =
                    futures_util::future::try_join_all(offsets.into_iter().map(page)).await?;
                for p in pages {
                    all.extend(p.items);
                }
            }
            None if full => {
                let mut offset = step;
                loop {
                    let p = page(offset).await?;
                    let n = p.items.len();
                    all.extend(p.items);
                    if n < step || n == 0 {
                        break;
                    }
                    offset += n;
                }
            }
            _ => {}
        }
        Ok(all.into_iter().map(|s| (s.name.clone(), s)).collect())
    }

    /// Polls until the sandbox runs.
    async fn wait_running(&self, api: &Api, name: &str) -> Result<Sandbox, ProviderError> {
        let deadline = Instant::now() + self.boot_timeout;
        loop {
            let mut wait = self.poll_interval;
            let last = match self.get_sandbox(api, name).await {
                Ok(s) if s.status() == "running" => return Ok(s),
                Ok(s) if TERMINAL.contains(&s.status().as_str()) => {
                    return Err(ProviderError::Failed(format!(
                        "islo sandbox `{name}` is `{}`; it will not start",
                        s.status()
                    )));
                }
                Ok(s) => format!("status `{}`", s.status()),
                Err(e) if e.is_not_found() => {
                    return Err(ProviderError::Failed(format!(
                        "islo sandbox `{name}` disappeared while starting"
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
                    "islo sandbox `{name}` was not running after {} (last: {last})",
                    duration::format(self.boot_timeout)
                )));
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// After the sandbox exists: wait for it, create the workdir.
    async fn bootstrap(
        &self,
        api: &Arc<Api>,
        name: &str,
        request: &CreateRequest,
        workdir: &str,
    ) -> Result<Sandbox, ProviderError> {
        let sandbox = self.wait_running(api, name).await?;
        let target = Target {
            api: api.clone(),
            name: name.to_owned(),
            workdir: workdir.to_owned(),
            lease_id: request.lease_id.clone(),
        };
        self.make_workdir(&target).await?;
        Ok(sandbox)
    }

    /// Creates `/workspace/<workdir>`: `mkdir -p` of the relative workdir,
    /// run in `/workspace` (paths in commands stay inside the sandbox).
    async fn make_workdir(&self, target: &Target) -> Result<(), ProviderError> {
        let sink = Arc::new(Collect::default());
        let code = self
            .stream_once(
                target,
                &format!("mkdir -p -- {}", quote(&target.workdir)),
                &BTreeMap::new(),
                WORKSPACE,
                sink.clone(),
            )
            .await
            .map_err(ProviderError::from)?;
        if code == 0 {
            return Ok(());
        }
        let (_, stderr) = sink.take();
        Err(ProviderError::Failed(format!(
            "creating {} in islo sandbox `{}` failed with exit status {code}: {}",
            target.workspace(),
            target.name,
            stderr.join("\n")
        )))
    }

    /// Runs `bash -lc <command>` in the sandbox through the SSE exec stream,
    /// in `workdir`. When that is the lease's workdir and Islo says it does
    /// not exist (a sandbox adopted before its first command), it is
    /// created and the command sent once more.
    async fn stream(
        &self,
        target: &Target,
        command: &str,
        env: &BTreeMap<String, String>,
        workdir: &str,
        sink: Arc<dyn OutputSink>,
    ) -> Result<i32, ProviderError> {
        match self
            .stream_once(target, command, env, workdir, sink.clone())
            .await
        {
            Err(e)
                if e.status == Some(400)
                    && e.has_code("FILE_NOT_FOUND")
                    && workdir != WORKSPACE
                    && workdir == target.workspace() =>
            {
                self.make_workdir(target).await?;
                self.stream_once(target, command, env, workdir, sink)
                    .await
                    .map_err(ProviderError::from)
            }
            other => other.map_err(ProviderError::from),
        }
    }

    /// One exec stream: output reaches `sink` line by line as it arrives;
    /// the exit code once the `exit` event arrived.
    async fn stream_once(
        &self,
        target: &Target,
        command: &str,
        env: &BTreeMap<String, String>,
        workdir: &str,
        sink: Arc<dyn OutputSink>,
    ) -> Result<i32, ApiError> {
        if command.contains('\0') {
            return Err(api_error(ProviderError::Failed(
                "the command contains a NUL byte".to_owned(),
            )));
        }
        let mut env = env.clone();
        env.insert(ENV_LEASE_ID.to_owned(), target.lease_id.clone());
        env.insert(ENV_WORKSPACE.to_owned(), target.workspace());
        let body = serde_json::to_vec(&json!({
            "command": ["bash", "-lc", command],
            "env": env,
            "workdir": workdir,
        }))
        .map_err(|e| {
            api_error(ProviderError::Failed(format!(
                "encoding the exec request: {e}"
            )))
        })?;
        let path = format!("/sandboxes/{}/exec/stream", target.name);
        let url = format!("{}{path}", target.api.base_url);
        let what = format!("islo: POST {path}");
        let mut response = target
            .api
            .send_raw(&what, &path, |token| {
                self.raw
                    .post(&url)
                    .bearer_auth(token)
                    .header(ACCEPT, "text/event-stream")
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.clone())
            })
            .await?;
        let mut parser = SseParser::default();
        let mut outcome = StreamOutcome::default();
        let mut out = LineBuffer::new(Stream::Stdout);
        let mut err = LineBuffer::new(Stream::Stderr);
        let sink = sink.as_ref();
        let fail = |e: ProviderError| api_error(e);
        'read: loop {
            let chunk = match response.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(e) => {
                    out.flush(sink);
                    err.flush(sink);
                    return Err(fail(ProviderError::Failed(format!(
                        "islo exec stream of `{}` broke off: {e}",
                        target.name
                    ))));
                }
            };
            for event in parser.feed(&chunk).map_err(fail)? {
                if apply_event(&event, &mut outcome, &mut out, &mut err, sink).map_err(fail)? {
                    break 'read;
                }
            }
        }
        if outcome.exit.is_none()
            && let Some(event) = parser.finish()
        {
            apply_event(&event, &mut outcome, &mut out, &mut err, sink).map_err(fail)?;
        }
        out.flush(sink);
        err.flush(sink);
        match (outcome.exit, outcome.error) {
            (Some(code), _) => Ok(code),
            (None, Some(message)) => Err(fail(ProviderError::Failed(format!(
                "islo exec stream error: {message}"
            )))),
            (None, None) => Err(fail(ProviderError::Failed(
                "islo exec stream ended without exit event".to_owned(),
            ))),
        }
    }

    /// Runs a script in `workdir` and collects its output.
    async fn script_in(
        &self,
        target: &Target,
        script: &str,
        env: &BTreeMap<String, String>,
        workdir: &str,
    ) -> Result<(i32, Vec<String>, Vec<String>), ProviderError> {
        let sink = Arc::new(Collect::default());
        let code = self
            .stream(target, script, env, workdir, sink.clone())
            .await?;
        let (stdout, stderr) = sink.take();
        Ok((code, stdout, stderr))
    }

    /// Runs a script in the lease's workdir and collects its output.
    async fn script(
        &self,
        target: &Target,
        script: &str,
        env: &BTreeMap<String, String>,
    ) -> Result<(i32, Vec<String>, Vec<String>), ProviderError> {
        self.script_in(target, script, env, &target.workspace())
            .await
    }

    async fn list_shares(&self, target: &Target) -> Result<Vec<ShareRecord>, ProviderError> {
        match target
            .api
            .get::<Option<Vec<ShareRecord>>>(&format!("/sandboxes/{}/shares", target.name), &[])
            .await
        {
            Ok(shares) => Ok(shares.unwrap_or_default()),
            Err(e) if e.is_not_found() => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    fn lease_of(claim: &Claim) -> Lease {
        let endpoint = Endpoint {
            host: None,
            ssh_port: None,
            url: Some(claim.bridge_url.clone()).filter(|u| !u.is_empty()),
            // Discovery adds the shares the executor recorded in the claim.
            shares: Vec::new(),
        };
        claim_backed::lease_from_claim(claim, ProviderName::Islo, endpoint)
    }

    /// This API's leases among `claims`: those whose sandbox it lists (or,
    /// for one the listing missed, answers for by name).
    async fn leases_at(
        &self,
        api: Arc<Api>,
        claims: Vec<Claim>,
    ) -> Result<Vec<Lease>, ProviderError> {
        let sandboxes = self.all_sandboxes(&api).await?;
        let mut leases = Vec::new();
        for claim in claims {
            let exists = match sandboxes.get(&claim.cloud_id) {
                Some(s) => s.status() != "deleted",
                // Offset pages shift when sandboxes come and go while they
                // are read: confirm absence by name before a claim is
                // reported as dangling (and later forgotten).
                None => match with_retries(|| async {
                    self.get_sandbox(&api, &claim.cloud_id)
                        .await
                        .map_err(ProviderError::from)
                })
                .await
                {
                    Ok(s) => s.status() != "deleted",
                    Err(ProviderError::NotFound(_)) => false,
                    Err(e) => return Err(e),
                },
            };
            if exists {
                leases.push(Self::lease_of(&claim));
            }
        }
        Ok(leases)
    }
}

#[async_trait]
impl Provider for IsloProvider {
    fn url_bridge(&self) -> Option<&dyn UrlBridge> {
        Some(self)
    }

    fn pausing(&self) -> Option<&dyn Pausing> {
        Some(self)
    }

    fn session<'a>(&'a self, lease: &'a Lease) -> Box<dyn session::Session + 'a> {
        Box::new(IsloSession {
            provider: self,
            lease,
        })
    }

    fn name(&self) -> ProviderName {
        ProviderName::Islo
    }

    async fn list(&self, pond: &str) -> Result<Vec<Lease>, ProviderError> {
        let mut by_api: BTreeMap<String, Vec<Claim>> = BTreeMap::new();
        for claim in pond_claims(&self.claims, ProviderName::Islo, pond, |c| {
            valid_name(&c.cloud_id)
        })
        .await?
        {
            by_api
                .entry(self.claim_base_url(&claim))
                .or_default()
                .push(claim);
        }
        // No claim, no lease: nothing Islo lists can be ours.
        let groups = by_api
            .into_iter()
            .map(|(base, claims)| self.leases_at(self.api(&base), claims));
        let mut leases: Vec<Lease> = futures_util::future::try_join_all(groups)
            .await?
            .into_iter()
            .flatten()
            .collect();
        leases.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(leases)
    }

    async fn lease_id(&self, pond: &str, member: &DesiredMember) -> Result<String, ProviderError> {
        Ok(mint::islo(&new_sandbox_name(pond, &member.slug)))
    }

    async fn create(&self, request: &CreateRequest) -> Result<Lease, ProviderError> {
        let name = request
            .lease_id
            .strip_prefix(ISLO_PREFIX)
            .filter(|name| is_crabbox_sandbox_name(name) && valid_name(name))
            .ok_or_else(|| {
                ProviderError::Failed(format!(
                    "`{}` is not an Islo lease ID (isb_ + a crabbox- sandbox name)",
                    request.lease_id
                ))
            })?
            .to_owned();
        let settings = settings_of(&request.member)?;
        let base_url = settings
            .base_url
            .clone()
            .unwrap_or_else(|| self.default_base_url.clone());
        let api = self.api(&base_url);

        // The claim names the sandbox before it exists.
        let mut claim = pending_claim(&self.claims, &request.lease_id).await?;
        if claim.provider != PROVIDER {
            return Err(ProviderError::Failed(format!(
                "the claim of {} belongs to provider `{}`, not islo",
                request.lease_id, claim.provider
            )));
        }
        claim.cloud_id.clone_from(&name);
        claim.extra.insert(
            CLAIM_WORKDIR.to_owned(),
            Value::String(settings.workdir.clone()),
        );
        claim.extra.insert(
            CLAIM_BASE_URL.to_owned(),
            Value::String(api.base_url.clone()),
        );
        claim.labels.clone_from(&request.labels);
        self.claims.write(&claim).await.map_err(|e| {
            ProviderError::Failed(format!("writing claim {}: {e}", request.lease_id))
        })?;

        let mut body = Map::new();
        body.insert("name".to_owned(), Value::String(name.clone()));
        body.extend(settings.create.clone());
        let created = match api
            .post::<Sandbox>("/sandboxes", &Value::Object(body))
            .await
        {
            Ok(s) => s,
            // An earlier attempt created it before its answer was lost: the
            // name carries this lease's ID and its claim names it.
            Err(e) if e.status == Some(409) => match self.get_sandbox(&api, &name).await {
                Ok(s) => s,
                Err(_) => return Err(e.into()),
            },
            Err(e) => return Err(e.into()),
        };
        let sandbox = match self
            .bootstrap(&api, &name, request, &settings.workdir)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                let _ = api.delete(&format!("/sandboxes/{name}")).await;
                return Err(e);
            }
        };
        let id = if sandbox.id.is_empty() {
            created.id
        } else {
            sandbox.id
        };
        if !id.is_empty()
            && let Some(mut claim) = self
                .claims
                .load(&request.lease_id)
                .await
                .map_err(ProviderError::state)?
        {
            claim
                .extra
                .insert(CLAIM_SANDBOX_ID.to_owned(), Value::String(id));
            // The sandbox exists: a claim that cannot say so fails the
            // create (its pending claim names the sandbox for the next run).
            self.claims
                .write(&claim)
                .await
                .map_err(ProviderError::state)?;
        }
        Ok(Lease {
            id: request.lease_id.clone(),
            provider: ProviderName::Islo,
            cloud_id: name,
            labels: request.labels.clone(),
            endpoint: Endpoint::default(),
            listed: true,
            claimed: true,
        })
    }

    async fn relabel(&self, lease: &Lease, labels: &Labels) -> Result<(), ProviderError> {
        let mut claim = self
            .claims
            .load(&lease.id)
            .await
            .map_err(ProviderError::state)?
            .filter(|c| c.provider == PROVIDER)
            .ok_or_else(|| ProviderError::NotFound(format!("claim of {}", lease.id)))?;
        claim.labels.clone_from(labels);
        self.claims
            .write(&claim)
            .await
            .map_err(|e| ProviderError::Failed(format!("writing claim {}: {e}", lease.id)))?;
        Ok(())
    }

    async fn release(&self, lease: &Lease) -> Result<(), ProviderError> {
        let target = self.target(lease).await?;
        match target
            .api
            .delete(&format!("/sandboxes/{}", target.name))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() => Err(ProviderError::NotFound(format!(
                "islo sandbox `{}` (lease {})",
                target.name, lease.id
            ))),
            Err(e) => Err(e.into()),
        }
    }
}

#[async_trait]
impl UrlBridge for IsloProvider {
    async fn share(&self, lease: &Lease, port: u16, ttl: Duration) -> Result<Share, ProviderError> {
        if port == 0 {
            return Err(ProviderError::Failed("cannot share port 0".to_owned()));
        }
        let target = self.target(lease).await?;
        let now = SystemTime::now();
        let reusable = self
            .list_shares(&target)
            .await?
            .into_iter()
            .filter(|s| s.port == u32::from(port) && !s.url.is_empty())
            .filter(|s| {
                s.remaining(now)
                    .is_none_or(|left| left > SHARE_REUSE_MARGIN)
            })
            .max_by_key(|s| s.remaining(now).unwrap_or(Duration::MAX));
        let record = match reusable {
            Some(s) => s,
            None => {
                let ttl = ttl.as_secs().clamp(SHARE_TTL_MIN, SHARE_TTL_MAX);
                target
                    .api
                    .post::<ShareRecord>(
                        &format!("/sandboxes/{}/shares", target.name),
                        &json!({ "port": port, "ttl_seconds": ttl }),
                    )
                    .await?
            }
        };
        Ok(record.to_share())
    }

    async fn shares(&self, lease: &Lease) -> Result<Vec<Share>, ProviderError> {
        let target = self.target(lease).await?;
        let mut shares: Vec<Share> = self
            .list_shares(&target)
            .await?
            .iter()
            .map(ShareRecord::to_share)
            .collect();
        shares.sort_by(|a, b| a.port.cmp(&b.port).then(a.expires_at.cmp(&b.expires_at)));
        Ok(shares)
    }
}

#[async_trait]
impl Pausing for IsloProvider {
    async fn pause(&self, lease: &Lease) -> Result<(), ProviderError> {
        let target = self.target(lease).await?;
        let _: Value = target
            .api
            .post(&format!("/sandboxes/{}/pause", target.name), &json!({}))
            .await?;
        Ok(())
    }

    async fn resume(&self, lease: &Lease) -> Result<(), ProviderError> {
        let target = self.target(lease).await?;
        let _: Value = target
            .api
            .post(&format!("/sandboxes/{}/resume", target.name), &json!({}))
            .await?;
        self.wait_running(&target.api, &target.name).await?;
        Ok(())
    }
}

/// A lease of this provider, reached through its own command API.
struct IsloSession<'a> {
    provider: &'a IsloProvider,
    lease: &'a Lease,
}

#[async_trait]
impl session::Session for IsloSession<'_> {
    async fn upload(&self, archive: &Path) -> Result<(), ProviderError> {
        let target = self.provider.target(self.lease).await?;
        let bytes = tokio::fs::read(archive)
            .await
            .map_err(|e| ProviderError::Failed(format!("reading {}: {e}", archive.display())))?;
        let mut boundary = [0u8; 12];
        getrandom::fill(&mut boundary).map_err(|e| ProviderError::Failed(e.to_string()))?;
        let boundary: String = boundary.iter().map(|b| format!("{b:02x}")).collect();
        let boundary = format!("crabbox-{boundary}");
        let mut body = Vec::with_capacity(bytes.len() + 256);
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"archive.tar.gz\"\r\nContent-Type: application/gzip\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(&bytes);
        drop(bytes);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let path = format!("/sandboxes/{}/files-archive", target.name);
        let url = format!("{}{path}", target.api.base_url);
        let what = format!("islo: POST {path}");
        let workspace = target.workspace();
        let content_type = format!("multipart/form-data; boundary={boundary}");
        // Built from the owned bytes for every attempt (a 401 sends it again).
        let response = target
            .api
            .send_raw(&what, &path, |token| {
                self.provider
                    .raw
                    .post(&url)
                    .query(&[("path", workspace.as_str())])
                    .bearer_auth(token)
                    .header(ACCEPT, "application/json")
                    .header(CONTENT_TYPE, content_type.as_str())
                    .timeout(UPLOAD_TIMEOUT)
                    .body(body.clone())
            })
            .await?;
        response
            .bytes()
            .await
            .map_err(|e| transport_error(&what, &e, UPLOAD_TIMEOUT).error)?;
        Ok(())
    }

    async fn exec(
        &self,
        request: &ExecRequest,
        sink: Arc<dyn OutputSink>,
    ) -> Result<i32, ProviderError> {
        let target = self.provider.target(self.lease).await?;
        let workdir = target.workspace();
        let run = self
            .provider
            .stream(&target, &request.command, &request.env, &workdir, sink);
        match request.timeout {
            Some(limit) => tokio::time::timeout(limit, run).await.unwrap_or_else(|_| {
                Err(ProviderError::Failed(format!(
                    "command timed out after {}",
                    duration::format(limit)
                )))
            }),
            None => run.await,
        }
    }

    /// `.crabbox/logs` in the workdir, where services log.
    fn logs_dir(&self) -> Option<String> {
        Some(format!("{STATE_DIR}/{LOGS}"))
    }

    async fn start_background(
        &self,
        request: &ExecRequest,
        name: &str,
    ) -> Result<(), ProviderError> {
        check_service_name(name)?;
        let target = self.provider.target(self.lease).await?;
        // Pid files and logs relative to the workdir the script runs in.
        let script = format!(
            "{}{}",
            stop_functions(&target.lease_id, &target.workspace()),
            ServiceDirs::under(STATE_DIR).start_script(name, "bash -lc", &request.command)
        );
        let (code, stdout, stderr) = self.provider.script(&target, &script, &request.env).await?;
        match code {
            0 => Ok(()),
            EXITED_AT_ONCE => {
                let (status, tail) = early_exit(&stdout);
                Err(ProviderError::Failed(format!(
                    "background service `{name}` exited with status {status} right after starting; last lines of {}/{STATE_DIR}/logs/{name}.log in islo sandbox `{}`:\n{tail}",
                    target.workspace(),
                    target.name
                )))
            }
            code => Err(ProviderError::Failed(format!(
                "starting background service `{name}` failed with exit status {code}: {}",
                stderr.join("\n")
            ))),
        }
    }

    async fn stop_background(&self) -> Result<(), ProviderError> {
        let target = self.provider.target(self.lease).await?;
        // Run from `/workspace`: a workdir (or state directory) that does
        // not exist yet has nothing to stop, and is not created for it.
        let services = ServiceDirs::under(STATE_DIR);
        let script = format!(
            "{}cd -- {} 2>/dev/null || exit 0\n[ -d {} ] || exit 0\n{}exit 0\n",
            stop_functions(&target.lease_id, &target.workspace()),
            quote(&target.workdir),
            quote(&services.pids),
            services.stop_all()
        );
        let (code, _, stderr) = self
            .provider
            .script_in(&target, &script, &BTreeMap::new(), WORKSPACE)
            .await?;
        if code == 0 {
            Ok(())
        } else {
            Err(ProviderError::Failed(format!(
                "stopping background services failed with exit status {code}: {}",
                stderr.join("\n")
            )))
        }
    }

    async fn probe(
        &self,
        probe: &Probe,
        env: &BTreeMap<String, String>,
    ) -> Result<bool, ProviderError> {
        let target = self.provider.target(self.lease).await?;
        let (script, env) = match probe {
            Probe::Command(command) => (command.clone(), env.clone()),
            Probe::Tcp { host, port } => {
                let host = match host.as_deref() {
                    None | Some("localhost") => "127.0.0.1",
                    Some(other) => other,
                };
                (bash_tcp_probe_script(host, *port), BTreeMap::new())
            }
            Probe::Http(url) => (http_probe_script(url, "sandbox"), BTreeMap::new()),
        };
        let sink: Arc<dyn OutputSink> = match probe {
            Probe::Command(_) => Arc::new(NullSink),
            _ => Arc::new(Collect::default()),
        };
        let workdir = target.workspace();
        let run = self.provider.stream(&target, &script, &env, &workdir, sink);
        match tokio::time::timeout(PROBE_TIMEOUT, run).await {
            Err(_) => Ok(false),
            Ok(Ok(0)) => Ok(true),
            Ok(Ok(NO_PROBE_TOOL)) if !matches!(probe, Probe::Command(_)) => {
                Err(ProviderError::Failed(format!(
                    "cannot probe in islo sandbox `{}`: it has none of curl, wget or python3",
                    target.name
                )))
            }
            Ok(Ok(_)) => Ok(false),
            Ok(Err(e)) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::api::redact;
    use super::sse::SseEvent;
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn names_are_dns_labels_with_the_lease_hex() {
        assert_eq!(
            sandbox_name("pr-42", "db", "cbx_0123456789ab"),
            "crabbox-pr-42-db-012345"
        );
        let long = sandbox_name(&"p".repeat(41), &"s".repeat(60), "cbx_abcdef012345");
        assert!(long.len() <= NAME_MAX, "{long}");
        assert!(long.ends_with("-abcdef"), "{long}");
        assert!(long.starts_with("crabbox-pppp"), "{long}");
        assert!(valid_name(&long));
        let short_pond = sandbox_name("a", &"s".repeat(80), "cbx_abcdef012345");
        assert!(short_pond.starts_with("crabbox-a-sss"), "{short_pond}");
        assert_eq!(short_pond.len(), NAME_MAX);
        assert_eq!(
            sandbox_name("P_R", "Web.App", "cbx_ffffff000000"),
            "crabbox-p-r-web-app-ffffff"
        );
        assert_eq!(
            sandbox_name("", "x", "cbx_000000000000"),
            "crabbox-x-000000"
        );
    }

    /// New names pass Crabbox's check of a sandbox it may touch
    /// (islo/backend.go:982-984), and an `isb_` ID names its sandbox.
    #[test]
    fn new_names_are_crabbox_sandbox_names() {
        for (pond, slug) in [
            ("pr-42", "db"),
            (&*"p".repeat(41), &*"s-".repeat(40)),
            ("", "x"),
            ("a", "b--c"),
        ] {
            let name = new_sandbox_name(pond, slug);
            assert!(is_crabbox_sandbox_name(&name), "{name}");
            assert!(valid_name(&name), "{name}");
            assert_eq!(sandbox_name(pond, slug, &format!("isb_{name}")), name);
        }
        assert!(!is_crabbox_sandbox_name("crabbox-a--b"));
        assert!(!is_crabbox_sandbox_name("other-a"));
        assert_ne!(new_sandbox_name("p", "s"), new_sandbox_name("p", "s"));
    }

    #[test]
    fn workdirs_stay_under_workspace() {
        assert_eq!(checked_workdir("crabbox").unwrap(), "crabbox");
        assert_eq!(checked_workdir("team/repo/").unwrap(), "team/repo");
        assert_eq!(checked_workdir("./a/./b").unwrap(), "a/b");
        for bad in [
            "/work/repo",
            "/etc",
            "../etc",
            "repo/../../etc",
            ".",
            "./..",
            "",
        ] {
            assert!(checked_workdir(bad).is_err(), "{bad:?}");
        }
    }

    fn parse_all(body: &str, chunk: usize) -> Vec<SseEvent> {
        let mut p = SseParser::default();
        let mut events = Vec::new();
        for piece in body.as_bytes().chunks(chunk) {
            events.extend(p.feed(piece).expect("feed"));
        }
        events.extend(p.finish());
        events
    }

    #[test]
    fn sse_framing() {
        let body = ": keep-alive\nevent: stdout\ndata: hello\ndata: world\n\nevent: stderr\r\ndata:warn\r\n\r\nevent: exit\ndata: 7";
        for chunk in [1, 3, 7, body.len()] {
            let events = parse_all(body, chunk);
            assert_eq!(
                events,
                vec![
                    SseEvent {
                        event: "stdout".into(),
                        data: "hello\nworld".into()
                    },
                    SseEvent {
                        event: "stderr".into(),
                        data: "warn".into()
                    },
                    SseEvent {
                        event: "exit".into(),
                        data: "7".into()
                    },
                ],
                "chunk size {chunk}"
            );
        }
    }

    #[test]
    fn output_chunks_become_lines() {
        let sink = Collect::default();
        let mut out = LineBuffer::new(Stream::Stdout);
        out.push("a\nb", &sink);
        out.push("c\n\nd\r\n", &sink);
        out.push("tail", &sink);
        out.flush(&sink);
        assert_eq!(sink.take().0, vec!["a", "bc", "", "d", "tail"]);
    }

    #[test]
    fn rfc3339_timestamps() {
        let t = |s: &str| {
            parse_rfc3339(s)
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs())
        };
        assert_eq!(t("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(t("2024-02-29T12:00:00Z"), Some(1_709_208_000));
        assert_eq!(t("2024-02-29T12:00:00.123456Z"), Some(1_709_208_000));
        assert_eq!(t("2024-02-29T14:00:00+02:00"), Some(1_709_208_000));
        assert_eq!(t("2024-02-29T11:30:00-00:30"), Some(1_709_208_000));
        assert_eq!(t("2024-02-29T12:00:00"), Some(1_709_208_000));
        assert_eq!(t("not a time"), None);
        // Network data: multi-byte characters anywhere never panic.
        for text in [
            "2024-02-29T12:00:00.1é",
            "２０２４-02-29T12:00:00Z",
            "2024-02-29T12:00:00+0２:00",
            "é",
        ] {
            assert_eq!(t(text), None, "{text}");
        }
    }

    #[test]
    fn blocks_send_only_explicit_keys() {
        let member = |block: Value| DesiredMember {
            provider_block: Some(block),
            ..member()
        };
        let s = settings_of(&member(json!({}))).expect("empty");
        assert!(s.create.is_empty());
        assert_eq!(s.workdir, "crabbox");
        let s = settings_of(&member(json!({
            "image": "docker.io/library/ubuntu:26.04",
            "vcpus": 2,
            "memory_mb": 4096,
            "diskGB": 20,
            "gatewayProfile": "",
            "snapshot_name": "snap",
            "workdir": "app/",
            "baseUrl": "http://x/"
        })))
        .expect("block");
        assert_eq!(
            Value::Object(s.create),
            json!({"image": "docker.io/library/ubuntu:26.04", "snapshot_name": "snap",
                   "vcpus": 2, "memory_mb": 4096, "disk_gb": 20})
        );
        assert_eq!(s.workdir, "app");
        assert_eq!(s.base_url.as_deref(), Some("http://x"));
        assert!(settings_of(&member(json!({"workdir": "../x"}))).is_err());
        assert!(settings_of(&member(json!({"vcpus": "two"}))).is_err());
    }

    pub(super) fn member() -> DesiredMember {
        DesiredMember {
            sync: crabbox_spec::desired::SyncSettings {
                enabled: false,
                exclude: Vec::new(),
                max_bytes: 1,
            },
            ttl: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            ..DesiredMember::new("web", ProviderName::Islo)
        }
    }

    #[test]
    fn debug_hides_the_key() {
        let p = IsloProvider::new("http://x", "ak_supersecret", Path::new("/tmp/none"));
        let shown = format!("{p:?}");
        assert!(!shown.contains("supersecret"), "{shown}");
    }

    #[test]
    fn errors_are_redacted_and_mapped() {
        use reqwest::header::{HeaderMap, RETRY_AFTER};
        let e = redact(ProviderError::Failed("bad ak_x key".into()), "ak_x");
        assert_eq!(e, ProviderError::Failed("bad <redacted> key".into()));
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "3".parse().expect("header"));
        let e = status_error(
            PROVIDER,
            KEY_ENV,
            "islo: POST /x",
            "/x",
            StatusCode::TOO_MANY_REQUESTS,
            &headers,
            br#"{"code":"RATE_LIMITED","message":"slow down"}"#,
        )
        .error;
        assert_eq!(
            e,
            ProviderError::Retryable {
                message: "islo: POST /x: 429 RATE_LIMITED: slow down".into(),
                retry_after: Some(Duration::from_secs(3)),
            }
        );
        let e = status_error(
            PROVIDER,
            KEY_ENV,
            "islo: POST /x",
            "/x",
            StatusCode::CONFLICT,
            &HeaderMap::new(),
            br#"{"code":"SANDBOX_INVALID_STATE","message":"paused"}"#,
        )
        .error;
        assert_eq!(
            e,
            ProviderError::Failed("islo: POST /x: SANDBOX_INVALID_STATE: paused (409)".into())
        );
    }
}
