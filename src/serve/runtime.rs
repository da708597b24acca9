//! Turns one InferenceService into a running model: the graph and weights ([`super::source`]:
//! a zoo name, or a `model.uri` file), the simulated GPU, the executor (`--compute none|cpu`, or
//! the zero-cost executor), the predicted power model for attribution, and the scheduling policy
//! of `spec.policy`, built from the same testbed the simulator's bench uses (profile, predicted
//! cost table, unit chain, switch latency). A network outside the zoo has no simulated GPU costs:
//! it is served by the CPU executor alone (`--compute cpu`) or the zero-cost executor.

use std::path::PathBuf;
use std::sync::Arc;

use kube::ResourceExt;

use super::ServeError;
use super::model::{ModelInfo, default_io};
use super::source::{self, Locations, Source};
use super::worker::{BuiltPolicy, PolicyFactory, Timebase};
use crate::exec::{
    CpuExecutor, DeviceClock, Executor, Paired, SimDevice, SimExecutor, Weights, ZeroCost,
};
use crate::gpu::sim::SimGpu;
use crate::k8s::crd::{InferenceService, Policy as SpecPolicy};
use crate::model::Graph;
use crate::sim::baselines::{TritonConfig, TritonMaxClock};
use crate::sim::bench::policies::{self, PolicyId};
use crate::sim::bench::{Testbed, predicted_costs};
use crate::telemetry::LayerPowerModel;

/// What computes the outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Compute {
    /// Nothing: simulated runs at GPU speed; responses carry no outputs and say so.
    None,
    /// The CPU reference executor computes the real outputs (alongside the simulated GPU).
    Cpu,
}

/// Server-wide settings that shape every model.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    pub compute: Compute,
    /// GPU profile when a service names none.
    pub default_gpu: String,
    pub seed: u64,
    /// Safetensors weights for the CPU executor (else seeded weights).
    pub weights: Option<PathBuf>,
    /// No GPU at all: every batch takes no time (for measuring the serving path's overhead).
    pub zero_cost: bool,
    /// Where `model.uri` files are found locally.
    pub locations: Locations,
}

/// A model ready to hand to a worker.
pub struct Prepared {
    pub info: Arc<ModelInfo>,
    pub executor: Box<dyn Executor>,
    pub device: Option<SimDevice>,
    pub power: Option<LayerPowerModel>,
    pub policy: PolicyFactory,
}

/// A model with no GPU under it (the zero-cost or the CPU executor): Triton-style dynamic batching
/// that dispatches whatever is queued as soon as the executor is free, no clock control.
fn unclocked(
    info: Arc<ModelInfo>,
    graph: &Graph,
    executor: Box<dyn Executor>,
    max_batch: u32,
) -> Prepared {
    let layers = graph.layers.len();
    let cfg = TritonConfig {
        max_batch,
        max_queue_delay_s: 0.0,
    };
    let factory: PolicyFactory = Box::new(move || {
        Ok(BuiltPolicy {
            policy: Box::new(TritonMaxClock::max_clock(layers, 0, cfg)),
            unit_names: vec!["model".into()],
        })
    });
    Prepared {
        info,
        executor,
        device: None,
        power: None,
        policy: factory,
    }
}

fn policy_id(p: SpecPolicy) -> PolicyId {
    match p {
        SpecPolicy::Eali => PolicyId::Eali,
        SpecPolicy::MaxPerformance => PolicyId::MaxClock,
        SpecPolicy::PerBatchDvfs => PolicyId::PerBatchDvfs,
    }
}

/// What the simulated GPU's testbed is built for.
enum TestbedModel {
    Zoo(String),
    Graph(Graph),
}

/// Prepares service `isvc` as the `index`-th model of the server (its simulated GPU index).
pub fn prepare(
    isvc: &InferenceService,
    index: u32,
    opts: &RuntimeOptions,
    timebase: Timebase,
) -> Result<Prepared, ServeError> {
    let spec = &isvc.spec;
    let name = isvc.name_any();
    let slo_s = f64::from(spec.slo.latency_ms) / 1000.0;
    let percentile = spec.slo.percentile / 100.0;
    let setup = |e: String| ServeError::Model {
        name: name.clone(),
        reason: e,
    };
    let source = source::resolve(&spec.model, &opts.locations).map_err(setup)?;
    if source.weights.is_some() && opts.weights.is_some() {
        return Err(setup(
            "model.uri holds weights and --weights names others; give only one".into(),
        ));
    }
    let io = source.io.clone();
    let info = |graph: Arc<Graph>| {
        Arc::new(ModelInfo {
            io: io.clone().unwrap_or_else(|| default_io(&graph)),
            name: name.clone(),
            namespace: isvc.namespace().unwrap_or_else(|| "default".into()),
            graph,
            max_batch: spec.max_batch_size,
            slo_s,
            percentile,
        })
    };
    let Source {
        zoo: zoo_name,
        graph,
        weights,
        ..
    } = source;
    let cpu = |graph: &Arc<Graph>, weights: Option<Weights>| -> Result<CpuExecutor, ServeError> {
        let weights = match (weights, &opts.weights) {
            (Some(w), _) => w,
            (None, Some(p)) => Weights::load(graph, p).map_err(|e| setup(e.to_string()))?,
            (None, None) => Weights::seeded(graph, opts.seed),
        };
        CpuExecutor::new(graph.clone(), Arc::new(weights)).map_err(|e| setup(e.to_string()))
    };
    let model = match (zoo_name, opts.zero_cost, opts.compute) {
        (Some(z), false, _) => TestbedModel::Zoo(z),
        // No simulated GPU: the zero-cost executor, or the CPU executor alone for a network
        // outside the zoo (computed, not timed).
        (_, true, _) | (None, false, Compute::Cpu) => {
            let graph = Arc::new(graph);
            let executor: Box<dyn Executor> = if opts.zero_cost {
                Box::new(ZeroCost::with_epoch(timebase.epoch))
            } else {
                Box::new(cpu(&graph, weights)?)
            };
            return Ok(unclocked(
                info(graph.clone()),
                &graph,
                executor,
                spec.max_batch_size,
            ));
        }
        // A network outside the zoo on the simulated GPU: timed from its layers' costs like a
        // zoo model, no outputs computed.
        (None, false, Compute::None) => TestbedModel::Graph(graph),
    };
    let gpu = spec
        .gpu
        .profile
        .clone()
        .unwrap_or_else(|| opts.default_gpu.clone());
    let bed = match model {
        TestbedModel::Zoo(z) => {
            Testbed::new(&z, &gpu, spec.max_batch_size, opts.seed, &predicted_costs)
        }
        TestbedModel::Graph(g) => {
            Testbed::for_graph(g, &gpu, spec.max_batch_size, opts.seed, &predicted_costs)
        }
    }
    .map_err(|e| setup(e.to_string()))?;
    let graph = Arc::new(bed.graph.clone());
    let info = info(graph.clone());
    let device = SimDevice::new(
        SimGpu::new(
            bed.profile.clone(),
            index,
            opts.seed.wrapping_add(u64::from(index)),
        ),
        DeviceClock::Wall(timebase.epoch),
    );
    let sim = SimExecutor::new(device.clone(), graph.clone());
    let executor: Box<dyn Executor> = match opts.compute {
        Compute::None => Box::new(sim),
        Compute::Cpu => Box::new(Paired {
            device: sim,
            compute: cpu(&graph, weights)?,
        }),
    };
    let power = Some(LayerPowerModel::new(bed.predicted.clone()));
    let id = policy_id(spec.policy);
    let factory: PolicyFactory = Box::new(move || {
        let policy = policies::build(id, &bed, slo_s, &[]).map_err(|e| e.to_string())?;
        let chain = match id {
            PolicyId::Eali => Some(&bed.eali_chain.0),
            PolicyId::PerBatchDvfs => Some(&bed.single_chain.0),
            _ => None,
        };
        let unit_names = match chain {
            Some(c) if c.len() == policy.units().len() => {
                c.names().iter().map(|s| s.to_string()).collect()
            }
            _ if policy.units().len() == 1 => vec!["model".to_string()],
            _ => Vec::new(),
        };
        Ok(BuiltPolicy { policy, unit_names })
    });
    Ok(Prepared {
        info,
        executor,
        device: Some(device),
        power,
        policy: factory,
    })
}
