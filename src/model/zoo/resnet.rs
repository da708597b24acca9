//! ResNet-18/50/152, torchvision variant (v1.5: the stride of a bottleneck sits on its 3×3
//! convolution). Each block ends in an explicit two-input Add of the residual branch and the
//! identity or projection (`downsample`) shortcut, followed by the block's last ReLU.

use crate::model::{Conv, Graph, GraphBuilder, ModelError, Pool, Shape, Tensor};

#[derive(Clone, Copy)]
enum Block {
    Basic,
    Bottleneck,
}

impl Block {
    fn expansion(self) -> u32 {
        match self {
            Block::Basic => 1,
            Block::Bottleneck => 4,
        }
    }
}

pub(super) fn resnet18() -> Result<Graph, ModelError> {
    resnet("resnet18", Block::Basic, [2, 2, 2, 2])
}

pub(super) fn resnet50() -> Result<Graph, ModelError> {
    resnet("resnet50", Block::Bottleneck, [3, 4, 6, 3])
}

pub(super) fn resnet152() -> Result<Graph, ModelError> {
    resnet("resnet152", Block::Bottleneck, [3, 8, 36, 3])
}

fn resnet(name: &str, block: Block, depths: [u32; 4]) -> Result<Graph, ModelError> {
    let mut b = GraphBuilder::new(name, Shape::new(3, 224, 224));
    let x = b.input();
    let x = b.conv("conv1", x, Conv::new(64, 7).stride(2).padding(3))?;
    let x = b.batch_norm("bn1", x)?;
    let x = b.relu("relu", x)?;
    let mut x = b.max_pool("maxpool", x, Pool::new(3, 2).padding(1))?;
    for (stage, (&depth, planes)) in depths.iter().zip([64, 128, 256, 512]).enumerate() {
        for i in 0..depth {
            let stride = if stage > 0 && i == 0 { 2 } else { 1 };
            let prefix = format!("layer{}.{i}", stage + 1);
            x = residual_block(&mut b, &prefix, x, block, planes, stride)?;
        }
    }
    let x = b.global_avg_pool("avgpool", x)?;
    let x = b.flatten("flatten", x)?;
    b.linear("fc", x, 1000, true)?;
    b.finish()
}

fn residual_block(
    b: &mut GraphBuilder,
    p: &str,
    x: Tensor,
    block: Block,
    planes: u32,
    stride: u32,
) -> Result<Tensor, ModelError> {
    let out = planes * block.expansion();
    let (y, last_relu) = match block {
        Block::Basic => {
            let y = b.conv(
                format!("{p}.conv1"),
                x,
                Conv::new(planes, 3).stride(stride).padding(1),
            )?;
            let y = b.batch_norm(format!("{p}.bn1"), y)?;
            let y = b.relu(format!("{p}.relu1"), y)?;
            let y = b.conv(format!("{p}.conv2"), y, Conv::new(planes, 3).padding(1))?;
            (b.batch_norm(format!("{p}.bn2"), y)?, "relu2")
        }
        Block::Bottleneck => {
            let y = b.conv(format!("{p}.conv1"), x, Conv::new(planes, 1))?;
            let y = b.batch_norm(format!("{p}.bn1"), y)?;
            let y = b.relu(format!("{p}.relu1"), y)?;
            let y = b.conv(
                format!("{p}.conv2"),
                y,
                Conv::new(planes, 3).stride(stride).padding(1),
            )?;
            let y = b.batch_norm(format!("{p}.bn2"), y)?;
            let y = b.relu(format!("{p}.relu2"), y)?;
            let y = b.conv(format!("{p}.conv3"), y, Conv::new(out, 1))?;
            (b.batch_norm(format!("{p}.bn3"), y)?, "relu3")
        }
    };
    let shortcut = if stride != 1 || x.shape().c != out {
        let s = b.conv(
            format!("{p}.downsample.0"),
            x,
            Conv::new(out, 1).stride(stride),
        )?;
        b.batch_norm(format!("{p}.downsample.1"), s)?
    } else {
        x
    };
    let sum = b.add(format!("{p}.add"), &[y, shortcut])?;
    b.relu(format!("{p}.{last_relu}"), sum)
}
