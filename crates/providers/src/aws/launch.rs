//! What a create needs before `RunInstances`, and the launch itself: the
//! lease's key pair, the shared security group, the image, and the ordered
//! attempts (type, market) with every one reported as it is made.

use crabbox_core::labels::{self, Labels};
use crabbox_core::provider::ProviderError;
use crabbox_spec::providers::AwsBlock;

use crabbox_spec::desired::DesiredMember;
use crabbox_spec::model::Class;
use crabbox_spec::providers::AwsMarket;

use super::api::{Ec2, Instance, Launch, Market};
use super::capacity::{self, Arch, Want};
use crate::CreateRequest;
use crate::ssh_lease::names;

/// Canonical's AWS account: the owner of Ubuntu's official images.
const CANONICAL: &str = "099720109477";
/// The security group crabbox's instances share (Crabbox's name).
pub(crate) const SECURITY_GROUP: &str = "crabbox-runners";
/// Its description when crabbox creates it (Crabbox's words).
const SECURITY_GROUP_DESCRIPTION: &str = "Crabbox ephemeral test runners";
/// The description of crabbox's ingress ranges: not Crabbox's `Crabbox SSH`,
/// whose pruning revokes every range so described that is not its own
/// address — each tool leaves the other's ranges alone.
const INGRESS_DESCRIPTION: &str = "crabbox pond SSH";
/// Root volume size when the block names none (Crabbox's `rootGB`).
const DEFAULT_ROOT_GB: u32 = 400;

/// The labels crabbox's shared resources (group, key pairs) carry.
fn shared_labels() -> Labels {
    [(labels::CRABBOX, "true"), (labels::CREATED_BY, "crabbox")]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect()
}

/// The key pair a lease's instance launches with: the member's
/// `aws.key_name` (an existing key, never changed or deleted), else the
/// lease key imported as `crabbox-cbx-<hex>` (Crabbox's name for a lease's
/// key) tagged for this lease and pond. A key of that name left by an
/// earlier attempt of this lease is reused; one crabbox did not tag for
/// this lease is refused.
pub(crate) async fn key_pair(
    ec2: &Ec2,
    request: &CreateRequest,
    block: &AwsBlock,
    public_key: &str,
) -> Result<String, ProviderError> {
    if let Some(name) = block.key_name.as_deref().filter(|n| !n.is_empty()) {
        return Ok(name.to_owned());
    }
    let name = names::key_name(&request.lease_id);
    let mut tags = shared_labels();
    tags.insert(labels::LEASE.into(), request.lease_id.as_str().into());
    tags.insert(labels::POND.into(), request.pond.as_str().into());
    match ec2.import_key(&name, public_key, &tags).await {
        Ok(_) => Ok(name),
        Err(e) if e.code == "InvalidKeyPair.Duplicate" => {
            let existing = ec2
                .key_tags(&name)
                .await
                .map_err(|e| e.into_provider("reading key pair"))?;
            if existing.is_some_and(|t| key_is_lease(&t, &request.lease_id)) {
                Ok(name)
            } else {
                Err(ProviderError::Failed(format!(
                    "aws: a key pair named `{name}` exists that crabbox did not import for lease {}; delete or rename it",
                    request.lease_id
                )))
            }
        }
        Err(e) => Err(e.into_provider("importing the lease's key pair")),
    }
}

/// Whether key pair tags say crabbox imported it for `lease_id`.
pub(crate) fn key_is_lease(tags: &Labels, lease_id: &str) -> bool {
    tags.get(labels::CRABBOX).map(|v| v.as_str()) == Some("true")
        && tags.get(labels::LEASE).map(|v| v.as_str()) == Some(lease_id)
}

/// The security group instances launch into: the block's
/// `securityGroupId`, else `crabbox-runners` found (by name, as Crabbox
/// finds it) or created tagged `crabbox=true`; SSH from `cidrs` on every
/// port candidate is allowed into it (ranges already allowed stay).
pub(crate) async fn security_group(
    ec2: &Ec2,
    block: &AwsBlock,
    cidrs: &[String],
    ports: &[u16],
) -> Result<String, ProviderError> {
    let id = match block.security_group_id.as_deref().filter(|g| !g.is_empty()) {
        Some(id) => id.to_owned(),
        None => match ec2
            .security_group(SECURITY_GROUP, None)
            .await
            .map_err(|e| e.into_provider("finding security group crabbox-runners"))?
        {
            Some(group) => group.id,
            None => {
                let mut tags = shared_labels();
                tags.insert("Name".into(), SECURITY_GROUP.into());
                match ec2
                    .create_security_group(SECURITY_GROUP, SECURITY_GROUP_DESCRIPTION, None, &tags)
                    .await
                {
                    Ok(id) => id,
                    // Another process created it meanwhile.
                    Err(e) if e.code == "InvalidGroup.Duplicate" => ec2
                        .security_group(SECURITY_GROUP, None)
                        .await
                        .map_err(|e| e.into_provider("finding security group crabbox-runners"))?
                        .map(|g| g.id)
                        .ok_or_else(|| {
                            e.into_provider("creating security group crabbox-runners")
                        })?,
                    Err(e) => {
                        return Err(e.into_provider("creating security group crabbox-runners"));
                    }
                }
            }
        },
    };
    for port in ports {
        ec2.allow_ssh(&id, *port, cidrs, INGRESS_DESCRIPTION)
            .await
            .map_err(|e| e.into_provider("allowing SSH into the security group"))?;
    }
    Ok(id)
}

/// The image: the block's `ami`, else Canonical's newest Ubuntu 26.04 LTS
/// for `arch` (Crabbox's default image), and its root device name.
async fn image(
    ec2: &Ec2,
    block: &AwsBlock,
    arch: Arch,
    region: &str,
) -> Result<(String, String), ProviderError> {
    if let Some(ami) = block.ami.as_deref().filter(|a| !a.is_empty()) {
        return Ok((ami.to_owned(), "/dev/sda1".to_owned()));
    }
    let (arch, name_arch) = match arch {
        Arch::Arm64 => ("arm64", "arm64"),
        Arch::X86_64 => ("x86_64", "amd64"),
    };
    let pattern = format!("ubuntu/images/hvm-ssd-gp3/ubuntu-resolute-26.04-{name_arch}-server-*");
    ec2.newest_image(CANONICAL, &pattern, arch)
        .await
        .map_err(|e| e.into_provider("looking up the Ubuntu image"))?
        .ok_or_else(|| ProviderError::Config {
            message: format!("no Ubuntu 26.04 {arch} AMI from Canonical found in {region}"),
            hint: "set `aws.ami` to an image ID of the region".to_owned(),
        })
}

/// What is the same for every attempt of one create.
pub(crate) struct Plan<'a> {
    pub(crate) request: &'a CreateRequest,
    pub(crate) block: &'a AwsBlock,
    pub(crate) key_name: String,
    pub(crate) security_group: String,
    pub(crate) user_data: String,
    pub(crate) region: String,
}

/// Class when the member names neither class nor type (as for Hetzner).
const DEFAULT_CLASS: Class = Class::Standard;

/// What the member asks for: its exact `type`, else its class's types.
fn want(member: &DesiredMember) -> Want {
    match member.server_type.as_deref().filter(|t| !t.is_empty()) {
        Some(t) => Want::Type(t.to_owned()),
        None => Want::Class(member.class.unwrap_or(DEFAULT_CLASS), Arch::X86_64),
    }
}

/// The architecture of an instance type: Graviton families carry a `g`
/// after their generation (`m7g`, `c7gn`, `t4g`).
fn arch_of(instance_type: &str) -> Arch {
    let family = instance_type.split('.').next().unwrap_or_default();
    let after_generation = family
        .trim_start_matches(|c: char| c.is_ascii_alphabetic())
        .trim_start_matches(|c: char| c.is_ascii_digit());
    if after_generation.starts_with('g') {
        Arch::Arm64
    } else {
        Arch::X86_64
    }
}

/// The member's first market.
fn market(block: &AwsBlock) -> Market {
    match block.market.unwrap_or_default() {
        AwsMarket::Spot => Market::Spot,
        AwsMarket::OnDemand => Market::OnDemand,
    }
}

/// Launches the instance: the tries of [`capacity::Plan`] in order (the
/// class's types, then — with `aws.on_demand_fallback` — the spot refusals
/// on-demand), the next one only after EC2 refused the last for capacity,
/// quota or an unoffered type; every try and its outcome is reported on
/// stderr (the apply's progress). The instance carries every label, its
/// type, market, key and region, and `Name`, from the create call itself.
pub(crate) async fn run(ec2: &Ec2, plan: &Plan<'_>) -> Result<Instance, ProviderError> {
    let member = &plan.request.member;
    let want = want(member);
    let mut tries = capacity::Plan::new(
        &want,
        market(plan.block),
        plan.block.on_demand_fallback.unwrap_or(false),
    );
    let mut refused: Vec<String> = Vec::new();
    let mut images: Vec<(Arch, (String, String))> = Vec::new();
    while let Some(attempt) = tries.next_attempt() {
        let arch = arch_of(&attempt.instance_type);
        let image = match images.iter().find(|(a, _)| *a == arch) {
            Some((_, image)) => image.clone(),
            None => {
                let image = image(ec2, plan.block, arch, &plan.region).await?;
                images.push((arch, image.clone()));
                image
            }
        };
        let market = match attempt.market {
            Market::Spot => "spot",
            Market::OnDemand => "on-demand",
        };
        let mut tags = plan.request.labels.clone();
        tags.insert(
            labels::SERVER_TYPE.into(),
            labels::sanitize(&attempt.instance_type),
        );
        tags.insert(
            labels::PROVIDER_KEY.into(),
            labels::sanitize(&plan.key_name),
        );
        tags.insert("market".into(), market.into());
        tags.insert("aws_region".into(), plan.region.as_str().into());
        tags.insert(
            "Name".into(),
            names::server_name(&member.slug, &plan.request.lease_id).into(),
        );
        let launch = Launch {
            client_token: plan.request.lease_id.clone(),
            image_id: image.0,
            instance_type: attempt.instance_type.clone(),
            key_name: plan.key_name.clone(),
            security_group_id: plan.security_group.clone(),
            subnet_id: plan.block.subnet_id.clone().filter(|s| !s.is_empty()),
            instance_profile: plan
                .block
                .instance_profile
                .clone()
                .filter(|p| !p.is_empty()),
            root_gb: i32::try_from(plan.block.root_gb.unwrap_or(DEFAULT_ROOT_GB))
                .unwrap_or(i32::MAX),
            root_device: image.1,
            user_data: plan.user_data.clone(),
            market: attempt.market,
            tags,
        };
        eprintln!(
            "aws: {}: launching {attempt} in {}",
            member.slug, plan.region
        );
        match ec2.run(&launch).await {
            Ok(instance) => {
                eprintln!("aws: {}: launched {} ({attempt})", member.slug, instance.id);
                return Ok(instance);
            }
            Err(e) => {
                let verdict = capacity::classify(&e.code, &e.message);
                eprintln!("aws: {}: {attempt} refused: {}", member.slug, e.message);
                if verdict == capacity::Verdict::Fatal {
                    return Err(e.into_provider("RunInstances"));
                }
                refused.push(format!("{attempt}: {}", e.message));
                tries.refused(&attempt, verdict);
            }
        }
    }
    Err(match want {
        Want::Type(t) => ProviderError::Failed(format!(
            "aws: instance type `{t}` could not be launched in {} ({}); it is pinned by the member's `type` and never falls back — use a `class` to allow other types",
            plan.region,
            refused.join("; ")
        )),
        Want::Class(class, _) => ProviderError::Failed(format!(
            "aws: no instance type of class `{}` could be launched in {}: {}",
            class.as_str(),
            plan.region,
            refused.join("; ")
        )),
    })
}

/// An instance crabbox launched for this lease, found by its `lease` tag:
/// what a create adopts instead of launching a second one when an earlier
/// attempt's `RunInstances` answer was lost (crabbox killed, or a
/// connection cut) — EC2-compatible endpoints may ignore `ClientToken`.
pub(crate) async fn adoptable(
    ec2: &Ec2,
    request: &CreateRequest,
) -> Result<Option<Instance>, ProviderError> {
    let found = ec2
        .instances(&[
            ("tag:crabbox", &["true"]),
            ("tag:lease", &[request.lease_id.as_str()]),
            ("tag:pond", &[request.pond.as_str()]),
            ("instance-state-name", &super::api::LIVE_STATES),
        ])
        .await
        .map_err(|e| e.into_provider("looking for the lease's instance"))?;
    Ok(found.into_iter().find(|i| !i.is_terminated()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graviton_types_are_arm64() {
        for t in ["m7g.large", "c7gn.xlarge", "t4g.small", "r7g.8xlarge"] {
            assert_eq!(arch_of(t), Arch::Arm64, "{t}");
        }
        for t in ["m7a.large", "c7i.8xlarge", "t3.small", "mac2.metal"] {
            assert_eq!(arch_of(t), Arch::X86_64, "{t}");
        }
    }
}
