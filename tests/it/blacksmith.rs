//! The `blacksmith-testbox` provider against the fake `blacksmith` CLI
//! (`tests/fixtures/fake-blacksmith/blacksmith`), which keeps its Testboxes
//! as directories and logs every invocation's argv and working directory.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crabbox_core::labels;
use crabbox_core::lease::{Lease, new_lease_id};
use crabbox_core::provider::{OutputSink, ProviderError, ProviderName, Stream};
use crabbox_exec::session::ExecRequest;
use crabbox_providers::blacksmith::{BlacksmithProvider, ENV_REFUSAL, SYNC_STALLED_EXIT, cli};
use crabbox_providers::{CreateRequest, Provider};
use crabbox_spec::desired::{DesiredMember, SyncSettings};
use crabbox_spec::member_labels;
use crabbox_state::claims::{Claim, ClaimStore, claim_state, now_rfc3339};
use serde_json::{Value, json};

use crate::support;

const POND: &str = "pr-7";
const WORKFLOW: &str = ".github/workflows/ci-check-testbox.yml";

fn fake_cli() -> String {
    support::root()
        .join("tests/fixtures/fake-blacksmith/blacksmith")
        .display()
        .to_string()
}

/// One test's directories: crabbox's state, the keys, the fake's state, the repo.
struct Fx {
    dir: tempfile::TempDir,
}

impl Fx {
    fn new() -> Self {
        let fx = Self {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        std::fs::create_dir_all(fx.repo()).expect("repo");
        std::fs::write(fx.repo().join("hello.txt"), "hello from the checkout\n").expect("file");
        fx
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn repo(&self) -> PathBuf {
        self.path("repo")
    }

    fn claims(&self) -> ClaimStore {
        ClaimStore::local(&self.path("state"))
    }

    fn provider(&self) -> BlacksmithProvider {
        self.provider_with(&[])
    }

    fn provider_with(&self, env: &[(&str, &str)]) -> BlacksmithProvider {
        let mut p = BlacksmithProvider::from_env(&self.path("state"))
            .with_cli(&fake_cli())
            .with_testboxes(&self.path("testboxes"))
            .with_sync_timeout(Some(Duration::from_secs(60)))
            .with_ready_polling(Duration::from_millis(20), Duration::from_secs(10))
            .with_cli_env(
                "FAKE_BLACKSMITH_STATE",
                &self.path("fake").display().to_string(),
            )
            .with_cli_env(
                "FAKE_BLACKSMITH_LOG",
                &self.path("fake.log").display().to_string(),
            );
        for (k, v) in env {
            p = p.with_cli_env(k, v);
        }
        p
    }

    /// Every logged invocation, in order.
    fn log(&self) -> Vec<Value> {
        std::fs::read_to_string(self.path("fake.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("log line is JSON"))
            .collect()
    }

    /// The argv of each logged call of one `testbox` verb.
    fn calls(&self, verb: &str) -> Vec<Vec<String>> {
        self.log()
            .iter()
            .map(|e| strings(&e["argv"]))
            .filter(|argv| {
                let at = argv.iter().position(|a| a == "testbox").expect("testbox");
                argv.get(at + 1).map(String::as_str) == Some(verb)
            })
            .collect()
    }

    /// The fake's record of a Testbox.
    fn meta(&self, id: &str) -> Value {
        let text = std::fs::read_to_string(self.path(&format!("fake/boxes/{id}.json")))
            .unwrap_or_else(|e| panic!("no testbox {id}: {e}"));
        serde_json::from_str(&text).expect("json")
    }

    /// Every Testbox the fake ever made, with its status.
    fn boxes(&self) -> BTreeMap<String, String> {
        std::fs::read_dir(self.path("fake/boxes"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter_map(|e| {
                        let name = e.file_name().to_str()?.strip_suffix(".json")?.to_owned();
                        let status = self.meta(&name)["status"].as_str()?.to_owned();
                        Some((name, status))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn create(&self, p: &BlacksmithProvider, block: Value) -> Result<Lease, ProviderError> {
        p.create(&self.pending("api", block).await).await
    }

    /// Writes the pending claim the executor writes; the request to create.
    async fn pending(&self, slug: &str, block: Value) -> CreateRequest {
        let m = member(slug, block);
        let lease_id = new_lease_id();
        let labels = member_labels::for_create(POND, &lease_id, &m, labels::now_secs());
        self.claims()
            .write(&Claim {
                lease_id: lease_id.clone(),
                slug: slug.to_owned(),
                provider: "blacksmith-testbox".to_owned(),
                pond: POND.to_owned(),
                repo_root: self.repo().display().to_string(),
                claimed_at: now_rfc3339(),
                last_used_at: now_rfc3339(),
                idle_timeout_seconds: m.idle_timeout.as_secs(),
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

    async fn claim_ids(&self) -> Vec<String> {
        let (claims, _) = self.claims().load_all().await.expect("claims");
        claims.into_iter().map(|c| c.lease_id).collect()
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
        idle_timeout: Duration::from_secs(90 * 60),
        provider_block: Some(block),
        ..DesiredMember::new(slug, ProviderName::BlacksmithTestbox)
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|s| s.as_str().expect("string").to_owned())
        .collect()
}

/// Lines as they arrive.
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

fn request(command: &str, env: &[(&str, &str)]) -> ExecRequest {
    ExecRequest {
        command: command.to_owned(),
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        timeout: Some(Duration::from_secs(60)),
    }
}

#[tokio::test]
async fn warmup_run_list_and_stop_use_crabboxs_command_lines() {
    let fx = Fx::new();
    let p = fx.provider();
    let lease = fx
        .create(
            &p,
            json!({ "org": "acme", "workflow": WORKFLOW, "job": "check", "ref": "main" }),
        )
        .await
        .expect("create");
    // The lease is the Testbox ID, its claim re-keyed to it.
    assert!(cli::is_id(&lease.id), "{}", lease.id);
    assert_eq!(lease.cloud_id, lease.id);
    assert_eq!(lease.label(labels::LEASE), Some(lease.id.as_str()));
    assert_eq!(fx.claim_ids().await, [lease.id.as_str()]);
    let warmups = fx.calls("warmup");
    assert_eq!(warmups.len(), 1);
    let w = &warmups[0];
    assert_eq!(
        w[..7],
        [
            "--org", "acme", "testbox", "warmup", WORKFLOW, "--job", "check"
        ]
    );
    assert_eq!(w[7..9], ["--ref", "main"]);
    assert_eq!(w[9], "--ssh-public-key");
    assert!(w[10].starts_with("ssh-ed25519 "), "{w:?}");
    // The member's 90 minutes of idle time.
    assert_eq!(w[11..], ["--idle-timeout", "90"]);
    // The key is where Crabbox keeps it, its public half the one warmup got.
    let key = p.key_path(&lease.id);
    assert!(key.exists(), "{}", key.display());
    assert_eq!(fx.meta(&lease.id)["key"], w[10].as_str());
    // Readiness was read from `list` in the same organization.
    assert!(
        fx.calls("list")
            .iter()
            .all(|a| a[..3] == ["--org", "acme", "testbox"])
    );

    let sink = Arc::new(Lines::default());
    let code = p
        .session(&lease)
        .exec(
            &request(
                "cat hello.txt; echo \"pond=$CRABBOX_POND\"; echo oops >&2; exit 3",
                &[("CRABBOX_POND", POND)],
            ),
            sink.clone(),
        )
        .await
        .expect("exec");
    assert_eq!(code, 3);
    let out = sink.of(Stream::Stdout);
    assert!(
        out.contains(&"hello from the checkout".to_owned()),
        "{out:?}"
    );
    assert!(out.contains(&format!("pond={POND}")), "{out:?}");
    assert_eq!(sink.of(Stream::Stderr), ["oops"]);
    let run = fx.calls("run").pop().expect("a run");
    assert_eq!(
        run[..6],
        ["--org", "acme", "testbox", "run", "--id", &lease.id]
    );
    assert_eq!(run[6..8], ["--ssh-private-key", &key.display().to_string()]);
    assert_eq!(run.len(), 9, "one shell string: {run:?}");
    // The CLI ran in the repository it syncs.
    let cwd = fx
        .log()
        .iter()
        .rev()
        .find(|e| strings(&e["argv"]).contains(&"run".to_owned()))
        .expect("run")["cwd"]
        .clone();
    assert_eq!(cwd, fx.repo().display().to_string());

    assert_eq!(p.list(POND).await.expect("list").len(), 1);
    assert!(p.list("other-pond").await.expect("list").is_empty());
    p.release(&lease).await.expect("release");
    assert_eq!(
        fx.calls("stop").pop().expect("stop"),
        ["--org", "acme", "testbox", "stop", "--id", &lease.id]
    );
    assert_eq!(fx.boxes()[&lease.id], "stopped");
    assert!(!key.exists());
    assert!(p.list(POND).await.expect("list").is_empty());
    let again = p.release(&lease).await.expect_err("gone");
    assert!(matches!(again, ProviderError::NotFound(_)), "{again:?}");
}

#[tokio::test]
async fn a_sync_that_never_finishes_is_killed_with_124() {
    let fx = Fx::new();
    let lease = fx
        .create(&fx.provider(), json!({ "workflow": WORKFLOW }))
        .await
        .expect("create");
    let p = fx
        .provider_with(&[("FAKE_BLACKSMITH_HANG_SYNC", "1")])
        .with_sync_timeout(Some(Duration::from_millis(400)));
    let sink = Arc::new(Lines::default());
    let started = Instant::now();
    let code = p
        .session(&lease)
        .exec(&request("echo never", &[]), sink.clone())
        .await
        .expect("exec");
    assert_eq!(code, SYNC_STALLED_EXIT);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(!sink.of(Stream::Stdout).contains(&"never".to_owned()));
    let err = sink.of(Stream::Stderr).join("\n");
    assert!(
        err.contains("sync did not print a completion marker")
            && err.contains("CRABBOX_BLACKSMITH_SYNC_TIMEOUT_MS=0"),
        "{err}"
    );
    // The killed CLI's process group is gone: no sleeping fake is left.
    let fake = fake_cli();
    let left: Vec<_> = std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| {
            let c = String::from_utf8_lossy(c);
            c.contains(&fake) && c.contains(&lease.id)
        })
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // Without a stall the same guard lets a run through.
    let code = fx
        .provider()
        .with_sync_timeout(Some(Duration::from_millis(400)))
        .session(&lease)
        .exec(&request("true", &[]), Arc::new(Lines::default()))
        .await
        .expect("exec");
    assert_eq!(code, 0);
}

#[tokio::test]
async fn a_failed_warmup_that_printed_an_id_has_that_testbox_stopped() {
    let fx = Fx::new();
    let p = fx.provider_with(&[("FAKE_BLACKSMITH_WARMUP_FAIL_WITH_ID", "1")]);
    let request = fx.pending("api", json!({ "workflow": WORKFLOW })).await;
    let err = p.create(&request).await.expect_err("warmup failed");
    let text = err.to_string();
    // The CLI's own text, and what was done about the Testbox.
    assert!(
        text.contains("timed out waiting for the Testbox runner"),
        "{text}"
    );
    let boxes = fx.boxes();
    assert_eq!(boxes.len(), 1, "{boxes:?}");
    let (id, status) = boxes.iter().next().expect("one");
    assert_eq!(status, "stopped");
    assert!(text.contains(&format!("Testbox {id} stopped")), "{text}");
    assert_eq!(
        fx.calls("stop"),
        [vec![
            "testbox".to_owned(),
            "stop".into(),
            "--id".into(),
            id.clone()
        ]]
    );
    assert!(!err.is_retryable());
    // No key is left behind; only the executor's pending claim (it removes it).
    assert!(!fx.path(&format!("testboxes/{}", request.lease_id)).exists());
    assert_eq!(fx.claim_ids().await, [request.lease_id.as_str()]);
}

#[tokio::test]
async fn warmup_failures_without_an_id_stop_nothing_and_say_why() {
    let fx = Fx::new();
    let err = fx
        .create(
            &fx.provider_with(&[("FAKE_BLACKSMITH_WARMUP_FAIL", "1")]),
            json!({ "workflow": WORKFLOW }),
        )
        .await
        .expect_err("fails");
    assert!(
        err.to_string().contains("500 Internal Server Error"),
        "{err}"
    );
    let err = fx
        .create(
            &fx.provider_with(&[("FAKE_BLACKSMITH_WARMUP_NO_ID", "1")]),
            json!({ "workflow": WORKFLOW }),
        )
        .await
        .expect_err("no id");
    assert!(err.to_string().contains("did not print a tbx_ id"), "{err}");
    let err = fx
        .create(
            &fx.provider_with(&[("FAKE_BLACKSMITH_LOGGED_OUT", "1")]),
            json!({ "workflow": WORKFLOW }),
        )
        .await
        .expect_err("logged out");
    assert!(matches!(err, ProviderError::Credentials { .. }), "{err:?}");
    assert!(fx.calls("stop").is_empty());
    assert!(fx.boxes().is_empty());
    // A block without a workflow never reaches the CLI.
    let before = fx.log().len();
    let err = fx
        .create(&fx.provider(), json!({ "org": "acme" }))
        .await
        .expect_err("no workflow");
    assert!(matches!(err, ProviderError::Config { .. }), "{err:?}");
    assert_eq!(fx.log().len(), before);
}

#[tokio::test]
async fn a_testbox_that_never_gets_ready_is_stopped() {
    let fx = Fx::new();
    let p = fx
        .provider_with(&[("FAKE_BLACKSMITH_STATUS", "queued")])
        .with_ready_polling(Duration::from_millis(20), Duration::from_millis(300));
    let request = fx.pending("api", json!({ "workflow": WORKFLOW })).await;
    let err = p.create(&request).await.expect_err("never ready");
    let text = err.to_string();
    assert!(
        text.contains("last state queued") && text.contains("queue may be stalled"),
        "{text}"
    );
    let boxes = fx.boxes();
    assert_eq!(boxes.values().collect::<Vec<_>>(), ["stopped"], "{boxes:?}");
    assert_eq!(fx.claim_ids().await, [request.lease_id.as_str()]);
    assert!(std::fs::read_dir(fx.path("testboxes")).map_or(true, |mut d| d.next().is_none()));
}

#[tokio::test]
async fn env_forwarding_is_refused_with_crabboxs_reason() {
    let fx = Fx::new();
    let p = fx.provider();
    let lease = fx
        .create(&p, json!({ "workflow": WORKFLOW }))
        .await
        .expect("create");
    let runs = fx.calls("run").len();
    let err = p
        .session(&lease)
        .exec(
            &request("echo $API_TOKEN", &[("API_TOKEN", "s3cret-value")]),
            Arc::new(Lines::default()),
        )
        .await
        .expect_err("refused");
    assert!(err.to_string().contains(ENV_REFUSAL), "{err}");
    assert!(!err.to_string().contains("s3cret-value"));
    assert_eq!(fx.calls("run").len(), runs, "nothing ran");
    p.release(&lease).await.expect("release");
}

#[tokio::test]
async fn a_failed_listing_fails_discovery() {
    let fx = Fx::new();
    let lease = fx
        .create(&fx.provider(), json!({ "workflow": WORKFLOW }))
        .await
        .expect("create");
    let err = fx
        .provider_with(&[("FAKE_BLACKSMITH_LIST_FAIL", "1")])
        .list(POND)
        .await
        .expect_err("unobserved is not absent");
    assert!(
        err.is_retryable() && err.to_string().contains("503"),
        "{err}"
    );
    // A pond without claims asks the CLI nothing.
    let before = fx.log().len();
    assert!(fx.provider().list("empty").await.expect("list").is_empty());
    assert_eq!(fx.log().len(), before);
    fx.provider().release(&lease).await.expect("release");
}
