//! `{{peers.<slug>.<field>}}` references, checked before anything exists.
//!
//! Apply resolves the references in `env` (a member's, a setup step's) once
//! the peers have leases, and renders the output templates after the apply;
//! a reference to a member that is not in the pond, a field that does not
//! exist or a port nobody exposes would only fail then, with leases already
//! created. `validate` resolves every one of them with the very functions
//! apply uses ([`resolve_refs`], [`render_template`]) against placeholder
//! peers built from the spec, so both agree on what resolves.

use std::collections::HashMap;
use std::path::Path;

use crate::diagnostic::Diagnostic;
use crate::source::{SourceFile, Span};
use crate::suggest::Names;
use crate::yaml::PointerIndex;
use crabbox_core::provider::ProviderName;
use crabbox_render::bridge::BridgePeer;
use crabbox_render::files::render_template;
use crabbox_render::peers::{Peer, resolve_refs};

/// A placeholder address: what a peer's host will be is only known once it
/// exists; that it will have one is all a reference needs.
const PLACEHOLDER_HOST: &str = "192.0.2.1";

/// One member as references see it before it exists.
pub struct Member<'a> {
    /// Normalized slug.
    pub slug: &'a str,
    /// Provider.
    pub provider: ProviderName,
    /// Exposed ports; `None` when the member has errors that hide them
    /// (then no port problem is reported against it).
    pub ports: Option<&'a [u16]>,
}

/// The peers apply would see, with placeholder addresses, by slug.
pub struct Targets<'a> {
    peers: Vec<Peer>,
    by_slug: HashMap<&'a str, usize>,
    names: Names<'a>,
}

impl<'a> Targets<'a> {
    /// The members of the pond `pond` as peers.
    #[must_use]
    pub fn new(pond: &str, members: &[Member<'a>]) -> Self {
        let peers = members
            .iter()
            .map(|m| Peer {
                slug: m.slug.to_owned(),
                lease_id: format!("lease-of-{}", m.slug),
                provider: m.provider,
                pond: pond.to_owned(),
                transport: "ssh",
                transports: vec!["ssh"],
                endpoint: PLACEHOLDER_HOST.to_owned(),
                host: Some(PLACEHOLDER_HOST.to_owned()),
                // An unknown port list stands for "some port": no false alarms.
                ports: m.ports.map_or_else(|| vec![1], <[u16]>::to_vec),
                note: None,
                targets: Vec::new(),
                // Checking references never prints Crabbox's document.
                crabbox: BridgePeer::default(),
            })
            .collect();
        Self {
            peers,
            by_slug: members
                .iter()
                .enumerate()
                .map(|(i, m)| (m.slug, i))
                .collect(),
            names: Names::new(members.iter().map(|m| m.slug)),
        }
    }
}

/// Each `{{…}}` of `text` whose inside starts with `peers.`, found the way
/// [`resolve_refs`] finds them.
fn references(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(start) = text[at..].find("{{").map(|i| at + i) {
        let Some(len) = text[start + 2..].find("}}") else {
            break;
        };
        let end = start + 2 + len + 2;
        if text[start + 2..end - 2].trim().starts_with("peers.") {
            out.push(&text[start..end]);
        }
        at = end;
    }
    out
}

/// Where a reference is written: inside the value's source text when it is
/// there verbatim, else the whole value.
fn place_of(file: &SourceFile, value: Span, reference: &str) -> Span {
    file.slice(value)
        .find(reference)
        .map_or(value, |i| Span::new(value.start + i, reference.len()))
}

/// Checks the references of one `env` value at `pointer`: the member a
/// reference names is looked up here (the slug is what precedes the last `.`,
/// as for the resolver); the resolver itself then judges the field and ports.
pub fn check_env_value(
    text: &str,
    pointer: &str,
    targets: &Targets<'_>,
    index: &PointerIndex,
    file: &SourceFile,
    out: &mut Vec<Diagnostic>,
) {
    for reference in references(text) {
        let inner = reference[2..reference.len() - 2].trim();
        let path = inner.strip_prefix("peers.").unwrap_or(inner);
        let (problem, hint) = match path.rsplit_once('.') {
            Some((slug, field)) => match targets.by_slug.get(slug) {
                Some(&i) => {
                    let peer = std::slice::from_ref(&targets.peers[i]);
                    let Err(problem) = resolve_refs(reference, peer) else {
                        continue;
                    };
                    let hint = if field == "port" && peer[0].ports.is_empty() {
                        format!(
                            "add the port to `expose` of `{slug}`, or refer to `{{{{peers.{slug}.host}}}}`"
                        )
                    } else {
                        FORM.to_owned()
                    };
                    (problem, hint)
                }
                None => (
                    format!(
                        "`{reference}`: no member `{slug}` in the pond (members: {})",
                        targets.names.listing()
                    ),
                    match targets.names.closest(slug) {
                        Some(s) => format!(
                            "did you mean `{s}`? references name a member's slug as normalized (`{{{{peers.{s}.host}}}}`)"
                        ),
                        None => "references name members of this pond by their normalized slug"
                            .to_owned(),
                    },
                ),
            },
            None => match resolve_refs(reference, &[]) {
                Err(problem) => (problem, FORM.to_owned()),
                Ok(_) => continue,
            },
        };
        let at = place_of(file, index.find(pointer).value, reference);
        out.push(Diagnostic::error("peer-reference", at, problem).with_hint(hint));
    }
}

/// How a reference is written.
const FORM: &str =
    "a reference reads `{{peers.<member>.<field>}}` with field host, endpoint, lease_id or port";

/// A setup command is given to the shell as written: a reference in it is
/// never replaced, which is worth a warning.
pub fn check_command(
    text: &str,
    pointer: &str,
    index: &PointerIndex,
    file: &SourceFile,
    out: &mut Vec<Diagnostic>,
) {
    for reference in references(text) {
        let at = place_of(file, index.find(pointer).value, reference);
        out.push(
            Diagnostic::warning(
                "peer-reference-in-command",
                at,
                format!("`{reference}` in a setup command is passed to the shell as written"),
            )
            .with_hint("references are replaced in `env` only: set e.g. `env: { DB_HOST: \"{{peers.db.host}}\" }` and use $DB_HOST, or use $CRABBOX_POND_<PEER>_HOST"),
        );
    }
}

/// Renders an output template with the placeholder peers, as apply renders
/// it with the real ones; a reference to a member, field or port that will
/// not exist (and any template error) is reported at the template's `src`.
pub fn check_template(
    template: &Path,
    src: &str,
    pointer: &str,
    pond: &str,
    targets: &Targets<'_>,
    index: &PointerIndex,
    out: &mut Vec<Diagnostic>,
) {
    // A missing template is reported on its own; an unreadable one at apply.
    let Ok(text) = std::fs::read_to_string(template) else {
        return;
    };
    if let Err(problem) = render_template(src, &text, pond, &targets.peers) {
        out.push(
            Diagnostic::error("template-error", index.find(pointer).value, problem)
                .with_hint("templates see `pond`, `members` and `peers.<slug>` with slug, leaseID, provider, transport, transports, endpoint, host and ports"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_peer_references_like_the_resolver() {
        let text = "a {{peers.db.host}} {{ other }} {{ peers.x.port }} {{unterminated";
        assert_eq!(
            references(text),
            ["{{peers.db.host}}", "{{ peers.x.port }}"]
        );
    }
}
