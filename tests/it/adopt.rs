//! Adopting a Hetzner pond made by Crabbox's own CLI
//! (`crabbox warmup --pond crab --slug S`): servers planted in the fake
//! Hetzner with exactly Crabbox's labels, keys and claim files are taken
//! over by `apply` without a create or a delete; a `keep=true` lease not in
//! the spec survives; one that does not fit the spec needs `--replace`.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use assert_cmd::Command;
use crabbox_core::labels;
use serde_json::{Value, json};

use crate::fake_hetzner::{FakeConfig, FakeHetzner, LoggedRequest, TOKEN, start};
use crate::sshd::TestSshd;

const POND: &str = "crab";

/// A working directory, a state directory, the test sshd and the fake.
struct World {
    dir: tempfile::TempDir,
    sshd: TestSshd,
    fake: FakeHetzner,
    _rt: tokio::runtime::Runtime,
}

impl World {
    fn new() -> Self {
        let sshd = TestSshd::start();
        let rt = crate::support::runtime();
        let fake = rt.block_on(start(FakeConfig {
            authorized_keys: Some(sshd.authorized_keys.clone()),
            ..FakeConfig::default()
        }));
        let dir = tempfile::tempdir().expect("tempdir");
        for d in ["home", "work", "state/claims"] {
            std::fs::create_dir_all(dir.path().join(d)).expect("dirs");
        }
        Self {
            dir,
            sshd,
            fake,
            _rt: rt,
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::from_std(crate::support::crabbox_in(self.dir.path()))
            .env("HCLOUD_TOKEN", TOKEN)
            .env("HCLOUD_ENDPOINT", &self.fake.base_url)
            .env_remove("HETZNER_TOKEN")
            .timeout(Duration::from_secs(120))
            .args(args)
            .output()
            .expect("runs")
    }

    /// The spec: members in Crabbox's words (`class`, `type`), reached at
    /// the test sshd through the `ssh_user`/`ssh_port` overrides.
    fn write_spec(&self, members: &str) {
        let spec = format!(
            "version: 1\npond: {POND}\ndefaults:\n  sync: false\n  ttl: 90m\n  idle_timeout: 30m\n  hetzner: {hetzner}\nmembers:\n{members}",
            hetzner = self.sshd.hetzner_defaults(),
        );
        std::fs::write(self.path("work/pond.yaml"), spec).expect("spec");
    }

    /// Plants what `crabbox warmup --pond crab --slug SLUG` leaves behind
    /// on Hetzner and on this machine; returns the server ID.
    fn plant_crabbox_lease(&self, lease: &str, slug: &str, class: &str, keep: bool) -> u64 {
        let labels = crabbox_labels(lease, slug, class, keep);
        let refs: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let hex = lease.trim_start_matches("cbx_");
        let id = self
            .fake
            .handle
            .plant_server(&format!("crabbox-{slug}-{hex}"), &refs);
        // Key name: providerKeyForLease (internal/cli/lease.go:314), labels
        // as EnsureSSHKey writes them (internal/cli/hcloud.go:252-259).
        self.fake.handle.plant_ssh_key(
            &format!("crabbox-cbx-{hex}"),
            &format!("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{hex:0>43} crabbox-{hex}"),
            &[("crabbox", "true"), ("created_by", "crabbox")],
        );
        let claim = crabbox_claim(lease, slug, id, &labels);
        std::fs::write(
            self.path(&format!("state/claims/{lease}.json")),
            format!("{}\n", serde_json::to_string_pretty(&claim).expect("JSON")),
        )
        .expect("claim");
        id
    }

    fn requests(&self, method: &str, prefix: &str) -> Vec<LoggedRequest> {
        self.fake
            .handle
            .requests()
            .into_iter()
            .filter(|r| r.method == method && r.path.starts_with(prefix))
            .collect()
    }

    fn server(&self, id: u64) -> Option<Value> {
        self.fake.handle.server(id)
    }

    fn claim(&self, lease: &str) -> Value {
        serde_json::from_slice(
            &std::fs::read(self.path(&format!("state/claims/{lease}.json"))).expect("claim"),
        )
        .expect("claim JSON")
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Unix seconds now.
fn now() -> u64 {
    crabbox_core::labels::now_secs()
}

/// Exactly the labels Crabbox's `warmup` puts on a Hetzner server:
/// `directLeaseLabels` (internal/cli/provider_labels.go:10-37) with the
/// compiled-in defaults (profile `default`, target `linux`, TTL 90m and idle
/// 30m: internal/cli/config.go:2888-2895, 2981-2982), then `state=ready`
/// once SSH answered (internal/providers/hetzner/backend.go:132-135).
fn crabbox_labels(lease: &str, slug: &str, class: &str, keep: bool) -> Vec<(String, String)> {
    let created = now() - 60;
    let hex = lease.trim_start_matches("cbx_");
    [
        ("class", class.to_owned()),
        ("crabbox", "true".to_owned()),
        ("created_by", "crabbox".to_owned()),
        ("keep", keep.to_string()),
        ("lease", lease.to_owned()),
        ("slug", slug.to_owned()),
        ("profile", "default".to_owned()),
        ("provider_key", format!("crabbox-cbx-{hex}")),
        ("provider", "hetzner".to_owned()),
        ("target", "linux".to_owned()),
        ("server_type", "cx23".to_owned()),
        ("state", "ready".to_owned()),
        ("created_at", created.to_string()),
        ("last_touched_at", created.to_string()),
        ("idle_timeout", "1800".to_owned()),
        ("idle_timeout_secs", "1800".to_owned()),
        ("ttl_secs", "5400".to_owned()),
        // min(touched + idle, created + ttl): provider_labels.go:112-121.
        ("expires_at", (created + 1800).to_string()),
        ("pond", POND.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// A claim as Crabbox writes it for a Hetzner lease (`leaseClaim`,
/// internal/cli/claim.go:23-61, keys in declaration order; `sshPort` an
/// integer, :53; Crabbox's bootstrap port 2222).
fn crabbox_claim(lease: &str, slug: &str, server: u64, labels: &[(String, String)]) -> Value {
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    json!({
        "leaseID": lease,
        "revision": "0123456789abcdef0123456789abcdef",
        "slug": slug,
        "provider": "hetzner",
        "cloudID": server.to_string(),
        "pond": POND,
        "repoRoot": "/home/dev/repo",
        "claimedAt": "2026-01-01T00:00:00Z",
        "lastUsedAt": "2026-01-01T00:00:00Z",
        "idleTimeoutSeconds": 1800,
        "sshHost": "203.0.113.9",
        "sshPort": 2222,
        "labels": labels,
    })
}

const API: &str = "cbx_0a0b0c0d0e01";
const DB: &str = "cbx_0a0b0c0d0e02";
const OLD: &str = "cbx_0a0b0c0d0e03";
const CACHE: &str = "cbx_0a0b0c0d0e04";

#[test]
fn a_pond_made_by_crabbox_is_adopted_without_creating_or_deleting_anything() {
    let w = World::new();
    let api = w.plant_crabbox_lease(API, "api", "beast", true);
    let db = w.plant_crabbox_lease(DB, "db", "beast", false);
    let old = w.plant_crabbox_lease(OLD, "old", "beast", true);
    let foreign = w
        .fake
        .handle
        .plant_server("prod-db", &[("team", "payments")]);
    w.write_spec(
        "  - slug: api\n    provider: hetzner\n    class: beast\n    setup: [ \"echo api\" ]\n  - slug: db\n    provider: hetzner\n    type: cx23\n    setup: [ \"echo db\" ]\n",
    );

    // The plan adopts both members and keeps `old` (keep=true, not in the spec).
    let out = w.run(&["plan", "--detailed-exitcode"]);
    let plan = text(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{plan}{}", text(&out.stderr));
    assert!(
        plan.contains("  ~ adopt: write crabbox's labels on a lease made by Crabbox"),
        "{plan}"
    );
    assert!(plan.contains("# api will be adopted"), "{plan}");
    assert!(plan.contains("# db will be adopted"), "{plan}");
    assert!(plan.contains("~ member \"api\" {"), "{plan}");
    assert!(
        plan.contains("+ pond_block"),
        "the labels to write are listed: {plan}"
    );
    assert!(plan.contains("+ pond_setup"), "{plan}");
    assert!(
        plan.lines()
            .any(|l| l.trim_start().starts_with("~ keep ") && l.ends_with("= true -> false")),
        "api's keep label follows the spec: {plan}"
    );
    assert!(
        plan.contains("  = old (hetzner, lease \"cbx_0a0b0c0d0e03\")"),
        "the kept lease is shown: {plan}"
    );
    assert!(plan.contains("--destroy-kept"), "{plan}");
    assert!(
        plan.contains("Plan: 2 to adopt, 0 to add, 0 to change, 0 to destroy."),
        "{plan}"
    );
    let out = w.run(&["plan", "--format", "json"]);
    let json: Value = serde_json::from_slice(&out.stdout).expect("plan JSON");
    let changes = json["member_changes"].as_array().expect("changes");
    let api_change = changes
        .iter()
        .find(|c| c["slug"] == "api")
        .expect("api change");
    assert_eq!(api_change["change"]["actions"], json!(["update"]));
    assert_eq!(
        api_change["change"]["adopting"],
        json!({"lease_id": API, "made_by": "crabbox"})
    );
    let old_change = changes
        .iter()
        .find(|c| c["slug"] == "old")
        .expect("old entry");
    assert_eq!(old_change["change"]["actions"], json!(["no-op"]));
    assert_eq!(old_change["change"]["kept"], json!(true));
    assert_eq!(json["summary"]["adopt"], json!(2));

    w.fake.handle.clear_requests();
    let out = w.run(&["apply", "--auto-approve"]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("Apply complete! Members: 2 adopted, 0 added, 0 changed, 0 destroyed."),
        "{err}"
    );
    assert!(
        !err.contains("Running setup"),
        "setup does not run without --rerun-setup: {err}"
    );
    assert!(w.requests("POST", "/v1/servers").is_empty(), "no create");
    assert!(
        w.requests("POST", "/v1/ssh_keys").is_empty(),
        "no key upload"
    );
    assert!(
        w.requests("DELETE", "/v1/").is_empty(),
        "no delete: {:?}",
        w.requests("DELETE", "/v1/")
    );
    let puts = w.requests("PUT", "/v1/servers/");
    let mut put_paths: Vec<&str> = puts.iter().map(|r| r.path.as_str()).collect();
    put_paths.sort_unstable();
    assert_eq!(
        put_paths,
        vec![format!("/v1/servers/{api}"), format!("/v1/servers/{db}")],
        "one relabel per adopted member"
    );
    for (id, lease, slug) in [(api, API, "api"), (db, DB, "db")] {
        let labels = w.server(id).expect("still there")["labels"].clone();
        for key in ["pond_spec", "pond_block", "pond_setup"] {
            assert!(labels.get(key).is_some(), "{slug}: {key} written: {labels}");
        }
        assert_ne!(
            labels["pond_setup"],
            json!("pending"),
            "setup counts as done"
        );
        // Crabbox's own labels stay as they were.
        for key in [
            "crabbox",
            "created_by",
            "provider",
            "lease",
            "slug",
            "pond",
            "class",
            "profile",
            "provider_key",
            "target",
            "server_type",
            "created_at",
            "last_touched_at",
            "idle_timeout",
        ] {
            let planted: Vec<(String, String)> = crabbox_labels(lease, slug, "beast", true);
            let want = planted
                .iter()
                .find(|(k, _)| k == key)
                .expect("planted")
                .1
                .clone();
            if key != "created_at" && key != "last_touched_at" {
                assert_eq!(labels[key], json!(want), "{slug}: {key} kept: {labels}");
            }
        }
        let claim = w.claim(lease);
        assert_eq!(claim["pond"], json!(POND));
        assert_eq!(claim["slug"], json!(slug));
        assert_eq!(claim["cloudID"], json!(id.to_string()));
        assert_eq!(
            claim["sshPort"],
            json!(2222),
            "Crabbox's endpoint stays: {claim}"
        );
        assert_eq!(claim["labels"]["pond_block"], labels["pond_block"]);
    }
    assert_eq!(
        w.server(old).expect("the kept lease survives")["labels"]["keep"],
        json!("true")
    );
    assert!(w.server(foreign).is_some());

    // Adopted: the next plan and apply have nothing to do.
    let out = w.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("No changes."));
    w.fake.handle.clear_requests();
    let out = w.run(&["apply", "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("Members: 0 added, 0 changed, 0 destroyed."),
        "{}",
        text(&out.stderr)
    );
    let writes: Vec<LoggedRequest> = w
        .fake
        .handle
        .requests()
        .into_iter()
        .filter(|r| r.method != "GET")
        .collect();
    assert!(
        writes.is_empty(),
        "a second apply writes nothing: {writes:?}"
    );

    // --destroy-kept destroys the kept lease, and only it.
    let out = w.run(&["apply", "--auto-approve", "--destroy-kept"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(w.server(old).is_none(), "destroyed with --destroy-kept");
    assert!(w.server(api).is_some() && w.server(db).is_some());
    assert!(
        w.requests("POST", "/v1/servers").is_empty(),
        "still no create"
    );
}

#[test]
fn a_crabbox_lease_that_does_not_fit_is_replaced_only_with_replace() {
    let w = World::new();
    let cache = w.plant_crabbox_lease(CACHE, "cache", "beast", true);
    w.write_spec(
        "  - slug: cache\n    provider: hetzner\n    class: standard\n    setup: [ \"echo cache set up\" ]\n",
    );

    let out = w.run(&["plan"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "member `cache` has a lease made by Crabbox ({CACHE}) that does not fit the spec: class is \"beast\" on the lease, \"standard\" in the spec"
        )),
        "{err}"
    );
    assert!(err.contains("`--replace cache`"), "{err}");
    let out = w.run(&["apply", "--auto-approve"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(w.requests("DELETE", "/v1/").is_empty());
    assert!(w.requests("POST", "/v1/servers").is_empty());
    assert!(w.server(cache).is_some());

    let out = w.run(&["plan", "--replace", "cache"]);
    let plan = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        plan.contains("# cache will be replaced, as requested"),
        "{plan}"
    );
    let out = w.run(&["apply", "--auto-approve", "--replace", "cache"]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("cache | cache set up"),
        "setup ran on the new lease: {err}"
    );
    assert!(w.server(cache).is_none(), "Crabbox's lease was destroyed");
    assert!(
        !w.fake
            .handle
            .ssh_keys()
            .iter()
            .any(|k| k["name"] == format!("crabbox-cbx-{}", CACHE.trim_start_matches("cbx_"))),
        "and so was the key Crabbox made for it (named by its provider_key label)"
    );
    assert_eq!(w.requests("POST", "/v1/servers").len(), 1, "one create");
    let ours: Vec<Value> = w
        .fake
        .handle
        .servers()
        .into_iter()
        .filter(|s| s["labels"]["slug"] == "cache")
        .collect();
    assert_eq!(ours.len(), 1);
    assert!(ours[0]["labels"].get("pond_block").is_some());
    let out = w.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
}

#[test]
fn destroy_leaves_kept_leases_outside_the_spec_unless_destroy_kept() {
    let w = World::new();
    let api = w.plant_crabbox_lease(API, "api", "beast", true);
    let old = w.plant_crabbox_lease(OLD, "old", "beast", true);
    w.write_spec("  - slug: api\n    provider: hetzner\n    class: beast\n");

    let out = w.run(&["destroy", "--auto-approve"]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "keeping `old` (lease {OLD}): it is not in the spec and is labelled keep=true; pass --destroy-kept to destroy it"
        )),
        "{err}"
    );
    assert!(w.server(api).is_none(), "the spec's member is destroyed");
    assert!(w.server(old).is_some(), "the kept lease is not");

    let out = w.run(&["destroy", "--auto-approve", "--destroy-kept"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(w.server(old).is_none(), "destroyed with --destroy-kept");
}

#[test]
fn a_saved_plan_carries_the_adoption_and_the_flags_it_was_made_with() {
    let w = World::new();
    let api = w.plant_crabbox_lease(API, "api", "beast", true);
    let old = w.plant_crabbox_lease(OLD, "old", "beast", true);
    w.write_spec("  - slug: api\n    provider: hetzner\n    class: beast\n");
    let planfile = w.path("work/adopt.plan");

    let out = w.run(&[
        "plan",
        "--destroy-kept",
        "-o",
        planfile.to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let saved: Value =
        serde_json::from_slice(&std::fs::read(&planfile).expect("saved")).expect("JSON");
    assert_eq!(saved["destroy_kept"], json!(true));
    assert_eq!(saved["rerun_setup"], json!(false));
    let changes = saved["plan"]["member_changes"].as_array().expect("changes");
    let adopting: Vec<&Value> = changes
        .iter()
        .filter(|c| c["change"].get("adopting").is_some())
        .collect();
    assert_eq!(adopting.len(), 1, "{changes:?}");
    assert_eq!(adopting[0]["lease_id"], json!(API));

    // Applied in a later second: the touch times the plan shows differ from
    // the ones computed now, which must not make the saved plan stale.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let out = w.run(&["apply", planfile.to_str().expect("utf-8")]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("Apply complete! Members: 1 adopted, 0 added, 0 changed, 1 destroyed."),
        "{err}"
    );
    assert!(
        w.server(old).is_none(),
        "--destroy-kept came from the saved plan"
    );
    assert!(
        w.server(api).expect("adopted")["labels"]
            .get("pond_block")
            .is_some()
    );
    assert!(w.requests("POST", "/v1/servers").is_empty(), "no create");
}

/// Adopts a lease planted in the in-memory provider with Crabbox's labels,
/// with or without `--rerun-setup`; returns the commands run on it and the
/// lease's labels afterwards.
fn adopt_in_memory(rerun_setup: bool) -> (Vec<(String, String)>, Vec<String>, labels::Labels) {
    use std::sync::Arc;

    use crabbox_apply::discover::discover;
    use crabbox_apply::executor::ExecOptions;
    use crabbox_apply::progress::{Mode, Reporter};
    use crabbox_apply::reconcile;
    use crabbox_core::lease::{Endpoint, Lease};
    use crabbox_core::provider::ProviderName;
    use crabbox_plan::Action;
    use crabbox_plan::diff::{PlanOptions, plan};
    use crabbox_providers::Provider;
    use crabbox_providers::registry::Registry;
    use crabbox_state::claims::ClaimStore;

    let desired = crate::converge::load(&format!(
        "version: 1\npond: {POND}\ndefaults: {{ sync: false }}\nmembers:\n  - slug: api\n    class: beast\n    setup: [ \"echo set up again\" ]\n"
    ));
    let provider = crate::fake_provider::MemoryProvider::new();
    let mut planted: labels::Labels = crabbox_labels(API, "api", "beast", true)
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    planted.insert("provider".into(), "local".into());
    provider.plant(Lease {
        id: API.to_owned(),
        provider: ProviderName::Local,
        cloud_id: "crabbox-api".to_owned(),
        labels: planted,
        endpoint: Endpoint::default(),
        listed: true,
        claimed: false,
    });
    let state = tempfile::tempdir().expect("tempdir");
    let store = ClaimStore::local(state.path());
    let registry = Registry::with(vec![provider.clone() as Arc<dyn Provider>]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let options = PlanOptions {
        now: now(),
        rerun_setup,
        ..PlanOptions::default()
    };
    let inventory = rt.block_on(discover(POND, &[], &registry, state.path(), &store));
    let p = plan(&desired, &inventory, &options).expect("plans");
    assert_eq!(p.changes.len(), 1);
    assert_eq!(p.changes[0].action, Action::Adopt);
    assert_eq!(p.changes[0].rerun_setup, rerun_setup);
    let ctx = Arc::new(reconcile::context(
        &p,
        Some(&desired),
        &inventory,
        registry.clone(),
        state.path(),
        &store,
        state.path().to_path_buf(),
        None,
        Arc::new(Reporter::new(Mode::Json)),
    ));
    let (outcome, applied) = rt.block_on(reconcile::apply(&p, ctx, &ExecOptions::default(), false));
    assert!(outcome.success(), "{:?}", outcome.results);
    assert_eq!(
        (applied.adopted, applied.added, applied.destroyed),
        (1, 0, 0)
    );
    let after = rt.block_on(discover(POND, &[], &registry, state.path(), &store));
    assert!(
        !plan(&desired, &after, &options)
            .expect("plans")
            .has_changes(),
        "adopted: nothing left to do"
    );
    let commands = provider.commands.lock().expect("lock").clone();
    let creates = provider.creates.lock().expect("lock").clone();
    let labels = after.leases[0].labels.clone();
    (commands, creates, labels)
}

#[test]
fn adoption_runs_setup_only_with_rerun_setup() {
    let (commands, creates, labels) = adopt_in_memory(false);
    assert!(
        commands.is_empty(),
        "no setup without --rerun-setup: {commands:?}"
    );
    assert!(creates.is_empty());
    assert_eq!(labels.get("state").map(|v| v.as_str()), Some("ready"));

    let (commands, creates, labels) = adopt_in_memory(true);
    assert_eq!(
        commands,
        vec![(API.to_owned(), "echo set up again".to_owned())],
        "setup ran on the adopted lease"
    );
    assert!(creates.is_empty(), "no create");
    assert_ne!(
        labels.get("pond_setup").map(|v| v.as_str()),
        Some("pending")
    );
    assert_eq!(labels.get("state").map(|v| v.as_str()), Some("ready"));
}

/// Another pond's lease `api` known from a Crabbox claim on this machine,
/// another pond's server `db` known only from its labels (a teammate's):
/// both slugs are taken, so this pond's `api` and `db` get Crabbox's
/// collision suffix (internal/cli/slug.go:103-145), and stay members `api`
/// and `db` through `pond_member`.
#[test]
fn a_slug_taken_elsewhere_gets_crabboxs_suffix_and_the_member_keeps_its_name() {
    let w = World::new();
    let other_api = "cbx_0a0b0c0d0e09";
    let mut claim_labels = crabbox_labels(other_api, "api", "beast", true);
    for (k, v) in &mut claim_labels {
        if k == "pond" {
            *v = "other".to_owned();
        }
    }
    let mut claim = crabbox_claim(other_api, "api", 4242, &claim_labels);
    claim["pond"] = json!("other");
    std::fs::write(
        w.path(&format!("state/claims/{other_api}.json")),
        serde_json::to_string_pretty(&claim).expect("JSON"),
    )
    .expect("claim");
    let teammate: Vec<(String, String)> = crabbox_labels("cbx_0a0b0c0d0e0a", "db", "beast", true)
        .into_iter()
        .map(|(k, v)| {
            if k == "pond" {
                (k, "team".to_owned())
            } else {
                (k, v)
            }
        })
        .collect();
    let refs: Vec<(&str, &str)> = teammate
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    w.fake.handle.plant_server("crabbox-db-teammate", &refs);
    w.write_spec(
        "  - slug: api\n    provider: hetzner\n    class: standard\n    setup: [ \"echo api up\" ]\n  - slug: db\n    provider: hetzner\n    type: cx23\n    setup: [ \"echo db up\" ]\n",
    );

    let out = w.run(&["apply", "--auto-approve"]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("Members: 2 added"), "{err}");
    for member in ["api", "db"] {
        let server = w
            .fake
            .handle
            .servers()
            .into_iter()
            .find(|s| s["labels"]["pond"] == POND && s["labels"]["pond_member"] == member)
            .unwrap_or_else(|| panic!("{member} carries pond_member"));
        let lease = server["labels"]["lease"]
            .as_str()
            .expect("lease")
            .to_owned();
        // Attempt 0 is taken: the first suffix is seeded with "<lease>-0".
        let want = crabbox_core::slug::with_collision_suffix(member, &format!("{lease}-0"));
        assert_eq!(server["labels"]["slug"], json!(want), "{server}");
        assert_eq!(
            w.claim(&lease)["slug"],
            json!(want),
            "the claim's slug is the label's, as Crabbox's release requires"
        );
    }
    let env = std::fs::read_to_string(w.path("home/.crabbox/pond/crab/env")).expect("env");
    assert!(env.contains("CRABBOX_POND_API_HOST="), "{env}");
    assert!(env.contains("CRABBOX_POND_DB_HOST="), "{env}");
    let out = w.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "the suffixed leases are the members api and db: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Issue 15: the slugs other leases hold are read once per apply — one
/// listing of the account's crabbox servers, not one per member created.
#[test]
fn an_apply_lists_the_slugs_in_use_once_for_all_its_creates() {
    let w = World::new();
    w.write_spec(
        "  - slug: a\n    provider: hetzner\n  - slug: b\n    provider: hetzner\n  - slug: c\n    provider: hetzner\n  - slug: d\n    provider: hetzner\n",
    );
    let out = w.run(&["apply", "--auto-approve"]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("Members: 4 added"), "{err}");
    let account_listings = w
        .fake
        .handle
        .requests()
        .into_iter()
        .filter(|r| {
            r.method == "GET"
                && r.path == "/v1/servers"
                && r.param("label_selector") == Some("crabbox=true")
        })
        .count();
    assert_eq!(account_listings, 1, "one listing for four creates");
}
