//! Fidelity of the fake ARM (`tests/it/fake_azure.rs`): Microsoft's own
//! Python SDK (`azure-identity`, `azure-mgmt-resource`, `azure-mgmt-network`,
//! `azure-mgmt-compute`, pinned in `scripts/test`) gets a token from the
//! fake's authority, creates the shared network, IPs, NICs and VMs through
//! its pollers, lists VMs page by page, and deletes with its pollers — so
//! the fake speaks ARM as the official client expects it to, and what the
//! adapter's tests prove against the fake holds against that contract.
//!
//! The script is `tests/it/azure_sdk.py`; `python3` comes from PATH (the
//! venv `./scripts/test` makes); without the SDK the test fails saying what
//! to install.

use std::process::Command;

use serde_json::Value;

use crate::fake_azure::{self, FakeConfig};

#[test]
fn microsofts_python_sdk_creates_lists_and_deletes_through_the_fake() {
    let rt = crate::support::runtime();
    let fake = rt.block_on(fake_azure::start(FakeConfig {
        page_size: 1,
        polls: 2,
        ..FakeConfig::default()
    }));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/azure_sdk.py");
    // The fake is served by the runtime's worker threads meanwhile.
    let out = Command::new("python3")
        .arg(script)
        .env("FAKE_AZURE_URL", &fake.url)
        .env("FAKE_AZURE_SUBSCRIPTION", fake_azure::SUBSCRIPTION)
        .env("FAKE_AZURE_TENANT", fake_azure::TENANT)
        .env("FAKE_AZURE_CLIENT_ID", fake_azure::CLIENT_ID)
        .env("FAKE_AZURE_CLIENT_SECRET", fake_azure::CLIENT_SECRET)
        .env("REQUESTS_CA_BUNDLE", &fake.tls.ca)
        .env("SSL_CERT_FILE", &fake.tls.ca)
        .env_remove("AZURE_AUTHORITY_HOST")
        .output();
    let out = out.expect("python3 runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(
        out.status.code(),
        Some(3),
        "{stderr}\n./scripts/test installs the Azure SDK (azure-identity azure-mgmt-resource azure-mgmt-network azure-mgmt-compute) into target/test-tools/venv"
    );
    assert!(
        out.status.success(),
        "the SDK failed against the fake:\n{stderr}\n{:?}",
        fake.handle
            .requests()
            .iter()
            .filter(|r| r.method != "GET")
            .map(|r| (r.path.clone(), r.raw_body.clone()))
            .collect::<Vec<_>>()
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("the script's JSON");
    assert_eq!(report["vnet"], "Succeeded");
    assert_eq!(
        report["nsg_rules"],
        serde_json::json!(["crabbox-ssh-2222-0"])
    );
    for created in report["created"].as_array().expect("created") {
        assert_eq!(created[1], "Succeeded", "{created}");
        assert_eq!(created[2], "127.0.0.1", "{created}");
        assert!(
            created[3].as_str().is_some_and(|d| d.ends_with("-osdisk")),
            "{created}"
        );
    }
    assert_eq!(
        report["listed"],
        serde_json::json!(["crabbox-sdk-0", "crabbox-sdk-1"]),
        "every page"
    );
    assert_eq!(report["ips"].as_array().map(Vec::len), Some(2));
    assert_eq!(report["left"], serde_json::json!([]));
    // The token came from the fake's authority; the pollers followed the
    // operations; nothing per-lease is left.
    let requests = fake.handle.requests();
    assert!(
        requests.iter().any(|r| r.method == "POST"
            && r.path.ends_with("/oauth2/v2.0/token")
            && r.status == 200)
    );
    assert!(requests.iter().any(|r| r.path.contains("/operations/")));
    assert!(
        requests
            .iter()
            .any(|r| r.query.iter().any(|(k, _)| k == "$skiptoken")),
        "the SDK followed nextLink"
    );
    for kind in [
        "virtualMachines",
        "networkInterfaces",
        "publicIPAddresses",
        "disks",
    ] {
        assert!(fake.handle.resources_of(kind).is_empty(), "{kind} left");
    }
}
