//! Crabbox's printed shapes of a lease — `list --json`'s `Server`,
//! `status --json`'s `StatusView`, the `leased …` and status lines — built
//! from our [`Lease`]. Field names, order and types follow Crabbox's
//! structs (cited per type) because scripts parse them.

use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

use crabbox_core::human_time;
use crabbox_core::labels::{self, Labels};
use crabbox_core::lease::Lease;
use crabbox_core::provider::ProviderName;
use crabbox_exec::ssh::SshTarget;

/// A duration as Go's `time.Duration.String` prints whole seconds:
/// `30m0s`, `1h30m0s`, `45s`, `0s`.
#[must_use]
pub fn go_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// A time label (Unix seconds, or already RFC 3339) as RFC 3339 UTC, the
/// raw value when it is neither, `""` when absent (Crabbox's
/// `blank(leaseLabelTimeDisplay(v), v)`, provider_labels.go:143-149).
#[must_use]
pub fn label_time(lease: &Lease, key: &str) -> String {
    let raw = lease.label(key).unwrap_or_default();
    match raw.parse::<u64>() {
        Ok(secs) => {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
        }
        Err(_) => raw.to_owned(),
    }
}

/// The lease's idle timeout, from Crabbox's `idle_timeout` label (Go
/// duration or seconds) or our `idle_timeout_secs`.
#[must_use]
pub fn idle_timeout(lease: &Lease) -> Option<Duration> {
    labels::secs(&lease.labels, labels::IDLE_TIMEOUT_SECS).or_else(|| {
        lease.label("idle_timeout").and_then(|v| {
            v.parse()
                .ok()
                .map(Duration::from_secs)
                .or_else(|| crabbox_core::duration::parse(v))
        })
    })
}

/// The lease's times in words for people (`expires in 29m (22:31 UTC);
/// last touched 1m ago; created 2h ago`), `None` when it has none.
#[must_use]
pub fn times_note(lease: &Lease, now: u64) -> Option<String> {
    let time = |key: &str| lease.label(key).and_then(crabbox_core::expiry::parse_time);
    let parts: Vec<String> = [
        crabbox_core::expiry::expires_at(&lease.labels).map(|at| human_time::expiry(at, now)),
        time(labels::LAST_TOUCHED_AT)
            .map(|at| format!("last touched {}", human_time::ago(at, now))),
        time(labels::CREATED_AT).map(|at| format!("created {}", human_time::ago(at, now))),
    ]
    .into_iter()
    .flatten()
    .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// How long since `last_touched_at`, as a Go duration; `""` when unknown.
fn idle_for(lease: &Lease) -> String {
    lease
        .label("last_touched_at")
        .and_then(|v| v.parse::<u64>().ok())
        .map(|t| go_duration(Duration::from_secs(labels::now_secs().saturating_sub(t))))
        .unwrap_or_default()
}

/// `value`, or `fallback` when empty (Crabbox's `blank`).
#[must_use]
pub fn blank<'a>(value: &'a str, fallback: &'a str) -> &'a str {
    if value.is_empty() { fallback } else { value }
}

/// The server's display ID (Crabbox's `DisplayID`: the cloud ID).
#[must_use]
pub fn display_id(lease: &Lease) -> &str {
    &lease.cloud_id
}

/// The machine type label.
#[must_use]
pub fn server_type(lease: &Lease) -> &str {
    lease.label(labels::SERVER_TYPE).unwrap_or_default()
}

/// The resource's name: the Hetzner server's, else the cloud ID (the
/// sandbox name or ID of delegated providers).
#[must_use]
pub fn server_name(lease: &Lease) -> String {
    match lease.provider {
        ProviderName::Hetzner => crabbox_providers::hetzner::server_name(lease.slug(), &lease.id),
        _ => lease.cloud_id.clone(),
    }
}

/// `{"ip": …}` (hcloud.go:112-116).
#[derive(Debug, Serialize)]
pub struct Ip {
    ip: String,
}

/// `{"ipv4": {"ip": …}}` (hcloud.go:112-116, 50-54).
#[derive(Debug, Serialize)]
pub struct Net {
    ipv4: Ip,
}

/// `{"name", "architecture"?}` (hcloud.go:56-59).
#[derive(Debug, Serialize)]
pub struct ServerTypeInfo {
    name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    architecture: String,
}

/// One element of `list --json`: Crabbox's `Server` (hcloud.go:97-129).
/// `CloudID`, `Provider` and `HostID` are capitalised because Crabbox's
/// struct has no JSON tags for them; `provider_metadata`, `location` and
/// `image` are omitted (omitempty, and we know none of them).
#[derive(Debug, Serialize)]
pub struct Server {
    #[serde(rename = "CloudID")]
    cloud_id: String,
    #[serde(rename = "Provider")]
    provider: String,
    #[serde(rename = "HostID")]
    host_id: String,
    id: i64,
    name: String,
    status: String,
    labels: Labels,
    public_net: Net,
    private_net: Net,
    server_type: ServerTypeInfo,
}

impl Server {
    /// The `Server` of a lease: the numeric `id` is the cloud ID where it is
    /// a number (Hetzner), else 0 as in Crabbox's delegated providers;
    /// `status` is the lease's state label.
    #[must_use]
    pub fn of(lease: &Lease) -> Self {
        Self {
            cloud_id: lease.cloud_id.clone(),
            provider: lease.provider.as_str().to_owned(),
            host_id: String::new(),
            id: lease.cloud_id.parse().unwrap_or(0),
            name: server_name(lease),
            status: lease.state().to_owned(),
            labels: lease.labels.clone(),
            public_net: Net {
                ipv4: Ip {
                    ip: lease.endpoint.host.clone().unwrap_or_default(),
                },
            },
            private_net: Net {
                ipv4: Ip { ip: String::new() },
            },
            server_type: ServerTypeInfo {
                name: server_type(lease).to_owned(),
                architecture: String::new(),
            },
        }
    }
}

/// `status --json` and `inspect --json`: Crabbox's `StatusView`
/// (status.go:257-286), keys in its order.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusView {
    pub id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub slug: String,
    pub provider: String,
    #[serde(rename = "target")]
    pub target_os: String,
    pub state: String,
    pub server_id: String,
    pub server_type: String,
    pub host: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub pond: String,
    pub network: String,
    pub ssh_host: String,
    pub ssh_user: String,
    /// A string, unlike the claim's integer `sshPort`.
    pub ssh_port: String,
    pub ssh_key: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub last_touched_at: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub idle_for: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub idle_timeout: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub expires_at: String,
    #[serde(skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    pub has_host: bool,
    pub ready: bool,
}

impl StatusView {
    /// The view of a lease, with its SSH target when it has one. `ready`:
    /// for our leases (they carry `pond_setup`), the `state=ready` label —
    /// setup and readiness checks passed; for a lease Crabbox made,
    /// Crabbox's rule without its SSH probe: an address, and a state that
    /// is neither `provisioning` nor terminal (status.go:200-256).
    #[must_use]
    pub fn of(lease: &Lease, ssh: Option<&SshTarget>) -> Self {
        let host = lease.endpoint.host.clone().unwrap_or_default();
        Self {
            id: lease.id.clone(),
            slug: lease.crabbox_slug().to_owned(),
            provider: lease.provider.as_str().to_owned(),
            target_os: lease.label("target").unwrap_or("linux").to_owned(),
            state: lease.state().to_owned(),
            server_id: display_id(lease).to_owned(),
            server_type: server_type(lease).to_owned(),
            pond: lease.label(labels::POND).unwrap_or_default().to_owned(),
            network: "public".to_owned(),
            ssh_host: ssh.map(|t| t.host.clone()).unwrap_or_default(),
            ssh_user: ssh.map(|t| t.user.clone()).unwrap_or_default(),
            ssh_port: ssh.map(|t| t.port.to_string()).unwrap_or_default(),
            ssh_key: ssh
                .and_then(|t| t.key.as_ref())
                .map(|k| k.display().to_string())
                .unwrap_or_default(),
            last_touched_at: label_time(lease, "last_touched_at"),
            idle_for: idle_for(lease),
            idle_timeout: idle_timeout(lease).map(go_duration).unwrap_or_default(),
            expires_at: label_time(lease, labels::EXPIRES_AT),
            labels: lease.labels.clone(),
            has_host: !host.is_empty(),
            ready: ready(lease, !host.is_empty()),
            host,
        }
    }

    /// Crabbox's status text line (status.go:115).
    #[must_use]
    pub fn line(&self) -> String {
        format!(
            "{} slug={} provider={} target={} windows_mode=- state={} type={} host={} pond={} network={} ready={} has_host={} idle_for={} idle_timeout={} expires={}",
            self.id,
            blank(&self.slug, "-"),
            self.provider,
            self.target_os,
            self.state,
            self.server_type,
            self.host,
            blank(&self.pond, "-"),
            self.network,
            self.ready,
            self.has_host,
            blank(&self.idle_for, "-"),
            blank(&self.idle_timeout, "-"),
            blank(&self.expires_at, "-"),
        )
    }

    /// Whether `status --wait` stops here: ready, or a terminal state
    /// (status.go:136-138, 177-184).
    #[must_use]
    pub fn wait_done(&self) -> bool {
        self.ready || terminal(&self.state)
    }
}

fn ready(lease: &Lease, has_host: bool) -> bool {
    let state = lease.state();
    if lease.label(labels::POND_SETUP).is_some() {
        state == labels::state::READY
    } else {
        has_host && state != "provisioning" && !terminal(state)
    }
}

/// Crabbox's terminal lease states (status.go:177-184).
#[must_use]
pub fn terminal(state: &str) -> bool {
    matches!(
        state.trim().to_ascii_lowercase().as_str(),
        "deleting"
            | "expired"
            | "failed"
            | "missing"
            | "released"
            | "stopped"
            | "stopped_with_code"
            | "terminated"
    )
}

/// Crabbox's `leased …` line of `warmup` (run.go:155).
#[must_use]
pub fn leased_line(lease: &Lease, idle: Duration) -> String {
    let expires = label_time(lease, labels::EXPIRES_AT);
    format!(
        "leased {} slug={} provider={} server={} type={} ip={}{} idle_timeout={} expires={}",
        lease.id,
        blank(lease.crabbox_slug(), "-"),
        lease.provider,
        display_id(lease),
        server_type(lease),
        lease.endpoint.host.as_deref().unwrap_or_default(),
        tailscale_summary(lease),
        go_duration(idle),
        expires,
    )
}

/// ` tailscale=<where>` for a lease on the tailnet: its MagicDNS name,
/// else its address, else its hostname, else its state (run.go:150-154).
fn tailscale_summary(lease: &Lease) -> String {
    if lease.label(labels::TAILSCALE) != Some("true") {
        return String::new();
    }
    let shown = [
        "tailscale_fqdn",
        "tailscale_ipv4",
        "tailscale_hostname",
        "tailscale_state",
    ]
    .into_iter()
    .find_map(|k| lease.label(k).filter(|v| !v.is_empty()))
    .unwrap_or("requested");
    format!(" tailscale={shown}")
}

/// The command line that logs in to `target`, as Crabbox's `ssh` prints
/// it (ssh_cmd.go:105-113): crabbox's own known-hosts file and key.
#[must_use]
pub fn ssh_command_line(target: &SshTarget) -> String {
    let mut words = vec!["ssh".to_owned(), "-p".to_owned(), target.port.to_string()];
    if let Some(key) = &target.key {
        words.extend([
            "-i".to_owned(),
            key.display().to_string(),
            "-o".to_owned(),
            "IdentitiesOnly=yes".to_owned(),
        ]);
    }
    words.extend([
        "-o".to_owned(),
        format!(
            "UserKnownHostsFile={}",
            target.state_dir.join("ssh").join("known_hosts").display()
        ),
        "-o".to_owned(),
        "StrictHostKeyChecking=accept-new".to_owned(),
        format!("{}@{}", target.user, target.host),
    ]);
    words
        .iter()
        .map(|w| shell_word(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Quotes one word for a POSIX shell unless it is plainly safe.
#[must_use]
pub fn shell_word(a: &str) -> String {
    if !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
    {
        a.to_owned()
    } else {
        format!("'{}'", a.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(labels: &[(&str, &str)], host: Option<&str>) -> Lease {
        let mut l: Lease = serde_json::from_value(serde_json::json!({
            "id": "cbx_000000000001", "provider": "hetzner", "cloud_id": "7", "labels": {},
        }))
        .expect("a lease");
        l.labels = labels
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        l.endpoint.host = host.map(str::to_owned);
        l
    }

    #[test]
    fn the_leased_line_says_where_the_lease_is_on_the_tailnet_as_crabbox_does() {
        let summary = |labels: &[(&str, &str)]| tailscale_summary(&lease(labels, None));
        assert_eq!(summary(&[]), "");
        assert_eq!(summary(&[("tailscale", "true")]), " tailscale=requested");
        assert_eq!(
            summary(&[("tailscale", "true"), ("tailscale_state", "failed")]),
            " tailscale=failed"
        );
        assert_eq!(
            summary(&[
                ("tailscale", "true"),
                ("tailscale_hostname", "crabbox-w"),
                ("tailscale_ipv4", "100.64.0.30"),
            ]),
            " tailscale=100.64.0.30"
        );
        let full = [
            ("tailscale", "true"),
            ("tailscale_ipv4", "100.64.0.30"),
            ("tailscale_fqdn", "crabbox-w.tail0fake.ts.net"),
        ];
        assert!(
            leased_line(
                &lease(&full, Some("203.0.113.9")),
                Duration::from_secs(1800)
            )
            .contains(" ip=203.0.113.9 tailscale=crabbox-w.tail0fake.ts.net idle_timeout=30m0s ")
        );
    }

    #[test]
    fn ready_is_setup_done_for_ours_and_crabboxs_rule_for_its_leases() {
        let ours = |state| {
            StatusView::of(
                &lease(&[("pond_setup", "x"), ("state", state)], Some("h")),
                None,
            )
        };
        assert!(ours("ready").ready);
        assert!(!ours("leased").ready, "still being set up");
        let theirs = |state, host| StatusView::of(&lease(&[("state", state)], host), None);
        assert!(theirs("leased", Some("h")).ready);
        assert!(!theirs("provisioning", Some("h")).ready);
        assert!(!theirs("failed", Some("h")).ready);
        assert!(!theirs("leased", None).ready, "no address");
    }

    #[test]
    fn the_times_note_says_when_in_words() {
        let now = 1_796_475_060; // 2026-12-05T12:51:00Z
        let l = lease(
            &[
                ("created_at", "1796467860"),
                ("last_touched_at", "2026-12-05T12:48:00Z"),
                ("expires_at", &(now + 4320).to_string()),
            ],
            None,
        );
        assert_eq!(
            times_note(&l, now).as_deref(),
            Some("expires in 1h12m (14:03 UTC); last touched 3m ago; created 2h ago")
        );
        assert_eq!(times_note(&lease(&[], None), now), None);
    }

    #[test]
    fn go_durations_print_as_go_does() {
        assert_eq!(go_duration(Duration::from_secs(1800)), "30m0s");
        assert_eq!(go_duration(Duration::from_secs(5400)), "1h30m0s");
        assert_eq!(go_duration(Duration::from_secs(45)), "45s");
        assert_eq!(go_duration(Duration::ZERO), "0s");
        assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
    }
}
