//! The drill's HTTP client: one method per endpoint it drives, each answering
//! the status and the JSON body, or a transport failure (no answer at all, so
//! the outcome of a write is unknown). Only ever talks to 127.0.0.1.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Client, Method};
use serde_json::{json, Value};

/// The operator key every drill server is started with.
pub const ADMIN_KEY: &str = "drill-admin-key-0123456789";
/// Longest wait for any answer; a hung server turns into transport failures.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// `/ready` is polled often; a slow answer is just "not ready yet".
const READY_TIMEOUT: Duration = Duration::from_secs(1);
/// The contract's largest page.
const HISTORY_PAGE_LIMIT: &str = "100";
/// Bounds the walk through a member's balance history.
const MAX_HISTORY_PAGES: usize = 50;
/// After this many transport failures the server is taken to be gone and the
/// checks stop asking (see [`Api::broken`]).
const MAX_TRANSPORT_FAILURES: u32 = 25;
const API: &str = "/api/v1";

/// A response: the status and the body (JSON, or the raw text as a JSON
/// string when it was not JSON, or `null` when empty).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    /// The `Retry-After` header in whole seconds, when there is one.
    pub retry_after_s: Option<u64>,
}

impl Reply {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The problem-JSON `code`, or "".
    pub fn code(&self) -> &str {
        self.body.get("code").and_then(Value::as_str).unwrap_or("")
    }

    /// `409 SEAT_UNAVAILABLE`, or the status and the start of the body.
    pub fn describe(&self) -> String {
        if self.code().is_empty() {
            let mut body = self.body.to_string();
            body.truncate(200);
            format!("{} {body}", self.status)
        } else {
            format!("{} {}", self.status, self.code())
        }
    }
}

/// The outcome of one request: an answer, or a transport failure.
pub type Sent = Result<Reply, String>;

/// The credential a request carries.
#[derive(Debug, Clone, Copy)]
pub enum Cred<'a> {
    None,
    Member(&'a str),
    Token(&'a str),
    Admin,
}

/// A client bound to one server port.
#[derive(Debug, Clone)]
pub struct Api {
    client: Client,
    base: String,
    /// Shared by the clones: counts transport failures for [`Api::broken`].
    transport_failures: Arc<AtomicU32>,
}

impl Api {
    pub fn new(port: u16) -> Result<Self, String> {
        let client = Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|err| format!("cannot build the HTTP client: {err}"))?;
        Ok(Self {
            client,
            base: format!("http://127.0.0.1:{port}"),
            transport_failures: Arc::new(AtomicU32::new(0)),
        })
    }

    /// Whether so many requests went unanswered that the server is gone.
    pub fn broken(&self) -> bool {
        self.transport_failures.load(Ordering::Relaxed) >= MAX_TRANSPORT_FAILURES
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        cred: Cred<'_>,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> Sent {
        self.send_query(method, path, &[], cred, body, idempotency_key).await
    }

    async fn send_query(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        cred: Cred<'_>,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> Sent {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if !query.is_empty() {
            request = request.query(query);
        }
        request = match cred {
            Cred::None => request,
            Cred::Member(key) => request.bearer_auth(key),
            Cred::Token(token) => request.header("X-Queue-Token", token),
            Cred::Admin => request.header("X-Admin-Key", ADMIN_KEY),
        };
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        let result = async {
            let response = request.send().await?;
            let status = response.status().as_u16();
            let retry_after_s = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.trim().parse().ok());
            let bytes = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, retry_after_s, bytes))
        }
        .await;
        match result {
            Ok((status, retry_after_s, bytes)) => Ok(Reply {
                status,
                body: parse_body(&bytes),
                retry_after_s,
            }),
            Err(err) => {
                self.transport_failures.fetch_add(1, Ordering::Relaxed);
                Err(transport_error(&err))
            }
        }
    }

    /// `GET /ready` with a short timeout; not counted towards [`Api::broken`].
    pub async fn ready(&self) -> Option<u16> {
        let response = self
            .client
            .get(format!("{}/ready", self.base))
            .timeout(READY_TIMEOUT)
            .send()
            .await
            .ok()?;
        Some(response.status().as_u16())
    }

    pub async fn create_concert(&self, body: &Value) -> Sent {
        self.send(
            Method::POST,
            &format!("{API}/admin/concerts"),
            Cred::Admin,
            Some(body),
            None,
        )
        .await
    }

    pub async fn concert(&self, id: u64) -> Sent {
        self.send(Method::GET, &format!("{API}/concerts/{id}"), Cred::None, None, None)
            .await
    }

    pub async fn register(&self, name: &str) -> Sent {
        let body = json!({ "name": name });
        self.send(Method::POST, &format!("{API}/members"), Cred::None, Some(&body), None)
            .await
    }

    pub async fn me(&self, key: &str) -> Sent {
        self.send(Method::GET, &format!("{API}/members/me"), Cred::Member(key), None, None)
            .await
    }

    pub async fn charge(&self, key: &str, amount: i64, idempotency_key: Option<&str>) -> Sent {
        let body = json!({ "amount": amount });
        let path = format!("{API}/members/me/balance/charges");
        self.send(Method::POST, &path, Cred::Member(key), Some(&body), idempotency_key)
            .await
    }

    /// Every balance-history item, newest first (all pages).
    pub async fn history(&self, key: &str) -> Result<Vec<Value>, String> {
        let path = format!("{API}/members/me/balance/history");
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_HISTORY_PAGES {
            let mut query = vec![("limit", HISTORY_PAGE_LIMIT)];
            if let Some(cursor) = cursor.as_deref() {
                query.push(("cursor", cursor));
            }
            let reply = self
                .send_query(Method::GET, &path, &query, Cred::Member(key), None, None)
                .await?;
            if reply.status != 200 {
                return Err(format!("GET balance/history answered {}", reply.describe()));
            }
            let page = reply.body["items"]
                .as_array()
                .ok_or_else(|| format!("GET balance/history has no items array: {}", reply.body))?;
            items.extend(page.iter().cloned());
            match reply.body.get("nextCursor") {
                Some(Value::String(next)) => cursor = Some(next.clone()),
                Some(Value::Null) | None => return Ok(items),
                Some(other) => return Err(format!("GET balance/history: nextCursor is {other}")),
            }
        }
        Err(format!(
            "GET balance/history: still more pages after {MAX_HISTORY_PAGES} pages"
        ))
    }

    /// `GET /members/me/reservations`, every page (followed by
    /// `nextCursor`): the last page's reply with every page's items, or the
    /// first reply that was not a 200.
    pub async fn my_reservations(&self, key: &str) -> Sent {
        let path = format!("{API}/members/me/reservations");
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_HISTORY_PAGES {
            let mut query = vec![("limit", HISTORY_PAGE_LIMIT)];
            if let Some(cursor) = cursor.as_deref() {
                query.push(("cursor", cursor));
            }
            let mut reply = self
                .send_query(Method::GET, &path, &query, Cred::Member(key), None, None)
                .await?;
            if reply.status != 200 {
                return Ok(reply);
            }
            match reply.body.get("items").and_then(Value::as_array) {
                Some(page) => items.extend(page.iter().cloned()),
                None => return Ok(reply),
            }
            match reply.body.get("nextCursor") {
                Some(Value::String(next)) => cursor = Some(next.clone()),
                _ => {
                    reply.body["items"] = Value::Array(items);
                    return Ok(reply);
                }
            }
        }
        Err(format!(
            "GET /members/me/reservations: still more pages after {MAX_HISTORY_PAGES} pages"
        ))
    }

    pub async fn issue_token(&self, key: &str) -> Sent {
        self.send(
            Method::POST,
            &format!("{API}/queue/tokens"),
            Cred::Member(key),
            None,
            None,
        )
        .await
    }

    pub async fn queue_status(&self, token: &str) -> Sent {
        self.send(
            Method::GET,
            &format!("{API}/queue/status"),
            Cred::Token(token),
            None,
            None,
        )
        .await
    }

    pub async fn seats(&self, token: &str, concert: u64, status: Option<&str>) -> Sent {
        let path = format!("{API}/concerts/{concert}/seats");
        let query: Vec<(&str, &str)> = status.map(|s| ("status", s)).into_iter().collect();
        self.send_query(Method::GET, &path, &query, Cred::Token(token), None, None)
            .await
    }

    pub async fn hold(&self, token: &str, concert: u64, seats: &[u32], idempotency_key: Option<&str>) -> Sent {
        let body = json!({ "concertId": concert, "seatNumbers": seats });
        let path = format!("{API}/reservations");
        self.send(Method::POST, &path, Cred::Token(token), Some(&body), idempotency_key)
            .await
    }

    pub async fn pay(&self, token: &str, reservation: u64, idempotency_key: Option<&str>) -> Sent {
        let body = json!({ "reservationId": reservation });
        let path = format!("{API}/payments");
        self.send(Method::POST, &path, Cred::Token(token), Some(&body), idempotency_key)
            .await
    }

    pub async fn cancel(&self, cred: Cred<'_>, reservation: u64, idempotency_key: Option<&str>) -> Sent {
        let path = format!("{API}/reservations/{reservation}");
        self.send(Method::DELETE, &path, cred, None, idempotency_key).await
    }

    pub async fn reservation(&self, key: &str, reservation: u64) -> Sent {
        let path = format!("{API}/reservations/{reservation}");
        self.send(Method::GET, &path, Cred::Member(key), None, None).await
    }
}

fn parse_body(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

fn transport_error(err: &reqwest::Error) -> String {
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "cannot connect"
    } else {
        "no answer"
    };
    format!("{kind}: {err}")
}

/// `body[field]` as a u64.
pub fn u64_at(body: &Value, field: &str) -> Option<u64> {
    body.get(field).and_then(Value::as_u64)
}

/// `body[field]` as an i64.
pub fn i64_at(body: &Value, field: &str) -> Option<i64> {
    body.get(field).and_then(Value::as_i64)
}

/// `body[field]` as a string.
pub fn str_at<'a>(body: &'a Value, field: &str) -> Option<&'a str> {
    body.get(field).and_then(Value::as_str)
}

/// An RFC 3339 time as Unix milliseconds.
pub fn time_ms(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Now as Unix milliseconds.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
