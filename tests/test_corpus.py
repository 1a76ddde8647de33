"""Tests for fox1/corpus.py: the built-in corpus is this Python's standard library, split by prose share."""
import os
from pathlib import Path

from fox1 import corpus
from fox1.documents import ReadStats


def test_builtin_corpus_is_the_stdlib_one_file_per_document():
    files = corpus.builtin_files()
    stdlib = Path(os.__file__).parent
    relative = [f.relative_to(stdlib).as_posix() for f in files]
    assert relative == sorted(relative) and len(files) > 300 and "os.py" in relative
    assert not any(set(Path(r).parts) & corpus.BUILTIN_SKIP_DIRS for r in relative)
    first = next(corpus.builtin_documents())
    assert first == files[0].read_text(encoding="utf-8", errors="replace")


def test_prose_ratio_separates_documented_from_bare_code():
    documented = '"""Module docstring explaining the idea at length."""\n\ndef f(x):\n    # why: a comment\n' \
                 '    """Return x doubled, with a long explanation of the reasons."""\n    return 2 * x\n'
    bare = "def f(x):\n    y = x * 2\n    return [y, y + 1, y + 2]\n"
    assert corpus.prose_ratio(documented) >= corpus.DOCS_PROSE_RATIO > corpus.prose_ratio(bare) == 0
    assert 0 <= corpus.prose_ratio("def broken(:\n  '''unterminated") <= 1


def test_builtin_reading_counts_replaced_bytes(tmp_path):
    bad = tmp_path / "latin1.py"
    bad.write_bytes(b"x = 'caf\xe9'\n")
    stats = ReadStats()
    assert list(corpus.read_files([bad], stats)) == ["x = 'caf\ufffd'\n"] and stats.replaced_bytes == 1
