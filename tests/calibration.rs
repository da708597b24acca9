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
