//! `concert-server`: parse settings, start logging, serve until a signal.

use clap::Parser;
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
    let app = match Application::build(settings.clone()).await {
        Ok(app) => app,
        Err(err) => {
            tracing::error!("cannot start: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let base = format!("http://{}:{}", settings.addr.ip(), app.port());
    tracing::info!("listening on {base}/api/v1 — Swagger UI at {base}/docs");
    match app.run_until_stopped().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("server failed: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
