//! Data-parallel training on the CPU: in-process ranks summing in host memory must train the
//! model that one rank trains on the whole batch, keep every rank's copy identical, and repeat
//! bit for bit.

use crate::common::{afm, assert_close, repo, shakespeare_data, temp_dir};
use afm::executor::decoder::Decoder;
use afm::train::parallel::{Collective, HostGroup};
use afm::train::student::trainable;
use afm::train::trainer::{train, train_rank, TrainConfig};
use std::path::{Path, PathBuf};

fn teacher() -> Decoder {
    crate::train::tiny().decoder
}

/// A temp folder `name` with 48 rows of Shakespeare in `data/`; returns (folder, data).
fn workspace(name: &str) -> (PathBuf, PathBuf) {
    let dir = temp_dir(name);
    let data = dir.join("data");
    shakespeare_data(&data, 48);
    (dir, data)
}

/// The release recipe on tiny-llama at a test size: noise, clipping, 8-bit DAC/ADC.
fn config(range_init_batches: usize) -> TrainConfig {
    let mut c = TrainConfig::default();
    c.run.steps = 5;
    c.run.batch_size = 4;
    c.run.grad_accum = 2;
    c.run.seq_len = 32;
    c.run.checkpoint_every = 0;
    c.optim.lr = 1e-3;
    c.optim.warmup_steps = 1;
    c.analog.tile_rows = 32;
    c.analog.range_init_batches = range_init_batches;
    c
}

/// A student's trainable values, in name order.
type Values = Vec<(String, Vec<f32>)>;

/// Every trainable value of a student.
fn values(d: &Decoder) -> Values {
    trainable(d)
        .into_iter()
        .map(|(n, v)| {
            let t = v.as_tensor().flatten_all().unwrap();
            (n, t.to_vec1::<f32>().unwrap())
        })
        .collect()
}

/// Trains with `world` in-process ranks; returns each rank's student values and rank 0's
/// per-step losses.
fn run_ranks(
    t: &Decoder,
    data: &Path,
    out: &Path,
    cfg: &TrainConfig,
    world: usize,
) -> (Vec<Values>, Vec<f64>) {
    let groups = HostGroup::new(world);
    let mut losses = Vec::new();
    let losses_ref = &mut losses;
    let students = std::thread::scope(|s| {
        let handles: Vec<_> = groups
            .into_iter()
            .map(|g| {
                let mut mine = Vec::new();
                let lead = g.rank() == 0;
                let h = s.spawn(move || {
                    let d = train_rank(
                        t,
                        None,
                        data,
                        out,
                        cfg,
                        false,
                        &mut |l| mine.push(l.loss),
                        &g,
                    )
                    .unwrap();
                    (values(&d), mine)
                });
                (lead, h)
            })
            .collect();
        handles
            .into_iter()
            .map(|(lead, h)| {
                let (v, l) = h.join().unwrap();
                if lead {
                    *losses_ref = l;
                }
                v
            })
            .collect::<Vec<_>>()
    });
    (students, losses)
}

#[test]
fn two_ranks_train_the_model_one_rank_trains() {
    let (dir, data) = workspace("dp-equal");
    let t = teacher();
    // Without range initialization the ranks see the same ranges, so two half batches with
    // averaged gradients are one whole batch up to float summation order.
    let cfg = config(0);
    let mut solo_loss = Vec::new();
    let solo = train(&t, None, &data, &dir.join("solo"), &cfg, false, &mut |l| {
        solo_loss.push(l.loss)
    })
    .unwrap();
    let (ranks, loss) = run_ranks(&t, &data, &dir.join("two"), &cfg, 2);
    let f = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
    assert_close("per-step loss", &f(&loss), &f(&solo_loss), 1e-5, 1e-5);
    assert_eq!(ranks[0], ranks[1], "both ranks hold the same bits");
    for ((name, a), (_, b)) in ranks[0].iter().zip(values(&solo)) {
        assert_close(name, a, &b, 1e-5, 1e-4);
    }
    // Rank 0 alone wrote the final model and the log.
    let log = std::fs::read_to_string(dir.join("two/log.jsonl")).unwrap();
    assert_eq!(log.lines().count(), cfg.run.steps);
    assert!(dir.join("two/final/model.safetensors").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ranges_initialized_per_rank_are_averaged_and_runs_repeat() {
    let (dir, data) = workspace("dp-ranges");
    let t = teacher();
    // A window of 3 micro-batches ends inside step 2 (2 per step).
    let cfg = config(3);
    let (a, _) = run_ranks(&t, &data, &dir.join("a"), &cfg, 2);
    assert_eq!(a[0], a[1], "ranks agree after the ranges are averaged");
    let ranges: Vec<f32> = a[0]
        .iter()
        .filter(|(n, _)| n.ends_with("input_range"))
        .flat_map(|(_, v)| v.clone())
        .collect();
    assert!(!ranges.is_empty() && ranges.iter().all(|&r| r > 0.0));
    let (b, _) = run_ranks(&t, &data, &dir.join("b"), &cfg, 2);
    assert_eq!(a, b, "the same command gives the same bits");
    // The averaged ranges are not those one rank gets from the whole batch, but close.
    let solo = train(&t, None, &data, &dir.join("solo"), &cfg, false, &mut |_| {}).unwrap();
    let solo_ranges: Vec<f32> = values(&solo)
        .into_iter()
        .filter(|(n, _)| n.ends_with("input_range"))
        .flat_map(|(_, v)| v)
        .collect();
    assert_ne!(ranges, solo_ranges);
    assert_close("ranges", &ranges, &solo_ranges, 0.0, 0.2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ranks_must_divide_the_batch_and_the_cli_runs_them() {
    let (dir, data) = workspace("dp-cli");
    let mut cfg = config(0);
    cfg.run.batch_size = 3;
    let groups = HostGroup::new(2);
    let e = train_rank(
        &teacher(),
        None,
        &data,
        &dir.join("x"),
        &cfg,
        false,
        &mut |_| {},
        &groups[0],
    )
    .unwrap_err();
    assert!(e.to_string().contains("does not divide over 2"), "{e}");
    let toml = dir.join("train.toml");
    std::fs::write(
        &toml,
        "[run]\nsteps = 2\nbatch_size = 4\nseq_len = 16\ncheckpoint_every = 0\n\
         [analog]\ntile_rows = 32\nrange_init_batches = 1\n",
    )
    .unwrap();
    let teacher_dir = repo("tests/golden/executor/tiny-llama");
    let args = |out: &str, ranks: &str| {
        afm(&[
            "train",
            "--teacher",
            teacher_dir.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            dir.join(out).to_str().unwrap(),
            "--config",
            toml.to_str().unwrap(),
            "--ranks",
            ranks,
        ])
    };
    let o = args("cli", "2");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(dir.join("cli/final/model.safetensors").exists());
    let o = args("bad", "3");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("does not divide over 3"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_failed_rank_releases_the_others_instead_of_hanging() {
    let g = HostGroup::new(2);
    let t = candle_core::Tensor::new(&[1f32, 2.0], &candle_core::Device::Cpu).unwrap();
    let ok = std::thread::scope(|s| {
        let waiting = s.spawn(|| g[0].sum(&t));
        std::thread::sleep(std::time::Duration::from_millis(50));
        g[1].abandon();
        waiting.join().unwrap()
    });
    let e = ok.unwrap_err().to_string();
    assert!(e.contains("rank 1 stopped"), "{e}");
    // Later calls fail at once too.
    assert!(g[0].sum(&t).is_err());
    // Sums of different lengths are refused, not mixed.
    let g = HostGroup::new(2);
    let u = candle_core::Tensor::new(&[1f32], &candle_core::Device::Cpu).unwrap();
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| g[0].sum(&t));
        std::thread::sleep(std::time::Duration::from_millis(50));
        let b = g[1].sum(&u);
        (a.join().unwrap(), b)
    });
    assert!(b
        .unwrap_err()
        .to_string()
        .contains("other ranks sent another count"));
    assert!(a.is_err());
}

/// NCCL on GPUs: sums across ranks, and two GPUs training the model one GPU trains (needs two
/// GPUs for the second part; with one, the group of one is checked).
#[cfg(feature = "nccl")]
mod nccl {
    use super::{config, values, workspace};
    use crate::common::{assert_close, repo};
    use afm::executor::load::load_model_on;
    use afm::train::parallel::{Collective, NcclGroup, NcclId};
    use afm::train::trainer::{train, train_rank};
    use candle_core::{DType, Device, Tensor};

    #[test]
    fn nccl_ranks_sum_and_train_the_model_one_gpu_trains() {
        let gpus = candle_core::cuda_backend::cudarc::driver::CudaContext::device_count()
            .expect("these tests need a CUDA device") as usize;
        let world = gpus.min(2);
        let id = NcclId::new().unwrap();
        let sums: Vec<Vec<f32>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..world)
                .map(|r| {
                    s.spawn(move || {
                        let dev = Device::new_cuda(r).unwrap();
                        let g = NcclGroup::join(&dev, r, world, id).unwrap();
                        assert_eq!((g.rank(), g.world()), (r, world));
                        let t = Tensor::new(&[1.0 + r as f32, 2.0, 3.0], &dev).unwrap();
                        g.sum(&t).unwrap().to_vec1::<f32>().unwrap()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let w = world as f32;
        let want = [w + (w - 1.0) * w / 2.0, 2.0 * w, 3.0 * w];
        assert!(sums.iter().all(|s| s[..] == want), "{sums:?}");
        if world < 2 {
            eprintln!("one GPU: the two-GPU training comparison is skipped");
            return;
        }
        let (dir, data) = workspace("dp-nccl");
        let tiny = repo("tests/golden/executor/tiny-llama");
        let mut cfg = config(0);
        cfg.run.tf32 = false;
        let t0 = load_model_on(
            tiny.to_str().unwrap(),
            DType::F32,
            &Device::new_cuda(0).unwrap(),
        )
        .unwrap()
        .decoder;
        let solo = values(
            &train(
                &t0,
                None,
                &data,
                &dir.join("solo"),
                &cfg,
                false,
                &mut |_| {},
            )
            .unwrap(),
        );
        let id = NcclId::new().unwrap();
        let ranks: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..2)
                .map(|r| {
                    let (data, out, cfg, tiny) = (&data, dir.join("two"), &cfg, &tiny);
                    s.spawn(move || {
                        let dev = Device::new_cuda(r).unwrap();
                        let g = NcclGroup::join(&dev, r, 2, id).unwrap();
                        let t = load_model_on(tiny.to_str().unwrap(), DType::F32, &dev)
                            .unwrap()
                            .decoder;
                        let d =
                            train_rank(&t, None, data, &out, cfg, false, &mut |_| {}, &g).unwrap();
                        values(&d)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(ranks[0], ranks[1], "both GPUs hold the same bits");
        for ((name, a), (_, b)) in ranks[0].iter().zip(&solo) {
            assert_close(name, a, b, 1e-5, 1e-4);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
