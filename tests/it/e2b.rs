//! The `e2b` provider against the fake E2B ([`crate::fake_e2b`]), and a
//! pond of `daytona`, `e2b` and `local` members end to end.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use assert_cmd::Command;
use crabbox_core::labels;
use crabbox_core::lease::Lease;
use crabbox_core::provider::{OutputSink, ProviderError, ProviderName, Stream};
use crabbox_exec::session::ExecRequest;
use crabbox_providers::e2b::{E2bProvider, EnvSettings};
use crabbox_providers::{CreateRequest, Provider};
use crabbox_spec::desired::{DesiredMember, SyncSettings};
use crabbox_spec::member_labels;
use crabbox_state::claims::ClaimStore;
use serde_json::{Value, json};

use crate::fake_e2b::{self, API_KEY, FakeE2b};

const POND: &str = "eb-pond";

struct Fixture {
    fake: FakeE2b,
    state: tempfile::TempDir,
    work: tempfile::TempDir,
}

impl Fixture {
    async fn new() -> Self {
        Self {
            fake: fake_e2b::start().await,
            state: tempfile::tempdir().expect("state"),
            work: tempfile::tempdir().expect("work"),
        }
    }

    fn provider(&self) -> E2bProvider {
        E2bProvider::new(
            API_KEY,
            EnvSettings {
                api_url: Some(self.fake.api_url.clone()),
                domain: Some(self.fake.domain.clone()),
                ..EnvSettings::default()
            },
        )
        .with_claims(ClaimStore::local(self.state.path()))
    }

    fn workdir(&self, slug: &str) -> String {
        self.work.path().join(slug).display().to_string()
    }

    fn request(&self, slug: &str, ttl: Duration) -> CreateRequest {
        let m = DesiredMember {
            sync: SyncSettings {
                enabled: true,
                exclude: vec![],
                max_bytes: 1 << 20,
            },
            expose: vec![8080],
            ttl,
            idle_timeout: Duration::from_secs(600),
            provider_block: Some(json!({ "template": "base", "workdir": self.workdir(slug) })),
            ..DesiredMember::new(slug, ProviderName::E2b)
        };
        let lease_id = crabbox_core::lease::new_lease_id();
        let labels = member_labels::for_create(POND, &lease_id, &m, labels::now_secs());
        CreateRequest {
            lease_id,
            pond: POND.to_owned(),
            member: m,
            labels,
        }
    }
}

#[derive(Default)]
struct Collect(Mutex<Vec<(Stream, String)>>);

impl OutputSink for Collect {
    fn line(&self, stream: Stream, line: &str) {
        self.0.lock().expect("lock").push((stream, line.to_owned()));
    }
}

async fn run(
    provider: &E2bProvider,
    lease: &Lease,
    command: &str,
) -> Result<(i32, Vec<(Stream, String)>), ProviderError> {
    let sink = Arc::new(Collect::default());
    let code = provider
        .session(lease)
        .exec(
            &ExecRequest {
                command: command.to_owned(),
                env: BTreeMap::from([("GREETING".to_owned(), "hi there".to_owned())]),
                timeout: Some(Duration::from_secs(30)),
            },
            sink.clone(),
        )
        .await?;
    let lines = sink.0.lock().expect("lock").clone();
    Ok((code, lines))
}

#[tokio::test]
async fn create_puts_labels_in_metadata_runs_commands_over_connect_and_uploads() {
    let fx = Fixture::new().await;
    let provider = fx.provider();
    let request = fx.request("box", Duration::from_secs(7200));
    let lease = provider.create(&request).await.expect("create");

    let create = fx
        .fake
        .handle
        .requests()
        .into_iter()
        .find(|r| r.method == "POST" && r.path == "/sandboxes")
        .expect("a create call");
    assert_eq!(create.header("x-api-key"), Some(API_KEY));
    assert_eq!(create.body["templateID"], "base");
    assert_eq!(
        create.body["timeout"], 3600,
        "the ttl, capped at E2B's hour"
    );
    assert_eq!(create.body["secure"], true);
    for (k, v) in &request.labels {
        assert_eq!(
            create.body["metadata"][k.as_str()],
            json!(v),
            "metadata {k}"
        );
    }
    assert_eq!(create.body["metadata"]["workdir"], json!(fx.workdir("box")));
    assert_eq!(
        fx.fake.handle.metadata(&lease.cloud_id).expect("sandbox")["lease"],
        lease.id
    );

    let (code, lines) = run(
        &provider,
        &lease,
        "pwd; echo \"$GREETING\"; echo oops >&2; exit 4",
    )
    .await
    .expect("exec");
    assert_eq!(code, 4);
    // Each stream in order (two pipes have no order between them).
    let of = |stream: Stream| -> Vec<String> {
        lines
            .iter()
            .filter(|(s, _)| *s == stream)
            .map(|(_, l)| l.clone())
            .collect()
    };
    assert_eq!(
        of(Stream::Stdout),
        vec![fx.workdir("box"), "hi there".to_owned()]
    );
    assert_eq!(of(Stream::Stderr), vec!["oops".to_owned()]);
    let start = fx
        .fake
        .handle
        .requests()
        .into_iter()
        .find(|r| r.path == "/process.Process/Start")
        .expect("a process call");
    assert_eq!(
        start.header("content-type"),
        Some("application/connect+json")
    );
    assert_eq!(start.header("connect-protocol-version"), Some("1"));
    assert!(
        start
            .header("x-access-token")
            .is_some_and(|t| !t.is_empty())
    );
    assert!(
        start
            .header("host")
            .is_some_and(|h| h.starts_with("49983-"))
    );

    let repo = tempfile::tempdir().expect("repo");
    std::fs::write(repo.path().join("hello.txt"), "hello e2b\n").expect("file");
    let archive = crabbox_exec::archive::build(repo.path(), &[], 1 << 20).expect("archive");
    provider
        .session(&lease)
        .upload(&archive.path)
        .await
        .expect("upload");
    let (code, lines) = run(&provider, &lease, "cat hello.txt").await.expect("exec");
    assert_eq!(
        (code, lines),
        (0, vec![(Stream::Stdout, "hello e2b".to_owned())])
    );

    // The URL bridge is computed: no call.
    let before = fx.fake.handle.requests().len();
    let share = provider
        .url_bridge()
        .expect("a URL bridge")
        .share(&lease, 8080, Duration::from_secs(600))
        .await
        .expect("share");
    assert_eq!(
        share.url,
        format!("http://8080-{}.{}", lease.cloud_id, fx.fake.domain)
    );
    assert_eq!(fx.fake.handle.requests().len(), before);

    let listed = provider.list(POND).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, lease.id);
    assert_eq!(listed[0].endpoint.shares.len(), 1, "its exposed port");
    provider.release(&lease).await.expect("release");
    assert!(fx.fake.handle.sandbox_ids().is_empty());
    assert!(matches!(
        provider.release(&lease).await,
        Err(ProviderError::NotFound(_))
    ));
}

#[tokio::test]
async fn a_stream_cut_before_its_end_event_fails() {
    let fx = Fixture::new().await;
    let provider = fx.provider();
    let lease = provider
        .create(&fx.request("cut", Duration::from_secs(600)))
        .await
        .expect("create");
    fx.fake.handle.cut_next_streams(1);
    let e = run(&provider, &lease, "echo partial; exit 0")
        .await
        .expect_err("no end event");
    assert!(e.to_string().contains("without an end event"), "{e}");
    let (code, _) = run(&provider, &lease, "true")
        .await
        .expect("the next works");
    assert_eq!(code, 0);
    provider.release(&lease).await.expect("release");
}

#[tokio::test]
async fn listing_follows_next_tokens_and_keeps_crabbox_sandboxes_of_the_pond() {
    let fx = Fixture::new().await;
    for i in 0..150 {
        let lease = format!("cbx_{i:012x}");
        fx.fake.handle.plant(&[
            ("crabbox", "true"),
            ("provider", "e2b"),
            ("pond", POND),
            ("lease", &lease),
        ]);
    }
    fx.fake.handle.plant(&[
        ("crabbox", "true"),
        ("provider", "e2b"),
        ("pond", "other"),
        ("lease", "cbx_aaaaaaaaaaaa"),
    ]);
    fx.fake.handle.plant(&[("team", "data")]);
    let provider = fx.provider();
    fx.fake.handle.fail_next_with_429(1);
    assert_eq!(provider.list(POND).await.expect("list").len(), 150);
    let pages: Vec<_> = fx
        .fake
        .handle
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v2/sandboxes" && r.status == 200)
        .collect();
    assert_eq!(pages.len(), 2);
    assert!(pages[1].param("nextToken").is_some());
    assert_eq!(
        pages[0].param("metadata"),
        Some("crabbox=true&provider=e2b&pond=eb-pond")
    );
    assert_eq!(pages[0].param("state"), Some("running,paused"));
}

#[tokio::test]
async fn the_sandbox_timeout_is_extended_while_it_is_used() {
    let fx = Fixture::new().await;
    let provider = fx.provider();
    let lease = provider
        .create(&fx.request("long", Duration::from_secs(3)))
        .await
        .expect("create");
    // Past its first 3 s only because each use after a third of it extends it.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let (code, _) = run(&provider, &lease, "true").await.expect("still there");
        assert_eq!(code, 0);
    }
    let connects = fx.fake.handle.connects();
    assert!(connects.len() >= 3, "{connects:?}");
    assert!(
        connects
            .iter()
            .all(|(id, t)| *id == lease.cloud_id && *t == 3)
    );
    provider.release(&lease).await.expect("release");
}

#[tokio::test]
async fn a_sandbox_without_the_lease_metadata_is_never_touched() {
    let fx = Fixture::new().await;
    let id = fx.fake.handle.plant(&[
        ("crabbox", "true"),
        ("pond", POND),
        ("lease", "cbx_0123456789ab"),
    ]);
    let lease = Lease {
        id: "cbx_0123456789ab".to_owned(),
        provider: ProviderName::E2b,
        cloud_id: id.clone(),
        labels: [(labels::POND.into(), POND.into())].into(),
        endpoint: Default::default(),
        listed: true,
        claimed: false,
    };
    let provider = fx.provider();
    assert!(provider.release(&lease).await.is_err());
    assert!(provider.relabel(&lease, &lease.labels).await.is_err());
    assert_eq!(fx.fake.handle.sandbox_ids(), vec![id]);
}

#[tokio::test]
async fn a_lost_create_is_adopted_and_plain_http_is_loopback_only() {
    let fx = Fixture::new().await;
    let provider = fx.provider();
    // An earlier attempt made the sandbox but its answer was lost.
    let request = fx.request("lost", Duration::from_secs(600));
    let mut metadata: Vec<(&str, &str)> = request
        .labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let workdir = fx.workdir("lost");
    metadata.push(("workdir", &workdir));
    let earlier = fx.fake.handle.plant(&metadata);
    let lease = provider.create(&request).await.expect("create");
    assert_eq!(lease.cloud_id, earlier);
    assert_eq!(fx.fake.handle.sandbox_ids(), vec![earlier]);
    assert!(
        !fx.fake
            .handle
            .requests()
            .iter()
            .any(|r| r.method == "POST" && r.path == "/sandboxes"),
        "nothing was created twice"
    );
    provider.release(&lease).await.expect("release");

    let far = E2bProvider::new(
        API_KEY,
        EnvSettings {
            api_url: Some("http://api.e2b.example".to_owned()),
            ..EnvSettings::default()
        },
    );
    let e = far.list(POND).await.expect_err("plain HTTP off loopback");
    assert!(matches!(e, ProviderError::Config { .. }), "{e:?}");
}

// ---- E2B's own Python SDK against the fake ----

#[test]
fn e2bs_python_sdk_creates_lists_runs_and_kills_on_the_fake() {
    let rt = crate::support::runtime();
    let fake = rt.block_on(fake_e2b::start());
    let venv = crate::support::root().join("target/test-tools/venv/bin/python3");
    let python = if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    };
    let out = std::process::Command::new(python)
        .arg(crate::support::root().join("tests/fixtures/e2b_sdk.py"))
        .env("E2B_API_KEY", API_KEY)
        .env("E2B_API_URL", &fake.api_url)
        .env("E2B_DOMAIN", &fake.domain)
        .env("E2B_SANDBOX_URL", &fake.api_url)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "the SDK script failed (./scripts/test installs e2b):\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("the script's JSON");
    assert_eq!(report["listed"], json!([report["id"]]));
    assert_eq!(report["metadata"]["lease"], "cbx_5e5e5e5e5e5e");
    assert_eq!(report["stdout"], "from the sdk\n");
    assert_eq!(report["stderr"], "to stderr\n");
    assert_eq!(report["exit_code"], 0);
    assert_eq!(report["failed_exit_code"], 3);
    assert_eq!(report["after_kill"], 0);
    assert!(fake.handle.sandbox_ids().is_empty());
}

// ---- a pond end to end: daytona, e2b and local ----

struct Pond {
    dir: tempfile::TempDir,
    _rt: tokio::runtime::Runtime,
    e2b: FakeE2b,
    daytona: crate::fake_daytona::FakeDaytona,
}

impl Pond {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        for d in ["home", "work", "sbx"] {
            std::fs::create_dir_all(dir.path().join(d)).expect("dirs");
        }
        std::fs::write(dir.path().join("work/hello.txt"), "served from e2b\n").expect("file");
        let rt = crate::support::runtime();
        let e2b = rt.block_on(fake_e2b::start());
        let daytona = rt.block_on(crate::fake_daytona::start(
            crate::fake_daytona::FakeConfig::default(),
        ));
        Self {
            dir,
            _rt: rt,
            e2b,
            daytona,
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::from_std(crate::support::crabbox_in(self.dir.path()))
            .env("E2B_API_KEY", API_KEY)
            .env("E2B_API_URL", &self.e2b.api_url)
            .env("E2B_DOMAIN", &self.e2b.domain)
            .env("DAYTONA_API_KEY", crate::fake_daytona::API_KEY)
            .env("DAYTONA_API_URL", &self.daytona.base_url)
            .timeout(Duration::from_secs(120))
            .args(args)
            .output()
            .expect("runs")
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn a_pond_of_daytona_e2b_and_local_members_applies_fetches_through_the_bridge_and_destroys() {
    let pond = Pond::new();
    let port = crate::sshd::free_port();
    let spec = format!(
        r#"version: 1
pond: mixed
members:
  - slug: box
    provider: daytona
    daytona: {{ snapshot: "daytonaio/sandbox:0.4.3", work_root: "{box_root}" }}
    setup: [ "cat hello.txt" ]
  - slug: srv
    provider: e2b
    e2b: {{ workdir: "{srv_root}" }}
    expose: [{port}]
    setup:
      - run: exec python3 -m http.server {port} --bind 127.0.0.1
        background: true
    ready: {{ tcp: {port}, timeout: 30s }}
  - slug: web
    sync: false
    depends_on: [srv, box]
    setup: [ "curl -sf \"$CRABBOX_POND_SRV_{port}/hello.txt\"" ]
"#,
        box_root = pond.path("sbx/box").display(),
        srv_root = pond.path("sbx/srv").display(),
    );
    std::fs::write(pond.path("work/pond.yaml"), spec).expect("spec");
    let out = pond.run(&["apply", "--auto-approve"]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("box | served from e2b"),
        "daytona synced: {err}"
    );
    assert!(
        err.contains("web | served from e2b"),
        "the local member fetched the e2b member's port through its URL: {err}"
    );
    let peers: Value =
        serde_json::from_slice(&pond.run(&["peers", "--json"]).stdout).expect("peers JSON");
    let srv = peers["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["slug"] == "srv")
        .expect("srv")
        .clone();
    assert_eq!(srv["transport"], "url", "{srv}");
    let url = srv["endpoint"].as_str().expect("endpoint");
    assert!(url.starts_with(&format!("http://{port}-")), "{url}");

    let out = pond.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // A stream cut before its end event fails the step.
    pond.e2b.handle.cut_next_streams(1);
    let out = pond.run(&["run", "--pond", "mixed", "--id", "srv", "--", "echo cut"]);
    assert!(!out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("without an end event"),
        "{}",
        text(&out.stderr)
    );
    // In an apply too: the step whose stream is cut fails, and the apply
    // with it (the member is replaced, so its steps run again).
    pond.e2b.handle.cut_next_streams(1);
    let out = pond.run(&["apply", "--auto-approve", "--replace", "srv"]);
    assert!(!out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("without an end event"),
        "{}",
        text(&out.stderr)
    );

    let out = pond.run(&["destroy", "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        pond.e2b.handle.sandbox_ids().is_empty(),
        "no e2b sandbox left"
    );
    assert!(
        pond.daytona.handle.sandboxes().is_empty(),
        "no daytona sandbox left"
    );
    let claims = std::fs::read_dir(pond.path("state/claims"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(claims, 0, "no claim is left");
}

#[test]
fn a_broad_e2b_workdir_is_refused_by_validate_as_by_the_adapter() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("pond.yaml"),
        "version: 1\npond: p\nmembers:\n  - slug: a\n    provider: e2b\n    e2b: { workdir: /tmp }\n  - slug: b\n    provider: e2b\n    e2b: { workdir: app }\n",
    )
    .expect("spec");
    let out = Command::cargo_bin("crabbox")
        .expect("binary")
        .env("NO_COLOR", "1")
        .env("HOME", dir.path())
        .current_dir(dir.path())
        .arg("validate")
        .output()
        .expect("runs");
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("E2B `workdir` `/tmp` is `/tmp`: not a dedicated directory"),
        "{err}"
    );
    assert!(err.contains("[e2b-workdir]"), "{err}");
    assert_eq!(
        err.matches("[e2b-workdir]").count(),
        1,
        "`app` is fine: {err}"
    );
}
