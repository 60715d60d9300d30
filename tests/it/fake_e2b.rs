//! A local fake of E2B: its control plane (the published OpenAPI document's
//! `/sandboxes` and `/v2/sandboxes`) and each sandbox's envd (file upload
//! and the Connect process stream), on one port of 127.0.0.1. The sandbox
//! domain is `localhost:<port>`, so envd is `49983-<id>.localhost:<port>`
//! and port `P` of a sandbox `P-<id>.localhost:<port>`: requests are told
//! apart by their `Host`. The sandboxes are this machine (tests give
//! absolute workdirs in temporary directories): commands really run.
//!
//! - Control plane, `X-API-Key`: `POST /sandboxes {templateID, timeout,
//!   secure, allow_internet_access, metadata}` → `{sandboxID, templateID,
//!   clientID, envdVersion, envdAccessToken, domain}` (201); `GET
//!   /sandboxes/{id}` (`SandboxDetail`), `DELETE /sandboxes/{id}` (204; kills
//!   every process started for the sandbox), `POST /sandboxes/{id}/connect
//!   {timeout}` (extends the timeout; 200 with the sandbox), `GET
//!   /v2/sandboxes?limit&state&metadata&nextToken` → an array, the next page
//!   token in `x-next-token`. Errors are `{code, message}`. A sandbox whose
//!   timeout passes is gone (404), as on E2B.
//! - envd, `X-Access-Token`: `POST /files?path=&username=` (multipart
//!   `file`, written at `path`), `POST /process.Process/Start` (one Connect
//!   envelope in; out: `start`, `data` with base64 `stdout`/`stderr` as the
//!   process writes, `end {exitCode, exited, status}`, then the end-of-stream
//!   envelope). [`FakeHandle::cut_next_streams`] ends streams before `end`.
//! - envd is also reached at any other host with an `E2b-Sandbox-Id`
//!   header (E2B's shared `sandbox.<domain>` proxy, the SDK's
//!   `E2B_SANDBOX_URL`).
//! - Ports: a `GET` to `P-<id>.localhost:<port>` is forwarded to
//!   127.0.0.1:P.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

pub use super::fake_http::LoggedRequest;
use super::fake_http::{Access, FakeServer, Harness, Reply, Route, json_error, query_pairs};

/// The API key the fake accepts.
pub const API_KEY: &str = "e2b_fake_0123456789abcdef";
/// Marks every process started for a sandbox.
const MARKER: &str = "E2B_FAKE_SANDBOX";
const ENVD_PORT: &str = "49983";

#[derive(Debug)]
struct SandboxRec {
    id: String,
    template: String,
    token: String,
    metadata: BTreeMap<String, String>,
    expires: Instant,
    seq: u64,
}

#[derive(Debug, Default)]
struct Inner {
    port: u16,
    next: u64,
    sandboxes: BTreeMap<String, SandboxRec>,
    deleted: Vec<String>,
    connects: Vec<(String, u64)>,
    cut_streams: u32,
}

impl Inner {
    /// Sandboxes whose timeout passed are gone.
    fn expire(&mut self) {
        let now = Instant::now();
        let gone: Vec<String> = self
            .sandboxes
            .values()
            .filter(|s| s.expires <= now)
            .map(|s| s.id.clone())
            .collect();
        for id in gone {
            self.sandboxes.remove(&id);
            kill_sandbox_processes(&id);
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        for id in self.sandboxes.keys() {
            kill_sandbox_processes(id);
        }
    }
}

/// Control of a running fake.
#[derive(Debug, Clone)]
pub struct FakeHandle {
    inner: Arc<Mutex<Inner>>,
    http: Harness,
}

/// A running fake.
#[derive(Debug)]
pub struct FakeE2b {
    /// `http://127.0.0.1:<port>`: the control plane.
    pub api_url: String,
    /// `localhost:<port>`: the sandbox domain.
    pub domain: String,
    /// Control of the fake.
    pub handle: FakeHandle,
    _server: FakeServer,
}

/// What a request is for, by its `Host`.
enum Target {
    Api,
    Envd(String),
    Port(u16, String),
}

fn target_of(headers: &HeaderMap) -> Target {
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let name = host.split(':').next().unwrap_or_default();
    let Some(label) = name.strip_suffix(".localhost") else {
        // E2B's shared sandbox host (`sandbox.<domain>`, or the SDK's
        // `E2B_SANDBOX_URL`) names the sandbox in a header.
        return match headers.get("e2b-sandbox-id").and_then(|v| v.to_str().ok()) {
            Some(id) => Target::Envd(id.to_owned()),
            None => Target::Api,
        };
    };
    match label.split_once('-') {
        Some((ENVD_PORT, id)) => Target::Envd(id.to_owned()),
        Some((port, id)) => port
            .parse()
            .map_or(Target::Api, |p| Target::Port(p, id.to_owned())),
        None => Target::Api,
    }
}

/// Starts the fake on a free port.
pub async fn start() -> FakeE2b {
    let handle = FakeHandle {
        inner: Arc::new(Mutex::new(Inner::default())),
        http: Harness::default(),
    };
    let creds = handle.clone();
    let auth = Arc::new(move |parts: &axum::http::request::Parts| {
        let header = |n: &str| parts.headers.get(n).and_then(|v| v.to_str().ok());
        let ok = match target_of(&parts.headers) {
            Target::Port(..) => return Access::Open,
            Target::Api => header("x-api-key") == Some(API_KEY),
            Target::Envd(id) => {
                let inner = creds.lock();
                inner
                    .sandboxes
                    .get(&id)
                    .is_some_and(|s| header("x-access-token") == Some(s.token.as_str()))
            }
        };
        if ok {
            Access::Granted
        } else {
            Access::Denied(json_error(
                error_body,
                StatusCode::UNAUTHORIZED,
                "401",
                "Invalid API key or access token",
            ))
        }
    });
    let routes = Router::new()
        .fallback(handle_request)
        .with_state(handle.clone());
    let server = FakeServer::start("E2B", handle.http.wrap(routes, auth)).await;
    let port: u16 = server
        .url
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    handle.lock().port = port;
    FakeE2b {
        api_url: server.url.clone(),
        domain: format!("localhost:{port}"),
        handle,
        _server: server,
    }
}

impl FakeHandle {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next `n` control-plane requests answer 429.
    pub fn fail_next_with_429(&self, n: u32) {
        let reply = Reply::error(
            error_body,
            StatusCode::TOO_MANY_REQUESTS,
            "429",
            "rate limited",
        )
        .with_header("retry-after", "0");
        self.http
            .faults
            .queue(Route::prefix("/sandboxes"), n, reply);
    }

    /// The next `n` process streams end before their `end` event.
    pub fn cut_next_streams(&self, n: u32) {
        self.lock().cut_streams = n;
    }

    /// Plants a sandbox with `metadata`; its ID.
    pub fn plant(&self, metadata: &[(&str, &str)]) -> String {
        let mut inner = self.lock();
        let (id, seq) = new_id(&mut inner);
        inner.sandboxes.insert(
            id.clone(),
            SandboxRec {
                id: id.clone(),
                template: "base".to_owned(),
                token: random_hex(8),
                metadata: metadata
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                expires: Instant::now() + Duration::from_secs(3600),
                seq,
            },
        );
        id
    }

    /// The IDs of the sandboxes that exist.
    pub fn sandbox_ids(&self) -> Vec<String> {
        let mut inner = self.lock();
        inner.expire();
        inner.sandboxes.keys().cloned().collect()
    }

    /// A sandbox's metadata.
    pub fn metadata(&self, id: &str) -> Option<BTreeMap<String, String>> {
        self.lock().sandboxes.get(id).map(|s| s.metadata.clone())
    }

    /// `(sandbox, timeout)` of every connect call.
    pub fn connects(&self) -> Vec<(String, u64)> {
        self.lock().connects.clone()
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.http.log.requests()
    }
}

fn new_id(inner: &mut Inner) -> (String, u64) {
    // Sequence numbers start at 1: a page token names the last one served.
    inner.next += 1;
    let seq = inner.next;
    (format!("i{}{seq:04}", random_hex(6)), seq)
}

fn error_body(code: &str, message: &str) -> Value {
    json!({ "code": code.parse::<u16>().unwrap_or(500), "message": message })
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(json!({ "code": status.as_u16(), "message": message })),
    )
        .into_response()
}

fn sandbox_json(s: &SandboxRec, domain: &str, detail: bool) -> Value {
    let mut v = json!({
        "sandboxID": s.id,
        "templateID": s.template,
        "clientID": "fake",
        "envdVersion": "0.2.4",
        "envdAccessToken": s.token,
        "domain": domain,
    });
    if detail {
        v["metadata"] = json!(s.metadata);
        v["state"] = json!("running");
        v["cpuCount"] = json!(2);
        v["memoryMB"] = json!(512);
        v["diskSizeMB"] = json!(1024);
        v["startedAt"] = json!("2026-01-01T00:00:00Z");
        v["endAt"] = json!("2026-01-01T01:00:00Z");
    }
    v
}

async fn handle_request(
    State(handle): State<FakeHandle>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match target_of(&headers) {
        Target::Api => api(&handle, &method, &uri, &body),
        Target::Envd(id) => envd(&handle, &id, &method, &uri, &headers, &body),
        Target::Port(port, id) => {
            if !handle.lock().sandboxes.contains_key(&id) {
                return error(StatusCode::BAD_GATEWAY, "The sandbox was not found");
            }
            forward(port, uri.path_and_query().map_or("/", |p| p.as_str())).await
        }
    }
}

fn api(handle: &FakeHandle, method: &Method, uri: &Uri, body: &[u8]) -> Response {
    let query = query_pairs(uri);
    let param = |k: &str| query.iter().find(|(q, _)| q == k).map(|(_, v)| v.clone());
    let json_body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let mut inner = handle.lock();
    inner.expire();
    let domain = format!("localhost:{}", inner.port);
    let parts: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    match (method.as_str(), parts.as_slice()) {
        // `/v2/sandboxes` is the newer create (`NewSandboxV2`, E2B's
        // current SDK); Crabbox posts to `/sandboxes`.
        ("POST", ["sandboxes"] | ["v2", "sandboxes"]) => {
            let Some(template) = json_body.get("templateID").and_then(Value::as_str) else {
                return error(StatusCode::BAD_REQUEST, "templateID is required");
            };
            let timeout = json_body
                .get("timeout")
                .and_then(Value::as_u64)
                .unwrap_or(15);
            if timeout > 3600 {
                return error(
                    StatusCode::BAD_REQUEST,
                    "timeout cannot be greater than 1 hours",
                );
            }
            let metadata: BTreeMap<String, String> = match json_body.get("metadata") {
                None | Some(Value::Null) => BTreeMap::new(),
                Some(m) => match serde_json::from_value(m.clone()) {
                    Ok(m) => m,
                    Err(_) => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            "metadata must map strings to strings",
                        );
                    }
                },
            };
            let (id, seq) = new_id(&mut inner);
            let rec = SandboxRec {
                id: id.clone(),
                template: template.to_owned(),
                token: random_hex(12),
                metadata,
                expires: Instant::now() + Duration::from_secs(timeout),
                seq,
            };
            let answer = sandbox_json(&rec, &domain, false);
            inner.sandboxes.insert(id, rec);
            (StatusCode::CREATED, axum::Json(answer)).into_response()
        }
        ("GET", ["v2", "sandboxes"]) => {
            let limit: usize = param("limit").and_then(|l| l.parse().ok()).unwrap_or(100);
            if !(1..=100).contains(&limit) {
                return error(StatusCode::BAD_REQUEST, "limit must be between 1 and 100");
            }
            let filter: Vec<(String, String)> =
                param("metadata").map(|m| url_pairs(&m)).unwrap_or_default();
            let after: u64 = param("nextToken")
                .and_then(|t| t.strip_prefix("nt").and_then(|n| n.parse().ok()))
                .unwrap_or(0);
            let mut matching: Vec<&SandboxRec> = inner
                .sandboxes
                .values()
                .filter(|s| s.seq > after)
                .filter(|s| filter.iter().all(|(k, v)| s.metadata.get(k) == Some(v)))
                .collect();
            matching.sort_by_key(|s| s.seq);
            let page: Vec<Value> = matching
                .iter()
                .take(limit)
                .map(|s| {
                    // `ListedSandbox` carries no access token.
                    let mut v = sandbox_json(s, &domain, true);
                    v.as_object_mut().map(|o| o.remove("envdAccessToken"));
                    v
                })
                .collect();
            let mut response = (StatusCode::OK, axum::Json(Value::Array(page))).into_response();
            if matching.len() > limit {
                super::fake_http::set_header(
                    &mut response,
                    "x-next-token",
                    &format!("nt{}", matching[limit - 1].seq),
                );
            }
            response
        }
        ("GET", ["sandboxes", id]) => match inner.sandboxes.get(*id) {
            Some(s) => (StatusCode::OK, axum::Json(sandbox_json(s, &domain, true))).into_response(),
            None => error(
                StatusCode::NOT_FOUND,
                &format!("sandbox \"{id}\" doesn't exist or you don't have access to it"),
            ),
        },
        ("DELETE", ["sandboxes", id]) => match inner.sandboxes.remove(*id) {
            Some(_) => {
                inner.deleted.push((*id).to_owned());
                kill_sandbox_processes(id);
                StatusCode::NO_CONTENT.into_response()
            }
            None => error(
                StatusCode::NOT_FOUND,
                &format!("sandbox \"{id}\" doesn't exist or you don't have access to it"),
            ),
        },
        ("POST", ["sandboxes", id, "connect"]) => {
            let timeout = json_body
                .get("timeout")
                .and_then(Value::as_u64)
                .unwrap_or(15)
                .min(3600);
            let id = (*id).to_owned();
            inner.connects.push((id.clone(), timeout));
            match inner.sandboxes.get_mut(&id) {
                Some(s) => {
                    s.expires = s.expires.max(Instant::now() + Duration::from_secs(timeout));
                    (StatusCode::OK, axum::Json(sandbox_json(s, &domain, false))).into_response()
                }
                None => error(
                    StatusCode::NOT_FOUND,
                    &format!("sandbox \"{id}\" doesn't exist or you don't have access to it"),
                ),
            }
        }
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

/// `k=v&k2=v2`, percent-decoded.
fn url_pairs(text: &str) -> Vec<(String, String)> {
    let uri: Uri = format!("/?{text}").parse().unwrap_or_default();
    query_pairs(&uri)
}

fn envd(
    handle: &FakeHandle,
    id: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    match (method.as_str(), uri.path()) {
        ("POST", "/files") => {
            let query = query_pairs(uri);
            let Some(path) = query
                .iter()
                .find(|(k, _)| k == "path")
                .map(|(_, v)| v.clone())
            else {
                return error(StatusCode::BAD_REQUEST, "path is required");
            };
            let content_type = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let Some(bytes) = multipart_file(content_type, body) else {
                return error(StatusCode::BAD_REQUEST, "expected a multipart part `file`");
            };
            if let Some(dir) = std::path::Path::new(&path).parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            match std::fs::write(&path, bytes) {
                Ok(()) => (
                    StatusCode::OK,
                    axum::Json(
                        json!([{ "name": path.rsplit('/').next(), "path": path, "type": "file" }]),
                    ),
                )
                    .into_response(),
                Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
            }
        }
        ("POST", "/process.Process/Start") => {
            if headers.get("content-type").and_then(|v| v.to_str().ok())
                != Some("application/connect+json")
            {
                return error(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "expected application/connect+json",
                );
            }
            let Some(request) = body
                .get(5..)
                .and_then(|json| serde_json::from_slice::<Value>(json).ok())
            else {
                return error(StatusCode::BAD_REQUEST, "expected one Connect envelope");
            };
            let cut = {
                let mut inner = handle.lock();
                let cut = inner.cut_streams > 0;
                inner.cut_streams = inner.cut_streams.saturating_sub(1);
                cut
            };
            match spawn(id, &request["process"], cut) {
                Ok(body) => {
                    let mut response = Response::new(body);
                    super::fake_http::set_header(
                        &mut response,
                        "content-type",
                        "application/connect+json",
                    );
                    response
                }
                Err(e) => error(StatusCode::BAD_REQUEST, &e),
            }
        }
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

fn frame(flags: u8, value: &Value) -> Bytes {
    let json = serde_json::to_vec(value).expect("JSON");
    let mut out = Vec::with_capacity(json.len() + 5);
    out.push(flags);
    out.extend_from_slice(&u32::try_from(json.len()).expect("small").to_be_bytes());
    out.extend_from_slice(&json);
    Bytes::from(out)
}

/// Runs the process, its output as Connect envelopes.
fn spawn(sandbox: &str, process: &Value, cut: bool) -> Result<Body, String> {
    let cmd = process
        .get("cmd")
        .and_then(Value::as_str)
        .ok_or("cmd is required")?;
    let args: Vec<String> = process
        .get("args")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let cwd = process.get("cwd").and_then(Value::as_str).unwrap_or("/");
    let mut command = tokio::process::Command::new(cmd);
    command
        .args(&args)
        .current_dir(cwd)
        .env(MARKER, sandbox)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(envs) = process.get("envs").and_then(Value::as_object) {
        for (k, v) in envs {
            command.env(k, v.as_str().unwrap_or_default());
        }
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start {cmd}: {e}"))?;
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let pid = child.id().unwrap_or(0);
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    tokio::spawn(async move {
        let _ = tx
            .send(frame(0, &json!({"event": {"start": {"pid": pid}}})))
            .await;
        let (mut out_buf, mut err_buf) = ([0u8; 4096], [0u8; 4096]);
        let (mut out_open, mut err_open) = (true, true);
        while out_open || err_open {
            let (field, n) = tokio::select! {
                r = stdout.read(&mut out_buf), if out_open => match r {
                    Ok(0) | Err(_) => { out_open = false; continue; }
                    Ok(n) => ("stdout", n),
                },
                r = stderr.read(&mut err_buf), if err_open => match r {
                    Ok(0) | Err(_) => { err_open = false; continue; }
                    Ok(n) => ("stderr", n),
                },
                () = tx.closed() => return,
            };
            let bytes = if field == "stdout" {
                &out_buf[..n]
            } else {
                &err_buf[..n]
            };
            let event = json!({"event": {"data": {field: base64(bytes)}}});
            if tx.send(frame(0, &event)).await.is_err() {
                return;
            }
        }
        let status = child.wait().await;
        if cut {
            return;
        }
        let code = status.ok().and_then(|s| s.code()).unwrap_or(-1);
        let _ = tx
            .send(frame(
                0,
                &json!({"event": {"end": {"exitCode": code, "exited": true, "status": format!("exit status {code}")}}}),
            ))
            .await;
        let _ = tx.send(frame(2, &json!({}))).await;
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, Infallible>(chunk), rx))
    });
    Ok(Body::from_stream(stream))
}

/// A `GET` forwarded to `127.0.0.1:port` (HTTP/1.0, the whole answer).
async fn forward(port: u16, path: &str) -> Response {
    let Ok(mut conn) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return error(
            StatusCode::BAD_GATEWAY,
            &format!("The sandbox is running but port is not open: {port}"),
        );
    };
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if conn.write_all(request.as_bytes()).await.is_err() {
        return error(StatusCode::BAD_GATEWAY, "write failed");
    }
    let mut raw = Vec::new();
    let _ = conn.read_to_end(&mut raw).await;
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return error(StatusCode::BAD_GATEWAY, "no HTTP answer");
    };
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::BAD_GATEWAY);
    (status, raw[split + 4..].to_vec()).into_response()
}

fn multipart_file(content_type: &str, body: &[u8]) -> Option<Vec<u8>> {
    let boundary = content_type
        .split(';')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("boundary="))?
        .trim_matches('"');
    let find = |hay: &[u8], needle: &[u8], from: usize| {
        hay.get(from..)?
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|p| p + from)
    };
    let delimiter = format!("--{boundary}");
    let start = find(body, delimiter.as_bytes(), 0)?;
    let headers_end = find(body, b"\r\n\r\n", start)?;
    let content_start = headers_end + 4;
    let end = find(body, format!("\r\n{delimiter}").as_bytes(), content_start)?;
    String::from_utf8_lossy(&body[start..headers_end])
        .contains("name=\"file\"")
        .then(|| body[content_start..end].to_vec())
}

/// Kills every process carrying the sandbox's marker.
fn kill_sandbox_processes(sandbox: &str) {
    let needle = format!("{MARKER}={sandbox}");
    let me = std::process::id();
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
            if environ.split(|b| *b == 0).any(|v| v == needle.as_bytes())
                && let Ok(pid) = i32::try_from(pid)
            {
                // SAFETY: kill only takes integers.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("randomness");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}
