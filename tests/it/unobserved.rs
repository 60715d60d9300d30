//! Unobserved is not absent: when a provider or the claim store cannot be
//! read, nothing about its members is planned. `plan`, `apply`, `peers` and
//! `render` fail naming what could not be read, no create reaches the
//! provider, and the rendered files stay as they were.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use assert_cmd::Command;

use crate::fake_hetzner::{FakeConfig, FakeHetzner, TOKEN, start};
use crate::pg::TestPostgres;
use crate::sshd::free_port;

const POND: &str = "seen";

struct Env {
    dir: tempfile::TempDir,
    /// `HCLOUD_ENDPOINT` (with `HCLOUD_TOKEN`), `None`: no token at all.
    endpoint: Option<String>,
    state_url: Option<String>,
}

impl Env {
    fn new(spec: &str) -> Self {
        let env = Self {
            dir: tempfile::tempdir().expect("tempdir"),
            endpoint: None,
            state_url: None,
        };
        for d in ["home", "work"] {
            std::fs::create_dir_all(env.path(d)).expect("dirs");
        }
        std::fs::write(env.path("work/pond.yaml"), spec).expect("spec");
        env
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut c = Command::from_std(crate::support::crabbox_in(self.dir.path()));
        c.env_remove("HCLOUD_TOKEN")
            .env_remove("HETZNER_TOKEN")
            .timeout(Duration::from_secs(120));
        if let Some(endpoint) = &self.endpoint {
            c.env("HCLOUD_TOKEN", TOKEN)
                .env("HCLOUD_ENDPOINT", endpoint);
        }
        if let Some(url) = &self.state_url {
            c.env("CRABBOX_STATE_URL", url);
        }
        c.args(args).output().expect("runs")
    }

    /// The rendered files of the pond, by name (missing ones as `None`).
    fn outputs(&self) -> Vec<(String, Option<String>)> {
        ["env", "hosts", "peers.json"]
            .iter()
            .map(|n| {
                let path = self.path("home/.crabbox/pond").join(POND).join(n);
                ((*n).to_owned(), std::fs::read_to_string(path).ok())
            })
            .collect()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn spec() -> String {
    format!(
        "version: 1\npond: {POND}\ndefaults: {{ sync: false }}\nmembers:\n  - slug: web\n  - slug: db\n    provider: hetzner\n    type: cx23\n"
    )
}

/// A fake Hetzner API holding the pond's `db` server, as an earlier apply
/// would have left it.
fn fake_with_db(rt: &tokio::runtime::Runtime) -> FakeHetzner {
    let fake = rt.block_on(start(FakeConfig::default()));
    fake.handle.plant_server(
        "crabbox-seen-db",
        &[
            ("crabbox", "true"),
            ("pond", POND),
            ("slug", "db"),
            ("lease", "cbx_0000000000d1"),
            ("provider", "hetzner"),
            ("state", "ready"),
        ],
    );
    fake
}

/// Asserts that `out` failed naming the provider, and that nothing was
/// planned or written.
fn assert_refused(out: &Output, what: &str) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{what}: {err}");
    assert!(
        err.contains("provider `hetzner` could not be listed"),
        "{what}: {err}"
    );
    assert!(!err.contains("to add"), "{what} planned nothing: {err}");
}

#[test]
fn a_provider_answering_503_to_every_list_stops_plan_apply_and_peers() {
    let rt = crate::support::runtime();
    let fake = fake_with_db(&rt);
    let mut env = Env::new(&spec());
    env.endpoint = Some(fake.base_url.clone());
    let out = env.run(&["render"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let before = env.outputs();
    assert!(
        before[0]
            .1
            .as_deref()
            .is_some_and(|e| e.contains("203.0.113.")),
        "env rendered with db's address: {before:?}"
    );

    fake.handle.set_route_down("GET", "/v1/servers", true);
    fake.handle.clear_requests();
    assert_refused(&env.run(&["plan"]), "plan");
    assert_refused(
        &env.run(&["plan", "--format", "json"]),
        "plan --format json",
    );
    assert_refused(&env.run(&["apply", "--auto-approve"]), "apply");
    assert_refused(&env.run(&["peers", "--json"]), "peers");
    assert_refused(&env.run(&["render"]), "render");
    let creates: Vec<_> = fake
        .handle
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert!(creates.is_empty(), "no create reached the API: {creates:?}");
    assert_eq!(env.outputs(), before, "rendered files untouched");

    // Served again: the pond is whole and nothing is created.
    fake.handle.set_route_down("GET", "/v1/servers", false);
    let out = env.run(&["plan"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !text(&out.stdout).contains("db will be created"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn an_unreachable_api_stops_plan_and_apply() {
    let rt = crate::support::runtime();
    let fake = fake_with_db(&rt);
    let mut env = Env::new(&spec());
    env.endpoint = Some(fake.base_url.clone());
    assert!(env.run(&["render"]).status.success());
    let before = env.outputs();

    env.endpoint = Some(format!("http://127.0.0.1:{}/v1", free_port()));
    assert_refused(&env.run(&["plan"]), "plan");
    assert_refused(&env.run(&["apply", "--auto-approve"]), "apply");
    assert_eq!(env.outputs(), before, "rendered files untouched");
    assert!(
        fake.handle.requests().iter().all(|r| r.method != "POST"),
        "nothing was created"
    );
}

#[test]
fn a_targeted_plan_that_leaves_out_the_unseen_members_goes_on_without_rendering() {
    let rt = crate::support::runtime();
    let fake = fake_with_db(&rt);
    let mut env = Env::new(&spec());
    env.endpoint = Some(fake.base_url.clone());
    fake.handle.set_route_down("GET", "/v1/servers", true);
    // `--only db` still needs hetzner: refused.
    assert_refused(&env.run(&["plan", "--only", "db"]), "plan --only db");
    // `--skip db`: only the local member, and no output file is planned.
    let out = env.run(&["plan", "--skip", "db", "--format", "json"]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("could not be listed"), "warned: {err}");
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let outputs = plan["output_changes"].as_array().map_or(0, Vec::len);
    assert_eq!(outputs, 0, "no output change from a partial view: {plan}");
    assert!(
        !text(&out.stdout).contains("\"db\""),
        "db is not in the plan: {plan}"
    );
}

/// Without the token the fix is a secret: Crabbox's exit code 3 for
/// `plan`, `apply` and `destroy` alike, naming the variable to set.
#[test]
fn plan_apply_and_destroy_without_the_token_exit_3_naming_the_variable_to_set() {
    let env = Env::new(&spec());
    for args in [
        &["plan"][..],
        &["plan", "--detailed-exitcode"],
        &["apply", "--auto-approve"],
        &["destroy", "--auto-approve"],
    ] {
        let out = env.run(args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {err}");
        assert!(err.contains("HCLOUD_TOKEN"), "{args:?}: {err}");
        assert!(!err.contains("this build supports"), "{args:?}: {err}");
        assert!(
            !text(&out.stdout).contains("to add"),
            "{args:?}: nothing planned"
        );
    }
}

/// A token the provider refuses (401) is a credential too; a provider
/// that is down besides it is not fixed by a secret, so that exits 1.
#[test]
fn a_refused_token_exits_3_and_an_outage_besides_it_exits_1() {
    let rt = crate::support::runtime();
    let fake = fake_with_db(&rt);
    let env = Env::new(&spec());
    let mut c = Command::cargo_bin("crabbox").expect("binary");
    let out = c
        .env("CRABBOX_STATE_DIR", env.path("state"))
        .env("HOME", env.path("home"))
        .env("NO_COLOR", "1")
        .env("HCLOUD_TOKEN", "not-the-token")
        .env("HCLOUD_ENDPOINT", &fake.base_url)
        .env_remove("HETZNER_TOKEN")
        .env_remove("CRABBOX_STATE_URL")
        .current_dir(env.path("work"))
        .timeout(Duration::from_secs(120))
        .args(["plan", "--format", "json"])
        .output()
        .expect("runs");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("could not be listed"), "{err}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(doc["diagnostics"][0]["code"], "credentials", "{doc}");

    let mut env = Env::new(&spec());
    env.state_url = Some(format!("postgres://nobody@127.0.0.1:{}/none", free_port()));
    let out = env.run(&["plan"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
}

#[test]
fn a_stopped_state_database_stops_plan_and_apply() {
    let pg = TestPostgres::start();
    let mut env = Env::new(&format!(
        "version: 1\npond: {POND}\ndefaults: {{ sync: false }}\nmembers:\n  - slug: web\n"
    ));
    env.state_url = Some(pg.url.clone());
    let out = env.run(&["apply", "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let before = env.outputs();
    assert!(before[0].1.is_some(), "env rendered");

    drop(pg);
    for args in [
        &["plan"][..],
        &["apply", "--auto-approve"],
        &["peers", "--json"],
    ] {
        let out = env.run(args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("claim store could not be read") || err.contains("state database"),
            "{args:?} names the state backend: {err}"
        );
        assert!(!text(&out.stdout).contains("to add"), "{args:?}");
    }
    assert_eq!(env.outputs(), before, "rendered files untouched");

    // Clean up the local member the apply started (its state is in files
    // the local provider keeps, not in the stopped database).
    env.state_url = None;
    let _ = env.run(&["destroy", "--auto-approve"]);
}

#[test]
fn an_unreadable_pond_record_stops_the_plan() {
    let env = Env::new(&format!(
        "version: 1\npond: {POND}\ndefaults: {{ sync: false }}\nmembers:\n  - slug: web\n"
    ));
    let record = env.path("state/ponds").join(POND).join("providers.json");
    std::fs::create_dir_all(record.parent().expect("dir")).expect("dir");
    std::fs::write(&record, "{not json").expect("corrupt record");
    let out = env.run(&["plan"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("providers.json"), "names the record: {err}");
    assert!(!text(&out.stdout).contains("to add"), "nothing planned");
}

#[test]
fn an_unreadable_list_of_pond_records_stops_list_and_sweep() {
    let env = Env::new(&format!(
        "version: 1\npond: {POND}\ndefaults: {{ sync: false }}\nmembers:\n  - slug: web\n"
    ));
    // `ponds` is where each pond's record lives; a file there cannot be listed.
    std::fs::create_dir_all(env.path("state")).expect("state dir");
    std::fs::write(env.path("state/ponds"), "not a directory").expect("file");
    for args in [&["list"][..], &["sweep"][..]] {
        let out = env.run(args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("state/ponds"),
            "{args:?} names the place: {err}"
        );
    }
}
