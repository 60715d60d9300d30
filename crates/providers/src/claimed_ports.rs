//! The SSH ports a pond's claims record (`sshPort`, by lease ID), handed to
//! [`Provider::list_with_claimed_ports`](crate::Provider::list_with_claimed_ports)
//! before the claims are read and filled once they are: discovery lists
//! the providers while it reads the claims, and an SSH-lease cloud that
//! would otherwise read each lease's endpoint record only for its port
//! (10,000 file reads to discover a 10,000-member pond) takes the claim's.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::Shared;
use tokio::sync::oneshot;

/// Lease ID → the SSH port its claim records.
pub type Ports = HashMap<String, u16>;

/// The receiving half: every provider listed gets a clone.
#[derive(Clone)]
pub struct ClaimedPorts(Shared<oneshot::Receiver<Arc<Ports>>>);

/// The sending half, kept by whoever reads the claims.
pub struct PortsSender(oneshot::Sender<Arc<Ports>>);

/// A new pair: `ports` sent on the sender are what every clone of the
/// receiver gets.
#[must_use]
pub fn channel() -> (PortsSender, ClaimedPorts) {
    let (tx, rx) = oneshot::channel();
    (PortsSender(tx), ClaimedPorts(rx.shared()))
}

impl PortsSender {
    /// Hands the claims' ports to every receiver.
    pub fn send(self, ports: Ports) {
        // No receiver left: no provider waits for them.
        let _ = self.0.send(Arc::new(ports));
    }
}

impl ClaimedPorts {
    /// The claims' ports once read; `None` when the claims could not be
    /// read (the sender was dropped unsent) — then nothing is known of
    /// them, not "no claim records a port".
    pub async fn get(&self) -> Option<Arc<Ports>> {
        self.0.clone().await.ok()
    }
}
