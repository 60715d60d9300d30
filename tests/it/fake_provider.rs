//! An in-memory provider for tests that exercise the engine (planner and
//! executor) without processes: resources live in a map, keyed by their cloud
//! ID, with real label semantics; every mutating call is recorded so tests
//! can prove that nothing outside the pond was touched.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use crabbox_core::labels::Labels;
use crabbox_core::lease::{Endpoint, Lease};
use crabbox_core::provider::ProviderName;
use crabbox_core::provider::{OutputSink, ProviderError};
use crabbox_exec::session::{ExecRequest, Session};
use crabbox_providers::{CreateRequest, Provider};
use crabbox_spec::desired::Probe;

/// The fake provider's state.
#[derive(Default)]
pub struct MemoryProvider {
    /// Every resource, ours and foreign, by cloud ID.
    pub resources: Mutex<BTreeMap<String, Lease>>,
    /// Cloud IDs of every resource a mutating call touched.
    pub touched: Mutex<BTreeSet<String>>,
    /// Commands run, in order: (lease id, command).
    pub commands: Mutex<Vec<(String, String)>>,
    /// `list` fails with this error (an unreachable API).
    pub list_error: Mutex<Option<String>>,
    /// `create` of a lease with this slug panics (a bug in an adapter).
    pub panic_on_create: Mutex<Option<String>>,
    /// Every `create` call, by slug.
    pub creates: Mutex<Vec<String>>,
}

impl MemoryProvider {
    /// A shareable empty provider.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Plants a resource (as if someone created it earlier).
    pub fn plant(&self, lease: Lease) {
        self.resources
            .lock()
            .expect("lock")
            .insert(lease.cloud_id.clone(), lease);
    }

    fn touch(&self, lease: &Lease) -> Result<(), ProviderError> {
        self.touched
            .lock()
            .expect("lock")
            .insert(lease.cloud_id.clone());
        if self
            .resources
            .lock()
            .expect("lock")
            .contains_key(&lease.cloud_id)
        {
            Ok(())
        } else {
            Err(ProviderError::NotFound(lease.cloud_id.clone()))
        }
    }
}

#[async_trait]
impl Provider for MemoryProvider {
    fn session<'a>(&'a self, lease: &'a Lease) -> Box<dyn Session + 'a> {
        Box::new(MemorySession {
            provider: self,
            lease,
        })
    }

    fn name(&self) -> ProviderName {
        ProviderName::Local
    }

    async fn list(&self, pond: &str) -> Result<Vec<Lease>, ProviderError> {
        if let Some(e) = self.list_error.lock().expect("lock").clone() {
            return Err(ProviderError::Retryable {
                message: e,
                retry_after: None,
            });
        }
        Ok(self
            .resources
            .lock()
            .expect("lock")
            .values()
            .filter(|l| l.label("pond") == Some(pond))
            .cloned()
            .collect())
    }

    async fn create(&self, request: &CreateRequest) -> Result<Lease, ProviderError> {
        let slug = request
            .labels
            .get("slug")
            .map(ToString::to_string)
            .unwrap_or_default();
        self.creates.lock().expect("lock").push(slug.clone());
        let panics = self.panic_on_create.lock().expect("lock").clone();
        assert!(
            panics.as_deref() != Some(slug.as_str()),
            "boom in create of {slug}"
        );
        let mut resources = self.resources.lock().expect("lock");
        let n = resources.len();
        let lease = Lease {
            id: request.lease_id.clone(),
            provider: ProviderName::Local,
            cloud_id: format!("mem-{}", request.lease_id),
            labels: request.labels.clone(),
            endpoint: Endpoint {
                host: Some(format!("192.0.2.{}", n % 250 + 1)),
                ..Endpoint::default()
            },
            listed: true,
            claimed: false,
        };
        resources.insert(lease.cloud_id.clone(), lease.clone());
        Ok(lease)
    }

    async fn relabel(&self, lease: &Lease, labels: &Labels) -> Result<(), ProviderError> {
        self.touch(lease)?;
        if let Some(l) = self
            .resources
            .lock()
            .expect("lock")
            .get_mut(&lease.cloud_id)
        {
            l.labels = labels.clone();
        }
        Ok(())
    }

    async fn release(&self, lease: &Lease) -> Result<(), ProviderError> {
        self.touch(lease)?;
        self.resources.lock().expect("lock").remove(&lease.cloud_id);
        Ok(())
    }
}

/// A lease of the in-memory provider: commands are recorded, not run.
struct MemorySession<'a> {
    provider: &'a MemoryProvider,
    lease: &'a Lease,
}

#[async_trait]
impl Session for MemorySession<'_> {
    async fn upload(&self, _archive: &Path) -> Result<(), ProviderError> {
        self.provider.touch(self.lease)
    }

    async fn exec(
        &self,
        request: &ExecRequest,
        _sink: Arc<dyn OutputSink>,
    ) -> Result<i32, ProviderError> {
        self.provider.touch(self.lease)?;
        self.provider
            .commands
            .lock()
            .expect("lock")
            .push((self.lease.id.clone(), request.command.clone()));
        Ok(i32::from(request.command.contains("exit 1")))
    }

    async fn start_background(
        &self,
        request: &ExecRequest,
        _name: &str,
    ) -> Result<(), ProviderError> {
        self.provider.touch(self.lease)?;
        self.provider
            .commands
            .lock()
            .expect("lock")
            .push((self.lease.id.clone(), format!("& {}", request.command)));
        Ok(())
    }

    async fn stop_background(&self) -> Result<(), ProviderError> {
        self.provider.touch(self.lease)
    }

    async fn probe(
        &self,
        _probe: &Probe,
        _env: &BTreeMap<String, String>,
    ) -> Result<bool, ProviderError> {
        self.provider.touch(self.lease).map(|()| true)
    }
}
