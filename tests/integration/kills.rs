//! `afm eval --out` and `afm datagen` killed with SIGKILL 20 times (a seeded 0-3 ms after
//! each newly finished file, so kills land while the next one is being written) and resumed
//! each time: no corrupt file, nothing finished is lost, and the final output equals an
//! uninterrupted run's (byte for byte for datagen; apart from wall times for eval).

use crate::common::{afm_cmd, json_without_times, temp_dir};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn cmd(args: &[String]) -> Command {
    let mut c = afm_cmd(args);
    c.stdout(Stdio::null()).stderr(Stdio::null());
    c
}

/// Runs `args` with a SIGKILL a random 0-3 ms (seeded) after each newly finished file in
/// `watch`, re-starting after each, for at most `kills` kills, then to the end. Returns how many
/// kills landed before a run ended by itself.
fn kill_and_resume(args: &[String], watch: &Path, kills: usize, seed: u64) -> usize {
    let mut rng = afm::rng::StreamKey::new(seed, 0, 0, afm::rng::Effect::Data).rng(0);
    let count = || std::fs::read_dir(watch).map_or(0, |d| d.count());
    let mut landed = 0;
    for _ in 0..kills {
        let mut child = cmd(args).spawn().unwrap();
        let before = count();
        let t0 = Instant::now();
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                assert!(s.success(), "a resumed run failed: afm {args:?}");
                return landed;
            }
            if count() > before || t0.elapsed() > Duration::from_secs(60) {
                std::thread::sleep(Duration::from_micros(rng.next_u64() % 3000));
                child.kill().unwrap();
                child.wait().unwrap();
                landed += 1;
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    assert!(cmd(args).status().unwrap().success(), "final run failed");
    landed
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn eval_and_datagen_survive_twenty_random_kills() {
    let dir = temp_dir("kills");
    let model = crate::eval_run::tiny_model_with_tokenizer(&dir);
    let m = model.to_str().unwrap().to_string();
    let t = crate::eval_run::write_tasks(&dir);
    let tasks = format!("{},{},{}", t[0].display(), t[1].display(), t[2].display());
    let eval = |out: &Path| -> Vec<String> {
        [
            "eval",
            "--model",
            &m,
            "--tasks",
            &tasks,
            "--tiles",
            "afm-paper",
            "--seeds",
            "6",
            "--text-tokens",
            "64",
            "--window",
            "32",
            "--out",
            out.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    };
    let whole = dir.join("eval-whole");
    assert!(cmd(&eval(&whole)).status().unwrap().success());
    let cut = dir.join("eval-cut");
    let landed = kill_and_resume(&eval(&cut), &cut.join("cells"), 20, 1);
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
    for (name, bytes) in files(&cut.join("cells")) {
        assert!(
            serde_json::from_slice::<serde_json::Value>(&bytes).is_ok() || !name.ends_with(".json"),
            "corrupt cell {name}"
        );
    }

    let datagen = |out: &Path| -> Vec<String> {
        [
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
            out.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    };
    let whole = dir.join("data-whole");
    assert!(cmd(&datagen(&whole)).status().unwrap().success());
    let cut = dir.join("data-cut");
    let landed = kill_and_resume(&datagen(&cut), &cut, 20, 2);
    eprintln!("datagen: {landed} kills");
    assert!(
        landed >= 10,
        "only {landed} kills landed before datagen ended"
    );
    let keep = |v: Vec<(String, Vec<u8>)>| -> Vec<(String, Vec<u8>)> {
        v.into_iter().filter(|(n, _)| !n.contains(".tmp")).collect()
    };
    assert_eq!(
        keep(files(&cut)),
        keep(files(&whole)),
        "datagen after {landed} kills"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
