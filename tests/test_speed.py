"""Tests for the speed paths: int8 weight-only quantization (`model.quantize_int8`, `sample.py --quantize int8`)
against the unquantised model, on a tiny model trained here for a few seconds (random weights have no text to
be right about)."""
import copy
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import sample
from fox1.speed import Int8Linear, quantize_int8, quantize_rows_int8
from model import Fox, FoxConfig

STDLIB = sorted(Path(os.__file__).parent.glob("*.py"))
SEQ_LEN = 64


@pytest.fixture(scope="module")
def trained(tokenizer) -> Fox:
    """A 2-layer, 0.3M-parameter model after 150 AdamW steps on ~30 stdlib modules (~10 s): its loss falls
    from 6.2 to about 3.5, far enough that its next-token choices mean something."""
    torch.manual_seed(0)
    config = FoxConfig.from_preset("tiny", vocab_size=tokenizer.vocab_size, hidden_size=128, num_heads=2,
                                   num_kv_heads=1, intermediate_size=256, num_layers=2, context_len=SEQ_LEN * 2)
    model = Fox(config)
    ids = torch.tensor(tokenizer.encode("\n".join(p.read_text(encoding="utf-8") for p in STDLIB[:30])))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        starts = torch.randint(len(ids) - SEQ_LEN - 1, (16,))
        batch = torch.stack([ids[s:s + SEQ_LEN + 1] for s in starts.tolist()])
        model(batch[:, :-1], batch[:, 1:]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return model.eval()


@pytest.fixture(scope="module")
def heldout(tokenizer) -> torch.Tensor:
    """(8, 64) windows of stdlib modules the model was not trained on."""
    ids = tokenizer.encode("\n".join(p.read_text(encoding="utf-8") for p in STDLIB[40:44]))
    return torch.tensor(ids[:8 * SEQ_LEN]).view(8, SEQ_LEN)


def test_quantize_rows_int8_moves_no_weight_more_than_half_a_step():
    torch.manual_seed(0)
    weight = torch.randn(64, 96) * torch.logspace(-3, 1, 64)[:, None]  # rows of very different sizes
    weight[3] = 0.0  # an all-zero row must not divide by zero
    weight[5, 7] = 50.0  # an outlier only coarsens its own row
    quantized, scale = quantize_rows_int8(weight)
    assert quantized.dtype == torch.int8 and scale.shape == (64,)
    error = (quantized.float() * scale[:, None] - weight).abs()
    assert (error <= scale[:, None] / 2 * (1 + 1e-5)).all()
    assert (quantized[torch.arange(64) != 3].abs().amax(dim=1) == 127).all()  # each row uses the full range
    assert (quantized[3] == 0).all()
    assert scale[5] > 50 / 127 * 0.999 and scale[4] < 1.0


def test_quantize_int8_replaces_every_matrix_and_keeps_the_norms(trained):
    int8 = quantize_int8(copy.deepcopy(trained))
    matrices = [m for m in int8.modules() if isinstance(m, Int8Linear)]
    assert len(matrices) == 4 * trained.config.num_layers + 1  # 4 per block + the tied embedding / LM head
    assert not any(p.dim() > 1 for p in int8.parameters())  # only norm gains stay floating point
    assert int8.num_params() == trained.num_params()


def test_int8_perplexity_and_next_tokens_match_the_unquantised_model(trained, heldout):
    int8 = quantize_int8(copy.deepcopy(trained))
    with torch.no_grad():
        exact, approx = trained(heldout[:, :-1]), int8(heldout[:, :-1])
    targets = heldout[:, 1:].flatten()
    perplexity = F.cross_entropy(exact.flatten(0, 1), targets).exp()
    assert perplexity < 120  # trained: far below the 512 of a uniform guess, so agreement below means something
    assert F.cross_entropy(approx.flatten(0, 1), targets).exp() / perplexity == pytest.approx(1.0, abs=0.01)
    agreement = (approx.argmax(-1) == exact.argmax(-1)).float().mean()
    assert agreement > 0.95


def test_int8_greedy_tokens_mostly_equal_the_unquantised_ones(trained, heldout):
    int8 = quantize_int8(copy.deepcopy(trained))
    prompts = heldout[:, :16]
    exact = torch.tensor(sample.generate(trained, prompts, 24, temperature=0).tokens)
    approx = torch.tensor(sample.generate(int8, prompts, 24, temperature=0).tokens)
    assert (exact == approx).float().mean() > 0.75  # a greedy run may fork at a near-tie, and then differs


@pytest.mark.slow
def test_compiled_int8_decode_gives_the_eager_int8_tokens(trained, heldout, tmp_path, monkeypatch):
    """The compiled one-row path converts int8 to floats inside inductor's dot-product loop (`model.linear`)."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    int8 = quantize_int8(copy.deepcopy(trained))
    eager = sample.generate(int8, heldout[:1, :16], 12, temperature=0)
    compiled = sample.generate(int8, heldout[:1, :16], 12, temperature=0, compile=True)
    assert compiled.tokens == eager.tokens


def test_cli_quantize_int8_generates(trained, tokenizer, tmp_path, capsys):
    trained.save_pretrained(tmp_path)
    tokenizer.save(tmp_path / "tokenizer.txt")
    assert sample.main(["--ckpt", str(tmp_path), "--prompt", "def ", "--max-new-tokens", "8", "--seed", "0",
                        "--quantize", "int8"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("def ") and "decode:" in captured.err
