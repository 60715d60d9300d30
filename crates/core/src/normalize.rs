//! Crabbox's name normalization for pond names and slugs: lowercase, every
//! run of characters outside `[a-z0-9]` becomes one `-`, leading and trailing
//! `-` trimmed; the result must be non-empty and at most 41 characters.

/// Longest pond name or slug Crabbox accepts.
pub const MAX_NAME_LEN: usize = 41;

/// Normalizes a pond name or slug (without checking its length).
#[must_use]
pub fn normalize_name(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut pending_dash = false;
    for c in raw.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            if pending_dash && !out.is_empty() {
                out.push('-');
            }
            pending_dash = false;
            out.push(c);
        } else {
            pending_dash = true;
        }
    }
    out
}

/// Why a name is unusable after normalization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameProblem {
    /// Nothing is left (no letter or digit).
    Empty,
    /// Longer than [`MAX_NAME_LEN`]; carries the normalized length.
    TooLong(usize),
}

/// Normalizes and checks a name.
///
/// # Errors
/// When the normalized name is empty or too long.
pub fn checked_name(raw: &str) -> Result<String, NameProblem> {
    let name = normalize_name(raw);
    if name.is_empty() {
        Err(NameProblem::Empty)
    } else if name.len() > MAX_NAME_LEN {
        Err(NameProblem::TooLong(name.len()))
    } else {
        Ok(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_cases() {
        for (raw, want) in [
            ("Alpha_Bravo Charlie", "alpha-bravo-charlie"),
            ("pr-42", "pr-42"),
            ("PR #42", "pr-42"),
            ("--api--", "api"),
            ("a__b", "a-b"),
            ("My.Service/V2", "my-service-v2"),
            ("  db  ", "db"),
            ("ÄPI", "pi"),
        ] {
            assert_eq!(normalize_name(raw), want, "{raw}");
        }
        assert_eq!(checked_name("---"), Err(NameProblem::Empty));
        assert_eq!(checked_name(&"a".repeat(42)), Err(NameProblem::TooLong(42)));
        assert_eq!(checked_name(&"a".repeat(41)), Ok("a".repeat(41)));
    }
}
