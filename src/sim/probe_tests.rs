use super::bench::policies::*;
use super::bench::*;
use super::workload::*;

fn env(k: &str, d: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| d.to_string())
}

#[test]
#[ignore]
fn probe() {
    let (model, gpu) = (env("MODEL", "resnet50"), env("GPU", "v100-sxm2"));
    let slo_ms: f64 = env("SLO", "100").parse().unwrap();
    let load: f64 = env("LOAD", "0.3").parse().unwrap();
    let wl = WorkloadKind::parse(&env("WL", "poisson")).unwrap();
    let bed = Testbed::new(&model, &gpu, 64, 1, &predicted_costs).unwrap();
    eprintln!("switch {:?} eali units {}", bed.switch, bed.eali_chain.0.len());
    let slo = slo_ms / 1000.0;
    eprintln!("triton {:?} cap {:.1}", bed.triton(slo), bed.capacity(slo));
    let (p, tr) = (&bed.predicted, &bed.truth);
    for (bi, &b) in p.batches.iter().enumerate().take(4) {
        let Some(tbi) = tr.batches.iter().position(|&x| x == b) else { continue };
        for fi in [0, p.clocks_mhz.len() / 2, p.clocks_mhz.len() - 1] {
            let (pt, pe): (f64, f64) = (p.time_s.iter().map(|l| l[bi][fi]).sum(), p.energy_j.iter().map(|l| l[bi][fi]).sum());
            let (tt, te): (f64, f64) = (tr.time_s.iter().map(|l| l[tbi][fi]).sum(), tr.energy_j.iter().map(|l| l[tbi][fi]).sum());
            eprintln!("b={b} f={}: time pred {:.1} ms true {:.1} ms, energy pred/true {:.3}", p.clocks_mhz[fi], pt * 1e3, tt * 1e3, pe / te);
        }
    }
    let case = Case { model: model.clone(), gpu: gpu.clone(), workload: wl, load, slo_ms };
    let tl = if env("TL", "eali") == "eali" { PolicyId::Eali } else { PolicyId::Oracle };
    let r = run_case(&bed, &case, &[PolicyId::Oracle, PolicyId::Eali, PolicyId::MaxClock], 120.0, case.seed(1), Some(tl)).unwrap();
    for (p, run) in &r.runs {
        eprintln!("{:?}: e/req {:.4} p50 {:.1} p99 {:.1} att {:.2} batches {} mean batch {:.1} switches {}", p, run.energy_per_request_j, run.p50_ms, run.p99_ms, run.slo_attainment, run.batches, run.mean_batch, run.switches);
        if let Some(tl) = &run.timeline {
            let mut hist = std::collections::BTreeMap::new();
            for b in &tl.batches { *hist.entry((b.batch, tl.unit_clocks[b.first_unit])).or_insert(0) += 1; }
            eprintln!("hist {:?}", hist);
            for (i, b) in tl.batches.iter().enumerate().skip(1000).take(15) {
                eprintln!("  {:.3}-{:.3} ({:.1} ms) b={} clock {:?}", b.start_s, b.end_s, (b.end_s-b.start_s)*1e3, b.batch, tl.clocks_of(i));
            }
        }
    }
}
