//! The `islo` provider against the fake Islo API ([`crate::fake_islo`]),
//! whose sandboxes really run commands in temporary directories.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crabbox_core::labels;
use crabbox_core::lease::{Lease, new_lease_id};
use crabbox_core::provider::ProviderName;
use crabbox_core::provider::{OutputSink, ProviderError, Stream};
use crabbox_core::retry::with_retries;
use crabbox_exec::session::ExecRequest;
use crabbox_providers::islo::{IsloProvider, sandbox_name};
use crabbox_providers::{CreateRequest, Pausing, Provider, UrlBridge};
use crabbox_spec::desired::{DesiredMember, Probe, SyncSettings};
use crabbox_spec::member_labels;
use crabbox_state::claims::{Claim, ClaimStore, claim_state, now_rfc3339};
use serde_json::{Value, json};

use crate::fake_islo::{self, API_KEY, FakeConfig, FakeHandle, FakeIslo, LoggedRequest};

const POND: &str = "pr-42";
/// A sandbox of someone else's, with a name like ours.
const FOREIGN_LOOKALIKE: &str = "crabbox-pr-42-web-abcdef";
/// A sandbox of someone else's.
const FOREIGN: &str = "prod-db";

/// A started fake with two planted sandboxes no claim names:
/// [`Fixture::check_foreign_untouched`] proves no call changed them.
struct Fixture {
    fake: FakeIslo,
    state: tempfile::TempDir,
}

impl Fixture {
    async fn new() -> Self {
        Self::with(FakeConfig {
            boot_delay: Duration::from_millis(150),
            ..FakeConfig::default()
        })
        .await
    }

    async fn with(config: FakeConfig) -> Self {
        let fake = fake_islo::start(config).await;
        fake.handle.plant_sandbox(FOREIGN);
        fake.handle.plant_sandbox(FOREIGN_LOOKALIKE);
        Self {
            fake,
            state: tempfile::tempdir().expect("state dir"),
        }
    }

    fn handle(&self) -> &FakeHandle {
        &self.fake.handle
    }

    fn provider(&self) -> IsloProvider {
        self.provider_with_key(API_KEY)
    }

    fn provider_with_key(&self, key: &str) -> IsloProvider {
        IsloProvider::new(&self.fake.base_url, key, self.state.path())
            .with_boot_polling(Duration::from_millis(25), Duration::from_secs(10))
            .with_request_timeout(Duration::from_secs(10))
    }

    fn claims(&self) -> ClaimStore {
        ClaimStore::local(self.state.path())
    }

    /// Requests with this method whose path starts with `prefix`.
    fn requests(&self, method: &str, prefix: &str) -> Vec<LoggedRequest> {
        self.handle()
            .requests()
            .into_iter()
            .filter(|r| r.method == method && r.path.starts_with(prefix))
            .collect()
    }

    /// What the executor does before `create`: mint a lease ID and write
    /// the pending claim.
    async fn pending(&self, pond: &str, m: DesiredMember) -> CreateRequest {
        let lease_id = self.provider().lease_id(pond, &m).await.expect("mint");
        let labels = member_labels::for_create(pond, &lease_id, &m, labels::now_secs());
        let claim = Claim {
            lease_id: lease_id.clone(),
            slug: m.slug.clone(),
            provider: "islo".to_owned(),
            pond: pond.to_owned(),
            claimed_at: now_rfc3339(),
            last_used_at: now_rfc3339(),
            idle_timeout_seconds: m.idle_timeout.as_secs(),
            labels: labels.clone(),
            state: claim_state::PENDING.to_owned(),
            ..Claim::default()
        };
        self.claims().write(&claim).await.expect("pending claim");
        CreateRequest {
            lease_id,
            pond: pond.to_owned(),
            member: m,
            labels,
        }
    }

    /// A lease of `slug` with `block`, created through `provider`.
    async fn lease(&self, provider: &IsloProvider, slug: &str, block: Value) -> Lease {
        let request = self.pending(POND, member(slug, block)).await;
        provider.create(&request).await.expect("create")
    }

    /// The directory standing for `/workspace/<workdir>` of a lease.
    fn workspace(&self, lease: &Lease, workdir: &str) -> PathBuf {
        self.handle()
            .sandbox(&lease.cloud_id)
            .expect("sandbox exists")
            .root
            .join("workspace")
            .join(workdir)
    }

    fn check_foreign_untouched(&self) {
        for name in [FOREIGN, FOREIGN_LOOKALIKE] {
            let sandbox = self
                .handle()
                .sandbox(name)
                .unwrap_or_else(|| panic!("{name} still exists"));
            assert_eq!(sandbox.status, "running", "{name}");
            assert!(!self.handle().deleted().contains(&name.to_owned()));
            let touched: Vec<_> = self
                .handle()
                .requests()
                .into_iter()
                .filter(|r| r.path.starts_with(&format!("/sandboxes/{name}")))
                .filter(|r| r.method != "GET")
                .collect();
            assert!(
                touched.is_empty(),
                "no write ever named {name}: {touched:?}"
            );
        }
    }
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
        ..DesiredMember::new(slug, ProviderName::Islo)
    }
}

/// Collects output lines, in arrival order.
#[derive(Default)]
struct Collect(Mutex<Vec<(Stream, String)>>);

impl Collect {
    fn all(&self) -> Vec<(Stream, String)> {
        self.0.lock().expect("lock").clone()
    }

    fn stdout(&self) -> Vec<String> {
        self.all()
            .into_iter()
            .filter(|(s, _)| *s == Stream::Stdout)
            .map(|(_, l)| l)
            .collect()
    }
}

impl OutputSink for Collect {
    fn line(&self, stream: Stream, line: &str) {
        self.0.lock().expect("lock").push((stream, line.to_owned()));
    }
}

fn exec_request(command: &str) -> ExecRequest {
    ExecRequest {
        command: command.to_owned(),
        env: BTreeMap::new(),
        timeout: Some(Duration::from_secs(30)),
    }
}

async fn run(provider: &IsloProvider, lease: &Lease, command: &str) -> (i32, Arc<Collect>) {
    let sink = Arc::new(Collect::default());
    let code = provider
        .session(lease)
        .exec(&exec_request(command), sink.clone())
        .await
        .expect("exec");
    (code, sink)
}

/// A free TCP port on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

#[tokio::test]
async fn create_sends_only_explicit_keys_and_waits_for_running() {
    let fx = Fixture::new().await;
    let provider = fx.provider();

    let request = fx.pending(POND, member("web", json!({}))).await;
    let lease = provider.create(&request).await.expect("create");
    let name = sandbox_name(POND, "web", &request.lease_id);
    assert_eq!(lease.cloud_id, name);
    assert_eq!(lease.id, request.lease_id);
    assert_eq!(lease.provider, ProviderName::Islo);
    assert_eq!(lease.labels, request.labels);
    assert!(lease.is_ours(POND), "{lease:?}");
    assert_eq!(
        fx.handle().sandbox(&name).expect("created").status,
        "running",
        "create returns once the sandbox runs"
    );
    let creates = fx.requests("POST", "/sandboxes");
    let creates: Vec<_> = creates.iter().filter(|r| r.path == "/sandboxes").collect();
    assert_eq!(creates.len(), 1);
    assert_eq!(
        creates[0].body,
        json!({ "name": name }),
        "implicit defaults are left to Islo"
    );
    assert!(
        fx.requests("GET", &format!("/sandboxes/{name}")).len() >= 2,
        "the status was polled while the sandbox started"
    );
    assert!(
        fx.workspace(&lease, "crabbox").is_dir(),
        "the workdir exists"
    );
    // The claim named the sandbox before it existed, with its workdir.
    let claim = fx
        .claims()
        .load(&lease.id)
        .await
        .expect("readable")
        .expect("claim");
    assert_eq!(claim.cloud_id, name);
    assert_eq!(claim.extra["isloWorkdir"], json!("crabbox"));
    assert_eq!(claim.extra["isloBaseURL"], json!(fx.fake.base_url));
    assert_eq!(
        claim.extra["isloSandboxID"],
        json!(fx.handle().sandbox(&name).expect("sandbox").id)
    );

    // Explicit values are sent even when they equal the defaults; the
    // schema's snake_case aliases are read too; empty strings are unset.
    let request = fx
        .pending(
            POND,
            member(
                "db",
                json!({
                    "image": "docker.io/library/ubuntu:26.04",
                    "vcpus": 2,
                    "memory_mb": 4096,
                    "diskGB": 20,
                    "gateway_profile": "prod-apis",
                    "snapshotName": "",
                    "workdir": "app/backend"
                }),
            ),
        )
        .await;
    let lease = provider.create(&request).await.expect("create");
    let body = &fx
        .requests("POST", "/sandboxes")
        .into_iter()
        .rfind(|r| r.path == "/sandboxes")
        .expect("second create")
        .body;
    assert_eq!(
        body,
        &json!({
            "name": lease.cloud_id,
            "image": "docker.io/library/ubuntu:26.04",
            "gateway_profile": "prod-apis",
            "vcpus": 2,
            "memory_mb": 4096,
            "disk_gb": 20
        })
    );
    assert!(fx.workspace(&lease, "app/backend").is_dir());
    assert_eq!(
        fx.handle().sandbox(&lease.cloud_id).expect("sandbox").image,
        "docker.io/library/ubuntu:26.04"
    );
    fx.check_foreign_untouched();
}

#[tokio::test]
async fn create_deletes_a_sandbox_that_does_not_start() {
    let fx = Fixture::new().await;
    fx.handle().fail_next_boots(1);
    let request = fx.pending(POND, member("web", json!({}))).await;
    let err = fx
        .provider()
        .create(&request)
        .await
        .expect_err("boot fails");
    assert!(err.to_string().contains("`failed`"), "{err}");
    let name = sandbox_name(POND, "web", &request.lease_id);
    assert!(fx.handle().sandbox(&name).is_none(), "deleted again");
    assert_eq!(fx.handle().deleted(), vec![name]);

    // Without the pending claim the executor writes first, nothing is created.
    let request = CreateRequest {
        lease_id: fx
            .provider()
            .lease_id(POND, &request.member)
            .await
            .expect("mint"),
        ..request
    };
    let err = fx.provider().create(&request).await.expect_err("no claim");
    assert!(err.to_string().contains("pending claim"), "{err}");
    // A lease ID that is not Islo's shape names no sandbox to create.
    let request = CreateRequest {
        lease_id: new_lease_id(),
        ..request
    };
    let err = fx.provider().create(&request).await.expect_err("cbx_ ID");
    assert!(err.to_string().contains("not an Islo lease ID"), "{err}");
    assert_eq!(
        fx.requests("POST", "/sandboxes")
            .iter()
            .filter(|r| r.path == "/sandboxes")
            .count(),
        1
    );
    fx.check_foreign_untouched();
}

#[tokio::test]
async fn create_adopts_a_sandbox_whose_answer_was_lost() {
    let fx = Fixture::new().await;
    let request = fx.pending(POND, member("web", json!({}))).await;
    let name = sandbox_name(POND, "web", &request.lease_id);
    // An earlier attempt's POST went through; its answer did not.
    fx.handle().plant_sandbox(&name);
    let provider = fx.provider();
    let lease = with_retries(|| provider.create(&request))
        .await
        .expect("create adopts");
    assert_eq!(lease.cloud_id, name);
    assert!(fx.workspace(&lease, "crabbox").is_dir());
}

#[tokio::test]
async fn list_paginates_and_joins_claims() {
    let fx = Fixture::new().await;
    let provider = fx.provider();
    let a = fx.lease(&provider, "a", json!({})).await;
    let b = fx.lease(&provider, "b", json!({})).await;

    // A crash after the POST: the claim is still pending, but names a sandbox
    // that exists; it is adopted.
    let crashed = fx.pending(POND, member("c", json!({}))).await;
    let crashed_name = sandbox_name(POND, "c", &crashed.lease_id);
    let mut claim = fx
        .claims()
        .load(&crashed.lease_id)
        .await
        .expect("readable")
        .expect("claim");
    claim.cloud_id.clone_from(&crashed_name);
    fx.claims().write(&claim).await.expect("write");
    fx.handle().plant_sandbox(&crashed_name);

    // A crash before the POST: the claim names a sandbox that never existed.
    let dangling = fx.pending(POND, member("d", json!({}))).await;
    let mut claim = fx
        .claims()
        .load(&dangling.lease_id)
        .await
        .expect("readable")
        .expect("claim");
    claim.cloud_id = sandbox_name(POND, "d", &dangling.lease_id);
    fx.claims().write(&claim).await.expect("write");
    // A pending claim create never reached.
    let _unnamed = fx.pending(POND, member("e", json!({}))).await;

    // Another pond's lease.
    let other_request = fx.pending("pr-7", member("a", json!({}))).await;
    let other = provider.create(&other_request).await.expect("create");

    // 245 sandboxes nobody here claims (some with crabbox-like names).
    for i in 0..245 {
        fx.handle()
            .plant_sandbox(&format!("crabbox-pr-42-x{i}-{i:06}"));
    }
    let total = fx.handle().sandbox_names().len();
    assert_eq!(total, 2 + 2 + 1 + 1 + 245);

    fx.handle().set_latency(Duration::from_millis(100));
    fx.handle().clear_requests();
    let leases = provider.list(POND).await.expect("list");
    fx.handle().set_latency(Duration::ZERO);

    let mut want = vec![a.id.clone(), b.id.clone(), crashed.lease_id.clone()];
    want.sort();
    let ids: Vec<&str> = leases.iter().map(|l| l.id.as_str()).collect();
    assert_eq!(ids, want, "claims whose sandbox exists, nothing else");
    for lease in &leases {
        assert!(lease.is_ours(POND), "claim labels: {lease:?}");
        assert!(lease.listed && lease.claimed);
        assert_eq!(lease.provider, ProviderName::Islo);
    }
    let adopted = leases
        .iter()
        .find(|l| l.id == crashed.lease_id)
        .expect("adopted");
    assert_eq!(adopted.cloud_id, crashed_name);
    assert_eq!(adopted.labels, crashed.labels);

    let pages = fx.requests("GET", "/sandboxes");
    let pages: Vec<_> = pages.iter().filter(|r| r.path == "/sandboxes").collect();
    assert_eq!(pages.len(), 3, "{pages:?}");
    let mut offsets: Vec<&str> = pages.iter().filter_map(|p| p.param("offset")).collect();
    offsets.sort_unstable();
    assert_eq!(offsets, ["0", "100", "200"]);
    assert!(pages.iter().all(|p| p.param("limit") == Some("100")));
    assert!(
        fx.handle().max_in_flight_lists() >= 2,
        "pages 2 and 3 are fetched concurrently"
    );
    // Absence is confirmed by name before a claim counts as dangling.
    let confirm = fx.requests("GET", &format!("/sandboxes/{}", claim.cloud_id));
    assert_eq!(confirm.len(), 1);
    assert_eq!(confirm[0].status, 404);

    let others = provider.list("pr-7").await.expect("list");
    assert_eq!(
        others.iter().map(|l| &l.id).collect::<Vec<_>>(),
        vec![&other.id]
    );
    // A pond without claims costs no API call and has no leases.
    fx.handle().clear_requests();
    assert!(provider.list("pr-9").await.expect("list").is_empty());
    assert!(fx.handle().requests().is_empty());
    fx.check_foreign_untouched();
}

/// Writes `files` into a fresh directory and builds crabbox's sync archive of it.
fn archive_of(files: &[(&str, &str)]) -> (tempfile::TempDir, crabbox_exec::archive::SyncArchive) {
    let dir = tempfile::tempdir().expect("repo dir");
    for (path, content) in files {
        let full = dir.path().join(path);
        std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
        std::fs::write(full, content).expect("write");
    }
    let archive = crabbox_exec::archive::build(dir.path(), &[], 1 << 20).expect("archive");
    (dir, archive)
}

#[tokio::test]
async fn upload_and_exec_round_trip() {
    let fx = Fixture::new().await;
    let provider = fx.provider();
    let lease = fx
        .lease(&provider, "web", json!({ "workdir": "app/backend" }))
        .await;
    let (_repo, archive) = archive_of(&[
        ("hello.txt", "hello from the repo\n"),
        ("sub/data.txt", "42\n"),
    ]);
    provider
        .session(&lease)
        .upload(&archive.path)
        .await
        .expect("upload");

    let uploads = fx.requests(
        "POST",
        &format!("/sandboxes/{}/files-archive", lease.cloud_id),
    );
    assert_eq!(uploads.len(), 1);
    assert_eq!(uploads[0].param("path"), Some("/workspace/app/backend"));
    assert!(
        uploads[0]
            .header("content-type")
            .is_some_and(|c| c.starts_with("multipart/form-data; boundary=")),
        "{uploads:?}"
    );
    assert!(uploads[0].raw_body.contains(
        "Content-Disposition: form-data; name=\"file\"; filename=\"archive.tar.gz\"\r\nContent-Type: application/gzip"
    ));
    assert_eq!(
        std::fs::read_to_string(fx.workspace(&lease, "app/backend/sub/data.txt")).expect("synced"),
        "42\n"
    );

    let (code, out) = run(&provider, &lease, "cat hello.txt sub/data.txt && pwd").await;
    assert_eq!(code, 0);
    let stdout = out.stdout();
    assert_eq!(stdout[..2], ["hello from the repo", "42"]);
    assert!(stdout[2].ends_with("/workspace/app/backend"), "{stdout:?}");
    let execs = fx.requests(
        "POST",
        &format!("/sandboxes/{}/exec/stream", lease.cloud_id),
    );
    let last = execs.last().expect("exec");
    assert_eq!(last.header("accept"), Some("text/event-stream"));
    assert_eq!(
        last.body["command"],
        json!(["bash", "-lc", "cat hello.txt sub/data.txt && pwd"])
    );
    assert_eq!(last.body["workdir"], json!("/workspace/app/backend"));
    assert_eq!(last.body["env"]["CRABBOX_LEASE_ID"], json!(lease.id));

    // The environment reaches the command.
    let mut request = exec_request("echo \"$GREETING $CRABBOX_WORKSPACE\"");
    request.env.insert("GREETING".into(), "hi there".into());
    let sink = Arc::new(Collect::default());
    assert_eq!(
        provider.session(&lease).exec(&request, sink.clone()).await,
        Ok(0)
    );
    assert_eq!(sink.stdout(), ["hi there /workspace/app/backend"]);
    fx.check_foreign_untouched();
}

/// A tar.gz with one entry whose raw name is `name`.
fn raw_archive(dir: &Path, name: &str) -> PathBuf {
    let mut data = Vec::new();
    {
        let gz = flate2::write::GzEncoder::new(&mut data, flate2::Compression::default());
        let mut builder = tar::Builder::new(gz);
        let mut header = tar::Header::new_old();
        let bytes = name.as_bytes();
        header.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
        header.set_size(4);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        builder.append(&header, &b"evil"[..]).expect("append");
        builder.into_inner().expect("tar").finish().expect("gz");
    }
    let path = dir.join("evil.tar.gz");
    std::fs::write(&path, data).expect("write");
    path
}

#[tokio::test]
async fn upload_of_escaping_entries_is_refused() {
    let fx = Fixture::new().await;
    let provider = fx.provider();
    let lease = fx.lease(&provider, "web", json!({})).await;
    let dir = tempfile::tempdir().expect("dir");
    for name in ["../evil.txt", "/tmp/evil.txt"] {
        let archive = raw_archive(dir.path(), name);
        let err = provider
            .session(&lease)
            .upload(&archive)
            .await
            .expect_err("refused");
        assert!(
            matches!(&err, ProviderError::Failed(m) if m.contains("400") && m.contains("escapes")),
            "{err:?}"
        );
    }
    let root = fx.handle().sandbox(&lease.cloud_id).expect("sandbox").root;
    assert!(!root.join("workspace/evil.txt").exists());
    assert!(!root.join("tmp/evil.txt").exists());
}

#[tokio::test]
async fn exec_streams_stdout_and_stderr_in_order_with_exit_codes() {
    let fx = Fixture::new().await;
    let provider = fx.provider();
    let lease = fx.lease(&provider, "web", json!({})).await;

    let (code, out) = run(
        &provider,
        &lease,
        "echo one; sleep 0.1; echo two >&2; sleep 0.1; printf 'three\\nfour'; sleep 0.1; echo five >&2; sleep 0.1; exit 3",
    )
    .await;
    assert_eq!(code, 3);
    assert_eq!(
        out.all(),
        vec![
            (Stream::Stdout, "one".to_owned()),
            (Stream::Stderr, "two".to_owned()),
            (Stream::Stdout, "three".to_owned()),
            (Stream::Stderr, "five".to_owned()),
            (Stream::Stdout, "four".to_owned()),
        ],
        "lines in arrival order; a last line without newline comes at the end"
    );
    let (code, _) = run(&provider, &lease, "kill -TERM $$").await;
    assert_eq!(code, 128 + 15);

    // Lines reach the sink while the command still runs: it waits for a file
    // the sink creates when it sees the first line.
    struct Handshake {
        go: PathBuf,
        lines: Mutex<Vec<String>>,
    }
    impl OutputSink for Handshake {
        fn line(&self, _stream: Stream, line: &str) {
            if line == "first" {
                std::fs::write(&self.go, "").expect("go file");
            }
            self.lines.lock().expect("lock").push(line.to_owned());
        }
    }
    let sink = Arc::new(Handshake {
        go: fx.workspace(&lease, "crabbox/go"),
        lines: Mutex::default(),
    });
    let code = provider
        .session(&lease).exec(
            &exec_request(
                "echo first; for i in $(seq 1 200); do [ -f go ] && break; sleep 0.05; done; [ -f go ] && echo second || echo no-go",
            ),
            sink.clone(),
        )
        .await
        .expect("exec");
    assert_eq!(code, 0);
    assert_eq!(*sink.lines.lock().expect("lock"), ["first", "second"]);

    // A time limit ends the call; the fake kills the command with it.
    let mut request = exec_request("sleep 30");
    request.timeout = Some(Duration::from_millis(300));
    let err = provider
        .session(&lease)
        .exec(&request, Arc::new(Collect::default()))
        .await
        .expect_err("timed out");
    assert_eq!(
        err,
        ProviderError::Failed("command timed out after 300ms".into())
    );
}

#[tokio::test]
async fn a_stream_without_exit_fails_and_error_events_surface() {
    let fx = Fixture::new().await;
    let provider = fx.provider();
    let lease = fx.lease(&provider, "web", json!({})).await;

    fx.handle().drop_next_exit_events(1);
    let sink = Arc::new(Collect::default());
    let err = provider
        .session(&lease)
        .exec(&exec_request("echo partial"), sink.clone())
        .await
        .expect_err("no exit event");
    assert_eq!(
        err,
        ProviderError::Failed("islo exec stream ended without exit event".into())
    );
    assert_eq!(sink.stdout(), ["partial"], "output still arrived");

    fx.handle()
        .error_instead_of_next_exit("vm exec failed: out of memory");
    let sink = Arc::new(Collect::default());
    let err = provider
        .session(&lease)
        .exec(&exec_request("echo starting"), sink.clone())
        .await
        .expect_err("error event");
    assert_eq!(
        err,
        ProviderError::Failed("islo exec stream error: vm exec failed: out of memory".into())
    );
    assert_eq!(sink.stdout(), ["starting"]);
    assert!(!err.is_retryable());

    // Afterwards, streams are whole again.
    assert_eq!(run(&provider, &lease, "exit 0").await.0, 0);
}

#[tokio::test]
async fn rate_limits_and_unavailability_are_retried() {
    let fx = Fixture::new().await;
    let provider = fx.provider();
    let lease = fx.lease(&provider, "web", json!({})).await;

    // One call alone reports a retryable error with the server's delay.
    fx.handle().fail_next_with_429(1, 1);
    let err = provider
        .session(&lease)
        .exec(&exec_request("true"), Arc::new(Collect::default()))
        .await
        .expect_err("429");
    assert!(
        matches!(
            &err,
            ProviderError::Retryable { retry_after: Some(d), message }
                if *d == Duration::from_secs(1) && message.contains("RATE_LIMITED")
        ),
        "{err:?}"
    );
    fx.handle().fail_next_with_503(1);
    let err = provider.pause(&lease).await.expect_err("503");
    assert!(err.is_retryable(), "{err:?}");

    // Wrapped as the executor wraps them, they succeed.
    fx.handle().clear_requests();
    fx.handle().fail_next_with_429(2, 0);
    let sink = Arc::new(Collect::default());
    let echo = exec_request("echo ok");
    let session = provider.session(&lease);
    let code = with_retries(|| session.exec(&echo, sink.clone()))
        .await
        .expect("retried");
    assert_eq!(code, 0);
    assert_eq!(sink.stdout(), ["ok"]);
    let statuses: Vec<u16> = fx
        .requests("POST", &format!("/sandboxes/{}/exec", lease.cloud_id))
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [429, 429, 200]);

    fx.handle().fail_next_with_503(2);
    let request = fx.pending(POND, member("db", json!({}))).await;
    let created = with_retries(|| provider.create(&request))
        .await
        .expect("create retried");
    assert!(fx.handle().sandbox(&created.cloud_id).is_some());

    let (_repo, archive) = archive_of(&[("a.txt", "a\n")]);
    fx.handle().fail_next_with_503(1);
    with_retries(|| session.upload(&archive.path))
        .await
        .expect("upload retried");
    assert!(fx.workspace(&lease, "crabbox/a.txt").is_file());

    // Listing retries on its own (it runs outside the executor's wrapper).
    fx.handle().fail_next_with_429(1, 0);
    fx.handle().fail_next_with_503(1);
    let leases = provider.list(POND).await.expect("list retried");
    assert_eq!(leases.len(), 2);
    fx.check_foreign_untouched();
}

#[tokio::test]
async fn background_service_tcp_probe_and_stop() {
    let fx = Fixture::new().await;
    let provider = fx.provider();
    let lease = fx.lease(&provider, "web", json!({})).await;
    let port = free_port();
    let env = BTreeMap::new();
    let tcp = Probe::Tcp { host: None, port };
    assert_eq!(provider.session(&lease).probe(&tcp, &env).await, Ok(false));

    let mut request = exec_request(&format!(
        "echo \"serving $MODE\"; exec python3 -m http.server {port} --bind 127.0.0.1"
    ));
    request.env.insert("MODE".into(), "test".into());
    provider
        .session(&lease)
        .start_background(&request, "setup-1")
        .await
        .expect("started");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !provider
        .session(&lease)
        .probe(&tcp, &env)
        .await
        .expect("probe")
    {
        assert!(Instant::now() < deadline, "the service never listened");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let http = Probe::Http(format!("http://127.0.0.1:{port}/"));
    assert_eq!(provider.session(&lease).probe(&http, &env).await, Ok(true));
    assert_eq!(
        provider
            .session(&lease)
            .probe(
                &Probe::Command("test -f .crabbox/pids/setup-1.pid".into()),
                &env
            )
            .await,
        Ok(true)
    );
    assert_eq!(
        provider
            .session(&lease)
            .probe(&Probe::Command("exit 1".into()), &env)
            .await,
        Ok(false)
    );
    let workspace = fx.workspace(&lease, "crabbox");
    let pid: i32 = std::fs::read_to_string(workspace.join(".crabbox/pids/setup-1.pid"))
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    let log = std::fs::read_to_string(workspace.join(".crabbox/logs/setup-1.log")).expect("log");
    assert!(log.contains("serving test"), "{log}");

    provider
        .session(&lease)
        .stop_background()
        .await
        .expect("stopped");
    assert!(!workspace.join(".crabbox/pids/setup-1.pid").exists());
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z ")),
        "the service is gone"
    );
    assert_eq!(provider.session(&lease).probe(&tcp, &env).await, Ok(false));

    // A service that exits at once is a failure that shows its output.
    let err = provider
        .session(&lease)
        .start_background(&exec_request("echo boom >&2; exit 4"), "setup-2")
        .await
        .expect_err("exits at once");
    let message = err.to_string();
    assert!(message.contains("exited with status 4"), "{message}");
    assert!(message.contains("boom"), "{message}");
}

#[tokio::test]
async fn shares_are_created_once_and_reused() {
    let fx = Fixture::new().await;
    let provider = fx.provider();
    let lease = fx.lease(&provider, "web", json!({})).await;
    let shares_path = format!("/sandboxes/{}/shares", lease.cloud_id);

    assert!(provider.shares(&lease).await.expect("none yet").is_empty());
    let first = provider
        .share(&lease, 8080, Duration::from_secs(3600))
        .await
        .expect("share");
    assert_eq!(first.port, 8080);
    assert!(
        first.url.starts_with("https://shr_") && first.url.ends_with(".share.islo.test/"),
        "{first:?}"
    );
    let again = provider
        .share(&lease, 8080, Duration::from_secs(3600))
        .await
        .expect("share");
    assert_eq!(again, first, "reused");
    let posts = fx.requests("POST", &shares_path);
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].body, json!({ "port": 8080, "ttl_seconds": 3600 }));

    // TTLs are clamped to what Islo accepts.
    provider
        .share(&lease, 9090, Duration::from_secs(5))
        .await
        .expect("short");
    provider
        .share(&lease, 9091, Duration::from_secs(30 * 24 * 3600))
        .await
        .expect("long");
    let ttls: Vec<Value> = fx
        .requests("POST", &shares_path)
        .iter()
        .skip(1)
        .map(|r| r.body["ttl_seconds"].clone())
        .collect();
    assert_eq!(ttls, [json!(60), json!(604_800)]);

    // A share about to expire is not reused; one with time left is.
    fx.handle()
        .plant_share(&lease.cloud_id, 7000, Duration::from_secs(20))
        .expect("planted");
    let live = fx
        .handle()
        .plant_share(&lease.cloud_id, 7001, Duration::from_secs(600))
        .expect("planted");
    let before = fx.requests("POST", &shares_path).len();
    let renewed = provider
        .share(&lease, 7000, Duration::from_secs(3600))
        .await
        .expect("share");
    assert_eq!(fx.requests("POST", &shares_path).len(), before + 1);
    let reused = provider
        .share(&lease, 7001, Duration::from_secs(3600))
        .await
        .expect("share");
    assert_eq!(fx.requests("POST", &shares_path).len(), before + 1);
    assert!(reused.url.contains(&live), "{reused:?}");
    assert_ne!(renewed.url, reused.url);

    let ports: Vec<u16> = provider
        .shares(&lease)
        .await
        .expect("shares")
        .iter()
        .map(|s| s.port)
        .collect();
    assert_eq!(ports, [7000, 7000, 7001, 8080, 9090, 9091]);
    assert!(
        provider
            .share(&lease, 0, Duration::from_secs(60))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn pause_and_resume() {
    let fx = Fixture::new().await;
    let provider = fx.provider();
    let lease = fx.lease(&provider, "web", json!({})).await;
    provider.pause(&lease).await.expect("paused");
    assert_eq!(
        fx.handle()
            .sandbox(&lease.cloud_id)
            .expect("sandbox")
            .status,
        "paused"
    );
    let err = provider
        .session(&lease)
        .exec(&exec_request("true"), Arc::new(Collect::default()))
        .await
        .expect_err("paused sandboxes run nothing");
    assert!(err.to_string().contains("SANDBOX_INVALID_STATE"), "{err}");
    assert!(provider.pause(&lease).await.is_err(), "already paused");

    provider.resume(&lease).await.expect("resumed");
    assert_eq!(
        fx.handle()
            .sandbox(&lease.cloud_id)
            .expect("sandbox")
            .status,
        "running",
        "resume returns once the sandbox runs again"
    );
    assert_eq!(
        run(&provider, &lease, "echo back").await.1.stdout(),
        ["back"]
    );
    let paths: Vec<String> = fx
        .handle()
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.path.clone())
        .filter(|p| p.ends_with("/pause") || p.ends_with("/resume"))
        .collect();
    assert_eq!(
        paths,
        [
            format!("/sandboxes/{}/pause", lease.cloud_id),
            format!("/sandboxes/{}/pause", lease.cloud_id),
            format!("/sandboxes/{}/resume", lease.cloud_id),
        ]
    );
    // The claim is kept.
    assert!(
        fx.claims()
            .load(&lease.id)
            .await
            .expect("readable")
            .is_some()
    );
}

#[tokio::test]
async fn release_deletes_and_a_second_release_is_not_found() {
    let fx = Fixture::new().await;
    let provider = fx.provider();
    let lease = fx.lease(&provider, "web", json!({})).await;
    provider
        .session(&lease)
        .start_background(&exec_request("exec sleep 1000"), "svc")
        .await
        .expect("started");
    let pid: i32 = std::fs::read_to_string(fx.workspace(&lease, "crabbox/.crabbox/pids/svc.pid"))
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    let root = fx.handle().sandbox(&lease.cloud_id).expect("sandbox").root;

    provider.release(&lease).await.expect("released");
    assert!(fx.handle().sandbox(&lease.cloud_id).is_none());
    assert!(!root.exists(), "the sandbox's files are gone");
    let deadline = Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
    {
        assert!(Instant::now() < deadline, "the service was killed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let err = provider.release(&lease).await.expect_err("gone");
    assert!(matches!(err, ProviderError::NotFound(_)), "{err:?}");
    let deletes: Vec<u16> = fx
        .requests("DELETE", "/sandboxes/")
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(deletes, [204, 404]);

    // Nothing without a claim of ours naming it is deleted.
    let foreign = Lease {
        cloud_id: FOREIGN_LOOKALIKE.to_owned(),
        ..lease.clone()
    };
    let err = provider.release(&foreign).await.expect_err("refused");
    assert!(err.to_string().contains("refusing"), "{err}");
    let stranger = Lease {
        id: new_lease_id(),
        ..foreign
    };
    let err = provider.release(&stranger).await.expect_err("refused");
    assert!(err.to_string().contains("no claim"), "{err}");
    assert!(
        provider
            .session(&stranger)
            .exec(&exec_request("true"), Arc::new(Collect::default()))
            .await
            .is_err()
    );
    fx.check_foreign_untouched();
}

#[tokio::test]
async fn relabel_writes_the_claim() {
    let fx = Fixture::new().await;
    let provider = fx.provider();
    let lease = fx.lease(&provider, "web", json!({})).await;
    let mut labels = lease.labels.clone();
    labels.insert("state".into(), "ready".into());
    provider.relabel(&lease, &labels).await.expect("relabel");
    assert_eq!(
        fx.claims()
            .load(&lease.id)
            .await
            .expect("readable")
            .expect("claim")
            .labels,
        labels
    );
    let listed = provider.list(POND).await.expect("list");
    assert_eq!(listed[0].labels, labels);
    assert_eq!(listed[0].state(), "ready");
}

#[tokio::test]
async fn sessions_are_refreshed_when_they_expire() {
    // Tokens die after 1 s although the answer says 10 minutes: the first
    // call after that gets a 401, refreshes once and succeeds.
    let fx = Fixture::with(FakeConfig {
        token_ttl: Duration::from_secs(1),
        advertised_max_age: Some(600),
        boot_delay: Duration::from_millis(50),
        ..FakeConfig::default()
    })
    .await;
    let provider = fx.provider();
    let lease = fx.lease(&provider, "web", json!({})).await;
    assert_eq!(fx.handle().tokens_issued(), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(provider.list(POND).await.expect("list").len(), 1);
    assert_eq!(fx.handle().tokens_issued(), 2);
    let unauthorized = fx
        .handle()
        .requests()
        .iter()
        .filter(|r| r.status == 401)
        .count();
    assert_eq!(unauthorized, 1);

    // The streaming calls refresh too.
    fx.handle().expire_all_tokens();
    assert_eq!(
        run(&provider, &lease, "echo fresh").await.1.stdout(),
        ["fresh"]
    );
    assert_eq!(fx.handle().tokens_issued(), 3);
    fx.handle().expire_all_tokens();
    let (_repo, archive) = archive_of(&[("f.txt", "f\n")]);
    provider
        .session(&lease)
        .upload(&archive.path)
        .await
        .expect("upload");
    assert_eq!(fx.handle().tokens_issued(), 4);
    assert!(fx.workspace(&lease, "crabbox/f.txt").is_file());

    // An honest short lifetime is refreshed before it runs out (no 401).
    let fx = Fixture::with(FakeConfig {
        token_ttl: Duration::from_secs(2),
        boot_delay: Duration::from_millis(50),
        ..FakeConfig::default()
    })
    .await;
    let provider = fx.provider();
    let lease = fx.lease(&provider, "web", json!({})).await;
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(run(&provider, &lease, "true").await.0, 0);
    assert_eq!(fx.handle().tokens_issued(), 2);
    assert!(fx.handle().requests().iter().all(|r| r.status != 401));
}

#[tokio::test]
async fn the_api_key_stays_in_the_token_exchange() {
    let fx = Fixture::new().await;
    let provider = fx.provider();
    let lease = fx.lease(&provider, "web", json!({})).await;
    let (_repo, archive) = archive_of(&[("a.txt", "a\n")]);
    provider
        .session(&lease)
        .upload(&archive.path)
        .await
        .expect("upload");
    run(&provider, &lease, "env").await;
    provider
        .share(&lease, 8080, Duration::from_secs(600))
        .await
        .expect("share");
    provider.list(POND).await.expect("list");
    provider.release(&lease).await.expect("release");

    // A wrong key is a credentials error (exit 3) that does not repeat the key.
    let wrong = "ak_wrong_key_do_not_print";
    let request = fx.pending(POND, member("db", json!({}))).await;
    let err = fx
        .provider_with_key(wrong)
        .create(&request)
        .await
        .expect_err("rejected");
    assert!(matches!(err, ProviderError::Credentials { .. }), "{err:?}");
    assert!(!format!("{err:?}").contains(wrong), "{err:?}");
    assert!(!format!("{:?}", fx.provider_with_key(wrong)).contains(wrong));
    assert!(!format!("{provider:?}").contains(API_KEY));

    let requests = fx.handle().requests();
    let mut exchanges = 0;
    for r in &requests {
        if r.method == "POST" && r.path == "/auth/token" {
            exchanges += 1;
            assert!(r.body["access_key"].is_string());
            assert!(r.header("authorization").is_none());
        } else {
            let seen = r.everything();
            assert!(!seen.contains(API_KEY), "{seen}");
            assert!(!seen.contains(wrong), "{seen}");
            assert!(
                r.header("authorization")
                    .is_some_and(|a| a.starts_with("Bearer st_")),
                "{r:?}"
            );
        }
    }
    assert_eq!(
        exchanges, 2,
        "one session for the provider, one attempt with the wrong key"
    );
    fx.check_foreign_untouched();
}

#[test]
fn features_are_the_url_bridge_kind() {
    let provider = IsloProvider::new("http://127.0.0.1:1", API_KEY, Path::new("/nonexistent"));
    let f = crabbox_core::provider::features_of(provider.name());
    assert!(f.url_bridge && f.background && f.pause_resume);
    assert!(!f.labels && !f.ssh && !f.local);
    assert_eq!(provider.name(), ProviderName::Islo);
}

/// A lease of an earlier crabbox version: a `cbx_` ID, its sandbox named
/// from that ID's hex, our fields beside Crabbox's at the top level. It is
/// still listed, reached and released; the next write folds our fields into
/// its labels.
#[tokio::test]
async fn leases_of_earlier_versions_keep_working() {
    let fx = Fixture::new().await;
    let provider = fx.provider();
    let id = "cbx_00c0ffee0001";
    let name = sandbox_name(POND, "old", id);
    assert_eq!(name, "crabbox-pr-42-old-00c0ff");
    fx.handle().plant_sandbox(&name);
    let m = member("old", json!({}));
    let labels = member_labels::for_create(POND, id, &m, labels::now_secs());
    let claim = json!({
        "leaseID": id, "slug": "old", "provider": "islo", "pond": POND, "cloudID": name,
        "repoRoot": "", "claimedAt": "", "lastUsedAt": "", "labels": labels,
        "state": "active", "isloWorkdir": "legacy", "isloBaseURL": fx.fake.base_url,
    });
    let dir = fx.state.path().join("claims");
    std::fs::create_dir_all(&dir).expect("claims dir");
    std::fs::write(dir.join(format!("{id}.json")), claim.to_string()).expect("old claim");

    let leases = provider.list(POND).await.expect("list");
    let lease = leases.iter().find(|l| l.id == id).expect("listed");
    assert_eq!(lease.cloud_id, name);
    assert!(lease.is_ours(POND));
    let (code, out) = run(&provider, lease, "pwd").await;
    assert_eq!(code, 0);
    let pwd = out.stdout();
    assert!(
        pwd[0].ends_with("/workspace/legacy"),
        "the claim's workdir: {pwd:?}"
    );

    let mut relabelled = lease.labels.clone();
    relabelled.insert("state".into(), "ready".into());
    provider.relabel(lease, &relabelled).await.expect("relabel");
    let text = std::fs::read_to_string(dir.join(format!("{id}.json"))).expect("claim");
    let stored: Value = serde_json::from_str(&text).expect("json");
    assert!(stored.get("isloWorkdir").is_none(), "folded: {text}");
    assert_eq!(
        stored["labels"]["crabbox_claim.isloWorkdir"],
        json!("legacy")
    );

    provider.release(lease).await.expect("release");
    assert!(fx.handle().sandbox(&name).is_none(), "released");
}
