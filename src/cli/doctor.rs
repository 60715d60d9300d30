//! `crabbox doctor --pond NAME`: is the pond's network in order?
//!
//! Two kinds of checks, each a line of Crabbox's doctor output (`status
//! check message`, or with `--json` Crabbox's `{"ok", "provider",
//! "checks"}` document):
//!
//! - `pond`: the tailnet policy holds the pond's ACL rows (Crabbox's
//!   `doctorPondSummary`, read-only: the rows to add are printed when they
//!   are missing). Skipped — not failed — when no member is on a provider
//!   that can join a tailnet, when `TS_API_KEY` is not set, or when the
//!   control plane has no policy API (Headscale).
//! - `reach`: from every member, each other member's exposed ports at the
//!   address the pond gives it (`CRABBOX_POND_<PEER>_<PORT>`, over the
//!   peer's primary plane: tailnet, URL bridge, SSH host or loopback), tried
//!   from inside the member through its session — the path the member's own
//!   programs take. Crabbox has this matrix but never runs it.
//!
//! Exit 1 when a check failed (Crabbox's "doctor found problems").

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use serde::Serialize;

use super::SpecArgs;
use super::engine::runtime;
use super::logs::Collect;
use crabbox_core::provider::ProviderError;
use crabbox_exec::remote_shell::quote;
use crabbox_exec::session::ExecRequest;
use crabbox_plan::inventory::Inventory;
use crabbox_providers::registry::Registry;
use crabbox_providers::tailnet::api::{TailnetApi, TailnetError};
use crabbox_providers::tailnet::{self, Settings, policy};
use crabbox_render::bridge::Capabilities;
use crabbox_render::peers::{Peer, peer_env};

#[derive(Debug, Args)]
pub(super) struct DoctorArgs {
    #[command(flatten)]
    spec: SpecArgs,
    /// The pond to check, by name (else the spec's).
    #[arg(long)]
    pond: Option<String>,
    /// Crabbox's doctor JSON on stdout: {"ok", "provider", "checks": [...]}.
    #[arg(long)]
    pub(super) json: bool,
}

/// One check, as Crabbox's `doctorJSONCheck` (doctor.go:23-29).
#[derive(Debug, Serialize)]
struct Check {
    status: &'static str,
    check: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    provider: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    message: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    details: BTreeMap<String, String>,
}

impl Check {
    fn new(status: &'static str, check: &'static str, message: String) -> Self {
        Self {
            status,
            check,
            provider: None,
            message,
            details: BTreeMap::new(),
        }
    }

    fn with(mut self, key: &str, value: &str) -> Self {
        self.details.insert(key.to_owned(), value.to_owned());
        self
    }
}

/// One path from a member to a peer's port.
#[derive(Debug, Clone)]
struct Path {
    from: String,
    to: String,
    port: u16,
    plane: String,
    address: String,
}

pub(super) fn doctor(args: &DoctorArgs) -> ExitCode {
    let rt = runtime();
    let (pond, inv, registry) =
        match super::peers::pond_inventory(&rt, &args.spec, args.pond.as_deref()) {
            Ok(found) => found,
            Err(code) => return code,
        };
    let peers = super::peers::peers_of(&pond, &inv, &registry);
    let mut checks = vec![rt.block_on(policy_check(&pond, &inv))];
    let paths = paths(&pond, &peers);
    let reached = rt.block_on(reach_all(&inv, &registry, &paths));
    checks.extend(reached);
    let ok = checks.iter().all(|c| c.status != "failed");
    if args.json {
        super::report::printed_document();
        let doc = serde_json::json!({ "ok": ok, "provider": "", "checks": checks });
        println!("{doc}");
    } else {
        print_human(&checks, paths.is_empty());
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        anstream::eprintln!("error: doctor found problems");
        super::exit::code(1)
    }
}

/// The `pond` check: the tailnet policy's rows for the pond's tag.
async fn policy_check(pond: &str, inv: &Inventory) -> Check {
    let owner = crabbox_providers::owner::owner().unwrap_or_default();
    let Some(tag) = crabbox_core::pond_tag::pond_tag(&owner, pond) else {
        return Check::new(
            "skip",
            "pond",
            format!("pond {pond:?}: no usable pond name"),
        );
    };
    let skip = |message: String, reason: &str| {
        Check::new("skip", "pond", message)
            .with("pond", pond)
            .with("tag", &tag)
            .with("reason", reason)
    };
    if inv.leases.is_empty() {
        return skip(
            format!(
                "pond {pond:?}: no members found; apply the pond before checking its Tailscale policy"
            ),
            "no_pond_members",
        );
    }
    // Crabbox's test (pondClaimProviderSummary): a provider with either
    // tailnet plane.
    if !inv.leases.iter().any(|l| {
        let caps = Capabilities::of(l.provider);
        caps.tailscale || caps.tailscale_egress
    }) {
        return skip(
            format!(
                "pond {pond:?}: no Tailscale-capable provider found; pond networking unavailable"
            ),
            "no_tailscale_capable_provider",
        );
    }
    let settings = Settings::from_process();
    let Some(api) = TailnetApi::new(&settings) else {
        return skip(
            format!("{} missing; skipped ACL verification", tailnet::API_KEY_VAR),
            "ts_api_key_missing",
        );
    };
    let failed = |message: String| {
        Check::new("failed", "pond", message)
            .with("pond", pond)
            .with("tag", &tag)
            .with("tailnet", &settings.tailnet)
    };
    match api.policy().await {
        Err(TailnetError::Unavailable(why)) => skip(
            format!(
                "pond {pond:?}: {why}; add the pond's rows by hand:\n{}",
                policy::snippet(&tag)
            ),
            "control_plane_incompatible",
        ),
        Err(e) => failed(format!("tailscale policy lookup failed: {e}")),
        Ok((body, _)) => match policy::rows(&body, &tag) {
            Ok(rows) if rows.complete() => Check::new(
                "ok",
                "pond",
                format!("pond {pond:?}: Tailscale plane auto-managed ({tag})"),
            )
            .with("pond", pond)
            .with("tag", &tag)
            .with("tailnet", &settings.tailnet)
            .with("mode", "auto-managed"),
            Ok(_) => failed(format!(
                "pond {pond:?}: tailnet policy row missing for {tag}. Set {} plus {}=1 to auto-install, or add:\n{}",
                tailnet::API_KEY_VAR,
                tailnet::BOOTSTRAP_VAR,
                policy::snippet(&tag)
            )),
            Err(e) => failed(format!("pond {pond:?}: {e}")),
        },
    }
}

/// Every (member, peer, port) pair of the pond, at the address the pond's
/// environment gives the member for that port.
fn paths(pond: &str, peers: &[Peer]) -> Vec<Path> {
    let env = peer_env(pond, peers);
    let mut out = Vec::new();
    for from in peers {
        for to in peers.iter().filter(|p| p.lease_id != from.lease_id) {
            for &port in &to.ports {
                let name = crabbox_render::peers::env_name(&to.slug, port);
                if let Some(address) = env.get(&name) {
                    out.push(Path {
                        from: from.slug.clone(),
                        to: to.slug.clone(),
                        port,
                        plane: to.transport.to_owned(),
                        address: address.clone(),
                    });
                }
            }
        }
    }
    out
}

/// Tries every path, each member's in one command run on it, the members
/// side by side.
async fn reach_all(inv: &Inventory, registry: &Registry, paths: &[Path]) -> Vec<Check> {
    let mut by_member: BTreeMap<&str, Vec<&Path>> = BTreeMap::new();
    for p in paths {
        by_member.entry(p.from.as_str()).or_default().push(p);
    }
    let probes = by_member.into_iter().map(|(from, paths)| async move {
        let lease = inv.leases.iter().find(|l| l.slug() == from);
        let outcome = match lease {
            None => Err(ProviderError::Failed(format!("{from} is not live"))),
            Some(lease) => match registry.get(lease.provider) {
                Err(e) => Err(e),
                Ok(provider) => {
                    let session = provider.session(lease);
                    let sink = Arc::new(Collect::default());
                    let request = ExecRequest {
                        command: probe_script(&paths),
                        timeout: Some(std::time::Duration::from_secs(60)),
                        ..ExecRequest::default()
                    };
                    session
                        .exec_unrecorded(&request, sink.clone())
                        .await
                        .map(|_| sink.take())
                }
            },
        };
        verdicts(&paths, outcome)
    });
    futures_util::future::join_all(probes)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// A check per path from the probe's lines (`ok N`, `down N`, `tool N`).
fn verdicts(paths: &[&Path], outcome: Result<Vec<String>, ProviderError>) -> Vec<Check> {
    paths
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (status, why) = match &outcome {
                Err(e) => (
                    "failed",
                    format!("could not run the probe on {}: {}", p.from, e.explained()),
                ),
                Ok(lines) => match lines.iter().find_map(|l| {
                    let (verdict, n) = l.split_once(' ')?;
                    (n.parse::<usize>().ok() == Some(i)).then_some(verdict)
                }) {
                    Some("ok") => ("ok", String::new()),
                    Some("tool") => (
                        "failed",
                        format!(
                            "{} has no python3, nc or bash to try the connection with",
                            p.from
                        ),
                    ),
                    _ => ("failed", "nothing answers there".to_owned()),
                },
            };
            let mut message = format!(
                "{} → {}:{} over {} ({})",
                p.from, p.to, p.port, p.plane, p.address
            );
            if !why.is_empty() {
                message = format!("{message}: {why}");
            }
            Check::new(status, "reach", message)
                .with("from", &p.from)
                .with("to", &p.to)
                .with("port", &p.port.to_string())
                .with("plane", &p.plane)
                .with("address", &p.address)
        })
        .collect()
}

/// A POSIX shell script trying each path's address from where it runs: a
/// TCP connection to `host:port` (python3, else nc, else bash's
/// `/dev/tcp`), or any HTTP answer from a URL. Prints `ok N`, `down N` or
/// `tool N` (nothing to try with) per path.
fn probe_script(paths: &[&Path]) -> String {
    let mut script = String::from(
        r#"reach() {
  case "$1" in
    http://*|https://*)
      if command -v curl >/dev/null 2>&1; then curl -s -o /dev/null --max-time 5 "$1"; return; fi
      if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import sys, urllib.request as u
try: u.urlopen(sys.argv[1], timeout=5)
except u.HTTPError: pass' "$1" 2>/dev/null; return
      fi
      return 127 ;;
  esac
  host=${1%:*}; port=${1##*:}; host=${host#[}; host=${host%]}
  if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 5).close()' "$host" "$port" 2>/dev/null; return
  fi
  if command -v nc >/dev/null 2>&1; then nc -z -w 5 "$host" "$port" 2>/dev/null; return; fi
  if command -v bash >/dev/null 2>&1; then timeout 5 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$host" "$port" 2>/dev/null; return; fi
  return 127
}
try() {
  reach "$2"; rc=$?
  if [ "$rc" -eq 0 ]; then echo "ok $1"; elif [ "$rc" -eq 127 ]; then echo "tool $1"; else echo "down $1"; fi
}
"#,
    );
    for (i, p) in paths.iter().enumerate() {
        script.push_str(&format!("try {i} {}\n", quote(&p.address)));
    }
    script
}

/// Crabbox's doctor lines, then the matrix as a table.
fn print_human(checks: &[Check], no_paths: bool) {
    for c in checks.iter().filter(|c| c.check != "reach") {
        println!("{:<7} {:<8} {}", c.status, c.check, c.message);
    }
    if no_paths {
        println!(
            "{:<7} {:<8} no member exposes a port to its peers: nothing to reach",
            "skip", "reach"
        );
        return;
    }
    let rows: Vec<[&str; 6]> = checks
        .iter()
        .filter(|c| c.check == "reach")
        .map(|c| {
            let d = |k: &str| c.details.get(k).map_or("", String::as_str);
            [
                d("from"),
                d("to"),
                d("port"),
                d("plane"),
                d("address"),
                c.status,
            ]
        })
        .collect();
    let header = ["FROM", "TO", "PORT", "PLANE", "ADDRESS", "REACH"];
    let widths: Vec<usize> = (0..6)
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in std::iter::once(header).chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
}
