//! The importer on models built here with the generated protobuf types; the numerical checks
//! against ONNX Runtime are in `tests/python/test_onnx.py`.

use prost::Message;

use super::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto, attribute_proto, tensor_proto,
    tensor_shape_proto, type_proto,
};
use super::*;
use crate::model::Op;

fn node(name: &str, op: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        name: Some(name.into()),
        op_type: Some(op.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(attribute_proto::AttributeType::Ints as i32),
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(attribute_proto::AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

fn with(mut n: NodeProto, attrs: Vec<AttributeProto>) -> NodeProto {
    n.attribute = attrs;
    n
}

fn floats(name: &str, dims: &[i64], seed: u32) -> TensorProto {
    let count: i64 = dims.iter().product();
    let v: Vec<f32> = (0..count)
        .map(|i| {
            ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) % 1000) as f32 / 1000.0 - 0.5
        })
        .collect();
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(tensor_proto::DataType::Float as i32),
        raw_data: Some(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        ..Default::default()
    }
}

fn int64s(name: &str, v: &[i64]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: vec![v.len() as i64],
        data_type: Some(tensor_proto::DataType::Int64 as i32),
        int64_data: v.to_vec(),
        ..Default::default()
    }
}

fn value_info(name: &str, dims: &[Option<i64>]) -> ValueInfoProto {
    use tensor_shape_proto::dimension::Value as D;
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(tensor_proto::DataType::Float as i32),
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| tensor_shape_proto::Dimension {
                            value: Some(match d {
                                Some(v) => D::DimValue(*v),
                                None => D::DimParam("N".into()),
                            }),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn model(
    opset: i64,
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    input: &[Option<i64>],
) -> ModelProto {
    let out = nodes
        .last()
        .and_then(|n| n.output.first().cloned())
        .unwrap_or_default();
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(opset),
        }],
        producer_name: Some("eali-tests".into()),
        graph: Some(GraphProto {
            name: Some("g".into()),
            node: nodes,
            initializer: inits,
            input: vec![value_info("images", input)],
            output: vec![value_info(&out, &[None])],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn no_files(_: &str) -> Result<Vec<u8>, String> {
    Err("no external files in this test".into())
}

fn import_model(m: &ModelProto) -> Result<OnnxModel, OnnxError> {
    import(&m.encode_to_vec(), "t", &mut no_files)
}

const IMAGE: [Option<i64>; 4] = [None, Some(3), Some(8), Some(8)];

/// conv(pads 0,0,1,1) -> bn -> clip(0,6) -> maxpool -> gap -> shape chain reshape -> gemm
fn classifier() -> ModelProto {
    let nodes = vec![
        with(
            node("conv", "Conv", &["images", "w", "b"], &["c"]),
            vec![
                ints("kernel_shape", &[3, 3]),
                ints("pads", &[0, 0, 1, 1]),
                ints("strides", &[2, 2]),
            ],
        ),
        node(
            "bn",
            "BatchNormalization",
            &["c", "g", "beta", "mean", "var"],
            &["n"],
        ),
        node("relu6", "Clip", &["n", "lo", "hi"], &["r"]),
        node("gap", "GlobalAveragePool", &["r"], &["p"]),
        node("shape", "Shape", &["p"], &["s"]),
        with(
            node("gather", "Gather", &["s", "zero"], &["b0"]),
            vec![int("axis", 0)],
        ),
        node("unsq", "Unsqueeze", &["b0", "axes0"], &["b1"]),
        with(
            node("cat", "Concat", &["b1", "minus1"], &["target"]),
            vec![int("axis", 0)],
        ),
        node("reshape", "Reshape", &["p", "target"], &["flat"]),
        with(
            node("fc", "Gemm", &["flat", "fw", "fb"], &["logits"]),
            vec![int("transB", 1)],
        ),
    ];
    let mut zero = int64s("zero", &[0]);
    zero.dims.clear();
    let scalar = |name: &str, v: f32| TensorProto {
        name: Some(name.into()),
        data_type: Some(tensor_proto::DataType::Float as i32),
        float_data: vec![v],
        ..Default::default()
    };
    let inits = vec![
        floats("w", &[4, 3, 3, 3], 1),
        floats("b", &[4], 2),
        floats("g", &[4], 3),
        floats("beta", &[4], 4),
        floats("mean", &[4], 5),
        TensorProto {
            name: Some("var".into()),
            dims: vec![4],
            data_type: Some(tensor_proto::DataType::Float as i32),
            float_data: vec![1.0, 2.0, 0.5, 1.5],
            ..Default::default()
        },
        scalar("lo", 0.0),
        scalar("hi", 6.0),
        zero,
        int64s("axes0", &[0]),
        int64s("minus1", &[-1]),
        floats("fw", &[5, 4], 6),
        floats("fb", &[5], 7),
    ];
    model(13, nodes, inits, &IMAGE)
}

#[test]
fn a_classifier_imports_with_its_names_shapes_and_weights() {
    let m = import_model(&classifier()).unwrap();
    let kinds: Vec<&str> = m.graph.layers.iter().map(|l| l.op.kind_name()).collect();
    // The shape chain and the reshape of a [N, 4, 1, 1] tensor into [N, 4] make no layer.
    assert_eq!(
        kinds,
        ["conv2d", "batch_norm", "relu6", "global_avg_pool", "linear"]
    );
    let conv = &m.graph.layers[0];
    assert_eq!(conv.name, "conv");
    match conv.op {
        Op::Conv2d {
            padding,
            padding_end,
            stride,
            ..
        } => {
            assert_eq!(
                (padding, padding_end, stride),
                ((0, 0), Some((1, 1)), (2, 2))
            );
        }
        ref other => panic!("{other:?}"),
    }
    // (8 + 1 - 3) / 2 + 1 = 4
    assert_eq!(conv.output, Shape::new(4, 4, 4));
    assert_eq!(m.graph.output_shape(), Shape::new(5, 1, 1));
    assert_eq!(
        m.io,
        TensorIo {
            input: "images".into(),
            output: "logits".into(),
            input_dims: vec![3, 8, 8],
            output_dims: vec![5],
            batch_fixed: false,
        }
    );
    assert_eq!(m.opset, 13);
    match &m.weights[1] {
        LayerWeights::BatchNorm { var, eps, .. } => {
            assert_eq!(var, &vec![1.0, 2.0, 0.5, 1.5]);
            assert_eq!(*eps, 1e-5);
        }
        other => panic!("{other:?}"),
    }
    match &m.weights[4] {
        LayerWeights::Linear { weight, bias } => {
            assert_eq!(weight.len(), 20);
            assert_eq!(bias.as_ref().map(Vec::len), Some(5));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn matmul_then_add_is_one_linear_layer_and_gemm_without_trans_b_is_transposed() {
    let nodes = vec![
        node("flat", "Flatten", &["images"], &["f"]),
        node("mm", "MatMul", &["f", "w"], &["y"]),
        node("bias", "Add", &["y", "b"], &["z"]),
        with(
            node("gemm", "Gemm", &["z", "w2"], &["out"]),
            vec![AttributeProto {
                name: Some("alpha".into()),
                f: Some(2.0),
                ..Default::default()
            }],
        ),
    ];
    let inits = vec![
        floats("w", &[12, 3], 1),
        floats("b", &[3], 2),
        floats("w2", &[3, 2], 3),
    ];
    let m = import_model(&model(
        11,
        nodes,
        inits.clone(),
        &[None, Some(3), Some(2), Some(2)],
    ))
    .unwrap();
    let kinds: Vec<&str> = m.graph.layers.iter().map(|l| l.op.kind_name()).collect();
    assert_eq!(kinds, ["flatten", "linear", "linear"]);
    let raw = |t: &TensorProto| -> Vec<f32> {
        t.raw_data
            .as_ref()
            .unwrap()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    let (w, w2) = (raw(&inits[0]), raw(&inits[2]));
    match (&m.weights[1], &m.weights[2]) {
        (
            LayerWeights::Linear { weight, bias },
            LayerWeights::Linear {
                weight: g,
                bias: None,
            },
        ) => {
            // out x in from in x out.
            assert_eq!(weight[1], w[3]);
            assert_eq!(weight[12], w[1]);
            assert_eq!(bias.as_deref(), Some(raw(&inits[1]).as_slice()));
            assert_eq!(g[1], 2.0 * w2[2]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn per_channel_constants_become_an_affine_layer() {
    let nodes = vec![
        node("scale", "Mul", &["images", "s"], &["a"]),
        node("shift", "Sub", &["a", "m"], &["b"]),
        node("gap", "GlobalAveragePool", &["b"], &["out"]),
    ];
    let mut s = floats("s", &[1, 3, 1, 1], 1);
    s.raw_data = Some(
        [2.0f32, 3.0, 4.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
    );
    let m = import_model(&model(13, nodes, vec![s, floats("m", &[], 2)], &IMAGE)).unwrap();
    match (&m.weights[0], &m.weights[1]) {
        (
            LayerWeights::BatchNorm {
                gamma, beta, eps, ..
            },
            LayerWeights::BatchNorm {
                gamma: g2,
                beta: b2,
                ..
            },
        ) => {
            assert_eq!(
                (gamma.as_slice(), beta.as_slice(), *eps),
                ([2.0, 3.0, 4.0].as_slice(), [0.0; 3].as_slice(), 0.0)
            );
            assert_eq!(g2, &vec![1.0; 3]);
            assert!(b2.iter().all(|&x| x == b2[0]));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(m.io.output_dims, vec![3, 1, 1]);
}

fn refusal(m: &ModelProto) -> String {
    import_model(m).unwrap_err().to_string()
}

#[test]
fn what_the_ir_cannot_hold_is_refused_naming_node_operator_and_reason() {
    let up = model(
        13,
        vec![node("up1", "Resize", &["images"], &["out"])],
        vec![],
        &IMAGE,
    );
    let e = refusal(&up);
    assert!(
        e.contains("up1") && e.contains("Resize") && e.contains("not supported"),
        "{e}"
    );

    let to3d = model(
        13,
        vec![node("to3d", "Reshape", &["images", "shape"], &["out"])],
        vec![int64s("shape", &[0, 3, 64])],
        &IMAGE,
    );
    let e = refusal(&to3d);
    assert!(
        e.contains("to3d") && e.contains("Reshape") && e.contains("[N, 3, 64]"),
        "{e}"
    );

    let mul = model(
        13,
        vec![
            node("gap", "GlobalAveragePool", &["images"], &["p"]),
            node("se", "Mul", &["images", "p"], &["out"]),
        ],
        vec![],
        &IMAGE,
    );
    let e = refusal(&mul);
    assert!(
        e.contains("se") && e.contains("Mul") && e.contains("two computed"),
        "{e}"
    );

    let batch8 = model(
        13,
        vec![node("r", "Relu", &["images"], &["out"])],
        vec![],
        &[Some(8), Some(3), Some(8), Some(8)],
    );
    assert!(refusal(&batch8).contains("fixes the batch to 8"));

    let fixed = import_model(&model(
        13,
        vec![node("r", "Relu", &["images"], &["out"])],
        vec![],
        &[Some(1), Some(3), Some(8), Some(8)],
    ))
    .unwrap();
    assert!(fixed.io.batch_fixed);
}

#[test]
fn opsets_outside_7_to_21_and_broken_files_are_refused() {
    let relu = |opset| {
        model(
            opset,
            vec![node("r", "Relu", &["images"], &["out"])],
            vec![],
            &IMAGE,
        )
    };
    for opset in [6, 22] {
        let e = refusal(&relu(opset));
        assert!(
            e.contains(&format!("opset {opset}")) && e.contains("7 to 21"),
            "{e}"
        );
    }
    let bytes = classifier().encode_to_vec();
    for broken in [
        &bytes[..bytes.len() / 2],
        b"\xff\xfe not a model at all".as_slice(),
        b"".as_slice(),
    ] {
        let e = import(broken, "t", &mut no_files).unwrap_err();
        assert!(matches!(e, OnnxError::Decode(_)), "{e}");
        assert!(e.to_string().contains("ONNX"), "{e}");
    }
}

#[test]
fn external_data_is_read_through_the_reader_and_a_missing_file_is_named() {
    let mut m = classifier();
    let g = m.graph.as_mut().unwrap();
    let w = &mut g.initializer[0];
    let data = w.raw_data.take().unwrap();
    w.data_location = Some(tensor_proto::DataLocation::External as i32);
    w.external_data = [
        ("location", "weights.bin"),
        ("offset", "4"),
        ("length", &data.len().to_string()),
    ]
    .iter()
    .map(|(k, v)| StringStringEntryProto {
        key: Some(k.to_string()),
        value: Some(v.to_string()),
    })
    .collect();
    let bytes = m.encode_to_vec();
    let mut file = vec![0u8; 4];
    file.extend(&data);
    let mut read = |loc: &str| {
        assert_eq!(loc, "weights.bin");
        Ok(file.clone())
    };
    let imported = import(&bytes, "t", &mut read).unwrap();
    assert_eq!(imported, import_model(&classifier()).unwrap());

    let e = import(&bytes, "t", &mut |_: &str| Err("no such file".to_string())).unwrap_err();
    assert!(matches!(e, OnnxError::ExternalData { .. }), "{e}");
    assert!(
        e.to_string().contains("weights.bin") && e.to_string().contains("no such file"),
        "{e}"
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
    /// Stand-in for the `onnx_import` fuzz target that CI runs: a valid model with bytes
    /// overwritten, inserted or cut off is imported or refused, never a panic.
    #[test]
    fn damaged_models_are_refused_not_panicked_on(
        edits in proptest::collection::vec((0usize..4096, proptest::prelude::any::<u8>(), 0u8..3), 1..8),
        cut in proptest::prelude::any::<proptest::sample::Index>(),
    ) {
        let mut bytes = classifier().encode_to_vec();
        for (at, b, how) in edits {
            let i = at % bytes.len().max(1);
            match how {
                0 => bytes[i] = b,
                1 => bytes.insert(i, b),
                _ => bytes[i] ^= 1 << (b % 8),
            }
        }
        let keep = cut.index(bytes.len() + 1);
        let _ = import(&bytes[..keep], "t", &mut no_files);
    }
}
