//! `Engine::shutdown` soon after `Engine::restore`, and a system dropped
//! right after `Engine::start`: concert actors and the queue actor whose
//! start was still queued on their arbiter must not panic. (Seen as
//! "there is no reactor running" from `ConcertActor::started`, actix 0.13.5:
//! dropping an unstarted actor's context polls it once, which calls
//! `started` after the arbiter's runtime is gone; a SIGTERM during start-up
//! could hit it.) Its own test binary, since it installs a panic hook.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once};

use concert_actors::clock::SystemClock;
use concert_actors::concert::{Concert, ConcertInfo};
use concert_actors::pricing::Pricing;
use concert_actors::router::ConcertRouter;
use concert_actors::sink::{EventSink, NullSink};
use concert_actors::{Engine, EngineSettings, EngineState};

const CONCERTS: u64 = 2_000;

static PANICS: AtomicUsize = AtomicUsize::new(0);
/// The tests of this binary run one at a time: they count panics process-wide.
static SERIAL: Mutex<()> = Mutex::new(());

/// Counts every panic from here on (installed once for the binary) and
/// holds the binary's other tests off until the guard is dropped.
fn counting_panics() -> MutexGuard<'static, ()> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
    });
    // A failed test poisons the lock; the next test still runs alone.
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn state_with_concerts() -> EngineState {
    let mut state = EngineState::default();
    for id in 1..=CONCERTS {
        let info = ConcertInfo {
            id,
            title: format!("concert {id}"),
            category: "pop".into(),
            venue: "hall".into(),
            starts_at_ms: 4_000_000_000_000,
            seat_count: 100,
            pricing: Pricing::new(1_000, Vec::new(), 100).expect("a flat price is valid"),
        };
        state.concerts.insert(id, Concert::new(info));
    }
    state.next_concert = CONCERTS + 1;
    state
}

/// An engine with a null sink and `threads` concert arbiters (call it inside
/// the system's `block_on`).
fn start_engine(threads: usize) -> Engine {
    let sink: Arc<dyn EventSink> = Arc::new(NullSink::default());
    Engine::start(
        EngineSettings::contract_defaults(),
        Arc::new(SystemClock),
        sink,
        ConcertRouter::with_threads(threads),
    )
}

#[test]
fn shutdown_right_after_restore_does_not_panic() {
    let _alone = counting_panics();
    let before = PANICS.load(Ordering::SeqCst);
    for _ in 0..3 {
        let system = actix_rt::System::new();
        system.block_on(async {
            let engine = start_engine(2);
            engine.restore(state_with_concerts());
            engine.shutdown();
        });
    }
    assert_eq!(
        PANICS.load(Ordering::SeqCst),
        before,
        "no concert actor panicked while its arbiter stopped"
    );
}

/// The same for the engine's `QueueActor`: a system dropped right after
/// `Engine::start`, before the actor ran, drops its unstarted context
/// after the runtime is gone.
#[test]
fn system_dropped_right_after_start_does_not_panic() {
    let _alone = counting_panics();
    let before = PANICS.load(Ordering::SeqCst);
    for _ in 0..3 {
        let system = actix_rt::System::new();
        system.block_on(async {
            let engine = start_engine(1);
            engine.shutdown();
        });
        drop(system);
    }
    assert_eq!(
        PANICS.load(Ordering::SeqCst),
        before,
        "no actor panicked while its system was dropped"
    );
}
