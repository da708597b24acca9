//! `eali load`: open-loop load against any Open Inference Protocol v2 endpoint (REST or gRPC);
//! prints throughput, latency percentiles, SLO attainment and errors, or JSON.

use std::path::PathBuf;

use crate::load::{LoadConfig, Protocol, run as run_load};
use crate::sim::workload::{Workload, WorkloadKind};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Endpoint base URL (REST default port 8000, gRPC 8001).
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
    #[arg(long, value_enum, default_value_t = Protocol::Rest)]
    pub protocol: Protocol,
    /// Model name on the server.
    #[arg(long, default_value = "resnet50")]
    pub model: String,
    /// Arrival process: poisson, bursty, step, step:L1,L2,…:SEGMENT_S (levels relative to each
    /// other around the mean rate, e.g. step:4,1,1:10 is 2× the rate for 10 s then ½× for 20 s),
    /// diurnal or trace:PATH (timestamps, one per line or a CSV with a `timestamp` column).
    #[arg(long, default_value = "poisson")]
    pub workload: String,
    /// Mean request rate (req/s).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Run length (s).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// SLO to judge attainment against (ms).
    #[arg(long, default_value_t = 50.0)]
    pub slo_ms: f64,
    /// REST: send tensors as JSON arrays instead of the binary tensor data extension.
    #[arg(long)]
    pub json_tensors: bool,
    /// REST: send each request's body only after the server answers `100 Continue` to its
    /// headers (`Expect: 100-continue`, as curl does for large bodies), so that a request the
    /// server refuses from its headers costs no body.
    #[arg(long)]
    pub expect_continue: bool,
    /// Per-request timeout (s).
    #[arg(long, default_value_t = 10.0, value_parser = super::serve::positive_secs)]
    pub timeout: f64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also print a table per second of send time: sent, answered, refused, answered p99.
    #[arg(long)]
    pub timeline: bool,
    /// Also write the JSON report to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let kind = WorkloadKind::parse(&a.workload)?;
    let cfg = LoadConfig {
        url: a.url.clone(),
        protocol: a.protocol,
        model: a.model.clone(),
        workload: Workload::new(kind, a.rate, a.duration),
        seed: a.seed,
        slo_ms: a.slo_ms,
        binary: !a.json_tensors,
        timeout_s: a.timeout,
        expect_continue: a.expect_continue,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(run_load(&cfg))?;
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(p) = &a.out {
        std::fs::write(p, &json)?;
    }
    if a.json {
        println!("{json}");
    } else {
        println!("{}", report.text());
        if a.timeline {
            print!("{}", report.timeline_text());
        }
    }
    Ok(())
}
