"""Tests for fox1/speed.py: int8 and int4 weight-only quantization (`sample.py --quantize`) against the unquantised
model, on a tiny model trained here for a few seconds (random weights have no text to be right about)."""
import copy
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cli import sample as sample_cli
import sample
from fox1.speed import (CPU_INT8_DOT, Int4Linear, Int8Linear, column_major, dequantize_int4, huge_pages,
                        int8_matmul, linear, quantize_groups_int4, quantize_int4, quantize_int8, quantize_rows_int8,
                        requantize_int4_rows)
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
    rest = [p for m in int8.modules() if not isinstance(m, Int8Linear) for p in m.parameters(recurse=False)]
    assert not any(p.dim() > 1 for p in rest)  # only norm gains stay as they were
    assert not any(p.requires_grad for m in matrices for p in m.parameters())  # frozen: for inference
    assert int8.num_params() == trained.num_params()


def test_int8_matmul_moves_each_product_no_more_than_its_rows_rounding_allows():
    """A prompt's rows are quantised like the weights (one scale per row): each activation moves by at most half
    its row's step, so output n moves by at most step / 2 * sum |W[n]|."""
    torch.manual_seed(0)
    weight, x = torch.randn(48, 64), torch.randn(2, 7, 64) * torch.logspace(-2, 2, 7)[:, None]
    quantized, scale = quantize_rows_int8(weight)
    exact = x @ (quantized.float() * scale[:, None]).T
    approx = int8_matmul(x, quantized, scale)
    step = x.abs().amax(dim=-1, keepdim=True) / 127
    assert approx.shape == exact.shape and approx.dtype == x.dtype
    assert ((approx - exact).abs() <= step / 2 * (quantized.float() * scale[:, None]).abs().sum(-1) * 1.001).all()
    assert not torch.equal(approx, exact)  # it does round the activations


@pytest.mark.skipif(not CPU_INT8_DOT, reason="this CPU has no int8 dot-product instructions")
def test_several_rows_take_the_int8_matmul():
    quantized, scale = quantize_rows_int8(torch.randn(48, 64))
    x = torch.randn(3, 64)
    torch.testing.assert_close(linear(x, quantized, scale), int8_matmul(x, quantized, scale))


def test_quantize_groups_int4_stores_each_groups_extreme_as_minus_8_and_moves_the_rest_half_a_step():
    torch.manual_seed(0)
    weight = torch.randn(8, 96) * torch.logspace(-3, 1, 8)[:, None]
    weight[2, :32] = 0.0  # an all-zero group must not divide by zero
    weight[5, 40] = 50.0  # an outlier coarsens only its own group of 32
    weight[1, 64:66] = torch.tensor([-3.0, 3.0])  # the opposite extreme would be +8: stored as 7, one step off
    packed, scale = quantize_groups_int4(weight)
    assert packed.dtype == torch.uint8 and packed.shape == (8, 48) and scale.shape == (8, 3)
    stored = torch.stack(((packed & 15), (packed >> 4)), dim=-1).view(8, 3, 32).long() - 8
    extremes = weight.view(8, 3, 32).abs().argmax(dim=-1, keepdim=True)
    nonzero = scale != 0
    assert (stored.gather(-1, extremes).squeeze(-1)[nonzero] == -8).all()
    step = scale.abs().repeat_interleave(32, dim=1)
    error = (dequantize_int4(packed, scale, torch.float32) - weight).abs()
    beyond_7_5 = weight / scale.repeat_interleave(32, dim=1) > 7.5
    assert beyond_7_5[1, 65] and error[1, 65] == pytest.approx(3 / 8)
    assert (error[~beyond_7_5] <= step[~beyond_7_5] / 2 * (1 + 1e-5)).all() and (error <= step * (1 + 1e-5)).all()
    assert scale[5, 1] == pytest.approx(-50 / 8) and scale[5, 0].abs() < 1.0 and scale[5, 2].abs() < 1.0
    assert (scale[2, 0] == 0) and (dequantize_int4(packed, scale, torch.float32)[2, :32] == 0).all()
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize_groups_int4(torch.randn(4, 40))


def test_int4_groups_requantised_as_int8_rows_move_no_weight_more_than_half_a_row_step():
    torch.manual_seed(0)
    weight = torch.randn(16, 96) * torch.logspace(-2, 1, 96)  # each row's three groups of very different sizes
    weight[3] = 0.0
    packed, scale = quantize_groups_int4(weight)
    rows, row_scale = requantize_int4_rows(packed, scale)
    assert rows.dtype == torch.int8 and rows.shape == weight.shape and row_scale.shape == (16,)
    error = (rows.float() * row_scale[:, None] - dequantize_int4(packed, scale, torch.float32)).abs()
    assert (error <= row_scale[:, None] / 2 * (1 + 1e-5)).all()
    # each row's largest group keeps its 16 steps, 127 / 8 apart: its extreme, stored as -8, becomes -+127
    assert (rows[3] == 0).all() and (rows[torch.arange(16) != 3].abs().amax(dim=1) == 127).all()


def test_quantize_int4_replaces_every_matrix(trained):
    int4 = quantize_int4(copy.deepcopy(trained))
    matrices = [m for m in int4.modules() if isinstance(m, Int4Linear)]
    assert len(matrices) == 4 * trained.config.num_layers + 1
    rest = [p for m in int4.modules() if not isinstance(m, Int4Linear) for p in m.parameters(recurse=False)]
    assert not any(p.dim() > 1 for p in rest) and int4.num_params() == trained.num_params()  # only norm gains


@pytest.mark.parametrize("quantize, perplexity_ratio, agreement", [(quantize_int8, 0.01, 0.95),
                                                                   (quantize_int4, 0.05, 0.85)])
def test_quantized_perplexity_and_next_tokens_match_the_unquantised_model(trained, heldout, quantize,
                                                                          perplexity_ratio, agreement):
    quantized = quantize(copy.deepcopy(trained))
    with torch.no_grad():
        exact, approx = trained(heldout[:, :-1]), quantized(heldout[:, :-1])
    targets = heldout[:, 1:].flatten()
    perplexity = F.cross_entropy(exact.flatten(0, 1), targets).exp()
    assert perplexity < 120  # trained: far below the 512 of a uniform guess, so agreement below means something
    ratio = F.cross_entropy(approx.flatten(0, 1), targets).exp() / perplexity
    assert ratio == pytest.approx(1.0, abs=perplexity_ratio)
    assert (approx.argmax(-1) == exact.argmax(-1)).float().mean() > agreement


def test_int8_greedy_tokens_mostly_equal_the_unquantised_ones(trained, heldout):
    int8 = quantize_int8(copy.deepcopy(trained))
    prompts = heldout[:, :16]
    exact = torch.tensor(sample.generate(trained, prompts, 24, temperature=0).tokens)
    approx = torch.tensor(sample.generate(int8, prompts, 24, temperature=0).tokens)
    assert (exact == approx).float().mean() > 0.75  # a greedy run may fork at a near-tie, and then differs


@pytest.mark.slow
@pytest.mark.parametrize("quantize", [quantize_int8, quantize_int4])
def test_compiled_quantized_decode_gives_the_eager_tokens(trained, heldout, tmp_path, monkeypatch, quantize):
    """int8: fox1's one-row kernel where the CPU runs it (else inductor's dot-product loop, fox1.speed.linear);
    int4: fox1's int4 kernel for one row and int8 rows made by its kernel for a prompt where the CPU runs them (else
    PyTorch's CPU int4 kernel); both called from the compiled graph as eagerly."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    quantized = quantize(copy.deepcopy(trained))
    eager = sample.generate(quantized, heldout[:1, :16], 12, temperature=0)
    compiled = sample.generate(quantized, heldout[:1, :16], 12, temperature=0, compile=True)
    assert compiled.tokens == eager.tokens


def mapping_flags(address: int) -> list[str]:
    """The VmFlags of this process's memory mapping that holds `address` (Linux's /proc/self/smaps)."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if "-" in line.split()[0] and not line.startswith("VmFlags"):
            low, high = (int(end, 16) for end in line.split()[0].split("-"))
            inside = low <= address < high
        elif inside and line.startswith("VmFlags:"):
            return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


@pytest.mark.skipif(sys.platform != "linux", reason="huge pages are advised on Linux only")
@pytest.mark.parametrize("layout", ["fp32", "column-major", "int8", "int4"])
def test_huge_pages_moves_every_tensor_and_changes_no_output(trained, heldout, layout):
    prepare = {"fp32": lambda m: m, "column-major": column_major, "int8": quantize_int8, "int4": quantize_int4}[layout]
    model = prepare(copy.deepcopy(trained))
    tensors = [*model.parameters(), *model.buffers()]
    before = [(t.shape, t.stride(), t.clone(), t.data_ptr()) for t in tensors]
    with torch.no_grad():
        expected = model(heldout)
    huge_pages(model)
    for tensor, (shape, stride, values, address) in zip(tensors, before):
        assert tensor.shape == shape and tensor.stride() == stride and torch.equal(tensor, values)
        assert tensor.data_ptr() != address
        assert "hg" in mapping_flags(tensor.data_ptr())  # advised MADV_HUGEPAGE, whatever the system's THP mode
        assert tensor.untyped_storage().nbytes() == tensor.nbytes  # its own storage: a deepcopy copies only it
    still = [*model.parameters(), *model.buffers()]
    assert len(still) == len(tensors) and all(a is b for a, b in zip(still, tensors))  # the tied embedding: one
    with torch.no_grad():
        assert torch.equal(model(heldout), expected)


@pytest.mark.skipif(sys.platform != "linux", reason="huge pages are advised on Linux only")
def test_every_kv_cache_lies_in_huge_pages(trained):
    """setup_kv_cache's, so generation's and a chat's (`sample.start_chat`) caches alike."""
    model = copy.deepcopy(trained)
    model.setup_kv_cache(1, 64)
    for layer in model.layers:
        cache = layer.self_attn.kv_cache
        assert "hg" in mapping_flags(cache.k.data_ptr()) and "hg" in mapping_flags(cache.v.data_ptr())


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_cli_quantize_generates(trained, tokenizer, tmp_path, capsys, kind):
    trained.save_pretrained(tmp_path)
    tokenizer.save(tmp_path / "tokenizer.txt")
    assert sample_cli.main(["--ckpt", str(tmp_path), "--prompt", "def ", "--max-new-tokens", "8", "--seed", "0",
                        "--quantize", kind]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("def ") and "decode:" in captured.err
