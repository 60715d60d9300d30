//! Shell scripts run on a lease through any remote shell: quoting, env
//! export, detached services with pid files, stopping them, readiness probes.
//!
//! The SSH transport and the delegated providers (Islo's exec stream, the
//! Tensorlake CLI's `sbx exec`) all drive a POSIX shell on the lease and
//! send it the same scripts; only where the files live and how the script
//! reaches the shell differ, and those stay with each adapter.
//!
//! Background services follow one layout wherever they run: each service is
//! the leader of its own session and process group (`setsid`), its output is
//! appended to `<logs>/<name>.log`, its pid is recorded in `<pids>/<name>.pid`,
//! and every process started carries `CRABBOX_LEASE_ID=<lease ID>`, which is
//! checked through `/proc` before a recorded process group is signalled.

use std::fmt::Write as _;

use crabbox_core::labels;
use crabbox_core::provider::ProviderError;

/// Environment variable with the lease ID; also the marker that tells the
/// lease's own processes apart.
pub const ENV_LEASE_ID: &str = "CRABBOX_LEASE_ID";
/// Environment variable with the workspace path.
pub const ENV_WORKSPACE: &str = "CRABBOX_WORKSPACE";
/// crabbox's own state directory inside a delegated provider's workdir.
pub const STATE_DIR: &str = ".crabbox";
/// Background service output, under a service root.
pub const LOGS: &str = "logs";
/// Background service pid files, under a service root.
pub const PIDS: &str = "pids";
/// Time limit of one TCP or HTTP probe attempt on the lease, in seconds.
pub const PROBE_SECS: u32 = 5;
/// How long (as a `sleep` argument) a background service must survive to
/// count as started.
pub const STARTUP_CHECK: &str = "0.3";
/// Lines of a failed service's log shown in the error.
pub const LOG_TAIL_LINES: usize = 20;
/// Exit status of the start script when the service exited at once.
pub const EXITED_AT_ONCE: i32 = 90;
/// Exit status of a probe script when the lease has no tool for the probe.
pub const NO_PROBE_TOOL: i32 = 91;

/// `s` as one single-quoted shell word: `'` becomes `'\''`.
#[must_use]
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// `text`, unless it holds a NUL byte (which no shell word or argument can
/// carry).
///
/// # Errors
/// `text` contains a NUL byte; the message names it as `what`.
pub fn checked_text<'a>(what: &str, text: &'a str) -> Result<&'a str, ProviderError> {
    if text.contains('\0') {
        Err(ProviderError::Failed(format!("{what} contains a NUL byte")))
    } else {
        Ok(text)
    }
}

/// Environment variable names must be shell identifiers to be exported.
///
/// # Errors
/// `name` is empty, starts with a digit or holds anything but ASCII
/// letters, digits and `_`.
pub fn check_env_name(name: &str) -> Result<(), ProviderError> {
    let mut bytes = name.bytes();
    let ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ProviderError::Failed(format!(
            "invalid environment variable name `{name}`: use letters, digits and `_`, not starting with a digit"
        )))
    }
}

/// Service names become file names: no separators, no leading dot, at most
/// 128 bytes of `[A-Za-z0-9_.-]`.
///
/// # Errors
/// Any other name.
pub fn check_service_name(name: &str) -> Result<(), ProviderError> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ProviderError::Failed(format!(
            "invalid background service name `{name}`: only letters, digits, `_`, `-` and `.` are allowed"
        )))
    }
}

/// One `export NAME='value'` line per variable, in order.
///
/// # Errors
/// A name that is not a shell identifier, or a value with a NUL byte.
pub fn export_lines<'a>(
    vars: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<String, ProviderError> {
    let mut script = String::new();
    for (name, value) in vars {
        check_env_name(name)?;
        let value = checked_text(&format!("environment variable {name}"), value)?;
        // Writing to a String cannot fail.
        let _ = writeln!(script, "export {name}={}", quote(value));
    }
    Ok(script)
}

/// The script line of a probe command: `sh -c <command>` with no input and
/// its output discarded (only its exit status counts).
///
/// # Errors
/// The command contains a NUL byte.
pub fn probe_command_line(command: &str) -> Result<String, ProviderError> {
    Ok(format!(
        "sh -c {} </dev/null >/dev/null 2>&1\n",
        quote(checked_text("probe command", command)?)
    ))
}

/// Where a TCP probe connects: no host, `localhost` and `127.0.0.1` are the
/// lease's own loopback address.
///
/// # Errors
/// A host with a NUL byte.
pub fn probe_host(host: Option<&str>) -> Result<&str, ProviderError> {
    match host {
        None | Some("localhost" | "127.0.0.1") => Ok("127.0.0.1"),
        Some(other) => checked_text("probe host", other),
    }
}

/// A TCP probe of `host:port` with bash's `/dev/tcp` (limited to
/// [`PROBE_SECS`] when `timeout` exists): for leases known to have bash.
#[must_use]
pub fn bash_tcp_probe_script(host: &str, port: u16) -> String {
    format!(
        r#"t=
if command -v timeout >/dev/null 2>&1; then t="timeout {PROBE_SECS}"; fi
$t bash -c 'exec 3<>"/dev/tcp/$1/$2"' crabbox-probe {host} {port} >/dev/null 2>&1
"#,
        host = quote(host)
    )
}

/// An HTTP probe of `url` with curl, wget or python3: any 2xx/3xx answer
/// passes; without any of them the script says so on stderr, naming the
/// lease as `place` (`host`, `sandbox`), and exits [`NO_PROBE_TOOL`].
#[must_use]
pub fn http_probe_script(url: &str, place: &str) -> String {
    format!(
        r#"url={url}
if command -v curl >/dev/null 2>&1; then
  curl -fsS -o /dev/null --max-time {PROBE_SECS} "$url" >/dev/null 2>&1 && exit 0
  exit 1
fi
if command -v wget >/dev/null 2>&1; then
  wget -q -T {PROBE_SECS} -t 1 -O /dev/null "$url" >/dev/null 2>&1 && exit 0
  exit 1
fi
if command -v python3 >/dev/null 2>&1; then
  python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout={PROBE_SECS}).close()' "$url" >/dev/null 2>&1 && exit 0
  exit 1
fi
echo 'the {place} has none of curl, wget or python3 for an http ready check' >&2
exit {NO_PROBE_TOOL}
"#,
        url = quote(url)
    )
}

/// The `CRABBOX_LEASE_ID=<lease ID>` entry, quoted, that marks the lease's
/// processes (matched as a whole line of `/proc/<pid>/environ`).
#[must_use]
pub fn lease_marker(lease_id: &str) -> String {
    quote(&format!("{ENV_LEASE_ID}={lease_id}"))
}

/// Defines `crabbox_marked ENVIRON`: whether a process environment (one
/// variable per line)
/// carries both the lease's ID and its workspace. The ID alone is not enough:
/// a static host's lease ID is derived from the host (`static_<host>`), so
/// two ponds — two users, two checkouts — on one machine share it, and
/// stopping one must never kill the other's services. The workspace tells
/// them apart.
fn marked_function(lease_id: &str, workspace: &str) -> String {
    let lease = lease_marker(lease_id);
    let workspace = quote(&format!("{ENV_WORKSPACE}={workspace}"));
    format!(
        r#"crabbox_marked() {{
  printf '%s\n' "$1" | grep -qxF -- {lease} && printf '%s\n' "$1" | grep -qxF -- {workspace}
}}
"#
    )
}

/// Defines `crabbox_stop PIDFILE` (TERM the recorded process group, KILL it
/// after 5 s, remove the pid file), `crabbox_ours PID` (whether a process
/// belongs to the lease `lease_id` whose workspace is `workspace`) and
/// `crabbox_marked` (see [`marked_function`]).
///
/// A process whose environment cannot be read (gone, a zombie, or no
/// `/proc`) counts as ours: its process group ID cannot be reused while any
/// member of the group lives, so signalling the group is safe.
#[must_use]
pub fn stop_functions(lease_id: &str, workspace: &str) -> String {
    let marked = marked_function(lease_id, workspace);
    format!(
        r#"{marked}crabbox_ours() {{
  e=$(tr '\0' '\n' <"/proc/$1/environ" 2>/dev/null)
  [ -z "$e" ] && return 0
  crabbox_marked "$e"
}}
crabbox_stop() {{
  [ -f "$1" ] || return 0
  pid=$(cat -- "$1" 2>/dev/null)
  case $pid in
    ''|*[!0-9]*) rm -f -- "$1"; return 0 ;;
  esac
  if [ "$pid" -gt 1 ] && crabbox_ours "$pid"; then
    kill -s TERM -- "-$pid" 2>/dev/null
    i=0
    while [ "$i" -lt 50 ] && kill -s 0 -- "-$pid" 2>/dev/null; do
      sleep 0.1
      i=$((i + 1))
    done
    kill -s KILL -- "-$pid" 2>/dev/null
  fi
  rm -f -- "$1"
}}
"#
    )
}

/// Where a lease's background services keep their logs and pid files, as
/// the remote shell sees them (absolute, or relative to the script's
/// directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceDirs {
    /// Directory of `<name>.log` files.
    pub logs: String,
    /// Directory of `<name>.pid` files.
    pub pids: String,
}

impl ServiceDirs {
    /// `<root>/logs` and `<root>/pids`; a trailing `/` of `root` is dropped.
    #[must_use]
    pub fn under(root: &str) -> Self {
        let root = root.trim_end_matches('/');
        Self {
            logs: format!("{root}/{LOGS}"),
            pids: format!("{root}/{PIDS}"),
        }
    }

    /// The log file of service `name`.
    #[must_use]
    pub fn log(&self, name: &str) -> String {
        format!("{}/{name}.log", self.logs)
    }

    /// The pid file of service `name`.
    #[must_use]
    pub fn pid_file(&self, name: &str) -> String {
        format!("{}/{name}.pid", self.pids)
    }

    /// Script lines that call `crabbox_stop` (see [`stop_functions`]) for
    /// every recorded service.
    #[must_use]
    pub fn stop_all(&self) -> String {
        format!(
            "for f in {}/*.pid; do\n  [ -e \"$f\" ] || continue\n  crabbox_stop \"$f\"\ndone\n",
            quote(&self.pids)
        )
    }

    /// Script lines that start `command` as service `name`, detached in its
    /// own session with `shell` (`sh -c`, `bash -lc`), output appended to
    /// its log after a `--- <time> starting` header, pid recorded in its pid
    /// file; a service of the same name still running is stopped first.
    ///
    /// The script exits 0 when the service still runs [`STARTUP_CHECK`]
    /// seconds later. When it exited at once, the script prints its exit
    /// status and then the last [`LOG_TAIL_LINES`] lines it logged, and
    /// exits [`EXITED_AT_ONCE`] (read with [`early_exit`]). It needs
    /// [`stop_functions`] defined before it; the environment, and the
    /// directory relative paths start from, are the caller's.
    ///
    /// The name and command must have passed [`check_service_name`] and
    /// [`checked_text`].
    #[must_use]
    pub fn start_script(&self, name: &str, shell: &str, command: &str) -> String {
        let header = format!("--- {} starting `{name}`: $ {command}", labels::now_secs());
        format!(
            "mkdir -p -- {logs} {pids} || exit 1\n\
             crabbox_stop {pid_file}\n\
             log={log}\n\
             printf '%s\\n' {header} >>\"$log\" || exit 1\n\
             offset=$(wc -c <\"$log\" | tr -d ' ')\n\
             setsid {shell} {command} >>\"$log\" 2>&1 </dev/null &\n\
             pid=$!\n\
             echo \"$pid\" >{pid_file}.tmp && mv -f -- {pid_file}.tmp {pid_file} || exit 1\n\
             sleep {STARTUP_CHECK}\n\
             if kill -s 0 \"$pid\" 2>/dev/null; then exit 0; fi\n\
             wait \"$pid\"\n\
             status=$?\n\
             rm -f -- {pid_file}\n\
             echo \"$status\"\n\
             tail -c +\"$((offset + 1))\" \"$log\" | tail -n {LOG_TAIL_LINES}\n\
             exit {EXITED_AT_ONCE}\n",
            logs = quote(&self.logs),
            pids = quote(&self.pids),
            pid_file = quote(&self.pid_file(name)),
            log = quote(&self.log(name)),
            header = quote(&header),
            command = quote(command),
        )
    }
}

/// Script lines that run `command` (`sh -c`) as a tracked step: the leader
/// of its own session and process group, standard input from `/dev/null`,
/// output on the script's own, its pid recorded in `pid_file` while it runs.
/// The script exits with the command's status (128 + the signal when a
/// signal ended it).
///
/// The pid file is what lets a later run find and stop a step whose crabbox
/// died (SIGKILL, a lost connection) before re-running setup: such a step
/// would otherwise keep running beside its re-run. `pid_file`'s directory
/// must exist; the environment and working directory are the caller's.
/// The command must have passed [`checked_text`].
#[must_use]
pub fn tracked_command_script(pid_file: &str, command: &str) -> String {
    // The step records its own pid before it runs anything, so the file
    // exists for the whole life of the command (a stop that comes at any
    // moment finds it).
    let inner = format!(
        "echo $$ >{pf}.tmp && mv -f -- {pf}.tmp {pf} && exec sh -c \"$1\"",
        pf = quote(pid_file)
    );
    format!(
        "setsid sh -c {inner} sh {command} </dev/null &\n\
         pid=$!\n\
         wait \"$pid\"\n\
         status=$?\n\
         rm -f -- {pid_file}\n\
         exit \"$status\"\n",
        inner = quote(&inner),
        command = quote(command),
        pid_file = quote(pid_file),
    )
}

/// Script lines that stop every process an earlier run started on a lease
/// and left behind: each recorded process group in `pids` (services and
/// tracked steps, see [`ServiceDirs::stop_all`]), then every other process
/// carrying exactly the lease's marker (one started in the moment before its
/// pid was recorded, or that left its process group). Needs
/// [`stop_functions`] defined before it.
#[must_use]
pub fn stop_leftovers(dirs: &ServiceDirs, lease_id: &str) -> String {
    format!("{}{}", dirs.stop_all(), kill_marked(lease_id))
}

/// Script lines that kill every process (other than the running shell)
/// whose environment carries exactly the lease's marker and workspace (the
/// `crabbox_marked` of [`stop_functions`], which must be defined before).
#[must_use]
pub fn kill_marked(lease_id: &str) -> String {
    let marker = lease_marker(lease_id);
    format!(
        r#"for f in $(grep -lF -- {marker} /proc/[0-9]*/environ 2>/dev/null); do
  p=${{f#/proc/}}
  p=${{p%/environ}}
  [ "$p" = "$$" ] && continue
  if crabbox_marked "$(tr '\0' '\n' <"$f" 2>/dev/null)"; then
    kill -s KILL "$p" 2>/dev/null
  fi
done
"#
    )
}

/// What a start script that exited [`EXITED_AT_ONCE`] printed: the
/// service's exit status (`?` when missing) and its last log lines (`(no
/// output)` when there were none).
#[must_use]
pub fn early_exit(stdout: &[String]) -> (&str, String) {
    let (status, tail) = stdout
        .split_first()
        .map_or(("?", &[][..]), |(s, t)| (s.as_str(), t));
    let tail = if tail.is_empty() {
        "(no output)".to_owned()
    } else {
        tail.join("\n")
    };
    (status, tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `script` through the local `sh` and returns its exit status and
    /// standard output.
    fn sh(script: &str) -> (i32, String) {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .output()
            .expect("sh runs");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8(out.stdout).expect("utf-8"),
        )
    }

    /// Runs `printf %s <word>` through the local `sh` and returns what it printed.
    fn through_sh(word: &str) -> String {
        let (code, out) = sh(&format!("printf %s {word}"));
        assert_eq!(code, 0, "{word}");
        out
    }

    #[test]
    fn quote_survives_nasty_strings() {
        for nasty in [
            "",
            "plain",
            "with space",
            "'",
            "''",
            "it's",
            "'\\''",
            "\"double\"",
            "$HOME ${HOME} $(id) `id`",
            "back\\slash\\",
            "line\nbreak\n",
            "tab\there",
            "; rm -rf / #",
            "*?[a-z]",
            "-n",
            "ünïcødé ✓",
            "a'b\"c$d`e\\f\ng",
        ] {
            assert_eq!(through_sh(&quote(nasty)), nasty, "{nasty:?}");
        }
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
    }

    #[test]
    fn env_names_and_nul_bytes_are_checked() {
        assert!(check_env_name("PATH").is_ok());
        assert!(check_env_name("_a1").is_ok());
        for bad in ["", "1A", "A-B", "A B", "A=B", "$(x)"] {
            assert!(check_env_name(bad).is_err(), "{bad:?}");
        }
        assert!(checked_text("x", "a\0b").is_err());
        assert_eq!(checked_text("x", "ab").ok(), Some("ab"));
    }

    #[test]
    fn service_names_are_file_names() {
        assert!(check_service_name("web-1.svc_x").is_ok());
        assert!(check_service_name(&"x".repeat(128)).is_ok());
        for bad in ["", ".hidden", "a/b", "../x", "a b", &"x".repeat(129)] {
            assert!(check_service_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn export_lines_quote_values_and_check_names() {
        let lines = export_lines([("A", "x'y $z"), ("B", "")]).expect("exports");
        assert_eq!(lines, "export A='x'\\''y $z'\nexport B=''\n");
        let (code, out) = sh(&format!("{lines}printf %s \"$A|$B\""));
        assert_eq!((code, out.as_str()), (0, "x'y $z|"));
        assert!(export_lines([("BAD NAME", "")]).is_err());
        assert!(export_lines([("A", "a\0b")]).is_err());
        assert_eq!(export_lines([]).expect("empty"), "");
    }

    #[test]
    fn probe_commands_and_hosts() {
        assert_eq!(
            probe_command_line("test -f 'x'").expect("line"),
            "sh -c 'test -f '\\''x'\\''' </dev/null >/dev/null 2>&1\n"
        );
        assert_eq!(
            sh(&probe_command_line("echo hi; exit 3").expect("line")),
            (3, String::new())
        );
        assert!(probe_command_line("a\0b").is_err());
        for local in [None, Some("localhost"), Some("127.0.0.1")] {
            assert_eq!(probe_host(local).expect("host"), "127.0.0.1");
        }
        assert_eq!(probe_host(Some("db")).expect("host"), "db");
        assert!(probe_host(Some("d\0b")).is_err());
    }

    #[test]
    fn probe_scripts_quote_their_targets() {
        let tcp = bash_tcp_probe_script("h'x", 8080);
        assert!(tcp.contains("crabbox-probe 'h'\\''x' 8080 "), "{tcp}");
        assert!(tcp.contains(&format!("timeout {PROBE_SECS}")), "{tcp}");
        let http = http_probe_script("http://a/?q='1'", "sandbox");
        assert!(
            http.starts_with("url='http://a/?q='\\''1'\\'''\n"),
            "{http}"
        );
        assert!(http.contains("the sandbox has none of curl"), "{http}");
        assert!(http.ends_with(&format!("exit {NO_PROBE_TOOL}\n")), "{http}");
        // Without any tool on PATH, the script says so and exits NO_PROBE_TOOL.
        let (code, _) = sh(&format!("PATH=/nonexistent\n{http}"));
        assert_eq!(code, NO_PROBE_TOOL);
    }

    #[test]
    fn stop_functions_match_the_lease_marker() {
        let script = stop_functions("cbx_0123456789ab", "/w/workspace");
        assert!(
            script.contains("grep -qxF -- 'CRABBOX_LEASE_ID=cbx_0123456789ab'"),
            "{script}"
        );
        assert!(
            script.contains("grep -qxF -- 'CRABBOX_WORKSPACE=/w/workspace'"),
            "{script}"
        );
        assert!(script.contains("crabbox_stop() {"), "{script}");
        assert_eq!(lease_marker("a'b"), "'CRABBOX_LEASE_ID=a'\\''b'");
        // A pid file with garbage is removed without signalling anything.
        let dir = tempfile::tempdir().expect("tempdir");
        let pid_file = dir.path().join("x.pid");
        std::fs::write(&pid_file, "not a pid").expect("write");
        let dirs = ServiceDirs {
            logs: dir.path().join("logs").display().to_string(),
            pids: dir.path().display().to_string(),
        };
        let (code, _) = sh(&format!("{script}{}", dirs.stop_all()));
        assert_eq!(code, 0);
        assert!(!pid_file.exists());
    }

    #[test]
    fn service_dirs_paths() {
        let dirs = ServiceDirs::under("/srv/w/");
        assert_eq!(dirs.logs, "/srv/w/logs");
        assert_eq!(dirs.pids, "/srv/w/pids");
        assert_eq!(dirs.log("web"), "/srv/w/logs/web.log");
        assert_eq!(dirs.pid_file("web"), "/srv/w/pids/web.pid");
        assert_eq!(
            dirs.stop_all(),
            "for f in '/srv/w/pids'/*.pid; do\n  [ -e \"$f\" ] || continue\n  crabbox_stop \"$f\"\ndone\n"
        );
        assert_eq!(ServiceDirs::under(STATE_DIR).pids, ".crabbox/pids");
    }

    #[test]
    fn start_script_reports_a_service_that_exits_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dirs = ServiceDirs::under(&dir.path().display().to_string());
        let script = dirs.start_script("bad", "sh -c", "echo 'it failed'; exit 7");
        assert!(
            script.contains("setsid sh -c 'echo '\\''it failed'\\''; exit 7'"),
            "{script}"
        );
        let (code, out) = sh(&format!(
            "{}{script}",
            stop_functions("cbx_0123456789ab", "/w")
        ));
        assert_eq!(code, EXITED_AT_ONCE, "{out}");
        let lines: Vec<String> = out.lines().map(str::to_owned).collect();
        assert_eq!(early_exit(&lines), ("7", "it failed".to_owned()));
        assert!(!std::path::Path::new(&dirs.pid_file("bad")).exists());
        let log = std::fs::read_to_string(dirs.log("bad")).expect("log");
        assert!(
            log.contains("starting `bad`: $ echo 'it failed'; exit 7\nit failed\n"),
            "{log}"
        );
    }

    #[test]
    fn a_tracked_step_records_its_pid_while_it_runs_and_passes_its_status_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pid_file = dir.path().join("step-1.pid").display().to_string();
        // The pid file exists from the step's first moment.
        let script = tracked_command_script(
            &pid_file,
            &format!("echo out; test -f {} || exit 9; exit 7", quote(&pid_file)),
        );
        let (code, out) = sh(&script);
        assert_eq!((code, out.as_str()), (7, "out\n"));
        assert!(
            !std::path::Path::new(&pid_file).exists(),
            "removed after the step"
        );
        let (code, _) = sh(&tracked_command_script(
            &pid_file,
            &format!("test -s {}", quote(&pid_file)),
        ));
        assert_eq!(
            code, 0,
            "the pid file is written before the step is waited for"
        );
    }

    #[test]
    fn leftovers_of_a_dead_run_are_stopped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dirs = ServiceDirs::under(&dir.path().display().to_string());
        std::fs::create_dir_all(&dirs.pids).expect("pids");
        let lease = "cbx_0000000000aa";
        // A step whose crabbox died: its shell is gone, the step runs on.
        let started = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "export CRABBOX_LEASE_ID={lease} CRABBOX_WORKSPACE=/w\n{}",
                tracked_command_script(&dirs.pid_file("step-1"), "sleep 30")
            ))
            .spawn()
            .expect("step starts");
        let pid_file = std::path::Path::new(&dirs.pid_file("step-1")).to_owned();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !pid_file.exists() {
            assert!(std::time::Instant::now() < deadline, "no pid file");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let step: i32 = std::fs::read_to_string(&pid_file)
            .expect("pid")
            .trim()
            .parse()
            .expect("a pid");
        let (code, _) = sh(&format!(
            "{}{}",
            stop_functions(lease, "/w"),
            stop_leftovers(&dirs, lease)
        ));
        assert_eq!(code, 0);
        // The dead run's shell ends too: with the step's status, or killed
        // as a process of the lease.
        let mut started = started;
        started.wait().expect("waited");
        assert!(!pid_file.exists());
        let state = std::fs::read_to_string(format!("/proc/{step}/stat")).unwrap_or_default();
        let running = state
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'));
        assert!(!running, "the step is gone: {state}");
    }

    /// A static host's lease ID is the host's (`static_<host>`): two ponds
    /// on one machine share it. Stopping one kills only the processes of
    /// its own workspace.
    #[test]
    fn the_same_lease_id_in_another_workspace_is_spared() {
        let lease = "static_127-0-0-1";
        let start = |workspace: &str| {
            std::process::Command::new("sleep")
                .arg("30")
                .env("CRABBOX_LEASE_ID", lease)
                .env("CRABBOX_WORKSPACE", workspace)
                .spawn()
                .expect("sleep starts")
        };
        let mut mine = start("/a/workspace");
        let mut theirs = start("/b/workspace");
        let (code, out) = sh(&format!(
            "{}{}",
            stop_functions(lease, "/a/workspace"),
            kill_marked(lease)
        ));
        assert_eq!(code, 0, "{out}");
        let status = mine.wait().expect("waited");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "{status:?}"
        );
        let spared = theirs.try_wait().expect("polled");
        theirs.kill().expect("cleanup");
        theirs.wait().expect("reaped");
        assert!(spared.is_none(), "the other pond's process was killed");
    }

    #[test]
    fn early_exit_without_output() {
        assert_eq!(early_exit(&[]), ("?", "(no output)".to_owned()));
        assert_eq!(
            early_exit(&["1".to_owned()]),
            ("1", "(no output)".to_owned())
        );
    }
}
