//! Go's `os.UserConfigDir()`, which Crabbox builds its paths on (its config
//! file, `testboxes/<lease>/` keys, the fallback state directory). Pure: the
//! environment is read through the caller's `var`.

use std::ffi::OsString;
use std::path::PathBuf;

/// `$XDG_CONFIG_HOME` (absolute) or `~/.config` on Linux, `~/Library/Application
/// Support` on macOS (Go never consults XDG there). `None` where Go fails:
/// no `$HOME`, or a relative `$XDG_CONFIG_HOME`. Empty variables count as unset.
#[must_use]
pub fn user_config_dir_from(
    var: impl Fn(&str) -> Option<OsString>,
    macos: bool,
) -> Option<PathBuf> {
    let var = |name: &str| var(name).filter(|v| !v.is_empty());
    if !macos && let Some(dir) = var("XDG_CONFIG_HOME") {
        let dir = PathBuf::from(dir);
        return dir.is_absolute().then_some(dir);
    }
    let home = PathBuf::from(var("HOME")?);
    Some(if macos {
        home.join("Library").join("Application Support")
    } else {
        home.join(".config")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(vars: &[(&str, &str)], macos: bool) -> Option<PathBuf> {
        user_config_dir_from(
            |name| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| OsString::from(v))
            },
            macos,
        )
    }

    #[test]
    fn the_user_config_dir_is_gos() {
        let home = ("HOME", "/home/u");
        assert_eq!(dir(&[home], false), Some(PathBuf::from("/home/u/.config")));
        assert_eq!(
            dir(&[home, ("XDG_CONFIG_HOME", "/x")], false),
            Some(PathBuf::from("/x"))
        );
        // Go: "path in $XDG_CONFIG_HOME is relative" is an error.
        assert_eq!(dir(&[home, ("XDG_CONFIG_HOME", "rel")], false), None);
        assert_eq!(
            dir(&[home, ("XDG_CONFIG_HOME", "/x")], true),
            Some(PathBuf::from("/home/u/Library/Application Support"))
        );
        assert_eq!(dir(&[], false), None);
    }
}
