//! When the `aws` provider is enabled, and which region it works in.
//!
//! The registry builds providers synchronously, but the SDK's credential
//! chain is async (and may call STS, SSO or instance metadata). So the
//! provider is *enabled* on cheap signals that some link of the chain is
//! configured — the variables and files the chain reads — and the
//! credentials are resolved lazily, on the first call (a missing or refused
//! one is exit 3 then, see `sdk::load`). Instance metadata is deliberately no
//! signal: probing it costs a network timeout on every machine that is not
//! an EC2 instance.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The `--help` lines of the `aws` provider under "Environment:".
pub const HELP: &str = "  AWS_ACCESS_KEY_ID           AWS credentials, or AWS_PROFILE, web identity, ~/.aws (enables `aws`)
  CRABBOX_AWS_REGION          region when `aws.region` is unset (then AWS_REGION; default eu-west-1)
  AWS_ENDPOINT_URL_EC2        EC2 endpoint URL (also AWS_ENDPOINT_URL)
  CRABBOX_AWS_PUBLIC_IP_URL   where this machine's public IPv4 is asked (default checkip.amazonaws.com)";

/// What enables the provider, as the "no provider" error shows it.
pub const CREDENTIALS: &str =
    "AWS_ACCESS_KEY_ID (or AWS_PROFILE, AWS_WEB_IDENTITY_TOKEN_FILE, ~/.aws/credentials)";

/// The region when nothing names one (Crabbox's default, config.go:2909).
pub const DEFAULT_REGION: &str = "eu-west-1";

/// Which configured source of credentials enabled the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// `AWS_ACCESS_KEY_ID` (with its secret) in the environment.
    AccessKey,
    /// `AWS_PROFILE` names a profile.
    Profile(String),
    /// `AWS_WEB_IDENTITY_TOKEN_FILE` (GitHub Actions' OIDC role assumption, EKS).
    WebIdentity,
    /// `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` or `…_FULL_URI` (ECS, CodeBuild).
    Container,
    /// A shared credentials or config file exists.
    SharedFile(PathBuf),
}

/// The first signal that AWS credentials are configured, in the SDK chain's
/// order, or `None`. `env` holds the environment; `home` is the home
/// directory (`~/.aws/…`), `None` when unknown. Blank variables count as
/// unset.
#[must_use]
pub fn configured(env: &HashMap<String, String>, home: Option<&Path>) -> Option<Signal> {
    let var = |name: &str| env.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
    if var("AWS_ACCESS_KEY_ID").is_some() {
        return Some(Signal::AccessKey);
    }
    if let Some(profile) = var("AWS_PROFILE") {
        return Some(Signal::Profile(profile.to_owned()));
    }
    if var("AWS_WEB_IDENTITY_TOKEN_FILE").is_some() {
        return Some(Signal::WebIdentity);
    }
    if var("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_some()
        || var("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_some()
    {
        return Some(Signal::Container);
    }
    let file = |var_name: &str, default: &str| {
        var(var_name)
            .map(PathBuf::from)
            .or_else(|| home.map(|h| h.join(".aws").join(default)))
    };
    [
        file("AWS_SHARED_CREDENTIALS_FILE", "credentials"),
        file("AWS_CONFIG_FILE", "config"),
    ]
    .into_iter()
    .flatten()
    .find(|p| p.is_file())
    .map(Signal::SharedFile)
}

/// [`configured`] over this process's environment and home directory.
#[must_use]
pub fn configured_here() -> Option<Signal> {
    let env: HashMap<String, String> = std::env::vars().collect();
    let home = env.get("HOME").filter(|h| !h.is_empty()).map(PathBuf::from);
    configured(&env, home.as_deref())
}

/// Where the region came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegionSource {
    /// The member's `aws.region`.
    Spec,
    /// An environment variable.
    Env(&'static str),
    /// The AWS profile (the SDK's `region` of the active profile).
    Profile,
    /// Nothing named one: [`DEFAULT_REGION`].
    Default,
}

/// The region of a member: its `aws.region`; else `CRABBOX_AWS_REGION` and
/// `AWS_REGION` (Crabbox's order), `AWS_DEFAULT_REGION`, the profile's region
/// (`profile_region`, as the SDK reads it); else [`DEFAULT_REGION`]. The
/// member's block wins over the environment because it is the more specific
/// setting (as `hetzner.location` does), while Crabbox, which has only a
/// user-wide file, lets the environment win over it.
#[must_use]
pub fn region(
    spec: Option<&str>,
    env: &HashMap<String, String>,
    profile_region: Option<&str>,
) -> (String, RegionSource) {
    let set = |v: Option<&str>| {
        v.map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    if let Some(r) = set(spec) {
        return (r, RegionSource::Spec);
    }
    for name in ["CRABBOX_AWS_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"] {
        if let Some(r) = set(env.get(name).map(String::as_str)) {
            return (r, RegionSource::Env(name));
        }
    }
    if let Some(r) = set(profile_region) {
        return (r, RegionSource::Profile);
    }
    (DEFAULT_REGION.to_owned(), RegionSource::Default)
}

/// The region of the active profile as the SDK reads it (`AWS_PROFILE`,
/// `AWS_CONFIG_FILE`…), `None` when it names none.
pub async fn profile_region() -> Option<String> {
    use aws_config::meta::region::ProvideRegion as _;
    aws_config::profile::ProfileFileRegionProvider::builder()
        .build()
        .region()
        .await
        .map(|r| r.as_ref().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_env::env;

    #[test]
    fn variables_enable_it_in_the_chains_order() {
        let home = tempfile::tempdir().expect("tempdir");
        let h = Some(home.path());
        assert_eq!(configured(&env(&[]), h), None);
        assert_eq!(configured(&env(&[("AWS_ACCESS_KEY_ID", " ")]), h), None);
        assert_eq!(
            configured(
                &env(&[("AWS_ACCESS_KEY_ID", "AKIA"), ("AWS_PROFILE", "ci")]),
                h
            ),
            Some(Signal::AccessKey)
        );
        assert_eq!(
            configured(&env(&[("AWS_PROFILE", "ci")]), h),
            Some(Signal::Profile("ci".into()))
        );
        assert_eq!(
            configured(&env(&[("AWS_WEB_IDENTITY_TOKEN_FILE", "/t")]), h),
            Some(Signal::WebIdentity)
        );
        for name in [
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        ] {
            assert_eq!(
                configured(&env(&[(name, "/v2/creds")]), h),
                Some(Signal::Container)
            );
        }
        assert_eq!(configured(&env(&[]), None), None);
    }

    #[test]
    fn shared_files_enable_it_where_the_sdk_looks() {
        let home = tempfile::tempdir().expect("tempdir");
        let aws = home.path().join(".aws");
        std::fs::create_dir(&aws).expect("mkdir");
        assert_eq!(configured(&env(&[]), Some(home.path())), None);
        std::fs::write(aws.join("config"), "[default]\nregion = us-east-1\n").expect("write");
        assert_eq!(
            configured(&env(&[]), Some(home.path())),
            Some(Signal::SharedFile(aws.join("config")))
        );
        // The variables move the files: the home ones are then not read.
        let elsewhere = home.path().join("none");
        let moved = env(&[
            ("AWS_CONFIG_FILE", elsewhere.to_str().expect("utf-8")),
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                elsewhere.to_str().expect("utf-8"),
            ),
        ]);
        assert_eq!(configured(&moved, Some(home.path())), None);
        let creds = home.path().join("creds");
        std::fs::write(&creds, "[default]\n").expect("write");
        let moved = env(&[(
            "AWS_SHARED_CREDENTIALS_FILE",
            creds.to_str().expect("utf-8"),
        )]);
        assert_eq!(
            configured(&moved, None),
            Some(Signal::SharedFile(creds.clone()))
        );
    }

    #[test]
    fn region_prefers_the_spec_then_crabboxs_variables_then_the_sdks() {
        let all = env(&[
            ("CRABBOX_AWS_REGION", "eu-central-1"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_DEFAULT_REGION", "us-west-2"),
        ]);
        assert_eq!(
            region(Some("ap-south-1"), &all, Some("sa-east-1")),
            ("ap-south-1".into(), RegionSource::Spec)
        );
        assert_eq!(
            region(None, &all, Some("sa-east-1")),
            (
                "eu-central-1".into(),
                RegionSource::Env("CRABBOX_AWS_REGION")
            )
        );
        let sdk = env(&[
            ("AWS_REGION", "us-east-1"),
            ("AWS_DEFAULT_REGION", "us-west-2"),
        ]);
        assert_eq!(
            region(Some(" "), &sdk, None),
            ("us-east-1".into(), RegionSource::Env("AWS_REGION"))
        );
        assert_eq!(
            region(None, &env(&[("AWS_DEFAULT_REGION", "us-west-2")]), None),
            ("us-west-2".into(), RegionSource::Env("AWS_DEFAULT_REGION"))
        );
        assert_eq!(
            region(None, &env(&[]), Some("sa-east-1")),
            ("sa-east-1".into(), RegionSource::Profile)
        );
        assert_eq!(
            region(None, &env(&[]), None),
            ("eu-west-1".into(), RegionSource::Default)
        );
    }

    #[test]
    fn help_lines_are_aligned_like_the_other_providers() {
        for line in HELP.lines() {
            let (name, description) = line.split_at(30);
            assert!(name.starts_with("  ") && name.ends_with(' '), "{line}");
            assert!(!description.starts_with(' '), "{line}");
        }
        assert!(HELP.contains("AWS_ACCESS_KEY_ID") && HELP.contains("AWS_ENDPOINT_URL_EC2"));
    }
}
