//! A killed crabbox leaves nothing that the next run does not finish or
//! clean up: `apply` and `destroy` SIGKILLed at many points of a local +
//! Hetzner pond (the fake Hetzner API, whose servers are a real sshd on
//! this machine), a setup step killed halfway over SSH, and a storm of
//! 429/503 answers on every Hetzner endpoint.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::fake_hetzner::{FakeConfig, FakeHetzner, TOKEN, processes_with_env, start};
use crate::sshd::{TestSshd, free_port};

/// One test's world: state, home and spec directories, the sshd standing
/// for every server, the fake API and the runtime serving it.
struct World {
    dir: tempfile::TempDir,
    pond: String,
    sshd: TestSshd,
    fake: FakeHetzner,
    _rt: tokio::runtime::Runtime,
}

impl World {
    /// A world for pond `<name>-<this process's ID>`: processes are found
    /// by their pond, and other test processes on this machine may use the
    /// same names.
    fn new(name: &str) -> Self {
        let pond = format!("{name}-{}", std::process::id());
        let dir = tempfile::tempdir().expect("tempdir");
        for d in ["home", "work", "host"] {
            std::fs::create_dir_all(dir.path().join(d)).expect("dirs");
        }
        let sshd = TestSshd::start();
        let rt = crate::support::runtime();
        let fake = rt.block_on(start(FakeConfig {
            authorized_keys: Some(sshd.authorized_keys.clone()),
            boot_delay: Duration::from_millis(50),
            kill_on_delete: true,
            ..FakeConfig::default()
        }));
        Self {
            dir,
            pond,
            sshd,
            fake,
            _rt: rt,
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn write_spec(&self, members: &str) {
        let spec = self.sshd.hetzner_pond(&self.pond, members);
        std::fs::write(self.path("work/pond.yaml"), spec).expect("spec");
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = crate::support::crabbox_in(self.dir.path());
        c.args(args)
            .env("HCLOUD_TOKEN", TOKEN)
            .env("HCLOUD_ENDPOINT", &self.fake.base_url);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("crabbox runs")
    }

    /// Starts `args`, SIGKILLs it after `after` (if still running) and
    /// reaps it; returns whether it was killed.
    fn kill_after(&self, args: &[&str], after: Duration) -> bool {
        let mut child = self
            .command(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("crabbox starts");
        let deadline = Instant::now() + after;
        while Instant::now() < deadline {
            if child.try_wait().expect("try_wait").is_some() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let killed = child.try_wait().expect("try_wait").is_none();
        let _ = child.kill();
        let _ = child.wait();
        killed
    }

    /// The lease IDs of the pond's members, from `peers --json`.
    fn live_leases(&self) -> BTreeSet<String> {
        let out = self.run(&["peers", "--json"]);
        assert!(out.status.success(), "peers: {}", text(&out.stderr));
        let peers: Value = serde_json::from_slice(&out.stdout).expect("peers JSON");
        peers["members"]
            .as_array()
            .expect("members")
            .iter()
            .map(|m| m["leaseID"].as_str().expect("leaseID").to_owned())
            .collect()
    }

    /// The fake's servers of this pond.
    fn servers(&self) -> Vec<Value> {
        self.fake
            .handle
            .servers()
            .into_iter()
            .filter(|s| s["labels"]["pond"] == self.pond.as_str())
            .collect()
    }

    /// Every lease ID any create request named (to clean up work roots).
    fn leases_ever_created(&self) -> BTreeSet<String> {
        self.fake
            .handle
            .requests()
            .iter()
            .filter(|r| r.method == "POST" && r.path == "/v1/servers")
            .filter_map(|r| r.body["labels"]["lease"].as_str().map(str::to_owned))
            .collect()
    }

    /// Checks that the fake holds no server or key, the state no key
    /// directory, and this machine no process of the pond, without its
    /// lease (`live`: the pond's leases). `hetzner` is how many servers the
    /// pond must have.
    fn check_nothing_without_lease(&self, live: &BTreeSet<String>, hetzner: usize, when: &str) {
        let servers = self.servers();
        let server_leases: BTreeSet<String> = servers
            .iter()
            .map(|s| {
                s["labels"]["lease"]
                    .as_str()
                    .expect("lease label")
                    .to_owned()
            })
            .collect();
        assert_eq!(
            servers.len(),
            hetzner,
            "{when}: one server per Hetzner member: {servers:#?}"
        );
        assert!(
            server_leases.is_subset(live),
            "{when}: every server is a lease of the pond: {server_leases:?} vs {live:?}"
        );
        for key in self.fake.handle.ssh_keys() {
            let lease = key["labels"]["lease"].as_str().unwrap_or_default();
            assert!(
                server_leases.contains(lease),
                "{when}: SSH key {} has no server: {key:#}",
                key["name"]
            );
        }
        for entry in std::fs::read_dir(self.path("state/ssh/keys"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            assert!(
                server_leases.contains(&name),
                "{when}: key directory {name} has no server"
            );
        }
        // SSH clients and control masters name their lease's control socket.
        let sockets = format!("{}/", self.path("state/ssh/cm").display());
        for pid in all_processes() {
            let line = cmdline(pid);
            let Some((_, rest)) = line.split_once(&sockets) else {
                continue;
            };
            let lease: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
            assert!(
                live.contains(&lease),
                "{when}: ssh process {pid} ({line}) of lease {lease} runs without its lease"
            );
        }
        let marker = format!("CRABBOX_POND={}", self.pond);
        for pid in processes_with_env(&marker) {
            let Some(lease) = env_entry(pid, "CRABBOX_LEASE_ID") else {
                continue;
            };
            assert!(
                live.contains(&lease),
                "{when}: process {pid} ({}) of lease {lease} runs without its lease (live: {live:?})",
                cmdline(pid)
            );
        }
    }

    /// Destroys what is left and removes the work roots the fake's servers
    /// made under Crabbox's work root on this machine.
    fn clean_up(&self) {
        self.fake.handle.set_storm(None);
        let _ = self.run(&["destroy", "--auto-approve"]);
        for id in self.leases_ever_created() {
            let _ = std::fs::remove_dir_all(std::path::Path::new("/work/crabbox").join(id));
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.clean_up();
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The value of `name` in a process's environment.
fn env_entry(pid: i32, name: &str) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{name}=");
    env.split(|b| *b == 0)
        .find_map(|e| e.strip_prefix(prefix.as_bytes()))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

fn all_processes() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .collect()
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .unwrap_or_default()
}

/// xorshift64: the kill points, reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in `[0, d)`.
    fn below(&mut self, d: Duration) -> Duration {
        let millis = u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
        Duration::from_millis(self.next() % millis)
    }
}

/// Runs `args` and asserts it succeeded; returns how long it took and
/// what it printed on stderr.
fn ok_with_log(world: &World, args: &[&str], when: &str) -> (Duration, String) {
    let started = Instant::now();
    let out = world.run(args);
    let err = text(&out.stderr);
    assert!(
        out.status.success(),
        "{when}: crabbox {} failed:\n{err}",
        args.join(" "),
    );
    (started.elapsed(), err)
}

/// Runs `args` and asserts it succeeded; returns how long it took.
fn ok(world: &World, args: &[&str], when: &str) -> Duration {
    ok_with_log(world, args, when).0
}

/// Asserts the pond has converged: `plan --detailed-exitcode` exits 0.
fn converged(world: &World, when: &str) {
    let out = world.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{when}: the plan after one apply is not empty:\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn after_a_sigkill_at_any_point_one_apply_converges_and_nothing_is_left() {
    let world = World::new("killed");
    let port = free_port();
    world.write_spec(&format!(
        r#"  - slug: cache
    setup:
      - run: exec sleep 600
        background: true
  - slug: db
    provider: hetzner
    type: cx23
    setup:
      - echo "db setup on $CRABBOX_LEASE_ID"
      - run: exec python3 -m http.server {port} --bind 127.0.0.1
        background: true
    ready: {{ tcp: {port}, timeout: 20s }}
  - slug: app
    provider: hetzner
    type: cx23
    depends_on: [db, cache]
    setup:
      - echo "app setup on $CRABBOX_LEASE_ID"
"#
    ));
    // Small delays spread the run's API calls over time, so kill points
    // land between them.
    world.fake.handle.set_latency(Duration::from_millis(2));
    // A slow server create and a slow key deletion widen the moments a
    // kill leaves a key without a server: after the key's upload, before
    // the server exists; after the server's deletion, before the key's.
    world
        .fake
        .handle
        .set_route_latency("POST", "/v1/servers", Duration::from_millis(100));
    world
        .fake
        .handle
        .set_route_latency("DELETE", "/v1/ssh_keys", Duration::from_millis(100));
    let seed = std::env::var("CRABBOX_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_c0ff_ee15_0001_u64);
    eprintln!("kill points seeded with CRABBOX_KILL_SEED={seed}");
    let mut rng = Rng(seed.max(1));

    let apply = ok(&world, &["apply", "--auto-approve"], "first apply");
    converged(&world, "first apply");
    let destroy = ok(&world, &["destroy", "--auto-approve"], "first destroy");
    eprintln!("a whole apply took {apply:?}, a whole destroy {destroy:?}");
    assert!(world.servers().is_empty());
    let kills = 40;
    let mut landed = 0;
    for trial in 0..kills {
        // Every third kill hits a destroy of the whole pond, the others an
        // apply that creates it.
        let killing_destroy = trial % 3 == 2;
        let when;
        if killing_destroy {
            let after = rng.below(destroy);
            when = format!("trial {trial}: destroy killed after {after:?}");
            landed += usize::from(world.kill_after(&["destroy", "--auto-approve"], after));
        } else {
            if !world.servers().is_empty() {
                ok(
                    &world,
                    &["destroy", "--auto-approve"],
                    "destroy before a killed apply",
                );
            }
            let after = rng.below(apply);
            when = format!("trial {trial}: apply killed after {after:?}");
            landed += usize::from(world.kill_after(&["apply", "--auto-approve"], after));
        }
        let (_, log) = ok_with_log(&world, &["apply", "--auto-approve"], &when);
        let when = format!("{when}; the apply after it said:\n{log}\n");
        converged(&world, &when);
        let live = world.live_leases();
        assert_eq!(live.len(), 3, "{when}: three members, one lease each");
        world.check_nothing_without_lease(&live, 2, &when);
    }
    assert!(
        landed >= kills / 2,
        "most kills landed while crabbox ran ({landed} of {kills})"
    );
    ok(&world, &["destroy", "--auto-approve"], "last destroy");
    world.check_nothing_without_lease(&BTreeSet::new(), 0, "after the last destroy");
}

#[test]
fn a_setup_step_killed_over_ssh_is_stopped_before_it_runs_again() {
    let world = World::new("killed-setup");
    let log = world.path("host/steps.log");
    world.write_spec(&format!(
        r#"  - slug: db
    provider: hetzner
    type: cx23
    setup:
      - echo "start v2" >> {log}; sleep 3; echo "end v2" >> {log}
"#,
        log = log.display()
    ));
    let mut child = world
        .command(&["apply", "--auto-approve"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("apply starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log).is_ok_and(|l| l.contains("start v2")) {
        assert!(Instant::now() < deadline, "the setup step never started");
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "apply ended before its setup step started"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");

    let out = world.run(&["apply", "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let steps = std::fs::read_to_string(&log).expect("log");
    assert_eq!(
        steps, "start v2\nstart v2\nend v2\n",
        "the killed run's step was stopped before the step ran again, once"
    );
    converged(&world, "after the re-run");
    // Nothing of the killed step runs any more (it would have ended by
    // writing `end v2` a second time).
    let marker = format!("CRABBOX_POND={}", world.pond);
    let left: Vec<String> = processes_with_env(&marker)
        .into_iter()
        .map(cmdline)
        .collect();
    assert!(
        left.is_empty(),
        "processes of the setup still run: {left:?}"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        std::fs::read_to_string(&log).expect("log"),
        "start v2\nstart v2\nend v2\n"
    );
}

#[test]
fn apply_and_destroy_succeed_through_a_storm_of_429_and_503_answers() {
    let world = World::new("stormy");
    world.write_spec(
        r#"  - slug: db
    provider: hetzner
    type: cx23
    setup:
      - echo db up
  - slug: app
    provider: hetzner
    class: tiny
    depends_on: [db]
    setup:
      - echo app up
"#,
    );
    world.fake.handle.set_storm(Some((0.3, 0x0057_0a2e)));
    ok(&world, &["apply", "--auto-approve"], "apply in a storm");
    world.fake.handle.set_storm(None);
    converged(&world, "apply in a storm");
    let live = world.live_leases();
    world.check_nothing_without_lease(&live, 2, "after the apply");
    world.fake.handle.set_storm(Some((0.3, 0x0057_0a2f)));
    ok(&world, &["destroy", "--auto-approve"], "destroy in a storm");
    world.fake.handle.set_storm(None);
    world.check_nothing_without_lease(&BTreeSet::new(), 0, "after the destroy");
    assert!(world.fake.handle.ssh_keys().is_empty(), "no key is left");
    let requests = world.fake.handle.requests();
    for (status, what) in [(429, "429"), (503, "503")] {
        assert!(
            requests.iter().any(|r| r.status == status),
            "the storm answered {what}"
        );
    }
}

/// Output lines dropped (the command's output does not matter here).
struct Discard;

impl crabbox_core::provider::OutputSink for Discard {
    fn line(&self, _stream: crabbox_core::provider::Stream, _line: &str) {}
}

#[tokio::test]
async fn a_step_that_times_out_over_ssh_is_stopped_on_the_host() {
    let sshd = TestSshd::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let lease = "cbx_0000000071e0";
    let work_root = dir.path().join("work").display().to_string();
    let target = sshd.target(&dir.path().join("state"), &work_root, lease);
    target
        .wait_prepared("true", std::time::Duration::from_secs(20))
        .await
        .expect("prepare");
    let err = target
        .exec(
            "sleep 37.5",
            &std::collections::BTreeMap::new(),
            std::sync::Arc::new(Discard),
            Some(Duration::from_millis(800)),
        )
        .await
        .expect_err("times out");
    assert!(err.to_string().contains("timed out after"), "{err}");
    assert!(
        !err.to_string().contains("may still run"),
        "it was stopped: {err}"
    );
    let left: Vec<String> = processes_with_env(&format!("CRABBOX_LEASE_ID={lease}"))
        .into_iter()
        .map(cmdline)
        .collect();
    assert!(left.is_empty(), "the step still runs: {left:?}");
    target.close().await;
}
