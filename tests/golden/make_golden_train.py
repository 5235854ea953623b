"""Golden training-mode forward and gradients of aihwkit-lightning 2.1.0's AnalogLinear
(its PyTorch path, ``TorchLinear``), for ``tests/integration/train_golden.rs``.

Writes ``lightning_train.safetensors`` + ``lightning_train.json`` into tests/golden/ (or
--out DIR). Per case: ``<case>.x`` (tokens x in), ``.w`` (out x in), ``.b`` (out, optional),
``.ranges`` (input range per slice before the forward), ``.g`` (the upstream gradient dL/dy;
the loss is sum(y * g)), and lightning's ``.y``, ``.gx``, ``.gw``, ``.gb``, ``.granges``
(dL/d input ranges) and ``.ranges_after`` (the ranges after the forward: the data
initialization changes them in the "init" case).

Config: the AFM release layer without its random parts: 8-bit DAC (inp_res 254), 8-bit ADC
(out_res 254, out_bound 14, per-channel w_max: LAYER_GAUSSIAN_PER_CHANNEL), learned input
ranges (decay 0.01, input_min_percentage 0.95), max_input_size 512, no weight noise and no
output noise (their draws cannot match another generator; the Rust tests check their
statistics instead). Training mode (``layer.train()``).

Cases reuse make_golden.py's data (inputs nudged away from DAC ties, ADC margins) so that a
float32 sum in another order cannot move a rounding step:
  ragged: 1100 inputs (3 slices), 96 outputs, 16 tokens, bias; ranges 2.5, 1.7, 3.1 (some
          inputs clip, the planted edges include inputs exactly at +-range);
  single: 300 inputs (1 slice), 33 outputs, 5 tokens;
  init:   the "single" data with init_from_data 5 and the range starting at 0: the forward
          first sets it to 18 * std(x) (init_std_alpha 18), then runs.

Command (Python 3.12 with torch 2.11, numpy, safetensors; aihwkit-lightning installed without
dependencies, e.g. into /tmp/site):

    PYTHONPATH=/tmp/site:tests/golden python3 tests/golden/make_golden_train.py
"""

import argparse
import json
import os

import make_golden as mg  # noqa: E402  (blocks triton, sets float32 CPU defaults)
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

CASES = [
    # name, in, out, tokens, bias, ranges, data seed (make_golden's case index), init batches
    ("ragged", 1100, 96, 16, True, [2.5, 1.7, 3.1], 0, 0),
    ("single", 300, 33, 5, False, [2.0], 2, 0),
    ("init", 300, 33, 5, False, [2.0], 2, 5),
]


def rpu_config(init_from_data):
    rpu = mg.make_rpu_config()
    ir = rpu.pre_post.input_range
    ir.learn_input_range = True
    ir.decay = 0.01
    ir.input_min_percentage = 0.95
    ir.init_from_data = init_from_data
    ir.init_std_alpha = 18.0
    return rpu


def main():
    from aihwkit_lightning.nn import AnalogLinear
    import aihwkit_lightning

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    out = ap.parse_args().out
    tensors, meta = {}, {}
    for name, n_in, n_out, tokens, has_bias, ranges, data_idx, init in CASES:
        rpu = rpu_config(init)
        layer = AnalogLinear(n_in, n_out, bias=has_bias, dtype=torch.float32, rpu_config=rpu)
        sizes = list(layer.in_sizes)
        w, b, x, _ = mg.make_case_data(
            n_in, n_out, tokens, has_bias, ranges, sizes, seed=1000 + data_idx
        )
        layer.set_weights_and_biases(w, b)
        start = [0.0] * len(sizes) if init else ranges
        layer.input_range.data = torch.tensor(start, dtype=torch.float32)
        layer.train()
        gen = torch.Generator().manual_seed(77 + data_idx)
        g = torch.randn(tokens, n_out, generator=gen)
        xg = x.clone().requires_grad_(True)
        y = layer(xg)
        (y * g).sum().backward()
        p = f"{name}."
        tensors[p + "x"] = x
        tensors[p + "w"] = w
        if b is not None:
            tensors[p + "b"] = b
            tensors[p + "gb"] = layer.bias.grad.detach().clone()
        tensors[p + "ranges"] = torch.tensor(start, dtype=torch.float32)
        tensors[p + "g"] = g
        tensors[p + "y"] = y.detach().clone()
        tensors[p + "gx"] = xg.grad.detach().clone()
        tensors[p + "gw"] = layer.weight.grad.detach().clone()
        tensors[p + "granges"] = layer.input_range.grad.detach().clone()
        tensors[p + "ranges_after"] = layer.input_range.data.detach().clone()
        meta[name] = {
            "in": n_in, "out": n_out, "tokens": tokens, "bias": has_bias, "slices": sizes,
            "init_from_data": init, "ranges_after": layer.input_range.data.tolist(),
            "granges": layer.input_range.grad.tolist(),
        }
        print(name, sizes, "granges", layer.input_range.grad.tolist(),
              "ranges_after", layer.input_range.data.tolist())
    save_file({k: v.contiguous() for k, v in tensors.items()},
              os.path.join(out, "lightning_train.safetensors"))
    meta["versions"] = {"aihwkit_lightning": aihwkit_lightning.__version__,
                        "torch": torch.__version__}
    meta["generator"] = "tests/golden/make_golden_train.py"
    with open(os.path.join(out, "lightning_train.json"), "w") as f:
        json.dump(meta, f, indent=1)


if __name__ == "__main__":
    main()
