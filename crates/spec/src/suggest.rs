//! "Did you mean …?" for misspelled keys, slugs and provider names.

/// The closest candidate to `word`, if one is close enough to be a likely
/// typo. Case, `-` and `_` are ignored when comparing, so `memory_mb`
/// suggests `memoryMB`.
#[must_use]
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let w = fold(word);
    candidates
        .into_iter()
        .map(|c| (distance(&w, &fold(c)), c))
        .filter(|&(d, c)| d <= fold(c).len().max(w.len()).div_ceil(3))
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// "Did you mean" over one fixed set of names (member slugs), asked many
/// times: each name is folded once, and the total work is bounded so that a
/// document with thousands of misspelt names among thousands of members stays
/// fast; past the bound, no more suggestions are made.
pub struct Names<'a> {
    names: Vec<(Vec<char>, &'a str)>,
    /// Name comparisons left.
    budget: std::cell::Cell<usize>,
}

/// Name comparisons one [`Names`] may make in all: two hundred questions
/// against a thousand members.
const COMPARISONS: usize = 200_000;

/// How many names a listing shows before it only counts.
const LISTED: usize = 20;

impl<'a> Names<'a> {
    /// The names suggestions are drawn from.
    #[must_use]
    pub fn new(names: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            names: names.into_iter().map(|n| (fold(n), n)).collect(),
            budget: std::cell::Cell::new(COMPARISONS),
        }
    }

    /// The closest name to `word`, if one is close enough to be a likely typo
    /// (and the budget allows looking).
    #[must_use]
    pub fn closest(&self, word: &str) -> Option<&'a str> {
        let left = self.budget.get();
        if left < self.names.len() {
            return None;
        }
        self.budget.set(left - self.names.len());
        let w = fold(word);
        self.names
            .iter()
            .filter(|(f, _)| f.len().abs_diff(w.len()) <= f.len().max(w.len()).div_ceil(3))
            .map(|(f, c)| (distance(&w, f), f.len(), *c))
            .filter(|&(d, len, _)| d <= len.max(w.len()).div_ceil(3))
            .min_by_key(|&(d, _, _)| d)
            .map(|(_, _, c)| c)
    }

    /// `a, b, c`, or the first names and a count when there are many.
    #[must_use]
    pub fn listing(&self) -> String {
        let shown: Vec<&str> = self.names.iter().take(LISTED).map(|(_, n)| *n).collect();
        if self.names.len() <= LISTED {
            shown.join(", ")
        } else {
            format!("{}, … ({} in all)", shown.join(", "), self.names.len())
        }
    }
}

fn fold(s: &str) -> Vec<char> {
    s.chars()
        .filter(|c| !matches!(c, '-' | '_'))
        .flat_map(char::to_lowercase)
        .collect()
}

/// Optimal string alignment distance (Levenshtein plus transpositions).
fn distance(a: &[char], b: &[char]) -> usize {
    let mut prev2 = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                cur[j] = cur[j].min(prev2[j - 2] + 1);
            }
        }
        prev2 = std::mem::replace(&mut prev, cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_words_only() {
        let keys = ["expose", "setup", "depends_on", "memoryMB"];
        assert_eq!(did_you_mean("expoze", keys), Some("expose"));
        assert_eq!(did_you_mean("dependson", keys), Some("depends_on"));
        assert_eq!(did_you_mean("memory_mb", keys), Some("memoryMB"));
        assert_eq!(did_you_mean("stepu", keys), Some("setup"));
        assert_eq!(did_you_mean("zzzzzz", keys), None);
        assert_eq!(did_you_mean("hetzenr", ["hetzner", "aws"]), Some("hetzner"));
    }

    #[test]
    fn names_suggest_like_did_you_mean_within_a_budget() {
        let slugs = ["db", "api", "worker"];
        let names = Names::new(slugs);
        assert_eq!(names.closest("wroker"), Some("worker"));
        assert_eq!(names.closest("zzzzzz"), None);
        assert_eq!(names.listing(), "db, api, worker");
        let many: Vec<String> = (0..COMPARISONS / 1000 + 30)
            .map(|i| format!("m{i}"))
            .collect();
        let names = Names::new(many.iter().map(String::as_str));
        let answered = (0..2000).filter(|_| names.closest("m1x").is_some()).count();
        assert_eq!(answered, COMPARISONS / names.names.len(), "bounded work");
        assert!(
            names
                .listing()
                .ends_with(&format!("… ({} in all)", many.len()))
        );
    }
}
