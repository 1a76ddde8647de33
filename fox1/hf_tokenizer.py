"""Hugging Face tokenizer.json, read exactly as the `tokenizers` library encodes, and written for transformers.

Two uses. `HFTokenizer` encodes and decodes any BPE tokenizer.json of the Llama family (the released Fox-1's
SentencePiece-converted one with byte fallback, and byte-level ones such as Llama-3's), so a downloaded model runs
with no Hugging Face code. `byte_level_spec` writes our own BPE (tokenizer.Tokenizer) as a byte-level
tokenizer.json that transformers' AutoTokenizer encodes exactly as we do, and `byte_level_ranks` reads it back.
"""
from __future__ import annotations

import hashlib
import heapq
import json
import unicodedata
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import regex

from fox1.files import InputError, write_atomic
from fox1.sentencepiece_model import tokenizer_model

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


def byte_level_spec(ranks: dict[bytes, int], pattern: str, special_tokens: tuple[str, ...]) -> dict:
    """Our BPE (tiktoken ranks, split pattern, special tokens at ids 0..) as a tokenizer.json. Hugging Face's BPE
    merges the pair of lowest *merge rank*; tiktoken the pair whose concatenation has the lowest rank (the
    leftmost on a tie). Listing every split of every token into two tokens, in token order (as transformers'
    TikTokenConverter does), makes the first behave as the second, and ignore_merges adds tiktoken's shortcut
    (a piece that is a token is that token)."""
    as_text = {token: "".join(BYTE_CHARS[byte] for byte in token) for token in ranks}
    in_order = sorted(ranks.items(), key=lambda item: item[1])
    merges = []
    for token, _ in in_order:
        splits = sorted((ranks[token[:i]], ranks[token[i:]], token[:i], token[i:])
                        for i in range(1, len(token)) if token[:i] in ranks and token[i:] in ranks)
        merges += [f"{as_text[left]} {as_text[right]}" for _, _, left, right in splits]
    added = [{"id": token_id, "content": token, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for token_id, token in enumerate(special_tokens)]
    vocab = {token: token_id for token_id, token in enumerate(special_tokens)}
    vocab.update((as_text[token], token_id) for token, token_id in in_order)
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": vocab, "merges": merges},
    }


def byte_level_ranks(spec: dict, special_tokens: tuple[str, ...]) -> tuple[dict[bytes, int], str] | None:
    """(ranks, pattern) of a tokenizer.json that looks like what byte_level_spec writes, else None. The caller
    checks the whole spec against byte_level_spec of the result."""
    try:
        if [token["content"] for token in spec["added_tokens"]] != list(special_tokens):
            return None  # the quick test: someone else's tokenizer
        pattern = spec["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"]
        ranks = {_byte_level_bytes(token): token_id
                 for token, token_id in spec["model"]["vocab"].items() if token_id >= len(special_tokens)}
    except (KeyError, IndexError, TypeError, AttributeError):
        return None
    return (ranks, pattern) if None not in ranks and isinstance(pattern, str) else None


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
        self.special_tokens = tuple(token.content for token in self.added if token.special)  # control tokens
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
        return cls.from_spec(*read_tokenizer_json(path), special_names or {}, path)

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
        tokenizer_config.json (bos/eos/pad, chat_template) and special_tokens_map.json next to it, and for a
        SentencePiece-style tokenizer a tokenizer.model."""
        try:
            data = Path(self.path).read_bytes()
        except (OSError, TypeError) as error:  # TypeError: built from a spec, not read from a file
            raise InputError(f"{self.path}: cannot read tokenizer file ({error})") from None
        if hashlib.sha256(data).hexdigest() != self.fingerprint:
            raise InputError(f"{self.path}: changed since it was loaded; load it again")
        names = {f"{name}_token": self._token_of[token_id] for name, token_id in
                 (("bos", self.bos_id), ("eos", self.eos_id), ("pad", self.pad_id)) if token_id is not None}
        save_hf_tokenizer(directory, data, names, chat_template, self._sentencepiece_model(data, names))

    def _sentencepiece_model(self, data: bytes, names: dict) -> tuple[bytes, bool] | None:
        """(tokenizer.model, whether a space is prepended) for a SentencePiece-style tokenizer that SentencePiece
        can express, else None: llama.cpp's converter takes the scores from it (fox1/sentencepiece_model.py)."""
        if self.byte_level or not self.byte_fallback:
            return None
        spec = json.loads(data)
        try:
            return tokenizer_model(self.path, spec, names)
        except InputError:  # a step SentencePiece lacks: the export holds tokenizer.json alone
            return None

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

    def encode_to_numpy(self, text: str) -> np.ndarray:
        """encode() as a uint32 array (the interface our Tokenizer serves from tiktoken's buffer)."""
        return np.array(self.encode(text), dtype=np.uint32)

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



def save_hf_tokenizer(directory: str | Path, tokenizer_json: str | bytes, names: dict, chat_template: str | None,
                      sentencepiece: tuple[bytes, bool] | None = None):
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json, as transformers' AutoTokenizer reads them;
    `sentencepiece` (tokenizer.model, whether a space is prepended) for llama.cpp's converter, which reads both. A
    tokenizer.model left from an earlier export is removed: the converter would take it over tokenizer.json."""
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **names, "clean_up_tokenization_spaces": False}
    if chat_template is not None:
        config["chat_template"] = chat_template
    if sentencepiece is not None:
        config["add_prefix_space"] = sentencepiece[1]  # the converter's source for llama.cpp's add_space_prefix
    directory = Path(directory)
    try:
        if sentencepiece is not None:
            write_atomic(directory / "tokenizer.model", sentencepiece[0])
        else:
            (directory / "tokenizer.model").unlink(missing_ok=True)
        write_atomic(directory / "tokenizer.json", tokenizer_json)
        write_atomic(directory / "tokenizer_config.json", json.dumps(config, ensure_ascii=False, indent=2))
        write_atomic(directory / "special_tokens_map.json", json.dumps(names, ensure_ascii=False, indent=2))
    except OSError as error:
        raise InputError(f"{directory}: cannot write the Hugging Face tokenizer files ({error})") from None



def read_tokenizer_json(path: str | Path) -> tuple[dict, str]:
    """(the parsed file, sha256 of its bytes: the fingerprint of a Hugging Face tokenizer)."""
    try:
        data = Path(path).read_bytes()
        return json.loads(data), hashlib.sha256(data).hexdigest()
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: cannot read tokenizer file ({error})") from None


def special_token_names(directory: Path) -> dict[str, str | None]:
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

