//! The discrete-event simulator: arrivals enter a FIFO queue, the policy decides when to
//! dispatch how many requests with which clock plan, and the ground-truth GPU runs each batch unit
//! by unit on virtual time. Set-calls go through a separate clock-thread timeline (serial calls,
//! each blocking only that thread, skipped when the target is already requested), so they never
//! block the batch path. Energy is what the GPU's energy counter reads.
//!
//! Cost per request is O(1) and allocation-free: spans are precomputed per (unit, batch), the
//! queue is a ring of indices, latencies go into one array sized by the arrivals.

use std::collections::VecDeque;

use crate::gpu::{GpuError, SerialSetCalls};

use super::device::{Device, SpanTable};
use super::metrics::{
    RunResult, SetCallRecord, Timeline, TimelineBatch, percentile, slo_attainment,
};
use crate::policy::{Action, BatchDone, ClockTarget, Policy};

/// Why a run could not complete.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SimError {
    #[error("GPU: {0}")]
    Gpu(#[from] GpuError),
    #[error(
        "policy {policy} asked to wait until {until_s} s at {now_s} s with nothing to wait for"
    )]
    PolicyStalled {
        policy: String,
        now_s: f64,
        until_s: f64,
    },
    #[error("policy {policy} dispatched a batch of {batch} (queue {queue}, maximum {max})")]
    BadBatch {
        policy: String,
        batch: u32,
        queue: usize,
        max: u32,
    },
    #[error("policy {policy} has {plan} unit clocks for a chain of {units} units")]
    PlanShape {
        policy: String,
        plan: usize,
        units: usize,
    },
    #[error(
        "span table covers {table} units and batches up to {max}, policy needs {units} and {need}"
    )]
    SpanTableMismatch {
        table: usize,
        units: usize,
        max: u32,
        need: u32,
    },
    #[error("arrival times must be finite and ascending")]
    BadArrivals,
}

/// Run settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    pub slo_s: f64,
    /// Window over which SLO attainment is judged (by arrival time).
    pub window_s: f64,
    /// Requests arriving while this many wait are dropped (counted, never completed).
    pub queue_capacity: usize,
    /// Keep a [`Timeline`] in the result.
    pub record_timeline: bool,
    /// Energy and idle time are counted at least until this time (default: the last arrival).
    pub duration_s: Option<f64>,
}

impl SimConfig {
    pub fn new(slo_s: f64) -> Self {
        Self {
            slo_s,
            window_s: 10.0,
            queue_capacity: 1 << 20,
            record_timeline: false,
            duration_s: None,
        }
    }
}

/// The clock thread: serial set-calls timed by [`SerialSetCalls`] (identical consecutive targets
/// are skipped, as Zeus' frequency controller does).
struct ClockThread {
    calls: SerialSetCalls,
}

impl ClockThread {
    fn issue<D: Device>(
        &mut self,
        dev: &mut D,
        at: f64,
        target: ClockTarget,
        log: Option<&mut Vec<SetCallRecord>>,
    ) -> Result<(), GpuError> {
        let Some(t) = self.calls.start(at, dev.now_s(), target) else {
            return Ok(());
        };
        let change = dev.schedule_clock(t, target)?;
        self.calls.made(t, target, change.call_latency_s);
        if let Some(log) = log {
            let target_mhz = match target {
                ClockTarget::Default => 0,
                _ => change.applied_mhz,
            };
            log.push(SetCallRecord {
                issued_s: t,
                effective_s: change.effective_at_s,
                target_mhz,
            });
        }
        Ok(())
    }
}

/// Runs `policy` over `arrivals` (ascending, seconds) on `device`, whose clock starts as the
/// device has it. `spans` must have been built for the policy's units.
pub fn run<D: Device, P: Policy + ?Sized>(
    device: &mut D,
    spans: &SpanTable<D::Span>,
    policy: &mut P,
    arrivals: &[f64],
    cfg: &SimConfig,
) -> Result<RunResult, SimError> {
    let units = policy.units().len();
    if spans.units() != units || spans.max_batch() < policy.max_batch() {
        return Err(SimError::SpanTableMismatch {
            table: spans.units(),
            units,
            max: spans.max_batch(),
            need: policy.max_batch(),
        });
    }
    if arrivals.iter().any(|a| !a.is_finite()) || arrivals.windows(2).any(|w| w[1] < w[0]) {
        return Err(SimError::BadArrivals);
    }
    let n = arrivals.len();
    let t0 = device.now_s();
    let e0 = device.energy_mj()?;
    let mut latency = vec![f64::NAN; n];
    let mut batch_lat: Vec<f64> = Vec::with_capacity(policy.max_batch() as usize);
    let mut unit_starts: Vec<f64> = Vec::with_capacity(units);
    let mut queue: VecDeque<u32> = VecDeque::with_capacity(cfg.queue_capacity.min(n).max(1));
    let mut timeline = cfg.record_timeline.then(|| Timeline {
        units,
        ..Timeline::default()
    });
    let mut clock = ClockThread {
        calls: SerialSetCalls::new(t0),
    };
    if let Some(target) = policy.initial_clock() {
        clock.issue(
            device,
            t0,
            target,
            timeline.as_mut().map(|t| &mut t.set_calls),
        )?;
    }

    let (mut next, mut dropped, mut batches, mut busy, mut saturated_s) = (0usize, 0, 0, 0.0, 0.0);
    let mut t = t0;
    let mut sat_since: Option<f64> = None;
    loop {
        while next < n && arrivals[next] <= t {
            if queue.len() >= cfg.queue_capacity {
                latency[next] = f64::INFINITY;
                dropped += 1;
            } else {
                policy.on_arrival(arrivals[next]);
                queue.push_back(next as u32);
            }
            next += 1;
        }
        let Some(&oldest) = queue.front() else {
            if next == n {
                break;
            }
            if let Some(target) = policy.idle_clock(t) {
                let log = timeline.as_mut().map(|t| &mut t.set_calls);
                clock.issue(device, t, target, log)?;
            }
            device.idle_until(arrivals[next])?;
            t = device.now_s().max(arrivals[next]);
            continue;
        };
        match policy.next_action(t, queue.len(), arrivals[oldest as usize]) {
            Action::Dispatch { batch } => {
                if batch == 0 || batch as usize > queue.len() || batch > policy.max_batch() {
                    return Err(SimError::BadBatch {
                        policy: policy.name().to_string(),
                        batch,
                        queue: queue.len(),
                        max: policy.max_batch(),
                    });
                }
                let plan = policy.plan();
                if plan.unit_clocks.len() != units {
                    return Err(SimError::PlanShape {
                        policy: policy.name().to_string(),
                        plan: plan.unit_clocks.len(),
                        units,
                    });
                }
                let start = t;
                let e_start = device.energy_mj()?;
                for call in &plan.set_calls {
                    let log = timeline.as_mut().map(|t| &mut t.set_calls);
                    clock.issue(device, start + call.offset_s, call.target, log)?;
                }
                if let Some(tl) = timeline.as_mut() {
                    tl.batches.push(TimelineBatch {
                        start_s: start,
                        end_s: start,
                        batch,
                        first_unit: tl.unit_clocks.len(),
                    });
                }
                unit_starts.clear();
                for u in 0..units {
                    unit_starts.push(device.now_s());
                    if let Some(tl) = timeline.as_mut() {
                        tl.unit_clocks.push(device.graphics_clock_mhz());
                        tl.unit_starts.push(device.now_s());
                    }
                    device.run_span(spans.get(u, batch))?;
                }
                let end = device.now_s();
                if let Some(b) = timeline.as_mut().and_then(|tl| tl.batches.last_mut()) {
                    b.end_s = end;
                }
                batch_lat.clear();
                for _ in 0..batch {
                    if let Some(i) = queue.pop_front() {
                        let l = end - arrivals[i as usize];
                        latency[i as usize] = l;
                        batch_lat.push(l);
                    }
                }
                batches += 1;
                busy += end - start;
                t = end;
                let done = BatchDone {
                    start_s: start,
                    end_s: end,
                    batch,
                    oldest_arrival_s: arrivals[oldest as usize],
                    energy_j: (device.energy_mj()?.saturating_sub(e_start)) as f64 / 1000.0,
                    queue_len: queue.len(),
                    latencies_s: &batch_lat,
                    unit_starts_s: &unit_starts,
                };
                policy.on_batch_done(&done);
            }
            Action::WaitUntil(until) => {
                let wake = if next < n {
                    until.min(arrivals[next])
                } else {
                    until
                };
                if wake <= t || wake.is_nan() {
                    return Err(SimError::PolicyStalled {
                        policy: policy.name().to_string(),
                        now_s: t,
                        until_s: until,
                    });
                }
                if let Some(target) = policy.idle_clock(t) {
                    let log = timeline.as_mut().map(|t| &mut t.set_calls);
                    clock.issue(device, t, target, log)?;
                }
                device.idle_until(wake)?;
                t = wake;
            }
        }
        match (policy.saturated(), sat_since) {
            (true, None) => sat_since = Some(t),
            (false, Some(s)) => {
                saturated_s += t - s;
                sat_since = None;
            }
            _ => {}
        }
    }
    let horizon = cfg.duration_s.map_or(t, |d| t.max(t0 + d));
    if horizon > device.now_s() {
        device.idle_until(horizon)?;
    }
    if let Some(s) = sat_since {
        saturated_s += horizon - s;
    }
    let energy_j = device.energy_mj()?.saturating_sub(e0) as f64 / 1000.0;
    Ok(summarise(SummaryInput {
        policy: policy.name(),
        arrivals,
        latency,
        dropped,
        horizon_s: horizon - t0,
        energy_j,
        cfg,
        clock: &clock,
        saturated_s,
        batches,
        busy_s: busy,
        timeline,
    }))
}

struct SummaryInput<'a> {
    policy: &'a str,
    arrivals: &'a [f64],
    latency: Vec<f64>,
    dropped: usize,
    horizon_s: f64,
    energy_j: f64,
    cfg: &'a SimConfig,
    clock: &'a ClockThread,
    saturated_s: f64,
    batches: usize,
    busy_s: f64,
    timeline: Option<Timeline>,
}

fn summarise(s: SummaryInput<'_>) -> RunResult {
    let n = s.arrivals.len();
    let completed = n - s.dropped;
    let mut scratch = Vec::with_capacity(completed);
    scratch.extend(s.latency.iter().copied().filter(|l| l.is_finite()));
    let mean = scratch.iter().sum::<f64>() / completed.max(1) as f64;
    let within = scratch.iter().filter(|&&l| l <= s.cfg.slo_s).count();
    let p99 = percentile(&mut scratch, 0.99);
    let p50 = percentile(&mut scratch, 0.5);
    let (attainment, windows) = slo_attainment(
        s.arrivals,
        &s.latency,
        s.cfg.window_s,
        s.cfg.slo_s,
        &mut scratch,
    );
    RunResult {
        policy: s.policy.to_string(),
        arrivals: n,
        completed,
        dropped: s.dropped,
        horizon_s: s.horizon_s,
        energy_j: s.energy_j,
        energy_per_request_j: if completed > 0 {
            s.energy_j / completed as f64
        } else {
            f64::NAN
        },
        p50_ms: p50 * 1e3,
        p99_ms: p99 * 1e3,
        mean_ms: mean * 1e3,
        slo_attainment: attainment,
        windows,
        within_slo: if completed > 0 {
            within as f64 / completed as f64
        } else {
            f64::NAN
        },
        switches: s.clock.calls.issued() as usize,
        skipped_set_calls: s.clock.calls.skipped() as usize,
        saturated_s: s.saturated_s,
        batches: s.batches,
        mean_batch: if s.batches > 0 {
            completed as f64 / s.batches as f64
        } else {
            0.0
        },
        busy_s: s.busy_s,
        timeline: s.timeline,
    }
}
