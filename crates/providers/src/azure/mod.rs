//! The `azure` provider: Linux virtual machines crabbox creates itself and
//! reaches over SSH — the compute API of an SSH-lease cloud (Azure Resource
//! Manager, [`arm`]) on the shared [`crate::ssh_lease`] machinery (lease
//! keys, endpoint records, Crabbox's cloud-init, boot and SSH waits, SSH
//! targets).
//!
//! - **Credentials** ([`credentials`]): Microsoft's `azure_identity`
//!   (service principal secret, workload identity, managed identity, Azure
//!   CLI), made at the first call; the provider is enabled on cheap
//!   signals. A missing or refused credential is exit 3 naming what to set.
//! - **Shared network** ([`infra`]): resource group `crabbox-leases`,
//!   `crabbox-vnet`/`crabbox-subnet`, `crabbox-nsg` (SSH from
//!   `azure.sshCIDRs`), adopted when tagged `managed_by=crabbox`, created
//!   once when missing, refused untouched when a resource of that name
//!   lacks the tag; made sure of once per process for each member layout.
//! - **Create**: public IP `<name>-pip`, NIC `<name>-nic`, then the VM with
//!   Crabbox's cloud-init in `customData` and the lease key for user
//!   `crabbox`; every label is a tag of the IP, the NIC and the VM in their
//!   create requests. The class's sizes are tried in order, spot then
//!   (with `azure.regular_fallback`) regular, on capacity refusals
//!   ([`capacity`]); an exact `type` is tried alone. A create that fails
//!   deletes what it made.
//! - **Discovery** lists the VMs of every resource group crabbox may have
//!   used (all pages) and keeps those tagged `crabbox=true` and the pond;
//!   addresses come from one listing of the public IPs.
//! - **Release** reads the VM afresh and deletes it only with crabbox's
//!   tags for the lease, then the NIC and the IP (each only with those
//!   tags), then the OS disk the VM named — each delete followed by its
//!   operation alone, never by a read of what was deleted.
//! - **Sweep** deletes this pond's NICs and IPs whose lease has no VM (a
//!   create killed between them) and the key directories of leases
//!   without a VM.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use serde_json::{Value, json};

pub mod arm;
pub mod capacity;
pub mod credentials;
pub mod infra;
pub mod settings;
mod transport;

use arm::{Arm, Kind, tags};
use crabbox_core::labels::{self, Labels};
use crabbox_core::lease::{Endpoint, Lease, is_lease_id};
use crabbox_core::provider::{ProviderError, ProviderName};
use crabbox_exec::session::{Session, SshSession, SshTargets};
use crabbox_exec::ssh::SshTarget;
use crabbox_spec::model::Class;
use crabbox_spec::providers::{AzureBlock, AzureOsDisk, AzurePriority, AzureTarget};
use crabbox_state::claims::ClaimStore;
use settings::Settings;

use crate::registry::Descriptor;
use crate::ssh_lease::Lazy;
use crate::ssh_lease::boot::Seen;
use crate::ssh_lease::endpoint::EndpointRecord;
use crate::ssh_lease::sightings::Sightings;
use crate::ssh_lease::{
    SshLeases, SshSettings, carries_lease_labels, check_lease_id, check_pond, keeps_lease_labels,
    names,
};
use crate::tailnet::enroll::Enrollment;
use crate::{CreateRequest, Provider};

/// Tag naming the resource group of a lease (a member's own
/// `azure.resourceGroup`): where relabel and release find it.
pub const GROUP_TAG: &str = "azure_resource_group";

/// Tags crabbox puts on a VM at create besides the lease's labels: a
/// relabel keeps them.
const LAUNCH_TAGS: [&str; 3] = [labels::SERVER_TYPE, "market", GROUP_TAG];

/// Class when the member names neither class nor type (as for Hetzner and AWS).
const DEFAULT_CLASS: Class = Class::Standard;

/// The `azure` adapter in the registry's table.
pub const DESCRIPTOR: Descriptor = Descriptor {
    name: ProviderName::Azure,
    build: |dir, claims| {
        AzureProvider::from_env(dir)
            .map(|p| Arc::new(p.with_claims(claims.clone())) as Arc<dyn Provider>)
    },
    credentials: Some(credentials::CREDENTIALS),
    help: credentials::HELP,
    transport_refusal: None,
};

/// A VM as crabbox reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vm {
    /// Its name (Crabbox's `crabbox-<slug>-<hex>`).
    pub name: String,
    /// Its tags.
    pub tags: Labels,
    /// `properties.provisioningState`.
    pub state: String,
    /// `properties.hardwareProfile.vmSize`.
    pub size: String,
    /// The name of its managed OS disk, when it has one.
    pub os_disk: Option<String>,
}

impl Vm {
    /// Reads a VM resource.
    #[must_use]
    pub fn from_json(v: &Value) -> Option<Self> {
        let text = |p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_owned);
        Some(Self {
            name: text("/name")?,
            tags: tags(v),
            state: arm::provisioning_state(v).unwrap_or_default(),
            size: text("/properties/hardwareProfile/vmSize").unwrap_or_default(),
            os_disk: text("/properties/storageProfile/osDisk/managedDisk/id")
                .and_then(|id| id.rsplit('/').next().map(str::to_owned))
                .or_else(|| text("/properties/storageProfile/osDisk/name"))
                .filter(|n| !n.is_empty()),
        })
    }
}

/// The `azure` provider.
#[derive(Debug)]
pub struct AzureProvider {
    leases: SshLeases,
    /// The ARM client, made (credential, subscription) at its first use.
    arm: Lazy<Arm>,
    /// Shared networks made sure of in this process, by layout and SSH ranges.
    shared: Mutex<HashMap<String, Lazy<infra::Shared>>>,
    /// VM name → the VM as last seen (its tags).
    sightings: Sightings<String, Vm>,
    /// The command's claims: where members' own resource groups are read from.
    claims: ClaimStore,
}

impl AzureProvider {
    /// The provider when the environment holds Azure credentials or a
    /// subscription ([`credentials::configured`]).
    #[must_use]
    pub fn from_env(state_dir: &Path) -> Option<Self> {
        credentials::configured_here().map(|_| Self::new(state_dir))
    }

    /// A provider keeping its records under `<state_dir>/ssh/keys/`.
    #[must_use]
    pub fn new(state_dir: &Path) -> Self {
        Self {
            leases: SshLeases::new(
                "azure",
                "the Azure portal (the VM's Boot diagnostics › Serial log)",
                state_dir,
            ),
            arm: Lazy::default(),
            shared: Mutex::new(HashMap::new()),
            sightings: Sightings::default(),
            claims: ClaimStore::local(state_dir),
        }
    }

    /// Reads the resource groups members used from `claims`.
    #[must_use]
    pub fn with_claims(mut self, claims: ClaimStore) -> Self {
        self.claims = claims;
        self
    }

    /// The ARM client, made at the first call: the credential the
    /// environment selects, and the subscription.
    async fn arm(&self) -> Result<Arm, ProviderError> {
        self.arm
            .get_or_try_init(|| async {
                let env: HashMap<String, String> = std::env::vars().collect();
                let source = credentials::source(&env)?;
                let http = reqwest::Client::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .map_err(|e| ProviderError::Failed(format!("azure: HTTP client: {e}")))?;
                let credential = credentials::credential(&source, &env, http.clone())?;
                let subscription = credentials::subscription(&env).await?;
                let endpoint = env
                    .get(arm::ENDPOINT_ENV)
                    .map(|e| e.trim())
                    .filter(|e| !e.is_empty())
                    .unwrap_or(arm::DEFAULT_ENDPOINT);
                Ok(Arm::new(http, endpoint, &subscription, credential, source))
            })
            .await
            .cloned()
    }

    /// Every resource group crabbox may have leased in: the default one,
    /// then each a claim of an `azure` lease names.
    async fn groups(&self) -> Result<Vec<String>, ProviderError> {
        let env: HashMap<String, String> = std::env::vars().collect();
        let default = Settings::default_resource_group(&env);
        let claims = self.claims.load_all().await.map_err(ProviderError::state)?;
        let named: BTreeSet<String> = claims
            .0
            .iter()
            .filter(|c| c.provider == ProviderName::Azure.as_str())
            .filter_map(|c| c.labels.get(GROUP_TAG))
            .filter(|g| !g.is_empty() && **g != default)
            .map(ToString::to_string)
            .collect();
        let mut out = vec![default];
        out.extend(named);
        Ok(out)
    }

    /// The resource group a lease lives in.
    fn group_of(lease: &Lease) -> String {
        lease.label(GROUP_TAG).map_or_else(
            || Settings::default_resource_group(&std::env::vars().collect()),
            str::to_owned,
        )
    }

    /// Every VM tagged `crabbox=true` (and `pond`, when given) in every
    /// group, with the group, all pages.
    async fn vms(&self, pond: Option<&str>) -> Result<Vec<(String, Vm)>, ProviderError> {
        let arm = self.arm().await?;
        let groups = self.groups().await?;
        let listed = futures_util::future::try_join_all(groups.iter().map(|g| {
            let arm = &arm;
            async move {
                let vms = arm
                    .list(&arm.collection(g, Kind::Vm))
                    .await
                    .map_err(|e| arm::doing(e, "listing virtual machines"))?;
                Ok::<_, ProviderError>(
                    vms.iter()
                        .filter_map(Vm::from_json)
                        .map(|vm| (g.clone(), vm))
                        .collect::<Vec<_>>(),
                )
            }
        }))
        .await?;
        Ok(listed
            .into_iter()
            .flatten()
            .filter(|(_, vm)| {
                vm.tags.get(labels::CRABBOX).map(|v| v.as_str()) == Some("true")
                    && pond.is_none_or(|p| vm.tags.get(labels::POND).map(|v| v.as_str()) == Some(p))
            })
            .collect())
    }

    /// Public (or, for private members, NIC) addresses of the VMs of
    /// `groups`, by VM name: one listing of each group's IPs.
    async fn addresses(
        &self,
        groups: &BTreeSet<String>,
    ) -> Result<HashMap<String, String>, ProviderError> {
        let arm = self.arm().await?;
        let mut out = HashMap::new();
        for g in groups {
            for pip in arm
                .list(&arm.collection(g, Kind::PublicIp))
                .await
                .map_err(|e| arm::doing(e, "listing public IP addresses"))?
            {
                if let (Some(name), Some(ip)) = (
                    pip.get("name").and_then(Value::as_str),
                    pip.pointer("/properties/ipAddress").and_then(Value::as_str),
                ) && let Some(vm) = name.strip_suffix("-pip")
                {
                    out.insert(vm.to_owned(), ip.to_owned());
                }
            }
        }
        Ok(out)
    }

    fn saw(&self, vm: &Vm) {
        self.sightings.saw(vm.name.clone(), vm.clone());
    }

    /// The lease a VM stands for.
    fn lease_of(
        &self,
        vm: Vm,
        address: Option<String>,
        ports: &HashMap<String, u16>,
    ) -> Option<Lease> {
        let id = vm.tags.get(labels::LEASE)?.clone();
        let port = self.leases.port_of(&id, ports);
        let host = is_lease_id(&id)
            .then(|| self.leases.read_endpoint(&id))
            .flatten()
            .and_then(|r| r.host)
            .or(address);
        Some(Lease {
            id: id.into(),
            provider: ProviderName::Azure,
            cloud_id: vm.name,
            labels: vm.tags,
            endpoint: Endpoint {
                host,
                ssh_port: Some(port),
                url: None,
                shares: Vec::new(),
            },
            listed: true,
            claimed: false,
        })
    }

    /// The VM if it carries crabbox's tags for this lease; else why not.
    async fn owned_vm(&self, arm: &Arm, group: &str, lease: &Lease) -> Result<Vm, ProviderError> {
        let vm = arm
            .get(&arm.resource(group, Kind::Vm, &lease.cloud_id))
            .await
            .map_err(|e| arm::doing(e, "reading the virtual machine"))?
            .as_ref()
            .and_then(Vm::from_json)
            .ok_or_else(|| {
                self.sightings.forget(&lease.cloud_id);
                ProviderError::NotFound(format!(
                    "azure virtual machine {} (lease {})",
                    lease.cloud_id, lease.id
                ))
            })?;
        self.saw(&vm);
        check_owned(&vm.name, &vm.tags, &lease.id, lease.label(labels::POND))?;
        Ok(vm)
    }

    /// The shared network of a member, made sure of once per process for
    /// each layout and SSH ranges.
    async fn shared(
        &self,
        arm: &Arm,
        settings: &Settings,
        ports: &[u16],
    ) -> Result<infra::Shared, ProviderError> {
        let key = format!(
            "{} {} {} {} {} {:?} {ports:?}",
            settings.resource_group,
            settings.location,
            settings.vnet,
            settings.subnet,
            settings.nsg,
            settings.ssh_cidrs
        );
        let cell = self
            .shared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key)
            .or_default()
            .clone();
        cell.get_or_try_init(|| async {
            let cidrs = ssh_cidrs(&settings.ssh_cidrs).await?;
            infra::ensure(arm, settings, &cidrs, ports).await
        })
        .await
        .cloned()
    }

    /// Waits until the lease's address is there (and the VM provisioned).
    async fn wait_address(
        &self,
        arm: &Arm,
        group: &str,
        name: &str,
        private: bool,
    ) -> Result<String, ProviderError> {
        let resource = if private {
            arm.resource(group, Kind::Nic, &format!("{name}-nic"))
        } else {
            arm.resource(group, Kind::PublicIp, &format!("{name}-pip"))
        };
        let pointer = if private {
            "/properties/ipConfigurations/0/properties/privateIPAddress"
        } else {
            "/properties/ipAddress"
        };
        self.leases
            .until_running(&format!("azure virtual machine {name}"), || async {
                match arm.get(&resource).await {
                    Ok(Some(r)) => Ok(match r.pointer(pointer).and_then(Value::as_str) {
                        Some(ip) if !ip.is_empty() => Seen::Ready(ip.to_owned()),
                        _ => Seen::Booting {
                            last: format!("{} has no address yet", resource.what),
                            nearly: true,
                        },
                    }),
                    Ok(None) => Err(ProviderError::Failed(format!(
                        "azure {} disappeared while the VM booted",
                        resource.what
                    ))),
                    Err(e) => match e.error {
                        ProviderError::Retryable {
                            message,
                            retry_after,
                        } => Ok(Seen::Retry {
                            last: message,
                            after: retry_after.unwrap_or_default(),
                        }),
                        other => Err(other),
                    },
                }
            })
            .await
    }

    /// Deletes a lease's resources in Crabbox's order — VM, NIC, IP, OS
    /// disk — each only when it carries crabbox's tags for the lease (the
    /// disk: the one the owned VM named), each delete followed by its
    /// operation only. Absent resources are skipped. Returns whether the
    /// VM existed.
    async fn delete_lease_resources(
        &self,
        arm: &Arm,
        group: &str,
        name: &str,
        lease_id: &str,
        pond: Option<&str>,
    ) -> Result<bool, ProviderError> {
        let vm_resource = arm.resource(group, Kind::Vm, name);
        let vm = arm
            .get(&vm_resource)
            .await
            .map_err(|e| arm::doing(e, "reading the virtual machine"))?
            .as_ref()
            .and_then(Vm::from_json);
        let existed = vm.is_some();
        let mut disk = None;
        if let Some(vm) = vm {
            check_owned(&vm.name, &vm.tags, lease_id, pond)?;
            disk = vm.os_disk.clone();
            arm.delete(&vm_resource, &[("forceDeletion", "true")])
                .await
                .map_err(|e| arm::doing(e, "deleting the virtual machine"))?;
            self.sightings.forget(&vm.name);
        }
        for kind in [Kind::Nic, Kind::PublicIp] {
            let suffix = if kind == Kind::Nic { "nic" } else { "pip" };
            let r = arm.resource(group, kind, &format!("{name}-{suffix}"));
            let Some(found) = arm
                .get(&r)
                .await
                .map_err(|e| arm::doing(e, &format!("reading the {}", kind.noun())))?
            else {
                continue;
            };
            let found_name = found["name"].as_str().unwrap_or_default().to_owned();
            check_owned(&found_name, &tags(&found), lease_id, pond)?;
            arm.delete(&r, &[])
                .await
                .map_err(|e| arm::doing(e, &format!("deleting the {}", kind.noun())))?;
        }
        if let Some(disk) = disk {
            arm.delete(&arm.resource(group, Kind::Disk, &disk), &[])
                .await
                .map_err(|e| arm::doing(e, "deleting the OS disk"))?;
        }
        Ok(existed)
    }

    /// Best-effort undo of a create that did not finish: its resources
    /// (only crabbox's for the lease) and its local files.
    async fn roll_back(&self, arm: &Arm, group: &str, name: &str, request: &CreateRequest) {
        self.leases.drop_target(&request.lease_id).await;
        if let Err(e) = self
            .delete_lease_resources(arm, group, name, &request.lease_id, Some(&request.pond))
            .await
        {
            eprintln!(
                "azure: {}: rolling back lease {} left resources behind ({e}); the pond's next sweep retries",
                request.member.slug, request.lease_id
            );
        }
        let _ = self.leases.remove_key_dir(&request.lease_id);
    }

    async fn create_lease(
        &self,
        request: &CreateRequest,
        block: &AzureBlock,
        tailnet: Option<&Enrollment>,
    ) -> Result<Lease, ProviderError> {
        let env: HashMap<String, String> = std::env::vars().collect();
        let settings = Settings::resolve(block, &env)?;
        let arm = self.arm().await?;
        let ssh = SshSettings::from_block(
            block.ssh_user.as_deref(),
            block.ssh_port,
            block.ssh_key.as_deref(),
        );
        let group = settings.resource_group.clone();
        let name = names::server_name(&request.member.slug, &request.lease_id);
        let mut prepared = self.leases.prepare(request, &ssh)?;
        let ports = self.leases.port_candidates(ssh.port);
        let shared = self.shared(&arm, &settings, &ports).await;
        if let Err(e) = prepared.written().await {
            let _ = self.leases.remove_key_dir(&request.lease_id);
            return Err(ProviderError::Failed(e));
        }
        let shared = match shared {
            Ok(s) => s,
            Err(e) => {
                let _ = self.leases.remove_key_dir(&request.lease_id);
                return Err(e);
            }
        };
        let user_data = self.leases.user_data(&ssh, &prepared.key.public, tailnet);
        let made = async {
            // A VM an earlier attempt made for this lease (its answer lost)
            // is adopted, never made twice.
            if let Some(vm) = arm
                .get(&arm.resource(&group, Kind::Vm, &name))
                .await
                .map_err(|e| arm::doing(e, "reading the virtual machine"))?
                .as_ref()
                .and_then(Vm::from_json)
                && vm.state == "Succeeded"
                && carries_lease_labels(
                    |k| vm.tags.get(k).map(|v| v.as_str()),
                    &request.lease_id,
                    Some(&request.pond),
                )
            {
                eprintln!(
                    "azure: {}: adopting virtual machine {name} made for lease {} by an earlier attempt",
                    request.member.slug, request.lease_id
                );
                return Ok(vm);
            }
            let plan = VmPlan {
                request,
                settings: &settings,
                shared: &shared,
                group: &group,
                name: &name,
                user: &ssh.user,
                public_key: &prepared.key.public,
                user_data: &user_data,
            };
            plan.make(&arm, self).await
        }
        .await;
        let vm = match made {
            Ok(vm) => vm,
            Err(e) => {
                self.roll_back(&arm, &group, &name, request).await;
                return Err(e);
            }
        };
        self.saw(&vm);
        match self
            .bootstrap(&arm, request, &settings, vm, &prepared.record)
            .await
        {
            Ok(lease) => Ok(lease),
            Err(e) => {
                self.roll_back(&arm, &group, &name, request).await;
                Err(e)
            }
        }
    }

    /// After the VM exists: its address, SSH, the work root.
    async fn bootstrap(
        &self,
        arm: &Arm,
        request: &CreateRequest,
        settings: &Settings,
        vm: Vm,
        record: &EndpointRecord,
    ) -> Result<Lease, ProviderError> {
        let address = self
            .wait_address(arm, &settings.resource_group, &vm.name, settings.private)
            .await?;
        let private;
        let record = if settings.private && record.host.is_none() {
            private = EndpointRecord {
                host: Some(address.clone()),
                ..record.clone()
            };
            self.leases.rewrite(&private)?;
            &private
        } else {
            record
        };
        self.leases
            .connect(&request.lease_id, address.clone(), record)
            .await?;
        let name = vm.name.clone();
        let mut lease = self
            .lease_of(vm, Some(address.clone()), &HashMap::new())
            .ok_or_else(|| {
                ProviderError::Failed(format!(
                    "azure virtual machine {name} came back without its `lease` tag"
                ))
            })?;
        lease.endpoint.host = Some(record.host.clone().unwrap_or(address));
        Ok(lease)
    }
}

/// Everything one VM create needs.
struct VmPlan<'a> {
    request: &'a CreateRequest,
    settings: &'a Settings,
    shared: &'a infra::Shared,
    group: &'a str,
    name: &'a str,
    user: &'a str,
    public_key: &'a str,
    user_data: &'a str,
}

impl VmPlan<'_> {
    /// The tags of the lease's IP and NIC: its labels and its group.
    fn network_tags(&self) -> Labels {
        let mut t = self.request.labels.clone();
        t.insert(GROUP_TAG.into(), labels::sanitize(self.group));
        t
    }

    /// The IP, the NIC, then the VM: the class's sizes in order, spot
    /// then regular, while Azure refuses for capacity; a VM a refused try
    /// left behind (failed provisioning) is deleted before the next.
    async fn make(&self, arm: &Arm, provider: &AzureProvider) -> Result<Vm, ProviderError> {
        let s = self.settings;
        let slug = &self.request.member.slug;
        let pip = arm
            .put(
                &arm.resource(self.group, Kind::PublicIp, &format!("{}-pip", self.name)),
                &json!({
                    "location": s.location,
                    "tags": self.network_tags(),
                    "sku": {"name": "Standard"},
                    "properties": {"publicIPAllocationMethod": "Static"},
                }),
            )
            .await
            .map_err(|e| arm::doing(e, "creating the public IP address"))?;
        let pip_id = pip["id"].as_str().unwrap_or_default().to_owned();
        let nic = arm
            .put(
                &arm.resource(self.group, Kind::Nic, &format!("{}-nic", self.name)),
                &json!({
                    "location": s.location,
                    "tags": self.network_tags(),
                    "properties": {
                        "ipConfigurations": [{
                            "name": "ipconfig",
                            "properties": {
                                "privateIPAllocationMethod": "Dynamic",
                                "subnet": {"id": self.shared.subnet_id},
                                "publicIPAddress": {"id": pip_id},
                            },
                        }],
                        "networkSecurityGroup": {"id": self.shared.nsg_id},
                    },
                }),
            )
            .await
            .map_err(|e| arm::doing(e, "creating the network interface"))?;
        let nic_id = nic["id"].as_str().unwrap_or_default().to_owned();
        let sizes = match self
            .request
            .member
            .server_type
            .as_deref()
            .filter(|t| !t.is_empty())
        {
            Some(t) => vec![t.to_owned()],
            None => capacity::class_sizes(self.request.member.class.unwrap_or(DEFAULT_CLASS))
                .iter()
                .map(|t| (*t).to_owned())
                .collect(),
        };
        let exact = self.request.member.server_type.is_some();
        let vm_resource = arm.resource(self.group, Kind::Vm, self.name);
        let mut refused = Vec::new();
        let mut attempts = capacity::attempts(&sizes, s.priority, s.regular_fallback);
        while let Some(attempt) = attempts.pop_front() {
            eprintln!(
                "azure: {slug}: creating {} ({attempt}) in {}",
                self.name, s.location
            );
            match arm
                .put(&vm_resource, &self.vm_body(&attempt, &nic_id))
                .await
            {
                Ok(v) => {
                    let vm = Vm::from_json(&v).ok_or_else(|| {
                        ProviderError::Failed(format!("azure: {}: unexpected VM answer", self.name))
                    })?;
                    eprintln!("azure: {slug}: created {} ({attempt})", self.name);
                    return Ok(vm);
                }
                Err(e) if capacity::is_capacity(e.code.as_deref()) => {
                    eprintln!("azure: {slug}: {attempt} refused: {}", e.message);
                    refused.push(format!("{attempt}: {}", e.message));
                    // A failed allocation leaves the VM in `Failed`: gone
                    // before the next size is asked for under its name
                    // (after the last, the rollback deletes it).
                    if !attempts.is_empty() {
                        provider
                            .delete_vm_only(arm, self.group, self.name, self.request)
                            .await?;
                    }
                }
                Err(e) => return Err(arm::doing(e, "creating the virtual machine")),
            }
        }
        Err(ProviderError::Failed(if exact {
            format!(
                "azure: VM size `{}` could not be had in {} ({}); it is pinned by the member's `type` and never falls back — use a `class` to allow other sizes",
                sizes[0],
                s.location,
                refused.join("; ")
            )
        } else {
            format!(
                "azure: no VM size of class `{}` could be had in {}: {}",
                self.request.member.class.unwrap_or(DEFAULT_CLASS).as_str(),
                s.location,
                refused.join("; ")
            )
        }))
    }

    /// The VM create request of one try.
    fn vm_body(&self, attempt: &capacity::Attempt, nic_id: &str) -> Value {
        let s = self.settings;
        let mut tags = self.network_tags();
        tags.insert(labels::SERVER_TYPE.into(), labels::sanitize(&attempt.size));
        tags.insert("market".into(), attempt.market().into());
        let os_disk = match s.os_disk {
            AzureOsDisk::Managed => json!({
                "name": format!("{}-osdisk", self.name),
                "createOption": "FromImage",
                "caching": "ReadWrite",
                "managedDisk": {"storageAccountType": "StandardSSD_LRS"},
            }),
            AzureOsDisk::Ephemeral => json!({
                "name": format!("{}-osdisk", self.name),
                "createOption": "FromImage",
                "caching": "ReadOnly",
                "diffDiskSettings": {"option": "Local"},
            }),
        };
        let [publisher, offer, sku, version] = &s.image;
        let mut properties = json!({
            "hardwareProfile": {"vmSize": attempt.size},
            "storageProfile": {
                "imageReference": {"publisher": publisher, "offer": offer, "sku": sku, "version": version},
                "osDisk": os_disk,
            },
            "osProfile": {
                "computerName": self.name,
                "adminUsername": self.user,
                "customData": base64::engine::general_purpose::STANDARD.encode(self.user_data),
                "linuxConfiguration": {
                    "disablePasswordAuthentication": true,
                    "ssh": {"publicKeys": [{
                        "path": format!("/home/{}/.ssh/authorized_keys", self.user),
                        "keyData": self.public_key,
                    }]},
                },
            },
            "networkProfile": {"networkInterfaces": [{"id": nic_id}]},
        });
        if attempt.priority == AzurePriority::Spot {
            properties["priority"] = json!("Spot");
            properties["evictionPolicy"] = json!("Delete");
            properties["billingProfile"] = json!({"maxPrice": -1});
        }
        json!({"location": s.location, "tags": tags, "properties": properties})
    }
}

impl AzureProvider {
    /// Deletes a VM a refused try left (only crabbox's for the lease), and
    /// the OS disk it named.
    async fn delete_vm_only(
        &self,
        arm: &Arm,
        group: &str,
        name: &str,
        request: &CreateRequest,
    ) -> Result<(), ProviderError> {
        let r = arm.resource(group, Kind::Vm, name);
        let Some(vm) = arm
            .get(&r)
            .await
            .map_err(|e| arm::doing(e, "reading the refused virtual machine"))?
            .as_ref()
            .and_then(Vm::from_json)
        else {
            return Ok(());
        };
        check_owned(&vm.name, &vm.tags, &request.lease_id, Some(&request.pond))?;
        arm.delete(&r, &[("forceDeletion", "true")])
            .await
            .map_err(|e| arm::doing(e, "deleting the refused virtual machine"))?;
        if let Some(disk) = vm.os_disk {
            arm.delete(&arm.resource(group, Kind::Disk, &disk), &[])
                .await
                .map_err(|e| arm::doing(e, "deleting the refused VM's disk"))?;
        }
        Ok(())
    }
}

/// The SSH ranges of a member: its own, else this machine's public IPv4 as
/// a `/32` (asked where the `aws` provider asks; never `0.0.0.0/0`).
async fn ssh_cidrs(configured: &[String]) -> Result<Vec<String>, ProviderError> {
    if !configured.is_empty() {
        return Ok(configured.to_vec());
    }
    crate::aws::ssh_cidr::ssh_cidrs(&[])
        .await
        .map_err(|e| ProviderError::Config {
            message: format!("azure: {e}"),
            hint: "set `azure.sshCIDRs` (or CRABBOX_AZURE_SSH_CIDRS) to the ranges SSH comes from"
                .to_owned(),
        })
}

/// crabbox changes or deletes only resources carrying `crabbox=true`, a
/// pond (the lease's, when it names one) and this lease's ID.
fn check_owned(
    name: &str,
    tags: &Labels,
    lease_id: &str,
    pond: Option<&str>,
) -> Result<(), ProviderError> {
    if carries_lease_labels(|k| tags.get(k).map(|v| v.as_str()), lease_id, pond) {
        Ok(())
    } else {
        Err(ProviderError::Failed(format!(
            "refusing to touch azure resource {name}: it does not carry crabbox's tags for lease {lease_id} (crabbox=true, pond, lease)"
        )))
    }
}

#[async_trait]
impl Provider for AzureProvider {
    fn session<'a>(&'a self, lease: &'a Lease) -> Box<dyn Session + 'a> {
        Box::new(SshSession::new(self, lease))
    }

    fn name(&self) -> ProviderName {
        ProviderName::Azure
    }

    async fn list(&self, pond: &str) -> Result<Vec<Lease>, ProviderError> {
        check_pond(pond)?;
        let ports = self.leases.recorded_ports();
        let vms = self.vms(Some(pond)).await?;
        let groups: BTreeSet<String> = vms.iter().map(|(g, _)| g.clone()).collect();
        let addresses = self.addresses(&groups).await?;
        let ports = ports
            .await
            .map_err(|e| ProviderError::Failed(format!("reading the SSH endpoint records: {e}")))?;
        let mut leases: Vec<Lease> = vms
            .into_iter()
            .filter_map(|(_, vm)| {
                self.saw(&vm);
                let address = addresses.get(&vm.name).cloned();
                self.lease_of(vm, address, &ports)
            })
            .collect();
        leases.sort_by(|a, b| a.id.cmp(&b.id).then(a.cloud_id.cmp(&b.cloud_id)));
        Ok(leases)
    }

    async fn ponds(&self) -> Result<Vec<String>, ProviderError> {
        let ponds: BTreeSet<String> = self
            .vms(None)
            .await?
            .into_iter()
            .filter_map(|(_, vm)| vm.tags.get(labels::POND).map(ToString::to_string))
            .collect();
        Ok(ponds.into_iter().collect())
    }

    async fn slugs_in_use(&self) -> Result<Vec<String>, ProviderError> {
        Ok(self
            .vms(None)
            .await?
            .into_iter()
            .filter_map(|(_, vm)| vm.tags.get(labels::SLUG).map(ToString::to_string))
            .collect())
    }

    async fn create(&self, request: &CreateRequest) -> Result<Lease, ProviderError> {
        check_lease_id(&request.lease_id)?;
        let block: AzureBlock = crate::block_of(&request.member)?;
        if block.target == Some(AzureTarget::Windows) {
            return Err(ProviderError::Unsupported(format!(
                "member `{}`: azure target `windows` is not supported (only linux)",
                request.member.slug
            )));
        }
        let (request, tailnet) = self.leases.enrolled(request).await?;
        self.create_lease(&request, &block, tailnet.as_ref()).await
    }

    async fn relabel(&self, lease: &Lease, labels: &Labels) -> Result<(), ProviderError> {
        let arm = self.arm().await?;
        let group = Self::group_of(lease);
        let current = match self.sightings.recent(&lease.cloud_id) {
            Some(seen) => {
                check_owned(&seen.name, &seen.tags, &lease.id, lease.label(labels::POND))?;
                seen
            }
            None => self.owned_vm(&arm, &group, lease).await?,
        };
        if !keeps_lease_labels(labels, &lease.id) {
            return Err(ProviderError::Failed(format!(
                "refusing to relabel azure virtual machine {}: the new labels drop crabbox=true, pond or lease={}",
                lease.cloud_id, lease.id
            )));
        }
        let mut tags = labels.clone();
        for k in LAUNCH_TAGS {
            if let Some(v) = current.tags.get(k) {
                tags.insert_missing(k, || v.clone());
            }
        }
        let updated = arm
            .patch(
                &arm.resource(&group, Kind::Vm, &lease.cloud_id),
                &json!({"tags": tags}),
            )
            .await
            .map_err(|e| {
                if e.is_not_found() {
                    self.sightings.forget(&lease.cloud_id);
                }
                arm::doing(e, "retagging the virtual machine")
            })?;
        if let Some(vm) = Vm::from_json(&updated) {
            self.saw(&vm);
        }
        Ok(())
    }

    async fn sweep(&self, pond: &str) -> Result<Vec<String>, ProviderError> {
        check_pond(pond)?;
        // Only what was observed counts: a failed listing sweeps nothing.
        let arm = self.arm().await?;
        let vms = self.vms(Some(pond)).await?;
        let live: HashSet<String> = vms
            .iter()
            .filter_map(|(_, vm)| vm.tags.get(labels::LEASE).map(ToString::to_string))
            .collect();
        let mut removed = Vec::new();
        let mut left = Vec::new();
        let mut swept = HashSet::new();
        for group in self.groups().await? {
            for kind in [Kind::Nic, Kind::PublicIp] {
                let items = arm
                    .list(&arm.collection(&group, kind))
                    .await
                    .map_err(|e| arm::doing(e, "listing for the sweep"))?;
                for item in items {
                    let t = tags(&item);
                    let (Some(lease), Some(name)) = (
                        t.get(labels::LEASE).map(ToString::to_string),
                        item["name"].as_str(),
                    ) else {
                        continue;
                    };
                    if live.contains(&lease)
                        || !is_lease_id(&lease)
                        || !carries_lease_labels(
                            |k| t.get(k).map(|v| v.as_str()),
                            &lease,
                            Some(pond),
                        )
                    {
                        continue;
                    }
                    match arm.delete(&arm.resource(&group, kind, name), &[]).await {
                        Ok(()) => removed.push(format!(
                            "azure {} `{name}` (lease {lease} has no VM)",
                            kind.noun()
                        )),
                        Err(e) => left.push(format!("azure {} `{name}`: {e}", kind.noun())),
                    }
                    swept.insert(lease);
                }
            }
        }
        self.leases
            .finish_sweep(pond, &live, &swept, removed, left)
            .await
    }

    async fn ssh_target(&self, lease: &Lease) -> Option<SshTarget> {
        self.leases.known_target(lease)
    }

    async fn release(&self, lease: &Lease) -> Result<(), ProviderError> {
        let arm = self.arm().await?;
        let group = Self::group_of(lease);
        self.leases.close_stale_master(&lease.id).await;
        // A delete cannot be undone: ownership is always read afresh.
        let existed = self
            .delete_lease_resources(
                &arm,
                &group,
                &lease.cloud_id,
                &lease.id,
                lease.label(labels::POND),
            )
            .await?;
        self.sightings.forget(&lease.cloud_id);
        self.leases.forget_server(lease).await;
        if is_lease_id(&lease.id) {
            self.leases.remove_lease_files(&lease.id)?;
        }
        if existed {
            Ok(())
        } else {
            Err(ProviderError::NotFound(format!(
                "azure virtual machine {} (lease {})",
                lease.cloud_id, lease.id
            )))
        }
    }
}

#[async_trait]
impl SshTargets for AzureProvider {
    async fn ssh_target_of(&self, lease: &Lease) -> Result<SshTarget, ProviderError> {
        self.leases
            .target(lease, || async {
                let arm = self.arm().await?;
                let group = Self::group_of(lease);
                self.owned_vm(&arm, &group, lease).await?;
                let addresses = self.addresses(&BTreeSet::from([group])).await?;
                addresses.get(&lease.cloud_id).cloned().ok_or_else(|| {
                    ProviderError::Failed(format!(
                        "azure virtual machine {} (lease {}) has no address",
                        lease.cloud_id, lease.id
                    ))
                })
            })
            .await
    }

    async fn before_stop(&self, target: &SshTarget) -> Result<(), ProviderError> {
        self.leases.before_stop(target).await
    }
}
