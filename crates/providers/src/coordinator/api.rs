//! The Crabbox coordinator's lease API (`/v1/leases…`, `/v1/whoami`): its
//! wire types and one client. Facts from the protocol reference and
//! Crabbox's client (internal/cli/coordinator.go): ports are strings on
//! the wire (`SSHPort string`, coordinator.go:88-90), error bodies are
//! `{"error": "…"}`, and a JSON body needs `Content-Type: application/json`.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::http::{ApiError, HttpClient};
use crabbox_core::provider::ProviderError;

/// The variable holding the coordinator's URL.
pub const URL_ENV: &str = "CRABBOX_COORDINATOR";
/// The variable holding the bearer token.
pub const TOKEN_ENV: &str = "CRABBOX_COORDINATOR_TOKEN";
/// The largest page `GET /v1/leases` returns.
pub const LIST_LIMIT: u32 = 500;

/// One lease as the coordinator reports it (the fields crabbox reads).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct CoordLease {
    /// `cbx_…`, minted by the client.
    pub id: String,
    /// The slug sent at create.
    pub slug: String,
    /// The pond sent at create.
    pub pond: String,
    /// `hetzner`, `aws`, …
    pub provider: String,
    /// `provisioning | active | released | expired | failed`.
    pub state: String,
    /// The owner the coordinator recorded.
    pub owner: String,
    /// The org.
    pub org: String,
    /// The provider's resource ID.
    #[serde(rename = "cloudID")]
    pub cloud_id: String,
    /// The numeric server ID (Hetzner).
    #[serde(rename = "serverID", deserialize_with = "id_text")]
    pub server_id: String,
    /// Address to reach it.
    pub host: String,
    /// SSH login.
    pub ssh_user: String,
    /// SSH port.
    #[serde(deserialize_with = "port")]
    pub ssh_port: Option<u16>,
    /// Ports tried after `ssh_port`, in order.
    #[serde(deserialize_with = "ports")]
    pub ssh_fallback_ports: Vec<u16>,
    /// The machine's host key, to pin.
    pub ssh_host_key: String,
    /// The work root on the machine.
    pub work_root: String,
    /// Idle timeout in seconds.
    pub idle_timeout_seconds: u64,
    /// Why a create failed.
    pub failure_error: String,
    /// Set while the machine is being deleted after a release.
    pub cleanup_started_at: Option<String>,
}

impl CoordLease {
    /// Whether the lease is live (what discovery keeps).
    #[must_use]
    pub fn is_live(&self) -> bool {
        matches!(self.state.as_str(), "provisioning" | "active")
    }

    /// The provider's resource ID, whichever field holds it.
    #[must_use]
    pub fn resource_id(&self) -> String {
        if self.cloud_id.is_empty() {
            self.server_id.clone()
        } else {
            self.cloud_id.clone()
        }
    }
}

/// `{lease}`.
#[derive(Debug, Deserialize)]
pub struct LeaseEnvelope {
    /// The lease.
    pub lease: CoordLease,
}

/// `{leases}`.
#[derive(Debug, Deserialize)]
pub struct LeaseList {
    /// Newest first.
    #[serde(default)]
    pub leases: Vec<CoordLease>,
}

/// `GET /v1/whoami` (coordinator.go:254-260).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Whoami {
    /// The owner requests are made as.
    #[serde(default)]
    pub owner: String,
    /// The org.
    #[serde(default)]
    pub org: String,
    /// How the token authenticated (`shared`, `admin`, `github`…).
    #[serde(default)]
    pub auth: String,
    /// Whether the token is an admin token.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
    /// When the token expires, if it does.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token_expires_at: String,
}

/// The create request (`POST /v1/leases`), as Crabbox's `createLease`
/// sends it (coordinator.go:938-980): ports as strings; a setting left
/// open is left out, so the coordinator's own default applies.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CreateBody {
    /// The minted lease ID.
    #[serde(rename = "leaseID")]
    pub lease_id: String,
    /// `cat_` + 32 hex, minted before the first attempt.
    #[serde(rename = "createAttemptID")]
    pub create_attempt_id: String,
    /// The lease's slug.
    pub slug: String,
    /// The pond.
    pub pond: String,
    /// Exposed ports.
    pub exposed_ports: Vec<String>,
    /// `hetzner`, …
    pub provider: String,
    /// Size class (empty: the coordinator's default).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub class: String,
    /// Exact type (empty: from the class).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub server_type: String,
    /// Whether `server_type` was chosen.
    pub server_type_explicit: bool,
    /// Location.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub location: String,
    /// Image.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub image: String,
    /// `linux`.
    pub target: String,
    /// SSH login.
    pub ssh_user: String,
    /// SSH port.
    pub ssh_port: String,
    /// Fallback SSH ports.
    pub ssh_fallback_ports: Vec<String>,
    /// The lease key's public half (its private half never leaves here).
    pub ssh_public_key: String,
    /// Work root (empty: the coordinator's).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub work_root: String,
    /// Lifetime.
    pub ttl_seconds: u64,
    /// Idle timeout.
    pub idle_timeout_seconds: u64,
    /// Keep after release.
    pub keep: bool,
}

fn id_text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s,
        _ => String::new(),
    })
}

fn port_of(v: &Value) -> Option<u16> {
    match v {
        Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|p| *p != 0)
}

fn port<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    Ok(port_of(&Value::deserialize(d)?))
}

fn ports<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u16>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Array(items) => items.iter().filter_map(port_of).collect(),
        _ => Vec::new(),
    })
}

/// A client of one coordinator.
#[derive(Debug, Clone)]
pub struct Client {
    http: HttpClient,
}

/// How a coordinator answer maps to what crabbox does: a 500 `{"error"}` is
/// the coordinator's verdict (bad input, or the provider failed) and is
/// shown as its message, not retried; 424 names a provider the coordinator
/// does not serve; the rest as every HTTP provider (429, 502-504 and
/// transport errors retried; 401/403 name the token variable).
pub fn verdict(e: ApiError) -> ApiError {
    let error = match e.status {
        Some(500) => ProviderError::Failed(format!("coordinator: {}", e.message)),
        Some(424) => ProviderError::Config {
            message: format!("coordinator: {}", e.message),
            hint: "the coordinator has no credentials for this provider; ask its operator, or set `broker: false` on the member to lease directly".to_owned(),
        },
        _ => e.error.clone(),
    };
    ApiError { error, ..e }
}

impl Client {
    /// A client of the coordinator at `url`.
    #[must_use]
    pub fn new(url: &str, token: &str, owner: Option<&str>, org: Option<&str>) -> Self {
        let mut http = HttpClient::new("coordinator", url, token, TOKEN_ENV);
        if let Some(owner) = owner {
            http = http.with_header("x-crabbox-owner", owner);
        }
        if let Some(org) = org {
            http = http.with_header("x-crabbox-org", org);
        }
        Self { http }
    }

    /// The base URL.
    #[must_use]
    pub fn base_url(&self) -> &str {
        self.http.base_url()
    }

    /// `GET /v1/whoami`.
    ///
    /// # Errors
    /// Mapped by [`verdict`].
    pub async fn whoami(&self) -> Result<Whoami, ApiError> {
        self.http.get_json("/v1/whoami", &[]).await.map_err(verdict)
    }

    /// `POST /v1/leases`.
    ///
    /// # Errors
    /// Mapped by [`verdict`].
    pub async fn create(&self, body: &CreateBody) -> Result<CoordLease, ApiError> {
        self.http
            .post_json::<_, LeaseEnvelope>("/v1/leases", body)
            .await
            .map(|e| e.lease)
            .map_err(verdict)
    }

    /// `GET /v1/leases/{id}`.
    ///
    /// # Errors
    /// Mapped by [`verdict`]; another owner's lease is a 404.
    pub async fn get(&self, id: &str) -> Result<CoordLease, ApiError> {
        self.http
            .get_json::<LeaseEnvelope>(&format!("/v1/leases/{id}"), &[])
            .await
            .map(|e| e.lease)
            .map_err(verdict)
    }

    /// `GET /v1/leases?state=…&limit=500`: the caller's leases in `state`.
    ///
    /// # Errors
    /// Mapped by [`verdict`].
    pub async fn list(&self, state: &str) -> Result<Vec<CoordLease>, ApiError> {
        let query = [
            ("state", state.to_owned()),
            ("limit", LIST_LIMIT.to_string()),
        ];
        self.http
            .get_json::<LeaseList>("/v1/leases", &query)
            .await
            .map(|l| l.leases)
            .map_err(verdict)
    }

    /// `POST /v1/leases/{id}/heartbeat`.
    ///
    /// # Errors
    /// Mapped by [`verdict`].
    pub async fn heartbeat(
        &self,
        id: &str,
        provider: &str,
        idle_timeout_seconds: Option<u64>,
    ) -> Result<CoordLease, ApiError> {
        let mut body = serde_json::json!({ "expectedProvider": provider });
        if let Some(idle) = idle_timeout_seconds.filter(|s| *s > 0) {
            body["idleTimeoutSeconds"] = idle.into();
        }
        self.http
            .post_json::<_, LeaseEnvelope>(&format!("/v1/leases/{id}/heartbeat"), &body)
            .await
            .map(|e| e.lease)
            .map_err(verdict)
    }

    /// `POST /v1/leases/{id}/release {delete: true, expectedProvider}`.
    ///
    /// # Errors
    /// Mapped by [`verdict`].
    pub async fn release(&self, id: &str, provider: &str) -> Result<CoordLease, ApiError> {
        let body = serde_json::json!({ "delete": true, "expectedProvider": provider });
        self.http
            .post_json::<_, LeaseEnvelope>(&format!("/v1/leases/{id}/release"), &body)
            .await
            .map(|e| e.lease)
            .map_err(verdict)
    }

    /// `POST /v1/leases/{id}/cancel-create {createAttemptID}`.
    ///
    /// # Errors
    /// Mapped by [`verdict`].
    pub async fn cancel_create(&self, id: &str, attempt: &str) -> Result<(), ApiError> {
        let body = serde_json::json!({ "createAttemptID": attempt });
        self.http
            .post_json::<_, Value>(&format!("/v1/leases/{id}/cancel-create"), &body)
            .await
            .map(|_| ())
            .map_err(verdict)
    }
}

/// A new create attempt ID: `cat_` + 32 hex.
///
/// # Errors
/// The OS gave no randomness.
pub fn new_attempt_id() -> Result<String, ProviderError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| ProviderError::Failed(format!("minting a create attempt ID: {e}")))?;
    Ok(format!(
        "cat_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_read_ports_as_strings_or_numbers() {
        // Crabbox's CoordinatorLease has `SSHPort string` and
        // `SSHFallbackPorts []string` (internal/cli/coordinator.go:88-90).
        let lease: CoordLease = serde_json::from_value(serde_json::json!({
            "id": "cbx_0123456789ab", "state": "active", "serverID": 42,
            "sshPort": "2222", "sshFallbackPorts": ["22", 2200], "host": "10.0.0.1"
        }))
        .expect("lease");
        assert_eq!(lease.ssh_port, Some(2222));
        assert_eq!(lease.ssh_fallback_ports, [22, 2200]);
        assert_eq!(lease.resource_id(), "42");
        assert!(lease.is_live());
    }

    #[test]
    fn attempt_ids_have_crabbox_shape() {
        let id = new_attempt_id().expect("id");
        assert_eq!(id.len(), 4 + 32);
        assert!(id.starts_with("cat_"));
        assert!(id[4..].bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
