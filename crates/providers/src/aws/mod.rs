//! The `aws` provider: EC2 instances crabbox launches itself and reaches
//! over SSH — the compute API of an SSH-lease cloud on the shared
//! [`crate::ssh_lease`] machinery (lease keys, endpoint records, Crabbox's
//! cloud-init, boot and SSH waits, SSH targets).
//!
//! - **Credentials** come from the SDK's standard chain ([`sdk`]), resolved
//!   at the first call that needs them (the registry enables the provider
//!   on cheap signals such as `AWS_ACCESS_KEY_ID` or `AWS_PROFILE`); a
//!   missing or refused credential is exit 3 naming what to set.
//! - **Discovery** is `DescribeInstances` filtered by `tag:crabbox=true`,
//!   `tag:pond=<pond>` and the live states, every page, in every region
//!   crabbox may have launched in: the default one and each `aws_region`
//!   the claims name (a member's own `aws.region`), side by side. Claims
//!   that cannot be read stop the listing — a region not looked at is not
//!   a region without instances.
//! - **Create** first looks for an instance already tagged with the lease
//!   (an earlier attempt whose answer was lost: `ClientToken` is sent, but
//!   not relied upon), else imports the lease key as key pair
//!   `crabbox-cbx-<hex>` (unless `aws.key_name`), makes sure of the
//!   `crabbox-runners` security group with SSH from `aws.ssh_cidrs` (or
//!   this machine's public address; never `0.0.0.0/0`), and launches with
//!   every label as a tag of the instance, its volumes and its spot
//!   request in the `RunInstances` call itself, trying the class's types
//!   and markets in order on capacity errors ([`launch`]). It then waits
//!   for `running` with an address and for SSH (`aws.ssh_host` /
//!   `aws.ssh_port` override where SSH connects). A create that fails
//!   after the instance exists terminates it again.
//! - **Relabel** is `CreateTags` for the new labels and `DeleteTags` for
//!   the dropped ones, on an instance carrying crabbox's tags for the lease.
//! - **Release** reads the instance afresh and terminates it only if it
//!   carries `crabbox=true`, a `pond` and this lease's `lease` tag (a
//!   terminated one is gone), then deletes the lease's key pair and its
//!   local files.
//! - **Sweep** deletes this pond's key pairs and key directories whose
//!   lease has no instance (a create killed between the two).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;

pub mod api;
pub mod capacity;
pub mod credentials;
mod launch;
pub mod sdk;
pub mod ssh_cidr;

use api::{Ec2, Instance};
use crabbox_core::labels::{self, Labels};
use crabbox_core::lease::{Endpoint, Lease, is_lease_id};
use crabbox_core::provider::{ProviderError, ProviderName};
use crabbox_exec::session::{Session, SshSession, SshTargets};
use crabbox_exec::ssh::SshTarget;
use crabbox_spec::providers::{AwsBlock, AwsTarget};
use crabbox_state::claims::ClaimStore;

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

/// Tags crabbox puts on an instance at launch besides the lease's labels:
/// a relabel keeps them.
const LAUNCH_TAGS: [&str; 5] = [
    "Name",
    "aws_region",
    "market",
    labels::SERVER_TYPE,
    labels::PROVIDER_KEY,
];

/// The `aws` adapter in the registry's table.
pub const DESCRIPTOR: Descriptor = Descriptor {
    name: ProviderName::Aws,
    build: |dir, claims| {
        AwsProvider::from_env(dir)
            .map(|p| Arc::new(p.with_claims(claims.clone())) as Arc<dyn Provider>)
    },
    credentials: Some(credentials::CREDENTIALS),
    help: credentials::HELP,
    transport_refusal: None,
};

/// The `aws` provider.
#[derive(Debug)]
pub struct AwsProvider {
    /// Keys, endpoint records, boot and SSH waits, SSH targets.
    leases: SshLeases,
    /// EC2 clients by region (`""`: the default), each made at its first
    /// use — loading the SDK resolves the credentials.
    clients: Mutex<HashMap<String, Lazy<(Ec2, String)>>>,
    /// Security groups made sure of in this process, by region, group and
    /// ranges: a pond's members share one lookup.
    groups: Mutex<HashMap<String, Lazy<String>>>,
    /// Instance ID → the instance as last seen (its tags).
    sightings: Sightings<String, Instance>,
    /// The command's claims: where the regions of members with their own
    /// `aws.region` are read from (their `aws_region` label).
    claims: ClaimStore,
}

impl AwsProvider {
    /// The provider when the environment holds AWS credentials or a
    /// profile ([`credentials::configured`]): cheap signals only; the SDK
    /// resolves the credentials at the first call.
    #[must_use]
    pub fn from_env(state_dir: &Path) -> Option<Self> {
        credentials::configured_here().map(|_| Self::new(state_dir))
    }

    /// A provider keeping its records under `<state_dir>/ssh/keys/`.
    #[must_use]
    pub fn new(state_dir: &Path) -> Self {
        Self {
            leases: SshLeases::new(
                "aws",
                "the EC2 console (Actions › Monitor › Get system log)",
                state_dir,
            ),
            clients: Mutex::new(HashMap::new()),
            groups: Mutex::new(HashMap::new()),
            sightings: Sightings::default(),
            claims: ClaimStore::local(state_dir),
        }
    }

    /// Reads the regions members launched in from `claims` (the command's
    /// store: PostgreSQL when the state is shared).
    #[must_use]
    pub fn with_claims(mut self, claims: ClaimStore) -> Self {
        self.claims = claims;
        self
    }

    /// The EC2 client of `region` (a member's `aws.region`; `None`:
    /// `CRABBOX_AWS_REGION`, `AWS_REGION`, `AWS_DEFAULT_REGION`, the
    /// profile's, else `eu-west-1`) and the region, loading the SDK at the
    /// first use.
    async fn ec2(&self, region: Option<&str>) -> Result<(Ec2, String), ProviderError> {
        let region = region.filter(|r| !r.is_empty());
        let cell = self
            .clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(region.unwrap_or_default().to_owned())
            .or_default()
            .clone();
        cell.get_or_try_init(|| async move {
            let env: HashMap<String, String> = std::env::vars().collect();
            let profile = match region {
                Some(_) => None,
                None => credentials::profile_region().await,
            };
            let (resolved, _) = credentials::region(region, &env, profile.as_deref());
            let config = sdk::load(Some(&resolved)).await?;
            Ok((Ec2::new(&config), resolved))
        })
        .await
        .cloned()
    }

    /// The client of the region a lease's instance lives in (its
    /// `aws_region` tag; else the default).
    async fn ec2_of(&self, lease: &Lease) -> Result<Ec2, ProviderError> {
        Ok(self.ec2(lease.label("aws_region")).await?.0)
    }

    /// The clients of every region crabbox may have launched in: the
    /// default, then each other region an `aws` claim's `aws_region` label
    /// names (a member's own `aws.region`).
    async fn regions(&self) -> Result<Vec<Ec2>, ProviderError> {
        let ((default, default_region), claims) = tokio::try_join!(self.ec2(None), async {
            self.claims.load_all().await.map_err(ProviderError::state)
        })?;
        let named: BTreeSet<String> = claims
            .0
            .iter()
            .filter(|c| c.provider == ProviderName::Aws.as_str())
            .filter_map(|c| c.labels.get("aws_region"))
            .filter(|r| !r.is_empty() && **r != default_region)
            .map(ToString::to_string)
            .collect();
        let mut clients = vec![default];
        for region in named {
            clients.push(self.ec2(Some(region.as_str())).await?.0);
        }
        Ok(clients)
    }

    /// Every instance crabbox tagged with these filters, all pages, live
    /// only, in every region of [`Self::regions`] (listed side by side).
    async fn instances(&self, filters: &[(&str, &[&str])]) -> Result<Vec<Instance>, ProviderError> {
        let mut all: Vec<(&str, &[&str])> = vec![("tag:crabbox", &["true"])];
        all.extend_from_slice(filters);
        all.push(("instance-state-name", &api::LIVE_STATES));
        let regions = self.regions().await?;
        let listings =
            futures_util::future::try_join_all(regions.iter().map(|ec2| ec2.instances(&all)))
                .await
                .map_err(|e| e.into_provider("listing instances"))?;
        Ok(listings.into_iter().flatten().collect())
    }

    /// Remembers the tags an instance was just seen with.
    fn saw(&self, instance: &Instance) {
        self.sightings.saw(instance.id.clone(), instance.clone());
    }

    /// The lease an instance stands for (its host: the address SSH uses).
    fn lease_of(&self, instance: Instance, ports: &HashMap<String, u16>) -> Option<Lease> {
        let id = instance.tags.get(labels::LEASE)?.clone();
        let port = self.leases.port_of(&id, ports);
        // The host SSH uses: the record's (an `ssh_host`, or the private
        // address of a `private_ip` member), else the public address.
        let host = is_lease_id(&id)
            .then(|| self.leases.read_endpoint(&id))
            .flatten()
            .and_then(|r| r.host)
            .or_else(|| instance.public_ip.clone())
            .or_else(|| instance.private_ip.clone());
        Some(Lease {
            id: id.into(),
            provider: ProviderName::Aws,
            cloud_id: instance.id,
            labels: instance.tags,
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

    /// The instance if it carries crabbox's tags for this lease; else why not.
    async fn owned_instance(&self, ec2: &Ec2, lease: &Lease) -> Result<Instance, ProviderError> {
        let instance = ec2
            .instance(&lease.cloud_id)
            .await
            .map_err(|e| e.into_provider("reading the instance"))?
            .filter(|i| !i.is_terminated())
            .ok_or_else(|| {
                self.sightings.forget(&lease.cloud_id);
                ProviderError::NotFound(format!(
                    "aws instance {} (lease {})",
                    lease.cloud_id, lease.id
                ))
            })?;
        self.saw(&instance);
        check_owned(&instance, lease)?;
        Ok(instance)
    }

    /// Waits until the instance runs with the address SSH will use.
    async fn wait_running(
        &self,
        ec2: &Ec2,
        id: &str,
        private: bool,
    ) -> Result<(Instance, String), ProviderError> {
        self.leases
            .until_running(&format!("aws instance {id}"), || async {
                match ec2.instance(id).await {
                    Ok(Some(i)) if i.state == "running" => {
                        let address = if private {
                            i.private_ip.clone()
                        } else {
                            i.public_ip.clone()
                        };
                        Ok(match address {
                            Some(a) => Seen::Ready((i, a)),
                            None => Seen::Booting {
                                last: "running without an address yet".to_owned(),
                                nearly: true,
                            },
                        })
                    }
                    Ok(Some(i)) if i.is_terminated() => Err(ProviderError::Failed(format!(
                        "aws instance {id} was terminated while booting (state `{}`; a spot instance may have been interrupted)",
                        i.state
                    ))),
                    Ok(Some(i)) => Ok(Seen::Booting {
                        last: format!("state `{}`", i.state),
                        nearly: false,
                    }),
                    // Just launched: EC2's reads are eventually consistent.
                    Ok(None) => Ok(Seen::Booting {
                        last: "not visible yet".to_owned(),
                        nearly: false,
                    }),
                    Err(e) => match e.into_provider("reading the instance") {
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

    /// After the instance exists: wait for it, for SSH, prepare the work root.
    async fn bootstrap(
        &self,
        ec2: &Ec2,
        request: &CreateRequest,
        block: &AwsBlock,
        id: &str,
        record: &EndpointRecord,
    ) -> Result<Lease, ProviderError> {
        let (instance, address) = self
            .wait_running(ec2, id, block.private_ip.unwrap_or(false))
            .await?;
        self.saw(&instance);
        // A private address is recorded: a listing then reaches the lease
        // there too, not at a public address the instance may also have.
        let private;
        let record = if block.private_ip.unwrap_or(false) && record.host.is_none() {
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
        let mut lease = self.lease_of(instance, &HashMap::new()).ok_or_else(|| {
            ProviderError::Failed(format!(
                "aws instance {id} came back without its `lease` tag"
            ))
        })?;
        lease.endpoint.host = Some(record.host.clone().unwrap_or(address));
        Ok(lease)
    }

    /// Best-effort undo of a create that did not finish: the instance (only
    /// one carrying this lease's tags), the key pair crabbox imported, the
    /// local files.
    async fn roll_back(&self, ec2: &Ec2, lease_id: &str, instance: Option<&str>, own_key: bool) {
        self.leases.drop_target(lease_id).await;
        if let Some(id) = instance
            && let Ok(Some(i)) = ec2.instance(id).await
            && i.tags.get(labels::LEASE).map(|v| v.as_str()) == Some(lease_id)
            && i.tags.get(labels::CRABBOX).map(|v| v.as_str()) == Some("true")
        {
            let _ = ec2.terminate(id).await;
        }
        if own_key {
            let _ = delete_lease_key(ec2, lease_id).await;
        }
        let _ = self.leases.remove_key_dir(lease_id);
    }

    /// The SSH ranges of a member: `aws.ssh_cidrs`, else this machine's
    /// public address (failing, asking for the setting, when it cannot be
    /// found — never `0.0.0.0/0`).
    async fn ssh_cidrs(&self, block: &AwsBlock) -> Result<Vec<String>, ProviderError> {
        ssh_cidr::ssh_cidrs(block.ssh_cidrs.as_deref().unwrap_or_default()).await
    }

    /// The security group of a member's instances, made sure of once per
    /// process for each region, group and ranges: a pond's members share
    /// one lookup (and one creation).
    async fn group(
        &self,
        ec2: &Ec2,
        region: &str,
        block: &AwsBlock,
        ports: &[u16],
    ) -> Result<String, ProviderError> {
        let key = format!(
            "{region} {:?} {:?} {ports:?}",
            block.security_group_id, block.ssh_cidrs
        );
        let cell = self
            .groups
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key)
            .or_default()
            .clone();
        cell.get_or_try_init(|| async {
            let cidrs = self.ssh_cidrs(block).await?;
            launch::security_group(ec2, block, &cidrs, ports).await
        })
        .await
        .cloned()
    }

    async fn create_lease(
        &self,
        request: &CreateRequest,
        block: &AwsBlock,
        tailnet: Option<&Enrollment>,
    ) -> Result<Lease, ProviderError> {
        let (ec2, region) = self.ec2(block.region.as_deref()).await?;
        let settings = SshSettings::from_block(
            block.ssh_user.as_deref(),
            block.ssh_port,
            block.ssh_key.as_deref(),
        )
        .via(block.ssh_host.as_deref());
        let own_key = block.key_name.as_deref().is_none_or(str::is_empty);
        let mut prepared = self.leases.prepare(request, &settings)?;
        // An instance an earlier attempt launched (its answer lost) is
        // adopted, never launched twice.
        let adopted = launch::adoptable(&ec2, request).await;
        if let Err(e) = prepared.written().await {
            self.roll_back(&ec2, &request.lease_id, None, false).await;
            return Err(ProviderError::Failed(e));
        }
        let instance = match adopted? {
            Some(instance) => {
                eprintln!(
                    "aws: {}: adopting instance {} launched for lease {} by an earlier attempt",
                    request.member.slug, instance.id, request.lease_id
                );
                instance
            }
            None => {
                let launched = async {
                    let key_name =
                        launch::key_pair(&ec2, request, block, &prepared.key.public).await?;
                    let ports = self.leases.port_candidates(settings.port);
                    let security_group = self.group(&ec2, &region, block, &ports).await?;
                    let plan = launch::Plan {
                        request,
                        block,
                        key_name,
                        security_group,
                        user_data: self
                            .leases
                            .user_data(&settings, &prepared.key.public, tailnet),
                        region: region.clone(),
                    };
                    launch::run(&ec2, &plan).await
                }
                .await;
                match launched {
                    Ok(instance) => instance,
                    Err(e) => {
                        // A retryable failure keeps the key: the executor
                        // calls create again with the same lease ID.
                        if !e.is_retryable() {
                            self.roll_back(&ec2, &request.lease_id, None, own_key).await;
                        }
                        return Err(e);
                    }
                }
            }
        };
        self.saw(&instance);
        match self
            .bootstrap(&ec2, request, block, &instance.id, &prepared.record)
            .await
        {
            Ok(lease) => Ok(lease),
            Err(e) => {
                self.roll_back(&ec2, &request.lease_id, Some(&instance.id), own_key)
                    .await;
                Err(e)
            }
        }
    }
}

/// crabbox changes or terminates only instances carrying `crabbox=true`, a
/// pond (the lease's, when it names one) and this lease's ID.
fn check_owned(instance: &Instance, lease: &Lease) -> Result<(), ProviderError> {
    let get = |k: &str| instance.tags.get(k).map(|v| v.as_str());
    if carries_lease_labels(get, &lease.id, lease.label(labels::POND)) {
        Ok(())
    } else {
        Err(ProviderError::Failed(format!(
            "refusing to touch aws instance {}: it does not carry crabbox's tags for lease {} (crabbox=true, pond, lease)",
            instance.id, lease.id
        )))
    }
}

/// Deletes the key pair crabbox imported for a lease (only one tagged for
/// it; gone already is fine).
async fn delete_lease_key(ec2: &Ec2, lease_id: &str) -> Result<(), ProviderError> {
    let name = names::key_name(lease_id);
    match ec2
        .key_tags(&name)
        .await
        .map_err(|e| e.into_provider("reading the lease's key pair"))?
    {
        Some(tags) if launch::key_is_lease(&tags, lease_id) => ec2
            .delete_key(&name)
            .await
            .map_err(|e| e.into_provider("deleting the lease's key pair")),
        _ => Ok(()),
    }
}

#[async_trait]
impl Provider for AwsProvider {
    fn session<'a>(&'a self, lease: &'a Lease) -> Box<dyn Session + 'a> {
        Box::new(SshSession::new(self, lease))
    }

    fn name(&self) -> ProviderName {
        ProviderName::Aws
    }

    async fn list(&self, pond: &str) -> Result<Vec<Lease>, ProviderError> {
        check_pond(pond)?;
        let ports = self.leases.recorded_ports();
        let instances = self.instances(&[("tag:pond", &[pond])]).await;
        // A read that did not finish is not "no records": every port would
        // silently fall back to the default.
        let ports = ports
            .await
            .map_err(|e| ProviderError::Failed(format!("reading the SSH endpoint records: {e}")))?;
        let mut seen = HashSet::new();
        let mut leases: Vec<Lease> = instances?
            .into_iter()
            .filter(|i| !i.is_terminated() && seen.insert(i.id.clone()))
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
            .instances(&[])
            .await?
            .into_iter()
            .filter_map(|i| i.tags.get(labels::POND).map(ToString::to_string))
            .collect();
        Ok(ponds.into_iter().collect())
    }

    async fn slugs_in_use(&self) -> Result<Vec<String>, ProviderError> {
        Ok(self
            .instances(&[])
            .await?
            .into_iter()
            .filter_map(|i| i.tags.get(labels::SLUG).map(ToString::to_string))
            .collect())
    }

    async fn create(&self, request: &CreateRequest) -> Result<Lease, ProviderError> {
        check_lease_id(&request.lease_id)?;
        let block: AwsBlock = crate::block_of(&request.member)?;
        if let Some(target) = block.target.filter(|t| *t != AwsTarget::Linux) {
            return Err(ProviderError::Unsupported(format!(
                "member `{}`: aws target `{}` is not supported (only linux)",
                request.member.slug,
                target.as_str()
            )));
        }
        let (request, tailnet) = self.leases.enrolled(request).await?;
        self.create_lease(&request, &block, tailnet.as_ref()).await
    }

    async fn relabel(&self, lease: &Lease, labels: &Labels) -> Result<(), ProviderError> {
        let ec2 = self.ec2_of(lease).await?;
        // Tags can be put back, so a recent sighting is proof enough.
        let current = match self.sightings.recent(&lease.cloud_id) {
            Some(seen) => {
                check_owned(&seen, lease)?;
                seen
            }
            None => self.owned_instance(&ec2, lease).await?,
        };
        if !keeps_lease_labels(labels, &lease.id) {
            return Err(ProviderError::Failed(format!(
                "refusing to relabel aws instance {}: the new labels drop crabbox=true, pond or lease={}",
                lease.cloud_id, lease.id
            )));
        }
        let dropped: Vec<String> = current
            .tags
            .keys()
            .filter(|k| {
                !labels.contains_key(k)
                    && !LAUNCH_TAGS.contains(&k.as_str())
                    && !k.starts_with("aws:")
            })
            .map(ToString::to_string)
            .collect();
        let changed: Labels = labels
            .iter()
            .filter(|(k, v)| current.tags.get(k) != Some(*v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let failed = |e: api::Ec2Error| {
            if e.is_not_found() {
                self.sightings.forget(&lease.cloud_id);
            }
            e.into_provider("retagging the instance")
        };
        ec2.tag(&lease.cloud_id, &changed).await.map_err(failed)?;
        ec2.untag(&lease.cloud_id, &dropped).await.map_err(failed)?;
        let mut now = current;
        now.tags.retain(|k, _| !dropped.iter().any(|d| d == k));
        now.tags.extend(changed);
        self.saw(&now);
        Ok(())
    }

    async fn sweep(&self, pond: &str) -> Result<Vec<String>, ProviderError> {
        check_pond(pond)?;
        // Only what was observed counts: a failed listing sweeps nothing.
        let regions = self.regions().await?;
        let ponds = [pond];
        let by_pond: [(&str, &[&str]); 1] = [("tag:pond", &ponds)];
        let key_filters: [(&str, &[&str]); 2] = [("tag:crabbox", &["true"]), ("tag:pond", &ponds)];
        let (instances, keys) = tokio::try_join!(self.instances(&by_pond), async {
            let listed = futures_util::future::try_join_all(
                regions.iter().map(|ec2| ec2.key_pairs(&key_filters)),
            )
            .await
            .map_err(|e| e.into_provider("listing key pairs"))?;
            Ok(regions
                .iter()
                .zip(listed)
                .flat_map(|(ec2, keys)| keys.into_iter().map(move |k| (ec2, k)))
                .collect::<Vec<_>>())
        })?;
        let live: HashSet<String> = instances
            .into_iter()
            .filter_map(|i| i.tags.get(labels::LEASE).map(ToString::to_string))
            .collect();
        let mut removed = Vec::new();
        let mut left = Vec::new();
        let mut swept = HashSet::new();
        for (ec2, (name, tags)) in keys {
            let Some(lease) = tags.get(labels::LEASE).map(ToString::to_string) else {
                continue;
            };
            if live.contains(&lease)
                || !is_lease_id(&lease)
                || !launch::key_is_lease(&tags, &lease)
                || name != names::key_name(&lease)
            {
                continue;
            }
            match ec2.delete_key(&name).await {
                Ok(()) => removed.push(format!(
                    "aws key pair `{name}` (lease {lease} has no instance)"
                )),
                Err(e) => left.push(format!("aws key pair `{name}`: {e}")),
            }
            swept.insert(lease);
        }
        self.leases
            .finish_sweep(pond, &live, &swept, removed, left)
            .await
    }

    async fn ssh_target(&self, lease: &Lease) -> Option<SshTarget> {
        self.leases.known_target(lease)
    }

    async fn release(&self, lease: &Lease) -> Result<(), ProviderError> {
        let ec2 = self.ec2_of(lease).await?;
        let closing = self.leases.close_stale_master(&lease.id);
        // A termination cannot be undone: ownership is always read afresh.
        let (owned, ()) = tokio::join!(self.owned_instance(&ec2, lease), closing);
        let outcome = match owned {
            Ok(_) => ec2
                .terminate(&lease.cloud_id)
                .await
                .map_err(|e| e.into_provider("terminating the instance")),
            Err(e @ ProviderError::NotFound(_)) => Err(e),
            Err(e) => return Err(e),
        };
        if let Err(e) = &outcome
            && !matches!(e, ProviderError::NotFound(_))
        {
            return outcome;
        }
        self.sightings.forget(&lease.cloud_id);
        // The instance is gone: its key pair, host key and local state go too.
        self.leases.forget_server(lease).await;
        if is_lease_id(&lease.id) {
            delete_lease_key(&ec2, &lease.id).await.map_err(|e| {
                ProviderError::Failed(format!(
                    "aws instance {} was terminated, but its key pair `{}` was not deleted: {e}",
                    lease.cloud_id,
                    names::key_name(&lease.id)
                ))
            })?;
            self.leases.remove_lease_files(&lease.id)?;
        }
        outcome
    }
}

#[async_trait]
impl SshTargets for AwsProvider {
    async fn ssh_target_of(&self, lease: &Lease) -> Result<SshTarget, ProviderError> {
        self.leases
            .target(lease, || async {
                let ec2 = self.ec2_of(lease).await?;
                let instance = self.owned_instance(&ec2, lease).await?;
                instance.public_ip.or(instance.private_ip).ok_or_else(|| {
                    ProviderError::Failed(format!(
                        "aws instance {} (lease {}) has no address",
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
