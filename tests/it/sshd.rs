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
    /// The `hetzner:` defaults a spec gives members whose "servers" are
    /// this sshd (the fake Hetzner API hands out 127.0.0.1).
    pub fn hetzner_defaults(&self) -> String {
        format!(
            "{{ ssh_port: {}, ssh_user: {}, location: fsn1 }}",
            self.port, self.user
        )
    }

    /// A spec of pond `pond` whose `members` are Hetzner servers that are
    /// this sshd, without sync.
    pub fn hetzner_pond(&self, pond: &str, members: &str) -> String {
        format!(
            "version: 1\npond: {pond}\ndefaults:\n  sync: false\n  hetzner: {}\nmembers:\n{members}",
            self.hetzner_defaults()
        )
    }

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
        Self::start_configured(port, log_level, "", &[])
    }

    fn start_configured(port: u16, log_level: &str, extra: &str, env: &[(&str, String)]) -> Self {
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
                 LogLevel {log_level}\n\
                 {extra}",
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
            .envs(env.iter().map(|(k, v)| (k, v)))
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

// ---- a gateway whose logins are access tokens ----

/// Where `nss_wrapper` is (Debian's `libnss-wrapper`, in the machine's
/// multiarch directory): the gateway's sshd reads its users from a file of
/// the test's through it, so token users exist for sshd without touching
/// the machine's `/etc/passwd`.
fn nss_wrapper() -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib")
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path().join("libnss_wrapper.so"))
        .find(|p| p.exists())
}

/// Standing for an SSH gateway such as Daytona's, where the login name is a
/// short-lived access token: a [`TestSshd`] whose users are the tokens
/// granted (each an alias of root, from a passwd file `nss_wrapper` gives
/// sshd) and which accepts any key for a token that is still granted (an
/// `AuthorizedKeysCommand` looking for the token's file). A token revoked
/// or expired can no longer log in; sessions already open go on, as on a
/// real gateway.
pub struct TokenGateway {
    /// The server.
    pub sshd: TestSshd,
    /// Holds the users file, the key command and one file per live token.
    /// Under `/run`: sshd runs a key command only from a path no other
    /// user can write to, all the way up (which `/tmp` is not).
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for TokenGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenGateway")
            .field("port", &self.sshd.port)
            .finish_non_exhaustive()
    }
}

impl TokenGateway {
    /// Starts a gateway on a free port.
    ///
    /// # Panics
    /// When openssh-server or libnss-wrapper is not installed, or the
    /// server does not start.
    pub fn start() -> Self {
        let nss_wrapper = nss_wrapper()
            .expect("/usr/lib/*/libnss_wrapper.so is missing: libnss-wrapper is not installed; ./scripts/test installs it");
        let dir = tempfile::Builder::new()
            .prefix("crabbox-gateway-")
            .tempdir_in("/run")
            .expect("a directory under /run for the gateway");
        std::fs::create_dir(dir.path().join("tokens")).expect("tokens dir");
        let passwd = dir.path().join("passwd");
        let group = dir.path().join("group");
        let entries = |db: &str, keys: &[&str]| {
            let out = Command::new("getent")
                .arg(db)
                .args(keys)
                .output()
                .expect("getent runs");
            String::from_utf8(out.stdout).expect("utf-8 getent")
        };
        let me = current_user();
        std::fs::write(&passwd, entries("passwd", &["root", "sshd", &me])).expect("passwd");
        std::fs::write(&group, entries("group", &["root", "nogroup"])).expect("group");
        let command = dir.path().join("keys.sh");
        std::fs::write(
            &command,
            format!(
                "#!/bin/sh\n# $1 user (a token), $2 key type, $3 key: any key of a live token.\n\
                 case \"$1\" in */*|.*) exit 1;; esac\n\
                 [ -e '{}'/\"$1\" ] && printf '%s %s\\n' \"$2\" \"$3\"\n",
                dir.path().join("tokens").display()
            ),
        )
        .expect("key command");
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&command, std::fs::Permissions::from_mode(0o755))
            .expect("chmod key command");
        let extra = format!(
            "AuthorizedKeysCommand {} %u %t %k\nAuthorizedKeysCommandUser root\n",
            command.display()
        );
        let env = [
            ("LD_PRELOAD", nss_wrapper.display().to_string()),
            ("NSS_WRAPPER_PASSWD", passwd.display().to_string()),
            ("NSS_WRAPPER_GROUP", group.display().to_string()),
        ];
        let sshd = TestSshd::start_configured(free_port(), "VERBOSE", &extra, &env);
        Self { sshd, dir }
    }

    /// Lets `token` log in (with any key) until it is revoked.
    pub fn grant(&self, token: &str) {
        assert!(
            !token.is_empty() && token.bytes().all(|b| b.is_ascii_alphanumeric()),
            "token users are alphanumeric: {token}"
        );
        let mut users = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("passwd"))
            .expect("open gateway passwd");
        writeln!(users, "{token}:x:0:0:access token:/root:/bin/sh").expect("add token user");
        std::fs::write(self.dir.path().join("tokens").join(token), b"").expect("token file");
    }

    /// `token` can no longer log in.
    pub fn revoke(&self, token: &str) {
        let _ = std::fs::remove_file(self.dir.path().join("tokens").join(token));
    }

    /// How many logins as `token` the server accepted.
    pub fn logins_as(&self, token: &str) -> usize {
        self.sshd
            .log_lines(&format!("Accepted publickey for {token} "))
    }
}
