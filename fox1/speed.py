"""CPU speed paths for inference: the one-row matmul loop, column-major weights, int8 and int4 weights, decode
attention, the dtype choice.

Decoding one token multiplies a single row by every weight matrix: a pure stream of the weights, bound by memory
bandwidth. On a CPU the library matmul (MKL / oneDNN) is not at its best there, so:
  * `linear`: under torch.compile, a one-row product is written as multiply-and-sum, which inductor turns into its
    own dot-product loops that stream the weights faster (int8 ones converted in registers where fox1's
    int8 kernel is not loaded);
  * `column_major`: for eager fp32 decoding, weights stored column by column stream faster through MKL;
  * `huge_pages`: weights and KV cache in memory mapped with 2 MB pages, which a step reads with fewer TLB misses;
  * `quantize_int8`: int8 weights with per-row scales (gpt-fast style), a quarter of fp32's bytes; where the CPU has
    int8 dot products the activations' rows are rounded to int8 too and meet them in int8: a prompt's rows in
    `int8_matmul`, a decoded token's row in fox1's AVX512-VNNI kernel (fox1/cpu_kernels.cpp), bit for bit alike;
  * `quantize_int4`: int4 weights in groups of 32 with a scale each, two weights a byte (an eighth of fp32's bytes,
    plus the scales); a decoded token's row meets them in fox1's int4 kernel, a prompt's rows an int8 copy made for
    the call (`int8_matmul`; bf16 where the CPU lacks int8 dot products; PyTorch's CPU int4 kernel where fox1's
    cannot run);
  * `attention`: a decode step's attention (one query row over the KV cache) in fox1's kernel, which reads only the
    cache's written slots (a chat's cache is the whole context long);
  * `CPU_DECODE_INDUCTOR`: inductor settings for the compiled one-row decode step;
  * `native_bf16` / `default_dtype`: bf16 only where the hardware runs it natively;
  * `cache_dtype`: the KV cache stays fp32 on a CPU, for its attention kernel.
Measured speeds, with their machines, are in NOTES.md ("Figures behind the code's choices").
"""
from __future__ import annotations

import mmap
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from fox1 import cpu_kernels


def linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight.T, as F.linear; but a single row on CPU under torch.compile is multiplied and summed in fp32
    (x made fp32 once, so bf16 weights do not reconvert it per row), which inductor streams faster than MKL
    (eagerly that expression would build the whole (out, in) product, so it is used only when compiling).
    scale (out,): weight holds int8 rows whose real values are weight * scale (`quantize_int8`); on a CPU with
    int8 dot-product instructions x's rows are then quantised too and meet the weights in int8: one row in fox1's
    AVX512-VNNI kernel (fox1/cpu_kernels.cpp, compiled or not) where it is loaded, several rows (a prompt) in
    `int8_matmul`, bit for bit alike."""
    if x.device.type == "cpu" and x.numel() == x.size(-1):
        if scale is not None and cpu_kernels.LOADED:
            return torch.ops.fox1.int8_row_linear(x.float(), weight, scale.float()).to(x.dtype)
        if torch.compiler.is_compiling():
            y = (x.float().unsqueeze(-2) * weight.float()).sum(-1)
            return (y if scale is None else y * scale).to(x.dtype)
    if scale is not None and x.numel() > x.size(-1) and x.device.type == "cpu" and CPU_INT8_DOT:
        return int8_matmul(x, weight, scale)
    y = F.linear(x, weight.to(x.dtype))  # int8 -> float: a full copy of the weights, eagerly
    return y if scale is None else y * scale


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """F.scaled_dot_product_attention with GQA (causal where mask is None); but a decode step on a CPU, one query
    row per head against an fp32 KV cache under a mask shared by every row, goes to fox1's kernel
    (fox1/cpu_kernels.cpp, loaded by `load_cpu_kernels`), which skips the cache's unwritten slots and costs a
    fraction of SDPA's fixed cost per call (NOTES.md)."""
    if (q.size(2) == 1 and q.device.type == "cpu" and cpu_kernels.LOADED and q.dtype == torch.float32
            and mask is not None and mask.dtype == torch.bool and mask.numel() == k.size(2) and not q.requires_grad):
        return torch.ops.fox1.one_query_attention(q, k, v, mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=True)


def load_cpu_kernels(device: torch.device) -> bool:
    """Load fox1's CPU kernels (building them once) where `device` is a CPU that runs them; True if loaded.
    Called before anything is compiled: building cannot happen inside a traced graph."""
    return torch.device(device).type == "cpu" and cpu_kernels.load(CPU_FLAGS)


# Inductor's fusion for a one-row decode step on a CPU. By default it inlines the RMSNorm (and the residual add and
# RoPE before it) into every dot product that reads the normalised row, recomputing it per weight row, which in bf16
# stops the loop streaming weights; materialising every intermediate (a few KB per token) avoids that. cpp_wrapper:
# the step calls its kernels from C++ rather than from Python.
CPU_DECODE_INDUCTOR = {"realize_opcount_threshold": 1, "realize_reads_threshold": 1, "cpp_wrapper": True}


def cpu_flags() -> set[str]:
    """The CPU's instruction-set flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))


# Read once: `linear` asks inside compiled graphs, which cannot trace reading a file.
CPU_FLAGS = cpu_flags()
CPU_BF16 = bool({"avx512_bf16", "amx_bf16"} & CPU_FLAGS)
CPU_INT8_DOT = bool({"avx512_vnni", "avx_vnni", "amx_int8"} & CPU_FLAGS)


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls run in hardware here: CUDA GPUs, and CPUs with AVX512-BF16 or AMX (Xeon since
    Cooper Lake, AMD since Zen 4). Elsewhere bf16 is emulated and slower than fp32."""
    return device.type == "cuda" or CPU_BF16


def default_dtype(device: torch.device, compile: bool, quantize: str | None) -> str:
    """The inference dtype when none is asked for: bf16 on CUDA, and for a compiled, unquantised decode on a CPU
    with native bf16; else fp32 (eager bf16 decodes no faster than eager fp32 on a CPU, and int8 weights convert
    to fp32 faster than to bf16)."""
    bf16 = device.type == "cuda" or (compile and quantize is None and native_bf16(device))
    return "bfloat16" if bf16 else "float32"


def cache_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The KV cache's dtype for a model computing in `dtype`: fp32 on a CPU, whose attention kernel is several
    times slower over bf16 keys and values than over fp32 ones when decoding (one query row against the cache)."""
    return torch.float32 if device.type == "cpu" else dtype


def streams_column_major(device: torch.device, dtype: torch.dtype, compile: bool, rows: int) -> bool:
    """Whether decoding is faster with `column_major` weights: eager, fp32, one row, on a CPU."""
    return device.type == "cpu" and dtype == torch.float32 and not compile and rows == 1


def column_major(model: nn.Module) -> nn.Module:
    """Store every weight matrix column by column, in place: the same (out, in) parameters with transposed
    strides, so F.linear hands MKL an (in, out) row-major matrix, which it streams faster when multiplying a
    single row (eager fp32 decoding on a CPU only: at 8 rows it is slower, in bf16 no faster). Inference only."""
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.data = parameter.data.t().contiguous().t()
    return model


HUGE_PAGE = 2 << 20  # bytes: x86-64's large page


def huge_pages(module: nn.Module) -> nn.Module:
    """Move every parameter and buffer of a module on a CPU into one anonymous memory mapping that Linux backs with
    2 MB pages (madvise MADV_HUGEPAGE), in place, keeping each tensor's shape and strides: a model's weights, or its
    KV cache (`Fox.setup_kv_cache`; at `small`'s full context a step reads as many bytes from it as from `small`'s
    int4 weights). Decoding reads every weight, and the cache's written part, once per token: with 4 KB pages that
    is a TLB miss every 4 KB (llama.cpp reads its weights through an mmap of the model file, which Linux's page
    cache backs with larger pages where it can). Each tensor keeps a storage of its own, so copying or saving one
    copies or saves only it. No-op where the OS takes no such advice (not Linux). For inference: a moved tensor
    cannot be resized."""
    tensors = [t for t in (*module.parameters(), *module.buffers()) if t.device.type == "cpu" and t.numel()]
    if not tensors or not hasattr(mmap, "MADV_HUGEPAGE"):
        return module
    spans = [_storage_span(t) for t in tensors]
    padded = [(span * t.element_size() + 63) // 64 * 64 for span, t in zip(spans, tensors)]  # cache-line starts
    arena = mmap.mmap(-1, sum(padded) + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        arena.madvise(mmap.MADV_HUGEPAGE)
    except OSError:  # a kernel without transparent huge pages
        return module
    offset = -torch.frombuffer(arena, dtype=torch.uint8, count=1).data_ptr() % HUGE_PAGE  # the first 2 MB boundary
    with torch.no_grad():
        for tensor, span, size in zip(tensors, spans, padded):  # one at a time: each original is freed as it goes
            moved = torch.frombuffer(arena, dtype=tensor.dtype, count=span, offset=offset)  # keeps the mapping open
            moved = moved.as_strided(tensor.shape, tensor.stride())
            moved.copy_(tensor)
            tensor.data = moved
            offset += size
    return module


def _storage_span(tensor: torch.Tensor) -> int:
    """Elements from a non-empty tensor's first to its last one in memory, gaps included (its numel when contiguous
    or transposed, as `column_major` leaves it)."""
    return 1 + sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride()))


# --------------------------------------------------------------------------------------------------
# int8 weight-only quantization, for decoding (gpt-fast style)


def quantize_rows_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 weights, per-row scales): symmetric, per output channel. Row i is stored as round(w_i / s_i)
    with s_i = max|w_i| / 127, so each row's largest weight maps to +-127 and no weight moves by more than
    s_i / 2. Scales keep the weight's dtype."""
    scale = weight.detach().float().abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / 127
    quantized = (weight.detach().float() / scale[:, None]).round().clamp(-127, 127).to(torch.int8)
    return quantized, scale.to(weight.dtype)


def int8_matmul(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x @ (weight * scale).T for int8 weights with x's rows quantised as the weights' are (`quantize_rows_int8`,
    one scale per row): int8 products summed in int32 by `torch._int_mm` (AVX512-VNNI / AMX), then both scales.
    For a prompt's rows that is twice a bf16 matmul's speed, at the cost of rounding each activation to 1/254 of its
    row's largest (llama.cpp's Q8_0 rounds activations likewise, per 32)."""
    rows, row_scale = quantize_rows_int8(x.reshape(-1, x.size(-1)))
    y = torch._int_mm(rows, weight.t()) * row_scale.float()[:, None] * scale
    return y.view(*x.shape[:-1], -1).to(x.dtype)


class QuantizedLinear(nn.Module):
    """A bias-free linear layer whose weight holds quantised values with their scales (`quantize`).

    Both are frozen parameters, not buffers: a compiled decode step checks, every call, that no two of its tensor
    inputs share memory, except for parameters; with a small model's ~130 quantised tensors as buffers that check
    was a large share of its step (NOTES.md)."""

    quantize: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        quantized, scale = type(self).quantize(weight)
        self.frozen("weight", quantized)
        self.frozen("scale", scale)
        load_cpu_kernels(weight.device)  # fox1's one-row kernels, before anything is compiled

    def frozen(self, name: str, tensor: torch.Tensor) -> None:
        self.register_parameter(name, nn.Parameter(tensor, requires_grad=False))

    def num_weights(self) -> int:
        return self.weight.numel()

    def streamed_tensors(self) -> list[torch.Tensor]:
        """The tensors a one-row decode step reads whole (bench.py's bandwidth bound)."""
        return [self.weight, self.scale]


class Int8Linear(QuantizedLinear):
    """int8 with per-row scales: decoding streams a quarter of fp32's bytes."""

    quantize = staticmethod(quantize_rows_int8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.scale)


class Int8Embedding(Int8Linear):
    """The tied embedding in int8: one table serves the lookup (rows dequantised) and the LM head."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.weight[idx].to(self.scale.dtype) * self.scale[idx, None]

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        return Int8Linear.forward(self, hidden)  # the whole table as a matrix


INT4_GROUP = 32  # weights sharing one scale: an outlier coarsens only its own 32


def quantize_groups_int4(weight: torch.Tensor, group: int = INT4_GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed uint8 (out, in / 2), scales (out, in / group)): per group of `group` weights along a row, llama.cpp's
    Q4_0 rule: s = (the group's weight of largest magnitude) / -8, so that weight is stored as -8 exactly and all 16
    values -8..7 serve (a symmetric max|w| / 7 leaves -8 unused, each step 8/7 as wide: ten times the perplexity
    loss on a trained model, NOTES.md); s is negative where that weight is positive. q = round(w / s), stored as
    q + 8, two to a byte (even column in the low half). A weight moves by at most half a step, but one within half
    a step of the opposite extreme (q = 8, stored as 7) by at most a whole step."""
    rows, columns = weight.shape
    if columns % group:
        raise ValueError(f"int4 needs rows of a multiple of {group} weights, got {columns}")
    grouped = weight.detach().float().view(rows, columns // group, group)
    scale = grouped.gather(-1, grouped.abs().argmax(dim=-1, keepdim=True)).squeeze(-1) / -8
    divisor = torch.where(scale == 0, 1.0, scale)  # an all-zero group: every q 0
    q = ((grouped / divisor[..., None]).round().clamp(-8, 7) + 8).to(torch.uint8).view(rows, columns)
    return q[:, 0::2] | (q[:, 1::2] << 4), scale.to(weight.dtype)


def dequantize_int4(packed: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The (out, in) weights in `dtype` of `quantize_groups_int4`'s output (embedding rows; devices without an int4
    kernel)."""
    return (_int4_groups(packed, scale) * scale.float()[..., None]).view(packed.size(0), -1).to(dtype)


def requantize_int4_rows(packed: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`quantize_groups_int4`'s output as int8 rows with one scale each, for `int8_matmul`. A row's scale is 8/127
    of its largest group scale's magnitude, so that group's -8..7 become -+127..+-111; every weight then moves by at
    most half a step of the row, a thirty-second of its largest group's int4 step. fox1's kernel does it where it is
    loaded (the same numbers: the arithmetic below, worked out per group and looked up per weight)."""
    if packed.device.type == "cpu" and cpu_kernels.LOADED:
        return torch.ops.fox1.int4_as_int8_rows(packed, scale)
    groups = scale.float()
    row_scale = (groups.abs().amax(dim=1) * 8 / 127).clamp_min(torch.finfo(torch.float32).tiny)  # an all-zero row: 0
    q = _int4_groups(packed, scale) * (groups / row_scale[:, None])[..., None]
    return q.round().clamp(-127, 127).to(torch.int8).view(packed.size(0), -1), row_scale


def _int4_groups(packed: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The stored values -8..7 as floats, (out, groups, group): the two halves of each byte, even column first."""
    nibbles = torch.stack(((packed & 15), (packed >> 4)), dim=-1)
    return nibbles.view(packed.size(0), scale.size(1), -1).to(torch.float32) - 8


class Int4Linear(QuantizedLinear):
    """int4 in groups of INT4_GROUP weights (`quantize_groups_int4`), two to a byte. On a CPU with fox1's kernels a
    decoded row is rounded to int8 and meets the packed weights in `int4_row_linear` (as llama.cpp's Q4_0 does). A
    prompt's rows meet the weights made int8 rows for the call (`requantize_int4_rows`) in `int8_matmul` where the CPU
    has int8 dot products, else the weights dequantised for the call, in bf16 where the CPU has it (one fused pass
    per matrix when compiled). On other CPUs the weights are kept only in the layout of
    PyTorch's int4 kernel (`_weight_int4pack_mm_for_cpu`, bf16 rows), whose loop reads them far faster than
    inductor's own over unpacked nibbles."""

    quantize = staticmethod(quantize_groups_int4)

    def __init__(self, weight: torch.Tensor):
        super().__init__(weight)
        if weight.device.type == "cpu" and not cpu_kernels.LOADED:
            nibbles = torch.stack(((self.weight & 15), (self.weight >> 4)), dim=-1).view(weight.size(0), -1)
            self.frozen("kernel_weight", torch.ops.aten._convert_weight_to_int4pack_for_cpu(nibbles.to(torch.int32), 1))
            zeros = torch.zeros_like(self.scale)  # stored values are q + 8: the kernel subtracts the 8 itself
            self.frozen("kernel_scales", torch.stack((self.scale, zeros), dim=-1).transpose(0, 1)
                        .contiguous().to(torch.bfloat16))
            if type(self) is Int4Linear:
                del self.weight  # one copy of the weights: the kernel's

    def num_weights(self) -> int:
        return self.scale.numel() * INT4_GROUP

    def streamed_tensors(self) -> list[torch.Tensor]:
        """PyTorch's kernel's copy where there is one; the packed table and scales beside it then serve only the
        embedding's one-row lookups."""
        if hasattr(self, "kernel_weight"):
            return [self.kernel_weight, self.kernel_scales]
        return super().streamed_tensors()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "kernel_weight"):
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.reshape(-1, x.size(-1)).to(torch.bfloat16),
                                                           self.kernel_weight, INT4_GROUP, self.kernel_scales)
            return y.reshape(*x.shape[:-1], -1).to(x.dtype)
        if x.device.type == "cpu" and cpu_kernels.LOADED and x.numel() == x.size(-1):
            return torch.ops.fox1.int4_row_linear(x.float(), self.weight, self.scale).to(x.dtype)
        if x.device.type == "cpu" and CPU_INT8_DOT:
            return int8_matmul(x, *requantize_int4_rows(self.weight, self.scale))
        dtype = torch.bfloat16 if x.device.type == "cpu" and CPU_BF16 else x.dtype
        return F.linear(x.to(dtype), dequantize_int4(self.weight, self.scale, dtype)).to(x.dtype)


class Int4Embedding(Int4Linear):
    """The tied embedding in int4: rows dequantised for the lookup, the whole table as the LM head."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        rows = idx.flatten()
        return dequantize_int4(self.weight[rows], self.scale[rows], self.scale.dtype).view(*idx.shape, -1)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        return Int4Linear.forward(self, hidden)  # the whole table as a matrix


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace every bias-free matrix of a Fox model (4 per block) and its tied embedding / LM head
    (`embed_tokens`) by int8 versions, in place; norms stay in the model's dtype. For inference only."""
    return _quantized(model, Int8Linear, Int8Embedding)


def quantize_int4(model: nn.Module) -> nn.Module:
    """`quantize_int8` with int4 groups: `small`'s matrices take about an eighth of their fp32 bytes."""
    return _quantized(model, Int4Linear, Int4Embedding)


def _quantized(model: nn.Module, linear_type: type, embedding_type: type) -> nn.Module:
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.Linear) and child.bias is None:
                setattr(module, name, linear_type(child.weight))
    model.embed_tokens = embedding_type(model.embed_tokens.weight)
    return model


def num_weights(model: nn.Module) -> int:
    """How many weights `model` holds: every parameter's elements, but for a quantised matrix its weights (not its
    packed bytes, scales or kernel copies)."""
    return sum(m.num_weights() if isinstance(m, QuantizedLinear)
               else sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
