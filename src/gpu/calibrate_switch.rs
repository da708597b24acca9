//! Switch-latency calibration: how long a graphics-clock change takes on this GPU, measured the way
//! the DVFS latency tool measured it (`docs/architecture.md`, "Switch latency"): for every ordered
//! pair of a few clock points, lock the new clock, time the call, then poll the clock until it
//! reads the new value. The median and p95 go to the planner's unit merging as a [`SwitchLatency`].
//!
//! It changes clocks, so it runs only on GPUs the agent owns and only when the operator asks;
//! the lock is recorded by the [`ClockGuard`] first and reset afterwards, whatever happens.
//! Locked clocks are needed (Volta and newer): application clocks only show under load.

use serde::Serialize;

use crate::eali::SwitchLatency;
use crate::gpu::clockguard::{ClockGuard, ClockGuardError, LockEntry, LockKind};
use crate::gpu::sim::{GpuProfile, SimGpu};
use crate::gpu::{GpuBackend, GpuError};

#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    #[error(transparent)]
    Gpu(#[from] GpuError),
    #[error("not calibrating: {0}")]
    Guard(#[from] ClockGuardError),
    #[error("need at least two distinct clock points, got {0:?}")]
    TooFewPoints(Vec<u32>),
    #[error("no switch settled within {timeout_s} s: the clock never read the requested value")]
    NoSamples { timeout_s: f64 },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CalibrationConfig {
    /// Clock points (MHz, supported ones); every ordered pair is measured.
    pub points_mhz: Vec<u32>,
    /// Rounds over all pairs.
    pub repeats: u32,
    /// Polling interval of the clock reading (s): the settle time's resolution.
    pub poll_s: f64,
    /// A switch not in force after this long counts as timed out (s).
    pub timeout_s: f64,
}

impl CalibrationConfig {
    /// `n` points spread evenly over the supported clocks (highest first, as NVML lists them),
    /// like the published measurement's 135/412/690/975/1252/1530 MHz on V100.
    pub fn spread(supported_desc: &[u32], n: usize, repeats: u32) -> Self {
        let mut points: Vec<u32> = if supported_desc.len() <= n {
            supported_desc.to_vec()
        } else {
            (0..n)
                .map(|k| supported_desc[k * (supported_desc.len() - 1) / (n.max(2) - 1)])
                .collect()
        };
        points.dedup();
        Self {
            points_mhz: points,
            repeats,
            poll_s: 0.0005,
            timeout_s: 0.5,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SwitchSample {
    pub from_mhz: u32,
    pub to_mhz: u32,
    /// Time the set call blocked (s).
    pub call_s: f64,
    /// From the call's return until the clock read the new value (s); None: timed out.
    pub settle_s: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencyStats {
    pub n: usize,
    pub median_s: f64,
    pub p95_s: f64,
    pub p99_s: f64,
    pub max_s: f64,
}

impl LatencyStats {
    /// Nearest-rank percentiles; None for no values.
    pub fn of(values: &[f64]) -> Option<Self> {
        let q = |p: f64| crate::stats::percentile_finite(values, p);
        Some(Self {
            n: values.iter().filter(|x| x.is_finite()).count(),
            median_s: q(0.5)?,
            p95_s: q(0.95)?,
            p99_s: q(0.99)?,
            max_s: q(1.0)?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CalibrationReport {
    pub uuid: String,
    pub config: CalibrationConfig,
    pub samples: Vec<SwitchSample>,
    pub call: LatencyStats,
    pub settle: LatencyStats,
    /// Call + settle, per switch.
    pub total: LatencyStats,
    pub timeouts: usize,
    /// What the planner takes.
    pub switch_latency: SwitchLatency,
}

/// Measures switch latency on `gpu`. `wait(gpu, s)` lets `s` seconds of device time pass: a
/// sleep on a real GPU, an idle period on the simulated one. Times come from `gpu.now_s()`.
pub fn calibrate<G: GpuBackend + ?Sized>(
    gpu: &mut G,
    guard: &ClockGuard,
    cfg: &CalibrationConfig,
    wait: &mut dyn FnMut(&mut G, f64),
) -> Result<CalibrationReport, CalibrationError> {
    let info = gpu.info().clone();
    if !info.architecture.has_locked_clocks() {
        return Err(GpuError::NotSupported {
            what: "switch calibration (needs locked clocks)",
            arch: info.architecture,
        }
        .into());
    }
    let points = &cfg.points_mhz;
    if points.len() < 2 {
        return Err(CalibrationError::TooFewPoints(points.clone()));
    }
    let (lo, hi) = (
        points.iter().min().copied().unwrap_or(0),
        points.iter().max().copied().unwrap_or(0),
    );
    guard.before_set(LockEntry::new(
        &info.uuid,
        info.index,
        LockKind::Graphics,
        lo,
        hi,
    ))?;
    let measured = measure(gpu, cfg, wait);
    // Whatever happened, the GPU goes back to its default clocks.
    let reset = gpu.reset_locked_clocks();
    if reset.is_ok() {
        guard.after_reset(&info.uuid, LockKind::Graphics)?;
    }
    let samples = measured?;
    reset?;
    summarize(info.uuid, cfg, samples)
}

/// The statistics of a run of switches, and what the planner takes from them.
fn summarize(
    uuid: String,
    cfg: &CalibrationConfig,
    samples: Vec<SwitchSample>,
) -> Result<CalibrationReport, CalibrationError> {
    let settled: Vec<&SwitchSample> = samples.iter().filter(|s| s.settle_s.is_some()).collect();
    let call: Vec<f64> = samples.iter().map(|s| s.call_s).collect();
    let settle: Vec<f64> = settled.iter().filter_map(|s| s.settle_s).collect();
    let total: Vec<f64> = settled
        .iter()
        .filter_map(|s| s.settle_s.map(|x| x + s.call_s))
        .collect();
    let no_samples = || CalibrationError::NoSamples {
        timeout_s: cfg.timeout_s,
    };
    let call = LatencyStats::of(&call).ok_or_else(no_samples)?;
    let settle = LatencyStats::of(&settle).ok_or_else(no_samples)?;
    let total = LatencyStats::of(&total).ok_or_else(no_samples)?;
    Ok(CalibrationReport {
        uuid,
        config: cfg.clone(),
        timeouts: samples.len() - settled.len(),
        switch_latency: SwitchLatency {
            call_median_s: call.median_s,
            total_median_s: total.median_s,
            total_p95_s: total.p95_s,
        },
        samples,
        call,
        settle,
        total,
    })
}

/// Locks `f` and waits until the clock reads the applied value; the call and settle times.
fn switch<G: GpuBackend + ?Sized>(
    gpu: &mut G,
    f: u32,
    cfg: &CalibrationConfig,
    wait: &mut dyn FnMut(&mut G, f64),
) -> Result<(f64, Option<f64>), GpuError> {
    let t0 = gpu.now_s();
    let change = gpu.set_locked_clocks(f, f)?;
    let t1 = gpu.now_s();
    loop {
        if gpu.clocks()?.graphics_mhz == change.applied_mhz {
            return Ok((t1 - t0, Some(gpu.now_s() - t1)));
        }
        if gpu.now_s() - t1 > cfg.timeout_s {
            return Ok((t1 - t0, None));
        }
        wait(gpu, cfg.poll_s);
    }
}

fn measure<G: GpuBackend + ?Sized>(
    gpu: &mut G,
    cfg: &CalibrationConfig,
    wait: &mut dyn FnMut(&mut G, f64),
) -> Result<Vec<SwitchSample>, GpuError> {
    let points = &cfg.points_mhz;
    let mut samples = Vec::new();
    let mut at = points[0];
    switch(gpu, at, cfg, wait)?;
    for _ in 0..cfg.repeats {
        for &from in points {
            for &to in points.iter().filter(|&&t| t != from) {
                if at != from {
                    switch(gpu, from, cfg, wait)?;
                }
                let (call_s, settle_s) = switch(gpu, to, cfg, wait)?;
                samples.push(SwitchSample {
                    from_mhz: from,
                    to_mhz: to,
                    call_s,
                    settle_s,
                });
                at = to;
            }
        }
    }
    Ok(samples)
}

/// Rounds over the two clock points of [`measure_simulated`] (two switches each).
const SIMULATED_ROUNDS: u32 = 50;

/// The switch latency of a spare simulated GPU of `profile` ([`measure_two_points`] in virtual
/// time): what a server or the bench plans with on a simulated GPU.
pub fn measure_simulated(profile: &GpuProfile, seed: u64) -> SwitchLatency {
    let mut gpu = SimGpu::new(profile.clone(), 7, seed ^ 0x5717c4);
    measure_two_points(&mut gpu, SIMULATED_ROUNDS, &mut |g: &mut SimGpu, s| {
        let t = g.now() + s;
        g.advance_to(t);
    })
    .unwrap_or_default()
}

/// Measures `gpu`'s switch latency as [`calibrate`] does (lock, then poll the clock until it
/// reads the new value), `rounds` times each way between its top and a middle clock, and resets
/// its clocks. Without the clock guard: for a simulated GPU, or one nothing else controls.
pub fn measure_two_points<G: GpuBackend + ?Sized>(
    gpu: &mut G,
    rounds: u32,
    wait: &mut dyn FnMut(&mut G, f64),
) -> Result<SwitchLatency, CalibrationError> {
    let memory = gpu
        .supported_memory_clocks()?
        .into_iter()
        .max()
        .unwrap_or(0);
    let clocks = gpu.supported_graphics_clocks(memory)?;
    let (Some(&hi), Some(&mid)) = (clocks.first(), clocks.get(clocks.len() / 2)) else {
        return Err(CalibrationError::TooFewPoints(clocks));
    };
    let cfg = CalibrationConfig {
        points_mhz: vec![hi, mid],
        repeats: rounds,
        // Fine polling (10 µs): on the simulated GPU it costs no device time, and a GPU that
        // switches in a fraction of a millisecond is read to within a few percent.
        poll_s: 0.00001,
        timeout_s: 0.5,
    };
    let measured = measure(gpu, &cfg, wait);
    let reset = gpu.reset_locked_clocks();
    let samples = measured?;
    reset?;
    Ok(summarize(gpu.info().uuid.clone(), &cfg, samples)?.switch_latency)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::gpu::GpuBackend;
    use crate::gpu::clockguard::ClockResetter;
    use crate::gpu::sim::{GpuProfile, SimGpu};

    struct NoReset;
    impl ClockResetter for NoReset {
        fn reset(&self, _e: &LockEntry) -> Result<(), GpuError> {
            Ok(())
        }
        fn all_gpus(&self) -> Result<Vec<LockEntry>, GpuError> {
            Ok(Vec::new())
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = LatencyStats::of(&v).unwrap();
        assert_eq!(
            (s.n, s.median_s, s.p95_s, s.p99_s, s.max_s),
            (100, 50.0, 95.0, 99.0, 100.0)
        );
        assert!(LatencyStats::of(&[]).is_none());
    }

    #[test]
    fn spread_picks_the_ends_and_even_steps() {
        let desc: Vec<u32> = (0..=10).rev().map(|k| 100 + 10 * k).collect();
        let c = CalibrationConfig::spread(&desc, 3, 1);
        assert_eq!(c.points_mhz, vec![200, 150, 100]);
    }

    /// Calibration recovers the simulated GPU's switch-latency distribution (the profile's
    /// call median, and a total of call + settle floor + settle tail).
    #[test]
    fn recovers_the_simulated_switch_latency() {
        let profile = GpuProfile::builtin("v100-sxm2").unwrap();
        let sw = profile.spec().switch.clone();
        let mut gpu = SimGpu::new(profile.clone(), 0, 7);
        let dir = std::env::temp_dir().join(format!("eali-calib-{}", std::process::id()));
        let record = dir.join("locks.json");
        let (guard, _) = ClockGuard::start(&record, Arc::new(NoReset)).unwrap();
        let cfg = CalibrationConfig::spread(profile.supported_clocks_mhz(), 6, 4);
        let report = calibrate(&mut gpu, &guard, &cfg, &mut |g: &mut SimGpu, s| {
            g.idle(s).unwrap()
        })
        .unwrap();
        assert_eq!(report.samples.len(), 4 * 6 * 5);
        assert_eq!(report.timeouts, 0);
        let call_ms = report.call.median_s * 1e3;
        assert!(
            (call_ms / sw.call_median_ms - 1.0).abs() < 0.25,
            "call median {call_ms} ms vs {}",
            sw.call_median_ms
        );
        let expect_total_ms = sw.call_median_ms + sw.settle_floor_ms + sw.settle_extra_median_ms;
        let total_ms = report.switch_latency.total_median_s * 1e3;
        assert!(
            (total_ms / expect_total_ms - 1.0).abs() < 0.25,
            "total median {total_ms} ms vs ≈{expect_total_ms}"
        );
        assert!(report.switch_latency.total_p95_s >= report.switch_latency.total_median_s);
        // Left as found: unlocked, nothing on record.
        gpu.idle(1.0).unwrap();
        assert_eq!(gpu.clocks().unwrap().locked, None);
        assert!(guard.locked().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The one measurement on the simulated V100, against the DVFS latency tool's V100 reports
    /// (`docs/architecture.md`, "Switch latency"): call p50 4.1–5.2 ms, total p50 24.5–25.3 ms,
    /// p99 32–37 ms.
    #[test]
    fn measures_the_simulated_v100_switch() {
        let profile = GpuProfile::load("v100-sxm2").unwrap();
        let mut gpu = SimGpu::new(profile.clone(), 0, 7);
        let lat =
            measure_two_points(&mut gpu, 30, &mut |g: &mut SimGpu, s| g.idle(s).unwrap()).unwrap();
        assert!(
            lat.call_median_s > 0.003 && lat.call_median_s < 0.007,
            "{lat:?}"
        );
        assert!(
            lat.total_median_s > 0.020 && lat.total_median_s < 0.030,
            "{lat:?}"
        );
        assert!(
            lat.total_p95_s >= lat.total_median_s && lat.total_p95_s < 0.045,
            "{lat:?}"
        );
        // Left unlocked once the reset has landed.
        gpu.idle(0.1).unwrap();
        assert_eq!(gpu.clocks().unwrap().locked, None);
        // The spare GPU a server measures on gives the same reading.
        let spare = measure_simulated(&profile, 7);
        assert!(
            (spare.total_median_s / lat.total_median_s - 1.0).abs() < 0.1,
            "{spare:?} vs {lat:?}"
        );
    }
}
