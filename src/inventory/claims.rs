//! Local claim files in Crabbox's format and place:
//! `<state>/claims/<leaseID>.json`, one per lease, written atomically under a
//! per-lease lock (`<state>/claim-locks/<leaseID>.json.lock`). Fields we do not
//! know are kept as they are, so the Go CLI's data survives our writes.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::atomic_file;
use crate::inventory::labels::Labels;
use crate::inventory::lease::is_lease_id;

/// A claim's `state` field (ours): written before the create call so a crash
/// between the two is found by the next run.
pub mod claim_state {
    /// Written before the provider's create call.
    pub const PENDING: &str = "pending";
    /// The resource exists and the claim records it.
    pub const ACTIVE: &str = "active";
}

/// Claim field (ours) holding a URL-bridge lease's shares, so discovery can
/// show them without asking the provider again.
pub const SHARES_FIELD: &str = "crabboxShares";

/// One claim file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Claim {
    /// The lease ID; must equal the file name.
    #[serde(rename = "leaseID")]
    pub lease_id: String,
    /// Random 16-byte hex, new on every write.
    #[serde(default)]
    pub revision: String,
    /// Slug.
    #[serde(default)]
    pub slug: String,
    /// Provider name.
    #[serde(default)]
    pub provider: String,
    /// Provider resource ID.
    #[serde(rename = "cloudID", default, skip_serializing_if = "String::is_empty")]
    pub cloud_id: String,
    /// Pond name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pond: String,
    /// Repository the lease was claimed for.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub repo_root: String,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub claimed_at: String,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_used_at: String,
    /// Idle timeout in seconds.
    #[serde(default)]
    pub idle_timeout_seconds: u64,
    /// Copy of the provider labels (for label-less providers: the labels).
    #[serde(default)]
    pub labels: Labels,
    /// SSH host.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ssh_host: String,
    /// SSH port (as Crabbox writes it: a string).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ssh_port: String,
    /// URL-bridge endpoint.
    #[serde(
        rename = "bridgeURL",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub bridge_url: String,
    /// Ours: `pending` or `active`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state: String,
    /// Everything else Crabbox writes, kept verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// A claim file that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimProblem {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub message: String,
}

/// The claim directory of one state dir.
#[derive(Debug, Clone)]
pub struct ClaimStore {
    dir: PathBuf,
    locks: PathBuf,
}

impl ClaimStore {
    /// The store under `state_dir`.
    #[must_use]
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join("claims"),
            locks: state_dir.join("claim-locks"),
        }
    }

    /// Every readable claim; unreadable ones are reported, never fatal.
    #[must_use]
    pub fn load_all(&self) -> (Vec<Claim>, Vec<ClaimProblem>) {
        let mut claims = Vec::new();
        let mut problems = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return (claims, problems);
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            let Some(stem) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue;
            };
            match std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|t| serde_json::from_str::<Claim>(&t).map_err(|e| e.to_string()))
            {
                Ok(claim) if claim.lease_id != stem => problems.push(ClaimProblem {
                    path,
                    message: format!("lease_id_mismatch: the file says {}", claim.lease_id),
                }),
                Ok(claim) => claims.push(claim),
                Err(message) => problems.push(ClaimProblem { path, message }),
            }
        }
        (claims, problems)
    }

    /// One claim by lease ID; `None` when absent or unreadable.
    #[must_use]
    pub fn load(&self, lease_id: &str) -> Option<Claim> {
        if !is_lease_id(lease_id) {
            return None;
        }
        let text = std::fs::read_to_string(self.path(lease_id)).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn path(&self, lease_id: &str) -> PathBuf {
        self.dir.join(format!("{lease_id}.json"))
    }

    /// Holds the per-lease lock for the duration of `f`.
    fn locked<T>(
        &self,
        lease_id: &str,
        f: impl FnOnce() -> std::io::Result<T>,
    ) -> std::io::Result<T> {
        if !is_lease_id(lease_id) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("`{lease_id}` is not a lease ID"),
            ));
        }
        atomic_file::create_private_dir(&self.locks)?;
        let lock = File::create(self.locks.join(format!("{lease_id}.json.lock")))?;
        lock.lock()?;
        let result = f();
        let _ = lock.unlock();
        result
    }

    /// Writes a claim (new revision), atomically, under its lock.
    ///
    /// # Errors
    /// I/O errors, or a lease ID of the wrong shape.
    pub fn write(&self, claim: &Claim) -> std::io::Result<Claim> {
        self.locked(&claim.lease_id, || {
            let mut claim = claim.clone();
            claim.revision = new_revision();
            let text = serde_json::to_string_pretty(&claim).map_err(std::io::Error::other)?;
            atomic_file::write(&self.path(&claim.lease_id), text.as_bytes())?;
            Ok(claim)
        })
    }

    /// Removes a claim (absent is fine).
    ///
    /// # Errors
    /// I/O errors other than "not found".
    pub fn remove(&self, lease_id: &str) -> std::io::Result<()> {
        self.locked(lease_id, || {
            match std::fs::remove_file(self.path(lease_id)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        })?;
        // The lock file is only needed while the claim exists.
        let _ = std::fs::remove_file(self.locks.join(format!("{lease_id}.json.lock")));
        Ok(())
    }
}

fn new_revision() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS provides randomness");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// RFC 3339 UTC timestamp for now.
#[must_use]
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_unknown_fields_and_skips_corrupt_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ClaimStore::new(dir.path());
        let mut claim = Claim {
            lease_id: "cbx_0123456789ab".into(),
            slug: "api".into(),
            provider: "local".into(),
            pond: "p".into(),
            ..Claim::default()
        };
        claim
            .extra
            .insert("tailscaleTags".into(), serde_json::json!(["a"]));
        let written = store.write(&claim).expect("write");
        assert_eq!(written.revision.len(), 32);
        std::fs::write(dir.path().join("claims/cbx_ffffffffffff.json"), "{not json")
            .expect("plant");
        std::fs::write(
            dir.path().join("claims/cbx_eeeeeeeeeeee.json"),
            r#"{"leaseID":"cbx_000000000000"}"#,
        )
        .expect("plant");
        let (claims, problems) = store.load_all();
        assert_eq!(claims.len(), 1);
        assert_eq!(claims[0].extra["tailscaleTags"], serde_json::json!(["a"]));
        assert_eq!(problems.len(), 2);
        assert!(
            problems
                .iter()
                .any(|p| p.message.contains("lease_id_mismatch"))
        );
        store.remove("cbx_0123456789ab").expect("remove");
        store
            .remove("cbx_0123456789ab")
            .expect("removing twice is fine");
        assert_eq!(store.load_all().0.len(), 0);
        assert!(
            store
                .write(&Claim {
                    lease_id: "../evil".into(),
                    ..Claim::default()
                })
                .is_err()
        );
    }
}
