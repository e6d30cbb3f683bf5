//! [`TokenId`]: what a queue token is (slot, generation, 128-bit secret),
//! its database bytes and its client hex form. Pure values: no state, and
//! no dependency on the rest of the queue (events carry token ids).

use serde::{Deserialize, Serialize};

/// Bytes of a [`TokenId`] in the database (`queue_tokens.token`).
pub const TOKEN_BYTES: usize = 24;
/// Characters of a token as clients see it: [`TOKEN_BYTES`] as lowercase hex.
pub const TOKEN_HEX_LEN: usize = 2 * TOKEN_BYTES;

/// A queue token: the slot it lives in, the slot's generation at issue and
/// 128 random bits from the CSPRNG. Shown to clients as 48 lowercase hex
/// digits: slot (8, big-endian), generation (8, big-endian), secret (32).
/// Only the secret is a secret: the slot and generation say where to look
/// (and roughly how many tokens the queue has held at once, which positions
/// already tell), the secret proves the token was issued.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TokenId {
    pub(super) slot: u32,
    pub(super) generation: u32,
    pub(super) secret: [u8; 16],
}

impl TokenId {
    pub const fn new(slot: u32, generation: u32, secret: [u8; 16]) -> Self {
        Self {
            slot,
            generation,
            secret,
        }
    }

    pub fn slot(&self) -> u32 {
        self.slot
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// The secret as the two words a slot stores.
    pub(super) fn secret_words(&self) -> [u64; 2] {
        secret_words(&self.secret)
    }

    /// The database form: slot, generation (both big-endian), secret.
    pub fn to_bytes(&self) -> [u8; TOKEN_BYTES] {
        let mut bytes = [0u8; TOKEN_BYTES];
        bytes[..4].copy_from_slice(&self.slot.to_be_bytes());
        bytes[4..8].copy_from_slice(&self.generation.to_be_bytes());
        bytes[8..].copy_from_slice(&self.secret);
        bytes
    }

    /// Exactly [`TOKEN_BYTES`] bytes in the form of [`Self::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; TOKEN_BYTES] = bytes.try_into().ok()?;
        let mut word = [0u8; 4];
        word.copy_from_slice(&bytes[..4]);
        let slot = u32::from_be_bytes(word);
        word.copy_from_slice(&bytes[4..8]);
        let generation = u32::from_be_bytes(word);
        let mut secret = [0u8; 16];
        secret.copy_from_slice(&bytes[8..]);
        Some(Self::new(slot, generation, secret))
    }

    /// The client form: [`TOKEN_HEX_LEN`] lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.to_bytes())
    }

    /// Parses exactly the form [`Self::to_hex`] writes (48 lowercase hex
    /// digits); anything else, uppercase included, is `None`.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.as_bytes();
        if text.len() != TOKEN_HEX_LEN {
            return None;
        }
        let mut bytes = [0u8; TOKEN_BYTES];
        for (byte, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
            *byte = (lower_hex_digit(pair[0])? << 4) | lower_hex_digit(pair[1])?;
        }
        Self::from_bytes(&bytes)
    }
}

fn lower_hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

pub(super) fn secret_words(secret: &[u8; 16]) -> [u64; 2] {
    let mut low = [0u8; 8];
    let mut high = [0u8; 8];
    low.copy_from_slice(&secret[..8]);
    high.copy_from_slice(&secret[8..]);
    [u64::from_le_bytes(low), u64::from_le_bytes(high)]
}

impl std::fmt::Debug for TokenId {
    /// Tokens are credentials: debug output shows where the token lives,
    /// never its secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenId(slot {}, generation {}, …)", self.slot, self.generation)
    }
}
