//! The model zoo against torchvision's published figures, and the structure the unit-combination
//! pass relies on (explicit joins, valid graphs, stable torchvision-style layer names).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use eali::gpu::WorkKind;
use eali::model::{Graph, Op, Shape, zoo};

/// (name, params in millions, GMACs at batch 1) as published for torchvision's models.
const PUBLISHED: [(&str, f64, f64); 9] = [
    ("alexnet", 61.10, 0.71),
    ("vgg16", 138.36, 15.47),
    ("resnet18", 11.69, 1.82),
    ("resnet50", 25.56, 4.1),
    ("resnet152", 60.19, 11.6),
    ("googlenet", 6.62, 1.5),
    ("inception_v3", 23.83, 5.7),
    ("densenet121", 7.98, 2.9),
    ("mobilenet_v2", 3.50, 0.31),
];

fn all() -> Vec<Graph> {
    zoo::names()
        .iter()
        .map(|n| zoo::build(n).unwrap_or_else(|e| panic!("{n}: {e}")))
        .collect()
}

fn rel_dev(ours: f64, reference: f64) -> f64 {
    (ours - reference).abs() / reference
}

#[test]
fn zoo_has_the_nine_models() {
    let published: Vec<&str> = PUBLISHED.iter().map(|p| p.0).collect();
    assert_eq!(zoo::names(), published.as_slice());
}

#[test]
fn params_within_one_percent_of_published() {
    for (name, params_m, _) in PUBLISHED {
        let g = zoo::build(name).unwrap();
        let ours = g.total_params() as f64 / 1e6;
        assert!(
            rel_dev(ours, params_m) <= 0.01,
            "{name}: {ours:.3} M params vs {params_m} M"
        );
    }
}

#[test]
fn macs_within_five_percent_of_published() {
    for (name, _, gmacs) in PUBLISHED {
        let g = zoo::build(name).unwrap();
        let ours = g.total_macs(1) as f64 / 1e9;
        assert!(
            rel_dev(ours, gmacs) <= 0.05,
            "{name}: {ours:.3} GMACs vs {gmacs}"
        );
    }
}

/// torchvision's exact `num_params` (Inception-v3 without its training-only auxiliary head):
/// a layer missing a bias or a BN would show here even where it hides inside 1 %.
#[test]
fn params_match_torchvision_exactly() {
    for (name, exact) in [
        ("alexnet", 61_100_840),
        ("vgg16", 138_357_544),
        ("resnet18", 11_689_512),
        ("resnet50", 25_557_032),
        ("resnet152", 60_192_808),
        ("googlenet", 6_624_904),
        ("inception_v3", 27_161_264 - 3_326_696),
        ("densenet121", 7_978_856),
        ("mobilenet_v2", 3_504_872),
    ] {
        assert_eq!(zoo::build(name).unwrap().total_params(), exact, "{name}");
    }
}

#[test]
fn inputs_and_outputs() {
    for g in all() {
        let side = if g.name == "inception_v3" { 299 } else { 224 };
        assert_eq!(g.input, Shape::new(3, side, side), "{}", g.name);
        assert_eq!(g.output_shape(), Shape::new(1000, 1, 1), "{}", g.name);
        assert_eq!(g.sinks(), vec![g.len() - 1], "{}: one output", g.name);
        assert_eq!(g.sources(), vec![0], "{}: one stem", g.name);
        assert_eq!(g.validate(), Ok(()), "{}", g.name);
    }
}

#[test]
fn layer_names_are_torchvision_paths() {
    let r50 = zoo::build("resnet50").unwrap();
    for name in [
        "conv1",
        "bn1",
        "maxpool",
        "layer1.0.conv1",
        "layer1.0.bn1",
        "layer1.0.downsample.0",
        "layer1.0.add",
        "layer4.2.conv3",
        "fc",
    ] {
        assert!(r50.layer_by_name(name).is_some(), "resnet50 lacks {name}");
    }
    let checks = [
        ("vgg16", "features.28"),
        ("alexnet", "classifier.6"),
        ("googlenet", "inception4e.branch2.1.conv"),
        ("inception_v3", "Mixed_7c.branch3x3dbl_3b.bn"),
        ("densenet121", "features.denseblock4.denselayer16.conv2"),
        ("densenet121", "features.transition3.pool"),
        ("mobilenet_v2", "features.17.conv.1.0"),
        ("mobilenet_v2", "features.18.0"),
    ];
    for (model, name) in checks {
        let g = zoo::build(model).unwrap();
        assert!(g.layer_by_name(name).is_some(), "{model} lacks {name}");
    }
}

fn joins(g: &Graph, op: &Op) -> Vec<usize> {
    g.layers
        .iter()
        .filter(|l| &l.op == op)
        .map(|l| l.inputs.len())
        .collect()
}

#[test]
fn residual_blocks_end_in_two_input_adds() {
    for (name, blocks) in [("resnet18", 8), ("resnet50", 16), ("resnet152", 50)] {
        let g = zoo::build(name).unwrap();
        assert_eq!(joins(&g, &Op::Add), vec![2; blocks], "{name}");
        // Projection shortcuts only where the shape changes: once per stage.
        let projections = g
            .layers
            .iter()
            .filter(|l| l.name.ends_with(".downsample.0"))
            .count();
        let expected = if name == "resnet18" { 3 } else { 4 };
        assert_eq!(projections, expected, "{name}");
    }
    // MobileNetV2: residual only where stride 1 and channels equal: 1+2+3+2+2 = 10 blocks.
    let g = zoo::build("mobilenet_v2").unwrap();
    assert_eq!(joins(&g, &Op::Add), vec![2; 10]);
}

#[test]
fn inception_and_dense_modules_end_in_concats() {
    let g = zoo::build("googlenet").unwrap();
    assert_eq!(joins(&g, &Op::Concat), vec![4; 9]);

    let g = zoo::build("inception_v3").unwrap();
    let concats = joins(&g, &Op::Concat);
    // 3 A + 1 B + 4 C + 1 D + 2 E modules, each E with two inner 2-way concats.
    assert_eq!(concats.len(), 11 + 4);
    assert_eq!(concats.iter().filter(|&&n| n == 2).count(), 4);

    let g = zoo::build("densenet121").unwrap();
    assert_eq!(joins(&g, &Op::Concat), vec![2; 6 + 12 + 24 + 16]);
    let last = g
        .layer_by_name("features.denseblock4.denselayer16.concat")
        .unwrap();
    assert_eq!(g.layers[last].output, Shape::new(1024, 7, 7));
}

#[test]
fn depthwise_convolutions_only_in_mobilenet() {
    for g in all() {
        let dw = (0..g.len())
            .filter(|&i| g.work_kind(i) == WorkKind::DepthwiseConv)
            .count();
        let expected = if g.name == "mobilenet_v2" { 17 } else { 0 };
        assert_eq!(dw, expected, "{}", g.name);
    }
}

#[test]
fn costs_scale_with_batch() {
    for g in all() {
        let one = g.total_cost(1);
        let thirty_two = g.total_cost(32);
        assert_eq!(thirty_two.macs, 32 * one.macs, "{}", g.name);
        assert_eq!(
            thirty_two.bytes_written,
            32 * one.bytes_written,
            "{}",
            g.name
        );
        // Weights are read once per batch, so reads grow, but less than 32-fold.
        assert!(thirty_two.bytes_read < 32 * one.bytes_read, "{}", g.name);
        assert!(thirty_two.bytes_read > one.bytes_read, "{}", g.name);
        assert_eq!(g.total_macs(32), thirty_two.macs);
        // The work handed to the GPU agrees with the cost figures.
        let flops: f64 = (0..g.len()).map(|i| g.layer_work(i, 32).flops).sum();
        assert!(flops >= 2.0 * thirty_two.macs as f64, "{}", g.name);
    }
}
