"""Tests for fox1/cpu_kernels.cpp (the one-row int8 and int4 kernels) and its loader fox1/cpu_kernels.py: the int8
kernel against `int8_matmul`, which rounds a prompt's rows the same way, the int4 one against the dequantised
weights, int4 weights made int8 rows against the same arithmetic in PyTorch, and what happens where they cannot be
built."""
import os
import subprocess
import sys

import pytest
import torch

from fox1 import cpu_kernels
from fox1.speed import (CPU_FLAGS, Int4Linear, dequantize_int4, int8_matmul, linear, quantize_groups_int4,
                        quantize_rows_int8, requantize_int4_rows)

loaded = cpu_kernels.load(CPU_FLAGS)
needs_kernel = pytest.mark.skipif(not loaded, reason="the kernels need AVX512-VNNI and a C++ compiler")


@needs_kernel
@pytest.mark.parametrize("rows, columns", [(48, 64), (50, 200), (3, 1000), (640, 1024)])
def test_one_row_equals_the_prompt_path_bit_for_bit(rows, columns):
    """Same rounding of x, same int32 sums, same scaling order: decoding a token gives the numbers prefilling it
    would (columns not a multiple of 64 take the masked tail; rows not a multiple of the threads' share too)."""
    torch.manual_seed(rows)
    quantized, scale = quantize_rows_int8(torch.randn(rows, columns))
    x = torch.randn(1, 1, columns) * 3
    y = torch.ops.fox1.int8_row_linear(x, quantized, scale)
    assert y.shape == (1, 1, rows)
    assert torch.equal(y, int8_matmul(x, quantized, scale))
    strided = torch.stack((scale, -scale), dim=1)[:, 0]  # a view with stride 2: the kernel makes it contiguous
    assert torch.equal(torch.ops.fox1.int8_row_linear(x, quantized, strided), y)


@needs_kernel
def test_linear_sends_one_row_to_the_kernel_in_any_dtype():
    quantized, scale = quantize_rows_int8(torch.randn(96, 128))
    x = torch.randn(128)
    assert torch.equal(linear(x, quantized, scale), torch.ops.fox1.int8_row_linear(x, quantized, scale))
    x, scale = x.bfloat16(), scale.bfloat16()  # computed in fp32, returned in x's dtype
    expected = torch.ops.fox1.int8_row_linear(x.float(), quantized, scale.float()).bfloat16()
    assert torch.equal(linear(x, quantized, scale), expected)


@needs_kernel
def test_a_zero_row_gives_zeros_and_the_error_stays_within_the_rounding():
    quantized, scale = quantize_rows_int8(torch.randn(32, 64))
    assert torch.equal(torch.ops.fox1.int8_row_linear(torch.zeros(64), quantized, scale), torch.zeros(32))
    x = torch.randn(64)
    exact = x @ (quantized.float() * scale[:, None]).T
    step = x.abs().max() / 127  # each x_k moves by at most step / 2
    bound = step / 2 * (quantized.float().abs() * scale[:, None]).sum(1)
    assert ((torch.ops.fox1.int8_row_linear(x, quantized, scale) - exact).abs() <= bound * 1.001).all()


@needs_kernel
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_row_with_nan_or_inf_gives_nan_not_numbers(bad):
    """A model gone wrong must stay visibly wrong (sample.py stops on non-finite logits), as int8_matmul's is."""
    quantized, scale = quantize_rows_int8(torch.randn(16, 64))
    x = torch.randn(64)
    x[7] = bad
    assert torch.ops.fox1.int8_row_linear(x, quantized, scale).isnan().all()
    assert not int8_matmul(x[None], quantized, scale).isfinite().all()


def rounded_to_int8(x: torch.Tensor) -> torch.Tensor:
    """x as the kernels see it: rounded to int8 steps of max|x| / 127 (`quantize_rows_int8` on the row)."""
    quantized, scale = quantize_rows_int8(x.reshape(1, -1))
    return (quantized.float() * scale[:, None]).view_as(x)


@needs_kernel
@pytest.mark.parametrize("rows, columns", [(48, 64), (50, 96), (3, 1024), (640, 2048), (7, 32), (5, 416)])
@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.bfloat16])
def test_int4_row_equals_the_rounded_row_times_the_dequantised_weights(rows, columns, scale_dtype):
    """Exact up to fp32 summation order: int4 x int8 products sum exactly in int32 within each group of 32, then
    each group's scale. Columns not a multiple of 128 (a block of 128 holds four groups) take the masked tail."""
    torch.manual_seed(columns)
    packed, scale = quantize_groups_int4(torch.randn(rows, columns))
    scale = scale.to(scale_dtype)
    x = torch.randn(1, 1, columns) * 3
    y = torch.ops.fox1.int4_row_linear(x, packed, scale)
    assert y.shape == (1, 1, rows) and y.dtype == torch.float32
    exact = rounded_to_int8(x).double() @ dequantize_int4(packed, scale, torch.float32).double().T
    assert torch.allclose(y.double(), exact, rtol=1e-5, atol=1e-4 * exact.abs().max().item())


@needs_kernel
@pytest.mark.parametrize("rows, columns", [(1, 32), (48, 64), (37, 416), (300, 2048)])
@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.bfloat16])
def test_int4_as_int8_rows_equals_the_arithmetic_of_requantize_int4_rows(rows, columns, scale_dtype, monkeypatch):
    """Every stored value 0..15 (-8..7), scales of either sign spanning four decades within a row, and an all-zero
    row."""
    torch.manual_seed(rows)
    packed = torch.randint(0, 256, (rows, columns // 2), dtype=torch.uint8)
    signs = torch.randint(0, 2, (rows, columns // 32)) * 2 - 1
    scale = (torch.rand(rows, columns // 32) * torch.logspace(-3, 1, columns // 32) * signs).to(scale_dtype)
    scale[rows // 2] = 0
    kernel = torch.ops.fox1.int4_as_int8_rows(packed, scale)
    monkeypatch.setattr(cpu_kernels, "LOADED", False)
    arithmetic = requantize_int4_rows(packed, scale)
    assert kernel[0].dtype == torch.int8 and torch.equal(kernel[0], arithmetic[0])
    assert torch.equal(kernel[1], arithmetic[1]) and (kernel[0][rows // 2] == 0).all()


@needs_kernel
def test_int4_layers_send_one_row_to_the_kernel_and_a_prompt_to_int8_rows():
    layer = Int4Linear(torch.randn(96, 128))
    assert not hasattr(layer, "kernel_weight")  # no second copy in PyTorch's int4 layout where fox1's kernel runs
    x = torch.randn(1, 128)
    assert torch.equal(layer(x), torch.ops.fox1.int4_row_linear(x, layer.weight, layer.scale))
    prompt = torch.randn(5, 128)
    assert torch.equal(layer(prompt), int8_matmul(prompt, *torch.ops.fox1.int4_as_int8_rows(layer.weight, layer.scale)))
    exact = prompt @ dequantize_int4(layer.weight, layer.scale, torch.float32).T  # off by the rows' int8 rounding
    assert (layer(prompt) - exact).abs().max() < 0.03 * exact.abs().max()


@needs_kernel
def test_int4_kernel_gives_nan_for_a_row_with_inf():
    packed, scale = quantize_groups_int4(torch.randn(16, 64))
    x = torch.randn(64)
    x[3] = float("inf")
    assert torch.ops.fox1.int4_row_linear(x, packed, scale).isnan().all()


@needs_kernel
def test_a_second_process_loads_the_cached_build():
    done = subprocess.run([sys.executable, "-c", "from fox1 import cpu_kernels, speed; "
                           "print(cpu_kernels.load(speed.CPU_FLAGS))"], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "True" and "building" not in done.stderr


def test_without_a_compiler_one_line_says_so_and_quantised_layers_still_work(tmp_path):
    """A CPU with the instructions but no working compiler: no traceback, one line, the slower paths (int4 in
    PyTorch's int4 kernel's layout)."""
    script = ("import torch; from fox1 import cpu_kernels; from fox1.speed import Int4Linear, Int8Linear; "
              "cpu_kernels.NEEDS = set(); int8, int4 = Int8Linear(torch.randn(8, 64)), Int4Linear(torch.randn(16, 64)); "
              "print(cpu_kernels.LOADED, hasattr(int4, 'kernel_weight'), int8(torch.randn(1, 64)).shape, "
              "int4(torch.randn(1, 64)).shape)")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "CXX": "false"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.split() == ["False", "True", "torch.Size([1,", "8])", "torch.Size([1,", "16])"]
    assert "fox1: CPU kernels not available (the C++ compiler failed" in done.stderr
    assert "Traceback" not in done.stderr and not list(tmp_path.rglob("*.so*"))  # nothing half-written is left


def test_a_cpu_without_the_instructions_does_not_build(monkeypatch):
    monkeypatch.setattr(cpu_kernels, "_tried", False)
    monkeypatch.setattr(cpu_kernels, "LOADED", False)
    assert cpu_kernels.load({"avx2"}) is False and not cpu_kernels._tried


@needs_kernel
@pytest.mark.parametrize("batch, heads, kv_heads, length, head_dim, written", [(1, 8, 2, 192, 64, 130),
                                                                               (2, 4, 4, 40, 24, 40),
                                                                               (1, 16, 4, 300, 128, 1),
                                                                               (2, 6, 2, 70, 32, 37)])
def test_one_query_attention_equals_sdpa_over_the_written_keys(batch, heads, kv_heads, length, head_dim, written):
    """A decode step's attention: one query row per head, GQA, a static cache of which the mask shows the first
    `written` slots (head_dim not a multiple of 16 takes the masked tail); the slots past them hold garbage."""
    torch.manual_seed(length)
    q = torch.randn(batch, heads, 1, head_dim) * 2
    k, v = torch.randn(2, batch, kv_heads, length, head_dim)
    mask = torch.arange(length)[None, :] < written
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    y = torch.ops.fox1.one_query_attention(q, k, v, mask)
    assert y.shape == expected.shape and torch.allclose(y, expected, rtol=1e-5, atol=1e-5)
    k[:, :, written:], v[:, :, written:] = float("nan"), float("nan")  # keys the mask hides are never read
    assert torch.equal(torch.ops.fox1.one_query_attention(q, k, v, mask), y)


@needs_kernel
def test_attention_sends_a_cpu_decode_step_to_the_kernel_and_everything_else_to_sdpa():
    from fox1.speed import attention
    q, k, v = torch.randn(1, 4, 1, 32), torch.randn(1, 2, 10, 32), torch.randn(1, 2, 10, 32)
    mask = torch.arange(10)[None, :] <= 6
    assert torch.equal(attention(q, k, v, mask), torch.ops.fox1.one_query_attention(q, k, v, mask))
    prompt = torch.randn(1, 4, 3, 32)  # several query rows (a prompt): SDPA
    sdpa = torch.nn.functional.scaled_dot_product_attention(prompt, k, v, attn_mask=mask, enable_gqa=True)
    assert torch.equal(attention(prompt, k, v, mask), sdpa)
