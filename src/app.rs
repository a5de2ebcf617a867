//! Wiring: state, router and the server's life cycle.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Router, middleware};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::auth::{JwtKeys, LoginLimiter};
use crate::cache::TtlCache;
use crate::config::{Config, Secret};
use crate::elevenlabs::ElevenLabs;
use crate::elevenlabs::simulator::{Simulator, SimulatorConfig};
use crate::error::{ApiError, MSG_METHOD, MSG_NOT_FOUND_ROUTE, panic_response};
use crate::store::DynStore;
use crate::{http, openapi, telemetry};

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: DynStore,
    pub elevenlabs: ElevenLabs,
    /// The in-process simulator, when no `ELEVENLABS_API_KEY` is configured.
    pub simulator: Option<Simulator>,
    /// The secret webhooks must be signed with: `ELEVENLABS_WEBHOOK_SECRET`, or
    /// in simulator mode with simulator webhooks on, a random one generated at
    /// start and shared with the in-process simulator. `None`: the webhook
    /// answers 503.
    pub webhook_secret: Option<Secret>,
    pub cache: Arc<TtlCache>,
    pub jwt: Arc<JwtKeys>,
    pub login_limiter: Arc<LoginLimiter>,
    pub metrics: PrometheusHandle,
    pub started_at: Instant,
    /// `MAX_CONCURRENT_IMPORTS`: the files being read at once share this
    /// budget, so that N uploads at once cost at most this many imports.
    pub import_slots: Arc<tokio::sync::Semaphore>,
    /// Upload requests in flight (their bodies held while they wait for an
    /// import slot): 4 × `MAX_CONCURRENT_IMPORTS`; past it a 503.
    pub upload_slots: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    pub async fn new(config: Config) -> anyhow::Result<Self> {
        let secret = config.resolve_jwt_secret()?;
        let store = crate::store::connect(&config.database_url).await?;
        let timeout = Duration::from_secs(config.elevenlabs_timeout_secs.max(1));
        let (elevenlabs, simulator) = if config.simulator_mode() {
            // The simulator runs in this process on a loopback port of its own,
            // and the real client talks to it over HTTP.
            let simulator = Simulator::new(SimulatorConfig {
                capture_requests: config.simulator_capture,
                api_key: Some(SIMULATOR_KEY.into()),
                step: Duration::from_millis(config.simulator_step_ms.max(1)),
                webhook: None,
            });
            let addr = simulator
                .clone()
                .spawn(SocketAddr::from(([127, 0, 0, 1], 0)))
                .await?;
            let client = ElevenLabs::new(
                &format!("http://{addr}"),
                Secret::new(SIMULATOR_KEY),
                timeout,
            )?;
            (client, Some(simulator))
        } else {
            let key = config
                .elevenlabs_api_key
                .clone()
                .unwrap_or_else(|| Secret::new(""));
            (
                ElevenLabs::new(&config.elevenlabs_base_url, key, timeout)?,
                None,
            )
        };
        let webhook_secret = config.webhook_secret().or_else(|| {
            (simulator.is_some() && config.simulator_webhooks).then(random_webhook_secret)
        });
        Ok(AppState {
            elevenlabs,
            simulator,
            webhook_secret,
            cache: Arc::new(TtlCache::new(Duration::from_secs(
                config.elevenlabs_cache_secs,
            ))),
            jwt: Arc::new(JwtKeys::new(&secret, config.jwt_ttl_hours)),
            login_limiter: LoginLimiter::new(
                config.login_max_attempts,
                Duration::from_secs(config.login_window_secs),
            ),
            metrics: telemetry::metrics_handle(),
            started_at: Instant::now(),
            import_slots: Arc::new(tokio::sync::Semaphore::new(
                config.max_concurrent_imports.clamp(1, 64) as usize,
            )),
            upload_slots: Arc::new(tokio::sync::Semaphore::new(
                config.max_concurrent_imports.clamp(1, 64) as usize * UPLOADS_PER_IMPORT_SLOT,
            )),
            store,
            config: Arc::new(config),
        })
    }
}

/// The key the in-process simulator expects.
const SIMULATOR_KEY: &str = "simulator-local-key";

/// A secret shaped like ElevenLabs' (`wsec_` + 64 hex), for simulator mode.
fn random_webhook_secret() -> Secret {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    Secret::new(format!("wsec_{}", hex::encode(bytes)))
}

/// Upload requests let in per import slot: the rest of an upload's wait is
/// its body in memory (up to ~51 MB of base64).
const UPLOADS_PER_IMPORT_SLOT: usize = 4;

/// The whole HTTP surface. Tests and `serve` both go through here.
pub fn router(state: AppState) -> Router {
    let body_limit = state.config.body_limit_bytes();
    let cors = cors_layer(&state.config);
    let routes = Router::new()
        .merge(http::auth::router())
        .merge(http::users::router())
        .merge(http::groups::router())
        .merge(http::clients::router())
        .merge(http::agents::router())
        .merge(http::calls::router())
        .merge(http::batches::router())
        .merge(http::history::router())
        .merge(http::dnc::router())
        .merge(http::webhooks::router())
        .merge(http::ops::router())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            http::groups::limit_uploads,
        ))
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .merge(openapi::docs_router());

    let request_id = HeaderName::from_static("x-request-id");
    let layers = ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    let request_id = req
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    // The route template, never the raw path: a path may hold a phone number.
                    let route = req
                        .extensions()
                        .get::<axum::extract::MatchedPath>()
                        .map(|p| p.as_str())
                        .unwrap_or("unmatched");
                    tracing::info_span!("request", method = %req.method(), route, request_id)
                })
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        .layer(PropagateRequestIdLayer::new(request_id))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(middleware::from_fn(telemetry::track_metrics))
        .layer(DefaultBodyLimit::max(body_limit));
    let app = routes.layer(layers);
    match cors {
        Some(cors) => app.layer(cors),
        None => app,
    }
}

fn cors_layer(config: &Config) -> Option<CorsLayer> {
    let origins = config.cors_origin_list();
    if origins.is_empty() {
        return None;
    }
    let base = CorsLayer::new()
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            axum::http::header::AUTHORIZATION,
            axum::http::header::CONTENT_TYPE,
            HeaderName::from_static("idempotency-key"),
            HeaderName::from_static("x-request-id"),
        ])
        .expose_headers([
            HeaderName::from_static("x-request-id"),
            axum::http::header::RETRY_AFTER,
        ])
        .max_age(Duration::from_secs(600));
    if origins.iter().any(|o| o == "*") {
        // A wildcard never goes with credentials.
        return Some(base.allow_origin(AllowOrigin::any()));
    }
    let list: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    Some(base.allow_origin(list).allow_credentials(true))
}

async fn route_not_found() -> Response {
    ApiError::not_found(MSG_NOT_FOUND_ROUTE).into_response()
}

async fn method_not_allowed() -> Response {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, MSG_METHOD).into_response()
}

/// A bound listener plus everything needed to serve it.
pub struct Application {
    listener: TcpListener,
    router: Router,
    state: AppState,
}

impl Application {
    /// Connects and migrates the database and binds the port (0 = any free port).
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let addr = format!("{}:{}", config.host, config.port);
        let state = AppState::new(config).await?;
        let listener = TcpListener::bind(&addr).await?;
        if let (Some(simulator), Some(secret), true) = (
            &state.simulator,
            &state.webhook_secret,
            state.config.simulator_webhooks,
        ) {
            // Only now is the port known: the in-process simulator posts its
            // webhooks to this very server, like ElevenLabs would.
            let mut own = listener.local_addr()?;
            if own.ip().is_unspecified() {
                own.set_ip(if own.is_ipv6() {
                    std::net::Ipv6Addr::LOCALHOST.into()
                } else {
                    std::net::Ipv4Addr::LOCALHOST.into()
                });
            }
            simulator.set_webhook(
                format!("http://{own}{}", http::webhooks::PATH),
                secret.clone(),
            );
        }
        Ok(Application {
            router: router(state.clone()),
            listener,
            state,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish for
    /// at most `SHUTDOWN_TIMEOUT_SECS`.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let grace = Duration::from_secs(self.state.config.shutdown_timeout_secs);
        let stopping = Arc::new(tokio::sync::Notify::new());
        let notify = stopping.clone();
        // The sync worker runs beside the server and stops with it.
        let (stop_sync, mut sync_stopped) = tokio::sync::watch::channel(false);
        let worker = (self.state.config.sync_interval_secs > 0).then(|| {
            let worker = crate::sync::SyncWorker::new(&self.state);
            tokio::spawn(worker.run(async move {
                let _ = sync_stopped.wait_for(|stop| *stop).await;
            }))
        });
        let server = axum::serve(
            self.listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutting down: finishing in-flight requests");
            let _ = stop_sync.send(true);
            notify.notify_one();
        });
        let result = tokio::select! {
            result = server => result,
            _ = async { stopping.notified().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(grace_secs = grace.as_secs(), "in-flight requests did not finish in time");
                Ok(())
            }
        };
        if let Some(worker) = worker {
            // A tick in progress finishes (its leases would expire anyway).
            let _ = tokio::time::timeout(grace, worker).await;
        }
        result
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
