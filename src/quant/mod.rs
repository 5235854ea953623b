//! Digital quantization of a model, the analog foundation model's by-product: round-to-nearest
//! int4 weights (one scale per channel or per group) and static 8-bit inputs whose ranges are
//! the analog model's learned DAC ranges (or a calibration text's abs-max). A model robust to
//! analog noise is also robust to the rounding of a digital W4A8 chip.

pub mod export;
pub mod input;
pub mod rtn;
