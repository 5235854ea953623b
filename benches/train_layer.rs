//! Forward + backward of one analog training layer with the AFM release config (8-bit DAC,
//! 8-bit ADC with lambda 14, per-channel weight noise 0.03, 512-row tiles, learned ranges):
//! the fused path against the plain-tensor reference and a plain matmul of the same shape.
//! Each step is the forward and the backward of a fixed upstream gradient g of y, as
//! `benches/train_layer_gpu.py` runs aihwkit-lightning and torch (`y.backward(g)`); the
//! reference goes through candle's autograd (loss sum(y * g)).
//!
//! One JSON line per (path, dims, tokens) on stdout, times in ms (median and min over --reps
//! after --warmup; CUDA events on the GPU; `host_median_ms`: the time to queue a step). The
//! GPU's memory pool keeps freed memory, as the trainer's does within a step
//! (`--pool-keep-gb N`: at most N GB; 0: the driver's default, which releases it at every
//! synchronization):
//!
//! ```sh
//! cargo bench --bench train_layer                                   # CPU, small shapes
//! cargo bench --bench train_layer --features cuda -- --device cuda --dtype bf16 \
//!     --dims 2048,4096,8192 --tokens 256,4096,16384                 # the issue 9 shapes
//! ```

use afm::train::layer::{AnalogTrainConfig, AnalogTrainLinear};
use candle_core::{DType, Device, Tensor, Var};
use std::time::Instant;

struct Args {
    device: String,
    dtype: DType,
    dims: Vec<usize>,
    tokens: Vec<usize>,
    reps: usize,
    warmup: usize,
    paths: Vec<String>,
    /// ADC bound lambda (None: the release config's); small values make many outputs clamp.
    out_bound: Option<f64>,
    /// Freed GPU memory the pool keeps across synchronizations (`gpu_pool::retain`), GB
    /// (None: all of it, as the trainer keeps it within a step; 0: the driver's default).
    pool_keep_gb: Option<u64>,
}

fn list(v: &str) -> Vec<usize> {
    v.split(',')
        .map(|s| s.trim().parse().expect("a comma-separated list of numbers"))
        .collect()
}

fn args() -> Args {
    let mut a = Args {
        device: "cpu".into(),
        dtype: DType::F32,
        dims: vec![256, 1024],
        tokens: vec![64, 256],
        reps: 10,
        warmup: 2,
        paths: vec!["fused".into(), "reference".into(), "plain".into()],
        out_bound: None,
        pool_keep_gb: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        // `cargo bench` passes --bench to every bench binary.
        if k == "--bench" {
            continue;
        }
        let v = it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--device" => a.device = v,
            "--dtype" => {
                a.dtype = match v.as_str() {
                    "f32" => DType::F32,
                    "bf16" => DType::BF16,
                    "f16" => DType::F16,
                    _ => panic!("--dtype: f32, bf16 or f16"),
                }
            }
            "--dims" => a.dims = list(&v),
            "--tokens" => a.tokens = list(&v),
            "--reps" => a.reps = v.parse().expect("--reps: a number"),
            "--warmup" => a.warmup = v.parse().expect("--warmup: a number"),
            "--paths" => a.paths = v.split(',').map(str::to_string).collect(),
            "--out-bound" => a.out_bound = Some(v.parse().expect("--out-bound: a number")),
            "--pool-keep-gb" => a.pool_keep_gb = Some(v.parse().expect("--pool-keep-gb: a number")),
            _ => panic!("unknown option {k}"),
        }
    }
    a
}

/// Times `f` once: (CUDA events around it on the GPU, the wall clock on the CPU; the host's
/// time until `f` returned, which on the GPU is the time to queue its work: near the first,
/// the step waits on the host).
fn time_ms(dev: &Device, f: &mut dyn FnMut()) -> (f64, f64) {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = dev {
        use candle_core::cuda_backend::cudarc::driver::sys::CUevent_flags;
        let stream = d.cuda_stream();
        let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
        let start = stream.record_event(flags).expect("event");
        let t = Instant::now();
        f();
        let host = t.elapsed().as_secs_f64() * 1e3;
        let end = stream.record_event(flags).expect("event");
        return (f64::from(start.elapsed_ms(&end).expect("event time")), host);
    }
    let t = Instant::now();
    f();
    dev.synchronize().expect("synchronize");
    let ms = t.elapsed().as_secs_f64() * 1e3;
    (ms, ms)
}

/// The median of `v`.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let a = args();
    let dev = match a.device.as_str() {
        "cpu" => Device::Cpu,
        "cuda" => Device::new_cuda(0).expect("a CUDA device (build with --features cuda)"),
        d => panic!("--device: cpu or cuda, not {d}"),
    };
    let keep = a.pool_keep_gb.map_or(u64::MAX, |gb| gb << 30);
    afm::train::gpu_pool::retain(&dev, keep).expect("pool release threshold");
    let base = AnalogTrainConfig::default();
    let cfg = AnalogTrainConfig {
        range_init_batches: 0,
        out_bound: a.out_bound.unwrap_or(base.out_bound),
        ..base
    };
    for &d in &a.dims {
        let w =
            (Tensor::randn(0f32, 1.0, (d, d), &dev).unwrap() * (1.0 / (d as f64).sqrt())).unwrap();
        for &tokens in &a.tokens {
            let x = Var::from_tensor(
                &Tensor::randn(0f32, 1.0, (tokens, d), &dev)
                    .unwrap()
                    .to_dtype(a.dtype)
                    .unwrap(),
            )
            .unwrap();
            let g = Tensor::randn(0f32, 1.0, (tokens, d), &dev)
                .unwrap()
                .to_dtype(a.dtype)
                .unwrap();
            for path in &a.paths {
                let mut layer = AnalogTrainLinear::new(&w, None, &cfg, 0, "bench").unwrap();
                layer.compute = a.dtype;
                layer.reference = path == "reference";
                let nb = layer.blocks.len();
                layer
                    .ranges
                    .set(&Tensor::full(3f32, nb, &dev).unwrap())
                    .unwrap();
                layer.state.lock().unwrap().training = true;
                let wp = Var::from_tensor(&w.to_dtype(a.dtype).unwrap()).unwrap();
                // The fused layer and the plain product: forward, then the backward of the
                // upstream gradient g (as torch's `y.backward(g)`), no autograd bookkeeping.
                // The reference runs through candle's autograd with the loss sum(y * g).
                let mut step = || match path.as_str() {
                    "fused" => {
                        let pass = layer.pass(x.as_tensor()).unwrap();
                        let grads = pass.grads(&g).unwrap();
                        drop((pass.value().clone(), grads));
                    }
                    "plain" => {
                        let w = wp.as_tensor();
                        let y = x.as_tensor().matmul(&w.t().unwrap()).unwrap();
                        let gx = g.matmul(w).unwrap();
                        let gw = g.t().unwrap().matmul(x.as_tensor()).unwrap();
                        drop((y, gx, gw));
                    }
                    _ => {
                        let y = layer.forward(x.as_tensor()).unwrap();
                        let gy = g.to_dtype(y.dtype()).unwrap();
                        let loss = (y * gy).unwrap().sum(1).unwrap().sum_all().unwrap();
                        drop(loss.backward().unwrap());
                    }
                };
                let (times, host): (Vec<f64>, Vec<f64>) = (0..a.warmup + a.reps)
                    .map(|_| time_ms(&dev, &mut step))
                    .skip(a.warmup)
                    .unzip();
                let min = times.iter().copied().fold(f64::INFINITY, f64::min);
                println!(
                    "{}",
                    serde_json::json!({
                        "path": path, "device": a.device, "dtype": format!("{:?}", a.dtype),
                        "dims": d, "tokens": tokens, "reps": a.reps, "out_bound": cfg.out_bound,
                        "median_ms": median(times), "min_ms": min, "host_median_ms": median(host),
                        "pool_keep_gb": a.pool_keep_gb,
                    })
                );
            }
        }
    }
}
