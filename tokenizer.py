"""Byte-level BPE tokenizer for fox1: trained from scratch, encoded at native speed through tiktoken.

Fox-1 (arXiv 2411.05281) bets on a large 256K vocabulary (Gemma-style: <pad>=0, <eos>=1, <bos>=2, <unk>=3, here
followed by the instruct model's <start_of_turn>=4 and <end_of_turn>=5) so that each token carries more text. This
file trains such a vocabulary on raw text and encodes with it:

  reading   expand_inputs + iter_documents stream documents from plain text / JSONL files, optionally gzipped;
  training  Tokenizer.train: split documents into pre-tokens with a regex (in worker processes), count each distinct
            pre-token once, then learn merges with incremental pair counts (pair -> words index, lazy max-heap);
  encoding  Tokenizer.encode / encode_batch / decode through tiktoken, plus encode_reference in pure Python;
  file      Tokenizer.save / load: a text header (format, pattern, special tokens, fingerprint), then one token per
            line as "base64(bytes) id preview".

Ids: 0..5 the special tokens, 6..261 the 256 bytes, then the merges in the order they were learned.

Run:
  python tokenizer.py train --input 'corpus/**/*.txt' data.jsonl --vocab-size 32768 --out out/tokenizer.txt
  python tokenizer.py encode --tokenizer out/tokenizer.txt "some text"
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import glob
import gzip
import hashlib
import heapq
import json
import multiprocessing
import os
import re
import sys
import time
import zlib
from collections import Counter, defaultdict, deque
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Callable, Iterable, Iterator

import regex
import tiktoken
from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tqdm import tqdm

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


class InputError(ValueError):
    """Bad user input (missing/empty/corrupt file, malformed JSONL ...); message is one line naming file[:line]."""


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


def _replace_lone_surrogates(text: str, stats: ReadStats) -> str:
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


def _text_documents(lines: Iterable[str], path: Path, skip_bad_lines: bool, stats: ReadStats) -> Iterator[str]:
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


# ----------------------------------------------------------------------------------------------------------------
# Vocabulary layout and pre-tokenization
# ----------------------------------------------------------------------------------------------------------------

# Gemma's order for the first four (Fox-1 uses a Gemma-style 256K vocabulary); the chat tokens used by Fox-1's
# instruct model come right after. Byte tokens follow at ids 6..261, learned merges from 262 on.
SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>")
FIRST_BYTE_ID = len(SPECIAL_TOKENS)
FIRST_MERGE_ID = FIRST_BYTE_ID + 256
FORMAT_VERSION = "fox1-bpe-1"

# GPT-4's (cl100k) split pattern with two changes. (1) Digits are split one by one (\p{N} instead of \p{N}{1,3}), as
# in Gemma and Llama, so every number is spelled with the same 10 digit tokens (consistent arithmetic) at a small
# cost in compression on prose. (2) GPT-4's possessive quantifiers (?+ ++) are plain greedy ones: here they never
# change a match (the optional lead character and the punctuation run can't be given back usefully: what follows
# excludes them), but they push tiktoken's regex engine onto its slow backtracking path (encoding 7 -> 15 MB/s).
# Alternatives, in order:
#   '(?i:[sdmt]|ll|ve|re)     English contractions split off ("don" "'t")
#   [^\r\n\p{L}\p{N}]?\p{L}+  a run of letters with at most one leading non-letter, usually the space: " word"
#   \p{N}                     a single digit
#    ?[^\s\p{L}\p{N}]+[\r\n]*  punctuation runs with an optional leading space and trailing newlines
#   \s*[\r\n]                 newlines together with the whitespace before them
#   \s+(?!\S)                 a whitespace run except its last space, which stays with the next word: code
#                             indentation becomes its own token and " if" stays one token
#   \s+                       whitespace at the end of the text
DEFAULT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)
# Pre-tokens longer than this many characters (base64 blobs, whitespace art, DNA) are cut into pieces of this size
# before training, so no single "word" can blow up memory; no useful token is that long.
MAX_PIECE_CHARS = 256
# Documents are sent to the counting workers in chunks of about this many characters: big enough that the pickling
# and merging overhead is small, small enough to keep 2 workers evenly busy on a 20 MB corpus.
CHUNK_CHARS = 1 << 20


# ----------------------------------------------------------------------------------------------------------------
# Training step 1: count each distinct pre-token once (in parallel worker processes)
# ----------------------------------------------------------------------------------------------------------------


def _count_pieces(pattern: str, documents: list[str]) -> Counter[str]:
    """Worker: pre-tokenize documents and count the pieces (top-level so 'spawn' workers can import it)."""
    findall = regex.compile(pattern).findall  # compiled once per process: regex caches compiled patterns
    counts: Counter[str] = Counter()
    for document in documents:
        counts.update(findall(document))
    for piece in [piece for piece in counts if len(piece) > MAX_PIECE_CHARS]:
        count = counts.pop(piece)
        for start in range(0, len(piece), MAX_PIECE_CHARS):
            counts[piece[start : start + MAX_PIECE_CHARS]] += count
    return counts


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


def _count_chunk(pattern: str, chunk: list[str]) -> tuple[Counter[str], int]:
    """In a worker: (pre-token counts, characters) of one chunk of documents."""
    return _count_pieces(pattern, chunk), sum(map(len, chunk))


def count_pretokens(documents: Iterable[str], pattern: str, workers: int, progress: bool) -> dict[bytes, int]:
    """Distinct pre-tokens (as UTF-8 bytes) -> frequency, over all documents. workers=1: no processes."""
    total: Counter[str] = Counter()
    with tqdm(desc="counting", unit="char", unit_scale=True, disable=not progress) as bar:
        chunks = document_chunks(documents, CHUNK_CHARS)
        for chunk_counts, chars in ordered_map(partial(_count_chunk, pattern), chunks, workers):
            total.update(chunk_counts)
            bar.update(chars)
    counts: dict[bytes, int] = defaultdict(int)
    while total:  # popitem: never hold both tables whole
        piece, count = total.popitem()
        counts[piece.encode("utf-8", "replace")] += count  # "replace": a lone surrogate can't be UTF-8 encoded
    return counts


# ----------------------------------------------------------------------------------------------------------------
# Training step 2: learn merges with incremental pair counts
# ----------------------------------------------------------------------------------------------------------------
#
# Each distinct pre-token ("word") is a list of token ids with a frequency (here byte b has id b and merges count
# from 256; the Tokenizer shifts every id by the 6 special tokens). We keep
#   pair_counts[(a, b)]  how often b follows a, summed over all words (times their frequency),
#   pair_words[(a, b)]   the indices of the words that contain (a, b) (may hold stale entries; they are skipped),
#   heap                 a max-heap of (-count, a, b) entries that may be stale ("lazy"): a popped entry whose count
#                        no longer matches pair_counts is pushed back with its current count.
# A merge rewrites only the words that contain the pair and applies their local count changes, so after the first
# few merges each step touches a tiny fraction of the corpus.
# Tie-break (deterministic, independent of word order and worker count): the highest count wins; among equal counts
# the pair with the smallest (left id, right id), i.e. the one made of older tokens.
# If a pair's bytes already form a token (the same string reached by two merge paths), the pair merges into that
# token instead of a duplicate (as Hugging Face's trainer does), so every id has distinct bytes, as tiktoken's
# bytes -> rank map requires.


def learn_merges(word_counts: dict[bytes, int], num_tokens: int, progress: bool = True) -> list[bytes]:
    """Learn byte-level BPE on {word: count}; return the bytes of all tokens, 256 single bytes first, then merges."""
    words = [list(word) for word in word_counts]
    freqs = list(word_counts.values())
    pair_counts: dict[tuple[int, int], int] = defaultdict(int)
    pair_words: dict[tuple[int, int], set[int]] = defaultdict(set)
    for index, (word, freq) in enumerate(zip(words, freqs)):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += freq
            pair_words[pair].add(index)
    heap = [(-count, a, b) for (a, b), count in pair_counts.items()]
    heapq.heapify(heap)

    vocab = [bytes([byte]) for byte in range(256)]
    id_of = {token: token_id for token_id, token in enumerate(vocab)}
    with tqdm(total=num_tokens, initial=len(vocab), desc="merging", unit="tok", disable=not progress) as bar:
        while len(vocab) < num_tokens:
            pair = _pop_best_pair(heap, pair_counts)
            if pair is None:
                raise _not_enough_text(len(vocab), num_tokens)
            a, b = pair
            token = vocab[a] + vocab[b]
            new = id_of.get(token)
            if new is None:
                new = id_of[token] = len(vocab)
                vocab.append(token)
                bar.update()
            for pair in _apply_merge(a, b, new, words, freqs, pair_counts, pair_words):
                heapq.heappush(heap, (-pair_counts[pair], *pair))
    return vocab


def _pop_best_pair(heap: list[tuple[int, int, int]], pair_counts: dict) -> tuple[int, int] | None:
    """The pair with the highest count (smallest ids on a tie), skipping stale heap entries; None if none is left."""
    while heap:
        negative_count, a, b = heapq.heappop(heap)
        count = pair_counts.get((a, b), 0)  # 0 for a pair already merged
        if count == -negative_count:
            return a, b
        if count > 0:  # stale entry: re-queue with the current count
            heapq.heappush(heap, (-count, a, b))
    return None


def _not_enough_text(tokens: int, wanted: int) -> InputError:
    specials = len(SPECIAL_TOKENS)
    return InputError(
        f"the corpus supports only {tokens - 256} merges ({tokens + specials} tokens) but vocab_size "
        f"{wanted + specials} needs {wanted - 256}: give more (or more varied) text or ask for a smaller vocabulary"
    )


def _apply_merge(
    a: int, b: int, new: int, words: list[list[int]], freqs: list[int], pair_counts: dict, pair_words: dict
) -> set[tuple[int, int]]:
    """Merge (a, b) into `new` (left to right, non-overlapping) in every word containing it, updating the counts of
    the neighbouring pairs only; return the pairs that gained count (they all contain `new`)."""
    grown = set()
    for index in pair_words.pop((a, b)):
        word, freq = words[index], freqs[index]
        merged: list[int] = []
        copied = search = 0  # word[:copied] is in merged; look for the next `a` from word[search]
        left_to_check = word.count(a)  # jump between the a's with list.index (C speed) instead of a Python loop
        while left_to_check > 0:
            i = word.index(a, search)
            if i + 1 == len(word) or word[i + 1] != b:
                search = i + 1
                left_to_check -= 1
                continue
            merged += word[copied:i]
            if merged:  # left neighbour (already merged, so it may be `new` itself): (x, a) -> (x, new)
                left = merged[-1]
                pair_counts[left, a] -= freq
                pair_counts[left, new] += freq
                pair_words[left, new].add(index)
                grown.add((left, new))
            if i + 2 < len(word):  # right neighbour (not merged yet): (b, y) -> (new, y)
                right = word[i + 2]
                pair_counts[b, right] -= freq
                pair_counts[new, right] += freq
                pair_words[new, right].add(index)
                grown.add((new, right))
            merged.append(new)
            copied = search = i + 2
            left_to_check -= 2 if a == b else 1
        if copied:  # else a stale index entry: the pair left this word in an earlier merge
            words[index] = merged + word[copied:]
    del pair_counts[a, b]  # every occurrence is gone
    return {pair for pair in grown if pair_counts[pair] > 0}


# ----------------------------------------------------------------------------------------------------------------
# The tokenizer: training entry point, tiktoken encoding, pure-Python reference encoding, file format
# ----------------------------------------------------------------------------------------------------------------


class Tokenizer:
    """Byte-level BPE: token id -> bytes is fixed by `ranks` (bytes -> id, ids 6..vocab_size-1) plus the specials."""

    pad_id, eos_id, bos_id, unk_id, start_of_turn_id, end_of_turn_id = range(len(SPECIAL_TOKENS))

    def __init__(self, ranks: dict[bytes, int], pattern: str = DEFAULT_PATTERN) -> None:
        if sorted(ranks.values()) != list(range(FIRST_BYTE_ID, FIRST_BYTE_ID + len(ranks))):
            raise ValueError(f"token ids must be exactly {FIRST_BYTE_ID}..{FIRST_BYTE_ID + len(ranks) - 1}")
        if any(ranks.get(bytes([byte])) != FIRST_BYTE_ID + byte for byte in range(256)):
            raise ValueError(f"byte b must have id {FIRST_BYTE_ID} + b")
        self.ranks, self.pattern = ranks, pattern
        self.vocab_size = len(SPECIAL_TOKENS) + len(ranks)
        self.fingerprint = _fingerprint(pattern, ranks)
        self._encoding = tiktoken.Encoding(
            name=f"fox1-{self.fingerprint[:12]}",
            pat_str=pattern,
            mergeable_ranks=ranks,
            special_tokens={token: token_id for token_id, token in enumerate(SPECIAL_TOKENS)},
            explicit_n_vocab=self.vocab_size,
        )

    @classmethod
    def train(
        cls,
        documents: Iterable[str],
        vocab_size: int = 256000,
        *,
        workers: int | None = None,
        pattern: str = DEFAULT_PATTERN,
        progress: bool = True,
    ) -> Tokenizer:
        """Train on an iterable of documents (streamed). workers: counting processes (None: all cores, 1: none).

        With workers > 1 the calling script needs the usual `if __name__ == "__main__":` guard, because the
        workers are started with 'spawn' (re-importing the main module), the one start method safe on every OS.
        """
        if vocab_size < FIRST_MERGE_ID:
            raise InputError(f"vocab_size must be at least {FIRST_MERGE_ID} (6 special + 256 byte tokens)")
        if workers is not None and workers < 1:
            raise InputError(f"workers must be at least 1, got {workers}")
        workers = workers or os.cpu_count() or 1
        word_counts = count_pretokens(documents, pattern, workers, progress)
        if not word_counts:
            raise InputError("no text to train on: the documents are all empty")
        vocab = learn_merges(word_counts, vocab_size - len(SPECIAL_TOKENS), progress)
        return cls({token: FIRST_BYTE_ID + index for index, token in enumerate(vocab)}, pattern)

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        """Text -> ids. "<eos>" etc. in the text are plain text unless allow_special."""
        return self._encoding.encode(text, allowed_special="all" if allow_special else set(), disallowed_special=())

    def encode_batch(self, texts: list[str], *, num_threads: int = 8, allow_special: bool = False) -> list[list[int]]:
        """encode() for many texts on `num_threads` threads (tiktoken releases the GIL)."""
        allowed = "all" if allow_special else set()
        return self._encoding.encode_batch(
            texts, num_threads=num_threads, allowed_special=allowed, disallowed_special=()
        )

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Ids -> the raw bytes (for streaming: a multi-byte character may be split across tokens)."""
        try:
            return self._encoding.decode_bytes(list(ids))
        except (KeyError, OverflowError) as error:  # OverflowError: a negative id
            raise ValueError(f"token id outside the vocabulary of {self.vocab_size}: {error}") from None

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text. Bytes that are not valid UTF-8 (a character cut by the end of `ids`) become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def ids_starting_with(self, prefix: bytes) -> list[int]:
        """Ids of the ordinary tokens whose bytes begin with `prefix` (for token healing in sample.py)."""
        return sorted(token_id for token, token_id in self.ranks.items() if token.startswith(prefix))

    def encode_reference(self, text: str) -> list[int]:
        """Pure-Python encoder giving the same ids as encode() (no special tokens), to show what tiktoken does.

        Split the text with the pattern; a piece that is itself a token becomes that token; otherwise start from
        single bytes and repeatedly merge the adjacent pair whose concatenation has the lowest rank (the leftmost
        one on a tie) until no adjacent pair forms a token.
        """
        ids = []
        for piece in regex.findall(self.pattern, text):
            data = piece.encode("utf-8")
            if data in self.ranks:  # tiktoken's shortcut: a piece that is a whole token is that token
                ids.append(self.ranks[data])
                continue
            parts = [bytes([byte]) for byte in data]
            while True:
                mergeable = [(self.ranks[left + right], i) for i, (left, right) in enumerate(zip(parts, parts[1:]))
                             if left + right in self.ranks]
                if not mergeable:
                    break
                _, i = min(mergeable)  # lowest rank, then leftmost
                parts[i : i + 2] = [parts[i] + parts[i + 1]]
            ids.extend(self.ranks[part] for part in parts)
        return ids

    def save(self, path: str | Path) -> None:
        """Write the human-inspectable tokenizer file atomically (temp file + rename)."""
        path = Path(path)
        lines = [
            "# fox1 byte-level BPE tokenizer (tokenizer.py); special tokens have ids 0..5. "
            "After 'tokens': base64(token bytes), id, text preview",
            f"format {FORMAT_VERSION}",
            f"vocab_size {self.vocab_size}",
            f"special_tokens {json.dumps(SPECIAL_TOKENS)}",
            f"pattern {json.dumps(self.pattern)}",
            f"fingerprint {self.fingerprint}",
            "tokens",
        ]
        for token, token_id in sorted(self.ranks.items(), key=lambda item: item[1]):
            preview = json.dumps(token.decode("utf-8", errors="replace"), ensure_ascii=False)
            lines.append(f"{base64.b64encode(token).decode('ascii')} {token_id} {preview}")
        try:
            write_atomic(path, "\n".join(lines) + "\n")
        except OSError as error:
            raise InputError(f"{path}: cannot write tokenizer file ({error})") from None

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Read a file written by save(); a missing, truncated or corrupt file raises InputError naming it."""
        try:
            lines = Path(path).read_text(encoding="utf-8").split("\n")
        except (OSError, UnicodeDecodeError) as error:
            raise InputError(f"{path}: cannot read tokenizer file ({error})") from None
        try:
            return cls._from_lines(lines)
        except (ValueError, KeyError, IndexError, TypeError) as error:
            raise InputError(f"{path}: corrupt or truncated tokenizer file ({error})") from None

    @classmethod
    def _from_lines(cls, lines: list[str]) -> Tokenizer:
        tokens_at = lines.index("tokens")  # ValueError if the header is cut off
        header = dict(line.split(" ", 1) for line in lines[1:tokens_at])
        if header["format"] != FORMAT_VERSION:
            raise ValueError(f"format {header['format']!r}, expected {FORMAT_VERSION!r}")
        special_tokens, pattern = json.loads(header["special_tokens"]), json.loads(header["pattern"])
        if not isinstance(special_tokens, list) or tuple(special_tokens) != SPECIAL_TOKENS:
            raise ValueError(f"special tokens differ from {SPECIAL_TOKENS}")
        if not isinstance(pattern, str):
            raise ValueError(f"pattern must be a JSON string, got {header['pattern'][:40]!r}")
        body = lines[tokens_at + 1 :]
        if body and body[-1] == "":
            body.pop()  # the final newline
        if len(body) != int(header["vocab_size"]) - len(SPECIAL_TOKENS):
            raise ValueError(f"{len(body)} token lines, header says {int(header['vocab_size'])} - 6")
        ranks = {}
        for line in body:
            token, token_id, _preview = line.split(" ", 2)
            ranks[base64.b64decode(token, validate=True)] = int(token_id)
        tokenizer = cls(ranks, pattern)  # ValueError from tiktoken if the pattern is not a valid regex
        if tokenizer.fingerprint != header["fingerprint"]:
            raise ValueError("fingerprint mismatch: the token lines were changed or damaged")
        return tokenizer


def _fingerprint(pattern: str, ranks: dict[bytes, int]) -> str:
    """sha256 over pattern, special tokens and all tokens in id order: equal vocabularies <=> equal fingerprints."""
    digest = hashlib.sha256(json.dumps([FORMAT_VERSION, pattern, SPECIAL_TOKENS]).encode("utf-8"))
    for token, _ in sorted(ranks.items(), key=lambda item: item[1]):
        digest.update(len(token).to_bytes(4, "big") + token)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


def _train_command(args: argparse.Namespace) -> None:
    start = time.time()
    if Path(args.out).exists() and not args.force:  # data prepared with the old file would silently stop matching
        raise InputError(f"{args.out} already exists: pass --force to replace it (data prepared with it must then "
                         f"be prepared again) or choose another --out")
    stats = ReadStats()
    paths = expand_inputs(args.input)
    documents = iter_documents(paths, skip_bad_lines=args.skip_bad_lines, stats=stats, allow_binary=args.allow_binary)
    tokenizer = Tokenizer.train(documents, args.vocab_size, workers=args.workers, progress=not args.quiet)
    tokenizer.save(args.out)
    print(
        f"trained {tokenizer.vocab_size} tokens on {stats.documents} documents from {len(paths)} files "
        f"({stats.bad_lines} bad lines skipped, {stats.replaced_bytes} undecodable bytes replaced) "
        f"in {time.time() - start:.1f}s -> {args.out} (fingerprint {tokenizer.fingerprint[:16]})"
    )


def _encode_command(args: argparse.Namespace) -> None:
    tokenizer = Tokenizer.load(args.tokenizer)
    ids = tokenizer.encode(args.text, allow_special=args.allow_special)
    print(" ".join(map(str, ids)))
    print(" ".join(json.dumps(tokenizer.decode_bytes([i]).decode("utf-8", "replace"), ensure_ascii=False)
                   for i in ids))
    print(f"{len(ids)} tokens, {len(args.text.encode('utf-8')) / max(len(ids), 1):.2f} bytes/token")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a tokenizer on text / JSONL files")
    train.add_argument("--input", nargs="+", required=True, help="files or globs (** recursive): text, .jsonl, .gz")
    train.add_argument("--vocab-size", type=int, default=256000, help="total tokens incl. 6 specials (256000)")
    train.add_argument("--out", required=True, help="tokenizer file to write")
    train.add_argument("--workers", type=int, default=None, help="counting processes (default: all cores)")
    train.add_argument("--skip-bad-lines", action="store_true", help="skip (and count) malformed JSONL lines")
    train.add_argument("--allow-binary", action="store_true",
                       help=f"read files with over {MAX_REPLACED_FRACTION:.0%} undecodable bytes (refused by default)")
    train.add_argument("--force", action="store_true", help="replace an existing --out file")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    encode = commands.add_parser("encode", help="print the ids and tokens of a text")
    encode.add_argument("--tokenizer", required=True, help="tokenizer file written by 'train'")
    encode.add_argument("--allow-special", action="store_true", help="treat '<eos>' etc. as special tokens")
    encode.add_argument("text")
    args = parser.parse_args(argv)
    try:
        (_train_command if args.command == "train" else _encode_command)(args)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


# ----------------------------------------------------------------------------------------------------------------
# Chat template: conversations -> text -> token ids + the loss mask of the assistant's replies
# ----------------------------------------------------------------------------------------------------------------

# Fox-1-Instruct's turn format (Gemma's): each turn is "<start_of_turn>ROLE\n" + content + "<end_of_turn>\n", the
# assistant's role is called "model", and a reply ends with <end_of_turn>, where generation stops. A system message
# is folded into the first user turn as Gemma does ("<system>\n\n<user>"), so the model only ever sees two roles.
# Contents are kept verbatim (Gemma trims them), so rendering and parsing round-trip exactly.
DEFAULT_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] + '\\n\\n' %}{% set messages = messages[1:] %}"
    "{% else %}{% set system = '' %}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] not in ('user', 'assistant') %}"
    "{{ raise_exception('unknown role ' ~ message['role'] ~ ' (system first, then user/assistant)') }}{% endif %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('roles must alternate user/assistant/user/... after an optional system message') }}"
    "{% endif %}"
    "{{ '<start_of_turn>' ~ ('model' if message['role'] == 'assistant' else 'user') ~ '\\n' }}"
    "{{ (system if loop.first else '') ~ message['content'] ~ '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
CHAT_ROLES = ("system", "user", "assistant")


class ChatTemplateError(InputError):
    """A conversation the template refuses (its raise_exception), or a template that cannot be used."""


def load_chat_template(directory: str | Path) -> str | None:
    """The "chat_template" of a model folder's tokenizer_config.json, or None when it has none. Hugging Face
    stores one Jinja string, or a list of {"name", "template"} of which "default" is the chat one."""
    path = Path(directory) / "tokenizer_config.json"
    if not path.is_file():
        return None
    try:
        template = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as error:
        raise InputError(f"{path}: cannot read ({error})") from None
    if isinstance(template, list):
        named = {item.get("name"): item.get("template") for item in template if isinstance(item, dict)}
        template = named.get("default")
    if template is not None and not isinstance(template, str):
        raise InputError(f"{path}: chat_template must be a string or a list with a 'default' template")
    return template


@lru_cache(maxsize=8)
def _compiled_template(template: str):
    """The template compiled in a sandbox, with Hugging Face's environment (trim_blocks, lstrip_blocks,
    loop controls, raise_exception, strftime_now): a template from a downloaded folder is untrusted code,
    and the immutable sandbox lets it read its inputs but call no unsafe method and change nothing."""
    def raise_exception(message: str):
        raise ChatTemplateError(f"chat template: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: time.strftime(fmt))
    try:
        return env.from_string(template)
    except TemplateError as error:
        raise ChatTemplateError(f"chat template does not compile: {error}") from None


def render_chat(template: str, messages: list[dict], *, bos_token: str, eos_token: str,
                add_generation_prompt: bool = False) -> str:
    """The conversation as text, through the sandboxed template (HF's variables: messages, bos_token,
    eos_token, add_generation_prompt)."""
    try:
        return _compiled_template(template).render(messages=messages, bos_token=bos_token, eos_token=eos_token,
                                                   add_generation_prompt=add_generation_prompt)
    except TemplateError as error:
        raise ChatTemplateError(f"chat template failed: {error}") from None


def check_conversation(messages: object) -> None:
    """Raise ValueError naming what is wrong unless `messages` is a list of {"role", "content": str} with known
    roles, system (if any) first, and at least one assistant reply to learn from."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in CHAT_ROLES:
            raise ValueError(f"message {i}: role must be one of {', '.join(CHAT_ROLES)}")
        if not isinstance(message.get("content"), str):
            raise ValueError(f"message {i}: content must be a string")
        if message["role"] == "system" and i > 0:
            raise ValueError(f"message {i}: a system message may only come first")
    if not any(message["role"] == "assistant" for message in messages):
        raise ValueError("no assistant turn")


def encode_chat(tokenizer, messages: list[dict], template: str = DEFAULT_CHAT_TEMPLATE, *,
                add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
    """A conversation -> (token ids, loss mask): mask 1 exactly on the tokens of every assistant reply, including
    the end-of-turn token the template closes it with; 0 on everything the model reads but must not learn to write.

    Works with any template: reply i spans from the end of the conversation up to i rendered with a generation
    prompt to the end of the conversation through reply i rendered without one, less trailing whitespace
    ("<end_of_turn>\\n": the newline belongs to the next turn's scaffolding, and generation stops before it).
    The text is encoded piece by piece at those boundaries, so a prompt is encoded exactly as sample.py --chat
    encodes it before the model writes its reply. Ids always start with <bos> (added when the template has none),
    which is where data.py's packing sees a conversation begin."""
    tokens = dict(bos_token=tokenizer.decode([tokenizer.bos_id]), eos_token=tokenizer.decode([tokenizer.eos_id]))
    text = render_chat(template, messages, add_generation_prompt=add_generation_prompt, **tokens)
    cuts, masked = [0], []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render_chat(template, messages[:i], add_generation_prompt=True, **tokens)
        through = render_chat(template, messages[:i + 1], **tokens)
        if not (text.startswith(prompt) and text.startswith(through) and len(prompt) <= len(through.rstrip())):
            raise ChatTemplateError(f"chat template renders message {i} differently once later messages follow; "
                                    f"the reply's tokens cannot be located")
        cuts += [len(prompt), len(through.rstrip())]
        masked += [0, 1]
    cuts.append(len(text))
    masked.append(0)
    ids, mask = [], []
    for begin, end, flag in zip(cuts, cuts[1:], masked):
        piece = tokenizer.encode(text[begin:end], allow_special=True)
        ids += piece
        mask += [flag] * len(piece)
    if not ids or ids[0] != tokenizer.bos_id:
        ids, mask = [tokenizer.bos_id] + ids, [0] + mask
    return ids, mask


if __name__ == "__main__":
    sys.exit(main())
