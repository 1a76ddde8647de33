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

    python bench.py --preset small                  # ~3 minutes on a 2-core CPU
    python bench.py --preset fox-1.6b --device cuda # bf16 on a GPU

It prints a readable table, then one JSON line with every number (the last line, for scripts).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import copy
import json
import multiprocessing
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

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


def best_seconds(calls: dict[str, Callable[[], object]], device: torch.device, repeats: int,
                 warmup: int = 1) -> dict[str, float]:
    """The fastest of `repeats` timed runs of each call, after `warmup` untimed ones (compilation, caches).

    The calls take turns (a, b, a, b, ...): other processes on a shared machine come and go, and taking
    turns spreads their load over every contender alike; the fastest run is the least disturbed one."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(repeats):
        for name, call in calls.items():
            synchronize(device)
            start = time.perf_counter()
            call()
            synchronize(device)
            best[name] = min(best[name], time.perf_counter() - start)
    return best


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


# --------------------------------------------------------------------------------------------------
# The machine


def matmul_peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of a large square matmul, the best the BLAS gets here: 2048^3 on a CPU (17 GFLOP, ~0.2 s on
    2 cores), 8192^3 on a GPU (1.1 TFLOP, ~1 ms on an H100-class chip)."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    return 2 * n**3 / best_seconds({"matmul": lambda: a @ b}, device, repeats=5, warmup=2)["matmul"]


def copy_bandwidth(device: torch.device) -> float:
    """Bytes/s moved by copying a tensor far bigger than the caches (256 MB on a CPU, 32 MB of L3 here;
    4 GB on a GPU), counting the read and the write as STREAM's "copy" does. The destination is
    preallocated: a fresh clone() would also time the OS mapping new pages (4x slower on this CPU)."""
    size = (4 << 30) if device.type == "cuda" else (256 << 20)
    src = torch.ones(size // 4, device=device)
    dst = torch.empty_like(src)
    return 2 * size / best_seconds({"copy": lambda: dst.copy_(src)}, device, repeats=5)["copy"]


def last_level_cache_bytes() -> int:
    """Size of the CPU's largest cache (Linux sysfs; 0 if unknown). Weights that fit in it are not read
    from DRAM at all, so the copy-bandwidth bound does not apply to them."""
    sizes = [0]
    for level in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = level.read_text().strip()  # e.g. "32768K"
        sizes.append(int(text[:-1]) * {"K": 1 << 10, "M": 1 << 20}[text[-1]] if text[-1] in "KM" else int(text))
    return max(sizes)


# --------------------------------------------------------------------------------------------------
# Training step


def training_step(model: torch.nn.Module, loss_fn: Callable, batch: torch.Tensor) -> Callable[[], None]:
    """forward + backward + AdamW step + zero_grad: the whole step train.py runs."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        loss_fn(model, batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


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


def generation_calls(model: Fox, hf: torch.nn.Module | None, prompt: torch.Tensor, new_tokens: int,
                     compiled: bool) -> dict[str, Callable[[], object]]:
    """Greedy generation of 1 token ("... prefill") and of new_tokens tokens, by fox1 (sample.generate,
    eager and, if `compiled`, with the compiled decode step) and by transformers' generate (its default
    dynamic cache), with no <eos> so every run makes all its tokens. All are timed the same way, from
    outside: prefill = t(1 token), decode = (t(new_tokens) - t(1 token)) / (new_tokens - 1)."""

    def fox1(count: int, compile: bool = False) -> Callable[[], object]:
        return lambda: sample.generate(model, prompt, count, temperature=0, compile=compile)

    def transformers(count: int) -> Callable[[], object]:
        return lambda: hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=count,
                                   min_new_tokens=count, do_sample=False, pad_token_id=0)

    calls = {"fox1 prefill": fox1(1), "fox1": fox1(new_tokens)}
    if compiled:
        calls["fox1 compiled"] = fox1(new_tokens, compile=True)
    if hf is not None:
        calls.update({"hf prefill": transformers(1), "hf": transformers(new_tokens)})
    return calls


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


def loss_memory(config: FoxConfig, tokens: int, dtype: torch.dtype,
                device: torch.device) -> dict[str, float | None]:
    """{kind: peak bytes} for the chunked and the naive loss, each in its own spawned process. A kind
    whose process dies (killed when out of memory) is None."""
    peaks = {}
    for kind in ("chunked", "naive"):
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
            job = pool.submit(loss_peak_bytes, kind, tokens, config.hidden_size, config.vocab_size,
                              str(dtype).removeprefix("torch."), str(device))
            try:
                peaks[kind] = float(job.result())
            except concurrent.futures.process.BrokenProcessPool:
                peaks[kind] = None
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
    p.add_argument("--steps", type=int, default=5,
                   help="timed runs of each training step and generation (best counts), after one warm-up")
    p.add_argument("--prompt-len", type=int, default=128, help="prefill length for the generation rows")
    p.add_argument("--new-tokens", type=int, default=64, help="decoded tokens for the generation rows")
    p.add_argument("--no-compile", action="store_true", help="skip fox1's compiled rows (training step and decode)")
    p.add_argument("--loss-tokens", type=int, default=8192,
                   help="tokens in the loss-memory rows (8192 = one Fox-1 context)")
    p.add_argument("--tokenizer-mb", type=float, default=4.0, help="MB of text for the tokenizer rows")
    p.add_argument("--tokenizer-vocab", type=int, default=8192, help="vocabulary trained in the tokenizer rows")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help="CPU threads for torch (1 is steadier while other processes share the cores)")
    p.add_argument("--skip-tokenizer", action="store_true")
    p.add_argument("--skip-reference", action="store_true", help="skip the Hugging Face rows")
    args = p.parse_args()
    args.device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    args.dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.type == "cuda" else "float32"))
    args.batch_size = args.batch_size or (8 if args.device.type == "cuda" else 4)
    args.seq_len = args.seq_len or (2048 if args.device.type == "cuda" else 256)
    return args


@dataclass
class Machine:
    """The machine's peaks, measured in this run. Other processes on a shared machine can slow one
    measurement down, so each section re-measures and the best values are kept (MFU and bandwidth
    utilisation against a depressed peak would read above the truth, even over 100%)."""

    device: torch.device
    dtype: torch.dtype
    matmul_flops: float = 0.0  # FLOP/s
    copy_bandwidth: float = 0.0  # bytes/s, read + write
    measurements: int = 0

    def measure(self) -> Machine:
        self.matmul_flops = max(self.matmul_flops, matmul_peak_flops(self.device, self.dtype))
        self.copy_bandwidth = max(self.copy_bandwidth, copy_bandwidth(self.device))
        self.measurements += 1
        return self

    def report(self, report: Report) -> None:
        report.numbers.update(matmul_tflops=self.matmul_flops / 1e12, copy_gb_per_s=self.copy_bandwidth / GB)
        report.rows.insert(0, ("machine peak", f"matmul {self.matmul_flops / 1e9:,.1f} GFLOP/s", "", "",
                               f"copy {self.copy_bandwidth / GB:.1f} GB/s (read+write); best of {self.measurements} "
                               "measurements"))


def bench_training(args: argparse.Namespace, report: Report, machine: Machine, model: Fox,
                   hf: torch.nn.Module | None) -> None:
    """fox1's step eager and with every block compiled (`train.py --compile`), next to HF's eager step."""
    batch = torch.randint(model.config.vocab_size, (args.batch_size, args.seq_len + 1), device=args.device)
    steps = {"fox1": training_step(model, fox_loss, batch)}
    compiled = None
    if not args.no_compile:
        compiled = copy.deepcopy(model)
        for layer in compiled.layers:
            layer.compile()
        steps["fox1 compiled"] = training_step(compiled, fox_loss, batch)
    hf_error = None
    if hf is not None:
        steps["hf"] = training_step(hf, hf_loss, batch)
        hf_error = failure(steps["hf"])
        if hf_error:  # e.g. its full-vocabulary logits do not fit in memory
            del steps["hf"]
    compile_error = failure(steps["fox1 compiled"]) if compiled is not None else None  # the cold compile
    if compile_error:
        del steps["fox1 compiled"]
    best = best_seconds(steps, args.device, repeats=args.steps)
    del compiled, steps
    machine.measure()
    tokens = args.batch_size * args.seq_len
    speed = {name: tokens / seconds for name, seconds in best.items()}
    mfu = {name: value * model.flops_per_token(args.seq_len) / machine.matmul_flops for name, value in speed.items()}
    report.numbers.update(params=model.num_params(), train_tokens_per_s=speed["fox1"],
                          compiled_train_tokens_per_s=speed.get("fox1 compiled"),
                          hf_train_tokens_per_s=speed.get("hf"), mfu=mfu["fox1"], compiled_mfu=mfu.get("fox1 compiled"))
    hf_note = f"; HF: {hf_error}" if hf_error else ""
    shape = f"b={args.batch_size}, T={args.seq_len}"
    report.add(f"train step ({shape}, eager)", *versus(speed["fox1"], speed.get("hf"), "tok/s"),
               f"MFU {mfu['fox1']:.1%}{hf_note}")
    if "fox1 compiled" in speed:
        report.add(f"train step ({shape}, compiled)", *versus(speed["fox1 compiled"], speed.get("hf"), "tok/s"),
                   f"MFU {mfu['fox1 compiled']:.1%}; every block torch.compiled, as `train.py --compile`")
    if compile_error:
        report.add(f"train step ({shape}, compiled)", "failed", note=compile_error)


def bench_generation(args: argparse.Namespace, report: Report, machine: Machine, model: Fox,
                     hf: torch.nn.Module | None) -> None:
    model.eval()
    prompt = torch.randint(model.config.vocab_size, (1, args.prompt_len), device=args.device)
    with torch.inference_mode():
        # the cold compile takes ~30-70 s for `small` on 2 cores; it happens here, untimed
        compile_error = None if args.no_compile else failure(
            lambda: sample.generate(model, prompt, args.new_tokens, temperature=0, compile=True))
        compiled = not args.no_compile and compile_error is None
        calls = generation_calls(model, hf, prompt, args.new_tokens, compiled)
        best = best_seconds(calls, args.device, repeats=args.steps)
    machine.measure()
    speed = {name: (args.new_tokens - 1) / max(best[name] - best[name.split()[0] + " prefill"], 1e-9)
             for name in best if not name.endswith("prefill")}  # "fox1 compiled" - "fox1 prefill", ...
    prefill = {name: prompt.numel() / best[f"{name} prefill"] for name in ("fox1", "hf")
               if f"{name} prefill" in best}
    weight_bytes = model.num_params() * model.embed_tokens.weight.element_size()
    bound = machine.copy_bandwidth / weight_bytes  # tokens/s if each step only streamed the weights once
    cache = last_level_cache_bytes() if args.device.type == "cpu" else 0
    caveat = f"; they fit in the {cache >> 20} MB cache: DRAM does not bound them" if weight_bytes < cache else ""
    report.numbers.update(prefill_tokens_per_s=prefill["fox1"], hf_prefill_tokens_per_s=prefill.get("hf"),
                          decode_tokens_per_s=speed["fox1"], hf_decode_tokens_per_s=speed.get("hf"),
                          compiled_decode_tokens_per_s=speed.get("fox1 compiled"), decode_bound_tokens_per_s=bound)
    report.add(f"prefill (b=1, T={args.prompt_len})", *versus(prefill["fox1"], prefill.get("hf"), "tok/s"))
    for name, label in (("fox1", "decode (b=1, eager)"), ("fox1 compiled", "decode (b=1, torch.compile)")):
        if name in speed:
            report.add(label, *versus(speed[name], speed.get("hf"), "tok/s"),
                       f"{speed[name] / bound:.0%} of the bandwidth bound {bound:,.1f} tok/s "
                       f"({weight_bytes / 1e6:,.0f} MB of weights{caveat})")
    if compile_error:
        report.add("decode (b=1, torch.compile)", "failed", note=compile_error)


def bench_loss_memory(args: argparse.Namespace, report: Report, config: FoxConfig) -> None:
    peaks = loss_memory(config, args.loss_tokens, args.dtype, args.device)
    mb = {kind: None if peak is None else peak / 1e6 for kind, peak in peaks.items()}
    report.numbers.update(loss_tokens=args.loss_tokens, chunked_loss_peak_mb=mb["chunked"],
                          naive_loss_peak_mb=mb["naive"])
    shown = {kind: "died (out of memory?)" if value is None else f"{value:,.0f} MB" for kind, value in mb.items()}
    method = "max_memory_allocated" if args.device.type == "cuda" else "peak RSS"
    report.add(f"loss peak memory ({args.loss_tokens} tok, V={config.vocab_size})", shown["chunked"],
               f"naive {shown['naive']}", ratio(mb["chunked"], mb["naive"]) if None not in mb.values() else "",
               f"{method}, forward+backward, each in a fresh process")


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
    report.numbers.update(preset=args.preset, device=str(args.device), batch_size=args.batch_size,
                          dtype=str(args.dtype).removeprefix("torch."), seq_len=args.seq_len, threads=args.threads,
                          load_before=os.getloadavg()[0])
    sections = ["machine", "training", "generation", "loss memory"] + ([] if args.skip_tokenizer else ["tokenizer"])
    bar = tqdm(sections, desc="bench", file=sys.stderr)
    for section in bar:
        bar.set_description(section)
        if section == "machine":
            machine = Machine(args.device, args.dtype).measure()
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
    machine.report(report)
    report.numbers["load_after"] = os.getloadavg()[0]
    report.print(f"fox1 bench: preset {args.preset}, {report.numbers['params']:,} parameters, {args.device} "
                 f"{report.numbers['dtype']}, {args.threads} threads, batch {args.batch_size} x {args.seq_len}; "
                 f"load average {report.numbers['load_before']:.1f} -> {report.numbers['load_after']:.1f} on "
                 f"{os.cpu_count()} cores (other processes' load slows every number)")


if __name__ == "__main__":
    main()
