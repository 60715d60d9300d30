//! The default SSH ingress of an AWS member (`aws::ssh_cidr`) against a
//! local stand-in for checkip.amazonaws.com: the right answer, garbage, an
//! IPv6 address, an error status, and nobody listening — only the first
//! gives a range; every other one is an error asking for `aws.sshCIDRs`,
//! never `0.0.0.0/0`.

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use crabbox_core::provider::ProviderError;
use crabbox_providers::aws::ssh_cidr::public_ipv4_cidr;

use crate::fake_http::FakeServer;

async fn answering(status: StatusCode, body: &'static str) -> FakeServer {
    FakeServer::start(
        "checkip",
        Router::new().route("/", get(move || async move { (status, body) })),
    )
    .await
}

fn asks_for_the_setting(result: Result<String, ProviderError>, why: &str) {
    match result {
        Err(ProviderError::Config { message, hint }) => {
            assert!(message.contains(why), "{message}");
            assert!(hint.contains("sshCIDRs"), "{hint}");
        }
        other => panic!("expected a config error about {why}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_public_address_becomes_a_32() {
    let server = answering(StatusCode::OK, "203.0.113.7\n").await;
    assert_eq!(
        public_ipv4_cidr(&server.url).await.expect("an address"),
        "203.0.113.7/32"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_ipv6_and_errors_ask_for_ssh_cidrs() {
    let garbage = answering(StatusCode::OK, "<html>captive portal</html>").await;
    asks_for_the_setting(public_ipv4_cidr(&garbage.url).await, "not an IP address");
    let v6 = answering(StatusCode::OK, "2001:db8::7\n").await;
    asks_for_the_setting(public_ipv4_cidr(&v6.url).await, "IPv6");
    let failing = answering(StatusCode::SERVICE_UNAVAILABLE, "203.0.113.7").await;
    asks_for_the_setting(public_ipv4_cidr(&failing.url).await, "503");
}

#[tokio::test(flavor = "multi_thread")]
async fn nobody_listening_asks_for_ssh_cidrs() {
    let url = {
        let server = answering(StatusCode::OK, "203.0.113.7").await;
        server.url.clone()
    };
    asks_for_the_setting(public_ipv4_cidr(&url).await, &url);
}
