//! The text of one input file and the mapping from byte offsets to
//! `line:column`, so every later stage can speak in byte spans and only the
//! renderer has to think about lines.

use std::ops::Range;

/// A half-open byte range into a [`SourceFile`]'s text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Span {
    /// First byte.
    pub start: usize,
    /// One past the last byte; equal to `start` for a point.
    pub end: usize,
}

impl Span {
    /// A span from `start` covering `len` bytes.
    #[must_use]
    pub fn new(start: usize, len: usize) -> Self {
        Self {
            start,
            end: start + len,
        }
    }

    /// The span as a range, for slicing.
    #[must_use]
    pub fn range(self) -> Range<usize> {
        self.start..self.end
    }
}

/// One loaded file: its name as the user wrote it and its text.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// The path as given on the command line, used verbatim in messages.
    pub name: String,
    /// The full text.
    pub text: String,
    /// Byte offset of the start of every line.
    line_starts: Vec<usize>,
    /// The number of characters before every [`CHECKPOINT`]-th byte, so that a
    /// column costs at most that many bytes of counting, however long the line.
    char_checkpoints: Vec<usize>,
}

/// Bytes between two entries of [`SourceFile`]'s character checkpoints.
const CHECKPOINT: usize = 256;

/// Characters that start in `bytes` (UTF-8 continuation bytes start none).
fn chars_in(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b & 0xC0 != 0x80).count()
}

/// A 1-based line and a 1-based column counted in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct LineCol {
    /// 1-based line number.
    pub line: usize,
    /// 1-based column, in characters (not bytes), as editors count.
    pub column: usize,
}

impl SourceFile {
    /// Wraps `text` read from `name`.
    #[must_use]
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Self {
        let text = text.into();
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        let mut char_checkpoints = vec![0];
        for chunk in text.as_bytes().chunks(CHECKPOINT) {
            let before = char_checkpoints.last().copied().unwrap_or_default();
            char_checkpoints.push(before + chars_in(chunk));
        }
        Self {
            name: name.into(),
            text,
            line_starts,
            char_checkpoints,
        }
    }

    /// The line and column of a byte offset (clamped into the text and to a
    /// character boundary).
    #[must_use]
    pub fn line_col(&self, offset: usize) -> LineCol {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.line_starts.partition_point(|&s| s <= offset) - 1;
        let column = self.chars_before(offset) - self.chars_before(self.line_starts[line]) + 1;
        LineCol {
            line: line + 1,
            column,
        }
    }

    /// The number of characters before byte `offset` (a character boundary).
    fn chars_before(&self, offset: usize) -> usize {
        let k = offset / CHECKPOINT;
        self.char_checkpoints[k] + chars_in(&self.text.as_bytes()[k * CHECKPOINT..offset])
    }

    /// The text of a 1-based line without its line ending.
    #[must_use]
    pub fn line_text(&self, line: usize) -> &str {
        let start = self.line_starts[line - 1];
        let end = self
            .line_starts
            .get(line)
            .map_or(self.text.len(), |&next| next);
        self.text[start..end].trim_end_matches(['\n', '\r'])
    }

    /// The source text under a span (empty when out of range).
    #[must_use]
    pub fn slice(&self, span: Span) -> &str {
        self.text.get(span.range()).unwrap_or("")
    }

    /// The offset of the first byte of a 1-based line and 1-based character column.
    #[must_use]
    pub fn offset_of(&self, line: usize, column: usize) -> usize {
        let Some(&start) = self.line_starts.get(line.saturating_sub(1)) else {
            return self.text.len();
        };
        let rest = &self.text[start..];
        start
            + rest
                .char_indices()
                .nth(column.saturating_sub(1))
                .map_or(rest.len(), |(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters() {
        let f = SourceFile::new("x", "ab\nçd: 1\n");
        assert_eq!(f.line_col(0), LineCol { line: 1, column: 1 });
        assert_eq!(f.line_col(3), LineCol { line: 2, column: 1 });
        // 'ç' is two bytes; 'd' is the second character.
        assert_eq!(f.line_col(5), LineCol { line: 2, column: 2 });
        assert_eq!(f.line_text(2), "çd: 1");
        assert_eq!(f.offset_of(2, 2), 5);
        assert_eq!(f.line_col(999).line, 3);
    }

    #[test]
    fn columns_on_long_lines_count_characters_across_checkpoints() {
        let line: String = "é".repeat(300) + "x";
        let f = SourceFile::new("x", format!("a\n{line}\n"));
        let x = 2 + "é".len() * 300;
        assert_eq!(
            f.line_col(x),
            LineCol {
                line: 2,
                column: 301
            }
        );
        assert_eq!(f.offset_of(2, 301), x);
    }
}
