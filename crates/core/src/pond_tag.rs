//! The Tailscale ACL tag every member of a pond advertises:
//! `tag:cbx-pond-<owner>-<pond>`, computed exactly as Crabbox computes it
//! (internal/cli/pond.go, `pondTagOwner`/`pondTailscaleTag`), so one ACL
//! row admits the members either tool made.
//!
//! Tailscale caps a tag at 63 characters. The prefix takes 13 and a pond
//! name up to 41 plus its `-`, which leaves 8; Crabbox keeps 7 for the owner: the local part
//! of the operator's e-mail, normalized like a pond name, kept when it
//! fits, else the first 7 characters of the lowercase unpadded base32 of its
//! SHA-256 — a stable hash, so two long names that share a prefix do not
//! share a tag.

use sha2::{Digest as _, Sha256};

use crate::normalize::normalize_name;

/// Crabbox's namespace for pond tags (pond.go:21).
pub const PREFIX: &str = "tag:cbx-pond-";
/// Longest owner segment (pond.go:47).
pub const MAX_OWNER_LEN: usize = 7;
/// The owner segment when the identity yields none (pond.go:152).
const NO_OWNER: &str = "user";

/// The owner segment of `identity` (an e-mail or a name); empty when it
/// holds no letter or digit.
#[must_use]
pub fn owner_segment(identity: &str) -> String {
    let identity = identity.trim().to_lowercase();
    // Only an `@` after the first character splits (Go: `at > 0`).
    let local = match identity.find('@') {
        Some(at) if at > 0 => &identity[..at],
        _ => identity.as_str(),
    };
    let owner = normalize_name(local);
    if owner.len() <= MAX_OWNER_LEN {
        return owner;
    }
    let digest = Sha256::digest(owner.as_bytes());
    base32_lower(&digest)[..MAX_OWNER_LEN].to_owned()
}

/// The pond's tag for `owner`'s members; `None` when the pond name holds no
/// letter or digit (the member is not in a pond).
#[must_use]
pub fn pond_tag(identity: &str, pond: &str) -> Option<String> {
    let pond = normalize_name(pond);
    if pond.is_empty() {
        return None;
    }
    let owner = owner_segment(identity);
    let owner = if owner.is_empty() { NO_OWNER } else { &owner };
    Some(format!("{PREFIX}{owner}-{pond}"))
}

/// RFC 4648 base32 (standard alphabet) without padding, lowercased.
fn base32_lower(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crabbox_s_own_examples() {
        // The example, and Crabbox's pond_test.go cases.
        assert_eq!(owner_segment("yossi.eliaz@incredibuild.com"), "xyuoqa6");
        assert_ne!(
            owner_segment("yossi.eliaz@incredibuild.com"),
            owner_segment("yossi.elman@incredibuild.com")
        );
        assert_eq!(owner_segment("a@b"), "a");
        assert_eq!(owner_segment(""), "");
        assert_eq!(owner_segment("!!"), "");
        assert_eq!(
            pond_tag("yossi.eliaz@incredibuild.com", "Alpha Pond").as_deref(),
            Some("tag:cbx-pond-xyuoqa6-alpha-pond")
        );
        assert_eq!(
            pond_tag("", "alpha").as_deref(),
            Some("tag:cbx-pond-user-alpha")
        );
        assert_eq!(pond_tag("yossi", ""), None);
    }

    #[test]
    fn edge_cases() {
        // Exactly seven characters pass; eight are hashed.
        assert_eq!(owner_segment("Seven_7@x"), "seven-7");
        let hashed = owner_segment("eight-88@x");
        assert_eq!(hashed.len(), MAX_OWNER_LEN);
        assert!(
            hashed
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        );
        // An `@` first is not a separator (Go keeps the whole identity).
        assert_eq!(owner_segment("@bob"), "bob");
        // Surrounding space and case do not matter.
        assert_eq!(owner_segment("  Bob@Example.COM "), "bob");
        // The longest pond name still gives a tag within Tailscale's 63.
        let pond = "p".repeat(crate::normalize::MAX_NAME_LEN);
        let tag = pond_tag("someone.with.a.long.name@example.com", &pond).expect("tag");
        assert_eq!(
            tag.len(),
            PREFIX.len() + MAX_OWNER_LEN + 1 + pond.len(),
            "{tag}"
        );
        assert!(tag.len() <= 63, "{tag}");
    }

    #[test]
    fn base32_matches_rfc_4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "my"),
            ("fo", "mzxq"),
            ("foo", "mzxw6"),
            ("foob", "mzxw6yq"),
            ("fooba", "mzxw6ytb"),
            ("foobar", "mzxw6ytboi"),
        ] {
            assert_eq!(base32_lower(input.as_bytes()), want, "{input}");
        }
    }
}
