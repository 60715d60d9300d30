//! Crabbox compatibility: what crabbox writes, Crabbox reads, and the other
//! way round. The shapes follow Crabbox's source at commit
//! 0bba5f7dcee7e2b0191a9a98a3821aec90c246c7 (see docs/crabbox-compat.md for
//! every fact and its source line).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;

use crabbox_core::labels;
use crabbox_state::claims::{Claim, ClaimStore};
use serde::Deserialize;

/// Crabbox's claim struct (`leaseClaim`, internal/cli/claim.go:23-61), with
/// its Go types: deserializing one of our claims into it is what Crabbox's
/// `json.Unmarshal` does, so a field of the wrong type fails here as it
/// fails there (a string `sshPort` made Crabbox refuse every claim).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)] // the fields are read by the deserializer only
struct CrabboxClaim {
    #[serde(rename = "leaseID")]
    lease_id: String,
    #[serde(default)]
    revision: String,
    #[serde(default)]
    slug: String,
    #[serde(default)]
    provider: String,
    #[serde(rename = "cloudID", default)]
    cloud_id: String,
    #[serde(default)]
    cloud_numeric_id: i64,
    #[serde(default)]
    static_host: String,
    #[serde(default)]
    static_user: String,
    #[serde(default)]
    static_port: String,
    #[serde(default)]
    static_work_root: String,
    #[serde(default)]
    pond: String,
    #[serde(default)]
    repo_root: String,
    #[serde(default)]
    claimed_at: String,
    #[serde(default)]
    last_used_at: String,
    #[serde(default)]
    idle_timeout_seconds: i64,
    #[serde(default)]
    ssh_host: String,
    #[serde(default)]
    ssh_port: i64,
    #[serde(rename = "bridgeURL", default)]
    bridge_url: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn our_claims_have_crabboxs_field_types_and_its_omitempty_rules() {
    let state = tempfile::tempdir().expect("state");
    let store = ClaimStore::local(state.path());
    let mut claim = Claim {
        lease_id: "cbx_0123456789ab".into(),
        slug: "db".into(),
        provider: "hetzner".into(),
        pond: "pr-1".into(),
        ssh_host: "203.0.113.7".into(),
        ssh_port: 2222,
        idle_timeout_seconds: 1800,
        ..Claim::default()
    };
    claim.labels.insert("pond".into(), "pr-1".into());
    runtime().block_on(store.write(&claim)).expect("write");

    let path = state.path().join("claims/cbx_0123456789ab.json");
    let text = std::fs::read_to_string(&path).expect("claim file");
    let json: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(json["sshPort"], serde_json::json!(2222), "a number: {text}");
    // Crabbox always writes these three (no omitempty): so do we.
    for key in ["repoRoot", "claimedAt", "lastUsedAt"] {
        assert!(json.get(key).is_some(), "{key} written: {text}");
    }
    let theirs: CrabboxClaim = serde_json::from_str(&text).expect("Crabbox reads our claim");
    assert_eq!(theirs.ssh_port, 2222);
    assert_eq!(theirs.idle_timeout_seconds, 1800);
    assert_eq!(theirs.lease_id, "cbx_0123456789ab");

    // Zero and empty values are left out, as Go's omitempty does.
    let bare = Claim {
        lease_id: "cbx_0123456789ac".into(),
        ..Claim::default()
    };
    runtime().block_on(store.write(&bare)).expect("write");
    let text = std::fs::read_to_string(state.path().join("claims/cbx_0123456789ac.json"))
        .expect("claim file");
    let json: serde_json::Value = serde_json::from_str(&text).expect("json");
    for key in [
        "sshPort",
        "idleTimeoutSeconds",
        "slug",
        "provider",
        "labels",
    ] {
        assert!(json.get(key).is_none(), "{key} left out: {text}");
    }
}

#[test]
fn crabbox_shaped_claims_and_our_earlier_ones_are_read() {
    let state = tempfile::tempdir().expect("state");
    let claims = state.path().join("claims");
    std::fs::create_dir_all(&claims).expect("claims dir");
    // As Crabbox writes it (claim.go:23-61): integer sshPort, no state.
    std::fs::write(
        claims.join("cbx_00000000c0de.json"),
        r#"{"leaseID":"cbx_00000000c0de","revision":"9f2c","slug":"api","provider":"hetzner","cloudID":"4242","pond":"pr-1","repoRoot":"/src/app","claimedAt":"2026-12-01T10:00:00Z","lastUsedAt":"2026-12-01T10:05:00Z","idleTimeoutSeconds":1800,"sshHost":"203.0.113.9","sshPort":2222,"labels":{"crabbox":"true","pond":"pr-1"}}"#,
    )
    .expect("write");
    // As earlier crabbox versions wrote it: a string port.
    std::fs::write(
        claims.join("cbx_00000000beef.json"),
        r#"{"leaseID":"cbx_00000000beef","provider":"ssh","sshPort":"22","labels":{}}"#,
    )
    .expect("write");
    let store = ClaimStore::local(state.path());
    let (read, problems) = runtime().block_on(store.load_all()).expect("readable");
    assert!(problems.is_empty(), "{problems:?}");
    let port = |id: &str| {
        read.iter()
            .find(|c| c.lease_id == id)
            .map(|c| c.ssh_port)
            .expect("claim read")
    };
    assert_eq!(port("cbx_00000000c0de"), 2222);
    assert_eq!(port("cbx_00000000beef"), 22);
}

#[test]
fn the_claim_lock_file_is_private_and_kept_as_crabbox_keeps_it() {
    let state = tempfile::tempdir().expect("state");
    let store = ClaimStore::local(state.path());
    let claim = Claim {
        lease_id: "cbx_0123456789ab".into(),
        ..Claim::default()
    };
    let rt = runtime();
    rt.block_on(store.write(&claim)).expect("write");
    let lock = state.path().join("claim-locks/cbx_0123456789ab.json.lock");
    let mode = std::fs::metadata(&lock)
        .expect("lock file")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "mode {mode:o}");
    rt.block_on(store.remove("cbx_0123456789ab"))
        .expect("remove");
    assert!(
        !state.path().join("claims/cbx_0123456789ab.json").exists(),
        "claim removed"
    );
    assert!(
        lock.exists(),
        "the lock file stays (Crabbox never removes it)"
    );
}

/// Runs the crabbox binary in `dir` (state under `dir/state`, pond files
/// under `dir/home`) with `env`.
fn crabbox(dir: &std::path::Path, env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    for d in ["home", "work"] {
        std::fs::create_dir_all(dir.join(d)).expect("dirs");
    }
    let mut c = assert_cmd::Command::cargo_bin("crabbox").expect("binary");
    c.env("CRABBOX_STATE_DIR", dir.join("state"))
        .env("HOME", dir.join("home"))
        .env("NO_COLOR", "1")
        .current_dir(dir.join("work"))
        .timeout(std::time::Duration::from_secs(120));
    for (k, v) in env {
        c.env(k, v);
    }
    c.args(args).output().expect("runs")
}

/// The claims in `dir/state/claims`, by file stem.
fn claim_files(dir: &std::path::Path) -> BTreeMap<String, serde_json::Value> {
    std::fs::read_dir(dir.join("state/claims"))
        .expect("claims dir")
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".json")?.to_owned();
            let text = std::fs::read_to_string(e.path()).expect("claim");
            Some((stem, serde_json::from_str(&text).expect("json")))
        })
        .collect()
}

/// A pond applied by us on the fake Islo, in a directory of its own (the
/// spec at `work/pond.yaml`).
struct IsloPond {
    dir: tempfile::TempDir,
    islo: crate::fake_islo::FakeIslo,
    /// Serves the fake; dropped last.
    rt: tokio::runtime::Runtime,
}

impl IsloPond {
    /// Starts the fake, writes `spec` and applies it.
    fn applied(spec: &str) -> Self {
        let rt = crate::support::runtime();
        let islo = rt.block_on(crate::fake_islo::start(
            crate::fake_islo::FakeConfig::default(),
        ));
        let dir = tempfile::tempdir().expect("dir");
        std::fs::create_dir_all(dir.path().join("work")).expect("work");
        std::fs::write(dir.path().join("work/pond.yaml"), spec).expect("spec");
        let pond = Self { dir, islo, rt };
        let out = crabbox(pond.dir.path(), &pond.env(), &["apply", "--auto-approve"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        pond
    }

    /// The environment that reaches the fake.
    fn env(&self) -> [(&'static str, &str); 2] {
        [
            ("CRABBOX_ISLO_API_KEY", crate::fake_islo::API_KEY),
            ("ISLO_BASE_URL", self.islo.base_url.as_str()),
        ]
    }
}

/// Crabbox releases an Islo lease by the sandbox name in its ID:
/// `TrimPrefix(leaseID, "isb_")` (islo/backend.go:718-754), then
/// `DELETE /sandboxes/<name>`, a 404 counting as released
/// (islo/client.go:242-267). A member applied by us must be the sandbox that
/// DELETE hits, or Crabbox "releases" a name that never existed while our
/// sandbox runs on.
#[test]
fn crabbox_style_release_of_an_islo_member_deletes_our_sandbox() {
    let pond = IsloPond::applied(
        "version: 1\npond: mixed\nmembers:\n  - slug: api\n    provider: islo\n    sync: false\n    setup: [ \"echo hi\" ]\n",
    );
    let (rt, islo, dir) = (&pond.rt, &pond.islo, &pond.dir);
    let claims = claim_files(dir.path());
    assert_eq!(claims.len(), 1, "{claims:?}");
    let (stem, claim) = claims.iter().next().expect("one claim");
    let lease_id = claim["leaseID"].as_str().expect("leaseID");
    assert_eq!(stem, lease_id);
    // islo/backend.go:643: `isloLeasePrefix + sandbox.GetName()`.
    let name = lease_id.strip_prefix("isb_").expect("an isb_ lease ID");
    // islo/backend.go:982-984: the name Crabbox agrees to touch.
    assert_eq!(name, crabbox_core::normalize::normalize_name(name));
    assert!(name.starts_with("crabbox-"), "{name}");
    assert_eq!(claim["cloudID"], serde_json::json!(name));
    assert_eq!(claim["labels"]["lease"], serde_json::json!(lease_id));
    assert_eq!(islo.handle.sandbox_names(), vec![name.to_owned()]);

    // What Crabbox's release sends, straight to the API.
    let status = rt.block_on(async {
        let http = reqwest::Client::new();
        let token: serde_json::Value = http
            .post(format!("{}/auth/token", islo.base_url))
            .json(&serde_json::json!({ "access_key": crate::fake_islo::API_KEY }))
            .send()
            .await
            .expect("token")
            .json()
            .await
            .expect("token json");
        http.delete(format!("{}/sandboxes/{name}", islo.base_url))
            .bearer_auth(token["session_token"].as_str().expect("token"))
            .send()
            .await
            .expect("delete")
            .status()
    });
    assert!(status.is_success(), "{status}");
    assert!(
        islo.handle.sandbox_names().is_empty(),
        "our sandbox is the one Crabbox deleted: {:?}",
        islo.handle.sandbox_names()
    );
}

/// Static SSH leases are named after their host as Crabbox names them
/// (`static_` + `normalizeLeaseSlug(host)`, static.go:66-73); a second
/// member on the same host gets `static_<host>-<pond>-<slug>`, the kind of
/// ID Crabbox's `static.id` sets, never the first member's claim.
#[test]
fn static_ssh_lease_ids_are_named_after_the_host() {
    use crabbox_providers::Provider as _;
    use crabbox_providers::ssh::SshProvider;
    use crabbox_spec::desired::DesiredMember;
    let state = tempfile::tempdir().expect("state");
    let member = |slug: &str, host: &str| DesiredMember {
        provider_block: Some(serde_json::json!({ "host": host, "user": "u" })),
        ..DesiredMember::new(slug, crabbox_core::provider::ProviderName::Ssh)
    };
    let rt = runtime();
    let provider = SshProvider::new(state.path());
    let first = rt
        .block_on(provider.lease_id("pr-1", &member("db", "Build.Example.COM")))
        .expect("id");
    assert_eq!(first, "static_build-example-com");
    // The same member asking again (a retried warmup) gets the same ID.
    let again = rt
        .block_on(provider.lease_id("pr-1", &member("db", "Build.Example.COM")))
        .expect("id");
    assert_eq!(again, first);
    let second = rt
        .block_on(provider.lease_id("pr-1", &member("api", "build.example.com")))
        .expect("id");
    assert_eq!(second, "static_build-example-com-pr-1-api");

    // Another process sees the first member's claim.
    let claim = Claim {
        lease_id: "static_10-0-0-5".into(),
        slug: "db".into(),
        provider: "ssh".into(),
        pond: "pr-1".into(),
        extra: [("staticHost".to_owned(), serde_json::json!("10.0.0.5"))].into(),
        ..Claim::default()
    };
    rt.block_on(ClaimStore::local(state.path()).write(&claim))
        .expect("write");
    let fresh = SshProvider::new(state.path());
    let id = rt
        .block_on(fresh.lease_id("pr-2", &member("db", "10.0.0.5")))
        .expect("id");
    assert_eq!(id, "static_10-0-0-5-pr-2-db");
}

/// Crabbox's `leaseClaim` (internal/cli/claim.go:23-61) field for field,
/// Go types and `omitempty` included, in declaration order: what Crabbox
/// writes when it rewrites a claim (claim.go:1199, `json.MarshalIndent` of
/// this struct), dropping every key it does not know (claim.go:2177-2178).
#[derive(Debug, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct CrabboxLeaseClaim {
    #[serde(rename = "leaseID")]
    lease_id: String, // claim.go:24
    #[serde(default, skip_serializing_if = "String::is_empty")]
    revision: String, // :25
    #[serde(default, skip_serializing_if = "String::is_empty")]
    slug: String, // :26
    #[serde(default, skip_serializing_if = "String::is_empty")]
    provider: String, // :27
    #[serde(rename = "cloudID", default, skip_serializing_if = "String::is_empty")]
    cloud_id: String, // :28
    #[serde(rename = "cloudNumericID", default, skip_serializing_if = "is_zero")]
    cloud_numeric_id: i64, // :30
    #[serde(
        rename = "cloudImmutableID",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    cloud_immutable_id: String, // :32
    #[serde(default, skip_serializing_if = "String::is_empty")]
    provider_scope: String, // :33
    #[serde(default, skip_serializing_if = "String::is_empty")]
    static_host: String, // :34
    #[serde(default, skip_serializing_if = "String::is_empty")]
    static_user: String, // :35
    #[serde(default, skip_serializing_if = "String::is_empty")]
    static_port: String, // :36
    #[serde(default, skip_serializing_if = "String::is_empty")]
    static_work_root: String, // :37
    #[serde(rename = "targetOS", default, skip_serializing_if = "String::is_empty")]
    target_os: String, // :38
    #[serde(default, skip_serializing_if = "String::is_empty")]
    windows_mode: String, // :39
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pond: String, // :40
    #[serde(default)]
    repo_root: String, // :41
    #[serde(default)]
    claimed_at: String, // :42
    #[serde(default)]
    last_used_at: String, // :43
    #[serde(default, skip_serializing_if = "is_zero")]
    idle_timeout_seconds: i64, // :44
    #[serde(
        rename = "tailscaleIPv4",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    tailscale_ipv4: String, // :45
    #[serde(
        rename = "tailscaleFQDN",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    tailscale_fqdn: String, // :46
    #[serde(default, skip_serializing_if = "String::is_empty")]
    tailscale_hostname: String, // :47
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tailscale_tags: Vec<String>, // :48
    #[serde(
        rename = "tailscaleLoginURL",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    tailscale_login_url: String, // :49
    #[serde(default, skip_serializing_if = "String::is_empty")]
    tailscale_exit_node: String, // :50
    #[serde(rename = "tailscaleExitLAN", default, skip_serializing_if = "is_false")]
    tailscale_exit_lan: bool, // :51
    #[serde(default, skip_serializing_if = "String::is_empty")]
    ssh_host: String, // :52
    #[serde(default, skip_serializing_if = "is_zero")]
    ssh_port: i64, // :53
    #[serde(
        rename = "bridgeURL",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    bridge_url: String, // :54
    #[serde(
        rename = "coordinatorRegistrationURL",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    coordinator_registration_url: String, // :55
    #[serde(
        rename = "runtimeAdapterRegistrationID",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    runtime_adapter_registration_id: String, // :56
    #[serde(
        rename = "runtimeAdapterPendingRegistrationID",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    runtime_adapter_pending_registration_id: String, // :57
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    cache_volumes: Vec<String>, // :58
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>, // :59
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fixed_create_intent: Option<serde_json::Value>, // :60
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Rewrites every claim under `dir/state/claims` as Crabbox's read-modify-write
/// does (claim.go:1082-1107): decode into its struct, set a new revision,
/// encode with two-space indent and a trailing newline (claim.go:1199-1203).
fn rewrite_claims_as_crabbox_does(dir: &std::path::Path) {
    for entry in std::fs::read_dir(dir.join("state/claims")).expect("claims") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("claim");
        let mut claim: CrabboxLeaseClaim =
            serde_json::from_str(&text).expect("Crabbox reads our claim");
        claim.revision = "00000000000000000000000000c0ffee".to_owned();
        let out = serde_json::to_string_pretty(&claim).expect("encode") + "\n";
        std::fs::write(&path, out).expect("rewrite");
    }
}

/// Our data survives Crabbox's rewrite of our claims: an applied pond with
/// label-less members (Islo, whose claim holds its labels, workdir, base
/// URL and sandbox ID; ssh, whose claim holds the host and key) plans no
/// change after every claim went through Crabbox's struct.
#[test]
fn claims_rewritten_by_crabbox_keep_everything_we_need() {
    let pond = IsloPond::applied(
        "version: 1\npond: mixed\nmembers:\n  - slug: api\n    provider: islo\n    sync: false\n    expose: [8080]\n    islo: { workdir: app }\n    setup: [ \"echo hi > made.txt\" ]\n",
    );
    let dir = &pond.dir;
    let env = pond.env();
    let before = claim_files(dir.path());
    let ours = |c: &serde_json::Value| {
        let mut labels = c["labels"].as_object().expect("labels").clone();
        labels.retain(|k, _| k.starts_with("crabbox_claim"));
        labels
    };
    let (_, claim) = before.iter().next().expect("a claim");
    // What only we use is in the labels, not beside Crabbox's fields.
    for key in ["isloWorkdir", "isloBaseURL", "state", "crabboxShares"] {
        assert!(claim.get(key).is_none(), "{key} at the top level: {claim}");
    }
    assert_eq!(
        claim["labels"]["crabbox_claim.isloWorkdir"],
        serde_json::json!("app"),
        "{claim}"
    );
    assert!(!ours(claim).is_empty());

    rewrite_claims_as_crabbox_does(dir.path());
    let after = claim_files(dir.path());
    for (id, claim) in &after {
        assert_eq!(ours(claim), ours(&before[id]), "{id}: our fields survive");
        assert_eq!(
            claim["labels"], before[id]["labels"],
            "{id}: labels survive"
        );
    }
    let store = ClaimStore::local(&dir.path().join("state"));
    let (read, problems) = runtime().block_on(store.load_all()).expect("readable");
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(read[0].state, "active");
    assert_eq!(read[0].extra["isloWorkdir"], serde_json::json!("app"));
    assert!(
        read[0]
            .labels
            .keys()
            .all(|k| !k.starts_with("crabbox_claim"))
    );

    let out = crabbox(dir.path(), &env, &["plan", "--detailed-exitcode"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "no change after Crabbox's rewrite:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The peers document still reaches the member through the share our
    // claim recorded (without it the member would be `pending`).
    let out = crabbox(dir.path(), &env, &["peers", "--json"]);
    let peers: serde_json::Value = serde_json::from_slice(&out.stdout).expect("peers json");
    let api = &peers["members"][0];
    assert_eq!(api["transport"], "url", "{peers}");
    assert!(
        api["endpoint"]
            .as_str()
            .is_some_and(|e| e.starts_with("https://shr_")),
        "{peers}"
    );
    // With --share-port, Crabbox lists the share as a target with Islo's
    // share ID (pond_bridge.go:75-80, islo/bridge.go:85).
    let out = crabbox(
        dir.path(),
        &env,
        &[
            "pond",
            "peers",
            "--pond",
            "mixed",
            "--share-port",
            "8080",
            "--json",
        ],
    );
    let peers: serde_json::Value = serde_json::from_slice(&out.stdout).expect("peers json");
    let target = &peers["members"][0]["targets"][0];
    assert_eq!(target["port"], 8080, "{peers}");
    let share_id = target["shareID"].as_str().expect("a shareID");
    assert!(share_id.starts_with("shr_"), "{peers}");
    assert!(
        target["url"].as_str().is_some_and(|u| u.contains(share_id)),
        "{peers}"
    );
}

/// A corpus document (`tests/compat/…`, see its README for the Crabbox
/// source each follows).
fn corpus(relative: &str) -> serde_json::Value {
    let path = crate::support::root().join("tests/compat").join(relative);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "bool",
        serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        serde_json::Value::Number(_) => "float",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

/// Crabbox's claims (every lease-ID shape: `cbx_`, `isb_`, `tlsbx_`,
/// `static_`) are read by us, and what we write back has every one of
/// their fields with the same value and the same JSON type.
#[test]
fn crabbox_claims_of_every_provider_shape_are_read_and_written_back_alike() {
    let state = tempfile::tempdir().expect("state");
    let claims_dir = state.path().join("claims");
    std::fs::create_dir_all(&claims_dir).expect("claims dir");
    let src = crate::support::root().join("tests/compat/claims");
    let mut names: Vec<String> = std::fs::read_dir(&src)
        .expect("corpus")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 4, "{names:?}");
    for name in &names {
        std::fs::copy(src.join(name), claims_dir.join(name)).expect("copy");
    }
    let store = ClaimStore::local(state.path());
    let rt = runtime();
    let (read, problems) = rt.block_on(store.load_all()).expect("readable");
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(read.len(), 4);
    let by_id = |id: &str| read.iter().find(|c| c.lease_id == id).expect(id).clone();
    assert_eq!(by_id("cbx_0a1b2c3d4e5f").ssh_port, 2222);
    assert_eq!(
        by_id("cbx_0a1b2c3d4e5f").labels["provider_key"],
        "crabbox-cbx-0a1b2c3d4e5f"
    );
    assert_eq!(by_id("isb_crabbox-app-1a2b3c").provider, "islo");
    assert_eq!(by_id("tlsbx_k3j4h5g6f7d8s9a0").provider, "tensorlake");
    assert_eq!(
        by_id("static_10-0-0-5").extra["staticPort"],
        serde_json::json!("22")
    );
    for claim in &read {
        let theirs = corpus(&format!("claims/{}.json", claim.lease_id));
        rt.block_on(store.update(&claim.lease_id, |_| {}))
            .expect("our write");
        let ours: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(claims_dir.join(format!("{}.json", claim.lease_id)))
                .expect("written"),
        )
        .expect("json");
        for (key, value) in theirs.as_object().expect("object") {
            assert_eq!(
                json_type(&ours[key]),
                json_type(value),
                "{}: {key} keeps its type",
                claim.lease_id
            );
            if key != "revision" {
                assert_eq!(&ours[key], value, "{}: {key}", claim.lease_id);
            }
        }
        // Nothing beside Crabbox's fields: its decoder would drop it.
        let _: CrabboxLeaseClaim = serde_json::from_value(ours.clone()).expect("Crabbox reads it");
        let known: Vec<String> = serde_json::to_value(
            serde_json::from_value::<CrabboxLeaseClaim>(ours.clone()).expect("mirror"),
        )
        .expect("json")
        .as_object()
        .expect("object")
        .keys()
        .cloned()
        .collect();
        for key in ours.as_object().expect("object").keys() {
            assert!(
                known.contains(key),
                "{}: `{key}` is not Crabbox's",
                claim.lease_id
            );
        }
    }
}

/// The labels of a Hetzner lease we create are Crabbox's `directLeaseLabels`
/// (internal/cli/provider_labels.go:10-65) key for key and value for value,
/// plus our `pond_*` hashes: `class` :13, `crabbox` :14, `created_by` :15,
/// `keep` :16, `lease` :17, `slug` :18, `profile` :19, `provider_key` :20,
/// `provider` :21, `target` :22, `server_type` :23, `state` :24,
/// `created_at` :25, `last_touched_at` :26, `idle_timeout` :27,
/// `idle_timeout_secs` :28, `ttl_secs` :29, `expires_at` :30, `pond` :35-37,
/// `crabbox_exposed_ports` :38-40. Hetzner's create adds the two it knows
/// (`server_type`, `provider_key`; tests/it/hetzner.rs checks it sends them).
#[test]
fn labels_we_create_are_crabboxs_direct_lease_labels_plus_our_hashes() {
    use crabbox_core::provider::ProviderName;
    use crabbox_spec::desired::DesiredMember;
    use crabbox_spec::member_labels;
    let member = DesiredMember {
        class: Some(crabbox_spec::model::Class::Beast),
        expose: vec![5432, 8080],
        ..DesiredMember::new("api", ProviderName::Hetzner)
    };
    let mut ours = member_labels::for_create("pr-42", "cbx_0a1b2c3d4e5f", &member, 1_796_119_200);
    for key in ["pond_spec", "pond_block", "pond_setup"] {
        assert!(ours.remove(key).is_some(), "{key} written");
    }
    assert_eq!(
        ours["server_type"], "unknown",
        "until the provider picks one"
    );
    assert_eq!(
        ours["provider_key"], "unknown",
        "until the provider names it"
    );
    ours.insert("server_type".into(), "ccx33".into());
    ours.insert(
        "provider_key".into(),
        crabbox_providers::hetzner::key_name("cbx_0a1b2c3d4e5f").into(),
    );
    let theirs: labels::Labels =
        serde_json::from_value(corpus("labels/hetzner-create.json")).expect("labels");
    assert_eq!(ours, theirs);

    // Without a class or type, Crabbox's sanitizer writes `unknown`
    // (provider_labels.go:194-215); the keys are always there.
    let bare = member_labels::for_create(
        "pr-42",
        "cbx_0a1b2c3d4e5f",
        &DesiredMember::new("db", ProviderName::Local),
        1,
    );
    assert_eq!(bare["class"], "unknown");
    assert_eq!(bare["server_type"], "unknown");
}

/// Crabbox's touch (provider_labels.go:71-110) of one of our leases keeps
/// our hashes and moves `expires_at` by its rule; ours gives the same
/// labels, and our expiry judgment (planner, sweep) reads the result as
/// Crabbox's cleanup does (pool.go:575-586).
#[test]
fn a_touch_by_either_tool_gives_the_same_labels_and_expiry() {
    use crabbox_core::expiry;
    let touched: labels::Labels =
        serde_json::from_value(corpus("labels/hetzner-touched.json")).expect("labels");
    let mut created: labels::Labels =
        serde_json::from_value(corpus("labels/hetzner-create.json")).expect("labels");
    for key in ["pond_spec", "pond_block", "pond_setup"] {
        created.insert(key.into(), touched[key].clone());
    }
    created.insert("state".into(), "ready".into());
    assert_eq!(expiry::touch(&created, 1_796_120_000, None, None), touched);
    assert_eq!(expiry::expires_at(&touched), Some(1_796_121_800));
    assert!(!expiry::is_expired(&touched, 1_796_121_799));
    assert!(expiry::is_expired(&touched, 1_796_121_800));

    // Our relabel of the same lease is a touch too: with the spec's ttl
    // and idle timeout, the same expiry rule.
    let member = crabbox_spec::desired::DesiredMember {
        class: Some(crabbox_spec::model::Class::Beast),
        expose: vec![5432, 8080],
        ..crabbox_spec::desired::DesiredMember::new(
            "api",
            crabbox_core::provider::ProviderName::Hetzner,
        )
    };
    let now = crabbox_core::labels::now_secs();
    let relabelled = crabbox_spec::member_labels::for_update(&touched, &member, now);
    assert_eq!(relabelled["last_touched_at"], now.to_string());
    assert_eq!(
        relabelled["expires_at"],
        expiry::rule(1_796_119_200, now, member.ttl, member.idle_timeout).to_string()
    );
    for (key, value) in &touched {
        if !["last_touched_at", "expires_at", "pond_spec"].contains(&key.as_str()) {
            assert_eq!(&relabelled[key], value, "{key} kept");
        }
    }
}

/// A static SSH lease of an earlier crabbox version (a `cbx_` ID, our
/// `staticKey` beside Crabbox's `static*` fields) is still a lease of its
/// pond, reached at the recorded host and key.
#[test]
fn static_leases_of_earlier_versions_are_still_listed() {
    use crabbox_core::provider::ProviderName;
    use crabbox_providers::Provider as _;
    use crabbox_providers::ssh::SshProvider;
    let state = tempfile::tempdir().expect("state");
    let claims = state.path().join("claims");
    std::fs::create_dir_all(&claims).expect("claims dir");
    std::fs::write(
        claims.join("cbx_00000000beef.json"),
        r#"{"leaseID":"cbx_00000000beef","slug":"db","provider":"ssh","pond":"pr-1","cloudID":"static_10.0.0.5","repoRoot":"","claimedAt":"","lastUsedAt":"","state":"active","staticHost":"10.0.0.5","staticPort":"2200","staticUser":"u","staticWorkRoot":"crabbox/cbx_00000000beef","staticKey":"/keys/id","sshPort":"22","labels":{"crabbox":"true","pond":"pr-1","lease":"cbx_00000000beef","provider":"ssh","slug":"db"}}"#,
    )
    .expect("old claim");
    let rt = runtime();
    let provider = SshProvider::new(state.path());
    let leases = rt.block_on(provider.list("pr-1")).expect("list");
    assert_eq!(leases.len(), 1, "{leases:?}");
    let lease = &leases[0];
    assert_eq!(lease.id, "cbx_00000000beef");
    assert_eq!(lease.provider, ProviderName::Ssh);
    assert!(lease.is_ours("pr-1"));
    assert_eq!(lease.endpoint.host.as_deref(), Some("10.0.0.5"));
    assert_eq!(lease.endpoint.ssh_port, Some(2200));
    let target = rt.block_on(provider.ssh_target(lease)).expect("a target");
    assert_eq!(
        target.key.as_deref(),
        Some(std::path::Path::new("/keys/id"))
    );
    assert_eq!(target.work_root, "crabbox/cbx_00000000beef");
}
