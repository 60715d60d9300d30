//! What a Tensorlake member runs with: the defaults the environment gives
//! (`CRABBOX_TENSORLAKE_*`, the CLI's own variables), the scope a sandbox
//! lives in (API URL, organization, project, namespace), and the member's
//! block resolved over those defaults into the CLI's arguments.

use super::*;

/// Settings taken from the environment when a member's block leaves them out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TensorlakeDefaults {
    /// `CRABBOX_TENSORLAKE_CLI`.
    pub cli: Option<String>,
    /// `CRABBOX_TENSORLAKE_API_URL`, else `TENSORLAKE_API_URL`.
    pub api_url: Option<String>,
    /// `CRABBOX_TENSORLAKE_ORGANIZATION_ID`, else `TENSORLAKE_ORGANIZATION_ID`.
    pub organization: Option<String>,
    /// `CRABBOX_TENSORLAKE_PROJECT_ID`, else `TENSORLAKE_PROJECT_ID`.
    pub project: Option<String>,
    /// `CRABBOX_TENSORLAKE_NAMESPACE`, else `INDEXIFY_NAMESPACE`.
    pub namespace: Option<String>,
}

impl TensorlakeDefaults {
    /// The defaults in this process's environment.
    #[must_use]
    pub fn from_env() -> Self {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// The defaults read through `vars` (a variable's value by name).
    #[must_use]
    pub fn from_vars(vars: impl Fn(&str) -> Option<String>) -> Self {
        let var = |name: &str| {
            vars(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let either = |first: &str, second: &str| var(first).or_else(|| var(second));
        Self {
            cli: var("CRABBOX_TENSORLAKE_CLI"),
            api_url: either("CRABBOX_TENSORLAKE_API_URL", CLI_URL_ENV),
            organization: either(
                "CRABBOX_TENSORLAKE_ORGANIZATION_ID",
                "TENSORLAKE_ORGANIZATION_ID",
            ),
            project: either("CRABBOX_TENSORLAKE_PROJECT_ID", "TENSORLAKE_PROJECT_ID"),
            namespace: either("CRABBOX_TENSORLAKE_NAMESPACE", "INDEXIFY_NAMESPACE"),
        }
    }
}

/// Where a sandbox lives and which CLI reaches it: the global flags of every
/// invocation. Recorded in the claim at create.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Scope {
    /// The CLI binary.
    pub(super) cli: String,
    /// The member's own `cliPath` (recorded; the provider default otherwise).
    pub(super) cli_from_block: bool,
    pub(super) api_url: Option<String>,
    pub(super) organization: Option<String>,
    pub(super) project: Option<String>,
    pub(super) namespace: Option<String>,
}

impl Scope {
    /// The global flags, in the CLI's order.
    pub(super) fn global_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        for (flag, value) in [
            ("--api-url", &self.api_url),
            ("--organization", &self.organization),
            ("--project", &self.project),
            ("--namespace", &self.namespace),
        ] {
            if let Some(value) = value {
                args.push(flag.to_owned());
                args.push(value.clone());
            }
        }
        args
    }

    /// The claim's record of this scope.
    pub(super) fn to_claim(&self) -> Value {
        let mut map = Map::new();
        for (key, value) in [
            ("cliPath", self.cli_from_block.then_some(&self.cli)),
            ("apiUrl", self.api_url.as_ref()),
            ("organizationId", self.organization.as_ref()),
            ("projectId", self.project.as_ref()),
            ("namespace", self.namespace.as_ref()),
        ] {
            if let Some(value) = value {
                map.insert(key.to_owned(), Value::String(value.clone()));
            }
        }
        Value::Object(map)
    }
}

/// A member's settings, from its block over the defaults.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub(super) scope: Scope,
    pub(super) workdir: String,
    /// `sbx create` options (without the name).
    pub(super) create_args: Vec<String>,
}

impl Settings {
    pub(super) fn of(
        member: &DesiredMember,
        defaults: &TensorlakeDefaults,
    ) -> Result<Self, ProviderError> {
        let block: TensorlakeBlock = crate::block_of(member)?;
        let set = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let block_cli = set(&block.cli_path);
        let scope = Scope {
            cli: block_cli
                .clone()
                .or_else(|| defaults.cli.clone())
                .unwrap_or_else(|| DEFAULT_CLI.to_owned()),
            cli_from_block: block_cli.is_some(),
            api_url: set(&block.api_url).or_else(|| defaults.api_url.clone()),
            organization: set(&block.organization_id).or_else(|| defaults.organization.clone()),
            project: set(&block.project_id).or_else(|| defaults.project.clone()),
            namespace: set(&block.namespace).or_else(|| defaults.namespace.clone()),
        };
        let workdir = match &block.workdir {
            None => DEFAULT_WORKDIR.to_owned(),
            Some(raw) => checked_workdir(&member.slug, raw)?,
        };
        let mut create_args = Vec::new();
        let mut push = |flag: &str, value: String| {
            create_args.push(flag.to_owned());
            create_args.push(value);
        };
        if let Some(cpus) = block.cpus.filter(|c| *c > 0.0) {
            push("-c", format!("{cpus}"));
        }
        if let Some(mb) = block.memory_mb.filter(|m| *m > 0) {
            push("-m", mb.to_string());
        }
        if let Some(mb) = block.disk_mb.filter(|m| *m > 0) {
            push("--disk_mb", mb.to_string());
        }
        if let Some(secs) = block.timeout_secs.filter(|s| *s > 0) {
            push("-t", secs.to_string());
        }
        if let Some(snapshot) = set(&block.snapshot) {
            push("-s", snapshot);
        }
        if let Some(image) = set(&block.image) {
            push("-i", image);
        }
        if block.no_internet == Some(true) {
            create_args.push("-N".to_owned());
        }
        Ok(Self {
            scope,
            workdir,
            create_args,
        })
    }
}
