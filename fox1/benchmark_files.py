"""Where a benchmark's split lives and how its records are read, for eval.py's scoring of the tasks Fox-1's paper
reports (ARC, HellaSwag, MMLU, Winogrande, GSM8k, ...): files under --data DIR, or the Hugging Face Hub itself through
`datasets` (--hf). Records come out as (where, record), "file:line" or "file: row N",
for eval.py to turn into items and to name in its one-line errors.

Under DIR a task's split is DIR/<name>_<split>.jsonl or .parquet, DIR/<name>/<split>.jsonl, DIR/<name>.jsonl (the
scored split only), or a Hub dataset repository downloaded as the Hub serves it into DIR/<name>/ or DIR/<dataset>/
(e.g. arc_easy/ARC-Easy/test-00000-of-00001.parquet, hellaswag/data/validation-00000-of-00001.parquet,
lambada_openai/data/lambada_test.jsonl). A task has several names to look for (`stems`: arc_easy, ARC-Easy) and the
Hub dataset and config the harness loads (`hub`). Parquet needs pyarrow, --hf the datasets package.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Sequence

from fox1.documents import parquet_rows
from fox1.files import InputError, read_text

SPLIT_NAMES = {"validation": ("validation", "val"), "test": ("test",), "train": ("train",), "dev": ("dev",)}
EXTENSIONS = (".jsonl", ".parquet")


def split_file_names(stems: Sequence[str], split: str, plain: bool) -> list[str]:
    """<name>_<split>.jsonl, <name>/<split>.jsonl and, with plain (the scored split), <name>.jsonl; each
    also as .parquet."""
    return [name for stem in stems for extension in EXTENSIONS for name in
            [f"{stem}_{s}{extension}" for s in SPLIT_NAMES[split]]
            + [f"{stem}/{s}{extension}" for s in SPLIT_NAMES[split]] + ([f"{stem}{extension}"] if plain else [])]


def is_split_file(path: Path, split: str) -> bool:
    """How the Hub names a split's files: <split>-00000-of-00001.parquet, <split>.jsonl, lambada_<split>.jsonl,
    or any file in a <split>/ folder (its Parquet conversion: <config>/<split>/0000.parquet)."""
    stem = path.name[:-len(path.suffix)]
    return stem == split or stem.startswith(f"{split}-") or stem.endswith(f"_{split}") or path.parent.name == split


def hub_download_files(directory: Path, task: str, stems: Sequence[str], hub: tuple[str, str | None],
                       split: str) -> list[Path]:
    """The split's files in a Hub dataset repository downloaded into DIR/<name>/ (or DIR/<dataset>/, e.g.
    ai2_arc/), read from the config's folder when it has one (ARC-Easy/, winogrande_xl/, main/, all/): every
    shard, in order. Files of one split in two folders are refused rather than mixed."""
    repository, config = hub
    for stem in (*stems, repository.split("/")[-1]):
        root = directory / stem / config if config and (directory / stem / config).is_dir() else directory / stem
        files = sorted(p for p in root.rglob("*") if p.suffix in EXTENSIONS and p.is_file()) if root.is_dir() else []
        for name, extension in ((name, extension) for name in SPLIT_NAMES[split] for extension in EXTENSIONS):
            found = [p for p in files if p.suffix == extension and is_split_file(p, name)]
            if len({p.parent for p in found}) > 1:
                raise InputError(f"{root}: {task} {split} files in several folders "
                                 f"({', '.join(sorted({str(p.parent) for p in found}))}); give --data one of them")
            if found:
                return found
    return []


def find_split_files(directory: Path, task: str, stems: Sequence[str], hub: tuple[str, str | None], split: str,
                     plain: bool) -> list[Path]:
    """The split's file(s) under --data: one of `split_file_names`, else a Hub download (`hub_download_files`);
    [] if none."""
    named = next((directory / name for name in split_file_names(stems, split, plain) if (directory / name).is_file()),
                 None)
    return [named] if named else hub_download_files(directory, task, stems, hub, split)


def file_records(paths: Sequence[Path]) -> Iterator[tuple[str, object]]:
    """(where, record) for each record of the files, JSONL or Parquet by extension."""
    for path in paths:
        yield from parquet_rows(path) if path.suffix == ".parquet" else jsonl_records(path)


def jsonl_records(path: Path) -> Iterator[tuple[str, object]]:
    """(where, record) for each non-blank line of a JSONL file."""
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{number}: not valid JSON ({e.msg})") from None
            yield f"{path}:{number}", record


def hub_records(hub: tuple[str, str | None], split: str) -> Iterator[tuple[str, object]]:
    """(where, record) for each row of a Hub dataset's split, through `datasets` (which caches it)."""
    try:
        import datasets
    except ImportError:
        raise InputError("--hf needs the datasets package (pip install datasets)") from None
    repository, config = hub
    name = f"{repository}{f' ({config})' if config else ''} {split}"
    try:
        rows = datasets.load_dataset(repository, config, split=split)
    except Exception as e:  # no network, no such split, a changed repository: datasets raises many kinds
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(f"--hf: cannot load {name} ({type(e).__name__}: {first_line[:200]})") from None
    yield from ((f"{name}, row {number}", row) for number, row in enumerate(rows, start=1))
