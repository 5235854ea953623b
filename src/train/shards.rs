//! Token shards: the synthetic training data on disk.
//!
//! A data folder holds `index.json` and shard files of little-endian u32 token ids, rows of
//! exactly `seq_len` tokens one after another (`train-00000.bin`, `val-00000.bin`). Shards are
//! written to a temporary name and renamed, and the index is rewritten the same way after each
//! shard, so a killed writer leaves only whole shards that the index names.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One shard file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardEntry {
    /// File name inside the data folder.
    pub file: String,
    /// Rows of `seq_len` tokens.
    pub rows: usize,
}

/// The files of one shard number: its training rows and its held-out rows (if any).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardPair {
    /// Training rows.
    pub train: ShardEntry,
    /// Held-out rows.
    pub val: Option<ShardEntry>,
}

/// How the data was made and which shards are complete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataIndex {
    /// Format version.
    pub format: u32,
    /// Teacher model.
    pub model: String,
    /// Tokens per row.
    pub seq_len: usize,
    /// Vocabulary size of the teacher (every id is below it).
    pub vocab_size: usize,
    /// Sampling temperature.
    pub temperature: f32,
    /// Top-k (0: off).
    pub top_k: usize,
    /// Sampling seed.
    pub seed: u64,
    /// Rows asked for in all.
    pub target_rows: usize,
    /// Rows per shard (a row's shard is row / rows_per_shard).
    pub rows_per_shard: usize,
    /// Every how many rows one is held out for validation.
    pub val_every: usize,
    /// Complete shards, in order.
    pub shards: Vec<ShardPair>,
}

impl DataIndex {
    /// Reads `DIR/index.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("index.json");
        let text = crate::paths::read_text(&path)?;
        Self::parse(&text, &path)
    }

    /// Parses and checks index text; `path` names it in errors. Shard files must be plain
    /// names in the data folder, and the byte size of every shard must fit in a `usize`.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let path = path.to_path_buf();
        let idx: DataIndex = serde_json::from_str(text).map_err(|e| Error::Parse {
            file: path.clone(),
            msg: e.to_string(),
        })?;
        let plain = |f: &str| !(f.is_empty() || f == "." || f == ".." || f.contains(['/', '\\']));
        let entries = idx
            .shards
            .iter()
            .flat_map(|p| std::iter::once(&p.train).chain(p.val.as_ref()));
        let mut total = Some(0usize);
        for e in entries {
            if !plain(&e.file) {
                return Err(Error::Parse {
                    file: path,
                    msg: format!("shard {:?} is not a file name in the data folder", e.file),
                });
            }
            total = total.and_then(|t| t.checked_add(e.rows));
            if e.rows
                .checked_mul(idx.seq_len)
                .and_then(|n| n.checked_mul(4))
                .is_none()
            {
                return Err(Error::Parse {
                    file: path,
                    msg: format!(
                        "shard {}: {} rows of {} tokens overflow",
                        e.file, e.rows, idx.seq_len
                    ),
                });
            }
        }
        if total.is_none() {
            return Err(Error::Parse {
                file: path,
                msg: "the shards' row counts overflow".into(),
            });
        }
        if idx.format != 1 || idx.seq_len < 2 || idx.rows_per_shard == 0 {
            return Err(Error::Parse {
                file: path,
                msg: format!(
                    "format {} / seq_len {} / rows_per_shard {}: expected format 1, seq_len >= 2, \
                     rows_per_shard >= 1",
                    idx.format, idx.seq_len, idx.rows_per_shard
                ),
            });
        }
        Ok(idx)
    }

    /// Writes `DIR/index.json` atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let text =
            serde_json::to_string_pretty(self).map_err(|e| Error::Value(format!("index: {e}")))?;
        crate::paths::write_atomic(&dir.join("index.json"), text.as_bytes())
    }

    /// Rows in complete shards (train, val).
    pub fn rows(&self) -> (usize, usize) {
        self.shards.iter().fold((0, 0), |(t, v), p| {
            (t + p.train.rows, v + p.val.as_ref().map_or(0, |b| b.rows))
        })
    }

    /// Files of one split ("train" or "val").
    pub fn files(&self, dir: &Path, val: bool) -> Vec<(PathBuf, usize)> {
        self.shards
            .iter()
            .filter_map(|p| if val { p.val.as_ref() } else { Some(&p.train) })
            .filter(|e| e.rows > 0)
            .map(|e| (dir.join(&e.file), e.rows))
            .collect()
    }
}

/// Writes rows of tokens as one shard file (atomically).
pub fn write_shard(path: &Path, rows: &[Vec<u32>]) -> Result<()> {
    let bytes: Vec<u8> = rows
        .iter()
        .flatten()
        .flat_map(|t| t.to_le_bytes())
        .collect();
    crate::paths::write_atomic(path, &bytes)
}

/// Reads every row of a split, checking sizes and ids against the index.
pub fn read_split(dir: &Path, val: bool) -> Result<Vec<Vec<u32>>> {
    let idx = DataIndex::load(dir)?;
    let mut out = Vec::new();
    for (path, rows) in idx.files(dir, val) {
        let bytes = std::fs::read(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        if bytes.len() != rows * idx.seq_len * 4 {
            return Err(Error::Parse {
                file: path,
                msg: format!(
                    "{} bytes, expected {rows} rows x {} tokens x 4",
                    bytes.len(),
                    idx.seq_len
                ),
            });
        }
        let ids: Vec<u32> = bytes
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if let Some(bad) = ids.iter().find(|&&t| t as usize >= idx.vocab_size) {
            return Err(Error::Parse {
                file: path,
                msg: format!("token id {bad} >= vocab size {}", idx.vocab_size),
            });
        }
        out.extend(ids.chunks(idx.seq_len).map(<[u32]>::to_vec));
    }
    Ok(out)
}
