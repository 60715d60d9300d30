//! A lease's files on this machine: its key pair (in Crabbox's
//! `testboxes/<lease>/`) and its directory `<state>/ssh/keys/<lease>/`
//! holding the endpoint record — written before the server exists,
//! removed with it, and swept when a killed run left them without one.

use std::collections::HashSet;
use std::path::PathBuf;

use crabbox_core::lease::is_lease_id;
use crabbox_core::provider::ProviderError;

use super::endpoint::{self, ENDPOINT_FILE, EndpointRecord};
use super::keys::{LeaseKey, openssh_ed25519, staging_pond, write_lease_files, write_lease_key};
use super::{SshLeases, SshSettings};
use crate::CreateRequest;

/// A key directory being removed is first renamed to this and its lease ID.
const RELEASED_PREFIX: &str = ".released-";
/// The generated key's file name.
const KEY_FILE: &str = "id_ed25519";

/// A create's local files, being written while the cloud uploads the key.
pub(crate) struct Prepared {
    /// The lease's key (its files possibly still being written).
    pub(crate) key: LeaseKey,
    /// The endpoint record.
    pub(crate) record: EndpointRecord,
    writing: tokio::task::JoinHandle<Result<(), String>>,
}

impl Prepared {
    /// Waits for the files; an error says which could not be written.
    pub(crate) async fn written(&mut self) -> Result<(), String> {
        match (&mut self.writing).await {
            Ok(written) => written,
            Err(e) => Err(e.to_string()),
        }
    }
}

impl SshLeases {
    /// `<state>/ssh/keys/`: the lease directories.
    fn keys_root(&self) -> PathBuf {
        self.state_dir.join("ssh").join("keys")
    }

    /// `<state>/ssh/keys/<lease>/`: the endpoint record (and the keys of
    /// earlier versions).
    pub(crate) fn key_dir(&self, lease_id: &str) -> PathBuf {
        self.keys_root().join(lease_id)
    }

    /// Crabbox's `testboxes/<lease>/`, where a generated lease key lives.
    fn testbox_dir(&self, lease_id: &str) -> PathBuf {
        self.testboxes.join(lease_id)
    }

    /// The lease's generated private key: where Crabbox keeps it, else
    /// where earlier versions of crabbox wrote it.
    pub(crate) fn stored_key(&self, lease_id: &str) -> PathBuf {
        let current = self.testbox_dir(lease_id).join(KEY_FILE);
        let legacy = self.key_dir(lease_id).join(KEY_FILE);
        if !current.exists() && legacy.exists() {
            legacy
        } else {
            current
        }
    }

    /// The lease's endpoint record, if it has one.
    pub(crate) fn read_endpoint(&self, lease_id: &str) -> Option<EndpointRecord> {
        endpoint::read(&self.key_dir(lease_id), lease_id)
    }

    /// Reads every endpoint record's port (off the runtime's threads).
    pub(crate) fn recorded_ports(
        &self,
    ) -> tokio::task::JoinHandle<std::collections::HashMap<String, u16>> {
        let keys = self.keys_root();
        tokio::task::spawn_blocking(move || endpoint::recorded_ports(&keys))
    }

    /// Rewrites the lease's endpoint record with the port SSH answered on.
    pub(crate) fn rewrite_port(
        &self,
        record: &EndpointRecord,
        port: u16,
    ) -> Result<(), ProviderError> {
        self.rewrite(&EndpointRecord {
            port,
            ..record.clone()
        })
    }

    /// Replaces the lease's endpoint record with `record`.
    pub(crate) fn rewrite(&self, record: &EndpointRecord) -> Result<(), ProviderError> {
        let path = self.key_dir(&record.lease_id).join(ENDPOINT_FILE);
        let bytes = serde_json::to_vec_pretty(record)
            .map_err(|e| ProviderError::Failed(format!("endpoint record: {e}")))?;
        crabbox_fs::atomic_file::write(&path, &bytes)
            .map_err(|e| ProviderError::Failed(format!("writing {}: {e}", path.display())))
    }

    /// The lease's SSH key: the member's own, the one generated for this
    /// lease by an earlier attempt, or a new one (its files not yet written).
    pub(crate) fn lease_key(
        &self,
        lease_id: &str,
        settings: &SshSettings,
    ) -> Result<LeaseKey, ProviderError> {
        if let Some(private) = &settings.key {
            let mut public = private.clone().into_os_string();
            public.push(".pub");
            let public = PathBuf::from(public);
            let text = std::fs::read_to_string(&public).map_err(|e| ProviderError::Config {
                message: format!(
                    "{}.ssh_key `{}`: cannot read its public half {}: {e}",
                    self.cloud,
                    private.display(),
                    public.display()
                ),
                hint: format!(
                    "write it with `ssh-keygen -y -f {} > {}`, or leave `ssh_key` out to get a per-lease key",
                    private.display(),
                    public.display()
                ),
            })?;
            return Ok(LeaseKey {
                private: private.clone(),
                public: text.trim().to_owned(),
                new: None,
            });
        }
        let private = self.stored_key(lease_id);
        let mut public = private.clone().into_os_string();
        public.push(".pub");
        if let (true, Ok(text)) = (private.exists(), std::fs::read_to_string(&public)) {
            return Ok(LeaseKey {
                private,
                public: text.trim().to_owned(),
                new: None,
            });
        }
        // In-process, as Crabbox's `ssh-keygen -t ed25519 -N '' -C 'crabbox
        // <lease>'` (lease.go:220-242) would write it: starting ssh-keygen
        // cost more CPU than the rest of a create.
        let key = openssh_ed25519::generate(&format!("crabbox {lease_id}"))?;
        Ok(LeaseKey {
            private: self.testbox_dir(lease_id).join(KEY_FILE),
            public: key.public.trim().to_owned(),
            new: Some(key),
        })
    }

    /// A create's first step: the lease's key, and its files (a new key,
    /// the endpoint record) written in the background — the cloud uploads
    /// the key meanwhile; both are done before the server is created.
    pub(crate) fn prepare(
        &self,
        request: &CreateRequest,
        settings: &SshSettings,
    ) -> Result<Prepared, ProviderError> {
        let mut key = self.lease_key(&request.lease_id, settings)?;
        let record = EndpointRecord {
            lease_id: request.lease_id.clone(),
            user: settings.user.clone(),
            port: settings.port,
            key: key.private.clone(),
            pond: request.pond.clone(),
            work_root: format!("{}/{}", self.work_base, request.lease_id),
            host: settings.host.clone(),
            cloud: self.cloud.to_owned(),
        };
        let bytes = serde_json::to_vec_pretty(&record)
            .map_err(|e| ProviderError::Failed(format!("endpoint record: {e}")))?;
        let writing = {
            let dir = self.key_dir(&request.lease_id);
            let new = key.new.take();
            let private = key.private.clone();
            let pond = request.pond.clone();
            tokio::task::spawn_blocking(move || {
                write_lease_files(&dir, &pond, &bytes)?;
                new.map_or(Ok(()), |new| write_lease_key(&private, &new))
            })
        };
        Ok(Prepared {
            key,
            record,
            writing,
        })
    }

    /// Removes the lease's `testboxes/<lease>/` and `<state>/ssh/keys/<lease>/`
    /// (gone already is fine). The record's directory goes last, renamed
    /// to `.released-<lease>` first, so a removal cut short by a kill
    /// never leaves a directory that looks like a lease's but lacks the
    /// record naming its pond — [`Self::sweep_dirs`] removes those.
    pub(crate) fn remove_key_dir(&self, lease_id: &str) -> std::io::Result<()> {
        let testbox = self.testbox_dir(lease_id);
        if testbox != self.key_dir(lease_id) {
            match std::fs::remove_dir_all(&testbox) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        let dir = self.key_dir(lease_id);
        let released = dir.with_file_name(format!("{RELEASED_PREFIX}{lease_id}"));
        match std::fs::rename(&dir, &released) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
        match std::fs::remove_dir_all(&released) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// [`Self::remove_key_dir`], its failure saying which directory.
    pub(crate) fn remove_lease_files(&self, lease_id: &str) -> Result<(), ProviderError> {
        self.remove_key_dir(lease_id).map_err(|e| {
            ProviderError::Failed(format!(
                "removing {}: {e}",
                self.key_dir(lease_id).display()
            ))
        })
    }

    /// Directories under `<state>/ssh/keys/` whose name passes `keep`.
    fn dirs_named(&self, keep: impl Fn(&str) -> bool) -> Vec<(String, PathBuf)> {
        let Ok(entries) = std::fs::read_dir(self.keys_root()) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                keep(&name).then(|| (name, e.path()))
            })
            .collect()
    }

    /// The local half of a pond's sweep: the key directories of leases
    /// without a server (`live` holds those with one) whose record names
    /// this pond and this cloud (every SSH-lease cloud keeps its records
    /// here; another's leases are not in `live`) or whose cloud key was
    /// just swept (`swept`); directories a
    /// removal began and did not finish (already out of every lease's
    /// name, so no run uses them); and this pond's staging directories of
    /// creates that died (none runs: the caller holds the pond lock).
    /// Appends what went to `removed` and what could not to `left`.
    /// Ends a pond's sweep: its local directories swept
    /// ([`Self::sweep_dirs`]), then what was removed, or — when anything of
    /// the pond could not be removed, in the cloud or here — an error naming
    /// each, so the sweep is not taken for complete.
    pub(crate) async fn finish_sweep(
        &self,
        pond: &str,
        live: &HashSet<String>,
        swept: &HashSet<String>,
        mut removed: Vec<String>,
        mut left: Vec<String>,
    ) -> Result<Vec<String>, ProviderError> {
        self.sweep_dirs(pond, live, swept, &mut removed, &mut left)
            .await;
        if left.is_empty() {
            Ok(removed)
        } else {
            Err(ProviderError::Failed(format!(
                "left behind by earlier runs of pond `{pond}` and not removed: {}",
                left.join("; ")
            )))
        }
    }

    pub(crate) async fn sweep_dirs(
        &self,
        pond: &str,
        live: &HashSet<String>,
        swept: &HashSet<String>,
        removed: &mut Vec<String>,
        left: &mut Vec<String>,
    ) {
        for (lease, dir) in self.dirs_named(is_lease_id) {
            if live.contains(&lease) {
                continue;
            }
            let of_pond = self
                .read_endpoint(&lease)
                .is_some_and(|r| r.pond == pond && r.is_of(self.cloud));
            if !(of_pond || swept.contains(&lease)) {
                continue;
            }
            self.close_master(&lease).await;
            match self.remove_key_dir(&lease) {
                Ok(()) => removed.push(format!("key directory {}", dir.display())),
                Err(e) => left.push(format!("key directory {}: {e}", dir.display())),
            }
        }
        let released =
            self.dirs_named(|n| n.strip_prefix(RELEASED_PREFIX).is_some_and(is_lease_id));
        let staging = self.dirs_named(|n| staging_pond(n) == Some(pond));
        for (_, dir) in released.into_iter().chain(staging) {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => removed.push(format!("key directory {}", dir.display())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => left.push(format!("key directory {}: {e}", dir.display())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(lease: &str, pond: &str, cloud: &str) -> Vec<u8> {
        serde_json::to_vec(&EndpointRecord {
            lease_id: lease.to_owned(),
            user: "crabbox".to_owned(),
            port: 2222,
            key: PathBuf::from("/nonexistent"),
            pond: pond.to_owned(),
            work_root: String::new(),
            host: None,
            cloud: cloud.to_owned(),
        })
        .expect("record")
    }

    #[tokio::test]
    async fn a_sweep_removes_its_own_clouds_lease_directories_only() {
        let state = tempfile::tempdir().expect("tempdir");
        let leases = SshLeases::new("hetzner", "a console", state.path());
        let write = |lease: &str, pond: &str, cloud: &str| {
            let dir = leases.key_dir(lease);
            std::fs::create_dir_all(&dir).expect("dir");
            std::fs::write(dir.join(ENDPOINT_FILE), record(lease, pond, cloud)).expect("record");
        };
        write("cbx_00000000000a", "p", "hetzner");
        write("cbx_00000000000b", "p", "");
        write("cbx_00000000000c", "p", "aws");
        write("cbx_00000000000d", "other", "hetzner");
        let (mut removed, mut left) = (Vec::new(), Vec::new());
        leases
            .sweep_dirs(
                "p",
                &HashSet::new(),
                &HashSet::new(),
                &mut removed,
                &mut left,
            )
            .await;
        assert!(left.is_empty(), "{left:?}");
        assert_eq!(removed.len(), 2, "{removed:?}");
        for (lease, kept) in [
            ("cbx_00000000000a", false),
            ("cbx_00000000000b", false),
            ("cbx_00000000000c", true),
            ("cbx_00000000000d", true),
        ] {
            assert_eq!(leases.key_dir(lease).exists(), kept, "{lease}");
        }
    }
}
