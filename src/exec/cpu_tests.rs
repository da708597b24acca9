//! CPU executor checks: a network small enough to compute by hand, structural invariants
//! (batch independence, unit splits, joins), the safetensors path, and a zoo model end to end.

use std::sync::Arc;

use super::*;
use crate::exec::{NoHook, UnitHook};
use crate::model::{Conv, GraphBuilder, Pool, zoo};

/// 1×2×2 input -> conv 1×1 (2 out, bias) -> relu -> gap -> flatten -> fc (2->1, bias).
fn tiny() -> (Arc<Graph>, Arc<Weights>) {
    let mut b = GraphBuilder::new("tiny", Shape::new(1, 2, 2));
    let x = b.input();
    let y = b.conv("conv", x, Conv::new(2, 1).bias(true)).unwrap();
    let y = b.relu("relu", y).unwrap();
    let y = b.global_avg_pool("gap", y).unwrap();
    let y = b.flatten("flat", y).unwrap();
    b.linear("fc", y, 1, true).unwrap();
    let g = b.finish().unwrap();
    let w = Weights {
        layers: vec![
            LayerWeights::Conv {
                weight: vec![1.0, -1.0],
                bias: Some(vec![0.0, 1.0]),
            },
            LayerWeights::None,
            LayerWeights::None,
            LayerWeights::None,
            LayerWeights::Linear {
                weight: vec![2.0, 3.0],
                bias: Some(vec![0.5]),
            },
        ],
    };
    (Arc::new(g), Arc::new(w))
}

#[test]
fn tiny_network_by_hand() {
    let (g, w) = tiny();
    let exec = CpuExecutor::new(g, w).unwrap();
    // Channel 0 = x, channel 1 = 1 − x; after ReLU with x = (−1, 2, 3, 0.5):
    // ch0 = (0, 2, 3, 0.5) mean 1.375; ch1 = (2, 0, 0, 0.5) mean 0.625.
    // fc = 2·1.375 + 3·0.625 + 0.5 = 5.125.
    let out = exec.forward(&[-1.0, 2.0, 3.0, 0.5], 1).unwrap();
    assert_eq!(out, vec![5.125]);
    // Two samples: the second is all zeros -> ch0 = 0, ch1 = 1 -> 3.5.
    let out = exec
        .forward(&[-1.0, 2.0, 3.0, 0.5, 0.0, 0.0, 0.0, 0.0], 2)
        .unwrap();
    assert_eq!(out, vec![5.125, 3.5]);
    assert!(matches!(
        exec.forward(&[1.0; 3], 1),
        Err(ExecError::InputSize {
            got: 3,
            want: 4,
            ..
        })
    ));
    assert!(matches!(exec.forward(&[], 0), Err(ExecError::EmptyBatch)));
}

#[test]
fn wrong_weights_are_refused() {
    let (g, _) = tiny();
    let w = Weights {
        layers: vec![LayerWeights::None; 5],
    };
    assert!(CpuExecutor::new(g, Arc::new(w)).is_err());
}

/// A block with every operator kind: residual Add, Concat, pools, BN, LRN, softmax.
fn mixed() -> Arc<Graph> {
    let mut b = GraphBuilder::new("mixed", Shape::new(3, 9, 9));
    let x = b.input();
    let s = b.conv("stem", x, Conv::new(8, 3).padding(1)).unwrap();
    let s = b.batch_norm("stem_bn", s).unwrap();
    let s = b.relu("stem_relu", s).unwrap();
    let s = b.max_pool("pool", s, Pool::new(3, 2).padding(1)).unwrap();
    let a = b
        .conv("a", s, Conv::new(8, 3).padding(1).groups(8))
        .unwrap();
    let a = b.batch_norm("a_bn", a).unwrap();
    let r = b.add("res", &[a, s]).unwrap();
    let r = b.relu6("res_relu", r).unwrap();
    let p = b.conv("p", r, Conv::new(4, 1)).unwrap();
    let q = b
        .conv("q", r, Conv::rect(6, (1, 3)).padding_hw((0, 1)).dilation(1))
        .unwrap();
    let c = b.concat("cat", &[p, q]).unwrap();
    let c = b.lrn("lrn", c, 3).unwrap();
    let c = b.avg_pool("avg", c, Pool::new(2, 2).ceil_mode()).unwrap();
    let c = b.global_avg_pool("gap", c).unwrap();
    let c = b.flatten("flat", c).unwrap();
    let c = b.dropout("drop", c).unwrap();
    let c = b.linear("fc", c, 7, true).unwrap();
    b.softmax("prob", c).unwrap();
    Arc::new(b.finish().unwrap())
}

fn inputs(n: usize, len: usize, seed: u32) -> Vec<f32> {
    (0..n * len)
        .map(|i| {
            ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32 / 16_777_216.0
                - 0.5
        })
        .collect()
}

#[test]
fn batch_of_samples_equals_samples_one_by_one() {
    let g = mixed();
    let exec = CpuExecutor::seeded(g.clone(), 11).unwrap();
    let len = g.input.elements() as usize;
    let x = inputs(3, len, 5);
    let all = exec.forward(&x, 3).unwrap();
    assert_eq!(all.len(), 3 * 7);
    for s in 0..3 {
        let one = exec.forward(&x[s * len..(s + 1) * len], 1).unwrap();
        for (a, b) in one.iter().zip(&all[s * 7..(s + 1) * 7]) {
            assert!((a - b).abs() <= 1e-6 * a.abs().max(1.0), "{a} vs {b}");
        }
        // Softmax output: a probability vector.
        let sum: f32 = one.iter().sum();
        assert!((sum - 1.0).abs() < 1e-5 && one.iter().all(|p| *p > 0.0));
    }
}

struct Recorder(Vec<(usize, bool)>);
impl UnitHook for Recorder {
    fn unit_start(&mut self, unit: usize, _t: f64) {
        self.0.push((unit, true));
    }
    fn unit_end(&mut self, r: &crate::exec::UnitRecord) {
        assert!(r.end_s >= r.start_s);
        self.0.push((r.unit, false));
    }
}

#[test]
fn unit_split_does_not_change_outputs_and_hooks_run_in_order() {
    let g = mixed();
    let mut exec = CpuExecutor::seeded(g.clone(), 2).unwrap();
    let x = inputs(2, g.input.elements() as usize, 9);
    let whole = exec.forward(&x, 2).unwrap();
    let n = g.layers.len();
    let units = [0..4, 4..8, 8..n];
    let mut rec = Recorder(Vec::new());
    let run = exec
        .run_batch(
            &BatchRequest {
                batch: 2,
                input: Some(&x),
                units: &units,
            },
            &mut rec,
        )
        .unwrap();
    assert_eq!(run.outputs.as_deref(), Some(whole.as_slice()));
    assert_eq!(
        rec.0,
        vec![
            (0, true),
            (0, false),
            (1, true),
            (1, false),
            (2, true),
            (2, false)
        ]
    );
    assert_eq!(run.units.len(), 3);
    let bad = [0..4, 5..n];
    let err = exec.run_batch(
        &BatchRequest {
            batch: 2,
            input: Some(&x),
            units: &bad,
        },
        &mut NoHook,
    );
    assert!(matches!(err, Err(ExecError::BadUnits { .. })));
}

#[test]
fn joins_compute_sums_and_channel_blocks() {
    // input -> {a = 1×1 conv ×2, b = 1×1 conv ×3} -> concat, and a + b.
    let mut bld = GraphBuilder::new("joins", Shape::new(1, 1, 2));
    let x = bld.input();
    let a = bld.conv("a", x, Conv::new(1, 1)).unwrap();
    let b = bld.conv("b", x, Conv::new(1, 1)).unwrap();
    let s = bld.add("sum", &[a, b]).unwrap();
    bld.concat("cat", &[a, s, b]).unwrap();
    let g = Arc::new(bld.finish().unwrap());
    let conv = |k: f32| LayerWeights::Conv {
        weight: vec![k],
        bias: None,
    };
    let w = Weights {
        layers: vec![conv(2.0), conv(3.0), LayerWeights::None, LayerWeights::None],
    };
    let exec = CpuExecutor::new(g, Arc::new(w)).unwrap();
    let out = exec.forward(&[1.0, 10.0, -1.0, 0.0], 2).unwrap();
    // Per sample: channels a (2x), a+b (5x), b (3x), each 1×2.
    assert_eq!(
        out,
        vec![
            2.0, 20.0, 5.0, 50.0, 3.0, 30.0, -2.0, 0.0, -5.0, 0.0, -3.0, 0.0
        ]
    );
}

#[test]
fn weights_from_a_safetensors_file_give_the_same_outputs() {
    let g = mixed();
    let seeded = Weights::seeded(&g, 21);
    let dir = std::env::temp_dir().join(format!("eali-weights-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("mixed.safetensors");
    std::fs::write(&path, seeded.to_safetensors(&g).unwrap()).unwrap();
    let loaded = Weights::load(&g, &path).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    let x = inputs(1, g.input.elements() as usize, 1);
    let a = CpuExecutor::new(g.clone(), Arc::new(seeded)).unwrap();
    let b = CpuExecutor::new(g, Arc::new(loaded)).unwrap();
    assert_eq!(a.forward(&x, 1).unwrap(), b.forward(&x, 1).unwrap());
}

#[test]
fn zoo_model_runs_end_to_end() {
    // MobileNet-V2: every zoo operator family that matters for it (depthwise, residual, ReLU6),
    // at 0.3 GMACs the cheapest zoo model to compute.
    let g = Arc::new(zoo::build("mobilenet_v2").unwrap());
    let exec = CpuExecutor::seeded(g.clone(), 1).unwrap();
    let len = g.input.elements() as usize;
    let x = inputs(2, len, 3);
    let out = exec.forward(&x, 2).unwrap();
    assert_eq!(out.len(), 2 * 1000);
    assert!(out.iter().all(|v| v.is_finite()));
    // Different images give different scores; the same image in another batch the same ones.
    assert_ne!(out[..1000], out[1000..]);
    let second = exec.forward(&x[len..], 1).unwrap();
    for (a, b) in second.iter().zip(&out[1000..]) {
        assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0));
    }
}
