//! Calibration of the simulated GPU against published measurements. Each test prints the
//! published figure next to the simulator's; run with
//! `cargo test --test calibration -- --nocapture` to see the table.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use eali::gpu::sim::calibration::{self, CalibrationCheck};

fn check(group: &str, checks: Vec<CalibrationCheck>) {
    println!("\n{group}\n{}", calibration::format_table(&checks));
    assert!(!checks.is_empty(), "{group}: no checks");
    let failed: Vec<_> = checks.iter().filter(|c| !c.pass).collect();
    assert!(failed.is_empty(), "{group}: failed checks {failed:#?}");
}

#[test]
fn zeus_v100_power_limit_sweep() {
    check(
        "Zeus V100 ResNet-50 power-limit sweep (v100-pcie, batch 128)",
        calibration::zeus_power_limit_sweep().unwrap(),
    );
}

#[test]
fn tang_best_clock_saves_inference_energy() {
    check(
        "Tang et al. best clock vs default (v100-sxm2, ResNet-50 batch 32)",
        calibration::tang_best_clock().unwrap(),
    );
}

#[test]
fn v100_sxm2_idle_power() {
    check("V100-SXM2 idle", calibration::idle_power().unwrap());
}

#[test]
fn compute_bound_scales_with_clock_memory_bound_does_not() {
    check(
        "Layer time at half clock (v100-sxm2)",
        calibration::layer_clock_scaling().unwrap(),
    );
}

#[test]
fn clock_switch_latency_and_settle() {
    check(
        "Clock switch latency (v100-sxm2, 3000 transitions)",
        calibration::switch_latency().unwrap(),
    );
}

#[test]
fn energy_counter_steps_and_agreement() {
    check(
        "Energy counter (v100-sxm2)",
        calibration::energy_counter().unwrap(),
    );
}

#[test]
fn deterministic_under_seed() {
    check("Determinism", calibration::determinism().unwrap());
}

#[test]
fn h100_profile_is_the_fit_of_our_h100_measurements() {
    let fit = calibration::fit_h100_power().unwrap();
    println!(
        "fit of e2e/results/h100-2026-11-26 (VGG-16 and batch 8 held out): busy_w {:.1}, \
         dynamic_w_at_fmax {:.1}, memory_activity {:.2}{}; rms power error fitted {:.1} %, \
         held out {:.1} %",
        fit.busy_w,
        fit.dynamic_w_at_fmax,
        fit.memory_activity,
        if fit.memory_activity_at_bound {
            " (at its bound)"
        } else {
            ""
        },
        fit.fit_rms * 100.0,
        fit.held_out_rms * 100.0
    );
    for (run, ratio) in &fit.ratios {
        let tag = if run.held_out() { "held out" } else { "fitted" };
        println!(
            "  {:13} b{:<4} sim/real power {ratio:.2}  ({tag})",
            run.model, run.batch
        );
    }
    let profile = eali::gpu::sim::GpuProfile::builtin("h100-sxm").unwrap();
    let spec = profile.spec();
    let k = &spec.kinds;
    let mut pinned = vec![
        ("busy_w", spec.power.busy_w, fit.busy_w, 0.5),
        (
            "dynamic_w_at_fmax",
            spec.power.dynamic_w_at_fmax,
            fit.dynamic_w_at_fmax,
            0.5,
        ),
    ];
    for (kind, p) in [
        ("conv", &k.conv),
        ("depthwise_conv", &k.depthwise_conv),
        ("linear", &k.linear),
        ("pool", &k.pool),
        ("elementwise", &k.elementwise),
        ("data_movement", &k.data_movement),
    ] {
        pinned.push((kind, p.memory_activity, fit.memory_activity, 0.005));
    }
    for (what, toml, fitted, tol) in pinned {
        assert!(
            (toml - fitted).abs() <= tol,
            "profiles/gpus/h100-sxm.toml has {what} = {toml}, the fit gives {fitted:.3}"
        );
    }
    assert!(fit.fit_rms <= 0.08, "fit rms {:.3}", fit.fit_rms);
    assert!(
        fit.held_out_rms <= 0.18,
        "held-out rms {:.3}",
        fit.held_out_rms
    );
}

#[test]
fn h100_against_our_h100_measurements() {
    check(
        "H100 SXM, own measurements (e2e/results/h100-2026-11-26), 1980 MHz",
        calibration::h100_measured_power().unwrap(),
    );
}

#[test]
fn b200_switches_within_the_published_blackwell_range() {
    check(
        "Clock switch latency (b200, 3000 transitions)",
        calibration::b200_switch_latency().unwrap(),
    );
}
