//! Crabbox's slug uniqueness: a lease's `slug` label is unique across the
//! account's servers and every local claim, with a `-%04x` suffix on
//! collision (internal/cli/slug.go:52-61, 103-145). The pond member a lease
//! belongs to is then no longer its slug label, so a suffixed lease also
//! carries `pond_member` (see `Lease::slug`).

use crate::normalize::normalize_name;

/// Longest requested slug before its suffix (slug.go:15).
pub const MAX_SLUG_LEN: usize = 41;

/// Attempts with a numbered seed before the fallback (slug.go:110).
const ATTEMPTS: usize = 20;

/// 32-bit FNV-1a, as Go's `hash/fnv` `New32a` (slug.go:255-259).
#[must_use]
pub fn fnv32a(value: &str) -> u32 {
    value.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// `<base>-%04x` with the low 16 bits of `fnv32a(seed)`; the base is cut to
/// 41 characters and `-`-trimmed first (slugWithCollisionSuffix,
/// slug.go:52-61). `base` is a normalized, non-empty slug.
#[must_use]
pub fn with_collision_suffix(base: &str, seed: &str) -> String {
    let base = normalize_name(base);
    let cut = base.get(..MAX_SLUG_LEN).unwrap_or(&base).trim_matches('-');
    format!("{cut}-{:04x}", fnv32a(seed) & 0xffff)
}

/// The slug a new lease `lease_id` of member `base` gets: `base` itself
/// when free, else the first free `with_collision_suffix(base,
/// "<lease_id>-<n>")` for n = 0..19, else the fallback seeded with the lease
/// ID alone (allocateDirectLeaseSlug, slug.go:103-145). `None` when even
/// the fallback is taken (Crabbox: exit 2 "could not allocate a unique
/// lease slug").
#[must_use]
pub fn allocate(base: &str, lease_id: &str, taken: impl Fn(&str) -> bool) -> Option<String> {
    let base = normalize_name(base);
    let mut slug = base.clone();
    for attempt in 0..ATTEMPTS {
        if !taken(&slug) {
            return Some(slug);
        }
        slug = with_collision_suffix(&base, &format!("{lease_id}-{attempt}"));
    }
    let fallback = with_collision_suffix(&base, lease_id);
    (!taken(&fallback)).then_some(fallback)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv32a_matches_the_reference_vectors() {
        // FNV-1a 32-bit reference values (the algorithm of Go's hash/fnv).
        assert_eq!(fnv32a(""), 0x811c_9dc5);
        assert_eq!(fnv32a("a"), 0xe40c_292c);
        assert_eq!(fnv32a("cbx_0a0b0c0d0e01-0"), 0xf398_0330);
    }

    #[test]
    fn the_suffix_is_the_low_16_bits_of_the_seed_hash() {
        // Values computed from slug.go:52-61 (`%04x` of fnv32a(seed) & 0xffff).
        assert_eq!(
            with_collision_suffix("api", "cbx_0a0b0c0d0e01-0"),
            "api-0330"
        );
        assert_eq!(
            with_collision_suffix("api", "cbx_0a0b0c0d0e01-1"),
            "api-04c3"
        );
        assert_eq!(with_collision_suffix("api", "cbx_0a0b0c0d0e01"), "api-ed4d");
        assert_eq!(
            with_collision_suffix("Web API", "cbx_123456abcdef-0"),
            "web-api-8888"
        );
        let long = format!("{}-b", "a".repeat(40));
        assert_eq!(
            with_collision_suffix(&long, "cbx_123456abcdef-0"),
            format!("{}-8888", "a".repeat(40)),
            "cut to 41 characters, then the trailing `-` trimmed"
        );
    }

    #[test]
    fn allocation_tries_the_base_then_numbered_seeds_then_the_fallback() {
        let id = "cbx_0a0b0c0d0e01";
        assert_eq!(allocate("api", id, |_| false).as_deref(), Some("api"));
        assert_eq!(
            allocate("api", id, |s| s == "api").as_deref(),
            Some("api-0330")
        );
        assert_eq!(
            allocate("api", id, |s| s == "api" || s == "api-0330").as_deref(),
            Some("api-04c3")
        );
        // Everything but the fallback taken.
        assert_eq!(
            allocate("api", id, |s| s != "api-ed4d").as_deref(),
            Some("api-ed4d")
        );
        assert_eq!(allocate("api", id, |_| true), None);
    }
}
