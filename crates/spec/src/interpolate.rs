//! `${VAR}` interpolation in string values, as compose does it:
//! `${VAR}`, `${VAR:-default}` (unset or empty), `${VAR-default}` (unset),
//! and `$$` for a literal `$`. Peer references (`{{peers.db.host}}`) are not
//! ours and pass through untouched; they are resolved at run time.

use std::collections::HashSet;

use crate::diagnostic::Diagnostic;
use crate::source::{SourceFile, Span};
use crate::yaml::{Node, NodeKind};

/// Looks a variable up in the environment.
type Lookup = Box<dyn Fn(&str) -> Option<String>>;

/// Where variable values come from: `--var` first, then the environment.
pub struct Variables {
    overrides: Vec<(String, String)>,
    environment: Lookup,
}

impl Variables {
    /// `--var` pairs over the process environment.
    #[must_use]
    pub fn from_env(overrides: Vec<(String, String)>) -> Self {
        Self {
            overrides,
            environment: Box::new(|name| std::env::var(name).ok()),
        }
    }

    /// Only the given pairs, no environment (for tests and tools).
    #[must_use]
    pub fn fixed(pairs: Vec<(String, String)>) -> Self {
        Self {
            overrides: pairs,
            environment: Box::new(|_| None),
        }
    }

    fn get(&self, name: &str) -> Option<String> {
        self.overrides
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .or_else(|| (self.environment)(name))
    }
}

/// Replaces variables in every string value of `node`, in place. A plain
/// (unquoted) scalar whose text changed is read again as a YAML scalar, so
/// `vcpus: ${VCPUS}` is a number; quoted values always stay strings.
pub fn interpolate(
    file: &SourceFile,
    node: &mut Node,
    vars: &Variables,
    problems: &mut Vec<Diagnostic>,
) {
    interpolate_recording(file, node, vars, problems, &mut HashSet::new());
}

/// [`interpolate`], also recording the span of every string whose value a
/// variable changed: those values came from `--var` or the environment
/// (tokens, passwords…), and the plan hides them unless asked to show them.
pub fn interpolate_recording(
    file: &SourceFile,
    node: &mut Node,
    vars: &Variables,
    problems: &mut Vec<Diagnostic>,
    interpolated: &mut HashSet<Span>,
) {
    match &mut node.kind {
        NodeKind::Str { value, quoted } if value.contains('$') => {
            let raw = file.slice(node.span);
            match substitute(value, vars) {
                Ok(new) => {
                    if new != *value {
                        // `$$` alone is an escaped `$`, not a variable.
                        if new != value.replace("$$", "$") {
                            interpolated.insert(node.span);
                        }
                        let retyped = if *quoted { None } else { retype(&new) };
                        match retyped {
                            Some(kind) => node.kind = kind,
                            None => *value = new,
                        }
                    }
                }
                Err(errors) => {
                    for e in errors {
                        let at = raw
                            .find(&e.token)
                            .map_or(node.span, |i| Span::new(node.span.start + i, e.token.len()));
                        let mut d = Diagnostic::error(e.code, at, e.message);
                        d.hint = Some(e.hint);
                        problems.push(d);
                    }
                }
            }
        }
        NodeKind::Seq(items) => {
            for item in items {
                interpolate_recording(file, item, vars, problems, interpolated);
            }
        }
        NodeKind::Map(entries) => {
            for e in entries {
                interpolate_recording(file, &mut e.value, vars, problems, interpolated);
            }
        }
        _ => {}
    }
}

fn retype(text: &str) -> Option<NodeKind> {
    if let Ok(i) = text.parse::<i64>() {
        return Some(NodeKind::Int(i));
    }
    if text.chars().any(|c| c.is_ascii_digit())
        && text
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E'))
        && let Ok(f) = text.parse::<f64>()
    {
        return Some(NodeKind::Float(f));
    }
    match text {
        "true" => Some(NodeKind::Bool(true)),
        "false" => Some(NodeKind::Bool(false)),
        _ => None,
    }
}

struct InterpolationError {
    code: &'static str,
    token: String,
    message: String,
    hint: String,
}

/// Substitutes one string; collects every problem in it.
fn substitute(text: &str, vars: &Variables) -> Result<String, Vec<InterpolationError>> {
    let mut out = String::with_capacity(text.len());
    let mut errors = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(close) = body.find('}') else {
                errors.push(InterpolationError {
                    code: "bad-interpolation",
                    token: rest[i..].to_owned(),
                    message: "`${` is not closed by `}`".to_owned(),
                    hint: "write ${NAME}, or $$ for a literal `$`".to_owned(),
                });
                return Err(errors);
            };
            let expr = &body[..close];
            let token = format!("${{{expr}}}");
            let (name, default) = match expr.find([':', '-']) {
                Some(j) if expr[j..].starts_with(":-") => {
                    (&expr[..j], Some((&expr[j + 2..], true)))
                }
                Some(j) if expr[j..].starts_with('-') => {
                    (&expr[..j], Some((&expr[j + 1..], false)))
                }
                Some(_) => (expr, None),
                None => (expr, None),
            };
            if !valid_name(name) {
                errors.push(InterpolationError {
                    code: "bad-interpolation",
                    token,
                    message: format!("`{expr}` is not a valid variable reference"),
                    hint: "names are letters, digits and `_`, not starting with a digit: ${NAME} or ${NAME:-default}".to_owned(),
                });
            } else {
                match (vars.get(name), default) {
                    (Some(v), Some((d, true))) if v.is_empty() => out.push_str(d),
                    (Some(v), _) => out.push_str(&v),
                    (None, Some((d, _))) => out.push_str(d),
                    (None, None) => errors.push(InterpolationError {
                        code: "unresolved-variable",
                        token,
                        message: format!("variable `{name}` is not set"),
                        hint: format!(
                            "set it in the environment, pass --var {name}=VALUE, or give a default: ${{{name}:-value}}"
                        ),
                    }),
                }
            }
            rest = &body[close + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml;

    fn vars() -> Variables {
        Variables::fixed(vec![
            ("PR".into(), "42".into()),
            ("EMPTY".into(), String::new()),
            ("PR".into(), "43".into()),
        ])
    }

    #[test]
    fn forms() {
        let v = vars();
        let s = |t: &str| substitute(t, &v).ok();
        assert_eq!(s("pr-${PR}").as_deref(), Some("pr-43"), "later --var wins");
        assert_eq!(s("${NOPE:-x}").as_deref(), Some("x"));
        assert_eq!(s("${EMPTY:-x}").as_deref(), Some("x"));
        assert_eq!(s("${EMPTY-x}").as_deref(), Some(""));
        assert_eq!(s("$$HOME and $5").as_deref(), Some("$HOME and $5"));
        assert_eq!(s("{{peers.db.host}}").as_deref(), Some("{{peers.db.host}}"));
        assert!(s("${NOPE}").is_none());
        assert!(s("${1BAD}").is_none());
        assert!(s("${OPEN").is_none());
    }

    #[test]
    fn errors_point_at_the_reference_and_plain_scalars_are_retyped() {
        let file = SourceFile::new("t", "a: x-${MISSING}\nb: ${PR}\nc: '${PR}'\n");
        let (mut node, _) = yaml::parse(&file).expect("parses");
        let mut problems = Vec::new();
        interpolate(&file, &mut node, &vars(), &mut problems);
        assert_eq!(problems.len(), 1);
        assert_eq!(file.slice(problems[0].span.expect("span")), "${MISSING}");
        assert_eq!(node.get("b").expect("b").value.kind, NodeKind::Int(43));
        assert!(
            matches!(&node.get("c").expect("c").value.kind, NodeKind::Str { value, .. } if value == "43")
        );
    }
}
