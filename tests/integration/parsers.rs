//! The parsers behind the fuzz targets (`fuzz/`), called on text and bytes as the targets call
//! them: the seed corpus parses, and every input the fuzzers found crashing (or that writing
//! the targets showed unbounded) is now a clear error naming the file.

use crate::common::repo;
use afm::eval::tasks::{parse_jsonl, TaskData};
use afm::executor::gguf::GgufModel;
use afm::executor::weights::{parse_safetensors, parse_shard_index};
use afm::sweep::spec::{SweepFile, MAX_POINTS};
use afm::train::shards::DataIndex;
use candle_core::{DType, Device};
use std::path::Path;

fn seed(target: &str, name: &str) -> Vec<u8> {
    std::fs::read(repo(&format!("fuzz/corpus/{target}/{name}"))).unwrap()
}

/// Offset of the first occurrence of `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{:?} not found", String::from_utf8_lossy(needle)))
}

fn gguf_err(bytes: &[u8]) -> String {
    match GgufModel::from_bytes(bytes, Path::new("f.gguf"), DType::F32) {
        Ok(_) => panic!("a broken GGUF loaded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn gguf_fuzz_findings_are_named_errors() {
    let good = seed("gguf", "tiny-q8_0.gguf");
    let g = GgufModel::from_bytes(&good, Path::new("f.gguf"), DType::F32).unwrap();
    assert_eq!(
        (g.config.hidden_size, g.config.num_attention_heads),
        (32, 4)
    );
    assert!(g.chat_template.is_some());

    // Fuzz finding 1: a tensor with a dimension of 0 reached candle, which builds its blocks
    // from the dangling pointer of an empty Vec<u8> (undefined behaviour; with debug
    // assertions an abort). Now refused by the header check.
    let mut b = good.clone();
    let name = b"blk.0.attn_q.weight";
    let dims = find(&b, name) + name.len() + 4;
    b[dims..dims + 8].copy_from_slice(&0u64.to_le_bytes());
    let e = gguf_err(&b);
    assert!(
        e.contains("f.gguf") && e.contains("`blk.0.attn_q.weight` has a dimension of 0"),
        "{e}"
    );

    // Fuzz finding 2: a head count that does not split q into heads of an even size failed in
    // candle's reshape with "shape mismatch" and no file or tensor named.
    let mut b = good.clone();
    let key = [&26u64.to_le_bytes()[..], b"llama.attention.head_count"].concat();
    let v = find(&b, &key) + key.len() + 4;
    b[v..v + 4].copy_from_slice(&32u32.to_le_bytes());
    let e = gguf_err(&b);
    assert!(
        e.contains("f.gguf") && e.contains("`blk.0.attn_q.weight`") && e.contains("32 heads"),
        "{e}"
    );

    // Fuzz finding 3 (the 10-minute device run): `general.alignment` stored as a u8 0 passed
    // the header check, which read only 32- and 64-bit alignments, and candle divided by it.
    // Now the check reads it as candle does (8-, 16-, 32-bit integers; negative = default).
    let header = |t: u32, v: &[u8]| {
        let key = b"general.alignment";
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        b.extend((key.len() as u64).to_le_bytes());
        b.extend(key);
        b.extend(t.to_le_bytes());
        b.extend(v);
        b.extend([0u8; 64]);
        b
    };
    for (t, v) in [
        (0u32, vec![0u8]),
        (2, vec![0, 0]),
        (4, vec![0; 4]),
        (2, vec![3, 0]),
    ] {
        let e = gguf_err(&header(t, &v));
        assert!(
            e.contains("f.gguf") && e.contains("general.alignment"),
            "{e}"
        );
    }
    // Fuzz finding 4 (CI): the same key padded with NUL bytes, which candle trims off.
    let mut padded = header(0, &[0]);
    let at = find(&padded, b"general.alignment");
    padded[at - 8..at].copy_from_slice(&20u64.to_le_bytes());
    padded.splice(at + 17..at + 17, [0u8; 3]);
    let e = gguf_err(&padded);
    assert!(e.contains("general.alignment"), "{e}");
    // A negative signed alignment is ignored, as candle ignores it: no panic either way.
    let _ = GgufModel::from_bytes(&header(1, &[0xff]), Path::new("f.gguf"), DType::F32);

    // Fuzz finding 5 (CI): the merge "ab \xa0" (read as "ab \u{fffd}") joins into a token
    // longer than any of the vocabulary, which panicked inside tokenizers' BPE builder before
    // its own out-of-vocabulary check. Now refused naming the merge.
    let e = gguf_err(&seed("gguf", "merge-join-longer-than-vocab.gguf"));
    assert!(
        e.contains("f.gguf")
            && e.contains("tokenizer.ggml.merges[1]")
            && e.contains("is not in tokenizer.ggml.tokens"),
        "{e}"
    );
}

#[test]
fn a_sweep_of_too_many_points_is_refused_before_expanding() {
    let head = "name = \"x\"\nbase = \"ideal\"\nmodel = \"m\"\ntasks = [\"t\"]\n[grid]\n";
    // 10^12 points: refused instead of filling the memory (an expansion first would not come
    // back with an error at all).
    let grid: String = (0..12)
        .map(|k| format!("\"f{k}\" = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]\n"))
        .collect();
    let e = SweepFile::parse(&format!("{head}{grid}"), Path::new("big.toml")).unwrap_err();
    let e = e.to_string();
    assert!(e.contains("big.toml") && e.contains("`grid`"), "{e}");
    assert!(e.contains(&MAX_POINTS.to_string()), "{e}");
    // 10^5 points exactly are allowed, and expand to that many.
    let grid: String = (0..5)
        .map(|k| format!("\"f{k}\" = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]\n"))
        .collect();
    let s = SweepFile::parse(&format!("{head}{grid}"), Path::new("ok.toml")).unwrap();
    assert_eq!(s.expand().len(), MAX_POINTS);
    let text = String::from_utf8(seed("sweep", "points.toml")).unwrap();
    assert_eq!(
        SweepFile::parse(&text, Path::new("p.toml"))
            .unwrap()
            .expand()
            .len(),
        2
    );
}

#[test]
fn shard_and_weight_file_names_stay_in_their_folder() {
    let text = String::from_utf8(seed("shard_index", "index.json")).unwrap();
    let idx = DataIndex::parse(&text, Path::new("d/index.json")).unwrap();
    assert_eq!(idx.rows(), (127, 1));
    for (bad, what) in [
        ("\"train-00001.bin\"", "\"../../etc/passwd\""),
        ("\"train-00001.bin\"", "\"/tmp/x.bin\""),
        ("\"rows\": 64", "\"rows\": 18446744073709551615"),
    ] {
        let e = DataIndex::parse(&text.replacen(bad, what, 1), Path::new("d/index.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("d/index.json"), "{what}: {e}");
        assert!(
            e.contains("not a file name") || e.contains("overflow"),
            "{e}"
        );
    }
    let names = parse_shard_index(
        &String::from_utf8(seed("hf_config", "index.json")).unwrap(),
        Path::new("i.json"),
    )
    .unwrap();
    assert_eq!(names.len(), 2);
    for bad in ["../../secret.safetensors", "/abs.safetensors", "", ".."] {
        let text = format!("{{\"weight_map\": {{\"w\": {bad:?}}}}}");
        let e = parse_shard_index(&text, Path::new("i.json"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("i.json") && e.contains("weight_map.w"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn safetensors_and_task_seeds_parse_from_bytes() {
    let t = parse_safetensors(
        &seed("safetensors", "dtypes.safetensors"),
        Path::new("s.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(t.len(), 8);
    assert_eq!(t["i"].to_vec1::<i64>().unwrap(), [-7, 9]);
    let mut cut = seed("safetensors", "f32.safetensors");
    cut.truncate(cut.len() - 4);
    let e = parse_safetensors(&cut, Path::new("s.safetensors"), &Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("s.safetensors"), "{e}");

    for (file, n) in [
        ("mc.jsonl", 2),
        ("partial.jsonl", 1),
        ("lambada.jsonl", 1),
        ("gsm8k.jsonl", 1),
        ("math.jsonl", 2),
    ] {
        let text = String::from_utf8(seed("task_jsonl", file)).unwrap();
        let (data, bad) = parse_jsonl(&text, Path::new(file)).unwrap();
        let len = match &data {
            TaskData::MultipleChoice(v) => v.len(),
            TaskData::Continuation(v) => v.len(),
            TaskData::Generation(v, _) => v.len(),
            TaskData::Text(_) => 0,
        };
        assert_eq!(len, n, "{file}");
        if file == "mc.jsonl" || file == "lambada.jsonl" {
            assert_eq!(bad.len(), 1, "{file}: {bad:?}");
        }
    }
    let e = parse_jsonl("{\"a\": 1}\n", Path::new("odd.jsonl")).unwrap_err();
    assert!(e.to_string().contains("odd.jsonl"), "{e}");
}
