//! The cloud-init user data an SSH-lease server boots with: the same bootstrap
//! Crabbox gives its servers (its `cloudInitWithAdditionalBootstrap`,
//! internal/cli/bootstrap.go:46-134), so either tool can reach a server the
//! other made — a login user (default `crabbox`) holding the lease's key,
//! sshd on every port candidate (default 2222, then 22), a work root the
//! user owns, and Crabbox's `crabbox-ready` check, which this provider's
//! SSH wait runs too.

use crate::tailnet::enroll::{Enrollment, shell_quote};

/// Crabbox's ready check, installed by the user data; it fails until the
/// bootstrap has finished (cloud-init writes it before it creates the user,
/// so a login that works while it is missing is a host without the
/// bootstrap, e.g. an image with its own sshd).
pub(crate) const READY_CHECK: &str =
    "test ! -e /usr/local/bin/crabbox-ready || /usr/local/bin/crabbox-ready >/dev/null 2>&1";

/// The ports sshd serves and a client tries, in order: the primary, then
/// the fallbacks, each once (Crabbox's `sshPortCandidates`, ssh.go:430-449).
pub(crate) fn port_candidates(primary: u16, fallbacks: &[u16]) -> Vec<u16> {
    let mut ports = vec![primary];
    for port in fallbacks {
        if !ports.contains(port) {
            ports.push(*port);
        }
    }
    ports
}

/// The `#cloud-config` document for a server whose login is `user` with
/// `public_key`, sshd on `ports`, and `work_root` owned by the user; with
/// `tailnet`, the server then joins the tailnet (after its SSH is ready: a
/// failed join is reported by the node, not a server that never answers).
pub(crate) fn user_data(
    user: &str,
    public_key: &str,
    ports: &[u16],
    work_root: &str,
    tailnet: Option<&Enrollment>,
) -> String {
    // A JSON string is a valid YAML double-quoted scalar (Crabbox quotes
    // these two with Go's strconv.Quote).
    let yaml = |s: &str| serde_json::Value::from(s).to_string();
    let port_lines: String = ports.iter().map(|p| format!("      Port {p}\n")).collect();
    let user_yaml = yaml(user);
    let key_yaml = yaml(public_key.trim());
    let user_sh = shell_quote(user);
    let root_sh = shell_quote(work_root);
    let (tailnet_files, tailnet_boot) =
        tailnet.map_or_else(Default::default, |e| (e.write_files(), e.boot_script(user)));
    format!(
        r#"#cloud-config
package_update: false
package_upgrade: false
users:
  - name: {user_yaml}
    groups: sudo
    shell: /bin/bash
    sudo: ['ALL=(ALL) NOPASSWD:ALL']
    ssh_authorized_keys:
      - {key_yaml}
write_files:
  - path: /etc/ssh/sshd_config.d/99-crabbox-port.conf
    permissions: '0644'
    content: |
{port_lines}      PasswordAuthentication no
  - path: /usr/local/bin/crabbox-ready
    permissions: '0755'
    content: |
      #!/usr/bin/env bash
      set -euo pipefail
      git --version >/dev/null
      rsync --version >/dev/null
      curl --version >/dev/null
      jq --version >/dev/null
      test -f /var/lib/crabbox/bootstrapped
      test -w {root_sh}
{tailnet_files}runcmd:
  - |
    bash -euxo pipefail <<'BOOT'
    export DEBIAN_FRONTEND=noninteractive
    printf '%s\n' 'Acquire::Retries "8";' 'Acquire::http::Timeout "30";' 'Acquire::https::Timeout "30";' >/etc/apt/apt.conf.d/80-crabbox-retries
    attempt() {{
      for n in 1 2 3 4 5 6 7 8; do
        "$@" && return 0
        sleep $((n * 5))
      done
      return 1
    }}
    if test -f /var/lib/crabbox/image-ready && test -x /usr/sbin/sshd &&
      command -v curl >/dev/null && command -v git >/dev/null &&
      command -v rsync >/dev/null && command -v jq >/dev/null; then
      echo 'crabbox: prebaked image, no packages to install'
    else
      attempt apt-get update
      attempt apt-get install -y --no-install-recommends openssh-server ca-certificates curl git rsync jq
    fi
    mkdir -p {root_sh} /var/cache/crabbox/pnpm /var/cache/crabbox/npm
    chown -R {user_sh}:{user_sh} {root_sh} /var/cache/crabbox
    install -d /var/lib/crabbox
    systemctl daemon-reload || true
    systemctl enable ssh || true
    timeout 30s systemctl restart ssh || timeout 30s systemctl restart ssh.socket || true
    touch /var/lib/crabbox/bootstrapped
    crabbox-ready
{tailnet_boot}    BOOT
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_the_primary_then_new_fallbacks() {
        assert_eq!(port_candidates(2222, &[22]), [2222, 22]);
        assert_eq!(port_candidates(22, &[22]), [22]);
        assert_eq!(port_candidates(2200, &[22, 2200, 22]), [2200, 22]);
    }

    #[test]
    fn quoting_survives_odd_values() {
        let data = user_data(
            "o'neil",
            "ssh-ed25519 AAAA \"x\"",
            &[2222, 22],
            "/w/it's",
            None,
        );
        assert!(data.contains(r#"- name: "o'neil""#), "{data}");
        assert!(data.contains(r#"- "ssh-ed25519 AAAA \"x\"""#), "{data}");
        assert!(data.contains(r"test -w '/w/it'\''s'"), "{data}");
        assert!(data.contains("      Port 2222\n      Port 22\n      PasswordAuthentication no\n"));
    }
}
