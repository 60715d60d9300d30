//! Semantic checks on a schema-valid document and its resolution into a
//! [`DesiredPond`]. Each check has its own diagnostic code; every problem of
//! the document is reported, not only the first.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use crate::diagnostic::Diagnostic;
use crabbox_core::provider::features_of;

use crate::desired::{
    DEFAULT_IDLE_TIMEOUT, DEFAULT_READY_INTERVAL, DEFAULT_READY_TIMEOUT, DEFAULT_SYNC_MAX_BYTES,
    DEFAULT_TTL, DesiredMember, DesiredPond, Probe, ReadyCheck, StateStore, Step, SyncSettings,
};
use crate::model::{
    EnvValue, MemberSpec, PortSpec, Ready, SetupStep, State, StateBackend, Sync, TcpTarget,
};
use crate::peer_refs;
use crate::providers::ProviderBlocks;
use crate::source::{SourceFile, Span};
use crate::suggest::Names;
use crate::yaml::PointerIndex;
use crabbox_core::duration;
use crabbox_core::normalize::{MAX_NAME_LEN, NameProblem, checked_name};
use crabbox_core::provider::ProviderName;

/// Most distinct ports one member may expose (Crabbox's limit).
pub const MAX_PORTS: usize = 10;

/// The typed parts of a document that could be read (a member that does not
/// fit the types is left out; its schema errors are already reported).
pub struct Parts {
    /// `version`, if readable.
    pub version: Option<u64>,
    /// `pond`, if readable.
    pub pond: Option<String>,
    /// `defaults`, or empty.
    pub defaults: MemberSpec,
    /// Fields of `defaults` left out because they do not fit the schema.
    pub defaults_dropped: Vec<String>,
    /// Members by their index in the document, with the fields left out.
    pub members: Vec<(usize, MemberSpec, Vec<String>)>,
    /// `outputs.dir`.
    pub outputs_dir: Option<String>,
    /// `outputs.templates` by index: (src, dest).
    pub templates: Vec<(usize, String, String)>,
    /// `state`, if readable.
    pub state: Option<State>,
}

/// Runs every semantic check; returns the resolved pond when there are no errors.
pub fn check(
    parts: &Parts,
    index: &PointerIndex,
    interpolated: &HashSet<Span>,
    file: &SourceFile,
    base_dir: &Path,
    out: &mut Vec<Diagnostic>,
) -> Option<DesiredPond> {
    let mut c = Checker {
        index,
        interpolated,
        out,
        errors: 0,
        scanned: 0,
    };
    let errors_before = c.error_count();

    if let Some(v) = parts.version.filter(|&v| v != 1) {
        c.out.push(
            Diagnostic::error(
                "unsupported-version",
                c.value("/version"),
                format!("pond.yaml version {v} is not supported"),
            )
            .with_hint("this crabbox reads `version: 1`"),
        );
    }
    let pond_name = parts
        .pond
        .as_deref()
        .and_then(|raw| c.name(raw, "/pond", "pond name"));

    let mut members = Vec::new();
    let mut seen: HashMap<String, Span> = HashMap::new();
    for (i, spec, dropped) in &parts.members {
        let base = format!("/members/{i}");
        let Some(slug) = c.name(&spec.slug, &format!("{base}/slug"), "slug") else {
            continue;
        };
        let here = c.value(&format!("{base}/slug"));
        if let Some(first) = seen.get(&slug) {
            c.out.push(
                Diagnostic::error("duplicate-slug", here, format!("duplicate member slug `{slug}`"))
                    .with_note(*first, "first defined here")
                    .with_hint("slugs are a member's identity and must be unique within the pond (after normalization)"),
            );
            continue;
        }
        seen.insert(slug.clone(), here);
        members.push((*i, slug, spec, dropped));
    }

    let slugs = Slugs {
        set: members.iter().map(|(_, s, _, _)| s.as_str()).collect(),
        names: Names::new(members.iter().map(|(_, s, _, _)| s.as_str())),
    };
    let mut resolved = Vec::new();
    for (i, slug, spec, dropped) in &members {
        // With an unreadable provider, provider-specific checks would only mislead.
        let provider_known = !dropped.iter().any(|d| d == "provider")
            && (spec.provider.is_some() || !parts.defaults_dropped.iter().any(|d| d == "provider"));
        if let Some(m) = c.member(*i, slug, spec, &parts.defaults, &slugs, provider_known) {
            resolved.push(m);
        }
    }
    c.cycles(&resolved, &members);

    let ports: HashMap<&str, &[u16]> = resolved
        .iter()
        .map(|m| (m.slug.as_str(), m.expose.as_slice()))
        .collect();
    let targets: Vec<peer_refs::Member<'_>> = members
        .iter()
        .map(|(_, slug, spec, _)| peer_refs::Member {
            slug,
            provider: spec
                .provider
                .or(parts.defaults.provider)
                .unwrap_or(ProviderName::Local),
            ports: ports.get(slug.as_str()).copied(),
        })
        .collect();
    let placeholder_pond = pond_name.clone().unwrap_or_else(|| "pond".to_owned());
    let peers = peer_refs::Targets::new(&placeholder_pond, &targets);
    c.peer_references(&parts.defaults, Origin::Defaults, &peers, file);
    for (i, _, spec, _) in &members {
        c.peer_references(spec, Origin::Member(*i), &peers, file);
    }

    let mut templates = Vec::new();
    for (i, src, dest) in &parts.templates {
        let path = base_dir.join(src);
        if path.is_file() {
            peer_refs::check_template(
                &path,
                src,
                &format!("/outputs/templates/{i}/src"),
                &placeholder_pond,
                &peers,
                c.index,
                c.out,
            );
        } else {
            c.out.push(
                Diagnostic::error(
                    "template-missing",
                    c.value(&format!("/outputs/templates/{i}/src")),
                    format!("template `{src}` does not exist"),
                )
                .with_hint(format!(
                    "paths are relative to the pond.yaml's directory; looked for {}",
                    path.display()
                )),
            );
        }
        templates.push((path, dest.clone()));
    }

    let state = c.state(parts.state.as_ref());

    let errors_after = c.error_count();
    let name = pond_name?;
    (errors_after == errors_before && parts.members.len() == resolved.len()).then(|| DesiredPond {
        written_name: parts.pond.clone().filter(|raw| *raw != name),
        name,
        members: resolved,
        outputs_dir: parts.outputs_dir.clone(),
        templates,
        state,
    })
}

struct Checker<'a> {
    index: &'a PointerIndex,
    /// Spans of the strings a `${VAR}` changed.
    interpolated: &'a HashSet<Span>,
    out: &'a mut Vec<Diagnostic>,
    /// Errors among `out[..scanned]`: counted as `out` grows, never again.
    errors: usize,
    scanned: usize,
}

/// The members' slugs: for lookups, and for "did you mean".
struct Slugs<'a> {
    set: HashSet<&'a str>,
    names: Names<'a>,
}

/// Which map a merged member field came from.
#[derive(Clone, Copy)]
enum Origin {
    Member(usize),
    Defaults,
}

impl Origin {
    fn pointer(self, path: &str) -> String {
        match self {
            Self::Member(i) => format!("/members/{i}{path}"),
            Self::Defaults => format!("/defaults{path}"),
        }
    }
}

impl Checker<'_> {
    /// How many errors have been reported so far.
    fn error_count(&mut self) -> usize {
        self.errors += self.out[self.scanned..]
            .iter()
            .filter(|d| d.is_error())
            .count();
        self.scanned = self.out.len();
        self.errors
    }

    /// `state:`: `postgres` needs a PostgreSQL URL, `local` takes none.
    fn state(&mut self, state: Option<&State>) -> StateStore {
        let Some(state) = state else {
            return StateStore::Local;
        };
        let url = state.url.as_deref().map(str::trim);
        match (state.backend, url) {
            (StateBackend::Local, None) => StateStore::Local,
            (StateBackend::Local, Some(_)) => {
                self.out.push(
                    Diagnostic::error(
                        "state-backend",
                        self.value("/state/url"),
                        "the local state backend takes no `url`",
                    )
                    .with_hint(
                        "remove `url`, or set `backend: postgres` to keep state in that database",
                    ),
                );
                StateStore::Local
            }
            (StateBackend::Postgres, None | Some("")) => {
                self.out.push(
                    Diagnostic::error(
                        "state-backend",
                        self.value(if url.is_some() { "/state/url" } else { "/state/backend" }),
                        "the postgres state backend needs a `url`",
                    )
                    .with_hint("add `url: ${CRABBOX_STATE_URL}` and set that variable to postgres://user@host:5432/db"),
                );
                StateStore::Local
            }
            (StateBackend::Postgres, Some(url))
                if !crabbox_core::state_url::is_postgres_url(url) =>
            {
                self.out.push(
                    Diagnostic::error(
                        "state-backend",
                        self.value("/state/url"),
                        format!(
                            "`{}` is not a PostgreSQL URL",
                            crabbox_core::state_url::redact(url)
                        ),
                    )
                    .with_hint("write postgres://user@host:5432/db (or postgresql://…)"),
                );
                StateStore::Local
            }
            (StateBackend::Postgres, Some(url)) => StateStore::Postgres {
                url: url.to_owned(),
            },
        }
    }

    fn value(&self, pointer: &str) -> Span {
        self.index.find(pointer).value
    }

    fn key(&self, pointer: &str) -> Span {
        let p = self.index.find(pointer);
        p.key.unwrap_or(p.value)
    }

    fn name(&mut self, raw: &str, pointer: &str, what: &str) -> Option<String> {
        // Missing entirely: the schema already reports the missing key.
        self.index.get(pointer)?;
        match checked_name(raw) {
            Ok(name) => Some(name),
            Err(NameProblem::Empty) => {
                self.out.push(
                    Diagnostic::error(
                        "empty-name",
                        self.value(pointer),
                        format!("{what} `{raw}` is empty after normalization"),
                    )
                    .with_hint(
                        "names need at least one letter or digit; other characters become `-`",
                    ),
                );
                None
            }
            Err(NameProblem::TooLong(len)) => {
                self.out.push(
                    Diagnostic::error(
                        "name-too-long",
                        self.value(pointer),
                        format!("{what} is {len} characters after normalization; the limit is {MAX_NAME_LEN}"),
                    )
                    .with_hint("shorten it: the name is used in labels and host names"),
                );
                None
            }
        }
    }

    fn duration(&mut self, text: &str, pointer: &str) -> Option<Duration> {
        let d = duration::parse(text);
        if d.is_none() {
            self.out.push(
                Diagnostic::error("bad-duration", self.value(pointer), format!("`{text}` is not a duration"))
                    .with_hint("write durations as numbers with units h, m, s or ms: `90m`, `1h30m`, `45s`, `500ms`"),
            );
        }
        d
    }

    #[allow(clippy::too_many_lines)] // one field after another; splitting hides the order
    fn member(
        &mut self,
        i: usize,
        slug: &str,
        spec: &MemberSpec,
        defaults: &MemberSpec,
        slugs: &Slugs<'_>,
        provider_known: bool,
    ) -> Option<DesiredMember> {
        let errors_before = self.error_count();
        let own = Origin::Member(i);
        // The merged value of a field and where it was written.
        macro_rules! pick {
            ($field:ident) => {
                match (&spec.$field, &defaults.$field) {
                    (Some(v), _) => Some((v.clone(), own)),
                    (None, Some(v)) => Some((v.clone(), Origin::Defaults)),
                    (None, None) => None,
                }
            };
        }
        let picked_provider = pick!(provider);
        let provider = picked_provider.map_or(ProviderName::Local, |(p, _)| p);

        for origin in [own, Origin::Defaults] {
            let map = match origin {
                Origin::Member(_) => spec,
                Origin::Defaults => defaults,
            };
            if map.class.is_some() && map.server_type.is_some() {
                self.out.push(
                    Diagnostic::error("class-and-type", self.key(&origin.pointer("/type")), "`class` and `type` are mutually exclusive")
                        .with_note(self.key(&origin.pointer("/class")), "`class` is set here")
                        .with_hint("use `class` for a size the provider may fall back within, or `type` for one exact machine type"),
                );
            }
        }
        // A member's own `type` overrides a class from defaults, and vice versa.
        let (class, server_type) = match (&spec.class, &spec.server_type) {
            (Some(c), _) => (Some(*c), None),
            (None, Some(t)) => (None, Some(t.clone())),
            (None, None) => (defaults.class, defaults.server_type.clone()),
        };
        if provider_known && matches!(provider, ProviderName::Local | ProviderName::Ssh) {
            for (set, field) in [(class.is_some(), "class"), (server_type.is_some(), "type")] {
                let origin = if spec.class.is_some() || spec.server_type.is_some() {
                    own
                } else {
                    Origin::Defaults
                };
                if set {
                    // Said once for a default, not once per member inheriting it.
                    let whose = match origin {
                        Origin::Member(_) => format!(" (member `{slug}`)"),
                        Origin::Defaults => String::new(),
                    };
                    self.out.push(
                        Diagnostic::warning(
                            "meaningless-option",
                            self.key(&origin.pointer(&format!("/{field}"))),
                            format!("`{field}` has no effect on provider `{provider}`{whose}"),
                        )
                        .with_hint(format!(
                            "`local` and `ssh` use a machine that already exists; remove `{field}`"
                        )),
                    );
                }
            }
        }

        // Daytona sizes sandboxes by snapshot: Crabbox refuses --class and
        // --type there (daytona/backend_ssh.go), and so does validate.
        if provider_known && provider == ProviderName::Daytona {
            for (set, field) in [(class.is_some(), "class"), (server_type.is_some(), "type")] {
                if set {
                    let origin = if spec.class.is_some() || spec.server_type.is_some() {
                        own
                    } else {
                        Origin::Defaults
                    };
                    self.out.push(
                        Diagnostic::error(
                            "unsupported-option",
                            self.key(&origin.pointer(&format!("/{field}"))),
                            format!("member `{slug}`: `{field}` is not supported by provider `daytona`"),
                        )
                        .with_hint("choose CPU, memory and disk in the Daytona snapshot (`daytona: { snapshot: … }`)"),
                    );
                }
            }
        }

        let tailscale = pick!(tailscale);
        if let Some((true, origin)) = &tailscale
            && provider_known
            && let Some(why) = cannot_join_tailnet(provider)
        {
            self.out.push(
                Diagnostic::error(
                    "unsupported-option",
                    self.value(&origin.pointer("/tailscale")),
                    format!("member `{slug}`: provider `{provider}` cannot join a tailnet: {why}"),
                )
                .with_hint("remove `tailscale: true` and use the peer variables (CRABBOX_POND_<PEER>_<PORT>), or run the member on hetzner, aws, azure or gcp"),
            );
        }
        if let Some((ready, origin)) = pick!(ready)
            && ready.tailnet == Some(true)
            && !tailscale.as_ref().is_some_and(|(t, _)| *t)
        {
            self.out.push(
                Diagnostic::error(
                    "ready-tailnet",
                    self.value(&origin.pointer("/ready/tailnet")),
                    format!("member `{slug}`: `ready.tailnet` waits for the tailnet, but the member does not join it"),
                )
                .with_hint("add `tailscale: true` to the member, or remove `tailnet` from `ready`"),
            );
        }

        let expose =
            pick!(expose).map_or_else(Vec::new, |(items, origin)| self.ports(&items, origin));
        if provider_known && !expose.is_empty() && !features_of(provider).reachable_ports() {
            let origin = if spec.expose.is_some() {
                own
            } else {
                Origin::Defaults
            };
            self.out.push(
                Diagnostic::error(
                    "unsupported-option",
                    self.key(&origin.pointer("/expose")),
                    format!("member `{slug}`: provider `{provider}` has no transport peers can reach exposed ports through"),
                )
                .with_hint("remove `expose`, or run the member on a provider with SSH or URL access"),
            );
        }

        let mut depends_on = Vec::new();
        if let Some(deps) = &spec.depends_on {
            for (k, (raw, condition)) in deps.entries().into_iter().enumerate() {
                let pointer = match deps {
                    crate::model::DependsOn::List(_) => {
                        format!("/members/{i}/depends_on/{k}")
                    }
                    crate::model::DependsOn::Map(_) => format!(
                        "/members/{i}/depends_on/{}",
                        crate::yaml::escape_token(&raw)
                    ),
                };
                let at = self.key(&pointer);
                let dep = crabbox_core::normalize::normalize_name(&raw);
                if slugs.set.contains(dep.as_str()) {
                    depends_on.push((dep, condition));
                } else {
                    let mut d = Diagnostic::error(
                        "unknown-member",
                        at,
                        format!(
                            "member `{slug}` depends on `{raw}`, which is not a member of this pond"
                        ),
                    );
                    d.hint = Some(match slugs.names.closest(&dep) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => format!("members are: {}", slugs.names.listing()),
                    });
                    self.out.push(d);
                }
            }
        }
        if defaults.depends_on.is_some() {
            self.out.push(
                Diagnostic::error(
                    "defaults-depends-on",
                    self.key("/defaults/depends_on"),
                    "`depends_on` cannot be a default",
                )
                .with_hint("write dependencies on the members that have them"),
            );
        }

        let mut env = BTreeMap::new();
        let mut sensitive_env = std::collections::BTreeSet::new();
        for (origin, map) in [(Origin::Defaults, &defaults.env), (own, &spec.env)] {
            if let Some(map) = map {
                let pointer = origin.pointer("/env");
                for name in map.keys() {
                    let at = format!("{pointer}/{}", crate::yaml::escape_token(name));
                    if self
                        .index
                        .get(&at)
                        .is_some_and(|p| self.interpolated.contains(&p.value))
                    {
                        sensitive_env.insert(name.clone());
                    } else {
                        sensitive_env.remove(name);
                    }
                }
                env.extend(self.env(map, &pointer));
            }
        }
        let mut pass_env: Vec<String> = defaults
            .pass_env
            .iter()
            .chain(&spec.pass_env)
            .flatten()
            .map(|n| n.0.clone())
            .collect();
        pass_env.sort();
        pass_env.dedup();

        let setup_origin = if spec.setup.is_some() {
            own
        } else {
            Origin::Defaults
        };
        let setup =
            pick!(setup).map_or_else(Vec::new, |(steps, origin)| self.setup(&steps, origin));
        if provider_known && !features_of(provider).background {
            for (k, step) in setup.iter().enumerate().filter(|(_, s)| s.background) {
                self.out.push(
                    Diagnostic::error(
                        "unsupported-option",
                        self.value(&setup_origin.pointer(&format!("/setup/{k}/background"))),
                        format!("member `{slug}`: provider `{provider}` cannot keep a background step running (`{}`)", step.run),
                    )
                    .with_hint("run it to completion, or put the service on a provider with background support (local, ssh, hetzner, islo…)"),
                );
            }
        }
        if provider_known && provider == ProviderName::BlacksmithTestbox {
            self.refuse_env_forwarding(slug, spec, defaults, own, setup_origin);
        }
        let ready = pick!(ready).and_then(|(r, origin)| self.ready(&r, origin));

        let sync = match pick!(sync) {
            None | Some((Sync::Enabled(true), _)) => SyncSettings {
                enabled: true,
                exclude: Vec::new(),
                max_bytes: DEFAULT_SYNC_MAX_BYTES,
            },
            Some((Sync::Enabled(false), _)) => SyncSettings {
                enabled: false,
                exclude: Vec::new(),
                max_bytes: DEFAULT_SYNC_MAX_BYTES,
            },
            Some((Sync::Options(o), _)) => SyncSettings {
                enabled: true,
                exclude: o.exclude,
                max_bytes: o
                    .max_mb
                    .map_or(DEFAULT_SYNC_MAX_BYTES, |mb| mb.saturating_mul(1024 * 1024)),
            },
        };

        let ttl = self.lifetime(pick!(ttl), "/ttl", DEFAULT_TTL);
        let idle_timeout =
            self.lifetime(pick!(idle_timeout), "/idle_timeout", DEFAULT_IDLE_TIMEOUT);
        let keep = pick!(keep).is_some_and(|(k, _)| k);
        let lifecycle = pick!(lifecycle).map(|(l, _)| l).unwrap_or_default();

        let provider_block = if provider_known {
            self.blocks(i, slug, provider, &spec.blocks, &defaults.blocks)
        } else {
            None
        };

        let errors_after = self.error_count();
        (errors_after == errors_before).then(|| DesiredMember {
            written_slug: Some(spec.slug.clone()).filter(|raw| raw != slug),
            slug: slug.to_owned(),
            provider,
            class,
            server_type,
            tailscale: tailscale.is_some_and(|(t, _)| t),
            expose,
            depends_on,
            env,
            sensitive_env,
            pass_env,
            setup,
            ready,
            sync,
            ttl,
            idle_timeout,
            keep,
            prevent_destroy: lifecycle.prevent_destroy.unwrap_or(false),
            create_before_destroy: lifecycle.create_before_destroy.unwrap_or(false),
            provider_block,
            broker: match pick!(broker) {
                None | Some((crate::model::Broker::Enabled(true), _)) => {
                    crate::broker::BrokerChoice::Environment
                }
                Some((crate::model::Broker::Enabled(false), _)) => {
                    crate::broker::BrokerChoice::Direct
                }
                Some((crate::model::Broker::Coordinator(b), _)) => {
                    crate::broker::BrokerChoice::Coordinator {
                        url: b.url,
                        token: b.token.filter(|t| !t.is_empty()),
                    }
                }
            },
        })
    }

    fn lifetime(
        &mut self,
        value: Option<(String, Origin)>,
        path: &str,
        default: Duration,
    ) -> Duration {
        let Some((text, origin)) = value else {
            return default;
        };
        let pointer = origin.pointer(path);
        match self.duration(&text, &pointer) {
            Some(d) if d.is_zero() => {
                self.out.push(
                    Diagnostic::error(
                        "bad-duration",
                        self.value(&pointer),
                        format!(
                            "`{}` must be longer than zero",
                            path.trim_start_matches('/')
                        ),
                    )
                    .with_hint("e.g. `90m`"),
                );
                default
            }
            Some(d) => d,
            None => default,
        }
    }

    fn ports(&mut self, items: &[PortSpec], origin: Origin) -> Vec<u16> {
        let mut ports = Vec::new();
        for (k, item) in items.iter().enumerate() {
            let pointer = origin.pointer(&format!("/expose/{k}"));
            let at = self.value(&pointer);
            let tokens: Vec<(String, Span)> = match item {
                PortSpec::Port(p) => vec![(p.to_string(), at)],
                PortSpec::List(text) => {
                    let raw = at; // commas within one scalar: point at the scalar
                    text.split(',')
                        .map(|t| (t.trim().to_owned(), raw))
                        .collect()
                }
            };
            for (token, span) in tokens {
                match token.parse::<i64>() {
                    Ok(p) if (1..=65535).contains(&p) => {
                        ports.push(u16::try_from(p).expect("range checked"))
                    }
                    Ok(p) => self.out.push(
                        Diagnostic::error(
                            "port-range",
                            span,
                            format!("port {p} is outside 1..65535"),
                        )
                        .with_hint("ports are between 1 and 65535"),
                    ),
                    Err(_) => self.out.push(
                        Diagnostic::error(
                            "invalid-port",
                            span,
                            format!("`{token}` is not a port number"),
                        )
                        .with_hint(
                            "write ports as integers or a comma list: `[5432, \"8080,8081\"]`",
                        ),
                    ),
                }
            }
        }
        ports.sort_unstable();
        ports.dedup();
        if ports.len() > MAX_PORTS {
            self.out.push(
                Diagnostic::error("too-many-ports", self.key(&origin.pointer("/expose")), format!("{} distinct ports exposed; the limit is {MAX_PORTS}", ports.len()))
                    .with_hint("Crabbox labels carry at most 10 ports per member; split the services across members"),
            );
        }
        ports
    }

    fn env(&mut self, map: &BTreeMap<String, EnvValue>, pointer: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (name, value) in map {
            let valid = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                self.out.push(
                    Diagnostic::error(
                        "invalid-env-name",
                        self.key(&format!("{pointer}/{}", crate::yaml::escape_token(name))),
                        format!("`{name}` is not a valid environment variable name"),
                    )
                    .with_hint("use letters, digits and `_`, not starting with a digit"),
                );
            }
            out.insert(name.clone(), value.to_text());
        }
        out
    }

    /// Blacksmith runs commands through its CLI, which forwards no
    /// environment: Crabbox refuses env forwarding there, and so does
    /// `validate`, at each `env`/`pass_env` written for such a member.
    fn refuse_env_forwarding(
        &mut self,
        slug: &str,
        spec: &MemberSpec,
        defaults: &MemberSpec,
        own: Origin,
        setup_origin: Origin,
    ) {
        let mut at = Vec::new();
        for (origin, map) in [(own, spec), (Origin::Defaults, defaults)] {
            if map.env.as_ref().is_some_and(|e| !e.is_empty()) {
                at.push(origin.pointer("/env"));
            }
            if map.pass_env.as_ref().is_some_and(|e| !e.is_empty()) {
                at.push(origin.pointer("/pass_env"));
            }
        }
        let steps = match setup_origin {
            Origin::Member(_) => &spec.setup,
            Origin::Defaults => &defaults.setup,
        };
        for (k, step) in steps.iter().flatten().enumerate() {
            if let SetupStep::Full(full) = step
                && full.env.as_ref().is_some_and(|e| !e.is_empty())
            {
                at.push(setup_origin.pointer(&format!("/setup/{k}/env")));
            }
        }
        for pointer in at {
            self.out.push(
                Diagnostic::error(
                    "unsupported-option",
                    self.key(&pointer),
                    format!("member `{slug}`: env forwarding is unsupported for provider=blacksmith-testbox"),
                )
                .with_hint("configure secrets in the provider workflow or use an SSH-backed provider"),
            );
        }
    }

    fn setup(&mut self, steps: &[SetupStep], origin: Origin) -> Vec<Step> {
        steps
            .iter()
            .enumerate()
            .map(|(k, step)| match step {
                SetupStep::Command(run) => Step {
                    run: run.clone(),
                    background: false,
                    timeout: None,
                    env: BTreeMap::new(),
                },
                SetupStep::Full(full) => {
                    let base = origin.pointer(&format!("/setup/{k}"));
                    let timeout = full
                        .timeout
                        .as_ref()
                        .and_then(|t| self.duration(t, &format!("{base}/timeout")));
                    let env = full
                        .env
                        .as_ref()
                        .map(|e| self.env(e, &format!("{base}/env")))
                        .unwrap_or_default();
                    Step {
                        run: full.run.clone(),
                        background: full.background.unwrap_or(false),
                        timeout,
                        env,
                    }
                }
            })
            .collect()
    }

    fn ready(&mut self, r: &Ready, origin: Origin) -> Option<ReadyCheck> {
        let base = origin.pointer("/ready");
        let interval = r
            .interval
            .as_ref()
            .map_or(Some(DEFAULT_READY_INTERVAL), |t| {
                self.duration(t, &format!("{base}/interval"))
            });
        let timeout = r.timeout.as_ref().map_or(Some(DEFAULT_READY_TIMEOUT), |t| {
            self.duration(t, &format!("{base}/timeout"))
        });
        let probes = [r.tcp.is_some(), r.http.is_some(), r.command.is_some()]
            .iter()
            .filter(|p| **p)
            .count();
        let tailnet = r.tailnet.unwrap_or(false);
        if probes > 1 || (probes == 0 && !tailnet) {
            self.out.push(
                Diagnostic::error("ready-probe", self.value(&base), format!("`ready` needs exactly one of `tcp`, `http`, `command` (or `tailnet: true` alone); found {probes}"))
                    .with_hint("e.g. ready: { tcp: 5432 } or ready: { http: \"http://127.0.0.1:8080/health\" }"),
            );
            return None;
        }
        let probe = if probes == 0 {
            None
        } else if let Some(tcp) = &r.tcp {
            let at = self.value(&format!("{base}/tcp"));
            let (host, port) = match tcp {
                TcpTarget::Port(p) => (None, *p),
                TcpTarget::Address(a) => {
                    match a.rsplit_once(':').map(|(h, p)| (h, p.parse::<i64>())) {
                        Some((h, Ok(p))) if !h.is_empty() => (Some(h.to_owned()), p),
                        _ => {
                            self.out.push(
                            Diagnostic::error("invalid-port", at, format!("`{a}` is not a port or host:port"))
                                .with_hint("write `tcp: 5432` for the member's own address or `tcp: db.example:5432`"),
                        );
                            return None;
                        }
                    }
                }
            };
            let Ok(port) = u16::try_from(port)
                .map_err(drop)
                .and_then(|p| if p == 0 { Err(()) } else { Ok(p) })
            else {
                self.out.push(
                    Diagnostic::error("port-range", at, format!("port {port} is outside 1..65535"))
                        .with_hint("ports are between 1 and 65535"),
                );
                return None;
            };
            Some(Probe::Tcp { host, port })
        } else if let Some(url) = &r.http {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                self.out.push(
                    Diagnostic::error(
                        "invalid-url",
                        self.value(&format!("{base}/http")),
                        format!("`{url}` is not an http:// or https:// URL"),
                    )
                    .with_hint("e.g. http://127.0.0.1:8080/health"),
                );
                return None;
            }
            Some(Probe::Http(url.clone()))
        } else {
            Some(Probe::Command(r.command.clone().unwrap_or_default()))
        };
        Some(ReadyCheck {
            probe,
            tailnet,
            interval: interval?,
            timeout: timeout?,
        })
    }

    fn blocks(
        &mut self,
        i: usize,
        slug: &str,
        provider: ProviderName,
        own: &ProviderBlocks,
        defaults: &ProviderBlocks,
    ) -> Option<serde_json::Value> {
        for other in own.present() {
            if other != provider {
                self.out.push(
                    Diagnostic::error(
                        "provider-block-mismatch",
                        self.key(&format!("/members/{i}/{other}")),
                        format!("member `{slug}` runs on `{provider}` but has a block for `{other}`"),
                    )
                    .with_hint(format!("set `provider: {other}` on this member, or remove the block (`defaults` may hold blocks for several providers)")),
                );
            }
        }
        let merged = own.merged_over(defaults).only(provider);
        // Where a block key is written: on the member or in defaults, in its
        // camelCase or snake_case spelling.
        let origin_of = |key: &str| {
            let spellings = [key.to_owned(), crate::providers::snake_case(key)];
            ["/members/{i}", "/defaults"]
                .iter()
                .map(|base| base.replace("{i}", &i.to_string()))
                .flat_map(|base| {
                    spellings
                        .iter()
                        .map(move |k| format!("{base}/{provider}/{k}"))
                })
                .find(|pointer| self.index.get(pointer).is_some())
                .unwrap_or_else(|| format!("/members/{i}/{provider}"))
        };
        for problem in merged.problems(provider) {
            self.out.push(
                Diagnostic::error(
                    problem.code,
                    self.value(&origin_of(&problem.field)),
                    problem.message,
                )
                .with_hint(problem.hint),
            );
        }
        match provider {
            ProviderName::Ssh
                if merged
                    .ssh
                    .as_ref()
                    .and_then(|b| b.host.as_deref())
                    .is_none_or(str::is_empty) =>
            {
                self.out.push(
                        Diagnostic::error("ssh-host-required", self.value(&format!("/members/{i}/provider")), format!("member `{slug}` uses provider `ssh` but no `ssh.host` is set"))
                            .with_hint("add `ssh: { host: build.example.com, user: crabbox }` to the member or to defaults"),
                    );
            }
            ProviderName::Local => {
                if let Some(addr) = merged.local.as_ref().and_then(|b| b.bind_addr.as_deref()) {
                    let loopback = addr
                        .parse::<std::net::Ipv4Addr>()
                        .is_ok_and(|a| a.octets()[0] == 127);
                    if !loopback {
                        self.out.push(
                            Diagnostic::error(
                                "invalid-bind-addr",
                                self.value(&origin_of("bind_addr")),
                                format!("`{addr}` is not an IPv4 loopback address"),
                            )
                            .with_hint("local leases bind inside 127.0.0.0/8, e.g. 127.77.0.10"),
                        );
                    }
                }
            }
            _ => {}
        }
        merged.to_json(provider)
    }

    /// Checks the `{{peers.…}}` references written in one map's `env` and
    /// setup steps (see [`peer_refs`]).
    fn peer_references(
        &mut self,
        map: &MemberSpec,
        origin: Origin,
        peers: &peer_refs::Targets<'_>,
        file: &SourceFile,
    ) {
        let env_values = |env: &Option<BTreeMap<String, EnvValue>>, base: String| {
            env.iter()
                .flatten()
                .filter_map(move |(name, value)| match value {
                    EnvValue::Text(text) => Some((
                        format!("{base}/{}", crate::yaml::escape_token(name)),
                        text.clone(),
                    )),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        let mut values = env_values(&map.env, origin.pointer("/env"));
        for (k, step) in map.setup.iter().flatten().enumerate() {
            let base = origin.pointer(&format!("/setup/{k}"));
            match step {
                SetupStep::Command(run) => {
                    peer_refs::check_command(run, &base, self.index, file, self.out);
                }
                SetupStep::Full(full) => {
                    peer_refs::check_command(
                        &full.run,
                        &format!("{base}/run"),
                        self.index,
                        file,
                        self.out,
                    );
                    values.extend(env_values(&full.env, format!("{base}/env")));
                }
            }
        }
        for (pointer, text) in values {
            peer_refs::check_env_value(&text, &pointer, peers, self.index, file, self.out);
        }
    }

    /// Reports each dependency cycle once, as `a -> b -> a`. Depth-first
    /// with an explicit stack: a dependency chain as long as the input is
    /// deep must not overflow the call stack.
    fn cycles(
        &mut self,
        resolved: &[DesiredMember],
        members: &[(usize, String, &MemberSpec, &Vec<String>)],
    ) {
        let edges: HashMap<&str, Vec<&str>> = resolved
            .iter()
            .map(|m| {
                (
                    m.slug.as_str(),
                    m.depends_on.iter().map(|(d, _)| d.as_str()).collect(),
                )
            })
            .collect();
        let index_of: HashMap<&str, usize> = members
            .iter()
            .map(|(i, s, _, _)| (s.as_str(), *i))
            .collect();
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            OnPath,
            Done,
        }
        let mut marks: HashMap<&str, Mark> = HashMap::new();
        let mut reported: HashSet<Vec<&str>> = HashSet::new();
        for m in resolved {
            if marks.contains_key(m.slug.as_str()) {
                continue;
            }
            // The current path, each node with the index of its next edge.
            let mut path: Vec<(&str, usize)> = vec![(m.slug.as_str(), 0)];
            let mut on_path: HashMap<&str, usize> = HashMap::from([(m.slug.as_str(), 0)]);
            marks.insert(m.slug.as_str(), Mark::OnPath);
            while let Some(&mut (node, ref mut next)) = path.last_mut() {
                let Some(&dep) = edges.get(node).and_then(|e| e.get(*next)) else {
                    marks.insert(node, Mark::Done);
                    on_path.remove(node);
                    path.pop();
                    continue;
                };
                *next += 1;
                match marks.get(dep) {
                    Some(Mark::Done) => {}
                    Some(Mark::OnPath) => {
                        let start = on_path.get(dep).copied().unwrap_or(0);
                        let cycle: Vec<&str> = path[start..].iter().map(|(n, _)| *n).collect();
                        let mut key = cycle.clone();
                        key.sort_unstable();
                        if reported.insert(key) {
                            self.report_cycle(&cycle, &index_of);
                        }
                    }
                    None => {
                        marks.insert(dep, Mark::OnPath);
                        on_path.insert(dep, path.len());
                        path.push((dep, 0));
                    }
                }
            }
        }
    }

    fn report_cycle(&mut self, cycle: &[&str], index_of: &HashMap<&str, usize>) {
        let first = cycle[0];
        let at = index_of.get(first).map_or(Span::default(), |i| {
            self.key(&format!("/members/{i}/depends_on"))
        });
        let mut text = cycle.join(" -> ");
        text.push_str(" -> ");
        text.push_str(first);
        self.out.push(
            Diagnostic::error("dependency-cycle", at, format!("dependency cycle: {text}"))
                .with_hint("remove one of the `depends_on` entries in the cycle"),
        );
    }
}

/// Why members of `provider` cannot be enrolled in a tailnet (`None`:
/// they can — the SSH-lease clouds, whose cloud-init joins them, as
/// Crabbox's direct providers do).
#[must_use]
pub fn cannot_join_tailnet(provider: ProviderName) -> Option<&'static str> {
    match provider {
        ProviderName::Hetzner | ProviderName::Aws | ProviderName::Azure | ProviderName::Gcp => None,
        ProviderName::Local => {
            Some("a local member runs on this machine, which is on a tailnet or not by itself")
        }
        ProviderName::Ssh => Some(
            "crabbox provisions no static host; set `ssh.host` to its MagicDNS name or 100.x address instead",
        ),
        ProviderName::BlacksmithTestbox => Some("Blacksmith owns the machine's connectivity"),
        ProviderName::Islo => {
            Some("Islo sandboxes reach a tailnet outbound only (egress proxy), never as a peer")
        }
        ProviderName::Tensorlake
        | ProviderName::Daytona
        | ProviderName::E2b
        | ProviderName::Modal => {
            Some("its sandboxes have no boot-time bootstrap to run `tailscale up` in")
        }
    }
}
