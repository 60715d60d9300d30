//! Crabbox's user configuration: where it lives (Go's `os.UserConfigDir`,
//! which also holds Crabbox's per-lease SSH keys) and what it sets that a
//! pond spec leaves open — default provider and class, provider settings,
//! the coordinator — each value with where it came from.
//!
//! Files are read as Crabbox reads them (internal/cli/config.go:4947-4987):
//! `$CRABBOX_CONFIG` alone when set, else the user file
//! `<user config dir>/crabbox/config.yaml`, then `./crabbox.yaml` and
//! `./.crabbox.yaml`, later files overriding earlier ones. Unknown keys are
//! ignored, as Go's `yaml.Unmarshal` ignores them. Precedence, lowest
//! first: Crabbox's defaults, the files, the pond spec, the environment.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::diagnostic::{Diagnostic, render_human};
use crate::source::SourceFile;
use crate::yaml::{Node, NodeKind};

/// One setting Crabbox's config file can hold.
struct Key {
    /// The name shown (Crabbox's YAML key path, dotted).
    name: &'static str,
    /// Where it is read in a file, later paths overriding earlier ones.
    paths: &'static [&'static str],
    /// Environment variables, the first set one winning.
    env: &'static [&'static str],
    /// Crabbox's compiled default.
    default: Option<&'static str>,
    /// Redacted when shown.
    secret: bool,
    /// A list in a file (`tags: [a, b]`), held comma-joined as the
    /// environment variable spells it.
    list: bool,
}

const fn key(name: &'static str, env: &'static [&'static str]) -> Key {
    Key {
        name,
        paths: &[],
        env,
        default: None,
        secret: false,
        list: false,
    }
}

/// The keys read (config.go `fileConfig`, :3430-3547; env `applyEnv`,
/// :8267ff; defaults `baseConfig`, :2881-2982). Owner and org have no file
/// keys: Crabbox reads them from the environment only (coordinator.go:2144,
/// 2387).
const KEYS: &[Key] = &[
    Key {
        default: Some("hetzner"),
        ..key("provider", &["CRABBOX_PROVIDER"])
    },
    key("profile", &["CRABBOX_PROFILE"]),
    Key {
        default: Some("beast"),
        ..key("class", &["CRABBOX_DEFAULT_CLASS"])
    },
    key("serverType", &["CRABBOX_SERVER_TYPE"]),
    Key {
        paths: &["coordinator", "broker.url"],
        ..key("coordinator", &["CRABBOX_COORDINATOR"])
    },
    Key {
        paths: &["coordinatorToken", "broker.token"],
        secret: true,
        ..key("coordinatorToken", &["CRABBOX_COORDINATOR_TOKEN"])
    },
    Key {
        paths: &["ttl", "lease.ttl"],
        ..key("ttl", &["CRABBOX_TTL"])
    },
    Key {
        paths: &["idleTimeout", "lease.idleTimeout"],
        ..key("idleTimeout", &["CRABBOX_IDLE_TIMEOUT"])
    },
    Key {
        default: Some("fsn1"),
        ..key("hetzner.location", &["CRABBOX_HETZNER_LOCATION"])
    },
    Key {
        default: Some("ubuntu-24.04"),
        ..key("hetzner.image", &["CRABBOX_HETZNER_IMAGE"])
    },
    key("hetzner.sshKey", &[]),
    key("islo.baseUrl", &[]),
    key("islo.image", &[]),
    key("islo.workdir", &[]),
    key("islo.gatewayProfile", &[]),
    key("islo.snapshotName", &[]),
    key("islo.vcpus", &[]),
    key("islo.memoryMB", &[]),
    key("islo.diskGB", &[]),
    key("tensorlake.apiUrl", &[]),
    key("tensorlake.cliPath", &[]),
    key("tensorlake.image", &[]),
    key("tensorlake.snapshot", &[]),
    key("tensorlake.organizationId", &[]),
    key("tensorlake.projectId", &[]),
    key("tensorlake.namespace", &[]),
    key("tensorlake.workdir", &[]),
    key("tensorlake.cpus", &[]),
    key("tensorlake.memoryMB", &[]),
    key("tensorlake.diskMB", &[]),
    key("tensorlake.timeoutSecs", &[]),
    key("tensorlake.noInternet", &[]),
    key("ssh.user", &["CRABBOX_SSH_USER"]),
    key("ssh.key", &["CRABBOX_SSH_KEY"]),
    key("ssh.port", &["CRABBOX_SSH_PORT"]),
    key("tailscale.enabled", &["CRABBOX_TAILSCALE"]),
    Key {
        default: Some("tag:crabbox"),
        list: true,
        ..key("tailscale.tags", &["CRABBOX_TAILSCALE_TAGS"])
    },
    Key {
        default: Some("crabbox-{slug}"),
        ..key(
            "tailscale.hostnameTemplate",
            &["CRABBOX_TAILSCALE_HOSTNAME_TEMPLATE"],
        )
    },
    Key {
        default: Some("CRABBOX_TAILSCALE_AUTH_KEY"),
        ..key("tailscale.authKeyEnv", &["CRABBOX_TAILSCALE_AUTH_KEY_ENV"])
    },
    key(
        "owner",
        &["CRABBOX_OWNER", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"],
    ),
    key("org", &["CRABBOX_ORG"]),
];

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Source {
    /// Crabbox's compiled default.
    Default,
    /// A config file, at a 1-based line and column.
    File {
        /// The file.
        path: PathBuf,
        /// Line of the value.
        line: usize,
        /// Column of the value.
        column: usize,
    },
    /// The pond spec, at a JSON pointer.
    Spec {
        /// Where in the spec (`/defaults/hetzner/location`).
        pointer: String,
    },
    /// An environment variable.
    Env {
        /// Its name.
        name: String,
    },
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Default => f.write_str("default"),
            Self::File { path, line, column } => write!(f, "{}:{line}:{column}", path.display()),
            Self::Spec { pointer } => write!(f, "spec {pointer}"),
            Self::Env { name } => write!(f, "env {name}"),
        }
    }
}

/// One merged value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Setting {
    /// The key (Crabbox's name).
    pub key: &'static str,
    /// The value as written (`<redacted>` for secrets when shown).
    pub value: String,
    /// Where it came from.
    pub source: Source,
    /// Whether it is a secret.
    #[serde(skip)]
    pub secret: bool,
}

/// Crabbox's user configuration, merged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserConfig {
    /// The files read, in order (those that exist).
    pub files: Vec<PathBuf>,
    settings: BTreeMap<&'static str, Setting>,
}

/// A config file that is not valid YAML, or holds a value of the wrong shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The rendered diagnostic (file:line:column, the line, a hint), styled
    /// for a terminal (`Display` gives it plain).
    pub rendered: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}",
            anstream::adapter::strip_str(self.rendered.trim_end())
        )
    }
}

impl std::error::Error for ConfigError {}

impl UserConfig {
    /// Reads Crabbox's config files and the environment of this process,
    /// relative to the current directory.
    ///
    /// # Errors
    /// A file that cannot be read or parsed.
    pub fn load() -> Result<Self, ConfigError> {
        let cwd = std::env::current_dir().unwrap_or_default();
        Self::load_from(|n| std::env::var_os(n), &cwd, cfg!(target_os = "macos"))
    }

    /// [`Self::load`] with the environment read through `var` and `cwd` as
    /// the current directory.
    ///
    /// # Errors
    /// A file that cannot be read or parsed.
    pub fn load_from(
        var: impl Fn(&str) -> Option<OsString>,
        cwd: &Path,
        macos: bool,
    ) -> Result<Self, ConfigError> {
        let text = |n: &str| {
            var(n)
                .filter(|v| !v.is_empty())
                .map(|v| v.to_string_lossy().into_owned())
        };
        let mut config = Self::default();
        for key in KEYS {
            if let Some(default) = key.default {
                config.set(key, default.to_owned(), Source::Default);
            }
        }
        for path in config_paths(&var, cwd, macos) {
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(ConfigError {
                        rendered: format!(
                            "error: cannot read Crabbox config {}: {e}\n  help: fix its permissions, or set CRABBOX_CONFIG to another file\n",
                            path.display()
                        ),
                    });
                }
            };
            config.files.push(path.clone());
            config.read_file(&path, &String::from_utf8_lossy(&bytes))?;
        }
        for key in KEYS {
            if let Some((name, value)) = key.env.iter().find_map(|n| Some((*n, text(n)?))) {
                config.set(
                    key,
                    value,
                    Source::Env {
                        name: name.to_owned(),
                    },
                );
            }
        }
        Ok(config)
    }

    fn set(&mut self, key: &Key, value: String, source: Source) {
        self.settings.insert(
            key.name,
            Setting {
                key: key.name,
                value,
                source,
                secret: key.secret,
            },
        );
    }

    fn read_file(&mut self, path: &Path, text: &str) -> Result<(), ConfigError> {
        if text.trim().is_empty() {
            return Ok(());
        }
        let file = SourceFile::new(path.display().to_string(), text);
        let hint =
            "fix the YAML there, or set CRABBOX_CONFIG to another file (Crabbox stops on it too)";
        let fail = |d: Diagnostic| ConfigError {
            rendered: render_human(&file, &[d.with_hint(hint)]),
        };
        let (root, _) = crate::yaml::parse(&file).map_err(fail)?;
        if matches!(root.kind, NodeKind::Null) {
            return Ok(());
        }
        if !matches!(root.kind, NodeKind::Map(_)) {
            return Err(fail(Diagnostic::error(
                "config-shape",
                root.span,
                "a Crabbox config file is a mapping of keys (`provider: hetzner`)",
            )));
        }
        for key in KEYS {
            let paths: &[&str] = if key.paths.is_empty() {
                &[key.name]
            } else {
                key.paths
            };
            for dotted in paths {
                let Some(node) = lookup(&root, dotted) else {
                    continue;
                };
                let value = match &node.kind {
                    NodeKind::Null => continue,
                    NodeKind::Seq(items) if key.list => {
                        let Some(values) = items.iter().map(scalar).collect::<Option<Vec<_>>>()
                        else {
                            return Err(fail(Diagnostic::error(
                                "config-type",
                                node.span,
                                format!("`{dotted}` must be a list of single values"),
                            )));
                        };
                        values.join(",")
                    }
                    NodeKind::Seq(_) | NodeKind::Map(_) => {
                        return Err(fail(Diagnostic::error(
                            "config-type",
                            node.span,
                            format!("`{dotted}` must be a single value, not a list or mapping"),
                        )));
                    }
                    _ => scalar(node).unwrap_or_default(),
                };
                if value.is_empty() {
                    // Go's `if file.X != ""`: an empty value sets nothing.
                    continue;
                }
                let at = file.line_col(node.span.start);
                self.set(
                    key,
                    value,
                    Source::File {
                        path: path.to_owned(),
                        line: at.line,
                        column: at.column,
                    },
                );
            }
        }
        Ok(())
    }

    /// Records what the pond spec sets for `key` (it wins over the files;
    /// the environment still wins over it).
    pub fn apply_spec(&mut self, key: &str, value: &str, pointer: &str) {
        let Some(k) = KEYS.iter().find(|k| k.name == key) else {
            return;
        };
        if matches!(self.source(key), Some(Source::Env { .. })) || value.is_empty() {
            return;
        }
        self.set(
            k,
            value.to_owned(),
            Source::Spec {
                pointer: pointer.to_owned(),
            },
        );
    }

    /// The merged value of `key` (Crabbox's name, e.g. `hetzner.location`).
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&str> {
        self.settings.get(key).map(|s| s.value.as_str())
    }

    /// Where the value of `key` came from.
    #[must_use]
    pub fn source(&self, key: &str) -> Option<&Source> {
        self.settings.get(key).map(|s| &s.source)
    }

    /// Every value set, in key order, secrets redacted.
    #[must_use]
    pub fn shown(&self) -> Vec<Setting> {
        KEYS.iter()
            .filter_map(|k| self.settings.get(k.name))
            .map(|s| Setting {
                value: if s.secret {
                    "<redacted>".to_owned()
                } else {
                    s.value.clone()
                },
                ..s.clone()
            })
            .collect()
    }

    /// The provider a file or the environment names, `None` when only
    /// Crabbox's default (`hetzner`) would apply — what an imperative
    /// `warmup` without `--provider` uses.
    #[must_use]
    pub fn configured_provider(&self) -> Option<&str> {
        self.settings
            .get("provider")
            .filter(|s| s.source != Source::Default)
            .map(|s| s.value.as_str())
    }
}

/// The files Crabbox reads, in merge order (config.go:4947-4969).
fn config_paths(var: &impl Fn(&str) -> Option<OsString>, cwd: &Path, macos: bool) -> Vec<PathBuf> {
    if let Some(explicit) = var("CRABBOX_CONFIG").filter(|v| !v.is_empty()) {
        let explicit = PathBuf::from(explicit);
        return vec![if explicit.is_absolute() {
            explicit
        } else {
            cwd.join(explicit)
        }];
    }
    let mut paths: Vec<PathBuf> = crabbox_core::dirs::user_config_dir_from(var, macos)
        .map(|d| d.join("crabbox").join("config.yaml"))
        .into_iter()
        .collect();
    for name in ["crabbox.yaml", ".crabbox.yaml"] {
        let path = cwd.join(name);
        if path.exists() {
            paths.push(path);
        }
    }
    paths
}

/// A scalar node's text (`None` for a list, a mapping or null).
fn scalar(node: &Node) -> Option<String> {
    match &node.kind {
        NodeKind::Str { value, .. } => Some(value.clone()),
        NodeKind::Int(i) => Some(i.to_string()),
        NodeKind::Float(f) => Some(f.to_string()),
        NodeKind::Bool(b) => Some(b.to_string()),
        NodeKind::Null | NodeKind::Seq(_) | NodeKind::Map(_) => None,
    }
}

/// The node at a dotted path of mapping keys.
fn lookup<'a>(root: &'a Node, dotted: &str) -> Option<&'a Node> {
    dotted
        .split('.')
        .try_fold(root, |node, part| node.get(part).map(|e| &e.value))
}

/// Go's `os.UserConfigDir()`, where Crabbox keeps `crabbox/config.yaml` and
/// `crabbox/testboxes/<lease>/`: `$XDG_CONFIG_HOME` (absolute) or
/// `~/.config` on Linux, `~/Library/Application Support` on macOS (Go never
/// consults XDG there). `None` where Go fails: no `$HOME`, or a relative
/// `$XDG_CONFIG_HOME`.
#[must_use]
pub fn user_config_dir() -> Option<PathBuf> {
    crabbox_core::dirs::user_config_dir_from(
        |name| std::env::var_os(name),
        cfg!(target_os = "macos"),
    )
}
