//! SSH transport shared by every SSH-lease provider: the system OpenSSH
//! client, one multiplexed connection per lease, strict host keys recorded on
//! first contact in the state directory.
//!
//! Every call runs `ssh` with the same options: batch mode (never a prompt),
//! `StrictHostKeyChecking=accept-new` against crabbox's own
//! `<state_dir>/ssh/known_hosts` (a key is recorded on first contact; a
//! changed key fails loudly), and a control master under
//! `<state_dir>/ssh/cm/` kept for two minutes after the last call, so only
//! the first call pays for the handshake.
//!
//! Nothing secret is ever put on a command line: the remote side runs
//! `sh -s` and reads a script on its standard input that changes to the
//! workspace, exports the environment and then runs the command. Every value
//! in those scripts goes through one single-quote escaper.
//!
//! The remote layout mirrors the local provider's lease directory:
//! `<work_root>/workspace/` (where the archive is unpacked and commands run),
//! `logs/<name>.log` and `pids/<name>.pid` per background service, each
//! service the leader of its own session and process group, and every
//! process started carrying `CRABBOX_LEASE_ID=<lease ID>`, which is checked
//! through `/proc` before a recorded process group is signalled.

use std::collections::{BTreeMap, VecDeque};
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWriteExt as _};
use tokio::time::Instant;

use crate::output::{Collect, NullSink, Outcome, exit_code, finish_pumps, pump_lines};
use crate::remote_shell::{
    ENV_LEASE_ID, ENV_WORKSPACE, EXITED_AT_ONCE, LOGS, NO_PROBE_TOOL, PIDS, PROBE_SECS,
    ServiceDirs, check_service_name, checked_text, early_exit, export_lines, http_probe_script,
    kill_marked, probe_command_line, probe_host, quote, stop_functions, stop_leftovers,
    tracked_command_script,
};
use crabbox_core::duration;
use crabbox_core::provider::{OutputSink, ProviderError, Stream};
use crabbox_spec::desired::Probe;

/// Where files are synced and commands run, under the work root.
const WORKSPACE: &str = "workspace";

/// `ConnectTimeout`, in seconds.
const CONNECT_TIMEOUT_SECS: u32 = 10;
/// `ServerAliveInterval`, in seconds.
const SERVER_ALIVE_SECS: u32 = 15;
/// `ControlPersist`: how long the master outlives its last client, in seconds.
const CONTROL_PERSIST_SECS: u32 = 120;
/// Between two `wait_ready` attempts.
const READY_POLL: Duration = Duration::from_millis(500);
/// How long `close` waits for the master to acknowledge.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// After ssh exits, how long to keep reading output something else may
/// still hold open.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);
/// How many of ssh's last stderr lines are kept to explain a failure.
const STDERR_KEPT: usize = 50;
/// A probe command that runs longer counts as not ready.
const PROBE_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// What [`SshTarget::wait_prepared`]'s command exits with when the work
/// root cannot be made (the readiness check failing exits 1).
const PREPARE_FAILED: i32 = 97;
/// What ssh exits with when it fails itself (rather than the remote command).
const SSH_FAILED: i32 = 255;

/// How to reach one lease over SSH and where its files live there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Login user.
    pub user: String,
    /// Private key file (`-i`); `None` uses the user's agent/config.
    pub key: Option<PathBuf>,
    /// Remote directory that belongs to this lease (created by `wait_prepared`,
    /// removed by `remove_work_root`); holds `workspace/`, `logs/`, `pids/`.
    pub work_root: String,
    /// Local state directory: `ssh/known_hosts` and control sockets live under it.
    pub state_dir: PathBuf,
    /// Value of `CRABBOX_LEASE_ID` for processes started on the host.
    pub lease_id: String,
}

impl SshTarget {
    /// Waits until SSH answers (and records the host key on first contact).
    ///
    /// Connection failures are retried every 500 ms; a changed host key or a
    /// refused login fails at once.
    ///
    /// # Errors
    /// Timeout or authentication failure.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), ProviderError> {
        self.poll("true", timeout).await
    }

    /// Waits until SSH answers and the login also runs `check` (in the
    /// login's home, before any work root exists) with exit status 0 — a
    /// host's own readiness check, such as the bootstrap's `crabbox-ready`;
    /// `true` for none — and creates the work root (`workspace/`, `logs/`, `pids/`) in that same
    /// command: a new lease costs one SSH round trip before its setup, and
    /// the connection that answered stays open (the control master) for
    /// what follows.
    ///
    /// # Errors
    /// Timeout, authentication failure, or a work root that cannot be made
    /// (at once, with the host's message).
    pub async fn wait_prepared(&self, check: &str, timeout: Duration) -> Result<(), ProviderError> {
        self.poll(&self.prepared_command(check), timeout).await
    }

    /// One attempt of [`Self::wait_prepared`], its login given `timeout`:
    /// `Ok(false)` when SSH or `check` does not answer yet.
    ///
    /// # Errors
    /// Authentication failure, or a work root that cannot be made.
    pub async fn try_prepared(
        &self,
        check: &str,
        timeout: Duration,
    ) -> Result<bool, ProviderError> {
        Ok(self
            .attempt(&self.prepared_command(check), timeout)
            .await?
            .is_ok())
    }

    /// `check`, then the work root's `mkdir -p`, as one remote command.
    fn prepared_command(&self, check: &str) -> String {
        format!(
            "( {check} ) || exit 1; mkdir -p -- {} {} {} || exit {PREPARE_FAILED}",
            quote(&self.path(WORKSPACE)),
            quote(&self.path(LOGS)),
            quote(&self.path(PIDS))
        )
    }

    /// Runs `command` once: `Ok(Err(why))` when it did not (yet) succeed;
    /// a refused login, a changed host key or [`PREPARE_FAILED`] are errors.
    async fn attempt(
        &self,
        command: &str,
        timeout: Duration,
    ) -> Result<Result<(), String>, ProviderError> {
        match self.capture(command, Input::Nothing, Some(timeout)).await {
            Ok(Captured {
                outcome: Outcome::Exited(0),
                ..
            }) => Ok(Ok(())),
            Ok(captured) if captured.outcome == Outcome::Exited(PREPARE_FAILED) => {
                Err(ProviderError::Config {
                    message: format!(
                        "creating the work root {} on {} failed: {}",
                        self.work_root,
                        self.describe(),
                        captured.describe()
                    ),
                    hint: format!("check that {} may write there", self.user),
                })
            }
            Ok(captured) => Ok(Err(captured.describe())),
            Err(e @ ProviderError::Config { .. }) => Err(e),
            Err(e) => Ok(Err(e.to_string())),
        }
    }

    /// Runs `command` until it exits 0, every [`READY_POLL`] until `timeout`;
    /// a refused login, a changed host key or [`PREPARE_FAILED`] end it at once.
    async fn poll(&self, command: &str, timeout: Duration) -> Result<(), ProviderError> {
        let deadline = Instant::now() + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let last = match self.attempt(command, remaining).await? {
                Ok(()) => return Ok(()),
                Err(why) => why,
            };
            if Instant::now() + READY_POLL >= deadline {
                return Err(ProviderError::Failed(format!(
                    "SSH to {} did not answer within {}: {last}",
                    self.describe(),
                    duration::format(timeout)
                )));
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// Runs a command in `workspace/` with `env` (sent over stdin, never argv), streaming output.
    ///
    /// The command runs as `sh -c <command>` with its standard input from
    /// `/dev/null`, in its own process group recorded in
    /// `pids/step-<random>.pid` while it runs (see
    /// [`tracked_command_script`]): a command that outlives its crabbox is
    /// found and stopped by [`Self::stop_background`], and one that times
    /// out is stopped at once. A command killed by a signal exits with 128 +
    /// the signal.
    ///
    /// # Errors
    /// SSH failures (not the command's own non-zero exit).
    pub async fn exec(
        &self,
        command: &str,
        env: &BTreeMap<String, String>,
        sink: Arc<dyn OutputSink>,
        timeout: Option<Duration>,
    ) -> Result<i32, ProviderError> {
        let command = checked_text("command", command)?;
        let pid_file = self.services().pid_file(&step_name()?);
        let script = format!(
            "{}mkdir -p -- {} || exit 1\n{}",
            self.env_prelude(env)?,
            quote(&self.services().pids),
            tracked_command_script(&pid_file, command)
        );
        match self
            .run(SH_STDIN, Input::Script(script), sink, timeout)
            .await?
        {
            Outcome::Exited(code) => Ok(code),
            Outcome::TimedOut(limit) => {
                // The ssh client is gone; the command may still run there.
                let stop = format!(
                    "{}crabbox_stop {}\n",
                    stop_functions(&self.lease_id, &self.path(WORKSPACE)),
                    quote(&pid_file)
                );
                let stopped = match self.script(stop).await {
                    Ok(c) => c.expect_success("stopping it"),
                    Err(e) => Err(e),
                };
                Err(ProviderError::Failed(format!(
                    "command timed out after {}{}",
                    duration::format(limit),
                    stopped.map_or_else(
                        |e| format!(
                            " and may still run on the host ({e}); its pid is in {pid_file}"
                        ),
                        |()| String::new()
                    )
                )))
            }
        }
    }

    /// Unpacks a local `.tar.gz` into `workspace/`, streamed over SSH.
    ///
    /// # Errors
    /// SSH or tar failures.
    pub async fn upload(&self, archive: &Path) -> Result<(), ProviderError> {
        let file = std::fs::File::open(archive)
            .map_err(|e| ProviderError::Failed(format!("opening {}: {e}", archive.display())))?;
        let workspace = quote(&self.path(WORKSPACE));
        // Modification times are set to now and owners to the login user,
        // as the local provider's unpacking does.
        let remote = format!("mkdir -p -- {workspace} && tar -x -z -m -o -f - -C {workspace}");
        self.capture(&remote, Input::File(file), None)
            .await?
            .expect_success(&format!("unpacking {} on the host", archive.display()))
    }

    /// Starts a detached service (own session), output to `logs/<name>.log`, pid in `pids/<name>.pid`.
    ///
    /// A service of the same name that is still running is stopped first.
    /// The service counts as started when it is still running 300 ms later.
    ///
    /// # Errors
    /// SSH failures, or the service exiting at once with an error.
    pub async fn start_background(
        &self,
        command: &str,
        env: &BTreeMap<String, String>,
        name: &str,
    ) -> Result<(), ProviderError> {
        check_service_name(name)?;
        let command = checked_text("command", command)?;
        let services = self.services();
        let script = format!(
            "{}{}{}",
            self.env_prelude(env)?,
            stop_functions(&self.lease_id, &self.path(WORKSPACE)),
            services.start_script(name, "sh -c", command)
        );
        let captured = self.script(script).await?;
        if captured.outcome != Outcome::Exited(EXITED_AT_ONCE) {
            return captured.expect_success(&format!("starting background service `{name}`"));
        }
        let (status, tail) = early_exit(&captured.stdout);
        let log = services.log(name);
        Err(ProviderError::Failed(format!(
            "background service `{name}` exited with status {status} right after starting; last lines of {log} on {}:\n{tail}",
            self.describe()
        )))
    }

    /// Before setup runs again: stops everything earlier runs started on the
    /// lease — services started by `start_background` and steps run by
    /// `exec` (their recorded process groups: TERM, then KILL after 5 s),
    /// then any other process carrying this lease's `CRABBOX_LEASE_ID` —
    /// and creates the work root if it is missing (a lease adopted after
    /// its creator was killed may never have had it prepared).
    ///
    /// A pid whose process does not carry this lease's `CRABBOX_LEASE_ID`
    /// (the pid was reused) is not signalled; its pid file is removed.
    ///
    /// # Errors
    /// SSH failures.
    pub async fn stop_background(&self) -> Result<(), ProviderError> {
        let script = format!(
            "{}{}mkdir -p -- {} {} {}\n",
            stop_functions(&self.lease_id, &self.path(WORKSPACE)),
            stop_leftovers(&self.services(), &self.lease_id),
            quote(&self.path(WORKSPACE)),
            quote(&self.path(LOGS)),
            quote(&self.path(PIDS))
        );
        self.script(script)
            .await?
            .expect_success("stopping what earlier runs started")
    }

    /// One readiness attempt, run on the host.
    ///
    /// TCP probes without a host (or with `localhost`) connect to
    /// 127.0.0.1 on the host, with bash's `/dev/tcp`, `nc` or python3; HTTP
    /// probes use curl, wget or python3; a probe command must exit 0 within
    /// 30 s. Something not answering is `Ok(false)`.
    ///
    /// # Errors
    /// SSH failures, or a host without any tool for the probe.
    pub async fn probe(
        &self,
        probe: &Probe,
        env: &BTreeMap<String, String>,
    ) -> Result<bool, ProviderError> {
        let script = match probe {
            Probe::Command(command) => {
                let script = format!(
                    "{}{}exit $?\n",
                    self.env_prelude(env)?,
                    probe_command_line(command)?
                );
                let outcome = self
                    .run(
                        SH_STDIN,
                        Input::Script(script),
                        Arc::new(NullSink),
                        Some(PROBE_COMMAND_TIMEOUT),
                    )
                    .await?;
                return Ok(outcome == Outcome::Exited(0));
            }
            Probe::Tcp { host, port } => tcp_probe_script(probe_host(host.as_deref())?, *port),
            Probe::Http(url) => http_probe_script(checked_text("probe URL", url)?, "host"),
        };
        let captured = self.script(script).await?;
        match captured.outcome {
            Outcome::Exited(0) => Ok(true),
            Outcome::Exited(NO_PROBE_TOOL) => Err(ProviderError::Failed(format!(
                "cannot probe on {}: {}",
                self.describe(),
                captured.stderr.join("\n")
            ))),
            Outcome::Exited(_) | Outcome::TimedOut(_) => Ok(false),
        }
    }

    /// Stops services and removes the work root; nothing else on the host is touched.
    ///
    /// Processes still carrying this lease's `CRABBOX_LEASE_ID` (leftovers of
    /// timed-out commands, or children a service moved out of its process
    /// group) are killed before the directory goes. A work root that is
    /// empty, `/`, contains `..` or has fewer than two path components is
    /// refused.
    ///
    /// # Errors
    /// SSH failures, or a work root too broad to delete.
    pub async fn remove_work_root(&self) -> Result<(), ProviderError> {
        check_removable(&self.work_root)?;
        let script = format!(
            "{}{}{}rm -rf -- {}\n",
            stop_functions(&self.lease_id, &self.path(WORKSPACE)),
            self.services().stop_all(),
            kill_marked(&self.lease_id),
            quote(&self.work_root)
        );
        self.script(script)
            .await?
            .expect_success("removing the work root")
    }

    /// Pins `host_key` (`ssh-ed25519 AAAA…`, as a Crabbox coordinator
    /// reports a lease's `sshHostKey`) for this target's host and port in
    /// crabbox's known-hosts file, replacing any key recorded for that
    /// entry. Called before the first connection: `accept-new` accepts a
    /// key only for an entry with none recorded, so a pinned host is
    /// checked strictly from the start (no trust on first use).
    ///
    /// # Errors
    /// A key that is not `<type> <base64>`, or the file cannot be written.
    pub fn pin_host_key(&self, host_key: &str) -> Result<(), ProviderError> {
        let mut fields = host_key.split_whitespace();
        let (Some(kind), Some(blob)) = (fields.next(), fields.next()) else {
            return Err(ProviderError::Failed(format!(
                "the host key reported for {} is not `<type> <base64>`: `{host_key}`",
                self.describe()
            )));
        };
        let valid_blob = blob
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
        if !(kind.starts_with("ssh-") || kind.starts_with("ecdsa-")) || !valid_blob {
            return Err(ProviderError::Failed(format!(
                "the host key reported for {} is not an SSH public key: `{host_key}`",
                self.describe()
            )));
        }
        rewrite_known_hosts(
            &self.known_hosts(),
            &known_hosts_entry(&self.host, self.port),
            Some(&format!("{kind} {blob}")),
        )
    }

    /// Closes the multiplexed connection.
    pub async fn close(&self) {
        let Ok(mut cmd) = self.ssh() else { return };
        cmd.arg("-O")
            .arg("exit")
            .arg("--")
            .arg(self.destination())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, cmd.status()).await;
    }

    // ---- ssh invocation ----------------------------------------------------

    /// `user@host:port`, for messages.
    fn describe(&self) -> String {
        format!("{}@{}:{}", self.user, self.host, self.port)
    }

    /// The ssh destination argument.
    fn destination(&self) -> String {
        format!("{}@{}", self.user, self.host)
    }

    /// crabbox's own known-hosts file.
    fn known_hosts(&self) -> PathBuf {
        self.state_dir.join("ssh").join("known_hosts")
    }

    /// A path under the work root, as the remote shell sees it.
    fn path(&self, relative: &str) -> String {
        format!("{}/{relative}", self.work_root.trim_end_matches('/'))
    }

    /// The background services' `logs/` and `pids/` under the work root.
    fn services(&self) -> ServiceDirs {
        ServiceDirs::under(&self.work_root)
    }

    /// `ssh` with the common options, up to (not including) the destination;
    /// creates the known-hosts and control-socket directories.
    fn ssh(&self) -> Result<tokio::process::Command, ProviderError> {
        let control_dir = self.state_dir.join("ssh").join("cm");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&control_dir)
            .map_err(|e| {
                ProviderError::Failed(format!("creating {}: {e}", control_dir.display()))
            })?;
        let mut cmd = tokio::process::Command::new("ssh");
        cmd.arg("-T").arg("-p").arg(self.port.to_string());
        if let Some(key) = &self.key {
            cmd.arg("-i").arg(key).arg("-o").arg("IdentitiesOnly=yes");
        }
        let mut known_hosts = std::ffi::OsString::from("UserKnownHostsFile=");
        known_hosts.push(self.known_hosts());
        // One master per lease: closing a lease's master when it is released
        // must not cut the session of another lease on the same host.
        let mut control_path = std::ffi::OsString::from("ControlPath=");
        // Other lease-ID shapes (`static_<host>`…) may be long: a socket
        // path has about 100 bytes, so they are named by a short hash.
        let socket = if crabbox_core::lease::is_lease_id(&self.lease_id) {
            self.lease_id.clone()
        } else if crabbox_core::lease::is_claim_id(&self.lease_id) {
            format!(
                "l-{}",
                crabbox_core::labels::short_hash(&serde_json::json!(self.lease_id))
            )
        } else {
            "%C".to_owned()
        };
        control_path.push(control_dir.join(socket));
        for option in [
            "BatchMode=yes".into(),
            "StrictHostKeyChecking=accept-new".into(),
            known_hosts,
            "HashKnownHosts=no".into(),
            format!("ConnectTimeout={CONNECT_TIMEOUT_SECS}").into(),
            format!("ServerAliveInterval={SERVER_ALIVE_SECS}").into(),
            "ControlMaster=auto".into(),
            control_path,
            format!("ControlPersist={CONTROL_PERSIST_SECS}").into(),
            "LogLevel=ERROR".into(),
        ] {
            cmd.arg("-o").arg(option);
        }
        Ok(cmd)
    }

    /// Runs `remote` on the host with `input` on its standard input, output
    /// line by line to `sink`. ssh's own failures (exit 255 with a
    /// connection, authentication or host-key message) are errors.
    async fn run(
        &self,
        remote: &str,
        input: Input,
        sink: Arc<dyn OutputSink>,
        timeout: Option<Duration>,
    ) -> Result<Outcome, ProviderError> {
        let mut cmd = self.ssh()?;
        cmd.arg("--").arg(self.destination()).arg(remote);
        let script = match input {
            Input::Nothing => {
                cmd.stdin(Stdio::null());
                None
            }
            Input::File(file) => {
                cmd.stdin(file);
                None
            }
            Input::Script(script) => {
                cmd.stdin(Stdio::piped());
                Some(script)
            }
        };
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ProviderError::Config {
                    message: "the `ssh` client is not installed".to_owned(),
                    hint: "install OpenSSH's client (e.g. `apt-get install openssh-client`)"
                        .to_owned(),
                }
            } else {
                ProviderError::Failed(format!("starting ssh: {e}"))
            }
        })?;
        let pid = child.id().and_then(|id| i32::try_from(id).ok());
        // Until the client is reaped (end of this call).
        let _live = pid.map(crate::process_groups::register);
        if let (Some(script), Some(mut stdin)) = (script, child.stdin.take()) {
            // The remote shell may fail before reading it all; that failure
            // is reported through ssh's exit status, not this write.
            tokio::spawn(async move {
                let _ = stdin.write_all(script.as_bytes()).await;
                let _ = stdin.shutdown().await;
            });
        }
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        let pumps = [
            child
                .stdout
                .take()
                .map(|r| tokio::spawn(pump(r, Stream::Stdout, sink.clone(), None))),
            child
                .stderr
                .take()
                .map(|r| tokio::spawn(pump(r, Stream::Stderr, sink, Some(stderr_tail.clone())))),
        ];
        let waited = match timeout {
            Some(limit) => tokio::time::timeout(limit, child.wait()).await.ok(),
            None => Some(child.wait().await),
        };
        let Some(status) = waited else {
            if let Some(pid) = pid {
                // SAFETY: killpg(2) only takes integers and touches no memory;
                // the group is ssh's own (`process_group(0)`) and its leader is
                // not reaped yet, so the group ID cannot have been reused.
                unsafe {
                    libc::killpg(pid, libc::SIGKILL);
                }
            }
            let _ = child.wait().await;
            for pump in pumps.into_iter().flatten() {
                pump.abort();
            }
            return Ok(Outcome::TimedOut(timeout.unwrap_or_default()));
        };
        let status = status.map_err(|e| ProviderError::Failed(format!("waiting for ssh: {e}")))?;
        finish_pumps(pumps, OUTPUT_GRACE).await;
        let code = exit_code(status);
        if code == SSH_FAILED {
            let stderr: Vec<String> = stderr_tail
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .cloned()
                .collect();
            if let Some(err) = self.ssh_error(&stderr) {
                return Err(err);
            }
        }
        Ok(Outcome::Exited(code))
    }

    /// Runs `remote` and collects its output.
    async fn capture(
        &self,
        remote: &str,
        input: Input,
        timeout: Option<Duration>,
    ) -> Result<Captured, ProviderError> {
        let sink = Arc::new(Collect::default());
        let outcome = self.run(remote, input, sink.clone(), timeout).await?;
        let (stdout, stderr) = sink.take();
        Ok(Captured {
            outcome,
            stdout,
            stderr,
        })
    }

    /// Runs a shell script on the host (`sh -s`) and collects its output.
    async fn script(&self, script: String) -> Result<Captured, ProviderError> {
        self.capture(SH_STDIN, Input::Script(script), None).await
    }

    /// The error ssh's stderr describes, when it failed itself.
    fn ssh_error(&self, stderr: &[String]) -> Option<ProviderError> {
        let text = stderr.join("\n");
        let has = |needle: &str| text.contains(needle);
        let last = stderr
            .iter()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map_or("", |l| l.trim());
        let target = self.describe();
        if has("REMOTE HOST IDENTIFICATION HAS CHANGED") || has("Host key verification failed") {
            let known_hosts = self.known_hosts();
            let entry = if self.port == 22 {
                self.host.clone()
            } else {
                format!("[{}]:{}", self.host, self.port)
            };
            return Some(ProviderError::Config {
                message: format!(
                    "the host key of {target} does not match the one recorded in {}; refusing to connect",
                    known_hosts.display()
                ),
                hint: format!(
                    "if the host was really reinstalled, remove its old key from that file: ssh-keygen -R '{entry}' -f '{}'",
                    known_hosts.display()
                ),
            });
        }
        if has("Permission denied") || has("Too many authentication failures") {
            let key = self.key.as_ref().map_or_else(
                || "your SSH agent's or default keys".to_owned(),
                |k| format!("the key {}", k.display()),
            );
            return Some(ProviderError::Config {
                message: format!("SSH login to {target} was refused: {last}"),
                hint: format!(
                    "check that user `{}` exists on the host and that {key} is in its authorized_keys",
                    self.user
                ),
            });
        }
        if has("Could not resolve hostname") {
            return Some(ProviderError::Config {
                message: format!("SSH to {target}: {last}"),
                hint: format!("check the host name `{}`", self.host),
            });
        }
        let transient = [
            "Connection refused",
            "Connection reset",
            "Connection timed out",
            "Operation timed out",
            "timed out",
            "No route to host",
            "Network is unreachable",
            "Connection closed",
            "closed by remote host",
            "kex_exchange_identification",
            "not responding",
            "Broken pipe",
            "Session open refused",
        ];
        transient
            .iter()
            .any(|n| has(n))
            .then(|| ProviderError::Retryable {
                message: format!("SSH to {target} failed: {last}"),
                retry_after: None,
            })
    }

    // ---- remote scripts ----------------------------------------------------

    /// Script lines that change to the workspace and export `env` and the
    /// lease's own `CRABBOX_*` variables (which win over `env`).
    fn env_prelude(&self, env: &BTreeMap<String, String>) -> Result<String, ProviderError> {
        let workspace = self.path(WORKSPACE);
        let own = [
            (ENV_LEASE_ID, self.lease_id.as_str()),
            (ENV_WORKSPACE, workspace.as_str()),
        ];
        let all = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).chain(own);
        let exports = export_lines(all)?;
        Ok(format!("cd {} || exit 127\n{exports}", quote(&workspace)))
    }
}

/// A fresh name for a tracked step's pid file: `step-` and 16 random hex
/// digits (several steps of a lease may run at once).
fn step_name() -> Result<String, ProviderError> {
    let mut bytes = [0_u8; 8];
    getrandom::fill(&mut bytes)
        .map_err(|e| ProviderError::Failed(format!("naming a step's pid file: {e}")))?;
    Ok(format!("step-{:016x}", u64::from_be_bytes(bytes)))
}

/// The remote command that runs a script read from standard input.
const SH_STDIN: &str = "sh -s";

/// What ssh reads on its standard input.
enum Input {
    /// Nothing (`/dev/null`).
    Nothing,
    /// A local file.
    File(std::fs::File),
    /// A script for `sh -s`.
    Script(String),
}

/// A finished remote command and its output.
struct Captured {
    /// How it ended.
    outcome: Outcome,
    /// Its standard output lines.
    stdout: Vec<String>,
    /// Its standard error lines.
    stderr: Vec<String>,
}

impl Captured {
    /// How it ended, with its error output.
    fn describe(&self) -> String {
        let how = match self.outcome {
            Outcome::Exited(code) => format!("exit status {code}"),
            Outcome::TimedOut(limit) => format!("timed out after {}", duration::format(limit)),
        };
        let stderr = self.stderr.join("\n");
        if stderr.trim().is_empty() {
            how
        } else {
            format!("{how}: {}", stderr.trim())
        }
    }

    /// `Ok` when it exited 0, else a failure saying what was being done.
    fn expect_success(self, doing: &str) -> Result<(), ProviderError> {
        if self.outcome == Outcome::Exited(0) {
            Ok(())
        } else {
            Err(ProviderError::Failed(format!(
                "{doing} failed: {}",
                self.describe()
            )))
        }
    }
}

/// Removes `host:port` from crabbox's known-hosts file under `state_dir`
/// (an address reused by a new server has a new host key), as `ssh-keygen
/// -R` would, in-process: a create forgets each port it may log in on, and
/// two processes per create cost more than the rest of its local work.
///
/// # Errors
/// The file cannot be read or written.
pub fn forget_host_key(state_dir: &Path, host: &str, port: u16) -> Result<(), ProviderError> {
    let file = state_dir.join("ssh").join("known_hosts");
    if !file.exists() {
        return Ok(());
    }
    rewrite_known_hosts(&file, &known_hosts_entry(host, port), None)
}

/// How `host:port` is written in a known-hosts file.
fn known_hosts_entry(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_owned()
    } else {
        format!("[{host}]:{port}")
    }
}

/// Drops the lines naming `entry` from `file` and, with `key`, adds
/// `entry key`; the file is replaced atomically, and only when it changes.
fn rewrite_known_hosts(file: &Path, entry: &str, key: Option<&str>) -> Result<(), ProviderError> {
    // Rewrites by concurrent creates in this process must not lose each other.
    static REWRITING: Mutex<()> = Mutex::new(());
    let _rewriting = REWRITING.lock().unwrap_or_else(PoisonError::into_inner);
    let old = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(ProviderError::Failed(format!(
                "reading {}: {e}",
                file.display()
            )));
        }
    };
    let mut text: String = old
        .lines()
        .filter(|line| {
            line.split_whitespace()
                .next()
                .is_none_or(|hosts| !hosts.split(',').any(|h| h == entry))
        })
        .map(|line| format!("{line}\n"))
        .collect();
    if let Some(key) = key {
        text.push_str(&format!("{entry} {key}\n"));
    }
    if text == old {
        return Ok(());
    }
    if let Some(dir) = file.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| ProviderError::Failed(format!("creating {}: {e}", dir.display())))?;
    }
    crabbox_fs::atomic_file::write(file, text.as_bytes())
        .map_err(|e| ProviderError::Failed(format!("writing {}: {e}", file.display())))
}

/// Refuses a work root whose removal could delete something broad: empty,
/// `/`, anything with `..`, or fewer than two path components.
fn check_removable(work_root: &str) -> Result<(), ProviderError> {
    let components: Vec<&str> = work_root
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if components.len() < 2 || components.contains(&"..") || work_root.contains('\0') {
        return Err(ProviderError::Failed(format!(
            "refusing to remove work root `{work_root}`: it must be a path of at least two components without `..`"
        )));
    }
    Ok(())
}

/// A TCP probe of `host:port`, run on the host: with bash's `/dev/tcp`, `nc`
/// or python3, whichever the host has (an SSH host may lack bash).
fn tcp_probe_script(host: &str, port: u16) -> String {
    format!(
        r#"host={host}
port={port}
if command -v bash >/dev/null 2>&1; then
  t=
  if command -v timeout >/dev/null 2>&1; then t="timeout {PROBE_SECS}"; fi
  $t bash -c 'exec 3<>"/dev/tcp/$1/$2"' crabbox-probe "$host" "$port" >/dev/null 2>&1 && exit 0
  exit 1
fi
if command -v nc >/dev/null 2>&1; then
  nc -z -w {PROBE_SECS} "$host" "$port" >/dev/null 2>&1 && exit 0
  exit 1
fi
if command -v python3 >/dev/null 2>&1; then
  python3 -c 'import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), {PROBE_SECS}).close()' "$host" "$port" >/dev/null 2>&1 && exit 0
  exit 1
fi
echo 'the host has none of bash, nc or python3 for a tcp ready check' >&2
exit {NO_PROBE_TOOL}
"#,
        host = quote(host)
    )
}

/// Copies one pipe to the sink line by line; with `tail`, also keeps the
/// last lines there (ssh's own errors are read from them).
async fn pump(
    reader: impl AsyncRead + Unpin,
    stream: Stream,
    sink: Arc<dyn OutputSink>,
    tail: Option<Arc<Mutex<VecDeque<String>>>>,
) {
    pump_lines(reader, |_, line| {
        if let Some(tail) = &tail {
            let mut tail = tail.lock().unwrap_or_else(PoisonError::into_inner);
            if tail.len() == STDERR_KEPT {
                tail.pop_front();
            }
            tail.push_back(line.to_owned());
        }
        sink.line(stream, line);
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgetting_a_host_key_drops_only_that_host_and_port() {
        let state = tempfile::tempdir().expect("tempdir");
        let file = state.path().join("ssh").join("known_hosts");
        std::fs::create_dir_all(file.parent().expect("dir")).expect("mkdir");
        std::fs::write(
            &file,
            "[10.0.0.7]:2222 ssh-ed25519 AAAA1\n10.0.0.7 ssh-ed25519 AAAA2\n10.0.0.70,[10.0.0.7]:2223 ssh-ed25519 AAAA3\n",
        )
        .expect("write");
        forget_host_key(state.path(), "10.0.0.7", 2222).expect("forget 2222");
        assert_eq!(
            std::fs::read_to_string(&file).expect("read"),
            "10.0.0.7 ssh-ed25519 AAAA2\n10.0.0.70,[10.0.0.7]:2223 ssh-ed25519 AAAA3\n"
        );
        forget_host_key(state.path(), "10.0.0.7", 22).expect("forget 22");
        forget_host_key(state.path(), "10.0.0.7", 2223).expect("forget 2223");
        assert_eq!(std::fs::read_to_string(&file).expect("read"), "");
        forget_host_key(state.path(), "10.0.0.9", 22).expect("an unknown host is fine");
    }

    #[test]
    fn only_narrow_work_roots_are_removable() {
        for ok in [
            "/tmp/work/cbx_0123456789ab",
            "/srv/crabbox",
            "crabbox/cbx_0123456789ab",
            "/a/b/",
        ] {
            assert!(check_removable(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "", "/", "//", "/tmp", "/tmp/", "tmp", ".", "./", "/./tmp/.", "/tmp/..", "/a/../b",
            "..", "~",
        ] {
            assert!(check_removable(bad).is_err(), "{bad:?}");
        }
    }

    fn target() -> SshTarget {
        SshTarget {
            host: "example.test".into(),
            port: 2222,
            user: "me".into(),
            key: Some(PathBuf::from("/keys/id")),
            work_root: "/srv/w/".into(),
            state_dir: PathBuf::from("/state"),
            lease_id: "cbx_0123456789ab".into(),
        }
    }

    #[test]
    fn a_pinned_host_key_replaces_only_its_own_entry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = SshTarget {
            state_dir: dir.path().to_owned(),
            ..target()
        };
        let file = dir.path().join("ssh/known_hosts");
        std::fs::create_dir_all(file.parent().expect("dir")).expect("dir");
        std::fs::write(
            &file,
            "[example.test]:2222 ssh-ed25519 OLDKEY\n[example.test]:22 ssh-ed25519 OTHER\nelse.test ssh-rsa AAAA\n",
        )
        .expect("seed");
        t.pin_host_key("ssh-ed25519 NEWKEY root@host").expect("pin");
        let text = std::fs::read_to_string(&file).expect("read");
        assert_eq!(
            text,
            "[example.test]:22 ssh-ed25519 OTHER\nelse.test ssh-rsa AAAA\n[example.test]:2222 ssh-ed25519 NEWKEY\n"
        );
        SshTarget {
            port: 22,
            ..t.clone()
        }
        .pin_host_key("ssh-ed25519 K22")
        .expect("pin 22");
        let text = std::fs::read_to_string(&file).expect("read");
        assert!(text.ends_with("example.test ssh-ed25519 K22\n"), "{text}");
        assert!(t.pin_host_key("not a key;rm").is_err());
        assert!(t.pin_host_key("").is_err());
    }

    #[test]
    fn env_prelude_quotes_values_and_puts_lease_variables_last() {
        let mut env = BTreeMap::new();
        env.insert("A".to_owned(), "x'y $z".to_owned());
        env.insert(ENV_LEASE_ID.to_owned(), "spoofed".to_owned());
        let prelude = target().env_prelude(&env).expect("prelude");
        assert_eq!(
            prelude,
            "cd '/srv/w/workspace' || exit 127\n\
             export A='x'\\''y $z'\n\
             export CRABBOX_LEASE_ID='spoofed'\n\
             export CRABBOX_LEASE_ID='cbx_0123456789ab'\n\
             export CRABBOX_WORKSPACE='/srv/w/workspace'\n"
        );
        env.insert("BAD NAME".to_owned(), String::new());
        assert!(target().env_prelude(&env).is_err());
    }

    #[test]
    fn ssh_errors_are_classified() {
        let t = target();
        let lines = |s: &str| s.lines().map(str::to_owned).collect::<Vec<_>>();
        let err = t
            .ssh_error(&lines(
                "ssh: connect to host example.test port 2222: Connection refused",
            ))
            .expect("refused");
        assert!(err.is_retryable(), "{err:?}");
        let err = t
            .ssh_error(&lines("me@example.test: Permission denied (publickey)."))
            .expect("denied");
        let ProviderError::Config { message, hint } = err else {
            panic!("{err:?}")
        };
        assert!(message.contains("Permission denied"), "{message}");
        assert!(hint.contains("/keys/id") && hint.contains("`me`"), "{hint}");
        let err = t
            .ssh_error(&lines(
                "@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n@@@@\nHost key verification failed.",
            ))
            .expect("host key");
        let ProviderError::Config { message, hint } = err else {
            panic!("{err:?}")
        };
        assert!(message.contains("/state/ssh/known_hosts"), "{message}");
        assert!(
            hint.contains("ssh-keygen -R '[example.test]:2222'"),
            "{hint}"
        );
        assert!(
            t.ssh_error(&lines("some output of the command itself"))
                .is_none()
        );
    }
}
