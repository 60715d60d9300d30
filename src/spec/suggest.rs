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
}
