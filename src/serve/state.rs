//! State shared by the REST and gRPC front ends, and the transport-independent request path:
//! look the model up, admit the request, enqueue its samples with a deadline, await the worker,
//! build the response, and count the outcome.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use prometheus::{Histogram, IntCounter};

use super::model::ModelInfo;
use super::oip::{ErrorKind, InferRequest, InferResponse, OipError, OutputTensor, Param, Params};
use super::queue::{DoorPass, Job, Queue, Slot, SubmitError};
use super::worker::{Timebase, WorkerStats};
use crate::telemetry::{Metrics, outcome};

/// One served model as the front ends see it.
pub struct ModelEntry {
    pub info: Arc<ModelInfo>,
    pub queue: Arc<Queue>,
    pub stats: Arc<WorkerStats>,
    /// Executor name, reported in responses.
    pub executor: String,
    pub computes_outputs: bool,
    /// Hot-path metric handles of this model (no label lookup per request).
    pub served: ServedMetrics,
}

/// `eali_requests_total{outcome="ok"}`, the latency histogram and the SLO violation counter of
/// one model.
pub struct ServedMetrics {
    pub ok: IntCounter,
    pub seconds: Histogram,
    pub violations: IntCounter,
}

impl ServedMetrics {
    pub fn new(metrics: &Metrics, model: &str) -> Self {
        Self {
            ok: metrics.requests.with_label_values(&[model, outcome::OK]),
            seconds: metrics.request_seconds.with_label_values(&[model]),
            violations: metrics.slo_violations.with_label_values(&[model]),
        }
    }
}

/// Shared by every handler.
pub struct AppState {
    pub models: BTreeMap<String, ModelEntry>,
    pub metrics: Metrics,
    pub timebase: Timebase,
    /// Default deadline as a multiple of the SLO latency.
    pub deadline_factor: f64,
    pub max_body_bytes: usize,
    pub draining: AtomicBool,
}

/// Label used for requests naming a model that does not exist (keeps label values bounded).
const UNKNOWN_MODEL: &str = "";

impl AppState {
    pub fn model(&self, name: &str) -> Result<&ModelEntry, OipError> {
        self.models.get(name).ok_or_else(|| {
            OipError::not_found(format!(
                "unknown model '{name}' (serving: {})",
                self.models.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Every model's worker is up and the server is not draining.
    pub fn is_ready(&self) -> bool {
        !self.is_draining()
            && self
                .models
                .values()
                .all(|m| m.stats.ready.load(Ordering::Relaxed))
    }

    pub fn model_ready(&self, name: &str, version: Option<&str>) -> Result<bool, OipError> {
        let m = self.model(name)?;
        m.info.check_version(version)?;
        Ok(!self.is_draining() && m.stats.ready.load(Ordering::Relaxed))
    }

    /// Counts a request refused before it reached a model (malformed body, too large).
    pub fn count_refused(&self, model: &str, err: &OipError) {
        let label = if self.models.contains_key(model) {
            model
        } else {
            UNKNOWN_MODEL
        };
        self.metrics.request(label, outcome_of(err));
    }

    /// `started` on the server's time axis (`now` if it is before the epoch).
    fn arrival_s(&self, started: Instant, now: f64) -> f64 {
        started
            .checked_duration_since(self.timebase.epoch)
            .map_or(now, |d| d.as_secs_f64())
    }

    /// Refuses a request received at `started` for `model` before its body is read, when even
    /// one sample of it would be answered after the default deadline (a request's own timeout
    /// only shortens it): under overload most requests are refused, and receiving and decoding
    /// theirs would take the cores the admitted ones need. An admitted request gets a
    /// [`DoorPass`] that counts it as queued until it is submitted. The caller counts the
    /// refusal ([`count_refused`](Self::count_refused)).
    pub fn refuse_early(
        &self,
        model: &str,
        started: Instant,
    ) -> Result<Option<DoorPass>, OipError> {
        let Some(m) = self.models.get(model) else {
            return Ok(None);
        };
        let now = self.timebase.now_s();
        let arrival = self.arrival_s(started, now);
        let deadline = arrival + self.deadline_factor * m.info.slo_s;
        let forecast = m.stats.forecast();
        let mut q = m.queue.lock();
        // Those admitted before it and still uploading are placed ahead of it, due when it is:
        // they came earlier, so this is optimistic by their upload time, which the margin and
        // the check at submission cover.
        let queued = q.jobs.len() + q.incoming;
        // Counted at the door only when refused here; otherwise submitting counts it.
        let rate = q.offered_rate(now);
        match forecast.admit(q.jobs.len(), q.tail, now, q.incoming + 1, deadline, rate) {
            Err(finish_s) => {
                q.arrive(now, 1);
                Err(overloaded(model, queued, finish_s, arrival, deadline))
            }
            Ok(_) => Ok(Some(m.queue.pass(&mut q))),
        }
    }

    /// The request path shared by REST and gRPC. `started` is when the request was received.
    pub async fn infer(
        &self,
        model: &str,
        version: Option<&str>,
        req: InferRequest,
        started: Instant,
    ) -> Result<InferResponse, OipError> {
        let result = self.infer_inner(model, version, req, started).await;
        let label = if self.models.contains_key(model) {
            model
        } else {
            UNKNOWN_MODEL
        };
        match (&result, self.models.get(model)) {
            (Ok(_), Some(m)) => {
                let secs = started.elapsed().as_secs_f64();
                m.served.ok.inc();
                m.served.seconds.observe(secs);
                if secs > m.info.slo_s {
                    m.served.violations.inc();
                }
            }
            (Ok(_), None) => self.metrics.request(label, outcome::OK),
            (Err(e), _) => self.metrics.request(label, outcome_of(e)),
        }
        result
    }

    async fn infer_inner(
        &self,
        model: &str,
        version: Option<&str>,
        req: InferRequest,
        started: Instant,
    ) -> Result<InferResponse, OipError> {
        let m = self.model(model)?;
        m.info.check_version(version)?;
        if self.is_draining() {
            return Err(draining());
        }
        if let Some(why) = m.stats.fault() {
            return Err(OipError::new(ErrorKind::Unavailable, why));
        }
        let id = req.id.clone();
        let timeout_s = req.timeout_us()?.map(|us| us as f64 / 1e6);
        let admitted = m.info.admit(req)?;
        let n = admitted.samples as usize;
        // The deadline counts from when the request was received, its upload and decoding
        // included: what the client waits for.
        let now = self.timebase.now_s();
        let arrival = self.arrival_s(started, now);
        let budget = self.deadline_factor * m.info.slo_s;
        let deadline = arrival + timeout_s.map_or(budget, |t| t.min(budget));
        let per = admitted.data.len() / n.max(1);
        let (slots, rx) = Slot::for_request(n);
        let mut data = admitted.data;
        let jobs: Vec<Job> = slots
            .into_iter()
            .enumerate()
            .map(|(i, slot)| Job {
                arrival_s: arrival,
                deadline_s: deadline,
                // Inputs travel only when something computes on them.
                input: if m.computes_outputs {
                    data[i * per..(i + 1) * per].to_vec()
                } else {
                    Vec::new()
                },
                slot,
            })
            .collect();
        data.clear();
        let forecast = m.stats.forecast();
        let place = |queued, tail, rate| forecast.admit(queued, tail, now, n, deadline, rate);
        match m.queue.submit_by(jobs, now, place) {
            Ok(()) => {}
            Err(SubmitError::Draining) => return Err(draining()),
            Err(SubmitError::Late { queued, finish_s }) => {
                return Err(overloaded(model, queued, finish_s, arrival, deadline));
            }
            Err(SubmitError::Full { queued }) => {
                let rate = m.stats.throughput();
                let wait = if rate > 0.0 {
                    queued as f64 / rate
                } else {
                    1.0
                };
                let mut e = OipError::new(
                    ErrorKind::QueueFull,
                    format!("model '{model}' queue is full ({queued} waiting); retry later"),
                );
                e.retry_after_s = Some(wait.ceil().clamp(1.0, 60.0) as u64);
                return Err(e);
            }
        }
        let done = rx
            .await
            .map_err(|_| OipError::internal("the model worker stopped before answering"))??;
        let mut parameters = Params::new();
        let outputs = match done.outputs {
            Some(values) => {
                let mut shape = vec![n as i64];
                shape.extend(m.info.output_dims());
                vec![OutputTensor {
                    name: m.info.io.output.clone(),
                    shape,
                    data: values,
                }]
            }
            None => {
                // Never made up: a simulated run has no outputs, and the response says so.
                parameters.insert("simulated".into(), Param::Bool(true));
                Vec::new()
            }
        };
        parameters.insert("executor".into(), Param::Str(m.executor.clone()));
        parameters.insert("batch_size".into(), Param::Int(i64::from(done.batch)));
        Ok(InferResponse {
            model_name: model.to_string(),
            model_version: super::model::MODEL_VERSION.to_string(),
            id,
            parameters,
            outputs,
        })
    }
}

/// A request refused on arrival: predicted to be answered at `finish_s`, after its deadline.
fn overloaded(model: &str, queued: usize, finish_s: f64, arrival: f64, deadline: f64) -> OipError {
    let mut e = OipError::new(
        ErrorKind::Overloaded,
        format!(
            "model '{model}' is at capacity: behind {queued} queued samples this request would \
             be answered {:.1} ms after its deadline ({:.1} ms); retry later",
            (finish_s - deadline) * 1e3,
            (deadline - arrival) * 1e3
        ),
    );
    // The backlog ahead of it clears in about its predicted lateness.
    e.retry_after_s = Some((finish_s - deadline).ceil().clamp(1.0, 60.0) as u64);
    e
}

fn draining() -> OipError {
    OipError::new(ErrorKind::Unavailable, "the server is shutting down")
}

/// The `outcome` label of an error.
pub fn outcome_of(e: &OipError) -> &'static str {
    match e.kind {
        ErrorKind::BadRequest => outcome::BAD_REQUEST,
        ErrorKind::NotFound => outcome::NOT_FOUND,
        ErrorKind::TooLarge => outcome::TOO_LARGE,
        ErrorKind::QueueFull => outcome::QUEUE_FULL,
        ErrorKind::DeadlineExceeded => outcome::DEADLINE,
        ErrorKind::Overloaded => outcome::OVERLOADED,
        ErrorKind::Unavailable => outcome::DRAINING,
        ErrorKind::Internal => outcome::ERROR,
    }
}
