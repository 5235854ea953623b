//! The decoder shared by the Llama family and Phi-3: pre-norm blocks of grouped-query attention
//! with rotary positions and a SwiGLU MLP, a KV cache, and the language-model head.
//!
//! The architectures differ only in how their projections are stored (Phi-3 fuses q/k/v and
//! gate/up into one matrix each, which matters for the tile mapping) and in RoPE scaling; the
//! per-architecture files build this decoder from their weights.

use super::config::HfConfig;
use super::linear::Projection;
use super::rope::Rope;
use super::tree::TreeBatch;
use crate::error::Result;
use candle_core::{DType, Device, Tensor, D};

/// Query/key/value projections.
#[derive(Debug)]
pub enum Qkv {
    /// Separate q_proj, k_proj, v_proj (Llama).
    Separate {
        /// q_proj.
        q: Projection,
        /// k_proj.
        k: Projection,
        /// v_proj.
        v: Projection,
    },
    /// One fused qkv_proj (Phi-3): rows are q, then k, then v.
    Fused(Projection),
}

/// Gate and up projections of the MLP.
#[derive(Debug)]
pub enum GateUp {
    /// Separate gate_proj and up_proj (Llama).
    Separate {
        /// gate_proj.
        gate: Projection,
        /// up_proj.
        up: Projection,
    },
    /// One fused gate_up_proj (Phi-3): rows are gate, then up.
    Fused(Projection),
}

/// One decoder block.
#[derive(Debug)]
pub struct Block {
    /// input_layernorm weight.
    pub input_norm: Tensor,
    /// Attention input projections.
    pub qkv: Qkv,
    /// o_proj.
    pub o: Projection,
    /// post_attention_layernorm weight.
    pub post_norm: Tensor,
    /// MLP input projections.
    pub gate_up: GateUp,
    /// down_proj.
    pub down: Projection,
}

pub use super::kv_cache::KvCache;

/// A decoder-only transformer.
#[derive(Debug)]
pub struct Decoder {
    /// Its configuration.
    pub cfg: HfConfig,
    /// Token embeddings (vocab x hidden).
    pub embed: Tensor,
    /// Blocks in order.
    pub blocks: Vec<Block>,
    /// Final norm weight.
    pub norm: Tensor,
    /// Language-model head.
    pub lm_head: Projection,
    /// Per projection (HF name), how many of its first inputs sit in a row block of their own
    /// when it is put on tiles (`executor::outliers`); absent: the plain near-equal split.
    pub isolated: std::collections::BTreeMap<String, usize>,
    /// How each column's full scale is chosen when the projections are put on tiles
    /// (`tile::clip`; default: nothing clipped).
    pub weight_clip: crate::tile::WeightClip,
    /// Copies of each isolated head block in its tile's rows (`tile::program`; 1: one).
    pub head_copies: usize,
    rope: Rope,
}

impl Decoder {
    /// Assembles a decoder from its parts.
    pub fn new(
        cfg: HfConfig,
        embed: Tensor,
        blocks: Vec<Block>,
        norm: Tensor,
        lm_head: Projection,
    ) -> Self {
        let rope = Rope::new(&cfg);
        Decoder {
            cfg,
            embed,
            blocks,
            norm,
            lm_head,
            isolated: Default::default(),
            weight_clip: Default::default(),
            head_copies: 1,
            rope,
        }
    }

    /// Device of the weights.
    pub fn device(&self) -> &Device {
        self.embed.device()
    }

    /// A copy of this decoder with every projection replaced by `f(name, projection)`; the
    /// other weights are shared (candle tensors are reference-counted).
    pub fn map_projections(
        &self,
        mut f: impl FnMut(&str, &Projection) -> Result<Projection>,
    ) -> Result<Decoder> {
        let mut blocks = Vec::with_capacity(self.blocks.len());
        for (i, b) in self.blocks.iter().enumerate() {
            let mut p = |n: &str, x: &Projection| f(&format!("model.layers.{i}.{n}"), x);
            let qkv = match &b.qkv {
                Qkv::Separate { q, k, v } => Qkv::Separate {
                    q: p("self_attn.q_proj", q)?,
                    k: p("self_attn.k_proj", k)?,
                    v: p("self_attn.v_proj", v)?,
                },
                Qkv::Fused(x) => Qkv::Fused(p("self_attn.qkv_proj", x)?),
            };
            let o = p("self_attn.o_proj", &b.o)?;
            let gate_up = match &b.gate_up {
                GateUp::Separate { gate, up } => GateUp::Separate {
                    gate: p("mlp.gate_proj", gate)?,
                    up: p("mlp.up_proj", up)?,
                },
                GateUp::Fused(x) => GateUp::Fused(p("mlp.gate_up_proj", x)?),
            };
            let down = p("mlp.down_proj", &b.down)?;
            blocks.push(Block {
                input_norm: b.input_norm.clone(),
                qkv,
                o,
                post_norm: b.post_norm.clone(),
                gate_up,
                down,
            });
        }
        let lm_head = f("lm_head", &self.lm_head)?;
        Ok(Decoder {
            cfg: self.cfg.clone(),
            embed: self.embed.clone(),
            blocks,
            norm: self.norm.clone(),
            lm_head,
            isolated: self.isolated.clone(),
            weight_clip: self.weight_clip,
            head_copies: self.head_copies,
            rope: self.rope.clone(),
        })
    }

    /// Every projection with its HF name, for mapping onto tiles.
    pub fn projections_mut(&mut self) -> Vec<(String, &mut Projection)> {
        let mut v = Vec::new();
        for (i, b) in self.blocks.iter_mut().enumerate() {
            let p = |n: &str| format!("model.layers.{i}.{n}");
            match &mut b.qkv {
                Qkv::Separate { q, k, v: vv } => {
                    v.push((p("self_attn.q_proj"), q));
                    v.push((p("self_attn.k_proj"), k));
                    v.push((p("self_attn.v_proj"), vv));
                }
                Qkv::Fused(f) => v.push((p("self_attn.qkv_proj"), f)),
            }
            v.push((p("self_attn.o_proj"), &mut b.o));
            match &mut b.gate_up {
                GateUp::Separate { gate, up } => {
                    v.push((p("mlp.gate_proj"), gate));
                    v.push((p("mlp.up_proj"), up));
                }
                GateUp::Fused(f) => v.push((p("mlp.gate_up_proj"), f)),
            }
            v.push((p("mlp.down_proj"), &mut b.down));
        }
        v.push(("lm_head".to_string(), &mut self.lm_head));
        v
    }

    /// Logits (batch, tokens, vocab) for `ids` (batch, tokens) following the cached tokens.
    pub fn forward(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        self.lm_head.forward(&self.forward_hidden(ids, cache)?)
    }

    /// The final-normed hidden states (batch, tokens, hidden) for `ids` following the cached
    /// tokens; [`Decoder::logits`] turns rows of it into logits, so that scoring can skip the
    /// language-model head where no prediction is needed.
    pub fn forward_hidden(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        self.hidden(ids, cache, false)
    }

    /// Logits (batch, tokens, vocab) of a frozen model for whole sequences `ids` (no cache),
    /// with the attention of f32 models through the training path's fused causal softmax
    /// (`train::step_ops`) as the student's is: the trainer's teacher. Evaluation keeps
    /// [`Decoder::forward`], whose numbers are the generic ops'.
    pub fn forward_frozen(&self, ids: &Tensor) -> Result<Tensor> {
        let hidden = self.hidden(ids, &mut KvCache::default(), true)?;
        self.lm_head.forward(&hidden)
    }

    /// [`Decoder::forward_hidden`]; `fused`: causal attention in f32 through the fused causal
    /// softmax even where nothing is tracked. On a ragged cache ([`KvCache::stack`]) each row
    /// continues at its own position and never sees the padding slots.
    fn hidden(&self, ids: &Tensor, cache: &mut KvCache, fused: bool) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let c = &self.cfg;
        let start = cache.len;
        cache.ensure_layers(self.blocks.len());
        let dtype = self.embed.dtype();
        let ((cos, sin), mask) = match cache.ragged.as_mut() {
            Some(r) => {
                if r.next.len() != b {
                    return Err(crate::Error::Shape(format!(
                        "a forward of {b} rows on a ragged cache of {} rows",
                        r.next.len()
                    )));
                }
                let at = r
                    .next
                    .iter()
                    .flat_map(|&p| (0..t).map(move |j| (p + j, p + t)));
                let tables = self.rope.rows(at, (b, t), self.device())?;
                let mask = ragged_mask(&r.real, t, self.device(), dtype)?;
                for (real, next) in r.real.iter_mut().zip(&mut r.next) {
                    real.extend(std::iter::repeat_n(true, t));
                    *next += t;
                }
                (tables, Some(mask))
            }
            None => {
                let tables = self.rope.tables(start, t, start + t, self.device())?;
                (tables, causal_mask(t, start, self.device(), dtype)?)
            }
        };
        let (cos, sin) = (cos.to_dtype(dtype)?, sin.to_dtype(dtype)?);
        let mut x =
            self.embed
                .index_select(&ids.flatten_all()?, 0)?
                .reshape((b, t, c.hidden_size))?;
        for (i, block) in self.blocks.iter().enumerate() {
            let h = rms_norm(&x, &block.input_norm, c.rms_norm_eps as f32)?;
            let a = self.attention(i, &h, (&cos, &sin), (mask.as_ref(), fused), cache)?;
            x = (x + a)?;
            let h = rms_norm(&x, &block.post_norm, c.rms_norm_eps as f32)?;
            x = (x + self.mlp(block, &h)?)?;
        }
        cache.len += t;
        rms_norm(&x, &self.norm, c.rms_norm_eps as f32)
    }

    /// The final-normed hidden states (rows, hidden) of a tree batch's packed rows
    /// ([`TreeBatch`]): each row's is that of its own sequence, prefix + branch, with no cache.
    /// The projections see real tokens only.
    pub fn forward_trees(&self, batch: &TreeBatch) -> Result<Tensor> {
        let c = &self.cfg;
        let dev = self.device();
        let dtype = self.embed.dtype();
        let (rows, trees, slots) = (batch.rows(), batch.trees(), batch.slots());
        if rows == 0 {
            return Ok(Tensor::zeros((0, c.hidden_size), dtype, dev)?);
        }
        let (cos, sin) = self
            .rope
            .rows(batch.slot_positions(), (trees, slots), dev)?;
        let tb = TreeTensors {
            batch,
            gather: batch.gather_index(dev)?,
            scatter: batch.scatter_index(dev)?,
            mask: batch.mask(dev, dtype)?,
            cos: cos.to_dtype(dtype)?,
            sin: sin.to_dtype(dtype)?,
        };
        let ids = Tensor::from_slice(&batch.ids, rows, dev)?;
        let mut x = self
            .embed
            .index_select(&ids, 0)?
            .reshape((1, rows, c.hidden_size))?;
        for (i, block) in self.blocks.iter().enumerate() {
            let h = rms_norm(&x, &block.input_norm, c.rms_norm_eps as f32)?;
            x = (x + self.tree_attention(i, &h, &tb)?)?;
            let h = rms_norm(&x, &block.post_norm, c.rms_norm_eps as f32)?;
            x = (x + self.mlp(block, &h)?)?;
        }
        Ok(rms_norm(&x, &self.norm, c.rms_norm_eps as f32)?.squeeze(0)?)
    }

    /// Logits of hidden states (..., hidden) from [`Decoder::forward_hidden`].
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.lm_head.forward(hidden)
    }

    /// Resets every analog projection (see [`Projection::reset`]).
    pub fn reset_analog(&self, clear_ranges: bool) {
        self.for_each_projection(|p| p.reset(clear_ranges));
    }

    /// Sets the calibration rule of every analog projection (see
    /// [`Projection::set_calibration`]).
    pub fn set_calibration(&self, rule: super::linear::Calibration) {
        self.for_each_projection(|p| p.set_calibration(rule));
    }

    /// Calls `f` on every projection, blocks in order, then lm_head.
    fn for_each_projection(&self, f: impl Fn(&Projection)) {
        for b in &self.blocks {
            match &b.qkv {
                Qkv::Separate { q, k, v } => [q, k, v].iter().for_each(|p| f(p)),
                Qkv::Fused(p) => f(p),
            }
            match &b.gate_up {
                GateUp::Separate { gate, up } => [gate, up].iter().for_each(|p| f(p)),
                GateUp::Fused(p) => f(p),
            }
            f(&b.o);
            f(&b.down);
        }
        f(&self.lm_head);
    }

    fn attention(
        &self,
        layer: usize,
        h: &Tensor,
        (cos, sin): (&Tensor, &Tensor),
        (mask, fused): (Option<&Tensor>, bool),
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let c = &self.cfg;
        let block = &self.blocks[layer];
        let (b, t, _) = h.dims3()?;
        let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let (q, k, v) = self.qkv(block, h)?;
        let heads = |x: Tensor, n: usize| -> Result<Tensor> {
            Ok(x.reshape((b, t, n, hd))?.transpose(1, 2)?.contiguous()?)
        };
        let q = rope(&heads(q, nh)?, cos, sin)?;
        let k = rope(&heads(k, nkv)?, cos, sin)?;
        let (k, v) = cache.append(layer, k, heads(v, nkv)?)?;
        // A ragged cache's mask is not causal alone: it keeps the generic ops.
        let tracked = q.track_op() || k.track_op() || v.track_op();
        let y = if (tracked || fused) && cache.ragged.is_none() && q.dtype() == DType::F32 {
            // Training: one graph node with a recomputing backward instead of the scores'
            // generic ops (train::step_ops::causal_attention); the frozen teacher's forward
            // takes its fused softmax too.
            let q = q.reshape((b, nkv, nh / nkv * t, hd))?;
            let scale = 1.0 / (hd as f64).sqrt();
            crate::train::step_ops::causal_attention(&q, &k, &v, t, scale)?
        } else {
            self.attend(&q, &k, &v, mask)?
        };
        let y = y
            .reshape((b, nh, t, hd))?
            .transpose(1, 2)?
            .reshape((b, t, nh * hd))?;
        block.o.forward(&y)
    }

    /// The query, key and value rows of `h` (..., hidden).
    fn qkv(&self, block: &Block, h: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let c = &self.cfg;
        let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        Ok(match &block.qkv {
            Qkv::Separate { q, k, v } => (q.forward(h)?, k.forward(h)?, v.forward(h)?),
            Qkv::Fused(f) => {
                let y = f.forward(h)?;
                (
                    y.narrow(D::Minus1, 0, nh * hd)?,
                    y.narrow(D::Minus1, nh * hd, nkv * hd)?,
                    y.narrow(D::Minus1, (nh + nkv) * hd, nkv * hd)?,
                )
            }
        })
    }

    /// Softmax attention of queries (b, heads, t, hd) over keys and values (b, kv heads, s,
    /// hd) under an additive mask broadcast to (b, heads, t, s); the result is (b, heads, t,
    /// hd). A few queries on the CPU (decoding) read the cache in place (`few_queries`).
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        if let Some(y) = super::few_queries::attend(q, k, v, mask)? {
            return Ok(y);
        }
        let (b, nh, t, hd) = q.dims4()?;
        let (nkv, s) = (k.dims()[1], k.dims()[2]);
        // Grouped-query attention without copying the keys and values per query head: the
        // query heads that share a key/value head become rows of one product (heads are laid
        // out group by group, so this is a reshape of the contiguous q).
        let rep = nh / nkv;
        let q = q.reshape((b, nkv, rep * t, hd))?;
        let att = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?;
        let mut att = att.reshape((b, nh, t, s))?;
        if let Some(m) = mask {
            att = att.broadcast_add(m)?;
        }
        Ok(softmax_last_dim(&att)?
            .reshape((b, nkv, rep * t, s))?
            .matmul(v)?
            .reshape((b, nh, t, hd))?)
    }

    /// Attention of a tree batch's packed rows `h` (1, rows, hidden): each tree's rows go to
    /// the padded (trees, slots) layout, attend under the tree mask and come back packed.
    fn tree_attention(&self, layer: usize, h: &Tensor, tb: &TreeTensors) -> Result<Tensor> {
        let c = &self.cfg;
        let block = &self.blocks[layer];
        let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let (n, trees, slots) = (tb.batch.rows(), tb.batch.trees(), tb.batch.slots());
        let (q, k, v) = self.qkv(block, h)?;
        let heads = |x: Tensor, m: usize| -> Result<Tensor> {
            Ok(x.reshape((n, m * hd))?
                .index_select(&tb.gather, 0)?
                .reshape((trees, slots, m, hd))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = rope(&heads(q, nh)?, &tb.cos, &tb.sin)?;
        let k = rope(&heads(k, nkv)?, &tb.cos, &tb.sin)?;
        let y = self.attend(&q, &k, &heads(v, nkv)?, Some(&tb.mask))?;
        let y = y
            .transpose(1, 2)?
            .reshape((trees * slots, nh * hd))?
            .index_select(&tb.scatter, 0)?
            .reshape((1, n, nh * hd))?;
        block.o.forward(&y)
    }

    fn mlp(&self, block: &Block, h: &Tensor) -> Result<Tensor> {
        let (gate, up) = match &block.gate_up {
            GateUp::Separate { gate, up } => (gate.forward(h)?, up.forward(h)?),
            GateUp::Fused(f) => {
                let y = f.forward(h)?;
                let i = self.cfg.intermediate_size;
                (y.narrow(D::Minus1, 0, i)?, y.narrow(D::Minus1, i, i)?)
            }
        };
        let act = if (gate.track_op() || up.track_op()) && gate.dtype() == DType::F32 {
            crate::train::step_ops::swiglu(&gate, &up)?
        } else {
            (candle_nn::ops::silu(&gate)? * up)?
        };
        block.down.forward(&act)
    }
}

/// A tree batch's layout as tensors on the model's device, built once per forward.
struct TreeTensors<'a> {
    batch: &'a TreeBatch,
    gather: Tensor,
    scatter: Tensor,
    mask: Tensor,
    cos: Tensor,
    sin: Tensor,
}

/// Additive mask (b x 1 x t x (start + t)) of a forward on a ragged cache whose rows' real
/// slots are `real` (before this forward): query `j` sees the real slots and the new ones up to
/// its own.
fn ragged_mask(real: &[Vec<bool>], t: usize, dev: &Device, dtype: DType) -> Result<Tensor> {
    let start = real.first().map_or(0, Vec::len);
    let s = start + t;
    let mut m = Vec::with_capacity(real.len() * t * s);
    let see = |ok: bool| if ok { 0.0 } else { f32::NEG_INFINITY };
    for row in real {
        for j in 0..t {
            m.extend(row.iter().map(|&ok| see(ok)));
            m.extend((0..t).map(|k| see(k <= j)));
        }
    }
    Ok(Tensor::from_vec(m, (real.len(), 1, t, s), dev)?.to_dtype(dtype)?)
}

/// Additive mask (t x (start + t)): -inf where a query would see a later key; `None` for one
/// query, which sees every key.
pub(crate) fn causal_mask(
    t: usize,
    start: usize,
    dev: &Device,
    dtype: DType,
) -> Result<Option<Tensor>> {
    if t <= 1 {
        return Ok(None);
    }
    let s = start + t;
    let m: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..s).map(move |j| {
                if j > start + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Ok(Some(Tensor::from_vec(m, (t, s), dev)?.to_dtype(dtype)?))
}

// candle's fused RMSNorm, softmax and rotary kernels have no backward: a tensor that a
// trained variable feeds (`track_op`) takes their composed, differentiable forms instead, so
// that gradients reach every layer below; inference keeps the fused kernels.

/// RMSNorm of the last dimension of `x` with weight `w`.
fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    Ok(
        if x.track_op() && x.dtype() == DType::F32 && w.dtype() == DType::F32 {
            crate::train::step_ops::rms_norm(x, w, eps)?
        } else if x.track_op() {
            candle_nn::ops::rms_norm_slow(x, w, eps)?
        } else {
            candle_nn::ops::rms_norm(x, w, eps)?
        },
    )
}

/// Softmax over the last dimension.
fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    Ok(if x.track_op() {
        candle_nn::ops::softmax(x, D::Minus1)?
    } else {
        candle_nn::ops::softmax_last_dim(x)?
    })
}

/// Rotary embedding of `x` (batch, heads, tokens, head dim) by the tables `cos`, `sin`.
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    Ok(
        if x.track_op() && x.dtype() == DType::F32 && cos.dtype() == DType::F32 {
            crate::train::step_ops::rope(x, cos, sin)?
        } else if x.track_op() {
            candle_nn::rotary_emb::rope_slow(x, cos, sin)?
        } else {
            candle_nn::rotary_emb::rope(x, cos, sin)?
        },
    )
}
