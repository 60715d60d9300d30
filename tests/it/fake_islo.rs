//! A local, in-memory fake of the Islo API, following the public Islo SDK's
//! types (`islo` 0.3.20): the same paths, JSON fields, status codes and
//! pagination.
//!
//! - `POST /auth/token {"access_key"}` → `{session_token, cookie_max_age, …}`;
//!   every other call needs `Authorization: Bearer <session_token>`. Tokens
//!   really expire after [`FakeConfig::token_ttl`] (401 `AUTH_REQUIRED`),
//!   while the answer may advertise a longer `cookie_max_age`, so a client's
//!   refresh on 401 is exercised.
//! - `GET /sandboxes?limit&offset` → `{items, total, limit, offset,
//!   next_cursor}` (limit capped at 100); `POST /sandboxes`, `GET|DELETE
//!   /sandboxes/{name}`, `POST /sandboxes/{name}/pause|resume`. Sandboxes are
//!   `starting`, then `running` after a boot delay.
//! - The sandboxes really run commands: each is a temporary directory
//!   standing for its filesystem, `/workspace/...` (any absolute path, in
//!   fact) in a `workdir` or `path` maps into it. `POST
//!   /sandboxes/{name}/exec/stream` spawns the request's `command` argv there
//!   with its `env` and streams `stdout`/`stderr` Server-Sent Events line by
//!   line as they are written, then `exit`. `POST
//!   /sandboxes/{name}/files-archive?path=` unpacks the multipart part `file`
//!   (a tar.gz) into the mapped path and refuses entries that escape it
//!   (absolute or `..`) with a 400. DELETE kills every process started for
//!   the sandbox (its exec process groups, and anything carrying the
//!   sandbox's marker in its environment, which detached services inherit)
//!   and removes the directory. Pause stops those processes, resume
//!   continues them.
//! - Shares: `GET|POST /sandboxes/{name}/shares` with `{share_id, url, port,
//!   created_at, expires_at}` and URLs `https://<share_id>.share.islo.test/`.
//!
//! Errors are Islo's `ErrorResponse` `{code, message, request_id}`. Faults are
//! injected through [`FakeHandle`]: latency, 429s (with `Retry-After`), 503s,
//! dropped `exit` events, `error` events instead of `exit`, sandboxes that
//! fail to boot. Serving, the request log (headers and body included),
//! latency and the 429s and 503s are the shared harness's (`fake_http`);
//! this file says what is Islo's.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::io::Read as _;
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};
use tokio::sync::mpsc;

pub use super::fake_http::LoggedRequest;
use super::fake_http::{Access, FakeServer, Harness, Reply, Route, json_error, query_pairs};

/// The API key the fake accepts unless configured otherwise.
pub const API_KEY: &str = "ak_fake_islo_0123456789abcdef";
/// The most sandboxes one list page holds.
pub const MAX_LIMIT: usize = 100;
/// The page size when a list request names none.
const DEFAULT_LIMIT: usize = 50;
/// Share lifetimes the API accepts (seconds).
const SHARE_TTL: std::ops::RangeInclusive<u64> = 60..=7 * 24 * 3600;
/// Share lifetime when the request names none.
const DEFAULT_SHARE_TTL: u64 = 3600;
/// Environment variable marking every process started for a sandbox.
const MARKER: &str = "ISLO_FAKE_SANDBOX";
/// After a command exits, how long output still held open by something
/// else is waited for.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// How the fake starts.
#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// The access key `/auth/token` accepts.
    pub api_key: String,
    /// How long a session token really works.
    pub token_ttl: Duration,
    /// The `cookie_max_age` answered (seconds); default: `token_ttl`.
    pub advertised_max_age: Option<u64>,
    /// How long a new (or resumed) sandbox is `starting`.
    pub boot_delay: Duration,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            api_key: API_KEY.to_owned(),
            token_ttl: Duration::from_secs(600),
            advertised_max_age: None,
            boot_delay: Duration::from_millis(100),
        }
    }
}

#[derive(Debug, Clone)]
struct ShareRec {
    share_id: String,
    port: u64,
    created_at: SystemTime,
    expires_at: SystemTime,
}

#[derive(Debug)]
struct SandboxRec {
    id: String,
    name: String,
    image: String,
    /// Stored status; `starting` turns into `boot_to` at `ready_at`.
    status: String,
    boot_to: String,
    ready_at: Instant,
    created_at: String,
    seq: u64,
    spec: Value,
    root: tempfile::TempDir,
    shares: Vec<ShareRec>,
    /// Process groups of exec calls still running.
    pgids: Vec<i32>,
}

impl SandboxRec {
    fn status(&self) -> &str {
        if self.status == "starting" && Instant::now() >= self.ready_at {
            &self.boot_to
        } else {
            &self.status
        }
    }

    /// Makes a finished boot the stored status.
    fn settle(&mut self) {
        if self.status == "starting" && Instant::now() >= self.ready_at {
            self.status = self.boot_to.clone();
        }
    }

    fn json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "image": self.image,
            "status": self.status(),
            "created_at": self.created_at,
            "created_by": "api_key",
            "workdir": "/workspace",
            "spec": self.spec,
        })
    }
}

/// The faults only Islo's exec streams and sandboxes know of; the rest are
/// the harness's.
#[derive(Debug, Default)]
struct Faults {
    drop_exit: u32,
    error_instead_of_exit: VecDeque<String>,
    fail_boot: u32,
}

#[derive(Debug)]
struct Inner {
    config: FakeConfig,
    /// Distinguishes this fake's sandbox IDs (and process markers) from
    /// other fakes in the same test process.
    instance: String,
    next: u64,
    sandboxes: BTreeMap<String, SandboxRec>,
    tokens: HashMap<String, Instant>,
    tokens_issued: usize,
    faults: Faults,
    deleted: Vec<String>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for s in self.sandboxes.values() {
            kill_sandbox_processes(&s.id, &s.pgids, libc::SIGKILL);
        }
    }
}

/// Shared access to the fake's state, for planting data, injecting faults
/// and reading the request log.
#[derive(Debug, Clone)]
pub struct FakeHandle {
    inner: Arc<Mutex<Inner>>,
    http: Harness,
}

/// A running fake.
#[derive(Debug)]
pub struct FakeIslo {
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
    /// Control of the fake.
    pub handle: FakeHandle,
    /// Serving stops when the fake is dropped.
    _server: FakeServer,
}

/// Starts a fake on a free port of 127.0.0.1 (served by a task of the
/// current runtime).
pub async fn start(config: FakeConfig) -> FakeIslo {
    let handle = FakeHandle {
        inner: Arc::new(Mutex::new(Inner {
            config,
            instance: random_hex(4),
            next: 1,
            sandboxes: BTreeMap::new(),
            tokens: HashMap::new(),
            tokens_issued: 0,
            faults: Faults::default(),
            deleted: Vec::new(),
        })),
        http: Harness::default(),
    };
    let sessions = handle.clone();
    let auth = Arc::new(move |parts: &axum::http::request::Parts| {
        if parts.method == Method::POST && parts.uri.path() == "/auth/token" {
            Access::Open
        } else if authorized(&sessions.lock(), &parts.headers) {
            Access::Granted
        } else {
            Access::Denied(json_error(
                error_body,
                StatusCode::UNAUTHORIZED,
                "AUTH_REQUIRED",
                "missing or expired session token",
            ))
        }
    });
    let routes = Router::new()
        .fallback(handle_request)
        .with_state(handle.clone());
    let server = FakeServer::start("Islo", handle.http.wrap(routes, auth)).await;
    FakeIslo {
        base_url: server.url.clone(),
        handle,
        _server: server,
    }
}

/// A sandbox as a test sees it.
#[derive(Debug, Clone)]
pub struct SandboxView {
    /// Its ID.
    pub id: String,
    /// Its status now.
    pub status: String,
    /// Its image.
    pub image: String,
    /// The directory standing for its filesystem (`/workspace` is
    /// `<root>/workspace`).
    pub root: PathBuf,
}

impl FakeHandle {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Delays every request by `latency`.
    pub fn set_latency(&self, latency: Duration) {
        self.http.faults.set_latency(latency);
    }

    /// The next `n` authenticated requests answer 429 `RATE_LIMITED` with
    /// `Retry-After: <retry_after>`, after the failures injected before.
    pub fn fail_next_with_429(&self, n: u32, retry_after: u64) {
        let reply = Reply::error(
            error_body,
            StatusCode::TOO_MANY_REQUESTS,
            "RATE_LIMITED",
            "too many requests",
        )
        .with_header("retry-after", &retry_after.to_string());
        self.http.faults.queue(Route::any(), n, reply);
    }

    /// The next `n` authenticated requests answer 503, after the failures
    /// injected before.
    pub fn fail_next_with_503(&self, n: u32) {
        let reply = Reply::error(
            error_body,
            StatusCode::SERVICE_UNAVAILABLE,
            "RESOURCE_UNAVAILABLE",
            "service temporarily unavailable",
        );
        self.http.faults.queue(Route::any(), n, reply);
    }

    /// The next `n` exec streams end without their `exit` event.
    pub fn drop_next_exit_events(&self, n: u32) {
        self.lock().faults.drop_exit = n;
    }

    /// The next exec stream sends an `error` event with `message` instead
    /// of its `exit` event.
    pub fn error_instead_of_next_exit(&self, message: &str) {
        self.lock()
            .faults
            .error_instead_of_exit
            .push_back(message.to_owned());
    }

    /// The next `n` created sandboxes end up `failed` instead of `running`.
    pub fn fail_next_boots(&self, n: u32) {
        self.lock().faults.fail_boot = n;
    }

    /// Every session token stops working now.
    pub fn expire_all_tokens(&self) {
        let now = Instant::now();
        for expiry in self.lock().tokens.values_mut() {
            *expiry = now;
        }
    }

    /// How many tokens `/auth/token` handed out.
    pub fn tokens_issued(&self) -> usize {
        self.lock().tokens_issued
    }

    /// Plants a running sandbox nobody in the test created.
    pub fn plant_sandbox(&self, name: &str) -> String {
        let mut inner = self.lock();
        let rec = new_sandbox(
            &mut inner,
            name,
            "docker.io/library/python:3.12-slim",
            json!({}),
        );
        let id = rec.id.clone();
        let mut rec = rec;
        rec.status = "running".to_owned();
        inner.sandboxes.insert(name.to_owned(), rec);
        id
    }

    /// Plants a share of `port` on `name` that expires in `ttl`.
    pub fn plant_share(&self, name: &str, port: u16, ttl: Duration) -> Option<String> {
        let mut inner = self.lock();
        let share_id = format!("shr_{}", random_hex(6));
        let now = SystemTime::now();
        inner.sandboxes.get_mut(name)?.shares.push(ShareRec {
            share_id: share_id.clone(),
            port: u64::from(port),
            created_at: now,
            expires_at: now + ttl,
        });
        Some(share_id)
    }

    /// A sandbox, if it exists.
    pub fn sandbox(&self, name: &str) -> Option<SandboxView> {
        let inner = self.lock();
        inner.sandboxes.get(name).map(|s| SandboxView {
            id: s.id.clone(),
            status: s.status().to_owned(),
            image: s.image.clone(),
            root: s.root.path().to_owned(),
        })
    }

    /// Every sandbox's name.
    pub fn sandbox_names(&self) -> Vec<String> {
        self.lock().sandboxes.keys().cloned().collect()
    }

    /// Names of the sandboxes deleted through the API, in order.
    pub fn deleted(&self) -> Vec<String> {
        self.lock().deleted.clone()
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.http.log.requests()
    }

    /// Forgets the request log, and with it the in-flight maximum.
    pub fn clear_requests(&self) {
        self.http.log.clear();
    }

    /// The most `GET /sandboxes` requests that were in flight at once.
    pub fn max_in_flight_lists(&self) -> usize {
        self.http
            .log
            .max_concurrent(|r| r.method == "GET" && r.path == "/sandboxes")
    }
}

fn new_sandbox(inner: &mut Inner, name: &str, image: &str, spec: Value) -> SandboxRec {
    let seq = inner.next;
    inner.next += 1;
    let root = tempfile::Builder::new()
        .prefix("fake-islo-")
        .tempdir()
        .expect("sandbox directory");
    std::fs::create_dir_all(root.path().join("workspace")).expect("workspace");
    std::fs::create_dir_all(root.path().join("home/islo")).expect("home");
    SandboxRec {
        id: format!("sbx_{}{seq:06}", inner.instance),
        name: name.to_owned(),
        image: image.to_owned(),
        status: "starting".to_owned(),
        boot_to: "running".to_owned(),
        ready_at: Instant::now() + inner.config.boot_delay,
        created_at: rfc3339(SystemTime::now()),
        seq,
        spec,
        root,
        shares: Vec::new(),
        pgids: Vec::new(),
    }
}

// ---- the server ----

/// What a route answers.
enum Answer {
    Json(StatusCode, Value),
    Empty(StatusCode),
    /// An exec stream to start.
    Exec(ExecStart),
    /// An archive to unpack.
    Archive {
        dest: PathBuf,
        archive: Vec<u8>,
    },
}

struct ExecStart {
    sandbox: String,
    marker: String,
    root: PathBuf,
    dir: PathBuf,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    drop_exit: bool,
    error_instead: Option<String>,
}

/// Islo's `ErrorResponse`.
fn error_body(code: &str, message: &str) -> Value {
    json!({ "code": code, "message": message, "request_id": format!("req_{}", random_hex(6)) })
}

fn error(status: StatusCode, code: &str, message: &str) -> Answer {
    Answer::Json(status, error_body(code, message))
}

/// One request that got past authentication and injected faults.
async fn handle_request(
    State(handle): State<FakeHandle>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path();
    let query = query_pairs(&uri);
    let body_json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let answer = {
        let mut inner = handle.lock();
        if method == Method::POST && path == "/auth/token" {
            auth_token(&mut inner, &body_json)
        } else {
            route(
                &mut inner, &method, path, &query, &headers, &body, &body_json,
            )
        }
    };

    match answer {
        Answer::Json(status, value) => (status, axum::Json(value)).into_response(),
        Answer::Empty(status) => status.into_response(),
        Answer::Archive { dest, archive } => {
            let unpacked = tokio::task::spawn_blocking(move || unpack(&archive, &dest))
                .await
                .unwrap_or_else(|e| Err((StatusCode::INTERNAL_SERVER_ERROR, e.to_string())));
            match unpacked {
                Ok(()) => axum::Json(json!({ "status": "extracted" })).into_response(),
                Err((status, message)) => {
                    json_error(error_body, status, "FILE_OPERATION_ERROR", &message)
                }
            }
        }
        Answer::Exec(start) => match spawn_exec(&handle, start) {
            Ok(body) => {
                let mut response = Response::new(body);
                response.headers_mut().insert(
                    "content-type",
                    HeaderValue::from_static("text/event-stream"),
                );
                response
                    .headers_mut()
                    .insert("cache-control", HeaderValue::from_static("no-cache"));
                response
            }
            Err(message) => {
                json_error(error_body, StatusCode::BAD_REQUEST, "EXEC_FAILED", &message)
            }
        },
    }
}

fn authorized(inner: &Inner, headers: &HeaderMap) -> bool {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|token| inner.tokens.get(token))
        .is_some_and(|expiry| Instant::now() < *expiry)
}

fn auth_token(inner: &mut Inner, body: &Value) -> Answer {
    let key = body.get("access_key").and_then(Value::as_str);
    if key != Some(inner.config.api_key.as_str()) {
        return error(
            StatusCode::UNAUTHORIZED,
            "AUTH_REQUIRED",
            "invalid access key",
        );
    }
    let token = format!("st_{}", random_hex(16));
    let ttl = inner.config.token_ttl;
    inner.tokens.insert(token.clone(), Instant::now() + ttl);
    inner.tokens_issued += 1;
    let max_age = inner.config.advertised_max_age.unwrap_or(ttl.as_secs());
    Answer::Json(
        StatusCode::OK,
        json!({
            "session_token": token,
            "session_jwt": token,
            "cookie_domain": "islo.test",
            "cookie_path": "/",
            "cookie_max_age": max_age,
        }),
    )
}

#[allow(clippy::too_many_arguments)]
fn route(
    inner: &mut Inner,
    method: &Method,
    path: &str,
    query: &[(String, String)],
    headers: &HeaderMap,
    body: &[u8],
    body_json: &Value,
) -> Answer {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method.as_str(), parts.as_slice()) {
        ("GET", ["sandboxes"]) => list(inner, query),
        ("POST", ["sandboxes"]) => create(inner, body_json),
        ("GET", ["sandboxes", name]) => match inner.sandboxes.get(*name) {
            Some(s) => Answer::Json(StatusCode::OK, s.json()),
            None => not_found(name),
        },
        ("DELETE", ["sandboxes", name]) => match inner.sandboxes.remove(*name) {
            Some(s) => {
                kill_sandbox_processes(&s.id, &s.pgids, libc::SIGKILL);
                inner.deleted.push(s.name.clone());
                // Dropping the record removes its directory.
                drop(s);
                Answer::Empty(StatusCode::NO_CONTENT)
            }
            None => not_found(name),
        },
        ("POST", ["sandboxes", name, "pause"]) => {
            let Some(s) = inner.sandboxes.get_mut(*name) else {
                return not_found(name);
            };
            s.settle();
            if s.status != "running" {
                return invalid_state(&s.name, &s.status);
            }
            kill_sandbox_processes(&s.id, &[], libc::SIGSTOP);
            s.status = "paused".to_owned();
            Answer::Json(StatusCode::OK, s.json())
        }
        ("POST", ["sandboxes", name, "resume"]) => {
            let boot = inner.config.boot_delay;
            let Some(s) = inner.sandboxes.get_mut(*name) else {
                return not_found(name);
            };
            if s.status != "paused" {
                return invalid_state(&s.name, s.status());
            }
            kill_sandbox_processes(&s.id, &[], libc::SIGCONT);
            s.status = "starting".to_owned();
            s.boot_to = "running".to_owned();
            s.ready_at = Instant::now() + boot;
            Answer::Json(StatusCode::OK, s.json())
        }
        ("POST", ["sandboxes", name, "exec", "stream"]) => exec(inner, name, body_json),
        ("POST", ["sandboxes", name, "files-archive"]) => {
            files_archive(inner, name, query, headers, body)
        }
        ("GET", ["sandboxes", name, "shares"]) => match inner.sandboxes.get_mut(*name) {
            Some(s) => {
                let now = SystemTime::now();
                s.shares.retain(|sh| sh.expires_at > now);
                Answer::Json(
                    StatusCode::OK,
                    Value::Array(s.shares.iter().map(share_json).collect()),
                )
            }
            None => not_found(name),
        },
        ("POST", ["sandboxes", name, "shares"]) => {
            let Some(s) = inner.sandboxes.get_mut(*name) else {
                return not_found(name);
            };
            let port = body_json.get("port").and_then(Value::as_u64);
            let Some(port) = port.filter(|p| (1..=65535).contains(p)) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "VALIDATION_ERROR",
                    "port must be 1-65535",
                );
            };
            let ttl = match body_json.get("ttl_seconds") {
                None | Some(Value::Null) => DEFAULT_SHARE_TTL,
                Some(v) => match v.as_u64().filter(|t| SHARE_TTL.contains(t)) {
                    Some(t) => t,
                    None => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            "VALIDATION_ERROR",
                            "ttl_seconds must be between 60 and 604800",
                        );
                    }
                },
            };
            let now = SystemTime::now();
            let share = ShareRec {
                share_id: format!("shr_{}", random_hex(6)),
                port,
                created_at: now,
                expires_at: now + Duration::from_secs(ttl),
            };
            let out = share_json(&share);
            s.shares.push(share);
            Answer::Json(StatusCode::OK, out)
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("no route {path}"),
        ),
    }
}

fn not_found(name: &str) -> Answer {
    error(
        StatusCode::NOT_FOUND,
        "SANDBOX_NOT_FOUND",
        &format!("sandbox {name} not found"),
    )
}

fn invalid_state(name: &str, status: &str) -> Answer {
    error(
        StatusCode::CONFLICT,
        "SANDBOX_INVALID_STATE",
        &format!("sandbox {name} is {status}"),
    )
}

fn share_json(s: &ShareRec) -> Value {
    json!({
        "share_id": s.share_id,
        "url": format!("https://{}.share.islo.test/", s.share_id),
        "port": s.port,
        "created_at": rfc3339(s.created_at),
        "expires_at": rfc3339(s.expires_at),
    })
}

fn list(inner: &mut Inner, query: &[(String, String)]) -> Answer {
    let param = |k: &str| query.iter().find(|(q, _)| q == k).map(|(_, v)| v.as_str());
    let limit = match param("limit").map(str::parse::<usize>) {
        None => DEFAULT_LIMIT,
        Some(Ok(l)) if l >= 1 => l.min(MAX_LIMIT),
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
                "limit must be a positive integer",
            );
        }
    };
    let offset = match param("offset").map(str::parse::<usize>) {
        None => 0,
        Some(Ok(o)) => o,
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
                "offset must be a non-negative integer",
            );
        }
    };
    let mut all: Vec<&SandboxRec> = inner.sandboxes.values().collect();
    all.sort_by_key(|s| s.seq);
    let items: Vec<Value> = all
        .iter()
        .skip(offset)
        .take(limit)
        .map(|s| s.json())
        .collect();
    Answer::Json(
        StatusCode::OK,
        json!({
            "items": items,
            "total": all.len(),
            "limit": limit,
            "offset": offset,
            "next_cursor": Value::Null,
        }),
    )
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn create(inner: &mut Inner, body: &Value) -> Answer {
    let Some(obj) = body.as_object() else {
        return error(
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
            "the body must be a JSON object",
        );
    };
    const KNOWN: [&str; 17] = [
        "cache_key",
        "disk_gb",
        "env",
        "environment",
        "gateway_profile",
        "image",
        "init",
        "internet_enabled",
        "lifecycle",
        "memory_mb",
        "name",
        "request_id",
        "setup_scripts",
        "snapshot_name",
        "sources",
        "vcpus",
        "workdir",
    ];
    if let Some(unknown) = obj.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return error(
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            &format!("unknown field `{unknown}`"),
        );
    }
    let name = match obj.get("name").and_then(Value::as_str) {
        Some(n) => n.to_owned(),
        None => format!("sandbox-{}", random_hex(4)),
    };
    if !valid_name(&name) {
        return error(
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            &format!("invalid sandbox name `{name}`"),
        );
    }
    if inner.sandboxes.contains_key(&name) {
        return error(
            StatusCode::CONFLICT,
            "SANDBOX_ALREADY_EXISTS",
            &format!("sandbox {name} already exists"),
        );
    }
    for key in ["vcpus", "memory_mb", "disk_gb"] {
        if let Some(v) = obj.get(key)
            && !v.is_null()
            && v.as_u64().is_none_or(|n| n == 0)
        {
            return error(
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
                &format!("{key} must be a positive integer"),
            );
        }
    }
    let get = |k: &str| obj.get(k).cloned().unwrap_or(Value::Null);
    let spec = json!({
        "vcpus": obj.get("vcpus").cloned().unwrap_or(json!(2)),
        "memory_mb": obj.get("memory_mb").cloned().unwrap_or(json!(1024)),
        "disk_gb": obj.get("disk_gb").cloned().unwrap_or(json!(10)),
        "gateway_profile": get("gateway_profile"),
        "snapshot_name": get("snapshot_name"),
    });
    let image = obj
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or("docker.io/library/python:3.12-slim")
        .to_owned();
    let mut rec = new_sandbox(inner, &name, &image, spec);
    if inner.faults.fail_boot > 0 {
        inner.faults.fail_boot -= 1;
        rec.boot_to = "failed".to_owned();
    }
    let out = rec.json();
    inner.sandboxes.insert(name, rec);
    Answer::Json(StatusCode::OK, out)
}

/// `root` + an absolute sandbox path; `None` when it is relative or has `..`.
fn map_path(root: &Path, sandbox_path: &str) -> Option<PathBuf> {
    let p = Path::new(sandbox_path);
    if !p.is_absolute() {
        return None;
    }
    let mut out = root.to_owned();
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

fn exec(inner: &mut Inner, name: &str, body: &Value) -> Answer {
    let Some(s) = inner.sandboxes.get_mut(name) else {
        return not_found(name);
    };
    s.settle();
    if s.status != "running" {
        return invalid_state(&s.name, &s.status);
    }
    let argv: Vec<String> = body
        .get("command")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if argv.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            "command must be a non-empty array of strings",
        );
    }
    let workdir = body
        .get("workdir")
        .and_then(Value::as_str)
        .unwrap_or("/workspace");
    let Some(dir) = map_path(s.root.path(), workdir) else {
        return error(
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            &format!("workdir `{workdir}` must be an absolute path without `..`"),
        );
    };
    if !dir.is_dir() {
        return error(
            StatusCode::BAD_REQUEST,
            "FILE_NOT_FOUND",
            &format!("workdir `{workdir}` does not exist"),
        );
    }
    let env = body
        .get("env")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    let start = ExecStart {
        sandbox: name.to_owned(),
        marker: s.id.clone(),
        root: s.root.path().to_owned(),
        dir,
        argv,
        env,
        drop_exit: false,
        error_instead: None,
    };
    let drop_exit = if inner.faults.drop_exit > 0 {
        inner.faults.drop_exit -= 1;
        true
    } else {
        false
    };
    let error_instead = inner.faults.error_instead_of_exit.pop_front();
    Answer::Exec(ExecStart {
        drop_exit,
        error_instead,
        ..start
    })
}

fn files_archive(
    inner: &mut Inner,
    name: &str,
    query: &[(String, String)],
    headers: &HeaderMap,
    body: &[u8],
) -> Answer {
    let Some(s) = inner.sandboxes.get(name) else {
        return not_found(name);
    };
    let Some(path) = query.iter().find(|(k, _)| k == "path").map(|(_, v)| v) else {
        return error(
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            "query parameter `path` is required",
        );
    };
    let Some(dest) = map_path(s.root.path(), path) else {
        return error(
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            &format!("path `{path}` must be an absolute path without `..`"),
        );
    };
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    match multipart_file(content_type, body) {
        Ok(archive) => Answer::Archive { dest, archive },
        Err(message) => error(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", &message),
    }
}

/// The content of the part named `file` of a `multipart/form-data` body.
fn multipart_file(content_type: &str, body: &[u8]) -> Result<Vec<u8>, String> {
    let boundary = content_type
        .split(';')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("boundary="))
        .map(|b| b.trim_matches('"'))
        .filter(|_| content_type.trim_start().starts_with("multipart/form-data"))
        .ok_or("expected multipart/form-data with a boundary")?;
    let delimiter = format!("--{boundary}");
    let find = |hay: &[u8], needle: &[u8], from: usize| {
        hay[from..]
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|p| p + from)
    };
    let mut pos = find(body, delimiter.as_bytes(), 0).ok_or("no multipart boundary in the body")?;
    loop {
        let after = pos + delimiter.len();
        if body[after..].starts_with(b"--") {
            return Err("no part named `file`".to_owned());
        }
        let headers_start = after + 2; // CRLF
        let headers_end = find(body, b"\r\n\r\n", headers_start).ok_or("truncated part")?;
        let part_headers = String::from_utf8_lossy(&body[headers_start..headers_end]).to_string();
        let content_start = headers_end + 4;
        let next = find(body, format!("\r\n{delimiter}").as_bytes(), content_start)
            .ok_or("unterminated part")?;
        let is_file = part_headers.lines().any(|l| {
            l.to_ascii_lowercase().starts_with("content-disposition:")
                && l.contains("name=\"file\"")
        });
        if is_file {
            return Ok(body[content_start..next].to_vec());
        }
        pos = next + 2;
    }
}

/// Unpacks a tar.gz into `dest`; entries that would escape it are refused
/// before anything is written.
fn unpack(archive: &[u8], dest: &Path) -> Result<(), (StatusCode, String)> {
    let bad = |m: String| (StatusCode::BAD_REQUEST, m);
    let mut gz = flate2::read::GzDecoder::new(archive);
    let mut raw = Vec::new();
    gz.read_to_end(&mut raw)
        .map_err(|e| bad(format!("not a gzip archive: {e}")))?;
    let mut check = tar::Archive::new(raw.as_slice());
    for entry in check
        .entries()
        .map_err(|e| bad(format!("not a tar archive: {e}")))?
    {
        let entry = entry.map_err(|e| bad(format!("bad tar entry: {e}")))?;
        let name = entry
            .path()
            .map_err(|e| bad(format!("bad tar entry: {e}")))?
            .into_owned();
        if name.is_absolute()
            || name
                .components()
                .any(|c| matches!(c, Component::ParentDir | Component::Prefix(_)))
        {
            return Err(bad(format!(
                "archive entry `{}` escapes the destination",
                name.display()
            )));
        }
    }
    std::fs::create_dir_all(dest)
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let mut tar = tar::Archive::new(raw.as_slice());
    tar.set_preserve_mtime(false);
    tar.set_overwrite(true);
    for entry in tar
        .entries()
        .map_err(|e| bad(format!("not a tar archive: {e}")))?
    {
        let mut entry = entry.map_err(|e| bad(format!("bad tar entry: {e}")))?;
        match entry.unpack_in(dest) {
            Ok(true) => {}
            Ok(false) => return Err(bad("an archive entry escapes the destination".to_owned())),
            Err(e) => return Err((StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
        }
    }
    Ok(())
}

// ---- exec streams ----

fn sse(event: &str, data: &str) -> String {
    let mut out = format!("event: {event}\n");
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    out
}

/// Starts the command and returns the SSE body that streams it.
fn spawn_exec(handle: &FakeHandle, start: ExecStart) -> Result<Body, String> {
    let mut cmd = tokio::process::Command::new(&start.argv[0]);
    cmd.args(&start.argv[1..])
        .current_dir(&start.dir)
        .env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        )
        .env("HOME", start.root.join("home/islo"))
        .env("LANG", "C.UTF-8")
        .envs(start.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env(MARKER, &start.marker)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start `{}`: {e}", start.argv[0]))?;
    let pgid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
    if let Some(s) = handle.lock().sandboxes.get_mut(&start.sandbox) {
        s.pgids.push(pgid);
    }
    let (tx, rx) = mpsc::channel::<String>(256);
    let (ev_tx, mut ev_rx) = mpsc::channel::<(&'static str, String)>(256);
    let pumps = [
        child
            .stdout
            .take()
            .map(|r| tokio::spawn(pump(r, "stdout", ev_tx.clone()))),
        child
            .stderr
            .take()
            .map(|r| tokio::spawn(pump(r, "stderr", ev_tx.clone()))),
    ];
    drop(ev_tx);
    let handle = handle.clone();
    tokio::spawn(async move {
        let forget = |handle: &FakeHandle| {
            if let Some(s) = handle.lock().sandboxes.get_mut(&start.sandbox) {
                s.pgids.retain(|p| *p != pgid);
            }
        };
        let kill = |handle: &FakeHandle| {
            if pgid > 1 {
                // SAFETY: killpg only takes integers; the group leader is our
                // unreaped child, so the group ID cannot have been reused.
                unsafe {
                    libc::killpg(pgid, libc::SIGKILL);
                }
            }
            forget(handle);
        };
        let _ = tx.send(": stream open\n\n".to_owned()).await;
        let mut status = None;
        let mut grace: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        loop {
            tokio::select! {
                event = ev_rx.recv() => match event {
                    Some((stream, text)) => {
                        if tx.send(sse(stream, &text)).await.is_err() {
                            kill(&handle);
                            return;
                        }
                    }
                    None => break,
                },
                s = child.wait(), if status.is_none() => {
                    status = Some(s);
                    grace = Some(Box::pin(tokio::time::sleep(OUTPUT_GRACE)));
                }
                () = async { grace.as_mut().expect("set with status").await }, if grace.is_some() => break,
                () = tx.closed() => {
                    // The client went away: the command goes too.
                    kill(&handle);
                    return;
                }
            }
        }
        for pump in pumps.into_iter().flatten() {
            pump.abort();
        }
        let status = match status {
            Some(s) => s,
            None => tokio::select! {
                s = child.wait() => s,
                () = tx.closed() => {
                    kill(&handle);
                    return;
                }
            },
        };
        forget(&handle);
        let code = match status {
            Ok(s) => {
                use std::os::unix::process::ExitStatusExt as _;
                s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
            }
            Err(_) => 255,
        };
        if let Some(message) = start.error_instead {
            let _ = tx.send(sse("error", &message)).await;
        } else if !start.drop_exit {
            let _ = tx.send(sse("exit", &code.to_string())).await;
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, Infallible>(chunk), rx))
    });
    Ok(Body::from_stream(stream))
}

/// Sends each line of a pipe (with its newline) as it is written.
async fn pump(
    reader: impl AsyncRead + Unpin,
    stream: &'static str,
    events: mpsc::Sender<(&'static str, String)>,
) {
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&buf).into_owned();
        if events.send((stream, text)).await.is_err() {
            return;
        }
    }
}

/// Signals the still-running exec process groups of a sandbox and every
/// process carrying its marker (detached services included).
fn kill_sandbox_processes(marker: &str, pgids: &[i32], signal: i32) {
    for &pgid in pgids {
        if pgid > 1 {
            // SAFETY: killpg only takes integers; these groups' leaders are
            // children of ours that were not reaped yet.
            unsafe {
                libc::killpg(pgid, signal);
            }
        }
    }
    let needle = format!("{MARKER}={marker}");
    let me = std::process::id();
    // Twice: a process may fork while the first pass runs.
    for _ in 0..2 {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == me {
                continue;
            }
            let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
                continue;
            };
            if environ
                .split(|b| *b == 0)
                .any(|var| var == needle.as_bytes())
                && let Ok(pid) = i32::try_from(pid)
            {
                // SAFETY: kill only takes integers.
                unsafe {
                    libc::kill(pid, signal);
                }
            }
        }
    }
}

// ---- helpers ----

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("randomness");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}
