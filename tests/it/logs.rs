//! `crabbox logs` end to end through the binary: a local member's setup log
//! and background services (following one while it writes), and the same
//! over SSH against the test sshd.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use assert_cmd::Command;

use crate::sshd::TestSshd;

/// A private state dir, home and work dir for one test.
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new(spec: &str) -> Self {
        let env = Self {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        for d in ["home", "work", "remote"] {
            std::fs::create_dir_all(env.path(d)).expect("dirs");
        }
        std::fs::write(env.path("work/pond.yaml"), spec).expect("spec");
        env
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn std_cmd(&self) -> std::process::Command {
        let mut c = crate::support::crabbox_in(self.dir.path());
        c.env("USER", "logs")
            .env_remove("HCLOUD_TOKEN")
            .env_remove("HETZNER_TOKEN")
            .env_remove("CRABBOX_ISLO_API_KEY")
            .env_remove("ISLO_API_KEY")
            .env_remove("CRABBOX_COORDINATOR");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut c = Command::from_std(self.std_cmd());
        c.args(args).timeout(Duration::from_secs(120));
        c.output().expect("runs")
    }

    fn apply(&self) {
        let out = self.run(&["apply", "--auto-approve"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = self.run(&["destroy", "--auto-approve"]);
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos()
}

/// A local member: two setup steps (one writing to stderr) and a background
/// service printing `tick <nanoseconds since the epoch>` every 200 ms.
const LOCAL_SPEC: &str = r#"version: 1
pond: logs-local
defaults: { provider: local, sync: false }
members:
  - slug: web
    setup:
      - echo "hello from setup"
      - run: echo "to stderr" >&2
      - run: while :; do echo "tick $(date +%s%N)"; sleep 0.2; done
        background: true
"#;

#[test]
fn logs_shows_the_setup_output_and_names_the_services() {
    let env = Env::new(LOCAL_SPEC);
    env.apply();
    let out = env.run(&["logs", "--pond", "logs-local", "--id", "web"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    let first = lines
        .iter()
        .position(|l| l.ends_with(" setup step 1/3: $ echo \"hello from setup\""))
        .unwrap_or_else(|| panic!("header of step 1 in:\n{stdout}"));
    assert!(lines[first].starts_with("--- "), "{stdout}");
    assert_eq!(lines[first + 1], "hello from setup", "{stdout}");
    assert_eq!(lines[first + 2], "--- exit 0", "{stdout}");
    assert!(
        lines[first + 3].ends_with(" setup step 2/3: $ echo \"to stderr\" >&2"),
        "{stdout}"
    );
    assert_eq!(lines[first + 4], "to stderr", "{stdout}");
    assert_eq!(
        lines.len(),
        first + 6,
        "the background step logs apart: {stdout}"
    );
    assert!(
        stderr.contains("background services: setup-3 (crabbox logs --service NAME)"),
        "{stderr}"
    );

    // --tail keeps the last lines.
    let out = env.run(&["logs", "--id", "web", "--tail", "2"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "to stderr\n--- exit 0\n");

    // A changed setup runs again on the same lease, appending to the log.
    std::fs::write(
        env.path("work/pond.yaml"),
        LOCAL_SPEC.replace("hello from setup", "hello again"),
    )
    .expect("spec");
    env.apply();
    let out = env.run(&["logs", "--id", "web"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let (old, new) = (
        stdout.find("\nhello from setup\n").expect("the first run"),
        stdout.find("\nhello again\n").expect("the second run"),
    );
    assert!(old < new, "{stdout}");

    // The service's own log.
    let out = env.run(&["logs", "--id", "web", "--service", "setup-3"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("\ntick "),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn an_unknown_service_is_refused_listing_the_services() {
    let env = Env::new(LOCAL_SPEC);
    env.apply();
    let out = env.run(&["logs", "--id", "web", "--service", "db"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
    assert!(
        text(&out.stderr)
            .contains("error: web has no background service `db` (its services: setup-3)"),
        "{}",
        text(&out.stderr)
    );
    // An unknown member is Crabbox's "not found" (4).
    let out = env.run(&["logs", "--id", "nope"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    // A Crabbox run ID is not a member: the error says which `logs` reads those.
    let out = env.run(&["logs", "run_abcdef123456"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("is a Crabbox run ID"),
        "{}",
        text(&out.stderr)
    );
}

/// Reads `child`'s stdout on a thread, each line with when it arrived.
fn lines_of(child: &mut Child) -> mpsc::Receiver<(Instant, String)> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    rx
}

fn stamp(line: &str) -> Option<u128> {
    line.strip_prefix("tick ")?.parse().ok()
}

#[test]
fn follow_shows_a_service_s_new_lines_within_a_second() {
    let env = Env::new(LOCAL_SPEC);
    env.apply();
    let started_ns = now_ns();
    let mut child = env
        .std_cmd()
        .args([
            "logs",
            "--pond",
            "logs-local",
            "--id",
            "web",
            "--service",
            "setup-3",
            "--follow",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("logs --follow starts");
    let rx = lines_of(&mut child);
    // The log so far comes first: the follow is running once a line arrives.
    let (_, first) = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the log so far");
    assert!(
        first.starts_with("--- ") || stamp(&first).is_some(),
        "{first}"
    );
    let running = Instant::now();
    let running_ns = now_ns();
    let (arrived, line) = loop {
        let (at, line) = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("new lines keep coming");
        if stamp(&line).is_some_and(|t| t > running_ns) {
            break (at, line);
        }
    };
    let written = stamp(&line).expect("stamp");
    assert!(written > started_ns, "written after logs --follow started");
    assert!(
        arrived.duration_since(running) < Duration::from_secs(1),
        "a line written after the follow began arrived {:?} later",
        arrived.duration_since(running)
    );

    let state = env.path("state");
    assert_eq!(
        following_tails(&state).len(),
        1,
        "tail -F runs on the member"
    );

    // Closing our end of its stdout ends it cleanly.
    drop(rx);
    let closed = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            closed.elapsed() < Duration::from_secs(10),
            "logs --follow still runs with its stdout closed"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
    // …and the `tail` it ran on the member ends with it.
    let gone = Instant::now();
    while !following_tails(&state).is_empty() {
        assert!(
            gone.elapsed() < Duration::from_secs(5),
            "tail left running: {:?}",
            following_tails(&state)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `tail -F` processes following `setup-3` of a lease under `state`
/// (their working directory is the lease's workspace).
fn following_tails(state: &Path) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                String::from_utf8_lossy(&c).replace('\0', " ")
                    == "tail -n +1 -F -- ../logs/setup-3.log "
            }) && std::fs::read_link(format!("/proc/{pid}/cwd"))
                .is_ok_and(|cwd| cwd.starts_with(state))
        })
        .collect()
}

fn ssh_spec(sshd: &TestSshd, remote: &Path) -> String {
    format!(
        r#"version: 1
pond: logs-ssh
defaults: {{ sync: false }}
members:
  - slug: box
    provider: ssh
    ssh: {{ host: 127.0.0.1, port: {port}, user: {user}, key: "{key}", work_root: "{remote}" }}
    setup:
      - echo "set up over ssh on $CRABBOX_SLUG"
      - run: while :; do echo "served"; sleep 1; done
        background: true
"#,
        port = sshd.port,
        user = sshd.user,
        key = sshd.key.display(),
        remote = remote.display(),
    )
}

#[test]
fn logs_over_ssh_show_setup_output_and_a_service_log() {
    let sshd = TestSshd::start();
    let env = Env::new("");
    std::fs::write(
        env.path("work/pond.yaml"),
        ssh_spec(&sshd, &env.path("remote")),
    )
    .expect("spec");
    env.apply();
    let out = env.run(&["logs", "--pond", "logs-ssh", "--id", "box"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains(" setup step 1/2: $ echo \"set up over ssh on $CRABBOX_SLUG\"\nset up over ssh on box\n--- exit 0\n"),
        "{stdout}"
    );
    assert!(stderr.contains("background services: setup-2"), "{stderr}");
    // Kept beside the services' logs in the lease's work root (one per lease under `work_root`).
    let kept: Vec<String> = std::fs::read_dir(env.path("remote"))
        .expect("work roots")
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("logs/setup.log")).ok())
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(kept[0].contains("set up over ssh on box\n"), "{kept:?}");

    let out = env.run(&["logs", "--id", "box", "--service", "setup-2"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("\nserved\n"),
        "{}",
        text(&out.stdout)
    );

    let out = env.run(&["logs", "--id", "box", "--service", "web"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("(its services: setup-2)"),
        "{}",
        text(&out.stderr)
    );
}

/// The delegated providers keep the same logs in `.crabbox/logs` of their
/// workdir: Islo (against the fake API) and Tensorlake (through the fake CLI).
#[test]
fn logs_on_islo_and_tensorlake_members() {
    use crate::fake_islo::{API_KEY, FakeConfig, start};
    let rt = crate::support::runtime();
    let islo = rt.block_on(start(FakeConfig::default()));
    let cli = crate::support::root().join("tests/fixtures/fake-tensorlake");
    let env = Env::new(&format!(
        r#"version: 1
pond: logs-deleg
defaults: {{ sync: false }}
members:
  - slug: loader
    provider: tensorlake
    tensorlake: {{ cliPath: "{cli}", workdir: /workspace/crabbox }}
    setup:
      - echo "loaded on tensorlake"
      - run: while :; do echo "tl-service"; sleep 1; done
        background: true
  - slug: app
    provider: islo
    islo: {{ workdir: app }}
    setup:
      - echo "set up on islo"
      - run: while :; do echo "islo-service"; sleep 1; done
        background: true
"#,
        cli = cli.display()
    ));
    std::fs::create_dir_all(env.path("tl-state")).expect("tl state");
    let with_fakes = |args: &[&str]| {
        let mut c = Command::from_std(env.std_cmd());
        c.env("CRABBOX_ISLO_API_KEY", API_KEY)
            .env("ISLO_BASE_URL", &islo.base_url)
            .env("TENSORLAKE_API_KEY", "tl_apiKey_logs")
            .env("FAKE_TENSORLAKE_STATE", env.path("tl-state"))
            .env("FAKE_TENSORLAKE_LOG", env.path("tl.log"))
            .args(args)
            .timeout(Duration::from_secs(120));
        c.output().expect("runs")
    };
    let out = with_fakes(&["apply", "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for (slug, setup, service) in [
        ("loader", "loaded on tensorlake", "tl-service"),
        ("app", "set up on islo", "islo-service"),
    ] {
        let out = with_fakes(&["logs", "--pond", "logs-deleg", "--id", slug]);
        assert!(out.status.success(), "{slug}: {}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains(&format!("\n{setup}\n--- exit 0\n")),
            "{slug}: {}",
            text(&out.stdout)
        );
        assert!(
            text(&out.stderr).contains("background services: setup-2"),
            "{slug}: {}",
            text(&out.stderr)
        );
        let out = with_fakes(&["logs", "--id", slug, "--service", "setup-2"]);
        assert!(out.status.success(), "{slug}: {}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains(&format!("\n{service}\n")),
            "{slug}: {}",
            text(&out.stdout)
        );
    }
    let out = with_fakes(&["destroy", "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}
