"""Tests for model.py: exact Fox-1 shape, attention semantics, the chunked loss, the KV cache."""
import copy

import pytest
import torch
import torch.nn.functional as F

import model
from model import Fox, FoxConfig, apply_rope, chunked_cross_entropy, rope_tables

# A very small Fox: 2 layers, GQA 4:1, a vocabulary small enough to check every logit.
MICRO = FoxConfig.from_preset("tiny", vocab_size=320, num_layers=2, context_len=64)


@pytest.fixture
def micro() -> Fox:
    torch.manual_seed(0)
    return Fox(MICRO).eval()


def test_fox_1_6b_parameter_count_on_meta_device():
    with torch.device("meta"):
        m = Fox(FoxConfig.from_preset("fox-1.6b"))
    assert m.num_params() == 1_665_271_808
    assert m.embed_tokens.weight.numel() == 524_288_000
    assert m.embed_tokens.weight.is_meta  # building it cost no memory
    assert m.flops_per_token(2048) == 6 * 1_665_271_808 + 12 * 32 * 2048 * 2048


def test_presets_keep_fox_ratios():
    for name, c in model.PRESETS.items():
        assert c.intermediate_size == 2 * c.hidden_size, name
        assert c.num_heads // c.num_kv_heads == 4, name
        assert c.norm_eps == 1e-5 and c.rope_theta == 10000.0, name
    assert FoxConfig.from_preset("tiny", vocab_size=4096).vocab_size == 4096
    with pytest.raises(ValueError, match="unknown preset"):
        FoxConfig.from_preset("huge")


def test_shapes_and_tied_head(micro):
    idx = torch.randint(0, MICRO.vocab_size, (3, 10))
    assert micro(idx).shape == (3, 10, MICRO.vocab_size)
    assert micro(idx, last_only=True).shape == (3, 1, MICRO.vocab_size)
    assert micro(idx, torch.randint(0, MICRO.vocab_size, (3, 10))).shape == ()
    assert not any("lm_head" in n for n, _ in micro.named_parameters())  # one matrix, two roles


def test_causality(micro):
    idx = torch.randint(0, MICRO.vocab_size, (1, 16))
    changed = idx.clone()
    changed[0, 9:] = (changed[0, 9:] + 1) % MICRO.vocab_size
    a, b = micro(idx), micro(changed)
    torch.testing.assert_close(a[:, :9], b[:, :9])
    assert not torch.allclose(a[:, 9], b[:, 9])


def test_gqa_equals_multi_head_attention_with_repeated_kv_heads():
    torch.manual_seed(0)
    gqa_config = FoxConfig.from_preset("tiny", vocab_size=320, num_layers=1, num_heads=4, num_kv_heads=2)
    mha_config = FoxConfig.from_preset("tiny", vocab_size=320, num_layers=1, num_heads=4, num_kv_heads=4)
    gqa, mha = Fox(gqa_config), Fox(mha_config)
    state = gqa.state_dict()
    hd = gqa_config.head_dim
    q, k, v = state["layers.0.self_attn.qkv_proj.weight"].split([4 * hd, 2 * hd, 2 * hd])
    # kv head j serves query heads 2j and 2j+1
    k, v = (w.view(2, hd, -1).repeat_interleave(2, dim=0).reshape(4 * hd, -1) for w in (k, v))
    state["layers.0.self_attn.qkv_proj.weight"] = torch.cat([q, k, v])
    mha.load_state_dict(state)
    idx = torch.randint(0, 320, (2, 12))
    torch.testing.assert_close(gqa(idx), mha(idx))


def test_rope_scores_depend_only_on_relative_position():
    cos, sin = rope_tables(MICRO)
    q, k = torch.randn(MICRO.head_dim), torch.randn(MICRO.head_dim)

    def score(m: int, n: int) -> torch.Tensor:
        return apply_rope(q[None], cos[m], sin[m]) @ apply_rope(k[None], cos[n], sin[n]).T

    torch.testing.assert_close(score(3, 1), score(40, 38), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(score(7, 7), score(0, 0), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(score(3, 1), score(3, 2))


def test_rope_uses_llama_rotate_half_layout():
    cos, sin = rope_tables(MICRO)
    half = MICRO.head_dim // 2
    x = torch.zeros(MICRO.head_dim)
    x[0] = 1.0  # pairs dimension 0 with dimension `half`, not with dimension 1
    y = apply_rope(x, cos[5], sin[5])
    assert y[0] == pytest.approx(cos[5, 0].item()) and y[half] == pytest.approx(sin[5, 0].item())
    assert y[1] == 0


def test_kv_cached_decode_equals_full_forward(micro):
    idx = torch.randint(0, MICRO.vocab_size, (2, 20))
    full = micro(idx)
    micro.setup_kv_cache(batch_size=2, max_len=32)
    prefill = micro(idx[:, :12], input_pos=torch.arange(12))
    steps = [micro(idx[:, t:t + 1], input_pos=torch.tensor([t])) for t in range(12, 20)]
    cached = torch.cat([prefill] + steps, dim=1)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)


def test_bf16_model_keeps_an_fp32_kv_cache_on_cpu_and_decodes_as_its_full_forward(micro):
    """CPU attention is several times slower over bf16 keys and values: the cache stays fp32 (fox1.speed.cache_dtype),
    and the cached steps still give the bf16 model's own logits."""
    bf16 = copy.deepcopy(micro).to(torch.bfloat16)
    idx = torch.randint(0, MICRO.vocab_size, (1, 12))
    full = bf16(idx)
    bf16.setup_kv_cache(batch_size=1, max_len=16)
    assert bf16.layers[0].self_attn.kv_cache.k.dtype == torch.float32
    cached = torch.cat([bf16(idx[:, :8], input_pos=torch.arange(8))] +
                       [bf16(idx[:, t:t + 1], input_pos=torch.tensor([t])) for t in range(8, 12)], dim=1)
    torch.testing.assert_close(cached.float(), full.float(), atol=0.05, rtol=0.05)


def test_chunked_loss_equals_naive_loss_value_and_gradients(monkeypatch):
    monkeypatch.setattr(model, "LOSS_CHUNK_ELEMENTS", 7 * 50)  # force 7-token chunks, an uneven split
    torch.manual_seed(0)
    hidden = torch.randn(40, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    targets = torch.randint(0, 50, (40,))
    targets[[0, 13, 39]] = model.IGNORE_INDEX
    loss = chunked_cross_entropy(hidden, weight, targets) * 3.0  # a scaled loss checks backward's grad_output
    loss.backward()
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    naive = F.cross_entropy(hidden @ weight.T, targets, ignore_index=model.IGNORE_INDEX) * 3.0
    naive.backward()
    torch.testing.assert_close(loss, naive)
    torch.testing.assert_close(grads[0], hidden.grad)
    torch.testing.assert_close(grads[1], weight.grad)
    with torch.no_grad():
        torch.testing.assert_close(chunked_cross_entropy(hidden, weight, targets) * 3.0, naive)


def test_chunked_loss_gradients_in_bf16_are_close_to_fp32(monkeypatch):
    """bf16 inputs take bf16 matmuls (each chunk's weight gradient summed in fp32): within bf16 rounding."""
    monkeypatch.setattr(model, "LOSS_CHUNK_ELEMENTS", 16 * 300)  # 16-token chunks: 8 partial sums
    torch.manual_seed(0)
    hidden = torch.randn(128, 32).bfloat16().requires_grad_()
    weight = torch.randn(300, 32).bfloat16().requires_grad_()
    targets = torch.randint(0, 300, (128,))
    chunked_cross_entropy(hidden, weight, targets).backward()
    hidden32, weight32 = (t.detach().float().requires_grad_() for t in (hidden, weight))
    F.cross_entropy(hidden32 @ weight32.T, targets).backward()
    assert weight.grad.dtype == torch.bfloat16
    for got, want in ((hidden.grad, hidden32.grad), (weight.grad, weight32.grad)):
        assert (got.float() - want).norm() / want.norm() < 2e-2


def test_model_loss_matches_cross_entropy_of_logits(micro):
    idx = torch.randint(0, MICRO.vocab_size, (2, 9))
    targets = torch.randint(0, MICRO.vocab_size, (2, 9))
    expected = F.cross_entropy(micro(idx).flatten(0, 1), targets.flatten())
    torch.testing.assert_close(micro(idx, targets), expected)


def test_document_masking_isolates_documents(micro):
    docs = [torch.randint(0, MICRO.vocab_size, (n,)) for n in (5, 8, 3)]
    packed = torch.cat(docs)[None]
    doc_ids = torch.cat([torch.full((len(d),), i) for i, d in enumerate(docs)])[None]
    position_ids = torch.cat([torch.arange(len(d)) for d in docs])[None]
    packed_logits = micro(packed, position_ids=position_ids, doc_ids=doc_ids)
    separate = torch.cat([micro(d[None]) for d in docs], dim=1)
    torch.testing.assert_close(packed_logits, separate, atol=1e-5, rtol=1e-5)


def test_document_masking_has_a_backward_on_cpu(micro):
    idx = torch.randint(0, MICRO.vocab_size, (1, 10))
    doc_ids = torch.tensor([[0] * 4 + [1] * 6])
    position_ids = torch.tensor([list(range(4)) + list(range(6))])
    micro.train()
    micro(idx, idx, position_ids=position_ids, doc_ids=doc_ids).backward()
    assert all(p.grad is not None for p in micro.parameters())


