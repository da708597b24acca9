// scratch: fitting helper (to be deleted)
use eali::gpu::sim::{GpuProfile, SpanCost, calibration::resnet50};
use std::path::Path;

#[test]
fn fit() {
    let name = std::env::var("FIT").unwrap_or("v100-pcie".into());
    let p = GpuProfile::from_path(Path::new(&format!("/tmp/fit/{name}.toml"))).unwrap();
    let batch: u32 = std::env::var("B").ok().and_then(|s| s.parse().ok()).unwrap_or(128);
    let layers = resnet50(batch).unwrap();
    let span = SpanCost::from_layers(&p, &layers, &[]);
    let parts = *span.parts();
    let fmax = p.max_clock_mhz();
    println!("parts {:?}", parts);
    println!("T(fmax)={:.4}s comp frac={:.3} P={:.1}", span.time_s(fmax), parts.comp_s/span.time_s(fmax), span.power_w(fmax));
    for f in [fmax, fmax*94/100, fmax*82/100, fmax*65/100, fmax*47/100, fmax*30/100] {
        let f = p.floor_clock_mhz(f);
        println!("f={f} r={:.3} P={:.1} E={:.3}", span.time_s(f)/span.time_s(fmax), span.power_w(f), span.energy_j(f)/span.energy_j(fmax));
    }
    let pub_ = [(250.0,1.0,1.0),(225.0,f64::NAN,f64::NAN),(200.0,1.05,0.87),(175.0,f64::NAN,f64::NAN),(150.0,1.18,0.77),(125.0,1.43,0.79),(100.0,1.89,0.85)];
    let (f0, _) = p.power_capped_clock(&parts, p.default_clock_under_load_mhz(), 250.0);
    let (t0, e0) = (span.time_s(f0), span.energy_j(f0));
    for (l, tp, ep) in pub_ {
        let (f, c) = p.power_capped_clock(&parts, p.default_clock_under_load_mhz(), l);
        let (t, e) = (span.time_s(f), span.energy_j(f));
        println!("L={l} f={f} capped={c} t={:.3} (pub {tp}, {:+.1}%) e={:.3} (pub {ep}, {:+.1}%) P={:.1}", t/t0, 100.0*(t/t0/tp-1.0), e/e0, 100.0*(e/e0/ep-1.0), e/t);
    }
    // best clock saving
    let mut best = f64::INFINITY; let mut bf = 0;
    for &f in p.supported_clocks_mhz() { let e = span.energy_j(f); if e < best { best = e; bf = f; } }
    let (fd, _) = p.power_capped_clock(&parts, p.default_clock_under_load_mhz(), p.spec().power.limit_default_w);
    println!("default f={fd} best f={bf} saving={:.1}%", 100.0*(1.0-best/span.energy_j(fd)));
    let mut best = f64::INFINITY;
    for f in [607, 810, 1012, 1200, 1327, 1432, 1530] { if f <= fmax { best = best.min(span.energy_j(f)); } }
    println!("tang points saving={:.1}%", 100.0*(1.0-best/span.energy_j(fd)));
    println!("idle at fmax {:.1} idle floor {:.1}", p.idle_power_w(fmax), p.idle_floor_w());
    // per-kind breakdown
    let mut by = std::collections::BTreeMap::new();
    for w in &layers { let e = by.entry(format!("{:?}", w.kind)).or_insert((0.0,0.0,0.0)); e.0 += p.layer_time_s(w, fmax); e.1 += w.flops; e.2 += w.bytes; }
    for (k,v) in by { println!("{k}: t={:.4} flops={:.3e} bytes={:.3e}", v.0, v.1, v.2); }
}

#[test]
fn grid() {
    let name = std::env::var("FIT").unwrap_or("v100-pcie".into());
    let base = GpuProfile::from_path(Path::new(&format!("/tmp/fit/{name}.toml"))).unwrap();
    let layers = resnet50(128).unwrap();
    let pubs = [(200.0,1.05,0.87),(150.0,1.18,0.77),(125.0,1.43,0.79),(100.0,1.89,0.85)];
    let mut best = (f64::INFINITY, vec![]);
    let kmax: i32 = std::env::var("KMAX").ok().and_then(|s| s.parse().ok()).unwrap_or(1300);
    for knee in (800..=kmax).step_by(20) {
      for vmin in [0.62,0.65,0.68,0.70,0.72,0.74,0.76,0.78] {
        for d in (150..=350).step_by(10) {
          for busy in (0..=40).step_by(4) {
            if let Ok(b) = std::env::var("BUSY") { if busy != b.parse::<i32>().unwrap() { continue; } }
            let mut s = base.spec().clone();
            s.voltage.knee_mhz = knee as f64; s.voltage.v_min = vmin; s.power.dynamic_w_at_fmax = d as f64; s.power.busy_w = busy as f64;
            let Ok(p) = GpuProfile::from_spec(s) else { continue };
            let span = SpanCost::from_layers(&p, &layers, &[]);
            let parts = *span.parts();
            let (f0,_) = p.power_capped_clock(&parts, p.max_clock_mhz(), 250.0);
            let (t0,e0) = (span.time_s(f0), span.energy_j(f0));
            let mut err = 0.5*((e0/t0)/222.0-1.0f64).powi(2);
            let mut emin = (e0, 250.0);
            for l in [225.0, 175.0] { let (f,_) = p.power_capped_clock(&parts, p.max_clock_mhz(), l); let e = span.energy_j(f); if e < emin.0 { emin = (e, l); } }
            for (l,tp,ep) in pubs {
                let (f,_) = p.power_capped_clock(&parts, p.max_clock_mhz(), l);
                let (t,e) = (span.time_s(f), span.energy_j(f));
                err += (t/t0/tp-1.0).powi(2) + (e/e0/ep-1.0).powi(2);
                if e < emin.0 { emin = (e, l); }
            }
            if emin.1 != 150.0 { err += 1.0; }
            if err < best.0 { best = (err, vec![knee as f64, vmin, d as f64, busy as f64]); }
          }
        }
      }
    }
    println!("best err={:.5} knee,vmin,D,busy={:?}", best.0, best.1);
}

#[test]
fn all() {
    for name in ["m40","v100-pcie","v100-sxm2","t4","a100-sxm4","h100-sxm"] {
        let p = GpuProfile::from_path(Path::new(&format!("/tmp/fit/{name}.toml"))).unwrap();
        for batch in [1u32, 8, 32, 128] {
            let span = SpanCost::from_layers(&p, &resnet50(batch).unwrap(), &[]);
            let parts = *span.parts();
            let fmax = p.max_clock_mhz();
            let (fd, capped) = p.power_capped_clock(&parts, p.default_clock_under_load_mhz(), p.spec().power.limit_default_w);
            let mut best = (f64::INFINITY, 0);
            for &f in p.supported_clocks_mhz() { let e = span.energy_j(f); if e < best.0 { best = (e, f); } }
            println!("{name:10} b={batch:3} T(fmax)={:7.2}ms img/s={:6.0} P(fmax)={:5.1}W default f={fd} capped={capped} P={:5.1} best f={} saving={:4.1}% idle@fmax={:.1}",
                1e3*span.time_s(fmax), batch as f64/span.time_s(fd), span.power_w(fmax), span.power_w(fd), best.1, 100.0*(1.0-best.0/span.energy_j(fd)), p.idle_power_w(fmax));
        }
    }
}
