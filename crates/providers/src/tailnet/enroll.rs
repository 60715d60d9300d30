//! Joining a new server to the tailnet: what an SSH-lease cloud (Hetzner,
//! AWS, Azure, GCP) adds to a `tailscale: true` member's create — the
//! labels, the cloud-init that installs Tailscale and runs `tailscale up`,
//! and the auth key it joins with.
//!
//! Crabbox's direct-provider settings and names carry over
//! (internal/cli/network.go, bootstrap.go, config.go): tags from
//! `tailscale.tags` / `CRABBOX_TAILSCALE_TAGS` (default `tag:crabbox`) plus
//! the pond's tag; the hostname from `tailscale.hostnameTemplate` /
//! `CRABBOX_TAILSCALE_HOSTNAME_TEMPLATE` (default `crabbox-{slug}`); the
//! auth key from the variable `tailscale.authKeyEnv` /
//! `CRABBOX_TAILSCALE_AUTH_KEY_ENV` names (default
//! `CRABBOX_TAILSCALE_AUTH_KEY`); `TS_CONTROL_URL` for a self-hosted control
//! plane (Headscale). Without an auth key, one is minted per member through
//! the API (`TS_API_KEY`): one-use, ephemeral, pre-authorized, carrying the
//! member's tags, valid for an hour.
//!
//! The key travels only inside the user data sent to the cloud: never on a
//! command line, in a label, a plan or a log line (the boot script turns
//! shell tracing off around it, and hands it to `tailscale up` on stdin).

use std::collections::HashMap;
use std::time::Duration;

use crabbox_core::labels::{self, Labels};
use crabbox_core::normalize::normalize_name;
use crabbox_core::pond_tag::pond_tag;
use crabbox_core::provider::ProviderError;
use crabbox_spec::user_config::UserConfig;

use super::api::{AuthKey, TailnetApi, TailnetError};
use super::{Settings, hosts};

/// Labels Crabbox records about a lease's tailnet membership
/// (network.go `applyTailscaleMetadataToServer`, claim.go).
pub mod label {
    /// `true` on a lease that asked to join.
    pub const TAILSCALE: &str = "tailscale";
    /// `requested` at create, `ready` once its address is known, `failed`.
    pub const STATE: &str = "tailscale_state";
    /// The hostname it joined as.
    pub const HOSTNAME: &str = "tailscale_hostname";
    /// Its ACL tags, comma-joined (sanitized like every label value).
    pub const TAGS: &str = "tailscale_tags";
    /// Its tailnet IPv4 address.
    pub const IPV4: &str = "tailscale_ipv4";
    /// Its MagicDNS name.
    pub const FQDN: &str = "tailscale_fqdn";
    /// The tailnet's ID of its device.
    pub const DEVICE_ID: &str = "tailscale_device_id";
    /// Why joining failed.
    pub const ERROR: &str = "tailscale_error";
}

/// The states of [`label::STATE`].
pub mod state {
    /// Asked for at create; the address is not known yet.
    pub const REQUESTED: &str = "requested";
    /// On the tailnet, address recorded.
    pub const READY: &str = "ready";
    /// Joining failed: the lease is tainted.
    pub const FAILED: &str = "failed";
}

/// Tags when the user config names none (Crabbox's default).
const DEFAULT_TAGS: &str = "tag:crabbox";
/// Hostname template when the user config names none.
const DEFAULT_HOSTNAME_TEMPLATE: &str = "crabbox-{slug}";
/// The auth key's variable when the user config names none.
pub const DEFAULT_AUTH_KEY_ENV: &str = "CRABBOX_TAILSCALE_AUTH_KEY";
/// How long a minted auth key is valid: long enough for a slow boot, short
/// enough that a leaked one is worthless soon.
const MINTED_KEY_EXPIRY: Duration = Duration::from_secs(60 * 60);
/// Where the boot script leaves what it learned (Crabbox's files).
pub const STATE_DIR: &str = "/var/lib/crabbox";
/// The pond's hosts file on each member (Crabbox's `pondHostsFile`).
const HOSTS_FILE: &str = "/etc/hosts.cbx";

/// The user's Tailscale settings (Crabbox's user config and environment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailscaleConfig {
    /// Tags every member advertises besides the pond's.
    pub tags: Vec<String>,
    /// `{slug}`, `{id}` and `{provider}` are replaced.
    pub hostname_template: String,
    /// The variable holding a reusable auth key.
    pub auth_key_env: String,
}

impl TailscaleConfig {
    /// The settings `config` holds.
    #[must_use]
    pub fn from_config(config: &UserConfig) -> Self {
        let text = |key: &str, default: &str| {
            config
                .get(key)
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .unwrap_or(default)
                .to_owned()
        };
        Self {
            tags: normalize_tags(&text("tailscale.tags", DEFAULT_TAGS)),
            hostname_template: text("tailscale.hostnameTemplate", DEFAULT_HOSTNAME_TEMPLATE),
            auth_key_env: text("tailscale.authKeyEnv", DEFAULT_AUTH_KEY_ENV),
        }
    }
}

/// Crabbox's tag list: comma-separated, trimmed, lowercased, empties and
/// repeats dropped.
fn normalize_tags(list: &str) -> Vec<String> {
    let mut tags: Vec<String> = Vec::new();
    for tag in list.split(',').map(|t| t.trim().to_lowercase()) {
        if !tag.is_empty() && !tags.contains(&tag) {
            tags.push(tag);
        }
    }
    tags
}

/// Whether `tag` is a Tailscale ACL tag Crabbox accepts: `tag:` and 1–63
/// of `[a-z0-9_-]`.
fn valid_tag(tag: &str) -> bool {
    tag.strip_prefix("tag:").is_some_and(|name| {
        !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    })
}

/// Crabbox's hostname template rendering (`renderTailscaleHostname`):
/// placeholders replaced by normalized values, the result normalized, and
/// `crabbox-<id>` when nothing is left.
#[must_use]
pub fn hostname(template: &str, lease_id: &str, slug: &str, provider: &str) -> String {
    let template = if template.trim().is_empty() {
        DEFAULT_HOSTNAME_TEMPLATE
    } else {
        template.trim()
    };
    let id = lease_id.replace('_', "-");
    let rendered = template
        .replace("{id}", &id)
        .replace("{slug}", &normalize_name(slug))
        .replace("{provider}", &normalize_name(provider));
    let name = normalize_name(&rendered);
    if name.is_empty() {
        format!("crabbox-{id}")
    } else {
        name
    }
}

/// Why no member can join with `env`: neither the configured auth key
/// nor an API key to mint one is set (`None`: one of them is). `apply`
/// asks before it creates anything.
#[must_use]
pub fn missing_key(
    config: &TailscaleConfig,
    env: &HashMap<String, String>,
) -> Option<ProviderError> {
    let set = |k: &str| env.get(k).is_some_and(|v| !v.trim().is_empty());
    (!set(&config.auth_key_env) && !set(super::API_KEY_VAR)).then(|| no_key(config))
}

fn no_key(config: &TailscaleConfig) -> ProviderError {
    ProviderError::Credentials {
        message: format!(
            "`tailscale: true` needs an auth key: {} is not set, and without {} none can be minted",
            config.auth_key_env,
            super::API_KEY_VAR
        ),
        hint: format!(
            "export {} (a reusable, pre-authorized auth key allowed to use the members' tags), or {} to mint one per member",
            config.auth_key_env,
            super::API_KEY_VAR
        ),
    }
}

/// What one new member's server joins the tailnet with.
pub struct Enrollment {
    /// Its tailnet hostname.
    pub hostname: String,
    /// Every tag it advertises, the pond's last.
    pub tags: Vec<String>,
    /// The pond's tag (`tag:cbx-pond-<owner>-<pond>`).
    pub pond_tag: String,
    auth_key: AuthKey,
    /// `TS_CONTROL_URL`: a self-hosted control plane.
    control_url: Option<String>,
}

impl std::fmt::Debug for Enrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrollment")
            .field("hostname", &self.hostname)
            .field("tags", &self.tags)
            .field("auth_key", &self.auth_key)
            .field("control_url", &self.control_url)
            .finish_non_exhaustive()
    }
}

impl Enrollment {
    /// The enrollment of lease `lease_id` (slug label `slug`) of `pond` on
    /// `provider`, for `owner` (Crabbox's identity rules): the auth key from
    /// the configured variable of `env`, else minted through the API.
    ///
    /// # Errors
    /// A tag that is not a Tailscale tag, no way to get an auth key, or the
    /// API's refusal to mint one.
    pub async fn new(
        config: &TailscaleConfig,
        env: &HashMap<String, String>,
        owner: Option<&str>,
        pond: &str,
        lease_id: &str,
        slug: &str,
        provider: &str,
    ) -> Result<Self, ProviderError> {
        if let Some(bad) = config.tags.iter().find(|t| !valid_tag(t)) {
            return Err(ProviderError::Config {
                message: format!("`{bad}` is not a Tailscale tag"),
                hint: "tags look like tag:crabbox (lowercase letters, digits, - and _); fix tailscale.tags or CRABBOX_TAILSCALE_TAGS".to_owned(),
            });
        }
        let pond_tag = pond_tag(owner.unwrap_or(""), pond).ok_or_else(|| {
            ProviderError::Failed(format!(
                "pond `{pond}` has no Tailscale tag (no letter or digit)"
            ))
        })?;
        let mut tags = config.tags.clone();
        if !tags.contains(&pond_tag) {
            tags.push(pond_tag.clone());
        }
        let hostname = hostname(&config.hostname_template, lease_id, slug, provider);
        let given = env
            .get(&config.auth_key_env)
            .map(|k| k.trim())
            .filter(|k| !k.is_empty());
        let auth_key = match given {
            Some(key) => AuthKey(key.to_owned()),
            None => Self::mint(config, env, &tags, lease_id).await?,
        };
        Ok(Self {
            hostname,
            tags,
            pond_tag,
            auth_key,
            control_url: env
                .get("TS_CONTROL_URL")
                .map(|u| u.trim().to_owned())
                .filter(|u| !u.is_empty()),
        })
    }

    /// A one-use key for this member from the API key.
    async fn mint(
        config: &TailscaleConfig,
        env: &HashMap<String, String>,
        tags: &[String],
        lease_id: &str,
    ) -> Result<AuthKey, ProviderError> {
        let Some(api) = TailnetApi::new(&Settings::from_env(env)) else {
            return Err(no_key(config));
        };
        // Tailscale allows letters, digits, spaces and `-` in descriptions.
        let description = format!("crabbox {}", lease_id.replace('_', "-"));
        api.mint_auth_key(tags, &description, MINTED_KEY_EXPIRY)
            .await
            .map_err(|e| match e {
                TailnetError::Credentials(why) => ProviderError::Credentials {
                    message: format!("minting a Tailscale auth key: {why}"),
                    hint: format!("set {} to an API key of the tailnet allowed to create auth keys", super::API_KEY_VAR),
                },
                other => ProviderError::Failed(format!(
                    "minting a Tailscale auth key (tags {}): {other}; the policy's tagOwners must let the API key's owner use these tags",
                    tags.join(",")
                )),
            })
    }

    /// The labels a new server carries from its first moment (Crabbox's
    /// `provider_labels.go`: asked for, hostname, tags).
    #[must_use]
    pub fn labels(&self) -> Labels {
        let mut out = Labels::new();
        out.insert(label::TAILSCALE.into(), "true".into());
        out.insert(label::STATE.into(), state::REQUESTED.into());
        out.insert(label::HOSTNAME.into(), labels::sanitize(&self.hostname));
        out.insert(label::TAGS.into(), labels::sanitize(&self.tags.join(",")));
        out
    }

    /// The `write_files` entries of the user data: the hosts script, its
    /// systemd service and timer (YAML, indented as list items).
    #[must_use]
    pub fn write_files(&self) -> String {
        let indent = |text: &str| -> String {
            text.lines()
                .map(|l| {
                    if l.is_empty() {
                        "\n".to_owned()
                    } else {
                        format!("      {l}\n")
                    }
                })
                .collect()
        };
        let service = format!(
            "[Unit]\nDescription=Refresh the crabbox pond's <slug>.cbx names\nAfter=tailscaled.service network-online.target\nWants=network-online.target\n\n[Service]\nType=oneshot\nExecStart=/usr/local/bin/crabbox-pond-hosts {} {HOSTS_FILE} /etc/hosts\n",
            self.pond_tag
        );
        let timer = "[Unit]\nDescription=Refresh the crabbox pond's <slug>.cbx names every 30s\n\n[Timer]\nOnBootSec=10s\nOnUnitActiveSec=30s\nAccuracySec=2s\nUnit=crabbox-pond-hosts.service\n\n[Install]\nWantedBy=timers.target\n";
        format!(
            "  - path: /usr/local/bin/crabbox-pond-hosts\n    permissions: '0755'\n    content: |\n{}  - path: /etc/systemd/system/crabbox-pond-hosts.service\n    permissions: '0644'\n    content: |\n{}  - path: /etc/systemd/system/crabbox-pond-hosts.timer\n    permissions: '0644'\n    content: |\n{}",
            indent(hosts::SCRIPT),
            indent(&service),
            indent(timer)
        )
    }

    /// The boot script's part (indented for the `runcmd` block), run once
    /// the base bootstrap is done: install Tailscale from its package
    /// repository, join with the key on stdin, wait for the address, record
    /// what the node knows of itself where the login user reads it, and
    /// start the hosts timer. It runs in a subshell of its own: a failure
    /// leaves `tailscale-error` (crabbox reads it and taints the member)
    /// instead of stopping the server's SSH from becoming ready.
    #[must_use]
    pub fn boot_script(&self, user: &str) -> String {
        let q = shell_quote;
        let control = self
            .control_url
            .as_deref()
            .map_or_else(String::new, |u| format!(" --login-server={}", q(u)));
        let owner = q(&format!("{user}:{user}"));
        let script = format!(
            r#"set +e
(
  set -e
  . /etc/os-release
  case "${{ID:-}}" in ubuntu|debian) ;; *) echo "Tailscale's packages need Debian or Ubuntu, not ${{ID:-unknown}}" >&2; exit 3 ;; esac
  install -d -m 0755 /usr/share/keyrings
  attempt curl -fsSL -o /usr/share/keyrings/tailscale-archive-keyring.gpg "https://pkgs.tailscale.com/stable/$ID/$VERSION_CODENAME.noarmor.gpg"
  echo "deb [signed-by=/usr/share/keyrings/tailscale-archive-keyring.gpg] https://pkgs.tailscale.com/stable/$ID $VERSION_CODENAME main" >/etc/apt/sources.list.d/tailscale.list
  attempt apt-get update
  attempt apt-get install -y --no-install-recommends tailscale
  systemctl enable --now tailscaled
  set +x
  printf '%s' {key} | tailscale up --auth-key=file:/dev/stdin --hostname={hostname} --advertise-tags={tags}{control}
  set -x
  ts_ip=
  for _ in $(seq 1 24); do
    ts_ip=$(tailscale ip -4 2>/dev/null | head -n1 || true)
    test -n "$ts_ip" && break
    sleep 5
  done
  test -n "$ts_ip"
  printf '%s\n' "$ts_ip" >{STATE_DIR}/tailscale-ipv4
  printf '%s\n' {hostname} >{STATE_DIR}/tailscale-hostname
  tailscale version 2>/dev/null | head -n1 >{STATE_DIR}/tailscale-version || true
  if tailscale status --json >{STATE_DIR}/tailscale-status.json 2>/dev/null; then
    jq -r '.Self.DNSName // empty' {STATE_DIR}/tailscale-status.json >{STATE_DIR}/tailscale-fqdn || true
    jq -r '.Self.ID // empty' {STATE_DIR}/tailscale-status.json >{STATE_DIR}/tailscale-device-id || true
  fi
  install -m 0644 /dev/null {HOSTS_FILE}
  systemctl daemon-reload
  systemctl enable --now crabbox-pond-hosts.timer
  /usr/local/bin/crabbox-pond-hosts {tag} {HOSTS_FILE} /etc/hosts || true
)
ts_status=$?
set -e
if [ "$ts_status" -ne 0 ]; then
  printf '%s\n' "joining the tailnet failed (exit $ts_status); see /var/log/cloud-init-output.log on the server" >{STATE_DIR}/tailscale-error
fi
chown {owner} {STATE_DIR}/tailscale-* || true
chmod 0640 {STATE_DIR}/tailscale-* || true
"#,
            key = q(&self.auth_key.0),
            hostname = q(&self.hostname),
            tags = q(&self.tags.join(",")),
            tag = q(&self.pond_tag),
        );
        script.lines().map(|l| format!("    {l}\n")).collect()
    }
}

/// `s` in single quotes for a POSIX shell.
pub(crate) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_env::env;

    fn config() -> TailscaleConfig {
        TailscaleConfig {
            tags: vec!["tag:crabbox".into()],
            hostname_template: DEFAULT_HOSTNAME_TEMPLATE.into(),
            auth_key_env: DEFAULT_AUTH_KEY_ENV.into(),
        }
    }

    #[test]
    fn hostnames_follow_crabbox_s_template_rules() {
        assert_eq!(
            hostname("crabbox-{slug}", "cbx_0123456789ab", "DB_1", "hetzner"),
            "crabbox-db-1"
        );
        assert_eq!(
            hostname("{provider}-{id}", "cbx_0123456789ab", "db", "hetzner"),
            "hetzner-cbx-0123456789ab"
        );
        assert_eq!(
            hostname("", "cbx_0123456789ab", "api", "aws"),
            "crabbox-api"
        );
        assert_eq!(
            hostname("!!!", "cbx_0123456789ab", "api", "aws"),
            "crabbox-cbx-0123456789ab"
        );
    }

    #[test]
    fn tags_are_crabbox_s_list_and_checked() {
        assert_eq!(normalize_tags(" Tag:A, tag:b,,tag:a "), ["tag:a", "tag:b"]);
        assert!(valid_tag("tag:cbx-pond-xyuoqa6-demo") && valid_tag("tag:a_b"));
        assert!(
            !valid_tag("crabbox")
                && !valid_tag("tag:")
                && !valid_tag("tag:A")
                && !valid_tag("tag:a.b")
        );
        assert!(!valid_tag(&format!("tag:{}", "a".repeat(64))));
    }

    #[tokio::test]
    async fn the_configured_key_is_used_and_never_shown() {
        let e = Enrollment::new(
            &config(),
            &env(&[("CRABBOX_TAILSCALE_AUTH_KEY", "tskey-auth-SECRET")]),
            Some("yossi.eliaz@example.com"),
            "demo",
            "cbx_0123456789ab",
            "db",
            "hetzner",
        )
        .await
        .expect("enrollment");
        assert_eq!(e.tags, ["tag:crabbox", "tag:cbx-pond-xyuoqa6-demo"]);
        assert_eq!(e.hostname, "crabbox-db");
        assert!(!format!("{e:?}").contains("SECRET"));
        let labels = e.labels();
        assert!(labels.values().all(|v| !v.contains("SECRET")));
        assert_eq!(labels[label::TAGS], "tag_crabbox_tag_cbx-pond-xyuoqa6-demo");
        let boot = e.boot_script("crabbox");
        // The key is only ever piped to `tailscale up`, with tracing off.
        let at = boot.find("tskey-auth-SECRET").expect("key in the script");
        let before = &boot[..at];
        assert!(
            before
                .rfind("set +x")
                .is_some_and(|off| before.rfind("set -x").is_none_or(|on| on < off))
        );
        assert_eq!(boot.matches("SECRET").count(), 1);
    }

    #[tokio::test]
    async fn without_a_key_or_an_api_key_the_error_names_both() {
        let err = Enrollment::new(
            &config(),
            &env(&[]),
            None,
            "demo",
            "cbx_0123456789ab",
            "db",
            "hetzner",
        )
        .await
        .expect_err("no key");
        let text = format!("{err}");
        assert!(
            text.contains("CRABBOX_TAILSCALE_AUTH_KEY") && text.contains("TS_API_KEY"),
            "{text}"
        );
        let bad = TailscaleConfig {
            tags: vec!["crabbox".into()],
            ..config()
        };
        let err = Enrollment::new(
            &bad,
            &env(&[("CRABBOX_TAILSCALE_AUTH_KEY", "k")]),
            None,
            "demo",
            "cbx_0123456789ab",
            "db",
            "hetzner",
        )
        .await
        .expect_err("bad tag");
        assert!(
            format!("{err}").contains("`crabbox` is not a Tailscale tag"),
            "{err}"
        );
    }
}
