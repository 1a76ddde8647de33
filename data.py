"""Data pipeline: text -> uint32 token shards -> Fox-1's 3-stage curriculum of packed, shuffled, resumable batches.

Fox-1 (arXiv 2411.05281) is pre-trained on 3T tokens with a 3-stage data curriculum: the sequence length grows
2K -> 4K -> 8K while the data mixture moves toward higher-quality sources. This file is that pipeline at any scale:

  prepare     text / JSONL (`text` field) files, `.gz` of either, or globs -> DATA/NAME/ holding uint32 token shards
              (np.memmap-able), the start offset of every document, and meta.json (tokenizer fingerprint, counts,
              train/val split). Every document is stored as <bos> ... <eos>. Tokenized in worker processes; written
              to a temporary directory that replaces DATA/NAME only when complete; a re-run on the same inputs
              (paths, sizes, mtimes) with the same tokenizer does no work.
  curriculum  the three stages (sequence length, token budget, source mixture) as a small table of `Stage`s.
  Loader      cuts each source's token stream into windows of seq_len+1 tokens that overlap by one token (every
              next-token pair is trained; no padding), on a grid shifted each epoch, shuffles them per epoch,
              draws the source of every slot by weight, splits each global batch across ranks, and resumes
              exactly from `state_dict()`.

The built-in corpus is the running interpreter's own standard library (read at run time, never copied): Python code
plus docstring and comment prose, a small echo of Fox-1's text + code mix. It is split into two sources so the
curriculum has somewhere to move: `stdlib-docs` (modules where strings and comments are >= 45% of the source, e.g.
pydoc_data/topics.py, typing.py, _pydecimal.py) and `stdlib-code` (the rest).

Run:
    python data.py prepare --input 'corpus/*.txt' --tokenizer tok.txt --out data --name prose
    python data.py prepare-builtin --tokenizer tok.txt --out data
    python data.py prepare-chat --input 'chats/*.jsonl' --tokenizer tok.txt --out chat --name mychat
    python data.py stats --data data --context-len 1024
"""
from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import io
import itertools
import json
import os
import re
import shutil
import sys
import sysconfig
import tempfile
import time
import tokenize
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from model import IGNORE_INDEX
from tokenizer import (CHUNK_CHARS, DEFAULT_CHAT_TEMPLATE, InputError, ReadStats, Tokenizer, _replace_lone_surrogates,
                       check_conversation, document_chunks, encode_chat, expand_inputs, iter_documents,
                       load_chat_template, load_tokenizer, ordered_map, read_text)

FORMAT = "fox1-token-shards-v1"
TOKEN_DTYPE = np.dtype("<u4")  # uint32, little-endian on disk whatever the machine: ids up to 4G, 4 bytes a token
SHARD_TOKENS = 1 << 27  # 128M tokens = 512 MB per shard file: few files, none near filesystem limits
PARALLEL_MIN_BYTES = 32 << 20  # smaller inputs are tokenized in this process unless workers are asked for
MIX_BLOCK = 4096  # slots per seeded mixture draw; keyed by block number, so a slot's source never depends on
#                   batch size or world size
NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")

# Built-in corpus: the stdlib minus installed packages, the test suites (17 MB of mostly assertion code and deliberately
# broken files, more than the rest of the stdlib together), the generated codec tables in encodings/ and the toy
# __phello__ package.
BUILTIN = ("stdlib-code", "stdlib-docs")
BUILTIN_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "encodings", "__phello__"})
DOCS_PROSE_RATIO = 0.45  # on CPython 3.11: 213 of 607 non-empty modules, 4.2 of 10.7 MB, are at or above it
BUILTIN_VAL_FRACTION = 0.05  # the stdlib is small: 1 file in 20 is ~97K tokens (8K vocab), 94 windows of 1025

# Curriculum. What the paper says: 3T tokens in three stages at 2K, 4K and 8K with rising data quality; stage 3 is a
# short high-quality phase at 8K. Its per-stage token counts could not be read from the stored copies of the report
# (only the abstract); from memory they are roughly 39% / 59% / 2% of the data -- unverified. Chosen here: 40% / 45% /
# 15%. Stages 1-2 keep the paper's "bulk at short lengths"; stage 3 gets 15% rather than 2% because at the scale of
# `python train.py` (a few million tokens) 2% is a handful of optimizer steps, too few to adapt to a 4x longer
# context and a new mixture.
STAGE_TOKEN_FRACTIONS = (0.40, 0.45, 0.15)
STAGE_CONTEXT_DIVISORS = (4, 2, 1)  # seq_len = context_len // divisor: 2048/4096/8192 for fox-1.6b
BUILTIN_MIXTURES = (  # stage 1 is near the natural 61/39 byte ratio (all data); later stages favour documented code
    {"stdlib-code": 0.6, "stdlib-docs": 0.4},
    {"stdlib-code": 0.4, "stdlib-docs": 0.6},
    {"stdlib-code": 0.2, "stdlib-docs": 0.8},
)


class DataError(ValueError):
    """Unusable data, state or configuration; the message is one line naming the file or field."""


# ---------------------------------------------------------------------------------------------------------------------
# Built-in corpus


def builtin_files() -> list[Path]:
    """The interpreter's standard library .py files (see BUILTIN_SKIP_DIRS), sorted by path inside the stdlib."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for directory, subdirectories, names in os.walk(root):
        subdirectories[:] = [d for d in subdirectories if d not in BUILTIN_SKIP_DIRS]  # prune: never walk them
        files += [Path(directory) / name for name in names if name.endswith(".py")]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def builtin_documents(source: str | None = None, stats: ReadStats | None = None) -> Iterator[str]:
    """Each built-in file as one document: all of them, or only those of one BUILTIN source. Undecodable bytes
    become U+FFFD, counted in stats."""
    return _read_files(builtin_files() if source is None else _split_builtin(builtin_files())[source],
                       stats or ReadStats())


def _read_files(files: list[Path], stats: ReadStats) -> Iterator[str]:
    for path in files:
        text = _replace_lone_surrogates(path.read_bytes().decode("utf-8", errors="surrogateescape"), stats)
        if text.strip():  # an empty __init__.py would only teach "<bos> is followed by <eos>"
            yield text


def prose_ratio(source: str) -> float:
    """Fraction of a Python file's characters inside string literals and comments (docstrings count as strings)."""
    prose = 0
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type in (tokenize.STRING, tokenize.COMMENT):
                prose += len(token.string)
    except (tokenize.TokenError, SyntaxError):  # not valid Python: count what was read before the error
        pass
    return prose / max(len(source), 1)


def _split_builtin(files: list[Path], progress: bool = True) -> dict[str, list[Path]]:
    groups: dict[str, list[Path]] = {name: [] for name in BUILTIN}
    for path in tqdm(files, desc="classifying stdlib", unit="file", leave=False, disable=not progress):
        ratio = prose_ratio(path.read_text(encoding="utf-8", errors="replace"))
        groups["stdlib-docs" if ratio >= DOCS_PROSE_RATIO else "stdlib-code"].append(path)
    return groups


def prepare_builtin(tokenizer_path: Path, data_root: Path, *, workers: int | None = None,
                    progress: bool = True) -> list[str]:
    """Prepare the BUILTIN sources under data_root (nothing to do when already prepared); return their names."""
    files = builtin_files()
    tokenizer = cached_tokenizer(tokenizer_path)
    key = _inputs_key(files, tokenizer, val_fraction=BUILTIN_VAL_FRACTION, docs_prose_ratio=DOCS_PROSE_RATIO)
    if all(_is_prepared(Path(data_root) / name, key) for name in BUILTIN):
        return list(BUILTIN)
    for name, group in _split_builtin(files, progress).items():
        stats = ReadStats()
        _build_source(_read_files(group, stats), Path(tokenizer_path), Path(data_root) / name, key=key,
                      val_fraction=BUILTIN_VAL_FRACTION, workers=workers, shard_tokens=SHARD_TOKENS,
                      total_bytes=sum(path.stat().st_size for path in group), progress=progress, read_stats=stats)
    return list(BUILTIN)


# ---------------------------------------------------------------------------------------------------------------------
# Prepare: documents -> token shards


def prepare(inputs: list[str], tokenizer_path: Path, data_root: Path, name: str, *, workers: int | None = None,
            val_fraction: float = 0.01, skip_bad_lines: bool = False, shard_tokens: int = SHARD_TOKENS,
            progress: bool = True, allow_binary: bool = False) -> Path:
    """Tokenize files/globs into data_root/name (see module docstring); return that directory.

    Train/val split: document number i (0-based, in input order) goes to val when floor((i + 1) * val_fraction) >
    floor(i * val_fraction): the requested share (0.4 holds out 2 of every 5), deterministic and independent of the
    number of workers.
    """
    _check_source_settings(name, val_fraction)
    paths = expand_inputs(inputs)
    tokenizer = cached_tokenizer(tokenizer_path)
    key = _inputs_key(paths, tokenizer, val_fraction=val_fraction, skip_bad_lines=skip_bad_lines,
                      shard_tokens=shard_tokens)
    directory = Path(data_root) / name
    if _is_prepared(directory, key):
        if progress:
            print(f"{name}: already prepared from the same inputs with this tokenizer, nothing to do")
        return directory
    stats = ReadStats()
    total_bytes = None if any(p.suffix == ".gz" for p in paths) else sum(p.stat().st_size for p in paths)
    documents = iter_documents(paths, skip_bad_lines=skip_bad_lines, stats=stats, allow_binary=allow_binary)
    _build_source(documents, Path(tokenizer_path), directory, key=key, val_fraction=val_fraction, workers=workers,
                  shard_tokens=shard_tokens, total_bytes=total_bytes, progress=progress, read_stats=stats)
    return directory


def _check_source_settings(name: str, val_fraction: float) -> None:
    if not NAME_PATTERN.fullmatch(name):
        raise DataError(f"--name {name!r}: use letters, digits, '.', '_' and '-' only")
    if not 0 <= val_fraction <= 0.5:
        raise DataError(f"val_fraction {val_fraction}: must be between 0 and 0.5")


def held_out(numbers: np.ndarray, val_fraction: float) -> np.ndarray:
    """Whether document (or conversation) number i goes to val: floor((i + 1) * f) > floor(i * f)."""
    return np.floor((numbers + 1) * val_fraction) > np.floor(numbers * val_fraction)


def _inputs_key(paths: list[Path], tokenizer: Tokenizer, **settings) -> str:
    """Identity of a preparation: input paths, sizes and mtimes (not contents: hashing 1 TB would take hours),
    the tokenizer fingerprint, the format and the settings that change the output."""
    files = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    blob = json.dumps([FORMAT, tokenizer.fingerprint, files, sorted(settings.items())])
    return hashlib.sha256(blob.encode()).hexdigest()


def _is_prepared(directory: Path, key: str) -> bool:
    try:
        return json.loads((directory / "meta.json").read_text())["inputs_key"] == key
    except (OSError, ValueError, KeyError):
        return False


def cached_tokenizer(path: str | Path) -> Tokenizer:
    """load_tokenizer(path) (tokenizer.txt, tokenizer.json or a folder), loaded once per process and file
    version: the workers that encode chunk after chunk, and every source of one run, share one."""
    stat = Path(path).stat()
    return _load_tokenizer(str(path), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=2)
def _load_tokenizer(path: str, mtime_ns: int, size: int) -> Tokenizer:
    return load_tokenizer(path)


def _encode_documents(job: tuple[str, list[str]]) -> tuple[np.ndarray, np.ndarray, int]:
    """In a worker: documents -> (all their tokens as <bos> ids <eos>, one after another; lengths; UTF-8 bytes)."""
    tokenizer_path, documents = job
    tokenizer = cached_tokenizer(tokenizer_path)
    bos, eos = np.array([tokenizer.bos_id], TOKEN_DTYPE), np.array([tokenizer.eos_id], TOKEN_DTYPE)
    pieces, lengths = [], []
    for ids in tokenizer.encode_batch(documents, num_threads=1):
        pieces += [bos, np.array(ids, dtype=TOKEN_DTYPE), eos]
        lengths.append(len(ids) + 2)
    size = sum(len(document.encode("utf-8", "replace")) for document in documents)
    return np.concatenate(pieces), np.array(lengths, dtype=np.int64), size


class _ShardWriter:
    """Appends documents to one split: a flat token stream cut into files of shard_tokens tokens (a document may
    continue in the next file) plus the stream offset where each document starts."""

    def __init__(self, directory: Path, split: str, shard_tokens: int):
        self.directory, self.split, self.shard_tokens = directory, split, shard_tokens
        self.shards: list[dict] = []
        self.doc_starts: list[np.ndarray] = []
        self.tokens = 0
        self.file = None

    def write(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        self.doc_starts.append(self.tokens + np.cumsum(lengths) - lengths)
        while len(tokens):
            if self.file is None:
                self.shards.append({"file": f"{self.split}_{len(self.shards):06d}.bin", "tokens": 0})
                self.file = open(self.directory / self.shards[-1]["file"], "wb")
            shard = self.shards[-1]
            take = min(len(tokens), self.shard_tokens - shard["tokens"])
            self.file.write(tokens[:take].tobytes())
            shard["tokens"] += take
            self.tokens += take
            tokens = tokens[take:]
            if shard["tokens"] == self.shard_tokens:
                self.file.close()
                self.file = None

    def close(self) -> dict:
        if self.file is not None:
            self.file.close()
        starts = np.concatenate(self.doc_starts) if self.doc_starts else np.zeros(0, np.int64)
        np.save(self.directory / f"{self.split}_doc_starts.npy", starts)
        return {"tokens": self.tokens, "documents": len(starts), "shards": self.shards,
                "doc_starts": f"{self.split}_doc_starts.npy"}


def _build_source(documents: Iterable[str], tokenizer_path: Path, directory: Path, *, key: str,
                  val_fraction: float, workers: int | None, shard_tokens: int, total_bytes: int | None,
                  progress: bool, read_stats: ReadStats | None = None) -> None:
    start = time.perf_counter()
    with _staged_directory(directory) as temporary:
        splits = _tokenize_into(temporary, documents, tokenizer_path, val_fraction, workers, shard_tokens,
                                total_bytes, progress, directory.name)
        if splits["train"]["documents"] + splits["val"]["documents"] == 0:
            raise DataError(f"{directory.name}: the inputs hold no documents (empty or whitespace-only)")
        read_stats = read_stats or ReadStats()
        meta = _source_meta(directory, key, cached_tokenizer(tokenizer_path), splits, val_fraction=val_fraction,
                            bad_lines_skipped=read_stats.bad_lines, replaced_bytes=read_stats.replaced_bytes)
        (temporary / "meta.json").write_text(json.dumps(meta, indent=1))
    if progress:
        seconds = time.perf_counter() - start
        total = splits["train"]["tokens"] + splits["val"]["tokens"]
        print(f"{directory.name}: {splits['train']['documents']:,} train / {splits['val']['documents']:,} val "
              f"documents, {splits['train']['tokens']:,} / {splits['val']['tokens']:,} tokens in {seconds:.1f} s "
              f"({total / seconds:,.0f} tokens/s); {read_stats.replaced_bytes:,} undecodable bytes replaced, "
              f"{read_stats.bad_lines:,} bad lines skipped -> {directory}")


@contextmanager
def _staged_directory(directory: Path) -> Iterator[Path]:
    """A temporary sibling directory to write a source into; it replaces `directory` only when the block ends
    without an error, so readers see the old or the new source, never a half-written one."""
    _check_replaceable(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    for debris in directory.parent.glob(f".{directory.name}.tmp-*"):  # left by a killed earlier run
        shutil.rmtree(debris, ignore_errors=True)
    temporary = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.tmp-"))
    temporary.chmod(0o777 & ~_umask())  # mkdtemp makes it 0700; a prepared source is as shared as any other output
    try:
        yield temporary
        _replace_directory(temporary, directory)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _source_meta(directory: Path, key: str, tokenizer: Tokenizer, splits: dict, **extra) -> dict:
    return {"format": FORMAT, "name": directory.name, "inputs_key": key, "tokenizer_fingerprint": tokenizer.fingerprint,
            "vocab_size": tokenizer.vocab_size, "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id, **extra,
            "splits": splits}


def _tokenize_into(directory: Path, documents: Iterable[str], tokenizer_path: Path, val_fraction: float,
                   workers: int | None, shard_tokens: int, total_bytes: int | None, progress: bool,
                   name: str) -> dict:
    writers = {split: _ShardWriter(directory, split, shard_tokens) for split in ("train", "val")}
    jobs = ((str(tokenizer_path), batch) for batch in document_chunks(documents, CHUNK_CHARS))
    if workers is None:  # a spawned worker takes ~3 s to start (importing torch via this module): not worth it for
        small = total_bytes is not None and total_bytes < PARALLEL_MIN_BYTES  # 10 MB that 1 process encodes in ~2 s
        workers = 1 if small else os.cpu_count() or 1
    results = ordered_map(_encode_documents, jobs, workers)
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc=f"tokenizing {name}", disable=not progress)
    try:
        first_document = 0
        for tokens, lengths, size in results:
            numbers = np.arange(first_document, first_document + len(lengths))
            is_val = held_out(numbers, val_fraction)
            token_is_val = np.repeat(is_val, lengths)
            writers["train"].write(tokens[~token_is_val], lengths[~is_val])
            writers["val"].write(tokens[token_is_val], lengths[is_val])
            first_document += len(lengths)
            bar.update(size)
        if total_bytes:  # CRLF -> LF and byte-order marks make the text a little shorter than the files
            bar.update(max(0, total_bytes - bar.n))
    finally:
        bar.close()
        results.close()  # stops the pool early on an error
    return {split: writer.close() for split, writer in writers.items()}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _check_replaceable(directory: Path) -> None:
    """Refuse to replace a directory that is not a prepared source: it may hold a user's own files."""
    if not directory.exists():
        return
    try:
        ours = json.loads((directory / "meta.json").read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        raise DataError(f"{directory} exists and is not a prepared source (no {FORMAT} meta.json); "
                        f"choose another --name or --out, or move it away")


def _replace_directory(new: Path, target: Path) -> None:
    """Swap a finished directory into place; readers see the old or the new source, never a half-written one."""
    if target.exists():
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
        os.replace(target, old / "source")
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, target)


# ---------------------------------------------------------------------------------------------------------------------
# Reading prepared sources


class TokenSplit:
    """One split ("train"/"val") of a prepared source: its token stream memory-mapped across shard files."""

    def __init__(self, data_root: Path, name: str, split: str, fingerprint: str | None = None, *,
                 dtype: np.dtype = TOKEN_DTYPE):
        directory = Path(data_root) / name
        try:
            self.meta = json.loads((directory / "meta.json").read_text())
        except FileNotFoundError:
            raise DataError(f"source {name!r} is not prepared: {directory / 'meta.json'} not found "
                            f"(run: python data.py prepare --name {name} ...)") from None
        except ValueError as error:
            raise DataError(f"{directory / 'meta.json'}: corrupt ({error})") from None
        if self.meta.get("format") != FORMAT:
            raise DataError(f"{directory}: format {self.meta.get('format')!r}, expected {FORMAT!r}; prepare it again")
        try:
            if fingerprint is not None and self.meta["tokenizer_fingerprint"] != fingerprint:
                raise DataError(f"{directory} was prepared with tokenizer {self.meta['tokenizer_fingerprint'][:12]}, "
                                f"not {fingerprint[:12]}; prepare it again with this tokenizer")
            info = self.meta["splits"][split]
            self.name, self.split, self.tokens, self.bos_id = name, split, info["tokens"], self.meta["bos_id"]
            shards, doc_starts = info["shards"], directory / info["doc_starts"]
            self.shard_paths = [directory / shard["file"] for shard in shards]
            shard_tokens = [int(shard["tokens"]) for shard in shards]
        except (KeyError, TypeError) as error:
            raise DataError(f"{directory / 'meta.json'}: missing or malformed field {error}; prepare it again") from None
        for path, tokens in zip(self.shard_paths, shard_tokens):
            if not path.is_file() or path.stat().st_size != tokens * dtype.itemsize:
                raise DataError(f"{path}: missing or truncated (expected {tokens:,} tokens); prepare again")
        self.shard_starts = np.cumsum([0] + shard_tokens)
        try:
            self.doc_starts = np.load(doc_starts, mmap_mode="r")
        except (OSError, ValueError, EOFError) as error:
            raise DataError(f"{doc_starts}: unreadable or truncated ({error}); prepare again") from None
        # Each memory map holds a file descriptor: keep the recently used ones, not all of a 3T-token corpus's 23K.
        self.shard = lru_cache(maxsize=64)(lambda index: np.memmap(self.shard_paths[index], dtype, mode="r"))

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) of the stream as int64, stitched across shard files."""
        pieces = []
        index = int(np.searchsorted(self.shard_starts, start, side="right")) - 1
        while start < stop:
            offset = start - self.shard_starts[index]
            piece = self.shard(index)[offset:offset + stop - start]
            pieces.append(piece)
            start += len(piece)
            index += 1
        return np.concatenate(pieces).astype(np.int64)


@dataclass(frozen=True)
class PackingStats:
    """How a split packs into windows of seq_len+1 tokens, one every seq_len tokens (neighbours share a token, so
    no next-token pair is lost at a border). Every window is full: there is no padding."""

    windows: int  # windows per epoch: (tokens - 1) // seq_len
    tokens_dropped: int  # tokens outside every window in an epoch (fewer than seq_len; the Loader moves them)
    documents: int
    documents_cut: int  # documents spread over two or more windows (or into the dropped tail)
    docs_per_window: float  # mean number of documents (or document pieces) in a window


def window_count(tokens: int, seq_len: int) -> int:
    """Windows of seq_len+1 tokens, one every seq_len tokens, that fit in a stream of `tokens` tokens."""
    return max(0, (tokens - 1) // seq_len)


def packing_stats(split: TokenSplit, seq_len: int) -> PackingStats:
    windows = window_count(split.tokens, seq_len)
    starts = np.asarray(split.doc_starts, dtype=np.int64)
    ends = np.append(starts[1:], split.tokens)
    cut = int(np.count_nonzero(starts // seq_len != (ends - 1) // seq_len))
    inner_starts = np.count_nonzero((starts < windows * seq_len) & (starts % seq_len != 0))
    return PackingStats(windows, split.tokens - 1 - windows * seq_len, len(starts), cut,
                        (windows + inner_starts) / windows if windows else 0.0)


# ---------------------------------------------------------------------------------------------------------------------
# Curriculum


@dataclass(frozen=True)
class Stage:
    """One curriculum stage: windows of seq_len tokens, a token budget, and source name -> weight (sums to 1)."""

    number: int  # 1, 2, 3
    seq_len: int
    tokens: int
    mixture: dict[str, float]


def curriculum(context_len: int, total_tokens: int, sources: list[str]) -> list[Stage]:
    """Fox-1's three stages: seq_len context_len/4, /2, /1 and STAGE_TOKEN_FRACTIONS of total_tokens (40/45/15%;
    the comment above that constant gives what the paper says and why this split differs from it).

    Mixture: the built-in sources use BUILTIN_MIXTURES. Otherwise sources are listed from broadest to highest
    quality and source i (0-based) gets weight proportional to (i + 1) ** (stage - 1): uniform in stage 1, a linear
    ramp in stage 2, a quadratic ramp in stage 3 (for two sources: 1:1, 1:2, 1:4). A single source gets 1.0.
    """
    if context_len % 4 or context_len < 4:
        raise DataError(f"context_len {context_len}: must be a positive multiple of 4")
    if not sources or len(set(sources)) != len(sources):
        raise DataError(f"sources {sources}: give one or more distinct source names")
    if set(sources) == set(BUILTIN):
        mixtures = [dict(mixture) for mixture in BUILTIN_MIXTURES]
    else:
        mixtures = []
        for stage in range(1, 4):
            raw = {name: float((i + 1) ** (stage - 1)) for i, name in enumerate(sources)}
            mixtures.append({name: weight / sum(raw.values()) for name, weight in raw.items()})
    budgets = [int(total_tokens * fraction) for fraction in STAGE_TOKEN_FRACTIONS[:-1]]
    budgets.append(total_tokens - sum(budgets))
    return [Stage(number, context_len // divisor, budget, mixture)
            for number, divisor, budget, mixture in zip((1, 2, 3), STAGE_CONTEXT_DIVISORS, budgets, mixtures)]


# ---------------------------------------------------------------------------------------------------------------------
# Packing and loading


@dataclass
class Batch:
    """One rank's share of a global batch: B windows of T = seq_len input tokens."""

    inputs: torch.Tensor  # (B, T) int64
    targets: torch.Tensor  # (B, T) int64; IGNORE_INDEX where the target starts another document (<eos> -> <bos>)
    position_ids: torch.Tensor  # (B, T) int64; 0 at the window start and at every document start
    doc_ids: torch.Tensor  # (B, T) int64; document number within the window: 0, 1, 2 ...

    def to(self, device: torch.device) -> Batch:
        """The batch on `device`; non_blocking lets a GPU copy overlap the work still queued before it."""
        return Batch(*(t.to(device, non_blocking=True) for t in (self.inputs, self.targets, self.position_ids,
                                                                  self.doc_ids)))


def pack(windows: np.ndarray, bos_id: int) -> Batch:
    """(B, seq_len+1) token windows -> a Batch for next-token prediction with per-document positions."""
    inputs, targets = windows[:, :-1], windows[:, 1:].copy()
    targets[targets == bos_id] = IGNORE_INDEX
    starts = inputs == bos_id
    doc_ids = np.cumsum(starts, axis=1) - starts[:, :1]
    steps = np.arange(inputs.shape[1])
    position_ids = steps - np.maximum.accumulate(np.where(starts, steps, 0), axis=1)
    return Batch(*(torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))
                   for a in (inputs, targets, position_ids, doc_ids)))


def _open_mixture(data_root: Path, stage: Stage, split: str, fingerprint: str | None
                  ) -> tuple[list[TokenSplit], np.ndarray]:
    names = sorted(name for name, weight in stage.mixture.items() if weight > 0)
    if not names:
        raise DataError(f"stage {stage.number}: the mixture has no source with a positive weight")
    sources = [TokenSplit(data_root, name, split, fingerprint) for name in names]
    if len({s.meta["tokenizer_fingerprint"] for s in sources}) > 1:
        raise DataError(f"sources {names} were prepared with different tokenizers; prepare them with one")
    for source in sources:
        if window_count(source.tokens, stage.seq_len) < 1:
            raise DataError(f"source {source.name!r}: its {split} split has {source.tokens:,} tokens, fewer than one "
                            f"window of {stage.seq_len + 1:,} (stage {stage.number})")
    weights = np.array([stage.mixture[name] for name in names], dtype=np.float64)
    return sources, weights / weights.sum()


class Loader:
    """Infinite, seeded stream of packed batches of one stage, one rank's share of every global batch.

    The global stream is a sequence of slots. Slot g's source is drawn by weight from an RNG keyed by (seed, stage,
    g // MIX_BLOCK); each source hands out its windows in a seeded per-epoch permutation and starts a new epoch when
    it runs out. Window w of an epoch starts at token offset + w * seq_len, where the epoch's seeded offset (0 up to
    the tokens left over by the grid) moves the grid, so the same tail is not left out of every epoch.
    A global batch is world_size * batch_size consecutive slots and rank r takes the r-th block of batch_size:
    ranks are disjoint and together see every window of a source exactly once per epoch, dropping none.
    State is (slots consumed, each source's epoch and position), so a resumed job -- even with another world size or
    batch size -- continues the same global stream; another stage, seed or data is refused.
    """

    def __init__(self, data_root: Path, stage: Stage, batch_size: int, *, rank: int = 0, world_size: int = 1,
                 seed: int = 0, split: str = "train", fingerprint: str | None = None):
        if not 0 <= rank < world_size or batch_size < 1:
            raise DataError(f"need 0 <= rank < world_size and batch_size >= 1 "
                            f"(got rank {rank}, world_size {world_size}, batch_size {batch_size})")
        self.stage, self.batch_size, self.rank, self.world_size, self.seed = stage, batch_size, rank, world_size, seed
        self.sources, self.weights = _open_mixture(data_root, stage, split, fingerprint)
        self.width = stage.seq_len + 1
        self.windows = [window_count(source.tokens, stage.seq_len) for source in self.sources]
        self.stats = {source.name: packing_stats(source, stage.seq_len) for source in self.sources}
        self._state = {"slot": 0, "epochs": [0] * len(self.sources), "positions": [0] * len(self.sources)}
        self._grids: dict[tuple[int, int], np.ndarray] = {}  # (source, epoch) -> window starts in shuffled order

    def state_dict(self) -> dict:
        """Position after the last batch handed out."""
        return {"stage": self.stage.number, "seq_len": self.stage.seq_len, "seed": self.seed,
                "sources": [s.name for s in self.sources], "windows": list(self.windows),
                "world_size": self.world_size, "batch_size": self.batch_size, **_copy_state(self._state)}

    def load_state_dict(self, state: dict) -> None:
        _check_same(state, self.state_dict(), ("stage", "seq_len", "seed", "sources", "windows"))
        self._state = _copy_state(state)

    def __iter__(self) -> Iterator[Batch]:
        """Batches read on demand. A batch costs ~1 ms to read and pack (memory-mapped shards), against seconds
        for a training step, so reading ahead in a thread bought nothing measurable (it was removed)."""
        while True:
            yield self._next_batch(self._state)

    def _next_batch(self, state: dict) -> Batch:
        """Advance state by one global batch; read and pack this rank's slots."""
        size = self.world_size * self.batch_size
        chosen = self._slot_sources(state["slot"], size)
        picks = [(s, self._next_window_start(state, s)) for s in chosen]
        state["slot"] += size
        mine = picks[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        windows = np.stack([self.sources[s].read(start, start + self.width) for s, start in mine])
        return pack(windows, self.sources[0].bos_id)

    def _slot_sources(self, first: int, count: int) -> np.ndarray:
        """Source index of each global slot in [first, first + count)."""
        blocks = range(first // MIX_BLOCK, (first + count - 1) // MIX_BLOCK + 1)
        rngs = (np.random.default_rng([self.seed, self.stage.number, block]) for block in blocks)
        draws = np.concatenate([rng.choice(len(self.weights), MIX_BLOCK, p=self.weights) for rng in rngs])
        offset = first - blocks[0] * MIX_BLOCK
        return draws[offset:offset + count]

    def _next_window_start(self, state: dict, source: int) -> int:
        """Token offset of the source's next window in this epoch's shuffled, shifted grid; advances state."""
        epoch, position = state["epochs"][source], state["positions"][source]
        grid = self._grids.get((source, epoch))
        if grid is None:
            name_key = zlib.crc32(self.sources[source].name.encode())
            rng = np.random.default_rng([self.seed, name_key, self.stage.seq_len, epoch])
            order = rng.permutation(self.windows[source])
            spare = self.sources[source].tokens - 1 - self.windows[source] * self.stage.seq_len
            grid = int(rng.integers(0, spare + 1)) + order * self.stage.seq_len
            others = {k: v for k, v in self._grids.items() if k[0] != source}  # keep one epoch per source
            self._grids = {**others, (source, epoch): grid}
        if position + 1 == self.windows[source]:
            state["epochs"][source], state["positions"][source] = epoch + 1, 0
        else:
            state["positions"][source] = position + 1
        return int(grid[position])


def _check_same(state: dict, mine: dict, fields: tuple[str, ...]) -> None:
    """Refuse a loader state saved for other data, order or window length."""
    for field in fields:
        if state.get(field) != mine[field]:
            raise DataError(f"loader state is for {field} {state.get(field)!r} but this loader has "
                            f"{mine[field]!r}; start this stage without the old loader state")


def _copy_state(state: dict) -> dict:
    return {"slot": int(state["slot"]), "epochs": [int(e) for e in state["epochs"]],
            "positions": [int(p) for p in state["positions"]]}


def eval_batches(data_root: Path, stage: Stage, batch_size: int, *, rank: int = 0, world_size: int = 1,
                 max_batches: int, fingerprint: str | None = None) -> list[Batch]:
    """Fixed validation batches for a stage: up to max_batches per rank from the val splits of its sources.

    Each source contributes windows in proportion to its weight (as many as its val split holds at most), spread
    evenly over the split; ranks take disjoint blocks of every global batch, and a partial last batch is dropped.
    """
    sources, weights = _open_mixture(data_root, stage, "val", fingerprint)
    seq_len, size = stage.seq_len, world_size * batch_size
    picks = []
    for s, (source, weight) in enumerate(zip(sources, weights)):
        available = window_count(source.tokens, seq_len)
        count = min(available, round(weight * max_batches * size))
        picks += [(s, int(w)) for w in np.unique(np.linspace(0, available - 1, count).round())]
    batches = []
    for first in range(0, len(picks) - size + 1, size):
        mine = picks[first + rank * batch_size:first + (rank + 1) * batch_size]
        windows = np.stack([sources[s].read(w * seq_len, w * seq_len + seq_len + 1) for s, w in mine])
        batches.append(pack(windows, sources[0].bos_id))
    if not batches:
        raise DataError(f"stage {stage.number}: the val splits hold {len(picks)} windows of {seq_len + 1} tokens, fewer "
                        f"than one global batch of {size}; prepare with a larger val fraction")
    return batches[:max_batches]


# ---------------------------------------------------------------------------------------------------------------------
# Chat data for the instruction-tuning stage: conversations -> tokens + loss mask -> packed, never split


MASK_DTYPE = np.dtype("u1")  # the loss mask: one byte per token, 1 on the assistant's reply tokens
BUILTIN_CHAT = "stdlib-chat"
BUILTIN_CHAT_HELD_OUT = 10  # one module in 10 (by a hash of its name) is held out: 10% of the conversations
BUILTIN_CHAT_MAX_LINES = 25  # longer functions make replies of 300+ tokens (8K vocab): too long to teach a stop
BUILTIN_CHAT_MAX_DOC_CHARS = 800
# The prompt quotes the signature as the reply begins it ("def name(args)"), so BPE gives the name the same
# tokens in both and the reply can copy them: after a backtick, `name(` tokenizes as "get", "name" where the
# reply's "def getname(" has " get", "name", a translation between ids a 6.5M-parameter model never learned
# (0% of held-out replies started with the asked-for name; 480K tokens of SFT did not change it).
WRITE_FUNCTION_PROMPT = "Write a Python function `def {name}({args})` that: {summary}"
WRITE_FUNCTION = re.compile(r"Write a Python function `def (\w+)\(")


@dataclass
class ChatStats:
    """Counters of a chat preparation."""

    conversations: int = 0
    malformed: int = 0  # skipped: bad JSON, no assistant turn, unknown role, non-string content, template refusal
    first_malformed: str | None = None  # "file:line: what is wrong"


def builtin_conversations() -> dict[str, list[list[dict]]]:
    """Instruction conversations made from the standard library, {"train": [...], "val": [...]}: for every public
    top-level function or class with a docstring, "Write a Python function `def name(args)` that: <first paragraph of
    its docstring>" answered by the function's source, and "What does `module.name` do?" answered by the docstring.
    All conversations of a module go to one split, so the held-out ones ask about code the model never saw."""
    root = Path(sysconfig.get_paths()["stdlib"])
    splits: dict[str, list[list[dict]]] = {"train": [], "val": []}
    for path in builtin_files():
        module = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        split = "val" if zlib.crc32(module.encode()) % BUILTIN_CHAT_HELD_OUT == 0 else "train"
        splits[split] += _module_conversations(path.read_text(encoding="utf-8", errors="replace"), module)
    return splits


def _module_conversations(source: str, module: str) -> list[list[dict]]:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    conversations = []
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) or node.name.startswith("_"):
            continue
        doc = ast.get_docstring(node)
        if not doc:
            continue
        code = ast.get_source_segment(source, node) if isinstance(node, ast.FunctionDef) else None
        if code and code.count("\n") < BUILTIN_CHAT_MAX_LINES:
            summary = " ".join(doc.split("\n\n")[0].split())
            prompt = WRITE_FUNCTION_PROMPT.format(name=node.name, args=ast.unparse(node.args), summary=summary)
            conversations.append(_exchange(prompt, code))
        if len(doc) <= BUILTIN_CHAT_MAX_DOC_CHARS:
            conversations.append(_exchange(f"What does `{module}.{node.name}` do?", doc))
    return conversations


def _exchange(question: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def prepare_builtin_chat(tokenizer_path: Path, data_root: Path, *, progress: bool = True) -> str:
    """Prepare BUILTIN_CHAT under data_root with our chat template (nothing to do when done); return its name."""
    tokenizer = cached_tokenizer(tokenizer_path)
    key = _inputs_key(builtin_files(), tokenizer, kind="chat", template=DEFAULT_CHAT_TEMPLATE,
                      held_out=BUILTIN_CHAT_HELD_OUT, max_lines=BUILTIN_CHAT_MAX_LINES,
                      prompt=WRITE_FUNCTION_PROMPT)
    directory = Path(data_root) / BUILTIN_CHAT
    if not _is_prepared(directory, key):
        splits = builtin_conversations()
        records = ((f"{BUILTIN_CHAT} {split} #{i}", {"messages": messages}, split == "val")
                   for split, conversations in splits.items() for i, messages in enumerate(conversations))
        _build_chat_source(records, tokenizer, DEFAULT_CHAT_TEMPLATE, directory, key=key, strict=True,
                           total=sum(map(len, splits.values())), progress=progress)
    return BUILTIN_CHAT


def prepare_chat(inputs: list[str], tokenizer_path: Path, data_root: Path, name: str, *,
                 template_path: Path | None = None, val_fraction: float = 0.02, strict: bool = False,
                 progress: bool = True) -> Path:
    """Chat JSONL files (one {"messages": [{"role", "content"}, ...]} or {"prompt", "response"} per line, .gz
    allowed) -> data_root/name: the rendered conversations as a token source plus a parallel uint8 loss-mask split
    ("train_mask", "val_mask"). Malformed lines are skipped and counted (the first one is named), or refused when
    strict. template_path: a model folder holding tokenizer_config.json, or a Jinja file (default: the tokenizer's
    folder's template if it has one, else DEFAULT_CHAT_TEMPLATE)."""
    _check_source_settings(name, val_fraction)
    paths = expand_inputs(inputs)
    tokenizer = cached_tokenizer(tokenizer_path)
    template = resolve_chat_template(template_path, tokenizer_path)
    key = _inputs_key(paths, tokenizer, kind="chat", template=template, val_fraction=val_fraction, strict=strict)
    directory = Path(data_root) / name
    if _is_prepared(directory, key):
        if progress:
            print(f"{name}: already prepared from the same inputs with this tokenizer and template, nothing to do")
        return directory
    records = ((where, line, bool(held_out(np.array(n), val_fraction)))
               for n, (where, line) in enumerate(_jsonl_lines(paths)))
    _build_chat_source(records, tokenizer, template, directory, key=key, strict=strict, total=None,
                       progress=progress)
    return directory


def resolve_chat_template(template_path: Path | None, tokenizer_path: Path) -> str:
    """The template to render with: template_path (a folder's tokenizer_config.json or a Jinja file), else the
    tokenizer folder's own, else ours."""
    if template_path is None:
        folder = Path(tokenizer_path)
        return (load_chat_template(folder) if folder.is_dir() else None) or DEFAULT_CHAT_TEMPLATE
    if Path(template_path).is_dir():
        template = load_chat_template(template_path)
        if template is None:
            raise DataError(f"{template_path}: no tokenizer_config.json with a chat_template")
        return template
    return read_text(Path(template_path))


def _jsonl_lines(paths: list[Path]) -> Iterator[tuple[str, str]]:
    """("file:line", text) of every non-blank line; bytes that are not UTF-8 become U+FFFD."""
    for path in paths:
        try:
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rt", encoding="utf-8-sig", errors="replace") as file:
                for number, line in enumerate(file, 1):
                    if line.strip():
                        yield f"{path}:{number}", line
        except (OSError, EOFError, zlib.error) as error:
            raise DataError(f"{path}: cannot read ({error})") from None


def _encode_records(records: Iterable[tuple[str, object, bool]], tokenizer: Tokenizer, template: str,
                    strict: bool, stats: ChatStats) -> Iterator[tuple[list[int], list[int], bool]]:
    """(where, JSON line or parsed record, is_val) -> (ids, mask, is_val) of each well-formed conversation."""
    for where, record, is_val in records:
        try:
            record = json.loads(record) if isinstance(record, str) else record
            if isinstance(record, dict) and "messages" in record:
                messages = record["messages"]
            elif isinstance(record, dict) and {"prompt", "response"} <= record.keys():
                messages = _exchange(record["prompt"], record["response"])
            else:
                raise ValueError('expected {"messages": [...]} or {"prompt": ..., "response": ...}')
            check_conversation(messages)
            ids, mask = encode_chat(tokenizer, messages, template)
        except ValueError as error:  # bad JSON, a malformed conversation, or one the template refuses
            if strict:
                raise DataError(f"{where}: {error}") from None
            stats.malformed += 1
            stats.first_malformed = stats.first_malformed or f"{where}: {error}"
            continue
        stats.conversations += 1
        yield ids, mask, is_val


def _build_chat_source(records: Iterable[tuple[str, object, bool]], tokenizer: Tokenizer, template: str,
                       directory: Path, *, key: str, strict: bool, total: int | None, progress: bool) -> None:
    stats = ChatStats()
    with _staged_directory(directory) as temporary:
        writers = {split: _ShardWriter(temporary, split, SHARD_TOKENS)
                   for split in ("train", "val", "train_mask", "val_mask")}
        with tqdm(total=total, unit="conversation", desc=f"tokenizing {directory.name}", disable=not progress) as bar:
            for ids, mask, is_val in _encode_records(records, tokenizer, template, strict, stats):
                split, length = ("val" if is_val else "train"), np.array([len(ids)])
                writers[split].write(np.array(ids, dtype=TOKEN_DTYPE), length)
                writers[f"{split}_mask"].write(np.array(mask, dtype=MASK_DTYPE), length)
                bar.update(1)
        splits = {split: writer.close() for split, writer in writers.items()}
        if stats.conversations == 0:
            raise DataError(f"{directory.name}: no usable conversations ({stats.malformed:,} malformed; first: "
                            f"{stats.first_malformed})")
        meta = _source_meta(directory, key, tokenizer, splits, kind="chat", chat_template=template,
                            conversations=stats.conversations, malformed=stats.malformed,
                            first_malformed=stats.first_malformed)
        (temporary / "meta.json").write_text(json.dumps(meta, indent=1))
    if progress:
        print(f"{directory.name}: {splits['train']['documents']:,} train / {splits['val']['documents']:,} val "
              f"conversations, {splits['train']['tokens']:,} / {splits['val']['tokens']:,} tokens; "
              f"{stats.malformed:,} malformed skipped" + (f" (first: {stats.first_malformed})" if stats.malformed
                                                          else "") + f" -> {directory}")


def source_kinds(data_root: Path) -> dict[str, str]:
    """name -> "chat" (conversations with a loss mask) or "text" (documents) of each source under data_root."""
    kinds = {}
    for meta in sorted(Path(data_root).glob("*/meta.json")):
        try:
            kinds[meta.parent.name] = json.loads(meta.read_text()).get("kind", "text")
        except (OSError, ValueError, AttributeError):  # damaged: TokenSplit says so when the stage opens it
            kinds[meta.parent.name] = "text"
    return kinds


class ChatSplit:
    """One split of a chat source: tokens (a TokenSplit), the parallel loss mask, and conversation boundaries."""

    def __init__(self, data_root: Path, name: str, split: str, fingerprint: str | None = None):
        self.tokens = TokenSplit(data_root, name, split, fingerprint)
        if self.tokens.meta.get("kind") != "chat":
            raise DataError(f"source {name!r} holds plain documents, not conversations "
                            f"(prepare chat data with `python data.py prepare-chat`)")
        self.mask = TokenSplit(data_root, name, f"{split}_mask", dtype=MASK_DTYPE)
        self.name, self.bos_id, self.template = name, self.tokens.bos_id, self.tokens.meta["chat_template"]
        self.bounds = np.append(np.asarray(self.tokens.doc_starts, dtype=np.int64), self.tokens.tokens)

    def fitted_lengths(self, width: int) -> tuple[np.ndarray, int]:
        """Each conversation's length in a window of `width` tokens, and how many had to be cut: one longer than
        the window keeps its turns up to the last reply that ends inside it (0 tokens if even the first does not)."""
        lengths = np.diff(self.bounds)
        cut = 0
        for index in np.flatnonzero(lengths > width):
            mask = self.mask.read(self.bounds[index], self.bounds[index] + width + 1)
            reply_ends = np.flatnonzero((mask[:-1] == 1) & (mask[1:] == 0))  # last token of a reply
            lengths[index] = reply_ends[-1] + 1 if len(reply_ends) else 0
            cut += 1
        return lengths, cut


def pack_chat(windows: np.ndarray, masks: np.ndarray, bos_id: int) -> Batch:
    """`pack` for conversations: the same positions and document masking, and a target counts only where the
    mask marks a reply token (padding and every prompt token are IGNORE_INDEX)."""
    batch = pack(windows, bos_id)
    batch.targets[torch.from_numpy(masks[:, 1:] == 0)] = IGNORE_INDEX
    return batch


class ChatLoader:
    """Seeded, resumable stream of packed SFT batches, one rank's share of every global batch.

    Each epoch takes the conversations of all sources in a seeded order (in order when shuffle is off) and packs
    them first-come into windows of seq_len+1 tokens, starting a new window, padded with <pad>, when the next one
    does not fit: a conversation is never split (one longer than a window is cut at a turn boundary,
    `ChatSplit.fitted_lengths`). A global batch is world_size * batch_size consecutive windows, rank r takes the
    r-th block. State is (epoch, windows consumed), so a resumed run continues the same stream."""

    def __init__(self, data_root: Path, sources: list[str], seq_len: int, batch_size: int, *, rank: int = 0,
                 world_size: int = 1, seed: int = 0, split: str = "train", shuffle: bool = True,
                 fingerprint: str | None = None, pad_id: int = 0):
        self.splits = [ChatSplit(data_root, name, split, fingerprint) for name in sources]
        if len({s.template for s in self.splits}) > 1:
            raise DataError(f"chat sources {sources} were rendered with different chat templates; prepare them "
                            f"with one")
        self.seq_len, self.width, self.batch_size, self.seed = seq_len, seq_len + 1, batch_size, seed
        self.rank, self.world_size, self.shuffle, self.pad_id = rank, world_size, shuffle, pad_id
        self.template = self.splits[0].template
        fitted = [s.fitted_lengths(self.width) for s in self.splits]
        self.source_of = np.concatenate([np.full(len(f[0]), i) for i, f in enumerate(fitted)])
        self.start_of = np.concatenate([s.bounds[:-1] for s in self.splits])
        self.length_of = np.concatenate([f[0] for f in fitted])
        if not self.length_of.any():
            raise DataError(f"chat sources {sources}: no {split} conversation fits in a window of {self.width} tokens")
        self._cached_epoch: tuple[int, list[np.ndarray]] | None = None
        windows = len(self._epoch_windows(0))
        total = int(sum(np.diff(s.bounds).sum() for s in self.splits))
        self.stats = {"+".join(sources): PackingStats(windows, total - int(self.length_of.sum()),
                                                      len(self.length_of), sum(f[1] for f in fitted),
                                                      int(np.count_nonzero(self.length_of)) / windows)}
        self._state = {"epoch": 0, "window": 0}

    def state_dict(self) -> dict:
        return {"kind": "chat", "seq_len": self.seq_len, "seed": self.seed, "sources": [s.name for s in self.splits],
                "conversations": len(self.length_of), "epoch": self._state["epoch"], "window": self._state["window"]}

    def load_state_dict(self, state: dict) -> None:
        _check_same(state, self.state_dict(), ("kind", "seq_len", "seed", "sources", "conversations"))
        self._state = {"epoch": int(state["epoch"]), "window": int(state["window"])}

    def __iter__(self) -> Iterator[Batch]:
        while True:
            picks = [self._next_window() for _ in range(self.world_size * self.batch_size)]
            mine = picks[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
            tokens, masks = zip(*(self._read_window(conversations) for conversations in mine))
            yield pack_chat(np.stack(tokens), np.stack(masks), self.splits[0].bos_id)

    def _epoch_windows(self, epoch: int) -> list[np.ndarray]:
        """The conversation indices of every window of an epoch, first-fit in the epoch's order (kept for the
        current epoch: a pass over millions of conversations takes seconds)."""
        if self._cached_epoch is not None and self._cached_epoch[0] == epoch:
            return self._cached_epoch[1]
        order = (np.random.default_rng([self.seed, epoch]).permutation(len(self.length_of)) if self.shuffle
                 else np.arange(len(self.length_of)))
        order = order[self.length_of[order] > 0]
        windows, current, used = [], [], 0
        for index, length in zip(order.tolist(), self.length_of[order].tolist()):
            if used + length > self.width:
                windows.append(np.array(current))
                current, used = [], 0
            current.append(index)
            used += length
        self._cached_epoch = (epoch, windows + [np.array(current)])
        return self._cached_epoch[1]

    def _next_window(self) -> np.ndarray:
        windows = self._epoch_windows(self._state["epoch"])
        window = windows[self._state["window"]]
        self._state["window"] += 1
        if self._state["window"] == len(windows):
            self._state = {"epoch": self._state["epoch"] + 1, "window": 0}
        return window

    def _read_window(self, conversations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tokens, masks = np.full(self.width, self.pad_id, np.int64), np.zeros(self.width, np.int64)
        at = 0
        for index in conversations:
            split, start, length = self.splits[self.source_of[index]], self.start_of[index], self.length_of[index]
            tokens[at:at + length] = split.tokens.read(start, start + length)
            masks[at:at + length] = split.mask.read(start, start + length)
            at += length
        return tokens, masks


def chat_eval_batches(data_root: Path, sources: list[str], seq_len: int, batch_size: int, *, rank: int = 0,
                      world_size: int = 1, max_batches: int, fingerprint: str | None = None) -> list[Batch]:
    """Fixed validation batches for SFT: the val conversations in order, up to max_batches per rank, without
    repeating any (a partial last global batch is dropped)."""
    loader = ChatLoader(data_root, sources, seq_len, batch_size, rank=rank, world_size=world_size, split="val",
                        shuffle=False, fingerprint=fingerprint)
    count = min(max_batches, loader.stats[next(iter(loader.stats))].windows // (world_size * batch_size))
    if count == 0:
        raise DataError(f"chat sources {sources}: the val splits pack into fewer windows of {seq_len + 1} tokens "
                        f"than one global batch of {world_size * batch_size}; prepare with a larger val fraction")
    return list(itertools.islice(loader, count))


# ---------------------------------------------------------------------------------------------------------------------
# Command line


def print_stats(data_root: Path, context_len: int, total_tokens: int | None, sources: list[str] | None) -> None:
    data_root = Path(data_root)
    if sources is None:
        sources = sorted(p.parent.name for p in data_root.glob("*/meta.json"))
        if not sources:
            raise DataError(f"{data_root}: no prepared sources (no */meta.json)")
    splits = {name: {split: TokenSplit(data_root, name, split) for split in ("train", "val")} for name in sources}
    print(f"{'source':<16}{'train docs':>12}{'train tokens':>15}{'val docs':>10}{'val tokens':>13}")
    for name, pair in splits.items():
        print(f"{name:<16}{len(pair['train'].doc_starts):>12,}{pair['train'].tokens:>15,}"
              f"{len(pair['val'].doc_starts):>10,}{pair['val'].tokens:>13,}")
    total = total_tokens or sum(pair["train"].tokens for pair in splits.values())
    for stage in curriculum(context_len, total, sources):
        print(f"\nstage {stage.number}: seq_len {stage.seq_len:,}, {stage.tokens:,} tokens")
        print(f"  {'source':<16}{'weight':>7}{'windows':>10}{'dropped':>9}{'docs cut':>10}{'docs/window':>12}"
              f"{'epochs':>8}")
        for name, weight in stage.mixture.items():
            p = packing_stats(splits[name]["train"], stage.seq_len)
            epochs = weight * stage.tokens / max(p.windows * stage.seq_len, 1)
            print(f"  {name:<16}{weight:>7.2f}{p.windows:>10,}{p.tokens_dropped:>9,}"
                  f"{p.documents_cut / max(p.documents, 1):>9.1%} {p.docs_per_window:>11.2f}{epochs:>8.2f}")


def _add_source_arguments(p: argparse.ArgumentParser, input_help: str, name: str, val_fraction: float) -> None:
    """The arguments `prepare` and `prepare-chat` share: inputs, tokenizer, where the source goes, its split."""
    p.add_argument("--input", nargs="+", required=True, help=input_help)
    p.add_argument("--tokenizer", type=Path, required=True, help="tokenizer file (python tokenizer.py train ...)")
    p.add_argument("--out", type=Path, required=True, help="data root; the source goes to OUT/NAME")
    p.add_argument("--name", default=name, help=f"source name, as the curriculum mixture names it (default: {name})")
    p.add_argument("--val-fraction", type=float, default=val_fraction,
                   help=f"share of documents (conversations) held out (default: {val_fraction})")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    workers_help = "tokenizer processes (default: 1 below 32 MB of input, else all CPU cores)"
    p = commands.add_parser("prepare", help="tokenize text/JSONL files into token shards")
    _add_source_arguments(p, "files or globs: .txt (documents separated by 2+ blank lines), .jsonl ('text' field), "
                          ".gz of either", name="corpus", val_fraction=0.01)
    p.add_argument("--workers", type=int, default=None, help=workers_help)
    p.add_argument("--skip-bad-lines", action="store_true", help="skip and count malformed JSONL lines")
    p.add_argument("--allow-binary", action="store_true",
                   help="accept files with more than a few percent of undecodable bytes (replaced by U+FFFD)")
    b = commands.add_parser("prepare-builtin", help="prepare the built-in standard-library sources " + str(BUILTIN))
    b.add_argument("--tokenizer", type=Path, required=True, help="tokenizer file")
    b.add_argument("--out", type=Path, required=True, help="data root")
    b.add_argument("--workers", type=int, default=None, help=workers_help)
    c = commands.add_parser("prepare-chat", help="render chat JSONL through a chat template into tokens + loss mask")
    _add_source_arguments(c, 'files or globs: .jsonl (.gz) with {"messages": [{"role": "system"|"user"|"assistant", '
                          '"content": ...}]} or {"prompt": ..., "response": ...} per line', name="chat", val_fraction=0.02)
    c.add_argument("--chat-template", type=Path, help="a model folder (its tokenizer_config.json) or a Jinja file "
                   "(default: the tokenizer folder's template, else fox1's Gemma-style turns)")
    c.add_argument("--strict", action="store_true", help="stop at the first malformed line instead of skipping it")
    s = commands.add_parser("stats", help="token/document counts and per-stage packing statistics")
    s.add_argument("--data", type=Path, required=True, help="data root")
    s.add_argument("--context-len", type=int, default=1024, help="model context; stages use /4, /2, /1 of it")
    s.add_argument("--total-tokens", type=int, default=None, help="curriculum budget (default: one pass of the data)")
    s.add_argument("--sources", nargs="+", default=None, help="sources in quality order (default: all prepared)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "prepare":
            prepare(args.input, args.tokenizer, args.out, args.name, workers=args.workers,
                    val_fraction=args.val_fraction, skip_bad_lines=args.skip_bad_lines,
                    allow_binary=args.allow_binary)
        elif args.command == "prepare-chat":
            prepare_chat(args.input, args.tokenizer, args.out, args.name, template_path=args.chat_template,
                         val_fraction=args.val_fraction, strict=args.strict)
        elif args.command == "prepare-builtin":
            names = prepare_builtin(args.tokenizer, args.out, workers=args.workers)
            print(f"built-in sources ready under {args.out}: {', '.join(names)}")
        else:
            print_stats(args.data, args.context_len, args.total_tokens, args.sources)
    except (InputError, DataError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
