//! A local, in-memory fake of Azure Resource Manager and of the Entra ID
//! token endpoint, written from the public REST API specifications of the
//! resource types crabbox uses (`Microsoft.Resources/resourceGroups`,
//! `Microsoft.Network/{virtualNetworks,virtualNetworks/subnets,
//! networkSecurityGroups,publicIPAddresses,networkInterfaces}`,
//! `Microsoft.Compute/{virtualMachines,disks}`) and ARM's common contracts:
//!
//! - exact paths (segments matched case-insensitively, as ARM does) and an
//!   `api-version` from each type's published versions, else
//!   `400 InvalidApiVersionParameter`;
//! - `PUT` creates (201) or updates (200) a resource and, except for
//!   resource groups, answers with `provisioningState` still running and
//!   an `Azure-AsyncOperation` header (plus `Retry-After`); the operation's
//!   status (`InProgress`, then `Succeeded` or `Failed` with an `error`)
//!   finishes the change after a configurable number of polls; `PATCH`
//!   (tags) the same; `GET` 404 `ResourceNotFound` or
//!   `ResourceGroupNotFound`;
//! - `DELETE` answers `202` with `Azure-AsyncOperation` and `Location`
//!   (`operationResults`: 202 while running, 200 when done), or `204` when
//!   there was nothing; the resource exists (`Deleting`) until the
//!   operation is polled to its end; deleting a NIC a VM uses, an IP a NIC
//!   uses or a disk a VM uses is refused (`NicInUse`,
//!   `PublicIPAddressCannotBeDeleted`, `OperationNotAllowed`) as Azure does;
//! - list pages of at most `page_size` items with `nextLink`
//!   (`$skiptoken`);
//! - error bodies `{"error": {"code", "message"}}`;
//! - capacity refusals of chosen VM sizes and priorities, either at once
//!   (`409`) or from the operation (the VM then stays `Failed`, as after a
//!   real `AllocationFailed`), and throttling through the shared harness
//!   (`429` with `Retry-After`);
//! - `POST /{tenant}/oauth2/v2.0/token` (client credentials: a secret, or
//!   a federated token as client assertion) issuing a
//!   bearer token ARM requests must carry, and the tenant's OpenID
//!   discovery document MSAL reads first.
//!
//! Served over HTTPS (`tls::start_tls`): Microsoft's
//! identity libraries refuse an `http://` authority. A VM's public IP is
//! `config.ipv4` (the test sshd's address) and creating a VM appends its
//! `linuxConfiguration.ssh.publicKeys` to `config.authorized_keys` — that
//! stands for the provisioning agent, so the test sshd lets the "VM" in.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

pub use super::fake_http::LoggedRequest;
use super::fake_http::{
    Access, FakeServer, Harness, Reply, Route, json_error, query_pairs, set_header,
};
use super::tls::TestTls;

/// The tenant the token endpoint serves.
pub const TENANT: &str = "72f988bf-0000-4000-8000-00000000aaaa";
/// The service principal it knows.
pub const CLIENT_ID: &str = "1b5a3f5e-0000-4000-8000-00000000bbbb";
/// Its secret.
pub const CLIENT_SECRET: &str = "fake-client-secret";
/// The federated token (GitHub Actions' OIDC token) the tenant trusts for
/// the service principal.
pub const FEDERATED_TOKEN: &str = "fake-github-oidc-token";
/// The secret an App Service managed identity endpoint expects.
pub const IDENTITY_HEADER: &str = "fake-identity-header";
/// The subscription ARM serves.
pub const SUBSCRIPTION: &str = "0b1f6471-0000-4000-8000-00000000cccc";

/// Published api-versions the fake accepts, by resource type (lowercase):
/// crabbox's pinned ones and those Microsoft's Python SDK sends.
fn api_versions(kind: &str) -> &'static [&'static str] {
    match kind {
        "resourcegroups" => &["2021-04-01", "2024-03-01", "2024-11-01", "2025-04-01"],
        "disks" => &["2024-03-02", "2025-01-02", "2026-03-02"],
        "virtualmachines" => &["2024-07-01", "2024-11-01", "2025-04-01", "2026-04-01"],
        _ => &["2024-05-01", "2024-07-01", "2024-10-01", "2026-03-01"],
    }
}

/// How the fake starts.
#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// Where a new VM's SSH public keys are appended.
    pub authorized_keys: Option<PathBuf>,
    /// The address of public IPs.
    pub ipv4: String,
    /// Items per list page.
    pub page_size: usize,
    /// `Retry-After` seconds on operations.
    pub retry_after: u64,
    /// Polls of an operation answered `InProgress` before it ends.
    pub polls: u32,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            authorized_keys: None,
            ipv4: "127.0.0.1".to_owned(),
            page_size: 100,
            retry_after: 0,
            polls: 1,
        }
    }
}

/// A capacity refusal of VM creates.
#[derive(Debug, Clone)]
struct Refusal {
    size: String,
    /// `Spot` or `Regular`; `None`: both.
    priority: Option<String>,
    code: String,
    /// From the operation (the VM is left `Failed`) instead of at once.
    in_operation: bool,
}

#[derive(Debug, Clone)]
struct Stored {
    /// The canonical ID (as first written).
    id: String,
    body: Value,
}

/// What an operation does when it ends.
#[derive(Debug, Clone)]
enum Effect {
    /// The resource's provisioning succeeded (and VM side effects).
    Provisioned(String),
    /// The resource's provisioning failed with this error.
    Failed(String),
    /// The resource is deleted.
    Deleted(String),
}

#[derive(Debug, Clone)]
struct Operation {
    left: u32,
    effect: Effect,
    done: bool,
    failed: Option<(String, String)>,
}

#[derive(Debug)]
struct Inner {
    config: FakeConfig,
    /// Lowercase ID → resource.
    resources: BTreeMap<String, Stored>,
    operations: HashMap<String, Operation>,
    refusals: Vec<Refusal>,
    next: u64,
    /// Issued bearer tokens.
    tokens: Vec<String>,
    /// Whether the token endpoint issues tokens (false: `invalid_client`).
    secret_accepted: bool,
}

/// Control of a running fake; clones share it.
#[derive(Debug, Clone)]
pub struct FakeHandle {
    inner: Arc<Mutex<Inner>>,
    http: Harness,
    base: Arc<Mutex<String>>,
}

/// A running fake.
pub struct FakeAzure {
    /// `https://127.0.0.1:<port>`: the ARM endpoint and the authority host.
    pub url: String,
    /// Control of the fake.
    pub handle: FakeHandle,
    /// The certificates; `tls.ca` is what clients trust.
    pub tls: TestTls,
    _server: FakeServer,
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// ARM's error body.
fn shape(code: &str, message: &str) -> Value {
    json!({"error": {"code": code, "message": message}})
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    json_error(shape, status, code, message)
}

/// Starts a fake on a free port of 127.0.0.1.
pub async fn start(config: FakeConfig) -> FakeAzure {
    let tls = TestTls::new();
    let handle = FakeHandle {
        inner: Arc::new(Mutex::new(Inner {
            config,
            resources: BTreeMap::new(),
            operations: HashMap::new(),
            refusals: Vec::new(),
            next: 1,
            tokens: Vec::new(),
            secret_accepted: true,
        })),
        http: Harness::default(),
        base: Arc::new(Mutex::new(String::new())),
    };
    let routes = Router::new()
        .route("/{*rest}", axum::routing::any(serve))
        .with_state(handle.clone());
    let inner = handle.inner.clone();
    let auth: super::fake_http::Auth = Arc::new(move |parts: &Parts| {
        if parts.uri.path().ends_with("/oauth2/v2.0/token")
            || parts.uri.path() == "/msi/token"
            || parts
                .uri
                .path()
                .ends_with("/.well-known/openid-configuration")
        {
            return Access::Open;
        }
        let bearer = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        if bearer.is_some_and(|t| lock(&inner).tokens.contains(&t)) {
            Access::Granted
        } else {
            Access::Denied(error(
                StatusCode::UNAUTHORIZED,
                "InvalidAuthenticationToken",
                "The access token is invalid.",
            ))
        }
    });
    let server = super::tls::start_tls("azure", handle.http.wrap(routes, auth), &tls).await;
    *handle.base.lock().unwrap_or_else(PoisonError::into_inner) = server.url.clone();
    FakeAzure {
        url: server.url.clone(),
        handle,
        tls,
        _server: server,
    }
}

impl FakeHandle {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    /// Every request served so far.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.http.log.requests()
    }

    /// Forgets the request log.
    pub fn clear_log(&self) {
        self.http.log.clear();
    }

    /// Answers the next `n` requests of `method` under `path_prefix` with a
    /// 429 `TooManyRequests` asking to wait `retry_after` seconds.
    pub fn throttle(&self, method: &str, path_prefix: &str, n: u32, retry_after: u64) {
        self.http.faults.queue(
            Route::new(method, path_prefix),
            n,
            Reply::error(
                shape,
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                "The request is being throttled.",
            )
            .with_header("retry-after", &retry_after.to_string()),
        );
    }

    /// Refuses VM creates of `size` (at `priority`, `Spot`/`Regular`, or
    /// both) with `code`: at once, or from the operation.
    pub fn refuse_vm(&self, size: &str, priority: Option<&str>, code: &str, in_operation: bool) {
        self.inner().refusals.push(Refusal {
            size: size.to_owned(),
            priority: priority.map(str::to_owned),
            code: code.to_owned(),
            in_operation,
        });
    }

    /// Makes the token endpoint refuse the client secret.
    /// A token ARM accepts, issued outside the token endpoint: what the
    /// Azure CLI would hand out after `az login`.
    pub fn issue_token(&self) -> String {
        let mut inner = self.inner();
        let token = format!("fake-cli-token-{}", inner.next);
        inner.next += 1;
        inner.tokens.push(token.clone());
        token
    }

    pub fn refuse_secret(&self) {
        self.inner().secret_accepted = false;
    }

    /// Puts a resource in place as if someone else made it (no operation).
    pub fn plant(&self, id: &str, body: Value) {
        let mut body = body;
        let name = id.rsplit('/').next().unwrap_or_default().to_owned();
        body["id"] = json!(id);
        body["name"] = json!(name);
        self.inner().resources.insert(
            id.to_lowercase(),
            Stored {
                id: id.to_owned(),
                body,
            },
        );
    }

    /// A resource's body by ID (case-insensitive).
    pub fn resource(&self, id: &str) -> Option<Value> {
        self.inner()
            .resources
            .get(&id.to_lowercase())
            .map(|s| s.body.clone())
    }

    /// Every resource of a type (`virtualMachines`…) as (ID, body).
    pub fn resources_of(&self, kind: &str) -> Vec<(String, Value)> {
        let needle = format!("/{}/", kind.to_lowercase());
        self.inner()
            .resources
            .iter()
            .filter(|(k, _)| k.contains(&needle) && !k.ends_with(&needle))
            .filter(|(k, _)| {
                // Direct children of the type only (not subnets of a vnet).
                let after = &k[k.rfind(&needle).unwrap_or(0) + needle.len()..];
                !after.contains('/')
            })
            .map(|(_, s)| (s.id.clone(), s.body.clone()))
            .collect()
    }

    /// `/subscriptions/<s>/resourceGroups/<rg>`.
    pub fn group_id(group: &str) -> String {
        format!("/subscriptions/{SUBSCRIPTION}/resourceGroups/{group}")
    }

    /// The ID of resource `name` of `provider_type` (`Microsoft.Network/virtualNetworks`).
    pub fn id(group: &str, provider_type: &str, name: &str) -> String {
        format!("{}/providers/{provider_type}/{name}", Self::group_id(group))
    }
}

/// What a path names.
#[derive(Debug)]
enum Target {
    Token,
    /// An App Service managed identity endpoint (`IDENTITY_ENDPOINT`).
    ManagedIdentity,
    /// OpenID discovery of a tenant (MSAL reads it before asking a token).
    Discovery {
        tenant: String,
    },
    Operation {
        id: String,
        results: bool,
    },
    Group {
        id: String,
    },
    /// A resource (or subnet); `kind` is its lowercase type's last segment.
    Resource {
        id: String,
        group: String,
        kind: String,
    },
    Collection {
        prefix: String,
        group: String,
        kind: String,
    },
}

fn parse(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let lower: Vec<String> = segs.iter().map(|s| s.to_lowercase()).collect();
    let l: Vec<&str> = lower.iter().map(String::as_str).collect();
    match l.as_slice() {
        [_, "oauth2", "v2.0", "token"] => Some(Target::Token),
        ["msi", "token"] => Some(Target::ManagedIdentity),
        [_, "v2.0", ".well-known", "openid-configuration"] => Some(Target::Discovery {
            tenant: segs[0].to_owned(),
        }),
        [
            "subscriptions",
            _,
            "providers",
            _,
            "locations",
            _,
            kind @ ("operations" | "operationresults"),
            _,
        ] => Some(Target::Operation {
            id: segs[7].to_owned(),
            results: *kind == "operationresults",
        }),
        ["subscriptions", sub, "resourcegroups", _] if *sub == SUBSCRIPTION => {
            Some(Target::Group {
                id: path.to_owned(),
            })
        }
        [
            "subscriptions",
            sub,
            "resourcegroups",
            _,
            "providers",
            _,
            kind,
        ] if *sub == SUBSCRIPTION => Some(Target::Collection {
            prefix: path.to_lowercase(),
            group: segs[3].to_owned(),
            kind: (*kind).to_owned(),
        }),
        [
            "subscriptions",
            sub,
            "resourcegroups",
            _,
            "providers",
            _,
            _,
            _,
        ] if *sub == SUBSCRIPTION => Some(Target::Resource {
            id: path.to_owned(),
            group: segs[3].to_owned(),
            kind: l[6].to_owned(),
        }),
        [
            "subscriptions",
            sub,
            "resourcegroups",
            _,
            "providers",
            "microsoft.network",
            "virtualnetworks",
            _,
            "subnets",
            _,
        ] if *sub == SUBSCRIPTION => Some(Target::Resource {
            id: path.to_owned(),
            group: segs[3].to_owned(),
            kind: "subnets".to_owned(),
        }),
        _ => None,
    }
}

/// The namespace and type of a resource ID, as ARM spells them.
fn type_of(id: &str) -> String {
    let segs: Vec<&str> = id.split('/').collect();
    match segs
        .iter()
        .position(|s| s.eq_ignore_ascii_case("providers"))
    {
        Some(p) if segs.len() > p + 4 => format!("{}/{}/{}", segs[p + 1], segs[p + 2], segs[p + 4]),
        Some(p) => format!("{}/{}", segs[p + 1], segs[p + 2]),
        None => "Microsoft.Resources/resourceGroups".to_owned(),
    }
}

async fn serve(
    State(handle): State<FakeHandle>,
    method: Method,
    uri: Uri,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let Some(target) = parse(uri.path()) else {
        return error(
            StatusCode::NOT_FOUND,
            "InvalidResourceType",
            &format!("The resource type could not be found for {}", uri.path()),
        );
    };
    if let Target::Token = target {
        return token(&handle, &method, &body);
    }
    if let Target::ManagedIdentity = target {
        return managed_identity(&handle, &method, &uri, &headers);
    }
    if let Target::Discovery { tenant } = &target {
        let base = handle
            .base
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        return axum::Json(json!({
            "token_endpoint": format!("{base}/{tenant}/oauth2/v2.0/token"),
            "authorization_endpoint": format!("{base}/{tenant}/oauth2/v2.0/authorize"),
            "device_authorization_endpoint": format!("{base}/{tenant}/oauth2/v2.0/devicecode"),
            "issuer": format!("{base}/{tenant}/v2.0"),
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        }))
        .into_response();
    }
    let query = query_pairs(&uri);
    let version = query
        .iter()
        .find(|(k, _)| k == "api-version")
        .map(|(_, v)| v.clone());
    let kind = match &target {
        Target::Group { .. } => "resourcegroups".to_owned(),
        Target::Resource { kind, .. } | Target::Collection { kind, .. } => kind.clone(),
        _ => String::new(),
    };
    if !matches!(target, Target::Operation { .. }) {
        match version {
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "MissingApiVersionParameter",
                    "The api-version query parameter (?api-version=) is required for all requests.",
                );
            }
            Some(v) if !api_versions(&kind).contains(&v.as_str()) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "InvalidApiVersionParameter",
                    &format!(
                        "The api-version '{v}' is invalid for resource type '{kind}'. The supported versions are '{}'.",
                        api_versions(&kind).join(",")
                    ),
                );
            }
            Some(_) => {}
        }
    }
    let json_body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let base = handle
        .base
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let mut inner = handle.inner();
    match (target, method) {
        (Target::Operation { id, results }, Method::GET) => inner.poll(&id, results),
        (Target::Group { id }, Method::GET | Method::HEAD) => {
            match inner.resources.get(&id.to_lowercase()) {
                Some(s) => axum::Json(s.body.clone()).into_response(),
                None => group_not_found(&id),
            }
        }
        (Target::Group { id }, Method::PUT) => {
            let Some(location) = json_body.get("location").and_then(Value::as_str) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "LocationRequired",
                    "The location property is required for this definition.",
                );
            };
            let existed = inner.resources.contains_key(&id.to_lowercase());
            let name = id.rsplit('/').next().unwrap_or_default();
            let stored = json!({
                "id": id, "name": name, "type": "Microsoft.Resources/resourceGroups",
                "location": location, "tags": json_body.get("tags").cloned().unwrap_or(json!({})),
                "properties": {"provisioningState": "Succeeded"},
            });
            inner.resources.insert(
                id.to_lowercase(),
                Stored {
                    id: id.clone(),
                    body: stored.clone(),
                },
            );
            let status = if existed {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            (status, axum::Json(stored)).into_response()
        }
        (Target::Resource { id, group, .. }, Method::GET) => {
            if !inner.group_exists(&group) {
                return group_not_found(&FakeHandle::group_id(&group));
            }
            match inner.resources.get(&id.to_lowercase()) {
                Some(s) => axum::Json(s.body.clone()).into_response(),
                None => not_found(&id, &group),
            }
        }
        (Target::Resource { id, group, kind }, Method::PUT) => {
            inner.put(&base, &id, &group, &kind, json_body)
        }
        (Target::Resource { id, group, kind }, Method::PATCH) => {
            inner.patch(&base, &id, &group, &kind, &json_body)
        }
        (Target::Resource { id, group, .. }, Method::DELETE) => inner.delete(&base, &id, &group),
        (Target::Collection { prefix, group, .. }, Method::GET) => {
            if !inner.group_exists(&group) {
                return group_not_found(&FakeHandle::group_id(&group));
            }
            let skip: usize = query
                .iter()
                .find(|(k, _)| k == "$skiptoken")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            inner.page(
                &base,
                uri.path(),
                &prefix,
                skip,
                version.as_deref().unwrap_or_default(),
            )
        }
        (_, method) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!("The requested resource does not support http method '{method}'."),
        ),
    }
}

fn group_not_found(id: &str) -> Response {
    let name = id.rsplit('/').next().unwrap_or_default();
    error(
        StatusCode::NOT_FOUND,
        "ResourceGroupNotFound",
        &format!("Resource group '{name}' could not be found."),
    )
}

fn not_found(id: &str, group: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "ResourceNotFound",
        &format!(
            "The Resource '{}' under resource group '{group}' was not found.",
            type_of(id) + "/" + id.rsplit('/').next().unwrap_or_default()
        ),
    )
}

fn token(handle: &FakeHandle, method: &Method, body: &[u8]) -> Response {
    if method != Method::POST {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let form: HashMap<String, String> = serde_urlencoded_pairs(body);
    let mut inner = handle.inner();
    let entra_error = |code: i32, error: &str, description: &str| {
        (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({
                "error": error,
                "error_description": description,
                "error_codes": [code],
            })),
        )
            .into_response()
    };
    if form.get("grant_type").map(String::as_str) != Some("client_credentials")
        || form.get("scope").map(String::as_str) != Some("https://management.azure.com/.default")
    {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_request", "error_description": "AADSTS900144: grant_type and scope are required.", "error_codes": [900_144]})),
        )
            .into_response();
    }
    // A secret, or a federated token as a client assertion (workload identity).
    let federated = form.get("client_assertion_type").map(String::as_str)
        == Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        && form.get("client_assertion").map(String::as_str) == Some(FEDERATED_TOKEN);
    let secret = form.get("client_secret").map(String::as_str) == Some(CLIENT_SECRET);
    if form.get("client_id").map(String::as_str) != Some(CLIENT_ID)
        || !(federated || secret)
        || !inner.secret_accepted
    {
        return entra_error(
            7_000_215,
            "invalid_client",
            "AADSTS7000215: Invalid client secret provided.",
        );
    }
    let token = format!("fake-arm-token-{}", inner.next);
    inner.next += 1;
    inner.tokens.push(token.clone());
    axum::Json(json!({
        "token_type": "Bearer",
        "expires_in": 3599,
        "ext_expires_in": 3599,
        "access_token": token,
    }))
    .into_response()
}

/// The App Service managed identity protocol (api-version 2019-08-01): `GET
/// ?api-version&resource` with the `X-IDENTITY-HEADER` secret; the token's
/// `expires_on` is a string of Unix seconds.
fn managed_identity(
    handle: &FakeHandle,
    method: &Method,
    uri: &Uri,
    headers: &axum::http::HeaderMap,
) -> Response {
    let query: HashMap<String, String> = query_pairs(uri).into_iter().collect();
    if method != Method::GET
        || query.get("api-version").map(String::as_str) != Some("2019-08-01")
        || query.get("resource").map(String::as_str) != Some("https://management.azure.com")
    {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_request", "error_description": "api-version 2019-08-01 and resource are required"})),
        )
            .into_response();
    }
    if headers
        .get("x-identity-header")
        .and_then(|v| v.to_str().ok())
        != Some(IDENTITY_HEADER)
    {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "unauthorized", "error_description": "X-IDENTITY-HEADER is missing or wrong"})),
        )
            .into_response();
    }
    let mut inner = handle.inner();
    let token = format!("fake-msi-token-{}", inner.next);
    inner.next += 1;
    inner.tokens.push(token.clone());
    axum::Json(json!({
        "access_token": token,
        "expires_on": "4070908800",
        "resource": "https://management.azure.com",
        "token_type": "Bearer",
    }))
    .into_response()
}

/// `application/x-www-form-urlencoded` pairs.
fn serde_urlencoded_pairs(body: &[u8]) -> HashMap<String, String> {
    let uri: Uri = format!("/?{}", String::from_utf8_lossy(body))
        .parse()
        .unwrap_or_default();
    query_pairs(&uri).into_iter().collect()
}

impl Inner {
    fn group_exists(&self, group: &str) -> bool {
        self.resources
            .contains_key(&FakeHandle::group_id(group).to_lowercase())
    }

    fn operation(
        &mut self,
        base: &str,
        id: &str,
        effect: Effect,
        failed: Option<(String, String)>,
    ) -> (String, String) {
        let op = format!("op-{}", self.next);
        self.next += 1;
        self.operations.insert(
            op.clone(),
            Operation {
                left: self.config.polls,
                effect,
                done: false,
                failed,
            },
        );
        let ns = type_of(id)
            .split('/')
            .next()
            .unwrap_or("Microsoft.Resources")
            .to_owned();
        let prefix = format!("{base}/subscriptions/{SUBSCRIPTION}/providers/{ns}/locations/eastus");
        (
            format!("{prefix}/operations/{op}?api-version=2024-07-01"),
            format!("{prefix}/operationResults/{op}?api-version=2024-07-01"),
        )
    }

    fn accepted(
        &self,
        mut response: Response,
        operation: &(String, String),
        location: bool,
    ) -> Response {
        set_header(&mut response, "azure-asyncoperation", &operation.0);
        if location {
            set_header(&mut response, "location", &operation.1);
        }
        set_header(
            &mut response,
            "retry-after",
            &self.config.retry_after.to_string(),
        );
        response
    }

    fn put(&mut self, base: &str, id: &str, group: &str, kind: &str, body: Value) -> Response {
        if !self.group_exists(group) {
            return group_not_found(&FakeHandle::group_id(group));
        }
        if kind != "subnets" && body.get("location").and_then(Value::as_str).is_none() {
            return error(
                StatusCode::BAD_REQUEST,
                "LocationRequired",
                "The location property is required for this definition.",
            );
        }
        let key = id.to_lowercase();
        let existed = self.resources.get(&key).map(|s| s.body.clone());
        if let Some(old) = &existed
            && matches!(
                old.pointer("/properties/provisioningState")
                    .and_then(Value::as_str),
                Some("Deleting")
            )
        {
            return error(
                StatusCode::CONFLICT,
                "AnotherOperationInProgress",
                "Another operation is in progress on the resource.",
            );
        }
        let name = id.rsplit('/').next().unwrap_or_default().to_owned();
        let mut stored = body.clone();
        stored["id"] = json!(id);
        stored["name"] = json!(name);
        stored["type"] = json!(type_of(id));
        if stored.get("tags").is_none() && kind != "subnets" {
            stored["tags"] = json!({});
        }
        if stored.get("properties").is_none() {
            stored["properties"] = json!({});
        }
        let mut failure: Option<(String, String)> = None;
        match kind {
            "virtualnetworks" => {
                let subnets = stored["properties"]["subnets"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                stored["properties"]["subnets"] = json!(subnets
                    .iter()
                    .map(|s| {
                        let sname = s["name"].as_str().unwrap_or_default();
                        let sid = format!("{id}/subnets/{sname}");
                        json!({"id": sid, "name": sname, "properties": {"addressPrefix": s["properties"]["addressPrefix"], "provisioningState": "Succeeded"}})
                    })
                    .collect::<Vec<_>>());
                for s in stored["properties"]["subnets"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                {
                    let sid = s["id"].as_str().unwrap_or_default().to_owned();
                    self.resources
                        .insert(sid.to_lowercase(), Stored { id: sid, body: s });
                }
            }
            "subnets" => {
                let vnet = id
                    .rsplit_once("/subnets/")
                    .map(|(v, _)| v.to_lowercase())
                    .unwrap_or_default();
                if !self.resources.contains_key(&vnet) {
                    return not_found(id.rsplit_once("/subnets/").map_or(id, |(v, _)| v), group);
                }
            }
            "publicipaddresses" => {
                stored["properties"]["ipAddress"] = json!(self.config.ipv4);
                stored["properties"]["publicIPAddressVersion"] = json!("IPv4");
            }
            "networkinterfaces" => {
                let config = stored
                    .pointer("/properties/ipConfigurations/0/properties")
                    .cloned()
                    .unwrap_or(Value::Null);
                let subnet = config
                    .pointer("/subnet/id")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if subnet.is_empty() || !self.resources.contains_key(&subnet.to_lowercase()) {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "InvalidResourceReference",
                        &format!("Resource {subnet} referenced by resource {id} was not found."),
                    );
                }
                if let Some(pip) = config
                    .pointer("/publicIPAddress/id")
                    .and_then(Value::as_str)
                    && !self.resources.contains_key(&pip.to_lowercase())
                {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "InvalidResourceReference",
                        &format!("Resource {pip} referenced by resource {id} was not found."),
                    );
                }
                let n = self.next;
                self.next += 1;
                stored["properties"]["ipConfigurations"][0]["id"] =
                    json!(format!("{id}/ipConfigurations/ipconfig"));
                stored["properties"]["ipConfigurations"][0]["properties"]["privateIPAddress"] =
                    json!(format!("10.42.0.{}", 4 + n % 250));
            }
            "virtualmachines" => {
                let size = stored
                    .pointer("/properties/hardwareProfile/vmSize")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let nic = stored
                    .pointer("/properties/networkProfile/networkInterfaces/0/id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                if size.is_empty() {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "InvalidParameter",
                        "Required parameter 'hardwareProfile.vmSize' is missing (null).",
                    );
                }
                if !self.resources.contains_key(&nic.to_lowercase()) {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "InvalidResourceReference",
                        &format!("Resource {nic} referenced by resource {id} was not found."),
                    );
                }
                let priority = stored
                    .pointer("/properties/priority")
                    .and_then(Value::as_str)
                    .unwrap_or("Regular")
                    .to_owned();
                if let Some(r) = self
                    .refusals
                    .iter()
                    .find(|r| r.size == size && r.priority.as_deref().is_none_or(|p| p == priority))
                    .cloned()
                {
                    let message = format!(
                        "The requested VM size {size} is not available for {priority} priority in location 'eastus' ({}).",
                        r.code
                    );
                    if r.in_operation {
                        failure = Some((r.code.clone(), message));
                    } else {
                        return error(StatusCode::CONFLICT, &r.code, &message);
                    }
                }
                stored["properties"]["vmId"] =
                    json!(format!("00000000-0000-4000-8000-{:012}", self.next));
            }
            _ => {}
        }
        let running = if existed.is_some() {
            "Updating"
        } else {
            "Creating"
        };
        stored["properties"]["provisioningState"] = json!(running);
        self.resources.insert(
            key,
            Stored {
                id: id.to_owned(),
                body: stored.clone(),
            },
        );
        let effect = match &failure {
            Some(_) => Effect::Failed(id.to_owned()),
            None => Effect::Provisioned(id.to_owned()),
        };
        let op = self.operation(base, id, effect, failure);
        let status = if existed.is_some() {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        };
        self.accepted((status, axum::Json(stored)).into_response(), &op, false)
    }

    fn patch(&mut self, base: &str, id: &str, group: &str, _kind: &str, body: &Value) -> Response {
        if !self.group_exists(group) {
            return group_not_found(&FakeHandle::group_id(group));
        }
        let Some(stored) = self.resources.get_mut(&id.to_lowercase()) else {
            return not_found(id, group);
        };
        if let Some(tags) = body.get("tags") {
            stored.body["tags"] = tags.clone();
        }
        stored.body["properties"]["provisioningState"] = json!("Updating");
        let answer = stored.body.clone();
        let op = self.operation(base, id, Effect::Provisioned(id.to_owned()), None);
        self.accepted(axum::Json(answer).into_response(), &op, false)
    }

    fn delete(&mut self, base: &str, id: &str, group: &str) -> Response {
        if !self.group_exists(group) {
            return group_not_found(&FakeHandle::group_id(group));
        }
        let key = id.to_lowercase();
        if !self.resources.contains_key(&key) {
            return StatusCode::NO_CONTENT.into_response();
        }
        // In use by another resource: refused, as Azure does.
        let users = |needle: &str, of: &str| {
            self.resources.values().any(|s| {
                s.id.to_lowercase().contains(of)
                    && s.body
                        .to_string()
                        .to_lowercase()
                        .contains(&format!("\"{needle}\""))
            })
        };
        let refused = match type_of(id).to_lowercase().as_str() {
            "microsoft.network/networkinterfaces" if users(&key, "/virtualmachines/") => Some((
                "NicInUse",
                "Network Interface is used by existing resource. In order to delete the network interface, it must be dissociated from the resource.",
            )),
            "microsoft.network/publicipaddresses" if users(&key, "/networkinterfaces/") => Some((
                "PublicIPAddressCannotBeDeleted",
                "Public IP address can not be deleted since it is still allocated to resource.",
            )),
            "microsoft.compute/disks" if users(&key, "/virtualmachines/") => {
                Some(("OperationNotAllowed", "Disk is attached to VM."))
            }
            _ => None,
        };
        if let Some((code, message)) = refused {
            return error(StatusCode::BAD_REQUEST, code, message);
        }
        if let Some(s) = self.resources.get_mut(&key) {
            s.body["properties"]["provisioningState"] = json!("Deleting");
        }
        let op = self.operation(base, id, Effect::Deleted(id.to_owned()), None);
        self.accepted(StatusCode::ACCEPTED.into_response(), &op, true)
    }

    fn finish(&mut self, effect: &Effect) {
        match effect {
            Effect::Provisioned(id) => {
                let key = id.to_lowercase();
                let Some(stored) = self.resources.get(&key).cloned() else {
                    return;
                };
                let mut body = stored.body;
                body["properties"]["provisioningState"] = json!("Succeeded");
                if type_of(id).eq_ignore_ascii_case("Microsoft.Compute/virtualMachines") {
                    self.vm_made(id, &mut body);
                }
                self.resources.insert(
                    key,
                    Stored {
                        id: stored.id,
                        body,
                    },
                );
            }
            Effect::Failed(id) => {
                if let Some(s) = self.resources.get_mut(&id.to_lowercase()) {
                    s.body["properties"]["provisioningState"] = json!("Failed");
                }
            }
            Effect::Deleted(id) => {
                let key = id.to_lowercase();
                self.resources.remove(&key);
                // Children (subnets of a vnet) go with it.
                self.resources
                    .retain(|k, _| !k.starts_with(&format!("{key}/")));
            }
        }
    }

    /// A provisioned VM: its managed OS disk exists, its keys reach the sshd.
    fn vm_made(&mut self, id: &str, body: &mut Value) {
        let os_disk = body
            .pointer("/properties/storageProfile/osDisk")
            .cloned()
            .unwrap_or(Value::Null);
        if os_disk.get("diffDiskSettings").is_none()
            && let Some(name) = os_disk.get("name").and_then(Value::as_str)
        {
            let group = id.split('/').nth(4).unwrap_or_default();
            let disk_id = FakeHandle::id(group, "Microsoft.Compute/disks", name);
            let disk = json!({
                "id": disk_id, "name": name, "type": "Microsoft.Compute/disks",
                "location": body["location"], "tags": {},
                "managedBy": id,
                "properties": {"provisioningState": "Succeeded", "diskState": "Attached"},
            });
            self.resources.insert(
                disk_id.to_lowercase(),
                Stored {
                    id: disk_id.clone(),
                    body: disk,
                },
            );
            body["properties"]["storageProfile"]["osDisk"]["managedDisk"]["id"] = json!(disk_id);
        }
        if let Some(path) = &self.config.authorized_keys {
            let keys: Vec<String> = body
                .pointer("/properties/osProfile/linuxConfiguration/ssh/publicKeys")
                .and_then(Value::as_array)
                .map(|ks| {
                    ks.iter()
                        .filter_map(|k| k["keyData"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            if !keys.is_empty() {
                use std::io::Write as _;
                if let Ok(mut f) = std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(path)
                {
                    for k in keys {
                        let _ = writeln!(f, "{}", k.trim());
                    }
                }
            }
        }
    }

    fn poll(&mut self, op_id: &str, results: bool) -> Response {
        let Some(mut op) = self.operations.get(op_id).cloned() else {
            return error(
                StatusCode::NOT_FOUND,
                "OperationNotFound",
                &format!("Operation {op_id} was not found."),
            );
        };
        if !op.done && op.left > 0 {
            op.left -= 1;
        } else if !op.done {
            op.done = true;
            self.finish(&op.effect);
        }
        let retry = self.config.retry_after.to_string();
        self.operations.insert(op_id.to_owned(), op.clone());
        let mut response = if results {
            if op.done {
                match &op.failed {
                    Some((code, message)) => error(StatusCode::CONFLICT, code, message),
                    None => StatusCode::OK.into_response(),
                }
            } else {
                StatusCode::ACCEPTED.into_response()
            }
        } else if !op.done {
            axum::Json(json!({"name": op_id, "status": "InProgress"})).into_response()
        } else {
            match &op.failed {
                Some((code, message)) => axum::Json(json!({"name": op_id, "status": "Failed", "error": {"code": code, "message": message}})).into_response(),
                None => axum::Json(json!({"name": op_id, "status": "Succeeded"})).into_response(),
            }
        };
        if !op.done {
            set_header(&mut response, "retry-after", &retry);
        }
        response
    }

    fn page(&self, base: &str, path: &str, prefix: &str, skip: usize, version: &str) -> Response {
        let items: Vec<Value> = self
            .resources
            .iter()
            .filter(|(k, _)| {
                k.strip_prefix(prefix)
                    .and_then(|rest| rest.strip_prefix('/'))
                    .is_some_and(|name| !name.contains('/'))
            })
            .map(|(_, s)| s.body.clone())
            .collect();
        let size = self.config.page_size.max(1);
        let page: Vec<Value> = items.iter().skip(skip).take(size).cloned().collect();
        let mut body = json!({"value": page});
        if skip + size < items.len() {
            body["nextLink"] = json!(format!(
                "{base}{path}?api-version={version}&$skiptoken={}",
                skip + size
            ));
        }
        axum::Json(body).into_response()
    }
}

/// The fake itself, over plain HTTPS requests: what the adapter's tests
/// and the SDK's rely on.
mod self_tests {
    use super::*;

    struct Client {
        http: reqwest::Client,
        url: String,
        token: String,
    }

    impl Client {
        async fn new(fake: &FakeAzure) -> Self {
            let ca = std::fs::read(&fake.tls.ca).expect("CA");
            let http = reqwest::Client::builder()
                .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("pem"))
                .build()
                .expect("client");
            let answer: Value = http
                .post(format!("{}/{TENANT}/oauth2/v2.0/token", fake.url))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!(
                    "grant_type=client_credentials&client_id={CLIENT_ID}&client_secret={CLIENT_SECRET}&scope=https%3A%2F%2Fmanagement.azure.com%2F.default"
                ))
                .send()
                .await
                .expect("token")
                .json()
                .await
                .expect("token JSON");
            Self {
                http,
                url: fake.url.clone(),
                token: answer["access_token"]
                    .as_str()
                    .expect("access_token")
                    .to_owned(),
            }
        }

        async fn call(
            &self,
            method: &str,
            path: &str,
            body: Option<Value>,
        ) -> (u16, reqwest::header::HeaderMap, Value) {
            let url = if path.starts_with("https://") {
                path.to_owned()
            } else {
                format!("{}{path}", self.url)
            };
            let mut r = self
                .http
                .request(
                    reqwest::Method::from_bytes(method.as_bytes()).expect("method"),
                    url,
                )
                .bearer_auth(&self.token);
            if let Some(b) = body {
                r = r.json(&b);
            }
            let response = r.send().await.expect("answer");
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let text = response.text().await.expect("body");
            (
                status,
                headers,
                serde_json::from_str(&text).unwrap_or(Value::Null),
            )
        }

        /// Polls an operation to its end; returns the final status body.
        async fn finish(&self, headers: &reqwest::header::HeaderMap) -> Value {
            let op = headers["azure-asyncoperation"]
                .to_str()
                .expect("op")
                .to_owned();
            assert!(headers.contains_key("retry-after"));
            loop {
                let (status, _, body) = self.call("GET", &op, None).await;
                assert_eq!(status, 200);
                if body["status"] != "InProgress" {
                    return body;
                }
            }
        }
    }

    const V: &str = "api-version=2024-05-01";

    fn rg() -> String {
        FakeHandle::group_id("rg1")
    }

    #[tokio::test]
    async fn arm_contracts_hold_paths_versions_operations_paging_and_errors() {
        let fake = start(FakeConfig {
            page_size: 2,
            polls: 2,
            retry_after: 1,
            ..FakeConfig::default()
        })
        .await;
        let c = Client::new(&fake).await;
        // Authentication: no or a foreign token is refused.
        let plain = c
            .http
            .get(format!("{}{}?api-version=2021-04-01", c.url, rg()))
            .send()
            .await
            .expect("answer");
        assert_eq!(plain.status().as_u16(), 401);
        // api-version: missing or unpublished is refused.
        let (status, _, body) = c.call("GET", &rg(), None).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("MissingApiVersionParameter"))
        );
        let (status, _, body) = c
            .call("GET", &format!("{}?api-version=1999-01-01", rg()), None)
            .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("InvalidApiVersionParameter"))
        );
        // A resource in a group that does not exist; then the group.
        let vnet = FakeHandle::id("rg1", "Microsoft.Network/virtualNetworks", "v");
        let (status, _, body) = c.call("GET", &format!("{vnet}?{V}"), None).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (404, Some("ResourceGroupNotFound"))
        );
        let (status, _, _) = c
            .call(
                "PUT",
                &format!("{}?api-version=2021-04-01", rg()),
                Some(json!({"location": "eastus"})),
            )
            .await;
        assert_eq!(status, 201);
        let (status, _, body) = c.call("GET", &format!("{vnet}?{V}"), None).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (404, Some("ResourceNotFound"))
        );
        // PUT: 201, still creating, an operation that ends after its polls.
        let (status, headers, body) = c
            .call("PUT", &format!("{vnet}?{V}"), Some(json!({"location": "eastus", "tags": {"a": "b"}, "properties": {"subnets": [{"name": "s", "properties": {"addressPrefix": "10.0.0.0/24"}}]}})))
            .await;
        assert_eq!(
            (status, body["properties"]["provisioningState"].as_str()),
            (201, Some("Creating"))
        );
        assert_eq!(headers["retry-after"], "1");
        assert_eq!(c.finish(&headers).await["status"], "Succeeded");
        let (_, _, body) = c.call("GET", &format!("{vnet}?{V}"), None).await;
        assert_eq!(body["properties"]["provisioningState"], "Succeeded");
        assert_eq!(body["tags"]["a"], "b");
        let (status, _, _) = c.call("GET", &format!("{vnet}/subnets/s?{V}"), None).await;
        assert_eq!(status, 200, "the inline subnet exists");
        // Paging: 5 IPs, pages of 2, `nextLink` to the end.
        for i in 0..5 {
            let pip = FakeHandle::id(
                "rg1",
                "Microsoft.Network/publicIPAddresses",
                &format!("ip{i}"),
            );
            let (status, headers, _) = c
                .call(
                    "PUT",
                    &format!("{pip}?{V}"),
                    Some(json!({"location": "eastus"})),
                )
                .await;
            assert_eq!(status, 201);
            c.finish(&headers).await;
        }
        let mut url = format!("{}/providers/Microsoft.Network/publicIPAddresses?{V}", rg());
        let mut names = Vec::new();
        let mut pages = 0;
        loop {
            let (status, _, page) = c.call("GET", &url, None).await;
            assert_eq!(status, 200);
            pages += 1;
            names.extend(
                page["value"]
                    .as_array()
                    .expect("value")
                    .iter()
                    .map(|v| v["name"].as_str().expect("name").to_owned()),
            );
            match page["nextLink"].as_str() {
                Some(next) => url = next.to_owned(),
                None => break,
            }
        }
        assert_eq!((pages, names.len()), (3, 5));
        // In use: an IP a NIC uses cannot be deleted.
        let nic = FakeHandle::id("rg1", "Microsoft.Network/networkInterfaces", "n");
        let ip0 = FakeHandle::id("rg1", "Microsoft.Network/publicIPAddresses", "ip0");
        let (status, headers, _) = c
            .call("PUT", &format!("{nic}?{V}"), Some(json!({"location": "eastus", "properties": {"ipConfigurations": [{"name": "c", "properties": {"subnet": {"id": format!("{vnet}/subnets/s")}, "publicIPAddress": {"id": ip0}}}]}})))
            .await;
        assert_eq!(status, 201);
        c.finish(&headers).await;
        let (status, _, body) = c.call("DELETE", &format!("{ip0}?{V}"), None).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("PublicIPAddressCannotBeDeleted"))
        );
        // DELETE: 202 with both operation headers; the resource stays
        // (`Deleting`) until the operation ends; `Location` answers 202
        // then 200; a second delete is a 204.
        let (status, headers, _) = c.call("DELETE", &format!("{nic}?{V}"), None).await;
        assert_eq!(status, 202);
        let location = headers["location"].to_str().expect("location").to_owned();
        let (status, _, _) = c.call("GET", &location, None).await;
        assert_eq!(status, 202);
        let (_, _, body) = c.call("GET", &format!("{nic}?{V}"), None).await;
        assert_eq!(body["properties"]["provisioningState"], "Deleting");
        assert_eq!(c.finish(&headers).await["status"], "Succeeded");
        let (status, _, _) = c.call("GET", &location, None).await;
        assert_eq!(status, 200);
        let (status, _, _) = c.call("GET", &format!("{nic}?{V}"), None).await;
        assert_eq!(status, 404);
        let (status, _, _) = c.call("DELETE", &format!("{nic}?{V}"), None).await;
        assert_eq!(status, 204);
        // Throttling through the harness: 429 with Retry-After, then served.
        fake.handle.throttle("GET", &rg(), 1, 3);
        let (status, headers, body) = c
            .call("GET", &format!("{}?api-version=2021-04-01", rg()), None)
            .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (429, Some("TooManyRequests"))
        );
        assert_eq!(headers["retry-after"], "3");
        let (status, _, _) = c
            .call("GET", &format!("{}?api-version=2021-04-01", rg()), None)
            .await;
        assert_eq!(status, 200);
        assert!(
            fake.handle.requests().iter().any(|r| r.status == 429),
            "logged"
        );
    }

    #[tokio::test]
    async fn vm_capacity_refusals_come_at_once_or_from_the_operation() {
        let fake = start(FakeConfig::default()).await;
        let c = Client::new(&fake).await;
        c.call(
            "PUT",
            &format!("{}?api-version=2021-04-01", rg()),
            Some(json!({"location": "eastus"})),
        )
        .await;
        let vnet = FakeHandle::id("rg1", "Microsoft.Network/virtualNetworks", "v");
        let (_, h, _) = c.call("PUT", &format!("{vnet}?{V}"), Some(json!({"location": "eastus", "properties": {"subnets": [{"name": "s", "properties": {}}]}}))).await;
        c.finish(&h).await;
        let nic = FakeHandle::id("rg1", "Microsoft.Network/networkInterfaces", "n");
        let (_, h, _) = c.call("PUT", &format!("{nic}?{V}"), Some(json!({"location": "eastus", "properties": {"ipConfigurations": [{"name": "c", "properties": {"subnet": {"id": format!("{vnet}/subnets/s")}}}]}}))).await;
        c.finish(&h).await;
        fake.handle
            .refuse_vm("Standard_X", Some("Spot"), "SkuNotAvailable", false);
        fake.handle
            .refuse_vm("Standard_Y", None, "AllocationFailed", true);
        let vm = FakeHandle::id("rg1", "Microsoft.Compute/virtualMachines", "vm");
        let body = |size: &str, spot: bool| {
            let mut b = json!({"location": "eastus", "properties": {"hardwareProfile": {"vmSize": size}, "networkProfile": {"networkInterfaces": [{"id": nic}]}, "storageProfile": {"osDisk": {"name": "vm-osdisk", "createOption": "FromImage"}}}});
            if spot {
                b["properties"]["priority"] = json!("Spot");
            }
            b
        };
        let (status, _, answer) = c
            .call(
                "PUT",
                &format!("{vm}?api-version=2024-07-01"),
                Some(body("Standard_X", true)),
            )
            .await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (409, Some("SkuNotAvailable"))
        );
        let (status, h, _) = c
            .call(
                "PUT",
                &format!("{vm}?api-version=2024-07-01"),
                Some(body("Standard_Y", false)),
            )
            .await;
        assert_eq!(status, 201);
        let end = c.finish(&h).await;
        assert_eq!(
            (end["status"].as_str(), end["error"]["code"].as_str()),
            (Some("Failed"), Some("AllocationFailed"))
        );
        let (_, _, answer) = c
            .call("GET", &format!("{vm}?api-version=2024-07-01"), None)
            .await;
        assert_eq!(
            answer["properties"]["provisioningState"], "Failed",
            "left behind, as Azure does"
        );
        // A regular VM of another size: provisioned, with its managed disk,
        // which cannot go while the VM exists; the NIC neither.
        let (status, h, _) = c
            .call(
                "PUT",
                &format!("{vm}?api-version=2024-07-01"),
                Some(body("Standard_X", false)),
            )
            .await;
        assert_eq!(status, 200, "an update of the failed VM");
        c.finish(&h).await;
        let (_, _, answer) = c
            .call("GET", &format!("{vm}?api-version=2024-07-01"), None)
            .await;
        let disk = answer["properties"]["storageProfile"]["osDisk"]["managedDisk"]["id"]
            .as_str()
            .expect("disk")
            .to_owned();
        let (status, _, answer) = c
            .call("DELETE", &format!("{disk}?api-version=2024-03-02"), None)
            .await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (400, Some("OperationNotAllowed"))
        );
        let (status, _, answer) = c.call("DELETE", &format!("{nic}?{V}"), None).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (400, Some("NicInUse"))
        );
        // A bad secret gets Entra ID's error.
        fake.handle.refuse_secret();
        let refused = c.http.post(format!("{}/{TENANT}/oauth2/v2.0/token", c.url)).header("content-type", "application/x-www-form-urlencoded")
            .body(format!("grant_type=client_credentials&client_id={CLIENT_ID}&client_secret=x&scope=https%3A%2F%2Fmanagement.azure.com%2F.default"))
            .send().await.expect("answer");
        assert_eq!(refused.status().as_u16(), 401);
        let body: Value = refused.json().await.expect("json");
        assert_eq!(body["error"], "invalid_client");
    }
}
