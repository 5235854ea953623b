//! lm-eval style scoring: hand-checkable acc / acc_norm, the JSONL loader, and the cached
//! per-choice log-likelihoods against a plain full forward.

use afm::eval::multiple_choice::{item_logliks, load_jsonl, score, split_tokens, McItem};
use afm::executor::decoder::KvCache;
use afm::executor::load::{load_model, resolve_weights};
use candle_core::{DType, Device, Tensor, D};

#[test]
fn acc_and_acc_norm_by_hand() {
    let texts = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // Sums -5, -6, -4: acc picks choice 2. Per character (5, 12, 1 chars): -1, -0.5, -4: acc_norm
    // picks choice 1.
    let t = texts(&["aaaaa", "bbbbbbbbbbbb", "c"]);
    assert_eq!(score(&[-5.0, -6.0, -4.0], &t, 2), (true, false));
    assert_eq!(score(&[-5.0, -6.0, -4.0], &t, 1), (false, true));
    assert_eq!(score(&[-5.0, -6.0, -4.0], &t, 0), (false, false));
    // Ties go to the first choice, as numpy's argmax.
    assert_eq!(score(&[-3.0, -3.0], &texts(&["xy", "zw"]), 0), (true, true));
}

#[test]
fn loader_reads_both_formats_and_reports_bad_lines() {
    let dir = crate::common::temp_dir("mc");
    let path = dir.join("task.jsonl");
    std::fs::write(
        &path,
        concat!(
            "{\"query\": \"Question: 2+2?\\nAnswer:\", \"choices\": [\"4\", \"5\"], \"gold\": 0}\n",
            "{\"context_options\": [\"A so A\", \"A so B\"], \"continuation\": \"won.\", \"gold\": 1}\n",
            "this is not json\n",
            "{\"query\": \"q\", \"choices\": [\"a\", \"b\"], \"gold\": 7}\n",
        ),
    )
    .unwrap();
    let (items, bad) = load_jsonl(&path).unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0].continuations, vec![" 4", " 5"]);
    assert_eq!(items[0].norm_texts, vec!["4", "5"]);
    assert_eq!(items[1].contexts, vec!["A so A", "A so B"]);
    assert_eq!(items[1].continuations, vec![" won.", " won."]);
    assert_eq!(bad.iter().map(|b| b.0).collect::<Vec<_>>(), vec![3, 4]);
    std::fs::write(&path, "garbage\n").unwrap();
    let e = load_jsonl(&path).unwrap_err().to_string();
    assert!(e.contains("task.jsonl") && e.contains("line 1"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cached_choice_logliks_equal_a_full_forward() {
    let path = resolve_weights("smollm2-135m-instruct", false)
        .expect("run `afm model fetch smollm2-135m-instruct`");
    let m = load_model(path.to_str().unwrap(), DType::F32).unwrap();
    let tok = m.tokenizer.as_ref().unwrap();
    let item = McItem {
        contexts: vec!["Question: What is the capital of France?\nAnswer:".into(); 3],
        continuations: vec![
            " Paris".into(),
            " Berlin is the answer".into(),
            " Rome".into(),
        ],
        norm_texts: vec!["Paris".into(), "Berlin is the answer".into(), "Rome".into()],
        gold: 0,
    };
    let fast = item_logliks(&m.decoder, tok, &item).unwrap();
    for (k, cont) in item.continuations.iter().enumerate() {
        let (c, k_ids) = split_tokens(tok, &item.contexts[k], cont).unwrap();
        let ids: Vec<u32> = c.iter().chain(&k_ids).copied().collect();
        let x = Tensor::from_slice(&ids, (1, ids.len()), &Device::Cpu).unwrap();
        let lp = candle_nn::ops::log_softmax(
            &m.decoder
                .forward(&x, &mut KvCache::default())
                .unwrap()
                .squeeze(0)
                .unwrap(),
            D::Minus1,
        )
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
        let slow: f64 = (c.len()..ids.len())
            .map(|p| f64::from(lp[p - 1][ids[p] as usize]))
            .sum();
        assert!(
            (fast[k] - slow).abs() < 1e-3,
            "choice {k}: {} vs {slow}",
            fast[k]
        );
    }
    let (acc, _) = score(&fast, &item.norm_texts, item.gold);
    assert!(acc, "SmolLM2 should prefer Paris: {fast:?}");
}
