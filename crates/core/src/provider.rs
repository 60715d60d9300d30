//! What every layer says about providers: the closed set of provider names
//! Crabbox knows, what each can do, how a provider call fails, and where a
//! command's output goes.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Every provider a member may name.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderName {
    /// Real processes on this machine, one loopback address per lease (the default).
    Local,
    /// An existing host reached with OpenSSH; never created or deleted.
    Ssh,
    /// Hetzner Cloud servers, reached over SSH.
    Hetzner,
    /// AWS EC2 instances, reached over SSH.
    Aws,
    /// Azure virtual machines, reached over SSH.
    Azure,
    /// Google Compute Engine VMs, reached over SSH.
    Gcp,
    /// Islo sandboxes with streaming exec and HTTPS port shares.
    Islo,
    /// Tensorlake Firecracker sandboxes, driven through the `tensorlake` CLI.
    Tensorlake,
    /// Daytona sandboxes from a snapshot, reached over SSH via access tokens.
    Daytona,
    /// E2B sandboxes with a process API and per-port URLs.
    E2b,
    /// Modal Sandboxes, driven through the local `modal` Python client.
    Modal,
    /// Blacksmith Testboxes, driven through the `blacksmith` CLI.
    BlacksmithTestbox,
}

impl ProviderName {
    /// Every provider, in the order blocks are listed in `pond.yaml`'s schema.
    pub const ALL: [ProviderName; 12] = [
        ProviderName::Local,
        ProviderName::Ssh,
        ProviderName::Hetzner,
        ProviderName::Aws,
        ProviderName::Azure,
        ProviderName::Gcp,
        ProviderName::Islo,
        ProviderName::Tensorlake,
        ProviderName::Daytona,
        ProviderName::E2b,
        ProviderName::Modal,
        ProviderName::BlacksmithTestbox,
    ];

    /// The name as written in `pond.yaml` and in the `provider` label, e.g. `blacksmith-testbox`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderName::Local => "local",
            ProviderName::Ssh => "ssh",
            ProviderName::Hetzner => "hetzner",
            ProviderName::Aws => "aws",
            ProviderName::Azure => "azure",
            ProviderName::Gcp => "gcp",
            ProviderName::Islo => "islo",
            ProviderName::Tensorlake => "tensorlake",
            ProviderName::Daytona => "daytona",
            ProviderName::E2b => "e2b",
            ProviderName::Modal => "modal",
            ProviderName::BlacksmithTestbox => "blacksmith-testbox",
        }
    }

    /// The provider with this exact canonical name; Crabbox's aliases are not accepted.
    #[must_use]
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// The provider a command-line `--provider` names: a canonical name or
    /// one of Crabbox's aliases, `static`/`static-ssh` for `ssh`
    /// (target.go:300-306) and `blacksmith` for `blacksmith-testbox`
    /// (provider_backend.go:1233). pond.yaml and claims keep canonical names.
    #[must_use]
    pub fn from_cli_name(s: &str) -> Option<Self> {
        match s {
            "static" | "static-ssh" => Some(Self::Ssh),
            "blacksmith" => Some(Self::BlacksmithTestbox),
            other => Self::from_name(other),
        }
    }
}

impl std::fmt::Display for ProviderName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a provider can do; decides peer transports, which steps exist, and
/// which spec options are refused before anything is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Features {
    /// Resources carry labels (else: claim files).
    pub labels: bool,
    /// Reachable over SSH.
    pub ssh: bool,
    /// Peers reach it through provider URLs (shares).
    pub url_bridge: bool,
    /// Runs on this machine with its own loopback address.
    pub local: bool,
    /// Setup steps can run in the background (detached services).
    pub background: bool,
    /// Leases can be paused and resumed, keeping their claim.
    pub pause_resume: bool,
}

impl Features {
    /// Whether peers can reach a port a member exposes.
    #[must_use]
    pub fn reachable_ports(self) -> bool {
        self.ssh || self.url_bridge || self.local
    }
}

/// What each provider can do. One table, so `validate` (which talks to no
/// provider) and the adapters agree.
#[must_use]
pub fn features_of(name: ProviderName) -> Features {
    let ssh_lease = Features {
        labels: true,
        ssh: true,
        background: true,
        ..Features::default()
    };
    match name {
        ProviderName::Local => Features {
            labels: true,
            local: true,
            background: true,
            ..Features::default()
        },
        ProviderName::Ssh => Features {
            ssh: true,
            background: true,
            ..Features::default()
        },
        ProviderName::Hetzner
        | ProviderName::Aws
        | ProviderName::Azure
        | ProviderName::Gcp
        | ProviderName::Daytona => ssh_lease,
        ProviderName::Islo => Features {
            url_bridge: true,
            background: true,
            pause_resume: true,
            ..Features::default()
        },
        ProviderName::E2b => Features {
            labels: true,
            url_bridge: true,
            background: true,
            ..Features::default()
        },
        ProviderName::Tensorlake => Features {
            background: true,
            ..Features::default()
        },
        ProviderName::Modal => Features {
            labels: true,
            ..Features::default()
        },
        ProviderName::BlacksmithTestbox => Features::default(),
    }
}

/// A provider call that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The resource does not exist (any more). Release treats this as done.
    #[error("{0} not found")]
    NotFound(String),
    /// Worth retrying: rate limits, 5xx, timeouts. `retry_after` when the provider said.
    #[error("{message}")]
    Retryable {
        /// What happened.
        message: String,
        /// The provider's requested delay.
        retry_after: Option<Duration>,
    },
    /// Credentials are missing, or the provider rejected them (an unset
    /// token variable, a 401). Its own variant because Crabbox gives it its
    /// own exit code (3) and scripts branch on it: the fix is a secret, not
    /// the spec.
    #[error("{message}")]
    Credentials {
        /// What is missing or was rejected.
        message: String,
        /// What to set.
        hint: String,
    },
    /// Configuration is missing or wrong (not the credentials); says what to set.
    #[error("{message}")]
    Config {
        /// What is wrong.
        message: String,
        /// What to do.
        hint: String,
    },
    /// The provider cannot do this at all (says what and why).
    #[error("{0}")]
    Unsupported(String),
    /// Anything else.
    #[error("{0}")]
    Failed(String),
}

impl ProviderError {
    /// The claim store could not be read or written: what it holds is
    /// unknown, so the operation stops rather than guessing.
    #[must_use]
    pub fn state(e: std::io::Error) -> Self {
        Self::Failed(format!("the claim store could not be read or written: {e}"))
    }

    /// The error in one line, with what to do when it says so.
    #[must_use]
    pub fn explained(&self) -> String {
        match self {
            Self::Config { message, hint } | Self::Credentials { message, hint } => {
                format!("{message} (help: {hint})")
            }
            other => other.to_string(),
        }
    }

    /// Whether the fix is a secret: credentials missing or refused.
    #[must_use]
    pub fn is_credentials(&self) -> bool {
        matches!(self, Self::Credentials { .. })
    }

    /// Whether the executor should retry the call.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Retryable { .. })
    }
}

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Where a command's output goes, line by line, as it arrives.
pub trait OutputSink: Send + Sync {
    /// One line (without its newline).
    fn line(&self, stream: Stream, line: &str);
}
