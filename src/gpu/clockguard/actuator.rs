//! The dedicated clock-setting thread. Requests arrive on a channel and never block the sender,
//! each with the time it is to be made (a plan's set-call ahead of its unit's boundary, or now);
//! the thread makes each at its time, and when several are due together only the newest per GPU
//! is applied (the older ones could not land in time anyway: [`SetCallQueue`]); a request for
//! the setting already in force is skipped. Each lock is recorded by the
//! [`ClockGuard`] before it is made, each reset cleared after. Once a change has had time to
//! settle, the clock is read back, and a clock held below the request (a power cap, a thermal
//! slowdown) is reported.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{ClockGuard, LockEntry, LockKind};
use crate::gpu::{ClockChange, ClockTarget, GpuBackend, GpuError, SetCallQueue, ThrottleReasons};

fn kind(t: ClockTarget) -> Option<LockKind> {
    match t {
        ClockTarget::Locked(_) | ClockTarget::LockedRange { .. } => Some(LockKind::Graphics),
        ClockTarget::Application { .. } => Some(LockKind::Application),
        ClockTarget::Default => None,
    }
}

/// What the clock thread did.
#[derive(Debug, Clone, PartialEq)]
pub enum ClockEvent {
    Applied {
        gpu: usize,
        target: ClockTarget,
        change: ClockChange,
    },
    /// The target was already in force; no NVML call.
    Skipped { gpu: usize, target: ClockTarget },
    Failed {
        gpu: usize,
        target: ClockTarget,
        error: GpuError,
    },
    /// Read back after the settle time; `idle` readings do not judge the request.
    Verified {
        gpu: usize,
        target: ClockTarget,
        actual_mhz: u32,
        idle: bool,
    },
    /// The GPU runs below the requested clock while busy: `reasons` says why (power cap…).
    BelowRequest {
        gpu: usize,
        target: ClockTarget,
        actual_mhz: u32,
        reasons: ThrottleReasons,
    },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ActuatorStats {
    pub requested: u64,
    pub applied: u64,
    pub skipped: u64,
    /// Requests replaced by a newer one for the same GPU due with them.
    pub superseded: u64,
    pub failed: u64,
    pub below_request: u64,
}

enum Msg {
    Set(usize, Instant, ClockTarget),
    Flush(Sender<()>),
    Shutdown,
    /// Stop without resetting anything: what SIGKILL does (tests).
    #[cfg(test)]
    Abandon,
}

type Gpus = Vec<Box<dyn GpuBackend + Send>>;

/// Handle to the clock thread.
pub struct ClockActuator {
    tx: Sender<Msg>,
    events: Receiver<ClockEvent>,
    stats: Arc<Mutex<ActuatorStats>>,
    thread: Option<JoinHandle<Gpus>>,
}

/// Margin after the expected (median) settle time before reading the clock back: covers the
/// settle tail (max ≈ 48 ms against a 20 ms median on V100 in the DVFS latency tool's reports,
/// `docs/architecture.md`, "Switch latency").
const VERIFY_MARGIN: Duration = Duration::from_millis(40);

impl ClockActuator {
    /// Starts the thread that owns `gpus` (indexed as given). Run [`ClockGuard::recover`]
    /// first: the thread assumes each GPU starts at its default clocks.
    pub fn spawn(gpus: Gpus, guard: Arc<ClockGuard>) -> Self {
        let (tx, rx) = mpsc::channel();
        let (ev_tx, events) = mpsc::channel();
        let stats = Arc::new(Mutex::new(ActuatorStats::default()));
        let worker = Worker {
            current: vec![ClockTarget::Default; gpus.len()],
            pending: (0..gpus.len()).map(|_| SetCallQueue::new()).collect(),
            epoch: Instant::now(),
            verify: vec![None; gpus.len()],
            gpus,
            guard,
            events: ev_tx,
            stats: Arc::clone(&stats),
        };
        let thread = std::thread::Builder::new()
            .name("eali-clocks".into())
            .spawn(move || worker.run(rx))
            .ok();
        Self {
            tx,
            events,
            stats,
            thread,
        }
    }

    /// Queues a clock change to be made now; never blocks. Requests to a GPU index out of range
    /// fail on the thread (reported as [`ClockEvent::Failed`]).
    pub fn request(&self, gpu: usize, target: ClockTarget) {
        self.request_at(gpu, Instant::now(), target);
    }

    /// Queues a clock change to be made at `at` (a set-call planned ahead of a unit boundary);
    /// never blocks. A newer request due with it supersedes it.
    pub fn request_at(&self, gpu: usize, at: Instant, target: ClockTarget) {
        self.stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .requested += 1;
        let _ = self.tx.send(Msg::Set(gpu, at, target));
    }

    /// Makes every request queued so far, due or not, and waits until they were handled (not for
    /// read-backs).
    pub fn flush(&self) {
        let (tx, rx) = mpsc::channel();
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.recv();
        }
    }

    /// Events so far, without waiting.
    pub fn drain_events(&self) -> Vec<ClockEvent> {
        self.events.try_iter().collect()
    }

    /// Waits up to `timeout` for the next event.
    pub fn next_event(&self, timeout: Duration) -> Option<ClockEvent> {
        self.events.recv_timeout(timeout).ok()
    }

    pub fn stats(&self) -> ActuatorStats {
        *self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Resets every GPU the thread changed, stops it, and hands the GPUs back.
    pub fn shutdown(mut self) -> Gpus {
        self.stop()
    }

    /// Stops the thread as if the process were killed: nothing is reset (tests).
    #[cfg(test)]
    pub(crate) fn abandon(mut self) {
        let _ = self.tx.send(Msg::Abandon);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn stop(&mut self) -> Gpus {
        let _ = self.tx.send(Msg::Shutdown);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for ClockActuator {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop();
        }
    }
}

struct Worker {
    gpus: Gpus,
    current: Vec<ClockTarget>,
    /// Requests not yet due, per GPU, on the thread's time axis (seconds since `epoch`).
    pending: Vec<SetCallQueue>,
    epoch: Instant,
    /// Pending read-back per GPU: (when, what was asked).
    verify: Vec<Option<(Instant, ClockTarget)>>,
    guard: Arc<ClockGuard>,
    events: Sender<ClockEvent>,
    stats: Arc<Mutex<ActuatorStats>>,
}

impl Worker {
    fn secs(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.epoch).as_secs_f64()
    }

    fn run(mut self, rx: Receiver<Msg>) -> Gpus {
        loop {
            let next_verify = self.verify.iter().flatten().map(|v| v.0).min();
            let next_due = self
                .pending
                .iter()
                .filter_map(SetCallQueue::next_due)
                .reduce(f64::min)
                .map(|s| self.epoch + Duration::try_from_secs_f64(s.max(0.0)).unwrap_or_default());
            let first = match [next_verify, next_due].into_iter().flatten().min() {
                Some(at) => match rx.recv_timeout(at.saturating_duration_since(Instant::now())) {
                    Ok(m) => Some(m),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => Some(Msg::Shutdown),
                },
                None => Some(rx.recv().unwrap_or(Msg::Shutdown)),
            };
            let mut flushes = Vec::new();
            let mut shutdown = false;
            #[cfg(test)]
            let mut abandon = false;
            for m in first
                .into_iter()
                .chain(std::iter::from_fn(|| rx.try_recv().ok()))
            {
                match m {
                    Msg::Set(gpu, at, target) => match self.pending.get_mut(gpu) {
                        Some(q) => q.push(
                            at.saturating_duration_since(self.epoch).as_secs_f64(),
                            target,
                        ),
                        // Out of range: fails now, reported.
                        None => self.apply(gpu, target),
                    },
                    Msg::Flush(tx) => flushes.push(tx),
                    Msg::Shutdown => shutdown = true,
                    #[cfg(test)]
                    Msg::Abandon => abandon = true,
                }
            }
            #[cfg(test)]
            if abandon {
                return self.gpus;
            }
            // A flush makes everything queued now.
            let now = if flushes.is_empty() {
                self.secs(Instant::now())
            } else {
                f64::INFINITY
            };
            for gpu in 0..self.pending.len() {
                let before = self.pending[gpu].superseded();
                let due = self.pending[gpu].take_due(now);
                let superseded = self.pending[gpu].superseded() - before;
                if superseded > 0 {
                    self.stat(|s| s.superseded += superseded);
                }
                if let Some((_, target)) = due {
                    self.apply(gpu, target);
                }
            }
            self.verify_due();
            for f in flushes {
                let _ = f.send(());
            }
            if shutdown {
                for gpu in 0..self.gpus.len() {
                    self.apply(gpu, ClockTarget::Default);
                }
                return self.gpus;
            }
        }
    }

    fn stat(&self, f: impl FnOnce(&mut ActuatorStats)) {
        f(&mut self.stats.lock().unwrap_or_else(PoisonError::into_inner));
    }

    fn emit(&self, e: ClockEvent) {
        let _ = self.events.send(e);
    }

    fn apply(&mut self, gpu: usize, target: ClockTarget) {
        let Some(g) = self.gpus.get_mut(gpu) else {
            let error = GpuError::InvalidArgument(format!("no GPU {gpu} on the clock thread"));
            self.stat(|s| s.failed += 1);
            self.emit(ClockEvent::Failed { gpu, target, error });
            return;
        };
        let current = self.current[gpu];
        if current == target {
            self.stat(|s| s.skipped += 1);
            self.emit(ClockEvent::Skipped { gpu, target });
            return;
        }
        let (uuid, index) = (g.info().uuid.clone(), g.info().index);
        // Switching from one kind of setting to another undoes the old one first.
        if let (Some(old), Some(new)) = (kind(current), kind(target))
            && old != new
            && let Err(error) = reset(g.as_mut(), &self.guard, &uuid, old)
        {
            self.stat(|s| s.failed += 1);
            self.emit(ClockEvent::Failed { gpu, target, error });
            return;
        }
        let result = match target {
            ClockTarget::Default => match kind(current) {
                Some(k) => reset_change(g.as_mut(), &self.guard, &uuid, k),
                None => Ok(None),
            },
            ClockTarget::Locked(_) | ClockTarget::LockedRange { .. } => {
                let (min_mhz, max_mhz) = target.graphics_range().unwrap_or_default();
                let entry = LockEntry::new(&uuid, index, LockKind::Graphics, min_mhz, max_mhz);
                record(&self.guard, entry)
                    .and_then(|()| g.set_locked_clocks(min_mhz, max_mhz).map(Some))
            }
            ClockTarget::Application {
                memory_mhz,
                graphics_mhz,
            } => {
                let entry = LockEntry::new(
                    &uuid,
                    index,
                    LockKind::Application,
                    graphics_mhz,
                    graphics_mhz,
                );
                record(&self.guard, entry)
                    .and_then(|()| g.set_application_clocks(memory_mhz, graphics_mhz).map(Some))
            }
        };
        match result {
            Ok(change) => {
                // Device time to settle, mapped onto wall time for the read-back.
                let settle = change.map(|c| (c.effective_at_s - g.now_s()).max(0.0));
                self.current[gpu] = target;
                self.stat(|s| s.applied += 1);
                if let (Some(change), Some(wait)) = (change, settle) {
                    self.verify[gpu] = Some((
                        Instant::now() + Duration::from_secs_f64(wait) + VERIFY_MARGIN,
                        target,
                    ));
                    self.emit(ClockEvent::Applied {
                        gpu,
                        target,
                        change,
                    });
                }
            }
            Err(error) => {
                // A refused call changed nothing, so its write-ahead entry goes (unless the same
                // kind of setting was already in force). Any other failure may have changed the
                // clock: the entry stays for the exit or start-time reset.
                let refused = matches!(
                    error,
                    GpuError::NoPermission { .. }
                        | GpuError::NotSupported { .. }
                        | GpuError::InvalidArgument(_)
                );
                if let Some(k) = kind(target).filter(|&k| refused && kind(current) != Some(k)) {
                    let _ = self.guard.after_reset(&uuid, k);
                }
                self.stat(|s| s.failed += 1);
                self.emit(ClockEvent::Failed { gpu, target, error });
            }
        }
    }

    fn verify_due(&mut self) {
        let now = Instant::now();
        for gpu in 0..self.gpus.len() {
            let Some((at, target)) = self.verify[gpu] else {
                continue;
            };
            if at > now {
                continue;
            }
            self.verify[gpu] = None;
            let Some((min, _max)) = target.graphics_range() else {
                continue;
            };
            let g = &self.gpus[gpu];
            let read = g
                .clocks()
                .and_then(|c| g.throttle_reasons().map(|r| (c.graphics_mhz, r)));
            match read {
                Ok((actual_mhz, reasons)) if actual_mhz < min && !reasons.gpu_idle => {
                    self.stat(|s| s.below_request += 1);
                    self.emit(ClockEvent::BelowRequest {
                        gpu,
                        target,
                        actual_mhz,
                        reasons,
                    });
                }
                Ok((actual_mhz, reasons)) => self.emit(ClockEvent::Verified {
                    gpu,
                    target,
                    actual_mhz,
                    idle: reasons.gpu_idle,
                }),
                Err(error) => self.emit(ClockEvent::Failed { gpu, target, error }),
            }
        }
    }
}

fn record(guard: &ClockGuard, entry: LockEntry) -> Result<(), GpuError> {
    guard
        .before_set(entry)
        .map_err(|e| GpuError::Other(format!("not changing clocks: {e}")))
}

fn reset(
    g: &mut (dyn GpuBackend + Send),
    guard: &ClockGuard,
    uuid: &str,
    kind: LockKind,
) -> Result<(), GpuError> {
    reset_change(g, guard, uuid, kind).map(|_| ())
}

fn reset_change(
    g: &mut (dyn GpuBackend + Send),
    guard: &ClockGuard,
    uuid: &str,
    kind: LockKind,
) -> Result<Option<ClockChange>, GpuError> {
    let change = match kind {
        LockKind::Graphics => g.reset_locked_clocks()?,
        LockKind::Application => g.reset_application_clocks()?,
        // The clock thread never sets memory clocks; nothing of its own to undo.
        LockKind::Memory => return Ok(None),
    };
    guard.after_reset(uuid, kind).map_err(|e| {
        GpuError::Other(format!("clocks reset but the record was not updated: {e}"))
    })?;
    Ok(Some(change))
}
