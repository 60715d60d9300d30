//! The `aws` provider end to end, through the `crabbox` binary against
//! moto's EC2 (`tests/it/moto.rs`): members' setup runs over SSH on the
//! tests' sshd (moto's instance addresses lead nowhere, so `aws.ssh_host`
//! and `aws.ssh_port` point SSH there), the shared security group and the
//! lease key pairs, discovery and relabel by tags, release, an untagged
//! instance left alone, adoption after a SIGKILL, and a pond mixing `aws`,
//! `hetzner` (the fake API) and `local` members.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crabbox_core::labels::Labels;
use crabbox_providers::aws::api::{Ec2, Instance, LIVE_STATES};
use serde_json::Value;

use crate::fake_hetzner::{self, FakeConfig, FakeHetzner};
use crate::moto::Moto;
use crate::moto_proxy::MotoProxy;
use crate::sshd::TestSshd;

/// One test's world: moto, the sshd every instance's SSH leads to, the
/// state, home and spec directories, and (for mixed ponds) the fake
/// Hetzner API.
pub(crate) struct World {
    dir: tempfile::TempDir,
    pub(crate) pond: String,
    pub(crate) sshd: TestSshd,
    pub(crate) moto: Moto,
    /// Where crabbox sends EC2 calls: moto, or a proxy in front of it.
    pub(crate) endpoint: String,
    hetzner: Option<FakeHetzner>,
    /// The fault-injecting proxy, when EC2 calls go through one.
    pub(crate) proxy: Option<MotoProxy>,
    rt: tokio::runtime::Runtime,
}

impl World {
    /// A world for pond `<name>-<this process's ID>`.
    pub(crate) fn new(name: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        for d in ["home", "work"] {
            std::fs::create_dir_all(dir.path().join(d)).expect("dirs");
        }
        let sshd = TestSshd::start();
        // The member's own key (the sshd's client key): its public half
        // beside it, as `aws.ssh_key` requires.
        let public = Command::new("ssh-keygen")
            .arg("-y")
            .arg("-f")
            .arg(&sshd.key)
            .output()
            .expect("ssh-keygen runs");
        assert!(public.status.success(), "{public:?}");
        let key = dir.path().join("id_member");
        std::fs::copy(&sshd.key, &key).expect("copy key");
        std::fs::write(dir.path().join("id_member.pub"), &public.stdout).expect("public key");
        let moto = Moto::start();
        let endpoint = moto.url.clone();
        Self {
            dir,
            pond: format!("{name}-{}", std::process::id()),
            sshd,
            moto,
            endpoint,
            hetzner: None,
            proxy: None,
            rt: crate::support::runtime(),
        }
    }

    /// Also serves a fake Hetzner API whose servers are the sshd.
    pub(crate) fn with_hetzner(mut self) -> Self {
        self.hetzner = Some(self.rt.block_on(fake_hetzner::start(FakeConfig {
            authorized_keys: Some(self.sshd.authorized_keys.clone()),
            boot_delay: Duration::from_millis(20),
            ..FakeConfig::default()
        })));
        self
    }

    /// Sends crabbox's EC2 calls through a proxy that logs them and
    /// refuses the launches a test asks it to.
    pub(crate) fn with_proxy(mut self) -> Self {
        let proxy = self.rt.block_on(MotoProxy::start(&self.moto.url));
        self.endpoint = proxy.url.clone();
        self.proxy = Some(proxy);
        self
    }

    pub(crate) fn proxy(&self) -> &MotoProxy {
        self.proxy.as_ref().expect("a proxy")
    }

    /// The (type, market) of every `RunInstances` the proxy saw, in order.
    pub(crate) fn launches(&self) -> Vec<(String, String)> {
        self.proxy()
            .requests("RunInstances")
            .iter()
            .map(|r| {
                (
                    r.params.get("InstanceType").cloned().unwrap_or_default(),
                    r.params
                        .get("InstanceMarketOptions.MarketType")
                        .cloned()
                        .unwrap_or_else(|| "on-demand".to_owned()),
                )
            })
            .collect()
    }

    pub(crate) fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// The `aws:` defaults every member gets: SSH to the sshd with the
    /// member's own key, ingress from a documentation range (no public
    /// address lookup).
    pub(crate) fn aws_defaults(&self) -> String {
        format!(
            "{{ ssh_host: 127.0.0.1, ssh_port: {port}, ssh_user: {user}, ssh_key: \"{key}\", ssh_cidrs: [198.51.100.7/32] }}",
            port = self.sshd.port,
            user = self.sshd.user,
            key = self.path("id_member").display(),
        )
    }

    pub(crate) fn write_spec(&self, members: &str) {
        self.write_spec_with(&self.aws_defaults(), members);
    }

    pub(crate) fn write_spec_with(&self, aws: &str, members: &str) {
        let hetzner = format!("  hetzner: {}\n", self.sshd.hetzner_defaults());
        let spec = format!(
            "version: 1\npond: {pond}\ndefaults:\n  sync: false\n  aws: {aws}\n{hetzner}members:\n{members}",
            pond = self.pond,
        );
        std::fs::write(self.path("work/pond.yaml"), spec).expect("spec");
    }

    /// `crabbox` with moto as EC2 — the endpoint and credentials set for
    /// this child only — and the fake Hetzner API when there is one.
    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut c = crate::support::crabbox_in(self.dir.path());
        c.args(args)
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "eu-west-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", self.path("home/aws-config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                self.path("home/aws-credentials"),
            )
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_ENDPOINT_URL_EC2")
            .env_remove("HCLOUD_TOKEN")
            .env_remove("HETZNER_TOKEN");
        if let Some(h) = &self.hetzner {
            c.env("HCLOUD_TOKEN", fake_hetzner::TOKEN)
                .env("HCLOUD_ENDPOINT", &h.base_url);
        }
        c
    }

    pub(crate) fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("crabbox runs")
    }

    /// Runs `args`, which must succeed; returns stderr.
    pub(crate) fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "crabbox {args:?} failed ({:?})\nstdout:\n{}\nstderr:\n{}",
            out.status.code(),
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stderr)
    }

    /// A client of moto itself (not the proxy).
    pub(crate) fn ec2(&self) -> Ec2 {
        self.rt
            .block_on(async { Ec2::new(&self.moto.sdk_config().await) })
    }

    /// Every live instance moto holds.
    pub(crate) fn instances(&self) -> Vec<Instance> {
        self.instances_ever()
            .into_iter()
            .filter(|i| LIVE_STATES.contains(&i.state.as_str()))
            .collect()
    }

    /// Every instance moto holds, terminated ones too.
    pub(crate) fn instances_ever(&self) -> Vec<Instance> {
        let ec2 = self.ec2();
        self.rt
            .block_on(ec2.instances(&[]))
            .expect("DescribeInstances")
    }

    /// The live instances of this pond.
    pub(crate) fn pond_instances(&self) -> Vec<Instance> {
        self.instances()
            .into_iter()
            .filter(|i| i.tags.get("pond").map(|v| v.as_str()) == Some(self.pond.as_str()))
            .collect()
    }

    /// The key pairs moto holds, by name.
    pub(crate) fn key_pairs(&self) -> Vec<(String, Labels)> {
        let ec2 = self.ec2();
        self.rt
            .block_on(ec2.key_pairs(&[]))
            .expect("DescribeKeyPairs")
    }

    /// The lease IDs `peers --json` lists.
    pub(crate) fn live_leases(&self) -> BTreeSet<String> {
        let out = self.run(&["peers", "--json"]);
        assert!(out.status.success(), "peers: {}", text(&out.stderr));
        let peers: Value = serde_json::from_slice(&out.stdout).expect("peers JSON");
        peers["members"]
            .as_array()
            .expect("members")
            .iter()
            .map(|m| m["leaseID"].as_str().expect("leaseID").to_owned())
            .collect()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = self.run(&["destroy", "--auto-approve"]);
        for i in self.instances_ever() {
            if let Some(lease) = i.tags.get("lease") {
                let _ = std::fs::remove_dir_all(std::path::Path::new("/work/crabbox").join(lease));
            }
        }
    }
}

pub(crate) fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn aws_members_are_tagged_instances_set_up_over_ssh_and_released_with_their_key_pairs() {
    let world = World::new("aws-life").with_proxy();
    // An instance someone else launched, without crabbox's tags.
    let ec2 = world.ec2();
    let group = world
        .rt
        .block_on(ec2.create_security_group("someone", "not crabbox's", None, &Labels::new()))
        .expect("group");
    let planted = world
        .rt
        .block_on(ec2.run(&crabbox_providers::aws::api::Launch {
            key_name: "someone".to_owned(),
            root_gb: 8,
            ..crate::moto::launch(
                &group,
                "planted",
                "t3.small",
                crabbox_providers::aws::api::Market::OnDemand,
                &[("Name", "not-crabbox")],
            )
        }))
        .expect("planted instance");
    world.write_spec(
        r#"  - slug: db
    provider: aws
    type: t3.small
    setup: [ "echo db on $CRABBOX_LEASE_ID > marker.txt" ]
  - slug: app
    provider: aws
    class: tiny
    depends_on: [db]
    setup: [ "echo app on $CRABBOX_LEASE_ID > marker.txt" ]
"#,
    );
    let log = world.ok(&["apply", "--auto-approve"]);
    assert!(
        log.contains("aws: db: launching type=t3.small market=spot in eu-west-1"),
        "attempts are reported: {log}"
    );

    // Discovery by tags: two instances, each carrying every label.
    let instances = world.pond_instances();
    assert_eq!(instances.len(), 2, "{instances:#?}");
    let leases = world.live_leases();
    assert_eq!(leases.len(), 2, "{leases:?}");
    for i in &instances {
        let lease = i.tags.get("lease").expect("lease tag");
        assert!(leases.iter().any(|l| l == lease), "{lease} listed");
        for (k, want) in [
            ("crabbox", "true"),
            ("created_by", "crabbox"),
            ("provider", "aws"),
            ("pond", world.pond.as_str()),
            ("market", "spot"),
            ("aws_region", "eu-west-1"),
        ] {
            assert_eq!(
                i.tags.get(k).map(|v| v.as_str()),
                Some(want),
                "{k} on {i:#?}"
            );
        }
        let key = format!("crabbox-{}", lease.replace('_', "-"));
        assert_eq!(
            i.tags.get("provider_key").map(|v| v.as_str()),
            Some(key.as_str())
        );
        assert!(
            i.tags
                .get("Name")
                .is_some_and(|n| n.starts_with("crabbox-")),
            "{i:#?}"
        );
        // Setup really ran over SSH, in the lease's work root.
        let marker = std::path::Path::new("/work/crabbox")
            .join(lease)
            .join("workspace/marker.txt");
        let written = std::fs::read_to_string(&marker)
            .unwrap_or_else(|e| panic!("{}: {e}", marker.display()));
        assert!(written.contains(lease.as_str()), "{written}");
    }
    // `class: tiny` tried Crabbox's first tiny type.
    assert!(
        instances.iter().any(|i| i.instance_type == "m7a.large"),
        "{instances:#?}"
    );

    // One security group for both, created once, tagged, SSH on 2222 and
    // 22 from the configured range only.
    let groups = world
        .rt
        .block_on(ec2.security_group("crabbox-runners", None))
        .expect("describe")
        .expect("crabbox-runners exists");
    assert_eq!(groups.tags.get("crabbox").map(|v| v.as_str()), Some("true"));
    let mut ranges = groups.tcp_ranges.clone();
    ranges.sort();
    assert_eq!(
        ranges,
        [
            (22, "198.51.100.7/32".to_owned()),
            (world.sshd.port, "198.51.100.7/32".to_owned())
        ],
        "the ports the bootstrap's sshd serves: the member's, then 22"
    );
    // One key pair per lease, tagged for it.
    let keys = world.key_pairs();
    for lease in &leases {
        let name = format!("crabbox-{}", lease.replace('_', "-"));
        let (_, tags) = keys
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("key pair {name} in {keys:?}"));
        assert_eq!(tags.get("lease").map(|v| v.as_str()), Some(lease.as_str()));
        assert_eq!(tags.get("crabbox").map(|v| v.as_str()), Some("true"));
    }

    // The tags were in the RunInstances requests themselves, for the
    // instance, its volumes and its spot request.
    let runs = world.proxy().requests("RunInstances");
    assert_eq!(runs.len(), 2, "one launch a member");
    for run in &runs {
        let lease = &run.params["ClientToken"];
        for (n, resource) in ["instance", "volume", "spot-instances-request"]
            .iter()
            .enumerate()
        {
            let spec = format!("TagSpecification.{}", n + 1);
            assert_eq!(
                run.params
                    .get(&format!("{spec}.ResourceType"))
                    .map(String::as_str),
                Some(*resource),
                "{run:#?}"
            );
            let tags: Labels = (1..)
                .map_while(|i| {
                    Some((
                        run.params
                            .get(&format!("{spec}.Tag.{i}.Key"))?
                            .as_str()
                            .into(),
                        run.params
                            .get(&format!("{spec}.Tag.{i}.Value"))
                            .map(|v| v.as_str().into())
                            .unwrap_or_default(),
                    ))
                })
                .collect();
            for key in [
                "crabbox",
                "created_by",
                "lease",
                "pond",
                "slug",
                "provider",
                "Name",
            ] {
                assert!(
                    tags.contains_key(key),
                    "{key} in {resource}'s tags: {tags:?}"
                );
            }
            assert_eq!(tags.get("lease").map(|v| v.as_str()), Some(lease.as_str()));
        }
    }

    // A second apply changes nothing and launches nothing.
    let out = world.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert_eq!(world.pond_instances().len(), 2);
    // One security group lookup created it; the second member reused it.
    assert_eq!(world.proxy().count("CreateSecurityGroup"), 1);

    // Relabel: a changed setup re-runs and retags; the tags follow.
    world.write_spec(
        r#"  - slug: db
    provider: aws
    type: t3.small
    setup: [ "echo db on $CRABBOX_LEASE_ID > marker.txt" ]
  - slug: app
    provider: aws
    class: tiny
    depends_on: [db]
    setup: [ "echo app again on $CRABBOX_LEASE_ID > marker.txt" ]
"#,
    );
    let app_tags = |w: &World| {
        w.pond_instances()
            .into_iter()
            .find(|i| i.tags.get("slug").map(|v| v.as_str()) == Some("app"))
            .expect("app's instance")
    };
    let before = app_tags(&world);
    let tagged_before = world.proxy().count("CreateTags");
    world.ok(&["apply", "--auto-approve"]);
    let after = app_tags(&world);
    assert_eq!(before.id, after.id, "a changed setup re-runs in place");
    assert_ne!(
        before.tags.get("pond_setup"),
        after.tags.get("pond_setup"),
        "the setup's label follows"
    );
    assert!(world.proxy().count("CreateTags") > tagged_before);
    for key in [
        "Name",
        "aws_region",
        "market",
        "server_type",
        "provider_key",
        "lease",
    ] {
        assert_eq!(before.tags.get(key), after.tags.get(key), "{key} kept");
    }
    assert_eq!(world.pond_instances().len(), 2);

    // Destroy: the instances are terminated, their key pairs deleted; the
    // planted instance is untouched.
    world.ok(&["destroy", "--auto-approve"]);
    assert!(
        world.pond_instances().is_empty(),
        "{:#?}",
        world.pond_instances()
    );
    let keys = world.key_pairs();
    assert!(
        keys.iter().all(|(n, _)| !n.starts_with("crabbox-cbx-")),
        "{keys:?}"
    );
    let planted_now = world
        .rt
        .block_on(ec2.instance(&planted.id))
        .expect("describe")
        .expect("planted instance exists");
    assert_eq!(planted_now.state, "running", "{planted_now:#?}");
    assert!(
        std::fs::read_dir(world.path("state/ssh/keys"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0,
        "no key directory is left"
    );
}

#[test]
fn a_create_killed_after_run_instances_is_adopted_by_the_next_apply() {
    // The launch is watched in the proxy's log: the moment RunInstances
    // answered, without any call of the test's own reaching moto.
    let world = World::new("aws-killed").with_proxy();
    // SSH leads to a port nothing serves yet: the create waits there,
    // after RunInstances returned, until it is killed. The spec stays the
    // same for the next apply; only the port starts answering.
    let port = crate::sshd::free_port();
    let aws = world.aws_defaults().replace(
        &format!("ssh_port: {}", world.sshd.port),
        &format!("ssh_port: {port}"),
    );
    let members = r#"  - slug: db
    provider: aws
    type: t3.small
    setup: [ "echo db > marker.txt" ]
"#;
    world.write_spec_with(&aws, members);
    let mut child = world
        .command(&["apply", "--auto-approve"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("crabbox starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    let launched = || {
        world
            .proxy()
            .requests("RunInstances")
            .iter()
            .any(|r| r.status == 200)
    };
    while !launched() {
        assert!(Instant::now() < deadline, "no instance was launched");
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "apply ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    let launched = world.pond_instances();
    assert_eq!(launched.len(), 1);

    // The next apply (SSH now answering) adopts that instance.
    let sshd = TestSshd::start_on(port);
    sshd.authorize(
        &std::fs::read_to_string(world.path("id_member.pub")).expect("member's public key"),
    );
    world.ok(&["apply", "--auto-approve"]);
    let now = world.pond_instances();
    assert_eq!(
        now.iter().map(|i| &i.id).collect::<Vec<_>>(),
        launched.iter().map(|i| &i.id).collect::<Vec<_>>(),
        "no second instance"
    );
    let leases = world.live_leases();
    assert_eq!(leases.len(), 1);
    let lease = leases.first().expect("one lease");
    assert_eq!(
        now[0].tags.get("lease").map(|v| v.as_str()),
        Some(lease.as_str())
    );
    let marker = std::path::Path::new("/work/crabbox")
        .join(lease)
        .join("workspace/marker.txt");
    assert!(marker.exists(), "setup ran on the adopted instance");
    world.ok(&["destroy", "--auto-approve"]);
    assert!(world.pond_instances().is_empty());
}

/// `aws.key_name` and `aws.securityGroupId` name the user's own: the
/// launch uses them, crabbox imports no key pair and makes no group, and
/// destroy leaves both in place.
#[test]
fn the_users_own_key_pair_and_security_group_are_used_and_left_alone() {
    let world = World::new("aws-own").with_proxy();
    let ec2 = world.ec2();
    let public = std::fs::read_to_string(world.path("id_member.pub")).expect("public key");
    world
        .rt
        .block_on(ec2.import_key("team-key", public.trim(), &Labels::new()))
        .expect("ImportKeyPair");
    let group = world
        .rt
        .block_on(ec2.create_security_group("team-ssh", "the team's own", None, &Labels::new()))
        .expect("CreateSecurityGroup");
    world.write_spec(&format!(
        r#"  - slug: db
    provider: aws
    type: t3.small
    aws: {{ key_name: team-key, securityGroupId: {group} }}
    setup: [ "echo ok" ]
"#
    ));
    world.ok(&["apply", "--auto-approve"]);
    let runs = world.proxy().requests("RunInstances");
    assert_eq!(runs.len(), 1, "one launch");
    assert_eq!(
        runs[0].params.get("KeyName").map(String::as_str),
        Some("team-key")
    );
    assert_eq!(
        runs[0].params.get("SecurityGroupId.1").map(String::as_str),
        Some(group.as_str())
    );
    assert_eq!(
        world.proxy().count("ImportKeyPair"),
        0,
        "no key pair imported"
    );
    assert_eq!(
        world.proxy().count("CreateSecurityGroup"),
        0,
        "no group made"
    );
    world.ok(&["destroy", "--auto-approve"]);
    assert!(world.pond_instances().is_empty());
    assert!(
        world.key_pairs().iter().any(|(n, _)| n == "team-key"),
        "the user's key pair stays"
    );
    let kept = world
        .rt
        .block_on(ec2.security_group("team-ssh", None))
        .expect("DescribeSecurityGroups");
    assert_eq!(kept.map(|g| g.id), Some(group), "the user's group stays");
}

/// A member in a region other than the default is discovered there: the
/// re-plan is clean (no second instance planned), and destroy terminates it.
/// (`east` waits for `west`: the default region's listing has an instance
/// by then, so both regions are listed with something in them.)
#[test]
fn a_member_in_its_own_region_is_discovered_there_and_destroyed() {
    let world = World::new("aws-region");
    world.write_spec(
        r#"  - slug: east
    provider: aws
    type: t3.small
    aws: { region: us-east-1 }
    depends_on: [west]
  - slug: west
    provider: aws
    type: t3.small
"#,
    );
    world.ok(&["apply", "--auto-approve"]);
    let east = || {
        let ec2 = world
            .rt
            .block_on(async { Ec2::new(&world.moto.sdk_config_in("us-east-1").await) });
        world
            .rt
            .block_on(ec2.instances(&[("tag:pond", &[world.pond.as_str()])]))
            .expect("DescribeInstances in us-east-1")
            .into_iter()
            .filter(|i| LIVE_STATES.contains(&i.state.as_str()))
            .collect::<Vec<_>>()
    };
    assert_eq!(east().len(), 1, "east runs in us-east-1");
    assert_eq!(world.pond_instances().len(), 1, "west runs in eu-west-1");
    assert_eq!(world.live_leases().len(), 2, "both are listed");
    let out = world.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "a clean re-plan: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    world.ok(&["destroy", "--auto-approve"]);
    assert!(east().is_empty(), "east is terminated");
    assert!(world.pond_instances().is_empty());
}

#[test]
fn a_pond_of_aws_hetzner_and_local_members_applies_replans_clean_and_destroys_to_nothing() {
    let world = World::new("aws-mixed").with_hetzner();
    world.write_spec(
        r#"  - slug: db
    provider: aws
    type: t3.small
    setup: [ "echo db on aws > marker.txt" ]
  - slug: cache
    provider: hetzner
    type: cx23
    depends_on: [db]
    setup: [ "echo cache on hetzner" ]
  - slug: web
    depends_on: [cache, db]
    setup: [ "echo web local" ]
"#,
    );
    world.ok(&["apply", "--auto-approve"]);
    assert_eq!(world.pond_instances().len(), 1);
    assert_eq!(world.live_leases().len(), 3);
    let out = world.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "a clean re-plan: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    world.ok(&["destroy", "--auto-approve"]);
    assert!(world.pond_instances().is_empty());
    let hetzner = world.hetzner.as_ref().expect("fake hetzner");
    assert!(
        hetzner
            .handle
            .servers()
            .iter()
            .all(|s| s["labels"]["pond"] != world.pond.as_str()),
        "no Hetzner server is left"
    );
    assert!(
        world
            .key_pairs()
            .iter()
            .all(|(n, _)| !n.starts_with("crabbox-cbx-")),
        "no key pair is left"
    );
    assert!(world.live_leases().is_empty());
}

#[test]
fn a_class_falls_back_across_types_and_spot_falls_back_to_on_demand_but_an_exact_type_never_does() {
    let world = World::new("aws-fallback").with_proxy();
    let proxy = world.proxy();
    // No spot capacity for any of the standard class; on-demand only for
    // its second type; and the pinned type refused everywhere.
    for t in [
        "c7a.8xlarge",
        "c7i.8xlarge",
        "m7a.8xlarge",
        "m7i.8xlarge",
        "c7a.4xlarge",
        "t3.small",
    ] {
        proxy.refuse_run_instances(t, true, "MaxSpotInstanceCountExceeded");
    }
    // EC2 answers this one with a 500, which the SDK would retry: the
    // sequence below holds each try once.
    proxy.refuse_run_instances("c7a.8xlarge", false, "InsufficientInstanceCapacity");
    let with_fallback = world
        .aws_defaults()
        .replace(" }", ", on_demand_fallback: true }");
    world.write_spec_with(
        &with_fallback,
        r#"  - slug: db
    provider: aws
    class: standard
    setup: [ "echo db" ]
"#,
    );
    let log = world.ok(&["apply", "--auto-approve"]);
    let spot: Vec<(String, String)> = [
        "c7a.8xlarge",
        "c7i.8xlarge",
        "m7a.8xlarge",
        "m7i.8xlarge",
        "c7a.4xlarge",
        "t3.small",
    ]
    .iter()
    .map(|t| ((*t).to_owned(), "spot".to_owned()))
    .collect();
    let mut expected = spot.clone();
    expected.push(("c7a.8xlarge".to_owned(), "on-demand".to_owned()));
    expected.push(("c7i.8xlarge".to_owned(), "on-demand".to_owned()));
    assert_eq!(world.launches(), expected, "{log}");
    for (t, market) in &expected {
        assert!(
            log.contains(&format!("type={t} market={market}")),
            "every attempt is reported: {t} {market}\n{log}"
        );
    }
    let instances = world.pond_instances();
    assert_eq!(instances.len(), 1);
    assert_eq!(instances[0].instance_type, "c7i.8xlarge");
    assert_eq!(
        instances[0].tags.get("market").map(|v| v.as_str()),
        Some("on-demand")
    );
    world.ok(&["destroy", "--auto-approve"]);

    // Without the fallback, and with a pinned type: one try, then a failure
    // saying why.
    let before = world.launches().len();
    proxy.refuse_run_instances("t3.small", false, "Unsupported");
    world.write_spec(
        r#"  - slug: pinned
    provider: aws
    type: t3.small
    setup: [ "echo pinned" ]
"#,
    );
    let out = world.run(&["apply", "--auto-approve"]);
    assert!(!out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        world.launches()[before..],
        [("t3.small".to_owned(), "spot".to_owned())],
        "an exact type is tried once"
    );
    assert!(
        text(&out.stderr).contains("never falls back"),
        "{}",
        text(&out.stderr)
    );
    assert!(world.pond_instances().is_empty());
    assert!(
        world
            .key_pairs()
            .iter()
            .all(|(n, _)| !n.starts_with("crabbox-cbx-")),
        "the failed create's key pair was removed"
    );
}

#[test]
fn missing_or_unusable_aws_credentials_exit_3_naming_what_to_set() {
    let world = World::new("aws-nocreds");
    // Nothing configured: the provider is not enabled.
    let out = world
        .command(&["list", "--provider", "aws"])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .output()
        .expect("crabbox runs");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("AWS_ACCESS_KEY_ID"),
        "{}",
        text(&out.stderr)
    );
    // A key ID without its secret: enabled, and the SDK's chain finds no
    // usable credentials at the first call.
    let out = world
        .command(&["list", "--provider", "aws"])
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .output()
        .expect("crabbox runs");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("AWS_ACCESS_KEY_ID"),
        "{}",
        text(&out.stderr)
    );
    // The declarative verbs say the same with the same code: the fix is a
    // secret, and nothing is planned for the members it hides.
    world.write_spec("  - slug: box\n    provider: aws\n");
    for args in [
        &["plan"][..],
        &["apply", "--auto-approve"],
        &["destroy", "--auto-approve"],
    ] {
        for unset in [
            &["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"][..],
            &["AWS_SECRET_ACCESS_KEY"],
        ] {
            let mut c = world.command(args);
            for var in unset {
                c.env_remove(var);
            }
            let out = c.output().expect("crabbox runs");
            let err = text(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(3),
                "{args:?} without {unset:?}: {err}"
            );
            assert!(
                err.contains("AWS_ACCESS_KEY_ID"),
                "{args:?} without {unset:?}: {err}"
            );
            assert!(
                !text(&out.stdout).contains("to add"),
                "{args:?}: nothing planned"
            );
        }
    }
    assert!(world.instances().is_empty(), "nothing was launched");
}

/// `aws.private_ip: true`: SSH goes to the instance's private address,
/// never its public one. The proxy hands out the sshd's loopback address
/// as every instance's private address (moto's VPC addresses lead
/// nowhere); the public address moto gives stays unreachable, so setup
/// running at all proves the private address was used.
#[test]
fn a_private_ip_member_is_reached_at_its_private_address() {
    let world = World::new("aws-private").with_proxy();
    world.proxy().serve_private_address("127.0.0.1");
    let aws = format!(
        "{{ private_ip: true, ssh_port: {port}, ssh_user: {user}, ssh_key: \"{key}\", ssh_cidrs: [198.51.100.7/32] }}",
        port = world.sshd.port,
        user = world.sshd.user,
        key = world.path("id_member").display(),
    );
    world.write_spec_with(
        &aws,
        "  - slug: inner\n    provider: aws\n    type: t3.small\n    setup: [ \"echo inside > marker.txt\" ]\n",
    );
    world.ok(&["apply", "--auto-approve"]);
    let instances = world.pond_instances();
    assert_eq!(instances.len(), 1, "{instances:#?}");
    let public = instances[0]
        .public_ip
        .clone()
        .expect("moto gave a public address");
    assert_ne!(public, "127.0.0.1", "the public address is not the sshd's");

    let out = world.run(&["peers", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let peers: Value = serde_json::from_slice(&out.stdout).expect("peers JSON");
    let endpoints: Vec<&str> = peers["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["endpoint"].as_str())
        .collect();
    let private = format!("ssh://127.0.0.1:{}", world.sshd.port);
    assert_eq!(
        endpoints,
        [private.as_str()],
        "peers reach the private address: {peers}"
    );
    let out = world.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "clean re-plan: {}",
        text(&out.stdout)
    );
}

/// EC2 throttles with 503 `RequestLimitExceeded` and 400 `Throttling`: the
/// SDK's adaptive retry waits and tries again, so a throttled listing is a
/// slower plan, not a failed one.
#[test]
fn throttled_calls_are_retried_until_they_go_through() {
    let world = World::new("aws-throttled").with_proxy();
    world.write_spec("  - slug: box\n    provider: aws\n    type: t3.small\n");
    world
        .proxy()
        .throttle("DescribeInstances", &["RequestLimitExceeded", "Throttling"]);
    let out = world.run(&["plan"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("1 to add"),
        "{}",
        text(&out.stdout)
    );
    let statuses: Vec<u16> = world
        .proxy()
        .requests("DescribeInstances")
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [503, 400, 200], "two throttled, then answered");
}
