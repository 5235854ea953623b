//! `[chip]` of a tile preset: tiles per chip, area, the digital units and the network.
//!
//! A chip is a mesh of tiles around one digital cluster that does everything that is not a
//! static-weight MVM (attention products, softmax, norms, KV cache, element-wise work). Each
//! kind of digital unit is a pool of identical units that splits an operation among them, so it
//! is described by its count, its throughput per unit and its energy per operation.

use serde::{Deserialize, Serialize};

/// `[chip]`: what one chip holds besides the tiles' own circuits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChipConfig {
    /// Tiles on one chip; a model that needs more is spread over several chips.
    pub tiles_per_chip: i64,
    /// Area of one tile (crossbar, converters, local digital unit).
    pub tile_area_mm2: f64,
    /// Area per chip besides tiles and digital units (network, I/O, control).
    pub other_area_mm2: f64,
    /// Width of a digital word: tile outputs after post-processing, activations, KV entries.
    pub activation_bits: i64,
    /// On-chip network and chip-to-chip links.
    pub network: NetworkConfig,
    /// Attention products q.k and p.v; one operation = one multiply-accumulate.
    pub attention: DigitalUnit,
    /// Softmax over the scores; one operation = one element (exp, sum, divide).
    pub softmax: DigitalUnit,
    /// RMSNorm; one operation = one element.
    pub norm: DigitalUnit,
    /// KV cache memory; one operation = one byte read or written.
    pub kv_cache: DigitalUnit,
    /// Element-wise rest: RoPE, residual adds, SiLU x up, embedding lookup, argmax; one
    /// operation = one element.
    pub other: DigitalUnit,
}

/// A pool of identical digital units on each chip.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DigitalUnit {
    /// Units per chip.
    pub units: i64,
    /// Operations per ns of one unit.
    pub ops_per_ns: f64,
    /// Energy per operation.
    pub e_op_pj: f64,
    /// Area of one unit.
    pub area_mm2: f64,
}

/// `[chip.network]`: a 2D mesh of routers on a chip, chips in a chain of links.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// Latency of one router hop.
    pub t_hop_ns: f64,
    /// Width of a mesh link (and of the digital cluster's ports).
    pub link_bits_per_ns: f64,
    /// Energy to move one bit over one hop.
    pub e_bit_hop_pj: f64,
    /// Latency of one chip-to-chip link.
    pub t_chip_link_ns: f64,
    /// Width of a chip-to-chip link.
    pub chip_link_bits_per_ns: f64,
    /// Energy to move one bit from one chip to the next.
    pub e_bit_chip_link_pj: f64,
}

type Check = std::result::Result<(), (String, String)>;

fn nonneg(f: &str, v: f64) -> Check {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err((f.into(), format!("must be a finite number >= 0, got {v}")))
    }
}

fn positive(f: &str, v: f64) -> Check {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err((f.into(), format!("must be a finite number > 0, got {v}")))
    }
}

impl ChipConfig {
    /// Checks ranges: the offending dotted field (below `chip.`) and what was expected.
    pub fn check(&self) -> Check {
        if !(1..=1 << 20).contains(&self.tiles_per_chip) {
            return Err((
                "tiles_per_chip".into(),
                format!("must be in 1..=1048576, got {}", self.tiles_per_chip),
            ));
        }
        if !(1..=64).contains(&self.activation_bits) {
            return Err((
                "activation_bits".into(),
                format!("must be in 1..=64, got {}", self.activation_bits),
            ));
        }
        nonneg("tile_area_mm2", self.tile_area_mm2)?;
        nonneg("other_area_mm2", self.other_area_mm2)?;
        let n = &self.network;
        positive("network.link_bits_per_ns", n.link_bits_per_ns)?;
        positive("network.chip_link_bits_per_ns", n.chip_link_bits_per_ns)?;
        nonneg("network.t_hop_ns", n.t_hop_ns)?;
        nonneg("network.e_bit_hop_pj", n.e_bit_hop_pj)?;
        nonneg("network.t_chip_link_ns", n.t_chip_link_ns)?;
        nonneg("network.e_bit_chip_link_pj", n.e_bit_chip_link_pj)?;
        for (name, u) in self.units() {
            if !(1..=1 << 20).contains(&u.units) {
                return Err((
                    format!("{name}.units"),
                    format!("must be in 1..=1048576, got {}", u.units),
                ));
            }
            positive(&format!("{name}.ops_per_ns"), u.ops_per_ns)?;
            nonneg(&format!("{name}.e_op_pj"), u.e_op_pj)?;
            nonneg(&format!("{name}.area_mm2"), u.area_mm2)?;
        }
        Ok(())
    }

    /// The digital unit pools with their section names.
    pub fn units(&self) -> [(&'static str, &DigitalUnit); 5] {
        [
            ("attention", &self.attention),
            ("softmax", &self.softmax),
            ("norm", &self.norm),
            ("kv_cache", &self.kv_cache),
            ("other", &self.other),
        ]
    }

    /// Area of one chip's digital units.
    pub fn digital_area_mm2(&self) -> f64 {
        self.units()
            .iter()
            .map(|(_, u)| u.units as f64 * u.area_mm2)
            .sum()
    }
}

impl DigitalUnit {
    /// Throughput of the whole pool.
    pub fn pool_ops_per_ns(&self) -> f64 {
        self.units as f64 * self.ops_per_ns
    }
}
