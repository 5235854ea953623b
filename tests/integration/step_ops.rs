//! The fused step ops (attention, RMSNorm, SwiGLU, rotary embedding, distillation KL, AdamW,
//! weight clipping) against the generic compositions they replace, on ragged random shapes; `check_step_ops` is shared with the CUDA tests.

use crate::common::{assert_close, normals};
use afm::train::step_ops::{
    adamw_reference, adamw_update, causal_attention, causal_attention_reference, causal_softmax,
    causal_softmax_reference, clip_rows, clip_rows_reference, kl_rows, kl_rows_reference, rms_norm,
    rms_norm_reference, rope, rope_reference, swiglu, swiglu_reference, AdamStep,
};
use candle_core::{Device, Tensor, Var};

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .unwrap()
        .to_device(&Device::Cpu)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

/// A random f32 tensor of `dims` from stream `seed`, on `dev`.
fn rand(seed: u64, dims: &[usize], scale: f32, dev: &Device) -> Tensor {
    let n = dims.iter().product();
    Tensor::from_vec(normals(seed, n, scale), dims, dev).unwrap()
}

/// Value and gradient of `f(x)` under the loss sum(f(x) * g).
fn value_and_grad(
    x: &Tensor,
    g: &Tensor,
    f: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
) -> (Vec<f32>, Vec<f32>) {
    let v = Var::from_tensor(x).unwrap();
    let y = f(v.as_tensor()).unwrap();
    let grads = (&y * g).unwrap().sum_all().unwrap().backward().unwrap();
    (flat(&y), flat(grads.get(v.as_tensor()).unwrap()))
}

/// The fused ops on `dev` against the generic compositions on the CPU.
pub fn check_step_ops(dev: &Device) {
    let cpu = Device::Cpu;
    // Causal softmax: whole squares, cached keys (t < s), one query, rows longer than a warp.
    for (k, dims) in [
        [2, 3, 5, 5],
        [1, 2, 7, 12],
        [2, 1, 1, 9],
        [1, 4, 37, 37],
        [1, 1, 70, 100],
    ]
    .iter()
    .enumerate()
    {
        let seed = 10 + k as u64;
        let scale = 0.125 + 0.1 * k as f64;
        let x = rand(seed, dims, 3.0, dev);
        let g = rand(seed + 100, dims, 1.0, dev);
        let (y, dx) = value_and_grad(&x, &g, |x| causal_softmax(x, scale));
        let (x, g) = (x.to_device(&cpu).unwrap(), g.to_device(&cpu).unwrap());
        let (yr, dxr) = value_and_grad(&x, &g, |x| causal_softmax_reference(x, scale));
        assert_close(&format!("causal softmax {dims:?}"), &y, &yr, 1e-6, 1e-5);
        assert_close(
            &format!("causal softmax grad {dims:?}"),
            &dx,
            &dxr,
            1e-6,
            1e-4,
        );
    }
    // Causal attention (one graph node): grouped heads, cached keys, gradients of q, k and v.
    for (k, (b, g, rep, t, s_len, d)) in [
        (2, 1, 1, 5, 5, 4),
        (1, 2, 3, 7, 12, 8),
        (1, 3, 2, 40, 40, 16),
    ]
    .into_iter()
    .enumerate()
    {
        let seed = 70 + 3 * k as u64;
        let q = rand(seed, &[b, g, rep * t, d], 1.0, dev);
        let kk = rand(seed + 1, &[b, g, s_len, d], 1.0, dev);
        let v = rand(seed + 2, &[b, g, s_len, d], 1.0, dev);
        let up = rand(seed + 3, &[b, g, rep * t, d], 1.0, dev);
        let grads = |q: &Tensor, kk: &Tensor, v: &Tensor, reference: bool| {
            let vars = [q, kk, v].map(|x| Var::from_tensor(x).unwrap());
            let f = if reference {
                causal_attention_reference
            } else {
                causal_attention
            };
            let [qv, kv, vv] = &vars;
            let y = f(qv.as_tensor(), kv.as_tensor(), vv.as_tensor(), t, 0.3).unwrap();
            let up = up.to_device(q.device()).unwrap();
            let gr = (&y * up).unwrap().sum_all().unwrap().backward().unwrap();
            let mut out = vec![flat(&y)];
            out.extend(vars.iter().map(|x| flat(gr.get(x.as_tensor()).unwrap())));
            out
        };
        let got = grads(&q, &kk, &v, false);
        let c = |x: &Tensor| x.to_device(&cpu).unwrap();
        let want = grads(&c(&q), &c(&kk), &c(&v), true);
        for (what, (a, e)) in ["y", "dq", "dk", "dv"].iter().zip(got.iter().zip(&want)) {
            let label = format!("causal attention {what} {b}x{g}x{rep}x{t}x{s_len}x{d}");
            assert_close(&label, a, e, 1e-5, 1e-4);
        }
    }
    // SwiGLU (gradients of both inputs) and the rotary embedding (gradient of x).
    for (k, dims) in [[2usize, 3usize, 5usize], [1, 7, 70]].iter().enumerate() {
        let seed = 90 + 4 * k as u64;
        let (a, b) = (rand(seed, dims, 2.0, dev), rand(seed + 1, dims, 1.0, dev));
        let g = rand(seed + 2, dims, 1.0, dev);
        let run = |a: &Tensor, b: &Tensor, reference: bool| {
            let (av, bv) = (Var::from_tensor(a).unwrap(), Var::from_tensor(b).unwrap());
            let f = if reference { swiglu_reference } else { swiglu };
            let y = f(av.as_tensor(), bv.as_tensor()).unwrap();
            let g = g.to_device(a.device()).unwrap();
            let gr = (&y * g).unwrap().sum_all().unwrap().backward().unwrap();
            let grad = |v: &Var| flat(gr.get(v.as_tensor()).unwrap());
            [flat(&y), grad(&av), grad(&bv)]
        };
        let c = |x: &Tensor| x.to_device(&cpu).unwrap();
        let (got, want) = (run(&a, &b, false), run(&c(&a), &c(&b), true));
        for (what, (x, e)) in ["y", "da", "db"].iter().zip(got.iter().zip(&want)) {
            assert_close(&format!("swiglu {what} {dims:?}"), x, e, 1e-6, 1e-5);
        }
        let (b_, h, t, d) = (2, 3, 4 + 3 * k, 8 + 8 * k);
        let x = rand(seed + 3, &[b_, h, t, d], 1.0, dev);
        let angles: Vec<f32> = (0..t * d / 2).map(|i| 0.37 * i as f32).collect();
        let ang = Tensor::from_vec(angles, (t, d / 2), dev).unwrap();
        let (cos, sin) = (ang.cos().unwrap(), ang.sin().unwrap());
        let up = rand(seed + 4, &[b_, h, t, d], 1.0, dev);
        let (y, dx) = value_and_grad(&x, &up, |x| rope(x, &cos, &sin));
        let (yr, dxr) = value_and_grad(&c(&x), &c(&up), |x| rope_reference(x, &c(&cos), &c(&sin)));
        assert_close(&format!("rope {t}x{d}"), &y, &yr, 1e-6, 1e-5);
        assert_close(&format!("rope grad {t}x{d}"), &dx, &dxr, 1e-6, 1e-5);
    }
    // RMSNorm: rows shorter than a warp, longer, and not a multiple of it; gradients of x and w.
    for (k, dims) in [[2, 3, 5], [1, 4, 70], [3, 1, 576]].iter().enumerate() {
        let seed = 20 + k as u64;
        let x = rand(seed, dims, 2.0, dev);
        let w = rand(seed + 100, &dims[2..], 1.0, dev);
        let g = rand(seed + 200, dims, 1.0, dev);
        let grads = |x: &Tensor, w: &Tensor, reference: bool| {
            let (xv, wv) = (Var::from_tensor(x).unwrap(), Var::from_tensor(w).unwrap());
            let f = if reference {
                rms_norm_reference
            } else {
                rms_norm
            };
            let y = f(xv.as_tensor(), wv.as_tensor(), 1e-5).unwrap();
            let gr = (&y * g.to_device(x.device()).unwrap())
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let grad = |v: &Var| flat(gr.get(v.as_tensor()).unwrap());
            (flat(&y), grad(&xv), grad(&wv))
        };
        let got = grads(&x, &w, false);
        let want = grads(
            &x.to_device(&cpu).unwrap(),
            &w.to_device(&cpu).unwrap(),
            true,
        );
        assert_close(&format!("rms norm {dims:?}"), &got.0, &want.0, 1e-6, 1e-5);
        assert_close(
            &format!("rms norm dx {dims:?}"),
            &got.1,
            &want.1,
            1e-5,
            1e-4,
        );
        assert_close(
            &format!("rms norm dw {dims:?}"),
            &got.2,
            &want.2,
            1e-5,
            1e-4,
        );
    }
    // Distillation KL: a vocabulary shorter than a block, one not a multiple of it.
    for (k, (rows, v, temp)) in [(3, 7, 1.0), (5, 1000, 2.0), (2, 3001, 1.0)]
        .into_iter()
        .enumerate()
    {
        let seed = 30 + k as u64;
        let t = rand(seed, &[rows, v], 4.0, dev);
        let s = rand(seed + 100, &[rows, v], 4.0, dev);
        let g = rand(seed + 200, &[rows], 1.0, dev);
        let (kl, ds) = value_and_grad(&s, &g, |s| kl_rows(&t, s, temp));
        let (t, s, g) = (
            t.to_device(&cpu).unwrap(),
            s.to_device(&cpu).unwrap(),
            g.to_device(&cpu).unwrap(),
        );
        let (klr, dsr) = value_and_grad(&s, &g, |s| kl_rows_reference(&t, s, temp));
        assert!(
            kl.iter().all(|&x| x > 0.0),
            "KL of different logits must be > 0"
        );
        assert_close(&format!("kl rows {rows}x{v}"), &kl, &klr, 1e-5, 1e-4);
        assert_close(&format!("kl grad {rows}x{v}"), &ds, &dsr, 1e-7, 1e-4);
    }
    // Weight clipping in place: rows shorter than a warp and longer, against the clipped copy.
    for (k, dims) in [[3usize, 5usize], [7, 70], [2, 1536]].iter().enumerate() {
        let w = rand(80 + k as u64, dims, 1.0, dev);
        let want = clip_rows_reference(&w.to_device(&cpu).unwrap(), 1.5).unwrap();
        let var = Var::from_tensor(&w).unwrap();
        clip_rows(&var, 1.5).unwrap();
        let got = flat(var.as_tensor());
        assert_close(
            &format!("clip rows {dims:?}"),
            &got,
            &flat(&want),
            1e-6,
            1e-5,
        );
        assert_ne!(got, flat(&w), "alpha 1.5 clips some of {dims:?}");
    }
    // AdamW: three steps in place against the generic composition; the same bits on the CPU.
    let dims = [37, 11];
    let w0 = rand(50, &dims, 1.0, dev);
    let (w, m, v) = (
        w0.copy().unwrap(),
        w0.zeros_like().unwrap(),
        w0.zeros_like().unwrap(),
    );
    // Copies: on the CPU `to_device` would share the storage the in-place update writes.
    let own = |t: &Tensor| t.to_device(&cpu).unwrap().copy().unwrap();
    let mut want = (own(&w0), own(&m), own(&v));
    for step in 1..=3 {
        let g = rand(60 + step, &dims, 0.1, dev);
        let k = AdamStep {
            b1: 0.9,
            b2: 0.999,
            ic1: 1.0 / (1.0 - 0.9f64.powi(step as i32)),
            ic2: 1.0 / (1.0 - 0.999f64.powi(step as i32)),
            eps: 1e-8,
            lr: 1e-2,
            decay: 0.1,
            // The clip's factor on one step of three.
            scale: if step == 2 { 0.37 } else { 1.0 },
        };
        adamw_update(&w, &m, &v, &g, &k).unwrap();
        want = adamw_reference(&want.0, &want.1, &want.2, &g.to_device(&cpu).unwrap(), &k).unwrap();
        for (what, got, want) in [("w", &w, &want.0), ("m", &m, &want.1), ("v", &v, &want.2)] {
            if dev.is_cpu() {
                assert_eq!(flat(got), flat(want), "adamw {what} after step {step}");
            } else {
                assert_close(
                    &format!("adamw {what} step {step}"),
                    &flat(got),
                    &flat(want),
                    1e-7,
                    1e-5,
                );
            }
        }
    }
    assert_ne!(flat(&w), flat(&w0), "the update moved the weights");

    // The trainer's frozen teacher (fused causal softmax, nothing tracked) against the generic
    // forward that evaluation keeps, on a tiny checkpoint.
    let m = crate::train::tiny_on(dev);
    let vocab = m.decoder.cfg.vocab_size as u32;
    let ids: Vec<u32> = (0..2 * 11).map(|i| (i * 37 + 5) % vocab).collect();
    let ids = Tensor::from_vec(ids, (2, 11), dev).unwrap();
    let generic = m
        .decoder
        .forward(&ids, &mut afm::executor::decoder::KvCache::default())
        .unwrap();
    let frozen = m.decoder.forward_frozen(&ids).unwrap();
    assert_close(
        "frozen forward",
        &flat(&frozen),
        &flat(&generic),
        1e-5,
        1e-4,
    );
}

#[test]
fn fused_step_ops_match_the_generic_compositions() {
    check_step_ops(&Device::Cpu);
}

#[test]
fn backward_keeps_lone_gradients_and_sums_shared_ones() {
    // vendor/candle-core stores a node input's first gradient as it comes (made contiguous)
    // instead of adding it to zeros; later gradients of the same input are added to it.
    let dev = Device::Cpu;
    let t = |seed, shape: (usize, usize)| {
        Tensor::from_vec(normals(seed, shape.0 * shape.1, 1.0), shape, &dev).unwrap()
    };
    let (a, b) = (t(1, (2, 3)), t(2, (3, 2)));
    let x = Var::from_tensor(&t(3, (2, 3))).unwrap();
    let w = Var::from_tensor(&t(4, (3, 2))).unwrap();
    // x twice (once through a transpose), w once through a transpose: its gradient arrives as
    // a transposed view.
    let xs = x.as_tensor();
    let y = ((xs * &a).unwrap().sum_all().unwrap()
        + (xs.t().unwrap() * &b).unwrap().sum_all().unwrap()
        + (w.as_tensor().t().unwrap() * &a)
            .unwrap()
            .sum_all()
            .unwrap())
    .unwrap();
    let grads = y.backward().unwrap();
    let (gx, gw) = (
        grads.get(xs).expect("x's gradient"),
        grads.get(w.as_tensor()).expect("w's gradient"),
    );
    assert!(gx.is_contiguous() && gw.is_contiguous());
    let want_x = (&a + b.t().unwrap()).unwrap();
    assert_close("x used twice", &flat(gx), &flat(&want_x), 1e-6, 0.0);
    assert_close("w used once", &flat(gw), &flat(&a.t().unwrap()), 0.0, 0.0);
}
