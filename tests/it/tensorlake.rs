//! The `tensorlake` provider against the fake `tensorlake` CLI
//! (`tests/fixtures/fake-tensorlake`), which keeps its sandboxes as
//! directories and logs every invocation's argv and key.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crabbox_core::labels;
use crabbox_core::lease::{Lease, new_lease_id};
use crabbox_core::provider::ProviderName;
use crabbox_core::provider::{OutputSink, ProviderError, Stream};
use crabbox_exec::archive;
use crabbox_exec::session::ExecRequest;
use crabbox_providers::tensorlake::{TensorlakeDefaults, TensorlakeProvider, is_sandbox_id};
use crabbox_providers::{CreateRequest, Provider};
use crabbox_spec::desired::{DesiredMember, Probe, SyncSettings};
use crabbox_spec::member_labels;
use crabbox_state::claims::{Claim, ClaimStore, claim_state, now_rfc3339};
use serde_json::{Value, json};

use crate::support;

const POND: &str = "pr-42";
const KEY: &str = "tl_apiKey_TEST_0123456789abcdef";

fn fake_cli() -> String {
    support::root()
        .join("tests/fixtures/fake-tensorlake")
        .display()
        .to_string()
}

/// One test's directories: crabbox's state, the fake's state and its log.
struct Fx {
    dir: tempfile::TempDir,
}

impl Fx {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn fake_state(&self) -> PathBuf {
        self.dir.path().join("fake")
    }

    fn claims(&self) -> ClaimStore {
        ClaimStore::local(&self.state())
    }

    /// A provider with `KEY`, no defaults from this process's environment,
    /// talking to this test's fake.
    fn provider(&self) -> TensorlakeProvider {
        self.provider_with(KEY, &[])
    }

    fn provider_with(&self, key: &str, env: &[(&str, &str)]) -> TensorlakeProvider {
        self.wire(
            TensorlakeProvider::new(key, &self.state())
                .with_defaults(TensorlakeDefaults::default()),
            env,
        )
    }

    fn wire(&self, provider: TensorlakeProvider, env: &[(&str, &str)]) -> TensorlakeProvider {
        let mut p = provider
            .with_cli_env(
                "FAKE_TENSORLAKE_STATE",
                &self.fake_state().display().to_string(),
            )
            .with_cli_env(
                "FAKE_TENSORLAKE_LOG",
                &self.dir.path().join("fake.log").display().to_string(),
            )
            .with_ready_polling(Duration::from_millis(50), Duration::from_secs(20));
        for (k, v) in env {
            p = p.with_cli_env(k, v);
        }
        p
    }

    /// Every logged invocation, in order.
    fn log(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("fake.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("log line is JSON"))
            .collect()
    }

    /// The logged invocations of one `sbx` verb.
    fn calls(&self, verb: &str) -> Vec<Value> {
        self.log()
            .into_iter()
            .filter(|e| sbx_args(e).first().map(String::as_str) == Some(verb))
            .collect()
    }

    /// The sandbox's filesystem.
    fn sandbox(&self, id: &str) -> PathBuf {
        self.fake_state().join("sandboxes").join(id)
    }

    /// Runs the fake directly (not logged), with the key.
    fn fake(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(fake_cli())
            .args(args)
            .env("FAKE_TENSORLAKE_STATE", self.fake_state())
            .env("TENSORLAKE_API_KEY", KEY)
            .env_remove("FAKE_TENSORLAKE_LOG")
            .env_remove("FAKE_TENSORLAKE_EXPECT_KEY")
            .output()
            .expect("the fake runs")
    }

    /// The sandbox IDs the fake lists in the default namespace.
    fn listed(&self) -> Vec<String> {
        self.listed_in(&[])
    }

    fn listed_in(&self, globals: &[&str]) -> Vec<String> {
        let mut args = globals.to_vec();
        args.extend(["sbx", "ls", "-q"]);
        let out = self.fake(&args);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Writes the pending claim the executor writes, then creates.
    async fn create(
        &self,
        provider: &TensorlakeProvider,
        slug: &str,
        block: Value,
    ) -> Result<Lease, ProviderError> {
        provider
            .create(&self.pending(POND, slug, block).await)
            .await
    }

    async fn pending(&self, pond: &str, slug: &str, block: Value) -> CreateRequest {
        let m = member(slug, block);
        let lease_id = new_lease_id();
        let labels = member_labels::for_create(pond, &lease_id, &m, labels::now_secs());
        self.claims()
            .write(&Claim {
                lease_id: lease_id.clone(),
                slug: slug.to_owned(),
                provider: "tensorlake".to_owned(),
                pond: pond.to_owned(),
                claimed_at: now_rfc3339(),
                last_used_at: now_rfc3339(),
                idle_timeout_seconds: m.idle_timeout.as_secs(),
                labels: labels.clone(),
                state: claim_state::PENDING.to_owned(),
                ..Claim::default()
            })
            .await
            .expect("pending claim");
        CreateRequest {
            lease_id,
            pond: pond.to_owned(),
            member: m,
            labels,
        }
    }
}

/// The member block: the fake CLI plus `extra`.
fn block(extra: Value) -> Value {
    let mut b = json!({ "cliPath": fake_cli() });
    let Value::Object(extra) = extra else {
        panic!("a block is an object")
    };
    for (k, v) in extra {
        b[&k] = v;
    }
    b
}

fn member(slug: &str, block: Value) -> DesiredMember {
    DesiredMember {
        expose: vec![8080],
        sync: SyncSettings {
            enabled: true,
            exclude: vec![],
            max_bytes: 1 << 20,
        },
        ttl: Duration::from_secs(3600),
        idle_timeout: Duration::from_secs(600),
        provider_block: Some(block),
        ..DesiredMember::new(slug, ProviderName::Tensorlake)
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|s| s.as_str().expect("string").to_owned())
        .collect()
}

/// A logged invocation's argv after `sbx`.
fn sbx_args(entry: &Value) -> Vec<String> {
    let argv = strings(&entry["argv"]);
    let at = argv.iter().position(|a| a == "sbx").expect("sbx in argv");
    argv[at + 1..].to_vec()
}

/// A logged invocation's argv before `sbx` (the global flags).
fn globals(entry: &Value) -> Vec<String> {
    let argv = strings(&entry["argv"]);
    let at = argv.iter().position(|a| a == "sbx").expect("sbx in argv");
    argv[..at].to_vec()
}

/// The key reached every invocation through its environment and none through argv.
fn assert_key_hygiene(log: &[Value]) {
    assert!(!log.is_empty(), "the fake was called");
    for entry in log {
        assert_eq!(entry["env"]["TENSORLAKE_API_KEY"], KEY, "{entry}");
        assert!(
            entry["env"]["CRABBOX_TENSORLAKE_API_KEY"].is_null(),
            "{entry}"
        );
        for arg in strings(&entry["argv"]) {
            assert!(!arg.contains(KEY), "the key is on a command line: {entry}");
        }
    }
}

/// Lines as they arrive, with when.
#[derive(Default)]
struct Lines {
    lines: Mutex<Vec<(Stream, String, Instant)>>,
}

impl OutputSink for Lines {
    fn line(&self, stream: Stream, line: &str) {
        self.lines
            .lock()
            .expect("lock")
            .push((stream, line.to_owned(), Instant::now()));
    }
}

impl Lines {
    fn of(&self, stream: Stream) -> Vec<String> {
        self.lines
            .lock()
            .expect("lock")
            .iter()
            .filter(|(s, _, _)| *s == stream)
            .map(|(_, l, _)| l.clone())
            .collect()
    }

    fn at(&self, line: &str) -> Instant {
        self.lines
            .lock()
            .expect("lock")
            .iter()
            .find(|(_, l, _)| l == line)
            .map_or_else(|| panic!("no line {line:?}"), |(_, _, t)| *t)
    }
}

fn exec_request(command: &str) -> ExecRequest {
    ExecRequest {
        command: command.to_owned(),
        env: BTreeMap::new(),
        timeout: Some(Duration::from_secs(60)),
    }
}

async fn run(p: &TensorlakeProvider, lease: &Lease, command: &str) -> (i32, Arc<Lines>) {
    let sink = Arc::new(Lines::default());
    let code = p
        .session(lease)
        .exec(&exec_request(command), sink.clone())
        .await
        .expect("exec");
    (code, sink)
}

/// Processes on this machine whose environment carries the lease's marker.
fn marked_processes(lease_id: &str) -> Vec<u32> {
    let needle = format!("CRABBOX_LEASE_ID={lease_id}");
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()))
        })
        .collect()
}

async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

#[tokio::test]
async fn create_passes_exactly_the_configured_options_and_parses_the_id() {
    let fx = Fx::new();
    let p = fx.provider();

    let lease = fx
        .create(
            &p,
            "api",
            block(json!({
                "cpus": 2.5, "memoryMB": 2048, "diskMB": 4096, "timeoutSecs": 600,
                "image": "ubuntu-22.04", "noInternet": true,
            })),
        )
        .await
        .expect("create");
    assert!(is_sandbox_id(&lease.cloud_id), "{lease:?}");
    assert_eq!(fx.listed(), vec![lease.cloud_id.clone()]);
    assert_eq!(lease.provider, ProviderName::Tensorlake);
    assert!(lease.is_ours(POND), "labels come from the claim: {lease:?}");

    let creates = fx.calls("create");
    assert_eq!(creates.len(), 1);
    let args = sbx_args(&creates[0]);
    let name = args.last().expect("name").clone();
    assert_eq!(
        args,
        [
            "create",
            "-c",
            "2.5",
            "-m",
            "2048",
            "--disk_mb",
            "4096",
            "-t",
            "600",
            "-i",
            "ubuntu-22.04",
            "-N",
            &name,
        ]
    );
    let suffix = name.strip_prefix("crabbox-pr-42-api-").expect("name shape");
    assert!(
        suffix.len() == 6 && suffix.bytes().all(|b| b.is_ascii_hexdigit()),
        "{name}"
    );
    assert!(name.len() <= 63);

    // The claim records the sandbox, its name and workdir.
    let claim = fx
        .claims()
        .load(&lease.id)
        .await
        .expect("readable")
        .expect("claim");
    assert_eq!(claim.cloud_id, lease.cloud_id);
    assert_eq!(claim.extra["tensorlakeSandboxName"], json!(name));
    assert_eq!(
        claim.extra["tensorlakeWorkdir"],
        json!("/workspace/crabbox")
    );
    // It waited for the sandbox and created the workdir.
    let verbs: Vec<String> = fx.log().iter().map(|e| sbx_args(e)[0].clone()).collect();
    assert_eq!(verbs, ["create", "describe", "exec"]);
    assert!(
        fx.sandbox(&lease.cloud_id)
            .join("workspace/crabbox")
            .is_dir()
    );

    // Only what a block sets is passed.
    let bare = fx
        .create(&p, "bare", block(json!({})))
        .await
        .expect("create");
    let snap = fx
        .create(
            &p,
            "snap",
            block(json!({ "snapshot": "snap-123", "noInternet": false, "workdir": "/srv/app/" })),
        )
        .await
        .expect("create");
    let creates = fx.calls("create");
    assert_eq!(
        sbx_args(&creates[1]).len(),
        2,
        "{:?}",
        sbx_args(&creates[1])
    );
    let snap_args = sbx_args(&creates[2]);
    assert_eq!(snap_args[..3], ["create", "-s", "snap-123"]);
    assert_eq!(snap_args.len(), 4);
    assert!(fx.sandbox(&snap.cloud_id).join("srv/app").is_dir());
    let (code, out) = run(&p, &snap, "pwd").await;
    assert_eq!(code, 0);
    assert!(
        out.of(Stream::Stdout)[0].ends_with("/srv/app"),
        "{:?}",
        out.of(Stream::Stdout)
    );
    assert_ne!(bare.cloud_id, lease.cloud_id);

    assert_key_hygiene(&fx.log());
}

#[tokio::test]
async fn global_flags_come_before_sbx_and_defaults_fill_gaps() {
    let fx = Fx::new();
    let p = fx.provider();
    let url = "https://api.example.test";
    let lease = fx
        .create(
            &p,
            "scoped",
            block(json!({
                "apiUrl": url, "organizationId": "org-1", "projectId": "proj-1",
                "namespace": "team-ns",
            })),
        )
        .await
        .expect("create");
    assert_eq!(run(&p, &lease, "true").await.0, 0);
    let listed = p.list(POND).await.expect("list");
    assert_eq!(listed.len(), 1, "found in its namespace: {listed:?}");
    // The fake scopes sandboxes by namespace, as the service does.
    assert!(fx.listed().is_empty());
    assert_eq!(
        fx.listed_in(&["--namespace", "team-ns"]),
        vec![lease.cloud_id.clone()]
    );
    p.release(&lease).await.expect("release");

    let log = fx.log();
    assert_eq!(
        log.len(),
        7,
        "create, describe, mkdir, exec, ls, describe, terminate"
    );
    for entry in &log {
        assert_eq!(
            globals(entry),
            [
                "--api-url",
                url,
                "--organization",
                "org-1",
                "--project",
                "proj-1",
                "--namespace",
                "team-ns",
            ],
            "{entry}"
        );
        assert_eq!(entry["env"]["TENSORLAKE_API_URL"], url);
        // Inherited scope variables never reach the CLI: the flags are the scope.
        assert!(entry["env"]["TENSORLAKE_ORGANIZATION_ID"].is_null());
        assert!(entry["env"]["TENSORLAKE_PROJECT_ID"].is_null());
        assert!(entry["env"]["INDEXIFY_NAMESPACE"].is_null());
    }
    assert_key_hygiene(&log);

    // Defaults (from the environment in real use) fill what a block leaves out.
    let fx = Fx::new();
    let p = fx.wire(
        TensorlakeProvider::new(KEY, &fx.state()).with_defaults(TensorlakeDefaults {
            organization: Some("org-env".into()),
            namespace: Some("ns-env".into()),
            ..TensorlakeDefaults::default()
        }),
        &[],
    );
    let lease = fx
        .create(&p, "mixed", block(json!({ "organizationId": "org-block" })))
        .await
        .expect("create");
    for entry in fx.log() {
        assert_eq!(
            globals(&entry),
            ["--organization", "org-block", "--namespace", "ns-env"]
        );
        assert!(entry["env"]["TENSORLAKE_API_URL"].is_null());
    }
    p.release(&lease).await.expect("release");
}

#[tokio::test]
async fn upload_and_exec_round_trip() {
    let fx = Fx::new();
    let p = fx.provider();
    let lease = fx
        .create(&p, "web", block(json!({})))
        .await
        .expect("create");

    let src = fx.dir.path().join("src");
    std::fs::create_dir_all(src.join("sub")).expect("src");
    std::fs::write(src.join("hello.txt"), "hi there\n").expect("file");
    std::fs::write(src.join("sub/nested.txt"), "deep\n").expect("file");
    std::fs::write(src.join("run.sh"), "#!/bin/sh\necho ran \"$1\"\n").expect("file");
    std::fs::set_permissions(src.join("run.sh"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    let built = archive::build(&src, &[], 1 << 20).expect("archive");
    p.session(&lease).upload(&built.path).await.expect("upload");

    let root = fx.sandbox(&lease.cloud_id);
    assert_eq!(
        std::fs::read_to_string(root.join("workspace/crabbox/sub/nested.txt")).expect("unpacked"),
        "deep\n"
    );
    let leftovers: Vec<_> = std::fs::read_dir(root.join("tmp"))
        .expect("tmp")
        .filter_map(Result::ok)
        .collect();
    assert!(
        leftovers.is_empty(),
        "the archive is removed: {leftovers:?}"
    );
    let cp = fx.calls("cp");
    assert_eq!(cp.len(), 1);
    let cp = sbx_args(&cp[0]);
    assert_eq!(cp[1], built.path.display().to_string());
    let dest = cp[2]
        .strip_prefix(&format!("{}:/tmp/crabbox-sync-", lease.cloud_id))
        .expect("copied to /tmp/crabbox-sync-*");
    assert!(
        Path::new(dest).extension().is_some_and(|x| x == "tgz"),
        "{dest}"
    );

    let (code, out) = run(
        &p,
        &lease,
        "cat hello.txt && cat sub/nested.txt && ./run.sh arg && echo \"lease=$CRABBOX_LEASE_ID\"",
    )
    .await;
    assert_eq!(code, 0, "{:?}", out.of(Stream::Stderr));
    assert_eq!(
        out.of(Stream::Stdout),
        [
            "hi there".to_owned(),
            "deep".to_owned(),
            "ran arg".to_owned(),
            format!("lease={}", lease.id),
        ]
    );
    let exec = fx.calls("exec");
    let last = sbx_args(exec.last().expect("exec"));
    assert_eq!(
        last[..5],
        ["exec", "-w", "/workspace/crabbox", &lease.cloud_id, "bash"],
        "no `--` before the argv"
    );
    assert_eq!(last[5], "-lc");
    assert_key_hygiene(&fx.log());
}

#[tokio::test]
async fn exec_streams_output_and_passes_exit_codes() {
    let fx = Fx::new();
    let p = fx.provider();
    let lease = fx
        .create(&p, "runner", block(json!({})))
        .await
        .expect("create");

    let (code, out) = run(
        &p,
        &lease,
        "echo one; echo err1 >&2; echo two; printf 'no newline'; exit 7",
    )
    .await;
    assert_eq!(code, 7);
    assert_eq!(out.of(Stream::Stdout), ["one", "two", "no newline"]);
    assert_eq!(out.of(Stream::Stderr), ["err1"]);

    // Lines arrive as they are printed, not when the command ends.
    let (code, out) = run(&p, &lease, "echo first; sleep 1.5; echo second").await;
    assert_eq!(code, 0);
    let gap = out.at("second").duration_since(out.at("first"));
    assert!(gap >= Duration::from_secs(1), "streamed: {gap:?}");

    assert_eq!(run(&p, &lease, "exit 0").await.0, 0);
    assert_eq!(run(&p, &lease, "false").await.0, 1);
    assert_eq!(run(&p, &lease, "kill -9 $$").await.0, 137);

    // A time limit kills the command.
    let started = Instant::now();
    let err = p
        .session(&lease)
        .exec(
            &ExecRequest {
                command: "sleep 30".into(),
                env: BTreeMap::new(),
                timeout: Some(Duration::from_secs(1)),
            },
            Arc::new(Lines::default()),
        )
        .await
        .expect_err("times out");
    assert!(err.to_string().contains("timed out"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        eventually(Duration::from_secs(5), || async {
            marked_processes(&lease.id).is_empty()
        })
        .await,
        "the timed-out command is gone"
    );
    assert_key_hygiene(&fx.log());
}

#[tokio::test]
async fn env_values_reach_the_command_but_never_a_command_line() {
    let fx = Fx::new();
    let p = fx.provider();
    let lease = fx
        .create(&p, "envy", block(json!({})))
        .await
        .expect("create");
    let secret = "tok-S3CR3T-'quoted' $HOME `id` \"dq\"";
    let env: BTreeMap<String, String> = [
        ("PLAIN", "hello world"),
        ("API_TOKEN", secret),
        ("MULTI", "line1\nline2"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let sink = Arc::new(Lines::default());
    let code = p
        .session(&lease).exec(
            &ExecRequest {
                command: r#"printf '%s|' "$PLAIN" "$API_TOKEN"; printf '\n'; printf '%s\n' "$MULTI"; ls /tmp | grep -c crabbox-env || true"#.into(),
                env: env.clone(),
                timeout: Some(Duration::from_secs(60)),
            },
            sink.clone(),
        )
        .await
        .expect("exec");
    assert_eq!(code, 0, "{:?}", sink.of(Stream::Stderr));
    assert_eq!(
        sink.of(Stream::Stdout),
        [
            format!("hello world|{secret}|"),
            "line1".to_owned(),
            "line2".to_owned(),
            "0".to_owned(),
        ],
        "the profile is deleted before the command runs"
    );

    // A failing command with env: the profile is removed all the same.
    let failing = ExecRequest {
        command: "exit 5".into(),
        env: env.clone(),
        timeout: Some(Duration::from_secs(60)),
    };
    assert_eq!(
        p.session(&lease)
            .exec(&failing, Arc::new(Lines::default()))
            .await
            .expect("exec"),
        5
    );
    // Probes with env too.
    assert!(
        p.session(&lease)
            .probe(&Probe::Command("test \"${#PLAIN}\" -eq 11".into()), &env)
            .await
            .expect("probe")
    );

    let log = fx.log();
    for entry in &log {
        for arg in strings(&entry["argv"]) {
            for value in ["S3CR3T", "hello world", "line1"] {
                assert!(!arg.contains(value), "`{value}` on a command line: {entry}");
            }
        }
        let names = strings(&entry["env_names"]);
        assert!(
            !names.iter().any(|n| n == "API_TOKEN" || n == "PLAIN"),
            "forwarded env reached the CLI's own environment: {names:?}"
        );
    }
    let copies = fx.calls("cp");
    assert_eq!(copies.len(), 3, "one profile per call");
    for cp in &copies {
        let args = sbx_args(cp);
        let local = Path::new(&args[1]);
        assert!(
            local
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("crabbox-env-")),
            "{args:?}"
        );
        assert!(
            !local.exists(),
            "the local profile is removed: {}",
            local.display()
        );
        let remote = args[2]
            .strip_prefix(&format!("{}:", lease.cloud_id))
            .expect("into the sandbox");
        assert!(remote.starts_with("/tmp/crabbox-env-"), "{remote}");
        assert!(
            log.iter().any(|e| strings(&e["argv"])
                .iter()
                .any(|a| a.contains(&format!(". '{remote}'")))),
            "the exec script sources {remote}"
        );
    }
    let tmp = fx.sandbox(&lease.cloud_id).join("tmp");
    let remote_left: Vec<_> = std::fs::read_dir(&tmp)
        .expect("tmp")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert!(
        remote_left.is_empty(),
        "removed in the sandbox: {remote_left:?}"
    );
    let local_dir = fx.state().join("tensorlake/tmp");
    let local_left: Vec<_> = std::fs::read_dir(&local_dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(local_left.is_empty(), "removed locally: {local_left:?}");
    let mode = std::fs::metadata(&local_dir)
        .expect("dir")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "the local profile directory is private");
    assert_key_hygiene(&log);
}

#[tokio::test]
async fn background_service_tcp_probe_and_stop() {
    let fx = Fx::new();
    let p = fx.provider();
    let lease = fx
        .create(&p, "svc", block(json!({})))
        .await
        .expect("create");
    let port = free_port();
    let env: BTreeMap<String, String> =
        [("GREETING".to_owned(), "hello from env".to_owned())].into();
    let request = ExecRequest {
        command: format!(
            "echo \"$GREETING\" > greeting.txt; exec python3 -m http.server {port} --bind 127.0.0.1"
        ),
        env: env.clone(),
        timeout: None,
    };
    p.session(&lease)
        .start_background(&request, "web")
        .await
        .expect("start");
    let tcp = Probe::Tcp { host: None, port };
    assert!(
        eventually(Duration::from_secs(20), || async {
            p.session(&lease)
                .probe(&tcp, &BTreeMap::new())
                .await
                .expect("probe")
        })
        .await,
        "the service answers"
    );
    let wd = fx.sandbox(&lease.cloud_id).join("workspace/crabbox");
    assert_eq!(
        std::fs::read_to_string(wd.join("greeting.txt")).expect("written"),
        "hello from env\n"
    );
    assert!(wd.join(".crabbox/pids/web.pid").is_file());
    assert!(wd.join(".crabbox/logs/web.log").is_file());
    assert!(
        p.session(&lease)
            .probe(
                &Probe::Http(format!("http://127.0.0.1:{port}/greeting.txt")),
                &BTreeMap::new()
            )
            .await
            .expect("http probe")
    );
    assert!(
        p.session(&lease)
            .probe(
                &Probe::Command("test -f greeting.txt".into()),
                &BTreeMap::new()
            )
            .await
            .expect("probe")
    );
    assert!(
        !p.session(&lease)
            .probe(&Probe::Command("test -f nope".into()), &BTreeMap::new())
            .await
            .expect("probe")
    );
    assert!(!marked_processes(&lease.id).is_empty());

    p.session(&lease).stop_background().await.expect("stop");
    assert!(!wd.join(".crabbox/pids/web.pid").exists());
    assert!(
        !p.session(&lease)
            .probe(&tcp, &BTreeMap::new())
            .await
            .expect("probe"),
        "stopped"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            marked_processes(&lease.id).is_empty()
        })
        .await,
        "nothing of the lease runs"
    );

    // A service that dies at once is an error with its output.
    let err = p
        .session(&lease)
        .start_background(&exec_request("echo broken >&2; exit 3"), "bad")
        .await
        .expect_err("fails");
    let text = err.to_string();
    assert!(
        text.contains("status 3") && text.contains("broken"),
        "{text}"
    );
    assert!(
        p.session(&lease)
            .start_background(&exec_request("true"), "../x")
            .await
            .is_err()
    );
    assert_key_hygiene(&fx.log());
    p.release(&lease).await.expect("release");
}

#[tokio::test]
async fn list_joins_claims_and_never_touches_unclaimed_sandboxes() {
    let fx = Fx::new();
    let p = fx.provider();
    // A sandbox crabbox did not make (no claim).
    let out = fx.fake(&["sbx", "create", "someone-elses"]);
    assert!(out.status.success(), "{out:?}");
    let foreign = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .expect("id")
        .to_owned();
    assert!(is_sandbox_id(&foreign));

    let ours = fx
        .create(&p, "api", block(json!({})))
        .await
        .expect("create");
    let elsewhere = p
        .create(&fx.pending("other-pond", "api", block(json!({}))).await)
        .await
        .expect("create in another pond");
    // A pending claim whose create never finished, and one whose sandbox is gone.
    let ghost = fx.pending(POND, "ghost", block(json!({}))).await;
    let gone = fx
        .create(&p, "gone", block(json!({})))
        .await
        .expect("create");
    let out = fx.fake(&["sbx", "terminate", &gone.cloud_id]);
    assert!(
        out.status.success(),
        "terminated behind crabbox's back: {out:?}"
    );
    let before = fx.calls("ls").len();
    let leases = p.list(POND).await.expect("list");
    assert_eq!(fx.calls("ls").len(), before + 1, "one `ls -q`");
    assert_eq!(leases.len(), 1, "{leases:?}");
    let lease = &leases[0];
    assert_eq!(lease.id, ours.id);
    assert_eq!(lease.cloud_id, ours.cloud_id);
    assert!(lease.listed && lease.claimed);
    assert!(lease.is_ours(POND));
    assert_eq!(lease.labels, ours.labels, "labels come from the claim");
    assert!(
        !leases
            .iter()
            .any(|l| l.id == ghost.lease_id || l.id == gone.id)
    );
    assert_eq!(p.list("other-pond").await.expect("list").len(), 1);
    assert!(p.list("empty-pond").await.expect("list").is_empty());

    // Relabel writes the claim.
    let mut relabelled = lease.labels.clone();
    relabelled.insert("state".into(), "ready".into());
    p.relabel(lease, &relabelled).await.expect("relabel");
    assert_eq!(p.list(POND).await.expect("list")[0].labels, relabelled);

    // A lease naming a sandbox its claim does not record is refused.
    let mut forged = ours.clone();
    forged.cloud_id.clone_from(&foreign);
    let err = p.release(&forged).await.expect_err("refused");
    assert!(err.to_string().contains("refusing"), "{err}");

    p.release(&ours).await.expect("release");
    p.release(&elsewhere).await.expect("release");
    assert_eq!(
        fx.listed(),
        vec![foreign.clone()],
        "the unclaimed sandbox survives"
    );
    for entry in fx.log() {
        assert!(
            !strings(&entry["argv"]).iter().any(|a| a.contains(&foreign)),
            "the unclaimed sandbox was named: {entry}"
        );
    }
    assert_key_hygiene(&fx.log());
}

#[tokio::test]
async fn release_terminates_and_second_release_is_not_found() {
    let fx = Fx::new();
    let p = fx.provider();
    let lease = fx.create(&p, "db", block(json!({}))).await.expect("create");
    p.session(&lease)
        .start_background(&exec_request("exec sleep 300"), "sleeper")
        .await
        .expect("start");
    assert!(!marked_processes(&lease.id).is_empty());

    p.release(&lease).await.expect("release");
    assert!(fx.listed().is_empty());
    assert!(!fx.sandbox(&lease.cloud_id).exists());
    assert!(
        eventually(Duration::from_secs(5), || async {
            marked_processes(&lease.id).is_empty()
        })
        .await,
        "the sandbox's processes are gone"
    );
    let terminates = fx.calls("terminate");
    assert_eq!(terminates.len(), 1);
    assert_eq!(sbx_args(&terminates[0]), ["terminate", &lease.cloud_id]);

    let err = p.release(&lease).await.expect_err("already gone");
    assert!(matches!(err, ProviderError::NotFound(_)), "{err:?}");
    assert!(p.list(POND).await.expect("list").is_empty());
    // Without its claim, nothing is addressed at all.
    fx.claims().remove(&lease.id).await.expect("forget");
    let calls = fx.log().len();
    let err = p.release(&lease).await.expect_err("no claim");
    assert!(matches!(err, ProviderError::NotFound(_)), "{err:?}");
    assert_eq!(fx.log().len(), calls);
    assert_key_hygiene(&fx.log());
}

#[tokio::test]
async fn missing_or_rejected_key_is_a_clear_credentials_error() {
    let fx = Fx::new();
    // No key anywhere: not configured.
    assert!(TensorlakeProvider::from_vars(&fx.state(), |_| None).is_none());
    assert!(TensorlakeProvider::from_vars(&fx.state(), |_| Some("  ".into())).is_none());

    // An empty key is refused before the CLI runs, naming what to set.
    let p = fx.provider_with("", &[]);
    for err in [
        fx.create(&p, "api", block(json!({})))
            .await
            .expect_err("no key"),
        p.list(POND).await.expect_err("no key"),
    ] {
        let ProviderError::Credentials { message, hint } = &err else {
            panic!("{err:?}")
        };
        assert!(message.contains("API key"), "{message}");
        assert!(
            hint.contains("CRABBOX_TENSORLAKE_API_KEY") && hint.contains("TENSORLAKE_API_KEY"),
            "{hint}"
        );
    }
    assert!(fx.log().is_empty());

    // The fake itself refuses without the key.
    let out = std::process::Command::new(fake_cli())
        .args(["sbx", "ls", "-q"])
        .env("FAKE_TENSORLAKE_STATE", fx.fake_state())
        .env_remove("TENSORLAKE_API_KEY")
        .env_remove("FAKE_TENSORLAKE_LOG")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "Error: unauthorized"
    );

    // A rejected key: a Credentials error (exit 3), the key redacted from the CLI's echo.
    let p = fx.provider_with(
        KEY,
        &[
            ("FAKE_TENSORLAKE_EXPECT_KEY", "tl_apiKey_other"),
            ("FAKE_TENSORLAKE_ECHO_KEY", "1"),
        ],
    );
    let err = fx
        .create(&p, "api", block(json!({})))
        .await
        .expect_err("rejected");
    let ProviderError::Credentials { message, .. } = &err else {
        panic!("{err:?}")
    };
    assert!(message.contains("unauthorized"), "{message}");
    assert!(message.contains("<redacted>"), "{message}");
    assert!(!message.contains(KEY), "{message}");
    assert!(!format!("{err:?}").contains(KEY));
    assert!(!format!("{p:?}").contains(KEY), "Debug redacts the key");

    // CRABBOX_TENSORLAKE_API_KEY wins over TENSORLAKE_API_KEY.
    let vars: BTreeMap<&str, &str> = [
        ("CRABBOX_TENSORLAKE_API_KEY", KEY),
        ("TENSORLAKE_API_KEY", "tl_apiKey_loser"),
    ]
    .into();
    let p = fx.wire(
        TensorlakeProvider::from_vars(&fx.state(), |k| vars.get(k).map(|v| (*v).to_owned()))
            .expect("configured"),
        &[],
    );
    let lease = fx
        .create(&p, "api", block(json!({})))
        .await
        .expect("create");
    assert_key_hygiene(&fx.log());
    p.release(&lease).await.expect("release");
}

#[tokio::test]
async fn failures_after_create_terminate_the_sandbox() {
    // The sandbox never runs: it is terminated and the error says so.
    let fx = Fx::new();
    let p = fx.provider_with(KEY, &[("FAKE_TENSORLAKE_STATUS", "failed")]);
    let err = fx
        .create(&p, "api", block(json!({})))
        .await
        .expect_err("fails");
    let text = err.to_string();
    assert!(
        text.contains("`failed`") && text.contains("terminated"),
        "{text}"
    );
    assert!(fx.listed().is_empty(), "terminated");
    assert_eq!(fx.calls("terminate").len(), 1);

    // Create itself fails: its stderr is in the error; nothing is left.
    let fx = Fx::new();
    let p = fx.provider_with(KEY, &[("FAKE_TENSORLAKE_FAIL_CREATE", "1")]);
    let err = fx
        .create(&p, "api", block(json!({})))
        .await
        .expect_err("fails");
    assert!(err.to_string().contains("capacity exhausted"), "{err}");
    assert!(!err.is_retryable());
    assert!(fx.listed().is_empty());

    // No ID in the output.
    let fx = Fx::new();
    let p = fx.provider_with(KEY, &[("FAKE_TENSORLAKE_CREATE_NO_ID", "1")]);
    let err = fx
        .create(&p, "api", block(json!({})))
        .await
        .expect_err("fails");
    assert!(err.to_string().contains("printed no sandbox ID"), "{err}");

    // A slow boot is waited for.
    let fx = Fx::new();
    let p = fx.provider_with(KEY, &[("FAKE_TENSORLAKE_PENDING_DESCRIBES", "2")]);
    let lease = fx
        .create(&p, "api", block(json!({})))
        .await
        .expect("create");
    assert_eq!(fx.calls("describe").len(), 3);
    p.release(&lease).await.expect("release");

    // Bad settings and a missing CLI are configuration errors, found before
    // anything is created.
    let fx = Fx::new();
    let p = fx.provider();
    let err = fx
        .create(&p, "api", block(json!({ "workdir": "/tmp" })))
        .await
        .expect_err("broad workdir");
    assert!(matches!(err, ProviderError::Config { .. }), "{err:?}");
    let err = fx
        .create(&p, "api", json!({ "cliPath": "/nonexistent/tensorlake" }))
        .await
        .expect_err("no CLI");
    let ProviderError::Config { message, .. } = &err else {
        panic!("{err:?}")
    };
    assert!(message.contains("/nonexistent/tensorlake"), "{message}");
    // A missing pending claim is refused.
    let err = p
        .create(&CreateRequest {
            lease_id: new_lease_id(),
            pond: POND.into(),
            member: member("api", block(json!({}))),
            labels: labels::Labels::new(),
        })
        .await
        .expect_err("no pending claim");
    assert!(err.to_string().contains("pending claim"), "{err}");
    assert!(fx.log().is_empty());
}

/// Crabbox names a Tensorlake lease `tlsbx_<sandbox id>`
/// (tensorlake/core.go:38, tensorlake/backend.go:335-341) and maps it back
/// by trimming the prefix (backend.go:358-388). The ID is only known after
/// `sbx create`, so the lease starts under a provisional ID and is re-keyed;
/// a crash on either side of the re-key leaves the sandbox reachable and
/// listed once.
#[tokio::test]
async fn leases_are_rekeyed_to_crabboxs_id_and_a_crash_around_it_recovers() {
    let fx = Fx::new();
    let p = fx.provider();
    let request = fx.pending(POND, "api", block(json!({}))).await;
    let lease = p.create(&request).await.expect("create");
    assert_eq!(lease.id, format!("tlsbx_{}", lease.cloud_id));
    assert_eq!(lease.label("lease"), Some(lease.id.as_str()));
    assert!(lease.is_ours(POND), "{lease:?}");
    let claim = fx
        .claims()
        .load(&lease.id)
        .await
        .expect("readable")
        .expect("the claim is named as Crabbox names it");
    assert_eq!(claim.cloud_id, lease.cloud_id);
    assert!(
        fx.claims()
            .load(&request.lease_id)
            .await
            .expect("readable")
            .is_none(),
        "the provisional claim is gone"
    );
    let listed = p.list(POND).await.expect("list");
    assert_eq!(
        listed.iter().map(|l| &l.id).collect::<Vec<_>>(),
        [&lease.id]
    );

    // A crash after the re-keyed claim was written, before the provisional
    // one was removed: one lease, the provisional claim left dangling.
    let mut leftover = claim.clone();
    leftover.lease_id.clone_from(&request.lease_id);
    leftover
        .labels
        .insert("lease".into(), request.lease_id.as_str().into());
    fx.claims().write(&leftover).await.expect("write");
    let listed = p.list(POND).await.expect("list");
    assert_eq!(
        listed.iter().map(|l| &l.id).collect::<Vec<_>>(),
        [&lease.id]
    );

    // A crash before the re-key: only the provisional claim, recording the
    // sandbox ID; it is a lease (as claims of earlier versions are) and
    // release reaches the sandbox through it.
    fx.claims().remove(&lease.id).await.expect("remove");
    let listed = p.list(POND).await.expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, request.lease_id);
    assert!(listed[0].is_ours(POND));
    p.release(&listed[0]).await.expect("release");
    assert!(!fx.listed().contains(&lease.cloud_id));
}
