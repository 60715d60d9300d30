//! Hetzner servers boot the way Crabbox boots its own (issue 12, item 3):
//! the create call carries Crabbox's cloud-init user data, the lease key is
//! kept where Crabbox looks for it, and SSH goes to 2222, falling back to 22.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crabbox_core::labels;
use crabbox_core::lease::new_lease_id;
use crabbox_core::provider::{OutputSink, ProviderName, Stream};
use crabbox_exec::session::ExecRequest;
use crabbox_providers::hetzner::{HetznerProvider, key_name};
use crabbox_providers::{CreateRequest, Provider};
use crabbox_spec::desired::DesiredMember;
use crabbox_spec::member_labels;
use serde_json::{Value, json};

use crate::fake_hetzner::{self, FakeConfig, FakeHetzner, TOKEN};
use crate::sshd::TestSshd;

const POND: &str = "boot";

struct Fixture {
    fake: FakeHetzner,
    state: tempfile::TempDir,
}

impl Fixture {
    async fn new(authorized_keys: Option<PathBuf>) -> Self {
        Self {
            fake: fake_hetzner::start(FakeConfig {
                authorized_keys,
                boot_delay: Duration::from_millis(50),
                ..FakeConfig::default()
            })
            .await,
            state: tempfile::tempdir().expect("state dir"),
        }
    }

    /// Stands for `<user config dir>/crabbox/testboxes`.
    fn testboxes(&self) -> PathBuf {
        self.state.path().join("config/crabbox/testboxes")
    }

    fn provider(&self) -> HetznerProvider {
        HetznerProvider::new(&self.fake.base_url, TOKEN, self.state.path())
            .with_testboxes_dir(&self.testboxes())
            .with_boot_polling(Duration::from_millis(50), Duration::from_secs(10))
            .with_request_timeout(Duration::from_secs(10))
            .with_ssh_timeout(Duration::from_secs(20))
    }

    fn create_bodies(&self) -> Vec<Value> {
        self.fake
            .handle
            .requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path == "/v1/servers")
            .map(|r| r.body)
            .collect()
    }
}

fn request(block: Value) -> CreateRequest {
    let member = DesiredMember {
        provider_block: Some(block),
        ..DesiredMember::new("db", ProviderName::Hetzner)
    };
    let lease_id = new_lease_id();
    let labels = member_labels::for_create(POND, &lease_id, &member, labels::now_secs());
    CreateRequest {
        lease_id,
        pond: POND.to_owned(),
        member,
        labels,
    }
}

/// The create body's `user_data`, checked to be a `#cloud-config` document
/// and parsed as YAML.
fn cloud_config(body: &Value) -> (String, Value) {
    let text = body["user_data"]
        .as_str()
        .expect("the create body carries user_data")
        .to_owned();
    assert!(text.starts_with("#cloud-config\n"), "{text}");
    let parsed: Value = serde_saphyr::from_str(&text).expect("user_data is YAML");
    (text, parsed)
}

#[tokio::test]
async fn create_sends_crabboxs_cloud_init_and_keeps_the_key_where_crabbox_looks() {
    let fx = Fixture::new(None).await;
    let provider = fx.provider().with_ssh_bootstrap(false);
    let req = request(json!({}));
    let lease = provider.create(&req).await.expect("create");

    // The key: Crabbox's `testboxKeyPath`, <UserConfigDir>/crabbox/testboxes/<id>/id_ed25519
    // (internal/cli/lease.go:72-81), commented "crabbox <id>" (lease.go:233).
    let dir = fx.testboxes().join(&req.lease_id);
    let private = dir.join("id_ed25519");
    let public = std::fs::read_to_string(dir.join("id_ed25519.pub")).expect("public key");
    assert!(
        public
            .trim()
            .ends_with(&format!(" crabbox {}", req.lease_id))
    );
    for (path, want) in [(&dir, 0o700), (&private, 0o600)] {
        let mode = std::fs::metadata(path)
            .expect("exists")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, want, "{}", path.display());
    }

    let bodies = fx.create_bodies();
    assert_eq!(bodies.len(), 1);
    let body = &bodies[0];
    // The key also goes to root through `ssh_keys` (hcloud.go:286-314).
    assert_eq!(body["ssh_keys"], json!([key_name(&req.lease_id)]));
    let (text, doc) = cloud_config(body);
    // bootstrap.go:46-134: user `crabbox` (config.go:2975) with the lease key.
    assert_eq!(doc["package_update"], json!(false));
    assert_eq!(doc["package_upgrade"], json!(false));
    let user = &doc["users"][0];
    assert_eq!(user["name"], json!("crabbox"));
    assert_eq!(user["groups"], json!("sudo"));
    assert_eq!(user["shell"], json!("/bin/bash"));
    assert_eq!(user["sudo"], json!(["ALL=(ALL) NOPASSWD:ALL"]));
    assert_eq!(user["ssh_authorized_keys"], json!([public.trim()]));
    // sshd on 2222 then 22 (config.go:2977-2978, ssh.go:430-449).
    let files = doc["write_files"].as_array().expect("write_files");
    let port_conf = files
        .iter()
        .find(|f| f["path"] == json!("/etc/ssh/sshd_config.d/99-crabbox-port.conf"))
        .expect("the sshd port file");
    assert_eq!(port_conf["permissions"], json!("0644"));
    assert_eq!(
        port_conf["content"],
        json!("Port 2222\nPort 22\nPasswordAuthentication no\n")
    );
    let ready = files
        .iter()
        .find(|f| f["path"] == json!("/usr/local/bin/crabbox-ready"))
        .expect("crabbox-ready");
    assert_eq!(ready["permissions"], json!("0755"));
    let ready_text = ready["content"].as_str().expect("text");
    assert!(ready_text.contains("test -f /var/lib/crabbox/bootstrapped"));
    assert!(ready_text.contains("test -w '/work/crabbox'"));
    // Work root /work/crabbox (target.go:19), owned by the login user.
    let runcmd = doc["runcmd"][0].as_str().expect("runcmd script");
    assert!(runcmd.contains("mkdir -p '/work/crabbox'"), "{runcmd}");
    assert!(runcmd.contains("chown -R 'crabbox':'crabbox' '/work/crabbox'"));
    assert!(runcmd.contains("touch /var/lib/crabbox/bootstrapped"));
    assert!(!text.contains("PRIVATE KEY"), "no private key in user data");

    // Without bootstrap (no SSH wait) the lease is reached as Crabbox does.
    assert_eq!(lease.endpoint.ssh_port, Some(2222));
    let target = provider.ssh_target(&lease).await.expect("target");
    assert_eq!(target.user, "crabbox");
    assert_eq!(target.port, 2222);
    assert_eq!(target.key.as_deref(), Some(private.as_path()));
    assert_eq!(target.work_root, format!("/work/crabbox/{}", req.lease_id));

    provider.release(&lease).await.expect("release");
    assert!(!dir.exists(), "release removes testboxes/<id>/");
}

#[tokio::test]
async fn ssh_user_and_port_override_the_bootstrap_and_the_login() {
    let fx = Fixture::new(None).await;
    let provider = fx.provider().with_ssh_bootstrap(false);
    let req = request(json!({"ssh_user": "deploy", "ssh_port": 2200}));
    let lease = provider.create(&req).await.expect("create");
    let (_, doc) = cloud_config(&fx.create_bodies()[0]);
    assert_eq!(doc["users"][0]["name"], json!("deploy"));
    assert_eq!(
        doc["write_files"][0]["content"],
        json!("Port 2200\nPort 22\nPasswordAuthentication no\n")
    );
    let target = provider.ssh_target(&lease).await.expect("target");
    assert_eq!((target.user.as_str(), target.port), ("deploy", 2200));
}

#[tokio::test]
async fn a_key_written_by_an_earlier_version_is_still_used() {
    let fx = Fixture::new(None).await;
    let req = request(json!({}));
    // Earlier versions kept the lease key beside the endpoint record.
    let legacy = fx.state.path().join("ssh/keys").join(&req.lease_id);
    std::fs::create_dir_all(&legacy).expect("dir");
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "old", "-f"])
        .arg(legacy.join("id_ed25519"))
        .status()
        .expect("ssh-keygen runs");
    assert!(status.success());
    let public = std::fs::read_to_string(legacy.join("id_ed25519.pub")).expect("pub");

    let provider = fx.provider().with_ssh_bootstrap(false);
    let lease = provider.create(&req).await.expect("create");
    let (_, doc) = cloud_config(&fx.create_bodies()[0]);
    assert_eq!(
        doc["users"][0]["ssh_authorized_keys"],
        json!([public.trim()])
    );
    assert!(
        !fx.testboxes().join(&req.lease_id).exists(),
        "no new key is generated"
    );
    let target = provider.ssh_target(&lease).await.expect("target");
    assert_eq!(
        target.key.as_deref(),
        Some(legacy.join("id_ed25519").as_path())
    );
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

#[derive(Default)]
struct Lines(Mutex<Vec<String>>);

impl OutputSink for Lines {
    fn line(&self, stream: Stream, line: &str) {
        if stream == Stream::Stdout {
            self.0.lock().expect("lock").push(line.to_owned());
        }
    }
}

async fn echo(provider: &HetznerProvider, lease: &crabbox_core::lease::Lease) -> Vec<String> {
    let sink = Arc::new(Lines::default());
    let code = provider
        .session(lease)
        .exec(
            &ExecRequest {
                command: "echo \"$CRABBOX_LEASE_ID\"".to_owned(),
                env: BTreeMap::new(),
                timeout: Some(Duration::from_secs(30)),
            },
            sink.clone(),
        )
        .await
        .expect("exec");
    assert_eq!(code, 0);
    sink.0.lock().expect("lock").clone()
}

#[tokio::test]
async fn ssh_falls_back_to_the_next_port_when_the_primary_is_closed() {
    let sshd = TestSshd::start();
    let fx = Fixture::new(Some(sshd.authorized_keys.clone())).await;
    let remote = tempfile::tempdir().expect("remote");
    let work = remote.path().join("work");
    // The primary port is closed, as 2222 is on an image whose sshd
    // ignored the bootstrap; the fallback (22 in Crabbox, the test sshd
    // here) answers.
    let primary = closed_port();
    let provider = fx
        .provider()
        .with_fallback_ports(&[sshd.port])
        .with_work_base(work.to_str().expect("utf-8"));
    let req = request(json!({"ssh_user": sshd.user, "ssh_port": primary}));
    let lease = provider.create(&req).await.expect("create falls back");
    assert_eq!(lease.endpoint.ssh_port, Some(sshd.port));
    let (_, doc) = cloud_config(&fx.create_bodies()[0]);
    assert_eq!(
        doc["write_files"][0]["content"],
        json!(format!(
            "Port {primary}\nPort {}\nPasswordAuthentication no\n",
            sshd.port
        ))
    );
    assert!(work.join(&req.lease_id).join("workspace").is_dir());

    // A later process goes straight to the port that answered.
    let later = fx.provider().with_fallback_ports(&[sshd.port]);
    let listed = later.list(POND).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].endpoint.ssh_port, Some(sshd.port));
    assert_eq!(echo(&later, &listed[0]).await, vec![req.lease_id.clone()]);
    later.release(&listed[0]).await.expect("release");
    drop(sshd);
}

#[tokio::test]
async fn the_primary_port_wins_when_it_answers() {
    let sshd = TestSshd::start();
    let fx = Fixture::new(Some(sshd.authorized_keys.clone())).await;
    let remote = tempfile::tempdir().expect("remote");
    let provider = fx
        .provider()
        .with_work_base(remote.path().to_str().expect("utf-8"));
    let req = request(json!({"ssh_user": sshd.user, "ssh_port": sshd.port}));
    let lease = provider.create(&req).await.expect("create");
    assert_eq!(lease.endpoint.ssh_port, Some(sshd.port));
    assert_eq!(echo(&provider, &lease).await, vec![req.lease_id.clone()]);
    provider.release(&lease).await.expect("release");
    assert!(
        Path::new(&fx.testboxes())
            .read_dir()
            .is_ok_and(|mut d| d.next().is_none())
    );
}

#[tokio::test]
async fn a_server_crabbox_made_is_reached_as_crabbox_reaches_it() {
    use crabbox_exec::session::SshTargets as _;
    let fx = Fixture::new(None).await;
    let open = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let fallback = open.local_addr().expect("addr").port();
    let provider = fx.provider().with_fallback_ports(&[fallback]);
    // A lease listed from a server Crabbox made: no endpoint record here.
    let id = new_lease_id();
    let lease = crabbox_core::lease::Lease {
        id: id.clone(),
        provider: ProviderName::Hetzner,
        cloud_id: "7".to_owned(),
        labels: crabbox_core::labels::Labels::new(),
        endpoint: crabbox_core::lease::Endpoint {
            host: Some("127.0.0.1".to_owned()),
            ssh_port: Some(closed_port()),
            url: None,
            shares: Vec::new(),
        },
        listed: true,
        claimed: false,
    };
    let target = provider.ssh_target_of(&lease).await.expect("target");
    // Crabbox's login, its key path, its work root; the primary port is
    // closed, so the first open fallback (ssh.go:363-372).
    assert_eq!(target.user, "crabbox");
    assert_eq!(target.port, fallback);
    assert_eq!(
        target.key.as_deref(),
        Some(fx.testboxes().join(&id).join("id_ed25519").as_path())
    );
    assert_eq!(target.work_root, format!("/work/crabbox/{id}"));
    drop(open);
}
