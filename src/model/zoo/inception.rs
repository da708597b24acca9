//! Inception-v3, torchvision variant (299×299 input, `BasicConv2d` = conv without bias + batch
//! norm + ReLU), without the auxiliary classifier, which only runs in training. Every module ends
//! in an explicit Concat of its branches; module E's split 1×3/3×1 branches have their own inner
//! Concat as in torchvision's forward.

use crate::model::{Conv, Graph, GraphBuilder, ModelError, Pool, Shape, Tensor};

pub(super) fn inception_v3() -> Result<Graph, ModelError> {
    let mut b = GraphBuilder::new("inception_v3", Shape::new(3, 299, 299));
    let x = b.input();
    let x = b.conv_bn_relu("Conv2d_1a_3x3", x, Conv::new(32, 3).stride(2))?;
    let x = b.conv_bn_relu("Conv2d_2a_3x3", x, Conv::new(32, 3))?;
    let x = b.conv_bn_relu("Conv2d_2b_3x3", x, Conv::new(64, 3).padding(1))?;
    let x = b.max_pool("maxpool1", x, Pool::new(3, 2))?;
    let x = b.conv_bn_relu("Conv2d_3b_1x1", x, Conv::new(80, 1))?;
    let x = b.conv_bn_relu("Conv2d_4a_3x3", x, Conv::new(192, 3))?;
    let x = b.max_pool("maxpool2", x, Pool::new(3, 2))?;
    let x = inception_a(&mut b, "Mixed_5b", x, 32)?;
    let x = inception_a(&mut b, "Mixed_5c", x, 64)?;
    let x = inception_a(&mut b, "Mixed_5d", x, 64)?;
    let x = inception_b(&mut b, "Mixed_6a", x)?;
    let x = inception_c(&mut b, "Mixed_6b", x, 128)?;
    let x = inception_c(&mut b, "Mixed_6c", x, 160)?;
    let x = inception_c(&mut b, "Mixed_6d", x, 160)?;
    let x = inception_c(&mut b, "Mixed_6e", x, 192)?;
    let x = inception_d(&mut b, "Mixed_7a", x)?;
    let x = inception_e(&mut b, "Mixed_7b", x)?;
    let x = inception_e(&mut b, "Mixed_7c", x)?;
    let x = b.global_avg_pool("avgpool", x)?;
    let x = b.dropout("dropout", x)?;
    let x = b.flatten("flatten", x)?;
    b.linear("fc", x, 1000, true)?;
    b.finish()
}

/// 1×n convolution with "same" padding.
fn row(c: u32, n: u32) -> Conv {
    Conv::rect(c, (1, n)).padding_hw((0, n / 2))
}

/// n×1 convolution with "same" padding.
fn col(c: u32, n: u32) -> Conv {
    Conv::rect(c, (n, 1)).padding_hw((n / 2, 0))
}

/// The average-pool branch shared by modules A, C and E: 3×3/1 pool, then a 1×1 BasicConv2d.
fn pool_branch(b: &mut GraphBuilder, p: &str, x: Tensor, c: u32) -> Result<Tensor, ModelError> {
    let y = b.avg_pool(format!("{p}.avg_pool"), x, Pool::new(3, 1).padding(1))?;
    b.conv_bn_relu(&format!("{p}.branch_pool"), y, Conv::new(c, 1))
}

fn inception_a(b: &mut GraphBuilder, p: &str, x: Tensor, pool: u32) -> Result<Tensor, ModelError> {
    let b1 = b.conv_bn_relu(&format!("{p}.branch1x1"), x, Conv::new(64, 1))?;

    let b5 = b.conv_bn_relu(&format!("{p}.branch5x5_1"), x, Conv::new(48, 1))?;
    let b5 = b.conv_bn_relu(&format!("{p}.branch5x5_2"), b5, Conv::new(64, 5).padding(2))?;

    let b3 = b.conv_bn_relu(&format!("{p}.branch3x3dbl_1"), x, Conv::new(64, 1))?;
    let b3 = b.conv_bn_relu(
        &format!("{p}.branch3x3dbl_2"),
        b3,
        Conv::new(96, 3).padding(1),
    )?;
    let b3 = b.conv_bn_relu(
        &format!("{p}.branch3x3dbl_3"),
        b3,
        Conv::new(96, 3).padding(1),
    )?;

    let bp = pool_branch(b, p, x, pool)?;
    b.concat(format!("{p}.concat"), &[b1, b5, b3, bp])
}

fn inception_b(b: &mut GraphBuilder, p: &str, x: Tensor) -> Result<Tensor, ModelError> {
    let b3 = b.conv_bn_relu(&format!("{p}.branch3x3"), x, Conv::new(384, 3).stride(2))?;

    let bd = b.conv_bn_relu(&format!("{p}.branch3x3dbl_1"), x, Conv::new(64, 1))?;
    let bd = b.conv_bn_relu(
        &format!("{p}.branch3x3dbl_2"),
        bd,
        Conv::new(96, 3).padding(1),
    )?;
    let bd = b.conv_bn_relu(
        &format!("{p}.branch3x3dbl_3"),
        bd,
        Conv::new(96, 3).stride(2),
    )?;

    let bp = b.max_pool(format!("{p}.max_pool"), x, Pool::new(3, 2))?;
    b.concat(format!("{p}.concat"), &[b3, bd, bp])
}

fn inception_c(b: &mut GraphBuilder, p: &str, x: Tensor, c7: u32) -> Result<Tensor, ModelError> {
    let b1 = b.conv_bn_relu(&format!("{p}.branch1x1"), x, Conv::new(192, 1))?;

    let b7 = b.conv_bn_relu(&format!("{p}.branch7x7_1"), x, Conv::new(c7, 1))?;
    let b7 = b.conv_bn_relu(&format!("{p}.branch7x7_2"), b7, row(c7, 7))?;
    let b7 = b.conv_bn_relu(&format!("{p}.branch7x7_3"), b7, col(192, 7))?;

    let bd = b.conv_bn_relu(&format!("{p}.branch7x7dbl_1"), x, Conv::new(c7, 1))?;
    let bd = b.conv_bn_relu(&format!("{p}.branch7x7dbl_2"), bd, col(c7, 7))?;
    let bd = b.conv_bn_relu(&format!("{p}.branch7x7dbl_3"), bd, row(c7, 7))?;
    let bd = b.conv_bn_relu(&format!("{p}.branch7x7dbl_4"), bd, col(c7, 7))?;
    let bd = b.conv_bn_relu(&format!("{p}.branch7x7dbl_5"), bd, row(192, 7))?;

    let bp = pool_branch(b, p, x, 192)?;
    b.concat(format!("{p}.concat"), &[b1, b7, bd, bp])
}

fn inception_d(b: &mut GraphBuilder, p: &str, x: Tensor) -> Result<Tensor, ModelError> {
    let b3 = b.conv_bn_relu(&format!("{p}.branch3x3_1"), x, Conv::new(192, 1))?;
    let b3 = b.conv_bn_relu(&format!("{p}.branch3x3_2"), b3, Conv::new(320, 3).stride(2))?;

    let b7 = b.conv_bn_relu(&format!("{p}.branch7x7x3_1"), x, Conv::new(192, 1))?;
    let b7 = b.conv_bn_relu(&format!("{p}.branch7x7x3_2"), b7, row(192, 7))?;
    let b7 = b.conv_bn_relu(&format!("{p}.branch7x7x3_3"), b7, col(192, 7))?;
    let b7 = b.conv_bn_relu(
        &format!("{p}.branch7x7x3_4"),
        b7,
        Conv::new(192, 3).stride(2),
    )?;

    let bp = b.max_pool(format!("{p}.max_pool"), x, Pool::new(3, 2))?;
    b.concat(format!("{p}.concat"), &[b3, b7, bp])
}

fn inception_e(b: &mut GraphBuilder, p: &str, x: Tensor) -> Result<Tensor, ModelError> {
    let b1 = b.conv_bn_relu(&format!("{p}.branch1x1"), x, Conv::new(320, 1))?;

    let b3 = b.conv_bn_relu(&format!("{p}.branch3x3_1"), x, Conv::new(384, 1))?;
    let b3a = b.conv_bn_relu(&format!("{p}.branch3x3_2a"), b3, row(384, 3))?;
    let b3b = b.conv_bn_relu(&format!("{p}.branch3x3_2b"), b3, col(384, 3))?;
    let b3 = b.concat(format!("{p}.branch3x3.concat"), &[b3a, b3b])?;

    let bd = b.conv_bn_relu(&format!("{p}.branch3x3dbl_1"), x, Conv::new(448, 1))?;
    let bd = b.conv_bn_relu(
        &format!("{p}.branch3x3dbl_2"),
        bd,
        Conv::new(384, 3).padding(1),
    )?;
    let bda = b.conv_bn_relu(&format!("{p}.branch3x3dbl_3a"), bd, row(384, 3))?;
    let bdb = b.conv_bn_relu(&format!("{p}.branch3x3dbl_3b"), bd, col(384, 3))?;
    let bd = b.concat(format!("{p}.branch3x3dbl.concat"), &[bda, bdb])?;

    let bp = pool_branch(b, p, x, 192)?;
    b.concat(format!("{p}.concat"), &[b1, b3, bd, bp])
}
