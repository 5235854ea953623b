//! Shared test helpers: the one tolerance helper, random data from named streams, paths.

use afm::rng::{Effect, StreamKey};
use std::path::PathBuf;

/// Asserts |a - b| <= abs + rel * |b| element-wise, naming the first offending index, how
/// many offend and the worst of them.
pub fn assert_close(what: &str, a: &[f32], b: &[f32], abs: f32, rel: f32) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    let off = |(x, y): (&f32, &f32)| {
        let tol = abs + rel * y.abs();
        ((x - y).abs() > tol || x.is_finite() != y.is_finite()).then_some((x - y).abs() / tol)
    };
    let bad: Vec<(usize, f32)> = a
        .iter()
        .zip(b)
        .enumerate()
        .filter_map(|(i, p)| off(p).map(|r| (i, r)))
        .collect();
    if let Some(&(i, _)) = bad.first() {
        let (w, _) = bad
            .iter()
            .fold((i, 0f32), |m, &(j, r)| if r > m.1 { (j, r) } else { m });
        panic!(
            "{what}: element {i}: {} vs {} (tolerance {}); {} of {} elements off, the worst {w}: \
             {} vs {}",
            a[i],
            b[i],
            abs + rel * b[i].abs(),
            bad.len(),
            a.len(),
            a[w],
            b[w]
        );
    }
}

/// Relative difference |a - b| / |b| of two scalars, for statistics.
pub fn rel_diff(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs()
}

/// `n` standard normals from a named test stream, times `scale`.
pub fn normals(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut v = vec![0f32; n];
    StreamKey::new(seed, 0, 0, Effect::Data)
        .rng(0)
        .fill_normal(&mut v);
    v.iter_mut().for_each(|x| *x *= scale);
    v
}

/// A path in the repository.
pub fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A fresh, empty temporary folder for one test (removed by the test when done).
pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("afm-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The `afm` binary with `args`, run in the repository (where `tiles/` and `models/` are).
pub fn afm_cmd<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_afm"));
    c.args(args).current_dir(repo("."));
    c
}

/// Runs the `afm` binary with `args` in the repository to its end.
pub fn afm(args: &[&str]) -> std::process::Output {
    afm_cmd(args).output().unwrap()
}

/// A results.json without its wall times (`seconds`, `seconds_this_run`): the only fields
/// allowed to differ between runs of the same command.
pub fn json_without_times(path: &std::path::Path) -> serde_json::Value {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.remove("seconds");
                m.remove("seconds_this_run");
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    strip(&mut v);
    v
}

/// tinyshakespeare as byte tokens (tiny-llama's vocabulary is 256): `rows` rows of 64 tokens
/// in one training shard with its index, as `afm datagen` writes them.
pub fn shakespeare_data(dir: &std::path::Path, rows: usize) {
    use afm::train::shards::{write_shard, DataIndex, ShardEntry, ShardPair};
    const SEQ: usize = 64;
    let text = std::fs::read(repo("../shared/data/text/tinyshakespeare.txt")).unwrap();
    let r: Vec<Vec<u32>> = text
        .chunks_exact(SEQ)
        .take(rows)
        .map(|c| c.iter().map(|&b| u32::from(b)).collect())
        .collect();
    std::fs::create_dir_all(dir).unwrap();
    write_shard(&dir.join("train-00000.bin"), &r).unwrap();
    DataIndex {
        format: 1,
        model: "tinyshakespeare bytes".into(),
        seq_len: SEQ,
        vocab_size: 256,
        temperature: 1.0,
        top_k: 0,
        seed: 0,
        target_rows: rows,
        rows_per_shard: rows,
        val_every: 100,
        shards: vec![ShardPair {
            train: ShardEntry {
                file: "train-00000.bin".into(),
                rows,
            },
            val: None,
        }],
    }
    .save(dir)
    .unwrap();
}

/// A training run's `log.jsonl` without its timing column, which differs between runs.
pub fn log_without_timing(dir: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("tokens_per_s");
            v
        })
        .collect()
}
