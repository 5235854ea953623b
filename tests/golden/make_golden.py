#!/usr/bin/env python3
"""Golden reference files for afm's Rust tests, produced by IBM's own Python packages.

What it makes (in the output folder, by default the folder of this script):

* ``lightning_forward.safetensors`` + ``lightning_forward.json``: eval-mode forward outputs
  of aihwkit-lightning 2.1.0's ``AnalogLinear`` (the pure-PyTorch path, ``TorchLinear``) with
  the AFM release-like config: ``TorchInferenceRPUConfig`` with forward.inp_res = 254
  (8-bit DAC, levels -127..127), forward.out_res = 254 (8-bit ADC), forward.out_bound = 14,
  forward.out_noise = 0, no weight noise / weight quantization, clip.type =
  LAYER_GAUSSIAN_PER_CHANNEL (so the ADC bound of output channel c in input slice s is
  14 * beta_s * max|W[c, slice s]|), static input ranges (pre_post.input_range.enable, not
  learned, init_from_data = 0, set explicitly per slice), mapping.max_input_size = 512.
  Cases ``ragged`` (in 1100 -> slices 367/367/366, out 96, 16 tokens, bias), ``exact``
  (in 1024 -> 512/512, out 64, 8 tokens, no bias), ``single`` (in 300, out 33, 5 tokens,
  no bias), and ``dyadic`` (in 700 -> 350/350, out 40, 6 tokens, bias; exactly
  representable data so that every float32 operation is exact, with planted DAC and ADC
  rounding ties that pin down round-half-to-even). Tensors per case (float32):
  ``<case>.weight`` (out x in), ``<case>.bias`` (if any), ``<case>.input_ranges``
  (n_slices), ``<case>.x`` (tokens x in), ``<case>.y`` (tokens x out, lightning's output).
  The script recomputes every forward by hand (same torch ops in the same order, and
  independently in float64 numpy) and records the differences in the JSON. In the three
  float cases the inputs are nudged / redrawn so that no DAC or ADC input lies within
  0.01 / 0.002 steps of a rounding tie: another summation order (the Rust code) then gives
  the same quantization levels.

* ``noise_stats.json``: Monte-Carlo statistics (1,000,000 samples per bin) of aihwkit's own
  noise-model classes ``PCMLikeNoiseModel(g_max=25.0)`` (``pcm_aihwkit``),
  ``HermesNoiseModel(num_devices=1)`` (``hermes_1``) and ``HermesNoiseModel(num_devices=2)``
  (``hermes_2``): programming noise, drift exponent nu, mean drift factor
  ((t_inf + t0)/t0)^-nu and g_final after drift + 1/f read noise for t_inf = 1 h, 1 day,
  1 year. Plus ``pcm_afm``: the AFM paper's programming-noise helper, transcribed from
  shared/DESIGN.md section 3.2 (weights on the |w| <= GMAX = 180 scale; |w| < 0.6 -> 0,
  else w + N(0,1) * sigma(|w|), sigma a cubic with a split at 52.5; each bin also records
  the formula's sigma). Means and standard deviations (population std, ddof 0) computed in
  float64 from the float32 samples, rounded to 6 significant digits.

Package versions used to produce the committed files: aihwkit-lightning 2.1.0, aihwkit
1.2.0 (cp312 manylinux wheel), torch 2.11.0 (CPU tensors only, float32), Python 3.12, numpy,
safetensors. The exact versions seen at run time are written into both JSON files.

How aihwkit is loaded: the script first tries ``import aihwkit.inference`` in a
subprocess. With aihwkit 1.2.0 and torch 2.11 that works (that package does not need the
compiled simulator extension ``rpu_base``, which is built against one specific torch), and
the classes are imported from ``aihwkit.inference.noise.pcm`` / ``.hermes`` as usual; this
is the path used for the committed files. Should it fail (another aihwkit), the script
imports the real ``aihwkit`` top package (pure Python: only its version) and registers
``aihwkit.inference`` as an empty package whose ``__path__`` is the installed
``aihwkit/inference`` folder, skipping its ``__init__``. The unmodified files
``inference/converter/base.py``, ``inference/converter/conductance.py``,
``inference/noise/base.py``, ``inference/noise/pcm.py`` and ``inference/noise/hermes.py``
are then imported as they are (they need only torch and numpy; no stubs are needed). The
path taken is recorded in ``noise_stats.json`` under versions.aihwkit_load.

aihwkit-lightning picks its Triton kernels only when the environment variable
AIHWKIT_USE_TRITON is set; this script unsets it and, to be sure, blocks ``import triton``
so that lightning falls back to its PyTorch implementation. Everything runs on the CPU.

Command (Python 3.12 with torch 2.11, numpy and safetensors installed; the two IBM packages
installed without dependencies, e.g. into /tmp/site):

    python3 -m pip install --no-deps --target /tmp/site aihwkit-lightning==2.1.0 aihwkit==1.2.0
    PYTHONPATH=/tmp/site python3 tests/golden/make_golden.py            # writes tests/golden/
    PYTHONPATH=/tmp/site python3 tests/golden/make_golden.py --out DIR  # writes DIR/

Fixed seeds (torch.manual_seed per case / per bin) make it reproducible on the same
machine; the float32 CPU matmul may differ in the last ulp between machines (thread count,
SIMD width), and the tie margins above keep that from changing any quantization level.
"""

import argparse
import importlib
import json
import math
import os
import subprocess
import sys
import types

os.environ.pop("AIHWKIT_USE_TRITON", None)
os.environ.pop("_AIHWKIT_NO_ROUNDING", None)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

# Block triton so that aihwkit-lightning takes its PyTorch path (its import of
# triton_utils.triton_linear then raises ImportError, which it catches).
for _name in ("triton", "triton.language", "triton.runtime", "triton.runtime.autotuner"):
    sys.modules[_name] = None  # type: ignore[assignment]

torch.set_default_dtype(torch.float32)
DEVICE = torch.device("cpu")

GENERATOR = "tests/golden/make_golden.py"

# ---------------------------------------------------------------------------------------
# helpers


def sig6(v):
    """Round to 6 significant digits (recursively for containers)."""
    if isinstance(v, dict):
        return {k: sig6(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [sig6(x) for x in v]
    if isinstance(v, bool) or isinstance(v, int) or v is None or isinstance(v, str):
        return v
    v = float(v)
    if v == 0.0 or not math.isfinite(v):
        return v
    return float(f"{v:.6g}")


def mean_std(t):
    t64 = t.detach().to(torch.float64)
    return t64.mean().item(), t64.std(correction=0).item()


# ---------------------------------------------------------------------------------------
# 1. aihwkit-lightning AnalogLinear forward

INP_RES = 254
OUT_RES = 254
OUT_BOUND = 14.0
MAX_INPUT_SIZE = 512

DYADIC_RANGES = [127 * 2.0**-6, 127 * 2.0**-5]  # DAC steps 2^-6 and 2^-5 exactly

CASES = [
    # name, in, out, tokens, bias, input ranges per slice
    ("ragged", 1100, 96, 16, True, [2.5, 1.7, 3.1]),
    ("exact", 1024, 64, 8, False, [1.3, 4.2]),
    ("single", 300, 33, 5, False, [2.0]),
    # exact float32 arithmetic, planted DAC/ADC rounding ties (see make_dyadic_data)
    ("dyadic", 700, 40, 6, True, DYADIC_RANGES),
]


def make_rpu_config(out_res=OUT_RES):
    from aihwkit_lightning.simulator.configs import (
        TorchInferenceRPUConfig,
        WeightClipType,
        WeightNoiseInjectionType,
        WeightQuantizationType,
    )

    rpu = TorchInferenceRPUConfig()
    rpu.forward.inp_res = INP_RES
    rpu.forward.out_res = out_res  # out_res > 0 is what switches ADC quantization on
    rpu.forward.out_bound = OUT_BOUND
    rpu.forward.out_noise = 0.0
    rpu.forward.out_noise_per_channel = False
    rpu.clip.type = WeightClipType.LAYER_GAUSSIAN_PER_CHANNEL  # per-channel ADC bound
    rpu.modifier.noise_type = WeightNoiseInjectionType.NONE
    rpu.modifier.quantization_type = WeightQuantizationType.NONE
    rpu.mapping.max_input_size = MAX_INPUT_SIZE
    ir = rpu.pre_post.input_range
    ir.enable = True
    ir.dynamic = False
    ir.fast_mode = False
    ir.learn_input_range = False
    ir.init_from_data = 0
    return rpu


DAC_MIN_MARGIN = 0.01  # steps: inputs are nudged at least this far from DAC rounding ties
ADC_MIN_MARGIN = 2e-3  # steps: (token, slice) inputs are redrawn until every unsaturated
# ADC input lies at least this far from a rounding tie, so that a float32 sum in another
# order (the Rust side) cannot move an ADC result by one step


def f32(v):
    return np.float32(v)


def steps_in(r):
    """lightning's DAC step (2r)/254, computed in float32 like lightning does."""
    return f32(f32(2) * f32(r)) / f32(INP_RES)


def dac_quant_f64(xs, r):
    """float64 copy of the DAC (exact for the float32 step)."""
    step = float(steps_in(r))
    q = np.clip(xs, -float(f32(r)), float(f32(r))) / step
    return np.round(q) * step, q


def adc_margins(x, w, ranges, sizes):
    """Per (token, slice): the smallest distance (in ADC steps) of an unsaturated ADC
    input from a rounding tie, computed in float64."""
    x = x.numpy().astype(np.float64)
    w = w.numpy().astype(np.float64)
    m = np.full((x.shape[0], len(sizes)), np.inf)
    lo = 0
    for s, size in enumerate(sizes):
        r = float(f32(ranges[s]))
        xq, _ = dac_quant_f64(x[:, lo : lo + size], ranges[s])
        ws = w[:, lo : lo + size]
        step_out = OUT_BOUND * r * np.abs(ws).max(axis=1)[None, :] * 2 / OUT_RES
        q = (xq @ ws.T) / step_out
        dist = np.abs(np.abs(q - np.floor(q)) - 0.5)
        dist[np.abs(q) >= 127.5] = np.inf  # saturated: clamped to the bound
        m[:, s] = dist.min(axis=1)
        lo += size
    return m


def plant_edges(x, t, lo, r):
    x[t, lo + 0] = r
    x[t, lo + 1] = -r
    x[t, lo + 2] = 0.0
    x[t, lo + 3] = 1000.0
    x[t, lo + 4] = -1000.0


def nudge_dac(x, ranges, sizes):
    """Move unclipped inputs that lie within DAC_MIN_MARGIN of a DAC tie away from it."""
    lo = 0
    for r, size in zip(ranges, sizes):
        xs = x[:, lo : lo + size].numpy().astype(np.float64)
        step = float(steps_in(r))
        q = xs / step
        fl = np.floor(q)
        fr = q - fl
        near = (np.abs(fr - 0.5) < DAC_MIN_MARGIN) & (np.abs(xs) < float(f32(r)))
        if near.any():
            off = np.where(fr < 0.5, 0.5 - 2 * DAC_MIN_MARGIN, 0.5 + 2 * DAC_MIN_MARGIN)
            xs = np.where(near, (fl + off) * step, xs)
            x[:, lo : lo + size] = torch.from_numpy(xs.astype(np.float32))
        lo += size


def make_case_data(n_in, n_out, tokens, has_bias, ranges, sizes, seed):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    w = torch.randn(n_out, n_in, generator=gen) * 0.05
    # a few outliers (about 0.3 % of the entries, 4x..8x larger)
    mask = torch.rand(n_out, n_in, generator=gen) < 0.003
    w = torch.where(mask, w * (4.0 + 4.0 * torch.rand(n_out, n_in, generator=gen)), w)
    b = (torch.randn(n_out, generator=gen) * 0.1) if has_bias else None
    x = torch.empty(tokens, n_in)
    lo = 0
    for r, size in zip(ranges, sizes):
        hi = lo + size
        # |x| > r for about 7 % of the entries: r / sigma = 1.8
        x[:, lo:hi] = torch.randn(tokens, size, generator=gen) * (r / 1.8)
        # token 0: coherent with output channel 0 and 1.5x out of range -> clipped, and
        # channel 0 saturates its ADC bound
        x[0, lo:hi] = 1.5 * r * torch.sign(w[0, lo:hi])
        # token 1: exact edge values
        plant_edges(x, 1, lo, r)
        lo = hi
    # keep clear of rounding ties (see DAC_MIN_MARGIN / ADC_MIN_MARGIN)
    redraws = 0
    for _ in range(1000):
        nudge_dac(x, ranges, sizes)
        bad = np.argwhere(adc_margins(x, w, ranges, sizes) < ADC_MIN_MARGIN)
        if len(bad) == 0:
            break
        for t, s in bad:
            lo = sum(sizes[:s])
            size = sizes[s]
            r = ranges[s]
            if t == 0:  # coherent token: flip the sign of one entry
                j = lo + int(torch.randint(size, (1,), generator=gen))
                x[0, j] = -x[0, j]
            else:
                x[t, lo : lo + size] = torch.randn(size, generator=gen) * (r / 1.8)
                if t == 1:
                    plant_edges(x, 1, lo, r)
            redraws += 1
    else:
        raise RuntimeError("could not keep the ADC inputs clear of rounding ties")
    return w.contiguous(), (b.contiguous() if b is not None else None), x.contiguous(), redraws


DYADIC_TIE_CHANNEL = -1  # last output channel carries planted ADC ties in slice 0
DYADIC_DAC_TIE_CHANNEL = -2  # second to last: shows token 1's DAC tie at the output
# (k0, k1) for tokens 2..5: slice-0 ADC input / step of the tie channel = (k0 + k1/2) / 14
# = 0.5, 1.5, 2.5, -2.5 -> levels 0, 2, 2, -2 (half to even; half away: 1, 2, 3, -3)
DYADIC_ADC_TIES = [(6, 2), (20, 2), (34, 2), (-34, -2)]


def make_dyadic_data(n_in, n_out, tokens, sizes, seed):
    """Every operation is exact in float32 (in any summation order), so the expected
    output is unique; rounding ties are planted on purpose (half to even is tested)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    w = torch.randn(n_out, n_in, generator=gen) * 0.05
    mask = torch.rand(n_out, n_in, generator=gen) < 0.003
    w = torch.where(mask, w * 6.0, w)
    w = (w * 1024).round().clamp(-480, 480) / 1024  # multiples of 2^-10, |w| < 0.47
    b = (torch.randn(n_out, generator=gen) * 0.1 * 1024).round() / 1024
    x = torch.empty(tokens, n_in)
    lo = 0
    for r, size in zip(DYADIC_RANGES, sizes):
        x[:, lo : lo + size] = torch.randn(tokens, size, generator=gen) * (r / 1.8)
        x[0, lo : lo + size] = 1.5 * r * torch.sign(w[0, lo : lo + size])
        plant_edges(x, 1, lo, r)
        lo += size
    s0 = 2.0**-6
    # DAC ties in slice 0 (token 1): x/step = 0.5, 1.5, 2.5, -0.5, -2.5 -> 0, 2, 2, -0, -2
    x[1, 5:10] = torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5]) * s0
    # ADC ties: channel c has W[c,0] = 0.25, W[c,1] = 0.125 and zeros elsewhere in slice 0,
    # so its slice-0 ADC input / step = (k0 + k1/2) / 14 for DAC levels k0, k1
    c = DYADIC_TIE_CHANNEL
    w[c, : sizes[0]] = 0.0
    w[c, 0] = 0.25
    w[c, 1] = 0.125
    for t, (k0, k1) in zip(range(2, 2 + len(DYADIC_ADC_TIES)), DYADIC_ADC_TIES):
        x[t, 0] = k0 * s0
        x[t, 1] = k1 * s0
    # a DAC tie made visible at the output: channel c2 has W[c2,10] = 0.25, W[c2,11] = 0.125,
    # W[c2,5] = 0.1875, zeros elsewhere in slice 0; token 1 has levels k10 = 6, k11 = 1 and
    # x5/step = 0.5, so the ADC input / step = (6 + 0.5 + 0.75 k5) / 14 = 0.464 (k5 = 0,
    # half to even) -> ADC level 0, or 0.518 (k5 = 1, half away) -> 1; neither is an ADC tie
    c2 = DYADIC_DAC_TIE_CHANNEL
    w[c2, : sizes[0]] = 0.0
    w[c2, 10] = 0.25
    w[c2, 11] = 0.125
    w[c2, 5] = 0.1875
    x[1, 10] = 6 * s0
    x[1, 11] = 1 * s0
    # exactness: every product x_q * w is a multiple of step_in * 2^-10 and every partial
    # sum stays below 2^24 such units
    lo = 0
    for r, size in zip(DYADIC_RANGES, sizes):
        xq, _ = dac_quant_f64(x[:, lo : lo + size].numpy().astype(np.float64), r)
        tot = np.abs(xq) @ np.abs(w[:, lo : lo + size].numpy().astype(np.float64)).T
        unit = float(steps_in(r)) * 2.0**-10
        assert tot.max() < 2.0**24 * unit, (tot.max(), 2.0**24 * unit)
        lo += size
    return w.contiguous(), b.contiguous(), x.contiguous()


def hand_forward_torch(x, w, b, ranges_t, sizes, half_away=False):
    """Same ops, same order as aihwkit_lightning TorchLinear.linear (eval, no noise)."""

    def rnd(t):
        return torch.sign(t) * torch.floor(t.abs() + 0.5) if half_away else t.round()

    out = 0.0
    lo = 0
    for s, size in enumerate(sizes):
        r = ranges_t[s]
        xs = x[..., lo : lo + size]
        xs = torch.clamp(xs, min=-r, max=r)
        step_in = (2 * r) / INP_RES  # == r / 127
        xs = rnd(xs / step_in) * step_in  # torch.round: half to even
        ws = w[:, lo : lo + size]
        wmax = ws.abs().amax(dim=-1, keepdim=True)
        ys = xs @ ws.T
        bound = (r * OUT_BOUND) * wmax.view(1, -1)
        step_out = (2 * bound) / OUT_RES  # == bound / 127
        ys = rnd(ys / step_out) * step_out
        ys = torch.clamp(ys, min=-bound, max=bound)
        out = out + ys
        lo += size
    return out + b if b is not None else out


def hand_forward_f64(x, w, b, ranges, sizes):
    """Independent float64 numpy version; also returns rounding-tie margins."""
    x = x.numpy().astype(np.float64)
    w = w.numpy().astype(np.float64)
    out = np.zeros((x.shape[0], w.shape[0]))
    lo = 0
    dac_margin = np.inf
    adc_margin = np.inf
    n_sat = 0
    for s, size in enumerate(sizes):
        r = float(f32(ranges[s]))
        xs, q = dac_quant_f64(x[:, lo : lo + size], ranges[s])
        dac_margin = min(dac_margin, np.abs(np.abs(q - np.floor(q)) - 0.5).min())
        ws = w[:, lo : lo + size]
        bound = OUT_BOUND * r * np.abs(ws).max(axis=1)[None, :]
        step_out = bound * 2 / OUT_RES
        q = (xs @ ws.T) / step_out
        inside = np.abs(q) < 127.5
        n_sat += int((~inside).sum())
        if inside.any():
            adc_margin = min(adc_margin, np.abs(np.abs(q - np.floor(q)) - 0.5)[inside].min())
        out += np.clip(np.round(q) * step_out, -bound, bound)  # numpy round: half to even
        lo += size
    if b is not None:
        out += b.numpy().astype(np.float64)[None, :]
    return out, dac_margin, adc_margin, n_sat


def lightning_forward(out_dir):
    import aihwkit_lightning
    from aihwkit_lightning.nn import AnalogLinear
    from aihwkit_lightning.nn.modules import linear as lightning_linear

    assert not lightning_linear.TRITON_AVAIL, "triton path must be off"
    tensors = {}
    meta_cases = {}
    for idx, (name, n_in, n_out, tokens, has_bias, ranges) in enumerate(CASES):
        rpu = make_rpu_config()
        layer = AnalogLinear(
            n_in, n_out, bias=has_bias, device=DEVICE, dtype=torch.float32, rpu_config=rpu
        )
        sizes = list(layer.in_sizes)
        assert len(sizes) == len(ranges), (name, sizes)
        if name == "dyadic":
            w, b, x = make_dyadic_data(n_in, n_out, tokens, sizes, seed=1000 + idx)
            redraws = 0
        else:
            w, b, x, redraws = make_case_data(
                n_in, n_out, tokens, has_bias, ranges, sizes, seed=1000 + idx
            )
        layer.set_weights_and_biases(w, b)
        ranges_t = torch.tensor(ranges, dtype=torch.float32)
        layer.input_range.data = ranges_t.clone()
        layer.eval()
        with torch.no_grad():
            y = layer(x).detach().clone()
            # ADC quantization check: the same layer without out quantization (bound kept)
            layer.rpu_config = make_rpu_config(out_res=-1)
            y_noq = layer(x).detach().clone()
            layer.rpu_config = rpu
            y_again = layer(x).detach().clone()
        # nothing was learned / initialised from data in eval
        assert torch.equal(layer.input_range.data, ranges_t), layer.input_range.data
        assert torch.equal(y, y_again)
        assert y.dtype == torch.float32 and y.shape == (tokens, n_out)

        y_hand = hand_forward_torch(x, w, b, ranges_t, sizes)
        d_hand = (y - y_hand).abs().max().item()
        y64, dac_margin, adc_margin, n_sat = hand_forward_f64(x, w, b, ranges, sizes)
        d64 = np.abs(y.numpy().astype(np.float64) - y64)
        d_quant = (y - y_noq).abs().max().item()
        # rounding mode: the same by-hand forward with round-half-away-from-zero
        n_half_away = int((y != hand_forward_torch(x, w, b, ranges_t, sizes, True)).sum())
        clip_frac = 0.0
        lo = 0
        for r, size in zip(ranges, sizes):
            clip_frac += (x[2:, lo : lo + size].abs() > r).float().sum().item()
            lo += size
        clip_frac /= (tokens - 2) * n_in
        distinct = [int(torch.unique(y[:, c]).numel()) for c in range(n_out)]

        print(f"[{name}] in={n_in} out={n_out} tokens={tokens} slices={sizes}")
        print(f"  max |hand_torch - lightning| = {d_hand:.3e}")
        print(f"  max |hand_f64  - lightning| = {d64.max():.3e}  (entries > 1e-5: "
              f"{int((d64 > 1e-5).sum())})")
        print(f"  max |lightning - lightning(out_res=-1)| = {d_quant:.3e} (ADC quantization on)")
        print(f"  entries that differ if rounding were half-away-from-zero: {n_half_away}")
        print(f"  (token, slice) redraws to keep clear of ADC ties: {redraws}")
        print(f"  clipped input fraction (random tokens) = {clip_frac:.4f}")
        print(f"  min DAC tie margin = {dac_margin:.3e} steps, min ADC tie margin = "
              f"{adc_margin:.3e} steps, saturated (token,chan,slice) = {n_sat}")
        print(f"  distinct values per column: min {min(distinct)} max {max(distinct)}")
        if name == "dyadic":
            xq, _ = dac_quant_f64(x[:, : sizes[0]].numpy().astype(np.float64), ranges[0])
            ws = w[:, : sizes[0]].numpy().astype(np.float64)
            q = (xq @ ws.T) / (OUT_BOUND * ranges[0] * np.abs(ws).max(axis=1) * 2 / OUT_RES)
            lv_tie = [float(v) for v in q[2:6, DYADIC_TIE_CHANNEL]]
            lv_dac = float(q[1, DYADIC_DAC_TIE_CHANNEL])
            print(f"  planted ADC ties (input/step): {lv_tie} -> {np.round(lv_tie).tolist()}")
            print(f"  planted DAC tie channel, token 1 (input/step): {lv_dac:.4f}")
            assert lv_tie == [0.5, 1.5, 2.5, -2.5], lv_tie
            assert abs(lv_dac - 6.5 / 14) < 1e-12, lv_dac
            assert n_half_away >= 4, n_half_away
        if len(sizes) == 1 and b is None:
            wmax = w.abs().amax(dim=1)
            step = (ranges_t[0] * OUT_BOUND) * wmax * 2 / OUT_RES
            k = y / step.view(1, -1)
            dev = (k - k.round()).abs().max().item()
            print(f"  single slice: max |y/step - round(y/step)| = {dev:.3e}, "
                  f"max |k| = {k.abs().max().item():.2f}")

        tensors[f"{name}.weight"] = w
        if b is not None:
            tensors[f"{name}.bias"] = b
        tensors[f"{name}.input_ranges"] = ranges_t
        tensors[f"{name}.x"] = x
        tensors[f"{name}.y"] = y
        meta_cases[name] = {
            "in": n_in,
            "out": n_out,
            "tokens": tokens,
            "slice_sizes": sizes,
            "has_bias": has_bias,
            "input_ranges": ranges,
            "seed": 1000 + idx,
            "clipped_input_fraction": sig6(clip_frac),
            "max_abs_diff_hand_torch": sig6(d_hand),
            "max_abs_diff_hand_float64": sig6(float(d64.max())),
            "max_abs_diff_vs_no_adc_quant": sig6(d_quant),
            "entries_differing_with_half_away_rounding": n_half_away,
            "min_dac_tie_margin_steps": sig6(float(dac_margin)),
            "min_adc_tie_margin_steps": sig6(float(adc_margin)),
            "adc_saturated_count": n_sat,
            "exact_float32_arithmetic": name == "dyadic",
        }
        if name == "dyadic":
            meta_cases[name]["planted_ties"] = (
                "token 1, inputs 5..9 (slice 0, DAC step 2^-6): x/step = 0.5, 1.5, 2.5, -0.5, "
                "-2.5 -> levels 0, 2, 2, -0, -2. Last output channel c: W[c,0]=0.25, "
                "W[c,1]=0.125, other slice-0 weights 0, so for tokens 2..5 its slice-0 ADC "
                "input / step = 0.5, 1.5, 2.5, -2.5 -> levels 0, 2, 2, -2 (half to even; "
                "half away would give 1, 2, 3, -3). Second to last channel c2: W[c2,10]=0.25, "
                "W[c2,11]=0.125, W[c2,5]=0.1875, other slice-0 weights 0; token 1 has levels "
                "k10=6, k11=1 and the DAC tie x5/step=0.5, so its slice-0 ADC input / step = "
                "(6.5 + 0.75*k5)/14: half to even k5=0 -> 0.464 -> level 0 (half away: k5=1 "
                "-> 0.518 -> 1)"
            )

    save_file(tensors, os.path.join(out_dir, "lightning_forward.safetensors"))
    meta = {
        "generator": GENERATOR,
        "versions": {
            "aihwkit_lightning": aihwkit_lightning.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": sys.version.split()[0],
            "path": "TorchLinear (pure PyTorch, CPU, float32); triton off",
        },
        "config": {
            "inp_res": INP_RES,
            "out_res": OUT_RES,
            "out_bound": OUT_BOUND,
            "out_noise": 0.0,
            "max_input_size": MAX_INPUT_SIZE,
            "clip_type": "LAYER_GAUSSIAN_PER_CHANNEL",
            "input_range": "static, enable=True, learn=False, init_from_data=0",
            "mode": "eval",
        },
        "formula": (
            "per slice s (sizes: n=ceil(in/512), base+(i<extra)), r=input_ranges[s]: "
            "xq = round(clamp(x,-r,r)/(2r/254))*(2r/254); ys = xq @ W[:,s]^T; "
            "bound[c] = (r*14)*max|W[c,s]|; ys = clamp(round(ys/(2*bound/254))*(2*bound/254), "
            "-bound, bound); y = ((0+ys_0)+ys_1)+... + bias; round = half to even"
        ),
        "notes": (
            "ragged/exact/single: arbitrary float32 data; inputs were nudged/redrawn so that "
            "every DAC input is >= 0.01 steps and every unsaturated ADC input >= 0.002 steps "
            "from a rounding tie, so a float32 matmul in another summation order gives the "
            "same ADC levels (expect agreement to ~1e-5 relative). dyadic: ranges 127*2^-6, "
            "127*2^-5 (DAC steps 2^-6, 2^-5), weights and bias multiples of 2^-10; every "
            "product and partial sum is exact in float32, so the output must match bit for "
            "bit given the same op order ((s0 + s1) + bias); it contains planted exact ties."
        ),
        "cases": meta_cases,
    }
    with open(os.path.join(out_dir, "lightning_forward.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")


# ---------------------------------------------------------------------------------------
# 2. aihwkit noise models

N_SAMPLES = 1_000_000
G_FRACTIONS = [0.0, 0.01, 0.05, 0.10, 0.20, 0.35, 0.50, 0.70, 0.85, 1.0]
T_INFERENCE = [3600.0, 86400.0, 31536000.0]


def load_aihwkit_noise(force_fallback=False):
    probe = subprocess.run(
        [sys.executable, "-c", "import aihwkit.inference"], capture_output=True, text=True
    )
    if force_fallback:
        probe.returncode, probe.stderr = 1, "fallback forced (--aihwkit-fallback)"
    if probe.returncode == 0:
        import aihwkit
        from aihwkit.inference.noise.pcm import PCMLikeNoiseModel
        from aihwkit.inference.noise.hermes import HermesNoiseModel

        ext = "aihwkit.simulator.rpu_base" in sys.modules
        how = (
            "full package: import aihwkit.inference succeeded (compiled extension rpu_base "
            + ("loaded" if ext else "not needed, not loaded")
            + "); classes from aihwkit.inference.noise.pcm / .hermes"
        )
    else:
        err = (probe.stderr.strip().splitlines() or ["?"])[-1]
        import aihwkit  # pure python: reads VERSION.txt only

        inf = types.ModuleType("aihwkit.inference")
        inf.__path__ = [os.path.join(os.path.dirname(aihwkit.__file__), "inference")]
        inf.__package__ = "aihwkit.inference"
        sys.modules["aihwkit.inference"] = inf
        aihwkit.inference = inf
        pcm = importlib.import_module("aihwkit.inference.noise.pcm")
        hermes = importlib.import_module("aihwkit.inference.noise.hermes")
        PCMLikeNoiseModel = pcm.PCMLikeNoiseModel
        HermesNoiseModel = hermes.HermesNoiseModel
        how = (
            "fallback: 'import aihwkit.inference' failed (" + err[:200] + "); real files "
            "aihwkit/inference/{converter/base,converter/conductance,noise/base,noise/pcm,"
            "noise/hermes}.py imported unmodified with aihwkit.inference registered as an "
            "empty package (its __init__ skipped)"
        )
    print("aihwkit load:", how)
    return aihwkit.__version__, how, PCMLikeNoiseModel, HermesNoiseModel


def model_stats(model, seed_base):
    g_max = float(model.g_max)
    t0 = float(model.t_0)
    bins = []
    for i, frac in enumerate(G_FRACTIONS):
        torch.manual_seed(seed_base + i)
        g_target = torch.full((N_SAMPLES,), frac * g_max, dtype=torch.float32, device=DEVICE)
        g_prog = model.apply_programming_noise_to_conductance(g_target.clone())
        nu = model.generate_drift_coefficients(g_target.clone())
        pm, ps = mean_std(g_prog - g_target)
        nm, ns = mean_std(nu)
        drift = []
        for t_inf in T_INFERENCE:
            factor = ((t_inf + t0) / t0) ** (-nu)
            g_final = model.apply_drift_noise_to_conductance(g_prog, nu, t_inf)
            fm, fs = mean_std(g_final)
            drift.append(
                {
                    "t_inference_s": t_inf,
                    "drift_factor_mean": mean_std(factor)[0],
                    "g_final_mean_us": fm,
                    "g_final_std_us": fs,
                }
            )
        bins.append(
            {
                "g_target_us": g_target[0].item(),
                "prog_mean_us": pm,
                "prog_std_us": ps,
                "nu_mean": nm,
                "nu_std": ns,
                "drift": drift,
            }
        )
    return {"g_max_us": g_max, "t0_s": t0, "t_read_s": float(model.t_read), "bins": bins}


# The AFM paper's programming-noise helper (shared/DESIGN.md section 3.2).
AFM_GMAX = 180.0
AFM_ZERO_BELOW = 0.6
AFM_SPLIT = 52.5
AFM_C_LO = (2.939751381126213e-05, -0.00371581208142707, 0.22419685954327148,
            2.5797410660159494)
AFM_C_HI = (1.2329755395573392e-05, -0.003054993405157235, 0.2453487119885723,
            2.110295720240385)


def afm_sigma(a):
    lo = AFM_C_LO[0] * a**3 + AFM_C_LO[1] * a**2 + AFM_C_LO[2] * a + AFM_C_LO[3]
    hi = AFM_C_HI[0] * a**3 + AFM_C_HI[1] * a**2 + AFM_C_HI[2] * a + AFM_C_HI[3]
    return torch.where(a <= AFM_SPLIT, lo, hi)


def afm_program_scaled(w):
    """w already on the |w| <= GMAX scale: |w| < 0.6 -> 0, else w + N(0,1) sigma(|w|)."""
    a = w.abs()
    noisy = w + torch.randn_like(w) * afm_sigma(a)
    return torch.where(a < AFM_ZERO_BELOW, torch.zeros_like(w), noisy)


def afm_program(weight):
    """Full helper on an (out x in<=512) tile: per output channel scale to GMAX and back."""
    scale = AFM_GMAX / weight.abs().amax(dim=1, keepdim=True).clamp_min(1e-30)
    return afm_program_scaled(weight * scale) / scale


def pcm_afm_stats(seed_base):
    bins = []
    for i, wv in enumerate([0.3, 1.0, 5.0, 20.0, 52.0, 53.0, 100.0, 150.0, 180.0]):
        torch.manual_seed(seed_base + i)
        w = torch.full((N_SAMPLES,), wv, dtype=torch.float32, device=DEVICE)
        d = afm_program_scaled(w) - w
        m, s = mean_std(d)
        sigma = 0.0 if wv < AFM_ZERO_BELOW else afm_sigma(torch.tensor(wv, dtype=torch.float64))
        bins.append({"w": wv, "prog_mean": m, "prog_std": s, "sigma": float(sigma)})
    # smoke test of the full per-channel helper: max |w| maps to GMAX and back
    torch.manual_seed(seed_base + 100)
    tile = torch.randn(4, 512)
    assert afm_program(tile).shape == tile.shape
    return {"gmax": AFM_GMAX, "zero_below": AFM_ZERO_BELOW, "split": AFM_SPLIT, "bins": bins}


def noise_stats(out_dir, force_fallback=False):
    version, how, PCMLikeNoiseModel, HermesNoiseModel = load_aihwkit_noise(force_fallback)
    models = {
        "pcm_aihwkit": model_stats(PCMLikeNoiseModel(g_max=25.0), 2000),
        "hermes_1": model_stats(HermesNoiseModel(num_devices=1), 3000),
        "hermes_2": model_stats(HermesNoiseModel(num_devices=2), 4000),
        "pcm_afm": pcm_afm_stats(5000),
    }
    for name in ("pcm_aihwkit", "hermes_1", "hermes_2"):
        m = models[name]
        print(f"{name}: g_max={m['g_max_us']} t0={m['t0_s']} t_read={m['t_read_s']}")
        for b in m["bins"]:
            d = b["drift"]
            print(f"  g={b['g_target_us']:8.4f} prog {b['prog_mean_us']:+.4f}+-"
                  f"{b['prog_std_us']:.4f} nu {b['nu_mean']:.4f}+-{b['nu_std']:.4f} "
                  f"df(1h) {d[0]['drift_factor_mean']:.4f} gf(1y) {d[2]['g_final_mean_us']:.4f}"
                  f"+-{d[2]['g_final_std_us']:.4f}")
    for b in models["pcm_afm"]["bins"]:
        print(f"  pcm_afm w={b['w']}: {b['prog_mean']:+.4f} +- {b['prog_std']:.4f} "
              f"(sigma {b['sigma']:.4f})")
    out = {
        "generator": GENERATOR,
        "versions": {
            "aihwkit": version,
            "aihwkit_load": how,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": sys.version.split()[0],
        },
        "samples_per_bin": N_SAMPLES,
        "std": "population (ddof 0), statistics in float64 over float32 samples",
        "models": models,
    }
    with open(os.path.join(out_dir, "noise_stats.json"), "w") as f:
        json.dump(sig6(out), f, indent=1)
        f.write("\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--aihwkit-fallback", action="store_true",
                    help="load aihwkit's noise files by path even if aihwkit.inference imports")
    ap.add_argument("--only", choices=["lightning", "noise"], default=None)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.only in (None, "lightning"):
        lightning_forward(args.out)
    if args.only in (None, "noise"):
        noise_stats(args.out, args.aihwkit_fallback)
    print("wrote", sorted(os.listdir(args.out)))


if __name__ == "__main__":
    main()
