"""Builds and loads fox1's hand-written CPU kernels (fox1/cpu_kernels.cpp): one row times an int8 or an int4 matrix
with AVX512-VNNI, the quantised matmuls of a decode step (`fox1.speed.linear`, `fox1.speed.Int4Linear`), and its
attention of one query row over the KV cache (`fox1.speed.attention`).

The kernels are compiled once per source, torch version and flags with the system's C++ compiler (the one
torch.compile uses on a CPU; ~10 s), into ~/.cache/fox1 (or $XDG_CACHE_HOME/fox1), and loaded as the operators
`torch.ops.fox1.int8_row_linear`, `int4_row_linear`, `int4_as_int8_rows` (a prompt's int4 weights as int8 rows) and
`one_query_attention`. Where they cannot be (no AVX512-VNNI,
no compiler), `load` says why once and decoding keeps the slower paths. Fox-1 is a small model "for cloud and
edge": on an edge CPU, int8 / int4 weights and these kernels are what make its decoding fast (NOTES.md compares them
with llama.cpp's Q8_0 and Q4_0).
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.utils.cpp_extension

from fox1.files import atomic_path

SOURCE = Path(__file__).with_name("cpu_kernels.cpp")
NEEDS = {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"}  # the instructions the kernels are compiled for
FLAGS = ["-O3", "-std=c++20", "-shared", "-fPIC", "-fopenmp", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni",
         "-w"]

LOADED = False  # whether the torch.ops.fox1 kernels are loaded; read by fox1.speed
_tried = False


def load(cpu_flags: set[str]) -> bool:
    """Load the kernels if this CPU runs them, building them first if no cached build exists; True if loaded."""
    global LOADED, _tried
    if _tried or not NEEDS <= cpu_flags:
        return LOADED
    _tried = True
    try:
        torch.ops.load_library(str(_built()))
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"fox1: CPU kernels not available ({_reason(e)}); decoding takes the slower paths",
              file=sys.stderr)
        return False
    # What torch.compile needs to trace each operator: its output's shape and dtype.
    torch.library.register_fake("fox1::int8_row_linear")(_one_per_weight_row)
    torch.library.register_fake("fox1::int4_row_linear")(_one_per_weight_row)
    torch.library.register_fake("fox1::int4_as_int8_rows")(_int8_rows)
    torch.library.register_fake("fox1::one_query_attention")(lambda q, k, v, mask: torch.empty_like(q))
    LOADED = True
    return True


def _one_per_weight_row(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], weight.size(0))


def _int8_rows(packed: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows = packed.new_empty(packed.size(0), packed.size(1) * 2, dtype=torch.int8)
    return rows, scale.new_empty(packed.size(0), dtype=torch.float32)


def _built() -> Path:
    """The shared library for this source, torch and compiler flags; compiled now (atomically) if not cached."""
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + torch.__version__.encode() + " ".join(FLAGS).encode()).hexdigest()[:16]
    library = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fox1" / f"cpu_kernels-{key}.so"
    if library.exists():
        return library
    torch_lib = Path(torch.__file__).parent / "lib"
    abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"
    includes = [f"-I{path}" for path in torch.utils.cpp_extension.include_paths()]
    print("fox1: building the CPU kernels (once, ~10 s)", file=sys.stderr)
    with atomic_path(library) as partial:
        subprocess.run([os.environ.get("CXX", "c++"), *FLAGS, abi, *includes, str(SOURCE), f"-L{torch_lib}",
                        "-lc10", "-ltorch_cpu", "-o", str(partial)], check=True, capture_output=True, text=True)
    return library


def _reason(error: Exception) -> str:
    if isinstance(error, subprocess.CalledProcessError):
        lines = (error.stderr or "").strip().splitlines()
        return f"the C++ compiler failed: {lines[-1] if lines else f'exit {error.returncode}'}"
    return str(error)
