"""The command line of eval.py: open a checkpoint, score each task (eval.run_task), print the table and a JSON
summary, and write the per-item and lm-evaluation-harness files when asked. `python eval.py ...` runs `main` here."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import torch

from cli.sample import open_checkpoint
from eval import (BATCH_TOKENS, BOOTSTRAP_RESAMPLES, DEFAULT_CKPT, GSM8K_MAX_NEW_TOKENS, TASKS, EvalError,
                  format_table, run_task, summary_json, task_named, write_harness_output, write_records)
from fox1.files import InputError, Number, check_numbers
from fox1.machine import parse_device
from model import CheckpointError
from sample import SampleError


def parse_shots(text: str | None, tasks: Sequence[str]) -> dict[str, int]:
    """--shots N (every task) or task=N,task=N (the rest keep their defaults) -> {task: shots}."""
    shots = {name: TASKS[name].shots for name in tasks}
    if text is None:
        return shots
    for part in text.split(","):
        name, _, count = part.rpartition("=")
        if name and task_named(name) is None:
            raise EvalError(f"--shots: unknown task {name!r}")
        if not count.isdigit():
            raise EvalError(f"--shots: {part!r} is not N or task=N")
        shots.update({task_named(name).name: int(count)} if name else dict.fromkeys(shots, int(count)))
    return {name: shots[name] for name in tasks}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Score a Fox checkpoint on benchmarks, as lm-evaluation-harness does.",
                                epilog="Data files: DIR/<name>_<split>.jsonl or .parquet, e.g. "
                                       "hellaswag_validation.jsonl, arc_easy_test.parquet, lambada_openai_test.jsonl, "
                                       "mmlu_test.jsonl + mmlu_dev.jsonl, or Hub downloads in DIR/<name>/ (see the "
                                       "module docstring).")
    p.add_argument("--ckpt", default=DEFAULT_CKPT, help="our export or a Llama-format directory (default: %(default)s)")
    p.add_argument("--tokenizer", help="tokenizer.txt, tokenizer.json or a folder (default: the checkpoint's own)")
    p.add_argument("--tasks", default="hellaswag,arc_easy,arc_challenge,lambada_openai",
                   help=f"comma-separated, from {', '.join(TASKS)} (default: %(default)s)")
    p.add_argument("--data", help="directory of the tasks' JSONL / Parquet files or Hub downloads")
    p.add_argument("--hf", action="store_true",
                   help="instead of --data: load each task's Hub dataset as the harness does (needs datasets)")
    p.add_argument("--shots", help="few-shot examples: N for every task, or task=N,... (default: mmlu and gsm8k 5, others 0)")
    p.add_argument("--fewshot-from", help="JSONL or Parquet file to draw few-shot examples from (one task only)")
    p.add_argument("--limit", type=int, help="score N items per task: a fixed seeded random subset (--match-harness: "
                                             "the first N, per MMLU subject)")
    p.add_argument("--match-harness", action="store_true",
                   help="item for item as lm-evaluation-harness: --limit takes the first N items, and LAMBADA's "
                        "few-shot examples may include the passage scored, as there")
    p.add_argument("--seed", type=int, default=1234, help="subset and few-shot draws (default: %(default)s, the harness's)")
    p.add_argument("--batch-size", type=int, default=16,
                   help=f"rows (items) per forward at most, and at most {BATCH_TOKENS} padded tokens (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=GSM8K_MAX_NEW_TOKENS, help="gsm8k generation (default: %(default)s)")
    p.add_argument("--no-bos", dest="bos", action="store_false",
                   help="no <bos> before the context (the harness's choice for a tokenizer.json that adds none, as ours)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="(default: %(default)s)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                   help="default: bfloat16 on cuda, float32 on cpu")
    p.add_argument("--out", help="write per-item results here (JSONL)")
    p.add_argument("--output-path", help="write the harness's results_<date>.json and samples_<task>_<date>.jsonl "
                                         "into this directory")
    args = p.parse_args(argv)
    check_numbers(p, args, FLAG_RULES)
    return args


FLAG_RULES = {"limit": Number(1), "seed": Number(0), "batch_size": Number(1), "max_new_tokens": Number(1)}


def check_arguments(args: argparse.Namespace) -> list[str]:
    """The task names (the harness's, once each), after checking every path argument before anything is loaded."""
    names = [name.strip() for name in args.tasks.split(",") if name.strip()]
    unknown = [name for name in names if task_named(name) is None]
    if unknown or not names:
        raise EvalError(f"--tasks: unknown task {unknown[0] if unknown else '(none)'!r}; choose from {', '.join(TASKS)}")
    if (args.data is None) == (not args.hf):
        raise EvalError("--data DIR or --hf: say where the benchmarks come from (one of them)")
    if args.data is not None and not Path(args.data).is_dir():
        raise EvalError(f"{args.data}: --data is not a directory")
    if args.fewshot_from and len(names) != 1:
        raise EvalError("--fewshot-from FILE serves one task: pass a single --tasks name")
    if args.out and Path(args.out).exists():
        raise EvalError(f"{args.out}: exists already; --out will not overwrite it")
    if args.output_path and Path(args.output_path).exists() and not Path(args.output_path).is_dir():
        raise EvalError(f"{args.output_path}: --output-path is a file, not a directory")
    return list(dict.fromkeys(task_named(name).name for name in names))


def run_config(args: argparse.Namespace, bos: bool | int, dtype: torch.dtype) -> dict:
    """How the run was made, for the harness's results file ("config")."""
    return {"model": "fox1", "model_args": f"ckpt={args.ckpt}", "batch_size": args.batch_size, "device": args.device,
            "dtype": str(dtype).removeprefix("torch."), "limit": args.limit, "bootstrap_iters": BOOTSTRAP_RESAMPLES,
            "fewshot_seed": args.seed, "bos": bos is not False, "match_harness": args.match_harness,
            "data": "hf" if args.hf else args.data}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        tasks = check_arguments(args)
        shots = parse_shots(args.shots, tasks)
        device = parse_device(args.device)
        ckpt = Path(args.ckpt)
        loaded = open_checkpoint(ckpt, args.tokenizer, device, args.dtype)
        model, tokenizer, eos_ids = loaded.model, loaded.tokenizer, loaded.eos_ids
        bos = loaded.bos_id if args.bos else False
        print(f"{ckpt}: {model.num_params():,} parameters, {loaded.dtype} on {device}", file=sys.stderr)
        results = [run_task(model, tokenizer, TASKS[name], None if args.hf else Path(args.data), shots=shots[name],
                            limit=args.limit, seed=args.seed, batch_size=args.batch_size, bos=bos, eos=eos_ids,
                            fewshot_from=Path(args.fewshot_from) if args.fewshot_from else None,
                            max_new_tokens=args.max_new_tokens, match_harness=args.match_harness)
                   for name in tasks]
        if args.out:
            write_records(Path(args.out), results)
        if args.output_path:
            written = write_harness_output(Path(args.output_path), results, run_config(args, bos, loaded.dtype))
            print(f"harness results: {written[-1]}", file=sys.stderr)
    except (EvalError, SampleError, CheckpointError, InputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    print(format_table(results))
    print(summary_json(str(ckpt), results))
    return 0

