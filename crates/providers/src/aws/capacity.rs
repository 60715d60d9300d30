//! Which instance types an AWS member tries, in which market, and what an
//! EC2 refusal means for the next try — Crabbox's rules, so a class asks AWS
//! for the same machines whichever tool leases it.
//!
//! Facts from Crabbox (openclaw/crabbox at 0bba5f7):
//! - class tables: `internal/providers/aws/provider.go:202-219` (amd64) and
//!   `:221-236` (arm64);
//! - the two loops (every candidate in the asked market, then the spot
//!   refusals again on-demand): `internal/cli/aws.go:589-619`;
//! - which refusals move on: `isRetryableAWSProvisioningError` and
//!   `isAWSMarketFallbackError`, `internal/cli/aws.go:1446-1480`.
//!
//! Two differences, both asked for by issue 16: Crabbox falls back to
//! on-demand unless `capacity.fallback` says otherwise (its default is
//! `on-demand-after-120s`), here only with `aws.on_demand_fallback: true`;
//! and Crabbox matches codes as substrings of the whole error text, here the
//! EC2 error code is compared exactly (the message is read only for the word
//! "spot", as Crabbox does).

use std::collections::VecDeque;

use crabbox_spec::model::Class;

use crate::aws::api::Market;

/// CPU architecture of the image, which picks the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Arch {
    /// `x86_64` (Crabbox's default).
    #[default]
    X86_64,
    /// `arm64` (Graviton).
    Arm64,
}

/// A class's instance types, best first (Crabbox's tables, verbatim).
#[must_use]
pub fn class_types(class: Class, arch: Arch) -> &'static [&'static str] {
    match (arch, class) {
        (Arch::X86_64, Class::Tiny) => &[
            "m7a.large",
            "m7i.large",
            "c7a.xlarge",
            "c7i.xlarge",
            "t3.small",
        ],
        (Arch::X86_64, Class::Small) => &[
            "c7a.2xlarge",
            "c7i.2xlarge",
            "m7a.xlarge",
            "m7i.xlarge",
            "c7a.xlarge",
            "t3.small",
        ],
        (Arch::X86_64, Class::Standard) => &[
            "c7a.8xlarge",
            "c7i.8xlarge",
            "m7a.8xlarge",
            "m7i.8xlarge",
            "c7a.4xlarge",
            "t3.small",
        ],
        (Arch::X86_64, Class::Fast) => &[
            "c7a.16xlarge",
            "c7i.16xlarge",
            "m7a.16xlarge",
            "m7i.16xlarge",
            "c7a.12xlarge",
            "c7a.8xlarge",
            "t3.small",
        ],
        (Arch::X86_64, Class::Large) => &[
            "c7a.24xlarge",
            "c7i.24xlarge",
            "m7a.24xlarge",
            "m7i.24xlarge",
            "r7a.24xlarge",
            "c7a.16xlarge",
            "c7a.12xlarge",
            "t3.small",
        ],
        (Arch::X86_64, Class::Beast) => &[
            "c7a.48xlarge",
            "c7i.48xlarge",
            "m7a.48xlarge",
            "m7i.48xlarge",
            "r7a.48xlarge",
            "c7a.32xlarge",
            "c7i.32xlarge",
            "m7a.32xlarge",
            "c7a.24xlarge",
            "c7a.16xlarge",
            "t3.small",
        ],
        (Arch::Arm64, Class::Tiny) => &["m7g.large", "c7g.xlarge", "r7g.large", "t4g.small"],
        (Arch::Arm64, Class::Small) => &[
            "c7g.2xlarge",
            "m7g.xlarge",
            "r7g.large",
            "c7g.xlarge",
            "t4g.small",
        ],
        (Arch::Arm64, Class::Standard) => &[
            "c7g.8xlarge",
            "m7g.8xlarge",
            "r7g.8xlarge",
            "c7g.4xlarge",
            "t4g.small",
        ],
        (Arch::Arm64, Class::Fast) => &[
            "c7g.16xlarge",
            "m7g.16xlarge",
            "r7g.16xlarge",
            "c7g.12xlarge",
            "c7g.8xlarge",
            "t4g.small",
        ],
        (Arch::Arm64, Class::Large | Class::Beast) => &[
            "c7g.16xlarge",
            "m7g.16xlarge",
            "r7g.16xlarge",
            "c7g.12xlarge",
            "t4g.small",
        ],
    }
}

/// What a member asks for: a class (its candidates, in order) or one exact
/// instance type (never another).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    /// A class of the table.
    Class(Class, Arch),
    /// An exact `type`.
    Type(String),
}

impl Want {
    /// The instance types to try, in order.
    #[must_use]
    pub fn types(&self) -> Vec<String> {
        match self {
            Self::Class(class, arch) => class_types(*class, *arch)
                .iter()
                .map(|t| (*t).to_owned())
                .collect(),
            Self::Type(t) => vec![t.clone()],
        }
    }
}

/// One `RunInstances` try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// `c7a.8xlarge`…
    pub instance_type: String,
    /// Spot or on-demand.
    pub market: Market,
}

impl std::fmt::Display for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let market = match self.market {
            Market::Spot => "spot",
            Market::OnDemand => "on-demand",
        };
        write!(f, "type={} market={market}", self.instance_type)
    }
}

/// What a refused `RunInstances` means for the next try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// This type cannot be had here: try the next type; on spot, this type
    /// is not retried on-demand.
    NextType,
    /// No capacity or quota for this type in this market: try the next
    /// type, and (after a spot refusal, when the fallback is on) this type
    /// again on-demand.
    FallBackMarket,
    /// Anything else (a bad AMI, refused credentials, a malformed request):
    /// stop, as another type would fail the same way.
    Fatal,
}

/// Capacity and quota codes: another type may have room, and so may the
/// on-demand market.
const CAPACITY_CODES: [&str; 4] = [
    "InsufficientInstanceCapacity",
    "UnfulfillableCapacity",
    "MaxSpotInstanceCountExceeded",
    "VcpuLimitExceeded",
];

/// Codes saying this type (or this type in this market) is not offered.
const UNOFFERED_CODES: [&str; 2] = ["Unsupported", "InvalidParameterValue"];

/// What EC2's refusal `code` (with its `message`) means, as Crabbox reads it:
/// capacity and quota codes fall back; `Unsupported`/`InvalidParameterValue`
/// move to the next type, and also fall back to on-demand when the message
/// blames spot; `InvalidParameterCombination` does the same when it is about
/// the instance type or the Free Tier; everything else is fatal.
#[must_use]
pub fn classify(code: &str, message: &str) -> Verdict {
    if CAPACITY_CODES.contains(&code) {
        return Verdict::FallBackMarket;
    }
    let about_type = code == "InvalidParameterCombination"
        && ["Free Tier", "eligible", "InstanceType", "instance type"]
            .iter()
            .any(|w| message.contains(w));
    if UNOFFERED_CODES.contains(&code) || about_type {
        if message.to_lowercase().contains("spot") {
            Verdict::FallBackMarket
        } else {
            Verdict::NextType
        }
    } else {
        Verdict::Fatal
    }
}

/// The tries of one create, in Crabbox's order: every candidate in the asked
/// market; then, when the market was spot and the fallback is on, the types
/// whose spot refusal was [`Verdict::FallBackMarket`], on-demand. A
/// [`Verdict::Fatal`] ends it.
#[derive(Debug, Clone)]
pub struct Plan {
    queue: VecDeque<Attempt>,
    /// Types to retry on-demand once the first pass is through.
    on_demand: Vec<String>,
    on_demand_fallback: bool,
    done: bool,
}

impl Plan {
    /// The plan for `want` in `market`, falling back to on-demand after spot
    /// refusals when `on_demand_fallback`.
    #[must_use]
    pub fn new(want: &Want, market: Market, on_demand_fallback: bool) -> Self {
        Self {
            queue: want
                .types()
                .into_iter()
                .map(|instance_type| Attempt {
                    instance_type,
                    market,
                })
                .collect(),
            on_demand: Vec::new(),
            on_demand_fallback: on_demand_fallback && market == Market::Spot,
            done: false,
        }
    }

    /// The next try, `None` when there is none left.
    pub fn next_attempt(&mut self) -> Option<Attempt> {
        if self.done {
            return None;
        }
        if self.queue.is_empty() && self.on_demand_fallback {
            self.on_demand_fallback = false;
            self.queue
                .extend(self.on_demand.drain(..).map(|instance_type| Attempt {
                    instance_type,
                    market: Market::OnDemand,
                }));
        }
        self.queue.pop_front()
    }

    /// Records that `attempt` was refused with `verdict`; returns whether
    /// to go on (false after a [`Verdict::Fatal`]).
    pub fn refused(&mut self, attempt: &Attempt, verdict: Verdict) -> bool {
        match verdict {
            Verdict::Fatal => {
                self.done = true;
                false
            }
            Verdict::NextType => true,
            Verdict::FallBackMarket => {
                if attempt.market == Market::Spot {
                    self.on_demand.push(attempt.instance_type.clone());
                }
                true
            }
        }
    }
}

/// Every try of `want` in `market` when each is refused for capacity, in
/// order (the longest a create can take).
#[must_use]
pub fn attempts(want: &Want, market: Market, on_demand_fallback: bool) -> Vec<Attempt> {
    let mut plan = Plan::new(want, market, on_demand_fallback);
    let mut out = Vec::new();
    while let Some(attempt) = plan.next_attempt() {
        plan.refused(&attempt, Verdict::FallBackMarket);
        out.push(attempt);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tried(attempts: &[Attempt]) -> Vec<String> {
        attempts.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn tables_are_crabboxs() {
        assert_eq!(
            class_types(Class::Standard, Arch::X86_64),
            [
                "c7a.8xlarge",
                "c7i.8xlarge",
                "m7a.8xlarge",
                "m7i.8xlarge",
                "c7a.4xlarge",
                "t3.small"
            ]
        );
        assert_eq!(class_types(Class::Beast, Arch::X86_64).len(), 11);
        assert_eq!(class_types(Class::Beast, Arch::X86_64)[5], "c7a.32xlarge");
        assert_eq!(
            class_types(Class::Large, Arch::X86_64),
            [
                "c7a.24xlarge",
                "c7i.24xlarge",
                "m7a.24xlarge",
                "m7i.24xlarge",
                "r7a.24xlarge",
                "c7a.16xlarge",
                "c7a.12xlarge",
                "t3.small"
            ]
        );
        assert_eq!(
            class_types(Class::Tiny, Arch::X86_64),
            [
                "m7a.large",
                "m7i.large",
                "c7a.xlarge",
                "c7i.xlarge",
                "t3.small"
            ]
        );
        assert_eq!(
            class_types(Class::Small, Arch::X86_64)[4..],
            ["c7a.xlarge", "t3.small"]
        );
        assert_eq!(
            class_types(Class::Fast, Arch::X86_64)[4..],
            ["c7a.12xlarge", "c7a.8xlarge", "t3.small"]
        );
        assert_eq!(
            class_types(Class::Large, Arch::Arm64),
            class_types(Class::Beast, Arch::Arm64)
        );
        assert_eq!(
            class_types(Class::Tiny, Arch::Arm64),
            ["m7g.large", "c7g.xlarge", "r7g.large", "t4g.small"]
        );
        for class in [
            Class::Tiny,
            Class::Small,
            Class::Standard,
            Class::Fast,
            Class::Large,
            Class::Beast,
        ] {
            assert_eq!(class_types(class, Arch::X86_64).last(), Some(&"t3.small"));
            assert_eq!(class_types(class, Arch::Arm64).last(), Some(&"t4g.small"));
        }
    }

    #[test]
    fn a_class_tries_its_types_then_on_demand_only_with_the_fallback() {
        let want = Want::Class(Class::Tiny, Arch::X86_64);
        assert_eq!(
            tried(&attempts(&want, Market::Spot, false)),
            [
                "type=m7a.large market=spot",
                "type=m7i.large market=spot",
                "type=c7a.xlarge market=spot",
                "type=c7i.xlarge market=spot",
                "type=t3.small market=spot",
            ]
        );
        let with_fallback = tried(&attempts(&want, Market::Spot, true));
        assert_eq!(with_fallback.len(), 10);
        assert_eq!(with_fallback[4], "type=t3.small market=spot");
        assert_eq!(with_fallback[5], "type=m7a.large market=on-demand");
        assert_eq!(with_fallback[9], "type=t3.small market=on-demand");
        // On-demand asked: nothing to fall back to.
        assert_eq!(attempts(&want, Market::OnDemand, true).len(), 5);
        assert!(
            attempts(&want, Market::OnDemand, true)
                .iter()
                .all(|a| a.market == Market::OnDemand)
        );
    }

    #[test]
    fn an_exact_type_is_tried_alone_then_on_demand_with_the_fallback() {
        let want = Want::Type("c7a.8xlarge".into());
        assert_eq!(
            tried(&attempts(&want, Market::Spot, false)),
            ["type=c7a.8xlarge market=spot"]
        );
        assert_eq!(
            tried(&attempts(&want, Market::Spot, true)),
            [
                "type=c7a.8xlarge market=spot",
                "type=c7a.8xlarge market=on-demand"
            ]
        );
    }

    #[test]
    fn only_fallback_refusals_are_retried_on_demand_and_fatal_stops() {
        let want = Want::Class(Class::Tiny, Arch::Arm64);
        let mut plan = Plan::new(&want, Market::Spot, true);
        let mut seen = Vec::new();
        let verdicts = [
            classify("InsufficientInstanceCapacity", "no room"),
            classify("Unsupported", "not in this zone"),
            classify("Unsupported", "Spot is not supported for r7g.large"),
            classify("VcpuLimitExceeded", "quota"),
        ];
        for verdict in verdicts {
            let attempt = plan.next_attempt().expect("a try");
            assert!(plan.refused(&attempt, verdict));
            seen.push(attempt.to_string());
        }
        let attempt = plan.next_attempt().expect("the first on-demand try");
        seen.push(attempt.to_string());
        assert!(!plan.refused(&attempt, classify("AuthFailure", "no")));
        assert_eq!(plan.next_attempt(), None);
        assert_eq!(
            seen,
            [
                "type=m7g.large market=spot",
                "type=c7g.xlarge market=spot",
                "type=r7g.large market=spot",
                "type=t4g.small market=spot",
                "type=m7g.large market=on-demand",
            ]
        );
    }

    #[test]
    fn codes_are_classified_as_crabbox_does() {
        for code in CAPACITY_CODES {
            assert_eq!(classify(code, ""), Verdict::FallBackMarket, "{code}");
        }
        assert_eq!(classify("Unsupported", "nope"), Verdict::NextType);
        assert_eq!(
            classify("InvalidParameterValue", "bad type"),
            Verdict::NextType
        );
        assert_eq!(
            classify("InvalidParameterValue", "SPOT market unavailable"),
            Verdict::FallBackMarket
        );
        assert_eq!(
            classify(
                "InvalidParameterCombination",
                "The specified instance type is not eligible for Free Tier"
            ),
            Verdict::NextType
        );
        assert_eq!(
            classify("InvalidParameterCombination", "subnet and group"),
            Verdict::Fatal
        );
        for code in [
            "SpotMaxPriceTooLow",
            "InvalidAMIID.NotFound",
            "UnauthorizedOperation",
            "RequestLimitExceeded",
            "",
            "InsufficientInstanceCapacityX",
        ] {
            assert_eq!(classify(code, "spot"), Verdict::Fatal, "{code}");
        }
    }
}
