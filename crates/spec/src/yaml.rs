//! YAML with positions: the document parsed (by serde-saphyr) into a small
//! tree whose every node and key knows its byte span, then converted to JSON
//! for schema validation together with an index from JSON pointer to span.

use std::collections::HashMap;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_saphyr::Spanned;
use serde_saphyr::options::{DuplicateKeyPolicy, Options};

use crate::diagnostic::Diagnostic;
use crate::source::{SourceFile, Span};

/// A YAML node and where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The value.
    pub kind: NodeKind,
    /// Where the value is written (for block collections, the first key or item).
    pub span: Span,
}

/// The value of a [`Node`].
#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    /// `~`, `null` or nothing.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float (also integers too large for `i64`).
    Float(f64),
    /// A string; `quoted` when written with quotes (so never re-typed).
    Str {
        /// The decoded text.
        value: String,
        /// Whether it was written in quotes or as a block scalar.
        quoted: bool,
    },
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in document order, duplicates kept (they are reported).
    Map(Vec<Entry>),
}

/// One `key: value` pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The key text.
    pub key: String,
    /// Where the key is written.
    pub key_span: Span,
    /// The value.
    pub value: Node,
}

impl Node {
    /// The entry for `key` when this is a mapping.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&Entry> {
        match &self.kind {
            NodeKind::Map(entries) => entries.iter().find(|e| e.key == key),
            _ => None,
        }
    }
}

/// What the YAML deserializer hands us before spans are turned into bytes.
enum Raw {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Raw>>),
    Map(Vec<(Spanned<String>, Spanned<Raw>)>),
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RawVisitor;
        impl<'de> Visitor<'de> for RawVisitor {
            type Value = Raw;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_unit<E>(self) -> Result<Raw, E> {
                Ok(Raw::Null)
            }
            fn visit_none<E>(self) -> Result<Raw, E> {
                Ok(Raw::Null)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Raw, E> {
                Ok(Raw::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Raw, E> {
                Ok(Raw::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Raw, E> {
                Ok(i64::try_from(v).map_or(Raw::Float(v as f64), Raw::Int))
            }
            fn visit_i128<E>(self, v: i128) -> Result<Raw, E> {
                Ok(i64::try_from(v).map_or(Raw::Float(v as f64), Raw::Int))
            }
            fn visit_u128<E>(self, v: u128) -> Result<Raw, E> {
                Ok(i64::try_from(v).map_or(Raw::Float(v as f64), Raw::Int))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Raw, E> {
                Ok(Raw::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Raw, E> {
                Ok(Raw::Str(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Raw, E> {
                Ok(Raw::Str(v))
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Raw, E> {
                Ok(Raw::Str(String::from_utf8_lossy(v).into_owned()))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Raw, D::Error> {
                Raw::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Raw::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<Spanned<String>>()? {
                    entries.push((key, map.next_value()?));
                }
                Ok(Raw::Map(entries))
            }
        }
        d.deserialize_any(RawVisitor)
    }
}

/// How deep collections may nest: the parser refuses deeper documents, which
/// bounds every recursion over the parsed tree (conversion, interpolation,
/// duplicate keys, JSON).
const MAX_DEPTH: usize = 64;

/// Parses a whole document. Syntax errors stop the parse (YAML cannot be
/// trusted past one); duplicate keys are reported, naming both places, and
/// parsing goes on so that later checks still run.
///
/// # Errors
/// The syntax error, as a diagnostic at its position.
pub fn parse(file: &SourceFile) -> Result<(Node, Vec<Diagnostic>), Diagnostic> {
    let mut options = Options::default();
    // We see every key ourselves and report duplicates with both positions.
    options.duplicate_keys = DuplicateKeyPolicy::LastWins;
    // Stated here, not left to the library's default: every walk over the
    // tree below recurses once per level.
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = MAX_DEPTH;
    options.budget = Some(budget);
    let raw: Spanned<Raw> = serde_saphyr::from_str_with_options(&file.text, options)
        .map_err(|e| syntax_error(file, &e))?;
    let node = convert(file, raw);
    let mut problems = Vec::new();
    find_duplicate_keys(&node, &mut problems);
    Ok((node, problems))
}

fn syntax_error(file: &SourceFile, e: &serde_saphyr::Error) -> Diagnostic {
    let plain = e.without_snippet().to_string();
    // The library prefixes "line L column C: "; we print positions ourselves.
    let message = plain
        .strip_prefix("error: ")
        .unwrap_or(&plain)
        .split_once(": ")
        .filter(|(head, _)| head.starts_with("line "))
        .map_or(plain.as_str(), |(_, rest)| rest)
        .replace(", set DuplicateKeyPolicy in Options if acceptable", "");
    let message = message.lines().next().unwrap_or_default();
    // The parser repeats the position at the end of some messages.
    let message = match message.rfind(" at line ") {
        Some(i) if message[i..].contains(", column ") => &message[..i],
        _ => message,
    }
    .to_owned();
    let offset = e.location().map_or(0, |l| {
        file.offset_of(l.line() as usize, l.column() as usize)
    });
    // The parser's limits (serde-saphyr's budget) keep every later walk over
    // the tree shallow; say which one was reached in words.
    let message = if message.contains("recursion limit exceeded") || message.contains("Depth {") {
        format!("nested deeper than {MAX_DEPTH} levels")
    } else if let Some(limit) = message.strip_prefix("budget breached: ") {
        format!("the document is too large for crabbox ({limit})")
    } else {
        message
    };
    let hint = if message.starts_with("nested deeper") {
        "a pond.yaml needs only a few levels of nesting; flatten this structure"
    } else if message.contains("tab") {
        "YAML indents with spaces only: replace the tab characters with spaces"
    } else if message.contains("quote") {
        "close the string with the same quote character it starts with"
    } else {
        "fix the YAML syntax at this position; the rest of the file is checked once it parses"
    };
    Diagnostic::error(
        "yaml-syntax",
        Span::new(offset, 0),
        format!("invalid YAML: {message}"),
    )
    .with_hint(hint)
}

fn span_of(file: &SourceFile, loc: serde_saphyr::Location) -> Span {
    let span = loc.span();
    match (span.byte_offset(), span.byte_len()) {
        (Some(start), Some(len)) => Span::new(start as usize, len as usize),
        _ => Span::new(
            file.offset_of(loc.line() as usize, loc.column() as usize),
            0,
        ),
    }
}

fn convert(file: &SourceFile, raw: Spanned<Raw>) -> Node {
    let span = span_of(file, raw.referenced);
    let kind = match raw.value {
        Raw::Null => NodeKind::Null,
        Raw::Bool(b) => NodeKind::Bool(b),
        Raw::Int(i) => NodeKind::Int(i),
        Raw::Float(f) => NodeKind::Float(f),
        Raw::Str(value) => {
            let first = file.slice(span).chars().next();
            NodeKind::Str {
                value,
                quoted: matches!(first, Some('"' | '\'' | '|' | '>')),
            }
        }
        Raw::Seq(items) => NodeKind::Seq(items.into_iter().map(|i| convert(file, i)).collect()),
        Raw::Map(entries) => NodeKind::Map(
            entries
                .into_iter()
                .map(|(k, v)| Entry {
                    key_span: span_of(file, k.referenced),
                    key: k.value,
                    value: convert(file, v),
                })
                .collect(),
        ),
    };
    Node { kind, span }
}

fn find_duplicate_keys(node: &Node, problems: &mut Vec<Diagnostic>) {
    match &node.kind {
        NodeKind::Map(entries) => {
            let mut first_of: HashMap<&str, Span> = HashMap::with_capacity(entries.len());
            for e in entries {
                if let Some(&first) = first_of.get(e.key.as_str()) {
                    problems.push(
                        Diagnostic::error(
                            "duplicate-key",
                            e.key_span,
                            format!("duplicate key `{}`", e.key),
                        )
                        .with_note(first, "first defined here")
                        .with_hint("remove one of the two; YAML keeps only one value per key"),
                    );
                } else {
                    first_of.insert(&e.key, e.key_span);
                }
                find_duplicate_keys(&e.value, problems);
            }
        }
        NodeKind::Seq(items) => items.iter().for_each(|i| find_duplicate_keys(i, problems)),
        _ => {}
    }
}

/// Where a JSON pointer's value (and, for map entries, its key) is written.
#[derive(Debug, Clone, Copy)]
pub struct Place {
    /// The value.
    pub value: Span,
    /// The key, for values inside a mapping.
    pub key: Option<Span>,
}

/// Maps JSON pointers (`/members/0/expose/1`) to source positions.
#[derive(Debug, Default)]
pub struct PointerIndex {
    places: HashMap<String, Place>,
}

impl PointerIndex {
    /// The place of a pointer, or of its nearest ancestor that exists.
    #[must_use]
    pub fn find(&self, pointer: &str) -> Place {
        let mut p = pointer;
        loop {
            if let Some(place) = self.places.get(p) {
                return *place;
            }
            match p.rfind('/') {
                Some(i) => p = &p[..i],
                None => {
                    return Place {
                        value: Span::default(),
                        key: None,
                    };
                }
            }
        }
    }

    /// The place of exactly this pointer, if the document has it.
    #[must_use]
    pub fn get(&self, pointer: &str) -> Option<Place> {
        self.places.get(pointer).copied()
    }
}

/// Escapes one JSON-pointer token.
#[must_use]
pub fn escape_token(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// Converts the tree to JSON and indexes every node by its pointer.
#[must_use]
pub fn to_json(node: &Node) -> (Value, PointerIndex) {
    let mut index = PointerIndex::default();
    let value = json_at(node, String::new(), None, &mut index);
    (value, index)
}

fn json_at(node: &Node, pointer: String, key: Option<Span>, index: &mut PointerIndex) -> Value {
    let value = match &node.kind {
        NodeKind::Null => Value::Null,
        NodeKind::Bool(b) => Value::Bool(*b),
        NodeKind::Int(i) => Value::from(*i),
        NodeKind::Float(f) => serde_json::Number::from_f64(*f)
            .map_or_else(|| Value::String(f.to_string()), Value::Number),
        NodeKind::Str { value, .. } => Value::String(value.clone()),
        NodeKind::Seq(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| json_at(item, format!("{pointer}/{i}"), None, index))
                .collect(),
        ),
        NodeKind::Map(entries) => {
            let mut map = serde_json::Map::new();
            for e in entries {
                let child = format!("{pointer}/{}", escape_token(&e.key));
                let v = json_at(&e.value, child, Some(e.key_span), index);
                map.insert(e.key.clone(), v);
            }
            Value::Object(map)
        }
    };
    index.places.insert(
        pointer,
        Place {
            value: node.span,
            key,
        },
    );
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> (Node, Vec<Diagnostic>) {
        parse(&SourceFile::new("t.yaml", text)).expect("parses")
    }

    #[test]
    fn pointers_map_to_values_and_keys() {
        let text = "a: 1\nlist:\n  - x\n  - \"y\"\n";
        let (node, problems) = parse_ok(text);
        assert!(problems.is_empty());
        let (json, index) = to_json(&node);
        assert_eq!(json["list"][1], "y");
        let place = index.find("/list/1");
        assert_eq!(&text[place.value.range()], "\"y\"");
        let a = index.find("/a");
        assert_eq!(&text[a.key.expect("key").range()], "a");
        assert_eq!(index.find("/list/9/zz").value, index.find("/list").value);
    }

    #[test]
    fn duplicate_keys_name_both_places() {
        let (_, problems) = parse_ok("m:\n  a: 1\n  a: 2\n");
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].code, "duplicate-key");
        assert_eq!(problems[0].span, Some(Span::new(12, 1)));
        assert_eq!(problems[0].notes[0].span, Span::new(5, 1));
    }

    #[test]
    fn syntax_errors_have_positions() {
        let file = SourceFile::new("t.yaml", "a:\n\tb: 1\n");
        let err = parse(&file).expect_err("tab");
        assert_eq!(err.code, "yaml-syntax");
        assert_eq!(file.line_col(err.span.expect("span").start).line, 2);
    }

    #[test]
    fn quoted_strings_are_marked() {
        let (node, _) = parse_ok("a: '1'\nb: c\n");
        let NodeKind::Map(entries) = node.kind else {
            panic!("map")
        };
        assert!(matches!(
            entries[0].value.kind,
            NodeKind::Str { quoted: true, .. }
        ));
        assert!(matches!(
            entries[1].value.kind,
            NodeKind::Str { quoted: false, .. }
        ));
    }
}
