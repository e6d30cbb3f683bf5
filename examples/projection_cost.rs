//! The CPU cost of the projection alone on SQLite: folds the persistence
//! bench's event mix (256 members, each: charge, hold 2 seats, pay, hold 2
//! seats, cancel) into the tables of a fresh temp-file database through
//! `writer::project`, in slices as the persister takes them, and prints the
//! wall time and the process's CPU time (all threads: the sqlx SQLite worker,
//! the WAL checkpoint task). CPU time is the figure to compare on a shared
//! machine: it does not count the time spent waiting for a core.
//!
//! ```sh
//! cargo run --release --example projection_cost -- [EVENTS=500000] [SLICE=5000]
//! ```
use concert_actors::concert::{ConcertInfo, Reservation, ReservationStatus};
use concert_actors::pricing::Pricing;
use concert_actors::queue::TokenId;
use concert_actors::Event;
use concert_server::persistence::writer::{project, write_batch};
use concert_server::persistence::Db;
use std::time::Instant;

fn token_of(member: u64) -> TokenId {
    let mut secret = [0u8; 16];
    secret[..8].copy_from_slice(&member.to_le_bytes());
    secret[8..].copy_from_slice(b"benchtok");
    TokenId::new(u32::try_from(member).expect("a slot number"), 2, secret)
}

fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("Linux: /proc/self/stat");
    // Fields after the command name: utime and stime are the 12th and 13th,
    // in clock ticks (100 per second on Linux).
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("EVENTS is a number"))
        .unwrap_or(500_000);
    let slice: usize = std::env::args()
        .nth(2)
        .map(|s| s.parse().expect("SLICE is a number"))
        .unwrap_or(5_000);
    let dir = tempfile::tempdir().expect("a temp dir");
    let url = format!("sqlite://{}/p.db", dir.path().display());
    let db = Db::connect(&url).await.expect("the database opens");
    let now = 1_800_000_000_000i64;
    let (producers, concerts, seats) = (256u64, 1_000u64, 10_000u32);
    let mut setup = Vec::new();
    for m in 1..=producers {
        setup.push(Event::MemberRegistered {
            member: m,
            name: format!("m{m}"),
            key_hash: [7u8; 32],
            at_ms: now,
        });
        setup.push(Event::TokenIssued {
            token: token_of(m),
            member: m,
            seq: m,
            at_ms: now,
        });
        setup.push(Event::TokenAdmitted {
            token: token_of(m),
            active_until_ms: now + 1,
        });
    }
    for c in 1..=concerts {
        setup.push(Event::ConcertCreated {
            info: ConcertInfo {
                id: c,
                title: format!("c{c}"),
                category: "k".into(),
                venue: "v".into(),
                starts_at_ms: now,
                seat_count: seats,
                pricing: Pricing::flat(50_000),
            },
        });
    }
    let setup: Vec<_> = setup.into_iter().enumerate().map(|(i, e)| (i as u64 + 1, e)).collect();
    write_batch(&db, &setup).await.expect("members and concerts commit");
    let mut pos = setup.len() as u64;
    let mut events = Vec::new();
    let mut open: Vec<Option<Reservation>> = vec![None; producers as usize + 1];
    let (mut holds, mut pays) = (0u64, 0u64);
    let mut step = 0u64;
    while (events.len() as u64) < n {
        for m in 1..=producers {
            pos += 1;
            let e = match step % 5 {
                0 => Event::BalanceCharged {
                    member: m,
                    amount: 100_000,
                    balance_after: 100_000,
                    at_ms: now,
                },
                1 | 3 => {
                    let k = holds;
                    holds += 1;
                    let first = ((k / concerts) % (seats as u64 / 2)) as u32 * 2 + 1;
                    let r = Reservation {
                        id: k + 1,
                        concert_id: k % concerts + 1,
                        member_id: m,
                        seats: vec![first, first + 1],
                        amount: 100_000,
                        status: ReservationStatus::PendingPayment,
                        created_at_ms: now,
                        expires_at_ms: now + 300_000,
                    };
                    open[m as usize] = Some(r.clone());
                    Event::SeatsHeld { reservation: r }
                }
                2 => {
                    let r = open[m as usize].take().expect("a hold precedes its payment");
                    pays += 1;
                    Event::PaymentCompleted {
                        payment: pays,
                        concert: r.concert_id,
                        reservation: r.id,
                        member: m,
                        amount: r.amount,
                        balance_after: 0,
                        token: Some(token_of(m)),
                        at_ms: now,
                    }
                }
                _ => {
                    let r = open[m as usize].take().expect("a hold precedes its release");
                    Event::HoldReleased {
                        concert: r.concert_id,
                        reservation: r.id,
                        status: ReservationStatus::Cancelled,
                        at_ms: now,
                    }
                }
            };
            events.push((pos, e));
        }
        step += 1;
    }
    let (cpu0, wall0) = (cpu_secs(), Instant::now());
    for chunk in events.chunks(slice) {
        project(&db, chunk).await.expect("a slice is projected");
    }
    let (cpu, wall) = (cpu_secs() - cpu0, wall0.elapsed().as_secs_f64());
    println!("projected {} events in {slice}-event slices: wall {wall:.2} s ({:.0}/s), cpu {cpu:.2} s ({:.0} events per cpu-s)", events.len(), events.len() as f64 / wall, events.len() as f64 / cpu);
}
