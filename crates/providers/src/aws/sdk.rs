//! Loading the AWS SDK the way every AWS tool does: the standard credential
//! chain (environment, profiles and SSO, web identity — what GitHub Actions'
//! OIDC role assumption sets —, containers, instance metadata), the region
//! from the spec, else the SDK's chain, else `eu-west-1`, and endpoint
//! overrides through the SDK's own `AWS_ENDPOINT_URL_EC2` /
//! `AWS_ENDPOINT_URL` (which the tests use to reach moto).

use std::time::Duration;

use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_ec2::config::ProvideCredentials as _;
use crabbox_core::provider::ProviderError;

/// Region used when neither the spec nor the SDK's chain names one
/// (Crabbox's default).
pub const DEFAULT_REGION: &str = "eu-west-1";

/// What to set when no credentials are found.
pub const CREDENTIALS_HINT: &str = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE (profiles and SSO: `aws configure sso`), or in GitHub Actions assume a role with aws-actions/configure-aws-credentials";

/// Attempts per call: the SDK's adaptive retry (throttling codes such as
/// `RequestLimitExceeded` and 5xx, with a client-side rate limiter).
const MAX_ATTEMPTS: u32 = 6;

/// The SDK configuration for `region` (the spec's `aws.region`, if any),
/// with credentials resolved up front: a missing or refused credential is
/// [`ProviderError::Credentials`] here, before any EC2 call.
///
/// # Errors
/// [`ProviderError::Credentials`] when the chain finds nothing or the
/// source refuses; [`ProviderError::Failed`] for anything else.
pub async fn load(region: Option<&str>) -> Result<SdkConfig, ProviderError> {
    let region = RegionProviderChain::first_try(region.map(|r| Region::new(r.to_owned())))
        .or_default_provider()
        .or_else(Region::from_static(DEFAULT_REGION));
    let config = aws_config::defaults(BehaviorVersion::latest())
        .region(region)
        .retry_config(RetryConfig::adaptive().with_max_attempts(MAX_ATTEMPTS))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(10))
                .operation_attempt_timeout(Duration::from_secs(60))
                .operation_timeout(Duration::from_secs(300))
                .build(),
        )
        .load()
        .await;
    let Some(provider) = config.credentials_provider() else {
        return Err(ProviderError::Credentials {
            message: "no AWS credentials provider is configured".to_owned(),
            hint: CREDENTIALS_HINT.to_owned(),
        });
    };
    match provider.provide_credentials().await {
        Ok(_) => Ok(config),
        Err(e) => Err(credentials_error(&e)),
    }
}

/// A failed credential lookup in words, with what to set.
fn credentials_error(e: &CredentialsError) -> ProviderError {
    let detail = aws_sdk_ec2::error::DisplayErrorContext(e).to_string();
    let message = match e {
        CredentialsError::CredentialsNotLoaded(_) => {
            "no AWS credentials found (environment, profiles, SSO, web identity, instance metadata)"
                .to_owned()
        }
        CredentialsError::ProviderTimedOut(_) => {
            format!("looking up AWS credentials timed out: {detail}")
        }
        _ => format!("AWS credentials were refused or could not be read: {detail}"),
    };
    ProviderError::Credentials {
        message,
        hint: CREDENTIALS_HINT.to_owned(),
    }
}
