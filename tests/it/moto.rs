//! moto's EC2 server (an independent AWS emulator from PyPI) for the AWS
//! tests: one per test, on a free port, serving Canonical-owned Ubuntu
//! images from `tests/fixtures/moto/amis.json` (moto ships none newer than
//! 16.04). `./scripts/test` installs moto into `target/test-tools/venv`,
//! which it puts first on PATH; without it the tests fail saying so.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};

use crabbox_providers::aws::api::{Launch, Market};

use crate::support::root;

/// The Ubuntu image of the fixture (`tests/fixtures/moto/amis.json`).
pub const AMI: &str = "ami-0c0ffee000000026a";

/// A launch of one `instance_type` instance for `lease` into `group`, with
/// the lease's key pair name and `tags`, as the provider's tests make them
/// directly through the API.
pub fn launch(
    group: &str,
    lease: &str,
    instance_type: &str,
    market: Market,
    tags: &[(&str, &str)],
) -> Launch {
    Launch {
        client_token: lease.to_owned(),
        image_id: AMI.to_owned(),
        instance_type: instance_type.to_owned(),
        key_name: format!("crabbox-{}", lease.replace('_', "-")),
        security_group_id: group.to_owned(),
        subnet_id: None,
        instance_profile: None,
        root_gb: 400,
        root_device: "/dev/sda1".to_owned(),
        user_data: "#cloud-config\n".to_owned(),
        market,
        tags: tags
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect(),
    }
}

/// A running moto server.
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl Moto {
    /// Starts a server on a free port and waits until it listens.
    pub fn start() -> Self {
        let mut child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", "0"])
            .env(
                "MOTO_AMIS_PATH",
                root().join("tests/fixtures/moto/amis.json"),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("moto_server is not installed ({e}); ./scripts/test installs moto from PyPI")
            });
        let stderr = child.stderr.take().expect("piped stderr");
        let mut lines = BufReader::new(stderr).lines();
        let url = loop {
            let line = match lines.next() {
                Some(Ok(line)) => line,
                _ => panic!("moto_server exited before it listened"),
            };
            if let Some(at) = line.find("Running on http://") {
                break line[at + "Running on ".len()..].trim().to_owned();
            }
        };
        // Keep reading, so the server never blocks on a full pipe; with
        // MOTO_LOG set, the server's log (its tracebacks) goes to the test's
        // stderr.
        let log = std::env::var_os("MOTO_LOG").is_some();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if log {
                    eprintln!("moto: {line}");
                }
            }
        });
        Self { child, url }
    }

    /// An SDK configuration for this server, built in the test process
    /// (no environment variables, so tests can run side by side).
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        self.sdk_config_in("eu-west-1").await
    }

    /// The SDK's configuration for moto's `region` (moto keeps each
    /// region's instances apart, by the region the request is signed for).
    pub async fn sdk_config_in(&self, region: &str) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&self.url)
            .region(aws_config::Region::new(region.to_owned()))
            .credentials_provider(aws_credential_types::Credentials::new(
                "testing", "testing", None, None, "moto",
            ))
            .load()
            .await
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
