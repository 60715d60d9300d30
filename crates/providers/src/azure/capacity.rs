//! Which VM sizes an Azure member tries, at which priority, and which ARM
//! refusals move on to the next try — Crabbox's rules, so a class asks
//! Azure for the same machines whichever tool leases it.
//!
//! Facts from Crabbox (openclaw/crabbox): the Linux amd64 class tables of
//! `internal/providers/azure/provider.go` (`azureVMSizeCandidatesForClass`);
//! the two loops (every candidate at the asked priority, then every
//! candidate again on-demand after spot refusals) and the codes that move
//! on (`isAzureRetryableProvisioningError`) in `internal/cli/azure.go`.
//!
//! Differences, asked for by issue 17: the regular fallback is opt-in
//! (`azure.regular_fallback`), and codes are compared exactly with ARM's
//! error code rather than found anywhere in the error text.

use std::collections::VecDeque;

use crabbox_spec::model::Class;
use crabbox_spec::providers::AzurePriority;

/// A class's Linux (amd64) VM sizes, best first (Crabbox's table).
#[must_use]
pub fn class_sizes(class: Class) -> &'static [&'static str] {
    match class {
        Class::Tiny => &[
            "Standard_D2ads_v6",
            "Standard_D2ds_v6",
            "Standard_D2ads_v5",
            "Standard_D2ds_v5",
            "Standard_F2s_v2",
        ],
        Class::Small => &[
            "Standard_D8ads_v6",
            "Standard_D8ds_v6",
            "Standard_F8s_v2",
            "Standard_D8ads_v5",
            "Standard_D8ds_v5",
            "Standard_D4ads_v6",
            "Standard_D4ds_v6",
            "Standard_F4s_v2",
        ],
        Class::Standard => &[
            "Standard_D32ads_v6",
            "Standard_D32ds_v6",
            "Standard_F32s_v2",
            "Standard_D32ads_v5",
            "Standard_D32ds_v5",
            "Standard_D16ads_v6",
            "Standard_D16ds_v6",
            "Standard_F16s_v2",
        ],
        Class::Fast => &[
            "Standard_D64ads_v6",
            "Standard_D64ds_v6",
            "Standard_F64s_v2",
            "Standard_D64ads_v5",
            "Standard_D64ds_v5",
            "Standard_D48ads_v6",
            "Standard_D48ds_v6",
            "Standard_F48s_v2",
            "Standard_D32ads_v6",
            "Standard_D32ds_v6",
            "Standard_F32s_v2",
        ],
        Class::Large => &[
            "Standard_D96ads_v6",
            "Standard_D96ds_v6",
            "Standard_D96ads_v5",
            "Standard_D96ds_v5",
            "Standard_D64ads_v6",
            "Standard_D64ds_v6",
            "Standard_F64s_v2",
            "Standard_D48ads_v6",
            "Standard_D48ds_v6",
            "Standard_F48s_v2",
        ],
        Class::Beast => &[
            "Standard_D192ds_v6",
            "Standard_D128ds_v6",
            "Standard_D96ads_v6",
            "Standard_D96ds_v6",
            "Standard_D96ads_v5",
            "Standard_D96ds_v5",
            "Standard_D64ads_v6",
            "Standard_D64ds_v6",
            "Standard_F64s_v2",
        ],
    }
}

/// ARM error codes saying this size (at this priority) cannot be had now:
/// the next try may succeed.
pub const CAPACITY_CODES: [&str; 6] = [
    "SkuNotAvailable",
    "QuotaExceeded",
    "OperationNotAllowed",
    "AllocationFailed",
    "ZonalAllocationFailed",
    "OverconstrainedAllocationRequest",
];

/// Whether a refusal with ARM error `code` moves on to the next try.
#[must_use]
pub fn is_capacity(code: Option<&str>) -> bool {
    code.is_some_and(|c| CAPACITY_CODES.contains(&c))
}

/// One VM create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// `Standard_D32ads_v6`…
    pub size: String,
    /// Spot or regular.
    pub priority: AzurePriority,
}

impl Attempt {
    /// Crabbox's `market` label of this priority.
    #[must_use]
    pub fn market(&self) -> &'static str {
        match self.priority {
            AzurePriority::Spot => "spot",
            AzurePriority::Regular => "on-demand",
        }
    }
}

impl std::fmt::Display for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let priority = match self.priority {
            AzurePriority::Spot => "spot",
            AzurePriority::Regular => "regular",
        };
        write!(f, "size={} priority={priority}", self.size)
    }
}

/// The tries of one create: every size at the asked priority; then, when
/// that was spot and the fallback is on, every size again at regular
/// priority. Only capacity refusals move on.
#[must_use]
pub fn attempts(
    sizes: &[String],
    priority: AzurePriority,
    regular_fallback: bool,
) -> VecDeque<Attempt> {
    let mut out: VecDeque<Attempt> = sizes
        .iter()
        .map(|size| Attempt {
            size: size.clone(),
            priority,
        })
        .collect();
    if priority == AzurePriority::Spot && regular_fallback {
        out.extend(sizes.iter().map(|size| Attempt {
            size: size.clone(),
            priority: AzurePriority::Regular,
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spot_falls_back_to_regular_only_when_asked() {
        let sizes = vec!["a".to_owned(), "b".to_owned()];
        let tries: Vec<String> = attempts(&sizes, AzurePriority::Spot, true)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            tries,
            [
                "size=a priority=spot",
                "size=b priority=spot",
                "size=a priority=regular",
                "size=b priority=regular"
            ]
        );
        assert_eq!(attempts(&sizes, AzurePriority::Spot, false).len(), 2);
        assert_eq!(attempts(&sizes, AzurePriority::Regular, true).len(), 2);
        assert!(is_capacity(Some("AllocationFailed")));
        assert!(!is_capacity(Some("InvalidParameter")));
        assert!(!is_capacity(None));
        assert_eq!(class_sizes(Class::Standard)[0], "Standard_D32ads_v6");
    }
}
