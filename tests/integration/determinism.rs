//! Same command, same seed, same bytes: `afm eval` (analog chips, every task kind) and
//! `afm sweep` give identical JSON results on 1, 2 and 4 threads.

use crate::common::{afm_cmd, json_without_times, temp_dir};

fn afm(args: &[&str], threads: usize) -> std::process::Output {
    afm_cmd(args)
        .env("RAYON_NUM_THREADS", threads.to_string())
        .output()
        .unwrap()
}

#[test]
fn eval_and_sweep_results_do_not_depend_on_the_thread_count() {
    let dir = temp_dir("determinism");
    let model = crate::eval_run::tiny_model_with_tokenizer(&dir);
    let t = crate::eval_run::write_tasks(&dir);
    let tasks = format!("{},{},{}", t[0].display(), t[1].display(), t[2].display());
    let m = model.to_str().unwrap();
    let mut evals = Vec::new();
    for threads in [1, 2, 4] {
        let out = dir.join(format!("eval-{threads}"));
        let o = afm(
            &[
                "eval",
                "--model",
                m,
                "--tasks",
                &tasks,
                "--tiles",
                "afm-paper,pcm-aihwkit",
                "--seeds",
                "2",
                "--drift-times",
                "1h",
                "--text-tokens",
                "64",
                "--window",
                "32",
                "--out",
                out.to_str().unwrap(),
            ],
            threads,
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        evals.push(json_without_times(&out.join("results.json")));
    }
    assert!(evals[0]["cells"].as_array().unwrap().len() >= 12);
    assert_eq!(evals[0], evals[1], "eval: 1 vs 2 threads");
    assert_eq!(evals[0], evals[2], "eval: 1 vs 4 threads");

    let sweep = dir.join("s.toml");
    std::fs::write(
        &sweep,
        format!(
            "name = \"d\"\nbase = \"pcm-aihwkit\"\nmodel = \"{m}\"\ntasks = [\"{}\"]\nseeds = 2\n\
             text_tokens = 64\nprompt_len = 8\ngen_len = 2\n\
             [grid]\n\"device.noise_scale\" = [0.5, 2.0]\ndrift_time_s = [1.0, 86400.0]\n",
            t[2].display()
        ),
    )
    .unwrap();
    let mut sweeps = Vec::new();
    for threads in [1, 2, 4] {
        let out = dir.join(format!("sweep-{threads}"));
        let jobs = threads.to_string();
        let o = afm(
            &[
                "sweep",
                sweep.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--jobs",
                &jobs,
            ],
            threads,
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        sweeps.push(std::fs::read(out.join("results.json")).unwrap());
    }
    assert_eq!(sweeps[0], sweeps[1], "sweep: 1 vs 2 threads");
    assert_eq!(sweeps[0], sweeps[2], "sweep: 1 vs 4 threads");
    let _ = std::fs::remove_dir_all(&dir);
}
