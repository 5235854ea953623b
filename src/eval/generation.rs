//! Generation tasks scored by exact match: GSM8K (chain-of-thought, final number) and
//! MATH-500 (the last `\boxed{}` answer, normalized as lm-eval's Minerva math task does).

use crate::error::{Error, Result};
use crate::executor::decoder::{Decoder, KvCache};
use crate::executor::sampling::Sampling;
use crate::rng::Rng;
use candle_core::{DType, IndexOp, Tensor};
use tokenizers::Tokenizer;

/// Which answer format a generation item uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerStyle {
    /// A number; the model's last number (or the one after "The answer is") counts.
    Number,
    /// A LaTeX answer in `\boxed{}`.
    Boxed,
}

/// One generation item: the prompt (few-shot examples included) and the reference answer.
#[derive(Debug, Clone, PartialEq)]
pub struct GenItem {
    /// Full prompt.
    pub prompt: String,
    /// Reference final answer.
    pub answer: String,
}

/// GSM8K's reference solution as a chain-of-thought exemplar: calculator annotations
/// `<<...>>` removed and the `#### N` line turned into "The answer is N.".
pub fn gsm8k_cot(solution: &str) -> (String, String) {
    let mut text = String::new();
    let mut rest = solution;
    while let Some(a) = rest.find("<<") {
        text.push_str(&rest[..a]);
        match rest[a..].find(">>") {
            Some(b) => rest = &rest[a + b + 2..],
            None => {
                rest = "";
            }
        }
    }
    text.push_str(rest);
    let (body, ans) = match text.rsplit_once("####") {
        Some((b, a)) => (b.trim_end().to_string(), a.trim().replace(',', "")),
        None => (text.trim_end().to_string(), String::new()),
    };
    (format!("{body}\nThe answer is {ans}."), ans)
}

/// The GSM8K prompt of one question.
pub fn gsm8k_prompt(question: &str) -> String {
    format!("Question: {question}\nAnswer:")
}

/// Numbers in `text` (digits with optional sign, commas and decimals), commas removed.
fn numbers(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let chars: Vec<char> = text.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        let digit_next = chars.get(i + 1).is_some_and(|n| n.is_ascii_digit());
        if c.is_ascii_digit()
            || (c == '-' && cur.is_empty() && digit_next)
            || ((c == ',' || c == '.') && !cur.is_empty() && digit_next)
        {
            if c != ',' {
                cur.push(c);
            }
        } else if !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Canonical form of a numeric answer: "18.00" and "18" compare equal.
fn canon_number(s: &str) -> String {
    let s = s.trim().trim_end_matches('.');
    match s.parse::<f64>() {
        Ok(v) if v.fract() == 0.0 && v.abs() < 1e15 => format!("{}", v as i64),
        Ok(v) => format!("{v}"),
        Err(_) => s.to_string(),
    }
}

/// The final number of a GSM8K completion: after "The answer is" when present (strict), else
/// the last number in the text (flexible).
pub fn extract_number(completion: &str) -> Option<String> {
    let lower = completion.to_lowercase();
    if let Some(i) = lower.rfind("the answer is") {
        if let Some(n) = numbers(&completion[i..]).first() {
            return Some(canon_number(n));
        }
    }
    numbers(completion).last().map(|n| canon_number(n))
}

/// The content of the last `\boxed{...}` (or `\fbox{...}`), braces balanced.
pub fn last_boxed(text: &str) -> Option<String> {
    let start = text.rfind("\\boxed").or_else(|| text.rfind("\\fbox"))?;
    let open = start + text[start..].find('{')?;
    let mut depth = 0usize;
    for (i, c) in text[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(text[open + 1..open + i].to_string());
                }
            }
            _ => {}
        }
    }
    None
}

/// Normalizes a MATH answer like lm-eval's Minerva `normalize_final_answer`: drops `\left`,
/// `\right`, spacing commands, `$`, degree marks, `\text{}` wrappers and spaces, and rewrites
/// `\dfrac`/`\tfrac` as `\frac`.
pub fn normalize_math(answer: &str) -> String {
    let mut s = answer.to_string();
    for (from, to) in [
        ("\\left", ""),
        ("\\right", ""),
        ("\\!", ""),
        ("\\,", ""),
        ("\\;", ""),
        ("\\ ", ""),
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("^\\circ", ""),
        ("^{\\circ}", ""),
        ("\\%", ""),
        ("%", ""),
        ("$", ""),
    ] {
        s = s.replace(from, to);
    }
    while let Some(i) = s.find("\\text{") {
        let inner = last_boxed(&format!("\\boxed{}", &s[i + 5..])).unwrap_or_default();
        let end = i + 6 + inner.len() + 1;
        s = format!("{}{}{}", &s[..i], inner, s.get(end..).unwrap_or(""));
    }
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    s.trim_end_matches('.').to_string()
}

/// The final answer of a completion in canonical form (none when it gives no answer).
pub fn final_answer(style: AnswerStyle, completion: &str) -> Option<String> {
    match style {
        AnswerStyle::Number => extract_number(completion),
        AnswerStyle::Boxed => last_boxed(completion).map(|a| normalize_math(&a)),
    }
}

/// A reference answer in the canonical form of [`final_answer`].
pub fn reference_answer(style: AnswerStyle, answer: &str) -> String {
    match style {
        AnswerStyle::Number => canon_number(answer),
        AnswerStyle::Boxed => normalize_math(answer),
    }
}

/// Whether a completion's answer matches the reference.
pub fn is_correct(style: AnswerStyle, completion: &str, answer: &str) -> bool {
    final_answer(style, completion) == Some(reference_answer(style, answer))
}

/// Majority vote over sampled answers: the most frequent one, a tie going to the answer that
/// came first; samples without an answer do not vote (none when no sample has one).
pub fn majority(answers: &[Option<String>]) -> Option<&str> {
    let mut best: Option<(&str, usize)> = None;
    for a in answers.iter().flatten() {
        let n = answers.iter().flatten().filter(|b| *b == a).count();
        if best.is_none_or(|(_, m)| n > m) {
            best = Some((a, n));
        }
    }
    best.map(|(a, _)| a)
}

/// Generates up to `max_new` tokens after `prompt` (greedy unless `sampling` says otherwise),
/// stopping at an end-of-sequence token or at the first of `stops` in the new text, which is
/// cut there.
pub fn generate(
    model: &Decoder,
    tok: &Tokenizer,
    prompt: &str,
    max_new: usize,
    stops: &[&str],
    sampling: Sampling,
    rng: &mut Rng,
) -> Result<String> {
    let rngs = std::slice::from_mut(rng);
    let mut out = generate_batch(model, tok, prompt, max_new, stops, sampling, rngs)?;
    Ok(out.pop().unwrap_or_default())
}

/// `rngs.len()` sampled completions of one prompt decoded side by side (test-time compute):
/// the prompt is run once and its cache repeated per row; row k draws from `rngs[k]` and ends
/// on its own (end of sequence, a stop string, or `max_new` tokens), after which the batch
/// shrinks to the rows still going. Same cut rules as [`generate`].
pub fn generate_batch(
    model: &Decoder,
    tok: &Tokenizer,
    prompt: &str,
    max_new: usize,
    stops: &[&str],
    sampling: Sampling,
    rngs: &mut [Rng],
) -> Result<Vec<String>> {
    let ids = encode(tok, prompt)?;
    let spec = Decode {
        max_new,
        stops,
        sampling,
    };
    generate_prompts(model, tok, &[ids], None, &spec, rngs)
}

/// How completions are decoded: at most `max_new` tokens, cut at the first of `stops`, drawn
/// under `sampling`.
#[derive(Debug, Clone, Copy)]
pub struct Decode<'a> {
    /// New tokens per completion at most.
    pub max_new: usize,
    /// Stop strings: a completion ends before the first one it contains.
    pub stops: &'a [&'a str],
    /// Greedy or sampled.
    pub sampling: Sampling,
}

/// The token ids of `prompt` (an error when it has none).
pub fn encode(tok: &Tokenizer, prompt: &str) -> Result<Vec<u32>> {
    let ids = tok
        .encode(prompt, false)
        .map_err(|e| Error::Value(format!("tokenizer: {e}")))?
        .get_ids()
        .to_vec();
    if ids.is_empty() {
        return Err(Error::Value("the prompt encodes to no tokens".into()));
    }
    Ok(ids)
}

/// Shortest common prompt prefix worth running once for all prompts, in tokens.
pub const MIN_SHARED_PREFIX: usize = 16;

/// The tokens that every prompt of a task starts with (its few-shot examples), run once: each
/// batch of prompts continues a copy of this cache instead of running them again.
#[derive(Debug, Clone)]
pub struct SharedPrefix {
    ids: Vec<u32>,
    cache: KvCache,
}

impl SharedPrefix {
    /// The longest common token prefix of `prompts`, leaving each at least one token of its
    /// own (none when that is shorter than [`MIN_SHARED_PREFIX`]).
    pub fn new(model: &Decoder, prompts: &[Vec<u32>]) -> Result<Option<Self>> {
        let Some(first) = prompts.first() else {
            return Ok(None);
        };
        let mut n = first.len().saturating_sub(1);
        for p in &prompts[1..] {
            n = n.min(p.len().saturating_sub(1));
            n = first[..n].iter().zip(p).take_while(|(a, b)| a == b).count();
        }
        // A short prefix saves less than its own forward and cache copies cost.
        if n < MIN_SHARED_PREFIX {
            return Ok(None);
        }
        let mut cache = KvCache::default();
        let x = Tensor::from_slice(&first[..n], (1, n), model.device())?;
        model.forward_hidden(&x, &mut cache)?;
        Ok(Some(SharedPrefix {
            ids: first[..n].to_vec(),
            cache,
        }))
    }

    /// Tokens in the prefix.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the prefix has no tokens (never, as built).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Completions of several prompts decoded side by side, `rngs.len() / prompts.len()` samples
/// each (row `p * samples + k` is sample k of prompt p and draws from `rngs` at that index).
/// The prompts run as one ragged batch after `prefix` where they all start with it (else from
/// scratch); rows end on their own as in [`generate_batch`].
pub fn generate_prompts(
    model: &Decoder,
    tok: &Tokenizer,
    prompts: &[Vec<u32>],
    prefix: Option<&SharedPrefix>,
    spec: &Decode,
    rngs: &mut [Rng],
) -> Result<Vec<String>> {
    let np = prompts.len();
    if np == 0 || rngs.len() % np != 0 || prompts.iter().any(Vec::is_empty) {
        return Err(Error::Value(format!(
            "{} prompts (none empty) and {} sample streams, a multiple of them, expected",
            np,
            rngs.len()
        )));
    }
    let (rows, n) = (rngs.len(), rngs.len() / np);
    let eos = &model.cfg.eos_token_ids;
    let mut texts = vec![String::new(); rows];
    let mut new: Vec<Vec<u32>> = vec![Vec::new(); rows];
    if n == 0 || spec.max_new == 0 {
        return Ok(texts);
    }
    let prefix = prefix.filter(|p| {
        prompts
            .iter()
            .all(|q| q.len() > p.len() && q.starts_with(&p.ids))
    });
    let skip = prefix.map_or(0, SharedPrefix::len);
    // Each prompt runs on its own (a prefill needs no batch to fill the machine, and padding
    // would only add work), then the caches stack into one ragged batch for decoding.
    let (mut caches, mut first) = (Vec::with_capacity(np), Vec::with_capacity(np));
    for q in prompts {
        let mut cache = prefix.map_or_else(KvCache::default, |p| p.cache.clone());
        let own = &q[skip..];
        let x = Tensor::from_slice(own, (1, own.len()), model.device())?;
        let h = model.forward_hidden(&x, &mut cache)?;
        let h = h.i((0, own.len() - 1))?.unsqueeze(0)?;
        first.push(
            model
                .logits(&h)?
                .to_dtype(DType::F32)?
                .to_vec2::<f32>()?
                .remove(0),
        );
        caches.push(cache);
    }
    let mut cache = match caches.len() {
        1 => caches.remove(0),
        _ => KvCache::stack(&caches)?,
    };
    drop(caches);
    let mut logits: Vec<Vec<f32>> = (0..rows).map(|r| first[r / n].clone()).collect();
    // Rows still decoding, in the order of the cache's batch rows.
    let mut active: Vec<usize> = (0..rows).collect();
    if n > 1 {
        let rep: Vec<u32> = (0..rows).map(|r| (r / n) as u32).collect();
        cache = cache.select(&rep)?;
    }
    for step in 0..spec.max_new {
        let mut keep = Vec::with_capacity(active.len());
        let mut next = Vec::with_capacity(active.len());
        for (slot, &r) in active.iter().enumerate() {
            let row = &logits[slot];
            if row.iter().any(|v| v.is_nan()) {
                return Err(Error::Value("the model produced NaN logits".into()));
            }
            let t = spec.sampling.pick(row, &mut rngs[r]);
            if eos.contains(&t) {
                continue;
            }
            new[r].push(t);
            texts[r] = tok
                .decode(&new[r], true)
                .map_err(|e| Error::Value(format!("tokenizer: {e}")))?;
            if let Some(cut) = spec.stops.iter().filter_map(|s| texts[r].find(s)).min() {
                texts[r].truncate(cut);
                continue;
            }
            keep.push(slot as u32);
            next.push(t);
        }
        if next.is_empty() || step + 1 == spec.max_new {
            break;
        }
        if keep.len() < active.len() {
            cache = cache.select(&keep)?;
            active = keep.iter().map(|&s| active[s as usize]).collect();
        }
        let x = Tensor::from_slice(&next, (next.len(), 1), model.device())?;
        let h = model.forward_hidden(&x, &mut cache)?;
        logits = model
            .logits(&h.squeeze(1)?)?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
    }
    Ok(texts)
}
