"""Issue 9 item 3, the peer's side: tokens/s of one hardware-aware distillation step of
SmolLM2-135M-Instruct with aihwkit-lightning 2.1.0 (its PyTorch path) on HF transformers, the
recipe `afm train --tiles afm-paper` runs (benches/RESULTS.md has our side, measured in the same
machine session): every projection and lm_head analog (8-bit DAC with learned ranges, 8-bit ADC
at lambda 14, per-channel weight noise 0.03, 512-row tiles, clipping at 2.5 std after each
step), loss KL(teacher || student) on the logits, teacher = the frozen original, AdamW
(0.9, 0.98, eps 1e-6, weight decay 0.01), grad-norm clip 1.0, f32 weights with TF32 matmuls,
batch 8 x 512 random token rows (the speed does not depend on the text).

    python3 benches/train_step_gpu.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf [--steps 25]

Prints one JSON line: median tokens/s over the steps after the first 5.
"""

import argparse
import copy
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F

from train_layer_gpu import release_rpu_config


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    a = ap.parse_args()
    os.environ.pop("AIHWKIT_USE_TRITON", None)
    from transformers import AutoModelForCausalLM
    from aihwkit_lightning.nn.conversion import convert_to_analog
    from aihwkit_lightning.optim import AnalogOptimizer

    torch.backends.cuda.matmul.allow_tf32 = True
    folder, name = os.path.split(os.path.abspath(a.gguf))
    teacher = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32)
    teacher = teacher.cuda().eval()
    student = copy.deepcopy(teacher)
    if student.config.tie_word_embeddings:
        # An analog lm_head is its own matrix, as on a chip (afm train does the same).
        student.lm_head.weight = torch.nn.Parameter(student.lm_head.weight.detach().clone())
    student = convert_to_analog(student, release_rpu_config(init_from_data=5))
    student.train()
    for n, p in student.named_parameters():
        p.requires_grad_("embed_tokens" not in n and "norm" not in n)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = AnalogOptimizer(torch.optim.AdamW, student.analog_layers, params, lr=5e-5,
                          betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
    vocab = teacher.config.vocab_size
    gen = torch.Generator(device="cuda").manual_seed(0)
    rates = []
    for step in range(a.steps):
        ids = torch.randint(0, vocab, (a.batch, a.seq), device="cuda", generator=gen)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad():
            t_logits = teacher(ids).logits
        s_logits = student(ids).logits
        loss = F.kl_div(F.log_softmax(s_logits.float(), -1), F.log_softmax(t_logits.float(), -1),
                        log_target=True, reduction="batchmean") / a.seq
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        torch.cuda.synchronize()
        rates.append(a.batch * a.seq / (time.perf_counter() - t0))
    print(json.dumps({"path": "lightning-torch + HF transformers", "steps": a.steps,
                      "median_tokens_per_s": statistics.median(rates[5:]),
                      "last_loss": float(loss), "device": torch.cuda.get_device_name(0),
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
