"""GGUF, llama.cpp's model file, written from a fox1 export, so the engine an edge user runs reads our models.

llama.cpp's own converter (convert_hf_to_gguf.py) refuses a byte-level BPE trained here: it recognises one by
hashing the ids it gives a fixed probe text and looking the hash up in a table of known models, and a new vocabulary
has new ids ("BPE pre-tokenizer was not recognized"), however its tokenizer.json is written. A downloaded Fox-1
folder it converts into a file that tokenizes differently (no tokenizer.model there, so every token is scored
alike; a fox1 export of that tokenizer carries one: fox1/sentencepiece_model.py). Both are tokenizers llama.cpp
runs, though: fox1's split rule is its "qwen2" pre-tokenizer (the contractions and newline runs are spelled
differently; they match the same text), and SentencePiece merging, given the right scores, is Hugging Face's BPE.
So this module writes the file itself, with the tensors laid out as the converter lays out a Llama: its tensor
names, the q / k rows permuted from Hugging Face's rotate-half RoPE order to llama.cpp's adjacent pairs, norms in
f32, and no output matrix (llama.cpp reuses the embedding, as Fox-1 ties them). Q8_0 / Q4_0 files are then
llama.cpp's own `llama-quantize` of the f32 one.

    python -m fox1.gguf out/export out/fox1-f32.gguf                  # --dtype bf16 / f16 for a smaller file
    python -m fox1.gguf path/to/Fox-1-1.6B fox-1-1.6b-bf16.gguf --dtype bf16     # the released model
    llama-quantize out/fox1-f32.gguf out/fox1-q8_0.gguf Q8_0
"""
from __future__ import annotations

import argparse
import math
import struct
import sys
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import torch

from fox1.files import InputError, write_atomic
from fox1.hf_llama import CheckpointError, checkpoint_tokens, read_config, read_tensor, safetensors_files
from fox1.hf_tokenizer import read_tokenizer_json
from fox1.sentencepiece_model import merge_texts, sentencepiece_scores, token_table

ALIGNMENT = 32  # GGUF's default: every tensor starts at a multiple of it
VALUE_TYPES = {"u32": 4, "i32": 5, "f32": 6, "bool": 7, "str": 8, "array": 9}
STRUCT_FORMATS = {"u32": "<I", "i32": "<i", "f32": "<f", "bool": "<?"}
TENSOR_TYPES = {"f32": (0, torch.float32), "f16": (1, torch.float16), "bf16": (30, torch.bfloat16)}
FILE_TYPES = {"f32": 0, "f16": 1, "bf16": 32}  # general.file_type: "all F32", "mostly F16", "mostly BF16"

# The split patterns each llama.cpp pre-tokenizer implements, by the name a GGUF file gives it. tests/test_gguf.py
# checks that fox1's DEFAULT_PATTERN is listed, and llama-tokenize checks the ids (NOTES.md).
LLAMA_CPP_SPLITS = {
    "qwen2": (
        r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+""",
        r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
    ),
}

# Hugging Face Llama tensor names -> llama.cpp's ({i}: the layer)
TENSOR_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "model.layers.{i}.input_layernorm.weight": "blk.{i}.attn_norm.weight",
    "model.layers.{i}.self_attn.q_proj.weight": "blk.{i}.attn_q.weight",
    "model.layers.{i}.self_attn.k_proj.weight": "blk.{i}.attn_k.weight",
    "model.layers.{i}.self_attn.v_proj.weight": "blk.{i}.attn_v.weight",
    "model.layers.{i}.self_attn.o_proj.weight": "blk.{i}.attn_output.weight",
    "model.layers.{i}.post_attention_layernorm.weight": "blk.{i}.ffn_norm.weight",
    "model.layers.{i}.mlp.gate_proj.weight": "blk.{i}.ffn_gate.weight",
    "model.layers.{i}.mlp.up_proj.weight": "blk.{i}.ffn_up.weight",
    "model.layers.{i}.mlp.down_proj.weight": "blk.{i}.ffn_down.weight",
}


def write_gguf(folder: Path, path: Path, dtype: str = "f32") -> None:
    """A fox1 export folder (config.json, model.safetensors, tokenizer.json) -> one GGUF file, written atomically
    and one tensor at a time (a 1.6B model never sits in memory twice)."""
    folder = Path(folder)
    fields, _ = read_config(folder / "config.json")
    metadata = model_metadata(fields, folder, dtype) | tokenizer_metadata(folder, fields["vocab_size"])
    write_atomic(path, gguf_chunks(metadata, llama_cpp_tensors(folder, fields, dtype)))


def model_metadata(fields: dict, folder: Path, dtype: str) -> dict[str, tuple[str, object]]:
    """general.* and llama.* keys: the architecture and its hyperparameters, as (GGUF type, value)."""
    return {
        "general.architecture": ("str", "llama"), "general.name": ("str", f"fox1 {folder.resolve().name}"),
        "general.file_type": ("u32", FILE_TYPES[dtype]), "general.alignment": ("u32", ALIGNMENT),
        "llama.vocab_size": ("u32", fields["vocab_size"]), "llama.context_length": ("u32", fields["context_len"]),
        "llama.embedding_length": ("u32", fields["hidden_size"]), "llama.block_count": ("u32", fields["num_layers"]),
        "llama.feed_forward_length": ("u32", fields["intermediate_size"]),
        "llama.attention.head_count": ("u32", fields["num_heads"]),
        "llama.attention.head_count_kv": ("u32", fields["num_kv_heads"]),
        "llama.attention.key_length": ("u32", fields["head_dim"]),
        "llama.attention.value_length": ("u32", fields["head_dim"]),
        "llama.rope.dimension_count": ("u32", fields["head_dim"]),
        "llama.rope.freq_base": ("f32", fields["rope_theta"]),
        "llama.attention.layer_norm_rms_epsilon": ("f32", fields["norm_eps"]),
    }


def tokenizer_metadata(folder: Path, vocab_size: int) -> dict[str, tuple[str, object]]:
    """tokenizer.ggml.* keys: tokens in id order (padded to the model's vocabulary), their types, the special ids
    and how llama.cpp is to tokenize them (one of the two BPE layouts below)."""
    path = folder / "tokenizer.json"
    spec, _ = read_tokenizer_json(path)
    tokens, types = token_table(path, spec, vocab_size)
    keys = (sentencepiece_layout(path, spec, tokens, types) if spec["model"].get("byte_fallback")
            else byte_level_layout(path, spec))
    ids = special_ids(folder)
    return {"tokenizer.ggml.tokens": ("array", ("str", tokens)), "tokenizer.ggml.token_type": ("array", ("i32", types)),
            **keys, "tokenizer.ggml.add_bos_token": ("bool", True), "tokenizer.ggml.add_eos_token": ("bool", False),
            **{f"tokenizer.ggml.{key}": ("u32", value) for key, value in ids.items()}}


def byte_level_layout(path: Path, spec: dict) -> dict:
    """fox1's own tokenizer: byte-level BPE after a split pattern. llama.cpp merges by the same ranks, after the
    pre-tokenizer that splits as our pattern does (LLAMA_CPP_SPLITS)."""
    try:
        pattern = spec["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"]
    except (KeyError, IndexError, TypeError):
        raise InputError(f"{path}: a byte-level BPE tokenizer.json without a split pattern (fox1 writes one)")
    pre = next((name for name, patterns in LLAMA_CPP_SPLITS.items() if pattern in patterns), None)
    if pre is None:
        raise InputError(f"{path}: llama.cpp has no pre-tokenizer with this split pattern, so its ids would differ")
    return {"tokenizer.ggml.model": ("str", "gpt2"), "tokenizer.ggml.pre": ("str", pre),
            "tokenizer.ggml.merges": ("array", ("str", merge_texts(spec)))}


def sentencepiece_layout(path: Path, spec: dict, tokens: list[str], types: list[int]) -> dict:
    """The released Fox-1's tokenizer: SentencePiece converted to BPE, spaces as "▁", byte fallback. llama.cpp
    tokenizes it as SentencePiece does, by token scores (fox1/sentencepiece_model.py)."""
    scores, prefix = sentencepiece_scores(path, spec, tokens, types)
    return {"tokenizer.ggml.model": ("str", "llama"), "tokenizer.ggml.pre": ("str", "default"),
            "tokenizer.ggml.scores": ("array", ("f32", scores)), "tokenizer.ggml.add_space_prefix": ("bool", prefix)}


def special_ids(folder: Path) -> dict[str, int]:
    """bos / eos ids as the export records them (`checkpoint_tokens`); a second eos (the chat model's
    <end_of_turn>) becomes llama.cpp's end-of-turn token."""
    tokens = checkpoint_tokens(folder)
    ids = {"bos_token_id": tokens.bos_id, **dict(zip(("eos_token_id", "eot_token_id"), tokens.eos_ids))}
    return {key: value for key, value in ids.items() if value is not None}


def llama_cpp_tensors(folder: Path, fields: dict, dtype: str) -> dict[str, tuple[list[int], torch.dtype, Callable]]:
    """{llama.cpp name: (shape, dtype, a function reading the tensor)} of every weight: matrices in `dtype`, norms
    in f32, lm_head skipped (tied). Shapes come from the safetensors headers; nothing is read until it is written."""
    from safetensors import safe_open

    templates = {hf.replace("{i}", str(i)): ours.replace("{i}", str(i))
                 for hf, ours in TENSOR_NAMES.items() for i in range(fields["num_layers"])}
    files = safetensors_files(folder)
    missing = sorted(set(templates) - set(files))
    if missing:
        raise CheckpointError(f"{folder}: tensor {missing[0]} not found")
    shapes = {}
    for path in set(files.values()):  # each file's header once
        with safe_open(str(path), "pt") as f:
            shapes.update((hf, list(f.get_slice(hf).get_shape())) for hf in f.keys())
    return {name: (shapes[hf], torch.float32 if len(shapes[hf]) == 1 else TENSOR_TYPES[dtype][1],
                   partial(_read_for_llama_cpp, files[hf], hf, fields)) for hf, name in templates.items()}


def _read_for_llama_cpp(path: Path, hf: str, fields: dict) -> torch.Tensor:
    tensor = read_tensor(path, hf, torch.float32)
    if ".q_proj." in hf or ".k_proj." in hf:
        tensor = rope_pairs_adjacent(tensor, fields["num_heads"] if ".q_proj." in hf else fields["num_kv_heads"])
    return tensor


def rope_pairs_adjacent(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of a q / k projection reordered from rotate-half RoPE (dimension j pairs with j + head_dim/2) to
    llama.cpp's (2j pairs with 2j+1), within each head: the same attention, as llama.cpp's converter does."""
    return weight.reshape(heads, 2, -1, weight.size(1)).transpose(1, 2).reshape(weight.shape)


def gguf_chunks(metadata: dict[str, tuple[str, object]], tensors: dict[str, tuple[list[int], torch.dtype, Callable]]
                ) -> Iterator[bytes]:
    """The file: header, metadata, tensor descriptions (shape innermost first, type, offset), then the data."""
    header = [b"GGUF", struct.pack("<IQQ", 3, len(tensors), len(metadata))]
    header += [_string(key) + _value(kind, value) for key, (kind, value) in metadata.items()]
    offset = 0
    for name, (shape, dtype, _) in tensors.items():
        kind = next(code for code, type_ in TENSOR_TYPES.values() if type_ == dtype)
        header.append(_string(name) + struct.pack(f"<I{len(shape)}Q", len(shape), *shape[::-1])
                      + struct.pack("<IQ", kind, offset))
        offset += _padded(math.prod(shape) * dtype.itemsize)
    head = b"".join(header)
    yield head + bytes(_padded(len(head)) - len(head))
    for shape, dtype, read in tensors.values():
        data = read().to(dtype).contiguous().view(torch.uint8).numpy().tobytes()
        yield data + bytes(_padded(len(data)) - len(data))


def _padded(size: int) -> int:
    return (size + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


def _string(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack("<Q", len(data)) + data


def _value(kind: str, value: object) -> bytes:
    if kind == "str":
        return struct.pack("<I", VALUE_TYPES["str"]) + _string(value)
    if kind == "array":
        item_kind, items = value
        body = (b"".join(map(_string, items)) if item_kind == "str"
                else struct.pack(f"<{len(items)}{STRUCT_FORMATS[item_kind][1]}", *items))
        return struct.pack("<IIQ", VALUE_TYPES["array"], VALUE_TYPES[item_kind], len(items)) + body
    return struct.pack("<I", VALUE_TYPES[kind]) + struct.pack(STRUCT_FORMATS[kind], value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="then: llama-quantize OUT.gguf OUT-q8_0.gguf Q8_0 (or Q4_0)")
    parser.add_argument("folder", type=Path,
                        help="a fox1 export (train.py's out/export or out/export-sft) or a downloaded Fox-1 folder")
    parser.add_argument("out", type=Path, help="the .gguf file to write")
    parser.add_argument("--dtype", choices=list(TENSOR_TYPES), default="f32", help="matrices' type (default: f32)")
    args = parser.parse_args(argv)
    try:
        write_gguf(args.folder, args.out, args.dtype)
    except (InputError, CheckpointError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{args.out}: {args.out.stat().st_size / 1e6:,.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
