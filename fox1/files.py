"""Reading what users give fox1 and writing what it makes: input files to documents, atomic writes, one-line errors.

Every command reads its inputs through here, so a missing file, a corrupt gzip, a malformed JSONL line or a binary
file gets the same one-line `InputError` naming the file (and line) everywhere; every file fox1 writes goes through
`write_atomic`, so a reader never sees half a file. `ordered_map` runs a function over a stream of jobs in worker
processes, results in order (tokenizer training and data preparation use it).
"""
from __future__ import annotations

import contextlib
import glob
import gzip
import argparse
import json
import math
import multiprocessing
import os
import re
import socket
import sys
import zlib
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

class InputError(ValueError):
    """Bad user input (missing/empty/corrupt file, malformed JSONL ...); message is one line naming file[:line]."""


def read_text(path: Path) -> str:
    """A whole UTF-8 text file, or an InputError that names it in one line."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text (byte {e.start} is not valid UTF-8)") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write a file whole or not at all: a temporary file next to it, then a rename (atomic on POSIX and Windows).
    A failed write removes the temporary file and raises OSError; a reader never sees half a file. Creates the
    parent directories; the file gets the usual permissions (umask), unlike tempfile's private 0600."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "wb") as file:
            file.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(temporary, path)
    except BaseException:  # also KeyboardInterrupt: never leave the temporary file behind
        with contextlib.suppress(OSError):  # e.g. it was never created because the parent is a file
            temporary.unlink()
        raise




def write_json_atomic(path: str | Path, obj: dict) -> None:
    write_atomic(path, json.dumps(obj, indent=2) + "\n")


@dataclass(frozen=True)
class Number:
    """What a numeric command-line flag accepts: a finite number from `low` (excluded when `above`) to `high`."""

    low: float | None = None
    high: float | None = None
    above: bool = False

    def problem(self, value: float) -> str | None:
        if not math.isfinite(value):
            return "must be a finite number"
        if self.low is not None and (value <= self.low if self.above else value < self.low):
            return f"must be {'above' if self.above else 'at least'} {self.low:g}"
        if self.high is not None and value > self.high:
            return f"must be at most {self.high:g}"
        return None


def check_numbers(parser: argparse.ArgumentParser, args: argparse.Namespace, rules: dict[str, Number]) -> None:
    """Refuse, before any work, a numeric flag outside its rule: argparse's usage line and one error line."""
    for name, rule in rules.items():
        value = getattr(args, name, None)
        problem = None if value is None else rule.problem(value)
        if problem:
            parser.error(f"--{name.replace('_', '-')} {value}: {problem}")


class LockedError(InputError):
    """Another live process holds the lock on what this one wants to write."""


@contextmanager
def exclusive(lock_path: Path, what: str) -> Iterator[None]:
    """Hold `lock_path` (created exclusively, holding "pid host") while the block runs, so two runs never write
    the same output. A lock left by a dead process on this host is taken over with a note; one held by a live
    process, or by another host, refuses in one line (LockedError) naming it."""
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    mine = f"{os.getpid()} {socket.gethostname()}\n"
    while True:
        try:
            descriptor = os.open(lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            _take_over_if_stale(lock_path, what)
    with os.fdopen(descriptor, "w") as file:
        file.write(mine)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            if lock_path.read_text() == mine:
                lock_path.unlink()


def _take_over_if_stale(lock_path: Path, what: str) -> None:
    """Remove a lock whose process is gone (same host); else raise LockedError."""
    try:
        pid_text, host = lock_path.read_text().split()
        pid = int(pid_text)
    except FileNotFoundError:
        return  # released meanwhile: try again
    except (OSError, ValueError):
        pid, host = None, "?"  # damaged (a kill mid-write): judged stale below
    if pid is not None and (host != socket.gethostname() or _alive(pid)):
        raise LockedError(f"{what} is in use by process {pid} on {host} (lock {lock_path}); wait for it to "
                          f"finish, or remove the lock if that process is gone")
    print(f"note: taking over the lock {lock_path} left by a process that no longer runs", file=sys.stderr)
    with contextlib.suppress(FileNotFoundError):
        lock_path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


# ----------------------------------------------------------------------------------------------------------------
# Parallel map over a stream of jobs
# ----------------------------------------------------------------------------------------------------------------

# Documents are sent to the counting workers in chunks of about this many characters: big enough that the pickling
# and merging overhead is small, small enough to keep 2 workers evenly busy on a 20 MB corpus.
CHUNK_CHARS = 1 << 20


def document_chunks(documents: Iterable[str], chunk_chars: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    size = 0
    for document in documents:
        chunk.append(document)
        size += len(document)
        if size >= chunk_chars:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def ordered_map(function: Callable, jobs: Iterable, workers: int) -> Iterator:
    """function over jobs, results in order, in a process pool when workers > 1. At most 2 jobs per worker are in
    flight: Pool.imap would read the whole (possibly 1 TB) input ahead into memory. Used by data.py too."""
    if workers <= 1:
        yield from map(function, jobs)
        return
    # spawn, not fork: the parent may hold threads (tqdm's monitor, a data loader) that fork would copy mid-lock.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        in_flight: deque = deque()
        for job in jobs:
            in_flight.append(pool.apply_async(function, (job,)))
            if len(in_flight) >= 2 * workers:
                yield in_flight.popleft().get()
        while in_flight:
            yield in_flight.popleft().get()


# ----------------------------------------------------------------------------------------------------------------
# Reading documents: plain text / JSONL files, optionally gzipped
# ----------------------------------------------------------------------------------------------------------------

# A document longer than this (characters) with no blank-line separator is yielded in pieces cut at line boundaries,
# so one 1 GB file without blank lines never sits in memory at once. Lines longer than this are read in pieces too
# (not in JSONL, where a line is one JSON document that must be read whole: a book stored as JSONL is one long line).
MAX_DOCUMENT_CHARS = 1 << 20
# A file where more than this share of the bytes is not UTF-8 is binary (/bin/ls: 29%) or in another encoding
# (Latin-1 French: ~3%, each accent lost): refused unless allow_binary. Checked from this many characters on.
MAX_REPLACED_FRACTION = 0.02
MIN_CHARS_TO_JUDGE = 1 << 16
# After decoding with errors="surrogateescape", every undecodable byte is a lone surrogate U+DC80..U+DCFF; a JSON
# "\ud83d" escape can also yield a lone surrogate. Neither can be encoded as UTF-8, so both become U+FFFD.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")



@dataclass
class ReadStats:
    """Counters filled while reading documents."""

    documents: int = 0
    bad_lines: int = 0  # malformed JSONL lines skipped (only when skip_bad_lines=True)
    replaced_bytes: int = 0  # undecodable bytes (and lone JSON surrogate escapes), each replaced by one U+FFFD


def expand_inputs(patterns: Iterable[str | Path]) -> list[Path]:
    """Files and globs (recursive ** allowed) -> sorted existing files, each once however many names reach it
    (a link, ./a and a, a glob and a name); anything matching nothing is an error."""
    found: dict[Path, Path] = {}  # the file itself -> the first name it was given by
    for pattern in map(str, patterns):
        if glob.has_magic(pattern):
            matches = [Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file()]
            if not matches:
                raise InputError(f"{pattern}: no files match this pattern")
        elif Path(pattern).is_dir():
            raise InputError(f"{pattern}: is a directory (give files or a glob such as '{pattern}/**/*.txt')")
        elif Path(pattern).is_file():
            matches = [Path(pattern)]
        else:
            raise InputError(f"{pattern}: no such file")
        for match in matches:
            found.setdefault(match.resolve(), match)
    if not found:
        raise InputError("no input files given")
    return sorted(found.values())


def iter_documents(
    paths: Iterable[Path], *, skip_bad_lines: bool = False, stats: ReadStats | None = None, allow_binary: bool = False
) -> Iterator[str]:
    """Stream documents from files, never holding a whole file in memory.

    *.jsonl / *.jsonl.gz: one document per line, its "text" string. A malformed line raises InputError naming
    file:line, or is counted in stats.bad_lines and skipped when skip_bad_lines. Blank lines are ignored.
    Anything else (optionally *.gz): plain text, documents separated by 2+ blank lines (whitespace-only lines count
    as blank); CRLF/CR become LF; documents over MAX_DOCUMENT_CHARS are cut at line boundaries.
    Undecodable UTF-8 bytes become U+FFFD (counted per byte). Whitespace-only documents are skipped. A file with
    more than MAX_REPLACED_FRACTION undecodable bytes raises InputError naming it, unless allow_binary.
    """
    stats = stats if stats is not None else ReadStats()
    for path in map(Path, paths):
        is_jsonl = path.name.endswith((".jsonl", ".jsonl.gz"))
        try:
            opener = gzip.open if path.suffix == ".gz" else open
            # newline=None: universal newlines (CRLF -> LF); utf-8-sig drops a leading byte-order mark.
            with opener(path, "rt", encoding="utf-8-sig", errors="surrogateescape", newline=None) as file:
                lines = _CountedLines(file, limit=-1 if is_jsonl else MAX_DOCUMENT_CHARS)
                replaced_before = stats.replaced_bytes
                parse = _jsonl_documents if is_jsonl else _text_documents
                for document in parse(lines, path, skip_bad_lines, stats):
                    if not allow_binary and lines.chars >= MIN_CHARS_TO_JUDGE:
                        _check_mostly_text(path, stats.replaced_bytes - replaced_before, lines.chars)
                    if not document.isspace():
                        stats.documents += 1
                        yield document
                if not allow_binary:
                    _check_mostly_text(path, stats.replaced_bytes - replaced_before, lines.chars)
        except (OSError, EOFError, zlib.error) as error:  # missing, unreadable, truncated or corrupt gzip
            raise InputError(f"{path}: cannot read ({error})") from None


class _CountedLines:
    """The lines of an open text file (each at most `limit` characters; -1: whole lines), counting characters."""

    def __init__(self, file, limit: int) -> None:
        self.file, self.limit, self.chars = file, limit, 0

    def __iter__(self) -> Iterator[str]:
        while line := self.file.readline(self.limit):
            self.chars += len(line)
            yield line


def _check_mostly_text(path: Path, replaced: int, chars: int) -> None:
    if replaced > MAX_REPLACED_FRACTION * chars:
        raise InputError(
            f"{path}: {replaced / chars:.0%} of the bytes read are not UTF-8 (a binary file, or text in another "
            f"encoding): convert it to UTF-8, leave it out, or pass --allow-binary to read it anyway"
        )


def replace_lone_surrogates(text: str, stats: ReadStats) -> str:
    if text.isascii():  # fast path for most lines
        return text
    text, count = _LONE_SURROGATE.subn("\ufffd", text)
    stats.replaced_bytes += count
    return text


def _jsonl_documents(lines: Iterable[str], path: Path, skip_bad_lines: bool, stats: ReadStats) -> Iterator[str]:
    for number, line in enumerate(lines, start=1):
        if line.isspace():
            continue
        try:
            record = json.loads(replace_lone_surrogates(line, stats))
            problem = None if isinstance(record, dict) else f"expected a JSON object, got {type(record).__name__}"
            if problem is None and not isinstance(record.get("text"), str):
                problem = 'no string field "text"'
        except json.JSONDecodeError as error:
            problem = f"invalid JSON ({error.msg} at column {error.colno})"
        if problem is None:
            yield replace_lone_surrogates(record["text"], stats)
        elif skip_bad_lines:
            stats.bad_lines += 1
        else:
            raise InputError(f"{path}:{number}: {problem} (use --skip-bad-lines to skip such lines)")


def _text_documents(lines: Iterable[str], path: Path, skip_bad_lines: bool, stats: ReadStats) -> Iterator[str]:
    document: list[str] = []  # lines of the current document
    size = 0
    blank: list[str] = []  # blank lines seen since the last non-blank line
    for line in lines:
        line = replace_lone_surrogates(line, stats)
        if line.isspace():
            if not document:
                continue  # blank lines before a document belong to no document
            blank.append(line)
            if len(blank) >= 2:  # 2+ blank lines end the document
                yield "".join(document)
                document, size, blank = [], 0, []
            continue
        document += blank
        document.append(line)
        size += len(line) + sum(map(len, blank))
        blank = []
        if size >= MAX_DOCUMENT_CHARS:  # cap: a document without separators is yielded in pieces
            yield "".join(document)
            document, size = [], 0
    if document:
        yield "".join(document)


def jsonl_lines(paths: list[Path]) -> Iterator[tuple[str, str]]:
    """("file:line", text) of every non-blank line of JSONL files (.gz allowed); bytes that are not UTF-8 become
    U+FFFD, so a bad line is reported by whoever parses it, naming file:line."""
    for path in paths:
        try:
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rt", encoding="utf-8-sig", errors="replace") as file:
                for number, line in enumerate(file, 1):
                    if line.strip():
                        yield f"{path}:{number}", line
        except (OSError, EOFError, zlib.error) as error:
            raise InputError(f"{path}: cannot read ({error})") from None
