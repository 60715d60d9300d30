//! `crabbox init`: a commented pond.yaml to start from, written from flags
//! or from three questions on a terminal, that `crabbox validate` accepts
//! as written. Without flags and without a terminal (a script, CI) it
//! writes the defaults the questions offer, as `cargo init` needs no input.
//! An existing file is never replaced without `--force`.

use std::fmt::Write as _;
use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use super::exit::{self, USAGE};
use crabbox_core::normalize::{NameProblem, checked_name};
use crabbox_core::provider::ProviderName;
use crabbox_providers::registry::{adapter_names, descriptor};

/// Where the schema line points unless `--schema` says otherwise: a file
/// beside pond.yaml that `crabbox schema` writes.
const DEFAULT_SCHEMA: &str = "pond.schema.json";
/// The member written when none is named.
const DEFAULT_MEMBER: &str = "app";
/// The pond name when the directory's name is no usable one.
const FALLBACK_POND: &str = "my-pond";

#[derive(Debug, Args)]
pub(super) struct InitArgs {
    /// Where to write the spec; `-` prints it on stdout.
    #[arg(
        short = 'f',
        long = "file",
        value_name = "FILE",
        default_value = "pond.yaml"
    )]
    file: PathBuf,
    /// The pond's name (default: the name of the directory the file goes into).
    #[arg(long, value_name = "NAME")]
    pond: Option<String>,
    /// The provider members run on unless they name their own (default: local, this machine).
    #[arg(long, value_name = "NAME", value_parser = parse_adapter)]
    provider: Option<ProviderName>,
    /// A member: its slug, optionally with its own provider (`db=hetzner`). Repeatable;
    /// default: one member `app`.
    #[arg(long = "member", value_name = "SLUG[=PROVIDER]", value_parser = parse_member)]
    members: Vec<Member>,
    /// The `$schema` of the yaml-language-server line: a path relative to the
    /// file, or a URL.
    #[arg(long, value_name = "PATH|URL", default_value = DEFAULT_SCHEMA)]
    schema: String,
    /// Replace an existing file.
    #[arg(long)]
    force: bool,
}

/// One `--member`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    slug: String,
    provider: Option<ProviderName>,
}

/// A provider this build has an adapter for (what `validate` accepts).
fn parse_adapter(s: &str) -> Result<ProviderName, String> {
    ProviderName::from_cli_name(s.trim())
        .filter(|p| descriptor(*p).is_some())
        .ok_or_else(|| {
            format!(
                "`{s}` is not a provider this build runs (one of: {})",
                adapter_list()
            )
        })
}

fn adapter_list() -> String {
    adapter_names()
        .iter()
        .map(|p| p.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A pond name or slug as Crabbox normalizes it.
fn parse_name(what: &str, s: &str) -> Result<String, String> {
    checked_name(s).map_err(|problem| match problem {
        NameProblem::Empty => format!("`{s}` is no usable {what}: it needs a letter or digit"),
        NameProblem::TooLong(n) => {
            format!("`{s}` is no usable {what}: {n} characters, at most 41")
        }
    })
}

/// `SLUG` or `SLUG=PROVIDER`.
fn parse_member(s: &str) -> Result<Member, String> {
    let (slug, provider) = match s.split_once('=') {
        Some((slug, provider)) => (slug, Some(parse_adapter(provider)?)),
        None => (s, None),
    };
    Ok(Member {
        slug: parse_name("slug", slug)?,
        provider,
    })
}

/// What the file is made from.
struct Answers {
    pond: String,
    provider: ProviderName,
    members: Vec<Member>,
}

/// `init`: answers from flags, a terminal or the defaults; then the file.
pub(super) fn init(args: &InitArgs) -> ExitCode {
    let to_stdout = args.file.as_os_str() == "-";
    if !to_stdout && !args.force && args.file.symlink_metadata().is_ok() {
        anstream::eprintln!(
            "error: {} already exists; crabbox init does not replace it\n  help: `crabbox validate -f {}` checks it; pass --force to replace it, or -f OTHER.yaml to write another file",
            args.file.display(),
            args.file.display()
        );
        return exit::code(USAGE);
    }
    let default_pond = default_pond(&args.file, to_stdout);
    let pond = match args.pond.as_deref().map(|p| parse_name("pond name", p)) {
        Some(Err(e)) => {
            anstream::eprintln!("error: {e}");
            return exit::code(USAGE);
        }
        Some(Ok(p)) => Some(p),
        None => None,
    };
    let flags_given = pond.is_some() || args.provider.is_some() || !args.members.is_empty();
    let answers = if !flags_given && std::io::stdin().is_terminal() {
        match ask(&default_pond) {
            Some(a) => a,
            None => {
                anstream::eprintln!("error: no answer (end of input); nothing written");
                return exit::code(USAGE);
            }
        }
    } else {
        Answers {
            pond: pond.unwrap_or(default_pond),
            provider: args.provider.unwrap_or(ProviderName::Local),
            members: if args.members.is_empty() {
                vec![Member {
                    slug: DEFAULT_MEMBER.to_owned(),
                    provider: None,
                }]
            } else {
                args.members.clone()
            },
        }
    };
    let mut seen = std::collections::BTreeSet::new();
    if let Some(dup) = answers.members.iter().find(|m| !seen.insert(&m.slug)) {
        anstream::eprintln!(
            "error: member `{}` is named twice\n  help: every slug in a pond is unique",
            dup.slug
        );
        return exit::code(USAGE);
    }
    let text = render(&answers, &args.schema);
    if to_stdout {
        print!("{text}");
        return ExitCode::SUCCESS;
    }
    if let Err(e) = write(&args.file, &text, args.force) {
        anstream::eprintln!("error: writing {}: {e}", args.file.display());
        return exit::code(1);
    }
    anstream::eprintln!(
        "wrote {} (pond {}, {} member{}); next: `crabbox validate -f {0}`, then `crabbox plan -f {0}`",
        args.file.display(),
        answers.pond,
        answers.members.len(),
        if answers.members.len() == 1 { "" } else { "s" }
    );
    if args.schema == DEFAULT_SCHEMA {
        anstream::eprintln!(
            "editors: `crabbox schema > {}` writes the schema its first line names",
            args.file
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map_or_else(
                    || DEFAULT_SCHEMA.to_owned(),
                    |p| p.join(DEFAULT_SCHEMA).display().to_string()
                )
        );
    }
    ExitCode::SUCCESS
}

/// Writes `text` to `path`; without `force`, only as a new file (so a file
/// that appeared since the check is not replaced either).
fn write(path: &Path, text: &str, force: bool) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

/// The name of the directory `file` goes into, as a pond name.
fn default_pond(file: &Path, to_stdout: bool) -> String {
    let dir = if to_stdout {
        std::env::current_dir().ok()
    } else {
        std::path::absolute(file)
            .ok()
            .and_then(|f| f.parent().map(Path::to_path_buf))
    };
    dir.as_deref()
        .and_then(Path::file_name)
        .and_then(|n| checked_name(&n.to_string_lossy()).ok())
        .unwrap_or_else(|| FALLBACK_POND.to_owned())
}

/// The three questions, on stderr, answered on stdin; each asked again
/// after an unusable answer. `None` at the end of input.
fn ask(default_pond: &str) -> Option<Answers> {
    let providers = adapter_list();
    let pond = question(&format!("Pond name [{default_pond}]: "), |s| {
        if s.is_empty() {
            Ok(default_pond.to_owned())
        } else {
            parse_name("pond name", s)
        }
    })?;
    let provider = question(
        &format!(
            "Provider ({providers}) [{}]: ",
            ProviderName::Local.as_str()
        ),
        |s| {
            if s.is_empty() {
                Ok(ProviderName::Local)
            } else {
                parse_adapter(s)
            }
        },
    )?;
    let members = question(
        &format!("Members, comma-separated, SLUG or SLUG=PROVIDER [{DEFAULT_MEMBER}]: "),
        |s| {
            let s = if s.is_empty() { DEFAULT_MEMBER } else { s };
            s.split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(parse_member)
                .collect()
        },
    )?;
    Some(Answers {
        pond,
        provider,
        members,
    })
}

/// Asks `prompt` until `parse` accepts the (trimmed) answer.
fn question<T>(prompt: &str, parse: impl Fn(&str) -> Result<T, String>) -> Option<T> {
    let stdin = std::io::stdin();
    loop {
        anstream::eprint!("{prompt}");
        let mut line = String::new();
        match stdin.lock().read_line(&mut line) {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        match parse(line.trim()) {
            Ok(value) => return Some(value),
            Err(e) => anstream::eprintln!("  {e}"),
        }
    }
}

/// What a provider is, and what it needs, as comment lines.
fn provider_note(p: ProviderName) -> String {
    let what = match p {
        ProviderName::Local => {
            "processes on this machine, each member on its own loopback address ($CRABBOX_BIND_ADDR); no account needed"
        }
        ProviderName::Ssh => {
            "an existing machine reached with OpenSSH; crabbox never creates or deletes it"
        }
        ProviderName::Hetzner => "Hetzner Cloud servers, reached over SSH",
        ProviderName::Islo => "Islo sandboxes",
        ProviderName::Tensorlake => {
            "Tensorlake sandboxes (through the tensorlake CLI); no `expose`"
        }
        _ => "",
    };
    let mut note = format!("# {}: {what}", p.as_str());
    if let Some(creds) = descriptor(p).and_then(|d| d.credentials) {
        let _ = write!(note, "; needs {creds}");
    }
    note.push('\n');
    note
}

/// The spec. Every member gets one setup step; the other keys are explained
/// in comments, most of them as commented-out examples.
fn render(a: &Answers, schema: &str) -> String {
    let mut used: Vec<ProviderName> = vec![a.provider];
    for p in a.members.iter().filter_map(|m| m.provider) {
        if !used.contains(&p) {
            used.push(p);
        }
    }
    let mut out = format!(
        "# yaml-language-server: $schema={schema}\n\
         #\n\
         # A pond: machines (\"members\") that share the label pond=<name>, set up in\n\
         # dependency order and told where their peers are.\n\
         #   crabbox validate    checks this file (every problem at once)\n\
         #   crabbox plan        shows what would change on the providers\n\
         #   crabbox apply       makes it so; crabbox destroy releases everything\n\
         #   crabbox run --id SLUG -- CMD    runs a command on a member\n\
         #   crabbox logs --id SLUG          its setup output (--service NAME, --follow)\n\
         version: 1\n\
         # The pond's name. ${{VAR}} and ${{VAR:-default}} are read from the environment\n\
         # (or --var VAR=value), e.g. `pond: pr-${{PR_NUMBER}}` for one pond per pull request.\n\
         pond: {pond}\n\
         # Settings every member gets unless it sets its own.\n\
         defaults:\n\
         \x20 # Where members run ({providers}).\n",
        pond = a.pond,
        providers = adapter_list(),
    );
    for p in &used {
        let _ = write!(out, "  {}", provider_note(*p));
    }
    let _ = write!(
        out,
        "  provider: {provider}\n\
         \x20 # How long a lease lives at most, and after how long unused it may be\n\
         \x20 # released (crabbox cleanup); keep: true exempts it from cleanup.\n\
         \x20 ttl: 90m\n\
         \x20 idle_timeout: 30m\n\
         \x20 # The repository (this directory, minus what git ignores) is copied into each\n\
         \x20 # member's workspace before setup; `sync: false` turns that off,\n\
         \x20 # `sync: {{ exclude: [\"*.log\"] }}` leaves files out.\n\
         \x20 # sync: false\n\
         members:\n",
        provider = a.provider.as_str(),
    );
    for (i, m) in a.members.iter().enumerate() {
        let provider = m.provider.unwrap_or(a.provider);
        let _ = writeln!(out, "  - slug: {}", m.slug);
        match m.provider {
            Some(p) => {
                let _ = writeln!(out, "    provider: {}", p.as_str());
            }
            None if i == 0 => {
                out.push_str(
                    "    # provider: hetzner   # a member's own provider wins over the default\n",
                );
            }
            None => {}
        }
        if provider == ProviderName::Ssh {
            out.push_str(
                "    ssh:\n\
                 \x20     # The machine: replace localhost with its host name or address.\n\
                 \x20     host: localhost\n\
                 \x20     # user: deploy\n\
                 \x20     # port: 22\n",
            );
        }
        if provider == ProviderName::BlacksmithTestbox {
            out.push_str(
                "    blacksmith-testbox:\n\
                 \x20     # The GitHub Actions workflow a Testbox is warmed up from (required).\n\
                 \x20     workflow: .github/workflows/testbox.yml\n",
            );
        }
        if i == 0 {
            member_comments(&mut out, provider);
        }
        let _ = write!(
            out,
            "    setup:\n\
             \x20     - echo \"$CRABBOX_SLUG is up in pond $CRABBOX_POND\"\n"
        );
        if let Some(prev) = a.members.get(i.wrapping_sub(1)).filter(|_| i > 0) {
            let _ = writeln!(out, "    # depends_on: [{}]", prev.slug);
        }
    }
    out
}

/// The explained keys, under the first member.
fn member_comments(out: &mut String, provider: ProviderName) {
    // Providers peers cannot reach get no `expose` hint.
    if crabbox_core::provider::features_of(provider).reachable_ports() {
        out.push_str(
            "    # Ports the other members may connect to; they find this member through\n\
             \x20   # {{peers.SLUG.host}} in env, and CRABBOX_POND_<SLUG>_<PORT> variables.\n\
             \x20   # expose: [8080]\n",
        );
    }
    out.push_str(
        "    # Members whose setup must be done (or, with `ready:`, who must answer) before\n\
         \x20   # this one's setup starts: depends_on: [db], or { db: ready, seed: completed }.\n\
         \x20   # depends_on: [db]\n\
         \x20   # Environment of every command run here; peers' addresses resolve at run time.\n\
         \x20   # env: { DB_URL: \"postgres://{{peers.db.host}}:5432/app\" }\n\
         \x20   # When the member counts as ready: { tcp: 8080 }, { http: URL } or\n\
         \x20   # { command: CMD }, with interval and timeout; default: when setup is done.\n\
         \x20   # ready: { tcp: 8080, timeout: 2m }\n\
         \x20   # Commands run in order in the member's workspace after the sync; a step\n\
         \x20   # with `background: true` keeps running as service setup-<step number>\n\
         \x20   # (crabbox logs --id SLUG --service setup-2).\n",
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crabbox_providers::registry::ADAPTERS;
    use crabbox_spec::interpolate::Variables;
    use crabbox_spec::load::load_str;

    /// The spec for every provider this build runs, alone and mixed, loads
    /// without a diagnostic.
    #[test]
    fn every_provider_s_spec_validates() {
        for d in ADAPTERS {
            let answers = Answers {
                pond: "demo".into(),
                provider: d.name,
                members: vec![
                    Member {
                        slug: "db".into(),
                        provider: None,
                    },
                    Member {
                        slug: "api".into(),
                        provider: Some(ProviderName::Local),
                    },
                    Member {
                        slug: "remote".into(),
                        provider: Some(ProviderName::Ssh),
                    },
                ],
            };
            let text = render(&answers, DEFAULT_SCHEMA);
            let loaded = load_str(
                "pond.yaml",
                &text,
                Path::new("."),
                &Variables::from_env(Vec::new()),
            );
            assert!(
                loaded.diagnostics.is_empty(),
                "{}:\n{text}\n{:?}",
                d.name.as_str(),
                loaded.diagnostics
            );
        }
    }

    #[test]
    fn members_parse_with_and_without_provider() {
        assert_eq!(
            parse_member("DB=hetzner"),
            Ok(Member {
                slug: "db".into(),
                provider: Some(ProviderName::Hetzner)
            })
        );
        assert_eq!(
            parse_member("api"),
            Ok(Member {
                slug: "api".into(),
                provider: None
            })
        );
        assert!(parse_member("db=digitalocean").is_err_and(|e| e.contains("one of: local")));
        assert!(parse_member("=local").is_err());
    }
}
