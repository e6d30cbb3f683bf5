//! `concert-server`: parse settings, start logging, serve until a signal.
//!
//! Exit codes: 0 after a clean stop (SIGTERM/SIGINT); 1 when the server
//! cannot start (any `StartupError`, logged as `cannot start: ...`) or
//! fails while serving; 2 for flags or variables clap rejects; the
//! fail-stop's own code (`fail_stop::FAIL_STOP_EXIT_CODE`) when a broken
//! invariant stops it.

use std::sync::Arc;

use clap::Parser;
use concert_actors::clock::SystemClock;
use concert_server::settings::Settings;
use concert_server::startup::Application;
use concert_server::telemetry;

/// mimalloc instead of glibc malloc: the request paths allocate and free
/// many small buffers across worker threads (see docs/PERFORMANCE.md,
/// "HTTP load (k6)").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[actix_web::main]
async fn main() -> std::process::ExitCode {
    let settings = Settings::parse();
    telemetry::init(settings.log_format);
    // Serving (503 until recovered) before recovery starts; a database
    // another server uses is refused here.
    let starting = match Application::start(settings.clone(), Arc::new(SystemClock)).await {
        Ok(starting) => starting,
        Err(err) => {
            tracing::error!("cannot start: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let base = format!("http://{}:{}", settings.addr.ip(), starting.port());
    tracing::info!("listening on {base}/api/v1 (503 until recovered) — Swagger UI at {base}/docs");
    let app = match starting.recover().await {
        Ok(app) => app,
        Err(err) => {
            tracing::error!("cannot start: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    tracing::info!("ready");
    match app.run_until_stopped().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("server failed: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
