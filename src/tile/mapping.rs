//! Mapping an out x in weight matrix onto a grid of tiles.
//!
//! The input dimension is split into near-equal row blocks of at most `rows` (as
//! aihwkit-lightning's `max_input_size` split: n = ceil(in / rows) blocks, the first `in % n`
//! one longer), the output dimension likewise into column blocks of at most `cols`. Near-equal
//! blocks keep every block's DAC range and ADC bound statistically alike. A layer whose few
//! outlier inputs would set its blocks' ranges can have them first, in a short block of their own.

use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// Inputs of projection `name` (HF name) in its isolated head block; 0: none.
pub fn isolated_head(isolated: &BTreeMap<String, usize>, name: &str) -> usize {
    isolated.get(name).copied().unwrap_or(0)
}

/// Checks that every isolated head block fits one tile of `rows` rows (the preset `file`'s).
pub fn check_isolated(
    isolated: &BTreeMap<String, usize>,
    rows: usize,
    file: &Path,
) -> crate::Result<()> {
    check_heads(isolated, 1, rows, file)
}

/// [`check_isolated`] for heads whose weights sit in `copies` copies on their tile.
fn check_heads(
    isolated: &BTreeMap<String, usize>,
    copies: usize,
    rows: usize,
    file: &Path,
) -> crate::Result<()> {
    let copies = copies.max(1);
    match isolated.iter().find(|(_, &k)| k * copies > rows) {
        Some((name, k)) => {
            let times = if copies > 1 {
                format!(" in {copies} copies")
            } else {
                String::new()
            };
            Err(crate::Error::Config {
                file: file.to_path_buf(),
                field: "tile.rows".into(),
                msg: format!(
                    "`{name}` has {k} isolated inputs{times} in a row block of their own, more \
                     than the {rows} rows of one tile"
                ),
            })
        }
        None => Ok(()),
    }
}

/// Where a model's projections have isolated head blocks, and how many copies of each head's
/// weights fill its tiles' rows (`tile::program`): what the chip model needs beyond the shapes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeadBlocks {
    /// Inputs in each projection's head block (HF name; absent: none).
    pub isolated: BTreeMap<String, usize>,
    /// Copies of every head block's weights (0 or 1: one).
    pub copies: usize,
}

impl HeadBlocks {
    /// Head blocks of one copy each.
    pub fn single(isolated: BTreeMap<String, usize>) -> Self {
        HeadBlocks {
            isolated,
            copies: 1,
        }
    }

    /// Checks that every head block, copies included, fits one tile of `rows` rows (the preset
    /// `file`'s).
    pub fn check(&self, rows: usize, file: &Path) -> crate::Result<()> {
        check_heads(&self.isolated, self.copies, rows, file)
    }
}

/// Splits `size` into ceil(size / max) near-equal parts: (start, len) pairs.
pub fn split_sizes(size: usize, max: usize) -> Vec<(usize, usize)> {
    if size == 0 || max == 0 {
        return Vec::new();
    }
    let n = size.div_ceil(max);
    let (base, extra) = (size / n, size % n);
    let mut start = 0;
    (0..n)
        .map(|i| {
            let len = base + usize::from(i < extra);
            let part = (start, len);
            start += len;
            part
        })
        .collect()
}

/// [`split_sizes`] of the inputs after the first `head`, which sit in a row block of their own
/// (a layer's outlier inputs, isolated so that the other blocks keep tight ranges); `head` 0 is
/// the plain split. `head` must not exceed `max`.
pub fn split_with_head(size: usize, head: usize, max: usize) -> Vec<(usize, usize)> {
    if head == 0 || head >= size {
        return split_sizes(size, max);
    }
    let mut v = vec![(0, head)];
    v.extend(
        split_sizes(size - head, max)
            .into_iter()
            .map(|(s, l)| (s + head, l)),
    );
    v
}

/// How one layer sits on tiles.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TileMap {
    /// Input features (rows used).
    pub in_features: usize,
    /// Output features (columns used).
    pub out_features: usize,
    /// Row blocks: (first input, length).
    pub row_blocks: Vec<(usize, usize)>,
    /// Column blocks: (first output, length).
    pub col_blocks: Vec<(usize, usize)>,
    /// Tile rows of the preset.
    pub tile_rows: usize,
    /// Tile columns of the preset.
    pub tile_cols: usize,
    /// Inputs in the isolated head block (the first row block; 0: none).
    pub head: usize,
    /// Copies of the head block's weights in its tiles' rows (1 without a head block).
    pub head_copies: usize,
}

impl TileMap {
    /// Maps an `out_features` x `in_features` weight onto `tile_rows` x `tile_cols` tiles.
    pub fn new(
        in_features: usize,
        out_features: usize,
        tile_rows: usize,
        tile_cols: usize,
    ) -> Self {
        TileMap {
            in_features,
            out_features,
            row_blocks: split_sizes(in_features, tile_rows),
            col_blocks: split_sizes(out_features, tile_cols),
            tile_rows,
            tile_cols,
            head: 0,
            head_copies: 1,
        }
    }

    /// [`TileMap::new`] with the first `head` inputs in a row block of their own
    /// ([`split_with_head`]).
    pub fn with_head(
        in_features: usize,
        out_features: usize,
        head: usize,
        tile_rows: usize,
        tile_cols: usize,
    ) -> Self {
        let head = if head < in_features { head } else { 0 };
        TileMap {
            row_blocks: split_with_head(in_features, head, tile_rows),
            head,
            ..TileMap::new(in_features, out_features, tile_rows, tile_cols)
        }
    }

    /// This map with `copies` copies of its head block's weights (a map without a head block
    /// keeps one).
    pub fn with_head_copies(mut self, copies: usize) -> Self {
        if self.head > 0 {
            self.head_copies = copies.max(1);
        }
        self
    }

    /// Copies of row block `s`'s weights on its tiles: the head's copies for the head block, 1
    /// for every other.
    pub fn copies(&self, s: usize) -> usize {
        if s == 0 && self.head > 0 {
            self.head_copies
        } else {
            1
        }
    }

    /// Tile rows that row block `s` drives: its inputs times its [`TileMap::copies`].
    pub fn rows_driven(&self, s: usize) -> usize {
        self.row_blocks.get(s).map_or(0, |b| b.1) * self.copies(s)
    }

    /// Number of tiles used.
    pub fn tiles(&self) -> usize {
        self.row_blocks.len() * self.col_blocks.len()
    }

    /// Fraction of the used tiles' devices that hold a weight.
    pub fn utilization(&self) -> f64 {
        let cells = (self.tiles() * self.tile_rows * self.tile_cols) as f64;
        if cells == 0.0 {
            0.0
        } else {
            (self.in_features * self.out_features) as f64 / cells
        }
    }

    /// Index of the tile holding row block `s`, column block `b`.
    pub fn tile_index(&self, s: usize, b: usize) -> usize {
        s * self.col_blocks.len() + b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_equal_like_lightning() {
        assert_eq!(
            split_sizes(1100, 512),
            vec![(0, 367), (367, 367), (734, 366)]
        );
        assert_eq!(split_sizes(1024, 512), vec![(0, 512), (512, 512)]);
        assert_eq!(split_sizes(300, 512), vec![(0, 300)]);
        assert!(split_sizes(0, 512).is_empty());
    }

    #[test]
    fn head_block_then_near_equal() {
        assert_eq!(
            split_with_head(1536, 16, 512),
            vec![(0, 16), (16, 507), (523, 507), (1030, 506)]
        );
        assert_eq!(split_with_head(1024, 0, 512), split_sizes(1024, 512));
        assert_eq!(split_with_head(100, 100, 512), vec![(0, 100)]);
        let m = TileMap::with_head(1536, 576, 16, 512, 512);
        assert_eq!(m.tiles(), 4 * 2);
    }

    #[test]
    fn counts_tiles() {
        let m = TileMap::new(2048, 2048, 512, 512);
        assert_eq!(m.tiles(), 16);
        assert!((m.utilization() - 1.0).abs() < 1e-12);
        let m = TileMap::new(576, 1536, 256, 256);
        assert_eq!(m.tiles(), 3 * 6);
        assert!((m.utilization() - 576.0 * 1536.0 / (18.0 * 65536.0)).abs() < 1e-12);
    }
}
