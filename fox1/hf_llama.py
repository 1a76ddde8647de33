"""Hugging Face Llama checkpoints: config.json <-> FoxConfig fields, safetensors <-> our (fused) state dict.

The released Fox-1-1.6B is a plain `LlamaForCausalLM` folder. fox1's model keeps Llama's module names except two
fused matrices (`qkv_proj` = q/k/v stacked by rows, `gate_up_proj` = gate/up), so conversion is a name map plus a
split or a stack by rows (`hf_names`). model.Fox.from_pretrained / save_pretrained call these; nothing here
imports the model: it works on plain dicts, tensors and any config object with FoxConfig's fields.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from fox1.files import atomic_path, write_json_atomic


class CheckpointError(ValueError):
    """A checkpoint directory whose files, config fields or tensors do not fit. One-line message."""


_DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def config_to_hf(config, dtype: torch.dtype) -> dict:
    """Our config as a transformers LlamaConfig dictionary."""
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size, "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads, "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim, "max_position_embeddings": config.context_len,
        "rms_norm_eps": config.norm_eps, "rope_theta": config.rope_theta, "rope_scaling": None,
        "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": True,
        "initializer_range": config.init_std, "torch_dtype": str(dtype).removeprefix("torch."),
    }


@dataclass(frozen=True)
class CheckpointTokens:
    """What a checkpoint folder says about its tokens (None / empty where it says nothing)."""

    bos_id: int | None
    eos_ids: list[int]  # Hugging Face allows several (e.g. <eos> and <end_of_turn>)
    tokenizer_fingerprint: str | None  # our exports only


def checkpoint_tokens(directory: Path) -> CheckpointTokens:
    """bos / eos ids from generation_config.json, else config.json; the tokenizer fingerprint of our exports."""
    fields: dict = {}
    for name in ("config.json", "generation_config.json"):  # the latter wins, as in transformers' generate
        path = directory / name
        if path.is_file():
            try:
                loaded = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise CheckpointError(f"{path}: not valid JSON ({e})") from None
            if not isinstance(loaded, dict):
                raise CheckpointError(f"{path}: expected a JSON object, got {type(loaded).__name__}")
            fields.update((k, v) for k, v in loaded.items() if v is not None)
    bos, eos = fields.get("bos_token_id"), fields.get("eos_token_id", [])
    eos = [eos] if isinstance(eos, int) else eos
    if not (bos is None or isinstance(bos, int)) or not all(isinstance(i, int) for i in eos):
        raise CheckpointError(f"{directory}: bos_token_id / eos_token_id must be integers (or a list of them)")
    return CheckpointTokens(bos, list(eos), fields.get("fox1_tokenizer_fingerprint"))



def read_config(path: Path) -> tuple[dict, torch.dtype]:
    """A Llama config.json as (FoxConfig's fields, stored dtype), refusing anything fox1 does not implement."""
    try:
        hf = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(hf, dict):
        raise CheckpointError(f"{path}: expected a JSON object of config fields, got {type(hf).__name__}")

    def field(name: str, default=None):
        if name not in hf and default is None:
            raise CheckpointError(f"{path}: missing field {name!r}")
        return hf.get(name, default)

    expected = {"hidden_act": "silu", "tie_word_embeddings": True, "attention_bias": False, "mlp_bias": False,
                "rope_scaling": None}
    for name, want in expected.items():
        if hf.get(name, want) != want:
            raise CheckpointError(f"{path}: field {name!r} is {hf[name]!r}; fox1 supports only {want!r}")
    try:
        fields = dict(
            vocab_size=int(field("vocab_size")), hidden_size=int(field("hidden_size")),
            num_layers=int(field("num_hidden_layers")), num_heads=int(field("num_attention_heads")),
            num_kv_heads=int(field("num_key_value_heads", hf.get("num_attention_heads"))),
            head_dim=int(field("head_dim", hf.get("hidden_size", 0) // max(1, hf.get("num_attention_heads", 1)))),
            intermediate_size=int(field("intermediate_size")), context_len=int(field("max_position_embeddings")),
            rope_theta=float(field("rope_theta", 10000.0)), norm_eps=float(field("rms_norm_eps", 1e-6)),
        )
    except CheckpointError:
        raise
    except (TypeError, ValueError) as e:  # a field of the wrong kind ("hidden_size": "big")
        raise CheckpointError(f"{path}: {e}") from None
    dtype_name = hf.get("torch_dtype") or hf.get("dtype") or "float32"
    if dtype_name not in _DTYPE_NAMES:
        raise CheckpointError(f"{path}: field 'torch_dtype' is {dtype_name!r}; expected one of {list(_DTYPE_NAMES)}")
    return fields, _DTYPE_NAMES[dtype_name]


def safetensors_files(directory: Path) -> dict[str, Path]:
    """Hugging Face tensor name -> the file holding it: model.safetensors, or the shards listed in
    model.safetensors.index.json. Reads only the files' headers."""
    from safetensors import SafetensorError, safe_open

    index = directory / "model.safetensors.index.json"
    if index.exists():
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError, TypeError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index ({e!r})") from None
    else:
        files = ["model.safetensors"]
    where: dict[str, Path] = {}
    for name in files:
        path = directory / name
        if not path.exists():
            raise CheckpointError(f"{path}: not found")
        try:
            with safe_open(str(path), "pt") as f:
                where.update((key, path) for key in f.keys())
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{path}: unreadable safetensors file ({e})") from None
    return where


def read_tensor(path: Path, name: str, dtype: torch.dtype) -> torch.Tensor:
    """One tensor in `dtype`. The file is memory-mapped for this tensor only, so its pages do not stay mapped
    (and counted in this process's memory) while the rest of the model loads."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return f.get_tensor(name).to(dtype)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: unreadable tensor {name!r} ({e})") from None


def hf_names(name: str, rows: int, config) -> dict[str, int]:
    """The Hugging Face tensors our tensor `name` (of `rows` rows) holds, stacked by rows in this order, with
    their row counts: 'layers.0.self_attn.qkv_proj.weight' -> {'model.layers.0.self_attn.q_proj.weight': 2048,
    '... k_proj ...': 512, '... v_proj ...': 512} for fox-1.6b; any other tensor is itself under `model.`."""
    q_rows, kv_rows = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    fused = {"self_attn.qkv_proj": {"self_attn.q_proj": q_rows, "self_attn.k_proj": kv_rows,
                                    "self_attn.v_proj": kv_rows},
             "mlp.gate_up_proj": {"mlp.gate_proj": config.intermediate_size, "mlp.up_proj": config.intermediate_size}}
    for ours, parts in fused.items():
        if f".{ours}." in name:
            return {"model." + name.replace(ours, part): part_rows for part, part_rows in parts.items()}
    return {"model." + name: rows}


def fox_to_hf(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """Our state dict under Hugging Face Llama names (fused matrices split into views, no copies)."""
    hf = {}
    for name, tensor in state.items():
        parts = hf_names(name, tensor.size(0), config)
        hf.update(zip(parts, tensor.split(list(parts.values()))))
    return hf



def load_hf_state_dict(directory: Path, model: torch.nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Our state dict in `dtype`, read tensor by tensor from a Hugging Face Llama checkpoint, after checking
    every tensor's presence and shape against `model` (a meta-device model of the config).

    Fused matrices are allocated once and filled part by part, so the peak memory is the model plus one
    tensor: fox-1.6b in bf16 loads in about its 3.3 GB, not twice that. `lm_head.weight` is accepted and
    ignored: the head is tied to the embedding (as HF does when tie_word_embeddings is true); RoPE's
    `inv_freq`, which old exports store, is recomputed."""
    from safetensors import safe_open

    ours = model.state_dict()
    expected = {k: v.shape for k, v in fox_to_hf(ours, model.config).items()}
    where = {k: v for k, v in safetensors_files(directory).items()
             if k != "lm_head.weight" and not k.endswith("rotary_emb.inv_freq")}
    for name, path in where.items():
        if name not in expected:
            raise CheckpointError(f"{directory}: unexpected tensor {name!r} for this config")
        with safe_open(str(path), "pt") as f:
            shape = torch.Size(f.get_slice(name).get_shape())
        if shape != expected[name]:
            raise CheckpointError(f"{directory}: tensor {name!r} has shape {tuple(shape)}, "
                                  f"config.json implies {tuple(expected[name])}")
    missing = sorted(set(expected) - set(where))
    if missing:
        raise CheckpointError(f"{directory}: missing tensor {missing[0]!r} ({len(missing)} missing)")
    state = {}
    for name, meta in ours.items():
        state[name] = torch.empty(meta.shape, dtype=dtype)
        parts = hf_names(name, meta.size(0), model.config)
        for hf_name, piece in zip(parts, state[name].split(list(parts.values()))):
            piece.copy_(read_tensor(where[hf_name], hf_name, dtype))
    return state


def save_llama(directory: Path, state: dict[str, torch.Tensor], config, dtype: torch.dtype,
               token_ids: dict[str, int] | None, tokenizer_fingerprint: str | None,
               stop_ids: list[int] | None = None) -> None:
    """config.json, generation_config.json and model.safetensors of our state dict, as transformers'
    LlamaForCausalLM loads them (tied weights stored once, as HF does), each written atomically."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in fox_to_hf(state, config).items()}
    with atomic_path(directory / "model.safetensors") as temporary:  # streamed to disk: no second copy in memory
        save_file(tensors, temporary, metadata={"format": "pt"})
    hf_config = config_to_hf(config, dtype) | (token_ids or {})
    if tokenizer_fingerprint:
        hf_config["fox1_tokenizer_fingerprint"] = tokenizer_fingerprint
    write_json_atomic(directory / "config.json", hf_config)
    generation = {"_from_model_config": True, **(token_ids or {})}
    if stop_ids:
        generation["eos_token_id"] = list(stop_ids)
    write_json_atomic(directory / "generation_config.json", generation)
