//! The names an SSH-lease cloud gives a lease's resources, in Crabbox's
//! shapes, so either tool recognises the other's.

/// `crabbox-<slug>-<8 hex of FNV-32a of the lease ID>`, a valid host name of
/// at most 63 characters.
#[must_use]
pub fn server_name(slug: &str, lease_id: &str) -> String {
    let slug: String = slug
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(63 - "crabbox--12345678".len())
        .collect();
    let slug = slug.trim_matches('-');
    let slug = if slug.is_empty() { "member" } else { slug };
    format!("crabbox-{slug}-{:08x}", fnv1a32(lease_id.as_bytes()))
}

/// The name of a lease's uploaded SSH key: Crabbox's, `crabbox-` and the
/// lease ID with `_` as `-` (`crabbox-cbx-0123456789ab`), the only shape
/// Crabbox's release deletes — so either tool cleans up the other's key.
#[must_use]
pub fn key_name(lease_id: &str) -> String {
    format!("crabbox-{}", lease_id.replace('_', "-"))
}

/// 32-bit FNV-1a.
fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_and_names() {
        // FNV-1a reference values.
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
        let name = server_name("db", "cbx_0123456789ab");
        assert_eq!(
            name,
            format!("crabbox-db-{:08x}", fnv1a32(b"cbx_0123456789ab"))
        );
        let long = server_name(&"x".repeat(80), "cbx_0123456789ab");
        assert!(long.len() <= 63, "{long}");
        // Crabbox's shape (its `validCrabboxProviderKey` deletes no other).
        assert_eq!(key_name("cbx_0123456789ab"), "crabbox-cbx-0123456789ab");
    }
}
