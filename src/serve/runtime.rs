//! Turns one InferenceService into a running model: the graph and weights ([`super::source`]:
//! a zoo name, or a `model.uri` file), the simulated GPU, the executor (`--compute none|cpu`, or
//! the zero-cost executor), the predicted power model for attribution, and the scheduling policy
//! of `spec.policy` ([`crate::policy::build`]), built from *predicted* costs only: the GPU
//! profile's layers profiled and the power model trained on them
//! ([`crate::perf::cost_table::simulated`]), or a profile measured on the GPU (`--profile`,
//! [`measured_costs`]) with its power model; units merged for the switch latency measured on
//! the GPU (`--switch-latency`) or on a spare simulated GPU of the profile. No ground truth, oracle or physics floor is computed here. A network
//! outside the zoo with `--compute cpu` is served by the CPU executor alone.

use std::path::PathBuf;
use std::sync::Arc;

use kube::ResourceExt;

use super::ServeError;
use super::device::{AgentServing, NvmlServing, NvmlServingOptions, ServingDevice, SimServing};
use super::model::{ModelInfo, default_io};
use super::source::{self, Locations, Source};
use super::worker::{BuiltPolicy, PolicyFactory, Timebase};
use crate::exec::{
    CpuExecutor, DeviceClock, Executor, Paired, SimDevice, SimExecutor, Weights, ZeroCost,
};
use crate::gpu::calibrate_switch::measure_simulated;
use crate::gpu::sim::{GpuProfile, SimGpu};
use crate::k8s::crd::{InferenceService, Policy as SpecPolicy};
use crate::model::Graph;
use crate::perf::cost_table;
use crate::perf::power_model::PowerModel;
use crate::perf::profile::Profile;
use crate::perf::profiler::spread_clocks;
use crate::policy::baselines::{TritonConfig, TritonMaxClock};
use crate::policy::build::{ModelCosts, PLAN_BATCHES, PolicyKind, TABLE_CLOCKS};
use crate::telemetry::LayerPowerModel;

/// What computes the outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Compute {
    /// Nothing: simulated runs at GPU speed; responses carry no outputs and say so.
    None,
    /// The CPU reference executor computes the real outputs (alongside the simulated GPU).
    Cpu,
}

/// The hardware a model is served on (see [`super::device`]).
#[derive(Clone)]
pub enum DeviceChoice {
    /// The simulated GPU of the service's profile, in this process.
    Sim,
    /// A local GPU through NVML.
    Nvml(NvmlServingOptions),
    /// The node agent's GPU through the control socket (a serving pod).
    Agent(Arc<crate::control::remote::RemoteClock>),
}

impl std::fmt::Debug for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sim => f.write_str("Sim"),
            Self::Nvml(o) => f.debug_tuple("Nvml").field(o).finish(),
            Self::Agent(r) => f.debug_tuple("Agent").field(&r.uuid()).finish(),
        }
    }
}

impl DeviceChoice {
    /// Whether the device is one real GPU, which a single model holds.
    pub fn is_real(&self) -> bool {
        !matches!(self, Self::Sim)
    }
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
    /// What the models are served on.
    pub device: DeviceChoice,
    /// The GPU's measured clock-switch latency, where known; else it is measured on a
    /// simulated GPU of the served profile.
    pub switch_latency: Option<crate::eali::SwitchLatency>,
    /// Profiles measured on the GPU (`eali profile`): a served model with one (of the same
    /// network) is planned from it instead of from a profiling of the simulated GPU.
    pub profiles: Vec<MeasuredProfile>,
    /// The layer power model (`eali fit`) that predicts the measured profiles' energy; without
    /// one, a power model is fitted on each measured profile at start.
    pub power_model: Option<Arc<PowerModel>>,
}

/// A profile file measured on the GPU, as loaded.
#[derive(Debug, Clone)]
pub struct MeasuredProfile {
    pub path: PathBuf,
    pub profile: Arc<Profile>,
}

/// A model ready to hand to a worker.
pub struct Prepared {
    pub info: Arc<ModelInfo>,
    pub executor: Box<dyn Executor>,
    pub device: Option<Box<dyn ServingDevice>>,
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

fn policy_kind(p: SpecPolicy) -> PolicyKind {
    match p {
        SpecPolicy::Eali => PolicyKind::Eali,
        SpecPolicy::MaxPerformance => PolicyKind::MaxClock,
        SpecPolicy::PerBatchDvfs => PolicyKind::PerBatchDvfs,
    }
}

/// The planner's batch sizes up to `max_batch`.
fn plan_batches(max_batch: u32) -> Vec<u32> {
    PLAN_BATCHES
        .iter()
        .copied()
        .filter(|&b| b <= max_batch)
        .collect()
}

/// What a served model's policies are built from on simulated GPU `profile`: its predicted
/// costs (the table the power model predicts, also kept for attribution) and the switch latency
/// measured on a spare GPU of the profile.
pub(crate) fn simulated_costs(
    graph: &Graph,
    profile: &GpuProfile,
    max_batch: u32,
    seed: u64,
    measured_switch: Option<crate::eali::SwitchLatency>,
) -> Result<(ModelCosts, crate::eali::costs::LayerCostTable), String> {
    let clocks = spread_clocks(profile.supported_clocks_mhz(), TABLE_CLOCKS);
    let batches = plan_batches(max_batch);
    let started = std::time::Instant::now();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let table = cost_table::simulated(graph, profile, &batches, &clocks, threads)
        .map_err(|e| format!("predicting costs on {}: {e}", profile.name()))?;
    let predicted_s = started.elapsed().as_secs_f64();
    let switch = measured_switch.unwrap_or_else(|| measure_simulated(profile, seed));
    let switch_s = started.elapsed().as_secs_f64() - predicted_s;
    let costs = ModelCosts::predicted(
        graph,
        &table,
        max_batch,
        profile.max_clock_mhz(),
        profile.default_clock_under_load_mhz(),
        switch,
    )
    .map_err(|e| format!("{} on {}: {e}", graph.name, profile.name()))?;
    tracing::info!(
        model = %graph.name,
        gpu = profile.name(),
        predicted_s,
        switch_s,
        units_s = started.elapsed().as_secs_f64() - predicted_s - switch_s,
        units = costs.eali_chain.0.len(),
        "policy inputs ready"
    );
    Ok((costs, table))
}

/// What a served model's policies are built from with a measured profile `m` of its network:
/// the table the power model (`power`, else one fitted on the profile now) predicts at the
/// profile's measured clocks, and the GPU's switch latency `switch`. The GPU's default clock
/// under load is taken as its highest (what boost clocks do under load).
pub(crate) fn measured_costs(
    graph: &Graph,
    m: &MeasuredProfile,
    power: Option<&PowerModel>,
    max_batch: u32,
    switch: crate::eali::SwitchLatency,
) -> Result<(ModelCosts, crate::eali::costs::LayerCostTable), String> {
    let p = &m.profile;
    let same_layers = p.layers.len() == graph.layers.len()
        && p.layers
            .iter()
            .zip(&graph.layers)
            .all(|(a, b)| a.name == b.name);
    if !same_layers {
        return Err(format!(
            "profile {} is of {} with {} layers; the served network {} has {} (profile it with `eali profile --model {}`)",
            m.path.display(),
            p.model,
            p.layers.len(),
            graph.name,
            graph.layers.len(),
            graph.name
        ));
    }
    if let Some(pm) = power
        && pm.gpu() != p.gpu.name
    {
        return Err(format!(
            "the power model is for {}, profile {} is of {}",
            pm.gpu(),
            m.path.display(),
            p.gpu.name
        ));
    }
    let batches = plan_batches(max_batch);
    let started = std::time::Instant::now();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let table = cost_table::from_profile(p, power, &batches, &p.clocks_mhz, threads)
        .map_err(|e| format!("predicting costs from profile {}: {e}", m.path.display()))?;
    let f_max = p.gpu.max_clock_mhz;
    let costs = ModelCosts::predicted(graph, &table, max_batch, f_max, f_max, switch)
        .map_err(|e| format!("{} from profile {}: {e}", graph.name, m.path.display()))?;
    tracing::info!(
        model = %graph.name,
        gpu = %p.gpu.name,
        profile = %m.path.display(),
        power_model = if power.is_some() { "given" } else { "fitted on the profile" },
        predicted_s = started.elapsed().as_secs_f64(),
        units = costs.eali_chain.0.len(),
        "policy inputs ready (measured profile)"
    );
    Ok((costs, table))
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
    match (&zoo_name, opts.zero_cost, opts.compute) {
        (Some(_), false, _) => {}
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
        (None, false, Compute::None) => {}
    }
    let gpu = spec
        .gpu
        .profile
        .clone()
        .unwrap_or_else(|| opts.default_gpu.clone());
    let profile = GpuProfile::load(&gpu).map_err(|e| setup(e.to_string()))?;
    let measured = opts.profiles.iter().find(|m| m.profile.model == graph.name);
    let planned_from = measured.map_or_else(
        || format!("the simulated {}", profile.name()),
        |m| m.path.display().to_string(),
    );
    let (costs, predicted) = match measured {
        Some(m) => {
            let switch = opts.switch_latency.unwrap_or_else(|| {
                tracing::warn!(
                    model = %name,
                    "no --switch-latency: the switch latency is measured on a simulated {}, not on the GPU the profile was measured on",
                    profile.name()
                );
                measure_simulated(&profile, opts.seed)
            });
            measured_costs(
                &graph,
                m,
                opts.power_model.as_deref(),
                spec.max_batch_size,
                switch,
            )
        }
        None => simulated_costs(
            &graph,
            &profile,
            spec.max_batch_size,
            opts.seed,
            opts.switch_latency,
        ),
    }
    .map_err(setup)?;
    let graph = Arc::new(graph);
    let info = info(graph.clone());
    let device = SimDevice::new(
        SimGpu::new(profile, index, opts.seed.wrapping_add(u64::from(index))),
        DeviceClock::Wall(timebase.epoch),
    );
    let profile_name = device.profile_name();
    let sim = SimExecutor::new(device.clone(), graph.clone());
    // On a real GPU the simulated one stays the executor's timing model and follows the plan's
    // set-calls; the real one takes them, and its counter is what is attributed.
    let model = SimServing::new(device);
    let serving: Box<dyn ServingDevice> = match &opts.device {
        DeviceChoice::Sim => Box::new(model),
        DeviceChoice::Agent(remote) => Box::new(AgentServing::new(
            remote.clone(),
            remote.uuid().to_string(),
            timebase.epoch,
            Some(model),
        )),
        DeviceChoice::Nvml(o) => Box::new(
            NvmlServing::open(o, timebase.epoch, Some(model))
                .map_err(|e| setup(format!("NVML GPU {}: {e}", o.index)))?,
        ),
    };
    if opts.device.is_real() {
        // Said plainly where it matters: the GPU's clocks and counter are real, its batches
        // are not yet (no GPU executor).
        tracing::warn!(
            model = %name,
            device = %serving.describe(),
            planned_from = %planned_from,
            "batches are timed by the simulated {} of the profile, not run on this GPU (no GPU executor yet): the GPU's clocks follow the plan, its energy counter is attributed to units that ran in the simulation",
            profile_name
        );
    }
    let executor: Box<dyn Executor> = match opts.compute {
        Compute::None => Box::new(sim),
        Compute::Cpu => Box::new(Paired {
            device: sim,
            compute: cpu(&graph, weights)?,
        }),
    };
    let power = Some(LayerPowerModel::new(predicted));
    let kind = policy_kind(spec.policy);
    let policy_name = spec.policy.as_str().to_string();
    let factory: PolicyFactory = Box::new(move || {
        let policy = costs
            .policy(kind, &policy_name, slo_s)
            .map_err(|e| e.to_string())?;
        let unit_names = costs.unit_names(kind, policy.units());
        Ok(BuiltPolicy { policy, unit_names })
    });
    Ok(Prepared {
        info,
        executor,
        device: Some(serving),
        power,
        policy: factory,
    })
}
