//! `<slug>.cbx` on every enrolled member: a script the member runs from a
//! systemd timer (every 30 s, Crabbox's period) as
//! `/usr/local/bin/crabbox-pond-hosts TAG /etc/hosts.cbx /etc/hosts`. It
//! rewrites `/etc/hosts.cbx` and a managed block of `/etc/hosts` from the
//! node's own `tailscale status --json`, keeping only peers that carry the
//! pond's ACL tag, so no Tailscale credential leaves the operator's machine.
//! The file names and block markers are Crabbox's (internal/cli/pond.go,
//! bootstrap.go), so a member made by either tool resolves the other's.
//! Crabbox's script needs `jq`; this one needs `python3`, which the images
//! crabbox boots carry.

/// The script (POSIX sh around python3).
pub const SCRIPT: &str = include_str!("pond-hosts.sh");
