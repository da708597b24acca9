//! Reports of a suite: the aligned table, the summary against targets (`docs/architecture.md`,
//! "Targets"), and the JSON records (one per case and policy).

use std::fmt::Write as _;

use serde::Serialize;

use super::{CaseResult, PolicyId, SuiteResult};

/// Windows with p99 ≤ SLO needed to call a run "meets the SLO".
pub const SLO_MET: f64 = 0.99;

/// One JSON record: a policy's run of a case.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
    pub model: String,
    pub gpu: String,
    pub workload: String,
    pub load: f64,
    pub slo_ms: f64,
    pub policy: String,
    pub rate: f64,
    pub requests: usize,
    pub dropped: usize,
    pub energy_per_request_j: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub slo_attainment: f64,
    pub switches: usize,
    pub saturated: f64,
    pub mean_batch: f64,
    /// The case's physics floor: energy per request no policy can go below (J).
    pub floor_energy_per_request_j: f64,
}

pub fn records(suite: &SuiteResult) -> Vec<Record> {
    let mut out = Vec::new();
    for c in &suite.cases {
        for (p, r) in &c.runs {
            out.push(Record {
                model: c.case.model.clone(),
                gpu: c.case.gpu.clone(),
                workload: c.case.workload.name(),
                load: c.case.load,
                slo_ms: c.case.slo_ms,
                policy: p.name().to_string(),
                rate: c.rate,
                requests: r.completed,
                dropped: r.dropped,
                energy_per_request_j: r.energy_per_request_j,
                p50_ms: r.p50_ms,
                p99_ms: r.p99_ms,
                slo_attainment: r.slo_attainment,
                switches: r.switches,
                saturated: r.saturated_s,
                mean_batch: r.mean_batch,
                floor_energy_per_request_j: c.floor_j,
            });
        }
    }
    out
}

/// Energy reduction of `a` against `b` (positive = `a` uses less).
fn reduction(a: f64, b: f64) -> f64 {
    1.0 - a / b
}

fn pct(x: f64) -> String {
    if x.is_finite() {
        format!("{:+.1}%", -100.0 * x)
    } else {
        "-".into()
    }
}

/// The aligned table: one row per case with every policy's energy per request (mJ), EALI's
/// change against each other policy, EALI's p99, the SLO attainment of EALI and (a), and EALI's
/// clock switches.
pub fn table(suite: &SuiteResult) -> String {
    let pols = &suite.spec.policies;
    let focus = focus_policy(pols);
    let mut head: Vec<String> = ["model", "gpu", "workload", "load", "slo"]
        .map(String::from)
        .to_vec();
    head.extend(pols.iter().map(|p| format!("{} mJ", p.short())));
    head.push("floor".into());
    head.extend(
        pols.iter()
            .filter(|&&p| p != focus)
            .map(|p| format!("vs{}", p.short())),
    );
    head.extend([
        format!("{} p99", focus.short()),
        format!("{} att", focus.short()),
        "(a)att".into(),
        "sw".into(),
    ]);
    let mut rows = vec![head];
    for c in &suite.cases {
        let mut row = vec![
            c.case.model.clone(),
            c.case.gpu.clone(),
            c.case.workload.name(),
            format!("{:.0}%", c.case.load * 100.0),
            format!("{}", c.case.slo_ms),
        ];
        let e = |p: PolicyId| c.run(p).map_or(f64::NAN, |r| r.energy_per_request_j);
        row.extend(pols.iter().map(|&p| format!("{:.1}", e(p) * 1e3)));
        row.push(format!("{:.1}", c.floor_j * 1e3));
        row.extend(
            pols.iter()
                .filter(|&&p| p != focus)
                .map(|&p| pct(reduction(e(focus), e(p)))),
        );
        let f = c.run(focus);
        row.push(f.map_or("-".into(), |r| format!("{:.1}", r.p99_ms)));
        row.push(f.map_or("-".into(), |r| format!("{:.2}", r.slo_attainment)));
        row.push(
            c.run(PolicyId::MaxClock)
                .map_or("-".into(), |r| format!("{:.2}", r.slo_attainment)),
        );
        row.push(f.map_or("-".into(), |r| r.switches.to_string()));
        rows.push(row);
    }
    align(&rows)
}

/// EALI if it ran, else the last policy.
fn focus_policy(pols: &[PolicyId]) -> PolicyId {
    if pols.contains(&PolicyId::Eali) {
        PolicyId::Eali
    } else {
        *pols.last().unwrap_or(&PolicyId::MaxClock)
    }
}

fn align(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (k, r) in rows.iter().enumerate() {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, s)| {
                if i < 3 {
                    format!("{s:<w$}", w = widths[i])
                } else {
                    format!("{s:>w$}", w = widths[i])
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
        if k == 0 {
            out.push_str(&"-".repeat(widths.iter().sum::<usize>() + 2 * cols.saturating_sub(1)));
            out.push('\n');
        }
    }
    out
}

/// Headline numbers of a suite. Unless said otherwise a figure is over the cases where (a)
/// meets the SLO: elsewhere the load is beyond what the GPU can serve within the SLO and energy
/// comparisons say little.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub policy: String,
    pub cases: usize,
    /// Cases where (a) meets the SLO (p99 ≤ SLO in ≥ 99 % of windows).
    pub cases_a_meets_slo: usize,
    /// Of those, cases where the policy meets it too.
    pub cases_both_meet_slo: usize,
    /// Mean energy reduction against (a), over all cases too, and over the cases where both
    /// meet the SLO.
    pub mean_reduction_vs_a: f64,
    pub mean_reduction_vs_a_all: f64,
    pub mean_reduction_vs_a_both_met: f64,
    pub mean_reduction_vs_d: f64,
    pub best_reduction_vs_d: f64,
    pub mean_reduction_vs_b: f64,
    pub mean_reduction_vs_c: f64,
    /// Mean reduction against (a) of the physics floor (what no policy can beat) and of (e).
    pub floor_reduction_vs_a: f64,
    pub oracle_reduction_vs_a: f64,
    /// Mean reduction of the floor with a clock per layer against the floor with one clock per
    /// batch: the most layer-level clocks could gain over per-batch DVFS without an SLO.
    pub floor_layer_vs_batch_clock: f64,
    /// Mean and worst (E_policy / E_oracle − 1), where the oracle meets the SLO too.
    pub mean_gap_to_oracle: f64,
    pub worst_gap_to_oracle: f64,
    /// Fraction of cases where the policy meets the SLO, and its mean and lowest window
    /// attainment.
    pub slo_met_share: f64,
    pub mean_attainment: f64,
    pub min_attainment: f64,
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn meets(c: &CaseResult, p: PolicyId) -> bool {
    c.run(p).is_some_and(|r| r.slo_attainment >= SLO_MET)
}

pub fn summary(suite: &SuiteResult) -> Summary {
    let focus = focus_policy(&suite.spec.policies);
    let e = |c: &CaseResult, p: PolicyId| {
        c.run(p)
            .map(|r| r.energy_per_request_j)
            .filter(|x| x.is_finite())
    };
    let reductions = |p: PolicyId, keep: &dyn Fn(&CaseResult) -> bool| -> Vec<f64> {
        suite
            .cases
            .iter()
            .filter(|c| keep(c))
            .filter_map(|c| Some(reduction(e(c, focus)?, e(c, p)?)))
            .collect()
    };
    let a_met = |c: &CaseResult| a_meets(c);
    // Mean of a per-case figure over the cases where (a) meets the SLO.
    let mean_where_a_met = |f: &dyn Fn(&CaseResult) -> Option<f64>| {
        mean(
            &suite
                .cases
                .iter()
                .filter(|c| a_meets(c))
                .filter_map(f)
                .collect::<Vec<_>>(),
        )
    };
    let vs_d = reductions(PolicyId::PerBatchDvfs, &a_met);
    let gaps: Vec<f64> = suite
        .cases
        .iter()
        .filter(|c| a_meets(c) && meets(c, PolicyId::Oracle))
        .filter_map(|c| Some(e(c, focus)? / e(c, PolicyId::Oracle)? - 1.0))
        .collect();
    let att: Vec<f64> = suite
        .cases
        .iter()
        .filter(|c| a_meets(c))
        .filter_map(|c| c.run(focus).map(|r| r.slo_attainment))
        .collect();
    Summary {
        policy: focus.name().to_string(),
        cases: suite.cases.len(),
        cases_a_meets_slo: att.len(),
        cases_both_meet_slo: att.iter().filter(|&&a| a >= SLO_MET).count(),
        mean_reduction_vs_a: mean(&reductions(PolicyId::MaxClock, &a_met)),
        mean_reduction_vs_a_all: mean(&reductions(PolicyId::MaxClock, &|_| true)),
        mean_reduction_vs_a_both_met: mean(&reductions(PolicyId::MaxClock, &|c| {
            a_meets(c) && meets(c, focus)
        })),
        mean_reduction_vs_d: mean(&vs_d),
        best_reduction_vs_d: vs_d.iter().copied().fold(f64::NAN, f64::max),
        mean_reduction_vs_b: mean(&reductions(PolicyId::Clipper, &a_met)),
        mean_reduction_vs_c: mean(&reductions(PolicyId::DefaultClock, &a_met)),
        floor_reduction_vs_a: mean_where_a_met(&|c| {
            Some(reduction(c.floor_j, e(c, PolicyId::MaxClock)?))
        }),
        oracle_reduction_vs_a: mean_where_a_met(&|c| {
            Some(reduction(
                e(c, PolicyId::Oracle)?,
                e(c, PolicyId::MaxClock)?,
            ))
        }),
        floor_layer_vs_batch_clock: mean_where_a_met(&|c| {
            Some(reduction(c.floor_j, c.floor_batch_clock_j))
        }),
        mean_gap_to_oracle: mean(&gaps),
        worst_gap_to_oracle: gaps.iter().copied().fold(f64::NAN, f64::max),
        slo_met_share: if att.is_empty() {
            f64::NAN
        } else {
            att.iter().filter(|&&a| a >= SLO_MET).count() as f64 / att.len() as f64
        },
        mean_attainment: mean(&att),
        min_attainment: att.iter().copied().fold(f64::NAN, f64::min),
    }
}

fn a_meets(c: &CaseResult) -> bool {
    c.run(PolicyId::MaxClock)
        .is_some_and(|r| r.slo_attainment >= SLO_MET)
}

/// The summary as text, with a target beside each number (`docs/architecture.md`, "Targets").
pub fn summary_text(s: &Summary) -> String {
    let p = |x: f64| {
        if x.is_finite() {
            format!("{:.1} %", 100.0 * x)
        } else {
            "n/a".into()
        }
    };
    let mut out = String::new();
    let name = &s.policy;
    let _ = writeln!(
        out,
        "summary for {name}: {} cases; (a) meets the SLO in {}, {name} too in {} of those; figures below over the {} unless said",
        s.cases, s.cases_a_meets_slo, s.cases_both_meet_slo, s.cases_a_meets_slo
    );
    let _ = writeln!(
        out,
        "  vs (a) max-clock:       {} less energy/request (all cases {}, where both meet the SLO {})   target >= 40 %",
        p(s.mean_reduction_vs_a),
        p(s.mean_reduction_vs_a_all),
        p(s.mean_reduction_vs_a_both_met)
    );
    let _ = writeln!(
        out,
        "  floor vs (a):           {} less is the most any policy could reach (physics floor: no SLO, a clock per layer, free switches); (e) oracle {} less",
        p(s.floor_reduction_vs_a),
        p(s.oracle_reduction_vs_a)
    );
    let _ = writeln!(
        out,
        "  vs (d) per-batch DVFS:  {} less on average, {} in the best case   target >= 10 % mean, >= 25 % best",
        p(s.mean_reduction_vs_d),
        p(s.best_reduction_vs_d)
    );
    let _ = writeln!(
        out,
        "  floor, clock per layer vs one per batch: {} less (without an SLO; under one, a clock per layer can gain more)",
        p(s.floor_layer_vs_batch_clock)
    );
    let _ = writeln!(
        out,
        "  vs (b) clipper:         {} less;  vs (c) default clocks: {} less",
        p(s.mean_reduction_vs_b),
        p(s.mean_reduction_vs_c)
    );
    let _ = writeln!(
        out,
        "  gap to (e) oracle:      {} more on average, {} worst (cases where the oracle meets the SLO too)   target <= 5 %",
        p(s.mean_gap_to_oracle),
        p(s.worst_gap_to_oracle)
    );
    let _ = writeln!(
        out,
        "  SLO:                    {name} meets p99 <= SLO in >= 99 % of 10 s windows in {} of the cases; mean attainment {}, lowest {}   target 100 %",
        p(s.slo_met_share),
        p(s.mean_attainment),
        p(s.min_attainment)
    );
    out
}
