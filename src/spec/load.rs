//! The loading pipeline: read → parse YAML with positions → interpolate →
//! schema-check → read the typed parts → semantic checks → [`DesiredPond`].
//! Every stage contributes diagnostics; a later stage still runs on whatever
//! the earlier ones could make sense of, so one run reports all problems.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::diagnostic::{Diagnostic, Severity};
use crate::spec::check::{Parts, check};
use crate::spec::desired::DesiredPond;
use crate::spec::interpolate::{Variables, interpolate};
use crate::spec::model::MemberSpec;
use crate::spec::source::SourceFile;
use crate::spec::{schema, yaml};

/// The outcome of loading one file.
#[derive(Debug)]
pub struct Loaded {
    /// The file, for rendering diagnostics.
    pub file: SourceFile,
    /// Every problem found, sorted by position.
    pub diagnostics: Vec<Diagnostic>,
    /// The resolved pond, present exactly when there is no error.
    pub pond: Option<DesiredPond>,
}

impl Loaded {
    /// Whether any diagnostic is an error.
    #[must_use]
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

/// Reads and loads a file. `base_dir` for relative paths is the file's directory.
///
/// # Errors
/// When the file cannot be read.
pub fn load_path(path: &Path, vars: &Variables) -> std::io::Result<Loaded> {
    let text = std::fs::read_to_string(path)?;
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok(load_str(&path.display().to_string(), &text, base, vars))
}

/// Loads a document from text.
#[must_use]
pub fn load_str(name: &str, text: &str, base_dir: &Path, vars: &Variables) -> Loaded {
    let file = SourceFile::new(name, text);
    let mut diagnostics = Vec::new();
    let pond = match yaml::parse(&file) {
        Err(syntax) => {
            diagnostics.push(syntax);
            None
        }
        Ok((mut node, problems)) => {
            diagnostics.extend(problems);
            interpolate(&file, &mut node, vars, &mut diagnostics);
            let (document, index) = yaml::to_json(&node);
            let schema_problems = schema::check(&document, &index);
            let parts = parts(&document);
            let mut semantic = Vec::new();
            let pond = check(&parts, &index, &file, base_dir, &mut semantic);
            // A specific check says more than the schema about the same value.
            let specific: std::collections::HashSet<usize> = semantic
                .iter()
                .filter_map(|d| d.span.map(|s| s.start))
                .collect();
            diagnostics.extend(
                schema_problems
                    .into_iter()
                    .filter(|d| d.span.is_none_or(|s| !specific.contains(&s.start))),
            );
            diagnostics.extend(semantic);
            pond
        }
    };
    diagnostics.sort_by_key(|d| (d.span.map(|s| s.start), d.severity != Severity::Error));
    diagnostics.dedup();
    let pond = pond.filter(|_| !diagnostics.iter().any(Diagnostic::is_error));
    Loaded {
        file,
        diagnostics,
        pond,
    }
}

fn typed<T: DeserializeOwned>(value: Option<&Value>) -> Option<T> {
    value.and_then(|v| serde_json::from_value(v.clone()).ok())
}

/// Reads a member map into the typed model. Fields that do not fit the
/// types on their own are left out and the rest is read, so the semantic
/// checks still see everything that is right (their schema errors are already
/// reported). Returns the member and the names of the fields left out.
fn member_at(value: &Value) -> Option<(MemberSpec, Vec<String>)> {
    if let Some(m) = typed(Some(value)) {
        return Some((m, Vec::new()));
    }
    let mut fields = value.as_object()?.clone();
    let dropped: Vec<String> = fields
        .iter()
        .filter(|(k, v)| {
            let alone = Value::Object(serde_json::Map::from_iter([((*k).clone(), (*v).clone())]));
            typed::<MemberSpec>(Some(&alone)).is_none()
        })
        .map(|(k, _)| k.clone())
        .collect();
    fields.retain(|k, _| !dropped.contains(k));
    typed(Some(&Value::Object(fields))).map(|m| (m, dropped))
}

/// Reads what can be read into the typed model, member by member.
fn parts(document: &Value) -> Parts {
    let members = document
        .get("members")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .enumerate()
                .filter_map(|(i, m)| member_at(m).map(|(m, dropped)| (i, m, dropped)))
                .collect()
        })
        .unwrap_or_default();
    let (defaults, defaults_dropped) = document
        .get("defaults")
        .and_then(member_at)
        .unwrap_or_default();
    let outputs = document.get("outputs");
    Parts {
        version: document.get("version").and_then(Value::as_u64),
        pond: document
            .get("pond")
            .and_then(Value::as_str)
            .map(str::to_owned),
        defaults,
        defaults_dropped,
        members,
        outputs_dir: outputs
            .and_then(|o| o.get("dir"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        templates: outputs
            .and_then(|o| o.get("templates"))
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .enumerate()
                    .filter_map(|(i, t)| {
                        Some((
                            i,
                            t.get("src")?.as_str()?.to_owned(),
                            t.get("dest")?.as_str()?.to_owned(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default(),
        state: typed(document.get("state")),
    }
}
