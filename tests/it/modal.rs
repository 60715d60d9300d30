//! The `modal` provider: its embedded program against the fake `modal`
//! package (`tests/fixtures/fake-modal`, first on `PYTHONPATH`), which runs
//! commands for real, and the fake against the real package from PyPI
//! (`tests/fixtures/modal_signatures.py`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crabbox_core::labels;
use crabbox_core::lease::new_lease_id;
use crabbox_core::provider::{OutputSink, ProviderError, ProviderName, Stream};
use crabbox_exec::archive;
use crabbox_exec::session::ExecRequest;
use crabbox_providers::modal::ModalProvider;
use crabbox_providers::{CreateRequest, Provider};
use crabbox_spec::desired::{DesiredMember, SyncSettings};
use crabbox_spec::member_labels;
use crabbox_spec::model::Class;
use crabbox_state::claims::{Claim, ClaimStore, claim_state, now_rfc3339};
use serde_json::{Value, json};

use crate::support;

const POND: &str = "gpu-pond";
const TOKEN_SECRET: &str = "as-modal-secret-0123456789";

fn fake_package() -> PathBuf {
    support::root().join("tests/fixtures/fake-modal")
}

struct Fx {
    dir: tempfile::TempDir,
}

impl Fx {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn claims(&self) -> ClaimStore {
        ClaimStore::local(&self.path("state"))
    }

    /// The provider with the fake first on `PYTHONPATH` and Modal's token variables.
    fn provider(&self) -> ModalProvider {
        self.bare()
            .with_env("MODAL_TOKEN_ID", "ak-test")
            .with_env("MODAL_TOKEN_SECRET", TOKEN_SECRET)
    }

    fn bare(&self) -> ModalProvider {
        ModalProvider::from_env(&self.path("state"))
            .with_claims(self.claims())
            .with_env("PYTHONPATH", &fake_package().display().to_string())
            .with_env("FAKE_MODAL_STATE", &self.path("fake").display().to_string())
            .with_env(
                "FAKE_MODAL_LOG",
                &self.path("fake.log").display().to_string(),
            )
            .with_env("FAKE_MODAL_SECRETS", "db-creds")
    }

    fn log(&self) -> Vec<Value> {
        std::fs::read_to_string(self.path("fake.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON"))
            .collect()
    }

    fn calls(&self, call: &str) -> Vec<Value> {
        self.log()
            .into_iter()
            .filter(|e| e["call"] == call)
            .map(|e| e["args"].clone())
            .collect()
    }

    fn sandbox(&self, id: &str) -> Value {
        serde_json::from_str(
            &std::fs::read_to_string(self.path(&format!("fake/sandboxes/{id}.json")))
                .expect("sandbox"),
        )
        .expect("json")
    }

    async fn pending(&self, slug: &str, class: Option<Class>, block: Value) -> CreateRequest {
        let m = DesiredMember {
            sync: SyncSettings {
                enabled: true,
                exclude: vec![],
                max_bytes: 1 << 20,
            },
            class,
            ttl: Duration::from_secs(3 * 86_400),
            idle_timeout: Duration::from_secs(600),
            provider_block: Some(block),
            ..DesiredMember::new(slug, ProviderName::Modal)
        };
        let lease_id = new_lease_id();
        let labels = member_labels::for_create(POND, &lease_id, &m, labels::now_secs());
        self.claims()
            .write(&Claim {
                lease_id: lease_id.clone(),
                slug: slug.to_owned(),
                provider: "modal".to_owned(),
                pond: POND.to_owned(),
                claimed_at: now_rfc3339(),
                last_used_at: now_rfc3339(),
                labels: labels.clone(),
                state: claim_state::PENDING.to_owned(),
                ..Claim::default()
            })
            .await
            .expect("pending claim");
        CreateRequest {
            lease_id,
            pond: POND.to_owned(),
            member: m,
            labels,
        }
    }
}

#[derive(Default)]
struct Lines(Mutex<Vec<(Stream, String)>>);

impl OutputSink for Lines {
    fn line(&self, stream: Stream, line: &str) {
        self.0.lock().expect("lock").push((stream, line.to_owned()));
    }
}

impl Lines {
    fn of(&self, stream: Stream) -> Vec<String> {
        self.0
            .lock()
            .expect("lock")
            .iter()
            .filter(|(s, _)| *s == stream)
            .map(|(_, l)| l.clone())
            .collect()
    }
}

#[test]
fn the_fake_package_has_the_real_packages_signatures() {
    let out = std::process::Command::new("python3")
        .arg(support::root().join("tests/fixtures/modal_signatures.py"))
        .arg(support::root().join("crates/providers/src/modal/client.py"))
        .arg(fake_package())
        .env_remove("PYTHONPATH")
        .output()
        .expect("python3 runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("checked 15 calls against modal 1.6.4"),
        "{text}"
    );
}

#[tokio::test]
async fn create_sync_exec_list_and_terminate_through_the_embedded_program() {
    let fx = Fx::new();
    let p = fx.provider();
    let request = fx
        .pending(
            "trainer",
            Some(Class::Beast),
            json!({ "app": "ml", "image": "python:3.12-slim", "workdir": "/workspace/train",
                    "environment": "dev", "secrets": ["db-creds"] }),
        )
        .await;
    let lease = p.create(&request).await.expect("create");
    assert_eq!(lease.id, request.lease_id);
    let created = fx.calls("Sandbox.create").pop().expect("create call");
    // Crabbox's tags are in the create call itself, the pond only in the claim.
    let tags = &created["tags"];
    assert_eq!(tags["crabbox"], "true");
    assert_eq!(tags["provider"], "modal");
    assert_eq!(tags["lease"], lease.id.as_str());
    assert_eq!(tags["slug"], "trainer");
    assert_eq!(tags["app"], "ml");
    assert_eq!(tags["image"], "python:3.12-slim");
    assert!(tags.get("pond").is_none(), "{tags}");
    // The TTL capped at 24 h; the GPU from the class; the secret by name.
    assert_eq!(created["timeout"], 86_400);
    assert_eq!(created["gpu"], "H100");
    assert_eq!(created["secrets"], json!(["db-creds"]));
    assert_eq!(created["workdir"], "/workspace/train");
    let lookups = fx.calls("App.lookup");
    assert!(
        lookups
            .iter()
            .all(|l| l["environment_name"] == "dev" && l["create_if_missing"] == true)
    );
    assert!(
        !fx.calls("Sandbox.detach").is_empty(),
        "the client detached"
    );
    // Nothing secret reached the program's command line.
    for entry in fx.log() {
        let argv = entry["argv"].to_string();
        assert_eq!(entry["argv"], json!(["-c"]), "{entry}");
        assert!(!argv.contains(TOKEN_SECRET));
    }

    // Sync: the archive lands in the workdir.
    let src = fx.path("src");
    std::fs::create_dir_all(&src).expect("src");
    std::fs::write(src.join("hello.txt"), "hello modal\n").expect("file");
    let tgz = archive::build(&src, &[], 1 << 20).expect("archive");
    p.session(&lease).upload(&tgz.path).await.expect("upload");

    let sink = Arc::new(Lines::default());
    let env: BTreeMap<String, String> = [("API_TOKEN".to_owned(), "env-secret-value".to_owned())]
        .into_iter()
        .collect();
    let code = p
        .session(&lease)
        .exec(
            &ExecRequest {
                command: "cat hello.txt; echo \"token=${#API_TOKEN} lease=$CRABBOX_LEASE_ID\"; echo bad >&2; exit 7".to_owned(),
                env,
                timeout: Some(Duration::from_secs(60)),
            },
            sink.clone(),
        )
        .await
        .expect("exec");
    assert_eq!(code, 7, "the command's own exit status");
    let out = sink.of(Stream::Stdout);
    assert_eq!(
        out,
        ["hello modal", &format!("token=16 lease={}", lease.id)],
        "{out:?}"
    );
    assert_eq!(sink.of(Stream::Stderr), ["bad"]);
    let exec = fx.calls("Sandbox.exec").pop().expect("exec");
    assert_eq!(exec["args"][0], "bash");
    assert_eq!(exec["args"][1], "-lc");
    assert_eq!(exec["workdir"], "/workspace/train");
    assert_eq!(exec["env_names"], json!(["API_TOKEN"]));
    assert!(
        !std::fs::read_to_string(fx.path("fake.log"))
            .expect("log")
            .contains("env-secret-value")
    );

    let listed = p.list(POND).await.expect("list");
    assert_eq!(
        listed.iter().map(|l| l.id.as_str()).collect::<Vec<_>>(),
        [lease.id.as_str()]
    );
    assert!(p.list("another").await.expect("list").is_empty());
    p.release(&lease).await.expect("release");
    assert_eq!(fx.sandbox(&lease.cloud_id)["status"], "terminated");
    assert!(p.list(POND).await.expect("list").is_empty());
    let again = p.release(&lease).await.expect_err("gone");
    assert!(matches!(again, ProviderError::NotFound(_)), "{again:?}");
}

#[tokio::test]
async fn auth_comes_from_modals_variables_and_failures_say_so() {
    let fx = Fx::new();
    let request = fx.pending("a", None, json!({})).await;
    let err = fx.bare().create(&request).await.expect_err("no token");
    assert!(matches!(err, ProviderError::Credentials { .. }), "{err:?}");
    assert!(err.to_string().contains("Token missing"), "{err}");
    // A missing Secret: Modal's own text, nothing created.
    let request = fx.pending("b", None, json!({ "secrets": ["nope"] })).await;
    let err = fx.provider().create(&request).await.expect_err("no secret");
    assert!(err.to_string().contains("Secret 'nope' not found"), "{err}");
    assert!(fx.calls("Sandbox.create").is_empty());
    // A class below `large` gets no GPU; the default image, app and workdir.
    let request = fx.pending("c", Some(Class::Small), json!({})).await;
    let lease = fx.provider().create(&request).await.expect("create");
    let created = fx.calls("Sandbox.create").pop().expect("create");
    assert!(created["gpu"].is_null(), "{created}");
    assert_eq!(created["image"], "python:3.13-slim");
    assert_eq!(created["workdir"], "/workspace/crabbox");
    // A listing that failed fails discovery.
    let err = fx
        .provider()
        .with_env("FAKE_MODAL_FAIL_LIST", "1")
        .list(POND)
        .await
        .expect_err("unobserved is not absent");
    assert!(err.is_retryable(), "{err:?}");
    fx.provider().release(&lease).await.expect("release");
}

#[tokio::test]
async fn a_python_without_the_package_is_a_configuration_error() {
    let fx = Fx::new();
    // A `modal` that cannot be imported, first on the path.
    let broken = fx.path("broken/modal");
    std::fs::create_dir_all(&broken).expect("dir");
    std::fs::write(
        broken.join("__init__.py"),
        "raise ImportError('no modal here')\n",
    )
    .expect("stub");
    let request = fx.pending("a", None, json!({})).await;
    let err = ModalProvider::from_env(&fx.path("state"))
        .with_claims(fx.claims())
        .with_env("PYTHONPATH", &fx.path("broken").display().to_string())
        .create(&request)
        .await
        .expect_err("no package");
    assert!(matches!(err, ProviderError::Config { .. }), "{err:?}");
    assert!(err.to_string().contains("not installed"), "{err}");
    // No interpreter at all.
    let request = fx
        .pending("b", None, json!({ "python": "/nonexistent/python3" }))
        .await;
    let err = fx.provider().create(&request).await.expect_err("no python");
    assert!(matches!(err, ProviderError::Config { .. }), "{err:?}");
}
