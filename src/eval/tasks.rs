//! Benchmark tasks: the built-in names (lm-eval prompt conventions over the files of
//! `shared/data`) and any user file, recognized by its format.
//!
//! A `.jsonl` file is read by the keys of its lines: `{query, choices, gold}` and
//! `{context_options, continuation, gold}` are multiple choice, `{context, continuation}` is
//! LAMBADA-style (greedy accuracy and perplexity of the continuation), `{question, answer}` is
//! GSM8K-style and `{problem, answer}` MATH-style generation. Any other file is a text scored
//! by perplexity. Few-shot examples come from the task's own training file when one exists
//! beside it (`NAME_train.jsonl`, or `_test`/`_val` replaced by `_train`), else none.

use super::generation::{gsm8k_cot, gsm8k_prompt, AnswerStyle, GenItem};
use super::hellaswag;
use super::multiple_choice::{load_jsonl, parse_jsonl as load_mc, BadLines, McItem};
use crate::error::{Error, Result};
use crate::rng::{Effect, StreamKey};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// A task's items, by how they are scored.
#[derive(Debug, Clone)]
pub enum TaskData {
    /// Multiple choice (acc, acc_norm).
    MultipleChoice(Vec<McItem>),
    /// (context, continuation) pairs: greedy accuracy and perplexity (LAMBADA).
    Continuation(Vec<(String, String)>),
    /// Generation scored by exact match of the final answer.
    Generation(Vec<GenItem>, AnswerStyle),
    /// A text scored by token perplexity.
    Text(String),
}

/// A loaded task.
#[derive(Debug, Clone)]
pub struct Task {
    /// Name as given (a built-in name or the file's stem).
    pub name: String,
    /// The file it was read from.
    pub path: PathBuf,
    /// The items.
    pub data: TaskData,
    /// Lines skipped as malformed.
    pub skipped: BadLines,
    /// Few-shot examples per prompt.
    pub shots: usize,
}

impl Task {
    /// Number of items (characters for a text).
    pub fn data_len(&self) -> usize {
        match &self.data {
            TaskData::MultipleChoice(v) => v.len(),
            TaskData::Continuation(v) => v.len(),
            TaskData::Generation(v, _) => v.len(),
            TaskData::Text(t) => t.len(),
        }
    }
}

/// Where the built-in tasks live and how their prompts are completed.
struct Builtin {
    name: &'static str,
    file: &'static str,
    /// Appended to `query` (lm-eval's `doc_to_text` ends in "\nAnswer:" where this is set).
    query_suffix: &'static str,
    default_shots: usize,
}

const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "hellaswag",
        file: "bench/hellaswag_val_full.txt.bz2",
        query_suffix: "",
        default_shots: 0,
    },
    Builtin {
        name: "arc_easy",
        file: "bench/arc_easy.jsonl",
        query_suffix: "\nAnswer:",
        default_shots: 0,
    },
    Builtin {
        name: "arc_challenge",
        file: "bench/arc_challenge.jsonl",
        query_suffix: "\nAnswer:",
        default_shots: 0,
    },
    Builtin {
        name: "piqa",
        file: "bench/piqa.jsonl",
        query_suffix: "\nAnswer:",
        default_shots: 0,
    },
    Builtin {
        name: "boolq",
        file: "bench/boolq.jsonl",
        query_suffix: "\nAnswer:",
        default_shots: 0,
    },
    Builtin {
        name: "winogrande",
        file: "bench/winogrande.jsonl",
        query_suffix: "",
        default_shots: 0,
    },
    Builtin {
        name: "lambada_openai",
        file: "bench/lambada_openai.jsonl",
        query_suffix: "",
        default_shots: 0,
    },
    Builtin {
        name: "gsm8k",
        file: "bench/gsm8k_test.jsonl",
        query_suffix: "",
        default_shots: 8,
    },
    Builtin {
        name: "math500",
        file: "bench/math500.jsonl",
        query_suffix: "",
        default_shots: 0,
    },
    Builtin {
        name: "wikitext2",
        file: "text/wikitext2_raw_test.txt",
        query_suffix: "",
        default_shots: 0,
    },
    Builtin {
        name: "ptb",
        file: "text/ptb_test.txt",
        query_suffix: "",
        default_shots: 0,
    },
];

/// Ends a query with the task's answer cue ("\nAnswer:" for the lm-eval QA tasks), dropping
/// trailing newlines of the source's own query first.
fn complete_query(c: &mut String, suffix: &str) {
    if !suffix.is_empty() {
        let trimmed = c.trim_end_matches('\n').len();
        c.truncate(trimmed);
        c.push_str(suffix);
    }
}

/// MATH prompt in the Minerva format lm-eval uses.
fn math_prompt(problem: &str) -> String {
    format!("Problem:\n{problem}\n\nSolution:")
}

/// A MATH few-shot target: only the final answer, boxed (the file has no short solutions).
fn math_target(answer: &str) -> String {
    format!(" The final answer is $\\boxed{{{answer}}}$.")
}

/// Names of the built-in tasks.
pub fn builtin_names() -> Vec<&'static str> {
    BUILTINS.iter().map(|b| b.name).collect()
}

/// The data folder: `$AFM_DATA`, else `../shared/data` from the working directory, else beside
/// the crate.
pub fn default_data_dir() -> PathBuf {
    if let Ok(d) = std::env::var("AFM_DATA") {
        return PathBuf::from(d);
    }
    let local = PathBuf::from("../shared/data");
    if local.exists() {
        return local;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data")
}

/// The training file beside a task file, if any.
fn train_file(path: &Path) -> Option<PathBuf> {
    let stem = path.file_stem()?.to_str()?;
    let ext = path.extension()?.to_str()?;
    let mut names = vec![format!("{stem}_train.{ext}")];
    for part in ["_test", "_val", "_validation"] {
        if let Some(base) = stem.strip_suffix(part) {
            names.push(format!("{base}_train.{ext}"));
        }
    }
    names
        .into_iter()
        .map(|n| path.with_file_name(n))
        .find(|p| p.exists() && p != path)
}

/// Chooses `k` distinct example indices of `pool` for item `item` (seeded, so every run and
/// every chip sees the same prompts).
fn shot_indices(task: &str, pool: usize, item: usize, k: usize) -> Vec<usize> {
    let k = k.min(pool);
    let mut rng =
        StreamKey::new(1234, crate::rng::name_hash(task), 0, Effect::Data).rng(item as u64);
    let mut chosen: Vec<usize> = Vec::with_capacity(k);
    while chosen.len() < k {
        let i = (rng.next_u64() % pool as u64) as usize;
        if !chosen.contains(&i) {
            chosen.push(i);
        }
    }
    chosen
}

fn json_lines(text: &str) -> (Vec<(usize, Value)>, BadLines) {
    let (mut ok, mut bad) = (Vec::new(), Vec::new());
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(v) if v.is_object() => ok.push((n + 1, v)),
            Ok(_) => bad.push((n + 1, "not a JSON object".to_string())),
            Err(e) => bad.push((n + 1, format!("not JSON: {e}"))),
        }
    }
    (ok, bad)
}

fn str_field<'a>(v: &'a Value, key: &str) -> std::result::Result<&'a str, String> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing string field `{key}`"))
}

/// Reads (question/problem, answer) generation lines.
fn generation_lines(
    text: &str,
    prompt_key: &str,
    answer_key: &str,
) -> (Vec<(String, String)>, BadLines) {
    let (lines, mut bad) = json_lines(text);
    let mut out = Vec::new();
    for (n, v) in lines {
        match (str_field(&v, prompt_key), str_field(&v, answer_key)) {
            (Ok(q), Ok(a)) => out.push((q.to_string(), a.to_string())),
            (Err(e), _) | (_, Err(e)) => bad.push((n, e)),
        }
    }
    (out, bad)
}

fn no_items(path: &Path, bad: &BadLines) -> Error {
    Error::Parse {
        file: path.to_path_buf(),
        msg: match bad.first() {
            Some((l, m)) => format!("no valid item; line {l}: {m}"),
            None => "no item".into(),
        },
    }
}

/// Parses the text of a task JSONL file: the format comes from its first JSON object line
/// (see the module documentation), every line is read, and malformed lines are returned with
/// their numbers rather than failing the task. Prompts are zero-shot without a task's answer
/// cue ([`load`] adds those); `path` names the file in errors. A file with no valid item, or
/// in no known format, is an error.
pub fn parse_jsonl(text: &str, path: &Path) -> Result<(TaskData, BadLines)> {
    let (lines, bad) = json_lines(text);
    let Some((_, v)) = lines.first() else {
        return Err(no_items(path, &bad));
    };
    let has = |k: &str| v.get(k).is_some();
    let generation = |prompt_key: &str| {
        let (items, bad) = generation_lines(text, prompt_key, "answer");
        match items.is_empty() {
            true => Err(no_items(path, &bad)),
            false => Ok((items, bad)),
        }
    };
    Ok(if has("choices") || has("context_options") {
        let (items, bad) = load_mc(text, path)?;
        (TaskData::MultipleChoice(items), bad)
    } else if has("context") && has("continuation") {
        let mut bad = bad;
        let mut items = Vec::new();
        for (n, v) in lines {
            match (str_field(&v, "context"), str_field(&v, "continuation")) {
                (Ok(c), Ok(k)) => items.push((c.to_string(), format!(" {k}"))),
                (Err(e), _) | (_, Err(e)) => bad.push((n, e)),
            }
        }
        if items.is_empty() {
            return Err(no_items(path, &bad));
        }
        (TaskData::Continuation(items), bad)
    } else if has("question") && has("answer") {
        let (qs, bad) = generation("question")?;
        let items = qs
            .iter()
            .map(|(q, a)| GenItem {
                prompt: gsm8k_prompt(q),
                answer: gsm8k_cot(a).1,
            })
            .collect();
        (TaskData::Generation(items, AnswerStyle::Number), bad)
    } else if has("problem") && has("answer") {
        let (ps, bad) = generation("problem")?;
        let items = ps
            .into_iter()
            .map(|(p, a)| GenItem {
                prompt: math_prompt(&p),
                answer: a,
            })
            .collect();
        (TaskData::Generation(items, AnswerStyle::Boxed), bad)
    } else {
        return Err(Error::Parse {
            file: path.to_path_buf(),
            msg: "unknown task format: expected {query, choices, gold}, {context_options, \
                  continuation, gold}, {context, continuation}, {question, answer} or \
                  {problem, answer}"
                .into(),
        });
    })
}

/// Loads a task by built-in name (from `data_dir`) or by path. `shots` overrides the task's
/// default number of few-shot examples; `limit` keeps the first items only.
pub fn load(
    spec: &str,
    data_dir: &Path,
    shots: Option<usize>,
    limit: Option<usize>,
) -> Result<Task> {
    let builtin = BUILTINS.iter().find(|b| b.name == spec);
    let path = match builtin {
        Some(b) => data_dir.join(b.file),
        None => PathBuf::from(spec),
    };
    if !path.exists() {
        return Err(Error::Value(format!(
            "task `{spec}`: {} does not exist (built-in tasks: {}; or give a file)",
            path.display(),
            builtin_names().join(", ")
        )));
    }
    let name = match builtin {
        Some(b) => b.name.to_string(),
        None => path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or(spec)
            .trim_end_matches(".txt")
            .to_string(),
    };
    let suffix = builtin.map_or("", |b| b.query_suffix);
    let shots = shots.unwrap_or(builtin.map_or(0, |b| b.default_shots));
    let fname = path.to_string_lossy().to_string();
    let hellaswag =
        fname.ends_with(".bz2") || fname.contains("hellaswag") && fname.ends_with(".txt");
    let train = train_file(&path);
    let take = |n: usize| limit.unwrap_or(n).min(n);
    let (data, skipped) = if hellaswag {
        let (items, bad) = hellaswag::load(&path)?;
        (TaskData::MultipleChoice(items), bad)
    } else if fname.ends_with(".jsonl") {
        parse_jsonl(&crate::paths::read_text(&path)?, &path)?
    } else {
        let bytes = std::fs::read(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        let text = String::from_utf8(bytes).map_err(|e| Error::Parse {
            file: path.clone(),
            msg: format!("a perplexity text must be UTF-8: {e}"),
        })?;
        (TaskData::Text(text), Vec::new())
    };
    let (data, shots) = match data {
        TaskData::MultipleChoice(mut items) => {
            items.truncate(take(items.len()));
            for it in &mut items {
                it.contexts
                    .iter_mut()
                    .for_each(|c| complete_query(c, suffix));
            }
            let shots = match (&train, shots) {
                (Some(t), k) if k > 0 => {
                    let (mut pool, _) = load_jsonl(t)?;
                    for ex in &mut pool {
                        ex.contexts
                            .iter_mut()
                            .for_each(|c| complete_query(c, suffix));
                    }
                    for (i, it) in items.iter_mut().enumerate() {
                        let prefix: String = shot_indices(&name, pool.len(), i, k)
                            .into_iter()
                            .map(|j| {
                                let ex = &pool[j];
                                format!("{}{}\n\n", ex.contexts[ex.gold], ex.continuations[ex.gold])
                            })
                            .collect();
                        it.contexts
                            .iter_mut()
                            .for_each(|c| *c = format!("{prefix}{c}"));
                    }
                    k
                }
                _ => 0,
            };
            (TaskData::MultipleChoice(items), shots)
        }
        TaskData::Continuation(mut items) => {
            items.truncate(take(items.len()));
            (TaskData::Continuation(items), 0)
        }
        TaskData::Generation(mut items, style) => {
            let keys = match style {
                AnswerStyle::Number => "question",
                AnswerStyle::Boxed => "problem",
            };
            let pool = match (&train, shots) {
                (Some(t), k) if k > 0 => {
                    generation_lines(&crate::paths::read_text(t)?, keys, "answer").0
                }
                _ => Vec::new(),
            };
            let shots = if pool.is_empty() { 0 } else { shots };
            items.truncate(take(items.len()));
            if items.is_empty() {
                return Err(no_items(&path, &skipped));
            }
            for (i, it) in items.iter_mut().enumerate() {
                let prefix: String = shot_indices(&name, pool.len(), i, shots)
                    .into_iter()
                    .map(|j| {
                        let (eq, ea) = &pool[j];
                        match style {
                            AnswerStyle::Number => {
                                format!("{} {}\n\n", gsm8k_prompt(eq), gsm8k_cot(ea).0)
                            }
                            AnswerStyle::Boxed => {
                                format!("{}{}\n\n", math_prompt(eq), math_target(ea))
                            }
                        }
                    })
                    .collect();
                it.prompt.insert_str(0, &prefix);
            }
            (TaskData::Generation(items, style), shots)
        }
        text @ TaskData::Text(_) => (text, 0),
    };
    Ok(Task {
        name,
        path,
        data,
        skipped,
        shots,
    })
}
