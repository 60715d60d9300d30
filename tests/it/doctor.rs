//! `crabbox doctor --pond`: the reachability matrix of a pond with a
//! `local` member and a static `ssh` member on the tests' sshd, tried from
//! inside each member; a stopped service turns its paths down and the exit
//! code to 1.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use assert_cmd::Command;
use serde_json::Value;

use crate::sshd::{TestSshd, free_port};

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::from_std(crate::support::crabbox_in(self.dir.path()))
            .env_remove("HCLOUD_TOKEN")
            .env_remove("HETZNER_TOKEN")
            .env_remove("TS_API_KEY")
            .timeout(Duration::from_secs(120))
            .args(args)
            .output()
            .expect("runs")
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// (from, to, status) of every `reach` check of a doctor document.
fn matrix(doc: &Value) -> Vec<(String, String, String)> {
    let mut out: Vec<_> = doc["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["check"] == "reach")
        .map(|c| {
            (
                c["details"]["from"].as_str().unwrap_or("").to_owned(),
                c["details"]["to"].as_str().unwrap_or("").to_owned(),
                c["status"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Kills the processes whose command line holds `needle`.
fn kill_matching(needle: &str) {
    for entry in std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
    {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let matches = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
            String::from_utf8_lossy(&c)
                .replace('\0', " ")
                .contains(needle)
        });
        if matches && pid != i32::try_from(std::process::id()).expect("pid") {
            // SAFETY: sending a signal has no memory effects.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

#[test]
fn the_matrix_is_tried_from_inside_each_member_and_a_stopped_service_fails_it() {
    let sshd = TestSshd::start();
    let env = Env {
        dir: tempfile::tempdir().expect("tempdir"),
    };
    for d in ["home", "work", "remote"] {
        std::fs::create_dir_all(env.path(d)).expect("dirs");
    }
    let (db_port, web_port) = (free_port(), free_port());
    let pond = format!("doctor-{}", std::process::id());
    std::fs::write(
        env.path("work/pond.yaml"),
        format!(
            r#"version: 1
pond: {pond}
defaults: {{ sync: false }}
members:
  - slug: db
    provider: ssh
    ssh: {{ host: 127.0.0.1, port: {port}, user: {user}, key: "{key}", work_root: "{remote}" }}
    expose: [{db_port}]
    setup:
      - run: exec python3 -m http.server {db_port} --bind 127.0.0.1
        background: true
    ready: {{ tcp: {db_port}, timeout: 30s }}
  - slug: web
    expose: [{web_port}]
    setup:
      - run: exec python3 -m http.server {web_port} --bind "$CRABBOX_BIND_ADDR"
        background: true
    ready: {{ tcp: {web_port}, timeout: 30s }}
"#,
            port = sshd.port,
            user = sshd.user,
            key = sshd.key.display(),
            remote = env.path("remote").display(),
        ),
    )
    .expect("spec");
    let out = env.run(&["apply", "--auto-approve"]);
    assert!(out.status.success(), "apply: {}", text(&out.stderr));

    // Everything answers: exit 0, both directions ok.
    let out = env.run(&["doctor", "--pond", &pond, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let doc: Value = serde_json::from_slice(&out.stdout).expect("doctor JSON");
    assert_eq!(doc["ok"], true, "{doc}");
    assert_eq!(
        matrix(&doc),
        [
            ("db".to_owned(), "web".to_owned(), "ok".to_owned()),
            ("web".to_owned(), "db".to_owned(), "ok".to_owned()),
        ],
        "{doc}"
    );
    let pond_check = doc["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["check"] == "pond")
        .expect("the pond check");
    assert_eq!(
        pond_check["status"], "skip",
        "no Tailscale-capable member: {doc}"
    );
    let web_to_db = doc["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["details"]["from"] == "web")
        .expect("web → db");
    assert_eq!(
        web_to_db["details"]["address"],
        format!("127.0.0.1:{db_port}"),
        "the address web's own environment holds: {doc}"
    );
    assert_eq!(web_to_db["details"]["plane"], "ssh");

    // db's service stops: the path to it is down, the other still up,
    // and the table says which.
    kill_matching(&format!("http.server {db_port}"));
    let out = env.run(&["doctor", "--pond", &pond]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let row = |from: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("{from} ")))
            .unwrap_or_else(|| panic!("a row from {from}:\n{table}"))
            .to_owned()
    };
    assert!(row("web").ends_with("failed"), "{table}");
    assert!(row("db").ends_with("ok"), "{table}");
    assert!(table.contains("FROM"), "{table}");
    assert!(text(&out.stderr).contains("doctor found problems"));

    let out = env.run(&["destroy", "--auto-approve"]);
    assert!(out.status.success(), "destroy: {}", text(&out.stderr));
}

/// The `pond` check against the fake Tailscale API, for a pond with a
/// Hetzner member (a provider that joins tailnets): the rows missing fail
/// it and print what to add, the rows present pass it, and no key or a
/// control plane without the policy API skip it.
#[test]
fn the_pond_check_reads_the_tailnet_policy_for_the_pond_s_tag() {
    use crate::fake_hetzner::{FakeConfig, TOKEN, start};
    use crate::fake_tailscale::{API_KEY, FakeTailscale};

    let rt = crate::support::runtime();
    let hetzner = rt.block_on(start(FakeConfig::default()));
    hetzner.handle.plant_server(
        "crabbox-alpha-db",
        &[
            ("crabbox", "true"),
            ("created_by", "crabbox"),
            ("pond", "alpha"),
            ("slug", "db"),
            ("lease", "cbx_0000000000a1"),
            ("provider", "hetzner"),
            ("state", "ready"),
        ],
    );
    let tailscale = rt.block_on(FakeTailscale::start(r#"{"acls": []}"#));
    let env = Env {
        dir: tempfile::tempdir().expect("tempdir"),
    };
    for d in ["home", "work"] {
        std::fs::create_dir_all(env.path(d)).expect("dirs");
    }
    let doctor = |key: Option<&str>| {
        let mut c = Command::from_std(crate::support::crabbox_in(env.dir.path()));
        c.env("HCLOUD_TOKEN", TOKEN)
            .env("HCLOUD_ENDPOINT", &hetzner.base_url)
            .env("CRABBOX_OWNER", "yossi.eliaz@incredibuild.com")
            .env("CRABBOX_TS_API_URL", &tailscale.url)
            .env_remove("TS_API_KEY")
            .timeout(Duration::from_secs(60))
            .args(["doctor", "--pond", "alpha", "--json"]);
        if let Some(key) = key {
            c.env("TS_API_KEY", key);
        }
        let out = c.output().expect("runs");
        let doc: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("doctor JSON ({e}): {}", text(&out.stderr)));
        let check = doc["checks"][0].clone();
        assert_eq!(check["check"], "pond", "{doc}");
        (out.status.code(), check)
    };
    let tag = "tag:cbx-pond-xyuoqa6-alpha";

    let (code, check) = doctor(Some(API_KEY));
    assert_eq!(code, Some(1), "{check}");
    assert_eq!(check["status"], "failed");
    assert_eq!(check["details"]["tag"], tag);
    let message = check["message"].as_str().expect("message");
    assert!(
        message.contains("CRABBOX_POND_ACL_BOOTSTRAP=1"),
        "{message}"
    );
    assert!(
        message.contains(&format!("\"{tag}\": [\"autogroup:admin\"]")),
        "the snippet: {message}"
    );
    assert_eq!(tailscale.log.count("POST", "/"), 0, "doctor only reads");

    // The rows added (as the bootstrap would): the check passes.
    let api = crabbox_providers::tailnet::api::TailnetApi::new(
        &crabbox_providers::tailnet::Settings::from_env(
            &[
                ("CRABBOX_TS_API_URL", tailscale.url.as_str()),
                ("TS_API_KEY", API_KEY),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        ),
    )
    .expect("api");
    rt.block_on(crabbox_providers::tailnet::api::ensure_pond_rows(&api, tag))
        .expect("rows added");
    let (code, check) = doctor(Some(API_KEY));
    assert_eq!(code, Some(0), "{check}");
    assert_eq!(check["status"], "ok");
    assert_eq!(check["details"]["mode"], "auto-managed");

    let (code, check) = doctor(None);
    assert_eq!(
        (code, check["status"].as_str()),
        (Some(0), Some("skip")),
        "{check}"
    );
    assert_eq!(check["details"]["reason"], "ts_api_key_missing");

    tailscale.without_policy_api();
    let (code, check) = doctor(Some(API_KEY));
    assert_eq!(
        (code, check["status"].as_str()),
        (Some(0), Some("skip")),
        "{check}"
    );
    assert_eq!(check["details"]["reason"], "control_plane_incompatible");
}
