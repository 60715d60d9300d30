//! The pond benchmark: crabbox against the fake Hetzner Cloud API
//! (`tests/it/fake_hetzner.rs`) with a per-request latency, a boot time and
//! optional rate limits, for ponds of 10, 100 and 1,000 members. Every wall
//! time is printed next to its ideal — the critical path of the fake's
//! latencies at that parallelism, as if crabbox cost nothing — and the ratio.
//!
//! ```text
//! cargo bench --bench pond                 # 10, 100, 1,000 members, then the targets
//! cargo bench --bench pond -- --quick      # 10 and 100 members
//! cargo bench --bench pond -- --full       # also 1,000 `warmup`s one after another
//! ```
//!
//! Options: `--members 10,100`, `--latency-ms 50`, `--boot-ms 300`,
//! `--max-in-flight N` (the fake serves N requests at once, the rest queue),
//! `--rate-limit R[/BURST]` (the fake answers 429 beyond R requests a
//! second), `--repeats 5` (runs of each discover + plan; the median is shown),
//! `--work-dir DIR` (where the ponds' state directories go; default: the
//! system's temporary directory), `--targets-only`.
//!
//! This one binary plays three parts, so that nothing but crabbox is measured:
//! - the orchestrator (no flag) runs the scenarios and prints the tables;
//! - `--serve-fake` is the fake API in its own process, driven over stdin:
//!   its CPU time and memory never count as crabbox's;
//! - `--worker JOB` is one crabbox operation in a fresh process, like one
//!   command-line run. It reports the operation's wall time, its CPU time
//!   (`getrusage`: `RUSAGE_SELF` for the process, `RUSAGE_THREAD` for the
//!   planning on the main thread, `RUSAGE_CHILDREN` for any child process it
//!   runs) and the process's peak resident memory (`ru_maxrss`).

#[path = "../tests/it/fake_hetzner.rs"]
#[allow(dead_code)] // the bench drives the fake; the test helpers stay unused
mod fake_hetzner;
#[path = "../tests/it/fake_http.rs"]
#[allow(dead_code)] // the fake uses part of the harness; its tests are not built here
mod fake_http;
#[path = "../tests/it/sshd.rs"]
#[allow(dead_code)] // the bench needs the server, not its test helpers
mod sshd;

use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crabbox_state::claims::ClaimStore;

/// Hetzner's page size, which crabbox asks for.
const PER_PAGE: usize = 50;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--serve-fake") => serve_fake(args.get(1).map(PathBuf::from)),
        Some("--worker") => worker(args.get(1).expect("--worker JOB")),
        _ => orchestrate(&Options::parse(&args)),
    }
}

// ---- measuring ----

/// CPU times and peak memory of this process, from `getrusage`.
#[derive(Debug, Clone, Copy)]
struct Usage {
    /// Every thread of this process.
    process: Duration,
    /// The calling thread only.
    thread: Duration,
    /// Terminated, waited-for children (none since keys are made in-process).
    children: Duration,
    /// Peak resident set size, KiB.
    max_rss_kib: i64,
}

fn rusage(who: libc::c_int) -> libc::rusage {
    // SAFETY: getrusage fills the struct it is given; all-zero is a valid rusage.
    unsafe {
        let mut r: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &raw mut r);
        r
    }
}

fn cpu(r: &libc::rusage) -> Duration {
    let tv = |t: libc::timeval| {
        Duration::new(
            u64::try_from(t.tv_sec).unwrap_or(0),
            u32::try_from(t.tv_usec).unwrap_or(0) * 1000,
        )
    };
    tv(r.ru_utime) + tv(r.ru_stime)
}

impl Usage {
    fn now() -> Self {
        let process = rusage(libc::RUSAGE_SELF);
        Self {
            process: cpu(&process),
            thread: cpu(&rusage(libc::RUSAGE_THREAD)),
            children: cpu(&rusage(libc::RUSAGE_CHILDREN)),
            max_rss_kib: process.ru_maxrss,
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ---- the fake, in its own process ----

/// `--serve-fake [AUTHORIZED_KEYS]`: starts the fake (its servers are
/// 127.0.0.1; the keys they are created with are appended to the bench
/// sshd's `authorized_keys`), prints `READY <base url>`, then answers one
/// line per command line on stdin.
fn serve_fake(authorized_keys: Option<PathBuf>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the fake's runtime");
    let fake = rt.block_on(fake_hetzner::start(fake_hetzner::FakeConfig {
        authorized_keys,
        ..fake_hetzner::FakeConfig::default()
    }));
    let mut out = std::io::stdout();
    writeln!(out, "READY {}", fake.base_url).expect("stdout");
    out.flush().expect("stdout");
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let reply = fake_command(&fake.handle, line.trim());
        writeln!(out, "{reply}").expect("stdout");
        out.flush().expect("stdout");
        if line.trim() == "quit" {
            break;
        }
    }
}

fn fake_command(h: &fake_hetzner::FakeHandle, line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    let millis = |w: &str| Duration::from_millis(w.parse().expect("milliseconds"));
    match words.as_slice() {
        ["latency", v] => h.set_latency(millis(v)),
        ["boot", v] => h.set_boot_delay(millis(v)),
        ["limit", "none"] => h.set_max_in_flight(None),
        ["limit", n] => h.set_max_in_flight(Some(n.parse().expect("a count"))),
        ["rate", "none"] => h.set_rate_limit(None),
        ["rate", r, burst] => h.set_rate_limit(Some((
            r.parse().expect("requests a second"),
            burst.parse().expect("a burst"),
        ))),
        ["clear"] => h.clear_requests(),
        ["stats"] => {
            let requests = h.requests();
            // Lookups of a key (by name or fingerprint), not the sweep's
            // listing of the pond's keys by label.
            let key_lookups = requests
                .iter()
                .filter(|r| {
                    r.method == "GET"
                        && r.path.trim_end_matches('/') == "/v1/ssh_keys"
                        && r.param("label_selector").is_none()
                })
                .count();
            return json!({
                "servers": h.servers().len(),
                "keys": h.ssh_keys().len(),
                "requests": requests.len(),
                "key_lookups": key_lookups,
                "max_in_flight": h.max_in_flight(),
            })
            .to_string();
        }
        ["quit"] => {}
        _ => return format!("ERR unknown command `{line}`"),
    }
    "OK".to_owned()
}

/// The fake's process, seen from the orchestrator.
struct Fake {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    base_url: String,
}

impl Fake {
    fn start(authorized_keys: &Path) -> Self {
        let mut child = Command::new(std::env::current_exe().expect("own path"))
            .arg("--serve-fake")
            .arg(authorized_keys)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the fake API");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("the fake answers");
        let base_url = line
            .trim()
            .strip_prefix("READY ")
            .unwrap_or_else(|| panic!("the fake said `{line}`"))
            .to_owned();
        Self {
            child,
            stdin,
            stdout,
            base_url,
        }
    }

    fn send(&mut self, command: &str) -> String {
        writeln!(self.stdin, "{command}").expect("to the fake");
        self.stdin.flush().expect("to the fake");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("from the fake");
        assert!(!line.starts_with("ERR"), "{line}");
        line.trim().to_owned()
    }

    fn configure(&mut self, fx: &Fx) {
        self.send(&format!("latency {}", fx.latency.as_millis()));
        self.send(&format!("boot {}", fx.boot.as_millis()));
        match fx.max_in_flight {
            Some(n) => self.send(&format!("limit {n}")),
            None => self.send("limit none"),
        };
        match fx.rate {
            Some((r, burst)) => self.send(&format!("rate {r} {burst}")),
            None => self.send("rate none"),
        };
    }

    fn stats(&mut self) -> Value {
        serde_json::from_str(&self.send("stats")).expect("stats JSON")
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        let _ = self.child.wait();
    }
}

// ---- one crabbox operation, in its own process ----

/// What a worker does.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Job {
    /// `plan`, `apply`, `destroy`, `warmup-seq`, `warmup-all`,
    /// `claim-files` (the floor of reading the claims, see [`read_claim_files`]).
    kind: String,
    base_url: String,
    state_dir: PathBuf,
    spec: PathBuf,
    parallelism: usize,
    /// Leases the pond has before (`plan`, `destroy`) or after (`apply`, `warmup-*`).
    members: usize,
    /// Where work roots go on the bench sshd, when creates log in over SSH
    /// (the spec names the login); `None`: creates return once the server runs.
    #[serde(default)]
    ssh_work_base: Option<String>,
}

fn hetzner(job: &Job) -> crabbox_providers::registry::Registry {
    use crabbox_providers::Provider;
    use crabbox_providers::hetzner::HetznerProvider;
    // As `crabbox` builds it from HCLOUD_TOKEN/HCLOUD_ENDPOINT.
    let provider = HetznerProvider::new(&job.base_url, fake_hetzner::TOKEN, &job.state_dir)
        .with_testboxes_dir(&job.state_dir.join("testboxes"));
    let provider = match &job.ssh_work_base {
        // Every server is the bench's sshd, reached as a real one is.
        Some(base) => provider.with_work_base(base),
        // Creates return once the server runs.
        None => provider.with_ssh_bootstrap(false),
    };
    crabbox_providers::registry::Registry::with(vec![Arc::new(provider) as Arc<dyn Provider>])
}

fn worker(arg: &str) {
    // As `crabbox` starts every command.
    crabbox::allocator::tune_for_a_command();
    let job: Job = serde_json::from_str(arg).expect("a job");
    let loaded = crabbox_spec::load::load_path(
        &job.spec,
        &crabbox_spec::interpolate::Variables::fixed(vec![]),
    )
    .expect("read the spec");
    let desired = loaded
        .pond
        .unwrap_or_else(|| panic!("invalid spec: {:?}", loaded.diagnostics));
    // The runtime `crabbox` runs on.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let result = match job.kind.as_str() {
        "plan" => run_plan(&job, &desired, &rt),
        "apply" => run_apply(&job, &desired, &rt),
        "destroy" => run_destroy(&job, &desired, &rt),
        "warmup-seq" | "warmup-all" => run_warmups(&job, &desired, &rt),
        "claim-files" => read_claim_files(&job),
        other => panic!("unknown job kind {other}"),
    };
    println!("RESULT {result}");
}

/// The floor under discovery's CPU on this machine: listing the claims
/// directory and reading every claim file in it, as discovery does
/// (relative to the directory held open), with nothing parsed. Crabbox
/// keeps a file per lease — a format both tools share — so a pond of
/// 10,000 members costs the kernel 10,000 opens and reads at every plan.
fn read_claim_files(job: &Job) -> Value {
    let dir = job.state_dir.join("claims");
    let u0 = Usage::now();
    let files = crabbox_fs::dir_files::DirFiles::open(&dir).expect("the claims directory");
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut read = 0_usize;
    for entry in std::fs::read_dir(&dir).expect("list the claims") {
        let name = entry.expect("a claim").file_name();
        files
            .read_into(Path::new(&name), &mut buf)
            .expect("read a claim");
        read += 1;
    }
    let u1 = Usage::now();
    assert_eq!(read, job.members, "one claim per member");
    json!({ "cpu_ms": ms(u1.process - u0.process) })
}

fn plan_options() -> crabbox_plan::diff::PlanOptions {
    crabbox_plan::diff::PlanOptions {
        now: crabbox_core::labels::now_secs(),
        ..crabbox_plan::diff::PlanOptions::default()
    }
}

/// `crabbox plan` against a pond that exists: discover, plan (with the
/// outputs' diffs), render for people.
fn run_plan(
    job: &Job,
    desired: &crabbox_spec::desired::DesiredPond,
    rt: &tokio::runtime::Runtime,
) -> Value {
    let registry = hetzner(job);
    let (t0, u0) = (Instant::now(), Usage::now());
    let inventory = rt.block_on(crabbox_apply::reconcile::observe(
        desired,
        &registry,
        &job.state_dir,
        &ClaimStore::local(&job.state_dir),
    ));
    let (t1, u1) = (Instant::now(), Usage::now());
    let plan = crabbox_apply::reconcile::plan_with_outputs(
        desired,
        &inventory,
        &plan_options(),
        &registry,
    )
    .expect("plan");
    let shown = crabbox_plan::human::render(&plan);
    let (t2, u2) = (Instant::now(), Usage::now());
    assert_eq!(inventory.leases.len(), job.members, "every member is live");
    assert!(
        !plan.has_changes(),
        "an applied pond plans no change:\n{shown}"
    );
    json!({
        "wall_ms": ms(t2 - t0),
        "cpu_ms": ms(u2.process - u0.process),
        "child_cpu_ms": ms(u2.children - u0.children),
        "max_rss_kib": u2.max_rss_kib,
        "discover_ms": ms(t1 - t0),
        "discover_cpu_ms": ms(u1.process - u0.process),
        // The peak up to the end of discovery (the spec's loading included).
        "discover_max_rss_kib": u1.max_rss_kib,
        "plan_ms": ms(t2 - t1),
        "plan_cpu_ms": ms(u2.thread - u1.thread),
    })
}

fn outputs(desired: &crabbox_spec::desired::DesiredPond) -> crabbox_apply::steps::OutputTarget {
    crabbox_apply::steps::OutputTarget {
        dir: crabbox_apply::reconcile::outputs_dir(desired),
        templates: crabbox_apply::reconcile::templates(desired).expect("templates"),
    }
}

fn reporter() -> Arc<crabbox_apply::progress::Reporter> {
    // As on a terminal-less CI runner: one line per step on stderr.
    Arc::new(crabbox_apply::progress::Reporter::new(
        crabbox_apply::progress::Mode::Human,
    ))
}

fn exec_options(parallelism: usize) -> crabbox_apply::executor::ExecOptions {
    crabbox_apply::executor::ExecOptions {
        parallelism,
        ..crabbox_apply::executor::ExecOptions::default()
    }
}

/// `crabbox apply` creating every member; the apply itself is timed
/// (discover + plan of the empty pond have their own rows).
fn run_apply(
    job: &Job,
    desired: &crabbox_spec::desired::DesiredPond,
    rt: &tokio::runtime::Runtime,
) -> Value {
    let registry = hetzner(job);
    let inventory = rt.block_on(crabbox_apply::reconcile::observe(
        desired,
        &registry,
        &job.state_dir,
        &ClaimStore::local(&job.state_dir),
    ));
    let plan = crabbox_apply::reconcile::plan_with_outputs(
        desired,
        &inventory,
        &plan_options(),
        &registry,
    )
    .expect("plan");
    assert_eq!(plan.summary().add, job.members, "every member is created");
    let ctx = Arc::new(crabbox_apply::reconcile::context(
        &plan,
        Some(desired),
        &inventory,
        registry,
        &job.state_dir,
        &ClaimStore::local(&job.state_dir),
        job.state_dir.clone(),
        Some(outputs(desired)),
        reporter(),
    ));
    let (t0, u0) = (Instant::now(), Usage::now());
    let (outcome, applied) = rt.block_on(crabbox_apply::reconcile::apply(
        &plan,
        ctx,
        &exec_options(job.parallelism),
        true,
    ));
    let (t1, u1) = (Instant::now(), Usage::now());
    assert!(outcome.success(), "apply failed: {outcome:?}");
    assert_eq!(applied.added, job.members);
    timed(t1 - t0, u0, u1)
}

fn timed(wall: Duration, u0: Usage, u1: Usage) -> Value {
    json!({
        "wall_ms": ms(wall),
        "cpu_ms": ms(u1.process - u0.process),
        "child_cpu_ms": ms(u1.children - u0.children),
        "max_rss_kib": u1.max_rss_kib,
    })
}

/// `crabbox destroy` with the spec: every lease of the pond released; the
/// releases are timed.
fn run_destroy(
    job: &Job,
    desired: &crabbox_spec::desired::DesiredPond,
    rt: &tokio::runtime::Runtime,
) -> Value {
    use crabbox_plan::{Action, MemberChange, Plan};
    let registry = hetzner(job);
    let inventory = rt.block_on(crabbox_apply::discover::discover(
        &desired.name,
        &[crabbox_core::provider::ProviderName::Hetzner],
        &registry,
        &job.state_dir,
        &ClaimStore::local(&job.state_dir),
    ));
    assert_eq!(inventory.leases.len(), job.members, "every member is live");
    let plan = Plan {
        pond: desired.name.clone(),
        changes: inventory
            .leases
            .iter()
            .map(|lease| MemberChange {
                slug: lease.slug().to_owned(),
                provider: lease.provider,
                action: Action::Delete,
                lease: Some(lease.clone()),
                desired: desired
                    .members
                    .iter()
                    .find(|m| m.slug == lease.slug())
                    .cloned(),
                attributes: Vec::new(),
                reasons: vec!["destroy requested".to_owned()],
                relabel: false,
                rerun_setup: false,
                commands_before: None,
            })
            .collect(),
        forget_claims: inventory
            .dangling_claims
            .iter()
            .map(|c| c.lease_id.clone())
            .collect(),
        unclaimed: Vec::new(),
        outputs: Vec::new(),
        warnings: inventory.warnings.clone(),
    };
    let ctx = Arc::new(crabbox_apply::reconcile::context(
        &plan,
        Some(desired),
        &inventory,
        registry,
        &job.state_dir,
        &ClaimStore::local(&job.state_dir),
        job.state_dir.clone(),
        Some(outputs(desired)),
        reporter(),
    ));
    let (t0, u0) = (Instant::now(), Usage::now());
    let (outcome, applied) = rt.block_on(crabbox_apply::reconcile::apply(
        &plan,
        ctx,
        &exec_options(job.parallelism),
        true,
    ));
    let (t1, u1) = (Instant::now(), Usage::now());
    assert!(outcome.success(), "destroy failed: {outcome:?}");
    assert_eq!(applied.destroyed, job.members);
    timed(t1 - t0, u0, u1)
}

/// `crabbox warmup --pond P --slug S --provider hetzner --expose 8080` for
/// every member, as `crabbox` runs it: a new provider (as in a new process),
/// discover the pond, plan the one member, apply that one-member plan.
async fn warmup(
    job: &Job,
    desired: &crabbox_spec::desired::DesiredPond,
    member: &crabbox_spec::desired::DesiredMember,
) {
    use crabbox_plan::Action;
    let registry = hetzner(job);
    let mut one = desired.clone();
    one.members = vec![member.clone()];
    let inventory = crabbox_apply::discover::discover(
        &one.name,
        &[crabbox_core::provider::ProviderName::Hetzner],
        &registry,
        &job.state_dir,
        &ClaimStore::local(&job.state_dir),
    )
    .await;
    let options = crabbox_plan::diff::PlanOptions {
        only: vec![member.slug.clone()],
        ..plan_options()
    };
    let plan = crabbox_plan::diff::plan(&one, &inventory, &options).expect("plan");
    assert!(
        plan.changes.iter().all(|c| c.action == Action::Create),
        "{} is new",
        member.slug
    );
    let ctx = Arc::new(crabbox_apply::reconcile::context(
        &plan,
        Some(&one),
        &inventory,
        registry,
        &job.state_dir,
        &ClaimStore::local(&job.state_dir),
        job.state_dir.clone(),
        None,
        reporter(),
    ));
    let (outcome, _) = crabbox_apply::reconcile::apply(
        &plan,
        ctx,
        &crabbox_apply::executor::ExecOptions::default(),
        false,
    )
    .await;
    assert!(outcome.success(), "warmup of {} failed", member.slug);
}

fn run_warmups(
    job: &Job,
    desired: &crabbox_spec::desired::DesiredPond,
    rt: &tokio::runtime::Runtime,
) -> Value {
    let (t0, u0) = (Instant::now(), Usage::now());
    if job.kind == "warmup-seq" {
        rt.block_on(async {
            for m in &desired.members {
                warmup(job, desired, m).await;
            }
        });
    } else {
        rt.block_on(futures_util::future::join_all(
            desired.members.iter().map(|m| warmup(job, desired, m)),
        ));
    }
    let (t1, u1) = (Instant::now(), Usage::now());
    timed(t1 - t0, u0, u1)
}

// ---- ideals ----

/// The fake's parameters for a group of rows.
#[derive(Debug, Clone, Copy)]
struct Fx {
    latency: Duration,
    boot: Duration,
    /// The fake serves at most this many requests at once.
    max_in_flight: Option<usize>,
    /// Requests a second and burst, beyond which it answers 429.
    rate: Option<(f64, u32)>,
}

fn show(d: Duration) -> String {
    if d >= Duration::from_secs(10) {
        format!("{:.1} s", d.as_secs_f64())
    } else if d >= Duration::from_secs(1) {
        format!("{:.2} s", d.as_secs_f64())
    } else if d >= Duration::from_millis(10) {
        format!("{:.0} ms", ms(d))
    } else {
        format!("{:.1} ms", ms(d))
    }
}

fn n_times(n: usize, d: Duration) -> Duration {
    d * u32::try_from(n).expect("small")
}

/// An ideal wall time and how it was computed.
struct Ideal {
    time: Duration,
    formula: String,
}

impl Fx {
    fn l(&self) -> String {
        show(self.latency)
    }

    /// Time for `requests` requests under the rate limit, if any: the burst
    /// is free, the rest come at the refill rate.
    fn rate_floor(&self, requests: usize, ideal: Ideal) -> Ideal {
        let Some((per_second, burst)) = self.rate else {
            return ideal;
        };
        #[allow(clippy::cast_precision_loss)]
        let paced = requests.saturating_sub(burst as usize) as f64 / per_second;
        let floor = Duration::from_secs_f64(paced);
        if floor > ideal.time {
            Ideal {
                time: floor,
                formula: format!(
                    "({requests} − {burst}) requests ÷ {per_second}/s (rate limit; latency path {})",
                    show(ideal.time)
                ),
            }
        } else {
            ideal
        }
    }

    /// Listing `n` servers: page 1 says how many pages there are; the
    /// others are fetched at once (at most `max_in_flight` at a time).
    fn list(&self, n: usize) -> Ideal {
        let pages = n.div_ceil(PER_PAGE).max(1);
        if pages == 1 {
            return Ideal {
                time: self.latency,
                formula: format!("1 page × {}", self.l()),
            };
        }
        let rest = pages - 1;
        let (rounds, how) = match self.max_in_flight {
            Some(c) => (rest.div_ceil(c), format!("⌈{rest}/{c}⌉")),
            None => (1, "1".to_owned()),
        };
        Ideal {
            time: n_times(1 + rounds, self.latency),
            formula: format!("(1 + {how}) × {}: page 1, then {rest} more", self.l()),
        }
    }

    /// One create, request after request: upload the key, create the
    /// server, see it running (a poll answered at boot end, never sooner
    /// than one latency), label it ready.
    fn create_chain(&self) -> Duration {
        n_times(3, self.latency) + self.boot.max(self.latency)
    }

    fn create_chain_formula(&self) -> String {
        format!("(3×{} + max({}, {}))", self.l(), show(self.boot), self.l())
    }

    fn effective(&self, parallelism: usize) -> usize {
        self.max_in_flight
            .map_or(parallelism, |c| c.min(parallelism))
    }

    fn apply(&self, n: usize, parallelism: usize) -> Ideal {
        let p = self.effective(parallelism);
        let waves = n.div_ceil(p);
        self.rate_floor(
            4 * n,
            Ideal {
                time: n_times(waves, self.create_chain()),
                formula: format!("⌈{n}/{p}⌉ × {}", self.create_chain_formula()),
            },
        )
    }

    /// Creates that log in over SSH with the user's own key (uploaded once
    /// for the pond: one lookup, then for each create the server, its
    /// `running`, its label), plus the SSH floor: `n` fresh logins at the
    /// same parallelism, measured in the same run.
    fn apply_ssh(&self, n: usize, parallelism: usize, floor: Duration) -> Ideal {
        let p = self.effective(parallelism);
        let waves = n.div_ceil(p);
        let chain = n_times(2, self.latency) + self.boot.max(self.latency);
        Ideal {
            time: self.latency + n_times(waves, chain) + floor,
            formula: format!(
                "{} + ⌈{n}/{p}⌉ × (2×{} + max({}, {})) + SSH floor {}",
                self.l(),
                self.l(),
                show(self.boot),
                self.l(),
                show(floor)
            ),
        }
    }

    /// Releases of leases whose SSH masters (left by the apply) are closed:
    /// [`Self::destroy`] plus closing `n` masters at the same parallelism.
    fn destroy_ssh(&self, n: usize, parallelism: usize, close_floor: Duration) -> Ideal {
        let api = self.destroy(n, parallelism);
        Ideal {
            time: api.time + close_floor,
            formula: format!(
                "{} + SSH floor {} (closing {n} masters)",
                api.formula,
                show(close_floor)
            ),
        }
    }

    /// One release: delete the server, and meanwhile find the lease's key
    /// by name and delete it.
    fn destroy(&self, n: usize, parallelism: usize) -> Ideal {
        let p = self.effective(parallelism);
        let waves = n.div_ceil(p);
        self.rate_floor(
            3 * n,
            Ideal {
                time: n_times(waves * 2, self.latency),
                formula: format!("⌈{n}/{p}⌉ × 2×{}", self.l()),
            },
        )
    }

    /// One `warmup` after another: each lists the pond so far, then creates.
    fn warmups_in_turn(&self, n: usize) -> Ideal {
        let time = (0..n)
            .map(|k| self.list(k).time + self.create_chain())
            .sum();
        let requests = (0..n).map(|k| k.div_ceil(PER_PAGE).max(1) + 4).sum();
        self.rate_floor(
            requests,
            Ideal {
                time,
                formula: format!(
                    "Σ over k < {n}: list k members + {}",
                    self.create_chain_formula()
                ),
            },
        )
    }

    /// Every `warmup` at once: each lists the (still empty) pond, then creates.
    fn warmups_at_once(&self, n: usize) -> Ideal {
        let one = format!("{} + {}", self.l(), self.create_chain_formula());
        let (waves, formula) = match self.max_in_flight {
            Some(c) if n > c => (n.div_ceil(c), format!("⌈{n}/{c}⌉ × ({one})")),
            _ => (1, one),
        };
        self.rate_floor(
            5 * n,
            Ideal {
                time: n_times(waves, self.latency + self.create_chain()),
                formula,
            },
        )
    }
}

// ---- the orchestrator ----

#[derive(Debug, Clone)]
struct Options {
    quick: bool,
    full: bool,
    sizes: Vec<usize>,
    fx: Fx,
    repeats: usize,
    /// Skip the scaling table (`--targets-only`).
    targets_only: bool,
    /// Where the ponds' state directories go (`--work-dir`; default: the
    /// system's temporary directory).
    work_dir: Option<PathBuf>,
    /// Ponds applied and destroyed over SSH (`--ssh-members`).
    ssh_sizes: Vec<usize>,
    /// Live ponds discovered and planned (`--large-members`).
    large_sizes: Vec<usize>,
}

impl Options {
    fn parse(args: &[String]) -> Self {
        let mut o = Self {
            quick: false,
            full: false,
            sizes: vec![10, 100, 1000],
            fx: Fx {
                latency: Duration::from_millis(50),
                boot: Duration::from_millis(300),
                max_in_flight: None,
                rate: None,
            },
            repeats: 5,
            targets_only: false,
            work_dir: None,
            ssh_sizes: vec![100, 500],
            large_sizes: vec![1000, 10_000],
        };
        let mut sizes_given = false;
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = || it.next().unwrap_or_else(|| panic!("{a} needs a value"));
            match a.as_str() {
                "--quick" => o.quick = true,
                "--full" => o.full = true,
                "--members" => {
                    o.sizes = sizes(value());
                    sizes_given = true;
                }
                "--latency-ms" => {
                    o.fx.latency = Duration::from_millis(value().parse().expect("ms"));
                }
                "--boot-ms" => o.fx.boot = Duration::from_millis(value().parse().expect("ms")),
                "--max-in-flight" => o.fx.max_in_flight = Some(value().parse().expect("count")),
                "--rate-limit" => {
                    let v = value();
                    let (r, burst) = v.split_once('/').unwrap_or((v.as_str(), "1"));
                    o.fx.rate = Some((
                        r.parse().expect("requests a second"),
                        burst.parse().expect("burst"),
                    ));
                }
                "--repeats" => o.repeats = value().parse().expect("count"),
                "--targets-only" => o.targets_only = true,
                "--work-dir" => o.work_dir = Some(PathBuf::from(value())),
                "--ssh-members" => o.ssh_sizes = sizes(value()),
                "--large-members" => o.large_sizes = sizes(value()),
                // `cargo bench` passes `--bench`; anything else is a filter we ignore.
                _ => {}
            }
        }
        if o.quick {
            if !sizes_given {
                o.sizes = vec![10, 100];
                o.ssh_sizes = vec![100];
                o.large_sizes = Vec::new();
            }
            o.repeats = o.repeats.min(3);
        }
        o
    }
}

/// `10,100` → `[10, 100]` (empty: none).
fn sizes(list: &str) -> Vec<usize> {
    list.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().expect("member counts"))
        .collect()
}

/// Rows the targets table reads.
struct Marks {
    target_plan: Option<usize>,
    target_apply: usize,
    /// (apply, destroy) over SSH, per size.
    ssh: Vec<(usize, usize)>,
    /// Discover + plan of each large pond.
    large: Vec<usize>,
}

/// One measured line of the table.
struct Row {
    scenario: String,
    members: usize,
    parallelism: String,
    wall: Duration,
    ideal: Ideal,
    /// crabbox's own CPU (process), and its children's.
    cpu: Duration,
    child_cpu: Duration,
    /// Planning CPU alone, for discover + plan rows.
    plan_cpu: Option<Duration>,
    /// For discover + plan rows: the CPU of only reading the pond's claim
    /// files, measured in the same run ([`read_claim_files`]).
    claim_files_cpu: Option<Duration>,
    max_rss_kib: i64,
    requests: usize,
    /// `GET /ssh_keys` by name or fingerprint during the operation.
    key_lookups: usize,
    /// The SSH floor in the ideal, for rows that log in.
    floor: Option<Duration>,
    /// Which table it goes in.
    section: Section,
}

/// The report's tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    /// The apply target's own settings.
    Target,
    /// Ponds of 10, 100 and 1,000 members at the run's settings.
    Scaling,
    /// Applies and destroys that log in over SSH (the issue's setting).
    Ssh,
    /// Discover + plan of 1,000 and 10,000 live members.
    Large,
}

impl Row {
    fn ratio(&self) -> f64 {
        self.wall.as_secs_f64() / self.ideal.time.as_secs_f64()
    }
}

struct Bench {
    fake: Fake,
    /// The one sshd every SSH member's server is.
    sshd: sshd::TestSshd,
    /// The fake's statistics after the last worker.
    stats: Value,
    root: tempfile::TempDir,
    rows: Vec<Row>,
    log: PathBuf,
    section: Section,
}

fn millis(v: &Value, key: &str) -> Duration {
    Duration::from_secs_f64(v[key].as_f64().unwrap_or_else(|| panic!("{key} in {v}")) / 1000.0)
}

fn median<T: Copy + PartialOrd>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).expect("comparable"));
    v[v.len() / 2]
}

impl Bench {
    /// Writes `pond.yaml` for `n` members: Hetzner, no sync, no setup, no
    /// ready check (ready = the server runs), one exposed port.
    fn spec(&self, pond: &str, n: usize) -> (PathBuf, PathBuf) {
        self.spec_with(pond, n, false)
    }

    /// [`Self::spec`]; with `ssh`, every member logs in to the bench sshd
    /// with the user's own key (`hetzner.ssh_key`), as the issue measured.
    fn spec_with(&self, pond: &str, n: usize, ssh: bool) -> (PathBuf, PathBuf) {
        let dir = self.root.path().join(pond);
        let state = dir.join("state");
        std::fs::create_dir_all(&state).expect("bench dir");
        let login = if ssh {
            format!(
                ", hetzner: {{ ssh_user: \"{}\", ssh_port: {}, ssh_key: \"{}\" }}",
                self.sshd.user,
                self.sshd.port,
                self.sshd.key.display()
            )
        } else {
            String::new()
        };
        let mut text = format!(
            "version: 1\npond: {pond}\ndefaults: {{ provider: hetzner, sync: false{login} }}\noutputs: {{ dir: \"{}\" }}\nmembers:\n",
            dir.join("outputs").display()
        );
        for i in 0..n {
            let _ = writeln!(text, "  - slug: m{i:04}\n    expose: [8080]");
        }
        let spec = dir.join("pond.yaml");
        std::fs::write(&spec, text).expect("write spec");
        (spec, state)
    }

    fn worker(&mut self, job: &Job) -> (Value, usize) {
        self.fake.send("clear");
        let log = std::fs::File::create(&self.log).expect("worker log");
        let out = Command::new(std::env::current_exe().expect("own path"))
            .arg("--worker")
            .arg(serde_json::to_string(job).expect("job JSON"))
            .env_remove("CRABBOX_STATE_URL")
            .env_remove("HCLOUD_TOKEN")
            .env_remove("HETZNER_TOKEN")
            .env_remove("CRABBOX_DEBUG")
            .stdin(Stdio::null())
            .stderr(log)
            .output()
            .expect("run a worker");
        let text = String::from_utf8_lossy(&out.stdout);
        let result = text
            .lines()
            .find_map(|l| l.strip_prefix("RESULT "))
            .unwrap_or_else(|| {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                panic!(
                    "{} worker failed ({}):\n{}",
                    job.kind,
                    out.status,
                    tail.join("\n")
                )
            });
        self.stats = self.fake.stats();
        let requests = self.stats["requests"].as_u64().unwrap_or(0);
        (
            serde_json::from_str(result).expect("result JSON"),
            usize::try_from(requests).unwrap_or(usize::MAX),
        )
    }

    fn job(kind: &str, base_url: &str, spec: &Path, state: &Path, p: usize, n: usize) -> Job {
        Job {
            kind: kind.to_owned(),
            base_url: base_url.to_owned(),
            state_dir: state.to_owned(),
            spec: spec.to_owned(),
            parallelism: p,
            members: n,
            ssh_work_base: None,
        }
    }

    /// `n` fresh multiplexed logins to the bench sshd running `true`, `p` at
    /// a time, with crabbox's own options (batch mode, a known-hosts file,
    /// a control master per login kept after it): the least SSH can cost an
    /// apply of `n` members at parallelism `p` on this machine. Then the
    /// masters are closed (`ssh -O exit`), `p` at a time: the least closing
    /// them costs a destroy. Returns both times.
    fn ssh_floor(&self, n: usize, p: usize) -> (Duration, Duration) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let dir = tempfile::tempdir_in(self.root.path()).expect("floor dir");
        std::fs::create_dir_all(dir.path().join("cm")).expect("cm dir");
        let ssh = |i: usize| {
            let mut cmd = Command::new("ssh");
            cmd.arg("-T")
                .arg("-p")
                .arg(self.sshd.port.to_string())
                .arg("-i")
                .arg(&self.sshd.key);
            for option in [
                "IdentitiesOnly=yes".to_owned(),
                "BatchMode=yes".to_owned(),
                "StrictHostKeyChecking=accept-new".to_owned(),
                format!(
                    "UserKnownHostsFile={}",
                    dir.path().join("known_hosts").display()
                ),
                "ControlMaster=auto".to_owned(),
                format!(
                    "ControlPath={}",
                    dir.path().join("cm").join(i.to_string()).display()
                ),
                "ControlPersist=120".to_owned(),
                "LogLevel=ERROR".to_owned(),
            ] {
                cmd.arg("-o").arg(option);
            }
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            cmd
        };
        let destination = format!("{}@127.0.0.1", self.sshd.user);
        let run_all = |last: &[&str]| {
            let next = AtomicUsize::new(0);
            std::thread::scope(|scope| {
                for _ in 0..p.min(n) {
                    scope.spawn(|| {
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= n {
                                break;
                            }
                            let mut cmd = ssh(i);
                            if last == ["-O", "exit"] {
                                cmd.args(last).arg(&destination);
                                let _ = cmd.status();
                            } else {
                                cmd.arg(&destination).args(last);
                                let status = cmd.status().expect("run ssh");
                                assert!(status.success(), "ssh … true: {status}");
                            }
                        }
                    });
                }
            });
        };
        let t = Instant::now();
        run_all(&["true"]);
        let floor = t.elapsed();
        let t = Instant::now();
        run_all(&["-O", "exit"]);
        (floor, t.elapsed())
    }

    /// Runs one job and records its row.
    fn measure(&mut self, scenario: &str, parallelism: &str, job: &Job, ideal: Ideal) -> usize {
        eprintln!("  {scenario}, {} members, {parallelism}…", job.members);
        let (v, requests) = self.worker(job);
        self.rows.push(Row {
            scenario: scenario.to_owned(),
            members: job.members,
            parallelism: parallelism.to_owned(),
            wall: millis(&v, "wall_ms"),
            ideal,
            cpu: millis(&v, "cpu_ms"),
            child_cpu: millis(&v, "child_cpu_ms"),
            plan_cpu: None,
            claim_files_cpu: None,
            max_rss_kib: v["max_rss_kib"].as_i64().unwrap_or(0),
            requests,
            key_lookups: self.key_lookups(),
            floor: None,
            section: self.section,
        });
        self.rows.len() - 1
    }

    /// Discover + plan `repeats` times; the medians.
    fn measure_plan(&mut self, scenario: &str, job: &Job, ideal: Ideal, repeats: usize) -> usize {
        eprintln!("  {scenario}, {} members (×{repeats})…", job.members);
        let runs: Vec<(Value, usize)> = (0..repeats).map(|_| self.worker(job)).collect();
        let med = |key: &str| median(runs.iter().map(|(v, _)| millis(v, key)).collect());
        let floor_job = Job {
            kind: "claim-files".to_owned(),
            ..job.clone()
        };
        let claim_files_cpu = median(
            (0..repeats)
                .map(|_| millis(&self.worker(&floor_job).0, "cpu_ms"))
                .collect(),
        );
        self.rows.push(Row {
            scenario: scenario.to_owned(),
            members: job.members,
            parallelism: "—".to_owned(),
            wall: med("wall_ms"),
            ideal,
            cpu: med("cpu_ms"),
            child_cpu: med("child_cpu_ms"),
            plan_cpu: Some(med("plan_cpu_ms")),
            claim_files_cpu: Some(claim_files_cpu),
            max_rss_kib: runs
                .iter()
                .map(|(v, _)| v["max_rss_kib"].as_i64().unwrap_or(0))
                .max()
                .unwrap_or(0),
            requests: runs[0].1,
            key_lookups: self.key_lookups(),
            floor: Some(Duration::ZERO),
            section: self.section,
        });
        self.rows.len() - 1
    }

    fn key_lookups(&self) -> usize {
        usize::try_from(self.stats["key_lookups"].as_u64().unwrap_or(0)).unwrap_or(usize::MAX)
    }

    /// Releases a pond without measuring it, quickly.
    fn clean_up(&mut self, fx: &Fx, spec: &Path, state: &Path, n: usize) {
        self.fake.send("latency 0");
        let job = Self::job("destroy", &self.fake.base_url.clone(), spec, state, 50, n);
        self.worker(&job);
        self.fake
            .send(&format!("latency {}", fx.latency.as_millis()));
    }
}

/// Flushes the machine's dirty pages (`sync`), then runs `job` once
/// untimed.
fn settle(job: &Job, bench: &mut Bench) {
    // SAFETY: sync(2) takes nothing and cannot fail.
    unsafe { libc::sync() };
    bench.worker(job);
}

fn orchestrate(o: &Options) {
    let started = Instant::now();
    let sshd = sshd::TestSshd::start();
    let mut bench = Bench {
        fake: Fake::start(&sshd.authorized_keys),
        sshd,
        stats: Value::Null,
        root: match &o.work_dir {
            Some(dir) => tempfile::tempdir_in(dir),
            None => tempfile::tempdir(),
        }
        .expect("bench dir"),
        rows: Vec::new(),
        log: PathBuf::new(),
        section: Section::Target,
    };
    bench.log = bench.root.path().join("worker.log");
    let base = bench.fake.base_url.clone();
    let fx = o.fx;
    bench.fake.configure(&fx);
    eprintln!(
        "pond bench: fake Hetzner at {base}; latency {}, boot {}; state under {}",
        show(fx.latency),
        show(fx.boot),
        bench.root.path().display()
    );

    let mut target_plan: Option<usize> = None;
    // The apply target first, on a file system not yet churned by the
    // 1,000-member rows: 200 creates, 200 ms a request, 300 ms boot, parallelism 50.
    let target_fx = Fx {
        latency: Duration::from_millis(200),
        boot: Duration::from_millis(300),
        max_in_flight: None,
        rate: None,
    };
    bench.fake.configure(&target_fx);
    let (spec200, state200) = bench.spec("bench-target-200", 200);
    let job200 = |kind: &str| Bench::job(kind, &base, &spec200, &state200, 50, 200);
    let target_apply = bench.measure(
        "apply (create all)",
        "50",
        &job200("apply"),
        target_fx.apply(200, 50),
    );
    bench.measure(
        "destroy",
        "50",
        &job200("destroy"),
        target_fx.destroy(200, 50),
    );

    // The issue's setting: 100 ms a request, 300 ms boot, parallelism 50,
    // every server the bench sshd, logged in to with the user's own key.
    bench.section = Section::Ssh;
    let ssh_fx = Fx {
        latency: Duration::from_millis(100),
        boot: Duration::from_millis(300),
        max_in_flight: None,
        rate: None,
    };
    bench.fake.configure(&ssh_fx);
    let mut ssh_rows = Vec::new();
    for &n in &o.ssh_sizes {
        let (spec, state) = bench.spec_with(&format!("bench-ssh-{n}"), n, true);
        let remote = bench.root.path().join(format!("remote-{n}"));
        let job = |kind: &str| Job {
            ssh_work_base: Some(remote.display().to_string()),
            ..Bench::job(kind, &base, &spec, &state, 50, n)
        };
        eprintln!("  SSH floor, {n} logins, 50 at a time…");
        let (floor, close_floor) = bench.ssh_floor(n, 50);
        let apply = bench.measure(
            "apply (create all), SSH",
            "50",
            &job("apply"),
            ssh_fx.apply_ssh(n, 50, floor),
        );
        bench.rows[apply].floor = Some(floor);
        let destroy = bench.measure(
            "destroy, SSH",
            "50",
            &job("destroy"),
            ssh_fx.destroy_ssh(n, 50, close_floor),
        );
        bench.rows[destroy].floor = Some(close_floor);
        ssh_rows.push((apply, destroy));
    }

    // 1,000 and 10,000 live members (made at no latency, untimed), then
    // discover + plan at 50 ms a request, the API serving 10 at once.
    bench.section = Section::Large;
    let large_fx = Fx {
        latency: Duration::from_millis(50),
        boot: Duration::from_millis(300),
        max_in_flight: Some(10),
        rate: None,
    };
    let mut large_rows = Vec::new();
    for &n in &o.large_sizes {
        let (spec, state) = bench.spec(&format!("bench-large-{n}"), n);
        bench.fake.send("latency 0");
        bench.fake.send("boot 0");
        bench.fake.send("limit none");
        eprintln!("  making {n} live members…");
        bench.worker(&Bench::job("apply", &base, &spec, &state, 50, n));
        bench.fake.configure(&large_fx);
        // The pond's files written back before anything is timed: the
        // kernel flushing 10,000 fresh claims beside the plans is the
        // setup's cost, not the plan's. One plan untimed, so every timed
        // one finds the files in the page cache alike.
        settle(&Bench::job("plan", &base, &spec, &state, 10, n), &mut bench);
        let row = bench.measure_plan(
            "discover + plan, API serves 10 at once",
            &Bench::job("plan", &base, &spec, &state, 10, n),
            large_fx.list(n),
            o.repeats,
        );
        large_rows.push(row);
        bench.fake.send("boot 0");
        bench.clean_up(&large_fx, &spec, &state, n);
    }

    bench.fake.configure(&fx);
    bench.section = Section::Scaling;

    let sizes = if o.targets_only {
        &[][..]
    } else {
        &o.sizes[..]
    };
    for &n in sizes {
        let pond = format!("bench-{n}");
        let (spec, state) = bench.spec(&pond, n);
        let job = |kind: &str, p: usize| Bench::job(kind, &base, &spec, &state, p, n);

        bench.measure(
            "apply (create all)",
            "10",
            &job("apply", 10),
            fx.apply(n, 10),
        );
        bench.measure_plan("discover + plan", &job("plan", 10), fx.list(n), o.repeats);
        if n == 1000 {
            // The target's setting: the API serves 10 requests at once.
            let limited = Fx {
                max_in_flight: Some(10),
                ..fx
            };
            bench.fake.configure(&limited);
            target_plan = Some(bench.measure_plan(
                "discover + plan, API serves 10 at once",
                &job("plan", 10),
                limited.list(n),
                o.repeats,
            ));
            bench.fake.configure(&fx);
        }
        bench.measure("destroy", "10", &job("destroy", 10), fx.destroy(n, 10));
        bench.measure(
            "apply (create all)",
            "50",
            &job("apply", 50),
            fx.apply(n, 50),
        );
        bench.measure("destroy", "50", &job("destroy", 50), fx.destroy(n, 50));

        let in_turn = if o.quick { n <= 10 } else { n <= 100 || o.full };
        if in_turn {
            bench.measure(
                "`warmup` per member, one after another",
                "1 at a time",
                &job("warmup-seq", 10),
                fx.warmups_in_turn(n),
            );
            bench.clean_up(&fx, &spec, &state, n);
        }
        bench.measure(
            "`warmup` per member, all at once (`&`)",
            "all",
            &job("warmup-all", 10),
            fx.warmups_at_once(n),
        );
        bench.clean_up(&fx, &spec, &state, n);
    }

    let validate = validate_time(&bench, o.repeats.max(5) * 2 + 1);
    let machine = machine();
    print_report(
        o,
        &bench.rows,
        &Marks {
            target_plan,
            target_apply,
            ssh: ssh_rows,
            large: large_rows,
        },
        validate,
        &machine,
    );
    eprintln!("pond bench: done in {}", show(started.elapsed()));
}

/// Median wall time of `crabbox validate -f pond.yaml` for 100 members.
fn validate_time(bench: &Bench, runs: usize) -> Duration {
    let (spec, _) = bench.spec("bench-validate-100", 100);
    let exe = env!("CARGO_BIN_EXE_crabbox");
    let times = (0..runs)
        .map(|_| {
            let t = Instant::now();
            let out = Command::new(exe)
                .args(["validate", "-f"])
                .arg(&spec)
                .stdin(Stdio::null())
                .output()
                .expect("run crabbox validate");
            let wall = t.elapsed();
            assert!(
                out.status.success(),
                "validate failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            wall
        })
        .collect();
    median(times)
}

fn machine() -> String {
    let run = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or_else(String::new, |kib| {
            format!("{:.1} GiB", kib as f64 / 1_048_576.0)
        });
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_default();
    format!(
        "{} CPUs ({cpu}), {mem} RAM, Linux {}, {}",
        run("nproc", &[]),
        run("uname", &["-r"]),
        run("rustc", &["--version"])
    )
}

fn mib(kib: i64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let m = kib as f64 / 1024.0;
    format!("{m:.1} MiB")
}

/// log(x1000 / x100) / log(10).
fn exponent(x100: Duration, x1000: Duration) -> f64 {
    (x1000.as_secs_f64() / x100.as_secs_f64()).log10()
}

fn print_report(o: &Options, rows: &[Row], marks: &Marks, validate: Duration, machine: &str) {
    let Marks {
        target_plan,
        target_apply,
        ..
    } = *marks;
    let fx = o.fx;
    let mut out = String::new();
    let _ = writeln!(out, "Machine: {machine}\n");
    let table = |out: &mut String, section: Section| {
        let _ = writeln!(
            out,
            "| scenario | members | parallelism | wall | ideal | ratio | SSH floor | ideal = | crabbox CPU | peak RSS | requests | key lookups |"
        );
        let _ = writeln!(
            out,
            "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"
        );
        for r in rows.iter().filter(|r| r.section == section) {
            let mut cpu = show(r.cpu);
            if let Some(p) = r.plan_cpu {
                let _ = write!(cpu, " (plan {}", show(p));
                if let Some(f) = r.claim_files_cpu {
                    let _ = write!(cpu, "; reading the claim files alone {}", show(f));
                }
                cpu.push(')');
            }
            if !r.child_cpu.is_zero() {
                let _ = write!(cpu, " + {} children", show(r.child_cpu));
            }
            let floor = match r.floor {
                Some(f) if f.is_zero() => "0 (no login)".to_owned(),
                Some(f) => show(f),
                None if r.section == Section::Ssh => "0 (no login)".to_owned(),
                None => "— (SSH off)".to_owned(),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {:.2} | {} | {} | {} | {} | {} | {} |",
                r.scenario,
                r.members,
                r.parallelism,
                show(r.wall),
                show(r.ideal.time),
                r.ratio(),
                floor,
                r.ideal.formula,
                cpu,
                mib(r.max_rss_kib),
                r.requests,
                r.key_lookups,
            );
        }
    };
    if rows.iter().any(|r| r.section == Section::Scaling) {
        let _ = writeln!(
            out,
            "Fake Hetzner API (its own process): {} a request, servers `running` {} after their create, {}, {}; 50 servers a page.\n",
            show(fx.latency),
            show(fx.boot),
            fx.max_in_flight
                .map_or("no concurrency limit".to_owned(), |c| format!(
                    "{c} requests served at once"
                )),
            fx.rate
                .map_or("no request-rate limit".to_owned(), |(r, b)| format!(
                    "{r} requests/s (burst {b})"
                )),
        );
        table(&mut out, Section::Scaling);
    }
    let _ = writeln!(
        out,
        "\nThe apply target's run (fake: 200 ms a request, servers `running` 300 ms after their create, no limits; run first):\n"
    );
    table(&mut out, Section::Target);
    if rows.iter().any(|r| r.section == Section::Ssh) {
        let _ = writeln!(
            out,
            "\nWith SSH (fake: 100 ms a request, servers `running` 300 ms after their create; every server is one sshd on 127.0.0.1, logged in to with the user's own key, `hetzner.ssh_key`). SSH floor: as many fresh multiplexed `ssh … true` logins, 50 at a time, measured just before the apply; for the destroy, closing those logins' masters (`ssh -O exit`), 50 at a time:\n"
        );
        table(&mut out, Section::Ssh);
    }
    if rows.iter().any(|r| r.section == Section::Large) {
        let _ = writeln!(
            out,
            "\nLarge ponds (fake: 50 ms a request, serving 10 requests at once; ponds made beforehand, untimed, their files written back (`sync`) and planned once untimed; median of {}):\n",
            o.repeats
        );
        table(&mut out, Section::Large);
    }

    // Growth: crabbox's CPU from 100 to 1,000 members, per scenario.
    let mut growth = Vec::new();
    let find = |scenario: &str, p: &str, n: usize| {
        rows.iter()
            .find(|r| r.scenario == scenario && r.parallelism == p && r.members == n)
    };
    let mut worst: Option<f64> = None;
    for r in rows.iter().filter(|r| r.members == 100) {
        if let Some(big) = find(&r.scenario, &r.parallelism, 1000) {
            let cost = |r: &Row| r.cpu + r.child_cpu;
            let e = exponent(cost(r), cost(big));
            let declarative = !r.scenario.starts_with('`');
            if declarative {
                worst = Some(worst.map_or(e, |w: f64| w.max(e)));
            }
            growth.push(format!(
                "| {} | {} | {} | {} | {e:.2} |",
                r.scenario,
                r.parallelism,
                show(cost(r)),
                show(cost(big))
            ));
        }
    }
    if !growth.is_empty() {
        let _ = writeln!(
            out,
            "\nGrowth of crabbox's CPU (process + children) from 100 to 1,000 members, exponent = log(t1000 / t100) / log(10):\n"
        );
        let _ = writeln!(
            out,
            "| scenario | parallelism | CPU at 100 | CPU at 1,000 | exponent |\n|---|---:|---:|---:|---:|"
        );
        for g in &growth {
            let _ = writeln!(out, "{g}");
        }
    }

    let _ = writeln!(out, "\nTargets:\n");
    let _ = writeln!(
        out,
        "| target | measured | limit | met |\n|---|---:|---:|---|"
    );
    let yes = |ok: bool| if ok { "yes" } else { "**no**" };
    if let Some(i) = target_plan {
        let r = &rows[i];
        let _ = writeln!(
            out,
            "| discover + plan, 1,000 live members, 50 a page, 50 ms a request (10 at once) | {} = {:.2} × {} | ≤ 1.3 × ideal | {} |",
            show(r.wall),
            r.ratio(),
            show(r.ideal.time),
            yes(r.ratio() <= 1.3)
        );
        let plan_cpu = r.plan_cpu.unwrap_or_default();
        let _ = writeln!(
            out,
            "| crabbox's CPU for the planning itself (1,000 live members) | {} | ≤ 25 ms | {} |",
            show(plan_cpu),
            yes(plan_cpu <= Duration::from_millis(25))
        );
    } else {
        let _ = writeln!(
            out,
            "| discover + plan, 1,000 live members | not run (1,000 members not in this run) | ≤ 1.3 × ideal | — |"
        );
    }
    for &(apply, destroy) in &marks.ssh {
        let (a, d) = (&rows[apply], &rows[destroy]);
        let floor = a.floor.unwrap_or_default();
        let _ = writeln!(
            out,
            "| apply of {} members with SSH, parallelism 50 (SSH floor {}) | {} = {:.2} × {} | ≤ 1.2 × (API ideal + floor) | {} |",
            a.members,
            show(floor),
            show(a.wall),
            a.ratio(),
            show(a.ideal.time),
            yes(a.ratio() <= 1.2)
        );
        let _ = writeln!(
            out,
            "| destroy of {} members with SSH, parallelism 50 (SSH floor {}: closing the masters) | {} = {:.2} × {} | ≤ 1.3 × (API ideal + floor) | {} |",
            d.members,
            show(d.floor.unwrap_or_default()),
            show(d.wall),
            d.ratio(),
            show(d.ideal.time),
            yes(d.ratio() <= 1.3)
        );
        let _ = writeln!(
            out,
            "| key lookups (`GET /ssh_keys` by name or fingerprint), apply of {} members sharing the user's key | {} | ≤ 1 | {} |",
            a.members,
            a.key_lookups,
            yes(a.key_lookups <= 1)
        );
    }
    for &i in &marks.large {
        let r = &rows[i];
        if r.members < 10_000 {
            continue;
        }
        let _ = writeln!(
            out,
            "| discover + plan, {} live members, 50 ms a request (10 at once) | {} = {:.2} × {} | ≤ 1.3 × ideal | {} |",
            r.members,
            show(r.wall),
            r.ratio(),
            show(r.ideal.time),
            yes(r.ratio() <= 1.3)
        );
        let _ = writeln!(
            out,
            "| crabbox CPU, discover + plan of {} live members (plan alone: {}; reading the {} claim files alone: {}) | {} | ≤ 250 ms | {} |",
            r.members,
            show(r.plan_cpu.unwrap_or_default()),
            r.members,
            show(r.claim_files_cpu.unwrap_or_default()),
            show(r.cpu),
            yes(r.cpu <= Duration::from_millis(250))
        );
        let _ = writeln!(
            out,
            "| peak RSS, discover + plan of {} live members | {} | ≤ 256 MiB | {} |",
            r.members,
            mib(r.max_rss_kib),
            yes(r.max_rss_kib <= 256 * 1024)
        );
        if let Some(small) = marks
            .large
            .iter()
            .map(|&j| &rows[j])
            .find(|s| s.members * 10 == r.members)
        {
            let e = exponent(small.cpu, r.cpu);
            let _ = writeln!(
                out,
                "| CPU growth exponent, discover + plan, {} → {} members ({} → {}) | {e:.2} | ≤ 1.10 | {} |",
                small.members,
                r.members,
                show(small.cpu),
                show(r.cpu),
                yes(e <= 1.10)
            );
        }
    }
    let r = &rows[target_apply];
    let _ = writeln!(
        out,
        "| apply of 200 creates, 200 ms a request, 300 ms boot, parallelism 50 | {} = {:.2} × {} | ≤ 1.2 × ideal | {} |",
        show(r.wall),
        r.ratio(),
        show(r.ideal.time),
        yes(r.ratio() <= 1.2)
    );
    let big: Vec<&Row> = rows
        .iter()
        .filter(|r| r.members == 1000 && !r.scenario.starts_with('`'))
        .collect();
    if let Some(peak) = big.iter().map(|r| r.max_rss_kib).max() {
        let _ = writeln!(
            out,
            "| peak memory, 1,000-member pond (apply, plan, destroy) | {} | ≤ 64 MiB | {} |",
            mib(peak),
            yes(peak <= 64 * 1024)
        );
    }
    let _ = writeln!(
        out,
        "| `crabbox validate`, 100-member spec (median wall, process start to exit) | {} | ≤ 15 ms | {} |",
        show(validate),
        yes(validate <= Duration::from_millis(15))
    );
    if let Some(w) = worst {
        let _ = writeln!(
            out,
            "| cost linear in members: largest CPU exponent, 100 → 1,000 (apply, plan, destroy) | {w:.2} | ≤ 1.10 | {} |",
            yes(w <= 1.10)
        );
    }
    print!("{out}");
}
