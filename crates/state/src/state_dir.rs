//! Where crabbox keeps local state: Crabbox's own state directory, so claims
//! are shared with the Go CLI. `CRABBOX_STATE_DIR` overrides it (tests, CI).

use std::path::PathBuf;

/// The state directory: `$CRABBOX_STATE_DIR`, else `$XDG_STATE_HOME/crabbox`,
/// else `~/.config/crabbox/state` (Crabbox's `UserConfigDir()/crabbox/state`).
#[must_use]
pub fn state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CRABBOX_STATE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("crabbox");
    }
    home().join(".config").join("crabbox").join("state")
}

/// The user's home directory (`/` when unknown).
#[must_use]
pub fn home() -> PathBuf {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map_or_else(|| PathBuf::from("/"), PathBuf::from)
}

/// Expands a leading `~/` against the home directory.
#[must_use]
pub fn expand_tilde(path: &str) -> PathBuf {
    match path.strip_prefix("~/") {
        Some(rest) => home().join(rest),
        None if path == "~" => home(),
        None => PathBuf::from(path),
    }
}
