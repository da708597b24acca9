//! `eali models`: the model zoo with parameters and MACs beside torchvision's published figures,
//! or, given a model name, that model's layers with their per-batch cost.

use std::fmt::Write as _;
use std::io::Write as _;

use anyhow::Context as _;
use serde::Serialize;

use crate::gpu::WorkKind;
use crate::model::{Graph, LayerCost, Shape, zoo};

/// Operators `--onnx` reads, for the help text.
const ONNX_HELP: &str = "ONNX model file to import and list, layer by layer (operator sets 7-21; \
Conv, BatchNormalization, Relu, Clip, LeakyRelu, Sigmoid, HardSigmoid, HardSwish, MaxPool, \
AveragePool, GlobalAveragePool, Gemm, MatMul, Add/Sub/Mul/Div by per-channel constants, Add of \
two tensors, Concat, Flatten, Reshape, Squeeze, Unsqueeze, Shape/Gather/Constant/Cast on shapes, \
Softmax, LRN, Dropout, Identity)";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Show the layers of this model (name or alias, e.g. "resnet-50") instead of the zoo.
    #[arg(conflicts_with = "onnx")]
    pub model: Option<String>,
    #[arg(long, value_name = "FILE", help = ONNX_HELP)]
    pub onnx: Option<std::path::PathBuf>,
    /// Batch size for the per-layer costs of `MODEL`.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let imported = match &args.onnx {
        Some(path) => {
            let s = crate::serve::source::load_onnx(path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            Some(s)
        }
        None => None,
    };
    let out = match (&args.model, imported) {
        (_, Some(src)) => {
            let g = &src.graph;
            let rows = layer_rows(g, args.batch);
            if args.json {
                serde_json::to_string_pretty(&rows)?
            } else {
                let mut t = String::new();
                if let Some(io) = &src.io {
                    let dims =
                        |d: &[i64]| d.iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
                    let batch = if io.batch_fixed { "1" } else { "N" };
                    let _ = writeln!(
                        t,
                        "ONNX input {} [{batch}, {}] FP32 -> output {} [{batch}, {}] FP32",
                        io.input,
                        dims(&io.input_dims),
                        io.output,
                        dims(&io.output_dims)
                    );
                }
                t.push_str(&layer_table(g, args.batch, &rows));
                t
            }
        }
        (None, None) => {
            let rows = zoo_rows()?;
            if args.json {
                serde_json::to_string_pretty(&rows)?
            } else {
                zoo_table(&rows)
            }
        }
        (Some(name), None) => {
            let g = zoo::build(name)?;
            let rows = layer_rows(&g, args.batch);
            if args.json {
                serde_json::to_string_pretty(&rows)?
            } else {
                layer_table(&g, args.batch, &rows)
            }
        }
    };
    // `eali models | head` closes the pipe early; that is not an error worth a panic.
    match writeln!(std::io::stdout().lock(), "{out}") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

#[derive(Debug, Serialize)]
struct ZooRow {
    name: &'static str,
    input: Shape,
    layers: usize,
    params: u64,
    /// Multiply-accumulates per image.
    macs: u64,
    reference: zoo::Reference,
    /// (ours − reference) / reference, in percent.
    params_dev_pct: f64,
    gmacs_dev_pct: f64,
}

fn zoo_rows() -> anyhow::Result<Vec<ZooRow>> {
    zoo::entries()
        .iter()
        .map(|e| {
            let g = zoo::build(e.name).with_context(|| format!("building {}", e.name))?;
            let params = g.total_params();
            let macs = g.total_macs(1);
            let r = e.reference;
            Ok(ZooRow {
                name: e.name,
                input: g.input,
                layers: g.len(),
                params,
                macs,
                reference: r,
                params_dev_pct: pct(params as f64, r.params as f64),
                gmacs_dev_pct: pct(macs as f64 / 1e9, r.gmacs),
            })
        })
        .collect()
}

fn pct(ours: f64, reference: f64) -> f64 {
    100.0 * (ours - reference) / reference
}

fn zoo_table(rows: &[ZooRow]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<13} {:>9} {:>6} {:>10} {:>10} {:>7} {:>8} {:>8} {:>7}",
        "model", "input", "layers", "params(M)", "ref(M)", "dev", "GMACs", "ref", "dev"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:<13} {:>9} {:>6} {:>10.3} {:>10.3} {:>+6.2}% {:>8.3} {:>8.2} {:>+6.2}%",
            r.name,
            r.input.to_string(),
            r.layers,
            r.params as f64 / 1e6,
            r.reference.params as f64 / 1e6,
            r.params_dev_pct,
            r.macs as f64 / 1e9,
            r.reference.gmacs,
            r.gmacs_dev_pct,
        );
    }
    let _ = write!(
        s,
        "GMACs at batch 1 from convolutions and linear layers; references: torchvision \
         num_params/GFLOPS (inception_v3 without its training-only aux head)."
    );
    s
}

#[derive(Debug, Serialize)]
struct LayerRow {
    id: usize,
    name: String,
    op: &'static str,
    kind: WorkKind,
    inputs: Vec<usize>,
    output: Shape,
    #[serde(flatten)]
    cost: LayerCost,
    flops: f64,
}

fn layer_rows(g: &Graph, batch: u32) -> Vec<LayerRow> {
    g.layers
        .iter()
        .map(|l| {
            let work = g.layer_work(l.id, batch);
            LayerRow {
                id: l.id,
                name: l.name.clone(),
                op: l.op.kind_name(),
                kind: work.kind,
                inputs: l.inputs.clone(),
                output: l.output,
                cost: g.layer_cost(l.id, batch),
                flops: work.flops,
            }
        })
        .collect()
}

fn layer_table(g: &Graph, batch: u32, rows: &[LayerRow]) -> String {
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(5).max(5);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{}: input {}, batch {batch}, {} layers",
        g.name,
        g.input,
        g.len()
    );
    let _ = writeln!(
        s,
        "{:>4} {:<width$} {:<15} {:>12} {:>10} {:>10} {:>9} {:>9}",
        "id", "layer", "op", "output", "params", "MMACs", "read MB", "write MB"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:>4} {:<width$} {:<15} {:>12} {:>10} {:>10.2} {:>9.3} {:>9.3}",
            r.id,
            r.name,
            r.op,
            r.output.to_string(),
            r.cost.params,
            r.cost.macs as f64 / 1e6,
            r.cost.bytes_read as f64 / 1e6,
            r.cost.bytes_written as f64 / 1e6,
        );
    }
    let t = g.total_cost(batch);
    let _ = write!(
        s,
        "total: {} params, {:.3} GMACs, {:.1} MB read, {:.1} MB written",
        t.params,
        t.macs as f64 / 1e9,
        t.bytes_read as f64 / 1e6,
        t.bytes_written as f64 / 1e6
    );
    s
}
