//! Adoption: taking over a lease that Crabbox's own CLI made for the pond
//! (`crabbox warmup --pond P --slug S`). Such a lease carries Crabbox's
//! labels but not our drift hashes, so comparing hashes would call for a
//! replacement; instead, what can be observed on it (provider, class, type,
//! Tailscale, and location/image where labelled) is compared with the
//! spec, and a lease that fits is relabelled in place.

use crabbox_core::labels::{self, Labels, SETUP_PENDING};
use crabbox_core::lease::Lease;
use crabbox_spec::desired::DesiredMember;
use crabbox_spec::member_labels::{self, SpecHashes};

/// The labels adoption writes: the in-place update's, plus our hashes. The
/// setup hash records the spec's setup as done (the lease was set up by
/// whoever made it), or `pending` when setup runs again (`--rerun-setup`),
/// so that a failed re-run is seen by the next plan.
#[must_use]
pub fn labels(current: &Labels, m: &DesiredMember, rerun_setup: bool, now: u64) -> Labels {
    let hashes = SpecHashes::of(m);
    let mut l = member_labels::for_update(current, m, now);
    // What the lease does not show (see `misfits`) is recorded as the spec says.
    if let Some(class) = m.class
        && labels::known(current.get(labels::CLASS).map(|v| v.as_str())).is_none()
    {
        l.insert(labels::CLASS.into(), class.as_str().into());
    }
    if let Some(t) = &m.server_type
        && labels::known(current.get(labels::SERVER_TYPE).map(|v| v.as_str())).is_none()
    {
        l.insert(labels::SERVER_TYPE.into(), labels::sanitize(t));
    }
    l.insert(labels::POND_BLOCK.into(), hashes.block);
    l.insert(
        labels::POND_SETUP.into(),
        if rerun_setup {
            SETUP_PENDING.into()
        } else {
            hashes.setup
        },
    );
    l
}

/// The observable settings of `lease` that differ from `m`, one phrase
/// each (`class is "beast" on the lease, "standard" in the spec`); empty
/// when the lease fits the spec.
#[must_use]
pub fn misfits(lease: &Lease, m: &DesiredMember) -> Vec<String> {
    let mut out = Vec::new();
    let mut differ = |what: &str, live: Option<&str>, wanted: Option<&str>| {
        if live != wanted {
            let show = |v: Option<&str>, place: &str| {
                v.map_or_else(|| format!("none {place}"), |v| format!("\"{v}\" {place}"))
            };
            out.push(format!(
                "{what} is {}, {}",
                show(live, "on the lease"),
                show(wanted, "in the spec")
            ));
        }
    };
    differ(
        "provider",
        Some(lease.provider.as_str()),
        Some(m.provider.as_str()),
    );
    // A spec names a class or an exact type, never both; Crabbox labels
    // both on direct providers, so the one the spec names is compared. A
    // lease without the label (a label-less provider) shows nothing to
    // compare: adoption records the spec's value.
    match &m.server_type {
        Some(t) => {
            if let Some(live) = lease.known_label(labels::SERVER_TYPE) {
                differ("type", Some(live), Some(&labels::sanitize(t)));
            }
        }
        None => {
            if let Some(live) = lease.known_label(labels::CLASS) {
                differ("class", Some(live), m.class.map(|c| c.as_str()));
            }
        }
    }
    differ(
        "tailscale",
        Some(if lease.label(labels::TAILSCALE) == Some("true") {
            "true"
        } else {
            "false"
        }),
        Some(if m.tailscale { "true" } else { "false" }),
    );
    // Crabbox does not label location or image today; when a lease does,
    // it must match what the member's provider block asks for.
    let block = m
        .block::<serde_json::Map<String, serde_json::Value>>()
        .unwrap_or_default();
    for key in ["location", "image"] {
        let wanted = block
            .get(key)
            .and_then(serde_json::Value::as_str)
            .map(labels::sanitize);
        if let (Some(live), Some(wanted)) = (lease.known_label(key), wanted.as_deref()) {
            differ(key, Some(live), Some(wanted));
        }
    }
    out
}
