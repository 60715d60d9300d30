//! The files rendered from a pond's peers into `outputs.dir` (docs/design.md#outputs):
//! `peers.json`, `hosts`, `env` and user handlebars templates; writing them
//! atomically (0600, directory 0700) and the unified diffs `plan` shows.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Component, Path};

use handlebars::{
    Context, Handlebars, Helper, HelperResult, JsonRender as _, Output, RenderContext,
    RenderErrorReason,
};
use serde::Serialize;
use serde_json::{Map, Value, json};

use crabbox_core::labels;

use crate::bridge::BridgePeer;
use crate::peers::{Peer, peer_env};

/// Name of the Crabbox-shaped peer list.
pub const PEERS_JSON: &str = "peers.json";
/// Name of the hosts-format file.
pub const HOSTS: &str = "hosts";
/// Name of the shell file of `export` lines.
pub const ENV: &str = "env";

/// One rendered file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputFile {
    /// Path relative to the output directory.
    pub name: String,
    /// Its contents.
    pub contents: String,
}

/// `{"members":[…]}`, Crabbox's `pond peers --json` shape, pretty-printed
/// with a trailing newline.
///
/// # Panics
/// Never: peers always serialize.
#[must_use]
pub fn peers_json(peers: &[Peer]) -> String {
    document(
        peers
            .iter()
            .map(|p| Member::of(&p.crabbox, false))
            .collect(),
    )
}

/// The `peers.json` output file: [`peers_json`] without the labels every
/// touch rewrites (`last_touched_at`, `expires_at`). The file describes who
/// the members are and how to reach them; with those two labels in it,
/// every apply would rewrite it (and `plan` would never be clean) although
/// nothing a member reads had changed. `pond peers --json` shows them.
#[must_use]
pub fn peers_file(peers: &[Peer]) -> String {
    document(peers.iter().map(|p| Member::of(&p.crabbox, true)).collect())
}

/// The touch labels `peers.json` leaves out.
const TOUCH_LABELS: [&str; 2] = [labels::LAST_TOUCHED_AT, labels::EXPIRES_AT];

/// A [`BridgePeer`] as written, borrowed: keys, order and `omitempty` as
/// its own serialization. A copy of each peer (with every label) only to
/// drop two labels was a fifth copy of the pond's labels at a plan's peak.
#[derive(Serialize)]
struct Member<'a> {
    slug: &'a str,
    #[serde(rename = "leaseID")]
    lease_id: &'a str,
    provider: &'a str,
    pond: &'a str,
    transport: &'a str,
    #[serde(skip_serializing_if = "<[&str]>::is_empty")]
    transports: &'a [&'static str],
    endpoint: &'a str,
    #[serde(skip_serializing_if = "MemberLabels::is_empty")]
    labels: MemberLabels<'a>,
    #[serde(skip_serializing_if = "str::is_empty")]
    note: &'a str,
    #[serde(skip_serializing_if = "<[crate::bridge::BridgeTarget]>::is_empty")]
    targets: &'a [crate::bridge::BridgeTarget],
    #[serde(rename = "bridgeState", skip_serializing_if = "str::is_empty")]
    bridge_state: &'a str,
}

impl<'a> Member<'a> {
    fn of(p: &'a BridgePeer, untouched: bool) -> Self {
        Self {
            slug: &p.slug,
            lease_id: &p.lease_id,
            provider: p.provider,
            pond: &p.pond,
            transport: p.transport,
            transports: &p.transports,
            endpoint: &p.endpoint,
            labels: MemberLabels {
                labels: &p.labels,
                untouched,
            },
            note: &p.note,
            targets: &p.targets,
            bridge_state: &p.bridge_state,
        }
    }
}

/// A peer's labels, without [`TOUCH_LABELS`] when `untouched`.
struct MemberLabels<'a> {
    labels: &'a labels::Labels,
    untouched: bool,
}

impl MemberLabels<'_> {
    fn iter(&self) -> impl Iterator<Item = (&labels::LabelText, &labels::LabelText)> {
        self.labels
            .iter()
            .filter(|(k, _)| !(self.untouched && TOUCH_LABELS.contains(&k.as_str())))
    }

    fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }
}

impl Serialize for MemberLabels<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

fn document(mut members: Vec<Member<'_>>) -> String {
    #[derive(Serialize)]
    struct Doc<'a> {
        members: Vec<Member<'a>>,
    }
    // Crabbox's order, by its (possibly empty) slug, then lease ID.
    members.sort_by(|a, b| a.slug.cmp(b.slug).then_with(|| a.lease_id.cmp(b.lease_id)));
    // Room for the whole document at once, about what a member with its
    // labels takes written out: grown by doublings, the 10 MiB of a
    // 10,000-member pond were copied four times over.
    let room: usize = members
        .iter()
        .map(|m| 256 + 48 * m.labels.labels.len())
        .sum();
    let mut text = Vec::with_capacity(room);
    serde_json::to_writer_pretty(&mut text, &Doc { members }).expect("peers serialize");
    text.push(b'\n');
    // serde_json writes UTF-8 only.
    String::from_utf8(text).expect("JSON is UTF-8")
}

/// A hosts file: two `#` header lines, then `<address>  <slug>.cbx` for each
/// peer with an address. Host names (not IP addresses) cannot appear in a
/// hosts file; they are listed as comments.
#[must_use]
pub fn hosts(peers: &[Peer]) -> String {
    let mut text = String::from(
        "# crabbox pond members: <address>  <slug>.cbx — generated, rewritten on every apply\n\
         # append to /etc/hosts (or merge) to reach members by name\n",
    );
    for peer in peers {
        let Some(host) = &peer.host else { continue };
        if host.parse::<IpAddr>().is_ok() {
            let _ = writeln!(text, "{host}  {}.cbx", peer.slug);
        } else {
            let _ = writeln!(
                text,
                "# {}.cbx is {host} (a host name, not an address)",
                peer.slug
            );
        }
    }
    text
}

/// A shell file: the header `# crabbox pond <pond> — source this file`, then
/// `export K=V` for each of [`peer_env`], values single-quoted when they hold
/// anything outside `[A-Za-z0-9_.:/-]`.
#[must_use]
pub fn env_file(pond: &str, peers: &[Peer]) -> String {
    let env = peer_env(pond, peers);
    let mut text = String::with_capacity(
        64 + env
            .iter()
            .map(|(k, v)| k.len() + v.len() + 10)
            .sum::<usize>(),
    );
    let _ = writeln!(text, "# crabbox pond {pond} — source this file");
    for (key, value) in &env {
        text.push_str("export ");
        text.push_str(key);
        text.push('=');
        push_shell_word(&mut text, value);
        text.push('\n');
    }
    text
}

/// Appends `value` as one shell word: as is when made only of
/// `[A-Za-z0-9_.:/-]`, else in single quotes.
fn push_shell_word(text: &mut String, value: &str) {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '/' | '-');
    if !value.is_empty() && value.chars().all(plain) {
        text.push_str(value);
    } else {
        text.push('\'');
        text.push_str(&value.replace('\'', r"'\''"));
        text.push('\'');
    }
}

/// One peer as templates see it.
fn peer_value(peer: &Peer) -> Value {
    json!({
        "slug": peer.slug,
        "leaseID": peer.lease_id,
        "provider": peer.provider.as_str(),
        "transport": peer.transport,
        "transports": peer.transports,
        "endpoint": peer.endpoint,
        "host": peer.host,
        "ports": peer.ports,
    })
}

/// The data templates are rendered with: `pond`, `members` (a list of
/// `{slug, leaseID, provider, transport, transports, endpoint, host, ports}`,
/// `host` null when unknown) and `peers` (the same objects by slug; the first
/// peer wins when two share a slug).
#[must_use]
pub fn template_data(pond: &str, peers: &[Peer]) -> Value {
    let members: Vec<Value> = peers.iter().map(peer_value).collect();
    let mut by_slug = Map::new();
    for (peer, value) in peers.iter().zip(&members) {
        by_slug
            .entry(peer.slug.clone())
            .or_insert_with(|| value.clone());
    }
    json!({ "pond": pond, "members": members, "peers": by_slug })
}

/// The `upper` helper: its argument, uppercased.
fn upper(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    _: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    let param = h
        .param(0)
        .ok_or(RenderErrorReason::ParamNotFoundForIndex("upper", 0))?;
    if param.is_value_missing() {
        let path = param
            .relative_path()
            .map_or_else(String::new, |p| format!(" `{p}`"));
        return Err(RenderErrorReason::Other(format!("upper: no value{path}")).into());
    }
    out.write(&param.value().render().to_uppercase())?;
    Ok(())
}

/// Renders a handlebars `template` named `name` with [`template_data`]:
/// strict mode (a missing value is an error), no HTML escaping, and the
/// helper `upper`.
///
/// # Errors
/// A syntax error or a render error, naming the template; handlebars' text
/// gives the line and column.
pub fn render_template(
    name: &str,
    template: &str,
    pond: &str,
    peers: &[Peer],
) -> Result<String, String> {
    let mut registry = Handlebars::new();
    registry.set_strict_mode(true);
    registry.register_escape_fn(handlebars::no_escape);
    registry.register_helper("upper", Box::new(upper));
    registry
        .register_template_string(name, template)
        .map_err(|e| template_error(name, e.pos(), &e.reason().to_string()))?;
    registry
        .render(name, &template_data(pond, peers))
        .map_err(|e| template_error(name, e.line_no.zip(e.column_no), &e.reason().to_string()))
}

/// `template `name`, line L, col C: reason`.
fn template_error(name: &str, pos: Option<(usize, usize)>, reason: &str) -> String {
    match pos {
        Some((line, col)) => format!("template `{name}`, line {line}, col {col}: {reason}"),
        None => format!("template `{name}`: {reason}"),
    }
}

/// Checks that a template destination stays inside the output directory.
fn check_name(name: &str) -> Result<(), String> {
    let path = Path::new(name);
    if name.is_empty() || !path.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(format!(
            "output `{name}`: must be a relative path inside the output directory (no `/` at the start, no `.` or `..`)"
        ));
    }
    Ok(())
}

/// Every output file: `peers.json`, `hosts`, `env`, then each template
/// `(destination, text)` rendered to its destination.
///
/// # Errors
/// Every template that fails to render, and every destination that leaves
/// the output directory or repeats another file's name, one per line.
pub fn output_files(
    pond: &str,
    peers: &[Peer],
    templates: &[(String, String)],
) -> Result<Vec<OutputFile>, String> {
    let mut files = vec![
        OutputFile {
            name: PEERS_JSON.to_owned(),
            contents: peers_file(peers),
        },
        OutputFile {
            name: HOSTS.to_owned(),
            contents: hosts(peers),
        },
        OutputFile {
            name: ENV.to_owned(),
            contents: env_file(pond, peers),
        },
    ];
    let mut errors = Vec::new();
    for (dest, text) in templates {
        if let Err(e) = check_name(dest) {
            errors.push(e);
        } else if files.iter().any(|f| f.name == *dest) {
            errors.push(format!(
                "output `{dest}`: written twice (built-in outputs: {PEERS_JSON}, {HOSTS}, {ENV})"
            ));
        } else {
            match render_template(dest, text, pond, peers) {
                Ok(contents) => files.push(OutputFile {
                    name: dest.clone(),
                    contents,
                }),
                Err(e) => errors.push(e),
            }
        }
    }
    if errors.is_empty() {
        Ok(files)
    } else {
        Err(errors.join("\n"))
    }
}

/// Writes each file atomically (mode 0600) under `dir`, creating `dir` and
/// any subdirectories with mode 0700 when they do not exist.
///
/// # Errors
/// A name that would leave `dir` (`InvalidInput`), or any I/O error, with
/// the path in the message.
pub fn write_outputs(dir: &Path, files: &[OutputFile]) -> std::io::Result<()> {
    for file in files {
        check_name(&file.name)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    }
    crabbox_fs::atomic_file::create_private_dir(dir)?;
    for file in files {
        crabbox_fs::atomic_file::write(&dir.join(&file.name), file.contents.as_bytes())?;
    }
    Ok(())
}

/// A unified diff (3 lines of context) from `old` to `new`, with headers
/// `a/<name>` and `b/<name>`; empty when they are equal.
#[must_use]
pub fn unified_diff(name: &str, old: &str, new: &str) -> String {
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(&format!("a/{name}"), &format!("b/{name}"))
        .to_string()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::peers::tests::sample;

    #[test]
    fn the_peers_file_leaves_out_the_labels_every_touch_rewrites() {
        let mut peers = sample();
        for (i, p) in peers.iter_mut().enumerate() {
            p.crabbox
                .labels
                .insert("last_touched_at".into(), format!("17000{i}").into());
            p.crabbox
                .labels
                .insert("expires_at".into(), format!("18000{i}").into());
            p.crabbox.labels.insert("pond".into(), "demo".into());
        }
        let shown: Value = serde_json::from_str(&peers_json(&peers)).expect("json");
        let file: Value = serde_json::from_str(&peers_file(&peers)).expect("json");
        for m in shown["members"].as_array().expect("members") {
            let labels = m["labels"].as_object().expect("labels");
            assert!(
                labels["expires_at"]
                    .as_str()
                    .is_some_and(|v| v.starts_with("18000"))
            );
            assert!(
                labels["last_touched_at"]
                    .as_str()
                    .is_some_and(|v| v.starts_with("17000"))
            );
        }
        for m in file["members"].as_array().expect("members") {
            let labels = m["labels"].as_object().expect("labels");
            assert!(!labels.contains_key("expires_at") && !labels.contains_key("last_touched_at"));
            assert_eq!(labels["pond"], "demo");
        }
    }

    /// The borrowed view writes exactly what serializing the peers
    /// themselves writes (every key, its order and `omitempty`), with and
    /// without the touch labels.
    #[test]
    fn the_peers_documents_are_the_bridge_peers_serialized() {
        let mut peers = sample();
        peers[0].crabbox.bridge_state = "unsupported-provider".into();
        peers[0].crabbox.targets = vec![crate::bridge::BridgeTarget {
            port: 8080,
            url: "https://a.example".into(),
            share_id: "sh_1".into(),
            expires_at: "2026-01-01T00:00:00Z".into(),
        }];
        peers[1]
            .crabbox
            .labels
            .insert("expires_at".into(), "1800000".into());
        peers[2].crabbox.labels.clear();
        for untouched in [false, true] {
            #[derive(Serialize)]
            struct Doc {
                members: Vec<BridgePeer>,
            }
            let mut members: Vec<BridgePeer> = peers
                .iter()
                .map(|p| {
                    let mut m = p.crabbox.clone();
                    if untouched {
                        m.labels.retain(|k, _| !TOUCH_LABELS.contains(&k.as_str()));
                    }
                    m
                })
                .collect();
            members.sort_by(|a, b| (&a.slug, &a.lease_id).cmp(&(&b.slug, &b.lease_id)));
            let mut expected = serde_json::to_string_pretty(&Doc { members }).expect("json");
            expected.push('\n');
            let written = if untouched {
                peers_file(&peers)
            } else {
                peers_json(&peers)
            };
            assert_eq!(written, expected);
        }
    }

    #[test]
    fn peers_json_has_crabbox_shape() {
        let text = peers_json(&sample());
        assert!(text.ends_with("}\n"));
        let doc: Value = serde_json::from_str(&text).expect("json");
        let members = doc["members"].as_array().expect("members");
        assert_eq!(members.len(), 3);
        assert_eq!(members[0]["slug"], "api");
        assert_eq!(members[0]["leaseID"], "cbx_00000000000b");
        // `local` is no Crabbox provider: our own transport.
        assert_eq!(members[0]["transport"], "local");
        assert_eq!(members[0]["endpoint"], "127.77.3.10");
        // Keys in BridgePeer's order (pond_bridge.go:31-52).
        let keys: Vec<&str> = members[2]
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "slug",
                "leaseID",
                "provider",
                "pond",
                "transport",
                "transports",
                "endpoint",
                "labels",
                "note"
            ]
        );
        assert_eq!(peers_json(&[]), "{\n  \"members\": []\n}\n");
    }

    #[test]
    fn hosts_lists_addresses() {
        let mut peers = sample();
        peers[2].host = Some("box.example.com".to_owned());
        assert_eq!(
            hosts(&peers).lines().collect::<Vec<_>>()[2..],
            [
                "127.77.3.10  api.cbx",
                "127.77.3.9  db.cbx",
                "# web.cbx is box.example.com (a host name, not an address)"
            ]
        );
        assert_eq!(hosts(&[]).lines().filter(|l| l.starts_with('#')).count(), 2);
    }

    #[test]
    fn env_file_exports_quoted_values() {
        let text = env_file("demo", &sample());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "# crabbox pond demo — source this file");
        assert_eq!(lines[1], "export CRABBOX_POND=demo");
        assert!(
            lines.contains(&"export CRABBOX_POND_DB_5432=127.77.3.9:5432"),
            "{text}"
        );
        assert!(
            lines.contains(&"export CRABBOX_POND_WEB_HOST=203.0.113.7"),
            "{text}"
        );
        let shell_quote = |value: &str| {
            let mut word = String::new();
            push_shell_word(&mut word, value);
            word
        };
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(
            shell_quote("https://x.example/a-b_c"),
            "https://x.example/a-b_c"
        );
    }

    #[test]
    fn templates_render_members_and_peers() {
        let peers = sample();
        let out = render_template(
            "t",
            "{{#each members}}{{upper slug}}={{endpoint}}\n{{/each}}",
            "demo",
            &peers,
        )
        .expect("renders");
        assert_eq!(
            out,
            "API=127.77.3.10\nDB=127.77.3.9\nWEB=ssh://203.0.113.7:2222\n"
        );
        let out = render_template(
            "t",
            "{{pond}} <{{peers.db.host}}:{{peers.db.ports.[0]}}>",
            "demo",
            &peers,
        )
        .expect("renders");
        assert_eq!(out, "demo <127.77.3.9:5432>", "no HTML escaping");
    }

    #[test]
    fn strict_mode_errors_name_the_template() {
        let err = render_template("app.conf", "line one\n{{nope}}", "demo", &sample())
            .expect_err("strict");
        assert!(
            err.starts_with("template `app.conf`, line 2, col 1: "),
            "{err}"
        );
        assert!(err.contains("nope"), "{err}");
        let err =
            render_template("bad", "{{#each members}}", "demo", &sample()).expect_err("syntax");
        assert!(
            err.starts_with("template `bad`, line 1, col 18: invalid handlebars syntax"),
            "{err}"
        );
        let err = render_template("u", "{{upper peers.zz.slug}}", "demo", &sample())
            .expect_err("missing");
        assert!(err.contains("upper"), "{err}");
    }

    #[test]
    fn output_files_collects_builtins_and_templates() {
        let peers = sample();
        let templates = vec![(
            "conf/app.env".to_owned(),
            "DB={{peers.db.host}}\n".to_owned(),
        )];
        let files = output_files("demo", &peers, &templates).expect("renders");
        let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["peers.json", "hosts", "env", "conf/app.env"]);
        assert_eq!(files[3].contents, "DB=127.77.3.9\n");

        let bad = vec![
            ("../x".to_owned(), String::new()),
            ("/etc/x".to_owned(), String::new()),
            ("env".to_owned(), String::new()),
            ("y".to_owned(), "{{nope}}".to_owned()),
        ];
        let err = output_files("demo", &peers, &bad).expect_err("bad");
        let lines: Vec<&str> = err.lines().collect();
        assert!(lines[0].starts_with("output `../x`"), "{err}");
        assert!(lines[1].starts_with("output `/etc/x`"), "{err}");
        assert!(lines[2].starts_with("output `env`: written twice"), "{err}");
        assert!(lines[3].starts_with("template `y`"), "{err}");
    }

    #[test]
    fn write_outputs_creates_private_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("pond/demo");
        let files = output_files("demo", &sample(), &[("sub/t".to_owned(), "x".to_owned())])
            .expect("renders");
        write_outputs(&dir, &files).expect("writes");
        write_outputs(&dir, &files).expect("rewrites");
        let dir_mode = std::fs::metadata(&dir).expect("meta").permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o700);
        for f in &files {
            let path = dir.join(&f.name);
            assert_eq!(std::fs::read_to_string(&path).expect("read"), f.contents);
            assert_eq!(
                std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777,
                0o600,
                "{}",
                f.name
            );
        }
        let escape = [OutputFile {
            name: "../out".to_owned(),
            contents: String::new(),
        }];
        let err = write_outputs(&dir, &escape).expect_err("escape");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    }

    #[test]
    fn unified_diff_shows_changes() {
        let diff = unified_diff("hosts", "a\nb\nc\n", "a\nB\nc\n");
        assert!(diff.starts_with("--- a/hosts\n+++ b/hosts\n"), "{diff}");
        assert!(diff.contains("\n-b\n"), "{diff}");
        assert!(diff.contains("\n+B\n"), "{diff}");
        assert_eq!(unified_diff("hosts", "same\n", "same\n"), "");
    }
}
