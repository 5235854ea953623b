//! The cost of one tile MVM: the duration of each phase in ns and its energy in pJ.
//!
//! An MVM lands its digital inputs in the tile, drives the word lines with pulses whose length
//! encodes each input (PWM: one pulse of up to (2^(b-1) - 1) t_lsb per phase; bit-serial: one
//! t_lsb pulse per magnitude bit), lets the column currents integrate, converts every column
//! (`adcs` converters shared by `cols` columns: ceil(cols / adcs) conversions in a row), scales
//! the result digitally, reduces the partial sums of the row blocks and sends the output on.
//! Signed inputs and weights may need 1, 2 or 4 drive phases; each phase repeats drive,
//! integration and conversion, while every (input pulse, device) pair conducts in only one of
//! them. The conversion of one phase overlaps the drive of the next (the integrator holds its
//! charge), so only the slower of the two pipelines shows. Costs depend on sizes only, never on
//! the values, except the array energy, which can be taken from programmed conductances and real
//! input pulses ([`array_energy_pj`]).
//!
//! ADC resolution. A preset states the resolution its conversion energy and time hold at
//! (`energy.e_conv_ref_bits`, `timing.t_conv_ref_bits`); at another `adc.bits` they are scaled:
//! - energy per conversion E(b) = E_ref x 2^(b - b_ref): Walden's figure of merit, E = FOM_W x
//!   2^ENOB per conversion (R. H. Walden, "Analog-to-digital converter survey and analysis",
//!   IEEE JSAC 17(4), 1999), with ENOB taken as the nominal bits. B. Murmann's ADC Performance
//!   Survey (1997-2024) shows the best converters follow it below about 10 bits; above, thermal
//!   noise makes it 4^ENOB (Schreier FOM), so the rule is optimistic for b > 10.
//! - time per conversion t(b) = t_ref x b / b_ref: a SAR converter decides one bit per clock
//!   cycle (successive approximation), so its conversion time grows linearly with the bits.
//!
//! An ADC turned off (`adc.bits = 0`, ideal conversion in the functional model) costs its
//! reference values. Fitted `e_conv_pj` values that carry more than the converter (HERMES's
//! counters, clocking and leakage) are scaled as a whole, which overstates the change.

use super::mvm::check_inputs;
use super::program::AnalogLayer;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// How inputs are encoded on the word lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Drive {
    /// Pulse-width modulation: one pulse per phase, |level| x t_lsb long.
    Pwm,
    /// Bit-serial: one t_lsb pulse per magnitude bit, each integrated and converted on its own
    /// and shift-added digitally.
    BitSerial,
}

/// `[timing]`: durations of the phases of one MVM.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timing {
    /// Input encoding.
    pub drive: Drive,
    /// Drive phases per MVM for signed inputs and weights: 1, 2 or 4.
    pub phases: i64,
    /// Length of one PWM step (or of one bit-serial pulse).
    pub t_lsb_ns: f64,
    /// Input landing: the input vector written into the tile's input buffer.
    pub t_land_ns: f64,
    /// Settling of the column integrators after each drive window.
    pub t_integrate_ns: f64,
    /// ADCs per tile, shared by the columns.
    pub adcs: i64,
    /// One conversion of one ADC at `t_conv_ref_bits`.
    pub t_conv_ns: f64,
    /// The ADC resolution `t_conv_ns` holds at; at `adc.bits` b the conversion takes
    /// t_conv_ns x b / t_conv_ref_bits (SAR: one bit per cycle; see the module docs).
    pub t_conv_ref_bits: i64,
    /// Digital post-processing of the converted outputs (scale, affine).
    pub t_post_ns: f64,
    /// One level of the adder tree that sums the partial results of the row blocks.
    pub t_reduce_ns: f64,
    /// Width of the tile's output port.
    pub out_port_bits_per_ns: f64,
}

/// `[energy]`: energies of the actions of one MVM and the array's electrical operating point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TileEnergy {
    /// Read voltage across a device while its input pulse is on.
    pub v_read_v: f64,
    /// Full-scale conductance of one polarity of a weight (all its devices together).
    pub g_max_us: f64,
    /// Average |w| / w_max of a programmed weight (array energy without real conductances).
    pub g_avg_rel: f64,
    /// Average pulse length relative to the full drive window (without real inputs).
    pub x_avg_rel: f64,
    /// Drive energy per input row per drive cycle (PWM generator and word-line driver).
    pub e_dac_pj: f64,
    /// Energy of one conversion of one column at `e_conv_ref_bits`.
    pub e_conv_pj: f64,
    /// The ADC resolution `e_conv_pj` holds at; at `adc.bits` b a conversion costs e_conv_pj x
    /// 2^(b - e_conv_ref_bits) (Walden figure of merit, Walden 1999; see the module docs).
    pub e_conv_ref_bits: i64,
    /// Which ADC energy model `e_conv_pj` comes from (published models differ 20x).
    pub e_conv_source: String,
    /// Digital post-processing per output column.
    pub e_post_pj: f64,
    /// One partial-sum addition per column per extra row block.
    pub e_add_pj: f64,
}

impl Timing {
    /// Checks ranges: the offending field (without its section) and what was expected.
    pub fn check(&self) -> std::result::Result<(), (String, String)> {
        if ![1, 2, 4].contains(&self.phases) {
            return Err(field(
                "phases",
                format!("must be 1, 2 or 4, got {}", self.phases),
            ));
        }
        if !(1..=1 << 20).contains(&self.adcs) {
            return Err(field(
                "adcs",
                format!("must be in 1..=1048576, got {}", self.adcs),
            ));
        }
        ref_bits("t_conv_ref_bits", self.t_conv_ref_bits)?;
        positive("t_lsb_ns", self.t_lsb_ns)?;
        positive("out_port_bits_per_ns", self.out_port_bits_per_ns)?;
        for (f, v) in [
            ("t_land_ns", self.t_land_ns),
            ("t_integrate_ns", self.t_integrate_ns),
            ("t_conv_ns", self.t_conv_ns),
            ("t_post_ns", self.t_post_ns),
            ("t_reduce_ns", self.t_reduce_ns),
        ] {
            nonneg(f, v)?;
        }
        Ok(())
    }
}

impl TileEnergy {
    /// Checks ranges: the offending field (without its section) and what was expected.
    pub fn check(&self) -> std::result::Result<(), (String, String)> {
        for (f, v) in [("g_avg_rel", self.g_avg_rel), ("x_avg_rel", self.x_avg_rel)] {
            if !(0.0..=1.0).contains(&v) {
                return Err(field(f, format!("must be in 0..=1, got {v}")));
            }
        }
        for (f, v) in [
            ("v_read_v", self.v_read_v),
            ("g_max_us", self.g_max_us),
            ("e_dac_pj", self.e_dac_pj),
            ("e_conv_pj", self.e_conv_pj),
            ("e_post_pj", self.e_post_pj),
            ("e_add_pj", self.e_add_pj),
        ] {
            nonneg(f, v)?;
        }
        ref_bits("e_conv_ref_bits", self.e_conv_ref_bits)?;
        if self.e_conv_source.trim().is_empty() {
            return Err(field(
                "e_conv_source",
                "must name the ADC energy model (e.g. \"ISAAC 32 nm, 1.7 pJ\")".into(),
            ));
        }
        Ok(())
    }
}

fn field(f: &str, msg: String) -> (String, String) {
    (f.to_string(), msg)
}

fn ref_bits(f: &str, v: i64) -> std::result::Result<(), (String, String)> {
    if (2..=16).contains(&v) {
        Ok(())
    } else {
        Err(field(
            f,
            format!("must be an ADC resolution in 2..=16 bits, got {v}"),
        ))
    }
}

fn nonneg(f: &str, v: f64) -> std::result::Result<(), (String, String)> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(field(f, format!("must be a finite number >= 0, got {v}")))
    }
}

fn positive(f: &str, v: f64) -> std::result::Result<(), (String, String)> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(field(f, format!("must be a finite number > 0, got {v}")))
    }
}

/// The timing and energy sections of a preset with the input resolution they act on.
#[derive(Debug, Clone, PartialEq)]
pub struct TileCostModel {
    /// Phase durations.
    pub timing: Timing,
    /// Action energies.
    pub energy: TileEnergy,
    /// DAC bits, sign included (sets the PWM window).
    pub dac_bits: u32,
    /// ADC bits, sign included (scale the conversion energy and time); 0: the reference.
    pub adc_bits: u32,
}

/// Phases and energies of one MVM on one tile (or a lockstep group of tiles).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MvmCost {
    /// Rows driven.
    pub rows: usize,
    /// Columns converted.
    pub cols: usize,
    /// Drive cycles: the phases (PWM) or phases x magnitude bits (bit-serial).
    pub cycles: usize,
    /// Input landing.
    pub land_ns: f64,
    /// One drive window.
    pub drive_ns: f64,
    /// Integration settling after each drive window.
    pub integrate_ns: f64,
    /// Conversion of all columns after one drive cycle: ceil(cols / adcs) x t_conv(adc bits).
    pub conv_ns: f64,
    /// Digital post-processing.
    pub post_ns: f64,
    /// Partial-sum reduction over the layer's row blocks: ceil(log2(row blocks)) levels.
    pub reduce_ns: f64,
    /// Sending the outputs through the tile's port.
    pub send_ns: f64,
    /// Drive energy (DACs, word lines).
    pub dac_pj: f64,
    /// Array energy: V^2 G t summed over the devices.
    pub array_pj: f64,
    /// Conversion energy.
    pub adc_pj: f64,
    /// Post-processing energy.
    pub post_pj: f64,
    /// This tile's share of the partial-sum reduction energy (the layer's (R - 1) additions per
    /// column spread over its R row blocks).
    pub reduce_pj: f64,
}

impl TileCostModel {
    /// Length of the full drive window of one cycle (PWM: (2^(b-1) - 1) t_lsb).
    pub fn window_ns(&self) -> f64 {
        let t = &self.timing;
        match t.drive {
            Drive::Pwm => ((1u64 << (self.dac_bits - 1)) - 1) as f64 * t.t_lsb_ns,
            Drive::BitSerial => t.t_lsb_ns,
        }
    }

    /// Energy of one conversion at the ADC's resolution: e_conv_pj x 2^(b - b_ref).
    pub fn e_conv_pj(&self) -> f64 {
        let e = &self.energy;
        match self.adc_bits {
            0 => e.e_conv_pj,
            b => e.e_conv_pj * 2f64.powi(b as i32 - e.e_conv_ref_bits as i32),
        }
    }

    /// Time of one conversion at the ADC's resolution: t_conv_ns x b / b_ref.
    pub fn t_conv_ns(&self) -> f64 {
        let t = &self.timing;
        match self.adc_bits {
            0 => t.t_conv_ns,
            b => t.t_conv_ns * f64::from(b) / t.t_conv_ref_bits as f64,
        }
    }

    /// Drive cycles of one MVM.
    pub fn cycles(&self) -> usize {
        let phases = self.timing.phases as usize;
        match self.timing.drive {
            Drive::Pwm => phases,
            Drive::BitSerial => phases * (self.dac_bits as usize - 1),
        }
    }

    /// The sum of the pulse lengths of one input row over the MVM, at the preset's average.
    fn avg_pulse_ns(&self) -> f64 {
        let full = match self.timing.drive {
            Drive::Pwm => self.window_ns(),
            Drive::BitSerial => (self.dac_bits - 1) as f64 * self.timing.t_lsb_ns,
        };
        self.energy.x_avg_rel * full
    }

    /// Cost of one MVM using `rows` x `cols` of a tile in a layer of `row_blocks` row blocks,
    /// sending `out_bits` per output; array energy at the preset's averages.
    pub fn mvm(&self, rows: usize, cols: usize, row_blocks: usize, out_bits: u32) -> MvmCost {
        let (t, e) = (&self.timing, &self.energy);
        let cycles = self.cycles();
        let conversions = cols.div_ceil(t.adcs as usize);
        let levels = row_blocks.max(1).next_power_of_two().trailing_zeros();
        // uS x V^2 x ns = fJ.
        let array_pj = (rows * cols) as f64
            * e.g_avg_rel
            * e.g_max_us
            * e.v_read_v
            * e.v_read_v
            * self.avg_pulse_ns()
            * 1e-3;
        MvmCost {
            rows,
            cols,
            cycles,
            land_ns: t.t_land_ns,
            drive_ns: self.window_ns(),
            integrate_ns: t.t_integrate_ns,
            conv_ns: conversions as f64 * self.t_conv_ns(),
            post_ns: t.t_post_ns,
            reduce_ns: f64::from(levels) * t.t_reduce_ns,
            send_ns: (cols as f64 * f64::from(out_bits) / t.out_port_bits_per_ns).ceil(),
            dac_pj: (rows * cycles) as f64 * e.e_dac_pj,
            array_pj,
            adc_pj: (cols * cycles) as f64 * self.e_conv_pj(),
            post_pj: cols as f64 * e.e_post_pj,
            reduce_pj: (cols * row_blocks.saturating_sub(1)) as f64 * e.e_add_pj
                / row_blocks.max(1) as f64,
        }
    }
}

impl MvmCost {
    /// Time the crossbar is busy: landing and every drive cycle with its integration.
    pub fn xbar_ns(&self) -> f64 {
        self.land_ns + self.cycles as f64 * (self.drive_ns + self.integrate_ns)
    }

    /// Time from the end of the last integration to the last conversion. Conversion k starts
    /// when cycle k is integrated and conversion k-1 is done, so the ADCs finish at
    /// max(C d + c, d + C c) after landing (C cycles of d, conversions of c).
    pub fn adc_tail_ns(&self) -> f64 {
        let c = self.cycles as f64;
        let d = self.drive_ns + self.integrate_ns;
        self.conv_ns.max(c * self.conv_ns - (c - 1.0) * d)
    }

    /// Time the ADCs are converting.
    pub fn adc_busy_ns(&self) -> f64 {
        self.cycles as f64 * self.conv_ns
    }

    /// One tile's MVM from landing to the post-processed output (what a chip measures).
    pub fn core_ns(&self) -> f64 {
        self.xbar_ns() + self.adc_tail_ns() + self.post_ns
    }

    /// The whole MVM including reduction and output send.
    pub fn total_ns(&self) -> f64 {
        self.core_ns() + self.reduce_ns + self.send_ns
    }

    /// Energy of the core MVM (drive, array, conversion, post-processing).
    pub fn core_pj(&self) -> f64 {
        self.dac_pj + self.array_pj + self.adc_pj + self.post_pj
    }

    /// Energy including the partial-sum reduction.
    pub fn total_pj(&self) -> f64 {
        self.core_pj() + self.reduce_pj
    }

    /// Operations of the MVM: one multiply and one add per weight.
    pub fn ops(&self) -> f64 {
        2.0 * (self.rows * self.cols) as f64
    }

    /// Throughput of `tiles` tiles running core MVMs back to back, in TOPS.
    pub fn tops(&self, tiles: usize) -> f64 {
        tiles as f64 * self.ops() / self.core_ns() * 1e-3
    }

    /// Energy efficiency of core MVMs in TOPS/W (operations per pJ).
    pub fn tops_per_w(&self) -> f64 {
        self.ops() / self.core_pj()
    }
}

/// Array energy in pJ of the MVMs of `layer` on `tokens` inputs `x` (tokens x in, row-major)
/// with input ranges `ranges`: sum over tokens, rows and columns of V^2 G t, with G the
/// programmed conductance |w| / w_max(c) x g_max of the conducting polarity and t the input's
/// pulse length after the DAC (PWM: |level| t_lsb; bit-serial: popcount(|level|) t_lsb).
pub fn array_energy_pj(
    layer: &AnalogLayer,
    x: &[f32],
    tokens: usize,
    ranges: &[f32],
    cost: &TileCostModel,
) -> Result<f64> {
    check_inputs(layer, x, tokens, ranges)?;
    if cost.dac_bits < 2 {
        return Err(Error::Value(format!(
            "pulse lengths need a DAC of at least 2 bits, the preset has {}",
            cost.dac_bits
        )));
    }
    let e = &cost.energy;
    let half = ((1u64 << (cost.dac_bits - 1)) - 1) as f32;
    let n_in = layer.in_features();
    let mut total_fj = 0f64;
    for (b, &range) in layer.blocks.iter().zip(ranges) {
        let n_out = b.w_max.len();
        // Conductance summed over the columns of each row (uS).
        let mut g_row = vec![0f64; b.len];
        for c in 0..n_out {
            if b.w_max[c] > 0.0 {
                let scale = e.g_max_us / f64::from(b.w_max[c]);
                for (g, w) in g_row.iter_mut().zip(&b.w[c * b.len..(c + 1) * b.len]) {
                    *g += f64::from(w.abs()) * scale;
                }
            }
        }
        let step = range / half;
        for xt in x.chunks(n_in).take(tokens) {
            for (g, &v) in g_row.iter().zip(&xt[b.start..b.start + b.len]) {
                let level = (v.clamp(-range, range) / step).round_ties_even().abs() as u32;
                let steps = match cost.timing.drive {
                    Drive::Pwm => level,
                    Drive::BitSerial => level.count_ones(),
                };
                total_fj += g * f64::from(steps) * cost.timing.t_lsb_ns;
            }
        }
    }
    Ok(total_fj * e.v_read_v * e.v_read_v * 1e-3)
}
