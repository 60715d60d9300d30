//! Azure Resource Manager over reqwest: the few resource types crabbox
//! uses, each at a pinned api-version; long-running operations followed
//! through `Azure-AsyncOperation` (else `Location`) at the pace
//! `Retry-After` asks; throttling (429) waited out; list pages followed
//! through `nextLink`; error bodies `{"error": {"code", "message"}}` mapped
//! to [`ProviderError`]s by [`crate::http::status_error`].
//!
//! A delete is finished when its operation says so: the deleted resource
//! is never read again (Crabbox once did, and took the answer — 404, or the
//! resource still `Deleting` — for a failure). A delete answered 404, or
//! 204 (ARM's "there was nothing"), is a resource already gone.
//!
//! The bearer token goes only to the ARM endpoint's origin: a `nextLink`
//! or operation URL elsewhere is refused.

use std::sync::Arc;
use std::time::{Duration, Instant};

use azure_core::credentials::TokenCredential;
use crabbox_core::provider::ProviderError;
use reqwest::header::{HeaderMap, RETRY_AFTER, USER_AGENT};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::http::{ApiError, status_error, transport_error, user_agent};

use super::credentials::{ARM_SCOPE, Source, token_refused};

/// Azure Resource Manager's public endpoint.
pub const DEFAULT_ENDPOINT: &str = "https://management.azure.com";
/// Replaces [`DEFAULT_ENDPOINT`] (tests, sovereign clouds).
pub const ENDPOINT_ENV: &str = "CRABBOX_AZURE_ARM_ENDPOINT";

/// The api-version of each resource type crabbox touches (pinned: ARM
/// answers each version with that version's shapes).
pub mod api_version {
    /// `Microsoft.Resources/resourceGroups`.
    pub const RESOURCES: &str = "2021-04-01";
    /// `Microsoft.Network/*`: virtual networks, subnets, network security
    /// groups, public IP addresses, network interfaces.
    pub const NETWORK: &str = "2024-05-01";
    /// `Microsoft.Compute/virtualMachines`.
    pub const COMPUTE: &str = "2024-07-01";
    /// `Microsoft.Compute/disks` (versioned apart from the VMs).
    pub const DISKS: &str = "2024-03-02";
}

/// Per-request time limit.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a throttled (429) request is sent again before giving up.
const THROTTLE_RETRIES: u32 = 6;
/// The longest `Retry-After` honoured (a longer one is waited this long).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Wait between operation polls when ARM names none.
const DEFAULT_POLL: Duration = Duration::from_secs(5);
/// How long one long-running operation may take.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// One resource: its path below the endpoint, its api-version, and how
/// messages name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// `/subscriptions/…/resourceGroups/…/providers/…/<name>`.
    pub path: String,
    /// The pinned api-version of its type.
    pub api_version: &'static str,
    /// `virtual network crabbox-vnet`.
    pub what: String,
}

/// The kinds of resources crabbox uses in a resource group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `Microsoft.Network/virtualNetworks`.
    VirtualNetwork,
    /// `Microsoft.Network/networkSecurityGroups`.
    SecurityGroup,
    /// `Microsoft.Network/publicIPAddresses`.
    PublicIp,
    /// `Microsoft.Network/networkInterfaces`.
    Nic,
    /// `Microsoft.Compute/virtualMachines`.
    Vm,
    /// `Microsoft.Compute/disks`.
    Disk,
}

impl Kind {
    /// `<namespace>/<type>` and the pinned api-version.
    #[must_use]
    pub fn provider_type(self) -> (&'static str, &'static str) {
        match self {
            Self::VirtualNetwork => ("Microsoft.Network/virtualNetworks", api_version::NETWORK),
            Self::SecurityGroup => (
                "Microsoft.Network/networkSecurityGroups",
                api_version::NETWORK,
            ),
            Self::PublicIp => ("Microsoft.Network/publicIPAddresses", api_version::NETWORK),
            Self::Nic => ("Microsoft.Network/networkInterfaces", api_version::NETWORK),
            Self::Vm => ("Microsoft.Compute/virtualMachines", api_version::COMPUTE),
            Self::Disk => ("Microsoft.Compute/disks", api_version::DISKS),
        }
    }

    /// How messages name it.
    #[must_use]
    pub fn noun(self) -> &'static str {
        match self {
            Self::VirtualNetwork => "virtual network",
            Self::SecurityGroup => "network security group",
            Self::PublicIp => "public IP address",
            Self::Nic => "network interface",
            Self::Vm => "virtual machine",
            Self::Disk => "disk",
        }
    }
}

/// An ARM client of one subscription.
#[derive(Clone)]
pub struct Arm {
    http: reqwest::Client,
    endpoint: String,
    subscription: String,
    credential: Arc<dyn TokenCredential>,
    source: Source,
}

impl std::fmt::Debug for Arm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arm")
            .field("endpoint", &self.endpoint)
            .field("subscription", &self.subscription)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// How a finished operation ended.
enum Outcome {
    Succeeded,
    Failed(ApiError),
}

impl Arm {
    /// A client of `subscription` at `endpoint`, authenticating with
    /// `credential` (made from `source`, named in errors).
    #[must_use]
    pub fn new(
        http: reqwest::Client,
        endpoint: &str,
        subscription: &str,
        credential: Arc<dyn TokenCredential>,
        source: Source,
    ) -> Self {
        Self {
            http,
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            subscription: subscription.to_owned(),
            credential,
            source,
        }
    }

    /// The subscription.
    #[must_use]
    pub fn subscription(&self) -> &str {
        &self.subscription
    }

    /// `/subscriptions/<s>/resourceGroups/<rg>`.
    #[must_use]
    pub fn group_path(&self, group: &str) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{group}",
            self.subscription
        )
    }

    /// The resource group itself.
    #[must_use]
    pub fn group(&self, group: &str) -> Resource {
        Resource {
            path: self.group_path(group),
            api_version: api_version::RESOURCES,
            what: format!("resource group {group}"),
        }
    }

    /// A resource of `kind` named `name` in `group`.
    #[must_use]
    pub fn resource(&self, group: &str, kind: Kind, name: &str) -> Resource {
        let (provider_type, api_version) = kind.provider_type();
        Resource {
            path: format!(
                "{}/providers/{provider_type}/{name}",
                self.group_path(group)
            ),
            api_version,
            what: format!("{} {name}", kind.noun()),
        }
    }

    /// Subnet `name` of virtual network `vnet`.
    #[must_use]
    pub fn subnet(&self, group: &str, vnet: &str, name: &str) -> Resource {
        let vnet = self.resource(group, Kind::VirtualNetwork, vnet);
        Resource {
            path: format!("{}/subnets/{name}", vnet.path),
            api_version: api_version::NETWORK,
            what: format!("subnet {name}"),
        }
    }

    /// The list of `kind` in `group` (a path for [`Self::list`]).
    #[must_use]
    pub fn collection(&self, group: &str, kind: Kind) -> Resource {
        let (provider_type, api_version) = kind.provider_type();
        Resource {
            path: format!("{}/providers/{provider_type}", self.group_path(group)),
            api_version,
            what: format!("{}s in {group}", kind.noun()),
        }
    }

    /// `GET` a resource; `None` when it does not exist.
    ///
    /// # Errors
    /// Mapped as [`crate::http`] maps errors.
    pub async fn get(&self, r: &Resource) -> Result<Option<Value>, ApiError> {
        match self.send(Method::GET, &self.url(r, &[]), None).await {
            Ok((_, _, body)) => Ok(Some(body)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `PUT` (create or update) a resource and follow its operation to
    /// the end; returns the resource as it then is.
    ///
    /// # Errors
    /// The refusal, or the failed operation's error (its code kept, so
    /// capacity errors can be told apart).
    pub async fn put(&self, r: &Resource, body: &Value) -> Result<Value, ApiError> {
        self.write(Method::PUT, r, body).await
    }

    /// `PATCH` a resource (tags) and follow its operation to the end.
    ///
    /// # Errors
    /// As [`Self::put`].
    pub async fn patch(&self, r: &Resource, body: &Value) -> Result<Value, ApiError> {
        self.write(Method::PATCH, r, body).await
    }

    async fn write(&self, method: Method, r: &Resource, body: &Value) -> Result<Value, ApiError> {
        let (status, headers, answer) = self
            .send(method.clone(), &self.url(r, &[]), Some(body))
            .await?;
        if let Some(poll) = operation_url(&headers) {
            if let Outcome::Failed(e) = self.follow(r, &poll, &headers).await? {
                return Err(e);
            }
            // Done: the resource's final state (ARM's `original-uri`).
            return self
                .get(r)
                .await?
                .ok_or_else(|| self.failed(r, "its operation succeeded but it does not exist"));
        }
        if status == StatusCode::ACCEPTED {
            return Err(self.failed(r, "202 Accepted without an operation to follow"));
        }
        // No operation: the provisioning state tells (polled on the resource).
        let mut current = answer;
        let started = Instant::now();
        loop {
            match provisioning_state(&current).as_deref() {
                None | Some("Succeeded") => return Ok(current),
                Some("Failed" | "Canceled") => {
                    return Err(self.failed(r, "its provisioning failed"));
                }
                Some(_) if started.elapsed() > OPERATION_TIMEOUT => {
                    return Err(self.failed(r, "its provisioning did not finish"));
                }
                Some(_) => {
                    tokio::time::sleep(DEFAULT_POLL.min(Duration::from_secs(1))).await;
                    current = self
                        .get(r)
                        .await?
                        .ok_or_else(|| self.failed(r, "it disappeared while provisioning"))?;
                }
            }
        }
    }

    /// `DELETE` a resource and follow the deletion's operation to its end —
    /// and only it: the resource is not read afterwards. Gone already (404,
    /// or ARM's 204) is success.
    ///
    /// # Errors
    /// The refusal, or the failed operation's error.
    pub async fn delete(&self, r: &Resource, query: &[(&str, &str)]) -> Result<(), ApiError> {
        let (status, headers, _) = match self.send(Method::DELETE, &self.url(r, query), None).await
        {
            Ok(answer) => answer,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
        };
        if status == StatusCode::NO_CONTENT || status == StatusCode::OK {
            return Ok(());
        }
        let Some(poll) = operation_url(&headers) else {
            return Err(self.failed(r, "its delete was accepted without an operation to follow"));
        };
        match self.follow(r, &poll, &headers).await? {
            Outcome::Succeeded => Ok(()),
            Outcome::Failed(e) => Err(e),
        }
    }

    /// Every item of a list, all pages (`nextLink`). A resource group that
    /// does not exist holds nothing.
    ///
    /// # Errors
    /// A page that could not be read: the listing fails, never shortened.
    pub async fn list(&self, r: &Resource) -> Result<Vec<Value>, ApiError> {
        let mut url = self.url(r, &[]);
        let mut items = Vec::new();
        loop {
            let page = match self.send(Method::GET, &url, None).await {
                Ok((_, _, page)) => page,
                Err(e)
                    if e.is_not_found()
                        && items.is_empty()
                        && e.has_code("ResourceGroupNotFound") =>
                {
                    return Ok(items);
                }
                Err(e) => return Err(e),
            };
            if let Some(values) = page.get("value").and_then(Value::as_array) {
                items.extend(values.iter().cloned());
            }
            match page.get("nextLink").and_then(Value::as_str) {
                Some(next) if !next.is_empty() => url = self.same_origin(next, &r.what)?,
                _ => return Ok(items),
            }
        }
    }

    /// Polls an operation until it ends, waiting what `Retry-After` says.
    async fn follow(
        &self,
        r: &Resource,
        poll: &str,
        first: &HeaderMap,
    ) -> Result<Outcome, ApiError> {
        let poll = self.same_origin(poll, &r.what)?;
        let by_status = first.contains_key("azure-asyncoperation");
        let started = Instant::now();
        let mut wait = retry_after(first).unwrap_or(DEFAULT_POLL);
        loop {
            if started.elapsed() > OPERATION_TIMEOUT {
                return Err(self.failed(r, "its operation did not finish in 20 minutes"));
            }
            tokio::time::sleep(wait).await;
            let (status, headers, body) = self.send(Method::GET, &poll, None).await?;
            wait = retry_after(&headers).unwrap_or(DEFAULT_POLL);
            if by_status {
                match body.get("status").and_then(Value::as_str).unwrap_or("") {
                    "Succeeded" => return Ok(Outcome::Succeeded),
                    "Failed" | "Canceled" | "Cancelled" => {
                        return Ok(Outcome::Failed(self.operation_error(r, &body)));
                    }
                    _ => {}
                }
            } else if status != StatusCode::ACCEPTED {
                // `Location` polling: 202 while running, then the result.
                return Ok(Outcome::Succeeded);
            }
        }
    }

    /// The error of a failed operation, its code kept.
    fn operation_error(&self, r: &Resource, body: &Value) -> ApiError {
        let error = body.get("error").cloned().unwrap_or(Value::Null);
        let code = error.get("code").and_then(Value::as_str).map(str::to_owned);
        let message = error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("the operation failed")
            .to_owned();
        let text = format!(
            "azure: {}: {}{message}",
            r.what,
            code.as_deref()
                .map(|c| format!("{c}: "))
                .unwrap_or_default()
        );
        ApiError {
            status: None,
            code,
            message,
            error: ProviderError::Failed(text),
        }
    }

    fn failed(&self, r: &Resource, why: &str) -> ApiError {
        let message = format!("azure: {}: {why}", r.what);
        ApiError {
            status: None,
            code: None,
            message: message.clone(),
            error: ProviderError::Failed(message),
        }
    }

    fn url(&self, r: &Resource, query: &[(&str, &str)]) -> String {
        let mut url = format!("{}{}?api-version={}", self.endpoint, r.path, r.api_version);
        for (k, v) in query {
            url.push('&');
            url.push_str(k);
            url.push('=');
            url.push_str(v);
        }
        url
    }

    /// `url` when it is on the endpoint's origin (the token goes nowhere
    /// else).
    fn same_origin(&self, url: &str, what: &str) -> Result<String, ApiError> {
        let origin = |u: &str| {
            reqwest::Url::parse(u)
                .ok()
                .map(|u| u.origin().ascii_serialization())
        };
        if origin(url).is_some() && origin(url) == origin(&self.endpoint) {
            Ok(url.to_owned())
        } else {
            let message = format!(
                "azure: {what}: refusing to follow {url}: not on the ARM endpoint {}",
                self.endpoint
            );
            Err(ApiError {
                status: None,
                code: None,
                message: message.clone(),
                error: ProviderError::Failed(message),
            })
        }
    }

    /// One call, sent again while ARM throttles it (429, after its
    /// `Retry-After`); a 5xx of a read is sent again too.
    async fn send(
        &self,
        method: Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, HeaderMap, Value), ApiError> {
        let path = url
            .strip_prefix(&self.endpoint)
            .unwrap_or(url)
            .split('?')
            .next()
            .unwrap_or_default()
            .to_owned();
        let what = format!("azure: {method} {path}");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let token = self
                .credential
                .get_token(&[ARM_SCOPE], None)
                .await
                .map_err(|e| {
                    let error = token_refused(&self.source, &e);
                    ApiError {
                        status: None,
                        code: None,
                        message: error.to_string(),
                        error,
                    }
                })?;
            let mut request = self
                .http
                .request(method.clone(), url)
                .bearer_auth(token.token.secret())
                .header(USER_AGENT, user_agent())
                .timeout(REQUEST_TIMEOUT);
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = match request.send().await {
                Ok(r) => r,
                Err(e) => return Err(transport_error(&what, &e, REQUEST_TIMEOUT)),
            };
            let status = response.status();
            let headers = response.headers().clone();
            let bytes = response
                .bytes()
                .await
                .map_err(|e| transport_error(&what, &e, REQUEST_TIMEOUT))?;
            if status.is_success() {
                let value = if bytes.iter().all(u8::is_ascii_whitespace) {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes).map_err(|e| {
                        let message = format!("{what}: unexpected response: {e}");
                        ApiError {
                            status: Some(status.as_u16()),
                            code: None,
                            message: message.clone(),
                            error: ProviderError::Failed(message),
                        }
                    })?
                };
                return Ok((status, headers, value));
            }
            let again = status == StatusCode::TOO_MANY_REQUESTS
                || (status.is_server_error() && method == Method::GET);
            if again && attempt <= THROTTLE_RETRIES {
                let wait =
                    retry_after(&headers).unwrap_or(Duration::from_secs(1 << attempt.min(5)));
                eprintln!(
                    "azure: {method} {path}: {} — again in {}s",
                    status.as_u16(),
                    wait.as_secs()
                );
                tokio::time::sleep(wait).await;
                continue;
            }
            return Err(status_error(
                "azure",
                "AZURE_CLIENT_SECRET",
                &what,
                &path,
                status,
                &headers,
                &bytes,
            ));
        }
    }
}

/// Where an accepted operation is followed: `Azure-AsyncOperation`, else
/// `Location`.
fn operation_url(headers: &HeaderMap) -> Option<String> {
    ["azure-asyncoperation", "location"]
        .iter()
        .find_map(|h| headers.get(*h)?.to_str().ok().map(str::to_owned))
        .filter(|u| !u.is_empty())
}

/// `Retry-After` in seconds, at most [`MAX_RETRY_AFTER`].
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER))
}

/// `properties.provisioningState` of a resource.
#[must_use]
pub fn provisioning_state(resource: &Value) -> Option<String> {
    resource
        .pointer("/properties/provisioningState")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// The tags of a resource, as labels (non-string values are skipped).
#[must_use]
pub fn tags(resource: &Value) -> crabbox_core::labels::Labels {
    resource
        .get("tags")
        .and_then(Value::as_object)
        .map(|t| {
            t.iter()
                .filter_map(|(k, v)| Some((k.into(), v.as_str()?.into())))
                .collect()
        })
        .unwrap_or_default()
}

/// A failed call as the caller reports it: what it was doing, then what
/// ARM said (credentials, throttling and "not found" keep their kind).
#[must_use]
pub fn doing(e: ApiError, what: &str) -> ProviderError {
    match e.error {
        ProviderError::Failed(m) => ProviderError::Failed(format!("{what}: {m}")),
        ProviderError::Retryable {
            message,
            retry_after,
        } => ProviderError::Retryable {
            message: format!("{what}: {message}"),
            retry_after,
        },
        other => other,
    }
}
