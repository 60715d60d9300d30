//! `crabbox pond peers|release|unlock`: Crabbox-compatible pond verbs.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::SpecArgs;
use super::engine::failure;
use super::exit::USAGE;
use super::lookup::parse_provider;
use crabbox_core::normalize::checked_name;
use crabbox_core::provider::ProviderName;
use crabbox_exec::mesh;
use crabbox_plan::{Action, MemberChange, Plan};
use crabbox_state::claims::ClaimStore;
use crabbox_state::lock;
use crabbox_state::state_dir::state_dir;

#[derive(Debug, Subcommand)]
pub(super) enum PondCommand {
    /// The pond's members and how to reach them (`--json`: Crabbox's shape).
    Peers(PeersArgs),
    /// Release every lease of the pond, dependents first ("not found" counts as released).
    Release(ReleaseArgs),
    /// Build the SSH mesh: one `ssh -N -L` per member with exposed ports, local
    /// ports 51820..52819 stable per (peer, port), `hosts` and `env` in the
    /// pond's directory. Blocks until interrupted, unless --export or --json.
    Connect(ConnectArgs),
    /// Stop the tunnels `pond connect --export` started (each pid is checked first).
    Disconnect {
        /// The pond.
        name: String,
    },
    /// Show who holds the pond's apply lock; with --force, stop the holder if it runs on this
    /// host (local state) or break the lock (PostgreSQL state: CRABBOX_STATE_URL).
    Unlock {
        /// The pond.
        name: String,
        /// Local state: send SIGTERM to the holding process (only when it runs on this host).
        /// PostgreSQL state: delete the lock, whoever holds it.
        #[arg(long)]
        force: bool,
    },
}

/// The pond, as `--pond NAME` (Crabbox's `pond peers`) or positionally
/// (Crabbox's `pond connect`/`release`); and `--provider`.
#[derive(Debug, Args)]
pub(super) struct PondRef {
    /// The pond (instead of the positional name).
    #[arg(long = "pond", value_name = "NAME")]
    flag: Option<String>,
    /// Only this provider's members.
    #[arg(long, value_parser = parse_provider)]
    provider: Option<ProviderName>,
}

impl PondRef {
    /// The pond name: the flag or the positional words joined with a
    /// space (Crabbox joins `pond release`'s words, pond_bridge.go:167),
    /// normalized; a usage error (exit 2) when there is none, both, or it
    /// normalizes to nothing.
    fn name(&self, words: &[String], verb: &str) -> Result<String, ExitCode> {
        let joined = words.join(" ");
        let given = match (self.flag.as_deref(), joined.trim()) {
            (Some(flag), "") => flag.to_owned(),
            (None, words) if !words.is_empty() => words.to_owned(),
            (Some(_), _) => {
                anstream::eprintln!(
                    "error: the pond is named twice (--pond and a positional name)\n  usage: crabbox pond {verb} --pond <name>"
                );
                return Err(super::exit::code(USAGE));
            }
            (None, _) => {
                anstream::eprintln!("usage: crabbox pond {verb} --pond <name>");
                super::report::record(
                    "usage",
                    &format!("usage: crabbox pond {verb} --pond <name>"),
                    None,
                );
                return Err(super::exit::code(USAGE));
            }
        };
        checked_name(&given).map_err(|_| {
            super::report::error(
                "usage",
                &format!("`{given}` is not a usable pond name"),
                Some("at least one letter or digit, at most 41 characters after normalization"),
            );
            super::exit::code(USAGE)
        })
    }
}

#[derive(Debug, Args)]
pub(super) struct PeersArgs {
    /// The pond (Crabbox requires --pond; a positional name is accepted too).
    #[arg(value_name = "NAME")]
    name: Option<String>,
    #[command(flatten)]
    pond: PondRef,
    /// JSON output.
    #[arg(long)]
    pub(super) json: bool,
    /// Publish this port of every URL-bridge member (reusing a live share) and show
    /// its URL; 0 publishes nothing. Members without a URL bridge (SSH leases, local)
    /// are reached as before and say so.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16), value_name = "PORT")]
    share_port: u16,
    /// Lifetime of a share made by --share-port (60s to 7 days).
    #[arg(long, default_value = "24h", value_parser = super::imperative::parse_duration)]
    share_ttl: std::time::Duration,
}

#[derive(Debug, Args)]
pub(super) struct ReleaseArgs {
    /// The pond; several words are joined with a space, as Crabbox does.
    #[arg(value_name = "NAME")]
    words: Vec<String>,
    #[command(flatten)]
    pond: PondRef,
}

#[derive(Debug, Args)]
pub(super) struct ConnectArgs {
    /// The pond.
    #[arg(value_name = "NAME")]
    name: Option<String>,
    #[command(flatten)]
    pond: PondRef,
    /// Start the tunnels detached (recorded in daemon.json) and print `export` lines for `eval`.
    #[arg(long, conflicts_with = "json")]
    export: bool,
    /// Print {hostsPath, envPath, exports, forwards} and start no tunnels.
    #[arg(long)]
    pub(super) json: bool,
}

pub(super) fn run(cmd: &PondCommand) -> ExitCode {
    let result = match cmd {
        PondCommand::Peers(args) => args.pond.name(args.name.as_slice(), "peers").map(|name| {
            super::peers::peers(&super::peers::PeersArgs::for_pond(
                &name,
                args.json,
                args.pond.provider,
                (args.share_port != 0).then_some(args.share_port),
                args.share_ttl,
            ))
        }),
        PondCommand::Release(args) => args.pond.name(&args.words, "release").map(|name| match args
            .pond
            .provider
        {
            None => super::apply::destroy(&super::apply::DestroyArgs::for_pond(&name)),
            Some(provider) => release_provider(&name, provider),
        }),
        PondCommand::Connect(args) => args
            .pond
            .name(args.name.as_slice(), "connect")
            .map(|name| connect(&name, args.pond.provider, args.export, args.json)),
        PondCommand::Unlock { name, force } => Ok(unlock(name, *force)),
        PondCommand::Disconnect { name } => Ok(disconnect(name)),
    };
    result.unwrap_or_else(|code| code)
}

/// `pond release --provider P`: releases only that provider's leases of
/// the pond (each "not found" counts as released).
fn release_provider(pond: &str, provider: ProviderName) -> ExitCode {
    let Some(store) = super::engine::store(None) else {
        return failure();
    };
    let registry = super::engine::registry(&store);
    if let Err(e) = registry.get(provider) {
        return super::exit::provider_error("", &e);
    }
    let rt = super::engine::runtime();
    let inv = rt.block_on(crabbox_apply::discover::discover(
        pond,
        &[provider],
        &registry,
        &state_dir(),
        &store,
    ));
    let changes: Vec<MemberChange> = inv
        .leases
        .iter()
        .filter(|l| l.provider == provider)
        .map(|l| MemberChange {
            slug: l.slug().to_owned(),
            provider,
            action: Action::Delete,
            lease: Some(l.clone()),
            desired: None,
            attributes: Vec::new(),
            reasons: vec![format!("pond release --provider {provider}")],
            relabel: false,
            rerun_setup: false,
            commands_before: None,
        })
        .collect();
    if changes.is_empty() {
        println!("pond {pond:?} has no active {provider} leases");
        return ExitCode::SUCCESS;
    }
    anstream::eprintln!(
        "releasing pond {pond:?} ({} {provider} lease(s))",
        changes.len()
    );
    let p = Plan {
        pond: pond.to_owned(),
        changes,
        forget_claims: Vec::new(),
        unclaimed: Vec::new(),
        outputs: Vec::new(),
        warnings: Vec::new(),
    };
    super::imperative::run_small_plan(&rt, &p, None, &inv, registry, &store)
}

/// The pond's own directory (`~/.crabbox/pond/<pond>`), where the mesh lives.
pub(super) fn pond_dir(pond: &str) -> std::path::PathBuf {
    crabbox_state::state_dir::expand_tilde(&format!("~/.crabbox/pond/{pond}"))
}

fn connect(pond: &str, only: Option<ProviderName>, export: bool, json: bool) -> ExitCode {
    let pond = pond.to_owned();
    let Some(store) = super::engine::store(None) else {
        return failure();
    };
    let registry = super::engine::registry(&store);
    let rt = super::engine::runtime();
    let inv = rt.block_on(crabbox_apply::discover::discover(
        &pond,
        &[],
        &registry,
        &state_dir(),
        &store,
    ));
    let mut members = Vec::new();
    let mut skipped = std::collections::BTreeSet::new();
    for lease in inv
        .leases
        .iter()
        .filter(|l| only.is_none_or(|p| p == l.provider))
    {
        let Ok(provider) = registry.get(lease.provider) else {
            continue;
        };
        if !crabbox_core::provider::features_of(provider.name()).ssh {
            if skipped.insert(lease.provider) {
                anstream::eprintln!(
                    "skipping provider \"{}\" (no SSH-mesh capability)",
                    lease.provider
                );
            }
            continue;
        }
        let ports = lease.ports();
        if ports.is_empty() {
            continue;
        }
        match rt.block_on(provider.ssh_target(lease)) {
            Some(target) => members.push(mesh::MeshMember {
                slug: lease.slug().to_owned(),
                lease_id: lease.id.clone(),
                target,
                ports,
            }),
            None => anstream::eprintln!(
                "warning: no SSH address for {} ({}) yet",
                lease.slug(),
                lease.id
            ),
        }
    }
    let dir = pond_dir(&pond);
    let forwards = match mesh::assign_ports(&dir, &members) {
        Ok(f) => f,
        Err(e) => {
            super::report::error(
                "no-free-port",
                &e.to_string(),
                Some("free some local ports or disconnect other ponds"),
            );
            return super::exit::code(super::exit::REMOTE);
        }
    };
    if let Err(e) = mesh::write_files(&dir, &pond, &forwards) {
        super::report::error(
            "unwritable",
            &format!("writing {}: {e}", dir.display()),
            None,
        );
        return failure();
    }
    let exports = mesh::exports(&forwards);
    if json {
        super::report::printed_document();
        let v = serde_json::json!({
            "hostsPath": dir.join("hosts"), "envPath": dir.join("env"), "exports": exports, "forwards": forwards,
        });
        println!("{}", serde_json::to_string_pretty(&v).expect("JSON"));
        return ExitCode::SUCCESS;
    }
    if export {
        return match mesh::start_detached(&dir, &pond, &members, &forwards) {
            Ok(_) => {
                for line in &exports {
                    println!("{line}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                anstream::eprintln!("error: {e}");
                failure()
            }
        };
    }
    foreground(&pond, &members, &forwards, &exports)
}

/// Runs the tunnels in the foreground until a signal or until one of them exits.
fn foreground(
    pond: &str,
    members: &[mesh::MeshMember],
    forwards: &[mesh::Forward],
    exports: &[String],
) -> ExitCode {
    use std::os::unix::process::CommandExt as _;
    let mut children = Vec::new();
    for m in members {
        let mine: Vec<&mesh::Forward> = forwards
            .iter()
            .filter(|f| f.lease_id == m.lease_id)
            .collect();
        let mut cmd = mesh::tunnel_command(&m.target, &mine);
        cmd.process_group(0).stdin(std::process::Stdio::null());
        match cmd.spawn() {
            Ok(c) => children.push(c),
            Err(e) => {
                anstream::eprintln!("error: starting ssh for {}: {e}", m.slug);
                return failure();
            }
        }
    }
    println!(
        "pond \"{pond}\" SSH-mesh ready ({} forwards)",
        forwards.len()
    );
    for line in exports {
        println!("{line}");
    }
    // Wait for a signal (Crabbox tears down on INT, TERM, HUP and QUIT) or for any tunnel to exit.
    super::engine::runtime().block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut signals = Vec::new();
        for kind in [
            SignalKind::interrupt(),
            SignalKind::terminate(),
            SignalKind::hangup(),
            SignalKind::quit(),
        ] {
            if let Ok(s) = signal(kind) {
                signals.push(s);
            }
        }
        let any_signal =
            futures_util::future::select_all(signals.iter_mut().map(|s| Box::pin(s.recv())));
        let any_exit = async {
            while children
                .iter_mut()
                .all(|c| matches!(c.try_wait(), Ok(None)))
            {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        };
        tokio::select! {
            _ = any_signal => {}
            () = any_exit => anstream::eprintln!("a tunnel exited; tearing the mesh down"),
        }
    });
    for c in &mut children {
        if let Ok(pid) = libc::pid_t::try_from(c.id()) {
            // SAFETY: kill(2) on the process groups of our own children.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        let _ = c.wait();
    }
    hand_back(&pond_dir(pond))
}

/// Gives `hosts`/`env` back to the renderer once the tunnels are gone.
fn hand_back(dir: &std::path::Path) -> ExitCode {
    match mesh::hand_back(dir) {
        Ok(true) => {
            anstream::eprintln!(
                "removed the mesh's hosts and env from {}; `crabbox apply` or `crabbox render` writes the pond's own",
                dir.display()
            );
            ExitCode::SUCCESS
        }
        Ok(false) => ExitCode::SUCCESS,
        Err(e) => {
            anstream::eprintln!("error: {e}");
            failure()
        }
    }
}

fn disconnect(name: &str) -> ExitCode {
    let Ok(pond) = checked_name(name) else {
        anstream::eprintln!("error: `{name}` is not a usable pond name");
        return failure();
    };
    let dir = pond_dir(&pond);
    match mesh::stop(&dir) {
        Ok(n) => {
            println!(
                "pond \"{pond}\": stopped {n} tunnel{}",
                if n == 1 { "" } else { "s" }
            );
            hand_back(&dir)
        }
        Err(e) => {
            anstream::eprintln!("error: {e}");
            failure()
        }
    }
}

fn unlock(name: &str, force: bool) -> ExitCode {
    let Ok(pond) = checked_name(name) else {
        anstream::eprintln!("error: `{name}` is not a usable pond name");
        return failure();
    };
    let Some(store) = super::engine::store(None) else {
        return failure();
    };
    let rt = super::engine::runtime();
    if store.database().is_some() {
        return unlock_shared(&rt, &store, &pond, force);
    }
    match rt.block_on(lock::status(&store, &pond)) {
        Ok(None) => {
            println!("pond `{pond}` is not locked");
            ExitCode::SUCCESS
        }
        Ok(Some(holder)) => {
            let here = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_default();
            match holder {
                Some(h) if force && h.host == here => {
                    // SAFETY: kill(2) with a pid read from our own lock file; no memory is involved.
                    let r = unsafe {
                        libc::kill(libc::pid_t::try_from(h.pid).unwrap_or(0), libc::SIGTERM)
                    };
                    if r == 0 {
                        println!("sent SIGTERM to {h}; the lock is released when it exits");
                        ExitCode::SUCCESS
                    } else {
                        anstream::eprintln!(
                            "error: could not signal pid {}: {}",
                            h.pid,
                            std::io::Error::last_os_error()
                        );
                        failure()
                    }
                }
                Some(h) => {
                    anstream::eprintln!(
                        "error: pond `{pond}` is locked by {h}\n  help: the lock is released when that process exits; {}",
                        if h.host == here {
                            "pass --force to stop it"
                        } else {
                            "stop it on its host"
                        }
                    );
                    failure()
                }
                None => {
                    anstream::eprintln!(
                        "error: pond `{pond}` is locked by a process that recorded no details\n  help: the lock is released when that process exits"
                    );
                    failure()
                }
            }
        }
        Err(e) => {
            anstream::eprintln!("error: cannot read the lock of pond `{pond}`: {e}");
            failure()
        }
    }
}

/// `pond unlock` with the PostgreSQL state backend: the lock is a row with a
/// TTL, broken by deleting it.
fn unlock_shared(
    rt: &tokio::runtime::Runtime,
    store: &ClaimStore,
    pond: &str,
    force: bool,
) -> ExitCode {
    let describe = |h: Option<lock::Holder>| {
        h.map_or_else(
            || "a holder that recorded no details".to_owned(),
            |h| h.to_string(),
        )
    };
    if force {
        return match rt.block_on(lock::break_lock(store, pond)) {
            Ok(None) => {
                println!("pond `{pond}` is not locked");
                ExitCode::SUCCESS
            }
            Ok(Some(holder)) => {
                println!(
                    "broke the lock of pond `{pond}`, held by {}",
                    describe(holder)
                );
                anstream::eprintln!(
                    "note: if that process still runs, it finds its lock gone at its next renewal and warns"
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                anstream::eprintln!("error: cannot break the lock of pond `{pond}`: {e}");
                failure()
            }
        };
    }
    match rt.block_on(lock::lease_status(store, pond)) {
        Ok(None) => {
            println!("pond `{pond}` is not locked");
            ExitCode::SUCCESS
        }
        Ok(Some((holder, left))) => {
            anstream::eprintln!(
                "error: pond `{pond}` is locked by {}\n  help: the lock is released when that process finishes; if it died, the lock expires in {}s; pass --force to break it now",
                describe(holder),
                left.as_secs()
            );
            failure()
        }
        Err(e) => {
            anstream::eprintln!("error: cannot read the lock of pond `{pond}`: {e}");
            failure()
        }
    }
}

impl SpecArgs {
    /// Spec args that point at no file (for commands given `--pond NAME`).
    pub(super) fn none() -> Self {
        Self {
            file: std::path::PathBuf::from("/nonexistent/crabbox/pond.yaml"),
            vars: Vec::new(),
        }
    }
}
