//! `eali serve`: the inference server (Open Inference Protocol v2 over REST and gRPC) with the
//! EALI loop, standalone from a YAML file of InferenceService objects or one model from flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;

use crate::k8s::crd::{
    GpuSelector, InferenceServiceSpec, ModelRef, PodResources, Policy, Replicas, Slo,
};
use crate::k8s::objects::{POD_NAMESPACE_ENV, SERVE_SPEC_ENV, SERVICE_ENV};
use crate::serve::device::NvmlServingOptions;
use crate::serve::fetch::{FetchOptions, fetch_models};
use crate::serve::source::Locations;
use crate::serve::{
    Compute, DeviceChoice, MeasuredProfile, RuntimeOptions, ServeConfig, ServeOptions, Server,
    shutdown_signal,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// YAML file of InferenceService objects (the CRD's schema); without it, one model from the
    /// flags below.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Zoo model to serve (without --config).
    #[arg(long, default_value = "resnet50")]
    pub model: String,
    /// Model file to serve instead of --model (without --config): an ONNX model, safetensors
    /// weights whose metadata names their network (`eali.model` = zoo name, or `eali.graph` =
    /// EALI graph JSON), or an EALI graph as JSON; `file://PATH` or a path, `pvc://CLAIM/PATH`
    /// (under --pvc-root) or `https://URL` (downloaded into --model-cache).
    #[arg(long)]
    pub uri: Option<String>,
    /// SHA-256 the file at an https:// --uri must have (without --config).
    #[arg(long)]
    pub sha256: Option<String>,
    /// Where the PersistentVolumeClaims of pvc:// uris are mounted (the controller mounts claim
    /// C at PVC_ROOT/C in serving pods).
    #[arg(long, default_value = crate::serve::source::PVC_MOUNT_ROOT)]
    pub pvc_root: PathBuf,
    /// Where https:// models are downloaded to (in a pod: the emptyDir the controller mounts).
    #[arg(long, default_value = crate::k8s::objects::MODEL_CACHE_DIR)]
    pub model_cache: PathBuf,
    /// Largest https:// model to download, in MiB.
    #[arg(long, default_value_t = crate::k8s::objects::MODEL_CACHE_LIMIT_BYTES >> 20)]
    pub model_cache_mib: u64,
    /// Served model name (without --config; default: the zoo name, or the file's stem).
    #[arg(long)]
    pub name: Option<String>,
    /// Latency SLO in milliseconds (without --config).
    #[arg(long, default_value_t = 50)]
    pub slo_ms: u32,
    /// SLO percentile, 50-99.99 (without --config).
    #[arg(long, default_value_t = 99.0)]
    pub percentile: f64,
    /// Largest batch (without --config).
    #[arg(long, default_value_t = 32)]
    pub max_batch: u32,
    /// Energy policy: eali, maxPerformance or perBatchDvfs (without --config).
    #[arg(long, default_value = "eali")]
    pub policy: String,
    /// Simulated GPU profile for services that name none (see `eali calibrate`).
    #[arg(long, default_value = "v100-sxm2")]
    pub gpu: String,
    /// REST listen address.
    #[arg(long, default_value = "0.0.0.0:8000")]
    pub http: SocketAddr,
    /// gRPC listen address ("none" to serve REST only).
    #[arg(long, default_value = "0.0.0.0:8001")]
    pub grpc: String,
    /// What computes the outputs: none (simulated GPU timing, no outputs) or cpu (real outputs
    /// from the CPU reference executor, alongside the simulated GPU).
    #[arg(long, value_enum, default_value_t = Compute::None)]
    pub compute: Compute,
    /// Safetensors weights for --compute cpu (PyTorch state_dict names); default: seeded weights.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// No GPU: every batch takes no time (measures the serving path's own overhead).
    #[arg(long)]
    pub zero_cost: bool,
    /// What the models are served on: `auto` (the node agent's GPU in a pod that was allocated
    /// one, else the simulated GPU), `sim`, `agent`, or `nvml:N` (local GPU N through NVML; its
    /// clocks are set where this process may, else it serves read-only at the GPU's clocks).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// NVML library for --device nvml (default: EALI_NVML_LIB, else the driver's).
    #[arg(long)]
    pub nvml_lib: Option<PathBuf>,
    /// Record of the clock locks --device nvml makes, reset at the next start if the process
    /// dies (default: eali-serve-clock-locks.json in $XDG_RUNTIME_DIR, else the temp directory).
    #[arg(long)]
    pub clock_record: Option<PathBuf>,
    /// The GPU's clock-switch latency as `eali gpu calibrate-switch --out FILE` measured it
    /// (JSON; on the agent's GPU, from the set-call to the clock in force through the control
    /// socket): the planner merges units too short to pay for a switch and issues set-calls
    /// that far ahead. Default: measured on a simulated GPU of the served profile.
    #[arg(long)]
    pub switch_latency: Option<PathBuf>,
    /// A profile measured on the GPU by `eali profile --out FILE` (repeat for several models):
    /// a served model of the profile's network is planned from it (time from its latency model,
    /// energy from the power model) instead of from a profiling of the simulated GPU. The way to
    /// plan for a real GPU (--device nvml or agent).
    #[arg(long = "profile", value_name = "FILE")]
    pub profiles: Vec<PathBuf>,
    /// The layer power model (`eali fit --out FILE`) of the GPU the --profile files were
    /// measured on; without it one is fitted on each profile at start.
    #[arg(long, value_name = "FILE")]
    pub power_model: Option<PathBuf>,
    /// Samples each model's queue holds before answering 429.
    #[arg(long, default_value_t = 1024)]
    pub queue_capacity: usize,
    /// Request deadline as a multiple of the SLO latency, counted from the request's receipt (a
    /// request's `timeout` parameter, in microseconds, can shorten it). A request predicted to
    /// be answered after it is refused on arrival with 503 and Retry-After (gRPC UNAVAILABLE),
    /// and none is answered late: the default 1 keeps every answer within the SLO; above 1,
    /// clients that prefer a late answer to a refusal get one.
    #[arg(long, default_value_t = 1.0)]
    pub deadline_factor: f64,
    /// Largest request body in MiB (413 beyond it).
    #[arg(long, default_value_t = 64)]
    pub max_body_mib: usize,
    /// Seconds per serving window: in a pod, each window's tail latency, load and energy
    /// estimate go to the node agent, which publishes them in the InferenceService's status.
    #[arg(long, default_value_t = 10.0, value_parser = positive_secs)]
    pub report_window_secs: f64,
    /// Seed of the simulated GPUs and of seeded weights.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Logs as JSON lines.
    #[arg(long)]
    pub log_json: bool,
}

/// The single-model configuration the flags describe.
/// A window length in seconds: finite and above zero.
pub(crate) fn positive_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("expected a number of seconds above 0, got `{s}`")),
    }
}

/// The device `--device` names.
fn device_choice(a: &Args) -> anyhow::Result<DeviceChoice> {
    use crate::control::remote::RemoteClock;
    let agent = || {
        RemoteClock::from_env().ok_or_else(|| {
            anyhow::anyhow!(
                "--device agent needs {} (set by the device plugin's Allocate in a pod that was given a GPU)",
                crate::control::client::CONTROL_SOCKET_ENV
            )
        })
    };
    Ok(match a.device.as_str() {
        "auto" => RemoteClock::from_env().map_or(DeviceChoice::Sim, DeviceChoice::Agent),
        "sim" => DeviceChoice::Sim,
        "agent" => DeviceChoice::Agent(agent()?),
        d if d == "nvml" || d.starts_with("nvml:") => {
            let index = match d.strip_prefix("nvml:") {
                Some(i) => i
                    .parse()
                    .with_context(|| format!("--device {d}: expected nvml:INDEX"))?,
                None => 0,
            };
            let record = a.clock_record.clone().unwrap_or_else(|| {
                std::env::var_os("XDG_RUNTIME_DIR")
                    .map_or_else(std::env::temp_dir, PathBuf::from)
                    .join("eali-serve-clock-locks.json")
            });
            DeviceChoice::Nvml(NvmlServingOptions {
                index,
                library: a.nvml_lib.clone(),
                record,
            })
        }
        d => anyhow::bail!("unknown --device {d} (auto, sim, agent, nvml:N)"),
    })
}

pub fn flags_config(a: &Args) -> anyhow::Result<ServeConfig> {
    let policy: Policy = serde_json::from_value(serde_json::Value::String(a.policy.clone()))
        .map_err(|_| {
            anyhow::anyhow!(
                "unknown --policy {} (eali, maxPerformance, perBatchDvfs)",
                a.policy
            )
        })?;
    let spec = InferenceServiceSpec {
        model: ModelRef {
            zoo: a.uri.is_none().then(|| a.model.clone()),
            uri: a.uri.clone(),
            format: None,
            sha256: a.sha256.clone(),
        },
        slo: Slo {
            latency_ms: a.slo_ms,
            percentile: a.percentile,
        },
        max_batch_size: a.max_batch,
        replicas: Replicas::default(),
        policy,
        gpu: GpuSelector {
            profile: Some(a.gpu.clone()),
            ..GpuSelector::default()
        },
        resources: PodResources::default(),
        image: None,
    };
    let stem = a.uri.as_deref().and_then(|u| {
        std::path::Path::new(u.rsplit("://").next().unwrap_or(u))
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
    });
    let name = a.name.clone().or(stem).unwrap_or_else(|| a.model.clone());
    Ok(ServeConfig::single(&name, spec)?)
}

/// Loads the --profile files; two of one network are refused (which would plan it?).
fn measured_profiles(paths: &[PathBuf]) -> anyhow::Result<Vec<MeasuredProfile>> {
    let mut out: Vec<MeasuredProfile> = Vec::with_capacity(paths.len());
    for path in paths {
        let profile = super::files::load_profile(path)?;
        if let Some(other) = out.iter().find(|m| m.profile.model == profile.model) {
            anyhow::bail!(
                "--profile {} and --profile {} are both of {}; give one per network",
                other.path.display(),
                path.display(),
                profile.model
            );
        }
        out.push(MeasuredProfile {
            path: path.clone(),
            profile: std::sync::Arc::new(profile),
        });
    }
    Ok(out)
}

pub fn options(a: &Args) -> anyhow::Result<ServeOptions> {
    let grpc = match a.grpc.as_str() {
        "none" | "" => None,
        s => Some(s.parse().with_context(|| format!("--grpc {s}"))?),
    };
    Ok(ServeOptions {
        http: a.http,
        grpc,
        runtime: RuntimeOptions {
            compute: a.compute,
            default_gpu: a.gpu.clone(),
            seed: a.seed,
            weights: a.weights.clone(),
            zero_cost: a.zero_cost,
            locations: Locations {
                pvc_root: a.pvc_root.clone(),
            },
            device: device_choice(a)?,
            switch_latency: a
                .switch_latency
                .as_deref()
                .map(super::files::load_switch_latency)
                .transpose()?,
            profiles: measured_profiles(&a.profiles)?,
            power_model: a
                .power_model
                .as_deref()
                .map(super::files::load_power_model)
                .transpose()?
                .map(std::sync::Arc::new),
        },
        queue_capacity: a.queue_capacity,
        deadline_factor: a.deadline_factor,
        max_body_bytes: a.max_body_mib << 20,
        report_window_s: a.report_window_secs,
    })
}

/// The service a serving pod runs: the spec the controller put in its environment (see
/// `k8s::objects`), named and namespaced as the InferenceService.
fn pod_config(spec_json: &str) -> anyhow::Result<ServeConfig> {
    let spec: InferenceServiceSpec = serde_json::from_str(spec_json)
        .with_context(|| format!("{SERVE_SPEC_ENV} is not an InferenceService spec"))?;
    let name = std::env::var(SERVICE_ENV)
        .with_context(|| format!("{SERVE_SPEC_ENV} is set but {SERVICE_ENV} is not"))?;
    let mut config = ServeConfig::single(&name, spec)?;
    if let Ok(ns) = std::env::var(POD_NAMESPACE_ENV) {
        for s in &mut config.services {
            s.metadata.namespace = Some(ns.clone());
        }
    }
    Ok(config)
}

pub fn run(a: Args) -> anyhow::Result<()> {
    crate::telemetry::init_tracing(a.log_json);
    // A file, else the pod's environment, else the flags.
    let mut config = match (&a.config, std::env::var(SERVE_SPEC_ENV)) {
        (Some(p), _) => ServeConfig::load(p)?,
        (None, Ok(json)) if a.uri.is_none() => pod_config(&json)?,
        _ => flags_config(&a)?,
    };
    let opts = options(&a)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let fetch = FetchOptions {
            dir: a.model_cache.clone(),
            limit_bytes: a.model_cache_mib << 20,
        };
        fetch_models(&mut config, &fetch).await?;
        let server = Server::bind(&config, opts).await?;
        let http = server.http_addr()?;
        let models: Vec<String> = server.state().models.keys().cloned().collect();
        match server.grpc_addr()? {
            Some(g) => tracing::info!(%http, grpc = %g, ?models, "serving"),
            None => tracing::info!(%http, ?models, "serving (REST only)"),
        }
        server.run(shutdown_signal()).await?;
        anyhow::Ok(())
    })
}
