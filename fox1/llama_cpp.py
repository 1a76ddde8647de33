"""llama.cpp's tools, run on GGUF files that fox1/gguf.py writes: bench.py's edge contender, when a build is given.

Not a dependency: `python bench.py --llama-cpp BUILD` points at a llama.cpp build folder (its bin/ holds
llama-bench, llama-quantize and llama-tokenize); NOTES.md says how to build one. Speeds are llama-bench's own
(model loading and warm-up excluded), prompt processing and decoding each timed in its own run.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from fox1.files import InputError

QUANTIZED_FORMATS = ("Q8_0", "Q4_0")  # llama.cpp's 8-bit and 4-bit blocks of 32 weights with one scale each


def tool(build: Path, name: str) -> Path:
    """The path of a llama.cpp program in a build folder (bin/NAME, or NAME at its top)."""
    for path in (Path(build) / "bin" / name, Path(build) / name):
        if path.is_file():
            return path
    raise InputError(f"--llama-cpp {build}: no {name} in it or in its bin/ (build llama.cpp first: NOTES.md)")


def run(command: list[str | Path]) -> str:
    """stdout of a llama.cpp program; its last stderr line as a one-line error when it fails."""
    result = subprocess.run([str(part) for part in command], capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]
        raise InputError(f"{Path(command[0]).name} failed: {last}")
    return result.stdout


def quantize(build: Path, source: Path, target: Path, kind: str) -> Path:
    """llama-quantize: an f32 GGUF -> a Q8_0 / Q4_0 one."""
    run([tool(build, "llama-quantize"), source, target, kind])
    return target


def bench(build: Path, model: Path, *, prompt_tokens: int, new_tokens: int, threads: int) -> dict[str, float]:
    """{"prefill": tokens/s of a prompt_tokens prompt, "decode": tokens/s of new_tokens tokens generated after a
    prompt_tokens context}: one llama-bench run of each, as fox1's rows are measured (batch 1, one repetition:
    the caller repeats, interleaved with fox1's calls)."""
    common = [tool(build, "llama-bench"), "-m", model, "-t", str(threads), "-r", "1", "-o", "json"]
    prefill = json.loads(run(common + ["-p", str(prompt_tokens), "-n", "0"]))
    decode = json.loads(run(common + ["-p", "0", "-n", str(new_tokens), "-d", str(prompt_tokens)]))
    return {"prefill": float(prefill[0]["avg_ts"]), "decode": float(decode[0]["avg_ts"])}


def tokenize(build: Path, model: Path, text_file: Path) -> list[int]:
    """llama-tokenize's ids for a UTF-8 file, read as it is (no <bos>, no escape processing)."""
    output = run([tool(build, "llama-tokenize"), "-m", model, "-f", text_file, "--ids", "--no-bos", "--no-escape",
                  "--log-disable"])
    return json.loads(output.strip().splitlines()[-1])
