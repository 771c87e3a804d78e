//! The flat, cache-friendly layout of the trees and the walks over it.
//!
//! Every tree is stored depth-first in one node array shared by the whole
//! ensemble, so the true child of a node usually sits in the same cache line. A
//! leaf points to itself on both branches: a tree is walked for exactly its depth
//! with no "is this a leaf?" test, and [`LANES`] walks advance in lock-step — the
//! trees of one row, or one tree over several rows — so the CPU overlaps their
//! dependent loads instead of waiting on each in turn.

use super::finalize::{Finalizer, Score};
use super::{index_nodes, invalid, BuildError, EnsembleKind, EnsembleSpec, NodeMode};

/// Walks advanced together. Measured on the fixtures (x86-64): 4 lanes are ~1.5×
/// slower on the 100-tree forest; 16 gain under 10 % there but lose on shallow
/// gradient-boosted trees.
const LANES: usize = 8;
/// Rows accumulated together before their scores are finalised; bounds the scratch
/// memory and keeps a block's inputs in cache while every tree visits them.
const ROW_BLOCK: usize = 128;
/// Feature index bits of [`Node::feature`]; the bits above hold the comparison of
/// trees that mix comparisons (see [`Decide`]).
const FEATURE_MASK: u32 = 0x00FF_FFFF;
const MODE_SHIFT: u32 = 24;
const TRACK_BIT: u32 = 1 << 28;
/// Deeper trees are refused rather than walked: a cycle in a malformed model
/// shows up as unbounded depth.
const MAX_DEPTH: u32 = 4096;

/// Element type of thresholds and scores: `f32`, or `f64` for double inputs.
pub(crate) trait Real:
    Copy
    + PartialOrd
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::Neg<Output = Self>
{
    const ZERO: Self;
    fn from_f64(v: f64) -> Self;
    fn from_usize(v: usize) -> Self;
    fn to_f32(self) -> f32;
    fn is_nan(self) -> bool;
    /// A leaf's threshold slot carries a `u32` index into the weight table.
    fn from_payload(p: u32) -> Self;
    fn payload(self) -> u32;
}

impl Real for f32 {
    const ZERO: Self = 0.0;
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn from_usize(v: usize) -> Self {
        v as f32
    }
    fn to_f32(self) -> f32 {
        self
    }
    fn is_nan(self) -> bool {
        f32::is_nan(self)
    }
    fn from_payload(p: u32) -> Self {
        f32::from_bits(p)
    }
    fn payload(self) -> u32 {
        self.to_bits()
    }
}

impl Real for f64 {
    const ZERO: Self = 0.0;
    fn from_f64(v: f64) -> Self {
        v
    }
    fn from_usize(v: usize) -> Self {
        v as f64
    }
    fn to_f32(self) -> f32 {
        self as f32
    }
    fn is_nan(self) -> bool {
        f64::is_nan(self)
    }
    fn from_payload(p: u32) -> Self {
        f64::from_bits(p as u64)
    }
    fn payload(self) -> u32 {
        self.to_bits() as u32
    }
}

/// Which comparison the inner nodes use. Sklearn, LightGBM and XGBoost exports use
/// one comparison everywhere, which gets a dedicated walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Comparison {
    Uniform(NodeMode),
    /// Per-node comparison and missing-value tracking, encoded in the feature's high bits.
    Mixed,
}

/// How leaves carry their weights.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Leaves {
    /// One weight per leaf, all for the same output column: the weight sits in the
    /// leaf's threshold slot.
    Scalar { column: usize },
    /// A leaf's threshold slot holds `p`; its weights are
    /// `columns/weights[ranges[p]..ranges[p + 1]]`.
    Sparse {
        ranges: Vec<u32>,
        columns: Vec<u32>,
        weights: Vec<f64>,
    },
}

#[derive(Debug, Clone, Copy)]
struct LayoutNode {
    feature: u32,
    left: u32,
    right: u32,
    /// Threshold of an inner node, scalar weight or payload index of a leaf.
    value: f64,
    payload: Option<u32>,
}

/// The trees in walk order, independent of the threshold type.
#[derive(Debug)]
pub(crate) struct Layout {
    nodes: Vec<LayoutNode>,
    roots: Vec<u32>,
    depths: Vec<u32>,
    comparison: Comparison,
    pub(super) leaves: Leaves,
    min_features: usize,
}

fn mode_code(mode: NodeMode) -> u32 {
    match mode {
        NodeMode::BranchLeq => 0,
        NodeMode::BranchLt => 1,
        NodeMode::BranchGte => 2,
        NodeMode::BranchGt => 3,
        NodeMode::BranchEq => 4,
        NodeMode::BranchNeq => 5,
        NodeMode::Leaf => 6,
    }
}

impl Layout {
    pub(crate) fn n_trees(&self) -> usize {
        self.roots.len()
    }

    pub(crate) fn min_features(&self) -> usize {
        self.min_features
    }

    pub(super) fn build(spec: &EnsembleSpec, n_outputs: usize) -> Result<Layout, BuildError> {
        let rows = &spec.nodes;
        let index = index_nodes(rows)?;

        // onnxruntime checks every node's feature (leaves included) against the input width.
        let mut max_feature = 0i64;
        for n in rows {
            if n.mode != NodeMode::Leaf {
                if n.feature < 0 {
                    return invalid(format!(
                        "node {} of tree {} reads feature {}",
                        n.id, n.tree, n.feature
                    ));
                }
                if n.feature > FEATURE_MASK as i64 {
                    return Err(BuildError::Unsupported(format!(
                        "feature index {} is too large",
                        n.feature
                    )));
                }
            }
            max_feature = max_feature.max(n.feature);
        }
        let min_features = usize::try_from(max_feature).unwrap_or(0).saturating_add(1);

        // Leaf weights, in onnxruntime's order: sorted by (tree, node), then as listed.
        let mut order: Vec<usize> = (0..spec.weights.len()).collect();
        order.sort_by_key(|&i| (spec.weights[i].tree, spec.weights[i].node, i));
        let mut leaf_weights: Vec<Vec<(i64, f64)>> = vec![Vec::new(); rows.len()];
        for &i in &order {
            let w = &spec.weights[i];
            let Some(&n) = index.get(&(w.tree, w.node)) else {
                return invalid(format!(
                    "a weight refers to node {} of tree {}, which does not exist",
                    w.node, w.tree
                ));
            };
            // Weights on inner nodes come from old onnxmltools exports; onnxruntime ignores them.
            if rows[n].mode == NodeMode::Leaf {
                leaf_weights[n].push((w.target, w.weight));
            }
        }
        for (n, ws) in rows.iter().zip(&leaf_weights) {
            if n.mode == NodeMode::Leaf && ws.is_empty() {
                return invalid(format!("leaf {} of tree {} has no weight", n.id, n.tree));
            }
        }

        let one_target = matches!(spec.kind, EnsembleKind::Regressor { n_targets: 1, .. });
        let single_column = {
            let mut cols = leaf_weights.iter().filter(|w| !w.is_empty()).map(|w| {
                if w.len() == 1 {
                    Some(w[0].0)
                } else {
                    None
                }
            });
            match cols.next().flatten() {
                Some(c) if cols.all(|o| o == Some(c)) => Some(c),
                _ => None,
            }
        };
        let check_column = |c: i64| -> Result<u32, BuildError> {
            if c < 0 || c as usize >= n_outputs {
                return invalid(format!(
                    "a weight targets output {c}, but there are {n_outputs}"
                ));
            }
            Ok(c as u32)
        };
        let mut leaves = if one_target {
            // onnxruntime's one-target path adds each leaf's first weight, whatever its target id.
            Leaves::Scalar { column: 0 }
        } else if let Some(c) = single_column {
            Leaves::Scalar {
                column: check_column(c)? as usize,
            }
        } else {
            Leaves::Sparse {
                ranges: vec![0],
                columns: Vec::new(),
                weights: Vec::new(),
            }
        };
        // Payload index of each original leaf, when weights are sparse.
        let mut payload_of = vec![u32::MAX; rows.len()];
        if let Leaves::Sparse {
            ranges,
            columns,
            weights,
        } = &mut leaves
        {
            for (n, ws) in leaf_weights.iter().enumerate() {
                if rows[n].mode != NodeMode::Leaf {
                    continue;
                }
                payload_of[n] = (ranges.len() - 1) as u32;
                for &(c, w) in ws {
                    columns.push(check_column(c)?);
                    weights.push(w);
                }
                ranges.push(columns.len() as u32);
            }
        }

        let inner_modes = || rows.iter().filter(|n| n.mode != NodeMode::Leaf);
        let comparison = match inner_modes().next() {
            Some(first)
                if inner_modes().all(|n| n.mode == first.mode && !n.missing_tracks_true) =>
            {
                Comparison::Uniform(first.mode)
            }
            Some(_) => Comparison::Mixed,
            None => Comparison::Uniform(NodeMode::BranchLeq),
        };

        // Roots as onnxruntime finds them: the first listed node of each run of a tree id.
        let mut root_rows = Vec::new();
        for (i, n) in rows.iter().enumerate() {
            if i == 0 || rows[i - 1].tree != n.tree {
                root_rows.push(i);
            }
        }

        let max_nodes = rows.len().saturating_mul(2).saturating_add(1024);
        if max_nodes > u32::MAX as usize {
            return Err(BuildError::Unsupported(format!(
                "{} nodes is too many",
                rows.len()
            )));
        }
        let mut nodes: Vec<LayoutNode> = Vec::with_capacity(rows.len());
        let mut roots = Vec::with_capacity(root_rows.len());
        let mut depths = Vec::with_capacity(root_rows.len());
        let mut stack: Vec<Pending> = Vec::new();
        for &root in &root_rows {
            roots.push(nodes.len() as u32);
            let mut depth = 0u32;
            stack.push(Pending {
                row: root,
                depth: 0,
                parent: None,
            });
            while let Some(Pending {
                row: r,
                depth: d,
                parent,
            }) = stack.pop()
            {
                if d > MAX_DEPTH {
                    return Err(BuildError::Unsupported(format!(
                        "tree {} is deeper than {MAX_DEPTH} levels (or has a cycle)",
                        rows[r].tree
                    )));
                }
                if nodes.len() >= max_nodes {
                    return Err(BuildError::Unsupported(
                        "trees share subtrees too much to be laid out".into(),
                    ));
                }
                let me = nodes.len() as u32;
                if let Some((p, is_true)) = parent {
                    if is_true {
                        nodes[p].left = me;
                    } else {
                        nodes[p].right = me;
                    }
                }
                let row = &rows[r];
                if row.mode == NodeMode::Leaf {
                    depth = depth.max(d);
                    let (value, payload) = match &leaves {
                        Leaves::Scalar { .. } => (leaf_weights[r][0].1, None),
                        Leaves::Sparse { .. } => (0.0, Some(payload_of[r])),
                    };
                    nodes.push(LayoutNode {
                        feature: 0,
                        left: me,
                        right: me,
                        value,
                        payload,
                    });
                    continue;
                }
                let child = |id: i64| -> Result<usize, BuildError> {
                    match index.get(&(row.tree, id)) {
                        Some(&c) if c == r => invalid(format!(
                            "node {} of tree {} points to itself",
                            row.id, row.tree
                        )),
                        Some(&c) => Ok(c),
                        None => invalid(format!(
                            "node {} of tree {} points to node {id}, which does not exist",
                            row.id, row.tree
                        )),
                    }
                };
                let (t, f) = (child(row.true_id)?, child(row.false_id)?);
                let mut feature = row.feature as u32;
                if comparison == Comparison::Mixed {
                    feature |= mode_code(row.mode) << MODE_SHIFT;
                    if row.missing_tracks_true {
                        feature |= TRACK_BIT;
                    }
                }
                nodes.push(LayoutNode {
                    feature,
                    left: u32::MAX,
                    right: u32::MAX,
                    value: row.value,
                    payload: None,
                });
                let me = me as usize;
                // Pushed last, popped first: the true child lands right after its parent.
                stack.push(Pending {
                    row: f,
                    depth: d + 1,
                    parent: Some((me, false)),
                });
                stack.push(Pending {
                    row: t,
                    depth: d + 1,
                    parent: Some((me, true)),
                });
            }
            depths.push(depth);
        }
        // The walks index without bounds checks (see `step`): prove the indices here.
        let n_nodes = nodes.len();
        for n in &nodes {
            let feature = (n.feature & FEATURE_MASK) as usize;
            if n.left as usize >= n_nodes || n.right as usize >= n_nodes || feature >= min_features
            {
                return invalid("internal error: a laid-out node points outside the forest");
            }
        }
        Ok(Layout {
            nodes,
            roots,
            depths,
            comparison,
            leaves,
            min_features,
        })
    }
}

/// A node waiting to be laid out: its attribute row, its depth, and the parent slot
/// to point at it (parent node, true branch?).
struct Pending {
    row: usize,
    depth: u32,
    parent: Option<(usize, bool)>,
}

/// One node as walked: 16 bytes for `f32` thresholds.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(super) struct Node<T> {
    threshold: T,
    feature: u32,
    /// Next node when the comparison holds (the "true" branch).
    left: u32,
    right: u32,
}

/// The node array for one threshold type.
#[derive(Debug)]
pub(crate) struct Forest<T> {
    nodes: Vec<Node<T>>,
    roots: Vec<u32>,
    depths: Vec<u32>,
    /// Sparse leaf weights converted to `T` (empty for scalar leaves).
    weights: Vec<T>,
}

/// Per-session scratch, so steady-state evaluation does not allocate.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    pub(super) f32: Buffers<f32>,
    pub(super) f64: Buffers<f64>,
}

#[derive(Debug, Default)]
pub(crate) struct Buffers<T> {
    acc: Vec<T>,
    has: Vec<bool>,
    preds: Vec<Score<T>>,
}

/// The comparison of one node, chosen statically for the walk.
trait Decide<T: Real> {
    fn feature(node: &Node<T>) -> usize;
    fn go_true(node: &Node<T>, x: T) -> bool;
}

macro_rules! uniform {
    ($name:ident, $op:tt) => {
        struct $name;
        impl<T: Real> Decide<T> for $name {
            #[inline(always)]
            fn feature(node: &Node<T>) -> usize {
                node.feature as usize
            }
            #[inline(always)]
            fn go_true(node: &Node<T>, x: T) -> bool {
                x $op node.threshold
            }
        }
    };
}
uniform!(Leq, <=);
uniform!(Lt, <);
uniform!(Gte, >=);
uniform!(Gt, >);
uniform!(Equal, ==);
uniform!(NotEqual, !=);

struct Mixed;
impl<T: Real> Decide<T> for Mixed {
    #[inline(always)]
    fn feature(node: &Node<T>) -> usize {
        (node.feature & FEATURE_MASK) as usize
    }
    #[inline(always)]
    fn go_true(node: &Node<T>, x: T) -> bool {
        let t = node.threshold;
        let holds = match (node.feature >> MODE_SHIFT) & 0x7 {
            0 => x <= t,
            1 => x < t,
            2 => x >= t,
            3 => x > t,
            4 => x == t,
            5 => x != t,
            _ => false,
        };
        holds || (node.feature & TRACK_BIT != 0 && x.is_nan())
    }
}

/// One step of a walk: from node `i` to the child that `row` leads to.
#[inline(always)]
fn step<T: Real, D: Decide<T>>(nodes: &[Node<T>], i: u32, row: &[T]) -> u32 {
    debug_assert!((i as usize) < nodes.len() && D::feature(&nodes[i as usize]) < row.len());
    // SAFETY: `Layout::build` checked that every child index is a node of the array and
    // every feature index is below `min_features`; `TreeEnsemble::eval` checked that rows
    // are at least `min_features` long. Unchecked indexing here is worth ~25 % of a walk.
    let n = unsafe { nodes.get_unchecked(i as usize) };
    let v = unsafe { *row.get_unchecked(D::feature(n)) };
    if D::go_true(n, v) {
        n.left
    } else {
        n.right
    }
}

/// How a leaf weight joins a row's running score (onnxruntime's `ProcessTreeNodePrediction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Accumulate {
    Sum,
    Min,
    Max,
}

impl Accumulate {
    #[inline(always)]
    fn add<T: Real>(self, acc: &mut T, has: &mut bool, w: T) {
        match self {
            Accumulate::Sum => *acc = *acc + w,
            Accumulate::Min => {
                if !*has || w < *acc {
                    *acc = w
                }
            }
            Accumulate::Max => {
                if !*has || w > *acc {
                    *acc = w
                }
            }
        }
        *has = true;
    }
}

/// Where one row's running scores live during a block.
struct RowAcc<'a, T> {
    acc: &'a mut [T],
    has: &'a mut [bool],
}

impl<T: Real> Forest<T> {
    pub(super) fn from_layout(layout: &Layout) -> Forest<T> {
        let nodes = layout
            .nodes
            .iter()
            .map(|n| Node {
                threshold: match n.payload {
                    Some(p) => T::from_payload(p),
                    None => T::from_f64(n.value),
                },
                feature: n.feature,
                left: n.left,
                right: n.right,
            })
            .collect();
        let weights = match &layout.leaves {
            Leaves::Scalar { .. } => Vec::new(),
            Leaves::Sparse { weights, .. } => weights.iter().map(|&w| T::from_f64(w)).collect(),
        };
        Forest {
            nodes,
            roots: layout.roots.clone(),
            depths: layout.depths.clone(),
            weights,
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn eval(
        &self,
        layout: &Layout,
        fin: &Finalizer,
        x: &[T],
        n_rows: usize,
        n_features: usize,
        labels: &mut [i64],
        scores: &mut [f32],
        buf: &mut Buffers<T>,
    ) {
        match layout.comparison {
            Comparison::Uniform(NodeMode::BranchLeq) => {
                self.eval_with::<Leq>(layout, fin, x, n_rows, n_features, labels, scores, buf)
            }
            Comparison::Uniform(NodeMode::BranchLt) => {
                self.eval_with::<Lt>(layout, fin, x, n_rows, n_features, labels, scores, buf)
            }
            Comparison::Uniform(NodeMode::BranchGte) => {
                self.eval_with::<Gte>(layout, fin, x, n_rows, n_features, labels, scores, buf)
            }
            Comparison::Uniform(NodeMode::BranchGt) => {
                self.eval_with::<Gt>(layout, fin, x, n_rows, n_features, labels, scores, buf)
            }
            Comparison::Uniform(NodeMode::BranchEq) => {
                self.eval_with::<Equal>(layout, fin, x, n_rows, n_features, labels, scores, buf)
            }
            Comparison::Uniform(NodeMode::BranchNeq) => {
                self.eval_with::<NotEqual>(layout, fin, x, n_rows, n_features, labels, scores, buf)
            }
            Comparison::Uniform(NodeMode::Leaf) | Comparison::Mixed => {
                self.eval_with::<Mixed>(layout, fin, x, n_rows, n_features, labels, scores, buf)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn eval_with<D: Decide<T>>(
        &self,
        layout: &Layout,
        fin: &Finalizer,
        x: &[T],
        n_rows: usize,
        n_features: usize,
        labels: &mut [i64],
        scores: &mut [f32],
        buf: &mut Buffers<T>,
    ) {
        let n_out = fin.n_outputs();
        let width = match layout.leaves {
            Leaves::Scalar { .. } => 1,
            Leaves::Sparse { .. } => n_out,
        };
        let accumulate = fin.accumulate();
        let block = n_rows.min(ROW_BLOCK);
        buf.acc.resize(block * width, T::ZERO);
        buf.has.resize(block * width, false);
        buf.preds.resize(n_out, Score::default());

        let mut start = 0;
        while start < n_rows {
            let nb = (n_rows - start).min(ROW_BLOCK);
            let acc = &mut buf.acc[..nb * width];
            let has = &mut buf.has[..nb * width];
            acc.fill(T::ZERO);
            has.fill(false);
            let xb = &x[start * n_features..(start + nb) * n_features];
            if nb < LANES {
                for r in 0..nb {
                    let row = &xb[r * n_features..(r + 1) * n_features];
                    let mut ra = RowAcc {
                        acc: &mut acc[r * width..(r + 1) * width],
                        has: &mut has[r * width..(r + 1) * width],
                    };
                    self.walk_trees::<D>(layout, accumulate, row, &mut ra);
                }
            } else {
                self.walk_rows::<D>(layout, accumulate, xb, nb, n_features, acc, has, width);
            }
            for r in 0..nb {
                let preds = &mut buf.preds[..n_out];
                preds.fill(Score::default());
                match layout.leaves {
                    Leaves::Scalar { column } => {
                        preds[column] = Score {
                            score: acc[r],
                            has: has[r],
                        }
                    }
                    Leaves::Sparse { .. } => {
                        for (c, p) in preds.iter_mut().enumerate() {
                            *p = Score {
                                score: acc[r * width + c],
                                has: has[r * width + c],
                            };
                        }
                    }
                }
                let row = start + r;
                let label = fin.finish(preds, &mut scores[row * n_out..(row + 1) * n_out]);
                if let Some(l) = labels.get_mut(row) {
                    *l = label;
                }
            }
            start += nb;
        }
    }

    /// Adds the weights of `leaf` to one row's scores.
    #[inline(always)]
    fn take_leaf(
        &self,
        layout: &Layout,
        accumulate: Accumulate,
        leaf: u32,
        ra: &mut RowAcc<'_, T>,
    ) {
        let node = &self.nodes[leaf as usize];
        match &layout.leaves {
            Leaves::Scalar { .. } => accumulate.add(&mut ra.acc[0], &mut ra.has[0], node.threshold),
            Leaves::Sparse {
                ranges, columns, ..
            } => {
                let p = node.threshold.payload() as usize;
                let (lo, hi) = (ranges[p] as usize, ranges[p + 1] as usize);
                for (&c, &w) in columns[lo..hi].iter().zip(&self.weights[lo..hi]) {
                    let c = c as usize;
                    accumulate.add(&mut ra.acc[c], &mut ra.has[c], w);
                }
            }
        }
    }

    /// One row through every tree, [`LANES`] trees at a time, adding leaves in tree order.
    #[inline(always)]
    fn walk_trees<D: Decide<T>>(
        &self,
        layout: &Layout,
        accumulate: Accumulate,
        row: &[T],
        ra: &mut RowAcc<'_, T>,
    ) {
        let nodes = &self.nodes[..];
        let mut roots = self.roots.chunks_exact(LANES);
        let mut depths = self.depths.chunks_exact(LANES);
        for (r, d) in (&mut roots).zip(&mut depths) {
            let mut idx: [u32; LANES] = r.try_into().expect("chunk of LANES");
            let steps = d.iter().copied().max().unwrap_or(0);
            for _ in 0..steps {
                for i in idx.iter_mut() {
                    *i = step::<T, D>(nodes, *i, row);
                }
            }
            for &leaf in &idx {
                self.take_leaf(layout, accumulate, leaf, ra);
            }
        }
        for (&root, &depth) in roots.remainder().iter().zip(depths.remainder()) {
            let mut i = root;
            for _ in 0..depth {
                i = step::<T, D>(nodes, i, row);
            }
            self.take_leaf(layout, accumulate, i, ra);
        }
    }

    /// A block of rows, tree by tree, [`LANES`] rows at a time: a tree's nodes stay
    /// in L1 while every row of the block walks it.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn walk_rows<D: Decide<T>>(
        &self,
        layout: &Layout,
        accumulate: Accumulate,
        xb: &[T],
        nb: usize,
        nf: usize,
        acc: &mut [T],
        has: &mut [bool],
        width: usize,
    ) {
        let nodes = &self.nodes[..];
        let full = nb / LANES * LANES;
        for (&root, &depth) in self.roots.iter().zip(&self.depths) {
            let mut r0 = 0;
            while r0 < full {
                let rows: [&[T]; LANES] =
                    std::array::from_fn(|k| &xb[(r0 + k) * nf..(r0 + k + 1) * nf]);
                let mut idx = [root; LANES];
                for _ in 0..depth {
                    for (i, row) in idx.iter_mut().zip(rows) {
                        *i = step::<T, D>(nodes, *i, row);
                    }
                }
                for (k, &leaf) in idx.iter().enumerate() {
                    let r = r0 + k;
                    let mut ra = RowAcc {
                        acc: &mut acc[r * width..(r + 1) * width],
                        has: &mut has[r * width..(r + 1) * width],
                    };
                    self.take_leaf(layout, accumulate, leaf, &mut ra);
                }
                r0 += LANES;
            }
            for r in full..nb {
                let row = &xb[r * nf..(r + 1) * nf];
                let mut i = root;
                for _ in 0..depth {
                    i = step::<T, D>(nodes, i, row);
                }
                let mut ra = RowAcc {
                    acc: &mut acc[r * width..(r + 1) * width],
                    has: &mut has[r * width..(r + 1) * width],
                };
                self.take_leaf(layout, accumulate, i, &mut ra);
            }
        }
    }
}
