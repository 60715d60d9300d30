//! Crabbox's user config (issue 12, item 5): the files Crabbox reads, in its
//! order (internal/cli/config.go:4947-4987), the environment over them, the
//! spec between, `crabbox config show` naming where each value came from,
//! and what the Hetzner provider takes from it.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crabbox_core::labels;
use crabbox_core::lease::new_lease_id;
use crabbox_core::provider::ProviderName;
use crabbox_providers::hetzner::HetznerProvider;
use crabbox_providers::{CreateRequest, Provider};
use crabbox_spec::desired::DesiredMember;
use crabbox_spec::member_labels;
use crabbox_spec::user_config::{Source, UserConfig};
use serde_json::{Value, json};

use crate::fake_hetzner::{self, FakeConfig, TOKEN};

/// A home with `~/.config/crabbox/config.yaml` and a working directory.
struct Dirs {
    dir: tempfile::TempDir,
}

impl Dirs {
    fn new() -> Self {
        let dirs = Self {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        std::fs::create_dir_all(dirs.user_file().parent().expect("parent")).expect("config dir");
        std::fs::create_dir_all(dirs.work()).expect("work");
        dirs
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    /// Linux's `os.UserConfigDir()` + `crabbox/config.yaml` (config.go:4963-4969).
    fn user_file(&self) -> PathBuf {
        self.home().join(".config/crabbox/config.yaml")
    }

    fn load(&self, env: &[(&str, &str)]) -> Result<UserConfig, String> {
        let mut vars: BTreeMap<String, OsString> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), OsString::from(v)))
            .collect();
        vars.insert("HOME".to_owned(), self.home().into_os_string());
        UserConfig::load_from(|n| vars.get(n).cloned(), &self.work(), false)
            .map_err(|e| e.to_string())
    }

    fn config_show(&self, env: &[(&str, &str)]) -> std::process::Output {
        let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("crabbox"));
        cmd.args(["config", "show", "--json"])
            .current_dir(self.work())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home())
            .env("NO_COLOR", "1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("crabbox runs")
    }
}

fn file_source(path: &Path, line: usize, column: usize) -> Source {
    Source::File {
        path: path.to_owned(),
        line,
        column,
    }
}

#[test]
fn files_merge_in_crabboxs_order_and_the_environment_wins() {
    let d = Dirs::new();
    std::fs::write(
        d.user_file(),
        "provider: islo\nclass: fast\nhetzner:\n  location: hel1\n  image: debian-12\ncoordinator: https://old.example\nbroker:\n  url: https://coord.example\n",
    )
    .expect("user file");
    std::fs::write(d.work().join("crabbox.yaml"), "class: small\n").expect("repo file");
    std::fs::write(
        d.work().join(".crabbox.yaml"),
        "class: large\nunknownKey: 1\n",
    )
    .expect("dot file");
    let config = d
        .load(&[("CRABBOX_HETZNER_IMAGE", "ubuntu-22.04")])
        .expect("loads");
    assert_eq!(
        config.files,
        [
            d.user_file(),
            d.work().join("crabbox.yaml"),
            d.work().join(".crabbox.yaml")
        ]
    );
    assert_eq!(config.get("provider"), Some("islo"));
    assert_eq!(
        config.source("provider"),
        Some(&file_source(&d.user_file(), 1, 11))
    );
    // ./.crabbox.yaml is read last (config.go:4955-4959).
    assert_eq!(config.get("class"), Some("large"));
    assert_eq!(
        config.source("class"),
        Some(&file_source(&d.work().join(".crabbox.yaml"), 1, 8))
    );
    assert_eq!(config.get("hetzner.location"), Some("hel1"));
    // broker.url is applied after coordinator (config.go:5240-5253).
    assert_eq!(config.get("coordinator"), Some("https://coord.example"));
    // CRABBOX_HETZNER_IMAGE wins over the file (config.go:8367-8374).
    assert_eq!(config.get("hetzner.image"), Some("ubuntu-22.04"));
    assert_eq!(
        config.source("hetzner.image"),
        Some(&Source::Env {
            name: "CRABBOX_HETZNER_IMAGE".to_owned()
        })
    );
    // Owner and org come from the environment only (coordinator.go:2144, 2387).
    assert_eq!(config.get("owner"), None);
    let with_owner = d
        .load(&[("GIT_AUTHOR_EMAIL", "a@x"), ("CRABBOX_ORG", "acme")])
        .expect("loads");
    assert_eq!(with_owner.get("owner"), Some("a@x"));
    assert_eq!(with_owner.get("org"), Some("acme"));
}

#[test]
fn crabbox_config_replaces_every_other_file_and_defaults_are_crabboxs() {
    let d = Dirs::new();
    std::fs::write(d.user_file(), "provider: islo\n").expect("user file");
    std::fs::write(d.work().join("crabbox.yaml"), "class: small\n").expect("repo file");
    let explicit = d.dir.path().join("explicit.yaml");
    std::fs::write(&explicit, "hetzner:\n  location: ash\n").expect("explicit");
    let config = d
        .load(&[("CRABBOX_CONFIG", explicit.to_str().expect("utf-8"))])
        .expect("loads");
    assert_eq!(config.files, [explicit]);
    assert_eq!(config.get("hetzner.location"), Some("ash"));
    // Not read: Crabbox's defaults show through (config.go:2881-2982).
    assert_eq!(config.get("provider"), Some("hetzner"));
    assert_eq!(config.source("provider"), Some(&Source::Default));
    assert_eq!(config.get("class"), Some("beast"));
    assert_eq!(config.configured_provider(), None);
}

#[test]
fn a_malformed_file_is_an_error_at_its_line_and_column() {
    let d = Dirs::new();
    std::fs::write(d.user_file(), "provider: hetzner\nclass: [oops\n").expect("file");
    let err = d.load(&[]).expect_err("malformed");
    let at = format!("{}:2:8", d.user_file().display());
    assert!(err.contains(&at), "{err}");
    assert!(err.contains("help: "), "{err}");
    std::fs::write(d.user_file(), "hetzner:\n  location: [a, b]\n").expect("file");
    let err = d.load(&[]).expect_err("a list where a value belongs");
    assert!(
        err.contains(&format!("{}:2:13", d.user_file().display())),
        "{err}"
    );
    assert!(
        err.contains("`hetzner.location` must be a single value"),
        "{err}"
    );
    // `crabbox config show` stops with exit 2, as Crabbox does (config.go:4983-4987).
    let out = d.config_show(&[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("{}:2:13", d.user_file().display()))
    );
}

#[test]
fn config_show_names_sources_lets_the_spec_win_over_files_and_redacts_secrets() {
    let d = Dirs::new();
    std::fs::write(
        d.user_file(),
        "class: fast\nhetzner:\n  location: hel1\n  image: debian-12\nbroker:\n  token: sekrit-token\n",
    )
    .expect("user file");
    std::fs::write(
        d.work().join("pond.yaml"),
        "version: 1\npond: demo\ndefaults:\n  class: small\n  hetzner:\n    location: nbg1\n    image: fedora-40\nmembers: []\n",
    )
    .expect("spec");
    let out = d.config_show(&[("CRABBOX_HETZNER_IMAGE", "ubuntu-22.04")]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("sekrit"), "secrets are redacted: {stdout}");
    let doc: Value = serde_json::from_str(&stdout).expect("JSON");
    let setting = |key: &str| {
        doc["settings"]
            .as_array()
            .expect("settings")
            .iter()
            .find(|s| s["key"] == key)
            .unwrap_or_else(|| panic!("{key} in {doc}"))
            .clone()
    };
    assert_eq!(
        setting("class"),
        json!({"key": "class", "value": "small", "source": {"kind": "spec", "pointer": "/defaults/class"}})
    );
    assert_eq!(setting("hetzner.location")["value"], "nbg1");
    // The environment wins over the spec.
    assert_eq!(
        setting("hetzner.image"),
        json!({"key": "hetzner.image", "value": "ubuntu-22.04", "source": {"kind": "env", "name": "CRABBOX_HETZNER_IMAGE"}})
    );
    assert_eq!(
        setting("coordinatorToken"),
        json!({"key": "coordinatorToken", "value": "<redacted>", "source": {
            "kind": "file", "path": d.user_file(), "line": 6, "column": 10}})
    );
    assert_eq!(setting("provider")["source"], json!({"kind": "default"}));
    assert_eq!(doc["files"], json!([d.user_file()]));
}

#[tokio::test]
async fn hetzner_takes_location_image_and_class_a_member_leaves_open_from_the_config() {
    let d = Dirs::new();
    std::fs::write(
        d.user_file(),
        "class: tiny\nhetzner:\n  location: hel1\n  image: debian-12\n",
    )
    .expect("user file");
    let config = d.load(&[]).expect("loads");
    let fake = fake_hetzner::start(FakeConfig {
        boot_delay: Duration::from_millis(10),
        ..FakeConfig::default()
    })
    .await;
    let state = tempfile::tempdir().expect("state");
    let provider = HetznerProvider::new(&fake.base_url, TOKEN, state.path())
        .with_testboxes_dir(&state.path().join("testboxes"))
        .with_ssh_bootstrap(false)
        .with_boot_polling(Duration::from_millis(20), Duration::from_secs(10))
        .with_user_config(&config);
    let create = |block: Value| {
        let member = DesiredMember {
            provider_block: Some(block),
            ..DesiredMember::new("db", ProviderName::Hetzner)
        };
        let lease_id = new_lease_id();
        CreateRequest {
            labels: member_labels::for_create("cfg", &lease_id, &member, labels::now_secs()),
            lease_id,
            pond: "cfg".to_owned(),
            member,
        }
    };
    provider.create(&create(json!({}))).await.expect("create");
    // The spec's block still wins.
    provider
        .create(&create(
            json!({"location": "nbg1", "image": "ubuntu-24.04"}),
        ))
        .await
        .expect("create");
    let bodies: Vec<Value> = fake
        .handle
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == "/v1/servers")
        .map(|r| r.body)
        .collect();
    assert_eq!(bodies[0]["location"], "hel1");
    assert_eq!(bodies[0]["image"], "debian-12");
    assert_eq!(bodies[0]["server_type"], "ccx13", "class tiny's first type");
    assert_eq!(bodies[1]["location"], "nbg1");
    assert_eq!(bodies[1]["image"], "ubuntu-24.04");
}

/// A malformed user config stops Hetzner creates (its location, image and
/// class would be guessed) with the file's line and column, before any
/// server is made; reading the pond still works.
#[test]
fn a_malformed_config_refuses_hetzner_creates_before_any_server_is_made() {
    let d = Dirs::new();
    std::fs::write(d.user_file(), "hetzner:\n  location: [a, b]\n").expect("file");
    let rt = crate::support::runtime();
    let fake = rt.block_on(fake_hetzner::start(FakeConfig::default()));
    std::fs::write(
        d.work().join("pond.yaml"),
        "version: 1\npond: cfg\ndefaults: { sync: false }\nmembers:\n  - slug: db\n    provider: hetzner\n",
    )
    .expect("spec");
    let run = |args: &[&str]| {
        Command::new(assert_cmd::cargo::cargo_bin("crabbox"))
            .args(args)
            .current_dir(d.work())
            .env("HOME", d.home())
            .env("CRABBOX_STATE_DIR", d.dir.path().join("state"))
            .env("NO_COLOR", "1")
            .env("HCLOUD_TOKEN", TOKEN)
            .env("HCLOUD_ENDPOINT", &fake.base_url)
            .env_remove("HETZNER_TOKEN")
            .env_remove("CRABBOX_CONFIG")
            .output()
            .expect("crabbox runs")
    };
    let plan = run(&["plan"]);
    assert!(plan.status.success(), "{plan:?}");
    let out = run(&["apply", "--auto-approve"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:2:13", d.user_file().display())),
        "{stderr}"
    );
    assert!(stderr.contains("crabbox config show"), "{stderr}");
    assert!(
        !fake.handle.requests().iter().any(|r| r.method == "POST"),
        "nothing is created: {:?}",
        fake.handle.requests()
    );
}

/// Crabbox's `tailscale:` block: `tags` is a list in a file and a comma
/// list in `CRABBOX_TAILSCALE_TAGS`; the defaults are Crabbox's; what the
/// enrollment takes from it.
#[test]
fn tailscale_settings_come_from_crabboxs_block_and_variables() {
    use crabbox_providers::tailnet::enroll::TailscaleConfig;
    let d = Dirs::new();
    let config = d.load(&[]).expect("loads");
    assert_eq!(
        TailscaleConfig::from_config(&config),
        TailscaleConfig {
            tags: vec!["tag:crabbox".to_owned()],
            hostname_template: "crabbox-{slug}".to_owned(),
            auth_key_env: "CRABBOX_TAILSCALE_AUTH_KEY".to_owned(),
        }
    );
    std::fs::write(
        d.user_file(),
        "tailscale:\n  tags: [tag:ci, Tag:Team-A]\n  hostnameTemplate: ci-{provider}-{slug}\n  authKeyEnv: MY_TS_KEY\n",
    )
    .expect("file");
    let config = d.load(&[]).expect("loads");
    assert_eq!(config.get("tailscale.tags"), Some("tag:ci,Tag:Team-A"));
    let ts = TailscaleConfig::from_config(&config);
    assert_eq!(ts.tags, ["tag:ci", "tag:team-a"]);
    assert_eq!(ts.hostname_template, "ci-{provider}-{slug}");
    assert_eq!(ts.auth_key_env, "MY_TS_KEY");
    let config = d
        .load(&[("CRABBOX_TAILSCALE_TAGS", "tag:env")])
        .expect("loads");
    assert_eq!(TailscaleConfig::from_config(&config).tags, ["tag:env"]);
    std::fs::write(d.user_file(), "tailscale:\n  tags: [[nested]]\n").expect("file");
    let err = d.load(&[]).expect_err("a list of lists");
    assert!(
        err.contains("`tailscale.tags` must be a list of single values"),
        "{err}"
    );
}
