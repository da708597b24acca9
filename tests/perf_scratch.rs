use eali::gpu::sim::{GpuProfile, SimGpu};
use eali::model::zoo;
use eali::perf::cost_table::build_cost_table;
use eali::perf::fit::{FitConfig, fit_power_model};
use eali::perf::profile::Profile;

#[test]
#[ignore]
fn scratch() {
    let gp = GpuProfile::builtin("v100").unwrap();
    let names = ["alexnet", "resnet50", "googlenet", "densenet121", "mobilenet_v2"];
    let profiles: Vec<Profile> = names.iter().map(|n| Profile::load(std::path::Path::new(&format!("/tmp/p/v100-{n}.json"))).unwrap()).collect();
    // 1. measurement accuracy
    for p in &profiles {
        let g = zoo::build(&p.model).unwrap();
        let (mut rt, mut re): (Vec<f64>, Vec<f64>) = (vec![], vec![]);
        for r in &p.records {
            let w = g.layer_work(r.layer, r.batch);
            rt.push(r.time_s / gp.layer_time_s(&w, r.clock_mhz) - 1.0);
            re.push(r.energy_j / gp.layer_energy_j(&w, r.clock_mhz) - 1.0);
        }
        let stat = |v: &Vec<f64>| { let m = v.iter().sum::<f64>() / v.len() as f64; let sd = (v.iter().map(|x| (x-m)*(x-m)).sum::<f64>()/v.len() as f64).sqrt(); let mx = v.iter().fold(0.0f64, |a, x| a.max(x.abs())); (m, sd, mx) };
        println!("{}: time err {:?} energy err {:?}", p.model, stat(&rt), stat(&re));
    }
    let cfg = FitConfig { max_rows: 1500, candidates: vec![eali::perf::fit::default_candidates()[0]], ..FitConfig::default() };
    let (pm, _) = fit_power_model(&profiles, &cfg).unwrap();
    let batches = [1, 3, 8, 24, 64];
    let clocks = [600, 900, 1100, 1245, 1380];
    for p in &profiles {
        let g = zoo::build(&p.model).unwrap();
        let t = build_cost_table(p, &pm, &batches, &clocks).unwrap();
        for (bi, &b) in batches.iter().enumerate() {
            let mut line = format!("{} b={b}:", p.model);
            for (fi, &f) in clocks.iter().enumerate() {
                let (mut tt, mut te, mut pt, mut pe) = (0.0, 0.0, 0.0, 0.0);
                let mut worst: f64 = 0.0;
                for l in 0..g.layers.len() {
                    let w = g.layer_work(l, b);
                    if w.flops == 0.0 && w.bytes == 0.0 { continue; }
                    let (a, e) = (gp.layer_time_s(&w, f), gp.layer_energy_j(&w, f));
                    tt += a; te += e; pt += t.time_s[l][bi][fi]; pe += t.energy_j[l][bi][fi];
                    worst = worst.max((t.time_s[l][bi][fi] / a - 1.0).abs());
                }
                line += &format!(" {f}: t {:+.2}% e {:+.2}% (worst layer t {:.1}%)", (pt / tt - 1.0) * 100.0, (pe / te - 1.0) * 100.0, worst * 100.0);
            }
            println!("{line}");
        }
    }
}
