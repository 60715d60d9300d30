//! The loading pipeline: read → parse YAML with positions → interpolate →
//! schema-check → read the typed parts → semantic checks → [`DesiredPond`].
//! Every stage contributes diagnostics; a later stage still runs on whatever
//! the earlier ones could make sense of, so one run reports all problems.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::check::{Parts, check};
use crate::desired::DesiredPond;
use crate::diagnostic::{Diagnostic, Severity};
use crate::interpolate::{Variables, interpolate_recording};

use crate::model::MemberSpec;
use crate::source::SourceFile;
use crate::{schema, yaml};

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

/// The file name that means standard input (`-f -`).
pub const STDIN_PATH: &str = "-";

/// How diagnostics name a spec read from standard input.
pub const STDIN_NAME: &str = "<stdin>";

/// Reads and loads a file; `-` ([`STDIN_PATH`]) reads standard input, named
/// `<stdin>` in diagnostics, with relative paths taken from the current
/// directory. Otherwise `base_dir` for relative paths is the file's directory.
///
/// # Errors
/// When the file cannot be read.
pub fn load_path(path: &Path, vars: &Variables) -> std::io::Result<Loaded> {
    if path == Path::new(STDIN_PATH) {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut bytes)?;
        let text = match decode(STDIN_NAME, bytes) {
            Ok(text) => text,
            Err(not_utf8) => return Ok(*not_utf8),
        };
        return Ok(load_str(STDIN_NAME, &text, Path::new("."), vars));
    }
    let bytes = std::fs::read(path)?;
    let name = path.display().to_string();
    let text = match decode(&name, bytes) {
        Ok(text) => text,
        Err(not_utf8) => return Ok(*not_utf8),
    };
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok(load_str(&name, &text, base, vars))
}

/// The file's text, or, when it is not UTF-8, a [`Loaded`] with one error
/// that says where the first invalid byte is, or which encoding a byte-order
/// mark shows the file is in.
fn decode(name: &str, bytes: Vec<u8>) -> Result<String, Box<Loaded>> {
    const BOMS: [(&[u8], &str); 4] = [
        // UTF-32 first: its little-endian mark starts like UTF-16's.
        (&[0xFF, 0xFE, 0x00, 0x00], "UTF-32 (little-endian)"),
        (&[0x00, 0x00, 0xFE, 0xFF], "UTF-32 (big-endian)"),
        (&[0xFF, 0xFE], "UTF-16 (little-endian)"),
        (&[0xFE, 0xFF], "UTF-16 (big-endian)"),
    ];
    if let Some((_, encoding)) = BOMS.iter().find(|(bom, _)| bytes.starts_with(bom)) {
        let file = SourceFile::new(name, "");
        let diagnostic = Diagnostic::error(
            "not-utf8",
            crate::source::Span::new(0, 0),
            format!("the file is {encoding} text (its byte-order mark says so); pond.yaml is read as UTF-8"),
        )
        .with_hint(format!(
            "convert it, e.g. `iconv -f {} -t UTF-8 {name} > pond.utf8.yaml`, or save it as UTF-8 in the editor",
            encoding.split(' ').next().unwrap_or(encoding)
        ));
        return Err(not_loaded(file, diagnostic));
    }
    match String::from_utf8(bytes) {
        Ok(text) => Ok(text),
        Err(e) => {
            let valid = e.utf8_error().valid_up_to();
            let bad = e.as_bytes()[valid];
            // The valid prefix is unchanged by the lossy decoding, so the
            // offset of the first invalid byte is the same in the shown text.
            let file = SourceFile::new(name, String::from_utf8_lossy(e.as_bytes()).into_owned());
            let diagnostic = Diagnostic::error(
                "not-utf8",
                crate::source::Span::new(valid, "\u{FFFD}".len()),
                format!("invalid UTF-8: byte 0x{bad:02X} cannot appear here"),
            )
            .with_hint("pond.yaml must be UTF-8: re-type the character at this position, or convert the file (`iconv -f LATIN1 -t UTF-8`)");
            Err(not_loaded(file, diagnostic))
        }
    }
}

fn not_loaded(file: SourceFile, diagnostic: Diagnostic) -> Box<Loaded> {
    Box::new(Loaded {
        file,
        diagnostics: vec![diagnostic],
        pond: None,
    })
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
            crate::broker::literal_tokens(&file, &node, &mut diagnostics);
            let mut interpolated = std::collections::HashSet::new();
            interpolate_recording(&file, &mut node, vars, &mut diagnostics, &mut interpolated);
            let (document, index) = yaml::to_json(&node);
            let schema_problems = schema::check(&document, &index);
            let parts = parts(&document);
            let mut semantic = Vec::new();
            let pond = check(
                &parts,
                &index,
                &interpolated,
                &file,
                base_dir,
                &mut semantic,
            );
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
