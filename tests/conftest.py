"""Fixtures shared by several test files."""
import os
from pathlib import Path

import pytest
import torch

from texts import stdlib_text
from tokenizer import Tokenizer


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny models (about 1M parameters): each op is microseconds of work, and on a busy 2-core
    machine a 2-thread OpenMP region waits milliseconds for its second thread. One thread is ~3x faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    """A 512-token BPE trained on ~1 MB of the standard library's own source (well under a second)."""
    stdlib = sorted(Path(os.__file__).parent.glob("*.py"))[:40]
    return Tokenizer.train([p.read_text(encoding="utf-8") for p in stdlib], 512, workers=1, progress=False)


@pytest.fixture(scope="module")
def trained() -> Tokenizer:
    """A 1,500-token BPE on 300K characters of the standard library plus mixed scripts and emoji."""
    documents = stdlib_text(300_000) + ["naïve café 日本語のテキスト 😀😀 <eos> 12345 ٣٤٥ " * 20]
    return Tokenizer.train(documents, 1500, workers=1, progress=False)
