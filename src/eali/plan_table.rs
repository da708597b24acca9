//! Precomputed plans over log-spaced arrival-rate buckets × SLO margins, so that reacting to a
//! new rate estimate is a lookup rather than a solve (`docs/architecture.md`, "Plan table").
//!
//! Each bucket `[λ_lo, λ_hi)` is planned conservatively for every rate inside it: the fill-time
//! quantile at λ_lo (slower filling), the stability bound at λ_hi's upper confidence bound
//! `λ_hi + z·√(λ_hi/W)`, and the idle-energy cycle at the geometric middle. A margin m is served
//! by the smallest tabulated margin ≥ m.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::error::EaliError;
use super::planner::{Corrections, EntryClock, PlanRequest, PlanSet, Planner};

/// Shape of the table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableConfig {
    /// Lowest bucket edge (req/s).
    pub rate_min: f64,
    /// Highest bucket edge (req/s); `None` = the max-clock capacity.
    pub rate_max: Option<f64>,
    pub buckets: usize,
    /// Tabulated SLO margins, ascending.
    pub margins: Vec<f64>,
    /// Upper-confidence-bound parameters of the rate estimator: z and window W (s).
    pub z: f64,
    pub window_s: f64,
}

impl Default for TableConfig {
    fn default() -> Self {
        Self {
            rate_min: 1.0,
            rate_max: None,
            buckets: 32,
            margins: vec![
                -0.5, -0.4, -0.3, -0.2, -0.12, -0.06, 0.0, 0.05, 0.08, 0.12, 0.16, 0.2, 0.25, 0.3,
                0.4, 0.5,
            ],
            z: 2.0,
            window_s: 1.0,
        }
    }
}

/// Plans per (rate bucket, margin). Cells are solved on first use (or all at once with
/// [`PlanTable::fill_all`]) and dropped when the model corrections change.
#[derive(Debug, Clone)]
pub struct PlanTable {
    planner: Planner,
    config: TableConfig,
    edges: Vec<f64>,
    /// `cells[bucket * margins.len() + margin]`.
    cells: Vec<Option<Arc<PlanSet>>>,
    ln_min: f64,
    inv_ln_step: f64,
    corrections: Corrections,
}

impl PlanTable {
    /// An empty table over `planner`; cells are solved lazily.
    pub fn new(
        planner: Planner,
        config: TableConfig,
        corrections: Corrections,
    ) -> Result<Self, EaliError> {
        let rate_max = config
            .rate_max
            .unwrap_or_else(|| planner.max_clock_capacity());
        if !(config.rate_min > 0.0 && rate_max > config.rate_min && config.buckets >= 1) {
            return Err(EaliError::BadConfig(format!(
                "plan table needs 0 < rate_min < rate_max and ≥ 1 bucket (got {} .. {rate_max})",
                config.rate_min
            )));
        }
        if config.margins.is_empty()
            || config.margins.windows(2).any(|w| w[0] >= w[1])
            || config.margins.iter().any(|m| !(-1.0..1.0).contains(m))
        {
            return Err(EaliError::BadConfig(
                "margins must be ascending, in [-1, 1)".into(),
            ));
        }
        if !(config.z >= 0.0 && config.window_s > 0.0) {
            return Err(EaliError::BadConfig("z ≥ 0 and window > 0 required".into()));
        }
        let ln_min = config.rate_min.ln();
        let ln_step = (rate_max.ln() - ln_min) / config.buckets as f64;
        let edges: Vec<f64> = (0..=config.buckets)
            .map(|k| (ln_min + ln_step * k as f64).exp())
            .collect();
        let cells = vec![None; config.buckets * config.margins.len()];
        Ok(Self {
            planner,
            config,
            edges,
            cells,
            ln_min,
            inv_ln_step: 1.0 / ln_step,
            corrections,
        })
    }

    /// Solves every cell now.
    pub fn fill_all(&mut self) {
        let nm = self.config.margins.len();
        for cell in 0..self.cells.len() {
            self.cell(cell / nm, cell % nm);
        }
    }

    /// The request a cell is solved for.
    fn request(&self, bucket: usize, margin: usize) -> PlanRequest {
        let (lo, hi) = (self.edges[bucket], self.edges[bucket + 1]);
        PlanRequest {
            rate: (lo * hi).sqrt(),
            fill_rate: lo,
            rate_upper: hi + self.config.z * (hi / self.config.window_s).sqrt(),
            margin: self.config.margins[margin],
            entry: EntryClock::Preset,
            corrections: self.corrections,
            fill: Default::default(),
        }
    }

    fn cell(&mut self, bucket: usize, margin: usize) -> Arc<PlanSet> {
        let idx = bucket * self.config.margins.len() + margin;
        if let Some(set) = &self.cells[idx] {
            return Arc::clone(set);
        }
        let set = Arc::new(self.planner.plan_set(&self.request(bucket, margin)));
        self.cells[idx] = Some(Arc::clone(&set));
        set
    }

    /// Bucket index holding `rate` (clamped to the table).
    pub fn bucket(&self, rate: f64) -> usize {
        let last = self.edges.len() - 2;
        // NaN and rates below the table land in the first bucket.
        if rate.is_nan() || rate <= self.edges[0] {
            return 0;
        }
        (((rate.ln() - self.ln_min) * self.inv_ln_step) as usize).min(last)
    }

    /// Index of the smallest tabulated margin ≥ `margin` (the largest if none).
    pub fn margin_index(&self, margin: f64) -> usize {
        let m = &self.config.margins;
        m.iter()
            .position(|&x| x >= margin - 1e-12)
            .unwrap_or(m.len() - 1)
    }

    /// Plans for `rate` (req/s) and margin `margin`, solving the cell if needed.
    pub fn lookup(&mut self, rate: f64, margin: f64) -> Arc<PlanSet> {
        self.cell(self.bucket(rate), self.margin_index(margin))
    }

    /// Plans for `rate` and `margin` if that cell is solved already.
    pub fn get(&self, rate: f64, margin: f64) -> Option<&Arc<PlanSet>> {
        self.cells[self.bucket(rate) * self.config.margins.len() + self.margin_index(margin)]
            .as_ref()
    }

    /// Whether `rate` lies above the table's top edge (plans there are the top bucket's).
    pub fn above_range(&self, rate: f64) -> bool {
        rate >= *self.edges.last().unwrap_or(&f64::INFINITY)
    }

    /// New model corrections: every cell is re-solved on its next use.
    pub fn set_corrections(&mut self, corrections: Corrections) {
        if corrections != self.corrections {
            self.corrections = corrections;
            self.cells.iter_mut().for_each(|c| *c = None);
        }
    }

    pub fn planner(&self) -> &Planner {
        &self.planner
    }
    pub fn config(&self) -> &TableConfig {
        &self.config
    }
    pub fn edges(&self) -> &[f64] {
        &self.edges
    }
    pub fn margins(&self) -> &[f64] {
        &self.config.margins
    }
    pub fn corrections(&self) -> Corrections {
        self.corrections
    }
    /// Cells solved so far.
    pub fn solved_cells(&self) -> usize {
        self.cells.iter().filter(|c| c.is_some()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eali::PlannerConfig;
    use crate::eali::switch::{SwitchCost, SwitchLatency};
    use crate::eali::synthetic::SyntheticGpu;
    use crate::eali::units::single_unit;

    fn planner() -> Planner {
        let t = SyntheticGpu::default().random_table(5, 12, 0.05, 0.5);
        let (_, uc) = single_unit(&t).unwrap();
        Planner::new(
            uc,
            SwitchCost::from_latency(&SwitchLatency::zero()),
            PlannerConfig::new(0.2),
        )
        .unwrap()
    }

    #[test]
    fn buckets_are_log_spaced_and_lookup_is_conservative() {
        let p = planner();
        let cfg = TableConfig {
            buckets: 8,
            margins: vec![0.05, 0.1, 0.2],
            ..TableConfig::default()
        };
        let mut t = PlanTable::new(p.clone(), cfg, Corrections::default()).unwrap();
        assert_eq!(t.solved_cells(), 0);
        let e = t.edges().to_vec();
        assert_eq!(e.len(), 9);
        let ratio = e[1] / e[0];
        for w in e.windows(2) {
            assert!((w[1] / w[0] - ratio).abs() < 1e-9);
        }
        assert!((e[8] - p.max_clock_capacity()).abs() < 1e-6 * e[8]);
        for (k, w) in e.windows(2).enumerate() {
            assert_eq!(t.bucket((w[0] * w[1]).sqrt()), k);
        }
        assert_eq!(t.bucket(0.0), 0);
        assert_eq!(t.bucket(1e12), 7);
        assert!(t.above_range(1e12));
        assert_eq!(t.margin_index(0.07), 1);
        assert_eq!(t.margin_index(0.1), 1);
        assert_eq!(t.margin_index(0.9), 2);
        // A table plan is feasible at every rate of its bucket: solving at the bucket's worst
        // case for latency (lowest rate) keeps the tail latency within (1 − m)L.
        for w in e.windows(2) {
            let set = t.lookup((w[0] * w[1]).sqrt(), 0.1);
            assert!(t.get(w[0] * 1.0001, 0.1).is_some());
            if set.best.feasible {
                let fill_lo = p.fill_wait_s(set.best.batch, w[0]);
                assert!(fill_lo + set.best.exec_time_s <= 0.9 * 0.2 + 1e-12);
            }
        }
    }

    #[test]
    fn rejects_bad_configs() {
        let p = planner();
        let bad = TableConfig {
            margins: vec![0.2, 0.1],
            ..TableConfig::default()
        };
        assert!(PlanTable::new(p.clone(), bad, Corrections::default()).is_err());
        let bad = TableConfig {
            rate_min: 0.0,
            ..TableConfig::default()
        };
        assert!(PlanTable::new(p.clone(), bad, Corrections::default()).is_err());
    }

    #[test]
    fn corrections_invalidate_cells() {
        let mut t = PlanTable::new(
            planner(),
            TableConfig {
                buckets: 4,
                ..TableConfig::default()
            },
            Corrections::default(),
        )
        .unwrap();
        t.fill_all();
        assert_eq!(t.solved_cells(), 4 * t.margins().len());
        let before = t.lookup(5.0, 0.1);
        t.set_corrections(Corrections {
            time: 1.5,
            energy: 1.0,
        });
        assert_eq!(t.solved_cells(), 0);
        let after = t.lookup(5.0, 0.1);
        assert!(!Arc::ptr_eq(&before, &after));
        assert_eq!(after.best.corrections.time, 1.5);
        assert_eq!(before.best.corrections.time, 1.0);
    }
}
