"""Tests for fox1/cpu_kernels.cpp (the one-row int8 kernel) and its loader fox1/cpu_kernels.py: the kernel against
`int8_matmul`, which rounds a prompt's rows the same way, and what happens where it cannot be built."""
import os
import subprocess
import sys

import pytest
import torch

from fox1 import cpu_kernels
from fox1.speed import CPU_FLAGS, int8_matmul, linear, quantize_rows_int8

loaded = cpu_kernels.load(CPU_FLAGS)
needs_kernel = pytest.mark.skipif(not loaded, reason="the int8 kernel needs AVX512-VNNI and a C++ compiler")


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


@needs_kernel
def test_a_second_process_loads_the_cached_build():
    done = subprocess.run([sys.executable, "-c", "from fox1 import cpu_kernels, speed; "
                           "print(cpu_kernels.load(speed.CPU_FLAGS))"], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "True" and "building" not in done.stderr


def test_without_a_compiler_one_line_says_so_and_int8_still_works(tmp_path):
    """A CPU with the instructions but no working compiler: no traceback, one line, the compiled-loop path."""
    script = ("import torch; from fox1 import cpu_kernels; from fox1.speed import Int8Linear, CPU_FLAGS; "
              "cpu_kernels.NEEDS = set(); layer = Int8Linear(torch.randn(8, 64)); "
              "print(cpu_kernels.INT8_ROW, layer(torch.randn(1, 64)).shape)")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "CXX": "false"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.split() == ["False", "torch.Size([1,", "8])"]
    assert "fox1: int8 CPU kernel not available (the C++ compiler failed" in done.stderr
    assert "Traceback" not in done.stderr and not list(tmp_path.rglob("*.so*"))  # nothing half-written is left


def test_int8_layers_on_a_cpu_without_the_instructions_do_not_build(monkeypatch):
    monkeypatch.setattr(cpu_kernels, "_tried", False)
    monkeypatch.setattr(cpu_kernels, "INT8_ROW", False)
    assert cpu_kernels.load({"avx2"}) is False and not cpu_kernels._tried
