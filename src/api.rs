//! The JSON shapes of the API (camelCase), with their OpenAPI schemas.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NewMember {
    /// 1..=64 characters after trimming.
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
    /// 1..=CONCERT_MAX_CHARGE.
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
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueTokenResponse {
    pub token: String,
    /// `WAITING` or `ACTIVE`.
    pub status: &'static str,
    pub position: u64,
    pub estimated_wait_seconds: u64,
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
    pub from: Option<String>,
    pub title: Option<String>,
    pub category: Option<String>,
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, Deserialize, IntoParams)]
pub struct DatesQuery {
    /// Required.
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
    /// `AVAILABLE`, `HELD` or `SOLD`.
    pub status: Option<String>,
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
    pub concert_id: i64,
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
pub struct ReservationList {
    pub items: Vec<ReservationDto>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PayRequest {
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
    pub from_seat: i64,
    pub to_seat: i64,
    pub price: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewConcertRequest {
    pub title: String,
    /// Lowercase slug `[a-z0-9-]{1,32}`.
    pub category: String,
    pub venue: String,
    /// RFC 3339 with offset, in the future.
    pub starts_at: String,
    /// 1..=100000.
    pub seat_count: i64,
    /// 0..=10000000.
    pub price: i64,
    #[serde(default)]
    pub price_tiers: Vec<PriceTierDto>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HealthResponse {
    pub status: &'static str,
}
