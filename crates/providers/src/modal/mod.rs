//! The `modal` provider: Modal Sandboxes, driven through a small Python
//! program shipped in this binary (`client.py`) and run with the user's
//! Python (`python3`, `modal.python` or `CRABBOX_MODAL_PYTHON`) and its
//! `modal` package.
//!
//! - **Auth** is Modal's own: `MODAL_TOKEN_ID`/`MODAL_TOKEN_SECRET` in the
//!   environment or Modal's config file, read by the package. Nothing secret
//!   is ever on a command line: the program is `python3 -c <program>` and
//!   its request (including command environments) arrives on stdin.
//! - **Create**: the executor's pending claim records the app, environment,
//!   workdir and Python first; then `App.lookup(create_if_missing)`,
//!   `Image.from_registry`, `Sandbox.create` with Crabbox's tags in the call
//!   (`crabbox`, `provider`, `lease`, `slug`, `state`, `keep`, `expires_at`,
//!   `app`, `image`), the member's GPU and Secrets, timeout = TTL capped at
//!   24 h; then the workdir is made and the client detaches. The pond is
//!   recorded in the claim only, as Crabbox does.
//! - **Discovery** is one `Sandbox.list(app_id, tags={crabbox, provider})`
//!   per app/environment this pond's claims name, joined with the claims by
//!   sandbox ID and `lease` tag; a failed listing fails the plan.
//! - **Commands** run as `bash -lc <script>` in the workdir, output streamed,
//!   the exit status the command's (written by the program to a result
//!   file: its own exit 125 means the call to Modal failed).
//!   Background steps and `expose` are refused (no ingress), by `validate`
//!   and here.
//! - **Release** terminates a sandbox only when it is listed with this
//!   lease's tags.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::io::AsyncWriteExt as _;

use crate::claim_backed::{self, extra_str, pending_claim, pond_claims};
use crate::registry::Descriptor;
use crate::{CreateRequest, Provider};
use crabbox_core::duration;
use crabbox_core::labels::{self, Labels};
use crabbox_core::lease::{Endpoint, Lease};
use crabbox_core::provider::{OutputSink, ProviderError, ProviderName, Stream};
use crabbox_exec::output::{Collect, NullSink, Outcome, exit_code, finish_pumps, pump_lines};
use crabbox_exec::remote_shell::{
    ENV_LEASE_ID, ENV_WORKSPACE, bash_tcp_probe_script, check_env_name, checked_text,
    http_probe_script, probe_command_line, probe_host, quote,
};
use crabbox_exec::session::{ExecRequest, Session};
use crabbox_spec::desired::Probe;
use crabbox_spec::model::Class;
use crabbox_spec::providers::ModalBlock;
use crabbox_state::claims::{Claim, ClaimStore};

/// The program every call runs (`python3 -c`).
pub const CLIENT_PROGRAM: &str = include_str!("client.py");
/// The interpreter when neither the block nor the environment names one.
pub const DEFAULT_PYTHON: &str = "python3";
/// The program's exit status when the call to Modal failed.
pub const TRANSPORT_EXIT: i32 = 125;
/// Modal's longest sandbox lifetime.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// Claim fields (Crabbox keeps unknown fields).
const CLAIM_APP: &str = "modalApp";
const CLAIM_ENVIRONMENT: &str = "modalEnvironment";
const CLAIM_WORKDIR: &str = "modalWorkdir";
const CLAIM_PYTHON: &str = "modalPython";

/// `create` (image pulls), `upload`.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// `list`, `terminate`.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(2 * 60);
/// A probe that runs longer counts as not ready.
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);
/// After SIGTERM, how long before SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(2);
/// After the program exits, how long to keep reading output.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);
/// How much of the program's error output goes into a message.
const ERROR_TEXT_MAX: usize = 4096;

/// The `modal` adapter in the registry's table.
pub const DESCRIPTOR: Descriptor = Descriptor {
    name: ProviderName::Modal,
    build: |dir, claims| {
        Some(
            Arc::new(ModalProvider::from_env(dir).with_claims(claims.clone())) as Arc<dyn Provider>,
        )
    },
    credentials: None,
    help:
        "  MODAL_TOKEN_ID, MODAL_TOKEN_SECRET
                              Modal's own auth, read by the `modal` Python package (or its config
                              file); CRABBOX_MODAL_PYTHON: the Python that has it (default python3)",
    transport_refusal: Some(
        "Modal owns the command transport and does not expose Crabbox's rsync semantics",
    ),
};

/// The `modal` provider.
#[derive(Debug)]
pub struct ModalProvider {
    claims: ClaimStore,
    /// `CRABBOX_MODAL_PYTHON`.
    python: Option<String>,
    /// Extra variables for every program run (tests put the fake package on `PYTHONPATH`).
    env: Vec<(String, String)>,
}

/// Where one sandbox lives and how to reach it, from its claim.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Scope {
    python: String,
    app: String,
    environment: Option<String>,
}

#[derive(Debug, Clone)]
struct Target {
    lease_id: String,
    id: String,
    workdir: String,
    scope: Scope,
}

/// One sandbox as the program reports it.
#[derive(Debug, Clone, Deserialize)]
struct Listed {
    id: String,
    #[serde(default)]
    tags: BTreeMap<String, String>,
}

impl ModalProvider {
    /// The provider with `CRABBOX_MODAL_PYTHON` from the environment.
    #[must_use]
    pub fn from_env(state_dir: &Path) -> Self {
        Self {
            claims: ClaimStore::local(state_dir),
            python: std::env::var("CRABBOX_MODAL_PYTHON")
                .ok()
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty()),
            env: Vec::new(),
        }
    }

    /// The same provider keeping its leases in `claims`.
    #[must_use]
    pub fn with_claims(self, claims: ClaimStore) -> Self {
        Self { claims, ..self }
    }

    /// Adds a variable to every program run's environment.
    #[must_use]
    pub fn with_env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    fn default_python(&self) -> String {
        self.python
            .clone()
            .unwrap_or_else(|| DEFAULT_PYTHON.to_owned())
    }

    // ---- claims ------------------------------------------------------------

    fn scope_of(&self, claim: &Claim) -> Scope {
        Scope {
            python: extra_str(claim, CLAIM_PYTHON)
                .map_or_else(|| self.default_python(), str::to_owned),
            app: extra_str(claim, CLAIM_APP)
                .unwrap_or(ModalBlock::DEFAULT_APP)
                .to_owned(),
            environment: extra_str(claim, CLAIM_ENVIRONMENT).map(str::to_owned),
        }
    }

    async fn target(&self, lease: &Lease) -> Result<Target, ProviderError> {
        let claim = self
            .claims
            .load(&lease.id)
            .await
            .map_err(ProviderError::state)?
            .ok_or_else(|| ProviderError::NotFound(format!("claim of {}", lease.id)))?;
        if claim.provider != ProviderName::Modal.as_str() {
            return Err(ProviderError::Failed(format!(
                "claim {} belongs to provider `{}`, not modal",
                lease.id, claim.provider
            )));
        }
        if claim.cloud_id.is_empty() {
            return Err(ProviderError::NotFound(format!(
                "Modal sandbox of {} (its claim records no sandbox ID: create never finished)",
                lease.id
            )));
        }
        let workdir = ModalBlock::checked_workdir(extra_str(&claim, CLAIM_WORKDIR))
            .map_err(|p| ProviderError::Failed(p.message))?;
        Ok(Target {
            lease_id: claim.lease_id.clone(),
            id: claim.cloud_id.clone(),
            workdir,
            scope: self.scope_of(&claim),
        })
    }

    async fn write_claim(&self, claim: &Claim) -> Result<Claim, ProviderError> {
        self.claims
            .write(claim)
            .await
            .map_err(|e| ProviderError::Failed(format!("writing claim {}: {e}", claim.lease_id)))
    }

    // ---- running the program -------------------------------------------------

    /// Runs one op with `request` on stdin, output line by line to `sink`.
    async fn run(
        &self,
        python: &str,
        request: &Value,
        sink: Arc<dyn OutputSink>,
        timeout: Option<Duration>,
    ) -> Result<Outcome, ProviderError> {
        let mut cmd = tokio::process::Command::new(python);
        cmd.arg("-c").arg(CLIENT_PROGRAM);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| ProviderError::Config {
            message: format!("cannot run Python `{python}` for the modal provider: {e}"),
            hint: "install Python 3 with the `modal` package, or name one with `modal.python` or CRABBOX_MODAL_PYTHON".to_owned(),
        })?;
        if let Some(mut stdin) = child.stdin.take() {
            let body = request.to_string();
            // A program that died at once is reported by its exit status.
            let _ = stdin.write_all(body.as_bytes()).await;
            drop(stdin);
        }
        let pid = child.id().and_then(|id| i32::try_from(id).ok());
        let pumps = [
            child.stdout.take().map(|r| {
                let sink = sink.clone();
                tokio::spawn(pump_lines(r, move |_, l| sink.line(Stream::Stdout, l)))
            }),
            child.stderr.take().map(|r| {
                let sink = sink.clone();
                tokio::spawn(pump_lines(r, move |_, l| sink.line(Stream::Stderr, l)))
            }),
        ];
        let waited = match timeout {
            Some(limit) => tokio::time::timeout(limit, child.wait()).await.ok(),
            None => Some(child.wait().await),
        };
        let Some(status) = waited else {
            if let Some(pid) = pid {
                kill_group(pid, libc::SIGTERM);
                if tokio::time::timeout(KILL_GRACE, child.wait())
                    .await
                    .is_err()
                {
                    kill_group(pid, libc::SIGKILL);
                    let _ = child.wait().await;
                }
            }
            finish_pumps(pumps, OUTPUT_GRACE).await;
            return Ok(Outcome::TimedOut(timeout.unwrap_or_default()));
        };
        let status =
            status.map_err(|e| ProviderError::Failed(format!("waiting for `{python}`: {e}")))?;
        finish_pumps(pumps, OUTPUT_GRACE).await;
        Ok(Outcome::Exited(exit_code(status)))
    }

    /// Runs one op and reads its JSON result (the last non-empty stdout line).
    async fn call(
        &self,
        python: &str,
        request: &Value,
        timeout: Duration,
        retry: Retry,
    ) -> Result<Value, ProviderError> {
        let sink = Arc::new(Collect::default());
        let outcome = self
            .run(python, request, sink.clone(), Some(timeout))
            .await?;
        let (stdout, stderr) = sink.take();
        let op = request["op"].as_str().unwrap_or_default();
        if outcome != Outcome::Exited(0) {
            return Err(failure(op, outcome, &stdout, &stderr, retry));
        }
        let line = stdout
            .iter()
            .rev()
            .map(|l| l.trim())
            .find(|l| !l.is_empty())
            .unwrap_or_default();
        serde_json::from_str(line).map_err(|e| {
            ProviderError::Failed(format!(
                "modal {op}: the client printed no JSON result ({e}): {}",
                truncate(line, ERROR_TEXT_MAX)
            ))
        })
    }

    fn request(op: &str, scope: &Scope, fields: Value) -> Value {
        let mut map = Map::new();
        map.insert("op".to_owned(), json!(op));
        map.insert("app".to_owned(), json!(scope.app));
        if let Some(env) = &scope.environment {
            map.insert("environment".to_owned(), json!(env));
        }
        if let Value::Object(fields) = fields {
            map.extend(fields);
        }
        Value::Object(map)
    }

    /// The sandboxes of `scope` carrying crabbox's tags.
    async fn list_scope(&self, scope: &Scope) -> Result<Vec<Listed>, ProviderError> {
        let request = Self::request(
            "list",
            scope,
            json!({ "tags": { labels::CRABBOX: "true", labels::PROVIDER: "modal" } }),
        );
        let listed = self
            .call(&scope.python, &request, CONTROL_TIMEOUT, Retry::IfTransient)
            .await?;
        serde_json::from_value(listed)
            .map_err(|e| ProviderError::Failed(format!("modal list: unexpected result: {e}")))
    }

    async fn terminate(&self, scope: &Scope, id: &str) -> Result<(), ProviderError> {
        let request = Self::request("terminate", scope, json!({ "sandbox_id": id }));
        self.call(&scope.python, &request, CONTROL_TIMEOUT, Retry::IfTransient)
            .await
            .map(drop)
    }

    /// Runs `script` with `bash -lc` in the workdir, streamed to `sink`.
    async fn exec_script(
        &self,
        target: &Target,
        script: &str,
        env: &BTreeMap<String, String>,
        sink: Arc<dyn OutputSink>,
        timeout: Option<Duration>,
    ) -> Result<i32, ProviderError> {
        for (k, v) in env {
            check_env_name(k)?;
            checked_text("env value", v)?;
        }
        let result = tempfile::Builder::new()
            .prefix("crabbox-modal-exec-")
            .suffix(".rc")
            .tempfile_in(std::env::temp_dir())
            .map_err(|e| ProviderError::Failed(format!("a result file for modal exec: {e}")))?
            .into_temp_path();
        let mut script_text = format!(
            "export {ENV_LEASE_ID}={} {ENV_WORKSPACE}={}\n",
            quote(&target.lease_id),
            quote(&target.workdir)
        );
        script_text.push_str(checked_text("command", script)?);
        let request = Self::request(
            "exec",
            &target.scope,
            json!({
                "sandbox_id": target.id,
                "workdir": target.workdir,
                "script": script_text,
                "env": env,
                "timeout": timeout.map_or(0, |t| t.as_secs().max(1)),
                "result_path": result.display().to_string(),
            }),
        );
        let collect = Arc::new(Collect::default());
        let tee: Arc<dyn OutputSink> = Arc::new(Tee {
            sink,
            stderr: collect.clone(),
        });
        let outcome = self
            .run(&target.scope.python, &request, tee, timeout)
            .await?;
        match outcome {
            Outcome::Exited(0) => {
                let text = std::fs::read_to_string(&result).map_err(|e| {
                    ProviderError::Failed(format!("reading the modal exec result: {e}"))
                })?;
                text.trim().parse::<i32>().map_err(|e| {
                    ProviderError::Failed(format!("modal exec result `{}`: {e}", text.trim()))
                })
            }
            Outcome::TimedOut(limit) => Err(ProviderError::Failed(format!(
                "command timed out after {}",
                duration::format(limit)
            ))),
            other => {
                let (_, stderr) = collect.take();
                Err(failure("exec", other, &[], &stderr, Retry::Never))
            }
        }
    }
}

/// Copies every line to `sink`, and stderr also to `stderr` (for the error).
struct Tee {
    sink: Arc<dyn OutputSink>,
    stderr: Arc<Collect>,
}

impl OutputSink for Tee {
    fn line(&self, stream: Stream, line: &str) {
        if stream == Stream::Stderr {
            self.stderr.line(stream, line);
        }
        self.sink.line(stream, line);
    }
}

/// Which failures may be retried.
#[derive(Debug, Clone, Copy)]
enum Retry {
    Never,
    /// Only a rate-limit refusal: `create`, which may have made a sandbox.
    IfRefused,
    IfTransient,
}

/// The error a failed program run describes: its own text.
fn failure(
    op: &str,
    outcome: Outcome,
    stdout: &[String],
    stderr: &[String],
    retry: Retry,
) -> ProviderError {
    let text = if stderr.iter().all(|l| l.trim().is_empty()) {
        stdout.join("\n")
    } else {
        stderr.join("\n")
    };
    let text = truncate(text.trim(), ERROR_TEXT_MAX);
    let how = match outcome {
        Outcome::Exited(TRANSPORT_EXIT) => "failed".to_owned(),
        Outcome::Exited(code) => format!("exited {code}"),
        Outcome::TimedOut(limit) => format!("timed out after {}", duration::format(limit)),
    };
    let message = format!("modal {op} {how}: {text}");
    if outcome == Outcome::Exited(3) {
        return ProviderError::Config {
            message,
            hint: "install it (`pip install modal`) for the Python crabbox runs, or name another with `modal.python` or CRABBOX_MODAL_PYTHON".to_owned(),
        };
    }
    let lower = text.to_ascii_lowercase();
    let has = |needles: &[&str]| needles.iter().any(|n| lower.contains(n));
    if has(&[
        "token",
        "unauthenticated",
        "autherror",
        "unauthorized",
        "permission denied",
    ]) {
        return ProviderError::Credentials {
            message,
            hint: "set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET, or run `modal token new`".to_owned(),
        };
    }
    let refused = has(&["rate limit", "resource_exhausted", "too many requests"]);
    let transient = refused
        || matches!(outcome, Outcome::TimedOut(_))
        || has(&[
            "unavailable",
            "deadline exceeded",
            "connection reset",
            "connectionerror",
        ]);
    let retryable = match retry {
        Retry::Never => false,
        Retry::IfRefused => refused,
        Retry::IfTransient => transient,
    };
    if retryable {
        ProviderError::Retryable {
            message,
            retry_after: None,
        }
    } else {
        ProviderError::Failed(message)
    }
}

#[async_trait]
impl Provider for ModalProvider {
    fn name(&self) -> ProviderName {
        ProviderName::Modal
    }

    fn session<'a>(&'a self, lease: &'a Lease) -> Box<dyn Session + 'a> {
        Box::new(ModalSession {
            provider: self,
            lease,
        })
    }

    async fn list(&self, pond: &str) -> Result<Vec<Lease>, ProviderError> {
        let claims = pond_claims(&self.claims, ProviderName::Modal, pond, |c| {
            !c.cloud_id.is_empty()
        })
        .await?;
        let mut by_scope: BTreeMap<Scope, Vec<Claim>> = BTreeMap::new();
        for claim in claims {
            by_scope
                .entry(self.scope_of(&claim))
                .or_default()
                .push(claim);
        }
        let mut leases = Vec::new();
        for (scope, claims) in by_scope {
            let listed: BTreeSet<(String, String)> = self
                .list_scope(&scope)
                .await?
                .into_iter()
                .filter_map(|s| Some((s.id, s.tags.get(labels::LEASE)?.clone())))
                .collect();
            leases.extend(
                claims
                    .iter()
                    .filter(|c| listed.contains(&(c.cloud_id.clone(), c.lease_id.clone())))
                    .map(lease_from_claim),
            );
        }
        leases.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(leases)
    }

    async fn create(&self, request: &CreateRequest) -> Result<Lease, ProviderError> {
        let m = &request.member;
        let block: ModalBlock = crate::block_of(m)?;
        if let Some(p) = block.problems().into_iter().next() {
            return Err(ProviderError::Config {
                message: format!("member `{}`: {}", m.slug, p.message),
                hint: p.hint,
            });
        }
        let set = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let scope = Scope {
            python: set(&block.python).unwrap_or_else(|| self.default_python()),
            app: set(&block.app).unwrap_or_else(|| ModalBlock::DEFAULT_APP.to_owned()),
            environment: set(&block.environment),
        };
        let workdir = ModalBlock::checked_workdir(block.workdir.as_deref()).map_err(|p| {
            ProviderError::Config {
                message: p.message,
                hint: p.hint,
            }
        })?;
        let image = set(&block.image).unwrap_or_else(|| ModalBlock::DEFAULT_IMAGE.to_owned());
        let mut claim = pending_claim(&self.claims, &request.lease_id).await?;
        for (key, value) in [
            (CLAIM_APP, Some(&scope.app)),
            (CLAIM_ENVIRONMENT, scope.environment.as_ref()),
            (CLAIM_WORKDIR, Some(&workdir)),
            (CLAIM_PYTHON, set(&block.python).as_ref()),
        ] {
            if let Some(value) = value {
                claim.extra.insert(key.to_owned(), json!(value));
            }
        }
        claim.labels.clone_from(&request.labels);
        let mut claim = self.write_claim(&claim).await?;

        let tags = tags_of(&request.labels, &request.lease_id, &scope.app, &image);
        let create = Self::request(
            "create",
            &scope,
            json!({
                "image": image,
                "workdir": workdir,
                "timeout_seconds": timeout_of(m.ttl).as_secs(),
                "tags": tags,
                "gpu": set(&block.gpu).or_else(|| gpu_of_class(m.class).map(str::to_owned)),
                "secrets": block.secrets.iter().flatten().map(|s| s.trim()).collect::<Vec<_>>(),
            }),
        );
        let created: Listed = serde_json::from_value(
            self.call(&scope.python, &create, TRANSFER_TIMEOUT, Retry::IfRefused)
                .await?,
        )
        .map_err(|e| ProviderError::Failed(format!("modal create: unexpected result: {e}")))?;
        claim.cloud_id.clone_from(&created.id);
        match self.write_claim(&claim).await {
            Ok(written) => claim = written,
            Err(e) => {
                let cleanup = match self.terminate(&scope, &created.id).await {
                    Ok(()) => format!("sandbox {} terminated", created.id),
                    Err(t) => format!("terminating sandbox {} also failed: {t}", created.id),
                };
                return Err(ProviderError::Failed(format!("{e} ({cleanup})")));
            }
        }
        Ok(lease_from_claim(&claim))
    }

    async fn relabel(&self, lease: &Lease, labels: &Labels) -> Result<(), ProviderError> {
        let mut claim = self
            .claims
            .load(&lease.id)
            .await
            .map_err(ProviderError::state)?
            .ok_or_else(|| ProviderError::NotFound(lease.id.clone()))?;
        claim.labels.clone_from(labels);
        self.write_claim(&claim).await.map(drop)
    }

    async fn release(&self, lease: &Lease) -> Result<(), ProviderError> {
        let target = self.target(lease).await?;
        let ours = self
            .list_scope(&target.scope)
            .await?
            .into_iter()
            .any(|s| s.id == target.id && s.tags.get(labels::LEASE) == Some(&target.lease_id));
        if !ours {
            return Err(ProviderError::NotFound(format!(
                "Modal sandbox {} (lease {})",
                target.id, target.lease_id
            )));
        }
        self.terminate(&target.scope, &target.id).await
    }
}

/// A lease of this provider, reached through the program.
struct ModalSession<'a> {
    provider: &'a ModalProvider,
    lease: &'a Lease,
}

#[async_trait]
impl Session for ModalSession<'_> {
    async fn upload(&self, archive: &Path) -> Result<(), ProviderError> {
        let target = self.provider.target(self.lease).await?;
        let request = ModalProvider::request(
            "upload",
            &target.scope,
            json!({
                "sandbox_id": target.id,
                "workdir": target.workdir,
                "local_path": archive.display().to_string(),
                "remote_path": format!("/tmp/crabbox-sync-{}.tgz", random_hex(8)),
            }),
        );
        self.provider
            .call(
                &target.scope.python,
                &request,
                TRANSFER_TIMEOUT,
                Retry::Never,
            )
            .await
            .map(drop)
    }

    async fn exec(
        &self,
        request: &ExecRequest,
        sink: Arc<dyn OutputSink>,
    ) -> Result<i32, ProviderError> {
        let target = self.provider.target(self.lease).await?;
        self.provider
            .exec_script(
                &target,
                &request.command,
                &request.env,
                sink,
                request.timeout,
            )
            .await
    }

    async fn start_background(
        &self,
        _request: &ExecRequest,
        name: &str,
    ) -> Result<(), ProviderError> {
        Err(ProviderError::Config {
            message: format!(
                "background service `{name}`: provider modal has no ingress and runs each command to completion"
            ),
            hint: "run it to completion, or put the service on a provider with background support"
                .to_owned(),
        })
    }

    /// Nothing to stop: no service is ever started.
    async fn stop_background(&self) -> Result<(), ProviderError> {
        Ok(())
    }

    async fn probe(
        &self,
        probe: &Probe,
        env: &BTreeMap<String, String>,
    ) -> Result<bool, ProviderError> {
        let target = self.provider.target(self.lease).await?;
        let (script, env) = match probe {
            Probe::Command(command) => (probe_command_line(command)?, env.clone()),
            Probe::Tcp { host, port } => (
                bash_tcp_probe_script(probe_host(host.as_deref())?, *port),
                BTreeMap::new(),
            ),
            Probe::Http(url) => (
                http_probe_script(checked_text("probe URL", url)?, "sandbox"),
                BTreeMap::new(),
            ),
        };
        let code = self
            .provider
            .exec_script(
                &target,
                &script,
                &env,
                Arc::new(NullSink),
                Some(PROBE_TIMEOUT),
            )
            .await;
        match code {
            Ok(code) => Ok(code == 0),
            Err(ProviderError::Failed(m)) if m.starts_with("command timed out") => Ok(false),
            Err(e) => Err(e),
        }
    }
}

// ---- helpers ----------------------------------------------------------------

/// Crabbox's ten tags from the create's labels (the pond stays in the claim).
fn tags_of(labels: &Labels, lease_id: &str, app: &str, image: &str) -> BTreeMap<String, String> {
    let label = |k: &str| labels.get(k).map(ToString::to_string).unwrap_or_default();
    let mut tags = BTreeMap::new();
    tags.insert(labels::CRABBOX.to_owned(), "true".to_owned());
    tags.insert(labels::PROVIDER.to_owned(), "modal".to_owned());
    tags.insert(labels::LEASE.to_owned(), lease_id.to_owned());
    tags.insert(labels::SLUG.to_owned(), label(labels::SLUG));
    tags.insert(labels::STATE.to_owned(), "ready".to_owned());
    tags.insert(labels::KEEP.to_owned(), label(labels::KEEP));
    tags.insert(labels::EXPIRES_AT.to_owned(), label(labels::EXPIRES_AT));
    tags.insert("app".to_owned(), app.to_owned());
    tags.insert("image".to_owned(), image.to_owned());
    tags
}

/// The sandbox's timeout: the member's TTL, at most 24 h, at least a minute.
#[must_use]
pub fn timeout_of(ttl: Duration) -> Duration {
    ttl.clamp(Duration::from_secs(60), MAX_TIMEOUT)
}

/// The GPU a member's class asks for when its block names none: the two
/// largest classes get one (`A10G`, `H100`), the others run on CPU.
#[must_use]
pub fn gpu_of_class(class: Option<Class>) -> Option<&'static str> {
    match class? {
        Class::Large => Some("A10G"),
        Class::Beast => Some("H100"),
        _ => None,
    }
}

fn lease_from_claim(claim: &Claim) -> Lease {
    claim_backed::lease_from_claim(claim, ProviderName::Modal, Endpoint::default())
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the OS provides randomness");
    buf.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

fn kill_group(pgid: i32, signal: i32) {
    // SAFETY: killpg(2) only takes integers and touches no memory.
    unsafe {
        libc::killpg(pgid, signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeout_is_the_ttl_capped_at_a_day() {
        assert_eq!(timeout_of(Duration::from_secs(3600)).as_secs(), 3600);
        assert_eq!(timeout_of(Duration::from_secs(3 * 86_400)), MAX_TIMEOUT);
        assert_eq!(timeout_of(Duration::ZERO).as_secs(), 60);
    }

    #[test]
    fn tags_are_crabboxs_ten() {
        let mut labels = Labels::new();
        labels.insert("slug".into(), "gpu".into());
        labels.insert("pond".into(), "p".into());
        labels.insert("keep".into(), "false".into());
        let tags = tags_of(&labels, "cbx_0123456789ab", "crabbox", "python:3.13-slim");
        assert_eq!(tags.len(), 9);
        assert_eq!(tags["lease"], "cbx_0123456789ab");
        assert_eq!(tags["slug"], "gpu");
        assert!(!tags.contains_key("pond"), "the pond is in the claim only");
    }

    #[test]
    fn the_program_takes_its_request_on_stdin() {
        assert!(CLIENT_PROGRAM.contains("json.loads(sys.stdin.read())"));
        assert!(!CLIENT_PROGRAM.contains("sys.argv"));
        assert_eq!(gpu_of_class(Some(Class::Beast)), Some("H100"));
        assert_eq!(gpu_of_class(Some(Class::Small)), None);
    }
}
