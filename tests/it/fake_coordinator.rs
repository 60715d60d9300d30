//! A local, in-memory fake of a Crabbox coordinator (openclaw/crabbox
//! `worker/`), written from `shared/reference/crabbox-coordinator.md` and
//! checked route by route against the worker's source (`worker/src/fleet.ts`,
//! `coordinator-entry.ts`, `config.ts`, `hetzner.ts`, `provider-labels.ts`,
//! `slug.ts`, `provider-key.ts` at commit 0bba5f7): the same paths, status
//! codes, error bodies (`{"error": code, "message"?}`, 500 `{"error":
//! message}` for bad input and provider failures) and lease JSON (camelCase,
//! `sshPort` a string, absent fields left out).
//!
//! Behind it is the Hetzner fake: a brokered lease is a real fake-Hetzner
//! server, created with the coordinator's labels and the lease's
//! `sshPublicKey` uploaded as an SSH key, so a fake Hetzner configured with
//! the test sshd's `authorized_keys` lets the lease's key in. What a lease
//! reports for SSH (`sshUser`, `sshPort`, `sshFallbackPorts`, `sshHostKey`) is
//! the configured test sshd's, whatever the request asked: the "machine" is
//! that sshd.
//!
//! Where the fake knowingly differs from the worker:
//! - the lease turns `active` once the Hetzner server is `running` (the
//!   worker answers as soon as the server has an IPv4 address); the POST
//!   answers only then, with 201 and the active lease, as the worker does;
//! - only `hetzner` is configured: `aws`, `azure`, `gcp`, `daytona` answer
//!   424 `provider_not_configured`, any other provider 500 `unsupported
//!   provider: …` (the worker's `leaseConfig` error);
//! - there is no cost accounting, ready pool, share, workspace or websocket.
//!
//! Expiry runs on a ticker (the worker's alarm): a live lease whose
//! `expiresAt` passed gets `cleanupStartedAt`, its server is deleted, then it
//! is `expired`. Release cleanup waits [`CoordinatorConfig::cleanup_delay`]
//! before deleting, so a client sees `cleanupStartedAt` for a while. A
//! deletion that fails clears `cleanupStartedAt`, sets `cleanupError` and is
//! tried again by the ticker after [`CoordinatorConfig::cleanup_retry_delay`].
//!
//! Faults are the shared harness's (`fake_http`), plus what only a
//! coordinator needs: answering nothing (or an error) after a request was
//! fully processed, for crash and lost-answer tests.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::fake_http::{
    Access, FakeServer, Harness, Reply, Storm, json_error, query_pairs, set_header,
};
pub use super::fake_http::{LoggedRequest, Route};

/// The bearer token the fake accepts unless configured otherwise.
pub const TOKEN: &str = "coordinator-token";
/// Providers a coordinator knows (`config.ts` `leaseConfig`); only Hetzner
/// is configured on the fake.
const KNOWN_PROVIDERS: [&str; 5] = ["hetzner", "aws", "azure", "gcp", "daytona"];
/// `slug.ts` `maxRequestedLeaseSlugLength`.
const MAX_SLUG: usize = 41;
/// `fleet.ts` `leaseCleanupClaimStaleMs`.
const CLEANUP_CLAIM_STALE: Duration = Duration::from_secs(30 * 60);
/// How often the expiry "alarm" looks at the leases.
const EXPIRY_TICK: Duration = Duration::from_millis(50);
/// How long a create waits for its Hetzner server to be `running`.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// How the fake starts.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// The shared bearer token; its requests are `owner`/`org`'s.
    pub token: String,
    /// The owner of the shared token (`CRABBOX_SHARED_OWNER`).
    pub owner: String,
    /// The org of the shared token (`CRABBOX_DEFAULT_ORG`).
    pub org: String,
    /// The fake Hetzner's base URL (`…/v1`) servers are created on.
    pub hetzner_url: String,
    /// The fake Hetzner's token.
    pub hetzner_token: String,
    /// What leases report as `sshUser` (the test sshd's user).
    pub ssh_user: String,
    /// What leases report as `sshPort`.
    pub ssh_port: u16,
    /// What leases report as `sshFallbackPorts`.
    pub ssh_fallback_ports: Vec<u16>,
    /// What leases report as `sshHostKey`: an OpenSSH public key line.
    pub ssh_host_key: String,
    /// `workRoot` of leases that do not ask for one.
    pub work_root: String,
    /// How long after a release the server is deleted.
    pub cleanup_delay: Duration,
    /// Whether leases past `expiresAt` expire (and lose their server).
    pub expire_idle: bool,
    /// How long after a failed machine deletion it is tried again
    /// (`fleet.ts` `leaseCleanupRetryDelayMs`: 5 minutes).
    pub cleanup_retry_delay: Duration,
    /// How long a create stays `provisioning` before its first Hetzner call
    /// (to cancel a create "during" it, or kill a client mid-create).
    pub provision_delay: Duration,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            token: TOKEN.to_owned(),
            owner: "ci@example.test".to_owned(),
            org: "crabbox-ci".to_owned(),
            hetzner_url: String::new(),
            hetzner_token: super::fake_hetzner::TOKEN.to_owned(),
            ssh_user: "crabbox".to_owned(),
            ssh_port: 2222,
            ssh_fallback_ports: vec![22],
            ssh_host_key: String::new(),
            work_root: "/work/crabbox".to_owned(),
            cleanup_delay: Duration::from_millis(300),
            expire_idle: true,
            cleanup_retry_delay: Duration::from_secs(5 * 60),
            provision_delay: Duration::ZERO,
        }
    }
}

/// Who a token stands for.
#[derive(Debug, Clone)]
struct Identity {
    owner: String,
    org: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeaseState {
    Provisioning,
    Active,
    Released,
    Expired,
    Failed,
}

impl LeaseState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Provisioning => "provisioning",
            Self::Active => "active",
            Self::Released => "released",
            Self::Expired => "expired",
            Self::Failed => "failed",
        }
    }

    /// `fleet.ts` `leaseIsLive`.
    fn live(self) -> bool {
        matches!(self, Self::Provisioning | Self::Active)
    }
}

/// One lease, as the worker's `LeaseRecord` holds it.
#[derive(Debug, Clone)]
struct Lease {
    /// Creation order, to keep "newest first" stable within a millisecond.
    seq: u64,
    id: String,
    slug: String,
    provider: String,
    cloud_id: String,
    owner: String,
    org: String,
    class: String,
    server_type: String,
    server_id: u64,
    server_name: String,
    provider_key: String,
    /// Whether the Hetzner key is the lease's own (made for it), so that
    /// cleanup deletes it; a key reused by fingerprint is left.
    key_owned: bool,
    host: String,
    ssh_user: String,
    ssh_port: String,
    ssh_fallback_ports: Vec<String>,
    ssh_host_key: String,
    ssh_public_key: String,
    work_root: String,
    keep: bool,
    ttl_seconds: u64,
    idle_timeout_seconds: u64,
    state: LeaseState,
    pond: String,
    exposed_ports: Vec<String>,
    location: String,
    image: String,
    created_at: SystemTime,
    updated_at: SystemTime,
    last_touched_at: SystemTime,
    expires_at: SystemTime,
    cleanup_started_at: Option<SystemTime>,
    /// Why deleting the machine failed (`cleanupError`), how often it did,
    /// when last, and when the next try is due.
    cleanup_error: Option<String>,
    cleanup_attempts: u32,
    cleanup_failed_at: Option<SystemTime>,
    cleanup_retry_at: Option<SystemTime>,
    failure_error: Option<String>,
    release_deletes_server: Option<bool>,
    released_at: Option<SystemTime>,
    ended_at: Option<SystemTime>,
    /// The create attempt it was made by (not shown: `publicLeaseRecord`
    /// drops it).
    create_attempt_id: Option<String>,
    /// What a fixed-ID (`PUT`) create asked for, to tell a repeat from a
    /// different intent.
    fixed_intent: Option<Value>,
}

impl Lease {
    /// `fleet.ts` `leaseExpiresAt`: the earlier of the TTL and the idle
    /// deadline.
    fn recompute_expiry(&mut self) {
        let max_life = self.created_at + Duration::from_secs(self.ttl_seconds.max(1));
        let idle = self.last_touched_at + Duration::from_secs(self.idle_timeout_seconds.max(1));
        self.expires_at = max_life.min(idle);
    }

    /// The lease as the API shows it.
    fn to_json(&self) -> Value {
        let mut m = Map::new();
        let mut put = |k: &str, v: Value| {
            m.insert(k.to_owned(), v);
        };
        put("id", json!(self.id));
        put("slug", json!(self.slug));
        put("provider", json!(self.provider));
        put("target", json!("linux"));
        put("desktop", json!(false));
        put("browser", json!(false));
        put("code", json!(false));
        put("cloudID", json!(self.cloud_id));
        put("owner", json!(self.owner));
        put("providerOwner", json!(self.owner));
        put("org", json!(self.org));
        put("profile", json!("default"));
        put("class", json!(self.class));
        put("serverType", json!(self.server_type));
        put("requestedServerType", json!(self.server_type));
        put("serverID", json!(self.server_id));
        put("serverName", json!(self.server_name));
        put("providerKey", json!(self.provider_key));
        put("host", json!(self.host));
        put("sshUser", json!(self.ssh_user));
        put("sshPort", json!(self.ssh_port));
        put("sshFallbackPorts", json!(self.ssh_fallback_ports));
        if !self.ssh_host_key.is_empty() {
            put("sshHostKey", json!(self.ssh_host_key));
        }
        put("workRoot", json!(self.work_root));
        put("keep", json!(self.keep));
        put("ttlSeconds", json!(self.ttl_seconds));
        put("idleTimeoutSeconds", json!(self.idle_timeout_seconds));
        put("estimatedHourlyUSD", json!(0));
        put("maxEstimatedUSD", json!(0));
        put("state", json!(self.state.as_str()));
        put("createdAt", json!(iso(self.created_at)));
        put("updatedAt", json!(iso(self.updated_at)));
        put("lastTouchedAt", json!(iso(self.last_touched_at)));
        put("expiresAt", json!(iso(self.expires_at)));
        if !self.pond.is_empty() {
            put("pond", json!(self.pond));
        }
        if !self.exposed_ports.is_empty() {
            put("exposedPorts", json!(self.exposed_ports));
        }
        if let Some(at) = self.cleanup_started_at {
            put("cleanupStartedAt", json!(iso(at)));
            put(
                "cleanupClaimExpiresAt",
                json!(iso(at + CLEANUP_CLAIM_STALE)),
            );
        }
        if self.cleanup_attempts > 0 {
            put("cleanupAttempts", json!(self.cleanup_attempts));
        }
        if let Some(e) = &self.cleanup_error {
            put("cleanupError", json!(e));
        }
        if let Some(at) = self.cleanup_failed_at {
            put("cleanupFailedAt", json!(iso(at)));
        }
        if let Some(at) = self.cleanup_retry_at {
            put("cleanupRetryAt", json!(iso(at)));
        }
        if let Some(e) = &self.failure_error {
            put("failureError", json!(e));
        }
        if let Some(d) = self.release_deletes_server {
            put("releaseDeletesServer", json!(d));
        }
        if let Some(at) = self.released_at {
            put("releasedAt", json!(iso(at)));
        }
        if let Some(at) = self.ended_at {
            put("endedAt", json!(iso(at)));
        }
        Value::Object(m)
    }

    /// `fleet.ts` `finalizedReleasedLease`.
    fn finalize_release(&mut self, delete_server: bool) {
        let now = SystemTime::now();
        let unprovisioned = self.cloud_id.is_empty()
            && matches!(self.state, LeaseState::Provisioning | LeaseState::Released);
        self.state = LeaseState::Released;
        self.updated_at = now;
        self.released_at = Some(now);
        self.ended_at = Some(now);
        self.release_deletes_server = if unprovisioned {
            Some(delete_server)
        } else if !delete_server && !self.cloud_id.is_empty() {
            Some(false)
        } else {
            None
        };
        self.cleanup_started_at = None;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AttemptState {
    Pending,
    Canceled,
}

/// A create attempt, keyed by the lease ID it asked for.
#[derive(Debug, Clone)]
struct Attempt {
    token: String,
    owner: String,
    org: String,
    state: AttemptState,
    /// Whether a lease was created under it.
    bound: bool,
}

#[derive(Debug)]
struct Inner {
    config: CoordinatorConfig,
    tokens: Vec<(String, Identity)>,
    leases: BTreeMap<String, Lease>,
    attempts: HashMap<String, Attempt>,
    /// Canceled attempts replaced by a newer attempt on the same lease ID:
    /// (lease ID, attempt ID) → owner, org.
    archived: HashMap<(String, String), (String, String)>,
    next_seq: u64,
    /// How many after-processing faults are armed (the probe is asked only
    /// while some are).
    armed: usize,
}

/// Control of a running fake: its leases, switches and request log.
#[derive(Debug, Clone)]
pub struct CoordinatorHandle {
    inner: Arc<Mutex<Inner>>,
    http: Harness,
    /// Matches requests against the after-processing faults: its harness's
    /// queued replies are those faults (see [`Self::hang_after_processing`]).
    probe: Arc<Probe>,
    /// Calls the fake Hetzner and the probe.
    client: reqwest::Client,
}

/// A fake of nothing: a server whose harness holds the after-processing
/// faults as queued replies, so that the harness's own route matching and
/// counting decide which processed request hangs or fails. It answers 204
/// when no fault matches.
#[derive(Debug)]
struct Probe {
    harness: Harness,
    server: FakeServer,
}

/// A running fake.
#[derive(Debug)]
pub struct FakeCoordinator {
    /// `http://127.0.0.1:<port>`: what `CRABBOX_COORDINATOR` holds.
    pub base_url: String,
    /// Control of the fake.
    pub handle: CoordinatorHandle,
    /// Serving stops when the fake is dropped.
    _server: FakeServer,
    /// The expiry ticker stops when the fake is dropped.
    _ticker: TickerGuard,
}

#[derive(Debug)]
struct TickerGuard(tokio::task::JoinHandle<()>);

impl Drop for TickerGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts a fake on a free port of 127.0.0.1, served (with its expiry
/// ticker) by tasks of the current runtime.
pub async fn start(config: CoordinatorConfig) -> FakeCoordinator {
    let tokens = vec![(
        config.token.clone(),
        Identity {
            owner: config.owner.clone(),
            org: config.org.clone(),
        },
    )];
    let probe_harness = Harness::default();
    let probe_routes = Router::new().fallback(|| async { StatusCode::NO_CONTENT });
    let probe_server = FakeServer::start(
        "coordinator probe",
        probe_harness.wrap(probe_routes, Arc::new(|_: &_| Access::Granted)),
    )
    .await;
    let handle = CoordinatorHandle {
        inner: Arc::new(Mutex::new(Inner {
            config,
            tokens,
            leases: BTreeMap::new(),
            attempts: HashMap::new(),
            archived: HashMap::new(),
            next_seq: 0,
            armed: 0,
        })),
        http: Harness::default(),
        probe: Arc::new(Probe {
            harness: probe_harness,
            server: probe_server,
        }),
        client: reqwest::Client::new(),
    };
    let auth_handle = handle.clone();
    let auth = Arc::new(move |parts: &axum::http::request::Parts| {
        // `coordinator-entry.ts`: health is answered before authentication.
        if parts.method == Method::GET && parts.uri.path() == "/v1/health" {
            return Access::Open;
        }
        if auth_handle.identity(&parts.headers).is_some() {
            Access::Granted
        } else {
            Access::Denied(error(StatusCode::UNAUTHORIZED, "unauthorized", None))
        }
    });
    let routes = Router::new()
        .fallback(handle_request)
        .with_state(handle.clone());
    let app = handle
        .http
        .wrap(routes, auth)
        .layer(axum::middleware::from_fn_with_state(
            handle.clone(),
            after_processing,
        ));
    let server = FakeServer::start("coordinator", app).await;
    let ticker = tokio::spawn(expiry_ticker(handle.clone()));
    FakeCoordinator {
        base_url: server.url.clone(),
        handle,
        _server: server,
        _ticker: TickerGuard(ticker),
    }
}

// ---- answers ----

/// The worker's error body: `{"error": code}` with a `message` when it has
/// one.
fn error_body(code: &str, message: &str) -> Value {
    if message.is_empty() {
        json!({ "error": code })
    } else {
        json!({ "error": code, "message": message })
    }
}

fn error(status: StatusCode, code: &str, message: Option<&str>) -> Response {
    json_error(error_body, status, code, message.unwrap_or(""))
}

/// 500 `{"error": message}`: how the worker answers bad input and provider
/// failures (its router's catch-all).
fn internal(message: &str) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        axum::Json(json!({ "error": message })),
    )
        .into_response()
}

fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not_found", None)
}

fn ok(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn lease_answer(status: StatusCode, lease: &Lease) -> Response {
    ok(status, json!({ "lease": lease.to_json() }))
}

/// `fleet.ts` `createAttemptConflictResponse`.
fn create_attempt_conflict() -> Response {
    error(
        StatusCode::CONFLICT,
        "create_attempt_conflict",
        Some("requested lease id is permanently bound to another create attempt"),
    )
}

/// `fleet.ts` `createCanceledResponse`.
fn create_canceled() -> Response {
    error(
        StatusCode::CONFLICT,
        "create_canceled",
        Some("create attempt was canceled before completion"),
    )
}

/// `fleet.ts` `createAttemptIDConflictResponse`.
fn lease_id_reserved() -> Response {
    error(
        StatusCode::CONFLICT,
        "lease_id_conflict",
        Some("lease id is already reserved"),
    )
}

/// 409 `lease_state_changed` carrying the lease.
fn lease_state_changed(message: &str, lease: &Lease) -> Response {
    ok(
        StatusCode::CONFLICT,
        json!({ "error": "lease_state_changed", "message": message, "lease": lease.to_json() }),
    )
}

fn unavailable() -> Reply {
    Reply::error(
        error_body,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "",
    )
}

// ---- the handle ----

impl CoordinatorHandle {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The identity a request's bearer token stands for (`http.ts`
    /// `bearerToken`: scheme case-insensitive).
    fn identity(&self, headers: &HeaderMap) -> Option<Identity> {
        let header = headers.get("authorization")?.to_str().ok()?;
        let (scheme, token) = header.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
            return None;
        }
        self.lock()
            .tokens
            .iter()
            .find(|(t, _)| t == token)
            .map(|(_, i)| i.clone())
    }

    /// Accepts `token` too, as another user of the coordinator (`owner`,
    /// `org`): to check that leases are only their owner's.
    pub fn add_token(&self, token: &str, owner: &str, org: &str) {
        self.lock().tokens.push((
            token.to_owned(),
            Identity {
                owner: owner.to_owned(),
                org: org.to_owned(),
            },
        ));
    }

    /// Every lease ever known, in the wire shape, newest first.
    pub fn leases(&self) -> Vec<Value> {
        let inner = self.lock();
        let mut all: Vec<&Lease> = inner.leases.values().collect();
        all.sort_by_key(|l| std::cmp::Reverse(l.seq));
        all.into_iter().map(Lease::to_json).collect()
    }

    /// One lease in the wire shape.
    pub fn lease(&self, id: &str) -> Option<Value> {
        self.lock().leases.get(id).map(Lease::to_json)
    }

    /// Whether leases past `expiresAt` expire (and lose their server).
    pub fn set_expire_idle(&self, on: bool) {
        self.lock().config.expire_idle = on;
    }

    /// How long a release waits before deleting the server.
    pub fn set_cleanup_delay(&self, delay: Duration) {
        self.lock().config.cleanup_delay = delay;
    }

    /// How long after a failed machine deletion it is tried again.
    pub fn set_cleanup_retry_delay(&self, delay: Duration) {
        self.lock().config.cleanup_retry_delay = delay;
    }

    /// How long creates from now on stay `provisioning` before calling
    /// Hetzner.
    pub fn set_provision_delay(&self, delay: Duration) {
        self.lock().config.provision_delay = delay;
    }

    /// The next `times` (authenticated) requests on `route` are processed
    /// in full (a create leaves its lease), and then never answered: a
    /// client killed between its request and the answer, or a connection
    /// lost, sees exactly this.
    pub fn hang_after_processing(&self, route: Route, times: usize) {
        self.arm(route, times, Reply::new(|| "hang".into_response()));
    }

    /// The next `times` (authenticated) requests on `route` are processed
    /// in full, and then answered `status` `{"error": "unavailable"}`, as
    /// when a proxy loses the answer.
    pub fn fail_after_processing(&self, route: Route, times: usize, status: u16) {
        let status = StatusCode::from_u16(status).expect("an HTTP status");
        self.arm(
            route,
            times,
            Reply::new(move || format!("fail {}", status.as_u16()).into_response()),
        );
    }

    fn arm(&self, route: Route, times: usize, verdict: Reply) {
        if times == 0 {
            return;
        }
        self.lock().armed += times;
        let n = u32::try_from(times).expect("a sane count");
        self.probe.harness.faults.queue(route, n, verdict);
    }

    /// What happens to a processed request: `None` (answered), or the
    /// probe's verdict (`hang`, `fail <status>`).
    async fn verdict(&self, method: &Method, path: &str) -> Option<String> {
        if self.lock().armed == 0 {
            return None;
        }
        let answer = self
            .client
            .request(method.clone(), format!("{}{path}", self.probe.server.url))
            .send()
            .await
            .ok()?;
        if answer.status() == StatusCode::NO_CONTENT {
            return None;
        }
        {
            let mut inner = self.lock();
            inner.armed = inner.armed.saturating_sub(1);
        }
        answer.text().await.ok()
    }

    /// Delays every request by `latency`.
    pub fn set_latency(&self, latency: Duration) {
        self.http.faults.set_latency(latency);
    }

    /// Delays requests of `method` whose path starts with `path_prefix` by
    /// `latency` more than the others.
    pub fn set_route_latency(&self, method: &str, path_prefix: &str, latency: Duration) {
        self.http
            .faults
            .add_route_latency(Route::new(method, path_prefix), latency);
    }

    /// Requests of `method` whose path starts with `path_prefix` answer 503
    /// `unavailable` from now on (`false`: they are served again).
    pub fn set_route_down(&self, method: &str, path_prefix: &str, down: bool) {
        self.http
            .faults
            .set_down(Route::new(method, path_prefix), down.then(unavailable));
    }

    /// The next `n` (authenticated) requests answer `status` with
    /// `{"error": code}` without being processed, after the failures
    /// injected before.
    pub fn fail_next(&self, n: u32, status: u16, code: &str) {
        let status = StatusCode::from_u16(status).expect("an HTTP status");
        self.http
            .faults
            .queue(Route::any(), n, Reply::error(error_body, status, code, ""));
    }

    /// The next `n` (authenticated) requests on `route` answer `status`
    /// with `{"error": code}` without being processed.
    pub fn fail_next_on(&self, route: Route, n: u32, status: u16, code: &str) {
        let status = StatusCode::from_u16(status).expect("an HTTP status");
        self.http
            .faults
            .queue(route, n, Reply::error(error_body, status, code, ""));
    }

    /// The next `n` (authenticated) requests answer 503 `unavailable`.
    pub fn fail_next_with_503(&self, n: u32) {
        self.http.faults.queue(Route::any(), n, unavailable());
    }

    /// The next `n` (authenticated) requests answer 500 `{"error":
    /// message}`, as the worker answers a failure it does not classify.
    pub fn fail_next_with_500(&self, n: u32, message: &str) {
        let message = message.to_owned();
        self.http
            .faults
            .queue(Route::any(), n, Reply::new(move || internal(&message)));
    }

    /// The next `n` (authenticated) requests answer 429 (with
    /// `Retry-After` when given), `{"error": "rate_limited"}`.
    pub fn fail_next_with_429(&self, n: u32, retry_after: Option<u64>) {
        let mut reply = Reply::error(
            error_body,
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "",
        );
        if let Some(secs) = retry_after {
            reply = reply.with_header("retry-after", &secs.to_string());
        }
        self.http.faults.queue(Route::any(), n, reply);
    }

    /// Serves at most `n` requests at once; later ones wait. `None` lifts
    /// the limit.
    pub fn set_max_in_flight(&self, n: Option<usize>) {
        self.http.faults.set_max_in_flight(n);
    }

    /// Answers 429 (with `Retry-After`) once more than `burst` requests
    /// arrive faster than `per_second`. `None` lifts it.
    pub fn set_rate_limit(&self, limit: Option<(f64, u32)>) {
        self.http
            .faults
            .set_rate_limit(limit.map(|(per_second, burst)| {
                let reply = Arc::new(|secs: u64| {
                    let mut r = error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", None);
                    set_header(&mut r, "retry-after", &secs.to_string());
                    r
                });
                (per_second, burst, reply as _)
            }));
    }

    /// From now on a `fraction` of (authenticated) requests answer 429 or
    /// 503, half each, picked by a generator seeded with `seed`. `None`
    /// ends the storm.
    pub fn set_storm(&self, storm: Option<(f64, u64)>) {
        self.http
            .faults
            .set_storm(storm.map(|(fraction, seed)| Storm {
                fraction,
                seed,
                replies: vec![
                    Reply::error(error_body, StatusCode::TOO_MANY_REQUESTS, "rate_limited", "")
                        .with_header("retry-after", "0"),
                    unavailable(),
                ],
            }));
    }

    /// Every request so far, in the order their answers were ready.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.http.log.requests()
    }

    /// How many requests of `method` had a path starting with `path_prefix`.
    pub fn count(&self, method: &str, path_prefix: &str) -> usize {
        self.http.log.count(method, path_prefix)
    }

    /// Forgets the request log.
    pub fn clear_requests(&self) {
        self.http.log.clear();
    }

    // ---- Hetzner ----

    fn hetzner_base(&self) -> (String, String) {
        let inner = self.lock();
        (
            inner.config.hetzner_url.trim_end_matches('/').to_owned(),
            inner.config.hetzner_token.clone(),
        )
    }

    async fn hetzner_call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let (base, token) = self.hetzner_base();
        let mut request = self
            .client
            .request(method.clone(), format!("{base}{path}"))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer = request
            .send()
            .await
            .map_err(|e| format!("hetzner {method} {path}: {e}"))?;
        let status = answer.status();
        let text = answer.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(format!(
                "hetzner {method} {}: http {}: {text}",
                path.split('?').next().unwrap_or(path),
                status.as_u16()
            ));
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// The lease's key on Hetzner (`hetzner.ts`
    /// `ensureSSHKeyForProvisioning`): the key of the lease's name when it
    /// holds the same key, else any key holding it (Hetzner refuses a second
    /// key of the same fingerprint), else a new one the lease owns. Says the
    /// key's name and whether the lease owns (and so deletes) it.
    async fn ensure_key(&self, lease: &Lease) -> Result<(String, bool), String> {
        let identity = key_identity(&lease.ssh_public_key);
        let name = lease.provider_key.clone();
        let owned = |k: &Value| k["labels"]["lease"] == lease.id.as_str();
        let by_name = self
            .hetzner_call(Method::GET, &format!("/ssh_keys?name={name}"), None)
            .await?;
        if let Some(k) = by_name["ssh_keys"]
            .as_array()
            .and_then(|keys| keys.iter().find(|k| k["name"] == name.as_str()))
        {
            if key_identity(k["public_key"].as_str().unwrap_or("")) != identity {
                return Err(format!(
                    "hetzner ssh key {name} exists with different public key"
                ));
            }
            return Ok((name, owned(k)));
        }
        let mut page = 1;
        loop {
            let keys = self
                .hetzner_call(
                    Method::GET,
                    &format!("/ssh_keys?page={page}&per_page=50"),
                    None,
                )
                .await?;
            let list = keys["ssh_keys"].as_array().cloned().unwrap_or_default();
            if let Some(k) = list
                .iter()
                .find(|k| key_identity(k["public_key"].as_str().unwrap_or("")) == identity)
            {
                return Ok((k["name"].as_str().unwrap_or_default().to_owned(), owned(k)));
            }
            if keys["meta"]["pagination"]["next_page"].is_null() {
                break;
            }
            page += 1;
        }
        self.hetzner_call(
            Method::POST,
            "/ssh_keys",
            Some(json!({
                "name": name,
                "public_key": lease.ssh_public_key,
                "labels": { "crabbox": "true", "created_by": "crabbox", "lease": lease.id },
            })),
        )
        .await?;
        Ok((name, true))
    }

    /// Puts the lease's key on Hetzner and creates the server with the
    /// coordinator's labels; waits until it is `running`. A key made for a
    /// server that could not be created is deleted again.
    async fn provision(&self, lease: &Lease) -> Result<Provisioned, String> {
        let (key_name, key_owned) = self.ensure_key(lease).await?;
        let mut labelled = lease.clone();
        labelled.provider_key.clone_from(&key_name);
        let created = self
            .hetzner_call(
                Method::POST,
                "/servers",
                Some(json!({
                    "name": lease.server_name,
                    "server_type": lease.server_type,
                    "image": lease.image,
                    "location": lease.location,
                    "labels": provider_labels(&labelled),
                    "ssh_keys": [key_name],
                    "start_after_create": true,
                    "public_net": { "enable_ipv4": true, "enable_ipv6": false },
                })),
            )
            .await;
        let created = match created {
            Ok(c) => c,
            Err(e) => {
                if key_owned {
                    let _ = self.delete_machine(0, Some(&key_name)).await;
                }
                return Err(e);
            }
        };
        let id = created["server"]["id"]
            .as_u64()
            .ok_or_else(|| "hetzner POST /servers: no server id in the answer".to_owned())?;
        let deadline = tokio::time::Instant::now() + BOOT_TIMEOUT;
        loop {
            let server = self
                .hetzner_call(Method::GET, &format!("/servers/{id}"), None)
                .await?;
            if server["server"]["status"] == "running" {
                return Ok(Provisioned {
                    server: server["server"].clone(),
                    key_name,
                    key_owned,
                });
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!("timed out waiting for server {id} to run"));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Deletes a lease's server (when it has one) and the key it owns (when
    /// given); what is already gone counts as deleted.
    async fn delete_machine(&self, server_id: u64, owned_key: Option<&str>) -> Result<(), String> {
        let gone = |r: Result<Value, String>| match r {
            Err(e) if !e.contains("http 404") => Err(e),
            _ => Ok(()),
        };
        if server_id != 0 {
            gone(
                self.hetzner_call(Method::DELETE, &format!("/servers/{server_id}"), None)
                    .await,
            )?;
        }
        let Some(key_name) = owned_key else {
            return Ok(());
        };
        let found = self
            .hetzner_call(Method::GET, &format!("/ssh_keys?name={key_name}"), None)
            .await?;
        for key in found["ssh_keys"].as_array().cloned().unwrap_or_default() {
            if key["name"] == key_name
                && let Some(id) = key["id"].as_u64()
            {
                gone(
                    self.hetzner_call(Method::DELETE, &format!("/ssh_keys/{id}"), None)
                        .await,
                )?;
            }
        }
        Ok(())
    }

    /// The background cleanup after a release: waits the cleanup delay,
    /// deletes the machine, and clears `cleanupStartedAt`.
    fn spawn_release_cleanup(&self, id: String, claim: SystemTime) {
        let handle = self.clone();
        tokio::spawn(async move {
            let delay = handle.lock().config.cleanup_delay;
            tokio::time::sleep(delay).await;
            handle.finish_cleanup(&id, claim).await;
        });
    }

    /// Deletes the machine of a lease whose cleanup was claimed at `claim`,
    /// then records the outcome (`fleet.ts` `expireLeases` /
    /// `finishLeaseCleanupClaim`): on failure the claim is cleared and
    /// `cleanupError` set with a retry due after the retry delay; else the
    /// claim and any error are cleared, and a lease still live is `expired`.
    async fn finish_cleanup(&self, id: &str, claim: SystemTime) {
        let Some((server_id, key)) = self.lock().leases.get(id).map(|l| {
            let key = l.key_owned.then(|| l.provider_key.clone());
            (l.server_id, key)
        }) else {
            return;
        };
        let outcome = self.delete_machine(server_id, key.as_deref()).await;
        let mut inner = self.lock();
        let retry_delay = inner.config.cleanup_retry_delay;
        let Some(lease) = inner.leases.get_mut(id) else {
            return;
        };
        if lease.cleanup_started_at != Some(claim) {
            return;
        }
        let now = SystemTime::now();
        lease.cleanup_started_at = None;
        lease.updated_at = now;
        match outcome {
            Err(e) => {
                lease.cleanup_attempts += 1;
                lease.cleanup_error = Some(e);
                lease.cleanup_failed_at = Some(now);
                lease.cleanup_retry_at = Some(now + retry_delay);
            }
            Ok(()) => {
                lease.cleanup_attempts = 0;
                lease.cleanup_error = None;
                lease.cleanup_failed_at = None;
                lease.cleanup_retry_at = None;
                if lease.state.live() {
                    lease.state = LeaseState::Expired;
                    lease.ended_at = Some(now);
                }
                lease.release_deletes_server = None;
            }
        }
    }
}

/// What provisioning made: the running server (Hetzner's JSON) and the key
/// it was created with.
#[derive(Debug)]
struct Provisioned {
    server: Value,
    key_name: String,
    key_owned: bool,
}

/// `provider-key.ts` `sshPublicKeyIdentity`: type and blob, without the
/// comment.
fn key_identity(public_key: &str) -> String {
    let mut fields = public_key.split_whitespace();
    match (fields.next(), fields.next()) {
        (Some(kind), Some(blob)) => format!("{kind} {blob}"),
        _ => public_key.trim().to_owned(),
    }
}

/// The coordinator's labels on a Hetzner server (`provider-labels.ts`
/// `leaseProviderLabels`, values through `providerLabelValue`).
fn provider_labels(lease: &Lease) -> Value {
    let now = lease.created_at;
    let mut labels = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        labels.insert(k.to_owned(), label_value(&v));
    };
    put("class", lease.class.clone());
    put("crabbox", "true".to_owned());
    put("created_by", "crabbox".to_owned());
    put("keep", lease.keep.to_string());
    put("lease", lease.id.clone());
    put("slug", normalize_slug(&lease.slug));
    put("owner", lease.owner.clone());
    put("profile", "default".to_owned());
    put("provider_key", lease.provider_key.clone());
    put("provider", "hetzner".to_owned());
    put("target", "linux".to_owned());
    put("server_type", lease.server_type.clone());
    put("state", "leased".to_owned());
    put("created_at", unix(now).to_string());
    put("last_touched_at", unix(now).to_string());
    put("ttl_secs", lease.ttl_seconds.to_string());
    put("idle_timeout_secs", lease.idle_timeout_seconds.to_string());
    let first = lease.ttl_seconds.min(lease.idle_timeout_seconds);
    put("expires_at", (unix(now) + first).to_string());
    if !lease.pond.is_empty() {
        put("pond", lease.pond.clone());
    }
    if !lease.exposed_ports.is_empty() {
        put("crabbox_exposed_ports", lease.exposed_ports.join("-"));
    }
    json!(labels)
}

/// `provider-labels.ts` `providerLabelValue`.
fn label_value(value: &str) -> String {
    let cleaned: String = value
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect();
    let trimmed = cleaned.trim_matches(|c| matches!(c, '_' | '.' | '-'));
    if trimmed.is_empty() {
        "unknown".to_owned()
    } else {
        trimmed.to_owned()
    }
}

// ---- the middleware: after-processing faults ----

async fn after_processing(
    State(handle): State<CoordinatorHandle>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    if response.status() == StatusCode::UNAUTHORIZED {
        return response;
    }
    match handle.verdict(&method, &path).await.as_deref() {
        Some("hang") => std::future::pending::<Response>().await,
        Some(verdict) => {
            let status = verdict
                .strip_prefix("fail ")
                .and_then(|s| s.parse::<u16>().ok())
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(StatusCode::BAD_GATEWAY);
            error(status, "unavailable", None)
        }
        None => response,
    }
}

// ---- the routes ----

/// The request body as the worker reads it. `readJson` parses whatever
/// came; `optionalJson` (heartbeat, release) reads it only when the
/// `Content-Type` is JSON, else takes `{}`.
fn body_json(headers: &HeaderMap, body: &[u8], optional: bool) -> Result<Value, String> {
    if optional {
        let json = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("application/json"));
        if !json {
            return Ok(json!({}));
        }
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Ok(json!({})),
        Err(e) => Err(format!("invalid JSON in request body: {e}")),
    }
}

async fn handle_request(
    State(handle): State<CoordinatorHandle>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path();
    if method == Method::GET && path == "/v1/health" {
        return ok(
            StatusCode::OK,
            json!({ "ok": true, "service": "crabbox-coordinator" }),
        );
    }
    let Some(who) = handle.identity(&headers) else {
        return error(StatusCode::UNAUTHORIZED, "unauthorized", None);
    };
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let read = |optional| body_json(&headers, &body, optional);
    match (method.clone(), parts.as_slice()) {
        (Method::GET, ["v1", "whoami"]) => ok(
            StatusCode::OK,
            json!({ "owner": who.owner, "org": who.org, "auth": "bearer", "admin": false }),
        ),
        (Method::GET, ["v1", "leases"]) => list_leases(&handle, &who, &query_pairs(&uri)),
        (Method::POST, ["v1", "leases"]) => match read(false) {
            Ok(input) => create_lease(&handle, &who, &input, None).await,
            Err(message) => internal(&message),
        },
        (Method::POST, ["v1", "leases", id, "cancel-create"]) => match read(false) {
            Ok(input) => cancel_create(&handle, &who, id, &input).await,
            Err(message) => internal(&message),
        },
        (Method::PUT, ["v1", "leases", id]) => match read(false) {
            Ok(input) => create_lease(&handle, &who, &input, Some(id)).await,
            Err(message) => internal(&message),
        },
        (Method::GET, ["v1", "leases", id]) => {
            let inner = handle.lock();
            match resolve(&inner, id, &who) {
                Some(lease) => lease_answer(StatusCode::OK, lease),
                None => not_found(),
            }
        }
        (Method::POST, ["v1", "leases", id, "heartbeat"]) => match read(true) {
            Ok(input) => heartbeat(&handle, &who, id, &input),
            Err(message) => internal(&message),
        },
        (Method::POST, ["v1", "leases", id, "release"]) => match read(true) {
            Ok(input) => release(&handle, &who, id, &input),
            Err(message) => internal(&message),
        },
        _ => not_found(),
    }
}

/// `fleet.ts` `validLeaseID`.
fn valid_lease_id(v: &str) -> bool {
    v.len() == 16
        && v.starts_with("cbx_")
        && v[4..]
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `fleet.ts` `validCreateAttemptID`.
fn valid_attempt_id(v: &str) -> bool {
    v.len() == 36
        && v.starts_with("cat_")
        && v[4..]
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `fleet.ts` `resolveLease`: the lease of that ID, else the one live,
/// unexpired lease of that slug; only the caller's.
fn resolve<'a>(inner: &'a Inner, id_or_slug: &str, who: &Identity) -> Option<&'a Lease> {
    let visible = |l: &&Lease| l.owner == who.owner && l.org == who.org;
    if let Some(exact) = inner.leases.get(id_or_slug) {
        return Some(exact).filter(visible);
    }
    let slug = normalize_slug(id_or_slug);
    if slug.is_empty() {
        return None;
    }
    let now = SystemTime::now();
    inner
        .leases
        .values()
        .filter(visible)
        .find(|l| l.state.live() && l.expires_at > now && normalize_slug(&l.slug) == slug)
}

/// `GET /v1/leases` (`fleet.ts` `listLeases` → `filterLeases`): `state`,
/// `provider`, `owner` filters, newest first, `limit` (default 100, at most
/// 500) taken BEFORE other owners' leases are dropped — there is no cursor
/// or offset, so a caller cannot page past the first 500.
fn list_leases(handle: &CoordinatorHandle, who: &Identity, query: &[(String, String)]) -> Response {
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    };
    let limit = match param("limit").trim().parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 => (n.trunc() as usize).min(500),
        _ => 100,
    };
    let (state, provider, owner) = (param("state"), param("provider"), param("owner"));
    let inner = handle.lock();
    let mut leases: Vec<&Lease> = inner
        .leases
        .values()
        .filter(|l| state.is_empty() || l.state.as_str() == state)
        .filter(|l| provider.is_empty() || l.provider == provider)
        .filter(|l| owner.is_empty() || l.owner == owner)
        .collect();
    leases.sort_by(|a, b| {
        iso(b.created_at)
            .cmp(&iso(a.created_at))
            .then(b.seq.cmp(&a.seq))
    });
    let page: Vec<Value> = leases
        .into_iter()
        .take(limit)
        .filter(|l| l.owner == who.owner && l.org == who.org)
        .map(Lease::to_json)
        .collect();
    ok(StatusCode::OK, json!({ "leases": page }))
}

/// What a create asks for, with the worker's defaults (`config.ts`
/// `leaseConfig`).
struct Wanted {
    provider: String,
    class: String,
    server_type: String,
    slug: String,
    pond: String,
    exposed_ports: Vec<String>,
    ssh_public_key: String,
    work_root: String,
    keep: bool,
    ttl_seconds: u64,
    idle_timeout_seconds: u64,
    location: String,
    image: String,
}

fn str_field<'a>(input: &'a Value, name: &str) -> Option<&'a str> {
    input.get(name).and_then(Value::as_str)
}

/// `config.ts` `clampTTL`/`clampIdleTimeout`.
fn seconds(input: &Value, name: &str, default: u64) -> u64 {
    match input.get(name).and_then(Value::as_f64) {
        Some(n) if n.is_finite() && n > 0.0 => (n.trunc() as u64).min(86_400),
        _ => default,
    }
}

/// The lease config a create asks for, or the worker's answer to bad input.
fn wanted(input: &Value, requested_slug: &str) -> Result<Wanted, String> {
    let provider = match input.get("provider") {
        None | Some(Value::Null) => "hetzner".to_owned(),
        Some(Value::String(p)) if KNOWN_PROVIDERS.contains(&p.as_str()) => p.clone(),
        Some(other) => {
            let shown = other
                .as_str()
                .map_or_else(|| other.to_string(), str::to_owned);
            return Err(format!("unsupported provider: {shown}"));
        }
    };
    let class = str_field(input, "class").unwrap_or("beast").to_owned();
    let server_type = str_field(input, "serverType")
        .map_or_else(|| hetzner_type_for_class(&class).to_owned(), str::to_owned);
    let ssh_public_key = str_field(input, "sshPublicKey")
        .unwrap_or("")
        .trim()
        .to_owned();
    if ssh_public_key.is_empty() {
        return Err("sshPublicKey is required".to_owned());
    }
    let pond = match str_field(input, "pond").unwrap_or("") {
        p if p.trim().is_empty() => String::new(),
        p => {
            let name = normalize_slug(p);
            if name.is_empty() {
                return Err("pond must contain at least one letter or digit".to_owned());
            }
            name
        }
    };
    // `config.ts` `normalizeExposedPorts`: comma lists allowed, sorted,
    // distinct, at most 10.
    let mut ports: Vec<u32> = Vec::new();
    for raw in input
        .get("exposedPorts")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
    {
        let raw = raw.as_str().map_or_else(|| raw.to_string(), str::to_owned);
        let parts: Vec<&str> = raw
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        if parts.is_empty() {
            return Err("exposedPorts values must not be empty".to_owned());
        }
        for part in parts {
            let digits = part.bytes().all(|b| b.is_ascii_digit()) && !part.starts_with('0');
            match part.parse::<u32>() {
                Ok(p) if digits && (1..=65_535).contains(&p) => ports.push(p),
                _ => {
                    return Err(format!(
                        "exposedPorts value {part} must be a TCP port in 1..65535"
                    ));
                }
            }
        }
    }
    ports.sort_unstable();
    ports.dedup();
    if ports.len() > 10 {
        return Err("exposedPorts accepts at most 10 distinct ports".to_owned());
    }
    Ok(Wanted {
        provider,
        class,
        server_type,
        slug: requested_slug.to_owned(),
        pond,
        exposed_ports: ports.iter().map(u32::to_string).collect(),
        ssh_public_key,
        work_root: str_field(input, "workRoot").unwrap_or("").to_owned(),
        keep: input.get("keep").and_then(Value::as_bool).unwrap_or(false),
        ttl_seconds: seconds(input, "ttlSeconds", 5_400),
        idle_timeout_seconds: seconds(input, "idleTimeoutSeconds", 1_800),
        location: str_field(input, "location").unwrap_or("fsn1").to_owned(),
        image: str_field(input, "image")
            .unwrap_or("ubuntu-24.04")
            .to_owned(),
    })
}

/// `config.ts` `serverTypeCandidatesForClass` (first candidate).
fn hetzner_type_for_class(class: &str) -> &str {
    match class {
        "tiny" => "ccx13",
        "small" => "ccx23",
        "standard" => "ccx33",
        "fast" => "ccx43",
        "large" => "ccx53",
        "beast" => "ccx63",
        other => other,
    }
}

/// `POST /v1/leases` (`fixed: None`) and `PUT /v1/leases/{id}`
/// (`fleet.ts` `createLease`).
async fn create_lease(
    handle: &CoordinatorHandle,
    who: &Identity,
    input: &Value,
    fixed: Option<&str>,
) -> Response {
    let attempt_id = input.get("createAttemptID");
    let input_lease = str_field(input, "leaseID");
    if let Some(fixed) = fixed {
        if !valid_lease_id(fixed) {
            return error(StatusCode::BAD_REQUEST, "invalid_lease_id", None);
        }
        if input.get("leaseID").is_some() && input_lease != Some(fixed) {
            return error(
                StatusCode::BAD_REQUEST,
                "lease_id_mismatch",
                Some("request leaseID must match the route"),
            );
        }
        if attempt_id.is_some() {
            return error(StatusCode::BAD_REQUEST, "create_attempt_not_allowed", None);
        }
    }
    let attempt = match attempt_id {
        None => None,
        Some(a) => {
            if !input_lease.is_some_and(valid_lease_id) {
                return error(StatusCode::BAD_REQUEST, "invalid_lease_id", None);
            }
            match a.as_str().filter(|a| valid_attempt_id(a)) {
                Some(a) => Some(a.to_owned()),
                None => return error(StatusCode::BAD_REQUEST, "invalid_create_attempt_id", None),
            }
        }
    };
    let lease_id = match (fixed, input_lease) {
        (Some(f), _) => f.to_owned(),
        (None, Some(l)) if valid_lease_id(l) => l.to_owned(),
        _ => new_id("cbx_", 12),
    };
    if let Some(token) = &attempt
        && let Some(answer) = replay_attempt(handle, who, &lease_id, token)
    {
        return answer;
    }
    let requested = str_field(input, "slug")
        .or_else(|| str_field(input, "requestedSlug"))
        .unwrap_or("");
    let requested_slug = if requested.trim().is_empty() {
        String::new()
    } else {
        let slug = normalize_slug(requested);
        if slug.is_empty() {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_slug",
                Some("slug must contain at least one letter or digit"),
            );
        }
        if slug.len() > MAX_SLUG {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_slug",
                Some("slug must be 41 characters or fewer after normalization"),
            );
        }
        slug
    };
    let want = match wanted(input, &requested_slug) {
        Ok(w) => w,
        Err(message) => return internal(&message),
    };
    let intent = fixed.map(|_| fixed_intent(&want));
    let lease = {
        let mut inner = handle.lock();
        if let Some(intent) = &intent {
            if let Some(existing) = inner.leases.get(&lease_id) {
                if existing.owner == who.owner
                    && existing.org == who.org
                    && existing.fixed_intent.as_ref() == Some(intent)
                {
                    return if existing.state.live() {
                        lease_answer(StatusCode::OK, existing)
                    } else {
                        lease_state_changed("lease is already terminal", existing)
                    };
                }
                return error(
                    StatusCode::CONFLICT,
                    "lease_id_conflict",
                    Some("lease id is bound to another create intent"),
                );
            }
            if inner.attempts.contains_key(&lease_id) {
                return lease_id_reserved();
            }
        }
        if want.provider != "hetzner" {
            return ok(
                StatusCode::FAILED_DEPENDENCY,
                json!({
                    "error": "provider_not_configured",
                    "provider": want.provider,
                    "missing": [format!("{} credentials", want.provider)],
                    "message": format!("{} is not configured on this coordinator", want.provider),
                }),
            );
        }
        if let Some(token) = &attempt {
            // `reserveCreateAttempt`.
            match inner.attempts.get(&lease_id) {
                Some(a) if a.token == *token && a.state == AttemptState::Canceled => {
                    return create_canceled();
                }
                Some(a) if a.token != *token => return create_attempt_conflict(),
                _ => {}
            }
            if inner.leases.contains_key(&lease_id) {
                return lease_id_reserved();
            }
        } else if inner.leases.contains_key(&lease_id) {
            return error(
                StatusCode::CONFLICT,
                "lease_id_conflict",
                Some("lease id already exists"),
            );
        }
        let lease = new_lease(&mut inner, who, &lease_id, want, attempt.clone(), intent);
        if let Some(token) = &attempt {
            inner.attempts.insert(
                lease_id.clone(),
                Attempt {
                    token: token.clone(),
                    owner: who.owner.clone(),
                    org: who.org.clone(),
                    state: AttemptState::Pending,
                    bound: true,
                },
            );
        }
        inner.leases.insert(lease_id.clone(), lease.clone());
        lease
    };
    let delay = handle.lock().config.provision_delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    finish_create(handle, lease).await
}

/// What a fixed-ID create asked for: a repeat of the same is answered with
/// the lease, anything else is a conflict.
fn fixed_intent(want: &Wanted) -> Value {
    json!({
        "provider": want.provider, "class": want.class, "serverType": want.server_type,
        "slug": want.slug, "pond": want.pond, "exposedPorts": want.exposed_ports,
        "sshPublicKey": want.ssh_public_key, "workRoot": want.work_root, "keep": want.keep,
        "ttlSeconds": want.ttl_seconds, "idleTimeoutSeconds": want.idle_timeout_seconds,
        "location": want.location, "image": want.image,
    })
}

fn new_lease(
    inner: &mut Inner,
    who: &Identity,
    lease_id: &str,
    want: Wanted,
    attempt: Option<String>,
    fixed_intent: Option<Value>,
) -> Lease {
    let now = SystemTime::now();
    let slug = allocate_slug(inner, who, &want.slug, lease_id);
    inner.next_seq += 1;
    let config = &inner.config;
    let mut lease = Lease {
        seq: inner.next_seq,
        id: lease_id.to_owned(),
        server_name: provider_name(lease_id, &slug),
        slug,
        provider: want.provider,
        cloud_id: String::new(),
        owner: who.owner.clone(),
        org: who.org.clone(),
        class: want.class,
        server_type: want.server_type,
        server_id: 0,
        provider_key: format!("crabbox-{}", lease_id.replace('_', "-")),
        key_owned: false,
        host: String::new(),
        ssh_user: config.ssh_user.clone(),
        ssh_port: config.ssh_port.to_string(),
        ssh_fallback_ports: config
            .ssh_fallback_ports
            .iter()
            .map(u16::to_string)
            .collect(),
        ssh_host_key: config.ssh_host_key.trim().to_owned(),
        ssh_public_key: want.ssh_public_key,
        work_root: if want.work_root.is_empty() {
            config.work_root.clone()
        } else {
            want.work_root
        },
        keep: want.keep,
        ttl_seconds: want.ttl_seconds,
        idle_timeout_seconds: want.idle_timeout_seconds,
        state: LeaseState::Provisioning,
        pond: want.pond,
        exposed_ports: want.exposed_ports,
        location: want.location,
        image: want.image,
        created_at: now,
        updated_at: now,
        last_touched_at: now,
        expires_at: now,
        cleanup_started_at: None,
        cleanup_error: None,
        cleanup_attempts: 0,
        cleanup_failed_at: None,
        cleanup_retry_at: None,
        failure_error: None,
        release_deletes_server: None,
        released_at: None,
        ended_at: None,
        create_attempt_id: attempt,
        fixed_intent,
    };
    lease.recompute_expiry();
    lease
}

/// `fleet.ts` `replayCreateAttempt`: what a repeated attempt is answered,
/// or `None` to go on creating.
fn replay_attempt(
    handle: &CoordinatorHandle,
    who: &Identity,
    lease_id: &str,
    token: &str,
) -> Option<Response> {
    let mut inner = handle.lock();
    if let Some((owner, org)) = inner.archived.get(&(lease_id.to_owned(), token.to_owned())) {
        return Some(if *owner == who.owner && *org == who.org {
            create_canceled()
        } else {
            create_attempt_conflict()
        });
    }
    let existing = inner.attempts.get(lease_id)?.clone();
    if existing.token != token {
        // A canceled attempt that never made a lease frees the ID.
        if existing.state == AttemptState::Canceled && !existing.bound {
            inner.attempts.remove(lease_id);
            inner.archived.insert(
                (lease_id.to_owned(), existing.token),
                (existing.owner, existing.org),
            );
            return None;
        }
        return Some(create_attempt_conflict());
    }
    if existing.owner != who.owner || existing.org != who.org {
        return Some(create_attempt_conflict());
    }
    if existing.state == AttemptState::Canceled {
        return Some(create_canceled());
    }
    let lease = inner.leases.get(lease_id)?;
    // `createAttemptReplayResponse`.
    Some(if lease.state.live() {
        lease_answer(StatusCode::OK, lease)
    } else {
        lease_state_changed("create attempt is already terminal", lease)
    })
}

/// Provisions a created lease on Hetzner and answers the create: 201 with
/// the active lease; 500 `{"error"}` with the lease `failed` when Hetzner
/// fails; 409 `lease_state_changed` (server deleted) when the lease was
/// released or its create canceled meanwhile.
async fn finish_create(handle: &CoordinatorHandle, lease: Lease) -> Response {
    let outcome = handle.provision(&lease).await;
    let (answer, orphan) = settle_create(handle, &lease, outcome);
    if let Some((server_id, key)) = orphan {
        let _ = handle.delete_machine(server_id, key.as_deref()).await;
    }
    answer
}

/// Records how a create's provisioning ended; also says which machine to
/// delete when the lease was released or canceled meanwhile.
fn settle_create(
    handle: &CoordinatorHandle,
    lease: &Lease,
    outcome: Result<Provisioned, String>,
) -> (Response, Option<(u64, Option<String>)>) {
    let mut inner = handle.lock();
    let attempt_canceled = lease.create_attempt_id.as_ref().is_some_and(|_| {
        inner
            .attempts
            .get(&lease.id)
            .is_none_or(|a| a.state == AttemptState::Canceled)
    });
    let Some(current) = inner.leases.get_mut(&lease.id) else {
        return (not_found(), None);
    };
    let Provisioned {
        server,
        key_name,
        key_owned,
    } = match outcome {
        Ok(p) => p,
        Err(message) => {
            if current.state == LeaseState::Provisioning {
                let now = SystemTime::now();
                current.state = LeaseState::Failed;
                current.ended_at = Some(now);
                current.updated_at = now;
                current.failure_error = Some(message.clone());
            }
            return (internal(&message), None);
        }
    };
    let server_id = server["id"].as_u64().unwrap_or(0);
    if current.state != LeaseState::Provisioning || attempt_canceled {
        // `abortProvisionedLeaseAfterStateChange`: the server goes again.
        let key = key_owned.then_some(key_name);
        let answer = lease_state_changed(
            "lease changed state while provider provisioning was in progress",
            current,
        );
        return (answer, Some((server_id, key)));
    }
    current.state = LeaseState::Active;
    current.provider_key = key_name;
    current.key_owned = key_owned;
    current.server_id = server_id;
    current.cloud_id = server_id.to_string();
    current.server_name = server["name"].as_str().unwrap_or_default().to_owned();
    current.host = server["public_net"]["ipv4"]["ip"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    current.updated_at = SystemTime::now();
    (lease_answer(StatusCode::CREATED, current), None)
}

/// `POST /v1/leases/{id}/cancel-create` (`fleet.ts` `cancelCreate`).
async fn cancel_create(
    handle: &CoordinatorHandle,
    who: &Identity,
    lease_id: &str,
    input: &Value,
) -> Response {
    if !valid_lease_id(lease_id) {
        return error(StatusCode::BAD_REQUEST, "invalid_lease_id", None);
    }
    let Some(token) = str_field(input, "createAttemptID").filter(|t| valid_attempt_id(t)) else {
        return error(StatusCode::BAD_REQUEST, "invalid_create_attempt_id", None);
    };
    let canceled = json!({
        "version": 1,
        "requestedLeaseID": lease_id,
        "createAttemptID": token,
        "state": "canceled",
    });
    let (lease, cleanup) = {
        let mut inner = handle.lock();
        if let Some((owner, org)) = inner.archived.get(&(lease_id.to_owned(), token.to_owned())) {
            if *owner != who.owner || *org != who.org {
                return not_found();
            }
            return ok(StatusCode::OK, json!({ "canceledCreate": canceled }));
        }
        match inner.attempts.get(lease_id).cloned() {
            Some(existing) if existing.token != token => {
                if existing.state != AttemptState::Canceled || existing.bound {
                    return create_attempt_conflict();
                }
                if inner.leases.contains_key(lease_id) {
                    return lease_id_reserved();
                }
                inner.attempts.remove(lease_id);
                inner.archived.insert(
                    (lease_id.to_owned(), existing.token),
                    (existing.owner, existing.org),
                );
            }
            Some(existing) if existing.owner != who.owner || existing.org != who.org => {
                return not_found();
            }
            Some(_) => {}
            None => {
                if inner.leases.contains_key(lease_id) {
                    return lease_id_reserved();
                }
            }
        }
        let attempt = inner
            .attempts
            .entry(lease_id.to_owned())
            .or_insert_with(|| Attempt {
                token: token.to_owned(),
                owner: who.owner.clone(),
                org: who.org.clone(),
                state: AttemptState::Canceled,
                bound: false,
            });
        attempt.state = AttemptState::Canceled;
        let bound = attempt.bound;
        let Some(lease) = inner.leases.get_mut(lease_id).filter(|_| bound) else {
            return ok(StatusCode::OK, json!({ "canceledCreate": canceled }));
        };
        if lease.cleanup_started_at.is_some() {
            return ok(
                StatusCode::OK,
                json!({ "canceledCreate": canceled, "lease": lease.to_json() }),
            );
        }
        // A lease with a machine is released and its machine deleted before
        // the answer; one still provisioning is released (its create then
        // deletes what it made).
        let has_machine = !lease.cloud_id.is_empty() && lease.state.live();
        let was_provisioning = lease.state == LeaseState::Provisioning;
        lease.finalize_release(true);
        if was_provisioning {
            lease.release_deletes_server = Some(true);
        }
        let claim = SystemTime::now();
        if has_machine {
            lease.cleanup_started_at = Some(claim);
        }
        (lease.clone(), has_machine.then_some(claim))
    };
    let lease = match cleanup {
        Some(claim) => {
            handle.finish_cleanup(&lease.id, claim).await;
            handle.lock().leases.get(lease_id).cloned().unwrap_or(lease)
        }
        None => lease,
    };
    ok(
        StatusCode::OK,
        json!({ "canceledCreate": canceled, "lease": lease.to_json() }),
    )
}

/// `expectedProvider` of a heartbeat or release (`fleet.ts`
/// `mutationExpectedProviderError`).
fn expected_provider_error(input: &Value, lease: &Lease) -> Option<Response> {
    let value = input.get("expectedProvider")?;
    let Some(expected) = value.as_str().filter(|p| {
        p.len() >= 2
            && p.len() <= 64
            && p.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    }) else {
        return Some(error(
            StatusCode::BAD_REQUEST,
            "invalid_expected_provider",
            Some("expectedProvider must be a nonempty normalized provider"),
        ));
    };
    let canonical = |p: &str| match p {
        "google" | "google-cloud" => "gcp".to_owned(),
        other => other.to_owned(),
    };
    (canonical(expected) != canonical(&lease.provider)).then(|| {
        error(
            StatusCode::CONFLICT,
            "provider_identity_mismatch",
            Some("expectedProvider does not match the lease provider"),
        )
    })
}

/// `POST /v1/leases/{id}/heartbeat` (`fleet.ts` `heartbeatLease`).
fn heartbeat(handle: &CoordinatorHandle, who: &Identity, id: &str, input: &Value) -> Response {
    let mut inner = handle.lock();
    let Some(found) = resolve(&inner, id, who).map(|l| l.id.clone()) else {
        return not_found();
    };
    let lease = inner.leases.get_mut(&found).expect("resolved");
    if let Some(answer) = expected_provider_error(input, lease) {
        return answer;
    }
    if lease.cleanup_started_at.is_some() {
        return error(
            StatusCode::CONFLICT,
            "cleanup_in_progress",
            Some("lease cleanup has already started"),
        );
    }
    let now = SystemTime::now();
    if !lease.state.live() {
        return error(
            StatusCode::CONFLICT,
            "lease_ended",
            Some("lease has already ended"),
        );
    }
    if lease.expires_at <= now {
        return error(
            StatusCode::CONFLICT,
            "lease_expired",
            Some("lease heartbeat deadline has passed"),
        );
    }
    if let Some(n) = input.get("idleTimeoutSeconds").and_then(Value::as_f64)
        && n.is_finite()
        && n > 0.0
    {
        lease.idle_timeout_seconds = (n.trunc() as u64).min(86_400);
    }
    lease.updated_at = now;
    lease.last_touched_at = now;
    lease.recompute_expiry();
    lease_answer(StatusCode::OK, lease)
}

/// `POST /v1/leases/{id}/release` (`fleet.ts` `releaseLease`): `delete`
/// defaults to `!keep`; the machine is deleted in the background.
fn release(handle: &CoordinatorHandle, who: &Identity, id: &str, input: &Value) -> Response {
    let mut inner = handle.lock();
    let Some(found) = resolve(&inner, id, who).map(|l| l.id.clone()) else {
        return not_found();
    };
    let lease = inner.leases.get_mut(&found).expect("resolved");
    if let Some(answer) = expected_provider_error(input, lease) {
        return answer;
    }
    let delete = input
        .get("delete")
        .and_then(Value::as_bool)
        .unwrap_or(!lease.keep);
    if lease.cleanup_started_at.is_some() {
        if !delete {
            return ok(
                StatusCode::CONFLICT,
                json!({
                    "error": "cleanup_in_progress",
                    "message": "lease cleanup has already started",
                    "lease": lease.to_json(),
                }),
            );
        }
        return lease_answer(StatusCode::OK, lease);
    }
    if !lease.state.live() {
        return lease_answer(StatusCode::OK, lease);
    }
    let has_machine = !lease.cloud_id.is_empty();
    lease.finalize_release(delete);
    let claim = SystemTime::now();
    if delete && has_machine {
        lease.cleanup_started_at = Some(claim);
    }
    let answer = lease_answer(StatusCode::OK, lease);
    let spawn = delete && has_machine;
    drop(inner);
    if spawn {
        handle.spawn_release_cleanup(found, claim);
    }
    answer
}

/// The worker's alarm: expires live leases past `expiresAt` (while
/// `expire_idle` is on).
async fn expiry_ticker(handle: CoordinatorHandle) {
    loop {
        tokio::time::sleep(EXPIRY_TICK).await;
        let claims: Vec<(String, SystemTime)> = {
            let mut inner = handle.lock();
            let expire = inner.config.expire_idle;
            let now = SystemTime::now();
            let mut claims = Vec::new();
            for lease in inner.leases.values_mut() {
                if lease.cleanup_started_at.is_some()
                    || lease.cleanup_retry_at.is_some_and(|at| at > now)
                {
                    continue;
                }
                let retry = lease.cleanup_error.is_some();
                let expired = expire && lease.state.live() && lease.expires_at <= now;
                if !retry && !expired {
                    continue;
                }
                if expired && lease.state == LeaseState::Provisioning && lease.cloud_id.is_empty() {
                    lease.state = LeaseState::Failed;
                    lease.updated_at = now;
                    lease.ended_at = Some(now);
                    lease.failure_error =
                        Some("lease expired before provider returned a cloud resource".to_owned());
                    continue;
                }
                lease.cleanup_started_at = Some(now);
                lease.updated_at = now;
                claims.push((lease.id.clone(), now));
            }
            claims
        };
        for (id, claim) in claims {
            let handle = handle.clone();
            tokio::spawn(async move { handle.finish_cleanup(&id, claim).await });
        }
    }
}

// ---- names and time ----

/// `slug.ts` `normalizeLeaseSlug` (also `normalizePondName`).
fn normalize_slug(value: &str) -> String {
    let mut out = String::new();
    let mut last_dash = false;
    for c in value.trim().to_lowercase().chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
            last_dash = false;
        } else if !last_dash {
            out.push('-');
            last_dash = true;
        }
    }
    out.trim_matches('-').to_owned()
}

/// `slug.ts` `slugHash`: FNV-1a over the UTF-16 code units.
fn slug_hash(value: &str) -> u32 {
    value.encode_utf16().fold(0x811c_9dc5_u32, |hash, unit| {
        (hash ^ u32::from(unit)).wrapping_mul(0x0100_0193)
    })
}

/// `slug.ts` `leaseSlugFromID`.
fn slug_from_id(lease_id: &str) -> String {
    const ADJECTIVES: [&str; 14] = [
        "amber", "blue", "brisk", "coral", "crimson", "golden", "harbor", "jade", "pearl", "quick",
        "silver", "swift", "tidal", "violet",
    ];
    const NOUNS: [&str; 8] = [
        "barnacle", "crab", "crayfish", "hermit", "krill", "lobster", "prawn", "shrimp",
    ];
    let hash = slug_hash(lease_id) as usize;
    format!(
        "{}-{}",
        ADJECTIVES[hash % ADJECTIVES.len()],
        NOUNS[(hash / ADJECTIVES.len()) % NOUNS.len()]
    )
}

/// `fleet.ts` `allocateLeaseSlug`: a slug no other live lease of the same
/// owner holds, with a collision suffix when needed.
fn allocate_slug(inner: &Inner, who: &Identity, requested: &str, lease_id: &str) -> String {
    let now = SystemTime::now();
    let taken = |slug: &str| {
        inner.leases.values().any(|l| {
            l.state.live()
                && l.expires_at > now
                && l.owner == who.owner
                && l.org == who.org
                && normalize_slug(&l.slug) == slug
        })
    };
    let mut slug = match normalize_slug(requested) {
        s if s.is_empty() => slug_from_id(lease_id),
        s => s,
    };
    for attempt in 0..20 {
        if !taken(&slug) {
            return slug;
        }
        // `slug.ts` `slugWithCollisionSuffix`.
        let seed = format!("{lease_id}-{attempt}");
        let base = match normalize_slug(requested) {
            s if s.is_empty() => slug_from_id(&seed),
            s if s.len() > MAX_SLUG => s[..MAX_SLUG].trim_matches('-').to_owned(),
            s => s,
        };
        slug = format!("{base}-{:04x}", slug_hash(&seed) & 0xffff);
    }
    slug
}

/// `slug.ts` `leaseProviderName`.
fn provider_name(lease_id: &str, slug: &str) -> String {
    let normalized = normalize_slug(slug);
    if normalized.is_empty() {
        format!("crabbox-{lease_id}").replace('_', "-")
    } else {
        format!("crabbox-{normalized}-{:08x}", slug_hash(lease_id))
    }
}

/// `prefix` and `hex_len` random lowercase hex digits.
pub fn new_id(prefix: &str, hex_len: usize) -> String {
    let mut bytes = vec![0_u8; hex_len.div_ceil(2)];
    getrandom::fill(&mut bytes).expect("random bytes");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}{}", &hex[..hex_len])
}

/// JavaScript's `Date.toISOString()`: milliseconds, `Z`.
fn iso(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

fn unix(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    //! The fake's own behaviour, over real HTTP. Facts pinned here cite the
    //! worker source they come from (openclaw/crabbox 0bba5f7, `worker/src`).

    use super::super::fake_hetzner::{self, FakeConfig, FakeHetzner};
    use super::*;

    /// A coordinator in front of a fake Hetzner that appends uploaded keys
    /// to `authorized_keys`.
    struct World {
        hetzner: FakeHetzner,
        coordinator: FakeCoordinator,
        client: reqwest::Client,
        dir: tempfile::TempDir,
    }

    async fn world(tune: impl FnOnce(&mut CoordinatorConfig)) -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let hetzner = fake_hetzner::start(FakeConfig {
            boot_delay: Duration::from_millis(60),
            authorized_keys: Some(dir.path().join("authorized_keys")),
            ..FakeConfig::default()
        })
        .await;
        let mut config = CoordinatorConfig {
            hetzner_url: hetzner.base_url.clone(),
            ssh_host_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKeyOfTheTestSshd".to_owned(),
            ..CoordinatorConfig::default()
        };
        tune(&mut config);
        let coordinator = start(config).await;
        World {
            hetzner,
            coordinator,
            client: reqwest::Client::new(),
            dir,
        }
    }

    impl World {
        async fn call_as(
            &self,
            token: &str,
            method: Method,
            path: &str,
            body: Option<&Value>,
        ) -> (u16, Value) {
            let mut request = self
                .client
                .request(method, format!("{}{path}", self.coordinator.base_url))
                .bearer_auth(token);
            if let Some(body) = body {
                request = request.json(body);
            }
            let answer = request.send().await.expect("the fake answers");
            let status = answer.status().as_u16();
            let text = answer.text().await.expect("a body");
            let body = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}"));
            (status, body)
        }

        async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> (u16, Value) {
            self.call_as(TOKEN, method, path, body).await
        }

        fn key(&self, name: &str) -> String {
            let path = self.dir.path().join(name);
            let out = std::process::Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
                .arg(&path)
                .output()
                .expect("ssh-keygen runs (openssh-client)");
            assert!(out.status.success(), "ssh-keygen: {out:?}");
            std::fs::read_to_string(path.with_extension("pub"))
                .expect("public key")
                .trim()
                .to_owned()
        }

        /// `POST /v1/leases` with `body`, answered in a task of its own,
        /// so the test can act while the create provisions.
        fn create_in_background(&self, body: &Value) -> tokio::task::JoinHandle<(u16, Value)> {
            let client = self.client.clone();
            let url = format!("{}/v1/leases", self.coordinator.base_url);
            let body = body.clone();
            tokio::spawn(async move {
                let answer = client
                    .post(url)
                    .bearer_auth(TOKEN)
                    .json(&body)
                    .send()
                    .await
                    .expect("post");
                (
                    answer.status().as_u16(),
                    answer.json::<Value>().await.expect("JSON"),
                )
            })
        }

        /// Polls the fake's own view of a lease until `done` holds.
        async fn wait_for(&self, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                let lease = self.coordinator.handle.lease(id).unwrap_or(Value::Null);
                if !lease.is_null() && done(&lease) {
                    return lease;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{what}: lease is still {lease:#}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    fn create_body(lease: &str, attempt: &str, key: &str) -> Value {
        json!({
            "leaseID": lease,
            "createAttemptID": attempt,
            "slug": "Web Server",
            "pond": "alpha",
            "exposedPorts": ["8080", "3000"],
            "provider": "hetzner",
            "class": "tiny",
            "sshPublicKey": key,
            "ttlSeconds": 3600,
            "idleTimeoutSeconds": 600,
        })
    }

    fn ids() -> (String, String) {
        (new_id("cbx_", 12), new_id("cat_", 32))
    }

    #[tokio::test]
    async fn health_is_open_whoami_names_the_token_and_other_tokens_get_401() {
        let w = world(|_| {}).await;
        let health = w
            .client
            .get(format!("{}/v1/health", w.coordinator.base_url))
            .send()
            .await
            .expect("health");
        assert_eq!(health.status(), 200);
        // coordinator-entry.ts: answered before authentication.
        assert_eq!(
            health.json::<Value>().await.expect("JSON"),
            json!({ "ok": true, "service": "crabbox-coordinator" })
        );
        // fleet.ts `whoami`; the shared token's owner wins over the header
        // (auth.ts `authenticateRequest`).
        let whoami = w
            .client
            .get(format!("{}/v1/whoami", w.coordinator.base_url))
            .bearer_auth(TOKEN)
            .header("x-crabbox-owner", "mallory@example.test")
            .send()
            .await
            .expect("whoami");
        assert_eq!(
            whoami.json::<Value>().await.expect("JSON"),
            json!({ "owner": "ci@example.test", "org": "crabbox-ci", "auth": "bearer", "admin": false })
        );
        for token in [None, Some("wrong")] {
            let mut request = w
                .client
                .get(format!("{}/v1/leases", w.coordinator.base_url));
            if let Some(t) = token {
                request = request.bearer_auth(t);
            }
            let answer = request.send().await.expect("leases");
            assert_eq!(answer.status(), 401);
            assert_eq!(
                answer.json::<Value>().await.expect("JSON"),
                json!({ "error": "unauthorized" })
            );
        }
        let (status, body) = w.call(Method::GET, "/v1/nowhere", None).await;
        assert_eq!((status, body), (404, json!({ "error": "not_found" })));
    }

    #[tokio::test]
    async fn a_create_lands_a_labelled_server_and_repeats_by_attempt_id() {
        let w = world(|_| {}).await;
        let key = w.key("lease");
        let (lease_id, attempt) = ids();
        let body = create_body(&lease_id, &attempt, &key);
        let (status, created) = w.call(Method::POST, "/v1/leases", Some(&body)).await;
        assert_eq!(status, 201, "{created:#}");
        let lease = &created["lease"];
        assert_eq!(lease["id"], lease_id.as_str());
        assert_eq!(lease["state"], "active");
        assert_eq!(lease["slug"], "web-server");
        assert_eq!(lease["pond"], "alpha");
        assert_eq!(lease["exposedPorts"], json!(["3000", "8080"]));
        assert_eq!(lease["owner"], "ci@example.test");
        assert_eq!(lease["org"], "crabbox-ci");
        assert_eq!(lease["serverType"], "ccx13");
        assert_eq!(lease["host"], "127.0.0.1");
        // types.ts LeaseRecord: sshPort is a string, fallbacks strings.
        assert_eq!(lease["sshPort"], "2222");
        assert_eq!(lease["sshFallbackPorts"], json!(["22"]));
        assert_eq!(lease["sshUser"], "crabbox");
        assert_eq!(lease["workRoot"], "/work/crabbox");
        assert!(
            lease["sshHostKey"]
                .as_str()
                .is_some_and(|k| k.starts_with("ssh-ed25519 "))
        );
        assert_eq!(lease["idleTimeoutSeconds"], 600);
        assert!(
            lease.get("createAttemptID").is_none(),
            "publicLeaseRecord drops it"
        );
        let server_id = lease["serverID"].as_u64().expect("serverID");
        assert_eq!(lease["cloudID"], server_id.to_string());

        let server = w
            .hetzner
            .handle
            .server(server_id)
            .expect("the server exists");
        assert_eq!(server["status"], "running");
        assert_eq!(lease["serverName"], server["name"]);
        assert!(
            server["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("crabbox-web-server-")),
            "slug.ts leaseProviderName: {}",
            server["name"]
        );
        // provider-labels.ts leaseProviderLabels.
        let labels = &server["labels"];
        for (k, v) in [
            ("crabbox", "true"),
            ("created_by", "crabbox"),
            ("lease", lease_id.as_str()),
            ("slug", "web-server"),
            ("owner", "ci_example.test"),
            ("pond", "alpha"),
            ("state", "leased"),
            ("provider", "hetzner"),
            ("crabbox_exposed_ports", "3000-8080"),
            ("ttl_secs", "3600"),
            ("idle_timeout_secs", "600"),
        ] {
            assert_eq!(labels[k], v, "label {k}: {labels:#}");
        }
        assert!(
            labels["expires_at"]
                .as_str()
                .is_some_and(|t| t.parse::<u64>().is_ok())
        );
        let keys = w.hetzner.handle.ssh_keys();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0]["public_key"], key.as_str());
        let authorized =
            std::fs::read_to_string(w.dir.path().join("authorized_keys")).expect("authorized");
        assert!(authorized.contains(&key), "the lease's key is authorized");

        // fleet.ts `replayCreateAttempt`: the same attempt → 200, same lease.
        let (status, again) = w.call(Method::POST, "/v1/leases", Some(&body)).await;
        assert_eq!(status, 200);
        assert_eq!(again["lease"]["id"], lease_id.as_str());
        assert_eq!(w.hetzner.handle.servers().len(), 1, "no second server");
        // Another attempt on the same lease ID.
        let mut other = body.clone();
        other["createAttemptID"] = json!(new_id("cat_", 32));
        let (status, conflict) = w.call(Method::POST, "/v1/leases", Some(&other)).await;
        assert_eq!(status, 409);
        assert_eq!(conflict["error"], "create_attempt_conflict");
        // A second lease of the same slug gets a collision suffix.
        let (lease2, attempt2) = ids();
        let (status, second) = w
            .call(
                Method::POST,
                "/v1/leases",
                Some(&create_body(&lease2, &attempt2, &w.key("second"))),
            )
            .await;
        assert_eq!(status, 201);
        let slug2 = second["lease"]["slug"].as_str().expect("slug");
        assert!(slug2.starts_with("web-server-") && slug2.len() == "web-server-".len() + 4);
    }

    #[tokio::test]
    async fn bad_creates_get_the_workers_statuses_and_bodies() {
        let w = world(|_| {}).await;
        let key = w.key("lease");
        let (lease_id, attempt) = ids();
        let base = create_body(&lease_id, &attempt, &key);
        let cases: Vec<(Value, u16, Value)> = vec![
            (
                json!({ "createAttemptID": "cat_nothex" }),
                400,
                json!({ "error": "invalid_create_attempt_id" }),
            ),
            (
                json!({ "leaseID": "cbx_SHORT" }),
                400,
                json!({ "error": "invalid_lease_id" }),
            ),
            (
                json!({ "slug": "!!!" }),
                400,
                json!({ "error": "invalid_slug", "message": "slug must contain at least one letter or digit" }),
            ),
            (
                json!({ "slug": "a".repeat(42) }),
                400,
                json!({ "error": "invalid_slug", "message": "slug must be 41 characters or fewer after normalization" }),
            ),
            (
                json!({ "sshPublicKey": "" }),
                500,
                json!({ "error": "sshPublicKey is required" }),
            ),
            (
                json!({ "provider": "nope" }),
                500,
                json!({ "error": "unsupported provider: nope" }),
            ),
            (
                json!({ "exposedPorts": ["8080,+22"] }),
                500,
                json!({ "error": "exposedPorts value +22 must be a TCP port in 1..65535" }),
            ),
            (
                json!({ "exposedPorts": [" "] }),
                500,
                json!({ "error": "exposedPorts values must not be empty" }),
            ),
        ];
        for (patch, status, expected) in cases {
            let mut body = base.clone();
            for (k, v) in patch.as_object().expect("object") {
                body[k] = v.clone();
            }
            let (got, answer) = w.call(Method::POST, "/v1/leases", Some(&body)).await;
            assert_eq!((got, &answer), (status, &expected), "{patch}");
        }
        // A known provider the coordinator has no credentials for.
        let mut aws = base.clone();
        aws["provider"] = json!("aws");
        let (status, answer) = w.call(Method::POST, "/v1/leases", Some(&aws)).await;
        assert_eq!(status, 424);
        assert_eq!(answer["error"], "provider_not_configured");
        assert_eq!(answer["provider"], "aws");
        // Invalid JSON: the worker's catch-all 500 `{"error": message}`.
        let raw = w
            .client
            .post(format!("{}/v1/leases", w.coordinator.base_url))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .expect("post");
        assert_eq!(raw.status(), 500);
        assert!(raw.json::<Value>().await.expect("JSON")["error"].is_string());
        assert!(w.hetzner.handle.servers().is_empty());
        assert!(w.coordinator.handle.leases().is_empty());
    }

    #[tokio::test]
    async fn a_create_canceled_before_it_arrives_is_refused_and_the_id_freed() {
        let w = world(|_| {}).await;
        let key = w.key("lease");
        let (lease_id, attempt) = ids();
        let path = format!("/v1/leases/{lease_id}/cancel-create");
        let (status, answer) = w
            .call(
                Method::POST,
                &path,
                Some(&json!({ "createAttemptID": attempt })),
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(
            answer,
            json!({ "canceledCreate": {
                "version": 1, "requestedLeaseID": lease_id, "createAttemptID": attempt, "state": "canceled",
            } })
        );
        // Canceling twice is the same answer.
        let (status, _) = w
            .call(
                Method::POST,
                &path,
                Some(&json!({ "createAttemptID": attempt })),
            )
            .await;
        assert_eq!(status, 200);
        let body = create_body(&lease_id, &attempt, &key);
        let (status, refused) = w.call(Method::POST, "/v1/leases", Some(&body)).await;
        assert_eq!(status, 409);
        assert_eq!(refused["error"], "create_canceled");
        assert!(w.hetzner.handle.servers().is_empty());
        // fleet.ts `unboundCanceledCreateAttempt`: a fresh attempt may use
        // the ID; the old attempt stays canceled.
        let mut fresh = body.clone();
        fresh["createAttemptID"] = json!(new_id("cat_", 32));
        let (status, _) = w.call(Method::POST, "/v1/leases", Some(&fresh)).await;
        assert_eq!(status, 201);
        let (status, refused) = w.call(Method::POST, "/v1/leases", Some(&body)).await;
        assert_eq!(
            (status, refused["error"].as_str()),
            (409, Some("create_canceled"))
        );
        let (status, bad) = w
            .call(
                Method::POST,
                &path,
                Some(&json!({ "createAttemptID": "x" })),
            )
            .await;
        assert_eq!(
            (status, bad),
            (400, json!({ "error": "invalid_create_attempt_id" }))
        );
    }

    #[tokio::test]
    async fn a_create_canceled_while_it_provisions_leaves_no_server() {
        let w = world(|_| {}).await;
        w.coordinator
            .handle
            .set_provision_delay(Duration::from_millis(600));
        let key = w.key("lease");
        let (lease_id, attempt) = ids();
        let body = create_body(&lease_id, &attempt, &key);
        let post = w.create_in_background(&body);
        w.wait_for(&lease_id, "created", |l| l["state"] == "provisioning")
            .await;
        // The same attempt while provisioning: 200 with the current lease.
        let (status, again) = w.call(Method::POST, "/v1/leases", Some(&body)).await;
        assert_eq!(
            (status, again["lease"]["state"].as_str()),
            (200, Some("provisioning"))
        );
        let (status, canceled) = w
            .call(
                Method::POST,
                &format!("/v1/leases/{lease_id}/cancel-create"),
                Some(&json!({ "createAttemptID": attempt })),
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(canceled["canceledCreate"]["state"], "canceled");
        assert_eq!(canceled["lease"]["state"], "released");
        let (status, answer) = post.await.expect("the create ends");
        assert_eq!(status, 409, "{answer:#}");
        assert_eq!(answer["error"], "lease_state_changed");
        assert!(
            w.hetzner.handle.servers().is_empty(),
            "the server made meanwhile is deleted"
        );
        assert!(w.hetzner.handle.ssh_keys().is_empty());
    }

    #[tokio::test]
    async fn listings_are_the_callers_newest_first_filtered_and_limited() {
        let w = world(|_| {}).await;
        w.coordinator
            .handle
            .add_token("other-token", "other@example.test", "crabbox-ci");
        let key = w.key("lease");
        let mut mine = Vec::new();
        for pond in ["alpha", "alpha", "beta"] {
            let (lease_id, attempt) = ids();
            let mut body = create_body(&lease_id, &attempt, &key);
            body["pond"] = json!(pond);
            body["slug"] = json!(format!("m-{}", mine.len()));
            let (status, _) = w.call(Method::POST, "/v1/leases", Some(&body)).await;
            assert_eq!(status, 201);
            mine.push(lease_id);
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        let (status, list) = w.call(Method::GET, "/v1/leases", None).await;
        assert_eq!(status, 200);
        let listed: Vec<&str> = list["leases"]
            .as_array()
            .expect("leases")
            .iter()
            .filter_map(|l| l["id"].as_str())
            .collect();
        let newest_first: Vec<&str> = mine.iter().rev().map(String::as_str).collect();
        assert_eq!(listed, newest_first);
        let (_, limited) = w.call(Method::GET, "/v1/leases?limit=2", None).await;
        assert_eq!(limited["leases"].as_array().map(Vec::len), Some(2));
        let (_, none) = w.call(Method::GET, "/v1/leases?provider=aws", None).await;
        assert_eq!(none["leases"], json!([]));
        let (_, active) = w
            .call(Method::GET, "/v1/leases?state=active&limit=0", None)
            .await;
        assert_eq!(
            active["leases"].as_array().map(Vec::len),
            Some(3),
            "limit 0 → 100"
        );

        // Another owner's lease: not listed, not readable, not mine to touch.
        let (other_id, other_attempt) = ids();
        let (status, _) = w
            .call_as(
                "other-token",
                Method::POST,
                "/v1/leases",
                Some(&create_body(&other_id, &other_attempt, &key)),
            )
            .await;
        assert_eq!(status, 201);
        let (_, list) = w.call(Method::GET, "/v1/leases", None).await;
        assert_eq!(list["leases"].as_array().map(Vec::len), Some(3));
        let (_, theirs) = w
            .call_as("other-token", Method::GET, "/v1/leases", None)
            .await;
        assert_eq!(theirs["leases"][0]["id"], other_id.as_str());
        assert_eq!(theirs["leases"].as_array().map(Vec::len), Some(1));
        for path in [
            format!("/v1/leases/{other_id}"),
            format!("/v1/leases/{}", mine[0]),
        ] {
            let (status, body) = w.call_as("other-token", Method::GET, &path, None).await;
            if path.ends_with(&other_id) {
                assert_eq!(status, 200);
            } else {
                assert_eq!((status, body), (404, json!({ "error": "not_found" })));
            }
        }
        let (status, _) = w
            .call(
                Method::POST,
                &format!("/v1/leases/{other_id}/heartbeat"),
                Some(&json!({})),
            )
            .await;
        assert_eq!(status, 404);
        // By slug.
        let (status, by_slug) = w.call(Method::GET, "/v1/leases/m-1", None).await;
        assert_eq!(
            (status, by_slug["lease"]["id"].as_str()),
            (200, Some(mine[1].as_str()))
        );
        // fleet.ts `filterLeasesForRequest`: the limit is taken before other
        // owners' leases are dropped, and there is no cursor.
        let (_, cut) = w.call(Method::GET, "/v1/leases?limit=1", None).await;
        assert_eq!(
            cut["leases"],
            json!([]),
            "the newest lease is the other owner's"
        );
    }

    #[tokio::test]
    async fn heartbeats_extend_the_lease_and_refuse_what_cannot_be_kept() {
        let w = world(|_| {}).await;
        let key = w.key("lease");
        let (lease_id, attempt) = ids();
        let mut body = create_body(&lease_id, &attempt, &key);
        body["idleTimeoutSeconds"] = json!(5);
        let (_, created) = w.call(Method::POST, "/v1/leases", Some(&body)).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let path = format!("/v1/leases/{lease_id}/heartbeat");
        let (status, beat) = w
            .call(
                Method::POST,
                &path,
                Some(&json!({ "expectedProvider": "hetzner" })),
            )
            .await;
        assert_eq!(status, 200, "{beat:#}");
        let before = &created["lease"];
        let after = &beat["lease"];
        assert!(after["lastTouchedAt"].as_str() > before["lastTouchedAt"].as_str());
        assert!(after["expiresAt"].as_str() > before["expiresAt"].as_str());
        let (_, longer) = w
            .call(
                Method::POST,
                &path,
                Some(&json!({ "idleTimeoutSeconds": 900 })),
            )
            .await;
        assert_eq!(longer["lease"]["idleTimeoutSeconds"], 900);
        // optionalJson: without a JSON Content-Type the body is ignored.
        let ignored = w
            .client
            .post(format!("{}{path}", w.coordinator.base_url))
            .bearer_auth(TOKEN)
            .body(r#"{"idleTimeoutSeconds": 7}"#)
            .send()
            .await
            .expect("heartbeat");
        assert_eq!(ignored.status(), 200);
        assert_eq!(
            ignored.json::<Value>().await.expect("JSON")["lease"]["idleTimeoutSeconds"],
            900
        );

        let (status, mismatch) = w
            .call(
                Method::POST,
                &path,
                Some(&json!({ "expectedProvider": "aws" })),
            )
            .await;
        assert_eq!(
            (status, mismatch["error"].as_str()),
            (409, Some("provider_identity_mismatch"))
        );
        let (status, invalid) = w
            .call(
                Method::POST,
                &path,
                Some(&json!({ "expectedProvider": "Hetzner!" })),
            )
            .await;
        assert_eq!(
            (status, invalid["error"].as_str()),
            (400, Some("invalid_expected_provider"))
        );
        let (status, _) = w
            .call(
                Method::POST,
                "/v1/leases/cbx_000000000000/heartbeat",
                Some(&json!({})),
            )
            .await;
        assert_eq!(status, 404);

        let release = format!("/v1/leases/{lease_id}/release");
        let (status, _) = w
            .call(Method::POST, &release, Some(&json!({ "delete": true })))
            .await;
        assert_eq!(status, 200);
        let (status, during) = w.call(Method::POST, &path, Some(&json!({}))).await;
        assert_eq!(
            (status, during["error"].as_str()),
            (409, Some("cleanup_in_progress"))
        );
        w.wait_for(&lease_id, "cleaned up", |l| {
            l.get("cleanupStartedAt").is_none()
        })
        .await;
        let (status, ended) = w.call(Method::POST, &path, Some(&json!({}))).await;
        assert_eq!(
            (status, ended),
            (
                409,
                json!({ "error": "lease_ended", "message": "lease has already ended" })
            )
        );
    }

    #[tokio::test]
    async fn a_lease_left_idle_expires_and_loses_its_server_unless_expiry_is_off() {
        let w = world(|c| c.expire_idle = false).await;
        let key = w.key("lease");
        let (lease_id, attempt) = ids();
        let mut body = create_body(&lease_id, &attempt, &key);
        body["idleTimeoutSeconds"] = json!(1);
        let (status, created) = w.call(Method::POST, "/v1/leases", Some(&body)).await;
        assert_eq!(status, 201);
        let server_id = created["lease"]["serverID"].as_u64().expect("server");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // Expiry off: still active, the server still there; a heartbeat is
        // too late all the same (fleet.ts `leaseHeartbeatStateError`).
        assert_eq!(
            w.coordinator.handle.lease(&lease_id).expect("lease")["state"],
            "active"
        );
        assert!(w.hetzner.handle.server(server_id).is_some());
        let (status, late) = w
            .call(
                Method::POST,
                &format!("/v1/leases/{lease_id}/heartbeat"),
                Some(&json!({})),
            )
            .await;
        assert_eq!(
            (status, late["error"].as_str()),
            (409, Some("lease_expired"))
        );

        w.coordinator.handle.set_expire_idle(true);
        let expired = w
            .wait_for(&lease_id, "expired", |l| l["state"] == "expired")
            .await;
        assert!(expired.get("cleanupStartedAt").is_none());
        assert!(expired["endedAt"].is_string());
        assert!(
            w.hetzner.handle.server(server_id).is_none(),
            "the server is deleted"
        );
        assert!(w.hetzner.handle.ssh_keys().is_empty(), "and its key");
    }

    #[tokio::test]
    async fn release_answers_at_once_and_cleans_up_in_the_background() {
        let w = world(|_| {}).await;
        w.coordinator
            .handle
            .set_cleanup_delay(Duration::from_millis(400));
        let key = w.key("lease");
        let (lease_id, attempt) = ids();
        let (_, created) = w
            .call(
                Method::POST,
                "/v1/leases",
                Some(&create_body(&lease_id, &attempt, &key)),
            )
            .await;
        let server_id = created["lease"]["serverID"].as_u64().expect("server");
        let path = format!("/v1/leases/{lease_id}/release");
        let body = json!({ "delete": true, "expectedProvider": "hetzner" });
        let (status, released) = w.call(Method::POST, &path, Some(&body)).await;
        assert_eq!(status, 200);
        assert_eq!(released["lease"]["state"], "released");
        assert!(released["lease"]["cleanupStartedAt"].is_string());
        assert!(released["lease"]["releasedAt"].is_string());
        assert!(
            w.hetzner.handle.server(server_id).is_some(),
            "deleted later, not yet"
        );
        // A second release while cleaning up: 200 (delete) or 409 (keep).
        let (status, _) = w.call(Method::POST, &path, Some(&body)).await;
        assert_eq!(status, 200);
        let (status, keep) = w
            .call(Method::POST, &path, Some(&json!({ "delete": false })))
            .await;
        assert_eq!(
            (status, keep["error"].as_str()),
            (409, Some("cleanup_in_progress"))
        );
        let done = w
            .wait_for(&lease_id, "cleaned up", |l| {
                l.get("cleanupStartedAt").is_none()
            })
            .await;
        assert_eq!(done["state"], "released");
        assert!(w.hetzner.handle.server(server_id).is_none());
        assert!(w.hetzner.handle.ssh_keys().is_empty());
        let (status, again) = w.call(Method::POST, &path, Some(&body)).await;
        assert_eq!(
            (status, again["lease"]["state"].as_str()),
            (200, Some("released"))
        );

        // Released without delete: the server stays.
        let (kept_id, kept_attempt) = ids();
        let (_, kept) = w
            .call(
                Method::POST,
                "/v1/leases",
                Some(&create_body(&kept_id, &kept_attempt, &key)),
            )
            .await;
        let kept_server = kept["lease"]["serverID"].as_u64().expect("server");
        let (status, answer) = w
            .call(
                Method::POST,
                &format!("/v1/leases/{kept_id}/release"),
                Some(&json!({ "delete": false })),
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(answer["lease"]["releaseDeletesServer"], false);
        assert!(answer["lease"].get("cleanupStartedAt").is_none());
        assert!(w.hetzner.handle.server(kept_server).is_some());
    }

    #[tokio::test]
    async fn a_fixed_id_create_repeats_and_refuses_a_different_intent() {
        let w = world(|_| {}).await;
        let key = w.key("lease");
        let (lease_id, _) = ids();
        let path = format!("/v1/leases/{lease_id}");
        let body = json!({ "slug": "fixed", "sshPublicKey": key, "class": "tiny" });
        let (status, created) = w.call(Method::PUT, &path, Some(&body)).await;
        assert_eq!(
            (status, created["lease"]["id"].as_str()),
            (201, Some(lease_id.as_str()))
        );
        let (status, _) = w.call(Method::PUT, &path, Some(&body)).await;
        assert_eq!(status, 200);
        let mut other = body.clone();
        other["class"] = json!("small");
        let (status, conflict) = w.call(Method::PUT, &path, Some(&other)).await;
        assert_eq!(
            (status, conflict["error"].as_str()),
            (409, Some("lease_id_conflict"))
        );
        let mut attempt = body.clone();
        attempt["createAttemptID"] = json!(new_id("cat_", 32));
        let (status, refused) = w.call(Method::PUT, &path, Some(&attempt)).await;
        assert_eq!(
            (status, refused),
            (400, json!({ "error": "create_attempt_not_allowed" }))
        );
    }

    #[tokio::test]
    async fn injected_faults_answer_in_the_coordinators_shape() {
        let w = world(|_| {}).await;
        let handle = &w.coordinator.handle;
        handle.fail_next_with_500(1, "hetzner POST /servers: http 500: boom");
        handle.fail_next_with_429(1, Some(3));
        handle.fail_next_with_503(1);
        handle.fail_next(1, 502, "bad_gateway");
        handle.fail_next_on(Route::new("GET", "/v1/whoami"), 1, 504, "timeout");
        let (status, body) = w.call(Method::GET, "/v1/whoami", None).await;
        assert_eq!(
            (status, body),
            (
                500,
                json!({ "error": "hetzner POST /servers: http 500: boom" })
            )
        );
        let limited = w
            .client
            .get(format!("{}/v1/whoami", w.coordinator.base_url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("whoami");
        assert_eq!(limited.status(), 429);
        assert_eq!(limited.headers()["retry-after"], "3");
        let (status, _) = w.call(Method::GET, "/v1/whoami", None).await;
        assert_eq!(status, 503);
        let (status, body) = w.call(Method::GET, "/v1/whoami", None).await;
        assert_eq!((status, body), (502, json!({ "error": "bad_gateway" })));
        let (status, _) = w.call(Method::GET, "/v1/whoami", None).await;
        assert_eq!(status, 504);
        let (status, _) = w.call(Method::GET, "/v1/whoami", None).await;
        assert_eq!(status, 200);

        handle.set_route_down("GET", "/v1/leases", true);
        assert_eq!(w.call(Method::GET, "/v1/leases", None).await.0, 503);
        handle.set_route_down("GET", "/v1/leases", false);
        assert_eq!(w.call(Method::GET, "/v1/leases", None).await.0, 200);

        handle.set_latency(Duration::from_millis(50));
        handle.set_route_latency("GET", "/v1/whoami", Duration::from_millis(100));
        let started = std::time::Instant::now();
        assert_eq!(w.call(Method::GET, "/v1/whoami", None).await.0, 200);
        assert!(started.elapsed() >= Duration::from_millis(150));
        handle.set_latency(Duration::ZERO);

        handle.set_rate_limit(Some((0.5, 1)));
        assert_eq!(w.call(Method::GET, "/v1/leases", None).await.0, 200);
        assert_eq!(w.call(Method::GET, "/v1/leases", None).await.0, 429);
        handle.set_rate_limit(None);
        handle.set_storm(Some((1.0, 7)));
        let (status, _) = w.call(Method::GET, "/v1/leases", None).await;
        assert!(status == 429 || status == 503);
        handle.set_storm(None);
        handle.set_max_in_flight(Some(1));
        assert_eq!(w.call(Method::GET, "/v1/leases", None).await.0, 200);
        handle.set_max_in_flight(None);
        assert!(handle.count("GET", "/v1/whoami") >= 7);
        assert!(handle.requests().iter().all(|r| !r.path.is_empty()));
        handle.clear_requests();
        assert!(handle.requests().is_empty());
    }

    #[tokio::test]
    async fn a_create_answered_never_or_lost_still_made_its_lease() {
        let w = world(|_| {}).await;
        let key = w.key("lease");
        let handle = &w.coordinator.handle;
        handle.hang_after_processing(Route::new("POST", "/v1/leases"), 1);
        let (lease_id, attempt) = ids();
        let body = create_body(&lease_id, &attempt, &key);
        let hung = w
            .client
            .post(format!("{}/v1/leases", w.coordinator.base_url))
            .bearer_auth(TOKEN)
            .json(&body)
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        assert!(hung.is_err_and(|e| e.is_timeout()), "no answer");
        let lease = handle.lease(&lease_id).expect("the lease was created");
        assert_eq!(lease["state"], "active");
        assert_eq!(w.hetzner.handle.servers().len(), 1);
        // The repeat is answered (the hang was for one request).
        let (status, again) = w.call(Method::POST, "/v1/leases", Some(&body)).await;
        assert_eq!(
            (status, again["lease"]["id"].as_str()),
            (200, Some(lease_id.as_str()))
        );

        handle.fail_after_processing(Route::new("POST", "/v1/leases"), 1, 502);
        let (lost_id, lost_attempt) = ids();
        let lost_body = create_body(&lost_id, &lost_attempt, &key);
        let (status, lost) = w.call(Method::POST, "/v1/leases", Some(&lost_body)).await;
        assert_eq!((status, lost), (502, json!({ "error": "unavailable" })));
        assert_eq!(handle.lease(&lost_id).expect("made")["state"], "active");
        let (status, _) = w.call(Method::POST, "/v1/leases", Some(&lost_body)).await;
        assert_eq!(status, 200);
        assert_eq!(handle.leases().len(), 2);
        assert_eq!(w.hetzner.handle.servers().len(), 2, "no duplicate servers");
    }

    /// `ssh` into the test sshd as `user` with `key`, trusting only
    /// `host_key`; says whether `echo` ran.
    fn ssh_in(dir: &std::path::Path, key: &std::path::Path, lease: &Value, host_key: &str) -> bool {
        let known = dir.join("known_hosts");
        let host = lease["host"].as_str().expect("host");
        let port = lease["sshPort"].as_str().expect("sshPort");
        std::fs::write(&known, format!("[{host}]:{port} {host_key}\n")).expect("known_hosts");
        let out = std::process::Command::new("ssh")
            .arg("-i")
            .arg(key)
            .args([
                "-p",
                port,
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
            ])
            .args(["-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=10"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known.display()))
            .arg(format!(
                "{}@{host}",
                lease["sshUser"].as_str().expect("sshUser")
            ))
            .arg("echo in")
            .output()
            .expect("ssh runs (openssh-client)");
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "in"
    }

    #[tokio::test]
    async fn a_lease_is_reached_through_the_test_sshd_with_its_key_and_pinned_host_key() {
        let sshd = super::super::sshd::TestSshd::start();
        let hetzner = fake_hetzner::start(FakeConfig {
            boot_delay: Duration::from_millis(60),
            authorized_keys: Some(sshd.authorized_keys.clone()),
            ..FakeConfig::default()
        })
        .await;
        let host_key =
            std::fs::read_to_string(sshd.dir().join("host_key.pub")).expect("sshd host key");
        let coordinator = start(CoordinatorConfig {
            hetzner_url: hetzner.base_url.clone(),
            ssh_user: sshd.user.clone(),
            ssh_port: sshd.port,
            ssh_fallback_ports: Vec::new(),
            ssh_host_key: host_key.trim().to_owned(),
            ..CoordinatorConfig::default()
        })
        .await;
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("lease_key");
        let out = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "lease", "-f"])
            .arg(&key)
            .output()
            .expect("ssh-keygen");
        assert!(out.status.success());
        let public = std::fs::read_to_string(key.with_extension("pub")).expect("pub");
        let (lease_id, attempt) = ids();
        let planned = json!({
            "host": "127.0.0.1",
            "sshPort": sshd.port.to_string(),
            "sshUser": sshd.user,
        });
        assert!(
            !ssh_in(dir.path(), &key, &planned, host_key.trim()),
            "the key is not authorized before its lease exists"
        );
        let answer = reqwest::Client::new()
            .post(format!("{}/v1/leases", coordinator.base_url))
            .bearer_auth(TOKEN)
            .json(&create_body(&lease_id, &attempt, public.trim()))
            .send()
            .await
            .expect("create");
        assert_eq!(answer.status(), 201);
        let lease = answer.json::<Value>().await.expect("JSON")["lease"].clone();
        assert_eq!(lease["sshFallbackPorts"], json!([]));
        let pinned = lease["sshHostKey"].as_str().expect("sshHostKey");
        assert!(
            ssh_in(dir.path(), &key, &lease, pinned),
            "the lease's key gets in, the host key is the one the lease names"
        );
        let other = dir.path().join("other_host_key");
        let out = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "other", "-f"])
            .arg(&other)
            .output()
            .expect("ssh-keygen");
        assert!(out.status.success());
        let wrong = std::fs::read_to_string(other.with_extension("pub")).expect("pub");
        let wrong = wrong.trim();
        assert!(
            !ssh_in(dir.path(), &key, &lease, wrong),
            "another host key is refused: nothing is trusted on first use"
        );
    }

    #[tokio::test]
    async fn a_provider_failure_is_a_500_with_its_message_and_a_failed_lease() {
        let w = world(|_| {}).await;
        w.hetzner
            .handle
            .fail_server_type("ccx13", "resource_unavailable");
        let (lease_id, attempt) = ids();
        let body = create_body(&lease_id, &attempt, &w.key("lease"));
        let (status, answer) = w.call(Method::POST, "/v1/leases", Some(&body)).await;
        assert_eq!(status, 500, "{answer:#}");
        let message = answer["error"].as_str().expect("a message");
        assert!(message.contains("resource_unavailable"), "{message}");
        let lease = w.coordinator.handle.lease(&lease_id).expect("the lease");
        assert_eq!(lease["state"], "failed");
        assert_eq!(lease["failureError"], message);
        assert!(
            w.hetzner.handle.ssh_keys().is_empty(),
            "the key made for it is gone"
        );
        // The same attempt again: the create is terminal.
        let (status, again) = w.call(Method::POST, "/v1/leases", Some(&body)).await;
        assert_eq!(
            (status, again["error"].as_str()),
            (409, Some("lease_state_changed"))
        );
        // fleet.ts createLease reads the body with `readJson`, whatever the
        // Content-Type says (only heartbeat and release use `optionalJson`).
        let (plain_id, plain_attempt) = ids();
        let plain = w
            .client
            .post(format!("{}/v1/leases", w.coordinator.base_url))
            .bearer_auth(TOKEN)
            .header("content-type", "text/plain")
            .body(create_body(&plain_id, &plain_attempt, &w.key("plain")).to_string())
            .send()
            .await
            .expect("post");
        assert_eq!(plain.status(), 500, "the body was read: the same failure");
        assert_eq!(
            w.coordinator.handle.lease(&plain_id).expect("lease")["state"],
            "failed"
        );
    }

    #[tokio::test]
    async fn a_lease_released_while_it_provisions_loses_the_server_made_for_it() {
        let w = world(|_| {}).await;
        w.coordinator
            .handle
            .set_provision_delay(Duration::from_millis(500));
        let (lease_id, attempt) = ids();
        let body = create_body(&lease_id, &attempt, &w.key("lease"));
        let post = w.create_in_background(&body);
        w.wait_for(&lease_id, "created", |l| l["state"] == "provisioning")
            .await;
        let (status, released) = w
            .call(
                Method::POST,
                &format!("/v1/leases/{lease_id}/release"),
                Some(&json!({ "delete": true })),
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(released["lease"]["state"], "released");
        assert_eq!(released["lease"]["releaseDeletesServer"], true);
        assert!(
            released["lease"].get("cleanupStartedAt").is_none(),
            "no machine yet"
        );
        let (status, answer) = post.await.expect("the create ends");
        assert_eq!(
            (status, answer["error"].as_str()),
            (409, Some("lease_state_changed"))
        );
        assert_eq!(answer["lease"]["state"], "released");
        assert!(w.hetzner.handle.servers().is_empty());
        assert!(w.hetzner.handle.ssh_keys().is_empty());
    }

    #[tokio::test]
    async fn a_failed_cleanup_is_reported_and_tried_again() {
        let w = world(|_| {}).await;
        let handle = &w.coordinator.handle;
        handle.set_cleanup_delay(Duration::ZERO);
        handle.set_cleanup_retry_delay(Duration::from_millis(300));
        let (lease_id, attempt) = ids();
        let (_, created) = w
            .call(
                Method::POST,
                "/v1/leases",
                Some(&create_body(&lease_id, &attempt, &w.key("lease"))),
            )
            .await;
        let server_id = created["lease"]["serverID"].as_u64().expect("server");
        w.hetzner
            .handle
            .set_route_down("DELETE", "/v1/servers", true);
        let (status, _) = w
            .call(
                Method::POST,
                &format!("/v1/leases/{lease_id}/release"),
                Some(&json!({ "delete": true })),
            )
            .await;
        assert_eq!(status, 200);
        let failed = w
            .wait_for(&lease_id, "cleanup failed", |l| {
                l["cleanupError"].is_string()
            })
            .await;
        assert!(failed.get("cleanupStartedAt").is_none());
        assert!(failed["cleanupAttempts"].as_u64() >= Some(1));
        assert!(failed["cleanupRetryAt"].is_string());
        assert!(w.hetzner.handle.server(server_id).is_some());
        w.hetzner
            .handle
            .set_route_down("DELETE", "/v1/servers", false);
        let done = w
            .wait_for(&lease_id, "cleaned up on retry", |l| {
                l.get("cleanupError").is_none() && l.get("cleanupStartedAt").is_none()
            })
            .await;
        assert_eq!(done["state"], "released");
        assert!(w.hetzner.handle.server(server_id).is_none());
    }
}
