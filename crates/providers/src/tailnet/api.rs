//! Tailscale's REST API, the parts the pond's ACL rows need: the tailnet
//! policy file (`GET`/`POST /api/v2/tailnet/{tailnet}/acl`) read as HuJSON
//! with its ETag and written back only with `If-Match`, so an edit made
//! meanwhile by someone else is never overwritten.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_TYPE, ETAG, IF_MATCH, USER_AGENT};

use super::Settings;
use super::policy::{self, PolicyError};

/// Each request's time limit (Crabbox's `pondACLEnsureTimeout`).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(6);
/// Reads of the policy, merges and writes before a conflict is final: the
/// first 412 is almost always another run of the same bootstrap, so one
/// fresh read and retry is safe (Crabbox's `pondACLMaxAttempts`).
const ATTEMPTS: usize = 2;
/// Largest policy read (Crabbox reads 256 KiB).
const MAX_POLICY: usize = 256 * 1024;

/// A failed call to the tailnet's API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TailnetError {
    /// The control plane has no Tailscale policy API (Headscale answers 404
    /// or 501), or gave no ETag to write against: the rows must be added by
    /// hand, and an apply is not blocked.
    Unavailable(String),
    /// The policy changed between the read and the write (412), again after
    /// the retry.
    Conflict(String),
    /// The key was refused (401, 403).
    Credentials(String),
    /// The policy cannot be edited safely.
    Policy(PolicyError),
    /// Anything else (with the API's message).
    Failed(String),
}

impl std::fmt::Display for TailnetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unavailable(why)
            | Self::Conflict(why)
            | Self::Credentials(why)
            | Self::Failed(why) => f.write_str(why),
            Self::Policy(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for TailnetError {}

/// What [`ensure_pond_rows`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    /// Both rows were there; nothing was written.
    Present,
    /// The missing rows were written.
    Added,
}

/// A client of one tailnet's API, with its key.
#[derive(Debug, Clone)]
pub struct TailnetApi {
    settings: Settings,
    key: String,
    http: reqwest::Client,
}

impl TailnetApi {
    /// A client for `settings`; `None` without an API key.
    #[must_use]
    pub fn new(settings: &Settings) -> Option<Self> {
        let key = settings.api_key.clone()?;
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .ok()?;
        Some(Self {
            settings: settings.clone(),
            key,
            http,
        })
    }

    /// The policy file's URL; the tailnet is one escaped path segment.
    fn policy_url(&self) -> String {
        let tailnet: String = self
            .settings
            .tailnet
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    char::from(b).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        format!("{}/api/v2/tailnet/{tailnet}/acl", self.settings.api_url)
    }

    /// The policy file as written (HuJSON) and its ETag.
    ///
    /// # Errors
    /// [`TailnetError::Unavailable`] on 404/501 or without an ETag; the
    /// API's refusal otherwise.
    pub async fn policy(&self) -> Result<(String, String), TailnetError> {
        let url = self.policy_url();
        let answer = self
            .http
            .get(&url)
            .basic_auth(&self.key, Some(""))
            .header(ACCEPT, "application/hujson")
            .header(USER_AGENT, crate::http::user_agent())
            .send()
            .await
            .map_err(|e| TailnetError::Failed(format!("GET {url}: {e}")))?;
        let status = answer.status();
        if matches!(status, StatusCode::NOT_FOUND | StatusCode::NOT_IMPLEMENTED) {
            return Err(TailnetError::Unavailable(format!(
                "the control plane at {} has no Tailscale policy API (GET {url} answered {status})",
                self.settings.api_url
            )));
        }
        let etag = answer
            .headers()
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = read_limited(answer).await?;
        if !status.is_success() {
            return Err(refusal(status, &body));
        }
        let etag = etag.filter(|e| !e.is_empty()).ok_or_else(|| {
            TailnetError::Unavailable(format!(
                "GET {url} gave no ETag, so an edit could overwrite someone else's"
            ))
        })?;
        Ok((body, etag))
    }

    /// Writes `body` as the policy, only if it is still at `etag`.
    ///
    /// # Errors
    /// [`TailnetError::Conflict`] on 412; the API's refusal otherwise.
    pub async fn set_policy(&self, body: &str, etag: &str) -> Result<(), TailnetError> {
        let url = self.policy_url();
        let answer = self
            .http
            .post(&url)
            .basic_auth(&self.key, Some(""))
            .header(CONTENT_TYPE, "application/hujson")
            .header(ACCEPT, "application/json")
            .header(IF_MATCH, etag)
            .header(USER_AGENT, crate::http::user_agent())
            .body(body.to_owned())
            .send()
            .await
            .map_err(|e| TailnetError::Failed(format!("POST {url}: {e}")))?;
        let status = answer.status();
        let body = read_limited(answer).await?;
        if status == StatusCode::PRECONDITION_FAILED {
            return Err(TailnetError::Conflict(
                "the tailnet policy changed while crabbox edited it (ETag mismatch)".to_owned(),
            ));
        }
        if !status.is_success() {
            return Err(refusal(status, &body));
        }
        Ok(())
    }
}

/// A device of the tailnet, the fields a pond member's address needs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Device {
    /// Its hostname (`crabbox-<slug>` for members).
    #[serde(default)]
    pub hostname: String,
    /// Its MagicDNS name (`crabbox-db.tail0123.ts.net`).
    #[serde(default)]
    pub name: String,
    /// Its tailnet addresses, IPv4 and IPv6.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Its ACL tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Its stable node ID (`nodeId`; the node's own `tailscale status`
    /// calls it `ID`).
    #[serde(default, rename = "nodeId")]
    pub node_id: String,
    /// When it joined (RFC 3339, UTC).
    #[serde(default)]
    pub created: String,
}

impl Device {
    /// Its tailnet IPv4 address.
    #[must_use]
    pub fn ipv4(&self) -> Option<&str> {
        self.addresses
            .iter()
            .map(String::as_str)
            .find(|a| !a.contains(':'))
    }
}

/// A new auth key's secret (never printed).
#[derive(Clone, PartialEq, Eq)]
pub struct AuthKey(pub String);

impl std::fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthKey(<redacted>)")
    }
}

impl TailnetApi {
    fn tailnet_url(&self, tail: &str) -> String {
        self.policy_url().replace("/acl", tail)
    }

    /// Every device of the tailnet.
    ///
    /// # Errors
    /// The API's refusal.
    pub async fn devices(&self) -> Result<Vec<Device>, TailnetError> {
        #[derive(serde::Deserialize)]
        struct Devices {
            devices: Vec<Device>,
        }
        let url = self.tailnet_url("/devices");
        let answer = self
            .http
            .get(&url)
            .basic_auth(&self.key, Some(""))
            .header(USER_AGENT, crate::http::user_agent())
            .send()
            .await
            .map_err(|e| TailnetError::Failed(format!("GET {url}: {e}")))?;
        let status = answer.status();
        let body = read_limited(answer).await?;
        if !status.is_success() {
            return Err(refusal(status, &body));
        }
        serde_json::from_str::<Devices>(&body)
            .map(|d| d.devices)
            .map_err(|e| TailnetError::Failed(format!("GET {url}: unreadable answer: {e}")))
    }

    /// A one-use auth key for one member: ephemeral (the node leaves the
    /// tailnet when it goes offline), pre-authorized, carrying `tags`, valid
    /// for `expiry` — so a key that leaks is worth one join, briefly.
    ///
    /// # Errors
    /// The API's refusal (a key without the right to mint, a tag the
    /// policy's `tagOwners` does not allow).
    pub async fn mint_auth_key(
        &self,
        tags: &[String],
        description: &str,
        expiry: Duration,
    ) -> Result<AuthKey, TailnetError> {
        let url = self.tailnet_url("/keys");
        let request = serde_json::json!({
            "keyType": "auth",
            "description": description,
            "expirySeconds": expiry.as_secs(),
            "capabilities": { "devices": { "create": {
                "reusable": false,
                "ephemeral": true,
                "preauthorized": true,
                "tags": tags,
            }}},
        });
        let answer = self
            .http
            .post(&url)
            .basic_auth(&self.key, Some(""))
            .header(USER_AGENT, crate::http::user_agent())
            .json(&request)
            .send()
            .await
            .map_err(|e| TailnetError::Failed(format!("POST {url}: {e}")))?;
        let status = answer.status();
        let body = read_limited(answer).await?;
        if !status.is_success() {
            return Err(refusal(status, &body));
        }
        serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("key").and_then(|k| k.as_str()).map(str::to_owned))
            .filter(|k| !k.is_empty())
            .map(AuthKey)
            .ok_or_else(|| TailnetError::Failed(format!("POST {url}: the answer holds no key")))
    }
}

impl TailnetApi {
    /// Removes device `id` (its `nodeId` or legacy ID) from the tailnet.
    /// A device already gone is done.
    ///
    /// # Errors
    /// The API's refusal.
    pub async fn delete_device(&self, id: &str) -> Result<(), TailnetError> {
        let url = format!(
            "{}/api/v2/device/{}",
            self.settings.api_url,
            id.bytes()
                .map(|b| if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                    char::from(b).to_string()
                } else {
                    format!("%{b:02X}")
                })
                .collect::<String>()
        );
        let answer = self
            .http
            .delete(&url)
            .basic_auth(&self.key, Some(""))
            .header(USER_AGENT, crate::http::user_agent())
            .send()
            .await
            .map_err(|e| TailnetError::Failed(format!("DELETE {url}: {e}")))?;
        let status = answer.status();
        let body = read_limited(answer).await?;
        if status.is_success() || status == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(refusal(status, &body))
        }
    }
}

/// The device a member enrolled as: `hostname` (`crabbox-<slug>` by
/// default) carrying the pond's tag (a device of another pond may share
/// the hostname); the newest when several do (an earlier lease of the same
/// member may be listed until its ephemeral node is removed).
#[must_use]
pub fn member_device<'a>(devices: &'a [Device], hostname: &str, tag: &str) -> Option<&'a Device> {
    devices
        .iter()
        .filter(|d| d.hostname == hostname && d.tags.iter().any(|t| t == tag))
        .max_by(|a, b| a.created.cmp(&b.created))
}

async fn read_limited(answer: reqwest::Response) -> Result<String, TailnetError> {
    let bytes = answer
        .bytes()
        .await
        .map_err(|e| TailnetError::Failed(format!("reading the answer: {e}")))?;
    let bytes = &bytes[..bytes.len().min(MAX_POLICY)];
    Ok(String::from_utf8_lossy(bytes).into_owned())
}

/// The API's refusal, with its `message` when the body has one.
fn refusal(status: StatusCode, body: &str) -> TailnetError {
    let message = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
        .filter(|m| !m.is_empty());
    let text = match message {
        Some(m) => format!("tailscale api {}: {m}", status.as_u16()),
        None => format!("tailscale api {}", status.as_u16()),
    };
    if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        TailnetError::Credentials(format!("{text} (check {})", super::API_KEY_VAR))
    } else {
        TailnetError::Failed(text)
    }
}

/// Makes sure the tailnet policy holds the rows of `tag` (see [`policy`]):
/// reads it, and when a row is missing writes the merged policy against
/// the ETag it read; a conflict is read and merged again once.
///
/// # Errors
/// What [`TailnetApi::policy`] and [`TailnetApi::set_policy`] return, a
/// policy that cannot be edited safely, or a conflict that persisted.
pub async fn ensure_pond_rows(api: &TailnetApi, tag: &str) -> Result<Ensured, TailnetError> {
    let mut conflict = None;
    for _ in 0..ATTEMPTS {
        let (body, etag) = api.policy().await?;
        let Some(merged) = policy::with_pond_rows(&body, tag).map_err(TailnetError::Policy)? else {
            return Ok(Ensured::Present);
        };
        match api.set_policy(&merged, &etag).await {
            Ok(()) => return Ok(Ensured::Added),
            Err(TailnetError::Conflict(why)) => conflict = Some(why),
            Err(other) => return Err(other),
        }
    }
    Err(TailnetError::Conflict(format!(
        "{} after {ATTEMPTS} attempts; running again is safe",
        conflict.unwrap_or_default()
    )))
}
