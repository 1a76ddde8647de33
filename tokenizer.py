"""Byte-level BPE tokenizer for fox1, trained from scratch, encoded at native speed through tiktoken.

Fox-1 (arXiv 2411.05281) bets on a large 256K vocabulary (Gemma-style: <pad>=0, <eos>=1, <bos>=2, <unk>=3) so that
each token carries more text and rare words stay short. This file trains such a vocabulary from raw text and encodes
with it:

  * reading: `expand_inputs` + `iter_documents` stream documents from plain text / JSONL (optionally gzipped);
  * training: `Tokenizer.train` (work in progress below);

Run:  python tokenizer.py train --input 'corpus/**/*.txt' --vocab-size 32768 --out out/tok.txt
"""
from __future__ import annotations

import glob
import gzip
import json
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

# A document longer than this (characters) with no blank-line separator is yielded in pieces cut at line boundaries,
# so one 1 GB file without blank lines never sits in memory at once. Lines longer than this are read in pieces too.
MAX_DOCUMENT_CHARS = 1 << 20
# After decoding with errors="surrogateescape", every undecodable byte is a lone surrogate U+DC80..U+DCFF; a JSON
# "\ud83d" escape can also yield a lone surrogate. Neither can be encoded as UTF-8, so both become U+FFFD.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class InputError(ValueError):
    """Bad user input (missing/empty/corrupt file, malformed JSONL ...); message is one line naming file[:line]."""


@dataclass
class ReadStats:
    """Counters filled while reading documents."""

    documents: int = 0
    bad_lines: int = 0  # malformed JSONL lines skipped (only when skip_bad_lines=True)
    replaced_bytes: int = 0  # undecodable bytes (and lone JSON surrogate escapes), each replaced by one U+FFFD


def expand_inputs(patterns: Iterable[str | Path]) -> list[Path]:
    """Files and globs (recursive ** allowed) -> sorted unique existing files; anything matching nothing is an error."""
    found: set[Path] = set()
    for pattern in map(str, patterns):
        if glob.has_magic(pattern):
            matches = [Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file()]
            if not matches:
                raise InputError(f"{pattern}: no files match this pattern")
            found.update(matches)
        elif Path(pattern).is_dir():
            raise InputError(f"{pattern}: is a directory (give files or a glob such as '{pattern}/**/*.txt')")
        elif Path(pattern).is_file():
            found.add(Path(pattern))
        else:
            raise InputError(f"{pattern}: no such file")
    if not found:
        raise InputError("no input files given")
    return sorted(found)


def iter_documents(
    paths: Iterable[Path], *, skip_bad_lines: bool = False, stats: ReadStats | None = None
) -> Iterator[str]:
    """Stream documents from files, never holding a whole file in memory.

    *.jsonl / *.jsonl.gz: one document per line, its "text" string. A malformed line raises InputError naming
    file:line, or is counted in stats.bad_lines and skipped when skip_bad_lines. Blank lines are ignored.
    Anything else (optionally *.gz): plain text, documents separated by 2+ blank lines (whitespace-only lines count
    as blank); CRLF/CR become LF; documents over MAX_DOCUMENT_CHARS are cut at line boundaries.
    Undecodable UTF-8 bytes become U+FFFD (counted per byte). Whitespace-only documents are skipped.
    """
    stats = stats if stats is not None else ReadStats()
    for path in map(Path, paths):
        is_jsonl = path.name.endswith((".jsonl", ".jsonl.gz"))
        try:
            opener = gzip.open if path.suffix == ".gz" else open
            # newline=None: universal newlines (CRLF -> LF); utf-8-sig drops a leading byte-order mark.
            with opener(path, "rt", encoding="utf-8-sig", errors="surrogateescape", newline=None) as file:
                lines = iter(lambda: file.readline(MAX_DOCUMENT_CHARS), "")
                parse = _jsonl_documents if is_jsonl else _text_documents
                for document in parse(lines, path, skip_bad_lines, stats):
                    if not document.isspace():
                        stats.documents += 1
                        yield document
        except (OSError, EOFError, zlib.error) as error:  # missing, unreadable, truncated or corrupt gzip
            raise InputError(f"{path}: cannot read ({error})") from None


def _replace_lone_surrogates(text: str, stats: ReadStats) -> str:
    if text.isascii():  # fast path for most lines
        return text
    text, count = _LONE_SURROGATE.subn("\ufffd", text)
    stats.replaced_bytes += count
    return text


def _jsonl_documents(lines: Iterator[str], path: Path, skip_bad_lines: bool, stats: ReadStats) -> Iterator[str]:
    for number, line in enumerate(lines, start=1):
        if line.isspace():
            continue
        try:
            record = json.loads(_replace_lone_surrogates(line, stats))
            problem = None if isinstance(record, dict) else f"expected a JSON object, got {type(record).__name__}"
            if problem is None and not isinstance(record.get("text"), str):
                problem = 'no string field "text"'
        except json.JSONDecodeError as error:
            problem = f"invalid JSON ({error.msg} at column {error.colno})"
        if problem is None:
            yield _replace_lone_surrogates(record["text"], stats)
        elif skip_bad_lines:
            stats.bad_lines += 1
        else:
            raise InputError(f"{path}:{number}: {problem} (use --skip-bad-lines to skip such lines)")


def _text_documents(lines: Iterator[str], path: Path, skip_bad_lines: bool, stats: ReadStats) -> Iterator[str]:
    document: list[str] = []  # lines of the current document
    size = 0
    blank: list[str] = []  # blank lines seen since the last non-blank line
    for line in lines:
        line = _replace_lone_surrogates(line, stats)
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
