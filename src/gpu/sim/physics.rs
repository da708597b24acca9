//! Time and power of GPU work as pure functions of a profile and a graphics clock: the
//! simulator's hot path.
//!
//! Time follows a roofline split (`docs/architecture.md`, "Time and power"): a fixed launch
//! overhead, a memory part that does not depend on the core clock (until the clock is so low that
//! the SMs cannot keep memory busy), and a compute part scaled by f_max/f. Power is static (base +
//! leakage ∝ V²) plus clock distribution ∝ V²·f, a clock-independent "busy" term while work runs,
//! SM dynamic power ∝ V²·f·activity, and DRAM energy per byte moved. The voltage is flat at V_min
//! below a knee and rises linearly to V_max at f_max.
//!
//! Every term is linear in a handful of per-work sums ([`WorkParts`]), so the cost of a whole
//! sequence of layers at any clock is evaluated in O(1) from its summed parts: that is what makes
//! [`super::SpanCost`] exact at every clock, not an interpolation.

use std::ops::{Add, AddAssign, Mul};

use serde::{Deserialize, Serialize};

use super::profile::{ProfileSpec, is_positive};
use crate::gpu::{LayerWork, WorkKind};

/// How one kernel family uses the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KindParams {
    /// Fraction of peak FP32 FLOP/s a kernel of this kind reaches once it fills the GPU.
    pub compute_eff: f64,
    /// Fraction of peak memory bandwidth a large kernel of this kind reaches.
    pub memory_eff: f64,
    /// SM switching activity (0..1) while computing, relative to a dense GEMM.
    pub compute_activity: f64,
    /// SM switching activity while waiting on memory.
    pub memory_activity: f64,
    /// A kernel whose filled duration is this long reaches half its filled efficiency: shorter
    /// kernels under-fill the SMs (too few blocks, ramp-up and tail) (s).
    pub fill_half_s: f64,
}

/// Per-work sums that determine time and energy at every clock. They add up over layers and
/// scale with repetitions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkParts {
    /// Launch overhead (s), independent of the clock.
    pub fixed_s: f64,
    /// Memory part (s) at clocks above the issue floor.
    pub mem_s: f64,
    /// Compute part (s) at f_max; scales as f_max/f.
    pub comp_s: f64,
    /// Activity-weighted busy SM time at f_max (s): dynamic energy = P_dyn·(V/V_max)²·this.
    pub dyn_comp_s: f64,
    /// Activity-weighted memory-phase time (s): dynamic energy ∝ V²·f·this.
    pub dyn_mem_s: f64,
    /// DRAM energy (J).
    pub mem_j: f64,
}

impl Add for WorkParts {
    type Output = Self;
    fn add(self, o: Self) -> Self {
        Self {
            fixed_s: self.fixed_s + o.fixed_s,
            mem_s: self.mem_s + o.mem_s,
            comp_s: self.comp_s + o.comp_s,
            dyn_comp_s: self.dyn_comp_s + o.dyn_comp_s,
            dyn_mem_s: self.dyn_mem_s + o.dyn_mem_s,
            mem_j: self.mem_j + o.mem_j,
        }
    }
}

impl AddAssign for WorkParts {
    fn add_assign(&mut self, o: Self) {
        *self = *self + o;
    }
}

impl Mul<f64> for WorkParts {
    type Output = Self;
    fn mul(self, k: f64) -> Self {
        Self {
            fixed_s: self.fixed_s * k,
            mem_s: self.mem_s * k,
            comp_s: self.comp_s * k,
            dyn_comp_s: self.dyn_comp_s * k,
            dyn_mem_s: self.dyn_mem_s * k,
            mem_j: self.mem_j * k,
        }
    }
}

/// The clock-dependent constants: everything needed to turn [`WorkParts`] into time and energy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PowerCurve {
    pub f_max_mhz: f64,
    /// V_min / V_max.
    pub v_min_ratio: f64,
    /// Knee as a fraction of f_max.
    pub knee_x: f64,
    /// Memory issue floor as a fraction of f_max.
    pub issue_floor_x: f64,
    /// Base board power (W): the idle floor less leakage and clock power at the idle clock.
    pub base_w: f64,
    pub leakage_w: f64,
    pub clock_tree_w: f64,
    pub busy_w: f64,
    pub dynamic_w: f64,
}

impl PowerCurve {
    /// V(f)/V_max for a clock given as a fraction of f_max.
    #[inline]
    pub fn v_ratio(&self, x: f64) -> f64 {
        if x <= self.knee_x {
            self.v_min_ratio
        } else {
            self.v_min_ratio + (1.0 - self.v_min_ratio) * (x - self.knee_x) / (1.0 - self.knee_x)
        }
    }

    #[inline]
    pub fn x(&self, f_mhz: f64) -> f64 {
        f_mhz / self.f_max_mhz
    }

    /// Board power of an idle GPU whose clock is held at `x`·f_max.
    #[inline]
    pub fn idle_w(&self, x: f64) -> f64 {
        let v2 = self.v_ratio(x).powi(2);
        self.base_w + self.leakage_w * v2 + self.clock_tree_w * v2 * x
    }

    #[inline]
    pub fn time_s(&self, p: &WorkParts, x: f64) -> f64 {
        let mf = (self.issue_floor_x / x).max(1.0);
        p.fixed_s + p.mem_s * mf + p.comp_s / x
    }

    /// Time and energy of the work at `x`·f_max, in one pass.
    #[inline]
    pub fn time_energy(&self, p: &WorkParts, x: f64) -> (f64, f64) {
        let v2 = self.v_ratio(x).powi(2);
        let mf = (self.issue_floor_x / x).max(1.0);
        let t = p.fixed_s + p.mem_s * mf + p.comp_s / x;
        let p_static = self.base_w + self.leakage_w * v2 + self.clock_tree_w * v2 * x + self.busy_w;
        let e =
            p_static * t + self.dynamic_w * v2 * (p.dyn_comp_s + x * mf * p.dyn_mem_s) + p.mem_j;
        (t, e)
    }
}

/// All physics constants of a profile, precomputed for speed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Physics {
    pub curve: PowerCurve,
    pub peak_flops: f64,
    pub bandwidth_bps: f64,
    pub launch_s: f64,
    pub mem_j_per_byte: f64,
    /// Indexed by [`kind_index`].
    pub kinds: [KindParams; 6],
    pub idle_floor_w: f64,
}

#[inline]
pub fn kind_index(kind: WorkKind) -> usize {
    match kind {
        WorkKind::Conv => 0,
        WorkKind::DepthwiseConv => 1,
        WorkKind::Linear => 2,
        WorkKind::Pool => 3,
        WorkKind::Elementwise => 4,
        WorkKind::DataMovement => 5,
    }
}

impl Physics {
    pub(crate) fn from_spec(s: &ProfileSpec) -> Result<Self, String> {
        let f_max = f64::from(s.clocks.max_mhz);
        let v = &s.voltage;
        if !(v.v_min > 0.0 && v.v_min <= v.v_max) {
            return Err("voltage: need 0 < v_min ≤ v_max".into());
        }
        let knee_x = v.knee_mhz / f_max;
        if !(0.0..1.0).contains(&knee_x) {
            return Err("voltage.knee_mhz must lie below max_mhz".into());
        }
        let p = &s.power;
        let perf = &s.perf;
        for (what, val) in [
            ("perf.peak_fp32_flops", perf.peak_fp32_flops),
            ("perf.memory_bandwidth_bps", perf.memory_bandwidth_bps),
        ] {
            if !is_positive(val) {
                return Err(format!("{what} must be positive"));
            }
        }
        for (what, val) in [
            ("power.leakage_w_at_vmax", p.leakage_w_at_vmax),
            ("power.clock_tree_w_at_fmax", p.clock_tree_w_at_fmax),
            ("power.busy_w", p.busy_w),
            ("power.dynamic_w_at_fmax", p.dynamic_w_at_fmax),
            ("power.memory_w_at_peak_bw", p.memory_w_at_peak_bw),
            ("perf.launch_overhead_s", perf.launch_overhead_s),
            ("perf.memory_issue_floor", perf.memory_issue_floor),
        ] {
            if val.is_nan() || val < 0.0 {
                return Err(format!("{what} must be ≥ 0"));
            }
        }
        let k = &s.kinds;
        let kinds = [
            k.conv,
            k.depthwise_conv,
            k.linear,
            k.pool,
            k.elementwise,
            k.data_movement,
        ];
        for kp in &kinds {
            let ok = kp.compute_eff > 0.0
                && kp.compute_eff <= 1.0
                && kp.memory_eff > 0.0
                && kp.memory_eff <= 1.0
                && (0.0..=1.0).contains(&kp.compute_activity)
                && (0.0..=1.0).contains(&kp.memory_activity)
                && kp.fill_half_s >= 0.0;
            if !ok {
                return Err(format!("kind parameters out of range: {kp:?}"));
            }
        }
        let mut curve = PowerCurve {
            f_max_mhz: f_max,
            v_min_ratio: v.v_min / v.v_max,
            knee_x,
            issue_floor_x: perf.memory_issue_floor,
            base_w: 0.0,
            leakage_w: p.leakage_w_at_vmax,
            clock_tree_w: p.clock_tree_w_at_fmax,
            busy_w: p.busy_w,
            dynamic_w: p.dynamic_w_at_fmax,
        };
        // The idle floor is measured; the base is what is left of it once leakage and clock
        // power at the idle clock are accounted for.
        let idle_at_zero_base = curve.idle_w(f64::from(s.clocks.idle_mhz) / f_max);
        curve.base_w = p.idle_floor_w - idle_at_zero_base;
        if curve.base_w < 0.0 {
            return Err(format!(
                "leakage and clock power at the idle clock ({idle_at_zero_base:.1} W) exceed the idle floor"
            ));
        }
        Ok(Self {
            curve,
            peak_flops: perf.peak_fp32_flops,
            bandwidth_bps: perf.memory_bandwidth_bps,
            launch_s: perf.launch_overhead_s,
            mem_j_per_byte: p.memory_w_at_peak_bw / perf.memory_bandwidth_bps,
            kinds,
            idle_floor_w: p.idle_floor_w,
        })
    }

    /// Decomposes one execution of a layer into its [`WorkParts`].
    pub fn parts(&self, w: &LayerWork) -> WorkParts {
        let k = &self.kinds[kind_index(w.kind)];
        let flops = w.flops.max(0.0);
        let bytes = w.bytes.max(0.0);
        // Ideal durations of a kernel that fills the GPU; small kernels (small batches, late
        // layers) under-fill it, so efficiency rises with the work per kernel, hence with the
        // batch size. The fill stretches the kernel but not its switching energy.
        let comp_ideal = flops / (self.peak_flops * k.compute_eff);
        let mem_ideal = bytes / (self.bandwidth_bps * k.memory_eff);
        let ideal = comp_ideal.max(mem_ideal);
        let stretch = if ideal > 0.0 {
            (ideal + k.fill_half_s) / ideal
        } else {
            1.0
        };
        let (comp_s, dyn_comp_s) = (comp_ideal * stretch, comp_ideal * k.compute_activity);
        let (mem_s, dyn_mem_s) = (mem_ideal * stretch, mem_ideal * k.memory_activity);
        WorkParts {
            fixed_s: self.launch_s,
            mem_s,
            comp_s,
            dyn_comp_s,
            dyn_mem_s,
            mem_j: bytes * self.mem_j_per_byte,
        }
    }

    /// Sum of the parts of a sequence of layers.
    pub fn parts_of(&self, layers: &[LayerWork]) -> WorkParts {
        layers
            .iter()
            .fold(WorkParts::default(), |acc, w| acc + self.parts(w))
    }

    /// Time of one execution of the layer at `f_mhz` (s).
    pub fn layer_time_s(&self, w: &LayerWork, f_mhz: f64) -> f64 {
        self.curve.time_s(&self.parts(w), self.curve.x(f_mhz))
    }

    /// Average board power while the layer runs at `f_mhz` (W).
    pub fn layer_power_w(&self, w: &LayerWork, f_mhz: f64) -> f64 {
        let (t, e) = self.curve.time_energy(&self.parts(w), self.curve.x(f_mhz));
        e / t
    }

    /// Board energy of one execution of the layer at `f_mhz` (J).
    pub fn layer_energy_j(&self, w: &LayerWork, f_mhz: f64) -> f64 {
        self.curve
            .time_energy(&self.parts(w), self.curve.x(f_mhz))
            .1
    }

    /// Power of an idle GPU whose clock is held (locked) at `f_mhz` (W).
    pub fn idle_power_w(&self, f_mhz: f64) -> f64 {
        self.curve.idle_w(self.curve.x(f_mhz))
    }

    /// Voltage ratio V(f)/V_max.
    pub fn voltage_ratio(&self, f_mhz: f64) -> f64 {
        self.curve.v_ratio(self.curve.x(f_mhz))
    }
}
