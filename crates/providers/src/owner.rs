//! Who runs crabbox, as Crabbox finds it (coordinator.go:2386-2402): the
//! coordinator's `X-Crabbox-Owner` header and the owner segment of a pond's
//! Tailscale ACL tag both come from it, so both tools agree on them.

/// `CRABBOX_OWNER`, `GIT_AUTHOR_EMAIL`, `GIT_COMMITTER_EMAIL` (trimmed; empty
/// counts as unset), else git's `user.email`; `None` when none is set.
#[must_use]
pub fn owner() -> Option<String> {
    ["CRABBOX_OWNER", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"]
        .into_iter()
        .find_map(|name| {
            std::env::var(name)
                .ok()
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        })
        .or_else(|| {
            let out = std::process::Command::new("git")
                .args(["config", "--get", "user.email"])
                .stdin(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .output()
                .ok()?;
            let email = String::from_utf8(out.stdout).ok()?.trim().to_owned();
            (out.status.success() && !email.is_empty()).then_some(email)
        })
}
