use super::*;
use crate::eali::synthetic::SyntheticGpu;
use crate::model::{Conv, GraphBuilder, Pool, Shape, Tensor, zoo};

fn residual(b: &mut GraphBuilder, p: &str, x: Tensor) -> Tensor {
    let c = x.shape().c;
    let y = b
        .conv(format!("{p}.conv1"), x, Conv::new(c, 3).padding(1))
        .unwrap();
    let y = b.batch_norm(format!("{p}.bn1"), y).unwrap();
    let y = b.relu(format!("{p}.relu1"), y).unwrap();
    let y = b
        .conv(format!("{p}.conv2"), y, Conv::new(c, 3).padding(1))
        .unwrap();
    let y = b.add(format!("{p}.add"), &[y, x]).unwrap();
    b.relu(format!("{p}.relu2"), y).unwrap()
}

fn tiny_resnet() -> Graph {
    let mut b = GraphBuilder::new("tiny", Shape::new(3, 32, 32));
    let x = b.input();
    let x = b.conv("conv1", x, Conv::new(16, 3).padding(1)).unwrap();
    let x = b.batch_norm("bn1", x).unwrap();
    let x = b.relu("relu", x).unwrap();
    let x = b.max_pool("maxpool", x, Pool::new(2, 2)).unwrap();
    let x = residual(&mut b, "layer1.0", x);
    let x = residual(&mut b, "layer1.1", x);
    let x = b.global_avg_pool("avgpool", x).unwrap();
    let x = b.flatten("flatten", x).unwrap();
    b.linear("fc", x, 10, true).unwrap();
    b.finish().unwrap()
}

#[test]
fn residual_net_gives_stem_blocks_head() {
    let g = tiny_resnet();
    let chain = structural_chain(&g).unwrap();
    assert_eq!(chain.names(), vec!["stem", "layer1.0", "layer1.1", "head"]);
    let kinds: Vec<UnitKind> = chain.units.iter().map(|u| u.kind).collect();
    assert_eq!(
        kinds,
        vec![
            UnitKind::Stem,
            UnitKind::Block,
            UnitKind::Block,
            UnitKind::Head
        ]
    );
    assert_eq!(
        chain.units[0].layer_names,
        vec!["conv1", "bn1", "relu", "maxpool"]
    );
    // The block keeps its join and the activation after it.
    assert_eq!(
        chain.units[1].layer_names.last().map(String::as_str),
        Some("layer1.0.relu2")
    );
    assert!(
        chain.units[1]
            .layer_names
            .iter()
            .any(|n| n == "layer1.0.add")
    );
    assert_eq!(chain.units[3].layer_names, vec!["avgpool", "flatten", "fc"]);
    // Every layer in exactly one unit, in order.
    let all: Vec<LayerId> = chain.units.iter().flat_map(|u| u.layers.clone()).collect();
    assert_eq!(all, (0..g.layers.len()).collect::<Vec<_>>());
}

#[test]
fn inception_module_is_one_unit() {
    let mut b = GraphBuilder::new("inc", Shape::new(8, 16, 16));
    let x = b.input();
    let x = b
        .conv_bn_relu("conv1", x, Conv::new(16, 3).padding(1))
        .unwrap();
    let b1 = b.conv_bn_relu("mod.branch1", x, Conv::new(8, 1)).unwrap();
    let b2 = b.conv_bn_relu("mod.branch2.0", x, Conv::new(4, 1)).unwrap();
    let b2 = b
        .conv_bn_relu("mod.branch2.1", b2, Conv::new(8, 3).padding(1))
        .unwrap();
    let b3 = b
        .max_pool("mod.branch3.0", x, Pool::new(3, 1).padding(1))
        .unwrap();
    let b3 = b
        .conv_bn_relu("mod.branch3.1", b3, Conv::new(8, 1))
        .unwrap();
    let x = b.concat("mod.concat", &[b1, b2, b3]).unwrap();
    let x = b.max_pool("pool", x, Pool::new(2, 2)).unwrap();
    let x = b.global_avg_pool("gap", x).unwrap();
    b.linear("fc", x, 10, true).unwrap();
    let g = b.finish().unwrap();
    let chain = structural_chain(&g).unwrap();
    assert_eq!(chain.names(), vec!["stem", "mod", "head"]);
    // The pool between the module and the head rides with the module.
    assert_eq!(
        chain.units[1].layer_names.last().map(String::as_str),
        Some("pool")
    );
    assert_eq!(chain.units[1].layers.len(), 15);
}

#[test]
fn plain_net_anchors_take_their_trailing_layers() {
    let mut b = GraphBuilder::new("plain", Shape::new(3, 32, 32));
    let x = b.input();
    let x = b.conv("c1", x, Conv::new(8, 3).padding(1)).unwrap();
    let x = b.relu("r1", x).unwrap();
    let x = b.conv("c2", x, Conv::new(8, 3).padding(1)).unwrap();
    let x = b.relu("r2", x).unwrap();
    let x = b.max_pool("p2", x, Pool::new(2, 2)).unwrap();
    let x = b.flatten("flat", x).unwrap();
    let x = b.linear("fc1", x, 64, true).unwrap();
    let x = b.relu("fr1", x).unwrap();
    let x = b.dropout("fd1", x).unwrap();
    let x = b.linear("fc2", x, 10, true).unwrap();
    b.softmax("prob", x).unwrap();
    let g = b.finish().unwrap();
    let chain = structural_chain(&g).unwrap();
    assert_eq!(chain.names(), vec!["c1", "c2", "fc1", "fc2"]);
    assert_eq!(chain.units[1].layer_names, vec!["c2", "r2", "p2", "flat"]);
    assert_eq!(chain.units[3].layer_names, vec!["fc2", "prob"]);
}

#[test]
fn mobilenet_depthwise_pairs_and_linear_bottlenecks() {
    let mut b = GraphBuilder::new("mbv", Shape::new(3, 32, 32));
    let x = b.input();
    let x = b
        .conv_bn_relu("stem", x, Conv::new(16, 3).padding(1))
        .unwrap();
    // v1 pair: depthwise then pointwise, each with BN + ReLU.
    let x = b
        .conv_bn_relu("dw1", x, Conv::new(16, 3).padding(1).groups(16))
        .unwrap();
    let x = b.conv_bn_relu("pw1", x, Conv::new(32, 1)).unwrap();
    // v2 block without residual: expand, depthwise, linear projection (no activation).
    let x = b.conv_bn_relu("ir.expand", x, Conv::new(96, 1)).unwrap();
    let x = b
        .conv_bn_relu("ir.dw", x, Conv::new(96, 3).padding(1).stride(2).groups(96))
        .unwrap();
    let x = b.conv("ir.project", x, Conv::new(24, 1)).unwrap();
    let x = b.batch_norm("ir.bn", x).unwrap();
    let x = b.global_avg_pool("gap", x).unwrap();
    b.linear("fc", x, 10, true).unwrap();
    let g = b.finish().unwrap();
    let chain = structural_chain(&g).unwrap();
    assert_eq!(chain.names(), vec!["stem", "dw1", "ir", "fc"]);
    assert_eq!(chain.units[1].layer_names.len(), 6);
    assert_eq!(chain.units[2].layer_names.len(), 9);
    assert_eq!(chain.units[3].layer_names, vec!["fc"]);
    // "gap" rides with the last conv unit in a plain net.
    assert!(chain.units[2].layer_names.iter().any(|n| n == "gap"));
}

#[test]
fn unit_costs_sum_layer_costs() {
    let g = tiny_resnet();
    let t = SyntheticGpu::default().graph_table(&g);
    let chain = structural_chain(&g).unwrap();
    let uc = UnitCostTable::from_layers(&chain, &t).unwrap();
    for bi in 0..t.batches.len() {
        for fi in 0..t.clocks_mhz.len() {
            let layers: f64 = t.time_s.iter().map(|l| l[bi][fi]).sum();
            assert!((uc.total_time_s(bi, fi) - layers).abs() < 1e-12 * layers.max(1e-9));
        }
    }
    let mut missing = t.clone();
    missing.layers[3] = "renamed".into();
    assert!(matches!(
        UnitCostTable::from_layers(&chain, &missing),
        Err(EaliError::MissingLayer { .. })
    ));
    let (single, sc) = single_unit(&t).unwrap();
    assert_eq!(single.len(), 1);
    assert!((sc.total_time_s(2, 3) - uc.total_time_s(2, 3)).abs() < 1e-12);
}

#[test]
fn merging_short_units_and_cap() {
    let g = tiny_resnet();
    let t = SyntheticGpu::default().graph_table(&g);
    let chain = structural_chain(&g).unwrap();
    let uc = UnitCostTable::from_layers(&chain, &t).unwrap();
    let total = uc.total_time_s(uc.batches.len() - 1, uc.max_clock_index());
    // A switch longer than the whole network: everything collapses into one unit.
    let cfg = UnitConfig {
        switch_median_s: total,
        merge_same_clock: false,
        ..UnitConfig::default()
    };
    let (c1, u1) = merge_units(chain.clone(), uc.clone(), &cfg).unwrap();
    assert_eq!(c1.len(), 1);
    assert_eq!(u1.num_units(), 1);
    assert_eq!(
        c1.units[0].parts,
        vec!["stem", "layer1.0", "layer1.1", "head"]
    );
    assert_eq!(c1.units[0].name, "stem..head");
    // Free switches, cap of 2: the two adjacent units with the smallest combined time go first.
    let (c2, u2) = merge_units(chain.clone(), uc.clone(), &UnitConfig::structural_only(2)).unwrap();
    assert_eq!(c2.len(), 2);
    assert_eq!(
        u2.units,
        c2.names().iter().map(|s| s.to_string()).collect::<Vec<_>>()
    );
    let t2 = u2.total_time_s(1, 4);
    assert!((t2 - uc.total_time_s(1, 4)).abs() < 1e-12);
    // A threshold between unit sizes: every surviving unit is at least that long.
    let times: Vec<f64> = (0..uc.num_units())
        .map(|u| uc.time_s[u][uc.batches.len() - 1][uc.max_clock_index()])
        .collect();
    let mid = times.iter().copied().fold(0.0, f64::max) * 0.9;
    let cfg = UnitConfig {
        k: 1.0,
        switch_median_s: mid,
        merge_same_clock: false,
        ..UnitConfig::default()
    };
    let (_, u3) = merge_units(chain, uc, &cfg).unwrap();
    for u in 0..u3.num_units() {
        assert!(u3.time_s[u][u3.batches.len() - 1][u3.max_clock_index()] >= mid);
    }
}

#[test]
fn same_clock_neighbours_merge() {
    // Four layers: two identical compute-bound, then two identical memory-bound.
    let gpu = SyntheticGpu::default();
    let layers: Vec<(String, f64, f64)> = vec![
        ("a".into(), 1e-3, 1e-5),
        ("b".into(), 1e-3, 1e-5),
        ("c".into(), 1e-5, 1e-3),
        ("d".into(), 1e-5, 1e-3),
    ];
    let t = gpu.table("m", &layers);
    let chain = UnitChain {
        model: "m".into(),
        units: ["a", "b", "c", "d"]
            .iter()
            .enumerate()
            .map(|(i, n)| Unit {
                name: n.to_string(),
                kind: UnitKind::Layer,
                layers: vec![i],
                layer_names: vec![n.to_string()],
                parts: vec![n.to_string()],
            })
            .collect(),
    };
    let uc = UnitCostTable::from_layers(&chain, &t).unwrap();
    assert_ne!(
        merge::clock_signature(&uc, 1),
        merge::clock_signature(&uc, 2)
    );
    let cfg = UnitConfig {
        k: 0.0,
        ..UnitConfig::default()
    };
    let (c, _) = merge_units(chain, uc, &cfg).unwrap();
    assert_eq!(c.names(), vec!["a..b", "c..d"]);
}

#[test]
fn zoo_resnet50_has_stem_16_blocks_head() {
    let g = zoo::build("resnet50").unwrap();
    let chain = structural_chain(&g).unwrap();
    assert_eq!(chain.len(), 18);
    assert_eq!(chain.units[0].name, "stem");
    assert_eq!(chain.units[17].name, "head");
    let mut want = Vec::new();
    for (stage, depth) in [3, 4, 6, 3].iter().enumerate() {
        for i in 0..*depth {
            want.push(format!("layer{}.{i}", stage + 1));
        }
    }
    let blocks: Vec<String> = chain.units[1..17].iter().map(|u| u.name.clone()).collect();
    assert_eq!(blocks, want);
    assert!(chain.units[1..17].iter().all(|u| u.kind == UnitKind::Block));
    // Projection shortcut inside the first block of each stage.
    assert!(
        chain.units[1]
            .layer_names
            .iter()
            .any(|n| n.contains("downsample"))
    );
    // The N_max cap then brings it to 16.
    let t = SyntheticGpu::default().graph_table(&g);
    let (c, u) = build(&g, &t, &UnitConfig::structural_only(16)).unwrap();
    assert_eq!((c.len(), u.num_units()), (16, 16));
}

#[test]
fn zoo_vgg16_has_conv_and_fc_units() {
    let g = zoo::build("vgg16").unwrap();
    let chain = structural_chain(&g).unwrap();
    assert_eq!(chain.len(), 16);
    let convs = chain
        .units
        .iter()
        .filter(|u| u.name.starts_with("features."))
        .count();
    let fcs: Vec<&str> = chain
        .units
        .iter()
        .map(|u| u.name.as_str())
        .filter(|n| n.starts_with("classifier."))
        .collect();
    assert_eq!(convs, 13);
    assert_eq!(fcs, vec!["classifier.0", "classifier.3", "classifier.6"]);
}

#[test]
fn zoo_models_partition_their_layers() {
    for name in zoo::names() {
        let g = zoo::build(name).unwrap();
        let chain = structural_chain(&g).unwrap();
        let mut all: Vec<LayerId> = chain.units.iter().flat_map(|u| u.layers.clone()).collect();
        all.sort_unstable();
        assert_eq!(all, (0..g.layers.len()).collect::<Vec<_>>(), "{name}");
        let t = SyntheticGpu::default().graph_table(&g);
        let (c, _) = build(&g, &t, &UnitConfig::default()).unwrap();
        assert!(!c.is_empty() && c.len() <= 16, "{name}");
    }
}

#[test]
fn zoo_googlenet_has_nine_inception_units() {
    let g = zoo::build("googlenet").unwrap();
    let chain = structural_chain(&g).unwrap();
    let names = chain.names();
    assert_eq!(names.first(), Some(&"stem"));
    assert_eq!(names.last(), Some(&"head"));
    assert_eq!(
        names.iter().filter(|n| n.starts_with("inception")).count(),
        9
    );
    assert_eq!(chain.len(), 11);
}

#[test]
fn zoo_densenet_dense_layers_and_preactivated_transitions() {
    let g = zoo::build("densenet121").unwrap();
    let chain = structural_chain(&g).unwrap();
    let dense = chain
        .units
        .iter()
        .filter(|u| u.name.contains(".denselayer"))
        .count();
    assert_eq!(dense, 6 + 12 + 24 + 16);
    let transitions: Vec<&Unit> = chain
        .units
        .iter()
        .filter(|u| u.name.contains("transition"))
        .collect();
    assert_eq!(transitions.len(), 3);
    // BN and ReLU before the transition conv belong to the transition (pre-activation).
    for t in transitions {
        assert_eq!(t.layers.len(), 4, "{}", t.name);
        assert!(t.layer_names[0].ends_with("norm"), "{:?}", t.layer_names);
    }
    assert_eq!(chain.len(), 1 + dense + 3 + 1);
}

#[test]
fn zoo_mobilenet_v2_blocks() {
    let g = zoo::build("mobilenet_v2").unwrap();
    let chain = structural_chain(&g).unwrap();
    // Blocks 3..=17 are units of their own (residual ones as fork/join regions, the others as
    // expand + linear bottleneck), then the last 1×1 conv and the head.
    let names = chain.names();
    for i in 3..=18 {
        assert!(
            names.contains(&format!("features.{i}").as_str()),
            "features.{i} in {names:?}"
        );
    }
    assert_eq!(names.last(), Some(&"head"));
    let blocks = chain
        .units
        .iter()
        .filter(|u| u.kind == UnitKind::Block)
        .count();
    assert_eq!(blocks, 10, "residual inverted-residual blocks");
}
