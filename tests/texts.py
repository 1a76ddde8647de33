"""Text the tests generate or read from the Python standard library's own source (always present)."""
import os
import random
from pathlib import Path

STDLIB = Path(os.__file__).parent


def stdlib_text(chars: int) -> list[str]:
    """The first `chars` characters of the standard library's .py files (sorted, so always the same text)."""
    documents, total = [], 0
    for path in sorted(STDLIB.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        documents.append(text[: chars - total])
        total += len(documents[-1])
        if total >= chars:
            return documents
    raise AssertionError("standard library too small")


def random_text(rng: random.Random) -> str:
    """Mixed scripts, emoji (ZWJ and skin tones), combining marks, controls, long whitespace runs, digits."""
    pools = [
        "the quick brown fox don't we'll ", "0123456789", "٣٤٥۶١２３", "😀🦊👍🏽👨‍👩‍👧🇫🇷", "中文字符日本語한국어",
        "e\u0301a\u0300\u0302\u0323", "\x00\x01\x1b\x1f\x7f\x85", " \t\n\r\n\u3000\u00a0\u2028\u200b\ufeff",
        "<eos><pad><start_of_turn>", "!?.,;:-_()[]{}'\"", "Ελληνικά кириллица עברית عربى",
    ]
    parts = []
    for _ in range(rng.randint(1, 30)):
        choice = rng.random()
        if choice < 0.1:
            parts.append(rng.choice(" \n\t") * rng.randint(2, 80))  # long whitespace runs
        elif choice < 0.2:
            code = rng.randint(0, 0x10FFFF)  # any code point except surrogates (not valid in UTF-8)
            parts.append(chr(code if not 0xD800 <= code <= 0xDFFF else 0xFFFD))
        else:
            pool = rng.choice(pools)
            parts.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 12))))
    return "".join(parts)
