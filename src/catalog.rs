//! The catalog's indexes, in memory: upcoming concerts by start time, by
//! title and by category, nearest first, ties by id.
//!
//! Concerts never change after creation (their availability is read from
//! the concert actor's published counter), so the indexes only grow; they
//! sit behind one `RwLock` that only concert creation writes. The engine is
//! the cache: there is no second copy to keep in sync.

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;

use concert_actors::clock::TimestampMs;
use concert_actors::concert::ConcertInfo;
use concert_actors::types::ConcertId;
use parking_lot::RwLock;

/// A concert's place in every index.
pub type CatalogKey = (TimestampMs, ConcertId);

#[derive(Default)]
struct Indexes {
    by_start: BTreeSet<CatalogKey>,
    by_title: HashMap<String, BTreeSet<CatalogKey>>,
    by_category: HashMap<String, BTreeSet<CatalogKey>>,
}

/// One page of concert ids plus the key to continue after.
pub struct CatalogPage {
    pub ids: Vec<ConcertId>,
    pub next: Option<CatalogKey>,
}

#[derive(Default)]
pub struct Catalog {
    indexes: RwLock<Indexes>,
}

impl Catalog {
    pub fn add(&self, info: &ConcertInfo) {
        let key = (info.starts_at_ms, info.id);
        let mut idx = self.indexes.write();
        idx.by_start.insert(key);
        idx.by_title.entry(info.title.clone()).or_default().insert(key);
        idx.by_category.entry(info.category.clone()).or_default().insert(key);
    }

    /// Concerts starting at or after `from_ms` (and after `after`, a cursor),
    /// filtered by exact `title` and `category`, nearest first.
    pub fn page(
        &self,
        from_ms: TimestampMs,
        title: Option<&str>,
        category: Option<&str>,
        after: Option<CatalogKey>,
        limit: usize,
    ) -> CatalogPage {
        let idx = self.indexes.read();
        let empty = BTreeSet::new();
        let (set, other_filter) = match (title, category) {
            (Some(t), c) => (idx.by_title.get(t).unwrap_or(&empty), c),
            (None, Some(c)) => (idx.by_category.get(c).unwrap_or(&empty), None),
            (None, None) => (&idx.by_start, None),
        };
        let lower = match after {
            Some(key) if key >= (from_ms, 0) => Bound::Excluded(key),
            _ => Bound::Included((from_ms, 0)),
        };
        let in_category = |key: &CatalogKey| match other_filter {
            None => true,
            Some(c) => idx.by_category.get(c).is_some_and(|s| s.contains(key)),
        };
        let mut keys: Vec<CatalogKey> = set
            .range((lower, Bound::Unbounded))
            .filter(|k| in_category(k))
            .take(limit + 1)
            .copied()
            .collect();
        let next = if keys.len() > limit {
            keys.truncate(limit);
            keys.last().copied()
        } else {
            None
        };
        CatalogPage {
            ids: keys.into_iter().map(|(_, id)| id).collect(),
            next,
        }
    }

    /// Ids of the concerts of `title` starting after `now_ms`, soonest first.
    pub fn upcoming_of_title(&self, title: &str, now_ms: TimestampMs) -> Vec<ConcertId> {
        let idx = self.indexes.read();
        idx.by_title
            .get(title)
            .map(|set| {
                set.range((Bound::Excluded((now_ms, u64::MAX)), Bound::Unbounded))
                    .map(|&(_, id)| id)
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.indexes.read().by_start.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A cursor as clients see it: `<startsAtMs>.<id>`.
pub fn encode_cursor(key: CatalogKey) -> String {
    format!("{}.{}", key.0, key.1)
}

pub fn decode_cursor(text: &str) -> Option<CatalogKey> {
    let (starts, id) = text.split_once('.')?;
    Some((starts.parse().ok()?, id.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use concert_actors::pricing::Pricing;

    fn info(id: ConcertId, starts_at_ms: TimestampMs, title: &str, category: &str) -> ConcertInfo {
        ConcertInfo {
            id,
            title: title.into(),
            category: category.into(),
            venue: "hall".into(),
            starts_at_ms,
            seat_count: 10,
            pricing: Pricing::flat(1),
        }
    }

    #[test]
    fn pages_are_nearest_first_ties_by_id_and_never_repeat_or_skip() {
        let catalog = Catalog::default();
        for (id, at) in [(1, 300), (2, 100), (3, 100), (4, 200), (5, 50)] {
            catalog.add(&info(id, at, "t", "pop"));
        }
        let first = catalog.page(100, None, None, None, 2);
        assert_eq!(first.ids, vec![2, 3], "from 100, nearest first, ties by id");
        let second = catalog.page(100, None, None, first.next, 2);
        assert_eq!(second.ids, vec![4, 1]);
        assert_eq!(second.next, None, "the last page has no cursor");
    }

    #[test]
    fn title_and_category_filter_exactly() {
        let catalog = Catalog::default();
        catalog.add(&info(1, 100, "IU", "pop"));
        catalog.add(&info(2, 200, "IU", "ballad"));
        catalog.add(&info(3, 300, "iu", "pop"));
        assert_eq!(catalog.page(0, Some("IU"), None, None, 10).ids, vec![1, 2]);
        assert_eq!(catalog.page(0, Some("IU"), Some("pop"), None, 10).ids, vec![1]);
        assert_eq!(catalog.page(0, None, Some("pop"), None, 10).ids, vec![1, 3]);
        assert_eq!(catalog.upcoming_of_title("IU", 150), vec![2]);
        assert_eq!(decode_cursor(&encode_cursor((5, 7))), Some((5, 7)));
        assert_eq!(decode_cursor("junk"), None);
    }
}
