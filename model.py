"""
The Fox-1 model in one file: a Llama-style decoder, exactly the architecture of the released
`tensoropera/Fox-1-1.6B` (arXiv 2411.05281), plus the pieces training and serving need.

    embedding -> 32 x [RMSNorm -> GQA attention with RoPE -> +residual; RMSNorm -> SwiGLU -> +residual]
              -> RMSNorm -> LM head tied to the embedding

Fox-1's three architecture bets, as the paper describes them, are all visible in `FoxConfig`:
  * deep and narrow: 32 layers at hidden 2048 (Gemma-2B has 18 at 2048, StableLM-2-1.6B 24 at 2048);
  * a large 256K vocabulary, whose embedding (524,288,000 parameters, 31% of the model) is shared with
    the LM head so it is paid for once;
  * grouped-query attention, 16 query heads sharing 4 key/value heads, which cuts the KV cache 4x.

What else is here and why:
  * `chunked_cross_entropy`: with 256K classes, one 8K-token sequence would need 8 GB of fp32 logits.
    The loss is computed a chunk of tokens at a time and its gradient is formed in the same pass, so
    neither the logits nor their softmax are ever held for the whole batch.
  * `position_ids` / `doc_ids`: packed training windows hold several documents; RoPE restarts at
    each document and attention is masked block-diagonally so documents never see each other.
  * `KVCache`: a static, preallocated cache (as in gpt-fast) so decoding is one fixed-shape step
    that `torch.compile` can turn into a single graph; `linear` lets inductor write that step's
    one-row matmuls on CPU as its own dot-product loops, which stream the weights faster than MKL.
  * `from_pretrained` / `save_pretrained`: the Hugging Face Llama checkpoint layout. Module names
    match it (`embed_tokens`, `self_attn.o_proj`, ...) except two fused matrices, `qkv_proj` and
    `gate_up_proj`, which are HF's q/k/v and gate/up projections stacked by rows (`hf_names`).

Try it:  python -c "import model; m = model.Fox(model.FoxConfig.from_preset('tiny')); print(m)"
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from tokenizer import write_atomic

IGNORE_INDEX = -100  # targets with this value do not count in the loss (e.g. across document borders)


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


# All presets keep Fox-1's ratios: deep and narrow, 4 query heads per KV head, intermediate = 2 x hidden.
PRESETS: dict[str, FoxConfig] = {
    "fox-1.6b": FoxConfig(),
    "small": FoxConfig(vocab_size=32768, hidden_size=512, num_layers=16, num_heads=8, num_kv_heads=2,
                       head_dim=64, intermediate_size=1024, context_len=2048),
    "tiny": FoxConfig(vocab_size=8192, hidden_size=256, num_layers=8, num_heads=4, num_kv_heads=1,
                      head_dim=64, intermediate_size=512, context_len=1024),
}


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


def linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight.T, as F.linear; but a single row on CPU under torch.compile is multiplied and summed.
    scale (out,): weight holds int8 rows whose real values are weight * scale (`quantize_int8`).

    Decoding one token multiplies one row by every matrix: a pure stream of the weights. On the 2-core EPYC,
    MKL's one-row matmul reads nn.Linear's (out, in) weights at ~14 GB/s (the 64 MB LM head of `small` takes
    6 ms), while the dot-product loop inductor writes for `(x * weight).sum(-1)` reaches ~22 GB/s: `small`'s
    compiled decode went from 49-69 to 74-98 tokens/s (see also sample.CPU_DECODE_INDUCTOR).
    The same loop converts int8 weights to floats in registers, so they stream at a quarter of the bytes.
    It multiplies and sums in fp32 whatever the weights are, with the row x made fp32 once: for bf16 weights
    the loop then converts only the weights, not x again for every row (`small`, one bf16 decode step on
    the 2-core Xeon, interleaved with the loop that took bf16 x: 1.07-1.11x faster; the sums were fp32 before too).
    Eagerly that expression would build the whole (out, in) product, so it is used only when compiling.
    GPUs keep cuBLAS, which is not known to need this (not measured)."""
    if x.device.type == "cpu" and torch.compiler.is_compiling() and x.numel() == x.size(-1):
        y = (x.float().unsqueeze(-2) * weight.float()).sum(-1)
        return (y if scale is None else y * scale).to(x.dtype)
    y = F.linear(x, weight.to(x.dtype))  # int8 -> float: a full copy of the weights, eagerly
    return y if scale is None else y * scale


class Linear(nn.Linear):
    """nn.Linear without bias, through `linear`. Same parameters and state dict as nn.Linear."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight)


class KVCache(nn.Module):
    """Static key/value cache of one layer: (batch, kv_heads, max_len, head_dim), written in place.

    Fixed shapes mean a compiled decode step never recompiles; attention reads the whole buffer and
    a mask hides the slots not written yet."""

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


class Attention(nn.Module):
    """Causal grouped-query self-attention with RoPE, through PyTorch's fused SDPA kernels.

    q, k and v come out of one matrix, `qkv_proj` (Hugging Face's q_proj, k_proj and v_proj stacked by
    rows, as in gpt-fast): one matmul reads x once and is one kernel instead of three, which is what a
    decode step of a single token is made of (see `hf_names` for the checkpoint mapping)."""

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
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=True)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


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
            else:  # a bf16 matmul, its products summed in fp32. As an fp32 matmul it made fox-1.6b's bf16
                grad_weight += grad_logits.T @ h  # training step on an H200 0.62x HF's (0.94x this way)
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
        """Parameters, the tied embedding/LM head counted once (1,665,271,808 for fox-1.6b), int8 ones too."""
        int8 = sum(m.weight.numel() for m in self.modules() if isinstance(m, Int8Linear))
        return int8 + sum(p.numel() for p in self.parameters())

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
        dtype = dtype or self.norm.weight.dtype  # the compute dtype, also under int8 weights
        device = self.norm.weight.device
        c = self.config
        for layer in self.layers:
            layer.self_attn.kv_cache = KVCache(batch_size, max_len, c.num_kv_heads, c.head_dim, dtype, device)

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
        head = self.embed_tokens  # an int8 table carries its row scales
        return linear(hidden, head.weight, head.scale if isinstance(head, Int8Embedding) else None).float()

    # ----------------------------------------------------------------------------------------------
    # Hugging Face interop

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, dtype: torch.dtype | None = None,
                        device: str | torch.device = "cpu") -> Fox:
        """Load a Llama-format checkpoint directory (config.json + model.safetensors, or sharded with
        model.safetensors.index.json), e.g. the released tensoropera/Fox-1-1.6B."""
        directory = Path(directory)
        config, stored_dtype = config_from_hf(directory / "config.json")
        with torch.device("meta"):
            model = cls(config)
        state = load_hf_state_dict(directory, model, dtype or stored_dtype)
        model.load_state_dict(state, strict=True, assign=True)
        model.rope_cos, model.rope_sin = rope_tables(config)
        return model.to(device=device)

    def save_pretrained(self, directory: str | Path, *, token_ids: dict[str, int] | None = None,
                        tokenizer_fingerprint: str | None = None) -> None:
        """Write config.json, generation_config.json and model.safetensors that transformers.LlamaForCausalLM
        loads (tied weights stored once, as HF does). Each file is written to a temp name and renamed into place.

        token_ids: the tokenizer's {"bos_token_id", "eos_token_id", "pad_token_id"}; without them transformers
        assumes bos 1 / eos 2, which are our tokenizer's eos / bos swapped. tokenizer_fingerprint: recorded so
        sample.py can refuse a tokenizer the weights were not trained with."""
        from safetensors.torch import save

        directory = Path(directory)
        tensors = {k: v.detach().cpu().contiguous() for k, v in fox_to_hf(self.state_dict(), self.config).items()}
        write_atomic(directory / "model.safetensors", save(tensors, metadata={"format": "pt"}))
        config = config_to_hf(self.config, self.embed_tokens.weight.dtype) | (token_ids or {})
        if tokenizer_fingerprint:
            config["fox1_tokenizer_fingerprint"] = tokenizer_fingerprint
        write_json_atomic(directory / "config.json", config)
        write_json_atomic(directory / "generation_config.json", {"_from_model_config": True, **(token_ids or {})})


def cpu_flags() -> set[str]:
    """The CPU's instruction-set flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls run in hardware here: CUDA GPUs, and CPUs with AVX512-BF16 or AMX (Xeon since
    Cooper Lake, AMD since Zen 4), where oneDNN's bf16 matmuls are 2-3x its fp32 ones. Elsewhere bf16 is
    emulated and slower than fp32."""
    return device.type == "cuda" or bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def column_major(model: Fox) -> Fox:
    """Store every weight matrix column by column, in place: the same (out, in) parameters with transposed
    strides, so F.linear hands MKL an (in, out) row-major matrix, which it streams faster when multiplying a
    single row. That is decoding one token at a time in fp32 on a CPU. On the 2-core AMD EPYC (2 threads),
    `small`'s 210 MB of matrices take 12.5 ms per step instead of 19.2 (its 64 MB LM head 2.6 instead of 6.1);
    only there: at 8 rows it is 0.85x, from 128 rows on even, in bf16 no faster, and the one-row loop
    torch.compile makes of `linear` reads rows. For inference: training keeps the usual layout."""
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.data = parameter.data.t().contiguous().t()
    return model


# --------------------------------------------------------------------------------------------------
# int8 weight-only quantization, for decoding (gpt-fast style)


def quantize_rows_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 weights, per-row scales): symmetric, per output channel. Row i is stored as round(w_i / s_i)
    with s_i = max|w_i| / 127, so each row's largest weight maps to +-127 and no weight moves by more than
    s_i / 2. Scales keep the weight's dtype."""
    scale = weight.detach().float().abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / 127
    quantized = (weight.detach().float() / scale[:, None]).round().clamp(-127, 127).to(torch.int8)
    return quantized, scale.to(weight.dtype)


class Int8Linear(nn.Module):
    """A `Linear` whose weight is int8 with per-row scales: decoding streams a quarter of fp32's bytes."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        quantized, scale = quantize_rows_int8(weight)
        self.register_buffer("weight", quantized)
        self.register_buffer("scale", scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.scale)


class Int8Embedding(Int8Linear):
    """The tied embedding in int8: one table serves the lookup (rows dequantised) and the LM head."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.weight[idx].to(self.scale.dtype) * self.scale[idx, None]


def quantize_int8(model: Fox) -> Fox:
    """Replace every matrix of `model` (4 per block, and the tied embedding / LM head) by its int8 version,
    in place, from whatever checkpoint it was loaded from; norms stay in the model's dtype. For inference
    only: `small` goes from 210 MB of fp32 weights to 53 MB."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, Linear):
                setattr(module, name, Int8Linear(child.weight))
    model.embed_tokens = Int8Embedding(model.embed_tokens.weight)
    return model


# --------------------------------------------------------------------------------------------------
# Checkpoint format helpers (Hugging Face Llama layout)


class CheckpointError(ValueError):
    """A checkpoint directory whose files, config fields or tensors do not fit. One-line message."""


_DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def write_json_atomic(path: Path, obj: dict) -> None:
    write_atomic(path, json.dumps(obj, indent=2) + "\n")


def config_to_hf(config: FoxConfig, dtype: torch.dtype) -> dict:
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


def config_from_hf(path: Path) -> tuple[FoxConfig, torch.dtype]:
    """Read a Llama config.json into a FoxConfig, refusing anything fox1 does not implement."""
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
        config = FoxConfig(
            vocab_size=int(field("vocab_size")), hidden_size=int(field("hidden_size")),
            num_layers=int(field("num_hidden_layers")), num_heads=int(field("num_attention_heads")),
            num_kv_heads=int(field("num_key_value_heads", hf.get("num_attention_heads"))),
            head_dim=int(field("head_dim", hf.get("hidden_size", 0) // max(1, hf.get("num_attention_heads", 1)))),
            intermediate_size=int(field("intermediate_size")), context_len=int(field("max_position_embeddings")),
            rope_theta=float(field("rope_theta", 10000.0)), norm_eps=float(field("rms_norm_eps", 1e-6)),
        )
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: {e}") from None
    dtype_name = hf.get("torch_dtype") or hf.get("dtype") or "float32"
    if dtype_name not in _DTYPE_NAMES:
        raise CheckpointError(f"{path}: field 'torch_dtype' is {dtype_name!r}; expected one of {list(_DTYPE_NAMES)}")
    return config, _DTYPE_NAMES[dtype_name]


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


def hf_names(name: str, rows: int, config: FoxConfig) -> dict[str, int]:
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


def fox_to_hf(state: dict[str, torch.Tensor], config: FoxConfig) -> dict[str, torch.Tensor]:
    """Our state dict under Hugging Face Llama names (fused matrices split into views, no copies)."""
    hf = {}
    for name, tensor in state.items():
        parts = hf_names(name, tensor.size(0), config)
        hf.update(zip(parts, tensor.split(list(parts.values()))))
    return hf


def load_hf_state_dict(directory: Path, model: Fox, dtype: torch.dtype) -> dict[str, torch.Tensor]:
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
