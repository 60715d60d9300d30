//! The `hetzner` provider against the fake Hetzner Cloud API
//! ([`crate::fake_hetzner`]) and, for SSH, the test `sshd`.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crabbox_core::labels::{self, Labels};
use crabbox_core::lease::{Endpoint, Lease, new_lease_id};
use crabbox_core::provider::ProviderName;
use crabbox_core::provider::{OutputSink, ProviderError, Stream};
use crabbox_core::retry::with_retries;
use crabbox_exec::session::ExecRequest;
use crabbox_providers::claimed_ports;
use crabbox_providers::hetzner::{HetznerProvider, key_name, server_name};
use crabbox_providers::{CreateRequest, Provider};
use crabbox_spec::desired::{DesiredMember, SyncSettings};
use crabbox_spec::member_labels;
use crabbox_spec::model::Class;
use crabbox_state::claims::ClaimStore;
use serde_json::{Value, json};

use crate::fake_hetzner::{self, FakeConfig, FakeHandle, FakeHetzner, TOKEN};
use crate::sshd::TestSshd;

const POND: &str = "pr-42";

/// A started fake with one planted server that carries no crabbox labels:
/// [`Fixture::check_foreign_untouched`] proves no call changed it.
struct Fixture {
    fake: FakeHetzner,
    state: tempfile::TempDir,
    foreign: u64,
}

impl Fixture {
    async fn new() -> Self {
        Self::with(FakeConfig {
            boot_delay: Duration::from_millis(100),
            ..FakeConfig::default()
        })
        .await
    }

    async fn with(config: FakeConfig) -> Self {
        let fake = fake_hetzner::start(config).await;
        let foreign = fake
            .handle
            .plant_server("prod-db", &[("team", "payments"), ("env", "prod")]);
        Self {
            fake,
            state: tempfile::tempdir().expect("state dir"),
            foreign,
        }
    }

    /// Stands for `<user config dir>/crabbox/testboxes`, where Crabbox
    /// keeps a lease's key.
    fn testboxes(&self) -> std::path::PathBuf {
        self.state.path().join("config/crabbox/testboxes")
    }

    fn handle(&self) -> &FakeHandle {
        &self.fake.handle
    }

    /// An API-only provider: create returns once the server runs.
    fn provider(&self) -> HetznerProvider {
        self.provider_with_token(TOKEN).with_ssh_bootstrap(false)
    }

    fn provider_with_token(&self, token: &str) -> HetznerProvider {
        HetznerProvider::new(&self.fake.base_url, token, self.state.path())
            .with_testboxes_dir(&self.testboxes())
            .with_boot_polling(Duration::from_millis(50), Duration::from_secs(10))
            .with_request_timeout(Duration::from_secs(10))
    }

    /// Requests with this method whose path starts with `prefix`.
    fn requests(&self, method: &str, prefix: &str) -> Vec<fake_hetzner::LoggedRequest> {
        self.handle()
            .requests()
            .into_iter()
            .filter(|r| r.method == method && r.path.starts_with(prefix))
            .collect()
    }

    fn check_foreign_untouched(&self) {
        let server = self
            .handle()
            .server(self.foreign)
            .expect("the unlabelled server still exists");
        assert_eq!(
            server["labels"],
            json!({"team": "payments", "env": "prod"}),
            "its labels are unchanged"
        );
        let path = format!("/v1/servers/{}", self.foreign);
        let writes: Vec<_> = self
            .handle()
            .requests()
            .into_iter()
            .filter(|r| r.path == path && r.method != "GET")
            .collect();
        assert!(writes.is_empty(), "no write ever named it: {writes:?}");
    }
}

fn member(slug: &str, block: Value) -> DesiredMember {
    DesiredMember {
        expose: vec![5432],
        sync: SyncSettings {
            enabled: true,
            exclude: vec![],
            max_bytes: 1 << 20,
        },
        ttl: Duration::from_secs(3600),
        idle_timeout: Duration::from_secs(600),
        provider_block: Some(block),
        ..DesiredMember::new(slug, ProviderName::Hetzner)
    }
}

fn request(m: DesiredMember) -> CreateRequest {
    let lease_id = new_lease_id();
    let labels = member_labels::for_create(POND, &lease_id, &m, labels::now_secs());
    CreateRequest {
        lease_id,
        pond: POND.to_owned(),
        member: m,
        labels,
    }
}

fn lease_labels(lease: &str, slug: &str, pond: &str) -> Vec<(String, String)> {
    vec![
        ("crabbox".into(), "true".into()),
        ("created_by".into(), "crabbox".into()),
        ("provider".into(), "hetzner".into()),
        ("lease".into(), lease.into()),
        ("slug".into(), slug.into()),
        ("pond".into(), pond.into()),
    ]
}

fn as_refs(labels: &[(String, String)]) -> Vec<(&str, &str)> {
    labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// Collects output lines.
#[derive(Default)]
struct Collect(Mutex<Vec<(Stream, String)>>);

impl Collect {
    fn stdout(&self) -> Vec<String> {
        self.0
            .lock()
            .expect("lock")
            .iter()
            .filter(|(s, _)| *s == Stream::Stdout)
            .map(|(_, l)| l.clone())
            .collect()
    }
}

impl OutputSink for Collect {
    fn line(&self, stream: Stream, line: &str) {
        self.0.lock().expect("lock").push((stream, line.to_owned()));
    }
}

fn exec_request(command: &str) -> ExecRequest {
    ExecRequest {
        command: command.to_owned(),
        env: BTreeMap::new(),
        timeout: Some(Duration::from_secs(30)),
    }
}

#[tokio::test]
async fn list_reads_every_page_and_fetches_the_rest_concurrently() {
    let fx = Fixture::new().await;
    let mut planted = Vec::new();
    for i in 0..120 {
        let lease = new_lease_id();
        let slug = format!("m{i}");
        fx.handle().plant_server(
            &format!("crabbox-{slug}"),
            &as_refs(&lease_labels(&lease, &slug, POND)),
        );
        planted.push(lease);
    }
    // Another pond's lease, a pond server without crabbox's marker, one without
    // a lease label, and one in the pond that is not a hetzner lease of ours.
    let other = new_lease_id();
    fx.handle()
        .plant_server("other-pond", &as_refs(&lease_labels(&other, "x", "pr-7")));
    fx.handle()
        .plant_server("unmarked", &[("pond", POND), ("lease", "cbx_aaaaaaaaaaaa")]);
    fx.handle()
        .plant_server("no-lease", &[("crabbox", "true"), ("pond", POND)]);
    let odd = new_lease_id();
    let mut odd_labels = lease_labels(&odd, "odd", POND);
    odd_labels[2].1 = "aws".into();
    fx.handle().plant_server("odd", &as_refs(&odd_labels));

    let provider = fx.provider();
    let latency = Duration::from_millis(50);
    fx.handle().set_latency(latency);
    fx.handle().clear_requests();
    let started = Instant::now();
    let leases = provider.list(POND).await.expect("list");
    let took = started.elapsed();

    assert_eq!(
        leases.len(),
        121,
        "120 of ours plus the pond-labelled foreign one"
    );
    let ours: Vec<&Lease> = leases.iter().filter(|l| l.is_ours(POND)).collect();
    assert_eq!(
        ours.len(),
        120,
        "discovery's is_ours filter drops the aws-labelled one"
    );
    let mut ids: Vec<&str> = ours.iter().map(|l| l.id.as_str()).collect();
    ids.sort_unstable();
    planted.sort();
    assert_eq!(ids, planted);
    let first = ours[0];
    assert_eq!(first.provider, ProviderName::Hetzner);
    assert!(first.cloud_id.parse::<u64>().is_ok(), "{first:?}");
    assert!(
        first
            .endpoint
            .host
            .as_deref()
            .is_some_and(|h| h.starts_with("203.0.113."))
    );
    // Crabbox's default SSH port (config.go:2977) for a server without a record.
    assert_eq!(first.endpoint.ssh_port, Some(2222));
    assert!(first.listed);

    let pages = fx.requests("GET", "/v1/servers");
    assert_eq!(pages.len(), 3, "{pages:?}");
    for page in &pages {
        assert_eq!(
            page.param("label_selector"),
            Some("crabbox=true,pond=pr-42")
        );
        assert_eq!(page.param("per_page"), Some("50"));
    }
    assert!(fx.handle().max_in_flight() >= 2, "pages 2 and 3 overlap");
    eprintln!("3 pages with {latency:?} per request: {took:?}");
    fx.check_foreign_untouched();
}

/// Writes the endpoint record a create writes for `lease` (the fields
/// a listing reads), with `port`.
fn write_endpoint_record(state: &Path, lease: &str, port: u16) {
    let dir = state.join("ssh/keys").join(lease);
    std::fs::create_dir_all(&dir).expect("key dir");
    let record = json!({
        "lease_id": lease, "user": "crabbox", "port": port,
        "key": dir.join("id_ed25519"), "pond": POND, "cloud": "hetzner",
    });
    std::fs::write(dir.join("endpoint.json"), record.to_string()).expect("record");
}

#[tokio::test]
async fn discovery_takes_ports_from_the_claims_and_reads_records_only_without_one() {
    let fx = Fixture::new().await;
    // a: claim and record; b: a claim only (a server Crabbox made);
    // c: a record only (its claim records no port); d: neither.
    let [a, b, c, d] = std::array::from_fn(|_| new_lease_id());
    for (i, lease) in [&a, &b, &c, &d].into_iter().enumerate() {
        let slug = format!("m{i}");
        fx.handle().plant_server(
            &format!("crabbox-{slug}"),
            &as_refs(&lease_labels(lease, &slug, POND)),
        );
    }
    write_endpoint_record(fx.state.path(), &a, 2201);
    write_endpoint_record(fx.state.path(), &c, 2203);
    let port_of = |leases: &[Lease], id: &str| {
        leases
            .iter()
            .find(|l| l.id == id)
            .and_then(|l| l.endpoint.ssh_port)
    };

    let (send, claimed) = claimed_ports::channel();
    let provider = fx.provider();
    let listing = provider.list_with_claimed_ports(POND, claimed);
    // Sent while the listing is under way, as discovery sends them.
    send.send([(a.clone(), 2301), (b.clone(), 2302)].into_iter().collect());
    let leases = listing.await.expect("list");
    assert_eq!(leases.len(), 4);
    assert_eq!(port_of(&leases, &a), Some(2301), "the claim's port");
    assert_eq!(port_of(&leases, &b), Some(2302), "the claim's port");
    assert_eq!(
        port_of(&leases, &c),
        Some(2203),
        "no port claimed: the record's"
    );
    assert_eq!(
        port_of(&leases, &d),
        Some(2222),
        "neither: Crabbox's default"
    );

    // Claims that could not be read say nothing: every record is read.
    let (send, claimed) = claimed_ports::channel();
    drop(send);
    let unread = fx
        .provider()
        .list_with_claimed_ports(POND, claimed)
        .await
        .expect("list");
    // Without claims (`crabbox list`, lookups): the records, as before.
    let listed = fx.provider().list(POND).await.expect("list");
    for leases in [&unread, &listed] {
        assert_eq!(port_of(leases, &a), Some(2201));
        assert_eq!(port_of(leases, &b), Some(2222));
        assert_eq!(port_of(leases, &c), Some(2203));
        assert_eq!(port_of(leases, &d), Some(2222));
    }

    // Discovery hands the pond's claims' ports over.
    let store = ClaimStore::local(fx.state.path());
    for (lease, slug, port) in [(&a, "m0", 2301), (&c, "m2", 0)] {
        store
            .write(&crabbox_state::claims::Claim {
                lease_id: lease.clone(),
                slug: slug.to_owned(),
                provider: "hetzner".to_owned(),
                pond: POND.to_owned(),
                ssh_port: port,
                ..crabbox_state::claims::Claim::default()
            })
            .await
            .expect("claim");
    }
    let registry =
        crabbox_providers::registry::Registry::with(vec![std::sync::Arc::new(fx.provider())]);
    let inventory = crabbox_apply::discover::discover(
        POND,
        &[ProviderName::Hetzner],
        &registry,
        fx.state.path(),
        &store,
    )
    .await;
    let discovered: Vec<Lease> = inventory.leases.iter().map(|l| Lease::clone(l)).collect();
    assert_eq!(port_of(&discovered, &a), Some(2301), "the claim's");
    assert_eq!(port_of(&discovered, &c), Some(2203), "the record's");
    fx.check_foreign_untouched();
}

#[tokio::test]
async fn create_puts_every_label_in_the_create_call_and_labels_the_key() {
    let fx = Fixture::new().await;
    let provider = fx.provider();
    let req = request(member("db", json!({})));
    let lease = provider.create(&req).await.expect("create");

    let keys = fx.requests("POST", "/v1/ssh_keys");
    assert_eq!(keys.len(), 1);
    let key_dir = fx.testboxes().join(&req.lease_id);
    let public = std::fs::read_to_string(key_dir.join("id_ed25519.pub")).expect("generated key");
    assert_eq!(keys[0].body["name"], json!(key_name(&req.lease_id)));
    assert_eq!(keys[0].body["public_key"], json!(public.trim()));
    assert_eq!(
        keys[0].body["labels"],
        json!({"crabbox": "true", "lease": req.lease_id, "pond": POND})
    );
    let mode = std::fs::metadata(&key_dir)
        .expect("key dir")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700);
    assert!(key_dir.join("id_ed25519").exists());
    let record_dir = fx.state.path().join("ssh/keys").join(&req.lease_id);
    assert!(record_dir.join("endpoint.json").exists());

    let creates = fx.requests("POST", "/v1/servers");
    assert_eq!(creates.len(), 1);
    let body = &creates[0].body;
    let mut expected: Labels = req.labels.clone();
    expected.insert("server_type".into(), "ccx33".into());
    // The key the server is created with (hetzner/backend.go:107).
    expected.insert(
        "provider_key".into(),
        crabbox_providers::hetzner::key_name(&req.lease_id).into(),
    );
    assert_eq!(
        body["labels"],
        json!(expected),
        "all labels, in the create call"
    );
    for key in [
        "crabbox",
        "created_by",
        "provider",
        "lease",
        "slug",
        "pond",
        "crabbox_exposed_ports",
        "keep",
        "state",
        "created_at",
        "expires_at",
        "ttl_secs",
        "idle_timeout_secs",
        "pond_spec",
    ] {
        assert!(
            body["labels"].get(key).is_some(),
            "label {key} missing: {body}"
        );
    }
    assert_eq!(body["name"], json!(server_name("db", &req.lease_id)));
    assert_eq!(body["server_type"], json!("ccx33"), "standard class first");
    assert_eq!(body["image"], json!("ubuntu-24.04"));
    assert_eq!(body["location"], json!("fsn1"));
    assert_eq!(body["ssh_keys"], json!([key_name(&req.lease_id)]));
    assert_eq!(body["start_after_create"], json!(true));
    assert_eq!(
        body["public_net"],
        json!({"enable_ipv4": true, "enable_ipv6": false})
    );
    assert!(
        fx.requests("PUT", "/v1/servers").is_empty(),
        "never a second tagging call"
    );

    assert_eq!(lease.id, req.lease_id);
    assert_eq!(lease.provider, ProviderName::Hetzner);
    assert!(lease.is_ours(POND));
    assert_eq!(lease.label("server_type"), Some("ccx33"));
    assert_eq!(
        lease.endpoint,
        Endpoint {
            host: Some("127.0.0.1".into()),
            // Crabbox's SSHPort (config.go:2977), which the bootstrap serves.
            ssh_port: Some(2222),
            url: None,
            shares: Vec::new(),
        }
    );
    let server = fx
        .handle()
        .server(lease.cloud_id.parse().expect("numeric id"))
        .expect("server exists");
    assert_eq!(server["status"], json!("running"), "create waited for it");
    assert!(
        fx.requests("GET", &format!("/v1/servers/{}", lease.cloud_id))
            .len()
            >= 2,
        "polled while it booted"
    );

    // The listing sees the same lease.
    let listed = provider.list(POND).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, lease.id);
    assert_eq!(listed[0].labels, lease.labels);
    fx.check_foreign_untouched();
}

#[tokio::test]
async fn block_settings_reach_the_create_call() {
    let fx = Fixture::new().await;
    let provider = fx.provider();
    let mut m = member(
        "api",
        json!({"location": "hel1", "image": "debian-12", "ssh_port": 2222}),
    );
    m.class = Some(Class::Tiny);
    let req = request(m);
    let lease = provider.create(&req).await.expect("create");
    let creates = fx.requests("POST", "/v1/servers");
    assert_eq!(creates[0].body["location"], json!("hel1"));
    assert_eq!(creates[0].body["image"], json!("debian-12"));
    assert_eq!(creates[0].body["server_type"], json!("ccx13"));
    assert_eq!(lease.endpoint.ssh_port, Some(2222));
    assert_eq!(lease.label("class"), Some("tiny"));
    // A later process finds the port in the endpoint record.
    let again = fx.provider().list(POND).await.expect("list");
    assert_eq!(again[0].endpoint.ssh_port, Some(2222));
}

#[tokio::test]
async fn capacity_errors_fall_back_to_the_next_type_of_the_class() {
    let fx = Fixture::new().await;
    fx.handle()
        .fail_server_type("ccx33", "resource_unavailable");
    fx.handle()
        .fail_server_type("cpx62", "resource_limit_exceeded");
    let provider = fx.provider();
    let req = request(member("db", json!({})));
    let lease = provider.create(&req).await.expect("create falls back");

    let creates = fx.requests("POST", "/v1/servers");
    let tried: Vec<(&Value, &Value, u16)> = creates
        .iter()
        .map(|r| {
            (
                &r.body["server_type"],
                &r.body["labels"]["server_type"],
                r.status,
            )
        })
        .collect();
    assert_eq!(
        tried,
        vec![
            (&json!("ccx33"), &json!("ccx33"), 412),
            (&json!("cpx62"), &json!("cpx62"), 403),
            (&json!("cx53"), &json!("cx53"), 201),
        ],
        "each attempt labels the type it asks for"
    );
    assert_eq!(lease.label("server_type"), Some("cx53"));
    assert_eq!(
        fx.requests("POST", "/v1/ssh_keys").len(),
        1,
        "one key for all attempts"
    );
    fx.check_foreign_untouched();
}

#[tokio::test]
async fn an_exact_type_never_falls_back_and_the_key_is_deleted() {
    let fx = Fixture::new().await;
    fx.handle()
        .fail_server_type("cpx62", "resource_unavailable");
    let provider = fx.provider();
    let mut m = member("db", json!({}));
    m.server_type = Some("cpx62".into());
    let req = request(m);
    let err = provider.create(&req).await.expect_err("no fallback");
    match &err {
        ProviderError::Failed(message) => {
            assert!(message.contains("resource_unavailable"), "{message}");
            assert!(message.contains("cpx62"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(fx.requests("POST", "/v1/servers").len(), 1);
    assert!(
        fx.handle().ssh_keys().is_empty(),
        "the uploaded key is deleted"
    );
    assert_eq!(fx.handle().servers().len(), 1, "only the foreign server");
    assert!(
        !fx.state
            .path()
            .join("ssh/keys")
            .join(&req.lease_id)
            .exists()
    );
    fx.check_foreign_untouched();
}

#[tokio::test]
async fn other_errors_stop_the_fallback() {
    let fx = Fixture::new().await;
    let provider = fx.provider();
    let mut req = request(member("db", json!({})));
    // Hetzner refuses label values with spaces (crabbox sanitizes its own).
    req.labels.insert("note".into(), "not a label value".into());
    let err = provider.create(&req).await.expect_err("invalid input");
    match &err {
        ProviderError::Failed(message) => {
            assert!(message.contains("invalid_input"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        fx.requests("POST", "/v1/servers").len(),
        1,
        "no other type is tried"
    );
    assert!(fx.handle().ssh_keys().is_empty());
}

#[tokio::test]
async fn all_capacity_failures_name_every_type_tried() {
    let fx = Fixture::new().await;
    for t in ["ccx43", "cpx62", "cx53"] {
        fx.handle().fail_server_type(t, "resource_unavailable");
    }
    let provider = fx.provider();
    let mut m = member("db", json!({}));
    m.class = Some(Class::Fast);
    let err = provider.create(&request(m)).await.expect_err("no capacity");
    let message = err.to_string();
    for t in ["ccx43", "cpx62", "cx53"] {
        assert!(message.contains(t), "{message}");
    }
    assert!(fx.handle().ssh_keys().is_empty());
}

#[tokio::test]
async fn rate_limits_and_unavailability_are_retried() {
    let fx = Fixture::new().await;
    let provider = fx.provider();

    // create, wrapped as the executor wraps it.
    fx.handle().fail_next_with_429(1, None);
    let req = request(member("db", json!({})));
    let lease = with_retries(|| provider.create(&req))
        .await
        .expect("create after a 429");
    assert!(lease.is_ours(POND));
    fx.handle().fail_next_with_503(1);
    let req2 = request(member("api", json!({})));
    let lease2 = with_retries(|| provider.create(&req2))
        .await
        .expect("create after a 503");
    assert!(lease2.is_ours(POND));
    let statuses: Vec<u16> = fx.handle().requests().iter().map(|r| r.status).collect();
    assert!(
        statuses.contains(&429) && statuses.contains(&503),
        "{statuses:?}"
    );
    assert_eq!(
        fx.handle().servers().len(),
        3,
        "one server each, plus the foreign one"
    );
    assert_eq!(
        fx.handle().ssh_keys().len(),
        2,
        "one key each, none left over"
    );

    // list retries by itself.
    fx.handle().fail_next_with_503(2);
    let leases = provider.list(POND).await.expect("list after 503s");
    assert_eq!(leases.len(), 2);
    fx.handle().fail_next_with_429(1, Some(1));
    let leases = provider.list(POND).await.expect("list after a 429");
    assert_eq!(leases.len(), 2);
    fx.check_foreign_untouched();
}

#[tokio::test]
async fn a_server_whose_create_answer_was_lost_is_adopted_not_duplicated() {
    let fx = Fixture::new().await;
    let provider = fx.provider();
    fx.handle().lose_next_create_answers(1);
    let req = request(member("db", json!({})));
    let lease = with_retries(|| provider.create(&req))
        .await
        .expect("create after a lost answer");
    let statuses: Vec<u16> = fx
        .requests("POST", "/v1/servers")
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, vec![503, 409], "the retry finds the name taken");
    assert_eq!(
        fx.handle().servers().len(),
        2,
        "one server, plus the foreign one"
    );
    assert_eq!(fx.handle().ssh_keys().len(), 1, "the key was reused");
    assert!(lease.is_ours(POND));
    fx.check_foreign_untouched();
}

#[tokio::test]
async fn a_bad_token_is_a_credentials_error_naming_hcloud_token() {
    let fx = Fixture::new().await;
    let provider = fx.provider_with_token("wrong").with_ssh_bootstrap(false);
    for err in [
        provider.list(POND).await.expect_err("401"),
        provider
            .create(&request(member("db", json!({}))))
            .await
            .expect_err("401"),
    ] {
        match err {
            ProviderError::Credentials { message, hint } => {
                assert!(hint.contains("HCLOUD_TOKEN"), "{hint}");
                assert!(!message.contains("wrong") && !hint.contains("wrong"));
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(
        !format!("{provider:?}").contains("wrong"),
        "the token is redacted"
    );
    assert!(fx.handle().requests().iter().all(|r| r.status == 401));
}

#[tokio::test]
async fn release_deletes_server_and_key_and_is_not_found_the_second_time() {
    let fx = Fixture::new().await;
    let provider = fx.provider();
    let req = request(member("db", json!({})));
    let lease = provider.create(&req).await.expect("create");
    // A key of someone else with a similar name is left alone.
    fx.handle().plant_ssh_key(
        &format!("{}-copy", key_name(&req.lease_id)),
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeFakeFakeFakeFakeFakeFakeFakeFakeFakeFake x",
        &[],
    );
    assert_eq!(fx.handle().ssh_keys().len(), 2);

    fx.handle().clear_requests();
    fx.handle().set_latency(Duration::from_millis(100));
    provider.release(&lease).await.expect("release");
    fx.handle().set_latency(Duration::ZERO);
    // Issue 15: the ownership read and the key listing go together, then
    // the server's and the key's deletions: two round trips — no lookup
    // of the key by name after the listing found it.
    let key_reads = fx.requests("GET", "/v1/ssh_keys");
    assert_eq!(key_reads.len(), 1, "one listing by label: {key_reads:?}");
    assert!(key_reads[0].param("label_selector").is_some());
    let order: Vec<(String, String)> = fx
        .handle()
        .requests()
        .into_iter()
        .map(|r| (r.method, r.path))
        .collect();
    let at = |method: &str, prefix: &str| {
        order
            .iter()
            .position(|(m, p)| m == method && p.starts_with(prefix))
            .unwrap_or_else(|| panic!("{method} {prefix} in {order:?}"))
    };
    assert!(
        at("GET", "/v1/ssh_keys") < at("DELETE", "/v1/servers/"),
        "the keys are listed before the server's deletion: {order:?}"
    );
    assert_eq!(
        fx.handle().servers().len(),
        1,
        "only the foreign server is left"
    );
    let keys = fx.handle().ssh_keys();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_ne!(keys[0]["name"], json!(key_name(&req.lease_id)));
    assert!(
        !fx.state
            .path()
            .join("ssh/keys")
            .join(&req.lease_id)
            .exists()
    );
    assert_eq!(
        fx.requests("DELETE", &format!("/v1/servers/{}", lease.cloud_id))
            .len(),
        1
    );
    assert_eq!(fx.requests("DELETE", "/v1/ssh_keys/").len(), 1);

    let again = provider.release(&lease).await;
    assert!(
        matches!(again, Err(ProviderError::NotFound(_))),
        "{again:?}"
    );
    fx.check_foreign_untouched();
}

#[tokio::test]
async fn relabel_replaces_labels_with_one_put() {
    let fx = Fixture::new().await;
    let provider = fx.provider();
    let lease = provider
        .create(&request(member("db", json!({}))))
        .await
        .expect("create");
    let mut labels = lease.labels.clone();
    labels.insert("state".into(), "ready".into());
    labels.insert("pond_setup".into(), "abcdef012345".into());
    provider.relabel(&lease, &labels).await.expect("relabel");

    let puts = fx.requests("PUT", &format!("/v1/servers/{}", lease.cloud_id));
    assert_eq!(puts.len(), 1);
    assert_eq!(puts[0].body, json!({ "labels": labels }));
    let server = fx
        .handle()
        .server(lease.cloud_id.parse().expect("id"))
        .expect("server");
    assert_eq!(server["labels"], json!(labels));

    // Labels that would orphan the server are refused.
    let mut bad = labels.clone();
    bad.remove("crabbox");
    assert!(matches!(
        provider.relabel(&lease, &bad).await,
        Err(ProviderError::Failed(_))
    ));
    assert_eq!(fx.requests("PUT", "/v1/servers").len(), 1);
    fx.check_foreign_untouched();
}

#[tokio::test]
async fn servers_without_this_leases_labels_are_never_changed_or_deleted() {
    let fx = Fixture::new().await;
    let provider = fx.provider();
    let other_pond = new_lease_id();
    let other_id = fx
        .handle()
        .plant_server("other", &as_refs(&lease_labels(&other_pond, "db", "pr-7")));
    for (cloud_id, id) in [
        (fx.foreign, new_lease_id()),
        (other_id, other_pond.clone()),
        (other_id, new_lease_id()),
    ] {
        let lease = Lease {
            id: id.clone(),
            provider: ProviderName::Hetzner,
            cloud_id: cloud_id.to_string(),
            labels: lease_labels(&id, "db", POND)
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            endpoint: Endpoint::default(),
            listed: true,
            claimed: false,
        };
        let released = provider.release(&lease).await;
        assert!(
            matches!(released, Err(ProviderError::Failed(_))),
            "{released:?}"
        );
        let relabelled = provider.relabel(&lease, &lease.labels).await;
        assert!(
            matches!(relabelled, Err(ProviderError::Failed(_))),
            "{relabelled:?}"
        );
    }
    assert!(fx.requests("DELETE", "/v1/").is_empty());
    assert!(fx.requests("PUT", "/v1/").is_empty());
    assert_eq!(fx.handle().servers().len(), 2);
    fx.check_foreign_untouched();
}

/// A provider whose servers are the test sshd: the fake appends the
/// uploaded keys to the sshd's `authorized_keys`.
async fn ssh_fixture() -> (Fixture, TestSshd, tempfile::TempDir) {
    let sshd = TestSshd::start();
    let fx = Fixture::with(FakeConfig {
        authorized_keys: Some(sshd.authorized_keys.clone()),
        boot_delay: Duration::from_millis(100),
        ..FakeConfig::default()
    })
    .await;
    let remote = tempfile::tempdir().expect("remote dir");
    (fx, sshd, remote)
}

fn ssh_provider(fx: &Fixture, remote: &Path) -> HetznerProvider {
    fx.provider_with_token(TOKEN)
        .with_ssh_timeout(Duration::from_secs(20))
        .with_work_base(remote.join("work").to_str().expect("utf-8"))
}

#[tokio::test]
async fn the_lease_is_reachable_over_ssh_with_its_generated_key() {
    let (fx, sshd, remote) = ssh_fixture().await;
    let provider = ssh_provider(&fx, remote.path());
    let req = request(member(
        "db",
        json!({"ssh_user": sshd.user, "ssh_port": sshd.port}),
    ));
    let lease = provider.create(&req).await.expect("create over ssh");
    assert!(
        remote
            .path()
            .join("work")
            .join(&req.lease_id)
            .join("workspace")
            .is_dir(),
        "create prepared the work root"
    );
    let sink = Arc::new(Collect::default());
    let code = provider
        .session(&lease)
        .exec(&exec_request("echo hi"), sink.clone())
        .await
        .expect("exec");
    assert_eq!(code, 0);
    assert_eq!(sink.stdout(), vec!["hi".to_owned()]);

    // Another process (a fresh provider) rebuilds the target from the listing
    // and the endpoint record.
    let later = ssh_provider(&fx, remote.path());
    let listed = later.list(POND).await.expect("list");
    assert_eq!(listed.len(), 1);
    let sink = Arc::new(Collect::default());
    let code = later
        .session(&listed[0])
        .exec(&exec_request("echo \"$CRABBOX_LEASE_ID\""), sink.clone())
        .await
        .expect("exec after restart");
    assert_eq!(code, 0);
    assert_eq!(sink.stdout(), vec![req.lease_id.clone()]);

    later.release(&listed[0]).await.expect("release");
    assert!(fx.handle().ssh_keys().is_empty());
    fx.check_foreign_untouched();
    drop(sshd);
}

/// Issue 15: a new server costs one SSH round trip before its setup — the
/// readiness check *is* the creation of the work root — on one login that
/// stays open: the first command after the create reuses it.
#[tokio::test]
async fn a_new_server_is_ready_and_prepared_in_one_ssh_round_trip() {
    let sshd = TestSshd::start_logging_sessions();
    let fx = Fixture::with(FakeConfig {
        authorized_keys: Some(sshd.authorized_keys.clone()),
        boot_delay: Duration::from_millis(100),
        ..FakeConfig::default()
    })
    .await;
    let remote = tempfile::tempdir().expect("remote dir");
    let provider = ssh_provider(&fx, remote.path());
    let req = request(member(
        "db",
        json!({"ssh_user": sshd.user, "ssh_port": sshd.port}),
    ));
    let lease = provider.create(&req).await.expect("create over ssh");
    let root = remote.path().join("work").join(&req.lease_id);
    for dir in ["workspace", "logs", "pids"] {
        assert!(root.join(dir).is_dir(), "create made {dir}/");
    }
    assert_eq!(
        (sshd.logins(), sshd.sessions()),
        (1, 1),
        "one login, one command before setup"
    );

    let sink = Arc::new(Collect::default());
    let code = provider
        .session(&lease)
        .exec(&exec_request("echo hi"), sink.clone())
        .await
        .expect("exec");
    assert_eq!((code, sink.stdout()), (0, vec!["hi".to_owned()]));
    assert_eq!(
        (sshd.logins(), sshd.sessions()),
        (1, 2),
        "setup's command rides the same login"
    );
    provider.release(&lease).await.expect("release");
}

#[tokio::test]
async fn a_members_own_key_is_uploaded_once_and_shared() {
    let (fx, sshd, remote) = ssh_fixture().await;
    let provider = ssh_provider(&fx, remote.path());
    let block = json!({
        "ssh_user": sshd.user,
        "ssh_port": sshd.port,
        "ssh_key": sshd.key.to_str().expect("utf-8"),
    });
    let first = request(member("db", block.clone()));
    let second = request(member("api", block));
    let a = provider.create(&first).await.expect("first create");
    let b = provider
        .create(&second)
        .await
        .expect("second create reuses the key");

    let public = std::fs::read_to_string(sshd.key.with_extension("pub")).expect("pub");
    let keys = fx.handle().ssh_keys();
    assert_eq!(keys.len(), 1, "Hetzner keeps fingerprints unique: {keys:?}");
    assert_eq!(keys[0]["public_key"], json!(public.trim()));
    let creates = fx.requests("POST", "/v1/servers");
    assert_eq!(
        creates[1].body["ssh_keys"],
        json!([key_name(&first.lease_id)])
    );
    assert!(
        !fx.testboxes().join(&first.lease_id).exists(),
        "no key is generated when the member has one"
    );

    for lease in [&a, &b] {
        let sink = Arc::new(Collect::default());
        let code = provider
            .session(lease)
            .exec(&exec_request("echo hi"), sink.clone())
            .await
            .expect("exec");
        assert_eq!((code, sink.stdout()), (0, vec!["hi".to_owned()]));
    }
    provider.release(&a).await.expect("release a");
    provider.release(&b).await.expect("release b");
    assert!(fx.handle().ssh_keys().is_empty());
    fx.check_foreign_untouched();
}

/// An account with 500 other keys, 25 a page as Hetzner lists them.
fn plant_500_keys(fx: &Fixture) {
    for i in 0..500 {
        // Any base64 blob has a fingerprint; each of these its own.
        fx.handle().plant_ssh_key(
            &format!("someone-{i}"),
            &format!("ssh-ed25519 AAAA{i:08} someone"),
            &[],
        );
    }
}

/// A key pair made by `ssh-keygen`; returns the private key's path and
/// its MD5 fingerprint as Hetzner writes it.
fn user_key_pair(dir: &Path, name: &str) -> (std::path::PathBuf, String) {
    let private = dir.join(name);
    let made = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "user@laptop", "-f"])
        .arg(&private)
        .status()
        .expect("ssh-keygen runs (openssh-client)");
    assert!(made.success());
    let listed = std::process::Command::new("ssh-keygen")
        .args(["-l", "-E", "md5", "-f"])
        .arg(&private)
        .output()
        .expect("ssh-keygen -l");
    let text = String::from_utf8_lossy(&listed.stdout).into_owned();
    let fp = text
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.strip_prefix("MD5:"))
        .expect("an MD5 fingerprint")
        .to_owned();
    (private, fp)
}

/// Issue 15: fifty members created at once with the user's own key, already
/// uploaded to an account of 500 keys, make one key lookup between them —
/// by fingerprint — and never upload it or walk the key pages.
#[tokio::test]
async fn members_sharing_the_users_uploaded_key_look_it_up_once_by_fingerprint() {
    let fx = Fixture::new().await;
    plant_500_keys(&fx);
    let (private, fp) = user_key_pair(fx.state.path(), "id_user");
    let public = std::fs::read_to_string(private.with_extension("pub")).expect("pub");
    fx.handle().plant_ssh_key("laptop", &public, &[]);
    fx.handle().clear_requests();

    let provider = fx.provider();
    let block = json!({ "ssh_key": private.to_str().expect("utf-8") });
    let requests: Vec<CreateRequest> = (0..50)
        .map(|i| request(member(&format!("m{i}"), block.clone())))
        .collect();
    let created = futures_util::future::join_all(requests.iter().map(|r| provider.create(r))).await;
    for lease in &created {
        lease.as_ref().expect("create");
    }

    let lookups = fx.requests("GET", "/v1/ssh_keys");
    assert_eq!(lookups.len(), 1, "one lookup for 50 members: {lookups:?}");
    assert_eq!(lookups[0].param("fingerprint"), Some(fp.as_str()));
    assert!(
        fx.requests("POST", "/v1/ssh_keys").is_empty(),
        "an uploaded key is not uploaded again"
    );
    let creates = fx.requests("POST", "/v1/servers");
    assert_eq!(creates.len(), 50);
    for create in &creates {
        assert_eq!(create.body["ssh_keys"], json!(["laptop"]));
    }

    // A later process looks it up again, once.
    fx.handle().clear_requests();
    let later = fx.provider();
    let more: Vec<CreateRequest> = (0..3)
        .map(|i| request(member(&format!("n{i}"), block.clone())))
        .collect();
    for r in &more {
        later.create(r).await.expect("create");
    }
    assert_eq!(fx.requests("GET", "/v1/ssh_keys").len(), 1);
}

/// A user's key the account lacks is uploaded once for all the members that
/// want it; its release (with the lease it was uploaded for) makes the next
/// create look it up and upload it afresh.
#[tokio::test]
async fn a_missing_user_key_is_uploaded_once_and_again_after_its_release() {
    let fx = Fixture::new().await;
    plant_500_keys(&fx);
    let (private, fp) = user_key_pair(fx.state.path(), "id_user");
    fx.handle().clear_requests();
    let provider = fx.provider();
    let block = json!({ "ssh_key": private.to_str().expect("utf-8") });
    let requests: Vec<CreateRequest> = (0..20)
        .map(|i| request(member(&format!("m{i}"), block.clone())))
        .collect();
    let created: Vec<Lease> =
        futures_util::future::join_all(requests.iter().map(|r| provider.create(r)))
            .await
            .into_iter()
            .map(|r| r.expect("create"))
            .collect();
    let lookups = fx.requests("GET", "/v1/ssh_keys");
    assert_eq!(lookups.len(), 1, "{lookups:?}");
    assert_eq!(lookups[0].param("fingerprint"), Some(fp.as_str()));
    let uploads = fx.requests("POST", "/v1/ssh_keys");
    assert_eq!(uploads.len(), 1, "one upload for 20 members");
    let uploaded_for = uploads[0].body["labels"]["lease"]
        .as_str()
        .expect("lease label")
        .to_owned();

    // Releasing the lease the key was uploaded for deletes the key.
    let owner = created
        .iter()
        .find(|l| l.id == uploaded_for)
        .expect("the uploading lease");
    provider.release(owner).await.expect("release");
    assert!(
        !fx.handle()
            .ssh_keys()
            .iter()
            .any(|k| k["fingerprint"] == json!(fp)),
        "the user's key went with its lease"
    );
    fx.handle().clear_requests();
    let again = request(member("again", block.clone()));
    provider
        .create(&again)
        .await
        .expect("create after the release");
    assert_eq!(fx.requests("GET", "/v1/ssh_keys").len(), 1);
    assert_eq!(
        fx.requests("POST", "/v1/ssh_keys").len(),
        1,
        "uploaded afresh"
    );
}

/// A `409` on upload because the same public key is in the account under
/// another name (another process uploaded it meanwhile) is resolved by one
/// lookup by fingerprint, not a walk of every key page.
#[tokio::test]
async fn an_upload_conflict_on_the_fingerprint_is_one_lookup_not_a_walk() {
    let fx = Fixture::new().await;
    plant_500_keys(&fx);
    let req = request(member("db", json!({})));
    // The lease's key as an earlier attempt left it, uploaded meanwhile by
    // another process under another name.
    let dir = fx.testboxes().join(&req.lease_id);
    std::fs::create_dir_all(&dir).expect("testbox dir");
    let (private, fp) = user_key_pair(&dir, "id_ed25519");
    let public = std::fs::read_to_string(private.with_extension("pub")).expect("pub");
    fx.handle()
        .plant_ssh_key("uploaded-elsewhere", &public, &[]);
    fx.handle().clear_requests();

    fx.provider().create(&req).await.expect("create");
    let lookups = fx.requests("GET", "/v1/ssh_keys");
    assert!(
        lookups.iter().all(|r| r.param("page").is_none()),
        "no page walk: {lookups:?}"
    );
    assert_eq!(
        lookups
            .iter()
            .filter(|r| r.param("fingerprint") == Some(fp.as_str()))
            .count(),
        1
    );
    assert!(
        lookups.len() <= 2,
        "by name, then by fingerprint: {lookups:?}"
    );
    let creates = fx.requests("POST", "/v1/servers");
    assert_eq!(creates[0].body["ssh_keys"], json!(["uploaded-elsewhere"]));
}

/// Discovery of a 500-server pond (10 pages of 50, 50 ms per request): the
/// first page, then the other nine at once. The wall time is printed for the
/// record; the test asserts the structure that makes it fast.
#[tokio::test]
async fn discovery_of_500_servers_fetches_nine_pages_at_once() {
    let fx = Fixture::new().await;
    for i in 0..500 {
        let lease = new_lease_id();
        fx.handle().plant_server(
            &format!("crabbox-m{i}"),
            &as_refs(&lease_labels(&lease, &format!("m{i}"), POND)),
        );
    }
    let latency = Duration::from_millis(50);
    fx.handle().set_latency(latency);
    fx.handle().clear_requests();
    let registry =
        crabbox_providers::registry::Registry::with(vec![std::sync::Arc::new(fx.provider())]);
    fx.handle().set_latency(Duration::ZERO);
    let t0 = Instant::now();
    let _ = crabbox_apply::discover::discover(
        POND,
        &[ProviderName::Hetzner],
        &registry,
        fx.state.path(),
        &ClaimStore::local(fx.state.path()),
    )
    .await;
    eprintln!(
        "discovery of 500 servers without latency took {:?}",
        t0.elapsed()
    );
    fx.handle().set_latency(latency);
    fx.handle().clear_requests();
    let started = Instant::now();
    let inventory = crabbox_apply::discover::discover(
        POND,
        &[ProviderName::Hetzner],
        &registry,
        fx.state.path(),
        &ClaimStore::local(fx.state.path()),
    )
    .await;
    let took = started.elapsed();
    eprintln!(
        "discovery of 500 servers with {latency:?} per request took {took:?} ({:.2} latencies)",
        took.as_secs_f64() / latency.as_secs_f64()
    );
    assert_eq!(inventory.leases.len(), 500);
    assert_eq!(
        fx.requests("GET", "/v1/servers").len(),
        10,
        "one request per page"
    );
    assert_eq!(
        fx.handle().max_in_flight(),
        9.min(crabbox_providers::hetzner::PAGE_FETCHES),
        "pages 2..10 fetched concurrently, never more than the bound at once"
    );
}

#[tokio::test]
async fn a_key_upload_answered_503_is_retried_within_create() {
    let fx = Fixture::new().await;
    let provider = fx.provider();
    // The create's first request is the key's upload.
    fx.handle().fail_next_with_503(1);
    let lease = provider
        .create(&request(member("db", json!({}))))
        .await
        .expect("the upload is retried and the create succeeds");
    let uploads: Vec<u16> = fx
        .requests("POST", "/v1/ssh_keys")
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(uploads, [503, 201]);
    assert_eq!(fx.requests("POST", "/v1/servers").len(), 1);
    provider.release(&lease).await.expect("release");
}

#[tokio::test]
async fn a_key_deletion_that_stays_unavailable_is_named() {
    let fx = Fixture::new().await;
    let provider = fx.provider();
    let req = request(member("db", json!({})));
    let lease = provider.create(&req).await.expect("create");
    fx.handle().set_route_down("DELETE", "/v1/ssh_keys", true);
    let err = provider
        .release(&lease)
        .await
        .expect_err("the key could not be deleted");
    let message = err.to_string();
    assert!(message.contains(&key_name(&req.lease_id)), "{message}");
    assert!(
        fx.requests("DELETE", "/v1/ssh_keys").len() > 1,
        "the deletion was retried"
    );
    // The next apply's sweep deletes it once the API answers again.
    fx.handle().set_route_down("DELETE", "/v1/ssh_keys", false);
    let removed = provider.sweep(POND).await.expect("sweep");
    assert!(
        removed.iter().any(|r| r.contains(&key_name(&req.lease_id))),
        "{removed:?}"
    );
    assert!(fx.handle().ssh_keys().is_empty());
}

/// Deletes a server behind the provider's back, as a process killed between
/// a release's two deletions (or before a create's server call) leaves it.
async fn delete_server_only(fx: &Fixture, id: &str) {
    let status = reqwest::Client::new()
        .delete(format!("{}/servers/{id}", fx.fake.base_url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("delete")
        .status();
    assert!(status.is_success(), "{status}");
}

#[tokio::test]
async fn sweep_deletes_keys_and_key_dirs_of_leases_without_a_server_and_nothing_else() {
    let fx = Fixture::new().await;
    let provider = fx.provider();
    let keys_dir = fx.state.path().join("ssh/keys");
    // A lease that exists.
    let live = request(member("db", json!({})));
    provider.create(&live).await.expect("create");
    // A lease whose server is gone: its key and key directory are left.
    let orphan = request(member("app", json!({})));
    let orphan_lease = provider.create(&orphan).await.expect("create");
    delete_server_only(&fx, &orphan_lease.cloud_id).await;
    // The same in another pond: not this pond's to sweep.
    let mut elsewhere = request(member("app", json!({})));
    elsewhere.pond = "other-pond".to_owned();
    elsewhere
        .labels
        .insert(labels::POND.into(), "other-pond".into());
    let elsewhere_lease = provider.create(&elsewhere).await.expect("create");
    delete_server_only(&fx, &elsewhere_lease.cloud_id).await;
    // Keys crabbox did not make for this pond.
    let foreign_key = fx.handle().plant_ssh_key(
        &key_name("cbx_00000000f00d"),
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeFakeFakeFakeFakeFakeFakeFakeFakeFakeFake x",
        &[("lease", "cbx_00000000f00d"), ("pond", POND)],
    );
    // A removal cut short after its rename.
    std::fs::create_dir_all(keys_dir.join(".released-cbx_00000000beef")).expect("dir");

    let removed = provider.sweep(POND).await.expect("sweep");
    assert_eq!(removed.len(), 3, "{removed:#?}");
    assert!(
        removed[0].contains(&key_name(&orphan.lease_id)),
        "{removed:?}"
    );
    let mut keys: Vec<String> = fx
        .handle()
        .ssh_keys()
        .iter()
        .map(|k| k["name"].as_str().expect("name").to_owned())
        .collect();
    keys.sort();
    let mut expected = vec![
        key_name(&live.lease_id),
        key_name(&elsewhere.lease_id),
        key_name("cbx_00000000f00d"),
    ];
    expected.sort();
    assert_eq!(keys, expected);
    assert!(
        fx.handle()
            .ssh_keys()
            .iter()
            .any(|k| k["id"] == foreign_key)
    );
    let mut dirs: Vec<String> = std::fs::read_dir(&keys_dir)
        .expect("keys dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let mut expected = vec![live.lease_id.clone(), elsewhere.lease_id.clone()];
    expected.sort();
    assert_eq!(dirs, expected);
    assert!(provider.sweep(POND).await.expect("sweep").is_empty());
    fx.check_foreign_untouched();
}

#[tokio::test]
async fn a_create_killed_before_its_record_leaves_nothing_the_sweep_cannot_place() {
    let fx = Fixture::new().await;
    let provider = fx.provider();
    let keys_dir = fx.state.path().join("ssh/keys");
    // A created lease's directory appears whole: no staging directory stays.
    let live = request(member("db", json!({})));
    provider.create(&live).await.expect("create");
    // Creates killed before their record was written: empty staging
    // directories, named after their pond.
    let ours = format!(".creating-cbx_00000000beef.{POND}");
    let theirs = ".creating-cbx_00000000cafe.other-pond";
    for dir in [ours.as_str(), theirs] {
        std::fs::create_dir_all(keys_dir.join(dir)).expect("dir");
    }

    let removed = provider.sweep(POND).await.expect("sweep");
    assert_eq!(removed.len(), 1, "{removed:#?}");
    assert!(removed[0].contains(&ours), "{removed:?}");
    let mut dirs: Vec<String> = std::fs::read_dir(&keys_dir)
        .expect("keys dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    assert_eq!(dirs, [theirs.to_owned(), live.lease_id.clone()]);
}

#[tokio::test]
async fn setup_on_a_lease_whose_work_root_was_never_prepared_runs_after_stop_background() {
    let (fx, sshd, remote) = ssh_fixture().await;
    let provider = ssh_provider(&fx, remote.path());
    let req = request(member(
        "db",
        json!({"ssh_user": sshd.user, "ssh_port": sshd.port}),
    ));
    let lease = provider.create(&req).await.expect("create over ssh");
    // As when the creating process was killed before it prepared the work root.
    let work_root = remote.path().join("work").join(&req.lease_id);
    std::fs::remove_dir_all(&work_root).expect("remove the work root");
    let later = ssh_provider(&fx, remote.path());
    let listed = later.list(POND).await.expect("list");
    // What a re-run setup does first.
    later
        .session(&listed[0])
        .stop_background()
        .await
        .expect("stop");
    let sink = Arc::new(Collect::default());
    let code = later
        .session(&listed[0])
        .exec(&exec_request("pwd"), sink.clone())
        .await
        .expect("exec");
    assert_eq!(code, 0, "not 127: the work root exists again");
    assert_eq!(
        sink.stdout(),
        vec![work_root.join("workspace").display().to_string()]
    );
    later.release(&lease).await.expect("release");
    drop(sshd);
}
