//! The encoded seat-map JSON, cached per (concert, status filter) under the
//! concert's seat-map version (`ConcertHandle::seat_map_version`).
//!
//! Seat maps are read far more often than they change. A reader that finds
//! the current version in the cache answers with the stored bytes: no
//! message to the concert's actor, no JSON encoding, no allocation beyond a
//! reference count. The first reader after a change asks the actor and
//! stores what it encoded under the version it read *before* asking, so an
//! entry is never newer-labelled than its content: a hold, payment, cancel
//! or expiry publishes a new version in the same actor turn, and every later
//! reader misses until the new map is stored.
//!
//! Misses are single-flight ([`SeatMapCache::get_or_load`]): when many
//! readers of a hot concert miss at once (right after a change), one of them
//! asks the actor and encodes; the others wait for its body instead of each
//! sending a full seat listing to the concert's one thread.
//!
//! Memory is bounded: when storing an entry would take the cache past
//! [`SeatMapCache::DEFAULT_BUDGET_BYTES`], the cache is emptied first (a
//! rare event that costs one re-encoding per map read afterwards).

use std::future::Future;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use actix_web::web::Bytes;
use concert_actors::concert_actor::SeatView;
use concert_actors::types::{ConcertId, SeatStatus};
use parking_lot::{Mutex, RwLock};
use rustc_hash::FxHashMap;
use tokio::sync::watch;

/// Which seats a map lists (the `status` query parameter).
type Filter = Option<SeatStatus>;

fn filter_key(filter: Filter) -> u8 {
    match filter {
        None => 0,
        Some(SeatStatus::Available) => 1,
        Some(SeatStatus::Held) => 2,
        Some(SeatStatus::Sold) => 3,
    }
}

struct Entry {
    version: u64,
    body: Bytes,
}

#[derive(Default)]
struct Entries {
    map: FxHashMap<(ConcertId, u8), Entry>,
    bytes: usize,
}

type Key = (ConcertId, u8);

/// A listing in progress: the version its reader saw before asking, and
/// where its body will appear (`None` until then; the sender dropped
/// without a body means the load failed).
struct Loading {
    version: u64,
    body: watch::Receiver<Option<Bytes>>,
}

pub struct SeatMapCache {
    entries: RwLock<Entries>,
    budget_bytes: usize,
    loading: Mutex<FxHashMap<Key, Loading>>,
    /// Listings asked of the actors (every miss that did not share one).
    loads: AtomicU64,
}

impl Default for SeatMapCache {
    fn default() -> Self {
        Self::with_budget(Self::DEFAULT_BUDGET_BYTES)
    }
}

impl SeatMapCache {
    /// 64 MiB: about 1,400 maps of 1,000 seats, or 14 of 100,000.
    pub const DEFAULT_BUDGET_BYTES: usize = 64 << 20;

    pub fn with_budget(budget_bytes: usize) -> Self {
        Self {
            entries: RwLock::new(Entries::default()),
            budget_bytes,
            loading: Mutex::new(FxHashMap::default()),
            loads: AtomicU64::new(0),
        }
    }

    /// The map at `version` or newer: from the cache, or from a listing
    /// already under way for this map at `version` or newer (its seats are
    /// at least as new as `version`), or else from `load`, whose body is
    /// stored and handed to every reader that waited for it. A failed load
    /// is this reader's error; the readers that waited for it try again.
    pub async fn get_or_load<E, Fut>(
        &self,
        concert: ConcertId,
        filter: Filter,
        version: u64,
        load: impl FnOnce() -> Fut,
    ) -> Result<Bytes, E>
    where
        Fut: Future<Output = Result<Bytes, E>>,
    {
        let key = (concert, filter_key(filter));
        let sender = loop {
            if let Some(body) = self.get(concert, filter, version) {
                return Ok(body);
            }
            let mut waiting = {
                let mut loading = self.loading.lock();
                match loading.get(&key) {
                    Some(under_way) if under_way.version >= version => under_way.body.clone(),
                    _ => {
                        let (sender, body) = watch::channel(None);
                        loading.insert(key, Loading { version, body });
                        break sender;
                    }
                }
            };
            let shared = match waiting.wait_for(Option::is_some).await {
                Ok(body) => body.clone(),
                Err(_) => None,
            };
            if let Some(body) = shared {
                return Ok(body);
            }
            // That load failed (its reader got the error): try again.
        };
        // This reader loads. The guard ends the entry however this ends
        // (an error, or the reader going away mid-load), waking the waiters.
        let guard = LoadGuard {
            cache: self,
            key,
            version,
            sender,
        };
        self.loads.fetch_add(1, Ordering::Relaxed);
        let body = load().await?;
        self.put(concert, filter, version, body.clone());
        guard.sender.send_replace(Some(body.clone()));
        Ok(body)
    }

    /// Listings asked of the actors so far (tests, metrics).
    pub fn loads(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }

    /// The stored body of this map if it was encoded at exactly `version`.
    pub fn get(&self, concert: ConcertId, filter: Filter, version: u64) -> Option<Bytes> {
        let entries = self.entries.read();
        entries
            .map
            .get(&(concert, filter_key(filter)))
            .filter(|entry| entry.version == version)
            .map(|entry| entry.body.clone())
    }

    /// Stores `body`, encoded from seats read after `version` was seen. An
    /// entry of a later version is kept (a slow reader does not overwrite a
    /// newer map); a body larger than the whole budget is not stored.
    pub fn put(&self, concert: ConcertId, filter: Filter, version: u64, body: Bytes) {
        if body.len() > self.budget_bytes {
            return;
        }
        let key = (concert, filter_key(filter));
        let mut entries = self.entries.write();
        let old_len = match entries.map.get(&key) {
            Some(old) if old.version > version => return,
            Some(old) => old.body.len(),
            None => 0,
        };
        if entries.bytes - old_len + body.len() > self.budget_bytes {
            entries.map.clear();
            entries.bytes = 0;
        } else {
            entries.bytes -= old_len;
        }
        entries.bytes += body.len();
        entries.map.insert(key, Entry { version, body });
    }

    /// Bytes of the stored bodies (tests, metrics).
    pub fn stored_bytes(&self) -> usize {
        self.entries.read().bytes
    }
}

/// Removes a finished load's entry (unless a load of a newer version took
/// its place) and, by dropping the sender, wakes its waiters.
struct LoadGuard<'a> {
    cache: &'a SeatMapCache,
    key: Key,
    version: u64,
    sender: watch::Sender<Option<Bytes>>,
}

impl Drop for LoadGuard<'_> {
    fn drop(&mut self) {
        let mut loading = self.cache.loading.lock();
        if loading
            .get(&self.key)
            .is_some_and(|entry| entry.version == self.version)
        {
            loading.remove(&self.key);
        }
    }
}

/// The `SeatMapResponse` JSON (`{"concertId":..,"seats":[{"number":..,
/// "price":..,"status":".."},..]}`), written directly from the actor's seat
/// list: byte for byte what serde_json writes for `api::SeatMapResponse`
/// (a test checks it), without the intermediate `Vec<SeatDto>` and without
/// escaping the constant status names.
pub fn encode(concert: ConcertId, seats: &[SeatView]) -> Bytes {
    // `{"number":4294967295,"price":-9223372036854775808,"status":"AVAILABLE"},` is 73 bytes;
    // typical seats take about 45.
    let mut out = Vec::with_capacity(40 + seats.len() * 48);
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{{\"concertId\":{concert},\"seats\":[");
    for (i, seat) in seats.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let _ = write!(
            out,
            "{{\"number\":{},\"price\":{},\"status\":\"{}\"}}",
            seat.number,
            seat.price,
            seat.status.as_str()
        );
    }
    out.extend_from_slice(b"]}");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{SeatDto, SeatMapResponse};

    fn seat(number: u32, price: i64, status: SeatStatus) -> SeatView {
        SeatView { number, price, status }
    }

    #[test]
    fn encode_matches_serde_json_byte_for_byte() {
        let seats = [
            seat(1, 50_000, SeatStatus::Available),
            seat(2, 0, SeatStatus::Held),
            seat(u32::MAX, i64::MAX, SeatStatus::Sold),
            seat(4, -1, SeatStatus::Available),
        ];
        for (concert, seats) in [(7, &seats[..]), (u64::MAX, &seats[..1]), (1, &[][..])] {
            let expected = serde_json::to_vec(&SeatMapResponse {
                concert_id: concert,
                seats: seats
                    .iter()
                    .map(|s| SeatDto {
                        number: s.number,
                        price: s.price,
                        status: s.status.as_str(),
                    })
                    .collect(),
            })
            .expect("a SeatMapResponse always serializes");
            assert_eq!(
                std::str::from_utf8(&encode(concert, seats)),
                std::str::from_utf8(&expected),
                "concert {concert}"
            );
        }
    }

    #[test]
    fn an_entry_is_served_only_at_its_version_and_per_filter() {
        let cache = SeatMapCache::default();
        assert_eq!(cache.get(1, None, 5), None, "empty cache");
        cache.put(1, None, 5, Bytes::from_static(b"all@5"));
        assert_eq!(cache.get(1, None, 5), Some(Bytes::from_static(b"all@5")));
        assert_eq!(cache.get(1, None, 6), None, "another version is a miss");
        assert_eq!(
            cache.get(1, Some(SeatStatus::Available), 5),
            None,
            "another filter is a miss"
        );
        assert_eq!(cache.get(2, None, 5), None, "another concert is a miss");
        cache.put(1, None, 9, Bytes::from_static(b"all@9"));
        assert_eq!(cache.get(1, None, 9), Some(Bytes::from_static(b"all@9")));
        assert_eq!(cache.get(1, None, 5), None, "replaced");
        // A slow reader that saw an older version does not overwrite the newer map.
        cache.put(1, None, 7, Bytes::from_static(b"all@7"));
        assert_eq!(cache.get(1, None, 9), Some(Bytes::from_static(b"all@9")));
        assert_eq!(cache.stored_bytes(), 5);
    }

    /// A burst of misses for one map and version asks for one listing;
    /// every reader gets its body.
    #[tokio::test]
    async fn concurrent_misses_share_one_listing() {
        let cache = std::sync::Arc::new(SeatMapCache::default());
        let readers: Vec<_> = (0..50)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move {
                    cache
                        .get_or_load(1, None, 3, || async {
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            Ok::<_, ()>(Bytes::from_static(b"map@3"))
                        })
                        .await
                })
            })
            .collect();
        for reader in readers {
            assert_eq!(reader.await.expect("reader"), Ok(Bytes::from_static(b"map@3")));
        }
        assert_eq!(cache.loads(), 1, "one listing for 50 concurrent misses");
        // A newer version is a new listing.
        let body = cache
            .get_or_load(1, None, 4, || async { Ok::<_, ()>(Bytes::from_static(b"map@4")) })
            .await;
        assert_eq!(body, Ok(Bytes::from_static(b"map@4")));
        assert_eq!(cache.loads(), 2);
    }

    /// A reader that waited for a load that failed loads by itself.
    #[tokio::test]
    async fn waiters_of_a_failed_listing_try_again() {
        let cache = std::sync::Arc::new(SeatMapCache::default());
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let leader = {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .get_or_load(1, None, 1, || async {
                        let _ = started_tx.send(());
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        Err::<Bytes, &str>("the actor is gone")
                    })
                    .await
            })
        };
        started_rx.await.expect("the first load started");
        let waiter = cache
            .get_or_load(1, None, 1, || async { Ok::<_, &str>(Bytes::from_static(b"map@1")) })
            .await;
        assert_eq!(leader.await.expect("leader"), Err("the actor is gone"));
        assert_eq!(waiter, Ok(Bytes::from_static(b"map@1")));
        assert_eq!(cache.loads(), 2);
    }

    #[test]
    fn the_cache_is_emptied_rather_than_grown_past_its_budget() {
        let cache = SeatMapCache::with_budget(10);
        cache.put(1, None, 1, Bytes::from_static(b"aaaa"));
        cache.put(2, None, 1, Bytes::from_static(b"bbbb"));
        assert_eq!(cache.stored_bytes(), 8);
        // Replacing an entry counts only the difference.
        cache.put(2, None, 2, Bytes::from_static(b"bbbbbb"));
        assert_eq!(cache.stored_bytes(), 10);
        assert_eq!(cache.get(1, None, 1), Some(Bytes::from_static(b"aaaa")));
        // Over budget: everything else goes, the new entry stays.
        cache.put(3, None, 1, Bytes::from_static(b"cc"));
        assert_eq!(cache.stored_bytes(), 2);
        assert_eq!(cache.get(1, None, 1), None);
        assert_eq!(cache.get(3, None, 1), Some(Bytes::from_static(b"cc")));
        // Larger than the whole budget: not stored, nothing evicted.
        cache.put(4, None, 1, Bytes::from_static(b"01234567890"));
        assert_eq!(cache.get(4, None, 1), None);
        assert_eq!(cache.get(3, None, 1), Some(Bytes::from_static(b"cc")));
    }
}
