//! `eali gpu`: the GPUs as NVML shows them. `list` and `check` only read (inventory, clocks,
//! power and energy, idle and under an optional load command) and are safe on a shared GPU;
//! `calibrate-switch` changes clocks and refuses to run without `--allow-clock-changes`.

use std::fmt::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::gpu::calibrate_switch::{CalibrationConfig, CalibrationReport, calibrate};
use crate::gpu::clockguard::{ClockGuard, ClockResetter, LockEntry, LockRecord};
use crate::gpu::nvml::{EnergySource, NvmlGpu, NvmlResetter, NvmlSystem, OpenOptions, PowerSource};
use crate::gpu::sim::{GpuProfile, SimGpu};
use crate::gpu::{ClockState, GpuBackend, GpuError, GpuInfo, PowerLimit, ThrottleReasons};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: GpuCommand,
    /// NVML library to load [default: $EALI_NVML_LIB, else libnvidia-ml.so.1].
    #[arg(long, global = true)]
    pub nvml_lib: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
pub enum GpuCommand {
    /// List the GPUs NVML sees (read-only).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Read-only check: inventory, supported clocks, power and energy idle and under a load, the
    /// energy counter's step and its agreement with integrated power. Changes nothing.
    Check(CheckArgs),
    /// Measure clock-switch latency for the planner. CHANGES CLOCKS: only on GPUs this agent owns.
    CalibrateSwitch(CalibrateArgs),
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Check this GPU only [default: all].
    #[arg(long)]
    pub gpu: Option<u32>,
    /// Seconds of idle readings.
    #[arg(long, default_value_t = 2.0)]
    pub idle_secs: f64,
    /// Shell command that loads the GPU (e.g. a CUDA benchmark); readings are taken while it runs.
    #[arg(long)]
    pub load_cmd: Option<String>,
    /// Seconds of readings under the load (the command is stopped after).
    #[arg(long, default_value_t = 5.0)]
    pub load_secs: f64,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct CalibrateArgs {
    /// GPU index.
    #[arg(long)]
    pub gpu: u32,
    /// Required: confirms the GPU is owned by this agent and may have its clocks changed.
    #[arg(long)]
    pub allow_clock_changes: bool,
    /// Run against the simulated GPU with this profile instead of NVML.
    #[arg(long)]
    pub simulated: Option<String>,
    /// Number of clock points (every ordered pair is measured).
    #[arg(long, default_value_t = 6)]
    pub points: usize,
    /// Rounds over all pairs.
    #[arg(long, default_value_t = 3)]
    pub repeats: u32,
    /// Clock lock record [default: $EALI_CLOCK_RECORD, else /run/eali/clock-locks.json].
    #[arg(long)]
    pub record: Option<PathBuf>,
    /// Write the switch latency for the planner (JSON) here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let lib = args.nvml_lib.as_deref();
    match args.command {
        GpuCommand::List { json } => list(lib, json),
        GpuCommand::Check(c) => check(lib, &c),
        GpuCommand::CalibrateSwitch(c) => calibrate_switch(lib, &c),
    }
}

fn nvml(lib: Option<&std::path::Path>) -> anyhow::Result<&'static NvmlSystem> {
    NvmlSystem::global(lib)
        .with_context(|| format!("NVML ({})", NvmlSystem::library_path(lib).display()))
}

#[derive(Debug, Serialize)]
struct ListRow {
    #[serde(flatten)]
    info: GpuInfo,
    power_source: PowerSource,
    energy_source: EnergySource,
    health_events: bool,
}

fn list(lib: Option<&std::path::Path>, json: bool) -> anyhow::Result<()> {
    let sys = nvml(lib)?;
    let (gpus, failed) = sys.open_all(&OpenOptions::default())?;
    let rows: Vec<ListRow> = gpus
        .iter()
        .map(|g| ListRow {
            info: g.info().clone(),
            power_source: g.power_source(),
            energy_source: g.energy_source().clone(),
            health_events: g.has_health_events(),
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!("driver {} ({})", sys.driver_version(), sys.library());
        for r in &rows {
            let i = &r.info;
            println!(
                "{} {} {:<24} {:?} {:>3} GiB bus {} numa {} | power {} | energy {}",
                i.index,
                i.uuid,
                i.name,
                i.architecture,
                i.memory_bytes >> 30,
                i.pci_bus_id,
                i.numa_node.map_or("-".into(), |n| n.to_string()),
                power_source_text(r.power_source),
                energy_source_text(&r.energy_source)
            );
        }
    }
    for (i, e) in &failed {
        eprintln!("GPU {i}: {e}");
    }
    Ok(())
}

fn power_source_text(p: PowerSource) -> String {
    match p {
        PowerSource::InstantField => "instantaneous (NVML field 186)".into(),
        PowerSource::PowerUsage(s) => format!("nvmlDeviceGetPowerUsage ({s:?})"),
    }
}

fn energy_source_text(e: &EnergySource) -> String {
    match e {
        EnergySource::Counter => "energy counter".into(),
        EnergySource::IntegratedPower { reason } => format!("integrated power ({reason})"),
    }
}

/// Readings over one phase (idle or loaded).
#[derive(Debug, Clone, Serialize)]
struct Phase {
    secs: f64,
    samples: usize,
    mean_power_w: f64,
    min_power_w: f64,
    max_power_w: f64,
    /// Energy integrated from the power readings (J).
    integrated_j: f64,
    /// Energy by the counter over the same interval (J), where there is one.
    counter_j: Option<f64>,
    /// counter / integrated.
    agreement: Option<f64>,
    mean_clock_mhz: f64,
    max_temperature_c: u32,
    mean_gpu_util_pct: f64,
    power_capped_samples: usize,
}

/// How the energy counter steps, from polling it every millisecond.
#[derive(Debug, Clone, Serialize)]
struct CounterStep {
    polled_ms: u64,
    changes: usize,
    median_interval_ms: Option<f64>,
    min_step_mj: Option<u64>,
}

#[derive(Debug, Serialize)]
struct GpuCheck {
    info: GpuInfo,
    power_source: PowerSource,
    energy_source: EnergySource,
    health_events: bool,
    memory_clocks_mhz: Vec<u32>,
    graphics_clocks: usize,
    graphics_max_mhz: Option<u32>,
    graphics_min_mhz: Option<u32>,
    default_graphics_mhz: Option<u32>,
    clocks_now: ClockState,
    power_limit: Option<PowerLimit>,
    throttle: ThrottleReasons,
    counter_step: Option<CounterStep>,
    /// The counter's step measured again at the end of the load phase, while the load runs.
    load_counter_step: Option<CounterStep>,
    idle: Phase,
    load: Option<Phase>,
}

/// `g` is borrowed shared: every setter of the backend needs `&mut`, so nothing here can change
/// the GPU.
fn sample_phase(g: &NvmlGpu, secs: f64) -> anyhow::Result<Phase> {
    let counter = matches!(g.energy_source(), EnergySource::Counter);
    let e0 = if counter { Some(g.energy_mj()?) } else { None };
    let t0 = Instant::now();
    let mut last = (t0, g.power()?.watts);
    let (mut joules, mut n, mut sum_w, mut min_w, mut max_w) =
        (0.0, 1usize, last.1, last.1, last.1);
    let (mut sum_clock, mut sum_util, mut max_t, mut capped) = (0.0, 0.0, 0u32, 0usize);
    while t0.elapsed().as_secs_f64() < secs {
        std::thread::sleep(Duration::from_millis(20));
        let now = (Instant::now(), g.power()?.watts);
        joules += 0.5 * (last.1 + now.1) * (now.0 - last.0).as_secs_f64();
        last = now;
        n += 1;
        sum_w += now.1;
        min_w = min_w.min(now.1);
        max_w = max_w.max(now.1);
        sum_clock += f64::from(g.clocks()?.graphics_mhz);
        sum_util += g.utilization().map_or(0.0, |u| f64::from(u.0));
        max_t = max_t.max(g.temperature_c().unwrap_or(0));
        capped += usize::from(g.throttle_reasons()?.sw_power_cap);
    }
    let counter_j = match e0 {
        Some(e0) => Some(g.energy_mj()?.saturating_sub(e0) as f64 / 1e3),
        None => None,
    };
    let m = (n - 1).max(1) as f64;
    Ok(Phase {
        secs: t0.elapsed().as_secs_f64(),
        samples: n,
        mean_power_w: sum_w / n as f64,
        min_power_w: min_w,
        max_power_w: max_w,
        integrated_j: joules,
        agreement: counter_j.filter(|_| joules > 0.0).map(|c| c / joules),
        counter_j,
        mean_clock_mhz: sum_clock / m,
        max_temperature_c: max_t,
        mean_gpu_util_pct: sum_util / m,
        power_capped_samples: capped,
    })
}

fn measure_counter_step(g: &NvmlGpu) -> anyhow::Result<Option<CounterStep>> {
    if !matches!(g.energy_source(), EnergySource::Counter) {
        return Ok(None);
    }
    let poll = Duration::from_millis(500);
    let t0 = Instant::now();
    let mut last = g.energy_mj()?;
    let mut changes: Vec<(Instant, u64)> = Vec::new();
    while t0.elapsed() < poll {
        std::thread::sleep(Duration::from_millis(1));
        let v = g.energy_mj()?;
        if v != last {
            changes.push((Instant::now(), v - last.min(v)));
            last = v;
        }
    }
    let mut gaps: Vec<f64> = changes
        .windows(2)
        .map(|w| (w[1].0 - w[0].0).as_secs_f64() * 1e3)
        .collect();
    gaps.sort_by(f64::total_cmp);
    Ok(Some(CounterStep {
        polled_ms: poll.as_millis() as u64,
        changes: changes.len(),
        median_interval_ms: gaps.get(gaps.len() / 2).copied(),
        min_step_mj: changes.iter().map(|c| c.1).min(),
    }))
}

fn check_gpu(g: &NvmlGpu, args: &CheckArgs) -> anyhow::Result<GpuCheck> {
    let memory_clocks_mhz = g.supported_memory_clocks().unwrap_or_default();
    let graphics = memory_clocks_mhz
        .first()
        .and_then(|&m| g.supported_graphics_clocks(m).ok())
        .unwrap_or_default();
    let clocks_now = g.clocks()?;
    let throttle = g.throttle_reasons()?;
    let counter_step = measure_counter_step(g)?;
    let idle = sample_phase(g, args.idle_secs)?;
    let mut load_counter_step = None;
    let load = match &args.load_cmd {
        None => None,
        Some(cmd) => {
            // Its own process group, so that stopping it also stops whatever the shell started
            // (a `python3 -c` load outlives a killed `sh` and keeps the GPU busy otherwise).
            let mut child = Command::new("sh")
                .args(["-c", cmd])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .with_context(|| format!("start the load command `{cmd}`"))?;
            let phase = sample_phase(g, args.load_secs);
            let step = measure_counter_step(g);
            if child.try_wait()?.is_none() {
                if let Ok(pgid) = i32::try_from(child.id()) {
                    // SAFETY: kill(2) with a negative pid signals the process group we created.
                    unsafe { libc::kill(-pgid, libc::SIGKILL) };
                }
                let _ = child.kill();
            }
            let _ = child.wait();
            load_counter_step = step?;
            Some(phase?)
        }
    };
    Ok(GpuCheck {
        info: g.info().clone(),
        power_source: g.power_source(),
        energy_source: g.energy_source().clone(),
        health_events: g.has_health_events(),
        graphics_clocks: graphics.len(),
        graphics_max_mhz: graphics.first().copied(),
        graphics_min_mhz: graphics.last().copied(),
        memory_clocks_mhz,
        default_graphics_mhz: g.default_graphics_clock().ok(),
        clocks_now,
        power_limit: g.power_limit().ok(),
        throttle,
        counter_step,
        load_counter_step,
        idle,
        load,
    })
}

fn phase_text(name: &str, p: &Phase) -> String {
    let mut s = format!(
        "  {name}: {:.1} s, {} readings: power {:.1} W (min {:.1}, max {:.1}), clock {:.0} MHz, util {:.0} %, max {} °C, capped in {} readings\n",
        p.secs,
        p.samples,
        p.mean_power_w,
        p.min_power_w,
        p.max_power_w,
        p.mean_clock_mhz,
        p.mean_gpu_util_pct,
        p.max_temperature_c,
        p.power_capped_samples
    );
    match (p.counter_j, p.agreement) {
        (Some(c), Some(a)) => {
            let _ = writeln!(
                s,
                "    energy: counter {c:.2} J, integrated power {:.2} J, counter/integrated {a:.3}",
                p.integrated_j
            );
        }
        _ => {
            let _ = writeln!(
                s,
                "    energy: integrated power {:.2} J (no usable counter)",
                p.integrated_j
            );
        }
    }
    s
}

fn check_text(sys: &NvmlSystem, c: &GpuCheck) -> String {
    let i = &c.info;
    let mut s = format!(
        "GPU {} {} ({:?}, {} GiB, bus {}, NUMA {}) driver {}\n",
        i.index,
        i.name,
        i.architecture,
        i.memory_bytes >> 30,
        i.pci_bus_id,
        i.numa_node.map_or("-".into(), |n| n.to_string()),
        sys.driver_version()
    );
    let _ = writeln!(s, "  uuid {}", i.uuid);
    let _ = writeln!(
        s,
        "  clocks: memory {:?} MHz; {} graphics clocks {}–{} MHz; default under load {} MHz; now {} MHz (memory {} MHz)",
        c.memory_clocks_mhz,
        c.graphics_clocks,
        c.graphics_min_mhz.unwrap_or(0),
        c.graphics_max_mhz.unwrap_or(0),
        c.default_graphics_mhz.unwrap_or(0),
        c.clocks_now.graphics_mhz,
        c.clocks_now.memory_mhz
    );
    if let Some(l) = &c.power_limit {
        let _ = writeln!(
            s,
            "  power limit {:.0} W (default {:.0}, range {:.0}–{:.0})",
            l.current_w, l.default_w, l.min_w, l.max_w
        );
    }
    let _ = writeln!(
        s,
        "  power: {}; energy: {}; XID/ECC events: {}",
        power_source_text(c.power_source),
        energy_source_text(&c.energy_source),
        if c.health_events {
            "registered"
        } else {
            "unavailable"
        }
    );
    let _ = writeln!(s, "  throttle now: {:?}", c.throttle);
    for (when, step) in [("idle", &c.counter_step), ("load", &c.load_counter_step)] {
        if let Some(st) = step {
            let _ = writeln!(
                s,
                "  energy counter ({when}): {} changes in {} ms of 1 ms polling, median {} between changes, smallest step {} mJ",
                st.changes,
                st.polled_ms,
                st.median_interval_ms
                    .map_or("-".into(), |m| format!("{m:.1} ms")),
                st.min_step_mj.map_or("-".into(), |m| m.to_string())
            );
        }
    }
    s.push_str(&phase_text("idle", &c.idle));
    match &c.load {
        Some(p) => s.push_str(&phase_text("load", p)),
        None => s.push_str("  load: not measured (no --load-cmd)\n"),
    }
    s
}

fn check(lib: Option<&std::path::Path>, args: &CheckArgs) -> anyhow::Result<()> {
    let sys = nvml(lib)?;
    println!(
        "eali gpu check: read-only (no clock, power-limit or mode changes); NVML {}",
        sys.library()
    );
    let n = sys.device_count()?;
    let indices: Vec<u32> = match args.gpu {
        Some(i) if i < n => vec![i],
        Some(i) => bail!("no GPU {i}: NVML sees {n}"),
        None => (0..n).collect(),
    };
    let mut checks = Vec::new();
    for i in indices {
        let g = sys
            .open(i, &OpenOptions::default())
            .with_context(|| format!("open GPU {i}"))?;
        let c = check_gpu(&g, args).with_context(|| format!("check GPU {i}"))?;
        if !args.json {
            print!("{}", check_text(sys, &c));
        }
        checks.push(c);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    }
    Ok(())
}

/// Resets nothing: the simulated GPU lives only in this process.
struct NoReset;
impl ClockResetter for NoReset {
    fn reset(&self, _e: &LockEntry) -> Result<(), GpuError> {
        Ok(())
    }
    fn all_gpus(&self) -> Result<Vec<LockEntry>, GpuError> {
        Ok(Vec::new())
    }
}

fn calibrate_switch(lib: Option<&std::path::Path>, args: &CalibrateArgs) -> anyhow::Result<()> {
    if !args.allow_clock_changes {
        bail!(
            "calibrate-switch locks the GPU's clocks while it measures; run it only on a GPU this agent owns, \
             and say so with --allow-clock-changes"
        );
    }
    let report: CalibrationReport = match &args.simulated {
        Some(name) => {
            let profile = GpuProfile::load(name)?;
            let mut gpu = SimGpu::new(profile.clone(), args.gpu, 1);
            let record =
                std::env::temp_dir().join(format!("eali-sim-locks-{}.json", std::process::id()));
            let (guard, _) = ClockGuard::start(&record, Arc::new(NoReset))?;
            let cfg = CalibrationConfig::spread(
                profile.supported_clocks_mhz(),
                args.points,
                args.repeats,
            );
            let r = calibrate(&mut gpu, &guard, &cfg, &mut |g: &mut SimGpu, s| {
                let _ = g.idle(s);
            });
            let _ = std::fs::remove_file(&record);
            r?
        }
        None => {
            let sys = nvml(lib)?;
            // Anything a previous run left locked is reset before this one starts.
            let (guard, recovered) = ClockGuard::start(
                &LockRecord::path(args.record.as_deref()),
                Arc::new(NvmlResetter::new(sys)),
            )?;
            for (uuid, kind, pid) in &recovered.reset {
                eprintln!("reset {kind:?} clocks of {uuid} left by process {pid}");
            }
            guard.install_exit_hooks()?;
            let mut gpu = sys.open(args.gpu, &OpenOptions::default())?;
            let mem = gpu
                .supported_memory_clocks()?
                .first()
                .copied()
                .context("no memory clock")?;
            let cfg = CalibrationConfig::spread(
                &gpu.supported_graphics_clocks(mem)?,
                args.points,
                args.repeats,
            );
            calibrate(&mut gpu, &guard, &cfg, &mut |_, s| {
                std::thread::sleep(Duration::from_secs_f64(s))
            })?
        }
    };
    if let Some(path) = &args.out {
        std::fs::write(path, serde_json::to_vec_pretty(&report.switch_latency)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let ms = |x: f64| x * 1e3;
        println!(
            "GPU {} switch latency over {} switches ({} timed out), points {:?} MHz:",
            report.uuid,
            report.samples.len(),
            report.timeouts,
            report.config.points_mhz
        );
        for (name, s) in [
            ("call", report.call),
            ("settle", report.settle),
            ("total", report.total),
        ] {
            println!(
                "  {name:>6}: median {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                ms(s.median_s),
                ms(s.p95_s),
                ms(s.p99_s),
                ms(s.max_s)
            );
        }
        println!(
            "  planner: {}",
            serde_json::to_string(&report.switch_latency)?
        );
    }
    Ok(())
}
