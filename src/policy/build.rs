//! A served model's policy, built from what a serving process knows: the InferenceService's
//! targets, the model's *predicted* costs (the power model's cost table over the layers) and the
//! switch latency *measured* on its GPU. The bench builds its online policies through the same
//! code, from the same kind of inputs.

use std::ops::Range;

use crate::eali::EaliError;
use crate::eali::controller::{Controller, ControllerConfig};
use crate::eali::costs::LayerCostTable;
use crate::eali::switch::SwitchLatency;
use crate::eali::units::{self, UnitChain, UnitConfig, UnitCostTable};

use super::Policy;
use super::baselines::{ClipperAimd, TritonConfig, TritonMaxClock};
use super::controller::ControllerPolicy;

/// Clocks in the predicted cost tables (the planner keeps at most 24).
pub const TABLE_CLOCKS: usize = 16;
/// Batch sizes the online policies plan over (what the profiler measures by default).
pub const PLAN_BATCHES: [u32; 7] = [1, 2, 4, 8, 16, 32, 64];

/// The online policies (the bench adds its offline oracle).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyKind {
    /// (a) clocks locked at f_max, Triton dynamic batching.
    MaxClock,
    /// (b) Clipper AIMD batch size at f_max.
    Clipper,
    /// (c) no lock (default/boost clock under load, P-state idle), Triton dynamic batching.
    DefaultClock,
    /// (d) one clock per batch chosen with the batch size (EAIS-like).
    PerBatchDvfs,
    /// EALI: a clock per optimization unit.
    Eali,
}

/// Why a policy could not be built.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum PolicyError {
    #[error("{0}")]
    Eali(#[from] EaliError),
    #[error("{0}")]
    Setup(String),
}

/// Everything a model's policies are built from.
#[derive(Debug, Clone)]
pub struct ModelCosts {
    /// Layers of the model.
    pub layers: usize,
    pub max_batch: u32,
    pub f_max_mhz: u32,
    /// Whole-model time per batch size `1..=max_batch` (index `b − 1`) at f_max and at the
    /// default clock under load (s): what Triton's batcher is configured from.
    pub exec_fmax_s: Vec<f64>,
    pub exec_default_s: Vec<f64>,
    pub switch: SwitchLatency,
    /// EALI's merged unit chain and its unit cost table.
    pub eali_chain: (UnitChain, UnitCostTable),
    /// The whole model as one unit (per-batch DVFS).
    pub single_chain: (UnitChain, UnitCostTable),
}

impl ModelCosts {
    /// From a predicted per-layer table alone (a serving process): units merged for the measured
    /// switch latency, whole-model times summed from the table's layers and batch overheads.
    /// `graph` structures the units; `f_default_mhz` is the clock the GPU runs at on its own
    /// under load.
    pub fn predicted(
        graph: &crate::model::Graph,
        table: &LayerCostTable,
        max_batch: u32,
        f_max_mhz: u32,
        f_default_mhz: u32,
        switch: SwitchLatency,
    ) -> Result<Self, PolicyError> {
        if max_batch == 0 {
            return Err(PolicyError::Setup("max batch is 0".into()));
        }
        let unit_cfg = UnitConfig {
            switch_median_s: switch.total_median_s,
            ..UnitConfig::default()
        };
        let eali_chain = units::build(graph, table, &unit_cfg)?;
        let single_chain = units::single_unit(table)?;
        let times = |f: u32| {
            (1..=max_batch)
                .map(|b| table.batch_time_s(b, f))
                .collect::<Vec<f64>>()
        };
        Ok(Self {
            layers: graph.layers.len(),
            max_batch,
            f_max_mhz,
            exec_fmax_s: times(f_max_mhz),
            exec_default_s: times(f_default_mhz),
            switch,
            eali_chain,
            single_chain,
        })
    }

    /// Triton's configuration for an SLO at max clocks.
    pub fn triton(&self, slo_s: f64) -> TritonConfig {
        TritonConfig::for_slo(&self.exec_fmax_s, slo_s)
    }

    /// Max-clock capacity for an SLO: the throughput of max-clock Triton's full batches (req/s).
    pub fn capacity(&self, slo_s: f64) -> f64 {
        let b = self.triton(slo_s).max_batch;
        self.exec_fmax_s
            .get(b as usize - 1)
            .filter(|&&t| t > 0.0)
            .map_or(0.0, |t| f64::from(b) / t)
    }

    /// The unit chain a policy plans over, where it has one of its own.
    pub fn chain(&self, kind: PolicyKind) -> Option<&(UnitChain, UnitCostTable)> {
        match kind {
            PolicyKind::Eali => Some(&self.eali_chain),
            PolicyKind::PerBatchDvfs => Some(&self.single_chain),
            _ => None,
        }
    }

    /// Policy `kind` for latency SLO `slo_s`, named `name`.
    pub fn policy(
        &self,
        kind: PolicyKind,
        name: &str,
        slo_s: f64,
    ) -> Result<Box<dyn Policy + Send>, PolicyError> {
        let (layers, f_max) = (self.layers, self.f_max_mhz);
        Ok(match kind {
            PolicyKind::MaxClock => {
                Box::new(TritonMaxClock::max_clock(layers, f_max, self.triton(slo_s)))
            }
            PolicyKind::Clipper => Box::new(ClipperAimd::new(layers, f_max, self.max_batch, slo_s)),
            PolicyKind::DefaultClock => Box::new(TritonMaxClock::default_clocks(
                layers,
                TritonConfig::for_slo(&self.exec_default_s, slo_s),
            )),
            PolicyKind::PerBatchDvfs | PolicyKind::Eali => {
                let (chain, costs) = if kind == PolicyKind::Eali {
                    &self.eali_chain
                } else {
                    &self.single_chain
                };
                let mut cfg = ControllerConfig::new(slo_s);
                cfg.planner.max_batch = self.max_batch;
                // Start as if fully loaded until arrivals say otherwise: the default initial
                // estimate (1 req/s) plans the slowest clock and overloads the GPU for the first
                // ~0.3 s.
                cfg.rate.initial_rate = self.capacity(slo_s);
                let ctl = Controller::new(cfg, chain, costs.clone(), self.switch, 0.0)?;
                Box::new(ControllerPolicy::new(name, ctl, chain.ranges()?))
            }
        })
    }

    /// Names of a built policy's units: the chain's, or "model" for one unit of the whole model.
    pub fn unit_names(&self, kind: PolicyKind, units: &[Range<usize>]) -> Vec<String> {
        match self.chain(kind) {
            Some((c, _)) if c.len() == units.len() => {
                c.names().iter().map(|s| s.to_string()).collect()
            }
            _ if units.len() == 1 => vec!["model".to_string()],
            _ => Vec::new(),
        }
    }
}
