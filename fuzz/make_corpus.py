#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets into fuzz/corpus/<target>/ (deterministic).

Real files where the repository has small ones (tile presets, sweep files, the tiny models'
config.json); small crafted ones elsewhere: a tiny Llama GGUF (f32 and Q8_0 tensors, a BPE
tokenizer in its metadata) and its header cuts, safetensors files of every common dtype, a token
shard index as `afm datagen` writes it, and task JSONL files of the five formats.
Run from anywhere: python3 fuzz/make_corpus.py
"""
import json
import shutil
import struct
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fuzz" / "corpus"


def put(target, name, data):
    d = OUT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def copy(target, src, name=None):
    put(target, name or src.name, src.read_bytes())


# --- presets and sweeps: the shipped files -------------------------------------------------
for p in sorted((ROOT / "tiles").glob("*.toml")):
    copy("preset", p)
for p in sorted((ROOT / "tiles" / "sweeps").glob("*.toml")):
    copy("sweep", p)
put("sweep", "points.toml", 'name = "p"\nbase = "hermes"\nmodel = "m"\ntasks = ["t.txt"]\n'
    'seeds = 2\n[[points]]\n"adc.bits" = 6\n"device.noise_scale" = 0.5\n[[points]]\n'
    '"tile.rows" = 64\ndrift_time_s = 3600.0\n')

# --- HF model-folder JSON -------------------------------------------------------------------
for m in ["tiny-llama", "tiny-llama-tied", "tiny-phi3"]:
    copy("hf_config", ROOT / "tests/golden/executor" / m / "config.json", f"{m}.json")
copy("hf_config", ROOT / "tests/golden/executor/smollm2/hf_config.json", "smollm2.json")
put("hf_config", "index.json", json.dumps({
    "metadata": {"total_size": 1024},
    "weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                   "lm_head.weight": "model-00002-of-00002.safetensors"}}, indent=2))


# --- safetensors ----------------------------------------------------------------------------
def safetensors(tensors, meta=None):
    header, data = {}, b""
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if meta:
        header["__metadata__"] = meta
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


f32 = lambda xs: struct.pack(f"<{len(xs)}f", *xs)
put("safetensors", "f32.safetensors", safetensors(
    [("w", "F32", [2, 3], f32([0.5, -1, 2, 3, -4, 5])), ("b", "F32", [3], f32([1, 2, 3]))],
    {"format": "pt"}))
put("safetensors", "dtypes.safetensors", safetensors([
    ("h", "F16", [2, 2], struct.pack("<4e", 1, -2, 0.5, 4)),
    ("bf", "BF16", [4], bytes([0x80, 0x3f, 0, 0x40, 0, 0xc0, 0x80, 0xbf])),
    ("i", "I64", [2], struct.pack("<2q", -7, 9)),
    ("u", "U8", [3], bytes([1, 2, 255])),
    ("u32", "U32", [1, 2], struct.pack("<2I", 7, 8)),
    ("d", "F64", [1], struct.pack("<d", 3.25)),
    ("scalar", "F32", [], f32([1.5])),
    ("empty", "F32", [0, 4], b""),
]))

# --- GGUF -----------------------------------------------------------------------------------
S = lambda s: struct.pack("<Q", len(s.encode())) + s.encode()
KV_TYPES = {"u32": 4, "i32": 5, "f32": 6, "bool": 7, "str": 8, "arr": 9, "u64": 10}


def kv(key, kind, value):
    b = S(key) + struct.pack("<I", KV_TYPES[kind])
    if kind == "u32":
        return b + struct.pack("<I", value)
    if kind == "i32":
        return b + struct.pack("<i", value)
    if kind == "u64":
        return b + struct.pack("<Q", value)
    if kind == "f32":
        return b + struct.pack("<f", value)
    if kind == "bool":
        return b + struct.pack("<?", value)
    if kind == "str":
        return b + S(value)
    et, items = value  # array: (element kind, items)
    b += struct.pack("<IQ", KV_TYPES[et], len(items))
    for it in items:
        b += S(it) if et == "str" else struct.pack("<i" if et == "i32" else "<I", it)
    return b


def q8_0(rows, cols, seed):
    """Q8_0 blocks of 32: an f16 scale and 32 int8 values per block."""
    out = b""
    for r in range(rows):
        for blk in range(cols // 32):
            out += struct.pack("<e", 0.01 * (1 + (r + blk + seed) % 5))
            out += bytes(((r * 7 + i * 3 + seed) % 41) - 20 & 0xFF for i in range(32))
    return out


def gguf(h, heads, kv_heads, ff, q8, version=3):
    tokens = ["<s>", "</s>", "a", "b", "ab", "\u0120a", "c", "abc"]
    v = len(tokens)
    meta = [
        kv("general.architecture", "str", "llama"),
        kv("general.alignment", "u32", 32),
        kv("llama.embedding_length", "u32", h),
        kv("llama.attention.head_count", "u32", heads),
        kv("llama.attention.head_count_kv", "u32", kv_heads),
        kv("llama.block_count", "u32", 1),
        kv("llama.feed_forward_length", "u32", ff),
        kv("llama.context_length", "u32", 64),
        kv("llama.attention.layer_norm_rms_epsilon", "f32", 1e-5),
        kv("llama.rope.freq_base", "f32", 10000.0),
        kv("tokenizer.ggml.model", "str", "gpt2"),
        kv("tokenizer.ggml.pre", "str", "smollm"),
        kv("tokenizer.ggml.tokens", "arr", ("str", tokens)),
        kv("tokenizer.ggml.token_type", "arr", ("i32", [3, 3] + [1] * (v - 2))),
        kv("tokenizer.ggml.merges", "arr", ("str", ["a b", "ab c"])),
        kv("tokenizer.ggml.bos_token_id", "u32", 0),
        kv("tokenizer.ggml.eos_token_id", "u32", 1),
        kv("tokenizer.ggml.add_space_prefix", "bool", False),
        kv("tokenizer.chat_template", "str",
           "{% for m in messages %}{{ m['content'] }}{% endfor %}"),
    ]
    hd = h // heads
    tensors = []  # (name, ggml dims (innermost first), type, bytes)

    def add(name, rows, cols, seed):
        if q8 and cols % 32 == 0 and rows > 1:
            tensors.append((name, [cols, rows], 8, q8_0(rows, cols, seed)))
        else:
            xs = [((i * 13 + seed) % 17 - 8) / 16 for i in range(rows * cols)]
            dims = [cols, rows] if rows > 1 else [cols]
            tensors.append((name, dims, 0, f32(xs)))

    add("token_embd.weight", v, h, 1)
    add("output_norm.weight", 1, h, 2)
    add("blk.0.attn_q.weight", h, h, 3)
    add("blk.0.attn_k.weight", kv_heads * hd, h, 4)
    add("blk.0.attn_v.weight", kv_heads * hd, h, 5)
    add("blk.0.attn_output.weight", h, h, 6)
    add("blk.0.ffn_gate.weight", ff, h, 7)
    add("blk.0.ffn_up.weight", ff, h, 8)
    add("blk.0.ffn_down.weight", h, ff, 9)
    add("blk.0.attn_norm.weight", 1, h, 10)
    add("blk.0.ffn_norm.weight", 1, h, 11)
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(meta)) + b"".join(meta)
    offset, data = 0, b""
    for name, dims, t, raw in tensors:
        data += b"\0" * (-len(data) % 32)
        out += S(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
        out += struct.pack("<IQ", t, len(data))
        data += raw
    out += b"\0" * (-len(out) % 32)
    return out + data


tiny = gguf(8, 2, 1, 16, q8=False)
put("gguf", "tiny-f32.gguf", tiny)
put("gguf", "tiny-q8_0.gguf", gguf(32, 4, 2, 32, q8=True))
put("gguf", "header-v2.gguf", gguf(8, 2, 1, 16, q8=False, version=2)[:700])
put("gguf", "header-only.gguf", tiny[:400])
put("gguf", "magic.gguf", b"GGUF\x03\x00\x00\x00" + b"\0" * 16)

# --- token shard index (as afm datagen writes it) --------------------------------------------
put("shard_index", "index.json", json.dumps({
    "format": 1, "model": "tiny-llama", "seq_len": 64, "vocab_size": 256,
    "temperature": 1.0, "top_k": 50, "seed": 0, "target_rows": 128, "rows_per_shard": 64,
    "val_every": 100,
    "shards": [{"train": {"file": "train-00000.bin", "rows": 63},
                "val": {"file": "val-00000.bin", "rows": 1}},
               {"train": {"file": "train-00001.bin", "rows": 64}, "val": None}]}, indent=2))

# --- task JSONL, the five formats --------------------------------------------------------------
lines = lambda *objs: "".join(json.dumps(o) + "\n" for o in objs)
put("task_jsonl", "mc.jsonl", lines(
    {"query": "Question: 2+2?", "choices": ["3", "4"], "gold": 1},
    {"query": "Sky?", "choices": ["blue", "green", "red"], "gold": 0}) + "not json\n")
put("task_jsonl", "partial.jsonl", lines(
    {"context_options": ["The cat", "The dog"], "continuation": "barked.", "gold": 1}))
put("task_jsonl", "lambada.jsonl", lines(
    {"context": "He opened the", "continuation": "door"}, {"context": "x"}))
put("task_jsonl", "gsm8k.jsonl", lines(
    {"question": "Tom has 3 apples and buys 4. How many?",
     "answer": "3 + 4 = <<3+4=7>>7\n#### 7"}))
put("task_jsonl", "math.jsonl", lines(
    {"problem": "Compute $1+1$.", "answer": "2"}, {"problem": "x", "answer": "\\frac{1}{2}"}))

total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
print(f"{sum(1 for p in OUT.rglob('*') if p.is_file())} files, {total} bytes in {OUT}")
