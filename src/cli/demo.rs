//! `eali demo`: the one-minute tour. Serves ResNet-50 on a simulated V100 with a latency SLO,
//! drives it with `eali load` through a rising and falling load, once under EALI and once under
//! max clocks (Triton-like dynamic batching), and prints side by side the energy per request, the
//! p99 latency, SLO attainment and where the energy went per layer.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

use super::serve::{Args as ServeArgs, flags_config, options};
use crate::load::{self, LoadConfig, LoadReport, Protocol};
use crate::serve::{Compute, Server};
use crate::sim::bench::{Testbed, predicted_costs};
use crate::sim::workload::{Workload, WorkloadKind};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long, default_value = "resnet50")]
    pub model: String,
    /// Simulated GPU profile.
    #[arg(long, default_value = "v100-sxm2")]
    pub gpu: String,
    #[arg(long, default_value_t = 50)]
    pub slo_ms: u32,
    #[arg(long, default_value_t = 32)]
    pub max_batch: u32,
    /// Length of each of the two runs (s).
    #[arg(long, default_value_t = 25.0)]
    pub duration: f64,
    /// Load levels over the run, as fractions of the max-clock capacity at the SLO.
    #[arg(long, value_delimiter = ',', default_values_t = [0.1, 0.25, 0.45, 0.65, 0.45, 0.25, 0.1])]
    pub levels: Vec<f64>,
    /// Protocol `eali load` speaks.
    #[arg(long, value_enum, default_value_t = Protocol::Rest)]
    pub protocol: Protocol,
    /// Layers to list in the energy breakdown.
    #[arg(long, default_value_t = 12)]
    pub top: usize,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// One policy's run.
#[derive(Debug, Serialize)]
struct Run {
    policy: String,
    load: LoadReport,
    gpu_energy_j: f64,
    joules_per_request: f64,
    /// (unit, layer) -> joules.
    layers: Vec<(String, String, f64)>,
}

fn serve_args(a: &Args, policy: &str) -> ServeArgs {
    ServeArgs {
        config: None,
        model: a.model.clone(),
        uri: None,
        sha256: None,
        pvc_root: crate::serve::source::PVC_MOUNT_ROOT.into(),
        model_cache: crate::k8s::objects::MODEL_CACHE_DIR.into(),
        model_cache_mib: 0,
        name: Some(a.model.clone()),
        slo_ms: a.slo_ms,
        percentile: 99.0,
        max_batch: a.max_batch,
        policy: policy.to_string(),
        gpu: a.gpu.clone(),
        http: SocketAddr::from(([127, 0, 0, 1], 0)),
        grpc: "127.0.0.1:0".into(),
        compute: Compute::None,
        weights: None,
        zero_cost: false,
        device: "sim".into(),
        nvml_lib: None,
        clock_record: None,
        switch_latency: None,
        profiles: Vec::new(),
        power_model: None,
        queue_capacity: 4096,
        deadline_factor: 2.0,
        max_body_mib: 64,
        report_window_secs: 10.0,
        seed: a.seed,
        log_json: false,
    }
}

async fn run_policy(a: &Args, policy: &str, rate: f64) -> anyhow::Result<Run> {
    let sa = serve_args(a, policy);
    let server = Server::bind(&flags_config(&sa)?, options(&sa)?).await?;
    let state = server.state();
    let url = match a.protocol {
        Protocol::Rest => format!("http://{}", server.http_addr()?),
        Protocol::Grpc => format!(
            "http://{}",
            server.grpc_addr()?.context("no gRPC listener")?
        ),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async {
        let _ = stop_rx.await;
    }));
    let segment = a.duration / a.levels.len().max(1) as f64;
    let cfg = LoadConfig {
        url,
        protocol: a.protocol,
        model: a.model.clone(),
        workload: Workload::new(
            WorkloadKind::Step {
                levels: a.levels.clone(),
                segment_s: segment,
            },
            rate,
            a.duration,
        ),
        seed: a.seed,
        slo_ms: f64::from(a.slo_ms),
        binary: true,
        timeout_s: 10.0,
        expect_continue: false,
    };
    let e0 = state.metrics.gpu_energy_j();
    let l0 = state.metrics.layer_energy_j();
    let report = load::run(&cfg).await?;
    // Let the worker's telemetry tick read the counter once more.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let energy = state.metrics.gpu_energy_j() - e0;
    let before: BTreeMap<(String, String), f64> =
        l0.into_iter().map(|(u, l, j)| ((u, l), j)).collect();
    let layers = state
        .metrics
        .layer_energy_j()
        .into_iter()
        .map(|(u, l, j)| {
            let j0 = before.get(&(u.clone(), l.clone())).copied().unwrap_or(0.0);
            (u, l, j - j0)
        })
        .collect();
    let _ = stop_tx.send(());
    serving.await??;
    Ok(Run {
        policy: policy.to_string(),
        joules_per_request: energy / report.ok.max(1) as f64,
        gpu_energy_j: energy,
        load: report,
        layers,
    })
}

pub fn run(a: Args) -> anyhow::Result<()> {
    crate::telemetry::init_tracing(false);
    let slo_s = f64::from(a.slo_ms) / 1000.0;
    println!(
        "eali demo: {} on a simulated {}, SLO p99 <= {} ms, max batch {}",
        a.model, a.gpu, a.slo_ms, a.max_batch
    );
    let bed = Testbed::new(&a.model, &a.gpu, a.max_batch, a.seed, &predicted_costs)?;
    let capacity = bed.capacity(slo_s);
    let mean_level = a.levels.iter().sum::<f64>() / a.levels.len().max(1) as f64;
    let rate = capacity * mean_level;
    println!(
        "max-clock capacity at the SLO: {capacity:.0} req/s; load steps {:?} of it, {:.0} s each, mean {rate:.0} req/s\n",
        a.levels,
        a.duration / a.levels.len().max(1) as f64
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut runs = Vec::new();
    for policy in ["eali", "maxPerformance"] {
        println!("running {policy} for {:.0} s ...", a.duration);
        runs.push(rt.block_on(run_policy(&a, policy, rate))?);
    }
    print!("{}", table(&runs, a.top));
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&runs)?)?;
    }
    Ok(())
}

fn table(runs: &[Run], top: usize) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n{:<28}{:>16}{:>16}",
        "",
        runs[0].policy,
        runs.get(1).map_or("", |r| &r.policy)
    );
    let row = |s: &mut String, name: &str, f: &dyn Fn(&Run) -> String| {
        let _ = write!(s, "{name:<28}");
        for r in runs {
            let _ = write!(s, "{:>16}", f(r));
        }
        let _ = writeln!(s);
    };
    row(&mut s, "requests ok / sent", &|r| {
        format!("{}/{}", r.load.ok, r.load.sent)
    });
    row(&mut s, "energy per request (J)", &|r| {
        format!("{:.3}", r.joules_per_request)
    });
    row(&mut s, "GPU energy (J)", &|r| {
        format!("{:.1}", r.gpu_energy_j)
    });
    row(&mut s, "p50 latency (ms)", &|r| {
        format!("{:.1}", r.load.p50_ms)
    });
    row(&mut s, "p99 latency (ms)", &|r| {
        format!("{:.1}", r.load.p99_ms)
    });
    row(&mut s, "within SLO (%)", &|r| {
        format!("{:.2}", 100.0 * r.load.within_slo)
    });
    row(&mut s, "10 s windows meeting p99 (%)", &|r| {
        format!("{:.0}", 100.0 * r.load.slo_attainment)
    });
    row(&mut s, "errors", &|r| {
        r.load.errors.values().sum::<usize>().to_string()
    });
    if runs.len() == 2 && runs[1].joules_per_request > 0.0 {
        let saved = 1.0 - runs[0].joules_per_request / runs[1].joules_per_request;
        let _ = writeln!(
            s,
            "\n{} uses {:.1} % less energy per request than {}.",
            runs[0].policy,
            100.0 * saved,
            runs[1].policy
        );
    }
    // Per-layer energy: the layers that took the most under the first policy, per request.
    let _ = writeln!(
        s,
        "\nwhere the energy went (mJ per request, top {top} layers by {}):",
        runs[0].policy
    );
    let per_layer = |r: &Run| -> BTreeMap<String, f64> {
        let mut m = BTreeMap::new();
        for (_, l, j) in &r.layers {
            *m.entry(l.clone()).or_insert(0.0) += j * 1e3 / r.load.ok.max(1) as f64;
        }
        m
    };
    let maps: Vec<BTreeMap<String, f64>> = runs.iter().map(per_layer).collect();
    let mut order: Vec<(&String, &f64)> = maps[0].iter().collect();
    order.sort_by(|a, b| b.1.total_cmp(a.1));
    let unit_of: BTreeMap<&str, &str> = runs[0]
        .layers
        .iter()
        .map(|(u, l, _)| (l.as_str(), u.as_str()))
        .collect();
    let _ = writeln!(
        s,
        "{:<28}{:<24}{:>16}{:>16}",
        "layer",
        "unit (eali)",
        runs[0].policy,
        runs.get(1).map_or("", |r| &r.policy)
    );
    for (layer, _) in order.into_iter().take(top) {
        let _ = write!(
            s,
            "{layer:<28}{:<24}",
            unit_of.get(layer.as_str()).copied().unwrap_or("")
        );
        for m in &maps {
            let _ = write!(s, "{:>16.2}", m.get(layer).copied().unwrap_or(0.0));
        }
        let _ = writeln!(s);
    }
    let totals: Vec<f64> = maps.iter().map(|m| m.values().sum()).collect();
    let _ = write!(s, "{:<52}", "all layers (attributed)");
    for t in &totals {
        let _ = write!(s, "{t:>16.2}");
    }
    let _ = writeln!(s);
    // The rest of the GPU's energy ran outside any layer: idle and between batches, where a
    // lower held clock saves the most at light load.
    let _ = write!(s, "{:<52}", "outside the layers (idle, between batches)");
    for (r, t) in runs.iter().zip(&totals) {
        let _ = write!(s, "{:>16.2}", (r.joules_per_request * 1e3 - t).max(0.0));
    }
    let _ = writeln!(s);
    s
}
