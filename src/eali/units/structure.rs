//! Structural unit formation: CNN layers → optimization units from the graph alone.
//!
//! Single-entry/single-exit blocks (residual, inception, dense, inverted residual) are found as
//! the regions between a fork and its immediate post-dominator; everything else is grouped around
//! conv/linear anchors, each taking the batch-norm/activation/pooling layers that follow it.
//! Modular networks get a `stem` (all layers before the first block) and a `head` (global pool
//! onwards after the last block).

use crate::model::{Graph, LayerId, Op};

use super::{Unit, UnitKind};

/// Dominator-style tree over the graph plus a virtual source and sink, with DFS intervals so
/// that "a dominates b" is an O(1) test.
struct DomTree {
    pre: Vec<u32>,
    post: Vec<u32>,
}

impl DomTree {
    /// `order`: nodes in an order where every node comes after all of its `preds`; `root` first.
    fn build(n: usize, root: usize, order: &[usize], preds: &[Vec<usize>]) -> (Vec<usize>, Self) {
        let mut idom = vec![usize::MAX; n];
        let mut depth = vec![0u32; n];
        idom[root] = root;
        for &v in order.iter().filter(|&&v| v != root) {
            let mut it = preds[v].iter().copied().filter(|&p| idom[p] != usize::MAX);
            let Some(first) = it.next() else {
                // Unreachable from the root; hang it off the root so it has an interval.
                idom[v] = root;
                depth[v] = 1;
                continue;
            };
            let mut d = first;
            for p in it {
                d = lca(&idom, &depth, d, p);
            }
            idom[v] = d;
            depth[v] = depth[d] + 1;
        }
        let mut children = vec![Vec::new(); n];
        for v in 0..n {
            if v != root && idom[v] != usize::MAX {
                children[idom[v]].push(v);
            }
        }
        let (mut pre, mut post) = (vec![0u32; n], vec![0u32; n]);
        let mut clock = 0u32;
        let mut stack = vec![(root, 0usize)];
        while let Some((v, next)) = stack.pop() {
            if next == 0 {
                pre[v] = clock;
                clock += 1;
            }
            if let Some(&c) = children[v].get(next) {
                stack.push((v, next + 1));
                stack.push((c, 0));
            } else {
                post[v] = clock;
                clock += 1;
            }
        }
        (idom, Self { pre, post })
    }

    /// Whether `a` dominates `b` (reflexive).
    fn dominates(&self, a: usize, b: usize) -> bool {
        self.pre[a] <= self.pre[b] && self.post[b] <= self.post[a]
    }
}

fn lca(idom: &[usize], depth: &[u32], mut a: usize, mut b: usize) -> usize {
    while a != b {
        while depth[a] > depth[b] {
            a = idom[a];
        }
        while depth[b] > depth[a] {
            b = idom[b];
        }
        if a != b {
            a = idom[a];
            b = idom[b];
        }
    }
    a
}

/// Top-level fork/join regions: for each layer, the index of the outermost region holding it.
/// Regions are returned as sorted member lists, ordered by their first layer.
fn regions(graph: &Graph) -> Vec<Vec<LayerId>> {
    let n = graph.layers.len();
    let (src, sink) = (n, n + 1);
    let total = n + 2;
    let mut preds: Vec<Vec<usize>> = vec![Vec::new(); total];
    let mut succs: Vec<Vec<usize>> = vec![Vec::new(); total];
    for l in &graph.layers {
        let mut ins: Vec<usize> = l.inputs.clone();
        ins.sort_unstable();
        ins.dedup();
        if ins.is_empty() {
            ins.push(src);
        }
        for &p in &ins {
            succs[p].push(l.id);
        }
        preds[l.id] = ins;
    }
    for (v, out) in succs.iter_mut().enumerate().take(n) {
        if out.is_empty() {
            out.push(sink);
            preds[sink].push(v);
        }
    }
    let forward: Vec<usize> = std::iter::once(src)
        .chain(0..n)
        .chain(std::iter::once(sink))
        .collect();
    let backward: Vec<usize> = forward.iter().rev().copied().collect();
    let (_, dom) = DomTree::build(total, src, &forward, &preds);
    let (ipdom, pdom) = DomTree::build(total, sink, &backward, &succs);

    let mut found: Vec<Vec<LayerId>> = Vec::new();
    for f in std::iter::once(src).chain(0..n) {
        if succs[f].len() < 2 {
            continue;
        }
        let j = ipdom[f];
        if j == sink || j == usize::MAX {
            continue;
        }
        // Members lie after the fork and no later than the join in topological order.
        let start = if f == src { 0 } else { f + 1 };
        let members: Vec<LayerId> = (start..=j)
            .filter(|&v| dom.dominates(f, v) && pdom.dominates(j, v))
            .collect();
        if !members.is_empty() {
            found.push(members);
        }
    }
    // Regions are laminar (nested or disjoint): keep the outermost ones.
    found.sort_by_key(|m| std::cmp::Reverse(m.len()));
    let mut owner = vec![usize::MAX; n];
    let mut top = Vec::new();
    for members in found {
        if members.iter().any(|&v| owner[v] != usize::MAX) {
            continue;
        }
        for &v in &members {
            owner[v] = top.len();
        }
        top.push(members);
    }
    top.sort_by_key(|m| m[0]);
    top
}

fn is_anchor(op: &Op) -> bool {
    matches!(op, Op::Conv2d { .. } | Op::Linear { .. })
}

fn is_depthwise(graph: &Graph, id: LayerId) -> bool {
    match graph.layers[id].op {
        Op::Conv2d {
            groups,
            out_channels,
            ..
        } => groups > 1 && groups == graph.input_shape_of(id).c && groups == out_channels,
        _ => false,
    }
}

fn is_pointwise(op: &Op) -> bool {
    matches!(
        op,
        Op::Conv2d {
            kernel: (1, 1),
            groups: 1,
            ..
        }
    )
}

fn is_activation(op: &Op) -> bool {
    op.is_activation()
}

/// Ops a classifier head is made of, and the ones it may start with.
fn is_head_op(op: &Op) -> bool {
    matches!(
        op,
        Op::GlobalAvgPool
            | Op::AvgPool { .. }
            | Op::Flatten
            | Op::Linear { .. }
            | Op::Dropout
            | Op::Softmax
            | Op::Relu
    )
}
fn starts_head(op: &Op) -> bool {
    matches!(
        op,
        Op::GlobalAvgPool | Op::AvgPool { .. } | Op::Flatten | Op::Linear { .. } | Op::Dropout
    )
}

/// A unit under construction: `core` layers name it (region members, anchors and what is glued
/// to them); `extra` layers were attached (trailing BN/activation/pooling).
struct Draft {
    kind: UnitKind,
    core: Vec<LayerId>,
    all: Vec<LayerId>,
}

impl Draft {
    fn new(kind: UnitKind, core: Vec<LayerId>) -> Self {
        Self {
            kind,
            all: core.clone(),
            core,
        }
    }
}

enum Item {
    Region(Vec<LayerId>),
    Layer(LayerId),
}

/// Structural units of `graph`, in execution order, before any cost-driven merging.
pub(super) fn structural_units(graph: &Graph) -> Vec<Unit> {
    let regions = regions(graph);
    let mut in_region = vec![usize::MAX; graph.layers.len()];
    for (r, members) in regions.iter().enumerate() {
        for &v in members {
            in_region[v] = r;
        }
    }
    let mut items = Vec::new();
    let mut emitted = vec![false; regions.len()];
    for l in &graph.layers {
        match in_region[l.id] {
            usize::MAX => items.push(Item::Layer(l.id)),
            r if !emitted[r] => {
                emitted[r] = true;
                items.push(Item::Region(regions[r].clone()));
            }
            _ => {}
        }
    }

    let first_region = items.iter().position(|i| matches!(i, Item::Region(_)));
    let last_region = items.iter().rposition(|i| matches!(i, Item::Region(_)));
    let mut drafts: Vec<Draft> = Vec::new();
    let (body_start, body_end) = match (first_region, last_region) {
        (Some(first), Some(last)) => {
            if first > 0 {
                let stem: Vec<LayerId> = items[..first]
                    .iter()
                    .flat_map(|i| match i {
                        Item::Layer(l) => vec![*l],
                        Item::Region(m) => m.clone(),
                    })
                    .collect();
                drafts.push(Draft::new(UnitKind::Stem, stem));
            }
            // The head is the longest all-head-op tail that starts at a pool/flatten/linear.
            let tail: Vec<LayerId> = items[last + 1..]
                .iter()
                .filter_map(|i| match i {
                    Item::Layer(l) => Some(*l),
                    Item::Region(_) => None,
                })
                .collect();
            let mut head_from = tail.len();
            for (k, &l) in tail.iter().enumerate().rev() {
                if !is_head_op(&graph.layers[l].op) {
                    break;
                }
                if starts_head(&graph.layers[l].op) {
                    head_from = k;
                }
            }
            (first, last + 1 + head_from)
        }
        _ => (0, items.len()),
    };

    // Pre-activation (DenseNet transitions): a BatchNorm right after a block, and what follows
    // it up to the next anchor, opens the anchor's unit instead of trailing the block.
    let mut pending: Vec<LayerId> = Vec::new();
    for item in &items[body_start..body_end] {
        match item {
            Item::Region(m) => {
                if let Some(d) = drafts.last_mut() {
                    d.all.append(&mut pending);
                }
                drafts.push(Draft::new(UnitKind::Block, m.clone()));
            }
            Item::Layer(l) => {
                let op = &graph.layers[*l].op;
                let after_block = drafts
                    .last()
                    .is_some_and(|d| d.kind == UnitKind::Block && d.all.last() == d.core.last());
                if !is_anchor(op)
                    && (!pending.is_empty() || (after_block && matches!(op, Op::BatchNorm)))
                {
                    pending.push(*l);
                    continue;
                }
                let glue = is_anchor(op)
                    && pending.is_empty()
                    && glues_to_previous(graph, *l, drafts.last());
                match drafts.last_mut() {
                    Some(d) if glue => {
                        d.core.push(*l);
                        d.all.push(*l);
                    }
                    Some(d) if !is_anchor(op) => d.all.push(*l),
                    _ => {
                        let mut d = Draft::new(UnitKind::Layer, vec![*l]);
                        d.all.splice(0..0, pending.drain(..));
                        drafts.push(d);
                    }
                }
            }
        }
    }
    if let Some(d) = drafts.last_mut() {
        d.all.append(&mut pending);
    }
    if body_end < items.len() {
        let head: Vec<LayerId> = items[body_end..]
            .iter()
            .filter_map(|i| match i {
                Item::Layer(l) => Some(*l),
                Item::Region(_) => None,
            })
            .collect();
        drafts.push(Draft::new(UnitKind::Head, head));
    }
    let drafts = merge_inverted_residuals(graph, drafts);
    name_units(graph, drafts)
}

/// MobileNet v1: a pointwise conv right after a depthwise one (with only BN/activation between)
/// belongs to the depthwise conv's unit.
fn glues_to_previous(graph: &Graph, id: LayerId, prev: Option<&Draft>) -> bool {
    let Some(prev) = prev else { return false };
    if prev.kind != UnitKind::Layer || !is_pointwise(&graph.layers[id].op) {
        return false;
    }
    let last_anchor = prev
        .all
        .iter()
        .rev()
        .find(|&&l| is_anchor(&graph.layers[l].op));
    last_anchor.is_some_and(|&a| is_depthwise(graph, a))
        && !prev.core.iter().any(|&l| is_pointwise(&graph.layers[l].op))
}

/// MobileNetV2 blocks without a residual: [1×1 expand] + [depthwise + 1×1 linear projection with
/// no activation after it] become one unit.
fn merge_inverted_residuals(graph: &Graph, drafts: Vec<Draft>) -> Vec<Draft> {
    let mut out: Vec<Draft> = Vec::with_capacity(drafts.len());
    for d in drafts {
        let merge = out.last().is_some_and(|prev| {
            let prev_anchors: Vec<LayerId> = prev
                .core
                .iter()
                .copied()
                .filter(|&l| is_anchor(&graph.layers[l].op))
                .collect();
            let anchors: Vec<LayerId> = d
                .core
                .iter()
                .copied()
                .filter(|&l| is_anchor(&graph.layers[l].op))
                .collect();
            let linear_projection = anchors.len() == 2
                && is_depthwise(graph, anchors[0])
                && is_pointwise(&graph.layers[anchors[1]].op)
                && !d
                    .all
                    .iter()
                    .any(|&l| l > anchors[1] && is_activation(&graph.layers[l].op));
            prev.kind == UnitKind::Layer
                && d.kind == UnitKind::Layer
                && prev_anchors.len() == 1
                && is_pointwise(&graph.layers[prev_anchors[0]].op)
                && linear_projection
        });
        match out.last_mut() {
            Some(prev) if merge => {
                prev.core.extend(d.core);
                prev.all.extend(d.all);
            }
            _ => out.push(d),
        }
    }
    out
}

fn name_units(graph: &Graph, drafts: Vec<Draft>) -> Vec<Unit> {
    let mut units: Vec<Unit> = Vec::with_capacity(drafts.len());
    let owner_of = |members: &[LayerId], prefix: &str| {
        // A prefix names a unit only if no layer outside the unit carries it.
        let dotted = format!("{prefix}.");
        graph
            .layers
            .iter()
            .filter(|l| l.name == prefix || l.name.starts_with(&dotted))
            .all(|l| members.contains(&l.id))
    };
    for d in drafts {
        let mut all = d.all;
        all.sort_unstable();
        let name = match d.kind {
            UnitKind::Stem => "stem".to_string(),
            UnitKind::Head => "head".to_string(),
            _ => {
                // The shortest dotted prefix of the first core layer's name that the unit owns:
                // "layer1.0.conv1" → "layer1.0", "features.0" → "features.0" (VGG numbers
                // layers flat, so "features" is shared).
                let first = &graph.layers[d.core[0]].name;
                let parts: Vec<&str> = first.split('.').collect();
                (1..=parts.len())
                    .map(|k| parts[..k].join("."))
                    .find(|p| owner_of(&all, p))
                    .unwrap_or_else(|| first.clone())
            }
        };
        let mut unique = name.clone();
        let mut k = 2;
        while units.iter().any(|u| u.name == unique) {
            unique = format!("{name}#{k}");
            k += 1;
        }
        units.push(Unit {
            name: unique.clone(),
            kind: d.kind,
            layer_names: all.iter().map(|&l| graph.layers[l].name.clone()).collect(),
            layers: all,
            parts: vec![unique],
        });
    }
    units
}
