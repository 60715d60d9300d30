//! End to end on the delegated-run providers: a pond with `local`,
//! `tensorlake` (through the fake CLI) and `islo` (against the fake Islo API)
//! members, the Islo member depending on the Tensorlake one.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use assert_cmd::Command;
use serde_json::Value;

use crate::fake_islo::{API_KEY, FakeConfig, FakeIslo, start};
use crate::sshd::free_port;
use crate::support::root;

const TL_KEY: &str = "tl_apiKey_e2e_secret_value";

struct Env {
    dir: tempfile::TempDir,
    /// Serves the fake Islo API for the test's lifetime.
    _rt: tokio::runtime::Runtime,
    islo: FakeIslo,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        for d in ["home", "work", "tl-state"] {
            std::fs::create_dir_all(dir.path().join(d)).expect("dirs");
        }
        std::fs::write(dir.path().join("work/hello.txt"), "hello from the repo\n")
            .expect("repo file");
        let rt = crate::support::runtime();
        let islo = rt.block_on(start(FakeConfig::default()));
        Self { dir, _rt: rt, islo }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn cmd(&self) -> Command {
        let mut c = Command::from_std(crate::support::crabbox_in(self.dir.path()));
        c.env("CRABBOX_ISLO_API_KEY", API_KEY)
            .env("ISLO_BASE_URL", &self.islo.base_url)
            .env("TENSORLAKE_API_KEY", TL_KEY)
            .env("FAKE_TENSORLAKE_STATE", self.path("tl-state"))
            .env("FAKE_TENSORLAKE_LOG", self.path("tl.log"))
            .timeout(Duration::from_secs(120));
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("runs")
    }

    fn write_spec(&self, port: u16, extra_islo_setup: &str) {
        let cli = root().join("tests/fixtures/fake-tensorlake");
        let spec = format!(
            r#"version: 1
pond: deleg
members:
  - slug: web
    sync: false
    setup: [ "echo local web" ]
  - slug: loader
    provider: tensorlake
    sync: false
    tensorlake: {{ cliPath: "{cli}", workdir: /workspace/crabbox, cpus: 2.0 }}
    env: {{ LOADER_TOKEN: "not-for-argv-123" }}
    setup: [ "echo loading with token of length $${{#LOADER_TOKEN}}" ]
  - slug: app
    provider: islo
    depends_on: {{ loader: completed }}
    expose: [{port}]
    islo: {{ workdir: app, vcpus: 2 }}
    setup:
      - cat hello.txt{extra_islo_setup}
      - run: exec python3 -m http.server {port} --bind 127.0.0.1
        background: true
    ready: {{ tcp: {port}, timeout: 30s }}
"#,
            cli = cli.display()
        );
        std::fs::write(self.path("work/pond.yaml"), spec).expect("spec");
    }

    fn claims(&self) -> Vec<Value> {
        std::fs::read_dir(self.path("state/claims"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter_map(|e| {
                        serde_json::from_str(&std::fs::read_to_string(e.path()).ok()?).ok()
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn local_tensorlake_and_islo_members_apply_share_and_destroy() {
    let env = Env::new();
    let foreign = env.islo.handle.plant_sandbox("someone-elses-sandbox");
    let port = free_port();
    env.write_spec(port, "");
    // A rate limit during the apply is retried.
    env.islo.handle.fail_next_with_429(2, 1);
    let out = env.run(&["apply", "--auto-approve"]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("app | hello from the repo"),
        "synced through files-archive and run over the SSE stream: {err}"
    );
    assert!(
        err.contains("loader | loading with token of length 16"),
        "{err}"
    );
    let loader_done = err.find("loader: Setup complete").expect("loader setup");
    let app_setup = err.find("app: Running setup").expect("app setup");
    assert!(
        loader_done < app_setup,
        "app waited for loader to complete: {err}"
    );

    // The Tensorlake key and the member's env reached the CLI only through its environment.
    let log = std::fs::read_to_string(env.path("tl.log")).expect("fake CLI log");
    assert!(!log.is_empty());
    for line in log.lines() {
        let entry: Value = serde_json::from_str(line).expect("log line");
        let argv = entry["argv"].to_string();
        assert!(
            !argv.contains(TL_KEY) && !argv.contains("not-for-argv-123"),
            "secret on argv: {argv}"
        );
        assert_eq!(entry["env"]["TENSORLAKE_API_KEY"], TL_KEY);
    }

    let peers: Value =
        serde_json::from_slice(&env.run(&["peers", "--json"]).stdout).expect("peers JSON");
    let app = peers["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["slug"] == "app")
        .expect("app")
        .clone();
    assert_eq!(app["transport"], "url", "{app}");
    assert_eq!(app["provider"], "islo");
    let url = app["endpoint"].as_str().expect("endpoint");
    assert!(url.starts_with("https://"), "{url}");
    // Crabbox lists a URL member's targets only while its endpoint is
    // unknown (or for --share-port): pond_bridge.go:435.
    assert!(app.get("targets").is_none(), "{app}");
    let loader = peers["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["slug"] == "loader")
        .expect("loader")
        .clone();
    assert_eq!(loader["transport"], "none");
    let env_file =
        std::fs::read_to_string(env.path("home/.crabbox/pond/deleg/env")).expect("env file");
    assert!(
        env_file.contains(&format!("CRABBOX_POND_APP_{port}={url}")),
        "{env_file}"
    );

    env.cmd()
        .args(["plan", "--detailed-exitcode"])
        .assert()
        .code(0);

    // Crabbox's transport-driving run options are refused with the provider's
    // reason, a usage error (exit 2) as in Crabbox.
    let out = env.run(&[
        "run",
        "--pond",
        "deleg",
        "--id",
        "app",
        "--force-sync-large",
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("`--force-sync-large` is rejected on provider islo"),
        "{}",
        text(&out.stderr)
    );
    let out = env.run(&[
        "run",
        "--pond",
        "deleg",
        "--id",
        "loader",
        "--checksum",
        "--",
        "true",
    ]);
    assert!(
        text(&out.stderr).contains("`--checksum` is rejected on provider tensorlake"),
        "{}",
        text(&out.stderr)
    );
    // …while a plain run goes through the provider's own transport.
    let out = env.run(&[
        "run",
        "--pond",
        "deleg",
        "--id",
        "app",
        "--",
        "echo from-islo; exit 4",
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("from-islo"));

    let out = env.run(&["destroy", "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let _ = foreign;
    assert_eq!(
        env.islo.handle.sandbox_names(),
        vec!["someone-elses-sandbox".to_owned()],
        "only the foreign sandbox is left"
    );
    assert!(env.claims().is_empty(), "no claim is left");
    let left: Vec<_> = std::fs::read_dir(env.path("tl-state/sandboxes"))
        .map(|d| d.filter_map(Result::ok).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "no Tensorlake sandbox is left: {left:?}");
}

#[test]
fn an_islo_stream_without_exit_event_fails_the_step() {
    let env = Env::new();
    let port = free_port();
    env.write_spec(port, "");
    env.islo.handle.drop_next_exit_events(1);
    let out = env.run(&["apply", "--auto-approve", "--only", "app"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("ended without exit event"), "{err}");
    env.cmd()
        .args(["destroy", "--auto-approve"])
        .assert()
        .success();
    assert!(env.islo.handle.sandbox_names().is_empty());
}

#[test]
fn a_crash_between_the_pending_claim_and_create_is_recovered_without_a_duplicate() {
    let env = Env::new();
    let port = free_port();
    env.write_spec(port, "");
    // Crash 1: the pending claim was written, then the process died before POST /sandboxes.
    // Crash 2: the sandbox was created, then the process died before the claim was completed.
    let lost = "cbx_0000000000a1";
    let adopted = "cbx_0000000000b2";
    // The labels the executor puts in a pending claim: exactly those of the create call.
    let spec = std::fs::read_to_string(env.path("work/pond.yaml")).expect("spec");
    let desired = crabbox_spec::load::load_str(
        "pond.yaml",
        &spec,
        &env.path("work"),
        &crabbox_spec::interpolate::Variables::fixed(vec![]),
    )
    .pond
    .expect("valid spec");
    let app_member = desired
        .members
        .iter()
        .find(|m| m.slug == "app")
        .expect("app member")
        .clone();
    let labels = |id: &str, slug: &str| {
        let mut m = app_member.clone();
        m.slug = slug.to_owned();
        serde_json::to_value(crabbox_spec::member_labels::for_create(
            "deleg",
            id,
            &m,
            crabbox_core::labels::now_secs(),
        ))
        .expect("labels")
    };
    std::fs::create_dir_all(env.path("state/claims")).expect("claims dir");
    // The provider records the sandbox's name in the claim before its POST.
    for (id, slug) in [(lost, "ghost"), (adopted, "app")] {
        let claim = serde_json::json!({"leaseID": id, "slug": slug, "provider": "islo", "pond": "deleg", "state": "pending",
            "cloudID": crabbox_providers::islo::sandbox_name("deleg", slug, id), "labels": labels(id, slug)});
        std::fs::write(
            env.path(&format!("state/claims/{id}.json")),
            claim.to_string(),
        )
        .expect("pending claim");
    }
    let name = crabbox_providers::islo::sandbox_name("deleg", "app", adopted);
    env.islo.handle.plant_sandbox(&name);
    env.islo.handle.clear_requests();

    let plan: Value =
        serde_json::from_slice(&env.run(&["plan", "--format", "json"]).stdout).expect("plan JSON");
    let app = plan["member_changes"]
        .as_array()
        .expect("changes")
        .iter()
        .find(|c| c["slug"] == "app")
        .expect("app")
        .clone();
    assert_eq!(
        app["lease_id"], adopted,
        "the sandbox created before the crash is adopted: {app}"
    );
    assert_eq!(
        plan["forget_claims"],
        serde_json::json!([lost]),
        "the claim that never got a sandbox is forgotten"
    );

    let out = env.run(&["apply", "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let creates = env
        .islo
        .handle
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/sandboxes")
        .count();
    assert_eq!(creates, 0, "no new sandbox for app");
    let apps: Vec<String> = env
        .islo
        .handle
        .sandbox_names()
        .into_iter()
        .filter(|n| n.contains("-app-"))
        .collect();
    assert_eq!(apps, vec![name], "exactly one sandbox for app");
    assert!(!env.path(&format!("state/claims/{lost}.json")).exists());
    env.cmd()
        .args(["plan", "--detailed-exitcode"])
        .assert()
        .code(0);
    env.cmd()
        .args(["destroy", "--auto-approve"])
        .assert()
        .success();
    assert!(env.islo.handle.sandbox_names().is_empty());
}
