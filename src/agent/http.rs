//! The agent's HTTP endpoint (`--metrics-addr`, the chart's metrics port): `/metrics` in the
//! Prometheus text format, `/healthz` (the process answers: liveness), `/readyz` (200 once the
//! node side is up: clocks recovered and the device plugin registered with the kubelet; 503
//! before, with the reason).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::watch;

use super::AgentError;
use super::metrics::AgentMetrics;
use crate::telemetry::METRICS_CONTENT_TYPE;

/// Readiness as the agent reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    NotReady(String),
}

struct HttpState {
    metrics: AgentMetrics,
    ready: watch::Receiver<Readiness>,
}

async fn metrics_text(State(s): State<Arc<HttpState>>) -> Response {
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        s.metrics.render(),
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<Arc<HttpState>>) -> Response {
    match &*s.ready.borrow() {
        Readiness::Ready => (StatusCode::OK, "ready\n".to_string()).into_response(),
        Readiness::NotReady(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

pub fn router(metrics: AgentMetrics, ready: watch::Receiver<Readiness>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Arc::new(HttpState { metrics, ready }))
}

/// A bound, serving endpoint.
pub struct HttpServer {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl HttpServer {
    /// Binds `addr` (port 0: any free port) and serves until [`HttpServer::shutdown`].
    pub async fn start(
        addr: SocketAddr,
        metrics: AgentMetrics,
        ready: watch::Receiver<Readiness>,
    ) -> Result<Self, AgentError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| AgentError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| AgentError::Bind { addr, source })?;
        let (stop, mut rx) = watch::channel(false);
        let app = router(metrics, ready);
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|s| *s).await.map(|_| ());
                })
                .await
        });
        Ok(Self { addr, stop, task })
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}
