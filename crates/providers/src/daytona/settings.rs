//! Where the `daytona` provider's settings come from: the credentials
//! (environment only), the environment's defaults, and a member's
//! `daytona:` block over them — Crabbox's keys, variables and defaults.

use std::path::PathBuf;

use crabbox_core::provider::ProviderError;
use crabbox_spec::desired::DesiredMember;
use crabbox_spec::providers::DaytonaBlock;
use crabbox_state::state_dir::expand_tilde;

/// Daytona's public API.
pub const DEFAULT_API_URL: &str = "https://app.daytona.io/api";
/// The sandbox user when nothing names one (Crabbox's `daytona.user`).
pub(super) const DEFAULT_USER: &str = "daytona";
/// The work root when nothing names one (Crabbox's `daytona.workRoot`).
pub(super) const DEFAULT_WORK_ROOT: &str = "/home/daytona/crabbox";
/// The SSH gateway when the access answer names none.
pub(super) const DEFAULT_GATEWAY: &str = "ssh.app.daytona.io";
/// Lifetime of one SSH access token (Crabbox's `sshAccessMinutes`).
pub(super) const DEFAULT_ACCESS_MINUTES: u32 = 30;

/// How crabbox authenticates: an API key, or a JWT with its organization
/// (`X-Daytona-Organization-ID`, also sent with a key when set).
#[derive(Clone)]
pub struct Credentials {
    /// The API key or JWT, sent as `Authorization: Bearer`.
    pub token: String,
    /// The organization a JWT acts for.
    pub organization: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("token", &"<redacted>")
            .field("organization", &self.organization)
            .finish()
    }
}

/// A variable, `CRABBOX_<name>` first (Crabbox's forms win), then `<name>`.
fn var(name: &str) -> Option<String> {
    let get = |n: &str| {
        std::env::var(n)
            .ok()
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    get(&format!("CRABBOX_{name}")).or_else(|| get(name))
}

impl Credentials {
    /// `DAYTONA_API_KEY`, else `DAYTONA_JWT_TOKEN` with
    /// `DAYTONA_ORGANIZATION_ID` (each `CRABBOX_DAYTONA_…` first); `None`
    /// without them (a JWT without its organization is refused, as
    /// Crabbox refuses it).
    #[must_use]
    pub fn from_env() -> Option<Self> {
        let organization = var("DAYTONA_ORGANIZATION_ID");
        if let Some(token) = var("DAYTONA_API_KEY") {
            return Some(Self {
                token,
                organization,
            });
        }
        let token = var("DAYTONA_JWT_TOKEN")?;
        Some(Self {
            token,
            organization: Some(organization?),
        })
    }
}

/// The environment's defaults for what a member's block leaves out.
#[derive(Debug, Clone, Default)]
pub struct EnvDefaults {
    /// `DAYTONA_API_URL`.
    pub api_url: Option<String>,
    /// `DAYTONA_SNAPSHOT`.
    pub snapshot: Option<String>,
    /// `DAYTONA_TARGET`.
    pub target: Option<String>,
    /// `CRABBOX_DAYTONA_USER`.
    pub user: Option<String>,
    /// `CRABBOX_DAYTONA_WORK_ROOT`.
    pub work_root: Option<String>,
    /// `CRABBOX_DAYTONA_SSH_GATEWAY_HOST`.
    pub gateway: Option<String>,
    /// `CRABBOX_DAYTONA_SSH_ACCESS_MINUTES`.
    pub access_minutes: Option<u32>,
}

impl EnvDefaults {
    /// Read from the environment (`CRABBOX_` forms first).
    #[must_use]
    pub fn from_env() -> Self {
        Self {
            api_url: var("DAYTONA_API_URL"),
            snapshot: var("DAYTONA_SNAPSHOT"),
            target: var("DAYTONA_TARGET"),
            user: var("DAYTONA_USER"),
            work_root: var("DAYTONA_WORK_ROOT"),
            gateway: var("DAYTONA_SSH_GATEWAY_HOST"),
            access_minutes: var("DAYTONA_SSH_ACCESS_MINUTES").and_then(|m| m.parse().ok()),
        }
    }

    /// The API URL leases are created and listed at.
    pub(super) fn api_url(&self) -> String {
        self.api_url
            .clone()
            .unwrap_or_else(|| DEFAULT_API_URL.to_owned())
            .trim_end_matches('/')
            .to_owned()
    }

    pub(super) fn work_root(&self) -> String {
        self.work_root
            .clone()
            .unwrap_or_else(|| DEFAULT_WORK_ROOT.to_owned())
    }

    pub(super) fn access_minutes(&self) -> u32 {
        self.access_minutes
            .filter(|m| *m > 0)
            .unwrap_or(DEFAULT_ACCESS_MINUTES)
    }
}

/// One member's settings: its block over the environment's defaults.
#[derive(Debug, Clone)]
pub(super) struct MemberSettings {
    pub(super) snapshot: String,
    pub(super) target: Option<String>,
    pub(super) user: String,
    pub(super) work_root: String,
    pub(super) gateway: String,
    pub(super) access_minutes: u32,
    /// The key the SSH client presents, when the member names one.
    pub(super) key: Option<PathBuf>,
}

/// The member's settings, or why it cannot be created: no snapshot, or an
/// API URL other than the provider's (leases are listed at one URL).
pub(super) fn member_settings(
    member: &DesiredMember,
    env: &EnvDefaults,
) -> Result<MemberSettings, ProviderError> {
    let block: DaytonaBlock = crate::block_of(member)?;
    let pick = |own: Option<String>, env: &Option<String>| {
        own.map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .or_else(|| env.clone())
    };
    if let Some(url) = block.api_url.as_deref().filter(|u| !u.trim().is_empty())
        && url.trim().trim_end_matches('/') != env.api_url()
    {
        return Err(ProviderError::Config {
            message: format!(
                "member `{}`: daytona.api_url `{url}` is not the API this crabbox lists ({})",
                member.slug,
                env.api_url()
            ),
            hint: "set CRABBOX_DAYTONA_API_URL (or DAYTONA_API_URL) to it instead, so every run lists the sandboxes where they are made".to_owned(),
        });
    }
    let snapshot = pick(block.snapshot, &env.snapshot).ok_or_else(|| ProviderError::Config {
        message: format!(
            "member `{}`: provider `daytona` requires a snapshot",
            member.slug
        ),
        hint: "set `daytona: { snapshot: <name> }` (or CRABBOX_DAYTONA_SNAPSHOT); the snapshot also sets the sandbox's size".to_owned(),
    })?;
    Ok(MemberSettings {
        snapshot,
        target: pick(block.target, &env.target),
        user: pick(block.user, &env.user).unwrap_or_else(|| DEFAULT_USER.to_owned()),
        work_root: pick(block.work_root, &env.work_root)
            .unwrap_or_else(|| DEFAULT_WORK_ROOT.to_owned())
            .trim_end_matches('/')
            .to_owned(),
        gateway: pick(block.ssh_gateway_host, &env.gateway)
            .unwrap_or_else(|| DEFAULT_GATEWAY.to_owned()),
        access_minutes: block
            .ssh_access_minutes
            .filter(|m| *m > 0)
            .unwrap_or_else(|| env.access_minutes()),
        key: block
            .ssh_key
            .filter(|k| !k.trim().is_empty())
            .map(|k| expand_tilde(k.trim())),
    })
}

/// Where an SSH access token logs in: `(user, host, port)` from Daytona's
/// `sshCommand` (`ssh [-p N] <token>@<host>`), read as Crabbox reads it;
/// without a command, the token at `gateway`:22.
///
/// # Errors
/// A command of another shape (Crabbox refuses those too).
pub(super) fn ssh_destination(
    token: &str,
    command: &str,
    gateway: &str,
) -> Result<(String, String, u16), ProviderError> {
    let bad = |why: &str| {
        // The command holds the token: never in a message.
        ProviderError::Failed(format!("daytona's SSH access answer: {why}"))
    };
    let mut fields = command.split_whitespace().peekable();
    if fields.peek().is_none() {
        if token.is_empty() {
            return Err(bad("no token"));
        }
        return Ok((token.to_owned(), gateway.to_owned(), 22));
    }
    if fields.peek() == Some(&"ssh") {
        fields.next();
    }
    let mut port = 22;
    let mut destination = None;
    while let Some(field) = fields.next() {
        if field == "-p" {
            port = fields
                .next()
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| bad("`-p` without a port"))?;
        } else if let Some(p) = field.strip_prefix("-p") {
            port = p.parse().map_err(|_| bad("`-p` without a port"))?;
        } else if field.starts_with('-') {
            return Err(bad(&format!("unsupported ssh option `{field}`")));
        } else {
            destination = Some(field);
        }
    }
    let (user, host) = destination
        .and_then(|d| d.split_once('@'))
        .filter(|(u, h)| !u.is_empty() && !h.is_empty())
        .ok_or_else(|| bad("no user@host destination"))?;
    Ok((user.to_owned(), host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_commands_are_read_as_crabbox_reads_them() {
        let gw = DEFAULT_GATEWAY;
        assert_eq!(
            ssh_destination("tok", "ssh tok@ssh.app.daytona.io", gw).unwrap(),
            ("tok".into(), "ssh.app.daytona.io".into(), 22)
        );
        assert_eq!(
            ssh_destination("tok", "ssh -p 2222 tok@127.0.0.1", gw).unwrap(),
            ("tok".into(), "127.0.0.1".into(), 2222)
        );
        assert_eq!(
            ssh_destination("tok", "ssh -p2200 tok@h", gw).unwrap(),
            ("tok".into(), "h".into(), 2200)
        );
        assert_eq!(
            ssh_destination("tok", "", gw).unwrap(),
            ("tok".into(), gw.into(), 22)
        );
        for bad in ["ssh -o X=y tok@h", "ssh -p", "ssh host-only"] {
            let e = ssh_destination("tok", bad, gw).expect_err(bad);
            assert!(!e.to_string().contains("tok@"), "{e}");
        }
    }
}
