//! What every SSH-lease cloud shares: a cloud that rents servers which
//! crabbox then reaches over SSH (Hetzner, AWS EC2, Azure) implements only its
//! compute API — create, read, delete, list and relabel servers, upload and
//! delete keys — and composes [`SshLeases`] for the rest:
//!
//! - the lease's key pair ([`keys`]), generated in-process where Crabbox
//!   keeps one (`<user config>/crabbox/testboxes/<lease>/id_ed25519`), or the
//!   member's own;
//! - the endpoint record ([`endpoint`]) a later process reaches the server
//!   with, `<state>/ssh/keys/<lease>/endpoint.json`, written before the
//!   server is created;
//! - Crabbox's cloud-init bootstrap ([`cloud_init`]), so either tool reaches
//!   the other's servers;
//! - waiting for a booting server with adaptive polling, then for SSH on the
//!   port candidates (2222, then 22) with the work root prepared in the same
//!   round trip ([`boot`]);
//! - the [`SshTarget`] of each lease, cached and rebuilt after a restart
//!   ([`targets`]);
//! - the local half of a release, a rollback and a sweep: key directories,
//!   known host keys, control masters ([`files`]);
//! - recent sightings of servers ([`sightings`]) and Crabbox's names for a
//!   lease's server and key ([`names`]).

pub(crate) mod boot;
pub(crate) mod cloud_init;
pub(crate) mod endpoint;
mod files;
pub(crate) mod keys;
pub mod names;
pub(crate) mod sightings;
mod targets;

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crabbox_core::labels;
use crabbox_core::lease::is_lease_id;
use crabbox_core::provider::ProviderError;
use crabbox_exec::ssh::SshTarget;
use crabbox_spec::user_config::UserConfig;
use crabbox_state::state_dir::expand_tilde;

use crate::CreateRequest;
use crate::tailnet::enroll::{Enrollment, TailscaleConfig};

/// SSH login when the member names none: the user Crabbox's bootstrap
/// creates (its default `SSHUser`, config.go:2975).
pub(crate) const DEFAULT_SSH_USER: &str = "crabbox";
/// SSH port when the member names none (Crabbox's `SSHPort`, config.go:2977).
pub(crate) const DEFAULT_SSH_PORT: u16 = 2222;
/// Ports tried after the primary one (Crabbox's `SSHFallbackPorts`,
/// config.go:2978): sshd serves them too, and an image whose sshd ignores
/// the bootstrap's port is still reached.
const DEFAULT_FALLBACK_PORTS: [u16; 1] = [22];
/// Work roots live under this directory: Crabbox's POSIX work root
/// (target.go:19), which the bootstrap creates for the login user.
pub(crate) const DEFAULT_WORK_BASE: &str = "/work/crabbox";
/// Longest time between status polls while a server boots.
const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How long a server may take to be running with an address.
const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// How long SSH may take to answer once the server runs.
const DEFAULT_SSH_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// A value made once, by the first caller that needs it (others wait):
/// a cloud's credentials, its regions' clients.
pub(crate) type Lazy<T> = std::sync::Arc<tokio::sync::OnceCell<T>>;

/// The SSH settings of one member, from its provider block.
#[derive(Debug, Clone)]
pub(crate) struct SshSettings {
    pub(crate) user: String,
    pub(crate) port: u16,
    /// The member's own private key, if it names one.
    pub(crate) key: Option<PathBuf>,
    /// The host to connect to instead of the server's address, if the
    /// member names one.
    pub(crate) host: Option<String>,
}

impl SshSettings {
    /// The settings a block's `ssh_user`, `ssh_port` and `ssh_key` give
    /// (Crabbox's defaults for those it leaves out).
    pub(crate) fn from_block(user: Option<&str>, port: Option<u16>, key: Option<&str>) -> Self {
        Self {
            user: user
                .filter(|u| !u.is_empty())
                .map_or_else(|| DEFAULT_SSH_USER.to_owned(), str::to_owned),
            port: port.unwrap_or(DEFAULT_SSH_PORT),
            key: key.filter(|k| !k.is_empty()).map(expand_tilde),
            host: None,
        }
    }

    /// These settings, connecting to `host` (when set and not empty)
    /// instead of the server's address.
    pub(crate) fn via(mut self, host: Option<&str>) -> Self {
        self.host = host.filter(|h| !h.is_empty()).map(str::to_owned);
        self
    }
}

/// The shared SSH-lease machinery one cloud's provider holds.
#[derive(Debug)]
pub(crate) struct SshLeases {
    /// The cloud's name in messages (`hetzner`, `aws`).
    pub(crate) cloud: &'static str,
    /// Where a user looks when SSH never answers (e.g. "Hetzner's panel").
    pub(crate) console: &'static str,
    pub(crate) state_dir: PathBuf,
    /// Crabbox's per-lease key directories, `<user config>/crabbox/testboxes`.
    pub(crate) testboxes: PathBuf,
    /// SSH port candidates after the primary one.
    pub(crate) fallback_ports: Vec<u16>,
    pub(crate) poll_interval: Duration,
    pub(crate) boot_timeout: Duration,
    pub(crate) ssh_timeout: Duration,
    /// With `false`, a create returns once the server runs, without waiting
    /// for SSH or preparing the work root (tests of the API alone).
    pub(crate) ssh_bootstrap: bool,
    /// Work roots are `<work_base>/<lease>`.
    pub(crate) work_base: String,
    /// Lease ID → how to reach it.
    targets: Mutex<HashMap<String, SshTarget>>,
    /// The user's Tailscale settings, read at the first enrollment.
    tailscale: OnceLock<Result<TailscaleConfig, String>>,
}

impl SshLeases {
    /// The machinery for `cloud`, keeping records under `<state_dir>/ssh/keys/`.
    pub(crate) fn new(cloud: &'static str, console: &'static str, state_dir: &Path) -> Self {
        Self {
            cloud,
            console,
            state_dir: state_dir.to_owned(),
            // Without a user config directory (Crabbox then refuses to
            // make leases) keys stay beside the endpoint records.
            testboxes: crabbox_spec::user_config::user_config_dir().map_or_else(
                || state_dir.join("ssh").join("keys"),
                |dir| dir.join("crabbox").join("testboxes"),
            ),
            fallback_ports: DEFAULT_FALLBACK_PORTS.to_vec(),
            poll_interval: DEFAULT_POLL_INTERVAL,
            boot_timeout: DEFAULT_BOOT_TIMEOUT,
            ssh_timeout: DEFAULT_SSH_TIMEOUT,
            ssh_bootstrap: true,
            work_base: DEFAULT_WORK_BASE.to_owned(),
            targets: Mutex::new(HashMap::new()),
            tailscale: OnceLock::new(),
        }
    }

    /// The ports a lease whose primary port is `primary` is tried on.
    pub(crate) fn port_candidates(&self, primary: u16) -> Vec<u16> {
        cloud_init::port_candidates(primary, &self.fallback_ports)
    }

    /// Crabbox's cloud-init user data for a server whose login is
    /// `settings.user` with `public_key`, joining the tailnet with
    /// `tailnet` when given.
    pub(crate) fn user_data(
        &self,
        settings: &SshSettings,
        public_key: &str,
        tailnet: Option<&Enrollment>,
    ) -> String {
        cloud_init::user_data(
            &settings.user,
            public_key,
            &self.port_candidates(settings.port),
            DEFAULT_WORK_BASE,
            tailnet,
        )
    }

    /// How the server of `request` joins the tailnet, when its member asks
    /// (`tailscale: true`): the user's Tailscale settings (read once), the
    /// auth key from the environment or minted — and the request with the
    /// enrollment's labels added. Called before anything is created, so a
    /// missing key leaves nothing behind.
    pub(crate) async fn enrolled<'a>(
        &self,
        request: &'a CreateRequest,
    ) -> Result<(Cow<'a, CreateRequest>, Option<Enrollment>), ProviderError> {
        if !request.member.tailscale {
            return Ok((Cow::Borrowed(request), None));
        }
        let config = self
            .tailscale
            .get_or_init(|| {
                UserConfig::load()
                    .map(|c| TailscaleConfig::from_config(&c))
                    .map_err(|e| e.to_string())
            })
            .clone()
            .map_err(|why| ProviderError::Config {
                message: format!("Crabbox's user config cannot be read: {why}"),
                hint: "fix the file (`crabbox config show` points at the problem), or set CRABBOX_CONFIG to a good one".to_owned(),
            })?;
        let env: HashMap<String, String> = std::env::vars().collect();
        let slug = request
            .labels
            .get(labels::SLUG)
            .map_or(request.member.slug.as_str(), |v| v.as_str());
        let enrollment = Enrollment::new(
            &config,
            &env,
            crate::owner::owner().as_deref(),
            &request.pond,
            &request.lease_id,
            slug,
            self.cloud,
        )
        .await?;
        let mut labelled = request.clone();
        labelled.labels.extend(enrollment.labels());
        Ok((Cow::Owned(labelled), Some(enrollment)))
    }

    /// Takes the Tailscale settings from `config` (instead of reading
    /// Crabbox's user config at the first enrollment).
    pub(crate) fn use_user_config(&mut self, config: &UserConfig) {
        self.tailscale = OnceLock::from(Ok(TailscaleConfig::from_config(config)));
    }
}

/// A pond name that can be a label value.
pub(crate) fn check_pond(pond: &str) -> Result<(), ProviderError> {
    if pond.is_empty() || labels::sanitize(pond) != pond {
        Err(ProviderError::Failed(format!(
            "`{pond}` is not a valid pond label value"
        )))
    } else {
        Ok(())
    }
}

/// A lease ID crabbox mints (`cbx_` + 12 hex).
pub(crate) fn check_lease_id(id: &str) -> Result<(), ProviderError> {
    if is_lease_id(id) {
        Ok(())
    } else {
        Err(ProviderError::Failed(format!(
            "`{id}` is not a crabbox lease ID (cbx_ + 12 hex)"
        )))
    }
}

/// Whether `labels` name crabbox's lease `lease_id` of a pond (`want`, when
/// the lease names one): what crabbox checks before it changes or deletes a
/// server.
pub(crate) fn carries_lease_labels<'a>(
    get: impl Fn(&str) -> Option<&'a str>,
    lease_id: &str,
    want_pond: Option<&str>,
) -> bool {
    let pond_ok = match (get(labels::POND), want_pond) {
        (Some(p), Some(want)) => !p.is_empty() && p == want,
        (Some(p), None) => !p.is_empty(),
        (None, _) => false,
    };
    get(labels::CRABBOX) == Some("true") && pond_ok && get(labels::LEASE) == Some(lease_id)
}

/// Whether new labels keep what makes a server crabbox's lease: a relabel
/// that drops them is refused.
pub(crate) fn keeps_lease_labels(new: &labels::Labels, lease_id: &str) -> bool {
    let keeps = |k: &str, v: &str| new.get(k).map(|v| v.as_str()) == Some(v);
    keeps(labels::CRABBOX, "true")
        && keeps(labels::LEASE, lease_id)
        && new.get(labels::POND).is_some_and(|p| !p.is_empty())
}
