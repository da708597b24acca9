//! Turns one InferenceService into a running model: the graph, the simulated GPU, the executor
//! (`--compute none|cpu`, or the zero-cost executor), the predicted power model for attribution,
//! and the scheduling policy of `spec.policy`, built from the same testbed the simulator's bench
//! uses (profile, predicted cost table, unit chain, switch latency).

use std::path::PathBuf;
use std::sync::Arc;

use kube::ResourceExt;

use super::ServeError;
use super::model::ModelInfo;
use super::worker::{BuiltPolicy, PolicyFactory, Timebase};
use crate::exec::{
    CpuExecutor, DeviceClock, Executor, Paired, SimDevice, SimExecutor, Weights, ZeroCost,
};
use crate::gpu::sim::SimGpu;
use crate::k8s::crd::{InferenceService, ModelFormat, ModelRef, Policy as SpecPolicy};
use crate::model::{Graph, zoo};
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
}

/// A model ready to hand to a worker.
pub struct Prepared {
    pub info: Arc<ModelInfo>,
    pub executor: Box<dyn Executor>,
    pub device: Option<SimDevice>,
    pub power: Option<LayerPowerModel>,
    pub policy: PolicyFactory,
}

/// The graph of a model reference: a zoo model, or an EALI graph IR JSON file (`file://`).
fn load_graph(m: &ModelRef) -> Result<Graph, String> {
    if let Some(z) = &m.zoo {
        return zoo::build(z).map_err(|e| e.to_string());
    }
    let uri = m.uri.as_deref().unwrap_or_default();
    let path = uri
        .strip_prefix("file://")
        .ok_or_else(|| format!("model.uri {uri}: only file:// is supported"))?;
    if !matches!(m.format, None | Some(ModelFormat::EaliJson)) {
        return Err(format!(
            "model.uri {uri}: only the ealiJson format is supported"
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let g: Graph =
        serde_json::from_str(&text).map_err(|e| format!("{path}: not an EALI graph: {e}"))?;
    g.validate().map_err(|e| format!("{path}: {e}"))?;
    Ok(g)
}

fn policy_id(p: SpecPolicy) -> PolicyId {
    match p {
        SpecPolicy::Eali => PolicyId::Eali,
        SpecPolicy::MaxPerformance => PolicyId::MaxClock,
        SpecPolicy::PerBatchDvfs => PolicyId::PerBatchDvfs,
    }
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
    if opts.zero_cost {
        let graph = Arc::new(load_graph(&spec.model).map_err(setup)?);
        let info = Arc::new(ModelInfo {
            name: name.clone(),
            namespace: isvc.namespace().unwrap_or_else(|| "default".into()),
            graph: graph.clone(),
            max_batch: spec.max_batch_size,
            slo_s,
            percentile,
        });
        let layers = graph.layers.len();
        let cfg = TritonConfig {
            max_batch: spec.max_batch_size,
            max_queue_delay_s: 0.0,
        };
        let factory: PolicyFactory = Box::new(move || {
            Ok(BuiltPolicy {
                policy: Box::new(TritonMaxClock::max_clock(layers, 0, cfg)),
                unit_names: vec!["model".into()],
            })
        });
        return Ok(Prepared {
            info,
            executor: Box::new(ZeroCost::new()),
            device: None,
            power: None,
            policy: factory,
        });
    }
    let zoo_name = spec.model.zoo.clone().ok_or_else(|| {
        setup("model.uri is served only with --zero-cost so far; the simulated GPU needs a model.zoo name (see `eali models`)".into())
    })?;
    let gpu = spec
        .gpu
        .profile
        .clone()
        .unwrap_or_else(|| opts.default_gpu.clone());
    let bed = Testbed::new(
        &zoo_name,
        &gpu,
        spec.max_batch_size,
        opts.seed,
        &predicted_costs,
    )
    .map_err(|e| setup(e.to_string()))?;
    let graph = Arc::new(bed.graph.clone());
    let info = Arc::new(ModelInfo {
        name: name.clone(),
        namespace: isvc.namespace().unwrap_or_else(|| "default".into()),
        graph: graph.clone(),
        max_batch: spec.max_batch_size,
        slo_s,
        percentile,
    });
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
        Compute::Cpu => {
            let weights = match &opts.weights {
                Some(p) => Weights::load(&graph, p).map_err(|e| setup(e.to_string()))?,
                None => Weights::seeded(&graph, opts.seed),
            };
            let cpu = CpuExecutor::new(graph.clone(), Arc::new(weights))
                .map_err(|e| setup(e.to_string()))?;
            Box::new(Paired {
                device: sim,
                compute: cpu,
            })
        }
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
