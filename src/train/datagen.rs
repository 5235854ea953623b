//! Synthetic training data sampled from the teacher (DESIGN §3.4): every row starts at BOS and
//! continues for exactly `seq_len` tokens, end-of-sequence tokens ignored (they are sampled and
//! kept like any other token), in batches that share one KV cache.
//!
//! Row `r` draws from its own seeded stream, so the data do not depend on the batch size or on
//! where a killed run resumed; every `val_every`-th row is held out.

use super::shards::{write_shard, DataIndex, ShardEntry, ShardPair};
use crate::error::{Error, Result};
use crate::executor::decoder::{Decoder, KvCache};
use crate::executor::sampling::{pick_on_device, Sampling};
use crate::rng::{Effect, StreamKey};
use candle_core::{DType, IndexOp, Tensor};
use rayon::prelude::*;
use std::path::Path;

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct DatagenConfig {
    /// Teacher name (recorded in the index).
    pub model: String,
    /// Tokens per row (BOS included).
    pub seq_len: usize,
    /// Rows in all (train + held out).
    pub rows: usize,
    /// Sampling temperature (> 0).
    pub temperature: f32,
    /// Top-k (0: off).
    pub top_k: usize,
    /// Seed of the row streams.
    pub seed: u64,
    /// Rows generated together.
    pub batch: usize,
    /// Rows per shard file.
    pub rows_per_shard: usize,
    /// One row in this many is held out (100: 1%).
    pub val_every: usize,
}

/// Samples rows `first..first + n` (one batch) from the teacher.
pub fn sample_rows(
    model: &Decoder,
    cfg: &DatagenConfig,
    first: usize,
    n: usize,
) -> Result<Vec<Vec<u32>>> {
    let bos = model.cfg.bos_token_id.ok_or_else(|| {
        Error::Value("the teacher's config has no bos_token_id to start rows from".into())
    })?;
    let sampling = Sampling {
        temperature: cfg.temperature,
        top_k: cfg.top_k,
        top_p: 1.0,
    };
    let key = StreamKey::new(cfg.seed, 0, 0, Effect::Data);
    let mut rngs: Vec<_> = (first..first + n).map(|r| key.rng(r as u64)).collect();
    let mut rows: Vec<Vec<u32>> = vec![vec![bos]; n];
    let mut cache = KvCache::with_capacity(cfg.seq_len);
    let dev = model.device().clone();
    if !dev.is_cpu() {
        // The device's generator, seeded per batch so that a resumed run redraws the same rows
        // on the same GPU (bit-identity across GPUs is not promised).
        dev.set_seed(cfg.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ first as u64)?;
    }
    while rows[0].len() < cfg.seq_len {
        let step: Vec<u32> = if cache.is_empty() {
            rows.iter().map(|r| r[0]).collect()
        } else {
            rows.iter().map(|r| r[r.len() - 1]).collect()
        };
        let x = Tensor::from_vec(step, (n, 1), &dev)?;
        let h = model.forward_hidden(&x, &mut cache)?;
        let logits = model.logits(&h.i((.., 0))?)?;
        if !dev.is_cpu() {
            // On a GPU: sample there, copy back only the tokens.
            let (tok, nan_rows) = pick_on_device(&logits, &sampling)?;
            if nan_rows.to_scalar::<f32>()? > 0.0 {
                return Err(Error::Value("the teacher produced NaN logits".into()));
            }
            for (row, t) in rows.iter_mut().zip(tok.to_vec1::<u32>()?) {
                row.push(t);
            }
            continue;
        }
        let logits = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        // Rows sample in parallel: each has its own stream, so the result does not depend on
        // the thread count.
        let picks: Vec<Option<u32>> = logits
            .par_iter()
            .zip(rngs.par_iter_mut())
            .map(|(l, rng)| (!l.iter().any(|v| v.is_nan())).then(|| sampling.pick(l, rng)))
            .collect();
        for (row, p) in rows.iter_mut().zip(picks) {
            row.push(p.ok_or_else(|| Error::Value("the teacher produced NaN logits".into()))?);
        }
    }
    Ok(rows)
}

fn check_resume(old: &DataIndex, cfg: &DatagenConfig, vocab: usize, dir: &Path) -> Result<()> {
    let same = old.model == cfg.model
        && old.seq_len == cfg.seq_len
        && old.vocab_size == vocab
        && old.temperature == cfg.temperature
        && old.top_k == cfg.top_k
        && old.seed == cfg.seed
        && old.rows_per_shard == cfg.rows_per_shard
        && old.val_every == cfg.val_every;
    if same {
        Ok(())
    } else {
        Err(Error::Value(format!(
            "{} holds data made with other settings (model {}, seq_len {}, temperature {}, top_k \
             {}, seed {}); use another --out or the same settings to resume",
            dir.display(),
            old.model,
            old.seq_len,
            old.temperature,
            old.top_k,
            old.seed
        )))
    }
}

/// Generates (or resumes) the data in `out`; `progress(tokens)` is called after each batch.
pub fn datagen(
    model: &Decoder,
    cfg: &DatagenConfig,
    out: &Path,
    progress: &mut dyn FnMut(usize),
) -> Result<DataIndex> {
    if cfg.seq_len < 2 || cfg.rows == 0 || cfg.batch == 0 || cfg.rows_per_shard == 0 {
        return Err(Error::Value(
            "datagen needs seq_len >= 2, rows >= 1, batch >= 1 and rows per shard >= 1".into(),
        ));
    }
    if !(cfg.temperature > 0.0 && cfg.temperature.is_finite()) || cfg.val_every == 0 {
        return Err(Error::Value(
            "datagen needs a temperature > 0 and val_every >= 1".into(),
        ));
    }
    std::fs::create_dir_all(out).map_err(|source| Error::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let vocab = model.cfg.vocab_size;
    let mut index = if out.join("index.json").exists() {
        let old = DataIndex::load(out)?;
        check_resume(&old, cfg, vocab, out)?;
        old
    } else {
        DataIndex {
            format: 1,
            model: cfg.model.clone(),
            seq_len: cfg.seq_len,
            vocab_size: vocab,
            temperature: cfg.temperature,
            top_k: cfg.top_k,
            seed: cfg.seed,
            target_rows: cfg.rows,
            rows_per_shard: cfg.rows_per_shard,
            val_every: cfg.val_every,
            shards: Vec::new(),
        }
    };
    index.target_rows = cfg.rows;
    let n_shards = cfg.rows.div_ceil(cfg.rows_per_shard);
    for s in index.shards.len()..n_shards {
        let start = s * cfg.rows_per_shard;
        let end = (start + cfg.rows_per_shard).min(cfg.rows);
        let mut rows = Vec::with_capacity(end - start);
        let mut r = start;
        while r < end {
            let n = cfg.batch.min(end - r);
            rows.extend(sample_rows(model, cfg, r, n)?);
            progress(n * cfg.seq_len);
            r += n;
        }
        let is_val = |r: usize| r % cfg.val_every == cfg.val_every - 1;
        let (mut train, mut val) = (Vec::new(), Vec::new());
        for (k, row) in rows.into_iter().enumerate() {
            if is_val(start + k) {
                val.push(row);
            } else {
                train.push(row);
            }
        }
        let entry = |split: &str, rows: &[Vec<u32>]| -> Result<Option<ShardEntry>> {
            if rows.is_empty() {
                return Ok(None);
            }
            let file = format!("{split}-{s:05}.bin");
            write_shard(&out.join(&file), rows)?;
            Ok(Some(ShardEntry {
                file,
                rows: rows.len(),
            }))
        };
        let t = entry("train", &train)?.unwrap_or(ShardEntry {
            file: String::new(),
            rows: 0,
        });
        let v = entry("val", &val)?;
        index.shards.push(ShardPair { train: t, val: v });
        index.save(out)?;
    }
    index.save(out)?;
    Ok(index)
}

/// Writes training data cut from existing token ids instead of sampled ones (a user's corpus):
/// rows of BOS + `seq_len - 1` consecutive tokens, every `val_every`-th row held out, one shard
/// pair. The index records `source` as the model and temperature 0.
pub fn write_text_data(
    ids: &[u32],
    bos: u32,
    seq_len: usize,
    vocab_size: usize,
    val_every: usize,
    source: &str,
    out: &Path,
) -> Result<DataIndex> {
    if seq_len < 2 || val_every == 0 {
        return Err(Error::Value(
            "text data needs seq_len >= 2 and val_every >= 1".into(),
        ));
    }
    let rows: Vec<Vec<u32>> = ids
        .chunks_exact(seq_len - 1)
        .map(|c| std::iter::once(bos).chain(c.iter().copied()).collect())
        .collect();
    if rows.is_empty() {
        return Err(Error::Value(format!(
            "{source}: fewer than {} tokens, not one row",
            seq_len - 1
        )));
    }
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (r, row) in rows.into_iter().enumerate() {
        if (r + 1) % val_every == 0 {
            val.push(row);
        } else {
            train.push(row);
        }
    }
    std::fs::create_dir_all(out).map_err(|source| Error::Io {
        path: out.to_path_buf(),
        source,
    })?;
    write_shard(&out.join("train-00000.bin"), &train)?;
    let val_entry = if val.is_empty() {
        None
    } else {
        write_shard(&out.join("val-00000.bin"), &val)?;
        Some(ShardEntry {
            file: "val-00000.bin".into(),
            rows: val.len(),
        })
    };
    let index = DataIndex {
        format: 1,
        model: source.to_string(),
        seq_len,
        vocab_size,
        temperature: 0.0,
        top_k: 0,
        seed: 0,
        target_rows: train.len() + val_entry.as_ref().map_or(0, |v| v.rows),
        rows_per_shard: train.len() + val_entry.as_ref().map_or(0, |v| v.rows),
        val_every,
        shards: vec![ShardPair {
            train: ShardEntry {
                file: "train-00000.bin".into(),
                rows: train.len(),
            },
            val: val_entry,
        }],
    };
    index.save(out)?;
    Ok(index)
}
