//! A real PostgreSQL server on 127.0.0.1 for tests: Debian's server binaries
//! run as the `postgres` user (the server refuses to run as root), a fresh
//! cluster in a temporary directory, one database, stopped when dropped.
//!
//! Tests never skip when the server is missing: they fail and say what to
//! install.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::sshd::free_port;

/// Where Debian installs the server binaries (`<version>/bin`).
const SERVER_ROOT: &str = "/usr/lib/postgresql";
/// The user the server runs as.
const SERVER_USER: &str = "postgres";

/// A running PostgreSQL server with one empty database.
pub struct TestPostgres {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The URL of the test database (trust authentication, no password).
    pub url: String,
    bin: PathBuf,
    dir: tempfile::TempDir,
}

impl TestPostgres {
    /// Starts a server on a free port and creates the database `crabbox`.
    ///
    /// # Panics
    /// When the PostgreSQL server is not installed or does not start.
    pub fn start() -> Self {
        let bin = server_bin();
        let dir = tempfile::Builder::new()
            .prefix("crabbox-pg-")
            .tempdir()
            .expect("tempdir for postgres");
        // The server runs as `postgres` and needs its directory.
        let chown = Command::new("chown")
            .arg(format!("{SERVER_USER}:{SERVER_USER}"))
            .arg(dir.path())
            .output()
            .expect("chown runs");
        assert!(chown.status.success(), "chown: {chown:?}");
        let data = dir.path().join("data");
        let initdb = as_server_user(&bin.join("initdb"))
            .args(["--auth=trust", "--username=postgres", "--encoding=UTF8"])
            .args(["--locale=C", "--no-sync", "--no-instructions", "-D"])
            .arg(&data)
            .output()
            .expect("initdb runs");
        assert!(initdb.status.success(), "initdb: {}", show(&initdb));
        let port = free_port();
        let options = format!(
            "-k {} -c listen_addresses=127.0.0.1 -p {port} -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c shared_buffers=16MB -c max_connections=50",
            dir.path().display()
        );
        let log = dir.path().join("server.log");
        let started = as_server_user(&bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "-o", &options, "start"])
            .output()
            .expect("pg_ctl runs");
        assert!(
            started.status.success(),
            "pg_ctl start: {}\n{}",
            show(&started),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let server = Self {
            port,
            url: format!("postgres://postgres@127.0.0.1:{port}/crabbox"),
            bin,
            dir,
        };
        server.admin("CREATE DATABASE crabbox");
        server
    }

    /// Runs SQL in the `postgres` database.
    fn admin(&self, sql: &str) {
        let mut client = SyncClient::connect(&format!(
            "postgres://postgres@127.0.0.1:{}/postgres",
            self.port
        ));
        client.batch_execute(sql).expect("admin SQL");
    }

    /// The URL of another database on this server, created empty.
    pub fn other_database(&self, name: &str, application: &str) -> String {
        self.admin(&format!("CREATE DATABASE {name}"));
        format!(
            "postgres://postgres@127.0.0.1:{}/{name}?application_name={application}",
            self.port
        )
    }

    /// A client of the test database.
    pub fn client(&self) -> SyncClient {
        SyncClient::connect(&self.url)
    }

    /// The test database's URL with a distinct application name, so that a
    /// store's connections can be told apart (`pg_stat_activity`).
    pub fn url_named(&self, application: &str) -> String {
        format!("{}?application_name={application}", self.url)
    }
}

/// A client for the tests' own queries, which are synchronous: tokio-postgres
/// on a runtime of its own (its connection task advances while a query runs).
pub struct SyncClient {
    runtime: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

type Params<'a> = &'a [&'a (dyn tokio_postgres::types::ToSql + Sync)];

impl SyncClient {
    fn connect(url: &str) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let (client, connection) = runtime
            .block_on(tokio_postgres::connect(url, tokio_postgres::NoTls))
            .expect("connect to the test server");
        runtime.spawn(async move {
            let _ = connection.await;
        });
        Self { runtime, client }
    }

    /// Rows of a query.
    pub fn query(
        &mut self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
        self.runtime.block_on(self.client.query(sql, params))
    }

    /// The one row of a query.
    pub fn query_one(
        &mut self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<tokio_postgres::Row, tokio_postgres::Error> {
        self.runtime.block_on(self.client.query_one(sql, params))
    }

    /// Rows changed by a statement.
    pub fn execute(&mut self, sql: &str, params: Params<'_>) -> Result<u64, tokio_postgres::Error> {
        self.runtime.block_on(self.client.execute(sql, params))
    }

    /// Runs statements without parameters.
    pub fn batch_execute(&mut self, sql: &str) -> Result<(), tokio_postgres::Error> {
        self.runtime.block_on(self.client.batch_execute(sql))
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        let _ = as_server_user(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "-t", "30", "stop"])
            .output();
    }
}

/// `runuser -u postgres -- <program>`.
fn as_server_user(program: &Path) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", SERVER_USER, "--"]).arg(program);
    // The server user cannot enter the test's working directory.
    c.current_dir("/");
    c
}

/// The newest installed server's `bin` directory.
fn server_bin() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(SERVER_ROOT)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| {
                    let version = e.file_name().to_str()?.parse::<u32>().ok()?;
                    let bin = e.path().join("bin");
                    (bin.join("initdb").is_file() && bin.join("pg_ctl").is_file())
                        .then_some((version, bin))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    let Some((_, bin)) = found.pop() else {
        panic!(
            "the PostgreSQL server is not installed ({SERVER_ROOT}/*/bin/initdb is missing); \
             ./scripts/test installs the `postgresql` package"
        );
    };
    let user = Command::new("id")
        .arg("-u")
        .arg(SERVER_USER)
        .output()
        .expect("id runs");
    assert!(
        user.status.success(),
        "there is no `{SERVER_USER}` user; ./scripts/test installs the `postgresql` package, which creates it"
    );
    bin
}

fn show(out: &Output) -> String {
    format!(
        "{}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Waits until `check` holds, for at most `limit`.
pub fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
