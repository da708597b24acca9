//! Checks against published measurements of real GPUs: Zeus' power-limit sweep, Tang et al.'s
//! best-clock savings, the V100's idle power and the clock scaling of compute- and memory-bound
//! layers.

use super::{CalibrationCheck, CalibrationError, SEED, Tolerance, measure, resnet50};
use crate::gpu::sim::device::SimGpu;
use crate::gpu::sim::profile::GpuProfile;
use crate::gpu::sim::span::SpanCost;
use crate::gpu::{GpuBackend, LayerWork, WorkKind};

const ZEUS: &str = "Zeus NSDI'23 artifact, trace/summary_power_v100.csv";

/// Zeus' V100 ResNet-50 power-limit sweep (ImageNet, batch 128), relative to the 250 W limit.
/// The 250 W maximum limit is the V100-PCIe's, so the `v100-pcie` profile runs it, with the
/// default clock behaviour (GPU Boost under the power cap). Zeus trained; this runs the
/// inference forward pass at the same batch size, which has the same layer mix.
pub fn zeus_power_limit_sweep() -> Result<Vec<CalibrationCheck>, CalibrationError> {
    const PUBLISHED: [(f64, f64, f64); 5] = [
        (250.0, 1.00, 1.00),
        (200.0, 1.05, 0.87),
        (150.0, 1.18, 0.77),
        (125.0, 1.43, 0.79),
        (100.0, 1.89, 0.85),
    ];
    let profile = GpuProfile::builtin("v100-pcie")?;
    let span = SpanCost::from_layers(&profile, &resnet50(128)?, &[]);
    let mut gpu = SimGpu::new(profile, 0, SEED);
    let mut sweep = Vec::new();
    for limit in [250.0, 225.0, 200.0, 175.0, 150.0, 125.0, 100.0] {
        gpu.set_power_limit(limit)?;
        let (t, e) = measure(&mut gpu, &span, 40)?;
        sweep.push((limit, t, e));
        gpu.idle(1.0)?;
    }
    let (_, t_ref, e_ref) = sweep[0];
    let mut out = vec![CalibrationCheck::new(
        "zeus/avg-power@250W",
        ZEUS,
        222.0,
        e_ref / t_ref,
        "W",
        Tolerance::Relative(0.10),
    )];
    for (limit, t_pub, e_pub) in PUBLISHED.iter().skip(1) {
        let (_, t, e) = sweep
            .iter()
            .find(|(l, _, _)| l == limit)
            .copied()
            .unwrap_or((0.0, f64::NAN, f64::NAN));
        out.push(CalibrationCheck::new(
            format!("zeus/time@{limit:.0}W"),
            ZEUS,
            *t_pub,
            t / t_ref,
            "x",
            Tolerance::Relative(0.10),
        ));
        out.push(CalibrationCheck::new(
            format!("zeus/energy@{limit:.0}W"),
            ZEUS,
            *e_pub,
            e / e_ref,
            "x",
            Tolerance::Relative(0.07),
        ));
    }
    let argmin = sweep
        .iter()
        .min_by(|a, b| a.2.total_cmp(&b.2))
        .map_or(f64::NAN, |s| s.0);
    out.push(CalibrationCheck::new(
        "zeus/energy-min-limit",
        ZEUS,
        150.0,
        argmin,
        "W",
        Tolerance::Absolute(25.0),
    ));
    Ok(out)
}

const TANG: &str = "Tang et al. e-Energy'19 (arXiv 1905.11012)";

/// Tang et al.: the best core clock instead of the default saves 19.6–26.4 % of inference
/// energy. Their V100 sweep points (1530 MHz max: the SXM2 part) at mem 877, ResNet-50 at batch 32
/// (batch size: our choice), energy per batch from the counter.
pub fn tang_best_clock() -> Result<Vec<CalibrationCheck>, CalibrationError> {
    const POINTS: [u32; 7] = [607, 810, 1012, 1200, 1327, 1432, 1530];
    let profile = GpuProfile::builtin("v100-sxm2")?;
    let span = SpanCost::from_layers(&profile, &resnet50(32)?, &[]);
    let mut gpu = SimGpu::new(profile, 0, SEED);
    let (t, e) = measure(&mut gpu, &span, 100)?;
    let default_j = e / 100.0;
    let _ = t;
    let mut best_j = f64::INFINITY;
    for f in POINTS {
        let change = gpu.set_locked_clocks(f, f)?;
        gpu.advance_to(change.effective_at_s);
        let (_, e) = measure(&mut gpu, &span, 100)?;
        best_j = best_j.min(e / 100.0);
    }
    gpu.reset_locked_clocks()?;
    let saving = 100.0 * (1.0 - best_j / default_j);
    Ok(vec![CalibrationCheck::new(
        "tang/v100-best-clock-saving",
        TANG,
        23.0,
        saving,
        "%",
        Tolerance::Within(15.0, 30.0),
    )])
}

/// V100-SXM2 idles at 39.8 W at 135 MHz (`nvidia-smi -q` of a Tesla V100-SXM2-32GB, Princeton
/// Research Computing's Traverse cluster; `[src b]` of `docs/architecture.md`, "Sources").
pub fn idle_power() -> Result<Vec<CalibrationCheck>, CalibrationError> {
    const SRC: &str = "nvidia-smi -q V100-SXM2-32GB (Princeton Traverse)";
    let mut gpu = SimGpu::new(GpuProfile::builtin("v100-sxm2")?, 0, SEED);
    gpu.idle(2.0)?;
    let e0 = gpu.energy_mj()?;
    gpu.idle(10.0)?;
    let counter_w = (gpu.energy_mj()? - e0) as f64 * 1e-3 / 10.0;
    Ok(vec![
        CalibrationCheck::new(
            "idle/v100-sxm2-clock",
            SRC,
            135.0,
            f64::from(gpu.clocks()?.graphics_mhz),
            "MHz",
            Tolerance::Absolute(0.0),
        ),
        CalibrationCheck::new(
            "idle/v100-sxm2-power",
            SRC,
            39.8,
            gpu.power()?.watts,
            "W",
            Tolerance::Relative(0.03),
        ),
        CalibrationCheck::new(
            "idle/v100-sxm2-counter-power",
            SRC,
            39.8,
            counter_w,
            "W",
            Tolerance::Relative(0.03),
        ),
    ])
}

/// Slowdown of one layer at half the maximum clock on V100-SXM2: compute-bound convolutions
/// slow by about f_max/f, memory-bound layers (depthwise conv, pooling, elementwise) by < 15 %
/// (consistent with Tang et al., e-Energy'19, and Guerreiro et al., HPCA'18;
/// `docs/architecture.md`, "Time and power").
pub fn layer_clock_scaling() -> Result<Vec<CalibrationCheck>, CalibrationError> {
    const SRC: &str = "Tang et al. e-Energy'19; Guerreiro et al. HPCA'18";
    let profile = GpuProfile::builtin("v100-sxm2")?;
    let f_max = profile.max_clock_mhz();
    let f_half = profile.floor_clock_mhz(f_max / 2);
    let mut gpu = SimGpu::new(profile, 0, SEED);
    let f32b = 4.0;
    // Shapes from ResNet-50 (conv4_x 3×3, stem max pool, a BN over conv2_x) and MobileNet-v2
    // (the first depthwise 3×3), batch 32.
    let n = 32.0;
    let conv_out = 256.0 * 14.0 * 14.0;
    let cases = [
        (
            "conv3x3-256",
            LayerWork {
                kind: WorkKind::Conv,
                flops: 2.0 * 9.0 * 256.0 * conv_out * n,
                bytes: (2.0 * conv_out * n + 9.0 * 256.0 * 256.0) * f32b,
                batch: 32,
            },
        ),
        (
            "depthwise3x3-32@112",
            LayerWork {
                kind: WorkKind::DepthwiseConv,
                flops: 2.0 * 9.0 * 32.0 * 112.0 * 112.0 * n,
                bytes: (2.0 * 32.0 * 112.0 * 112.0 * n + 9.0 * 32.0) * f32b,
                batch: 32,
            },
        ),
        (
            "maxpool3x3s2-64@112",
            LayerWork {
                kind: WorkKind::Pool,
                flops: 9.0 * 64.0 * 56.0 * 56.0 * n,
                bytes: (64.0 * 112.0 * 112.0 + 64.0 * 56.0 * 56.0) * n * f32b,
                batch: 32,
            },
        ),
        (
            "batchnorm-256@56",
            LayerWork {
                kind: WorkKind::Elementwise,
                flops: 2.0 * 256.0 * 56.0 * 56.0 * n,
                bytes: 2.0 * 256.0 * 56.0 * 56.0 * n * f32b,
                batch: 32,
            },
        ),
    ];
    let mut out = Vec::new();
    for (name, work) in cases {
        let change = gpu.set_locked_clocks(f_max, f_max)?;
        gpu.advance_to(change.effective_at_s);
        let t_max = gpu.run_layer(&work, 1000)?;
        let change = gpu.set_locked_clocks(f_half, f_half)?;
        gpu.advance_to(change.effective_at_s);
        let t_half = gpu.run_layer(&work, 1000)?;
        let ratio = t_half / t_max;
        let clock_ratio = f64::from(f_max) / f64::from(f_half);
        out.push(if work.kind == WorkKind::Conv {
            CalibrationCheck::new(
                format!("dvfs/{name}-slowdown@half"),
                SRC,
                clock_ratio,
                ratio,
                "x",
                Tolerance::Relative(0.10),
            )
        } else {
            CalibrationCheck::new(
                format!("dvfs/{name}-slowdown@half"),
                SRC,
                1.0,
                ratio,
                "x",
                Tolerance::Within(1.0, 1.15),
            )
        });
    }
    gpu.reset_locked_clocks()?;
    Ok(out)
}
