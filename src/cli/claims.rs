//! `crabbox claims [list] [--json] [--verify]`: the local claims as
//! Crabbox's `claims list` prints them (claims.go:14-200), exit 2 when a
//! claim file is malformed. `--verify` (ours) asks the providers and marks
//! the claims whose lease no longer exists ("dangling").

use std::collections::BTreeSet;
use std::path::Path;
use std::process::ExitCode;

use clap::Args;
use serde::Serialize;

use super::engine::{registry, runtime, store};
use super::exit::{self, USAGE};
use super::lookup::inventories;
use crabbox_state::claims::{Claim, ClaimProblem};

#[derive(Debug, Args)]
pub(super) struct ClaimsArgs {
    /// `list` (Crabbox's only `claims` subcommand; the default).
    #[arg(value_parser = ["list"], value_name = "list")]
    verb: Option<String>,
    /// Crabbox's JSON document: {version, source, claims, problems}.
    #[arg(long)]
    pub(super) json: bool,
    /// Ask the providers which claims still have a lease; marks the others
    /// `dangling` (text: a `dangling: true` line; JSON: a `dangling` key
    /// per claim, beyond Crabbox's shape).
    #[arg(long)]
    verify: bool,
}

/// `localClaimView` (claims.go:28-39), keys in its order; none omitempty.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ClaimView {
    lease_id: String,
    slug: String,
    provider: String,
    repo_root: String,
    pond: String,
    #[serde(rename = "targetOS")]
    target_os: String,
    windows_mode: String,
    claimed_at: String,
    last_used_at: String,
    idle_timeout_seconds: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    dangling: Option<bool>,
}

/// `localClaimProblem` (claims.go:41-45).
#[derive(Debug, Serialize)]
struct ProblemView {
    file: String,
    code: &'static str,
    message: String,
}

/// `localClaimsListOutput` (claims.go:21-26).
#[derive(Debug, Serialize)]
struct Document {
    version: u32,
    source: &'static str,
    claims: Vec<ClaimView>,
    problems: Vec<ProblemView>,
}

/// At most this many problems, the last one saying how many were left
/// out (claims.go:17, 120-126).
const MAX_PROBLEMS: usize = 100;
/// Crabbox's inventory limit on a claim file (claims.go:154).
const MAX_CLAIM_BYTES: u64 = 1 << 20;

/// Crabbox's problem code of a claim file that could not be used, found by
/// looking at the file itself (claims.go:147-164).
fn problem_code(path: &Path) -> &'static str {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return "read_error";
    };
    if !meta.is_file() {
        return "non_regular_file";
    }
    if meta.len() > MAX_CLAIM_BYTES {
        return "claim_too_large";
    }
    let Ok(text) = std::fs::read(path) else {
        return "read_error";
    };
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(&text) else {
        return "invalid_json";
    };
    let stem = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".json"))
        .unwrap_or_default();
    match value.get("leaseID").and_then(serde_json::Value::as_str) {
        None | Some("") => "empty_lease_id",
        Some(id) if id != stem => "lease_id_mismatch",
        // Parsed as JSON with the right ID, yet not a claim (a field of the wrong type).
        Some(_) => "invalid_json",
    }
}

fn problem_message(code: &str) -> &'static str {
    match code {
        "invalid_json" => "claim file is not valid JSON",
        "claim_too_large" => "claim file exceeds the 1 MiB inventory limit",
        "empty_lease_id" => "claim file has a missing or empty leaseId",
        "lease_id_mismatch" => "claim filename and payload leaseId do not match",
        "read_error" => "claim file could not be read",
        "non_regular_file" => "claim path is not a regular file",
        _ => "claim file is invalid",
    }
}

fn problem_views(problems: &[ClaimProblem]) -> Vec<ProblemView> {
    let mut out: Vec<ProblemView> = problems
        .iter()
        .map(|p| {
            let code = problem_code(&p.path);
            ProblemView {
                file: p
                    .path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                code,
                message: problem_message(code).to_owned(),
            }
        })
        .collect();
    out.sort_by(|a, b| (&a.file, a.code).cmp(&(&b.file, b.code)));
    if out.len() > MAX_PROBLEMS {
        let omitted = out.len() - (MAX_PROBLEMS - 1);
        out.truncate(MAX_PROBLEMS - 1);
        out.push(ProblemView {
            file: String::new(),
            code: "problems_truncated",
            message: format!("{omitted} additional malformed claim files omitted"),
        });
    }
    out
}

fn text_field(claim: &Claim, key: &str) -> String {
    claim
        .extra
        .get(key)
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// Go's `strconv.QuoteToGraphic` for the values claims hold.
fn quoted(s: &str) -> String {
    serde_json::to_string(s).expect("a string")
}

pub(super) fn claims(args: &ClaimsArgs) -> ExitCode {
    // `list` is the only verb (clap refuses any other), and the default.
    debug_assert!(args.verb.as_deref().is_none_or(|v| v == "list"));
    let Some(store) = store(None) else {
        return exit::code(1);
    };
    let rt = runtime();
    let (claims, problems) = match rt.block_on(store.load_all()) {
        Ok(loaded) => loaded,
        Err(e) => {
            super::report::error(
                "state-unreadable",
                &format!("the claim store could not be read: {e}"),
                Some("check CRABBOX_STATE_URL / the state directory and try again"),
            );
            return exit::code(1);
        }
    };
    let dangling: Option<BTreeSet<String>> = args.verify.then(|| {
        let registry = registry(&store);
        let ponds: BTreeSet<String> = claims.iter().map(|c| c.pond.clone()).collect();
        let invs = rt.block_on(inventories(&ponds, None, &registry, &store));
        for inv in &invs {
            for why in inv.unobserved() {
                anstream::eprintln!(
                    "warning: pond {}: {why}; its claims are not verified",
                    inv.pond
                );
            }
        }
        invs.iter()
            .flat_map(|inv| inv.dangling_claims.iter().map(|c| c.lease_id.clone()))
            .collect()
    });
    let mut views: Vec<ClaimView> = claims
        .iter()
        .map(|c| ClaimView {
            lease_id: c.lease_id.clone(),
            slug: c.slug.clone(),
            provider: c.provider.clone(),
            repo_root: c.repo_root.clone(),
            pond: c.pond.clone(),
            target_os: text_field(c, "targetOS"),
            windows_mode: text_field(c, "windowsMode"),
            claimed_at: c.claimed_at.clone(),
            last_used_at: c.last_used_at.clone(),
            idle_timeout_seconds: c.idle_timeout_seconds,
            dangling: dangling.as_ref().map(|d| d.contains(&c.lease_id)),
        })
        .collect();
    views.sort_by(|a, b| {
        (&a.lease_id, &a.provider, &a.slug).cmp(&(&b.lease_id, &b.provider, &b.slug))
    });
    let doc = Document {
        version: 1,
        source: "local-claims",
        claims: views,
        problems: problem_views(&problems),
    };
    if args.json {
        super::report::printed_document();
        println!("{}", serde_json::to_string(&doc).expect("JSON"));
    } else {
        print_text(&doc);
    }
    if doc.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        exit::code(USAGE)
    }
}

/// Crabbox's text rendering (claims.go:167-200).
fn print_text(doc: &Document) {
    println!("Local claims (unverified local state; provider backends were not queried)");
    if doc.claims.is_empty() {
        println!("No valid local claims found.");
    }
    for c in &doc.claims {
        println!("- leaseId: {}", quoted(&c.lease_id));
        println!("  slug: {}", quoted(&c.slug));
        println!("  provider: {}", quoted(&c.provider));
        println!("  repoRoot: {}", quoted(&c.repo_root));
        println!("  pond: {}", quoted(&c.pond));
        println!("  targetOS: {}", quoted(&c.target_os));
        println!("  windowsMode: {}", quoted(&c.windows_mode));
        println!("  claimedAt: {}", quoted(&c.claimed_at));
        println!("  lastUsedAt: {}", quoted(&c.last_used_at));
        println!("  idleTimeoutSeconds: {}", c.idle_timeout_seconds);
        if let Some(d) = c.dangling {
            println!("  dangling: {d}");
        }
    }
    if !doc.problems.is_empty() {
        println!("Problems:");
        for p in &doc.problems {
            if p.file.is_empty() {
                println!("- {} ({})", p.message, p.code);
            } else {
                println!("- {}: {} ({})", quoted(&p.file), p.message, p.code);
            }
        }
    }
}
