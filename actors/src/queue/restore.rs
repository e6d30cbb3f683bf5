//! Tokens out and back in: [`WaitingQueue::export`] for snapshots,
//! [`WaitingQueue::import`] at recovery (each token back in its own slot,
//! with its generation and place in line), and the invariant check.

use super::*;

impl WaitingQueue {
    /// Every token the queue still knows, in issue order, for snapshots.
    /// Takes no lock: each slot is read as a seqlock; a slot being refilled
    /// holds a token issued after the copy began, which the journal has.
    pub fn export(&self) -> Vec<TokenRecord> {
        let mut records = Vec::new();
        for index in 0..self.slab.len() {
            let slot = self.slab.at(index);
            loop {
                let generation = generation_of(slot.head.load(Ordering::Acquire));
                if generation & 1 == 1 {
                    break; // free
                }
                let seq = slot.seq.load(Ordering::Relaxed);
                let last_seen = slot.last_seen.load(Ordering::Relaxed);
                // `read` loads the head again after a fence: when it holds,
                // `seq` and `last_seen` above belong to `generation` too.
                let Some(view) = slot.read(generation) else {
                    continue; // purged (or refilled) meanwhile: look again
                };
                let at = SlotRef {
                    slot: index,
                    generation,
                };
                records.push(TokenRecord {
                    token: TokenId::from_words(at, view.secret),
                    member: view.member,
                    seq,
                    status: status_of(view.state),
                    active_until_ms: view.active_until_ms,
                    last_seen_ms: seen_ms(last_seen),
                });
                break;
            }
        }
        records.sort_by_key(|r| r.seq);
        records
    }

    /// Rebuilds the queue from records in any order (recovery, before
    /// serving), into a queue that has held no token yet. Every token goes
    /// back into its own slot with its generation; WAITING tokens keep their
    /// order, ACTIVE ones their `active_until`. Of two records naming one
    /// slot (an old token that was purged, then the slot's next one), the
    /// later generation (then the later issue) wins. Slots below the highest
    /// one restored that hold no token are free.
    pub fn import(&self, records: Vec<TokenRecord>, now_ms: TimestampMs) {
        // Lock order everywhere: `ticking`, then `fifo`.
        let mut ticking = self.ticking.lock();
        let mut fifo = self.fifo.lock();
        assert_eq!(self.slab.len(), 0, "tokens are imported into an unused queue");
        let mut records: Vec<TokenRecord> = records
            .into_iter()
            .filter(|r| {
                let valid = r.token.generation & 1 == 0 && r.token.slot < MAX_TOKENS;
                if !valid {
                    tracing::warn!(seq = r.seq, "a restored queue token names no slot; dropped");
                }
                valid
            })
            .collect();
        records.sort_unstable_by_key(|r| (r.token.slot, r.token.generation, r.seq));
        records.dedup_by(|later, earlier| {
            if later.token.slot == earlier.token.slot {
                std::mem::swap(later, earlier); // keep the later one
                true
            } else {
                false
            }
        });
        let Some(top) = records.last().map(|r| r.token.slot) else {
            return;
        };
        let mut used = vec![false; top as usize + 1];
        while self.slab.len() <= top {
            if self.slab.grow().is_none() {
                break; // unreachable: `top` < MAX_TOKENS was checked above
            }
        }
        records.sort_by_key(|r| r.seq);
        let mut active: Vec<(TimestampMs, SlotRef)> = Vec::new();
        for record in records {
            let at = record.token.slot_ref();
            let slot = self.slab.at(at.slot);
            // A restart counts as a poll: nobody could poll while we were down.
            let last_seen_ms = record.last_seen_ms.max(now_ms);
            slot.fill(&NewToken {
                generation: at.generation,
                secret: record.token.secret,
                member: record.member,
                seq: record.seq,
                rank: 0, // `renumber` below
                state: record.status.code(),
                active_until_ms: record.active_until_ms,
                last_seen_ms,
            });
            used[at.slot as usize] = true;
            fifo.next_seq = fifo.next_seq.max(record.seq + 1);
            self.by_member.insert(record.member, at);
            match record.status {
                TokenStatus::Waiting => {
                    fifo.idle_index.push(Reverse(IdleDeadline {
                        at_ms: last_seen_ms.saturating_add(self.settings.idle_timeout_ms),
                        seq: record.seq,
                        token: at,
                    }));
                    fifo.waiting.push_back(at);
                }
                TokenStatus::Active => active.push((record.active_until_ms, at)),
                TokenStatus::Expired => ticking.expired.push_back(ExpiredToken {
                    token: at,
                    member: record.member,
                    at_ms: now_ms,
                }),
            }
        }
        // Lowest free slot on top, so the first new tokens fill the gaps in order.
        fifo.free = (0..=top).rev().filter(|&slot| !used[slot as usize]).collect();
        active.sort_by_key(|&(active_until_ms, _)| active_until_ms);
        self.active_count.store(active.len() as u64, Ordering::Relaxed);
        ticking.active = active.into_iter().map(|(_, at)| at).collect();
        self.waiting_count.store(fifo.waiting.len() as u64, Ordering::Relaxed);
        self.head_rank.store(0, Ordering::Relaxed);
        self.renumber(&mut fifo);
    }

    /// Panics unless: the cap holds, counters match the tokens, the line is
    /// in issue order with increasing ranks, every slot is either free (and
    /// listed once as free) or holds a token, and no member has two live
    /// tokens.
    pub fn check_invariants(&self) {
        let ticking = self.ticking.lock();
        let fifo = self.fifo.lock();
        let len = self.slab.len();
        let mut live_per_member = std::collections::HashMap::new();
        let mut held = 0u32;
        let mut active = 0u64;
        for index in 0..len {
            let head = self.slab.at(index).head.load(Ordering::Relaxed);
            let generation = generation_of(head);
            if generation & 1 == 1 {
                assert_eq!(state_of(head), FREE, "an odd generation is a free slot");
                continue;
            }
            held += 1;
            let state = state_of(head);
            assert_ne!(state, FREE, "an even generation holds a token");
            active += u64::from(state == ACTIVE);
            if state != EXPIRED {
                *live_per_member
                    .entry(self.slab.at(index).member.load(Ordering::Relaxed))
                    .or_insert(0) += 1;
            }
        }
        let mut free = std::collections::HashSet::new();
        for &slot in &fifo.free {
            assert!(slot < len, "free slots were handed out before");
            assert!(free.insert(slot), "a slot is free once");
            assert_eq!(
                generation_of(self.slab.at(slot).head.load(Ordering::Relaxed)) & 1,
                1,
                "a free slot holds no token"
            );
        }
        assert_eq!(held as usize + free.len(), len as usize, "every slot is free or held");
        assert_eq!(active, self.active(), "the active counter matches the ACTIVE tokens");
        assert!(
            active <= u64::from(self.settings.max_active),
            "never more ACTIVE than the cap"
        );
        assert_eq!(
            fifo.waiting.len() as u64,
            self.waiting(),
            "the waiting counter matches the line"
        );
        let head = self.head_rank.load(Ordering::Relaxed);
        let mut last_seq = 0;
        let mut last_rank = head;
        for at in &fifo.waiting {
            let slot = self.slab.at(at.slot);
            assert_eq!(
                slot.state(at.generation),
                Some(WAITING),
                "only WAITING tokens are in line"
            );
            let seq = slot.seq.load(Ordering::Relaxed);
            assert!(seq > last_seq, "the line is in issue order");
            let rank = slot.rank.load(Ordering::Relaxed);
            assert!(rank > last_rank, "ranks increase along the line");
            last_seq = seq;
            last_rank = rank;
        }
        // Idle expiry is exact only if every WAITING token is indexed no later
        // than its real deadline.
        let mut indexed: std::collections::HashMap<SlotRef, TimestampMs> = std::collections::HashMap::new();
        for Reverse(deadline) in fifo.idle_index.iter() {
            let earliest = indexed.entry(deadline.token).or_insert(deadline.at_ms);
            *earliest = (*earliest).min(deadline.at_ms);
        }
        for at in &fifo.waiting {
            let seen = self.slab.at(at.slot).last_seen.load(Ordering::Relaxed);
            if !seen_by(seen, at.generation) {
                continue; // a stale poll: the tick counts it as one at that tick
            }
            let due = seen_ms(seen).saturating_add(self.settings.idle_timeout_ms);
            assert!(
                indexed.get(at).is_some_and(|&at_ms| at_ms <= due),
                "every WAITING token is in the idle index no later than its deadline"
            );
        }
        for at in ticking.active.iter() {
            assert_ne!(
                self.slab.at(at.slot).state(at.generation),
                Some(WAITING),
                "admitted tokens never wait again"
            );
        }
        for entry in self.by_member.iter() {
            let at = *entry.value();
            let slot = self.slab.get(at.slot);
            assert!(
                slot.is_some_and(
                    |slot| slot.state(at.generation).is_some() && slot.member.load(Ordering::Relaxed) == *entry.key()
                ),
                "a member's latest token is held in its slot until purged"
            );
        }
        assert!(
            live_per_member.values().all(|&n| n == 1),
            "a member has at most one live token"
        );
    }
}
