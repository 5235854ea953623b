//! The evaluation pipeline end to end on tiny-llama (with a byte-level tokenizer written here),
//! the batched log-likelihood paths against plain forwards, and the task formats.

use crate::common::{afm, afm_cmd, repo, temp_dir};
use afm::eval::generation::{extract_number, gsm8k_cot, is_correct, normalize_math, AnswerStyle};
use afm::eval::hellaswag::{capitalize_last_fragment, preprocess};
use afm::eval::loglik;
use afm::eval::tasks::{self, TaskData};
use afm::executor::decoder::KvCache;
use candle_core::{Device, Tensor, D};
use std::path::{Path, PathBuf};

/// GPT-2's byte-to-character table: printable bytes stand for themselves, the rest shift up.
fn byte_chars() -> Vec<char> {
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut next = 256;
    (0u32..256)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap()
            } else {
                next += 1;
                char::from_u32(next - 1).unwrap()
            }
        })
        .collect()
}

/// tiny-llama (vocab 256) in a folder with a byte-level BPE tokenizer without merges: one
/// token per byte.
pub fn tiny_model_with_tokenizer(dir: &Path) -> PathBuf {
    let src = repo("tests/golden/executor/tiny-llama");
    let m = dir.join("tiny-llama");
    std::fs::create_dir_all(&m).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), m.join(f)).unwrap();
    }
    let vocab: serde_json::Map<String, serde_json::Value> = byte_chars()
        .iter()
        .enumerate()
        .map(|(i, c)| (c.to_string(), serde_json::json!(i)))
        .collect();
    let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false,
        "trim_offsets": true, "use_regex": true});
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": byte_level, "post_processor": null,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
            "byte_fallback": false, "vocab": vocab, "merges": []},
    });
    std::fs::write(m.join("tokenizer.json"), tok.to_string()).unwrap();
    m
}

pub fn write_tasks(dir: &Path) -> Vec<PathBuf> {
    let mc = dir.join("qa.jsonl");
    std::fs::write(
        &mc,
        concat!(
            "{\"query\": \"Question: 1+1?\", \"choices\": [\"2\", \"three\"], \"gold\": 0}\n",
            "{\"query\": \"Question: sky?\", \"choices\": [\"blue\", \"green\", \"red\"], \"gold\": 0}\n",
            "{\"context_options\": [\"Ann beat Bo so Ann\", \"Ann beat Bo so Bo\"], \"continuation\": \"cried.\", \"gold\": 1}\n",
            "not json at all\n",
        ),
    )
    .unwrap();
    let cont = dir.join("lamb.jsonl");
    std::fs::write(
        &cont,
        "{\"context\": \"the cat sat on the\", \"continuation\": \"mat\"}\n\
         {\"context\": \"one two three\", \"continuation\": \"four\"}\n",
    )
    .unwrap();
    let text = dir.join("story.txt");
    std::fs::write(&text, "Once upon a time there was a tiny model. ".repeat(6)).unwrap();
    vec![mc, cont, text]
}

/// The `results.json` of an `afm eval --out` folder.
fn results_json(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap()
}

/// `afm eval --model MODEL --tasks TASKS ARGS.. --out OUT`, which must succeed; its results.
fn eval_ok(model: &Path, tasks: &str, args: &[&str], out: &Path) -> serde_json::Value {
    let mut all = vec!["eval", "--model", model.to_str().unwrap(), "--tasks", tasks];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--out", out.to_str().unwrap()]);
    let o = afm(&all);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    results_json(out)
}

#[test]
fn two_seed_eval_of_tiny_llama_end_to_end_and_resume() {
    let dir = temp_dir("eval-e2e");
    let model = tiny_model_with_tokenizer(&dir);
    let t = write_tasks(&dir);
    let out = dir.join("out");
    let tasks = format!("{},{},{}", t[0].display(), t[1].display(), t[2].display());
    let args = [
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--tasks",
        &tasks,
        "--tiles",
        "afm-paper-noise-only",
        "--seeds",
        "2",
        "--text-tokens",
        "200",
        "--window",
        "64",
        "--out",
        out.to_str().unwrap(),
    ];
    let first = afm(&args);
    let err = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{err}");
    assert!(err.contains("qa.jsonl:4"), "bad line reported: {err}");
    let read = || results_json(&out);
    let r = read();
    let cells = r["cells"].as_array().unwrap();
    // 3 tasks x (FP + 2 seeds).
    assert_eq!(cells.len(), 9);
    let ppl = |row: &str, seed: serde_json::Value| {
        cells
            .iter()
            .find(|c| c["task"] == "story" && c["row"] == row && c["seed"] == seed)
            .unwrap()["metrics"]["ppl"]
            .as_f64()
            .unwrap()
    };
    let (fp, s0, s1) = (
        ppl("FP (digital)", serde_json::Value::Null),
        ppl("afm-paper-noise-only", 0.into()),
        ppl("afm-paper-noise-only", 1.into()),
    );
    assert!(fp.is_finite() && s0.is_finite() && s1.is_finite());
    assert!(s0 != s1 && s0 != fp, "chips differ: fp {fp}, {s0}, {s1}");
    // The summary's mean and sample std are those of the per-seed values.
    let entry = r["summary"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["task"] == "story" && s["row"] == "afm-paper-noise-only")
        .unwrap()
        .clone();
    let mean = (s0 + s1) / 2.0;
    let std = ((s0 - mean).powi(2) + (s1 - mean).powi(2)).sqrt();
    assert!((entry["mean"].as_f64().unwrap() - mean).abs() < 1e-9);
    assert!((entry["std"].as_f64().unwrap() - std).abs() < 1e-9);
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(md.contains("| FP (digital) | 1 |") && md.contains("| afm-paper-noise-only | 2 |"));
    for c in cells {
        for (k, v) in c["metrics"].as_object().unwrap() {
            let v = v.as_f64().unwrap();
            assert!(v.is_finite(), "{k} = {v}");
            if k.starts_with("acc") {
                assert!((0.0..=1.0).contains(&v));
            }
        }
    }
    // Resume: a second run recomputes nothing (a planted marker in one cell survives) and
    // reports the same numbers.
    let cell = std::fs::read_dir(out.join("cells"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.to_string_lossy()
                .contains("story__afm-paper-noise-only__seed1")
        })
        .unwrap();
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cell).unwrap()).unwrap();
    c["seconds"] = serde_json::json!(-1.0);
    std::fs::write(&cell, c.to_string()).unwrap();
    let second = afm(&args);
    assert!(second.status.success());
    let r2 = read();
    assert_eq!(r2["summary"], r["summary"]);
    let kept = r2["cells"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["seconds"].as_f64() == Some(-1.0));
    assert!(kept, "the finished cell was recomputed");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_batch_size_does_not_change_digital_scores() {
    let dir = temp_dir("eval-batch");
    let model = tiny_model_with_tokenizer(&dir);
    let t = write_tasks(&dir);
    let tasks = format!("{},{}", t[0].display(), t[1].display());
    let run = |batch: &str| {
        let out = dir.join(format!("out{batch}"));
        eval_ok(&model, &tasks, &["--batch", batch], &out)["cells"].clone()
    };
    let (one, three) = (run("1"), run("3"));
    let cells = one.as_array().unwrap();
    assert_eq!(cells.len(), 2);
    for (a, b) in cells.iter().zip(three.as_array().unwrap()) {
        for (k, v) in a["metrics"].as_object().unwrap() {
            let (x, y) = (v.as_f64().unwrap(), b["metrics"][k].as_f64().unwrap());
            assert!((x - y).abs() <= 1e-4 * (1.0 + x.abs()), "{k}: {x} vs {y}");
        }
    }
    let bad = afm(&["eval", "--model", "m", "--tasks", "x", "--batch", "0"]);
    assert!(!bad.status.success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_chip_with_every_projection_digital_scores_as_the_fp_model() {
    let dir = temp_dir("eval-digital-layers");
    let model = tiny_model_with_tokenizer(&dir);
    let t = write_tasks(&dir);
    let tasks = format!("{},{}", t[0].display(), t[2].display());
    let run = |digital: &str| {
        let out = dir.join(format!("out-{digital}"));
        let args = [
            "--tiles",
            "afm-paper",
            "--text-tokens",
            "200",
            "--window",
            "64",
            "--digital-layers",
            digital,
        ];
        let r = eval_ok(&model, &tasks, &args, &out);
        let ppl = |row: &str| {
            r["cells"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["task"] == "story" && c["row"] == row)
                .unwrap()["metrics"]["ppl"]
                .as_f64()
                .unwrap()
        };
        (ppl("FP (digital)"), ppl("afm-paper"))
    };
    // Every projection's name ends with `proj` or is lm_head.
    let (fp, chip) = run("proj,lm_head");
    assert_eq!(fp, chip);
    // With lm_head alone digital, the noisy chip moves away from the FP model.
    let (fp2, chip2) = run("lm_head");
    assert_eq!(fp, fp2);
    assert!((chip2 - fp).abs() > 1e-3 * fp, "{chip2} vs {fp}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// With --calib-text every analog layer's ranges, lm_head's included, come from the text: a
/// cell has the same value whether its task runs alone or after another task on the same chip
/// (lm_head once took its ranges from the first task's first batch).
#[test]
fn a_calibrated_cell_does_not_depend_on_the_tasks_before_it() {
    let dir = temp_dir("eval-calib-order");
    let model = tiny_model_with_tokenizer(&dir);
    let t = write_tasks(&dir);
    let calib = dir.join("calib.txt");
    std::fs::write(
        &calib,
        "Zebras quietly jog past the vexed wizard. ".repeat(8),
    )
    .unwrap();
    let story = |tasks: String, out: &str, extra: &[&str]| {
        let out = dir.join(out);
        let mut args = vec![
            "--tiles",
            "ideal",
            "--no-baseline",
            "--text-tokens",
            "200",
            "--window",
            "64",
            "--calib-text",
            calib.to_str().unwrap(),
            "--calib-tokens",
            "64",
        ];
        args.extend_from_slice(extra);
        eval_ok(&model, &tasks, &args, &out)["cells"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["task"] == "story")
            .unwrap()["metrics"]["ppl"]
            .as_f64()
            .unwrap()
    };
    let alone = story(t[2].display().to_string(), "alone", &[]);
    let after = story(
        format!("{},{}", t[1].display(), t[2].display()),
        "after",
        &[],
    );
    assert_eq!(alone, after, "story alone {alone}, after lamb {after}");
    // Isolated outliers are another mapping: the cell in the same folder is computed again,
    // with other row blocks and so another value.
    let isolated = story(
        t[2].display().to_string(),
        "alone",
        &["--isolate-outliers", "4"],
    );
    assert_ne!(alone, isolated, "isolating 4 outliers changed nothing");
    assert_eq!(
        results_json(&dir.join("alone"))["config"]["isolate_outliers"],
        4
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn batched_logliks_equal_plain_forwards() {
    let m = crate::train::tiny();
    let dec = &m.decoder;
    let plain = |ctx: &[u32], cont: &[u32]| -> (f64, bool) {
        let ids: Vec<u32> = ctx.iter().chain(cont).copied().collect();
        let x = Tensor::from_slice(&ids, (1, ids.len()), &Device::Cpu).unwrap();
        let logits = dec
            .forward(&x, &mut KvCache::default())
            .unwrap()
            .squeeze(0)
            .unwrap();
        let lp = candle_nn::ops::log_softmax(&logits, D::Minus1)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let best = logits.argmax(D::Minus1).unwrap().to_vec1::<u32>().unwrap();
        let range = ctx.len()..ids.len();
        let sum = range
            .clone()
            .map(|p| f64::from(lp[p - 1][ids[p] as usize]))
            .sum();
        (sum, range.clone().all(|p| best[p - 1] == ids[p]))
    };
    let ctx = vec![5u32, 17, 200, 3, 9];
    let conts = vec![vec![1u32, 2, 3], vec![250], vec![7, 7, 7, 7, 7, 8], vec![]];
    let shared = loglik::shared_context(dec, &ctx, &conts).unwrap();
    for (k, c) in conts.iter().enumerate() {
        let (sum, greedy) = plain(&ctx, c);
        assert!(
            (shared[k].sum - sum).abs() < 1e-4,
            "shared {k}: {} vs {sum}",
            shared[k].sum
        );
        assert_eq!(shared[k].greedy, greedy);
        assert_eq!(shared[k].tokens, c.len());
    }
    // Ragged contexts and continuations in one padded batch.
    let reqs = vec![
        (vec![1u32, 2, 3, 4, 5, 6, 7], vec![8u32, 9]),
        (vec![100u32], vec![101u32, 102, 103, 104]),
        (vec![42u32, 43, 44], vec![45u32]),
    ];
    let batch = loglik::batch(dec, &reqs).unwrap();
    for (k, (c, t)) in reqs.iter().enumerate() {
        let (sum, greedy) = plain(c, t);
        assert!(
            (batch[k].sum - sum).abs() < 1e-4,
            "batch {k}: {} vs {sum}",
            batch[k].sum
        );
        assert_eq!(batch[k].greedy, greedy);
    }
    // Several contexts, each with ragged continuations (one empty), in one tree batch.
    let groups: Vec<loglik::Group> = vec![
        (vec![9u32, 8, 7], vec![vec![6u32, 5], vec![4u32], vec![]]),
        (vec![200u32; 11], vec![vec![1u32; 9], vec![2u32, 3, 4]]),
        (vec![77u32], vec![vec![78u32]]),
    ];
    let trees = loglik::grouped(dec, &groups).unwrap();
    for ((ctx, conts), got) in groups.iter().zip(&trees) {
        for (c, l) in conts.iter().zip(got) {
            let (sum, greedy) = plain(ctx, c);
            assert!((l.sum - sum).abs() < 1e-4, "tree: {} vs {sum}", l.sum);
            assert_eq!((l.greedy, l.tokens), (greedy, c.len()));
        }
    }
    assert!(loglik::batch(dec, &[(vec![], vec![1])]).is_err());
}

#[test]
fn tree_batch_layout() {
    use afm::executor::tree::TreeBatch;
    let (p, a, b): (&[u32], &[u32], &[u32]) = (&[1, 2], &[3, 4, 5], &[6]);
    let tb = TreeBatch::new(&[(p, vec![a, b]), (&[7], vec![&[]])]).unwrap();
    assert_eq!(tb.ids, [1, 2, 3, 4, 5, 6, 7]);
    assert_eq!((tb.rows(), tb.trees(), tb.slots()), (7, 2, 6));
    assert_eq!((tb.branch_row(0, 1, 0), tb.prefix_row(1, 0)), (5, 6));
    // Branch b's token (slot 5, position 2) sees the prefix and itself, not branch a.
    let seen: Vec<usize> = (0..6).filter(|&k| tb.sees(0, 5, k)).collect();
    assert_eq!(seen, [0, 1, 5]);
    // Branch a's second token sees the prefix and a's first two tokens; the prefix sees back.
    let seen: Vec<usize> = (0..6).filter(|&k| tb.sees(0, 3, k)).collect();
    assert_eq!(seen, [0, 1, 2, 3]);
    assert!(!tb.sees(0, 0, 1));
    // Tree 1 has one row: its empty slots see slot 0 only and point at its row.
    assert!(tb.sees(1, 3, 0) && !tb.sees(1, 3, 3) && !tb.sees(1, 0, 1));
    let gather = tb
        .gather_index(&Device::Cpu)
        .unwrap()
        .to_vec1::<u32>()
        .unwrap();
    assert_eq!(gather, [0, 1, 2, 3, 4, 5, 6, 6, 6, 6, 6, 6]);
    let scatter = tb
        .scatter_index(&Device::Cpu)
        .unwrap()
        .to_vec1::<u32>()
        .unwrap();
    assert_eq!(scatter, [0, 1, 2, 3, 4, 5, 6]);
    let pos: Vec<(usize, usize)> = tb.slot_positions().take(6).collect();
    assert_eq!(pos, [(0, 5), (1, 5), (2, 5), (3, 5), (4, 5), (2, 5)]);
    assert!(TreeBatch::new(&[(&[], vec![a])]).is_err());
}

#[test]
fn hellaswag_preprocessing_as_lm_eval() {
    assert_eq!(
        preprocess(" Making a cake: [header] How to bake [title] Mix flour.  [step] Stir. "),
        // Python's str.replace leaves one double space of a triple, as lm-eval does.
        "Making a cake: How to bake. Mix flour.  Stir."
    );
    assert_eq!(
        capitalize_last_fragment("Roof shingle removal: A man is sitting on a roof. he"),
        "Roof shingle removal: A man is sitting on a roof. He"
    );
    assert_eq!(
        capitalize_last_fragment("Label: a man walks"),
        "Label: A man walks"
    );
    let dir = temp_dir("hellaswag");
    let p = dir.join("hs.txt");
    std::fs::write(
        &p,
        "Act: A man sits. he\n2\na\nb\nstands [title] up.\nd\nAct: x\n9\n",
    )
    .unwrap();
    let t = tasks::load(p.to_str().unwrap(), &dir, None, None).unwrap();
    let TaskData::MultipleChoice(items) = &t.data else {
        panic!("not multiple choice")
    };
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].contexts[0], "Act: A man sits. He");
    assert_eq!(items[0].continuations[2], " stands. up.");
    assert_eq!(items[0].gold, 2);
    assert_eq!(t.skipped.len(), 1, "the cut-off second item is reported");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn answers_are_extracted_and_normalized() {
    let (cot, ans) = gsm8k_cot("He has 3*4=<<3*4=12>>12 eggs.\nThen 1,200 more.\n#### 1,212");
    assert_eq!(
        cot,
        "He has 3*4=12 eggs.\nThen 1,200 more.\nThe answer is 1212."
    );
    assert_eq!(ans, "1212");
    assert_eq!(
        extract_number("so 5 + 7 = 12. The answer is $1,212.00."),
        Some("1212".into())
    );
    assert_eq!(extract_number("It is -3 or maybe 4"), Some("4".into()));
    assert_eq!(extract_number("no digits"), None);
    assert!(is_correct(AnswerStyle::Number, "The answer is 18.", "18"));
    assert!(!is_correct(AnswerStyle::Number, "The answer is 19.", "18"));
    assert_eq!(
        normalize_math("\\left( 3, \\dfrac{\\pi}{2} \\right)"),
        "(3,\\frac{\\pi}{2})"
    );
    assert_eq!(normalize_math("10\\text{ inches}"), "10inches");
    assert!(is_correct(
        AnswerStyle::Boxed,
        "so $\\boxed{\\frac{1}{2}}$ and finally \\boxed{\\left(3, \\frac{\\pi}{2}\\right)}.",
        "\\left( 3, \\frac{\\pi}{2} \\right)"
    ));
    assert!(!is_correct(AnswerStyle::Boxed, "\\boxed{3}", "4"));
}

#[test]
fn formats_are_detected_and_few_shot_comes_from_the_train_file() {
    let dir = temp_dir("formats");
    let q =
        |n: usize| format!("{{\"question\": \"Q{n}?\", \"answer\": \"x=<<1+1=2>>2\\n#### {n}\"}}");
    std::fs::write(dir.join("m_test.jsonl"), q(1) + "\n" + &q(2) + "\n").unwrap();
    std::fs::write(dir.join("m_train.jsonl"), [q(7), q(8), q(9)].join("\n")).unwrap();
    let t = tasks::load(
        dir.join("m_test.jsonl").to_str().unwrap(),
        &dir,
        Some(2),
        Some(1),
    )
    .unwrap();
    let TaskData::Generation(items, AnswerStyle::Number) = &t.data else {
        panic!("not gsm8k")
    };
    assert_eq!((items.len(), t.shots), (1, 2));
    assert_eq!(items[0].answer, "1");
    assert_eq!(items[0].prompt.matches("The answer is").count(), 2);
    assert!(items[0].prompt.ends_with("Question: Q1?\nAnswer:"));
    std::fs::write(
        dir.join("p.jsonl"),
        "{\"problem\": \"1+1\", \"answer\": \"2\"}\n",
    )
    .unwrap();
    let t = tasks::load(dir.join("p.jsonl").to_str().unwrap(), &dir, Some(3), None).unwrap();
    assert!(matches!(
        t.data,
        TaskData::Generation(_, AnswerStyle::Boxed)
    ));
    assert_eq!(t.shots, 0, "no training file: 0-shot");
    std::fs::write(dir.join("odd.jsonl"), "{\"foo\": 1}\n").unwrap();
    let e = tasks::load(dir.join("odd.jsonl").to_str().unwrap(), &dir, None, None).unwrap_err();
    assert!(e.to_string().contains("odd.jsonl") && e.to_string().contains("unknown task format"));
    let e = tasks::load("no_such_task", &dir, None, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no_such_task") && e.contains("hellaswag"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn builtin_tasks_use_lm_eval_prompts() {
    let data = tasks::default_data_dir();
    let t = tasks::load("arc_easy", &data, None, Some(2)).unwrap();
    let TaskData::MultipleChoice(items) = &t.data else {
        panic!()
    };
    assert_eq!(items.len(), 2);
    assert!(
        items[0].contexts[0].starts_with("Question: ")
            && items[0].contexts[0].ends_with("?\nAnswer:")
    );
    let t = tasks::load("piqa", &data, None, Some(1)).unwrap();
    let TaskData::MultipleChoice(items) = &t.data else {
        panic!()
    };
    assert!(
        items[0].contexts[0].ends_with("occupants?\nAnswer:"),
        "{:?}",
        items[0].contexts[0]
    );
    let t = tasks::load("hellaswag", &data, None, Some(3)).unwrap();
    let TaskData::MultipleChoice(items) = &t.data else {
        panic!()
    };
    assert_eq!(
        items[0].contexts[0],
        "Roof shingle removal: A man is sitting on a roof. He"
    );
    assert_eq!(items[0].gold, 3);
    let t = tasks::load("gsm8k", &data, None, Some(1)).unwrap();
    assert_eq!(t.shots, 8);
    let t = tasks::load("lambada_openai", &data, None, Some(1)).unwrap();
    let TaskData::Continuation(items) = &t.data else {
        panic!()
    };
    assert_eq!(items[0].1, " signs");
}

#[test]
fn drift_times_reread_the_same_chip() {
    let dir = temp_dir("eval-drift");
    let model = tiny_model_with_tokenizer(&dir);
    let text = write_tasks(&dir).remove(2);
    let out = afm(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--tasks",
        text.to_str().unwrap(),
        "--tiles",
        "pcm-aihwkit",
        "--drift-times",
        "1s,1y",
        "--drift-compensation",
        "off",
        "--no-baseline",
        "--text-tokens",
        "200",
        "--window",
        "64",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = &stdout[stdout.find("\n{").unwrap()..];
    let r: serde_json::Value = serde_json::from_str(json).unwrap();
    let ppl = |row: &str| {
        r["cells"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["row"] == row)
            .unwrap_or_else(|| panic!("no row {row}: {stdout}"))["metrics"]["ppl"]
            .as_f64()
            .unwrap()
    };
    let (early, late) = (
        ppl("pcm-aihwkit @ t=1s, no comp."),
        ppl("pcm-aihwkit @ t=1y, no comp."),
    );
    // Uncompensated drift lowers the conductances: the same chip scores differently a year on.
    assert!(
        early.is_finite() && late.is_finite() && late != early,
        "{early} vs {late}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A run without --out that fails on the chip (learned ranges that do not fit the preset's row
/// blocks) says so and leaves no temporary results folder behind.
#[test]
fn a_failed_run_without_out_leaves_no_temporary_folder() {
    let dir = temp_dir("eval-temp-cleanup");
    let model = tiny_model_with_tokenizer(&dir);
    let t = write_tasks(&dir);
    std::fs::write(
        model.join("analog.json"),
        r#"{"analog": {}, "input_ranges": {"model.layers.0.mlp.down_proj": [1.0, 2.0, 3.0]}}"#,
    )
    .unwrap();
    let child = afm_cmd(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--tasks",
        t[2].to_str().unwrap(),
        "--tiles",
        "ideal",
        "--no-baseline",
    ])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let pid = child.id();
    let o = child.wait_with_output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("3 learned input ranges"),
        "{e}"
    );
    let temp = std::env::temp_dir().join(format!("afm-eval-{pid}"));
    assert!(!temp.exists(), "{} left behind", temp.display());
    let _ = std::fs::remove_dir_all(&dir);
}
