//! End to end over real SSH: a pond with a `local` member and a static `ssh`
//! member on the test sshd, setup in dependency order, peers, the SSH mesh
//! (`pond connect --export` / `pond disconnect`), and a clean destroy.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use assert_cmd::Command;
use serde_json::{Value, json};

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

    fn cmd(&self) -> Command {
        let mut c = Command::from_std(crate::support::crabbox_in(self.dir.path()));
        c.env_remove("HCLOUD_TOKEN")
            .env_remove("HETZNER_TOKEN")
            .timeout(Duration::from_secs(120));
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("runs")
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Processes whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                String::from_utf8_lossy(&c)
                    .replace('\0', " ")
                    .contains(needle)
            })
        })
        .collect()
}

fn http_get(addr: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).expect("connect through the tunnel");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(s, "GET /index.txt HTTP/1.0\r\nHost: x\r\n\r\n").expect("request");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn spec(sshd: &TestSshd, remote: &Path, service_port: u16) -> String {
    format!(
        r#"version: 1
pond: mesh
defaults: {{ sync: false }}
members:
  - slug: builder
    provider: ssh
    ssh: {{ host: 127.0.0.1, port: {port}, user: {user}, key: "{key}", work_root: "{remote}" }}
    expose: [{service_port}]
    setup:
      - echo "built on $(hostname) as $CRABBOX_SLUG" > index.txt
      - run: exec python3 -m http.server {service_port} --bind 127.0.0.1
        background: true
    ready: {{ tcp: {service_port}, timeout: 30s }}
  - slug: client
    depends_on: [builder]
    setup:
      - echo "builder is at $CRABBOX_POND_BUILDER_{service_port}"
"#,
        port = sshd.port,
        user = sshd.user,
        key = sshd.key.display(),
        remote = remote.display(),
    )
}

#[test]
fn static_ssh_member_with_local_dependent_mesh_and_destroy() {
    let sshd = TestSshd::start();
    let env = Env::new();
    let service_port = free_port();
    std::fs::write(
        env.path("work/pond.yaml"),
        spec(&sshd, &env.path("remote"), service_port),
    )
    .expect("spec");

    let out = env.run(&["apply", "--auto-approve"]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    // The dependent's setup ran after the SSH member was ready, with its address injected.
    let ready_at = err.find("builder: Ready").expect("builder ready line");
    let client_at = err
        .find(&format!("client | builder is at 127.0.0.1:{service_port}"))
        .expect("client saw builder's address");
    assert!(ready_at < client_at, "{err}");

    let peers: Value =
        serde_json::from_slice(&env.run(&["peers", "--json"]).stdout).expect("peers JSON");
    let builder = peers["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["slug"] == "builder")
        .expect("builder")
        .clone();
    assert_eq!(builder["transport"], "ssh");
    assert_eq!(
        builder["endpoint"],
        format!("ssh://127.0.0.1:{}", sshd.port)
    );
    assert_eq!(builder["provider"], "ssh");
    env.cmd()
        .args(["plan", "--detailed-exitcode"])
        .assert()
        .code(0);

    // The claim is the static lease's only record.
    let claims: Vec<PathBuf> = std::fs::read_dir(env.path("state/claims"))
        .expect("claims")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    let static_claim = claims
        .iter()
        .map(|p| {
            serde_json::from_str::<Value>(&std::fs::read_to_string(p).expect("claim"))
                .expect("JSON")
        })
        .find(|c| c["provider"] == "ssh")
        .expect("a claim for the ssh member");
    assert_eq!(static_claim["staticHost"], "127.0.0.1");
    assert_eq!(static_claim["pond"], "mesh");
    let work_root = PathBuf::from(static_claim["staticWorkRoot"].as_str().expect("work root"));
    assert!(work_root.join("workspace/index.txt").exists());

    // The mesh: a request through the exported address reaches the member's service.
    let out = env.run(&["pond", "connect", "mesh", "--export"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let exports = text(&out.stdout);
    let line = exports
        .lines()
        .find(|l| l.starts_with(&format!("export CRABBOX_POND_BUILDER_{service_port}=")))
        .expect("export line");
    let addr = line.split_once('=').expect("k=v").1.to_owned();
    assert!(addr.starts_with("127.0.0.1:5"), "{addr}");
    let body = http_get(&addr);
    assert!(
        body.contains("built on") && body.contains("as builder"),
        "{body}"
    );
    let forward = format!(
        "127.0.0.1:{}:127.0.0.1:{service_port}",
        addr.rsplit(':').next().expect("port")
    );
    assert_eq!(processes_with(&forward).len(), 1, "one tunnel");
    let env_file =
        std::fs::read_to_string(env.path("home/.crabbox/pond/mesh/env")).expect("env file");
    assert!(env_file.contains(line), "{env_file}");
    // Ports are stable across runs.
    env.cmd()
        .args(["pond", "disconnect", "mesh"])
        .assert()
        .success();
    assert!(
        processes_with(&forward).is_empty(),
        "disconnect leaves no ssh process"
    );
    let again = text(&env.run(&["pond", "connect", "mesh", "--json"]).stdout);
    assert!(again.contains(&addr), "the same local port again: {again}");

    let out = env.run(&["pond", "connect", "mesh", "--export"]);
    assert!(out.status.success());
    let out = env.run(&["destroy", "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("disconnected the SSH mesh"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        processes_with(&forward).is_empty(),
        "destroy disconnects first"
    );
    assert!(
        !work_root.exists(),
        "release removed the member's work root"
    );
    assert!(env.path("remote").exists(), "and nothing else on the host");
    assert_eq!(
        std::fs::read_dir(env.path("state/claims"))
            .map(|d| d.count())
            .unwrap_or(0),
        0,
        "no claim is left"
    );
    assert!(
        processes_with(&format!("http.server {service_port}")).is_empty(),
        "the member's service was stopped"
    );
}

/// The issue's pond: a `local` member, a static `ssh` member and two `hetzner`
/// members (one depending on the `ssh` one), against the fake Hetzner API
/// whose servers are the test sshd.
#[test]
fn local_ssh_and_hetzner_members_apply_in_order_and_destroy_cleanly() {
    use crate::fake_hetzner::{FakeConfig, TOKEN, start};

    let sshd = TestSshd::start();
    let env = Env::new();
    let rt = crate::support::runtime();
    let fake = rt.block_on(start(FakeConfig {
        authorized_keys: Some(sshd.authorized_keys.clone()),
        ..FakeConfig::default()
    }));
    let foreign = fake
        .handle
        .plant_server("not-ours", &[("team", "payments")]);
    let other_pond = fake.handle.plant_server(
        "other-pond",
        &[
            ("crabbox", "true"),
            ("pond", "someone-else"),
            ("lease", "cbx_00000000beef"),
        ],
    );
    fake.handle
        .fail_server_type("ccx33", "resource_unavailable");

    let spec = format!(
        r#"version: 1
pond: cloud
defaults:
  sync: false
  hetzner: {{ ssh_port: {port}, ssh_user: {user}, location: fsn1 }}
members:
  - slug: web
    setup: [ "echo local web up" ]
  - slug: builder
    provider: ssh
    ssh: {{ host: 127.0.0.1, port: {port}, user: {user}, key: "{key}", work_root: "{remote}" }}
    setup: [ "echo builder ready > artifact.txt" ]
  - slug: db
    provider: hetzner
    class: standard
    expose: [5432]
    setup: [ "echo db on $(hostname)" ]
  - slug: worker
    provider: hetzner
    type: cx23
    depends_on: [builder]
    setup: [ "echo worker sees builder at $CRABBOX_POND_BUILDER_HOST" ]
"#,
        port = sshd.port,
        user = sshd.user,
        key = sshd.key.display(),
        remote = env.path("remote").display(),
    );
    std::fs::write(env.path("work/pond.yaml"), spec).expect("spec");
    let with_cloud = |c: &mut Command| {
        c.env("HCLOUD_TOKEN", TOKEN)
            .env("HCLOUD_ENDPOINT", &fake.base_url);
    };

    // Rate limits and server errors during the apply are retried.
    fake.handle.fail_next_with_429(2, Some(1));
    fake.handle.fail_next_with_503(1);
    let mut apply = env.cmd();
    with_cloud(&mut apply);
    let out = apply
        .args(["apply", "--auto-approve"])
        .output()
        .expect("apply");
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("Apply complete! Members: 4 added"), "{err}");
    assert!(
        err.contains("db | db on"),
        "setup ran over SSH with output streamed: {err}"
    );
    let builder_ready = err
        .find("builder: Marked ready")
        .expect("builder finalized");
    let worker_setup = err.find("worker: Running setup").expect("worker setup");
    assert!(
        builder_ready < worker_setup,
        "worker waited for builder: {err}"
    );
    assert!(
        err.contains("worker | worker sees builder at 127.0.0.1"),
        "{err}"
    );

    // Capacity fallback: the class's first type failed, the next one was used; an exact type never falls back.
    let ours: Vec<Value> = fake
        .handle
        .servers()
        .into_iter()
        .filter(|s| s["labels"]["pond"] == "cloud")
        .collect();
    assert_eq!(ours.len(), 2);
    let db = ours
        .iter()
        .find(|s| s["labels"]["slug"] == "db")
        .expect("db server");
    assert_eq!(db["server_type"]["name"], "cpx62");
    assert_eq!(db["labels"]["server_type"], "cpx62");
    let worker = ours
        .iter()
        .find(|s| s["labels"]["slug"] == "worker")
        .expect("worker server");
    assert_eq!(worker["server_type"]["name"], "cx23");
    assert!(
        fake.handle.requests().iter().any(|r| r.status == 429),
        "the fake did answer 429"
    );

    let mut peers = env.cmd();
    with_cloud(&mut peers);
    let peers: Value = serde_json::from_slice(
        &peers
            .args(["peers", "--json"])
            .output()
            .expect("peers")
            .stdout,
    )
    .expect("JSON");
    let members = peers["members"].as_array().expect("members");
    assert_eq!(members.len(), 4);
    for m in members {
        match m["provider"].as_str().expect("provider") {
            "local" => assert_eq!(m["transport"], "local"),
            "ssh" => {
                assert_eq!(m["transport"], "ssh");
                assert_eq!(m["endpoint"], format!("ssh://127.0.0.1:{}", sshd.port));
            }
            // Crabbox's document: Hetzner is tailnet-primary, pending
            // without Tailscale (pond_bridge.go:541-560).
            "hetzner" => {
                assert_eq!(m["transport"], "pending");
                assert_eq!(m["endpoint"], "");
                assert_eq!(m["transports"], json!(["tailnet", "ssh"]));
            }
            other => panic!("unexpected provider {other}"),
        }
    }
    let mut plan = env.cmd();
    with_cloud(&mut plan);
    plan.args(["plan", "--detailed-exitcode"]).assert().code(0);

    let lease_ids: Vec<String> = ours
        .iter()
        .map(|s| s["labels"]["lease"].as_str().expect("lease").to_owned())
        .collect();
    let mut destroy = env.cmd();
    with_cloud(&mut destroy);
    let out = destroy
        .args(["destroy", "--auto-approve"])
        .output()
        .expect("destroy");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let left: Vec<u64> = fake
        .handle
        .servers()
        .iter()
        .filter_map(|s| s["id"].as_u64())
        .collect();
    assert_eq!(
        left,
        vec![foreign, other_pond],
        "only servers that are not ours are left, untouched"
    );
    assert!(fake.handle.server(foreign).expect("foreign")["labels"]["team"] == "payments");
    assert!(
        fake.handle.ssh_keys().is_empty(),
        "the leases' SSH keys were deleted"
    );
    assert!(
        !fake.handle.requests().iter().any(|r| r.method != "GET"
            && (r.path.ends_with(&format!("/{foreign}"))
                || r.path.ends_with(&format!("/{other_pond}")))),
        "no mutating request touched a foreign server"
    );
    assert_eq!(
        std::fs::read_dir(env.path("state/claims"))
            .map(|d| d.count())
            .unwrap_or(0),
        0,
        "no claim is left"
    );
    // The fake's servers are this machine: remove the work roots their leases made there.
    for id in lease_ids {
        let _ = std::fs::remove_dir_all(Path::new("/work/crabbox").join(id));
    }
}
