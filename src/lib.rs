//! `concert-server`: the HTTP API of the reservation engine.
//!
//! Layout: [`settings`] (flags and environment) -> [`startup`]
//! (`Application::build`) -> [`routes`] (one file per resource) over
//! [`state::AppState`], which holds the engine (`concert-actors`), the
//! in-memory [`catalog`] indexes and [`metrics`]. [`error`] is the single
//! table from errors to problem JSON; [`auth`] handles every credential;
//! [`request_id`] names every request and its log lines.

pub mod api;
pub mod auth;
pub mod catalog;
pub mod demo;
pub mod error;
pub mod fail_stop;
pub mod metrics;
pub mod openapi;
pub mod persistence;
pub mod request_id;
pub mod retention;
pub mod routes;
pub mod settings;
pub mod startup;
pub mod state;
pub mod telemetry;
