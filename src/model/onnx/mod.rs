//! ONNX import: a model file (operator sets 7–21) into the graph IR and its FP32 parameters, so
//! cost figures, unit combination, the planner, the simulator and the executors work on it as on
//! a zoo model.
//!
//! The IR holds per-sample tensors of shape `C × H × W` (a vector is `K × 1 × 1`) with the batch
//! as the first ONNX dimension. The importer walks the nodes in their (topological) order,
//! keeping for every ONNX tensor either a constant (initializers, `Constant` nodes, and integer
//! shape arithmetic folded with the batch size as a symbol) or an activation: the IR layer that
//! produces it and its ONNX dimensions per sample. Operators map to IR layers one to one, except
//! where the IR says the same thing more directly: `Mul`/`Add` by a per-channel constant become a
//! per-channel affine layer (a batch norm in inference form), `MatMul` followed by `Add` of a
//! vector becomes one linear layer with a bias, and `Reshape`/`Squeeze`/`Unsqueeze`/`Flatten`
//! that leave the memory layout as it is become no layer at all. Whatever the IR cannot hold is
//! refused with the node, its operator and the reason.
//!
//! Files are read by the caller: [`import`] takes the model's bytes and a reader for the external
//! data files it names.

use std::collections::{HashMap, HashSet};

use prost::Message;

use super::{Graph, LayerWeights, ModelError, Shape, Tensor};

mod ops;
mod tensor;

pub use tensor::{Const, ConstData, ExternalReader, Int};

/// Types generated from ONNX's `onnx.proto` (`proto/onnx/onnx.proto`).
#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

/// Lowest and highest default-domain operator set the importer reads.
pub const OPSET_MIN: i64 = 7;
pub const OPSET_MAX: i64 = 21;

/// Why an ONNX model was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum OnnxError {
    #[error(
        "not a readable ONNX model: the protobuf does not decode ({0}); is the file truncated or corrupt?"
    )]
    Decode(String),
    #[error("{0}")]
    Model(String),
    #[error("node {node} ({op}): {reason}")]
    Node {
        node: String,
        op: String,
        reason: String,
    },
    #[error("{tensor}: {reason}")]
    Tensor { tensor: String, reason: String },
    #[error("external data file {file} (for {tensor}): {reason}")]
    ExternalData {
        file: String,
        tensor: String,
        reason: String,
    },
    #[error("the imported graph is inconsistent: {0}")]
    Graph(#[from] ModelError),
}

/// The graph's input and output as the ONNX file names them, per sample (without the batch).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorIo {
    pub input: String,
    pub output: String,
    /// ONNX dimensions of one input sample, e.g. `[3, 224, 224]`.
    pub input_dims: Vec<i64>,
    /// ONNX dimensions of one output sample, e.g. `[1000]`.
    pub output_dims: Vec<i64>,
    /// Whether the file fixes the batch dimension to 1 (else it is symbolic).
    pub batch_fixed: bool,
}

/// An imported model.
#[derive(Debug, Clone, PartialEq)]
pub struct OnnxModel {
    pub graph: Graph,
    /// Parameters, indexed like the graph's layers.
    pub weights: Vec<LayerWeights>,
    pub io: TensorIo,
    /// Default-domain operator set the file was exported at.
    pub opset: i64,
    /// `producer_name producer_version` of the file.
    pub producer: String,
}

/// Imports the model in `bytes` as a graph called `name`; `external` reads the external data
/// files the model names (paths relative to the model file).
pub fn import(
    bytes: &[u8],
    name: &str,
    external: &mut ExternalReader<'_>,
) -> Result<OnnxModel, OnnxError> {
    let model = proto::ModelProto::decode(bytes).map_err(|e| OnnxError::Decode(e.to_string()))?;
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| OnnxError::Decode("the model holds no graph".into()))?;
    if graph.node.is_empty() && graph.input.is_empty() {
        // A protobuf decodes from almost any bytes; an empty graph means it was not a model.
        return Err(OnnxError::Decode("the model's graph is empty".into()));
    }
    let opset = default_opset(&model)?;
    let producer = format!("{} {}", model.producer_name(), model.producer_version())
        .trim()
        .to_string();
    let mut decoder = tensor::TensorDecoder::new(external);
    let mut cx = ops::Importer::new(name, graph, opset, &mut decoder)?;
    cx.run()?;
    let (graph, weights, io) = cx.finish()?;
    graph.validate()?;
    Ok(OnnxModel {
        graph,
        weights,
        io,
        opset,
        producer,
    })
}

fn default_opset(model: &proto::ModelProto) -> Result<i64, OnnxError> {
    let v = model
        .opset_import
        .iter()
        .find(|o| matches!(o.domain(), "" | "ai.onnx"))
        .map(|o| o.version())
        .ok_or_else(|| {
            OnnxError::Model("the model imports no default (ai.onnx) operator set".into())
        })?;
    if !(OPSET_MIN..=OPSET_MAX).contains(&v) {
        return Err(OnnxError::Model(format!(
            "the model uses ai.onnx opset {v}; EALI reads opsets {OPSET_MIN} to {OPSET_MAX} \
             (convert it, e.g. with onnx.version_converter)"
        )));
    }
    Ok(v)
}

/// An ONNX value during import.
#[derive(Debug, Clone)]
enum Value {
    Const(Const),
    /// A computed tensor: its IR producer (the graph input when `None`) and its ONNX dimensions
    /// per sample (rank 1 or 3).
    Act {
        src: Tensor,
        dims: Vec<u32>,
    },
}

/// The IR shape a tensor with these per-sample ONNX dimensions has: `[K]` is `K × 1 × 1`,
/// `[C, H, W]` is itself; other ranks have none.
fn ir_shape(dims: &[u32]) -> Option<Shape> {
    match *dims {
        [k] => Some(Shape::new(k, 1, 1)),
        [c, h, w] => Some(Shape::new(c, h, w)),
        _ => None,
    }
}

/// Node names the IR can use: the node's name, else its first output, made unique.
fn layer_names(nodes: &[proto::NodeProto]) -> Vec<String> {
    let mut seen = HashSet::new();
    nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let base = [n.name(), n.output.first().map_or("", String::as_str)]
                .into_iter()
                .find(|s| !s.is_empty())
                .map_or_else(|| format!("{}_{i}", n.op_type()), str::to_string);
            let mut name = base.clone();
            let mut k = 1;
            while !seen.insert(name.clone()) {
                name = format!("{base}_{k}");
                k += 1;
            }
            name
        })
        .collect()
}

/// How a node is named in errors: its name, else its index and first output.
fn node_label(i: usize, n: &proto::NodeProto) -> String {
    if !n.name().is_empty() {
        n.name().to_string()
    } else {
        format!(
            "#{i} (output {})",
            n.output.first().map_or("?", String::as_str)
        )
    }
}

/// Nodes that contribute to `outputs`, by index.
fn live_nodes(nodes: &[proto::NodeProto], outputs: &[String]) -> Vec<bool> {
    let mut needed: HashSet<&str> = outputs.iter().map(String::as_str).collect();
    let mut live = vec![false; nodes.len()];
    for (i, n) in nodes.iter().enumerate().rev() {
        if n.output.iter().any(|o| needed.contains(o.as_str())) {
            live[i] = true;
            needed.extend(n.input.iter().map(String::as_str).filter(|s| !s.is_empty()));
        }
    }
    live
}

/// For every tensor name, the live nodes that read it.
fn readers(nodes: &[proto::NodeProto], live: &[bool]) -> HashMap<String, Vec<usize>> {
    let mut out: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, n) in nodes.iter().enumerate().filter(|(i, _)| live[*i]) {
        for x in n.input.iter().filter(|s| !s.is_empty()) {
            out.entry(x.clone()).or_default().push(i);
        }
    }
    out
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
