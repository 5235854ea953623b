//! `afm train`'s configuration: one TOML file with `[run]` (the loop), `[optim]` (AdamW and
//! its schedule) and `[analog]` (the analog training layer), every field with a default (the
//! release recipe of DESIGN §3.4) and checked with an error that names the file and field.

use super::layer::AnalogTrainConfig;
use super::optim::OptimConfig;
use crate::error::{Error, Result};
use candle_core::DType;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Loop settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Optimizer steps.
    pub steps: usize,
    /// Rows per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per step.
    pub grad_accum: usize,
    /// Tokens per row used (0: the data's row length).
    pub seq_len: usize,
    /// Tokens cropped from each row [0]: the row trains on `seq_len - crop_tokens` tokens from
    /// an offset drawn (seeded) in 0..=crop_tokens. The data's rows all start at BOS, while
    /// the evaluation's prompts and windows start mid-text without one (SmolLM2's tokenizer adds
    /// none); cropped windows mostly start without BOS, as those do.
    pub crop_tokens: usize,
    /// Distillation temperature T [1].
    pub temperature: f64,
    /// Weight of the KL to the teacher [1] (0 with ce_weight > 0 trains on the data alone).
    pub kl_weight: f64,
    /// Weight of the next-token cross-entropy added to the KL [0: only KL].
    pub ce_weight: f64,
    /// Steps between checkpoints (0: only at the end).
    pub checkpoint_every: usize,
    /// Checkpoints kept on disk.
    pub keep_checkpoints: usize,
    /// Steps between evaluable model folders `OUT/model-NNNNNNNN` (an HF folder with its
    /// `analog.json`, as `final`), all kept, so that the accuracy along a run can be measured
    /// with `afm eval --model` (0: only `final`) [0].
    pub export_every: usize,
    /// Seed of the data order and the noise streams.
    pub seed: u64,
    /// Keep lm_head digital (the release makes it analog).
    pub digital_lm_head: bool,
    /// Analog layers whose weight and bias stay the teacher's, by name ending as `afm eval
    /// --digital-layers` takes them (`lm_head`, `mlp.down_proj`, `layers.0.self_attn.q_proj`);
    /// their input ranges still learn. Each entry must name at least one layer [none].
    pub frozen: Vec<String>,
    /// Consecutive skipped (non-finite) steps after which training stops.
    pub max_bad_steps: usize,
    /// On CUDA, run f32 matrix products in TF32 on the tensor cores (PyTorch's
    /// `allow_tf32`); no effect on the CPU.
    pub tf32: bool,
    /// On CUDA, let the memory pool keep freed memory within a step, and after each step wait
    /// for the device and trim the pool back to the most memory the step had in use
    /// (`train::gpu_pool`: without the trim the pool grew ~0.5 GB a step) [true].
    pub trim_gpu_pool: bool,
    /// Wait for the device at the end of each phase of a step and log the phases' wall times
    /// (`phase_ms` in `log.jsonl`; `train::profile`); slows the step a little [false].
    pub profile: bool,
    /// On CUDA, bracket this step (1-based) with `cuProfilerStart` / `cuProfilerStop`, so that
    /// `ncu --profile-from-start off` records that one step's kernels alone
    /// (`scripts/device/kernel-profile.sh`) [0: never].
    pub cuda_profile_step: usize,
    /// Dtype of the analog layers' products and stages: "f32", or on CUDA "bf16" / "f16"
    /// (the weights are rounded from the f32 master weights at every forward; the optimizer
    /// state stays f32) [f32].
    pub analog_dtype: String,
}

/// The dtype named by `run.analog_dtype`.
pub(crate) fn analog_dtype(name: &str) -> Option<DType> {
    match name {
        "f32" => Some(DType::F32),
        "bf16" => Some(DType::BF16),
        "f16" => Some(DType::F16),
        _ => None,
    }
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            steps: 1000,
            batch_size: 8,
            grad_accum: 1,
            seq_len: 0,
            crop_tokens: 0,
            temperature: 1.0,
            kl_weight: 1.0,
            ce_weight: 0.0,
            checkpoint_every: 100,
            keep_checkpoints: 2,
            export_every: 0,
            seed: 0,
            digital_lm_head: false,
            frozen: Vec::new(),
            max_bad_steps: 10,
            tf32: true,
            trim_gpu_pool: true,
            profile: false,
            cuda_profile_step: 0,
            analog_dtype: "f32".into(),
        }
    }
}

/// Everything `afm train` is configured with (one TOML file; every section optional).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// The loop.
    pub run: RunConfig,
    /// The optimizer.
    pub optim: OptimConfig,
    /// The analog training layer.
    pub analog: AnalogTrainConfig,
}

impl TrainConfig {
    /// Reads and checks a TOML file; errors name the file and the field.
    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::paths::read_text(path)?;
        let cfg: TrainConfig = crate::paths::parse_toml(&text, path)?;
        cfg.check(path)?;
        Ok(cfg)
    }

    /// Checks every value.
    pub fn check(&self, file: &Path) -> Result<()> {
        let bad = |field: String, msg: String| Error::Config {
            file: file.to_path_buf(),
            field,
            msg,
        };
        self.analog
            .check()
            .map_err(|(f, m)| bad(format!("analog.{f}"), m))?;
        self.optim
            .check()
            .map_err(|(f, m)| bad(format!("optim.{f}"), m))?;
        let r = &self.run;
        for (f, v) in [
            ("steps", r.steps),
            ("batch_size", r.batch_size),
            ("grad_accum", r.grad_accum),
        ] {
            if v == 0 {
                return Err(bad(format!("run.{f}"), "must be >= 1".into()));
            }
        }
        if !(r.temperature.is_finite() && r.temperature > 0.0) {
            return Err(bad("run.temperature".into(), "must be > 0".into()));
        }
        for (f, v) in [("kl_weight", r.kl_weight), ("ce_weight", r.ce_weight)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(bad(format!("run.{f}"), "must be >= 0".into()));
            }
        }
        if analog_dtype(&r.analog_dtype).is_none() {
            return Err(bad(
                "run.analog_dtype".into(),
                format!("must be f32, bf16 or f16, got `{}`", r.analog_dtype),
            ));
        }
        if r.kl_weight == 0.0 && r.ce_weight == 0.0 {
            return Err(bad(
                "run.kl_weight".into(),
                "kl_weight and ce_weight are both 0".into(),
            ));
        }
        Ok(())
    }
}
