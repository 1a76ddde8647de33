"""Tests for tokenizer.py: BPE training against a naive reference trainer, tiktoken encoding
against the pure-Python reference encoder, special tokens, the tokenizer file and the CLI.

Text comes from generated strings and the Python standard library's own source files (nothing downloaded).
"""
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import regex

from cli import tokenizer as tokenizer_cli
import tokenizer as tk
from fox1 import files
from fox1.documents import ReadStats, iter_documents
from fox1.files import InputError
from texts import random_text, stdlib_text
from tokenizer import Tokenizer

REPO = Path(__file__).resolve().parent.parent
STDLIB = Path(os.__file__).parent


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
    assert sum(map(len, documents)) > 2 * files.CHUNK_CHARS
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


# ----------------------------------------------------------------------------------------------------------------
# Reading documents
# ----------------------------------------------------------------------------------------------------------------


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
    assert tokenizer_cli.main(argv + ["--out", str(out), "--workers", "1", "--quiet"]) == 0
    assert "trained 500 tokens" in capsys.readouterr().out
    assert Tokenizer.load(out).vocab_size == 500
    assert tokenizer_cli.main(["encode", "--tokenizer", str(out), "--allow-special", "hi<eos>"]) == 0
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
# Nothing a user made is lost; bad input is one line
# ----------------------------------------------------------------------------------------------------------------


def test_cli_train_refuses_to_replace_an_existing_file_without_force(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(stdlib_text(20_000)), encoding="utf-8")
    out = tmp_path / "tok.txt"
    out.write_text("my own notes", encoding="utf-8")
    argv = ["train", "--input", str(corpus), "--vocab-size", "300", "--out", str(out), "--workers", "1", "--quiet"]
    assert tokenizer_cli.main(argv) == 1
    assert "already exists: pass --force" in capsys.readouterr().err
    assert out.read_text(encoding="utf-8") == "my own notes"
    assert tokenizer_cli.main(argv + ["--force"]) == 0
    assert Tokenizer.load(out).vocab_size == 300


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
    assert tokenizer_cli.main(argv + ["--workers", "1"]) == 1
    assert "program" in capsys.readouterr().err
    assert tokenizer_cli.main(argv + ["--workers", "1", "--allow-binary"]) == 0


# ----------------------------------------------------------------------------------------------------------------
# Hugging Face tokenizer.json: reading (both configurations) and writing
# ----------------------------------------------------------------------------------------------------------------


def test_load_tokenizer_accepts_our_file_and_folders(trained, tmp_path):
    trained.save(tmp_path / "run" / "tokenizer.txt")
    assert tk.load_tokenizer(tmp_path / "run").fingerprint == trained.fingerprint
    assert tk.load_tokenizer(tmp_path / "run" / "tokenizer.txt").fingerprint == trained.fingerprint
    assert trained.token_id("<end_of_turn>") == 5 and trained.token_id("e") == trained.ranks[b"e"]
    assert trained.special_ids == set(range(6))
