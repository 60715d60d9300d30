//! A local, in-memory fake of the Hetzner Cloud API (`/v1/servers`,
//! `/v1/ssh_keys`), following the public API reference: the same paths,
//! JSON shapes, pagination (`per_page` capped at 50), label selectors, error
//! bodies `{"error": {"code", "message", "details"}}` and status codes, rate
//! limit headers on every response, and bearer authentication.
//!
//! Servers start `initializing`, pass through `starting` and are `running`
//! after a configurable boot delay; their IPv4 address is 127.0.0.1. Creating
//! a server appends the public keys of its `ssh_keys` to a configured
//! `authorized_keys` file: that stands for cloud-init, so a test `sshd`
//! reading the file lets the new "server" in.
//!
//! Faults are injected through [`FakeHandle`]: latency, 429s, 503s, capacity
//! errors per server type, and two rate limits — at most N requests served
//! at once (the rest queue) and a token bucket of requests per second
//! (answered 429 with `Retry-After` when empty). Serving, the request log,
//! latency and the faults that are not about resources are the shared
//! harness's (`fake_http`); this file says what is Hetzner's.
//!
//! Status codes for errors follow Hetzner's documentation and observed
//! responses: 400 `invalid_input`/`json_error`, 401 `unauthorized`, 403
//! `forbidden`/`resource_limit_exceeded`, 404 `not_found`, 405
//! `method_not_allowed`, 409 `uniqueness_error`, 412 `resource_unavailable`
//! (the status Hetzner answers placement failures with), 429
//! `rate_limit_exceeded`, 503 `unavailable`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

pub use super::fake_http::LoggedRequest;
use super::fake_http::{
    Access, FakeServer, Harness, Reply, Route, Storm, json_error, query_pairs, set_header,
};

/// The token the fake accepts unless configured otherwise.
pub const TOKEN: &str = "fake-hcloud-token";
/// The hourly request budget reported in `RateLimit-Limit`.
const RATE_LIMIT: u64 = 3600;

/// How the fake starts.
#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// The bearer token requests must carry.
    pub token: String,
    /// How long a new server takes to be `running`.
    pub boot_delay: Duration,
    /// Where the public keys of a new server's `ssh_keys` are appended.
    pub authorized_keys: Option<PathBuf>,
    /// The IPv4 address of created servers.
    pub ipv4: String,
    /// Deleting a server kills the processes on this machine that carry
    /// its lease (`CRABBOX_LEASE_ID=<its lease label>`), as deleting a real
    /// server ends everything running on it (for fakes whose servers are
    /// the test sshd).
    pub kill_on_delete: bool,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            token: TOKEN.to_owned(),
            boot_delay: Duration::from_millis(100),
            authorized_keys: None,
            ipv4: "127.0.0.1".to_owned(),
            kill_on_delete: false,
        }
    }
}

#[derive(Debug, Clone)]
struct ServerRec {
    id: u64,
    name: String,
    created: String,
    /// `None` for planted servers (running from the start).
    booted_at: Option<Instant>,
    labels: BTreeMap<String, String>,
    server_type: String,
    image: String,
    location: String,
    ipv4: Option<String>,
    /// The server's JSON text, kept once it is `running` (until it changes):
    /// listing a 1,000-server pond then costs the fake next to nothing.
    text: Option<String>,
}

#[derive(Debug, Clone)]
struct KeyRec {
    id: u64,
    name: String,
    public_key: String,
    fingerprint: String,
    labels: BTreeMap<String, String>,
    created: String,
}

/// The faults only Hetzner's resources know of; the rest are the harness's.
#[derive(Debug, Default)]
struct Faults {
    lose_create_answers: u32,
    /// Server type → capacity error code.
    capacity: HashMap<String, String>,
}

#[derive(Debug)]
struct Inner {
    config: FakeConfig,
    next_id: u64,
    servers: BTreeMap<u64, ServerRec>,
    keys: BTreeMap<u64, KeyRec>,
    faults: Faults,
    remaining: u64,
    /// The servers a listing matched (its selector and name, no status
    /// filter), kept for the listing's other pages: matching every server
    /// against the selector for each page cost ~10 ms a page at 10,000
    /// servers, under the lock — the fake, not the client, set the pace.
    /// Dropped whenever a server is added, removed or relabelled.
    listing: Option<(String, Vec<u64>)>,
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
pub struct FakeHetzner {
    /// `http://127.0.0.1:<port>/v1`.
    pub base_url: String,
    /// Control of the fake.
    pub handle: FakeHandle,
    /// Serving stops when the fake is dropped.
    _server: FakeServer,
}

/// Starts a fake on a free port of 127.0.0.1 (served by a task of the
/// current runtime).
pub async fn start(config: FakeConfig) -> FakeHetzner {
    let bearer = format!("Bearer {}", config.token);
    let handle = FakeHandle {
        inner: Arc::new(Mutex::new(Inner {
            config,
            next_id: 1000,
            servers: BTreeMap::new(),
            keys: BTreeMap::new(),
            faults: Faults::default(),
            remaining: RATE_LIMIT,
            listing: None,
        })),
        http: Harness::default(),
    };
    let auth = Arc::new(move |parts: &axum::http::request::Parts| {
        let header = parts.headers.get("authorization");
        if header.is_some_and(|v| v.as_bytes() == bearer.as_bytes()) {
            Access::Granted
        } else {
            Access::Denied(json_error(
                error_body,
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "unable to authenticate",
            ))
        }
    });
    let routes = Router::new()
        .fallback(handle_request)
        .with_state(handle.clone());
    let app = handle
        .http
        .wrap(routes, auth)
        .layer(axum::middleware::map_response_with_state(
            handle.clone(),
            rate_limit_headers,
        ));
    let server = FakeServer::start("Hetzner", app).await;
    FakeHetzner {
        base_url: format!("{}/v1", server.url),
        handle,
        _server: server,
    }
}

/// 429 `rate_limit_exceeded`, as the hourly budget being spent looks.
fn rate_limited(retry_after: Option<u64>, reset_in: u64, message: &str) -> Response {
    let mut response = json_error(
        error_body,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_exceeded",
        message,
    );
    if let Some(secs) = retry_after {
        set_header(&mut response, "retry-after", &secs.to_string());
    }
    set_header(&mut response, "ratelimit-remaining", "0");
    set_header(
        &mut response,
        "ratelimit-reset",
        &(unix_now() + reset_in).to_string(),
    );
    response
}

fn unavailable() -> Reply {
    Reply::error(
        error_body,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "service temporarily unavailable",
    )
}

impl FakeHandle {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Delays every request by `latency`.
    pub fn set_latency(&self, latency: Duration) {
        self.http.faults.set_latency(latency);
    }

    /// Delays requests of `method` whose path starts with `path_prefix`
    /// (`/v1/ssh_keys`) by `latency` more than the others.
    pub fn set_route_latency(&self, method: &str, path_prefix: &str, latency: Duration) {
        self.http
            .faults
            .add_route_latency(Route::new(method, path_prefix), latency);
    }

    /// Requests of `method` whose path starts with `path_prefix` answer
    /// 503 `unavailable` from now on (`false`: they are served again).
    pub fn set_route_down(&self, method: &str, path_prefix: &str, down: bool) {
        self.http
            .faults
            .set_down(Route::new(method, path_prefix), down.then(unavailable));
    }

    /// How long servers created from now on take to be `running`.
    pub fn set_boot_delay(&self, boot: Duration) {
        let mut inner = self.lock();
        inner.config.boot_delay = boot;
        for s in inner.servers.values_mut() {
            s.text = None;
        }
    }

    /// Serves at most `n` requests at once (each for its whole latency);
    /// later ones wait in arrival order. `None` lifts the limit.
    pub fn set_max_in_flight(&self, n: Option<usize>) {
        self.http.faults.set_max_in_flight(n);
    }

    /// Answers 429 `rate_limit_exceeded` (with `Retry-After`) once more than
    /// `burst` requests arrive faster than `per_second`. `None` lifts it.
    pub fn set_rate_limit(&self, limit: Option<(f64, u32)>) {
        self.http
            .faults
            .set_rate_limit(limit.map(|(per_second, burst)| {
                let reply =
                    Arc::new(|secs| rate_limited(Some(secs), secs, "request rate limit reached"));
                (per_second, burst, reply as _)
            }));
    }

    /// The next `n` (authenticated) requests answer 429
    /// `rate_limit_exceeded`, with `RateLimit-Reset` `retry_after` seconds
    /// ahead (default 1) and, when given, a `Retry-After` header too. They
    /// come after the failures injected before.
    pub fn fail_next_with_429(&self, n: u32, retry_after: Option<u64>) {
        let reply = Reply::new(move || {
            rate_limited(
                retry_after,
                retry_after.unwrap_or(1),
                "limit of 3600 requests per hour reached",
            )
        });
        self.http.faults.queue(Route::any(), n, reply);
    }

    /// From now on, a `fraction` of (authenticated) requests to every
    /// endpoint answer 429 `rate_limit_exceeded` (with `Retry-After: 0`) or
    /// 503 `unavailable`, half each, chosen by a generator seeded with
    /// `seed`. `None` ends the storm.
    pub fn set_storm(&self, storm: Option<(f64, u64)>) {
        self.http
            .faults
            .set_storm(storm.map(|(fraction, seed)| Storm {
                fraction,
                seed,
                replies: vec![
                Reply::error(
                    error_body,
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_exceeded",
                    "limit of 3600 requests per hour reached",
                )
                .with_header("retry-after", "0"),
                unavailable(),
            ],
            }));
    }

    /// The next `n` (authenticated) requests answer 503 `unavailable`,
    /// after the failures injected before.
    pub fn fail_next_with_503(&self, n: u32) {
        self.http.faults.queue(Route::any(), n, unavailable());
    }

    /// The next `n` server creations succeed but answer 503, as when a
    /// proxy loses the answer.
    pub fn lose_next_create_answers(&self, n: u32) {
        self.lock().faults.lose_create_answers = n;
    }

    /// Creating a server of `server_type` fails with the capacity error
    /// `code` (`resource_unavailable`, `resource_limit_exceeded`…).
    pub fn fail_server_type(&self, server_type: &str, code: &str) {
        self.lock()
            .faults
            .capacity
            .insert(server_type.to_owned(), code.to_owned());
    }

    /// Plants a running server (public IPv4 `203.0.113.x`) with these labels.
    pub fn plant_server(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        let rec = ServerRec {
            id,
            name: name.to_owned(),
            created: now_rfc3339(),
            booted_at: None,
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            server_type: "cx23".to_owned(),
            image: "ubuntu-24.04".to_owned(),
            location: "fsn1".to_owned(),
            ipv4: Some(format!("203.0.113.{}", id % 250 + 1)),
            text: None,
        };
        inner.servers.insert(id, rec);
        inner.listing = None;
        id
    }

    /// Plants an SSH key.
    pub fn plant_ssh_key(&self, name: &str, public_key: &str, labels: &[(&str, &str)]) -> u64 {
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        let rec = KeyRec {
            id,
            name: name.to_owned(),
            public_key: public_key.trim().to_owned(),
            fingerprint: fingerprint(public_key).unwrap_or_default(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            created: now_rfc3339(),
        };
        inner.keys.insert(id, rec);
        id
    }

    /// A server as the API shows it, if it exists.
    pub fn server(&self, id: u64) -> Option<Value> {
        let inner = self.lock();
        let boot = inner.config.boot_delay;
        inner.servers.get(&id).map(|s| server_json(s, boot))
    }

    /// Every server as the API shows it, by ID.
    pub fn servers(&self) -> Vec<Value> {
        let inner = self.lock();
        let boot = inner.config.boot_delay;
        inner
            .servers
            .values()
            .map(|s| server_json(s, boot))
            .collect()
    }

    /// Every SSH key as the API shows it, by ID.
    pub fn ssh_keys(&self) -> Vec<Value> {
        self.lock().keys.values().map(key_json).collect()
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.http.log.requests()
    }

    /// Forgets the request log, and with it the in-flight maximum.
    pub fn clear_requests(&self) {
        self.http.log.clear();
    }

    /// The most requests that were served at once (past the in-flight
    /// limit, for their whole latency).
    pub fn max_in_flight(&self) -> usize {
        self.http.log.max_concurrent(|_| true)
    }
}

// ---- the server ----

/// Stamps the rate limit budget on every answer, as Hetzner does; injected
/// 429s keep the `RateLimit-*` values they carry.
async fn rate_limit_headers(State(handle): State<FakeHandle>, mut response: Response) -> Response {
    let remaining = {
        let mut inner = handle.lock();
        inner.remaining = inner.remaining.saturating_sub(1);
        inner.remaining
    };
    set_header(&mut response, "ratelimit-limit", &RATE_LIMIT.to_string());
    let reset = unix_now() + (RATE_LIMIT - remaining);
    for (name, value) in [
        ("ratelimit-remaining", remaining.to_string()),
        ("ratelimit-reset", reset.to_string()),
    ] {
        if !response.headers().contains_key(name) {
            set_header(&mut response, name, &value);
        }
    }
    response
}

/// One request that got past authentication and injected faults.
async fn handle_request(
    State(handle): State<FakeHandle>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    let path = uri.path();
    let query = query_pairs(&uri);
    let body_json: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap_or(Value::Null)
    };
    let mut inner = handle.lock();
    let (status, payload) = if !body.is_empty() && body_json.is_null() {
        error(
            StatusCode::BAD_REQUEST,
            "json_error",
            "invalid JSON in request body",
        )
    } else if method == Method::GET && path.trim_end_matches('/') == "/v1/servers" {
        // Listings are answered as text, built from each server's kept text.
        match list_servers_text(&mut inner, &query) {
            Ok(text) => {
                return (
                    StatusCode::OK,
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    text,
                )
                    .into_response();
            }
            Err(answer) => answer,
        }
    } else {
        route(&mut inner, &method, path, &query, &body_json)
    };
    if status == StatusCode::NO_CONTENT {
        status.into_response()
    } else {
        (status, axum::Json(payload)).into_response()
    }
}

type Answer = (StatusCode, Value);

/// Hetzner's error body.
fn error_body(code: &str, message: &str) -> Value {
    json!({ "error": { "code": code, "message": message, "details": {} } })
}

fn error(status: StatusCode, code: &str, message: &str) -> Answer {
    (status, error_body(code, message))
}

fn invalid_field(field: &str, message: &str) -> Answer {
    (
        StatusCode::BAD_REQUEST,
        json!({ "error": {
            "code": "invalid_input",
            "message": format!("invalid input in field '{field}': {message}"),
            "details": { "fields": [ { "name": field, "messages": [message] } ] },
        } }),
    )
}

fn route(
    inner: &mut Inner,
    method: &Method,
    path: &str,
    query: &[(String, String)],
    body: &Value,
) -> Answer {
    let Some(rest) = path.strip_prefix("/v1/") else {
        return error(StatusCode::NOT_FOUND, "not_found", "not found");
    };
    let segments: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    match segments.as_slice() {
        ["servers"] => match *method {
            Method::GET => list_servers(inner, query),
            Method::POST => create_server(inner, body),
            _ => not_allowed(),
        },
        ["servers", id] => {
            let Ok(id) = id.parse::<u64>() else {
                return invalid_field("id", "must be an integer");
            };
            match *method {
                Method::GET => get_server(inner, id),
                Method::PUT => update_server(inner, id, body),
                Method::DELETE => delete_server(inner, id),
                _ => not_allowed(),
            }
        }
        ["ssh_keys"] => match *method {
            Method::GET => list_keys(inner, query),
            Method::POST => create_key(inner, body),
            _ => not_allowed(),
        },
        ["ssh_keys", id] => {
            let Ok(id) = id.parse::<u64>() else {
                return invalid_field("id", "must be an integer");
            };
            match *method {
                Method::GET => get_key(inner, id),
                Method::PUT => update_key(inner, id, body),
                Method::DELETE => delete_key(inner, id),
                _ => not_allowed(),
            }
        }
        _ => error(StatusCode::NOT_FOUND, "not_found", "not found"),
    }
}

fn not_allowed() -> Answer {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed",
    )
}

// ---- servers ----

fn server_status(s: &ServerRec, boot: Duration) -> &'static str {
    match s.booted_at {
        None => "running",
        Some(at) => {
            let age = at.elapsed();
            if age < boot / 2 {
                "initializing"
            } else if age < boot {
                "starting"
            } else {
                "running"
            }
        }
    }
}

fn server_json(s: &ServerRec, boot: Duration) -> Value {
    json!({
        "id": s.id,
        "name": s.name,
        "status": server_status(s, boot),
        "created": s.created,
        "labels": s.labels,
        "public_net": {
            "ipv4": s.ipv4.as_ref().map(|ip| json!({
                "id": s.id + 100_000, "ip": ip, "blocked": false, "dns_ptr": format!("static.{ip}.clients.your-server.de"),
            })),
            "ipv6": null,
            "floating_ips": [],
            "firewalls": [],
        },
        "private_net": [],
        "server_type": {
            "id": 1,
            "name": s.server_type,
            "description": s.server_type.to_uppercase(),
            "cores": 2,
            "memory": 4.0,
            "disk": 40,
            "storage_type": "local",
            "cpu_type": if s.server_type.starts_with("ccx") { "dedicated" } else { "shared" },
            "architecture": "x86",
        },
        "datacenter": {
            "id": 4,
            "name": format!("{}-dc14", s.location),
            "description": format!("{} DC14", s.location),
            "location": {
                "id": 1,
                "name": s.location,
                "description": format!("{} location", s.location),
                "country": "DE",
                "city": "Falkenstein",
                "network_zone": "eu-central",
            },
        },
        "image": {
            "id": 161_547_269,
            "type": "system",
            "status": "available",
            "name": s.image,
            "os_flavor": "ubuntu",
            "os_version": "24.04",
        },
        "protection": { "delete": false, "rebuild": false },
        "rescue_enabled": false,
        "locked": false,
        "backup_window": null,
        "iso": null,
        "placement_group": null,
        "primary_disk_size": 40,
        "included_traffic": 21_990_232_555_520_u64,
        "ingoing_traffic": 0,
        "outgoing_traffic": 0,
        "volumes": [],
        "load_balancers": [],
    })
}

fn action_json(id: u64, command: &str, resource: u64, kind: &str) -> Value {
    json!({
        "id": id,
        "command": command,
        "status": "running",
        "progress": 0,
        "started": now_rfc3339(),
        "finished": null,
        "resources": [ { "id": resource, "type": kind } ],
        "error": null,
    })
}

/// A page of servers as JSON text: each server's text is kept once it runs.
fn list_servers_text(inner: &mut Inner, query: &[(String, String)]) -> Result<String, Answer> {
    let boot = inner.config.boot_delay;
    let selector = match param(query, "label_selector").map(parse_selector) {
        Some(Ok(s)) => s,
        Some(Err(e)) => return Err(invalid_field("label_selector", &e)),
        None => Vec::new(),
    };
    let name = param(query, "name");
    let statuses: Vec<&str> = query
        .iter()
        .filter(|(k, _)| k == "status")
        .map(|(_, v)| v.as_str())
        .collect();
    // Without a status filter the match does not change with time.
    let key = statuses.is_empty().then(|| {
        format!(
            "{:?} {name:?}",
            param(query, "label_selector").unwrap_or_default()
        )
    });
    let matching: Vec<u64> = match (&inner.listing, &key) {
        (Some((k, ids)), Some(key)) if k == key => ids.clone(),
        _ => {
            let ids: Vec<u64> = inner
                .servers
                .values()
                .filter(|s| name.is_none_or(|n| s.name == n))
                .filter(|s| selector.iter().all(|r| r.matches(&s.labels)))
                .filter(|s| statuses.is_empty() || statuses.contains(&server_status(s, boot)))
                .map(|s| s.id)
                .collect();
            if let Some(key) = key {
                inner.listing = Some((key, ids.clone()));
            }
            ids
        }
    };
    let (page, per_page) = page_of(query)?;
    let mut items = Vec::new();
    for id in matching.iter().skip((page - 1) * per_page).take(per_page) {
        let Some(s) = inner.servers.get_mut(id) else {
            continue;
        };
        if s.text.is_none() {
            let text = server_json(s, boot).to_string();
            if server_status(s, boot) != "running" {
                items.push(text);
                continue;
            }
            s.text = Some(text);
        }
        items.push(s.text.clone().unwrap_or_default());
    }
    let meta = pagination(page, per_page, matching.len());
    Ok(format!(
        "{{\"servers\":[{}],\"meta\":{meta}}}",
        items.join(",")
    ))
}

fn list_servers(inner: &mut Inner, query: &[(String, String)]) -> Answer {
    match list_servers_text(inner, query) {
        Ok(text) => (
            StatusCode::OK,
            serde_json::from_str(&text).expect("the fake's own JSON"),
        ),
        Err(answer) => answer,
    }
}

fn get_server(inner: &Inner, id: u64) -> Answer {
    match inner.servers.get(&id) {
        Some(s) => (
            StatusCode::OK,
            json!({ "server": server_json(s, inner.config.boot_delay) }),
        ),
        None => server_not_found(id),
    }
}

fn server_not_found(id: u64) -> Answer {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        &format!("server with ID '{id}' not found"),
    )
}

fn create_server(inner: &mut Inner, body: &Value) -> Answer {
    let Some(name) = body.get("name").and_then(Value::as_str) else {
        return invalid_field("name", "is required");
    };
    if !valid_hostname(name) {
        return invalid_field("name", "must be a valid hostname");
    }
    let Some(server_type) = body.get("server_type").and_then(Value::as_str) else {
        return invalid_field("server_type", "is required");
    };
    if server_type.is_empty() || !server_type.chars().all(|c| c.is_ascii_alphanumeric()) {
        return invalid_field("server_type", "server type not found");
    }
    let Some(image) = body.get("image").and_then(Value::as_str) else {
        return invalid_field("image", "is required");
    };
    let location = body
        .get("location")
        .and_then(Value::as_str)
        .unwrap_or("fsn1")
        .to_owned();
    let labels = match labels_of(body) {
        Ok(l) => l,
        Err(a) => return a,
    };
    let mut keys = Vec::new();
    for entry in body
        .get("ssh_keys")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
    {
        let found = inner.keys.values().find(|k| match &entry {
            Value::String(s) => k.name == *s || k.id.to_string() == *s,
            Value::Number(n) => n.as_u64() == Some(k.id),
            _ => false,
        });
        match found {
            Some(k) => keys.push(k.public_key.clone()),
            None => return invalid_field("ssh_keys", &format!("SSH key {entry} not found")),
        }
    }
    if let Some(code) = inner.faults.capacity.get(server_type) {
        let status = match code.as_str() {
            "resource_limit_exceeded" | "dedicated_core_limit" => StatusCode::FORBIDDEN,
            _ => StatusCode::PRECONDITION_FAILED,
        };
        return error(
            status,
            code,
            &format!("server type {server_type} is currently not available in {location}"),
        );
    }
    if inner.servers.values().any(|s| s.name == name) {
        return (
            StatusCode::CONFLICT,
            json!({ "error": {
                "code": "uniqueness_error",
                "message": "server name is already used",
                "details": { "fields": [ { "name": "name" } ] },
            } }),
        );
    }
    let enable_ipv4 = body
        .pointer("/public_net/enable_ipv4")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    if let Some(path) = &inner.config.authorized_keys {
        use std::io::Write as _;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open authorized_keys");
        for key in &keys {
            writeln!(file, "{key}").expect("append to authorized_keys");
        }
    }
    let id = inner.next_id;
    inner.next_id += 3;
    let rec = ServerRec {
        id,
        name: name.to_owned(),
        created: now_rfc3339(),
        booted_at: Some(Instant::now()),
        labels,
        server_type: server_type.to_owned(),
        image: image.to_owned(),
        location,
        ipv4: enable_ipv4.then(|| inner.config.ipv4.clone()),
        text: None,
    };
    let server = server_json(&rec, inner.config.boot_delay);
    inner.servers.insert(id, rec);
    inner.listing = None;
    if inner.faults.lose_create_answers > 0 {
        inner.faults.lose_create_answers -= 1;
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "service temporarily unavailable",
        );
    }
    (
        StatusCode::CREATED,
        json!({
            "server": server,
            "action": action_json(id + 1, "create_server", id, "server"),
            "next_actions": [ action_json(id + 2, "start_server", id, "server") ],
            "root_password": null,
        }),
    )
}

fn update_server(inner: &mut Inner, id: u64, body: &Value) -> Answer {
    let labels = if body.get("labels").is_some() {
        match labels_of(body) {
            Ok(l) => Some(l),
            Err(a) => return a,
        }
    } else {
        None
    };
    let name = body.get("name").and_then(Value::as_str);
    if let Some(n) = name
        && !valid_hostname(n)
    {
        return invalid_field("name", "must be a valid hostname");
    }
    let boot = inner.config.boot_delay;
    inner.listing = None;
    let Some(s) = inner.servers.get_mut(&id) else {
        return server_not_found(id);
    };
    if let Some(l) = labels {
        s.labels = l;
    }
    if let Some(n) = name {
        s.name = n.to_owned();
    }
    s.text = None;
    (StatusCode::OK, json!({ "server": server_json(s, boot) }))
}

fn delete_server(inner: &mut Inner, id: u64) -> Answer {
    let Some(server) = inner.servers.remove(&id) else {
        return server_not_found(id);
    };
    inner.listing = None;
    if inner.config.kill_on_delete
        && let Some(lease) = server.labels.get("lease")
    {
        kill_lease_processes(lease);
    }
    let action = inner.next_id;
    inner.next_id += 1;
    (
        StatusCode::OK,
        json!({ "action": action_json(action, "delete_server", id, "server") }),
    )
}

/// SIGKILLs every process of this machine whose environment carries
/// exactly `CRABBOX_LEASE_ID=<lease>`.
fn kill_lease_processes(lease: &str) {
    let marker = format!("CRABBOX_LEASE_ID={lease}");
    for pid in processes_with_env(&marker) {
        // SAFETY: kill(2) only takes integers.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// The processes of this machine (readable by this user) whose
/// environment holds exactly the entry `entry` (`NAME=value`).
pub fn processes_with_env(entry: &str) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|e| e == entry.as_bytes()))
        })
        .collect()
}

// ---- SSH keys ----

fn key_json(k: &KeyRec) -> Value {
    json!({
        "id": k.id,
        "name": k.name,
        "fingerprint": k.fingerprint,
        "public_key": k.public_key,
        "labels": k.labels,
        "created": k.created,
    })
}

fn list_keys(inner: &Inner, query: &[(String, String)]) -> Answer {
    let selector = match param(query, "label_selector").map(parse_selector) {
        Some(Ok(s)) => s,
        Some(Err(e)) => return invalid_field("label_selector", &e),
        None => Vec::new(),
    };
    let name = param(query, "name");
    let fp = param(query, "fingerprint");
    let matching: Vec<Value> = inner
        .keys
        .values()
        .filter(|k| name.is_none_or(|n| k.name == n))
        .filter(|k| fp.is_none_or(|f| k.fingerprint == f))
        .filter(|k| selector.iter().all(|r| r.matches(&k.labels)))
        .map(key_json)
        .collect();
    paginate("ssh_keys", matching, query, std::convert::identity)
}

fn key_not_found(id: u64) -> Answer {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        &format!("ssh_key with ID '{id}' not found"),
    )
}

fn get_key(inner: &Inner, id: u64) -> Answer {
    match inner.keys.get(&id) {
        Some(k) => (StatusCode::OK, json!({ "ssh_key": key_json(k) })),
        None => key_not_found(id),
    }
}

fn create_key(inner: &mut Inner, body: &Value) -> Answer {
    let Some(name) = body
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    else {
        return invalid_field("name", "is required");
    };
    let Some(public_key) = body.get("public_key").and_then(Value::as_str) else {
        return invalid_field("public_key", "is required");
    };
    let Some(fp) = fingerprint(public_key) else {
        return invalid_field("public_key", "invalid public key");
    };
    let labels = match labels_of(body) {
        Ok(l) => l,
        Err(a) => return a,
    };
    let conflict = |field: &str, message: &str| {
        (
            StatusCode::CONFLICT,
            json!({ "error": {
                "code": "uniqueness_error",
                "message": message,
                "details": { "fields": [ { "name": field } ] },
            } }),
        )
    };
    if inner.keys.values().any(|k| k.name == name) {
        return conflict("name", "SSH key with the same name already exists");
    }
    if inner.keys.values().any(|k| k.fingerprint == fp) {
        return conflict(
            "public_key",
            "SSH key with the same fingerprint already exists",
        );
    }
    let id = inner.next_id;
    inner.next_id += 1;
    let rec = KeyRec {
        id,
        name: name.to_owned(),
        public_key: public_key.trim().to_owned(),
        fingerprint: fp,
        labels,
        created: now_rfc3339(),
    };
    let answer = json!({ "ssh_key": key_json(&rec) });
    inner.keys.insert(id, rec);
    (StatusCode::CREATED, answer)
}

fn update_key(inner: &mut Inner, id: u64, body: &Value) -> Answer {
    let labels = if body.get("labels").is_some() {
        match labels_of(body) {
            Ok(l) => Some(l),
            Err(a) => return a,
        }
    } else {
        None
    };
    let Some(k) = inner.keys.get_mut(&id) else {
        return key_not_found(id);
    };
    if let Some(l) = labels {
        k.labels = l;
    }
    if let Some(n) = body.get("name").and_then(Value::as_str) {
        k.name = n.to_owned();
    }
    (StatusCode::OK, json!({ "ssh_key": key_json(k) }))
}

fn delete_key(inner: &mut Inner, id: u64) -> Answer {
    if inner.keys.remove(&id).is_none() {
        return key_not_found(id);
    }
    (StatusCode::NO_CONTENT, Value::Null)
}

// ---- pagination ----

fn param<'a>(query: &'a [(String, String)], name: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// `page` and `per_page` (capped at 50) of a listing.
fn page_of(query: &[(String, String)]) -> Result<(usize, usize), Answer> {
    let page = match param(query, "page").map(str::parse::<usize>) {
        None => 1,
        Some(Ok(p)) if p >= 1 => p,
        Some(_) => return Err(invalid_field("page", "must be a positive integer")),
    };
    let per_page = match param(query, "per_page").map(str::parse::<usize>) {
        None => 25,
        Some(Ok(p)) if p >= 1 => p.min(50),
        Some(_) => return Err(invalid_field("per_page", "must be a positive integer")),
    };
    Ok((page, per_page))
}

/// A listing's `meta`.
fn pagination(page: usize, per_page: usize, total: usize) -> Value {
    let last_page = total.div_ceil(per_page).max(1);
    json!({ "pagination": {
        "page": page,
        "per_page": per_page,
        "previous_page": (page > 1).then(|| page - 1),
        "next_page": (page < last_page).then(|| page + 1),
        "last_page": last_page,
        "total_entries": total,
    } })
}

/// One page of `items`; only that page is turned into JSON (by `to_json`).
fn paginate<T>(
    root: &str,
    items: Vec<T>,
    query: &[(String, String)],
    to_json: impl Fn(T) -> Value,
) -> Answer {
    let (page, per_page) = match page_of(query) {
        Ok(p) => p,
        Err(answer) => return answer,
    };
    let total = items.len();
    let slice: Vec<Value> = items
        .into_iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(to_json)
        .collect();
    (
        StatusCode::OK,
        json!({ root: slice, "meta": pagination(page, per_page, total) }),
    )
}

// ---- label selectors ----

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Self::Equals(k, v) => labels.get(k) == Some(v),
            Self::NotEquals(k, v) => labels.get(k) != Some(v),
            Self::Exists(k) => labels.contains_key(k),
            Self::Absent(k) => !labels.contains_key(k),
            Self::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Self::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
        }
    }
}

/// Parses Hetzner's label selector language; comma means AND.
fn parse_selector(selector: &str) -> Result<Vec<Requirement>, String> {
    let mut terms = Vec::new();
    let mut depth = 0_i32;
    let mut current = String::new();
    for c in selector.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ => {}
        }
        if depth < 0 {
            return Err("unbalanced parentheses".to_owned());
        }
        if c == ',' && depth == 0 {
            terms.push(std::mem::take(&mut current));
        } else {
            current.push(c);
        }
    }
    if depth != 0 {
        return Err("unbalanced parentheses".to_owned());
    }
    terms.push(current);
    terms
        .iter()
        .map(|t| parse_term(t.trim()))
        .collect::<Result<Vec<_>, _>>()
}

fn parse_term(term: &str) -> Result<Requirement, String> {
    let key_ok = |k: &str| {
        !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
    };
    let bad = || format!("invalid label selector term `{term}`");
    if let Some(key) = term.strip_prefix('!') {
        let key = key.trim();
        return if key_ok(key) {
            Ok(Requirement::Absent(key.to_owned()))
        } else {
            Err(bad())
        };
    }
    if let Some((key, rest)) = term.split_once(char::is_whitespace) {
        let rest = rest.trim();
        let (negate, list) = if let Some(l) = rest.strip_prefix("notin") {
            (true, l)
        } else if let Some(l) = rest.strip_prefix("in") {
            (false, l)
        } else {
            return Err(bad());
        };
        let list = list
            .trim()
            .strip_prefix('(')
            .and_then(|l| l.strip_suffix(')'))
            .ok_or_else(bad)?;
        let values: Vec<String> = list.split(',').map(|v| v.trim().to_owned()).collect();
        if !key_ok(key) || values.iter().any(|v| !valid_label_value(v)) {
            return Err(bad());
        }
        return Ok(if negate {
            Requirement::NotIn(key.to_owned(), values)
        } else {
            Requirement::In(key.to_owned(), values)
        });
    }
    let (key, value, negate) = if let Some((k, v)) = term.split_once("!=") {
        (k, v, true)
    } else if let Some((k, v)) = term.split_once("==") {
        (k, v, false)
    } else if let Some((k, v)) = term.split_once('=') {
        (k, v, false)
    } else {
        return if key_ok(term) {
            Ok(Requirement::Exists(term.to_owned()))
        } else {
            Err(bad())
        };
    };
    let (key, value) = (key.trim(), value.trim());
    if !key_ok(key) || !valid_label_value(value) {
        return Err(bad());
    }
    Ok(if negate {
        Requirement::NotEquals(key.to_owned(), value.to_owned())
    } else {
        Requirement::Equals(key.to_owned(), value.to_owned())
    })
}

// ---- validation ----

fn labels_of(body: &Value) -> Result<BTreeMap<String, String>, Answer> {
    let Some(labels) = body.get("labels") else {
        return Ok(BTreeMap::new());
    };
    let Some(map) = labels.as_object() else {
        return Err(invalid_field("labels", "must be an object"));
    };
    let mut out = BTreeMap::new();
    for (k, v) in map {
        let Some(v) = v.as_str() else {
            return Err(invalid_field(
                "labels",
                &format!("value of `{k}` must be a string"),
            ));
        };
        if !valid_label_key(k) {
            return Err(invalid_field("labels", &format!("invalid label key `{k}`")));
        }
        if !valid_label_value(v) {
            return Err(invalid_field(
                "labels",
                &format!("invalid value of label `{k}`"),
            ));
        }
        out.insert(k.clone(), v.to_owned());
    }
    Ok(out)
}

/// 63 characters at most, empty or alphanumeric at both ends with `-_.`
/// and alphanumerics between.
fn valid_label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric())
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
}

/// `[prefix/]name`: the name like a non-empty value, the prefix a DNS
/// subdomain; `hetzner.cloud/` is reserved.
fn valid_label_key(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if name.is_empty() || !valid_label_value(name) {
        return false;
    }
    match prefix {
        None => true,
        Some(p) => {
            p != "hetzner.cloud"
                && !p.is_empty()
                && p.len() <= 253
                && p.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                })
        }
    }
}

/// RFC 1123 host name.
fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

// ---- helpers ----

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now())
        .to_string()
        .replace('Z', "+00:00")
}

/// Hetzner's fingerprint: MD5 of the key blob, as colon-separated hex.
fn fingerprint(public_key: &str) -> Option<String> {
    let mut fields = public_key.split_whitespace();
    let kind = fields.next()?;
    let blob = fields.next()?;
    if !(kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-")) {
        return None;
    }
    let bytes = base64_decode(blob)?;
    Some(
        md5(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":"),
    )
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    };
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0_u32;
    let mut bits = 0;
    for &c in s {
        acc = (acc << 6) | value(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff).ok()?);
        }
    }
    (!out.is_empty()).then_some(out)
}

/// RFC 1321.
fn md5(input: &[u8]) -> [u8; 16] {
    const S: [u32; 64] = [
        7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5,
        9, 14, 20, 5, 9, 14, 20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10,
        15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
    ];
    let k: Vec<u32> = (0..64)
        .map(|i: i32| {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let v = (f64::from(i + 1).sin().abs() * 4_294_967_296.0) as u32;
            v
        })
        .collect();
    let mut msg = input.to_vec();
    let bit_len = (input.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_le_bytes());
    let (mut a0, mut b0, mut c0, mut d0) = (
        0x6745_2301_u32,
        0xefcd_ab89_u32,
        0x98ba_dcfe_u32,
        0x1032_5476_u32,
    );
    for chunk in msg.chunks(64) {
        let m: Vec<u32> = chunk
            .chunks(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect();
        let (mut a, mut b, mut c, mut d) = (a0, b0, c0, d0);
        for i in 0..64 {
            let (f, g) = match i / 16 {
                0 => ((b & c) | (!b & d), i),
                1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                2 => (b ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (b | !d), (7 * i) % 16),
            };
            let f = f.wrapping_add(a).wrapping_add(k[i]).wrapping_add(m[g]);
            a = d;
            d = c;
            c = b;
            b = b.wrapping_add(f.rotate_left(S[i]));
        }
        a0 = a0.wrapping_add(a);
        b0 = b0.wrapping_add(b);
        c0 = c0.wrapping_add(c);
        d0 = d0.wrapping_add(d);
    }
    let mut out = [0_u8; 16];
    for (i, word) in [a0, b0, c0, d0].iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&word.to_le_bytes());
    }
    out
}

#[test]
fn the_fake_parses_label_selectors_like_hetzner() {
    let labels: BTreeMap<String, String> = [("env", "prod"), ("tier", "db"), ("crabbox", "true")]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let ok = |s: &str| {
        parse_selector(s)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .iter()
            .all(|r| r.matches(&labels))
    };
    assert!(ok("env=prod"));
    assert!(ok("env==prod,crabbox=true"));
    assert!(ok("env!=dev"));
    assert!(ok("missing!=x"));
    assert!(ok("tier"));
    assert!(ok("!missing"));
    assert!(ok("env in (dev,prod)"));
    assert!(ok("env notin (dev,staging),tier in (db)"));
    assert!(!ok("env=dev"));
    assert!(!ok("!tier"));
    assert!(!ok("env notin (prod)"));
    assert!(!ok("env=prod,tier=web"));
    assert!(parse_selector("env in (a,b").is_err());
    assert!(parse_selector("=x").is_err());
}

#[test]
fn the_fake_fingerprints_keys_with_md5() {
    assert_eq!(
        md5(b"")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
        "d41d8cd98f00b204e9800998ecf8427e"
    );
    assert_eq!(
        md5(b"The quick brown fox jumps over the lazy dog")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
        "9e107d9d372bb6826bd81d3542a419d6"
    );
    assert_eq!(base64_decode("aGVsbG8="), Some(b"hello".to_vec()));
}

/// The match a listing keeps for its other pages follows every change of
/// the servers: a relabelled, a new and a deleted server show on the next
/// page read.
#[tokio::test]
async fn a_listing_sees_servers_change_between_its_pages() {
    let fake = start(FakeConfig::default()).await;
    let client = reqwest::Client::new();
    let ids: Vec<u64> = (0..3)
        .map(|i| fake.handle.plant_server(&format!("s{i}"), &[("pond", "a")]))
        .collect();
    let page = |page: u32| {
        let request = client
            .get(format!("{}/servers", fake.base_url))
            .bearer_auth(TOKEN)
            .query(&[("label_selector", "pond=a"), ("per_page", "1")])
            .query(&[("page", page)])
            .send();
        async move {
            let body: Value = request.await.expect("listed").json().await.expect("JSON");
            (
                body["servers"]
                    .as_array()
                    .expect("servers")
                    .iter()
                    .map(|s| s["id"].as_u64().expect("id"))
                    .collect::<Vec<u64>>(),
                body["meta"]["pagination"]["total_entries"].as_u64(),
            )
        }
    };
    assert_eq!(page(1).await, (vec![ids[0]], Some(3)));
    let relabel = client
        .put(format!("{}/servers/{}", fake.base_url, ids[1]))
        .bearer_auth(TOKEN)
        .json(&json!({ "labels": { "pond": "b" } }))
        .send()
        .await
        .expect("relabelled");
    assert_eq!(relabel.status(), 200);
    assert_eq!(page(2).await, (vec![ids[2]], Some(2)), "relabelled away");
    let planted = fake.handle.plant_server("s3", &[("pond", "a")]);
    assert_eq!(page(3).await, (vec![planted], Some(3)), "a new server");
    let deleted = client
        .delete(format!("{}/servers/{}", fake.base_url, ids[0]))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("deleted");
    assert!(deleted.status().is_success());
    assert_eq!(page(1).await, (vec![ids[2]], Some(2)), "a deleted server");
}

#[tokio::test]
async fn the_fake_limits_concurrency_and_request_rate_and_sets_boot_time() {
    let fake = start(FakeConfig::default()).await;
    let client = reqwest::Client::new();
    let get = || {
        client
            .get(format!("{}/servers", fake.base_url))
            .bearer_auth(TOKEN)
            .send()
    };
    fake.handle.set_latency(Duration::from_millis(30));
    fake.handle.set_max_in_flight(Some(2));
    let started = Instant::now();
    let answers = futures_util::future::join_all((0..6).map(|_| get())).await;
    assert!(
        answers
            .iter()
            .all(|a| a.as_ref().is_ok_and(|r| r.status() == 200))
    );
    assert_eq!(fake.handle.max_in_flight(), 2, "two served at once");
    assert!(
        started.elapsed() >= Duration::from_millis(90),
        "six requests, two at a time, 30 ms each: three rounds"
    );

    fake.handle.set_max_in_flight(None);
    fake.handle.set_latency(Duration::ZERO);
    fake.handle.set_rate_limit(Some((1.0, 2)));
    assert_eq!(get().await.expect("first").status(), 200);
    assert_eq!(get().await.expect("second").status(), 200);
    let limited = get().await.expect("third");
    assert_eq!(limited.status(), 429, "the burst of two is spent");
    assert_eq!(limited.headers()["retry-after"], "1");
    fake.handle.set_rate_limit(None);
    assert_eq!(get().await.expect("unlimited").status(), 200);

    fake.handle.set_boot_delay(Duration::ZERO);
    let created: Value = client
        .post(format!("{}/servers", fake.base_url))
        .bearer_auth(TOKEN)
        .json(&json!({ "name": "a", "server_type": "cx23", "image": "ubuntu-24.04" }))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("JSON");
    assert_eq!(created["server"]["status"], "running", "no boot delay");
}
