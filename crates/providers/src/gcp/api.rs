//! The Compute Engine API (`compute/v1`) as crabbox calls it: instances
//! (insert, get, delete, setLabels, aggregatedList), zonal and global
//! operations (waited for until `DONE`, their errors read), firewalls (get,
//! insert) — the JSON shapes of the discovery document, only the fields
//! used. Every call carries a fresh token from [`TokenSource`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crabbox_core::labels::Labels;
use crabbox_core::provider::ProviderError;
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::credentials::TokenSource;
use super::names::resource_name;

/// Google's endpoint.
pub const DEFAULT_ENDPOINT: &str = "https://compute.googleapis.com/compute/v1";
/// Replaces [`DEFAULT_ENDPOINT`] (tests, a proxy).
pub const ENDPOINT_ENV: &str = "CRABBOX_GCP_COMPUTE_ENDPOINT";
/// Per-request time limit (an operation `wait` is answered within two minutes).
const TIMEOUT: Duration = Duration::from_secs(150);
/// Instances asked per page of an aggregated list (Compute's maximum).
const PAGE_SIZE: u32 = 500;
/// Pause between operation polls when the API answers `wait` at once.
const OPERATION_POLL: Duration = Duration::from_millis(200);

/// A VM as crabbox reads it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub name: String,
    /// The zone's URL.
    #[serde(default)]
    pub zone: String,
    /// `PROVISIONING`, `STAGING`, `RUNNING`, `STOPPING`, `TERMINATED`…
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub machine_type: String,
    #[serde(default)]
    pub labels: Labels,
    /// What `setLabels` must send back (a stale one is refused with 412).
    #[serde(default)]
    pub label_fingerprint: String,
    #[serde(default)]
    pub network_interfaces: Vec<NetworkInterface>,
}

impl Instance {
    /// The first external (NAT) address.
    #[must_use]
    pub fn external_ip(&self) -> Option<&str> {
        self.network_interfaces
            .iter()
            .flat_map(|n| &n.access_configs)
            .filter_map(|a| a.nat_ip.as_deref())
            .find(|ip| !ip.is_empty())
    }

    /// The zone's name.
    #[must_use]
    pub fn zone_name(&self) -> &str {
        resource_name(&self.zone)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkInterface {
    #[serde(default)]
    pub access_configs: Vec<AccessConfig>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessConfig {
    #[serde(default, rename = "natIP")]
    pub nat_ip: Option<String>,
}

/// A long-running operation.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Operation {
    name: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    zone: Option<String>,
    #[serde(default)]
    error: Option<OperationErrors>,
    #[serde(default)]
    http_error_status_code: Option<u16>,
}

#[derive(Debug, Clone, Deserialize)]
struct OperationErrors {
    #[serde(default)]
    errors: Vec<OperationError>,
}

#[derive(Debug, Clone, Deserialize)]
struct OperationError {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// One page of `instances.aggregatedList`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AggregatedPage {
    #[serde(default)]
    items: BTreeMap<String, ScopedInstances>,
    #[serde(default)]
    next_page_token: Option<String>,
    #[serde(default)]
    unreachables: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ScopedInstances {
    #[serde(default)]
    instances: Vec<Instance>,
}

/// A firewall rule.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Firewall {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub network: String,
    #[serde(default)]
    pub direction: String,
    #[serde(default)]
    pub source_ranges: Vec<String>,
    #[serde(default)]
    pub target_tags: Vec<String>,
    #[serde(default)]
    pub allowed: Vec<Allowed>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Allowed {
    #[serde(rename = "IPProtocol")]
    pub ip_protocol: String,
    #[serde(default)]
    pub ports: Vec<String>,
}

/// A failed call: the mapped error plus what a caller branches on.
#[derive(Debug, Clone)]
pub struct GcpError {
    /// HTTP status, when a response (or an operation's
    /// `httpErrorStatusCode`) said one.
    pub status: Option<u16>,
    /// Google's reasons (`quotaExceeded`, `conditionNotMet`) or an
    /// operation's error codes (`ZONE_RESOURCE_POOL_EXHAUSTED`).
    pub codes: Vec<String>,
    /// Google's message.
    pub message: String,
    /// What the caller sees.
    pub error: ProviderError,
}

impl GcpError {
    /// Whether the call failed with a 404.
    #[must_use]
    pub fn is_not_found(&self) -> bool {
        self.status == Some(404)
    }

    /// Whether Google answered with one of `codes`.
    #[must_use]
    pub fn has_code(&self, codes: &[&str]) -> bool {
        self.codes.iter().any(|c| codes.contains(&c.as_str()))
    }
}

impl From<GcpError> for ProviderError {
    fn from(e: GcpError) -> Self {
        e.error
    }
}

/// Reasons of a 403 that are about capacity or quota, not permission.
const QUOTA_REASONS: [&str; 4] = [
    "quotaExceeded",
    "rateLimitExceeded",
    "userRateLimitExceeded",
    "QUOTA_EXCEEDED",
];

/// A Compute Engine client for one project.
#[derive(Debug, Clone)]
pub struct Compute {
    http: reqwest::Client,
    base: String,
    project: String,
    auth: Arc<TokenSource>,
}

impl Compute {
    /// A client of `project` at `base` (no trailing `/`).
    ///
    /// # Errors
    /// The HTTP client cannot be built.
    pub fn new(base: &str, project: &str, auth: Arc<TokenSource>) -> Result<Self, ProviderError> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ProviderError::Failed(format!("gcp: HTTP client: {e}")))?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            project: project.to_owned(),
            auth,
        })
    }

    /// The project.
    #[must_use]
    pub fn project(&self) -> &str {
        &self.project
    }

    fn zonal(&self, zone: &str, rest: &str) -> String {
        format!("/projects/{}/zones/{zone}{rest}", self.project)
    }

    /// `instances.insert`, then its operation until `DONE`.
    ///
    /// # Errors
    /// The refusal, or the operation's error.
    pub async fn insert(&self, zone: &str, instance: &Value) -> Result<(), GcpError> {
        let op: Operation = self
            .call(
                Method::POST,
                &self.zonal(zone, "/instances"),
                &[],
                Some(instance),
            )
            .await?;
        self.wait(op).await
    }

    /// `instances.get`; `None` on 404.
    ///
    /// # Errors
    /// Any other failure.
    pub async fn instance(&self, zone: &str, name: &str) -> Result<Option<Instance>, GcpError> {
        match self
            .call::<Instance>(
                Method::GET,
                &self.zonal(zone, &format!("/instances/{name}")),
                &[],
                None,
            )
            .await
        {
            Ok(i) => Ok(Some(i)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `instances.delete`, then its operation until `DONE`. A 404 is gone
    /// already.
    ///
    /// # Errors
    /// Any other failure.
    pub async fn delete(&self, zone: &str, name: &str) -> Result<(), GcpError> {
        match self
            .call::<Operation>(
                Method::DELETE,
                &self.zonal(zone, &format!("/instances/{name}")),
                &[],
                None,
            )
            .await
        {
            Ok(op) => match self.wait(op).await {
                Err(e) if e.is_not_found() => Ok(()),
                other => other,
            },
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `instances.setLabels` with the fingerprint the labels were read with.
    ///
    /// # Errors
    /// A stale fingerprint is a 412 (`conditionNotMet`).
    pub async fn set_labels(
        &self,
        zone: &str,
        name: &str,
        labels: &Labels,
        fingerprint: &str,
    ) -> Result<(), GcpError> {
        let body = serde_json::json!({ "labels": labels, "labelFingerprint": fingerprint });
        let op: Operation = self
            .call(
                Method::POST,
                &self.zonal(zone, &format!("/instances/{name}/setLabels")),
                &[],
                Some(&body),
            )
            .await?;
        self.wait(op).await
    }

    /// Every instance of the project matching `filter`, in every zone,
    /// every page. A zone the API could not reach fails the listing.
    ///
    /// # Errors
    /// Any failed page.
    pub async fn aggregated(&self, filter: &str) -> Result<Vec<Instance>, GcpError> {
        let path = format!("/projects/{}/aggregated/instances", self.project);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![
                ("filter", filter.to_owned()),
                ("maxResults", PAGE_SIZE.to_string()),
            ];
            if let Some(t) = &token {
                query.push(("pageToken", t.clone()));
            }
            let page: AggregatedPage = self.call(Method::GET, &path, &query, None).await?;
            if !page.unreachables.is_empty() {
                let message = format!(
                    "gcp: listing instances: unreachable: {}",
                    page.unreachables.join(", ")
                );
                return Err(GcpError {
                    status: None,
                    codes: Vec::new(),
                    message: message.clone(),
                    error: ProviderError::Retryable {
                        message,
                        retry_after: None,
                    },
                });
            }
            for (scope, list) in page.items {
                for mut instance in list.instances {
                    if instance.zone.is_empty() {
                        instance.zone = scope.clone();
                    }
                    out.push(instance);
                }
            }
            match page.next_page_token.filter(|t| !t.is_empty()) {
                Some(t) if Some(&t) != token.as_ref() => token = Some(t),
                _ => break,
            }
        }
        Ok(out)
    }

    /// `firewalls.get`; `None` on 404.
    ///
    /// # Errors
    /// Any other failure.
    pub async fn firewall(&self, name: &str) -> Result<Option<Firewall>, GcpError> {
        let path = format!("/projects/{}/global/firewalls/{name}", self.project);
        match self.call::<Firewall>(Method::GET, &path, &[], None).await {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `firewalls.insert`, then its global operation until `DONE`.
    ///
    /// # Errors
    /// The refusal (409 when it exists), or the operation's error.
    pub async fn insert_firewall(&self, firewall: &Firewall) -> Result<(), GcpError> {
        let path = format!("/projects/{}/global/firewalls", self.project);
        let body = serde_json::to_value(firewall).unwrap_or_default();
        let op: Operation = self.call(Method::POST, &path, &[], Some(&body)).await?;
        self.wait(op).await
    }

    /// Waits for `op` with the API's `wait` method until it is `DONE`; an
    /// error inside the operation is the call's error.
    async fn wait(&self, mut op: Operation) -> Result<(), GcpError> {
        loop {
            if op.status == "DONE" {
                return match op.error {
                    Some(errors) if !errors.errors.is_empty() => {
                        Err(operation_error(op.http_error_status_code, &errors.errors))
                    }
                    _ => Ok(()),
                };
            }
            let path = match op.zone.as_deref().map(resource_name) {
                Some(zone) => self.zonal(zone, &format!("/operations/{}/wait", op.name)),
                None => format!(
                    "/projects/{}/global/operations/{}/wait",
                    self.project, op.name
                ),
            };
            let next: Operation = self.call(Method::POST, &path, &[], None).await?;
            if next.status != "DONE" {
                tokio::time::sleep(OPERATION_POLL).await;
            }
            op = next;
        }
    }

    /// One request: a fresh token, the JSON body, the answer decoded or the
    /// error mapped.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<T, GcpError> {
        let what = format!("gcp: {method} {path}");
        let token = self.auth.token().await.map_err(|error| GcpError {
            status: None,
            codes: Vec::new(),
            message: error.to_string(),
            error,
        })?;
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token)
            .header(reqwest::header::USER_AGENT, crate::http::user_agent())
            .timeout(TIMEOUT);
        if !query.is_empty() {
            request = request.query(query);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let transport = |e: &reqwest::Error| {
            let a = crate::http::transport_error(&what, e, TIMEOUT);
            GcpError {
                status: None,
                codes: Vec::new(),
                message: a.message,
                error: a.error,
            }
        };
        let response = request.send().await.map_err(|e| transport(&e))?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(|e| transport(&e))?;
        if (200..300).contains(&status) {
            return serde_json::from_slice(&bytes).map_err(|e| {
                let message = format!("{what}: unexpected response: {e}");
                GcpError {
                    status: None,
                    codes: Vec::new(),
                    message: message.clone(),
                    error: ProviderError::Failed(message),
                }
            });
        }
        Err(status_error(&what, status, &bytes))
    }
}

/// Google's error answer `{"error": {"code", "message", "errors": [{reason}]}}`
/// mapped: 404 not found; 401, and a 403 that is not about quota, a
/// credentials error (exit 3); 429 and 5xx retryable; the rest fails with
/// Google's reasons and message.
fn status_error(what: &str, status: u16, body: &[u8]) -> GcpError {
    let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let error = &value["error"];
    let message = error["message"].as_str().map_or_else(
        || String::from_utf8_lossy(body).chars().take(200).collect(),
        str::to_owned,
    );
    let codes: Vec<String> = error["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["reason"].as_str().map(str::to_owned))
        .collect();
    let detail = if codes.is_empty() {
        message.clone()
    } else {
        format!("{}: {message}", codes.join(","))
    };
    let full = format!("{what}: {status} {detail}");
    let quota = codes.iter().any(|c| QUOTA_REASONS.contains(&c.as_str()));
    let error = match status {
        404 => ProviderError::NotFound(format!("{what} ({message})")),
        429 => ProviderError::Retryable {
            message: full,
            retry_after: None,
        },
        s if s >= 500 => ProviderError::Retryable {
            message: full,
            retry_after: None,
        },
        401 => ProviderError::Credentials {
            message: format!("gcp rejected the credentials ({status} {detail})"),
            hint: "set GOOGLE_APPLICATION_CREDENTIALS to valid credentials, or run `gcloud auth application-default login`".to_owned(),
        },
        403 if !quota => ProviderError::Credentials {
            message: format!("gcp refused the call: {what}: {status} {detail}"),
            hint: "give the credentials' account the Compute Instance Admin (v1) and Compute Security Admin roles on the project (or set gcp.project to a project it may use)".to_owned(),
        },
        _ => ProviderError::Failed(full),
    };
    GcpError {
        status: Some(status),
        codes,
        message,
        error,
    }
}

/// The errors inside a finished operation, as one failure.
fn operation_error(status: Option<u16>, errors: &[OperationError]) -> GcpError {
    let codes: Vec<String> = errors.iter().map(|e| e.code.clone()).collect();
    let message = errors
        .iter()
        .map(|e| format!("{}: {}", e.code, e.message))
        .collect::<Vec<_>>()
        .join("; ");
    let error = match status {
        Some(404) => ProviderError::NotFound(format!("gcp: {message}")),
        _ => ProviderError::Failed(format!("gcp: {message}")),
    };
    GcpError {
        status,
        codes,
        message,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn googles_errors_map_to_what_the_engine_does() {
        let body = br#"{"error":{"code":403,"message":"Quota 'CPUS' exceeded.","errors":[{"reason":"quotaExceeded","domain":"usageLimits","message":"x"}]}}"#;
        let e = status_error("gcp: POST /x", 403, body);
        assert!(matches!(e.error, ProviderError::Failed(_)), "{e:?}");
        assert!(e.has_code(&["quotaExceeded"]));
        let e = status_error(
            "w",
            403,
            br#"{"error":{"code":403,"message":"Required 'compute.instances.create' permission","errors":[{"reason":"forbidden"}]}}"#,
        );
        assert!(
            matches!(e.error, ProviderError::Credentials { .. }),
            "{e:?}"
        );
        let e = status_error("w", 412, br#"{"error":{"code":412,"message":"Labels fingerprint either invalid or resource labels have changed","errors":[{"reason":"conditionNotMet"}]}}"#);
        assert!(e.has_code(&["conditionNotMet"]));
        assert!(status_error("w", 404, b"{}").is_not_found());
        assert!(status_error("w", 503, b"down").error.is_retryable());
    }

    #[test]
    fn an_operations_errors_are_its_codes() {
        let e = operation_error(
            Some(503),
            &[OperationError {
                code: "ZONE_RESOURCE_POOL_EXHAUSTED".to_owned(),
                message: "no room".to_owned(),
            }],
        );
        assert!(e.has_code(&["ZONE_RESOURCE_POOL_EXHAUSTED"]));
        assert!(e.message.contains("no room"));
    }
}
