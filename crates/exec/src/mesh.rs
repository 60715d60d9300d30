//! The SSH mesh of `crabbox pond connect`, as Crabbox builds it: one
//! `ssh -N -L 127.0.0.1:<local>:127.0.0.1:<remote>` per member with exposed
//! ports, local ports from 51820..52819 kept stable per (peer, port) across
//! runs, `hosts`/`env` files and, with `--export`, detached tunnels recorded
//! in `daemon.json` so `disconnect` can stop exactly them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::ssh::SshTarget;
use crabbox_fs::atomic_file;
use crabbox_render::peers::env_name;

/// First local port of the mesh range (Crabbox's).
pub const FIRST_PORT: u16 = 51820;
/// Last local port of the mesh range.
pub const LAST_PORT: u16 = 52819;

/// One forward: a member's remote port reachable on a local port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Forward {
    /// The member's slug.
    pub peer: String,
    /// The port on the member.
    pub remote_port: u16,
    /// The port on 127.0.0.1 here.
    pub local_port: u16,
    /// The member's lease.
    #[serde(rename = "leaseID")]
    pub lease_id: String,
}

/// One tunnel process of a detached mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    /// Its pid (also its process group: tunnels run in their own session).
    pub pid: u32,
    /// The command line, for checking the pid before stopping it.
    pub command: String,
    /// The first forward it carries.
    pub forward: Forward,
}

/// `daemon.json`: the detached tunnels of a pond.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Daemon {
    /// The pond.
    pub pond: String,
    /// RFC 3339.
    pub started_at: String,
    /// Every tunnel's pid.
    pub pids: Vec<u32>,
    /// The tunnels.
    pub processes: Vec<Process>,
    /// Every forward.
    pub forwards: Vec<Forward>,
}

/// A member to forward: its slug, lease, SSH target and exposed ports.
#[derive(Debug, Clone)]
pub struct MeshMember {
    /// Slug.
    pub slug: String,
    /// Lease ID.
    pub lease_id: String,
    /// How to reach it.
    pub target: SshTarget,
    /// Ports to forward.
    pub ports: Vec<u16>,
}

fn ports_file(dir: &Path) -> PathBuf {
    dir.join("ports.json")
}

/// The daemon record of a pond's output dir.
#[must_use]
pub fn daemon_file(dir: &Path) -> PathBuf {
    dir.join("daemon.json")
}

/// Assigns local ports: the same (peer, port) keeps its local port across
/// runs; new pairs take the first free port of the range.
///
/// # Errors
/// When the range is exhausted.
pub fn assign_ports(dir: &Path, members: &[MeshMember]) -> Result<Vec<Forward>, String> {
    let mut map: BTreeMap<String, u16> = std::fs::read_to_string(ports_file(dir))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let mut used: BTreeSet<u16> = BTreeSet::new();
    let mut forwards = Vec::new();
    for m in members {
        for &remote in &m.ports {
            let key = format!("{}:{remote}", m.slug);
            let local = match map.get(&key).copied().filter(|p| !used.contains(p)) {
                Some(p) => p,
                None => {
                    let taken: BTreeSet<u16> =
                        map.values().copied().chain(used.iter().copied()).collect();
                    let p = (FIRST_PORT..=LAST_PORT)
                        .find(|p| {
                            !taken.contains(p) && TcpListener::bind(("127.0.0.1", *p)).is_ok()
                        })
                        .ok_or_else(|| {
                            format!("no free local port in {FIRST_PORT}..{LAST_PORT}")
                        })?;
                    map.insert(key, p);
                    p
                }
            };
            used.insert(local);
            forwards.push(Forward {
                peer: m.slug.clone(),
                remote_port: remote,
                local_port: local,
                lease_id: m.lease_id.clone(),
            });
        }
    }
    let text = serde_json::to_string_pretty(&map).map_err(|e| e.to_string())?;
    atomic_file::write(&ports_file(dir), text.as_bytes()).map_err(|e| e.to_string())?;
    Ok(forwards)
}

/// `export CRABBOX_POND_<PEER>_<PORT>=127.0.0.1:<local>` lines.
#[must_use]
pub fn exports(forwards: &[Forward]) -> Vec<String> {
    forwards
        .iter()
        .map(|f| {
            format!(
                "export {}=127.0.0.1:{}",
                env_name(&f.peer, f.remote_port),
                f.local_port
            )
        })
        .collect()
}

/// The first line of the mesh's `env` file starts with this; it is how the
/// file says who wrote it (see [`owns_hosts_and_env`]).
const ENV_HEADER: &str = "# crabbox pond SSH-mesh";
/// The first line of the mesh's `hosts` file ends with this.
const HOSTS_HEADER_END: &str = " SSH-mesh";

/// Writes the mesh's `hosts` and `env` files. From then on the mesh owns
/// them: rendering leaves them alone until [`hand_back`].
///
/// # Errors
/// I/O errors.
pub fn write_files(dir: &Path, pond: &str, forwards: &[Forward]) -> std::io::Result<()> {
    let mut hosts = format!(
        "# crabbox pond {pond}{HOSTS_HEADER_END}\n# generated by `crabbox pond connect`; rewritten on every run\n"
    );
    for f in forwards {
        hosts.push_str(&format!(
            "127.0.0.1  {p}.cbx {p}-{r}.cbx  # local=127.0.0.1:{l} remote=:{r}\n",
            p = f.peer,
            r = f.remote_port,
            l = f.local_port
        ));
    }
    let mut env = format!("{ENV_HEADER} — eval $(crabbox pond connect {pond} --export)\n");
    for line in exports(forwards) {
        env.push_str(&line);
        env.push('\n');
    }
    atomic_file::write(&dir.join("hosts"), hosts.as_bytes())?;
    atomic_file::write(&dir.join("env"), env.as_bytes())
}

/// Which of `hosts` and `env` in `dir` the mesh wrote, judged by their
/// first line.
fn mesh_files(dir: &Path) -> Vec<PathBuf> {
    let first_line = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .ok()
            .and_then(|t| t.lines().next().map(str::to_owned))
    };
    let mut out = Vec::new();
    if first_line("hosts")
        .is_some_and(|l| l.starts_with("# crabbox pond ") && l.ends_with(HOSTS_HEADER_END))
    {
        out.push(dir.join("hosts"));
    }
    if first_line("env").is_some_and(|l| l.starts_with(ENV_HEADER)) {
        out.push(dir.join("env"));
    }
    out
}

/// Whether `hosts`/`env` in `dir` belong to the SSH mesh: `pond connect`
/// (with or without tunnels) wrote them and `pond disconnect` has not handed
/// them back. One writer at a time: while the mesh owns them, `apply`,
/// `render` and `plan` leave them out.
#[must_use]
pub fn owns_hosts_and_env(dir: &Path) -> bool {
    !mesh_files(dir).is_empty()
}

/// Removes the mesh's `hosts`/`env` (they name tunnels that are gone), so
/// the next `apply` or `render` writes the pond's own; returns whether
/// there were any.
///
/// # Errors
/// I/O errors removing them, with the path.
pub fn hand_back(dir: &Path) -> Result<bool, String> {
    let files = mesh_files(dir);
    for f in &files {
        std::fs::remove_file(f).map_err(|e| format!("{}: {e}", f.display()))?;
    }
    Ok(!files.is_empty())
}

/// How long a new tunnel gets to start listening on its local ports.
const TUNNEL_UP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// The `ssh -N -L …` command for one member's forwards.
#[must_use]
pub fn tunnel_command(target: &SshTarget, forwards: &[&Forward]) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.args([
        "-N",
        "-o",
        "ExitOnForwardFailure=yes",
        "-o",
        "ControlPath=none",
        "-o",
        "ControlMaster=no",
        "-o",
        "ControlPersist=no",
    ]);
    cmd.args([
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=accept-new",
        "-o",
        "ServerAliveInterval=15",
        "-o",
        "LogLevel=ERROR",
    ]);
    cmd.arg("-o").arg(format!(
        "UserKnownHostsFile={}",
        target.state_dir.join("ssh").join("known_hosts").display()
    ));
    cmd.args(["-p", &target.port.to_string()]);
    if let Some(key) = &target.key {
        cmd.arg("-i").arg(key).args(["-o", "IdentitiesOnly=yes"]);
    }
    for f in forwards {
        cmd.arg("-L").arg(format!(
            "127.0.0.1:{}:127.0.0.1:{}",
            f.local_port, f.remote_port
        ));
    }
    cmd.arg(format!("{}@{}", target.user, target.host));
    cmd
}

fn command_text(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Starts detached tunnels (own sessions), checks they survive 200 ms, and
/// records them in `daemon.json`. Previously recorded tunnels are stopped first.
///
/// # Errors
/// A tunnel that exits at once, or I/O errors.
pub fn start_detached(
    dir: &Path,
    pond: &str,
    members: &[MeshMember],
    forwards: &[Forward],
) -> Result<Daemon, String> {
    stop(dir)?;
    let mut processes = Vec::new();
    for m in members {
        let mine: Vec<&Forward> = forwards
            .iter()
            .filter(|f| f.lease_id == m.lease_id)
            .collect();
        let Some(first) = mine.first() else { continue };
        let mut cmd = tunnel_command(&m.target, &mine);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        {
            use std::os::unix::process::CommandExt as _;
            // SAFETY: setsid(2) is async-signal-safe and touches no memory of ours.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::setsid() == -1 {
                        Err(std::io::Error::last_os_error())
                    } else {
                        Ok(())
                    }
                });
            }
        }
        let text = command_text(&cmd);
        let child = cmd
            .spawn()
            .map_err(|e| format!("starting ssh for {}: {e}", m.slug))?;
        processes.push((
            child,
            Process {
                pid: 0,
                command: text,
                forward: (*first).clone(),
            },
        ));
    }
    let mut recorded = Vec::new();
    for (mut child, mut p) in processes {
        p.pid = child.id();
        // Up means listening: wait until the tunnel's local ports accept
        // connections (or it exits), so that whoever reads the exported
        // addresses can use them at once.
        let ports: Vec<u16> = forwards
            .iter()
            .filter(|f| f.lease_id == p.forward.lease_id)
            .map(|f| f.local_port)
            .collect();
        let deadline = std::time::Instant::now() + TUNNEL_UP_TIMEOUT;
        while !ports.iter().all(|port| {
            std::net::TcpStream::connect_timeout(
                &std::net::SocketAddr::from(([127, 0, 0, 1], *port)),
                std::time::Duration::from_millis(200),
            )
            .is_ok()
        }) && std::time::Instant::now() < deadline
            && matches!(child.try_wait(), Ok(None))
        {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        if let Ok(Some(status)) = child.try_wait() {
            for (_, q) in &recorded {
                kill_group(*q);
            }
            return Err(format!(
                "the tunnel to {} exited at once ({status}); check `{}`",
                p.forward.peer, p.command
            ));
        }
        // The tunnel outlives us; reap it in the background so it never lingers as a zombie while we run.
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        recorded.push((p.clone(), p.pid));
    }
    let daemon = Daemon {
        pond: pond.to_owned(),
        started_at: crabbox_state::claims::now_rfc3339(),
        pids: recorded.iter().map(|(_, pid)| *pid).collect(),
        processes: recorded.into_iter().map(|(p, _)| p).collect(),
        forwards: forwards.to_vec(),
    };
    let text = serde_json::to_string_pretty(&daemon).map_err(|e| e.to_string())?;
    atomic_file::write(&daemon_file(dir), text.as_bytes()).map_err(|e| e.to_string())?;
    Ok(daemon)
}

fn kill_group(pid: u32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) on a process group we started; no memory is involved.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}

/// Whether `pid` is still the tunnel we recorded: its command line has
/// `ssh`, `-L` and the recorded first forward.
fn is_our_tunnel(p: &Process) -> bool {
    let Ok(raw) = std::fs::read(format!("/proc/{}/cmdline", p.pid)) else {
        return false;
    };
    let args: Vec<String> = raw
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let forward = format!(
        "127.0.0.1:{}:127.0.0.1:{}",
        p.forward.local_port, p.forward.remote_port
    );
    args.first().is_some_and(|a| a.ends_with("ssh"))
        && args.iter().any(|a| a == "-L")
        && args.contains(&forward)
}

/// Stops the tunnels recorded in `daemon.json` (checking each pid first) and
/// removes the record; returns how many were stopped.
///
/// # Errors
/// I/O errors removing the record.
pub fn stop(dir: &Path) -> Result<usize, String> {
    let path = daemon_file(dir);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(0);
    };
    let daemon: Daemon =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut stopped = 0;
    for p in &daemon.processes {
        if is_our_tunnel(p) {
            kill_group(p.pid);
            stopped += 1;
        }
    }
    std::fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(stopped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(slug: &str, id: &str, ports: &[u16]) -> MeshMember {
        MeshMember {
            slug: slug.into(),
            lease_id: id.into(),
            target: SshTarget {
                host: "127.0.0.1".into(),
                port: 22,
                user: "u".into(),
                key: None,
                work_root: "crabbox/x".into(),
                state_dir: PathBuf::from("/tmp"),
                lease_id: id.into(),
            },
            ports: ports.to_vec(),
        }
    }

    #[test]
    fn local_ports_are_stable_across_runs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = assign_ports(
            dir.path(),
            &[
                member("db", "cbx_000000000001", &[5432]),
                member("web", "cbx_000000000002", &[80, 443]),
            ],
        )
        .expect("ports");
        assert_eq!(first.len(), 3);
        let locals: BTreeSet<u16> = first.iter().map(|f| f.local_port).collect();
        assert_eq!(locals.len(), 3, "distinct");
        assert!(locals.iter().all(|p| (FIRST_PORT..=LAST_PORT).contains(p)));
        // Another run, members in another order and one new port: old pairs keep theirs.
        let second = assign_ports(
            dir.path(),
            &[
                member("web", "cbx_000000000002", &[443, 80, 8080]),
                member("db", "cbx_000000000001", &[5432]),
            ],
        )
        .expect("ports");
        for f in &first {
            let again = second
                .iter()
                .find(|g| g.peer == f.peer && g.remote_port == f.remote_port)
                .expect("kept");
            assert_eq!(again.local_port, f.local_port);
        }
        assert_eq!(
            exports(&second[..1])[0],
            format!(
                "export CRABBOX_POND_WEB_443=127.0.0.1:{}",
                second[0].local_port
            )
        );
    }
}
