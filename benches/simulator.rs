//! Simulator throughput: simulated requests per wall-clock second of the event loop on the
//! calibrated simulated GPU, for ResNet-50 on a V100 at 70 % of max-clock capacity (Poisson
//! arrivals, 60 s of simulated time per iteration), with max clocks + Triton batching and with
//! EALI's controller (its per-batch decisions and clock plans included). Criterion reports the
//! throughput as elements (requests) per second.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench's setup failing is a failed bench

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use eali::gpu::sim::SimGpu;
use eali::sim::bench::{PolicyId, Testbed, policies, predicted_costs};
use eali::sim::{SimConfig, SpanTable, Workload, WorkloadKind, run};

fn bench_des(c: &mut Criterion) {
    let bed = Testbed::new("resnet50", "v100-sxm2", 64, 1, &predicted_costs).expect("testbed");
    let slo = 0.1;
    let arrivals = Workload::new(WorkloadKind::Poisson, 0.7 * bed.capacity(slo), 60.0)
        .generate(1)
        .expect("workload");
    let mut group = c.benchmark_group("des");
    group.throughput(Throughput::Elements(arrivals.len() as u64));
    group.sample_size(10);
    for id in [PolicyId::MaxClock, PolicyId::Eali] {
        let proto = policies::build(id, &bed, slo, &arrivals).expect("policy");
        let gpu0 = SimGpu::new(bed.profile.clone(), 0, 1);
        let spans = SpanTable::build(&gpu0, proto.units(), proto.max_batch(), |l, b| {
            bed.graph.layer_work(l, b)
        });
        group.bench_function(format!("resnet50_v100_{}_70pct", id.name()), |b| {
            b.iter(|| {
                let mut gpu = gpu0.clone();
                let mut p = policies::build(id, &bed, slo, &arrivals).expect("policy");
                run(
                    &mut gpu,
                    &spans,
                    p.as_mut(),
                    &arrivals,
                    &SimConfig::new(slo),
                )
                .expect("run")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_des);
criterion_main!(benches);
