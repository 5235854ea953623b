//! HellaSwag scoring speed of SmolLM2-135M-Instruct on the CPU (digital, 4 choices per item),
//! with the arithmetic ceiling beside it: the item's multiply-adds over the machine's measured
//! matmul rate. Needs `afm model fetch smollm2-135m-instruct` and ../shared/data.
//! Run: `cargo bench --bench eval` (prints one line per measurement).

use afm::eval::harness::{evaluate, HarnessOptions};
use afm::eval::multiple_choice::split_tokens;
use afm::eval::tasks::{self, TaskData};
use afm::executor::load::{load_model, resolve_weights};
use candle_core::{DType, Device, Tensor};
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let path = resolve_weights("smollm2-135m-instruct", false)
        .expect("run `afm model fetch smollm2-135m-instruct` first");
    let m = load_model(path.to_str().unwrap(), DType::F32).unwrap();
    let tok = m.tokenizer.as_ref().unwrap();
    let n_items = 60;
    let task = tasks::load("hellaswag", &tasks::default_data_dir(), None, Some(n_items)).unwrap();
    let TaskData::MultipleChoice(items) = &task.data else {
        unreachable!()
    };
    // Tokens run per item: the shared context once, each ending after it.
    let (mut ctx_tokens, mut cont_tokens) = (0usize, 0usize);
    for it in items {
        for (k, (c, e)) in it.contexts.iter().zip(&it.continuations).enumerate() {
            let (ci, ki) = split_tokens(tok, c, e).unwrap();
            if k == 0 {
                ctx_tokens += ci.len();
            }
            cont_tokens += ki.len();
        }
    }
    let cfg = &m.decoder.cfg;
    let (h, i, l) = (
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_hidden_layers,
    );
    let kv = cfg.num_key_value_heads * cfg.head_dim;
    let body = 2.0 * l as f64 * (2 * h * h + 2 * h * kv + 3 * h * i) as f64;
    let head = 2.0 * (h * cfg.vocab_size) as f64;
    // The head runs on every continuation token and once per context.
    let flops = body * (ctx_tokens + cont_tokens) as f64 + head * (cont_tokens + n_items) as f64;
    let opt = HarnessOptions::default();
    evaluate(&task, &m.decoder, tok, &opt, &mut |_| {}).unwrap();
    let t0 = Instant::now();
    let reps = 3;
    for _ in 0..reps {
        evaluate(&task, &m.decoder, tok, &opt, &mut |_| {}).unwrap();
    }
    let secs = t0.elapsed().as_secs_f64() / reps as f64;
    // The machine's matmul rate on the model's largest projection shape (128 tokens).
    let a = Tensor::randn(0f32, 1.0, (128, h), &Device::Cpu).unwrap();
    let w = Tensor::randn(0f32, 1.0, (i, h), &Device::Cpu).unwrap();
    let wt = w.t().unwrap();
    a.matmul(&wt).unwrap();
    let t1 = Instant::now();
    let mm = 200;
    for _ in 0..mm {
        a.matmul(&wt).unwrap();
    }
    let gflops_mm = 2.0 * (128 * h * i) as f64 * mm as f64 / t1.elapsed().as_secs_f64() / 1e9;
    let per_item = flops / n_items as f64;
    println!(
        "hellaswag digital: {n_items} items in {secs:.2} s = {:.2} items/s; {:.1} context + {:.1} \
         ending tokens per item = {:.1} GFLOP/item; achieved {:.1} GFLOP/s; matmul \
         128x{h}x{i}: {gflops_mm:.1} GFLOP/s -> ceiling {:.2} items/s; threads {}",
        n_items as f64 / secs,
        ctx_tokens as f64 / n_items as f64,
        cont_tokens as f64 / n_items as f64,
        per_item / 1e9,
        flops / secs / 1e9,
        gflops_mm * 1e9 / per_item,
        rayon::current_num_threads(),
    );
}
