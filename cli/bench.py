"""The command line of bench.py: flags, the sections in order, the data.py prepare rows and the held-out text of
the quantisation rows. `python bench.py ...` runs `main` here; what is measured, and how, is bench.py's."""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from bench import (bench_generation, bench_loss_memory, bench_perplexity_vs_llama_cpp, bench_profile,
                   bench_quantized_accuracy, bench_tokenizer, bench_training, short_name)
from cli.data import prepare
from cli.sample import Checkpoint, open_checkpoint
from fox1.corpus import BUILTIN_VAL_FRACTION, benchmark_documents, builtin_documents
from fox1 import llama_cpp
from fox1.files import InputError, Number, check_numbers, read_text
from fox1.hf_llama import CheckpointError
from fox1.hf_reference import hf_llama
from fox1.machine import Machine, interleaved_seconds
from fox1.report import Report, median, versus
from fox1.shards import held_out
from fox1.speed import default_dtype, native_bf16, quantize_int4, quantize_int8
from model import Fox, FoxConfig
from sample import SampleError
from tokenizer import Tokenizer, load_tokenizer


def open_heldout(args: argparse.Namespace) -> tuple[Checkpoint, str, list[int]] | None:
    """--ckpt's model in fp32 with the held-out text (--heldout, else the built-in held-out documents) and its ids,
    read and encoded once for every row that scores them; None without --ckpt."""
    if args.ckpt is None:
        return None
    trained = open_checkpoint(Path(args.ckpt), None, torch.device(args.device), "float32")
    text = read_text(Path(args.heldout)) if args.heldout else builtin_heldout_text()
    return trained, text, trained.tokenizer.encode(text)


def heldout_tokens(args: argparse.Namespace, config: FoxConfig, heldout: tuple[Checkpoint, str, list[int]] | None
                   ) -> tuple[Fox | None, torch.Tensor]:
    """(the trained model or None, tokens to score): the held-out ids up to its context, else random tokens (the
    random-weight bench model has no text to be right about)."""
    if heldout is None:
        return None, torch.randint(config.vocab_size, (1, args.prompt_len * 4), device=args.device)
    trained, _, ids = heldout
    length = min(len(ids), trained.model.config.context_len - 1)
    return trained.model, torch.tensor([[trained.bos_id] + ids[:length]], device=args.device)


def builtin_heldout_text() -> str:
    """The documents of the built-in stdlib-docs source that data.py holds out of training (its val split)."""
    documents = builtin_documents("stdlib-docs")
    return "".join(text for i, text in enumerate(documents) if held_out(np.array(i), BUILTIN_VAL_FRACTION))


def bench_prepare(args: argparse.Namespace, report: Report) -> None:
    """data.py prepare's MB/s on 1 and on every core against tiktoken's own encode of the same text on one core
    (the most that preparing can do per core), and whether both wrote the same bytes."""
    documents, source = benchmark_documents(args.prepare_mb)
    size = sum(len(d.encode()) for d in documents) / 1e6
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        Tokenizer.train(documents[:200], args.tokenizer_vocab, workers=1, progress=False).save(folder / "tok.txt")
        (folder / "in.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in documents))
        encoding = load_tokenizer(folder / "tok.txt")._encoding
        cores = os.cpu_count() or 1
        calls = {"tiktoken": lambda: [encoding.encode_ordinary(d) for d in documents],
                 **{f"prepare x{n}": partial(prepare_once, folder, n) for n in sorted({1, cores})}}
        seconds = interleaved_seconds(calls, torch.device("cpu"), repeats=args.prepare_repeats, warmup=0)
        same = prepared_bytes(folder / "x1") == prepared_bytes(folder / f"x{cores}")
    tiktoken = size / median(seconds["tiktoken"])
    report.numbers.update(prepare_tiktoken_mb_per_s=tiktoken, prepare_same_bytes=same)
    for n in sorted({1, cores}):
        speeds = [size / s / n for s in seconds[f"prepare x{n}"]]
        report.numbers[f"prepare_x{n}_mb_per_s"] = median(speeds) * n
        report.add(f"data.py prepare, {n} worker(s), per worker ({size:.0f} MB JSONL)",
                   *versus(speeds, [size / s for s in seconds["tiktoken"]], "MB/s", name="tiktoken"),
                   f"vs tiktoken encode on 1 core; same bytes as 1 worker: {same}")


def prepare_once(folder: Path, workers: int) -> None:
    shutil.rmtree(folder / f"x{workers}", ignore_errors=True)
    prepare([str(folder / "in.jsonl")], folder / "tok.txt", folder / f"x{workers}", "src", workers=workers,
                 progress=False)


def prepared_bytes(root: Path) -> list[bytes]:
    return [path.read_bytes() for path in sorted((root / "src").iterdir()) if path.name != "meta.json"]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Throughput, MFU, bandwidth utilisation and loss memory of fox1, "
                                "next to Hugging Face transformers/tokenizers when installed.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", default="small", choices=["tiny", "small", "fox-1.6b"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help="default: bfloat16 on cuda, float32 on cpu")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 rows next to the fp32 ones (default: where bf16 is native, e.g. AVX512-BF16 or AMX)")
    p.add_argument("--batch-size", type=int, help="training batch (default: 4 on cpu, 8 on cuda)")
    p.add_argument("--seq-len", type=int, help="training sequence length (default: 256 on cpu, 2048 on cuda)")
    p.add_argument("--repeats", type=int, default=5,
                   help="timed rounds of every training step and generation, after one untimed run of each")
    p.add_argument("--prompt-len", type=int, default=128, help="prefill length for the generation rows")
    p.add_argument("--new-tokens", type=int, default=64, help="decoded tokens for the generation rows")
    p.add_argument("--no-compile", action="store_true", help="skip fox1's compiled rows (training step and decode)")
    p.add_argument("--no-eager", action="store_true", help="skip fox1's eager generation rows (eager fp32 decoding "
                   "streams a column-major copy of the weights: twice the memory, too much for fox-1.6b in 24 GB)")
    p.add_argument("--ckpt", help="a trained export (e.g. out/export) for the int8 / int4 perplexity rows (with "
                   "--llama-cpp: next to llama.cpp's f32 / Q8_0 / Q4_0 perplexity of the same model)")
    p.add_argument("--heldout", help="text the --ckpt model was not trained on, for the int8 / int4 perplexity rows "
                   "(default: the built-in corpus's held-out documents)")
    p.add_argument("--profile", action="store_true", help="profile eager decode steps: matmul vs attention vs rest")
    p.add_argument("--loss-tokens", type=int, default=8192,
                   help="tokens in the loss-memory rows (8192 = one Fox-1 context)")
    p.add_argument("--tokenizer-mb", type=float, default=4.0, help="MB of text for the tokenizer rows")
    p.add_argument("--tokenizer-vocab", type=int, default=8192, help="vocabulary trained in the tokenizer rows")
    p.add_argument("--prepare-mb", type=float, default=100.0, help="MB of JSONL for the data.py prepare rows")
    p.add_argument("--prepare-repeats", type=int, default=2, help="timed rounds of the data.py prepare rows")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help="CPU threads for torch (1 is steadier while other processes share the cores)")
    p.add_argument("--skip", nargs="+", default=[], choices=["training", "generation", "int8", "loss-memory",
                                                             "tokenizer", "prepare"],
                   help="sections to leave out, e.g. on a GPU lent for minutes: --skip generation int8 tokenizer")
    p.add_argument("--skip-reference", action="store_true", help="skip the Hugging Face rows")
    p.add_argument("--llama-cpp", type=Path, metavar="BUILD",
                   help="a llama.cpp build folder: adds llama.cpp's prefill and decode on the same weights (GGUF in "
                        "f32, bf16, Q8_0, Q4_0) to the generation rounds, next to fox1's compiled rows, and with "
                        "--ckpt its held-out perplexity next to fox1's (NOTES.md)")
    args = p.parse_args(argv)
    check_flags(p, args)
    return device_defaults(args)


def check_flags(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse what no bench can run, before anything starts (argparse's usage line + one error line)."""
    check_numbers(p, args, FLAG_RULES)
    if args.ckpt and not (Path(args.ckpt) / "config.json").is_file():
        p.error(f"--ckpt {args.ckpt}: no checkpoint here (config.json not found)")
    if args.heldout and not Path(args.heldout).is_file():
        p.error(f"--heldout {args.heldout}: file not found")
    if args.no_eager and args.no_compile:
        p.error("--no-eager with --no-compile leaves no generation rows of fox1")
    if args.llama_cpp:
        try:
            needed = ["llama-bench", "llama-quantize"] + (["llama-tokenize", "llama-perplexity"] if args.ckpt else [])
            for name in needed:
                llama_cpp.tool(args.llama_cpp, name)
        except InputError as error:
            p.error(str(error))


def device_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """The device-dependent defaults: dtype, bf16 rows, training batch and length; torch's thread count."""
    args.device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    args.dtype = getattr(torch, args.dtype or default_dtype(args.device, compile=False, quantize=None))
    args.bf16 = args.dtype == torch.float32 and (native_bf16(args.device) if args.bf16 is None else args.bf16)
    args.batch_size = args.batch_size or (8 if args.device.type == "cuda" else 4)
    args.seq_len = args.seq_len or (2048 if args.device.type == "cuda" else 256)
    return args


FLAG_RULES = {"batch_size": Number(1), "seq_len": Number(2), "repeats": Number(1), "prompt_len": Number(1),
              "new_tokens": Number(2), "loss_tokens": Number(1), "tokenizer_mb": Number(0, above=True),
              "tokenizer_vocab": Number(262), "threads": Number(1), "prepare_mb": Number(0, above=True),
              "prepare_repeats": Number(1)}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = Report()
    report.numbers.update(preset=args.preset, device=str(args.device), batch_size=args.batch_size,
                          dtype=str(args.dtype).removeprefix("torch."), bf16_rows=args.bf16, seq_len=args.seq_len,
                          threads=args.threads, repeats=args.repeats, load_before=os.getloadavg()[0])
    machine = Machine(args.device, [args.dtype] + ([torch.bfloat16] if args.bf16 else []))
    try:
        run_sections(args, report, machine)
    except (InputError, CheckpointError, SampleError) as error:  # --ckpt, --heldout, a llama.cpp tool that failed
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: a bench measures, it writes nothing to lose
        print("\ninterrupted: no table printed", file=sys.stderr)
        return 130
    numbers, lines = machine.describe()
    report.numbers.update(numbers)
    for line in lines:
        report.note(line)
    report.numbers["load_after"] = os.getloadavg()[0]
    report.print(f"fox1 bench: preset {args.preset}, {report.numbers['params']:,} parameters, {args.device} "
                 f"{report.numbers['dtype']}, {args.threads} threads, batch {args.batch_size} x {args.seq_len}, "
                 f"{args.repeats} interleaved rounds; load average {report.numbers['load_before']:.1f} -> "
                 f"{report.numbers['load_after']:.1f} on {os.cpu_count()} cores (other processes slow every number)")
    return 0


def run_sections(args: argparse.Namespace, report: Report, machine: Machine) -> None:
    """The bench's sections in order, each adding its rows to `report`."""
    config = FoxConfig.from_preset(args.preset)
    # Training comes after the sections that use the quantised copies: its optimizer steps change the weights
    # they were quantised from.
    sections = ["machine", "model", "generation", "int8", "profile", "training", "loss-memory", "tokenizer", "prepare",
                "machine again"]
    skipped = set(args.skip) | ({"profile"} if not args.profile else set())
    bar = tqdm([s for s in sections if s not in skipped], desc="bench", file=sys.stderr)
    for section in bar:
        bar.set_description(section)
        if section in ("machine", "machine again"):
            machine.measure()
        elif section == "model":
            torch.manual_seed(0)
            model = Fox(config).to(device=args.device, dtype=args.dtype)
            quantized = {"int8": quantize_int8(copy.deepcopy(model)), "int4": quantize_int4(copy.deepcopy(model))}
            report.numbers["params"] = model.num_params()
            hf = None if args.skip_reference else hf_llama(config, args.dtype, args.device)
        elif section == "training":
            bench_training(args, report, machine, model, hf)
        elif section == "generation":
            bench_generation(args, report, machine, model, quantized, hf)
        elif section == "int8":
            heldout = open_heldout(args)
            bench_quantized_accuracy(args, report, model, quantized, *heldout_tokens(args, config, heldout))
            if heldout and args.llama_cpp:
                trained, text, ids = heldout
                bench_perplexity_vs_llama_cpp(args, report, trained.model, ids, trained.bos_id, text)
        elif section == "profile":
            bench_profile(report, {short_name(args.dtype): model, **quantized})
        elif section == "loss-memory":
            del model, quantized, hf  # free their memory before the loss-memory processes start
            bench_loss_memory(args, report, config)
        elif section == "tokenizer":
            bench_tokenizer(args, report)
        else:
            bench_prepare(args, report)
    bar.close()
