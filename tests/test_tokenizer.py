"""Tests for tokenizer.py: document reading, BPE training against a naive reference trainer, tiktoken encoding
against the pure-Python reference encoder, special tokens, the tokenizer file and the CLI.

Text comes from generated strings and the Python standard library's own source files (never ../shared).
"""
import gzip
import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import regex

import tokenizer as tk
from tokenizer import InputError, ReadStats, Tokenizer, expand_inputs, iter_documents

REPO = Path(__file__).resolve().parent.parent
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


def token_list(tokenizer: Tokenizer) -> list[bytes]:
    return [token for token, _ in sorted(tokenizer.ranks.items(), key=lambda item: item[1])]


# ----------------------------------------------------------------------------------------------------------------
# The fast trainer against the textbook one (tk.train_reference: recount every pair after every merge)
# ----------------------------------------------------------------------------------------------------------------


def naive_train(documents: list[str], vocab_size: int, pattern: str = tk.DEFAULT_PATTERN) -> list[bytes]:
    """Token bytes in id order (256 bytes, then merges); ValueError(merges possible) if the text runs out."""
    pieces = Counter(piece for document in documents for piece in regex.findall(pattern, document))
    words = Counter()
    for piece, count in pieces.items():
        assert len(piece) <= tk.MAX_PIECE_CHARS, "keep test pieces under the cap"
        words[piece.encode("utf-8")] += count
    vocab = tk.train_reference(words, vocab_size - len(tk.SPECIAL_TOKENS))
    if len(vocab) + len(tk.SPECIAL_TOKENS) < vocab_size:
        raise ValueError(len(vocab) - 256)
    return vocab


def test_reference_trainer_worked_example():
    assert tk.train_reference({b"aaabdaaabac": 1}, 260)[256:] == [b"aa", b"ab", b"aaab", b"ac"]
    assert tk.train_reference({b"ab": 1}, 1000)[256:] == [b"ab"]  # stops when the text runs out of pairs


def tie_corpus(seed: int) -> list[str]:
    """Words over a 3-letter alphabet with small counts: many pairs tie, and aa/aaa runs test overlapping pairs."""
    rng = random.Random(seed)
    return [
        " ".join("".join(rng.choice("aab") for _ in range(rng.randint(1, 7))) for _ in range(rng.randint(1, 12)))
        for _ in range(40)
    ]


@pytest.mark.parametrize("seed", range(12))
def test_merges_match_naive_trainer_on_tie_heavy_corpora(seed):
    documents = tie_corpus(seed)
    try:
        expected = naive_train(documents, 330)
    except ValueError as error:  # small corpus: ask for exactly as many merges as it supports
        expected = naive_train(documents, 262 + error.args[0])
    trained = Tokenizer.train(documents, len(expected) + 6, workers=1, progress=False)
    assert token_list(trained) == expected


def test_merges_match_naive_trainer_on_source_code():
    documents = stdlib_text(40_000)
    trained = Tokenizer.train(documents, 700, workers=1, progress=False)
    assert token_list(trained) == naive_train(documents, 700)


def test_merges_match_naive_trainer_on_random_unicode():
    rng = random.Random(7)
    documents = [random_text(rng) for _ in range(100)]
    trained = Tokenizer.train(documents, 500, workers=1, progress=False)
    assert token_list(trained) == naive_train(documents, 500)


def test_not_enough_merges_says_how_many_were_possible():
    documents = tie_corpus(0)
    with pytest.raises(ValueError) as naive_error:
        naive_train(documents, 100_000)
    possible = naive_error.value.args[0]
    with pytest.raises(InputError, match=f"supports only {possible} merges"):
        Tokenizer.train(documents, 262 + possible + 1, workers=1, progress=False)
    assert Tokenizer.train(documents, 262 + possible, workers=1, progress=False).vocab_size == 262 + possible


def test_bad_training_requests():
    with pytest.raises(InputError, match="at least 262"):
        Tokenizer.train(["some text"], 261, workers=1, progress=False)
    with pytest.raises(InputError, match="no text"):
        Tokenizer.train([], 300, workers=1, progress=False)
    with pytest.raises(InputError, match="workers must be at least 1"):
        Tokenizer.train(["some text"], 300, workers=0, progress=False)


def test_one_and_two_workers_give_identical_tokenizers():
    documents = stdlib_text(2_500_000)  # > 2 chunks of CHUNK_CHARS, so both workers count and results are merged
    assert sum(map(len, documents)) > 2 * tk.CHUNK_CHARS
    one = Tokenizer.train(documents, 2000, workers=1, progress=False)
    two = Tokenizer.train(iter(documents), 2000, workers=2, progress=False)
    assert one.ranks == two.ranks
    assert one.fingerprint == two.fingerprint


def test_long_pieces_are_capped():
    documents = ["x" * 5000 + " " + "ab" * 3000, " " * 4000 + "end"] * 3
    trained = Tokenizer.train(documents, 300, workers=1, progress=False)
    assert max(map(len, trained.ranks)) == tk.MAX_PIECE_CHARS  # "x" * 5000 alone would give longer tokens
    assert trained.decode(trained.encode(documents[0])) == documents[0]


# ----------------------------------------------------------------------------------------------------------------
# Encoding
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained() -> Tokenizer:
    documents = stdlib_text(300_000) + ["naïve café 日本語のテキスト 😀😀 <eos> 12345 ٣٤٥ " * 20]
    return Tokenizer.train(documents, 1500, workers=1, progress=False)


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


def test_round_trip_and_reference_encoder_on_random_unicode(trained):
    rng = random.Random(1234)
    for _ in range(1500):
        text = random_text(rng)
        ids = trained.encode(text)
        assert trained.decode(ids) == text
        assert trained.decode_bytes(ids) == text.encode("utf-8")
        assert trained.encode_reference(text) == ids, repr(text)


def test_dropping_gpt4s_possessive_quantifiers_changes_no_split():
    possessive = tk.DEFAULT_PATTERN.replace("]?\\p{L}", "]?+\\p{L}").replace("}]+[", "}]++[")
    assert possessive.count("+") == tk.DEFAULT_PATTERN.count("+") + 2
    rng = random.Random(5)
    for text in [random_text(rng) for _ in range(1000)] + stdlib_text(200_000):
        assert regex.findall(tk.DEFAULT_PATTERN, text) == regex.findall(possessive, text)


def test_reference_encoder_on_source_code(trained):
    text = (STDLIB / "textwrap.py").read_text(encoding="utf-8")
    ids = trained.encode(text)
    assert trained.encode_reference(text) == ids
    assert len(ids) < len(text.encode("utf-8")) / 2  # the merges compress code it has seen similar text of
    assert trained.encode_batch([text, "", "x"], num_threads=2) == [ids, [], trained.encode("x")]


def test_vocab_layout_and_exact_size(trained):
    assert trained.vocab_size == 1500 == len(trained.ranks) + 6
    assert sorted(trained.ranks.values()) == list(range(6, 1500))
    assert [trained.ranks[bytes([byte])] for byte in range(256)] == list(range(6, 262))
    assert trained._encoding.n_vocab == 1500
    assert max(trained.encode("".join(chr(c) for c in range(32, 0x2000)))) < 1500


def test_special_tokens(trained):
    assert (trained.pad_id, trained.eos_id, trained.bos_id, trained.unk_id) == (0, 1, 2, 3)
    assert (trained.start_of_turn_id, trained.end_of_turn_id) == (4, 5)
    text = "<start_of_turn>user\nhi<end_of_turn><eos>"
    plain = trained.encode(text)
    assert not set(plain) & set(range(6))  # merely containing "<eos>" is plain text
    assert trained.decode(plain) == text
    special = trained.encode(text, allow_special=True)
    assert special[0] == 4 and special[-2:] == [5, 1]
    assert trained.decode(special) == text
    assert trained.encode_batch([text], allow_special=True) == [special]
    assert trained.decode([trained.bos_id, trained.pad_id]) == "<bos><pad>"


def test_decode_replaces_partial_utf8(trained):
    ids = trained.encode("🦊")
    first_byte = trained.decode_bytes(ids)[:1]
    assert trained.decode([trained.ranks[first_byte]]) == "\ufffd"
    for bad_id in (1500, -1):
        with pytest.raises(ValueError, match="outside the vocabulary"):
            trained.decode([bad_id])


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer file
# ----------------------------------------------------------------------------------------------------------------


def test_save_load_round_trip(trained, tmp_path):
    path = tmp_path / "sub" / "tok.txt"
    trained.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["tok.txt"]  # no temporary file left behind
    loaded = Tokenizer.load(path)
    assert loaded.ranks == trained.ranks and loaded.pattern == trained.pattern
    assert loaded.fingerprint == trained.fingerprint
    assert loaded.encode("hello <eos>", allow_special=True) == trained.encode("hello <eos>", allow_special=True)
    header = path.read_text(encoding="utf-8").split("tokens\n")[0]
    assert "format fox1-bpe-1" in header and "<start_of_turn>" in header and "vocab_size 1500" in header


@pytest.mark.parametrize(
    "damage",
    ["truncate_lines", "truncate_bytes", "header_only", "flip_token", "bad_base64", "bad_id", "binary", "empty"],
)
def test_corrupt_file_gives_one_clear_error(trained, tmp_path, damage):
    path = tmp_path / "tok.txt"
    trained.save(path)
    data = path.read_bytes()
    lines = data.split(b"\n")
    if damage == "truncate_lines":
        data = b"\n".join(lines[:-100])
    elif damage == "truncate_bytes":
        data = data[: len(data) - 1234]
    elif damage == "header_only":
        data = b"\n".join(lines[:3])
    elif damage == "flip_token":  # valid base64 of other bytes: only the fingerprint can notice
        lines[700] = b"eHl6 " + lines[700].split(b" ", 1)[1]
        data = b"\n".join(lines)
    elif damage == "bad_base64":
        lines[700] = b"!!!! " + lines[700].split(b" ", 1)[1]
        data = b"\n".join(lines)
    elif damage == "bad_id":
        token, _, preview = lines[700].split(b" ", 2)
        data = b"\n".join(lines[:700] + [token + b" 99999 " + preview] + lines[701:])
    elif damage == "binary":
        data = b"\xff\xfe" + data[2:]
    else:
        data = b""
    path.write_bytes(data)
    with pytest.raises(InputError) as error:
        Tokenizer.load(path)
    message = str(error.value)
    assert str(path) in message and "\n" not in message
    with pytest.raises(InputError, match="cannot read"):
        Tokenizer.load(tmp_path / "missing.txt")
    with pytest.raises(InputError, match="cannot write"):
        trained.save(path / "inside_a_file.txt")


# ----------------------------------------------------------------------------------------------------------------
# Reading documents
# ----------------------------------------------------------------------------------------------------------------


def test_plain_text_documents_are_separated_by_two_blank_lines(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"\n\nfirst line\r\nsecond\r\n\r\nsame doc\n\n\nsecond doc\n  \n\t\nthird\n\n\n\n\n")
    stats = ReadStats()
    assert list(iter_documents([path], stats=stats)) == [
        "first line\nsecond\n\nsame doc\n",
        "second doc\n",
        "third\n",
    ]
    assert stats.documents == 3 and stats.replaced_bytes == 0


def test_gzip_and_undecodable_bytes(tmp_path):
    path = tmp_path / "b.txt.gz"
    path.write_bytes(gzip.compress("café \ufffd ok".encode() + b" bad \xff\xfe end\n\n\nnext"))
    stats = ReadStats()
    documents = list(iter_documents([path], stats=stats, allow_binary=True))  # 2 of 33 bytes: over the 2% limit
    assert documents == ["café \ufffd ok bad \ufffd\ufffd end\n", "next"]
    assert stats.replaced_bytes == 2  # a U+FFFD already in the text is not counted
    broken = tmp_path / "c.txt.gz"
    compressed = gzip.compress(" ".join(map(str, range(5000))).encode())
    broken.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(InputError, match="c.txt.gz: cannot read"):
        list(iter_documents([broken]))


def test_very_long_document_is_cut_at_line_boundaries(tmp_path):
    path = tmp_path / "long.txt"
    line = "y" * 999 + "\n"
    path.write_text(line * 2500 + "z" * (tk.MAX_DOCUMENT_CHARS * 2), encoding="utf-8")
    documents = list(iter_documents([path]))
    assert "".join(documents) == path.read_text(encoding="utf-8")
    assert len(documents) >= 4 and max(map(len, documents)) <= 2 * tk.MAX_DOCUMENT_CHARS
    assert documents[0].endswith("\n") and len(documents[0]) >= tk.MAX_DOCUMENT_CHARS


def test_jsonl_documents_and_bad_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(
        b'{"text": "one", "id": 1}\n\n{"text": "two \\ud83d"}\n[1, 2]\n{"text": 3}\n{"no_text": "x"}\n'
        b'{broken\n{"text": "   "}\n{"text": "caf\xc3\xa9 \xff"}\n'
    )
    with pytest.raises(InputError, match=r"d\.jsonl:4: expected a JSON object"):
        list(iter_documents([path]))
    stats = ReadStats()
    documents = list(iter_documents([path], skip_bad_lines=True, stats=stats, allow_binary=True))
    assert documents == ["one", "two \ufffd", "café \ufffd"]
    assert (stats.documents, stats.bad_lines, stats.replaced_bytes) == (3, 4, 2)
    for number, line in [(1, b'{"text": 1}'), (2, b"not json")]:
        bad = tmp_path / f"bad{number}.jsonl.gz"
        bad.write_bytes(gzip.compress(b'{"text": "fine"}\n' * (number - 1) + line + b"\n"))
        with pytest.raises(InputError, match=rf"bad{number}\.jsonl\.gz:{number}: "):
            list(iter_documents([bad]))


def test_expand_inputs(tmp_path):
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    for name in ["a.txt", "sub/b.txt", "sub/deeper/c.txt", "sub/d.jsonl"]:
        (tmp_path / name).write_text("x", encoding="utf-8")
    found = expand_inputs([tmp_path / "**" / "*.txt", tmp_path / "a.txt"])
    assert found == sorted([tmp_path / "a.txt", tmp_path / "sub/b.txt", tmp_path / "sub/deeper/c.txt"])
    for bad, message in [("nothing*.txt", "no files match"), ("missing.txt", "no such file"), ("sub", "directory")]:
        with pytest.raises(InputError, match=message):
            expand_inputs([tmp_path / bad])
    with pytest.raises(InputError, match="no input files"):
        expand_inputs([])


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


def test_cli_train_and_encode(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for index, document in enumerate(stdlib_text(60_000)):
        (corpus / f"part{index}.txt").write_text(document, encoding="utf-8")
    (corpus / "chat.jsonl").write_text('{"text": "hello world"}\n', encoding="utf-8")
    out = tmp_path / "tok.txt"
    argv = ["train", "--input", f"{corpus}/*.txt", str(corpus / "chat.jsonl"), "--vocab-size", "500"]
    assert tk.main(argv + ["--out", str(out), "--workers", "1", "--quiet"]) == 0
    assert "trained 500 tokens" in capsys.readouterr().out
    assert Tokenizer.load(out).vocab_size == 500
    assert tk.main(["encode", "--tokenizer", str(out), "--allow-special", "hi<eos>"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split()[-1] == "1" and '"<eos>"' in printed[1]


def test_cli_errors_are_one_line_with_exit_code_1(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{oops\n', encoding="utf-8")
    train = ["train", "--input", str(tmp_path / "bad.jsonl"), "--vocab-size", "300", "--out", str(tmp_path / "t")]
    encode = ["encode", "--tokenizer", str(tmp_path / "missing.txt"), "text"]
    for argv, expected in [(train, "bad.jsonl:2: invalid JSON"), (encode, "missing.txt: cannot read")]:
        result = subprocess.run([sys.executable, "tokenizer.py", *argv], cwd=REPO, capture_output=True, text=True)
        assert result.returncode == 1
        last_line = result.stderr.splitlines()[-1]  # earlier lines: progress bars
        assert last_line.startswith("error: ") and expected in last_line, result.stderr
        assert "Traceback" not in result.stderr


# ----------------------------------------------------------------------------------------------------------------
# Nothing a user made is lost; bad input is one line (issue 10)
# ----------------------------------------------------------------------------------------------------------------


def test_cli_train_refuses_to_replace_an_existing_file_without_force(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(stdlib_text(20_000)), encoding="utf-8")
    out = tmp_path / "tok.txt"
    out.write_text("my own notes", encoding="utf-8")
    argv = ["train", "--input", str(corpus), "--vocab-size", "300", "--out", str(out), "--workers", "1", "--quiet"]
    assert tk.main(argv) == 1
    assert "already exists: pass --force" in capsys.readouterr().err
    assert out.read_text(encoding="utf-8") == "my own notes"
    assert tk.main(argv + ["--force"]) == 0
    assert Tokenizer.load(out).vocab_size == 300


def test_failed_write_leaves_no_temporary_file(trained, tmp_path):
    target = tmp_path / "a_directory"
    (target / "inside").mkdir(parents=True)
    with pytest.raises(InputError, match="cannot write tokenizer file"):
        trained.save(target)  # the rename onto a directory fails after the temporary file was written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_directory"]
    tk.write_atomic(tmp_path / "new" / "f.bin", b"\x00\x01")
    assert (tmp_path / "new" / "f.bin").read_bytes() == b"\x00\x01"
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["f.bin"]


@pytest.mark.parametrize("line", ["pattern 12", 'pattern "("', "pattern [1, 2]", "special_tokens 7", "pattern"])
def test_header_values_of_the_wrong_kind_give_one_clear_error(trained, tmp_path, line):
    path = tmp_path / "tok.txt"
    trained.save(path)
    key = line.split(" ")[0]
    lines = [line if text.startswith(key + " ") else text for text in path.read_text(encoding="utf-8").split("\n")]
    path.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(InputError) as error:
        Tokenizer.load(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_binary_files_are_refused_unless_allowed(tmp_path, capsys):
    rng = random.Random(3)
    binary = tmp_path / "program"
    binary.write_bytes(bytes(rng.randrange(256) for _ in range(200_000)))
    with pytest.raises(InputError, match=r"program: \d+% of the bytes read are not UTF-8.*--allow-binary"):
        list(iter_documents([binary]))
    small = tmp_path / "small.bin"  # below MIN_CHARS_TO_JUDGE: judged when the file ends
    small.write_bytes(b"\x7fELF\xfe\xff\x01\x00" * 50)
    with pytest.raises(InputError, match="small.bin"):
        list(iter_documents([small]))
    stats = ReadStats()
    assert list(iter_documents([binary], stats=stats, allow_binary=True))
    assert stats.replaced_bytes > 50_000
    text = tmp_path / "latin.txt"  # one undecodable byte in 400: under the limit
    text.write_bytes(("x" * 399 + "\n").encode() * 100 + b"caf\xe9\n")
    assert len(list(iter_documents([text]))) == 1
    argv = ["train", "--input", str(binary), "--vocab-size", "300", "--out", str(tmp_path / "t"), "--quiet"]
    assert tk.main(argv + ["--workers", "1"]) == 1
    assert "program" in capsys.readouterr().err
    assert tk.main(argv + ["--workers", "1", "--allow-binary"]) == 0


def test_jsonl_lines_longer_than_a_mebibyte_are_read_whole(tmp_path):
    book = "It was a dark and stormy night. " * (tk.MAX_DOCUMENT_CHARS // 16)  # 2 MiB in one JSONL line
    path = tmp_path / "books.jsonl"
    path.write_text(f'{{"text": "short"}}\n{{"text": "{book}"}}\n{{"text": "after"}}\n', encoding="utf-8")
    for skip_bad_lines in (False, True):
        stats = ReadStats()
        assert list(iter_documents([path], skip_bad_lines=skip_bad_lines, stats=stats)) == ["short", book, "after"]
        assert stats.bad_lines == 0


# ----------------------------------------------------------------------------------------------------------------
# Hugging Face tokenizer.json: reading (both configurations) and writing
# ----------------------------------------------------------------------------------------------------------------

BYTE_TOKENS = [f"<0x{byte:02X}>" for byte in range(256)]
LLAMA2_NORMALIZER = {"type": "Sequence", "normalizers": [
    {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
LLAMA2_DECODER = {"type": "Sequence", "decoders": [
    {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"},
    {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}


def added(token_id: int, content: str, special: bool = True, **flags) -> dict:
    entry = {"id": token_id, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": not special, "special": special}
    return entry | flags


def sentencepiece_spec(pieces: list[str], merges: list[str], **model) -> dict:
    """A Llama-2 style tokenizer.json: <unk> <s> </s>, 256 byte tokens, then `pieces`."""
    vocab = {token: token_id for token_id, token in enumerate(["<unk>", "<s>", "</s>", *BYTE_TOKENS, *pieces])}
    return {"version": "1.0", "added_tokens": [added(0, "<unk>"), added(1, "<s>"), added(2, "</s>")],
            "normalizer": LLAMA2_NORMALIZER, "pre_tokenizer": None, "post_processor": None,
            "decoder": LLAMA2_DECODER,
            "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "fuse_unk": True, "byte_fallback": True,
                      "vocab": vocab, "merges": merges} | model}


def write_json(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


TINY_PIECES = ["▁", "a", "b", "c", "h", "i", "▁a", "ab", "bc", "▁ab", "abc", "▁h", "▁hi", "▁▁"]
TINY_MERGES = ["▁ a", "a b", "b c", "▁a b", "ab c", "▁ h", "▁h i", "▁ ▁"]


def test_sentencepiece_json_by_hand(tmp_path):
    path = write_json(tmp_path / "tokenizer.json", sentencepiece_spec(TINY_PIECES, TINY_MERGES))
    hf = tk.load_tokenizer(path)
    ids = {token: token_id for token_id, token in enumerate(["<unk>", "<s>", "</s>", *BYTE_TOKENS, *TINY_PIECES])}
    # "▁abc": ▁ a b c -> ▁a b c (rank 0) -> ▁a bc (rank 2 beats (▁a, b) at rank 3) -> no merge of (▁a, bc)
    assert hf.encode("abc") == [ids["▁a"], ids["bc"]]
    assert hf.encode("hi abc") == [ids["▁hi"], ids["▁a"], ids["bc"]]
    assert hf.encode("  a") == [ids["▁▁"], ids["▁a"]]  # Prepend("▁") then each space is a "▁"
    assert hf.encode("é") == [ids["▁"], ids["<0xC3>"], ids["<0xA9>"]]  # byte fallback for a missing character
    plain = hf.encode("hi<s>hi")  # typed special tokens are plain text by default
    assert 1 not in plain and hf.decode(plain) == "hi<s>hi"
    assert hf.encode("hi<s>hi", allow_special=True) == [ids["▁hi"], 1, ids["▁hi"]]  # Prepend again after <s>
    for text in ["hi abc", "  a b\t", "é😀 x", "", " "]:
        assert hf.decode(hf.encode(text)) == text  # Strip removes the prepended space
    assert hf.decode_bytes([ids["▁hi"], ids["<0xC3>"]]) == b" hi\xc3"
    assert hf.ids_starting_with(b" a") == [ids["▁a"], ids["▁ab"]]
    assert (hf.bos_id, hf.eos_id, hf.pad_id, hf.vocab_size) == (1, 2, None, len(ids))
    assert hf.token_id("</s>") == 2 and hf.token_id("▁hi") == ids["▁hi"] and hf.token_id("zz") is None
    assert hf.special_ids == {0, 1, 2}
    with pytest.raises(ValueError, match="outside the vocabulary"):
        hf.decode([len(ids)])


def test_cli_encode_reads_a_tokenizer_json(tmp_path, capsys):
    write_json(tmp_path / "model" / "tokenizer.json", sentencepiece_spec(TINY_PIECES, TINY_MERGES))
    assert tk.main(["encode", "--tokenizer", str(tmp_path / "model"), "hi abc"]) == 0
    ids, tokens, _ = capsys.readouterr().out.splitlines()
    assert ids == "271 265 267" and tokens == '" hi" " a" "bc"'


def test_merge_rank_is_not_the_rank_of_the_concatenation(tmp_path):
    """Hugging Face merges the pair listed first; tiktoken would merge the pair whose result has the lowest id."""
    pieces = ["▁", "x", "y", "z", "yz", "xy", "xyz"]  # ids: yz < xy, but the merge ("x", "y") is listed first
    path = write_json(tmp_path / "t.json", sentencepiece_spec(pieces, ["x y", "y z", "xy z"]))
    hf = tk.load_tokenizer(path)
    assert [hf.decode_bytes([i]) for i in hf.encode("xyz")] == [b" ", b"xyz"]


def test_cutting_at_spaces_never_changes_ids(tmp_path):
    """Tokens such as "a▁" (SentencePiece without split_by_whitespace) forbid cutting after "a"."""
    pieces = ["▁", "a", "b", "a▁", "a▁b", "▁b", "b▁", "▁▁"]
    spec = sentencepiece_spec(pieces, ["a ▁", "a▁ b", "▁ b", "b ▁", "▁ ▁"])
    hf = tk.load_tokenizer(write_json(tmp_path / "t.json", spec))
    uncut = tk.load_tokenizer(tmp_path / "t.json")
    assert hf._cut is not None
    uncut._cut = None
    rng = random.Random(0)
    for _ in range(300):
        text = "".join(rng.choice(["a", "b", " ", "  ", "é"]) for _ in range(rng.randint(0, 30)))
        assert hf.encode(text) == uncut.encode(text), repr(text)


def test_merge_short_and_merge_all_agree():
    rng = random.Random(2)
    for _ in range(200):
        merges = {}
        for rank in range(40):
            merges.setdefault((rng.randrange(8), rng.randrange(8)), (rank, 8 + rank))
        # merged ids can merge again: let some merges take them
        for rank in range(40, 60):
            merges.setdefault((rng.randrange(48), rng.randrange(48)), (rank, 8 + rank))
        word = [rng.randrange(8) for _ in range(rng.randint(0, 60))]
        assert tk._merge_short(word, merges) == tk._merge_all(word, merges)


def test_added_tokens_flags_and_folder_names(tmp_path):
    spec = sentencepiece_spec(TINY_PIECES, TINY_MERGES)
    word = added(501, "<w>", special=False, single_word=True, normalized=False)
    spec["added_tokens"] += [added(500, "<mask>", lstrip=True), word]
    folder = tmp_path / "model"
    write_json(folder / "tokenizer.json", spec)
    write_json(folder / "tokenizer_config.json", {"bos_token": {"content": "<s>"}, "eos_token": "<mask>"})
    hf = tk.load_tokenizer(folder)
    assert hf.encode("hi  <mask>", allow_special=True) == hf.encode("hi") + [500]  # lstrip takes the spaces
    assert 501 in hf.encode("a <w> b") and 501 not in hf.encode("a<w>b")  # single_word; not special: always on
    assert (hf.bos_id, hf.eos_id, hf.vocab_size) == (1, 500, 502)
    write_json(folder / "tokenizer_config.json", {"eos_token": "<nope>"})
    with pytest.raises(InputError, match="<nope>"):
        tk.load_tokenizer(folder)
    (folder / "tokenizer_config.json").write_text("{", encoding="utf-8")
    with pytest.raises(InputError, match="tokenizer_config.json"):
        tk.load_tokenizer(folder)


@pytest.mark.parametrize("component, change, message", [
    ("normalizer", {"type": "Lowercase"}, "normalizer 'Lowercase'"),
    ("pre_tokenizer", {"type": "Whitespace"}, "pre_tokenizer 'Whitespace'"),
    ("decoder", {"type": "WordPiece"}, "decoder 'WordPiece'"),
    ("model", {"type": "WordPiece", "vocab": {}}, "model 'WordPiece'"),
    ("model", {"dropout": 0.1}, "dropout"),
    ("model", {"merges": ["a zz"]}, "merge"),
])
def test_unsupported_tokenizer_json_is_one_clear_line(tmp_path, component, change, message):
    spec = sentencepiece_spec(TINY_PIECES, TINY_MERGES)
    spec[component] = spec[component] | change if component == "model" else change
    path = write_json(tmp_path / "tokenizer.json", spec)
    with pytest.raises(InputError, match=message) as error:
        tk.load_tokenizer(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    path.write_text('{"model": ', encoding="utf-8")
    with pytest.raises(InputError, match="cannot read"):
        tk.load_tokenizer(path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no tokenizer.json or tokenizer.txt"):
        tk.load_tokenizer(tmp_path / "empty")


def test_save_pretrained_round_trip_and_generic_reader(trained, tmp_path):
    """Our export read back is our Tokenizer (same fingerprint); read as any tokenizer.json (Hugging Face's BPE
    rules, in pure Python) it gives the same ids as tiktoken does with our ranks."""
    trained.save_pretrained(tmp_path / "export", chat_template="{{ bos_token }}")
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == [
        "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    config = json.loads((tmp_path / "export" / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["chat_template"] == "{{ bos_token }}" and config["eos_token"] == "<eos>"
    back = tk.load_tokenizer(tmp_path / "export")
    assert isinstance(back, Tokenizer) and back.fingerprint == trained.fingerprint
    generic = tk.HFTokenizer.load(tmp_path / "export" / "tokenizer.json", tk._special_token_names(tmp_path / "export"))
    assert (generic.bos_id, generic.eos_id, generic.pad_id) == (2, 1, 0)
    rng = random.Random(11)
    texts = [random_text(rng) for _ in range(500)] + stdlib_text(150_000)
    for text in texts:
        for allow in (False, True):
            assert generic.encode(text, allow_special=allow) == trained.encode(text, allow_special=allow), repr(text)
        ids = trained.encode(text)
        assert generic.decode(ids) == trained.decode(ids)
        assert generic.decode_bytes(ids) == trained.decode_bytes(ids)
    assert generic.ids_starting_with(b" de") == trained.ids_starting_with(b" de")


def test_hugging_face_tokenizer_is_saved_byte_for_byte(tmp_path):
    spec = sentencepiece_spec(TINY_PIECES, TINY_MERGES)
    spec["added_tokens"].append(added(400, "<end_of_turn>"))
    write_json(tmp_path / "in" / "tokenizer.json", spec)
    write_json(tmp_path / "in" / "special_tokens_map.json", {"eos_token": {"content": "<end_of_turn>"}})
    original = tk.load_tokenizer(tmp_path / "in")
    assert original.eos_id == 400
    original.save_pretrained(tmp_path / "out", chat_template="{{ messages }}")
    copy = tk.load_tokenizer(tmp_path / "out")
    assert (copy.fingerprint, copy.bos_id, copy.eos_id) == (original.fingerprint, 1, 400)
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == (tmp_path / "in" / "tokenizer.json").read_bytes()
    config = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["chat_template"] == "{{ messages }}" and config["eos_token"] == "<end_of_turn>"
    (tmp_path / "in" / "tokenizer.json").write_text("{}", encoding="utf-8")
    with pytest.raises(InputError, match="changed since it was loaded"):
        original.save_pretrained(tmp_path / "again")


def test_load_tokenizer_accepts_our_file_and_folders(trained, tmp_path):
    trained.save(tmp_path / "run" / "tokenizer.txt")
    assert tk.load_tokenizer(tmp_path / "run").fingerprint == trained.fingerprint
    assert tk.load_tokenizer(tmp_path / "run" / "tokenizer.txt").fingerprint == trained.fingerprint
    assert trained.token_id("<end_of_turn>") == 5 and trained.token_id("e") == trained.ranks[b"e"]
    assert trained.special_ids == set(range(6))


# Cross-checks against Hugging Face `tokenizers` itself (skipped where it is not installed): it trains the
# vocabularies, then both encode the same text.


def hf_sentencepiece(tokenizers, documents: list[str], style: str) -> dict:
    """A SentencePiece-style BPE trained by `tokenizers`, then given the layout of a converted Llama/Gemma file."""
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=1200, special_tokens=["<unk>", "<s>", "</s>"],
                                             limit_alphabet=120, show_progress=False)  # rare characters: bytes
    model = tokenizers.Tokenizer(tokenizers.models.BPE())
    model.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace()
    model.train_from_iterator(documents, trainer)
    trained_spec = json.loads(model.to_str())["model"]
    in_order = [token for token, _ in sorted(trained_spec["vocab"].items(), key=lambda item: item[1])]
    pieces = [token for token in in_order if token not in ("<unk>", "<s>", "</s>")]
    spec = sentencepiece_spec(pieces, trained_spec["merges"])
    spec["added_tokens"].append(added(len(pieces) + 259, "<end_of_turn>"))
    if style == "metaspace":  # transformers' LlamaConverter with legacy=False
        spec["normalizer"] = None
        spec["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}
    elif style == "gemma":  # no prefix space, no Strip; a Split on " " that finds none left
        spec["normalizer"] = {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
        spec["pre_tokenizer"] = {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious",
                                 "invert": False}
        spec["decoder"]["decoders"] = spec["decoder"]["decoders"][:3]
    return spec


def hf_byte_level(tokenizers, documents: list[str], ignore_merges: bool) -> dict:
    """A Llama-3 style byte-level BPE trained by `tokenizers`, with a special and a non-special added token."""
    llama3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
              r"\s*[\r\n]+|\s+(?!\S)|\s+")
    pre = tokenizers.pre_tokenizers
    model = tokenizers.Tokenizer(tokenizers.models.BPE(ignore_merges=ignore_merges))
    model.normalizer = tokenizers.normalizers.NFC()
    model.pre_tokenizer = pre.Sequence([pre.Split(tokenizers.Regex(llama3), behavior="isolated"),
                                        pre.ByteLevel(add_prefix_space=False, use_regex=False)])
    model.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=1200, special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
                                             initial_alphabet=pre.ByteLevel.alphabet(), show_progress=False)
    model.train_from_iterator(documents, trainer)
    model.add_tokens([tokenizers.AddedToken("<|tool|>", special=False, normalized=False)])
    model.add_special_tokens(["<|eot_id|>"])
    return json.loads(model.to_str())


@pytest.mark.parametrize("style", ["llama2", "metaspace", "gemma", "byte-level", "byte-level-ignore-merges"])
def test_same_ids_and_text_as_hugging_face_tokenizers(tmp_path, style):
    tokenizers = pytest.importorskip("tokenizers")
    documents = stdlib_text(300_000)
    if style.startswith("byte-level"):
        spec = hf_byte_level(tokenizers, documents, ignore_merges=style.endswith("merges"))
    else:
        spec = hf_sentencepiece(tokenizers, documents, style)
    path = write_json(tmp_path / "tokenizer.json", spec)
    reference, ours = tokenizers.Tokenizer.from_file(str(path)), tk.load_tokenizer(path)
    rng = random.Random(3)
    specials = ["<s>", "</s>", "<end_of_turn>", "<|eot_id|>", "<|tool|>", "<|begin_of_text|>"]
    texts = [random_text(rng) + rng.choice(specials) + random_text(rng) for _ in range(400)]
    texts += ["", " ", "  x", "\n\n", "\t\tif x:\n", "a  b   c", "🦊", "日本語", "<s>", " <s> "]
    texts += stdlib_text(100_000) + [text[::-1] for text in stdlib_text(30_000)]
    for allow in (False, True):
        reference.encode_special_tokens = not allow  # tokenizers' switch for typed special tokens
        for text in texts:
            expected = reference.encode(text, add_special_tokens=False).ids
            assert ours.encode(text, allow_special=allow) == expected, repr(text)
            assert ours.decode(expected) == reference.decode(expected, skip_special_tokens=False), repr(text)


def test_every_split_behavior_as_hugging_face_tokenizers(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    pre = tokenizers.pre_tokenizers
    documents, rng = stdlib_text(60_000), random.Random(6)
    texts = [random_text(rng) for _ in range(100)] + stdlib_text(10_000) + ["", " ", "  a  b. ", ".,"]
    for behavior in ["removed", "isolated", "merged_with_previous", "merged_with_next", "contiguous"]:
        for invert in (False, True):
            reference = tokenizers.Tokenizer(tokenizers.models.BPE())
            split = pre.Split(tokenizers.Regex(r"\s+|[.,]"), behavior=behavior, invert=invert)
            reference.pre_tokenizer = pre.Sequence([split, pre.ByteLevel(add_prefix_space=False, use_regex=False)])
            reference.train_from_iterator(documents, tokenizers.trainers.BpeTrainer(
                vocab_size=400, initial_alphabet=pre.ByteLevel.alphabet(), show_progress=False))
            reference.save(str(tmp_path / "tokenizer.json"))
            ours = tk.load_tokenizer(tmp_path / "tokenizer.json")
            for text in texts:
                assert ours.encode(text) == reference.encode(text, add_special_tokens=False).ids, (behavior, text)


def test_transformers_reads_our_export_exactly(trained, tmp_path):
    transformers = pytest.importorskip("transformers")
    trained.save_pretrained(tmp_path, chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}")
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert (theirs.bos_token_id, theirs.eos_token_id, theirs.pad_token_id) == (2, 1, 0)
    assert theirs.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "hi"
    rng = random.Random(4)
    for text in [random_text(rng) for _ in range(300)] + stdlib_text(200_000) + ["<start_of_turn>user\nhi<eos>"]:
        ids = trained.encode(text, allow_special=True)
        assert theirs.encode(text, add_special_tokens=False) == ids, repr(text)
        assert theirs.decode(ids) == trained.decode(ids)
