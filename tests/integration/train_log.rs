//! The training log's optional fields: `[run] profile`'s phase times.

use crate::train::{isolating_run, tiny};
use afm::train::trainer::{train, LogLine, TrainConfig};

/// With `[run] profile` every log line carries the step's phases, which fit in the step's own
/// wall time, and the numbers the run computes are those of the run without it (profiling
/// only waits for the device); without it the lines carry no phases.
#[test]
fn profiled_steps_log_their_phases_and_train_the_same() {
    let (dir, data, mut c) = isolating_run("profile", 8, 3, 1);
    let m = tiny();
    let run = |c: &TrainConfig, out: &str| {
        let mut lines = Vec::new();
        train(&m.decoder, None, &data, &dir.join(out), c, true, &mut |l| {
            lines.push(l.clone())
        })
        .unwrap();
        lines
    };
    let plain = run(&c, "plain");
    c.run.profile = true;
    let profiled = run(&c, "profiled");
    assert_eq!(plain.len(), 3);
    let numbers = |l: &LogLine| (l.step, l.loss, l.kl, l.grad_norm, l.clip_frac, l.mean_range);
    for (a, b) in plain.iter().zip(&profiled) {
        assert_eq!(numbers(a), numbers(b), "profiling changed step {}", a.step);
        assert!(
            a.phase_ms.is_none(),
            "unprofiled step {} has phases",
            a.step
        );
        let phases = b.phase_ms.as_ref().expect("profiled step without phases");
        for name in [
            "data",
            "student_forward",
            "teacher_forward",
            "loss",
            "backward",
            "accumulate",
            "grad_norm",
            "optimizer",
            "stats",
            "trim",
        ] {
            let ms = phases
                .get(name)
                .unwrap_or_else(|| panic!("no phase {name}"));
            assert!(ms.is_finite() && *ms >= 0.0, "{name}: {ms}");
        }
        let step_ms = 1e3 * (c.run.batch_size * 64) as f64 / b.tokens_per_s;
        let sum: f64 = phases.values().sum();
        assert!(
            sum <= step_ms * 1.001 + 1e-3,
            "phases {sum} ms > step {step_ms} ms"
        );
    }
    let logged = std::fs::read_to_string(dir.join("profiled/log.jsonl")).unwrap();
    assert!(logged.contains("\"phase_ms\""), "{logged}");
    let logged = std::fs::read_to_string(dir.join("plain/log.jsonl")).unwrap();
    assert!(!logged.contains("phase_ms"), "{logged}");
}
