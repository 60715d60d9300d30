//! The `blacksmith` CLI's command lines and output, as Crabbox uses them
//! (`internal/providers/blacksmith/helpers.go`): the argv of each
//! `testbox` verb, the `tbx_…` ID in any output, the `list` table, and the
//! markers a `run` prints around the repository sync it does itself.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// The Testbox ID prefix.
pub const ID_PREFIX: &str = "tbx_";

/// `list` statuses of a Testbox that runs commands (Crabbox's `Ready`).
pub const READY_STATES: [&str; 2] = ["ready", "running"];
/// `list` statuses of a Testbox that is over (Crabbox's doctor counts
/// every other status as active).
pub const DONE_STATES: [&str; 6] = [
    "completed",
    "cancelled",
    "canceled",
    "failed",
    "released",
    "stopped",
];

/// What one member's block makes of the CLI's flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warmup {
    /// `--org`, before `testbox` on every call.
    pub org: Option<String>,
    /// The workflow file, name or ID.
    pub workflow: String,
    /// `--job`.
    pub job: Option<String>,
    /// `--ref`.
    pub git_ref: Option<String>,
    /// `--idle-timeout`, whole minutes rounded up.
    pub idle_minutes: u64,
}

/// `[--org ORG] testbox`: how every call starts.
#[must_use]
pub fn base(org: Option<&str>) -> Vec<String> {
    let mut args = Vec::new();
    if let Some(org) = org {
        args.extend(["--org".to_owned(), org.to_owned()]);
    }
    args.push("testbox".to_owned());
    args
}

/// `[--org O] testbox warmup <workflow> [--job J] [--ref R]
/// --ssh-public-key <key> --idle-timeout <minutes>`.
#[must_use]
pub fn warmup_args(w: &Warmup, public_key: &str) -> Vec<String> {
    let mut args = base(w.org.as_deref());
    args.extend(["warmup".to_owned(), w.workflow.clone()]);
    if let Some(job) = &w.job {
        args.extend(["--job".to_owned(), job.clone()]);
    }
    if let Some(r) = &w.git_ref {
        args.extend(["--ref".to_owned(), r.clone()]);
    }
    args.extend([
        "--ssh-public-key".to_owned(),
        public_key.trim().to_owned(),
        "--idle-timeout".to_owned(),
        w.idle_minutes.to_string(),
    ]);
    args
}

/// `[--org O] testbox run --id <id> --ssh-private-key <path> [--debug] "<command>"`.
#[must_use]
pub fn run_args(
    org: Option<&str>,
    id: &str,
    key: Option<&str>,
    debug: bool,
    command: &str,
) -> Vec<String> {
    let mut args = base(org);
    args.extend(["run".to_owned(), "--id".to_owned(), id.to_owned()]);
    if let Some(key) = key {
        args.extend(["--ssh-private-key".to_owned(), key.to_owned()]);
    }
    if debug {
        args.push("--debug".to_owned());
    }
    args.push(command.trim_end_matches([' ', '\t', '\r', '\n']).to_owned());
    args
}

/// `[--org O] testbox stop --id <id>`.
#[must_use]
pub fn stop_args(org: Option<&str>, id: &str) -> Vec<String> {
    let mut args = base(org);
    args.extend(["stop".to_owned(), "--id".to_owned(), id.to_owned()]);
    args
}

/// `[--org O] testbox list`.
#[must_use]
pub fn list_args(org: Option<&str>) -> Vec<String> {
    let mut args = base(org);
    args.push("list".to_owned());
    args
}

/// Minutes, rounded up, at least one (Crabbox's `DurationMinutesCeil`).
#[must_use]
pub fn minutes_ceil(d: Duration) -> u64 {
    d.as_secs().div_ceil(60).max(1)
}

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// The first Testbox ID in `text`: Crabbox's `\btbx_[A-Za-z0-9_-]+\b`.
#[must_use]
pub fn find_id(text: &str) -> Option<&str> {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(at) = text[from..].find(ID_PREFIX).map(|i| i + from) {
        from = at + ID_PREFIX.len();
        if at > 0 && is_word(bytes[at - 1]) {
            continue;
        }
        let mut end = from;
        while end < bytes.len() && (is_word(bytes[end]) || bytes[end] == b'-') {
            end += 1;
        }
        // `\b` at the end: a trailing `-` run is given back.
        while end > from && bytes[end - 1] == b'-' {
            end -= 1;
        }
        if end > from {
            return Some(&text[at..end]);
        }
    }
    None
}

/// Whether `s` is exactly one Testbox ID.
#[must_use]
pub fn is_id(s: &str) -> bool {
    find_id(s) == Some(s)
}

/// One row of `testbox list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// `tbx_…`.
    pub id: String,
    /// `queued`, `hydrating`, `ready`, `running`, `stopped`…
    pub status: String,
    /// The repository.
    pub repo: String,
    /// The workflow.
    pub workflow: String,
}

impl Row {
    /// Whether the Testbox runs commands.
    #[must_use]
    pub fn is_ready(&self) -> bool {
        READY_STATES
            .iter()
            .any(|s| self.status.eq_ignore_ascii_case(s))
    }

    /// Whether the Testbox is over.
    #[must_use]
    pub fn is_done(&self) -> bool {
        DONE_STATES
            .iter()
            .any(|s| self.status.eq_ignore_ascii_case(s))
    }
}

/// The rows of `testbox list`: whitespace-separated lines of at least 7
/// fields (`ID STATUS REPO WORKFLOW JOB REF CREATED`) whose first field is
/// a Testbox ID; the header and anything else are skipped, as Crabbox does.
#[must_use]
pub fn parse_list(lines: &[String]) -> Vec<Row> {
    lines
        .iter()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 7 || fields[0] == "ID" || find_id(fields[0]).is_none() {
                return None;
            }
            Some(Row {
                id: fields[0].to_owned(),
                status: fields[1].to_owned(),
                repo: fields[2].to_owned(),
                workflow: fields[3].to_owned(),
            })
        })
        .collect()
}

/// Whether `line` starts with `prefix` (ASCII case-insensitively, after
/// leading whitespace) followed by a word boundary when `bounded`.
fn starts(line: &str, prefix: &str, bounded: bool) -> bool {
    let line = line.trim_start();
    line.len() >= prefix.len()
        && line.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
        && (!bounded
            || line
                .as_bytes()
                .get(prefix.len())
                .is_none_or(|c| !is_word(*c)))
}

/// `Syncing...` or `Syncing from repo root:` (Crabbox's sync-start pattern).
#[must_use]
pub fn is_sync_start(line: &str) -> bool {
    starts(line, "Syncing...", false) || starts(line, "Syncing from repo root:", false)
}

/// `Changes synced in`, `No changes to sync` or `Sync complete` (the end).
#[must_use]
pub fn is_sync_done(line: &str) -> bool {
    ["Changes synced in", "No changes to sync", "Sync complete"]
        .iter()
        .any(|p| starts(line, p, true))
}

/// When the sync a `run` is doing started, if one is under way: the CLI
/// must report it finished within the guard's time, or the run is killed
/// (Crabbox's `blacksmithSyncTracker`).
#[derive(Debug, Clone, Default)]
pub struct SyncTracker {
    since: Arc<Mutex<Option<Instant>>>,
}

impl SyncTracker {
    /// Reads one output line.
    pub fn observe(&self, line: &str) {
        let mut since = self
            .since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if is_sync_start(line) {
            since.get_or_insert_with(Instant::now);
        } else if is_sync_done(line) {
            *since = None;
        }
    }

    /// Whether a sync started at least `limit` ago and has not finished.
    #[must_use]
    pub fn stalled(&self, limit: Duration) -> bool {
        self.since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|t| t.elapsed() >= limit)
    }
}

/// The sync guard's limit: `CRABBOX_BLACKSMITH_SYNC_TIMEOUT_MS`, else
/// `OPENCLAW_TESTBOX_SYNC_TIMEOUT_MS` (milliseconds, `0` disables it), else 5
/// minutes.
#[must_use]
pub fn sync_timeout(var: impl Fn(&str) -> Option<String>) -> Option<Duration> {
    for key in [
        "CRABBOX_BLACKSMITH_SYNC_TIMEOUT_MS",
        "OPENCLAW_TESTBOX_SYNC_TIMEOUT_MS",
    ] {
        if let Some(ms) = var(key).and_then(|v| v.trim().parse::<u64>().ok()) {
            return (ms > 0).then(|| Duration::from_millis(ms));
        }
    }
    Some(Duration::from_secs(5 * 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(str::to_owned).collect()
    }

    #[test]
    fn ids_are_found_as_crabbox_matches_them() {
        assert_eq!(find_id("ready tbx_abc123\n"), Some("tbx_abc123"));
        assert_eq!(find_id("queued tbx_leaked123"), Some("tbx_leaked123"));
        assert_eq!(find_id("id=tbx_a-b_c."), Some("tbx_a-b_c"));
        assert_eq!(find_id("tbx_ab-- next"), Some("tbx_ab"));
        assert_eq!(find_id("xtbx_nope tbx_yes"), Some("tbx_yes"));
        for none in ["", "tbx_", "tbx_-", "no id here", "mytbx_1"] {
            assert_eq!(find_id(none), None, "{none:?}");
        }
        assert!(is_id("tbx_123") && !is_id("tbx_123 ") && !is_id("cbx_0123456789ab"));
    }

    #[test]
    fn list_rows_need_seven_fields_and_an_id() {
        let rows = parse_list(&lines(
            "ID STATUS REPO WORKFLOW JOB REF CREATED\n\
             tbx_123 ready my-app .github/workflows/testbox.yml test main 2026-05-06T00:00:00Z\n\
             tbx_456 queued my-app wf test main\n\
             note: something 1 2 3 4 5 6\n\
             tbx_789 stopped my-app wf test main 2026-05-06T00:00:00Z extra\n",
        ));
        assert_eq!(
            rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["tbx_123", "tbx_789"]
        );
        assert!(rows[0].is_ready() && !rows[0].is_done());
        assert_eq!(rows[0].repo, "my-app");
        assert_eq!(rows[0].workflow, ".github/workflows/testbox.yml");
        assert!(rows[1].is_done());
    }

    #[test]
    fn argv_shapes_are_crabboxs() {
        let w = Warmup {
            org: Some("acme".into()),
            workflow: ".github/workflows/testbox.yml".into(),
            job: Some("test".into()),
            git_ref: None,
            idle_minutes: 30,
        };
        assert_eq!(
            warmup_args(&w, "ssh-ed25519 AAAA crabbox x\n"),
            [
                "--org",
                "acme",
                "testbox",
                "warmup",
                ".github/workflows/testbox.yml",
                "--job",
                "test",
                "--ssh-public-key",
                "ssh-ed25519 AAAA crabbox x",
                "--idle-timeout",
                "30"
            ]
        );
        assert_eq!(
            run_args(None, "tbx_1", Some("/k/id_ed25519"), true, "make test \n"),
            [
                "testbox",
                "run",
                "--id",
                "tbx_1",
                "--ssh-private-key",
                "/k/id_ed25519",
                "--debug",
                "make test"
            ]
        );
        assert_eq!(
            stop_args(None, "tbx_1"),
            ["testbox", "stop", "--id", "tbx_1"]
        );
        assert_eq!(list_args(Some("o")), ["--org", "o", "testbox", "list"]);
        assert_eq!(minutes_ceil(Duration::from_secs(61)), 2);
        assert_eq!(minutes_ceil(Duration::from_secs(0)), 1);
    }

    #[test]
    fn sync_markers_match_crabboxs_patterns() {
        assert!(is_sync_start("Syncing from repo root: /repo"));
        assert!(is_sync_start("  syncing..."));
        assert!(!is_sync_start("Syncing"));
        assert!(is_sync_done("Changes synced in 2.4s"));
        assert!(is_sync_done("No changes to sync"));
        assert!(is_sync_done("sync complete."));
        assert!(!is_sync_done("Sync completely broken"));
        assert!(!is_sync_done("Changes synced"));
        let t = SyncTracker::default();
        assert!(!t.stalled(Duration::ZERO));
        t.observe("Syncing from repo root: /repo");
        assert!(t.stalled(Duration::ZERO));
        t.observe("Changes synced in 0.1s");
        assert!(!t.stalled(Duration::ZERO));
    }

    #[test]
    fn the_sync_guard_reads_crabboxs_variables() {
        let none = |_: &str| None;
        assert_eq!(sync_timeout(none), Some(Duration::from_secs(300)));
        assert_eq!(
            sync_timeout(|k| (k == "CRABBOX_BLACKSMITH_SYNC_TIMEOUT_MS").then(|| "250".into())),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            sync_timeout(|k| (k == "OPENCLAW_TESTBOX_SYNC_TIMEOUT_MS").then(|| "0".into())),
            None
        );
    }
}
