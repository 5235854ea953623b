"""Issue 9's layer benchmark on one GPU, in one run: forward + backward of one analog training
layer with the AFM release config (8-bit DAC, 8-bit ADC with lambda 14, per-channel weight noise
0.03, 512-row tiles, learned input ranges, bf16), y = layer(x) then the backward of a fixed
upstream gradient g (torch: y.backward(g)), for d x d weights with d in
--dims and --tokens tokens, by
  - afm's fused CUDA path, its plain-tensor reference (through candle's autograd, loss
    sum(y * g)) and a plain candle matmul (`benches/train_layer.rs`, built with
    `--features cuda`; --afm-bench names the binary),
  - aihwkit-lightning 2.1.0's PyTorch path (TorchLinear) and its Triton path
    (AIHWKIT_USE_TRITON=1), installed with --no-deps over the machine's torch,
  - a plain PyTorch bf16 nn.Linear (the floor).
Medians of --reps timed repetitions (CUDA events) after --warmup; prints a markdown table with
the ratios ours / lightning and ours / plain and writes every measurement to --json. With
--rounds N the whole set (every binary, then torch) runs N times in turn: the table's times are
the medians over rounds, and a second table gives each round's ratios ours / torch's Linear
(side by side within a round), so a ratio near a target shows its spread, not one draw.

    python3 benches/train_layer_gpu.py --afm-bench BIN --json OUT.json \
        --dims 2048,4096,8192 --tokens 256,4096,16384
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

import torch


def release_rpu_config(init_from_data=0):
    """aihwkit-lightning's config for the AFM release recipe (also used by train_step_gpu.py)."""
    from aihwkit_lightning.simulator.configs import (
        TorchInferenceRPUConfig,
        WeightClipType,
        WeightNoiseInjectionType,
    )

    rpu = TorchInferenceRPUConfig()
    rpu.forward.inp_res = 254  # 8-bit DAC (levels -127..127)
    rpu.forward.out_res = 254  # 8-bit ADC
    rpu.forward.out_bound = 14.0
    rpu.forward.out_noise = 0.0
    rpu.clip.type = WeightClipType.LAYER_GAUSSIAN_PER_CHANNEL  # per-channel w_max for the ADC
    rpu.clip.sigma = 2.5
    rpu.modifier.noise_type = WeightNoiseInjectionType.ADD_NORMAL_PER_CHANNEL
    rpu.modifier.std_dev = 0.03
    rpu.mapping.max_input_size = 512
    ir = rpu.pre_post.input_range
    ir.enable = True
    ir.learn_input_range = True
    ir.decay = 0.01
    ir.input_min_percentage = 0.95
    ir.init_from_data = init_from_data
    ir.init_std_alpha = 18.0
    return rpu


def lightning_layer(d, dtype):
    from aihwkit_lightning.nn import AnalogLinear

    layer = AnalogLinear(d, d, bias=False, rpu_config=release_rpu_config(), dtype=dtype,
                         device="cuda")
    with torch.no_grad():
        layer.weight.normal_(0.0, d**-0.5)
        layer.input_range.fill_(3.0)
    layer.train()
    return layer


def time_step(step, reps, warmup):
    times = []
    for i in range(warmup + reps):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2], times[0]


def torch_rows(dims, tokens, reps, warmup):
    rows = []
    dtype = torch.bfloat16
    for d in dims:
        for t in tokens:
            x = torch.randn(t, d, device="cuda", dtype=dtype, requires_grad=True)
            g = torch.randn(t, d, device="cuda", dtype=dtype)
            plain = torch.nn.Linear(d, d, bias=False, device="cuda", dtype=dtype)
            layers = [("torch-bf16-linear", plain, None)]
            try:
                lt = lightning_layer(d, dtype)
                layers += [("lightning-torch", lt, None), ("lightning-triton", lt, "1")]
            except Exception as e:  # noqa: BLE001  (report, keep measuring the rest)
                rows.append({"path": "lightning", "dims": d, "tokens": t, "error": repr(e)})
            for name, layer, triton in layers:
                if triton is None:
                    os.environ.pop("AIHWKIT_USE_TRITON", None)
                else:
                    os.environ["AIHWKIT_USE_TRITON"] = triton

                def step():
                    x.grad = None
                    layer.zero_grad(set_to_none=True)
                    layer(x).backward(g)

                try:
                    med, best = time_step(step, reps, warmup)
                    rows.append({"path": name, "dims": d, "tokens": t, "median_ms": med,
                                 "min_ms": best})
                except Exception as e:  # noqa: BLE001
                    rows.append({"path": name, "dims": d, "tokens": t, "error": repr(e)[:300]})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            os.environ.pop("AIHWKIT_USE_TRITON", None)
            del x, g, layers
            torch.cuda.empty_cache()
    return rows


def afm_rows(binary, dims, tokens, reps, warmup, paths, label, extra=()):
    cmd = [binary, "--device", "cuda", "--dtype", "bf16", "--dims", ",".join(map(str, dims)),
           "--tokens", ",".join(map(str, tokens)), "--reps", str(reps), "--warmup", str(warmup),
           "--paths", paths, *extra]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    rows = []
    for line in out.stdout.splitlines():
        r = json.loads(line)
        r["path"] = label + r["path"]
        rows.append(r)
        print(line, file=sys.stderr, flush=True)
    return rows


def table(rows, dims, tokens):
    by = {}
    for r in rows:
        if r.get("median_ms") is not None:
            by.setdefault((r["path"], r["dims"], r["tokens"]), []).append(r["median_ms"])
    get = {k: statistics.median(v) for k, v in by.items()}
    cols = ["afm-fused", "afm-reference", "afm-plain", "lightning-torch", "lightning-triton",
            "torch-bf16-linear", "afm-baseline-fused", "afm-fused-cublas"]
    # fused / each of these
    over = ["lightning-torch", "lightning-triton", "torch-bf16-linear", "afm-baseline-fused",
            "afm-fused-cublas"]
    head = "| d | tokens | " + " | ".join(c + " (ms)" for c in cols) + " | "
    head += " | ".join("fused / " + c for c in over) + " |"
    lines = [head, "|" + "---:|" * (len(cols) + len(over) + 2)]
    for d in dims:
        for t in tokens:
            v = {c: get.get((c, d, t)) for c in cols}
            cell = ["%.3f" % v[c] if v[c] is not None else "–" for c in cols]

            def ratio(a, b):
                return "%.2f" % (a / b) if a is not None and b else "–"

            lines.append(f"| {d} | {t} | " + " | ".join(cell) + " | "
                         + " | ".join(ratio(v["afm-fused"], v[c]) for c in over) + " |")
    return "\n".join(lines)


def round_table(rows, dims, tokens, rounds):
    """Each round's ours / torch's Linear (both measured in that round), then their median."""
    get = {(r["path"], r["dims"], r["tokens"], r.get("round", 0)): r.get("median_ms")
           for r in rows}
    head = "| d | tokens | " + " | ".join(f"round {k + 1}" for k in range(rounds))
    lines = [head + " | median | max |", "|" + "---:|" * (rounds + 4)]
    for d in dims:
        for t in tokens:
            ratios = []
            for k in range(rounds):
                ours = get.get(("afm-fused", d, t, k))
                plain = get.get(("torch-bf16-linear", d, t, k))
                ratios.append(ours / plain if ours is not None and plain else None)
            done = [r for r in ratios if r is not None]
            cells = ["%.2f" % r if r is not None else "–" for r in ratios]
            summary = (["%.2f" % statistics.median(done), "%.2f" % max(done)] if done
                       else ["–", "–"])
            lines.append(f"| {d} | {t} | " + " | ".join(cells + summary) + " |")
    return "fused / torch-bf16-linear per round\n" + "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--afm-bench", required=True)
    ap.add_argument("--dims", default="2048,4096,8192")
    ap.add_argument("--tokens", default="256,4096,16384")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json", required=True)
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run every binary and torch this many times in turn (median of rounds)")
    ap.add_argument("--afm-paths", default="fused,reference,plain",
                    help="paths of the afm binary to time (the reference is slow; fused-cublas: "
                         "the fused layer with cuBLAS's product and the separate ADC kernel)")
    ap.add_argument("--baseline-bench",
                    help="a second afm binary (an earlier commit) whose fused path is timed in "
                         "the same run, as afm-baseline-fused")
    ap.add_argument("--afm-variant", action="append", default=[], metavar="NAME=ARGS",
                    help="the afm binary's paths again with extra arguments (e.g. "
                         "keep=--pool-keep-gb 64), as afm-NAME-PATH rows")
    a = ap.parse_args()
    dims = [int(v) for v in a.dims.split(",")]
    tokens = [int(v) for v in a.tokens.split(",")]
    rows = []
    for k in range(a.rounds):
        rnd = afm_rows(a.afm_bench, dims, tokens, a.reps, a.warmup, a.afm_paths, "afm-")
        for v in a.afm_variant:
            name, extra = v.split("=", 1)
            rnd += afm_rows(a.afm_bench, dims, tokens, a.reps, a.warmup, a.afm_paths,
                            f"afm-{name}-", extra.split())
        if a.baseline_bench:
            rnd += afm_rows(a.baseline_bench, dims, tokens, a.reps, a.warmup, "fused",
                            "afm-baseline-")
        if not a.skip_torch:
            rnd += torch_rows(dims, tokens, a.reps, a.warmup)
        for r in rnd:
            r["round"] = k
        rows += rnd
    meta = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
            "command": " ".join(sys.argv)}
    try:
        import aihwkit_lightning
        meta["aihwkit_lightning"] = getattr(aihwkit_lightning, "__version__", "2.1.0")
    except ImportError:
        pass
    with open(a.json, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print(table(rows, dims, tokens))
    if a.rounds > 1 and not a.skip_torch:
        print()
        print(round_table(rows, dims, tokens, a.rounds))


if __name__ == "__main__":
    main()
