//! The `gcp` provider: Compute Engine VMs crabbox creates itself and
//! reaches over SSH — the compute API of an SSH-lease cloud on the shared
//! [`crate::ssh_lease`] machinery (lease keys, endpoint records, Crabbox's
//! cloud-init, boot and SSH waits, SSH targets).
//!
//! - **Credentials** are Application Default Credentials ([`credentials`]):
//!   a service account key, a workload-identity-federation file or gcloud's
//!   user credentials (`GOOGLE_APPLICATION_CREDENTIALS`, gcloud's ADC file),
//!   else the metadata server; read at the first call, exit 3 naming what
//!   to set when missing or refused. The project is `gcp.project`, else
//!   `CRABBOX_GCP_PROJECT`, `GOOGLE_CLOUD_PROJECT`, `GCP_PROJECT_ID`, the
//!   credentials file's, the metadata server's.
//! - **Discovery** is one `instances.aggregatedList` per project filtered by
//!   `labels.crabbox=true AND labels.pond=<pond>`, every page (a zone the API
//!   could not reach fails the listing), in the default project and every
//!   project a `gcp` claim's `gcp_project` label names.
//! - **Create** first reads the lease's instance by its name (Crabbox's,
//!   `crabbox-<slug>-<hash>`: an earlier attempt whose answer was lost is
//!   adopted, never made twice), makes sure of the SSH firewall rule
//!   (Crabbox's name and description; found or created, never changed), then
//!   inserts the VM with every label (Compute Engine's label rules,
//!   [`names`]), the lease key in metadata `ssh-keys` for the login user,
//!   Crabbox's cloud-init as `user-data`, the network tag the rule targets,
//!   trying the class's machine types (then standard VMs, when a spot
//!   member allows it) on capacity and quota refusals ([`capacity`]); each
//!   insert's zonal operation is waited for until `DONE`, its errors read.
//!   It then waits for `RUNNING` with an external address and for SSH
//!   (`gcp.ssh_host` / `gcp.ssh_port` override where SSH connects). A create
//!   that fails after the VM exists deletes it again.
//! - **Relabel** is `setLabels` with the fingerprint the labels were read
//!   with (read afresh, so a concurrent change is a 412, not lost), keeping
//!   the labels crabbox sets at insert.
//! - **Release** reads the VM afresh and deletes it only if it carries
//!   `crabbox=true`, a `pond` and this lease's `lease` label (404 = gone),
//!   then its local files.
//! - **Sweep** removes this pond's key directories whose lease has no VM.

pub mod api;
pub mod capacity;
pub mod credentials;
pub mod names;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};

use api::{Compute, Firewall, Instance};
use crabbox_core::labels::{self, Labels};
use crabbox_core::lease::{Endpoint, Lease, is_lease_id};
use crabbox_core::provider::{ProviderError, ProviderName};
use crabbox_exec::session::{Session, SshSession, SshTargets};
use crabbox_exec::ssh::SshTarget;
use crabbox_spec::model::Class;
use crabbox_spec::providers::GcpBlock;
use crabbox_state::claims::ClaimStore;
use credentials::{Signal, TokenSource};

use crate::registry::Descriptor;
use crate::ssh_lease::Lazy;
use crate::ssh_lease::boot::Seen;
use crate::ssh_lease::sightings::Sightings;
use crate::ssh_lease::{
    SshLeases, SshSettings, carries_lease_labels, check_lease_id, check_pond, keeps_lease_labels,
    names as lease_names,
};
use crate::tailnet::enroll::Enrollment;
use crate::{CreateRequest, Provider};

/// Crabbox's default zone.
const DEFAULT_ZONE: &str = "europe-west2-a";
/// Crabbox's default image family.
const DEFAULT_IMAGE: &str = "projects/ubuntu-os-cloud/global/images/family/ubuntu-2604-lts-amd64";
/// Crabbox's default network.
const DEFAULT_NETWORK: &str = "default";
/// Crabbox's default boot disk, GB.
const DEFAULT_ROOT_GB: u32 = 400;
/// Class when the member names neither class nor type.
const DEFAULT_CLASS: Class = Class::Standard;
/// The scope of a service account attached to a VM.
const VM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// Labels crabbox sets at insert besides the lease's: a relabel keeps them.
const LAUNCH_LABELS: [&str; 4] = [labels::SERVER_TYPE, "market", "zone", "gcp_project"];

/// The `gcp` adapter in the registry's table.
pub const DESCRIPTOR: Descriptor = Descriptor {
    name: ProviderName::Gcp,
    build: |dir, claims| {
        GcpProvider::from_env(dir)
            .map(|p| Arc::new(p.with_claims(claims.clone())) as Arc<dyn Provider>)
    },
    credentials: Some(credentials::CREDENTIALS),
    help: credentials::HELP,
    transport_refusal: None,
};

/// The `gcp` provider.
#[derive(Debug)]
pub struct GcpProvider {
    /// Keys, endpoint records, boot and SSH waits, SSH targets.
    leases: SshLeases,
    /// Where the credentials come from.
    signal: Signal,
    /// The Compute Engine base URL.
    endpoint: String,
    /// The credentials, loaded at the first call.
    auth: Lazy<Arc<TokenSource>>,
    /// The project when a member names none, resolved at the first call.
    default_project: Lazy<Option<String>>,
    /// Firewall rules made sure of in this process, by project and policy.
    firewalls: Mutex<HashMap<String, Lazy<()>>>,
    /// Instance name → the instance as last seen (its labels).
    sightings: Sightings<String, Instance>,
    /// The command's claims: the projects of members with their own
    /// `gcp.project` (their `gcp_project` label).
    claims: ClaimStore,
}

impl GcpProvider {
    /// The provider when the environment names a source of credentials
    /// ([`credentials::configured`]); the endpoint from
    /// `CRABBOX_GCP_COMPUTE_ENDPOINT`.
    #[must_use]
    pub fn from_env(state_dir: &Path) -> Option<Self> {
        let signal = credentials::configured_here()?;
        let endpoint = std::env::var(api::ENDPOINT_ENV)
            .ok()
            .filter(|e| !e.trim().is_empty())
            .unwrap_or_else(|| api::DEFAULT_ENDPOINT.to_owned());
        Some(Self::new(signal, &endpoint, state_dir))
    }

    /// A provider with credentials from `signal`, talking to `endpoint`,
    /// keeping its records under `<state_dir>/ssh/keys/`.
    #[must_use]
    pub fn new(signal: Signal, endpoint: &str, state_dir: &Path) -> Self {
        Self {
            leases: SshLeases::new(
                "gcp",
                "the Compute Engine console (VM instance › Serial port 1)",
                state_dir,
            ),
            signal,
            endpoint: endpoint.to_owned(),
            auth: Lazy::default(),
            default_project: Lazy::default(),
            firewalls: Mutex::new(HashMap::new()),
            sightings: Sightings::default(),
            claims: ClaimStore::local(state_dir),
        }
    }

    /// Reads the projects members created in from `claims`.
    #[must_use]
    pub fn with_claims(mut self, claims: ClaimStore) -> Self {
        self.claims = claims;
        self
    }

    /// The credentials, loaded once.
    async fn auth(&self) -> Result<Arc<TokenSource>, ProviderError> {
        self.auth
            .get_or_try_init(|| async {
                let host = std::env::var("GCE_METADATA_HOST").ok();
                TokenSource::load(&self.signal, host.as_deref()).map(Arc::new)
            })
            .await
            .cloned()
    }

    /// The client of `project` (a member's `gcp.project`), else of the
    /// default project.
    async fn compute(&self, project: Option<&str>) -> Result<Compute, ProviderError> {
        let auth = self.auth().await?;
        let project = match project.map(str::trim).filter(|p| !p.is_empty()) {
            Some(p) => p.to_owned(),
            None => self.default_project(&auth).await?.ok_or_else(no_project)?,
        };
        Compute::new(&self.endpoint, &project, auth)
    }

    /// The project when a member names none: the environment's, the
    /// credentials file's, the metadata server's.
    async fn default_project(&self, auth: &TokenSource) -> Result<Option<String>, ProviderError> {
        self.default_project
            .get_or_try_init(|| async {
                let env: HashMap<String, String> = std::env::vars().collect();
                if let Some(p) = credentials::project(None, &env)
                    .or_else(|| auth.file_project().map(str::to_owned))
                {
                    return Ok(Some(p));
                }
                auth.metadata_project().await
            })
            .await
            .cloned()
    }

    /// The client of a lease's project (its `gcp_project` label).
    async fn compute_of(&self, lease: &Lease) -> Result<Compute, ProviderError> {
        self.compute(lease.label("gcp_project")).await
    }

    /// The clients of every project crabbox may have created in: the
    /// default one, then each other project a `gcp` claim names.
    async fn projects(&self) -> Result<Vec<Compute>, ProviderError> {
        let auth = self.auth().await?;
        let (default, claims) = tokio::try_join!(self.default_project(&auth), async {
            self.claims.load_all().await.map_err(ProviderError::state)
        })?;
        let named: BTreeSet<String> = claims
            .0
            .iter()
            .filter(|c| c.provider == ProviderName::Gcp.as_str())
            .filter_map(|c| c.labels.get("gcp_project"))
            .filter(|p| !p.is_empty() && Some(p.as_str()) != default.as_deref())
            .map(ToString::to_string)
            .collect();
        if default.is_none() && named.is_empty() {
            return Err(no_project());
        }
        default
            .into_iter()
            .chain(named)
            .map(|p| Compute::new(&self.endpoint, &p, auth.clone()))
            .collect()
    }

    /// Every instance crabbox labelled with `filter` (after
    /// `labels.crabbox=true`), in every project of [`Self::projects`].
    async fn instances(&self, filter: Option<&str>) -> Result<Vec<Instance>, ProviderError> {
        let filter = match filter {
            Some(f) => format!("labels.crabbox=true AND {f}"),
            None => "labels.crabbox=true".to_owned(),
        };
        let projects = self.projects().await?;
        let listings =
            futures_util::future::try_join_all(projects.iter().map(|c| c.aggregated(&filter)))
                .await
                .map_err(ProviderError::from)?;
        Ok(listings.into_iter().flatten().collect())
    }

    /// Remembers the labels an instance was just seen with.
    fn saw(&self, instance: &Instance) {
        self.sightings.saw(instance.name.clone(), instance.clone());
    }

    /// The lease an instance stands for.
    fn lease_of(&self, instance: Instance, ports: &HashMap<String, u16>) -> Option<Lease> {
        let id = instance.labels.get(labels::LEASE)?.clone();
        let port = self.leases.port_of(&id, ports);
        let host = is_lease_id(&id)
            .then(|| self.leases.read_endpoint(&id))
            .flatten()
            .and_then(|r| r.host)
            .or_else(|| instance.external_ip().map(str::to_owned));
        let mut labels = instance.labels.clone();
        labels.insert_missing("zone", || instance.zone_name().into());
        Some(Lease {
            id: id.into(),
            provider: ProviderName::Gcp,
            cloud_id: instance.name,
            labels,
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

    /// The instance if it carries crabbox's labels for this lease; else why not.
    async fn owned_instance(
        &self,
        compute: &Compute,
        lease: &Lease,
    ) -> Result<Instance, ProviderError> {
        let zone = zone_of(lease)?;
        let instance = compute
            .instance(zone, &lease.cloud_id)
            .await?
            .ok_or_else(|| {
                self.sightings.forget(&lease.cloud_id);
                ProviderError::NotFound(format!(
                    "gcp instance {} in {zone} (lease {})",
                    lease.cloud_id, lease.id
                ))
            })?;
        self.saw(&instance);
        check_owned(&instance, lease)?;
        Ok(instance)
    }

    /// Waits until the VM runs with an external address.
    async fn wait_running(
        &self,
        compute: &Compute,
        zone: &str,
        name: &str,
    ) -> Result<(Instance, String), ProviderError> {
        self.leases
            .until_running(&format!("gcp instance {name}"), || async {
                match compute.instance(zone, name).await {
                    Ok(Some(i)) if i.status == "RUNNING" => Ok(match i.external_ip() {
                        Some(ip) => {
                            let ip = ip.to_owned();
                            Seen::Ready((i, ip))
                        }
                        None => Seen::Booting {
                            last: "running without an external address yet".to_owned(),
                            nearly: true,
                        },
                    }),
                    Ok(Some(i)) if matches!(i.status.as_str(), "STOPPING" | "TERMINATED" | "SUSPENDED") => {
                        Err(ProviderError::Failed(format!(
                            "gcp instance {name} stopped while booting (status `{}`; a spot VM may have been preempted)",
                            i.status
                        )))
                    }
                    Ok(Some(i)) => Ok(Seen::Booting {
                        last: format!("status `{}`", i.status),
                        nearly: i.status == "STAGING",
                    }),
                    Ok(None) => Err(ProviderError::Failed(format!(
                        "gcp instance {name} disappeared while booting"
                    ))),
                    Err(e) => match e.error {
                        ProviderError::Retryable { message, .. } => Ok(Seen::Retry {
                            last: message,
                            after: Duration::ZERO,
                        }),
                        other => Err(other),
                    },
                }
            })
            .await
    }

    /// The SSH firewall rule of a member's VMs, made sure of once per
    /// process for each project and policy: found by Crabbox's name (and
    /// used only when its description says it is Crabbox's), else created.
    async fn firewall(
        &self,
        compute: &Compute,
        block: &GcpBlock,
        tags: &[String],
        ports: &[u16],
    ) -> Result<(), ProviderError> {
        let network = network_link(compute.project(), block);
        let configured = block.ssh_cidrs.clone().unwrap_or_default();
        let key = format!(
            "{} {network} {configured:?} {tags:?} {ports:?}",
            compute.project()
        );
        let cell = self
            .firewalls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key)
            .or_default()
            .clone();
        cell.get_or_try_init(|| async {
            let ranges = ssh_ranges(&configured).await?;
            let name = names::firewall_name(&network, &ranges, tags, ports);
            let mut allowed_ports: Vec<String> = ports.iter().map(u16::to_string).collect();
            allowed_ports.sort();
            let wanted = Firewall {
                name: name.clone(),
                description: names::FIREWALL_DESCRIPTION.to_owned(),
                network: network.clone(),
                direction: "INGRESS".to_owned(),
                source_ranges: ranges,
                target_tags: tags.to_vec(),
                allowed: vec![api::Allowed {
                    ip_protocol: "tcp".to_owned(),
                    ports: allowed_ports,
                }],
            };
            let found = match compute.firewall(&name).await? {
                Some(f) => Some(f),
                None => match compute.insert_firewall(&wanted).await {
                    Ok(()) => None,
                    // Another process made it meanwhile: read it.
                    Err(e) if e.status == Some(409) => compute.firewall(&name).await?,
                    Err(e) => return Err(e.into()),
                },
            };
            if let Some(existing) = found
                && !existing.description.contains("Crabbox-managed")
            {
                return Err(ProviderError::Failed(format!(
                    "gcp firewall rule `{name}` exists but is not Crabbox-managed (its description lacks `Crabbox-managed`); crabbox never changes it — give the members other `gcp.tags` or `gcp.sshCIDRs`, or remove the rule"
                )));
            }
            Ok(())
        })
        .await
        .cloned()
    }

    /// Best-effort undo of a create that did not finish: the VM (only one
    /// carrying this lease's labels) and the local files.
    async fn roll_back(&self, compute: &Compute, zone: &str, lease_id: &str, name: Option<&str>) {
        self.leases.drop_target(lease_id).await;
        if let Some(name) = name
            && let Ok(Some(i)) = compute.instance(zone, name).await
            && i.labels.get(labels::LEASE).map(|v| v.as_str()) == Some(lease_id)
            && i.labels.get(labels::CRABBOX).map(|v| v.as_str()) == Some("true")
        {
            let _ = compute.delete(zone, name).await;
        }
        self.sightings.forget(&name.unwrap_or_default().to_owned());
        let _ = self.leases.remove_key_dir(lease_id);
    }

    /// Inserts the VM: the attempts of [`capacity::attempts`] in order, the
    /// next only after a capacity or quota refusal; each reported on stderr.
    async fn insert(&self, compute: &Compute, plan: &InsertPlan<'_>) -> Result<(), ProviderError> {
        let member = &plan.request.member;
        let (types, exact) = match (&member.server_type, member.class) {
            (Some(t), _) if !t.is_empty() => (vec![t.clone()], true),
            (_, class) => (
                capacity::class_types(class.unwrap_or(DEFAULT_CLASS))
                    .iter()
                    .map(|t| (*t).to_owned())
                    .collect(),
                false,
            ),
        };
        let spot = plan.block.spot.unwrap_or(true);
        let tries = capacity::attempts(&types, spot, plan.block.standard_fallback.unwrap_or(false));
        let mut refused = Vec::new();
        for attempt in tries {
            eprintln!(
                "gcp: {}: creating {} ({attempt}) in {}",
                member.slug, plan.name, plan.zone
            );
            match compute
                .insert(plan.zone, &plan.body(&attempt, compute.project()))
                .await
            {
                Ok(()) => {
                    eprintln!("gcp: {}: created {} ({attempt})", member.slug, plan.name);
                    return Ok(());
                }
                Err(e) if e.has_code(&capacity::FALLBACK_CODES) => {
                    eprintln!("gcp: {}: {attempt} refused: {}", member.slug, e.message);
                    refused.push(format!("{attempt}: {}", e.message));
                }
                Err(e) => {
                    eprintln!("gcp: {}: {attempt} failed: {}", member.slug, e.message);
                    return Err(e.error);
                }
            }
        }
        Err(ProviderError::Failed(if exact {
            format!(
                "gcp: machine type `{}` could not be created in {} ({}); it is pinned by the member's `type` and never falls back — use a `class` to allow other types",
                types[0],
                plan.zone,
                refused.join("; ")
            )
        } else {
            format!(
                "gcp: no machine type of class `{}` could be created in {}: {}",
                member.class.unwrap_or(DEFAULT_CLASS).as_str(),
                plan.zone,
                refused.join("; ")
            )
        }))
    }

    async fn create_lease(
        &self,
        request: &CreateRequest,
        block: &GcpBlock,
        tailnet: Option<&Enrollment>,
    ) -> Result<Lease, ProviderError> {
        let compute = self.compute(block.project.as_deref()).await?;
        // The member's zone, else `CRABBOX_GCP_ZONE`, else Crabbox's.
        let zone = block
            .zone
            .clone()
            .filter(|z| !z.trim().is_empty())
            .or_else(|| {
                std::env::var("CRABBOX_GCP_ZONE")
                    .ok()
                    .filter(|z| !z.trim().is_empty())
            })
            .unwrap_or_else(|| DEFAULT_ZONE.to_owned());
        let settings = SshSettings::from_block(
            block.ssh_user.as_deref(),
            block.ssh_port,
            block.ssh_key.as_deref(),
        )
        .via(block.ssh_host.as_deref());
        let name = lease_names::server_name(&request.member.slug, &request.lease_id);
        let mut prepared = self.leases.prepare(request, &settings)?;
        // An instance an earlier attempt created (its answer lost) is
        // adopted, never created twice; one of that name that is not this
        // lease's is never touched.
        let existing = compute.instance(&zone, &name).await;
        if let Err(e) = prepared.written().await {
            self.roll_back(&compute, &zone, &request.lease_id, None)
                .await;
            return Err(ProviderError::Failed(e));
        }
        match existing? {
            Some(i)
                if carries_lease_labels(
                    |k| i.labels.get(k).map(|v| v.as_str()),
                    &request.lease_id,
                    Some(&request.pond),
                ) =>
            {
                eprintln!(
                    "gcp: {}: adopting instance {name} created for lease {} by an earlier attempt",
                    request.member.slug, request.lease_id
                );
            }
            Some(_) => {
                let _ = self.leases.remove_key_dir(&request.lease_id);
                return Err(ProviderError::Failed(format!(
                    "gcp: an instance named {name} exists in {zone} without crabbox's labels for lease {}; crabbox leaves it alone",
                    request.lease_id
                )));
            }
            None => {
                let tags = block
                    .tags
                    .clone()
                    .filter(|t| !t.is_empty())
                    .unwrap_or_else(|| vec![names::DEFAULT_TAG.to_owned()]);
                let ports = self.leases.port_candidates(settings.port);
                let created = async {
                    self.firewall(&compute, block, &tags, &ports).await?;
                    let plan = InsertPlan {
                        request,
                        block,
                        zone: &zone,
                        name: &name,
                        tags: &tags,
                        ssh_keys: format!("{}:{}", settings.user, prepared.key.public.trim()),
                        user_data: self
                            .leases
                            .user_data(&settings, &prepared.key.public, tailnet),
                    };
                    self.insert(&compute, &plan).await
                }
                .await;
                if let Err(e) = created {
                    // An insert refused outright made nothing; one whose
                    // operation failed may have left a VM: delete it.
                    if !e.is_retryable() {
                        self.roll_back(&compute, &zone, &request.lease_id, Some(&name))
                            .await;
                    }
                    return Err(e);
                }
            }
        }
        let booted = async {
            let (instance, address) = self.wait_running(&compute, &zone, &name).await?;
            self.saw(&instance);
            self.leases
                .connect(&request.lease_id, address.clone(), &prepared.record)
                .await?;
            let mut lease = self.lease_of(instance, &HashMap::new()).ok_or_else(|| {
                ProviderError::Failed(format!(
                    "gcp instance {name} came back without its `lease` label"
                ))
            })?;
            lease.endpoint.host = Some(prepared.record.host.clone().unwrap_or(address));
            Ok(lease)
        }
        .await;
        if booted.is_err() {
            self.roll_back(&compute, &zone, &request.lease_id, Some(&name))
                .await;
        }
        booted
    }
}

/// One VM's insert request, but for the machine type and model.
struct InsertPlan<'a> {
    request: &'a CreateRequest,
    block: &'a GcpBlock,
    zone: &'a str,
    name: &'a str,
    tags: &'a [String],
    /// `user:ssh-ed25519 AAAA… comment`.
    ssh_keys: String,
    user_data: String,
}

impl InsertPlan<'_> {
    /// The `instances.insert` body of `attempt` in `project`.
    fn body(&self, attempt: &capacity::Attempt, project: &str) -> Value {
        let zone = self.zone;
        let mut labels = self.request.labels.clone();
        labels.insert(
            labels::SERVER_TYPE.into(),
            attempt.machine_type.as_str().into(),
        );
        labels.insert("market".into(), attempt.market().into());
        labels.insert("zone".into(), zone.into());
        labels.insert("gcp_project".into(), project.into());
        let mut interface = json!({
            "network": network_link(project, self.block),
            "accessConfigs": [{ "name": "External NAT", "type": "ONE_TO_ONE_NAT" }],
        });
        if let Some(subnet) = self.block.subnet.as_deref().filter(|s| !s.is_empty()) {
            interface["subnetwork"] = if subnet.contains('/') {
                subnet.to_owned()
            } else {
                format!(
                    "projects/{project}/regions/{}/subnetworks/{subnet}",
                    names::region_of(zone)
                )
            }
            .into();
        }
        let mut body = json!({
            "name": self.name,
            "machineType": format!("zones/{zone}/machineTypes/{}", attempt.machine_type),
            "labels": names::gcp_labels(&labels),
            "tags": { "items": self.tags },
            "metadata": { "items": [
                { "key": "enable-oslogin", "value": "FALSE" },
                { "key": "ssh-keys", "value": self.ssh_keys },
                { "key": "user-data", "value": self.user_data },
            ]},
            "disks": [{
                "boot": true,
                "autoDelete": true,
                "type": "PERSISTENT",
                "initializeParams": {
                    "sourceImage": self.block.image.as_deref().filter(|i| !i.is_empty()).unwrap_or(DEFAULT_IMAGE),
                    "diskSizeGb": self.block.root_gb.unwrap_or(DEFAULT_ROOT_GB).to_string(),
                    "diskType": format!("zones/{zone}/diskTypes/pd-balanced"),
                },
            }],
            "networkInterfaces": [interface],
        });
        if attempt.spot {
            body["scheduling"] = json!({
                "provisioningModel": "SPOT",
                "instanceTerminationAction": "DELETE",
                "automaticRestart": false,
                "onHostMaintenance": "TERMINATE",
            });
        }
        if let Some(account) = self
            .block
            .service_account
            .as_deref()
            .filter(|a| !a.is_empty())
        {
            body["serviceAccounts"] = json!([{ "email": account, "scopes": [VM_SCOPE] }]);
        }
        body
    }
}

/// The network's self link (a name is the project's global network).
fn network_link(project: &str, block: &GcpBlock) -> String {
    let network = block
        .network
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or(DEFAULT_NETWORK);
    if network.contains('/') {
        network.to_owned()
    } else {
        format!("projects/{project}/global/networks/{network}")
    }
}

/// `gcp.sshCIDRs`, else this machine's public IPv4 as a `/32` — asked as
/// the `aws` provider asks it; never `0.0.0.0/0` by default.
async fn ssh_ranges(configured: &[String]) -> Result<Vec<String>, ProviderError> {
    if !configured.is_empty() {
        return Ok(configured.to_vec());
    }
    let url = crate::aws::ssh_cidr::lookup_url(
        std::env::var(crate::aws::ssh_cidr::URL_ENV).ok().as_deref(),
    );
    crate::aws::ssh_cidr::public_ipv4_cidr(&url)
        .await
        .map(|c| vec![c])
        .map_err(|e| ProviderError::Config {
            message: format!("gcp: this machine's public address for the SSH firewall rule: {e}"),
            hint: "set `gcp.sshCIDRs` to the ranges SSH comes from (crabbox never opens SSH to 0.0.0.0/0 by default)".to_owned(),
        })
}

/// The error when no project is known.
fn no_project() -> ProviderError {
    ProviderError::Credentials {
        message: "gcp: no project: none in `gcp.project`, the environment or the credentials"
            .to_owned(),
        hint: "set gcp.project in pond.yaml, or CRABBOX_GCP_PROJECT / GOOGLE_CLOUD_PROJECT"
            .to_owned(),
    }
}

/// The zone a lease's VM lives in (its `zone` label).
fn zone_of(lease: &Lease) -> Result<&str, ProviderError> {
    lease
        .label("zone")
        .filter(|z| !z.is_empty())
        .ok_or_else(|| {
            ProviderError::Failed(format!(
                "gcp lease {} names no zone (its `zone` label)",
                lease.id
            ))
        })
}

/// crabbox changes or deletes only VMs carrying `crabbox=true`, a pond (the
/// lease's, when it names one) and this lease's ID.
fn check_owned(instance: &Instance, lease: &Lease) -> Result<(), ProviderError> {
    let get = |k: &str| instance.labels.get(k).map(|v| v.as_str());
    if carries_lease_labels(get, &lease.id, lease.label(labels::POND)) {
        Ok(())
    } else {
        Err(ProviderError::Failed(format!(
            "refusing to touch gcp instance {}: it does not carry crabbox's labels for lease {} (crabbox=true, pond, lease)",
            instance.name, lease.id
        )))
    }
}

#[async_trait]
impl Provider for GcpProvider {
    fn session<'a>(&'a self, lease: &'a Lease) -> Box<dyn Session + 'a> {
        Box::new(SshSession::new(self, lease))
    }

    fn stored_label(&self, value: &str) -> String {
        names::label_value(value)
    }

    fn name(&self) -> ProviderName {
        ProviderName::Gcp
    }

    async fn list(&self, pond: &str) -> Result<Vec<Lease>, ProviderError> {
        check_pond(pond)?;
        let ports = self.leases.recorded_ports();
        let filter = format!("labels.pond={}", names::label_value(pond));
        let instances = self.instances(Some(&filter)).await;
        let ports = ports
            .await
            .map_err(|e| ProviderError::Failed(format!("reading the SSH endpoint records: {e}")))?;
        let mut seen = HashSet::new();
        let mut leases: Vec<Lease> = instances?
            .into_iter()
            .filter(|i| seen.insert((i.zone.clone(), i.name.clone())))
            .filter_map(|i| {
                self.saw(&i);
                self.lease_of(i, &ports)
            })
            .collect();
        leases.sort_by(|a, b| a.id.cmp(&b.id).then(a.cloud_id.cmp(&b.cloud_id)));
        Ok(leases)
    }

    async fn ponds(&self) -> Result<Vec<String>, ProviderError> {
        let ponds: BTreeSet<String> = self
            .instances(None)
            .await?
            .into_iter()
            .filter_map(|i| i.labels.get(labels::POND).map(ToString::to_string))
            .collect();
        Ok(ponds.into_iter().collect())
    }

    async fn slugs_in_use(&self) -> Result<Vec<String>, ProviderError> {
        Ok(self
            .instances(None)
            .await?
            .into_iter()
            .filter_map(|i| i.labels.get(labels::SLUG).map(ToString::to_string))
            .collect())
    }

    async fn create(&self, request: &CreateRequest) -> Result<Lease, ProviderError> {
        check_lease_id(&request.lease_id)?;
        let block: GcpBlock = crate::block_of(&request.member)?;
        let (request, tailnet) = self.leases.enrolled(request).await?;
        self.create_lease(&request, &block, tailnet.as_ref()).await
    }

    async fn relabel(&self, lease: &Lease, new: &Labels) -> Result<(), ProviderError> {
        if !keeps_lease_labels(new, &lease.id) {
            return Err(ProviderError::Failed(format!(
                "refusing to relabel gcp instance {}: the new labels drop crabbox=true, pond or lease={}",
                lease.cloud_id, lease.id
            )));
        }
        let compute = self.compute_of(lease).await?;
        // The fingerprint must be current: the labels are read afresh.
        let current = self.owned_instance(&compute, lease).await?;
        let mut labels = names::gcp_labels(new);
        for key in LAUNCH_LABELS {
            if let Some(v) = current.labels.get(key) {
                labels.insert_missing(key, || v.clone());
            }
        }
        compute
            .set_labels(
                current.zone_name(),
                &current.name,
                &labels,
                &current.label_fingerprint,
            )
            .await
            .map_err(|e| {
                if e.is_not_found() {
                    self.sightings.forget(&lease.cloud_id);
                }
                e.error
            })?;
        let mut now = current;
        now.labels = labels;
        self.saw(&now);
        Ok(())
    }

    async fn sweep(&self, pond: &str) -> Result<Vec<String>, ProviderError> {
        check_pond(pond)?;
        // Only what was observed counts: a failed listing sweeps nothing.
        let filter = format!("labels.pond={}", names::label_value(pond));
        let live: HashSet<String> = self
            .instances(Some(&filter))
            .await?
            .into_iter()
            .filter_map(|i| i.labels.get(labels::LEASE).map(ToString::to_string))
            .collect();
        self.leases
            .finish_sweep(pond, &live, &HashSet::new(), Vec::new(), Vec::new())
            .await
    }

    async fn ssh_target(&self, lease: &Lease) -> Option<SshTarget> {
        self.leases.known_target(lease)
    }

    async fn release(&self, lease: &Lease) -> Result<(), ProviderError> {
        let compute = self.compute_of(lease).await?;
        let closing = self.leases.close_stale_master(&lease.id);
        // A deletion cannot be undone: ownership is always read afresh.
        let (owned, ()) = tokio::join!(self.owned_instance(&compute, lease), closing);
        let outcome = match owned {
            Ok(i) => compute
                .delete(i.zone_name(), &i.name)
                .await
                .map_err(ProviderError::from),
            Err(e @ ProviderError::NotFound(_)) => Err(e),
            Err(e) => return Err(e),
        };
        if let Err(e) = &outcome
            && !matches!(e, ProviderError::NotFound(_))
        {
            return outcome;
        }
        self.sightings.forget(&lease.cloud_id);
        self.leases.forget_server(lease).await;
        if is_lease_id(&lease.id) {
            self.leases.remove_lease_files(&lease.id)?;
        }
        outcome
    }
}

#[async_trait]
impl SshTargets for GcpProvider {
    async fn ssh_target_of(&self, lease: &Lease) -> Result<SshTarget, ProviderError> {
        self.leases
            .target(lease, || async {
                let compute = self.compute_of(lease).await?;
                let instance = self.owned_instance(&compute, lease).await?;
                instance.external_ip().map(str::to_owned).ok_or_else(|| {
                    ProviderError::Failed(format!(
                        "gcp instance {} (lease {}) has no external address",
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

#[cfg(test)]
mod tests {
    use super::*;
    use crabbox_spec::desired::DesiredMember;

    #[test]
    fn the_insert_body_carries_labels_key_bootstrap_and_model() {
        let mut member = DesiredMember::new("db", ProviderName::Gcp);
        member.class = Some(Class::Tiny);
        let request = CreateRequest {
            lease_id: "cbx_0123456789ab".to_owned(),
            pond: "demo".to_owned(),
            member,
            labels: [
                ("crabbox", "true"),
                ("pond", "demo"),
                ("lease", "cbx_0123456789ab"),
                ("created_by", "crabbox"),
            ]
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect(),
        };
        let block = GcpBlock {
            subnet: Some("lab".to_owned()),
            service_account: Some("vm@p.iam.gserviceaccount.com".to_owned()),
            ..GcpBlock::default()
        };
        let tags = vec!["crabbox-ssh".to_owned()];
        let plan = InsertPlan {
            request: &request,
            block: &block,
            zone: "europe-west2-a",
            name: "crabbox-db-1",
            tags: &tags,
            ssh_keys: "crabbox:ssh-ed25519 AAAA".to_owned(),
            user_data: "#cloud-config".to_owned(),
        };
        let spot = capacity::Attempt {
            machine_type: "c4-standard-4".to_owned(),
            spot: true,
        };
        let body = plan.body(&spot, "p");
        assert_eq!(body["labels"]["lease"], "cbx_0123456789ab");
        assert_eq!(body["labels"]["market"], "spot");
        assert_eq!(body["labels"]["zone"], "europe-west2-a");
        assert_eq!(
            body["machineType"],
            "zones/europe-west2-a/machineTypes/c4-standard-4"
        );
        assert_eq!(
            body["metadata"]["items"][1]["value"],
            "crabbox:ssh-ed25519 AAAA"
        );
        assert_eq!(body["scheduling"]["provisioningModel"], "SPOT");
        assert_eq!(body["disks"][0]["initializeParams"]["diskSizeGb"], "400");
        assert_eq!(
            body["networkInterfaces"][0]["subnetwork"],
            "projects/p/regions/europe-west2/subnetworks/lab"
        );
        assert_eq!(
            body["serviceAccounts"][0]["email"],
            "vm@p.iam.gserviceaccount.com"
        );
        let standard = capacity::Attempt {
            spot: false,
            ..spot
        };
        let body = plan.body(&standard, "p");
        assert!(body.get("scheduling").is_none());
        assert_eq!(body["labels"]["market"], "on-demand");
    }
}
