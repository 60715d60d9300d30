//! An environment for tests of code that reads variables from a map.

use std::collections::HashMap;

/// The map of `pairs`.
pub(crate) fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}
