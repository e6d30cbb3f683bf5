use super::token::secret_words;
use super::*;
use crate::sink::MemoryJournal;

fn queue(admit_per_tick: u32, max_active: u32) -> WaitingQueue {
    let settings = QueueSettings {
        tick_ms: 1_000,
        admit_per_tick,
        max_active,
        token_ttl_ms: 600_000,
        idle_timeout_ms: 120_000,
    };
    WaitingQueue::new(settings, Arc::new(MemoryJournal::new()))
}

#[test]
fn tokens_are_unguessable_and_round_trip_in_one_exact_form() {
    let q = queue(10, 10);
    let a = q.issue(1, 0).expect("issued").token;
    let b = q.issue(2, 0).expect("issued").token;
    assert_ne!(a.secret, b.secret, "128 random bits do not repeat");
    let text = a.to_hex();
    assert_eq!(text.len(), 48, "slot, generation and secret as 48 hex digits");
    assert!(text.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')), "{text}");
    assert_eq!(TokenId::parse(&text), Some(a));
    assert_eq!(TokenId::from_bytes(&a.to_bytes()), Some(a));
    assert_eq!(
        TokenId::from_bytes(&a.to_bytes()[..23]),
        None,
        "23 bytes are not a token"
    );
    assert!(
        !format!("{a:?}").contains(&text[16..24]),
        "debug output shows no secret"
    );

    let wrong: Vec<String> = vec![
        String::new(),
        "xyz".into(),
        text[..47].to_string(),
        format!("{text}0"),
        text[..32].to_string(), // the old 32-digit form
        text.to_uppercase(),
        format!("0x{}", &text[2..]),
        format!(" {}", &text[1..]),
        format!("{}g", &text[..47]),
        format!("{}+", &text[..47]),
        format!("{}é", &text[..46]), // 48 bytes, 47 characters
    ];
    for text in &wrong {
        assert_eq!(TokenId::parse(text), None, "{text:?} is not a token");
    }
}

#[test]
fn a_purged_tokens_slot_is_reused_and_its_id_stays_unknown() {
    let q = queue(10, 10);
    let old = q.issue(1, 0).expect("issued").token;
    q.tick(1_000); // admitted
    assert!(q.expire_paid(&old));
    q.tick(2_000); // leaves the ACTIVE list as EXPIRED
    assert_eq!(q.peek(&old).map(|v| v.status), Some(TokenStatus::Expired));
    assert_eq!(q.tick(602_000).purged, 1, "purged a TTL after expiry");

    let new = q.issue(2, 602_000).expect("issued").token;
    assert_eq!(new.slot(), old.slot(), "the freed slot is taken again");
    assert_eq!(new.generation(), old.generation() + 2, "with the next generation");
    assert_eq!(q.status(&old, 602_000), None, "the purged id is unknown");
    assert_eq!(q.status(&new, 602_000).map(|v| v.member), Some(2), "the new id works");
    let with_old_secret = TokenId::new(new.slot(), new.generation(), old.secret);
    assert_eq!(
        q.peek(&with_old_secret),
        None,
        "the old secret does not open the new token"
    );
    let one_bit_off = {
        let mut secret = new.secret;
        secret[15] ^= 1;
        TokenId::new(new.slot(), new.generation(), secret)
    };
    assert_eq!(q.peek(&one_bit_off), None, "every secret bit counts");
    let odd = TokenId::new(new.slot(), new.generation() + 1, new.secret);
    assert_eq!(q.peek(&odd), None, "an odd generation names no token");
    assert_eq!(
        q.peek(&TokenId::new(7, 0, [0; 16])),
        None,
        "a never-used slot holds nothing"
    );
    assert_eq!(q.peek(&TokenId::new(u32::MAX, 2, new.secret)), None, "past the slab");
    assert!(!q.expire_paid(&old), "a purged id expires nothing");
    assert_eq!(
        q.issue(1, 602_000).map(|i| i.created),
        Ok(true),
        "member 1 may start again"
    );
    q.check_invariants();
}

#[test]
fn a_restore_puts_every_token_back_in_its_slot() {
    let q = idle_only_queue(Arc::new(MemoryJournal::new()));
    let tokens: Vec<TokenId> = (1..=6).map(|m| q.issue(m, 0).expect("issued").token).collect();
    q.status(&tokens[4], 100_000);
    q.status(&tokens[5], 100_000);
    assert_eq!(q.tick(120_000).expired_idle, 4, "members 1 to 4 never polled");
    q.status(&tokens[4], 700_000);
    q.status(&tokens[5], 700_000);
    assert_eq!(q.tick(720_000).purged, 4, "a TTL later they are forgotten");
    let reused = q.issue(7, 720_000).expect("issued").token;
    assert!(
        tokens[..4].iter().any(|t| t.slot() == reused.slot()),
        "member 7 took a purged slot"
    );

    let restored = idle_only_queue(Arc::new(MemoryJournal::new()));
    restored.import(q.export(), 730_000);
    restored.check_invariants();
    for token in [&tokens[4], &tokens[5], &reused] {
        assert_eq!(
            restored.peek(token),
            q.peek(token),
            "{token:?} answers as before the restart"
        );
    }
    assert_eq!(
        restored.peek(&reused).map(|v| v.position),
        Some(3),
        "the line keeps its order"
    );

    // Slots below the high-water mark that hold no token are free after
    // the restore, with no memory of their generations: a new token may
    // get a purged token's slot and generation, but not its secret.
    let fresh = restored.issue(8, 730_000).expect("issued").token;
    assert_eq!(fresh.slot(), 0, "the lowest free slot is taken first");
    assert_eq!(
        fresh.generation(),
        tokens[0].generation(),
        "slot 0's history is unknown"
    );
    assert_eq!(restored.peek(&tokens[0]), None, "the purged token stays unknown");
    assert_eq!(restored.peek(&fresh).map(|v| (v.member, v.position)), Some((8, 4)));
    restored.check_invariants();

    // A record of a slot's earlier token (a database row kept longer than
    // memory keeps the token) loses to the slot's later token.
    let mut records = restored.export();
    let purged_slot_owner = tokens[..4]
        .iter()
        .position(|t| t.slot() == reused.slot())
        .expect("found above");
    records.push(TokenRecord {
        token: tokens[purged_slot_owner],
        member: purged_slot_owner as MemberId + 1,
        seq: purged_slot_owner as u64 + 1,
        status: TokenStatus::Expired,
        active_until_ms: 0,
        last_seen_ms: 0,
    });
    let again = idle_only_queue(Arc::new(MemoryJournal::new()));
    again.import(records, 740_000);
    assert_eq!(
        again.peek(&tokens[purged_slot_owner]),
        None,
        "the older generation is dropped"
    );
    assert_eq!(again.peek(&reused).map(|v| v.member), Some(7));
    assert_eq!(again.peek(&fresh).map(|v| v.member), Some(8));
    again.check_invariants();
}

/// The seqlock alone, hammered: one thread frees and refills one slot as
/// fast as it can, each generation with its own member and secret; the
/// other reads whatever generation the slot shows. A read that succeeds
/// must hold one generation's fields only.
#[test]
fn a_slot_read_is_never_torn_by_a_concurrent_refill() {
    // Both sides run at least this much, overlapping.
    const REFILLS: u64 = 200_000;
    const WHOLE_READS: u64 = 200_000;
    let slot = Slot::fresh();
    let token_of = |generation: u32| NewToken {
        generation,
        secret: [generation as u8; 16],
        member: u64::from(generation) * 3,
        seq: u64::from(generation),
        rank: u64::from(generation) * 5,
        state: WAITING,
        active_until_ms: i64::from(generation) * 7,
        last_seen_ms: 0,
    };
    slot.fill(&token_of(2));
    let done = std::sync::atomic::AtomicBool::new(false);
    let whole_so_far = AtomicU64::new(0);
    let (whole, refused) = std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let (mut whole, mut refused) = (0u64, 0u64);
            while !done.load(Ordering::Acquire) {
                whole_so_far.store(whole, Ordering::Relaxed);
                let generation = generation_of(slot.head.load(Ordering::Relaxed));
                let Some(view) = slot.read(generation) else {
                    refused += 1;
                    continue;
                };
                let expected = token_of(generation);
                assert_eq!(view.generation, generation);
                assert_eq!(
                    view.secret,
                    secret_words(&expected.secret),
                    "secret of generation {generation}"
                );
                assert_eq!(view.member, expected.member, "member of generation {generation}");
                assert_eq!(view.rank, expected.rank, "rank of generation {generation}");
                assert_eq!(view.active_until_ms, expected.active_until_ms);
                whole += 1;
            }
            (whole, refused)
        });
        let mut generation = 2;
        let mut refills = 0;
        // (A reader that panicked ends the loop: its panic fails the test.)
        while (refills < REFILLS || whole_so_far.load(Ordering::Relaxed) < WHOLE_READS) && !reader.is_finished() {
            slot.free(generation);
            generation = generation.wrapping_add(2);
            slot.fill(&token_of(generation));
            refills += 1;
        }
        done.store(true, Ordering::Release);
        reader.join().expect("no torn read")
    });
    assert!(
        whole >= WHOLE_READS,
        "reads succeeded ({whole} whole, {refused} refused)"
    );
}

#[test]
fn lookups_never_see_a_torn_or_foreign_token_while_slots_are_reused() {
    const PER_ROUND: u64 = 64;
    const ROUNDS: u64 = 400;
    let settings = QueueSettings {
        tick_ms: 1,
        admit_per_tick: PER_ROUND as u32,
        max_active: PER_ROUND as u32,
        token_ttl_ms: 1,
        idle_timeout_ms: 1_000_000,
    };
    let q = WaitingQueue::new(settings, Arc::new(MemoryJournal::new()));
    let published: Mutex<Arc<Vec<(TokenId, MemberId)>>> = Mutex::new(Arc::new(Vec::new()));
    let done = std::sync::atomic::AtomicBool::new(false);
    // Full passes of the reader over the published tokens.
    let passes = AtomicU64::new(0);
    let wait_for_a_whole_pass = || {
        let start = passes.load(Ordering::Acquire);
        while passes.load(Ordering::Acquire) < start + 2 {
            std::thread::yield_now();
        }
    };
    let (seen, unknown) = std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let (mut seen, mut unknown) = (0u64, 0u64);
            while !done.load(Ordering::Acquire) {
                let tokens = Arc::clone(&published.lock());
                for (token, member) in tokens.iter() {
                    // `status` records polls: the racy store path too.
                    for view in [q.status(token, 0), q.peek(token)] {
                        match view {
                            Some(view) => {
                                assert_eq!(view.member, *member, "a token shows only its own member");
                                seen += 1;
                            }
                            None => unknown += 1,
                        }
                    }
                }
                passes.fetch_add(1, Ordering::Release);
            }
            (seen, unknown)
        });
        for round in 0..ROUNDS {
            let now = 10 * round as i64;
            let members = round * PER_ROUND + 1..=(round + 1) * PER_ROUND;
            let tokens: Vec<(TokenId, MemberId)> = members
                .map(|member| (q.issue(member, now).expect("issued").token, member))
                .collect();
            if round > 0 {
                assert!(
                    tokens.iter().all(|(t, _)| t.generation() > 2),
                    "round {round} reuses the slots of the rounds before"
                );
            }
            *published.lock() = Arc::new(tokens);
            wait_for_a_whole_pass(); // the reader saw them live
            q.tick(now); // admits all
            q.tick(now + 1); // TTL over: EXPIRED
            q.tick(now + 2); // purged: the slots are free for the next round
            wait_for_a_whole_pass(); // the reader saw them gone, and
                                     // keeps looking while they are reused
        }
        done.store(true, Ordering::Release);
        reader.join().expect("the reader saw no torn token")
    });
    assert!(seen > 0, "the reader saw tokens while they were live");
    assert!(unknown > 0, "and saw some of them gone");
    q.check_invariants();
}

#[test]
fn a_new_token_waits_until_a_tick_even_in_an_empty_queue() {
    let q = queue(10, 10);
    let issued = q.issue(1, 0).expect("issued");
    assert_eq!(issued.view.status, TokenStatus::Waiting);
    assert_eq!(issued.view.position, 1, "the only token is next");
    q.tick(1_000);
    let view = q.status(&issued.token, 1_000).expect("known");
    assert_eq!(view.status, TokenStatus::Active);
    assert_eq!(view.position, 0, "ACTIVE tokens have position 0");
    assert_eq!(view.active_until_ms, Some(601_000));
    q.check_invariants();
}

#[test]
fn a_member_has_one_live_token() {
    let q = queue(10, 10);
    let first = q.issue(1, 0).expect("issued");
    let again = q.issue(1, 10).expect("issued");
    assert_eq!(first.token, again.token, "asking again returns the same token");
    assert!(!again.created);
    q.tick(1_000);
    q.expire_paid(&first.token);
    let fresh = q.issue(1, 1_001).expect("issued");
    assert_ne!(fresh.token, first.token, "after expiry the member may get a new token");
    q.check_invariants();
}

#[test]
fn admission_is_fifo_limited_per_tick_and_capped() {
    let q = queue(2, 3);
    let tokens: Vec<_> = (1..=5).map(|m| q.issue(m, 0).expect("issued").token).collect();
    assert_eq!(q.status(&tokens[4], 0).map(|v| v.position), Some(5));
    assert_eq!(
        q.status(&tokens[4], 0).map(|v| v.estimated_wait_seconds),
        Some(3),
        "5 at 2/s: 3 ticks"
    );
    assert_eq!(q.tick(1_000).admitted, 2, "at most admit_per_tick per tick");
    assert_eq!(
        q.status(&tokens[2], 1_000).map(|v| v.position),
        Some(1),
        "the third is next"
    );
    assert_eq!(q.tick(2_000).admitted, 1, "the cap of 3 ACTIVE stops admission");
    let statuses: Vec<_> = tokens
        .iter()
        .map(|t| q.status(t, 2_000).expect("known").status)
        .collect();
    assert_eq!(
        statuses,
        vec![
            TokenStatus::Active,
            TokenStatus::Active,
            TokenStatus::Active,
            TokenStatus::Waiting,
            TokenStatus::Waiting
        ],
        "admitted in issue order"
    );
    q.expire_paid(&tokens[0]);
    assert_eq!(q.tick(3_000).admitted, 1, "a paid token frees a place under the cap");
    q.check_invariants();
}

#[test]
fn active_tokens_expire_after_the_ttl() {
    let q = queue(10, 10);
    let token = q.issue(1, 0).expect("issued").token;
    q.tick(1_000);
    assert_eq!(q.tick(600_999).expired_active, 0, "still inside the TTL");
    assert_eq!(q.tick(601_000).expired_active, 1, "expired at admission + TTL");
    assert_eq!(q.status(&token, 601_000).map(|v| v.status), Some(TokenStatus::Expired));
    assert_eq!(q.active(), 0);
    q.check_invariants();
}

#[test]
fn idle_waiting_tokens_expire_and_the_line_closes_up() {
    let q = queue(1, 1);
    let a = q.issue(1, 0).expect("issued").token;
    let idle = q.issue(2, 0).expect("issued").token;
    let c = q.issue(3, 0).expect("issued").token;
    q.tick(1_000); // admits a
    q.status(&c, 100_000);
    let report = q.tick(120_000);
    assert_eq!(
        report.expired_idle, 1,
        "the token not polled for the idle timeout expires"
    );
    assert_eq!(q.status(&idle, 120_000).map(|v| v.status), Some(TokenStatus::Expired));
    assert_eq!(q.status(&c, 120_000).map(|v| v.position), Some(1), "the line closes up");
    assert_eq!(q.status(&a, 120_000).map(|v| v.status), Some(TokenStatus::Active));
    q.check_invariants();
}

/// A queue that never admits, so that only idle expiry moves the line.
fn idle_only_queue(journal: Arc<MemoryJournal>) -> WaitingQueue {
    let settings = QueueSettings {
        tick_ms: 1_000,
        admit_per_tick: 0,
        max_active: 0,
        token_ttl_ms: 600_000,
        idle_timeout_ms: 120_000,
    };
    WaitingQueue::new(settings, journal)
}

#[test]
fn idle_expiry_is_exact_to_the_millisecond_of_the_last_poll() {
    let q = idle_only_queue(Arc::new(MemoryJournal::new()));
    let a = q.issue(1, 0).expect("issued").token;
    let b = q.issue(2, 0).expect("issued").token;
    let c = q.issue(3, 10).expect("issued").token;
    q.status(&b, 50_000);
    let status = |token: &TokenId| q.peek(token).map(|v| v.status);

    assert_eq!(q.tick(119_999).expired_idle, 0, "nobody is idle for 120 s yet");
    assert_eq!(q.tick(120_000).expired_idle, 1, "a, never polled, expires at 120 s");
    assert_eq!(status(&a), Some(TokenStatus::Expired));
    assert_eq!(q.tick(120_009).expired_idle, 0, "c was issued at 10 ms");
    assert_eq!(q.tick(120_010).expired_idle, 1, "c expires 120 s after its issue");
    assert_eq!(status(&c), Some(TokenStatus::Expired));
    assert_eq!(q.tick(169_999).expired_idle, 0, "b's poll at 50 s moved its deadline");
    assert_eq!(status(&b), Some(TokenStatus::Waiting));
    assert_eq!(q.peek(&b).map(|v| v.position), Some(1), "b is first in line now");
    assert_eq!(q.tick(170_000).expired_idle, 1, "b expires 120 s after its poll");
    assert_eq!(q.waiting(), 0);
    q.check_invariants();
}

#[test]
fn tokens_expiring_in_one_tick_are_journaled_in_line_order() {
    let journal = Arc::new(MemoryJournal::new());
    let q = idle_only_queue(Arc::clone(&journal));
    let first = q.issue(1, 0).expect("issued").token;
    let second = q.issue(2, 5).expect("issued").token;
    q.status(&first, 10);
    // Re-indexes `first` behind `second`: its deadline moved to 120_010,
    // after `second`'s 120_005.
    assert_eq!(q.tick(120_000).expired_idle, 0);

    assert_eq!(q.tick(130_000).expired_idle, 2);

    let expired: Vec<TokenId> = journal
        .events()
        .into_iter()
        .filter_map(|event| match event {
            Event::TokenExpired { token, .. } => Some(token),
            _ => None,
        })
        .collect();
    assert_eq!(expired, vec![first, second], "journal order = line order");
    q.check_invariants();
}

#[test]
fn the_line_closes_up_exactly_across_several_slices() {
    let q = idle_only_queue(Arc::new(MemoryJournal::new()));
    let count = 3 * CLOSE_UP_SLICE as u64 + 7;
    let tokens: Vec<TokenId> = (1..=count).map(|m| q.issue(m, 0).expect("issued").token).collect();
    // Every third token (from the first) never polls again.
    for (i, token) in tokens.iter().enumerate() {
        if i % 3 != 0 {
            q.status(token, 60_000);
        }
    }

    let report = q.tick(120_000);

    let stayed: Vec<&TokenId> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 != 0)
        .map(|(_, t)| t)
        .collect();
    assert_eq!(u64::from(report.expired_idle), count - stayed.len() as u64);
    for (place, token) in stayed.iter().enumerate() {
        assert_eq!(
            q.peek(token).map(|v| v.position),
            Some(place as u64 + 1),
            "the line closed up: token {place} of those left"
        );
    }
    let late = q.issue(count + 1, 120_000).expect("issued");
    assert_eq!(
        late.view.position,
        stayed.len() as u64 + 1,
        "a new token joins right behind the closed-up line"
    );
    q.check_invariants();
}

#[test]
fn expired_tokens_answer_expired_for_a_ttl_then_are_forgotten() {
    let q = queue(10, 10);
    let token = q.issue(1, 0).expect("issued").token;
    q.tick(1_000);
    q.tick(601_000);
    q.tick(1_200_999);
    assert_eq!(q.peek(&token).map(|v| v.status), Some(TokenStatus::Expired));
    q.tick(1_201_000);
    assert_eq!(q.peek(&token), None, "purged a TTL after expiry");
}

#[test]
fn a_restart_keeps_the_order_and_active_until() {
    let q = queue(1, 10);
    let tokens: Vec<_> = (1..=3).map(|m| q.issue(m, 0).expect("issued").token).collect();
    q.tick(1_000);
    let restored = queue(1, 10);
    restored.import(q.export(), 5_000);
    assert_eq!(restored.peek(&tokens[0]).and_then(|v| v.active_until_ms), Some(601_000));
    assert_eq!(restored.peek(&tokens[1]).map(|v| v.position), Some(1));
    assert_eq!(restored.peek(&tokens[2]).map(|v| v.position), Some(2));
    restored.tick(6_000);
    assert_eq!(restored.peek(&tokens[1]).map(|v| v.status), Some(TokenStatus::Active));
    restored.check_invariants();
}
