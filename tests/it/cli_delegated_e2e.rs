//! End to end on the CLI-driven delegated providers: a pond with a `local`
//! member, a `blacksmith-testbox` member (the fake `blacksmith` CLI on
//! `PATH`) and a `modal` member (the fake `modal` package on `PYTHONPATH`),
//! through the binary: apply, run, a clean re-plan, destroy.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use assert_cmd::Command;
use serde_json::Value;

use crate::support::root;

const MODAL_SECRET: &str = "as-e2e-modal-secret";

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        for d in ["home", "work", "bs-state", "modal-state"] {
            std::fs::create_dir_all(dir.path().join(d)).expect("dirs");
        }
        std::fs::write(dir.path().join("work/hello.txt"), "hello from the repo\n")
            .expect("repo file");
        Self { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn cmd(&self) -> Command {
        let fakes = root().join("tests/fixtures/fake-blacksmith");
        let path = format!(
            "{}:{}",
            fakes.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut c = Command::from_std(crate::support::crabbox_in(self.dir.path()));
        c.env("PATH", path)
            .env("FAKE_BLACKSMITH_STATE", self.path("bs-state"))
            .env("FAKE_BLACKSMITH_LOG", self.path("bs.log"))
            // Ready at the first poll: the binary polls every 5 s, as Crabbox.
            .env("FAKE_BLACKSMITH_HYDRATING_LISTS", "0")
            .env("PYTHONPATH", root().join("tests/fixtures/fake-modal"))
            .env("MODAL_TOKEN_ID", "ak-e2e")
            .env("MODAL_TOKEN_SECRET", MODAL_SECRET)
            .env("FAKE_MODAL_STATE", self.path("modal-state"))
            .env("FAKE_MODAL_LOG", self.path("modal.log"))
            .timeout(Duration::from_secs(120));
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("runs")
    }

    fn write_spec(&self) {
        std::fs::write(
            self.path("work/pond.yaml"),
            r#"version: 1
pond: cli-deleg
members:
  - slug: web
    sync: false
    setup: [ "echo local web" ]
  - slug: ci
    provider: blacksmith-testbox
    depends_on: { web: completed }
    blacksmith-testbox: { org: acme, workflow: .github/workflows/testbox.yml, idleTimeout: 45m }
    setup:
      - cat hello.txt
      - echo "ci in pond $CRABBOX_POND as $CRABBOX_SLUG"
  - slug: gpu
    provider: modal
    class: beast
    depends_on: { web: completed }
    modal: { app: e2e }
    env: { MODEL_TOKEN: "not-for-argv-456" }
    setup:
      - cat hello.txt
      - echo "gpu token length $${#MODEL_TOKEN}"
"#,
        )
        .expect("spec");
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

    /// Each Testbox the fake made, with its status.
    fn testboxes(&self) -> Vec<(String, String)> {
        std::fs::read_dir(self.path("bs-state/boxes"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter_map(|e| {
                        let name = e.file_name().to_str()?.strip_suffix(".json")?.to_owned();
                        let meta: Value =
                            serde_json::from_str(&std::fs::read_to_string(e.path()).ok()?).ok()?;
                        Some((name, meta["status"].as_str()?.to_owned()))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Env {
    /// Every sandbox the fake Modal made.
    fn modal_sandboxes(&self) -> Vec<Value> {
        std::fs::read_dir(self.path("modal-state/sandboxes"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
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
fn local_blacksmith_and_modal_members_apply_run_and_destroy() {
    let env = Env::new();
    env.write_spec();
    let out = env.run(&["apply", "--auto-approve"]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("ci | hello from the repo"),
        "synced by the CLI: {err}"
    );
    assert!(err.contains("ci | ci in pond cli-deleg as ci"), "{err}");
    assert!(err.contains("web | local web"), "{err}");
    assert!(
        err.contains("gpu | hello from the repo"),
        "synced by upload: {err}"
    );
    assert!(err.contains("gpu | gpu token length 16"), "{err}");

    let boxes = env.testboxes();
    assert_eq!(boxes.len(), 1, "{boxes:?}");
    let (id, status) = &boxes[0];
    assert_ne!(status, "stopped");
    // The lease is the Testbox, claimed under its ID; its key is where Crabbox keeps it.
    let claim = env
        .claims()
        .into_iter()
        .find(|c| c["provider"] == "blacksmith-testbox")
        .expect("blacksmith claim");
    assert_eq!(claim["leaseID"], id.as_str());
    assert_eq!(claim["cloudID"], id.as_str());
    assert_eq!(claim["labels"]["crabbox_claim.state"], "active", "{claim}");
    assert!(
        env.path(&format!("home/.config/crabbox/testboxes/{id}/id_ed25519"))
            .exists()
    );

    env.cmd()
        .args(["plan", "--detailed-exitcode"])
        .assert()
        .code(0);

    let out = env.run(&[
        "run",
        "--pond",
        "cli-deleg",
        "--id",
        "ci",
        "--",
        "echo from-testbox; exit 5",
    ]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("from-testbox"));
    let out = env.run(&[
        "run",
        "--pond",
        "cli-deleg",
        "--id",
        "gpu",
        "--",
        "echo from-modal; exit 6",
    ]);
    assert_eq!(out.status.code(), Some(6), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("from-modal"));
    // Every call carried the member's organization.
    let log = std::fs::read_to_string(env.path("bs.log")).expect("fake CLI log");
    for line in log.lines() {
        let entry: Value = serde_json::from_str(line).expect("log line");
        assert_eq!(entry["argv"][0], "--org", "{entry}");
        assert_eq!(entry["argv"][1], "acme", "{entry}");
    }

    let out = env.run(&["destroy", "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        env.testboxes(),
        vec![(id.clone(), "stopped".to_owned())],
        "no Testbox is left running"
    );
    assert!(env.claims().is_empty(), "no claim is left");
    assert!(
        !env.path(&format!("home/.config/crabbox/testboxes/{id}"))
            .exists()
    );
    // The Modal sandbox is gone; its token and the member's env never were on a command line.
    let sandboxes = env.modal_sandboxes();
    assert_eq!(sandboxes.len(), 1, "{sandboxes:?}");
    assert_eq!(sandboxes[0]["status"], "terminated");
    assert_eq!(sandboxes[0]["gpu"], "H100");
    let log = std::fs::read_to_string(env.path("modal.log")).expect("fake modal log");
    assert!(!log.contains(MODAL_SECRET) && !log.contains("not-for-argv-456"));
    for line in log.lines() {
        let entry: Value = serde_json::from_str(line).expect("log line");
        assert_eq!(entry["argv"], serde_json::json!(["-c"]), "{entry}");
    }
}
