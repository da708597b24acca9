//! Simulator throughput: simulated requests per wall-clock second for the event loop on the
//! calibrated simulated GPU (ResNet-50 on a V100, Poisson arrivals at 70 % of max-clock capacity,
//! 60 s of simulated time per iteration).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use eali::gpu::sim::{GpuProfile, SimGpu};
use eali::model::zoo;
use eali::sim::baselines::{TritonConfig, TritonMaxClock};
use eali::sim::{Policy, SimConfig, SpanTable, Workload, WorkloadKind, run, truth};

fn bench_des(c: &mut Criterion) {
    let graph = zoo::build("resnet50").expect("zoo model");
    let profile = GpuProfile::builtin("v100").expect("built-in profile");
    let slo = 0.05;
    let f_max = profile.max_clock_mhz();
    let exec = truth::batch_times_s(&graph, &profile, 64, f_max);
    let cfg = TritonConfig::for_slo(&exec, slo);
    let capacity = f64::from(cfg.max_batch) / exec[cfg.max_batch as usize - 1];
    let arrivals = Workload::new(WorkloadKind::Poisson, 0.7 * capacity, 60.0)
        .generate(1)
        .expect("workload");
    let proto = SimGpu::new(profile.clone(), 0, 1);
    let policy = TritonMaxClock::max_clock(graph.layers.len(), f_max, cfg);
    let spans = SpanTable::build(&proto, policy.units(), policy.max_batch(), |l, b| {
        graph.layer_work(l, b)
    });
    let mut group = c.benchmark_group("des");
    group.throughput(Throughput::Elements(arrivals.len() as u64));
    group.sample_size(10);
    group.bench_function("resnet50_v100_max_clock_70pct", |b| {
        b.iter(|| {
            let mut gpu = proto.clone();
            let mut p = policy.clone();
            run(&mut gpu, &spans, &mut p, &arrivals, &SimConfig::new(slo)).expect("run")
        })
    });
    group.finish();
}

criterion_group!(benches, bench_des);
criterion_main!(benches);
