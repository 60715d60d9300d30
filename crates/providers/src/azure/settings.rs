//! A member's Azure settings: its `azure:` block, else Crabbox's
//! `CRABBOX_AZURE_*` variables, else Crabbox's defaults. The block wins
//! because it is the more specific setting (as `hetzner.location` and
//! `aws.region` do).

use std::collections::HashMap;

use crabbox_core::provider::ProviderError;
use crabbox_spec::providers::{AzureBlock, AzureOsDisk, AzurePriority};

/// Crabbox's default region.
pub const DEFAULT_LOCATION: &str = "eastus";
/// Crabbox's shared resource group.
pub const DEFAULT_RESOURCE_GROUP: &str = "crabbox-leases";
/// Crabbox's shared virtual network.
pub const DEFAULT_VNET: &str = "crabbox-vnet";
/// Crabbox's shared subnet.
pub const DEFAULT_SUBNET: &str = "crabbox-subnet";
/// Crabbox's shared network security group.
pub const DEFAULT_NSG: &str = "crabbox-nsg";
/// Crabbox's default Linux image (`defaultAzureLinuxImage`).
pub const DEFAULT_IMAGE: &str = "Canonical:ubuntu-26_04-lts:server:latest";

/// The resolved settings of one member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub location: String,
    pub resource_group: String,
    pub vnet: String,
    pub subnet: String,
    pub nsg: String,
    /// `publisher`, `offer`, `sku`, `version`.
    pub image: [String; 4],
    pub os_disk: AzureOsDisk,
    /// SSH over the NIC's private address.
    pub private: bool,
    /// Configured SSH ranges (empty: this machine's address).
    pub ssh_cidrs: Vec<String>,
    pub priority: AzurePriority,
    pub regular_fallback: bool,
}

impl Settings {
    /// The settings of `block` over `env`.
    ///
    /// # Errors
    /// [`ProviderError::Config`] for an image that is not a four-part URN,
    /// an unknown OS disk mode or network.
    pub fn resolve(
        block: &AzureBlock,
        env: &HashMap<String, String>,
    ) -> Result<Self, ProviderError> {
        let pick = |own: Option<&String>, var: &str, default: &str| {
            own.map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .or_else(|| {
                    env.get(var)
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty())
                })
                .unwrap_or_else(|| default.to_owned())
        };
        let image_urn = pick(block.image.as_ref(), "CRABBOX_AZURE_IMAGE", DEFAULT_IMAGE);
        let parts: Vec<&str> = image_urn.split(':').collect();
        let [publisher, offer, sku, version] = parts.as_slice() else {
            return Err(ProviderError::Config {
                message: format!("azure image `{image_urn}` is not publisher:offer:sku:version"),
                hint: format!("e.g. `{DEFAULT_IMAGE}`"),
            });
        };
        let os_disk = match block.os_disk {
            Some(d) => d,
            None => match env.get("CRABBOX_AZURE_OS_DISK").map(|s| s.trim()) {
                None | Some("" | "managed" | "auto") => AzureOsDisk::Managed,
                Some("ephemeral") => AzureOsDisk::Ephemeral,
                Some(other) => {
                    return Err(ProviderError::Config {
                        message: format!("CRABBOX_AZURE_OS_DISK `{other}` is not supported"),
                        hint: "use `managed` or `ephemeral`".to_owned(),
                    });
                }
            },
        };
        let network = pick(block.network.as_ref(), "CRABBOX_AZURE_NETWORK", "public");
        let private = match network.as_str() {
            "public" => false,
            "private" => true,
            other => {
                return Err(ProviderError::Config {
                    message: format!("azure network `{other}` is neither `public` nor `private`"),
                    hint: "use `network: public` (the VM's public IP) or `private` (its vnet IP)"
                        .to_owned(),
                });
            }
        };
        let ssh_cidrs = match &block.ssh_cidrs {
            Some(list) => list.clone(),
            None => env
                .get("CRABBOX_AZURE_SSH_CIDRS")
                .map(|s| {
                    s.split(',')
                        .map(|c| c.trim().to_owned())
                        .filter(|c| !c.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
        };
        Ok(Self {
            location: pick(
                block.location.as_ref(),
                "CRABBOX_AZURE_LOCATION",
                DEFAULT_LOCATION,
            ),
            resource_group: pick(
                block.resource_group.as_ref(),
                "CRABBOX_AZURE_RESOURCE_GROUP",
                DEFAULT_RESOURCE_GROUP,
            ),
            vnet: pick(block.vnet.as_ref(), "CRABBOX_AZURE_VNET", DEFAULT_VNET),
            subnet: pick(
                block.subnet.as_ref(),
                "CRABBOX_AZURE_SUBNET",
                DEFAULT_SUBNET,
            ),
            nsg: pick(block.nsg.as_ref(), "CRABBOX_AZURE_NSG", DEFAULT_NSG),
            image: [
                (*publisher).to_owned(),
                (*offer).to_owned(),
                (*sku).to_owned(),
                (*version).to_owned(),
            ],
            os_disk,
            private,
            ssh_cidrs,
            priority: block.priority.unwrap_or_default(),
            regular_fallback: block.regular_fallback.unwrap_or(false),
        })
    }

    /// The resource group of a member whose block names one, else the
    /// environment's or Crabbox's (what listing looks in).
    #[must_use]
    pub fn default_resource_group(env: &HashMap<String, String>) -> String {
        env.get("CRABBOX_AZURE_RESOURCE_GROUP")
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_RESOURCE_GROUP.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_wins_over_the_environment_over_crabboxs_defaults() {
        let env: HashMap<String, String> = [
            ("CRABBOX_AZURE_LOCATION", "westeurope"),
            ("CRABBOX_AZURE_VNET", "env-vnet"),
            ("CRABBOX_AZURE_SSH_CIDRS", "198.51.100.0/24, 203.0.113.7/32"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        let block = AzureBlock {
            vnet: Some("own-vnet".into()),
            ..AzureBlock::default()
        };
        let s = Settings::resolve(&block, &env).expect("settings");
        assert_eq!(s.location, "westeurope");
        assert_eq!(s.vnet, "own-vnet");
        assert_eq!(s.resource_group, DEFAULT_RESOURCE_GROUP);
        assert_eq!(s.subnet, DEFAULT_SUBNET);
        assert_eq!(s.ssh_cidrs, ["198.51.100.0/24", "203.0.113.7/32"]);
        assert_eq!(s.image[1], "ubuntu-26_04-lts");
        assert_eq!(s.priority, AzurePriority::Spot);
        let bad = AzureBlock {
            image: Some("Canonical:ubuntu".into()),
            ..AzureBlock::default()
        };
        assert!(Settings::resolve(&bad, &env).is_err());
    }
}
