//! A proxy in front of moto's EC2 server that forwards every request
//! byte for byte, except the `RunInstances` calls a test told it to refuse:
//! those get the EC2 error a real region answers when it has no capacity
//! (moto itself cannot fail a launch). It counts requests per `Action` and
//! logs each one's form parameters, so a test can check which types and
//! markets a create tried and what its `RunInstances` carried.
//!
//! Two more faults of a real region: throttling (the next calls of an
//! action answered 503 `RequestLimitExceeded` or 400 `Throttling`, as EC2
//! does under its request rate limits) and, for `aws.private_ip`, a private
//! address the tests' sshd serves: moto's VPC addresses lead nowhere, so
//! `DescribeInstances` answers can carry a chosen private address instead.
//!
//! The SDK speaks EC2's Query protocol: `POST /` with a form body
//! `Action=RunInstances&InstanceType=…&InstanceMarketOptions.MarketType=spot…`,
//! signed, but moto checks no signature, so forwarding a request unchanged
//! is safe.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::fake_http::FakeServer;

/// One request as the proxy saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// Its `Action` (`RunInstances`…), empty when the body named none.
    pub action: String,
    /// Its form parameters, `Action` and `Version` included.
    pub params: BTreeMap<String, String>,
    /// The HTTP status it was answered with.
    pub status: u16,
}

/// A `RunInstances` refusal to inject.
#[derive(Debug, Clone)]
struct Refusal {
    instance_type: String,
    spot_only: bool,
    code: String,
    status: StatusCode,
}

#[derive(Debug)]
struct Shared {
    upstream: String,
    client: reqwest::Client,
    refusals: Mutex<Vec<Refusal>>,
    /// Throttle answers still to give, by action, in order (EC2 error codes).
    throttles: Mutex<BTreeMap<String, Vec<String>>>,
    /// The private address `DescribeInstances` answers carry, when set.
    private_address: Mutex<Option<String>>,
    log: Mutex<Vec<Logged>>,
}

/// The proxy, serving while it lives.
pub struct MotoProxy {
    _server: FakeServer,
    shared: Arc<Shared>,
    /// `http://127.0.0.1:PORT`, the EC2 endpoint to give the SDK.
    pub url: String,
}

/// EC2's server-side (5xx) error codes among those a launch may meet; the
/// rest of EC2's codes are client errors (400).
const SERVER_CODES: [&str; 4] = [
    "InsufficientInstanceCapacity",
    "InsufficientCapacity",
    "InternalError",
    "Unavailable",
];

impl MotoProxy {
    /// Starts a proxy forwarding to `upstream` (moto's URL).
    pub async fn start(upstream: &str) -> Self {
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_owned(),
            client: reqwest::Client::new(),
            refusals: Mutex::new(Vec::new()),
            throttles: Mutex::new(BTreeMap::new()),
            private_address: Mutex::new(None),
            log: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .fallback(forward)
            .with_state(Arc::clone(&shared));
        let server = FakeServer::start("moto proxy", app).await;
        let url = server.url.clone();
        Self {
            _server: server,
            shared,
            url,
        }
    }

    /// Refuses every `RunInstances` for `instance_type` (only the spot ones
    /// when `spot_only`) with EC2 error `code`, at the status EC2 uses for
    /// it (500 for capacity, 400 for the rest).
    pub fn refuse_run_instances(&self, instance_type: &str, spot_only: bool, code: &str) {
        let status = if SERVER_CODES.contains(&code) {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::BAD_REQUEST
        };
        self.refuse_run_instances_with(instance_type, spot_only, code, status);
    }

    /// [`Self::refuse_run_instances`] at a chosen HTTP status.
    pub fn refuse_run_instances_with(
        &self,
        instance_type: &str,
        spot_only: bool,
        code: &str,
        status: StatusCode,
    ) {
        lock(&self.shared.refusals).push(Refusal {
            instance_type: instance_type.to_owned(),
            spot_only,
            code: code.to_owned(),
            status,
        });
    }

    /// Answers the next calls of `action` with these throttling codes, one
    /// each, at EC2's status for it (503 `RequestLimitExceeded`, 400
    /// `Throttling`), before letting calls through again.
    pub fn throttle(&self, action: &str, codes: &[&str]) {
        lock(&self.shared.throttles)
            .entry(action.to_owned())
            .or_default()
            .extend(codes.iter().map(|c| (*c).to_owned()));
    }

    /// Makes every instance's private address `address` in
    /// `DescribeInstances` answers.
    pub fn serve_private_address(&self, address: &str) {
        *lock(&self.shared.private_address) = Some(address.to_owned());
    }

    /// How many requests of `action` arrived (refused ones included).
    pub fn count(&self, action: &str) -> usize {
        lock(&self.shared.log)
            .iter()
            .filter(|l| l.action == action)
            .count()
    }

    /// Every request of `action`, in arrival order.
    pub fn requests(&self, action: &str) -> Vec<Logged> {
        lock(&self.shared.log)
            .iter()
            .filter(|l| l.action == action)
            .cloned()
            .collect()
    }

    /// An SDK configuration that reaches moto through this proxy.
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&self.url)
            .region(aws_config::Region::new("eu-west-1"))
            .credentials_provider(aws_credential_types::Credentials::new(
                "testing", "testing", None, None, "moto",
            ))
            .load()
            .await
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `application/x-www-form-urlencoded` pairs, decoded (`+` is a space).
fn form(body: &[u8]) -> BTreeMap<String, String> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                    match u8::from_str_radix(hex, 16) {
                        Ok(b) => {
                            out.push(b);
                            i += 2;
                        }
                        Err(_) => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// EC2's error body.
fn ec2_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors><RequestID>00000000-0000-0000-0000-000000000000</RequestID></Response>"
    );
    (status, [("content-type", "text/xml;charset=UTF-8")], body).into_response()
}

async fn forward(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body: Bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let params = form(&body);
    let action = params.get("Action").cloned().unwrap_or_default();
    let refusal = (action == "RunInstances")
        .then(|| {
            let instance_type = params.get("InstanceType").map(String::as_str);
            let spot = params
                .get("InstanceMarketOptions.MarketType")
                .is_some_and(|m| m == "spot");
            lock(&shared.refusals)
                .iter()
                .find(|r| Some(r.instance_type.as_str()) == instance_type && (spot || !r.spot_only))
                .cloned()
        })
        .flatten();
    let throttled = {
        let mut throttles = lock(&shared.throttles);
        throttles
            .get_mut(&action)
            .filter(|codes| !codes.is_empty())
            .map(|codes| codes.remove(0))
    };
    let response = match (refusal, throttled) {
        (_, Some(code)) => {
            let status = if code == "RequestLimitExceeded" {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::BAD_REQUEST
            };
            ec2_error(
                status,
                &code,
                "Request limit exceeded (throttled by the test proxy).",
            )
        }
        (Some(r), None) => ec2_error(
            r.status,
            &r.code,
            &format!(
                "We currently do not have sufficient {} capacity (refused by the test proxy).",
                r.instance_type
            ),
        ),
        (None, None) => {
            let answer = upstream(&shared, &parts, body).await;
            let private = lock(&shared.private_address).clone();
            match private {
                Some(address) if action == "DescribeInstances" => {
                    with_private_address(answer, &address).await
                }
                _ => answer,
            }
        }
    };
    lock(&shared.log).push(Logged {
        action,
        params,
        status: response.status().as_u16(),
    });
    response
}

/// `answer` with every `<privateIpAddress>` element holding `address`.
async fn with_private_address(answer: Response, address: &str) -> Response {
    let (parts, body) = answer.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let xml = String::from_utf8_lossy(&bytes);
    let mut out = String::with_capacity(xml.len());
    let mut rest = xml.as_ref();
    let (open, close) = ("<privateIpAddress>", "</privateIpAddress>");
    while let Some(start) = rest.find(open) {
        let value = start + open.len();
        let Some(end) = rest[value..].find(close) else {
            break;
        };
        out.push_str(&rest[..value]);
        out.push_str(address);
        rest = &rest[value + end..];
    }
    out.push_str(rest);
    Response::from_parts(parts, Body::from(out))
}

async fn upstream(shared: &Shared, parts: &axum::http::request::Parts, body: Bytes) -> Response {
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut headers: HeaderMap = parts.headers.clone();
    headers.remove("host");
    let sent = shared
        .client
        .request(parts.method.clone(), format!("{}{path}", shared.upstream))
        .headers(headers)
        .body(body)
        .send()
        .await;
    match sent {
        Ok(answer) => {
            let status = answer.status();
            let mut headers = answer.headers().clone();
            headers.remove("content-length");
            headers.remove("transfer-encoding");
            headers.remove("connection");
            let bytes = answer.bytes().await.unwrap_or_default();
            let mut response = Response::new(Body::from(bytes));
            *response.status_mut() = status;
            *response.headers_mut() = headers;
            response
        }
        Err(e) => (StatusCode::BAD_GATEWAY, format!("moto: {e}")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use crabbox_core::labels::Labels;
    use crabbox_providers::aws::api::{Ec2, Launch, Market};

    use super::*;
    use crate::moto::{self, Moto};

    fn launch(group: &str, lease: &str, instance_type: &str, market: Market) -> Launch {
        moto::launch(
            group,
            lease,
            instance_type,
            market,
            &[("crabbox", "true"), ("lease", lease)],
        )
    }

    #[test]
    fn form_bodies_decode() {
        let params = form(b"Action=RunInstances&TagSpecification.1.Tag.1.Value=a+b%2Fc&Flag");
        assert_eq!(params["Action"], "RunInstances");
        assert_eq!(params["TagSpecification.1.Tag.1.Value"], "a b/c");
        assert_eq!(params["Flag"], "");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn refused_types_get_the_injected_code_and_the_rest_reach_moto() {
        let moto = Moto::start();
        let proxy = MotoProxy::start(&moto.url).await;
        proxy.refuse_run_instances("c7a.8xlarge", true, "InsufficientInstanceCapacity");
        proxy.refuse_run_instances("m7a.8xlarge", false, "Unsupported");
        let ec2 = Ec2::new(&proxy.sdk_config().await);
        let group = ec2
            .create_security_group("crabbox-runners", "test", None, &Labels::new())
            .await
            .expect("security group through the proxy");

        let refused = ec2
            .run(&launch(
                &group,
                "cbx_0000000000a1",
                "c7a.8xlarge",
                Market::Spot,
            ))
            .await
            .expect_err("c7a.8xlarge spot is refused");
        assert_eq!(refused.code, "InsufficientInstanceCapacity", "{refused:?}");
        let unsupported = ec2
            .run(&launch(
                &group,
                "cbx_0000000000a2",
                "m7a.8xlarge",
                Market::OnDemand,
            ))
            .await
            .expect_err("m7a.8xlarge is refused in any market");
        assert_eq!(unsupported.code, "Unsupported", "{unsupported:?}");
        // Both refusals are final: one request each.
        assert_eq!(proxy.count("RunInstances"), 2 + proxy_retries(&proxy));

        let on_demand = ec2
            .run(&launch(
                &group,
                "cbx_0000000000a3",
                "c7a.8xlarge",
                Market::OnDemand,
            ))
            .await
            .expect("c7a.8xlarge on-demand passes");
        let other = ec2
            .run(&launch(
                &group,
                "cbx_0000000000a4",
                "t3.small",
                Market::Spot,
            ))
            .await
            .expect("t3.small spot passes");
        assert_eq!(on_demand.instance_type, "c7a.8xlarge");
        assert_eq!(other.instance_type, "t3.small");

        // Only what passed reached moto.
        let live = ec2
            .instances(&[("tag:crabbox", &["true"])])
            .await
            .expect("DescribeInstances through the proxy");
        let mut leases: Vec<&str> = live
            .iter()
            .map(|i| i.tags.get("lease").map_or("", |v| v.as_str()))
            .collect();
        leases.sort_unstable();
        assert_eq!(leases, ["cbx_0000000000a3", "cbx_0000000000a4"]);

        // The log says what each RunInstances carried.
        let runs = proxy.requests("RunInstances");
        let last = runs.last().expect("logged");
        assert_eq!(last.status, 200);
        assert_eq!(last.params["InstanceType"], "t3.small");
        assert_eq!(last.params["InstanceMarketOptions.MarketType"], "spot");
        assert_eq!(last.params["ClientToken"], "cbx_0000000000a4");
        assert_eq!(last.params["TagSpecification.1.ResourceType"], "instance");
        let first = &runs[0];
        assert_eq!(first.status, 500);
        assert_eq!(first.params["InstanceType"], "c7a.8xlarge");
        assert!(
            runs.iter()
                .filter(|r| r.params["InstanceType"] == "c7a.8xlarge" && r.status == 200)
                .all(|r| !r.params.contains_key("InstanceMarketOptions.MarketType")),
            "{runs:#?}"
        );
        assert!(proxy.count("CreateSecurityGroup") == 1);
        assert!(proxy.count("DescribeInstances") >= 1);
    }

    /// Extra `RunInstances` requests the SDK made on its own (none: neither
    /// the 400 nor the 500 capacity refusal is retried).
    fn proxy_retries(proxy: &MotoProxy) -> usize {
        let c7a = proxy
            .requests("RunInstances")
            .iter()
            .filter(|r| r.params["InstanceType"] == "c7a.8xlarge")
            .count();
        let m7a = proxy
            .requests("RunInstances")
            .iter()
            .filter(|r| r.params["InstanceType"] == "m7a.8xlarge")
            .count();
        assert_eq!(m7a, 1, "a 400 refusal is not retried");
        // EC2 answers capacity refusals with a 500, which the SDK would
        // retry as transient; `Ec2`'s retry rule makes a capacity refusal of
        // RunInstances final, so the next type is tried at once.
        assert_eq!(c7a, 1, "a capacity refusal is final, not retried");
        c7a - 1
    }
}
