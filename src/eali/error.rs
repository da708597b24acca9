//! Errors of the scheduler core: inconsistent cost tables, graphs the unit builder cannot map,
//! and configurations outside their valid ranges.

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum EaliError {
    /// The cost table has no entry for a layer of the graph.
    #[error("cost table for {model} has no layer named {layer}")]
    MissingLayer { model: String, layer: String },
    /// A cost table whose arrays do not match its declared axes.
    #[error("cost table is malformed: {0}")]
    BadTable(String),
    /// A graph with no layers, or one the unit builder cannot read.
    #[error("graph {0} has no layers")]
    EmptyGraph(String),
    /// A configuration value outside its valid range.
    #[error("invalid configuration: {0}")]
    BadConfig(String),
    /// A unit chain and a unit cost table that do not describe the same units.
    #[error("unit chain has {chain} units but the cost table has {table}")]
    UnitMismatch { chain: usize, table: usize },
}
