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
//! Memory is bounded: when storing an entry would take the cache past
//! [`SeatMapCache::DEFAULT_BUDGET_BYTES`], the cache is emptied first (a
//! rare event that costs one re-encoding per map read afterwards).

use std::io::Write;

use actix_web::web::Bytes;
use concert_actors::concert_actor::SeatView;
use concert_actors::types::{ConcertId, SeatStatus};
use parking_lot::RwLock;
use rustc_hash::FxHashMap;

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

pub struct SeatMapCache {
    entries: RwLock<Entries>,
    budget_bytes: usize,
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
        }
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
