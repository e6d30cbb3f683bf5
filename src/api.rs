//! The JSON shapes of the API (camelCase), with their OpenAPI schemas.

use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{ArrayBuilder, KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::{IntoParams, ToSchema};

/// Whole numbers as JSON Schema counts them: `7` and `7.0` both are
/// integers; `7.5` or `"7"` are not.
mod whole {
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Number {
        Int(i64),
        Float(f64),
    }

    fn to_i64<E: serde::de::Error>(n: Number) -> Result<i64, E> {
        match n {
            Number::Int(v) => Ok(v),
            Number::Float(f) if f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64 => Ok(f as i64),
            Number::Float(f) => Err(E::custom(format!("expected a whole number, got {f}"))),
        }
    }

    pub fn int<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        to_i64(Number::deserialize(d).map_err(|_| serde::de::Error::custom("expected a whole number"))?)
    }

    pub fn ints<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<i64>, D::Error> {
        let raw = Vec::<serde_json::Value>::deserialize(d)?;
        raw.into_iter()
            .map(|v| int(v).map_err(serde::de::Error::custom))
            .collect()
    }
}

/// A request body that must be a JSON **object**. serde's derived structs
/// also read a JSON array as a positional struct (`[100]` as
/// `{"amount": 100}`); this wrapper asks the parser for a map, so an array,
/// a string or a number is a 400 VALIDATION_FAILED instead, in the same
/// single pass over the body. Use it as `web::Json<Object<T>>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(std::marker::PhantomData<T>);

        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for ObjectVisitor<T> {
            type Value = Object<T>;

            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Object)
            }
        }

        deserializer.deserialize_map(ObjectVisitor(std::marker::PhantomData))
    }
}

/// `seatNumbers`: 1..=4 integers, each >= 1 (utoipa has no attribute for
/// item bounds, so the schema is built by hand).
fn seat_numbers_schema() -> utoipa::openapi::Array {
    let seat = ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .minimum(Some(1));
    ArrayBuilder::new()
        .items(seat)
        .min_items(Some(1))
        .max_items(Some(4))
        .unique_items(true)
        .description(Some(
            "1..=CONCERT_MAX_SEATS_PER_RESERVATION (4 by default) distinct seat numbers, each >= 1.",
        ))
        .build()
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NewMember {
    /// 1..=64 characters after trimming.
    #[schema(min_length = 1, max_length = 64, pattern = r"\S")]
    pub name: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberCreated {
    pub id: u64,
    pub name: String,
    /// Shown once; send as `Authorization: Bearer <memberKey>`.
    pub member_key: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MemberProfile {
    pub id: u64,
    pub name: String,
    pub balance: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Balance {
    pub balance: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChargeRequest {
    /// 1..=CONCERT_MAX_CHARGE (10,000,000 by default); the balance may not pass CONCERT_MAX_BALANCE.
    #[schema(minimum = 1, maximum = 10_000_000)]
    #[serde(deserialize_with = "whole::int")]
    pub amount: i64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryItem {
    /// `CHARGE` or `PAYMENT`.
    #[schema(example = "CHARGE")]
    pub kind: &'static str,
    /// Signed change: a payment is negative.
    pub amount: i64,
    pub balance_after: i64,
    pub at: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryPage {
    pub items: Vec<HistoryItem>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Deserialize, IntoParams)]
pub struct PageQuery {
    /// 1..=100, default 20.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    pub limit: Option<String>,
    /// `nextCursor` of the previous page.
    #[param(pattern = "^[0-9]+$")]
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueTokenResponse {
    /// 48 lowercase hex digits (slot, generation, 128 random bits); send it back as `X-Queue-Token`.
    #[schema(pattern = "^[0-9a-f]{48}$")]
    pub token: String,
    /// `WAITING` or `ACTIVE`.
    pub status: &'static str,
    pub position: u64,
    pub estimated_wait_seconds: u64,
    /// While WAITING: when to poll again, in seconds (sooner near the front).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poll_after_seconds: Option<u64>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueStatusResponse {
    /// `WAITING`, `ACTIVE` or `EXPIRED`.
    pub status: &'static str,
    pub position: u64,
    pub estimated_wait_seconds: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_until: Option<String>,
    /// While WAITING: when to poll again, in seconds (sooner near the front).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poll_after_seconds: Option<u64>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConcertDto {
    pub id: u64,
    pub title: String,
    pub category: String,
    pub venue: String,
    pub starts_at: String,
    pub seat_count: u32,
    pub available_seats: u32,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConcertPage {
    pub items: Vec<ConcertDto>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Deserialize, IntoParams)]
pub struct ConcertQuery {
    /// YYYY-MM-DD in CONCERT_TIMEZONE; default today there.
    #[param(format = Date)]
    pub from: Option<String>,
    /// Exact, case-sensitive.
    pub title: Option<String>,
    /// Exact, case-sensitive.
    pub category: Option<String>,
    /// 1..=100, default 20.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    pub limit: Option<String>,
    /// `nextCursor` of the previous page.
    #[param(pattern = r"^-?[0-9]+\.[0-9]+$")]
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, Deserialize, IntoParams)]
pub struct DatesQuery {
    /// Required, exact.
    #[param(value_type = String, required = true, min_length = 1)]
    pub title: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DateItem {
    pub date: String,
    pub concert_id: u64,
    pub available_seats: u32,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DatesResponse {
    pub items: Vec<DateItem>,
}

#[derive(Debug, Clone, Deserialize, IntoParams)]
pub struct SeatQuery {
    /// Only seats with this status.
    #[param(value_type = Option<SeatStatusName>)]
    pub status: Option<String>,
}

/// A seat status as the query names it.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[allow(clippy::upper_case_acronyms)]
pub enum SeatStatusName {
    AVAILABLE,
    HELD,
    SOLD,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SeatDto {
    pub number: u32,
    pub price: i64,
    /// `AVAILABLE`, `HELD` or `SOLD`.
    pub status: &'static str,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SeatMapResponse {
    pub concert_id: u64,
    pub seats: Vec<SeatDto>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HoldRequest {
    #[schema(minimum = 1)]
    #[serde(deserialize_with = "whole::int")]
    pub concert_id: i64,
    /// 1..=CONCERT_MAX_SEATS_PER_RESERVATION (4 by default) distinct seat numbers, each >= 1.
    #[schema(schema_with = seat_numbers_schema)]
    #[serde(deserialize_with = "whole::ints")]
    pub seat_numbers: Vec<i64>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReservationDto {
    pub id: u64,
    pub concert_id: u64,
    pub concert_title: String,
    pub seat_numbers: Vec<u32>,
    pub amount: i64,
    /// `PENDING_PAYMENT`, `CONFIRMED`, `EXPIRED` or `CANCELLED`.
    pub status: &'static str,
    pub created_at: String,
    pub expires_at: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReservationList {
    pub items: Vec<ReservationDto>,
    /// `cursor` of the next page; null on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PayRequest {
    #[schema(minimum = 1)]
    #[serde(deserialize_with = "whole::int")]
    pub reservation_id: i64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentDto {
    pub payment_id: u64,
    pub reservation_id: u64,
    pub amount: i64,
    pub balance: i64,
    /// Always `COMPLETED`.
    pub status: &'static str,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PriceTierDto {
    #[schema(minimum = 1, maximum = 100_000)]
    #[serde(deserialize_with = "whole::int")]
    pub from_seat: i64,
    #[schema(minimum = 1, maximum = 100_000)]
    #[serde(deserialize_with = "whole::int")]
    pub to_seat: i64,
    #[schema(minimum = 0, maximum = 10_000_000)]
    #[serde(deserialize_with = "whole::int")]
    pub price: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewConcertRequest {
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub title: String,
    /// Lowercase slug.
    #[schema(pattern = "^[a-z0-9-]{1,32}$")]
    pub category: String,
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub venue: String,
    /// RFC 3339 with offset; must be in the future.
    #[schema(format = DateTime)]
    pub starts_at: String,
    #[schema(minimum = 1, maximum = 100_000)]
    #[serde(deserialize_with = "whole::int")]
    pub seat_count: i64,
    #[schema(minimum = 0, maximum = 10_000_000)]
    #[serde(deserialize_with = "whole::int")]
    pub price: i64,
    /// Inside 1..=seatCount, fromSeat <= toSeat, not overlapping.
    #[serde(default)]
    pub price_tiers: Vec<PriceTierDto>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HealthResponse {
    pub status: &'static str,
}
