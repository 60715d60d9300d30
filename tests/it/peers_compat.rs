//! `pond peers --json` in Crabbox's shape: the documents in
//! `tests/compat/peers/` (written from Crabbox's source, see the README
//! there) are read with a mirror of Crabbox's structs, and crabbox prints
//! the same documents, key for key and type for type, for the same leases.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crabbox_core::labels::Labels;
use crabbox_core::lease::{Endpoint, Lease, Share};
use crabbox_core::provider::{ProviderName, features_of};
use crabbox_render::files::peers_json;
use crabbox_render::peers::peers_from_leases;
use serde::Deserialize;
use serde_json::Value;

/// `pondPeersJSON` (internal/cli/pond_bridge.go:286-288).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CrabboxPeersDoc {
    members: Vec<CrabboxBridgePeer>,
}

/// `BridgePeer` (pond_bridge.go:31-52), with its Go types; `omitempty`
/// fields may be absent, the others must be present.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // the fields are read by the deserializer only
struct CrabboxBridgePeer {
    slug: String,
    #[serde(rename = "leaseID")]
    lease_id: String,
    provider: String,
    pond: String,
    transport: String,
    #[serde(default)]
    transports: Vec<String>,
    endpoint: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    note: String,
    #[serde(default)]
    targets: Vec<CrabboxTarget>,
    #[serde(rename = "bridgeState", default)]
    bridge_state: String,
}

/// `BridgePeerTarget` (pond_bridge.go:75-80): `port` is a Go `int`,
/// `expiresAt` a `time.Time` (always present).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct CrabboxTarget {
    port: i64,
    url: String,
    #[serde(rename = "shareID", default)]
    share_id: String,
    #[serde(rename = "expiresAt")]
    expires_at: String,
}

fn corpus(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/compat/peers")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every corpus file is a document Crabbox's structs accept.
#[test]
fn every_corpus_document_reads_with_crabboxs_structs() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/compat/peers");
    let mut read = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus dir") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read");
        let doc: CrabboxPeersDoc =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for m in &doc.members {
            assert!(
                ["tailnet", "url", "ssh", "none", "pending"].contains(&m.transport.as_str()),
                "{}: transport {}",
                path.display(),
                m.transport
            );
        }
        read += 1;
    }
    assert_eq!(read, 4, "every corpus document was read");
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect()
}

fn lease(id: &str, provider: ProviderName, labels: Labels, endpoint: Endpoint) -> Lease {
    Lease {
        id: id.to_owned(),
        provider,
        cloud_id: id.to_owned(),
        labels,
        endpoint,
        listed: true,
        claimed: false,
    }
}

/// Ours and the corpus document are the same JSON: same members, same keys
/// in the same order, same values and types.
fn assert_same(ours: &str, theirs: &str) {
    let ours: Value = serde_json::from_str(ours).expect("our JSON");
    let theirs: Value = serde_json::from_str(theirs).expect("corpus JSON");
    let (ours, theirs) = (
        ours["members"].as_array().expect("our members"),
        theirs["members"].as_array().expect("their members"),
    );
    assert_eq!(ours.len(), theirs.len(), "{ours:#?}");
    for (o, t) in ours.iter().zip(theirs) {
        let keys = |v: &Value| {
            v.as_object()
                .expect("member")
                .keys()
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(o), keys(t), "key order of {}", t["leaseID"]);
        for key in keys(t) {
            assert_eq!(o[&key], t[&key], "`{key}` of {}", t["leaseID"]);
        }
    }
    // Our document also reads with Crabbox's structs.
    let _: CrabboxPeersDoc =
        serde_json::from_value(serde_json::json!({ "members": ours })).expect("ours reads");
}

#[test]
fn a_hetzner_member_without_tailscale_is_pending_as_in_crabbox() {
    // pond_bridge.go:541-557: tailnet primary, no address, no fallback to ssh
    // — although crabbox itself reaches it over SSH.
    let leases = [lease(
        "cbx_0123456789ab",
        ProviderName::Hetzner,
        labels(&[
            ("crabbox", "true"),
            ("created_by", "crabbox"),
            ("keep", "true"),
            ("lease", "cbx_0123456789ab"),
            ("pond", "demo"),
            ("provider", "hetzner"),
            ("slug", "db"),
            ("state", "ready"),
        ]),
        Endpoint {
            host: Some("203.0.113.5".to_owned()),
            ssh_port: Some(2222),
            url: None,
            shares: Vec::new(),
        },
    )];
    let peers = peers_from_leases("demo", &leases, features_of);
    assert_same(&peers_json(&peers), &corpus("hetzner-pending.json"));
    // What crabbox uses itself still has the SSH address.
    assert_eq!(peers[0].endpoint, "ssh://203.0.113.5:2222");
    assert_eq!(peers[0].host.as_deref(), Some("203.0.113.5"));
}

#[test]
fn mixed_providers_print_crabboxs_document() {
    let leases = [
        lease(
            "cbx_00000000000d",
            ProviderName::Hetzner,
            labels(&[
                ("crabbox", "true"),
                ("lease", "cbx_00000000000d"),
                ("pond", "demo"),
                ("provider", "hetzner"),
                ("slug", "web"),
                ("tailscale", "true"),
                ("tailscale_ipv4", "100.64.0.7"),
            ]),
            Endpoint {
                host: Some("203.0.113.7".to_owned()),
                ssh_port: Some(2222),
                url: None,
                shares: Vec::new(),
            },
        ),
        lease(
            "cbx_00000000000e",
            ProviderName::BlacksmithTestbox,
            labels(&[
                ("lease", "cbx_00000000000e"),
                ("pond", "demo"),
                ("slug", "ci"),
            ]),
            Endpoint::default(),
        ),
        // Islo keeps no labels (docs/crabbox-compat.md §5.5): its slug comes
        // from the claim, set below.
        lease(
            "isb_app",
            ProviderName::Islo,
            Labels::new(),
            Endpoint {
                host: None,
                ssh_port: None,
                url: None,
                shares: vec![Share {
                    port: 8080,
                    url: "https://app-8080.share.example".to_owned(),
                    expires_at: "2026-12-06T10:00:00Z".to_owned(),
                    id: "shr_app".to_owned(),
                }],
            },
        ),
        lease(
            "cbx_00000000000f",
            ProviderName::Aws,
            labels(&[
                ("crabbox", "true"),
                ("lease", "cbx_00000000000f"),
                ("pond", "demo"),
                ("provider", "aws"),
            ]),
            Endpoint {
                host: Some("203.0.113.9".to_owned()),
                ssh_port: Some(2222),
                url: None,
                shares: Vec::new(),
            },
        ),
    ];
    let mut leases = leases.to_vec();
    // The Islo member's slug, as its claim gives it; Crabbox's document
    // shows no labels for it.
    leases[2].labels.insert("slug".into(), "app".into());
    let peers = peers_from_leases("demo", &leases, features_of);
    let ours = peers_json(&peers);
    assert_same(&ours, &corpus("mixed.json"));
}

#[test]
fn an_empty_pond_is_an_empty_member_list() {
    assert_same(&peers_json(&[]), &corpus("empty.json"));
    assert_eq!(
        serde_json::from_str::<Value>(&peers_json(&[])).expect("json"),
        serde_json::from_str::<Value>(&corpus("empty.json")).expect("json")
    );
}
