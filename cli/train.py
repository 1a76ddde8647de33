"""The command line of train.py: flags, the lock on --out, the tokenizer and built-in data made on first use,
and the run's summary. `python train.py` (or torchrun) runs `main` here; the training itself is train.py's."""
from __future__ import annotations

import argparse
import contextlib
import gc
import signal
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

import torch.distributed as dist
from tqdm import tqdm

import train
from cli.data import prepare_builtin, prepare_builtin_chat
from fox1.corpus import BUILTIN, BUILTIN_CHAT, builtin_documents
from fox1.distributed import Dist, StopFlag, global_mean, init_distributed
from fox1.files import InputError, LockedError, Number, check_numbers, exclusive
from fox1.shards import DataError, source_kinds
from model import CheckpointError, FoxConfig
from tokenizer import Tokenizer, load_tokenizer
from train import SFT, TRAIN_PRESETS, Inputs, TrainConfig, TrainError, export_dir, stage_label

# The standard library (10.7 MB of text) supports about 77K BPE merges: enough for tiny (8K) and small (32K).
BUILTIN_MAX_VOCAB = 65536


# The standard library (10.7 MB of text) supports about 77K BPE merges: enough for tiny (8K) and small (32K).
BUILTIN_MAX_VOCAB = 65536


def prepare_inputs(cfg: TrainConfig, preset_vocab: int, stages: list[int], env: Dist) -> Inputs:
    """Tokenizer and data: the built-in corpus and conversations are made on first use; a user --data root must
    exist. With --init the tokenizer is the folder's."""
    out = Path(cfg.out)
    tokenizer_path = Path(cfg.tokenizer or cfg.init or out / "tokenizer.txt")  # a folder: its tokenizer.json or .txt
    data_root = Path(cfg.data) if cfg.data else out / "data"
    train_tokenizer = cfg.data is None and cfg.init is None and not tokenizer_path.exists()
    if cfg.data is None and cfg.tokenizer is None and cfg.init is None and not train_tokenizer:
        vocab = load_tokenizer(tokenizer_path).vocab_size
        if vocab != preset_vocab:  # left by a run of another preset: the model would silently get its vocabulary
            raise TrainError(f"{tokenizer_path} has {vocab:,} tokens but preset {cfg.preset} uses {preset_vocab:,}: "
                             f"use another --out, or pass --tokenizer {tokenizer_path} to train with it anyway")
    if train_tokenizer and preset_vocab > BUILTIN_MAX_VOCAB:
        raise TrainError(f"the built-in corpus supports vocabularies up to {BUILTIN_MAX_VOCAB:,} tokens; preset "
                         f"{cfg.preset} needs {preset_vocab:,}: prepare your corpus with data.py and pass --data "
                         f"and --tokenizer")
    if env.is_main and cfg.data is None:
        out.mkdir(parents=True, exist_ok=True)
        if train_tokenizer:
            tqdm.write(f"training a {preset_vocab}-token BPE tokenizer on the standard library -> {tokenizer_path}")
            Tokenizer.train(builtin_documents(), preset_vocab).save(tokenizer_path)
        if any(stage != SFT for stage in stages):
            prepare_builtin(tokenizer_path, data_root)
        if SFT in stages:
            prepare_builtin_chat(tokenizer_path, data_root)
    dist.barrier()
    if not tokenizer_path.exists():
        raise TrainError(f"tokenizer {tokenizer_path} not found; pass --tokenizer (the one used by data.py prepare)")
    if cfg.data is None and not cfg.sources:
        sources, chat_sources = list(BUILTIN), [BUILTIN_CHAT]
    else:
        kinds = source_kinds(data_root)
        names = cfg.sources.split(",") if cfg.sources else sorted(kinds)
        sources = [name for name in names if kinds.get(name) != "chat"]
        chat_sources = [name for name in names if kinds.get(name) == "chat"]
    if not sources and any(stage != SFT for stage in stages):
        raise TrainError(f"{data_root}: no prepared sources (run `python data.py prepare ... --out {data_root}`)")
    if not chat_sources and stages == [SFT]:
        raise TrainError(f"{data_root}: no chat sources for --stage sft (run `python data.py prepare-chat ... "
                         f"--out {data_root}`)")
    return Inputs(tokenizer_path, data_root, sources, chat_sources)


def print_summary(results: dict[int, float], seconds: float, cfg: TrainConfig) -> None:
    """The run's last lines: each stage's final eval loss, which export is which, and how to try them."""
    summary = ", ".join(f"{stage_label(stage)} {loss:.4f}" for stage, loss in results.items())
    print(f"done in {seconds:,.0f} s: eval loss {summary}")
    base, chat = export_dir(cfg, chat=False), export_dir(cfg, chat=True)
    defaults = cfg.out == TrainConfig.out  # where sample.py and eval.py look when given no --ckpt
    if base.is_dir():
        print(f'base model: {base}/      try: python sample.py --ckpt {base} --prompt "def "'
              + ("    (the default of --prompt and of eval.py)" if defaults else ""))
    if SFT in results:
        print(f"chat model: {chat}/  try: python sample.py --ckpt {chat} --chat"
              + ("    (the default of --chat and --score-chat)" if defaults else ""))


def run(cfg: TrainConfig, stages: list[int]) -> int:
    """The stages in order; the exit status: 0, or 128 + the signal that stopped the run early (checkpoint saved)."""
    if Path(cfg.out).exists() and not Path(cfg.out).is_dir():
        raise TrainError(f"--out {cfg.out} is a file, not a directory")
    env = init_distributed()
    stop = StopFlag(announce=env.is_main)
    try:
        with contextlib.ExitStack() as lock:
            refused = None
            if env.is_main:  # rank 0 holds the lock; every rank learns whether it got it
                try:
                    lock.enter_context(exclusive(Path(cfg.out) / ".lock", f"--out {cfg.out}"))
                except LockedError as error:
                    refused = error
            if global_mean([float(refused is not None)], env)[0] > 0:
                raise refused or TrainError(f"--out {cfg.out} is in use by another run")
            inputs = prepare_inputs(cfg, FoxConfig.from_preset(cfg.preset).vocab_size, stages, env)
            if SFT in stages and not inputs.chat_sources and env.is_main:
                tqdm.write(f"{inputs.data_root} has no chat sources: skipping SFT (prepare some with data.py "
                           f"prepare-chat)")
            started = time.perf_counter()
            results = train.run_stages(cfg, [s for s in stages if s != SFT or inputs.chat_sources], inputs, env, stop)
    finally:
        gc.collect()  # FSDP2 on CPU can abort at exit if the model outlives the process group
        if dist.is_initialized():
            if sys.exc_info()[0] is None:  # after an error another rank may never reach this barrier
                dist.barrier()
            dist.destroy_process_group()
    stopped = [stage for stage, loss in results.items() if loss is None]
    if stopped:
        if env.is_main:
            print(f"stopped by {signal.Signals(stop.signal).name} in {stage_label(stopped[0])}; checkpoint "
                  f"saved. Run the same command to resume.", file=sys.stderr)
        return 128 + stop.signal
    if env.is_main:
        print_summary(results, time.perf_counter() - started, cfg)
    return 0


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, list[int]]:
    parser = argparse.ArgumentParser(description=train.__doc__.split("\n\n")[0].strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Examples:\n  python train.py\n"
                                            "  torchrun --nproc_per_node=8 train.py --preset fox-1.6b --data DATA "
                                            "--stage 1\n"
                                            "  torchrun --nproc_per_node=8 train.py --preset fox-1.6b --stage sft "
                                            "--init Fox-1-1.6B --data chat/")
    parser.add_argument("--preset", default="tiny", choices=list(TRAIN_PRESETS), help="model + training preset")
    parser.add_argument("--stage", choices=("1", "2", "3", "sft"),
                        help="run one stage (default: 1 -> 2 -> 3 -> sft; sft only when there are chat sources)")
    parser.add_argument("--init", help="--stage sft: start from this Llama-format folder (our export, or the "
                        "released Fox-1) instead of stage 3's final checkpoint")
    parser.add_argument("--data", help="data.py root of prepared sources (default: the built-in corpus in OUT/data)")
    parser.add_argument("--sources", help="comma list of sources under --data, broadest first (default: all)")
    parser.add_argument("--tokenizer", help="tokenizer file (default: OUT/tokenizer.txt, trained if missing)")
    parser.add_argument("--out", help="output directory for checkpoints, logs and the export (default: out)")
    parser.add_argument("--max-steps", type=int, help="steps per stage (default: stage token budget / batch)")
    parser.add_argument("--total-tokens", type=int, help="token budget of all 3 stages")
    parser.add_argument("--tokens-per-step", type=int, help="global batch in tokens")
    parser.add_argument("--micro-batch-tokens", type=int, help="tokens per rank per forward (memory)")
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--sft-tokens", type=int, help="token budget of the SFT stage (windows, padding included)")
    parser.add_argument("--sft-lr", type=float, help="peak learning rate of the SFT stage")
    parser.add_argument("--warmup-steps", type=int, help="linear warmup steps at the start of stage 1")
    parser.add_argument("--weight-decay", type=float, help="AdamW weight decay on matrices")
    parser.add_argument("--grad-clip", type=float, help="max global gradient norm")
    parser.add_argument("--seed", type=int, help="seed for init and data order")
    parser.add_argument("--eval-every", type=int, help="steps between evaluations (and at each stage end)")
    parser.add_argument("--eval-batches", type=int, help="validation batches per rank per evaluation")
    parser.add_argument("--save-every", type=int, help="steps between checkpoints (and at each stage end)")
    parser.add_argument("--keep", type=int, help="checkpoints kept per stage")
    parser.add_argument("--resume-from", help="resume a stage from this step_* checkpoint directory (points the "
                        "stage's `latest` marker at it); needed when `latest` is missing or damaged")
    parser.add_argument("--log-every", type=int, help="steps between log lines")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile each block (default: on for CUDA, off for CPU)")
    parser.add_argument("--activation-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                        help="recompute block activations in backward (default: on for fox-1.6b)")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="bf16 matmuls with fp32 master weights and gradient reduction (FSDP2 mixed precision; "
                             "default: where bf16 is native: CUDA, CPUs with AVX512-BF16 or AMX)")
    args = parser.parse_args(argv)
    check_flags(parser, args)
    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
                 if f.name != "preset" and getattr(args, f.name, None) is not None}
    cfg = replace(TRAIN_PRESETS[args.preset], **overrides)
    stages = {"1": [1], "2": [2], "3": [3], "sft": [SFT], None: [1, 2, 3, SFT]}[args.stage]
    return cfg, stages


# What each numeric flag accepts, checked before anything starts (fox1.files.check_numbers).
FLAG_RULES = {name: Number(1) for name in ("max_steps", "total_tokens", "sft_tokens", "tokens_per_step",
                                           "micro_batch_tokens", "eval_every", "eval_batches", "save_every", "keep",
                                           "log_every")} | {
    "lr": Number(0, above=True), "sft_lr": Number(0, above=True), "warmup_steps": Number(0),
    "weight_decay": Number(0), "grad_clip": Number(0, above=True), "seed": Number(0)}


def check_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse values no run can use, before anything starts (argparse's usage line + one error line)."""
    check_numbers(parser, args, FLAG_RULES)
    if args.init and args.stage != "sft":
        parser.error("--init starts the SFT stage from a model folder: use it with --stage sft")


def main(argv: list[str] | None = None) -> int:
    cfg, stages = parse_args(argv)
    try:
        return run(cfg, stages)
    except (TrainError, CheckpointError, InputError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the second Ctrl-C
        print("\ninterrupted: stopped at once, without saving; the last checkpoint is kept", file=sys.stderr)
        return 130
