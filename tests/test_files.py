"""Tests for fox1/files.py: reading text / JSONL / gzip documents, input globs, atomic writes, run locks.

Text is generated here (never downloaded)."""
import gzip
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fox1 import files
from fox1.files import InputError, ReadStats, expand_inputs, iter_documents


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
    path.write_text(line * 2500 + "z" * (files.MAX_DOCUMENT_CHARS * 2), encoding="utf-8")
    documents = list(iter_documents([path]))
    assert "".join(documents) == path.read_text(encoding="utf-8")
    assert len(documents) >= 4 and max(map(len, documents)) <= 2 * files.MAX_DOCUMENT_CHARS
    assert documents[0].endswith("\n") and len(documents[0]) >= files.MAX_DOCUMENT_CHARS


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


def test_expand_inputs(tmp_path, monkeypatch):
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
    (tmp_path / "link.txt").symlink_to(tmp_path / "a.txt")
    monkeypatch.chdir(tmp_path)
    assert expand_inputs(["a.txt", "./a.txt", tmp_path / "a.txt", "link.txt", "*.txt"]) == [Path("a.txt")]


def test_jsonl_lines_longer_than_a_mebibyte_are_read_whole(tmp_path):
    book = "It was a dark and stormy night. " * (files.MAX_DOCUMENT_CHARS // 16)  # 2 MiB in one JSONL line
    path = tmp_path / "books.jsonl"
    path.write_text(f'{{"text": "short"}}\n{{"text": "{book}"}}\n{{"text": "after"}}\n', encoding="utf-8")
    for skip_bad_lines in (False, True):
        stats = ReadStats()
        assert list(iter_documents([path], skip_bad_lines=skip_bad_lines, stats=stats)) == ["short", book, "after"]
        assert stats.bad_lines == 0


def test_a_lock_refuses_a_second_holder_and_takes_over_a_dead_ones(tmp_path, capsys):
    lock = tmp_path / "out" / ".lock"
    with files.exclusive(lock, "--out out"):
        assert lock.read_text().split()[0] == str(os.getpid())
        with pytest.raises(files.LockedError, match=rf"--out out is in use by process {os.getpid()} on "):
            with files.exclusive(lock, "--out out"):
                pass
        assert lock.exists()  # the refused second holder did not remove the first one's lock
    assert not lock.exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(f"{dead.stdout.strip()} {socket.gethostname()}\n")  # left by a process that was killed
    with files.exclusive(lock, "--out out"):
        assert "taking over the lock" in capsys.readouterr().err
    lock.write_text("12")  # torn by a kill mid-write
    with files.exclusive(lock, "--out out"):
        pass
    lock.write_text(f"{os.getpid()} another-host\n")  # another machine's lock cannot be judged from here
    with pytest.raises(files.LockedError, match="another-host"):
        with files.exclusive(lock, "--out out"):
            pass


@pytest.mark.parametrize("rule, good, bad", [
    (files.Number(1), [1, 7], [0, -3, math.nan, math.inf]),
    (files.Number(0, above=True), [1e-9, 3.0], [0.0, -1.0, math.nan]),
    (files.Number(0, 1, above=True), [0.5, 1.0], [0.0, 1.01, math.nan, -math.inf]),
])
def test_number_rules(rule, good, bad):
    assert all(rule.problem(value) is None for value in good)
    assert all(rule.problem(value) for value in bad)
