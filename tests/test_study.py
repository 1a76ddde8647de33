"""Tests for study.py: bits per byte, per-token and per-position losses, the equal-parameter search, the
synthetic tasks, seed verdicts, the GQA cache accounting, and one end-to-end `--quick` curriculum run."""
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import data
import study
from cli import study as study_cli
from model import IGNORE_INDEX, Fox, FoxConfig
from tokenizer import Tokenizer

REPO = Path(__file__).resolve().parent.parent
STDLIB = Path(os.__file__).parent
SMALL = FoxConfig(vocab_size=320, hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=32,
                  intermediate_size=128, context_len=64)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return [path.read_text(errors="replace") for path in sorted(STDLIB.glob("[a-c]*.py"))[:8]]


@pytest.fixture(scope="module")
def tokenizer(texts) -> Tokenizer:
    return Tokenizer.train(texts, 400, workers=1, progress=False)


def windows_of(tokenizer: Tokenizer, texts: list[str], seq_len: int, count: int) -> data.Batch:
    """count packed windows of <bos> text <eos> documents, as data.py stores and packs them."""
    stream = [t for text in texts for t in [tokenizer.bos_id, *tokenizer.encode(text), tokenizer.eos_id]]
    width = seq_len + 1
    return data.pack(np.array(stream[:count * width]).reshape(count, width), tokenizer.bos_id)


def test_byte_lengths_add_up_to_the_text(tokenizer, texts):
    lengths = study.token_byte_lengths(tokenizer)
    ids = tokenizer.encode(texts[0])
    assert int(lengths[ids].sum()) == len(texts[0].encode("utf-8"))
    assert lengths[tokenizer.bos_id] == lengths[tokenizer.eos_id] == 0


def test_bits_per_byte_of_a_uniform_model(tokenizer, texts):
    """All-zero weights give uniform logits: ln(V) nats a token, so bits/byte = tokens x log2(V) / bytes."""
    config = replace(SMALL, vocab_size=tokenizer.vocab_size)
    model = Fox(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    batch = windows_of(tokenizer, texts, 64, 3)
    lengths = study.token_byte_lengths(tokenizer)
    result = study.evaluate(model, [batch], lengths)
    counted = batch.targets[batch.targets != IGNORE_INDEX]
    assert result["loss"] == pytest.approx(math.log(tokenizer.vocab_size), rel=1e-5)
    assert result["eval_bytes"] == int(lengths[counted].sum())
    assert result["bits_per_byte"] == pytest.approx(len(counted) * math.log2(tokenizer.vocab_size)
                                                    / result["eval_bytes"], rel=1e-5)
    assert study.bits_per_byte(8 * math.log(2) * 10, 10) == pytest.approx(8.0)
    with pytest.raises(study.StudyError):
        study.bits_per_byte(1.0, 0)


def test_token_losses_average_to_the_model_loss(tokenizer, texts):
    torch.manual_seed(0)
    model = Fox(replace(SMALL, vocab_size=tokenizer.vocab_size)).eval()
    batch = windows_of(tokenizer, texts, 64, 4)
    losses = study.token_losses(model, batch)
    assert torch.isnan(losses).equal(batch.targets == IGNORE_INDEX)
    with torch.no_grad():
        expected = model(batch.inputs, batch.targets, position_ids=batch.position_ids, doc_ids=batch.doc_ids)
    assert float(losses.nanmean()) == pytest.approx(float(expected), rel=1e-5)


def test_position_bucket_losses():
    losses = torch.tensor([[1.0, 2.0, float("nan"), 4.0, 5.0, 6.0, 7.0, 8.0]])
    positions = torch.tensor([[0, 1, 2, 3, 0, 1, 6, 7]])  # a second document starts at index 4
    assert study.position_bucket_losses(losses, positions, 8) == [pytest.approx(3.5), pytest.approx(4.0), None,
                                                                   pytest.approx(7.5)]


def test_truncated_tokenizer_is_the_smaller_trained_one(texts):
    big = Tokenizer.train(texts, 420, workers=1, progress=False)
    small = Tokenizer.train(texts, 330, workers=1, progress=False)
    assert study.truncate_tokenizer(big, 330).fingerprint == small.fingerprint
    with pytest.raises(study.StudyError):
        study.truncate_tokenizer(big, 500)


def test_equal_param_configs_span_depths_at_the_same_size():
    base = replace(FoxConfig.from_preset("tiny"), num_layers=4, vocab_size=4096)
    target = study.non_embedding_params(base)
    with torch.device("meta"):
        assert Fox(base).num_params() - base.vocab_size * base.hidden_size == target
    shapes = [study.equal_param_config(base, layers, target) for layers in (1, 2, 4, 8, 16)]
    assert [s.num_layers for s in shapes] == [1, 2, 4, 8, 16]
    assert [s.hidden_size for s in shapes] == sorted((s.hidden_size for s in shapes), reverse=True)
    for shape in shapes:
        assert abs(study.non_embedding_params(shape) - target) <= 0.02 * target
        assert shape.num_heads % shape.num_kv_heads == 0 and shape.hidden_size <= shape.intermediate_size
        with torch.device("meta"):
            assert Fox(shape).num_params() - shape.vocab_size * shape.hidden_size == study.non_embedding_params(shape)
    assert shapes[2] == base  # tiny at 4 layers is its own best match
    with pytest.raises(study.StudyError):
        study.equal_param_config(base, 200, target)


def test_synthetic_tasks():
    rng = random.Random(0)
    facts = study.make_facts(rng, 20)
    documents, seen = study.synthetic_documents(rng, facts, 200, 3)
    lines = "\n".join(documents).split("\n")
    assert len(lines) == 200 and len(documents) == math.ceil(200 / 32)
    for line in lines:
        numbers = re.fullmatch(r"(\d{3}) \+ (\d{3}) = (\d+)", line)
        assert numbers or re.fullmatch(r"the color of [a-z]+ is [a-z]+\.", line), line
        if numbers:
            assert int(numbers[1]) + int(numbers[2]) == int(numbers[3])
    assert len(seen) > 50
    items = study.addition_items(rng, 30, 3, seen)
    for item in items:
        a, b = map(int, re.fullmatch(r"(\d+) \+ (\d+) =", item["query"]).groups())
        assert (a, b) not in seen
        assert int(item["choices"][item["gold"]]) == a + b and len(set(item["choices"])) == 4
        assert len({len(choice) for choice in item["choices"]}) == 1
    recall = study.recall_items(rng, facts)
    for item, (name, color) in zip(recall, facts):
        assert item["query"] == f"the color of {name} is" and item["choices"][item["gold"]] == color
        assert len(set(item["choices"])) == 4
    trained_facts = {line for line in lines if line.startswith("the color of")}
    assert trained_facts and trained_facts <= {study.fact_line(name, color) for name, color in facts}
    again = random.Random(0)
    assert study.make_facts(again, 20) == facts


def test_verdicts_and_cells():
    assert study.verdict([1.0, 1.1], [1.2, 1.3]) == "lower"
    assert study.verdict([1.4, 1.5], [1.2, 1.3]) == "higher"
    assert study.verdict([1.0, 1.25], [1.2, 1.3]) == "no difference"
    assert study.verdict([1.0], [2.0]) == "not judged (1 seed)"
    assert study.best_arm({"a": [1.0, 1.1], "b": [1.2, 1.3], "c": [1.05, 1.4]}, lowest=True) == \
        "a (no difference from c)"
    assert study.best_arm({"a": [1.0, 1.1], "b": [1.2, 1.3]}, lowest=False) == \
        "b (beyond the seed spread of every other arm)"
    assert study.cell([1.0, 2.0]) == "1.500 (1.000-2.000)"
    assert study.cell([3.0]) == "3.000"
    assert study.cell([1.0, None]) == "-"


def test_gqa_cache_bytes_follow_kv_heads(tmp_path):
    settings = study.GqaSettings(kv_heads=(1, 4), contexts=(64,), layers=1, vocab_size=512, decode_steps=2,
                                 repeats=1)
    report = study.run_gqa(settings, 1, tmp_path)
    rows = {row["kv_heads"]: row for row in report.numbers["rows"]}
    itemsize = 2 if report.numbers["kv_cache_dtype"] == "torch.bfloat16" else 4
    for kv, row in rows.items():
        assert row["kv_cache_bytes"] == 2 * kv * 64 * 128 * itemsize  # k and v, 1 layer, head_dim 128
        assert row["fox1_kv_cache_bytes_bf16"] == 2 * 32 * kv * 64 * 128 * 2
        assert row["decode_tokens_per_s"] > 0
    assert "KV heads" in report.table and "quality" in report.conclusion


@pytest.mark.slow
def test_quick_curriculum_end_to_end(tmp_path):
    """The whole experiment at --quick settings: tokenizer, corpus, 4 arms, table, JSON, closing line."""
    result = subprocess.run([sys.executable, str(REPO / "study.py"), "curriculum", "--quick", "--seeds", "1",
                             "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    numbers = json.loads((tmp_path / "curriculum-quick.json").read_text())
    assert list(numbers["arms"]) == list(study.curriculum_arms(128, 8192))
    for runs in numbers["arms"].values():
        assert len(runs) == 1 and 4 < runs[0]["loss"] < math.log(512) + 1
        assert runs[0]["tokens"] == numbers["arms"]["3-stage curriculum"][0]["tokens"]
        assert len(runs[0]["loss_by_position"]) == study.POSITION_BUCKETS
    assert "| 3-stage curriculum | 32 / 64 / 128 |" in result.stdout
    assert "not judged (1 seed)" in result.stdout and "about Fox-1" in result.stdout.strip().splitlines()[-1]


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    afile = tmp_path / "file"
    afile.write_text("x")
    assert study_cli.main(["gqa", "--out", str(afile)]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1 and "is a file" in error
    with pytest.raises(SystemExit) as exit_info:
        study_cli.parse_args(["vocab", "--seeds", "0"])
    assert exit_info.value.code == 2 and "--seeds" in capsys.readouterr().err


def test_ctrl_c_during_an_experiment_is_one_line(tmp_path):
    process = subprocess.Popen([sys.executable, str(REPO / "study.py"), "curriculum", "--quick", "--seeds", "1",
                                "--out", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(tmp_path.glob("corpus/*")):  # the experiment has started
        assert process.poll() is None and time.time() < deadline, process.communicate()[1][-2000:]
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines()[-1] == "interrupted: curriculum-quick stopped; its results were not written"
    assert not (tmp_path / "curriculum-quick.json").exists()
