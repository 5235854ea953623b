//! `afm quantize`: a model's projections as packed int4 weights with one scale per channel or
//! group, plus static 8-bit input ranges, saved as an HF folder that `afm eval` and
//! `afm generate` load (digital, no analog noise).
//!
//! Folder: `model.safetensors` with `NAME.qweight` (u8, out x ceil(in/2), two levels per byte),
//! `NAME.scales` (f32, out x groups) and the other weights in f32; `config.json` (lm_head
//! untied: it is quantized on its own); `quantization.json` ([`QuantConfig`]).

use super::input::StaticInput;
use super::rtn::{quantize, Grouping, QuantizedWeight};
use crate::error::{Error, Result};
use crate::executor::decoder::Decoder;
use crate::executor::decoder::KvCache;
use crate::executor::linear::{Projection, QuantProjection};
use crate::executor::save::{f32_tensor, frozen_tensors, pretty, write_hf_folder};
use crate::executor::weights::Weights;
use crate::tile::mapping::split_sizes;
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// File name of the quantization config inside a model folder.
pub const CONFIG_FILE: &str = "quantization.json";

/// How a quantized model was made; read back by the loader.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantConfig {
    /// Format version (1).
    pub format: u32,
    /// The model that was quantized, as named on the command line.
    pub source_model: String,
    /// Bits per weight (symmetric levels -(2^(b-1)-1)..=2^(b-1)-1).
    pub weight_bits: u32,
    /// Which weights share a scale.
    pub grouping: Grouping,
    /// Quantized projections by HF name with their [out, in] shape.
    pub projections: BTreeMap<String, [usize; 2]>,
    /// Static input quantization, when the inputs are quantized too.
    pub inputs: Option<InputConfig>,
}

/// Static input quantization of every quantized projection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    /// Bits per input.
    pub bits: u32,
    /// Row-block size: the inputs split into ceil(in / block_rows) near-equal blocks, as tiles
    /// split them, one range each.
    pub block_rows: usize,
    /// Where the ranges come from (learned analog ranges or a calibration text).
    pub source: String,
    /// Range per row block, by projection.
    pub ranges: BTreeMap<String, Vec<f32>>,
}

/// Where static input ranges come from.
#[derive(Debug, Clone)]
pub enum RangeSource {
    /// An analog model's learned DAC ranges (its `analog.json`), one per tile row block.
    Learned {
        /// Tile rows the model was trained with.
        block_rows: usize,
        /// Ranges by projection.
        ranges: BTreeMap<String, Vec<f32>>,
    },
    /// Abs-max per row block over one forward pass of `ids` (a calibration text).
    Calibrate {
        /// Row-block size.
        block_rows: usize,
        /// Token ids of the calibration text.
        ids: Vec<u32>,
        /// What the text was, for the config.
        label: String,
    },
}

/// A quantized model: the decoder that runs it, the tensors to save, and its config.
pub struct Quantized {
    /// The model with every projection quantized.
    pub decoder: Decoder,
    /// Packed levels and scales of every projection, by saved name.
    pub packed: HashMap<String, Tensor>,
    /// The config.
    pub config: QuantConfig,
}

/// Quantizes every digital projection of `model` to `bits`-bit weights with `grouping`, and
/// with `inputs` (bits, ranges) its inputs.
pub fn quantize_model(
    model: &Decoder,
    source_model: &str,
    bits: u32,
    grouping: Grouping,
    inputs: Option<(u32, RangeSource)>,
) -> Result<Quantized> {
    if bits > 4 {
        return Err(Error::Value(format!(
            "int{bits} weights: the packed format holds 2 to 4 bits"
        )));
    }
    let mut packed = HashMap::new();
    let mut projections = BTreeMap::new();
    let mut decoder = model.map_projections(|name, p| {
        let Projection::Digital { weight, bias } = p else {
            return Err(Error::Value(format!(
                "projection `{name}` is not digital: quantize the model as loaded"
            )));
        };
        let (out, inp) = weight.dims2()?;
        let w = weight
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let q = quantize(&w, out, inp, bits, grouping).map_err(|e| named(name, e))?;
        let cpu = Device::Cpu;
        packed.insert(
            format!("{name}.qweight"),
            Tensor::from_vec(q.pack_nibbles(), (out, inp.div_ceil(2)), &cpu)?,
        );
        packed.insert(
            format!("{name}.scales"),
            Tensor::from_vec(q.scales.clone(), (out, q.groups()), &cpu)?,
        );
        if let Some(b) = bias {
            packed.insert(format!("{name}.bias"), f32_tensor(b)?);
        }
        projections.insert(name.to_string(), [out, inp]);
        let input = match &inputs {
            None => None,
            Some((ibits, src)) => Some(input_for(name, inp, *ibits, src)?),
        };
        Ok(Projection::Quant(Box::new(QuantProjection {
            weight: dequantized(&q, weight)?,
            bias: bias.clone(),
            input,
        })))
    })?;
    let inputs = match inputs {
        None => None,
        Some((ibits, src)) => {
            let (block_rows, source) = match &src {
                RangeSource::Learned { block_rows, .. } => {
                    (*block_rows, "learned analog input ranges".to_string())
                }
                RangeSource::Calibrate {
                    block_rows,
                    ids,
                    label,
                } => {
                    let x = Tensor::from_slice(ids, (1, ids.len()), decoder.device())?;
                    decoder.forward(&x, &mut KvCache::default())?;
                    (
                        *block_rows,
                        format!("abs-max over {} tokens of {label}", ids.len()),
                    )
                }
            };
            let mut ranges = BTreeMap::new();
            for (name, p) in decoder.projections_mut() {
                if let Projection::Quant(q) = &*p {
                    if let Some(i) = &q.input {
                        ranges.insert(name, i.ranges());
                    }
                }
            }
            Some(InputConfig {
                bits: ibits,
                block_rows,
                source,
                ranges,
            })
        }
    };
    Ok(Quantized {
        decoder,
        packed,
        config: QuantConfig {
            format: 1,
            source_model: source_model.to_string(),
            weight_bits: bits,
            grouping,
            projections,
            inputs,
        },
    })
}

fn input_for(name: &str, inp: usize, bits: u32, src: &RangeSource) -> Result<StaticInput> {
    let (rows, ranges) = match src {
        RangeSource::Learned { block_rows, ranges } => {
            let r = ranges
                .get(name)
                .ok_or_else(|| Error::Value(format!("`{name}` has no learned input ranges")))?;
            (*block_rows, r.clone())
        }
        RangeSource::Calibrate { block_rows, .. } => (*block_rows, Vec::new()),
    };
    StaticInput::new(bits, split_sizes(inp, rows), ranges).map_err(|e| named(name, e))
}

/// `e` with the projection (or file) it concerns in front, without repeating the error kind.
fn named(what: &str, e: Error) -> Error {
    match e {
        Error::Value(m) => Error::Value(format!("`{what}`: {m}")),
        other => Error::Value(format!("`{what}`: {other}")),
    }
}

fn dequantized(q: &QuantizedWeight, like: &Tensor) -> Result<Tensor> {
    Ok(Tensor::from_vec(q.dequantize(), (q.out, q.inp), like.device())?.to_dtype(like.dtype())?)
}

impl Quantized {
    /// Saves the model as an HF folder with `quantization.json` (written last: a folder without
    /// it is not a finished export).
    pub fn save(&self, dir: &Path, tokenizer: Option<&tokenizers::Tokenizer>) -> Result<()> {
        let mut t = frozen_tensors(&self.decoder)?;
        t.extend(self.packed.clone());
        let mut cfg = self.decoder.cfg.to_json();
        cfg["tie_word_embeddings"] = serde_json::json!(false);
        write_hf_folder(dir, &t, &cfg, tokenizer)?;
        let json = serde_json::to_value(&self.config).map_err(|e| Error::Value(e.to_string()))?;
        crate::paths::write_atomic(&dir.join(CONFIG_FILE), pretty(&json).as_bytes())
    }
}

/// Reads `DIR/quantization.json` when the folder has one.
pub fn load_config(dir: &Path) -> Result<Option<QuantConfig>> {
    let path = dir.join(CONFIG_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let text = crate::paths::read_text(&path)?;
    let c: QuantConfig = serde_json::from_str(&text).map_err(|e| Error::Parse {
        file: path.clone(),
        msg: e.to_string(),
    })?;
    if c.format != 1 || !(2..=4).contains(&c.weight_bits) {
        return Err(Error::Parse {
            file: path,
            msg: format!(
                "format {} with {}-bit weights (expected format 1, 2 to 4 bits)",
                c.format, c.weight_bits
            ),
        });
    }
    Ok(Some(c))
}

impl QuantConfig {
    /// Adds `NAME.weight` (dequantized) for every quantized projection to `w`, so that the
    /// architecture builder finds plain weights.
    pub fn dequantize_into(&self, w: &mut Weights) -> Result<()> {
        for (name, &[out, inp]) in &self.projections {
            let qweight = w.raw(&format!("{name}.qweight"))?;
            let dev = qweight.device().clone();
            if qweight.dtype() != DType::U8 {
                return Err(Error::Value(format!(
                    "`{name}.qweight` is {:?}, expected u8 (two 4-bit levels per byte)",
                    qweight.dtype()
                )));
            }
            let packed = qweight.flatten_all()?.to_vec1::<u8>()?;
            let scales = w
                .raw(&format!("{name}.scales"))?
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let q = QuantizedWeight::from_nibbles(
                name,
                &packed,
                scales,
                out,
                inp,
                self.grouping.group_len(inp),
                self.weight_bits,
            )?;
            let t = Tensor::from_vec(q.dequantize(), (out, inp), &dev)?;
            w.insert(format!("{name}.weight"), t);
        }
        Ok(())
    }

    /// The model built from the dequantized weights with every quantized projection wrapped
    /// in its static input quantizer.
    pub fn wrap(&self, dec: &Decoder) -> Result<Decoder> {
        dec.map_projections(|name, p| {
            let Projection::Digital { weight, bias } = p else {
                return p.clone_digital(name);
            };
            if !self.projections.contains_key(name) {
                return p.clone_digital(name);
            }
            let input = match &self.inputs {
                None => None,
                Some(i) => {
                    let r = i.ranges.get(name).cloned().unwrap_or_default();
                    if r.is_empty() {
                        return Err(Error::Value(format!(
                            "{CONFIG_FILE}: no input ranges for `{name}`"
                        )));
                    }
                    let inp = weight.dims2()?.1;
                    Some(
                        StaticInput::new(i.bits, split_sizes(inp, i.block_rows), r)
                            .map_err(|e| named(&format!("{CONFIG_FILE}: {name}"), e))?,
                    )
                }
            };
            Ok(Projection::Quant(Box::new(QuantProjection {
                weight: weight.clone(),
                bias: bias.clone(),
                input,
            })))
        })
    }
}
