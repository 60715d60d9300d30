//! Which providers this process can talk to, built once from the environment.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::Provider;
use crabbox_core::provider::ProviderName;
use crabbox_core::provider::{Features, ProviderError, features_of};
use crabbox_state::claims::ClaimStore;

/// Everything this build knows about one provider's adapter: how it is
/// made from the environment, which variables enable it, what `--help`
/// says about them, and what `crabbox run` refuses on its leases. Each
/// provider's folder defines its `DESCRIPTOR`; [`ADAPTERS`] lists them, and
/// the registry, the help text, the "not configured" errors and the
/// refusals are all read from that list.
pub struct Descriptor {
    /// The provider.
    pub name: ProviderName,
    /// Builds the adapter from the environment (`None` without its
    /// credentials), with the state directory and the command's claim store.
    pub build: fn(&Path, &ClaimStore) -> Option<Arc<dyn Provider>>,
    /// The environment variables that enable it, as the error shows them
    /// (`None` for providers that need none).
    pub credentials: Option<&'static str>,
    /// Its lines under "Environment:" in `crabbox --help`, aligned there
    /// (empty for providers without settings).
    pub help: &'static str,
    /// Why `crabbox run` rejects the SSH/rsync flags (`--sync-only`…) on its
    /// leases, when the provider owns the command transport; `None`: the
    /// general reason (apply syncs the repository).
    pub transport_refusal: Option<&'static str>,
}

/// The adapters of this build, in [`ProviderName::ALL`] order. Adding a
/// provider's adapter is its folder plus one line here (and `adapter: true`
/// in core's row for it, which `validate` reads; a unit test keeps the two
/// equal).
pub static ADAPTERS: &[&Descriptor] = &[
    &crate::local::DESCRIPTOR,
    &crate::ssh::DESCRIPTOR,
    &crate::hetzner::DESCRIPTOR,
    &crate::aws::DESCRIPTOR,
    &crate::azure::DESCRIPTOR,
    &crate::gcp::DESCRIPTOR,
    &crate::islo::DESCRIPTOR,
    &crate::tensorlake::DESCRIPTOR,
    &crate::daytona::DESCRIPTOR,
    &crate::e2b::DESCRIPTOR,
    &crate::modal::DESCRIPTOR,
    &crate::blacksmith::DESCRIPTOR,
];

/// The providers this build has an adapter for, in [`ProviderName::ALL`]
/// order: what `validate` accepts (the spec's loader is given this list).
#[must_use]
pub fn adapter_names() -> Vec<ProviderName> {
    ADAPTERS.iter().map(|d| d.name).collect()
}

/// The descriptor of `name`'s adapter, if this build has one.
#[must_use]
pub fn descriptor(name: ProviderName) -> Option<&'static Descriptor> {
    ADAPTERS.iter().copied().find(|d| d.name == name)
}

/// The environment variables that enable a provider whose adapter needs
/// credentials (`None` for providers that need none or have no adapter).
#[must_use]
pub fn credentials(name: ProviderName) -> Option<&'static str> {
    descriptor(name).and_then(|d| d.credentials)
}

/// The providers available to a command.
#[derive(Clone)]
pub struct Registry {
    providers: BTreeMap<ProviderName, Arc<dyn Provider>>,
}

impl Registry {
    /// Every provider usable here: `local` and `ssh` always; cloud providers
    /// when their credentials are in the environment (`HCLOUD_TOKEN`…);
    /// with `CRABBOX_COORDINATOR` set, the providers a coordinator serves
    /// are its brokered adapters (see [`crate::coordinator`]).
    /// Providers that keep leases in claims all use `claims`, the store the
    /// command chose.
    #[must_use]
    pub fn from_environment(state_dir: &Path, claims: &ClaimStore) -> Self {
        Self::with_coordinator(
            state_dir,
            claims,
            crate::coordinator::Settings::from_env().as_ref(),
        )
    }

    /// [`Self::from_environment`] with the coordinator's settings given
    /// (the environment's, or a spec's `broker:`; `None`: direct mode).
    #[must_use]
    pub fn with_coordinator(
        state_dir: &Path,
        claims: &ClaimStore,
        coordinator: Option<&crate::coordinator::Settings>,
    ) -> Self {
        let mut providers = ADAPTERS
            .iter()
            .filter_map(|d| Some((d.name, (d.build)(state_dir, claims)?)))
            .collect();
        // Brokered mode: the coordinator's providers go through it.
        if let Some(settings) = coordinator {
            crate::coordinator::brokered(settings, &mut providers, state_dir, claims);
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
    /// [`ProviderError::Credentials`] when its credentials are not set
    /// (naming the variables); [`ProviderError::Config`] when this crabbox
    /// has no adapter for it.
    pub fn get(&self, name: ProviderName) -> Result<Arc<dyn Provider>, ProviderError> {
        if let Some(p) = self.providers.get(&name) {
            return Ok(p.clone());
        }
        Err(
            match credentials(name).filter(|_| descriptor(name).is_some()) {
                Some(vars) => ProviderError::Credentials {
                    message: format!("provider `{name}` is not configured: {vars} is not set"),
                    hint: format!("set {vars} in the environment (a CI secret), then run again"),
                },
                None => ProviderError::Config {
                    message: format!("provider `{name}` is not available in this crabbox"),
                    hint: format!(
                        "this build has adapters for: {}",
                        adapter_names()
                            .iter()
                            .map(|p| p.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                },
            },
        )
    }

    /// What `name` can do here: its features when this process can reach it,
    /// none when it is not available (its leases cannot be reached, so no
    /// transport may be rendered for them).
    #[must_use]
    pub fn features(&self, name: ProviderName) -> Features {
        if self.providers.contains_key(&name) {
            features_of(name)
        } else {
            Features::default()
        }
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

    /// One line per adapter, in the order `pond.yaml`'s schema lists the
    /// providers: every provider once. `validate` therefore accepts every
    /// provider the schema names; a new provider name needs its adapter.
    #[test]
    fn every_provider_has_one_adapter_in_schema_order() {
        assert_eq!(adapter_names(), ProviderName::ALL.to_vec());
    }
}
