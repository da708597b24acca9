//! Starting and stopping `eali serve`: prepare every model and its worker, bind the REST and gRPC
//! listeners, serve until the shutdown signal, then drain: refuse new requests (503, readiness
//! false), let the workers finish every queued and running request, reset the GPUs' clocks, and
//! only then close the listeners, so nothing accepted is dropped.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::serve::ListenerExt;
use kube::ResourceExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::StreamExt;

use super::config::ServeConfig;
use super::grpc::{EarlyRefusal, GrpcInferenceServiceServer, Service};
use super::queue::Queue;
use super::runtime::{RuntimeOptions, prepare};
use super::state::{AppState, ModelEntry, ServedMetrics};
use super::worker::{Timebase, WorkerHandle, WorkerSetup, spawn};
use super::{ServeError, rest};
use crate::telemetry::Metrics;

/// Everything `eali serve` is started with besides the models.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub http: SocketAddr,
    /// gRPC listener; none to serve REST only.
    pub grpc: Option<SocketAddr>,
    pub runtime: RuntimeOptions,
    /// Samples each model's queue holds before answering 429.
    pub queue_capacity: usize,
    /// Default request deadline as a multiple of the SLO latency.
    pub deadline_factor: f64,
    /// Largest request body (REST) or message (gRPC) in bytes.
    pub max_body_bytes: usize,
    /// Length of the serving windows reported to the node agent (s).
    pub report_window_s: f64,
}

/// A bound, ready server.
pub struct Server {
    state: Arc<AppState>,
    workers: Vec<WorkerHandle>,
    http: TcpListener,
    grpc: Option<TcpListener>,
}

impl Server {
    /// Prepares every model of `config` and binds the listeners.
    pub async fn bind(config: &ServeConfig, opts: ServeOptions) -> Result<Self, ServeError> {
        let metrics = Metrics::new()?;
        let timebase = Timebase::new();
        let mut models = BTreeMap::new();
        let mut workers = Vec::new();
        if opts.runtime.device.is_real() && config.services.len() > 1 {
            return Err(ServeError::Config(format!(
                "{} services on one real GPU ({:?}): a GPU's clocks follow one model's plan, so serve one service per GPU",
                config.services.len(),
                opts.runtime.device
            )));
        }
        for (i, isvc) in config.services.iter().enumerate() {
            let (isvc, ropts) = (isvc.clone(), opts.runtime.clone());
            let prepared =
                tokio::task::spawn_blocking(move || prepare(&isvc, i as u32, &ropts, timebase))
                    .await
                    .map_err(|e| ServeError::Worker(e.to_string()))??;
            let name = config.services[i].name_any();
            let queue = Arc::new(Queue::new(opts.queue_capacity));
            let executor = prepared.executor.name();
            let computes_outputs = prepared.executor.computes_outputs();
            let setup = WorkerSetup {
                info: prepared.info.clone(),
                queue: queue.clone(),
                metrics: metrics.clone(),
                executor: prepared.executor,
                device: prepared.device,
                power: prepared.power,
                policy: prepared.policy,
                timebase,
                report_window_s: opts.report_window_s,
            };
            let handle = spawn(setup).await.map_err(|reason| ServeError::Model {
                name: name.clone(),
                reason,
            })?;
            let served = ServedMetrics::new(&metrics, &name);
            models.insert(
                name,
                ModelEntry {
                    info: prepared.info,
                    queue,
                    stats: handle.stats.clone(),
                    executor,
                    computes_outputs,
                    served,
                },
            );
            workers.push(handle);
        }
        for m in &opts.runtime.profiles {
            if !models
                .values()
                .any(|e| e.info.graph.name == m.profile.model)
            {
                tracing::warn!(
                    profile = %m.path.display(),
                    network = %m.profile.model,
                    "the profile is of a network no service here serves; it is not used"
                );
            }
        }
        let state = Arc::new(AppState {
            models,
            metrics,
            timebase,
            deadline_factor: opts.deadline_factor,
            max_body_bytes: opts.max_body_bytes,
            draining: AtomicBool::new(false),
        });
        let http = TcpListener::bind(opts.http).await?;
        let grpc = match opts.grpc {
            Some(a) => Some(TcpListener::bind(a).await?),
            None => None,
        };
        Ok(Self {
            state,
            workers,
            http,
            grpc,
        })
    }

    pub fn http_addr(&self) -> Result<SocketAddr, ServeError> {
        Ok(self.http.local_addr()?)
    }

    pub fn grpc_addr(&self) -> Result<Option<SocketAddr>, ServeError> {
        Ok(match &self.grpc {
            Some(l) => Some(l.local_addr()?),
            None => None,
        })
    }

    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Serves until `shutdown` completes, then drains (see the module docs).
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServeError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let max = self.state.max_body_bytes;
        let app = rest::router(self.state.clone());
        // TCP_NODELAY on every accepted connection: axum's plaintext `serve` leaves Nagle on, and
        // a response written in two segments would then wait out the client's delayed ACK
        // (up to 40 ms) on the second.
        let listener = self.http.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "could not set TCP_NODELAY");
            }
        });
        let http = tokio::spawn(
            axum::serve(listener, app)
                .with_graceful_shutdown(stopped(stop_rx.clone()))
                .into_future(),
        );
        let grpc = self.grpc.map(|listener| {
            let svc = GrpcInferenceServiceServer::new(Service {
                state: self.state.clone(),
            })
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
                conn.inspect(|tcp| {
                    if let Err(e) = tcp.set_nodelay(true) {
                        tracing::debug!(error = %e, "could not set TCP_NODELAY");
                    }
                })
            });
            tokio::spawn(
                tonic::transport::Server::builder()
                    // Inference requests are large (ResNet-50's input is 600 kB): at the
                    // protocol's default 64 kB windows one connection carries a few hundred a
                    // second, and requests wait in flow control before they reach admission.
                    .initial_stream_window_size(Some(GRPC_STREAM_WINDOW))
                    .initial_connection_window_size(Some(GRPC_CONNECTION_WINDOW))
                    .add_service(EarlyRefusal {
                        inner: svc,
                        state: self.state.clone(),
                    })
                    .serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone())),
            )
        });
        shutdown.await;
        tracing::info!("draining: refusing new requests, finishing the queued ones");
        self.state.draining.store(true, Ordering::Relaxed);
        for m in self.state.models.values() {
            m.queue.drain();
        }
        for w in self.workers {
            let _ = w.task.await;
        }
        let _ = stop_tx.send(true);
        let http_result = http.await.map_err(|e| ServeError::Worker(e.to_string()))?;
        http_result?;
        if let Some(g) = grpc {
            g.await
                .map_err(|e| ServeError::Worker(e.to_string()))?
                .map_err(|e| ServeError::Worker(format!("gRPC server: {e}")))?;
        }
        tracing::info!("drained; bye");
        Ok(())
    }
}

/// HTTP/2 flow-control windows of the gRPC server (bytes): a stream's holds a few large
/// requests, the connection's a few hundred.
pub const GRPC_STREAM_WINDOW: u32 = 4 << 20;
pub const GRPC_CONNECTION_WINDOW: u32 = 64 << 20;

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
