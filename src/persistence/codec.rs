//! The one place that knows the binary formats: snapshots and journal
//! payloads, both bincode 2 (serde mode).
//!
//! `bincode` is unmaintained upstream (3.0.0 is a tombstone), so every use
//! of it stays in this module: swapping codecs means changing this file and
//! bumping the format versions.
//!
//! Snapshot layout: `MAGIC` (4 bytes) | format version (u16 LE) | payload
//! length (u64 LE) | SHA-256 of the payload (32 bytes) | payload. A wrong
//! magic, version, length or checksum is an error: a corrupt or truncated
//! snapshot is never loaded. Journal payloads are one version byte plus
//! bincode; the database's own transaction makes them atomic, and each row
//! carries a [`journal_checksum`] (CRC-32 of position, kind and payload)
//! that recovery checks before it decodes the payload.

use concert_actors::{EngineState, Event};
use sha2::{Digest, Sha256};

const MAGIC: &[u8; 4] = b"CSNP";
/// 2: queue tokens are slot-addressed (`TokenId` = slot, generation, secret).
/// 3: concerts carry their finished reservations' retirement queue (an older
/// snapshot is skipped: recovery reads the tables and the journal instead).
const SNAPSHOT_VERSION: u16 = 3;
const HEADER_LEN: usize = 4 + 2 + 8 + 32;
/// 2: queue tokens are slot-addressed (`TokenId` = slot, generation, secret).
const EVENT_VERSION: u8 = 2;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("not a snapshot (bad magic)")]
    BadMagic,
    #[error("snapshot format version {0} is not supported")]
    UnsupportedVersion(u16),
    #[error("snapshot truncated: {actual} of {expected} bytes")]
    Truncated { expected: usize, actual: usize },
    #[error("snapshot checksum mismatch")]
    Checksum,
    #[error("journal payload version {0} is not supported")]
    UnsupportedEventVersion(u8),
    #[error("encoding failed: {0}")]
    Encode(String),
    #[error("decoding failed: {0}")]
    Decode(String),
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

pub fn encode_snapshot(state: &EngineState) -> Result<Vec<u8>, CodecError> {
    let payload = bincode::serde::encode_to_vec(state, config()).map_err(|e| CodecError::Encode(e.to_string()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&Sha256::digest(&payload));
    out.extend_from_slice(&payload);
    Ok(out)
}

pub fn decode_snapshot(bytes: &[u8]) -> Result<EngineState, CodecError> {
    if bytes.len() < HEADER_LEN {
        return Err(CodecError::Truncated {
            expected: HEADER_LEN,
            actual: bytes.len(),
        });
    }
    let (header, payload) = bytes.split_at(HEADER_LEN);
    if &header[0..4] != MAGIC {
        return Err(CodecError::BadMagic);
    }
    let version = u16::from_le_bytes([header[4], header[5]]);
    if version != SNAPSHOT_VERSION {
        return Err(CodecError::UnsupportedVersion(version));
    }
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&header[6..14]);
    let expected = usize::try_from(u64::from_le_bytes(len_bytes)).unwrap_or(usize::MAX);
    if payload.len() != expected {
        return Err(CodecError::Truncated {
            expected,
            actual: payload.len(),
        });
    }
    if Sha256::digest(payload).as_slice() != &header[14..46] {
        return Err(CodecError::Checksum);
    }
    let (state, _) =
        bincode::serde::decode_from_slice(payload, config()).map_err(|e| CodecError::Decode(e.to_string()))?;
    Ok(state)
}

pub fn encode_event(event: &Event) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![EVENT_VERSION];
    bincode::serde::encode_into_std_write(event, &mut out, config()).map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(out)
}

pub fn decode_event(bytes: &[u8]) -> Result<Event, CodecError> {
    match bytes.split_first() {
        Some((&EVENT_VERSION, payload)) => bincode::serde::decode_from_slice(payload, config())
            .map(|(event, _)| event)
            .map_err(|e| CodecError::Decode(e.to_string())),
        Some((&other, _)) => Err(CodecError::UnsupportedEventVersion(other)),
        None => Err(CodecError::Decode("empty payload".into())),
    }
}

/// The checksum stored with a journal row: CRC-32 (IEEE) of the position
/// (i64 LE), the kind and the payload, as a non-negative `i64` (both
/// databases store it in an integer column). The position is part of it, so
/// a row copied to another position does not pass either.
pub fn journal_checksum(pos: i64, kind: &str, payload: &[u8]) -> i64 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&pos.to_le_bytes());
    hasher.update(kind.as_bytes());
    hasher.update(payload);
    i64::from(hasher.finalize())
}

/// Checks a journal row read back against its stored checksum (`None`: a
/// row written before rows had one, accepted as it is).
pub fn check_journal_row(pos: i64, kind: &str, payload: &[u8], stored: Option<i64>) -> Result<(), String> {
    match stored {
        Some(stored) if stored != journal_checksum(pos, kind, payload) => Err(format!(
            "journal position {pos}: checksum mismatch (the row was changed after it was written)"
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concert_actors::concert::{Concert, ConcertInfo};
    use concert_actors::pricing::Pricing;

    fn state() -> EngineState {
        let mut state = EngineState::default();
        let info = ConcertInfo {
            id: 1,
            title: "IU".into(),
            category: "k-pop".into(),
            venue: "Hall".into(),
            starts_at_ms: 10,
            seat_count: 100,
            pricing: Pricing::flat(5),
        };
        state.concerts.insert(1, Concert::new(info));
        state.journal_pos = 42;
        state
    }

    #[test]
    fn a_snapshot_round_trips() {
        let bytes = encode_snapshot(&state()).expect("encodes");
        let back = decode_snapshot(&bytes).expect("decodes");
        assert_eq!(back.journal_pos, 42);
        assert_eq!(back.concerts[&1].seats().available(), 100);
    }

    #[test]
    fn corrupt_or_truncated_snapshots_are_refused() {
        let bytes = encode_snapshot(&state()).expect("encodes");
        let truncated = &bytes[..bytes.len() - 1];
        assert!(
            matches!(decode_snapshot(truncated), Err(CodecError::Truncated { .. })),
            "truncation is detected"
        );
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        assert_eq!(
            decode_snapshot(&flipped).err(),
            Some(CodecError::Checksum),
            "a flipped bit is detected"
        );
        let mut wrong_version = bytes.clone();
        wrong_version[4] = 99;
        assert_eq!(
            decode_snapshot(&wrong_version).err(),
            Some(CodecError::UnsupportedVersion(99))
        );
        assert_eq!(
            decode_snapshot(b"nope")
                .err()
                .map(|e| matches!(e, CodecError::Truncated { .. })),
            Some(true)
        );
        let mut bad_magic = bytes;
        bad_magic[0] = b'X';
        assert_eq!(decode_snapshot(&bad_magic).err(), Some(CodecError::BadMagic));
    }

    #[test]
    fn a_journal_checksum_covers_position_kind_and_payload() {
        let sum = journal_checksum(7, "BalanceCharged", b"abc");
        assert!(sum >= 0, "stored in a signed integer column");
        assert_eq!(check_journal_row(7, "BalanceCharged", b"abc", Some(sum)), Ok(()));
        assert_eq!(
            check_journal_row(7, "BalanceCharged", b"abc", None),
            Ok(()),
            "old rows load"
        );
        for (pos, kind, payload) in [
            (8, "BalanceCharged", &b"abc"[..]),
            (7, "SeatsHeld", b"abc"),
            (7, "BalanceCharged", b"abd"),
        ] {
            let err = check_journal_row(pos, kind, payload, Some(sum)).expect_err("a changed row is refused");
            assert!(err.contains(&format!("position {pos}")), "the position is named: {err}");
        }
    }

    #[test]
    fn events_round_trip_with_a_version_byte() {
        let event = Event::TokenExpired {
            token: concert_actors::queue::TokenId::new(3, 2, [7; 16]),
            at_ms: 5,
        };
        let bytes = encode_event(&event).expect("encodes");
        assert_eq!(bytes[0], EVENT_VERSION);
        assert_eq!(decode_event(&bytes), Ok(event));
        assert!(decode_event(&[9, 0]).is_err(), "unknown versions are refused");
        let mut old = bytes.clone();
        old[0] = 1;
        assert_eq!(
            decode_event(&old),
            Err(CodecError::UnsupportedEventVersion(1)),
            "journals from before slot-addressed tokens are refused, not misread"
        );
    }
}
