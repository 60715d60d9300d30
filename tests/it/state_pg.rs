//! The PostgreSQL state backend against a real server (`pg::TestPostgres`):
//! claims with compare-and-swap writes, the pond lock as a lease with a TTL,
//! `state migrate`, and the point of it all — a pond applied by one runner
//! (state dir) is destroyed by another whose state dir is empty.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as StdCommand, Output, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::Command;
use crabbox_state::claims::{Claim, ClaimStore};
use crabbox_state::state_pg;
use serde_json::{Value, json};

use crate::pg::{TestPostgres, eventually};

use crate::sshd::{TestSshd, free_port};

/// Runs a claim-store call to its end from these synchronous tests, on a
/// runtime of this thread (the store's connection lives there between
/// calls; the tests' own client, `pg::SyncClient`, runs a runtime of its own).
trait Wait: std::future::Future + Sized {
    fn wait(self) -> Self::Output {
        thread_local! {
            static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
        }
        RUNTIME.with(|rt| rt.block_on(self))
    }
}

impl<F: std::future::Future> Wait for F {}

/// One runner: its own state dir, home and working directory.
struct Runner {
    dir: tempfile::TempDir,
    /// `CRABBOX_STATE_URL` for its commands (`None`: unset).
    url: Option<String>,
    /// `CRABBOX_LOCK_TTL` for its commands.
    ttl: Option<u64>,
    /// Further environment (provider keys and endpoints).
    env: Vec<(String, String)>,
}

impl Runner {
    fn new(url: Option<&str>) -> Self {
        let r = Self {
            dir: tempfile::tempdir().expect("tempdir"),
            url: url.map(str::to_owned),
            ttl: None,
            env: Vec::new(),
        };
        for d in ["home", "work", "remote"] {
            std::fs::create_dir_all(r.path(d)).expect("dirs");
        }
        r
    }

    fn with_ttl(mut self, secs: u64) -> Self {
        self.ttl = Some(secs);
        self
    }

    fn with_env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn configure(&self, c: &mut StdCommand) {
        c.env("CRABBOX_STATE_DIR", self.path("state"))
            .env("HOME", self.path("home"))
            .env("USER", "e2e")
            .env("NO_COLOR", "1")
            .env("CI", "true")
            .current_dir(self.path("work"));
        for k in [
            "HCLOUD_TOKEN",
            "HETZNER_TOKEN",
            "CRABBOX_ISLO_API_KEY",
            "ISLO_API_KEY",
            "CRABBOX_TENSORLAKE_API_KEY",
            "TENSORLAKE_API_KEY",
            "GITHUB_SERVER_URL",
            "GITHUB_REPOSITORY",
            "GITHUB_RUN_ID",
        ] {
            c.env_remove(k);
        }
        for (k, v) in &self.env {
            c.env(k, v);
        }
        match &self.url {
            Some(url) => c.env(state_pg::URL_ENV, url),
            None => c.env_remove(state_pg::URL_ENV),
        };
        match self.ttl {
            Some(s) => c.env("CRABBOX_LOCK_TTL", s.to_string()),
            None => c.env_remove("CRABBOX_LOCK_TTL"),
        };
    }

    fn std_cmd(&self) -> StdCommand {
        let mut c = StdCommand::new(assert_cmd::cargo::cargo_bin("crabbox"));
        self.configure(&mut c);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut c = Command::from_std(self.std_cmd());
        c.args(args)
            .timeout(Duration::from_secs(180))
            .output()
            .expect("runs")
    }

    /// Starts a command in the background, its output in files.
    fn spawn(&self, args: &[&str], name: &str) -> Child {
        let mut c = self.std_cmd();
        c.args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(self.path(&format!("{name}.out"))).expect("out"))
            .stderr(std::fs::File::create(self.path(&format!("{name}.err"))).expect("err"));
        c.spawn().expect("spawn crabbox")
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    fn write_spec(&self, text: &str) {
        std::fs::write(self.path("work/pond.yaml"), text).expect("spec");
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn count(pg: &TestPostgres, sql: &str, pond: &str) -> i64 {
    pg.client()
        .query_one(sql, &[&pond])
        .expect("query")
        .get::<_, i64>(0)
}

fn claim_rows(pg: &TestPostgres, pond: &str) -> i64 {
    count(
        pg,
        "SELECT count(*) FROM crabbox_claims WHERE pond = $1",
        pond,
    )
}

fn live_locks(pg: &TestPostgres, pond: &str) -> i64 {
    // The table exists once crabbox has connected.
    count(
        pg,
        "SELECT count(*) FROM crabbox_locks WHERE pond = $1 AND expires_at >= now()",
        pond,
    )
}

fn lock_table_exists(pg: &TestPostgres) -> bool {
    pg.client()
        .query_one("SELECT to_regclass('crabbox_locks') IS NOT NULL", &[])
        .expect("query")
        .get(0)
}

fn claim(lease_id: &str, pond: &str) -> Claim {
    Claim {
        lease_id: lease_id.to_owned(),
        slug: "api".to_owned(),
        provider: "ssh".to_owned(),
        pond: pond.to_owned(),
        ..Claim::default()
    }
}

#[test]
fn claims_round_trip_and_concurrent_writes_are_never_lost() {
    let pg = TestPostgres::start();
    let store = ClaimStore::postgres(&pg.url);
    assert!(store.load_all().wait().expect("readable").0.is_empty());
    let mut c = claim("cbx_0123456789ab", "p");
    c.extra.insert("tailscaleTags".into(), json!(["a"]));
    let written = store.write(&c).wait().expect("write");
    assert_eq!(written.revision.len(), 32);
    let loaded = store
        .load("cbx_0123456789ab")
        .wait()
        .expect("readable")
        .expect("loaded");
    assert_eq!(loaded, written);
    assert_eq!(loaded.extra["tailscaleTags"], json!(["a"]));

    // The schema was created, and its version recorded once.
    let mut client = pg.client();
    let versions: Vec<i32> = client
        .query("SELECT version FROM crabbox_schema_version", &[])
        .expect("versions")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, vec![1]);

    // A row that is not a usable claim is reported, never fatal.
    client
        .execute(
            "INSERT INTO crabbox_claims (lease_id, revision, body) VALUES ('cbx_eeeeeeeeeeee', 'x', '{\"leaseID\":\"cbx_000000000000\"}')",
            &[],
        )
        .expect("plant");
    let (claims, problems) = store.load_all().wait().expect("readable");
    assert_eq!(claims.len(), 1);
    assert_eq!(problems.len(), 1);
    assert!(
        problems[0].message.contains("lease_id_mismatch"),
        "{problems:?}"
    );

    // A stale write (its revision was replaced meanwhile) keeps the other
    // writer's change: it is merged, not overwritten.
    let a = ClaimStore::postgres(&pg.url_named("writer_a"));
    let b = ClaimStore::postgres(&pg.url_named("writer_b"));
    let mut seen_by_a = a
        .load("cbx_0123456789ab")
        .wait()
        .expect("readable")
        .expect("a reads");
    let mut seen_by_b = b
        .load("cbx_0123456789ab")
        .wait()
        .expect("readable")
        .expect("b reads");
    seen_by_b.labels.insert("from_b".into(), "1".into());
    b.write(&seen_by_b).wait().expect("b writes");
    let conflicts_before = state_pg::conflicts();
    seen_by_a.extra.insert("fromA".into(), json!(true));
    seen_by_a.cloud_id = "static_a".into();
    let merged = a.write(&seen_by_a).wait().expect("a writes");
    assert!(
        state_pg::conflicts() > conflicts_before,
        "a conflict was seen"
    );
    let stored = store
        .load("cbx_0123456789ab")
        .wait()
        .expect("readable")
        .expect("stored");
    assert_eq!(stored, merged);
    assert_eq!(stored.labels.get("from_b").map(|v| v.as_str()), Some("1"));
    assert_eq!(stored.extra["fromA"], json!(true));
    assert_eq!(stored.cloud_id, "static_a");

    // Two writers on two connections, 50 changes each, as fast as they can:
    // one reads and writes (merge on conflict), the other uses `update`
    // (re-applied on conflict). Every change of both is there.
    let started = Instant::now();
    let conflicts_before = state_pg::conflicts();
    let writers: Vec<_> = ["t1", "t2"]
        .into_iter()
        .map(|name| {
            let url = pg.url_named(name);
            std::thread::spawn(move || {
                let store = ClaimStore::postgres(&url);
                for i in 0..50 {
                    let key = format!("{name}_{i}");
                    if name == "t1" {
                        let mut c = store
                            .load("cbx_0123456789ab")
                            .wait()
                            .expect("readable")
                            .expect("load");
                        c.extra.insert(key, json!(i));
                        store.write(&c).wait().expect("write");
                    } else {
                        store
                            .update("cbx_0123456789ab", |c| {
                                c.labels.insert(key.as_str().into(), i.to_string().into());
                            })
                            .wait()
                            .expect("update")
                            .expect("exists");
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer");
    }
    let stored = store
        .load("cbx_0123456789ab")
        .wait()
        .expect("readable")
        .expect("stored");
    for i in 0..50 {
        assert_eq!(stored.extra[&format!("t1_{i}")], json!(i), "t1_{i} lost");
        assert_eq!(
            stored
                .labels
                .get(format!("t2_{i}").as_str())
                .map(|v| v.as_str()),
            Some(i.to_string().as_str()),
            "t2_{i} lost"
        );
    }
    eprintln!(
        "100 concurrent claim writes in {:?}, {} compare-and-swap conflicts retried",
        started.elapsed(),
        state_pg::conflicts() - conflicts_before
    );

    // `update` of an absent claim changes nothing; remove is idempotent.
    assert!(
        store
            .update("cbx_aaaaaaaaaaaa", |_| panic!("not called"))
            .wait()
            .expect("update")
            .is_none()
    );
    store.remove("cbx_0123456789ab").wait().expect("remove");
    store
        .remove("cbx_0123456789ab")
        .wait()
        .expect("removing twice is fine");
    assert!(
        store
            .load("cbx_0123456789ab")
            .wait()
            .expect("readable")
            .is_none()
    );
    assert!(store.write(&claim("../evil", "p")).wait().is_err());
}

/// Stores are built per command and share nothing: two stores of one
/// process for two databases see only their own claims, and even two stores
/// for one URL each have their own connection (no process-wide handle).
#[test]
fn stores_of_one_process_share_no_connection_or_setting() {
    let pg = TestPostgres::start();
    let first = ClaimStore::postgres(&pg.url_named("store_one"));
    let same_url = ClaimStore::postgres(&pg.url_named("store_one"));
    let other = ClaimStore::postgres(&pg.other_database("elsewhere", "store_other"));
    first
        .write(&claim("cbx_0123456789ab", "p"))
        .wait()
        .expect("write");
    assert_eq!(first.load_all().wait().expect("readable").0.len(), 1);
    assert_eq!(same_url.load_all().wait().expect("readable").0.len(), 1);
    assert!(
        other.load_all().wait().expect("readable").0.is_empty(),
        "the other database's store does not see the first one's claims"
    );
    let connections = |application: &str| -> i64 {
        pg.client()
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                &[&application],
            )
            .expect("query")
            .get(0)
    };
    assert_eq!(connections("store_one"), 2, "one connection per store");
    assert_eq!(connections("store_other"), 1);
}

#[test]
fn concurrent_first_connections_create_the_schema_once() {
    let pg = TestPostgres::start();
    let threads: Vec<_> = (0..6)
        .map(|i| {
            let url = pg.url_named(&format!("first_{i}"));
            std::thread::spawn(move || ClaimStore::postgres(&url).load_all().wait())
        })
        .collect();
    for t in threads {
        let (claims, problems) = t.join().expect("thread").expect("readable");
        assert!(claims.is_empty());
        assert!(problems.is_empty(), "{problems:?}");
    }
    let n: i64 = pg
        .client()
        .query_one("SELECT count(*) FROM crabbox_schema_version", &[])
        .expect("count")
        .get(0);
    assert_eq!(n, 1);
}

#[test]
fn an_unreachable_database_is_reported_not_taken_for_an_empty_one() {
    let url = format!("postgres://postgres@127.0.0.1:{}/none", free_port());
    let err = ClaimStore::postgres(&url)
        .load_all()
        .wait()
        .expect_err("an unreachable database is an error, not an empty store");
    assert!(err.to_string().contains("cannot connect"), "{err}");
    // An apply refuses to start rather than plan against nothing.
    let runner = Runner::new(Some(&url));
    runner.write_spec("version: 1\npond: p\nmembers:\n  - slug: a\n");
    let out = runner.run(&["apply", "--auto-approve"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot connect to the state database"),
        "{err}"
    );
    // A URL of another kind is refused, not ignored.
    let runner = Runner::new(Some("mysql://db/x"));
    runner.write_spec("version: 1\npond: p\nmembers:\n  - slug: a\n");
    let out = runner.run(&["apply", "--auto-approve"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not a postgres:// or postgresql:// URL"),
        "{}",
        text(&out.stderr)
    );
}

/// A pond with one local member whose setup takes a while (once: a marker
/// file makes later runs quick), recording the setup's pid.
fn slow_spec(pond: &str, seconds: u32, marker: &Path, pid_file: &Path) -> String {
    format!(
        r#"version: 1
pond: {pond}
defaults: {{ sync: false }}
members:
  - slug: slow
    setup:
      - if [ -e "{marker}" ]; then exit 0; fi; touch "{marker}"; echo $$ > "{pid}"; exec sleep {seconds}
"#,
        marker = marker.display(),
        pid = pid_file.display(),
    )
}

fn wait_for_lock(pg: &TestPostgres, pond: &str) {
    assert!(
        eventually(Duration::from_secs(60), || lock_table_exists(pg)
            && live_locks(pg, pond) == 1),
        "the first apply took the lock"
    );
}

fn kill(pid: i32, signal: i32) {
    // SAFETY: kill(2) only takes integers and touches no memory.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Kills, when dropped (also when a test fails half-way), the processes a
/// test may have left: recorded in pid files, or by a command-line needle.
struct Leftovers {
    pid_files: Vec<PathBuf>,
    needles: Vec<String>,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        for f in &self.pid_files {
            kill_recorded(f);
        }
        for n in &self.needles {
            for pid in processes_with(n) {
                kill(i32::try_from(pid).unwrap_or(0), libc::SIGKILL);
            }
        }
    }
}

fn kill_recorded(pid_file: &Path) {
    if let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    {
        kill(pid, libc::SIGKILL);
    }
}

#[test]
fn a_second_apply_fails_naming_the_holder_or_waits_for_it() {
    let pg = TestPostgres::start();
    let a = Runner::new(Some(&pg.url));
    let b = Runner::new(Some(&pg.url));
    a.write_spec(&slow_spec(
        "busy",
        5,
        &a.path("marker"),
        &a.path("setup.pid"),
    ));
    b.write_spec(&slow_spec(
        "busy",
        5,
        &b.path("marker"),
        &b.path("setup.pid"),
    ));

    let _leftovers = Leftovers {
        pid_files: vec![a.path("setup.pid"), b.path("setup.pid")],
        needles: Vec::new(),
    };
    let mut first = a.spawn(&["apply", "--auto-approve"], "first");
    wait_for_lock(&pg, "busy");

    // Another runner (another state dir, same database): fails at once,
    // naming the holder.
    let out = b.run(&["apply", "--auto-approve"]);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("pond `busy` is locked by pid {} on ", first.id())),
        "{err}"
    );
    assert!(err.contains("running `"), "{err}");
    assert!(err.contains(" apply --auto-approve`"), "{err}");
    let out = b.run(&["pond", "unlock", "busy"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains(&format!("locked by pid {}", first.id())),
        "{}",
        text(&out.stderr)
    );

    // With --lock-timeout it waits for the holder to finish, then proceeds.
    let waiting_since = Instant::now();
    let second = a
        .std_cmd()
        .args(["apply", "--auto-approve", "--lock-timeout", "2m"])
        .output()
        .expect("second apply");
    let waited = waiting_since.elapsed();
    let status = first.wait().expect("first apply");
    assert!(status.success(), "{}", a.read("first.err"));
    assert!(second.status.success(), "{}", text(&second.stderr));
    assert!(
        text(&second.stderr).contains("Members: 0 added, 0 changed, 0 destroyed"),
        "the second apply saw the first one's work: {}",
        text(&second.stderr)
    );
    eprintln!("the waiting apply waited {waited:?} for the holder");
    assert_eq!(live_locks(&pg, "busy"), 0, "both released the lock");

    let out = a.run(&["destroy", "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(claim_rows(&pg, "busy"), 0);
}

#[test]
fn a_holder_killed_with_sigkill_loses_the_lock_after_the_ttl() {
    let pg = TestPostgres::start();
    let ttl = 4;
    let a = Runner::new(Some(&pg.url)).with_ttl(ttl);
    let pid_file = a.path("setup.pid");
    a.write_spec(&slow_spec("killed", 120, &a.path("marker"), &pid_file));

    let _leftovers = Leftovers {
        pid_files: vec![pid_file.clone()],
        needles: Vec::new(),
    };
    let mut holder = a.spawn(&["apply", "--auto-approve"], "holder");
    wait_for_lock(&pg, "killed");
    // Past a few renewals, so the lock outlives its first TTL only by the heartbeat.
    assert!(eventually(Duration::from_secs(60), || pid_file.exists()));
    std::thread::sleep(Duration::from_secs(ttl + 1));
    assert_eq!(live_locks(&pg, "killed"), 1, "the heartbeat keeps it alive");

    kill(i32::try_from(holder.id()).expect("pid"), libc::SIGKILL);
    let killed_at = Instant::now();
    let _ = holder.wait();
    // Still held right after: a dead holder's lock lives out its TTL.
    let out = a.run(&["apply", "--auto-approve"]);
    let held_after = killed_at.elapsed();
    if held_after < Duration::from_secs(ttl - 2) {
        assert!(!out.status.success(), "{}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains(&format!("locked by pid {}", holder.id())),
            "{}",
            text(&out.stderr)
        );
    }

    // The next apply proceeds once it expired.
    let out = a.run(&["apply", "--auto-approve", "--lock-timeout", "1m"]);
    let freed_after = killed_at.elapsed();
    kill_recorded(&pid_file);
    assert!(out.status.success(), "{}", text(&out.stderr));
    eprintln!(
        "a SIGKILLed holder's lock (TTL {ttl}s) was taken over {freed_after:?} after the kill"
    );
    assert!(
        freed_after <= Duration::from_secs(ttl + 20),
        "{freed_after:?}"
    );
    assert_eq!(live_locks(&pg, "killed"), 0);
    let out = a.run(&["destroy", "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn pond_unlock_force_breaks_a_live_lock_and_the_holder_notices() {
    let pg = TestPostgres::start();
    let a = Runner::new(Some(&pg.url)).with_ttl(3);
    let pid_file = a.path("setup.pid");
    let _leftovers = Leftovers {
        pid_files: vec![pid_file.clone()],
        needles: Vec::new(),
    };
    // A member that waits for the slow one: it must not start once the
    // lock is lost.
    let mut spec = slow_spec("stuck", 8, &a.path("marker"), &pid_file);
    spec.push_str(&format!(
        "  - slug: after\n    depends_on: [slow]\n    setup: [ \"touch {}\" ]\n",
        a.path("after-ran").display()
    ));
    a.write_spec(&spec);
    let mut holder = a.spawn(&["apply", "--auto-approve"], "holder");
    wait_for_lock(&pg, "stuck");

    let other = Runner::new(Some(&pg.url));
    let out = other.run(&["pond", "unlock", "stuck", "--force"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&format!(
            "broke the lock of pond `stuck`, held by pid {}",
            holder.id()
        )),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(live_locks(&pg, "stuck"), 0);
    let out = other.run(&["pond", "unlock", "stuck"]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("pond `stuck` is not locked"));

    let status = holder.wait().expect("holder");
    kill_recorded(&pid_file);
    let err = a.read("holder.err");
    assert_eq!(
        status.code(),
        Some(1),
        "a run that lost its lock fails: {err}"
    );
    assert!(err.contains("the lock of pond `stuck` was broken"), "{err}");
    assert!(err.contains("the pond lock was lost"), "{err}");
    assert!(
        !a.path("after-ran").exists(),
        "no step started after the lock was lost: {err}"
    );
    let out = a.run(&["destroy", "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn state_migrate_copies_local_claims_once() {
    let pg = TestPostgres::start();
    let runner = Runner::new(None);
    let local = ClaimStore::local(&runner.path("state"));
    let first = local
        .write(&claim("cbx_000000000001", "m"))
        .wait()
        .expect("local claim");
    local
        .write(&claim("cbx_000000000002", "m"))
        .wait()
        .expect("local claim");

    let migrate = |extra: &[&str]| {
        let mut args = vec!["state", "migrate", "--from", "local", "--to", "postgres"];
        args.extend_from_slice(extra);
        runner.run(&args)
    };
    let out = migrate(&["--url", &pg.url, "--dry-run"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("would copy 2 claims"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        !lock_table_exists(&pg) || claim_rows(&pg, "m") == 0,
        "a dry run writes nothing"
    );

    let out = migrate(&["--url", &pg.url]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("copied 2 claims"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(claim_rows(&pg, "m"), 2);
    let stored = ClaimStore::postgres(&pg.url)
        .load("cbx_000000000001")
        .wait()
        .expect("readable")
        .expect("migrated");
    assert_eq!(stored, first, "the same claim, revision and all");

    // Again: nothing to do. With CRABBOX_STATE_URL instead of --url.
    let runner_with_url = Runner {
        dir: tempfile::tempdir().expect("tempdir"),
        url: Some(pg.url.clone()),
        ttl: None,
        env: Vec::new(),
    };
    std::fs::create_dir_all(runner_with_url.path("work")).expect("work");
    std::fs::create_dir_all(runner_with_url.path("home")).expect("home");
    copy_dir(
        &runner.path("state/claims"),
        &runner_with_url.path("state/claims"),
    );
    let out = runner_with_url.run(&["state", "migrate", "--from", "local", "--to", "postgres"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("copied 0 claims")
            && text(&out.stdout).contains("2 already there"),
        "{}",
        text(&out.stdout)
    );

    // A claim that changed on both sides is left alone and reported.
    local
        .write(&claim("cbx_000000000002", "m"))
        .wait()
        .expect("local rewrite");
    let out = migrate(&["--url", &pg.url]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("cbx_000000000002 is already in the database"),
        "{}",
        text(&out.stderr)
    );
    // Only local → postgres exists.
    let out = runner.run(&[
        "state", "migrate", "--from", "postgres", "--to", "local", "--url", &pg.url,
    ]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("only `--from local --to postgres`"));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
    }
}

/// Processes whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                String::from_utf8_lossy(&c)
                    .replace('\0', " ")
                    .contains(needle)
            })
        })
        .collect()
}

/// The issue's "done when": a pond of static `ssh` members applied with the
/// postgres backend (chosen in the spec) from one state dir is destroyed from
/// a second, empty state dir (chosen by `CRABBOX_STATE_URL`), with no
/// leftovers: no claim rows, no lock, no work roots, no processes.
#[test]
fn a_static_ssh_pond_applied_by_one_runner_is_destroyed_by_another() {
    let pg = TestPostgres::start();
    let sshd = TestSshd::start();
    // Islo keeps its members only in claims too: with the postgres backend they
    // travel between runners the same way.
    let rt = crate::support::runtime();
    let islo = rt.block_on(crate::fake_islo::start(
        crate::fake_islo::FakeConfig::default(),
    ));
    let islo_env = |r: Runner| {
        r.with_env("CRABBOX_ISLO_API_KEY", crate::fake_islo::API_KEY)
            .with_env("ISLO_BASE_URL", &islo.base_url)
    };
    let a = islo_env(Runner::new(None));
    let remote = a.path("remote");
    let ports = [free_port(), free_port()];
    let spec = format!(
        r#"version: 1
pond: shared-ssh
state: {{ backend: postgres, url: "{url}" }}
defaults:
  sync: false
  ssh: {{ host: 127.0.0.1, port: {port}, user: {user}, key: "{key}", work_root: "{remote}" }}
members:
  - slug: builder
    provider: ssh
    setup:
      - echo built > artifact.txt
      - run: exec python3 -m http.server {p0} --bind 127.0.0.1
        background: true
    ready: {{ tcp: {p0}, timeout: 30s }}
  - slug: worker
    provider: ssh
    depends_on: [builder]
    setup:
      - run: exec python3 -m http.server {p1} --bind 127.0.0.1
        background: true
    ready: {{ tcp: {p1}, timeout: 30s }}
  - slug: sandbox
    provider: islo
    setup: [ "echo in-islo" ]
"#,
        url = pg.url,
        port = sshd.port,
        user = sshd.user,
        key = sshd.key.display(),
        remote = remote.display(),
        p0 = ports[0],
        p1 = ports[1],
    );
    a.write_spec(&spec);
    let _leftovers = Leftovers {
        pid_files: Vec::new(),
        needles: ports.iter().map(|p| format!("http.server {p}")).collect(),
    };

    let out = a.run(&["apply", "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("Apply complete! Members: 3 added"),
        "{}",
        text(&out.stderr)
    );
    // The claims are in the database, none in runner A's state dir.
    assert_eq!(claim_rows(&pg, "shared-ssh"), 3);
    assert_eq!(
        islo.handle.sandbox_names().len(),
        1,
        "the Islo member's sandbox"
    );
    assert_eq!(
        std::fs::read_dir(a.path("state/claims"))
            .map(|d| d.count())
            .unwrap_or(0),
        0,
        "no claim file with the postgres backend"
    );
    let work_roots: Vec<PathBuf> = std::fs::read_dir(&remote)
        .expect("remote")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    assert_eq!(work_roots.len(), 2, "{work_roots:?}");
    for p in ports {
        assert_eq!(
            processes_with(&format!("http.server {p}")).len(),
            1,
            "service on {p}"
        );
    }
    let ids: BTreeSet<String> = pg
        .client()
        .query(
            "SELECT lease_id FROM crabbox_claims WHERE pond = 'shared-ssh' AND provider = 'ssh'",
            &[],
        )
        .expect("ids")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let roots: BTreeSet<String> = work_roots
        .iter()
        .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    assert_eq!(ids, roots, "each claim's work root");

    // Runner B: an empty state dir and the URL in the environment. It sees
    // the pond as A left it…
    let b = islo_env(Runner::new(Some(&pg.url)));
    b.write_spec(&spec);
    let out = b.run(&["plan"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("Plan: 0 to add, 0 to change, 0 to destroy."),
        "{}",
        text(&out.stdout)
    );
    let peers: Value = serde_json::from_slice(&b.run(&["peers", "--json"]).stdout).expect("peers");
    assert_eq!(
        peers["members"].as_array().map(Vec::len),
        Some(3),
        "{peers}"
    );

    // …and destroys it by name, without the spec.
    let b_empty = islo_env(Runner::new(Some(&pg.url)));
    let out = b_empty.run(&["destroy", "--pond", "shared-ssh", "--auto-approve"]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("Destroy complete! Members: 3 destroyed"),
        "{err}"
    );

    assert_eq!(claim_rows(&pg, "shared-ssh"), 0, "no claim row is left");
    assert!(
        islo.handle.sandbox_names().is_empty(),
        "no Islo sandbox is left"
    );
    let locks: i64 = pg
        .client()
        .query_one("SELECT count(*) FROM crabbox_locks", &[])
        .expect("locks")
        .get(0);
    assert_eq!(locks, 0, "no lock row is left");
    for root in &work_roots {
        assert!(!root.exists(), "{} was removed", root.display());
    }
    assert!(remote.exists(), "and nothing else on the host");
    for p in ports {
        assert!(
            processes_with(&format!("http.server {p}")).is_empty(),
            "the service on {p} was stopped"
        );
    }
    assert_eq!(
        std::fs::read_dir(b_empty.path("state/claims"))
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );
    let out = a.run(&["plan"]);
    assert!(
        text(&out.stdout).contains("Plan: 3 to add, 0 to change, 0 to destroy."),
        "runner A sees the pond gone: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}
