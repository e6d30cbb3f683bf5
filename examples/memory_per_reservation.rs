//! Bytes in memory per live held seat, and per finished reservation once it
//! is retired (must be 0), counted by the allocator: a global allocator that
//! tracks the bytes in use around the engine's own structures (one concert's
//! core and the reservation directory, as the concert actor and the engine
//! use them).
//!
//! For N holds of one seat each on an N-seat concert (N and 2N, at most
//! 100,000 seats a concert): bytes in use after the holds, after
//! cancelling them all, and after retiring them (what is left then is the
//! capacity the peak of N live holds left in hash tables, not a cost per
//! reservation); then 4N more reservations held, cancelled and retired in
//! batches of 1,000: the bytes they add, per reservation, must be 0.
//!
//! ```sh
//! cargo run --release --example memory_per_reservation -- [N=50000]
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use concert_actors::concert::{Concert, ConcertInfo};
use concert_actors::directory::ReservationDirectory;
use concert_actors::pricing::Pricing;
use concert_actors::seat_map::HoldLimits;

struct Counting;

static IN_USE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to `System` unchanged; only a counter is kept.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        IN_USE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        IN_USE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        IN_USE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn in_use() -> isize {
    IN_USE.load(Ordering::Relaxed)
}

/// For `n` one-seat holds: bytes per held seat, bytes per cancelled
/// reservation before retirement, bytes left after retiring them all (the
/// capacity the peak left), and bytes per reservation that 4n more
/// hold-cancel-retire cycles add on top.
fn measure(n: u32) -> (f64, f64, isize, f64) {
    let seats = n;
    let info = ConcertInfo {
        id: 1,
        title: "memory".into(),
        category: "bench".into(),
        venue: "hall".into(),
        starts_at_ms: i64::MAX,
        seat_count: seats,
        pricing: Pricing::new(50_000, Vec::new(), seats).expect("valid pricing"),
    };
    let mut concert = Concert::new(info);
    let directory = ReservationDirectory::new();
    let empty = in_use();
    let mut pos = 0;
    for i in 0..n {
        let id = u64::from(i) + 1;
        let reservation = concert
            .hold(u64::from(i % 1_000) + 1, id, &[i + 1], 0, 60_000, HoldLimits::UNLIMITED)
            .expect("a free seat");
        pos += 1;
        concert.set_applied_pos(pos);
        directory.record(&reservation);
    }
    let held = in_use();
    for i in 0..n {
        let id = u64::from(i) + 1;
        concert.cancel(u64::from(i % 1_000) + 1, id).expect("pending");
        pos += 1;
        concert.set_applied_pos(pos);
    }
    let cancelled = in_use();
    for finished in concert.retire_finished(i64::MAX, pos) {
        directory.remove(finished.reservation);
    }
    let retired = in_use();
    assert_eq!(concert.reservations().count(), 0);
    assert_eq!(directory.len(), 0);
    // What is left is the capacity the peak of N live holds left in hash
    // tables and queues. Now 4N more reservations, a season in miniature:
    // batches of 1,000 held, cancelled and retired. Whatever they leave
    // behind is a cost per finished reservation.
    let mut next_id = u64::from(n) + 1;
    for _ in 0..(4 * n / 1_000).max(1) {
        let mut batch = Vec::new();
        for seat in 1..=1_000.min(n) {
            let member = next_id % 1_000 + 1;
            let reservation = concert
                .hold(member, next_id, &[seat], 0, 60_000, HoldLimits::UNLIMITED)
                .expect("a free seat");
            pos += 1;
            concert.set_applied_pos(pos);
            directory.record(&reservation);
            batch.push((member, next_id));
            next_id += 1;
        }
        for (member, id) in batch {
            concert.cancel(member, id).expect("pending");
            pos += 1;
            concert.set_applied_pos(pos);
        }
        for finished in concert.retire_finished(i64::MAX, pos) {
            directory.remove(finished.reservation);
        }
    }
    let season = in_use();
    assert_eq!(concert.reservations().count(), 0);
    let per = |bytes: isize| bytes as f64 / f64::from(n);
    (
        per(held - empty),
        per(cancelled - empty),
        retired - empty,
        (season - retired) as f64 / f64::from(4 * n),
    )
}

fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("N is a number"))
        .unwrap_or(50_000);
    for n in [n, n * 2] {
        let (held, cancelled, retired, per_finished) = measure(n);
        println!(
            "N = {n}: {held:.1} bytes per live held seat; {cancelled:.1} bytes per finished reservation before \
             retirement; after retiring all N, {retired} bytes left (capacity of the peak); then {} cycles of \
             hold-cancel-retire: {per_finished:.3} bytes per finished reservation",
            4 * n
        );
    }
}
