//! The pure half of the write path: events in, rows out. No SQL, no
//! database, nothing async; the dialects ([`super::sqlite`],
//! [`super::postgres`]) turn these rows into their statements.
//!
//! - [`JournalRows`]: the journal columns of a batch of events (position,
//!   kind, encoded payload, checksum), and the checks a retried commit
//!   makes against the rows it finds stored ([`JournalRows::missing_from`],
//!   [`JournalRows::match_stored`]).
//! - [`Rows::fold`]: a batch of events folded into per-table row sets. Rows
//!   that one batch changes several times are merged so each statement
//!   touches a row once (PostgreSQL refuses otherwise), and a hold paid or
//!   released inside the batch is written once in its final state (a
//!   released hold's seats get no `seats` row at all) instead of inserted,
//!   then updated or deleted.
//! - [`after_projected`]: which events of a batch the tables have not
//!   absorbed yet, given their `projected_pos` ([`Gap`] if some are missing
//!   in between).

use std::collections::{BTreeMap, BTreeSet};

use concert_actors::concert::ReservationStatus;
use concert_actors::idempotency::IdempotencyRecord;
use concert_actors::queue::TokenStatus;
use concert_actors::types::JournalPos;
use concert_actors::Event;

use super::codec::{encode_event, journal_checksum, CodecError};

/// Events to project start after a position the tables have not reached:
/// projecting them would leave the events between out for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Gap {
    pub projected: i64,
    pub first: i64,
}

/// A journal position read back holds a different event than the one being
/// committed there (or, for [`JournalRows::match_stored`], none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Conflict {
    pub pos: i64,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct MemberRow {
    /// `Some` when the member registered in this batch.
    pub name: Option<String>,
    pub key_hash: Vec<u8>,
    pub created_at: i64,
    pub balance: i64,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) struct TokenRow {
    pub member: i64,
    pub seq: i64,
    pub status: &'static str,
    pub active_until: i64,
    pub issued_at: i64,
}

/// id, title, category, venue, starts_at, seat_count, price, price_tiers (JSON).
pub(super) type ConcertRow = (i64, String, String, String, i64, i64, i64, String);
/// member, endpoint, key, fingerprint, status, body, created_at.
pub(super) type IdempotencyRow = (i64, &'static str, String, Vec<u8>, i64, Vec<u8>, i64);
/// member, kind (CHARGE or PAYMENT), amount, balance_after, at, journal_pos.
pub(super) type HistoryRow = (i64, &'static str, i64, i64, i64, i64);
/// id, reservation, member, amount, created_at.
pub(super) type PaymentRow = (i64, i64, i64, i64, i64);

/// A reservation first held in this batch, with its final status.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ReservationRow {
    pub concert: i64,
    pub member: i64,
    pub amount: i64,
    pub status: &'static str,
    pub created_at: i64,
    pub expires_at: i64,
    pub seats: Vec<i64>,
}

/// The table rows of a batch of events, per table, in the form the dialects
/// write them: inserts (new rows in their last state of the batch) and the
/// changes to rows of earlier batches.
#[derive(Debug, Default)]
pub(super) struct Rows {
    pub members: BTreeMap<i64, MemberRow>,
    pub history: Vec<HistoryRow>,
    pub concerts: Vec<ConcertRow>,
    /// Reservations held in this batch, by id, already in their last status
    /// of the batch (a hold paid or released in the same batch is inserted
    /// CONFIRMED / CANCELLED / EXPIRED, not inserted and then updated).
    pub reservations: BTreeMap<i64, ReservationRow>,
    pub reservation_seats: Vec<(i64, i64)>,
    /// (concert, seat) -> (reservation, HELD or SOLD), last hold wins. The
    /// seats of a hold released in this batch are not here at all.
    pub seats: BTreeMap<(i64, i64), (i64, &'static str)>,
    /// Reservations of earlier batches released now, by their new status.
    pub released: BTreeMap<&'static str, Vec<i64>>,
    /// Reservations held and released in this batch: no `seats` rows are
    /// written for them. On SQLite a `DELETE` by `reservation_id` (an index
    /// probe that finds nothing unless another writer projected these
    /// events already) keeps re-projecting events idempotent; PostgreSQL
    /// never projects an event twice.
    pub dropped: Vec<i64>,
    /// Reservations of earlier batches paid now.
    pub confirmed: Vec<i64>,
    pub payments: Vec<PaymentRow>,
    pub new_tokens: BTreeMap<Vec<u8>, TokenRow>,
    /// Tokens from earlier batches admitted now, by their `activeUntil`.
    pub admitted: BTreeMap<i64, Vec<Vec<u8>>>,
    /// Tokens from earlier batches expired now (each once).
    pub expired: BTreeSet<Vec<u8>>,
    pub idempotency: Vec<IdempotencyRow>,
}

/// The journal columns of `events`: positions, kinds, encoded payloads and
/// their checksums ([`journal_checksum`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct JournalRows {
    pub pos: Vec<i64>,
    pub kind: Vec<&'static str>,
    pub payload: Vec<Vec<u8>>,
    pub checksum: Vec<i64>,
}

impl JournalRows {
    pub fn encode(events: &[(JournalPos, Event)]) -> Result<Self, CodecError> {
        let mut rows = JournalRows {
            pos: Vec::with_capacity(events.len()),
            kind: Vec::with_capacity(events.len()),
            payload: Vec::with_capacity(events.len()),
            checksum: Vec::with_capacity(events.len()),
        };
        for (pos, event) in events {
            let (pos, kind, payload) = (id(*pos), event.kind(), encode_event(event)?);
            rows.checksum.push(journal_checksum(pos, kind, &payload));
            rows.pos.push(pos);
            rows.kind.push(kind);
            rows.payload.push(payload);
        }
        Ok(rows)
    }

    /// The first and last positions (`None` when there are no rows).
    pub fn range(&self) -> Option<(i64, i64)> {
        Some((*self.pos.first()?, *self.pos.last()?))
    }

    /// The rows not in `stored` (pos, kind, payload, read back from the
    /// journal), after checking that those in it are these rows: `Err`
    /// names the first position that holds something else.
    pub fn missing_from(&self, stored: &[(i64, String, Vec<u8>)]) -> Result<JournalRows, Conflict> {
        let by_pos: BTreeMap<i64, (&str, &[u8])> = stored
            .iter()
            .map(|(pos, kind, payload)| (*pos, (kind.as_str(), payload.as_slice())))
            .collect();
        let mut missing = JournalRows {
            pos: Vec::new(),
            kind: Vec::new(),
            payload: Vec::new(),
            checksum: Vec::new(),
        };
        for (i, &pos) in self.pos.iter().enumerate() {
            match by_pos.get(&pos) {
                Some(&(kind, payload)) if kind == self.kind[i] && payload == self.payload[i].as_slice() => {}
                Some(_) => return Err(Conflict { pos }),
                None => {
                    missing.pos.push(pos);
                    missing.kind.push(self.kind[i]);
                    missing.payload.push(self.payload[i].clone());
                    missing.checksum.push(self.checksum[i]);
                }
            }
        }
        Ok(missing)
    }

    /// Whether the rows `stored` (pos, kind, payload, read back from the
    /// journal) are these rows: `Err` names the first position that holds
    /// something else, or is missing.
    pub fn match_stored(&self, stored: &[(i64, String, Vec<u8>)]) -> Result<(), Conflict> {
        let by_pos: BTreeMap<i64, (&str, &[u8])> = stored
            .iter()
            .map(|(pos, kind, payload)| (*pos, (kind.as_str(), payload.as_slice())))
            .collect();
        for (i, &pos) in self.pos.iter().enumerate() {
            match by_pos.get(&pos) {
                Some(&(kind, payload)) if kind == self.kind[i] && payload == self.payload[i].as_slice() => {}
                _ => return Err(Conflict { pos }),
            }
        }
        Ok(())
    }
}

/// A journal position or an engine id as the databases store it (`BIGINT`).
pub(super) fn id(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The last position of `events`, as stored in `projection.projected_pos`.
pub(super) fn last_pos(events: &[(JournalPos, Event)]) -> Option<i64> {
    events.last().map(|(pos, _)| id(*pos))
}

/// The events of `events` (consecutive positions) after `projected`.
pub(super) fn after_projected(events: &[(JournalPos, Event)], projected: i64) -> Result<&[(JournalPos, Event)], Gap> {
    let Some(first) = events.first().map(|(pos, _)| id(*pos)) else {
        return Ok(events);
    };
    if first > projected.saturating_add(1) {
        return Err(Gap { projected, first });
    }
    let done = events.partition_point(|(pos, _)| id(*pos) <= projected);
    Ok(&events[done..])
}

impl Rows {
    pub fn fold(events: &[(JournalPos, Event)]) -> Self {
        let mut rows = Rows::default();
        for (pos, event) in events {
            rows.add(id(*pos), event);
        }
        rows
    }

    fn balance(&mut self, member: i64, balance_after: i64) {
        self.members.entry(member).or_default().balance = balance_after;
    }

    fn expire_token(&mut self, token: Vec<u8>) {
        match self.new_tokens.get_mut(&token) {
            Some(row) => row.status = TokenStatus::Expired.as_str(),
            None => {
                self.expired.insert(token);
            }
        }
    }

    /// A hold ends: paid (`seats_become` = SOLD) or released (`None`: its
    /// seats become AVAILABLE, i.e. have no row). A hold of this batch is
    /// changed in place; one of an earlier batch is listed for the UPDATE /
    /// DELETE statements.
    fn settle(&mut self, reservation: i64, status: &'static str, seats_become: Option<&'static str>) {
        let Some(row) = self.reservations.get_mut(&reservation) else {
            match seats_become {
                Some(_) => self.confirmed.push(reservation),
                None => self.released.entry(status).or_default().push(reservation),
            }
            return;
        };
        row.status = status;
        if seats_become.is_none() {
            self.dropped.push(reservation);
        }
        for &seat in &row.seats {
            let key = (row.concert, seat);
            // A later hold of the same seat (after a release) owns it now.
            if self.seats.get(&key).is_some_and(|(holder, _)| *holder == reservation) {
                match seats_become {
                    Some(sold) => {
                        self.seats.insert(key, (reservation, sold));
                    }
                    None => {
                        self.seats.remove(&key);
                    }
                }
            }
        }
    }

    fn add(&mut self, pos: i64, event: &Event) {
        match event {
            Event::MemberRegistered {
                member,
                name,
                key_hash,
                at_ms,
            } => {
                let row = self.members.entry(id(*member)).or_default();
                row.name = Some(name.clone());
                row.key_hash = key_hash.to_vec();
                row.created_at = *at_ms;
            }
            Event::BalanceCharged {
                member,
                amount,
                balance_after,
                at_ms,
            } => {
                self.balance(id(*member), *balance_after);
                self.history
                    .push((id(*member), "CHARGE", *amount, *balance_after, *at_ms, pos));
            }
            Event::ConcertCreated { info } => {
                let tiers = info
                    .pricing
                    .tiers()
                    .iter()
                    .map(|t| [i64::from(t.from_seat), i64::from(t.to_seat), t.price])
                    .collect::<Vec<_>>();
                self.concerts.push((
                    id(info.id),
                    info.title.clone(),
                    info.category.clone(),
                    info.venue.clone(),
                    info.starts_at_ms,
                    i64::from(info.seat_count),
                    info.pricing.base_price(),
                    serde_json::to_string(&tiers).unwrap_or_else(|_| "[]".into()),
                ));
            }
            Event::SeatsHeld { reservation: r } => {
                let seats: Vec<i64> = r.seats.iter().map(|&seat| i64::from(seat)).collect();
                for &seat in &seats {
                    self.reservation_seats.push((id(r.id), seat));
                    self.seats.insert((id(r.concert_id), seat), (id(r.id), "HELD"));
                }
                self.reservations.insert(
                    id(r.id),
                    ReservationRow {
                        concert: id(r.concert_id),
                        member: id(r.member_id),
                        amount: r.amount,
                        status: ReservationStatus::PendingPayment.as_str(),
                        created_at: r.created_at_ms,
                        expires_at: r.expires_at_ms,
                        seats,
                    },
                );
            }
            Event::HoldReleased {
                reservation, status, ..
            } => self.settle(id(*reservation), status.as_str(), None),
            Event::PaymentCompleted {
                payment,
                reservation,
                member,
                amount,
                balance_after,
                token,
                at_ms,
                ..
            } => {
                self.settle(id(*reservation), ReservationStatus::Confirmed.as_str(), Some("SOLD"));
                self.payments
                    .push((id(*payment), id(*reservation), id(*member), *amount, *at_ms));
                self.balance(id(*member), *balance_after);
                self.history
                    .push((id(*member), "PAYMENT", -amount, *balance_after, *at_ms, pos));
                if let Some(token) = token {
                    self.expire_token(token.to_bytes().to_vec());
                }
            }
            Event::TokenIssued {
                token,
                member,
                seq,
                at_ms,
            } => {
                self.new_tokens.insert(
                    token.to_bytes().to_vec(),
                    TokenRow {
                        member: id(*member),
                        seq: id(*seq),
                        status: TokenStatus::Waiting.as_str(),
                        active_until: 0,
                        issued_at: *at_ms,
                    },
                );
            }
            Event::TokenAdmitted { token, active_until_ms } => {
                match self.new_tokens.get_mut(token.to_bytes().as_slice()) {
                    Some(row) => {
                        row.status = TokenStatus::Active.as_str();
                        row.active_until = *active_until_ms;
                    }
                    None => self
                        .admitted
                        .entry(*active_until_ms)
                        .or_default()
                        .push(token.to_bytes().to_vec()),
                }
            }
            Event::TokenExpired { token, .. } => self.expire_token(token.to_bytes().to_vec()),
            Event::IdempotencyRecorded { record } => self.idempotency_record(record),
            Event::Idempotent { record, effect } => {
                self.add(pos, effect);
                self.idempotency_record(record);
            }
        }
    }

    fn idempotency_record(&mut self, record: &IdempotencyRecord) {
        self.idempotency.push((
            id(record.scope.member),
            record.scope.endpoint.as_str(),
            record.scope.key.clone(),
            record.fingerprint.to_vec(),
            i64::from(record.response.status),
            record.response.body.clone(),
            record.at_ms,
        ));
    }
}

#[cfg(test)]
mod tests {
    use concert_actors::concert::{ConcertInfo, Reservation};
    use concert_actors::idempotency::{IdempotencyScope, IdempotentEndpoint, StoredResponse};
    use concert_actors::pricing::{PriceTier, Pricing};
    use concert_actors::queue::TokenId;

    use super::*;

    const CONCERT: u64 = 1;
    const MEMBER: u64 = 2;

    /// `events` at consecutive positions from `first`.
    fn at(first: JournalPos, events: Vec<Event>) -> Vec<(JournalPos, Event)> {
        (first..).zip(events).collect()
    }

    fn held(reservation: u64, seats: &[u32]) -> Event {
        Event::SeatsHeld {
            reservation: Reservation {
                id: reservation,
                concert_id: CONCERT,
                member_id: MEMBER,
                seats: seats.to_vec(),
                amount: 100,
                status: ReservationStatus::PendingPayment,
                created_at_ms: 10,
                expires_at_ms: 20,
            },
        }
    }

    fn released(reservation: u64, status: ReservationStatus) -> Event {
        Event::HoldReleased {
            concert: CONCERT,
            reservation,
            status,
            at_ms: 30,
        }
    }

    fn paid(payment: u64, reservation: u64, token: Option<TokenId>) -> Event {
        Event::PaymentCompleted {
            payment,
            concert: CONCERT,
            reservation,
            member: MEMBER,
            amount: 100,
            balance_after: 900,
            token,
            at_ms: 40,
        }
    }

    fn token(n: u8) -> TokenId {
        TokenId::new(u32::from(n), 1, [n; 16])
    }

    fn bytes(token: TokenId) -> Vec<u8> {
        token.to_bytes().to_vec()
    }

    fn record(key: &str) -> IdempotencyRecord {
        IdempotencyRecord {
            scope: IdempotencyScope {
                member: MEMBER,
                endpoint: IdempotentEndpoint::Charge,
                key: key.to_owned(),
            },
            fingerprint: [7; 32],
            response: StoredResponse {
                status: 201,
                body: b"{}".to_vec(),
            },
            at_ms: 50,
        }
    }

    #[test]
    fn a_hold_paid_in_the_same_batch_is_inserted_confirmed_with_its_seats_sold() {
        let rows = Rows::fold(&at(5, vec![held(1, &[3, 4]), paid(9, 1, Some(token(1)))]));
        let reservation = &rows.reservations[&1];
        assert_eq!(reservation.status, "CONFIRMED");
        assert_eq!(
            (reservation.concert, reservation.member, reservation.amount),
            (1, 2, 100)
        );
        assert_eq!(rows.reservation_seats, vec![(1, 3), (1, 4)]);
        assert_eq!(
            rows.seats.iter().map(|(k, v)| (*k, *v)).collect::<Vec<_>>(),
            vec![((1, 3), (1, "SOLD")), ((1, 4), (1, "SOLD"))]
        );
        assert!(rows.confirmed.is_empty(), "no UPDATE for a hold of this batch");
        assert_eq!(rows.payments, vec![(9, 1, 2, 100, 40)]);
        assert_eq!(rows.history, vec![(2, "PAYMENT", -100, 900, 40, 6)]);
        assert_eq!(rows.members[&2].balance, 900);
        assert_eq!(rows.members[&2].name, None, "a balance change is not a registration");
        assert_eq!(
            rows.expired.iter().cloned().collect::<Vec<_>>(),
            vec![bytes(token(1))],
            "the payment's token of an earlier batch expires"
        );
    }

    #[test]
    fn a_hold_released_in_the_same_batch_leaves_no_seat_rows() {
        let rows = Rows::fold(&at(
            1,
            vec![held(1, &[3, 4]), released(1, ReservationStatus::Cancelled)],
        ));
        assert_eq!(rows.reservations[&1].status, "CANCELLED");
        assert_eq!(rows.reservation_seats.len(), 2, "the reservation keeps its seat list");
        assert!(rows.seats.is_empty(), "released seats are AVAILABLE: no row");
        assert_eq!(rows.dropped, vec![1], "listed for the idempotent DELETE on SQLite");
        assert!(rows.released.is_empty(), "no UPDATE for a hold of this batch");
    }

    #[test]
    fn a_seat_released_and_held_again_belongs_to_the_new_hold() {
        let rows = Rows::fold(&at(
            1,
            vec![
                held(1, &[3]),
                released(1, ReservationStatus::Expired),
                held(2, &[3]),
                paid(9, 2, None),
            ],
        ));
        assert_eq!(rows.reservations[&1].status, "EXPIRED");
        assert_eq!(rows.reservations[&2].status, "CONFIRMED");
        assert_eq!(rows.seats.get(&(1, 3)), Some(&(2, "SOLD")));
        assert_eq!(rows.seats.len(), 1);
    }

    #[test]
    fn holds_of_earlier_batches_are_listed_for_their_updates() {
        let rows = Rows::fold(&at(
            1,
            vec![
                released(5, ReservationStatus::Expired),
                released(6, ReservationStatus::Cancelled),
                released(8, ReservationStatus::Expired),
                paid(9, 7, None),
            ],
        ));
        assert!(rows.reservations.is_empty() && rows.seats.is_empty() && rows.dropped.is_empty());
        assert_eq!(rows.released.get("EXPIRED"), Some(&vec![5, 8]));
        assert_eq!(rows.released.get("CANCELLED"), Some(&vec![6]));
        assert_eq!(rows.confirmed, vec![7]);
        assert_eq!(rows.payments.len(), 1);
    }

    #[test]
    fn members_and_balances_merge_into_one_row_per_member() {
        let rows = Rows::fold(&at(
            1,
            vec![
                Event::MemberRegistered {
                    member: 2,
                    name: "kim".into(),
                    key_hash: [1; 32],
                    at_ms: 5,
                },
                Event::BalanceCharged {
                    member: 2,
                    amount: 500,
                    balance_after: 500,
                    at_ms: 6,
                },
                Event::BalanceCharged {
                    member: 2,
                    amount: 300,
                    balance_after: 800,
                    at_ms: 7,
                },
                Event::BalanceCharged {
                    member: 3,
                    amount: 10,
                    balance_after: 60,
                    at_ms: 8,
                },
            ],
        ));
        assert_eq!(
            rows.members[&2],
            MemberRow {
                name: Some("kim".into()),
                key_hash: vec![1; 32],
                created_at: 5,
                balance: 800,
            }
        );
        assert_eq!(rows.members[&3].name, None, "registered in an earlier batch");
        assert_eq!(rows.members[&3].balance, 60);
        assert_eq!(
            rows.history,
            vec![
                (2, "CHARGE", 500, 500, 6, 2),
                (2, "CHARGE", 300, 800, 7, 3),
                (3, "CHARGE", 10, 60, 8, 4)
            ],
            "one row per event, with its journal position"
        );
    }

    #[test]
    fn tokens_are_written_in_their_last_state() {
        let rows = Rows::fold(&at(
            1,
            vec![
                Event::TokenIssued {
                    token: token(1),
                    member: 2,
                    seq: 11,
                    at_ms: 5,
                },
                Event::TokenAdmitted {
                    token: token(1),
                    active_until_ms: 500,
                },
                Event::TokenIssued {
                    token: token(2),
                    member: 3,
                    seq: 12,
                    at_ms: 6,
                },
                Event::TokenExpired {
                    token: token(2),
                    at_ms: 7,
                },
                Event::TokenAdmitted {
                    token: token(3),
                    active_until_ms: 500,
                },
                Event::TokenAdmitted {
                    token: token(4),
                    active_until_ms: 600,
                },
                Event::TokenExpired {
                    token: token(5),
                    at_ms: 8,
                },
                paid(9, 7, Some(token(5))),
            ],
        ));
        assert_eq!(
            rows.new_tokens[&bytes(token(1))],
            TokenRow {
                member: 2,
                seq: 11,
                status: "ACTIVE",
                active_until: 500,
                issued_at: 5,
            }
        );
        assert_eq!(rows.new_tokens[&bytes(token(2))].status, "EXPIRED");
        assert_eq!(rows.admitted.get(&500), Some(&vec![bytes(token(3))]));
        assert_eq!(rows.admitted.get(&600), Some(&vec![bytes(token(4))]));
        assert_eq!(
            rows.expired.iter().cloned().collect::<Vec<_>>(),
            vec![bytes(token(5))],
            "expired once, however often"
        );
    }

    #[test]
    fn an_idempotent_event_folds_its_effect_and_its_record() {
        let effect = Event::BalanceCharged {
            member: 2,
            amount: 500,
            balance_after: 500,
            at_ms: 6,
        };
        let rows = Rows::fold(&at(
            4,
            vec![
                Event::Idempotent {
                    record: Box::new(record("a")),
                    effect: Box::new(effect),
                },
                Event::IdempotencyRecorded { record: record("b") },
            ],
        ));
        assert_eq!(rows.history, vec![(2, "CHARGE", 500, 500, 6, 4)]);
        assert_eq!(
            rows.idempotency,
            vec![
                (2, "charge", "a".to_owned(), vec![7; 32], 201, b"{}".to_vec(), 50),
                (2, "charge", "b".to_owned(), vec![7; 32], 201, b"{}".to_vec(), 50),
            ]
        );
    }

    #[test]
    fn a_concert_row_carries_its_price_tiers_as_json() {
        let tier = PriceTier {
            from_seat: 1,
            to_seat: 10,
            price: 900,
        };
        let info = |id, pricing| ConcertInfo {
            id,
            title: "IU".into(),
            category: "k-pop".into(),
            venue: "Hall".into(),
            starts_at_ms: 99,
            seat_count: 100,
            pricing,
        };
        let rows = Rows::fold(&at(
            1,
            vec![
                Event::ConcertCreated {
                    info: info(1, Pricing::flat(5)),
                },
                Event::ConcertCreated {
                    info: info(2, Pricing::new(5, vec![tier], 100).expect("valid tiers")),
                },
            ],
        ));
        let row = |id: i64, tiers: &str| {
            (
                id,
                "IU".into(),
                "k-pop".into(),
                "Hall".into(),
                99,
                100,
                5,
                tiers.to_owned(),
            )
        };
        assert_eq!(rows.concerts, vec![row(1, "[]"), row(2, "[[1,10,900]]")]);
    }

    #[test]
    fn only_events_after_projected_pos_are_projected_and_a_gap_is_refused() {
        let events = at(5, vec![released(1, ReservationStatus::Expired); 4]);
        let positions =
            |projected| after_projected(&events, projected).map(|fresh| fresh.iter().map(|(pos, _)| *pos).collect());
        assert_eq!(positions(4), Ok(vec![5, 6, 7, 8]));
        assert_eq!(positions(6), Ok(vec![7, 8]), "a retry skips what it projected");
        assert_eq!(positions(8), Ok(vec![]));
        assert_eq!(positions(20), Ok(vec![]), "projected further by another writer");
        assert_eq!(positions(3), Err(Gap { projected: 3, first: 5 }));
        assert_eq!(after_projected(&[], 3).map(<[_]>::len), Ok(0));
        assert_eq!(last_pos(&events), Some(8));
        assert_eq!(last_pos(&[]), None);
    }

    #[test]
    fn journal_rows_carry_their_checksums_and_recognise_a_retry() {
        let events = at(
            1,
            vec![
                held(1, &[3]),
                paid(9, 1, None),
                released(2, ReservationStatus::Cancelled),
            ],
        );
        let rows = JournalRows::encode(&events).expect("encodes");
        assert_eq!(rows.pos, vec![1, 2, 3]);
        assert_eq!(rows.kind, vec!["SeatsHeld", "PaymentCompleted", "HoldReleased"]);
        assert_eq!(rows.range(), Some((1, 3)));
        for (i, (_, event)) in events.iter().enumerate() {
            assert_eq!(rows.payload[i], encode_event(event).expect("encodes"));
            assert_eq!(
                rows.checksum[i],
                journal_checksum(rows.pos[i], rows.kind[i], &rows.payload[i])
            );
        }
        let stored = |i: usize| (rows.pos[i], rows.kind[i].to_owned(), rows.payload[i].clone());

        // The first row committed already: the other two are missing.
        let missing = rows.missing_from(&[stored(0)]).expect("the same event");
        assert_eq!(missing.pos, vec![2, 3]);
        assert_eq!(missing.checksum, rows.checksum[1..].to_vec());
        assert_eq!(rows.match_stored(&[stored(0), stored(1), stored(2)]), Ok(()));
        assert_eq!(rows.match_stored(&[stored(0), stored(2)]), Err(Conflict { pos: 2 }));

        // Another event at position 2.
        let other = (2, "SeatsHeld".to_owned(), rows.payload[0].clone());
        assert_eq!(rows.missing_from(&[stored(0), other.clone()]), Err(Conflict { pos: 2 }));
        assert_eq!(
            rows.match_stored(&[stored(0), other, stored(2)]),
            Err(Conflict { pos: 2 })
        );
        assert_eq!(JournalRows::default().range(), None);
    }
}
