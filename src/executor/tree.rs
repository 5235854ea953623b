//! Tree batches: many scoring requests in one forward pass with no padding in the projections.
//!
//! A tree is a prefix and branches that each continue it (a multiple-choice context and its
//! endings). Every token of every tree is one row of a packed (1, rows, hidden) stream, so the
//! projections, which cost almost all of the arithmetic, run on real tokens only; attention
//! gathers each tree into a padded (trees, slots) layout where a branch token sees the prefix
//! and the earlier tokens of its own branch, at the positions it would have in the sequence
//! prefix + branch alone. The result of every row is that of its own sequence.

use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};

/// The packed layout of a batch of trees.
#[derive(Debug, Clone)]
pub struct TreeBatch {
    /// Tokens, tree by tree: the prefix, then each branch in order.
    pub ids: Vec<u32>,
    /// Position of each row in its own sequence (prefix + branch).
    positions: Vec<usize>,
    /// Per row: 0 for a prefix token, k + 1 for a token of branch k.
    segment: Vec<u32>,
    /// First row of each tree, and the total row count at the end.
    starts: Vec<usize>,
    /// First row of each branch, per tree.
    branch_starts: Vec<Vec<usize>>,
    /// Longest sequence of each tree (prefix + its longest branch).
    longest: Vec<usize>,
    /// Slots per tree in the attention layout: the largest tree's rows.
    slots: usize,
}

impl TreeBatch {
    /// Lays out `trees` as (prefix, branches); a prefix may be empty only where every branch
    /// is, and then the tree has no rows.
    pub fn new(trees: &[(&[u32], Vec<&[u32]>)]) -> Result<Self> {
        let mut b = TreeBatch {
            ids: Vec::new(),
            positions: Vec::new(),
            segment: Vec::new(),
            starts: Vec::with_capacity(trees.len() + 1),
            branch_starts: Vec::with_capacity(trees.len()),
            longest: Vec::with_capacity(trees.len()),
            slots: 0,
        };
        for (prefix, branches) in trees {
            if prefix.is_empty() && branches.iter().any(|br| !br.is_empty()) {
                return Err(Error::Value(
                    "a tree batch's branch has no prefix to continue".into(),
                ));
            }
            let start = b.ids.len();
            b.starts.push(start);
            b.ids.extend_from_slice(prefix);
            b.positions.extend(0..prefix.len());
            b.segment.extend(std::iter::repeat_n(0, prefix.len()));
            let mut at = Vec::with_capacity(branches.len());
            for (k, br) in branches.iter().enumerate() {
                at.push(b.ids.len());
                b.ids.extend_from_slice(br);
                b.positions.extend(prefix.len()..prefix.len() + br.len());
                b.segment
                    .extend(std::iter::repeat_n(k as u32 + 1, br.len()));
            }
            b.branch_starts.push(at);
            let longest = branches.iter().map(|br| br.len()).max().unwrap_or(0);
            b.longest.push(prefix.len() + longest);
            b.slots = b.slots.max(b.ids.len() - start);
        }
        b.starts.push(b.ids.len());
        Ok(b)
    }

    /// Packed rows in all.
    pub fn rows(&self) -> usize {
        self.ids.len()
    }

    /// Trees in the batch.
    pub fn trees(&self) -> usize {
        self.branch_starts.len()
    }

    /// Slots per tree in the attention layout.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Row of position `i` of tree `t`'s prefix.
    pub fn prefix_row(&self, t: usize, i: usize) -> usize {
        self.starts[t] + i
    }

    /// Row of token `j` of branch `k` of tree `t`.
    pub fn branch_row(&self, t: usize, k: usize, j: usize) -> usize {
        self.branch_starts[t][k] + j
    }

    /// (position, length of its sequence) of each slot of the attention layout, tree by tree;
    /// empty slots take position 0 (their values are never read).
    pub fn slot_positions(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        (0..self.trees()).flat_map(move |t| {
            (0..self.slots).map(move |s| {
                let r = self.starts[t] + s;
                if r < self.starts[t + 1] {
                    (self.positions[r], self.longest[t])
                } else {
                    (0, self.longest[t])
                }
            })
        })
    }

    /// Packed row of each slot (trees x slots); an empty slot points at its tree's first row,
    /// or row 0 for a tree without rows.
    pub fn gather_index(&self, dev: &Device) -> Result<Tensor> {
        let mut idx = Vec::with_capacity(self.trees() * self.slots);
        for t in 0..self.trees() {
            let (a, b) = (self.starts[t], self.starts[t + 1]);
            let first = if a < b { a } else { 0 };
            idx.extend((0..self.slots).map(|s| if a + s < b { a + s } else { first } as u32));
        }
        Ok(Tensor::from_vec(idx, self.trees() * self.slots, dev)?)
    }

    /// Slot (tree x slots + offset) of each packed row: the way back from the attention layout.
    pub fn scatter_index(&self, dev: &Device) -> Result<Tensor> {
        let mut idx = Vec::with_capacity(self.rows());
        for t in 0..self.trees() {
            let n = self.starts[t + 1] - self.starts[t];
            idx.extend((0..n).map(|s| (t * self.slots + s) as u32));
        }
        Ok(Tensor::from_vec(idx, self.rows(), dev)?)
    }

    /// Whether slot `q` of tree `t` attends to slot `k`: both real, `k` not later in the
    /// sequence, and `k` in the prefix or in `q`'s own branch. An empty slot attends to slot 0
    /// only, so that its softmax stays finite (a NaN there would reach real rows through zero
    /// weights times NaN values in the product).
    pub fn sees(&self, t: usize, q: usize, k: usize) -> bool {
        let (a, b) = (self.starts[t], self.starts[t + 1]);
        let (rq, rk) = (a + q, a + k);
        if rq >= b {
            return k == 0;
        }
        rk < b
            && self.positions[rk] <= self.positions[rq]
            && (self.segment[rk] == 0 || self.segment[rk] == self.segment[rq])
    }

    /// Additive attention mask (trees x 1 x slots x slots): 0 where [`TreeBatch::sees`], -inf
    /// elsewhere.
    pub fn mask(&self, dev: &Device, dtype: DType) -> Result<Tensor> {
        let n = self.slots;
        let mut m = Vec::with_capacity(self.trees() * n * n);
        for t in 0..self.trees() {
            for q in 0..n {
                m.extend((0..n).map(|k| {
                    if self.sees(t, q, k) {
                        0.0
                    } else {
                        f32::NEG_INFINITY
                    }
                }));
            }
        }
        Ok(Tensor::from_vec(m, (self.trees(), 1, n, n), dev)?.to_dtype(dtype)?)
    }
}
