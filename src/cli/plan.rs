//! `eali plan`: explains the decision for one model, GPU, SLO and arrival rate: the optimization
//! units, the batch size and clock per unit, the set-call timeline, the predicted latency and
//! energy per request, and what per-batch DVFS (one unit) and max clocks would cost instead.
//!
//! Costs come from [`cost_source`]: the model's profile on the GPU (measured on the fly on the
//! simulated GPU and cached under out/profiles/ when missing), a layer power model (out/
//! power-model.json when it matches the GPU, else one fitted on this profile and cached), and
//! `perf::cost_table` to predict every layer over batch sizes × clocks. The switch latency is
//! measured on the GPU backend, as the agent does at start-up.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use serde::Serialize;

use super::profile::{default_profile_path, gpu_tag, open_gpu, profile_model};
use crate::eali::costs::LayerCostTable;
use crate::eali::switch::{SwitchCost, SwitchLatency};
use crate::eali::units::{self, UnitChain, UnitConfig, UnitCostTable};
use crate::eali::{Plan, PlanRequest, Planner, PlannerConfig, Solver};
use crate::gpu::GpuBackend;
use crate::gpu::calibrate_switch::measure_two_points;
use crate::model::{Graph, zoo};
use crate::perf::cost_table::build_cost_table;
use crate::perf::fit::{FitConfig, fit_power_model};
use crate::perf::power_model::PowerModel;
use crate::perf::profile::Profile;
use crate::perf::profiler::{ProfileConfig, spread_clocks};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SolverArg {
    /// Lagrangian fast path, DP repair where the duality gap is wide.
    Fast,
    /// DP on every batch size that could win.
    Exact,
}

/// How much execution time each clock change reserves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReserveArg {
    /// The p95 of the total switch latency (conservative; docs/architecture.md, "Chain DP and Lagrangian fast path").
    P95,
    /// Only the jitter p95 − median: changes are issued ahead by the median latency.
    Jitter,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Zoo model (see `eali models`).
    #[arg(long)]
    pub model: String,
    /// GPU backend: `sim:<profile>` (v100, m40, t4, a100, h100, ... or a profile file).
    #[arg(long, default_value = "sim:v100")]
    pub gpu: String,
    /// Latency SLO (ms) at `--percentile`.
    #[arg(long)]
    pub slo_ms: f64,
    /// Arrival rate (requests/s).
    #[arg(long)]
    pub rate: f64,
    /// SLO percentile (e.g. 99 for p99).
    #[arg(long, default_value_t = 99.0)]
    pub percentile: f64,
    #[arg(long, default_value_t = 64)]
    pub max_batch: u32,
    /// SLO safety margin m: plans target (1 − m)·SLO.
    #[arg(long, default_value_t = 0.1)]
    pub margin: f64,
    /// Upper bound on the rate for the stability check [default: rate + 2·√rate].
    #[arg(long)]
    pub rate_upper: Option<f64>,
    /// A unit must run k switch latencies at f_max to keep its own clock.
    #[arg(long, default_value_t = 10.0)]
    pub k: f64,
    #[arg(long, default_value_t = 16)]
    pub max_units: usize,
    /// Graphics clocks to plan over, spread over the GPU's supported range.
    #[arg(long, default_value_t = 16)]
    pub clocks: usize,
    /// Profile file [default: out/profiles/<gpu>-<model>.json, measured if missing].
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// Power model file [default: out/power-model.json if it is for this GPU, else fitted].
    #[arg(long)]
    pub power_model: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "fast")]
    pub solver: SolverArg,
    /// Execution time reserved per clock change.
    #[arg(long, value_enum, default_value = "p95")]
    pub switch_reserve: ReserveArg,
    /// Switch latency measured by `eali gpu calibrate-switch --out FILE` (JSON); without it the
    /// latency is measured on the simulated GPU.
    #[arg(long)]
    pub switch_latency: Option<PathBuf>,
    /// Seed of the simulated GPU (profiling and switch measurement).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the decision as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Where the plan's numbers come from.
pub struct CostSource {
    pub table: LayerCostTable,
    pub switch: SwitchLatency,
    /// What was loaded, measured or fitted (printed with the plan).
    pub notes: Vec<String>,
}

/// Predicted per-layer costs and the measured switch latency for `graph` on `args.gpu`.
pub fn cost_source(args: &Args, graph: &Graph) -> anyhow::Result<CostSource> {
    let mut notes = Vec::new();
    let profile = load_or_profile(args, graph, &mut notes)?;
    let power = load_or_fit_power(args, &profile, &mut notes)?;

    let mut gpu = open_gpu(&args.gpu, args.seed)?;
    let memory = gpu
        .supported_memory_clocks()?
        .into_iter()
        .max()
        .unwrap_or(0);
    let clocks = spread_clocks(&gpu.supported_graphics_clocks(memory)?, args.clocks.max(1));
    let batches: Vec<u32> = (1..=args.max_batch.max(1)).collect();
    let table = build_cost_table(&profile, &power, &batches, &clocks)
        .context("predicting the layer cost table")?;
    let (switch, origin) = match &args.switch_latency {
        Some(path) => (
            super::files::load_switch_latency(path)?,
            format!("read from {}", path.display()),
        ),
        None => (
            measure_two_points(&mut gpu, 25, &mut |g, s| {
                // Waiting is idling; a failure shows in the next clock reading.
                let _ = g.idle(s);
            })
            .context("measuring the clock-switch latency")?,
            format!("measured on {} (50 changes)", args.gpu),
        ),
    };
    notes.push(format!(
        "switch latency {origin}: call p50 {:.1} ms, total p50 {:.1} ms, p95 {:.1} ms",
        switch.call_median_s * 1e3,
        switch.total_median_s * 1e3,
        switch.total_p95_s * 1e3
    ));
    Ok(CostSource {
        table,
        switch,
        notes,
    })
}

fn load_or_profile(args: &Args, graph: &Graph, notes: &mut Vec<String>) -> anyhow::Result<Profile> {
    let path = args
        .profile
        .clone()
        .unwrap_or_else(|| default_profile_path(&args.gpu, &graph.name));
    if path.exists() {
        let p = super::files::load_profile(&path)?;
        if p.model != graph.name {
            bail!(
                "profile {} is of {}, not {}",
                path.display(),
                p.model,
                graph.name
            );
        }
        notes.push(format!(
            "profile {} ({} records)",
            path.display(),
            p.records.len()
        ));
        return Ok(p);
    }
    if args.profile.is_some() {
        bail!("profile {} does not exist", path.display());
    }
    eprintln!(
        "no profile at {}: profiling {} on {} now",
        path.display(),
        graph.name,
        args.gpu
    );
    let cfg = ProfileConfig {
        backend: args.gpu.clone(),
        seed: Some(args.seed),
        ..ProfileConfig::default()
    };
    let p = profile_model(&args.gpu, graph, &cfg, false)?;
    super::files::save_profile(&p, &path)?;
    eprintln!("profile cached at {}", path.display());
    notes.push(format!(
        "profile measured now and cached at {}",
        path.display()
    ));
    Ok(p)
}

fn load_or_fit_power(
    args: &Args,
    profile: &Profile,
    notes: &mut Vec<String>,
) -> anyhow::Result<PowerModel> {
    let shared = PathBuf::from("out/power-model.json");
    let cached = PathBuf::from("out/power-models").join(format!(
        "{}-{}.json",
        gpu_tag(&args.gpu),
        profile.model
    ));
    let candidates: Vec<PathBuf> = match &args.power_model {
        Some(p) => vec![p.clone()],
        None => vec![shared, cached.clone()],
    };
    for path in &candidates {
        if !path.exists() {
            continue;
        }
        let m = super::files::load_power_model(path)?;
        if m.gpu() == profile.gpu.name {
            notes.push(format!("power model {} ({:?})", path.display(), m.kind()));
            return Ok(m);
        }
        if args.power_model.is_some() {
            bail!(
                "power model {} is for {}, the profile is of {}",
                path.display(),
                m.gpu(),
                profile.gpu.name
            );
        }
    }
    eprintln!(
        "no power model for {}: fitting one on this profile",
        profile.gpu.name
    );
    let cfg = FitConfig {
        folds: 5,
        leave_one_model_out: false,
        ..FitConfig::default()
    };
    let (model, report) =
        fit_power_model(std::slice::from_ref(profile), &cfg).context("fitting the power model")?;
    super::files::save_power_model(&model, &cached)?;
    eprintln!(
        "power model ({:?}) cached at {}",
        model.kind(),
        cached.display()
    );
    let _ = report;
    notes.push(format!(
        "power model fitted now ({:?}) and cached at {}",
        model.kind(),
        cached.display()
    ));
    Ok(model)
}

/// One policy's answer for the comparison.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyRow {
    pub policy: &'static str,
    pub plan: Plan,
}

/// Everything `eali plan` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub model: String,
    pub gpu: String,
    pub slo_s: f64,
    pub percentile: f64,
    pub rate: f64,
    pub rate_upper: f64,
    pub margin: f64,
    pub switch: SwitchLatency,
    pub structural_units: usize,
    pub k: f64,
    pub max_units: usize,
    pub units: UnitChain,
    pub unit_costs_note: String,
    pub eali: Plan,
    pub per_batch_dvfs: Plan,
    pub max_clock: Plan,
    pub notes: Vec<String>,
}

/// Plans the case with EALI, per-batch DVFS and max clocks over the same costs.
pub fn explain(
    args: &Args,
    graph: &Graph,
    source: CostSource,
) -> anyhow::Result<(Explanation, UnitCostTable)> {
    if !(args.slo_ms > 0.0 && args.rate > 0.0 && args.percentile > 0.0 && args.percentile < 100.0) {
        bail!("need --slo-ms > 0, --rate > 0 and 0 < --percentile < 100");
    }
    let structural = units::structural_chain(graph)?.len();
    let ucfg = UnitConfig {
        k: args.k,
        switch_median_s: source.switch.total_median_s,
        max_units: args.max_units,
        ..UnitConfig::default()
    };
    let (chain, ucosts) = units::build(graph, &source.table, &ucfg)?;
    let (_, single) = units::single_unit(&source.table)?;
    let fmax = *source
        .table
        .clocks_mhz
        .last()
        .context("cost table has no clocks")?;
    let maxclock = single.restrict_clocks(&[fmax]);

    let slo_s = args.slo_ms * 1e-3;
    let cfg = PlannerConfig {
        percentile: args.percentile / 100.0,
        max_batch: args.max_batch,
        solver: match args.solver {
            SolverArg::Fast => Solver::Fast,
            SolverArg::Exact => Solver::Exact,
        },
        ..PlannerConfig::new(slo_s)
    };
    let cost = match args.switch_reserve {
        ReserveArg::P95 => SwitchCost::from_latency(&source.switch),
        ReserveArg::Jitter => SwitchCost::pre_issued(&source.switch),
    };
    let rate_upper = args
        .rate_upper
        .unwrap_or(args.rate + 2.0 * args.rate.sqrt());
    let req = PlanRequest::new(args.rate, rate_upper, args.margin);
    let eali = Planner::new(ucosts.clone(), cost, cfg)?.plan(&req);
    let per_batch_dvfs = Planner::new(single, cost, cfg)?.plan(&req);
    let max_clock = Planner::new(maxclock, cost, cfg)?.plan(&req);
    let note = format!(
        "{} clocks {}–{} MHz, batches 1–{}, unit times at f_max for the chosen batch",
        source.table.clocks_mhz.len(),
        source.table.clocks_mhz[0],
        fmax,
        args.max_batch
    );
    Ok((
        Explanation {
            model: graph.name.clone(),
            gpu: source.table.gpu.clone(),
            slo_s,
            percentile: args.percentile,
            rate: args.rate,
            rate_upper,
            margin: args.margin,
            switch: source.switch,
            structural_units: structural,
            k: args.k,
            max_units: args.max_units,
            units: chain,
            unit_costs_note: note,
            eali,
            per_batch_dvfs,
            max_clock,
            notes: source.notes,
        },
        ucosts,
    ))
}

fn ms(s: f64) -> String {
    format!("{:.2} ms", s * 1e3)
}

fn print_text(x: &Explanation, costs: &UnitCostTable) {
    println!(
        "{} on {}: p{} ≤ {:.1} ms at {:.1} req/s (stability at ≤ {:.1} req/s), margin {:.0} %",
        x.model,
        x.gpu,
        x.percentile,
        x.slo_s * 1e3,
        x.rate,
        x.rate_upper,
        x.margin * 100.0
    );
    for n in &x.notes {
        println!("  {n}");
    }
    let p = &x.eali;
    let merged = if x.units.len() == 1 {
        " (one clock per batch: per-batch DVFS mode)".to_string()
    } else {
        String::new()
    };
    println!(
        "\nunits: {} structural → {} after merging (a unit must run k·ŝ = {} at f_max, cap {}){merged}",
        x.structural_units,
        x.units.len(),
        ms(x.k * x.switch.total_median_s),
        x.max_units
    );
    println!("  {}", x.unit_costs_note);
    let bi = costs.batch_index(p.batch);
    let fm = costs.max_clock_index();
    println!(
        "  {:>3}  {:<34} {:>6} {:>11} {:>9}",
        "#", "unit", "layers", "t@f_max", "clock"
    );
    for (i, u) in x.units.units.iter().enumerate() {
        let t = bi.map(|b| costs.time_s[i][b][fm]).unwrap_or(f64::NAN);
        let clock = p
            .unit_clocks_mhz
            .get(i)
            .map_or("-".to_string(), |c| format!("{c} MHz"));
        println!(
            "  {:>3}  {:<34} {:>6} {:>11} {:>9}",
            i,
            u.name,
            u.layers.len(),
            ms(t),
            clock
        );
    }
    println!("\ndecision: batch {}{}", p.batch, status(p));
    println!(
        "  predicted p{} latency {} = max(fill {}, GPU busy with earlier batches) {} + execution {} (target {})",
        x.percentile,
        ms(p.latency_s),
        ms(p.fill_time_s),
        ms((p.latency_s - p.exec_time_s).max(0.0)),
        ms(p.exec_time_s),
        ms((1.0 - x.margin) * x.slo_s)
    );
    if p.fill_bound == crate::eali::FillBound::DispatchDeadline && !p.saturated {
        println!(
            "  no batch size fills within the target at this rate: the fill wait is capped by the dispatch deadline (partial batches), not counted above"
        );
    }
    println!(
        "  energy {:.4} J/request ({:.3} J per batch + idle until the next batch), {} clock change(s) per batch",
        p.energy_per_request_j, p.batch_energy_j, p.switches
    );
    println!(
        "\nset-call timeline (relative to batch start; first clock {} MHz preset while idle):",
        p.entry_clock_mhz()
    );
    if p.timeline.is_empty() {
        println!("  none: one clock for the whole batch");
    }
    for c in &p.timeline {
        println!(
            "  at {:>10}: set {} MHz for unit {} ({}), starting at {}",
            ms(c.issue_at_s),
            c.clock_mhz,
            c.unit,
            x.units.units.get(c.unit).map_or("?", |u| u.name.as_str()),
            ms(c.unit_start_s)
        );
    }
    println!("\ncomparison (same costs, rate and SLO):");
    println!(
        "  {:<16} {:>6} {:>12} {:>12} {:>12} {:>9}",
        "policy", "batch", "clocks", "latency", "J/request", "vs EALI"
    );
    for (name, q) in [
        ("EALI", &x.eali),
        ("per-batch DVFS", &x.per_batch_dvfs),
        ("max clocks", &x.max_clock),
    ] {
        let (lo, hi) = (
            q.unit_clocks_mhz.iter().min().copied().unwrap_or(0),
            q.unit_clocks_mhz.iter().max().copied().unwrap_or(0),
        );
        let clocks = if lo == hi {
            format!("{lo}")
        } else {
            format!("{lo}–{hi}")
        };
        let vs = (q.energy_per_request_j / x.eali.energy_per_request_j - 1.0) * 100.0;
        println!(
            "  {:<16} {:>6} {:>12} {:>12} {:>12.4} {:>+8.1}%{}",
            name,
            q.batch,
            clocks,
            ms(q.latency_s),
            q.energy_per_request_j,
            vs,
            status(q)
        );
    }
}

fn status(p: &Plan) -> &'static str {
    if p.saturated {
        "  [SATURATED: no plan meets the SLO; max clocks, largest stable batch]"
    } else if !p.feasible {
        "  [infeasible]"
    } else {
        ""
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let graph = zoo::build(&args.model)?;
    let source = cost_source(&args, &graph)?;
    let (x, costs) = explain(&args, &graph, source)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&x)?);
    } else {
        print_text(&x, &costs);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::eali::synthetic::SyntheticGpu;

    fn args(extra: &[&str]) -> Args {
        #[derive(clap::Parser)]
        struct Wrap {
            #[command(flatten)]
            args: Args,
        }
        let mut argv = vec![
            "plan", "--model", "resnet18", "--slo-ms", "60", "--rate", "150",
        ];
        argv.extend_from_slice(extra);
        Wrap::parse_from(argv).args
    }

    #[test]
    fn switch_latency_file_from_calibration_is_read_and_checked() {
        let dir = std::env::temp_dir().join(format!("eali-plan-switch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.json");
        let measured = SwitchLatency {
            call_median_s: 0.0045,
            total_median_s: 0.025,
            total_p95_s: 0.031,
        };
        std::fs::write(&good, serde_json::to_vec(&measured).unwrap()).unwrap();
        assert_eq!(
            crate::cli::files::load_switch_latency(&good).unwrap(),
            measured
        );
        assert_eq!(
            args(&["--switch-latency", good.to_str().unwrap()]).switch_latency,
            Some(good.clone())
        );

        let inverted = dir.join("inverted.json");
        let bad = SwitchLatency {
            total_p95_s: 0.01,
            ..measured
        };
        std::fs::write(&inverted, serde_json::to_vec(&bad).unwrap()).unwrap();
        assert!(crate::cli::files::load_switch_latency(&inverted).is_err());
        let garbage = dir.join("garbage.json");
        std::fs::write(&garbage, b"{\"call\": 1}").unwrap();
        let err = crate::cli::files::load_switch_latency(&garbage)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a switch latency"), "{err}");
        assert!(crate::cli::files::load_switch_latency(&dir.join("missing.json")).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }

    fn synthetic_source(graph: &Graph, switch: SwitchLatency) -> CostSource {
        let gpu = SyntheticGpu {
            batches: (1..=64).collect(),
            ..SyntheticGpu::default()
        };
        CostSource {
            table: gpu.graph_table(graph),
            switch,
            notes: vec!["synthetic".into()],
        }
    }

    #[test]
    fn explains_eali_against_per_batch_dvfs_and_max_clocks() {
        let a = args(&["--k", "1"]);
        let graph = zoo::build(&a.model).unwrap();
        let fast_switch = SwitchLatency {
            call_median_s: 0.0002,
            total_median_s: 0.001,
            total_p95_s: 0.0015,
        };
        let (x, costs) = explain(&a, &graph, synthetic_source(&graph, fast_switch)).unwrap();
        assert_eq!(x.structural_units, 10);
        assert_eq!(x.units.len(), costs.num_units());
        assert!(x.eali.feasible && x.per_batch_dvfs.feasible && x.max_clock.feasible);
        assert!(
            x.eali.energy_per_request_j <= x.per_batch_dvfs.energy_per_request_j * (1.0 + 1e-9)
        );
        assert!(
            x.per_batch_dvfs.energy_per_request_j
                <= x.max_clock.energy_per_request_j * (1.0 + 1e-9)
        );
        let fmax = *costs.clocks_mhz.last().unwrap();
        assert!(x.max_clock.unit_clocks_mhz.iter().all(|&c| c == fmax));
        assert!(x.eali.latency_s <= 0.9 * 0.06 + 1e-12);
        // The JSON form carries the same decision.
        let json: serde_json::Value = serde_json::to_value(&x).unwrap();
        assert_eq!(json["eali"]["batch"], x.eali.batch);
        // V100-like switches: every unit merges into one and EALI is per-batch DVFS.
        let (slow, _) = explain(
            &args(&[]),
            &graph,
            synthetic_source(&graph, SwitchLatency::v100_like()),
        )
        .unwrap();
        assert_eq!(slow.units.len(), 1);
        let (e, p) = (
            slow.eali.energy_per_request_j,
            slow.per_batch_dvfs.energy_per_request_j,
        );
        assert!((e - p).abs() <= 1e-9 * p, "{e} vs {p}");
    }

    #[test]
    fn rejects_nonsense_arguments() {
        let a = args(&["--percentile", "100"]);
        let graph = zoo::build(&a.model).unwrap();
        assert!(explain(&a, &graph, synthetic_source(&graph, SwitchLatency::zero())).is_err());
    }
}
