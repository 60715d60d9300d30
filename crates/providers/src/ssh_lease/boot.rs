//! Waiting for a new server: first until the cloud says it runs with an
//! address — polling adaptively: after a quarter of the time the server has
//! been booting (a sixteenth once it is nearly up), at most the poll interval
//! apart, so a short boot is seen soon after it ends and a long one is
//! polled no more often than every interval — then for SSH on the first port
//! candidate that logs in and passes Crabbox's ready check (2222, falling
//! back to 22, as Crabbox connects), preparing the lease's work root in
//! that same command (one round trip, on the login setup then reuses).

use std::future::Future;
use std::time::{Duration, Instant};

use crabbox_core::provider::ProviderError;
use crabbox_exec::ssh::SshTarget;

use super::SshLeases;
use super::cloud_init;
use super::endpoint::EndpointRecord;

/// A booting server is polled again after this fraction of the time it has
/// been booting (within `[MIN_POLL_WAIT, poll interval]`).
const POLL_FRACTION: u32 = 4;
/// The fraction once the server is nearly up (e.g. Hetzner's `starting`).
const NEARLY_POLL_FRACTION: u32 = 16;
/// Shortest time between status polls.
const MIN_POLL_WAIT: Duration = Duration::from_millis(10);
/// How long a port candidate may take to accept a TCP connection.
const PORT_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long SSH on an open port may take to answer before the next
/// candidate is tried.
const PORT_SSH_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between rounds over the port candidates.
const PORT_ROUND_PAUSE: Duration = Duration::from_millis(500);

/// One look at a booting server.
pub(crate) enum Seen<T> {
    /// It runs with an address.
    Ready(T),
    /// Not yet; `last` says how it was, `nearly` that it is almost up.
    Booting { last: String, nearly: bool },
    /// The look failed in a way worth another look, not before `after`.
    Retry { last: String, after: Duration },
}

impl SshLeases {
    /// Looks at a booting server with `look` until it is ready, adaptively
    /// (see the module); after the boot timeout fails naming `what` and
    /// how it was last seen. `look` ends the wait early with an error (the
    /// server disappeared, the call was refused).
    pub(crate) async fn until_running<T, F, Fut>(
        &self,
        what: &str,
        mut look: F,
    ) -> Result<T, ProviderError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Seen<T>, ProviderError>>,
    {
        let started = Instant::now();
        let deadline = started + self.boot_timeout;
        let floor = MIN_POLL_WAIT.min(self.poll_interval);
        loop {
            let seen = look().await?;
            let fraction = match &seen {
                Seen::Booting { nearly: true, .. } => NEARLY_POLL_FRACTION,
                _ => POLL_FRACTION,
            };
            let mut wait = (started.elapsed() / fraction).clamp(floor, self.poll_interval);
            let last = match seen {
                Seen::Ready(server) => return Ok(server),
                Seen::Booting { last, .. } => last,
                Seen::Retry { last, after } => {
                    wait = wait.max(after);
                    last
                }
            };
            if Instant::now() + wait > deadline {
                return Err(ProviderError::Failed(format!(
                    "{what} was not running with an IPv4 address after {}s (last: {last})",
                    self.boot_timeout.as_secs()
                )));
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Once the server runs at `host`: forgets host keys recorded for the
    /// address (an earlier server's: clouds reuse addresses), waits for
    /// SSH and prepares the work root (unless bootstrapping is off),
    /// records the port that answered, and remembers the target.
    pub(crate) async fn connect(
        &self,
        lease_id: &str,
        host: String,
        record: &EndpointRecord,
    ) -> Result<(), ProviderError> {
        let host = record.host.clone().unwrap_or(host);
        let mut target = self.new_target(lease_id, host, record);
        let ports = self.port_candidates(record.port);
        for port in &ports {
            self.forget_host_key(&target.host, *port);
        }
        if self.ssh_bootstrap {
            target.port = self.wait_for_ssh(&target, &ports).await?;
            if target.port != record.port {
                // Later processes go straight to the port that answered.
                self.rewrite_port(record, target.port)?;
            }
        }
        self.remember_target(target);
        Ok(())
    }

    /// Waits until SSH on one of `ports` (in order; each round tries the
    /// open ones) logs in and passes Crabbox's ready check, as Crabbox's
    /// `waitForSSHReady` does (ssh.go:265-315), and creates the lease's work
    /// root in that same command (one round trip, over the connection setup
    /// then reuses); returns that port. A refused login, a changed host key
    /// or a work root that cannot be made fails at once.
    async fn wait_for_ssh(&self, target: &SshTarget, ports: &[u16]) -> Result<u16, ProviderError> {
        let deadline = Instant::now() + self.ssh_timeout;
        // A server that runs often answers on its primary port already: one
        // login then, without the TCP probe first, which costs the host a
        // connection (an sshd process) of its own.
        if let Some(&first) = ports.first() {
            let probe = SshTarget {
                port: first,
                ..target.clone()
            };
            if probe
                .try_prepared(
                    cloud_init::READY_CHECK,
                    PORT_SSH_TIMEOUT.min(self.ssh_timeout),
                )
                .await?
            {
                return Ok(first);
            }
        }
        loop {
            let mut seen = Vec::new();
            for &port in ports {
                if !port_open(&target.host, port).await {
                    seen.push(format!("{port}: closed"));
                    continue;
                }
                let probe = SshTarget {
                    port,
                    ..target.clone()
                };
                let left = deadline.saturating_duration_since(Instant::now());
                match probe
                    .wait_prepared(cloud_init::READY_CHECK, PORT_SSH_TIMEOUT.min(left))
                    .await
                {
                    Ok(()) => return Ok(port),
                    Err(e @ ProviderError::Config { .. }) => return Err(e),
                    Err(e) => seen.push(format!("{port}: {e}")),
                }
            }
            if Instant::now() + PORT_ROUND_PAUSE >= deadline {
                return Err(ProviderError::Failed(format!(
                    "SSH to {}@{} was not ready on any port within {}s ({}); check the server's console in {}",
                    target.user,
                    target.host,
                    self.ssh_timeout.as_secs(),
                    seen.join("; "),
                    self.console
                )));
            }
            tokio::time::sleep(PORT_ROUND_PAUSE).await;
        }
    }
}

/// Whether `host:port` accepts a TCP connection within [`PORT_PROBE_TIMEOUT`].
pub(crate) async fn port_open(host: &str, port: u16) -> bool {
    tokio::time::timeout(
        PORT_PROBE_TIMEOUT,
        tokio::net::TcpStream::connect((host, port)),
    )
    .await
    .is_ok_and(|c| c.is_ok())
}
