//! AlexNet, torchvision variant (64-192-384-256-256 channels, no LRN, adaptive 6×6 pool).

use crate::model::{Conv, Graph, GraphBuilder, ModelError, Pool, Shape};

pub(super) fn alexnet() -> Result<Graph, ModelError> {
    let mut b = GraphBuilder::new("alexnet", Shape::new(3, 224, 224));
    let x = b.input();
    let x = b.conv(
        "features.0",
        x,
        Conv::new(64, 11).stride(4).padding(2).bias(true),
    )?;
    let x = b.relu("features.1", x)?;
    let x = b.max_pool("features.2", x, Pool::new(3, 2))?;
    let x = b.conv("features.3", x, Conv::new(192, 5).padding(2).bias(true))?;
    let x = b.relu("features.4", x)?;
    let x = b.max_pool("features.5", x, Pool::new(3, 2))?;
    let x = b.conv("features.6", x, Conv::new(384, 3).padding(1).bias(true))?;
    let x = b.relu("features.7", x)?;
    let x = b.conv("features.8", x, Conv::new(256, 3).padding(1).bias(true))?;
    let x = b.relu("features.9", x)?;
    let x = b.conv("features.10", x, Conv::new(256, 3).padding(1).bias(true))?;
    let x = b.relu("features.11", x)?;
    let x = b.max_pool("features.12", x, Pool::new(3, 2))?;
    let x = b.adaptive_avg_pool("avgpool", x, (6, 6))?;
    let x = b.flatten("flatten", x)?;
    let x = b.dropout("classifier.0", x)?;
    let x = b.linear("classifier.1", x, 4096, true)?;
    let x = b.relu("classifier.2", x)?;
    let x = b.dropout("classifier.3", x)?;
    let x = b.linear("classifier.4", x, 4096, true)?;
    let x = b.relu("classifier.5", x)?;
    b.linear("classifier.6", x, 1000, true)?;
    b.finish()
}
