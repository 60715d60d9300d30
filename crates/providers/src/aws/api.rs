//! The EC2 calls crabbox makes, over the official SDK, in crabbox's terms:
//! instances with their tags as [`Labels`], every page of a listing, and
//! errors carrying the EC2 error code (EC2 models no typed errors, so the
//! code is what fallback and "already gone" decisions read).

use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::interceptors::InterceptorContext;
use aws_sdk_ec2::config::retry::{ClassifyRetry, RetryAction};
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::operation::run_instances::RunInstancesError;
use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, Filter, IamInstanceProfileSpecification,
    InstanceInterruptionBehavior, InstanceMarketOptionsRequest, InstanceStateName, InstanceType,
    IpPermission, IpRange, MarketType, ResourceType, SpotInstanceType, SpotMarketOptions, Tag,
    TagSpecification, VolumeType,
};
use aws_smithy_runtime_api::client::retries::classifiers::RetryClassifierPriority;
use crabbox_core::labels::Labels;
use crabbox_core::provider::ProviderError;

/// Instance states that hold (or will hold) a machine: what discovery lists.
pub const LIVE_STATES: [&str; 4] = ["pending", "running", "stopping", "stopped"];

/// Error codes that mean the credentials were refused (exit 3).
const AUTH_CODES: [&str; 8] = [
    "AuthFailure",
    "UnauthorizedOperation",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "RequestExpired",
    "OptInRequired",
    "Blocked",
];

/// Error codes of throttling the SDK's retries did not outlast.
const THROTTLE_CODES: [&str; 3] = [
    "RequestLimitExceeded",
    "Throttling",
    "EC2ThrottledException",
];

/// A failed EC2 call: its error code (empty when the call never got an
/// answer) and the whole error in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ec2Error {
    /// EC2's error code (`InsufficientInstanceCapacity`, `InvalidKeyPair.Duplicate`…).
    pub code: String,
    /// What happened, with the SDK's context.
    pub message: String,
}

impl Ec2Error {
    fn from_sdk<E, R>(e: &SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        // A service error says it in one line; anything else (timeouts,
        // connection failures) needs the SDK's whole chain.
        match e.code() {
            Some(code) => Self {
                code: code.to_owned(),
                message: format!("{code}: {}", e.message().unwrap_or("(no message)")),
            },
            None => Self {
                code: String::new(),
                message: DisplayErrorContext(e).to_string(),
            },
        }
    }

    /// Whether EC2 said the thing does not exist (any more).
    #[must_use]
    pub fn is_not_found(&self) -> bool {
        self.code.ends_with(".NotFound")
    }

    /// As a [`ProviderError`], `doing` saying which call failed.
    #[must_use]
    pub fn into_provider(self, doing: &str) -> ProviderError {
        let message = format!("aws: {doing}: {}", self.message);
        if AUTH_CODES.contains(&self.code.as_str()) {
            ProviderError::Credentials {
                message,
                hint: crate::aws::sdk::CREDENTIALS_HINT.to_owned(),
            }
        } else if THROTTLE_CODES.contains(&self.code.as_str()) || self.code.is_empty() {
            ProviderError::Retryable {
                message,
                retry_after: None,
            }
        } else if self.is_not_found() {
            ProviderError::NotFound(message)
        } else {
            ProviderError::Failed(message)
        }
    }
}

impl std::fmt::Display for Ec2Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// One instance, as crabbox reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// `i-…`.
    pub id: String,
    /// `pending`, `running`, `terminated`…
    pub state: String,
    /// Its tags.
    pub tags: Labels,
    /// Public IPv4, once it has one.
    pub public_ip: Option<String>,
    /// Private IPv4.
    pub private_ip: Option<String>,
    /// `t3.small`…
    pub instance_type: String,
}

impl Instance {
    fn of(i: &aws_sdk_ec2::types::Instance) -> Self {
        Self {
            id: i.instance_id().unwrap_or_default().to_owned(),
            state: i
                .state()
                .and_then(|s| s.name())
                .map(|n| n.as_str().to_owned())
                .unwrap_or_default(),
            tags: tags_of(i.tags()),
            public_ip: i.public_ip_address().map(str::to_owned),
            private_ip: i.private_ip_address().map(str::to_owned),
            instance_type: i
                .instance_type()
                .map(|t| t.as_str().to_owned())
                .unwrap_or_default(),
        }
    }

    /// Whether it is gone or going.
    #[must_use]
    pub fn is_terminated(&self) -> bool {
        matches!(
            InstanceStateName::from(self.state.as_str()),
            InstanceStateName::ShuttingDown | InstanceStateName::Terminated
        )
    }
}

fn tags_of(tags: &[Tag]) -> Labels {
    tags.iter()
        .filter_map(|t| Some((t.key()?.into(), t.value().unwrap_or_default().into())))
        .collect()
}

fn tags(labels: &Labels) -> Vec<Tag> {
    labels
        .iter()
        .map(|(k, v)| Tag::builder().key(k.as_str()).value(v.as_str()).build())
        .collect()
}

/// Tag specifications for `resources`, each carrying `labels`; none when
/// there are no labels (EC2 refuses an empty specification).
fn tagged(resources: &[ResourceType], labels: &Labels) -> Option<Vec<TagSpecification>> {
    (!labels.is_empty()).then(|| {
        resources
            .iter()
            .map(|r| {
                TagSpecification::builder()
                    .resource_type(r.clone())
                    .set_tags(Some(tags(labels)))
                    .build()
            })
            .collect()
    })
}

fn filter(name: &str, values: &[&str]) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.iter().map(|v| (*v).to_owned()).collect()))
        .build()
}

/// How to buy the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Market {
    /// One-time spot, terminated on interruption.
    Spot,
    /// On-demand.
    OnDemand,
}

/// One `RunInstances` call.
#[derive(Debug, Clone)]
pub struct Launch {
    /// Idempotency token (the lease ID); not relied upon.
    pub client_token: String,
    /// AMI.
    pub image_id: String,
    /// Instance type.
    pub instance_type: String,
    /// Key pair name.
    pub key_name: String,
    /// Security group.
    pub security_group_id: String,
    /// Subnet, when chosen.
    pub subnet_id: Option<String>,
    /// IAM instance profile name.
    pub instance_profile: Option<String>,
    /// Root volume size (encrypted gp3).
    pub root_gb: i32,
    /// Root device name of the AMI (`/dev/sda1` for Ubuntu).
    pub root_device: String,
    /// Cloud-init user data (plain text; encoded here).
    pub user_data: String,
    /// Spot or on-demand.
    pub market: Market,
    /// Every label, tagged on the instance, its volumes and its spot request
    /// in the create call itself.
    pub tags: Labels,
}

/// A `RunInstances` refused for capacity, quota or an unoffered type is
/// answered at once, not retried: EC2 sends `InsufficientInstanceCapacity`
/// as a 500, which the SDK's retry would repeat with backoff before the
/// next type or market could be tried (the refusal is about this type,
/// here, now — asking again seconds later rarely changes it).
#[derive(Debug)]
struct LaunchRefusalsAreFinal;

impl ClassifyRetry for LaunchRefusalsAreFinal {
    fn classify_retry(&self, ctx: &InterceptorContext) -> RetryAction {
        let Some(Err(error)) = ctx.output_or_error() else {
            return RetryAction::NoActionIndicated;
        };
        let refused = error
            .as_operation_error()
            .and_then(|e| e.downcast_ref::<RunInstancesError>())
            .and_then(|e| e.code().map(|code| (code, e.message().unwrap_or_default())))
            .is_some_and(|(code, message)| {
                crate::aws::capacity::classify(code, message)
                    != crate::aws::capacity::Verdict::Fatal
            });
        if refused {
            RetryAction::RetryForbidden
        } else {
            RetryAction::NoActionIndicated
        }
    }

    fn name(&self) -> &'static str {
        "crabbox: launch refusals are final"
    }

    fn priority(&self) -> RetryClassifierPriority {
        // After the SDK's own classifiers, so this verdict stands.
        RetryClassifierPriority::run_after(RetryClassifierPriority::transient_error_classifier())
    }
}

/// Instances per `DescribeInstances` page: EC2's largest (it allows 5 to 1,000).
const PAGE_SIZE: i32 = 1000;

/// The EC2 client with crabbox's calls.
#[derive(Debug, Clone)]
pub struct Ec2 {
    client: Client,
    page_size: i32,
}

impl Ec2 {
    /// A client for `config` (see [`crate::aws::sdk::load`]).
    #[must_use]
    pub fn new(config: &aws_config::SdkConfig) -> Self {
        let config = aws_sdk_ec2::config::Builder::from(config)
            .retry_classifier(LaunchRefusalsAreFinal)
            .build();
        Self {
            client: Client::from_conf(config),
            page_size: PAGE_SIZE,
        }
    }

    /// Lists `n` instances a page (clamped to EC2's 5 to 1,000), so that
    /// tests see several pages without a thousand instances.
    #[must_use]
    pub fn with_page_size(mut self, n: i32) -> Self {
        self.page_size = n.clamp(5, PAGE_SIZE);
        self
    }

    /// Every instance matching `filters` (`tag:KEY`, `instance-state-name`…),
    /// all pages.
    ///
    /// # Errors
    /// The failed page's [`Ec2Error`].
    pub async fn instances(&self, filters: &[(&str, &[&str])]) -> Result<Vec<Instance>, Ec2Error> {
        let mut pages = self
            .client
            .describe_instances()
            .set_filters(Some(filters.iter().map(|(n, v)| filter(n, v)).collect()))
            .max_results(self.page_size)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| Ec2Error::from_sdk(&e))?;
            for r in page.reservations() {
                out.extend(r.instances().iter().map(Instance::of));
            }
        }
        Ok(out)
    }

    /// One instance by ID (`None`: EC2 does not know it).
    ///
    /// # Errors
    /// Any other [`Ec2Error`].
    pub async fn instance(&self, id: &str) -> Result<Option<Instance>, Ec2Error> {
        match self
            .client
            .describe_instances()
            .instance_ids(id)
            .send()
            .await
        {
            Ok(out) => Ok(out
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .map(Instance::of)
                .next()),
            Err(e) => {
                let e = Ec2Error::from_sdk(&e);
                if e.is_not_found() { Ok(None) } else { Err(e) }
            }
        }
    }

    /// Launches one instance with every tag in the request.
    ///
    /// # Errors
    /// EC2's [`Ec2Error`] (capacity codes drive the caller's fallback).
    pub async fn run(&self, launch: &Launch) -> Result<Instance, Ec2Error> {
        use base64::Engine as _;
        let mut call = self
            .client
            .run_instances()
            .client_token(&launch.client_token)
            .image_id(&launch.image_id)
            .instance_type(InstanceType::from(launch.instance_type.as_str()))
            .min_count(1)
            .max_count(1)
            .key_name(&launch.key_name)
            .security_group_ids(&launch.security_group_id)
            .set_subnet_id(launch.subnet_id.clone())
            .user_data(base64::engine::general_purpose::STANDARD.encode(&launch.user_data))
            .block_device_mappings(
                BlockDeviceMapping::builder()
                    .device_name(&launch.root_device)
                    .ebs(
                        EbsBlockDevice::builder()
                            .volume_size(launch.root_gb)
                            .volume_type(VolumeType::Gp3)
                            .encrypted(true)
                            .delete_on_termination(true)
                            .build(),
                    )
                    .build(),
            )
            .set_tag_specifications(tagged(
                if launch.market == Market::Spot {
                    &[
                        ResourceType::Instance,
                        ResourceType::Volume,
                        ResourceType::SpotInstancesRequest,
                    ]
                } else {
                    &[ResourceType::Instance, ResourceType::Volume]
                },
                &launch.tags,
            ));
        if let Some(profile) = &launch.instance_profile {
            call = call.iam_instance_profile(
                IamInstanceProfileSpecification::builder()
                    .name(profile)
                    .build(),
            );
        }
        if launch.market == Market::Spot {
            call = call.instance_market_options(
                InstanceMarketOptionsRequest::builder()
                    .market_type(MarketType::Spot)
                    .spot_options(
                        SpotMarketOptions::builder()
                            .spot_instance_type(SpotInstanceType::OneTime)
                            .instance_interruption_behavior(InstanceInterruptionBehavior::Terminate)
                            .build(),
                    )
                    .build(),
            );
        }
        let out = call.send().await.map_err(|e| Ec2Error::from_sdk(&e))?;
        out.instances()
            .first()
            .map(Instance::of)
            .ok_or_else(|| Ec2Error {
                code: String::new(),
                message: "RunInstances answered without an instance".to_owned(),
            })
    }

    /// Adds or overwrites `labels` on `resource`.
    ///
    /// # Errors
    /// EC2's [`Ec2Error`].
    pub async fn tag(&self, resource: &str, labels: &Labels) -> Result<(), Ec2Error> {
        if labels.is_empty() {
            return Ok(());
        }
        self.client
            .create_tags()
            .resources(resource)
            .set_tags(Some(tags(labels)))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| Ec2Error::from_sdk(&e))
    }

    /// Removes the tags named `keys` from `resource`.
    ///
    /// # Errors
    /// EC2's [`Ec2Error`].
    pub async fn untag(&self, resource: &str, keys: &[String]) -> Result<(), Ec2Error> {
        if keys.is_empty() {
            return Ok(());
        }
        self.client
            .delete_tags()
            .resources(resource)
            .set_tags(Some(
                keys.iter().map(|k| Tag::builder().key(k).build()).collect(),
            ))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| Ec2Error::from_sdk(&e))
    }

    /// Terminates an instance; one EC2 no longer knows counts as done.
    ///
    /// # Errors
    /// Any other [`Ec2Error`].
    pub async fn terminate(&self, id: &str) -> Result<(), Ec2Error> {
        match self
            .client
            .terminate_instances()
            .instance_ids(id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = Ec2Error::from_sdk(&e);
                if e.is_not_found() { Ok(()) } else { Err(e) }
            }
        }
    }

    /// Imports `public_key` (OpenSSH format) as key pair `name`, tagged;
    /// returns its ID.
    ///
    /// # Errors
    /// EC2's [`Ec2Error`] (`InvalidKeyPair.Duplicate` when the name is taken).
    pub async fn import_key(
        &self,
        name: &str,
        public_key: &str,
        labels: &Labels,
    ) -> Result<String, Ec2Error> {
        let out = self
            .client
            .import_key_pair()
            .key_name(name)
            .public_key_material(aws_sdk_ec2::primitives::Blob::new(public_key.as_bytes()))
            .set_tag_specifications(tagged(&[ResourceType::KeyPair], labels))
            .send()
            .await
            .map_err(|e| Ec2Error::from_sdk(&e))?;
        Ok(out.key_pair_id().unwrap_or_default().to_owned())
    }

    /// The tags of key pair `name` (`None`: no such key pair).
    ///
    /// # Errors
    /// Any other [`Ec2Error`].
    pub async fn key_tags(&self, name: &str) -> Result<Option<Labels>, Ec2Error> {
        match self
            .client
            .describe_key_pairs()
            .key_names(name)
            .send()
            .await
        {
            Ok(out) => Ok(out.key_pairs().first().map(|k| tags_of(k.tags()))),
            Err(e) => {
                let e = Ec2Error::from_sdk(&e);
                if e.is_not_found() { Ok(None) } else { Err(e) }
            }
        }
    }

    /// Every key pair matching `filters` (`tag:KEY`…): its name and tags.
    ///
    /// # Errors
    /// EC2's [`Ec2Error`].
    pub async fn key_pairs(
        &self,
        filters: &[(&str, &[&str])],
    ) -> Result<Vec<(String, Labels)>, Ec2Error> {
        let out = self
            .client
            .describe_key_pairs()
            .set_filters(Some(filters.iter().map(|(n, v)| filter(n, v)).collect()))
            .send()
            .await
            .map_err(|e| Ec2Error::from_sdk(&e))?;
        Ok(out
            .key_pairs()
            .iter()
            .filter_map(|k| Some((k.key_name()?.to_owned(), tags_of(k.tags()))))
            .collect())
    }

    /// Deletes key pair `name` (by name: some EC2-compatible endpoints
    /// ignore `KeyPairId`); a missing one counts as done.
    ///
    /// # Errors
    /// Any other [`Ec2Error`].
    pub async fn delete_key(&self, name: &str) -> Result<(), Ec2Error> {
        match self.client.delete_key_pair().key_name(name).send().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = Ec2Error::from_sdk(&e);
                if e.is_not_found() { Ok(()) } else { Err(e) }
            }
        }
    }

    /// The security group named `name` in `vpc` (or any VPC): its ID, tags
    /// and the SSH ranges of its ingress rules.
    ///
    /// # Errors
    /// EC2's [`Ec2Error`].
    pub async fn security_group(
        &self,
        name: &str,
        vpc: Option<&str>,
    ) -> Result<Option<SecurityGroup>, Ec2Error> {
        let mut filters = vec![filter("group-name", &[name])];
        if let Some(vpc) = vpc {
            filters.push(filter("vpc-id", &[vpc]));
        }
        let out = self
            .client
            .describe_security_groups()
            .set_filters(Some(filters))
            .send()
            .await
            .map_err(|e| Ec2Error::from_sdk(&e))?;
        Ok(out.security_groups().first().map(|g| SecurityGroup {
            id: g.group_id().unwrap_or_default().to_owned(),
            tags: tags_of(g.tags()),
            tcp_ranges: g
                .ip_permissions()
                .iter()
                .filter(|p| p.ip_protocol() == Some("tcp"))
                .filter_map(|p| {
                    let port = u16::try_from(p.from_port()?).ok()?;
                    (p.to_port() == p.from_port()).then_some((port, p))
                })
                .flat_map(|(port, p)| {
                    p.ip_ranges()
                        .iter()
                        .filter_map(move |r| Some((port, r.cidr_ip()?.to_owned())))
                })
                .collect(),
        }))
    }

    /// Creates security group `name` in `vpc`, tagged; returns its ID.
    ///
    /// # Errors
    /// EC2's [`Ec2Error`].
    pub async fn create_security_group(
        &self,
        name: &str,
        description: &str,
        vpc: Option<&str>,
        labels: &Labels,
    ) -> Result<String, Ec2Error> {
        let out = self
            .client
            .create_security_group()
            .group_name(name)
            .description(description)
            .set_vpc_id(vpc.map(str::to_owned))
            .set_tag_specifications(tagged(&[ResourceType::SecurityGroup], labels))
            .send()
            .await
            .map_err(|e| Ec2Error::from_sdk(&e))?;
        Ok(out.group_id().unwrap_or_default().to_owned())
    }

    /// Allows SSH (TCP `port`) from `cidrs` into group `id`, each range
    /// described `description`; ranges already allowed are not an error.
    ///
    /// # Errors
    /// EC2's [`Ec2Error`].
    pub async fn allow_ssh(
        &self,
        id: &str,
        port: u16,
        cidrs: &[String],
        description: &str,
    ) -> Result<(), Ec2Error> {
        if cidrs.is_empty() {
            return Ok(());
        }
        let permission = IpPermission::builder()
            .ip_protocol("tcp")
            .from_port(i32::from(port))
            .to_port(i32::from(port))
            .set_ip_ranges(Some(
                cidrs
                    .iter()
                    .map(|c| {
                        IpRange::builder()
                            .cidr_ip(c)
                            .description(description)
                            .build()
                    })
                    .collect(),
            ))
            .build();
        match self
            .client
            .authorize_security_group_ingress()
            .group_id(id)
            .ip_permissions(permission)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = Ec2Error::from_sdk(&e);
                if e.code == "InvalidPermission.Duplicate" {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    /// The newest available image owned by `owner` whose name matches
    /// `name_pattern` (EC2 wildcards) for `architecture` (`x86_64`, `arm64`):
    /// its ID and root device name.
    ///
    /// # Errors
    /// EC2's [`Ec2Error`].
    pub async fn newest_image(
        &self,
        owner: &str,
        name_pattern: &str,
        architecture: &str,
    ) -> Result<Option<(String, String)>, Ec2Error> {
        let out = self
            .client
            .describe_images()
            .owners(owner)
            .filters(filter("name", &[name_pattern]))
            .filters(filter("architecture", &[architecture]))
            .filters(filter("state", &["available"]))
            .send()
            .await
            .map_err(|e| Ec2Error::from_sdk(&e))?;
        let mut images: Vec<_> = out.images().iter().collect();
        images.sort_by(|a, b| b.creation_date().cmp(&a.creation_date()));
        Ok(images.first().map(|i| {
            (
                i.image_id().unwrap_or_default().to_owned(),
                i.root_device_name().unwrap_or("/dev/sda1").to_owned(),
            )
        }))
    }
}

/// A security group as crabbox reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityGroup {
    /// `sg-…`.
    pub id: String,
    /// Its tags.
    pub tags: Labels,
    /// Its TCP ingress ranges: (port, CIDR) of single-port rules.
    pub tcp_ranges: Vec<(u16, String)>,
}
