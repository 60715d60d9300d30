//! The static `ssh` provider: an existing host named in the member's `ssh:`
//! block. Nothing is created on a cloud, so there are no labels: the lease
//! lives in its claim file (Crabbox's `static*` fields carry the endpoint).
//! Create prepares a work root of the lease's own on the host; release stops
//! what crabbox started there, removes that directory and nothing else.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;

use crate::claim_backed::{self, extra_str, pending_claim, pond_claims};
use crate::registry::Descriptor;
use crabbox_exec::session::{Session, SshSession, SshTargets};
use crabbox_spec::providers::SshBlock;
use serde_json::Value;

use crate::{CreateRequest, Provider};
use crabbox_core::labels::Labels;
use crabbox_core::lease::{Endpoint, Lease, mint};
use crabbox_core::normalize::normalize_name;
use crabbox_core::provider::ProviderError;
use crabbox_core::provider::ProviderName;
use crabbox_exec::ssh::SshTarget;
use crabbox_spec::desired::DesiredMember;
use crabbox_state::claims::{Claim, ClaimStore};
use crabbox_state::state_dir::expand_tilde;

/// How long to wait for a static host's SSH at create.
const SSH_WAIT: Duration = Duration::from_secs(60);
/// Default base of work roots on the host (relative to the login's home).
const DEFAULT_WORK_ROOT: &str = "crabbox";
/// The `ssh` adapter in the registry's table.
pub const DESCRIPTOR: Descriptor = Descriptor {
    name: ProviderName::Ssh,
    build: |dir, claims| Some(Arc::new(SshProvider::new(dir).with_claims(claims.clone()))),
    credentials: None,
    help: "",
    transport_refusal: None,
};

/// The static SSH provider.
pub struct SshProvider {
    state_dir: PathBuf,
    claims: ClaimStore,
    /// The lease IDs this process minted, with the pond and slug of the
    /// member each is for: two members of one apply on the same host would
    /// otherwise both write the claim `static_<host>`.
    minted: Mutex<HashMap<String, (String, String)>>,
}

impl SshProvider {
    /// A provider keeping its leases in the claim files under `state_dir`.
    #[must_use]
    pub fn new(state_dir: &Path) -> Self {
        Self {
            state_dir: state_dir.to_owned(),
            claims: ClaimStore::local(state_dir),
            minted: Mutex::new(HashMap::new()),
        }
    }

    /// The same provider keeping its leases in `claims` (the command's store).
    #[must_use]
    pub fn with_claims(self, claims: ClaimStore) -> Self {
        Self { claims, ..self }
    }

    /// The SSH target recorded in a lease's claim.
    async fn target(&self, lease: &Lease) -> Result<SshTarget, ProviderError> {
        let claim = self
            .claims
            .load(&lease.id)
            .await
            .map_err(ProviderError::state)?
            .ok_or_else(|| ProviderError::NotFound(format!("claim of {}", lease.id)))?;
        target_from_claim(&self.state_dir, &claim)
    }
}

fn target_from_claim(state_dir: &Path, claim: &Claim) -> Result<SshTarget, ProviderError> {
    let missing = |what: &str| {
        ProviderError::Failed(format!(
            "claim {} has no {what}; it was not written by a complete create",
            claim.lease_id
        ))
    };
    let host = extra_str(claim, "staticHost")
        .ok_or_else(|| missing("staticHost"))?
        .to_owned();
    let port = extra_str(claim, "staticPort")
        .and_then(|p| p.parse().ok())
        .unwrap_or(22);
    let user = extra_str(claim, "staticUser")
        .ok_or_else(|| missing("staticUser"))?
        .to_owned();
    let work_root = extra_str(claim, "staticWorkRoot")
        .ok_or_else(|| missing("staticWorkRoot"))?
        .to_owned();
    Ok(SshTarget {
        host,
        port,
        user,
        key: extra_str(claim, "staticKey").map(PathBuf::from),
        work_root,
        state_dir: state_dir.to_owned(),
        lease_id: claim.lease_id.clone(),
    })
}

/// A static host's lease: its address from the claim, its cloud ID the
/// lease ID when the claim has none (a host is not a cloud resource).
fn lease_from_claim(claim: &Claim) -> Lease {
    let endpoint = Endpoint {
        host: extra_str(claim, "staticHost").map(str::to_owned),
        ssh_port: extra_str(claim, "staticPort").and_then(|p| p.parse().ok()),
        url: None,
        shares: Vec::new(),
    };
    let mut lease = claim_backed::lease_from_claim(claim, ProviderName::Ssh, endpoint);
    if lease.cloud_id.is_empty() {
        lease.cloud_id.clone_from(&lease.id);
    }
    lease
}

/// A member's `ssh:` block and its host.
fn block_and_host(member: &DesiredMember) -> Result<(SshBlock, String), ProviderError> {
    let block: SshBlock = crate::block_of(member)?;
    let host = block
        .host
        .clone()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| ProviderError::Config {
            message: format!("member `{}` has no ssh.host", member.slug),
            hint: "set `ssh: { host: … }` on the member".to_owned(),
        })?;
    Ok((block, host))
}

/// Four random hex digits.
fn random_hex4() -> String {
    let mut bytes = [0u8; 2];
    getrandom::fill(&mut bytes).expect("the OS provides randomness");
    format!("{:02x}{:02x}", bytes[0], bytes[1])
}

/// The current user's name, for an `ssh:` block without `user`.
fn current_user() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "root".to_owned())
}

#[async_trait]
impl Provider for SshProvider {
    fn session<'a>(&'a self, lease: &'a Lease) -> Box<dyn Session + 'a> {
        Box::new(SshSession::new(self, lease))
    }

    fn name(&self) -> ProviderName {
        ProviderName::Ssh
    }

    async fn list(&self, pond: &str) -> Result<Vec<Lease>, ProviderError> {
        // A pending claim that create never completed has no host.
        let claims = pond_claims(&self.claims, ProviderName::Ssh, pond, |c| {
            extra_str(c, "staticHost").is_some()
        })
        .await?;
        Ok(claims.iter().map(lease_from_claim).collect())
    }

    /// `static_<normalized host>`, as Crabbox names a static lease
    /// (static.go:66-73). When that ID already belongs to another member
    /// (its claim, or minted for it by this process), the member gets
    /// `static_<host>-<pond>-<slug>` instead, as if Crabbox's `static.id`
    /// had been set for it (Crabbox takes that ID verbatim and finds the
    /// host through the claim's `staticHost`), and a random suffix after
    /// that when even this one is taken (a replacement made before its
    /// predecessor is released).
    async fn lease_id(&self, pond: &str, member: &DesiredMember) -> Result<String, ProviderError> {
        let (_, host) = block_and_host(member)?;
        let base = mint::static_host(&host);
        let own = format!(
            "{base}-{}",
            normalize_name(&format!("{pond}-{}", member.slug))
        );
        let candidates = [base, own.clone(), format!("{own}-{}", random_hex4())];
        for id in candidates {
            let claim = self.claims.load(&id).await.map_err(ProviderError::state)?;
            // Free: no claim, or the pending claim of a create of this very
            // member that never got as far as recording the host.
            let free = claim.is_none_or(|c| {
                c.pond == pond && c.slug == member.slug && extra_str(&c, "staticHost").is_none()
            });
            let mut minted = self.minted.lock().unwrap_or_else(PoisonError::into_inner);
            let mine = minted
                .get(&id)
                .is_none_or(|(p, s)| (p.as_str(), s.as_str()) == (pond, member.slug.as_str()));
            if free && mine {
                minted.insert(id.clone(), (pond.to_owned(), member.slug.clone()));
                return Ok(id);
            }
        }
        Err(ProviderError::Failed(format!(
            "member `{}`: no free lease ID for ssh host `{host}`",
            member.slug
        )))
    }

    async fn create(&self, request: &CreateRequest) -> Result<Lease, ProviderError> {
        let (block, host) = block_and_host(&request.member)?;
        let get = |v: &Option<String>| v.as_deref().filter(|s| !s.is_empty()).map(str::to_owned);
        let base = get(&block.work_root).unwrap_or_else(|| DEFAULT_WORK_ROOT.to_owned());
        let base = base.trim_end_matches('/');
        let mut claim = pending_claim(&self.claims, &request.lease_id).await?;
        let port = block.port.unwrap_or(22);
        let set = |claim: &mut Claim, k: &str, v: String| {
            claim.extra.insert(k.to_owned(), Value::String(v));
        };
        set(&mut claim, "staticHost", host.clone());
        set(&mut claim, "staticPort", port.to_string());
        set(
            &mut claim,
            "staticUser",
            get(&block.user).unwrap_or_else(current_user),
        );
        set(
            &mut claim,
            "staticWorkRoot",
            format!("{base}/{}", request.lease_id),
        );
        if let Some(key) = get(&block.key) {
            set(
                &mut claim,
                "staticKey",
                expand_tilde(&key).display().to_string(),
            );
        }
        claim.cloud_id = mint::static_host(&host);
        claim.labels.clone_from(&request.labels);
        let claim = self.claims.write(&claim).await.map_err(|e| {
            ProviderError::Failed(format!("writing claim {}: {e}", request.lease_id))
        })?;
        let target = target_from_claim(&self.state_dir, &claim)?;
        target.wait_prepared("true", SSH_WAIT).await?;
        Ok(lease_from_claim(&claim))
    }

    async fn relabel(&self, lease: &Lease, labels: &Labels) -> Result<(), ProviderError> {
        let mut claim = self
            .claims
            .load(&lease.id)
            .await
            .map_err(ProviderError::state)?
            .ok_or_else(|| ProviderError::NotFound(lease.id.clone()))?;
        claim.labels.clone_from(labels);
        self.claims
            .write(&claim)
            .await
            .map_err(|e| ProviderError::Failed(format!("writing claim {}: {e}", lease.id)))?;
        Ok(())
    }

    async fn ssh_target(&self, lease: &Lease) -> Option<SshTarget> {
        self.target(lease).await.ok()
    }

    async fn release(&self, lease: &Lease) -> Result<(), ProviderError> {
        let target = self.target(lease).await?;
        target.remove_work_root().await?;
        target.close().await;
        Ok(())
    }
}

#[async_trait]
impl SshTargets for SshProvider {
    async fn ssh_target_of(&self, lease: &Lease) -> Result<SshTarget, ProviderError> {
        self.target(lease).await
    }
}
