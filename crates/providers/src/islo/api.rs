//! The Islo API as crabbox speaks it: the JSON shapes it reads (only the
//! fields used), and one API base URL with its session — the access key
//! exchanged for a session token on demand, refreshed once on a 401 — and
//! the calls made through it (JSON, and raw requests for streams).

use super::*;

#[derive(Debug, Clone, Deserialize)]
pub(super) struct Sandbox {
    #[serde(default)]
    pub(super) id: String,
    pub(super) name: String,
    #[serde(default)]
    pub(super) status: String,
}

impl Sandbox {
    pub(super) fn status(&self) -> String {
        self.status.trim().to_ascii_lowercase()
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct SandboxPage {
    #[serde(default)]
    pub(super) items: Vec<Sandbox>,
    #[serde(default)]
    pub(super) total: Option<usize>,
    #[serde(default)]
    pub(super) limit: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct ShareRecord {
    #[serde(default)]
    pub(super) share_id: String,
    #[serde(default)]
    pub(super) url: String,
    pub(super) port: u32,
    #[serde(default)]
    pub(super) expires_at: Option<String>,
}

impl ShareRecord {
    /// Time left; `None` when it does not expire, `Some(0)` when the expiry
    /// cannot be read.
    pub(super) fn remaining(&self, now: SystemTime) -> Option<Duration> {
        let text = self.expires_at.as_deref().map(str::trim).unwrap_or("");
        if text.is_empty() {
            return None;
        }
        Some(
            parse_rfc3339(text)
                .and_then(|t| t.duration_since(now).ok())
                .unwrap_or_default(),
        )
    }

    pub(super) fn to_share(&self) -> Share {
        Share {
            port: u16::try_from(self.port).unwrap_or(0),
            url: self.url.clone(),
            expires_at: self.expires_at.clone().unwrap_or_default(),
            id: self.share_id.clone(),
        }
    }
}

#[derive(Deserialize)]
pub(super) struct TokenResponse {
    pub(super) session_token: String,
    #[serde(default)]
    pub(super) cookie_max_age: Option<u64>,
}

/// A session token and the JSON client that sends it.
pub(super) struct Session {
    pub(super) token: String,
    pub(super) expires: Instant,
    pub(super) http: HttpClient,
}

/// One Islo API base URL: its session (exchanged on demand) and clients.
pub(super) struct Api {
    pub(super) base_url: String,
    pub(super) key: ApiKey,
    pub(super) raw: reqwest::Client,
    pub(super) request_timeout: Duration,
    pub(super) session: tokio::sync::Mutex<Option<Arc<Session>>>,
}

pub(super) fn api_error(error: ProviderError) -> ApiError {
    ApiError {
        status: None,
        code: None,
        message: error.to_string(),
        error,
    }
}

impl Api {
    /// The current session, exchanging the key for a new one when there is
    /// none or it is about to expire.
    pub(super) async fn session(&self) -> Result<Arc<Session>, ProviderError> {
        let mut current = self.session.lock().await;
        if let Some(s) = current.as_ref()
            && Instant::now() < s.expires
        {
            return Ok(s.clone());
        }
        let session = Arc::new(self.exchange().await?);
        *current = Some(session.clone());
        Ok(session)
    }

    /// Drops the session if it is still the one that sent `token`.
    async fn invalidate(&self, token: &str) {
        let mut current = self.session.lock().await;
        if current.as_ref().is_some_and(|s| s.token == token) {
            *current = None;
        }
    }

    /// `POST /auth/token {"access_key": K}` → a session.
    async fn exchange(&self) -> Result<Session, ProviderError> {
        let what = "islo: POST /auth/token";
        let response = self
            .raw
            .post(format!("{}/auth/token", self.base_url))
            .header(ACCEPT, "application/json")
            .json(&json!({ "access_key": self.key.0 }))
            .timeout(self.request_timeout)
            .send()
            .await
            .map_err(|e| transport_error(what, &e, self.request_timeout).error)?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .map_err(|e| transport_error(what, &e, self.request_timeout).error)?;
        if !status.is_success() {
            let mapped = status_error(
                PROVIDER,
                KEY_ENV,
                what,
                "/auth/token",
                status,
                &headers,
                &body,
            );
            let error = match mapped.error {
                ProviderError::Credentials { .. } | ProviderError::NotFound(_) => {
                    ProviderError::Credentials {
                        message: format!(
                            "islo rejected the API key at {}/auth/token ({})",
                            self.base_url,
                            status.as_u16()
                        ),
                        hint: format!("set {KEY_ENV} to a valid Islo API key (ak_…)"),
                    }
                }
                other => other,
            };
            return Err(redact(error, &self.key.0));
        }
        let token: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| ProviderError::Failed(format!("{what}: unexpected response: {e}")))?;
        if token.session_token.is_empty() {
            return Err(ProviderError::Failed(format!(
                "{what}: the response carries no session token"
            )));
        }
        let max_age = Duration::from_secs(token.cookie_max_age.unwrap_or(DEFAULT_TOKEN_MAX_AGE));
        let margin = TOKEN_REFRESH_MARGIN.min(max_age / 4);
        Ok(Session {
            http: HttpClient::new(PROVIDER, &self.base_url, &token.session_token, KEY_ENV)
                .with_timeout(self.request_timeout),
            expires: Instant::now() + max_age.saturating_sub(margin),
            token: token.session_token,
        })
    }

    /// `GET path?query` → JSON, refreshing the session once on a 401.
    pub(super) async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, ApiError> {
        let mut refreshed = false;
        loop {
            let s = self.session().await.map_err(api_error)?;
            match s.http.get_json(path, query).await {
                Err(e) if e.status == Some(401) && !refreshed => {
                    self.invalidate(&s.token).await;
                    refreshed = true;
                }
                other => return other,
            }
        }
    }

    /// `POST path` with a JSON body → JSON, refreshing the session once on a 401.
    pub(super) async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<T, ApiError> {
        let mut refreshed = false;
        loop {
            let s = self.session().await.map_err(api_error)?;
            match s.http.post_json(path, body).await {
                Err(e) if e.status == Some(401) && !refreshed => {
                    self.invalidate(&s.token).await;
                    refreshed = true;
                }
                other => return other,
            }
        }
    }

    /// `DELETE path`, refreshing the session once on a 401.
    pub(super) async fn delete(&self, path: &str) -> Result<(), ApiError> {
        let mut refreshed = false;
        loop {
            let s = self.session().await.map_err(api_error)?;
            match s.http.delete(path).await {
                Err(e) if e.status == Some(401) && !refreshed => {
                    self.invalidate(&s.token).await;
                    refreshed = true;
                }
                other => return other,
            }
        }
    }

    /// Sends a request whose answer is read by the caller (streams): the
    /// response once it is a success, else the mapped error (with the status
    /// and Islo's error code, for callers that branch on them). `build` makes
    /// the request for a session token (from owned parts, so it can be sent
    /// again); a 401 refreshes the session once.
    pub(super) async fn send_raw(
        &self,
        what: &str,
        path: &str,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ApiError> {
        let mut refreshed = false;
        loop {
            let s = self.session().await.map_err(api_error)?;
            let request = build(&s.token).header(reqwest::header::USER_AGENT, user_agent());
            let response = match tokio::time::timeout(RESPONSE_HEADER_TIMEOUT, request.send()).await
            {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    // A body that broke while being sent may have reached
                    // Islo: an exec must not run twice, so that is no retry.
                    let mut error = transport_error(what, &e, RESPONSE_HEADER_TIMEOUT).error;
                    if e.is_body() {
                        error = ProviderError::Failed(error.to_string());
                    }
                    return Err(api_error(redact(error, &s.token)));
                }
                Err(_) => {
                    return Err(api_error(ProviderError::Retryable {
                        message: format!(
                            "{what}: no response within {}s",
                            RESPONSE_HEADER_TIMEOUT.as_secs()
                        ),
                        retry_after: None,
                    }));
                }
            };
            let status = response.status();
            if status.is_success() {
                return Ok(response);
            }
            if status == StatusCode::UNAUTHORIZED && !refreshed {
                self.invalidate(&s.token).await;
                refreshed = true;
                continue;
            }
            let headers = response.headers().clone();
            let body = response.bytes().await.unwrap_or_default();
            let mapped = status_error(PROVIDER, KEY_ENV, what, path, status, &headers, &body);
            return Err(ApiError {
                message: mapped.message.replace(&s.token, "<redacted>"),
                error: redact(mapped.error, &s.token),
                ..mapped
            });
        }
    }
}

/// `error` with every occurrence of `secret` in its text replaced.
pub(super) fn redact(error: ProviderError, secret: &str) -> ProviderError {
    if secret.is_empty() {
        return error;
    }
    let r = |s: String| s.replace(secret, "<redacted>");
    match error {
        ProviderError::NotFound(m) => ProviderError::NotFound(r(m)),
        ProviderError::Retryable {
            message,
            retry_after,
        } => ProviderError::Retryable {
            message: r(message),
            retry_after,
        },
        ProviderError::Config { message, hint } => ProviderError::Config {
            message: r(message),
            hint: r(hint),
        },
        ProviderError::Credentials { message, hint } => ProviderError::Credentials {
            message: r(message),
            hint: r(hint),
        },
        ProviderError::Unsupported(m) => ProviderError::Unsupported(r(m)),
        ProviderError::Failed(m) => ProviderError::Failed(r(m)),
    }
}
