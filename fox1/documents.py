"""Corpora as they ship, read as a stream of documents, never a whole file in memory.

    text        .txt (or any other name): documents separated by 2+ blank lines
    JSONL       .jsonl / .json (JSON Lines, as Dolma ships them): one document per line, its --text-field string
    Parquet     .parquet (FineWeb, The Stack, DCLM): the --text-field column, row group by row group (pyarrow)
    compressed  any of the line formats as .gz or .zst (SlimPajama's .jsonl.zst; zstandard for .zst)
    hub         hf:NAME[:CONFIG][@SPLIT], a Hugging Face dataset streamed with `datasets` (split: train)

Undecodable bytes become U+FFFD and are counted; a file that is mostly not UTF-8 is refused; a malformed line is a
one-line InputError naming file:line, or skipped and counted. Optional packages are named when missing.
"""
from __future__ import annotations

import glob
import gzip
import importlib
import io
import json
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from fox1.files import InputError

HUB_PREFIX = "hf:"

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


def expand_inputs(patterns: Iterable[str | Path]) -> list[Path | str]:
    """Files and globs (recursive ** allowed) -> sorted existing files, each once however many names reach it
    (a link, ./a and a, a glob and a name), then any hf:NAME datasets as given; anything matching nothing is an
    error."""
    found: dict[Path, Path] = {}  # the file itself -> the first name it was given by
    hub: list[str] = []
    for pattern in map(str, patterns):
        if pattern.startswith(HUB_PREFIX):
            hub += [pattern] if pattern not in hub else []
            continue
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
    if not found and not hub:
        raise InputError("no input files given")
    return sorted(found.values()) + hub


def iter_documents(paths: Iterable[Path | str], *, skip_bad_lines: bool = False, stats: ReadStats | None = None,
                   allow_binary: bool = False, text_field: str = "text") -> Iterator[str]:
    """Stream the documents of files and hub datasets (see the module docstring for the formats), skipping
    whitespace-only ones. Plain text: CRLF/CR become LF, documents over MAX_DOCUMENT_CHARS are cut at line
    boundaries, and a file with more than MAX_REPLACED_FRACTION undecodable bytes raises InputError naming it,
    unless allow_binary. JSONL: a malformed line raises InputError naming file:line, or is counted in
    stats.bad_lines and skipped when skip_bad_lines; so is a Parquet row or hub record without a string field."""
    stats = stats if stats is not None else ReadStats()
    for path in paths:
        if isinstance(path, str) and path.startswith(HUB_PREFIX):
            documents = _hub_documents(path, text_field, skip_bad_lines, stats)
        elif _format(Path(path)) == "parquet":
            documents = _parquet_documents(Path(path), text_field, skip_bad_lines, stats)
        else:
            documents = _line_documents(Path(path), text_field, skip_bad_lines, stats, allow_binary)
        for document in documents:
            if not document.isspace():
                stats.documents += 1
                yield document


def _format(path: Path) -> str:
    """"parquet", "jsonl" or "text", from the name without its .gz / .zst."""
    name = path.name.removesuffix(".gz").removesuffix(".zst")
    return "parquet" if name.endswith(".parquet") else "jsonl" if name.endswith((".jsonl", ".json")) else "text"


def _open_text(path: Path):
    """A text stream of a plain, .gz or .zst file: universal newlines, a leading byte-order mark dropped,
    undecodable bytes kept as lone surrogates (counted and replaced later)."""
    options = dict(encoding="utf-8-sig", errors="surrogateescape", newline=None)
    if path.suffix == ".gz":
        return gzip.open(path, "rt", **options)
    if path.suffix == ".zst":
        zstandard = _optional("zstandard", path, "read .zst files")
        return io.TextIOWrapper(io.BufferedReader(_ZstdFrames(path, zstandard)), **options)
    return open(path, "rt", **options)


class _ZstdFrames(io.RawIOBase):
    """The decompressed bytes of a .zst file of one or more frames. A file that ends inside a frame (a cut
    download) raises EOFError: zstandard's own stream reader returns what it has, silently."""

    def __init__(self, path: Path, zstandard):
        self.file, self.new_frame, self.error = open(path, "rb"), zstandard.ZstdDecompressor().decompressobj, \
            zstandard.ZstdError
        self.frame, self.inside, self.pending = self.new_frame(), False, b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self.pending:
            chunk = self.file.read(1 << 20)
            if not chunk:
                if self.inside:
                    raise EOFError("the file ends inside a zstd frame: it is truncated")
                return 0
            while chunk:
                try:
                    self.pending += self.frame.decompress(chunk)
                except self.error as error:  # not zstd data, or damaged
                    raise ValueError(f"not valid zstd data ({error})") from None
                self.inside, chunk = not self.frame.eof, self.frame.unused_data if self.frame.eof else b""
                if self.frame.eof:
                    self.frame = self.new_frame()
        size = min(len(buffer), len(self.pending))
        buffer[:size], self.pending = self.pending[:size], self.pending[size:]
        return size

    def close(self) -> None:
        self.file.close()
        super().close()


def _optional(module: str, where: object, purpose: str):
    """An optional module ("pyarrow.parquet"), or a one-line InputError naming the pip package."""
    try:
        importlib.import_module(module.split(".")[0])  # the package itself first, whatever submodules are loaded
        return importlib.import_module(module)
    except ImportError:
        raise InputError(f"{where}: to {purpose}, install the optional package: pip install "
                         f"{module.split('.')[0]}") from None


def _line_documents(path: Path, text_field: str, skip_bad_lines: bool, stats: ReadStats,
                    allow_binary: bool) -> Iterator[str]:
    is_jsonl = _format(path) == "jsonl"
    try:
        with _open_text(path) as file:
            lines = _CountedLines(file, limit=-1 if is_jsonl else MAX_DOCUMENT_CHARS)
            replaced_before = stats.replaced_bytes
            documents = (_jsonl_documents(lines, path, skip_bad_lines, stats, text_field) if is_jsonl
                         else _text_documents(lines, path, skip_bad_lines, stats))
            for document in documents:
                if not allow_binary and lines.chars >= MIN_CHARS_TO_JUDGE:
                    _check_mostly_text(path, stats.replaced_bytes - replaced_before, lines.chars)
                yield document
            if not allow_binary:
                _check_mostly_text(path, stats.replaced_bytes - replaced_before, lines.chars)
    except (OSError, EOFError, zlib.error, ValueError) as error:  # unreadable, truncated or corrupt gzip / zstd
        if isinstance(error, InputError):
            raise
        raise InputError(f"{path}: cannot read ({error})") from None


def _parquet_documents(path: Path, text_field: str, skip_bad_lines: bool, stats: ReadStats) -> Iterator[str]:
    for where, row in parquet_rows(path, [text_field]):
        yield from _checked_text(row.get(text_field), where, text_field, skip_bad_lines, stats)


def parquet_rows(path: Path, columns: list[str] | None = None) -> Iterator[tuple[str, dict]]:
    """("file: row N", row) of a Parquet file (those columns, or all), one record batch at a time (pyarrow);
    a missing column or a damaged file is one InputError line."""
    parquet = _optional("pyarrow.parquet", path, "read .parquet files")
    try:
        file = parquet.ParquetFile(path)
        missing = [name for name in columns or [] if name not in file.schema_arrow.names]
        if missing:
            raise InputError(f"{path}: no column {missing[0]!r} (columns: {', '.join(file.schema_arrow.names)}); "
                             f"name the text column with --text-field")
        number = 0
        for batch in file.iter_batches(columns=columns, batch_size=1024):
            for row in batch.to_pylist():
                number += 1
                yield f"{path}: row {number}", row
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        if isinstance(error, InputError):
            raise
        raise InputError(f"{path}: not a readable Parquet file ({str(error).splitlines()[0]})") from None


def _hub_documents(spec: str, text_field: str, skip_bad_lines: bool, stats: ReadStats) -> Iterator[str]:
    """hf:NAME[:CONFIG][@SPLIT] streamed with `datasets` (a local folder of data files works too)."""
    datasets = _optional("datasets", spec, "stream Hugging Face datasets")
    name, _, split = spec.removeprefix(HUB_PREFIX).partition("@")
    name, _, config = name.partition(":")
    try:
        records = datasets.load_dataset(name, config or None, split=split or "train", streaming=True)
        for number, record in enumerate(records, start=1):
            yield from _checked_text(record.get(text_field), f"{spec}: record {number}", text_field,
                                     skip_bad_lines, stats)
    except (OSError, ValueError, KeyError, datasets.exceptions.DatasetNotFoundError) as error:
        raise InputError(f"{spec}: cannot stream this dataset ({str(error).splitlines()[0]})") from None


def _checked_text(value: object, where: str, text_field: str, skip_bad_lines: bool, stats: ReadStats
                  ) -> Iterator[str]:
    if isinstance(value, str):
        yield replace_lone_surrogates(value, stats)
    elif skip_bad_lines:
        stats.bad_lines += 1
    else:
        raise InputError(f"{where}: no string field {text_field!r} (use --skip-bad-lines to skip such records)")


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


def _jsonl_documents(lines: Iterable[str], path: Path, skip_bad_lines: bool, stats: ReadStats,
                     text_field: str = "text") -> Iterator[str]:
    for number, line in enumerate(lines, start=1):
        if line.isspace():
            continue
        try:
            record = json.loads(replace_lone_surrogates(line, stats))
            problem = None if isinstance(record, dict) else f"expected a JSON object, got {type(record).__name__}"
            if problem is None and not isinstance(record.get(text_field), str):
                problem = f"no string field {text_field!r}"
        except json.JSONDecodeError as error:
            problem = f"invalid JSON ({error.msg} at column {error.colno})"
        if problem is None:
            yield replace_lone_surrogates(record[text_field], stats)
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
    """("file:line", text) of every non-blank line of JSONL files (.gz / .zst allowed); bytes that are not UTF-8
    become U+FFFD, so a bad line is reported by whoever parses it, naming file:line."""
    for path in paths:
        try:
            with _open_text(Path(path)) as file:
                for number, line in enumerate(file, 1):
                    if line.strip():
                        yield f"{path}:{number}", line.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        except (OSError, EOFError, zlib.error, ValueError) as error:
            if isinstance(error, InputError):
                raise
            raise InputError(f"{path}: cannot read ({error})") from None
