//! Test-time compute: N sampled completions per problem, majority vote and best-of-N, with the
//! accuracy at every k <= N from the same samples.

use afm::eval::generation::{
    encode, final_answer, generate, generate_batch, generate_prompts, majority, AnswerStyle,
    Decode, GenItem, SharedPrefix, MIN_SHARED_PREFIX,
};
use afm::eval::harness::{evaluate, HarnessOptions, Select};
use afm::eval::tasks::{Task, TaskData};
use afm::executor::load::load_model;
use afm::executor::sampling::Sampling;
use afm::rng::{Effect, StreamKey};
use candle_core::DType;

#[test]
fn majority_vote_counts_answers_and_breaks_ties_by_order() {
    let s = |v: &[Option<&str>]| v.iter().map(|x| x.map(str::to_string)).collect::<Vec<_>>();
    assert_eq!(
        majority(&s(&[Some("3"), None, Some("5"), Some("5")])),
        Some("5")
    );
    assert_eq!(
        majority(&s(&[Some("3"), Some("5"), Some("5"), Some("3")])),
        Some("3")
    );
    assert_eq!(majority(&s(&[None, Some("7"), Some("3")])), Some("7"));
    assert_eq!(majority(&s(&[None, None])), None);
    assert_eq!(majority(&[]), None);
}

#[test]
fn sampled_generation_scores_majority_and_best_of_n_per_k() {
    let dir = crate::common::temp_dir("samples");
    let model = crate::eval_run::tiny_model_with_tokenizer(&dir);
    let m = load_model(model.to_str().unwrap(), DType::F32).unwrap();
    let tok = m.tokenizer.clone().unwrap();
    let prompts = [
        "Question: 2+2?\nAnswer:",
        "Question: 7*3?\nAnswer:",
        "Q: 9-4?",
        "12 + 30 =",
    ];
    let opt = HarnessOptions {
        max_new_tokens: 48,
        samples: 4,
        temperature: 1.0,
        select: Select::Majority,
        ..HarnessOptions::default()
    };
    let stops = ["Question:", "Problem:", "\n\n\n", "<|im_end|>"];
    // Each item's reference is its own first sample's answer (the harness decodes sample k of
    // item i from stream (i, k), the N samples as one batch), so maj@1 and pass@1 count
    // exactly the items that answered.
    let sampling = Sampling {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
    };
    let mut answered = 0;
    let items: Vec<GenItem> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut rngs: Vec<_> = (0..4)
                .map(|k| StreamKey::new(0, i as u64, k, Effect::Data).rng(0))
                .collect();
            let outs =
                generate_batch(&m.decoder, &tok, p, 48, &stops, sampling, &mut rngs).unwrap();
            let a = final_answer(AnswerStyle::Number, &outs[0]);
            answered += usize::from(a.is_some());
            GenItem {
                prompt: p.to_string(),
                answer: a.unwrap_or_else(|| "none".into()),
            }
        })
        .collect();
    assert!(answered > 0, "no first sample gave a number");
    let task = Task {
        name: "t".into(),
        path: dir.join("t.jsonl"),
        data: TaskData::Generation(items, AnswerStyle::Number),
        skipped: Default::default(),
        shots: 0,
    };
    let r = evaluate(&task, &m.decoder, &tok, &opt, &mut |_| {}).unwrap();
    let n = prompts.len() as f64;
    assert_eq!(r["pass@1"], answered as f64 / n);
    assert_eq!(r["maj@1"], answered as f64 / n);
    for k in [1, 2] {
        assert!(r[&format!("pass@{}", 2 * k)] >= r[&format!("pass@{k}")]);
    }
    assert!(r["pass@4"] >= r["maj@4"]);
    assert_eq!((r["exact_match"], r["samples"]), (r["maj@4"], 4.0));
    // Same streams, same numbers; best-of-N scores with pass@N.
    let best = HarnessOptions {
        select: Select::BestOfN,
        ..opt
    };
    let b = evaluate(&task, &m.decoder, &tok, &best, &mut |_| {}).unwrap();
    assert_eq!(b["exact_match"], r["pass@4"]);
    assert_eq!(
        b.iter()
            .filter(|(k, _)| *k != "exact_match")
            .collect::<Vec<_>>(),
        r.iter()
            .filter(|(k, _)| *k != "exact_match")
            .collect::<Vec<_>>()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn batched_generation_matches_one_at_a_time() {
    let dir = crate::common::temp_dir("gen-batch");
    let model = crate::eval_run::tiny_model_with_tokenizer(&dir);
    let m = load_model(model.to_str().unwrap(), DType::F32).unwrap();
    let tok = m.tokenizer.clone().unwrap();
    let rng = |k: u64| StreamKey::new(3, 0, k, Effect::Data).rng(0);
    // Greedy: every row is the single greedy completion, whatever the batch.
    let one = generate(
        &m.decoder,
        &tok,
        "abc",
        20,
        &[],
        Sampling::GREEDY,
        &mut rng(0),
    )
    .unwrap();
    let mut rngs: Vec<_> = (0..3).map(rng).collect();
    let three = generate_batch(
        &m.decoder,
        &tok,
        "abc",
        20,
        &[],
        Sampling::GREEDY,
        &mut rngs,
    )
    .unwrap();
    assert_eq!(three, vec![one.clone(); 3]);
    // Sampled: rows differ, and a stop string ends its own row only (cut before it).
    let s = Sampling {
        temperature: 1.5,
        top_k: 0,
        top_p: 1.0,
    };
    let mut rngs: Vec<_> = (0..6).map(rng).collect();
    let outs = generate_batch(&m.decoder, &tok, "abc", 30, &[], s, &mut rngs).unwrap();
    assert!(outs.iter().any(|o| o != &outs[0]), "{outs:?}");
    let stop = outs[0].chars().nth(3).unwrap().to_string();
    let mut rngs: Vec<_> = (0..6).map(rng).collect();
    let cut = generate_batch(&m.decoder, &tok, "abc", 30, &[&stop], s, &mut rngs).unwrap();
    assert_eq!(cut[0], outs[0][..outs[0].find(&stop).unwrap()]);
    for (c, o) in cut.iter().zip(&outs) {
        assert!(
            o.starts_with(c.as_str()) && !c.contains(&stop),
            "{c:?} vs {o:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn prompts_decoded_side_by_side_match_each_alone() {
    let dir = crate::common::temp_dir("gen-prompts");
    let model = crate::eval_run::tiny_model_with_tokenizer(&dir);
    let m = load_model(model.to_str().unwrap(), DType::F32).unwrap();
    let (dec, tok) = (&m.decoder, m.tokenizer.clone().unwrap());
    let base = "Question: how many legs has a cat? Answer: four.\n\n";
    let texts = [
        format!("{base}Q: a"),
        format!("{base}Q: bcd efg hij"),
        format!("{base}Question: why is the sky blue at noon?"),
    ];
    let prompts: Vec<Vec<u32>> = texts.iter().map(|t| encode(&tok, t).unwrap()).collect();
    let prefix = SharedPrefix::new(dec, &prompts)
        .unwrap()
        .expect("a shared prefix");
    assert!(prefix.len() >= MIN_SHARED_PREFIX, "{}", prefix.len());
    let short = [encode(&tok, "ab").unwrap(), encode(&tok, "cd").unwrap()];
    assert!(SharedPrefix::new(dec, &short).unwrap().is_none());
    let rng = |i: u64, k: u64| StreamKey::new(5, i, k, Effect::Data).rng(0);
    for sampling in [
        Sampling::GREEDY,
        Sampling {
            temperature: 1.3,
            top_k: 0,
            top_p: 1.0,
        },
    ] {
        let spec = Decode {
            max_new: 24,
            stops: &[],
            sampling,
        };
        let mut rngs: Vec<_> = (0..6).map(|r| rng(r / 2, r % 2)).collect();
        let together =
            generate_prompts(dec, &tok, &prompts, Some(&prefix), &spec, &mut rngs).unwrap();
        // A stop string from one row's text ends rows at different steps: the batch shrinks.
        let stop = together[3].chars().nth(2).unwrap().to_string();
        let stops = [stop.as_str()];
        let mut rngs: Vec<_> = (0..6).map(|r| rng(r / 2, r % 2)).collect();
        let cut = Decode {
            stops: &stops,
            ..spec
        };
        let cut = generate_prompts(dec, &tok, &prompts, Some(&prefix), &cut, &mut rngs).unwrap();
        for (i, t) in texts.iter().enumerate() {
            for (stops, all) in [(&[][..], &together), (&stops[..], &cut)] {
                let mut rngs: Vec<_> = (0..2).map(|k| rng(i as u64, k)).collect();
                let alone = generate_batch(dec, &tok, t, 24, stops, sampling, &mut rngs).unwrap();
                assert_eq!(
                    all[2 * i..2 * i + 2],
                    alone[..],
                    "prompt {i}, stops {stops:?}"
                );
            }
        }
        assert!(cut[3].len() < together[3].len());
    }
    let mut rngs: Vec<_> = (0..4).map(|r| rng(0, r)).collect();
    let spec = Decode {
        max_new: 4,
        stops: &[],
        sampling: Sampling::GREEDY,
    };
    assert!(generate_prompts(dec, &tok, &prompts, None, &spec, &mut rngs).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}
