//! The pond as a graph: one node per member (`slug (provider)` and its
//! exposed ports), one edge per dependency. `depends_on` edges carry their
//! condition; a `{{peers.<slug>…}}` reference to a member the spec does not
//! also name in `depends_on` is drawn dashed, since apply resolves it only
//! once that peer has a lease. Rendered as Graphviz `dot` for `crabbox
//! graph` and as a Mermaid flowchart, which Markdown (pull-request comments,
//! the markdown plan) shows as a picture.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crabbox_spec::desired::{DesiredMember, DesiredPond};

use crate::{Action, Plan};
use crabbox_spec::model::Condition;

/// Why one member points at another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EdgeKind {
    /// `depends_on` with this condition.
    DependsOn(Condition),
    /// Only a `{{peers.<slug>…}}` reference in env or setup.
    PeerRef,
}

/// A dependency: `from` needs `to`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Edge {
    /// The dependent member's slug.
    pub from: String,
    /// The slug it needs.
    pub to: String,
    /// Why.
    pub kind: EdgeKind,
}

/// The slugs `text` names in `{{peers.<slug>…}}` references.
fn referenced_peers(text: &str, out: &mut BTreeSet<String>) {
    let mut rest = text;
    while let Some(at) = rest.find("{{") {
        rest = &rest[at + 2..];
        let inner = rest.trim_start();
        if let Some(after) = inner.strip_prefix("peers.") {
            let slug: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect();
            if !slug.is_empty() {
                out.insert(slug);
            }
        }
    }
}

fn member_refs(member: &DesiredMember) -> BTreeSet<String> {
    let mut refs = BTreeSet::new();
    for value in member.env.values() {
        referenced_peers(value, &mut refs);
    }
    for step in &member.setup {
        referenced_peers(&step.run, &mut refs);
        for value in step.env.values() {
            referenced_peers(value, &mut refs);
        }
    }
    refs
}

/// Every dependency of the pond, sorted: `depends_on` first-hand, then peer
/// references to members not already depended on (references to a slug that
/// is not a member are `validate`'s business, not drawn).
#[must_use]
pub fn edges(pond: &DesiredPond) -> Vec<Edge> {
    let slugs: BTreeSet<&str> = pond.members.iter().map(|m| m.slug.as_str()).collect();
    let mut edges = Vec::new();
    for member in &pond.members {
        for (to, condition) in &member.depends_on {
            edges.push(Edge {
                from: member.slug.clone(),
                to: to.clone(),
                kind: EdgeKind::DependsOn(*condition),
            });
        }
        for to in member_refs(member) {
            let declared = member.depends_on.iter().any(|(d, _)| *d == to);
            if !declared && to != member.slug && slugs.contains(to.as_str()) {
                edges.push(Edge {
                    from: member.slug.clone(),
                    to,
                    kind: EdgeKind::PeerRef,
                });
            }
        }
    }
    edges.sort();
    edges
}

/// A node's label: `slug (provider)`, then its exposed ports.
fn label(member: &DesiredMember) -> (String, Option<String>) {
    let head = format!("{} ({})", member.slug, member.provider);
    let ports = (!member.expose.is_empty()).then(|| {
        let ports: Vec<String> = member.expose.iter().map(u16::to_string).collect();
        format!("ports {}", ports.join(", "))
    });
    (head, ports)
}

fn edge_label(kind: EdgeKind) -> &'static str {
    match kind {
        EdgeKind::DependsOn(Condition::Ready) => "ready",
        EdgeKind::DependsOn(Condition::Completed) => "completed",
        EdgeKind::PeerRef => "peers ref",
    }
}

/// A `dot` identifier or label: quoted, with `"` and `\` escaped and line
/// breaks written as `\n`.
fn dot_quote(s: &str) -> String {
    let escaped = s
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    format!("\"{escaped}\"")
}

/// The pond as a Graphviz digraph (`dot -Tsvg` draws it).
#[must_use]
pub fn to_dot(pond: &DesiredPond) -> String {
    let mut out = format!(
        "digraph {} {{\n  rankdir=LR;\n  node [shape=box];\n",
        dot_quote(&pond.name)
    );
    for member in &pond.members {
        let (head, ports) = label(member);
        let text = match ports {
            Some(p) => format!("{head}\n{p}"),
            None => head,
        };
        let _ = writeln!(
            out,
            "  {} [label={}];",
            dot_quote(&member.slug),
            dot_quote(&text)
        );
    }
    for edge in edges(pond) {
        let style = if edge.kind == EdgeKind::PeerRef {
            ", style=dashed"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "  {} -> {} [label={}{style}];",
            dot_quote(&edge.from),
            dot_quote(&edge.to),
            dot_quote(edge_label(edge.kind))
        );
    }
    out.push_str("}\n");
    out
}

/// A Mermaid node id: slugs are letters, digits and `-`, which Mermaid
/// accepts; the prefix keeps ids such as `end` (a keyword) usable.
fn mermaid_id(slug: &str) -> String {
    format!("m_{}", slug.replace('-', "_"))
}

/// Mermaid label text: `"` becomes `#quot;` (Mermaid's entity syntax).
fn mermaid_text(s: &str) -> String {
    s.replace('"', "#quot;")
}

/// The pond as a Mermaid flowchart (left to right), without a code fence.
#[must_use]
pub fn to_mermaid(pond: &DesiredPond) -> String {
    let mut out = String::from("flowchart LR\n");
    for member in &pond.members {
        let (head, ports) = label(member);
        let text = match ports {
            Some(p) => format!("{head}<br/>{p}"),
            None => head,
        };
        let _ = writeln!(
            out,
            "  {}[\"{}\"]",
            mermaid_id(&member.slug),
            mermaid_text(&text)
        );
    }
    for edge in edges(pond) {
        let arrow = if edge.kind == EdgeKind::PeerRef {
            "-.->"
        } else {
            "-->"
        };
        let _ = writeln!(
            out,
            "  {} {arrow}|{}| {}",
            mermaid_id(&edge.from),
            edge_label(edge.kind),
            mermaid_id(&edge.to)
        );
    }
    out
}

/// The class (and its colours) Mermaid draws a member in, by what the plan
/// does to it; `None` for members the plan leaves alone.
fn action_class(action: Action) -> Option<(&'static str, &'static str)> {
    match action {
        Action::NoOp => None,
        Action::Create => Some(("create", "fill:#dafbe1,stroke:#1a7f37")),
        Action::Update | Action::Adopt => Some(("update", "fill:#fff8c5,stroke:#9a6700")),
        Action::Replace | Action::CreateBeforeDestroy => {
            Some(("replace", "fill:#ffebe9,stroke:#cf222e,stroke-dasharray:4"))
        }
        Action::Delete => Some(("destroy", "fill:#ffebe9,stroke:#cf222e")),
    }
}

/// [`to_mermaid`] for a plan: members coloured by what the plan does to
/// them (green new, yellow changed or adopted, red replaced or destroyed),
/// and members the plan destroys drawn too, though the spec no longer has
/// them — what the pull-request comment opens with.
#[must_use]
pub fn to_mermaid_for_plan(pond: &DesiredPond, plan: &Plan) -> String {
    let mut out = to_mermaid(pond);
    let mut classes: BTreeMap<&str, (&str, Vec<String>)> = BTreeMap::new();
    for c in &plan.changes {
        if c.action == Action::Delete {
            // A spare lease of a member the spec keeps: the member stays.
            if pond.members.iter().any(|m| m.slug == c.slug) {
                continue;
            }
            let _ = writeln!(
                out,
                "  {}[\"{}\"]",
                mermaid_id(&c.slug),
                mermaid_text(&format!("{} ({})", c.slug, c.provider))
            );
        }
        if let Some((class, style)) = action_class(c.action) {
            classes
                .entry(class)
                .or_insert((style, Vec::new()))
                .1
                .push(mermaid_id(&c.slug));
        }
    }
    for (class, (style, ids)) in &classes {
        let _ = writeln!(out, "  classDef {class} {style}");
        let _ = writeln!(out, "  class {} {class}", ids.join(","));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_references_are_found_in_any_spacing() {
        let mut refs = BTreeSet::new();
        referenced_peers(
            "a {{peers.db.host}} b {{ peers.cache-1.port.6379 }} {{other}}",
            &mut refs,
        );
        assert_eq!(refs.into_iter().collect::<Vec<_>>(), ["cache-1", "db"]);
    }
}
