//! Provider configuration blocks of `pond.yaml`: one struct per provider block a member
//! (or `defaults`) may carry, the closed set of provider names, and [`ProviderBlocks`], the
//! twelve optional blocks together with the merge of a member's blocks over `defaults`.
//!
//! Key names are the ones Crabbox users already know (camelCase, as in Crabbox's own config
//! and the provider docs), except the SSH settings fixed by the design (docs/design.md#provider-blocks): SSH-lease cloud
//! providers take `ssh_user`, `ssh_port` and `ssh_key` in their own block, and the static `ssh`
//! provider's block is `{host, user, port, key, work_root}`. Every field is optional here;
//! defaults are applied, and provider rules checked, by the validator and the adapters. The
//! `///` docs become JSON Schema descriptions, so they are written for the user of `pond.yaml`.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crabbox_core::provider::ProviderName;

/// Accepts the snake_case spelling of every camelCase key (`memory_mb` for
/// `memoryMB`): Crabbox's config files use camelCase, its issue trackers and
/// pond.yaml's own keys use snake_case, and both mean the same setting. Serde
/// takes them through `alias`; this adds them to the schema.
fn snake_case_aliases(schema: &mut schemars::Schema) {
    let Some(props) = schema.get_mut("properties").and_then(|p| p.as_object_mut()) else {
        return;
    };
    let aliases: Vec<(String, serde_json::Value)> = props
        .iter()
        .filter(|(k, _)| k.chars().any(|c| c.is_ascii_uppercase()))
        .map(|(k, v)| {
            let mut alias = v.clone();
            if let Some(obj) = alias.as_object_mut() {
                obj.insert("description".into(), format!("Alias of `{k}`.").into());
            }
            (snake_case(k), alias)
        })
        .collect();
    for (k, v) in aliases {
        props.entry(k).or_insert(v);
    }
}

/// `memoryMB` → `memory_mb`, `sshCIDRs` → `ssh_cidrs`, `gatewayProfile` → `gateway_profile`.
pub(crate) fn snake_case(camel: &str) -> String {
    let chars: Vec<char> = camel.chars().collect();
    let mut out = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if c.is_ascii_uppercase() {
            let prev_lower = i > 0 && chars[i - 1].is_ascii_lowercase();
            if prev_lower {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Settings of the embedded `local` provider: real processes on this machine, each lease in
/// its own directory under the state dir and on its own loopback address `127.77.x.y`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LocalBlock {
    /// Loopback address the lease's services bind to, pinned instead of derived from the
    /// lease ID. Must be in 127.0.0.0/8; default: `127.77.x.y` derived from the lease ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind_addr: Option<String>,
}

/// Settings of the static `ssh` provider: an existing host reached with OpenSSH, which
/// crabbox never creates or deletes (Crabbox's `static:` block plus `ssh.key`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SshBlock {
    /// SSH host name or IP address of the existing machine; required.
    /// Env `CRABBOX_STATIC_HOST`, flag `--static-host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// SSH login user. Default: the local `$USER`. Env `CRABBOX_STATIC_USER`, flag `--static-user`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// SSH port. Default 2222, falling back to 22. Env `CRABBOX_STATIC_PORT`, flag `--static-port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Path to the private key used to log in. Default: OpenSSH's own identities and agent.
    /// Crabbox's `ssh.key`, env `CRABBOX_SSH_KEY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Remote directory the pond's files are synced into and commands run from. Default
    /// `/work/crabbox`. Env `CRABBOX_STATIC_WORK_ROOT`, flag `--static-work-root`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work_root: Option<String>,
}

/// Settings of the `hetzner` provider: Hetzner Cloud servers, reached over SSH.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(transform = snake_case_aliases)]
pub struct HetznerBlock {
    /// Hetzner datacenter location, e.g. `fsn1`, `nbg1`, `hel1`. Default `fsn1`.
    /// Env `CRABBOX_HETZNER_LOCATION`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Hetzner image slug. Default `ubuntu-24.04` (both Ubuntu selectors map to it).
    /// Env `CRABBOX_HETZNER_IMAGE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// SSH login user on the server, created by the cloud-init bootstrap with
    /// the lease's key (as Crabbox does). Default `crabbox`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_user: Option<String>,
    /// SSH port sshd serves on the server (the bootstrap also serves 22, tried
    /// when this one does not answer). Default 2222.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_port: Option<u16>,
    /// Path to a private key whose public half is uploaded as the server's key.
    /// Default: a per-lease key generated where Crabbox keeps one,
    /// `<user config dir>/crabbox/testboxes/<lease>/id_ed25519`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_key: Option<String>,
}

/// Settings of the `aws` provider: EC2 instances (Linux), reached over SSH.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(transform = snake_case_aliases)]
pub struct AwsBlock {
    /// AWS region, e.g. `eu-west-1`. Default: env `CRABBOX_AWS_REGION`, else `AWS_REGION`,
    /// `AWS_DEFAULT_REGION` or the AWS profile's region, else `eu-west-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// AMI ID to boot instead of the auto-selected Canonical Ubuntu image.
    /// Env `CRABBOX_AWS_AMI`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ami: Option<String>,
    /// Existing security group to attach. Default: the Crabbox-managed `crabbox-runners` group.
    /// Env `CRABBOX_AWS_SECURITY_GROUP_ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "securityGroupId", alias = "security_group_id")]
    pub security_group_id: Option<String>,
    /// Subnet (and so VPC) to launch into. Default: a subnet of the default VPC.
    /// Env `CRABBOX_AWS_SUBNET_ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "subnetId", alias = "subnet_id")]
    pub subnet_id: Option<String>,
    /// IAM instance profile name attached to the instance (not a local AWS CLI profile).
    /// Default: none. Env `CRABBOX_AWS_INSTANCE_PROFILE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "instanceProfile", alias = "instance_profile")]
    pub instance_profile: Option<String>,
    /// Root volume size in GB (encrypted gp3), at least 8. Default 400.
    /// Env `CRABBOX_AWS_ROOT_GB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "rootGB", alias = "root_gb")]
    pub root_gb: Option<u32>,
    /// Source CIDR ranges allowed to reach SSH, e.g. `203.0.113.7/32`. Default: this
    /// machine's public IPv4 as a /32 (never `0.0.0.0/0`; when it cannot be found, the
    /// apply fails asking for this setting). Env `CRABBOX_AWS_SSH_CIDRS` (comma-separated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "sshCIDRs", alias = "ssh_cidrs")]
    pub ssh_cidrs: Option<Vec<String>>,
    /// EC2 Mac Dedicated Host ID, for macOS targets (not supported yet). Default: none.
    /// Env `CRABBOX_AWS_MAC_HOST_ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "macHostId", alias = "mac_host_id")]
    pub mac_host_id: Option<String>,
    /// Capacity market: `spot` (one-time, terminated on interruption) or `on-demand`.
    /// Default `spot`. Flag `--market`, env `CRABBOX_CAPACITY_MARKET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub market: Option<AwsMarket>,
    /// Retry on-demand when spot is refused for lack of capacity or quota. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_demand_fallback: Option<bool>,
    /// Existing EC2 key pair to launch with instead of importing the lease key as
    /// `crabbox-<lease>`; its private half must be `ssh_key`. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_name: Option<String>,
    /// Reach the instance at its private IPv4 (e.g. from inside the VPC or through a
    /// VPN) instead of its public one. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_ip: Option<bool>,
    /// Operating system of the instance. Only `linux` is supported; `windows`, `wsl2`
    /// and `macos` are refused by `validate`. Default `linux`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<AwsTarget>,
    /// Host SSH connects to instead of the instance's address (a tunnel, a bastion's
    /// forwarded port, or a test's sshd). Default: the instance's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_host: Option<String>,
    /// SSH login user on the instance. Default `crabbox`, the user the bootstrap creates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_user: Option<String>,
    /// SSH port on the instance. Default 2222, falling back to 22 while the bootstrap runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_port: Option<u16>,
    /// Path to a private key whose public half is imported as the instance's key pair.
    /// Default: a per-lease key generated where Crabbox keeps one,
    /// `<user config dir>/crabbox/testboxes/<lease>/id_ed25519`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_key: Option<String>,
}

/// How an EC2 instance is bought (`aws.market`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum AwsMarket {
    /// Spot capacity: one-time, terminated when AWS interrupts it.
    #[default]
    Spot,
    /// On-demand capacity.
    OnDemand,
}

/// The operating system of an EC2 instance (`aws.target`), as Crabbox names its targets.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum AwsTarget {
    /// Ubuntu LTS, reached over SSH as `crabbox`.
    #[default]
    Linux,
    /// Windows Server (not supported: needs hosts the tests cannot run).
    Windows,
    /// Windows Server with WSL2 (not supported).
    Wsl2,
    /// macOS on an EC2 Mac Dedicated Host (not supported).
    Macos,
}

impl AwsTarget {
    /// The name as written in `pond.yaml`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Linux => "linux",
            Self::Windows => "windows",
            Self::Wsl2 => "wsl2",
            Self::Macos => "macos",
        }
    }
}

/// Settings of the `azure` provider: Azure virtual machines (Linux), reached over SSH.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(transform = snake_case_aliases)]
pub struct AzureBlock {
    /// Azure region, e.g. `eastus`. Default `eastus`. Env `CRABBOX_AZURE_LOCATION`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Resource group holding the leases and shared network. Default `crabbox-leases`.
    /// Env `CRABBOX_AZURE_RESOURCE_GROUP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "resourceGroup", alias = "resource_group")]
    pub resource_group: Option<String>,
    /// Marketplace image URN `publisher:offer:sku:version`. Default
    /// `Canonical:ubuntu-26_04-lts:server:latest`. Env `CRABBOX_AZURE_IMAGE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// OS disk: `managed` (a StandardSSD managed disk) or `ephemeral` (the VM's local
    /// disk; needs a SKU that supports it). Default `managed`. Env `CRABBOX_AZURE_OS_DISK`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "osDisk", alias = "os_disk")]
    pub os_disk: Option<AzureOsDisk>,
    /// Shared virtual network name. Default `crabbox-vnet`. Env `CRABBOX_AZURE_VNET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vnet: Option<String>,
    /// Shared subnet name. Default `crabbox-subnet`. Env `CRABBOX_AZURE_SUBNET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    /// Shared network security group name. Default `crabbox-nsg`. Env `CRABBOX_AZURE_NSG`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nsg: Option<String>,
    /// Source CIDR ranges allowed to reach SSH through the shared NSG. Default: this
    /// machine's public IPv4 as a /32 (never `0.0.0.0/0`). Env `CRABBOX_AZURE_SSH_CIDRS`
    /// (comma-separated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "sshCIDRs", alias = "ssh_cidrs")]
    pub ssh_cidrs: Option<Vec<String>>,
    /// Which address SSH uses: `public` (the VM's public IP) or `private` (the NIC's vnet IP,
    /// e.g. through a VPN). Default `public`. Env `CRABBOX_AZURE_NETWORK`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// VM priority: `spot` (evicted and deleted when Azure needs the capacity) or
    /// `regular`. Default `spot`, as Crabbox's market.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<AzurePriority>,
    /// Retry with regular priority when spot is refused for capacity or quota.
    /// Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regular_fallback: Option<bool>,
    /// Operating system of the VM. Only `linux` is supported; `windows` is refused by
    /// `validate`. Default `linux`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<AzureTarget>,
    /// SSH login user on the VM. Default `crabbox`, the user the bootstrap creates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_user: Option<String>,
    /// SSH port on the VM. Default 2222, falling back to 22 while the bootstrap runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_port: Option<u16>,
    /// Path to a private key whose public half is installed as the VM's key.
    /// Default: a per-lease key generated where Crabbox keeps one,
    /// `<user config dir>/crabbox/testboxes/<lease>/id_ed25519`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_key: Option<String>,
}

/// The OS disk of an Azure VM (`azure.osDisk`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum AzureOsDisk {
    /// A StandardSSD managed disk, deleted with the lease.
    #[default]
    Managed,
    /// The VM's local (cache) disk: nothing to delete, gone with the VM.
    Ephemeral,
}

/// The priority of an Azure VM (`azure.priority`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum AzurePriority {
    /// Spot: evicted (and deleted) when Azure needs the capacity.
    #[default]
    Spot,
    /// Regular (pay-as-you-go) capacity.
    Regular,
}

/// The operating system of an Azure VM (`azure.target`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum AzureTarget {
    /// Ubuntu LTS with Crabbox's cloud-init, reached over SSH as `crabbox`.
    #[default]
    Linux,
    /// Windows Server (not supported: crabbox's tests cannot run a Windows guest).
    Windows,
}

/// Settings of the `gcp` provider: Google Compute Engine Linux VMs, reached over SSH.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(transform = snake_case_aliases)]
pub struct GcpBlock {
    /// Google Cloud project ID; required. Env `CRABBOX_GCP_PROJECT`, else
    /// `GOOGLE_CLOUD_PROJECT` or `GCP_PROJECT_ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Compute Engine zone. Default `europe-west2-a`. Env `CRABBOX_GCP_ZONE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Boot image or image family. Default: the Ubuntu 26.04 LTS family
    /// (`projects/ubuntu-os-cloud/global/images/family/ubuntu-2604-lts-amd64`).
    /// Env `CRABBOX_GCP_IMAGE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// VPC network name or self link. Default `default`. Env `CRABBOX_GCP_NETWORK`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Subnetwork name or self link. Default: none (the network's auto subnet).
    /// Env `CRABBOX_GCP_SUBNET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    /// Network tags, which the SSH firewall rule targets; they replace the default.
    /// Default `[crabbox-ssh]`. Env `CRABBOX_GCP_TAGS` (comma-separated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// Source CIDR ranges allowed to reach SSH, e.g. `203.0.113.7/32`. Default: this
    /// machine's public IPv4 as a /32 (never `0.0.0.0/0`; when it cannot be found, the
    /// apply fails asking for this setting). Env `CRABBOX_GCP_SSH_CIDRS` (comma-separated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "sshCIDRs", alias = "ssh_cidrs")]
    pub ssh_cidrs: Option<Vec<String>>,
    /// Spot VM (`provisioningModel: SPOT`, deleted when preempted) instead of a standard
    /// one. Default true (Crabbox's `spot` market).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spot: Option<bool>,
    /// Retry as a standard VM when spot is refused for lack of capacity or quota.
    /// Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standard_fallback: Option<bool>,
    /// Boot disk size in GB (pd-balanced), at least 10. Default 400. Env `CRABBOX_GCP_ROOT_GB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "rootGB", alias = "root_gb")]
    pub root_gb: Option<u32>,
    /// Service account email attached to the VM. Default: none.
    /// Env `CRABBOX_GCP_SERVICE_ACCOUNT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "serviceAccount", alias = "service_account")]
    pub service_account: Option<String>,
    /// Host SSH connects to instead of the VM's external address (a tunnel, a bastion's
    /// forwarded port, or a test's sshd). Default: the VM's external address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_host: Option<String>,
    /// SSH login user on the VM. Default `crabbox`, the user the bootstrap creates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_user: Option<String>,
    /// SSH port on the VM. Default 2222, falling back to 22 while the bootstrap runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_port: Option<u16>,
    /// Path to a private key whose public half goes into the VM's `ssh-keys` metadata.
    /// Default: a per-lease key generated in the state dir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_key: Option<String>,
}

/// Settings of the `islo` provider: Islo sandboxes, with commands run through Islo's
/// streaming exec API and ports published as HTTPS shares.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(transform = snake_case_aliases)]
pub struct IsloBlock {
    /// Islo API base URL. Default `https://api.islo.dev`.
    /// Env `CRABBOX_ISLO_BASE_URL` or `ISLO_BASE_URL`, flag `--islo-base-url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "baseUrl", alias = "base_url")]
    pub base_url: Option<String>,
    /// Container image of the sandbox. Default: Islo's tenant default.
    /// Env `CRABBOX_ISLO_IMAGE`, flag `--islo-image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Working directory, relative under `/workspace` (no absolute path, no `..`).
    /// Default `crabbox`. Env `CRABBOX_ISLO_WORKDIR`, flag `--islo-workdir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Islo gateway profile (network policy and credentials). Default: none.
    /// Env `CRABBOX_ISLO_GATEWAY_PROFILE`, flag `--islo-gateway-profile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "gatewayProfile", alias = "gateway_profile")]
    pub gateway_profile: Option<String>,
    /// Snapshot to create the sandbox from. Default: none.
    /// Env `CRABBOX_ISLO_SNAPSHOT_NAME`, flag `--islo-snapshot-name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "snapshotName", alias = "snapshot_name")]
    pub snapshot_name: Option<String>,
    /// Virtual CPUs. Default 2 (left to Islo's tenant default unless set).
    /// Env `CRABBOX_ISLO_VCPUS`, flag `--islo-vcpus`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    /// Memory in MB. Default 4096 (left to Islo's tenant default unless set).
    /// Env `CRABBOX_ISLO_MEMORY_MB`, flag `--islo-memory-mb`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "memoryMB", alias = "memory_mb")]
    pub memory_mb: Option<u32>,
    /// Disk size in GB. Default 20 (left to Islo's tenant default unless set).
    /// Env `CRABBOX_ISLO_DISK_GB`, flag `--islo-disk-gb`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "diskGB", alias = "disk_gb")]
    pub disk_gb: Option<u32>,
}

/// Settings of the `tensorlake` provider: Tensorlake Firecracker sandboxes driven through
/// the `tensorlake` CLI (`tensorlake sbx …`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(transform = snake_case_aliases)]
pub struct TensorlakeBlock {
    /// Tensorlake API base URL. Default `https://api.tensorlake.ai`.
    /// Env `CRABBOX_TENSORLAKE_API_URL` or `TENSORLAKE_API_URL`, flag `--tensorlake-api-url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "apiUrl", alias = "api_url")]
    pub api_url: Option<String>,
    /// Path to the `tensorlake` CLI binary. Default `tensorlake` on `PATH`.
    /// Env `CRABBOX_TENSORLAKE_CLI`, flag `--tensorlake-cli`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "cliPath", alias = "cli_path")]
    pub cli_path: Option<String>,
    /// Registered image to boot. Default: the CLI's default image.
    /// Env `CRABBOX_TENSORLAKE_IMAGE`, flag `--tensorlake-image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Snapshot ID to restore from, as an alternative to `image`. Default: none.
    /// Env `CRABBOX_TENSORLAKE_SNAPSHOT`, flag `--tensorlake-snapshot`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Tensorlake organization, when the account spans several. Default: the account's.
    /// Env `CRABBOX_TENSORLAKE_ORGANIZATION_ID` or `TENSORLAKE_ORGANIZATION_ID`,
    /// flag `--tensorlake-organization-id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "organizationId", alias = "organization_id")]
    pub organization_id: Option<String>,
    /// Tensorlake project, when the account spans several. Default: the account's.
    /// Env `CRABBOX_TENSORLAKE_PROJECT_ID` or `TENSORLAKE_PROJECT_ID`,
    /// flag `--tensorlake-project-id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "projectId", alias = "project_id")]
    pub project_id: Option<String>,
    /// Tensorlake namespace. Default: none.
    /// Env `CRABBOX_TENSORLAKE_NAMESPACE` or `INDEXIFY_NAMESPACE`, flag `--tensorlake-namespace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Absolute working directory (sync target and `exec -w`); not `/`, `/tmp`, `/workspace`
    /// or a system dir. Default `/workspace/crabbox`.
    /// Env `CRABBOX_TENSORLAKE_WORKDIR`, flag `--tensorlake-workdir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// CPUs, fractional allowed. Default 1.0.
    /// Env `CRABBOX_TENSORLAKE_CPUS`, flag `--tensorlake-cpus`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Memory in MB. Default 1024.
    /// Env `CRABBOX_TENSORLAKE_MEMORY_MB`, flag `--tensorlake-memory-mb`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "memoryMB", alias = "memory_mb")]
    pub memory_mb: Option<u32>,
    /// Disk size in MB. Default 10240.
    /// Env `CRABBOX_TENSORLAKE_DISK_MB`, flag `--tensorlake-disk-mb`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "diskMB", alias = "disk_mb")]
    pub disk_mb: Option<u32>,
    /// Sandbox lifetime in seconds; 0 leaves it to Tensorlake. Default 0.
    /// Env `CRABBOX_TENSORLAKE_TIMEOUT_SECS`, flag `--tensorlake-timeout-secs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "timeoutSecs", alias = "timeout_secs")]
    pub timeout_secs: Option<u64>,
    /// Block outbound internet from the sandbox. Default false.
    /// Env `CRABBOX_TENSORLAKE_NO_INTERNET`, flag `--tensorlake-no-internet`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "noInternet", alias = "no_internet")]
    pub no_internet: Option<bool>,
}

/// A value in a provider block that its provider cannot use. Each block's
/// rules live in one function, which `validate` reports at the value's place
/// and the adapter re-checks, so both accept exactly the same values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockProblem {
    /// The key in the block (`workdir`), or a JSON pointer below it for one
    /// list entry (`sshCIDRs/1`).
    pub field: String,
    /// The diagnostic code (`islo-workdir`).
    pub code: &'static str,
    /// What is wrong.
    pub message: String,
    /// What to write instead.
    pub hint: String,
}

impl IsloBlock {
    /// The workdir when the block names none.
    pub const DEFAULT_WORKDIR: &'static str = "crabbox";

    /// Islo's `workdir` rule: a relative directory under `/workspace`, no
    /// `..`, not the workspace itself. Returns the normalized path (surrounding
    /// whitespace, `.` segments and repeated or trailing slashes dropped), the
    /// default for `None`.
    ///
    /// # Errors
    /// An absolute path, `..`, a backslash or NUL, or nothing left.
    pub fn checked_workdir(raw: Option<&str>) -> Result<String, BlockProblem> {
        let Some(raw) = raw else {
            return Ok(Self::DEFAULT_WORKDIR.to_owned());
        };
        let bad = || {
            BlockProblem {
            field: "workdir".to_owned(),
            code: "islo-workdir",
            message: format!("Islo `workdir` `{raw}` must be a relative directory under /workspace"),
            hint: "write a relative name such as `crabbox` or `app/backend`, without `..`; it lands in /workspace/<workdir>".to_owned(),
        }
        };
        let workdir = raw.trim();
        if workdir.starts_with('/') || workdir.contains(['\0', '\\']) {
            return Err(bad());
        }
        let parts: Vec<&str> = workdir
            .split('/')
            .filter(|p| !p.is_empty() && *p != ".")
            .collect();
        if parts.is_empty() || parts.contains(&"..") {
            return Err(bad());
        }
        Ok(parts.join("/"))
    }

    /// Every value of this block Islo cannot use: a bad `workdir`, a size of 0.
    #[must_use]
    pub fn problems(&self) -> Vec<BlockProblem> {
        let sizes = [
            ("vcpus", self.vcpus),
            ("memoryMB", self.memory_mb),
            ("diskGB", self.disk_gb),
        ];
        Self::checked_workdir(self.workdir.as_deref())
            .err()
            .into_iter()
            .chain(
                sizes
                    .into_iter()
                    .filter(|(_, v)| *v == Some(0))
                    .map(|(field, _)| BlockProblem {
                        field: field.to_owned(),
                        code: "islo-size",
                        message: format!("Islo `{field}` must be at least 1"),
                        hint: format!("leave `{field}` out for Islo's tenant default, or give a positive number"),
                    }),
            )
            .collect()
    }
}

impl TensorlakeBlock {
    /// The workdir when the block names none.
    pub const DEFAULT_WORKDIR: &'static str = "/workspace/crabbox";

    /// Tensorlake's `workdir` rule: an absolute directory other than `/`,
    /// `/tmp`, `/workspace` or a system directory, without `.` or `..`
    /// segments. Returns it without surrounding whitespace and trailing
    /// slashes, the default for `None`.
    ///
    /// # Errors
    /// A relative or broad path, `.` or `..`, or a NUL.
    pub fn checked_workdir(raw: Option<&str>) -> Result<String, BlockProblem> {
        const BROAD: [&str; 14] = [
            "",
            "/tmp",
            "/workspace",
            "/bin",
            "/boot",
            "/dev",
            "/etc",
            "/lib",
            "/proc",
            "/root",
            "/sbin",
            "/sys",
            "/usr",
            "/var",
        ];
        let Some(raw) = raw else {
            return Ok(Self::DEFAULT_WORKDIR.to_owned());
        };
        let trimmed = raw.trim().trim_end_matches('/');
        if !trimmed.starts_with('/')
            || BROAD.contains(&trimmed)
            || trimmed.split('/').any(|p| p == ".." || p == ".")
            || trimmed.contains('\0')
        {
            return Err(BlockProblem {
                field: "workdir".to_owned(),
                code: "tensorlake-workdir",
                message: format!(
                    "Tensorlake `workdir` `{raw}` must be an absolute directory other than /, /tmp, /workspace or a system directory"
                ),
                hint: format!("e.g. {} (the default)", Self::DEFAULT_WORKDIR),
            });
        }
        Ok(trimmed.to_owned())
    }

    /// Every value of this block Tensorlake cannot use.
    #[must_use]
    pub fn problems(&self) -> Vec<BlockProblem> {
        Self::checked_workdir(self.workdir.as_deref())
            .err()
            .into_iter()
            .collect()
    }
}

impl DaytonaBlock {
    /// Every value of this block Daytona cannot use: a relative `workRoot`,
    /// SSH access tokens of 0 minutes.
    #[must_use]
    pub fn problems(&self) -> Vec<BlockProblem> {
        let mut out = Vec::new();
        if let Some(root) = self.work_root.as_deref()
            && (!root.trim().starts_with('/') || root.split('/').any(|p| p == ".."))
        {
            out.push(BlockProblem {
                field: "workRoot".to_owned(),
                code: "daytona-work-root",
                message: format!(
                    "Daytona `workRoot` `{root}` must be an absolute directory without `..`"
                ),
                hint: "e.g. /home/daytona/crabbox (the default)".to_owned(),
            });
        }
        if self.ssh_access_minutes == Some(0) {
            out.push(BlockProblem {
                field: "sshAccessMinutes".to_owned(),
                code: "daytona-ssh-access",
                message: "Daytona `sshAccessMinutes` must be at least 1".to_owned(),
                hint: "leave it out for 30 minutes (tokens are refreshed before they expire)"
                    .to_owned(),
            });
        }
        out
    }
}

impl BlacksmithTestboxBlock {
    /// Every value of this block Blacksmith cannot use: no `workflow` (a
    /// Testbox is warmed up from one; Crabbox refuses a create without it),
    /// an `idleTimeout` that is not a duration of at least a minute (the
    /// CLI takes whole minutes).
    #[must_use]
    pub fn problems(&self) -> Vec<BlockProblem> {
        let mut out = Vec::new();
        if self.workflow.as_deref().is_none_or(|w| w.trim().is_empty()) {
            out.push(BlockProblem {
                field: "workflow".to_owned(),
                code: "blacksmith-workflow",
                message: "blacksmith-testbox requires `blacksmith-testbox.workflow`".to_owned(),
                hint: "name the Testbox workflow, e.g. `blacksmith-testbox: { workflow: .github/workflows/ci-check-testbox.yml }`".to_owned(),
            });
        }
        if let Some(raw) = &self.idle_timeout
            && crabbox_core::duration::parse(raw)
                .is_none_or(|d| d < std::time::Duration::from_secs(60))
        {
            out.push(BlockProblem {
                field: "idleTimeout".to_owned(),
                code: "blacksmith-idle-timeout",
                message: format!("Blacksmith `idleTimeout` `{raw}` is not a duration of at least 1m"),
                hint: "write minutes or hours such as `30m` or `2h`, or leave it out for the member's `idle_timeout`".to_owned(),
            });
        }
        out
    }
}

impl E2bBlock {
    /// The user commands run as when the block names none.
    pub const DEFAULT_USER: &'static str = "user";
    /// The workdir when the block names none.
    pub const DEFAULT_WORKDIR: &'static str = "crabbox";

    /// E2B's `workdir` rule (Crabbox's): a relative directory goes under
    /// `/home/<user>`; the result must not be broad (`/`, `/home`, the
    /// user's home, `/tmp`, a system directory) nor hold `..`. Returns the
    /// absolute directory.
    ///
    /// # Errors
    /// A broad directory or `..`.
    pub fn checked_workdir(
        workdir: Option<&str>,
        user: Option<&str>,
    ) -> Result<String, BlockProblem> {
        let user = user
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .unwrap_or(Self::DEFAULT_USER);
        let raw = workdir
            .map(str::trim)
            .filter(|w| !w.is_empty())
            .unwrap_or(Self::DEFAULT_WORKDIR);
        let path = if raw.starts_with('/') {
            raw.trim_end_matches('/').to_owned()
        } else {
            format!("/home/{user}/{}", raw.trim_matches('/'))
        };
        let home = format!("/home/{user}");
        const BROAD: [&str; 13] = [
            "", "/home", "/tmp", "/root", "/bin", "/boot", "/dev", "/etc", "/lib", "/proc", "/sys",
            "/usr", "/var",
        ];
        if BROAD.contains(&path.as_str())
            || path == home
            || path.split('/').any(|p| p == "..")
            || path.contains('\0')
        {
            return Err(BlockProblem {
                field: "workdir".to_owned(),
                code: "e2b-workdir",
                message: format!("E2B `workdir` `{raw}` is `{path}`: not a dedicated directory"),
                hint: "use a directory of its own, such as `crabbox` (under /home/<user>, the default)".to_owned(),
            });
        }
        Ok(path)
    }

    /// Every value of this block E2B cannot use.
    #[must_use]
    pub fn problems(&self) -> Vec<BlockProblem> {
        Self::checked_workdir(self.workdir.as_deref(), self.user.as_deref())
            .err()
            .into_iter()
            .collect()
    }
}

impl AwsBlock {
    /// The smallest root volume an Ubuntu AMI boots from (its snapshot's size).
    pub const MIN_ROOT_GB: u32 = 8;

    /// Every value of this block the `aws` provider cannot use: a target other
    /// than Linux, an `sshCIDRs` entry EC2 would refuse, a root volume below
    /// [`Self::MIN_ROOT_GB`].
    #[must_use]
    pub fn problems(&self) -> Vec<BlockProblem> {
        let mut out = Vec::new();
        if let Some(target) = self.target.filter(|t| *t != AwsTarget::Linux) {
            out.push(BlockProblem {
                field: "target".to_owned(),
                code: "aws-target",
                message: format!(
                    "AWS target `{}` is not supported: Windows, WSL2 and macOS instances need hosts crabbox's tests cannot run",
                    target.as_str()
                ),
                hint: "use `target: linux` (or leave `target` out), or lease these machines with Crabbox itself".to_owned(),
            });
        }
        for (i, cidr) in self.ssh_cidrs.iter().flatten().enumerate() {
            if let Err(why) = check_ipv4_cidr(cidr) {
                out.push(BlockProblem {
                    field: format!("sshCIDRs/{i}"),
                    code: "aws-ssh-cidr",
                    message: format!("`{cidr}` in `sshCIDRs` is not an IPv4 CIDR range: {why}"),
                    hint: "write an address with its prefix length, e.g. `203.0.113.7/32` for one machine or `10.0.0.0/8` for a network".to_owned(),
                });
            }
        }
        if let Some(gb) = self.root_gb.filter(|gb| *gb < Self::MIN_ROOT_GB) {
            out.push(BlockProblem {
                field: "rootGB".to_owned(),
                code: "aws-root-gb",
                message: format!(
                    "AWS `rootGB` {gb} is smaller than the {} GB an Ubuntu image needs",
                    Self::MIN_ROOT_GB
                ),
                hint: "leave `rootGB` out for 400 GB, or give at least 8".to_owned(),
            });
        }
        out
    }
}

impl AzureBlock {
    /// Every value of this block the `azure` provider cannot use: a Windows
    /// target.
    #[must_use]
    pub fn problems(&self) -> Vec<BlockProblem> {
        let mut out = Vec::new();
        if self.target == Some(AzureTarget::Windows) {
            out.push(BlockProblem {
                field: "target".to_owned(),
                code: "azure-target",
                message: "Azure target `windows` is not supported: crabbox's tests cannot run a Windows guest".to_owned(),
                hint: "use `target: linux` (or leave `target` out), or lease Windows VMs with Crabbox itself".to_owned(),
            });
        }
        out
    }
}

impl GcpBlock {
    /// The smallest boot disk Compute Engine's Ubuntu images boot from.
    pub const MIN_ROOT_GB: u32 = 10;

    /// Every value of this block the `gcp` provider cannot use: an `sshCIDRs`
    /// entry that is not an IPv4 range (the firewall rule's `sourceRanges`
    /// here take IPv4 only, as for AWS), a boot disk below [`Self::MIN_ROOT_GB`].
    #[must_use]
    pub fn problems(&self) -> Vec<BlockProblem> {
        let mut out = Vec::new();
        for (i, cidr) in self.ssh_cidrs.iter().flatten().enumerate() {
            if let Err(why) = check_ipv4_cidr(cidr) {
                out.push(BlockProblem {
                    field: format!("sshCIDRs/{i}"),
                    code: "gcp-ssh-cidr",
                    message: format!("`{cidr}` in `sshCIDRs` is not an IPv4 CIDR range: {why}"),
                    hint: "write an address with its prefix length, e.g. `203.0.113.7/32` for one machine or `10.0.0.0/8` for a network".to_owned(),
                });
            }
        }
        if let Some(gb) = self.root_gb.filter(|gb| *gb < Self::MIN_ROOT_GB) {
            out.push(BlockProblem {
                field: "rootGB".to_owned(),
                code: "gcp-root-gb",
                message: format!(
                    "GCP `rootGB` {gb} is smaller than the {} GB an Ubuntu image needs",
                    Self::MIN_ROOT_GB
                ),
                hint: "leave `rootGB` out for 400 GB, or give at least 10".to_owned(),
            });
        }
        out
    }
}

/// Why `text` is not what EC2 takes as an ingress `CidrIp`: an IPv4 address,
/// `/`, a prefix length 0-32, with no bits set after the prefix (EC2 calls
/// `10.0.0.1/8` malformed).
fn check_ipv4_cidr(text: &str) -> Result<(), String> {
    let Some((addr, len)) = text.split_once('/') else {
        return Err("the `/prefix` length is missing".to_owned());
    };
    let addr: std::net::Ipv4Addr = addr.parse().map_err(|_| {
        if addr.parse::<std::net::Ipv6Addr>().is_ok() {
            "IPv6 ranges are not supported (EC2 security group `IpRanges` take IPv4)".to_owned()
        } else {
            format!("`{addr}` is not an IPv4 address")
        }
    })?;
    let len: u32 = len
        .parse()
        .ok()
        .filter(|n| *n <= 32 && !len.starts_with('+'))
        .ok_or_else(|| format!("the prefix length `{len}` is not a number from 0 to 32"))?;
    let host_bits = u32::MAX.checked_shr(len).unwrap_or(0);
    if u32::from(addr) & host_bits != 0 {
        let network = std::net::Ipv4Addr::from(u32::from(addr) & !host_bits);
        return Err(format!(
            "bits are set after the prefix (the network is `{network}/{len}`)"
        ));
    }
    Ok(())
}

/// Settings of the `daytona` provider: Daytona sandboxes created from a snapshot, reached
/// over SSH through Daytona's short-lived access tokens.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(transform = snake_case_aliases)]
pub struct DaytonaBlock {
    /// Daytona API base URL. Default `https://app.daytona.io/api`.
    /// Env `CRABBOX_DAYTONA_API_URL` or `DAYTONA_API_URL`, flag `--daytona-api-url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "apiUrl", alias = "api_url")]
    pub api_url: Option<String>,
    /// Daytona snapshot the sandbox is created from; required (it also sets the size).
    /// Env `CRABBOX_DAYTONA_SNAPSHOT` or `DAYTONA_SNAPSHOT`, flag `--daytona-snapshot`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Daytona target (region) to create the sandbox in. Default: the account's default.
    /// Env `CRABBOX_DAYTONA_TARGET` or `DAYTONA_TARGET`, flag `--daytona-target`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// User commands run as inside the sandbox. Default `daytona`.
    /// Env `CRABBOX_DAYTONA_USER`, flag `--daytona-user`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Directory the pond's files are synced into and commands run from.
    /// Default `/home/daytona/crabbox`.
    /// Env `CRABBOX_DAYTONA_WORK_ROOT`, flag `--daytona-work-root`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "workRoot", alias = "work_root")]
    pub work_root: Option<String>,
    /// SSH gateway host the access token logs in to. Default `ssh.app.daytona.io`.
    /// Env `CRABBOX_DAYTONA_SSH_GATEWAY_HOST`, flag `--daytona-ssh-gateway-host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "sshGatewayHost", alias = "ssh_gateway_host")]
    pub ssh_gateway_host: Option<String>,
    /// Lifetime of each SSH access token, in minutes. Default 30.
    /// Env `CRABBOX_DAYTONA_SSH_ACCESS_MINUTES`, flag `--daytona-ssh-access-minutes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "sshAccessMinutes", alias = "ssh_access_minutes")]
    pub ssh_access_minutes: Option<u32>,
    /// Path to the private key the SSH client presents. Default: a key generated once in the
    /// state dir (Daytona's gateway authenticates the access token, not the key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_key: Option<String>,
}

/// Settings of the `e2b` provider: E2B sandboxes, with commands run through E2B's process
/// API and ports reachable at `https://<port>-<id>.<domain>`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(transform = snake_case_aliases)]
pub struct E2bBlock {
    /// E2B control-plane API URL; HTTPS unless loopback. Default `https://api.e2b.app`.
    /// Env `CRABBOX_E2B_API_URL` or `E2B_API_URL`, flag `--e2b-api-url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "apiUrl", alias = "api_url")]
    pub api_url: Option<String>,
    /// Sandbox domain used for file, process and port URLs. Default `e2b.app`.
    /// Env `CRABBOX_E2B_DOMAIN` or `E2B_DOMAIN`, flag `--e2b-domain`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// E2B template the sandbox is created from (it also sets the size). Default `base`.
    /// Env `CRABBOX_E2B_TEMPLATE`, flag `--e2b-template`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Working directory; a relative path goes under `/home/<user>`. Default `crabbox`.
    /// Env `CRABBOX_E2B_WORKDIR`, flag `--e2b-workdir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// User commands run as inside the sandbox. Default: the template's user (`user`).
    /// Env `CRABBOX_E2B_USER`, flag `--e2b-user`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// Settings of the `modal` provider: Modal Sandboxes driven through the local `modal`
/// Python client.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(transform = snake_case_aliases)]
pub struct ModalBlock {
    /// Modal app the sandboxes belong to (created if missing). Default `crabbox`.
    /// Env `CRABBOX_MODAL_APP`, flag `--modal-app`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// Registry image of the sandbox. Default `python:3.13-slim`.
    /// Env `CRABBOX_MODAL_IMAGE`, flag `--modal-image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Absolute, dedicated working directory (not `/`, `/tmp`, `/home` or `/workspace`).
    /// Default `/workspace/crabbox`. Env `CRABBOX_MODAL_WORKDIR`, flag `--modal-workdir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Local Python interpreter that has the `modal` package. Default `python3`.
    /// Env `CRABBOX_MODAL_PYTHON`, flag `--modal-python`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<String>,
    /// Modal environment holding the app and secrets. Default: the profile's environment.
    /// Env `CRABBOX_MODAL_ENVIRONMENT`, flag `--modal-environment`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// Names (not values) of Modal Secrets injected into the sandbox. Default: none.
    /// Env `CRABBOX_MODAL_SECRETS` (comma-separated), flag `--modal-secret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<Vec<String>>,
    /// GPU of the sandbox as Modal names it, e.g. `T4`, `A10G`, `H100:2`. Default: the
    /// member's `class` (`large` → `A10G`, `beast` → `H100`; smaller classes: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<String>,
}

impl ModalBlock {
    /// The app when the block names none.
    pub const DEFAULT_APP: &'static str = "crabbox";
    /// The image when the block names none.
    pub const DEFAULT_IMAGE: &'static str = "python:3.13-slim";
    /// The workdir when the block names none.
    pub const DEFAULT_WORKDIR: &'static str = "/workspace/crabbox";

    /// Modal's `workdir` rule (Crabbox's): an absolute directory other than
    /// `/`, `/tmp`, `/home`, `/workspace` or a system directory, without `.`
    /// or `..`. Returns it trimmed, the default for `None`.
    ///
    /// # Errors
    /// A relative or broad path.
    pub fn checked_workdir(raw: Option<&str>) -> Result<String, BlockProblem> {
        let Some(raw) = raw else {
            return Ok(Self::DEFAULT_WORKDIR.to_owned());
        };
        let trimmed = raw.trim().trim_end_matches('/');
        match TensorlakeBlock::checked_workdir(Some(raw)) {
            Ok(dir) if trimmed != "/home" => Ok(dir),
            _ => Err(BlockProblem {
                field: "workdir".to_owned(),
                code: "modal-workdir",
                message: format!(
                    "Modal `workdir` `{raw}` must be an absolute directory other than /, /tmp, /home, /workspace or a system directory"
                ),
                hint: format!("e.g. {} (the default)", Self::DEFAULT_WORKDIR),
            }),
        }
    }

    /// Every value of this block Modal cannot use.
    #[must_use]
    pub fn problems(&self) -> Vec<BlockProblem> {
        let mut out: Vec<BlockProblem> = Self::checked_workdir(self.workdir.as_deref())
            .err()
            .into_iter()
            .collect();
        for (i, name) in self.secrets.iter().flatten().enumerate() {
            if name.trim().is_empty() {
                out.push(BlockProblem {
                    field: format!("secrets/{i}"),
                    code: "modal-secret",
                    message: "an empty Modal Secret name".to_owned(),
                    hint: "name a Secret of the app's environment, as `modal secret list` shows it"
                        .to_owned(),
                });
            }
        }
        out
    }
}

/// Settings of the `blacksmith-testbox` provider: Blacksmith Testboxes driven through the
/// authenticated `blacksmith` CLI (Crabbox's `blacksmith:` block).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(transform = snake_case_aliases)]
pub struct BlacksmithTestboxBlock {
    /// Blacksmith organization. Default: the CLI's current organization.
    /// Env `CRABBOX_BLACKSMITH_ORG`, flag `--blacksmith-org`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    /// Testbox workflow file, e.g. `.github/workflows/ci-check-testbox.yml`; required to
    /// create a Testbox. Env `CRABBOX_BLACKSMITH_WORKFLOW`, flag `--blacksmith-workflow`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    /// Job of the workflow to run. Default: the workflow's Testbox job.
    /// Env `CRABBOX_BLACKSMITH_JOB`, flag `--blacksmith-job`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Git ref the workflow runs at. Default: the repository's default branch.
    /// Env `CRABBOX_BLACKSMITH_REF`, flag `--blacksmith-ref`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    /// Idle time after which Blacksmith stops the Testbox, as a duration like `30m`.
    /// Default: the member's `idle_timeout`. Env `CRABBOX_BLACKSMITH_IDLE_TIMEOUT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "idleTimeout", alias = "idle_timeout")]
    pub idle_timeout: Option<String>,
    /// Pass `--debug` to the Blacksmith CLI. Default false. Env `CRABBOX_BLACKSMITH_DEBUG`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debug: Option<bool>,
}

/// The provider blocks written on one member (or in `defaults`), each optional. A member may
/// only write the block of its own provider; `defaults` may hold several.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ProviderBlocks {
    /// Settings of the embedded `local` provider (real processes on this machine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalBlock>,
    /// Settings of the static `ssh` provider: `{host, user, port, key, work_root}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<SshBlock>,
    /// Settings of the `hetzner` provider (Hetzner Cloud servers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hetzner: Option<HetznerBlock>,
    /// Settings of the `aws` provider (EC2 instances).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsBlock>,
    /// Settings of the `azure` provider (Azure virtual machines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<AzureBlock>,
    /// Settings of the `gcp` provider (Compute Engine VMs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcp: Option<GcpBlock>,
    /// Settings of the `islo` provider (Islo sandboxes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub islo: Option<IsloBlock>,
    /// Settings of the `tensorlake` provider (Tensorlake sandboxes via the CLI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tensorlake: Option<TensorlakeBlock>,
    /// Settings of the `daytona` provider (Daytona sandboxes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daytona: Option<DaytonaBlock>,
    /// Settings of the `e2b` provider (E2B sandboxes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e2b: Option<E2bBlock>,
    /// Settings of the `modal` provider (Modal Sandboxes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modal: Option<ModalBlock>,
    /// Settings of the `blacksmith-testbox` provider (Blacksmith Testboxes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "blacksmith-testbox")]
    pub blacksmith_testbox: Option<BlacksmithTestboxBlock>,
}

impl ProviderBlocks {
    /// The providers whose block is written, in [`ProviderName::ALL`] order.
    #[must_use]
    pub fn present(&self) -> Vec<ProviderName> {
        ProviderName::ALL
            .into_iter()
            .filter(|&p| match p {
                ProviderName::Local => self.local.is_some(),
                ProviderName::Ssh => self.ssh.is_some(),
                ProviderName::Hetzner => self.hetzner.is_some(),
                ProviderName::Aws => self.aws.is_some(),
                ProviderName::Azure => self.azure.is_some(),
                ProviderName::Gcp => self.gcp.is_some(),
                ProviderName::Islo => self.islo.is_some(),
                ProviderName::Tensorlake => self.tensorlake.is_some(),
                ProviderName::Daytona => self.daytona.is_some(),
                ProviderName::E2b => self.e2b.is_some(),
                ProviderName::Modal => self.modal.is_some(),
                ProviderName::BlacksmithTestbox => self.blacksmith_testbox.is_some(),
            })
            .collect()
    }

    /// These blocks (a member's) laid over `defaults`, field by field: a field set here wins,
    /// an unset one comes from the defaults' block; lists are replaced, never concatenated.
    #[must_use]
    pub fn merged_over(&self, defaults: &ProviderBlocks) -> ProviderBlocks {
        ProviderBlocks {
            local: overlay(self.local.as_ref(), defaults.local.as_ref()),
            ssh: overlay(self.ssh.as_ref(), defaults.ssh.as_ref()),
            hetzner: overlay(self.hetzner.as_ref(), defaults.hetzner.as_ref()),
            aws: overlay(self.aws.as_ref(), defaults.aws.as_ref()),
            azure: overlay(self.azure.as_ref(), defaults.azure.as_ref()),
            gcp: overlay(self.gcp.as_ref(), defaults.gcp.as_ref()),
            islo: overlay(self.islo.as_ref(), defaults.islo.as_ref()),
            tensorlake: overlay(self.tensorlake.as_ref(), defaults.tensorlake.as_ref()),
            daytona: overlay(self.daytona.as_ref(), defaults.daytona.as_ref()),
            e2b: overlay(self.e2b.as_ref(), defaults.e2b.as_ref()),
            modal: overlay(self.modal.as_ref(), defaults.modal.as_ref()),
            blacksmith_testbox: overlay(
                self.blacksmith_testbox.as_ref(),
                defaults.blacksmith_testbox.as_ref(),
            ),
        }
    }

    /// The block of provider `p` as a JSON object with only its set keys (for hashing and
    /// drift), or `None` when that block is not written.
    #[must_use]
    pub fn to_json(&self, p: ProviderName) -> Option<Value> {
        match p {
            ProviderName::Local => block_json(self.local.as_ref()),
            ProviderName::Ssh => block_json(self.ssh.as_ref()),
            ProviderName::Hetzner => block_json(self.hetzner.as_ref()),
            ProviderName::Aws => block_json(self.aws.as_ref()),
            ProviderName::Azure => block_json(self.azure.as_ref()),
            ProviderName::Gcp => block_json(self.gcp.as_ref()),
            ProviderName::Islo => block_json(self.islo.as_ref()),
            ProviderName::Tensorlake => block_json(self.tensorlake.as_ref()),
            ProviderName::Daytona => block_json(self.daytona.as_ref()),
            ProviderName::E2b => block_json(self.e2b.as_ref()),
            ProviderName::Modal => block_json(self.modal.as_ref()),
            ProviderName::BlacksmithTestbox => block_json(self.blacksmith_testbox.as_ref()),
        }
    }

    /// Every value in provider `p`'s block that `p` cannot use (the block's
    /// own rules; see [`BlockProblem`]).
    #[must_use]
    pub fn problems(&self, p: ProviderName) -> Vec<BlockProblem> {
        match p {
            ProviderName::Islo => self.islo.as_ref().map(IsloBlock::problems),
            ProviderName::Tensorlake => self.tensorlake.as_ref().map(TensorlakeBlock::problems),
            ProviderName::Aws => self.aws.as_ref().map(AwsBlock::problems),
            ProviderName::Azure => self.azure.as_ref().map(AzureBlock::problems),
            ProviderName::Daytona => self.daytona.as_ref().map(DaytonaBlock::problems),
            ProviderName::E2b => self.e2b.as_ref().map(E2bBlock::problems),
            ProviderName::Modal => self.modal.as_ref().map(ModalBlock::problems),
            // Required keys: a member without the block has problems too.
            ProviderName::BlacksmithTestbox => Some(
                self.blacksmith_testbox
                    .clone()
                    .unwrap_or_default()
                    .problems(),
            ),
            ProviderName::Gcp => self.gcp.as_ref().map(GcpBlock::problems),
            _ => None,
        }
        .unwrap_or_default()
    }

    /// A copy keeping only the block of provider `p` (how a member inherits from `defaults`).
    #[must_use]
    pub fn only(&self, p: ProviderName) -> ProviderBlocks {
        let mut out = ProviderBlocks::default();
        match p {
            ProviderName::Local => out.local.clone_from(&self.local),
            ProviderName::Ssh => out.ssh.clone_from(&self.ssh),
            ProviderName::Hetzner => out.hetzner.clone_from(&self.hetzner),
            ProviderName::Aws => out.aws.clone_from(&self.aws),
            ProviderName::Azure => out.azure.clone_from(&self.azure),
            ProviderName::Gcp => out.gcp.clone_from(&self.gcp),
            ProviderName::Islo => out.islo.clone_from(&self.islo),
            ProviderName::Tensorlake => out.tensorlake.clone_from(&self.tensorlake),
            ProviderName::Daytona => out.daytona.clone_from(&self.daytona),
            ProviderName::E2b => out.e2b.clone_from(&self.e2b),
            ProviderName::Modal => out.modal.clone_from(&self.modal),
            ProviderName::BlacksmithTestbox => {
                out.blacksmith_testbox.clone_from(&self.blacksmith_testbox);
            }
        }
        out
    }
}

/// `top`'s set fields over `base`'s, through JSON objects; `None` when neither block exists.
/// A `null` in `top` (only a non-finite float serializes so) does not hide `base`'s value.
fn overlay<T: Serialize + DeserializeOwned>(top: Option<&T>, base: Option<&T>) -> Option<T> {
    if top.is_none() && base.is_none() {
        return None;
    }
    let mut merged = object_of(base);
    for (key, value) in object_of(top) {
        if !value.is_null() {
            merged.insert(key, value);
        }
    }
    Some(
        serde_json::from_value(Value::Object(merged))
            .expect("every key and value came from serializing a block of this same type"),
    )
}

/// The set fields of a block as a JSON object; empty when the block is absent.
fn object_of<T: Serialize>(block: Option<&T>) -> Map<String, Value> {
    match block_json(block) {
        None => Map::new(),
        Some(Value::Object(map)) => map,
        Some(other) => unreachable!("provider blocks are structs, serialized as objects: {other}"),
    }
}

/// A block serialized to JSON, `None` when absent.
fn block_json<T: Serialize>(block: Option<&T>) -> Option<Value> {
    block.map(|b| {
        serde_json::to_value(b)
            .expect("provider blocks hold only strings, numbers, bools and lists of strings")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e2b_workdirs_go_under_the_users_home_and_are_never_broad() {
        assert_eq!(
            E2bBlock::checked_workdir(None, None).unwrap(),
            "/home/user/crabbox"
        );
        assert_eq!(
            E2bBlock::checked_workdir(Some("app/"), Some("dev")).unwrap(),
            "/home/dev/app"
        );
        assert_eq!(
            E2bBlock::checked_workdir(Some("/srv/app/"), None).unwrap(),
            "/srv/app"
        );
        for broad in ["/", "/tmp", "/home", "/home/user", "../x", "/etc/"] {
            assert!(
                E2bBlock::checked_workdir(Some(broad), None).is_err(),
                "{broad}"
            );
        }
    }

    #[test]
    fn daytona_work_roots_are_absolute_and_tokens_live_a_minute_at_least() {
        let block = DaytonaBlock {
            work_root: Some("crabbox".into()),
            ssh_access_minutes: Some(0),
            ..DaytonaBlock::default()
        };
        let fields: Vec<String> = block.problems().into_iter().map(|p| p.field).collect();
        assert_eq!(fields, ["workRoot", "sshAccessMinutes"]);
        assert!(DaytonaBlock::default().problems().is_empty());
    }

    #[test]
    fn overlay_keeps_member_values_and_fills_from_defaults() {
        let member = ProviderBlocks {
            islo: Some(IsloBlock {
                image: Some("docker.io/library/ubuntu:26.04".into()),
                vcpus: Some(4),
                ..IsloBlock::default()
            }),
            ..ProviderBlocks::default()
        };
        let defaults = ProviderBlocks {
            islo: Some(IsloBlock {
                vcpus: Some(2),
                memory_mb: Some(8192),
                ..IsloBlock::default()
            }),
            hetzner: Some(HetznerBlock {
                location: Some("nbg1".into()),
                ..HetznerBlock::default()
            }),
            ..ProviderBlocks::default()
        };
        let merged = member.merged_over(&defaults);
        assert_eq!(
            merged.islo,
            Some(IsloBlock {
                image: Some("docker.io/library/ubuntu:26.04".into()),
                vcpus: Some(4),
                memory_mb: Some(8192),
                ..IsloBlock::default()
            })
        );
        assert_eq!(merged.hetzner, defaults.hetzner);
        assert_eq!(
            merged.present(),
            vec![ProviderName::Hetzner, ProviderName::Islo]
        );
        assert_eq!(
            merged.only(ProviderName::Islo).present(),
            vec![ProviderName::Islo]
        );
        assert_eq!(
            merged.to_json(ProviderName::Islo),
            Some(serde_json::json!({
                "image": "docker.io/library/ubuntu:26.04",
                "vcpus": 4,
                "memoryMB": 8192
            }))
        );
        assert_eq!(merged.to_json(ProviderName::Aws), None);
    }

    #[test]
    fn unknown_key_in_a_block_is_rejected() {
        let err = serde_json::from_str::<IsloBlock>(r#"{"memoryMb": 4096}"#)
            .expect_err("memoryMb is not an Islo key");
        assert!(
            err.to_string().contains("unknown field `memoryMb`"),
            "{err}"
        );
        let ok: AwsBlock =
            serde_json::from_str(r#"{"sshCIDRs": ["10.0.0.0/8"], "ssh_port": 22, "rootGB": 100}"#)
                .expect("known keys");
        assert_eq!(ok.ssh_port, Some(22));
        let err = serde_json::from_str::<ProviderBlocks>(r#"{"ssh": {"workRoot": "/w"}}"#)
            .expect_err("the static ssh block takes work_root");
        assert!(
            err.to_string().contains("unknown field `workRoot`"),
            "{err}"
        );
    }

    #[test]
    fn aws_block_takes_the_new_keys_in_their_spellings() {
        let block: AwsBlock = serde_json::from_str(
            r#"{"market": "on-demand", "on_demand_fallback": true, "key_name": "ci",
                "private_ip": true, "target": "linux", "ssh_host": "127.0.0.1",
                "ssh_port": 2022, "ssh_user": "ubuntu", "ssh_key": "/k",
                "root_gb": 30, "ssh_cidrs": ["10.0.0.0/8"]}"#,
        )
        .expect("every key is known");
        assert_eq!(block.market, Some(AwsMarket::OnDemand));
        assert_eq!(block.on_demand_fallback, Some(true));
        assert_eq!(block.key_name.as_deref(), Some("ci"));
        assert_eq!(block.private_ip, Some(true));
        assert_eq!(block.target, Some(AwsTarget::Linux));
        assert_eq!(block.ssh_host.as_deref(), Some("127.0.0.1"));
        assert_eq!(block.root_gb, Some(30));
        assert!(block.problems().is_empty(), "{:?}", block.problems());
        assert_eq!(AwsMarket::default(), AwsMarket::Spot);
        let err = serde_json::from_str::<AwsBlock>(r#"{"market": "reserved"}"#)
            .expect_err("not a market");
        assert!(err.to_string().contains("on-demand"), "{err}");
    }

    #[test]
    fn aws_block_refuses_other_targets_bad_cidrs_and_tiny_disks() {
        for target in [AwsTarget::Windows, AwsTarget::Wsl2, AwsTarget::Macos] {
            let block = AwsBlock {
                target: Some(target),
                ..AwsBlock::default()
            };
            let problems = block.problems();
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert_eq!(problems[0].code, "aws-target");
            assert_eq!(problems[0].field, "target");
            assert!(
                problems[0].message.contains(target.as_str()),
                "{problems:?}"
            );
        }
        let block = AwsBlock {
            ssh_cidrs: Some(
                [
                    "203.0.113.7/32",
                    "0.0.0.0/0",
                    "10.0.0.0/8",
                    "203.0.113.7",
                    "10.0.0.1/8",
                    "2001:db8::/32",
                    "10.0.0.0/33",
                    "example.com/24",
                    "10.0.0.0/+8",
                ]
                .map(str::to_owned)
                .to_vec(),
            ),
            root_gb: Some(7),
            ..AwsBlock::default()
        };
        let problems = block.problems();
        let fields: Vec<(&str, &str)> = problems
            .iter()
            .map(|p| (p.field.as_str(), p.code))
            .collect();
        assert_eq!(
            fields,
            [
                ("sshCIDRs/3", "aws-ssh-cidr"),
                ("sshCIDRs/4", "aws-ssh-cidr"),
                ("sshCIDRs/5", "aws-ssh-cidr"),
                ("sshCIDRs/6", "aws-ssh-cidr"),
                ("sshCIDRs/7", "aws-ssh-cidr"),
                ("sshCIDRs/8", "aws-ssh-cidr"),
                ("rootGB", "aws-root-gb"),
            ]
        );
        assert!(problems[1].message.contains("`10.0.0.0/8`"), "{problems:?}");
        assert!(problems[2].message.contains("IPv6"), "{problems:?}");
        let eight = AwsBlock {
            root_gb: Some(8),
            ..AwsBlock::default()
        };
        assert!(eight.problems().is_empty());
        let merged = ProviderBlocks {
            aws: Some(block),
            ..ProviderBlocks::default()
        };
        assert_eq!(merged.problems(ProviderName::Aws).len(), 7);
    }

    #[test]
    fn provider_name_round_trips() {
        let name: ProviderName =
            serde_json::from_str(r#""blacksmith-testbox""#).expect("canonical name");
        assert_eq!(name, ProviderName::BlacksmithTestbox);
        assert_eq!(name.to_string(), "blacksmith-testbox");
        for p in ProviderName::ALL {
            let json = serde_json::to_string(&p).expect("serializes");
            assert_eq!(json, format!("\"{}\"", p.as_str()));
            assert_eq!(ProviderName::from_name(p.as_str()), Some(p));
        }
        assert_eq!(ProviderName::from_name("blacksmith"), None);
    }

    #[test]
    fn all_has_twelve_distinct_names() {
        let names: std::collections::BTreeSet<&str> =
            ProviderName::ALL.iter().map(|p| p.as_str()).collect();
        assert_eq!(names.len(), 12);
        let blocks: serde_json::Value = serde_json::from_str(
            r#"{"local":{},"ssh":{},"hetzner":{},"aws":{},"azure":{},"gcp":{},"islo":{},
                "tensorlake":{},"daytona":{},"e2b":{},"modal":{},"blacksmith-testbox":{}}"#,
        )
        .expect("valid JSON");
        let blocks: ProviderBlocks = serde_json::from_value(blocks).expect("every block key");
        assert_eq!(blocks.present(), ProviderName::ALL.to_vec());
    }

    #[test]
    fn schema_carries_descriptions_and_closes_blocks() {
        let schema = serde_json::to_value(schemars::schema_for!(IsloBlock)).expect("schema");
        assert_eq!(schema["additionalProperties"], serde_json::json!(false));
        let memory = schema["properties"]["memoryMB"]["description"]
            .as_str()
            .expect("memoryMB has a description");
        assert!(memory.contains("CRABBOX_ISLO_MEMORY_MB"), "{memory}");
    }
}
