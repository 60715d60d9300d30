//! The `azure` provider end to end, through the `crabbox` binary against
//! the fake ARM and token endpoint (`tests/it/fake_azure.rs`): the VMs'
//! public IPs are the tests' sshd, so members' setup runs over SSH. The
//! shared network made once and adopted afterwards, a planted untagged
//! virtual network refused and left alone, tags in every create request,
//! deletes followed by their operations only, size and priority fallback,
//! rollback of a half-made lease, throttling, credentials, and a pond
//! mixing `azure`, `hetzner` (the fake API) and `local` members.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::fake_azure::{self, FakeAzure, FakeConfig, FakeHandle};
use crate::fake_hetzner::{self, FakeHetzner};
use crate::sshd::TestSshd;

const GROUP: &str = "crabbox-leases";

/// One test's world: the fake ARM, the sshd every VM's SSH leads to, the
/// state, home and spec directories, and (for mixed ponds) the fake
/// Hetzner API.
struct World {
    dir: tempfile::TempDir,
    pond: String,
    sshd: TestSshd,
    azure: FakeAzure,
    hetzner: Option<FakeHetzner>,
    rt: tokio::runtime::Runtime,
}

impl World {
    fn new(name: &str, config: FakeConfig) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        for d in ["home", "work"] {
            std::fs::create_dir_all(dir.path().join(d)).expect("dirs");
        }
        let sshd = TestSshd::start();
        let rt = crate::support::runtime();
        let azure = rt.block_on(fake_azure::start(FakeConfig {
            authorized_keys: Some(sshd.authorized_keys.clone()),
            ..config
        }));
        Self {
            dir,
            pond: format!("{name}-{}", std::process::id()),
            sshd,
            azure,
            hetzner: None,
            rt,
        }
    }

    fn with_hetzner(mut self) -> Self {
        self.hetzner = Some(
            self.rt
                .block_on(fake_hetzner::start(fake_hetzner::FakeConfig {
                    authorized_keys: Some(self.sshd.authorized_keys.clone()),
                    boot_delay: Duration::from_millis(20),
                    ..fake_hetzner::FakeConfig::default()
                })),
        );
        self
    }

    fn fake(&self) -> &FakeHandle {
        &self.azure.handle
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// The `azure:` defaults every member gets: SSH to the sshd, ingress
    /// from a documentation range (no public address lookup).
    fn azure_defaults(&self) -> String {
        format!(
            "{{ ssh_port: {port}, ssh_user: {user}, ssh_cidrs: [198.51.100.7/32] }}",
            port = self.sshd.port,
            user = self.sshd.user,
        )
    }

    fn write_spec(&self, members: &str) {
        self.write_spec_with(&self.azure_defaults(), members);
    }

    fn write_spec_with(&self, azure: &str, members: &str) {
        let spec = format!(
            "version: 1\npond: {pond}\ndefaults:\n  sync: false\n  azure: {azure}\n  hetzner: {hetzner}\nmembers:\n{members}",
            pond = self.pond,
            hetzner = self.sshd.hetzner_defaults(),
        );
        std::fs::write(self.path("work/pond.yaml"), spec).expect("spec");
    }

    /// `crabbox` with the fake as ARM and as the identity authority, and a
    /// service principal it knows.
    fn command(&self, args: &[&str]) -> Command {
        let mut c = crate::support::crabbox_in(self.dir.path());
        c.args(args)
            .env("AZURE_TENANT_ID", fake_azure::TENANT)
            .env("AZURE_CLIENT_ID", fake_azure::CLIENT_ID)
            .env("AZURE_CLIENT_SECRET", fake_azure::CLIENT_SECRET)
            .env("AZURE_SUBSCRIPTION_ID", fake_azure::SUBSCRIPTION)
            .env("AZURE_AUTHORITY_HOST", &self.azure.url)
            .env("CRABBOX_AZURE_ARM_ENDPOINT", &self.azure.url)
            .env("SSL_CERT_FILE", &self.azure.tls.ca);
        for (k, _) in std::env::vars() {
            let foreign = (k.starts_with("AZURE_") || k.starts_with("CRABBOX_AZURE_"))
                && ![
                    "AZURE_TENANT_ID",
                    "AZURE_CLIENT_ID",
                    "AZURE_CLIENT_SECRET",
                    "AZURE_SUBSCRIPTION_ID",
                    "AZURE_AUTHORITY_HOST",
                    "CRABBOX_AZURE_ARM_ENDPOINT",
                ]
                .contains(&k.as_str());
            if foreign
                || k.starts_with("AWS_")
                || k == "HCLOUD_TOKEN"
                || k == "HETZNER_TOKEN"
                || k == "CRABBOX_STATE_URL"
                || k == "IDENTITY_ENDPOINT"
                || k == "MSI_ENDPOINT"
            {
                c.env_remove(&k);
            }
        }
        if let Some(h) = &self.hetzner {
            c.env("HCLOUD_TOKEN", fake_hetzner::TOKEN)
                .env("HCLOUD_ENDPOINT", &h.base_url);
        }
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("crabbox runs")
    }

    /// Runs `args`, which must succeed; returns stderr.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "crabbox {args:?} failed ({:?})\nstdout:\n{}\nstderr:\n{}",
            out.status.code(),
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stderr)
    }

    /// This pond's resources of a type, by name.
    fn pond_resources(&self, kind: &str) -> Vec<(String, Value)> {
        self.fake()
            .resources_of(kind)
            .into_iter()
            .filter(|(_, b)| b["tags"]["pond"] == self.pond.as_str())
            .collect()
    }

    /// Every per-lease resource left in the fake (VMs, NICs, IPs, disks).
    fn lease_resources(&self) -> Vec<String> {
        [
            "virtualMachines",
            "networkInterfaces",
            "publicIPAddresses",
            "disks",
        ]
        .iter()
        .flat_map(|k| self.fake().resources_of(k))
        .map(|(id, _)| id)
        .collect()
    }

    /// Requests of `method` whose path is exactly `id` (case-insensitive).
    fn count(&self, method: &str, id: &str) -> usize {
        self.fake()
            .requests()
            .iter()
            .filter(|r| r.method == method && r.path.eq_ignore_ascii_case(id))
            .count()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = self.run(&["destroy", "--auto-approve"]);
        for (_, vm) in self.fake().resources_of("virtualMachines") {
            if let Some(lease) = vm["tags"]["lease"].as_str() {
                let _ = std::fs::remove_dir_all(std::path::Path::new("/work/crabbox").join(lease));
            }
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn shared_ids() -> [String; 4] {
    [
        FakeHandle::group_id(GROUP),
        FakeHandle::id(GROUP, "Microsoft.Network/virtualNetworks", "crabbox-vnet"),
        FakeHandle::id(GROUP, "Microsoft.Network/virtualNetworks", "crabbox-vnet")
            + "/subnets/crabbox-subnet",
        FakeHandle::id(
            GROUP,
            "Microsoft.Network/networkSecurityGroups",
            "crabbox-nsg",
        ),
    ]
}

/// No resource is read after its delete was sent (until it is created
/// again under its name): a finished delete is known from its operation
/// alone.
fn assert_no_read_after_delete(fake: &FakeHandle) {
    let requests = fake.requests();
    for (i, r) in requests.iter().enumerate() {
        if r.method != "DELETE" {
            continue;
        }
        let same = |g: &&crate::fake_azure::LoggedRequest| g.path.eq_ignore_ascii_case(&r.path);
        let later: Vec<String> = requests[i + 1..]
            .iter()
            .take_while(|g| !(g.method == "PUT" && same(g)))
            .filter(|g| g.method == "GET" && same(g))
            .map(|g| format!("GET {} ({})", g.path, g.status))
            .collect();
        assert!(
            later.is_empty(),
            "{} was read after its delete: {later:?}",
            r.path
        );
    }
}

#[test]
fn azure_members_share_one_network_and_release_follows_each_delete_by_its_operation() {
    let world = World::new(
        "az-basic",
        FakeConfig {
            page_size: 1,
            ..FakeConfig::default()
        },
    );
    world.write_spec(
        r#"  - slug: db
    provider: azure
    type: Standard_B2s
    setup: [ "echo db on azure > marker.txt" ]
  - slug: cache
    provider: azure
    class: tiny
    setup: [ "echo cache" ]
"#,
    );
    // ARM throttles the first public IP create once: waited out.
    world.fake().throttle(
        "PUT",
        &format!(
            "{}/providers/Microsoft.Network/publicIPAddresses",
            FakeHandle::group_id(GROUP)
        ),
        1,
        1,
    );
    let started = Instant::now();
    let log = world.ok(&["apply", "--auto-approve"]);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After honoured"
    );
    assert!(
        world.fake().requests().iter().any(|r| r.status == 429),
        "the throttled request is in the log"
    );

    // The shared network was made once, for both leases, tagged.
    // The subnet comes with the network's create request.
    for id in [&shared_ids()[0], &shared_ids()[1], &shared_ids()[3]] {
        assert_eq!(world.count("PUT", id), 1, "{id} made once\n{log}");
    }
    assert!(
        world.fake().resource(&shared_ids()[2]).is_some(),
        "the subnet exists"
    );
    for id in [&shared_ids()[0], &shared_ids()[1], &shared_ids()[3]] {
        let body = world.fake().resource(id).expect("shared resource");
        assert_eq!(body["tags"]["managed_by"], "crabbox", "{id}");
    }
    let nsg = world.fake().resource(&shared_ids()[3]).expect("nsg");
    let rules = nsg["properties"]["securityRules"]
        .as_array()
        .expect("rules");
    let port = world.sshd.port.to_string();
    assert!(
        rules.iter().any(
            |r| r["properties"]["sourceAddressPrefix"] == "198.51.100.7/32"
                && r["properties"]["destinationPortRange"].as_str() == Some(port.as_str())
        ),
        "{rules:?}"
    );

    // Per lease: IP, NIC, VM — every label a tag in the create request.
    let vms = world.pond_resources("virtualMachines");
    assert_eq!(vms.len(), 2);
    let creates = world.fake().requests();
    for (id, vm) in &vms {
        let lease = vm["tags"]["lease"].as_str().expect("lease tag").to_owned();
        let name = vm["name"].as_str().expect("name").to_owned();
        for (suffix, kind) in [
            ("", "virtualMachines"),
            ("-nic", "networkInterfaces"),
            ("-pip", "publicIPAddresses"),
        ] {
            let rid = FakeHandle::id(
                GROUP,
                &format!(
                    "Microsoft.{}/{kind}",
                    if kind == "virtualMachines" {
                        "Compute"
                    } else {
                        "Network"
                    }
                ),
                &format!("{name}{suffix}"),
            );
            let put = creates
                .iter()
                .find(|r| r.method == "PUT" && r.path.eq_ignore_ascii_case(&rid))
                .unwrap_or_else(|| panic!("no create of {rid}"));
            for (k, v) in [
                ("crabbox", "true"),
                ("pond", world.pond.as_str()),
                ("lease", lease.as_str()),
                ("provider", "azure"),
            ] {
                assert_eq!(put.body["tags"][k], v, "{rid} created with {k}");
            }
        }
        let put = creates
            .iter()
            .rev()
            .find(|r| r.method == "PUT" && r.path.eq_ignore_ascii_case(id))
            .expect("vm put");
        let custom = put.body["properties"]["osProfile"]["customData"]
            .as_str()
            .expect("customData");
        let cloud_init = text(
            &base64::engine::general_purpose::STANDARD
                .decode(custom)
                .expect("base64"),
        );
        let key = put.body["properties"]["osProfile"]["linuxConfiguration"]["ssh"]["publicKeys"][0]
            ["keyData"]
            .as_str()
            .expect("key");
        assert!(cloud_init.starts_with("#cloud-config"), "{cloud_init}");
        assert!(
            cloud_init.contains(key.trim()),
            "the lease key is in cloud-init"
        );
        assert!(
            cloud_init.contains(&world.sshd.user),
            "the login user is made by cloud-init"
        );
    }
    let db = vms
        .iter()
        .find(|(_, v)| v["tags"]["slug"] == "db")
        .expect("db");
    assert_eq!(
        db.1["properties"]["hardwareProfile"]["vmSize"],
        "Standard_B2s"
    );
    assert_eq!(db.1["properties"]["priority"], "Spot");
    let cache = vms
        .iter()
        .find(|(_, v)| v["tags"]["slug"] == "cache")
        .expect("cache");
    assert_eq!(
        cache.1["properties"]["hardwareProfile"]["vmSize"],
        "Standard_D2ads_v6"
    );

    // A second apply (a new process) adopts the network: no writes to it,
    // and nothing to change (the listing read every page).
    world.fake().clear_log();
    let out = world.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "clean re-plan: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    world.write_spec(
        r#"  - slug: db
    provider: azure
    type: Standard_B2s
    setup: [ "echo db on azure > marker.txt" ]
  - slug: cache
    provider: azure
    class: tiny
    setup: [ "echo cache" ]
  - slug: web
    provider: azure
    type: Standard_B2s
    setup: [ "echo web" ]
"#,
    );
    world.ok(&["apply", "--auto-approve"]);
    for id in shared_ids() {
        assert_eq!(world.count("PUT", &id), 0, "{id} adopted, not rewritten");
    }
    assert_eq!(world.pond_resources("virtualMachines").len(), 3);

    // Destroy: VM, NIC, IP, disk of each lease go; only the shared network stays.
    world.fake().clear_log();
    world.ok(&["destroy", "--auto-approve"]);
    assert!(
        world.lease_resources().is_empty(),
        "{:?}",
        world.lease_resources()
    );
    for id in shared_ids() {
        assert!(world.fake().resource(&id).is_some(), "{id} stays");
    }
    assert_no_read_after_delete(world.fake());
    // Each lease's deletes in Crabbox's order (leases are released side by side).
    let mut by_lease: std::collections::BTreeMap<String, Vec<String>> =
        std::collections::BTreeMap::new();
    for r in world
        .fake()
        .requests()
        .iter()
        .filter(|r| r.method == "DELETE")
    {
        let name = r.path.rsplit('/').next().unwrap_or_default();
        let lease = ["-nic", "-pip", "-osdisk"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        by_lease
            .entry(lease.to_owned())
            .or_default()
            .push(r.path.rsplit('/').nth(1).unwrap_or_default().to_owned());
    }
    assert_eq!(by_lease.len(), 3, "{by_lease:?}");
    for order in by_lease.values() {
        assert_eq!(
            order,
            &[
                "virtualMachines",
                "networkInterfaces",
                "publicIPAddresses",
                "disks"
            ]
        );
    }
}

#[test]
fn a_planted_untagged_vnet_is_refused_and_left_untouched() {
    let world = World::new("az-foreign", FakeConfig::default());
    let [group, vnet, ..] = shared_ids();
    world.fake().plant(&group, json!({"location": "eastus", "tags": {"managed_by": "crabbox"}, "properties": {"provisioningState": "Succeeded"}}));
    let planted = json!({"location": "eastus", "tags": {"team": "data"}, "properties": {"provisioningState": "Succeeded", "addressSpace": {"addressPrefixes": ["10.9.0.0/16"]}, "subnets": []}});
    world.fake().plant(&vnet, planted.clone());
    let before = world.fake().resource(&vnet).expect("planted");
    world.write_spec(
        "  - slug: db\n    provider: azure\n    type: Standard_B2s\n    setup: [ \"echo db\" ]\n",
    );
    let out = world.run(&["apply", "--auto-approve"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("crabbox-vnet") && err.contains("not Crabbox-managed"),
        "{err}"
    );
    assert_eq!(world.fake().resource(&vnet), Some(before), "left untouched");
    for r in world.fake().requests() {
        assert!(
            r.method == "GET" || !r.path.to_lowercase().starts_with(&vnet.to_lowercase()),
            "{} {} touched the planted vnet",
            r.method,
            r.path
        );
    }
    assert!(world.lease_resources().is_empty(), "no lease was started");
}

#[test]
fn a_class_falls_back_across_sizes_then_spot_to_regular_and_a_failed_create_leaves_nothing() {
    let world = World::new("az-fallback", FakeConfig::default());
    let fake = world.fake();
    let tiny = [
        "Standard_D2ads_v6",
        "Standard_D2ds_v6",
        "Standard_D2ads_v5",
        "Standard_D2ds_v5",
        "Standard_F2s_v2",
    ];
    // No spot capacity anywhere (some refused at once, some by the
    // allocation itself), no regular quota for the first size.
    for (i, size) in tiny.iter().enumerate() {
        let code = [
            "SkuNotAvailable",
            "AllocationFailed",
            "ZonalAllocationFailed",
            "OverconstrainedAllocationRequest",
            "OperationNotAllowed",
        ][i];
        fake.refuse_vm(size, Some("Spot"), code, i % 2 == 1);
    }
    fake.refuse_vm("Standard_D2ads_v6", Some("Regular"), "QuotaExceeded", false);
    world.write_spec_with(
        &world
            .azure_defaults()
            .replace(" }", ", regular_fallback: true }"),
        "  - slug: db\n    provider: azure\n    class: tiny\n    setup: [ \"echo db\" ]\n",
    );
    let log = world.ok(&["apply", "--auto-approve"]);
    let vm_puts: Vec<(String, String)> = fake
        .requests()
        .iter()
        .filter(|r| r.method == "PUT" && r.path.contains("/virtualMachines/"))
        .map(|r| {
            (
                r.body["properties"]["hardwareProfile"]["vmSize"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                r.body["properties"]["priority"]
                    .as_str()
                    .unwrap_or("Regular")
                    .to_owned(),
            )
        })
        .collect();
    let mut expected: Vec<(String, String)> = tiny
        .iter()
        .map(|s| ((*s).to_owned(), "Spot".to_owned()))
        .collect();
    expected.push(("Standard_D2ads_v6".to_owned(), "Regular".to_owned()));
    expected.push(("Standard_D2ds_v6".to_owned(), "Regular".to_owned()));
    assert_eq!(vm_puts, expected, "{log}");
    for size in tiny {
        assert!(
            log.contains(&format!("size={size} priority=spot")),
            "every try is reported: {size}\n{log}"
        );
    }
    let vms = world.pond_resources("virtualMachines");
    assert_eq!(vms.len(), 1);
    assert_eq!(
        vms[0].1["properties"]["hardwareProfile"]["vmSize"],
        "Standard_D2ds_v6"
    );
    assert_eq!(vms[0].1["tags"]["market"], "on-demand");
    assert_eq!(
        world.fake().resources_of("disks").len(),
        1,
        "the refused VMs' disks are gone"
    );
    world.ok(&["destroy", "--auto-approve"]);
    assert!(world.lease_resources().is_empty());

    // A pinned size refused by the allocation: one try, and the half-made
    // lease (IP, NIC, the failed VM) is deleted again.
    fake.clear_log();
    fake.refuse_vm("Standard_B2s", None, "AllocationFailed", true);
    world.write_spec_with(
        &world.azure_defaults().replace(" }", ", regular_fallback: true }"),
        "  - slug: pinned\n    provider: azure\n    type: Standard_B2s\n    setup: [ \"echo pinned\" ]\n",
    );
    let out = world.run(&["apply", "--auto-approve"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("never falls back"), "{err}");
    let tries: Vec<String> = fake
        .requests()
        .iter()
        .filter(|r| r.method == "PUT" && r.path.contains("/virtualMachines/"))
        .map(|r| {
            r.body["properties"]["hardwareProfile"]["vmSize"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    // The pinned size alone: at spot, then (the fallback is on) regular.
    assert_eq!(tries, ["Standard_B2s", "Standard_B2s"], "{err}");
    assert!(
        world.lease_resources().is_empty(),
        "rolled back: {:?}",
        world.lease_resources()
    );
    assert_no_read_after_delete(fake);
}

#[test]
fn a_pond_of_azure_hetzner_and_local_members_applies_replans_clean_and_destroys_to_the_shared_network()
 {
    let world = World::new("az-mixed", FakeConfig::default()).with_hetzner();
    world.write_spec(
        r#"  - slug: db
    provider: azure
    type: Standard_B2s
    setup: [ "echo db on azure > marker.txt" ]
  - slug: cache
    provider: hetzner
    type: cx23
    depends_on: [db]
    setup: [ "echo cache on hetzner" ]
  - slug: web
    depends_on: [cache, db]
    setup: [ "echo web local" ]
"#,
    );
    world.ok(&["apply", "--auto-approve"]);
    assert_eq!(world.pond_resources("virtualMachines").len(), 1);
    let out = world.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "a clean re-plan: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    world.ok(&["destroy", "--auto-approve"]);
    assert!(
        world.lease_resources().is_empty(),
        "{:?}",
        world.lease_resources()
    );
    for id in shared_ids() {
        assert!(world.fake().resource(&id).is_some(), "{id} stays");
    }
    let hetzner = world.hetzner.as_ref().expect("fake hetzner");
    assert!(
        hetzner
            .handle
            .servers()
            .iter()
            .all(|s| s["labels"]["pond"] != world.pond.as_str())
    );
}

#[test]
fn missing_or_refused_azure_credentials_exit_3_naming_what_to_set() {
    let world = World::new("az-nocreds", FakeConfig::default());
    let mut none = world.command(&["list", "--provider", "azure"]);
    for k in [
        "AZURE_TENANT_ID",
        "AZURE_CLIENT_ID",
        "AZURE_CLIENT_SECRET",
        "AZURE_SUBSCRIPTION_ID",
    ] {
        none.env_remove(k);
    }
    let out = none.output().expect("crabbox runs");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("AZURE_SUBSCRIPTION_ID"),
        "{}",
        text(&out.stderr)
    );

    let out = world
        .command(&["list", "--provider", "azure"])
        .env_remove("AZURE_TENANT_ID")
        .output()
        .expect("crabbox runs");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("AZURE_TENANT_ID"),
        "{}",
        text(&out.stderr)
    );

    world.fake().refuse_secret();
    let out = world.run(&["list", "--provider", "azure"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("AZURE_CLIENT_SECRET"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn workload_identity_from_a_federated_token_file_reaches_arm() {
    let world = World::new("az-oidc", FakeConfig::default());
    let token = world.path("home/oidc-token");
    std::fs::write(&token, fake_azure::FEDERATED_TOKEN).expect("token file");
    world.write_spec("  - slug: db\n    provider: azure\n    type: Standard_B2s\n");
    let out = world
        .command(&["plan"])
        .env_remove("AZURE_CLIENT_SECRET")
        .env("AZURE_FEDERATED_TOKEN_FILE", &token)
        .output()
        .expect("crabbox runs");
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let requests = world.fake().requests();
    let asked = requests
        .iter()
        .find(|r| r.path.ends_with("/oauth2/v2.0/token"))
        .expect("a token request");
    assert_eq!(asked.status, 200);
    assert!(
        asked
            .raw_body
            .contains("client_assertion=fake-github-oidc-token"),
        "{}",
        asked.raw_body
    );
    assert!(
        !asked.raw_body.contains("client_secret"),
        "{}",
        asked.raw_body
    );
    assert!(
        requests.iter().any(|r| r
            .path
            .ends_with("/providers/Microsoft.Compute/virtualMachines")
            && r.status == 404),
        "the listing reached ARM with that token (no group yet)"
    );
}

#[test]
fn the_sweep_removes_this_ponds_orphaned_nic_and_ip_and_nothing_untagged() {
    let world = World::new("az-sweep", FakeConfig::default());
    let [group, ..] = shared_ids();
    world.fake().plant(&group, json!({"location": "eastus", "tags": {"managed_by": "crabbox"}, "properties": {"provisioningState": "Succeeded"}}));
    let lease = "cbx_00000000abcd";
    let ours = json!({"crabbox": "true", "pond": world.pond, "lease": lease, "provider": "azure"});
    let nic = FakeHandle::id(
        GROUP,
        "Microsoft.Network/networkInterfaces",
        "crabbox-db-1234abcd-nic",
    );
    let pip = FakeHandle::id(
        GROUP,
        "Microsoft.Network/publicIPAddresses",
        "crabbox-db-1234abcd-pip",
    );
    let foreign = FakeHandle::id(
        GROUP,
        "Microsoft.Network/networkInterfaces",
        "crabbox-db-99999999-nic",
    );
    let other_pond = FakeHandle::id(
        GROUP,
        "Microsoft.Network/publicIPAddresses",
        "crabbox-x-1-pip",
    );
    for id in [&nic, &pip] {
        world.fake().plant(id, json!({"location": "eastus", "tags": ours, "properties": {"provisioningState": "Succeeded"}}));
    }
    world.fake().plant(&foreign, json!({"location": "eastus", "tags": {"team": "data"}, "properties": {"provisioningState": "Succeeded"}}));
    world.fake().plant(&other_pond, json!({"location": "eastus", "tags": {"crabbox": "true", "pond": "another", "lease": "cbx_00000000ffff"}, "properties": {"provisioningState": "Succeeded"}}));
    world.write_spec("  - slug: db\n    provider: azure\n    type: Standard_B2s\n");
    // The sweep runs after the apply: its own lease stays, the orphans go.
    let log = world.ok(&["apply", "--auto-approve"]);
    assert_eq!(world.pond_resources("networkInterfaces").len(), 1, "{log}");
    assert!(world.fake().resource(&nic).is_none(), "{log}");
    assert!(world.fake().resource(&pip).is_none(), "{log}");
    assert!(log.contains("crabbox-db-1234abcd-nic"), "named: {log}");
    assert!(
        world.fake().resource(&foreign).is_some(),
        "untagged: left alone"
    );
    assert!(
        world.fake().resource(&other_pond).is_some(),
        "another pond's: left alone"
    );
    assert_no_read_after_delete(world.fake());
}

/// Nothing but `az login`: the Azure CLI's profile enables the provider,
/// `az account show` names the subscription and `az account get-access-token`
/// gives the token ARM accepts (a fake `az` first on PATH answers as the CLI
/// does).
#[test]
fn the_azure_cli_login_gives_the_subscription_and_the_token() {
    let world = World::new("az-cli", FakeConfig::default());
    let token = world.fake().issue_token();
    std::fs::create_dir_all(world.path("bin")).expect("bin");
    std::fs::create_dir_all(world.path("home/.azure")).expect(".azure");
    std::fs::write(world.path("home/.azure/azureProfile.json"), "{}").expect("profile");
    let az = world.path("bin/az");
    std::fs::write(
        &az,
        format!(
            r#"#!/bin/sh
case "$*" in
  "account show --query id --output tsv") echo {sub} ;;
  "account get-access-token -o json --scope https://management.azure.com/.default"*)
    printf '{{"accessToken": "{token}", "expiresOn": "2099-01-01 00:00:00.000000", "expires_on": 4070908800, "subscription": "{sub}", "tenant": "{tenant}", "tokenType": "Bearer"}}\n' ;;
  *) echo "az: unexpected arguments: $*" >&2; exit 2 ;;
esac
"#,
            sub = fake_azure::SUBSCRIPTION,
            tenant = fake_azure::TENANT,
        ),
    )
    .expect("fake az");
    std::fs::set_permissions(&az, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("mode");
    world.write_spec("  - slug: db\n    provider: azure\n    type: Standard_B2s\n");
    let path = format!(
        "{}:{}",
        world.path("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = world
        .command(&["plan"])
        .env_remove("AZURE_TENANT_ID")
        .env_remove("AZURE_CLIENT_ID")
        .env_remove("AZURE_CLIENT_SECRET")
        .env_remove("AZURE_SUBSCRIPTION_ID")
        .env("PATH", path)
        .output()
        .expect("crabbox runs");
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let listed = world
        .fake()
        .requests()
        .into_iter()
        .find(|r| r.path.contains("/virtualMachines"))
        .expect("the VMs were listed");
    assert!(
        listed
            .path
            .contains(&format!("/subscriptions/{}/", fake_azure::SUBSCRIPTION)),
        "the CLI's subscription: {}",
        listed.path
    );
    assert_eq!(
        listed.header("authorization"),
        Some(format!("Bearer {token}").as_str()),
        "the CLI's token"
    );
}

/// `osDisk: ephemeral`: the VM is created with a local, read-only-cached
/// OS disk (`diffDiskSettings`), set up over SSH as any other, and
/// destroyed without leaving a disk behind.
#[test]
fn an_ephemeral_os_disk_is_asked_for_in_the_vm_create_and_nothing_is_left() {
    let world = World::new("az-ephemeral", FakeConfig::default());
    world.write_spec_with(
        &world
            .azure_defaults()
            .replace(" }", ", osDisk: ephemeral }"),
        "  - slug: db\n    provider: azure\n    type: Standard_D2ads_v6\n    setup: [ \"echo on an ephemeral disk\" ]\n",
    );
    let log = world.ok(&["apply", "--auto-approve"]);
    assert!(log.contains("db | on an ephemeral disk"), "{log}");
    let put = world
        .fake()
        .requests()
        .into_iter()
        .find(|r| r.method == "PUT" && r.path.contains("/virtualMachines/"))
        .expect("the VM create");
    let disk = &put.body["properties"]["storageProfile"]["osDisk"];
    assert_eq!(disk["diffDiskSettings"]["option"], "Local", "{disk}");
    assert_eq!(disk["caching"], "ReadOnly", "{disk}");
    assert!(disk.get("managedDisk").is_none(), "{disk}");
    assert_eq!(world.fake().resources_of("virtualMachines").len(), 1);

    world.ok(&["destroy", "--auto-approve"]);
    assert!(
        world.fake().resources_of("disks").is_empty()
            && world.fake().resources_of("virtualMachines").is_empty(),
        "nothing of the lease is left"
    );
}

/// A managed identity (App Service's protocol: `IDENTITY_ENDPOINT` and
/// `IDENTITY_HEADER`) gives the token ARM accepts, with nothing else set
/// but the subscription.
#[test]
fn a_managed_identity_gives_the_token() {
    let world = World::new("az-msi", FakeConfig::default());
    world.write_spec("  - slug: db\n    provider: azure\n    type: Standard_B2s\n");
    let out = world
        .command(&["plan"])
        .env_remove("AZURE_TENANT_ID")
        .env_remove("AZURE_CLIENT_ID")
        .env_remove("AZURE_CLIENT_SECRET")
        .env(
            "IDENTITY_ENDPOINT",
            format!("{}/msi/token", world.azure.url),
        )
        .env("IDENTITY_HEADER", fake_azure::IDENTITY_HEADER)
        .output()
        .expect("crabbox runs");
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let requests = world.fake().requests();
    let asked = requests
        .iter()
        .find(|r| r.path == "/msi/token")
        .expect("the identity endpoint was asked");
    assert_eq!(asked.status, 200);
    let listed = requests
        .iter()
        .find(|r| r.path.contains("/virtualMachines"))
        .expect("the VMs were listed");
    assert!(
        listed
            .header("authorization")
            .is_some_and(|a| a.starts_with("Bearer fake-msi-token-")),
        "the managed identity's token"
    );
}
