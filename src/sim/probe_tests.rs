use super::bench::policies::*;
use super::bench::*;
use super::workload::*;

#[test]
#[ignore]
fn probe() {
    let bed = Testbed::new("resnet50", "v100-sxm2", 64, 1, &predicted_costs).unwrap();
    eprintln!("switch {:?}", bed.switch);
    eprintln!(
        "eali units {} single {}",
        bed.eali_chain.0.len(),
        bed.single_chain.0.len()
    );
    eprintln!("oracle units {}", bed.oracle_chain.0.len());
    eprintln!(
        "exec fmax b1 {:.4} b8 {:.4} b32 {:.4} b64 {:.4}",
        bed.exec_fmax_s[0], bed.exec_fmax_s[7], bed.exec_fmax_s[31], bed.exec_fmax_s[63]
    );
    let slo = 0.1;
    eprintln!("triton {:?} cap {}", bed.triton(slo), bed.capacity(slo));
    let case = Case {
        model: "resnet50".into(),
        gpu: "v100-sxm2".into(),
        workload: WorkloadKind::Poisson,
        load: std::env::var("LOAD")
            .map(|v| v.parse().unwrap())
            .unwrap_or(0.3),
        slo_ms: 100.0,
    };
    let r = run_case(
        &bed,
        &case,
        &[PolicyId::Oracle, PolicyId::Eali, PolicyId::MaxClock],
        60.0,
        case.seed(1),
        Some(
            std::env::var("TL")
                .map(|v| {
                    if v == "eali" {
                        PolicyId::Eali
                    } else {
                        PolicyId::Oracle
                    }
                })
                .unwrap_or(PolicyId::Oracle),
        ),
    )
    .unwrap();
    for (p, run) in &r.runs {
        eprintln!(
            "{:?}: e/req {:.4} p50 {:.1} p99 {:.1} att {} windows {} batches {} mean batch {:.1} switches {}",
            p,
            run.energy_per_request_j,
            run.p50_ms,
            run.p99_ms,
            run.slo_attainment,
            run.windows,
            run.batches,
            run.mean_batch,
            run.switches
        );
        if let Some(tl) = &run.timeline {
            let mut hist = std::collections::BTreeMap::new();
            for b in &tl.batches {
                *hist
                    .entry((b.batch, tl.unit_clocks[b.first_unit]))
                    .or_insert(0) += 1;
            }
            eprintln!("hist {:?}", hist);
            for b in tl.batches.iter().take(0) {
                eprintln!(
                    "  {:.3}-{:.3} b={} clocks {:?}",
                    b.start_s,
                    b.end_s,
                    b.batch,
                    &tl.unit_clocks[b.first_unit..b.first_unit + tl.units]
                );
            }
        }
    }
}

#[test]
#[ignore]
fn probe2() {
    use crate::gpu::sim::SpanCost;
    let bed = Testbed::new("resnet50", "v100-sxm2", 64, 1, &predicted_costs).unwrap();
    for b in [1u32, 2, 4, 6, 8, 12, 16, 32] {
        let works: Vec<_> = (0..bed.graph.layers.len())
            .map(|l| bed.graph.layer_work(l, b))
            .collect();
        let s = SpanCost::from_layers(&bed.profile, &works, &[]);
        let mut line = format!("b={b:2}");
        for f in [135u32, 450, 712, 900, 1100, 1380] {
            line += &format!(
                " | {f}: t {:.1}ms e/req {:.1}mJ",
                s.time_s(f) * 1e3,
                s.energy_j(f) / b as f64 * 1e3
            );
        }
        eprintln!("{line}");
        // oracle truth table unit costs
        let (_, uc) = &bed.oracle_chain;
        let bi = uc.batches.iter().position(|&x| x == b).unwrap();
        let fi = uc.clocks_mhz.iter().position(|&x| x >= 700).unwrap();
        eprintln!(
            "   table clock {} t {:.1} e/req {:.1}",
            uc.clocks_mhz[fi],
            uc.time_s[0][bi][fi] * 1e3,
            uc.energy_j[0][bi][fi] / b as f64 * 1e3
        );
    }
    for f in [135u32, 450, 712, 900, 1380] {
        eprintln!("idle {f}: {:.1} W", bed.profile.idle_power_w(f));
    }
    eprintln!("idle floor {:.1}", bed.profile.idle_floor_w());
}

#[test]
#[ignore]
fn probe4() {
    let t = std::time::Instant::now();
    let bed = Testbed::new("resnet50", "v100-sxm2", 64, 1, &predicted_costs).unwrap();
    eprintln!("testbed in {:.1} s", t.elapsed().as_secs_f64());
    let (p, tr) = (&bed.predicted, &bed.truth);
    for (bi, &b) in p.batches.iter().enumerate() {
        let tbi = tr.batches.iter().position(|&x| x == b).unwrap();
        for fi in [0, p.clocks_mhz.len() / 2, p.clocks_mhz.len() - 1] {
            let (pt, pe): (f64, f64) = (
                p.time_s.iter().map(|l| l[bi][fi]).sum(),
                p.energy_j.iter().map(|l| l[bi][fi]).sum(),
            );
            let (tt, te): (f64, f64) = (
                tr.time_s.iter().map(|l| l[tbi][fi]).sum(),
                tr.energy_j.iter().map(|l| l[tbi][fi]).sum(),
            );
            eprintln!(
                "b={b} f={}: time pred/true {:.3}, energy pred/true {:.3}",
                p.clocks_mhz[fi],
                pt / tt,
                pe / te
            );
        }
    }
}
