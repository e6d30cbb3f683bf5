//! `Application::build`: wires settings, engine, state and the HTTP server.
//! Binds any address (port 0 in tests) and exposes the bound port.

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix_web::dev::{Server, Service};
use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
use actix_web::{web, App, HttpRequest, HttpServer};
use concert_actors::clock::{SharedClock, SystemClock};
use concert_actors::events::{EventSink, NullSink};
use concert_actors::router::ConcertRouter;
use concert_actors::Engine;
use futures_util::future::FutureExt;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::auth::{random_secret, sha256};
use crate::catalog::Catalog;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::openapi::ApiDoc;
use crate::routes;
use crate::settings::Settings;
use crate::state::AppState;

/// How long shutdown waits for in-flight requests.
const SHUTDOWN_TIMEOUT_SECS: u64 = 30;

pub struct Application {
    port: u16,
    server: Server,
    state: web::Data<AppState>,
}

impl Application {
    /// Builds everything with the wall clock. Must run inside an actix System.
    pub fn build(settings: Settings) -> Result<Self, String> {
        Self::build_with_clock(settings, Arc::new(SystemClock))
    }

    /// Builds everything with `clock` (tests drive virtual time through it).
    pub fn build_with_clock(settings: Settings, clock: SharedClock) -> Result<Self, String> {
        settings.validate()?;
        let sink: Arc<dyn EventSink> = Arc::new(NullSink::default());
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let engine = Arc::new(Engine::start(
            settings.engine(),
            clock,
            sink,
            ConcertRouter::with_threads(threads),
        ));
        let admin_key_hash = match &settings.admin_key {
            Some(key) => sha256(key.as_bytes()),
            None => {
                let key = format!("ak_{}", random_secret());
                // The contract asks for this one line; the key is shown nowhere else.
                tracing::warn!("admin key (shown once, keep it safe): {key}");
                sha256(key.as_bytes())
            }
        };
        let state = web::Data::new(AppState {
            engine,
            catalog: Catalog::default(),
            metrics: Metrics::new().map_err(|err| format!("metrics: {err}"))?,
            settings: settings.clone(),
            admin_key_hash,
            ready: AtomicBool::new(false),
        });
        if settings.demo_data && state.catalog.is_empty() {
            let created = crate::demo::seed(&state).map_err(|err| format!("demo data: {err}"))?;
            tracing::info!(concerts = created, "demo catalog seeded");
        }
        let listener =
            TcpListener::bind(settings.addr).map_err(|err| format!("cannot bind {}: {err}", settings.addr))?;
        let port = listener.local_addr().map_err(|err| err.to_string())?.port();
        let server = server(listener, state.clone(), settings.max_body_bytes)?;
        state.ready.store(true, Ordering::Release);
        Ok(Self { port, server, state })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn state(&self) -> web::Data<AppState> {
        self.state.clone()
    }

    /// A handle to stop the server (tests).
    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Serves until SIGTERM/SIGINT, lets in-flight requests finish, then
    /// stops the engine's actors.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = self.server.await;
        self.state.ready.store(false, Ordering::Release);
        self.state.engine.shutdown();
        tracing::info!("server stopped");
        result
    }
}

fn json_error(err: JsonPayloadError, _: &HttpRequest) -> actix_web::Error {
    let api = match err {
        JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => ApiError::PayloadTooLarge,
        JsonPayloadError::ContentType => ApiError::UnsupportedMediaType,
        other => ApiError::Validation(format!("invalid JSON body: {other}")),
    };
    api.into()
}

fn path_error(err: PathError, _: &HttpRequest) -> actix_web::Error {
    ApiError::Validation(format!("invalid path: {err}")).into()
}

fn query_error(err: QueryPayloadError, _: &HttpRequest) -> actix_web::Error {
    ApiError::Validation(format!("invalid query: {err}")).into()
}

/// Known methods keep their name in metrics; anything else is `OTHER`
/// (bounded label cardinality).
fn method_label(method: &actix_web::http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "DELETE" => "DELETE",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "OTHER",
    }
}

fn server(listener: TcpListener, state: web::Data<AppState>, max_body_bytes: usize) -> Result<Server, String> {
    let openapi = ApiDoc::openapi();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(
                web::JsonConfig::default()
                    .limit(max_body_bytes)
                    .error_handler(json_error),
            )
            .app_data(web::PathConfig::default().error_handler(path_error))
            .app_data(web::QueryConfig::default().error_handler(query_error))
            .app_data(web::PayloadConfig::default().limit(max_body_bytes))
            .wrap_fn(|req, srv| {
                let started = Instant::now();
                let state = req.app_data::<web::Data<AppState>>().cloned();
                srv.call(req).map(move |res| {
                    if let (Ok(res), Some(state)) = (&res, state) {
                        let route = res.request().match_pattern().unwrap_or_else(|| "unmatched".to_owned());
                        let method = method_label(res.request().method());
                        state
                            .metrics
                            .http_requests
                            .with_label_values(&[route.as_str(), method, res.status().as_str()])
                            .inc();
                        state
                            .metrics
                            .http_latency
                            .with_label_values(&[route.as_str(), method])
                            .observe(started.elapsed().as_secs_f64());
                    }
                    res
                })
            })
            .configure(routes::configure)
            .configure(routes::configure_ops)
            .route("/docs", web::get().to(routes::redirect_docs))
            .service(SwaggerUi::new("/docs/{_:.*}").url("/api-docs/openapi.json", openapi.clone()))
            .default_service(web::to(routes::not_found))
    })
    .shutdown_timeout(SHUTDOWN_TIMEOUT_SECS)
    .listen(listener)
    .map_err(|err| format!("cannot listen: {err}"))?
    .run();
    Ok(server)
}
