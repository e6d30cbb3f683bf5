//! A demo catalog seeded on first start when there are no concerts
//! (`CONCERT_DEMO_DATA=true`): several titles over several dates, categories,
//! seat counts and price tiers, starting from tomorrow.

use concert_actors::pricing::PriceTier;
use concert_actors::{EngineError, NewConcert};

use crate::state::AppState;

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

struct Tour {
    title: &'static str,
    category: &'static str,
    venue: &'static str,
    seat_count: u32,
    price: i64,
    /// (from, to, price) tiers.
    tiers: &'static [(u32, u32, i64)],
    /// Days from tomorrow of each show.
    days: &'static [i64],
}

const TOURS: &[Tour] = &[
    Tour {
        title: "IU HEREH World Tour",
        category: "k-pop",
        venue: "KSPO Dome, Seoul",
        seat_count: 200,
        price: 99_000,
        tiers: &[(1, 20, 198_000), (21, 80, 154_000)],
        days: &[1, 2, 8],
    },
    Tour {
        title: "Seoul Philharmonic: Mahler 5",
        category: "classical",
        venue: "Lotte Concert Hall",
        seat_count: 120,
        price: 60_000,
        tiers: &[(1, 30, 120_000)],
        days: &[3, 10],
    },
    Tour {
        title: "Jazz Night at Blue Moon",
        category: "jazz",
        venue: "Blue Moon Club, Busan",
        seat_count: 50,
        price: 45_000,
        tiers: &[],
        days: &[4, 11, 18],
    },
    Tour {
        title: "Indie Rock Festival",
        category: "rock",
        venue: "Nanji Hangang Park",
        seat_count: 500,
        price: 77_000,
        tiers: &[(1, 100, 110_000)],
        days: &[14, 15],
    },
];

/// Creates the demo concerts; returns how many.
pub fn seed(state: &AppState) -> Result<usize, EngineError> {
    let now_ms = state.now_ms();
    // 10:00 UTC is 19:00 in Seoul, the default zone.
    let tomorrow_ms = (now_ms / DAY_MS + 1) * DAY_MS + 10 * 60 * 60 * 1000;
    let mut created = 0;
    for tour in TOURS {
        for &day in tour.days {
            let committed = state.engine.create_concert(NewConcert {
                title: tour.title.to_owned(),
                category: tour.category.to_owned(),
                venue: tour.venue.to_owned(),
                starts_at_ms: tomorrow_ms + day * DAY_MS,
                seat_count: tour.seat_count,
                price: tour.price,
                price_tiers: tour
                    .tiers
                    .iter()
                    .map(|&(from_seat, to_seat, price)| PriceTier {
                        from_seat,
                        to_seat,
                        price,
                    })
                    .collect(),
            })?;
            state.catalog.add(&committed.value.info);
            created += 1;
        }
    }
    Ok(created)
}
