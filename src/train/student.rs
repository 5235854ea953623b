//! The student: the teacher's weights with every projection an analog training layer, its
//! trainable variables by name, and the saved analog model (an HF folder plus `analog.json`
//! with the learned input ranges) that `afm eval` and `afm generate` load.
//!
//! Embeddings and norms stay frozen at the teacher's values; the projections (lm_head too,
//! unless kept digital) and their input ranges learn. With tied embeddings an analog lm_head
//! becomes its own matrix, as on a chip.

use super::layer::{AnalogTrainConfig, AnalogTrainLinear, LayerState};
use crate::error::{Error, Result};
use crate::executor::decoder::{Decoder, GateUp, Qkv};
use crate::executor::linear::Projection;
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The student from the (digital) teacher; `compute` is its analog layers' product dtype.
pub fn build_student(
    teacher: &Decoder,
    cfg: &AnalogTrainConfig,
    seed: u64,
    digital_lm_head: bool,
    compute: DType,
) -> Result<Decoder> {
    teacher.map_projections(|name, p| match p {
        Projection::Digital { .. } if digital_lm_head && name == "lm_head" => p.clone_digital(name),
        Projection::Digital { weight, bias } => {
            let head = crate::tile::mapping::isolated_head(&teacher.isolated, name);
            let mut layer =
                AnalogTrainLinear::with_head(weight, bias.as_ref(), cfg, seed, name, head)?;
            layer.compute = compute;
            Ok(Projection::Train(Box::new(layer)))
        }
        _ => Err(Error::Value(format!(
            "teacher projection `{name}` is not digital"
        ))),
    })
}

/// Every training layer of a model with its HF name.
pub fn train_layers(model: &Decoder) -> Vec<(String, &AnalogTrainLinear)> {
    fn put<'a>(out: &mut Vec<(String, &'a AnalogTrainLinear)>, name: String, p: &'a Projection) {
        if let Projection::Train(t) = p {
            out.push((name, t.as_ref()));
        }
    }
    let mut out = Vec::new();
    let o = &mut out;
    for (i, b) in model.blocks.iter().enumerate() {
        let n = |s: &str| format!("model.layers.{i}.{s}");
        match &b.qkv {
            Qkv::Separate { q, k, v } => {
                put(o, n("self_attn.q_proj"), q);
                put(o, n("self_attn.k_proj"), k);
                put(o, n("self_attn.v_proj"), v);
            }
            Qkv::Fused(f) => put(o, n("self_attn.qkv_proj"), f),
        }
        put(o, n("self_attn.o_proj"), &b.o);
        match &b.gate_up {
            GateUp::Separate { gate, up } => {
                put(o, n("mlp.gate_proj"), gate);
                put(o, n("mlp.up_proj"), up);
            }
            GateUp::Fused(f) => put(o, n("mlp.gate_up_proj"), f),
        }
        put(o, n("mlp.down_proj"), &b.down);
    }
    put(o, "lm_head".into(), &model.lm_head);
    out
}

/// Trainable variables by name (`NAME.weight`, `NAME.bias`, `NAME.input_range`), sorted.
pub fn trainable(model: &Decoder) -> BTreeMap<String, Var> {
    let mut out = BTreeMap::new();
    for (name, l) in train_layers(model) {
        out.insert(format!("{name}.weight"), l.weight.clone());
        if let Some(b) = &l.bias {
            out.insert(format!("{name}.bias"), b.clone());
        }
        out.insert(format!("{name}.input_range"), l.ranges.clone());
    }
    out
}

/// Switches every training layer between training (noise, range initialization) and not.
pub fn set_training(model: &Decoder, on: bool) -> Result<()> {
    for (name, l) in train_layers(model) {
        l.state
            .lock()
            .map_err(|_| Error::Value(format!("layer `{name}`: state lock poisoned")))?
            .training = on;
    }
    Ok(())
}

/// Run states of the training layers by name (saved in checkpoints).
pub fn layer_states(model: &Decoder) -> Result<BTreeMap<String, LayerState>> {
    train_layers(model)
        .into_iter()
        .map(|(name, l)| {
            let s = l
                .state
                .lock()
                .map_err(|_| Error::Value(format!("layer `{name}`: state lock poisoned")))?
                .clone();
            Ok((name, s))
        })
        .collect()
}

/// Restores run states saved by [`layer_states`].
pub fn set_layer_states(model: &Decoder, states: &BTreeMap<String, LayerState>) -> Result<()> {
    for (name, l) in train_layers(model) {
        let s = states
            .get(&name)
            .ok_or_else(|| Error::Value(format!("checkpoint has no state for layer `{name}`")))?;
        *l.state
            .lock()
            .map_err(|_| Error::Value(format!("layer `{name}`: state lock poisoned")))? = s.clone();
    }
    Ok(())
}

/// The analog side of a saved model: the learned input range per row block of every analog
/// projection and the hardware it was trained for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalogMeta {
    /// The training-layer settings (tile rows, DAC/ADC bits, lambda).
    pub analog: AnalogTrainConfig,
    /// Input ranges per projection (HF name), one per row block.
    pub input_ranges: BTreeMap<String, Vec<f32>>,
    /// Projections (HF name) whose first inputs sit in a row block of their own, and how many
    /// ([`Decoder::isolated`]; the saved weights are already permuted).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub isolated: BTreeMap<String, usize>,
}

/// Saves the student as an HF folder: config.json, model.safetensors (every weight, trained
/// projections included), analog.json, and the tokenizer when given.
pub fn save_model(
    model: &Decoder,
    cfg: &AnalogTrainConfig,
    tokenizer: Option<&tokenizers::Tokenizer>,
    dir: &Path,
) -> Result<()> {
    let mut t = crate::executor::save::frozen_tensors(model)?;
    let f32 = crate::executor::save::f32_tensor;
    let mut ranges = BTreeMap::new();
    let mut cfg_json = model.cfg.to_json();
    let mut digital = |name: &str, p: &Projection, t: &mut HashMap<String, Tensor>| -> Result<()> {
        match p {
            Projection::Digital { weight, bias } => {
                t.insert(format!("{name}.weight"), f32(weight)?);
                if let Some(b) = bias {
                    t.insert(format!("{name}.bias"), f32(b)?);
                }
                Ok(())
            }
            Projection::Train(l) => {
                t.insert(format!("{name}.weight"), f32(l.weight.as_tensor())?);
                if let Some(b) = &l.bias {
                    t.insert(format!("{name}.bias"), f32(b.as_tensor())?);
                }
                ranges.insert(name.to_string(), l.ranges.as_tensor().to_vec1::<f32>()?);
                Ok(())
            }
            Projection::Analog(_) | Projection::Quant(_) | Projection::Probe(_) => {
                Err(Error::Value(format!(
                "`{name}` is programmed on tiles, quantized or a probe; save the trained model \
                 instead"
                )))
            }
        }
    };
    for (i, b) in model.blocks.iter().enumerate() {
        let n = |s: &str| format!("model.layers.{i}.{s}");
        match &b.qkv {
            Qkv::Separate { q, k, v } => {
                digital(&n("self_attn.q_proj"), q, &mut t)?;
                digital(&n("self_attn.k_proj"), k, &mut t)?;
                digital(&n("self_attn.v_proj"), v, &mut t)?;
            }
            Qkv::Fused(f) => digital(&n("self_attn.qkv_proj"), f, &mut t)?,
        }
        digital(&n("self_attn.o_proj"), &b.o, &mut t)?;
        match &b.gate_up {
            GateUp::Separate { gate, up } => {
                digital(&n("mlp.gate_proj"), gate, &mut t)?;
                digital(&n("mlp.up_proj"), up, &mut t)?;
            }
            GateUp::Fused(f) => digital(&n("mlp.gate_up_proj"), f, &mut t)?,
        }
        digital(&n("mlp.down_proj"), &b.down, &mut t)?;
    }
    // A trained lm_head is its own matrix: the saved model unties it.
    let tied_digital =
        model.cfg.tie_word_embeddings && matches!(model.lm_head, Projection::Digital { .. });
    if !tied_digital {
        digital("lm_head", &model.lm_head, &mut t)?;
        cfg_json["tie_word_embeddings"] = serde_json::json!(false);
    }
    crate::executor::save::write_hf_folder(dir, &t, &cfg_json, tokenizer)?;
    let meta = AnalogMeta {
        analog: cfg.clone(),
        input_ranges: ranges,
        isolated: model.isolated.clone(),
    };
    let meta = serde_json::to_value(&meta).map_err(|e| Error::Value(e.to_string()))?;
    crate::paths::write_atomic(
        &dir.join("analog.json"),
        crate::executor::save::pretty(&meta).as_bytes(),
    )?;
    Ok(())
}

/// Reads `DIR/analog.json` when the model folder has one.
pub fn load_meta(dir: &Path) -> Result<Option<AnalogMeta>> {
    let path = dir.join("analog.json");
    if !path.exists() {
        return Ok(None);
    }
    let text = crate::paths::read_text(&path)?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::Parse {
            file: path,
            msg: e.to_string(),
        })
}
