//! VGG-16 (configuration "D"), torchvision variant without batch norm.

use crate::model::{Conv, Graph, GraphBuilder, ModelError, Pool, Shape};

/// Channels of each 3×3 convolution; `None` is a 2×2 max pool.
const VGG16: &[Option<u32>] = &[
    Some(64),
    Some(64),
    None,
    Some(128),
    Some(128),
    None,
    Some(256),
    Some(256),
    Some(256),
    None,
    Some(512),
    Some(512),
    Some(512),
    None,
    Some(512),
    Some(512),
    Some(512),
    None,
];

pub(super) fn vgg16() -> Result<Graph, ModelError> {
    let mut b = GraphBuilder::new("vgg16", Shape::new(3, 224, 224));
    let mut x = b.input();
    // torchvision numbers the modules of `features` consecutively: conv, relu, ..., pool.
    let mut index = 0;
    for item in VGG16 {
        match item {
            Some(c) => {
                x = b.conv(
                    format!("features.{index}"),
                    x,
                    Conv::new(*c, 3).padding(1).bias(true),
                )?;
                x = b.relu(format!("features.{}", index + 1), x)?;
                index += 2;
            }
            None => {
                x = b.max_pool(format!("features.{index}"), x, Pool::new(2, 2))?;
                index += 1;
            }
        }
    }
    let x = b.adaptive_avg_pool("avgpool", x, (7, 7))?;
    let x = b.flatten("flatten", x)?;
    let x = b.linear("classifier.0", x, 4096, true)?;
    let x = b.relu("classifier.1", x)?;
    let x = b.dropout("classifier.2", x)?;
    let x = b.linear("classifier.3", x, 4096, true)?;
    let x = b.relu("classifier.4", x)?;
    let x = b.dropout("classifier.5", x)?;
    b.linear("classifier.6", x, 1000, true)?;
    b.finish()
}
