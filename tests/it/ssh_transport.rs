//! The SSH transport against a real `sshd` on 127.0.0.1 (see [`TestSshd`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crabbox_core::lease::new_lease_id;
use crabbox_core::provider::{OutputSink, ProviderError, Stream};
use crabbox_exec::archive;
use crabbox_exec::ssh::SshTarget;
use crabbox_spec::desired::Probe;

use crate::sshd::{TestSshd, free_port};

const READY: Duration = Duration::from_secs(20);

/// Collects output lines per stream.
#[derive(Default)]
struct Collect(Mutex<Vec<(Stream, String)>>);

impl Collect {
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

impl OutputSink for Collect {
    fn line(&self, stream: Stream, line: &str) {
        self.0.lock().expect("lock").push((stream, line.to_owned()));
    }
}

/// A server, a state directory and a work root under a temporary directory.
struct Setup {
    sshd: TestSshd,
    state: tempfile::TempDir,
    remote: tempfile::TempDir,
    target: SshTarget,
}

impl Setup {
    /// Starts a server and prepares the work root.
    async fn new() -> Self {
        let sshd = TestSshd::start();
        let state = tempfile::tempdir().expect("state");
        let remote = tempfile::tempdir().expect("remote");
        // A lease of its own: stopping a lease's processes finds them by
        // lease ID, and the tests run side by side as one user.
        let lease = new_lease_id();
        let work_root = remote.path().join("work").join(&lease);
        let target = sshd.target(state.path(), work_root.to_str().expect("utf-8"), &lease);
        target
            .wait_prepared("true", READY)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "ssh ready: {e:?}; sshd log: {}",
                    std::fs::read_to_string(sshd.dir().join("sshd.log")).unwrap_or_default()
                )
            });
        Self {
            sshd,
            state,
            remote,
            target,
        }
    }

    fn work_root(&self) -> &Path {
        Path::new(&self.target.work_root)
    }

    /// Runs `command` and returns (exit code, stdout lines, stderr lines).
    async fn exec(
        &self,
        command: &str,
        env: &BTreeMap<String, String>,
    ) -> (i32, Vec<String>, Vec<String>) {
        let sink = Arc::new(Collect::default());
        let code = self
            .target
            .exec(command, env, sink.clone(), Some(Duration::from_secs(30)))
            .await
            .unwrap_or_else(|e| panic!("exec {command:?}: {e:?}"));
        (code, sink.of(Stream::Stdout), sink.of(Stream::Stderr))
    }
}

fn no_env() -> BTreeMap<String, String> {
    BTreeMap::new()
}

/// Whether a process is gone (a zombie counts: some container inits never reap).
fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

/// Whether `/proc/<pid>/environ` has `CRABBOX_LEASE_ID=<lease>`.
fn carries_marker(pid: i32, lease: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
        env.split(|b| *b == 0)
            .any(|v| v == format!("CRABBOX_LEASE_ID={lease}").as_bytes())
    })
}

async fn probe_until(target: &SshTarget, probe: &Probe, want: bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = target.probe(probe, &no_env()).await.expect("probe");
        if got == want || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn ssh_records_the_host_key_and_rejects_a_changed_one() {
    let setup = Setup::new().await;
    for dir in ["workspace", "logs", "pids"] {
        assert!(setup.work_root().join(dir).is_dir(), "{dir} created");
    }
    let known_hosts = setup.state.path().join("ssh/known_hosts");
    let entry = format!("[127.0.0.1]:{}", setup.sshd.port);
    let found = Command::new("ssh-keygen")
        .arg("-F")
        .arg(&entry)
        .arg("-f")
        .arg(&known_hosts)
        .output()
        .expect("ssh-keygen -F");
    assert!(
        found.status.success(),
        "{entry} recorded in {}: {:?}",
        known_hosts.display(),
        std::fs::read_to_string(&known_hosts)
    );
    let mode = |p: &Path| {
        std::os::unix::fs::PermissionsExt::mode(&p.metadata().expect("meta").permissions()) & 0o777
    };
    assert_eq!(mode(&setup.state.path().join("ssh")), 0o700);
    assert_eq!(mode(&setup.state.path().join("ssh/cm")), 0o700);

    // The host is "reinstalled": a new server with a new host key on the same port.
    setup.target.close().await;
    let port = setup.sshd.port;
    let lease = setup.target.lease_id.clone();
    let Setup {
        sshd,
        state,
        remote,
        ..
    } = setup;
    drop(sshd);
    let reinstalled = TestSshd::start_on(port);
    let target = reinstalled.target(
        state.path(),
        remote
            .path()
            .join("work")
            .join(&lease)
            .to_str()
            .expect("utf-8"),
        &lease,
    );
    let err = target
        .wait_ready(READY)
        .await
        .expect_err("changed host key");
    let ProviderError::Config { message, hint } = &err else {
        panic!("{err:?}")
    };
    assert!(message.contains("known_hosts"), "{message}");
    assert!(
        hint.contains("reinstalled") && hint.contains("ssh-keygen -R"),
        "{hint}"
    );
    let err = target
        .exec("true", &no_env(), Arc::new(Collect::default()), None)
        .await
        .expect_err("exec with a changed host key");
    assert!(matches!(err, ProviderError::Config { .. }), "{err:?}");

    // Removing the old key (as the hint says) lets the new host in.
    let removed = Command::new("ssh-keygen")
        .arg("-R")
        .arg(&entry)
        .arg("-f")
        .arg(state.path().join("ssh/known_hosts"))
        .output()
        .expect("ssh-keygen -R");
    assert!(removed.status.success(), "{removed:?}");
    target
        .wait_ready(READY)
        .await
        .expect("ready after removing the old key");
    target.close().await;
}

#[tokio::test]
async fn ssh_refused_logins_and_closed_ports_are_explained() {
    let sshd = TestSshd::start();
    let state = tempfile::tempdir().expect("state");
    let stranger = tempfile::tempdir().expect("keys");
    let key = stranger.path().join("id");
    let generated = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen");
    assert!(generated.success());
    let mut target = sshd.target(state.path(), "/tmp/unused/x", &new_lease_id());
    target.key = Some(key.clone());
    let err = target.wait_ready(READY).await.expect_err("not authorized");
    let ProviderError::Config { message, hint } = &err else {
        panic!("{err:?}")
    };
    assert!(message.contains("Permission denied"), "{message}");
    assert!(
        hint.contains(&key.display().to_string()) && hint.contains(&sshd.user),
        "{hint}"
    );

    // Authorized (as a cloud provider's fake does), the same key gets in.
    sshd.authorize(&std::fs::read_to_string(key.with_extension("pub")).expect("pub"));
    target.wait_ready(READY).await.expect("authorized now");
    target.close().await;

    // Nothing listening: retryable for exec, a timeout for wait_ready.
    let closed = SshTarget {
        port: free_port(),
        ..target.clone()
    };
    let err = closed
        .exec("true", &no_env(), Arc::new(Collect::default()), None)
        .await
        .expect_err("closed port");
    assert!(err.is_retryable(), "{err:?}");
    assert!(err.to_string().contains("Connection refused"), "{err}");
    let started = Instant::now();
    let err = closed
        .wait_ready(Duration::from_secs(2))
        .await
        .expect_err("times out");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    let ProviderError::Failed(message) = &err else {
        panic!("{err:?}")
    };
    assert!(message.contains("did not answer within"), "{message}");
}

#[tokio::test]
async fn ssh_exec_streams_output_and_keeps_env_off_argv() {
    let setup = Setup::new().await;

    let (code, out, err) = setup
        .exec(
            "for i in 1 2 3; do echo out$i; echo err$i >&2; done; pwd",
            &no_env(),
        )
        .await;
    assert_eq!(code, 0);
    let workspace = setup.work_root().join("workspace");
    assert_eq!(
        out,
        ["out1", "out2", "out3", workspace.to_str().expect("utf-8")]
    );
    assert_eq!(err, ["err1", "err2", "err3"]);
    let (code, out, _) = setup.exec("echo before; exit 7", &no_env()).await;
    assert_eq!((code, out), (7, vec!["before".to_owned()]));
    let (code, _, _) = setup.exec("kill -TERM $$", &no_env()).await;
    assert_eq!(code, 128 + 15, "a signal death is 128 + the signal");

    // Lines arrive while the command still runs.
    let sink = Arc::new(Collect::default());
    let env = no_env();
    let run = setup
        .target
        .exec("echo first; sleep 2; echo second", &env, sink.clone(), None);
    tokio::pin!(run);
    let early = tokio::time::timeout(Duration::from_millis(1500), async {
        loop {
            if !sink.of(Stream::Stdout).is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    tokio::select! {
        _ = early => {}
        _ = &mut run => panic!("exec finished before its first line was seen"),
    }
    assert_eq!(
        sink.of(Stream::Stdout),
        ["first"],
        "streamed before the end"
    );
    assert_eq!(run.await.expect("exec"), 0);
    assert_eq!(sink.of(Stream::Stdout), ["first", "second"]);

    // Nasty values arrive intact, the lease's variables are set.
    let nasty = "it's \"quoted\" $HOME `id` \\ and\nnew line ';' end";
    let secret = format!("s3cr3t-{}", std::process::id());
    let mut env = BTreeMap::new();
    env.insert("NASTY".to_owned(), nasty.to_owned());
    env.insert("SECRET".to_owned(), secret.clone());
    env.insert("EMPTY".to_owned(), String::new());
    let (code, out, _) = setup
        .exec(
            "printf '%s|' \"$NASTY\" \"$CRABBOX_LEASE_ID\" \"$CRABBOX_WORKSPACE\" \"${EMPTY-unset}\"",
            &env,
        )
        .await;
    assert_eq!(code, 0);
    assert_eq!(
        out.join("\n"),
        format!(
            "{nasty}|{}|{}||",
            setup.target.lease_id,
            workspace.display()
        )
    );

    // The secret is on no process's command line (the host is this
    // machine, so the ssh client's own argv is listed too).
    let (code, out, _) = setup.exec("ps -eww -o args", &env).await;
    assert_eq!(code, 0);
    assert!(
        out.iter()
            .any(|l| l.contains("BatchMode=yes") && l.contains("sh -s")),
        "the ssh client is listed: {out:#?}"
    );
    let leaked: Vec<&String> = out.iter().filter(|l| l.contains(&secret)).collect();
    assert!(leaked.is_empty(), "secret on a command line: {leaked:?}");

    // A time limit kills the command and says so.
    let started = Instant::now();
    let err = setup
        .target
        .exec(
            "sleep 30",
            &no_env(),
            Arc::new(Collect::default()),
            Some(Duration::from_millis(500)),
        )
        .await
        .expect_err("times out");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(err.to_string().contains("timed out after"), "{err}");

    // Invalid names are refused before anything runs.
    let mut bad = BTreeMap::new();
    bad.insert("NOT-A-NAME".to_owned(), "x".to_owned());
    let err = setup
        .target
        .exec("true", &bad, Arc::new(Collect::default()), None)
        .await
        .expect_err("bad name");
    assert!(err.to_string().contains("NOT-A-NAME"), "{err}");
    setup.target.close().await;
}

#[tokio::test]
async fn ssh_upload_unpacks_the_archive_into_the_workspace() {
    let setup = Setup::new().await;
    let src = tempfile::tempdir().expect("src");
    std::fs::create_dir_all(src.path().join("nested/dir")).expect("mkdir");
    std::fs::write(src.path().join("hello.txt"), "synced\n").expect("write");
    std::fs::write(src.path().join("nested/dir/it's here.txt"), "deep\n").expect("write");
    let built = archive::build(src.path(), &[], 1 << 20).expect("archive");
    setup.target.upload(&built.path).await.expect("upload");

    let (code, out, _) = setup
        .exec("cat hello.txt \"nested/dir/it's here.txt\"", &no_env())
        .await;
    assert_eq!(
        (code, out),
        (0, vec!["synced".to_owned(), "deep".to_owned()])
    );

    // A broken archive is reported with tar's complaint.
    let junk = setup.state.path().join("junk.tar.gz");
    std::fs::write(&junk, b"not a tarball").expect("write");
    let err = setup.target.upload(&junk).await.expect_err("junk");
    let ProviderError::Failed(message) = &err else {
        panic!("{err:?}")
    };
    assert!(
        message.contains("tar") || message.contains("gzip"),
        "{message}"
    );
    setup.target.close().await;
}

#[tokio::test]
async fn ssh_background_services_start_probe_and_stop() {
    let setup = Setup::new().await;
    let port = free_port();
    let mut env = BTreeMap::new();
    env.insert("GREETING".to_owned(), "hi there".to_owned());
    setup
        .target
        .start_background(
            &format!("echo \"$GREETING\"; exec python3 -m http.server {port} --bind 127.0.0.1"),
            &env,
            "web",
        )
        .await
        .expect("start");
    let pid_file = setup.work_root().join("pids/web.pid");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    assert!(
        carries_marker(pid, &setup.target.lease_id),
        "the service carries the marker"
    );

    let tcp = Probe::Tcp { host: None, port };
    let http = Probe::Http(format!("http://127.0.0.1:{port}/"));
    assert!(
        probe_until(&setup.target, &tcp, true).await,
        "tcp probe passes"
    );
    assert!(
        setup.target.probe(&http, &no_env()).await.expect("http"),
        "http probe passes"
    );
    let localhost = Probe::Tcp {
        host: Some("localhost".into()),
        port,
    };
    assert!(
        setup
            .target
            .probe(&localhost, &no_env())
            .await
            .expect("tcp")
    );
    let missing = Probe::Http(format!("http://127.0.0.1:{port}/no-such-file"));
    assert!(!setup.target.probe(&missing, &no_env()).await.expect("404"));
    let mut probe_env = BTreeMap::new();
    probe_env.insert("PORT".to_owned(), port.to_string());
    let command = Probe::Command(
        "python3 -c \"import socket; socket.create_connection(('127.0.0.1', $PORT))\"".into(),
    );
    assert!(setup.target.probe(&command, &probe_env).await.expect("cmd"));
    let failing = Probe::Command("exit 1".into());
    assert!(!setup.target.probe(&failing, &no_env()).await.expect("cmd"));

    let log = std::fs::read_to_string(setup.work_root().join("logs/web.log")).expect("log");
    assert!(
        log.contains("starting `web`") && log.contains("hi there"),
        "{log}"
    );

    setup.target.stop_background().await.expect("stop");
    assert!(process_gone(pid), "the service {pid} is gone");
    assert!(!pid_file.exists(), "pid file removed");
    assert!(!setup.target.probe(&tcp, &no_env()).await.expect("tcp"));
    assert!(!setup.target.probe(&http, &no_env()).await.expect("http"));
    setup
        .target
        .stop_background()
        .await
        .expect("stopping nothing");

    // A service that dies at once is reported with its log.
    let err = setup
        .target
        .start_background(
            "echo starting; echo 'boom: no config' >&2; exit 3",
            &no_env(),
            "broken",
        )
        .await
        .expect_err("exits at once");
    let ProviderError::Failed(message) = &err else {
        panic!("{err:?}")
    };
    assert!(
        message.contains("`broken` exited with status 3"),
        "{message}"
    );
    assert!(message.contains("starting\nboom: no config"), "{message}");
    assert!(!setup.work_root().join("pids/broken.pid").exists());

    // A pid file naming a process that is not ours is dropped, not signalled.
    let mut stranger = Command::new("sleep").arg("300").spawn().expect("sleep");
    std::fs::write(
        setup.work_root().join("pids/stranger.pid"),
        format!("{}\n", stranger.id()),
    )
    .expect("write");
    setup.target.stop_background().await.expect("stop");
    assert!(
        stranger.try_wait().expect("try_wait").is_none(),
        "stranger alive"
    );
    assert!(!setup.work_root().join("pids/stranger.pid").exists());
    stranger.kill().expect("kill");
    stranger.wait().expect("wait");
    setup.target.close().await;
}

#[tokio::test]
async fn ssh_connections_are_multiplexed() {
    let setup = Setup::new().await;
    let sockets: Vec<_> = std::fs::read_dir(setup.state.path().join("ssh/cm"))
        .expect("cm dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(sockets.len(), 1, "one control socket: {sockets:?}");
    {
        use std::os::unix::fs::FileTypeExt as _;
        assert!(
            std::fs::metadata(&sockets[0])
                .expect("meta")
                .file_type()
                .is_socket()
        );
    }

    let started = Instant::now();
    for _ in 0..20 {
        assert_eq!(setup.exec("true", &no_env()).await.0, 0);
    }
    let multiplexed = started.elapsed();
    // The structure that makes it fast: all 20 ran over the one master connection.
    assert_eq!(
        established_to(setup.sshd.port),
        1,
        "one TCP connection to sshd carries every exec"
    );

    // For comparison: a fresh connection (its own state directory).
    let fresh_state = tempfile::tempdir().expect("state");
    let fresh = SshTarget {
        state_dir: fresh_state.path().to_path_buf(),
        ..setup.target.clone()
    };
    let started = Instant::now();
    fresh.wait_ready(READY).await.expect("fresh");
    let handshake = started.elapsed();
    fresh.close().await;
    println!("20 multiplexed execs: {multiplexed:?}; one fresh handshake: {handshake:?}");

    setup.target.close().await;
    // The master acknowledges `-O exit` and then unlinks its socket.
    let deadline = Instant::now() + Duration::from_secs(5);
    while sockets[0].exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!sockets[0].exists(), "close removes the control socket");
}

#[tokio::test]
async fn ssh_remove_work_root_deletes_only_the_work_root() {
    let setup = Setup::new().await;
    let sibling = setup.remote.path().join("work/keep.txt");
    std::fs::write(&sibling, "keep").expect("write");
    setup
        .target
        .start_background("sleep 300", &no_env(), "sleeper")
        .await
        .expect("start");
    let pid: i32 = std::fs::read_to_string(setup.work_root().join("pids/sleeper.pid"))
        .expect("pid")
        .trim()
        .parse()
        .expect("pid");
    // A leftover that escaped its service's process group.
    let (code, _, _) = setup
        .exec(
            "setsid sleep 300 >/dev/null 2>&1 </dev/null & echo $! > ../leftover.pid",
            &no_env(),
        )
        .await;
    assert_eq!(code, 0);
    let leftover: i32 = std::fs::read_to_string(setup.work_root().join("leftover.pid"))
        .expect("pid")
        .trim()
        .parse()
        .expect("pid");
    assert!(carries_marker(leftover, &setup.target.lease_id));

    setup.target.remove_work_root().await.expect("remove");
    assert!(!setup.work_root().exists(), "work root removed");
    assert!(sibling.exists(), "its sibling is untouched");
    assert!(process_gone(pid), "service stopped");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !process_gone(leftover) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(process_gone(leftover), "leftover killed");
    setup
        .target
        .remove_work_root()
        .await
        .expect("removing again is fine");

    for broad in ["", "/", "/tmp", "/tmp/", "tmp", "/tmp/..", "/tmp/x/../.."] {
        let target = SshTarget {
            work_root: broad.to_owned(),
            ..setup.target.clone()
        };
        let err = target.remove_work_root().await.expect_err(broad);
        assert!(
            matches!(err, ProviderError::Failed(_)),
            "{broad:?}: {err:?}"
        );
        assert!(err.to_string().contains("refusing"), "{err}");
    }
    assert!(Path::new("/tmp").is_dir());
    setup.target.close().await;
}

/// Client-side ESTABLISHED TCP connections to 127.0.0.1:`port` (from /proc/net/tcp).
fn established_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let remote = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.get(2) == Some(&remote.as_str()) && cols.get(3) == Some(&"01")
        })
        .count()
}
