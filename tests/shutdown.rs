//! `Engine::shutdown` soon after `Engine::restore`: concert actors whose
//! start was still queued on their arbiter must not panic. (Seen as
//! "there is no reactor running" from `ConcertActor::started`, actix 0.13.5:
//! dropping an unstarted actor's context polls it once, which calls
//! `started` after the arbiter's runtime is gone; a SIGTERM during start-up
//! could hit it.) Its own test binary, since it installs a panic hook.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use concert_actors::clock::SystemClock;
use concert_actors::concert::{Concert, ConcertInfo};
use concert_actors::events::{EventSink, NullSink};
use concert_actors::pricing::Pricing;
use concert_actors::router::ConcertRouter;
use concert_actors::{Engine, EngineSettings, EngineState};

const CONCERTS: u64 = 2_000;

static PANICS: AtomicUsize = AtomicUsize::new(0);

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

#[test]
fn shutdown_right_after_restore_does_not_panic() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));
    for _ in 0..3 {
        let system = actix_rt::System::new();
        system.block_on(async {
            let sink: Arc<dyn EventSink> = Arc::new(NullSink::default());
            let engine = Engine::start(
                EngineSettings::contract_defaults(),
                Arc::new(SystemClock),
                sink,
                ConcertRouter::with_threads(2),
            );
            engine.restore(state_with_concerts());
            engine.shutdown();
            // The engine's QueueActor lives on this (the system's) arbiter:
            // let it start before the system is dropped, which is not what
            // this test is about (the app's system outlives it).
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        });
    }
    assert_eq!(
        PANICS.load(Ordering::SeqCst),
        0,
        "no concert actor panicked while its arbiter stopped"
    );
}
