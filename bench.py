"""
How close fox1 comes to this machine's limits, next to the reference implementations.

Fox-1's deployment claim (arXiv 2411.05281) is speed (>200 output tokens/s for the 1.6B model), and its
256K vocabulary makes the loss the memory hot spot of training. This script measures, in one run:

  * the machine: peak matmul FLOP/s and memory copy bandwidth, measured here, not taken from a data sheet;
  * training step tokens/s and MFU (model FLOPs, `Fox.flops_per_token`, over the measured matmul peak);
  * prefill tokens/s, and decode tokens/s at batch 1 with its memory-bandwidth utilisation: decoding reads
    every weight once per token, so copy bandwidth / weight bytes is the speed limit;
  * peak memory of the chunked loss vs the naive `F.cross_entropy(hidden @ W.T)` at the preset's vocabulary;
  * tokenizer training and encoding throughput (on ../shared/corpora when present, else Python's stdlib);
  * the same rows for Hugging Face `transformers.LlamaForCausalLM` (same config, precision and batch) and
    `tokenizers` when they are installed (they are not dependencies of fox1; rows are skipped without them).

    python bench.py --preset small                  # ~3-5 minutes on a 2-core CPU
    python bench.py --preset fox-1.6b --device cuda # bf16 on a GPU

It prints a readable table, then one JSON line with every number (the last line, for scripts).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from tqdm import tqdm

import sample
from model import Fox, FoxConfig, chunked_cross_entropy, config_to_hf
from tokenizer import Tokenizer

SHARED_CORPORA = Path(__file__).resolve().parent.parent / "shared" / "corpora"
GB = 1e9


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1,
                     best: bool = False) -> float:
    """Wall time of one fn() after `warmup` untimed calls: the mean of `repeats` calls, or the fastest
    one (for machine peaks, where the fastest run is the one least disturbed by other processes)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times) if best else sum(times) / len(times)


# --------------------------------------------------------------------------------------------------
# The machine


def matmul_peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of a large square matmul, the best the BLAS gets here: 2048^3 on a CPU (17 GFLOP, ~0.2 s on
    2 cores), 8192^3 on a GPU (1.1 TFLOP, ~1 ms on an H100-class chip)."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    return 2 * n**3 / seconds_per_call(lambda: a @ b, device, repeats=5, warmup=2, best=True)


def copy_bandwidth(device: torch.device) -> float:
    """Bytes/s moved by copying a tensor far bigger than the caches (256 MB on a CPU, 32 MB of L3 here;
    4 GB on a GPU), counting the read and the write as STREAM's "copy" does. The destination is
    preallocated: a fresh clone() would also time the OS mapping new pages (4x slower on this CPU)."""
    size = (4 << 30) if device.type == "cuda" else (256 << 20)
    src = torch.ones(size // 4, device=device)
    dst = torch.empty_like(src)
    return 2 * size / seconds_per_call(lambda: dst.copy_(src), device, repeats=5, warmup=1, best=True)


# --------------------------------------------------------------------------------------------------
# Training step


def training_step_seconds(model: torch.nn.Module, loss_fn: Callable, batch: torch.Tensor, device: torch.device,
                          steps: int) -> float:
    """Mean time of forward + backward + AdamW step + zero_grad, the whole step train.py runs."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        loss_fn(model, batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return seconds_per_call(step, device, repeats=steps, warmup=1)


def fox_loss(model: Fox, batch: torch.Tensor) -> torch.Tensor:
    return model(batch[:, :-1], batch[:, 1:])


def hf_loss(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    return model(input_ids=batch[:, :-1], labels=batch[:, :-1]).loss  # transformers shifts labels itself


def hf_llama(config: FoxConfig, dtype: torch.dtype, device: torch.device) -> torch.nn.Module | None:
    """transformers.LlamaForCausalLM with our exact config (the released Fox-1 is one), or None."""
    try:
        import transformers
    except ImportError:
        return None
    transformers.logging.set_verbosity_error()
    hf_config = transformers.LlamaConfig(**config_to_hf(config, dtype))
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(hf_config).to(device=device, dtype=dtype)


# --------------------------------------------------------------------------------------------------
# Generation


def fox_generation_speed(model: Fox, prompt: torch.Tensor, new_tokens: int, compile: bool) -> tuple[float, float]:
    """(prefill tokens/s, decode tokens/s), greedy with no <eos> so every run decodes new_tokens tokens.
    The first call warms up (cache allocation, compilation); the second is measured."""
    for _ in range(2):
        result = sample.generate(model, prompt, new_tokens, temperature=0, compile=compile)
    return result.prefill_tokens_per_s, result.decode_tokens_per_s


def hf_generation_speed(model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int,
                        device: torch.device) -> tuple[float, float]:
    """(prefill tokens/s, decode tokens/s) of transformers' generate (greedy, its default dynamic cache).
    generate times prefill and decode together, so decode = (t(new_tokens) - t(1)) / (new_tokens - 1)."""

    def run(count: int) -> Callable[[], object]:
        return lambda: model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=count,
                                      min_new_tokens=count, do_sample=False, pad_token_id=0)

    with torch.inference_mode():
        first = seconds_per_call(run(1), device, repeats=2)
        full = seconds_per_call(run(new_tokens), device, repeats=1)
    decode = max(full - first, 1e-9)
    return prompt.numel() / first, prompt.size(0) * (new_tokens - 1) / decode


# --------------------------------------------------------------------------------------------------
# Loss memory, measured in a fresh process so nothing else is in the peak


def _resident_kb(field_name: str) -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field_name}:\s+(\d+) kB", status).group(1))


def loss_peak_bytes(kind: str, tokens: int, hidden_size: int, vocab_size: int, dtype_name: str,
                    device_name: str) -> int:
    """Peak memory of one forward + backward of the loss over `tokens` tokens, above what the inputs
    (hidden states and the tied embedding) already hold; the gradients count, for both kinds alike.

    CUDA: torch.cuda.max_memory_allocated. CPU: the process's peak resident set (VmHWM), reset just
    before through /proc/self/clear_refs; PyTorch's CPU allocator returns large blocks to the OS on
    free, so this is the memory the loss really touched."""
    device, dtype = torch.device(device_name), getattr(torch, dtype_name)
    torch.manual_seed(0)
    hidden = torch.randn(tokens, hidden_size, device=device, dtype=dtype, requires_grad=True)
    weight = (0.02 * torch.randn(vocab_size, hidden_size, device=device)).to(dtype).requires_grad_()
    targets = torch.randint(vocab_size, (tokens,), device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak resident set to the current one
        baseline = _resident_kb("VmRSS") * 1024
    if kind == "chunked":
        loss = chunked_cross_entropy(hidden, weight, targets)
    else:
        loss = F.cross_entropy((hidden @ weight.T).float(), targets)
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - baseline
    return _resident_kb("VmHWM") * 1024 - baseline


def loss_memory(config: FoxConfig, tokens: int, dtype: torch.dtype, device: torch.device) -> dict[str, float]:
    """{kind: peak bytes} for the chunked and the naive loss, each in its own spawned process. A kind
    that dies (out of memory) is reported as NaN."""
    peaks = {}
    for kind in ("chunked", "naive"):
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
            job = pool.submit(loss_peak_bytes, kind, tokens, config.hidden_size, config.vocab_size,
                              str(dtype).removeprefix("torch."), str(device))
            try:
                peaks[kind] = float(job.result())
            except concurrent.futures.process.BrokenProcessPool:
                peaks[kind] = float("nan")
    return peaks


# --------------------------------------------------------------------------------------------------
# Tokenizer


def benchmark_documents(megabytes: float) -> tuple[list[str], str]:
    """About `megabytes` MB of text as documents: the shared corpora when present, else the stdlib."""
    if SHARED_CORPORA.is_dir():
        files, source = sorted(SHARED_CORPORA.glob("*.txt")), str(SHARED_CORPORA)
    else:
        stdlib = Path(os.__file__).parent
        files, source = sorted(stdlib.glob("*.py")) + sorted(stdlib.glob("*/*.py")), str(stdlib)
    documents, size = [], 0
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        for document in text.split("\n\n\n"):
            documents.append(document)
            size += len(document.encode())
            if size >= megabytes * 1e6:
                return documents, source
    return documents, source


def tokenizer_speed(documents: list[str], vocab_size: int) -> dict[str, float]:
    size = sum(len(d.encode()) for d in documents)
    start = time.perf_counter()
    tokenizer = Tokenizer.train(documents, vocab_size, workers=min(2, os.cpu_count() or 1), progress=False)
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    ids = tokenizer.encode_batch(documents)
    encode_seconds = time.perf_counter() - start
    return {"train_mb_per_s": size / 1e6 / train_seconds, "train_s": train_seconds,
            "encode_mb_per_s": size / 1e6 / encode_seconds, "bytes_per_token": size / sum(map(len, ids))}


def hf_tokenizer_speed(documents: list[str], vocab_size: int) -> dict[str, float] | None:
    """The same measurements for Hugging Face `tokenizers` (Rust): byte-level BPE with our split pattern."""
    try:
        import tokenizers
        from tokenizers import pre_tokenizers
    except ImportError:
        return None
    from tokenizer import DEFAULT_PATTERN, SPECIAL_TOKENS

    size = sum(len(d.encode()) for d in documents)
    tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(DEFAULT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                             show_progress=False)
    start = time.perf_counter()
    tokenizer.train_from_iterator(documents, trainer)
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    encodings = tokenizer.encode_batch(documents)
    encode_seconds = time.perf_counter() - start
    return {"train_mb_per_s": size / 1e6 / train_seconds, "train_s": train_seconds,
            "encode_mb_per_s": size / 1e6 / encode_seconds,
            "bytes_per_token": size / sum(len(e.ids) for e in encodings)}


# --------------------------------------------------------------------------------------------------
# Report


@dataclass
class Report:
    rows: list[tuple[str, str, str, str, str]] = field(default_factory=list)  # what, fox1, reference, ratio, note
    numbers: dict[str, object] = field(default_factory=dict)

    def add(self, what: str, ours: str, reference: str = "", ratio: str = "", note: str = "") -> None:
        self.rows.append((what, ours, reference, ratio, note))

    def print(self, title: str) -> None:
        header = ("row", "fox1", "reference (HF)", "fox1/ref", "note")
        widths = [max(len(r[i]) for r in [header, *self.rows]) for i in range(5)]
        print(title)
        for row in [header, *self.rows]:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        print(json.dumps(self.numbers))


def ratio(ours: float, reference: float) -> str:
    return f"{ours / reference:.2f}x"


def versus(ours: float, reference: float | None, unit: str) -> tuple[str, str, str]:
    """The fox1, reference and ratio cells of a row; the reference may be missing (not installed)."""
    if reference is None:
        return f"{ours:,.1f} {unit}", "not installed", ""
    return f"{ours:,.1f} {unit}", f"{reference:,.1f} {unit}", ratio(ours, reference)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Throughput, MFU, bandwidth utilisation and loss memory of fox1, "
                                "next to Hugging Face transformers/tokenizers when installed.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", default="small", choices=["tiny", "small", "fox-1.6b"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help="default: bfloat16 on cuda, float32 on cpu")
    p.add_argument("--batch-size", type=int, help="training batch (default: 4 on cpu, 8 on cuda)")
    p.add_argument("--seq-len", type=int, help="training sequence length (default: 256 on cpu, 2048 on cuda)")
    p.add_argument("--steps", type=int, default=3, help="timed training steps, after one warm-up step")
    p.add_argument("--prompt-len", type=int, default=128, help="prefill length for the generation rows")
    p.add_argument("--new-tokens", type=int, default=64, help="decoded tokens for the generation rows")
    p.add_argument("--compile", action="store_true", help="torch.compile fox1's decode step")
    p.add_argument("--loss-tokens", type=int, default=8192,
                   help="tokens in the loss-memory rows (8192 = one Fox-1 context)")
    p.add_argument("--tokenizer-mb", type=float, default=4.0, help="MB of text for the tokenizer rows")
    p.add_argument("--tokenizer-vocab", type=int, default=8192, help="vocabulary trained in the tokenizer rows")
    p.add_argument("--skip-tokenizer", action="store_true")
    p.add_argument("--skip-reference", action="store_true", help="skip the Hugging Face rows")
    args = p.parse_args()
    args.device = torch.device(args.device)
    args.dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.type == "cuda" else "float32"))
    args.batch_size = args.batch_size or (8 if args.device.type == "cuda" else 4)
    args.seq_len = args.seq_len or (2048 if args.device.type == "cuda" else 256)
    return args


@dataclass
class Machine:
    matmul_flops: float  # FLOP/s
    copy_bandwidth: float  # bytes/s


def bench_machine(args: argparse.Namespace, report: Report) -> Machine:
    machine = Machine(matmul_peak_flops(args.device, args.dtype), copy_bandwidth(args.device))
    report.numbers.update(matmul_tflops=machine.matmul_flops / 1e12, copy_gb_per_s=machine.copy_bandwidth / GB)
    report.add("machine peak", f"matmul {machine.matmul_flops / 1e9:,.1f} GFLOP/s",
               note=f"copy {machine.copy_bandwidth / GB:.1f} GB/s (read+write)")
    return machine


def bench_training(args: argparse.Namespace, report: Report, machine: Machine, model: Fox,
                   hf: torch.nn.Module | None) -> None:
    batch = torch.randint(model.config.vocab_size, (args.batch_size, args.seq_len + 1), device=args.device)
    tokens = args.batch_size * args.seq_len
    ours = tokens / training_step_seconds(model, fox_loss, batch, args.device, args.steps)
    theirs = None if hf is None else tokens / training_step_seconds(hf, hf_loss, batch, args.device, args.steps)
    mfu = ours * model.flops_per_token(args.seq_len) / machine.matmul_flops
    report.numbers.update(params=model.num_params(), train_tokens_per_s=ours, mfu=mfu, hf_train_tokens_per_s=theirs)
    report.add(f"train step (b={args.batch_size}, T={args.seq_len})", *versus(ours, theirs, "tok/s"), f"MFU {mfu:.1%}")


def bench_generation(args: argparse.Namespace, report: Report, machine: Machine, model: Fox,
                     hf: torch.nn.Module | None) -> None:
    model.eval()
    prompt = torch.randint(model.config.vocab_size, (1, args.prompt_len), device=args.device)
    prefill, decode = fox_generation_speed(model, prompt, args.new_tokens, args.compile)
    hf_prefill, hf_decode = (None, None) if hf is None else hf_generation_speed(hf, prompt, args.new_tokens,
                                                                                args.device)
    weight_bytes = model.num_params() * model.embed_tokens.weight.element_size()
    bound = machine.copy_bandwidth / weight_bytes  # tokens/s if each step only streamed the weights once
    report.numbers.update(prefill_tokens_per_s=prefill, decode_tokens_per_s=decode, hf_prefill_tokens_per_s=hf_prefill,
                          hf_decode_tokens_per_s=hf_decode, decode_bandwidth_utilisation=decode / bound)
    report.add(f"prefill (b=1, T={args.prompt_len})", *versus(prefill, hf_prefill, "tok/s"))
    report.add(f"decode (b=1, {args.new_tokens} tokens{', compiled' if args.compile else ''})",
               *versus(decode, hf_decode, "tok/s"), f"{decode / bound:.0%} of the bandwidth bound {bound:,.1f} "
               f"tok/s ({weight_bytes / 1e6:,.0f} MB of weights)")


def bench_loss_memory(args: argparse.Namespace, report: Report, config: FoxConfig) -> None:
    peaks = loss_memory(config, args.loss_tokens, args.dtype, args.device)
    report.numbers.update(loss_tokens=args.loss_tokens, chunked_loss_peak_mb=peaks["chunked"] / 1e6,
                          naive_loss_peak_mb=peaks["naive"] / 1e6)
    method = "max_memory_allocated" if args.device.type == "cuda" else "peak RSS"
    report.add(f"loss peak memory ({args.loss_tokens} tok, V={config.vocab_size})",
               f"{peaks['chunked'] / 1e6:,.0f} MB", f"naive {peaks['naive'] / 1e6:,.0f} MB",
               ratio(peaks["chunked"], peaks["naive"]), f"{method}, forward+backward, each in a fresh process")


def bench_tokenizer(args: argparse.Namespace, report: Report) -> None:
    documents, source = benchmark_documents(args.tokenizer_mb)
    ours = tokenizer_speed(documents, args.tokenizer_vocab)
    theirs = None if args.skip_reference else hf_tokenizer_speed(documents, args.tokenizer_vocab)
    report.numbers.update({f"tokenizer_{k}": v for k, v in ours.items()})
    report.numbers.update({f"hf_tokenizer_{k}": v for k, v in (theirs or {}).items()})
    size = sum(len(d.encode()) for d in documents) / 1e6
    report.add(f"tokenizer train ({size:.1f} MB, V={args.tokenizer_vocab})",
               *versus(ours["train_mb_per_s"], theirs and theirs["train_mb_per_s"], "MB/s"), source)
    compression = f"{ours['bytes_per_token']:.2f} bytes/token" + (
        f" (HF {theirs['bytes_per_token']:.2f})" if theirs else "")
    report.add("tokenizer encode_batch", *versus(ours["encode_mb_per_s"], theirs and theirs["encode_mb_per_s"],
                                                 "MB/s"), compression)


def main() -> None:
    args = parse_args()
    config = FoxConfig.from_preset(args.preset)
    report = Report()
    report.numbers.update(preset=args.preset, device=str(args.device), dtype=str(args.dtype).removeprefix("torch."),
                          batch_size=args.batch_size, seq_len=args.seq_len, load_before=os.getloadavg()[0])
    sections = ["machine", "training", "generation", "loss memory"] + ([] if args.skip_tokenizer else ["tokenizer"])
    bar = tqdm(sections, desc="bench", file=sys.stderr)
    for section in bar:
        bar.set_description(section)
        if section == "machine":
            machine = bench_machine(args, report)
        elif section == "training":
            torch.manual_seed(0)
            model = Fox(config).to(device=args.device, dtype=args.dtype)
            hf = None if args.skip_reference else hf_llama(config, args.dtype, args.device)
            bench_training(args, report, machine, model, hf)
        elif section == "generation":
            bench_generation(args, report, machine, model, hf)
            del model, hf  # free their memory before the loss-memory processes start
        elif section == "loss memory":
            bench_loss_memory(args, report, config)
        else:
            bench_tokenizer(args, report)
    bar.close()
    report.numbers["load_after"] = os.getloadavg()[0]
    report.print(f"fox1 bench: preset {args.preset}, {report.numbers['params']:,} parameters, {args.device} "
                 f"{report.numbers['dtype']}, batch {args.batch_size} x {args.seq_len}; load average "
                 f"{report.numbers['load_before']:.1f} -> {report.numbers['load_after']:.1f} (2 cores: above ~0.5 "
                 f"the numbers are disturbed)")


if __name__ == "__main__":
    main()
