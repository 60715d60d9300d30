//! The per-lease endpoint record, `<state>/ssh/keys/<lease>/endpoint.json`:
//! how a later process reaches the lease's server (login, port, key, work
//! root) and which pond it belongs to. Written before the server is
//! created, first of the lease's files, so every lease directory a sweep
//! finds names its pond.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crabbox_fs::dir_files::DirFiles;

use serde::{Deserialize, Serialize};

/// The record's file name in the lease directory.
pub(crate) const ENDPOINT_FILE: &str = "endpoint.json";

/// How a later process reaches a lease.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct EndpointRecord {
    pub(crate) lease_id: String,
    pub(crate) user: String,
    pub(crate) port: u16,
    /// Private key used to log in.
    pub(crate) key: PathBuf,
    /// The lease's pond: lets a later apply of that pond remove this
    /// directory when the lease never got a server (empty in records
    /// written before it existed).
    #[serde(default)]
    pub(crate) pond: String,
    /// The lease's work root on the server (empty: `crabbox/<lease>`).
    #[serde(default)]
    pub(crate) work_root: String,
    /// The host SSH connects to instead of the server's address (a
    /// member's `ssh_host`: a tunnel, a bastion's forwarded port, a test's
    /// sshd); absent: the server's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) host: Option<String>,
    /// The cloud the lease's server is on (`hetzner`, `aws`): every
    /// SSH-lease cloud keeps its records in the same directory, and a
    /// cloud's sweep removes only its own. Empty in records written before
    /// it existed, when Hetzner was the only such cloud.
    #[serde(default)]
    pub(crate) cloud: String,
}

impl EndpointRecord {
    /// Whether the record is one of `cloud`'s leases.
    pub(crate) fn is_of(&self, cloud: &str) -> bool {
        self.cloud == cloud || (self.cloud.is_empty() && cloud == LEGACY_CLOUD)
    }
}

/// The cloud of records without one.
const LEGACY_CLOUD: &str = "hetzner";

/// The record in `dir`, if it is one for `lease_id`.
pub(crate) fn read(dir: &Path, lease_id: &str) -> Option<EndpointRecord> {
    let bytes = std::fs::read(dir.join(ENDPOINT_FILE)).ok()?;
    serde_json::from_slice::<EndpointRecord>(&bytes)
        .ok()
        .filter(|r| r.lease_id == lease_id)
}

/// The SSH port of every lease with an endpoint record under `keys` (each
/// record opened relative to `keys`, into one buffer: 10,000 of them are
/// read at every discovery of a 10,000-member pond).
pub(crate) fn recorded_ports(keys: &Path) -> HashMap<String, u16> {
    let (Ok(files), Ok(entries)) = (DirFiles::open(keys), std::fs::read_dir(keys)) else {
        return HashMap::new();
    };
    let mut bytes = Vec::with_capacity(1024);
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let lease = e.file_name().into_string().ok()?;
            files
                .read_into(&Path::new(&lease).join(ENDPOINT_FILE), &mut bytes)
                .ok()?;
            let record = serde_json::from_slice::<EndpointRecord>(&bytes).ok()?;
            (record.lease_id == lease).then_some((lease, record.port))
        })
        .collect()
}
