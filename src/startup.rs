//! `Application::build`: wires settings, database, recovery, engine, state
//! and the HTTP server. Binds any address (port 0 in tests) and exposes the
//! bound port.
//!
//! Two stages. [`Application::start`]: take the database's writer lock (one
//! server per database, `persistence::ownership`) -> connect and migrate ->
//! bind and serve at once: `/health` 200, `/ready` 503 and every API call
//! 503 UNAVAILABLE with `Retry-After`. [`Starting::recover`]: recover the
//! state from the database -> restore it into the engine -> start the
//! persister's flusher and snapshots -> ready. `build` runs both.
//!
//! What can stop a start is a [`StartupError`]: its message is the one
//! operators read after `cannot start:`, and `src/main.rs` exits 1 on any.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::dev::{Server, ServerHandle, Service};
use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
use actix_web::rt::task::JoinHandle;
use actix_web::{web, App, HttpRequest, HttpServer};
use concert_actors::clock::{SharedClock, SystemClock};
use concert_actors::router::ConcertRouter;
use concert_actors::sink::EventSink;
use concert_actors::{Engine, EngineError};
use futures_util::future::{Either, FutureExt};
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::auth::{random_secret, sha256};
use crate::catalog::Catalog;
use crate::error::ApiError;
use crate::fail_stop;
use crate::metrics::Metrics;
use crate::openapi::ApiDoc;
use crate::persistence::ownership::{InUse, LockError, Ownership};
use crate::persistence::recovery::recover;
use crate::persistence::snapshot::run_snapshots;
use crate::persistence::{Db, Persister};
use crate::retention::{run_retention, Retention};
use crate::routes;
use crate::routes::seat_maps::SeatMapCache;
use crate::settings::Settings;
use crate::state::AppState;

/// How long shutdown waits for in-flight requests.
const SHUTDOWN_TIMEOUT_SECS: u64 = 30;
/// How long shutdown waits for the backlog to commit.
const FLUSH_ON_SHUTDOWN: Duration = Duration::from_secs(10);
const ADMIN_KEY_SETTING: &str = "admin_key_hash";

/// Why the server did not start. The `Display` of each variant is what the
/// log line `cannot start: ...` says.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// Settings clap accepted but [`Settings::validate`] did not; every
    /// problem at once, `; `-separated.
    #[error("{0}")]
    Settings(String),
    /// Another server holds the database's writer lock (one server per
    /// database): "the database is in use by another server: ...".
    #[error(transparent)]
    DatabaseInUse(#[from] InUse),
    /// The database could not be opened, migrated or read at start (a bad
    /// URL, no server, a refused journal file, the admin key's setting),
    /// or its writer lock could not be tried.
    #[error("{0}")]
    Database(String),
    /// The listen address could not be bound (taken, not local).
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The bound socket could not be served.
    #[error("cannot listen: {0}")]
    Listen(#[source] std::io::Error),
    /// The metrics registry refused a metric (a programming error).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// Recovery stopped: the database's state cannot be restored as it is
    /// (a damaged journal row names its position).
    #[error("{0}")]
    Recovery(String),
    /// The demo catalog could not be seeded.
    #[error("demo data: {0}")]
    DemoData(#[source] EngineError),
}

impl From<LockError> for StartupError {
    fn from(err: LockError) -> Self {
        match err {
            LockError::InUse(in_use) => StartupError::DatabaseInUse(in_use),
            LockError::Unavailable(why) => StartupError::Database(why),
        }
    }
}

pub struct Application {
    port: u16,
    /// The HTTP server, spawned (so polled) from the first stage on.
    server: JoinHandle<std::io::Result<()>>,
    server_handle: ServerHandle,
    state: web::Data<AppState>,
    /// The database's writer lock, released once the server has stopped.
    ownership: Ownership,
}

/// An application between its two start-up stages: serving (503 but for
/// `/health`), not recovered yet.
pub struct Starting {
    app: Application,
}

impl Application {
    /// Builds everything with the wall clock. Must run inside an actix System.
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        Self::build_with_clock(settings, Arc::new(SystemClock)).await
    }

    /// Builds everything with `clock` (tests drive virtual time through it).
    pub async fn build_with_clock(settings: Settings, clock: SharedClock) -> Result<Self, StartupError> {
        Self::start(settings, clock).await?.recover().await
    }

    /// The first stage: writer lock, database, and the HTTP server already
    /// serving (`/health` 200; `/ready` and the API 503 until
    /// [`Starting::recover`] has finished).
    pub async fn start(settings: Settings, clock: SharedClock) -> Result<Starting, StartupError> {
        settings.validate().map_err(StartupError::Settings)?;
        // Before anything touches the database (migrations included).
        let ownership = Ownership::acquire(&settings.database_url, fail_stop::exit_process()).await?;
        let db = Db::connect(&settings.database_url)
            .await
            .map_err(StartupError::Database)?;
        let persister = Persister::new(0, settings.flush_interval);
        let sink: Arc<dyn EventSink> = persister.clone();
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let engine = Arc::new(Engine::start(
            settings.engine(),
            clock,
            sink,
            ConcertRouter::with_threads(threads),
        ));
        let state = web::Data::new(AppState {
            engine,
            catalog: Catalog::default(),
            seat_maps: SeatMapCache::default(),
            metrics: Metrics::new()?,
            settings: settings.clone(),
            admin_key_hash: admin_key_hash(&settings, &db).await?,
            db: db.clone(),
            persister: persister.clone(),
            ready: AtomicBool::new(false),
        });
        let listener = TcpListener::bind(settings.addr).map_err(|source| StartupError::Bind {
            addr: settings.addr,
            source,
        })?;
        let port = listener.local_addr().map_err(StartupError::Listen)?.port();
        let server = server(listener, state.clone(), settings.max_body_bytes)?;
        let server_handle = server.handle();
        // Spawned now, not awaited after recovery: an actix `Server` starts
        // its acceptor and workers only once polled, and until then
        // connections wait in the backlog unanswered.
        let server = actix_web::rt::spawn(server);
        tokio::task::yield_now().await;
        Ok(Starting {
            app: Application {
                port,
                server,
                server_handle,
                state,
                ownership,
            },
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn state(&self) -> web::Data<AppState> {
        self.state.clone()
    }

    /// A handle to stop the server (tests).
    pub fn handle(&self) -> ServerHandle {
        self.server_handle.clone()
    }

    /// Serves until SIGTERM/SIGINT, lets in-flight requests finish, commits
    /// what was acknowledged, then stops the engine's actors and lets the
    /// database's writer lock go.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = match self.server.await {
            Ok(result) => result,
            Err(err) => Err(std::io::Error::other(format!("the HTTP server task failed: {err}"))),
        };
        self.state.ready.store(false, Ordering::Release);
        let deadline = Instant::now() + FLUSH_ON_SHUTDOWN;
        if !self.state.persister.shutdown(FLUSH_ON_SHUTDOWN).await {
            tracing::error!("the backlog could not be committed before shutdown");
        }
        // The tables catch up and the flusher lets go of its connections
        // before the pool closes.
        if !self
            .state
            .persister
            .stopped(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            tracing::warn!(
                "the tables did not catch up with the journal before shutdown; the next start projects the rest"
            );
        }
        self.state.engine.shutdown();
        self.state.db.close().await;
        self.ownership.release().await;
        tracing::info!("server stopped");
        result
    }
}

impl Starting {
    pub fn port(&self) -> u16 {
        self.app.port
    }

    pub fn state(&self) -> web::Data<AppState> {
        self.app.state.clone()
    }

    /// The second stage: recovers the state, starts the persister and the
    /// snapshots, and turns ready. On failure the HTTP server is stopped.
    pub async fn recover(self) -> Result<Application, StartupError> {
        match recover_and_run(&self.app.state).await {
            Ok(()) => Ok(self.app),
            Err(err) => {
                self.app.server_handle.stop(false).await;
                Err(err)
            }
        }
    }
}

async fn recover_and_run(state: &web::Data<AppState>) -> Result<(), StartupError> {
    let started = Instant::now();
    let (db, persister, settings) = (&state.db, &state.persister, &state.settings);
    let recovered = recover(db).await.map_err(StartupError::Recovery)?;
    persister.resume_after(recovered.last_pos);
    state.engine.restore(recovered.state);
    for handle in state.engine.router().all() {
        state.catalog.add(&handle.info);
    }
    tracing::info!(
        source = %recovered.source,
        concerts = state.catalog.len(),
        members = state.engine.accounts().len(),
        took_ms = started.elapsed().as_millis() as u64,
        "state recovered"
    );
    // A tokio task, not one on actix's `LocalSet`: tokio drops its tasks
    // inside the runtime's context when the runtime stops, so a commit or
    // projection cut short there hands its connection back to the pool
    // (sqlx spawns for that, which panics outside a runtime's context, as
    // `LocalSet` tasks are dropped).
    tokio::spawn(persister.clone().run(db.clone()));
    if settings.demo_data && state.catalog.is_empty() {
        let created = crate::demo::seed(state).map_err(StartupError::DemoData)?;
        tracing::info!(concerts = created, "demo catalog seeded");
    }
    // A tokio task too, for the same reason: a snapshot cut short by
    // shutdown hands its connection back inside the runtime's context.
    tokio::spawn(run_snapshots(
        state.engine.clone(),
        persister.clone(),
        db.clone(),
        settings.snapshot_interval,
        fail_stop::exit_process(),
    ));
    // Records past their TTL that recovery loaded go at the first pass.
    tokio::spawn(run_retention(
        state.engine.clone(),
        persister.clone(),
        db.clone(),
        Retention::from_settings(settings),
    ));
    state.ready.store(true, Ordering::Release);
    Ok(())
}

/// The admin key's hash: `CONCERT_ADMIN_KEY` wins; else the stored hash;
/// else a new key, printed once and stored only as a hash.
async fn admin_key_hash(settings: &Settings, db: &Db) -> Result<[u8; 32], StartupError> {
    if let Some(key) = &settings.admin_key {
        return Ok(sha256(key.as_bytes()));
    }
    let stored = db
        .setting(ADMIN_KEY_SETTING)
        .await
        .map_err(|e| StartupError::Database(format!("cannot read settings: {e}")))?;
    if let Some(hash) = stored.and_then(|h| <[u8; 32]>::try_from(h).ok()) {
        return Ok(hash);
    }
    let key = format!("ak_{}", random_secret());
    let hash = sha256(key.as_bytes());
    db.set_setting(ADMIN_KEY_SETTING, &hash)
        .await
        .map_err(|e| StartupError::Database(format!("cannot store the admin key hash: {e}")))?;
    // The contract asks for this one line at first start; the key is shown nowhere else.
    tracing::warn!("admin key (shown once, keep it safe): {key}");
    Ok(hash)
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

fn server(listener: TcpListener, state: web::Data<AppState>, max_body_bytes: usize) -> Result<Server, StartupError> {
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
            // While recovering, the API answers 503 (operations endpoints still answer).
            .wrap_fn(|req, srv| {
                let recovering = req.path().starts_with("/api/v1")
                    && req
                        .app_data::<web::Data<AppState>>()
                        .is_some_and(|state| !state.recovered());
                if recovering {
                    let response = req.error_response(ApiError::Engine(EngineError::Unavailable));
                    Either::Left(std::future::ready(Ok(response)))
                } else {
                    Either::Right(srv.call(req))
                }
            })
            .wrap_fn(|req, srv| {
                let started = Instant::now();
                let state = req.app_data::<web::Data<AppState>>().cloned();
                srv.call(req).map(move |res| {
                    if let (Ok(res), Some(state)) = (&res, state) {
                        let route = res.request().match_pattern();
                        state.metrics.observe_http(
                            route.as_deref().unwrap_or("unmatched"),
                            method_label(res.request().method()),
                            res.status().as_u16(),
                            started.elapsed().as_secs_f64(),
                        );
                    }
                    res
                })
            })
            // Outermost: every log line of the request carries its id.
            .wrap(actix_web::middleware::from_fn(crate::request_id::with_request_id))
            // Before the /api/v1 scope: its stats path would end in that scope's 404.
            .configure(routes::stats::configure)
            .configure(routes::pages::configure)
            .configure(routes::configure)
            .configure(routes::configure_ops)
            .route("/docs", web::get().to(routes::redirect_docs))
            .service(SwaggerUi::new("/docs/{_:.*}").url("/api-docs/openapi.json", openapi.clone()))
            .default_service(web::to(routes::not_found))
    })
    .shutdown_timeout(SHUTDOWN_TIMEOUT_SECS)
    .listen(listener)
    .map_err(StartupError::Listen)?
    .run();
    Ok(server)
}
