//! Hardware-aware distillation (DESIGN §3.4): the student (analog training layers) learns the
//! teacher's next-token distribution on the synthetic data, loss KL(teacher || student) * T^2
//! (optionally plus next-token cross-entropy), with AdamW, grad-norm clipping, gradient
//! accumulation, a NaN/Inf guard and weight clipping after every step.
//!
//! Checkpoints (variables, optimizer moments, layer run states, step) are written to a new
//! folder and then named in `latest.json` by an atomic rename, so a kill at any point resumes
//! from the last complete one; on the CPU the resumed run repeats the uninterrupted run's
//! numbers exactly, because every noise draw is keyed by (seed, layer, forward count) and the
//! data order by (seed, epoch).

use super::config::analog_dtype;
pub use super::config::{RunConfig, TrainConfig};
use super::optim::{grad_norm, AdamW};
use super::outliers::Isolate;
use super::parallel::{average, Collective, Solo};
use super::profile::StepPhases;
use super::shards::read_split;
use super::student::{
    build_student, layer_states, save_model, set_layer_states, set_training, trainable,
};
use crate::error::{Error, Result};
use crate::executor::decoder::{Decoder, KvCache};
use crate::executor::load::layer_named;
use crate::rng::{Effect, StreamKey};
use candle_core::{DType, Device, Tensor, D};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

/// One line of `log.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    /// Step (1-based).
    pub step: usize,
    /// Loss.
    pub loss: f64,
    /// KL(teacher || student) * T^2.
    pub kl: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Share of the analog inputs clipped by the input ranges.
    pub clip_frac: f64,
    /// Mean input range over all row blocks.
    pub mean_range: f64,
    /// Whether the step was skipped (non-finite loss or gradient).
    pub skipped: bool,
    /// Tokens per second of this step (wall clock, the pool trim included; not part of the
    /// reproducible numbers).
    pub tokens_per_s: f64,
    /// With `[run] profile`, each phase's wall time in ms (`train::profile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_ms: Option<BTreeMap<String, f64>>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CheckpointState {
    step: usize,
    bad_steps: usize,
    config: TrainConfig,
    layers: std::collections::BTreeMap<String, super::layer::LayerState>,
}

/// Rows of one micro-batch: a seeded permutation per epoch over the training rows.
fn batch_rows(n_rows: usize, seed: u64, first: usize, count: usize) -> Vec<usize> {
    let mut perm_epoch = usize::MAX;
    let mut perm: Vec<usize> = Vec::new();
    (first..first + count)
        .map(|g| {
            let (epoch, pos) = (g / n_rows, g % n_rows);
            if epoch != perm_epoch {
                perm = (0..n_rows).collect();
                let mut rng = StreamKey::new(seed, 0, 1, Effect::Data).rng(epoch as u64);
                for i in (1..n_rows).rev() {
                    let j = (rng.next_u64() % (i as u64 + 1)) as usize;
                    perm.swap(i, j);
                }
                perm_epoch = epoch;
            }
            perm[pos]
        })
        .collect()
}

/// The trainable variables less the weights and biases of the layers named by `run.frozen`
/// (name endings); an entry that names no layer is an error.
fn without_frozen(
    vars: std::collections::BTreeMap<String, candle_core::Var>,
    frozen: &[String],
) -> Result<std::collections::BTreeMap<String, candle_core::Var>> {
    fn layer_of(n: &str) -> Option<&str> {
        [".weight", ".bias"]
            .iter()
            .find_map(|suffix| n.strip_suffix(suffix))
    }
    for f in frozen {
        if !vars
            .keys()
            .filter_map(|n| layer_of(n))
            .any(|l| l.ends_with(f.as_str()))
        {
            return Err(Error::Value(format!(
                "run.frozen: `{f}` names no analog layer of the student"
            )));
        }
    }
    Ok(vars
        .into_iter()
        .filter(|(n, _)| layer_of(n).is_none_or(|l| !layer_named(l, frozen)))
        .collect())
}

/// The tokens of the rows `idx` of a batch whose first row is the run's global row `first`:
/// `len` tokens of each from a seeded offset in 0..=`crop` (`run.crop_tokens`), the same on
/// every rank and on a resume.
fn batch_tokens(
    rows: &[Vec<u32>],
    idx: &[usize],
    first: usize,
    seed: u64,
    len: usize,
    crop: usize,
) -> Vec<u32> {
    let key = StreamKey::new(seed, 0, 2, Effect::Data);
    idx.iter()
        .enumerate()
        .flat_map(|(j, &r)| {
            let offset = match crop {
                0 => 0,
                _ => (key.rng((first + j) as u64).next_u64() % (crop as u64 + 1)) as usize,
            };
            &rows[r][offset..offset + len]
        })
        .copied()
        .collect()
}

/// KL(teacher || student) * T^2 averaged over positions, and the next-token cross-entropy.
pub fn distill_loss(
    teacher_logits: &Tensor,
    student_logits: &Tensor,
    ids: &Tensor,
    temperature: f64,
) -> Result<(Tensor, Tensor)> {
    Ok((
        distill_kl(teacher_logits, student_logits, temperature)?,
        next_token_ce(student_logits, ids)?,
    ))
}

/// KL(teacher || student) * T^2 averaged over positions, one fused op per row
/// (`train::step_ops::kl_rows`); the teacher's logits get no gradient.
pub fn distill_kl(
    teacher_logits: &Tensor,
    student_logits: &Tensor,
    temperature: f64,
) -> Result<Tensor> {
    let v = student_logits.dim(D::Minus1)?;
    let s = student_logits.to_dtype(DType::F32)?.reshape(((), v))?;
    let t = teacher_logits.to_dtype(DType::F32)?.reshape(((), v))?;
    let kl = super::step_ops::kl_rows(&t, &s, temperature)?.mean_all()?;
    Ok((kl * (temperature * temperature))?)
}

/// The mean next-token cross-entropy of logits (batch, tokens, vocab) on `ids` (batch, tokens).
pub fn next_token_ce(student_logits: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let v = student_logits.dim(D::Minus1)?;
    let s = student_logits.to_dtype(DType::F32)?.reshape(((), v))?;
    let (b, l) = ids.dims2()?;
    Ok(if l > 1 {
        let lp = candle_nn::ops::log_softmax(&s, D::Minus1)?.reshape((b, l, v))?;
        let next = ids.narrow(1, 1, l - 1)?.unsqueeze(2)?;
        let picked = lp
            .narrow(1, 0, l - 1)?
            .contiguous()?
            .gather(&next.contiguous()?, 2)?;
        picked.mean_all()?.neg()?
    } else {
        Tensor::zeros((), DType::F32, s.device())?
    })
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The latest complete checkpoint folder of a run, if any.
pub fn latest_checkpoint(out: &Path) -> Result<Option<PathBuf>> {
    let p = out.join("latest.json");
    if !p.exists() {
        return Ok(None);
    }
    let v: serde_json::Value =
        serde_json::from_str(&crate::paths::read_text(&p)?).map_err(|e| Error::Parse {
            file: p.clone(),
            msg: e.to_string(),
        })?;
    let dir = v["dir"].as_str().ok_or_else(|| Error::Parse {
        file: p.clone(),
        msg: "missing `dir`".into(),
    })?;
    Ok(Some(out.join(dir)))
}

/// Trains (or resumes) into `out`; `progress(step, line)` is called after every step. Returns
/// the student after the last step (also saved to `out/final`).
pub fn train(
    teacher: &Decoder,
    tokenizer: Option<&tokenizers::Tokenizer>,
    data: &Path,
    out: &Path,
    cfg: &TrainConfig,
    resume: bool,
    progress: &mut dyn FnMut(&LogLine),
) -> Result<Decoder> {
    train_rank(teacher, tokenizer, data, out, cfg, resume, progress, &Solo)
}

/// [`train`] as one rank of a data-parallel group: this rank takes its contiguous share of
/// every micro-batch (`run.batch_size` is the global batch and must divide by the ranks),
/// gradients and the logged loss are averaged over the group before each step, and the input
/// ranges are averaged after every step of their data initialization window (through its
/// end), so every rank holds the same model after every step. Only rank 0 writes the log,
/// checkpoints and final model; every rank resumes from the same checkpoint.
#[allow(clippy::too_many_arguments)]
pub fn train_rank(
    teacher: &Decoder,
    tokenizer: Option<&tokenizers::Tokenizer>,
    data: &Path,
    out: &Path,
    cfg: &TrainConfig,
    resume: bool,
    progress: &mut dyn FnMut(&LogLine),
    group: &dyn Collective,
) -> Result<Decoder> {
    cfg.check(Path::new("(train config)"))?;
    let (rank, world) = (group.rank(), group.world());
    if cfg.run.batch_size % world != 0 {
        return Err(Error::Value(format!(
            "run.batch_size = {} does not divide over {world} data-parallel ranks",
            cfg.run.batch_size
        )));
    }
    let share = cfg.run.batch_size / world;
    let lead = rank == 0;
    let rows = read_split(data, false)?;
    if rows.is_empty() {
        return Err(Error::Value(format!(
            "{}: no training rows",
            data.display()
        )));
    }
    let data_len = rows[0].len();
    let rows_len = if cfg.run.seq_len == 0 {
        data_len
    } else {
        cfg.run.seq_len.min(data_len)
    };
    let crop = cfg.run.crop_tokens;
    if crop + 2 > rows_len {
        return Err(Error::Value(format!(
            "run.crop_tokens = {crop} leaves fewer than 2 of the {rows_len} tokens per row"
        )));
    }
    let seq = rows_len - crop;
    if rows
        .iter()
        .flatten()
        .any(|&t| t as usize >= teacher.cfg.vocab_size)
    {
        return Err(Error::Value(format!(
            "{}: token ids beyond the teacher's vocabulary of {}",
            data.display(),
            teacher.cfg.vocab_size
        )));
    }
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    let compute = analog_dtype(&cfg.run.analog_dtype).unwrap_or(DType::F32);
    if compute != DType::F32 && teacher.device().is_cpu() {
        return Err(Error::Value(format!(
            "run.analog_dtype = \"{}\" needs a CUDA device; the CPU trains in f32",
            cfg.run.analog_dtype
        )));
    }
    // Smoothing and outlier statistics come from the first global batches, the same on every
    // rank and on a resume, so a resumed run rebuilds the same model (it is not checkpointed).
    let a = &cfg.analog;
    let stats_batches = || {
        let bs = cfg.run.batch_size;
        (0..a.smooth_batches)
            .map(|i| {
                let idx = batch_rows(rows.len(), cfg.run.seed, i * bs, bs);
                let flat = batch_tokens(&rows, &idx, i * bs, cfg.run.seed, seq, crop);
                Tensor::from_vec(flat, (bs, seq), teacher.device())
            })
            .collect::<candle_core::Result<Vec<_>>>()
    };
    let mut smoothed = None;
    if a.rotate {
        smoothed = Some(super::rotate::rotate(teacher, cfg.run.seed)?);
    }
    if a.smooth_alpha > 0.0 {
        let base = smoothed.as_ref().unwrap_or(teacher);
        let stats = super::smooth::input_abs_max(base, &stats_batches()?)?;
        smoothed = Some(super::smooth::smooth(
            base,
            &stats,
            a.smooth_alpha,
            !cfg.run.digital_lm_head,
        )?);
    }
    if a.isolate_outliers > 0 || a.isolate_residual > 0 {
        let base = smoothed.as_ref().unwrap_or(teacher);
        let stats = super::smooth::input_stats(base, &stats_batches()?)?;
        let mlp = (a.isolate_outliers > 0)
            .then(|| Isolate::new(a.isolate_outliers, a.isolate_auto, a.range_init_kappa));
        let iso = super::outliers::isolate_outliers(base, &stats, a.isolate_residual, mlp)?;
        smoothed = Some(iso);
    }
    let student = build_student(
        smoothed.as_ref().unwrap_or(teacher),
        &cfg.analog,
        cfg.run.seed,
        cfg.run.digital_lm_head,
        compute,
    )?;
    drop(smoothed);
    let vars = without_frozen(trainable(&student), &cfg.run.frozen)?;
    let (mut step, mut bad, mut opt) = (0usize, 0usize, AdamW::default());
    match (latest_checkpoint(out)?, resume) {
        (Some(dir), true) => {
            let st: CheckpointState = serde_json::from_str(&crate::paths::read_text(
                &dir.join("state.json"),
            )?)
            .map_err(|e| Error::Parse {
                file: dir.join("state.json"),
                msg: e.to_string(),
            })?;
            if st.config != *cfg {
                return Err(Error::Value(format!(
                    "{}: the checkpoint was made with another configuration",
                    dir.display()
                )));
            }
            let dev = teacher.device();
            let w = candle_core::safetensors::load(dir.join("weights.safetensors"), dev)?;
            for (name, var) in &vars {
                let t = w.get(name).ok_or_else(|| {
                    Error::Value(format!("checkpoint {} lacks `{name}`", dir.display()))
                })?;
                var.set(t)?;
            }
            let o = candle_core::safetensors::load(dir.join("optim.safetensors"), dev)?;
            opt = AdamW::from_tensors(st.step as u64, o)?;
            set_layer_states(&student, &st.layers)?;
            (step, bad) = (st.step, st.bad_steps);
            if lead {
                truncate_log(&out.join("log.jsonl"), step)?;
            }
        }
        (Some(_), false) => {
            return Err(Error::Value(format!(
                "{} holds a training run; pass --resume to continue it or use another --out",
                out.display()
            )))
        }
        (None, _) => {
            if lead {
                let _ = std::fs::remove_file(out.join("log.jsonl"));
            }
        }
    }
    let dev = teacher.device().clone();
    #[cfg(feature = "cuda")]
    if dev.is_cuda() {
        candle_core::cuda_backend::set_gemm_reduced_precision_f32(cfg.run.tf32);
    }
    if cfg.run.trim_gpu_pool {
        // Freed memory stays in the pool within a step; the trim after it bounds what stays.
        super::gpu_pool::retain(&dev, u64::MAX)?;
    }
    let tokens_per_step = cfg.run.batch_size * cfg.run.grad_accum * seq;
    while step < cfg.run.steps {
        let t0 = std::time::Instant::now();
        let profiled = cfg.run.cuda_profile_step == step + 1;
        if profiled {
            super::profile::cuda_profiler(&dev, true)?;
        }
        let mut phases = StepPhases::new(&dev, cfg.run.profile);
        set_training(&student, true)?;
        // Per analog layer, whether its ranges initialize in this step (only ranks need it).
        let initializing = if world > 1 {
            super::student::train_layers(&student)
                .iter()
                .map(|(_, l)| l.initializing())
                .collect::<Result<Vec<_>>>()?
        } else {
            Vec::new()
        };
        let mut sums: HashMap<String, Tensor> = HashMap::new();
        let (mut loss_sum, mut kl_sum) = (0f64, 0f64);
        for micro in 0..cfg.run.grad_accum {
            let first = (step * cfg.run.grad_accum + micro) * cfg.run.batch_size;
            let idx = batch_rows(rows.len(), cfg.run.seed, first, cfg.run.batch_size);
            let mine = &idx[rank * share..(rank + 1) * share];
            let flat = batch_tokens(&rows, mine, first + rank * share, cfg.run.seed, seq, crop);
            let ids = Tensor::from_vec(flat, (share, seq), &dev)?;
            phases.mark("data")?;
            let s_logits = student.forward(&ids, &mut KvCache::default())?;
            phases.mark("student_forward")?;
            let t_logits = if cfg.run.kl_weight > 0.0 {
                teacher.forward_frozen(&ids)?.detach()
            } else {
                s_logits.detach()
            };
            phases.mark("teacher_forward")?;
            let kl = distill_kl(&t_logits, &s_logits, cfg.run.temperature)?;
            let mut loss = (&kl * cfg.run.kl_weight)?;
            if cfg.run.ce_weight > 0.0 {
                loss = (loss + (next_token_ce(&s_logits, &ids)? * cfg.run.ce_weight)?)?;
            }
            let loss = (loss / cfg.run.grad_accum as f64)?;
            loss_sum += f64::from(loss.to_scalar::<f32>()?);
            kl_sum += f64::from(kl.to_scalar::<f32>()?) / cfg.run.grad_accum as f64;
            phases.mark("loss")?;
            let grads = loss.backward()?;
            phases.mark("backward")?;
            for (name, var) in &vars {
                if let Some(g) = grads.get(var.as_tensor()) {
                    let g = g.to_dtype(DType::F32)?;
                    let acc = match sums.remove(name) {
                        Some(a) => (a + g)?,
                        None => g,
                    };
                    sums.insert(name.clone(), acc);
                }
            }
            phases.mark("accumulate")?;
            // Freeing the step's graph (thousands of device buffers) is host work of its own.
            drop((grads, loss, kl, s_logits, t_logits));
            phases.mark("release")?;
        }
        if world > 1 {
            (loss_sum, kl_sum) = average_step(group, &mut sums, loss_sum, kl_sum, &dev)?;
            average_initializing_ranges(group, &student, &initializing)?;
            phases.mark("all_reduce")?;
        }
        let norm = grad_norm(&sums)?;
        phases.mark("grad_norm")?;
        let lr = cfg.optim.lr_at(step, cfg.run.steps);
        let skipped = !loss_sum.is_finite() || !norm.is_finite();
        if skipped {
            bad += 1;
        } else {
            bad = 0;
            let scale = if cfg.optim.grad_clip > 0.0 && norm > cfg.optim.grad_clip {
                cfg.optim.grad_clip / norm
            } else {
                1.0
            };
            opt.step(&cfg.optim, &vars, &sums, (lr, scale))?;
            phases.mark("optimizer")?;
            let alpha = cfg.analog.clip_alpha_at(step + 1);
            for (name, l) in super::student::train_layers(&student) {
                if !layer_named(&name, &cfg.run.frozen) {
                    l.clip_weights(alpha)?;
                }
            }
            phases.mark("clip_weights")?;
        }
        step += 1;
        // One read-back for the whole model: the clip counts and ranges summed on the device.
        let (mut clipped, mut inputs, mut ranges) = (None::<Tensor>, 0usize, Vec::new());
        for (_, l) in super::student::train_layers(&student) {
            if let Some((c, n)) = l.take_clip_stats()? {
                clipped = Some(match clipped {
                    Some(a) => (a + c)?,
                    None => c,
                });
                inputs += n;
            }
            ranges.push(l.ranges.as_tensor().clone());
        }
        let clipped = match clipped {
            Some(c) => f64::from(c.to_scalar::<f32>()?),
            None => 0.0,
        };
        let mean_range = if ranges.is_empty() {
            0.0
        } else {
            f64::from(Tensor::cat(&ranges, 0)?.mean_all()?.to_scalar::<f32>()?)
        };
        phases.mark("stats")?;
        if cfg.run.trim_gpu_pool {
            super::gpu_pool::trim(&dev)?;
        }
        phases.mark("trim")?;
        if profiled {
            super::profile::cuda_profiler(&dev, false)?;
        }
        let line = LogLine {
            step,
            loss: loss_sum,
            kl: kl_sum,
            lr,
            grad_norm: norm,
            clip_frac: clipped / inputs.max(1) as f64,
            mean_range,
            skipped,
            tokens_per_s: tokens_per_step as f64 / t0.elapsed().as_secs_f64(),
            phase_ms: phases.finish(),
        };
        if lead {
            append_log(&out.join("log.jsonl"), &line)?;
            progress(&line);
        }
        if skipped && bad >= cfg.run.max_bad_steps.max(1) {
            // Stopped after the step is logged, so the log shows every skipped step.
            return Err(Error::Value(format!(
                "training stopped: {bad} consecutive steps with a non-finite loss or gradient \
                 (last at step {step}); lower optim.lr or check the data"
            )));
        }
        let every = cfg.run.checkpoint_every;
        if lead && (step == cfg.run.steps || (every > 0 && step % every == 0)) {
            save_checkpoint(out, &student, &opt, step, bad, cfg)?;
        }
        let export = cfg.run.export_every;
        if lead && export > 0 && step % export == 0 {
            let dir = out.join(format!("model-{step:08}"));
            save_model(&student, &cfg.analog, tokenizer, &dir)?;
        }
    }
    set_training(&student, false)?;
    if lead {
        save_model(&student, &cfg.analog, tokenizer, &out.join("final"))?;
    }
    Ok(student)
}

/// Averages the summed gradients (in name order, the same on every rank) and the step's loss
/// and KL over the group; returns the averaged (loss, KL).
fn average_step(
    group: &dyn Collective,
    sums: &mut HashMap<String, Tensor>,
    loss: f64,
    kl: f64,
    dev: &Device,
) -> Result<(f64, f64)> {
    let mut names: Vec<String> = sums.keys().cloned().collect();
    names.sort();
    let mut parts: Vec<Tensor> = names.iter().map(|n| sums[n].clone()).collect();
    parts.push(Tensor::new(&[loss as f32, kl as f32], dev)?);
    let mut mean = average(group, &parts)?;
    let lk = match mean.pop() {
        Some(t) => t.to_vec1::<f32>()?,
        None => vec![loss as f32, kl as f32],
    };
    for (n, g) in names.into_iter().zip(mean) {
        sums.insert(n, g);
    }
    Ok((f64::from(lk[0]), f64::from(lk[1])))
}

/// Averages over the group the input ranges of the layers that were in their data
/// initialization window during this step (each rank initializes from its own share of the
/// data). Doing it after every such step, not only the last, keeps every rank's model identical
/// after every step, so that rank 0's checkpoint is the whole state; the running mean of the
/// initialization is linear, so the averaged ranges are the mean of the ranks' own.
fn average_initializing_ranges(
    group: &dyn Collective,
    student: &Decoder,
    initializing: &[bool],
) -> Result<()> {
    let layers = super::student::train_layers(student);
    let live: Vec<_> = layers
        .iter()
        .zip(initializing)
        .filter(|(_, &on)| on)
        .map(|(l, _)| l.1)
        .collect();
    if live.is_empty() {
        return Ok(());
    }
    let ranges: Vec<Tensor> = live.iter().map(|l| l.ranges.as_tensor().clone()).collect();
    for (l, r) in live.iter().zip(average(group, &ranges)?) {
        l.ranges.set(&r)?;
    }
    Ok(())
}

fn append_log(path: &Path, line: &LogLine) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_err(path))?;
    let text = serde_json::to_string(line).map_err(|e| Error::Value(e.to_string()))?;
    writeln!(f, "{text}").map_err(io_err(path))
}

/// Drops log lines after `step` (written after the checkpoint a run resumes from).
fn truncate_log(path: &Path, step: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| serde_json::from_str::<LogLine>(l).is_ok_and(|x| x.step <= step))
        .map(|l| format!("{l}\n"))
        .collect();
    crate::paths::write_atomic(path, kept.as_bytes())
}

fn save_checkpoint(
    out: &Path,
    student: &Decoder,
    opt: &AdamW,
    step: usize,
    bad: usize,
    cfg: &TrainConfig,
) -> Result<()> {
    let name = format!("ckpt-{step:08}");
    let dir = out.join(&name);
    let tmp = out.join(format!("{name}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    let w: HashMap<String, Tensor> = trainable(student)
        .into_iter()
        .map(|(k, v)| (k, v.as_tensor().clone()))
        .collect();
    candle_core::safetensors::save(&w, tmp.join("weights.safetensors"))?;
    candle_core::safetensors::save(&opt.to_tensors(), tmp.join("optim.safetensors"))?;
    let st = CheckpointState {
        step,
        bad_steps: bad,
        config: cfg.clone(),
        layers: layer_states(student)?,
    };
    let text = serde_json::to_string_pretty(&st).map_err(|e| Error::Value(e.to_string()))?;
    std::fs::write(tmp.join("state.json"), text).map_err(io_err(&tmp))?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).map_err(io_err(&dir))?;
    let latest = serde_json::json!({ "step": step, "dir": name });
    crate::paths::write_atomic(&out.join("latest.json"), latest.to_string().as_bytes())?;
    // Older checkpoints beyond the kept number go.
    let mut old: Vec<PathBuf> = std::fs::read_dir(out)
        .map_err(io_err(out))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("ckpt-") && !n.ends_with(".tmp"))
        })
        .collect();
    old.sort();
    let keep = cfg.run.keep_checkpoints.max(1);
    if old.len() > keep {
        for p in &old[..old.len() - keep] {
            let _ = std::fs::remove_dir_all(p);
        }
    }
    Ok(())
}
