"""tokenizer.txt: our byte-level BPE as a text file a person can read, written atomically and read back checked.

    # fox1 byte-level BPE tokenizer ...          a comment line
    format fox1-bpe-1                             the header: format, vocabulary size, special tokens, split
    vocab_size 8192                               pattern (JSON strings) and the fingerprint of the whole
    special_tokens ["<pad>", "<eos>", ...]        vocabulary
    pattern "'(?i:[sdmt]|ll|ve|re)|..."
    fingerprint 3f2a...
    tokens
    IA== 38 " "                                   one token a line: base64(bytes), id, a readable preview
"""
from __future__ import annotations

import base64
import json
from pathlib import Path

from fox1.files import InputError, write_atomic


def write_bpe_file(path: str | Path, ranks: dict[bytes, int], pattern: str, special_tokens: tuple[str, ...],
                   fingerprint: str, format_version: str) -> None:
    lines = [
        f"# fox1 byte-level BPE tokenizer (tokenizer.py); special tokens have ids 0..{len(special_tokens) - 1}. "
        "After 'tokens': base64(token bytes), id, text preview",
        f"format {format_version}",
        f"vocab_size {len(special_tokens) + len(ranks)}",
        f"special_tokens {json.dumps(special_tokens)}",
        f"pattern {json.dumps(pattern)}",
        f"fingerprint {fingerprint}",
        "tokens",
    ]
    for token, token_id in sorted(ranks.items(), key=lambda item: item[1]):
        preview = json.dumps(token.decode("utf-8", errors="replace"), ensure_ascii=False)
        lines.append(f"{base64.b64encode(token).decode('ascii')} {token_id} {preview}")
    try:
        write_atomic(path, "\n".join(lines) + "\n")
    except OSError as error:
        raise InputError(f"{path}: cannot write tokenizer file ({error})") from None


def read_bpe_file(path: str | Path, special_tokens: tuple[str, ...], format_version: str
                  ) -> tuple[dict[bytes, int], str, str]:
    """(ranks, pattern, fingerprint) of a file written by write_bpe_file; InputError naming it otherwise."""
    try:
        lines = Path(path).read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: cannot read tokenizer file ({error})") from None
    try:
        return _parse(lines, special_tokens, format_version)
    except (ValueError, KeyError, IndexError, TypeError) as error:
        raise InputError(f"{path}: corrupt or truncated tokenizer file ({error})") from None


def _parse(lines: list[str], special_tokens: tuple[str, ...], format_version: str
           ) -> tuple[dict[bytes, int], str, str]:
    tokens_at = lines.index("tokens")  # ValueError if the header is cut off
    header = dict(line.split(" ", 1) for line in lines[1:tokens_at])
    if header["format"] != format_version:
        raise ValueError(f"format {header['format']!r}, expected {format_version!r}")
    specials, pattern = json.loads(header["special_tokens"]), json.loads(header["pattern"])
    if not isinstance(specials, list) or tuple(specials) != special_tokens:
        raise ValueError(f"special tokens differ from {special_tokens}")
    if not isinstance(pattern, str):
        raise ValueError(f"pattern must be a JSON string, got {header['pattern'][:40]!r}")
    body = lines[tokens_at + 1:]
    if body and body[-1] == "":
        body.pop()  # the final newline
    if len(body) != int(header["vocab_size"]) - len(special_tokens):
        raise ValueError(f"{len(body)} token lines, header says {int(header['vocab_size'])} - {len(special_tokens)}")
    ranks = {}
    for line in body:
        token, token_id, _preview = line.split(" ", 2)
        ranks[base64.b64decode(token, validate=True)] = int(token_id)
    return ranks, pattern, header["fingerprint"]
