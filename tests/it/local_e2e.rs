//! End to end on the embedded local provider: the real binary, real
//! processes, a throw-away state directory and home per test.

use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Output, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::Command;
use serde_json::Value;

use crate::support::root;

/// A private state dir and home for one test.
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        let env = Self {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        std::fs::create_dir_all(env.home()).expect("home");
        env
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn work(&self) -> PathBuf {
        let w = self.dir.path().join("work");
        std::fs::create_dir_all(&w).expect("work dir");
        w
    }

    fn write_spec(&self, text: &str) -> PathBuf {
        let path = self.work().join("pond.yaml");
        std::fs::write(&path, text).expect("spec written");
        path
    }

    fn cmd(&self) -> Command {
        let mut c = Command::cargo_bin("crabbox").expect("binary");
        c.env("CRABBOX_STATE_DIR", self.state())
            .env("HOME", self.home())
            .env("USER", "e2e")
            .env("NO_COLOR", "1")
            .current_dir(self.work());
        c
    }

    fn std_cmd(&self) -> StdCommand {
        let mut c = StdCommand::new(assert_cmd::cargo::cargo_bin("crabbox"));
        c.env("CRABBOX_STATE_DIR", self.state())
            .env("HOME", self.home())
            .env("USER", "e2e")
            .env("NO_COLOR", "1")
            .current_dir(self.work());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd()
            .args(args)
            .timeout(Duration::from_secs(120))
            .output()
            .expect("runs")
    }

    fn lease_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.state().join("local/leases"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn pids(&self) -> Vec<u32> {
        self.lease_dirs()
            .iter()
            .flat_map(|d| {
                std::fs::read_dir(d.join("pids"))
                    .into_iter()
                    .flatten()
                    .filter_map(Result::ok)
            })
            .filter_map(|e| std::fs::read_to_string(e.path()).ok()?.trim().parse().ok())
            .collect()
    }

    fn claims(&self) -> usize {
        std::fs::read_dir(self.state().join("claims"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    fn plan_json(&self, spec: &Path) -> Value {
        let out = self.run(&[
            "plan",
            "-f",
            spec.to_str().expect("utf-8"),
            "--format",
            "json",
        ]);
        assert!(
            out.status.success(),
            "plan failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("plan JSON")
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn actions(plan: &Value, slug: &str) -> Vec<String> {
    plan["member_changes"]
        .as_array()
        .expect("changes")
        .iter()
        .filter(|c| c["slug"] == slug)
        .flat_map(|c| {
            c["change"]["actions"]
                .as_array()
                .expect("actions")
                .iter()
                .map(|a| a.as_str().expect("str").to_owned())
        })
        .collect()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.split(' ').nth(2) == Some("Z"))
}

#[test]
fn example_applies_converges_and_destroys_without_leftovers() {
    let env = Env::new();
    let spec = root().join("examples/local/pond.yaml");
    let spec = spec.to_str().expect("utf-8");
    let out = env.run(&["apply", "-f", spec, "--auto-approve"]);
    assert!(
        out.status.success(),
        "apply: {}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("Apply complete! Members: 3 added, 0 changed, 0 destroyed."),
        "{}",
        text(&out.stderr)
    );
    // api fetched from db through the injected peer variable during its setup
    assert!(
        text(&out.stderr).contains("api | {\"rows\": 3}"),
        "{}",
        text(&out.stderr)
    );

    let peers = env.run(&["peers", "-f", spec, "--json"]);
    let v: Value = serde_json::from_slice(&peers.stdout).expect("peers JSON");
    let members = v["members"].as_array().expect("members");
    assert_eq!(
        members
            .iter()
            .map(|m| m["slug"].as_str().expect("slug"))
            .collect::<Vec<_>>(),
        ["api", "db", "worker"]
    );
    for m in members {
        assert!(
            m["endpoint"]
                .as_str()
                .expect("endpoint")
                .starts_with("127.77."),
            "{m}"
        );
        assert!(m["leaseID"].as_str().expect("id").starts_with("cbx_"));
        assert_eq!(m["pond"], "local-demo-e2e");
    }
    let peers_file = env.home().join(".crabbox/pond/local-demo-e2e/peers.json");
    let rendered: Value =
        serde_json::from_str(&std::fs::read_to_string(&peers_file).expect("peers.json rendered"))
            .expect("JSON");
    // The file leaves out the labels every touch rewrites; otherwise it is
    // `crabbox peers --json`.
    let mut shown = v.clone();
    for m in shown["members"].as_array_mut().expect("members") {
        let labels = m["labels"].as_object_mut().expect("labels");
        assert!(
            labels.remove("last_touched_at").is_some() && labels.remove("expires_at").is_some()
        );
    }
    assert_eq!(
        rendered, shown,
        "rendered peers.json equals `crabbox peers --json` without the touch times"
    );

    env.cmd()
        .args(["plan", "-f", spec, "--detailed-exitcode"])
        .assert()
        .code(0);
    let pids = env.pids();
    assert!(
        !pids.is_empty() && pids.iter().all(|p| alive(*p)),
        "db's server runs: {pids:?}"
    );

    env.cmd()
        .args(["destroy", "-f", spec, "--auto-approve"])
        .assert()
        .success();
    assert!(env.lease_dirs().is_empty(), "no lease directory is left");
    assert_eq!(env.claims(), 0, "no claim is left");
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|p| alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        pids.iter().all(|p| !alive(*p)),
        "no process is left: {pids:?}"
    );
    env.cmd()
        .args(["destroy", "-f", spec, "--auto-approve"])
        .assert()
        .success();
}

const V1: &str = "version: 1\npond: upd\ndefaults: { sync: false }\nmembers:\n  - slug: svc\n    expose: [8080]\n    setup: [ \"echo version-one\" ]\n";

#[test]
fn expose_change_updates_in_place_and_setup_change_reruns_setup() {
    let env = Env::new();
    let spec = env.write_spec(V1);
    env.cmd()
        .args(["apply", "--auto-approve"])
        .assert()
        .success();
    let id = env.plan_json(&spec)["member_changes"][0]["lease_id"]
        .as_str()
        .expect("id")
        .to_owned();

    let spec = env.write_spec(&V1.replace("[8080]", "[8080, 9090]"));
    env.cmd()
        .args(["plan", "--detailed-exitcode"])
        .assert()
        .code(2);
    let plan = env.plan_json(&spec);
    assert_eq!(actions(&plan, "svc"), ["update"]);
    assert_eq!(plan["member_changes"][0]["change"]["relabel"], true);
    assert_eq!(plan["member_changes"][0]["change"]["rerun_setup"], false);
    let out = env.run(&["apply", "--auto-approve"]);
    assert!(out.status.success());
    assert!(
        !text(&out.stderr).contains("version-one"),
        "an in-place update does not re-run setup"
    );
    assert!(
        text(&out.stderr).contains("0 added, 1 changed, 0 destroyed"),
        "{}",
        text(&out.stderr)
    );
    let plan = env.plan_json(&spec);
    assert_eq!(
        plan["member_changes"][0]["lease_id"],
        id.as_str(),
        "same lease"
    );
    assert_eq!(
        plan["member_changes"][0]["change"]["before"]["expose"],
        serde_json::json!([8080, 9090])
    );

    let spec = env.write_spec(
        &V1.replace("[8080]", "[8080, 9090]")
            .replace("version-one", "version-two"),
    );
    let plan = env.plan_json(&spec);
    assert_eq!(actions(&plan, "svc"), ["update"]);
    assert_eq!(plan["member_changes"][0]["change"]["rerun_setup"], true);
    let out = env.run(&["apply", "--auto-approve"]);
    assert!(out.status.success());
    assert!(
        text(&out.stderr).contains("svc | version-two"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        env.plan_json(&spec)["member_changes"][0]["lease_id"],
        id.as_str(),
        "setup re-ran on the same lease"
    );
    env.cmd()
        .args(["plan", "--detailed-exitcode"])
        .assert()
        .code(0);
    env.cmd()
        .args(["destroy", "--auto-approve"])
        .assert()
        .success();
}

/// A pond whose setup reads a secret from the environment.
const WITH_SECRET: &str = "version: 1\npond: rec\ndefaults: { sync: false }\nmembers:\n  - slug: svc\n    env: { TOKEN: \"${SETUP_SECRET}\", MODE: one }\n    setup: [ \"echo version-one\" ]\n";

/// Apply records what a member ran in its claim (secrets hidden), and the
/// next plan shows a setup change as a diff against that record.
#[test]
fn a_setup_change_plans_as_a_diff_against_what_ran() {
    let env = Env::new();
    let secret = "hunter2-do-not-print";
    env.write_spec(WITH_SECRET);
    env.cmd()
        .env("SETUP_SECRET", secret)
        .args(["apply", "--auto-approve"])
        .assert()
        .success();
    let claims: Vec<String> = std::fs::read_dir(env.state().join("claims"))
        .expect("claims dir")
        .filter_map(Result::ok)
        .map(|e| std::fs::read_to_string(e.path()).expect("claim"))
        .collect();
    assert_eq!(claims.len(), 1);
    assert!(claims[0].contains("crabboxCommands"), "{}", claims[0]);
    assert!(claims[0].contains("run echo version-one"), "{}", claims[0]);
    assert!(
        !claims[0].contains(secret),
        "the claim holds the secret: {}",
        claims[0]
    );

    env.write_spec(
        &WITH_SECRET
            .replace("version-one", "version-two")
            .replace("MODE: one", "MODE: two"),
    );
    let out = env
        .cmd()
        .env("SETUP_SECRET", secret)
        .args(["plan"])
        .output()
        .expect("plan");
    let plan = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for line in [
        "          env TOKEN=(sensitive)\n",
        "        - run echo version-one\n",
        "        + run echo version-two\n",
    ] {
        assert!(plan.contains(line), "missing {line:?} in:\n{plan}");
    }
    assert!(
        plan.contains("- env MODE=\"one\"") && plan.contains("+ env MODE=\"two\""),
        "{plan}"
    );
    assert!(plan.contains("  env TOKEN=(sensitive)"), "{plan}");
    assert!(!plan.contains(secret), "{plan}");

    env.cmd()
        .env("SETUP_SECRET", secret)
        .args(["apply", "--auto-approve"])
        .assert()
        .success();
    // The record follows the apply: the next change diffs against version-two.
    let out = env
        .cmd()
        .env("SETUP_SECRET", secret)
        .args(["plan", "--format", "json"])
        .output()
        .expect("plan");
    let plan: Value = serde_json::from_slice(&out.stdout).expect("plan JSON");
    assert_eq!(
        plan["member_changes"][0]["change"]["commands_before"],
        serde_json::json!([
            "env MODE=\"two\"",
            "env TOKEN=(sensitive)",
            "run echo version-two",
            "sync off"
        ])
    );
    env.cmd()
        .env("SETUP_SECRET", secret)
        .args(["destroy", "--auto-approve"])
        .assert()
        .success();
}

#[test]
fn failing_setup_fails_the_apply_skips_dependents_and_taints_the_member() {
    let env = Env::new();
    env.write_spec(
        "version: 1\npond: taint\ndefaults: { sync: false }\nmembers:\n  - slug: db\n    setup: [ \"echo starting\", \"exit 3\" ]\n  - slug: api\n    depends_on: [db]\n    setup: [ \"echo api-setup-ran\" ]\n",
    );
    let out = env.run(&["apply", "--auto-approve"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("setup step 2 (`exit 3`) exited with 3"),
        "{err}"
    );
    assert!(err.contains("api: setup skipped"), "{err}");
    assert!(!err.contains("api-setup-ran"), "{err}");
    let plan = env.plan_json(&env.work().join("pond.yaml"));
    assert_eq!(actions(&plan, "db"), ["delete", "create"]);
    let reasons = plan["member_changes"][0]["change"]["reasons"].to_string();
    assert!(
        reasons.contains("tainted") && reasons.contains("setup step 2 exit 3"),
        "{reasons}"
    );
    env.cmd()
        .args(["destroy", "--auto-approve"])
        .assert()
        .success();
    assert!(env.lease_dirs().is_empty());
}

#[test]
fn saved_plans_apply_exactly_and_stale_ones_are_refused() {
    let env = Env::new();
    env.write_spec(V1);
    let planfile = env.work().join("tfplan.json");
    env.cmd()
        .args(["plan", "-o", planfile.to_str().expect("utf-8")])
        .assert()
        .success();
    env.cmd()
        .args(["apply", planfile.to_str().expect("utf-8")])
        .assert()
        .success();
    // A plan made now, then the pond changes underneath it.
    env.write_spec(&V1.replace("[8080]", "[8081]"));
    env.cmd()
        .args(["plan", "-o", planfile.to_str().expect("utf-8")])
        .assert()
        .success();
    env.write_spec(&V1.replace("[8080]", "[8082]"));
    env.cmd()
        .args(["apply", "--auto-approve"])
        .assert()
        .success();
    env.write_spec(&V1.replace("[8080]", "[8081]"));
    let out = env.run(&["apply", planfile.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("Saved plan is stale"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("changed"),
        "{}",
        text(&out.stderr)
    );
    env.cmd()
        .args(["destroy", "--auto-approve"])
        .assert()
        .success();
}

#[test]
fn a_second_concurrent_apply_fails_fast_naming_the_holder() {
    let env = Env::new();
    env.write_spec("version: 1\npond: busy\ndefaults: { sync: false }\nmembers:\n  - slug: slow\n    setup: [ \"sleep 6\" ]\n");
    let first = env
        .std_cmd()
        .args(["apply", "--auto-approve"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("first apply");
    let lock = env.state().join("ponds/busy/lock");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&lock).map_or(true, |t| t.is_empty()) && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let started = Instant::now();
    let out = env.run(&["apply", "--auto-approve"]);
    assert!(started.elapsed() < Duration::from_secs(4), "fails fast");
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("is locked by pid") && err.contains(&first.id().to_string()),
        "{err}"
    );
    assert!(
        err.contains("crabbox apply") || err.contains("apply --auto-approve"),
        "{err}"
    );
    let status = first.wait_with_output().expect("first finishes").status;
    assert!(status.success());
    env.cmd()
        .args(["destroy", "--auto-approve"])
        .assert()
        .success();
}

#[test]
fn interrupting_an_apply_leaves_only_labelled_leases_and_the_next_apply_converges() {
    let env = Env::new();
    let mut spec = String::from("version: 1\npond: intr\ndefaults: { sync: false }\nmembers:\n");
    for i in 0..4 {
        spec.push_str(&format!("  - slug: m{i}\n    setup: [ \"sleep 1\" ]\n"));
    }
    spec.push_str(
        "  - slug: late\n    depends_on: [m0, m1, m2, m3]\n    setup: [ \"echo late\" ]\n",
    );
    env.write_spec(&spec);
    let child = env
        .std_cmd()
        .args(["apply", "--auto-approve"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("apply");
    std::thread::sleep(Duration::from_millis(600));
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(
            libc::pid_t::try_from(child.id()).expect("pid"),
            libc::SIGINT,
        )
    };
    let out = child.wait_with_output().expect("exits");
    assert_ne!(
        out.status.code(),
        Some(0),
        "an interrupted apply is not a success"
    );
    assert!(
        text(&out.stderr).contains("Interrupt received"),
        "{}",
        text(&out.stderr)
    );
    for dir in env.lease_dirs() {
        let lease: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("lease.json")).expect("every lease has its labels"),
        )
        .expect("JSON");
        let labels = lease["labels"].as_object().expect("labels");
        assert_eq!(labels["crabbox"], "true");
        assert_eq!(labels["pond"], "intr");
    }
    let out = env.run(&["apply", "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    env.cmd()
        .args(["plan", "--detailed-exitcode"])
        .assert()
        .code(0);
    assert_eq!(env.lease_dirs().len(), 5);
    env.cmd()
        .args(["destroy", "--auto-approve"])
        .assert()
        .success();
}

#[test]
fn run_streams_output_and_returns_the_exit_code_and_sync_copies_the_repository() {
    let env = Env::new();
    std::fs::write(env.work().join("hello.txt"), "hello from the repo\n").expect("file");
    env.write_spec(
        "version: 1\npond: runner\nmembers:\n  - slug: box\n    setup: [ \"cat hello.txt\" ]\n",
    );
    let out = env.run(&["apply", "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("box | hello from the repo"),
        "{}",
        text(&out.stderr)
    );
    env.cmd()
        .args([
            "run",
            "--pond",
            "runner",
            "--id",
            "box",
            "--",
            "echo out-$CRABBOX_SLUG; exit 7",
        ])
        .assert()
        .code(7)
        .stdout(predicates::str::contains("out-box"));
    env.cmd()
        .args(["release", "--pond", "runner", "--id", "box"])
        .assert()
        .success();
    assert!(env.lease_dirs().is_empty());
}

#[test]
fn wait_timeout_caps_ready_checks_and_a_member_that_never_gets_ready_is_tainted() {
    let env = Env::new();
    env.write_spec("version: 1\npond: wait\ndefaults: { sync: false }\nmembers:\n  - slug: deaf\n    ready: { tcp: 9, timeout: 10m }\n");
    let started = Instant::now();
    let out = env.run(&["apply", "--auto-approve", "--wait-timeout", "1s"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "did not wait for the member's 10m"
    );
    assert!(
        text(&out.stderr).contains("not ready after 1s (tcp 9)"),
        "{}",
        text(&out.stderr)
    );
    let plan = env.plan_json(&env.work().join("pond.yaml"));
    assert_eq!(actions(&plan, "deaf"), ["delete", "create"]);
    assert!(
        plan["member_changes"][0]["change"]["reasons"]
            .to_string()
            .contains("ready timeout")
    );
    env.cmd()
        .args(["destroy", "--auto-approve"])
        .assert()
        .success();
}

#[test]
fn run_forwards_allowed_env_without_printing_it() {
    let env = Env::new();
    env.write_spec("version: 1\npond: fwd\ndefaults: { sync: false }\nmembers:\n  - slug: box\n");
    env.cmd()
        .args(["apply", "--auto-approve"])
        .assert()
        .success();
    let out = env
        .cmd()
        .env("API_TOKEN", "s3cr3t-value")
        .args([
            "run",
            "--pond",
            "fwd",
            "--id",
            "box",
            "--allow-env",
            "API_TOKEN",
            "--allow-env",
            "MISSING_ONE",
            "--",
            "test \"$API_TOKEN\" = s3cr3t-value && echo token-arrived",
        ])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("token-arrived"));
    let err = text(&out.stderr);
    assert!(
        err.contains("forwarding API_TOKEN (set, 12 chars)")
            && err.contains("not forwarding MISSING_ONE (unset)"),
        "{err}"
    );
    assert!(!err.contains("s3cr3t-value") && !text(&out.stdout).contains("s3cr3t-value"));
    env.cmd()
        .args(["destroy", "--auto-approve"])
        .assert()
        .success();
}

#[test]
fn sweep_destroys_expired_ponds_and_closed_pull_requests_only() {
    let env = Env::new();
    for (pond, ttl) in [
        ("pr-1", "1s"),
        ("pr-2", "1h"),
        ("pr-3", "1h"),
        ("staging", "1h"),
    ] {
        let spec = env.work().join(format!("{pond}.yaml"));
        std::fs::write(&spec, format!("version: 1\npond: {pond}\ndefaults: {{ sync: false, ttl: {ttl} }}\nmembers:\n  - slug: a\n  - slug: b\n")).expect("spec");
        env.cmd()
            .args([
                "apply",
                "--auto-approve",
                "-f",
                spec.to_str().expect("utf-8"),
            ])
            .assert()
            .success();
    }
    std::thread::sleep(Duration::from_millis(2100));
    let out = env.run(&["sweep", "--dry-run"]);
    assert!(out.status.success());
    let plan = text(&out.stdout);
    assert!(
        plan.contains("would destroy pond pr-1: every lease expired (2 leases)"),
        "{plan}"
    );
    assert!(
        plan.contains("keeping pond pr-2")
            && plan.contains("keeping pond pr-3")
            && plan.contains("keeping pond staging"),
        "{plan}"
    );
    assert!(plan.contains("Sweep plan: 1 pond to destroy."), "{plan}");
    assert_eq!(env.lease_dirs().len(), 8, "a dry run destroys nothing");

    let out = env.run(&["sweep", "--prefix", "pr-", "--keep", "pr-2,pr-40"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report = text(&out.stdout);
    assert!(
        report.contains("destroying pond pr-1")
            && report.contains("destroying pond pr-3: matches --prefix pr- and is not kept"),
        "{report}"
    );
    assert!(
        report.contains("Sweep complete! Ponds: 2 destroyed, 0 failed."),
        "{report}"
    );
    let mut left: Vec<String> = env
        .lease_dirs()
        .iter()
        .map(|d| {
            let lease: Value = serde_json::from_str(
                &std::fs::read_to_string(d.join("lease.json")).expect("lease"),
            )
            .expect("JSON");
            lease["labels"]["pond"].as_str().expect("pond").to_owned()
        })
        .collect();
    left.sort();
    assert_eq!(left, ["pr-2", "pr-2", "staging", "staging"]);
}

#[test]
fn continue_on_error_finishes_independent_members_and_skips_shared_dependents() {
    let env = Env::new();
    env.write_spec(
        "version: 1\npond: coe\ndefaults: { sync: false }\nmembers:\n  - slug: bad\n    setup: [ \"exit 1\" ]\n  - slug: slow\n    setup: [ \"sleep 1\" ]\n  - slug: both\n    depends_on: [bad, slow]\n    setup: [ \"echo both-ran\" ]\n",
    );
    let out = env.run(&["apply", "--auto-approve", "--continue-on-error"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("slow: Marked ready"),
        "an independent member still finishes: {err}"
    );
    assert!(
        err.contains("both: setup skipped") && !err.contains("both-ran"),
        "{err}"
    );
    assert!(err.contains("Apply incomplete! Members: 3 added"), "{err}");
    env.cmd()
        .args(["destroy", "--auto-approve"])
        .assert()
        .success();
}

/// Every path under `dir` (relative), following no symlinks.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).expect("under dir").to_path_buf());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(p);
            }
        }
    }
    out
}

/// The local example, with sync on, applied as three ponds from the
/// directory that holds the state directory and `HOME`: no workspace gets
/// crabbox's own state, and (outside git) ignore files are honoured.
fn sync_from_a_directory_holding_the_state(git: bool) {
    let env = Env::new();
    let base = env.dir.path();
    let example =
        std::fs::read_to_string(root().join("examples/local/pond.yaml")).expect("example");
    assert!(
        example.contains("  sync: false\n"),
        "the example turns sync off"
    );
    let spec = base.join("pond.yaml");
    std::fs::write(&spec, example.replace("  sync: false\n", "  sync: true\n")).expect("spec");
    std::fs::write(base.join(".gitignore"), "secret.log\n").expect(".gitignore");
    std::fs::write(base.join("secret.log"), "not for leases\n").expect("secret");
    std::fs::write(base.join("app.txt"), "synced\n").expect("app");
    if git {
        let out = StdCommand::new("git")
            .args(["init", "-q"])
            .current_dir(base)
            .output()
            .expect("git");
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let spec = spec.to_str().expect("utf-8");
    let users = ["one", "two", "three"];
    for user in users {
        let out = env
            .cmd()
            .env("USER", user)
            .current_dir(base)
            .args(["apply", "-f", spec, "--auto-approve"])
            .timeout(Duration::from_secs(120))
            .output()
            .expect("runs");
        assert!(
            out.status.success(),
            "apply as {user}: {}",
            text(&out.stderr)
        );
    }
    let leases = env.lease_dirs();
    assert_eq!(leases.len(), 9, "three ponds of three members");
    for lease in &leases {
        let workspace = lease.join("workspace");
        let files = tree(&workspace);
        assert!(
            files.contains(&PathBuf::from("app.txt")),
            "the repository was synced into {}: {files:?}",
            workspace.display()
        );
        let own: Vec<&PathBuf> = files
            .iter()
            .filter(|p| p.ends_with("state") || p.ends_with(".crabbox"))
            .collect();
        assert!(own.is_empty(), "{}: {own:?}", workspace.display());
        if !git {
            assert!(
                !files.contains(&PathBuf::from("secret.log")),
                "a .gitignored file is not synced outside git"
            );
        }
    }
    for user in users {
        let out = env
            .cmd()
            .env("USER", user)
            .current_dir(base)
            .args(["destroy", "-f", spec, "--auto-approve"])
            .timeout(Duration::from_secs(120))
            .output()
            .expect("runs");
        assert!(out.status.success(), "destroy: {}", text(&out.stderr));
    }
    assert!(env.lease_dirs().is_empty());
}

#[test]
fn sync_never_copies_crabbox_state_outside_git() {
    sync_from_a_directory_holding_the_state(false);
}

#[test]
fn sync_never_copies_crabbox_state_in_a_git_work_tree() {
    sync_from_a_directory_holding_the_state(true);
}

#[test]
fn local_commands_get_a_clean_environment_with_what_the_spec_passes() {
    let env = Env::new();
    env.write_spec(
        "version: 1\npond: clean\ndefaults: { sync: false }\nmembers:\n  - slug: box\n    pass_env: [PASSED_ONE]\n    setup: [ \"echo token=$${HCLOUD_TOKEN:-none} passed=$${PASSED_ONE:-none} path=$${PATH:+set}; sleep 1\" ]\n",
    );
    // The apply holds the pond lock while its setup sleeps: the holder
    // record is read meanwhile.
    let child = env
        .std_cmd()
        .env("HCLOUD_TOKEN", "secret-token-4711")
        .env("PASSED_ONE", "yes-passed")
        .args(["apply", "--auto-approve", "--var", "SECRET=hidden-value-99"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("apply");
    let lock = env.state().join("ponds/clean/lock");
    let deadline = Instant::now() + Duration::from_secs(30);
    let holder = loop {
        let text = std::fs::read_to_string(&lock).unwrap_or_default();
        if !text.is_empty() || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(holder.contains("SECRET=…"), "{holder}");
    assert!(!holder.contains("hidden-value-99"), "{holder}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&lock).expect("lock file").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "lock file mode {mode:o}");
    let out = child.wait_with_output().expect("apply ends");
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("box | token=none passed=yes-passed path=set"),
        "{err}"
    );
    let run = |allow: &[&str]| {
        let mut args = vec!["run", "--pond", "clean", "--id", "box"];
        args.extend_from_slice(allow);
        args.extend_from_slice(&["--", "env"]);
        let out = env
            .cmd()
            .env("HCLOUD_TOKEN", "secret-token-4711")
            .args(&args)
            .output()
            .expect("run");
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let plain = run(&[]);
    assert!(!plain.contains("secret-token-4711"), "{plain}");
    assert!(plain.contains("CRABBOX_SLUG=box"), "{plain}");
    let allowed = run(&["--allow-env", "HCLOUD_TOKEN"]);
    assert!(
        allowed.contains("HCLOUD_TOKEN=secret-token-4711"),
        "--allow-env forwards it: {allowed}"
    );
    env.cmd()
        .args(["destroy", "--auto-approve"])
        .assert()
        .success();
}

/// Pids of processes whose command line contains `needle`.
fn pids_running(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            out.push(pid);
        }
    }
    out
}

fn wait_for(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    check()
}

fn signal(child: &std::process::Child, sig: i32) {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(libc::pid_t::try_from(child.id()).expect("pid"), sig) };
}

/// Starts `apply` and returns once its setup wrote `start` to `log` and a
/// process carrying `marker` runs.
fn apply_until_setup_runs(env: &Env, log: &Path, marker: &str) -> std::process::Child {
    let child = env
        .std_cmd()
        .args(["apply", "--auto-approve"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("apply");
    assert!(
        wait_for(Duration::from_secs(30), || std::fs::read_to_string(log)
            .is_ok_and(|t| t.contains("start"))),
        "setup started"
    );
    assert!(!pids_running(marker).is_empty(), "the step runs");
    child
}

#[test]
fn a_second_interrupt_stops_the_commands_the_run_started_and_exits_130() {
    let env = Env::new();
    let log = env.dir.path().join("steps.log");
    env.write_spec(&format!(
        "version: 1\npond: twice\ndefaults: {{ sync: false }}\nmembers:\n  - slug: slow\n    setup: [ \"echo start >> {}; sleep 30 # twice-marker\" ]\n",
        log.display()
    ));
    let child = apply_until_setup_runs(&env, &log, "twice-marker");
    signal(&child, libc::SIGINT);
    std::thread::sleep(Duration::from_millis(300));
    signal(&child, libc::SIGINT);
    let out = child.wait_with_output().expect("exits");
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    assert!(
        wait_for(Duration::from_secs(3), || pids_running("twice-marker")
            .is_empty()),
        "no process of the setup remains: {:?}",
        pids_running("twice-marker")
    );
    env.cmd()
        .args(["destroy", "--auto-approve"])
        .assert()
        .success();
}

#[test]
fn a_sigkilled_apply_takes_its_setup_along_and_the_next_apply_runs_the_step_once() {
    let env = Env::new();
    let log = env.dir.path().join("steps.log");
    env.write_spec(&format!(
        "version: 1\npond: killed\ndefaults: {{ sync: false }}\nmembers:\n  - slug: slow\n    setup: [ \"echo start >> {log}; : killed-marker; sleep 4; echo end >> {log}\" ]\n",
        log = log.display()
    ));
    let first = apply_until_setup_runs(&env, &log, "killed-marker");
    signal(&first, libc::SIGKILL);
    let _ = first.wait_with_output();
    assert!(
        wait_for(Duration::from_secs(3), || pids_running("killed-marker")
            .is_empty()),
        "the step died with crabbox: {:?}",
        pids_running("killed-marker")
    );

    let second = env
        .std_cmd()
        .args(["apply", "--auto-approve"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("apply");
    assert!(
        wait_for(Duration::from_secs(30), || std::fs::read_to_string(&log)
            .is_ok_and(|t| t.matches("start").count() == 2)),
        "the step ran again"
    );
    let out = second.wait_with_output().expect("apply ends");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let steps = std::fs::read_to_string(&log).expect("log");
    assert_eq!(steps, "start\nstart\nend\n", "the old step never finished");
    env.cmd()
        .args(["destroy", "--auto-approve"])
        .assert()
        .success();
}

/// A record of what ran that does not read is said, not taken for "never
/// recorded".
#[test]
fn an_unreadable_record_of_what_ran_is_a_warning() {
    let env = Env::new();
    env.write_spec(V1);
    env.cmd()
        .args(["apply", "--auto-approve"])
        .assert()
        .success();
    let claim = std::fs::read_dir(env.state().join("claims"))
        .expect("claims dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .next()
        .expect("a claim");
    let mut doc: Value =
        serde_json::from_str(&std::fs::read_to_string(&claim).expect("claim")).expect("JSON");
    let record = &mut doc["labels"]["crabbox_claim_json.crabboxCommands"];
    assert!(
        record.is_string(),
        "the record is folded into the labels: {doc}"
    );
    *record = Value::String("{\"not\": \"a list\"}".to_owned());
    std::fs::write(&claim, serde_json::to_string_pretty(&doc).expect("JSON")).expect("written");
    env.write_spec(&V1.replace("version-one", "version-two"));
    let out = env.run(&["plan"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let all = text(&out.stdout) + &text(&out.stderr);
    assert!(
        all.contains("records what ran in a form this crabbox cannot read"),
        "{all}"
    );
    env.cmd()
        .args(["destroy", "--auto-approve"])
        .assert()
        .success();
}
