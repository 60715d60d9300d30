//! Which providers this process can talk to, built once from the environment.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::Provider;
use crate::hetzner::HetznerProvider;
use crate::islo::IsloProvider;
use crate::local::LocalProvider;
use crate::ssh::SshProvider;
use crate::tensorlake::TensorlakeProvider;
use crabbox_core::provider::ProviderError;
use crabbox_core::provider::ProviderName;

/// Builds a provider's adapter from the environment (`None` without its
/// credentials).
type Build = fn(&Path) -> Option<Arc<dyn Provider>>;

/// The adapter of each provider, `None` for the providers this crabbox has no
/// adapter for yet. The one list of implemented providers: the registry is
/// built from it and `validate` refuses members on the others.
fn adapter(name: ProviderName) -> Option<Build> {
    match name {
        ProviderName::Local => Some(|dir| Some(Arc::new(LocalProvider::new(dir)))),
        ProviderName::Ssh => Some(|dir| Some(Arc::new(SshProvider::new(dir)))),
        ProviderName::Hetzner => {
            Some(|dir| HetznerProvider::from_env(dir).map(|p| Arc::new(p) as Arc<dyn Provider>))
        }
        ProviderName::Islo => {
            Some(|dir| IsloProvider::from_env(dir).map(|p| Arc::new(p) as Arc<dyn Provider>))
        }
        ProviderName::Tensorlake => {
            Some(|dir| TensorlakeProvider::from_env(dir).map(|p| Arc::new(p) as Arc<dyn Provider>))
        }
        ProviderName::Aws
        | ProviderName::Azure
        | ProviderName::Gcp
        | ProviderName::Daytona
        | ProviderName::E2b
        | ProviderName::Modal
        | ProviderName::BlacksmithTestbox => None,
    }
}

/// The environment variables that enable a provider whose adapter needs
/// credentials (`None` for providers that need none).
#[must_use]
pub fn credentials(name: ProviderName) -> Option<&'static str> {
    match name {
        ProviderName::Hetzner => Some("HCLOUD_TOKEN (or HETZNER_TOKEN)"),
        ProviderName::Islo => Some("CRABBOX_ISLO_API_KEY (or ISLO_API_KEY)"),
        ProviderName::Tensorlake => Some("CRABBOX_TENSORLAKE_API_KEY (or TENSORLAKE_API_KEY)"),
        _ => None,
    }
}

/// The providers available to a command.
#[derive(Clone)]
pub struct Registry {
    providers: BTreeMap<ProviderName, Arc<dyn Provider>>,
}

impl Registry {
    /// Every provider usable here: `local` and `ssh` always; cloud providers
    /// when their credentials are in the environment (`HCLOUD_TOKEN`…).
    #[must_use]
    pub fn from_environment(state_dir: &Path) -> Self {
        let providers = ProviderName::ALL
            .into_iter()
            .filter_map(|name| Some((name, adapter(name)?(state_dir)?)))
            .collect();
        Self { providers }
    }

    /// A registry of exactly these providers (tests, fakes).
    #[must_use]
    pub fn with(providers: Vec<Arc<dyn Provider>>) -> Self {
        Self {
            providers: providers.into_iter().map(|p| (p.name(), p)).collect(),
        }
    }

    /// The adapter for `name`.
    ///
    /// # Errors
    /// [`ProviderError::Config`] when the provider is not available here:
    /// its credentials are not set (naming the variables), or this crabbox
    /// has no adapter for it.
    pub fn get(&self, name: ProviderName) -> Result<Arc<dyn Provider>, ProviderError> {
        if let Some(p) = self.providers.get(&name) {
            return Ok(p.clone());
        }
        Err(match credentials(name).filter(|_| name.has_adapter()) {
            Some(vars) => ProviderError::Config {
                message: format!("provider `{name}` is not configured: {vars} is not set"),
                hint: format!("set {vars} in the environment (a CI secret), then run again"),
            },
            None => ProviderError::Config {
                message: format!("provider `{name}` is not available in this crabbox"),
                hint: format!(
                    "this build has adapters for: {}",
                    ProviderName::with_adapter()
                        .iter()
                        .map(|p| p.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            },
        })
    }

    /// Providers that are always worth listing (no credentials needed, or credentials present).
    #[must_use]
    pub fn configured(&self) -> Vec<ProviderName> {
        self.providers.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `validate` decides from [`ProviderName::has_adapter`], the registry
    /// from [`adapter`]: a provider added to one list only would be refused
    /// by `validate` yet usable, or accepted and then never created.
    #[test]
    fn validate_and_the_registry_agree_on_the_adapters() {
        for name in ProviderName::ALL {
            assert_eq!(adapter(name).is_some(), name.has_adapter(), "{name}");
        }
    }
}
