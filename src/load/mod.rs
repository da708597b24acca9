//! `eali load`: an open-loop load generator for any Open Inference Protocol v2 endpoint, REST or
//! gRPC. Arrival times come from the simulator's workloads (Poisson, bursty, step, diurnal, trace
//! replay); each request is sent at its scheduled time whether or not earlier ones have
//! returned, and its latency counts from that scheduled time (no coordinated omission).

mod h1;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tokio::time::Instant;

use crate::serve::oip::grpc::pb;
use crate::serve::server::{GRPC_CONNECTION_WINDOW, GRPC_STREAM_WINDOW};
use crate::sim::metrics::{percentile, slo_attainment};
use crate::sim::workload::{Workload, WorkloadError};

/// Which protocol to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Rest,
    Grpc,
}

/// Why a load run could not start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("workload: {0}")]
    Workload(#[from] WorkloadError),
    #[error("cannot read model metadata from {url}: {reason}")]
    Metadata { url: String, reason: String },
    #[error("invalid endpoint {0}")]
    Endpoint(String),
    #[error("{0}")]
    Config(String),
}

/// One load run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Base URL, e.g. `http://127.0.0.1:8000` (REST) or `http://127.0.0.1:8001` (gRPC).
    pub url: String,
    pub protocol: Protocol,
    pub model: String,
    pub workload: Workload,
    pub seed: u64,
    /// SLO to judge attainment against (ms).
    pub slo_ms: f64,
    /// REST: send the input with the binary tensor data extension (else JSON).
    pub binary: bool,
    /// Give up on a request after this long (s).
    pub timeout_s: f64,
    /// REST: announce each body with `Expect: 100-continue` and send it only when the server
    /// asks for it (see `h1`).
    pub expect_continue: bool,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub protocol: Protocol,
    pub model: String,
    pub workload: String,
    pub offered_rps: f64,
    pub duration_s: f64,
    pub sent: usize,
    pub ok: usize,
    /// Failed requests by status (HTTP code, gRPC code name, or `timeout` / `transport`).
    pub errors: BTreeMap<String, usize>,
    /// Successful responses per second over the run.
    pub throughput_rps: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    pub slo_ms: f64,
    /// Fraction of 10 s windows (by send time) whose p99, failures counted as infinite, met the
    /// SLO.
    pub slo_attainment: f64,
    /// Fraction of requests answered successfully within the SLO.
    pub within_slo: f64,
    /// Requests the server refused (an HTTP or gRPC error status, not a timeout or a broken
    /// connection) and how long each refusal took to arrive.
    pub refused: usize,
    pub refused_p50_ms: f64,
    pub refused_p99_ms: f64,
    /// Per second of send time: what was sent, answered and refused, and the answered p99.
    pub timeline: Vec<Second>,
}

/// One second of a run, by the requests' scheduled send times.
#[derive(Debug, Clone, Serialize)]
pub struct Second {
    pub t_s: u32,
    pub sent: usize,
    pub ok: usize,
    pub refused: usize,
    /// Answered requests' p99 (ms); NaN when none was answered.
    pub p99_ms: f64,
}

/// Per-request outcome: latency (s), or an error label and the time it took to arrive (s).
type Outcome = Result<f64, (String, f64)>;

/// Whether an error label is a status the server sent, rather than the client giving up
/// (`timeout`) or the connection failing (`transport`).
fn is_refusal(label: &str) -> bool {
    !matches!(label, "timeout" | "transport" | "panic") && !label.starts_with("request:")
}

/// An input of the model's shape, filled with seeded noise.
struct Input {
    dims: Vec<i64>,
    values: Vec<f32>,
}

/// Runs the load and reports.
pub async fn run(cfg: &LoadConfig) -> Result<LoadReport, LoadError> {
    // A timeout that is not a positive finite number of seconds is a caller's error, not a panic.
    let timeout = Duration::try_from_secs_f64(cfg.timeout_s)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            LoadError::Config(format!(
                "timeout {} s is not a positive duration",
                cfg.timeout_s
            ))
        })?;
    let arrivals = cfg.workload.generate(cfg.seed)?;
    let sender = Sender::connect(cfg).await?;
    let input = sender.input(cfg).await?;
    let body = Arc::new(sender.body(cfg, &input));
    let start = Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::with_capacity(arrivals.len());
    for &a in &arrivals {
        let at = start + Duration::from_secs_f64(a);
        let (s, b) = (sender.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let r = tokio::time::timeout(timeout, s.send(&b)).await;
            let took = at.elapsed().as_secs_f64();
            match r {
                Ok(Ok(())) => Ok(took),
                Ok(Err(e)) => Err((e, took)),
                Err(_) => Err(("timeout".to_string(), took)),
            }
        }));
    }
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(tasks.len());
    for t in tasks {
        outcomes.push(t.await.unwrap_or_else(|_| Err(("panic".into(), f64::NAN))));
    }
    let wall = start.elapsed().as_secs_f64();
    Ok(report(cfg, &arrivals, &outcomes, wall))
}

fn report(cfg: &LoadConfig, arrivals: &[f64], outcomes: &[Outcome], wall_s: f64) -> LoadReport {
    let slo_s = cfg.slo_ms / 1e3;
    let mut errors = BTreeMap::new();
    let mut ok = Vec::new();
    let mut refused = Vec::new();
    let mut per_request = Vec::with_capacity(outcomes.len());
    let seconds = arrivals.last().map_or(0, |&a| a.max(0.0) as usize + 1);
    let mut timeline: Vec<(Second, Vec<f64>)> = (0..seconds)
        .map(|t| {
            let second = Second {
                t_s: t as u32,
                sent: 0,
                ok: 0,
                refused: 0,
                p99_ms: f64::NAN,
            };
            (second, Vec::new())
        })
        .collect();
    for (o, &a) in outcomes.iter().zip(arrivals) {
        // Arrivals are sorted and start at 0, so every one has its second.
        let (second, answered) = &mut timeline[(a.max(0.0) as usize).min(seconds - 1)];
        second.sent += 1;
        match o {
            Ok(l) => {
                ok.push(*l);
                per_request.push(*l);
                answered.push(*l);
            }
            Err((e, took)) => {
                *errors.entry(e.clone()).or_insert(0) += 1;
                per_request.push(f64::INFINITY);
                if is_refusal(e) {
                    refused.push(*took);
                    second.refused += 1;
                }
            }
        }
    }
    let timeline = timeline
        .into_iter()
        .map(|(mut s, mut v)| {
            s.ok = v.len();
            if !v.is_empty() {
                s.p99_ms = percentile(&mut v, 0.99) * 1e3;
            }
            s
        })
        .collect();
    let mean = ok.iter().sum::<f64>() / ok.len().max(1) as f64;
    let within = ok.iter().filter(|&&l| l <= slo_s).count();
    let (p50, p90, p99) = (
        percentile(&mut ok, 0.5),
        percentile(&mut ok, 0.9),
        percentile(&mut ok, 0.99),
    );
    let (attainment, _) = slo_attainment(arrivals, &per_request, 10.0, slo_s, &mut Vec::new());
    let duration = cfg.workload.duration_s;
    LoadReport {
        protocol: cfg.protocol,
        model: cfg.model.clone(),
        workload: cfg.workload.kind.name(),
        offered_rps: arrivals.len() as f64 / duration.max(1e-9),
        duration_s: wall_s,
        sent: outcomes.len(),
        ok: ok.len(),
        errors,
        throughput_rps: ok.len() as f64 / wall_s.max(1e-9),
        p50_ms: p50 * 1e3,
        p90_ms: p90 * 1e3,
        p99_ms: p99 * 1e3,
        mean_ms: mean * 1e3,
        slo_ms: cfg.slo_ms,
        slo_attainment: attainment,
        within_slo: if outcomes.is_empty() {
            f64::NAN
        } else {
            within as f64 / outcomes.len() as f64
        },
        refused: refused.len(),
        refused_p50_ms: percentile(&mut refused, 0.5) * 1e3,
        refused_p99_ms: percentile(&mut refused, 0.99) * 1e3,
        timeline,
    }
}

impl LoadReport {
    /// A short human-readable summary.
    pub fn text(&self) -> String {
        let errors = if self.errors.is_empty() {
            "none".to_string()
        } else {
            self.errors
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "{} {} {}: offered {:.1} req/s for {:.1} s, {} sent, {} ok ({:.1} req/s)\n\
             latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  mean {:.2}\n\
             SLO {} ms: {:.1} % within, {:.1} % of 10 s windows met p99\n\
             refused by the server: {}{}\n\
             errors: {errors}",
            self.model,
            match self.protocol {
                Protocol::Rest => "REST",
                Protocol::Grpc => "gRPC",
            },
            self.workload,
            self.offered_rps,
            self.duration_s,
            self.sent,
            self.ok,
            self.throughput_rps,
            self.p50_ms,
            self.p90_ms,
            self.p99_ms,
            self.mean_ms,
            self.slo_ms,
            100.0 * self.within_slo,
            100.0 * self.slo_attainment,
            self.refused,
            if self.refused > 0 {
                format!(
                    ", answered in p50 {:.2} ms  p99 {:.2} ms",
                    self.refused_p50_ms, self.refused_p99_ms
                )
            } else {
                String::new()
            },
        )
    }

    /// The per-second table: sent, answered, refused and answered p99 by send time.
    pub fn timeline_text(&self) -> String {
        let mut t = String::from("   s   sent     ok  refused  p99 ms\n");
        for s in &self.timeline {
            let p99 = if s.p99_ms.is_nan() {
                "-".to_string()
            } else {
                format!("{:.1}", s.p99_ms)
            };
            t.push_str(&format!(
                "{:>4} {:>6} {:>6} {:>8} {:>7}\n",
                s.t_s, s.sent, s.ok, s.refused, p99
            ));
        }
        t
    }
}

type GrpcClient =
    pb::grpc_inference_service_client::GrpcInferenceServiceClient<tonic::transport::Channel>;

/// gRPC connections the load is spread over: one HTTP/2 connection is one task on each side,
/// and a single one carrying every request is what saturates first, not the server.
const GRPC_CONNECTIONS: usize = 8;

/// A request body ready to send many times.
enum Body {
    Rest {
        bytes: Bytes,
        header_len: Option<usize>,
    },
    Grpc(Box<pb::ModelInferRequest>),
}

// One per run; the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
enum Sender {
    Rest {
        client: Client<HttpConnector, Full<Bytes>>,
        /// Set with `expect_continue`: infer requests go through it instead of `client`.
        continuing: Option<Arc<h1::ContinueClient>>,
        infer: hyper::Uri,
        base: String,
        model: String,
    },
    Grpc {
        /// One per connection, used in turn.
        clients: Arc<[GrpcClient]>,
        next: Arc<AtomicUsize>,
        model: String,
    },
}

impl Sender {
    async fn connect(cfg: &LoadConfig) -> Result<Self, LoadError> {
        let base = cfg.url.trim_end_matches('/').to_string();
        match cfg.protocol {
            Protocol::Rest => {
                let mut conn = HttpConnector::new();
                conn.set_nodelay(true);
                let client = Client::builder(TokioExecutor::new())
                    .pool_max_idle_per_host(4096)
                    .build(conn);
                let infer: hyper::Uri = format!("{base}/v2/models/{}/infer", cfg.model)
                    .parse()
                    .map_err(|_| LoadError::Endpoint(base.clone()))?;
                let continuing = match (cfg.expect_continue, infer.authority()) {
                    (false, _) => None,
                    (true, Some(a)) if infer.scheme_str() == Some("http") => {
                        let port = infer.port_u16().unwrap_or(80);
                        Some(Arc::new(h1::ContinueClient::new(&format!(
                            "{}:{port}",
                            a.host()
                        ))))
                    }
                    (true, _) => {
                        return Err(LoadError::Config(format!(
                            "--expect-continue needs an http:// URL, not {base}"
                        )));
                    }
                };
                Ok(Sender::Rest {
                    client,
                    continuing,
                    infer,
                    base,
                    model: cfg.model.clone(),
                })
            }
            Protocol::Grpc => {
                let endpoint = tonic::transport::Endpoint::from_shared(base.clone())
                    .map_err(|_| LoadError::Endpoint(base.clone()))?
                    .tcp_nodelay(true)
                    .initial_stream_window_size(GRPC_STREAM_WINDOW)
                    .initial_connection_window_size(GRPC_CONNECTION_WINDOW);
                let mut clients = Vec::with_capacity(GRPC_CONNECTIONS);
                for _ in 0..GRPC_CONNECTIONS {
                    let channel = endpoint.connect().await.map_err(|e| LoadError::Metadata {
                        url: base.clone(),
                        reason: e.to_string(),
                    })?;
                    clients.push(
                        pb::grpc_inference_service_client::GrpcInferenceServiceClient::new(channel)
                            .max_decoding_message_size(256 << 20)
                            .max_encoding_message_size(256 << 20),
                    );
                }
                Ok(Sender::Grpc {
                    clients: clients.into(),
                    next: Arc::new(AtomicUsize::new(0)),
                    model: cfg.model.clone(),
                })
            }
        }
    }

    /// Reads the model's input shape and makes one seeded input of it.
    async fn input(&self, cfg: &LoadConfig) -> Result<Input, LoadError> {
        let fail = |reason: String| LoadError::Metadata {
            url: cfg.url.clone(),
            reason,
        };
        let dims: Vec<i64> = match self {
            Sender::Rest {
                client,
                base,
                model,
                ..
            } => {
                let uri: hyper::Uri = format!("{base}/v2/models/{model}")
                    .parse()
                    .map_err(|_| fail("bad URL".into()))?;
                let resp = client.get(uri).await.map_err(|e| fail(e.to_string()))?;
                let status = resp.status();
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| fail(e.to_string()))?
                    .to_bytes();
                if !status.is_success() {
                    return Err(fail(format!(
                        "{status}: {}",
                        String::from_utf8_lossy(&body)
                    )));
                }
                let v: serde_json::Value =
                    serde_json::from_slice(&body).map_err(|e| fail(e.to_string()))?;
                v["inputs"][0]["shape"]
                    .as_array()
                    .map(|a| a.iter().filter_map(serde_json::Value::as_i64).collect())
                    .ok_or_else(|| fail("metadata has no input shape".into()))?
            }
            Sender::Grpc { clients, model, .. } => {
                let r = clients[0]
                    .clone()
                    .model_metadata(pb::ModelMetadataRequest {
                        name: model.clone(),
                        version: String::new(),
                    })
                    .await
                    .map_err(|e| fail(e.message().to_string()))?
                    .into_inner();
                r.inputs
                    .first()
                    .map(|t| t.shape.clone())
                    .ok_or_else(|| fail("metadata has no input".into()))?
            }
        };
        // One sample: the batch dimension (-1) becomes 1.
        let dims: Vec<i64> = dims.iter().map(|&d| if d < 0 { 1 } else { d }).collect();
        let n: i64 = dims.iter().product();
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x1a9e);
        let values = (0..n.max(0))
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        Ok(Input { dims, values })
    }

    fn body(&self, cfg: &LoadConfig, input: &Input) -> Body {
        match self {
            Sender::Rest { .. } if cfg.binary => {
                let header = serde_json::json!({
                    "inputs": [{"name": "input", "shape": input.dims, "datatype": "FP32",
                                "parameters": {"binary_data_size": input.values.len() * 4}}],
                    "parameters": {"binary_data_output": true},
                })
                .to_string();
                let mut bytes = header.as_bytes().to_vec();
                bytes.extend(input.values.iter().flat_map(|v| v.to_le_bytes()));
                Body::Rest {
                    bytes: bytes.into(),
                    header_len: Some(header.len()),
                }
            }
            Sender::Rest { .. } => {
                let body = serde_json::json!({
                    "inputs": [{"name": "input", "shape": input.dims, "datatype": "FP32", "data": input.values}],
                });
                Body::Rest {
                    bytes: body.to_string().into(),
                    header_len: None,
                }
            }
            Sender::Grpc { model, .. } => Body::Grpc(Box::new(pb::ModelInferRequest {
                model_name: model.clone(),
                inputs: vec![pb::model_infer_request::InferInputTensor {
                    name: "input".into(),
                    datatype: "FP32".into(),
                    shape: input.dims.clone(),
                    parameters: Default::default(),
                    contents: None,
                }],
                raw_input_contents: vec![Bytes::from_iter(
                    input.values.iter().flat_map(|v| v.to_le_bytes()),
                )],
                ..Default::default()
            })),
        }
    }

    async fn send(&self, body: &Body) -> Result<(), String> {
        match (self, body) {
            (
                Sender::Rest {
                    continuing: Some(c),
                    infer,
                    ..
                },
                Body::Rest { bytes, header_len },
            ) => {
                let mut headers = vec![("Content-Type", "application/json".to_string())];
                if let Some(n) = header_len {
                    headers.push(("Inference-Header-Content-Length", n.to_string()));
                }
                let path = infer.path_and_query().map_or("/", |p| p.as_str());
                match c.post(path, &headers, bytes).await {
                    Ok(s) if (200..300).contains(&s) => Ok(()),
                    Ok(s) => Err(s.to_string()),
                    Err(_) => Err("transport".to_string()),
                }
            }
            (Sender::Rest { client, infer, .. }, Body::Rest { bytes, header_len }) => {
                let mut req = hyper::Request::post(infer.clone())
                    .header(hyper::header::CONTENT_TYPE, "application/json");
                if let Some(n) = header_len {
                    req = req.header("Inference-Header-Content-Length", *n);
                }
                let req = req
                    .body(Full::new(bytes.clone()))
                    .map_err(|e| format!("request: {e}"))?;
                let resp = client
                    .request(req)
                    .await
                    .map_err(|_| "transport".to_string())?;
                let status = resp.status();
                // Read the whole response: the latency includes receiving it.
                resp.into_body()
                    .collect()
                    .await
                    .map_err(|_| "transport".to_string())?;
                if status.is_success() {
                    Ok(())
                } else {
                    Err(status.as_u16().to_string())
                }
            }
            (Sender::Grpc { clients, next, .. }, Body::Grpc(req)) => clients
                [next.fetch_add(1, Ordering::Relaxed) % clients.len()]
            .clone()
            .model_infer((**req).clone())
            .await
            .map(|_| ())
            .map_err(|s| format!("{:?}", s.code())),
            _ => Err("protocol mismatch".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::workload::WorkloadKind;

    #[test]
    fn report_counts_failures_as_infinite_latency() {
        let cfg = LoadConfig {
            url: "http://x".into(),
            protocol: Protocol::Rest,
            model: "m".into(),
            workload: Workload::new(WorkloadKind::Poisson, 10.0, 1.0),
            seed: 1,
            slo_ms: 50.0,
            binary: true,
            timeout_s: 1.0,
            expect_continue: false,
        };
        let arrivals: Vec<f64> = (0..100).map(|i| f64::from(i) * 0.01).collect();
        let mut outcomes: Vec<Outcome> =
            (0..98).map(|i| Ok(0.001 * f64::from(i % 10 + 1))).collect();
        outcomes.push(Err(("429".into(), 0.002)));
        outcomes.push(Err(("timeout".into(), 1.0)));
        let r = report(&cfg, &arrivals, &outcomes, 2.0);
        assert_eq!((r.sent, r.ok), (100, 98));
        assert_eq!(r.errors.get("429"), Some(&1));
        // A timeout is the client giving up, not a refusal.
        assert_eq!((r.refused, r.refused_p99_ms), (1, 2.0));
        assert_eq!(r.timeline.len(), 1);
        assert_eq!((r.timeline[0].sent, r.timeline[0].ok), (100, 98));
        assert_eq!(r.timeline[0].refused, 1);
        assert_eq!(r.throughput_rps, 49.0);
        assert_eq!(r.p50_ms, 5.0);
        // Two failures of 100 put the window's p99 at infinity.
        assert_eq!(r.slo_attainment, 0.0);
        assert!((r.within_slo - 0.98).abs() < 1e-12);
        assert!(r.text().contains("429: 1"));
    }
}
