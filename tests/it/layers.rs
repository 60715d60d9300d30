//! The crate graph is the architecture: every crate depends only on crates
//! below it, the bottom crate does no I/O, and only the providers crate and
//! the binary name concrete providers. Read from `cargo metadata`, so a
//! dependency added to any Cargo.toml is checked the moment it is written.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// The workspace's crates, bottom first. A crate may depend (in any kind:
/// normal, dev or build) only on crates earlier in this list.
const LAYERS: &[&str] = &[
    "crabbox-core",
    "crabbox-fs",
    "crabbox-state",
    "crabbox-render",
    "crabbox-spec",
    "crabbox-plan",
    "crabbox-exec",
    "crabbox-providers",
    "crabbox-apply",
    // The root package (binary and library `crabbox`).
    "crabbox-pond",
];

/// Everything `crabbox-core` may use: data, hashing, randomness, timers.
/// No file system, network, processes or database.
const CORE_ALLOWED: &[&str] = &[
    // Inline strings for label keys and values (no I/O).
    "compact_str",
    "getrandom",
    "schemars",
    "serde",
    "serde_json",
    "sha2",
    "thiserror",
    "tokio",
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Each workspace crate with the names of the packages it depends on.
fn workspace_deps() -> BTreeMap<String, Vec<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(root())
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("metadata is JSON");
    meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .expect("dependencies")
                .iter()
                .map(|d| d["name"].as_str().expect("name").to_owned())
                .collect();
            (p["name"].as_str().expect("name").to_owned(), deps)
        })
        .collect()
}

#[test]
fn every_crate_depends_only_on_crates_below_it() {
    let deps = workspace_deps();
    let listed: Vec<&str> = deps.keys().map(String::as_str).collect();
    let mut layers = LAYERS.to_vec();
    layers.sort_unstable();
    assert_eq!(listed, layers, "LAYERS names every workspace crate once");
    for (at, name) in LAYERS.iter().enumerate() {
        for dep in &deps[*name] {
            if let Some(level) = LAYERS.iter().position(|l| l == dep) {
                assert!(
                    level < at,
                    "{name} depends on {dep}, which is not below it; move the shared code down instead"
                );
            }
        }
    }
}

#[test]
fn the_bottom_crate_does_no_io() {
    let deps = workspace_deps();
    for dep in &deps["crabbox-core"] {
        assert!(
            CORE_ALLOWED.contains(&dep.as_str()),
            "crabbox-core depends on {dep}: I/O belongs in the crate that does it"
        );
    }
}

/// The engine drives providers through the `Provider` trait; only the
/// providers crate (which holds them) and the binary (which lists them)
/// name a concrete adapter.
#[test]
fn only_the_providers_crate_and_the_binary_name_concrete_providers() {
    let adapters = ["hetzner", "islo", "local", "ssh", "tensorlake"];
    for krate in LAYERS
        .iter()
        .filter(|c| !["crabbox-pond", "crabbox-providers"].contains(c))
    {
        let src = root()
            .join("crates")
            .join(&krate["crabbox-".len()..])
            .join("src");
        let files = walk(&src);
        assert!(!files.is_empty(), "no sources in {}", src.display());
        for entry in files {
            let text = std::fs::read_to_string(&entry).expect("read source");
            for a in adapters {
                let path = format!("crabbox_providers::{a}::");
                assert!(
                    !text.contains(&path),
                    "{} names the `{a}` adapter ({path})",
                    entry.display()
                );
            }
        }
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}
