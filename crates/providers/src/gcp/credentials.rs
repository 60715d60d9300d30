//! Google's Application Default Credentials, as the `gcp` provider reads
//! them: a credentials file (`GOOGLE_APPLICATION_CREDENTIALS`, else gcloud's
//! `application_default_credentials.json`) holding a service account key, a
//! gcloud user's refresh token or a workload-identity-federation
//! configuration (`external_account`: what GitHub Actions' OIDC auth
//! writes), else the metadata server of the VM crabbox runs on.
//!
//! The token exchanges are written here rather than taken from a crate:
//! `google-cloud-auth` (the official one, the only one covering all four
//! sources) needs Rust 1.91 in its current release and brings ~170 crates
//! (gax, wkt, serde_with, darling, chrono, a second `syn`); the exchanges
//! are three form posts and one GET, and the RS256 signature of the
//! service-account assertion uses `aws-lc-rs`, already built for AWS. Each
//! exchange posts to the token URI its file names (`token_uri`,
//! `token_url`), so a test's fake token endpoint is reached by the file alone.
//!
//! Like `aws`, the provider is *enabled* on cheap signals (a credentials
//! file, `GCE_METADATA_HOST`, a project variable) and the token is fetched
//! at the first call; whatever is missing or refused then is exit 3 naming
//! what to set.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use crabbox_core::provider::ProviderError;
use serde::Deserialize;

/// The `--help` lines of the `gcp` provider under "Environment:".
pub const HELP: &str =
    "  GOOGLE_APPLICATION_CREDENTIALS service account or federation file (enables `gcp`)
  GOOGLE_CLOUD_PROJECT        project when `gcp.project` is unset (or CRABBOX_GCP_PROJECT)
  CRABBOX_GCP_COMPUTE_ENDPOINT Compute Engine base URL (default compute.googleapis.com)
  GCE_METADATA_HOST           metadata server host (default metadata.google.internal)";

/// What enables the provider, as the "not configured" error shows it.
pub const CREDENTIALS: &str = "GOOGLE_APPLICATION_CREDENTIALS (or `gcloud auth application-default login`, or GOOGLE_CLOUD_PROJECT on a VM with a service account)";

/// The hint of every credentials error.
const HINT: &str = "set GOOGLE_APPLICATION_CREDENTIALS to a service account key or a workload identity federation file (google-github-actions/auth writes one), run `gcloud auth application-default login`, or run on a VM with a service account";

/// The scope every token is asked for.
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// Google's OAuth token endpoint, for files that name none.
const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// The metadata server when `GCE_METADATA_HOST` names none.
const DEFAULT_METADATA_HOST: &str = "metadata.google.internal";
/// How long a token exchange may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the metadata server may take (off GCE it never answers).
const METADATA_TIMEOUT: Duration = Duration::from_secs(3);
/// A token is renewed this long before it expires.
const RENEW_BEFORE: Duration = Duration::from_secs(120);
/// The lifetime asked of a service-account assertion (Google's maximum).
const ASSERTION_LIFETIME: u64 = 3600;

/// Where the credentials come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// A credentials file: `GOOGLE_APPLICATION_CREDENTIALS`, or gcloud's
    /// application default credentials.
    File(PathBuf),
    /// The metadata server (`GCE_METADATA_HOST`, or a project variable
    /// without a file: crabbox runs on a VM with a service account).
    Metadata,
}

/// The first source of credentials that is configured, in ADC's order, or
/// `None`. `env` holds the environment; `home` the home directory. Blank
/// variables count as unset.
#[must_use]
pub fn configured(env: &HashMap<String, String>, home: Option<&Path>) -> Option<Signal> {
    let var = |name: &str| env.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
    if let Some(file) = var("GOOGLE_APPLICATION_CREDENTIALS") {
        return Some(Signal::File(PathBuf::from(file)));
    }
    let gcloud = var("CLOUDSDK_CONFIG")
        .map(PathBuf::from)
        .or_else(|| home.map(|h| h.join(".config").join("gcloud")))
        .map(|d| d.join("application_default_credentials.json"));
    if let Some(file) = gcloud.filter(|f| f.is_file()) {
        return Some(Signal::File(file));
    }
    [
        "GCE_METADATA_HOST",
        "CRABBOX_GCP_PROJECT",
        "GOOGLE_CLOUD_PROJECT",
        "GCP_PROJECT_ID",
    ]
    .iter()
    .any(|v| var(v).is_some())
    .then_some(Signal::Metadata)
}

/// [`configured`] over this process's environment and home directory.
#[must_use]
pub fn configured_here() -> Option<Signal> {
    let env: HashMap<String, String> = std::env::vars().collect();
    let home = std::env::var_os("HOME").map(PathBuf::from);
    configured(&env, home.as_deref())
}

/// The project a member works in: `gcp.project`, else
/// `CRABBOX_GCP_PROJECT`, `GOOGLE_CLOUD_PROJECT`, `GCP_PROJECT_ID`, else
/// the credentials' (`None`: ask the metadata server).
#[must_use]
pub fn project(block: Option<&str>, env: &HashMap<String, String>) -> Option<String> {
    let var = |name: &str| env.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
    block
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .or_else(|| var("CRABBOX_GCP_PROJECT"))
        .or_else(|| var("GOOGLE_CLOUD_PROJECT"))
        .or_else(|| var("GCP_PROJECT_ID"))
        .map(str::to_owned)
}

/// A credentials file, by its `type`.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum CredentialsFile {
    ServiceAccount {
        client_email: String,
        private_key: String,
        #[serde(default)]
        private_key_id: Option<String>,
        #[serde(default)]
        token_uri: Option<String>,
        #[serde(default)]
        project_id: Option<String>,
    },
    AuthorizedUser {
        client_id: String,
        client_secret: String,
        refresh_token: String,
        #[serde(default)]
        token_uri: Option<String>,
        #[serde(default)]
        quota_project_id: Option<String>,
    },
    ExternalAccount {
        audience: String,
        subject_token_type: String,
        token_url: String,
        credential_source: Box<CredentialSource>,
        #[serde(default)]
        service_account_impersonation_url: Option<String>,
        #[serde(default)]
        quota_project_id: Option<String>,
    },
}

/// Where an `external_account` file's subject token is read: a file, or a
/// URL (GitHub Actions' OIDC token endpoint), as text or a JSON field.
#[derive(Debug, Clone, Deserialize)]
struct CredentialSource {
    #[serde(default)]
    file: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    headers: HashMap<String, String>,
    #[serde(default)]
    format: Option<SourceFormat>,
    #[serde(default)]
    executable: Option<serde_json::Value>,
    #[serde(default)]
    environment_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct SourceFormat {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    subject_token_field_name: Option<String>,
}

/// How tokens are obtained.
enum Kind {
    ServiceAccount {
        email: String,
        key: aws_lc_rs::signature::RsaKeyPair,
        key_id: Option<String>,
        token_uri: String,
    },
    User {
        client_id: String,
        client_secret: String,
        refresh_token: String,
        token_uri: String,
    },
    External {
        audience: String,
        subject_token_type: String,
        token_url: String,
        source: Box<CredentialSource>,
        impersonation_url: Option<String>,
    },
    Metadata {
        host: String,
    },
}

/// A token and when it stops being used.
struct Cached {
    token: String,
    renew_at: Instant,
}

/// The credentials of the `gcp` provider: tokens, each kept until shortly
/// before it expires.
pub struct TokenSource {
    kind: Kind,
    /// The project the credentials name (a service account's `project_id`,
    /// a user's or federation's `quota_project_id`).
    file_project: Option<String>,
    http: reqwest::Client,
    cached: tokio::sync::Mutex<Option<Cached>>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::ServiceAccount { .. } => "service_account",
            Kind::User { .. } => "authorized_user",
            Kind::External { .. } => "external_account",
            Kind::Metadata { .. } => "metadata",
        };
        f.debug_struct("TokenSource")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}

/// A credentials error: exit 3, saying what to set.
fn refused(message: impl Into<String>) -> ProviderError {
    ProviderError::Credentials {
        message: message.into(),
        hint: HINT.to_owned(),
    }
}

impl TokenSource {
    /// The source `signal` names; `metadata_host` overrides the metadata
    /// server's host (`GCE_METADATA_HOST`).
    ///
    /// # Errors
    /// [`ProviderError::Credentials`] when the file cannot be read, is not
    /// one of the known types, or holds an unusable key.
    pub fn load(signal: &Signal, metadata_host: Option<&str>) -> Result<Self, ProviderError> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ProviderError::Failed(format!("gcp: HTTP client: {e}")))?;
        let (kind, file_project) = match signal {
            Signal::Metadata => (
                Kind::Metadata {
                    host: metadata_host
                        .map(str::trim)
                        .filter(|h| !h.is_empty())
                        .unwrap_or(DEFAULT_METADATA_HOST)
                        .to_owned(),
                },
                None,
            ),
            Signal::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    refused(format!(
                        "gcp: the credentials file {} cannot be read: {e}",
                        path.display()
                    ))
                })?;
                let file: CredentialsFile = serde_json::from_str(&text).map_err(|e| {
                    refused(format!(
                        "gcp: the credentials file {} is not a service_account, authorized_user or external_account file: {e}",
                        path.display()
                    ))
                })?;
                from_file(file, path)?
            }
        };
        Ok(Self {
            kind,
            file_project,
            http,
            cached: tokio::sync::Mutex::new(None),
        })
    }

    /// The project the credentials file names, if any.
    #[must_use]
    pub fn file_project(&self) -> Option<&str> {
        self.file_project.as_deref()
    }

    /// The metadata server's project, when the credentials are the
    /// metadata server's.
    ///
    /// # Errors
    /// [`ProviderError::Credentials`] when the server does not answer.
    pub async fn metadata_project(&self) -> Result<Option<String>, ProviderError> {
        let Kind::Metadata { host } = &self.kind else {
            return Ok(None);
        };
        let url = format!("http://{host}/computeMetadata/v1/project/project-id");
        let body = self.metadata_get(&url).await?;
        Ok(Some(body.trim().to_owned()).filter(|p| !p.is_empty()))
    }

    /// A current access token, exchanging for a new one when the last is
    /// about to expire.
    ///
    /// # Errors
    /// [`ProviderError::Credentials`] when the exchange is refused or the
    /// source cannot be reached; [`ProviderError::Retryable`] when the token
    /// endpoint fails for a moment (5xx, 429).
    pub async fn token(&self) -> Result<String, ProviderError> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref()
            && Instant::now() < c.renew_at
        {
            return Ok(c.token.clone());
        }
        let (token, lifetime) = self.exchange().await?;
        *cached = Some(Cached {
            token: token.clone(),
            renew_at: Instant::now() + lifetime.saturating_sub(RENEW_BEFORE),
        });
        Ok(token)
    }

    /// One exchange: the token and how long it lives.
    async fn exchange(&self) -> Result<(String, Duration), ProviderError> {
        match &self.kind {
            Kind::ServiceAccount {
                email,
                key,
                key_id,
                token_uri,
            } => {
                let assertion = assertion(email, key, key_id.as_deref(), token_uri)?;
                let answer: TokenAnswer = self
                    .post_form(
                        token_uri,
                        &[
                            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                            ("assertion", &assertion),
                        ],
                    )
                    .await?;
                Ok(answer.token())
            }
            Kind::User {
                client_id,
                client_secret,
                refresh_token,
                token_uri,
            } => {
                let answer: TokenAnswer = self
                    .post_form(
                        token_uri,
                        &[
                            ("grant_type", "refresh_token"),
                            ("client_id", client_id),
                            ("client_secret", client_secret),
                            ("refresh_token", refresh_token),
                        ],
                    )
                    .await?;
                Ok(answer.token())
            }
            Kind::External {
                audience,
                subject_token_type,
                token_url,
                source,
                impersonation_url,
            } => {
                let subject = self.subject_token(source).await?;
                let answer: TokenAnswer = self
                    .post_form(
                        token_url,
                        &[
                            (
                                "grant_type",
                                "urn:ietf:params:oauth:grant-type:token-exchange",
                            ),
                            ("audience", audience),
                            ("scope", SCOPE),
                            (
                                "requested_token_type",
                                "urn:ietf:params:oauth:token-type:access_token",
                            ),
                            ("subject_token", &subject),
                            ("subject_token_type", subject_token_type),
                        ],
                    )
                    .await?;
                let (federated, lifetime) = answer.token();
                match impersonation_url {
                    None => Ok((federated, lifetime)),
                    Some(url) => self.impersonate(url, &federated).await,
                }
            }
            Kind::Metadata { host } => {
                let url = format!(
                    "http://{host}/computeMetadata/v1/instance/service-accounts/default/token"
                );
                let body = self.metadata_get(&url).await?;
                let answer: TokenAnswer = serde_json::from_str(&body).map_err(|e| {
                    refused(format!("gcp: the metadata server's token answer: {e}"))
                })?;
                Ok(answer.token())
            }
        }
    }

    /// A federated token traded for a service account's
    /// (`service_account_impersonation_url`, IAM Credentials'
    /// `generateAccessToken`).
    async fn impersonate(
        &self,
        url: &str,
        federated: &str,
    ) -> Result<(String, Duration), ProviderError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Impersonated {
            access_token: String,
            #[serde(default)]
            expire_time: Option<String>,
        }
        let response = self
            .http
            .post(url)
            .bearer_auth(federated)
            .json(&serde_json::json!({ "scope": [SCOPE], "lifetime": "3600s" }))
            .timeout(EXCHANGE_TIMEOUT)
            .send()
            .await
            .map_err(|e| unreachable_endpoint(url, &e))?;
        let answer: Impersonated = decode(url, response).await?;
        let lifetime = answer
            .expire_time
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .map_or(Duration::from_secs(ASSERTION_LIFETIME), |t| {
                Duration::try_from(t.duration_since(jiff::Timestamp::now())).unwrap_or_default()
            });
        Ok((answer.access_token, lifetime))
    }

    /// The subject token of a federation file: the file's contents or the
    /// URL's answer, whole (`text`) or one field of it (`json`).
    async fn subject_token(&self, source: &CredentialSource) -> Result<String, ProviderError> {
        let raw = if let Some(file) = &source.file {
            std::fs::read_to_string(file).map_err(|e| {
                refused(format!(
                    "gcp: the subject token file {file} cannot be read: {e}"
                ))
            })?
        } else if let Some(url) = &source.url {
            let mut request = self.http.get(url).timeout(EXCHANGE_TIMEOUT);
            for (k, v) in &source.headers {
                request = request.header(k, v);
            }
            let response = request
                .send()
                .await
                .map_err(|e| unreachable_endpoint(url, &e))?;
            if !response.status().is_success() {
                return Err(refused(format!(
                    "gcp: the subject token URL answered {}",
                    response.status()
                )));
            }
            response
                .text()
                .await
                .map_err(|e| unreachable_endpoint(url, &e))?
        } else {
            let what = if source.executable.is_some() {
                "an executable"
            } else if source.environment_id.is_some() {
                "AWS or Azure credentials"
            } else {
                "nothing"
            };
            return Err(refused(format!(
                "gcp: the workload identity federation file's subject token comes from {what}; crabbox reads it from a file or a URL only"
            )));
        };
        let format = source.format.as_ref();
        if format.is_some_and(|f| f.kind == "json") {
            let field = format
                .and_then(|f| f.subject_token_field_name.as_deref())
                .unwrap_or("access_token");
            let value: serde_json::Value = serde_json::from_str(&raw)
                .map_err(|e| refused(format!("gcp: the subject token is not JSON: {e}")))?;
            value
                .get(field)
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| refused(format!("gcp: the subject token has no `{field}` field")))
        } else {
            Ok(raw.trim().to_owned())
        }
    }

    /// A metadata server GET (`Metadata-Flavor: Google`).
    async fn metadata_get(&self, url: &str) -> Result<String, ProviderError> {
        let response = self
            .http
            .get(url)
            .header("Metadata-Flavor", "Google")
            .timeout(METADATA_TIMEOUT)
            .send()
            .await
            .map_err(|e| {
                refused(format!(
                    "gcp: no credentials file, and the metadata server did not answer ({e})"
                ))
            })?;
        if !response.status().is_success() {
            return Err(refused(format!(
                "gcp: the metadata server answered {} (is a service account attached to this VM?)",
                response.status()
            )));
        }
        response
            .text()
            .await
            .map_err(|e| refused(format!("gcp: the metadata server's answer: {e}")))
    }

    /// Posts `form` to a token endpoint; its JSON answer.
    async fn post_form<T: for<'de> Deserialize<'de>>(
        &self,
        url: &str,
        form: &[(&str, &str)],
    ) -> Result<T, ProviderError> {
        let response = self
            .http
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_encode(form))
            .timeout(EXCHANGE_TIMEOUT)
            .send()
            .await
            .map_err(|e| unreachable_endpoint(url, &e))?;
        decode(url, response).await
    }
}

/// The parts of a credentials file a [`Kind`] needs, checked.
fn from_file(file: CredentialsFile, path: &Path) -> Result<(Kind, Option<String>), ProviderError> {
    let uri = |u: Option<String>| {
        u.filter(|u| !u.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_TOKEN_URI.to_owned())
    };
    Ok(match file {
        CredentialsFile::ServiceAccount {
            client_email,
            private_key,
            private_key_id,
            token_uri,
            project_id,
        } => {
            let der = pem_body(&private_key).ok_or_else(|| {
                refused(format!(
                    "gcp: the service account key in {} is not a PEM private key",
                    path.display()
                ))
            })?;
            let key = aws_lc_rs::signature::RsaKeyPair::from_pkcs8(&der).map_err(|e| {
                refused(format!(
                    "gcp: the service account key in {} is not an RSA PKCS#8 key: {e}",
                    path.display()
                ))
            })?;
            (
                Kind::ServiceAccount {
                    email: client_email,
                    key,
                    key_id: private_key_id,
                    token_uri: uri(token_uri),
                },
                project_id,
            )
        }
        CredentialsFile::AuthorizedUser {
            client_id,
            client_secret,
            refresh_token,
            token_uri,
            quota_project_id,
        } => (
            Kind::User {
                client_id,
                client_secret,
                refresh_token,
                token_uri: uri(token_uri),
            },
            quota_project_id,
        ),
        CredentialsFile::ExternalAccount {
            audience,
            subject_token_type,
            token_url,
            credential_source,
            service_account_impersonation_url,
            quota_project_id,
        } => (
            Kind::External {
                audience,
                subject_token_type,
                token_url,
                source: credential_source,
                impersonation_url: service_account_impersonation_url
                    .filter(|u| !u.trim().is_empty()),
            },
            quota_project_id,
        ),
    })
}

/// A token endpoint's answer (OAuth's and the metadata server's shape).
#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl TokenAnswer {
    fn token(self) -> (String, Duration) {
        (
            self.access_token,
            Duration::from_secs(self.expires_in.unwrap_or(ASSERTION_LIFETIME)),
        )
    }
}

/// A token endpoint that could not be reached: worth another try.
fn unreachable_endpoint(url: &str, e: &reqwest::Error) -> ProviderError {
    ProviderError::Retryable {
        message: format!("gcp: token endpoint {url}: {e}"),
        retry_after: None,
    }
}

/// A token endpoint's JSON answer; a refusal (4xx) is a credentials error
/// carrying Google's `error`/`error_description`, a 5xx or 429 is retryable.
async fn decode<T: for<'de> Deserialize<'de>>(
    url: &str,
    response: reqwest::Response,
) -> Result<T, ProviderError> {
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| unreachable_endpoint(url, &e))?;
    if status.is_success() {
        return serde_json::from_slice(&body)
            .map_err(|e| refused(format!("gcp: token endpoint {url}: unexpected answer: {e}")));
    }
    let (code, message) = crate::http::parse_error_body(&body);
    let detail = code.map_or(message.clone(), |c| format!("{c}: {message}"));
    let detail = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("error_description")?.as_str().map(str::to_owned))
        .map_or(detail.clone(), |d| format!("{detail} ({d})"));
    if status.is_server_error() || status.as_u16() == 429 {
        Err(ProviderError::Retryable {
            message: format!("gcp: token endpoint {url}: {} {detail}", status.as_u16()),
            retry_after: None,
        })
    } else {
        Err(refused(format!(
            "gcp: the token endpoint refused the credentials ({} {detail})",
            status.as_u16()
        )))
    }
}

/// The signed JWT a service account trades for a token: RS256 over
/// `{iss, scope, aud: token URI, iat, exp}`.
fn assertion(
    email: &str,
    key: &aws_lc_rs::signature::RsaKeyPair,
    key_id: Option<&str>,
    token_uri: &str,
) -> Result<String, ProviderError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut header = serde_json::json!({ "alg": "RS256", "typ": "JWT" });
    if let Some(kid) = key_id.filter(|k| !k.is_empty()) {
        header["kid"] = kid.into();
    }
    let claims = serde_json::json!({
        "iss": email,
        "scope": SCOPE,
        "aud": token_uri,
        "iat": now,
        "exp": now + ASSERTION_LIFETIME,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut signature = vec![0; key.public_modulus_len()];
    key.sign(
        &aws_lc_rs::signature::RSA_PKCS1_SHA256,
        &aws_lc_rs::rand::SystemRandom::new(),
        signing_input.as_bytes(),
        &mut signature,
    )
    .map_err(|_| refused("gcp: signing the service account assertion failed"))?;
    Ok(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature)
    ))
}

/// The DER bytes of a PEM block (`-----BEGIN PRIVATE KEY-----`…).
fn pem_body(pem: &str) -> Option<Vec<u8>> {
    let body: String = pem
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("-----") && !l.is_empty())
        .collect();
    STANDARD.decode(body).ok().filter(|b| !b.is_empty())
}

/// `application/x-www-form-urlencoded` of `pairs`.
fn form_encode(pairs: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    char::from(b).to_string()
                }
                b' ' => "+".to_owned(),
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_env::env;

    #[test]
    fn sources_are_found_in_adc_order() {
        let home = tempfile::tempdir().expect("tempdir");
        assert_eq!(configured(&env(&[]), Some(home.path())), None);
        assert_eq!(
            configured(&env(&[("GOOGLE_CLOUD_PROJECT", "p")]), Some(home.path())),
            Some(Signal::Metadata)
        );
        let adc = home.path().join(".config/gcloud");
        std::fs::create_dir_all(&adc).expect("dirs");
        std::fs::write(adc.join("application_default_credentials.json"), "{}").expect("file");
        assert_eq!(
            configured(&env(&[("GOOGLE_CLOUD_PROJECT", "p")]), Some(home.path())),
            Some(Signal::File(
                adc.join("application_default_credentials.json")
            ))
        );
        assert_eq!(
            configured(
                &env(&[("GOOGLE_APPLICATION_CREDENTIALS", "/x.json")]),
                Some(home.path())
            ),
            Some(Signal::File(PathBuf::from("/x.json")))
        );
    }

    #[test]
    fn the_members_project_wins() {
        let e = env(&[("GOOGLE_CLOUD_PROJECT", "g"), ("GCP_PROJECT_ID", "x")]);
        assert_eq!(project(Some("mine"), &e).as_deref(), Some("mine"));
        assert_eq!(project(Some(" "), &e).as_deref(), Some("g"));
        assert_eq!(project(None, &env(&[])), None);
    }

    #[test]
    fn forms_are_percent_encoded() {
        assert_eq!(
            form_encode(&[("a b", "x/y=z&"), ("k", "~.-_")]),
            "a+b=x%2Fy%3Dz%26&k=~.-_"
        );
    }
}
