//! Llama family (Llama 2/3.x, SmolLM2) and Phi-3 from HF weight names.
//!
//! Llama stores q/k/v and gate/up as separate matrices; Phi-3 fuses them (`qkv_proj`,
//! `gate_up_proj`). Both become the shared [`Decoder`]; the fused matrices stay fused so that
//! the tile mapping sees the layers the chip would hold.

use super::config::HfConfig;
use super::decoder::{Block, Decoder, GateUp, Qkv};
use super::linear::Projection;
use super::weights::Weights;
use crate::error::Result;

/// Builds a Llama or Phi-3 decoder (by `cfg.model_type`) from HF-named weights.
pub fn build(cfg: HfConfig, w: &Weights) -> Result<Decoder> {
    let (h, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let (nh, nkv, hd) = (
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
    );
    let phi3 = cfg.model_type == "phi3";
    let lin = |name: &str, out: usize, inp: usize| -> Result<Projection> {
        Ok(Projection::digital(w.get(name, &[out, inp])?, None))
    };
    let mut blocks = Vec::with_capacity(cfg.num_hidden_layers);
    for l in 0..cfg.num_hidden_layers {
        let p = |n: &str| format!("model.layers.{l}.{n}");
        let qkv = if phi3 {
            Qkv::Fused(lin(
                &p("self_attn.qkv_proj.weight"),
                (nh + 2 * nkv) * hd,
                h,
            )?)
        } else {
            Qkv::Separate {
                q: lin(&p("self_attn.q_proj.weight"), nh * hd, h)?,
                k: lin(&p("self_attn.k_proj.weight"), nkv * hd, h)?,
                v: lin(&p("self_attn.v_proj.weight"), nkv * hd, h)?,
            }
        };
        let gate_up = if phi3 {
            GateUp::Fused(lin(&p("mlp.gate_up_proj.weight"), 2 * i, h)?)
        } else {
            GateUp::Separate {
                gate: lin(&p("mlp.gate_proj.weight"), i, h)?,
                up: lin(&p("mlp.up_proj.weight"), i, h)?,
            }
        };
        blocks.push(Block {
            input_norm: w.get(&p("input_layernorm.weight"), &[h])?,
            qkv,
            o: lin(&p("self_attn.o_proj.weight"), h, nh * hd)?,
            post_norm: w.get(&p("post_attention_layernorm.weight"), &[h])?,
            gate_up,
            down: lin(&p("mlp.down_proj.weight"), h, i)?,
        });
    }
    let embed = w.get("model.embed_tokens.weight", &[v, h])?;
    let lm_head = if cfg.tie_word_embeddings || !w.contains("lm_head.weight") {
        Projection::digital(embed.clone(), None)
    } else {
        lin("lm_head.weight", v, h)?
    };
    let norm = w.get("model.norm.weight", &[h])?;
    Ok(Decoder::new(cfg, embed, blocks, norm, lm_head))
}
