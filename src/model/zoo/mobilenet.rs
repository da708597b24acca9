//! MobileNetV2 (width 1.0), torchvision variant: inverted residual blocks (1×1 expansion,
//! 3×3 depthwise, 1×1 linear projection, ReLU6). Blocks with stride 1 and equal input and output
//! channels end in an explicit two-input Add with their input.

use crate::model::{Conv, Graph, GraphBuilder, ModelError, Shape, Tensor};

/// (expansion t, output channels c, repeats n, first stride s), from the paper's Table 2.
const SETTINGS: [(u32, u32, u32, u32); 7] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
];

pub(super) fn mobilenet_v2() -> Result<Graph, ModelError> {
    let mut b = GraphBuilder::new("mobilenet_v2", Shape::new(3, 224, 224));
    let x = b.input();
    let mut x = conv_bn_relu6(
        &mut b,
        "features.0",
        x,
        Conv::new(32, 3).stride(2).padding(1),
    )?;
    let mut index = 1;
    for (t, c, n, s) in SETTINGS {
        for i in 0..n {
            let stride = if i == 0 { s } else { 1 };
            x = inverted_residual(&mut b, &format!("features.{index}"), x, c, stride, t)?;
            index += 1;
        }
    }
    let x = conv_bn_relu6(&mut b, &format!("features.{index}"), x, Conv::new(1280, 1))?;
    let x = b.global_avg_pool("avgpool", x)?;
    let x = b.flatten("flatten", x)?;
    let x = b.dropout("classifier.0", x)?;
    b.linear("classifier.1", x, 1000, true)?;
    b.finish()
}

/// torchvision's `Conv2dNormActivation` with ReLU6: modules `.0` conv, `.1` BN, `.2` ReLU6.
fn conv_bn_relu6(
    b: &mut GraphBuilder,
    p: &str,
    x: Tensor,
    conv: Conv,
) -> Result<Tensor, ModelError> {
    let x = b.conv(format!("{p}.0"), x, conv)?;
    let x = b.batch_norm(format!("{p}.1"), x)?;
    b.relu6(format!("{p}.2"), x)
}

fn inverted_residual(
    b: &mut GraphBuilder,
    p: &str,
    x: Tensor,
    out: u32,
    stride: u32,
    expand: u32,
) -> Result<Tensor, ModelError> {
    let inp = x.shape().c;
    let hidden = inp * expand;
    // torchvision numbers the modules of `.conv` consecutively; without expansion the depthwise
    // block comes first.
    let mut index = 0;
    let mut y = x;
    if expand != 1 {
        y = conv_bn_relu6(b, &format!("{p}.conv.0"), y, Conv::new(hidden, 1))?;
        index = 1;
    }
    let dw = Conv::new(hidden, 3)
        .stride(stride)
        .padding(1)
        .groups(hidden);
    y = conv_bn_relu6(b, &format!("{p}.conv.{index}"), y, dw)?;
    y = b.conv(format!("{p}.conv.{}", index + 1), y, Conv::new(out, 1))?;
    y = b.batch_norm(format!("{p}.conv.{}", index + 2), y)?;
    if stride == 1 && inp == out {
        b.add(format!("{p}.add"), &[y, x])
    } else {
        Ok(y)
    }
}
