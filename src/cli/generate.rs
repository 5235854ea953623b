//! `afm generate`: text generation on a digital or analog (tiled) model, streamed to stdout.

use afm::executor::decoder::KvCache;
use afm::executor::sampling::Sampling;
use afm::rng::{Effect, StreamKey};
use anyhow::bail;
use candle_core::{DType, Device, Tensor};
use clap::Args;
use std::io::Write;

/// Options of `afm generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: super::model_args::ModelArgs,
    /// The user message (wrapped in the model's chat template unless --raw).
    #[arg(long)]
    prompt: String,
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Top-k (0: off).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Top-p (1: off).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Use the prompt as it is, without the chat template.
    #[arg(long)]
    raw: bool,
}

/// Runs `afm generate`.
pub fn run(a: GenerateArgs) -> anyhow::Result<()> {
    if !(a.temperature >= 0.0 && a.top_p > 0.0 && a.top_p <= 1.0) {
        bail!("--temperature must be >= 0 and --top-p in (0, 1]");
    }
    let (m, tok) = a.model.open()?;
    let cfg = m.decoder.cfg.clone();
    let id_str = |id: Option<u32>| id.and_then(|i| tok.id_to_token(i)).unwrap_or_default();
    let text = match (&m.chat_template, a.raw) {
        (Some(t), false) => afm::executor::chat::render_user_prompt(
            t,
            &a.prompt,
            &id_str(cfg.bos_token_id),
            &id_str(cfg.eos_token_ids.first().copied()),
        )?,
        _ => a.prompt.clone(),
    };
    let enc = tok
        .encode(text.as_str(), false)
        .map_err(anyhow::Error::msg)?;
    let mut ids: Vec<u32> = enc.get_ids().to_vec();
    if ids.is_empty() {
        bail!("the prompt encodes to no tokens");
    }
    let mut eos = cfg.eos_token_ids.clone();
    if let Some(i) = tok.token_to_id("<|im_end|>") {
        eos.push(i);
    }
    let sampling = Sampling {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
    };
    let mut rng = StreamKey::new(a.model.seed, 0, 0, Effect::Data).rng(u64::MAX);
    let mut cache = KvCache::default();
    let mut input = ids.clone();
    let (mut printed, start) = (String::new(), ids.len());
    let out = std::io::stdout();
    for _ in 0..a.max_tokens {
        let x = Tensor::from_slice(&input, (1, input.len()), &Device::Cpu)?;
        let logits = m.decoder.forward(&x, &mut cache)?;
        let last = logits
            .squeeze(0)?
            .get(input.len() - 1)?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        if last.iter().any(|v| v.is_nan()) {
            bail!("the model produced NaN logits");
        }
        let next = sampling.pick(&last, &mut rng);
        if eos.contains(&next) {
            break;
        }
        ids.push(next);
        input = vec![next];
        let text = tok
            .decode(&ids[start..], true)
            .map_err(anyhow::Error::msg)?;
        if let Some(new) = text.strip_prefix(printed.as_str()) {
            let mut o = out.lock();
            write!(o, "{new}")?;
            o.flush()?;
        }
        printed = text;
    }
    println!();
    Ok(())
}
