//! The `h100-sxm` profile against the project's own H100 measurements
//! (`e2e/results/h100-2026-11-26/model-run.json`, written by `e2e/gpu-model-run.py`): whole-model
//! forward passes of ResNet-50, VGG-16 and MobileNet-v2 at batch 1, 8, 32 and 128, FP32, SM clock
//! at 1980 MHz, board power from NVML.
//!
//! The profile's work-power constants (`busy_w`, `dynamic_w_at_fmax` and the kernels'
//! `memory_activity`) are a least-squares fit of the simulated board power to the measured
//! one on part of these runs ([`fit_h100_power`]); VGG-16 and batch 8 are held out of the fit, so
//! their error says how well the fit carries over. Time constants are not fitted.

use serde::Deserialize;

use super::{CalibrationCheck, CalibrationError, SEED, Tolerance, measure};
use crate::gpu::GpuBackend;
use crate::gpu::sim::device::SimGpu;
use crate::gpu::sim::profile::GpuProfile;
use crate::gpu::sim::span::SpanCost;
use crate::model::zoo;

const SRC: &str = "e2e/results/h100-2026-11-26/model-run.json";
const RUN_JSON: &str = include_str!("../../../../e2e/results/h100-2026-11-26/model-run.json");
const PROFILE: &str = "h100-sxm";

#[derive(Debug, Deserialize)]
struct Recording {
    idle_power_w: f64,
    runs: Vec<ModelRun>,
}

/// One whole-model measurement.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ModelRun {
    pub model: String,
    pub batch: u32,
    /// Mean time of one forward pass (s).
    pub s_per_call: f64,
    /// Mean board power while the passes ran (W).
    pub mean_power_w: f64,
    pub sm_mhz_max: u32,
}

impl ModelRun {
    /// Whether the fit leaves this run out (VGG-16, and every model at batch 8).
    pub fn held_out(&self) -> bool {
        self.model == "vgg16" || self.batch == 8
    }
}

fn recording() -> Result<Recording, CalibrationError> {
    serde_json::from_str(RUN_JSON).map_err(|e| CalibrationError::Measurement(format!("{SRC}: {e}")))
}

/// The measured whole-model runs.
pub fn h100_runs() -> Result<Vec<ModelRun>, CalibrationError> {
    Ok(recording()?.runs)
}

/// The measured idle board power (W) at the idle clock.
pub fn h100_idle_power_w() -> Result<f64, CalibrationError> {
    Ok(recording()?.idle_power_w)
}

/// What the fit chose, and how far the simulated power is from the measured one with it.
#[derive(Debug, Clone, PartialEq)]
pub struct PowerFit {
    pub busy_w: f64,
    pub dynamic_w_at_fmax: f64,
    /// One `memory_activity` for every kernel kind, in [0, 1].
    pub memory_activity: f64,
    /// Whether `memory_activity` came out of range unconstrained and was held at its bound.
    pub memory_activity_at_bound: bool,
    /// Root-mean-square relative power error over the fitted runs.
    pub fit_rms: f64,
    /// The same over the held-out runs.
    pub held_out_rms: f64,
    /// Simulated over measured power of every run, in the recording's order.
    pub ratios: Vec<(ModelRun, f64)>,
}

/// Board power of one run on a profile, from its physics (W).
fn physics_power_w(profile: &GpuProfile, run: &ModelRun) -> Result<f64, CalibrationError> {
    let g = zoo::build(&run.model)?;
    let layers: Vec<_> = (0..g.layers.len())
        .map(|id| g.layer_work(id, run.batch))
        .collect();
    let phys = profile.physics();
    let parts = phys.parts_of(&layers);
    let x = phys.curve.x(f64::from(run.sm_mhz_max));
    let (t, e) = phys.curve.time_energy(&parts, x);
    Ok(e / t)
}

/// The profile with the fitted constants replaced.
fn with_power(
    base: &GpuProfile,
    busy: f64,
    dynamic: f64,
    memory_activity: f64,
) -> Result<GpuProfile, CalibrationError> {
    let mut spec = base.spec().clone();
    spec.power.busy_w = busy;
    spec.power.dynamic_w_at_fmax = dynamic;
    let k = &mut spec.kinds;
    for kind in [
        &mut k.conv,
        &mut k.depthwise_conv,
        &mut k.linear,
        &mut k.pool,
        &mut k.elementwise,
        &mut k.data_movement,
    ] {
        kind.memory_activity = memory_activity;
    }
    Ok(GpuProfile::from_spec(spec)?)
}

/// Least-squares fit (relative errors) of `busy_w`, `dynamic_w_at_fmax` and one
/// `memory_activity` for all kernel kinds of the built-in `h100-sxm` profile to the measured
/// board power of the runs that are not held out. Every other constant (the idle floor, leakage,
/// clock power, DRAM energy per byte, the time model) stays as the profile has it.
///
/// Simulated power is P₀ + busy·a + dynamic·(b + memory_activity·c), linear in (busy, dynamic,
/// dynamic·memory_activity), so one linear solve finds them; a, b and c are read off the
/// simulator itself by switching one term on at a time. A `memory_activity` outside [0, 1] is
/// held at the bound it crossed and the other two are solved again.
pub fn fit_h100_power() -> Result<PowerFit, CalibrationError> {
    let profile = GpuProfile::builtin(PROFILE)?;
    let runs = h100_runs()?;
    let zero = with_power(&profile, 0.0, 0.0, 0.0)?;
    let busy = with_power(&profile, 1.0, 0.0, 0.0)?;
    let comp = with_power(&profile, 0.0, 1.0, 0.0)?;
    let comp_mem = with_power(&profile, 0.0, 1.0, 1.0)?;
    // Per fitted run: (a, b, c) and the measured power less P₀, all relative to the measured power.
    let mut terms = Vec::new();
    for run in runs.iter().filter(|r| !r.held_out()) {
        let p0 = physics_power_w(&zero, run)?;
        let pc = physics_power_w(&comp, run)?;
        let w = run.mean_power_w;
        terms.push((
            [
                (physics_power_w(&busy, run)? - p0) / w,
                (pc - p0) / w,
                (physics_power_w(&comp_mem, run)? - pc) / w,
            ],
            (w - p0) / w,
        ));
    }
    let singular =
        || CalibrationError::Measurement("the fit's normal equations are singular".into());
    let rows: Vec<_> = terms.iter().map(|(a, y)| (a.to_vec(), *y)).collect();
    let k = least_squares(&rows).ok_or_else(singular)?;
    let mut memory_activity = if k[1] > 0.0 { k[2] / k[1] } else { f64::NAN };
    let at_bound = !(0.0..=1.0).contains(&memory_activity);
    let (busy_w, dynamic_w) = if at_bound {
        memory_activity = if memory_activity < 0.0 { 0.0 } else { 1.0 };
        let rows: Vec<_> = terms
            .iter()
            .map(|(a, y)| (vec![a[0], a[1] + memory_activity * a[2]], *y))
            .collect();
        let k = least_squares(&rows).ok_or_else(singular)?;
        (k[0], k[1])
    } else {
        (k[0], k[1])
    };
    if busy_w < 0.0 || dynamic_w <= 0.0 {
        return Err(CalibrationError::Measurement(format!(
            "the fit gave busy_w {busy_w:.1} W and dynamic_w_at_fmax {dynamic_w:.1} W: the \
             profile's other constants cannot explain {SRC}"
        )));
    }
    let fitted = with_power(&profile, busy_w, dynamic_w, memory_activity)?;
    let mut ratios = Vec::new();
    for run in &runs {
        ratios.push((
            run.clone(),
            physics_power_w(&fitted, run)? / run.mean_power_w,
        ));
    }
    let rms = |held_out: bool| {
        let sq: Vec<f64> = ratios
            .iter()
            .filter(|(r, _)| r.held_out() == held_out)
            .map(|(_, q)| (q - 1.0).powi(2))
            .collect();
        (sq.iter().sum::<f64>() / sq.len().max(1) as f64).sqrt()
    };
    Ok(PowerFit {
        busy_w,
        dynamic_w_at_fmax: dynamic_w,
        memory_activity,
        memory_activity_at_bound: at_bound,
        fit_rms: rms(false),
        held_out_rms: rms(true),
        ratios,
    })
}

/// Solves the normal equations of `rows` (each: coefficients, target) by Gaussian elimination
/// with partial pivoting; `None` when they are singular.
fn least_squares(rows: &[(Vec<f64>, f64)]) -> Option<Vec<f64>> {
    let n = rows.first()?.0.len();
    let mut m = vec![vec![0.0; n + 1]; n];
    for (a, b) in rows {
        for i in 0..n {
            for j in 0..n {
                m[i][j] += a[i] * a[j];
            }
            m[i][n] += a[i] * b;
        }
    }
    for col in 0..n {
        let pivot = (col..n).max_by(|&r, &s| m[r][col].abs().total_cmp(&m[s][col].abs()))?;
        if m[pivot][col].abs() < 1e-12 {
            return None;
        }
        m.swap(col, pivot);
        let p = m[col].clone();
        for (r, row) in m.iter_mut().enumerate() {
            if r != col {
                let f = row[col] / p[col];
                for (x, pc) in row.iter_mut().zip(&p).skip(col) {
                    *x -= f * pc;
                }
            }
        }
    }
    Some((0..n).map(|i| m[i][n] / m[i][i]).collect())
}

/// Each measured run next to the simulator's, measured the same way: clocks locked at the run's
/// SM clock, back-to-back passes for at least 2 s, power from the energy counter. Each fitted run
/// must be within 20 % and each held-out one within 30 % in board power (the fit's RMS errors,
/// pinned in `tests/calibration.rs`, are the tighter bound); times are listed with a tolerance as
/// wide as the time model's known error on this GPU (±40 %: launch-bound MobileNet-v2 at batch 8).
pub fn h100_measured_power() -> Result<Vec<CalibrationCheck>, CalibrationError> {
    let profile = GpuProfile::builtin(PROFILE)?;
    let mut out = Vec::new();
    let idle = h100_idle_power_w()?;
    let mut gpu = SimGpu::new(profile.clone(), 0, SEED);
    gpu.idle(5.0)?;
    let e0 = gpu.energy_mj()?;
    gpu.idle(10.0)?;
    out.push(CalibrationCheck::new(
        "h100/idle-power",
        SRC,
        idle,
        (gpu.energy_mj()? - e0) as f64 * 1e-3 / 10.0,
        "W",
        Tolerance::Relative(0.03),
    ));
    for run in h100_runs()? {
        let g = zoo::build(&run.model)?;
        let layers: Vec<_> = (0..g.layers.len())
            .map(|id| g.layer_work(id, run.batch))
            .collect();
        let span = SpanCost::from_layers(&profile, &layers, &[]);
        // Cool down first: the thermal model raises leakage, and each run should start alike.
        gpu.idle(120.0)?;
        let f = profile.floor_clock_mhz(run.sm_mhz_max);
        let change = gpu.set_locked_clocks(f, f)?;
        gpu.advance_to(change.effective_at_s);
        let n = (2.0 / run.s_per_call).ceil().max(1.0) as u32;
        let (t, e) = measure(&mut gpu, &span, n)?;
        let tag = if run.held_out() { "held-out" } else { "fit" };
        let name = format!("h100/{}-b{}", run.model, run.batch);
        out.push(CalibrationCheck::new(
            format!("{name}-power ({tag})"),
            SRC,
            run.mean_power_w,
            e / t,
            "W",
            Tolerance::Relative(if run.held_out() { 0.30 } else { 0.20 }),
        ));
        out.push(CalibrationCheck::new(
            format!("{name}-time"),
            SRC,
            run.s_per_call * 1e3,
            t / f64::from(n) * 1e3,
            "ms",
            Tolerance::Relative(0.40),
        ));
    }
    gpu.reset_locked_clocks()?;
    Ok(out)
}
