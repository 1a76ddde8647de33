"""The Fox-1 model in one file: a Llama-style decoder, exactly the architecture of the released
`tensoropera/Fox-1-1.6B` (arXiv 2411.05281), plus what training and serving need.

    embedding -> 32 x [RMSNorm -> GQA attention with RoPE -> +residual; RMSNorm -> SwiGLU -> +residual]
              -> RMSNorm -> LM head tied to the embedding

Fox-1's architecture bets are all in `FoxConfig`: deep and narrow (32 layers at hidden 2048), a 256K vocabulary
whose embedding (31% of the model) is shared with the LM head, and grouped-query attention (16 query heads share
4 key/value heads, a 4x smaller KV cache). Also here: `chunked_cross_entropy`, the loss for a 256K vocabulary
without a (tokens x vocab) tensor; `doc_ids` / `position_ids` for packed documents; a static `KVCache` so a decode
step has fixed shapes for torch.compile. Module names are Hugging Face Llama's except two fused matrices,
`qkv_proj` and `gate_up_proj` (fox1/hf_llama.py maps them to HF's tensors).

Try it:  python -c "import model; m = model.Fox(model.FoxConfig.from_preset('tiny')); print(m)"
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from fox1 import hf_llama
from fox1.hf_llama import CheckpointError
from fox1.speed import attention, cache_dtype, huge_pages, linear, load_cpu_kernels, num_weights

IGNORE_INDEX = -100  # targets with this value do not count in the loss (e.g. across document borders)


# --------------------------------------------------------------------------------------------------
# Building blocks


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in fp32 and cast back (as Llama does, so bf16 matches HF)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * F.rms_norm(x.float(), (x.size(-1),), eps=self.eps).type_as(x)


def rope_tables(config: FoxConfig, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of shape (context_len, head_dim) in fp32, in Llama's rotate-half layout:
    frequency i drives dimensions i and i + head_dim/2, so released weights work unpermuted."""
    half = config.head_dim // 2
    inv_freq = 1.0 / config.rope_theta ** (torch.arange(0, half, device=device, dtype=torch.float32) / half)
    angles = torch.outer(torch.arange(config.context_len, device=device, dtype=torch.float32), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, heads, T, head_dim) by per-position angles; cos/sin broadcast as (B or 1, 1, T, head_dim)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated_half = torch.cat((-x2, x1), dim=-1)
    return x * cos.to(x.dtype) + rotated_half * sin.to(x.dtype)


class Linear(nn.Linear):
    """nn.Linear without bias, through fox1.speed.linear (a faster one-row loop when compiled on a CPU)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight)


class Attention(nn.Module):
    """Causal grouped-query self-attention with RoPE, through SDPA (a CPU's decode step: `fox1.speed.attention`).

    q, k and v come out of one matrix, `qkv_proj` (Hugging Face's q_proj, k_proj and v_proj stacked by
    rows, as in gpt-fast): one matmul reads x once and is one kernel instead of three, which is what a
    decode step of a single token is made of."""

    def __init__(self, config: FoxConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        q_rows, kv_rows = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
        self.qkv_rows = [q_rows, kv_rows, kv_rows]
        self.qkv_proj = Linear(config.hidden_size, sum(self.qkv_rows))
        self.o_proj = Linear(q_rows, config.hidden_size)
        self.kv_cache: KVCache | None = None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None, input_pos: torch.Tensor | None) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.qkv_proj(x).split(self.qkv_rows, dim=-1)
        q = q.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.kv_cache is not None and input_pos is not None:
            k, v = self.kv_cache.update(input_pos, k, v)
        # mask=None means plain causal attention over this call's own tokens (the fastest kernel path).
        y = attention(q.to(k.dtype), k, v, mask)
        return self.o_proj(y.to(x.dtype).transpose(1, 2).reshape(B, T, -1))  # the cache may be wider (cache_dtype)


class KVCache(nn.Module):
    """Static key/value cache of one layer: (batch, kv_heads, max_len, head_dim), written in place.

    Fixed shapes mean a compiled decode step never recompiles; a mask hides the slots not written yet
    (SDPA reads the whole buffer; on a CPU fox1's decode kernel skips them, fox1.speed.attention)."""

    def __init__(self, batch_size: int, max_len: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str | None = None):
        super().__init__()
        shape = (batch_size, num_kv_heads, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k.index_copy_(2, input_pos, k.to(self.k.dtype))
        self.v.index_copy_(2, input_pos, v.to(self.v.dtype))
        return self.k, self.v


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)): Llama's gated MLP, with gate and up stacked in one matrix."""

    def __init__(self, config: FoxConfig):
        super().__init__()
        self.gate_up_proj = Linear(config.hidden_size, 2 * config.intermediate_size)
        self.down_proj = Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    """One pre-norm transformer layer. The unit of FSDP sharding and of torch.compile in train.py."""

    def __init__(self, config: FoxConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.norm_eps)
        self.mlp = SwiGLU(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None = None, input_pos: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, input_pos)
        return x + self.mlp(self.post_attention_layernorm(x))


# --------------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class FoxConfig:
    """Shape of a Fox model. The defaults are the released Fox-1-1.6B."""

    vocab_size: int = 256000
    hidden_size: int = 2048
    num_layers: int = 32
    num_heads: int = 16
    num_kv_heads: int = 4  # 4 query heads share each key/value head
    head_dim: int = 128
    intermediate_size: int = 4096  # SwiGLU width = 2 x hidden
    context_len: int = 8192
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")

    @classmethod
    def from_preset(cls, name: str, **overrides) -> FoxConfig:
        """A named preset with any field overridden, e.g. from_preset('tiny', vocab_size=4096)."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
        return replace(PRESETS[name], **overrides)

    @classmethod
    def from_hf(cls, path: str | Path) -> tuple[FoxConfig, torch.dtype]:
        """(config, stored dtype) of a Hugging Face Llama config.json."""
        fields, dtype = hf_llama.read_config(Path(path))
        try:
            return cls(**fields), dtype
        except ValueError as e:
            raise CheckpointError(f"{path}: {e}") from None


# All presets keep Fox-1's ratios: deep and narrow, 4 query heads per KV head, intermediate = 2 x hidden.
PRESETS: dict[str, FoxConfig] = {
    "fox-1.6b": FoxConfig(),
    "small": FoxConfig(vocab_size=32768, hidden_size=512, num_layers=16, num_heads=8, num_kv_heads=2,
                       head_dim=64, intermediate_size=1024, context_len=2048),
    "tiny": FoxConfig(vocab_size=8192, hidden_size=256, num_layers=8, num_heads=4, num_kv_heads=1,
                      head_dim=64, intermediate_size=512, context_len=1024),
}


# --------------------------------------------------------------------------------------------------
# The loss for a 256K vocabulary

# Rows of logits materialised at once: 2**27 fp32 values = 512 MB, i.e. 524 tokens at vocab 256000
# (a whole 8K sequence would be 8 GB) and 16384 tokens at tiny's vocab 8192.
LOSS_CHUNK_ELEMENTS = 2**27


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of `hidden @ weight.T` against `targets`, one chunk of tokens at a time.

    The gradient is formed in the forward pass, chunk by chunk: d(loss)/d(logits) = softmax - onehot,
    which immediately becomes d/d(hidden) and d/d(weight). No (tokens x vocab) tensor outlives a chunk,
    and backward only scales the stored gradients, so there is no recompute either. The price: the
    (vocab x hidden) weight gradient, as large as the embedding itself (2.1 GB in fp32 for fox-1.6b), is
    held from this forward until backward hands it on."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        count = (targets != IGNORE_INDEX).sum().clamp(min=1)
        chunk = max(1, LOSS_CHUNK_ELEMENTS // weight.size(0))
        loss = hidden.new_zeros((), dtype=torch.float32)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32)
        for start in range(0, hidden.size(0), chunk):
            h, t = hidden[start:start + chunk], targets[start:start + chunk]
            rows = (t != IGNORE_INDEX).nonzero().squeeze(1)
            log_probs = (h @ weight.T).float().log_softmax(dim=-1)
            loss -= log_probs[rows, t[rows]].sum()
            grad_logits = log_probs.exp_()  # softmax, in place; then (softmax - onehot) / count, 0 if ignored
            grad_logits[t == IGNORE_INDEX] = 0.0
            grad_logits[rows, t[rows]] -= 1.0
            grad_logits = grad_logits.div_(count).to(hidden.dtype)
            grad_hidden[start:start + chunk] = grad_logits @ weight
            if h.dtype == torch.float32:
                grad_weight.addmm_(grad_logits.T, h)
            else:  # a bf16 matmul summed into fp32: an fp32 matmul here costs a GPU a third of its step
                grad_weight += grad_logits.T @ h
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        return loss / count

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_loss, grad_weight * grad_loss, None


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss over non-ignored targets; equals F.cross_entropy(hidden @ weight.T, targets).

    hidden: (N, D) final-norm states, weight: (V, D) the tied embedding, targets: (N,)."""
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _ChunkedCrossEntropy.apply(hidden, weight, targets)
    chunk = max(1, LOSS_CHUNK_ELEMENTS // weight.size(0))
    total = sum(F.cross_entropy((hidden[i:i + chunk] @ weight.T).float(), targets[i:i + chunk],
                                ignore_index=IGNORE_INDEX, reduction="sum")
                for i in range(0, hidden.size(0), chunk))
    return total / (targets != IGNORE_INDEX).sum().clamp(min=1)


# --------------------------------------------------------------------------------------------------
# The model


def document_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) document ids -> (B, 1, T, T) boolean mask: causal, and only within the same document.

    A boolean mask goes through SDPA's kernels with a backward on CPU too (flex_attention has none there)."""
    T = doc_ids.size(1)
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()
    same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]
    return (causal & same_doc)[:, None]


class Fox(nn.Module):
    """The Fox-1 decoder. `forward(idx)` gives logits; `forward(idx, targets)` gives the mean loss."""

    def __init__(self, config: FoxConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.norm_eps)
        cos, sin = rope_tables(config)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """GPT-2/Llama-style init: every matrix N(0, 0.02), norms 1, and the two projections that
        write into the residual stream (o_proj, down_proj) scaled by 1/sqrt(2 * num_layers), so
        the residual's variance stays O(1) through 32 layers instead of growing with depth.
        The tied embedding doubles as the LM head, and 0.02 suits both roles.
        Also (re)computes the RoPE tables, so a model built on the meta device and materialised
        with `to_empty()` is complete after one call."""
        std = self.config.init_std
        for name, p in self.named_parameters():
            if name.endswith("layernorm.weight") or name == "norm.weight":
                nn.init.ones_(p)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.config.num_layers))
            else:
                nn.init.normal_(p, 0.0, std)
        self.rope_cos, self.rope_sin = rope_tables(self.config, device=self.rope_cos.device)

    def num_params(self) -> int:
        """Parameters, the tied embedding/LM head counted once (1,665,271,808 for fox-1.6b), quantised ones too."""
        return num_weights(self)

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token (forward + backward), for MFU.

        6N: every parameter does one multiply-add (2 FLOPs) forward and two backward. The tied
        embedding is counted once, as the LM head matmul (the lookup itself is free).
        12 * layers * (heads * head_dim) * seq_len: attention scores and the weighted sum, 2 matmuls
        x 2 FLOPs x 3 (fwd + bwd), without discounting the causal half (the PaLM convention).
        fox-1.6b at 2048 tokens: 6 x 1.665e9 + 12 x 32 x 2048 x 2048 = 11.6 GFLOPs per token."""
        c = self.config
        return 6 * self.num_params() + 12 * c.num_layers * c.num_heads * c.head_dim * seq_len

    def setup_kv_cache(self, batch_size: int, max_len: int | None = None, dtype: torch.dtype | None = None) -> None:
        """Preallocate a static KV cache in every layer for generation; forward(..., input_pos=...) uses it."""
        max_len = max_len or self.config.context_len
        device = self.norm.weight.device
        dtype = dtype or cache_dtype(self.norm.weight.dtype, device)  # norms keep the compute dtype, also in int8
        load_cpu_kernels(device)  # a CPU's decode-step attention (fox1.speed.attention)
        c = self.config
        for layer in self.layers:
            layer.self_attn.kv_cache = KVCache(batch_size, max_len, c.num_kv_heads, c.head_dim, dtype, device)
        huge_pages(nn.ModuleList(layer.self_attn.kv_cache for layer in self.layers))  # on a CPU: read every step

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *,
                position_ids: torch.Tensor | None = None, doc_ids: torch.Tensor | None = None,
                input_pos: torch.Tensor | None = None, last_only: bool = False) -> torch.Tensor:
        """idx: (B, T) token ids.

        targets (B, T): return the mean chunked cross-entropy instead of logits.
        position_ids / doc_ids (B, T): packed documents; RoPE positions restart and attention stays
            inside each document.
        input_pos (T,): generation with the KV cache: the absolute positions of these T tokens (the
            same for every row); keys come from the cache, masked to positions <= the query's.
        last_only: return logits of the last position only (prefill without a (T x vocab) tensor)."""
        T = idx.size(1)
        if int(T) > self.config.context_len:
            raise ValueError(f"sequence of {T} tokens is longer than the context ({self.config.context_len})")
        if input_pos is not None:
            cache_len = self.layers[0].self_attn.kv_cache.k.size(2)
            mask = torch.arange(cache_len, device=idx.device)[None, :] <= input_pos[:, None]
            x = self.hidden(idx, input_pos, mask, input_pos)
        else:
            positions = position_ids if position_ids is not None else torch.arange(T, device=idx.device)
            x = self.hidden(idx, positions, document_mask(doc_ids) if doc_ids is not None else None)
        if targets is not None:
            return chunked_cross_entropy(x.flatten(0, 1), self.embed_tokens.weight, targets.flatten())
        return self.logits(x[:, -1:] if last_only else x)

    def hidden(self, idx: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None,
               input_pos: torch.Tensor | None = None) -> torch.Tensor:
        """Final-norm hidden states (B, T, hidden) of idx at RoPE positions ((T,) shared by the rows or (B, T)
        per row) under a boolean attention mask (broadcastable to (B, 1, T, keys); None = causal over idx).
        eval.py calls it with its own mask (each answer choice sees the question and itself only)."""
        cos, sin = self.rope_cos[positions], self.rope_sin[positions]
        if cos.dim() == 2:  # shared positions (T, hd) -> (1, 1, T, hd); per-row (B, T, hd) -> (B, 1, T, hd)
            cos, sin = cos[None], sin[None]
        cos, sin = cos[:, None], sin[:, None]
        x = self.embed_tokens(idx)
        for layer in self.layers:
            x = layer(x, cos, sin, mask, input_pos)
        return self.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head, tied to the embedding: final-norm hidden states (..., hidden) -> fp32 logits."""
        table = self.embed_tokens  # a quantised table (fox1/speed.py) brings its own head
        return (table.head(hidden) if hasattr(table, "head") else linear(hidden, table.weight)).float()

    # ----------------------------------------------------------------------------------------------
    # Hugging Face Llama checkpoints (the mapping is in fox1/hf_llama.py)

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, dtype: torch.dtype | None = None,
                        device: str | torch.device = "cpu") -> Fox:
        """Load a Llama-format checkpoint directory (config.json + model.safetensors, or sharded with
        model.safetensors.index.json), e.g. the released tensoropera/Fox-1-1.6B, tensor by tensor."""
        directory = Path(directory)
        config, stored_dtype = FoxConfig.from_hf(directory / "config.json")
        with torch.device("meta"):
            model = cls(config)
        state = hf_llama.load_hf_state_dict(directory, model, dtype or stored_dtype)
        model.load_state_dict(state, strict=True, assign=True)
        model.rope_cos, model.rope_sin = rope_tables(config)
        return model.to(device=device)

    def save_pretrained(self, directory: str | Path, *, token_ids: dict[str, int] | None = None,
                        tokenizer_fingerprint: str | None = None, stop_ids: list[int] | None = None) -> None:
        """Write config.json, generation_config.json and model.safetensors that transformers.LlamaForCausalLM
        loads. token_ids: the tokenizer's {"bos_token_id", "eos_token_id", "pad_token_id"} (without them
        transformers assumes bos 1 / eos 2, our eos / bos swapped); tokenizer_fingerprint lets sample.py refuse
        a tokenizer the weights were not trained with; stop_ids: generation_config's eos list (a chat model
        also stops at the token that closes a reply)."""
        hf_llama.save_llama(Path(directory), self.state_dict(), self.config, self.embed_tokens.weight.dtype,
                            token_ids, tokenizer_fingerprint, stop_ids)
