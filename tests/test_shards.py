"""Tests for fox1/shards.py: a prepared source is replaced whole, never over a user's files, never by two runs at
once, and a changed input is noticed even when its size and mtime were kept."""
import os
import socket

import pytest

from cli import data as data_cli
from fox1.files import LockedError
from fox1.shards import DataError, TokenSplit, inputs_key


@pytest.fixture
def inputs(tmp_path, tokenizer):
    tokenizer.save(tmp_path / "tok.txt")
    text = tmp_path / "corpus.txt"
    text.write_text("".join(f"document {i} about the quick brown fox\n\n\n" for i in range(50)))
    return tmp_path / "tok.txt", text


def test_preparing_again_refuses_to_delete_a_file_the_user_put_in_the_source(tmp_path, inputs):
    tok, text = inputs
    source = data_cli.prepare([str(text)], tok, tmp_path / "data", "web", progress=False)
    (source / "README.md").write_text("my notes")
    text.write_text(text.read_text() + "one more document\n")
    with pytest.raises(DataError, match=r"holds 'README.md', which a preparation did not write"):
        data_cli.prepare([str(text)], tok, tmp_path / "data", "web", progress=False)
    assert (source / "README.md").read_text() == "my notes"
    (source / "README.md").unlink()
    data_cli.prepare([str(text)], tok, tmp_path / "data", "web", progress=False)  # ours alone: replaced


def test_a_second_preparation_of_one_source_is_refused_while_the_first_runs(tmp_path, inputs):
    tok, text = inputs
    lock = tmp_path / "data" / ".web.lock"
    lock.parent.mkdir()
    lock.write_text(f"{os.getpid()} {socket.gethostname()}\n")  # a live preparation (this process) holds it
    staging = tmp_path / "data" / ".web.tmp-first"
    staging.mkdir()  # the first run's half-written source: not debris while it runs
    with pytest.raises(LockedError, match=r"source .*web is in use by process"):
        data_cli.prepare([str(text)], tok, tmp_path / "data", "web", progress=False)
    assert staging.is_dir() and not (tmp_path / "data" / "web").exists()
    lock.unlink()
    data_cli.prepare([str(text)], tok, tmp_path / "data", "web", progress=False)
    assert not staging.exists() and not lock.exists()  # debris of a finished run is cleaned, the lock released


def test_an_input_edited_in_place_is_noticed_even_with_the_same_size_and_mtime(tmp_path, inputs):
    tok, text = inputs
    stat = text.stat()
    before = inputs_key([text], "fingerprint")
    original = text.read_text()
    text.write_text(original.replace("quick", "slick", 1))  # the same length
    os.utime(text, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert text.stat().st_size == stat.st_size and text.stat().st_mtime_ns == stat.st_mtime_ns
    assert inputs_key([text], "fingerprint") != before
    data_cli.prepare([str(text)], tok, tmp_path / "data", "web", progress=False)
    split = TokenSplit(tmp_path / "data", "web", "train")
    assert split.tokens > 0
