//! Crabbox's `pond peers --json` member, `BridgePeer`
//! (internal/cli/pond_bridge.go:31-52), as Crabbox itself would print it for
//! a lease: its transports come from Crabbox's capability table for the
//! provider, not from what crabbox knows about the lease, so a consumer of
//! Crabbox's document sees the same values from either tool. What crabbox
//! uses itself (hosts, env, references) is [`crate::peers::Peer`].

use serde::Serialize;

use crabbox_core::labels::Labels;
use crabbox_core::lease::{Lease, Share};
use crabbox_core::provider::{Features, ProviderName};

/// Crabbox's transport names (pond_bridge.go:58-64).
pub mod transport {
    /// The tailnet.
    pub const TAILNET: &str = "tailnet";
    /// A provider URL.
    pub const URL: &str = "url";
    /// SSH to the lease.
    pub const SSH: &str = "ssh";
    /// No transport.
    pub const NONE: &str = "none";
    /// The primary transport's endpoint is not known yet.
    pub const PENDING: &str = "pending";
    /// Ours, for the `local` provider Crabbox does not have: a loopback
    /// address on this machine.
    pub const LOCAL: &str = "local";
}

/// `expiresAt` of a target without an expiry: Go's zero `time.Time`, which
/// `omitempty` does not omit (pond_bridge.go:75-80).
pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// The labels carrying a lease's tailnet endpoint, once enrolled.
const TAILSCALE_IPV4: &str = "tailscale_ipv4";
const TAILSCALE_FQDN: &str = "tailscale_fqdn";

/// One published URL (`BridgePeerTarget`, pond_bridge.go:75-80).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BridgeTarget {
    /// The member's port.
    pub port: u16,
    /// The URL.
    pub url: String,
    /// The provider's share ID, when known.
    #[serde(rename = "shareID", skip_serializing_if = "String::is_empty")]
    pub share_id: String,
    /// RFC 3339; [`ZERO_TIME`] when unset.
    #[serde(rename = "expiresAt")]
    pub expires_at: String,
}

impl BridgeTarget {
    /// The target a share is published as.
    #[must_use]
    pub fn of(share: &Share) -> Self {
        Self {
            port: share.port,
            url: share.url.clone(),
            share_id: share.id.clone(),
            expires_at: if share.expires_at.is_empty() {
                ZERO_TIME.to_owned()
            } else {
                share.expires_at.clone()
            },
        }
    }
}

/// A share `pond peers --share-port` just published: Crabbox appends it to
/// the member's targets whatever the transport, and makes it the endpoint
/// when there was none (pond_bridge.go:435-460).
pub fn add_published(peer: &mut BridgePeer, share: &Share) {
    if !peer.targets.iter().any(|t| t.url == share.url) {
        peer.targets.push(BridgeTarget::of(share));
    }
    if peer.endpoint.is_empty() {
        peer.endpoint.clone_from(&share.url);
    }
}

/// One member of Crabbox's `{"members": [...]}`; keys, order and
/// `omitempty` as in `BridgePeer`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BridgePeer {
    /// The lease's slug, `""` when it has none.
    pub slug: String,
    /// The lease ID.
    #[serde(rename = "leaseID")]
    pub lease_id: String,
    /// Canonical provider name.
    pub provider: &'static str,
    /// The pond.
    pub pond: String,
    /// The primary transport, `pending` while its endpoint is unknown.
    pub transport: &'static str,
    /// Every transport the provider offers: tailnet, url, ssh.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub transports: Vec<&'static str>,
    /// Where the primary transport reaches it; `""` when unknown.
    pub endpoint: String,
    /// The lease's labels.
    #[serde(skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    /// Why it is pending, or what else to know.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub note: String,
    /// Published URLs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<BridgeTarget>,
    /// `unsupported-provider` when the provider's URL bridge has no adapter.
    #[serde(rename = "bridgeState", skip_serializing_if = "String::is_empty")]
    pub bridge_state: String,
}

/// A provider's transport planes in Crabbox (`ProviderCapabilities`,
/// pond.go:252-300), from its provider specs' features: `Tailscale` (not
/// egress-only), `URLBridge`, and `SSH` on an SSH-lease provider.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Bidirectional tailnet.
    pub tailscale: bool,
    /// Outbound-only tailnet.
    pub tailscale_egress: bool,
    /// Operator-routed SSH.
    pub ssh_mesh: bool,
    /// Provider URLs.
    pub url_bridge: bool,
}

impl Capabilities {
    /// Crabbox's table for our providers (internal/providers/<p>/provider.go
    /// `Features`, `Kind`, `TailscaleEgressOnly`). `local` is not a Crabbox
    /// provider: it has none.
    #[must_use]
    pub fn of(provider: ProviderName) -> Self {
        let (tailscale, tailscale_egress, ssh_mesh, url_bridge) = match provider {
            // hetzner/provider.go:45-47, azure :40-46, gcp :42-46.
            ProviderName::Hetzner | ProviderName::Azure | ProviderName::Gcp => {
                (true, false, true, false)
            }
            // aws/provider.go:51-58, daytona :24-26, ssh (static) :24-31.
            ProviderName::Aws | ProviderName::Daytona | ProviderName::Ssh => {
                (false, false, true, false)
            }
            // islo/provider.go:24-29: delegated run, URL bridge, egress-only tailnet.
            ProviderName::Islo => (false, true, false, true),
            // e2b/provider.go:23-25.
            ProviderName::E2b => (false, false, false, true),
            // tensorlake, modal, blacksmith: run sessions only.
            ProviderName::Tensorlake
            | ProviderName::Modal
            | ProviderName::BlacksmithTestbox
            | ProviderName::Local => (false, false, false, false),
        };
        Self {
            tailscale,
            tailscale_egress,
            ssh_mesh,
            url_bridge,
        }
    }

    /// `Available()`: tailnet, url, ssh, those it has.
    #[must_use]
    pub fn available(self) -> Vec<&'static str> {
        [
            (self.tailscale, transport::TAILNET),
            (self.url_bridge, transport::URL),
            (self.ssh_mesh, transport::SSH),
        ]
        .into_iter()
        .filter(|(has, _)| *has)
        .map(|(_, t)| t)
        .collect()
    }

    /// `Primary()`: the first available, else `none`.
    #[must_use]
    pub fn primary(self) -> &'static str {
        if self.tailscale {
            transport::TAILNET
        } else if self.url_bridge {
            transport::URL
        } else if self.ssh_mesh {
            transport::SSH
        } else {
            transport::NONE
        }
    }
}

/// The member Crabbox prints for `lease` of `pond` (`bridgePeerFromClaim`,
/// pond_bridge.go:527-590, then the bridge lookup of :376-503 reduced to
/// what a listed lease knows: its shares are the targets). `ours` is what
/// crabbox's adapter can do: a URL-bridge provider whose adapter cannot
/// bridge is `unsupported-provider`, as in Crabbox without an adapter.
/// Its `labels` are left empty for the caller, who moves a projected
/// lease's labels in rather than copying them (see
/// [`crate::peers::PeerSource`]).
#[must_use]
pub fn bridge_peer(pond: &str, lease: &Lease, ours: Features) -> BridgePeer {
    let caps = Capabilities::of(lease.provider);
    let label = |k: &str| lease.label(k).filter(|v| !v.is_empty());
    let tailnet = label(TAILSCALE_IPV4).or_else(|| label(TAILSCALE_FQDN));
    let url = lease
        .endpoint
        .url
        .clone()
        .filter(|u| !u.is_empty())
        .unwrap_or_default();
    let mut peer = BridgePeer {
        slug: lease.slug().to_owned(),
        lease_id: lease.id.clone(),
        provider: lease.provider.as_str(),
        pond: pond.to_owned(),
        transport: "",
        transports: caps.available(),
        endpoint: String::new(),
        // The claim's labels (the caller's to fill): a copy of the
        // provider's, none for a provider without labels (Islo claims
        // carry none, docs/crabbox-compat.md §5.5).
        labels: Labels::new(),
        note: String::new(),
        targets: Vec::new(),
        bridge_state: String::new(),
    };
    if caps.tailscale_egress && tailnet.is_some() {
        "tailnet available for outbound proxy traffic only".clone_into(&mut peer.note);
    }
    if lease.provider == ProviderName::Local {
        // Crabbox has no `local` provider, so nothing to agree with; its
        // members keep the one way to reach them, as a transport of ours.
        peer.transports = vec![transport::LOCAL];
        match lease.endpoint.host.as_deref().filter(|h| !h.is_empty()) {
            Some(host) => {
                peer.transport = transport::LOCAL;
                host.clone_into(&mut peer.endpoint);
            }
            None => {
                peer.transport = transport::PENDING;
                "local address not yet recorded for this lease".clone_into(&mut peer.note);
            }
        }
        return peer;
    }
    let mut url_primary = false;
    match caps.primary() {
        transport::TAILNET => match tailnet {
            Some(endpoint) => {
                peer.transport = transport::TAILNET;
                endpoint.clone_into(&mut peer.endpoint);
            }
            None if caps.url_bridge => {
                peer.transport = transport::URL;
                peer.endpoint = url;
                url_primary = true;
            }
            None => {
                peer.transport = transport::PENDING;
                "tailnet endpoint not yet recorded for this lease".clone_into(&mut peer.note);
            }
        },
        transport::SSH => match (
            lease.endpoint.host.as_deref().filter(|h| !h.is_empty()),
            lease.endpoint.ssh_port.filter(|p| *p != 0),
        ) {
            (None, _) => {
                peer.transport = transport::PENDING;
                "ssh endpoint not yet recorded for this lease".clone_into(&mut peer.note);
            }
            (Some(_), None) => {
                peer.transport = transport::PENDING;
                "ssh port not yet recorded for this lease".clone_into(&mut peer.note);
            }
            (Some(host), Some(port)) => {
                peer.transport = transport::SSH;
                peer.endpoint = format!("ssh://{host}:{port}");
            }
        },
        transport::URL => {
            peer.transport = transport::URL;
            peer.endpoint = url;
            url_primary = true;
        }
        _ => {
            peer.transport = transport::NONE;
            peer.note = if lease.provider == ProviderName::BlacksmithTestbox {
                "blacksmith owns connectivity".to_owned()
            } else {
                format!(
                    "no advertised pond transport for provider {}",
                    lease.provider.as_str()
                )
            };
        }
    }
    // pond_bridge.go:376-503 (:435): the bridge is asked for targets when a URL
    // primary has no endpoint yet, or as a secondary plane.
    if caps.url_bridge && (!url_primary || peer.endpoint.is_empty()) {
        if ours.url_bridge {
            peer.targets = lease.endpoint.shares.iter().map(BridgeTarget::of).collect();
            if peer.endpoint.is_empty()
                && let Some(first) = peer.targets.first()
            {
                peer.endpoint.clone_from(&first.url);
            }
        } else if url_primary {
            // :436-447: no adapter for a lookup it needs.
            "unsupported-provider".clone_into(&mut peer.bridge_state);
            peer.transport = transport::NONE;
            peer.note = format!("no bridge adapter for provider {}", peer.provider);
        }
    }
    peer
}

#[cfg(test)]
mod tests {
    use super::*;
    use crabbox_core::lease::Endpoint;
    use crabbox_core::provider::features_of;

    fn lease(provider: ProviderName, endpoint: Endpoint) -> Lease {
        Lease {
            id: "cbx_000000000001".to_owned(),
            provider,
            cloud_id: "1".to_owned(),
            labels: Labels::new(),
            endpoint,
            listed: true,
            claimed: false,
        }
    }

    #[test]
    fn ssh_members_without_host_or_port_are_pending() {
        // pond_bridge.go:558-573.
        let no_host = bridge_peer(
            "p",
            &lease(ProviderName::Aws, Endpoint::default()),
            features_of(ProviderName::Aws),
        );
        assert_eq!(
            (
                no_host.transport,
                no_host.endpoint.as_str(),
                no_host.note.as_str()
            ),
            (
                "pending",
                "",
                "ssh endpoint not yet recorded for this lease"
            )
        );
        let no_port = Endpoint {
            host: Some("h".to_owned()),
            ..Endpoint::default()
        };
        let no_port = bridge_peer(
            "p",
            &lease(ProviderName::Daytona, no_port),
            features_of(ProviderName::Daytona),
        );
        assert_eq!(no_port.note, "ssh port not yet recorded for this lease");
        let none = bridge_peer(
            "p",
            &lease(ProviderName::Modal, Endpoint::default()),
            features_of(ProviderName::Modal),
        );
        assert_eq!(
            (none.transport, none.note.as_str()),
            ("none", "no advertised pond transport for provider modal")
        );
        assert!(none.transports.is_empty());
    }

    #[test]
    fn a_url_member_without_an_adapter_is_unsupported_provider() {
        // pond_bridge.go:436-447, for a provider whose adapter cannot bridge.
        let e2b = lease(ProviderName::E2b, Endpoint::default());
        let without = Features {
            url_bridge: false,
            ..features_of(ProviderName::E2b)
        };
        let peer = bridge_peer("p", &e2b, without);
        assert_eq!(peer.bridge_state, "unsupported-provider");
        assert_eq!(peer.transport, "none");
        assert_eq!(peer.note, "no bridge adapter for provider e2b");
        // With one, the first share is the endpoint; an unset expiry is
        // Go's zero time.
        let shared = lease(
            ProviderName::E2b,
            Endpoint {
                shares: vec![Share {
                    port: 80,
                    url: "https://x".to_owned(),
                    expires_at: String::new(),
                    id: "shr_x".to_owned(),
                }],
                ..Endpoint::default()
            },
        );
        let peer = bridge_peer("p", &shared, features_of(ProviderName::E2b));
        assert_eq!(peer.endpoint, "https://x");
        assert_eq!(peer.targets[0].expires_at, ZERO_TIME);
        assert!(peer.bridge_state.is_empty());
    }
}
