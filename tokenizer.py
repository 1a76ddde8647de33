"""Byte-level BPE tokenizer for fox1: trained from scratch, encoded at native speed through tiktoken; and any
Hugging Face tokenizer.json of the Llama family (the released Fox-1's included) read exactly.

Fox-1 (arXiv 2411.05281) bets on a large 256K vocabulary (Gemma-style: <pad>=0, <eos>=1, <bos>=2, <unk>=3, here
followed by the instruct model's <start_of_turn>=4 and <end_of_turn>=5) so that each token carries more text. This
file, top to bottom:

  training  Tokenizer.train: split documents into pre-tokens with a regex (in worker processes), count each distinct
            pre-token once, then learn merges: train_reference is the textbook trainer, learn_merges the same result
            with incremental pair counts (pair -> words index, lazy max-heap);
  encoding  Tokenizer.encode / encode_batch / decode through tiktoken, plus encode_reference in pure Python;
  files     Tokenizer.save / load: a text header (format, pattern, special tokens, fingerprint), then one token per
            line as "base64(bytes) id preview"; Tokenizer.save_pretrained: the same as a Hugging Face tokenizer.json;
  HF        HFTokenizer: a tokenizer.json (SentencePiece-converted or byte-level BPE) encoded and decoded as the
            `tokenizers` library does; load_tokenizer takes tokenizer.txt, tokenizer.json or a model folder;
  reading   expand_inputs + iter_documents stream documents from plain text / JSONL files, optionally gzipped;
  chat      the chat template: conversations -> text -> token ids and the loss mask of the replies.

Ids: 0..5 the special tokens, 6..261 the 256 bytes, then the merges in the order they were learned.

Run:
  python tokenizer.py train --input 'corpus/**/*.txt' data.jsonl --vocab-size 32768 --out out/tokenizer.txt
  python tokenizer.py encode --tokenizer out/tokenizer.txt "some text"     # also a tokenizer.json or model folder
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
import unicodedata
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
# Training step 2: learn merges. First the textbook trainer, then the same result fast.
# ----------------------------------------------------------------------------------------------------------------


def train_reference(word_counts: dict[bytes, int], num_tokens: int) -> list[bytes]:
    """The textbook BPE trainer: short, obviously correct, and slow (it recounts every pair after every merge).
    Returns the bytes of num_tokens tokens (fewer if the text runs out of pairs): 256 single bytes, then merges.

    Repeat: count each adjacent pair of tokens in each word (times the word's count), make the most frequent pair
    a new token (the pair of smallest ids on a tie), and replace it in every word, left to right, without overlaps.
    Worked example, the one word "aaabdaaabac" (bytes a=97, b=98, c=99, d=100):
      aa 4, ab 2, ...    -> 256 = "aa":   256 a b d 256 a b a c
      (256, a) 2, ab 2   -> 257 = "ab" (97, 98 are the smaller ids):   256 257 d 256 257 a c
      (256, 257) 2       -> 258 = "aaab": 258 d 258 a c
      all pairs 1        -> 259 = "ac" (97, 99 smallest): 258 d 258 259, and so on until one token is left.
    learn_merges below gives the same tokens, and the tests check that it does.
    """
    words = Counter({tuple(word): count for word, count in word_counts.items()})
    vocab = [bytes([byte]) for byte in range(256)]
    while len(vocab) < num_tokens:
        pairs: Counter[tuple[int, int]] = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            break  # every word is one token
        a, b = min(pairs, key=lambda pair: (-pairs[pair], pair))
        token = vocab[a] + vocab[b]
        if token not in vocab:  # the same bytes can be reached by two merge paths: keep one token (see below)
            vocab.append(token)
        new = vocab.index(token)
        merged_words: Counter[tuple[int, ...]] = Counter()
        for word, count in words.items():
            merged_words[_replace_pair(word, a, b, new)] += count
        words = merged_words
    return vocab


def _replace_pair(word: tuple[int, ...], a: int, b: int, new: int) -> tuple[int, ...]:
    """Every (a, b) in word -> new, left to right: (a, a, a) with (a, a) -> n gives (n, a)."""
    replaced, i = [], 0
    while i < len(word):
        if word[i] == a and i + 1 < len(word) and word[i + 1] == b:
            replaced.append(new)
            i += 2
        else:
            replaced.append(word[i])
            i += 1
    return tuple(replaced)


# The fast trainer learns the same merges with incremental pair counts.
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
    the neighbouring pairs only; return the pairs that gained count (they all contain `new`).

    Example: (a, b) -> N in the word "x a b a b y" of frequency 3. First match: its left neighbour x loses (x, a)
    and gains (x, N); its right neighbour a turns (b, a) into (N, a). Second match: its left neighbour is now the
    N just made, so (N, a) goes back to 0 and (N, N) gains; on the right (b, y) becomes (N, y). Net: (x, a),
    (b, a), (b, y) each -3; (x, N), (N, N), (N, y) each +3; and (a, b) itself is deleted: "x N N y".
    """
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
    special_ids = frozenset(range(len(SPECIAL_TOKENS)))

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

    def token_id(self, text: str) -> int | None:
        """The id of a special token ("<end_of_turn>") or of the token whose bytes are text's UTF-8, else None."""
        if text in SPECIAL_TOKENS:
            return SPECIAL_TOKENS.index(text)
        return self.ranks.get(text.encode("utf-8"))

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

    def save_pretrained(self, directory: str | Path, chat_template: str | None = None) -> None:
        """Write a Hugging Face tokenizer: tokenizer.json (byte-level BPE: our pattern as a Split regex, ByteLevel,
        merges that reproduce tiktoken's order), tokenizer_config.json (bos/eos/pad/unk, chat_template) and
        special_tokens_map.json, so that transformers' AutoTokenizer encodes and decodes exactly as this one."""
        names = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
                 "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]}
        _save_hf_tokenizer(directory, json.dumps(self._hf_spec(), ensure_ascii=False, indent=1), names, chat_template)

    def _hf_spec(self) -> dict:
        """This tokenizer as a tokenizer.json. Hugging Face's BPE merges the pair of lowest *merge rank*; tiktoken
        the pair whose concatenation has the lowest rank (the leftmost on a tie). Listing every split of every
        token into two tokens, in token order (as transformers' TikTokenConverter does), makes the first behave as
        the second, and ignore_merges adds tiktoken's shortcut (a piece that is a token is that token)."""
        as_text = {token: "".join(BYTE_CHARS[byte] for byte in token) for token in self.ranks}
        merges = []
        for token, _ in sorted(self.ranks.items(), key=lambda item: item[1]):
            splits = sorted((self.ranks[token[:i]], self.ranks[token[i:]], token[:i], token[i:])
                            for i in range(1, len(token)) if token[:i] in self.ranks and token[i:] in self.ranks)
            merges += [f"{as_text[left]} {as_text[right]}" for _, _, left, right in splits]
        added = [{"id": token_id, "content": token, "single_word": False, "lstrip": False, "rstrip": False,
                  "normalized": False, "special": True} for token_id, token in enumerate(SPECIAL_TOKENS)]
        vocab = {token: token_id for token_id, token in enumerate(SPECIAL_TOKENS)}
        vocab.update((as_text[token], token_id) for token, token_id in sorted(self.ranks.items(), key=lambda i: i[1]))
        return {
            "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": self.pattern}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
            "post_processor": None,
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                      "vocab": vocab, "merges": merges},
        }

    @classmethod
    def from_hf_spec(cls, spec: dict) -> Tokenizer | None:
        """Our Tokenizer if `spec` (a parsed tokenizer.json) is exactly what save_pretrained writes, else None."""
        try:
            if [token["content"] for token in spec["added_tokens"]] != list(SPECIAL_TOKENS):
                return None  # the quick test: someone else's tokenizer
            pattern = spec["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"]
            ranks = {_byte_level_bytes(token): token_id
                     for token, token_id in spec["model"]["vocab"].items() if token_id >= FIRST_BYTE_ID}
            tokenizer = cls(ranks, pattern)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError):
            return None
        return tokenizer if tokenizer._hf_spec() == spec else None


def _fingerprint(pattern: str, ranks: dict[bytes, int]) -> str:
    """sha256 over pattern, special tokens and all tokens in id order: equal vocabularies <=> equal fingerprints."""
    digest = hashlib.sha256(json.dumps([FORMAT_VERSION, pattern, SPECIAL_TOKENS]).encode("utf-8"))
    for token, _ in sorted(ranks.items(), key=lambda item: item[1]):
        digest.update(len(token).to_bytes(4, "big") + token)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# Hugging Face tokenizer.json: read exactly as the `tokenizers` library encodes, written for transformers
# ----------------------------------------------------------------------------------------------------------------

# A tokenizer.json stores a byte-level vocabulary as text: GPT-2 maps each byte to a printable character, the 188
# printable Latin-1 bytes to themselves and the other 68 (controls, space, ...) to U+0100 onwards ("Ġ" is the space).
_PRINTABLE_BYTES = [*range(33, 127), *range(161, 173), *range(174, 256)]
_OTHER_BYTES = [byte for byte in range(256) if byte not in _PRINTABLE_BYTES]
BYTE_CHARS = tuple(chr(byte) if byte in _PRINTABLE_BYTES else chr(256 + _OTHER_BYTES.index(byte))
                   for byte in range(256))
_BYTES_TO_CHARS = str.maketrans({chr(byte): char for byte, char in enumerate(BYTE_CHARS)})  # latin-1 str -> chars
_CHARS_TO_BYTES = str.maketrans({char: chr(byte) for byte, char in enumerate(BYTE_CHARS)})  # -> latin-1 str
_BYTE_CHAR_SET = frozenset(BYTE_CHARS)


def _byte_level_bytes(token: str) -> bytes | None:
    """The bytes a byte-level token stands for ("Ġthe" -> b" the"); None if it holds other characters."""
    return token.translate(_CHARS_TO_BYTES).encode("latin-1") if _BYTE_CHAR_SET.issuperset(token) else None


# The split GPT-2 (ByteLevel with use_regex) applies before mapping bytes.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# Conventional names, used for bos/eos only when neither tokenizer_config.json nor special_tokens_map.json names them.
CONVENTIONAL_BOS = ("<bos>", "<s>", "<|begin_of_text|>")
CONVENTIONAL_EOS = ("<eos>", "</s>", "<|end_of_text|>", "<|endoftext|>")
# Words (pre-tokens, or SentencePiece text cut at spaces) encoded once and then looked up: prose repeats its words
# (80% of lookups hit in the first MB, more later; 2 -> 8 MB/s). Cleared when full: a 1 TB corpus never overflows it.
WORD_CACHE_SIZE = 1 << 18


@dataclass(frozen=True)
class AddedToken:
    """One entry of tokenizer.json's "added_tokens": matched in the text before the model sees it."""

    content: str
    id: int
    special: bool = False
    single_word: bool = False  # match only where no word character touches it
    lstrip: bool = False  # the match swallows the whitespace on its left
    rstrip: bool = False  # ... on its right
    normalized: bool = True  # matched in the normalized text (else in the raw text)


class HFTokenizer:
    """A Hugging Face tokenizer.json with a BPE model, encoded and decoded exactly as `tokenizers` does.

    Supported (the Llama family's two kinds; anything else is refused naming the component):
      SentencePiece-converted (Llama-2, Mistral, Gemma, Fox-1): normalizer Prepend("▁") / Replace(" ", "▁"), no
        pre-tokenizer or Metaspace, a vocabulary of characters with <0x00>..<0xFF> byte fallback for the rest,
        decoder Replace / ByteFallback / Fuse / Strip;
      byte-level (GPT-2, Llama-3, Qwen): optional NFC-style normalizer, Split(regex) + ByteLevel, decoder ByteLevel.
    The pipeline, as in `tokenizers`: split the text at added tokens, normalize each other piece, pre-tokenize it
    into words, and run BPE on each word: start from its characters and repeatedly merge the adjacent pair with the
    lowest *merge rank* (the leftmost on a tie) - not tiktoken's "lowest rank of the concatenation".

    Added tokens: allow_special=True matches all of them in the text (`tokenizers`' default); allow_special=False
    (our default) matches only the non-special ones, as `tokenizers` does with encode_special_tokens=True
    (transformers' split_special_tokens=True), so "<eos>" typed by a user stays text. encode() never adds bos/eos
    (the post-processor is ignored: callers add them). Ids outside the vocabulary raise ValueError in decode
    (`tokenizers` drops them silently).
    """

    def __init__(self, spec: dict, fingerprint: str, special_names: dict[str, str | None]) -> None:
        self.fingerprint = fingerprint
        self.path: Path | None = None  # the file it was read from (from_spec): save_pretrained copies it
        self._normalize = _normalizer(spec.get("normalizer"))
        self._pre_tokenize, self.byte_level = _pre_tokenizer(spec.get("pre_tokenizer"))
        self._decode_tokens = _decoder(spec.get("decoder"))
        model = spec.get("model") or {}
        self._load_model(model)
        self.added = [AddedToken(**{key: entry[key] for key in AddedToken.__dataclass_fields__ if key in entry})
                      for entry in spec.get("added_tokens") or []]
        self._token_of = {token_id: token for token, token_id in self.vocab.items()}
        # tokenizers gives a normalized added token its normalized text ("hi" is "▁hi" after Prepend("▁")).
        self._token_of.update((token.id, self._normalize(token.content) if token.normalized else token.content)
                              for token in self.added)
        self.vocab_size = max(self._token_of) + 1
        self.special_ids = frozenset(token.id for token in self.added)  # special or not: token healing skips them
        self._raw_matcher = _added_matcher([t for t in self.added if not t.normalized], lambda text: text)
        self._normalized_matcher = _added_matcher([t for t in self.added if t.normalized], self._normalize)
        # Cutting a word and encoding its parts would skip ignore_merges' check of the whole word: not with it.
        self._cut = None if self.byte_level or self.ignore_merges else _sentencepiece_cutter(
            self.vocab, model.get("unk_token"), self.byte_fallback)
        self._token_bytes = self._all_token_bytes(spec.get("decoder"))
        self._cache: dict[str, list[int]] = {}
        self.bos_id, self.eos_id, self.pad_id = (self._special_id(special_names.get(key), conventional)
                                                 for key, conventional in (("bos_token", CONVENTIONAL_BOS),
                                                                           ("eos_token", CONVENTIONAL_EOS),
                                                                           ("pad_token", ("<pad>",))))

    def _load_model(self, model: dict) -> None:
        if model.get("type") != "BPE":
            raise ValueError(f"model {model.get('type')!r} (only BPE is supported)")
        for key in ("dropout", "continuing_subword_prefix", "end_of_word_suffix"):
            if model.get(key):
                raise ValueError(f"model BPE with {key} {model[key]!r} (only without)")
        self.vocab: dict[str, int] = model["vocab"]
        self.byte_fallback, self.fuse_unk = bool(model.get("byte_fallback")), bool(model.get("fuse_unk"))
        self.ignore_merges = bool(model.get("ignore_merges"))
        unk = model.get("unk_token")
        if unk is not None and unk not in self.vocab:
            raise ValueError(f"model unk_token {unk!r} is not in the vocabulary")
        self.unk_id = None if unk is None else self.vocab[unk]
        self.merges: dict[tuple[int, int], tuple[int, int]] = {}  # (left id, right id) -> (rank, merged id)
        vocab = self.vocab
        for rank, merge in enumerate(model["merges"]):
            left, right = merge.split(" ") if isinstance(merge, str) else merge  # "a b" (older files) or ["a", "b"]
            try:
                self.merges[vocab[left], vocab[right]] = (rank, vocab[left + right])
            except KeyError as missing:
                raise ValueError(f"merge {left!r} + {right!r}: {missing} is not in the vocabulary") from None

    @classmethod
    def load(cls, path: str | Path, special_names: dict[str, str | None] | None = None) -> HFTokenizer:
        """Read a tokenizer.json; bos/eos/pad names from `special_names` (see load_tokenizer)."""
        return cls.from_spec(*_read_tokenizer_json(path), special_names or {}, path)

    @classmethod
    def from_spec(cls, spec: dict, fingerprint: str, special_names: dict[str, str | None], path: str | Path):
        """From a parsed tokenizer.json; anything unsupported or inconsistent is an InputError naming `path`."""
        try:
            tokenizer = cls(spec, fingerprint, special_names)
        except (ValueError, KeyError, TypeError, AttributeError, regex.error) as error:
            problem = f"{type(error).__name__}: {error}"
            raise InputError(f"{path}: unsupported or damaged tokenizer.json ({problem})") from None
        tokenizer.path = Path(path)
        return tokenizer

    def save_pretrained(self, directory: str | Path, chat_template: str | None = None) -> None:
        """Copy the tokenizer.json this was read from (byte for byte: same fingerprint) and write
        tokenizer_config.json (bos/eos/pad, chat_template) and special_tokens_map.json next to it."""
        try:
            data = Path(self.path).read_bytes()
        except (OSError, TypeError) as error:  # TypeError: built from a spec, not read from a file
            raise InputError(f"{self.path}: cannot read tokenizer file ({error})") from None
        if hashlib.sha256(data).hexdigest() != self.fingerprint:
            raise InputError(f"{self.path}: changed since it was loaded; load it again")
        names = {f"{name}_token": self._token_of[token_id] for name, token_id in
                 (("bos", self.bos_id), ("eos", self.eos_id), ("pad", self.pad_id)) if token_id is not None}
        _save_hf_tokenizer(directory, data, names, chat_template)

    def _special_id(self, name: str | None, conventional: tuple[str, ...]) -> int | None:
        for candidate in (name,) if name is not None else conventional:
            if self.token_id(candidate) is not None:
                return self.token_id(candidate)
        if name is not None:
            raise ValueError(f"special token {name!r} named by the tokenizer config is not in the vocabulary")
        return None

    def token_id(self, text: str) -> int | None:
        """The id of an added token or vocabulary entry written exactly so ("<end_of_turn>", "▁the"), else None."""
        for token in self.added:
            if token.content == text:
                return token.id
        return self.vocab.get(text)

    # --- encoding ---

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        """Text -> ids, as `tokenizers` encode(text, add_special_tokens=False) (see the class docstring)."""
        ids: list[int] = []
        for piece in self._raw_matcher(text, allow_special, True):
            if isinstance(piece, int):  # an added token's id
                ids.append(piece)
                continue
            for sub_piece in self._normalized_matcher(self._normalize(piece[0]), allow_special, piece[1]):
                if isinstance(sub_piece, int):
                    ids.append(sub_piece)
                    continue
                for word in self._pre_tokenize(*sub_piece):
                    for segment in self._cut(word) if self._cut else (word,):
                        cached = self._cache.get(segment)
                        ids += cached if cached is not None else self._encode_new_word(segment)
        return ids

    def encode_batch(self, texts: list[str], *, num_threads: int = 8, allow_special: bool = False) -> list[list[int]]:
        """encode() for each text (pure Python holds the GIL: num_threads is accepted for the common interface)."""
        return [self.encode(text, allow_special=allow_special) for text in texts]

    def _encode_new_word(self, word: str) -> list[int]:
        """BPE on a word not in the cache, which then keeps its ids."""
        text = word.encode("utf-8").decode("latin-1").translate(_BYTES_TO_CHARS) if self.byte_level else word
        if self.ignore_merges and text in self.vocab:  # Llama-3: a word that is a token is that token
            ids = [self.vocab[text]]
        else:
            symbols = self._initial_symbols(text)
            ids = (_merge_short if len(symbols) <= SHORT_WORD else _merge_all)(symbols, self.merges)
        if len(self._cache) >= WORD_CACHE_SIZE:
            self._cache.clear()
        self._cache[word] = ids
        return ids

    def _initial_symbols(self, word: str) -> list[int]:
        """One symbol per character (tokenizers' merge_word): its token; else its UTF-8 bytes as <0xXX> tokens
        (byte_fallback); else the unk token (one for a run of them with fuse_unk); else the character is dropped."""
        symbols = [self.vocab.get(char) for char in word]
        if None not in symbols:  # the usual case: every character is a token
            return symbols
        symbols, unknown_pending = [], False
        for char in word:
            token_id = self.vocab.get(char)
            if token_id is not None:
                if unknown_pending:
                    symbols.append(self.unk_id)
                    unknown_pending = False
                symbols.append(token_id)
                continue
            if self.byte_fallback:
                fallback = [self.vocab.get(f"<0x{byte:02X}>") for byte in char.encode("utf-8")]
                if None not in fallback:
                    symbols += fallback  # a pending unk stays pending, as in tokenizers
                    continue
            if self.unk_id is not None:
                if unknown_pending and not self.fuse_unk:
                    symbols.append(self.unk_id)
                unknown_pending = True
        if unknown_pending:
            symbols.append(self.unk_id)
        return symbols

    # --- decoding ---

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text exactly as `tokenizers` decode(ids, skip_special_tokens=False)."""
        tokens = [self._token(token_id) for token_id in ids]
        return "".join(self._decode_tokens(tokens)) if self._decode_tokens else " ".join(tokens)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Ids -> the bytes of each token, concatenated (for streaming). Unlike decode() no leading space is
        stripped: a SentencePiece "▁the" is b" the" wherever it stands."""
        try:
            return b"".join([self._token_bytes[token_id] for token_id in ids])
        except KeyError as error:
            raise ValueError(f"token id outside the vocabulary of {self.vocab_size}: {error}") from None

    def ids_starting_with(self, prefix: bytes) -> list[int]:
        """Ids of the ordinary (not added) tokens whose bytes begin with `prefix` (token healing in sample.py)."""
        return sorted(token_id for token_id, data in self._token_bytes.items()
                      if data.startswith(prefix) and token_id not in self.special_ids)

    def _token(self, token_id: int) -> str:
        token = self._token_of.get(token_id)
        if token is None:
            raise ValueError(f"token id outside the vocabulary of {self.vocab_size}: {token_id}")
        return token

    def _all_token_bytes(self, decoder: dict | None) -> dict[int, bytes]:
        """What each token stands for: byte-level characters mapped back to bytes; <0xXX> its byte; other text
        (and added tokens) with the decoder's replacements ("▁" -> " ") in UTF-8."""
        replacements = _decoder_replacements(decoder)
        token_bytes = {}
        for token_id, token in self._token_of.items():
            data = None
            if token_id not in self.special_ids and self.byte_level:
                data = _byte_level_bytes(token)
            elif token_id not in self.special_ids and self.byte_fallback and _BYTE_TOKEN.fullmatch(token):
                data = bytes([int(token[3:5], 16)])
            if data is None:
                for old, new in replacements:
                    token = token.replace(old, new)
                data = token.encode("utf-8")
            token_bytes[token_id] = data
        return token_bytes


def _merge_short(symbols: list[int], merges: dict[tuple[int, int], tuple[int, int]]) -> list[int]:
    """_merge_all for short words, 3x faster in Python: keep each adjacent pair's (rank, merged id) in a list and
    merge at the first minimum (min and index run in C), updating the two pairs that change. O(n^2): long words
    (a paragraph of Chinese has no spaces) go to _merge_all."""
    get = merges.get
    pairs = [get(pair, _NO_MERGE) for pair in zip(symbols, symbols[1:])]
    symbols = list(symbols)
    while pairs and (best := min(pairs)) is not _NO_MERGE:
        at = pairs.index(best)  # the leftmost pair of lowest rank
        symbols[at : at + 2] = (new := best[1],)
        del pairs[at]
        if at:
            pairs[at - 1] = get((symbols[at - 1], new), _NO_MERGE)
        if at < len(pairs):
            pairs[at] = get((new, symbols[at + 1]), _NO_MERGE)
    return symbols


_NO_MERGE = (1 << 62, -1)  # ranks far beyond any vocabulary: sorts after every merge
SHORT_WORD = 48  # symbols; measured crossover of _merge_short and _merge_all


def _merge_all(symbols: list[int], merges: dict[tuple[int, int], tuple[int, int]]) -> list[int]:
    """BPE on one word as `tokenizers` does it (word.rs merge_all): repeatedly merge the adjacent pair with the
    lowest merge rank, the leftmost on a tie, until no adjacent pair is a merge. A heap of (rank, position, merged
    id) and a linked list keep each merge O(log n), so a 10,000-character word without spaces stays fast.

    Example, merges [("a","b") -> "ab" rank 0, ("b","c") -> "bc" rank 1, ("ab","c") -> "abc" rank 2]: "abcbc" ->
    a b c b c -> ab c b c (rank 0) -> ab c bc (rank 1; (ab, c) has rank 2) -> abc bc (rank 2).
    """
    if len(symbols) < 2:
        return symbols
    symbols = list(symbols)
    after = list(range(1, len(symbols) + 1))  # index of the next live symbol (len(symbols): none)
    before = list(range(-1, len(symbols) - 1))
    heap = [(merge[0], index, merge[1]) for index, pair in enumerate(zip(symbols, symbols[1:]))
            if (merge := merges.get(pair)) is not None]
    heapq.heapify(heap)
    while heap:
        _, index, new = heapq.heappop(heap)
        right = after[index] if symbols[index] is not None else len(symbols)
        if right == len(symbols) or merges.get((symbols[index], symbols[right]), (0, None))[1] != new:
            continue  # stale: this symbol was merged away, or its pair changed since the entry was pushed
        symbols[index], symbols[right] = new, None
        after[index] = after[right]
        if after[index] < len(symbols):
            before[after[index]] = index
            if (merge := merges.get((new, symbols[after[index]]))) is not None:
                heapq.heappush(heap, (merge[0], index, merge[1]))
        if before[index] >= 0 and (merge := merges.get((symbols[before[index]], new))) is not None:
            heapq.heappush(heap, (merge[0], before[index], merge[1]))
    return [symbol for symbol in symbols if symbol is not None]


_WORD_CHAR = regex.compile(r"\w")
_BYTE_TOKEN = regex.compile("<0x[0-9A-Fa-f]{2}>")  # byte fallback tokens
_SPACE_CHAR = regex.compile(r"\p{White_Space}")


def _added_matcher(tokens: list[AddedToken], normalize: Callable[[str], str]) -> Callable:
    """A function splitting a text at these added tokens as `tokenizers` does (leftmost-longest matches; the
    single_word / lstrip / rstrip rules): yields token ids and (piece, is_first) for the text between them, where
    is_first says the piece starts the text (for Metaspace's prepend_scheme "first"). Normalized tokens are matched
    in their normalized form ("hi" is "▁hi" after a Prepend("▁") normalizer)."""
    by_pattern: dict[str, AddedToken] = {}
    for token in tokens:
        by_pattern.setdefault(normalize(token.content), token)
    patterns = sorted((pattern for pattern in by_pattern if pattern), key=len, reverse=True)  # longest first
    alternation = regex.compile("|".join(map(regex.escape, patterns))) if patterns else None

    def split(text: str, allow_special: bool, is_first: bool) -> Iterator[int | tuple[str, bool]]:
        done = 0  # text[:done] is yielded
        for match in alternation.finditer(text) if alternation else ():
            token = by_pattern[match.group()]
            start, stop = match.span()
            if token.special and not allow_special:
                continue
            if token.single_word and ((start > 0 and _WORD_CHAR.match(text[start - 1]))
                                      or (stop < len(text) and _WORD_CHAR.match(text[stop]))):
                continue
            while token.lstrip and start > done and _SPACE_CHAR.match(text[start - 1]):
                start -= 1
            while token.rstrip and stop < len(text) and _SPACE_CHAR.match(text[stop]):
                stop += 1
            if start > done:
                yield text[done:start], is_first and done == 0
            yield token.id
            done = stop
        if done < len(text) or not text:
            yield text[done:], is_first and done == 0

    return split


def _sentencepiece_cutter(vocab: dict[str, int], unk_token: str | None, byte_fallback: bool):
    """Without a pre-tokenizer (Llama-2, Gemma) a whole text is one BPE word. Cut it before each "▁" that follows a
    character x where no token contains x + "▁": no symbol can then span the cut, so no merge crosses it and the
    pieces can be encoded separately (and cached). None where that is not safe."""
    space = "\u2581"
    if space not in vocab:
        return None
    before_space = set()
    for token in vocab:
        at = token.find(space, 1)
        while at > 0:
            before_space.add(token[at - 1])
            at = token.find(space, at + 1)
    before_space.discard(space)
    # A character outside the vocabulary becomes <0xXX> tokens, the unk token, or nothing (dropped, so its
    # neighbours meet): then the character before the cut is not the one checked above.
    all_bytes = byte_fallback and all(f"<0x{byte:02X}>" in vocab for byte in range(256))
    if before_space and (">" in before_space or (unk_token or ">")[-1] in before_space
                         or not (all_bytes or unk_token)):
        return None
    return regex.compile(f"(?<=[^{space}{regex.escape(''.join(sorted(before_space)))}])(?={space})").split


def _compile_pattern(spec: dict) -> regex.Pattern:
    """A tokenizer.json pattern: {"Regex": "..."} (Oniguruma syntax, which `regex` reads alike) or {"String": s}."""
    if "Regex" in spec:
        return regex.compile(spec["Regex"])
    return regex.compile(regex.escape(spec["String"]))


def _normalizer(spec: dict | None) -> Callable[[str], str]:
    if spec is None:
        return lambda text: text
    kind = spec.get("type")
    if kind == "Sequence":
        steps = [_normalizer(step) for step in spec["normalizers"]]
        return lambda text: _chain(steps, text)
    if kind == "Prepend":
        prefix = spec["prepend"]
        return lambda text: prefix + text if text else text
    if kind == "Replace" and "String" in spec["pattern"]:
        old, new = spec["pattern"]["String"], spec["content"]
        return lambda text: text.replace(old, new)
    if kind == "Replace":
        pattern, content = _compile_pattern(spec["pattern"]), spec["content"]
        return lambda text: pattern.sub(lambda _: content, text)  # a function: `content` is not a template
    if kind in ("NFC", "NFD", "NFKC", "NFKD"):
        return partial(unicodedata.normalize, kind)
    raise ValueError(f"normalizer {kind!r} (supported: Sequence, Prepend, Replace, NFC, NFD, NFKC, NFKD)")


def _chain(steps: list[Callable], value):
    for step in steps:
        value = step(value)
    return value


def _pre_tokenizer(spec: dict | None) -> tuple[Callable[[str, bool], list[str]], bool]:
    """(text, is_first) -> words; and whether the last step is ByteLevel (words are then mapped to byte characters)."""
    steps = spec["pretokenizers"] if spec and spec.get("type") == "Sequence" else [spec] if spec else []
    functions, byte_level = [], False
    for step in steps:
        kind = step.get("type")
        if byte_level:
            raise ValueError(f"pre_tokenizer {kind!r} after ByteLevel (ByteLevel must come last)")
        if kind == "Split":
            if step.get("behavior") not in _SPLIT_BEHAVIORS:
                raise ValueError(f"pre_tokenizer Split with behavior {step.get('behavior')!r}")
            functions.append(partial(_split, _compile_pattern(step["pattern"]), step["behavior"], step.get("invert")))
        elif kind == "ByteLevel":
            byte_level = True
            if step.get("add_prefix_space") or step.get("use_regex", True):
                functions.append(partial(_byte_level_split, step.get("add_prefix_space"), step.get("use_regex", True)))
        elif kind == "Metaspace":
            functions.append(partial(_metaspace_split, step.get("replacement", "\u2581"), _prepend_scheme(step),
                                     step.get("split", True)))
        else:
            raise ValueError(f"pre_tokenizer {kind!r} (supported: Sequence, Split, ByteLevel, Metaspace)")

    def pre_tokenize(text: str, is_first: bool) -> list[str]:
        pieces = [text] if text else []  # an empty piece gets no "▁" or " " prepended
        for function in functions:
            split = [function(piece, is_first and index == 0) for index, piece in enumerate(pieces)]
            is_first = is_first and bool(split) and bool(split[0])
            pieces = [word for words in split for word in words if word]
        return pieces

    return pre_tokenize, byte_level


_SPLIT_BEHAVIORS = ("Isolated", "Removed", "MergedWithPrevious", "MergedWithNext", "Contiguous")


def _split(pattern: regex.Pattern, behavior: str, invert: bool, text: str, is_first: bool = False) -> list[str]:
    """tokenizers' Split: the matches (or with invert, the text between them) are delimiters, which are
    Isolated (own pieces), Removed, MergedWithPrevious / MergedWithNext piece, or Contiguous (runs merged)."""
    if behavior == "Isolated" and not pattern.groups:  # (findall returns the groups of a pattern that has some)
        pieces = pattern.findall(text)
        if sum(map(len, pieces)) == len(text):  # the usual case: the matches cover the text; findall is C speed
            return pieces
    parts, done = [], 0  # (text, is a delimiter)
    for match in pattern.finditer(text):
        start, stop = match.span()
        if start > done:
            parts.append((text[done:start], bool(invert)))
        if stop > start:
            parts.append((text[start:stop], not invert))
        done = max(done, stop)
    if done < len(text):
        parts.append((text[done:], bool(invert)))
    if behavior == "Isolated":
        return [part for part, _ in parts]
    if behavior == "Removed":
        return [part for part, delimiter in parts if not delimiter]
    return _merge_delimiters(parts, behavior)


def _merge_delimiters(parts: list[tuple[str, bool]], behavior: str) -> list[str]:
    """MergedWithPrevious: a delimiter joins the piece before it (unless that is a delimiter too); MergedWithNext:
    the piece after it (the same walk from the right); Contiguous: runs of delimiters become one piece."""
    backwards = behavior == "MergedWithNext"
    pieces: list[str] = []
    previous = False
    for part, delimiter in reversed(parts) if backwards else parts:
        joins = delimiter == previous if behavior == "Contiguous" else delimiter and not previous
        if joins and pieces:
            pieces[-1] = part + pieces[-1] if backwards else pieces[-1] + part
        else:
            pieces.append(part)
        previous = delimiter
    return pieces[::-1] if backwards else pieces


def _byte_level_split(add_prefix_space: bool, use_regex: bool, text: str, is_first: bool) -> list[str]:
    if add_prefix_space and not text.startswith(" "):
        text = " " + text
    return _split(_GPT2_SPLIT, "Isolated", False, text) if use_regex else [text]


_GPT2_SPLIT = regex.compile(GPT2_PATTERN)


def _prepend_scheme(spec: dict) -> str:
    if "prepend_scheme" in spec:
        return spec["prepend_scheme"]
    return "always" if spec.get("add_prefix_space", True) else "never"  # files from before prepend_scheme


def _metaspace_split(replacement: str, scheme: str, split: bool, text: str, is_first: bool) -> list[str]:
    """Spaces become "▁", one is prepended ("always", or "first" for the start of the text), and with split each
    "▁" starts a new word."""
    text = text.replace(" ", replacement)
    if (scheme == "always" or scheme == "first" and is_first) and not text.startswith(replacement):
        text = replacement + text
    return _split(regex.compile(regex.escape(replacement)), "MergedWithNext", False, text) if split else [text]


def _decoder(spec: dict | None) -> Callable[[list[str]], list[str]] | None:
    """The decoder chain: token strings -> strings, joined at the end (None: `tokenizers` joins with spaces)."""
    if spec is None:
        return None
    kind = spec.get("type")
    if kind == "Sequence":
        steps = [_decoder(step) for step in spec["decoders"]]
        return lambda tokens: _chain(steps, tokens)
    if kind == "Replace" and "String" in spec["pattern"]:
        old, new = spec["pattern"]["String"], spec["content"]
        return lambda tokens: [token.replace(old, new) for token in tokens]
    if kind == "ByteFallback":
        return _byte_fallback_decode
    if kind == "Fuse":
        return lambda tokens: ["".join(tokens)]
    if kind == "Strip":
        return partial(_strip_decode, spec["content"], spec["start"], spec["stop"])
    if kind == "ByteLevel":
        return _byte_level_decode
    if kind == "Metaspace":
        return partial(_metaspace_decode, spec.get("replacement", "\u2581"), _prepend_scheme(spec))
    raise ValueError(f"decoder {kind!r} (supported: Sequence, Replace of a string, ByteFallback, Fuse, Strip, "
                     f"ByteLevel, Metaspace)")


def _decoder_replacements(spec: dict | None) -> list[tuple[str, str]]:
    """The string replacements a decoder makes inside each token ("▁" -> " "), in order."""
    if spec is None:
        return []
    if spec.get("type") == "Sequence":
        return [pair for step in spec["decoders"] for pair in _decoder_replacements(step)]
    if spec.get("type") == "Replace":
        return [(spec["pattern"]["String"], spec["content"])]
    if spec.get("type") == "Metaspace":
        return [(spec.get("replacement", "\u2581"), " ")]
    return []


def _byte_fallback_decode(tokens: list[str]) -> list[str]:
    """Runs of <0xXX> tokens become their UTF-8 text, or one U+FFFD per byte if they are not valid UTF-8."""
    decoded, run = [], bytearray()
    for token in tokens + [""]:  # "": flushes the last run
        if _BYTE_TOKEN.fullmatch(token):
            run.append(int(token[3:5], 16))
            continue
        if run:
            try:
                decoded.append(run.decode("utf-8"))
            except UnicodeDecodeError:
                decoded += ["\ufffd"] * len(run)
            run.clear()
        decoded.append(token)
    return decoded[:-1]


def _strip_decode(content: str, start: int, stop: int, tokens: list[str]) -> list[str]:
    """Remove up to `start` leading and `stop` trailing `content` characters from each token."""
    stripped = []
    for token in tokens:
        begin = 0
        while begin < min(start, len(token)) and token[begin] == content:
            begin += 1
        end = len(token)
        while len(token) - end < stop and end > 0 and token[end - 1] == content:
            end -= 1
        stripped.append(token[begin:end])
    return stripped


def _byte_level_decode(tokens: list[str]) -> list[str]:
    data = bytearray()
    for token in tokens:
        token_bytes = _byte_level_bytes(token)
        data += token_bytes if token_bytes is not None else token.encode("utf-8")  # an added token in plain text
    return [data.decode("utf-8", errors="replace")]


def _metaspace_decode(replacement: str, scheme: str, tokens: list[str]) -> list[str]:
    """"▁" -> " ", except in the first token (when a prefix was prepended) where it is removed."""
    return [token.replace(replacement, "" if index == 0 and scheme != "never" else " ")
            for index, token in enumerate(tokens)]


def _save_hf_tokenizer(directory: str | Path, tokenizer_json: str | bytes, names: dict, chat_template: str | None):
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json, as transformers' AutoTokenizer reads them."""
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **names, "clean_up_tokenization_spaces": False}
    if chat_template is not None:
        config["chat_template"] = chat_template
    directory = Path(directory)
    try:
        write_atomic(directory / "tokenizer.json", tokenizer_json)
        write_atomic(directory / "tokenizer_config.json", json.dumps(config, ensure_ascii=False, indent=2))
        write_atomic(directory / "special_tokens_map.json", json.dumps(names, ensure_ascii=False, indent=2))
    except OSError as error:
        raise InputError(f"{directory}: cannot write the Hugging Face tokenizer files ({error})") from None


def load_tokenizer(path: str | Path) -> Tokenizer | HFTokenizer:
    """Our tokenizer.txt, a Hugging Face tokenizer.json, or a model folder holding either (tokenizer.json first).

    Both kinds answer encode / encode_batch / decode / decode_bytes / ids_starting_with / token_id, vocab_size,
    bos_id / eos_id / pad_id, special_ids and fingerprint. A tokenizer.json that save_pretrained wrote is read back
    as our Tokenizer (same fingerprint, tiktoken speed). For other tokenizer.json files bos/eos/pad come from the
    folder's tokenizer_config.json, else special_tokens_map.json (bos_token / eos_token / pad_token), else the
    conventional names CONVENTIONAL_BOS / CONVENTIONAL_EOS / "<pad>" where the vocabulary has them, else None.
    """
    path = Path(path)
    if path.is_dir():
        for name in ("tokenizer.json", "tokenizer.txt"):
            if (path / name).is_file():
                return load_tokenizer(path / name)
        raise InputError(f"{path}: no tokenizer.json or tokenizer.txt in this folder")
    if path.suffix != ".json":
        return Tokenizer.load(path)
    spec, fingerprint = _read_tokenizer_json(path)
    own = Tokenizer.from_hf_spec(spec)
    return own if own is not None else HFTokenizer.from_spec(spec, fingerprint, _special_token_names(path.parent), path)


def _read_tokenizer_json(path: str | Path) -> tuple[dict, str]:
    """(the parsed file, sha256 of its bytes: the fingerprint of a Hugging Face tokenizer)."""
    try:
        data = Path(path).read_bytes()
        return json.loads(data), hashlib.sha256(data).hexdigest()
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: cannot read tokenizer file ({error})") from None


def _special_token_names(directory: Path) -> dict[str, str | None]:
    """bos_token / eos_token / pad_token from tokenizer_config.json, else special_tokens_map.json (strings or
    {"content": ...} dicts)."""
    names: dict[str, str | None] = {}
    for file in (directory / "special_tokens_map.json", directory / "tokenizer_config.json"):  # the config wins
        if not file.is_file():
            continue
        try:
            config = json.loads(file.read_text(encoding="utf-8"))
            for key in ("bos_token", "eos_token", "pad_token"):
                value = config.get(key)
                if value is not None:
                    names[key] = value["content"] if isinstance(value, dict) else value
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
            raise InputError(f"{file}: cannot read special token names ({error})") from None
    return names


# ----------------------------------------------------------------------------------------------------------------
# Reading documents: plain text / JSONL files, optionally gzipped (data.py reads its inputs with these too)
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
    tokenizer = load_tokenizer(args.tokenizer)
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
    encode.add_argument("--tokenizer", required=True,
                        help="tokenizer file written by 'train', a tokenizer.json or a model folder")
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
