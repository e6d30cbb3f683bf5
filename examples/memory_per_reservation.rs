//! Bytes in memory per live held seat, and per finished reservation once it
//! is retired (must be 0), counted by the allocator: a global allocator that
//! tracks the bytes in use around the engine's own structures (one concert's
//! core and the reservation directory, as the concert actor and the engine
//! use them).
//!
//! For N holds of one seat each (N and 2N, so that a fixed cost, like a hash
//! table's retained capacity, shows as not growing with N): bytes in use
//! after the holds, after cancelling them all, and after retiring them.
//!
//! ```sh
//! cargo run --release --example memory_per_reservation -- [N=100000]
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

/// (bytes per held seat, bytes per cancelled reservation before retirement,
/// bytes left after retirement in all) for `n` one-seat holds.
fn measure(n: u32) -> (f64, f64, isize) {
    let seats = n * 2;
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
            .hold(
                u64::from(i % 1_000) + 1,
                id,
                &[i * 2 + 1],
                0,
                60_000,
                HoldLimits::UNLIMITED,
            )
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
    let per = |bytes: isize| bytes as f64 / f64::from(n);
    (per(held - empty), per(cancelled - empty), retired - empty)
}

fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("N is a number"))
        .unwrap_or(100_000);
    for n in [n, n * 2] {
        let (held, cancelled, retired) = measure(n);
        println!(
            "N = {n}: {held:.1} bytes per live held seat; {cancelled:.1} bytes per finished reservation before \
             retirement; after retirement {retired} bytes in all ({:.2} per reservation)",
            retired as f64 / f64::from(n)
        );
    }
}
