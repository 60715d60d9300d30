//! What every HTTP provider shares: a small client over reqwest with a base
//! URL, a bearer token (never logged), a per-request timeout and crabbox's
//! `User-Agent`, and one mapping from HTTP outcomes to [`ProviderError`]s.
//!
//! - 429, 5xx, connection failures and timeouts are
//!   [`ProviderError::Retryable`], carrying the delay the server asked for
//!   (`Retry-After` seconds, or for a 429 `RateLimit-Reset`, a Unix timestamp,
//!   waited for at most 60 s);
//! - 401 (and a 403 about the token) is [`ProviderError::Credentials`], naming the
//!   environment variable to set;
//! - 404 is [`ProviderError::NotFound`];
//! - any other failure is [`ProviderError::Failed`] with the provider's own
//!   error code and message (`resource_unavailable: …`).
//!
//! Nothing here retries: the executor wraps provider calls in
//! [`crabbox_core::retry::with_retries`]. Calls that run outside that wrapper
//! (listing) opt in with [`HttpClient::get_json_with_retries`].
//!
//! Redirects are never followed, so the token is only ever sent to the base
//! URL's origin.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::{HeaderMap, RETRY_AFTER, USER_AGENT};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crabbox_core::provider::ProviderError;

/// Per-request time limit unless the provider sets another.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait taken from a `RateLimit-Reset` header.
const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);
/// How much of a non-JSON error body ends up in a message.
const BODY_EXCERPT: usize = 200;

/// `crabbox/<version>`.
#[must_use]
pub fn user_agent() -> String {
    format!("crabbox/{}", env!("CARGO_PKG_VERSION"))
}

/// An API URL a credential may be sent to: HTTPS, or plain HTTP only to a
/// loopback host (a local fake or proxy), as Crabbox requires of the E2B
/// and Daytona URLs — a token must never cross a network in the clear.
///
/// # Errors
/// [`ProviderError::Config`] naming `setting` for anything else.
pub fn check_api_url(setting: &str, url: &str) -> Result<(), ProviderError> {
    let bad = |why: &str| ProviderError::Config {
        message: format!("{setting} `{url}` {why}"),
        hint:
            "use an https:// URL (plain http:// is accepted for 127.0.0.1, ::1 and localhost only)"
                .to_owned(),
    };
    let parsed = reqwest::Url::parse(url).map_err(|e| bad(&format!("is not a URL: {e}")))?;
    let host = parsed
        .host_str()
        .ok_or_else(|| bad("has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(bad("must be HTTPS unless its host is loopback")),
    }
}

/// A secret that never shows in `Debug` output or messages.
#[derive(Clone, PartialEq, Eq)]
struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A failed call: the mapped [`ProviderError`] plus the HTTP status and the
/// provider's machine-readable error code, for callers that branch on them
/// (capacity fallback, uniqueness conflicts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status, when a response arrived.
    pub status: Option<u16>,
    /// The provider's error code (`resource_unavailable`), when it sent one.
    pub code: Option<String>,
    /// The message from the response, without status or code.
    pub message: String,
    /// What the call's caller sees.
    pub error: ProviderError,
}

impl ApiError {
    /// Whether the provider answered with this error code.
    #[must_use]
    pub fn has_code(&self, code: &str) -> bool {
        self.code.as_deref() == Some(code)
    }

    /// For a loop polling a resource until it is ready: a retryable answer
    /// is one more poll (its message, and the delay the provider asked for);
    /// anything else ends the loop.
    ///
    /// # Errors
    /// The error itself when it is not worth polling again.
    pub fn poll_again(self) -> Result<(String, Duration), ProviderError> {
        match self.error {
            ProviderError::Retryable {
                message,
                retry_after,
            } => Ok((message, retry_after.unwrap_or_default())),
            other => Err(other),
        }
    }

    /// Whether the call failed with a 404.
    #[must_use]
    pub fn is_not_found(&self) -> bool {
        matches!(self.error, ProviderError::NotFound(_))
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for ApiError {}

impl From<ApiError> for ProviderError {
    fn from(e: ApiError) -> Self {
        e.error
    }
}

/// A JSON HTTP client bound to one provider's API.
#[derive(Clone)]
pub struct HttpClient {
    client: reqwest::Client,
    /// Base URL without a trailing `/`; request paths start with `/`.
    base_url: String,
    token: Secret,
    /// Provider name, for messages (`hetzner`).
    provider: &'static str,
    /// Environment variable holding the token, for hints (`HCLOUD_TOKEN`).
    token_env: &'static str,
    timeout: Duration,
    /// Headers sent with every request besides auth and `User-Agent`
    /// (the coordinator's `X-Crabbox-Owner`/`X-Crabbox-Org`).
    headers: HeaderMap,
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient")
            .field("provider", &self.provider)
            .field("base_url", &self.base_url)
            .field("token", &self.token)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl HttpClient {
    /// A client for `provider`'s API at `base_url`, authenticating with
    /// `token`; `token_env` names the variable users set it with.
    #[must_use]
    pub fn new(
        provider: &'static str,
        base_url: &str,
        token: &str,
        token_env: &'static str,
    ) -> Self {
        // User-Agent and timeout are also set per request, so the fallback
        // client (only reached if TLS cannot initialise) behaves the same.
        let client = reqwest::Client::builder()
            .user_agent(user_agent())
            .timeout(DEFAULT_TIMEOUT)
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Self {
            client,
            base_url: base_url.trim_end_matches('/').to_owned(),
            token: Secret(token.to_owned()),
            provider,
            token_env,
            timeout: DEFAULT_TIMEOUT,
            headers: HeaderMap::new(),
        }
    }

    /// The same client sending `name: value` with every request (a value
    /// that is not a valid header value is left out).
    #[must_use]
    pub fn with_header(mut self, name: &'static str, value: &str) -> Self {
        if let Ok(value) = reqwest::header::HeaderValue::from_str(value) {
            self.headers.insert(name, value);
        }
        self
    }

    /// The same client with another per-request time limit.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The base URL (no trailing `/`).
    #[must_use]
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `GET path?query` → JSON.
    ///
    /// # Errors
    /// Mapped as described in the module documentation.
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, ApiError> {
        let request = self.request(Method::GET, path).query(query);
        let body = self.send(Method::GET, path, request).await?;
        self.decode(&Method::GET, path, &body)
    }

    /// [`Self::get_json`] retried with [`crabbox_core::retry::with_retries`]:
    /// for calls that run outside the executor's retry wrapper (list pages).
    ///
    /// # Errors
    /// The last error once retries are exhausted, or the first one that is
    /// not retryable.
    pub async fn get_json_with_retries<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, ProviderError> {
        crabbox_core::retry::with_retries(|| async {
            self.get_json(path, query)
                .await
                .map_err(ProviderError::from)
        })
        .await
    }

    /// `POST path` with a JSON body → JSON.
    ///
    /// # Errors
    /// Mapped as described in the module documentation.
    pub async fn post_json<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ApiError> {
        let request = self.request(Method::POST, path).json(body);
        let body = self.send(Method::POST, path, request).await?;
        self.decode(&Method::POST, path, &body)
    }

    /// `PUT path` with a JSON body → JSON.
    ///
    /// # Errors
    /// Mapped as described in the module documentation.
    pub async fn put_json<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ApiError> {
        let request = self.request(Method::PUT, path).json(body);
        let body = self.send(Method::PUT, path, request).await?;
        self.decode(&Method::PUT, path, &body)
    }

    /// `DELETE path`; any response body is ignored.
    ///
    /// # Errors
    /// Mapped as described in the module documentation (a 404 is
    /// [`ProviderError::NotFound`]).
    pub async fn delete(&self, path: &str) -> Result<(), ApiError> {
        let request = self.request(Method::DELETE, path);
        self.send(Method::DELETE, path, request).await.map(|_| ())
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base_url))
            .bearer_auth(&self.token.0)
            .headers(self.headers.clone())
            .header(USER_AGENT, user_agent())
            .timeout(self.timeout)
    }

    /// Sends `request`; the body of a 2xx response, as received (a page of
    /// 50 servers is ~75 KB), or the mapped error.
    async fn send(
        &self,
        method: Method,
        path: &str,
        request: RequestBuilder,
    ) -> Result<impl std::ops::Deref<Target = [u8]> + use<>, ApiError> {
        let what = format!("{}: {method} {path}", self.provider);
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => return Err(self.transport_error(&what, &e)),
        };
        let status = response.status();
        let headers = response.headers().clone();
        let body = match response.bytes().await {
            Ok(b) => b,
            Err(e) => return Err(self.transport_error(&what, &e)),
        };
        if status.is_success() {
            return Ok(body);
        }
        Err(self.status_error(&what, path, status, &headers, &body))
    }

    fn decode<T: DeserializeOwned>(
        &self,
        method: &Method,
        path: &str,
        body: &[u8],
    ) -> Result<T, ApiError> {
        // An empty body (204) reads as JSON `null`, so `()`/`Option` callers work.
        let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
            b"null"
        } else {
            body
        };
        crabbox_core::json::from_bytes(body).map_err(|e| {
            let message = format!(
                "{}: {method} {path}: unexpected response: {e}",
                self.provider
            );
            ApiError {
                status: None,
                code: None,
                message: message.clone(),
                error: ProviderError::Failed(message),
            }
        })
    }

    fn transport_error(&self, what: &str, e: &reqwest::Error) -> ApiError {
        transport_error(what, e, self.timeout)
    }

    fn status_error(
        &self,
        what: &str,
        path: &str,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> ApiError {
        status_error(
            self.provider,
            self.token_env,
            what,
            path,
            status,
            headers,
            body,
        )
    }
}

/// A request that got no answer. Timeouts, refused connections and broken
/// bodies are worth retrying; the caller decides whether the call may be
/// repeated (the executor retries only retryable errors of idempotent steps).
pub(crate) fn transport_error(what: &str, e: &reqwest::Error, timeout: Duration) -> ApiError {
    let retryable = e.is_timeout() || e.is_connect() || e.is_request() || e.is_body();
    let kind = if e.is_timeout() {
        format!("timed out after {}s", timeout.as_secs_f32())
    } else if e.is_connect() {
        "could not connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    let message = format!("{what}: {kind}: {}", error_chain(e));
    ApiError {
        status: None,
        code: None,
        message: message.clone(),
        error: if retryable {
            ProviderError::Retryable {
                message,
                retry_after: None,
            }
        } else {
            ProviderError::Failed(message)
        },
    }
}

/// A provider's error answer mapped to what the engine does with it: 429
/// and 5xx are retried (after `Retry-After` or `RateLimit-Reset`), 401 and
/// an authorization 403 name the variable to fix, 404 is "not found"
/// (release treats it as done), anything else fails with the provider's
/// code and message.
pub(crate) fn status_error(
    provider: &str,
    token_env: &str,
    what: &str,
    path: &str,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> ApiError {
    let (code, message) = parse_error_body(body);
    let detail = match &code {
        Some(code) => format!("{code}: {message}"),
        None => message.clone(),
    };
    let full = format!("{what}: {} {detail}", status.as_u16());
    let error = if status == StatusCode::TOO_MANY_REQUESTS {
        ProviderError::Retryable {
            message: full,
            retry_after: retry_after(headers).or_else(|| rate_limit_reset(headers)),
        }
    } else if status.is_server_error() {
        ProviderError::Retryable {
            message: full,
            retry_after: retry_after(headers),
        }
    } else if status == StatusCode::UNAUTHORIZED
        || (status == StatusCode::FORBIDDEN
            && code.as_deref().is_none_or(|c| {
                matches!(
                    c.to_ascii_lowercase().as_str(),
                    "forbidden" | "unauthorized" | "token_readonly" | "auth_required"
                )
            }))
    {
        ProviderError::Credentials {
            message: format!(
                "{} rejected the API token ({} {detail})",
                provider,
                status.as_u16()
            ),
            hint: format!(
                "set {} to a valid read/write API token for the project",
                token_env
            ),
        }
    } else if status == StatusCode::NOT_FOUND {
        ProviderError::NotFound(format!("{} {path}", provider))
    } else {
        ProviderError::Failed(format!("{what}: {detail} ({})", status.as_u16()))
    };
    ApiError {
        status: Some(status.as_u16()),
        code,
        message,
        error,
    }
}

/// The provider's code and message from an error body: `{"error": {"code",
/// "message"}}` (Hetzner's shape, also common elsewhere), `{"code",
/// "message"}` (Islo's `ErrorResponse`), `{"detail"}`, or the Crabbox
/// coordinator's `{"error": "text"}` (a code such as `cleanup_in_progress`
/// when the text is one word, else the message), else the body itself,
/// shortened.
pub(crate) fn parse_error_body(body: &[u8]) -> (Option<String>, String) {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) {
        if let Some(text) = value.get("error").and_then(serde_json::Value::as_str) {
            let message = value
                .get("message")
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned);
            let is_code = !text.is_empty()
                && text
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            return if is_code {
                (
                    Some(text.to_owned()),
                    message.unwrap_or_else(|| text.to_owned()),
                )
            } else {
                (
                    None,
                    message.map_or_else(|| text.to_owned(), |m| format!("{text}: {m}")),
                )
            };
        }
        let error = value
            .get("error")
            .filter(|e| e.is_object())
            .unwrap_or(&value);
        let text = |k: &str| {
            error
                .get(k)
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
        };
        let (code, message) = (text("code"), text("message").or_else(|| text("detail")));
        if code.is_some() || message.is_some() {
            return (code, message.unwrap_or_default());
        }
    }
    let text = String::from_utf8_lossy(body);
    let excerpt: String = text.trim().chars().take(BODY_EXCERPT).collect();
    if excerpt.is_empty() {
        (None, "(no response body)".to_owned())
    } else {
        (None, excerpt)
    }
}

/// `Retry-After` in seconds (HTTP dates are not used by these APIs).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// Time until `RateLimit-Reset` (a Unix timestamp), at most a minute.
fn rate_limit_reset(headers: &HeaderMap) -> Option<Duration> {
    let reset: u64 = headers
        .get("ratelimit-reset")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
    Some(
        Duration::from_secs(reset)
            .saturating_sub(now)
            .min(MAX_RATE_LIMIT_WAIT),
    )
}

/// An error and its sources, joined (reqwest's own message is terse).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_urls_are_https_unless_loopback() {
        for ok in [
            "https://app.daytona.io/api",
            "http://127.0.0.1:8080/api",
            "http://localhost:1",
            "http://[::1]:9/",
        ] {
            assert!(check_api_url("daytona.api_url", ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://app.daytona.io/api",
            "http://10.0.0.1/",
            "ftp://127.0.0.1/",
            "not a url",
        ] {
            let e = check_api_url("daytona.api_url", bad).expect_err(bad);
            assert!(matches!(e, ProviderError::Config { .. }), "{bad}: {e:?}");
        }
    }

    #[test]
    fn debug_output_redacts_the_token() {
        let client = HttpClient::new("hetzner", "http://x/v1/", "s3cr3t-token", "HCLOUD_TOKEN");
        let shown = format!("{client:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert_eq!(client.base_url(), "http://x/v1");
    }

    #[test]
    fn error_bodies_yield_code_and_message() {
        let (code, message) = parse_error_body(
            br#"{"error":{"code":"resource_unavailable","message":"no capacity","details":{}}}"#,
        );
        assert_eq!(code.as_deref(), Some("resource_unavailable"));
        assert_eq!(message, "no capacity");
        // The Crabbox coordinator's `{"error": "…"}`: a code, or a message.
        let (code, message) = parse_error_body(br#"{"error":"cleanup_in_progress"}"#);
        assert_eq!(code.as_deref(), Some("cleanup_in_progress"));
        assert_eq!(message, "cleanup_in_progress");
        let (code, message) = parse_error_body(br#"{"error":"invalid serverType: ccx99"}"#);
        assert_eq!(code, None);
        assert_eq!(message, "invalid serverType: ccx99");
        let (code, message) = parse_error_body(b"<html>bad gateway</html>");
        assert_eq!(code, None);
        assert_eq!(message, "<html>bad gateway</html>");
    }

    #[test]
    fn statuses_map_to_provider_errors() {
        let client = HttpClient::new("hetzner", "http://x/v1", "t", "HCLOUD_TOKEN");
        let mut headers = HeaderMap::new();
        let err = |status: u16, headers: &HeaderMap, body: &str| {
            client.status_error(
                "hetzner: GET /servers",
                "/servers",
                StatusCode::from_u16(status).expect("status"),
                headers,
                body.as_bytes(),
            )
        };
        let e = err(
            401,
            &headers,
            r#"{"error":{"code":"unauthorized","message":"unable to authenticate"}}"#,
        );
        match &e.error {
            ProviderError::Credentials { hint, .. } => {
                assert!(hint.contains("HCLOUD_TOKEN"), "{hint}")
            }
            other => panic!("{other:?}"),
        }
        let e = err(
            403,
            &headers,
            r#"{"error":{"code":"resource_limit_exceeded","message":"limit"}}"#,
        );
        assert!(matches!(e.error, ProviderError::Failed(_)), "{e:?}");
        assert!(e.has_code("resource_limit_exceeded"));
        let e = err(
            404,
            &headers,
            r#"{"error":{"code":"not_found","message":"nope"}}"#,
        );
        assert!(e.is_not_found());
        let e = err(
            412,
            &headers,
            r#"{"error":{"code":"resource_unavailable","message":"no capacity"}}"#,
        );
        assert_eq!(
            e.error,
            ProviderError::Failed(
                "hetzner: GET /servers: resource_unavailable: no capacity (412)".into()
            )
        );
        headers.insert(RETRY_AFTER, "7".parse().expect("header"));
        let e = err(503, &headers, "");
        assert_eq!(
            e.error,
            ProviderError::Retryable {
                message: "hetzner: GET /servers: 503 (no response body)".into(),
                retry_after: Some(Duration::from_secs(7)),
            }
        );
        let mut headers = HeaderMap::new();
        let soon = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs()
            + 3600;
        headers.insert("RateLimit-Reset", soon.to_string().parse().expect("header"));
        let e = err(
            429,
            &headers,
            r#"{"error":{"code":"rate_limit_exceeded","message":"slow down"}}"#,
        );
        match e.error {
            ProviderError::Retryable { retry_after, .. } => {
                assert_eq!(retry_after, Some(MAX_RATE_LIMIT_WAIT));
            }
            other => panic!("{other:?}"),
        }
    }
}
