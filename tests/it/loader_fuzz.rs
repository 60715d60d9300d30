//! Property test of the loader: random and mutated documents never make it
//! panic, and every diagnostic it reports lies inside the input.

use std::path::Path;

use crabbox_spec::interpolate::Variables;
use crabbox_spec::load::load_str;
use proptest::prelude::*;

const SEED_DOCS: [&str; 3] = [
    include_str!("../../examples/local/pond.yaml"),
    include_str!("../../examples/pr-e2e/pond.yaml"),
    include_str!("../corpus/valid/all-providers.yaml"),
];

/// A document mutated by byte-level edits at character boundaries.
fn mutated() -> impl Strategy<Value = String> {
    let edits = prop::collection::vec(
        (0usize..10_000, 0u8..4, "[ -~\t\n:{}\\[\\]\"'#&*!|>$-]{0,6}"),
        1..6,
    );
    (0..SEED_DOCS.len(), edits).prop_map(|(seed, edits)| {
        let mut doc = SEED_DOCS[seed].to_owned();
        for (pos, kind, text) in edits {
            let mut at = pos % (doc.len() + 1);
            while !doc.is_char_boundary(at) {
                at -= 1;
            }
            match kind {
                0 => doc.insert_str(at, &text),
                1 => {
                    let mut end = (at + text.len().max(1)).min(doc.len());
                    while !doc.is_char_boundary(end) {
                        end += 1;
                    }
                    doc.replace_range(at..end, "");
                }
                2 => {
                    let line_end = doc[at..].find('\n').map_or(doc.len(), |i| at + i + 1);
                    let line = doc[at..line_end].to_owned();
                    doc.insert_str(line_end, &line);
                }
                _ => {
                    let mut end = (at + text.len()).min(doc.len());
                    while !doc.is_char_boundary(end) {
                        end += 1;
                    }
                    doc.replace_range(at..end, &text);
                }
            }
        }
        doc
    })
}

fn check_inside(doc: &str) -> Result<(), TestCaseError> {
    let loaded = load_str(
        "fuzz.yaml",
        doc,
        Path::new("."),
        &Variables::fixed(vec![("PR_NUMBER".into(), "1".into())]),
    );
    let lines: Vec<&str> = doc.split('\n').collect();
    for d in &loaded.diagnostics {
        let spans = d.span.into_iter().chain(d.notes.iter().map(|n| n.span));
        for span in spans {
            prop_assert!(
                span.start <= span.end && span.end <= doc.len(),
                "{d:?} outside {} bytes",
                doc.len()
            );
            let lc = loaded.file.line_col(span.start);
            prop_assert!(
                lc.line >= 1 && lc.line <= lines.len(),
                "{d:?} line {}",
                lc.line
            );
            prop_assert!(
                lc.column >= 1 && lc.column <= lines[lc.line - 1].chars().count() + 1,
                "{d:?} col {}",
                lc.column
            );
        }
    }
    // Rendering must not panic either.
    let _ = crabbox_spec::diagnostic::render_human(&loaded.file, &loaded.diagnostics);
    prop_assert_eq!(loaded.pond.is_some(), !loaded.has_errors());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, .. ProptestConfig::default() })]

    #[test]
    fn mutated_documents_never_panic_and_positions_are_inside(doc in mutated()) {
        check_inside(&doc)?;
    }

    #[test]
    fn random_text_never_panics(doc in "[ -~\t\n\u{e9}\u{1F980}]{0,300}") {
        check_inside(&doc)?;
    }

    #[test]
    fn random_yamlish_never_panics(doc in "(([a-z_]{1,8}|-|  |\\$\\{[A-Z]{0,3}\\}?|[0-9]{1,6}|: |\n|\\[|\\]|\\{|\\}|,|\"|')){0,80}") {
        check_inside(&doc)?;
    }
}
