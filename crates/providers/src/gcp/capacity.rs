//! Which machine types a GCP member tries, spot or standard, and which
//! refusals move on to the next try — Crabbox's class tables
//! (`gcpMachineTypeCandidatesForClass`, `internal/providers/gcp/provider.go`)
//! and its fallback loops (`CreateServerWithFallback`,
//! `internal/cli/gcp.go`: every candidate in the asked model, then, when
//! configured, every candidate again as a standard VM).
//!
//! Two differences: the zone is the member's one (Crabbox also walks
//! `capacity.availabilityZones`), and a refusal moves on only for the codes
//! Compute Engine gives capacity and quota — `ZONE_RESOURCE_POOL_EXHAUSTED`
//! (and `…_WITH_DETAILS`), `QUOTA_EXCEEDED` in an operation, `quotaExceeded`
//! in an answer — not for any message mentioning "capacity", and not for 5xx
//! (retried as such).

use crabbox_spec::model::Class;

/// A class's machine types, best first (Crabbox's table, verbatim).
#[must_use]
pub fn class_types(class: Class) -> &'static [&'static str] {
    match class {
        Class::Tiny => &[
            "c4-standard-4",
            "c3-standard-4",
            "n2-standard-4",
            "n2d-standard-4",
        ],
        Class::Small => &[
            "c4-standard-8",
            "c3-standard-8",
            "n2-standard-8",
            "n2d-standard-8",
            "c4-standard-4",
        ],
        Class::Standard => &[
            "c4-standard-32",
            "c3-standard-22",
            "n2-standard-32",
            "n2d-standard-32",
        ],
        Class::Fast => &[
            "c4-standard-64",
            "c3-standard-44",
            "n2-standard-64",
            "n2d-standard-64",
            "c4-standard-32",
        ],
        Class::Large => &[
            "c4-standard-96",
            "c3-standard-88",
            "n2-standard-80",
            "n2d-standard-96",
            "c4-standard-64",
        ],
        Class::Beast => &[
            "c4-standard-192",
            "c4-standard-96",
            "c3-standard-176",
            "c3-standard-88",
            "n2d-standard-224",
            "n2-standard-128",
        ],
    }
}

/// Codes of a refusal for lack of capacity or quota: the next try may work.
pub const FALLBACK_CODES: [&str; 4] = [
    "ZONE_RESOURCE_POOL_EXHAUSTED",
    "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
    "QUOTA_EXCEEDED",
    "quotaExceeded",
];

/// One `instances.insert` try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// `c4-standard-32`…
    pub machine_type: String,
    /// A spot VM, else standard.
    pub spot: bool,
}

impl Attempt {
    /// Crabbox's `market` label value.
    #[must_use]
    pub fn market(&self) -> &'static str {
        if self.spot { "spot" } else { "on-demand" }
    }
}

impl std::fmt::Display for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let model = if self.spot { "spot" } else { "standard" };
        write!(f, "type={} model={model}", self.machine_type)
    }
}

/// Every try, in order: the types in the asked model, then (spot with
/// `standard_fallback`) the same types as standard VMs. The caller stops at
/// the first success or at a refusal that is not for capacity.
#[must_use]
pub fn attempts(types: &[String], spot: bool, standard_fallback: bool) -> Vec<Attempt> {
    let mut out: Vec<Attempt> = types
        .iter()
        .map(|t| Attempt {
            machine_type: t.clone(),
            spot,
        })
        .collect();
    if spot && standard_fallback {
        out.extend(types.iter().map(|t| Attempt {
            machine_type: t.clone(),
            spot: false,
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spot_tries_come_first_then_standard_when_allowed() {
        let types = vec!["a".to_owned(), "b".to_owned()];
        let shown: Vec<String> = attempts(&types, true, true)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            shown,
            [
                "type=a model=spot",
                "type=b model=spot",
                "type=a model=standard",
                "type=b model=standard"
            ]
        );
        assert_eq!(attempts(&types, false, true).len(), 2);
        assert_eq!(attempts(&types, true, false).len(), 2);
        assert_eq!(class_types(Class::Standard)[0], "c4-standard-32");
    }
}
