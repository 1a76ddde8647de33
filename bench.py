"""
How close fox1 comes to this machine's limits, next to the reference implementations.

Fox-1's deployment claim (arXiv 2411.05281) is speed (>200 output tokens/s for the 1.6B model, "for cloud
and edge"), and its 256K vocabulary makes the loss the memory hot spot of training. This script measures,
in one run:

  * the machine: CPU model, instruction sets (AVX512-BF16, AMX ...) and threads; peak matmul FLOP/s and
    memory copy bandwidth, measured here, not taken from a data sheet;
  * training step tokens/s and MFU (model FLOPs, `Fox.flops_per_token`, over the measured matmul peak),
    in fp32 and, where bf16 is native (`fox1.speed.native_bf16`), under bf16 autocast;
  * prefill tokens/s, and decode tokens/s at batch 1 with its memory-bandwidth utilisation: decoding reads
    every weight once per token, so copy bandwidth / weight bytes is the speed limit; in fp32, bf16 and
    with int8 and int4 weights (`sample.py --quantize`), and how far their logits are from fp32's;
  * peak memory of the chunked loss vs the naive `F.cross_entropy(hidden @ W.T)` at the preset's vocabulary;
  * tokenizer training and encoding throughput (on Python's standard library);
  * the same rows for Hugging Face `transformers.LlamaForCausalLM` (same config, precision and batch) and
    `tokenizers` when they are installed (they are not dependencies of fox1; rows are skipped without them).
  * with --llama-cpp, llama.cpp's prefill and decode on GGUF files of the same weights (f32, bf16, Q8_0, Q4_0),
    and with --ckpt too, the trained model's held-out perplexity in fp32 / int8 / int4 next to llama.cpp's f32 /
    Q8_0 / Q4_0, both measured as llama-perplexity measures it.

Other processes on a shared machine come and go, so every contender is timed in turns (a, b, a, b, ...)
for --repeats rounds, and each fox1/HF ratio is formed within a round: the table shows the median ratio
and its spread (lowest-highest) over the rounds.

    python bench.py --preset small                  # ~5 minutes on a 2-core CPU
    python bench.py --preset small --profile        # plus where one compiled decode step spends its time
    python bench.py --preset fox-1.6b --device cuda # bf16 on a GPU

It prints a readable table, then one JSON line with every number (the last line, for scripts).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import math
import multiprocessing
import os
import statistics
import sys
import tempfile
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

import sample
from fox1 import llama_cpp
from fox1.corpus import benchmark_documents
from fox1.hf_reference import hf_generation, hf_loss, hf_tokenizer_speed, timed_tokenizer
from fox1.machine import (GB, Machine, interleaved_runs, interleaved_seconds, peak_memory, read_bandwidth,
                          reset_peak_memory, runnable, timed)
from fox1.report import Report, median, ratio, undisturbed, versus
from fox1.speed import (QuantizedLinear, column_major, huge_pages, quantize_int4, quantize_int8,
                        streams_column_major)
from model import Fox, FoxConfig, chunked_cross_entropy
from tokenizer import DEFAULT_PATTERN, FIRST_MERGE_ID, SPECIAL_TOKENS, Tokenizer


# --------------------------------------------------------------------------------------------------
# Training step


def training_step(model: torch.nn.Module, loss_fn: Callable, batch: torch.Tensor,
                  bf16: bool = False) -> Callable[[], None]:
    """forward + backward + AdamW step + zero_grad: the whole step train.py runs. bf16: the forward under
    bf16 autocast (fp32 weights, bf16 matmuls), the same for fox1 and HF. Fused AdamW for both, as train.py
    and HF's Trainer (its default "adamw_torch_fused") run it."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    device_type = batch.device.type

    def step() -> None:
        with torch.autocast(device_type, dtype=torch.bfloat16) if bf16 else nullcontext():
            loss = loss_fn(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def fox_loss(model: Fox, batch: torch.Tensor) -> torch.Tensor:
    return model(batch[:, :-1], batch[:, 1:])


# --------------------------------------------------------------------------------------------------
# Generation


def fox1_generation(model: Fox, prompt: torch.Tensor, new_tokens: int, compile: bool) -> Callable[[], object]:
    """Greedy generation with sample.generate, no <eos>, so every run makes all its tokens."""
    return lambda: sample.generate(model, prompt, new_tokens, temperature=0, compile=compile)


def as_sample_decodes(model: Fox) -> Fox:
    """The model laid out as sample.py decodes one sample eagerly: a column-major copy in 2 MB pages where that
    streams the weights faster (`streams_column_major`: fp32 on a CPU), else the model itself."""
    weight = model.embed_tokens.weight
    return (huge_pages(column_major(copy.deepcopy(model)))
            if streams_column_major(weight.device, weight.dtype, False, 1) else model)


def generation_calls(models: dict[str, torch.nn.Module], prompt: torch.Tensor, new_tokens: int,
                     compile: bool, eager: bool = True) -> dict[str, Callable[[], object]]:
    """For each model ("fox1 fp32", "hf bf16", ...) and mode ("eager" unless not `eager`; for fox1 with `compile`
    also "compiled"): "<name> prefill[ compiled]" makes 1 token, "<name> <mode>" makes new_tokens. Prefill is
    t(1 token) for all; decode is timed as `decode_speed` says."""
    calls = {}
    for name, model in models.items():
        if name.startswith("hf"):
            calls.update({f"{name} prefill": hf_generation(model, prompt, 1),
                          f"{name} eager": hf_generation(model, prompt, new_tokens)})
            continue
        if eager and " int" not in name:  # eager int8/int4 convert every weight to floats every step: never fast
            calls[f"{name} prefill"] = fox1_generation(model, prompt, 1, compile=False)
            calls[f"{name} eager"] = fox1_generation(as_sample_decodes(model), prompt, new_tokens, compile=False)
        if compile:
            calls[f"{name} prefill compiled"] = fox1_generation(model, prompt, 1, compile=True)
            calls[f"{name} compiled"] = fox1_generation(model, prompt, new_tokens, compile=True)
    return calls


def decode_speed(result: object, seconds: float, prefill_seconds: float, new_tokens: int) -> float:
    """Decode tokens/s of one generation of new_tokens. fox1's generate times its decode loop itself (as
    llama-bench times only its decoding), which a prefill's timing cannot disturb; HF's generate does not, so
    there it is (new_tokens - 1) / (t(new_tokens) - t(1 token)), nan where that difference is not positive (a
    disturbed round)."""
    if isinstance(result, sample.Generation):
        return result.decode_tokens_per_s
    return (new_tokens - 1) / (seconds - prefill_seconds) if seconds > prefill_seconds else math.nan


def prefill_of(call_name: str) -> str:
    """The prefill call timed like a generation call: "fox1 fp32 compiled" -> "fox1 fp32 prefill compiled",
    "hf fp32 eager" -> "hf fp32 prefill"."""
    model, mode = call_name.rsplit(" ", 1)
    return f"{model} prefill" + (" compiled" if mode == "compiled" else "")


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes a decode step streams: every parameter, but for a quantised matrix its `streamed_tensors` (the
    model's buffers are the KV cache and the RoPE tables, not weights)."""
    tensors = [t for m in model.modules()
               for t in (m.streamed_tensors() if isinstance(m, QuantizedLinear) else m.parameters(recurse=False))]
    return sum(t.numel() * t.element_size() for t in tensors)


# --------------------------------------------------------------------------------------------------
# Loss memory, measured in a fresh process so nothing else is in the peak


def loss_peak_bytes(kind: str, tokens: int, hidden_size: int, vocab_size: int, dtype_name: str,
                    device_name: str) -> int:
    """Peak memory of one forward + backward of the loss over `tokens` tokens, above what the inputs
    (hidden states and the tied embedding) already hold; the gradients count, for both kinds alike."""
    device, dtype = torch.device(device_name), getattr(torch, dtype_name)
    torch.manual_seed(0)
    hidden = torch.randn(tokens, hidden_size, device=device, dtype=dtype, requires_grad=True)
    weight = (0.02 * torch.randn(vocab_size, hidden_size, device=device)).to(dtype).requires_grad_()
    targets = torch.randint(vocab_size, (tokens,), device=device)
    baseline = reset_peak_memory(device)
    if kind == "chunked":
        loss = chunked_cross_entropy(hidden, weight, targets)
    else:
        loss = F.cross_entropy((hidden @ weight.T).float(), targets)
    loss.backward()
    return peak_memory(device) - baseline


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


def tokenizer_speed(documents: list[str], vocab_size: int) -> dict[str, float]:
    return timed_tokenizer(documents,
                           lambda: Tokenizer.train(documents, vocab_size, workers=min(2, os.cpu_count() or 1),
                                                   progress=False),
                           lambda tokenizer: tokenizer.encode_batch(documents))


# --------------------------------------------------------------------------------------------------
# Quantised weights' accuracy and where a decode step's time goes


def quantized_agreement(model: Fox, approx_model: Fox, tokens: torch.Tensor) -> dict[str, float]:
    """How far quantised next-token logits over `tokens` (1, T) are from the unquantised model's: relative
    error, top-1 agreement, and both perplexities of the tokens (meaningful for a trained model only)."""
    with torch.inference_mode():
        exact, approx = model(tokens)[0, :-1].float(), approx_model(tokens)[0, :-1].float()
    targets = tokens[0, 1:]
    return {"relative_error": float((approx - exact).norm() / (exact - exact.mean(-1, keepdim=True)).norm()),
            "top1_agreement": float((approx.argmax(-1) == exact.argmax(-1)).float().mean()),
            "perplexity": float(F.cross_entropy(exact, targets).exp()),
            "quantized_perplexity": float(F.cross_entropy(approx, targets).exp())}


def decode_step_profile(model: Fox, steps: int = 8) -> dict[str, float]:
    """Seconds per eager decode step (batch 1) in matmuls, attention and everything else (norms, RoPE, the
    KV-cache write, elementwise ops, and the Python between the ops), from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    device = model.norm.weight.device
    sample.ensure_kv_cache(model, 1, 256)
    token, input_pos = torch.zeros(1, 1, dtype=torch.long, device=device), torch.tensor([128], device=device)
    with torch.inference_mode():
        sample.decode_one_token(model, token, input_pos)  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            _, seconds = timed(lambda: [sample.decode_one_token(model, token, input_pos)
                                               for _ in range(steps)], device)
    totals = {event.key: event.cpu_time_total / 1e6 / steps for event in prof.key_averages()}
    matmul = sum(totals.get(op, 0.0) for op in ("aten::linear", "fox1::int8_row_linear", "fox1::int4_row_linear"))
    attention = sum(totals.get(op, 0.0) for op in ("aten::scaled_dot_product_attention", "fox1::one_query_attention"))
    return {"step": seconds / steps, "matmul": matmul, "attention": attention,
            "other": seconds / steps - matmul - attention}


# --------------------------------------------------------------------------------------------------
# Report


def bench_training(args: argparse.Namespace, report: Report, machine: Machine, model: Fox,
                   hf: torch.nn.Module | None) -> None:
    """fox1's step eager and with every block compiled (`train.py --compile`), next to HF's eager step; in
    the bench's dtype, and under bf16 autocast (both) where bf16 is native."""
    batch = torch.randint(model.config.vocab_size, (args.batch_size, args.seq_len + 1), device=args.device)
    base = short_name(args.dtype)
    steps = {f"fox1 {base} eager": training_step(model, fox_loss, batch)}
    if not args.no_compile:
        compiled = copy.deepcopy(model)
        for layer in compiled.layers:
            layer.compile()
        steps[f"fox1 {base} compiled"] = training_step(compiled, fox_loss, batch)
    if args.bf16:
        steps["fox1 bf16 eager"] = training_step(model, fox_loss, batch, bf16=True)
    if hf is not None:
        steps[f"hf {base} eager"] = training_step(hf, hf_loss, batch)
        if args.bf16:
            steps["hf bf16 eager"] = training_step(hf, hf_loss, batch, bf16=True)
    names = [name for name in steps if name.startswith("fox1")]
    steps, errors = runnable(steps)  # HF's full-vocabulary logits may not fit in memory, inductor may fail...
    seconds = interleaved_seconds(steps, args.device, args.repeats, warmup=0)
    del steps
    tokens = args.batch_size * args.seq_len
    speed = {name: [tokens / s for s in values] for name, values in seconds.items()}
    report.numbers.update(train_errors=errors,
                          **{f"train_tok_per_s[{name}]": statistics.median(v) for name, v in speed.items()})
    for name in names:
        _, precision, mode = name.split()
        what = f"train step (b={args.batch_size}, T={args.seq_len}, {precision}, {mode})"
        if name not in speed:
            report.add(what, "failed", note=errors[name])
            continue
        peak = machine.matmul_flops[getattr(torch, {"fp32": "float32", "bf16": "bfloat16"}[precision])]
        mfu = statistics.median(speed[name]) * model.flops_per_token(args.seq_len) / peak
        how = "; every block torch.compiled, as `train.py --compile`" if mode == "compiled" else ""
        how += "; bf16 autocast for both" if precision == "bf16" and base == "fp32" else ""
        reference = f"hf {precision} eager"
        report.add(what, *versus(speed[name], speed.get(reference), "tok/s", errors.get(reference, "HF")),
                   f"MFU {mfu:.1%}{how}")


def short_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]


def bench_generation(args: argparse.Namespace, report: Report, machine: Machine, model: Fox,
                     quantized: dict[str, Fox], hf: torch.nn.Module | None) -> None:
    """Prefill and batch-1 decode of fox1 (eager, compiled; fp32, bf16, int8 and int4 weights), HF (eager) and,
    with --llama-cpp, llama.cpp on the same weights; every contender takes its turn in each round. fox1's weights
    are moved into 2 MB pages, as sample.py loads them (`huge_pages`, in place: the training rows that
    follow run on them too)."""
    model.eval()
    prompt = torch.randint(model.config.vocab_size, (1, args.prompt_len), device=args.device)
    base = short_name(args.dtype)
    models = {f"fox1 {base}": model, **{f"fox1 {kind}": q for kind, q in quantized.items()}}
    if args.bf16:
        models["fox1 bf16"] = copy.deepcopy(model).to(torch.bfloat16)
    for fox1_model in models.values():
        huge_pages(fox1_model)
    if hf is not None:
        models[f"hf {base}"] = hf
        if args.bf16:
            models["hf bf16"] = copy.deepcopy(hf).to(torch.bfloat16)
    with tempfile.TemporaryDirectory() as folder, torch.inference_mode():
        calls, errors = runnable(generation_calls(models, prompt, args.new_tokens, not args.no_compile,
                                                  not args.no_eager))
        engine = LlamaCpp(args, model, Path(folder)) if args.llama_cpp else None
        runs = interleaved_runs(calls | (engine.calls if engine else {}), args.device, args.repeats, warmup=0)
    prefill = {name: [prompt.numel() / s for _, s in values] for name, values in runs.items() if " prefill" in name}
    decode = {name: [decode_speed(result, t, p, args.new_tokens)
                     for (result, t), (_, p) in zip(values, runs[prefill_of(name)])]
              for name, values in runs.items() if " prefill" not in name and not name.startswith("llama.cpp")}
    report.numbers.update(generation_errors=errors,
                          **{f"prefill_tok_per_s[{name}]": statistics.median(v) for name, v in prefill.items()},
                          **{f"decode_tok_per_s[{name}]": median(v) for name, v in decode.items()})
    add_generation_rows(args, report, machine, models, prefill, decode, errors)
    if engine:
        engine.add_rows(report, machine, prefill, decode)


class LlamaCpp:
    """llama.cpp on the bench model: GGUF files in f32, bf16, Q8_0 and Q4_0 (fox1/gguf.py, then its own
    llama-quantize), and a call per format that runs llama-bench once (prompt_len prefill, new_tokens decoded
    after a prompt_len context, --threads threads) and keeps the speeds it reports."""

    AGAINST = {"f32": "fp32", "bf16": "bf16", "Q8_0": "int8", "Q4_0": "int4"}  # llama.cpp format -> fox1's

    def __init__(self, args: argparse.Namespace, model: Fox, folder: Path) -> None:
        tokenizer = Tokenizer.train(["speed does not depend on the tokenizer"], FIRST_MERGE_ID, workers=1,
                                    progress=False)
        model.save_pretrained(folder / "export", token_ids={"bos_token_id": tokenizer.bos_id,
                                                             "eos_token_id": tokenizer.eos_id})
        tokenizer.save_pretrained(folder / "export")
        self.prompt_len = args.prompt_len
        self.files = llama_cpp.gguf_files(args.llama_cpp, folder / "export", folder, ("f32", "bf16"))
        self.bytes = {kind: path.stat().st_size for kind, path in self.files.items()}
        self.speeds: dict[str, list[dict[str, float]]] = {kind: [] for kind in self.files}
        self.calls = {f"llama.cpp {kind}": partial(self.measure, args, kind) for kind in self.files}

    def measure(self, args: argparse.Namespace, kind: str) -> None:
        self.speeds[kind].append(llama_cpp.bench(args.llama_cpp, self.files[kind], prompt_tokens=args.prompt_len,
                                                 new_tokens=args.new_tokens, threads=args.threads))

    def add_rows(self, report: Report, machine: Machine, prefill: dict[str, list[float]],
                 decode: dict[str, list[float]]) -> None:
        """A decode and a prefill row per format: fox1's compiled rows against llama.cpp's, ratio per round."""
        for kind, ours in self.AGAINST.items():
            theirs = {part: [speeds[part] for speeds in self.speeds[kind]] for part in ("prefill", "decode")}
            report.numbers.update({f"llama_cpp_{part}_tok_per_s[{kind}]": median(v) for part, v in theirs.items()})
            bound = machine.copy_bandwidth / self.bytes[kind]
            if f"fox1 {ours} compiled" in decode:
                report.add(f"decode vs llama.cpp {kind} (b=1, {ours}, compiled)",
                           *versus(decode[f"fox1 {ours} compiled"], theirs["decode"], "tok/s", "llama.cpp"),
                           f"llama.cpp: {median(theirs['decode']) / bound:.0%} of its bandwidth bound "
                           f"{bound:,.1f} tok/s ({self.bytes[kind] / 1e6:,.0f} MB file)")
            if f"fox1 {ours} prefill compiled" in prefill:
                report.add(f"prefill vs llama.cpp {kind} (b=1, T={self.prompt_len}, {ours}, compiled)",
                           *versus(prefill[f"fox1 {ours} prefill compiled"], theirs["prefill"], "tok/s", "llama.cpp"))


def add_generation_rows(args: argparse.Namespace, report: Report, machine: Machine, models: dict[str, Fox],
                        prefill: dict[str, list[float]], decode: dict[str, list[float]],
                        errors: dict[str, str]) -> None:
    for precision in ("fp32", "bf16"):
        for mode in ("eager", "compiled"):
            name = f"fox1 {precision} {mode}"
            if prefill_of(name) in prefill:
                report.add(f"prefill (b=1, T={args.prompt_len}, {precision}, {mode})",
                           *versus(prefill[prefill_of(name)], prefill.get(f"hf {precision} prefill"), "tok/s"))
        for mode in ("eager", "compiled"):
            name = f"fox1 {precision} {mode}"
            if name in decode:
                report.add(f"decode (b=1, {precision}, {mode})",
                           *versus(decode[name], decode.get(f"hf {precision} eager"), "tok/s"),
                           bound_note(decode[name], models[f"fox1 {precision}"], machine))
            elif name in errors:
                report.add(f"decode (b=1, {precision}, {mode})", "failed", note=errors[name])
    unquantised = [name for name in decode if name.startswith("fox1") and " int" not in name]
    best = [max(undisturbed(list(speeds))) for speeds in zip(*(decode[name] for name in unquantised))]
    for kind in ("int8", "int4"):  # against fox1's own fastest unquantised decode, round by round
        if f"fox1 {kind} compiled" in decode:
            report.add(f"decode (b=1, {kind} weights, compiled)",
                       *versus(decode[f"fox1 {kind} compiled"], best, "tok/s", "fox1 unquantised best"),
                       bound_note(decode[f"fox1 {kind} compiled"], models[f"fox1 {kind}"], machine))


def bound_note(speeds: list[float], model: Fox, machine: Machine) -> str:
    """The decode speed as a share of the bandwidth bound (tokens/s if each step only streamed the weights at
    the copy speed), and of the speed at which this machine sums a buffer as big as the weights."""
    size = weight_bytes(model)
    bound = machine.copy_bandwidth / size
    read = read_bandwidth(machine.device, size)
    return (f"{median(speeds) / bound:.0%} of the bandwidth bound {bound:,.1f} tok/s ({size / 1e6:,.0f} MB of "
            f"weights); {median(speeds) * size / read:.0%} of {read / GB:.1f} GB/s, a sum() over as many bytes")


def bench_quantized_accuracy(args: argparse.Namespace, report: Report, model: Fox, quantized: dict[str, Fox],
                             trained: Fox | None, tokens: torch.Tensor) -> None:
    """int8 and int4 weights against the weights they were quantised from: `trained` (--ckpt's model) scored on
    held-out text, else the bench's random model on random tokens."""
    if trained is not None:
        model = trained
        quantized = {"int8": quantize_int8(copy.deepcopy(trained)), "int4": quantize_int4(copy.deepcopy(trained))}
    what = (f"{args.ckpt} on {tokens.size(1)} tokens of {args.heldout or 'the built-in held-out files'}"
            if trained is not None else "random weights and tokens: perplexity meaningless (pass --ckpt)")
    for kind, approx in quantized.items():
        numbers = quantized_agreement(model, approx, tokens)
        report.numbers.update({f"{kind}_{key}": value for key, value in numbers.items()})
        report.add(f"{kind} vs unquantised logits", f"top-1 {numbers['top1_agreement']:.1%}",
                   f"perplexity {numbers['perplexity']:,.2f}",
                   f"{numbers['quantized_perplexity'] / numbers['perplexity']:.4f}x",
                   f"{kind} perplexity {numbers['quantized_perplexity']:,.2f}; relative logit error "
                   f"{numbers['relative_error']:.2%}; {what}")


def bench_perplexity_vs_llama_cpp(args: argparse.Namespace, report: Report, model: Fox, ids: list[int],
                                  bos_id: int, text: str) -> None:
    """The --ckpt model's held-out perplexity in fp32, int8 and int4 next to llama.cpp's on its f32, Q8_0 and Q4_0
    GGUF files, both measured as llama-perplexity does (`llama_cpp.chunked_perplexity`), on ids llama-tokenize
    checks."""
    context, ids = min(llama_cpp.PERPLEXITY_CONTEXT, model.config.context_len), [bos_id] + ids
    if len(ids) < 2 * context:
        report.add("held-out perplexity vs llama.cpp", "not run",
                   note=f"{len(ids)} ids of held-out text; llama-perplexity needs {2 * context}")
        return
    formats = {kind: ours for kind, ours in LlamaCpp.AGAINST.items() if kind != "bf16"}
    with tempfile.TemporaryDirectory() as folder:
        files, text_file = llama_cpp.gguf_files(args.llama_cpp, Path(args.ckpt), Path(folder)), Path(folder) / "text"
        text_file.write_bytes(text.encode())
        same_ids = llama_cpp.tokenize(args.llama_cpp, files["f32"], text_file) == ids[1:]
        theirs = {kind: llama_cpp.perplexity(args.llama_cpp, path, text_file, context=context, threads=args.threads)
                  for kind, path in files.items()}
    models = {"fp32": model, "int8": quantize_int8(copy.deepcopy(model)), "int4": quantize_int4(copy.deepcopy(model))}
    fox1 = {ours: llama_cpp.chunked_perplexity(models[ours], ids, context, bos_id) for ours in formats.values()}
    report.numbers.update(llama_cpp_same_ids=same_ids, **{f"chunked_perplexity[{k}]": v for k, v in fox1.items()},
                          **{f"llama_cpp_perplexity[{k}]": v for k, v in theirs.items()})
    for kind, ours in formats.items():
        note = (f"{len(ids) // context} chunks of {context} ids, second halves scored; llama-tokenize gives fox1's "
                f"ids: {same_ids}" if kind == "f32" else f"each against its own unquantised: fox1 "
                f"{fox1[ours] / fox1['fp32']:.4f}x, llama.cpp {theirs[kind] / theirs['f32']:.4f}x")
        report.add(f"held-out perplexity vs llama.cpp {kind} ({ours})", f"{fox1[ours]:,.4f}",
                   f"llama.cpp: {theirs[kind]:,.4f}", f"{fox1[ours] / theirs[kind]:.4f}x", note)


def bench_profile(report: Report, models: dict[str, Fox]) -> None:
    """torch.profiler over eager decode steps, as sample.py decodes: matmul vs attention vs the rest, per layer."""
    for name, model in models.items():
        parts = decode_step_profile(as_sample_decodes(model))
        layers = model.config.num_layers
        report.numbers.update({f"profile[{name}]_{key}_ms": value * 1e3 for key, value in parts.items()})
        report.add(f"decode step profile ({name}, eager)", f"{parts['step'] * 1e3:.2f} ms/step",
                   note=", ".join(f"{key} {parts[key] / parts['step']:.0%} ({parts[key] * 1e3 / layers:.3f} ms/layer)"
                                  for key in ("matmul", "attention", "other")) + "; under the profiler")


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
    theirs = None if args.skip_reference else hf_tokenizer_speed(documents, args.tokenizer_vocab, DEFAULT_PATTERN,
                                                                          SPECIAL_TOKENS)
    report.numbers.update({f"tokenizer_{k}": v for k, v in ours.items()})
    report.numbers.update({f"hf_tokenizer_{k}": v for k, v in (theirs or {}).items()})
    size = sum(len(d.encode()) for d in documents) / 1e6
    report.add(f"tokenizer train ({size:.1f} MB, V={args.tokenizer_vocab})",
               *versus(ours["train_mb_per_s"], theirs and theirs["train_mb_per_s"], "MB/s"), source)
    compression = f"{ours['bytes_per_token']:.2f} bytes/token" + (
        f" (HF {theirs['bytes_per_token']:.2f})" if theirs else "")
    report.add("tokenizer encode_batch", *versus(ours["encode_mb_per_s"], theirs and theirs["encode_mb_per_s"],
                                                 "MB/s"), compression)


if __name__ == "__main__":
    from cli.bench import main  # flags, the sections in order, the table

    sys.exit(main())
