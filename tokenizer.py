"""Byte-level BPE for Fox-1: trained from scratch, encoded at native speed through tiktoken.

Fox-1 (arXiv 2411.05281) bets on a large 256K vocabulary (Gemma-style: <pad>=0, <eos>=1, <bos>=2, <unk>=3, here
followed by the instruct model's <start_of_turn>=4 and <end_of_turn>=5) so that each token carries more text. This
file, top to bottom:

  training  count each distinct pre-token once (regex split, in worker processes), then learn merges:
            `train_reference` is the textbook trainer, `learn_merges` the same result with incremental pair counts;
  encoding  Tokenizer.encode / decode through tiktoken, and `encode_reference`, the same ids in pure Python;
  files     Tokenizer.save / load: a text header, then one token per line as "base64(bytes) id preview";
            save_pretrained writes a Hugging Face tokenizer.json (fox1/hf_tokenizer.py); `load_tokenizer` reads
            ours, any Llama-family tokenizer.json, or a model folder.

Ids: 0..5 the special tokens, 6..261 the 256 bytes, then the merges in the order they were learned.

Run:
  python tokenizer.py train --input 'corpus/**/*.txt' data.jsonl --vocab-size 32768 --out out/tokenizer.txt
  python tokenizer.py encode --tokenizer out/tokenizer.txt "some text"     # also a tokenizer.json or model folder
"""
from __future__ import annotations

import hashlib
import heapq
import json
import os
import sys
from collections import Counter, defaultdict
from functools import lru_cache, partial
from pathlib import Path
from typing import Iterable

import numpy as np
import regex
import tiktoken
from tqdm import tqdm

from fox1.bpe_file import read_bpe_file, write_bpe_file
from fox1.files import CHUNK_CHARS, InputError, document_chunks, ordered_map
from fox1.hf_tokenizer import (HFTokenizer, byte_level_ranks, byte_level_spec, read_tokenizer_json,
                               save_hf_tokenizer, special_token_names)
from fox1.shards import TOKEN_DTYPE

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
    special_tokens = SPECIAL_TOKENS

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

    def encode_to_numpy(self, text: str) -> np.ndarray:
        """encode() as a uint32 array, straight from tiktoken's buffer (no Python list): data preparation."""
        return self._encoding.encode_to_numpy(text, allowed_special=set(), disallowed_special=())

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
        """Write the human-inspectable tokenizer file (fox1/bpe_file.py) atomically."""
        write_bpe_file(path, self.ranks, self.pattern, SPECIAL_TOKENS, self.fingerprint, FORMAT_VERSION)

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Read a file written by save(); a missing, truncated or corrupt file raises InputError naming it."""
        ranks, pattern, fingerprint = read_bpe_file(path, SPECIAL_TOKENS, FORMAT_VERSION)
        try:
            tokenizer = cls(ranks, pattern)  # ValueError from tiktoken if the pattern is not a valid regex
        except ValueError as error:
            raise InputError(f"{path}: corrupt or truncated tokenizer file ({error})") from None
        if tokenizer.fingerprint != fingerprint:
            raise InputError(f"{path}: corrupt or truncated tokenizer file (fingerprint mismatch: the token lines "
                             f"were changed or damaged)")
        return tokenizer

    def save_pretrained(self, directory: str | Path, chat_template: str | None = None) -> None:
        """Write a Hugging Face tokenizer: tokenizer.json (byte-level BPE, `byte_level_spec`), tokenizer_config.json
        (bos/eos/pad/unk, chat_template) and special_tokens_map.json, so that transformers' AutoTokenizer encodes
        and decodes exactly as this one."""
        names = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
                 "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]}
        spec = byte_level_spec(self.ranks, self.pattern, SPECIAL_TOKENS)
        save_hf_tokenizer(directory, json.dumps(spec, ensure_ascii=False, indent=1), names, chat_template)

    @classmethod
    def from_hf_spec(cls, spec: dict) -> Tokenizer | None:
        """Our Tokenizer if `spec` (a parsed tokenizer.json) is exactly what save_pretrained writes, else None."""
        found = byte_level_ranks(spec, SPECIAL_TOKENS)
        try:
            tokenizer = cls(*found) if found else None
        except ValueError:
            return None
        if tokenizer is None or byte_level_spec(tokenizer.ranks, tokenizer.pattern, SPECIAL_TOKENS) != spec:
            return None
        return tokenizer


def _fingerprint(pattern: str, ranks: dict[bytes, int]) -> str:
    """sha256 over pattern, special tokens and all tokens in id order: equal vocabularies <=> equal fingerprints."""
    digest = hashlib.sha256(json.dumps([FORMAT_VERSION, pattern, SPECIAL_TOKENS]).encode("utf-8"))
    for token, _ in sorted(ranks.items(), key=lambda item: item[1]):
        digest.update(len(token).to_bytes(4, "big") + token)
    return digest.hexdigest()


def load_tokenizer(path: str | Path) -> Tokenizer | HFTokenizer:
    """Our tokenizer.txt, a Hugging Face tokenizer.json, or a model folder holding either (tokenizer.json first).

    Both kinds answer encode / encode_batch / decode / decode_bytes / ids_starting_with / token_id, vocab_size,
    bos_id / eos_id / pad_id, special_ids and fingerprint. A tokenizer.json that save_pretrained wrote is read back
    as our Tokenizer (same fingerprint, tiktoken speed). For other tokenizer.json files bos/eos/pad come from the
    folder's tokenizer_config.json, else special_tokens_map.json (bos_token / eos_token / pad_token), else the
    conventional names hf_tokenizer's CONVENTIONAL_BOS / _EOS / "<pad>" where the vocabulary has them, else None.
    """
    path = Path(path)
    if path.is_dir():
        for name in ("tokenizer.json", "tokenizer.txt"):
            if (path / name).is_file():
                return load_tokenizer(path / name)
        raise InputError(f"{path}: no tokenizer.json or tokenizer.txt in this folder")
    if path.suffix != ".json":
        return Tokenizer.load(path)
    spec, fingerprint = read_tokenizer_json(path)
    own = Tokenizer.from_hf_spec(spec)
    return own if own is not None else HFTokenizer.from_spec(spec, fingerprint, special_token_names(path.parent), path)


# ----------------------------------------------------------------------------------------------------------------
# Documents -> training token streams (python data.py prepare)
# ----------------------------------------------------------------------------------------------------------------


def cached_tokenizer(path: str | Path) -> Tokenizer:
    """load_tokenizer(path) (tokenizer.txt, tokenizer.json or a folder), loaded once per process and file
    version: the workers that encode chunk after chunk, and every source of one run, share one."""
    stat = Path(path).stat()
    return _load_tokenizer(str(path), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=2)
def _load_tokenizer(path: str, mtime_ns: int, size: int) -> Tokenizer:
    return load_tokenizer(path)


def encode_documents(job: tuple[str, list[str]]) -> tuple[np.ndarray, np.ndarray, int]:
    """(tokenizer path, documents) -> (all their tokens as <bos> ids <eos>, one after another, uint32; lengths;
    UTF-8 bytes). `prepare` (cli/data.py) encodes sources with it in worker processes, which import this module, not torch."""
    tokenizer_path, documents = job
    tokenizer = cached_tokenizer(tokenizer_path)
    bos, eos = np.array([tokenizer.bos_id], TOKEN_DTYPE), np.array([tokenizer.eos_id], TOKEN_DTYPE)
    pieces, lengths = [], []
    for document in documents:
        ids = tokenizer.encode_to_numpy(document).astype(TOKEN_DTYPE, copy=False)
        pieces += [bos, ids, eos]
        lengths.append(len(ids) + 2)
    size = sum(len(document.encode("utf-8", "replace")) for document in documents)
    return np.concatenate(pieces), np.array(lengths, dtype=np.int64), size


if __name__ == "__main__":
    from cli.tokenizer import main  # `train` and `encode`

    sys.exit(main())
