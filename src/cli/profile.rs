//! `eali profile`: measure per-layer time and energy of a zoo model over batch sizes and graphics
//! clocks on a GPU backend, and write the profile file that `eali fit` and the cost tables read.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context as _, bail};

use crate::exec::{DeviceClock, SimDevice, SimExecutor};
use crate::gpu::sim::{GpuProfile, SimGpu};
use crate::model::{Graph, zoo};
use crate::perf::profile::Profile;
use crate::perf::profiler::{self, ClockSelection, DEFAULT_BATCHES, ProfileConfig, Progress};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// GPU backend: `sim:<profile>` is the simulated GPU with a built-in profile (v100, m40, t4,
    /// a100, h100, ...) or a profile file path.
    #[arg(long, default_value = "sim:v100")]
    pub gpu: String,
    /// Zoo model to profile (see `eali models`).
    #[arg(long)]
    pub model: String,
    /// Batch sizes, comma separated.
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_BATCHES)]
    pub batches: Vec<u32>,
    /// Graphics clocks: a count spread over the supported range (max included), or a comma
    /// separated list of MHz values (each snapped to the nearest supported clock).
    #[arg(long, default_value = "8")]
    pub clocks: String,
    /// Seed of the simulated GPU (its measurement noise and switch latencies).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Minimum device time per measurement (s); the energy counter ticks every ~10 ms.
    #[arg(long, default_value_t = 0.2)]
    pub min_measure_s: f64,
    /// Output file [default: out/profiles/<gpu>-<model>.json].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No progress on stderr.
    #[arg(long)]
    pub quiet: bool,
}

/// Opens the backend named by `spec`: `sim:<profile>`, a simulated GPU on virtual time (the
/// profiler's executor runs layers on it, the profiler reads and sets it). `nvml:<index>` needs
/// an executor that runs layers on that GPU, which does not exist yet.
pub fn open_gpu(spec: &str, seed: u64) -> anyhow::Result<SimDevice> {
    match spec.split_once(':') {
        Some(("sim", name)) => {
            let profile = GpuProfile::load(name)
                .with_context(|| format!("loading simulated GPU profile {name:?}"))?;
            Ok(SimDevice::new(
                SimGpu::new(profile, 0, seed),
                DeviceClock::Virtual,
            ))
        }
        Some(("nvml", _)) => bail!(
            "no executor runs layers on an NVML GPU yet (the executors are the simulated GPU's \
             and the CPU's); profile on the simulated GPU (--gpu sim:v100)"
        ),
        _ => bail!("unknown GPU backend {spec:?}: expected sim:<profile> (e.g. sim:v100)"),
    }
}

/// Short file-name tag of a backend spec: `sim:v100` → `v100`, `nvml:0` → `nvml0`.
pub fn gpu_tag(spec: &str) -> String {
    let tag = match spec.split_once(':') {
        Some(("sim", name)) => std::path::Path::new(name)
            .file_stem()
            .map_or_else(|| name.to_string(), |s| s.to_string_lossy().into_owned()),
        _ => spec.to_string(),
    };
    tag.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        .collect()
}

/// Default profile path for a backend and model.
pub fn default_profile_path(gpu: &str, model: &str) -> PathBuf {
    PathBuf::from("out/profiles").join(format!("{}-{model}.json", gpu_tag(gpu)))
}

pub fn parse_clocks(s: &str) -> anyhow::Result<ClockSelection> {
    if !s.contains(',')
        && let Ok(n) = s.trim().parse::<usize>()
        && n <= 64
    {
        if n == 0 {
            bail!("--clocks 0: need at least one clock");
        }
        return Ok(ClockSelection::Spread(n));
    }
    let list = s
        .split(',')
        .map(|c| c.trim().parse::<u32>())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("--clocks {s:?}: expected a count or a list of MHz values"))?;
    Ok(ClockSelection::List(list))
}

/// Profiles `graph` on a freshly opened backend, with progress on stderr unless `quiet`.
pub fn profile_model(
    gpu_spec: &str,
    graph: &Graph,
    cfg: &ProfileConfig,
    quiet: bool,
) -> anyhow::Result<Profile> {
    let gpu = open_gpu(gpu_spec, cfg.seed.unwrap_or(0))?;
    let mut exec = SimExecutor::new(gpu.clone(), std::sync::Arc::new(graph.clone()));
    let tty = std::io::stderr().is_terminal();
    let mut last_pct = usize::MAX;
    let mut report = |p: &Progress<'_>| {
        if quiet {
            return;
        }
        // Whole percent on a terminal (one rewritten line), every 10 % otherwise (logs).
        let pct = p.done * 100 / p.total.max(1);
        let step = if tty { 1 } else { 10 };
        if pct / step == last_pct / step && p.done != p.total {
            return;
        }
        last_pct = pct;
        let line = format!(
            "profiling {}: {pct:3}% ({}/{}) {} MHz, {} batch {}, device time {:.1} s",
            graph.name, p.done, p.total, p.clock_mhz, p.layer, p.batch, p.device_time_s
        );
        if tty {
            eprint!("\r\x1b[2K{line}");
            if p.done == p.total {
                eprintln!();
            }
        } else {
            eprintln!("{line}");
        }
    };
    let profile = profiler::profile(&mut gpu.clone(), &mut exec, graph, cfg, &mut report)
        .with_context(|| format!("profiling {} on {gpu_spec}", graph.name))?;
    Ok(profile)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let graph = zoo::build(&args.model)?;
    let cfg = ProfileConfig {
        batches: args.batches.clone(),
        clocks: parse_clocks(&args.clocks)?,
        min_measure_s: args.min_measure_s,
        backend: args.gpu.clone(),
        seed: Some(args.seed),
        ..ProfileConfig::default()
    };
    let wall = Instant::now();
    let profile = profile_model(&args.gpu, &graph, &cfg, args.quiet)?;
    let out = args
        .out
        .unwrap_or_else(|| default_profile_path(&args.gpu, &graph.name));
    super::files::save_profile(&profile, &out)?;
    let measured = profile.layers.iter().filter(|l| !l.is_noop()).count();
    println!(
        "{} on {} ({}): {} layers ({} measured), {} records",
        profile.model,
        profile.gpu.name,
        args.gpu,
        profile.layers.len(),
        measured,
        profile.records.len()
    );
    println!(
        "batches {:?}, clocks {:?} MHz, energy from {:?}",
        profile.batches, profile.clocks_mhz, profile.energy_source
    );
    for note in &profile.notes {
        println!("note: {note}");
    }
    println!(
        "device time {:.1} s, wall time {:.2} s -> {}",
        profile.device_time_s,
        wall.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_argument_forms() {
        assert_eq!(parse_clocks("8").unwrap(), ClockSelection::Spread(8));
        assert_eq!(
            parse_clocks("1530, 900").unwrap(),
            ClockSelection::List(vec![1530, 900])
        );
        // A single large number is a clock, not a count.
        assert_eq!(
            parse_clocks("1530").unwrap(),
            ClockSelection::List(vec![1530])
        );
        assert!(parse_clocks("0").is_err());
        assert!(parse_clocks("fast").is_err());
    }

    #[test]
    fn backend_specs() {
        assert_eq!(gpu_tag("sim:v100"), "v100");
        assert_eq!(gpu_tag("sim:profiles/gpus/t4.toml"), "t4");
        assert_eq!(gpu_tag("nvml:0"), "nvml0");
        assert_eq!(
            default_profile_path("sim:v100", "resnet50"),
            PathBuf::from("out/profiles/v100-resnet50.json")
        );
        assert!(open_gpu("sim:v100", 1).is_ok());
        assert!(open_gpu("sim:no-such-gpu", 1).is_err());
        assert!(open_gpu("cuda:0", 1).is_err());
    }
}
