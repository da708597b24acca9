//! Errors of the model IR: shape inference, graph construction and validation, zoo lookup.

use super::{LayerId, Shape};

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ModelError {
    /// An element-wise join whose inputs do not all have the same shape.
    #[error("layer {layer}: Add inputs differ in shape ({first} vs {other})")]
    ShapeMismatch {
        layer: String,
        first: Shape,
        other: Shape,
    },
    /// A channel concatenation whose inputs differ in height or width.
    #[error("layer {layer}: Concat inputs differ in spatial size ({first} vs {other})")]
    SpatialMismatch {
        layer: String,
        first: Shape,
        other: Shape,
    },
    /// The channels a layer receives are not the ones it was declared for.
    #[error("layer {layer}: expects {expected} input channels, got {found}")]
    ChannelMismatch {
        layer: String,
        expected: u32,
        found: u32,
    },
    /// Grouped convolution whose channel counts are not multiples of the group count.
    #[error(
        "layer {layer}: {groups} groups do not divide {in_channels} input and {out_channels} output channels"
    )]
    BadGroups {
        layer: String,
        in_channels: u32,
        out_channels: u32,
        groups: u32,
    },
    /// The kernel does not fit into the (padded) input, so the output would be empty.
    #[error("layer {layer}: input {input} is too small for this window; the output would be empty")]
    EmptyOutput { layer: String, input: Shape },
    /// A zero kernel/stride/dilation/size, or pooling padding over half the kernel.
    #[error("layer {layer}: invalid parameter: {reason}")]
    InvalidParameter { layer: String, reason: String },
    /// A fully connected layer applied to an activation that still has spatial extent.
    #[error(
        "layer {layer}: Linear needs a flat input (c×1×1), got {input}; add a Flatten or GlobalAvgPool"
    )]
    NotFlat { layer: String, input: Shape },
    /// Wrong number of inputs for the operator.
    #[error("layer {layer}: {op} takes {expected} input(s), got {found}")]
    Arity {
        layer: String,
        op: &'static str,
        expected: &'static str,
        found: usize,
    },
    /// An input refers to a layer that does not exist (yet): graphs are in topological order.
    #[error("layer {layer}: input {input} is not an earlier layer of this graph")]
    UnknownInput { layer: String, input: LayerId },
    /// The graph input can only feed single-input layers (an empty input list denotes it).
    #[error("layer {layer}: the graph input cannot be one of several inputs of a join")]
    GraphInputInJoin { layer: String },
    /// Layer names are metric labels and lookup keys, so they must be unique.
    #[error("duplicate layer name {name:?}")]
    DuplicateName { name: String },
    /// A stored graph whose layer ids do not match their positions.
    #[error("layer at position {position} has id {id}")]
    BadId { position: usize, id: LayerId },
    /// A stored output shape that disagrees with shape inference.
    #[error("layer {layer}: stored output {stored} but inference gives {inferred}")]
    StaleShape {
        layer: String,
        stored: Shape,
        inferred: Shape,
    },
    /// A shape dimension or count that does not fit the IR's integer types.
    #[error("layer {layer}: size overflow")]
    Overflow { layer: String },
    #[error("graph {0:?} has no layers")]
    EmptyGraph(String),
    #[error("unknown model {name:?}; known models: {known}")]
    UnknownModel { name: String, known: String },
}
