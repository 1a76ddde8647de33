"""llama.cpp's tools, run on GGUF files that fox1/gguf.py writes: bench.py's edge contender, when a build is given.

Not a dependency: `python bench.py --llama-cpp BUILD` points at a llama.cpp build folder (its bin/ holds
llama-bench, llama-quantize, llama-tokenize and llama-perplexity); NOTES.md says how to build one. Speeds are
llama-bench's own (model loading and warm-up excluded), prompt processing and decoding each timed in its own run;
perplexities llama-perplexity's, which `chunked_perplexity` repeats for fox1's models.
"""
from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from fox1.files import InputError
from fox1.gguf import write_gguf

QUANTIZED_FORMATS = ("Q8_0", "Q4_0")  # llama.cpp's 8-bit and 4-bit blocks of 32 weights with one scale each
PERPLEXITY_CONTEXT = 512  # ids a chunk in the perplexity rows against llama.cpp (llama-perplexity's default)


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


def gguf_files(build: Path, export: Path, folder: Path, unquantized: tuple[str, ...] = ("f32",)) -> dict[str, Path]:
    """{format: GGUF file in folder} of a fox1 export: fox1/gguf.py writes each of `unquantized` (f32 first),
    llama-quantize makes the Q8_0 and Q4_0 files from the f32 one."""
    files = {kind: folder / f"{kind}.gguf" for kind in (*unquantized, *QUANTIZED_FORMATS)}
    for kind in unquantized:
        write_gguf(export, files[kind], kind)
    for kind in QUANTIZED_FORMATS:
        quantize(build, files["f32"], files[kind], kind)
    return files


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


def perplexity(build: Path, model: Path, text_file: Path, *, context: int, threads: int) -> float:
    """llama-perplexity over a UTF-8 file: its ids with <bos> in front, cut into chunks of `context` ids, each chunk's
    first id replaced by <bos>, every id of a chunk's second half scored given the ids before it. It prints its
    running estimate after each chunk ("[3]142.1380,"); the last is over every chunk."""
    output = run([tool(build, "llama-perplexity"), "-m", model, "-f", text_file, "-c", str(context),
                  "-b", str(context), "-t", str(threads)])
    estimates = re.findall(r"\[\d+\]([0-9.]+)", output)
    if not estimates:
        raise InputError(f"llama-perplexity printed no estimate for {text_file} (fewer than {2 * context} tokens?)")
    return float(estimates[-1])


def chunked_perplexity(model: nn.Module, ids: list[int], context: int, bos_id: int) -> float:
    """fox1's `model` scored as llama-perplexity scores a GGUF file (`perplexity`), so the engines' numbers compare:
    ids (<bos> first) cut into chunks of `context`, each chunk's first id replaced by <bos>, every id of a chunk's
    second half scored given the ids before it."""
    chunks = torch.tensor(ids[:len(ids) // context * context], device=model.norm.weight.device).view(-1, context)
    chunks[:, 0] = bos_id
    first = context // 2
    with torch.inference_mode():
        nll = sum(float(F.cross_entropy(model(chunk[None])[0, first:-1].float(), chunk[first + 1:], reduction="sum"))
                  for chunk in chunks)
    return math.exp(nll / (chunks.size(0) * (context - first - 1)))
