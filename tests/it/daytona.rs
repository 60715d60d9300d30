//! The `daytona` provider against the fake Daytona API
//! ([`crate::fake_daytona`]), whose sandboxes are this machine reached
//! through the tests' SSH gateway with token users; the fake driven by
//! Daytona's own Python clients; and a pond end to end through the binary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use assert_cmd::Command;
use crabbox_core::labels;
use crabbox_core::lease::Lease;
use crabbox_core::provider::{OutputSink, ProviderError, ProviderName, Stream};
use crabbox_exec::session::ExecRequest;
use crabbox_providers::daytona::{Credentials, DaytonaProvider, EnvDefaults};
use crabbox_providers::{CreateRequest, Provider};
use crabbox_spec::desired::{DesiredMember, SyncSettings};
use crabbox_spec::member_labels;
use serde_json::{Value, json};

use crate::fake_daytona::{self, API_KEY, FakeConfig, FakeDaytona, ORGANIZATION};
use crate::support::root;

const POND: &str = "dt-pond";
const SNAPSHOT: &str = "daytonaio/sandbox:0.4.3";

struct Fixture {
    fake: FakeDaytona,
    state: tempfile::TempDir,
    /// Work roots of the sandboxes (all on this machine).
    work: tempfile::TempDir,
}

impl Fixture {
    async fn new() -> Self {
        Self::with(FakeConfig::default()).await
    }

    async fn with(config: FakeConfig) -> Self {
        Self {
            fake: fake_daytona::start(config).await,
            state: tempfile::tempdir().expect("state dir"),
            work: tempfile::tempdir().expect("work dir"),
        }
    }

    fn provider_with(&self, credentials: &Credentials) -> DaytonaProvider {
        DaytonaProvider::new(
            credentials,
            EnvDefaults {
                api_url: Some(self.fake.base_url.clone()),
                ..EnvDefaults::default()
            },
            self.state.path(),
        )
        .with_boot_polling(Duration::from_millis(25), Duration::from_secs(10))
        .with_request_timeout(Duration::from_secs(10))
    }

    fn provider(&self) -> DaytonaProvider {
        self.provider_with(&Credentials {
            token: API_KEY.to_owned(),
            organization: None,
        })
    }

    fn work_root(&self, slug: &str) -> String {
        self.work.path().join(slug).display().to_string()
    }

    fn request(&self, slug: &str) -> CreateRequest {
        let m = member(
            slug,
            json!({ "snapshot": SNAPSHOT, "work_root": self.work_root(slug) }),
        );
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

fn member(slug: &str, block: Value) -> DesiredMember {
    DesiredMember {
        sync: SyncSettings {
            enabled: true,
            exclude: vec![],
            max_bytes: 1 << 20,
        },
        ttl: Duration::from_secs(3600),
        idle_timeout: Duration::from_secs(600),
        provider_block: Some(block),
        ..DesiredMember::new(slug, ProviderName::Daytona)
    }
}

/// Collects output lines.
#[derive(Default)]
struct Collect(Mutex<Vec<String>>);

impl OutputSink for Collect {
    fn line(&self, stream: Stream, line: &str) {
        if stream == Stream::Stdout {
            self.0.lock().expect("lock").push(line.to_owned());
        }
    }
}

async fn run(provider: &DaytonaProvider, lease: &Lease, command: &str) -> (i32, Vec<String>) {
    let sink = Arc::new(Collect::default());
    let code = provider
        .session(lease)
        .exec(
            &ExecRequest {
                command: command.to_owned(),
                env: BTreeMap::new(),
                timeout: Some(Duration::from_secs(30)),
            },
            sink.clone(),
        )
        .await
        .expect("exec");
    let lines = sink.0.lock().expect("lock").clone();
    (code, lines)
}

#[tokio::test]
async fn create_labels_the_sandbox_in_its_create_call_and_reaches_it_over_ssh() {
    let fx = Fixture::new().await;
    let provider = fx.provider();
    let request = fx.request("api");
    let lease = provider.create(&request).await.expect("create");

    // Every label in the create call itself, with Crabbox's extras.
    let posts: Vec<_> = fx
        .fake
        .handle
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == "/sandbox")
        .collect();
    assert_eq!(posts.len(), 1);
    let body = &posts[0].body;
    for (k, v) in request
        .labels
        .iter()
        .filter(|(k, _)| *k != labels::SERVER_TYPE)
    {
        assert_eq!(
            body["labels"][k.as_str()],
            json!(v),
            "label {k} in the create call"
        );
    }
    assert_eq!(body["labels"]["work_root"], json!(fx.work_root("api")));
    assert_eq!(
        body["labels"]["server_type"], "snapshot",
        "Crabbox's server type of a snapshot-sized sandbox"
    );
    assert!(
        body["labels"]["lease_name"]
            .as_str()
            .is_some_and(|n| n.starts_with("crabbox-api-")),
        "{body}"
    );
    assert_eq!(body["snapshot"], SNAPSHOT);
    assert_eq!(body["user"], "daytona");
    assert_eq!(body["autoStopInterval"], 10, "the idle timeout in minutes");
    assert_eq!(body["name"], body["labels"]["lease_name"]);
    // Labels re-asserted once the sandbox started.
    assert_eq!(fx.fake.handle.count("PUT", "/sandbox/"), 1);
    assert_eq!(lease.id, request.lease_id);
    assert_eq!(lease.provider, ProviderName::Daytona);
    let sandbox = &fx.fake.handle.sandboxes()[0];
    assert_eq!(sandbox.state, "started", "waited for started");
    assert_eq!(sandbox.labels.get(labels::LEASE), Some(&lease.id));
    // The secret never travels anywhere but the Authorization header.
    for r in fx.fake.handle.requests() {
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {API_KEY}").as_str())
        );
        assert!(!r.raw_body.contains(API_KEY) && !r.path.contains(API_KEY));
    }

    // The work root was prepared at create; commands run there as the token.
    let token = fx.fake.handle.tokens().pop().expect("an SSH access token");
    assert!(fx.fake.handle.gateway().logins_as(&token) >= 1);
    let (code, out) = run(&provider, &lease, "pwd; id -un").await;
    assert_eq!(code, 0);
    assert_eq!(
        out,
        vec![
            format!("{}/workspace", fx.work_root("api")),
            "root".to_owned()
        ]
    );
    assert!(
        fx.fake
            .handle
            .requests()
            .iter()
            .any(|r| r.path.ends_with("/ssh-access") && r.param("expiresInMinutes") == Some("30")),
        "tokens are asked for Crabbox's 30 minutes"
    );

    // Upload through the toolbox, unpacked into the workspace over SSH.
    let repo = tempfile::tempdir().expect("repo");
    std::fs::write(repo.path().join("hello.txt"), "hello daytona\n").expect("file");
    let archive = crabbox_exec::archive::build(repo.path(), &[], 1 << 20).expect("archive");
    provider
        .session(&lease)
        .upload(&archive.path)
        .await
        .expect("upload");
    assert_eq!(fx.fake.handle.count("POST", "/toolbox/"), 1);
    let (code, out) = run(&provider, &lease, "cat hello.txt").await;
    assert_eq!((code, out), (0, vec!["hello daytona".to_owned()]));

    // Listed by its pond label; released; a second release is "gone".
    let listed = provider.list(POND).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].cloud_id, lease.cloud_id);
    assert_eq!(listed[0].label(labels::POND), Some(POND));
    provider.release(&lease).await.expect("release");
    assert!(fx.fake.handle.sandboxes().is_empty());
    assert!(matches!(
        provider.release(&lease).await,
        Err(ProviderError::NotFound(_))
    ));
}

#[tokio::test]
async fn listing_follows_cursors_and_keeps_only_crabbox_sandboxes_of_the_pond() {
    let fx = Fixture::new().await;
    for i in 0..230 {
        let lease = format!("cbx_{i:012x}");
        let slug = format!("m{i}");
        fx.fake.handle.plant(
            &format!("crabbox-m{i}"),
            &[
                ("crabbox", "true"),
                ("provider", "daytona"),
                ("pond", POND),
                ("lease", &lease),
                ("slug", &slug),
            ],
        );
    }
    // Another pond's, one without Crabbox's provider label, and a stranger.
    fx.fake.handle.plant(
        "other",
        &[
            ("crabbox", "true"),
            ("provider", "daytona"),
            ("pond", "other"),
            ("lease", "cbx_aaaaaaaaaaaa"),
        ],
    );
    fx.fake.handle.plant(
        "lookalike",
        &[
            ("crabbox", "true"),
            ("pond", POND),
            ("lease", "cbx_bbbbbbbbbbbb"),
        ],
    );
    fx.fake.handle.plant("stranger", &[("team", "data")]);
    let provider = fx.provider();
    let leases = provider.list(POND).await.expect("list");
    assert_eq!(leases.len(), 230);
    let pages: Vec<_> = fx
        .fake
        .handle
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path == "/sandbox")
        .collect();
    assert_eq!(pages.len(), 3, "100 + 100 + 30");
    assert_eq!(pages[0].param("cursor"), None);
    assert!(pages[1].param("cursor").is_some() && pages[2].param("cursor").is_some());
    let filter: Value =
        serde_json::from_str(pages[0].param("labels").expect("labels filter")).expect("JSON");
    assert_eq!(filter, json!({ "crabbox": "true", "pond": POND }));
    assert_eq!(pages[0].param("limit"), Some("100"));
    let mut ponds = provider.ponds().await.expect("ponds");
    ponds.sort();
    assert_eq!(ponds, vec!["dt-pond".to_owned(), "other".to_owned()]);

    // A page that cannot be read fails the listing: unobserved is not absent.
    fx.fake.handle.fail_next_with_503("GET", "/sandbox", 20);
    let e = provider.list(POND).await.expect_err("a failed page");
    assert!(e.to_string().contains("503"), "{e}");
}

#[tokio::test]
async fn rate_limits_and_unavailability_are_retried_and_a_lost_create_is_adopted() {
    let fx = Fixture::new().await;
    let provider = fx.provider();
    fx.fake.handle.fail_next_with_429(2);
    let request = fx.request("retried");
    let lease = provider
        .create(&request)
        .await
        .expect("create despite 429s");
    assert_eq!(fx.fake.handle.sandboxes().len(), 1);
    provider.release(&lease).await.expect("release");

    // A create whose answer was lost: the retry finds the sandbox by its
    // lease label and adopts it instead of making a second one.
    let request = fx.request("lost");
    let mut planted: Vec<(&str, &str)> = request
        .labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    planted.push(("work_root", "/nonexistent"));
    let earlier = fx.fake.handle.plant("crabbox-lost-earlier", &planted);
    let lease = provider.create(&request).await.expect("create");
    assert_eq!(lease.cloud_id, earlier);
    assert_eq!(fx.fake.handle.sandboxes().len(), 1, "one sandbox, not two");
    let created = fx
        .fake
        .handle
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == "/sandbox" && r.status == 200)
        .count();
    assert_eq!(created, 1, "only the first lease was posted");
    provider.release(&lease).await.expect("release");
}

#[tokio::test]
async fn ssh_access_is_refreshed_before_it_expires() {
    let fx = Fixture::with(FakeConfig {
        access_lifetime: Some(Duration::from_secs(3)),
        ..FakeConfig::default()
    })
    .await;
    let provider = fx.provider();
    let lease = provider
        .create(&fx.request("refresh"))
        .await
        .expect("create");
    let first = fx.fake.handle.tokens();
    assert_eq!(first.len(), 1);
    // Past two thirds of its life, then past its end: the first token no
    // longer logs in; the connection is closed, so the next command must
    // log in again.
    tokio::time::sleep(Duration::from_millis(3300)).await;
    provider
        .ssh_target(&lease)
        .await
        .expect("a target")
        .close()
        .await;
    let (code, out) = run(&provider, &lease, "echo again").await;
    assert_eq!((code, out), (0, vec!["again".to_owned()]));
    let tokens = fx.fake.handle.tokens();
    assert!(tokens.len() >= 2, "a new token was minted: {tokens:?}");
    let newest = tokens
        .iter()
        .find(|t| !first.contains(t))
        .expect("new token");
    assert!(fx.fake.handle.gateway().logins_as(newest) >= 1);
    // A revoked token really is refused (the test gateway is no pushover).
    fx.fake.handle.revoke_all_tokens();
    let stale = provider.ssh_target(&lease).await.expect("target");
    stale.close().await;
    assert!(
        stale
            .try_prepared("true", Duration::from_secs(10))
            .await
            .is_err()
    );
    provider.release(&lease).await.expect("release");
}

#[tokio::test]
async fn release_and_relabel_refuse_a_sandbox_without_the_lease_labels() {
    let fx = Fixture::new().await;
    let provider = fx.provider();
    let id = fx
        .fake
        .handle
        .plant("someone", &[("crabbox", "true"), ("pond", POND)]);
    let lease = Lease {
        id: "cbx_0123456789ab".to_owned(),
        provider: ProviderName::Daytona,
        cloud_id: id.clone(),
        labels: [(labels::POND.into(), POND.into())].into(),
        endpoint: Default::default(),
        listed: true,
        claimed: false,
    };
    let e = provider.release(&lease).await.expect_err("not ours");
    assert!(e.to_string().contains("refusing"), "{e}");
    let e = provider
        .relabel(&lease, &lease.labels)
        .await
        .expect_err("not ours");
    assert!(e.to_string().contains("refusing"), "{e}");
    assert_eq!(fx.fake.handle.sandboxes().len(), 1);
    assert!(fx.fake.handle.deleted().is_empty());
}

#[tokio::test]
async fn a_jwt_acts_for_its_organization_and_plain_http_is_loopback_only() {
    let fx = Fixture::with(FakeConfig {
        jwt: Some("jwt-fake-token".to_owned()),
        ..FakeConfig::default()
    })
    .await;
    let provider = fx.provider_with(&Credentials {
        token: "jwt-fake-token".to_owned(),
        organization: Some(ORGANIZATION.to_owned()),
    });
    assert!(provider.list(POND).await.expect("list").is_empty());
    let last = fx.fake.handle.requests().pop().expect("a request");
    assert_eq!(last.header("x-daytona-organization-id"), Some(ORGANIZATION));

    let far = DaytonaProvider::new(
        &Credentials {
            token: API_KEY.to_owned(),
            organization: None,
        },
        EnvDefaults {
            api_url: Some("http://daytona.example.com/api".to_owned()),
            ..EnvDefaults::default()
        },
        fx.state.path(),
    );
    let e = far.list(POND).await.expect_err("plain HTTP off loopback");
    assert!(matches!(e, ProviderError::Config { .. }), "{e:?}");
}

#[tokio::test]
async fn a_member_without_a_snapshot_or_with_a_class_is_refused_before_any_call() {
    let fx = Fixture::new().await;
    let provider = fx.provider();
    let mut request = fx.request("nosnap");
    request.member.provider_block = Some(json!({}));
    let e = provider.create(&request).await.expect_err("no snapshot");
    assert!(e.to_string().contains("snapshot"), "{e}");
    let mut request = fx.request("sized");
    request.member.class = Some(crabbox_spec::model::Class::Large);
    let e = provider.create(&request).await.expect_err("a class");
    assert!(e.to_string().contains("`class` and `type`"), "{e}");
    assert!(fx.fake.handle.requests().is_empty(), "no call was made");
}

// ---- Daytona's own Python clients against the fake ----

/// The Python with Daytona's generated clients (`./scripts/test` installs
/// them into its venv).
fn python() -> PathBuf {
    let venv = root().join("target/test-tools/venv/bin/python3");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

#[test]
fn daytonas_python_clients_create_list_exec_and_delete_on_the_fake() {
    let rt = crate::support::runtime();
    let fake = rt.block_on(fake_daytona::start(FakeConfig::default()));
    let out = std::process::Command::new(python())
        .arg(root().join("tests/fixtures/daytona_sdk.py"))
        .env("DAYTONA_API_URL", &fake.base_url)
        .env("DAYTONA_API_KEY", API_KEY)
        .env("DAYTONA_SNAPSHOT", SNAPSHOT)
        .output()
        .expect("python3 runs");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert!(
        out.status.success(),
        "the SDK script failed (./scripts/test installs daytona-api-client and daytona-toolbox-api-client):\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("the script's JSON");
    assert_eq!(report["state"], "started");
    assert_eq!(report["listed"], 1);
    assert_eq!(report["exit_code"], 3);
    assert_eq!(report["result"], "from the sdk\n");
    assert_eq!(report["labels"]["crabbox"], "true");
    assert_eq!(report["after_delete"], 0);
    assert_eq!(fake.handle.deleted().len(), 1);
    assert!(fake.handle.sandboxes().is_empty());
}

// ---- a pond end to end ----

struct Pond {
    dir: tempfile::TempDir,
    _rt: tokio::runtime::Runtime,
    fake: FakeDaytona,
}

impl Pond {
    fn new(config: FakeConfig) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        for d in ["home", "work", "dt"] {
            std::fs::create_dir_all(dir.path().join(d)).expect("dirs");
        }
        std::fs::write(dir.path().join("work/hello.txt"), "synced to daytona\n").expect("file");
        let rt = crate::support::runtime();
        let fake = rt.block_on(fake_daytona::start(config));
        Self { dir, _rt: rt, fake }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::from_std(crate::support::crabbox_in(self.dir.path()))
            .env("DAYTONA_API_KEY", API_KEY)
            .env("DAYTONA_API_URL", &self.fake.base_url)
            .env("CRABBOX_DAYTONA_SNAPSHOT", SNAPSHOT)
            .timeout(Duration::from_secs(120))
            .args(args)
            .output()
            .expect("runs")
    }

    fn write_spec(&self, setup: &str) {
        let spec = format!(
            r#"version: 1
pond: dtpond
members:
  - slug: box
    provider: daytona
    daytona: {{ work_root: "{root}" }}
    setup:
      - cat hello.txt
{setup}
  - slug: web
    sync: false
    depends_on: [box]
    setup: [ "echo web after box" ]
"#,
            root = self.path("dt/box").display()
        );
        std::fs::write(self.path("work/pond.yaml"), spec).expect("spec");
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn a_daytona_pond_applies_replans_clean_refreshes_access_and_destroys() {
    // Tokens live 4 s: the setup outlives the first one.
    let pond = Pond::new(FakeConfig {
        access_lifetime: Some(Duration::from_secs(4)),
        ..FakeConfig::default()
    });
    let foreign = pond.fake.handle.plant("not-ours", &[("team", "data")]);
    pond.write_spec("      - sleep 3\n      - echo after the first token");
    pond.fake.handle.fail_next_with_429(1);
    let out = pond.run(&["apply", "--auto-approve"]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("box | synced to daytona"), "{err}");
    assert!(err.contains("box | after the first token"), "{err}");
    assert!(
        std::fs::read_to_string(pond.path("dt/box/workspace/hello.txt"))
            .is_ok_and(|t| t == "synced to daytona\n"),
        "the repository went through the toolbox"
    );
    assert!(
        pond.fake.handle.tokens().len() >= 2,
        "the access was refreshed during the setup: {:?}",
        pond.fake.handle.tokens()
    );
    // No token is written anywhere crabbox keeps files.
    for token in pond.fake.handle.tokens() {
        assert!(
            !grep_dir(&pond.path("state"), &token) && !grep_dir(&pond.path("home"), &token),
            "token {token} written to disk"
        );
    }

    let out = pond.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let out = pond.run(&[
        "run",
        "--pond",
        "dtpond",
        "--id",
        "box",
        "--",
        "cat hello.txt; exit 5",
    ]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("synced to daytona"));

    let out = pond.run(&["destroy", "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let left: Vec<String> = pond
        .fake
        .handle
        .sandboxes()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(left, vec![foreign], "only the foreign sandbox is left");
    let claims = std::fs::read_dir(pond.path("state/claims"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(claims, 0, "no claim is left");
}

#[test]
fn class_and_type_on_a_daytona_member_are_refused_by_validate() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("pond.yaml"),
        "version: 1\npond: p\nmembers:\n  - slug: a\n    provider: daytona\n    class: large\n    daytona: { snapshot: s }\n  - slug: b\n    provider: daytona\n    type: cx22\n    daytona: { snapshot: s }\n",
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
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("member `a`: `class` is not supported by provider `daytona`"),
        "{err}"
    );
    assert!(
        err.contains("member `b`: `type` is not supported by provider `daytona`"),
        "{err}"
    );
}

/// Whether any file under `dir` contains `needle`.
fn grep_dir(dir: &Path, needle: &str) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.filter_map(Result::ok).any(|e| {
        let p = e.path();
        if p.is_dir() && !p.is_symlink() {
            grep_dir(&p, needle)
        } else {
            std::fs::read(&p).is_ok_and(|b| String::from_utf8_lossy(&b).contains(needle))
        }
    })
}

/// A `background: true` step on a Daytona member runs as on any SSH lease:
/// started detached through the (token) SSH session, still serving after
/// the apply returns, reached from this machine through `pond connect`'s
/// SSH mesh (a tunnel logged in with a fresh access token), and gone once
/// the pond is destroyed.
#[test]
fn a_background_service_on_a_daytona_member_serves_through_the_mesh_until_destroy() {
    let pond = Pond::new(FakeConfig::default());
    let port = crate::sshd::free_port();
    std::fs::write(
        pond.path("work/pond.yaml"),
        format!(
            r#"version: 1
pond: dtmesh
members:
  - slug: box
    provider: daytona
    daytona: {{ work_root: "{root}" }}
    expose: [{port}]
    setup:
      - run: exec python3 -m http.server {port} --bind 127.0.0.1
        background: true
    ready: {{ tcp: {port}, timeout: 30s }}
"#,
            root = pond.path("dt/box").display()
        ),
    )
    .expect("spec");
    let out = pond.run(&["apply", "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let out = pond.run(&["pond", "connect", "dtmesh", "--export"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let exports = text(&out.stdout);
    let addr = exports
        .lines()
        .find_map(|l| l.strip_prefix(&format!("export CRABBOX_POND_BOX_{port}=")))
        .unwrap_or_else(|| panic!("an export for box's port: {exports}"))
        .to_owned();
    {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect(&addr).expect("connect through the tunnel");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        write!(s, "GET / HTTP/1.0\r\nHost: x\r\n\r\n").expect("request");
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(
            answer.starts_with("HTTP/1.0 200"),
            "through the mesh: {answer}"
        );
    }
    let answers = |want: bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let up = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
            if up == want || std::time::Instant::now() > deadline {
                return up;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert!(answers(true), "the service serves after the apply");
    let out = pond.run(&["destroy", "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!answers(false), "the service is stopped by destroy");
}
