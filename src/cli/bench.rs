//! `eali bench`: EALI against the baselines in the discrete-event simulator — a table, a summary
//! against the project's targets, JSON records and SVG plots.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};

use crate::sim::bench::{self, PolicyId, Progress, SuiteResult, SuiteSpec, report};
use crate::sim::plot::{self, Series};
use crate::sim::workload::WorkloadKind;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Suite: `quick` (about a minute on 2 cores) or `full` (5 models × 3 GPUs × 4 loads × 2 SLOs
    /// × 3 workloads).
    #[arg(long, default_value = "quick")]
    pub suite: String,
    /// Only these models (comma-separated zoo names); replaces the suite's list.
    #[arg(long, value_delimiter = ',')]
    pub model: Vec<String>,
    /// Only these GPU profiles (e.g. v100,a100,t4,h100).
    #[arg(long, value_delimiter = ',')]
    pub gpu: Vec<String>,
    /// Loads as fractions of max-clock capacity (e.g. 0.2,0.5,0.8).
    #[arg(long, value_delimiter = ',')]
    pub load: Vec<f64>,
    /// Latency SLOs in ms (p99).
    #[arg(long = "slo-ms", value_delimiter = ',')]
    pub slo_ms: Vec<f64>,
    /// Workload kinds: poisson, bursty, diurnal, step, trace:PATH.
    #[arg(long, value_delimiter = ',')]
    pub workload: Vec<String>,
    /// Policies: max-clock, clipper, default-clock, per-batch-dvfs, eali, oracle.
    #[arg(long, value_delimiter = ',')]
    pub policy: Vec<String>,
    /// Simulated seconds per run.
    #[arg(long)]
    pub duration: Option<f64>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write one JSON record per case and policy here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write SVG plots into this directory.
    #[arg(long)]
    pub plots: Option<PathBuf>,
}

fn spec_from(args: &Args) -> anyhow::Result<SuiteSpec> {
    let mut spec = match args.suite.as_str() {
        "quick" => SuiteSpec::quick(),
        "full" => SuiteSpec::full(),
        other => bail!("unknown suite `{other}` (expected quick or full)"),
    };
    if !args.model.is_empty() {
        spec.models = args.model.clone();
    }
    if !args.gpu.is_empty() {
        spec.gpus = args.gpu.clone();
    }
    if !args.load.is_empty() {
        if let Some(l) = args
            .load
            .iter()
            .find(|l| !(0.0..=2.0).contains(*l) || **l == 0.0)
        {
            bail!("load {l} is outside (0, 2]");
        }
        spec.loads = args.load.clone();
    }
    if !args.slo_ms.is_empty() {
        if let Some(s) = args.slo_ms.iter().find(|s| s.is_nan() || **s <= 0.0) {
            bail!("SLO {s} ms must be positive");
        }
        spec.slos_ms = args.slo_ms.clone();
    }
    if !args.workload.is_empty() {
        spec.workloads = args
            .workload
            .iter()
            .map(|w| WorkloadKind::parse(w))
            .collect::<Result<_, _>>()?;
    }
    if !args.policy.is_empty() {
        spec.policies = args
            .policy
            .iter()
            .map(|p| PolicyId::parse(p).with_context(|| format!("unknown policy `{p}`")))
            .collect::<anyhow::Result<_>>()?;
    }
    if let Some(d) = args.duration {
        if d.is_nan() || d <= 0.0 {
            bail!("duration must be positive");
        }
        spec.duration_s = d;
    }
    spec.seed = args.seed;
    Ok(spec)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let spec = spec_from(&args)?;
    let n_cases = spec.cases().len();
    eprintln!(
        "eali bench --suite {}: {} cases × {} policies, {} s simulated per run",
        spec.name,
        n_cases,
        spec.policies.len(),
        spec.duration_s
    );
    let started = Instant::now();
    let timeline_case = args.plots.as_ref().map(|_| timeline_case(&spec));
    let mut progress = |p: Progress| match p {
        Progress::Testbed {
            model,
            gpu,
            done,
            total,
        } => {
            eprintln!(
                "[{:6.1} s] prepared {model} on {gpu} ({done}/{total})",
                started.elapsed().as_secs_f64()
            )
        }
        Progress::Case { label, done, total } => {
            eprintln!(
                "[{:6.1} s] case {done}/{total}: {label}",
                started.elapsed().as_secs_f64()
            )
        }
    };
    let suite = bench::run_suite(&spec, &bench::predicted_costs, timeline_case, &mut progress)?;
    let wall = started.elapsed().as_secs_f64();
    let requests: usize = suite
        .cases
        .iter()
        .flat_map(|c| c.runs.iter())
        .map(|(_, r)| r.arrivals)
        .sum();

    println!("{}", report::table(&suite));
    println!(
        "mJ = energy per request; vs(x) = the focus policy's energy per request relative to x (negative = less); \
         p99 in ms; att = share of 10 s windows with p99 <= SLO; sw = set-calls issued\n"
    );
    print!("{}", report::summary_text(&report::summary(&suite)));
    println!(
        "{} runs, {:.1} M simulated requests in {:.1} s wall ({} threads)",
        suite.cases.len() * spec.policies.len(),
        requests as f64 / 1e6,
        wall,
        std::thread::available_parallelism().map_or(1, |p| p.get())
    );

    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report::records(&suite))?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(dir) = &args.plots {
        let n = write_plots(&suite, dir)?;
        eprintln!("wrote {n} plots to {}", dir.display());
    }
    Ok(())
}

/// The case whose timeline is plotted: the first case at the highest load.
fn timeline_case(spec: &SuiteSpec) -> usize {
    let max = spec.loads.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    spec.cases().iter().position(|c| c.load == max).unwrap_or(0)
}

fn write_plots(suite: &SuiteResult, dir: &std::path::Path) -> anyhow::Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = 0;
    let mut groups: Vec<(String, String, f64, String)> = Vec::new();
    for c in &suite.cases {
        let key = (
            c.case.model.clone(),
            c.case.gpu.clone(),
            c.case.slo_ms,
            c.case.workload.name(),
        );
        if !groups.contains(&key) {
            groups.push(key);
        }
    }
    for (model, gpu, slo, wl) in &groups {
        let cases: Vec<_> = suite
            .cases
            .iter()
            .filter(|c| {
                c.case.model == *model
                    && c.case.gpu == *gpu
                    && c.case.slo_ms == *slo
                    && c.case.workload.name() == *wl
            })
            .collect();
        let mut series: Vec<Series> = suite
            .spec
            .policies
            .iter()
            .map(|&p| Series {
                name: p.name().to_string(),
                points: cases
                    .iter()
                    .filter_map(|c| {
                        Some((c.case.load * 100.0, c.run(p)?.energy_per_request_j * 1e3))
                    })
                    .collect(),
            })
            .collect();
        // What no policy can go below: shows how much of the way a policy has gone.
        series.push(Series {
            name: "physics floor".into(),
            points: cases
                .iter()
                .map(|c| (c.case.load * 100.0, c.floor_j * 1e3))
                .collect(),
        });
        let title = format!("{model} on {gpu}, {wl} arrivals, p99 SLO {slo} ms");
        let svg = plot::line_chart(
            &title,
            "load (% of max-clock capacity)",
            "energy per request (mJ)",
            &series,
        );
        let name = format!("energy_{model}_{gpu}_{wl}_{slo}ms.svg").replace([':', '/'], "_");
        std::fs::write(dir.join(&name), svg).with_context(|| format!("writing {name}"))?;
        written += 1;
    }
    if let Some((i, p, tl)) = &suite.timeline {
        let c = &suite.cases[*i].case;
        let start = tl
            .batches
            .get(tl.batches.len() / 2)
            .map_or(0.0, |b| b.start_s);
        let title = format!("{} timeline: {}", p.name(), c.label());
        let svg = plot::timeline_chart(&title, tl, start, start + 1.0);
        std::fs::write(dir.join("timeline.svg"), svg).context("writing timeline.svg")?;
        // The same run as data: every batch, the clock of each of its units, every set-call.
        let json = serde_json::to_vec(tl).context("encoding timeline.json")?;
        std::fs::write(dir.join("timeline.json"), json).context("writing timeline.json")?;
        written += 2;
    }
    Ok(written)
}
