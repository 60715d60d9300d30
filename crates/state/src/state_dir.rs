//! Where crabbox keeps local state: Crabbox's own state directory, so claims
//! are shared with the Go CLI. `CRABBOX_STATE_DIR` overrides it (tests, CI).

use std::ffi::OsString;
use std::path::PathBuf;

/// The state directory, where Crabbox keeps it (its `crabboxStateDir`):
/// `$XDG_STATE_HOME/crabbox`, else the user's config directory +
/// `crabbox/state` — `$XDG_CONFIG_HOME` (absolute) or `~/.config` on Linux,
/// `~/Library/Application Support` on macOS (Go's `os.UserConfigDir`, which
/// ignores `XDG_CONFIG_HOME` there). `$CRABBOX_STATE_DIR` (ours) wins.
#[must_use]
pub fn state_dir() -> PathBuf {
    state_dir_from(|name| std::env::var_os(name), cfg!(target_os = "macos"))
}

/// [`state_dir`] with the environment read through `var`.
fn state_dir_from(var: impl Fn(&str) -> Option<OsString>, macos: bool) -> PathBuf {
    let var = |name: &str| var(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("CRABBOX_STATE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = var("XDG_STATE_HOME") {
        return PathBuf::from(dir).join("crabbox");
    }
    // Where Go's `os.UserConfigDir` fails (a relative XDG_CONFIG_HOME, no
    // HOME) Crabbox stops; `~/.config` is the one place both tools can still
    // agree on.
    let config = crabbox_core::dirs::user_config_dir_from(var, macos).unwrap_or_else(|| {
        var("HOME")
            .map_or_else(|| PathBuf::from("/"), PathBuf::from)
            .join(".config")
    });
    config.join("crabbox").join("state")
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

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(vars: &[(&str, &str)], macos: bool) -> PathBuf {
        state_dir_from(
            |name| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| OsString::from(v))
            },
            macos,
        )
    }

    #[test]
    fn the_state_dir_is_where_crabbox_keeps_it() {
        let home = ("HOME", "/home/u");
        assert_eq!(
            dir(&[home], false),
            PathBuf::from("/home/u/.config/crabbox/state")
        );
        assert_eq!(
            dir(&[home, ("XDG_CONFIG_HOME", "/cfg")], false),
            PathBuf::from("/cfg/crabbox/state")
        );
        assert_eq!(
            dir(&[home, ("XDG_CONFIG_HOME", "relative")], false),
            PathBuf::from("/home/u/.config/crabbox/state")
        );
        assert_eq!(
            dir(&[home, ("XDG_CONFIG_HOME", "/cfg")], true),
            PathBuf::from("/home/u/Library/Application Support/crabbox/state")
        );
        assert_eq!(
            dir(
                &[home, ("XDG_STATE_HOME", "/st"), ("XDG_CONFIG_HOME", "/cfg")],
                false
            ),
            PathBuf::from("/st/crabbox")
        );
        assert_eq!(
            dir(
                &[
                    home,
                    ("CRABBOX_STATE_DIR", "/mine"),
                    ("XDG_STATE_HOME", "/st")
                ],
                true
            ),
            PathBuf::from("/mine")
        );
    }
}
