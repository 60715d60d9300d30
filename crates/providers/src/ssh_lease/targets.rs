//! The [`SshTarget`] of each lease: cached once known, rebuilt after a
//! restart from the lease's endpoint record — or, for a server without one
//! (made by Crabbox), as Crabbox reaches it: `crabbox` on the first open
//! port of 2222 and the fallbacks, with the key in `testboxes/<lease>/`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::PoisonError;

use crabbox_core::lease::{Lease, is_lease_id};
use crabbox_core::provider::ProviderError;
use crabbox_exec::ssh::SshTarget;

use super::boot::port_open;
use super::endpoint::EndpointRecord;
use super::{DEFAULT_SSH_PORT, DEFAULT_SSH_USER, DEFAULT_WORK_BASE, SshLeases, check_lease_id};

/// Where records written before `work_root` existed put work roots
/// (relative to the login's home).
const LEGACY_WORK_BASE: &str = "crabbox";

impl SshLeases {
    pub(crate) fn cached_target(&self, lease_id: &str) -> Option<SshTarget> {
        self.targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(lease_id)
            .cloned()
    }

    pub(crate) fn remember_target(&self, target: SshTarget) {
        self.targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(target.lease_id.clone(), target);
    }

    fn forget_target(&self, lease_id: &str) -> Option<SshTarget> {
        self.targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(lease_id)
    }

    pub(crate) fn new_target(
        &self,
        lease_id: &str,
        host: String,
        record: &EndpointRecord,
    ) -> SshTarget {
        SshTarget {
            host,
            port: record.port,
            user: record.user.clone(),
            key: Some(record.key.clone()),
            work_root: if record.work_root.is_empty() {
                format!("{LEGACY_WORK_BASE}/{lease_id}")
            } else {
                record.work_root.clone()
            },
            state_dir: self.state_dir.clone(),
            lease_id: lease_id.to_owned(),
        }
    }

    /// The lease's SSH target: cached, else rebuilt from its endpoint record
    /// (or Crabbox's defaults) and its address — the lease's, else the one
    /// `address` reads from the cloud.
    pub(crate) async fn target<F, Fut>(
        &self,
        lease: &Lease,
        address: F,
    ) -> Result<SshTarget, ProviderError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<String, ProviderError>>,
    {
        if let Some(t) = self.cached_target(&lease.id) {
            return Ok(t);
        }
        check_lease_id(&lease.id)?;
        let recorded = self.read_endpoint(&lease.id);
        let host = match recorded
            .as_ref()
            .and_then(|r| r.host.clone())
            .or_else(|| lease.endpoint.host.clone().filter(|h| !h.is_empty()))
        {
            Some(host) => host,
            None => address().await?,
        };
        // No record: a server Crabbox made, reached as Crabbox reaches it —
        // the first open port of 2222, then the fallbacks.
        let record = match recorded {
            Some(record) => record,
            None => {
                let primary = lease.endpoint.ssh_port.unwrap_or(DEFAULT_SSH_PORT);
                let mut port = primary;
                for candidate in self.port_candidates(primary) {
                    if port_open(&host, candidate).await {
                        port = candidate;
                        break;
                    }
                }
                EndpointRecord {
                    lease_id: lease.id.clone(),
                    user: DEFAULT_SSH_USER.to_owned(),
                    port,
                    key: self.stored_key(&lease.id),
                    pond: String::new(),
                    work_root: format!("{DEFAULT_WORK_BASE}/{}", lease.id),
                    host: None,
                    cloud: self.cloud.to_owned(),
                }
            }
        };
        let target = self.new_target(&lease.id, host, &record);
        self.remember_target(target.clone());
        Ok(target)
    }

    /// The lease's target without I/O beyond its record: cached, or from
    /// the record and the lease's address.
    pub(crate) fn known_target(&self, lease: &Lease) -> Option<SshTarget> {
        if let Some(t) = self.cached_target(&lease.id) {
            return Some(t);
        }
        let record = self.read_endpoint(&lease.id)?;
        let host = record
            .host
            .clone()
            .or_else(|| lease.endpoint.host.clone().filter(|h| !h.is_empty()))?;
        Some(self.new_target(&lease.id, host, &record))
    }

    /// The SSH port a listed lease is reached on: its cached target's, its
    /// record's (`ports` read beforehand, else read now), else 2222.
    pub(crate) fn port_of(&self, lease_id: &str, ports: &HashMap<String, u16>) -> u16 {
        self.cached_target(lease_id)
            .map(|t| t.port)
            .or_else(|| ports.get(lease_id).copied())
            .or_else(|| {
                is_lease_id(lease_id)
                    .then(|| self.read_endpoint(lease_id))
                    .flatten()
                    .map(|r| r.port)
            })
            .unwrap_or(DEFAULT_SSH_PORT)
    }

    /// Ends the SSH control master a killed run left for `lease_id`, if
    /// any (it would otherwise live on for its `ControlPersist` time).
    pub(crate) async fn close_master(&self, lease_id: &str) {
        if !self
            .state_dir
            .join("ssh")
            .join("cm")
            .join(lease_id)
            .exists()
        {
            return;
        }
        // The control path names the lease only, so the destination is moot.
        let record = EndpointRecord {
            lease_id: lease_id.to_owned(),
            user: DEFAULT_SSH_USER.to_owned(),
            port: DEFAULT_SSH_PORT,
            key: self.stored_key(lease_id),
            pond: String::new(),
            work_root: String::new(),
            host: None,
            cloud: self.cloud.to_owned(),
        };
        self.new_target(lease_id, "127.0.0.1".to_owned(), &record)
            .close()
            .await;
    }

    /// Closes the master of a lease whose target this process never built
    /// (an earlier process's outlives it by its `ControlPersist` time).
    pub(crate) async fn close_stale_master(&self, lease_id: &str) {
        if is_lease_id(lease_id) && self.cached_target(lease_id).is_none() {
            self.close_master(lease_id).await;
        }
    }

    /// Forgets the lease's target and closes its connection (a rollback).
    pub(crate) async fn drop_target(&self, lease_id: &str) {
        if let Some(t) = self.forget_target(lease_id) {
            t.close().await;
        }
    }

    /// The server is gone: its connection closes and its host key is
    /// forgotten (the address may be handed to another server).
    pub(crate) async fn forget_server(&self, lease: &Lease) {
        if let Some(t) = self.forget_target(&lease.id) {
            t.close().await;
            self.forget_host_key(&t.host, t.port);
        } else {
            let record = self.read_endpoint(&lease.id);
            let host = record
                .as_ref()
                .and_then(|r| r.host.clone())
                .or_else(|| lease.endpoint.host.clone().filter(|h| !h.is_empty()));
            if let Some(host) = host {
                let port = record
                    .map(|r| r.port)
                    .or(lease.endpoint.ssh_port)
                    .unwrap_or(DEFAULT_SSH_PORT);
                self.forget_host_key(&host, port);
            }
        }
    }

    /// Removes `host:port` from crabbox's known-hosts file (best effort).
    pub(crate) fn forget_host_key(&self, host: &str, port: u16) {
        let _ = crabbox_exec::ssh::forget_host_key(&self.state_dir, host, port);
    }

    /// Before setup re-runs on a lease: a server adopted after its creator
    /// died may still be booting, so SSH is waited for.
    pub(crate) async fn before_stop(&self, target: &SshTarget) -> Result<(), ProviderError> {
        if self.ssh_bootstrap {
            target.wait_ready(self.ssh_timeout).await?;
        }
        Ok(())
    }
}
