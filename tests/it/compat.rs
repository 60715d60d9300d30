//! Crabbox compatibility: what crabbox writes, Crabbox reads, and the other
//! way round. The shapes follow Crabbox's source at commit
//! 0bba5f7dcee7e2b0191a9a98a3821aec90c246c7 (see docs/crabbox-compat.md for
//! every fact and its source line).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;

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
