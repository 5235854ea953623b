//! Every long-running command killed with SIGKILL at least 20 times at seeded random points and
//! resumed each time: no corrupt file, nothing finished is lost or rewritten, and the final
//! output equals an uninterrupted run's. `afm eval --out` and `afm sweep`: every cell and point
//! file parses and the results are equal apart from wall times; `afm datagen`: the folder is
//! byte-identical; `afm train --resume`: the loss log and the final model are bit-identical on
//! the CPU.

use crate::common::{afm_cmd, json_without_times, repo, temp_dir};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

fn cmd(args: &[String]) -> Command {
    let mut c = afm_cmd(args);
    c.stdout(Stdio::null()).stderr(Stdio::null());
    c
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// The SIGKILL harness. Runs `run(i)` (the i-th start) and kills it a seeded random delay in
/// `0..max_delay` after `progress()` first exceeds its value at the start of that run (or after
/// 60 s without progress); `after_kill()` then checks the files left behind, and the run starts
/// again. After `kills` kills, or once a run ends by itself, the command runs to its end.
/// Returns how many kills landed.
fn kill_and_resume(
    run: &dyn Fn(usize) -> Command,
    progress: &dyn Fn() -> usize,
    kills: usize,
    max_delay: Duration,
    seed: u64,
    after_kill: &mut dyn FnMut(),
) -> usize {
    let mut rng = afm::rng::StreamKey::new(seed, 0, 0, afm::rng::Effect::Data).rng(0);
    let max_us = max_delay.as_micros().max(1) as u64;
    for landed in 0..kills {
        let mut child = run(landed).spawn().unwrap();
        let before = progress();
        let t0 = Instant::now();
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                assert!(s.success(), "a resumed run failed: {:?}", run(landed));
                after_kill();
                return landed;
            }
            if progress() > before || t0.elapsed() > Duration::from_secs(60) {
                std::thread::sleep(Duration::from_micros(rng.next_u64() % max_us));
                child.kill().unwrap();
                child.wait().unwrap();
                after_kill();
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    assert!(run(kills).status().unwrap().success(), "final run failed");
    after_kill();
    kills
}

/// Files (not folders) under `dir`, recursively, as (path relative to `dir`, bytes), sorted;
/// temporary files of atomic writes (`*.tmp*`) left.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else if let Ok(bytes) = std::fs::read(&p) {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.push((rel, bytes));
            }
        }
    }
    let mut v = Vec::new();
    walk(dir, dir, &mut v);
    v.retain(|(n, _)| !n.contains(".tmp"));
    v.sort();
    v
}

/// Number of finished files under `dir` (recursively, temporary files not counted).
fn count(dir: &Path) -> usize {
    files(dir).len()
}

/// Asserts that every `.json` file under `dir` parses.
fn all_json_parses(dir: &Path, what: &str) {
    for (name, bytes) in files(dir) {
        assert!(
            !name.ends_with(".json") || serde_json::from_slice::<serde_json::Value>(&bytes).is_ok(),
            "{what}: corrupt {name}"
        );
    }
}

#[test]
fn eval_and_datagen_survive_twenty_random_kills() {
    let dir = temp_dir("kills");
    let model = crate::eval_run::tiny_model_with_tokenizer(&dir);
    let m = model.to_str().unwrap().to_string();
    let t = crate::eval_run::write_tasks(&dir);
    let tasks = format!("{},{},{}", t[0].display(), t[1].display(), t[2].display());
    let eval = |out: &Path| -> Vec<String> {
        let o = out.to_str().unwrap();
        strings(&[
            "eval",
            "--model",
            &m,
            "--tasks",
            &tasks,
            "--tiles",
            "afm-paper",
            // 39 cells: enough that 10 kills land even when a restart finishes a few cells
            // before its kill (the harness kills on the first new cell, after up to 3 ms).
            "--seeds",
            "12",
            "--text-tokens",
            "64",
            "--window",
            "32",
            "--out",
            o,
        ])
    };
    let whole = dir.join("eval-whole");
    assert!(cmd(&eval(&whole)).status().unwrap().success());
    let cut = dir.join("eval-cut");
    let cells = cut.join("cells");
    let landed = kill_and_resume(
        &|_| cmd(&eval(&cut)),
        &|| count(&cells),
        20,
        Duration::from_millis(3),
        1,
        &mut || all_json_parses(&cells, "eval"),
    );
    eprintln!("eval: {landed} kills");
    assert!(
        landed >= 10,
        "only {landed} kills landed before the eval ended"
    );
    assert_eq!(
        json_without_times(&cut.join("results.json")),
        json_without_times(&whole.join("results.json")),
        "eval after {landed} kills"
    );

    let datagen = |out: &Path| -> Vec<String> {
        let o = out.to_str().unwrap();
        strings(&[
            "datagen",
            "--model",
            &m,
            "--tokens",
            "8192",
            "--seq-len",
            "64",
            "--batch",
            "4",
            "--rows-per-shard",
            "4",
            "--out",
            o,
        ])
    };
    let whole = dir.join("data-whole");
    assert!(cmd(&datagen(&whole)).status().unwrap().success());
    let cut = dir.join("data-cut");
    let landed = kill_and_resume(
        &|_| cmd(&datagen(&cut)),
        &|| count(&cut),
        20,
        Duration::from_millis(3),
        2,
        &mut || all_json_parses(&cut, "datagen"),
    );
    eprintln!("datagen: {landed} kills");
    assert!(
        landed >= 10,
        "only {landed} kills landed before datagen ended"
    );
    assert_eq!(files(&cut), files(&whole), "datagen after {landed} kills");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The step of the checkpoint `latest.json` names (0 before the first).
fn latest_step(out: &Path) -> usize {
    std::fs::read(out.join("latest.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["step"].as_u64())
        .map_or(0, |s| s as usize)
}

/// What a kill may leave of a training run: `latest.json` whole and naming a complete
/// checkpoint, and every line of the log but a last, cut one parsing.
fn train_folder_is_whole(out: &Path) {
    if let Ok(b) = std::fs::read(out.join("latest.json")) {
        let v: serde_json::Value = serde_json::from_slice(&b).expect("corrupt latest.json");
        let ckpt = out.join(v["dir"].as_str().expect("latest.json without dir"));
        for f in ["weights.safetensors", "optim.safetensors", "state.json"] {
            assert!(ckpt.join(f).exists(), "{} lacks {f}", ckpt.display());
        }
        let state = std::fs::read(ckpt.join("state.json")).unwrap();
        assert!(serde_json::from_slice::<serde_json::Value>(&state).is_ok());
    }
    let log = std::fs::read_to_string(out.join("log.jsonl")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    for l in lines.iter().take(lines.len().saturating_sub(1)) {
        assert!(
            serde_json::from_str::<serde_json::Value>(l).is_ok(),
            "corrupt log line {l}"
        );
    }
}

#[test]
fn train_survives_twenty_random_kills() {
    train_kills("kills-train", 1, 20, 80);
}

#[test]
fn data_parallel_train_survives_random_kills() {
    // Two in-process ranks (host-memory sums): a kill takes both, the resume restarts both.
    train_kills("kills-train-dp", 2, 8, 40);
}

/// Kills `afm train --ranks RANKS` `kills` times over `steps` steps (checkpoints every 2) and
/// checks the log and the final model against an uninterrupted run's, byte for byte.
fn train_kills(name: &str, ranks: usize, kills: usize, steps: usize) {
    let dir = temp_dir(name);
    let data = dir.join("data");
    crate::common::shakespeare_data(&data, 128);
    let cfg = dir.join("train.toml");
    std::fs::write(
        &cfg,
        format!(
            "[run]\nsteps = {steps}\nbatch_size = 4\ncheckpoint_every = 2\n\
             [optim]\nlr = 1e-3\nwarmup_steps = 5\n[analog]\ntile_rows = 32\n\
             range_init_batches = 6\n"
        ),
    )
    .unwrap();
    let teacher = repo("tests/golden/executor/tiny-llama");
    // Every start passes --resume (a fresh folder starts from step 0) and alternates between
    // one and two threads: the result must depend on neither.
    let run = |out: &Path, i: usize| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_afm"));
        c.args([
            "train",
            "--resume",
            "--ranks",
            &ranks.to_string(),
            "--teacher",
        ])
        .arg(&teacher)
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(out)
        .arg("--config")
        .arg(&cfg)
        .env("RAYON_NUM_THREADS", if i % 2 == 0 { "2" } else { "1" })
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        c
    };
    let whole = dir.join("whole");
    let t0 = Instant::now();
    assert!(run(&whole, 0).status().unwrap().success());
    // Kills land anywhere in the next two steps (a checkpoint's writing included).
    let step = t0.elapsed() / steps as u32;
    eprintln!("uninterrupted: {:?}, {step:?} per step", t0.elapsed());
    let cut = dir.join("cut");
    let landed = kill_and_resume(
        &|i| run(&cut, i),
        &|| latest_step(&cut),
        kills,
        step * 2,
        3,
        &mut || train_folder_is_whole(&cut),
    );
    eprintln!("train, {ranks} rank(s): {landed} kills");
    assert_eq!(landed, kills, "the run ended after {landed} kills");
    let log = crate::common::log_without_timing;
    assert_eq!(log(&cut), log(&whole), "log after {landed} kills");
    assert_eq!(log(&cut).len(), steps);
    for f in ["model.safetensors", "analog.json"] {
        assert_eq!(
            std::fs::read(cut.join("final").join(f)).unwrap(),
            std::fs::read(whole.join("final").join(f)).unwrap(),
            "final/{f} differs after {landed} kills"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Finished point files of a sweep and their modification times.
fn finished_points(out: &Path) -> Vec<(PathBuf, SystemTime)> {
    let Ok(dir) = std::fs::read_dir(out.join("results")) else {
        return Vec::new();
    };
    let mut v: Vec<_> = dir
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let t = p.metadata().unwrap().modified().unwrap();
            (p, t)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn sweep_survives_twenty_random_kills() {
    let dir = temp_dir("kills-sweep");
    let model = crate::eval_run::tiny_model_with_tokenizer(&dir);
    let text = dir.join("text.txt");
    std::fs::write(
        &text,
        "a killed sweep goes on where it stopped. ".repeat(20),
    )
    .unwrap();
    let file = dir.join("s.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"k\"\nbase = \"afm-paper\"\nmodel = \"{}\"\ntasks = [\"{}\"]\nseeds = 3\n\
             text_tokens = 128\nprompt_len = 8\ngen_len = 2\n\
             [grid]\n\"adc.bits\" = [4, 6, 8, 10]\n\"tile.rows\" = [32, 64, 128]\n",
            model.display(),
            text.display()
        ),
    )
    .unwrap();
    let sweep = |out: &Path| {
        let (f, o) = (file.to_str().unwrap(), out.to_str().unwrap());
        cmd(&strings(&["sweep", f, "--out", o, "--jobs", "1"]))
    };
    let whole = dir.join("whole");
    assert!(sweep(&whole).status().unwrap().success());
    assert_eq!(finished_points(&whole).len(), 12);
    let cut = dir.join("cut");
    let mut kept = Vec::new();
    let landed = kill_and_resume(
        &|_| sweep(&cut),
        &|| count(&cut.join("results")) + count(&cut.join("points")),
        20,
        Duration::from_millis(3),
        4,
        &mut || {
            // A finished point is never rewritten, and every file parses.
            let now = finished_points(&cut);
            for k in &kept {
                assert!(now.contains(k), "{:?} was rewritten after a kill", k);
            }
            kept = now;
            all_json_parses(&cut, "sweep");
        },
    );
    eprintln!("sweep: {landed} kills");
    assert_eq!(landed, 20, "the sweep ended after {landed} kills");
    assert_eq!(kept.len(), 12);
    for name in ["results.json", "results.csv"] {
        assert_eq!(
            std::fs::read(whole.join(name)).unwrap(),
            std::fs::read(cut.join(name)).unwrap(),
            "{name} after {landed} kills"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
