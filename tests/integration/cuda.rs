//! The CUDA paths against the CPU: the analog training layer (forward, range initialization and
//! the gradients of x, W, bias and ranges) on ragged random shapes and on aihwkit-lightning's
//! golden cases, on-device sampling against the softmax, and the decoder's tree-batch scoring
//! and ragged decoding. Built with `--features cuda` and run on a machine with a GPU (the CPU
//! CI compiles none of this).

use crate::common::assert_close;
use crate::train_golden::{
    assert_mostly_close, clip_mask, clip_stats, clip_total, dac_grad_in_place, dac_grad_inputs,
    direct_grad_inputs, ragged_cases, run_case, vec_of, vec_of_u8, Run, DIRECT_GRAD_CASES,
};
use afm::train::fused::{
    inv_states, BlockedProduct, Blocks, ClampFix, ClampFixPair, DirectGrad, FixTarget, FusedOp,
    Stage, FLAG_TILE,
};
use candle_core::{DType, Device, Tensor};

fn gpu() -> Device {
    Device::new_cuda(0).expect("these tests need a CUDA device")
}

#[test]
fn cuda_training_layer_matches_cpu_on_ragged_shapes() {
    let cpu = Device::Cpu;
    let gpu = gpu();
    for (label, t, cfg) in ragged_cases() {
        let want = run_case(&Run::fused(&cpu), &t, &cfg);
        // Fused CUDA kernels (f32) and the plain-tensor reference on the GPU, against the CPU's
        // fused path: the same noise bits, only the products sum in another order.
        let fused = run_case(&Run::fused(&gpu), &t, &cfg);
        assert_mostly_close(
            &format!("cuda fused {label}"),
            &fused,
            &want,
            (1e-4, 0.005, 0.02),
        );
        let reference = Run {
            reference: true,
            ..Run::fused(&gpu)
        };
        let plain = run_case(&reference, &t, &cfg);
        assert_mostly_close(
            &format!("cuda plain {label}"),
            &plain,
            &want,
            (1e-4, 0.005, 0.02),
        );
        // bf16 and f16 compute (inputs and weights rounded, products accumulated in f32)
        // against the CPU on the same rounded inputs: what is left is the rounding of the
        // products' outputs, moving a few ADC steps. Where the ADC bound is tight, a block
        // output rounded next to a level boundary can also clamp on one device and not on the
        // other; each such flip moves a whole row of dx by g[t, o] w[o, :] (seen: 0.2 of dx's
        // largest value in the 80 x 600 -> 136 case, f16), hence the wider step there.
        let step = if cfg.out_bound < 10.0 { 0.3 } else { 0.15 };
        for (dtype, rel) in [(DType::BF16, 2e-2), (DType::F16, 4e-3)] {
            let round = |t: &Tensor| t.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap();
            let rounded = [round(&t[0]), round(&t[1]), round(&t[2]), t[3].clone()];
            let want = run_case(&Run::fused(&cpu), &rounded, &cfg);
            let half = Run {
                compute: dtype,
                ..Run::fused(&gpu)
            };
            let got = run_case(&half, &rounded, &cfg);
            assert_mostly_close(
                &format!("cuda {dtype:?} {label}"),
                &got,
                &want,
                (rel, 0.1, step),
            );
        }
    }
}

#[test]
fn cuda_direct_gradient_products_write_in_place_like_the_cpu() {
    let gpu = gpu();
    let mut uniform = 0;
    for (i, &(tokens, n_out, n_in, rows, head)) in DIRECT_GRAD_CASES.iter().enumerate() {
        let blocks = Blocks::with_head(n_in, rows, head);
        if !blocks.uniform() {
            continue;
        }
        uniform += 1;
        for target in [FixTarget::X, FixTarget::W] {
            let (g, other) = direct_grad_inputs(70 + i as u64, target, (tokens, n_out, &blocks));
            // f32 products take TF32 where the trainer turned it on for this process.
            let f32_rel = if candle_core::cuda_backend::gemm_reduced_precision_f32() {
                2e-3
            } else {
                1e-5
            };
            let op = DirectGrad { blocks, target };
            for (dtype, rel) in [
                (DType::F32, f32_rel),
                (DType::BF16, 8e-3),
                (DType::F16, 1e-3),
            ] {
                let round = |t: &Tensor| t.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap();
                let want = vec_of(&round(&g).apply_op2_no_bwd(&round(&other), &op).unwrap());
                let on = |t: &Tensor| t.to_dtype(dtype).unwrap().to_device(&gpu).unwrap();
                let got = on(&g).apply_op2_no_bwd(&on(&other), &op).unwrap();
                let rows_out = if target == FixTarget::X {
                    tokens
                } else {
                    n_out
                };
                assert_eq!(got.dims(), [rows_out, n_in]);
                let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
                let label =
                    format!("{dtype:?} {target:?} gradient {tokens} x {n_out} x {n_in} / {rows}");
                assert_close(&label, &vec_of(&got), &want, rel * scale, rel);
            }
        }
    }
    assert_eq!(uniform, 3, "cases with blocks of equal length");
}

#[test]
fn cuda_blocked_product_follows_the_cpu_and_candles_matmul() {
    let gpu = gpu();
    let tf32 = candle_core::cuda_backend::gemm_reduced_precision_f32();
    for (i, &(nb, tokens, n_out, r)) in [
        (1, 1, 1, 8),
        (3, 17, 9, 64),
        (2, 70, 33, 288),
        (4, 300, 520, 512),
    ]
    .iter()
    .enumerate()
    {
        let seed = 90 + 2 * i as u64;
        let xb = Tensor::from_vec(
            crate::common::normals(seed, nb * tokens * r, 1.0),
            (nb, tokens, r),
            &Device::Cpu,
        )
        .unwrap();
        let wb = Tensor::from_vec(
            crate::common::normals(seed + 1, nb * n_out * r, 1.0),
            (nb, n_out, r),
            &Device::Cpu,
        )
        .unwrap();
        for (dtype, rel) in [
            (DType::F32, if tf32 { 2e-3 } else { 1e-5 }),
            (DType::BF16, 8e-3),
            (DType::F16, 1e-3),
        ] {
            let round = |t: &Tensor| t.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap();
            let want = vec_of(
                &round(&xb)
                    .apply_op2_no_bwd(&round(&wb), &BlockedProduct)
                    .unwrap(),
            );
            let on = |t: &Tensor| t.to_dtype(dtype).unwrap().to_device(&gpu).unwrap();
            let (xg, wg) = (on(&xb), on(&wb));
            // The op itself (cuBLASLt) for every dtype; the layer takes it for bf16 and f16.
            let got = xg.apply_op2_no_bwd(&wg, &BlockedProduct).unwrap();
            assert_eq!(got.dims(), [nb, tokens, n_out]);
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let label = format!("{dtype:?} blocked product {nb} x {tokens} x {n_out} x {r}");
            assert_close(&label, &vec_of(&got), &want, rel * scale, rel);
            // Against cuBLAS's default as candle's matmul calls it: the chosen algorithm sums
            // each output in one pass too (seen bit-equal at the release shapes).
            let matmul = vec_of(&xg.matmul(&wg.transpose(1, 2).unwrap()).unwrap());
            assert_close(
                &format!("{label} vs matmul"),
                &vec_of(&got),
                &matmul,
                rel * scale,
                rel,
            );
        }
    }
}

#[test]
fn cuda_adc_sum_follows_the_cpu_bit_for_bit() {
    let (cpu, gpu) = (Device::Cpu, gpu());
    let normals = crate::common::normals;
    // (blocks, tokens, outputs): up to 4 blocks (bf16 and f16 copy them all into shared
    // memory first), more (one at a time), rows longer than one pass of 256 threads (2056,
    // 4096), rows not a multiple of 8 (the element-by-element path).
    let cases = [
        (1, 5, 8),
        (3, 70, 2056),
        (4, 33, 264),
        (2, 40, 576),
        (6, 20, 4096),
        (9, 9, 264),
        (5, 9, 70),
    ];
    for (i, &(nb, tokens, n_out)) in cases.iter().enumerate() {
        let seed = 500 + 10 * i as u64;
        let yb = Tensor::from_vec(
            normals(seed, nb * tokens * n_out, 1.0),
            (nb, tokens, n_out),
            &cpu,
        )
        .unwrap();
        let wmax: Vec<f32> = normals(seed + 1, nb * n_out, 0.05)
            .iter()
            .map(|v| v.abs() + 0.05)
            .collect();
        let wmax = Tensor::from_vec(wmax, (nb, n_out), &cpu).unwrap();
        let ranges: Vec<f32> = (0..nb).map(|s| 0.8 + 0.1 * s as f32).collect();
        let ranges = Tensor::from_vec(ranges, nb, &cpu).unwrap();
        // A bound near 2 std clamps a few outputs per tile, near 0.3 std most of them.
        for lambda in [25.0f32, 4.0] {
            for dtype in [DType::BF16, DType::F16, DType::F32] {
                let label = format!("{dtype:?} ADC {nb} x {tokens} x {n_out}, lambda {lambda}");
                let op = FusedOp {
                    blocks: Blocks::new(nb * 512, 512),
                    stage: Stage::Adc {
                        inv_states: inv_states(8),
                        lambda,
                        bound: Default::default(),
                        clamps: Default::default(),
                    },
                };
                let rounded = yb.to_dtype(dtype).unwrap();
                let want = rounded
                    .to_dtype(DType::F32)
                    .unwrap()
                    .apply_op3_no_bwd(&wmax, &ranges, &op)
                    .unwrap();
                let want_mask = clamp_mask_of(&op);
                let got = rounded
                    .to_device(&gpu)
                    .unwrap()
                    .apply_op3_no_bwd(
                        &wmax.to_device(&gpu).unwrap(),
                        &ranges.to_device(&gpu).unwrap(),
                        &op,
                    )
                    .unwrap();
                let got_mask = clamp_mask_of(&op);
                // The same f32 sums, rounded to the dtype once at the end.
                let want = vec_of(&want.to_dtype(dtype).unwrap());
                assert_close(&label, &vec_of(&got), &want, 0.0, 0.0);
                let clamped = want_mask.iter().map(|b| b.count_ones()).sum::<u32>();
                assert!(lambda > 10.0 || clamped > 0, "{label}: nothing clamped");
                assert!(got_mask == want_mask, "{label}: clamp masks differ");
            }
        }
    }
}

fn clamp_mask_of(op: &FusedOp) -> Vec<u8> {
    match &op.stage {
        Stage::Adc { clamps, .. } => vec_of_u8(&clamps.take().unwrap()),
        _ => unreachable!("an ADC stage"),
    }
}

/// A clamp mask (nb, T, ceil(out / 8)) whose flag tiles clamp at densities from none to
/// 90% (the correction's sparse and tensor-core paths, side by side in one chunk), and its
/// flags (nb * ft * fo tiles).
fn mixed_clamp_mask(seed: u64, nb: usize, tokens: usize, out: usize) -> (Vec<u8>, Vec<f32>) {
    let (ft, fo, mb) = (
        tokens.div_ceil(FLAG_TILE),
        out.div_ceil(FLAG_TILE),
        out.div_ceil(8),
    );
    let mut bits = vec![0u8; nb * tokens * mb];
    let mut flags = vec![0f32; nb * ft * fo];
    let u = crate::common::normals(seed, nb * tokens * out, 1.0);
    for s in 0..nb {
        for t in 0..tokens {
            for c in 0..out {
                let tile = (s * ft + t / FLAG_TILE) * fo + c / FLAG_TILE;
                // A normal below q clamps: none, 0.4%, 30% or 90% of the tile.
                let q = [f32::NEG_INFINITY, -2.65, -0.52, 1.28][(tile * 7 + s) % 4];
                if u[(s * tokens + t) * out + c] < q {
                    bits[(s * tokens + t) * mb + c / 8] |= 1 << (c % 8);
                    flags[tile] = 1.0;
                }
            }
        }
    }
    (bits, flags)
}

#[test]
fn cuda_clamp_correction_dense_and_sparse_tiles_follow_the_cpu() {
    let gpu = gpu();
    // (tokens, outputs, inputs, tile rows): ragged tiles at both ends, 16-row chunks spanning
    // two chunks of flagged tiles (18 token tiles), and short rows.
    for (i, &(tokens, n_out, n_in, rows)) in [
        (200, 136, 1024, 512),
        (1100, 72, 600, 256),
        (130, 260, 100, 128),
    ]
    .iter()
    .enumerate()
    {
        let blocks = Blocks::with_head(n_in, rows, 0);
        let seed = 300 + 10 * i as u64;
        let (mask, flags) = mixed_clamp_mask(seed, blocks.nb, tokens, n_out);
        let mb = n_out.div_ceil(8);
        let mask = Tensor::from_vec(mask, (blocks.nb, tokens, mb), &Device::Cpu).unwrap();
        let flags = Tensor::new(flags.as_slice(), &Device::Cpu).unwrap();
        let mut parts = Vec::new();
        for target in [FixTarget::X, FixTarget::W] {
            let (g, other) = direct_grad_inputs(seed + 1, target, (tokens, n_out, &blocks));
            let rows_out = if target == FixTarget::X {
                tokens
            } else {
                n_out
            };
            let n = blocks.nb * rows_out * blocks.r;
            let dst = Tensor::from_vec(
                crate::common::normals(seed + 2, n, 1.0),
                (blocks.nb, rows_out, blocks.r),
                &Device::Cpu,
            )
            .unwrap();
            for (dtype, rel) in [(DType::BF16, 1e-2), (DType::F16, 2e-3), (DType::F32, 1e-5)] {
                let label = format!("{dtype:?} {target:?} correction {tokens} x {n_out} / {rows}");
                let round = |t: &Tensor| t.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap();
                let on = |t: &Tensor| t.to_dtype(dtype).unwrap().to_device(&gpu).unwrap();
                let fix = |dev: &dyn Fn(&Tensor) -> Tensor, m: &Tensor| ClampFix {
                    blocks,
                    target,
                    g: dev(&g),
                    clamps: m.clone(),
                    flags: dev(&flags),
                    other: dev(&other),
                };
                // A copy: for f32 the round trip hands back dst's own storage.
                let want = round(&dst).copy().unwrap();
                want.inplace_op1(&fix(&round, &mask)).unwrap();
                let got = on(&dst);
                got.inplace_op1(&fix(&on, &mask.to_device(&gpu).unwrap()))
                    .unwrap();
                let want = vec_of(&want);
                let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
                assert_close(&label, &vec_of(&got), &want, rel * scale, rel);
            }
            parts.push((g, other, dst));
        }
        // Both in one grid, as the layer runs them on the GPU, against the CPU's two.
        let [(g, wb, dx), (_, xb, dw)] = <[_; 2]>::try_from(parts).unwrap();
        for (dtype, rel) in [(DType::BF16, 1e-2), (DType::F16, 2e-3), (DType::F32, 1e-5)] {
            let label = format!("{dtype:?} paired correction {tokens} x {n_out} / {rows}");
            let round = |t: &Tensor| t.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap();
            let on = |t: &Tensor| t.to_dtype(dtype).unwrap().to_device(&gpu).unwrap();
            let pair = |dev: &dyn Fn(&Tensor) -> Tensor, m: &Tensor, gw: &Tensor| ClampFixPair {
                x: ClampFix {
                    blocks,
                    target: FixTarget::X,
                    g: dev(&g),
                    clamps: m.clone(),
                    flags: dev(&flags),
                    other: dev(&wb),
                },
                xb: dev(&xb),
                gw: gw.clone(),
            };
            let (want_x, want_w) = (round(&dx).copy().unwrap(), round(&dw).copy().unwrap());
            let p = pair(&round, &mask, &want_w);
            want_x.inplace_op1(&p.x).unwrap();
            want_w.inplace_op1(&p.w()).unwrap();
            let (got_x, got_w) = (on(&dx), on(&dw));
            got_x
                .inplace_op1(&pair(&on, &mask.to_device(&gpu).unwrap(), &got_w))
                .unwrap();
            for (part, got, want) in [("x", &got_x, &want_x), ("w", &got_w, &want_w)] {
                let want = vec_of(want);
                let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
                let label = format!("{label}: {part}");
                assert_close(&label, &vec_of(got), &want, rel * scale, rel);
            }
        }
    }
}

#[test]
fn cuda_dac_backward_in_place_follows_the_cpu() {
    let gpu = gpu();
    let mut uniform = 0;
    for (i, &(tokens, _, n_in, rows, head)) in DIRECT_GRAD_CASES.iter().enumerate() {
        let blocks = Blocks::with_head(n_in, rows, head);
        if !blocks.uniform() {
            continue;
        }
        uniform += 1;
        let [x, gxb, ranges] = dac_grad_inputs(90 + i as u64, tokens, &blocks);
        let unblock = FusedOp {
            blocks,
            stage: Stage::Unblock,
        };
        let gx = gxb.apply_op1_no_bwd(&unblock).unwrap();
        let ranges_gpu = ranges.to_device(&gpu).unwrap();
        for dtype in [DType::F32, DType::BF16] {
            let label = format!("{dtype:?} DAC backward {tokens} x {n_in} / {rows}");
            let round = |t: &Tensor| t.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap();
            let on = |t: &Tensor| t.to_dtype(dtype).unwrap().to_device(&gpu).unwrap();
            let (xr, gxr) = (round(&x), round(&gx));
            // The mask's bits are comparisons of the same values: equal to the bit.
            let mask = clip_mask(blocks, &on(&x), &ranges_gpu);
            let want_mask = clip_mask(blocks, &xr, &ranges);
            assert_eq!(vec_of_u8(&mask), vec_of_u8(&want_mask), "{label}: mask");
            // The count is an exact integer on both; twice, as the scratch must be left zero.
            let want_n = clip_total(blocks, &xr, &ranges, 7.0);
            for _ in 0..2 {
                let n = clip_total(blocks, &on(&x), &ranges_gpu, 7.0);
                assert_eq!(n, want_n, "{label}: clipped count");
            }
            let (want, want_gr) = dac_grad_in_place(blocks, [&gxr, &xr, &ranges], None);
            let (got, gr) = dac_grad_in_place(blocks, [&on(&gx), &on(&x), &ranges_gpu], Some(mask));
            assert_close(&label, &vec_of(&got), &vec_of(&want), 0.0, 0.0);
            // The pull sums in another order (f32 per thread on the GPU, f64 on the CPU).
            let ranges_label = format!("{label}: ranges");
            assert_close(&ranges_label, &vec_of(&gr), &vec_of(&want_gr), 1e-5, 1e-4);
        }
    }
    assert_eq!(uniform, 3, "cases with blocks of equal length");
}

#[test]
fn cuda_clip_statistics_follow_the_cpu() {
    // The fused layer counts the clipped inputs on the GPU; the count moves only where a range
    // initialized on the GPU differs from the CPU's in its last bits (or, in bf16, where
    // rounding moves an input across its range).
    for (label, t, cfg) in ragged_cases() {
        let want = clip_stats(&t, &cfg, &Device::Cpu, DType::F32, false);
        for compute in [DType::F32, DType::BF16] {
            let got = clip_stats(&t, &cfg, &gpu(), compute, false);
            assert_eq!(got.1, want.1, "{label} {compute:?}: inputs counted");
            let tol = if compute == DType::F32 { 0.01 } else { 0.05 };
            assert!(
                (got.0 - want.0).abs() <= tol * want.0.max(100.0),
                "{label} {compute:?}: {} clipped on the GPU, {} on the CPU",
                got.0,
                want.0
            );
        }
    }
}

#[test]
fn cuda_training_layer_matches_lightning_golden() {
    crate::train_golden::check_lightning_golden(&gpu(), "cuda");
    crate::train_golden::check_mse_range_init(&gpu(), "cuda");
}

#[test]
fn cuda_sampling_follows_softmax_and_top_k() {
    crate::executor::check_device_sampling(&gpu(), 200_000, 0.005);
}

#[test]
fn cuda_kth_largest_equals_the_cpu() {
    use afm::executor::sampling::kth_largest;
    for (v, rows, k, want) in crate::executor::kth_cases() {
        let cols = v.len() / rows;
        let t = Tensor::from_vec(v, (rows, cols), &gpu()).unwrap();
        let got = kth_largest(&t, k).unwrap().flatten_all().unwrap();
        assert_eq!(got.to_vec1::<f32>().unwrap(), want, "{rows}x{cols}, k {k}");
    }
}

#[test]
fn cuda_blocked_analog_mvm_matches_cpu() {
    crate::tile::check_blocked_against_fused(&gpu());
}

#[test]
fn cuda_step_ops_match_the_generic_compositions() {
    crate::step_ops::check_step_ops(&gpu());
}

/// The decoder's tree-batch scoring and ragged side-by-side decoding on the GPU against the CPU
/// (tiny Llama, f32): log-likelihoods within float rounding, the same greedy choices and texts.
#[test]
fn cuda_tree_scoring_and_ragged_decoding_match_the_cpu() {
    use afm::eval::generation::{encode, generate_prompts, Decode, SharedPrefix};
    use afm::eval::loglik;
    use afm::executor::load::load_model_on;
    use afm::executor::sampling::Sampling;
    use afm::rng::{Effect, StreamKey};
    let dir = crate::common::temp_dir("cuda-decode");
    let model = crate::eval_run::tiny_model_with_tokenizer(&dir);
    let path = model.to_str().unwrap();
    let cpu = load_model_on(path, DType::F32, &Device::Cpu).unwrap();
    let gpu = load_model_on(path, DType::F32, &gpu()).unwrap();
    let groups: Vec<loglik::Group> = vec![
        (vec![9u32, 8, 7], vec![vec![6u32, 5], vec![4u32], vec![]]),
        (vec![200u32; 11], vec![vec![1u32; 9], vec![2u32, 3, 4]]),
        (vec![77u32], vec![vec![78u32]]),
    ];
    let want = loglik::grouped(&cpu.decoder, &groups).unwrap();
    let got = loglik::grouped(&gpu.decoder, &groups).unwrap();
    for (w, g) in want.iter().flatten().zip(got.iter().flatten()) {
        assert!((w.sum - g.sum).abs() < 1e-3, "tree: {} vs {}", g.sum, w.sum);
        assert_eq!((w.greedy, w.tokens), (g.greedy, g.tokens));
    }
    let tok = cpu.tokenizer.clone().unwrap();
    let base = "Question: how many legs has a cat? Answer: four.\n\n";
    let prompts: Vec<Vec<u32>> = [
        format!("{base}Q: a"),
        format!("{base}Q: bcd efg hij"),
        format!("{base}Question: why is the sky blue at noon?"),
    ]
    .iter()
    .map(|t| encode(&tok, t).unwrap())
    .collect();
    let spec = Decode {
        max_new: 16,
        stops: &[],
        sampling: Sampling::GREEDY,
    };
    let run = |m: &afm::executor::load::LoadedModel| {
        let prefix = SharedPrefix::new(&m.decoder, &prompts).unwrap();
        let mut rngs: Vec<_> = (0..3)
            .map(|r| StreamKey::new(5, r, 0, Effect::Data).rng(0))
            .collect();
        generate_prompts(
            &m.decoder,
            &tok,
            &prompts,
            prefix.as_ref(),
            &spec,
            &mut rngs,
        )
        .unwrap()
    };
    assert_eq!(run(&gpu), run(&cpu));
    let _ = std::fs::remove_dir_all(&dir);
}
