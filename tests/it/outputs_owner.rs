//! Who writes a pond's rendered outputs, and that every destroy removes
//! them: the SSH mesh owns `hosts`/`env` from `pond connect` (tunnels or
//! not) until `pond disconnect`, the plan shows only what apply writes, and
//! `destroy --pond NAME` (no spec) removes what the spec's apply wrote.
//! A pond with nothing is reported as such and nothing is created for it.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use assert_cmd::Command;

use crate::sshd::{TestSshd, free_port};

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        let env = Self {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        for d in ["home", "work", "remote"] {
            std::fs::create_dir_all(env.dir.path().join(d)).expect("dirs");
        }
        env
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::from_std(crate::support::crabbox_in(self.dir.path()))
            .env_remove("HCLOUD_TOKEN")
            .env_remove("HETZNER_TOKEN")
            .timeout(Duration::from_secs(120))
            .args(args)
            .output()
            .expect("runs")
    }

    /// Runs and asserts success; returns stderr.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let err = text(&out.stderr);
        assert!(
            out.status.success(),
            "{args:?}: {}\n{err}",
            text(&out.stdout)
        );
        err
    }

    fn files_in(&self, dir: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.path(dir))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn after_pond_connect_the_plan_is_clean_and_destroy_by_name_removes_the_outputs() {
    let sshd = TestSshd::start();
    let env = Env::new();
    let service_port = free_port();
    std::fs::write(
        env.path("work/pond.yaml"),
        format!(
            r#"version: 1
pond: mesh
defaults: {{ sync: false }}
members:
  - slug: builder
    provider: ssh
    ssh: {{ host: 127.0.0.1, port: {port}, user: {user}, key: "{key}", work_root: "{remote}" }}
    expose: [{service_port}]
  - slug: client
    setup: [ "true" ]
"#,
            port = sshd.port,
            user = sshd.user,
            key = sshd.key.display(),
            remote = env.path("remote").display(),
        ),
    )
    .expect("spec");
    env.ok(&["apply", "--auto-approve"]);
    let pond_dir = "home/.crabbox/pond/mesh";
    let rendered_env = std::fs::read_to_string(env.path(pond_dir).join("env")).expect("env");

    // `connect --json` starts no tunnels but writes the mesh's hosts/env:
    // from then on they are the mesh's, and the plan has nothing to do.
    env.ok(&["pond", "connect", "mesh", "--json"]);
    let mesh_env = std::fs::read_to_string(env.path(pond_dir).join("env")).expect("env");
    assert_ne!(mesh_env, rendered_env, "the mesh wrote its own env");
    let out = env.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("No changes."),
        "{}",
        text(&out.stdout)
    );
    // Apply leaves them to the mesh too.
    env.ok(&["apply", "--auto-approve"]);
    assert_eq!(
        std::fs::read_to_string(env.path(pond_dir).join("env")).expect("env"),
        mesh_env
    );

    // `disconnect` hands them back: the plan says it writes them, and why.
    env.ok(&["pond", "disconnect", "mesh"]);
    let out = env.run(&["plan", "--detailed-exitcode"]);
    let plan = text(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{plan}");
    assert!(
        plan.contains("Plan: 0 to add, 0 to change, 0 to destroy. 2 output files to write."),
        "{plan}"
    );
    assert!(
        !plan.contains("Member actions are indicated"),
        "no empty legend: {plan}"
    );
    env.ok(&["apply", "--auto-approve"]);
    assert_eq!(
        std::fs::read_to_string(env.path(pond_dir).join("env")).expect("env"),
        rendered_env
    );
    let out = env.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));

    // The CI example's form: by name, without the spec.
    env.ok(&["pond", "connect", "mesh", "--json"]);
    std::fs::remove_file(env.path("work/pond.yaml")).expect("no spec");
    env.ok(&["destroy", "--pond", "mesh", "--auto-approve"]);
    assert_eq!(
        env.files_in(pond_dir),
        Vec::<String>::new(),
        "no output file is left"
    );
}

#[test]
fn destroy_by_name_removes_outputs_in_a_custom_directory_and_templates() {
    let env = Env::new();
    std::fs::write(
        env.path("work/app.env.hbs"),
        "{{#each members}}{{slug}}={{host}}\n{{/each}}",
    )
    .expect("template");
    let outputs = env.path("custom/out");
    std::fs::write(
        env.path("work/pond.yaml"),
        format!(
            r#"version: 1
pond: named
defaults: {{ provider: local, sync: false }}
outputs:
  dir: "{}"
  templates: [ {{ src: app.env.hbs, dest: conf/app.env }} ]
members:
  - slug: one
"#,
            outputs.display()
        ),
    )
    .expect("spec");
    env.ok(&["apply", "--auto-approve"]);
    assert_eq!(
        env.files_in("custom/out"),
        ["conf", "env", "hosts", "peers.json"]
    );
    std::fs::write(env.path("custom/keep.txt"), "the user's").expect("user file");

    std::fs::remove_file(env.path("work/pond.yaml")).expect("no spec");
    let err = env.ok(&["destroy", "--pond", "named", "--auto-approve"]);
    assert!(
        err.contains("Destroy complete! Members: 1 destroyed."),
        "{err}"
    );
    assert!(!outputs.exists(), "{:?}", env.files_in("custom/out"));
    assert_eq!(env.files_in("custom"), ["keep.txt"]);
    assert!(!env.path("home/.crabbox/pond/named").exists());
}

#[test]
fn destroying_a_pond_that_has_nothing_says_so_and_creates_nothing() {
    let env = Env::new();
    let out = env.run(&["destroy", "--pond", "no-such-pond", "--auto-approve"]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(
        err.trim_end(),
        "no pond named `no-such-pond` found; known ponds: none"
    );
    assert!(!env.path("state/ponds/no-such-pond").exists());
    let out = env.run(&[
        "destroy",
        "--pond",
        "no-such-pond",
        "--auto-approve",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(summary["type"], "change_summary");
    assert_eq!(summary["destroyed"], 0);
    assert!(!env.path("state/ponds/no-such-pond").exists());

    std::fs::write(
        env.path("work/pond.yaml"),
        "version: 1\npond: demo-pond\ndefaults: { provider: local, sync: false }\nmembers:\n  - slug: one\n",
    )
    .expect("spec");
    env.ok(&["apply", "--auto-approve"]);
    let out = env.run(&["destroy", "--pond", "demo-pnod", "--auto-approve"]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("no pond named `demo-pnod` found; known ponds: demo-pond"),
        "{err}"
    );
    assert!(err.contains("did you mean `demo-pond`?"), "{err}");
    assert!(!err.contains("Destroy complete"), "{err}");
    assert!(
        text(&out.stdout).is_empty(),
        "no plan: {}",
        text(&out.stdout)
    );
    assert!(!env.path("state/ponds/demo-pnod").exists());
    assert_eq!(env.files_in("state/ponds"), ["demo-pond"]);

    env.ok(&["destroy", "--pond", "demo-pond", "--auto-approve"]);
}

/// An output file that is there but cannot be read (here a directory in
/// its place) stops the plan: it is not a file to create, and what apply
/// would replace is unknown.
#[test]
fn an_output_file_that_cannot_be_read_stops_the_plan() {
    let env = Env::new();
    std::fs::write(
        env.path("work/pond.yaml"),
        "version: 1\npond: unread\ndefaults: { provider: local, sync: false }\nmembers:\n  - slug: one\n",
    )
    .expect("spec");
    env.ok(&["apply", "--auto-approve"]);
    let hosts = env.path("home/.crabbox/pond/unread/hosts");
    std::fs::remove_file(&hosts).expect("hosts was written");
    std::fs::create_dir(&hosts).expect("a directory in its place");
    let out = env.run(&["plan"]);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("cannot read the output file"), "{err}");
    assert!(err.contains("unread/hosts"), "{err}");
    assert!(
        !text(&out.stdout).contains("to write"),
        "no plan: {}",
        text(&out.stdout)
    );
    std::fs::remove_dir(&hosts).expect("the directory");
    env.ok(&["destroy", "--auto-approve"]);
}
