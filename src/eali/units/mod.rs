//! Optimization units: consecutive layers that share one graphics clock.
//!
//! [`structural_chain`] groups layers by architecture (conv/linear anchors with their trailing
//! BN/activation/pooling, fork/join blocks, stem and head); [`build`] then sums the per-layer cost
//! table into a [`UnitCostTable`] and merges units that are too short to be worth a clock switch,
//! that always want the same clock as a neighbour, or that exceed the unit cap
//! ([`merge::merge_units`]). [`single_unit`] is the one-unit chain of per-batch DVFS (EAIS mode).

use serde::{Deserialize, Serialize};

use super::costs::LayerCostTable;
use super::error::EaliError;
use crate::model::{Graph, LayerId};

pub mod merge;
mod structure;
#[cfg(test)]
mod tests;

pub use merge::{UnitConfig, merge_units};

/// How a unit came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitKind {
    /// Layers before the first block of a modular network.
    Stem,
    /// A single-entry/single-exit fork/join block (residual, inception, dense, inverted residual).
    Block,
    /// A conv/linear anchor with the layers that follow it.
    Layer,
    /// Global pooling and classifier after the last block.
    Head,
    /// Several units merged by the cost-driven pass.
    Merged,
    /// The whole network as one unit (per-batch DVFS).
    Whole,
}

/// One optimization unit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unit {
    /// "stem", "layer1.0", "head", or "layer1.0..layer1.2" after merging.
    pub name: String,
    pub kind: UnitKind,
    /// Member layers, ascending (topological) order; run them in this order.
    pub layers: Vec<LayerId>,
    pub layer_names: Vec<String>,
    /// Names of the structural units this one was merged from (itself if never merged).
    pub parts: Vec<String>,
}

/// The model as a chain of optimization units, in execution order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitChain {
    pub model: String,
    pub units: Vec<Unit>,
}

impl UnitChain {
    pub fn len(&self) -> usize {
        self.units.len()
    }

    /// The units as layer ranges (units are contiguous runs of the topological order).
    pub fn ranges(&self) -> Result<Vec<std::ops::Range<usize>>, EaliError> {
        let mut out = Vec::with_capacity(self.len());
        let mut next = 0;
        for u in &self.units {
            let first = u.layers.first().copied().unwrap_or(next);
            let contiguous = u.layers.iter().enumerate().all(|(i, &l)| l == first + i);
            if first != next || !contiguous {
                return Err(EaliError::BadConfig(format!(
                    "unit {} of {} is not a contiguous run of layers",
                    u.name, self.model
                )));
            }
            next = first + u.layers.len();
            out.push(first..next);
        }
        Ok(out)
    }

    pub fn is_empty(&self) -> bool {
        self.units.is_empty()
    }

    pub fn names(&self) -> Vec<&str> {
        self.units.iter().map(|u| u.name.as_str()).collect()
    }

    /// Index of the unit holding layer `layer`.
    pub fn unit_of_layer(&self, layer: LayerId) -> Option<usize> {
        self.units.iter().position(|u| u.layers.contains(&layer))
    }

    /// Joins units `i` and `i + 1` into one.
    pub fn merge_adjacent(&mut self, i: usize) {
        if i + 1 >= self.units.len() {
            return;
        }
        let next = self.units.remove(i + 1);
        let u = &mut self.units[i];
        u.layers.extend(next.layers);
        u.layer_names.extend(next.layer_names);
        u.parts.extend(next.parts);
        u.kind = UnitKind::Merged;
        u.name = match (u.parts.first(), u.parts.last()) {
            (Some(a), Some(b)) if u.parts.len() > 1 => format!("{a}..{b}"),
            _ => u.name.clone(),
        };
    }
}

/// Time and energy of every unit over batch sizes × clocks: the per-layer table summed per unit.
///
/// Indexing as in [`LayerCostTable`]: `time_s[unit][bi][fi]` for batch `batches[bi]` at clock
/// `clocks_mhz[fi]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitCostTable {
    pub model: String,
    pub gpu: String,
    pub units: Vec<String>,
    pub batches: Vec<u32>,
    pub clocks_mhz: Vec<u32>,
    pub time_s: Vec<Vec<Vec<f64>>>,
    pub energy_j: Vec<Vec<Vec<f64>>>,
    pub idle_power_w: Vec<f64>,
    pub batch_overhead_s: Vec<f64>,
}

impl UnitCostTable {
    /// Sums `layers` per unit of `chain`; layers are matched by name.
    pub fn from_layers(chain: &UnitChain, layers: &LayerCostTable) -> Result<Self, EaliError> {
        check_layer_table(layers)?;
        let (nb, nf) = (layers.batches.len(), layers.clocks_mhz.len());
        let mut time_s = Vec::with_capacity(chain.len());
        let mut energy_j = Vec::with_capacity(chain.len());
        for unit in &chain.units {
            let mut t = vec![vec![0.0; nf]; nb];
            let mut e = vec![vec![0.0; nf]; nb];
            for name in &unit.layer_names {
                let li = layers
                    .layers
                    .iter()
                    .position(|l| l == name)
                    .ok_or_else(|| EaliError::MissingLayer {
                        model: layers.model.clone(),
                        layer: name.clone(),
                    })?;
                for bi in 0..nb {
                    for fi in 0..nf {
                        t[bi][fi] += layers.time_s[li][bi][fi];
                        e[bi][fi] += layers.energy_j[li][bi][fi];
                    }
                }
            }
            time_s.push(t);
            energy_j.push(e);
        }
        Ok(Self {
            model: layers.model.clone(),
            gpu: layers.gpu.clone(),
            units: chain.units.iter().map(|u| u.name.clone()).collect(),
            batches: layers.batches.clone(),
            clocks_mhz: layers.clocks_mhz.clone(),
            time_s,
            energy_j,
            idle_power_w: layers.idle_power_w.clone(),
            batch_overhead_s: layers.batch_overhead_s.clone(),
        })
    }

    pub fn num_units(&self) -> usize {
        self.units.len()
    }

    /// Index of the highest clock.
    pub fn max_clock_index(&self) -> usize {
        self.clocks_mhz.len().saturating_sub(1)
    }

    /// Index of batch size `batch` in `batches`.
    pub fn batch_index(&self, batch: u32) -> Option<usize> {
        self.batches.iter().position(|&b| b == batch)
    }

    /// Index of clock `mhz` in `clocks_mhz`.
    pub fn clock_index(&self, mhz: u32) -> Option<usize> {
        self.clocks_mhz.iter().position(|&c| c == mhz)
    }

    /// Whole-network time at batch index `bi` with every unit at clock index `fi` (no overhead).
    pub fn total_time_s(&self, bi: usize, fi: usize) -> f64 {
        self.time_s.iter().map(|u| u[bi][fi]).sum()
    }

    /// The same table with only the clocks in `keep_mhz` (e.g. just f_max for a max-clock
    /// baseline). Clocks not in the table are ignored.
    pub fn restrict_clocks(&self, keep_mhz: &[u32]) -> Self {
        let keep: Vec<usize> = (0..self.clocks_mhz.len())
            .filter(|&k| keep_mhz.contains(&self.clocks_mhz[k]))
            .collect();
        let pick = |row: &Vec<f64>| keep.iter().map(|&k| row[k]).collect::<Vec<f64>>();
        let cube =
            |c: &Vec<Vec<Vec<f64>>>| c.iter().map(|u| u.iter().map(pick).collect()).collect();
        Self {
            clocks_mhz: keep.iter().map(|&k| self.clocks_mhz[k]).collect(),
            idle_power_w: pick(&self.idle_power_w),
            time_s: cube(&self.time_s),
            energy_j: cube(&self.energy_j),
            ..self.clone()
        }
    }

    /// Joins units `i` and `i + 1` (costs add).
    pub fn merge_adjacent(&mut self, i: usize, name: String) {
        if i + 1 >= self.units.len() {
            return;
        }
        let (t, e) = (self.time_s.remove(i + 1), self.energy_j.remove(i + 1));
        self.units.remove(i + 1);
        for (row, add) in self.time_s[i].iter_mut().zip(&t) {
            row.iter_mut().zip(add).for_each(|(a, b)| *a += b);
        }
        for (row, add) in self.energy_j[i].iter_mut().zip(&e) {
            row.iter_mut().zip(add).for_each(|(a, b)| *a += b);
        }
        self.units[i] = name;
    }

    /// Checks that the arrays match the axes and hold finite, non-negative numbers.
    pub fn validate(&self) -> Result<(), EaliError> {
        let (nu, nb, nf) = (self.units.len(), self.batches.len(), self.clocks_mhz.len());
        check_axes(
            &self.batches,
            &self.clocks_mhz,
            &self.idle_power_w,
            &self.batch_overhead_s,
        )?;
        if nu == 0 {
            return Err(EaliError::BadTable("no units".into()));
        }
        check_cube("time_s", &self.time_s, nu, nb, nf)?;
        check_cube("energy_j", &self.energy_j, nu, nb, nf)
    }
}

fn check_axes(
    batches: &[u32],
    clocks: &[u32],
    idle: &[f64],
    overhead: &[f64],
) -> Result<(), EaliError> {
    let ascending = |v: &[u32]| v.windows(2).all(|w| w[0] < w[1]);
    if batches.is_empty() || clocks.is_empty() || !ascending(batches) || !ascending(clocks) {
        return Err(EaliError::BadTable(
            "batches and clocks must be non-empty and ascending".into(),
        ));
    }
    if batches[0] == 0 {
        return Err(EaliError::BadTable("batch size 0".into()));
    }
    if idle.len() != clocks.len() || overhead.len() != batches.len() {
        return Err(EaliError::BadTable(format!(
            "idle power has {} entries for {} clocks, overhead {} for {} batches",
            idle.len(),
            clocks.len(),
            overhead.len(),
            batches.len()
        )));
    }
    if idle
        .iter()
        .chain(overhead)
        .any(|x| !x.is_finite() || *x < 0.0)
    {
        return Err(EaliError::BadTable(
            "idle power or overhead not finite and ≥ 0".into(),
        ));
    }
    Ok(())
}

fn check_cube(
    what: &str,
    cube: &[Vec<Vec<f64>>],
    nu: usize,
    nb: usize,
    nf: usize,
) -> Result<(), EaliError> {
    let ok = cube.len() == nu
        && cube.iter().all(|u| {
            u.len() == nb
                && u.iter()
                    .all(|r| r.len() == nf && r.iter().all(|x| x.is_finite() && *x >= 0.0))
        });
    if ok {
        Ok(())
    } else {
        Err(EaliError::BadTable(format!(
            "{what} is not {nu}×{nb}×{nf} finite non-negative numbers"
        )))
    }
}

/// Checks a per-layer cost table's shape.
pub fn check_layer_table(t: &LayerCostTable) -> Result<(), EaliError> {
    check_axes(
        &t.batches,
        &t.clocks_mhz,
        &t.idle_power_w,
        &t.batch_overhead_s,
    )?;
    let (nl, nb, nf) = (t.layers.len(), t.batches.len(), t.clocks_mhz.len());
    if nl == 0 {
        return Err(EaliError::BadTable("no layers".into()));
    }
    check_cube("time_s", &t.time_s, nl, nb, nf)?;
    check_cube("energy_j", &t.energy_j, nl, nb, nf)
}

/// Structural units of `graph` (no costs involved, no merging).
pub fn structural_chain(graph: &Graph) -> Result<UnitChain, EaliError> {
    if graph.layers.is_empty() {
        return Err(EaliError::EmptyGraph(graph.name.clone()));
    }
    Ok(UnitChain {
        model: graph.name.clone(),
        units: structure::structural_units(graph),
    })
}

/// Structural units of `graph`, costed from `layers` and merged per `config`.
pub fn build(
    graph: &Graph,
    layers: &LayerCostTable,
    config: &UnitConfig,
) -> Result<(UnitChain, UnitCostTable), EaliError> {
    let chain = structural_chain(graph)?;
    let costs = UnitCostTable::from_layers(&chain, layers)?;
    merge_units(chain, costs, config)
}

/// The whole network as one unit (per-batch DVFS, EAIS mode), from the cost table alone.
pub fn single_unit(layers: &LayerCostTable) -> Result<(UnitChain, UnitCostTable), EaliError> {
    let unit = Unit {
        name: "all".to_string(),
        kind: UnitKind::Whole,
        layers: (0..layers.layers.len()).collect(),
        layer_names: layers.layers.clone(),
        parts: vec!["all".to_string()],
    };
    let chain = UnitChain {
        model: layers.model.clone(),
        units: vec![unit],
    };
    let costs = UnitCostTable::from_layers(&chain, layers)?;
    Ok((chain, costs))
}
