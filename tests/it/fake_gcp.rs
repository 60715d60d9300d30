//! A local, in-memory fake of the Compute Engine API (`compute/v1`) and of
//! Google's OAuth token endpoint, written from the public discovery document
//! and API reference: the same paths (`/compute/v1/projects/{project}/…`),
//! JSON shapes (`compute#instance`, `compute#operation`,
//! `compute#instanceAggregatedList`, `compute#firewall`), long-running
//! operations (answered `RUNNING`, `DONE` once waited for or read; errors
//! inside the operation: `error.errors[{code, message}]` with
//! `httpErrorStatusCode`), label fingerprints (a `setLabels` with a stale one
//! is 412 `conditionNotMet`), Google's error body `{"error": {"code",
//! "message", "errors": [{"reason", "domain", "message"}]}}`, label rules
//! (keys `[a-z][a-z0-9_-]{0,62}`, values `[a-z0-9_-]{0,63}`), the
//! aggregated list's `filter` (`labels.K=V` terms joined by `AND`),
//! `maxResults` (at most 500) and `pageToken` paging, and bearer tokens the
//! token endpoint issued.
//!
//! The token endpoint (`/token`) takes the three grants crabbox and
//! Google's client libraries send: a service account's JWT assertion
//! (`urn:ietf:params:oauth:grant-type:jwt-bearer`, its `aud` checked against
//! this endpoint and its RS256 signature against the key the test
//! registered), a refresh token, and an STS token exchange. Compute calls
//! carry a token it issued, or a service account's self-signed JWT (what
//! Google's client libraries send), verified against the same key.
//!
//! VMs are `PROVISIONING`, then `STAGING`, then `RUNNING` after a configured
//! number of reads, with the external address 127.0.0.1; creating one
//! appends the keys of its `ssh-keys` metadata to a configured
//! `authorized_keys` file (standing for the guest agent), so the tests' sshd
//! lets the "VM" in.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};

pub use super::fake_http::LoggedRequest;
use super::fake_http::{Access, FakeServer, Harness, query_pairs};

/// Compute Engine's page-size maximum.
const MAX_RESULTS: usize = 500;

/// How the fake starts.
#[derive(Debug, Clone, Default)]
pub struct GcpConfig {
    /// Where the keys of a new VM's `ssh-keys` metadata are appended.
    pub authorized_keys: Option<PathBuf>,
    /// How many reads of a new VM see it before it is `RUNNING`.
    pub boot_reads: u32,
    /// The service account key (PKCS#8 DER) whose assertions are accepted.
    pub service_account_key: Option<Vec<u8>>,
}

/// How an insert is refused.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// The insert is accepted, and its operation ends with this error code
    /// (`ZONE_RESOURCE_POOL_EXHAUSTED`, `QUOTA_EXCEEDED`).
    Operation(&'static str),
    /// The insert itself is answered with this status and reason.
    Http(u16, &'static str),
}

#[derive(Debug, Default)]
struct Inner {
    config: GcpConfig,
    next_id: u64,
    /// `(project, zone, name)` → instance.
    instances: BTreeMap<(String, String, String), Vec<u8>>,
    /// Reads of each instance so far (for its boot).
    reads: BTreeMap<(String, String, String), u32>,
    /// `(project, name)` → firewall.
    firewalls: BTreeMap<(String, String), Value>,
    /// Operation name → operation (made `DONE` when read).
    operations: BTreeMap<String, Value>,
    /// `(machine type, spot)` → how its insert is refused.
    refusals: Vec<(String, Option<bool>, Refusal)>,
    /// Zones an aggregated list reports unreachable.
    unreachable: Vec<String>,
    /// Tokens issued.
    tokens: Vec<String>,
    /// New VMs stop (`TERMINATED`) instead of running, as a preempted spot VM.
    stop_while_booting: bool,
}

/// Control of a running fake; clones share it.
#[derive(Debug, Clone)]
pub struct GcpHandle {
    inner: Arc<Mutex<Inner>>,
    /// The request log and faults.
    pub http: Harness,
}

/// A running fake.
#[derive(Debug)]
pub struct FakeGcp {
    /// `http://127.0.0.1:<port>/compute/v1`.
    pub compute_url: String,
    /// `http://127.0.0.1:<port>`: the host Google's clients are pointed at.
    pub root_url: String,
    /// `http://127.0.0.1:<port>/token`.
    pub token_url: String,
    pub handle: GcpHandle,
    _server: FakeServer,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Google's error body.
fn error(status: u16, reason: &str, message: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    (
        code,
        axum::Json(json!({ "error": {
            "code": status,
            "message": message,
            "errors": [{ "message": message, "domain": "global", "reason": reason }],
        }})),
    )
        .into_response()
}

/// Starts a fake on a free port of 127.0.0.1.
pub async fn start(config: GcpConfig) -> FakeGcp {
    let handle = GcpHandle {
        inner: Arc::new(Mutex::new(Inner {
            config,
            next_id: 4_000_000_000,
            ..Inner::default()
        })),
        http: Harness::default(),
    };
    let tokens = handle.inner.clone();
    let auth = Arc::new(move |parts: &axum::http::request::Parts| {
        // The token endpoint, the metadata server and the OIDC token URL
        // check their own credentials.
        if matches!(parts.uri.path(), "/token" | "/oidc")
            || parts.uri.path().starts_with("/computeMetadata/")
        {
            return Access::Open;
        }
        let header = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let bearer = header.strip_prefix("Bearer ").unwrap_or_default();
        let inner = lock(&tokens);
        // A token the endpoint issued, or a service account's self-signed
        // JWT (what Google's client libraries send instead of an exchange).
        let accepted = inner.tokens.iter().any(|k| k == bearer)
            || check_jwt(bearer, inner.config.service_account_key.as_deref(), false).is_ok();
        if accepted {
            Access::Granted
        } else {
            Access::Denied(error(
                401,
                "authError",
                "Request had invalid authentication credentials. Expected OAuth 2 access token.",
            ))
        }
    });
    let routes = Router::new().fallback(serve).with_state(handle.clone());
    let app = handle.http.wrap(routes, auth);
    let server = FakeServer::start("Compute Engine", app).await;
    FakeGcp {
        compute_url: format!("{}/compute/v1", server.url),
        root_url: server.url.clone(),
        token_url: format!("{}/token", server.url),
        handle,
        _server: server,
    }
}

impl GcpHandle {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    /// Refuses inserts of `machine_type` (as spot, as standard, or either
    /// when `None`).
    pub fn refuse(&self, machine_type: &str, spot: Option<bool>, how: Refusal) {
        self.lock()
            .refusals
            .push((machine_type.to_owned(), spot, how));
    }

    /// Aggregated lists report `zone` unreachable.
    pub fn set_unreachable(&self, zones: &[&str]) {
        self.lock().unreachable = zones.iter().map(|z| format!("zones/{z}")).collect();
    }

    /// New VMs stop while booting (`TERMINATED`), as preempted spot VMs do.
    pub fn stop_while_booting(&self, on: bool) {
        self.lock().stop_while_booting = on;
    }

    /// Every instance, as JSON.
    pub fn instances(&self) -> Vec<Value> {
        self.lock()
            .instances
            .values()
            .map(|v| serde_json::from_slice(v).expect("stored JSON"))
            .collect()
    }

    /// Every firewall rule.
    pub fn firewalls(&self) -> Vec<Value> {
        self.lock().firewalls.values().cloned().collect()
    }

    /// Plants an instance (one crabbox did not make, or made earlier).
    pub fn plant(&self, project: &str, zone: &str, name: &str, labels: &[(&str, &str)]) {
        let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
        let mut inner = self.lock();
        inner.next_id += 1;
        let id = inner.next_id;
        let instance = new_instance(
            project,
            zone,
            name,
            id,
            &json!({
                "labels": labels,
                "machineType": format!("zones/{zone}/machineTypes/e2-small"),
            }),
        );
        inner.instances.insert(
            (project.to_owned(), zone.to_owned(), name.to_owned()),
            serde_json::to_vec(&instance).expect("JSON"),
        );
        inner.reads.insert(
            (project.to_owned(), zone.to_owned(), name.to_owned()),
            u32::MAX,
        );
    }

    /// Plants a firewall rule (one crabbox did not make).
    pub fn plant_firewall(&self, project: &str, name: &str, description: &str) {
        self.lock().firewalls.insert(
            (project.to_owned(), name.to_owned()),
            json!({ "kind": "compute#firewall", "name": name, "description": description, "direction": "INGRESS" }),
        );
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.http.log.requests()
    }
}

/// A label fingerprint: a hash of the labels (any change changes it).
fn fingerprint(labels: &Value) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(labels.to_string().as_bytes());
    base64::engine::general_purpose::STANDARD.encode(&digest[..8])
}

/// Why `labels` break Compute Engine's label rules.
fn label_problem(labels: &Value) -> Option<String> {
    let map = labels.as_object()?;
    if map.len() > 64 {
        return Some("at most 64 labels".to_owned());
    }
    for (k, v) in map {
        let v = v.as_str().unwrap_or("\u{0}");
        let key_ok = k.len() <= 63
            && k.starts_with(|c: char| c.is_ascii_lowercase())
            && k.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        let value_ok = v.len() <= 63
            && v.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !key_ok || !value_ok {
            return Some(format!(
                "Invalid value for field 'resource.labels': '{k}={v}'. Label keys and values can only contain lowercase letters, numeric characters, underscores and dashes."
            ));
        }
    }
    None
}

fn new_instance(project: &str, zone: &str, name: &str, id: u64, body: &Value) -> Value {
    let labels = body.get("labels").cloned().unwrap_or_else(|| json!({}));
    let base = format!("https://www.googleapis.com/compute/v1/projects/{project}");
    let machine = body["machineType"].as_str().unwrap_or_default();
    let mut interfaces = body
        .get("networkInterfaces")
        .cloned()
        .unwrap_or_else(|| json!([{ "accessConfigs": [{ "type": "ONE_TO_ONE_NAT" }] }]));
    for (i, nic) in interfaces.as_array_mut().into_iter().flatten().enumerate() {
        nic["name"] = format!("nic{i}").into();
        nic["networkIP"] = "10.154.0.2".into();
        for ac in nic["accessConfigs"].as_array_mut().into_iter().flatten() {
            ac["natIP"] = "127.0.0.1".into();
            ac["kind"] = "compute#accessConfig".into();
        }
    }
    json!({
        "kind": "compute#instance",
        "id": id.to_string(),
        "creationTimestamp": "2026-01-01T00:00:00.000-07:00",
        "name": name,
        "zone": format!("{base}/zones/{zone}"),
        "machineType": format!("{base}/{}", machine.trim_start_matches('/')),
        "status": "PROVISIONING",
        "labels": labels,
        "labelFingerprint": fingerprint(&labels),
        "tags": body.get("tags").cloned().unwrap_or_else(|| json!({})),
        "metadata": body.get("metadata").cloned().unwrap_or_else(|| json!({})),
        "scheduling": body.get("scheduling").cloned().unwrap_or_else(|| json!({ "provisioningModel": "STANDARD" })),
        "networkInterfaces": interfaces,
        "disks": body.get("disks").cloned().unwrap_or_else(|| json!([])),
        "selfLink": format!("{base}/zones/{zone}/instances/{name}"),
    })
}

/// A new operation on `target` (zonal when `zone` is given), `RUNNING`
/// until read; `error` (code, HTTP status) is what it ends with.
fn operation(
    inner: &mut Inner,
    project: &str,
    zone: Option<&str>,
    kind: &str,
    target: &str,
    error: Option<(&str, u16)>,
) -> Value {
    inner.next_id += 1;
    let name = format!("operation-{}-{kind}", inner.next_id);
    let base = format!("https://www.googleapis.com/compute/v1/projects/{project}");
    let mut op = json!({
        "kind": "compute#operation",
        "id": inner.next_id.to_string(),
        "name": name,
        "operationType": kind,
        "targetLink": format!("{base}/{target}"),
        "status": "RUNNING",
        "progress": 0,
        "insertTime": "2026-01-01T00:00:00.000-07:00",
        "selfLink": match zone {
            Some(z) => format!("{base}/zones/{z}/operations/{name}"),
            None => format!("{base}/global/operations/{name}"),
        },
    });
    if let Some(z) = zone {
        op["zone"] = format!("{base}/zones/{z}").into();
    }
    if let Some((code, status)) = error {
        op["error"] = json!({ "errors": [{ "code": code, "message": format!("The zone does not have enough resources available to fulfill the request ({code}).") }] });
        op["httpErrorStatusCode"] = status.into();
        op["httpErrorMessage"] = "SERVICE UNAVAILABLE".into();
    }
    inner.operations.insert(name, op.clone());
    op
}

async fn serve(
    State(handle): State<GcpHandle>,
    method: Method,
    uri: Uri,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    if path == "/token" {
        return token(&handle, &body);
    }
    if path == "/oidc" {
        // A CI's OIDC token URL (GitHub Actions' `ACTIONS_ID_TOKEN_REQUEST_URL`):
        // its bearer token in, `{"value": <JWT>}` out.
        return if headers
            .get("authorization")
            .is_some_and(|v| v == "Bearer ci-request-token")
        {
            axum::Json(
                json!({ "count": 1, "value": "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJyZXBvOngifQ.c2ln" }),
            )
            .into_response()
        } else {
            error(401, "unauthorized", "no request token")
        };
    }
    if let Some(what) = path.strip_prefix("/computeMetadata/v1/") {
        // The metadata server: `Metadata-Flavor: Google` or nothing.
        if headers.get("metadata-flavor").is_none_or(|v| v != "Google") {
            return (
                StatusCode::FORBIDDEN,
                "Missing Metadata-Flavor:Google header.",
            )
                .into_response();
        }
        return match what {
            "project/project-id" => "metadata-project".into_response(),
            "instance/service-accounts/default/token" => {
                let mut inner = handle.lock();
                inner.next_id += 1;
                let token = format!("ya29.metadata-{}", inner.next_id);
                inner.tokens.push(token.clone());
                axum::Json(
                    json!({ "access_token": token, "expires_in": 3599, "token_type": "Bearer" }),
                )
                .into_response()
            }
            _ => (StatusCode::NOT_FOUND, "not found").into_response(),
        };
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let query: BTreeMap<String, String> = query_pairs(&uri).into_iter().collect();
    let Some(rest) = path.strip_prefix("/compute/v1/projects/") else {
        return error(
            404,
            "notFound",
            &format!("The requested URL {path} was not found."),
        );
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let mut inner = handle.lock();
    match (method.as_str(), parts.as_slice()) {
        ("POST", [project, "zones", zone, "instances"]) => insert(&mut inner, project, zone, &body),
        ("GET", [project, "zones", zone, "instances", name]) => {
            let key = (
                (*project).to_owned(),
                (*zone).to_owned(),
                (*name).to_owned(),
            );
            let boot = inner.config.boot_reads;
            let stops = inner.stop_while_booting;
            let reads = inner.reads.entry(key.clone()).or_insert(0);
            *reads = reads.saturating_add(1);
            let reads = *reads;
            let Some(stored) = inner.instances.get_mut(&key) else {
                return not_found("instance", project, name);
            };
            let mut instance: Value = serde_json::from_slice(stored).expect("stored");
            if instance["status"] != "RUNNING" {
                instance["status"] = if stops && reads > 1 {
                    "TERMINATED"
                } else if reads > boot {
                    "RUNNING"
                } else if reads * 2 > boot {
                    "STAGING"
                } else {
                    "PROVISIONING"
                }
                .into();
                *stored = serde_json::to_vec(&instance).expect("JSON");
            }
            axum::Json(instance).into_response()
        }
        ("DELETE", [project, "zones", zone, "instances", name]) => {
            let key = (
                (*project).to_owned(),
                (*zone).to_owned(),
                (*name).to_owned(),
            );
            if inner.instances.remove(&key).is_none() {
                return not_found("instance", project, name);
            }
            let target = format!("zones/{zone}/instances/{name}");
            axum::Json(operation(
                &mut inner,
                project,
                Some(zone),
                "delete",
                &target,
                None,
            ))
            .into_response()
        }
        ("POST", [project, "zones", zone, "instances", name, "setLabels"]) => {
            let key = (
                (*project).to_owned(),
                (*zone).to_owned(),
                (*name).to_owned(),
            );
            let Some(stored) = inner.instances.get(&key) else {
                return not_found("instance", project, name);
            };
            let mut instance: Value = serde_json::from_slice(stored).expect("stored");
            if body["labelFingerprint"] != instance["labelFingerprint"] {
                return error(
                    412,
                    "conditionNotMet",
                    "Labels fingerprint either invalid or resource labels have changed",
                );
            }
            let labels = body.get("labels").cloned().unwrap_or_else(|| json!({}));
            if let Some(problem) = label_problem(&labels) {
                return error(400, "invalid", &problem);
            }
            instance["labelFingerprint"] = fingerprint(&labels).into();
            instance["labels"] = labels;
            inner
                .instances
                .insert(key, serde_json::to_vec(&instance).expect("JSON"));
            let target = format!("zones/{zone}/instances/{name}");
            axum::Json(operation(
                &mut inner,
                project,
                Some(zone),
                "setLabels",
                &target,
                None,
            ))
            .into_response()
        }
        ("GET", [project, "aggregated", "instances"]) => aggregated(&inner, project, &query),
        (
            "GET" | "POST",
            [_, "zones", _, "operations", name]
            | [_, "zones", _, "operations", name, "wait"]
            | [_, "global", "operations", name]
            | [_, "global", "operations", name, "wait"],
        ) => {
            let Some(op) = inner.operations.get_mut(*name) else {
                return error(
                    404,
                    "notFound",
                    &format!("The resource 'operations/{name}' was not found"),
                );
            };
            op["status"] = "DONE".into();
            op["progress"] = 100.into();
            axum::Json(op.clone()).into_response()
        }
        ("GET", [project, "global", "firewalls", name]) => {
            match inner
                .firewalls
                .get(&((*project).to_owned(), (*name).to_owned()))
            {
                Some(f) => axum::Json(f.clone()).into_response(),
                None => not_found("firewall", project, name),
            }
        }
        ("POST", [project, "global", "firewalls"]) => {
            let Some(name) = body["name"].as_str().map(str::to_owned) else {
                return error(
                    400,
                    "required",
                    "Required field 'resource.name' not specified",
                );
            };
            let key = ((*project).to_owned(), name.clone());
            if inner.firewalls.contains_key(&key) {
                return error(
                    409,
                    "alreadyExists",
                    &format!(
                        "The resource 'projects/{project}/global/firewalls/{name}' already exists"
                    ),
                );
            }
            let mut firewall = body.clone();
            firewall["kind"] = "compute#firewall".into();
            firewall["selfLink"] = format!(
                "https://www.googleapis.com/compute/v1/projects/{project}/global/firewalls/{name}"
            )
            .into();
            inner.firewalls.insert(key, firewall);
            let target = format!("global/firewalls/{name}");
            axum::Json(operation(
                &mut inner, project, None, "insert", &target, None,
            ))
            .into_response()
        }
        _ => error(
            404,
            "notFound",
            &format!("The requested URL {path} was not found."),
        ),
    }
}

fn not_found(what: &str, project: &str, name: &str) -> Response {
    error(
        404,
        "notFound",
        &format!("The resource 'projects/{project}/…/{what}s/{name}' was not found"),
    )
}

fn insert(inner: &mut Inner, project: &str, zone: &str, body: &Value) -> Response {
    let Some(name) = body["name"].as_str().map(str::to_owned) else {
        return error(
            400,
            "required",
            "Required field 'resource.name' not specified",
        );
    };
    let name_ok = name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !name_ok {
        return error(
            400,
            "invalid",
            &format!(
                "Invalid value for field 'resource.name': '{name}'. Must be a match of regex '(?:[a-z](?:[-a-z0-9]{{0,61}}[a-z0-9])?)'"
            ),
        );
    }
    let Some(machine) = body["machineType"].as_str() else {
        return error(
            400,
            "required",
            "Required field 'resource.machineType' not specified",
        );
    };
    if let Some(problem) = label_problem(body.get("labels").unwrap_or(&json!({}))) {
        return error(400, "invalid", &problem);
    }
    let key = (project.to_owned(), zone.to_owned(), name.clone());
    if inner.instances.contains_key(&key) {
        return error(
            409,
            "alreadyExists",
            &format!(
                "The resource 'projects/{project}/zones/{zone}/instances/{name}' already exists"
            ),
        );
    }
    let machine_type = machine.rsplit('/').next().unwrap_or_default().to_owned();
    let spot = body["scheduling"]["provisioningModel"] == "SPOT";
    let refusal = inner
        .refusals
        .iter()
        .find(|(t, s, _)| *t == machine_type && s.is_none_or(|s| s == spot))
        .map(|(_, _, r)| r.clone());
    let target = format!("zones/{zone}/instances/{name}");
    match refusal {
        Some(Refusal::Http(status, reason)) => {
            return error(
                status,
                reason,
                &format!("Quota 'CPUS' exceeded. Limit: 8.0 in region {zone} ({machine_type})."),
            );
        }
        Some(Refusal::Operation(code)) => {
            let status = if code.starts_with("QUOTA") { 403 } else { 503 };
            let op = operation(
                inner,
                project,
                Some(zone),
                "insert",
                &target,
                Some((code, status)),
            );
            return axum::Json(op).into_response();
        }
        None => {}
    }
    inner.next_id += 1;
    let id = inner.next_id;
    let instance = new_instance(project, zone, &name, id, body);
    if let Some(path) = &inner.config.authorized_keys {
        use std::io::Write as _;
        let keys: Vec<String> = instance["metadata"]["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i["key"] == "ssh-keys")
            .filter_map(|i| i["value"].as_str())
            .flat_map(|v| v.lines().map(str::to_owned).collect::<Vec<_>>())
            .filter_map(|l| l.split_once(':').map(|(_, k)| k.to_owned()))
            .collect();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open authorized_keys");
        for k in keys {
            writeln!(file, "{k}").expect("append to authorized_keys");
        }
    }
    inner
        .instances
        .insert(key.clone(), serde_json::to_vec(&instance).expect("JSON"));
    inner.reads.insert(key, 0);
    axum::Json(operation(
        inner,
        project,
        Some(zone),
        "insert",
        &target,
        None,
    ))
    .into_response()
}

/// The `labels.K=V` terms of a filter (`labels.a=b AND labels.c = "d"`,
/// terms optionally parenthesised).
fn filter_terms(filter: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for term in filter.split(" AND ") {
        let term = term
            .trim()
            .trim_start_matches('(')
            .trim_end_matches(')')
            .trim();
        if term.is_empty() {
            continue;
        }
        let Some((k, v)) = term.split_once('=') else {
            return Err(format!("Invalid list filter expression '{filter}'."));
        };
        let Some(label) = k.trim().strip_prefix("labels.") else {
            return Err(format!("Invalid list filter expression '{filter}'."));
        };
        out.push((label.to_owned(), v.trim().trim_matches('"').to_owned()));
    }
    Ok(out)
}

fn aggregated(inner: &Inner, project: &str, query: &BTreeMap<String, String>) -> Response {
    let terms = match filter_terms(query.get("filter").map_or("", String::as_str)) {
        Ok(t) => t,
        Err(e) => return error(400, "invalid", &e),
    };
    let size = query
        .get("maxResults")
        .and_then(|m| m.parse::<usize>().ok())
        .unwrap_or(MAX_RESULTS)
        .clamp(1, MAX_RESULTS);
    let start = match query.get("pageToken") {
        Some(t) => match t
            .strip_prefix("page-")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(n) => n,
            None => return error(400, "invalid", "Invalid value for pageToken"),
        },
        None => 0,
    };
    let matching: Vec<(String, Value)> = inner
        .instances
        .iter()
        .filter(|((p, _, _), _)| p == project)
        .map(|((_, z, _), v)| {
            (
                z.clone(),
                serde_json::from_slice::<Value>(v).expect("stored"),
            )
        })
        .filter(|(_, i)| {
            terms
                .iter()
                .all(|(k, v)| i["labels"][k].as_str() == Some(v.as_str()))
        })
        .collect();
    let page: Vec<&(String, Value)> = matching.iter().skip(start).take(size).collect();
    let mut items = serde_json::Map::new();
    for (zone, instance) in &page {
        let entry = items
            .entry(format!("zones/{zone}"))
            .or_insert_with(|| json!({ "instances": [] }));
        entry["instances"]
            .as_array_mut()
            .expect("array")
            .push(instance.clone());
    }
    // Zones without a match on this page carry a warning, as Google's do.
    items
        .entry("zones/us-central1-a".to_owned())
        .or_insert_with(|| json!({ "warning": { "code": "NO_RESULTS_ON_PAGE", "message": "There are no results for scope 'zones/us-central1-a' on this page." } }));
    let mut answer = json!({
        "kind": "compute#instanceAggregatedList",
        "id": format!("projects/{project}/aggregated/instances"),
        "items": items,
        "selfLink": format!("https://www.googleapis.com/compute/v1/projects/{project}/aggregated/instances"),
    });
    if start + size < matching.len() {
        answer["nextPageToken"] = format!("page-{}", start + size).into();
    }
    if !inner.unreachable.is_empty() {
        answer["unreachables"] = json!(inner.unreachable);
    }
    axum::Json(answer).into_response()
}

/// The form fields of a token request.
fn form(body: &[u8]) -> BTreeMap<String, String> {
    let text = String::from_utf8_lossy(body).replace('+', " ");
    let decode = |s: &str| {
        let bytes = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%'
                && i + 2 < bytes.len()
                && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
            {
                out.push(b);
                i += 3;
                continue;
            }
            out.push(bytes[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    text.split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

/// The token endpoint: a JWT assertion (checked), a refresh token, or an
/// STS exchange — each answered with a new bearer token.
fn token(handle: &GcpHandle, body: &[u8]) -> Response {
    let fields = form(body);
    let oauth_error = |e: &str, d: &str| {
        (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({ "error": e, "error_description": d })),
        )
            .into_response()
    };
    let mut inner = handle.lock();
    match fields.get("grant_type").map(String::as_str) {
        Some("urn:ietf:params:oauth:grant-type:jwt-bearer") => {
            let Some(assertion) = fields.get("assertion") else {
                return oauth_error("invalid_request", "no assertion");
            };
            if let Err(e) = check_jwt(assertion, inner.config.service_account_key.as_deref(), true)
            {
                return oauth_error("invalid_grant", &e);
            }
        }
        Some("refresh_token") => {
            if fields.get("refresh_token").is_none_or(String::is_empty) {
                return oauth_error("invalid_grant", "no refresh token");
            }
        }
        Some("urn:ietf:params:oauth:grant-type:token-exchange") => {
            if fields.get("subject_token").is_none_or(String::is_empty) {
                return oauth_error("invalid_grant", "no subject token");
            }
        }
        other => return oauth_error("unsupported_grant_type", &format!("{other:?}")),
    }
    inner.next_id += 1;
    let token = format!("ya29.fake-{}", inner.next_id);
    inner.tokens.push(token.clone());
    axum::Json(json!({ "access_token": token, "expires_in": 3599, "token_type": "Bearer" }))
        .into_response()
}

/// Checks a service account's JWT: RS256, signed by the registered key,
/// naming its issuer; an assertion for the token endpoint (`for_endpoint`)
/// asks for a scope and names this endpoint as its audience, a self-signed
/// JWT used as the bearer token names an audience or a scope.
fn check_jwt(jwt: &str, key: Option<&[u8]>, for_endpoint: bool) -> Result<(), String> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = jwt.split('.').collect();
    let [header, claims, signature] = parts.as_slice() else {
        return Err("not a JWT".to_owned());
    };
    let header: Value = serde_json::from_slice(&b64.decode(header).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    if header["alg"] != "RS256" {
        return Err(format!("alg {}", header["alg"]));
    }
    let claims: Value = serde_json::from_slice(&b64.decode(claims).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    if claims["iss"].as_str().is_none_or(str::is_empty) {
        return Err("no iss".to_owned());
    }
    let scope = claims["scope"].as_str().is_some_and(|s| !s.is_empty());
    if for_endpoint {
        if !scope {
            return Err("no scope".to_owned());
        }
        if !claims["aud"]
            .as_str()
            .is_some_and(|a| a.ends_with("/token"))
        {
            return Err(format!("aud {} is not this endpoint", claims["aud"]));
        }
    } else if !scope && claims["aud"].as_str().is_none_or(str::is_empty) {
        return Err("neither scope nor aud".to_owned());
    }
    let Some(der) = key else {
        return Err("no service account key registered".to_owned());
    };
    let pair = aws_lc_rs::signature::RsaKeyPair::from_pkcs8(der).map_err(|e| e.to_string())?;
    let public = aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
        aws_lc_rs::signature::KeyPair::public_key(&pair)
            .as_ref()
            .to_vec(),
    );
    let signed = format!("{}.{}", parts[0], parts[1]);
    public
        .verify(
            signed.as_bytes(),
            &b64.decode(signature).map_err(|e| e.to_string())?,
        )
        .map_err(|_| "bad signature".to_owned())
}

/// A new RSA service account key: PKCS#8 PEM and DER (made with openssl,
/// as `gcloud iam service-accounts keys create` hands out PKCS#8 PEM).
pub fn service_account_key(dir: &std::path::Path) -> (String, Vec<u8>) {
    let pem_path = dir.join("sa.pem");
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&pem_path)
        .output()
        .expect("openssl runs");
    assert!(out.status.success(), "openssl genpkey: {out:?}");
    let pem = std::fs::read_to_string(&pem_path).expect("key");
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("PEM body");
    (pem, der)
}

/// A service account credentials file for `key`, its token URI the fake's.
pub fn service_account_file(
    dir: &std::path::Path,
    pem: &str,
    token_url: &str,
    project: &str,
) -> PathBuf {
    let path = dir.join("sa.json");
    let file = json!({
        "type": "service_account",
        "project_id": project,
        "private_key_id": "0123456789abcdef",
        "private_key": pem,
        "client_email": format!("crabbox@{project}.iam.gserviceaccount.com"),
        "client_id": "1234567890",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_url,
    });
    std::fs::write(&path, serde_json::to_vec_pretty(&file).expect("JSON")).expect("write");
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fake's own promises, through plain HTTP: a token from the
    /// endpoint, then insert → operation → get → aggregated paging →
    /// setLabels (stale fingerprint 412) → delete (then 404), and an
    /// insert refused inside its operation.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_fake_keeps_compute_engines_contract() {
        let fake = start(GcpConfig {
            boot_reads: 2,
            ..GcpConfig::default()
        })
        .await;
        let http = reqwest::Client::new();
        let denied = http
            .get(format!(
                "{}/projects/p/aggregated/instances",
                fake.compute_url
            ))
            .send()
            .await
            .expect("answer");
        assert_eq!(denied.status().as_u16(), 401);
        let token: Value = http
            .post(&fake.token_url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=refresh_token&refresh_token=r&client_id=c&client_secret=s")
            .send()
            .await
            .expect("token")
            .json()
            .await
            .expect("JSON");
        let bearer = token["access_token"].as_str().expect("token").to_owned();
        let call = |m: reqwest::Method, path: &str, body: Option<Value>| {
            let mut r = http
                .request(m, format!("{}/projects/p{path}", fake.compute_url))
                .bearer_auth(&bearer);
            if let Some(b) = body {
                r = r.json(&b);
            }
            async move {
                let res = r.send().await.expect("answer");
                let status = res.status().as_u16();
                (status, res.json::<Value>().await.unwrap_or(Value::Null))
            }
        };
        for n in 0..3 {
            let (s, op) = call(
                reqwest::Method::POST,
                "/zones/europe-west2-a/instances",
                Some(json!({ "name": format!("vm-{n}"), "machineType": "zones/europe-west2-a/machineTypes/e2-small", "labels": { "crabbox": "true", "pond": "demo" } })),
            )
            .await;
            assert_eq!(s, 200, "{op}");
            assert_eq!(op["status"], "RUNNING");
            let (_, done) = call(
                reqwest::Method::POST,
                &format!(
                    "/zones/europe-west2-a/operations/{}/wait",
                    op["name"].as_str().expect("name")
                ),
                None,
            )
            .await;
            assert_eq!(done["status"], "DONE");
        }
        let (s, _) = call(reqwest::Method::POST, "/zones/europe-west2-a/instances", Some(json!({ "name": "vm-0", "machineType": "zones/europe-west2-a/machineTypes/e2-small" }))).await;
        assert_eq!(s, 409);
        let (s, bad) = call(
            reqwest::Method::POST,
            "/zones/europe-west2-a/instances",
            Some(json!({ "name": "vm-x", "machineType": "m", "labels": { "Pond": "x" } })),
        )
        .await;
        assert_eq!(s, 400, "{bad}");
        // Boot: PROVISIONING, STAGING, RUNNING with an external address.
        let mut seen = Vec::new();
        for _ in 0..3 {
            let (_, i) = call(
                reqwest::Method::GET,
                "/zones/europe-west2-a/instances/vm-0",
                None,
            )
            .await;
            seen.push(i["status"].as_str().expect("status").to_owned());
        }
        assert_eq!(seen, ["PROVISIONING", "STAGING", "RUNNING"]);
        // Paging: two per page, three pages' worth once filtered.
        let mut names = Vec::new();
        let mut token: Option<String> = None;
        let mut pages = 0;
        loop {
            let q = token
                .as_ref()
                .map_or(String::new(), |t| format!("&pageToken={t}"));
            let (s, page) = call(reqwest::Method::GET, &format!("/aggregated/instances?filter=labels.crabbox%3Dtrue%20AND%20labels.pond%3Ddemo&maxResults=2{q}"), None).await;
            assert_eq!(s, 200, "{page}");
            pages += 1;
            for i in page["items"]["zones/europe-west2-a"]["instances"]
                .as_array()
                .into_iter()
                .flatten()
            {
                names.push(i["name"].as_str().expect("name").to_owned());
            }
            match page["nextPageToken"].as_str() {
                Some(t) => token = Some(t.to_owned()),
                None => break,
            }
        }
        assert_eq!((pages, names.len()), (2, 3));
        // setLabels: the current fingerprint works once; replaying it is 412.
        let (_, i) = call(
            reqwest::Method::GET,
            "/zones/europe-west2-a/instances/vm-1",
            None,
        )
        .await;
        let fp = i["labelFingerprint"].clone();
        let set =
            json!({ "labels": { "crabbox": "true", "pond": "other" }, "labelFingerprint": fp });
        let (s, _) = call(
            reqwest::Method::POST,
            "/zones/europe-west2-a/instances/vm-1/setLabels",
            Some(set.clone()),
        )
        .await;
        assert_eq!(s, 200);
        let (s, stale) = call(
            reqwest::Method::POST,
            "/zones/europe-west2-a/instances/vm-1/setLabels",
            Some(set),
        )
        .await;
        assert_eq!(s, 412);
        assert_eq!(stale["error"]["errors"][0]["reason"], "conditionNotMet");
        // Delete, then gone.
        let (s, _) = call(
            reqwest::Method::DELETE,
            "/zones/europe-west2-a/instances/vm-2",
            None,
        )
        .await;
        assert_eq!(s, 200);
        let (s, _) = call(
            reqwest::Method::GET,
            "/zones/europe-west2-a/instances/vm-2",
            None,
        )
        .await;
        assert_eq!(s, 404);
        // A capacity refusal surfaces inside the operation.
        fake.handle.refuse(
            "c4-standard-4",
            Some(true),
            Refusal::Operation("ZONE_RESOURCE_POOL_EXHAUSTED"),
        );
        let (_, op) = call(reqwest::Method::POST, "/zones/europe-west2-a/instances", Some(json!({ "name": "vm-9", "machineType": "zones/europe-west2-a/machineTypes/c4-standard-4", "scheduling": { "provisioningModel": "SPOT" } }))).await;
        let (_, done) = call(
            reqwest::Method::GET,
            &format!(
                "/zones/europe-west2-a/operations/{}",
                op["name"].as_str().expect("name")
            ),
            None,
        )
        .await;
        assert_eq!(done["status"], "DONE");
        assert_eq!(
            done["error"]["errors"][0]["code"],
            "ZONE_RESOURCE_POOL_EXHAUSTED"
        );
        assert!(fake.handle.instances().iter().all(|i| i["name"] != "vm-9"));
    }
}
