//! The HTTP side of the daemon: health (`/healthz`, `/readyz`), Prometheus `/metrics`, the
//! KServe v2 REST protocol (`/v2/…`, with the binary-tensor extension) and the compatibility
//! `POST /predict` of the FastAPI server it replaces.
//!
//! Architecture invariant: HTTP runs on its own thread with its own single-threaded tokio
//! runtime, never on a data-path core. It reaches the data path only through the model table
//! (one atomic load per request) and relaxed counters, and runs inference on its own bounded
//! pool of threads with their own engine sessions (one per model version and thread), so
//! HTTP load cannot stall a core and a slow model cannot stall the HTTP thread. Connections,
//! header and body time and body memory are bounded by the `[http]` limits
//! ([`config::HttpConfig`]).

mod body;
pub mod config;
mod infer;
mod kserve;
mod pool;
mod predict;
mod serve;
mod tls;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::config::Config;
use crate::model_table::{AtomicHistogram, ModelTable, LATENCY_BOUNDS_S};
use crate::security::Token;
use crate::server::ServerStats;

pub use infer::SessionCache;

/// Why the HTTP server could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("binding HTTP on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP auth token: {0}")]
    Token(#[from] crate::security::TokenError),
    #[error("HTTPS: {0}")]
    Tls(#[from] crate::security::TlsError),
    #[error("starting the HTTP thread: {0}")]
    Io(#[from] std::io::Error),
}

/// The running HTTP server.
pub struct HttpHandle {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    pool: Arc<pool::InferPool>,
}

impl HttpHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets requests in progress finish, and joins the thread.
    pub fn shutdown(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.pool.close();
    }
}

impl Drop for HttpHandle {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// Binds `http.listen` from the config (`Ok(None)` when HTTP is off). Separate from
/// [`spawn`] so `main` can bind everything before starting anything, and so a listener from
/// systemd socket activation can be passed instead.
pub fn bind(cfg: &Config) -> Result<Option<TcpListener>, HttpError> {
    let Some(addr) = cfg.http.listen else {
        return Ok(None);
    };
    TcpListener::bind(addr)
        .map(Some)
        .map_err(|source| HttpError::Bind { addr, source })
}

/// Starts the HTTP server on `listener`, on its own thread and runtime. `server` adds the
/// data path's counters to `/metrics` when given.
pub fn spawn(
    cfg: &Config,
    table: Arc<ModelTable>,
    server: Option<Arc<ServerStats>>,
    listener: TcpListener,
) -> Result<HttpHandle, HttpError> {
    let tls = match (&cfg.http.tls_cert, &cfg.http.tls_key) {
        (Some(cert), Some(key)) => Some(crate::security::tls_server_config(cert, key)?),
        _ => None,
    };
    let token = cfg
        .http
        .auth_token_file
        .as_deref()
        .map(Token::from_file)
        .transpose()?;
    let h = &cfg.http;
    let pool = pool::InferPool::start(h.infer_threads, h.infer_queue)?;
    let conns = Arc::new(serve::ConnStats::default());
    let state = Arc::new(HttpState {
        table,
        server,
        token,
        predict_model: cfg.predict_model(),
        allow_non_finite: cfg.engine.allow_non_finite,
        pool: pool.clone(),
        budget: body::Budget::new(h.body_budget_bytes),
        body_limits: body::BodyLimits {
            max_bytes: h.max_body_bytes,
            timeout: h.body_read_timeout(),
            min_rate: h.body_min_rate_bytes_per_s,
        },
        stats: HttpStats {
            conns: conns.clone(),
            ..HttpStats::default()
        },
    });
    let limits = serve::ConnLimits {
        max_connections: h.max_connections,
        header_read_timeout: h.header_read_timeout(),
        keep_alive_idle: h.keep_alive_idle(),
    };
    let router = router(state, h.max_body_bytes);
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
    let thread = std::thread::Builder::new()
        .name("edgeinfer-http".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                serve::serve(listener, tls, router, limits, conns, stop_rx).await;
            });
        })?;
    ready_rx
        .recv()
        .map_err(|_| std::io::Error::other("the HTTP thread exited while starting"))??;
    Ok(HttpHandle {
        addr,
        stop: Some(stop_tx),
        thread: Some(thread),
        pool,
    })
}

// === State ===

pub(crate) struct HttpState {
    pub table: Arc<ModelTable>,
    pub server: Option<Arc<ServerStats>>,
    pub token: Option<Token>,
    pub predict_model: String,
    pub allow_non_finite: bool,
    pub pool: Arc<pool::InferPool>,
    pub budget: Arc<body::Budget>,
    pub body_limits: body::BodyLimits,
    pub stats: HttpStats,
}

/// HTTP requests by route and status, latency by route, and the hostile-client guards.
#[derive(Default)]
pub(crate) struct HttpStats {
    by_route: Mutex<BTreeMap<String, RouteStats>>,
    conns: Arc<serve::ConnStats>,
    budget_refused: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct RouteStats {
    codes: BTreeMap<u16, u64>,
    latency: AtomicHistogram,
}

impl HttpStats {
    fn budget_refused(&self) {
        self.budget_refused.fetch_add(1, Relaxed);
    }

    fn record(&self, route: &str, status: u16, elapsed: std::time::Duration) {
        let mut m = self.by_route.lock().unwrap_or_else(|e| e.into_inner());
        let r = m.entry(route.to_owned()).or_default();
        *r.codes.entry(status).or_default() += 1;
        r.latency.observe(elapsed);
    }

    fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let m = self.by_route.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(
            out,
            "# HELP edgeinfer_http_requests_total HTTP requests by route and status code.\n\
             # TYPE edgeinfer_http_requests_total counter"
        );
        for (route, r) in m.iter() {
            for (code, n) in &r.codes {
                let _ = writeln!(
                    out,
                    "edgeinfer_http_requests_total{{route=\"{}\",code=\"{code}\"}} {n}",
                    crate::metrics::escape(route)
                );
            }
        }
        let name = "edgeinfer_http_request_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} HTTP request handling time by route.\n# TYPE {name} histogram"
        );
        for (route, r) in m.iter() {
            let route = crate::metrics::escape(route);
            let (counts, sum) = r.latency.cumulative();
            for (bound, c) in LATENCY_BOUNDS_S.iter().zip(&counts) {
                let _ = writeln!(out, "{name}_bucket{{route=\"{route}\",le=\"{bound}\"}} {c}");
            }
            let total = counts.last().copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "{name}_bucket{{route=\"{route}\",le=\"+Inf\"}} {total}"
            );
            let _ = writeln!(out, "{name}_sum{{route=\"{route}\"}} {sum}");
            let _ = writeln!(out, "{name}_count{{route=\"{route}\"}} {total}");
        }
    }

    fn render_guards(&self, out: &mut String, budget: &body::Budget, pool: &pool::InferPool) {
        use std::fmt::Write as _;
        let c = &self.conns;
        for (name, kind, help, v) in [
            (
                "edgeinfer_http_connections_open",
                "gauge",
                "Open HTTP connections.",
                c.open.load(Relaxed) as u64,
            ),
            (
                "edgeinfer_http_connections_refused_total",
                "counter",
                "HTTP connections refused over http.max_connections.",
                c.refused.load(Relaxed),
            ),
            (
                "edgeinfer_http_accept_errors_total",
                "counter",
                "HTTP accept errors (such as running out of file descriptors).",
                c.accept_errors.load(Relaxed),
            ),
            (
                "edgeinfer_http_body_bytes_in_flight",
                "gauge",
                "Request body bytes held against http.body_budget_bytes.",
                budget.in_use() as u64,
            ),
            (
                "edgeinfer_http_body_budget_refused_total",
                "counter",
                "Requests refused because http.body_budget_bytes was reached.",
                self.budget_refused.load(Relaxed),
            ),
            (
                "edgeinfer_http_infer_running",
                "gauge",
                "HTTP inference requests running on the pool's threads.",
                pool.running.load(Relaxed) as u64,
            ),
            (
                "edgeinfer_http_infer_queue_refused_total",
                "counter",
                "HTTP inference requests refused because http.infer_queue was full.",
                pool.refused.load(Relaxed),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
    }
}

// === Errors ===

/// An HTTP error answer: a status and `{"error": "…"}` (the KServe v2 error shape).
#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// `Retry-After` in seconds, for refusals that clear up on their own.
    pub retry_after_s: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            retry_after_s: None,
        }
    }
    pub fn retry_after(mut self, seconds: u32) -> ApiError {
        self.retry_after_s = Some(seconds);
        self
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        if let Some(s) = self.retry_after_s {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

impl From<crate::model_table::ResolveError> for ApiError {
    fn from(e: crate::model_table::ResolveError) -> ApiError {
        ApiError::not_found(e.to_string())
    }
}

impl From<axum::extract::rejection::BytesRejection> for ApiError {
    fn from(e: axum::extract::rejection::BytesRejection) -> ApiError {
        ApiError::new(e.status(), e.body_text())
    }
}

// === Router ===

fn router(state: Arc<HttpState>, max_body: usize) -> Router {
    // Health stays open without the token: probes and load balancers have none, and it
    // tells nothing beyond up/ready.
    let open = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/health", get(predict::health))
        .route("/v2/health/live", get(healthz))
        .route("/v2/health/ready", get(readyz));
    let guarded = Router::new()
        .route("/metrics", get(metrics))
        .route("/v2", get(kserve::server_metadata))
        .route("/v2/models/{name}", get(kserve::model_metadata))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(kserve::model_metadata_v),
        )
        .route("/v2/models/{name}/ready", get(kserve::model_ready))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(kserve::model_ready_v),
        )
        .route("/v2/models/{name}/config", get(kserve::model_config))
        .route(
            "/v2/models/{name}/versions/{version}/config",
            get(kserve::model_config_v),
        )
        .route("/v2/models/{name}/infer", post(kserve::infer))
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(kserve::infer_v),
        )
        .route("/predict", post(predict::predict))
        // Bodies are read (under the budget and deadlines) only once the token checks out.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            body::read_body,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorize,
        ));
    open.merge(guarded)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

async fn authorize(State(state): State<Arc<HttpState>>, req: Request, next: Next) -> Response {
    if let Some(token) = &state.token {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        if !token.matches_bearer(presented) {
            let mut resp = ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong bearer token")
                .into_response();
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return resp;
        }
    }
    next.run(req).await
}

async fn observe(State(state): State<Arc<HttpState>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("(unmatched)", |m| m.as_str())
        .to_owned();
    let resp = next.run(req).await;
    state
        .stats
        .record(&route, resp.status().as_u16(), start.elapsed());
    resp
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!(
        "no route for {} {}",
        req.method(),
        req.uri().path()
    ))
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "live" }))
}

async fn readyz(State(state): State<Arc<HttpState>>) -> Response {
    let snap = state.table.snapshot();
    if snap.all_ready() {
        return Json(serde_json::json!({ "status": "ready" })).into_response();
    }
    let waiting: Vec<String> = snap
        .versions()
        .filter(|v| !v.is_ready())
        .map(|v| format!("{}@{}", v.name, v.version))
        .collect();
    let msg = if snap.models.is_empty() {
        "no models loaded".to_owned()
    } else {
        format!("not ready: {}", waiting.join(", "))
    };
    ApiError::unavailable(msg).into_response()
}

async fn metrics(State(state): State<Arc<HttpState>>) -> Response {
    let snap = state.table.snapshot();
    let mut text = String::with_capacity(32 << 10);
    crate::metrics::render_into(&mut text, &snap, state.server.as_deref());
    state.stats.render(&mut text);
    state
        .stats
        .render_guards(&mut text, &state.budget, &state.pool);
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response()
}
