//! Weight-stationary placement of a whole model onto tiles and chips.
//!
//! Every analog projection of every layer gets its own tiles for the whole run (weights never
//! move). Tiles are numbered in model order (layers, projections, then column block by column
//! block so that the row blocks to be summed sit side by side) and filled into chips of
//! `tiles_per_chip`, each a square mesh around its digital cluster. The tiles of one projection
//! on one chip receive the same broadcast input and run in lockstep: they form one [`TileGroup`],
//! timed by its largest tile and costed as the sum of its tiles.

use super::config::ChipConfig;
use crate::executor::ModelConfig;
use crate::tile::mapping::HeadBlocks;
use crate::tile::{MvmCost, TileCostModel, TileMap};
use serde::Serialize;

/// The place of a projection in the dataflow of a decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// q, k, v (or the fused qkv): input = the normed hidden state.
    Qkv,
    /// o_proj: input = the attention output.
    Out,
    /// gate and up (or the fused gate_up): input = the normed hidden state.
    GateUp,
    /// down_proj: input = SiLU(gate) x up.
    Down,
    /// lm_head: input = the final normed hidden state.
    Head,
}

/// One analog projection of one layer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Projection {
    /// Decoder layer, or the number of layers for lm_head.
    pub layer: usize,
    /// HF name within the layer.
    pub name: &'static str,
    /// Where it sits in the dataflow.
    pub stage: Stage,
    /// Its tiles.
    pub map: TileMap,
    /// Global index of its first tile.
    pub first_tile: usize,
}

/// The tiles of one projection on one chip: one lockstep resource of the scheduler.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TileGroup {
    /// Index into [`ChipMap::projections`].
    pub projection: usize,
    /// Chip holding the tiles.
    pub chip: usize,
    /// Number of tiles.
    pub tiles: usize,
    /// One MVM of the group: times of its largest tile, energies summed over its tiles.
    pub cost: MvmCost,
    /// Bits landed in its tiles per MVM.
    pub in_bits: u64,
    /// Bits sent back per MVM (one word per output column of the group).
    pub out_bits: u64,
    /// Sum over its tiles of landed bits x router hops (network energy of the input).
    pub in_bit_hops: f64,
    /// Sum over its tiles of sent bits x router hops.
    pub out_bit_hops: f64,
    /// Hops from the farthest tile to the digital cluster.
    pub max_hops: u32,
}

/// A model placed on chips.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChipMap {
    /// Every analog projection in model order.
    pub projections: Vec<Projection>,
    /// Lockstep tile groups in model order.
    pub groups: Vec<TileGroup>,
    /// Tiles used.
    pub tiles: usize,
    /// Chips needed.
    pub chips: usize,
    /// Tiles per chip.
    pub tiles_per_chip: usize,
    /// Side of the square router mesh of one chip.
    pub mesh_side: usize,
    /// Analog weights stored.
    pub weights: usize,
    /// Fraction of the used tiles' cells that hold a weight.
    pub array_utilization: f64,
    /// Total silicon area: tiles, plus per chip its digital units and the rest.
    pub area_mm2: f64,
    /// Chip of each layer's digital work (the chip with most of its tiles); last = lm_head.
    pub layer_chip: Vec<usize>,
}

/// The dataflow stage of a projection, from its HF name.
fn stage_of(name: &str) -> Stage {
    match name {
        "self_attn.o_proj" => Stage::Out,
        "mlp.gate_proj" | "mlp.up_proj" | "mlp.gate_up_proj" => Stage::GateUp,
        "mlp.down_proj" => Stage::Down,
        "lm_head" => Stage::Head,
        _ => Stage::Qkv,
    }
}

/// Mesh coordinates of slot `k` and hops from it to the cluster at the mesh centre (one more
/// hop enters the cluster).
fn hops(k: usize, side: usize) -> u32 {
    let (x, y) = (k % side, k / side);
    let c = side / 2;
    (x.abs_diff(c) + y.abs_diff(c) + 1) as u32
}

/// Lockstep combination: the slowest tile sets the times, energies add up.
fn combine(a: &mut MvmCost, b: &MvmCost) {
    a.rows = a.rows.max(b.rows);
    a.cols = a.cols.max(b.cols);
    a.conv_ns = a.conv_ns.max(b.conv_ns);
    a.send_ns = a.send_ns.max(b.send_ns);
    a.dac_pj += b.dac_pj;
    a.array_pj += b.array_pj;
    a.adc_pj += b.adc_pj;
    a.post_pj += b.post_pj;
    a.reduce_pj += b.reduce_pj;
}

impl ChipMap {
    /// Places every static-weight projection of `config` (lm_head too unless
    /// `digital_lm_head`) onto tiles of `cost` and chips of `chip`; a projection named in
    /// `heads` (HF name) has its first inputs in a row block of their own, its weights in
    /// `heads.copies` copies that all draw array and DAC energy (each head's rows no more than
    /// `rows`: [`HeadBlocks::check`]).
    pub fn new(
        config: &ModelConfig,
        cost: &TileCostModel,
        chip: &ChipConfig,
        rows: usize,
        cols: usize,
        digital_lm_head: bool,
        heads: &HeadBlocks,
    ) -> Self {
        let n_layers = config.num_hidden_layers as usize;
        let tpc = chip.tiles_per_chip as usize;
        let side = (tpc as f64).sqrt().ceil() as usize;
        let act_bits = chip.activation_bits as u64;
        let shapes = config.linear_layers();
        let mut projections = Vec::new();
        let mut next_tile = 0;
        for layer in 0..=n_layers {
            for s in &shapes {
                let is_head = s.name == "lm_head";
                if is_head != (layer == n_layers) || (is_head && digital_lm_head) {
                    continue;
                }
                let full = if is_head {
                    s.name.to_string()
                } else {
                    format!("model.layers.{layer}.{}", s.name)
                };
                let head = crate::tile::mapping::isolated_head(&heads.isolated, &full);
                let map = TileMap::with_head(s.in_features, s.out_features, head, rows, cols)
                    .with_head_copies(heads.copies);
                let tiles = map.tiles();
                projections.push(Projection {
                    layer,
                    name: s.name,
                    stage: stage_of(s.name),
                    map,
                    first_tile: next_tile,
                });
                next_tile += tiles;
            }
        }
        let mut groups: Vec<TileGroup> = Vec::new();
        for (pi, p) in projections.iter().enumerate() {
            let r = p.map.row_blocks.len();
            let mut g_tile = p.first_tile;
            for &(_, cols_b) in &p.map.col_blocks {
                for (s, &(_, rows_s)) in p.map.row_blocks.iter().enumerate() {
                    let chip_i = g_tile / tpc;
                    let h = hops(g_tile % tpc, side);
                    let c = cost.mvm(p.map.rows_driven(s), cols_b, r, act_bits as u32);
                    let new_group = groups
                        .last()
                        .is_none_or(|g| g.projection != pi || g.chip != chip_i);
                    if new_group {
                        groups.push(TileGroup {
                            projection: pi,
                            chip: chip_i,
                            tiles: 0,
                            cost: MvmCost {
                                dac_pj: 0.0,
                                array_pj: 0.0,
                                adc_pj: 0.0,
                                post_pj: 0.0,
                                reduce_pj: 0.0,
                                ..c
                            },
                            in_bits: 0,
                            out_bits: 0,
                            in_bit_hops: 0.0,
                            out_bit_hops: 0.0,
                            max_hops: 0,
                        });
                    }
                    let g = groups.last_mut().expect("pushed above");
                    g.tiles += 1;
                    combine(&mut g.cost, &c);
                    let in_bits = rows_s as u64 * u64::from(cost.dac_bits);
                    g.in_bits += in_bits;
                    g.in_bit_hops += (in_bits * u64::from(h)) as f64;
                    g.max_hops = g.max_hops.max(h);
                    // The last tile of a column block on this chip sends the column's sum.
                    let next = g_tile + 1;
                    let last_here = s + 1 == r || next / tpc != chip_i;
                    if last_here {
                        let out = cols_b as u64 * act_bits;
                        g.out_bits += out;
                        g.out_bit_hops += (out * u64::from(h)) as f64;
                    }
                    g_tile = next;
                }
            }
        }
        let tiles = next_tile;
        let chips = tiles.div_ceil(tpc).max(1);
        let weights: usize = projections
            .iter()
            .map(|p| p.map.in_features * p.map.out_features)
            .sum();
        let cells = (tiles * rows * cols) as f64;
        // A layer's digital work goes to the chip holding most of its tiles (the lowest on a
        // tie), which keeps most tile traffic off the chip links.
        let mut layer_chip = vec![usize::MAX; n_layers + 1];
        let mut best = vec![0usize; n_layers + 1];
        for l in 0..=n_layers {
            let mut per_chip: Vec<(usize, usize)> = Vec::new();
            for g in groups
                .iter()
                .filter(|g| projections[g.projection].layer == l)
            {
                match per_chip.iter_mut().find(|c| c.0 == g.chip) {
                    Some(c) => c.1 += g.tiles,
                    None => per_chip.push((g.chip, g.tiles)),
                }
            }
            for (chip_i, n) in per_chip {
                if n > best[l] || (n == best[l] && chip_i < layer_chip[l]) {
                    (best[l], layer_chip[l]) = (n, chip_i);
                }
            }
        }
        for l in 0..=n_layers {
            if layer_chip[l] == usize::MAX {
                layer_chip[l] = if l > 0 { layer_chip[l - 1] } else { 0 };
            }
        }
        ChipMap {
            projections,
            groups,
            tiles,
            chips,
            tiles_per_chip: tpc,
            mesh_side: side,
            weights,
            array_utilization: if cells > 0.0 {
                weights as f64 / cells
            } else {
                0.0
            },
            area_mm2: tiles as f64 * chip.tile_area_mm2
                + chips as f64 * (chip.digital_area_mm2() + chip.other_area_mm2),
            layer_chip,
        }
    }

    /// Replaces the array energy of one MVM of projection `name` of layer `layer` (lm_head: the
    /// number of layers) by `pj`, e.g. measured with [`crate::tile::array_energy_pj`] on the
    /// programmed conductances and real inputs; its groups keep their shares. Returns whether
    /// the projection exists.
    pub fn set_array_energy(&mut self, layer: usize, name: &str, pj: f64) -> bool {
        let Some(pi) = self
            .projections
            .iter()
            .position(|p| p.layer == layer && p.name == name)
        else {
            return false;
        };
        let groups = self.groups.iter_mut().filter(|g| g.projection == pi);
        let (mut n, mut avg) = (0usize, 0f64);
        for g in groups {
            n += g.tiles;
            avg += g.cost.array_pj;
        }
        for g in self.groups.iter_mut().filter(|g| g.projection == pi) {
            g.cost.array_pj = if avg > 0.0 {
                pj * g.cost.array_pj / avg
            } else {
                pj * g.tiles as f64 / n.max(1) as f64
            };
        }
        true
    }

    /// Tiles of the projections of layer `layer` (lm_head: the number of layers).
    pub fn layer_tiles(&self, layer: usize) -> usize {
        self.projections
            .iter()
            .filter(|p| p.layer == layer)
            .map(|p| p.map.tiles())
            .sum()
    }
}
