//! When the `azure` provider is enabled, and how it gets an ARM token and a
//! subscription.
//!
//! As for AWS, the registry builds providers synchronously while Microsoft's
//! credentials are async (and may run `az` or call an identity endpoint), so
//! the provider is *enabled* on cheap signals — the variables a credential
//! reads, or the Azure CLI's profile — and the credential is made and asked
//! for a token at the first call. The credential is chosen in
//! `DefaultAzureCredential`'s order, from `azure_identity` (1.0):
//!
//! 1. `AZURE_CLIENT_SECRET` (+ `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`): a
//!    service principal's secret (`ClientSecretCredential`);
//! 2. `AZURE_FEDERATED_TOKEN_FILE` (+ tenant and client): workload identity,
//!    what GitHub Actions' OIDC federation and AKS set
//!    (`WorkloadIdentityCredential`);
//! 3. `IDENTITY_ENDPOINT` or `MSI_ENDPOINT`, or `CRABBOX_AZURE_MANAGED_IDENTITY`
//!    set: a managed identity (`ManagedIdentityCredential`, user-assigned
//!    when `AZURE_CLIENT_ID` is set). The instance metadata endpoint is no
//!    signal on its own: probing it costs a timeout on every other machine;
//! 4. otherwise the Azure CLI's login (`AzureCliCredential`).
//!
//! The token authority is `AZURE_AUTHORITY_HOST` (read by `azure_identity`
//! itself; it must be HTTPS). The subscription is `AZURE_SUBSCRIPTION_ID`,
//! else the one `az account show` names, as Crabbox does.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use azure_core::credentials::{Secret, TokenCredential};
use azure_core::http::{ClientOptions, Transport};
use azure_identity::{
    AzureCliCredential, ClientAssertionCredentialOptions, ClientSecretCredential,
    ClientSecretCredentialOptions, ManagedIdentityCredential, ManagedIdentityCredentialOptions,
    UserAssignedId, WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};
use crabbox_core::provider::ProviderError;

use super::transport::Reqwest;

/// The `--help` lines of the `azure` provider under "Environment:".
pub const HELP: &str =
    "  AZURE_SUBSCRIPTION_ID       Azure subscription (else `az account show`'s; enables `azure`)
  AZURE_CLIENT_SECRET         service principal secret, with AZURE_TENANT_ID and AZURE_CLIENT_ID
  AZURE_FEDERATED_TOKEN_FILE  workload identity (GitHub Actions OIDC), with tenant and client IDs
  AZURE_AUTHORITY_HOST        Entra ID authority (default https://login.microsoftonline.com)
  CRABBOX_AZURE_ARM_ENDPOINT  Azure Resource Manager URL (default https://management.azure.com)";

/// What enables the provider, as the "no provider" error shows it.
pub const CREDENTIALS: &str = "AZURE_SUBSCRIPTION_ID (with AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET, AZURE_FEDERATED_TOKEN_FILE, a managed identity or `az login`)";

/// The scope of an Azure Resource Manager token.
pub const ARM_SCOPE: &str = "https://management.azure.com/.default";

/// How long `az account show` may take.
const AZ_TIMEOUT: Duration = Duration::from_secs(30);

/// Which configured source enabled the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// `AZURE_CLIENT_SECRET`.
    ClientSecret,
    /// `AZURE_FEDERATED_TOKEN_FILE`.
    WorkloadIdentity,
    /// `IDENTITY_ENDPOINT`, `MSI_ENDPOINT` or `CRABBOX_AZURE_MANAGED_IDENTITY`.
    ManagedIdentity,
    /// `AZURE_SUBSCRIPTION_ID` alone (the Azure CLI's login is then used).
    Subscription,
    /// The Azure CLI's profile (`~/.azure/azureProfile.json`, or under
    /// `AZURE_CONFIG_DIR`): `az login` was run.
    AzureCli(PathBuf),
}

/// The credential a call will use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A service principal's secret.
    ClientSecret { tenant: String, client: String },
    /// A federated token file.
    WorkloadIdentity { tenant: String, client: String },
    /// A managed identity (user-assigned when a client ID is given).
    ManagedIdentity { client: Option<String> },
    /// `az login`.
    AzureCli,
}

fn var<'a>(env: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    env.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
}

/// The first signal that Azure credentials are configured, in the order
/// the credential is chosen, or `None`. Blank variables count as unset.
#[must_use]
pub fn configured(env: &HashMap<String, String>, home: Option<&Path>) -> Option<Signal> {
    if var(env, "AZURE_CLIENT_SECRET").is_some() {
        return Some(Signal::ClientSecret);
    }
    if var(env, "AZURE_FEDERATED_TOKEN_FILE").is_some() {
        return Some(Signal::WorkloadIdentity);
    }
    if [
        "IDENTITY_ENDPOINT",
        "MSI_ENDPOINT",
        "CRABBOX_AZURE_MANAGED_IDENTITY",
    ]
    .iter()
    .any(|n| var(env, n).is_some())
    {
        return Some(Signal::ManagedIdentity);
    }
    if var(env, "AZURE_SUBSCRIPTION_ID").is_some() {
        return Some(Signal::Subscription);
    }
    var(env, "AZURE_CONFIG_DIR")
        .map(PathBuf::from)
        .or_else(|| home.map(|h| h.join(".azure")))
        .map(|dir| dir.join("azureProfile.json"))
        .filter(|p| p.is_file())
        .map(Signal::AzureCli)
}

/// [`configured`] over this process's environment and home directory.
#[must_use]
pub fn configured_here() -> Option<Signal> {
    let env: HashMap<String, String> = std::env::vars().collect();
    let home = env.get("HOME").filter(|h| !h.is_empty()).map(PathBuf::from);
    configured(&env, home.as_deref())
}

fn missing(what: &str, needs: &[&str]) -> ProviderError {
    ProviderError::Credentials {
        message: format!("azure: {what} needs {} as well", needs.join(" and ")),
        hint: format!("set {} in the environment (a CI secret)", needs.join(", ")),
    }
}

/// The credential `env` selects (see the module).
///
/// # Errors
/// [`ProviderError::Credentials`] when a secret or token file is set
/// without the tenant and client it belongs to.
pub fn source(env: &HashMap<String, String>) -> Result<Source, ProviderError> {
    let ids = |what: &str| {
        let tenant = var(env, "AZURE_TENANT_ID");
        let client = var(env, "AZURE_CLIENT_ID");
        match (tenant, client) {
            (Some(t), Some(c)) => Ok((t.to_owned(), c.to_owned())),
            _ => Err(missing(
                what,
                &[
                    if tenant.is_none() {
                        "AZURE_TENANT_ID"
                    } else {
                        ""
                    },
                    if client.is_none() {
                        "AZURE_CLIENT_ID"
                    } else {
                        ""
                    },
                ]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>(),
            )),
        }
    };
    if var(env, "AZURE_CLIENT_SECRET").is_some() {
        let (tenant, client) = ids("AZURE_CLIENT_SECRET")?;
        return Ok(Source::ClientSecret { tenant, client });
    }
    if var(env, "AZURE_FEDERATED_TOKEN_FILE").is_some() {
        let (tenant, client) = ids("AZURE_FEDERATED_TOKEN_FILE")?;
        return Ok(Source::WorkloadIdentity { tenant, client });
    }
    if [
        "IDENTITY_ENDPOINT",
        "MSI_ENDPOINT",
        "CRABBOX_AZURE_MANAGED_IDENTITY",
    ]
    .iter()
    .any(|n| var(env, n).is_some())
    {
        return Ok(Source::ManagedIdentity {
            client: var(env, "AZURE_CLIENT_ID").map(str::to_owned),
        });
    }
    Ok(Source::AzureCli)
}

/// The `azure_identity` credential for `source`, sending its requests
/// through `http`.
///
/// # Errors
/// [`ProviderError::Credentials`] when `azure_identity` refuses the
/// settings (a malformed tenant ID, an authority that is not HTTPS…).
pub fn credential(
    source: &Source,
    env: &HashMap<String, String>,
    http: reqwest::Client,
) -> Result<Arc<dyn TokenCredential>, ProviderError> {
    let client_options = || ClientOptions {
        transport: Some(Transport::new(Arc::new(Reqwest(http.clone())))),
        ..ClientOptions::default()
    };
    let refused = |e: azure_core::Error| ProviderError::Credentials {
        message: format!("azure: the credential could not be set up: {e}"),
        hint: "check AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_AUTHORITY_HOST (an https:// URL)"
            .to_owned(),
    };
    Ok(match source {
        Source::ClientSecret { tenant, client } => {
            let secret = var(env, "AZURE_CLIENT_SECRET").unwrap_or_default();
            ClientSecretCredential::new(
                tenant,
                client.clone(),
                Secret::new(secret.to_owned()),
                Some(ClientSecretCredentialOptions {
                    client_options: client_options(),
                }),
            )
            .map_err(refused)?
        }
        Source::WorkloadIdentity { tenant, client } => {
            WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
                credential_options: ClientAssertionCredentialOptions {
                    client_options: client_options(),
                },
                client_id: Some(client.clone()),
                tenant_id: Some(tenant.clone()),
                token_file_path: var(env, "AZURE_FEDERATED_TOKEN_FILE").map(PathBuf::from),
            }))
            .map_err(refused)?
        }
        Source::ManagedIdentity { client } => {
            ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                user_assigned_id: client.clone().map(UserAssignedId::ClientId),
                client_options: client_options(),
            }))
            .map_err(refused)?
        }
        Source::AzureCli => AzureCliCredential::new(None).map_err(refused)?,
    })
}

/// What a refused token request means for the user: exit 3, naming the
/// credential that was used and what to set.
#[must_use]
pub fn token_refused(source: &Source, e: &azure_core::Error) -> ProviderError {
    let (what, hint) = match source {
        Source::ClientSecret { .. } => (
            "the service principal secret (AZURE_CLIENT_SECRET)",
            "check AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET",
        ),
        Source::WorkloadIdentity { .. } => (
            "the federated token (AZURE_FEDERATED_TOKEN_FILE)",
            "check the federated credential of AZURE_CLIENT_ID in AZURE_TENANT_ID",
        ),
        Source::ManagedIdentity { .. } => (
            "the managed identity",
            "check the identity assigned to this machine (AZURE_CLIENT_ID for a user-assigned one)",
        ),
        Source::AzureCli => (
            "the Azure CLI's login",
            "run `az login`, or set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET",
        ),
    };
    ProviderError::Credentials {
        message: format!("azure: no ARM token from {what}: {e}"),
        hint: hint.to_owned(),
    }
}

/// The subscription: `AZURE_SUBSCRIPTION_ID`, else the one `az account
/// show` names (Crabbox's fallback).
///
/// # Errors
/// [`ProviderError::Credentials`] naming `AZURE_SUBSCRIPTION_ID` when
/// neither gives one.
pub async fn subscription(env: &HashMap<String, String>) -> Result<String, ProviderError> {
    if let Some(id) = var(env, "AZURE_SUBSCRIPTION_ID") {
        return Ok(id.to_owned());
    }
    let unset = |why: String| ProviderError::Credentials {
        message: format!("azure: AZURE_SUBSCRIPTION_ID is not set and {why}"),
        hint: "set AZURE_SUBSCRIPTION_ID (or run `az login`)".to_owned(),
    };
    let run = tokio::process::Command::new("az")
        .args(["account", "show", "--query", "id", "--output", "tsv"])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(AZ_TIMEOUT, run).await {
        Err(_) => Err(unset("`az account show` did not answer".to_owned())),
        Ok(Err(e)) => Err(unset(format!("`az` could not be run ({e})"))),
        Ok(Ok(out)) if !out.status.success() => Err(unset(format!(
            "`az account show` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
        Ok(Ok(out)) => {
            let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if id.is_empty() {
                Err(unset("`az account show` named no subscription".to_owned()))
            } else {
                Ok(id)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_env::env;

    #[test]
    fn signals_and_sources_follow_the_default_credentials_order() {
        let home = tempfile::tempdir().expect("tempdir");
        let h = Some(home.path());
        assert_eq!(configured(&env(&[]), h), None);
        assert_eq!(configured(&env(&[("AZURE_CLIENT_SECRET", " ")]), h), None);
        let sp = env(&[
            ("AZURE_CLIENT_SECRET", "s"),
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_CLIENT_ID", "c"),
            ("AZURE_FEDERATED_TOKEN_FILE", "/f"),
        ]);
        assert_eq!(configured(&sp, h), Some(Signal::ClientSecret));
        assert_eq!(
            source(&sp),
            Ok(Source::ClientSecret {
                tenant: "t".into(),
                client: "c".into()
            })
        );
        let wi = env(&[
            ("AZURE_FEDERATED_TOKEN_FILE", "/f"),
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_CLIENT_ID", "c"),
        ]);
        assert_eq!(configured(&wi, h), Some(Signal::WorkloadIdentity));
        assert!(matches!(source(&wi), Ok(Source::WorkloadIdentity { .. })));
        let mi = env(&[("IDENTITY_ENDPOINT", "http://x"), ("AZURE_CLIENT_ID", "c")]);
        assert_eq!(configured(&mi, h), Some(Signal::ManagedIdentity));
        assert_eq!(
            source(&mi),
            Ok(Source::ManagedIdentity {
                client: Some("c".into())
            })
        );
        let sub = env(&[("AZURE_SUBSCRIPTION_ID", "s")]);
        assert_eq!(configured(&sub, h), Some(Signal::Subscription));
        assert_eq!(source(&sub), Ok(Source::AzureCli));
        let azure = home.path().join(".azure");
        std::fs::create_dir(&azure).expect("mkdir");
        std::fs::write(azure.join("azureProfile.json"), "{}").expect("write");
        assert_eq!(
            configured(&env(&[]), h),
            Some(Signal::AzureCli(azure.join("azureProfile.json")))
        );
    }

    #[test]
    fn a_secret_without_its_tenant_and_client_names_them() {
        let e = source(&env(&[
            ("AZURE_CLIENT_SECRET", "s"),
            ("AZURE_CLIENT_ID", "c"),
        ]))
        .expect_err("incomplete");
        assert!(
            matches!(&e, ProviderError::Credentials { message, .. } if message.contains("AZURE_TENANT_ID") && !message.contains("AZURE_CLIENT_ID and")),
            "{e:?}"
        );
    }

    #[test]
    fn help_lines_are_aligned_like_the_other_providers() {
        for line in HELP.lines() {
            let (name, description) = line.split_at(30);
            assert!(name.starts_with("  ") && name.ends_with(' '), "{line}");
            assert!(!description.starts_with(' '), "{line}");
        }
    }
}
