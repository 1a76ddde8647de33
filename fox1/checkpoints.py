"""Training checkpoints on disk: sharded torch.distributed.checkpoint (DCP) folders, the `latest` marker, and the
per-stage metrics log, all written so that a kill at any moment leaves the previous state intact.

A stage directory holds step_NNNNNN/ (DCP shards + meta.json + rng_rank{r}.pt), a `latest` file naming the newest
complete one, and metrics.jsonl (metrics.rank{R}.jsonl for other ranks). A save goes to step_N.tmp/, is renamed,
then `latest` is replaced; older checkpoints are pruned, never the one just saved. DCP checkpoints reload at
another world size. train.py calls these with its model, optimizer and process-group description `env`
(rank, is_main).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from fox1.files import write_atomic, write_json_atomic
from fox1.hf_llama import CheckpointError


def latest_checkpoint(directory: Path) -> Path | None:
    """The checkpoint `latest` names, or None when the stage has none. A broken one is an error, not a
    silent restart from scratch."""
    marker = directory / "latest"
    if not marker.exists():
        saved = saved_checkpoints(directory)
        if saved:  # starting over would train from step 0 and then prune these away
            raise CheckpointError(f"{directory} holds {', '.join(p.name for p in saved)} but no `latest` marker; "
                                  f"resume with --resume-from {saved[-1]}, or move them away to start the stage over")
        return None
    path = directory / marker.read_text().strip()
    if not is_complete_checkpoint(path):
        raise CheckpointError(f"{marker} names {path}, which is not a complete checkpoint; resume from an earlier "
                              f"one with --resume-from {directory}/step_NNNNNN")
    return path


def is_complete_checkpoint(path: Path) -> bool:
    return (path / "meta.json").is_file() and (path / ".metadata").is_file()


def saved_checkpoints(directory: Path) -> list[Path]:
    """The complete step_N checkpoints of a stage directory, by step."""
    found = [p for p in directory.glob("step_*") if p.name[5:].isdigit() and is_complete_checkpoint(p)]
    return sorted(found, key=lambda p: int(p.name[5:]))


def point_latest_at(checkpoint: Path) -> None:
    """--resume-from: make `latest` of the checkpoint's stage directory name it (atomically)."""
    if not checkpoint.name.startswith("step_") or not is_complete_checkpoint(checkpoint):
        raise CheckpointError(f"--resume-from {checkpoint}: not a complete step_* checkpoint directory")
    write_atomic(checkpoint.parent / "latest", checkpoint.name + "\n")


def read_checkpoint_meta(path: Path, model_config) -> dict:
    """A checkpoint's meta.json, refused in one line when damaged or written for another model shape (any
    dataclass config: compared field by field)."""
    try:
        meta = json.loads((path / "meta.json").read_text())
        stored = dict(meta["model_config"])
        missing = [key for key in ("step", "stage_steps", "complete", "eval_loss", "loader") if key not in meta]
        if missing:
            raise KeyError(missing[0])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path / 'meta.json'}: corrupt checkpoint metadata ({e!r})") from None
    wanted = asdict(model_config)
    changed = [name for name in wanted if stored.get(name) != wanted[name]]
    if changed:
        raise CheckpointError(f"{path} was trained with preset {meta.get('preset')!r} and a different model "
                              f"({', '.join(changed)} differ); use that preset or another --out")
    return meta


def save_checkpoint(model: torch.nn.Module, optimizer, meta: dict, directory: Path, env, keep: int) -> Path:
    """Sharded save into step_N.tmp/, rename to step_N/, then replace `latest`; prune to `keep`."""
    final = directory / f"step_{meta['step']:06d}"
    tmp = final.with_name(final.name + ".tmp")
    if env.is_main:
        for debris in directory.glob("step_*.tmp"):  # saves that were killed half-way
            shutil.rmtree(debris)
        tmp.mkdir(parents=True)
    dist.barrier()
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=tmp)
    # Training draws no random numbers today; the RNG is saved so that adding dropout keeps resume exact.
    torch.save(torch.get_rng_state(), tmp / f"rng_rank{env.rank}.pt")
    dist.barrier()
    if env.is_main:
        write_json_atomic(tmp / "meta.json", meta)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        point_latest_at(final)
        # Only older steps are pruned, never the one just saved (nor later ones left by a --resume-from rewind).
        older = [p for p in saved_checkpoints(directory) if int(p.name[5:]) < meta["step"]]
        for old in older[:max(0, len(older) - (keep - 1))]:
            shutil.rmtree(old)
    dist.barrier()
    return final


def load_checkpoint(model: torch.nn.Module, optimizer, path: Path, env) -> None:
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    logging.disable(logging.CRITICAL)  # DCP logs each failed metadata read with a traceback on the root logger
    try:
        dcp.load(state, checkpoint_id=path)
    except (Exception, dcp.api.CheckpointException) as e:  # the latter wraps per-rank errors, a BaseException
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
        reason = ("it was written by a model with other parameters" if "Missing key" in lines[-1]
                  else "its files are damaged or incomplete")
        raise CheckpointError(f"{path}: cannot load checkpoint, {reason} ({lines[-1]})") from None
    finally:
        logging.disable(logging.NOTSET)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    rng = path / f"rng_rank{env.rank}.pt"
    if rng.exists():  # absent when resuming at a larger world size: that rank keeps its fresh seed
        try:
            torch.set_rng_state(torch.load(rng, weights_only=True))
        except (RuntimeError, EOFError, OSError, ValueError) as e:
            raise CheckpointError(f"{rng}: damaged RNG state ({str(e).splitlines()[0]})") from None



def read_metrics(path: Path) -> list[tuple[str, dict]]:
    """(line, row) of every row of a metrics.jsonl. A torn last line (a kill or a full disk mid-write) is
    dropped; damage anywhere else is an error, not silently lost history."""
    lines = path.read_text(errors="replace").splitlines()
    rows = []
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise ValueError("no integer 'step'")
        except ValueError as e:
            if number == len(lines):
                break
            raise CheckpointError(f"{path}:{number}: damaged metrics row ({e}); fix or remove that line") from None
        rows.append((line, row))
    return rows


class MetricsLog:
    """One JSON object per line: out/stage{S}/metrics.jsonl from rank 0, metrics.rank{R}.jsonl from the others
    (their tokens/s shows a straggler; their losses must equal rank 0's). On resume, rows past the checkpoint's
    step (written before a kill) are dropped first, so the file reads as one uninterrupted run."""

    def __init__(self, directory: Path, rank: int, resume_step: int):
        path = directory / ("metrics.jsonl" if rank == 0 else f"metrics.rank{rank}.jsonl")
        if path.exists():
            kept = [line for line, row in read_metrics(path) if row["step"] <= resume_step]
            write_atomic(path, "".join(line + "\n" for line in kept))
        self.file = open(path, "a")

    def write(self, **row) -> None:
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()

