//! A real OpenSSH server on 127.0.0.1 for tests: its own host key, a client
//! key authorized for the current user, killed (with every connection it
//! accepted) when dropped.
//!
//! Tests never skip when `sshd` is missing: they fail and say what to install.

use std::io::Write as _;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crabbox_exec::ssh::SshTarget;

/// The server binary.
const SSHD: &str = "/usr/sbin/sshd";
/// How long the server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `sshd` on 127.0.0.1.
pub struct TestSshd {
    /// Its port.
    pub port: u16,
    /// The user to log in as (the current user).
    pub user: String,
    /// A private key authorized to log in.
    pub key: PathBuf,
    /// The authorized keys file the server reads (on every login); append
    /// public keys to it to authorize more.
    pub authorized_keys: PathBuf,
    /// Holds the keys, the configuration and the server's log.
    dir: tempfile::TempDir,
    /// The listening server.
    child: Child,
}

impl TestSshd {
    /// Starts a server on a free port.
    ///
    /// # Panics
    /// When openssh-server is not installed or the server does not start.
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// Starts a server on `port` with a fresh host key (e.g. to stand in
    /// for a reinstalled host after the previous server was dropped).
    ///
    /// # Panics
    /// When openssh-server is not installed or the server does not start.
    pub fn start_on(port: u16) -> Self {
        Self::start_with(port, "ERROR")
    }

    /// Starts a server that logs every login and every session (command)
    /// it serves: [`Self::logins`] and [`Self::sessions`] count them.
    ///
    /// # Panics
    /// When openssh-server is not installed or the server does not start.
    pub fn start_logging_sessions() -> Self {
        Self::start_with(free_port(), "VERBOSE")
    }

    fn start_with(port: u16, log_level: &str) -> Self {
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} is missing: openssh-server is not installed; ./scripts/test installs it"
        );
        let dir = tempfile::tempdir().expect("tempdir for sshd");
        let host_key = dir.path().join("host_key");
        let key = dir.path().join("client_key");
        keygen(&host_key);
        keygen(&key);
        let authorized_keys = dir.path().join("authorized_keys");
        std::fs::copy(key.with_extension("pub"), &authorized_keys).expect("authorized_keys");
        let config = dir.path().join("sshd_config");
        // `SetEnv SHLVL=1`: bash reads ~/.bashrc in an sshd session only at
        // shell level 1, so sessions do not depend on (or wait for) the
        // machine user's startup files, such as a slow `pyenv init`.
        // `MaxStartups`: one server stands for many hosts (the pond bench
        // logs 50 members in at once); sshd's default drops logins beyond
        // 10 unauthenticated ones, which no single real host would see.
        std::fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1\n\
                 Port {port}\n\
                 HostKey {}\n\
                 PidFile {}\n\
                 AuthorizedKeysFile {}\n\
                 StrictModes no\n\
                 UsePAM no\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\n\
                 PubkeyAuthentication yes\n\
                 AllowTcpForwarding yes\n\
                 PrintMotd no\n\
                 MaxStartups 200:30:400\n\
                 SetEnv SHLVL=1\n\
                 LogLevel {log_level}\n",
                host_key.display(),
                dir.path().join("sshd.pid").display(),
                authorized_keys.display(),
            ),
        )
        .expect("sshd_config");
        // The privilege separation directory.
        std::fs::create_dir_all("/run/sshd").expect("mkdir /run/sshd");
        let log_path = dir.path().join("sshd.log");
        let log = std::fs::File::create(&log_path).expect("sshd.log");
        let mut child = Command::new(SSHD)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn sshd");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait sshd") {
                panic!(
                    "sshd exited with {status} on port {port}: {}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "sshd did not accept connections on port {port} within {START_TIMEOUT:?}: {}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            port,
            user: current_user(),
            key,
            authorized_keys,
            dir,
            child,
        }
    }

    /// The directory holding the server's files (keys, config, `sshd.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// How many logins (SSH connections authenticated) the server's log
    /// shows; needs [`Self::start_logging_sessions`].
    pub fn logins(&self) -> usize {
        self.log_lines("Accepted publickey for ")
    }

    /// How many sessions (remote commands, each a round trip — several
    /// may share one multiplexed login) the server's log shows; needs
    /// [`Self::start_logging_sessions`].
    pub fn sessions(&self) -> usize {
        self.log_lines("Starting session: ")
    }

    fn log_lines(&self, marker: &str) -> usize {
        std::fs::read_to_string(self.dir.path().join("sshd.log"))
            .expect("sshd.log")
            .lines()
            .filter(|l| l.contains(marker))
            .count()
    }

    /// Authorizes one more public key (an OpenSSH `.pub` line).
    pub fn authorize(&self, public_key: &str) {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.authorized_keys)
            .expect("open authorized_keys");
        writeln!(file, "{}", public_key.trim_end()).expect("append to authorized_keys");
    }

    /// A transport target for this server with the authorized key.
    pub fn target(&self, state_dir: &Path, work_root: &str, lease_id: &str) -> SshTarget {
        SshTarget {
            host: "127.0.0.1".to_owned(),
            port: self.port,
            user: self.user.clone(),
            key: Some(self.key.clone()),
            work_root: work_root.to_owned(),
            state_dir: state_dir.to_path_buf(),
            lease_id: lease_id.to_owned(),
        }
    }
}

impl Drop for TestSshd {
    fn drop(&mut self) {
        // The per-connection servers run in sessions of their own: kill
        // them too, so client connections (control masters) see the end.
        let Ok(pid) = i32::try_from(self.child.id()) else {
            return;
        };
        for descendant in descendants(pid) {
            // SAFETY: kill(2) only takes integers and touches no memory.
            unsafe {
                libc::kill(descendant, libc::SIGKILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port on 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .expect("bind :0")
        .local_addr()
        .expect("local_addr")
        .port()
}

/// `ssh-keygen -q -t ed25519 -N '' -f <path>`.
fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "crabbox-test", "-f"])
        .arg(path)
        .output()
        .expect("ssh-keygen runs (openssh-client)");
    assert!(out.status.success(), "ssh-keygen: {out:?}");
}

/// `id -un`.
fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().expect("id -un");
    assert!(out.status.success(), "id -un: {out:?}");
    String::from_utf8(out.stdout)
        .expect("utf-8 user name")
        .trim()
        .to_owned()
}

/// Every process below `root` (children first found, then theirs).
fn descendants(root: i32) -> Vec<i32> {
    let parents: Vec<(i32, i32)> = std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .filter_map(|e| {
                    let process: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
                    let stat = std::fs::read_to_string(format!("/proc/{process}/stat")).ok()?;
                    let parent = stat[stat.rfind(')')? + 1..]
                        .split_whitespace()
                        .nth(1)?
                        .parse()
                        .ok()?;
                    Some((process, parent))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, ppid)| *ppid == parent)
                .map(|(pid, _)| *pid),
        );
        i += 1;
    }
    found.split_off(1)
}
