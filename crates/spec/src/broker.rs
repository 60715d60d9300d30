//! `broker:` (brokered mode through a Crabbox coordinator) on a member or
//! in `defaults`: `false` leases directly even when `CRABBOX_COORDINATOR`
//! is set; `{ url, token }` names a coordinator. The token is a secret: it
//! may only come from the environment as a `${VAR}` reference, never be
//! written in the file, so it is checked on the text as written, before
//! interpolation.

use crate::diagnostic::Diagnostic;
use crate::source::SourceFile;
use crate::yaml::{Node, NodeKind};

/// How a member's leases are made.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum BrokerChoice {
    /// As the environment says (`CRABBOX_COORDINATOR`, else directly).
    #[default]
    Environment,
    /// Directly with the cloud's API (`broker: false`).
    Direct,
    /// Through this coordinator.
    Coordinator {
        /// Its URL.
        url: String,
        /// Its token, from the environment (`None`: not given).
        token: Option<String>,
    },
}

impl std::fmt::Debug for BrokerChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Environment => f.write_str("Environment"),
            Self::Direct => f.write_str("Direct"),
            Self::Coordinator { url, token } => f
                .debug_struct("Coordinator")
                .field("url", url)
                .field("token", &token.as_ref().map(|_| "<redacted>"))
                .finish(),
        }
    }
}

/// Whether `raw` (a scalar as written) is exactly one `${VAR}` reference.
fn is_reference(raw: &str) -> bool {
    let raw = raw.trim().trim_matches(|c| c == '"' || c == '\'');
    raw.strip_prefix("${")
        .and_then(|r| r.strip_suffix('}'))
        .is_some_and(|name| {
            let name = name.split([':', '-']).next().unwrap_or_default();
            !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

/// Reports every `broker.token` in `defaults` or a member that is not a
/// `${VAR}` reference (run on the document as written).
pub fn literal_tokens(file: &SourceFile, root: &Node, out: &mut Vec<Diagnostic>) {
    let mut blocks = Vec::new();
    if let Some(defaults) = root.get("defaults") {
        blocks.push(&defaults.value);
    }
    if let Some(NodeKind::Seq(members)) = root.get("members").map(|e| &e.value.kind) {
        blocks.extend(members.iter());
    }
    for block in blocks {
        let Some(token) = block
            .get("broker")
            .and_then(|b| b.value.get("token"))
            .map(|e| &e.value)
        else {
            continue;
        };
        if let NodeKind::Str { .. } = token.kind
            && is_reference(file.slice(token.span))
        {
            continue;
        }
        if matches!(token.kind, NodeKind::Null) {
            continue;
        }
        out.push(
            Diagnostic::error(
                "literal-secret",
                token.span,
                "the coordinator token is written in the file; it must come from the environment",
            )
            .with_hint("write `token: ${CRABBOX_COORDINATOR_TOKEN}` and set that variable (a CI secret); revoke the token that was written here")
            .masking_secret(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::is_reference;

    #[test]
    fn only_a_single_reference_is_a_reference() {
        assert!(is_reference("${CRABBOX_COORDINATOR_TOKEN}"));
        assert!(is_reference("\"${TOKEN}\""));
        assert!(is_reference("${TOKEN:-}"));
        assert!(!is_reference("abc${TOKEN}"));
        assert!(!is_reference("s3cr3t"));
        assert!(!is_reference("${}"));
    }
}
