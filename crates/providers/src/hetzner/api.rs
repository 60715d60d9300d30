//! The Hetzner Cloud API as crabbox reads it: the servers and SSH keys
//! endpoints' JSON shapes (only the fields used) and their pagination.

use crabbox_core::labels::{LabelText, Labels};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub(super) struct Server {
    pub(super) id: u64,
    /// Inline, as `status` and the address: short, and 10,000 servers are
    /// decoded at every discovery of a large pond.
    #[serde(default)]
    pub(super) name: LabelText,
    #[serde(default)]
    pub(super) status: LabelText,
    #[serde(default)]
    pub(super) labels: Labels,
    #[serde(default)]
    pub(super) public_net: PublicNet,
}

impl Server {
    pub(super) fn ipv4(&self) -> Option<&str> {
        self.public_net
            .ipv4
            .as_ref()
            .map(|a| a.ip.as_str())
            .filter(|ip| !ip.is_empty())
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(super) struct PublicNet {
    #[serde(default)]
    pub(super) ipv4: Option<Address>,
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct Address {
    pub(super) ip: LabelText,
}

#[derive(Debug, Deserialize)]
pub(super) struct ServerEnvelope {
    pub(super) server: Server,
}

#[derive(Debug, Deserialize)]
pub(super) struct ServerList {
    pub(super) servers: Vec<Server>,
    #[serde(default)]
    pub(super) meta: Meta,
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct SshKey {
    pub(super) id: u64,
    pub(super) name: String,
    #[serde(default)]
    pub(super) public_key: String,
    /// MD5 of the key blob, `aa:bb:…` (what `?fingerprint=` filters on).
    #[serde(default)]
    pub(super) fingerprint: String,
    #[serde(default)]
    pub(super) labels: Labels,
}

#[derive(Debug, Deserialize)]
pub(super) struct SshKeyList {
    pub(super) ssh_keys: Vec<SshKey>,
    #[serde(default)]
    pub(super) meta: Meta,
}

#[derive(Debug, Deserialize)]
pub(super) struct SshKeyEnvelope {
    pub(super) ssh_key: SshKey,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct Meta {
    #[serde(default)]
    pub(super) pagination: Option<Pagination>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct Pagination {
    #[serde(default)]
    pub(super) next_page: Option<u32>,
    #[serde(default)]
    pub(super) last_page: Option<u32>,
}

impl Meta {
    pub(super) fn next_page(&self) -> Option<u32> {
        self.pagination.as_ref().and_then(|p| p.next_page)
    }

    pub(super) fn last_page(&self) -> Option<u32> {
        self.pagination.as_ref().and_then(|p| p.last_page)
    }
}
