//! The admission tick: expire ACTIVE tokens past their TTL and WAITING
//! ones idle too long, admit the oldest WAITING ones under the cap, close
//! the line up, and purge EXPIRED tokens older than the TTL. Only the queue
//! actor calls [`WaitingQueue::tick`].

use super::*;

impl WaitingQueue {
    /// One admission tick at `now_ms`: expire ACTIVE tokens past their TTL
    /// and WAITING ones idle too long, admit the oldest WAITING ones under
    /// the cap, and forget EXPIRED ones older than the TTL.
    pub fn tick(&self, now_ms: TimestampMs) -> TickReport {
        let mut report = TickReport::default();
        let mut ticking = self.ticking.lock();
        report.expired_active = self.expire_active(&mut ticking, now_ms);
        let mut fifo = self.fifo.lock();
        let (expired_idle, first_gap) = self.expire_idle(&mut fifo, &mut ticking, now_ms);
        report.expired_idle = expired_idle;
        if let Some(first_rank) = first_gap {
            self.close_up(&mut fifo, first_rank);
        }
        report.admitted = self.admit(&mut fifo, &mut ticking, now_ms);
        drop(fifo);
        report.purged = self.purge(&mut ticking, now_ms);
        report
    }

    pub(super) fn expire_active(&self, ticking: &mut Ticking, now_ms: TimestampMs) -> u32 {
        let mut expired = 0;
        while let Some(&at) = ticking.active.front() {
            // An ACTIVE token's slot is not freed before it leaves `active`.
            let slot = self.slab.at(at.slot);
            let state = slot.state(at.generation);
            if state == Some(ACTIVE) && slot.active_until_ms.load(Ordering::Relaxed) > now_ms {
                break;
            }
            ticking.active.pop_front();
            if slot.transition(at.generation, ACTIVE, EXPIRED) {
                self.active_count.fetch_sub(1, Ordering::Relaxed);
                self.counters.expired_total.fetch_add(1, Ordering::Relaxed);
                self.sink.append(Event::TokenExpired {
                    token: slot.token_id(at),
                    at_ms: now_ms,
                });
                expired += 1;
            }
            ticking.expired.push_back(ExpiredToken {
                token: at,
                member: slot.member.load(Ordering::Relaxed),
                at_ms: now_ms,
            });
        }
        expired
    }

    /// Expires the WAITING tokens not polled within the idle timeout, from
    /// the idle index (no walk of the line), journaled in line order. They
    /// stay in `fifo.waiting` as EXPIRED until [`Self::close_up`] removes
    /// them; returns how many expired and the lowest rank among them.
    pub(super) fn expire_idle(
        &self,
        fifo: &mut Fifo,
        ticking: &mut Ticking,
        now_ms: TimestampMs,
    ) -> (u32, Option<u64>) {
        let timeout = self.settings.idle_timeout_ms;
        let mut due: Vec<IdleDeadline> = Vec::new();
        while let Some(Reverse(next)) = fifo.idle_index.peek() {
            if next.at_ms > now_ms {
                break;
            }
            let Some(Reverse(indexed)) = fifo.idle_index.pop() else {
                break;
            };
            let slot = self.slab.at(indexed.token.slot);
            if slot.state(indexed.token.generation) != Some(WAITING) {
                continue; // admitted, expired or purged since: it leaves the index
            }
            let deadline = slot
                .last_seen_ms(indexed.token.generation, now_ms)
                .saturating_add(timeout);
            if deadline > now_ms {
                // Polled since it was indexed: wait for its new deadline.
                fifo.idle_index.push(Reverse(IdleDeadline {
                    at_ms: deadline,
                    ..indexed
                }));
                continue;
            }
            due.push(indexed);
        }
        // The journal sees the expiries in line order, as a walk would.
        due.sort_unstable_by_key(|indexed| indexed.seq);
        let mut expired = 0;
        let mut first_rank = None;
        for IdleDeadline { token: at, .. } in due {
            let slot = self.slab.at(at.slot);
            if slot.transition(at.generation, WAITING, EXPIRED) {
                self.sink.append(Event::TokenExpired {
                    token: slot.token_id(at),
                    at_ms: now_ms,
                });
                ticking.expired.push_back(ExpiredToken {
                    token: at,
                    member: slot.member.load(Ordering::Relaxed),
                    at_ms: now_ms,
                });
                first_rank.get_or_insert(slot.rank.load(Ordering::Relaxed));
                expired += 1;
            }
        }
        if expired > 0 {
            self.waiting_count.fetch_sub(u64::from(expired), Ordering::Relaxed);
            self.counters
                .expired_total
                .fetch_add(u64::from(expired), Ordering::Relaxed);
        }
        (expired, first_rank)
    }

    /// Removes the EXPIRED tokens from the line and gives the WAITING ones
    /// behind the first of them (rank `first_rank`) consecutive ranks again,
    /// [`CLOSE_UP_SLICE`] at a time: between slices the `fifo` lock goes to
    /// any waiting `issue`, which appends at the back (the pass reaches its
    /// tokens too). Meanwhile ranks still increase along the line; tokens not
    /// yet renumbered show a position too high by the gaps ahead of them.
    /// Only the tick (under `ticking`) changes the line's order or status,
    /// and only the tick's purge frees slots, so nothing else moves while
    /// the lock is handed over.
    pub(super) fn close_up(&self, fifo: &mut MutexGuard<'_, Fifo>, first_rank: u64) {
        let slab = &self.slab;
        let start = fifo
            .waiting
            .partition_point(|at| slab.at(at.slot).rank.load(Ordering::Relaxed) < first_rank);
        let mut rank = match start.checked_sub(1) {
            Some(before) => slab.at(fifo.waiting[before].slot).rank.load(Ordering::Relaxed),
            None => self.head_rank.load(Ordering::Relaxed),
        };
        let (mut read, mut write) = (start, start);
        loop {
            let end = (read + CLOSE_UP_SLICE).min(fifo.waiting.len());
            while read < end {
                let at = fifo.waiting[read];
                let slot = slab.at(at.slot);
                if slot.state(at.generation) == Some(WAITING) {
                    rank += 1;
                    slot.rank.store(rank, Ordering::Relaxed);
                    fifo.waiting.swap(write, read);
                    write += 1;
                }
                read += 1;
            }
            if read == fifo.waiting.len() {
                break;
            }
            MutexGuard::bump(fifo);
        }
        fifo.waiting.truncate(write);
        fifo.next_rank = rank + 1;
    }

    /// Gives the whole line consecutive ranks (after a restore).
    pub(super) fn renumber(&self, fifo: &mut Fifo) {
        let mut rank = self.head_rank.load(Ordering::Relaxed) + 1;
        for at in &fifo.waiting {
            self.slab.at(at.slot).rank.store(rank, Ordering::Relaxed);
            rank += 1;
        }
        fifo.next_rank = rank;
    }

    pub(super) fn admit(&self, fifo: &mut Fifo, ticking: &mut Ticking, now_ms: TimestampMs) -> u32 {
        let mut admitted = 0;
        while admitted < self.settings.admit_per_tick
            && self.active_count.load(Ordering::Relaxed) < u64::from(self.settings.max_active)
        {
            let Some(at) = fifo.waiting.pop_front() else {
                break;
            };
            let slot = self.slab.at(at.slot);
            self.head_rank
                .store(slot.rank.load(Ordering::Relaxed), Ordering::Relaxed);
            self.waiting_count.fetch_sub(1, Ordering::Relaxed);
            let active_until_ms = now_ms + self.settings.token_ttl_ms;
            slot.active_until_ms.store(active_until_ms, Ordering::Relaxed);
            if !slot.transition(at.generation, WAITING, ACTIVE) {
                continue;
            }
            self.active_count.fetch_add(1, Ordering::Relaxed);
            self.sink.append(Event::TokenAdmitted {
                token: slot.token_id(at),
                active_until_ms,
            });
            ticking.active.push_back(at);
            admitted += 1;
        }
        self.counters
            .admitted_total
            .fetch_add(u64::from(admitted), Ordering::Relaxed);
        admitted
    }

    /// Forgets the EXPIRED tokens older than the TTL: first their members'
    /// `by_member` entries (without the `fifo` lock: `issue` takes an entry
    /// and then `fifo`), then, under `fifo`, their slots go free.
    pub(super) fn purge(&self, ticking: &mut Ticking, now_ms: TimestampMs) -> u32 {
        let mut purged: Vec<SlotRef> = Vec::new();
        while let Some(&expired) = ticking.expired.front() {
            if expired.at_ms + self.settings.token_ttl_ms > now_ms {
                break;
            }
            ticking.expired.pop_front();
            self.by_member
                .remove_if(&expired.member, |_, latest| *latest == expired.token);
            purged.push(expired.token);
        }
        if !purged.is_empty() {
            let mut fifo = self.fifo.lock();
            for at in &purged {
                self.slab.at(at.slot).free(at.generation);
                fifo.free.push(at.slot);
            }
        }
        purged.len() as u32
    }
}
