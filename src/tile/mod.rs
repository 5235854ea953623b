//! One crossbar tile and the layers mapped onto tiles.
//!
//! A tile stores a block of weights as differential conductance pairs, one column per output.
//! Inputs arrive through a DAC with a static range per row block, the column currents sum the
//! products in the analog domain, and an ADC with a fixed per-column bound digitizes them; the
//! partial results of a layer's row blocks are summed digitally.

pub mod blocked;
#[cfg(feature = "cuda")]
mod blocked_cuda;
pub mod calibrate;
pub mod clip;
pub mod cost;
pub mod mapping;
pub mod mvm;
pub mod op;
pub mod preset;
pub mod program;
pub mod reference;

pub use clip::WeightClip;
pub use cost::{array_energy_pj, MvmCost, TileCostModel};
pub use mapping::{split_sizes, split_with_head, TileMap};
pub use mvm::{analog_mvm, quantize};
pub use op::AnalogMvm;
pub use preset::{resolve_preset_path, TilePreset};
pub use program::{AnalogLayer, MvmConfig};
pub use reference::analog_mvm_reference;
