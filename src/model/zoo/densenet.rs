//! DenseNet-121, torchvision variant (growth rate 32, bottleneck width 4 × 32, blocks of
//! 6/12/24/16 layers, compression 0.5).
//!
//! torchvision concatenates all earlier feature maps at the start of every dense layer. Here each
//! dense layer instead ends in a two-input Concat of its input and its 32 new channels, which
//! gives the same tensors (same channel order), the same parameters and MACs, and makes every dense
//! layer a single-entry/single-exit fork/join region for unit combination.

use crate::model::{Conv, Graph, GraphBuilder, ModelError, Pool, Shape, Tensor};

const GROWTH: u32 = 32;
const BN_SIZE: u32 = 4;
const BLOCKS: [u32; 4] = [6, 12, 24, 16];
const INIT_FEATURES: u32 = 64;

pub(super) fn densenet121() -> Result<Graph, ModelError> {
    let mut b = GraphBuilder::new("densenet121", Shape::new(3, 224, 224));
    let x = b.input();
    let x = b.conv(
        "features.conv0",
        x,
        Conv::new(INIT_FEATURES, 7).stride(2).padding(3),
    )?;
    let x = b.batch_norm("features.norm0", x)?;
    let x = b.relu("features.relu0", x)?;
    let mut x = b.max_pool("features.pool0", x, Pool::new(3, 2).padding(1))?;
    for (i, &layers) in BLOCKS.iter().enumerate() {
        let block = format!("features.denseblock{}", i + 1);
        for l in 0..layers {
            x = dense_layer(&mut b, &format!("{block}.denselayer{}", l + 1), x)?;
        }
        if i + 1 < BLOCKS.len() {
            let t = format!("features.transition{}", i + 1);
            let c = x.shape().c / 2;
            x = b.batch_norm(format!("{t}.norm"), x)?;
            x = b.relu(format!("{t}.relu"), x)?;
            x = b.conv(format!("{t}.conv"), x, Conv::new(c, 1))?;
            x = b.avg_pool(format!("{t}.pool"), x, Pool::new(2, 2))?;
        }
    }
    let x = b.batch_norm("features.norm5", x)?;
    let x = b.relu("relu", x)?;
    let x = b.global_avg_pool("avgpool", x)?;
    let x = b.flatten("flatten", x)?;
    b.linear("classifier", x, 1000, true)?;
    b.finish()
}

fn dense_layer(b: &mut GraphBuilder, p: &str, x: Tensor) -> Result<Tensor, ModelError> {
    let y = b.batch_norm(format!("{p}.norm1"), x)?;
    let y = b.relu(format!("{p}.relu1"), y)?;
    let y = b.conv(format!("{p}.conv1"), y, Conv::new(BN_SIZE * GROWTH, 1))?;
    let y = b.batch_norm(format!("{p}.norm2"), y)?;
    let y = b.relu(format!("{p}.relu2"), y)?;
    let y = b.conv(format!("{p}.conv2"), y, Conv::new(GROWTH, 3).padding(1))?;
    b.concat(format!("{p}.concat"), &[x, y])
}
