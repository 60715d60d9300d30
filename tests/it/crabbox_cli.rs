//! The verbs and flags Crabbox users type, with Crabbox's outputs and exit
//! codes (docs/crabbox-compat.md §7-8), run as the real binary on the local
//! provider (and the test sshd for the SSH verbs). Each test that pins a
//! Crabbox format cites the Crabbox source (commit 0bba5f7) it follows.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use assert_cmd::Command;
use serde_json::Value;

use crate::sshd::TestSshd;

/// A private state dir, home and working directory.
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        let env = Self {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        for d in ["home", "work", "remote"] {
            std::fs::create_dir_all(env.path(d)).expect("dirs");
        }
        env
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn cmd(&self) -> Command {
        let mut c = Command::from_std(crate::support::crabbox_in(self.dir.path()));
        c.env("TZ", "UTC")
            .env_remove("CRABBOX_CONFIG")
            .env_remove("CRABBOX_PROVIDER")
            .env_remove("HCLOUD_TOKEN")
            .env_remove("HETZNER_TOKEN")
            .env_remove("ISLO_API_KEY")
            .env_remove("TENSORLAKE_API_KEY")
            .timeout(Duration::from_secs(120));
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("runs")
    }

    /// Runs and asserts the exit code; returns stdout.
    fn code(&self, args: &[&str], code: i32) -> (String, String) {
        let out = self.run(args);
        let (o, e) = (text(&out.stdout), text(&out.stderr));
        assert_eq!(
            out.status.code(),
            Some(code),
            "crabbox {args:?}\nstdout: {o}\nstderr: {e}"
        );
        (o, e)
    }

    /// `warmup --pond P --slug S …`; returns the lease ID from the `leased` line.
    fn warmup(&self, pond: &str, slug: &str, extra: &[&str]) -> String {
        let mut args = vec!["warmup", "--pond", pond, "--slug", slug];
        args.extend_from_slice(extra);
        let (out, _) = self.code(&args, 0);
        let line = out.lines().next().expect("a leased line");
        line.split(' ').nth(1).expect("an ID").to_owned()
    }

    fn list(&self, extra: &[&str]) -> Vec<Value> {
        let mut args = vec!["list", "--json"];
        args.extend_from_slice(extra);
        let (out, _) = self.code(&args, 0);
        serde_json::from_str::<Value>(&out)
            .expect("JSON")
            .as_array()
            .expect("an array")
            .clone()
    }

    fn write_claim(&self, lease_id: &str, claim: &Value) {
        let dir = self.path("state/claims");
        std::fs::create_dir_all(&dir).expect("claims dir");
        std::fs::write(dir.join(format!("{lease_id}.json")), claim.to_string()).expect("claim");
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `key=value` words of a line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split(' ')
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
}

fn is_rfc3339_utc(s: &str) -> bool {
    humantime::parse_rfc3339(s).is_ok() && s.ends_with('Z')
}

#[test]
fn warmup_prints_crabboxs_leased_line_keeps_by_default_and_refuses_tailscale() {
    let env = Env::new();
    let (out, _) = env.code(
        &[
            "warmup",
            "--pond",
            "alpha",
            "--slug",
            "api",
            "--idle-timeout",
            "45m",
        ],
        0,
    );
    // run.go:155: leased <id> slug= provider= server= type= ip=[ tailscale=] idle_timeout= expires=
    let line = out.lines().next().expect("leased line");
    let words: Vec<&str> = line.split(' ').collect();
    assert_eq!(words[0], "leased", "{line}");
    let id = words[1];
    let keys: Vec<&str> = words[2..]
        .iter()
        .map(|w| w.split('=').next().expect("key"))
        .collect();
    assert_eq!(
        keys,
        [
            "slug",
            "provider",
            "server",
            "type",
            "ip",
            "idle_timeout",
            "expires"
        ],
        "{line}"
    );
    assert_eq!(field(line, "slug"), "api");
    assert_eq!(field(line, "provider"), "local");
    assert_eq!(field(line, "idle_timeout"), "45m0s", "a Go duration");
    assert!(is_rfc3339_utc(field(line, "expires")), "{line}");
    assert!(field(line, "ip").starts_with("127."), "{line}");

    // --keep defaults to true (run.go:53); --keep=false is accepted.
    let keep = |id: &str| {
        env.list(&[])
            .into_iter()
            .find(|s| s["labels"]["lease"] == id)
            .expect("listed")["labels"]["keep"]
            .clone()
    };
    assert_eq!(keep(id), "true");
    let other = env.warmup("alpha", "db", &["--keep=false"]);
    assert_eq!(keep(&other), "false");
    // Go's flag package takes a bool only as --keep=false; `--keep false` is a usage error.
    env.code(
        &[
            "warmup", "--pond", "alpha", "--slug", "x", "--keep", "false",
        ],
        2,
    );

    // Idempotent per slug: the existing lease's line again, nothing created.
    let (again, err) = env.code(&["warmup", "--pond", "alpha", "--slug", "api"], 0);
    assert!(err.contains("idempotent"), "{err}");
    assert_eq!(
        again.lines().next().expect("line").split(' ').nth(1),
        Some(id)
    );

    let (_, err) = env.code(
        &["warmup", "--pond", "alpha", "--slug", "ts", "--tailscale"],
        2,
    );
    assert!(
        err.contains("--tailscale: provider `local` cannot join a tailnet"),
        "{err}"
    );
    let (_, err) = env.code(
        &[
            "warmup", "--pond", "alpha", "--slug", "c", "--class", "huge",
        ],
        2,
    );
    assert!(err.contains("unknown class"), "{err}");
    let (_, err) = env.code(
        &[
            "warmup", "--pond", "alpha", "--slug", "sized", "--class", "beast", "--type", "cx22",
        ],
        0,
    );
    assert!(
        err.contains("--class/--type have no effect on provider `local`"),
        "{err}"
    );
    // pause by slug across ponds: the local provider cannot, exit 2 as
    // Crabbox's "does not support" (heartbeat.go:83).
    let (_, err) = env.code(&["pause", "sized"], 2);
    assert!(err.contains("cannot pause"), "{err}");
    env.code(&["pond", "release", "alpha"], 0);
}

#[test]
fn missing_credentials_are_exit_3() {
    let env = Env::new();
    // hcloud.go:165: HCLOUD_TOKEN or HETZNER_TOKEN is required → exit 3.
    let (_, err) = env.code(
        &[
            "warmup",
            "--pond",
            "alpha",
            "--slug",
            "api",
            "--provider",
            "hetzner",
        ],
        3,
    );
    assert!(err.contains("HCLOUD_TOKEN"), "{err}");
    env.code(&["list", "--provider", "hetzner"], 3);
    // A claim on a provider without credentials: its lease cannot be seen.
    env.write_claim(
        "cbx_0123456789ab",
        &serde_json::json!({
            "leaseID": "cbx_0123456789ab", "slug": "web", "provider": "hetzner",
            "cloudID": "42", "pond": "alpha", "repoRoot": "/r",
            "claimedAt": "2026-01-01T00:00:00Z", "lastUsedAt": "2026-01-01T00:00:00Z",
        }),
    );
    let (_, err) = env.code(&["status", "--id", "web"], 3);
    assert!(err.contains("HCLOUD_TOKEN"), "{err}");
    env.code(&["release", "cbx_0123456789ab"], 3);
    env.code(&["pond", "peers", "--pond", "alpha", "--json"], 3);
    env.code(&["list"], 3);
}

#[test]
fn warmup_without_provider_uses_the_one_crabboxs_user_config_names() {
    let env = Env::new();
    let config = env.path("home/.config/crabbox/config.yaml");
    std::fs::create_dir_all(config.parent().expect("dir")).expect("config dir");
    // Nothing configured: `local`, which needs no credentials.
    env.warmup("alpha", "first", &[]);
    // Crabbox's `provider:` key (config.go) picks the provider: Hetzner
    // without a token is exit 3, so the file was read.
    std::fs::write(&config, "provider: hetzner\n").expect("config");
    let (_, err) = env.code(&["warmup", "--pond", "alpha", "--slug", "api"], 3);
    assert!(err.contains("HCLOUD_TOKEN"), "{err}");
    // The environment wins over the file.
    let out = env
        .cmd()
        .env("CRABBOX_PROVIDER", "local")
        .args(["warmup", "--pond", "alpha", "--slug", "api"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("provider=local"));
    // A provider nobody knows is a usage error naming the way out.
    std::fs::write(&config, "provider: nimbus\n").expect("config");
    let (_, err) = env.code(&["warmup", "--pond", "alpha", "--slug", "web"], 2);
    assert!(
        err.contains("nimbus") && err.contains("--provider"),
        "{err}"
    );
}

#[test]
fn id_is_a_lease_id_or_a_slug_across_ponds_and_an_ambiguous_slug_is_exit_4() {
    let env = Env::new();
    let alpha_api = env.warmup("alpha", "api", &[]);
    let beta_api = env.warmup("beta", "api", &[]);
    let gamma_api = env.warmup("gamma", "api", &[]);
    let beta_db = env.warmup("beta", "db", &["--expose", "8080"]);
    // slug.go:52-61, 103-145: the slug label is unique across the account,
    // so beta's and gamma's `api` carry Crabbox's `-%04x` suffix.
    let crabbox_slug = |id: &str| {
        let (out, _) = env.code(&["status", id], 0);
        field(out.lines().next().expect("a line"), "slug").to_owned()
    };
    assert_eq!(crabbox_slug(&alpha_api), "api");
    let (beta_slug, gamma_slug) = (crabbox_slug(&beta_api), crabbox_slug(&gamma_api));
    for s in [&beta_slug, &gamma_slug] {
        assert!(
            s.len() == 8 && s.starts_with("api-") && s[4..].chars().all(|c| c.is_ascii_hexdigit()),
            "{s}"
        );
    }
    assert_ne!(beta_slug, gamma_slug);

    // A slug unique across ponds needs no --pond; positional as in Crabbox.
    for args in [
        vec!["status", "--id", "db"],
        vec!["status", "db"],
        vec!["status", &beta_db],
    ] {
        let (out, _) = env.code(&args, 0);
        assert!(
            out.starts_with(&format!("{beta_db} slug=db provider=local ")),
            "{out}"
        );
    }
    // Crabbox's slug names one lease: `api` is alpha's, the suffixed one beta's.
    let (out, _) = env.code(&["status", "--id", "api"], 0);
    assert!(out.starts_with(&alpha_api), "{out}");
    let (out, _) = env.code(&["status", &beta_slug], 0);
    assert!(out.starts_with(&beta_api), "{out}");
    // The member name, narrowed by --pond.
    let (out, _) = env.code(&["status", "api", "--pond", "gamma"], 0);
    assert!(out.starts_with(&gamma_api), "{out}");
    // With alpha's `api` gone, `api` names the member of two ponds:
    // run.go:3766-3773: exit 4, one `lease=… slug=… server=… host=…` line per match.
    env.code(&["release", &alpha_api], 0);
    let (_, err) = env.code(&["status", "--id", "api"], 4);
    assert!(
        err.contains("slug \"api\" matches multiple active leases:"),
        "{err}"
    );
    for (id, slug) in [(&beta_api, &beta_slug), (&gamma_api, &gamma_slug)] {
        assert!(
            err.contains(&format!("  lease={id} slug={slug} server=")),
            "{err}"
        );
    }
    let (out, _) = env.code(&["status", &beta_api], 0);
    assert!(out.contains(" pond=beta "), "{out}");
    // A canonical ID is an identity, never a slug (run.go:3750-3758); unknown → 4.
    let (_, err) = env.code(&["status", "--id", "cbx_000000000000"], 4);
    assert!(
        err.contains("lease/server not found: cbx_000000000000"),
        "{err}"
    );
    env.code(&["status", "--id", "nosuch"], 4);
    // lease_flags.go:491-496 / run.go:3806: no ID, or --id and a positional, is usage.
    let (_, err) = env.code(&["status"], 2);
    assert!(
        err.contains("usage: crabbox status --id <lease-id-or-slug>"),
        "{err}"
    );
    env.code(&["stop", "--id", "db", "db"], 2);

    // run, inspect, heartbeat by slug with no pond.
    let (out, _) = env.code(&["run", "--id", "db", "--", "echo", "hello from db"], 0);
    assert_eq!(out.trim(), "hello from db");
    let out = env.run(&["run", "--id", "db", "--", "exit 9"]);
    assert_eq!(
        out.status.code(),
        Some(9),
        "the remote exit code passes through"
    );
    env.code(&["run", "--id", "api", "--", "true"], 4);

    // inspect.go:39-52: key=value lines then label.<k>=<v>.
    let (out, _) = env.code(&["inspect", "db"], 0);
    let keys: Vec<&str> = out
        .lines()
        .map(|l| l.split('=').next().expect("key"))
        .take_while(|k| !k.starts_with("label."))
        .collect();
    assert_eq!(
        keys,
        [
            "id",
            "slug",
            "provider",
            "target",
            "windows_mode",
            "state",
            "server",
            "host",
            "network",
            "ssh",
            "ssh_fallback_ports",
            "idle_for",
            "idle_timeout",
            "last_touched",
            "expires"
        ]
    );
    assert!(out.contains(&format!("\nlabel.lease={beta_db}\n")), "{out}");
    assert!(out.contains("\nlabel.pond=beta\n"), "{out}");

    // heartbeat.go:188; the touch sets last_touched_at and recomputes expires_at.
    let (out, _) = env.code(&["heartbeat", "--id", "db", "--idle-timeout", "10m"], 0);
    let line = out.trim();
    assert!(
        line.starts_with(&format!(
            "heartbeat lease={beta_db} slug=db provider=local state=ready "
        )),
        "{line}"
    );
    assert_eq!(field(line, "idle_timeout"), "10m0s");
    assert!(is_rfc3339_utc(field(line, "last_touched")), "{line}");
    let listed = env.list(&["--pond", "beta"]);
    let db = listed
        .iter()
        .find(|s| s["labels"]["slug"] == "db")
        .expect("db");
    let touched: u64 = db["labels"]["last_touched_at"]
        .as_str()
        .expect("set")
        .parse()
        .expect("secs");
    let expires: u64 = db["labels"]["expires_at"]
        .as_str()
        .expect("set")
        .parse()
        .expect("secs");
    assert_eq!(expires, touched + 600, "min(touched + idle, created + ttl)");
    env.code(&["heartbeat", "--id", "db", "--idle-timeout", "0s"], 2);

    // ssh: the local provider has no SSH login.
    let (_, err) = env.code(&["ssh", "--id", "db"], 2);
    assert!(err.contains("does not support ssh"), "{err}");

    // release by slug across ponds (positional), and `stop` is its alias.
    env.code(&["release", "db"], 0);
    env.code(&["stop", "--id", &beta_api], 0);
    env.code(&["status", "--id", "api"], 0);
    env.code(&["release", "--id", "api"], 0);
    assert!(env.list(&[]).is_empty());
}

#[test]
fn status_json_and_wait_follow_crabbox() {
    let env = Env::new();
    let id = env.warmup("alpha", "api", &[]);
    // status.go:257-286: keys in order, types as Crabbox's StatusView.
    let (out, _) = env.code(&["status", "--json", "--id", "api"], 0);
    let v: Value = serde_json::from_str(&out).expect("JSON");
    let keys: Vec<&str> = v
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    for (k, ty) in [
        ("id", "string"),
        ("slug", "string"),
        ("provider", "string"),
        ("target", "string"),
        ("state", "string"),
        ("serverId", "string"),
        ("serverType", "string"),
        ("host", "string"),
        ("pond", "string"),
        ("network", "string"),
        ("sshHost", "string"),
        ("sshUser", "string"),
        ("sshPort", "string"),
        ("sshKey", "string"),
        ("idleTimeout", "string"),
        ("expiresAt", "string"),
        ("labels", "object"),
        ("hasHost", "bool"),
        ("ready", "bool"),
    ] {
        let value = &v[k];
        let ok = match ty {
            "string" => value.is_string(),
            "object" => value.is_object(),
            _ => value.is_boolean(),
        };
        assert!(ok, "{k} is a {ty}: {v}");
    }
    assert_eq!(v["id"], id.as_str());
    assert_eq!(v["ready"], true);
    assert_eq!(v["idleTimeout"], "30m0s");
    assert!(is_rfc3339_utc(v["expiresAt"].as_str().expect("str")));
    assert!(!keys.contains(&"windowsMode"), "omitempty");

    // --wait on a ready lease returns at once.
    let (out, _) = env.code(&["status", "--wait", "--id", "api"], 0);
    assert!(out.contains(" ready=true "), "{out}");
    env.code(&["pond", "release", "alpha"], 0);

    // A failed member is terminal: exit 5 (status.go:170-175).
    std::fs::write(
        env.path("work/pond.yaml"),
        "version: 1\npond: taint\ndefaults: { sync: false }\nmembers:\n  - slug: db\n    setup: [ \"exit 3\" ]\n",
    )
    .expect("spec");
    env.code(&["apply", "--auto-approve"], 1);
    let (_, err) = env.code(&["status", "--wait", "--id", "db"], 5);
    assert!(
        err.contains("reached terminal state failed before ready"),
        "{err}"
    );
    env.code(&["heartbeat", "db"], 5);

    // A lease still being set up times out with exit 5 (status.go:86-93).
    std::fs::write(
        env.path("work/pond.yaml"),
        "version: 1\npond: slow\ndefaults: { sync: false }\nmembers:\n  - slug: web\n    setup: [ \"sleep 6\" ]\n",
    )
    .expect("spec");
    let mut apply = std::process::Command::new(assert_cmd::cargo::cargo_bin("crabbox"));
    apply
        .args(["apply", "--auto-approve"])
        .env("CRABBOX_STATE_DIR", env.path("state"))
        .env("HOME", env.path("home"))
        .env("NO_COLOR", "1")
        .current_dir(env.path("work"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = apply.spawn().expect("apply starts");
    let start = std::time::Instant::now();
    while env.run(&["status", "--id", "web"]).status.code() != Some(0) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "web never appeared"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (out, err) = env.code(
        &["status", "--wait", "--wait-timeout", "1s", "--id", "web"],
        5,
    );
    assert!(
        err.contains("timed out waiting for web to become ready"),
        "{err}"
    );
    assert!(out.contains(" state=leased "), "{out}");
    assert!(child.wait().expect("apply ends").success());
    env.code(&["status", "--wait", "--id", "web"], 0);
    env.code(&["destroy", "--auto-approve"], 0);
    env.code(&["pond", "release", "taint"], 0);
}

#[test]
fn list_json_is_an_array_of_crabboxs_server() {
    let env = Env::new();
    let id = env.warmup("alpha", "api", &["--expose", "8080"]);
    env.warmup("beta", "db", &[]);
    let all = env.list(&[]);
    assert_eq!(all.len(), 2);
    let s = all
        .iter()
        .find(|s| s["labels"]["lease"] == id.as_str())
        .expect("api");
    // hcloud.go:97-129 (Server): key order, and capitalised CloudID/Provider/HostID (no json tag).
    let keys: Vec<&str> = s
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "CloudID",
            "Provider",
            "HostID",
            "id",
            "name",
            "status",
            "labels",
            "public_net",
            "private_net",
            "server_type"
        ]
    );
    assert!(s["CloudID"].is_string() && s["Provider"] == "local" && s["HostID"].is_string());
    assert!(s["id"].is_i64(), "int64");
    assert!(s["name"].is_string() && s["status"].is_string());
    assert!(
        s["labels"]
            .as_object()
            .expect("map")
            .values()
            .all(Value::is_string)
    );
    // hcloud.go:112-116, 50-59: nested objects.
    assert!(
        s["public_net"]["ipv4"]["ip"]
            .as_str()
            .expect("ip")
            .starts_with("127.")
    );
    assert!(s["private_net"]["ipv4"]["ip"].is_string());
    assert!(s["server_type"]["name"].is_string());
    assert_eq!(s["labels"]["pond"], "alpha");

    assert_eq!(env.list(&["--pond", "beta"]).len(), 1);
    assert_eq!(env.list(&["--provider", "local", "--all"]).len(), 2);
    assert!(env.list(&["--provider", "ssh"]).is_empty());
    env.code(&["list", "--provider", "nope"], 2);
    env.code(&["pond", "release", "alpha"], 0);
    env.code(&["pond", "release", "beta"], 0);
}

#[test]
fn pond_verbs_take_pond_and_provider_flags_and_release_joins_words() {
    let env = Env::new();
    let id = env.warmup("my-pond", "api", &["--expose", "8080"]);
    // pond_bridge.go:122-141: --pond, --provider, --json, --share-port, --share-ttl.
    let (out, _) = env.code(&["pond", "peers", "--pond", "my-pond", "--json"], 0);
    let doc: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(doc["members"][0]["leaseID"], id.as_str());
    let (positional, _) = env.code(&["pond", "peers", "my-pond", "--json"], 0);
    assert_eq!(positional, out, "the positional name still works");
    let (none, _) = env.code(
        &[
            "pond",
            "peers",
            "--pond",
            "my-pond",
            "--provider",
            "islo",
            "--json",
        ],
        0,
    );
    assert_eq!(
        serde_json::from_str::<Value>(&none).expect("JSON")["members"],
        serde_json::json!([])
    );
    let (_, err) = env.code(
        &[
            "pond",
            "peers",
            "--pond",
            "my-pond",
            "--share-port",
            "8080",
            "--share-ttl",
            "1h",
        ],
        0,
    );
    assert!(err.contains("has no URL bridge"), "{err}");
    env.code(
        &["pond", "peers", "--pond", "my-pond", "--share-port", "0"],
        0,
    );
    // :136-141: no pond, or a port out of range, is exit 2.
    let (_, err) = env.code(&["pond", "peers"], 2);
    assert!(
        err.contains("usage: crabbox pond peers --pond <name>"),
        "{err}"
    );
    env.code(
        &[
            "pond",
            "peers",
            "--share-port",
            "70000",
            "--pond",
            "my-pond",
        ],
        2,
    );
    env.code(&["pond", "peers", "a", "--pond", "b"], 2);

    let (out, _) = env.code(
        &[
            "pond",
            "connect",
            "--pond",
            "my-pond",
            "--provider",
            "local",
            "--json",
        ],
        0,
    );
    assert!(serde_json::from_str::<Value>(&out).expect("JSON")["forwards"].is_array());

    // pond_bridge.go:166-168: the words are joined and normalized ("my pond" → my-pond).
    env.code(
        &["pond", "release", "--pond", "my-pond", "--provider", "ssh"],
        0,
    );
    assert_eq!(env.list(&[]).len(), 1, "--provider ssh released nothing");
    env.code(&["pond", "release", "my", "pond"], 0);
    assert!(env.list(&[]).is_empty());
}

#[test]
fn claims_list_is_crabboxs_document_and_malformed_files_are_exit_2() {
    let env = Env::new();
    let id = env.warmup("alpha", "api", &[]);
    let (out, _) = env.code(&["claims", "list", "--json"], 0);
    let doc: Value = serde_json::from_str(&out).expect("JSON");
    // claims.go:21-45: {version, source, claims, problems}; leaseId with a lowercase d.
    assert_eq!(doc["version"], 1);
    assert_eq!(doc["source"], "local-claims");
    assert_eq!(doc["problems"], serde_json::json!([]));
    let c = &doc["claims"][0];
    let keys: Vec<&str> = c
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "leaseId",
            "slug",
            "provider",
            "repoRoot",
            "pond",
            "targetOS",
            "windowsMode",
            "claimedAt",
            "lastUsedAt",
            "idleTimeoutSeconds"
        ]
    );
    assert_eq!(c["leaseId"], id.as_str());
    assert!(c["idleTimeoutSeconds"].is_u64(), "int");
    let (text_out, _) = env.code(&["claims"], 0);
    assert!(text_out.starts_with(
        "Local claims (unverified local state; provider backends were not queried)\n"
    ));
    assert!(
        text_out.contains(&format!("- leaseId: \"{id}\"\n")),
        "{text_out}"
    );

    // --verify (ours) marks a claim whose lease is gone.
    env.write_claim(
        "cbx_00000000beef",
        &serde_json::json!({"leaseID": "cbx_00000000beef", "slug": "gone", "provider": "local",
            "pond": "alpha", "repoRoot": "/r", "claimedAt": "", "lastUsedAt": ""}),
    );
    let (out, _) = env.code(&["claims", "--json", "--verify"], 0);
    let doc: Value = serde_json::from_str(&out).expect("JSON");
    let dangling: Vec<(&str, bool)> = doc["claims"]
        .as_array()
        .expect("claims")
        .iter()
        .map(|c| {
            (
                c["leaseId"].as_str().expect("id"),
                c["dangling"].as_bool().expect("bool"),
            )
        })
        .collect();
    assert_eq!(dangling, [("cbx_00000000beef", true), (id.as_str(), false)]);
    // Not live: 4 for status; release forgets the claim, as Crabbox's release
    // counts a 404 as released and removes the claim (hetzner/backend.go:341-369).
    let (_, err) = env.code(&["status", "--id", "gone"], 4);
    assert!(err.contains("crabbox release cbx_00000000beef"), "{err}");
    env.code(&["release", "gone"], 0);
    assert!(!env.path("state/claims/cbx_00000000beef.json").exists());

    // claims.go:71-73, 147-164: malformed files are problems with codes, exit 2.
    std::fs::write(env.path("state/claims/cbx_0000000000aa.json"), "{not json").expect("write");
    env.write_claim(
        "cbx_0000000000bb",
        &serde_json::json!({"leaseID": "cbx_0000000000cc"}),
    );
    let (out, _) = env.code(&["claims", "--json"], 2);
    let doc: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(
        doc["problems"],
        serde_json::json!([
            {"file": "cbx_0000000000aa.json", "code": "invalid_json", "message": "claim file is not valid JSON"},
            {"file": "cbx_0000000000bb.json", "code": "lease_id_mismatch", "message": "claim filename and payload leaseId do not match"},
        ])
    );
    env.code(&["claims", "extra"], 2);
}

#[test]
fn cleanup_releases_expired_unkept_leases_and_dry_run_deletes_nothing() {
    let env = Env::new();
    let gone = env.warmup("alpha", "old", &["--keep=false", "--ttl", "1s"]);
    let kept = env.warmup("alpha", "kept", &["--ttl", "1s"]);
    let fresh = env.warmup("beta", "fresh", &["--keep=false"]);
    std::thread::sleep(Duration::from_millis(2100));
    // hetzner/backend.go:268: `delete server id=… name=…`, nothing deleted.
    let (out, _) = env.code(&["cleanup", "--dry-run"], 0);
    assert_eq!(out, format!("delete server id={gone} name={gone}\n"));
    assert_eq!(env.list(&[]).len(), 3);
    env.code(&["cleanup", "--provider", "local"], 0);
    let mut left: Vec<String> = env
        .list(&[])
        .iter()
        .map(|s| s["labels"]["lease"].as_str().expect("id").to_owned())
        .collect();
    left.sort();
    let mut want = vec![kept, fresh];
    want.sort();
    assert_eq!(left, want, "keep=true and unexpired leases stay");
    env.code(&["pond", "release", "alpha"], 0);
    env.code(&["pond", "release", "beta"], 0);
}

#[test]
fn usage_errors_are_exit_2_except_for_terraforms_verbs() {
    let env = Env::new();
    env.code(&["status", "--bogus"], 2);
    env.code(&["warmup", "--slug", "x"], 2);
    env.code(&["nosuchverb"], 2);
    // plan/apply/destroy keep Terraform's codes: 2 means "changes" there.
    env.code(&["plan", "--bogus"], 1);
    env.code(&["apply", "--bogus"], 1);
    let (out, _) = env.code(&["--help"], 0);
    assert!(
        out.contains("3  missing or rejected provider credentials"),
        "{out}"
    );
    assert!(
        out.contains("4  lease not found, or a slug that matches several leases"),
        "{out}"
    );
}

#[test]
fn ssh_prints_the_login_command_and_a_dead_host_is_exit_7() {
    let env = Env::new();
    let sshd = TestSshd::start();
    std::fs::write(
        env.path("work/pond.yaml"),
        format!(
            "version: 1\npond: remote\ndefaults: {{ sync: false }}\nmembers:\n  - slug: box\n    provider: ssh\n    ssh: {{ host: 127.0.0.1, port: {port}, user: {user}, key: \"{key}\", work_root: \"{root}\" }}\n",
            port = sshd.port,
            user = sshd.user,
            key = sshd.key.display(),
            root = env.path("remote").display(),
        ),
    )
    .expect("spec");
    env.code(&["apply", "--auto-approve"], 0);
    // ssh_cmd.go:10-21: printed, not executed; it logs in.
    let (out, _) = env.code(&["ssh", "box"], 0);
    let line = out.trim();
    assert!(
        line.starts_with(&format!("ssh -p {} -i ", sshd.port)),
        "{line}"
    );
    assert!(
        line.ends_with(&format!("{}@127.0.0.1", sshd.user)),
        "{line}"
    );
    let login = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{line} echo logged-in"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("ssh runs");
    assert_eq!(
        text(&login.stdout).trim(),
        "logged-in",
        "{}",
        text(&login.stderr)
    );
    let (out, _) = env.code(&["status", "--json", "box"], 0);
    let v: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(
        v["sshPort"],
        sshd.port.to_string(),
        "a string (status.go:275)"
    );
    assert_eq!(v["sshUser"], sshd.user.as_str());

    // The host is gone: `run` cannot reach it, Crabbox's remote failure 7.
    drop(sshd);
    let (_, err) = env.code(&["run", "--id", "box", "--", "true"], 7);
    assert!(err.contains("box"), "{err}");
    // The claim goes with the pond (the dead host's work root cannot be removed: not asserted).
    let _ = env.run(&["pond", "release", "remote"]);
}

#[test]
fn hetzner_leases_resolve_from_the_account_and_a_rejected_token_is_exit_3() {
    use crate::fake_hetzner::{FakeConfig, TOKEN, start};
    let env = Env::new();
    let rt = crate::support::runtime();
    let fake = rt.block_on(start(FakeConfig::default()));
    // Servers made on another machine: no local claim, only the account knows them.
    let ours = |pond: &'static str, lease: &'static str| {
        [
            ("crabbox", "true"),
            ("created_by", "crabbox"),
            ("provider", "hetzner"),
            ("pond", pond),
            ("lease", lease),
            ("slug", "api"),
            ("state", "ready"),
        ]
    };
    let a = fake
        .handle
        .plant_server("crabbox-api-a", &ours("alpha", "cbx_00000000000a"));
    fake.handle
        .plant_server("crabbox-api-b", &ours("beta", "cbx_00000000000b"));
    let with = |token: &str, args: &[&str]| {
        env.cmd()
            .env("HCLOUD_TOKEN", token)
            .env("HCLOUD_ENDPOINT", &fake.base_url)
            .args(args)
            .output()
            .expect("runs")
    };
    // run.go:3766-3773 over the account's servers: ambiguous across ponds → 4.
    let out = with(TOKEN, &["status", "--id", "api"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("lease=cbx_00000000000a slug=api server="));
    let out = with(TOKEN, &["status", "--id", "cbx_00000000000b"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(" pond=beta "));
    // pool.go:84-86: Hetzner's `id` is the numeric server ID, CloudID its decimal string.
    let out = with(
        TOKEN,
        &["list", "--json", "--provider", "hetzner", "--pond", "alpha"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let listed: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(listed[0]["id"], serde_json::json!(a));
    assert_eq!(listed[0]["CloudID"], a.to_string());
    assert_eq!(listed[0]["Provider"], "hetzner");
    // A 401 is a credentials error: exit 3 (hcloud.go:165; auth.go:87), for every verb.
    for args in [
        &["list", "--provider", "hetzner"][..],
        &["status", "--id", "api"][..],
        &[
            "warmup",
            "--pond",
            "alpha",
            "--slug",
            "new",
            "--provider",
            "hetzner",
        ][..],
    ] {
        let out = with("wrong-token", args);
        assert_eq!(
            out.status.code(),
            Some(3),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains("HCLOUD_TOKEN"),
            "{}",
            text(&out.stderr)
        );
    }
}

#[test]
fn provider_flags_take_crabboxs_aliases() {
    let env = Env::new();
    // target.go:300-306: `static` and `static-ssh` are the ssh provider.
    for alias in ["static", "static-ssh", "ssh"] {
        let (out, _) = env.code(&["list", "--provider", alias, "--json"], 0);
        assert_eq!(out.trim(), "[]", "{alias}: {out}");
    }
    let (_, err) = env.code(&["list", "--provider", "statik"], 2);
    assert!(err.contains("unknown provider `statik`"), "{err}");
}
