"""Measuring this machine: timers that include the device's queued work, peak memory, A/B rounds (a contender
that fails to run is dropped with a one-line reason), and its peaks (matmul FLOP/s, copy and read bandwidth),
measured rather than taken from a data sheet; `parse_device` for --device. bench.py and sample.py time with these;
MFU and bandwidth shares are fractions of what is measured here.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

import torch

from fox1.files import InputError
from fox1.speed import CPU_FLAGS, huge_pages

Result = TypeVar("Result")
GB = 1e9
# The instruction sets that decide which kernels run: AVX512 vectors, native bf16 dot products
# (AVX512-BF16, Cooper Lake / Zen 4), int8 dot products (VNNI), and the AMX tile units (Sapphire Rapids)
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so wall-clock time measures it (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(call: Callable[[], Result], device: torch.device) -> tuple[Result, float]:
    """(call(), its wall-clock seconds), with the device's work included."""
    synchronize(device)
    start = time.perf_counter()
    result = call()
    synchronize(device)
    return result, time.perf_counter() - start


def parse_device(name: str) -> torch.device:
    """--device NAME as a torch.device, or a one-line InputError (not a device name; CUDA not available)."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name!r} is not a device name (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine")
    return device


def reset_peak_memory(device: torch.device) -> int:
    """Start a peak-memory measurement and return the bytes held now. CUDA: the allocator's peak statistics. CPU:
    the process's peak resident set (VmHWM), reset to the current one through /proc/self/clear_refs; PyTorch's CPU
    allocator returns large blocks to the OS on free, so the peak is the memory really touched."""
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak resident set to the current one
    return _resident_kb("VmRSS") * 1024


def peak_memory(device: torch.device) -> int:
    """The most bytes held since `reset_peak_memory`."""
    synchronize(device)
    return torch.cuda.max_memory_allocated() if device.type == "cuda" else _resident_kb("VmHWM") * 1024


def _resident_kb(field_name: str) -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field_name}:\s+(\d+) kB", status).group(1))


def failure(call: Callable[[], object]) -> str | None:
    """Run call once: None if it worked, else a one-line reason. A contender that cannot run here (out of
    memory, no C++ compiler for inductor, ...) loses its row instead of ending the whole bench."""
    try:
        call()
    except Exception as error:  # noqa: BLE001 - whatever went wrong is reported in the row
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # give back what the failed call had reserved
        return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"[:120]
    return None


def runnable(calls: dict[str, Callable[[], object]]) -> tuple[dict[str, Callable[[], object]], dict[str, str]]:
    """(the calls that ran once without error, {name: why} for the others). The one run is also each call's
    cold start (a compile), which is kept out of the timed rounds."""
    errors = {name: failure(call) for name, call in calls.items()}
    return {name: call for name, call in calls.items() if errors[name] is None}, \
        {name: error for name, error in errors.items() if error}


def interleaved_runs(calls: dict[str, Callable[[], object]], device: torch.device, repeats: int,
                     warmup: int = 1) -> dict[str, list[tuple[object, float]]]:
    """(result, seconds) of each call in each of `repeats` rounds, after `warmup` untimed rounds (compilation,
    caches). A result's `compile_seconds` (a compiled sample.generate compiles as it starts) is left out, as the
    first compile is.

    Within a round the calls take turns (a, b, a, b, ...): other processes on a shared machine come and
    go, and a ratio formed within one round compares runs made under about the same load."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    runs: dict[str, list[tuple[object, float]]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            result, elapsed = timed(call, device)
            runs[name].append((result, elapsed - getattr(result, "compile_seconds", 0.0)))  # a compiled warm-up
    return runs


def interleaved_seconds(calls: dict[str, Callable[[], object]], device: torch.device, repeats: int,
                        warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each call in each round (`interleaved_runs`)."""
    return {name: [seconds for _, seconds in runs]
            for name, runs in interleaved_runs(calls, device, repeats, warmup).items()}


def cpu_description() -> str:
    """CPU model, the instruction sets that matter for speed, torch's kernel level and its thread count."""
    model = "unknown CPU"
    if Path("/proc/cpuinfo").is_file():
        names = re.findall(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        model = names[0].strip() if names else model
    flags = [flag for flag in SPEED_FLAGS if flag in CPU_FLAGS]
    return (f"{model}; {' '.join(flags) or 'no AVX2/AVX512 flags'}; torch kernels "
            f"{torch.backends.cpu.get_cpu_capability()}; {torch.get_num_threads()} threads")


# Dense bf16 matmul peak (FLOP/s) of common accelerators, for train.py's MFU. CPUs have no entry: their log shows
# tokens/s (bench.py measures a CPU's peak instead).
GPU_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "4090": 165e12}


def gpu_peak_flops(device: torch.device) -> float | None:
    """The data-sheet bf16 peak of a known GPU, else None."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in GPU_PEAK_FLOPS.items() if key in name), None)


def matmul_peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of a large square matmul, the best the BLAS gets here: 2048^3 on a CPU (17 GFLOP, ~0.2 s on
    2 cores), 8192^3 on a GPU (1.1 TFLOP, ~1 ms on an H100-class chip)."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    return 2 * n**3 / min(interleaved_seconds({"matmul": lambda: a @ b}, device, repeats=5, warmup=2)["matmul"])


def copy_bandwidth(device: torch.device) -> float:
    """Bytes/s moved by copying a tensor far bigger than the caches (256 MB on a CPU;
    4 GB on a GPU), counting the read and the write as STREAM's "copy" does. The destination is
    preallocated: a fresh clone() would also time the OS mapping new pages (much slower)."""
    size = (4 << 30) if device.type == "cuda" else (256 << 20)
    src = torch.ones(size // 4, device=device)
    dst = torch.empty_like(src)
    return 2 * size / min(interleaved_seconds({"copy": lambda: dst.copy_(src)}, device, repeats=5)["copy"])


def read_bandwidth(device: torch.device, nbytes: int, pieces: int = 16) -> float:
    """Bytes/s of summing nbytes: how fast that many bytes of weights can stream here, the caches included. The
    copy bound counts a buffer bigger than any cache; a smaller one may stay in cache. The bytes are held as the
    weights are, in 2 MB pages on a CPU (`huge_pages`), moved there in pieces so as not to hold them twice."""
    buffers = torch.nn.ParameterList([torch.nn.Parameter(torch.ones(max(1, nbytes // 4 // pieces), device=device),
                                                         requires_grad=False) for _ in range(pieces)])
    huge_pages(buffers)
    return nbytes / min(interleaved_seconds({"sum": lambda: [b.sum() for b in buffers]}, device, repeats=5)["sum"])


@dataclass
class Machine:
    """The machine's peaks, measured in this run. Other processes on a shared machine can slow one
    measurement down, so it is measured before and after the timed sections and the best values are kept
    (MFU and bandwidth utilisation against a depressed peak would read above the truth, even over 100%)."""

    device: torch.device
    dtypes: list[torch.dtype]
    matmul_flops: dict[torch.dtype, float] = field(default_factory=dict)  # FLOP/s
    copy_bandwidth: float = 0.0  # bytes/s, read + write
    measurements: int = 0

    def measure(self) -> Machine:
        for dtype in self.dtypes:
            self.matmul_flops[dtype] = max(self.matmul_flops.get(dtype, 0.0), matmul_peak_flops(self.device, dtype))
        self.copy_bandwidth = max(self.copy_bandwidth, copy_bandwidth(self.device))
        self.measurements += 1
        return self

    def describe(self) -> tuple[dict, list[str]]:
        """(numbers for the JSON line, lines for the report)."""
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else cpu_description()
        matmul = {str(dtype).removeprefix("torch."): flops for dtype, flops in self.matmul_flops.items()}
        numbers = dict(machine=name, copy_gb_per_s=self.copy_bandwidth / GB,
                       **{f"matmul_tflops[{dtype}]": flops / 1e12 for dtype, flops in matmul.items()})
        peaks = ", ".join(f"{flops / 1e9:,.1f} GFLOP/s {dtype}" for dtype, flops in matmul.items())
        return numbers, [f"machine: {name}", f"peaks: matmul {peaks}; copy {self.copy_bandwidth / GB:.1f} GB/s "
                                              f"(read+write); best of {self.measurements} measurements"]
