//! Which providers this process can talk to, built once from the environment.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::providers::hetzner::HetznerProvider;
use crate::providers::islo::IsloProvider;
use crate::providers::local::LocalProvider;
use crate::providers::ssh::SshProvider;
use crate::providers::tensorlake::TensorlakeProvider;
use crate::providers::{Provider, ProviderError};
use crate::spec::providers::ProviderName;

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
        let mut providers: BTreeMap<ProviderName, Arc<dyn Provider>> = BTreeMap::new();
        providers.insert(ProviderName::Local, Arc::new(LocalProvider::new(state_dir)));
        providers.insert(ProviderName::Ssh, Arc::new(SshProvider::new(state_dir)));
        if let Some(hetzner) = HetznerProvider::from_env(state_dir) {
            providers.insert(ProviderName::Hetzner, Arc::new(hetzner));
        }
        if let Some(islo) = IsloProvider::from_env(state_dir) {
            providers.insert(ProviderName::Islo, Arc::new(islo));
        }
        if let Some(tensorlake) = TensorlakeProvider::from_env(state_dir) {
            providers.insert(ProviderName::Tensorlake, Arc::new(tensorlake));
        }
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
    /// [`ProviderError::Config`] when the provider is not available here.
    pub fn get(&self, name: ProviderName) -> Result<Arc<dyn Provider>, ProviderError> {
        self.providers
            .get(&name)
            .cloned()
            .ok_or_else(|| ProviderError::Config {
                message: format!("provider `{name}` is not available in this crabbox"),
                hint: format!(
                    "this build supports: {}; members on `{name}` cannot be planned yet",
                    self.providers
                        .keys()
                        .map(|p| p.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
    }

    /// Providers that are always worth listing (no credentials needed, or credentials present).
    #[must_use]
    pub fn configured(&self) -> Vec<ProviderName> {
        self.providers.keys().copied().collect()
    }
}
