//! Daytona's REST API as crabbox uses it (the shapes of Daytona's published
//! OpenAPI document, as its generated `daytona-api-client` reads them):
//! sandboxes (`/sandbox`), their labels, SSH access tokens, and the
//! toolbox's file upload.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_TYPE, USER_AGENT};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::{ApiError, HttpClient, status_error, transport_error, user_agent};
use crabbox_core::provider::ProviderError;

/// The provider's name in messages.
pub(super) const PROVIDER: &str = "daytona";
/// The variable named when Daytona refuses the credentials.
pub(super) const KEY_ENV: &str = "DAYTONA_API_KEY";
/// Sandboxes per list page (the API allows 1–200; Crabbox asks for 100).
const PAGE_LIMIT: u32 = 100;
/// How long an upload of the repository archive may take.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(300);

/// A sandbox as `GET /sandbox/{id}` and the list's items describe it
/// (`Sandbox` / `SandboxListItem`): only the fields crabbox reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Sandbox {
    pub(super) id: String,
    #[serde(default)]
    pub(super) name: String,
    #[serde(default)]
    pub(super) labels: BTreeMap<String, String>,
    /// `creating`, `starting`, `started`, `stopped`, `error`, …
    #[serde(default)]
    pub(super) state: Option<String>,
    #[serde(default)]
    pub(super) error_reason: Option<String>,
    /// Where the sandbox's toolbox API (files, processes) is served.
    #[serde(default)]
    pub(super) toolbox_proxy_url: Option<String>,
}

impl Sandbox {
    pub(super) fn state(&self) -> &str {
        self.state.as_deref().unwrap_or("")
    }

    pub(super) fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }
}

/// One page of `GET /sandbox` (`ListSandboxesResponse`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SandboxPage {
    items: Vec<Sandbox>,
    #[serde(default)]
    next_cursor: Option<String>,
}

/// `POST /sandbox/{id}/ssh-access` (`SshAccessDto`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct SshAccess {
    pub(super) token: String,
    /// `ssh [-p N] <token>@<gateway>`.
    #[serde(default)]
    pub(super) ssh_command: String,
    #[serde(default)]
    pub(super) expires_at: Option<String>,
    #[serde(default)]
    pub(super) created_at: Option<String>,
}

impl SshAccess {
    /// How long the token lives, from Daytona's own timestamps (so the
    /// clocks of this machine and Daytona's need not agree); `None` when
    /// they are missing or unreadable.
    pub(super) fn lifetime(&self) -> Option<Duration> {
        let at = |t: &Option<String>| t.as_deref()?.parse::<jiff::Timestamp>().ok();
        let (created, expires) = (at(&self.created_at)?, at(&self.expires_at)?);
        let span = expires.as_millisecond() - created.as_millisecond();
        u64::try_from(span).ok().map(Duration::from_millis)
    }
}

/// Daytona's API for one set of credentials.
#[derive(Debug, Clone)]
pub(super) struct Api {
    pub(super) http: HttpClient,
    /// For the toolbox (its URL is the sandbox's, not the API's).
    raw: reqwest::Client,
    token: Secret,
    organization: Option<String>,
}

/// A credential that never shows in `Debug` output.
#[derive(Clone)]
struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Api {
    /// The API at `base_url`, authenticating with `token` (an API key or a
    /// JWT) and, when given, `X-Daytona-Organization-ID`.
    pub(super) fn new(base_url: &str, token: &str, organization: Option<&str>) -> Self {
        let mut http = HttpClient::new(PROVIDER, base_url, token, KEY_ENV);
        if let Some(org) = organization {
            http = http.with_header("X-Daytona-Organization-ID", org);
        }
        let raw = reqwest::Client::builder()
            .user_agent(user_agent())
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Self {
            http,
            raw,
            token: Secret(token.to_owned()),
            organization: organization.map(str::to_owned),
        }
    }

    /// `POST /sandbox`.
    pub(super) async fn create(&self, body: &Value) -> Result<Sandbox, ApiError> {
        self.http.post_json("/sandbox", body).await
    }

    /// `GET /sandbox/{id}`.
    pub(super) async fn get(&self, id: &str) -> Result<Sandbox, ApiError> {
        self.http
            .get_json(&format!("/sandbox/{id}"), &[("verbose", "true".to_owned())])
            .await
    }

    /// Every sandbox carrying all of `labels`: `GET /sandbox?labels=<JSON>`,
    /// following `nextCursor` to the last page. Each page is retried on its
    /// own; a page that cannot be read fails the listing.
    pub(super) async fn list(
        &self,
        labels: &BTreeMap<&str, &str>,
    ) -> Result<Vec<Sandbox>, ProviderError> {
        let filter = serde_json::to_string(labels).unwrap_or_default();
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut query = vec![
                ("limit", PAGE_LIMIT.to_string()),
                ("labels", filter.clone()),
            ];
            if let Some(c) = &cursor {
                query.push(("cursor", c.clone()));
            }
            let page: SandboxPage = self.http.get_json_with_retries("/sandbox", &query).await?;
            out.extend(page.items);
            match page.next_cursor.filter(|c| !c.is_empty()) {
                Some(next) if cursor.as_deref() != Some(next.as_str()) => cursor = Some(next),
                _ => return Ok(out),
            }
        }
    }

    /// `PUT /sandbox/{id}/labels` (replaces every label).
    pub(super) async fn replace_labels(
        &self,
        id: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), ApiError> {
        let _: Value = self
            .http
            .put_json(
                &format!("/sandbox/{id}/labels"),
                &json!({ "labels": labels }),
            )
            .await?;
        Ok(())
    }

    /// `DELETE /sandbox/{id}`.
    pub(super) async fn delete(&self, id: &str) -> Result<(), ApiError> {
        self.http.delete(&format!("/sandbox/{id}")).await
    }

    /// `POST /sandbox/{id}/ssh-access?expiresInMinutes=N`.
    pub(super) async fn ssh_access(&self, id: &str, minutes: u32) -> Result<SshAccess, ApiError> {
        let path = format!("/sandbox/{id}/ssh-access?expiresInMinutes={minutes}");
        self.http.post_json(&path, &json!({})).await
    }

    /// Uploads `bytes` to `path` in the sandbox through its toolbox:
    /// `POST {toolboxProxyUrl}/{id}/files/upload?path=` (multipart `file`),
    /// with the API's credentials, as Crabbox uploads its sync archive.
    pub(super) async fn upload(
        &self,
        toolbox: &str,
        id: &str,
        path: &str,
        bytes: Vec<u8>,
    ) -> Result<(), ApiError> {
        let boundary = format!("crabbox-{:016x}", rand_u64());
        let mut body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"archive.tar.gz\"\r\nContent-Type: application/gzip\r\n\r\n"
        )
        .into_bytes();
        body.extend_from_slice(&bytes);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let url = format!("{}/{id}/files/upload", toolbox.trim_end_matches('/'));
        let what = format!("{PROVIDER}: toolbox upload to {path}");
        let mut request = self
            .raw
            .post(&url)
            .query(&[("path", path)])
            .bearer_auth(&self.token.0)
            .header(USER_AGENT, user_agent())
            .header(ACCEPT, "*/*")
            .header(
                CONTENT_TYPE,
                format!("multipart/form-data; boundary={boundary}"),
            )
            .timeout(UPLOAD_TIMEOUT)
            .body(body);
        if let Some(org) = &self.organization {
            request = request.header("X-Daytona-Organization-ID", org);
        }
        let response = request
            .send()
            .await
            .map_err(|e| transport_error(&what, &e, UPLOAD_TIMEOUT))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let headers = response.headers().clone();
        let body = response.bytes().await.unwrap_or_default();
        Err(status_error(
            PROVIDER,
            KEY_ENV,
            &what,
            "/files/upload",
            status,
            &headers,
            &body,
        ))
    }
}

/// Whether an error is Daytona's "no such sandbox".
pub(super) fn is_gone(e: &ApiError) -> bool {
    e.status == Some(StatusCode::NOT_FOUND.as_u16())
}

fn rand_u64() -> u64 {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_access_lives_from_its_creation_to_its_expiry_by_daytonas_clock() {
        let access = SshAccess {
            token: "t".into(),
            ssh_command: String::new(),
            created_at: Some("2026-01-01T00:00:00Z".into()),
            expires_at: Some("2026-01-01T00:30:00.000Z".into()),
        };
        assert_eq!(access.lifetime(), Some(Duration::from_secs(1800)));
        let unknown = SshAccess {
            expires_at: None,
            ..access
        };
        assert_eq!(unknown.lifetime(), None);
    }
}
