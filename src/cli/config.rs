//! `crabbox config show|path`: Crabbox's user configuration as crabbox reads
//! it (crates/spec/src/user_config.rs), merged with what the pond spec
//! sets, each value with where it came from; secrets redacted.

use std::path::Path;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crabbox_spec::source::SourceFile;
use crabbox_spec::user_config::{UserConfig, user_config_dir};
use crabbox_spec::yaml::{Node, NodeKind};

#[derive(Debug, Subcommand)]
pub(super) enum ConfigCommand {
    /// Print the merged configuration and where each value came from
    /// (file:line:column, spec, env, default); secrets redacted.
    Show(ShowArgs),
    /// Print the path of Crabbox's user config file.
    Path,
}

#[derive(Debug, Args)]
pub(super) struct ShowArgs {
    /// The pond spec whose `defaults:` win over the config files (skipped when missing).
    #[arg(
        short = 'f',
        long = "file",
        value_name = "FILE",
        default_value = "pond.yaml"
    )]
    file: std::path::PathBuf,
    /// JSON: {"files": [...], "settings": [{"key", "value", "source"}]}.
    #[arg(long)]
    pub(super) json: bool,
}

/// Spec places that fill a Crabbox config key (`defaults:` only: members'
/// own settings are per member, not a default).
const SPEC_KEYS: &[(&str, &str)] = &[
    ("/defaults/provider", "provider"),
    ("/defaults/class", "class"),
    ("/defaults/type", "serverType"),
    ("/defaults/ttl", "ttl"),
    ("/defaults/idle_timeout", "idleTimeout"),
    ("/defaults/hetzner/location", "hetzner.location"),
    ("/defaults/hetzner/image", "hetzner.image"),
    ("/defaults/islo/base_url", "islo.baseUrl"),
    ("/defaults/islo/image", "islo.image"),
    ("/defaults/islo/workdir", "islo.workdir"),
];

pub(super) fn run(cmd: &ConfigCommand) -> ExitCode {
    match cmd {
        ConfigCommand::Path => match user_config_dir() {
            Some(dir) => {
                println!("{}", dir.join("crabbox").join("config.yaml").display());
                ExitCode::SUCCESS
            }
            None => {
                anstream::eprintln!(
                    "error: no user config directory (HOME is unset, or XDG_CONFIG_HOME is relative)\n  help: set HOME, or CRABBOX_CONFIG to a config file"
                );
                ExitCode::FAILURE
            }
        },
        ConfigCommand::Show(args) => show(args),
    }
}

fn show(args: &ShowArgs) -> ExitCode {
    let mut config = match UserConfig::load() {
        Ok(c) => c,
        Err(e) => {
            anstream::eprint!("{}", e.rendered);
            let text = anstream::adapter::strip_str(&e.rendered).to_string();
            super::report::record("invalid-config", text.trim_end(), None);
            return ExitCode::from(2);
        }
    };
    if let Err(message) = apply_spec(&mut config, &args.file) {
        anstream::eprintln!("{message}");
        let text = anstream::adapter::strip_str(&message).to_string();
        super::report::record("invalid-spec", text.trim_end(), None);
        return ExitCode::from(2);
    }
    let settings = config.shown();
    if args.json {
        super::report::printed_document();
        let doc = serde_json::json!({ "files": config.files, "settings": settings });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    if config.files.is_empty() {
        println!("# no Crabbox config file found");
    }
    for file in &config.files {
        println!("# read {}", file.display());
    }
    let w = settings.iter().map(|s| s.key.len()).max().unwrap_or(0);
    for s in &settings {
        println!("{:<w$}  {}  ({})", s.key, s.value, s.source);
    }
    ExitCode::SUCCESS
}

/// Records the spec's `defaults:` values (only scalars written there; the
/// spec is not validated here — `crabbox validate` does that).
fn apply_spec(config: &mut UserConfig, path: &Path) -> Result<(), String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let file = SourceFile::new(path.display().to_string(), text);
    let (root, _) = crabbox_spec::yaml::parse(&file).map_err(|d| {
        crabbox_spec::diagnostic::render_human(&file, &[d])
            .trim_end()
            .to_owned()
    })?;
    for (pointer, key) in SPEC_KEYS {
        let node = pointer
            .split('/')
            .skip(1)
            .try_fold(&root, |n: &Node, part| n.get(part).map(|e| &e.value));
        let value = match node.map(|n| &n.kind) {
            Some(NodeKind::Str { value, .. }) => value.clone(),
            Some(NodeKind::Int(i)) => i.to_string(),
            Some(NodeKind::Bool(b)) => b.to_string(),
            _ => continue,
        };
        config.apply_spec(key, &value, pointer);
    }
    Ok(())
}
