//! Settings: every one is an environment variable and a flag of
//! `concert-server` (the flag is the variable's name without `CONCERT_`,
//! lower-case, `_` -> `-`). Parsed and validated once at start-up.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};
use concert_actors::accounts::WalletLimits;
use concert_actors::concert_actor::HoldSettings;
use concert_actors::queue::QueueSettings;
use concert_actors::seat_map::HoldLimits;
use concert_actors::EngineSettings;

/// Largest accepted `CONCERT_MAX_BODY_BYTES` (a limit on everything).
const MAX_BODY_LIMIT_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Durability {
    /// A write is answered after its batch is committed.
    Sync,
    /// A write is answered at once and flushed within the flush interval.
    Async,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|err| format!("`{text}` is not a duration like 5m or 500ms: {err}"))
}

fn timezone(text: &str) -> Result<chrono_tz::Tz, String> {
    text.parse::<chrono_tz::Tz>()
        .map_err(|_| format!("`{text}` is not an IANA time zone such as Asia/Seoul"))
}

/// The concert reservation server.
#[derive(Debug, Clone, Parser)]
#[command(name = "concert-server", version, about)]
pub struct Settings {
    /// Listen address.
    #[arg(long, env = "CONCERT_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// `sqlite://...` or `postgres://...`.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://data/concert.db")]
    pub database_url: String,
    /// Operator key; generated at first start when unset.
    #[arg(long, env = "CONCERT_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// IANA zone for calendar dates.
    #[arg(long, env = "CONCERT_TIMEZONE", default_value = "Asia/Seoul", value_parser = timezone)]
    pub timezone: chrono_tz::Tz,
    /// How long an unpaid hold lives.
    #[arg(long, env = "CONCERT_HOLD_TIMEOUT", default_value = "5m", value_parser = duration)]
    pub hold_timeout: Duration,
    /// How often due holds are released.
    #[arg(long, env = "CONCERT_EXPIRY_TICK", default_value = "100ms", value_parser = duration)]
    pub expiry_tick: Duration,
    /// Admission interval of the waiting queue.
    #[arg(long, env = "CONCERT_QUEUE_TICK", default_value = "1s", value_parser = duration)]
    pub queue_tick: Duration,
    /// Tokens admitted per tick.
    #[arg(long, env = "CONCERT_QUEUE_ADMIT_PER_TICK", default_value_t = 50)]
    pub queue_admit_per_tick: u32,
    /// Cap on ACTIVE tokens.
    #[arg(long, env = "CONCERT_QUEUE_MAX_ACTIVE", default_value_t = 1000)]
    pub queue_max_active: u32,
    /// Life of an ACTIVE token.
    #[arg(long, env = "CONCERT_TOKEN_TTL", default_value = "10m", value_parser = duration)]
    pub token_ttl: Duration,
    /// Expire WAITING tokens not polled for this long.
    #[arg(long, env = "CONCERT_WAITING_IDLE_TIMEOUT", default_value = "2m", value_parser = duration)]
    pub waiting_idle_timeout: Duration,
    #[arg(long, env = "CONCERT_MAX_SEATS_PER_RESERVATION", default_value_t = 4)]
    pub max_seats_per_reservation: u32,
    /// Per concert, pending + confirmed.
    #[arg(long, env = "CONCERT_MAX_SEATS_PER_MEMBER", default_value_t = 4)]
    pub max_seats_per_member: u32,
    /// Largest single charge, KRW.
    #[arg(long, env = "CONCERT_MAX_CHARGE", default_value_t = 10_000_000)]
    pub max_charge: i64,
    /// Balance ceiling, KRW.
    #[arg(long, env = "CONCERT_MAX_BALANCE", default_value_t = 1_000_000_000)]
    pub max_balance: i64,
    /// Request body limit.
    #[arg(long, env = "CONCERT_MAX_BODY_BYTES", default_value_t = 65_536)]
    pub max_body_bytes: usize,
    /// `sync` or `async`.
    #[arg(long, env = "CONCERT_DURABILITY", value_enum, default_value = "sync")]
    pub durability: Durability,
    /// Longest wait before a batch is flushed.
    #[arg(long, env = "CONCERT_FLUSH_INTERVAL", default_value = "2ms", value_parser = duration)]
    pub flush_interval: Duration,
    /// How often state snapshots are written.
    #[arg(long, env = "CONCERT_SNAPSHOT_INTERVAL", default_value = "1m", value_parser = duration)]
    pub snapshot_interval: Duration,
    /// How long CANCELLED and EXPIRED reservations stay in memory after
    /// they finish (and concerts after they start); later reads of them come
    /// from the database's tables, with the same answers.
    #[arg(long, env = "CONCERT_FINISHED_RETENTION", default_value = "1h", value_parser = duration)]
    pub finished_retention: Duration,
    /// How long idempotency records are kept, in memory and in the database
    /// (the 24 h promise of the contract holds at 24h or more).
    #[arg(long, env = "CONCERT_IDEMPOTENCY_TTL", default_value = "24h", value_parser = duration)]
    pub idempotency_ttl: Duration,
    /// Seed a demo catalog when there are no concerts.
    #[arg(long, env = "CONCERT_DEMO_DATA", default_value_t = true, action = clap::ArgAction::Set)]
    pub demo_data: bool,
    /// `pretty` or `json`.
    #[arg(long, env = "CONCERT_LOG_FORMAT", value_enum, default_value = "pretty")]
    pub log_format: LogFormat,
}

impl Settings {
    /// Checks the values clap cannot; returns every problem at once.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, msg: &str| {
            if !ok {
                problems.push(msg.to_owned());
            }
        };
        check(!self.hold_timeout.is_zero(), "CONCERT_HOLD_TIMEOUT must be positive");
        check(!self.expiry_tick.is_zero(), "CONCERT_EXPIRY_TICK must be positive");
        check(!self.queue_tick.is_zero(), "CONCERT_QUEUE_TICK must be positive");
        check(!self.token_ttl.is_zero(), "CONCERT_TOKEN_TTL must be positive");
        check(
            !self.finished_retention.is_zero(),
            "CONCERT_FINISHED_RETENTION must be positive",
        );
        check(
            !self.idempotency_ttl.is_zero(),
            "CONCERT_IDEMPOTENCY_TTL must be positive",
        );
        check(
            !self.waiting_idle_timeout.is_zero(),
            "CONCERT_WAITING_IDLE_TIMEOUT must be positive",
        );
        check(
            self.queue_admit_per_tick >= 1,
            "CONCERT_QUEUE_ADMIT_PER_TICK must be at least 1",
        );
        check(
            self.queue_max_active >= 1,
            "CONCERT_QUEUE_MAX_ACTIVE must be at least 1",
        );
        check(
            (1..=100).contains(&self.max_seats_per_reservation),
            "CONCERT_MAX_SEATS_PER_RESERVATION must be 1..=100",
        );
        check(
            (1..=1000).contains(&self.max_seats_per_member),
            "CONCERT_MAX_SEATS_PER_MEMBER must be 1..=1000",
        );
        check(self.max_charge >= 1, "CONCERT_MAX_CHARGE must be at least 1");
        check(self.max_balance >= 1, "CONCERT_MAX_BALANCE must be at least 1");
        check(
            (1024..=MAX_BODY_LIMIT_BYTES).contains(&self.max_body_bytes),
            "CONCERT_MAX_BODY_BYTES must be 1024..=16777216",
        );
        check(
            self.database_url.starts_with("sqlite:") || self.database_url.starts_with("postgres"),
            "DATABASE_URL must start with sqlite: or postgres://",
        );
        if let Some(key) = &self.admin_key {
            check(key.len() >= 16, "CONCERT_ADMIN_KEY must be at least 16 characters");
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// The engine's part of the settings.
    pub fn engine(&self) -> EngineSettings {
        EngineSettings {
            hold: HoldSettings {
                hold_timeout_ms: millis(self.hold_timeout),
                expiry_tick_ms: millis(self.expiry_tick) as u64,
                limits: HoldLimits {
                    max_seats_per_reservation: self.max_seats_per_reservation,
                    max_seats_per_member: self.max_seats_per_member,
                },
            },
            wallet: WalletLimits {
                max_charge: self.max_charge,
                max_balance: self.max_balance,
            },
            queue: QueueSettings {
                tick_ms: millis(self.queue_tick),
                admit_per_tick: self.queue_admit_per_tick,
                max_active: self.queue_max_active,
                token_ttl_ms: millis(self.token_ttl),
                idle_timeout_ms: millis(self.waiting_idle_timeout),
            },
        }
    }

    /// Defaults as if started with no flags and no environment (tests): the
    /// `CONCERT_*` and `DATABASE_URL` variables of whoever runs the tests
    /// are not read.
    pub fn defaults() -> Self {
        let command = Self::command().mut_args(|arg| arg.env(None));
        let matches = command
            .try_get_matches_from(["concert-server"])
            .unwrap_or_else(|err| panic!("the defaults parse without flags: {err}"));
        Self::from_arg_matches(&matches).unwrap_or_else(|err| panic!("the defaults are settings: {err}"))
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented defaults (docs/API.md, "11. Configuration"), whatever the
    /// environment of the test process holds.
    #[test]
    fn defaults_are_the_documented_ones() {
        let defaults = Settings::defaults();
        assert_eq!(defaults.addr, "127.0.0.1:8080".parse().expect("an address"));
        assert_eq!(defaults.database_url, "sqlite://data/concert.db");
        assert_eq!(defaults.admin_key, None);
        assert_eq!(defaults.hold_timeout, Duration::from_secs(300));
        assert_eq!(defaults.durability, Durability::Sync);
        assert_eq!(defaults.max_body_bytes, 65_536);
        assert_eq!(defaults.log_format, LogFormat::Pretty);
        assert!(defaults.demo_data);
        defaults.validate().expect("the defaults are valid");
    }
}
