//! Compute Engine's rules for label keys and values, and the name of the SSH
//! firewall rule — Crabbox's (`gcpLabelKey`, `gcpLabelValue`,
//! `gcpFirewallNameForPolicy` in `internal/cli/gcp.go`), so either tool reads
//! and finds the other's.

use crabbox_core::labels::{self, Labels};

/// Crabbox's firewall rule name for the default network.
pub const FIREWALL: &str = "crabbox-ssh";
/// Crabbox's default network tag, which the rule targets.
pub const DEFAULT_TAG: &str = "crabbox-ssh";
/// What makes a firewall rule Crabbox's (and crabbox's): its description
/// contains it, and neither tool changes a rule without it.
pub const FIREWALL_DESCRIPTION: &str = "Crabbox-managed SSH ingress";

/// A label value as Compute Engine takes it: crabbox's sanitizer, then
/// lowercase, every character outside `[a-z0-9_-]` as `_`, at most 63,
/// trimmed of `_` and `-`, `unknown` when nothing is left.
#[must_use]
pub fn label_value(value: &str) -> String {
    let lower = labels::sanitize(value).to_lowercase();
    let mapped: String = lower
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect();
    let out = mapped.trim_matches(|c| c == '_' || c == '-');
    if out.is_empty() {
        labels::UNKNOWN.to_owned()
    } else {
        out.to_owned()
    }
}

/// A label key: a value that starts with a lowercase letter (`x` is put in
/// front of one that does not).
#[must_use]
pub fn label_key(key: &str) -> String {
    let out = label_value(key);
    if out.starts_with(|c: char| c.is_ascii_lowercase()) {
        out
    } else {
        format!("x{out}").chars().take(63).collect()
    }
}

/// Every label as Compute Engine takes it.
#[must_use]
pub fn gcp_labels(labels: &Labels) -> Labels {
    labels
        .iter()
        .map(|(k, v)| (label_key(k).into(), label_value(v).into()))
        .collect()
}

/// The last segment of a resource URL (`…/zones/europe-west2-a` →
/// `europe-west2-a`).
#[must_use]
pub fn resource_name(url: &str) -> &str {
    let url = url.trim().trim_end_matches('/');
    url.rsplit('/').next().unwrap_or(url)
}

/// The region of a zone (`europe-west2-a` → `europe-west2`).
#[must_use]
pub fn region_of(zone: &str) -> &str {
    zone.rfind('-').map_or(zone, |i| &zone[..i])
}

/// The firewall rule for SSH from `ranges` to `tags` on `ports` of
/// `network`: `crabbox-ssh` for Crabbox's default policy on the default
/// network, else the network's rule name with a hash of the policy — so a
/// rule is only ever shared by members asking for the same ingress.
#[must_use]
pub fn firewall_name(network: &str, ranges: &[String], tags: &[String], ports: &[u16]) -> String {
    let base = network_rule_name(network);
    let canonical = |values: Vec<String>| {
        let mut v = values;
        v.sort();
        v.join(",")
    };
    let ranges = canonical(ranges.to_vec());
    let tags = canonical(tags.to_vec());
    let ports = canonical(ports.iter().map(u16::to_string).collect());
    if ranges == "0.0.0.0/0" && tags == DEFAULT_TAG && ports == "22,2222" {
        return base;
    }
    let suffix = format!(
        "{:08x}",
        fnv1a32(format!("{ranges}|{tags}|{ports}").as_bytes())
    );
    let max = 63 - suffix.len() - 1;
    let mut base = base;
    if base.len() > max {
        base.truncate(max);
        base = base.trim_end_matches('-').to_owned();
    }
    if base.is_empty() {
        base = FIREWALL.to_owned();
    }
    format!("{base}-{suffix}")
}

/// `crabbox-ssh` for the default network, else `crabbox-ssh-<network>`.
fn network_rule_name(network: &str) -> String {
    let name = resource_name(network).trim().to_lowercase();
    if name.is_empty() || name == "default" {
        return FIREWALL.to_owned();
    }
    let mapped: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let mut suffix = mapped.trim_matches('-').to_owned();
    while suffix.contains("--") {
        suffix = suffix.replace("--", "-");
    }
    if suffix.is_empty() {
        suffix = "custom".to_owned();
    } else if !suffix.starts_with(|c: char| c.is_ascii_lowercase()) {
        suffix = format!("net-{suffix}");
    }
    let prefix = format!("{FIREWALL}-");
    if prefix.len() + suffix.len() > 63 {
        suffix.truncate(63 - prefix.len());
        suffix = suffix.trim_end_matches('-').to_owned();
    }
    if suffix.is_empty() {
        suffix = "custom".to_owned();
    }
    prefix + &suffix
}

/// 32-bit FNV-1a.
fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_compute_engines_rules() {
        assert_eq!(label_value("cbx_0123456789ab"), "cbx_0123456789ab");
        assert_eq!(label_value("My.Pond"), "my_pond");
        assert_eq!(label_value("--"), "unknown");
        assert_eq!(label_value(&"a".repeat(80)).len(), 63);
        assert_eq!(label_key("crabbox"), "crabbox");
        assert_eq!(label_key("9lives"), "x9lives");
        assert_eq!(label_key("Server.Type"), "server_type");
    }

    #[test]
    fn the_firewall_is_named_as_crabbox_names_it() {
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            firewall_name(
                "default",
                &s(&["0.0.0.0/0"]),
                &s(&["crabbox-ssh"]),
                &[2222, 22]
            ),
            "crabbox-ssh"
        );
        let hashed = firewall_name(
            "projects/p/global/networks/Lab_Net",
            &s(&["203.0.113.7/32"]),
            &s(&["crabbox-ssh"]),
            &[2222, 22],
        );
        let want = format!(
            "crabbox-ssh-lab-net-{:08x}",
            fnv1a32(b"203.0.113.7/32|crabbox-ssh|22,2222")
        );
        assert_eq!(hashed, want);
        assert!(firewall_name(&"n".repeat(90), &s(&["10.0.0.0/8"]), &[], &[22]).len() <= 63);
        assert_eq!(network_rule_name("9net"), "crabbox-ssh-net-9net");
        assert_eq!(region_of("europe-west2-a"), "europe-west2");
        assert_eq!(resource_name("https://x/zones/us-east1-b"), "us-east1-b");
    }
}
