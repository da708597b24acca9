//! Parameters of a model for the CPU reference executor: a seeded initialiser for zoo models (no
//! trained weights ship with EALI) and a safetensors loader/writer so trained models can be
//! served.
//!
//! Tensor names follow PyTorch's `state_dict` of the torchvision module with the layer's name as
//! prefix (`layer1.0.conv1.weight`, `layer1.0.bn1.running_var`, `fc.bias`), which the zoo's layer
//! names already are, so a torchvision checkpoint converted to safetensors loads as it is.

use std::collections::HashMap;
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use super::ExecError;
pub use crate::model::LayerWeights;
use crate::model::{Graph, LayerId, Op};

/// BatchNorm ε of PyTorch's `nn.BatchNorm2d`.
pub const BN_EPS: f32 = 1e-5;
/// torchvision's Inception-v3 builds its BatchNorms with ε = 0.001.
const INCEPTION_V3_BN_EPS: f32 = 1e-3;

/// All parameters of a graph, indexed like its layers.
#[derive(Debug, Clone, PartialEq)]
pub struct Weights {
    pub layers: Vec<LayerWeights>,
}

/// A named parameter tensor a layer needs: name suffix and shape.
struct Slot {
    suffix: &'static str,
    shape: Vec<usize>,
}

/// The tensors layer `id` holds, in a fixed order, with their shapes.
fn slots(graph: &Graph, id: LayerId) -> Vec<Slot> {
    let l = &graph.layers[id];
    let x = graph.input_shape_of(id);
    let u = |v: u32| v as usize;
    let slot = |suffix, shape| Slot { suffix, shape };
    match l.op {
        Op::Conv2d {
            out_channels,
            kernel,
            groups,
            bias,
            ..
        } => {
            let mut v = vec![slot(
                "weight",
                vec![
                    u(out_channels),
                    u(x.c / groups.max(1)),
                    u(kernel.0),
                    u(kernel.1),
                ],
            )];
            if bias {
                v.push(slot("bias", vec![u(out_channels)]));
            }
            v
        }
        Op::BatchNorm => ["weight", "bias", "running_mean", "running_var"]
            .into_iter()
            .map(|s| slot(s, vec![u(x.c)]))
            .collect(),
        Op::Linear { out_features, bias } => {
            let fin = x.elements() as usize;
            let mut v = vec![slot("weight", vec![u(out_features), fin])];
            if bias {
                v.push(slot("bias", vec![u(out_features)]));
            }
            v
        }
        _ => Vec::new(),
    }
}

fn bn_eps(graph: &Graph) -> f32 {
    if graph.name == "inception_v3" {
        INCEPTION_V3_BN_EPS
    } else {
        BN_EPS
    }
}

/// Assembles a layer's weights from its slot tensors (in [`slots`] order).
fn assemble(op: &Op, mut tensors: Vec<Vec<f32>>, eps: f32) -> LayerWeights {
    let mut next = || tensors.remove(0);
    match op {
        Op::Conv2d { bias, .. } => LayerWeights::Conv {
            weight: next(),
            bias: bias.then(&mut next),
        },
        Op::Linear { bias, .. } => LayerWeights::Linear {
            weight: next(),
            bias: bias.then(&mut next),
        },
        Op::BatchNorm => LayerWeights::BatchNorm {
            gamma: next(),
            beta: next(),
            mean: next(),
            var: next(),
            eps,
        },
        _ => LayerWeights::None,
    }
}

impl Weights {
    /// Deterministic weights for `graph` under `seed`.
    ///
    /// Convolution and linear weights are uniform with variance 2/fan-in (He), which keeps
    /// activation magnitudes steady through ReLU networks; biases are uniform in ±1/√fan-in
    /// (PyTorch's default). BatchNorm statistics are drawn near identity, except that the
    /// BatchNorm closing a residual branch gets a small scale (in [0, 0.2)), as in Fixup-style
    /// initialisation: with a hundred blocks, full-scale branches would double the activation
    /// variance per block and overflow FP32 logits.
    pub fn seeded(graph: &Graph, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let branch_ends = residual_branch_ends(graph);
        let eps = bn_eps(graph);
        let layers = (0..graph.layers.len())
            .map(|id| {
                let op = &graph.layers[id].op;
                let feeds_add = branch_ends.contains(&id);
                let tensors = slots(graph, id)
                    .into_iter()
                    .map(|s| {
                        let n: usize = s.shape.iter().product();
                        let fan_in: usize = s.shape.iter().skip(1).product::<usize>().max(1);
                        let (lo, hi) = match (op, s.suffix) {
                            (Op::BatchNorm, "weight") if feeds_add => (0.0, 0.2),
                            (Op::BatchNorm, "weight" | "running_var") => (0.8, 1.2),
                            (Op::BatchNorm, _) => (-0.1, 0.1),
                            (_, "bias") => {
                                let b = 1.0 / (slot_fan_in(graph, id) as f32).sqrt();
                                (-b, b)
                            }
                            _ => {
                                let b = (6.0 / fan_in as f32).sqrt();
                                (-b, b)
                            }
                        };
                        (0..n).map(|_| rng.random_range(lo..hi)).collect()
                    })
                    .collect();
                assemble(op, tensors, eps)
            })
            .collect();
        Self { layers }
    }

    /// Reads every parameter of `graph` from safetensors bytes. FP32, FP16, BF16 and FP64
    /// tensors are accepted (converted to FP32); extra tensors (e.g. `num_batches_tracked`) are
    /// ignored; a missing tensor or a wrong shape is an error naming the tensor.
    pub fn from_safetensors(graph: &Graph, bytes: &[u8]) -> Result<Self, ExecError> {
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| ExecError::Weights(format!("not a safetensors file: {e}")))?;
        let eps = bn_eps(graph);
        let mut layers = Vec::with_capacity(graph.layers.len());
        for (id, layer) in graph.layers.iter().enumerate() {
            let mut tensors = Vec::new();
            for s in slots(graph, id) {
                let name = format!("{}.{}", layer.name, s.suffix);
                let view = st
                    .tensor(&name)
                    .map_err(|_| ExecError::Weights(format!("missing tensor {name}")))?;
                if view.shape() != s.shape.as_slice() {
                    return Err(ExecError::Weights(format!(
                        "tensor {name} has shape {:?}, layer needs {:?}",
                        view.shape(),
                        s.shape
                    )));
                }
                tensors.push(to_f32(&name, &view)?);
            }
            layers.push(assemble(&layer.op, tensors, eps));
        }
        Ok(Self { layers })
    }

    /// Reads a safetensors file.
    pub fn load(graph: &Graph, path: &Path) -> Result<Self, ExecError> {
        let bytes = std::fs::read(path)
            .map_err(|e| ExecError::Weights(format!("cannot read {}: {e}", path.display())))?;
        Self::from_safetensors(graph, &bytes)
    }

    /// Writes the weights as safetensors (FP32), under the names [`Weights::from_safetensors`]
    /// reads.
    pub fn to_safetensors(&self, graph: &Graph) -> Result<Vec<u8>, ExecError> {
        self.to_safetensors_with(graph, HashMap::new())
    }

    /// [`Weights::to_safetensors`] with header metadata (e.g. the architecture the weights are
    /// for, see [`crate::serve::source`]).
    pub fn to_safetensors_with(
        &self,
        graph: &Graph,
        metadata: HashMap<String, String>,
    ) -> Result<Vec<u8>, ExecError> {
        let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (id, (layer, w)) in graph.layers.iter().zip(&self.layers).enumerate() {
            let values: Vec<&Vec<f32>> = match w {
                LayerWeights::None => Vec::new(),
                LayerWeights::Conv { weight, bias } | LayerWeights::Linear { weight, bias } => {
                    std::iter::once(weight).chain(bias.as_ref()).collect()
                }
                LayerWeights::BatchNorm {
                    gamma,
                    beta,
                    mean,
                    var,
                    ..
                } => vec![gamma, beta, mean, var],
            };
            for (s, v) in slots(graph, id).into_iter().zip(values) {
                let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                owned.push((format!("{}.{}", layer.name, s.suffix), s.shape, bytes));
            }
        }
        let mut views = HashMap::new();
        for (name, shape, bytes) in &owned {
            let view = TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map_err(|e| ExecError::Weights(format!("{name}: {e}")))?;
            views.insert(name.clone(), view);
        }
        let metadata = (!metadata.is_empty()).then_some(metadata);
        safetensors::serialize(views, metadata).map_err(|e| ExecError::Weights(e.to_string()))
    }

    /// Checks that every layer holds weights of the kind and size its operator needs.
    pub fn check(&self, graph: &Graph) -> Result<(), ExecError> {
        if self.layers.len() != graph.layers.len() {
            return Err(ExecError::Weights(format!(
                "{} weight entries for {} layers",
                self.layers.len(),
                graph.layers.len()
            )));
        }
        for (id, (layer, w)) in graph.layers.iter().zip(&self.layers).enumerate() {
            let want: Vec<usize> = slots(graph, id)
                .iter()
                .map(|s| s.shape.iter().product())
                .collect();
            let have: Vec<usize> = match (w, &layer.op) {
                (LayerWeights::None, op) if want.is_empty() && !has_params(op) => Vec::new(),
                (LayerWeights::Conv { weight, bias }, Op::Conv2d { .. })
                | (LayerWeights::Linear { weight, bias }, Op::Linear { .. }) => {
                    std::iter::once(weight.len())
                        .chain(bias.as_ref().map(Vec::len))
                        .collect()
                }
                (
                    LayerWeights::BatchNorm {
                        gamma,
                        beta,
                        mean,
                        var,
                        ..
                    },
                    Op::BatchNorm,
                ) => vec![gamma.len(), beta.len(), mean.len(), var.len()],
                _ => {
                    return Err(ExecError::Weights(format!(
                        "layer {} ({}) has weights of the wrong kind",
                        layer.name,
                        layer.op.kind_name()
                    )));
                }
            };
            if have != want {
                return Err(ExecError::Weights(format!(
                    "layer {}: weight sizes {have:?}, expected {want:?}",
                    layer.name
                )));
            }
        }
        Ok(())
    }
}

/// BatchNorms that end a residual branch: every BatchNorm input of an Add, except that when all
/// of an Add's inputs are BatchNorms the last-built one is the projection shortcut (the zoo builds
/// the shortcut after the branch) and keeps its full scale.
fn residual_branch_ends(graph: &Graph) -> Vec<LayerId> {
    let mut ends = Vec::new();
    for l in graph.layers.iter().filter(|l| matches!(l.op, Op::Add)) {
        let bns: Vec<LayerId> = l
            .inputs
            .iter()
            .copied()
            .filter(|&i| matches!(graph.layers[i].op, Op::BatchNorm))
            .collect();
        let shortcut = (bns.len() == l.inputs.len())
            .then(|| bns.iter().copied().max())
            .flatten();
        ends.extend(bns.into_iter().filter(|&i| Some(i) != shortcut));
    }
    ends
}

fn has_params(op: &Op) -> bool {
    matches!(op, Op::Conv2d { .. } | Op::Linear { .. } | Op::BatchNorm)
}

/// Fan-in of a conv/linear layer's weight (for the bias range).
fn slot_fan_in(graph: &Graph, id: LayerId) -> usize {
    slots(graph, id)
        .first()
        .map_or(1, |s| s.shape.iter().skip(1).product::<usize>().max(1))
}

fn to_f32(name: &str, view: &TensorView<'_>) -> Result<Vec<f32>, ExecError> {
    let data = view.data();
    let conv = |width: usize, f: &dyn Fn(&[u8]) -> f32| data.chunks_exact(width).map(f).collect();
    Ok(match view.dtype() {
        Dtype::F32 => conv(4, &|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        Dtype::F64 => conv(8, &|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            f64::from_le_bytes(a) as f32
        }),
        Dtype::F16 => conv(2, &|b| half_to_f32(u16::from_le_bytes([b[0], b[1]]))),
        // bfloat16 is the top half of an f32.
        Dtype::BF16 => conv(2, &|b| {
            f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16)
        }),
        other => {
            return Err(ExecError::Weights(format!(
                "tensor {name} is {other:?}; FP32, FP16, BF16 or FP64 expected"
            )));
        }
    })
}

/// IEEE 754 binary16 to f32 (subnormals, infinities and NaN included).
pub(crate) fn half_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let frac = f32::from(h & 0x3ff);
    match exp {
        0 => sign * frac * 2f32.powi(-24),
        31 if frac == 0.0 => sign * f32::INFINITY,
        31 => f32::NAN,
        e => sign * (1.0 + frac / 1024.0) * 2f32.powi(e - 15),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Conv, GraphBuilder, Shape};

    fn small() -> Graph {
        let mut b = GraphBuilder::new("small", Shape::new(2, 4, 4));
        let x = b.input();
        let y = b
            .conv("conv", x, Conv::new(3, 3).padding(1).bias(true))
            .unwrap();
        let y = b.batch_norm("bn", y).unwrap();
        let y = b.global_avg_pool("gap", y).unwrap();
        let y = b.flatten("flat", y).unwrap();
        b.linear("fc", y, 5, true).unwrap();
        b.finish().unwrap()
    }

    #[test]
    fn seeded_is_deterministic_and_well_formed() {
        let g = small();
        let a = Weights::seeded(&g, 7);
        assert_eq!(a, Weights::seeded(&g, 7));
        assert_ne!(a, Weights::seeded(&g, 8));
        a.check(&g).unwrap();
        match &a.layers[0] {
            LayerWeights::Conv { weight, bias } => {
                assert_eq!(weight.len(), 3 * 2 * 9);
                let bound = (6.0f32 / 18.0).sqrt();
                assert!(weight.iter().all(|w| w.abs() <= bound));
                assert_eq!(bias.as_ref().map(Vec::len), Some(3));
            }
            other => panic!("conv got {other:?}"),
        }
    }

    #[test]
    fn safetensors_round_trip_and_errors() {
        let g = small();
        let w = Weights::seeded(&g, 3);
        let bytes = w.to_safetensors(&g).unwrap();
        assert_eq!(Weights::from_safetensors(&g, &bytes).unwrap(), w);

        // A graph whose fc has another width: the shape error names the tensor.
        let mut b = GraphBuilder::new("small", Shape::new(2, 4, 4));
        let x = b.input();
        let y = b
            .conv("conv", x, Conv::new(3, 3).padding(1).bias(true))
            .unwrap();
        let y = b.batch_norm("bn", y).unwrap();
        let y = b.global_avg_pool("gap", y).unwrap();
        let y = b.flatten("flat", y).unwrap();
        b.linear("fc", y, 6, true).unwrap();
        let other = b.finish().unwrap();
        let err = Weights::from_safetensors(&other, &bytes).unwrap_err();
        assert!(err.to_string().contains("fc.weight"), "{err}");

        let mut b = GraphBuilder::new("more", Shape::new(2, 4, 4));
        let x = b.input();
        b.conv("extra", x, Conv::new(1, 1)).unwrap();
        let err = Weights::from_safetensors(&b.finish().unwrap(), &bytes).unwrap_err();
        assert!(
            err.to_string().contains("missing tensor extra.weight"),
            "{err}"
        );

        assert!(Weights::from_safetensors(&g, b"garbage").is_err());
    }

    #[test]
    fn half_precision_conversion() {
        assert_eq!(half_to_f32(0x3c00), 1.0);
        assert_eq!(half_to_f32(0xc000), -2.0);
        assert_eq!(half_to_f32(0x7bff), 65504.0);
        assert_eq!(half_to_f32(0x0001), 2f32.powi(-24));
        assert!(half_to_f32(0x7e00).is_nan());
        assert_eq!(half_to_f32(0x7c00), f32::INFINITY);
    }
}
