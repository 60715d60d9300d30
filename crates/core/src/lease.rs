//! A lease as discovered: identity, labels, where it came from and how to
//! reach it.

use serde::{Deserialize, Serialize};

use crate::labels::{self, LabelText, Labels};
use crate::provider::ProviderName;

/// How a lease's peers reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Endpoint {
    /// Address peers dial (a loopback address for `local`, an IP or host name otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// SSH port, for SSH-lease providers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_port: Option<u16>,
    /// Provider URL, for URL-bridge providers (the first share's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Public URLs of exposed ports (URL-bridge providers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shares: Vec<Share>,
}

/// A public URL for one port of a lease (URL-bridge providers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    /// The lease's port.
    pub port: u16,
    /// Where it is reachable.
    pub url: String,
    /// RFC 3339 expiry.
    pub expires_at: String,
    /// The provider's ID of the share (Islo's `share_id`), empty when the
    /// provider has none or an earlier version did not record it; Crabbox's
    /// peers document shows it as `shareID`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
}

/// One live lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The lease ID in its provider's shape (see [`mint`]): `cbx_` + 12
    /// hex for cloud and local leases, `isb_<sandbox name>` (Islo),
    /// `tlsbx_<sandbox id>` (Tensorlake), `static_<host>` (ssh). Leases made
    /// by earlier crabbox versions carry `cbx_` IDs on every provider.
    pub id: String,
    /// The provider it lives on.
    pub provider: ProviderName,
    /// The provider's own ID for the resource (server ID, directory name…).
    pub cloud_id: String,
    /// Its labels (from the provider, or from the claim for label-less providers).
    pub labels: Labels,
    /// How to reach it.
    #[serde(default)]
    pub endpoint: Endpoint,
    /// Whether the provider listed it (false: known only from a claim).
    #[serde(default)]
    pub listed: bool,
    /// Whether a local claim file names it.
    #[serde(default)]
    pub claimed: bool,
}

impl Lease {
    /// A label's value.
    #[must_use]
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(LabelText::as_str)
    }

    /// A label's value unless it is `unknown`, what Crabbox's sanitizer
    /// writes for an empty value (provider_labels.go:194-215): a `class` or
    /// `server_type` nobody chose.
    #[must_use]
    pub fn known_label(&self, key: &str) -> Option<&str> {
        labels::known(self.label(key))
    }

    /// The pond member this lease belongs to: `pond_member` when the
    /// `slug` label carries Crabbox's collision suffix (`api-1a2b`, see
    /// `crate::slug`), else the `slug` label. Everything that matches
    /// leases to members, renders peers or names a member uses this.
    #[must_use]
    pub fn slug(&self) -> &str {
        self.label(labels::POND_MEMBER)
            .or_else(|| self.label(labels::SLUG))
            .unwrap_or_default()
    }

    /// The `slug` label itself: the account-unique name Crabbox's CLI knows
    /// the lease by (`crabbox run --id api-1a2b`).
    #[must_use]
    pub fn crabbox_slug(&self) -> &str {
        self.label(labels::SLUG).unwrap_or_default()
    }

    /// The `state` label.
    #[must_use]
    pub fn state(&self) -> &str {
        self.label(labels::STATE).unwrap_or_default()
    }

    /// `created_at`, for picking the oldest of duplicates.
    #[must_use]
    pub fn created_at(&self) -> u64 {
        self.label(labels::CREATED_AT)
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX)
    }

    /// Whether this resource carries crabbox's markers for `pond`: the only
    /// resources crabbox may change or delete.
    #[must_use]
    pub fn is_ours(&self, pond: &str) -> bool {
        self.label(labels::CRABBOX) == Some("true")
            && self.label(labels::POND) == Some(pond)
            && self.label(labels::LEASE) == Some(self.id.as_str())
            && self.label(labels::PROVIDER) == Some(self.provider.as_str())
    }

    /// Whether the lease carries our drift hashes (`pond_block`): made, or
    /// adopted, by this tool. A lease of the pond without them was made by
    /// Crabbox's own CLI (`warmup --pond`), and is adopted, not replaced.
    #[must_use]
    pub fn has_our_hashes(&self) -> bool {
        self.label(labels::POND_BLOCK).is_some()
    }

    /// Crabbox's own ownership test for a lease of `pond`
    /// (internal/providers/hetzner/backend.go:370-381): `crabbox=true`,
    /// `created_by=crabbox`, its provider, a `lease` label naming it (in
    /// Crabbox's canonical `cbx_` shape on providers with labels), a
    /// non-empty `slug`, and `pond=<pond>`. Label-less providers get these
    /// labels from the Crabbox claim that places the lease in the pond.
    #[must_use]
    pub fn is_crabbox_member(&self, pond: &str) -> bool {
        let canonical =
            !crate::provider::features_of(self.provider).labels || is_lease_id(&self.id);
        self.label(labels::CRABBOX) == Some("true")
            && self.label(labels::CREATED_BY) == Some("crabbox")
            && self.label(labels::PROVIDER) == Some(self.provider.as_str())
            && self.label(labels::LEASE) == Some(self.id.as_str())
            && canonical
            && !self.crabbox_slug().is_empty()
            && self.label(labels::POND) == Some(pond)
    }

    /// Whether this is a lease of `pond` made by Crabbox's CLI that this
    /// tool has not adopted yet: Crabbox's ownership test holds and our
    /// hashes are missing.
    #[must_use]
    pub fn is_unadopted_crabbox_member(&self, pond: &str) -> bool {
        // Most leases carry our hashes: that one lookup answers first.
        !self.has_our_hashes() && self.is_crabbox_member(pond)
    }

    /// Whether the `keep` label is `true` (case-insensitive, as Crabbox's
    /// cleanup reads it, pool.go:540).
    #[must_use]
    pub fn is_kept(&self) -> bool {
        self.label(labels::KEEP)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }

    /// Exposed ports from the label.
    #[must_use]
    pub fn ports(&self) -> Vec<u16> {
        self.label(labels::EXPOSED_PORTS)
            .map(labels::decode_ports)
            .unwrap_or_default()
    }
}

/// Prefix of an Islo lease ID: `isb_` + the sandbox name
/// (Crabbox islo/backend.go:47, 643).
pub const ISLO_PREFIX: &str = "isb_";
/// Prefix of a Tensorlake lease ID: `tlsbx_` + the sandbox ID
/// (Crabbox tensorlake/core.go:38, tensorlake/backend.go:335-341).
pub const TENSORLAKE_PREFIX: &str = "tlsbx_";
/// Prefix of a static SSH lease ID: `static_` + the normalized host
/// (Crabbox static.go:66-73).
pub const STATIC_PREFIX: &str = "static_";

/// Lease-ID shapes per provider, as Crabbox mints them.
pub mod mint {
    use super::{ISLO_PREFIX, STATIC_PREFIX, TENSORLAKE_PREFIX};
    use crate::normalize::normalize_name;

    /// The Islo lease ID of sandbox `name`.
    #[must_use]
    pub fn islo(name: &str) -> String {
        format!("{ISLO_PREFIX}{name}")
    }

    /// The Tensorlake lease ID of sandbox `id`.
    #[must_use]
    pub fn tensorlake(id: &str) -> String {
        format!("{TENSORLAKE_PREFIX}{id}")
    }

    /// The static SSH lease ID of `host`: `static_` + Crabbox's
    /// `normalizeLeaseSlug(host)` (`static.go:66-73`), so `10.0.0.5` gives
    /// `static_10-0-0-5`.
    #[must_use]
    pub fn static_host(host: &str) -> String {
        format!("{STATIC_PREFIX}{}", normalize_name(host))
    }
}

/// Mints a lease ID: `cbx_` + 12 random lowercase hex digits.
///
/// # Panics
/// When the operating system has no randomness to give (never on Linux).
#[must_use]
pub fn new_lease_id() -> String {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).expect("the OS provides randomness");
    format!(
        "cbx_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// Whether `id` may name a claim file, by Crabbox's rule
/// (`validLeaseClaimPathID`, claim.go:2198-2226): any safe file name, so
/// every provider's lease-ID shape (`cbx_…`, `isb_…`, `tlsbx_…`,
/// `static_…`). Refused: empty, `.`/`..`, surrounding spaces, any of
/// `<>:"/\|?*`, control characters, a trailing `.`, Windows device names.
#[must_use]
pub fn is_claim_id(id: &str) -> bool {
    if id.is_empty() || id == "." || id == ".." || id != id.trim() || id.ends_with('.') {
        return false;
    }
    if id
        .chars()
        .any(|c| (c as u32) < 32 || "<>:\"/\\|?*".contains(c))
    {
        return false;
    }
    let upper = id.to_ascii_uppercase();
    let stem = upper.split('.').next().unwrap_or_default();
    let device = matches!(stem, "CON" | "PRN" | "AUX" | "NUL")
        || (stem.len() == 4
            && (stem.starts_with("COM") || stem.starts_with("LPT"))
            && matches!(stem.as_bytes()[3], b'1'..=b'9'));
    !device
}

/// Whether `id` has Crabbox's canonical lease-ID shape, `cbx_` + 12 hex
/// (`canonicalLeaseIDPattern`, slug.go:13): the shape of cloud and local
/// leases (Hetzner refuses any other, hetzner/backend.go:349-351).
#[must_use]
pub fn is_lease_id(id: &str) -> bool {
    id.strip_prefix("cbx_").is_some_and(|h| {
        h.len() == 12
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ids_have_crabbox_shape() {
        let id = new_lease_id();
        assert!(is_lease_id(&id), "{id}");
        assert_ne!(id, new_lease_id());
        assert!(!is_lease_id("cbx_ABCDEF012345"));
        assert!(!is_lease_id("cbx_0123"));
    }

    /// Crabbox `validLeaseClaimID` (claim.go:2202-2226).
    #[test]
    fn claim_ids_accept_every_provider_shape() {
        for ok in [
            "cbx_0123456789ab",
            "isb_crabbox-demo-api-1a2b3c",
            "tlsbx_abcdefghijkl0123",
            "static_10-0-0-5",
            "e2b_x",
            "con1",
            "COM0",
        ] {
            assert!(is_claim_id(ok), "{ok}");
        }
        for bad in [
            "", ".", "..", " x", "x ", "a/b", "a\\b", "a:b", "a*b", "x.", "a\u{1}b", "CON",
            "nul.txt", "com1", "LPT9",
        ] {
            assert!(!is_claim_id(bad), "{bad:?}");
        }
        assert_eq!(mint::static_host("10.0.0.5"), "static_10-0-0-5");
        assert_eq!(
            mint::static_host("Build.Example.COM"),
            "static_build-example-com"
        );
        assert_eq!(mint::islo("crabbox-a-b-012abc"), "isb_crabbox-a-b-012abc");
        assert_eq!(mint::tensorlake("abc"), "tlsbx_abc");
    }
}
