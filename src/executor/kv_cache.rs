//! The keys and values of the tokens seen so far, per layer, for decoding one token at a time.
//!
//! Appending by concatenation copies the whole cache at every token (quadratic in the length;
//! it was most of the time of long batched sampling), so from the second forward on the keys
//! and values live in a buffer with spare room along the sequence and each new token is written
//! into it in place. The first forward's keys and values are kept as they are: a forward with
//! an empty cache (training, scoring) copies nothing and stays differentiable.
//!
//! Caches of different lengths (prompts run one by one, then decoded side by side) stack into
//! one ragged cache: shorter rows are padded with empty slots, each row records which slots
//! hold real tokens and the position of its next token, and the decoder masks the empty slots.

use crate::error::{Error, Result};
use candle_core::{Device, Tensor};

/// One layer's keys and values, (batch, kv heads, tokens, head dim) each.
#[derive(Debug)]
enum LayerKv {
    /// Only the first forward's keys and values, as computed.
    First(Tensor, Tensor),
    /// Buffers along the sequence of which the first `len` positions hold tokens; `owned`:
    /// this cache may write past `len` (a clone shares its original's buffers, read-only).
    Buffered {
        k: Tensor,
        v: Tensor,
        len: usize,
        owned: bool,
    },
}

impl Clone for LayerKv {
    /// Shares the buffers without copying: the original only ever writes past the clone's
    /// `len`, and the clone makes buffers of its own before its first write.
    fn clone(&self) -> Self {
        match self {
            LayerKv::First(k, v) => LayerKv::First(k.clone(), v.clone()),
            LayerKv::Buffered { k, v, len, .. } => LayerKv::Buffered {
                k: k.clone(),
                v: v.clone(),
                len: *len,
                owned: false,
            },
        }
    }
}

impl LayerKv {
    /// The keys and values held, views of `len` positions.
    fn view(&self) -> Result<(Tensor, Tensor)> {
        Ok(match self {
            LayerKv::First(k, v) => (k.clone(), v.clone()),
            LayerKv::Buffered { k, v, len, .. } => (k.narrow(2, 0, *len)?, v.narrow(2, 0, *len)?),
        })
    }

    fn len(&self) -> usize {
        match self {
            LayerKv::First(k, _) => k.dims()[2],
            LayerKv::Buffered { len, .. } => *len,
        }
    }

    /// Appends `k`, `v` (contiguous) and returns the views of everything held.
    fn append(&mut self, k: &Tensor, v: &Tensor, reserve: usize) -> Result<(Tensor, Tensor)> {
        let (len, t) = (self.len(), k.dims()[2]);
        let room = match self {
            LayerKv::Buffered { k, owned: true, .. } => k.dims()[2],
            _ => 0,
        };
        if len + t > room {
            // Twice what is needed (amortized growth) unless the caller reserved enough; also
            // the first write of a clone.
            let cap = reserve.max(2 * (len + t));
            let (pk, pv) = self.view()?;
            let grow = |old: &Tensor| -> Result<Tensor> {
                let mut dims = old.dims().to_vec();
                dims[2] = cap;
                let buf = Tensor::zeros(dims, old.dtype(), old.device())?;
                buf.slice_set(&old.contiguous()?, 2, 0)?;
                Ok(buf)
            };
            *self = LayerKv::Buffered {
                k: grow(&pk)?,
                v: grow(&pv)?,
                len,
                owned: true,
            };
        }
        if let LayerKv::Buffered {
            k: bk, v: bv, len, ..
        } = self
        {
            bk.slice_set(k, 2, *len)?;
            bv.slice_set(v, 2, *len)?;
            *len += t;
        }
        self.view()
    }
}

/// Which slots of each batch row hold real tokens, for rows of different lengths.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Ragged {
    /// Per row, per slot: a real token (false: padding).
    pub(crate) real: Vec<Vec<bool>>,
    /// Per row: the position of its next token (its real tokens so far).
    pub(crate) next: Vec<usize>,
}

/// Keys and values of the tokens seen so far, per layer.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<LayerKv>>,
    pub(crate) len: usize,
    /// Positions to reserve when the buffers are first made (0: grow by doubling).
    reserve: usize,
    /// Rows of different lengths (none: every slot of every row is real).
    pub(crate) ragged: Option<Ragged>,
}

impl KvCache {
    /// An empty cache that will hold up to `tokens` positions without growing (a sampler that
    /// knows its row length avoids the doubling's spare memory and copies).
    pub fn with_capacity(tokens: usize) -> Self {
        KvCache {
            reserve: tokens,
            ..KvCache::default()
        }
    }

    /// Tokens in the cache.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing has been cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Makes room for `n` layers (a no-op once done).
    pub(crate) fn ensure_layers(&mut self, n: usize) {
        if self.layers.len() != n {
            self.layers = vec![None; n];
        }
    }

    /// Appends layer `i`'s new keys and values (batch, kv heads, t, head dim), contiguous;
    /// returns all of that layer's keys and values so far.
    pub(crate) fn append(&mut self, i: usize, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        let reserve = self.reserve;
        let slot = &mut self.layers[i];
        match slot {
            None => {
                *slot = Some(LayerKv::First(k.clone(), v.clone()));
                Ok((k, v))
            }
            Some(l) => l.append(&k, &v, reserve),
        }
    }

    /// One cache whose batch rows are the rows of `caches` in order, each padded with empty
    /// slots to the longest (a ragged cache): prompts of different lengths, each run on its
    /// own, then decoded side by side.
    pub fn stack(caches: &[KvCache]) -> Result<KvCache> {
        let len = caches.iter().map(|c| c.len).max().unwrap_or(0);
        let layers = caches.first().map_or(0, |c| c.layers.len());
        if caches.iter().any(|c| c.layers.len() != layers) {
            return Err(Error::Shape(
                "stacked caches come from models of different depths".into(),
            ));
        }
        let (mut real, mut next) = (Vec::new(), Vec::new());
        for c in caches {
            let rows = match c.layers.iter().flatten().next() {
                Some(l) => l.view()?.0.dims()[0],
                None => 1,
            };
            for i in 0..rows {
                let (mut r, n) = match &c.ragged {
                    Some(g) => (g.real[i].clone(), g.next[i]),
                    None => (vec![true; c.len], c.len),
                };
                r.resize(len, false);
                real.push(r);
                next.push(n);
            }
        }
        let mut out = Vec::with_capacity(layers);
        for i in 0..layers {
            let (mut ks, mut vs) = (Vec::new(), Vec::new());
            for c in caches {
                let Some(l) = &c.layers[i] else {
                    return Err(Error::Shape(format!("stacked cache without layer {i}")));
                };
                let (k, v) = l.view()?;
                let pad = len - l.len();
                ks.push(k.pad_with_zeros(2, 0, pad)?);
                vs.push(v.pad_with_zeros(2, 0, pad)?);
            }
            out.push(Some(LayerKv::First(
                Tensor::cat(&ks, 0)?,
                Tensor::cat(&vs, 0)?,
            )));
        }
        Ok(KvCache {
            layers: out,
            len,
            reserve: caches.first().map_or(0, |c| c.reserve),
            ragged: Some(Ragged { real, next }),
        })
    }

    /// A cache whose batch rows are rows `rows` of this one (repeats allowed), so that several
    /// continuations can follow each cached context.
    pub fn select(&self, rows: &[u32]) -> Result<KvCache> {
        let idx = Tensor::from_slice(rows, rows.len(), &Device::Cpu)?;
        let rep = |t: &Tensor| -> Result<Tensor> {
            Ok(t.contiguous()?
                .index_select(&idx.to_device(t.device())?, 0)?)
        };
        let layers = self
            .layers
            .iter()
            .map(|l| match l {
                Some(l) => {
                    let (k, v) = l.view()?;
                    Ok(Some(LayerKv::First(rep(&k)?, rep(&v)?)))
                }
                None => Ok(None),
            })
            .collect::<Result<Vec<_>>>()?;
        let ragged = self.ragged.as_ref().map(|r| Ragged {
            real: rows.iter().map(|&i| r.real[i as usize].clone()).collect(),
            next: rows.iter().map(|&i| r.next[i as usize]).collect(),
        });
        Ok(KvCache {
            layers,
            len: self.len,
            reserve: self.reserve,
            ragged,
        })
    }
}
