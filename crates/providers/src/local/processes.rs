//! The processes of local leases: process groups signalled and waited for,
//! `/proc` read to find what a lease left running.

use super::*;

/// Sends `signal` to process group `pgid`; false when there is no such group.
pub(super) fn kill_group(pgid: i32, signal: i32) -> bool {
    if pgid <= 1 {
        return false;
    }
    // SAFETY: killpg(2) only takes integers and touches no memory.
    unsafe { libc::killpg(pgid, signal) == 0 }
}

/// Sends `signal` to one process.
fn kill_pid(pid: i32, signal: i32) -> bool {
    if pid <= 1 {
        return false;
    }
    // SAFETY: kill(2) only takes integers and touches no memory.
    unsafe { libc::kill(pid, signal) == 0 }
}

/// Whether `/proc` can be used to inspect processes.
fn have_proc() -> bool {
    Path::new("/proc/self/stat").exists()
}

/// A process's state, parent and process group, from `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy)]
pub(super) struct ProcStat {
    pub(super) state: char,
    pub(super) ppid: i32,
    pub(super) pgrp: i32,
}

pub(super) fn proc_stat(process: i32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{process}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain anything.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some(ProcStat { state, ppid, pgrp })
}

fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Members of process group `pgid` (zombies included).
pub(super) fn group_members(pgid: i32) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|pid| proc_stat(*pid).is_some_and(|s| s.pgrp == pgid))
        .collect()
}

/// Whether process `pid` was started by crabbox for `lease_id`.
pub(super) fn carries_marker(pid: i32, lease_id: &str) -> bool {
    let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let marker = format!("{ENV_LEASE_ID}={lease_id}");
    environ
        .split(|b| *b == 0)
        .any(|var| var == marker.as_bytes())
}

/// Whether group `pgid` still exists and belongs to `lease_id`. Without
/// `/proc` the pid file is trusted.
fn group_is_ours(pgid: i32, lease_id: &str) -> bool {
    if !have_proc() {
        return kill_group(pgid, 0);
    }
    carries_marker(pgid, lease_id)
        || group_members(pgid)
            .into_iter()
            .any(|pid| carries_marker(pid, lease_id))
}

/// Whether group `pgid` has a live (not zombie) member.
fn group_alive(pgid: i32) -> bool {
    if have_proc() {
        group_members(pgid)
            .into_iter()
            .any(|pid| proc_stat(pid).is_some_and(|s| s.state != 'Z'))
    } else {
        kill_group(pgid, 0)
    }
}

/// Polls `alive` until it turns false or `limit` passes; true when it did.
async fn wait_until_gone(limit: Duration, mut alive: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if !alive() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Stops the service recorded in `pid_file` (SIGTERM to its group, SIGKILL
/// after [`STOP_GRACE`]) if it is still ours, then removes the file.
pub(super) async fn stop_pid_file(pid_file: &Path, lease_id: &str) -> Result<(), ProviderError> {
    let text = match std::fs::read_to_string(pid_file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(failed(pid_file, &e)),
    };
    if let Ok(pgid) = text.trim().parse::<i32>()
        && pgid > 1
        && group_is_ours(pgid, lease_id)
    {
        kill_group(pgid, libc::SIGTERM);
        if !wait_until_gone(STOP_GRACE, || group_alive(pgid)).await {
            kill_group(pgid, libc::SIGKILL);
            wait_until_gone(KILL_GRACE, || group_alive(pgid)).await;
        }
        // Give the leader's reaper a moment, so `/proc/<pid>` is gone when we return.
        wait_until_gone(ZOMBIE_GRACE, || proc_stat(pgid).is_some()).await;
    }
    match std::fs::remove_file(pid_file) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(failed(pid_file, &e)),
    }
}

/// This process and its ancestors: never killed, even if crabbox itself
/// runs inside a lease's command.
fn self_and_ancestors() -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    let mut pid = i32::try_from(std::process::id()).unwrap_or(0);
    while pid > 1 && out.insert(pid) {
        match proc_stat(pid) {
            Some(stat) => pid = stat.ppid,
            None => break,
        }
    }
    out
}

/// SIGKILLs every live process carrying `lease_id`'s marker and waits for them to go.
pub(super) async fn kill_marked(lease_id: &str) {
    if !have_proc() {
        return;
    }
    let spared = self_and_ancestors();
    let marked = || -> Vec<i32> {
        all_pids()
            .into_iter()
            .filter(|pid| {
                !spared.contains(pid)
                    && proc_stat(*pid).is_some_and(|s| s.state != 'Z')
                    && carries_marker(*pid, lease_id)
            })
            .collect()
    };
    let victims = marked();
    if victims.is_empty() {
        return;
    }
    for pid in &victims {
        kill_pid(*pid, libc::SIGKILL);
    }
    wait_until_gone(KILL_GRACE, || {
        victims
            .iter()
            .any(|pid| proc_stat(*pid).is_some_and(|s| s.state != 'Z'))
    })
    .await;
}
