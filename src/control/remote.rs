//! `eali serve`'s side of the control socket in a cluster: when the device plugin's Allocate put
//! `EALI_CONTROL_SOCKET` in the environment, the serving device is the node agent's GPU
//! (`serve::device::AgentServing`): every set-call the serving loop makes goes to the agent,
//! which sets the real GPU's clocks (the pod itself has no NVML privileges), and so do the unit
//! timings the agent attributes its energy counter by and the serving windows it reports.
//!
//! The serving loop must never wait on the agent: set-calls go to a sender thread through a
//! queue, each with the time the plan wants it made (dispatch + the set-call's offset, ahead of
//! its unit's boundary); the thread makes it then ([`SetCallQueue`]), and drops a call only when
//! a newer one is due with it. Only a reset (the drain at shutdown) and dropping the actuator
//! wait for the queue to empty, so that a pod that stops does not leave its GPU locked (the
//! agent also resets it when the kubelet releases the GPU).
//!
//! Between calls the thread asks the agent for the GPU's status every [`HEALTH_POLL`]: a GPU
//! the agent reports lost or Unhealthy is the serving device's fault ([`RemoteClock::fault`],
//! requests answered 503 meanwhile); an agent it cannot reach is not (the GPU keeps the clocks
//! in force and serving goes on). Once it reaches an agent again after losing it (a restarted
//! agent resets the GPU's clocks at start), it makes the last set-call again.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use super::client::{CONTROL_SOCKET_ENV, ControlClient, GPU_UUID_ENV};
use super::proto::{LayerShare, UnitTiming};
use crate::gpu::{ClockTarget, SetCallQueue};
use crate::telemetry::LayerPowerModel;

enum Cmd {
    /// Make this set-call at this time.
    Set(Instant, ClockTarget),
    Timings(Vec<super::proto::UnitTiming>),
    Window(Box<super::proto::ServingWindow>),
    Flush(Sender<()>),
}

/// The sender thread's handle.
pub struct RemoteClock {
    tx: Sender<Cmd>,
    uuid: String,
    /// How long a set-call takes to reach the GPU through the agent (s, f64 bits): the longest
    /// of the recent calls' delays from their time to the agent's answer.
    path_latency: Arc<AtomicU64>,
    /// Why the agent says the GPU cannot serve (None: it can, or the agent was not reached).
    fault: Arc<Mutex<Option<String>>>,
}

/// Set-call round trips the path latency is taken over.
const PATH_SAMPLES: usize = 32;

/// How often the sender thread asks the agent for the GPU's health.
pub const HEALTH_POLL: Duration = Duration::from_millis(250);

/// How far off the next set-call must be for a health poll to go first (s).
const POLL_CLEARANCE_S: f64 = 0.005;

impl RemoteClock {
    /// Starts the sender thread for socket `path` and GPU `uuid`; connects on first use.
    pub fn start(path: PathBuf, uuid: String) -> std::io::Result<Self> {
        let (tx, rx) = channel();
        let id = uuid.clone();
        let path_latency = Arc::new(AtomicU64::new(0f64.to_bits()));
        let fault = Arc::new(Mutex::new(None));
        let shared = Shared {
            path_latency: path_latency.clone(),
            fault: fault.clone(),
        };
        std::thread::Builder::new()
            .name("eali-remote-clock".into())
            .spawn(move || sender(rx, path, id, &shared))?;
        Ok(Self {
            tx,
            uuid,
            path_latency,
            fault,
        })
    }

    /// Why the GPU cannot serve, as the agent last reported it (lost, or Unhealthy in the
    /// device plugin's ListAndWatch); `None` while it can, or while the agent is unreachable.
    pub fn fault(&self) -> Option<String> {
        self.fault
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How long a set-call takes from its time to the GPU, through this process's sender
    /// thread, the socket and the agent (s): the longest of the recent calls' delays from their
    /// time to the agent's answer (0 before the first). Making a call that much early costs the
    /// end of the unit before it a little energy; making it late runs the next unit's start at
    /// the wrong clock. The agent's GPU device
    /// makes each call this much ahead of its planned time.
    pub fn path_latency_s(&self) -> f64 {
        f64::from_bits(self.path_latency.load(Ordering::Relaxed))
    }

    /// The GPU the agent controls for this process.
    pub fn uuid(&self) -> &str {
        &self.uuid
    }

    /// The process's remote clock from Allocate's environment (first GPU), shared by every
    /// worker; `None` in standalone serving.
    pub fn from_env() -> Option<Arc<Self>> {
        static SHARED: OnceLock<Option<Arc<RemoteClock>>> = OnceLock::new();
        SHARED
            .get_or_init(|| {
                let socket = std::env::var(CONTROL_SOCKET_ENV).ok()?;
                let first = |s: &str| s.split(',').next().unwrap_or_default().to_string();
                let uuid = first(&std::env::var(GPU_UUID_ENV).unwrap_or_default());
                let path = PathBuf::from(first(&socket));
                tracing::info!(socket = %path.display(), gpu = %uuid, "clock changes go to the node agent");
                match Self::start(path, uuid) {
                    Ok(r) => Some(Arc::new(r)),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the remote clock thread");
                        None
                    }
                }
            })
            .clone()
    }

    /// Queues `target` to be made now.
    pub fn request(&self, target: ClockTarget) {
        self.request_at(Instant::now(), target);
    }

    /// Queues `target` to be made at `at` (the sender thread waits for it; a newer call due at
    /// the same time supersedes it).
    pub fn request_at(&self, at: Instant, target: ClockTarget) {
        let _ = self.tx.send(Cmd::Set(at, target));
    }

    /// Queues unit timings for the agent's energy attribution (Unix-time windows, with the
    /// unit's predicted power and its layers' predicted energies as weights). Sent after any
    /// clock change queued before them; dropped, with a log line, when the agent is unreachable.
    pub fn report_timings(&self, timings: Vec<super::proto::UnitTiming>) {
        if !timings.is_empty() {
            let _ = self.tx.send(Cmd::Timings(timings));
        }
    }

    /// Queues a serving window for the agent (the pod's entry of the InferenceService's
    /// `status.reports`); dropped, with a log line, when the agent is unreachable.
    pub fn report_window(&self, window: super::proto::ServingWindow) {
        let _ = self.tx.send(Cmd::Window(Box::new(window)));
    }

    /// Waits up to `timeout` for everything queued to reach the agent; whether it did.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (ack, done) = channel();
        if self.tx.send(Cmd::Flush(ack)).is_err() {
            return false;
        }
        done.recv_timeout(timeout).is_ok()
    }
}

/// Runs `call` on the agent's client, connecting first when there is none (the caller drops the
/// client after a failure, so the next call reconnects).
fn on_agent<T>(
    rt: &tokio::runtime::Runtime,
    client: &mut Option<ControlClient>,
    path: &Path,
    uuid: &str,
    call: impl AsyncFnOnce(&mut ControlClient) -> Result<T, super::ControlError>,
) -> Result<T, super::ControlError> {
    rt.block_on(async {
        let c = match client {
            Some(c) => c,
            None => client.insert(ControlClient::connect(path, uuid).await?),
        };
        call(c).await
    })
}

/// What the sender thread publishes to the serving side.
struct Shared {
    path_latency: Arc<AtomicU64>,
    fault: Arc<Mutex<Option<String>>>,
}

impl Shared {
    fn set_fault(&self, fault: Option<String>) {
        let mut f = self.fault.lock().unwrap_or_else(PoisonError::into_inner);
        if *f != fault {
            match &fault {
                Some(why) => {
                    tracing::warn!(reason = %why, "the node agent reports the GPU cannot serve")
                }
                None => tracing::info!("the node agent reports the GPU healthy again"),
            }
            *f = fault;
        }
    }
}

fn sender(rx: Receiver<Cmd>, path: PathBuf, uuid: String, shared: &Shared) {
    let path_latency = &shared.path_latency;
    let mut round_trips: std::collections::VecDeque<f64> =
        std::collections::VecDeque::with_capacity(PATH_SAMPLES);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "remote clock: no runtime");
            return;
        }
    };
    let mut client: Option<ControlClient> = None;
    let mut failures = 0u64;
    // Set-calls on the thread's own time axis: seconds since it started.
    let epoch = Instant::now();
    let secs = |t: Instant| t.saturating_duration_since(epoch).as_secs_f64();
    let mut calls = SetCallQueue::new();
    // The last set-call made (to make again on reaching a restarted agent), whether the agent
    // was lost since, and when its health was last asked.
    let mut last_target: Option<ClockTarget> = None;
    let mut lost_agent = false;
    let mut polled = Instant::now();
    loop {
        // Sleep until the next set-call or health poll is due or a command arrives.
        let poll_in = HEALTH_POLL.saturating_sub(polled.elapsed()).as_secs_f64();
        let wait = calls.next_due().map_or(poll_in, |due| {
            (due - secs(Instant::now())).clamp(0.0, poll_in)
        });
        let wait = Duration::from_secs_f64(wait);
        let first = match rx.recv_timeout(wait) {
            Ok(c) => Some(c),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let (mut acks, mut timings) = (Vec::new(), Vec::new());
        let mut windows = Vec::new();
        for cmd in first.into_iter().chain(rx.try_iter()) {
            match cmd {
                Cmd::Set(at, t) => calls.push(secs(at), t),
                Cmd::Timings(t) => timings.extend(t),
                Cmd::Window(w) => windows.push(*w),
                Cmd::Flush(a) => acks.push(a),
            }
        }
        // A flush makes whatever is queued now (the drain's reset is the newest call).
        let target = if acks.is_empty() {
            calls.take_due(secs(Instant::now()))
        } else {
            calls.take_all()
        };
        if let Some((due_s, t)) = target {
            let connected = client.is_some();
            let result = on_agent(&rt, &mut client, &path, &uuid, async |c| {
                match t.graphics_range() {
                    Some((lo, hi)) => c.set_clocks(lo, hi).await,
                    None => c.reset_clocks().await,
                }
            });
            match result {
                Ok(st) => {
                    failures = 0;
                    last_target = Some(t);
                    // From the call's time to the agent's answer: this thread's wake-up, the
                    // socket and the agent. A call that had to connect first, or one made
                    // ahead of its time by a flush, says nothing about the next ones.
                    let late_s = secs(Instant::now()) - due_s;
                    if connected && (0.0..1.0).contains(&late_s) {
                        if round_trips.len() == PATH_SAMPLES {
                            round_trips.pop_front();
                        }
                        round_trips.push_back(late_s);
                        let worst = round_trips.iter().copied().fold(0.0, f64::max);
                        path_latency.store(worst.to_bits(), Ordering::Relaxed);
                    }
                    tracing::debug!(?t, applied = st.applied_mhz, "agent set the clock");
                }
                Err(e) => {
                    failures += 1;
                    if let super::ControlError::Rpc(s) = &e
                        && s.code() == tonic::Code::PermissionDenied
                    {
                        // Not ours to control (not the pod holding the GPU): say so clearly.
                        if failures == 1 || failures.is_power_of_two() {
                            tracing::error!(code = ?s.code(), reason = %s.message(), "the node agent refused clock control");
                        }
                    } else {
                        client = None;
                        lost_agent = true;
                        // Made again once the agent answers.
                        last_target = Some(t);
                        if failures == 1 || failures.is_power_of_two() {
                            tracing::warn!(error = %e, ?t, "clock change through the node agent failed");
                        }
                    }
                }
            }
        }
        if !timings.is_empty() {
            let n = timings.len();
            let result = on_agent(&rt, &mut client, &path, &uuid, async |c| {
                c.report_timings(timings).await
            });
            if let Err(e) = result {
                client = None;
                tracing::debug!(error = %e, dropped = n, "unit timings not delivered to the node agent");
            }
        }
        for w in windows {
            let result = on_agent(&rt, &mut client, &path, &uuid, async |c| {
                c.report_window(w).await
            });
            if let Err(e) = result {
                client = None;
                tracing::warn!(error = %e, "serving window not delivered to the node agent");
            }
        }
        for a in acks {
            let _ = a.send(());
        }
        // A poll takes a round trip: not while a set-call is about to come due (unless polls
        // have been put off that way for long), so it never makes a planned call late.
        let clear = calls
            .next_due()
            .is_none_or(|due| due - secs(Instant::now()) > POLL_CLEARANCE_S);
        if polled.elapsed() >= HEALTH_POLL && (clear || polled.elapsed() >= 4 * HEALTH_POLL) {
            polled = Instant::now();
            let was_connected = client.is_some();
            match on_agent(&rt, &mut client, &path, &uuid, async |c| c.status().await) {
                Ok(st) => {
                    shared.set_fault(st.unhealthy.then(|| st.health_reason.clone()));
                    if lost_agent || !was_connected {
                        lost_agent = false;
                        reassert(&rt, &mut client, &path, &uuid, last_target, &st);
                    }
                }
                Err(e) => {
                    if !matches!(&e, super::ControlError::Rpc(s) if s.code() == tonic::Code::PermissionDenied)
                    {
                        client = None;
                        lost_agent = true;
                    }
                    tracing::debug!(error = %e, "GPU status from the node agent unavailable");
                }
            }
        }
    }
}

/// On reaching an agent again: makes the last set-call again where the GPU no longer holds
/// it (a restarted agent resets the clocks at start).
fn reassert(
    rt: &tokio::runtime::Runtime,
    client: &mut Option<ControlClient>,
    path: &Path,
    uuid: &str,
    last: Option<ClockTarget>,
    st: &super::proto::ClockStatus,
) {
    let Some((lo, hi)) = last.and_then(|t| t.graphics_range()) else {
        return;
    };
    if (st.locked_min_mhz, st.locked_max_mhz) == (lo, hi) || st.unhealthy {
        return;
    }
    match on_agent(rt, client, path, uuid, async |c| c.set_clocks(lo, hi).await) {
        Ok(_) => tracing::info!(
            min = lo,
            max = hi,
            "node agent reached again: the clocks in force before are set again"
        ),
        Err(e) => {
            *client = None;
            tracing::warn!(error = %e, "clocks not set again through the node agent");
        }
    }
}

/// One executed unit as the serving loop knows it, for the agent's energy attribution.
#[derive(Debug, Clone, PartialEq)]
pub struct UnitRun<'a> {
    pub model: &'a str,
    pub service: &'a str,
    pub unit: u32,
    pub unit_name: &'a str,
    pub layers: std::ops::Range<usize>,
    pub batch: u32,
    pub clock_mhz: u32,
    pub start_unix_s: f64,
    pub end_unix_s: f64,
}

impl UnitRun<'_> {
    /// The timing message, with the power model's predictions as the attribution weights
    /// (without a model: the unit alone, weighted by time).
    pub fn timing(&self, power: Option<&LayerPowerModel>) -> UnitTiming {
        let mut t = UnitTiming {
            model: self.model.to_string(),
            inference_service: self.service.to_string(),
            unit: self.unit,
            unit_name: self.unit_name.to_string(),
            batch: self.batch,
            start_unix_s: self.start_unix_s,
            end_unix_s: self.end_unix_s,
            clock_mhz: self.clock_mhz,
            ..UnitTiming::default()
        };
        if let Some(p) = power {
            let names = &p.table().layers;
            t.layers = self
                .layers
                .clone()
                .filter_map(|l| {
                    let (_, energy_j) = p.layer(l, self.batch, self.clock_mhz);
                    Some(LayerShare {
                        name: names.get(l)?.clone(),
                        predicted_energy_j: energy_j,
                    })
                })
                .collect();
            let seg = p.segment(self.layers.clone(), self.batch, self.clock_mhz, 0.0, 1.0);
            t.predicted_power_w = seg.power_w;
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eali::costs::LayerCostTable;

    fn table() -> LayerCostTable {
        LayerCostTable {
            model: "m".into(),
            gpu: "g".into(),
            layers: vec!["conv1".into(), "conv2".into(), "fc".into()],
            batches: vec![1],
            clocks_mhz: vec![1000],
            time_s: vec![vec![vec![0.01]], vec![vec![0.03]], vec![vec![0.01]]],
            energy_j: vec![vec![vec![1.0]], vec![vec![3.0]], vec![vec![0.5]]],
            idle_power_w: vec![50.0],
            batch_overhead_s: vec![0.0],
        }
    }

    #[test]
    fn unit_timing_carries_the_power_model_weights() {
        let power = LayerPowerModel::new(table());
        let run = UnitRun {
            model: "m",
            service: "svc",
            unit: 0,
            unit_name: "stem",
            layers: 0..2,
            batch: 1,
            clock_mhz: 1000,
            start_unix_s: 10.0,
            end_unix_s: 10.04,
        };
        let t = run.timing(Some(&power));
        let layers: Vec<(&str, f64)> = t
            .layers
            .iter()
            .map(|l| (l.name.as_str(), l.predicted_energy_j))
            .collect();
        assert_eq!(layers, vec![("conv1", 1.0), ("conv2", 3.0)]);
        // 4 J over 40 ms.
        assert!(
            (t.predicted_power_w - 100.0).abs() < 1e-9,
            "{}",
            t.predicted_power_w
        );
        assert_eq!(
            (t.unit_name.as_str(), t.inference_service.as_str()),
            ("stem", "svc")
        );
        let bare = run.timing(None);
        assert!(bare.layers.is_empty());
        assert_eq!(bare.predicted_power_w, 0.0);
    }
}
