"""SentencePiece-style tokenizers for llama.cpp: the token scores that make SentencePiece's merging Hugging Face's,
and tokenizer.model, SentencePiece's own file, that carries them.

The released Fox-1's tokenizer.json is SentencePiece converted to BPE (spaces as "▁", byte fallback). Hugging Face
merges first the adjacent pair of lowest merge rank; SentencePiece, and llama.cpp's tokenizer for such vocabularies,
the pair that joins into the token of highest score. Scoring each token minus the rank of the first merge that makes
it gives the same order, so the same ids. fox1/gguf.py writes these scores into GGUF files. An export carries them
in tokenizer.model as well, because llama.cpp's converter (convert_hf_to_gguf.py) reads a tokenizer.model before a
tokenizer.json, and given tokenizer.json alone it scores every token -1000: it then merges from the left, and the
ids differ. tokenizer.model is a protocol buffer (sentencepiece_model.proto's ModelProto), written here field by
field, so no protobuf package is needed. A byte-level BPE (fox1's own tokenizer) has no SentencePiece form.
"""
from __future__ import annotations

import re
import struct
from pathlib import Path

from fox1.files import InputError

# SentencePiece's piece types (sentencepiece_model.proto), which GGUF's tokenizer.ggml.token_type reuses
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6
BYTE_TOKEN = re.compile(r"<0x[0-9A-F]{2}>")  # SentencePiece's byte-fallback tokens
BPE_MODEL = 2  # TrainerSpec.model_type


def token_table(path: Path, spec: dict, size: int | None = None) -> tuple[list[str], list[int]]:
    """The tokens of a BPE tokenizer.json in id order, padded with unused "[PADi]" up to `size` (default: its
    largest id + 1), and their types: normal, unused for padding, control for special added tokens, else
    user-defined."""
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise InputError(f"{path}: model.type is not BPE; llama.cpp runs fox1's BPE tokenizers only")
    added = {token["id"]: token for token in spec.get("added_tokens", [])}
    by_id = {token_id: text for text, token_id in model["vocab"].items()} | {i: t["content"] for i, t in added.items()}
    size = max(by_id) + 1 if size is None else size
    if max(by_id) >= size:
        raise InputError(f"{path}: token id {max(by_id)} is outside the model's vocabulary of {size}")
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(size)]
    types = [TOKEN_NORMAL if i in by_id else TOKEN_UNUSED for i in range(size)]
    for token_id, token in added.items():
        types[token_id] = TOKEN_CONTROL if token.get("special") else TOKEN_USER_DEFINED
    return tokens, types


def merge_texts(spec: dict) -> list[str]:
    """A BPE tokenizer.json's merges in rank order as "left right" (older files write them so, newer as pairs)."""
    return [merge if isinstance(merge, str) else " ".join(merge) for merge in spec["model"].get("merges", [])]


def sentencepiece_scores(path: Path, spec: dict, tokens: list[str], types: list[int]) -> tuple[list[float], bool]:
    """(a score per token, whether a "▁" is prepended to the text) for a SentencePiece-style tokenizer.json, whose
    byte and unknown tokens are typed as such in `types`, in place. Steps SentencePiece does not take are refused."""
    normalizer = spec.get("normalizer") or {}
    normalizers = normalizer.get("normalizers", [normalizer] if normalizer else [])  # a Sequence's steps, or itself
    pre = spec.get("pre_tokenizer") or {}
    metaspace = pre.get("type") == "Metaspace" and pre.get("replacement") == "▁" and not pre.get("split", True)
    space_split = pre.get("type") == "Split" and pre.get("pattern") == {"String": " "}  # a no-op once spaces are "▁"
    prepend = {"type": "Prepend", "prepend": "▁"}
    spaces = {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
    if (not (not pre or metaspace or space_split) or any(step not in (prepend, spaces) for step in normalizers)
            or not (metaspace or spaces in normalizers)):
        raise InputError(f"{path}: a normalizer or pre_tokenizer that llama.cpp's SentencePiece tokenizer lacks")
    scheme = pre.get("prepend_scheme", "always" if pre.get("add_prefix_space", True) else "never")
    if metaspace and scheme != "never":  # it skips text after a special token ("first") or starting with a space
        raise InputError(f"{path}: Metaspace prepend_scheme {scheme!r} adds '▁' to fewer texts than llama.cpp would")
    merges = merge_texts(spec)
    first_rank: dict[str, int] = {}
    for rank, merge in enumerate(merges):
        first_rank.setdefault(merge.replace(" ", "", 1), rank)
    unknown = spec["model"].get("unk_token")
    for token_id, token in enumerate(tokens):
        if types[token_id] == TOKEN_NORMAL and BYTE_TOKEN.fullmatch(token):
            types[token_id] = TOKEN_BYTE
        elif token == unknown:
            types[token_id] = TOKEN_UNKNOWN
    scores = [-float(first_rank.get(token, len(merges))) if kind == TOKEN_NORMAL else 0.0
              for token, kind in zip(tokens, types)]
    return scores, prepend in normalizers


def tokenizer_model(path: Path, spec: dict, special_names: dict[str, str]) -> tuple[bytes, bool]:
    """(SentencePiece's model file, whether a "▁" is prepended) for a SentencePiece-style tokenizer.json. The file
    holds every token with its score and type, a BPE model, and a normalizer that only turns spaces into "▁" (and
    prepends one where the tokenizer does). `special_names` ({"bos_token": "<bos>", ...}) name the model's bos /
    eos / pad pieces."""
    tokens, types = token_table(path, spec)
    scores, prefix = sentencepiece_scores(path, spec, tokens, types)
    if TOKEN_UNKNOWN not in types:
        raise InputError(f"{path}: SentencePiece needs an unk_token")
    if len(set(tokens)) < len(tokens):
        raise InputError(f"{path}: a token appears at two ids, which SentencePiece cannot hold")
    ids = {token: token_id for token_id, token in enumerate(tokens)}
    trainer = [(3, BPE_MODEL), (4, len(tokens)), (35, types.count(TOKEN_BYTE) == 256),
               (40, types.index(TOKEN_UNKNOWN)), (45, tokens[types.index(TOKEN_UNKNOWN)])]
    for (id_field, piece_field), name in zip(((41, 46), (42, 47), (43, 48)), ("bos_token", "eos_token", "pad_token")):
        token = special_names.get(name)
        trainer += [(id_field, ids[token]), (piece_field, token)] if token in ids else [(id_field, -1)]
    normalizer = [(1, "identity"), (3, prefix), (4, False), (5, True)]  # name, add_dummy_prefix, keep spaces, "▁"
    pieces = [_message([(1, token), (2, score), (3, kind)]) for token, score, kind in zip(tokens, scores, types)]
    model = b"".join([*(_field(1, piece) for piece in pieces), _field(2, _message(trainer)),
                      _field(3, _message(normalizer))])
    return model, prefix


# ----------------------------------------------------------------------------------------------------------------
# Protocol buffer encoding: each field is a key (number << 3 | wire type), then a varint, 4 bytes, or a length + bytes
# ----------------------------------------------------------------------------------------------------------------

def _message(fields: list[tuple[int, object]]) -> bytes:
    return b"".join(_field(number, value) for number, value in fields)


def _field(number: int, value: object) -> bytes:
    if isinstance(value, (bool, int)):
        return _varint(number << 3) + _varint(int(value))
    if isinstance(value, float):
        return _varint(number << 3 | 5) + struct.pack("<f", value)
    data = value.encode("utf-8") if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # a negative int32 is written as its 64-bit two's complement, in ten bytes
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
