//! `install.sh` against a local server of fake release assets: it installs
//! only an archive that `SHA256SUMS` lists with the right checksum; and
//! `action.yml` has the shape of a composite action.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use sha2::{Digest, Sha256};

use crate::fake_http::FakeServer;
use crate::support::root;

const VERSION: &str = "9.8.7";

/// The release target `install.sh` picks on this machine (the names
/// `.github/workflows/release.yml` builds).
fn host_target() -> &'static str {
    match (std::env::consts::OS, std::env::consts::ARCH) {
        ("linux", "x86_64") => "x86_64-unknown-linux-gnu",
        ("linux", "aarch64") => "aarch64-unknown-linux-gnu",
        ("macos", "aarch64") => "aarch64-apple-darwin",
        other => panic!("no release target for {other:?}"),
    }
}

fn archive_name() -> String {
    format!("crabbox-{VERSION}-{}.tar.gz", host_target())
}

/// A release archive holding a `crabbox` script that prints a marker.
fn fake_archive() -> Vec<u8> {
    let script = b"#!/bin/sh\necho fake-crabbox \"$@\"\n";
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    let mut header = tar::Header::new_gnu();
    header.set_size(script.len() as u64);
    header.set_mode(0o755);
    header.set_cksum();
    builder
        .append_data(&mut header, "crabbox", &script[..])
        .expect("tar");
    builder.into_inner().expect("tar").finish().expect("gzip")
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn serve(files: HashMap<String, Vec<u8>>) -> FakeServer {
    let app = Router::new()
        .route(
            "/{name}",
            axum::routing::get(
                |State(files): State<Arc<HashMap<String, Vec<u8>>>>,
                 UrlPath(name): UrlPath<String>| async move {
                    files
                        .get(&name)
                        .map(|b| (StatusCode::OK, b.clone()))
                        .unwrap_or((StatusCode::NOT_FOUND, Vec::new()))
                },
            ),
        )
        .with_state(Arc::new(files));
    FakeServer::start("release assets", app).await
}

struct Run {
    ok: bool,
    stderr: String,
}

/// Runs `sh install.sh v<VERSION>` against `base_url`, installing into `dir`.
async fn install(base_url: &str, dir: &Path) -> Run {
    let out = tokio::process::Command::new("sh")
        .arg(root().join("install.sh"))
        .arg(format!("v{VERSION}"))
        .env("CRABBOX_INSTALL_BASE_URL", base_url)
        .env("CRABBOX_INSTALL_DIR", dir)
        .output()
        .await
        .expect("run sh install.sh");
    Run {
        ok: out.status.success(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn assets(sums: String) -> HashMap<String, Vec<u8>> {
    HashMap::from([
        (archive_name(), fake_archive()),
        ("SHA256SUMS".to_owned(), sums.into_bytes()),
    ])
}

#[tokio::test]
async fn install_sh_installs_a_verified_archive() {
    let archive = fake_archive();
    let sums = format!(
        "{}  crabbox-{VERSION}-other-target.tar.gz\n{}  {}\n",
        hex_sha256(b"other"),
        hex_sha256(&archive),
        archive_name()
    );
    let server = serve(assets(sums)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bin_dir = dir.path().join("bin");
    let run = install(&server.url, &bin_dir).await;
    assert!(run.ok, "install failed: {}", run.stderr);
    let out = std::process::Command::new(bin_dir.join("crabbox"))
        .arg("--version")
        .output()
        .expect("the installed crabbox runs");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "fake-crabbox --version\n"
    );
}

#[tokio::test]
async fn install_sh_refuses_a_checksum_mismatch() {
    let sums = format!("{}  {}\n", hex_sha256(b"not the archive"), archive_name());
    let server = serve(assets(sums)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let run = install(&server.url, dir.path()).await;
    assert!(!run.ok, "a mismatching archive was accepted");
    assert!(
        run.stderr.contains("checksum mismatch") && run.stderr.contains("refusing"),
        "{}",
        run.stderr
    );
    assert!(!dir.path().join("crabbox").exists(), "nothing is installed");
}

#[tokio::test]
async fn install_sh_refuses_an_archive_missing_from_sha256sums() {
    let sums = format!(
        "{}  crabbox-{VERSION}-other-target.tar.gz\n",
        hex_sha256(&fake_archive())
    );
    let server = serve(assets(sums)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let run = install(&server.url, dir.path()).await;
    assert!(!run.ok, "an unlisted archive was accepted");
    assert!(
        run.stderr.contains("no entry for") && run.stderr.contains("refusing"),
        "{}",
        run.stderr
    );
    assert!(!dir.path().join("crabbox").exists(), "nothing is installed");
}

#[tokio::test]
async fn install_sh_refuses_without_sha256sums() {
    let server = serve(HashMap::from([(archive_name(), fake_archive())])).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let run = install(&server.url, dir.path()).await;
    assert!(!run.ok, "an unverifiable archive was accepted");
    assert!(run.stderr.contains("SHA256SUMS"), "{}", run.stderr);
    assert!(!dir.path().join("crabbox").exists(), "nothing is installed");
}

/// GitHub runs `action.yml` as a composite action: `runs.using` is
/// `composite` and every `run` step names its `shell` (GitHub rejects the
/// action otherwise; actionlint does not check action metadata).
#[test]
fn action_yml_is_a_composite_action() {
    let text = std::fs::read_to_string(root().join("action.yml")).expect("action.yml");
    let action: serde_json::Value = serde_saphyr::from_str(&text).expect("action.yml is YAML");
    assert_eq!(action["runs"]["using"], "composite");
    assert!(action["inputs"]["version"].is_object(), "a version input");
    for output in ["path", "version"] {
        assert!(
            action["outputs"][output]["value"].is_string(),
            "output {output} has a value"
        );
    }
    let steps = action["runs"]["steps"].as_array().expect("runs.steps");
    assert!(!steps.is_empty());
    for step in steps {
        assert!(
            step.get("run").is_some() != step.get("uses").is_some(),
            "a step runs a command or uses an action: {step}"
        );
        if step.get("run").is_some() {
            assert!(step["shell"].is_string(), "a run step needs shell: {step}");
        }
    }
    for needle in [
        "install.sh",
        "cargo install --locked --path \"$GITHUB_ACTION_PATH\"",
        "actions/cache@",
    ] {
        assert!(text.contains(needle), "action.yml lacks {needle}");
    }
}
