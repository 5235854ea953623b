//! `afm sweep` killed with SIGKILL while it runs, then resumed: finished points are not
//! recomputed (their files are not rewritten) and the final table is byte-identical to an
//! uninterrupted run.

use crate::common::{afm_cmd, temp_dir};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

fn sweep_cmd(file: &Path, out: &Path) -> Command {
    let mut c = afm_cmd(&[
        "sweep",
        file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    c.args(["--jobs", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

/// Finished point files and their modification times.
fn finished(out: &Path) -> Vec<(String, SystemTime)> {
    let Ok(dir) = std::fs::read_dir(out.join("results")) else {
        return Vec::new();
    };
    let mut v: Vec<_> = dir
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().into_string().ok()?;
            name.ends_with(".json")
                .then(|| (name, e.metadata().unwrap().modified().unwrap()))
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_killed_sweep_resumes_without_recomputing() {
    let dir = temp_dir("sweep-kill");
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
            "name = \"k\"\nbase = \"afm-paper\"\nmodel = \"{}\"\ntasks = [\"{}\"]\nseeds = 2\n\
             text_tokens = 128\nprompt_len = 8\ngen_len = 2\n\
             [grid]\n\"adc.bits\" = [4, 6, 8]\n\"tile.rows\" = [32, 64]\n",
            model.display(),
            text.display()
        ),
    )
    .unwrap();
    let whole = dir.join("whole");
    assert!(sweep_cmd(&file, &whole).status().unwrap().success());
    let total = finished(&whole).len();
    assert_eq!(total, 6);

    // Kill as soon as one more point has finished, until a run ends by itself.
    let out = dir.join("killed");
    let mut kept: Vec<(String, SystemTime)> = Vec::new();
    let mut kills = 0;
    loop {
        let mut child = sweep_cmd(&file, &out).spawn().unwrap();
        let start = Instant::now();
        let exited = loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "a resumed sweep failed");
                break true;
            }
            if finished(&out).len() > kept.len() || start.elapsed() > Duration::from_secs(120) {
                child.kill().unwrap();
                child.wait().unwrap();
                kills += 1;
                break false;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let now = finished(&out);
        // Whatever had finished before this run is untouched by it.
        for k in &kept {
            assert!(now.contains(k), "{} was rewritten after a kill", k.0);
        }
        kept = now;
        if exited {
            break;
        }
        assert!(kills < 20, "no progress after {kills} kills");
    }
    assert!(kills >= 1, "the sweep finished before any kill");
    assert_eq!(kept.len(), total);
    for name in ["results.json", "results.csv"] {
        assert_eq!(
            std::fs::read(whole.join(name)).unwrap(),
            std::fs::read(out.join(name)).unwrap(),
            "{name} after {kills} kills"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
