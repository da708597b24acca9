//! Speed of the simulated GPU's hot path: per-layer physics, span construction and `run_span`
//! (the discrete-event simulator calls the latter once per batch or unit).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench's setup failing is a failed bench

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use eali::gpu::GpuBackend;
use eali::gpu::sim::{GpuProfile, SimGpu, SpanCost, calibration};

fn physics(c: &mut Criterion) {
    let profile = GpuProfile::builtin("v100-sxm2").expect("built-in profile");
    let layers = calibration::resnet50(32).expect("zoo model");
    let mut group = c.benchmark_group("physics");
    group.throughput(Throughput::Elements(layers.len() as u64));
    group.bench_function("layer_time_s/resnet50_layers", |b| {
        b.iter(|| {
            layers
                .iter()
                .map(|w| profile.layer_time_s(black_box(w), black_box(1200)))
                .sum::<f64>()
        })
    });
    group.bench_function("layer_power_w/resnet50_layers", |b| {
        b.iter(|| {
            layers
                .iter()
                .map(|w| profile.layer_power_w(black_box(w), black_box(1200)))
                .sum::<f64>()
        })
    });
    group.bench_function("span_from_layers/resnet50_8_clocks", |b| {
        let clocks = [1530, 1380, 1200, 1057, 900, 750, 600, 450];
        b.iter(|| SpanCost::from_layers(&profile, black_box(&layers), &clocks))
    });
    group.finish();
}

fn run_span(c: &mut Criterion) {
    let profile = GpuProfile::builtin("v100-sxm2").expect("built-in profile");
    let layers = calibration::resnet50(32).expect("zoo model");
    let span = SpanCost::from_layers(&profile, &layers, &[]);
    let unit = SpanCost::from_layers(&profile, &layers[..12], &[]);
    let mut group = c.benchmark_group("run_span");
    group.throughput(Throughput::Elements(1));
    group.bench_function("steady_clock", |b| {
        let mut gpu = SimGpu::new(profile.clone(), 0, 7);
        b.iter(|| gpu.run_span(black_box(&span)).expect("run"))
    });
    group.bench_function("with_idle_gap", |b| {
        let mut gpu = SimGpu::new(profile.clone(), 0, 7);
        b.iter(|| {
            let r = gpu.run_span(black_box(&unit)).expect("run");
            gpu.advance_to(r.end_s + 0.002);
            r
        })
    });
    group.bench_function("clock_change_every_span", |b| {
        // A lock lands inside every span: the split path plus the clock scheduling.
        let mut gpu = SimGpu::new(profile.clone(), 0, 7);
        let mut i = 0u32;
        b.iter(|| {
            i += 1;
            let f = if i.is_multiple_of(2) { 1530 } else { 1057 };
            let t = gpu.now();
            gpu.schedule_locked_clocks_at(t - 0.02, f, f).expect("lock");
            gpu.run_span(black_box(&span)).expect("run")
        })
    });
    group.bench_function("power_capped", |b| {
        let mut gpu = SimGpu::new(profile.clone(), 0, 7);
        gpu.set_power_limit(150.0).expect("limit");
        b.iter(|| gpu.run_span(black_box(&span)).expect("run"))
    });
    group.bench_function("run_layer_1e6_repeats", |b| {
        let mut gpu = SimGpu::new(profile.clone(), 0, 7);
        let w = layers[1];
        b.iter(|| gpu.run_layer(black_box(&w), 1_000_000).expect("run"))
    });
    group.bench_function("energy_counter_read", |b| {
        let mut gpu = SimGpu::new(profile.clone(), 0, 7);
        gpu.run_span(&span).expect("run");
        b.iter(|| gpu.energy_mj().expect("counter"))
    });
    group.finish();
}

criterion_group!(benches, physics, run_span);
criterion_main!(benches);
