//! Training data and training on tiny models: datagen determinism, resume and validation of
//! the shard files.

use crate::common::{repo, temp_dir};
use afm::executor::load::load_model;
use afm::train::datagen::{datagen, sample_rows, DatagenConfig};
use afm::train::shards::{read_split, DataIndex};
use candle_core::DType;

fn tiny() -> afm::executor::load::LoadedModel {
    load_model(
        repo("tests/golden/executor/tiny-llama").to_str().unwrap(),
        DType::F32,
    )
    .unwrap()
}

fn cfg(rows: usize, batch: usize) -> DatagenConfig {
    DatagenConfig {
        model: "tiny-llama".into(),
        seq_len: 24,
        rows,
        temperature: 1.0,
        top_k: 50,
        seed: 3,
        batch,
        rows_per_shard: 6,
        val_every: 5,
    }
}

#[test]
fn datagen_rows_start_at_bos_and_do_not_depend_on_batching() {
    let m = tiny();
    let a = sample_rows(&m.decoder, &cfg(8, 8), 0, 8).unwrap();
    let b: Vec<Vec<u32>> = [(0, 3), (3, 3), (6, 2)]
        .iter()
        .flat_map(|&(f, n)| sample_rows(&m.decoder, &cfg(8, 3), f, n).unwrap())
        .collect();
    assert_eq!(a, b, "row r draws from stream r whatever the batch");
    assert!(a
        .iter()
        .all(|r| r.len() == 24 && r[0] == 1 && r.iter().all(|&t| t < 256)));
    assert_ne!(a[0], a[1]);
    // top-k 1 is greedy: every row is the same.
    let greedy = DatagenConfig {
        top_k: 1,
        ..cfg(3, 3)
    };
    let g = sample_rows(&m.decoder, &greedy, 0, 3).unwrap();
    assert!(g.iter().all(|r| *r == g[0]));
}

#[test]
fn datagen_resumes_to_the_same_files_and_holds_out_rows() {
    let m = tiny();
    let (one, two) = (temp_dir("dg-one"), temp_dir("dg-two"));
    datagen(&m.decoder, &cfg(17, 4), &one, &mut |_| {}).unwrap();
    // A run stopped after 2 shards (as a kill between shards leaves it), then resumed.
    datagen(&m.decoder, &cfg(12, 4), &two, &mut |_| {}).unwrap();
    let mut made = 0;
    let idx = datagen(&m.decoder, &cfg(17, 4), &two, &mut |n| made += n).unwrap();
    assert_eq!(made, 5 * 24, "only the missing rows are generated");
    assert_eq!(idx, DataIndex::load(&one).unwrap());
    for split in [false, true] {
        assert_eq!(
            read_split(&one, split).unwrap(),
            read_split(&two, split).unwrap()
        );
    }
    // Rows 4, 9, 14 (every 5th) are held out: 3 of 17.
    assert_eq!(idx.rows(), (14, 3));
    // A different setting refuses to mix into the folder.
    let e = datagen(
        &m.decoder,
        &DatagenConfig {
            seed: 9,
            ..cfg(17, 4)
        },
        &two,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("other settings"), "{e}");
    // A truncated shard is named in the error.
    let f = two.join("train-00001.bin");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() - 3]).unwrap();
    let e = read_split(&two, false).unwrap_err().to_string();
    assert!(
        e.contains("train-00001.bin") && e.contains("expected"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&one);
    let _ = std::fs::remove_dir_all(&two);
}
