//! GoogLeNet (Inception v1), torchvision variant: every convolution is a `BasicConv2d`
//! (conv without bias, batch norm, ReLU), ceil-mode max pools, the "5×5" branch uses a 3×3
//! kernel as in torchvision's port, and the auxiliary classifiers (training only) are left out.
//! Each inception module ends in an explicit Concat of its four branches.

use crate::model::{Conv, Graph, GraphBuilder, ModelError, Pool, Shape, Tensor};

/// Output channels of one inception module's branches.
struct Inception {
    ch1x1: u32,
    ch3x3_red: u32,
    ch3x3: u32,
    ch5x5_red: u32,
    ch5x5: u32,
    pool_proj: u32,
}

const fn module(
    ch1x1: u32,
    ch3x3_red: u32,
    ch3x3: u32,
    ch5x5_red: u32,
    ch5x5: u32,
    pool_proj: u32,
) -> Inception {
    Inception {
        ch1x1,
        ch3x3_red,
        ch3x3,
        ch5x5_red,
        ch5x5,
        pool_proj,
    }
}

pub(super) fn googlenet() -> Result<Graph, ModelError> {
    let mut b = GraphBuilder::new("googlenet", Shape::new(3, 224, 224));
    let x = b.input();
    let x = b.conv_bn_relu("conv1", x, Conv::new(64, 7).stride(2).padding(3))?;
    let x = b.max_pool("maxpool1", x, Pool::new(3, 2).ceil_mode())?;
    let x = b.conv_bn_relu("conv2", x, Conv::new(64, 1))?;
    let x = b.conv_bn_relu("conv3", x, Conv::new(192, 3).padding(1))?;
    let x = b.max_pool("maxpool2", x, Pool::new(3, 2).ceil_mode())?;
    let x = inception(&mut b, "inception3a", x, &module(64, 96, 128, 16, 32, 32))?;
    let x = inception(&mut b, "inception3b", x, &module(128, 128, 192, 32, 96, 64))?;
    let x = b.max_pool("maxpool3", x, Pool::new(3, 2).ceil_mode())?;
    let x = inception(&mut b, "inception4a", x, &module(192, 96, 208, 16, 48, 64))?;
    let x = inception(&mut b, "inception4b", x, &module(160, 112, 224, 24, 64, 64))?;
    let x = inception(&mut b, "inception4c", x, &module(128, 128, 256, 24, 64, 64))?;
    let x = inception(&mut b, "inception4d", x, &module(112, 144, 288, 32, 64, 64))?;
    let x = inception(
        &mut b,
        "inception4e",
        x,
        &module(256, 160, 320, 32, 128, 128),
    )?;
    let x = b.max_pool("maxpool4", x, Pool::new(2, 2).ceil_mode())?;
    let x = inception(
        &mut b,
        "inception5a",
        x,
        &module(256, 160, 320, 32, 128, 128),
    )?;
    let x = inception(
        &mut b,
        "inception5b",
        x,
        &module(384, 192, 384, 48, 128, 128),
    )?;
    let x = b.global_avg_pool("avgpool", x)?;
    let x = b.flatten("flatten", x)?;
    let x = b.dropout("dropout", x)?;
    b.linear("fc", x, 1000, true)?;
    b.finish()
}

fn inception(
    b: &mut GraphBuilder,
    p: &str,
    x: Tensor,
    m: &Inception,
) -> Result<Tensor, ModelError> {
    let b1 = b.conv_bn_relu(&format!("{p}.branch1"), x, Conv::new(m.ch1x1, 1))?;

    let b2 = b.conv_bn_relu(&format!("{p}.branch2.0"), x, Conv::new(m.ch3x3_red, 1))?;
    let b2 = b.conv_bn_relu(
        &format!("{p}.branch2.1"),
        b2,
        Conv::new(m.ch3x3, 3).padding(1),
    )?;

    let b3 = b.conv_bn_relu(&format!("{p}.branch3.0"), x, Conv::new(m.ch5x5_red, 1))?;
    let b3 = b.conv_bn_relu(
        &format!("{p}.branch3.1"),
        b3,
        Conv::new(m.ch5x5, 3).padding(1),
    )?;

    let b4 = b.max_pool(
        format!("{p}.branch4.0"),
        x,
        Pool::new(3, 1).padding(1).ceil_mode(),
    )?;
    let b4 = b.conv_bn_relu(&format!("{p}.branch4.1"), b4, Conv::new(m.pool_proj, 1))?;

    b.concat(format!("{p}.concat"), &[b1, b2, b3, b4])
}
