//! [`FilterIndex`]: which subscribers' topic filters match a topic, without scanning them all.
//!
//! A trie over filter levels. Matching a topic walks at most three branches per level (the
//! literal level, `+`, and the `#` set kept on each node), so its cost depends on the topic's
//! depth and on the number of matching subscribers, not on how many subscribers exist.
//! The same MQTT rules as [`TopicFilter::matches`] apply, including `$`-topics not being
//! matched by a leading wildcard; a property test checks the two agree.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

use crate::topic::TopicFilter;

/// A set of `(filter, key)` subscriptions, indexed for matching topics.
#[derive(Debug, Clone)]
pub struct FilterIndex<K> {
    root: Node<K>,
    len: usize,
}

#[derive(Debug, Clone)]
struct Node<K> {
    /// Literal child levels.
    children: HashMap<Box<str>, Node<K>>,
    /// The `+` child.
    plus: Option<Box<Node<K>>>,
    /// Keys whose filter ends with `#` right below this node (they match this node's topic
    /// and everything under it).
    hash: HashSet<K>,
    /// Keys whose filter ends exactly at this node.
    exact: HashSet<K>,
}

impl<K> Default for Node<K> {
    fn default() -> Self {
        Self {
            children: HashMap::new(),
            plus: None,
            hash: HashSet::new(),
            exact: HashSet::new(),
        }
    }
}

impl<K> Node<K> {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_empty()
            && self.exact.is_empty()
    }
}

impl<K> Default for FilterIndex<K> {
    fn default() -> Self {
        Self {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<K: Eq + Hash + Clone> FilterIndex<K> {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of `(filter, key)` subscriptions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is subscribed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `key` under `filter`; false if it was already there.
    pub fn insert(&mut self, filter: &TopicFilter, key: K) -> bool {
        let mut node = &mut self.root;
        let mut levels = filter.levels().peekable();
        while let Some(level) = levels.next() {
            if level == "#" {
                let added = node.hash.insert(key);
                self.len += usize::from(added);
                return added;
            }
            node = if level == "+" {
                node.plus.get_or_insert_with(Default::default)
            } else {
                node.children.entry(level.into()).or_default()
            };
            if levels.peek().is_none() {
                let added = node.exact.insert(key);
                self.len += usize::from(added);
                return added;
            }
        }
        false
    }

    /// Removes `key` from `filter`; false if it was not there. Empty branches are pruned.
    ///
    /// Iterative: a filter of any depth is removed without recursion (the depth of a filter
    /// is the client's choice; the HTTP side also bounds it, see
    /// [`TopicFilter::parse_bounded`]).
    pub fn remove(&mut self, filter: &TopicFilter, key: &K) -> bool {
        let levels: Vec<&str> = filter.levels().collect();
        // The path below the root, as far as it exists, ending at the node holding `key`.
        let Some((last, path)) = levels.split_last() else {
            return false;
        };
        let mut node = &mut self.root;
        for level in path {
            if *level == "#" {
                return false;
            }
            let next = if *level == "+" {
                node.plus.as_deref_mut()
            } else {
                node.children.get_mut(*level)
            };
            let Some(next) = next else {
                return false;
            };
            node = next;
        }
        let removed = if *last == "#" {
            node.hash.remove(key)
        } else {
            let child = if *last == "+" {
                node.plus.as_deref_mut()
            } else {
                node.children.get_mut(*last)
            };
            child.is_some_and(|c| c.exact.remove(key))
        };
        if removed {
            self.len -= 1;
            self.prune(&levels);
        }
        removed
    }

    /// Drops the empty nodes along `levels`, deepest first, each found from the root again (the
    /// depth is bounded where filters enter, so this stays cheap).
    fn prune(&mut self, levels: &[&str]) {
        let steps = match levels.last() {
            Some(&"#") => levels.len() - 1,
            _ => levels.len(),
        };
        for depth in (1..=steps).rev() {
            let mut node = &mut self.root;
            for level in &levels[..depth - 1] {
                let next = if *level == "+" {
                    node.plus.as_deref_mut()
                } else {
                    node.children.get_mut(*level)
                };
                match next {
                    Some(next) => node = next,
                    None => return,
                }
            }
            let level = levels[depth - 1];
            let empty = if level == "+" {
                node.plus.as_deref().is_some_and(Node::is_empty)
            } else {
                node.children.get(level).is_some_and(Node::is_empty)
            };
            if !empty {
                return;
            }
            if level == "+" {
                node.plus = None;
            } else {
                node.children.remove(level);
            }
        }
    }

    /// Calls `f` for every key whose filter matches `topic`. A key subscribed with several
    /// matching filters is reported once per filter.
    pub fn for_each_match(&self, topic: &str, mut f: impl FnMut(&K)) {
        let levels: Vec<&str> = topic.split('/').collect();
        let dollar = topic.starts_with('$');
        Self::walk(&self.root, &levels, true, dollar, &mut f);
    }

    /// The distinct keys whose filters match `topic`.
    pub fn matches(&self, topic: &str) -> HashSet<K> {
        let mut out = HashSet::new();
        self.for_each_match(topic, |k| {
            out.insert(k.clone());
        });
        out
    }

    fn walk(node: &Node<K>, levels: &[&str], at_root: bool, dollar: bool, f: &mut impl FnMut(&K)) {
        // A leading wildcard never matches a `$` topic.
        let wildcards = !(at_root && dollar);
        if wildcards {
            node.hash.iter().for_each(&mut *f);
        }
        let Some((&level, rest)) = levels.split_first() else {
            node.exact.iter().for_each(&mut *f);
            return;
        };
        if let Some(child) = node.children.get(level) {
            Self::walk(child, rest, false, dollar, f);
        }
        if wildcards {
            if let Some(child) = node.plus.as_deref() {
                Self::walk(child, rest, false, dollar, f);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn f(s: &str) -> TopicFilter {
        TopicFilter::parse(s).unwrap()
    }

    #[test]
    fn basic_matching() {
        let mut idx = FilterIndex::new();
        idx.insert(&f("sensors/#"), 1);
        idx.insert(&f("sensors/+/temperature"), 2);
        idx.insert(&f("sensors/d1/temperature"), 3);
        idx.insert(&f("#"), 4);
        idx.insert(&f("$SYS/#"), 5);
        fn sorted(idx: &FilterIndex<i32>, t: &str) -> Vec<i32> {
            let mut v: Vec<_> = idx.matches(t).into_iter().collect();
            v.sort();
            v
        }
        let m = |idx: &FilterIndex<i32>, t| sorted(idx, t);
        assert_eq!(m(&idx, "sensors/d1/temperature"), vec![1, 2, 3, 4]);
        assert_eq!(m(&idx, "sensors/d2/temperature"), vec![1, 2, 4]);
        assert_eq!(m(&idx, "sensors"), vec![1, 4]);
        assert_eq!(m(&idx, "other"), vec![4]);
        assert_eq!(m(&idx, "$SYS/uptime"), vec![5]);
        assert_eq!(idx.len(), 5);
        assert!(idx.remove(&f("sensors/#"), &1));
        assert!(!idx.remove(&f("sensors/#"), &1));
        assert_eq!(m(&idx, "sensors/d1/temperature"), vec![2, 3, 4]);
        for (filter, k) in [
            ("sensors/+/temperature", 2),
            ("sensors/d1/temperature", 3),
            ("#", 4),
            ("$SYS/#", 5),
        ] {
            assert!(idx.remove(&f(filter), &k));
        }
        assert!(idx.is_empty());
        assert!(idx.root.is_empty(), "branches pruned");
    }

    fn level() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["a", "b", "", "$s", "+", "#"])
    }

    fn filter() -> impl Strategy<Value = String> {
        prop::collection::vec(level(), 1..5).prop_map(|v| v.join("/"))
    }

    fn topic() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(vec!["a", "b", "", "$s"]), 1..5)
            .prop_map(|v| v.join("/"))
    }

    proptest! {
        #[test]
        fn agrees_with_filter_matches(filters in prop::collection::vec(filter(), 1..20), topics in prop::collection::vec(topic(), 1..20)) {
            let parsed: Vec<(usize, TopicFilter)> = filters.iter().enumerate()
                .filter_map(|(i, s)| TopicFilter::parse(s).ok().map(|p| (i, p))).collect();
            let mut idx = FilterIndex::new();
            for (i, p) in &parsed { idx.insert(p, *i); }
            for t in &topics {
                let expected: HashSet<usize> = parsed.iter().filter(|(_, p)| p.matches(t)).map(|(i, _)| *i).collect();
                prop_assert_eq!(idx.matches(t), expected, "topic {:?}", t);
            }
            for (i, p) in &parsed { idx.remove(p, i); }
            prop_assert!(idx.is_empty());
        }
    }

    /// Removing a filter does not recurse: one of 3,000 levels is inserted and removed on a
    /// thread with a 64 KiB stack (the recursive removal overflowed a tokio worker's stack with
    /// 7,000 levels), and the emptied branches are pruned deepest first, so dropping them does
    /// not recurse either.
    #[test]
    fn a_deep_filter_is_removed_without_recursion() {
        let filter = TopicFilter::parse(&format!("sensors{}", "/".repeat(2_999))).unwrap();
        let plus = TopicFilter::parse(&format!("a{}/#", "/+".repeat(2_000))).unwrap();
        std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || {
                let mut index = FilterIndex::new();
                assert!(index.insert(&filter, 1u32));
                assert!(index.insert(&plus, 2u32));
                assert!(index.remove(&filter, &1));
                assert!(!index.remove(&filter, &1));
                assert!(index.remove(&plus, &2));
                assert!(index.is_empty());
                assert!(index.root.is_empty(), "every branch pruned");
            })
            .unwrap()
            .join()
            .expect("no stack overflow");
    }

    /// Removal prunes exactly the branches left empty: siblings and shared prefixes stay.
    #[test]
    fn removal_prunes_only_empty_branches() {
        let f = |s: &str| TopicFilter::parse(s).unwrap();
        let mut index = FilterIndex::new();
        index.insert(&f("a/b/c"), 1u32);
        index.insert(&f("a/b"), 2);
        index.insert(&f("a/+/#"), 3);
        assert!(index.remove(&f("a/b/c"), &1));
        assert_eq!(index.matches("a/b"), [2, 3].into_iter().collect());
        assert!(index.remove(&f("a/+/#"), &3));
        assert_eq!(index.matches("a/b"), [2].into_iter().collect());
        assert!(index.root.children["a"].plus.is_none());
        assert!(index.remove(&f("a/b"), &2));
        assert!(index.root.is_empty());
    }
}
