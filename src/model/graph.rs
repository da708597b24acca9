//! Structural queries on a [`Graph`]: lookups, input shapes, consumer adjacency (for fork/join
//! detection in unit combination) and validation of graphs that did not come from the builder.

use std::collections::HashSet;

use super::{Graph, Layer, LayerId, ModelError, Shape, infer_output};

impl Graph {
    pub fn layer(&self, id: LayerId) -> &Layer {
        &self.layers[id]
    }

    pub fn len(&self) -> usize {
        self.layers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// Id of the layer called `name`.
    pub fn layer_by_name(&self, name: &str) -> Option<LayerId> {
        self.layers.iter().position(|l| l.name == name)
    }

    /// Per-sample shapes of a layer's inputs, in input order (the graph input when it has none).
    ///
    /// Panics if `id` is not a layer of this graph.
    pub fn input_shapes_of(&self, id: LayerId) -> Vec<Shape> {
        let l = &self.layers[id];
        if l.inputs.is_empty() {
            vec![self.input]
        } else {
            l.inputs.iter().map(|&i| self.layers[i].output).collect()
        }
    }

    /// Per-sample shape of a layer's (first) input. Every input of an Add has this shape; for a
    /// Concat use [`Graph::input_shapes_of`].
    ///
    /// Panics if `id` is not a layer of this graph.
    pub fn input_shape_of(&self, id: LayerId) -> Shape {
        let l = &self.layers[id];
        l.inputs
            .first()
            .map_or(self.input, |&i| self.layers[i].output)
    }

    /// For every layer, the layers that read its output, in ascending id order.
    pub fn consumers(&self) -> Vec<Vec<LayerId>> {
        let mut out = vec![Vec::new(); self.layers.len()];
        for l in &self.layers {
            for &i in &l.inputs {
                // A layer may read the same producer twice (x + x); list it once.
                if out[i].last() != Some(&l.id) {
                    out[i].push(l.id);
                }
            }
        }
        out
    }

    /// Layers that read the graph input.
    pub fn sources(&self) -> Vec<LayerId> {
        self.layers
            .iter()
            .filter(|l| l.inputs.is_empty())
            .map(|l| l.id)
            .collect()
    }

    /// Layers whose output nobody reads: the graph outputs.
    pub fn sinks(&self) -> Vec<LayerId> {
        self.consumers()
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_empty())
            .map(|(i, _)| i)
            .collect()
    }

    /// Per-sample shape of the (last) graph output.
    pub fn output_shape(&self) -> Shape {
        self.layers.last().map_or(self.input, |l| l.output)
    }

    /// Checks what the builder guarantees, for graphs read from files: ids equal positions,
    /// inputs refer to earlier layers (topological order), names are unique, and every stored
    /// output shape matches shape inference.
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.layers.is_empty() {
            return Err(ModelError::EmptyGraph(self.name.clone()));
        }
        let mut names = HashSet::new();
        for (position, l) in self.layers.iter().enumerate() {
            if l.id != position {
                return Err(ModelError::BadId { position, id: l.id });
            }
            if !names.insert(l.name.as_str()) {
                return Err(ModelError::DuplicateName {
                    name: l.name.clone(),
                });
            }
            if let Some(&bad) = l.inputs.iter().find(|&&i| i >= position) {
                return Err(ModelError::UnknownInput {
                    layer: l.name.clone(),
                    input: bad,
                });
            }
            let inferred = infer_output(&l.name, &l.op, &self.input_shapes_of(position))?;
            if inferred != l.output {
                return Err(ModelError::StaleShape {
                    layer: l.name.clone(),
                    stored: l.output,
                    inferred,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Conv, GraphBuilder, Op};
    use super::*;

    /// input -> a -> {b, c} -> cat -> d
    fn diamond() -> Graph {
        let mut g = GraphBuilder::new("diamond", Shape::new(3, 8, 8));
        let x = g.input();
        let a = g.conv("a", x, Conv::new(8, 1)).unwrap();
        let b = g.conv("b", a, Conv::new(4, 3).padding(1)).unwrap();
        let c = g.conv("c", a, Conv::new(6, 1)).unwrap();
        let cat = g.concat("cat", &[b, c]).unwrap();
        let _ = g.relu("d", cat).unwrap();
        g.finish().unwrap()
    }

    #[test]
    fn consumers_sources_and_sinks() {
        let g = diamond();
        assert_eq!(
            g.consumers(),
            vec![vec![1, 2], vec![3], vec![3], vec![4], vec![]]
        );
        assert_eq!(g.sources(), vec![0]);
        assert_eq!(g.sinks(), vec![4]);
        assert_eq!(g.layer_by_name("cat"), Some(3));
        assert_eq!(g.layer_by_name("nope"), None);
    }

    #[test]
    fn input_shapes() {
        let g = diamond();
        assert_eq!(g.input_shape_of(0), Shape::new(3, 8, 8));
        assert_eq!(g.input_shape_of(1), Shape::new(8, 8, 8));
        assert_eq!(
            g.input_shapes_of(3),
            vec![Shape::new(4, 8, 8), Shape::new(6, 8, 8)]
        );
        assert_eq!(g.output_shape(), Shape::new(10, 8, 8));
    }

    #[test]
    fn validate_accepts_built_graphs_and_catches_edits() {
        let g = diamond();
        assert_eq!(g.validate(), Ok(()));

        let mut stale = g.clone();
        stale.layers[2].output = Shape::new(7, 8, 8);
        assert!(matches!(
            stale.validate(),
            Err(ModelError::StaleShape { .. })
        ));

        let mut cyclic = g.clone();
        cyclic.layers[1].inputs = vec![3];
        assert!(matches!(
            cyclic.validate(),
            Err(ModelError::UnknownInput { input: 3, .. })
        ));

        let mut renamed = g.clone();
        renamed.layers[4].name = "a".into();
        assert!(matches!(
            renamed.validate(),
            Err(ModelError::DuplicateName { .. })
        ));

        let mut wrong_op = g;
        wrong_op.layers[4].op = Op::Add;
        wrong_op.layers[4].inputs = vec![1, 2];
        assert!(matches!(
            wrong_op.validate(),
            Err(ModelError::ShapeMismatch { .. })
        ));
    }
}
