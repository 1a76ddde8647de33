"""Tests for fox1/hf_reference.py: the Hugging Face contenders bench.py times, present only when installed."""
import sys

import pytest
import torch

from fox1.hf_reference import hf_llama, hf_loss, hf_tokenizer_speed
from model import Fox, FoxConfig
from tokenizer import DEFAULT_PATTERN, SPECIAL_TOKENS

CONFIG = FoxConfig.from_preset("tiny", vocab_size=320, num_layers=2, context_len=64)


def test_missing_packages_give_no_contender(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    assert hf_llama(CONFIG, torch.float32, torch.device("cpu")) is None
    assert hf_tokenizer_speed(["some text"], 300, DEFAULT_PATTERN, SPECIAL_TOKENS) is None


def test_the_hf_model_has_our_shape_and_its_loss_scores_the_same_targets():
    pytest.importorskip("transformers")
    hf = hf_llama(CONFIG, torch.float32, torch.device("cpu"))
    fox = Fox(CONFIG)
    assert sum(p.numel() for p in hf.parameters()) == fox.num_params()  # tied head counted once by both
    batch = torch.randint(CONFIG.vocab_size, (2, 17))
    assert float(hf_loss(hf, batch).detach()) == pytest.approx(5.77, abs=0.5)  # random weights: about ln(320)
