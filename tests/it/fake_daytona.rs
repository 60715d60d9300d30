//! A local, in-memory fake of Daytona's API, following Daytona's published
//! OpenAPI document as its generated Python client (`daytona-api-client`
//! 0.231.0, `daytona-toolbox-api-client` 0.226.1) reads it: the same
//! paths, JSON fields, status codes and cursor paging.
//!
//! - `Authorization: Bearer <API key or JWT>` on every call; with a JWT the
//!   organization must come as `X-Daytona-Organization-ID`. Errors are
//!   NestJS's `{statusCode, message, error}`.
//! - `POST /sandbox` (`CreateSandbox`: `name`, `snapshot`, `labels`, `user`,
//!   `target`, `autoStopInterval`, …) → `Sandbox`, `creating` then `started`
//!   after a boot delay; a taken name is a 409. `GET /sandbox/{idOrName}`,
//!   `DELETE /sandbox/{idOrName}` (kills the processes started for it; answers the sandbox, now `destroyed`;
//!   later reads are 404), `PUT /sandbox/{idOrName}/labels` (`SandboxLabels`
//!   replaces every label).
//! - `GET /sandbox?limit&cursor&labels=<JSON>` → `{items, nextCursor}`
//!   (`ListSandboxesResponse`; limit 1–200, default 100; every label of the
//!   filter must match; the cursor is opaque).
//! - `POST /sandbox/{idOrName}/ssh-access?expiresInMinutes=N` → `SshAccessDto`
//!   `{id, sandboxId, token, expiresAt, createdAt, updatedAt, sshCommand}`.
//!   The token is a user of the tests' SSH gateway ([`TokenGateway`]), where
//!   the sandbox is this machine: `sshCommand` is `ssh -p <port>
//!   <token>@127.0.0.1`. Tokens really expire (the gateway refuses them
//!   after `expiresAt`); [`FakeConfig::access_lifetime`] shortens what a
//!   token gets, so refreshing is tested in seconds.
//! - The toolbox, at `toolboxProxyUrl` = `<base>/toolbox`, with the API's
//!   credentials: `POST /toolbox/{id}/files/upload?path=` and
//!   `/files/upload-v2` (multipart `file`, written at `path` on this
//!   machine) and `POST /toolbox/{id}/process/execute {command, cwd,
//!   timeout}` → `{exitCode, result}` (the command really runs, with `sh
//!   -c`).
//!
//! Faults go through the shared harness (`fake_http`): 429s, 5xx, latency;
//! the request log keeps every call.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

pub use super::fake_http::LoggedRequest;
use super::fake_http::{Access, FakeServer, Harness, Reply, Route, json_error, query_pairs};
use super::sshd::TokenGateway;

/// The API key the fake accepts unless configured otherwise.
pub const API_KEY: &str = "dtn_fake_0123456789abcdef";
/// The organization of the fake's account.
pub const ORGANIZATION: &str = "org-fake-crabbox";
/// List page sizes the API accepts, and its default.
const LIMITS: std::ops::RangeInclusive<usize> = 1..=200;
const DEFAULT_LIMIT: usize = 100;

/// How the fake starts.
#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// The API key accepted.
    pub api_key: String,
    /// A JWT accepted with `X-Daytona-Organization-ID: ORGANIZATION`.
    pub jwt: Option<String>,
    /// How long a new sandbox is `creating`.
    pub boot_delay: Duration,
    /// When set, how long every SSH access token lives, whatever was
    /// asked (`expiresAt` says so).
    pub access_lifetime: Option<Duration>,
    /// Snapshots that exist; any other is a 400.
    pub snapshots: Vec<String>,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            api_key: API_KEY.to_owned(),
            jwt: None,
            boot_delay: Duration::from_millis(100),
            access_lifetime: None,
            snapshots: vec!["daytonaio/sandbox:0.4.3".to_owned()],
        }
    }
}

#[derive(Debug)]
struct SandboxRec {
    id: String,
    name: String,
    snapshot: String,
    user: String,
    target: String,
    labels: BTreeMap<String, String>,
    auto_stop: u64,
    state: String,
    ready_at: Instant,
    created_at: String,
    seq: u64,
}

impl SandboxRec {
    fn state(&self) -> &str {
        if self.state == "creating" && Instant::now() >= self.ready_at {
            "started"
        } else {
            &self.state
        }
    }

    fn json(&self, base: &str) -> Value {
        json!({
            "id": self.id,
            "organizationId": ORGANIZATION,
            "name": self.name,
            "snapshot": self.snapshot,
            "user": self.user,
            "env": {},
            "labels": self.labels,
            "public": false,
            "networkBlockAll": false,
            "kvm": false,
            "target": self.target,
            "cpu": 1,
            "gpu": 0,
            "memory": 1,
            "disk": 3,
            "state": self.state(),
            "desiredState": if self.state == "destroyed" { "destroyed" } else { "started" },
            "autoStopInterval": self.auto_stop,
            "createdAt": self.created_at,
            "updatedAt": self.created_at,
            "toolboxProxyUrl": format!("{base}/toolbox"),
        })
    }
}

#[derive(Debug)]
struct Inner {
    config: FakeConfig,
    base_url: String,
    next: u64,
    sandboxes: BTreeMap<String, SandboxRec>,
    deleted: Vec<String>,
    /// Token → the sandbox it reaches.
    tokens: BTreeMap<String, String>,
}

/// Shared access to the fake's state.
#[derive(Clone)]
pub struct FakeHandle {
    inner: Arc<Mutex<Inner>>,
    http: Harness,
    gateway: Arc<TokenGateway>,
}

impl std::fmt::Debug for FakeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeHandle").finish_non_exhaustive()
    }
}

/// A running fake.
#[derive(Debug)]
pub struct FakeDaytona {
    /// `http://127.0.0.1:<port>`: the API's base URL.
    pub base_url: String,
    /// Control of the fake.
    pub handle: FakeHandle,
    _server: FakeServer,
}

/// Starts a fake on a free port of 127.0.0.1, with its SSH gateway.
pub async fn start(config: FakeConfig) -> FakeDaytona {
    let gateway = Arc::new(TokenGateway::start());
    let handle = FakeHandle {
        inner: Arc::new(Mutex::new(Inner {
            config,
            base_url: String::new(),
            next: 1,
            sandboxes: BTreeMap::new(),
            deleted: Vec::new(),
            tokens: BTreeMap::new(),
        })),
        http: Harness::default(),
        gateway,
    };
    let creds = handle.clone();
    let auth = Arc::new(move |parts: &axum::http::request::Parts| {
        if authorized(&creds.lock().config, &parts.headers) {
            Access::Granted
        } else {
            Access::Denied(json_error(
                error_body,
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "Invalid credentials",
            ))
        }
    });
    let routes = Router::new()
        .fallback(handle_request)
        .with_state(handle.clone());
    let server = FakeServer::start("Daytona", handle.http.wrap(routes, auth)).await;
    handle.lock().base_url.clone_from(&server.url);
    FakeDaytona {
        base_url: server.url.clone(),
        handle,
        _server: server,
    }
}

/// A sandbox as a test sees it.
#[derive(Debug, Clone)]
pub struct SandboxView {
    pub id: String,
    pub state: String,
    pub labels: BTreeMap<String, String>,
}

impl FakeHandle {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next `n` requests answer 429 with `Retry-After: 0`.
    pub fn fail_next_with_429(&self, n: u32) {
        let reply = Reply::error(
            error_body,
            StatusCode::TOO_MANY_REQUESTS,
            "ThrottlerException",
            "Too Many Requests",
        )
        .with_header("retry-after", "0");
        self.http.faults.queue(Route::any(), n, reply);
    }

    /// The next `n` requests to `method path…` answer 503.
    pub fn fail_next_with_503(&self, method: &str, prefix: &str, n: u32) {
        let reply = Reply::error(
            error_body,
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable",
            "upstream unavailable",
        );
        self.http.faults.queue(Route::new(method, prefix), n, reply);
    }

    /// Every SSH access token handed out stops working now.
    pub fn revoke_all_tokens(&self) {
        let tokens: Vec<String> = self.lock().tokens.keys().cloned().collect();
        for t in tokens {
            self.gateway.revoke(&t);
        }
    }

    /// The SSH access tokens handed out, in order.
    pub fn tokens(&self) -> Vec<String> {
        self.lock().tokens.keys().cloned().collect()
    }

    /// The gateway the tokens log in to.
    pub fn gateway(&self) -> &TokenGateway {
        &self.gateway
    }

    /// Plants a started sandbox carrying `labels`.
    pub fn plant(&self, name: &str, labels: &[(&str, &str)]) -> String {
        let mut inner = self.lock();
        let id = new_id(&mut inner);
        let seq = inner.next;
        let rec = SandboxRec {
            id: id.clone(),
            name: name.to_owned(),
            snapshot: "daytonaio/sandbox:0.4.3".to_owned(),
            user: "daytona".to_owned(),
            target: "us".to_owned(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            auto_stop: 15,
            state: "started".to_owned(),
            ready_at: Instant::now(),
            created_at: rfc3339(SystemTime::now()),
            seq,
        };
        inner.sandboxes.insert(id.clone(), rec);
        id
    }

    /// Every sandbox that exists.
    pub fn sandboxes(&self) -> Vec<SandboxView> {
        self.lock()
            .sandboxes
            .values()
            .map(|s| SandboxView {
                id: s.id.clone(),
                state: s.state().to_owned(),
                labels: s.labels.clone(),
            })
            .collect()
    }

    /// IDs of the sandboxes deleted, in order.
    pub fn deleted(&self) -> Vec<String> {
        self.lock().deleted.clone()
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.http.log.requests()
    }

    /// How many requests `method path…` got.
    pub fn count(&self, method: &str, prefix: &str) -> usize {
        self.http.log.count(method, prefix)
    }
}

fn new_id(inner: &mut Inner) -> String {
    let seq = inner.next;
    inner.next += 1;
    format!("{}-{seq:04}", random_hex(4))
}

fn authorized(config: &FakeConfig, headers: &HeaderMap) -> bool {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let Some(token) = header("authorization").and_then(|v| v.strip_prefix("Bearer ")) else {
        return false;
    };
    if token == config.api_key {
        return true;
    }
    config.jwt.as_deref() == Some(token)
        && header("x-daytona-organization-id") == Some(ORGANIZATION)
}

/// NestJS's error body.
fn error_body(error: &str, message: &str) -> Value {
    json!({ "statusCode": Value::Null, "error": error, "message": message })
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(json!({
            "statusCode": status.as_u16(),
            "error": status.canonical_reason().unwrap_or("Error"),
            "message": message,
        })),
    )
        .into_response()
}

async fn handle_request(
    State(handle): State<FakeHandle>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let query = query_pairs(&uri);
    let param = |k: &str| query.iter().find(|(q, _)| q == k).map(|(_, v)| v.clone());
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let json_body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    match (method.as_str(), parts.as_slice()) {
        ("GET", ["sandbox"]) => list(&handle, param("limit"), param("cursor"), param("labels")),
        ("POST", ["sandbox"]) => create(&handle, &json_body),
        ("GET", ["sandbox", id]) => with_sandbox(&handle, id, |s, base| {
            (StatusCode::OK, axum::Json(s.json(base))).into_response()
        }),
        ("DELETE", ["sandbox", id]) => delete(&handle, id),
        ("PUT", ["sandbox", id, "labels"]) => replace_labels(&handle, id, &json_body),
        ("POST", ["sandbox", id, "ssh-access"]) => {
            ssh_access(&handle, id, param("expiresInMinutes"))
        }
        ("POST", ["toolbox", id, "files", "upload" | "upload-v2"]) => {
            let Some(dest) = param("path") else {
                return error(StatusCode::BAD_REQUEST, "path is required");
            };
            if !handle.lock().sandboxes.contains_key(*id) {
                return error(StatusCode::NOT_FOUND, "sandbox not found");
            }
            let content_type = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let bytes = match multipart_file(&content_type, &body) {
                Ok(b) => b,
                Err(e) => return error(StatusCode::BAD_REQUEST, &e),
            };
            let dest = std::path::PathBuf::from(dest);
            if let Some(dir) = dest.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            match std::fs::write(&dest, bytes) {
                Ok(()) => (StatusCode::OK, axum::Json(json!({ "path": dest }))).into_response(),
                Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
            }
        }
        ("POST", ["toolbox", id, "process", "execute"]) => {
            if !handle.lock().sandboxes.contains_key(*id) {
                return error(StatusCode::NOT_FOUND, "sandbox not found");
            }
            execute(&json_body).await
        }
        _ => error(StatusCode::NOT_FOUND, &format!("Cannot {method} {path}")),
    }
}

fn with_sandbox(
    handle: &FakeHandle,
    id: &str,
    answer: impl FnOnce(&mut SandboxRec, &str) -> Response,
) -> Response {
    let mut inner = handle.lock();
    let base = inner.base_url.clone();
    let key = inner
        .sandboxes
        .values()
        .find(|s| s.id == id || s.name == id)
        .map(|s| s.id.clone());
    match key.and_then(|k| inner.sandboxes.get_mut(&k)) {
        Some(s) => answer(s, &base),
        None => error(
            StatusCode::NOT_FOUND,
            &format!("Sandbox with ID or name {id} not found"),
        ),
    }
}

fn list(
    handle: &FakeHandle,
    limit: Option<String>,
    cursor: Option<String>,
    labels: Option<String>,
) -> Response {
    let limit = match limit.map(|l| l.parse::<usize>()) {
        None => DEFAULT_LIMIT,
        Some(Ok(l)) if LIMITS.contains(&l) => l,
        Some(_) => return error(StatusCode::BAD_REQUEST, "limit must be between 1 and 200"),
    };
    let filter: BTreeMap<String, String> = match labels.as_deref().map(serde_json::from_str) {
        None => BTreeMap::new(),
        Some(Ok(f)) => f,
        Some(Err(_)) => return error(StatusCode::BAD_REQUEST, "labels must be a JSON object"),
    };
    let after: u64 = match cursor.as_deref().map(decode_cursor) {
        None => 0,
        Some(Some(seq)) => seq,
        Some(None) => return error(StatusCode::BAD_REQUEST, "invalid cursor"),
    };
    let inner = handle.lock();
    let mut matching: Vec<&SandboxRec> = inner
        .sandboxes
        .values()
        .filter(|s| s.seq > after)
        .filter(|s| filter.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .collect();
    matching.sort_by_key(|s| s.seq);
    let page: Vec<Value> = matching
        .iter()
        .take(limit)
        .map(|s| s.json(&inner.base_url))
        .collect();
    let next = (matching.len() > limit).then(|| encode_cursor(matching[limit - 1].seq));
    (
        StatusCode::OK,
        axum::Json(json!({ "items": page, "nextCursor": next })),
    )
        .into_response()
}

/// The cursor: the last sequence number served, opaque to the client.
fn encode_cursor(seq: u64) -> String {
    format!("c{:x}", seq ^ 0x5a5a)
}

fn decode_cursor(cursor: &str) -> Option<u64> {
    u64::from_str_radix(cursor.strip_prefix('c')?, 16)
        .ok()
        .map(|v| v ^ 0x5a5a)
}

fn create(handle: &FakeHandle, body: &Value) -> Response {
    let Some(obj) = body.as_object() else {
        return error(
            StatusCode::BAD_REQUEST,
            "body must be a CreateSandbox object",
        );
    };
    let text = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_owned);
    let mut inner = handle.lock();
    let snapshot = text("snapshot").unwrap_or_default();
    if !inner.config.snapshots.contains(&snapshot) {
        return error(
            StatusCode::BAD_REQUEST,
            &format!(
                "Snapshot {snapshot} not found. Did you add it through the Daytona Dashboard?"
            ),
        );
    }
    let labels: BTreeMap<String, String> = match obj.get("labels") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(v) => match serde_json::from_value(v.clone()) {
            Ok(l) => l,
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "labels must map strings to strings",
                );
            }
        },
    };
    let id = new_id(&mut inner);
    let name = text("name").unwrap_or_else(|| id.clone());
    if inner.sandboxes.values().any(|s| s.name == name) {
        return error(
            StatusCode::CONFLICT,
            &format!("Sandbox with name {name} already exists"),
        );
    }
    let seq = inner.next;
    let rec = SandboxRec {
        id: id.clone(),
        name,
        snapshot,
        user: text("user").unwrap_or_else(|| "daytona".to_owned()),
        target: text("target").unwrap_or_else(|| "us".to_owned()),
        labels,
        auto_stop: obj
            .get("autoStopInterval")
            .and_then(Value::as_u64)
            .unwrap_or(15),
        state: "creating".to_owned(),
        ready_at: Instant::now() + inner.config.boot_delay,
        created_at: rfc3339(SystemTime::now()),
        seq,
    };
    let answer = rec.json(&inner.base_url);
    inner.sandboxes.insert(id, rec);
    (StatusCode::OK, axum::Json(answer)).into_response()
}

fn delete(handle: &FakeHandle, id: &str) -> Response {
    let mut inner = handle.lock();
    let base = inner.base_url.clone();
    let Some(key) = inner
        .sandboxes
        .values()
        .find(|s| s.id == id || s.name == id)
        .map(|s| s.id.clone())
    else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("Sandbox with ID or name {id} not found"),
        );
    };
    let mut rec = inner.sandboxes.remove(&key).expect("found above");
    rec.state = "destroyed".to_owned();
    inner.deleted.push(key.clone());
    let gone: Vec<String> = inner
        .tokens
        .iter()
        .filter(|(_, s)| **s == key)
        .map(|(t, _)| t.clone())
        .collect();
    drop(inner);
    for t in gone {
        handle.gateway.revoke(&t);
    }
    // A deleted sandbox runs nothing any more: its processes (this machine's,
    // started through the gateway for its lease) go with it.
    if let Some(lease) = rec.labels.get("lease") {
        kill_processes_of(lease);
    }
    (StatusCode::OK, axum::Json(rec.json(&base))).into_response()
}

/// SIGKILLs every process whose environment names `lease` as its
/// `CRABBOX_LEASE_ID` (what crabbox starts on a lease carries it).
fn kill_processes_of(lease: &str) {
    let marker = format!("CRABBOX_LEASE_ID={lease}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let marked = std::fs::read(format!("/proc/{pid}/environ"))
            .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == marker.as_bytes()));
        if marked {
            // SAFETY: sending a signal has no memory effects.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

fn replace_labels(handle: &FakeHandle, id: &str, body: &Value) -> Response {
    let Some(labels) = body
        .get("labels")
        .and_then(|l| serde_json::from_value::<BTreeMap<String, String>>(l.clone()).ok())
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "labels must map strings to strings",
        );
    };
    with_sandbox(handle, id, |s, _| {
        s.labels.clone_from(&labels);
        (StatusCode::OK, axum::Json(json!({ "labels": labels }))).into_response()
    })
}

fn ssh_access(handle: &FakeHandle, id: &str, minutes: Option<String>) -> Response {
    let minutes = match minutes.map(|m| m.parse::<f64>()) {
        None => 60.0,
        Some(Ok(m)) if m > 0.0 => m,
        Some(_) => return error(StatusCode::BAD_REQUEST, "expiresInMinutes must be positive"),
    };
    let lifetime = handle
        .lock()
        .config
        .access_lifetime
        .unwrap_or(Duration::from_secs_f64(minutes * 60.0));
    let port = handle.gateway.sshd.port;
    let mut sandbox_id = None;
    let answer = with_sandbox(handle, id, |s, _| {
        sandbox_id = Some(s.id.clone());
        StatusCode::OK.into_response()
    });
    let Some(sandbox_id) = sandbox_id else {
        return answer;
    };
    let token = random_hex(12);
    handle.gateway.grant(&token);
    handle
        .lock()
        .tokens
        .insert(token.clone(), sandbox_id.clone());
    // The gateway refuses the token once it expires.
    let gateway = handle.gateway.clone();
    let expiring = token.clone();
    tokio::spawn(async move {
        tokio::time::sleep(lifetime).await;
        gateway.revoke(&expiring);
    });
    let now = SystemTime::now();
    (
        StatusCode::OK,
        axum::Json(json!({
            "id": format!("ssh-{}", random_hex(4)),
            "sandboxId": sandbox_id,
            "token": token,
            "expiresAt": rfc3339_millis(now + lifetime),
            "createdAt": rfc3339_millis(now),
            "updatedAt": rfc3339_millis(now),
            "sshCommand": format!("ssh -p {port} {token}@127.0.0.1"),
        })),
    )
        .into_response()
}

/// The toolbox's `process/execute`: `sh -c command` in `cwd`, its output
/// (stdout and stderr) as `result`.
async fn execute(body: &Value) -> Response {
    let Some(command) = body.get("command").and_then(Value::as_str) else {
        return error(StatusCode::BAD_REQUEST, "command is required");
    };
    let timeout = body
        .get("timeout")
        .and_then(Value::as_u64)
        .map_or(Duration::from_secs(10), Duration::from_secs);
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c").arg(command).kill_on_drop(true);
    if let Some(cwd) = body.get("cwd").and_then(Value::as_str) {
        cmd.current_dir(cwd);
    }
    if let Some(envs) = body.get("envs").and_then(Value::as_object) {
        for (k, v) in envs {
            cmd.env(k, v.as_str().unwrap_or_default());
        }
    }
    match tokio::time::timeout(timeout, cmd.output()).await {
        Ok(Ok(out)) => {
            let mut result = String::from_utf8_lossy(&out.stdout).into_owned();
            result.push_str(&String::from_utf8_lossy(&out.stderr));
            let code = out.status.code().unwrap_or(-1);
            (
                StatusCode::OK,
                axum::Json(json!({ "exitCode": code, "result": result })),
            )
                .into_response()
        }
        Ok(Err(e)) => error(StatusCode::BAD_REQUEST, &e.to_string()),
        Err(_) => error(StatusCode::REQUEST_TIMEOUT, "command timed out"),
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
        hay.get(from..)?
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
        let headers_start = after + 2;
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

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn rfc3339_millis(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("randomness");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}
