//! The scaffolding every fake provider API shares, so a fake only has to
//! say what is particular to its provider (routes, resources, pagination,
//! error body shape, credentials):
//!
//! - [`FakeServer`] serves an axum [`Router`] on a free port of 127.0.0.1
//!   and stops serving when dropped;
//! - [`Harness::wrap`] puts one middleware in front of the provider's
//!   routes that, for each request, in order: waits for a slot under the
//!   in-flight limit, sleeps the injected latency, asks the provider's
//!   [`Auth`] whether the request may pass, answers an injected fault if
//!   one applies, else runs the routes — and logs the request with the
//!   status it got;
//! - [`RequestLog`] holds what was asked (method, path, query, headers,
//!   body, status) for assertions, and when each request was being served,
//!   so a test can check how many were served at once;
//! - [`Faults`] is what a test injects: latency, replies queued for the
//!   next requests, routes that are down, a token-bucket rate limit, an
//!   in-flight limit, and a seeded storm of failures;
//! - [`Reply`] and [`json_error`] build answers in the provider's own
//!   error body shape ([`ErrorShape`]).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::sync::{Semaphore, oneshot};

/// The most of a request body the log keeps as text: enough to check what
/// was sent without holding whole uploads.
const RAW_BODY_LOGGED: usize = 64 * 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---- serving ----

/// A fake API being served; dropping it stops accepting connections, so a
/// fake does not outlive the test that started it.
#[derive(Debug)]
pub struct FakeServer {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
}

impl FakeServer {
    /// Serves `app` on a free port of 127.0.0.1, from a task of the current
    /// runtime. `what` names the fake in a failure to bind.
    pub async fn start(what: &str, app: Router) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind the fake {what} API: {e}"));
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Self {
            url: format!("http://{addr}"),
            stop: Some(stop),
        }
    }
}

impl FakeServer {
    /// A server some other listener serves (TLS: `tls::start_tls`), at
    /// `url`, stopped by `stop`.
    pub fn serving(url: String, stop: oneshot::Sender<()>) -> Self {
        Self {
            url,
            stop: Some(stop),
        }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

// ---- answers ----

/// How a provider spells an error body, from an error code and a message
/// (Hetzner nests them under `error`, Islo adds a request ID…).
pub type ErrorShape = fn(code: &str, message: &str) -> Value;

/// `status` with the JSON body `shape` makes of `code` and `message`.
pub fn json_error(shape: ErrorShape, status: StatusCode, code: &str, message: &str) -> Response {
    (status, axum::Json(shape(code, message))).into_response()
}

/// Sets a header of a response; values that are not valid header text are
/// skipped (the fakes only set ASCII values).
pub fn set_header(response: &mut Response, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, v);
    }
}

/// An injected answer. It is built afresh each time it is sent, so that
/// what depends on the moment (a reset time, a request ID) is current.
#[derive(Clone)]
pub struct Reply(Arc<dyn Fn() -> Response + Send + Sync>);

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reply")
    }
}

impl Reply {
    /// Whatever `build` makes, each time.
    pub fn new(build: impl Fn() -> Response + Send + Sync + 'static) -> Self {
        Self(Arc::new(build))
    }

    /// A provider error: `status` with the body `shape` makes.
    pub fn error(shape: ErrorShape, status: StatusCode, code: &str, message: &str) -> Self {
        let (code, message) = (code.to_owned(), message.to_owned());
        Self::new(move || json_error(shape, status, &code, &message))
    }

    /// The same reply carrying a header too (`Retry-After`…).
    pub fn with_header(self, name: &'static str, value: &str) -> Self {
        let value = value.to_owned();
        Self::new(move || {
            let mut response = (self.0)();
            set_header(&mut response, name, &value);
            response
        })
    }

    fn send(&self) -> Response {
        (self.0)()
    }
}

// ---- the request log ----

/// One request as a fake saw it.
#[derive(Debug, Clone)]
pub struct LoggedRequest {
    /// `GET`, `POST`…
    pub method: String,
    /// Path, `/v1/servers/42`.
    pub path: String,
    /// Decoded query parameters, in order.
    pub query: Vec<(String, String)>,
    /// Every header, lowercase names.
    pub headers: Vec<(String, String)>,
    /// JSON body (`Null` when there was none or it was not JSON).
    pub body: Value,
    /// The body as text (lossy), at most 64 KiB of it.
    pub raw_body: String,
    /// The status answered.
    pub status: u16,
    /// When it got its turn (past the in-flight limit) and when its answer
    /// was ready: what [`RequestLog::max_concurrent`] counts.
    served: (Instant, Instant),
}

impl LoggedRequest {
    /// The first value of a query parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        find(&self.query, name)
    }

    /// A header's value (`name` in lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        find(&self.headers, name)
    }

    /// Everything the request carried, as text (for leak checks).
    pub fn everything(&self) -> String {
        let mut out = format!("{} {}", self.method, self.path);
        for (k, v) in self.query.iter().chain(&self.headers) {
            out.push_str(&format!("\n{k}: {v}"));
        }
        out.push('\n');
        out.push_str(&self.raw_body);
        out
    }
}

fn find<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The decoded query parameters of `uri`, in order (none if it does not
/// parse).
pub fn query_pairs(uri: &Uri) -> Vec<(String, String)> {
    Query::<Vec<(String, String)>>::try_from_uri(uri).map_or_else(|_| Vec::new(), |q| q.0)
}

/// Every request a fake answered, in the order their answers were ready.
#[derive(Debug, Clone, Default)]
pub struct RequestLog(Arc<Mutex<Vec<LoggedRequest>>>);

impl RequestLog {
    /// Every request so far.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        lock(&self.0).clone()
    }

    /// How many requests of `method` had a path starting with `path_prefix`.
    pub fn count(&self, method: &str, path_prefix: &str) -> usize {
        lock(&self.0)
            .iter()
            .filter(|r| r.method == method && r.path.starts_with(path_prefix))
            .count()
    }

    /// Forgets every request.
    pub fn clear(&self) {
        lock(&self.0).clear();
    }

    /// The most requests picked by `which` that were being served at once
    /// (from the log: requests still in flight do not count yet).
    pub fn max_concurrent(&self, which: impl Fn(&LoggedRequest) -> bool) -> usize {
        // +1 when one starts, -1 when one ends; at the same instant an end
        // comes first, so back-to-back requests do not overlap.
        let mut edges: Vec<(Instant, i32)> = lock(&self.0)
            .iter()
            .filter(|r| which(r))
            .flat_map(|r| [(r.served.0, 1), (r.served.1, -1)])
            .collect();
        edges.sort_unstable();
        let (mut now, mut most) = (0_i32, 0_i32);
        for (_, step) in edges {
            now += step;
            most = most.max(now);
        }
        usize::try_from(most).unwrap_or(0)
    }

    fn push(&self, request: LoggedRequest) {
        lock(&self.0).push(request);
    }
}

// ---- faults ----

/// Which requests a fault applies to: a method (any when `None`) and a
/// path prefix (`""`: every path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    method: Option<Method>,
    prefix: String,
}

impl Route {
    /// Every request.
    pub fn any() -> Self {
        Self::prefix("")
    }

    /// Requests of any method whose path starts with `prefix`.
    pub fn prefix(prefix: &str) -> Self {
        Self {
            method: None,
            prefix: prefix.to_owned(),
        }
    }

    /// Requests of `method` whose path starts with `prefix`.
    pub fn new(method: &str, prefix: &str) -> Self {
        Self {
            method: Some(Method::from_bytes(method.as_bytes()).expect("an HTTP method")),
            prefix: prefix.to_owned(),
        }
    }

    fn matches(&self, method: &Method, path: &str) -> bool {
        self.method.as_ref().is_none_or(|m| m == method) && path.starts_with(&self.prefix)
    }
}

/// A token bucket: `per_second` requests a second, bursts of `burst`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    per_second: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
}

impl Bucket {
    /// Takes a token, or says how long until one is there.
    fn take(&mut self) -> Result<(), Duration> {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / self.per_second,
            ))
        }
    }
}

/// What a rate-limited request is answered, given the whole seconds until
/// the bucket holds a token again (at least 1).
pub type RateLimited = Arc<dyn Fn(u64) -> Response + Send + Sync>;

/// Failures at random: a `fraction` of requests get one of `replies`,
/// picked by a xorshift generator from `seed`, so that a failing run can
/// be replayed.
#[derive(Debug, Clone)]
pub struct Storm {
    /// Between 0 (none) and 1 (every request).
    pub fraction: f64,
    /// The generator's start; 0 is taken as 1 (xorshift stays at 0).
    pub seed: u64,
    /// The failures, equally likely.
    pub replies: Vec<Reply>,
}

impl Storm {
    fn next(&mut self) -> u64 {
        let s = &mut self.seed;
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }

    /// The reply this request gets, if it is hit.
    fn strike(&mut self) -> Option<Reply> {
        #[allow(clippy::cast_precision_loss)] // a probability needs no more
        let hit = (self.next() >> 11) as f64 / (1_u64 << 53) as f64;
        if hit >= self.fraction || self.replies.is_empty() {
            return None;
        }
        let len = self.replies.len() as u64;
        let pick = usize::try_from(self.next() % len).unwrap_or(0);
        Some(self.replies[pick].clone())
    }
}

#[derive(Default)]
struct FaultState {
    latency: Duration,
    route_latency: Vec<(Route, Duration)>,
    /// One-shot replies: the first entry whose route matches answers the
    /// request and counts down.
    queued: VecDeque<(Route, u32, Reply)>,
    /// Routes that answer their reply until lifted.
    down: Vec<(Route, Reply)>,
    gate: Option<Arc<Semaphore>>,
    bucket: Option<(Bucket, RateLimited)>,
    storm: Option<Storm>,
}

/// The faults a test injects into one fake. Those that answer for the API
/// (queued replies, the rate limit, routes down, storms) apply only to
/// requests the fake's [`Auth`] granted, in that order.
#[derive(Clone, Default)]
pub struct Faults(Arc<Mutex<FaultState>>);

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Faults")
    }
}

impl Faults {
    fn lock(&self) -> MutexGuard<'_, FaultState> {
        lock(&self.0)
    }

    /// Delays every request by `latency`.
    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    /// Delays requests on `route` by `latency` more than the others.
    pub fn add_route_latency(&self, route: Route, latency: Duration) {
        self.lock().route_latency.push((route, latency));
    }

    /// The next `n` granted requests on `route` get `reply`, after the
    /// replies queued before it for the same requests.
    pub fn queue(&self, route: Route, n: u32, reply: Reply) {
        if n > 0 {
            self.lock().queued.push_back((route, n, reply));
        }
    }

    /// Granted requests on `route` get `reply` from now on (`None`: they
    /// are served again).
    pub fn set_down(&self, route: Route, reply: Option<Reply>) {
        let mut faults = self.lock();
        faults.down.retain(|(r, _)| *r != route);
        if let Some(reply) = reply {
            faults.down.push((route, reply));
        }
    }

    /// Serves at most `n` requests at once (each for its whole latency);
    /// later ones wait in arrival order. `None` lifts the limit.
    pub fn set_max_in_flight(&self, n: Option<usize>) {
        self.lock().gate = n.map(|n| Arc::new(Semaphore::new(n.max(1))));
    }

    /// Once more than `burst` requests arrive faster than `per_second`,
    /// answers `reply` until the bucket refills. `None` lifts it.
    pub fn set_rate_limit(&self, limit: Option<(f64, u32, RateLimited)>) {
        self.lock().bucket = limit.map(|(per_second, burst, reply)| {
            let burst = f64::from(burst.max(1));
            let bucket = Bucket {
                per_second: per_second.max(f64::MIN_POSITIVE),
                burst,
                tokens: burst,
                refilled: Instant::now(),
            };
            (bucket, reply)
        });
    }

    /// Starts (or, with `None`, ends) a storm of failures.
    pub fn set_storm(&self, storm: Option<Storm>) {
        self.lock().storm = storm.map(|s| Storm {
            seed: s.seed.max(1),
            ..s
        });
    }

    /// The latency of a request, and the in-flight gate it waits at.
    fn admission(&self, method: &Method, path: &str) -> (Duration, Option<Arc<Semaphore>>) {
        let faults = self.lock();
        let extra: Duration = faults
            .route_latency
            .iter()
            .filter(|(r, _)| r.matches(method, path))
            .map(|(_, d)| *d)
            .sum();
        (faults.latency + extra, faults.gate.clone())
    }

    /// The injected answer of a granted request, if any.
    fn strike(&self, method: &Method, path: &str) -> Option<Response> {
        let mut faults = self.lock();
        if let Some(i) = faults
            .queued
            .iter()
            .position(|(r, _, _)| r.matches(method, path))
        {
            let entry = &mut faults.queued[i];
            entry.1 -= 1;
            let reply = entry.2.clone();
            if entry.1 == 0 {
                faults.queued.remove(i);
            }
            return Some(reply.send());
        }
        if let Some((bucket, reply)) = faults.bucket.as_mut()
            && let Err(wait) = bucket.take()
        {
            let secs = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
            return Some(reply(secs));
        }
        if let Some((_, reply)) = faults.down.iter().find(|(r, _)| r.matches(method, path)) {
            return Some(reply.send());
        }
        faults
            .storm
            .as_mut()
            .and_then(Storm::strike)
            .map(|r| r.send())
    }
}

// ---- the middleware ----

/// What a fake's credentials check decides about a request.
#[derive(Debug)]
pub enum Access {
    /// Served without credentials and without faults (a login endpoint).
    Open,
    /// Credentials accepted: faults apply, then the routes.
    Granted,
    /// Refused with this answer.
    Denied(Response),
}

/// A fake's credentials check.
pub type Auth = Arc<dyn Fn(&Parts) -> Access + Send + Sync>;

/// The log and faults of one fake; clones share them.
#[derive(Debug, Clone, Default)]
pub struct Harness {
    /// What was asked.
    pub log: RequestLog,
    /// What is injected.
    pub faults: Faults,
}

#[derive(Clone)]
struct Layer {
    harness: Harness,
    auth: Auth,
}

impl Harness {
    /// `routes` behind the harness: in-flight limit, latency, `auth`,
    /// faults, logging.
    pub fn wrap(&self, routes: Router, auth: Auth) -> Router {
        let layer = Layer {
            harness: self.clone(),
            auth,
        };
        routes.layer(axum::middleware::from_fn_with_state(layer, serve_one))
    }
}

async fn serve_one(State(layer): State<Layer>, request: Request, next: Next) -> Response {
    let Harness { log, faults } = &layer.harness;
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let (latency, gate) = faults.admission(&parts.method, &path);
    let _turn = match gate {
        Some(g) => g.acquire_owned().await.ok(),
        None => None,
    };
    let started = Instant::now();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let struck = match (layer.auth)(&parts) {
        Access::Denied(response) => Some(response),
        Access::Granted => faults.strike(&parts.method, &path),
        Access::Open => None,
    };
    let logged = LoggedRequest {
        method: parts.method.to_string(),
        path,
        query: query_pairs(&parts.uri),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                let value = String::from_utf8_lossy(v.as_bytes()).into_owned();
                (k.as_str().to_owned(), value)
            })
            .collect(),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        raw_body: String::from_utf8_lossy(&body[..body.len().min(RAW_BODY_LOGGED)]).into_owned(),
        status: 0,
        served: (started, started),
    };
    let response = match struck {
        Some(response) => response,
        None => next.run(Request::from_parts(parts, Body::from(body))).await,
    };
    log.push(LoggedRequest {
        status: response.status().as_u16(),
        served: (started, Instant::now()),
        ..logged
    });
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// An error shape unlike any provider's, so the tests see it is the
    /// fake's that is used.
    fn shape(code: &str, message: &str) -> Value {
        json!({ "failure": { "kind": code, "text": message } })
    }

    /// A fake whose `/things` echoes the JSON it is sent, and whose other
    /// paths need `Authorization: Bearer ok` (`/login` needs nothing).
    async fn echo() -> (Harness, FakeServer) {
        let routes = Router::new()
            .route(
                "/things",
                axum::routing::post(|body: axum::Json<Value>| async move {
                    (StatusCode::CREATED, body)
                })
                .get(|| async { axum::Json(json!({ "things": [] })) }),
            )
            .route("/login", axum::routing::post(|| async { "welcome" }));
        let auth: Auth = Arc::new(|parts: &Parts| {
            let bearer = parts.headers.get("authorization");
            if parts.uri.path() == "/login" {
                Access::Open
            } else if bearer.is_some_and(|v| v == "Bearer ok") {
                Access::Granted
            } else {
                Access::Denied(json_error(
                    shape,
                    StatusCode::UNAUTHORIZED,
                    "who",
                    "unknown token",
                ))
            }
        });
        let harness = Harness::default();
        let server = FakeServer::start("echo", harness.wrap(routes, auth)).await;
        (harness, server)
    }

    async fn get(server: &FakeServer, path: &str) -> reqwest::Response {
        reqwest::Client::new()
            .get(format!("{}{path}", server.url))
            .bearer_auth("ok")
            .send()
            .await
            .expect("the fake answers")
    }

    #[tokio::test]
    async fn requests_are_routed_and_logged_with_what_they_carried() {
        let (harness, server) = echo().await;
        let answer = reqwest::Client::new()
            .post(format!("{}/things?name=a%20b&tag=x&tag=y", server.url))
            .bearer_auth("ok")
            .header("x-trace", "t-1")
            .json(&json!({ "size": 3 }))
            .send()
            .await
            .expect("post");
        assert_eq!(answer.status(), 201);
        assert_eq!(
            answer.json::<Value>().await.expect("JSON"),
            json!({ "size": 3 }),
            "the routes got the body the log read"
        );
        assert_eq!(get(&server, "/things").await.status(), 200);

        let log = harness.log.requests();
        assert_eq!(log.len(), 2);
        let post = &log[0];
        assert_eq!(
            (post.method.as_str(), post.path.as_str()),
            ("POST", "/things")
        );
        assert_eq!(post.param("name"), Some("a b"));
        assert_eq!(
            post.query,
            [("name", "a b"), ("tag", "x"), ("tag", "y")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        assert_eq!(post.header("x-trace"), Some("t-1"));
        assert_eq!(post.header("authorization"), Some("Bearer ok"));
        assert_eq!(post.body, json!({ "size": 3 }));
        assert_eq!(post.raw_body, r#"{"size":3}"#);
        assert_eq!(post.status, 201);
        assert!(post.everything().contains("x-trace: t-1"));
        assert_eq!(harness.log.count("POST", "/thi"), 1);
        assert_eq!(harness.log.count("GET", "/things"), 1);
        assert_eq!(harness.log.count("DELETE", "/"), 0);
        harness.log.clear();
        assert!(harness.log.requests().is_empty());
    }

    #[tokio::test]
    async fn injected_replies_come_in_order_then_service_resumes() {
        let (harness, server) = echo().await;
        let faults = &harness.faults;
        faults.queue(
            Route::any(),
            2,
            Reply::error(shape, StatusCode::SERVICE_UNAVAILABLE, "down", "later"),
        );
        faults.queue(
            Route::new("GET", "/things"),
            1,
            Reply::error(shape, StatusCode::TOO_MANY_REQUESTS, "slow", "easy")
                .with_header("retry-after", "7"),
        );
        faults.queue(
            Route::new("DELETE", "/things"),
            1,
            Reply::error(shape, StatusCode::IM_A_TEAPOT, "never", "not a DELETE"),
        );

        let mut statuses = Vec::new();
        for _ in 0..4 {
            let answer = get(&server, "/things").await;
            statuses.push(answer.status().as_u16());
            if answer.status() == 429 {
                assert_eq!(answer.headers()["retry-after"], "7");
            }
        }
        assert_eq!(statuses, [503, 503, 429, 200]);

        // Refused requests use up no fault; open ones meet none.
        faults.queue(
            Route::any(),
            1,
            Reply::error(shape, StatusCode::SERVICE_UNAVAILABLE, "down", "later"),
        );
        let stranger = reqwest::Client::new()
            .get(format!("{}/things", server.url))
            .send()
            .await
            .expect("get");
        assert_eq!(stranger.status(), 401);
        let login = reqwest::Client::new()
            .post(format!("{}/login", server.url))
            .send()
            .await
            .expect("login");
        assert_eq!(login.status(), 200);
        assert_eq!(get(&server, "/things").await.status(), 503);
        assert_eq!(get(&server, "/things").await.status(), 200);

        // A route that is down stays down until it is lifted.
        let down = Route::new("GET", "/things");
        let reply = Reply::error(shape, StatusCode::BAD_GATEWAY, "gone", "away");
        faults.set_down(down.clone(), Some(reply));
        assert_eq!(get(&server, "/things").await.status(), 502);
        assert_eq!(get(&server, "/things").await.status(), 502);
        faults.set_down(down, None);
        assert_eq!(get(&server, "/things").await.status(), 200);

        let logged: Vec<u16> = harness.log.requests().iter().map(|r| r.status).collect();
        assert_eq!(
            logged,
            [503, 503, 429, 200, 401, 200, 503, 200, 502, 502, 200]
        );
    }

    #[tokio::test]
    async fn latency_delays_requests_and_the_in_flight_limit_queues_them() {
        let (harness, server) = echo().await;
        let faults = &harness.faults;
        faults.set_latency(Duration::from_millis(40));
        // The route's delay is long so that "without it" stays tell-apart on
        // a loaded machine: the bound below is the route delay, not a tight timing.
        faults.add_route_latency(Route::new("GET", "/things"), Duration::from_millis(1000));
        let started = Instant::now();
        assert_eq!(get(&server, "/things").await.status(), 200);
        assert!(
            started.elapsed() >= Duration::from_millis(1040),
            "both delays"
        );
        let started = Instant::now();
        let login = reqwest::Client::new()
            .post(format!("{}/login", server.url))
            .send()
            .await
            .expect("login");
        assert_eq!(login.status(), 200);
        let took = started.elapsed();
        assert!(
            (Duration::from_millis(40)..Duration::from_millis(1000)).contains(&took),
            "only the fixed latency: {took:?}"
        );

        faults.set_latency(Duration::from_millis(30));
        faults.set_max_in_flight(Some(2));
        harness.log.clear();
        let started = Instant::now();
        let answers =
            futures_util::future::join_all((0..4).map(|_| get(&server, "/nowhere"))).await;
        assert!(answers.iter().all(|a| a.status() == 404));
        assert!(
            started.elapsed() >= Duration::from_millis(60),
            "four requests, two at a time, 30 ms each: two rounds"
        );
        assert_eq!(harness.log.max_concurrent(|_| true), 2);
        assert_eq!(harness.log.max_concurrent(|r| r.path == "/elsewhere"), 0);
    }

    #[tokio::test]
    async fn errors_have_the_fakes_shape_and_rate_limits_say_when_to_retry() {
        let (harness, server) = echo().await;
        let refused = reqwest::Client::new()
            .get(format!("{}/things", server.url))
            .bearer_auth("wrong")
            .send()
            .await
            .expect("get");
        assert_eq!(refused.status(), 401);
        assert_eq!(refused.headers()["content-type"], "application/json");
        assert_eq!(
            refused.json::<Value>().await.expect("JSON"),
            json!({ "failure": { "kind": "who", "text": "unknown token" } })
        );

        let limited: RateLimited = Arc::new(|secs| {
            let mut r = json_error(shape, StatusCode::TOO_MANY_REQUESTS, "slow", "easy");
            set_header(&mut r, "retry-after", &secs.to_string());
            r
        });
        harness.faults.set_rate_limit(Some((0.5, 2, limited)));
        assert_eq!(get(&server, "/things").await.status(), 200);
        assert_eq!(get(&server, "/things").await.status(), 200);
        let third = get(&server, "/things").await;
        assert_eq!(third.status(), 429, "the burst of two is spent");
        assert_eq!(third.headers()["retry-after"], "2", "half a token a second");
        assert_eq!(
            third.json::<Value>().await.expect("JSON"),
            json!({ "failure": { "kind": "slow", "text": "easy" } })
        );
        harness.faults.set_rate_limit(None);
        assert_eq!(get(&server, "/things").await.status(), 200);
    }

    #[tokio::test]
    async fn a_storm_strikes_a_fraction_of_requests_and_replays_from_its_seed() {
        let (harness, server) = echo().await;
        let storm = |seed| Storm {
            fraction: 0.5,
            seed,
            replies: vec![
                Reply::error(shape, StatusCode::TOO_MANY_REQUESTS, "slow", "easy"),
                Reply::error(shape, StatusCode::SERVICE_UNAVAILABLE, "down", "later"),
            ],
        };
        let mut runs = Vec::new();
        for _ in 0..2 {
            harness.faults.set_storm(Some(storm(42)));
            let mut statuses = Vec::new();
            for _ in 0..40 {
                statuses.push(get(&server, "/things").await.status().as_u16());
            }
            runs.push(statuses);
        }
        harness.faults.set_storm(None);
        assert_eq!(runs[0], runs[1], "the same seed, the same failures");
        let struck = runs[0].iter().filter(|s| **s != 200).count();
        assert!((8..=32).contains(&struck), "about half of 40: {struck}");
        assert!(runs[0].contains(&429) && runs[0].contains(&503));
        assert_eq!(get(&server, "/things").await.status(), 200);
    }

    #[tokio::test]
    async fn dropping_the_server_stops_it() {
        let (_harness, server) = echo().await;
        let url = server.url.clone();
        assert_eq!(get(&server, "/things").await.status(), 200);
        drop(server);
        let mut refused = false;
        for _ in 0..50 {
            let answer = reqwest::Client::new()
                .get(format!("{url}/things"))
                .bearer_auth("ok")
                .send()
                .await;
            if answer.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(refused, "{url} still answers");
    }
}
