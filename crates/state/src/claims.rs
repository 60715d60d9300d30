//! Claims, in Crabbox's format: by default local files in Crabbox's place,
//! `<state>/claims/<leaseID>.json`, one per lease, written atomically under a
//! per-lease lock (`<state>/claim-locks/<leaseID>.json.lock`); with the
//! PostgreSQL state backend, rows of `crabbox_claims` written by
//! compare-and-swap on their revision. Fields we do not know are kept as they
//! are, so the Go CLI's data survives our writes.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::state_pg::{self, ClaimRow, Handle};
use crabbox_core::labels::Labels;
use crabbox_core::lease::is_lease_id;
use crabbox_fs::atomic_file;

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

/// Where claims are kept: Crabbox's claim files under the state directory, or
/// the PostgreSQL state database (see [`crate::state_pg`]).
///
/// Every claim read and write in crabbox goes through this type. A store made
/// with [`ClaimStore::new`] follows the configuration at each call
/// (`CRABBOX_STATE_URL`, else the loaded spec's `state:`), so stores built
/// before the spec was read still use the backend it chose.
#[derive(Debug, Clone)]
pub struct ClaimStore {
    state_dir: PathBuf,
    pinned: Option<Pinned>,
}

#[derive(Debug, Clone)]
enum Pinned {
    Local,
    Postgres(Arc<Handle>),
}

/// The backend one call uses.
enum Backend {
    Local { dir: PathBuf, locks: PathBuf },
    Postgres(Arc<Handle>),
    Unusable(String),
}

/// Most compare-and-swap attempts of one claim write.
const MAX_CAS_ATTEMPTS: u32 = 100;

impl ClaimStore {
    /// The store of this process: PostgreSQL when `CRABBOX_STATE_URL` (or the
    /// loaded spec's `state:`) names a database, else the claim files under
    /// `state_dir`, exactly as Crabbox keeps them.
    #[must_use]
    pub fn new(state_dir: &Path) -> Self {
        Self {
            state_dir: state_dir.to_owned(),
            pinned: None,
        }
    }

    /// The claim files under `state_dir`, whatever is configured.
    #[must_use]
    pub fn local(state_dir: &Path) -> Self {
        Self {
            state_dir: state_dir.to_owned(),
            pinned: Some(Pinned::Local),
        }
    }

    /// The PostgreSQL database at `url`, whatever is configured.
    #[must_use]
    pub fn postgres(url: &str) -> Self {
        Self {
            state_dir: PathBuf::new(),
            pinned: Some(Pinned::Postgres(Handle::for_url(url))),
        }
    }

    fn backend(&self) -> Backend {
        let local = || Backend::Local {
            dir: self.state_dir.join("claims"),
            locks: self.state_dir.join("claim-locks"),
        };
        match &self.pinned {
            Some(Pinned::Local) => local(),
            Some(Pinned::Postgres(h)) => Backend::Postgres(h.clone()),
            None => match state_pg::selected() {
                Ok(None) => local(),
                Ok(Some(h)) => Backend::Postgres(h),
                Err(e) => Backend::Unusable(e.0),
            },
        }
    }

    /// Where the claims live, for messages (no password).
    #[must_use]
    pub fn describe(&self) -> String {
        match self.backend() {
            Backend::Local { dir, .. } => dir.display().to_string(),
            Backend::Postgres(h) => h.display_url(),
            Backend::Unusable(e) => e,
        }
    }

    /// Every readable claim; a single unreadable claim is reported as a
    /// problem, never fatal. A store that cannot be read at all (database
    /// down, claims directory unreadable) is an error: what it holds was not
    /// observed, so nothing may be concluded from its absence.
    ///
    /// # Errors
    /// The backend could not be read.
    pub fn load_all(&self) -> std::io::Result<(Vec<Claim>, Vec<ClaimProblem>)> {
        match self.backend() {
            Backend::Local { dir, .. } => load_all_files(&dir),
            Backend::Postgres(h) => load_all_rows(&h),
            Backend::Unusable(message) => Err(std::io::Error::other(message)),
        }
    }

    /// One claim by lease ID; `Ok(None)` when there is none (or the ID is not
    /// a lease ID).
    ///
    /// # Errors
    /// The claim exists but cannot be read or parsed, or the backend could
    /// not be read.
    pub fn load(&self, lease_id: &str) -> std::io::Result<Option<Claim>> {
        if !is_lease_id(lease_id) {
            return Ok(None);
        }
        match self.backend() {
            Backend::Local { dir, .. } => load_file(&dir, lease_id),
            Backend::Postgres(h) => load_row(&h, lease_id),
            Backend::Unusable(e) => Err(std::io::Error::other(e)),
        }
    }

    /// Writes a claim with a new revision. Local files: atomically, under the
    /// claim's lock. PostgreSQL: a compare-and-swap on the revision the
    /// claim was read with; when another writer changed the claim since,
    /// this write's changes are merged into the stored claim and tried
    /// again, so neither writer's changes are lost.
    ///
    /// # Errors
    /// I/O or database errors, or a lease ID of the wrong shape.
    pub fn write(&self, claim: &Claim) -> std::io::Result<Claim> {
        check_lease_id(&claim.lease_id)?;
        match self.backend() {
            Backend::Local { dir, locks } => locked(&locks, &claim.lease_id, || {
                let mut claim = claim.clone();
                claim.revision = new_revision();
                write_file(&dir, &claim)?;
                Ok(claim)
            }),
            Backend::Postgres(h) => write_row(&h, claim),
            Backend::Unusable(e) => Err(std::io::Error::other(e)),
        }
    }

    /// Read-modify-write of one claim: `change` is applied to the stored
    /// claim and the result written; if another writer got in between,
    /// `change` is applied again to what it wrote. `Ok(None)` when the claim
    /// does not exist.
    ///
    /// # Errors
    /// I/O or database errors, or a lease ID of the wrong shape.
    pub fn update(
        &self,
        lease_id: &str,
        mut change: impl FnMut(&mut Claim),
    ) -> std::io::Result<Option<Claim>> {
        check_lease_id(lease_id)?;
        match self.backend() {
            Backend::Local { dir, locks } => locked(&locks, lease_id, || {
                let Some(mut claim) = load_file(&dir, lease_id)? else {
                    return Ok(None);
                };
                change(&mut claim);
                claim.lease_id = lease_id.to_owned();
                claim.revision = new_revision();
                write_file(&dir, &claim)?;
                Ok(Some(claim))
            }),
            Backend::Postgres(h) => {
                for attempt in 0..MAX_CAS_ATTEMPTS {
                    let Some(mut claim) = load_row(&h, lease_id)? else {
                        return Ok(None);
                    };
                    let expected = claim.revision.clone();
                    change(&mut claim);
                    claim.lease_id = lease_id.to_owned();
                    claim.revision = new_revision();
                    let (row, body) = row_of(&claim)?;
                    if h.claim_cas(Some(&expected), row)? {
                        h.remember(lease_id, &claim.revision, &body);
                        return Ok(Some(claim));
                    }
                    state_pg::count_conflict();
                    backoff(attempt);
                }
                Err(gave_up(lease_id))
            }
            Backend::Unusable(e) => Err(std::io::Error::other(e)),
        }
    }

    /// Removes a claim (absent is fine).
    ///
    /// # Errors
    /// I/O errors other than "not found", database errors.
    pub fn remove(&self, lease_id: &str) -> std::io::Result<()> {
        check_lease_id(lease_id)?;
        match self.backend() {
            Backend::Local { dir, locks } => {
                locked(&locks, lease_id, || {
                    match std::fs::remove_file(file_path(&dir, lease_id)) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                        _ => Ok(()),
                    }
                })?;
                // The lock file is only needed while the claim exists.
                let _ = std::fs::remove_file(locks.join(format!("{lease_id}.json.lock")));
                Ok(())
            }
            Backend::Postgres(h) => Ok(h.claim_delete(lease_id)?),
            Backend::Unusable(e) => Err(std::io::Error::other(e)),
        }
    }
}

fn check_lease_id(lease_id: &str) -> std::io::Result<()> {
    if is_lease_id(lease_id) {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("`{lease_id}` is not a lease ID"),
        ))
    }
}

fn file_path(dir: &Path, lease_id: &str) -> PathBuf {
    dir.join(format!("{lease_id}.json"))
}

fn load_all_files(dir: &Path) -> std::io::Result<(Vec<Claim>, Vec<ClaimProblem>)> {
    let mut claims = Vec::new();
    let mut problems = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        // No directory: no claim was ever written here.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((claims, problems)),
        Err(e) => {
            return Err(std::io::Error::new(
                e.kind(),
                format!("cannot read the claims in {}: {e}", dir.display()),
            ));
        }
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
    Ok((claims, problems))
}

fn load_file(dir: &Path, lease_id: &str) -> std::io::Result<Option<Claim>> {
    let path = file_path(dir, lease_id);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(std::io::Error::new(
                e.kind(),
                format!("cannot read {}: {e}", path.display()),
            ));
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| std::io::Error::other(format!("{} is not a claim: {e}", path.display())))
}

fn write_file(dir: &Path, claim: &Claim) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(claim).map_err(std::io::Error::other)?;
    atomic_file::write(&file_path(dir, &claim.lease_id), text.as_bytes())
}

/// Holds the per-lease lock file for the duration of `f`.
fn locked<T>(
    locks: &Path,
    lease_id: &str,
    f: impl FnOnce() -> std::io::Result<T>,
) -> std::io::Result<T> {
    check_lease_id(lease_id)?;
    atomic_file::create_private_dir(locks)?;
    let lock = File::create(locks.join(format!("{lease_id}.json.lock")))?;
    lock.lock()?;
    let result = f();
    let _ = lock.unlock();
    result
}

/// A stored claim: its body with the row's revision.
fn parse_row(h: &Handle, lease_id: &str, revision: String, text: &str) -> Result<Claim, String> {
    let body: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let mut claim: Claim = serde_json::from_value(body.clone()).map_err(|e| e.to_string())?;
    if claim.lease_id != lease_id {
        return Err(format!(
            "lease_id_mismatch: the row says {}",
            claim.lease_id
        ));
    }
    h.remember(lease_id, &revision, &body);
    claim.revision = revision;
    Ok(claim)
}

fn row_path(h: &Handle, lease_id: &str) -> PathBuf {
    PathBuf::from(format!("{}/crabbox_claims/{lease_id}", h.display_url()))
}

fn load_all_rows(h: &Handle) -> std::io::Result<(Vec<Claim>, Vec<ClaimProblem>)> {
    let rows = h.claim_rows().map_err(|e| {
        std::io::Error::other(format!(
            "cannot read the claims in {}: {}",
            h.display_url(),
            e.0
        ))
    })?;
    let mut claims = Vec::new();
    let mut problems = Vec::new();
    for (lease_id, revision, text) in rows {
        match parse_row(h, &lease_id, revision, &text) {
            Ok(claim) => claims.push(claim),
            Err(message) => problems.push(ClaimProblem {
                path: row_path(h, &lease_id),
                message,
            }),
        }
    }
    Ok((claims, problems))
}

fn load_row(h: &Handle, lease_id: &str) -> std::io::Result<Option<Claim>> {
    match h.claim_row(lease_id)? {
        None => Ok(None),
        Some((revision, text)) => parse_row(h, lease_id, revision, &text)
            .map(Some)
            .map_err(std::io::Error::other),
    }
}

/// The row of a claim, and its body as JSON.
pub(crate) fn row_of(claim: &Claim) -> std::io::Result<(ClaimRow, serde_json::Value)> {
    let body = serde_json::to_value(claim).map_err(std::io::Error::other)?;
    Ok((
        ClaimRow {
            lease_id: claim.lease_id.clone(),
            pond: claim.pond.clone(),
            provider: claim.provider.clone(),
            revision: claim.revision.clone(),
            body: body.to_string(),
        },
        body,
    ))
}

fn write_row(h: &Handle, claim: &Claim) -> std::io::Result<Claim> {
    let lease_id = claim.lease_id.as_str();
    let mine = serde_json::to_value(claim).map_err(std::io::Error::other)?;
    // What the caller read, when it read through this process: the base of
    // a merge should the claim have changed since.
    let base = h.remembered(lease_id, &claim.revision);
    let mut expected = Some(claim.revision.clone()).filter(|r| !r.is_empty());
    let mut desired = claim.clone();
    for attempt in 0..MAX_CAS_ATTEMPTS {
        let mut next = desired.clone();
        next.revision = new_revision();
        let (row, body) = row_of(&next)?;
        if h.claim_cas(expected.as_deref(), row)? {
            h.remember(lease_id, &next.revision, &body);
            return Ok(next);
        }
        match h.claim_row(lease_id)? {
            // Removed meanwhile (or never there): written anew, as a file would be.
            None => expected = None,
            Some((revision, text)) => {
                state_pg::count_conflict();
                let current: serde_json::Value =
                    serde_json::from_str(&text).map_err(std::io::Error::other)?;
                desired = match &base {
                    Some(base) => serde_json::from_value(state_pg::merge(base, &mine, &current))
                        .unwrap_or_else(|_| claim.clone()),
                    // Not read here: the caller's claim replaces the stored
                    // one, as it replaces a claim file.
                    None => claim.clone(),
                };
                desired.lease_id = lease_id.to_owned();
                expected = Some(revision);
                backoff(attempt);
            }
        }
    }
    Err(gave_up(lease_id))
}

fn gave_up(lease_id: &str) -> std::io::Error {
    std::io::Error::other(format!(
        "claim {lease_id} kept changing while it was written; gave up after {MAX_CAS_ATTEMPTS} attempts"
    ))
}

/// A short random pause before retrying a compare-and-swap, growing a little
/// with the attempts so that writers racing on one claim spread out.
fn backoff(attempt: u32) {
    let mut byte = [0u8; 1];
    let _ = getrandom::fill(&mut byte);
    let ceiling = 2 + attempt.min(20);
    std::thread::sleep(std::time::Duration::from_millis(
        u64::from(byte[0]) % u64::from(ceiling) + 1,
    ));
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
        let (claims, problems) = store.load_all().expect("readable");
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
        assert_eq!(store.load_all().expect("readable").0.len(), 0);
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
