//! Fidelity of the fake Compute Engine API: Google's own Python client
//! (`google-cloud-compute`, pinned in `scripts/test`) drives it with a
//! service account (its self-signed JWT checked by the fake) — insert
//! with its operation wait, an aggregated list over pages, set labels with
//! the fingerprint (and a stale one refused as the client's
//! `PreconditionFailed`), delete with its operation wait, then `NotFound`.
//! What the client does, the provider's tests may rely on the fake doing.

use serde_json::Value;

use crate::fake_gcp::{self, GcpConfig};

const SCRIPT: &str = r#"
import json, sys
try:
    from google.cloud import compute_v1
    from google.api_core.client_options import ClientOptions
    from google.api_core import exceptions
    from google.oauth2 import service_account
except ImportError as e:
    print(f"missing Python module: {e.name}; run ./scripts/test, or: python3 -m pip install google-cloud-compute", file=sys.stderr)
    sys.exit(2)

info = json.load(open(sys.argv[1]))
creds = service_account.Credentials.from_service_account_info(
    info, scopes=["https://www.googleapis.com/auth/cloud-platform"])
client = compute_v1.InstancesClient(
    credentials=creds, transport="rest", client_options=ClientOptions(api_endpoint=sys.argv[2]))
project, zone = info["project_id"], "europe-west2-a"
# The client polls an operation with a ZoneOperationsClient it makes itself,
# without the endpoint override (transports/base.py `_zone_operations_client`):
# hand it one pointed at the fake, as an emulator user must.
client._transport._extended_operations_services["zone_operations"] = compute_v1.ZoneOperationsClient(
    credentials=creds, transport="rest", client_options=ClientOptions(api_endpoint=sys.argv[2]))

def vm(name):
    return compute_v1.Instance(
        name=name,
        machine_type=f"zones/{zone}/machineTypes/e2-small",
        labels={"crabbox": "true", "pond": "sdk"},
        network_interfaces=[compute_v1.NetworkInterface(
            network="global/networks/default",
            access_configs=[compute_v1.AccessConfig(name="External NAT", type_="ONE_TO_ONE_NAT")])],
        disks=[compute_v1.AttachedDisk(boot=True, auto_delete=True,
            initialize_params=compute_v1.AttachedDiskInitializeParams(
                source_image="projects/ubuntu-os-cloud/global/images/family/ubuntu-2404-lts-amd64",
                disk_size_gb=10))])

out = {}
for name in ["sdk-a", "sdk-b"]:
    op = client.insert(project=project, zone=zone, instance_resource=vm(name))
    op.result(timeout=30)
out["inserted_done"] = op.done()
request = compute_v1.AggregatedListInstancesRequest(
    project=project, filter="labels.crabbox=true AND labels.pond=sdk", max_results=1)
out["listed"] = sorted(i.name for _, scoped in client.aggregated_list(request=request) for i in scoped.instances)
got = client.get(project=project, zone=zone, instance="sdk-a")
out["status"] = got.status
out["nat_ip"] = got.network_interfaces[0].access_configs[0].nat_i_p
labels = compute_v1.InstancesSetLabelsRequest(
    label_fingerprint=got.label_fingerprint, labels={"crabbox": "true", "pond": "sdk", "role": "db"})
client.set_labels(project=project, zone=zone, instance="sdk-a",
    instances_set_labels_request_resource=labels).result(timeout=30)
out["labels"] = dict(client.get(project=project, zone=zone, instance="sdk-a").labels)
try:
    client.set_labels(project=project, zone=zone, instance="sdk-a",
        instances_set_labels_request_resource=labels)
    out["stale"] = "accepted"
except exceptions.PreconditionFailed:
    out["stale"] = "PreconditionFailed"
op = client.delete(project=project, zone=zone, instance="sdk-a")
op.result(timeout=30)
out["deleted_done"] = op.done()
try:
    client.get(project=project, zone=zone, instance="sdk-a")
    out["after_delete"] = "found"
except exceptions.NotFound:
    out["after_delete"] = "NotFound"
print(json.dumps(out))
"#;

#[test]
fn googles_python_client_drives_the_fake_compute_engine() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = crate::support::runtime();
    let (pem, der) = fake_gcp::service_account_key(dir.path());
    let fake = rt.block_on(fake_gcp::start(GcpConfig {
        boot_reads: 0,
        service_account_key: Some(der),
        ..GcpConfig::default()
    }));
    let file = fake_gcp::service_account_file(dir.path(), &pem, &fake.token_url, "sdk-project");
    let script = dir.path().join("drive.py");
    std::fs::write(&script, SCRIPT).expect("script");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(&file)
        .arg(&fake.root_url)
        .env("NO_PROXY", "127.0.0.1")
        .output()
        .expect("python3 runs (install python3, or run ./scripts/test)");
    assert!(
        out.status.success(),
        "the Python client failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).expect("JSON from the script");
    assert_eq!(seen["inserted_done"], true, "{seen}");
    assert_eq!(
        seen["listed"],
        serde_json::json!(["sdk-a", "sdk-b"]),
        "{seen}"
    );
    assert_eq!(seen["status"], "RUNNING", "{seen}");
    assert_eq!(seen["nat_ip"], "127.0.0.1", "{seen}");
    assert_eq!(seen["labels"]["role"], "db", "{seen}");
    assert_eq!(seen["stale"], "PreconditionFailed", "{seen}");
    assert_eq!(seen["deleted_done"], true, "{seen}");
    assert_eq!(seen["after_delete"], "NotFound", "{seen}");
    let requests = fake.handle.requests();
    // Google's libraries authenticate a service account with a self-signed
    // JWT (no exchange): the fake verified its signature.
    assert!(
        requests
            .iter()
            .filter(|r| r.path.starts_with("/compute/"))
            .all(|r| r.status != 401
                && r.header("authorization")
                    .is_some_and(|a| a.matches('.').count() == 2)),
        "every call carried the service account's signed JWT"
    );
    let pages = requests
        .iter()
        .filter(|r| r.path.ends_with("/aggregated/instances"))
        .count();
    assert!(pages >= 2, "the list was followed over its pages ({pages})");
    assert!(
        requests.iter().any(|r| r.path.contains("/operations/")),
        "the client waited for its operations"
    );
}
