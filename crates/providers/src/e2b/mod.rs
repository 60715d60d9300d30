//! The `e2b` provider: E2B sandboxes, commands run through envd's process
//! API (Connect protocol), ports published at E2B's computed URLs.
//!
//! - **Credentials**: `E2B_API_KEY` (`CRABBOX_E2B_API_KEY` wins), sent as
//!   `X-API-Key` to the control plane (`E2B_API_URL`, HTTPS unless
//!   loopback); each sandbox's envd takes the `envdAccessToken` the create
//!   or connect call answered, kept in memory only.
//! - **Create**: the pending claim is written first; a sandbox already
//!   carrying this lease in its metadata (an attempt whose answer was lost)
//!   is adopted, else `POST /sandboxes {templateID, timeout, secure,
//!   allow_internet_access, metadata}` with every label (plus Crabbox's
//!   `workdir` and `template`) in `metadata`. The timeout is the member's
//!   ttl, capped at E2B's hour; while an apply keeps working on the
//!   sandbox, `POST /sandboxes/{id}/connect` extends it again once a third
//!   of it has passed.
//! - **Listing**: `GET /v2/sandboxes?metadata=crabbox=true&provider=e2b&pond=…`
//!   following `x-next-token`. E2B's metadata cannot change after create,
//!   so a lease's current labels are its claim's (written by every
//!   relabel), the create's metadata when there is no claim.
//! - **Commands**: `POST https://49983-<id>.<domain>/process.Process/Start`,
//!   one Connect envelope in, a stream of envelopes out; a stream without an
//!   `end` event fails the step. Uploads go to envd's `/files`.
//! - **URL bridge**: port `P` is `https://P-<id>.<domain>`, computed.
//!   A loopback domain (`localhost:<port>`, for local fakes) is plain HTTP
//!   and its `*.localhost` names resolve to 127.0.0.1 (RFC 6761).
//! - **Release** reads the sandbox and deletes it only when its metadata
//!   names this lease; a 404 is "already gone".

mod connect;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use reqwest::header::CONTENT_TYPE;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::claim_backed::pond_claims;
use crate::http::{ApiError, check_api_url, status_error, transport_error, user_agent};
use crate::registry::Descriptor;
use crate::{CreateRequest, Provider, Share, UrlBridge};
use connect::{Decoder, Event, envelope};
use crabbox_core::duration;
use crabbox_core::labels::{self, Labels};
use crabbox_core::lease::{Endpoint, Lease, is_lease_id};
use crabbox_core::provider::{OutputSink, ProviderError, ProviderName, Stream};
use crabbox_exec::output::{Collect, NullSink};
use crabbox_exec::remote_shell::{
    ENV_LEASE_ID, ENV_WORKSPACE, EXITED_AT_ONCE, LOGS, NO_PROBE_TOOL, STATE_DIR, ServiceDirs,
    bash_tcp_probe_script, check_service_name, early_exit, http_probe_script, quote,
    stop_functions,
};
use crabbox_exec::session::{ExecRequest, Session};
use crabbox_spec::desired::{DesiredMember, Probe};
use crabbox_spec::providers::E2bBlock;
use crabbox_state::claims::ClaimStore;

/// E2B's control plane.
pub const DEFAULT_API_URL: &str = "https://api.e2b.app";
/// E2B's sandbox domain.
pub const DEFAULT_DOMAIN: &str = "e2b.app";
const PROVIDER: &str = "e2b";
const KEY_ENV: &str = "E2B_API_KEY";
const DEFAULT_TEMPLATE: &str = "base";
const DEFAULT_WORKDIR: &str = E2bBlock::DEFAULT_WORKDIR;
const DEFAULT_USER: &str = E2bBlock::DEFAULT_USER;
/// envd's port.
const ENVD_PORT: u16 = 49983;
/// E2B caps a sandbox's timeout at an hour.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Sandboxes per list page.
const LIST_LIMIT: u32 = 100;
/// Control-plane calls (Crabbox's 60 s).
const CONTROL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a data-plane call may wait for its answer to begin.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(15 * 60);
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);
/// Crabbox's extra metadata.
const WORKDIR: &str = "workdir";
const TEMPLATE: &str = "template";

/// The `e2b` adapter in the registry's table.
pub const DESCRIPTOR: Descriptor = Descriptor {
    name: ProviderName::E2b,
    build: |dir, claims| {
        let _ = dir;
        E2bProvider::from_env()
            .map(|p| Arc::new(p.with_claims(claims.clone())) as Arc<dyn Provider>)
    },
    credentials: Some("E2B_API_KEY (or CRABBOX_E2B_API_KEY)"),
    help: "  E2B_API_KEY                 E2B API key (enables `e2b`; CRABBOX_E2B_API_KEY wins);
                              E2B_API_URL (default https://api.e2b.app), E2B_DOMAIN (e2b.app)",
    transport_refusal: Some(
        "E2B owns the command transport (envd's process API) and there is no Crabbox-managed SSH/rsync target to drive",
    ),
};

/// A variable, `CRABBOX_<name>` first, then `<name>`.
fn var(name: &str) -> Option<String> {
    let get = |n: &str| {
        std::env::var(n)
            .ok()
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    get(&format!("CRABBOX_{name}")).or_else(|| get(name))
}

/// The environment's settings.
#[derive(Debug, Clone, Default)]
pub struct EnvSettings {
    /// `E2B_API_URL`.
    pub api_url: Option<String>,
    /// `E2B_DOMAIN`.
    pub domain: Option<String>,
    /// `CRABBOX_E2B_TEMPLATE`.
    pub template: Option<String>,
    /// `CRABBOX_E2B_WORKDIR`.
    pub workdir: Option<String>,
    /// `CRABBOX_E2B_USER`.
    pub user: Option<String>,
}

impl EnvSettings {
    /// Read from the environment (`CRABBOX_` forms first).
    #[must_use]
    pub fn from_env() -> Self {
        Self {
            api_url: var("E2B_API_URL"),
            domain: var("E2B_DOMAIN"),
            template: var("E2B_TEMPLATE"),
            workdir: var("E2B_WORKDIR"),
            user: var("E2B_USER"),
        }
    }

    fn api_url(&self) -> String {
        self.api_url
            .as_deref()
            .unwrap_or(DEFAULT_API_URL)
            .trim_end_matches('/')
            .to_owned()
    }

    fn domain(&self) -> String {
        self.domain
            .clone()
            .unwrap_or_else(|| DEFAULT_DOMAIN.to_owned())
    }
}

/// A sandbox as the control plane describes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Sandbox {
    #[serde(rename = "sandboxID")]
    sandbox_id: String,
    #[serde(default)]
    envd_access_token: Option<String>,
    #[serde(default)]
    domain: Option<String>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
}

impl Sandbox {
    fn meta(&self, key: &str) -> Option<&str> {
        self.metadata.as_ref()?.get(key).map(String::as_str)
    }

    /// The lease of a sandbox with Crabbox's ownership metadata.
    fn lease(&self) -> Option<&str> {
        let lease = self.meta(labels::LEASE)?;
        (self.meta(labels::CRABBOX) == Some("true")
            && self.meta(labels::PROVIDER) == Some(PROVIDER)
            && is_lease_id(lease))
        .then_some(lease)
    }
}

/// How a lease's envd is reached, and when its timeout was last extended.
#[derive(Debug, Clone)]
struct Envd {
    sandbox: String,
    token: String,
    domain: String,
    workdir: String,
    user: String,
    timeout: Duration,
    extended: Instant,
}

/// The `e2b` provider.
pub struct E2bProvider {
    key: String,
    env: EnvSettings,
    claims: ClaimStore,
    http: reqwest::Client,
    envds: Mutex<HashMap<String, Envd>>,
}

impl std::fmt::Debug for E2bProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("E2bProvider")
            .field("key", &"<redacted>")
            .field("env", &self.env)
            .finish_non_exhaustive()
    }
}

/// Resolves `*.localhost` to 127.0.0.1 (RFC 6761), everything else through
/// the system: a loopback E2B domain's sandbox names then work.
struct LocalhostResolver;

impl reqwest::dns::Resolve for LocalhostResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = if host == "localhost" || host.ends_with(".localhost") {
                vec![SocketAddr::from(([127, 0, 0, 1], 0))]
            } else {
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect()
            };
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Whether a domain is this machine (plain HTTP, `*.localhost` names).
fn loopback_domain(domain: &str) -> bool {
    let host = domain.rsplit_once(':').map_or(domain, |(h, _)| h);
    host == "localhost" || host.ends_with(".localhost") || host == "127.0.0.1"
}

/// `https://<port>-<id>.<domain>` (plain HTTP for a loopback domain).
fn sandbox_url(domain: &str, sandbox: &str, port: u16) -> String {
    let scheme = if loopback_domain(domain) {
        "http"
    } else {
        "https"
    };
    format!("{scheme}://{port}-{sandbox}.{domain}")
}

/// A relative workdir lives under `/home/<user>`.
fn workdir_path(workdir: &str, user: &str) -> String {
    if workdir.starts_with('/') {
        workdir.trim_end_matches('/').to_owned()
    } else {
        format!("/home/{user}/{}", workdir.trim_matches('/'))
    }
}

/// The ttl as E2B's timeout: whole seconds, at most an hour.
fn timeout_of(ttl: Duration) -> Duration {
    Duration::from_secs(ttl.as_secs().clamp(1, MAX_TIMEOUT.as_secs()))
}

impl E2bProvider {
    /// The provider configured from the environment (`None` without a key).
    #[must_use]
    pub fn from_env() -> Option<Self> {
        Some(Self::new(&var("E2B_API_KEY")?, EnvSettings::from_env()))
    }

    /// A provider with this key and settings.
    #[must_use]
    pub fn new(key: &str, env: EnvSettings) -> Self {
        let http = reqwest::Client::builder()
            .user_agent(user_agent())
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(LocalhostResolver))
            .build()
            .unwrap_or_default();
        Self {
            key: key.to_owned(),
            env,
            claims: ClaimStore::local(Path::new("/nonexistent")),
            http,
            envds: Mutex::new(HashMap::new()),
        }
    }

    /// The same provider reading lease labels from `claims`.
    #[must_use]
    pub fn with_claims(self, claims: ClaimStore) -> Self {
        Self { claims, ..self }
    }

    fn api_url(&self) -> Result<String, ProviderError> {
        let url = self.env.api_url();
        check_api_url("the E2B API URL", &url)?;
        Ok(url)
    }

    /// One control-plane call; the answer's JSON and headers.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<(Value, reqwest::header::HeaderMap), ApiError> {
        let base = self.api_url().map_err(|error| ApiError {
            status: None,
            code: None,
            message: error.to_string(),
            error,
        })?;
        let what = format!("{PROVIDER}: {method} {path}");
        let mut request = self
            .http
            .request(method, format!("{base}{path}"))
            .query(query)
            .header("X-API-Key", &self.key)
            .header("Accept", "application/json")
            .timeout(CONTROL_TIMEOUT);
        if let Some(b) = body {
            request = request.json(b);
        }
        let response = request
            .send()
            .await
            .map_err(|e| transport_error(&what, &e, CONTROL_TIMEOUT))?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| transport_error(&what, &e, CONTROL_TIMEOUT))?;
        if !status.is_success() {
            return Err(status_error(
                PROVIDER, KEY_ENV, &what, path, status, &headers, &bytes,
            ));
        }
        let value = if bytes.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|e| {
                let message = format!("{what}: unexpected response: {e}");
                ApiError {
                    status: None,
                    code: None,
                    message: message.clone(),
                    error: ProviderError::Failed(message),
                }
            })?
        };
        Ok((value, headers))
    }

    async fn call_retried(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<(Value, reqwest::header::HeaderMap), ApiError> {
        let last: Arc<Mutex<Option<ApiError>>> = Arc::default();
        let result = crabbox_core::retry::with_retries(|| {
            let last = last.clone();
            let method = method.clone();
            async move {
                self.call(method, path, query, body).await.map_err(|e| {
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

    fn sandbox_of(value: Value) -> Result<Sandbox, ProviderError> {
        serde_json::from_value(value)
            .map_err(|e| ProviderError::Failed(format!("e2b: unexpected sandbox answer: {e}")))
    }

    /// Every sandbox whose metadata holds all of `filter`, following
    /// `x-next-token`; a page that cannot be read fails the listing.
    async fn sandboxes(&self, filter: &[(&str, &str)]) -> Result<Vec<Sandbox>, ProviderError> {
        let metadata = filter
            .iter()
            .map(|(k, v)| format!("{}={}", urlencode(k), urlencode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let mut out = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let mut query = vec![
                ("limit", LIST_LIMIT.to_string()),
                ("state", "running,paused".to_owned()),
                ("metadata", metadata.clone()),
            ];
            if let Some(token) = &next {
                query.push(("nextToken", token.clone()));
            }
            let (page, headers) = self
                .call_retried(reqwest::Method::GET, "/v2/sandboxes", &query, None)
                .await?;
            let page: Vec<Sandbox> = serde_json::from_value(page)
                .map_err(|e| ProviderError::Failed(format!("e2b: unexpected sandbox list: {e}")))?;
            out.extend(page);
            match headers
                .get("x-next-token")
                .and_then(|v| v.to_str().ok())
                .filter(|t| !t.is_empty())
            {
                Some(t) if next.as_deref() != Some(t) => next = Some(t.to_owned()),
                _ => return Ok(out),
            }
        }
    }

    /// The sandbox of a lease, read afresh, only when its metadata names it.
    async fn owned(&self, lease: &Lease) -> Result<Sandbox, ProviderError> {
        let path = format!("/sandboxes/{}", lease.cloud_id);
        let (value, _) = self
            .call_retried(reqwest::Method::GET, &path, &[], None)
            .await
            .map_err(|e| {
                if e.status == Some(404) {
                    ProviderError::NotFound(format!(
                        "e2b sandbox {} (lease {})",
                        lease.cloud_id, lease.id
                    ))
                } else {
                    e.error
                }
            })?;
        let sandbox = Self::sandbox_of(value)?;
        if sandbox.lease() == Some(lease.id.as_str()) {
            Ok(sandbox)
        } else {
            Err(ProviderError::Failed(format!(
                "refusing to touch e2b sandbox {}: its metadata does not name crabbox's lease {} (crabbox=true, provider=e2b, lease)",
                lease.cloud_id, lease.id
            )))
        }
    }

    /// How to reach the lease's envd, extending the sandbox's timeout once
    /// a third of it has passed (`POST /sandboxes/{id}/connect`, which also
    /// answers the access token a later process needs).
    async fn envd(&self, lease: &Lease) -> Result<Envd, ProviderError> {
        let known = self
            .envds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&lease.id)
            .cloned();
        if let Some(e) = &known
            && e.extended.elapsed() < e.timeout / 3
        {
            return Ok(e.clone());
        }
        let timeout = known.as_ref().map_or_else(
            || {
                timeout_of(Duration::from_secs(
                    lease
                        .label(labels::TTL_SECS)
                        .and_then(|t| t.parse().ok())
                        .unwrap_or(3600),
                ))
            },
            |e| e.timeout,
        );
        let path = format!("/sandboxes/{}/connect", lease.cloud_id);
        let asked = Instant::now();
        let (value, _) = self
            .call_retried(
                reqwest::Method::POST,
                &path,
                &[],
                Some(&json!({ "timeout": timeout.as_secs() })),
            )
            .await
            .map_err(|e| {
                if e.status == Some(404) {
                    ProviderError::NotFound(format!(
                        "e2b sandbox {} (lease {})",
                        lease.cloud_id, lease.id
                    ))
                } else {
                    e.error
                }
            })?;
        let sandbox = Self::sandbox_of(value)?;
        let user = known.as_ref().map_or_else(
            || {
                self.env
                    .user
                    .clone()
                    .unwrap_or_else(|| DEFAULT_USER.to_owned())
            },
            |e| e.user.clone(),
        );
        let workdir = lease
            .label(WORKDIR)
            .filter(|w| w.starts_with('/'))
            .map(str::to_owned)
            .or_else(|| known.as_ref().map(|e| e.workdir.clone()))
            .unwrap_or_else(|| {
                workdir_path(
                    self.env.workdir.as_deref().unwrap_or(DEFAULT_WORKDIR),
                    &user,
                )
            });
        let envd = Envd {
            token: sandbox
                .envd_access_token
                .clone()
                .or_else(|| known.as_ref().map(|e| e.token.clone()))
                .unwrap_or_default(),
            domain: sandbox
                .domain
                .clone()
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| self.env.domain()),
            sandbox: lease.cloud_id.clone(),
            workdir,
            user,
            timeout,
            extended: asked,
        };
        self.envds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(lease.id.clone(), envd.clone());
        Ok(envd)
    }

    fn envd_request(&self, envd: &Envd, path: &str) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .post(format!(
                "{}{path}",
                sandbox_url(&envd.domain, &envd.sandbox, ENVD_PORT)
            ))
            .header("E2b-Sandbox-Id", &envd.sandbox)
            .header("E2b-Sandbox-Port", ENVD_PORT.to_string());
        if !envd.token.is_empty() {
            request = request.header("X-Access-Token", &envd.token);
        }
        request
    }

    /// Runs `bash -l -c command` in `cwd`, output to `sink` line by line;
    /// the exit code of the `end` event.
    async fn run(
        &self,
        envd: &Envd,
        lease_id: &str,
        command: &str,
        env: &BTreeMap<String, String>,
        cwd: &str,
        sink: Arc<dyn OutputSink>,
    ) -> Result<i32, ProviderError> {
        let mut envs = env.clone();
        envs.insert(ENV_LEASE_ID.to_owned(), lease_id.to_owned());
        envs.insert(ENV_WORKSPACE.to_owned(), envd.workdir.clone());
        let body = envelope(&json!({
            "process": {
                "cmd": "/bin/bash",
                "args": ["-l", "-c", command],
                "envs": envs,
                "cwd": cwd,
            },
            "stdin": false,
        }));
        let what = format!(
            "{PROVIDER}: process.Process/Start in sandbox {}",
            envd.sandbox
        );
        let mut request = self
            .envd_request(envd, "/process.Process/Start")
            .header("Connect-Protocol-Version", "1")
            .header("Connect-Content-Encoding", "identity")
            .header(CONTENT_TYPE, "application/connect+json")
            .header("Keepalive-Ping-Interval", "50")
            .body(body);
        if !envd.user.is_empty() {
            use base64::Engine as _;
            let basic = base64::engine::general_purpose::STANDARD.encode(format!("{}:", envd.user));
            request = request.header("Authorization", format!("Basic {basic}"));
        }
        let mut response = match tokio::time::timeout(RESPONSE_TIMEOUT, request.send()).await {
            Ok(Ok(r)) => r,
            // A request that may have reached envd is not sent again: the
            // command must not run twice.
            Ok(Err(e)) => {
                return Err(ProviderError::Failed(
                    transport_error(&what, &e, RESPONSE_TIMEOUT).message,
                ));
            }
            Err(_) => {
                return Err(ProviderError::Failed(format!(
                    "{what}: no answer within {}s",
                    RESPONSE_TIMEOUT.as_secs()
                )));
            }
        };
        let status = response.status();
        if !status.is_success() {
            let headers = response.headers().clone();
            let bytes = response.bytes().await.unwrap_or_default();
            let e = status_error(
                PROVIDER,
                KEY_ENV,
                &what,
                "/process.Process/Start",
                status,
                &headers,
                &bytes,
            );
            return Err(redact(e.error, &envd.token));
        }
        let mut decoder = Decoder::default();
        let mut out = Lines::new(Stream::Stdout);
        let mut err = Lines::new(Stream::Stderr);
        let mut end: Option<(i32, Option<String>)> = None;
        let mut trailer: Option<String> = None;
        let sink = sink.as_ref();
        loop {
            let chunk = match response.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    out.flush(sink);
                    err.flush(sink);
                    return Err(ProviderError::Failed(format!(
                        "e2b process stream of sandbox {} broke off: {e}",
                        envd.sandbox
                    )));
                }
            };
            for event in decoder.feed(&chunk)? {
                match event {
                    Event::Stdout(b) => out.push(&b, sink),
                    Event::Stderr(b) => err.push(&b, sink),
                    Event::End { code, error } => end = Some((code, error)),
                    Event::Trailer(e) => trailer = e,
                    Event::Other => {}
                }
            }
        }
        out.flush(sink);
        err.flush(sink);
        match (end, trailer) {
            (Some((code, _)), None) => Ok(code),
            (Some((code, _)), Some(_)) if code != 0 => Ok(code),
            (_, Some(e)) => Err(ProviderError::Failed(format!(
                "e2b process stream error: {}",
                e.replace(&envd.token, "<redacted>")
            ))),
            (None, None) => Err(ProviderError::Failed(format!(
                "e2b process stream of sandbox {} ended without an end event{}",
                envd.sandbox,
                if decoder.has_partial() {
                    " (cut mid-message)"
                } else {
                    ""
                }
            ))),
        }
    }

    async fn script(
        &self,
        envd: &Envd,
        lease_id: &str,
        script: &str,
        cwd: &str,
    ) -> Result<(i32, Vec<String>, Vec<String>), ProviderError> {
        let sink = Arc::new(Collect::default());
        let code = self
            .run(envd, lease_id, script, &BTreeMap::new(), cwd, sink.clone())
            .await?;
        let (stdout, stderr) = sink.take();
        Ok((code, stdout, stderr))
    }

    /// Exposed ports as E2B's computed URLs.
    fn shares_of(lease: &Lease, domain: &str, ttl: Duration) -> Vec<Share> {
        lease
            .ports()
            .into_iter()
            .map(|port| share(lease, domain, port, ttl))
            .collect()
    }

    fn lease_of(&self, sandbox: Sandbox, claimed: &HashMap<String, Labels>) -> Option<Lease> {
        let id = sandbox.lease()?.to_owned();
        let labels: Labels = claimed.get(&id).cloned().unwrap_or_else(|| {
            sandbox
                .metadata
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect()
        });
        let domain = sandbox
            .domain
            .clone()
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| self.env.domain());
        let is_claimed = claimed.contains_key(&id);
        let mut lease = Lease {
            id,
            provider: ProviderName::E2b,
            cloud_id: sandbox.sandbox_id,
            labels,
            endpoint: Endpoint::default(),
            listed: true,
            claimed: is_claimed,
        };
        let ttl = Duration::from_secs(
            lease
                .label(labels::TTL_SECS)
                .and_then(|t| t.parse().ok())
                .unwrap_or(3600),
        );
        lease.endpoint.shares = Self::shares_of(&lease, &domain, ttl);
        lease.endpoint.url = lease.endpoint.shares.first().map(|s| s.url.clone());
        Some(lease)
    }
}

fn share(lease: &Lease, domain: &str, port: u16, ttl: Duration) -> Share {
    Share {
        port,
        url: sandbox_url(domain, &lease.cloud_id, port),
        expires_at: jiff::Timestamp::try_from(SystemTime::now() + timeout_of(ttl))
            .map(|t| t.round(jiff::Unit::Second).unwrap_or(t).to_string())
            .unwrap_or_default(),
        id: String::new(),
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn redact(error: ProviderError, secret: &str) -> ProviderError {
    if secret.is_empty() {
        return error;
    }
    ProviderError::Failed(error.to_string().replace(secret, "<redacted>"))
}

/// Output bytes as lines.
struct Lines {
    stream: Stream,
    pending: Vec<u8>,
}

impl Lines {
    fn new(stream: Stream) -> Self {
        Self {
            stream,
            pending: Vec::new(),
        }
    }

    fn push(&mut self, bytes: &[u8], sink: &dyn OutputSink) {
        self.pending.extend_from_slice(bytes);
        while let Some(i) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=i).collect();
            let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            sink.line(self.stream, text.strip_suffix('\r').unwrap_or(&text));
        }
    }

    fn flush(&mut self, sink: &dyn OutputSink) {
        if !self.pending.is_empty() {
            let text = String::from_utf8_lossy(&std::mem::take(&mut self.pending)).into_owned();
            sink.line(self.stream, &text);
        }
    }
}

/// The member's block over the environment: template, workdir, user.
fn member_settings(
    m: &DesiredMember,
    env: &EnvSettings,
) -> Result<(String, String, String), ProviderError> {
    let block: E2bBlock = crate::block_of(m)?;
    if let Some(url) = block.api_url.as_deref().filter(|u| !u.trim().is_empty())
        && url.trim().trim_end_matches('/') != env.api_url()
    {
        return Err(ProviderError::Config {
            message: format!(
                "member `{}`: e2b.api_url `{url}` is not the API this crabbox lists ({})",
                m.slug,
                env.api_url()
            ),
            hint: "set CRABBOX_E2B_API_URL (or E2B_API_URL) to it instead".to_owned(),
        });
    }
    let pick = |own: Option<String>, env: &Option<String>, default: &str| {
        own.map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .or_else(|| env.clone())
            .unwrap_or_else(|| default.to_owned())
    };
    let user = pick(block.user, &env.user, DEFAULT_USER);
    let workdir = pick(block.workdir, &env.workdir, DEFAULT_WORKDIR);
    // One rule with validate's (`E2bBlock::problems`).
    let workdir = E2bBlock::checked_workdir(Some(&workdir), Some(&user)).map_err(|p| {
        ProviderError::Config {
            message: format!("member `{}`: {}", m.slug, p.message),
            hint: p.hint,
        }
    })?;
    Ok((
        pick(block.template, &env.template, DEFAULT_TEMPLATE),
        workdir,
        user,
    ))
}

#[async_trait]
impl Provider for E2bProvider {
    fn name(&self) -> ProviderName {
        ProviderName::E2b
    }

    async fn list(&self, pond: &str) -> Result<Vec<Lease>, ProviderError> {
        crate::ssh_lease::check_pond(pond)?;
        let listed = self
            .sandboxes(&[
                (labels::CRABBOX, "true"),
                (labels::PROVIDER, PROVIDER),
                (labels::POND, pond),
            ])
            .await?;
        let claimed: HashMap<String, Labels> =
            pond_claims(&self.claims, ProviderName::E2b, pond, |_| true)
                .await?
                .into_iter()
                .map(|c| (c.lease_id.clone(), c.labels))
                .collect();
        let mut leases = Vec::new();
        for sandbox in listed {
            if sandbox.meta(labels::POND) != Some(pond) {
                continue;
            }
            if let Some(lease) = self.lease_of(sandbox, &claimed) {
                leases.push(lease);
            }
        }
        leases.sort_by(|a, b| a.id.cmp(&b.id));
        leases.dedup_by(|a, b| a.cloud_id == b.cloud_id);
        Ok(leases)
    }

    async fn ponds(&self) -> Result<Vec<String>, ProviderError> {
        let ponds: BTreeSet<String> = self
            .sandboxes(&[(labels::CRABBOX, "true"), (labels::PROVIDER, PROVIDER)])
            .await?
            .into_iter()
            .filter_map(|s| s.meta(labels::POND).map(str::to_owned))
            .collect();
        Ok(ponds.into_iter().collect())
    }

    async fn slugs_in_use(&self) -> Result<Vec<String>, ProviderError> {
        Ok(self
            .sandboxes(&[(labels::CRABBOX, "true"), (labels::PROVIDER, PROVIDER)])
            .await?
            .into_iter()
            .filter_map(|s| s.meta(labels::SLUG).map(str::to_owned))
            .collect())
    }

    async fn create(&self, request: &CreateRequest) -> Result<Lease, ProviderError> {
        crate::ssh_lease::check_lease_id(&request.lease_id)?;
        crate::ssh_lease::check_pond(&request.pond)?;
        self.api_url()?;
        let (template, workdir, user) = member_settings(&request.member, &self.env)?;
        let timeout = timeout_of(request.member.ttl);
        let mut metadata: BTreeMap<String, String> = request
            .labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        metadata.insert(WORKDIR.to_owned(), workdir.clone());
        metadata.insert(TEMPLATE.to_owned(), template.clone());
        let body = json!({
            "templateID": template,
            "timeout": timeout.as_secs(),
            "secure": true,
            "allow_internet_access": true,
            "metadata": metadata,
        });
        // Each attempt first looks for the sandbox an earlier one made.
        let sandbox = crabbox_core::retry::with_retries(|| async {
            let earlier = self
                .sandboxes(&[
                    (labels::CRABBOX, "true"),
                    (labels::LEASE, request.lease_id.as_str()),
                ])
                .await?
                .into_iter()
                .find(|s| {
                    s.lease() == Some(request.lease_id.as_str())
                        && s.meta(labels::POND) == Some(request.pond.as_str())
                });
            if let Some(s) = earlier {
                return Ok(s);
            }
            let (value, _) = self
                .call(reqwest::Method::POST, "/sandboxes", &[], Some(&body))
                .await
                .map_err(|e| e.error)?;
            Self::sandbox_of(value)
        })
        .await?;
        let domain = sandbox
            .domain
            .clone()
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| self.env.domain());
        let lease = Lease {
            id: request.lease_id.clone(),
            provider: ProviderName::E2b,
            cloud_id: sandbox.sandbox_id.clone(),
            labels: metadata
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            endpoint: Endpoint::default(),
            listed: true,
            claimed: true,
        };
        let envd = match sandbox.envd_access_token.clone() {
            Some(token) => {
                let envd = Envd {
                    sandbox: sandbox.sandbox_id.clone(),
                    token,
                    domain,
                    workdir: workdir.clone(),
                    user,
                    timeout,
                    extended: Instant::now(),
                };
                self.envds
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(lease.id.clone(), envd.clone());
                Ok(envd)
            }
            // Adopted: its token comes with a connect.
            None => self.envd(&lease).await,
        };
        let made = match envd {
            Ok(envd) => {
                let script = format!(
                    "mkdir -p -- {}",
                    quote(&format!("{workdir}/{STATE_DIR}/{LOGS}"))
                );
                self.script(&envd, &lease.id, &script, "/").await
            }
            Err(e) => Err(e),
        };
        match made {
            Ok((0, _, _)) => Ok(lease),
            other => {
                // Only a sandbox carrying this lease's metadata is deleted.
                let path = format!("/sandboxes/{}", sandbox.sandbox_id);
                if sandbox.lease() == Some(request.lease_id.as_str()) || sandbox.metadata.is_none()
                {
                    let _ = self
                        .call_retried(reqwest::Method::DELETE, &path, &[], None)
                        .await;
                }
                self.envds
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&request.lease_id);
                Err(match other {
                    Ok((code, _, stderr)) => ProviderError::Failed(format!(
                        "making the workdir {workdir} in e2b sandbox {} exited with {code}: {}",
                        sandbox.sandbox_id,
                        stderr.join("\n")
                    )),
                    Err(e) => e,
                })
            }
        }
    }

    /// E2B's metadata cannot change after create: the labels are the
    /// claim's, which the executor writes after this check.
    async fn relabel(&self, lease: &Lease, labels: &Labels) -> Result<(), ProviderError> {
        self.owned(lease).await?;
        if !crate::ssh_lease::keeps_lease_labels(labels, &lease.id) {
            return Err(ProviderError::Failed(format!(
                "refusing to relabel e2b sandbox {}: the new labels drop crabbox=true, pond or lease={}",
                lease.cloud_id, lease.id
            )));
        }
        Ok(())
    }

    fn session<'a>(&'a self, lease: &'a Lease) -> Box<dyn Session + 'a> {
        Box::new(E2bSession {
            provider: self,
            lease,
        })
    }

    async fn release(&self, lease: &Lease) -> Result<(), ProviderError> {
        self.owned(lease).await?;
        let path = format!("/sandboxes/{}", lease.cloud_id);
        let outcome = match self
            .call_retried(reqwest::Method::DELETE, &path, &[], None)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.status == Some(404) => Err(ProviderError::NotFound(format!(
                "e2b sandbox {} (lease {})",
                lease.cloud_id, lease.id
            ))),
            Err(e) => Err(e.error),
        };
        self.envds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&lease.id);
        outcome
    }

    fn url_bridge(&self) -> Option<&dyn UrlBridge> {
        Some(self)
    }
}

#[async_trait]
impl UrlBridge for E2bProvider {
    /// E2B publishes every port of a sandbox at a computed URL: no call.
    async fn share(&self, lease: &Lease, port: u16, ttl: Duration) -> Result<Share, ProviderError> {
        let domain = self
            .envds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&lease.id)
            .map_or_else(|| self.env.domain(), |e| e.domain.clone());
        Ok(share(lease, &domain, port, ttl))
    }

    async fn shares(&self, lease: &Lease) -> Result<Vec<Share>, ProviderError> {
        Ok(lease.endpoint.shares.clone())
    }
}

struct E2bSession<'a> {
    provider: &'a E2bProvider,
    lease: &'a Lease,
}

#[async_trait]
impl Session for E2bSession<'_> {
    async fn upload(&self, archive: &Path) -> Result<(), ProviderError> {
        let p = self.provider;
        let envd = p.envd(self.lease).await?;
        let bytes = tokio::fs::read(archive)
            .await
            .map_err(|e| ProviderError::Failed(format!("reading {}: {e}", archive.display())))?;
        let remote = format!("/tmp/crabbox-sync-{}.tar.gz", self.lease.id);
        let boundary = format!("crabbox-{}", self.lease.id);
        let mut body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{remote}\"\r\nContent-Type: application/gzip\r\n\r\n"
        )
        .into_bytes();
        body.extend_from_slice(&bytes);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let what = format!("{PROVIDER}: upload to sandbox {}", envd.sandbox);
        let mut query = vec![("path", remote.clone())];
        if !envd.user.is_empty() {
            query.push(("username", envd.user.clone()));
        }
        let response = p
            .envd_request(&envd, "/files")
            .query(&query)
            .header(
                CONTENT_TYPE,
                format!("multipart/form-data; boundary={boundary}"),
            )
            .timeout(UPLOAD_TIMEOUT)
            .body(body)
            .send()
            .await
            .map_err(|e| transport_error(&what, &e, UPLOAD_TIMEOUT).error)?;
        if !response.status().is_success() {
            let status = response.status();
            let headers = response.headers().clone();
            let bytes = response.bytes().await.unwrap_or_default();
            return Err(redact(
                status_error(PROVIDER, KEY_ENV, &what, "/files", status, &headers, &bytes).error,
                &envd.token,
            ));
        }
        let script = format!(
            "mkdir -p -- {w} && tar -x -z -m -o -f {r} -C {w}; s=$?; rm -f -- {r}; exit $s",
            w = quote(&envd.workdir),
            r = quote(&remote)
        );
        match p.script(&envd, &self.lease.id, &script, "/").await? {
            (0, _, _) => Ok(()),
            (code, _, stderr) => Err(ProviderError::Failed(format!(
                "unpacking the upload in e2b sandbox {} exited with {code}: {}",
                envd.sandbox,
                stderr.join("\n")
            ))),
        }
    }

    async fn exec(
        &self,
        request: &ExecRequest,
        sink: Arc<dyn OutputSink>,
    ) -> Result<i32, ProviderError> {
        let envd = self.provider.envd(self.lease).await?;
        let run = self.provider.run(
            &envd,
            &self.lease.id,
            &request.command,
            &request.env,
            &envd.workdir,
            sink,
        );
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

    fn logs_dir(&self) -> Option<String> {
        Some(format!("{STATE_DIR}/{LOGS}"))
    }

    async fn start_background(
        &self,
        request: &ExecRequest,
        name: &str,
    ) -> Result<(), ProviderError> {
        check_service_name(name)?;
        let envd = self.provider.envd(self.lease).await?;
        let script = format!(
            "{}{}",
            stop_functions(&self.lease.id, &envd.workdir),
            ServiceDirs::under(STATE_DIR).start_script(name, "bash -lc", &request.command)
        );
        let sink = Arc::new(Collect::default());
        let code = self
            .provider
            .run(
                &envd,
                &self.lease.id,
                &script,
                &request.env,
                &envd.workdir,
                sink.clone(),
            )
            .await?;
        let (stdout, stderr) = sink.take();
        match code {
            0 => Ok(()),
            EXITED_AT_ONCE => {
                let (status, tail) = early_exit(&stdout);
                Err(ProviderError::Failed(format!(
                    "background service `{name}` exited with status {status} right after starting; last lines of {}/{STATE_DIR}/logs/{name}.log in e2b sandbox {}:\n{tail}",
                    envd.workdir, envd.sandbox
                )))
            }
            code => Err(ProviderError::Failed(format!(
                "starting background service `{name}` failed with exit status {code}: {}",
                stderr.join("\n")
            ))),
        }
    }

    async fn stop_background(&self) -> Result<(), ProviderError> {
        let envd = self.provider.envd(self.lease).await?;
        let services = ServiceDirs::under(STATE_DIR);
        let script = format!(
            "{}cd -- {} 2>/dev/null || exit 0\n[ -d {} ] || exit 0\n{}exit 0\n",
            stop_functions(&self.lease.id, &envd.workdir),
            quote(&envd.workdir),
            quote(&services.pids),
            services.stop_all()
        );
        match self
            .provider
            .script(&envd, &self.lease.id, &script, "/")
            .await?
        {
            (0, _, _) => Ok(()),
            (code, _, stderr) => Err(ProviderError::Failed(format!(
                "stopping background services failed with exit status {code}: {}",
                stderr.join("\n")
            ))),
        }
    }

    async fn probe(
        &self,
        probe: &Probe,
        env: &BTreeMap<String, String>,
    ) -> Result<bool, ProviderError> {
        let envd = self.provider.envd(self.lease).await?;
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
        let run = self
            .provider
            .run(&envd, &self.lease.id, &script, &env, &envd.workdir, sink);
        match tokio::time::timeout(PROBE_TIMEOUT, run).await {
            Err(_) => Ok(false),
            Ok(Ok(0)) => Ok(true),
            Ok(Ok(NO_PROBE_TOOL)) if !matches!(probe, Probe::Command(_)) => {
                Err(ProviderError::Failed(format!(
                    "cannot probe in e2b sandbox {}: it has none of curl, wget or python3",
                    envd.sandbox
                )))
            }
            Ok(Ok(_)) => Ok(false),
            Ok(Err(e)) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_workdirs_and_timeouts_follow_crabbox() {
        assert_eq!(
            sandbox_url("e2b.app", "sbx1", 8080),
            "https://8080-sbx1.e2b.app"
        );
        assert_eq!(
            sandbox_url("localhost:4000", "sbx1", ENVD_PORT),
            "http://49983-sbx1.localhost:4000"
        );
        assert_eq!(workdir_path("crabbox", "user"), "/home/user/crabbox");
        assert_eq!(workdir_path("/srv/app/", "user"), "/srv/app");
        assert_eq!(timeout_of(Duration::from_secs(7200)), MAX_TIMEOUT);
        assert_eq!(timeout_of(Duration::from_secs(90)), Duration::from_secs(90));
        assert_eq!(urlencode("pond=a b"), "pond%3Da%20b");
    }
}
