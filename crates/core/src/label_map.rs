//! [`Labels`]: a resource's labels as one sorted vector of inline pairs.
//!
//! A lease has twenty-odd labels, each key and value short. Discovery of a
//! 10,000-member pond decodes 10,000 such sets, the plan projects a copy of
//! each and drops both. As a `BTreeMap` each set was five node allocations
//! and a walk of pointers at every lookup; as one vector it is one
//! allocation, a copy is one `memcpy`-like clone, and a lookup is a scan of
//! contiguous keys — faster at this size than a binary search, whose
//! comparisons the branch predictor cannot guess.

use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::labels::LabelText;

/// A resource's labels, sorted by key, each key once.
///
/// The API is the part of `BTreeMap`'s that labels need, with the same
/// meaning (iteration in key order, `insert` replacing and returning the
/// old value); it serializes as a JSON object, exactly as the map did.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Labels {
    /// Sorted by key; no key twice.
    entries: Vec<(LabelText, LabelText)>,
}

impl Labels {
    /// No labels.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            entries: Vec::new(),
        }
    }

    /// How many labels.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there is none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Removes every label.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Where `key` is: a scan comparing lengths first, so most keys are
    /// passed over without looking at their bytes.
    fn find(&self, key: &str) -> Option<usize> {
        self.entries.iter().position(|(k, _)| k.as_str() == key)
    }

    /// The value of `key`.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&LabelText> {
        self.find(key).map(|i| &self.entries[i].1)
    }

    /// The value of `key`, to change in place.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut LabelText> {
        self.find(key).map(|i| &mut self.entries[i].1)
    }

    /// Whether `key` is set.
    #[must_use]
    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_some()
    }

    /// Sets `key` to `value`; the old value, if there was one.
    pub fn insert(&mut self, key: LabelText, value: LabelText) -> Option<LabelText> {
        match self
            .entries
            .binary_search_by(|(k, _)| k.as_str().cmp(key.as_str()))
        {
            Ok(i) => Some(std::mem::replace(&mut self.entries[i].1, value)),
            Err(i) => {
                self.entries.insert(i, (key, value));
                None
            }
        }
    }

    /// Sets `key` to `value()` unless it is set (`BTreeMap`'s
    /// `entry(key).or_insert_with(value)`).
    pub fn insert_missing(&mut self, key: &str, value: impl FnOnce() -> LabelText) {
        if !self.contains_key(key) {
            self.insert(key.into(), value());
        }
    }

    /// Removes `key`; its value, if it was set.
    pub fn remove(&mut self, key: &str) -> Option<LabelText> {
        self.find(key).map(|i| self.entries.remove(i).1)
    }

    /// Keeps the labels `keep` is true for.
    pub fn retain(&mut self, mut keep: impl FnMut(&LabelText, &mut LabelText) -> bool) {
        self.entries.retain_mut(|(k, v)| keep(k, v));
    }

    /// Removes the labels whose key `take` is true for, and gives them
    /// back in key order.
    pub fn take_where(
        &mut self,
        mut take: impl FnMut(&str) -> bool,
    ) -> Vec<(LabelText, LabelText)> {
        let mut taken = Vec::new();
        self.entries.retain_mut(|(k, v)| {
            if take(k) {
                taken.push((std::mem::take(k), std::mem::take(v)));
                false
            } else {
                true
            }
        });
        taken
    }

    /// The labels in key order.
    pub fn iter(&self) -> Iter<'_> {
        Iter(self.entries.iter())
    }

    /// The keys in order.
    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &LabelText> + ExactSizeIterator {
        self.entries.iter().map(|(k, _)| k)
    }

    /// The values in key order.
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &LabelText> + ExactSizeIterator {
        self.entries.iter().map(|(_, v)| v)
    }

    /// The values in key order, to change in place.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut LabelText> {
        self.entries.iter_mut().map(|(_, v)| v)
    }

    /// Sorts pairs given in any order into labels; of a key given twice,
    /// the last value stays (as inserting them one by one would leave it).
    fn from_pairs(mut entries: Vec<(LabelText, LabelText)>) -> Self {
        if !entries.windows(2).all(|w| w[0].0 < w[1].0) {
            // Stable: equal keys keep their order, the last is the one kept.
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            let mut kept: Vec<(LabelText, LabelText)> = Vec::with_capacity(entries.len());
            for (k, v) in entries {
                match kept.last_mut() {
                    Some(last) if last.0 == k => last.1 = v,
                    _ => kept.push((k, v)),
                }
            }
            entries = kept;
        }
        Self { entries }
    }
}

/// The labels of a [`Labels`] in key order.
#[derive(Clone)]
pub struct Iter<'a>(std::slice::Iter<'a, (LabelText, LabelText)>);

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a LabelText, &'a LabelText);

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(|(k, v)| (k, v))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

impl DoubleEndedIterator for Iter<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.0.next_back().map(|(k, v)| (k, v))
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl<'a> IntoIterator for &'a Labels {
    type Item = (&'a LabelText, &'a LabelText);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl IntoIterator for Labels {
    type Item = (LabelText, LabelText);
    type IntoIter = std::vec::IntoIter<(LabelText, LabelText)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl FromIterator<(LabelText, LabelText)> for Labels {
    fn from_iter<I: IntoIterator<Item = (LabelText, LabelText)>>(pairs: I) -> Self {
        Self::from_pairs(pairs.into_iter().collect())
    }
}

impl Extend<(LabelText, LabelText)> for Labels {
    fn extend<I: IntoIterator<Item = (LabelText, LabelText)>>(&mut self, pairs: I) {
        for (k, v) in pairs {
            self.insert(k, v);
        }
    }
}

impl<const N: usize> From<[(LabelText, LabelText); N]> for Labels {
    fn from(pairs: [(LabelText, LabelText); N]) -> Self {
        pairs.into_iter().collect()
    }
}

impl std::ops::Index<&str> for Labels {
    type Output = LabelText;

    /// # Panics
    /// When `key` is not set, as `BTreeMap`'s index does.
    fn index(&self, key: &str) -> &LabelText {
        self.get(key).unwrap_or_else(|| panic!("no label `{key}`"))
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for Labels {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Pairs;
        impl<'de> Visitor<'de> for Pairs {
            type Value = Labels;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of string labels")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Labels, A::Error> {
                let mut entries = Vec::new();
                while let Some(pair) = map.next_entry::<LabelText, LabelText>()? {
                    if entries.is_empty() {
                        // Room for this label and those still to come (a
                        // lease's usual twenty-odd when the format does
                        // not say); none for an empty map.
                        entries.reserve(1 + map.size_hint().unwrap_or(15));
                    }
                    entries.push(pair);
                }
                Ok(Labels::from_pairs(entries))
            }
        }
        deserializer.deserialize_map(Pairs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_keeps_the_keys_sorted_and_replaces_values() {
        let mut l = Labels::new();
        assert_eq!(l.insert("b".into(), "1".into()), None);
        assert_eq!(l.insert("a".into(), "2".into()), None);
        assert_eq!(l.insert("c".into(), "3".into()), None);
        assert_eq!(l.insert("b".into(), "4".into()), Some("1".into()));
        assert_eq!(
            l.keys().map(LabelText::as_str).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(l["b"], "4");
        assert_eq!(l.remove("a"), Some("2".into()));
        assert_eq!(l.remove("a"), None);
        assert!(l.contains_key("c") && !l.contains_key("a"));
        assert_eq!(l.len(), 2);
    }

    #[test]
    fn decoding_sorts_and_keeps_the_last_of_a_repeated_key_as_a_btree_map_does() {
        let text = r#"{"z":"1","a":"2","m":"3","a":"4"}"#;
        let flat: Labels = serde_json::from_str(text).expect("labels");
        let tree: std::collections::BTreeMap<String, String> =
            serde_json::from_str(text).expect("map");
        assert_eq!(
            serde_json::to_string(&flat).expect("json"),
            serde_json::to_string(&tree).expect("json")
        );
        assert_eq!(format!("{flat:?}"), format!("{tree:?}"));
        let collected: Labels = [("b", "1"), ("a", "2"), ("b", "3")]
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        assert_eq!(
            collected,
            Labels::from([("a".into(), "2".into()), ("b".into(), "3".into())])
        );
        assert!(serde_json::from_str::<Labels>(r#"{"a":1}"#).is_err());
    }

    #[test]
    fn retain_and_values_mut_change_in_place() {
        let pairs = |p: &[(&str, &str)]| -> Labels {
            p.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
        };
        let mut l = pairs(&[("a", "1"), ("b", "2"), ("c", "3")]);
        l.retain(|k, _| k != "b");
        for v in l.values_mut() {
            v.push('!');
        }
        assert_eq!(l, pairs(&[("a", "1!"), ("c", "3!")]));
        assert_eq!(l.iter().next_back(), Some((&"c".into(), &"3!".into())));
        assert_eq!(l.take_where(|k| k == "c"), vec![("c".into(), "3!".into())]);
        assert_eq!(l, pairs(&[("a", "1!")]));
    }
}
