"""What every command shares for files and flags: one-line errors, atomic writes, run locks, flag rules.

A bad input (missing file, undecodable text, a flag out of range) is one `InputError` line naming the file or flag,
everywhere; every file fox1 writes goes through `write_atomic`, so a reader never sees half a file; `exclusive`
keeps two runs from writing one output; `ordered_map` runs a function over a stream of jobs in worker processes,
results in order (tokenizer training and data preparation use it). Reading corpora is fox1/documents.py.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import math
import multiprocessing
import os
import socket
import sys
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


def text_argument(value: str) -> str:
    """A command-line text argument: the text itself, or the contents of a UTF-8 file given as @path."""
    return read_text(Path(value[1:])) if value.startswith("@") else value


def write_atomic(path: str | Path, data: str | bytes | Iterable[bytes]) -> None:
    """Write a file whole or not at all (`atomic_path`). `data` may also be an iterable of byte chunks, written as
    they come (a model file need not fit in memory twice)."""
    with atomic_path(path) as temporary, open(temporary, "wb") as file:
        for chunk in [data.encode("utf-8")] if isinstance(data, str) else [data] if isinstance(data, bytes) else data:
            file.write(chunk)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path next to `path` to write to, renamed onto `path` when the block ends without an error
    (atomic on POSIX and Windows), removed otherwise: a reader never sees half a file. Creates the parent
    directories; the file gets the usual permissions (umask), unlike tempfile's private 0600."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.touch()
        mode = temporary.stat().st_mode & 0o777  # the umask's; a writer may set its own (safetensors: 0600)
        yield temporary
        temporary.chmod(mode)
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


def ordered_map(function: Callable, jobs: Iterable, workers: int, threads: bool = False) -> Iterator:
    """function over jobs, results in order, on `workers` threads (for work that releases the GIL, such as
    tiktoken's encoding) or worker processes. At most 2 jobs per worker are in flight: Pool.imap would read the
    whole (possibly 1 TB) input ahead into memory."""
    if workers <= 1:
        yield from map(function, jobs)
        return
    if threads:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            yield from _in_order(lambda job: pool.submit(function, job).result, jobs, workers)
        return
    # spawn, not fork: the parent may hold threads (tqdm's monitor, a data loader) that fork would copy mid-lock.
    with _main_script_hidden(function), multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from _in_order(lambda job: pool.apply_async(function, (job,)).get, jobs, workers)


def _in_order(submit: Callable, jobs: Iterable, workers: int) -> Iterator:
    """Results of submit(job)() in job order, with at most 2 jobs per worker submitted and not yet taken."""
    in_flight: deque = deque()
    for job in jobs:
        in_flight.append(submit(job))
        if len(in_flight) >= 2 * workers:
            yield in_flight.popleft()()
    while in_flight:
        yield in_flight.popleft()()


@contextmanager
def _main_script_hidden(function: Callable) -> Iterator[None]:
    """Spawned workers re-import the script that started the parent, for functions defined in it. A worker
    function from a module needs none of that, and the script (data.py imports torch) would cost each worker
    seconds: the script is hidden from multiprocessing while the workers start."""
    main = sys.modules["__main__"]
    path = None if function.__module__ == "__main__" else main.__dict__.pop("__file__", None)
    try:
        yield
    finally:
        if path is not None:
            main.__file__ = path

