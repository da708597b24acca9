//! Features of the layer power prediction model.
//!
//! A layer's board power is static power (a function of the clock through V(f)) plus dynamic
//! power that grows with how hard the SMs and the memory are driven: roughly
//! V(f)²·f·(compute activity) + (memory traffic). The achieved FLOP/s and bytes/s of the run are
//! direct measures of that activity, so the features are built around them: the clock as f/f_max
//! and its powers (standing in for the unknown V(f)² curve), achieved throughput, their products,
//! the layer kind (one-hot, since kernel families switch differently per FLOP), and log-scaled
//! size figures (MACs, bytes, arithmetic intensity, batch) whose range spans six decades.
//!
//! Ridge gets the expanded, physics-shaped basis ([`FeatureSet::Linear`]); the tree ensembles get
//! a compact set ([`FeatureSet::Tree`]) because their fitting cost grows with the width.

use serde::{Deserialize, Serialize};

use super::profile::ProfileRecord;
use crate::gpu::WorkKind;

/// All the kinds, in one-hot order.
pub const KINDS: [WorkKind; 6] = [
    WorkKind::Conv,
    WorkKind::DepthwiseConv,
    WorkKind::Linear,
    WorkKind::Pool,
    WorkKind::Elementwise,
    WorkKind::DataMovement,
];

/// What the power model is asked about: one run of a layer at a batch size and clock, with its
/// (measured or predicted) run time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LayerFeatures {
    pub kind: WorkKind,
    /// MACs of the whole batch.
    pub macs: f64,
    /// FLOPs of the whole batch.
    pub flops: f64,
    /// Bytes read plus written for the whole batch.
    pub bytes: f64,
    pub batch: u32,
    pub clock_mhz: u32,
    pub max_clock_mhz: u32,
    /// Time of one run (s).
    pub time_s: f64,
}

impl LayerFeatures {
    pub fn from_record(r: &ProfileRecord, max_clock_mhz: u32) -> Self {
        Self {
            kind: r.kind,
            macs: r.macs,
            flops: r.flops,
            bytes: r.bytes,
            batch: r.batch,
            clock_mhz: r.clock_mhz,
            max_clock_mhz,
            time_s: r.time_s,
        }
    }

    /// Clock as a fraction of the highest supported clock.
    pub fn clock_ratio(&self) -> f64 {
        f64::from(self.clock_mhz) / f64::from(self.max_clock_mhz.max(1))
    }

    /// FLOPs per byte moved.
    pub fn intensity(&self) -> f64 {
        self.flops / self.bytes.max(1.0)
    }

    /// Achieved FLOP/s of the run.
    pub fn achieved_flops(&self) -> f64 {
        self.flops / self.time_s
    }

    /// Achieved bytes/s of the run.
    pub fn achieved_bandwidth(&self) -> f64 {
        self.bytes / self.time_s
    }

    /// Whether the features can be evaluated (positive, finite time and sizes).
    pub fn is_valid(&self) -> bool {
        self.time_s.is_finite()
            && self.time_s > 0.0
            && self.flops.is_finite()
            && self.flops >= 0.0
            && self.bytes.is_finite()
            && self.bytes >= 0.0
            && self.macs.is_finite()
            && self.macs >= 0.0
            && self.clock_mhz > 0
            && self.max_clock_mhz > 0
            && self.batch > 0
    }

    /// The feature vector of `set`.
    pub fn vector(&self, set: FeatureSet) -> Vec<f64> {
        let x = self.clock_ratio();
        // Throughput in TFLOP/s and TB/s keeps the products in a sane numeric range.
        let fl = self.achieved_flops() * 1e-12;
        let bw = self.achieved_bandwidth() * 1e-12;
        let one_hot = KINDS.map(|k| f64::from(u8::from(k == self.kind)));
        let sizes = [
            self.macs.ln_1p(),
            self.bytes.ln_1p(),
            self.intensity().ln_1p(),
            f64::from(self.batch).ln(),
        ];
        match set {
            FeatureSet::Tree => {
                let mut v = one_hot.to_vec();
                v.extend(sizes);
                v.extend([x, fl, bw, fl * x * x, bw * x]);
                v
            }
            FeatureSet::Linear => {
                let (x2, x3) = (x * x, x * x * x);
                let mut v = one_hot.to_vec();
                v.extend(sizes);
                v.extend([x, x2, x3]);
                v.extend([fl, fl * x, fl * x2, fl * x3]);
                v.extend([bw, bw * x, bw * x2, bw * x3]);
                // Per-kind activity: each kernel family switches differently per FLOP and byte.
                for k in one_hot {
                    v.extend([k * fl, k * fl * x2, k * bw * x]);
                }
                v
            }
        }
    }
}

/// Which feature vector a regressor uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureSet {
    /// Expanded polynomial/interaction basis for linear models.
    Linear,
    /// Compact set for tree ensembles.
    Tree,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LayerFeatures {
        LayerFeatures {
            kind: WorkKind::Pool,
            macs: 0.0,
            flops: 2e9,
            bytes: 1e9,
            batch: 4,
            clock_mhz: 765,
            max_clock_mhz: 1530,
            time_s: 1e-3,
        }
    }

    #[test]
    fn derived_quantities() {
        let f = sample();
        assert_eq!(f.clock_ratio(), 0.5);
        assert_eq!(f.intensity(), 2.0);
        assert_eq!(f.achieved_flops(), 2e12);
        assert_eq!(f.achieved_bandwidth(), 1e12);
        assert!(f.is_valid());
        assert!(!LayerFeatures { time_s: 0.0, ..f }.is_valid());
    }

    #[test]
    fn vectors_have_fixed_width_and_one_hot_kind() {
        let f = sample();
        let t = f.vector(FeatureSet::Tree);
        let l = f.vector(FeatureSet::Linear);
        let other = LayerFeatures {
            kind: WorkKind::Conv,
            ..f
        };
        assert_eq!(t.len(), other.vector(FeatureSet::Tree).len());
        assert_eq!(l.len(), other.vector(FeatureSet::Linear).len());
        assert_eq!(&t[..6], &[0.0, 0.0, 0.0, 1.0, 0.0, 0.0]);
        assert_eq!(&l[..6], &[0.0, 0.0, 0.0, 1.0, 0.0, 0.0]);
        assert!(t.iter().chain(&l).all(|v| v.is_finite()));
    }
}
