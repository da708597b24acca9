//! The bench suite: EALI against the baselines over models × GPUs × load levels × SLOs × workload
//! kinds, every policy on the same arrivals and the same simulated GPU seed per case. Cases run in
//! parallel on all cores; results are deterministic under the suite seed whatever the thread
//! count, because each case derives its own seeds.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use serde::Serialize;

use crate::eali::costs::LayerCostTable;
use crate::gpu::sim::GpuProfile;
use crate::model::Graph;

use super::metrics::{RunResult, Timeline};
use super::workload::WorkloadKind;

pub mod floor;
pub mod policies;
pub mod report;
pub mod testbed;

pub use policies::PolicyId;
pub use testbed::Testbed;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("setup: {0}")]
    Setup(String),
    #[error("{case}: {policy}: {source}")]
    Run {
        case: String,
        policy: String,
        source: super::des::SimError,
    },
    #[error("workload: {0}")]
    Workload(#[from] super::workload::WorkloadError),
    #[error("empty suite: {0}")]
    Empty(String),
}

/// Which cases to run.
#[derive(Debug, Clone, PartialEq)]
pub struct SuiteSpec {
    pub name: String,
    pub models: Vec<String>,
    pub gpus: Vec<String>,
    /// Offered load as fractions of max-clock capacity.
    pub loads: Vec<f64>,
    pub slos_ms: Vec<f64>,
    pub workloads: Vec<WorkloadKind>,
    pub policies: Vec<PolicyId>,
    /// Simulated seconds per run.
    pub duration_s: f64,
    pub max_batch: u32,
    pub seed: u64,
}

impl SuiteSpec {
    /// ResNet-50 and MobileNetV2 on a V100 and an A100, two loads, one SLO, Poisson and bursty
    /// arrivals.
    pub fn quick() -> Self {
        Self {
            name: "quick".into(),
            models: vec!["resnet50".into(), "mobilenet_v2".into()],
            gpus: vec!["v100-sxm2".into(), "a100-sxm4".into()],
            loads: vec![0.3, 0.7],
            slos_ms: vec![100.0],
            workloads: vec![WorkloadKind::Poisson, WorkloadKind::bursty()],
            policies: PolicyId::all().to_vec(),
            duration_s: 60.0,
            max_batch: 64,
            seed: 1,
        }
    }

    /// Five models, three GPUs, four loads, two SLOs, three workload kinds.
    pub fn full() -> Self {
        Self {
            name: "full".into(),
            models: [
                "resnet50",
                "vgg16",
                "mobilenet_v2",
                "googlenet",
                "densenet121",
            ]
            .map(String::from)
            .to_vec(),
            gpus: ["v100-sxm2", "a100-sxm4", "t4"].map(String::from).to_vec(),
            loads: vec![0.2, 0.4, 0.6, 0.8],
            slos_ms: vec![50.0, 100.0],
            workloads: vec![
                WorkloadKind::Poisson,
                WorkloadKind::bursty(),
                WorkloadKind::diurnal(),
            ],
            policies: PolicyId::all().to_vec(),
            duration_s: 120.0,
            max_batch: 64,
            seed: 1,
        }
    }

    pub fn cases(&self) -> Vec<Case> {
        let mut out = Vec::new();
        for model in &self.models {
            for gpu in &self.gpus {
                for &slo_ms in &self.slos_ms {
                    for workload in &self.workloads {
                        for &load in &self.loads {
                            out.push(Case {
                                model: model.clone(),
                                gpu: gpu.clone(),
                                workload: workload.clone(),
                                load,
                                slo_ms,
                            });
                        }
                    }
                }
            }
        }
        out
    }
}

/// One point of the suite.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Case {
    pub model: String,
    pub gpu: String,
    pub workload: WorkloadKind,
    pub load: f64,
    pub slo_ms: f64,
}

impl Case {
    pub fn label(&self) -> String {
        format!(
            "{} {} {} load {:.0}% slo {} ms",
            self.model,
            self.gpu,
            self.workload.name(),
            self.load * 100.0,
            self.slo_ms
        )
    }
    /// Seed of this case, derived from the suite seed and the case's identity.
    pub(crate) fn seed(&self, suite_seed: u64) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ suite_seed;
        for byte in self.label().bytes() {
            h = (h ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        h
    }
}

/// Results of one case: the offered rate and every policy's run.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub case: Case,
    /// Max-clock capacity at this SLO (req/s) and the offered mean rate.
    pub capacity: f64,
    pub rate: f64,
    /// Energy per request no policy can go below in this case (J; see [`floor`]).
    pub floor_j: f64,
    /// The same floor with one clock per batch (J): how much a clock per layer could ever gain.
    pub floor_batch_clock_j: f64,
    pub runs: Vec<(PolicyId, RunResult)>,
}

impl CaseResult {
    pub fn run(&self, p: PolicyId) -> Option<&RunResult> {
        self.runs.iter().find(|(id, _)| *id == p).map(|(_, r)| r)
    }
}

/// Everything a suite produced.
#[derive(Debug, Clone)]
pub struct SuiteResult {
    pub spec: SuiteSpec,
    pub cases: Vec<CaseResult>,
    /// Timeline of one run for the plots: (case index, policy, timeline).
    pub timeline: Option<(usize, PolicyId, Timeline)>,
}

/// Progress of a suite, reported as things finish.
#[derive(Debug, Clone)]
pub enum Progress {
    Testbed {
        model: String,
        gpu: String,
        done: usize,
        total: usize,
    },
    Case {
        label: String,
        done: usize,
        total: usize,
    },
}

/// Builds the online policies' cost table for a graph and profile at given batches and clocks.
pub type CostSource =
    dyn Fn(&Graph, &GpuProfile, &[u32], &[u32]) -> Result<LayerCostTable, BenchError> + Sync;

/// Runs `f(i)` for `i in 0..n` on all cores, returning results in index order; `on_done(i, &r)`
/// runs on the calling thread as each finishes.
fn parallel<T: Send>(
    n: usize,
    f: impl Fn(usize) -> T + Sync,
    mut on_done: impl FnMut(usize, &T),
) -> Vec<T> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |p| p.get())
        .min(n.max(1));
    let next = AtomicUsize::new(0);
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel();
        for _ in 0..workers {
            let tx = tx.clone();
            let (next, f) = (&next, &f);
            s.spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    if tx.send((i, f(i))).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        for (i, r) in rx {
            on_done(i, &r);
            out[i] = Some(r);
        }
    });
    out.into_iter().flatten().collect()
}

/// Runs the suite. `timeline_case` picks the case whose EALI run (or last policy's run) keeps
/// its timeline for plots.
pub fn run_suite(
    spec: &SuiteSpec,
    costs: &CostSource,
    timeline_case: Option<usize>,
    progress: &mut dyn FnMut(Progress),
) -> Result<SuiteResult, BenchError> {
    let cases = spec.cases();
    if cases.is_empty() || spec.policies.is_empty() {
        return Err(BenchError::Empty("no cases or no policies selected".into()));
    }
    let mut pairs: Vec<(String, String)> = Vec::new();
    for c in &cases {
        if !pairs.iter().any(|(m, g)| *m == c.model && *g == c.gpu) {
            pairs.push((c.model.clone(), c.gpu.clone()));
        }
    }
    let total = pairs.len();
    let mut done = 0;
    let beds = parallel(
        pairs.len(),
        |i| Testbed::new(&pairs[i].0, &pairs[i].1, spec.max_batch, spec.seed, costs),
        |i, _| {
            done += 1;
            progress(Progress::Testbed {
                model: pairs[i].0.clone(),
                gpu: pairs[i].1.clone(),
                done,
                total,
            });
        },
    );
    let beds: Vec<Testbed> = beds.into_iter().collect::<Result<_, _>>()?;
    let bed_of = |c: &Case| {
        pairs
            .iter()
            .position(|(m, g)| *m == c.model && *g == c.gpu)
            .map(|i| &beds[i])
    };

    let timeline_policy = if spec.policies.contains(&PolicyId::Eali) {
        PolicyId::Eali
    } else {
        *spec.policies.last().unwrap_or(&PolicyId::MaxClock)
    };
    let total = cases.len();
    let mut done = 0;
    let results = parallel(
        cases.len(),
        |i| {
            let case = &cases[i];
            let bed = bed_of(case).ok_or_else(|| BenchError::Setup("testbed missing".into()))?;
            let keep = (timeline_case == Some(i)).then_some(timeline_policy);
            policies::run_case(
                bed,
                case,
                &spec.policies,
                spec.duration_s,
                case.seed(spec.seed),
                keep,
            )
        },
        |i, _| {
            done += 1;
            progress(Progress::Case {
                label: cases[i].label(),
                done,
                total,
            });
        },
    );
    let mut out = Vec::with_capacity(results.len());
    let mut timeline = None;
    for (i, r) in results.into_iter().enumerate() {
        let mut r = r?;
        for (p, run) in r.runs.iter_mut() {
            if let Some(t) = run.timeline.take() {
                timeline = Some((i, *p, t));
            }
        }
        out.push(r);
    }
    Ok(SuiteResult {
        spec: spec.clone(),
        cases: out,
        timeline,
    })
}

/// The online policies' cost table, as EALI's offline pipeline makes it
/// ([`crate::perf::cost_table::simulated`]).
pub fn predicted_costs(
    graph: &Graph,
    profile: &GpuProfile,
    batches: &[u32],
    clocks: &[u32],
) -> Result<LayerCostTable, BenchError> {
    // One thread: the bench runs its cases on every core already.
    crate::perf::cost_table::simulated(graph, profile, batches, clocks, 1).map_err(|e| {
        BenchError::Setup(format!(
            "predicting the costs of {} on {}: {e}",
            graph.name,
            profile.name()
        ))
    })
}
