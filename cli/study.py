"""The command line of study.py: run one experiment (study.EXPERIMENTS), write its numbers (JSON) and picture
(PNG, where matplotlib is installed) into --out, print its table and conclusion. `python study.py ...` runs `main`
here; what each experiment tests, and how, is study.py's."""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

import data
import train
from fox1.files import InputError, Number, check_numbers, write_json_atomic
from model import CheckpointError
import study
from study import EXPERIMENTS, PRESETS, GqaSettings, Panel, StudyError


def finite(value):
    """JSON has no NaN: NaN and infinities become null, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def save_figure(path: Path, panels: list[Panel]) -> str:
    """Draw the panels side by side into a PNG (written to a temporary name, then renamed); return what
    happened, in words: matplotlib is optional."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no picture (pip install matplotlib), the table has every number"
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5))
    for ax, panel in zip(axes if len(panels) > 1 else [axes], panels):
        for label, (xs, ys) in panel.lines.items():
            ax.plot(xs, ys, marker="o" if len(xs) < 20 else None, label=label)
        ax.set(title=panel.title, xlabel=panel.xlabel, ylabel=panel.ylabel)
        if panel.logx:
            ax.set_xscale("log", base=2)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    figure.tight_layout()
    temporary = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(temporary, dpi=110)
    plt.close(figure)
    temporary.replace(path)
    return f"picture: {path}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=study.__doc__.split("\n\n")[0].strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Examples:\n  python study.py gqa\n  python study.py curriculum --seeds 3")
    parser.add_argument("experiment", choices=list(EXPERIMENTS), help="which question to test")
    parser.add_argument("--seeds", type=int, help="training runs per arm (default 2); gqa: timing repeats (default 3)")
    parser.add_argument("--out", default="out/study", help="tokenizers, data, JSON and PNG (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="tiny settings that finish in about a minute (a smoke "
                                                             "test; its numbers mean nothing)")
    args = parser.parse_args(argv)
    check_numbers(parser, args, FLAG_RULES)
    return args


FLAG_RULES = {"seeds": Number(1)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = PRESETS[args.experiment]["quick" if args.quick else "default"]
    seeds = args.seeds or (settings.repeats if isinstance(settings, GqaSettings) else settings.training.seeds)
    out = Path(args.out)
    name = args.experiment + ("-quick" if args.quick else "")
    if args.quick:  # its matrices are too small to gain from a second thread, which on a busy CPU costs 10x
        torch.set_num_threads(1)
    try:
        if out.exists() and not out.is_dir():
            raise StudyError(f"--out {out} is a file, not a directory")
        out.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        report = EXPERIMENTS[args.experiment](settings, seeds, out)
        report.numbers |= {"experiment": args.experiment, "quick": args.quick, "seconds": time.perf_counter() - started,
                           "conclusion": report.conclusion, "notes": report.notes}
        write_json_atomic(out / f"{name}.json", finite(report.numbers))
        picture = save_figure(out / f"{name}.png", report.panels)
    except (StudyError, data.DataError, InputError, train.TrainError, CheckpointError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted: {name} stopped; its results were not written", file=sys.stderr)
        return 130
    print(f"\n{report.table}\n")
    for note in report.notes:
        print(f"note: {note}")
    print(f"numbers: {out / f'{name}.json'}; {picture}; {report.numbers['seconds']:,.0f} s")
    print(report.conclusion)
    return 0

