//! Checks of the simulated GPU's NVML-visible behaviour: clock-switch latency against the
//! published DVFS latency measurements, the energy counter's update period and agreement with
//! integrated power, and determinism under a seed.

use super::{CalibrationCheck, CalibrationError, SEED, Tolerance, resnet50};
use crate::gpu::GpuBackend;
use crate::gpu::sim::device::SimGpu;
use crate::gpu::sim::profile::GpuProfile;
use crate::gpu::sim::span::SpanCost;

fn percentile(values: &[f64], p: f64) -> f64 {
    crate::stats::percentile_finite(values, p).unwrap_or(f64::NAN)
}

/// Clock-switch latency as the DVFS latency tool measured it (its "DVFS CSV Report" files;
/// `docs/architecture.md`, "Switch latency"): a locked-clock call between the tool's clock points,
/// then polling the clock until it reads the new value. Published ranges span the tool's runs; the
/// tolerance adds 5 % for sampling error.
pub fn switch_latency() -> Result<Vec<CalibrationCheck>, CalibrationError> {
    const SRC: &str = "DVFS latency tool, DVFS CSV reports (V100)";
    const POINTS: [u32; 6] = [135, 412, 690, 975, 1252, 1530];
    let Switches {
        call,
        after,
        total,
        early,
    } = measure_switches("v100-sxm2", &POINTS, 1e-4)?;
    let range = |lo: f64, hi: f64| Tolerance::Within(lo * 0.95, hi * 1.05);
    Ok(vec![
        CalibrationCheck::new(
            "switch/call-p50",
            SRC,
            4.65,
            percentile(&call, 0.5),
            "ms",
            range(4.1, 5.2),
        ),
        CalibrationCheck::new(
            "switch/call-p95",
            SRC,
            9.1,
            percentile(&call, 0.95),
            "ms",
            range(8.4, 9.8),
        ),
        CalibrationCheck::new(
            "switch/after-call-p50",
            SRC,
            20.35,
            percentile(&after, 0.5),
            "ms",
            range(20.0, 20.7),
        ),
        CalibrationCheck::new(
            "switch/after-call-p99",
            SRC,
            24.6,
            percentile(&after, 0.99),
            "ms",
            range(21.5, 27.7),
        ),
        CalibrationCheck::new(
            "switch/total-p50",
            SRC,
            24.9,
            percentile(&total, 0.5),
            "ms",
            range(24.5, 25.3),
        ),
        CalibrationCheck::new(
            "switch/total-p99",
            SRC,
            34.4,
            percentile(&total, 0.99),
            "ms",
            range(31.9, 36.9),
        ),
        CalibrationCheck::new(
            "switch/new-clock-before-call+settle",
            "property: old clock in force until then",
            0.0,
            f64::from(early),
            "count",
            Tolerance::Absolute(0.0),
        ),
    ])
}

/// Switch timings of 3000 locked-clock transitions between `points` (ms), each measured like the
/// DVFS latency tool does: from a settled clock, the call, then polling the clock every `poll_s`
/// until it reads the target. Sorted.
struct Switches {
    call: Vec<f64>,
    after: Vec<f64>,
    total: Vec<f64>,
    /// Transitions whose new clock showed before the call and settle time had passed.
    early: u32,
}

fn measure_switches(
    profile: &str,
    points: &[u32],
    poll_s: f64,
) -> Result<Switches, CalibrationError> {
    let mut gpu = SimGpu::new(GpuProfile::builtin(profile)?, 0, SEED);
    let (mut call, mut after, mut total) = (Vec::new(), Vec::new(), Vec::new());
    let mut early = 0u32;
    for i in 0..3000usize {
        let target = gpu
            .profile()
            .floor_clock_mhz(points[(i * 7 + 1) % points.len()]);
        let current = points[(i * 7) % points.len()];
        let current = gpu.profile().floor_clock_mhz(current);
        // Start from a settled, different clock.
        let ch = gpu.set_locked_clocks(current, current)?;
        gpu.advance_to(ch.effective_at_s);
        let issued = gpu.now_s();
        let ch = gpu.set_locked_clocks(target, target)?;
        let returned = gpu.now_s();
        while gpu.clocks()?.graphics_mhz != target && gpu.now_s() < returned + 1.0 {
            gpu.idle(poll_s)?;
        }
        let seen = gpu.now_s();
        if seen + 1e-9 < ch.effective_at_s {
            early += 1;
        }
        call.push((returned - issued) * 1e3);
        after.push((seen - returned) * 1e3);
        total.push((seen - issued) * 1e3);
    }
    for v in [&mut call, &mut after, &mut total] {
        v.sort_by(f64::total_cmp);
    }
    Ok(Switches {
        call,
        after,
        total,
        early,
    })
}

/// The fast-switching `b200` profile moves to a new clock within the published ≈10–100 µs of
/// Blackwell (`docs/sources.md` §5; PowerWeave on B200, second-hand), polled
/// every 1 µs.
pub fn b200_switch_latency() -> Result<Vec<CalibrationCheck>, CalibrationError> {
    const SRC: &str = "PowerWeave on B200 (docs/sources.md §5): 10–100 µs";
    const POINTS: [u32; 6] = [345, 660, 990, 1320, 1650, 1980];
    let s = measure_switches("b200", &POINTS, 1e-6)?;
    let us = |v: &[f64], p: f64| percentile(v, p) * 1e3;
    Ok(vec![
        CalibrationCheck::new(
            "switch/b200-total-p50",
            SRC,
            55.0,
            us(&s.total, 0.5),
            "µs",
            Tolerance::Within(10.0, 100.0),
        ),
        CalibrationCheck::new(
            "switch/b200-total-p99",
            SRC,
            100.0,
            us(&s.total, 0.99),
            "µs",
            Tolerance::Within(10.0, 100.0),
        ),
        CalibrationCheck::new(
            "switch/b200-new-clock-before-call+settle",
            "property: old clock in force until then",
            0.0,
            f64::from(s.early),
            "count",
            Tolerance::Absolute(0.0),
        ),
    ])
}

/// The energy counter advances in ~10 ms steps of whole mJ (pynvml PR #18) and agrees with
/// integrated power to within 1 % (Zeus issue #12), polled every 1 ms over a mix of work and idle.
pub fn energy_counter() -> Result<Vec<CalibrationCheck>, CalibrationError> {
    let profile = GpuProfile::builtin("v100-sxm2")?;
    let work = resnet50(8)?;
    let span = SpanCost::from_layers(&profile, &work[..work.len() / 4], &[]);
    let mut gpu = SimGpu::new(profile, 0, SEED);
    let start_mj = gpu.energy_mj()?;
    let start_truth = gpu.energy_truth_j();
    let t_start = gpu.now_s();
    let mut last = start_mj;
    let mut changes = 0u32;
    let mut integrated_j = 0.0;
    let mut step = 0u64;
    while gpu.now_s() < t_start + 5.0 {
        let t0 = gpu.now_s();
        // Alternate 400 ms of back-to-back work with 100 ms of idle, polling every 1 ms.
        if (step / 400) % 5 == 4 {
            gpu.idle(1e-3)?;
        } else {
            let end = t0 + 1e-3;
            while gpu.now_s() < end {
                gpu.run_span(&span)?;
            }
        }
        step += 1;
        integrated_j += gpu.power()?.watts * (gpu.now_s() - t0);
        let now_mj = gpu.energy_mj()?;
        if now_mj != last {
            changes += 1;
            last = now_mj;
        }
    }
    let elapsed = gpu.now_s() - t_start;
    let counter_j = (last - start_mj) as f64 * 1e-3;
    let truth_j = gpu.energy_truth_j() - start_truth;
    let period_ms = 1e3 * elapsed / f64::from(changes.max(1));
    Ok(vec![
        CalibrationCheck::new(
            "counter/update-period",
            "pynvml PR #18 review (gpuopenanalytics/pynvml)",
            10.0,
            period_ms,
            "ms",
            Tolerance::Relative(0.05),
        ),
        CalibrationCheck::new(
            "counter/vs-integrated-power",
            "Zeus issue #12 (ml-energy/zeus)",
            0.0,
            100.0 * (counter_j / integrated_j - 1.0),
            "%",
            Tolerance::Absolute(1.0),
        ),
        CalibrationCheck::new(
            "counter/vs-ground-truth",
            "property: lags by < one period",
            0.0,
            100.0 * (counter_j / truth_j - 1.0),
            "%",
            Tolerance::Absolute(0.5),
        ),
    ])
}

/// Same seed, same calls: identical results; another seed: different noise.
pub fn determinism() -> Result<Vec<CalibrationCheck>, CalibrationError> {
    let run = |seed: u64| -> Result<Vec<f64>, CalibrationError> {
        let profile = GpuProfile::builtin("v100-sxm2")?;
        let span = SpanCost::from_layers(&profile, &resnet50(16)?, &[]);
        let mut gpu = SimGpu::new(profile, 0, seed);
        let mut trace = Vec::new();
        for i in 0..50u32 {
            if i % 10 == 3 {
                let f = 900 + 60 * (i % 7);
                trace.push(gpu.set_locked_clocks(f, f)?.effective_at_s);
            }
            let r = gpu.run_span(&span)?;
            trace.extend([r.end_s, r.energy_j, f64::from(r.clock_end_mhz)]);
            trace.push(gpu.energy_mj()? as f64);
            gpu.idle(0.003)?;
        }
        Ok(trace)
    };
    let a = run(SEED)?;
    let b = run(SEED)?;
    let c = run(SEED + 1)?;
    let same = a
        .iter()
        .zip(&b)
        .filter(|(x, y)| x.to_bits() != y.to_bits())
        .count()
        + a.len().abs_diff(b.len());
    let differ = a
        .iter()
        .zip(&c)
        .filter(|(x, y)| x.to_bits() != y.to_bits())
        .count();
    Ok(vec![
        CalibrationCheck::new(
            "determinism/same-seed-differences",
            "property",
            0.0,
            same as f64,
            "count",
            Tolerance::Absolute(0.0),
        ),
        CalibrationCheck::new(
            "determinism/other-seed-differs",
            "property",
            1.0,
            f64::from(u8::from(differ > 0)),
            "bool",
            Tolerance::Absolute(0.0),
        ),
    ])
}
