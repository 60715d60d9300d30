//! What each step does, through the provider adapters. Steps share one
//! [`Context`]: the pond, the providers, and the current lease of every member
//! (new leases appear as their warmups finish).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::discover::remember_providers;
use crate::graph::{Step, StepKind};
use crate::progress::Reporter;
use crabbox_core::labels::{self, now_secs, state};
use crabbox_core::lease::Lease;
use crabbox_core::normalize::normalize_name;
use crabbox_core::provider::{OutputSink, ProviderError, Stream};
use crabbox_core::retry::with_retries;
use crabbox_exec::archive;
use crabbox_exec::session::ExecRequest;
use crabbox_providers::registry::Registry;
use crabbox_providers::tailnet::enroll::label::IPV4 as TAILSCALE_IPV4;
use crabbox_providers::{CreateRequest, Provider};
use crabbox_render::files::{OutputFile, output_files, write_outputs};
use crabbox_render::peers::{Peer, peer_env, peers_from_leases, resolve_refs};
use crabbox_spec::desired::{DesiredMember, Probe, ReadyCheck};
use crabbox_spec::member_labels::SpecHashes;
use crabbox_state::claims::{Claim, ClaimStore, SHARES_FIELD, claim_state, now_rfc3339};

/// Where rendered outputs go.
#[derive(Debug, Clone)]
pub struct OutputTarget {
    /// The directory (`~` expanded).
    pub dir: PathBuf,
    /// User templates: destination name and template text.
    pub templates: Vec<(String, String)>,
}

/// Everything steps share.
pub struct Context {
    /// Normalized pond name.
    pub pond: String,
    /// Provider adapters.
    pub registry: Registry,
    /// Local state directory.
    pub state_dir: PathBuf,
    /// The command's claim store.
    pub claims: ClaimStore,
    /// Desired members by slug.
    pub members: BTreeMap<String, DesiredMember>,
    /// The current lease of every member, by slug.
    pub leases: Mutex<BTreeMap<String, Lease>>,
    /// Directory whose files are synced (the repository root).
    pub sync_root: PathBuf,
    /// Rendered outputs, if this command writes them.
    pub outputs: Option<OutputTarget>,
    /// Progress.
    pub reporter: Arc<Reporter>,
    /// Upper bound for every ready check (`apply --wait-timeout`).
    pub wait_timeout: Option<Duration>,
    /// The slugs other leases hold, read once per command (see
    /// [`unique_slug`]).
    pub taken_slugs: tokio::sync::Mutex<TakenSlugs>,
    /// The tailnet ACL bootstrap's outcome, once per command (see
    /// [`crate::tailnet::bootstrap_acl`]).
    pub tailnet_acl: tokio::sync::OnceCell<Result<(), String>>,
}

/// The slugs leases hold, as far as this command has read them: every local
/// claim's (read by the first create), every crabbox resource's a provider
/// lists (read by that provider's first create), and the slugs this
/// command's own creates took. Reading them once instead of per create
/// keeps an apply of `N` members from reading `N` claims and listing the
/// whole account `N` times.
#[derive(Debug, Default)]
pub struct TakenSlugs {
    /// Normalized slug → the leases holding it (`None`: a provider's
    /// resource, lease unknown).
    holders: BTreeMap<String, BTreeSet<Option<String>>>,
    claims_read: bool,
    listed: BTreeSet<crabbox_core::provider::ProviderName>,
}

impl TakenSlugs {
    fn hold(&mut self, slug: &str, lease: Option<&str>) {
        self.holders
            .entry(normalize_name(slug))
            .or_default()
            .insert(lease.map(str::to_owned));
    }

    /// Held by anything but `lease_id`.
    fn taken(&self, slug: &str, lease_id: &str) -> bool {
        self.holders
            .get(slug)
            .is_some_and(|h| h.iter().any(|l| l.as_deref() != Some(lease_id)))
    }
}

/// Why a step failed, and what to do.
#[derive(Debug, Clone)]
pub struct StepError {
    /// What happened.
    pub message: String,
}

impl From<ProviderError> for StepError {
    fn from(e: ProviderError) -> Self {
        let message = match e {
            ProviderError::Config { message, hint }
            | ProviderError::Credentials { message, hint } => format!("{message} (hint: {hint})"),
            other => other.to_string(),
        };
        Self { message }
    }
}

pub(crate) fn fail(message: impl Into<String>) -> StepError {
    StepError {
        message: message.into(),
    }
}

impl Context {
    pub(crate) fn member(&self, slug: &str) -> Result<&DesiredMember, StepError> {
        self.members
            .get(slug)
            .ok_or_else(|| fail(format!("`{slug}` is not in the spec")))
    }

    fn lease(&self, slug: &str) -> Result<Lease, StepError> {
        self.leases
            .lock()
            .expect("lease map lock")
            .get(slug)
            .cloned()
            .ok_or_else(|| fail(format!("`{slug}` has no lease")))
    }

    pub(crate) fn set_lease(&self, lease: Lease) {
        self.leases
            .lock()
            .expect("lease map lock")
            .insert(lease.slug().to_owned(), lease);
    }

    pub(crate) fn provider(
        &self,
        lease_or_member: crabbox_core::provider::ProviderName,
    ) -> Result<Arc<dyn Provider>, StepError> {
        Ok(self.registry.get(lease_or_member)?)
    }

    /// The pond's peers as they are now.
    pub fn peers(&self) -> Vec<Peer> {
        let leases: Vec<Lease> = self
            .leases
            .lock()
            .expect("lease map lock")
            .values()
            .cloned()
            .collect();
        let registry = self.registry.clone();
        peers_from_leases(&self.pond, &leases, |p| registry.features(p))
    }

    /// The environment every command on `slug` sees: peers, pond, member env
    /// (with `{{peers.*}}` resolved) and `extra`.
    fn env_for(
        &self,
        slug: &str,
        extra: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, StepError> {
        let m = self.member(slug)?;
        let peers = self.peers();
        let mut env = peer_env(&self.pond, &peers);
        env.insert("CRABBOX_POND".into(), self.pond.clone());
        env.insert("CRABBOX_SLUG".into(), slug.to_owned());
        // Named in the spec, so passed on; the member's own env still wins.
        for name in &m.pass_env {
            if let Ok(value) = std::env::var(name) {
                env.insert(name.clone(), value);
            }
        }
        for (k, v) in m.env.iter().chain(extra) {
            let resolved = resolve_refs(v, &peers).map_err(|e| {
                fail(format!("env {k} of `{slug}`: {e}; if it names a member, add it to `depends_on` so it exists first"))
            })?;
            env.insert(k.clone(), resolved);
        }
        Ok(env)
    }

    async fn taint(&self, slug: &str, failure: &str) {
        let Ok(lease) = self.lease(slug) else { return };
        let Ok(provider) = self.provider(lease.provider) else {
            return;
        };
        let mut labels = lease.labels.clone();
        labels.insert(labels::STATE.into(), state::FAILED.into());
        labels.insert(labels::FAILURE.into(), labels::sanitize(failure));
        if with_retries(|| provider.relabel(&lease, &labels))
            .await
            .is_ok()
        {
            self.set_lease(Lease { labels, ..lease });
        }
    }
}

/// Forwards a member's command output to the reporter, prefixed with its slug.
struct Prefixed {
    slug: String,
    reporter: Arc<Reporter>,
}

impl OutputSink for Prefixed {
    fn line(&self, stream: Stream, line: &str) {
        self.reporter.output(&self.slug, stream, line);
    }
}

/// Runs one step; returns a detail for the progress line (`id=cbx_…`).
pub async fn run(ctx: &Context, step: &Step) -> Result<String, StepError> {
    let slug = step.slug.clone().unwrap_or_default();
    match &step.kind {
        StepKind::Warmup => warmup(ctx, &slug).await,
        StepKind::Relabel => {
            let m = ctx.member(&slug)?;
            let lease = ctx.lease(&slug)?;
            guard(ctx, &lease)?;
            let labels = crabbox_spec::member_labels::for_update(&lease.labels, m, now_secs());
            let provider = ctx.provider(lease.provider)?;
            with_retries(|| provider.relabel(&lease, &labels)).await?;
            update_claim(
                ctx,
                &Lease {
                    labels: labels.clone(),
                    ..lease.clone()
                },
            )
            .await?;
            ctx.set_lease(Lease {
                labels,
                ..lease.clone()
            });
            Ok(format!("id={}", lease.id))
        }
        StepKind::Adopt(rerun) => {
            let m = ctx.member(&slug)?;
            let lease = ctx.lease(&slug)?;
            guard(ctx, &lease)?;
            let labels = crabbox_plan::adopt::labels(&lease.labels, m, *rerun, now_secs());
            let provider = ctx.provider(lease.provider)?;
            with_retries(|| provider.relabel(&lease, &labels)).await?;
            let lease = Lease { labels, ..lease };
            // Crabbox's claim (or, for a lease made on another machine, a
            // new one) now records the lease as this pond's member. The
            // claim knows how Crabbox reaches the lease (its bootstrap port,
            // e.g. 2222), which our listing only guesses for a lease we did
            // not make: that endpoint stays in the claim.
            let mut recorded = lease.clone();
            let stored = ctx
                .claims
                .load(&lease.id)
                .await
                .map_err(|e| fail(format!("reading the claim of {}: {e}", lease.id)))?;
            if let Some(claim) = stored {
                if claim.ssh_port != 0 {
                    recorded.endpoint.ssh_port = Some(claim.ssh_port);
                }
                if !claim.ssh_host.is_empty() {
                    recorded.endpoint.host = Some(claim.ssh_host);
                }
            }
            update_claim(ctx, &recorded).await?;
            let id = lease.id.clone();
            ctx.set_lease(lease);
            Ok(format!("id={id}"))
        }
        StepKind::StopServices => {
            let lease = ctx.lease(&slug)?;
            guard(ctx, &lease)?;
            ctx.provider(lease.provider)?
                .session(&lease)
                .stop_background()
                .await?;
            Ok(String::new())
        }
        StepKind::Sync => sync(ctx, &slug).await,
        StepKind::Setup => setup(ctx, &slug).await,
        StepKind::Ready => ready(ctx, &slug).await,
        StepKind::Share => share(ctx, &slug).await,
        StepKind::Finalize => {
            let m = ctx.member(&slug)?;
            let lease = ctx.lease(&slug)?;
            let mut labels = crabbox_spec::member_labels::for_update(&lease.labels, m, now_secs());
            labels.insert(labels::STATE.into(), state::READY.into());
            labels.insert(labels::POND_SETUP.into(), SpecHashes::of(m).setup);
            labels.remove(labels::FAILURE);
            let provider = ctx.provider(lease.provider)?;
            with_retries(|| provider.relabel(&lease, &labels)).await?;
            let lease = Lease { labels, ..lease };
            // What ran, for the next plan's setup diff.
            let ran = crabbox_plan::commands::lines(m, crabbox_plan::commands::Show::default());
            update_claim_recording(ctx, &lease, Some(ran)).await?;
            ctx.set_lease(lease);
            Ok(String::new())
        }
        StepKind::Release(lease) => release(ctx, lease).await,
        StepKind::ForgetClaim(id) => {
            ctx.claims
                .remove(id)
                .await
                .map_err(|e| fail(format!("removing claim {id}: {e}")))?;
            Ok(id.clone())
        }
        StepKind::Render => render(ctx),
    }
}

/// Refuses to touch anything that does not carry our markers for this pond.
fn guard(ctx: &Context, lease: &Lease) -> Result<(), StepError> {
    if lease.is_ours(&ctx.pond) {
        Ok(())
    } else {
        Err(fail(format!(
            "refusing to modify {} resource {}: it does not carry crabbox=true and pond={}",
            lease.provider, lease.cloud_id, ctx.pond
        )))
    }
}

async fn warmup(ctx: &Context, slug: &str) -> Result<String, StepError> {
    let m = ctx.member(slug)?;
    let provider = ctx.provider(m.provider)?;
    let lease_id = provider.lease_id(&ctx.pond, m).await?;
    let mut labels = crabbox_spec::member_labels::for_create(&ctx.pond, &lease_id, m, now_secs());
    let unique = unique_slug(ctx, provider.as_ref(), slug, &lease_id).await?;
    if unique != slug {
        labels.insert(labels::SLUG.into(), unique.as_str().into());
        labels.insert(labels::POND_MEMBER.into(), slug.into());
    }
    // The claim comes first: a crash between it and the create is found next time.
    let pending = Claim {
        lease_id: lease_id.clone(),
        slug: unique,
        provider: m.provider.as_str().to_owned(),
        pond: ctx.pond.clone(),
        repo_root: ctx.sync_root.display().to_string(),
        claimed_at: now_rfc3339(),
        last_used_at: now_rfc3339(),
        idle_timeout_seconds: m.idle_timeout.as_secs(),
        labels: labels.clone(),
        state: claim_state::PENDING.to_owned(),
        ..Claim::default()
    };
    ctx.claims
        .write(&pending)
        .await
        .map_err(|e| fail(format!("writing claim: {e}")))?;
    remember_providers(&ctx.state_dir, &ctx.pond, &[m.provider])
        .map_err(|e| fail(format!("writing the pond record: {e}")))?;
    if m.tailscale {
        crate::tailnet::bootstrap_acl(ctx).await?;
    }
    let request = CreateRequest {
        lease_id: lease_id.clone(),
        pond: ctx.pond.clone(),
        member: m.clone(),
        labels,
    };
    let lease = match with_retries(|| provider.create(&request)).await {
        Ok(lease) => lease,
        Err(e) => {
            let _ = ctx.claims.remove(&lease_id).await;
            return Err(e.into());
        }
    };
    update_claim(ctx, &lease).await?;
    let id = lease.id.clone();
    ctx.set_lease(lease.clone());
    let lease = crate::tailnet::join(ctx, slug, lease).await?;
    let detail = match lease.label(TAILSCALE_IPV4) {
        Some(ip) => format!("id={id} tailnet={ip}"),
        None => format!("id={id}"),
    };
    ctx.set_lease(lease);
    Ok(detail)
}

/// The `slug` label of a new lease of member `slug`: the member's slug when
/// no other lease has it, else Crabbox's suffixed form (`api-1a2b`). Taken
/// are the slugs of every local claim of another lease (any pond, any
/// provider) and of every crabbox resource the provider lists, as in
/// Crabbox's `allocateDirectLeaseSlug` (internal/cli/slug.go:103-145): with
/// two ponds both holding `api`, Crabbox's `run --id api` would be ambiguous.
///
/// The claims and listings are read once per command ([`TakenSlugs`]);
/// concurrent creates wait for that one read, and each slug allocated is
/// held at once, so two creates of this command never get the same one.
async fn unique_slug(
    ctx: &Context,
    provider: &dyn Provider,
    slug: &str,
    lease_id: &str,
) -> Result<String, StepError> {
    let mut taken = ctx.taken_slugs.lock().await;
    if !taken.claims_read {
        let (claims, _) = ctx
            .claims
            .load_all()
            .await
            .map_err(|e| fail(format!("reading the claims to keep slugs unique: {e}")))?;
        for c in &claims {
            taken.hold(&c.slug, Some(&c.lease_id));
        }
        taken.claims_read = true;
    }
    if !taken.listed.contains(&provider.name()) {
        for s in with_retries(|| provider.slugs_in_use()).await? {
            taken.hold(&s, None);
        }
        taken.listed.insert(provider.name());
    }
    let unique = crabbox_core::slug::allocate(slug, lease_id, |s| taken.taken(s, lease_id))
        .ok_or_else(|| {
            fail(format!(
                "could not allocate a unique lease slug for {lease_id}: `{slug}` and its 21 suffixed forms are taken by other leases"
            ))
        })?;
    taken.hold(&unique, Some(lease_id));
    Ok(unique)
}

/// Records what is now true of a lease in its claim. A claim that cannot be
/// read or written fails the step: the lease exists, and a claim left
/// `pending` or stale would misdescribe it to the next run.
pub(crate) async fn update_claim(ctx: &Context, lease: &Lease) -> Result<(), StepError> {
    update_claim_recording(ctx, lease, None).await
}

/// [`update_claim`], recording `ran` (the lines of
/// `crabbox_plan::commands::lines`, env values from the environment hidden)
/// as what the lease last ran when given.
async fn update_claim_recording(
    ctx: &Context,
    lease: &Lease,
    ran: Option<Vec<String>>,
) -> Result<(), StepError> {
    let stored = ctx
        .claims
        .load(&lease.id)
        .await
        .map_err(|e| fail(format!("reading the claim of {}: {e}", lease.id)))?;
    let mut claim = stored.unwrap_or_else(|| Claim {
        lease_id: lease.id.clone(),
        // Crabbox's release wants the claim's slug to be the label's
        // (hetzner/backend.go:422-449).
        slug: lease.crabbox_slug().to_owned(),
        provider: lease.provider.as_str().to_owned(),
        pond: ctx.pond.clone(),
        claimed_at: now_rfc3339(),
        ..Claim::default()
    });
    claim.cloud_id.clone_from(&lease.cloud_id);
    claim.labels.clone_from(&lease.labels);
    claim.state = claim_state::ACTIVE.to_owned();
    claim.last_used_at = now_rfc3339();
    claim.ssh_host = lease.endpoint.host.clone().unwrap_or_default();
    claim.ssh_port = lease.endpoint.ssh_port.unwrap_or(0);
    claim.bridge_url = lease.endpoint.url.clone().unwrap_or_default();
    for (field, value) in crate::tailnet::claim_fields(lease) {
        claim.extra.insert(field.to_owned(), value.into());
    }
    if lease.endpoint.shares.is_empty() {
        claim.extra.remove(SHARES_FIELD);
    } else if let Ok(shares) = serde_json::to_value(&lease.endpoint.shares) {
        claim.extra.insert(SHARES_FIELD.to_owned(), shares);
    }
    if let Some(ran) = ran {
        claim
            .extra
            .insert(crabbox_plan::commands::CLAIM_FIELD.to_owned(), ran.into());
    }
    ctx.claims
        .write(&claim)
        .await
        .map_err(|e| fail(format!("writing the claim of {}: {e}", lease.id)))?;
    Ok(())
}

async fn sync(ctx: &Context, slug: &str) -> Result<String, StepError> {
    let m = ctx.member(slug)?;
    let lease = ctx.lease(slug)?;
    let root = ctx.sync_root.clone();
    let exclude = m.sync.exclude.clone();
    let max = m.sync.max_bytes;
    let skip = crate::reconcile::own_dirs(
        &ctx.state_dir,
        ctx.outputs.as_ref().map(|o| o.dir.as_path()),
    );
    let built =
        tokio::task::spawn_blocking(move || archive::build_skipping(&root, &skip, &exclude, max))
            .await
            .map_err(|e| fail(format!("sync task: {e}")))?
            .map_err(|e| fail(e.to_string()))?;
    ctx.provider(lease.provider)?
        .session(&lease)
        .upload(&built.path)
        .await?;
    Ok(format!(
        "{} files, {} KiB",
        built.files,
        built.bytes.div_ceil(1024)
    ))
}

async fn setup(ctx: &Context, slug: &str) -> Result<String, StepError> {
    let m = ctx.member(slug)?;
    // A join an interrupted apply left unfinished resumes here (at once
    // when the address is recorded or the lease never asked).
    let lease = crate::tailnet::join(ctx, slug, ctx.lease(slug)?).await?;
    ctx.set_lease(lease.clone());
    let provider = ctx.provider(lease.provider)?;
    let sink: Arc<dyn OutputSink> = Arc::new(Prefixed {
        slug: slug.to_owned(),
        reporter: ctx.reporter.clone(),
    });
    for (i, step) in m.setup.iter().enumerate() {
        let n = i + 1;
        let env = match ctx.env_for(slug, &step.env) {
            Ok(env) => env,
            Err(e) => {
                ctx.taint(slug, &format!("setup_step_{n}_env")).await;
                return Err(e);
            }
        };
        let session = provider.session(&lease);
        let request = ExecRequest {
            command: step.run.clone(),
            env,
            timeout: step.timeout,
        };
        if step.background {
            if let Err(e) = session
                .start_background(&request, &format!("setup-{n}"))
                .await
            {
                ctx.taint(slug, &format!("setup_step_{n}_background")).await;
                return Err(fail(format!(
                    "setup step {n} (`{}`) did not start: {e}",
                    step.run
                )));
            }
        } else {
            // The output is also kept on the lease, for `crabbox logs`.
            let header = format!(
                "--- {} setup step {n}/{}: $ {}",
                now_rfc3339(),
                m.setup.len(),
                step.run
            );
            match session.exec_logged(&request, sink.clone(), &header).await {
                Ok(0) => {}
                Ok(code) => {
                    ctx.taint(slug, &format!("setup_step_{n}_exit_{code}"))
                        .await;
                    return Err(fail(format!(
                        "setup step {n} (`{}`) exited with {code}",
                        step.run
                    )));
                }
                Err(e) => {
                    ctx.taint(slug, &format!("setup_step_{n}_error")).await;
                    return Err(fail(format!("setup step {n} (`{}`): {e}", step.run)));
                }
            }
        }
    }
    Ok(format!(
        "{} step{}",
        m.setup.len(),
        if m.setup.len() == 1 { "" } else { "s" }
    ))
}

async fn ready(ctx: &Context, slug: &str) -> Result<String, StepError> {
    let m = ctx.member(slug)?;
    let Some(check) = &m.ready else {
        return Ok("no ready check".to_owned());
    };
    let provider = ctx.provider(ctx.lease(slug)?.provider)?;
    let env = ctx.env_for(slug, &BTreeMap::new())?;
    let started = Instant::now();
    let limit = ctx
        .wait_timeout
        .map_or(check.timeout, |w| w.min(check.timeout));
    let what = describe_check(check);
    let mut last_error = String::new();
    loop {
        // The lease is read afresh: a join may have recorded its address.
        let lease = ctx.lease(slug)?;
        let probed = match &check.probe {
            Some(probe) => provider.session(&lease).probe(probe, &env).await,
            None => Ok(true),
        };
        let passed = match probed {
            Ok(true) if check.tailnet => crate::tailnet::on_tailnet(ctx, &lease)
                .await
                .inspect_err(|e| last_error = format!(": {e}"))
                .unwrap_or(false),
            Ok(passed) => passed,
            Err(e) => {
                last_error = format!(": {e}");
                false
            }
        };
        if passed {
            return Ok(what);
        }
        if started.elapsed() >= limit {
            ctx.taint(slug, "ready_timeout").await;
            return Err(fail(format!(
                "not ready after {} ({what}){last_error}",
                crabbox_core::duration::format(limit),
            )));
        }
        tokio::time::sleep(
            check
                .interval
                .min(check.timeout.saturating_sub(started.elapsed()))
                .max(Duration::from_millis(10)),
        )
        .await;
    }
}

/// Publishes every exposed port (reusing live shares) for the lease's ttl.
async fn share(ctx: &Context, slug: &str) -> Result<String, StepError> {
    let m = ctx.member(slug)?;
    let mut lease = ctx.lease(slug)?;
    let provider = ctx.provider(lease.provider)?;
    let mut shares = Vec::new();
    for &port in &m.expose {
        shares.push(
            with_retries(|| async { provider.bridge()?.share(&lease, port, m.ttl).await }).await?,
        );
    }
    lease.endpoint.url = shares.first().map(|s| s.url.clone());
    lease.endpoint.shares = shares;
    update_claim(ctx, &lease).await?;
    let urls = lease
        .endpoint
        .shares
        .iter()
        .map(|s| format!("{}={}", s.port, s.url))
        .collect::<Vec<_>>()
        .join(" ");
    ctx.set_lease(lease);
    Ok(urls)
}

/// What a ready check waits for (`tcp 5432`, `tailnet`, `http … and tailnet`).
fn describe_check(check: &ReadyCheck) -> String {
    let probe = check.probe.as_ref().map(|p| match p {
        Probe::Tcp { host: None, port } => format!("tcp {port}"),
        Probe::Tcp {
            host: Some(h),
            port,
        } => format!("tcp {h}:{port}"),
        Probe::Http(url) => format!("http {url}"),
        Probe::Command(c) => format!("command `{c}`"),
    });
    match (probe, check.tailnet) {
        (Some(p), true) => format!("{p} and tailnet"),
        (Some(p), false) => p,
        (None, _) => "tailnet".to_owned(),
    }
}

async fn release(ctx: &Context, lease: &Lease) -> Result<String, StepError> {
    guard(ctx, lease)?;
    let provider = ctx.provider(lease.provider)?;
    crate::tailnet::leave(ctx, lease).await;
    match with_retries(|| provider.release(lease)).await {
        Ok(()) | Err(ProviderError::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    ctx.claims
        .remove(&lease.id)
        .await
        .map_err(|e| fail(format!("removing claim {}: {e}", lease.id)))?;
    let mut map = ctx.leases.lock().expect("lease map lock");
    if map.get(lease.slug()).is_some_and(|l| l.id == lease.id) {
        map.remove(lease.slug());
    }
    Ok(format!("id={}", lease.id))
}

/// The output files for the pond as it is now.
///
/// # Errors
/// A template that does not render.
pub fn current_output_files(ctx: &Context) -> Result<Vec<OutputFile>, StepError> {
    let Some(target) = &ctx.outputs else {
        return Ok(Vec::new());
    };
    output_files(&ctx.pond, &ctx.peers(), &target.templates).map_err(fail)
}

/// While the SSH mesh owns `hosts` and `env` (forwarded addresses, from
/// `pond connect` until `pond disconnect`), rendering leaves them alone.
#[must_use]
pub fn without_mesh_files(dir: &std::path::Path, files: Vec<OutputFile>) -> Vec<OutputFile> {
    if crabbox_exec::mesh::owns_hosts_and_env(dir) {
        files
            .into_iter()
            .filter(|f| f.name != "hosts" && f.name != "env")
            .collect()
    } else {
        files
    }
}

fn render(ctx: &Context) -> Result<String, StepError> {
    let Some(target) = &ctx.outputs else {
        return Ok(String::new());
    };
    let files = without_mesh_files(&target.dir, current_output_files(ctx)?);
    write_outputs(&target.dir, &files)
        .map_err(|e| fail(format!("writing outputs to {}: {e}", target.dir.display())))?;
    crabbox_render::written::remember(&ctx.state_dir, &ctx.pond, &target.dir, &files)
        .map_err(|e| fail(format!("recording the outputs written: {e}")))?;
    Ok(target.dir.display().to_string())
}

/// Removes what earlier runs of the pond left behind on `providers` when
/// they died halfway (see [`Provider::sweep`]), naming each thing removed;
/// what could not be removed is named in a warning (the next apply or
/// destroy tries again), so a leftover never fails the run it was found by.
pub async fn sweep_leftovers(
    registry: &Registry,
    pond: &str,
    providers: &[crabbox_core::provider::ProviderName],
    reporter: &Reporter,
) {
    let sweeps = providers.iter().filter_map(|&name| {
        let provider = registry.get(name).ok()?;
        Some(async move { (name, provider.sweep(pond).await) })
    });
    for (name, swept) in futures_util::future::join_all(sweeps).await {
        match swept {
            Ok(removed) => {
                for thing in removed {
                    reporter.message("info", &format!("Removed {thing}, left by an earlier run"));
                }
            }
            Err(e) => reporter.message(
                "warning",
                &format!(
                    "warning: {name}: {e}; the next apply or destroy of pond `{pond}` tries again"
                ),
            ),
        }
    }
}
