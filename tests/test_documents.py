"""Tests for fox1/documents.py: corpora read as they ship (text, JSONL, gzip, zstd, Parquet, hub datasets), the
same documents whatever the container, one-line errors for what cannot be read. Text is generated here."""
import gzip
import json
from pathlib import Path

import pytest

from fox1 import documents as docs
from fox1.documents import ReadStats, expand_inputs, iter_documents
from fox1.files import InputError


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
    path.write_text(line * 2500 + "z" * (docs.MAX_DOCUMENT_CHARS * 2), encoding="utf-8")
    documents = list(iter_documents([path]))
    assert "".join(documents) == path.read_text(encoding="utf-8")
    assert len(documents) >= 4 and max(map(len, documents)) <= 2 * docs.MAX_DOCUMENT_CHARS
    assert documents[0].endswith("\n") and len(documents[0]) >= docs.MAX_DOCUMENT_CHARS


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
    book = "It was a dark and stormy night. " * (docs.MAX_DOCUMENT_CHARS // 16)  # 2 MiB in one JSONL line
    path = tmp_path / "books.jsonl"
    path.write_text(f'{{"text": "short"}}\n{{"text": "{book}"}}\n{{"text": "after"}}\n', encoding="utf-8")
    for skip_bad_lines in (False, True):
        stats = ReadStats()
        assert list(iter_documents([path], skip_bad_lines=skip_bad_lines, stats=stats)) == ["short", book, "after"]
        assert stats.bad_lines == 0


CORPUS = ["First document.\nIt has two lines.", "Second: naïve café 日本語 😀", "Third, with a \"quote\" and \\ too."]


def write_corpus_as(tmp_path: Path, kind: str) -> Path:
    """CORPUS as a FineWeb-style Parquet file, a SlimPajama-style .jsonl.zst, or plain JSONL, with an "id" column
    beside the text and the text under "content" (as The Stack calls it)."""
    rows = [{"id": i, "content": text} for i, text in enumerate(CORPUS)]
    lines = "".join(json.dumps(row) + "\n" for row in rows).encode()
    if kind == "parquet":
        pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
        path = tmp_path / "train-00000.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=2)  # two row groups
    elif kind == "zst":
        zstandard = pytest.importorskip("zstandard")
        path = tmp_path / "chunk_0.jsonl.zst"
        path.write_bytes(zstandard.ZstdCompressor().compress(lines[:40]) + zstandard.ZstdCompressor().compress(
            lines[40:]))  # two frames, as concatenated shards are
    else:
        path = tmp_path / "plain.jsonl"
        path.write_bytes(lines)
    return path


@pytest.mark.parametrize("kind", ["parquet", "zst"])
def test_parquet_and_zstd_give_the_documents_of_the_jsonl(tmp_path, kind):
    path = write_corpus_as(tmp_path, kind)
    plain = write_corpus_as(tmp_path, "jsonl")
    assert list(iter_documents([path], text_field="content")) == list(iter_documents([plain], text_field="content"))
    assert list(iter_documents([path], text_field="content")) == CORPUS
    with pytest.raises(InputError, match=r"content|text"):
        list(iter_documents([path]))  # the default field is "text": one line naming what is there


def test_a_missing_optional_package_is_one_line_naming_it(tmp_path, monkeypatch):
    path = tmp_path / "x.parquet"
    path.write_bytes(b"PAR1")
    monkeypatch.setitem(__import__("sys").modules, "pyarrow", None)  # as if not installed
    with pytest.raises(InputError, match=r"x.parquet: to read .parquet files, install the optional package: "
                                         r"pip install pyarrow"):
        list(iter_documents([path]))


def test_damaged_parquet_and_zstd_are_one_line(tmp_path):
    pytest.importorskip("pyarrow")
    zstandard = pytest.importorskip("zstandard")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match="broken.parquet: not a readable Parquet file"):
        list(iter_documents([broken]))
    cut = tmp_path / "cut.jsonl.zst"
    cut.write_bytes(zstandard.ZstdCompressor().compress(b'{"text": "a"}\n' * 1000)[:-20])
    with pytest.raises(InputError, match="cut.jsonl.zst: cannot read .*truncated"):
        list(iter_documents([cut]))
    cut.write_bytes(b"not zstd at all")
    with pytest.raises(InputError, match="cut.jsonl.zst: cannot read .*not valid zstd data"):
        list(iter_documents([cut]))


def test_a_hub_dataset_streams_through_datasets(tmp_path):
    pytest.importorskip("datasets")
    folder = tmp_path / "my_corpus"
    folder.mkdir()
    write_corpus_as(folder, "jsonl")  # a local folder of data files reads like a hub dataset, offline
    spec = f"hf:{folder}@train"
    assert expand_inputs([spec, spec]) == [spec]
    assert list(iter_documents([spec], text_field="content")) == CORPUS
    with pytest.raises(InputError, match="no string field 'text'"):
        list(iter_documents([spec]))

