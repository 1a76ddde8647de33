"""Tests for fox1/hf_llama.py: Hugging Face Llama checkpoints written and read back (Fox.save_pretrained /
from_pretrained), tensor names and shapes, and one-line errors for damaged folders."""
import json
import os

import pytest
import torch

from fox1 import hf_llama
from model import CheckpointError, Fox, FoxConfig

MICRO = FoxConfig.from_preset("tiny", vocab_size=320, num_layers=2, context_len=64)


@pytest.fixture
def micro() -> Fox:
    torch.manual_seed(0)
    return Fox(MICRO).eval()


def test_save_pretrained_round_trip_is_bitwise(micro, tmp_path):
    micro.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").exists() and (tmp_path / "model.safetensors").exists()
    assert not list(tmp_path.glob("*.tmp"))
    loaded = Fox.from_pretrained(tmp_path)
    assert loaded.config == micro.config
    for (name, a), (_, b) in zip(micro.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    idx = torch.randint(0, MICRO.vocab_size, (1, 8))
    assert torch.equal(micro(idx), loaded(idx))


def test_checkpoint_has_exactly_the_llama_tensor_names_and_shapes(micro, tmp_path):
    from safetensors.torch import load_file
    micro.save_pretrained(tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    d, hd, ffn = MICRO.hidden_size, MICRO.head_dim, MICRO.intermediate_size
    layer = {"input_layernorm.weight": (d,), "post_attention_layernorm.weight": (d,),
             "self_attn.q_proj.weight": (MICRO.num_heads * hd, d), "self_attn.k_proj.weight": (MICRO.num_kv_heads * hd, d),
             "self_attn.v_proj.weight": (MICRO.num_kv_heads * hd, d), "self_attn.o_proj.weight": (d, MICRO.num_heads * hd),
             "mlp.gate_proj.weight": (ffn, d), "mlp.up_proj.weight": (ffn, d), "mlp.down_proj.weight": (d, ffn)}
    expected = {f"model.layers.{i}.{name}": shape for i in range(MICRO.num_layers) for name, shape in layer.items()}
    expected.update({"model.embed_tokens.weight": (MICRO.vocab_size, d), "model.norm.weight": (d,)})
    assert {name: tuple(t.shape) for name, t in tensors.items()} == expected
    # the fused matrices are HF's stacked by rows, in q, k, v and gate, up order
    qkv = micro.layers[1].self_attn.qkv_proj.weight
    assert torch.equal(tensors["model.layers.1.self_attn.v_proj.weight"], qkv[-MICRO.num_kv_heads * hd:])
    assert torch.equal(tensors["model.layers.1.mlp.up_proj.weight"], micro.layers[1].mlp.gate_up_proj.weight[ffn:])


def test_bf16_save_and_load_keeps_dtype(micro, tmp_path):
    micro.to(torch.bfloat16).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert Fox.from_pretrained(tmp_path).embed_tokens.weight.dtype == torch.bfloat16


def test_loads_untied_lm_head_copy_and_sharded_index(micro, tmp_path):
    from safetensors.torch import save_file
    tensors = {k: v.contiguous() for k, v in hf_llama.fox_to_hf(micro.state_dict(), MICRO).items()}
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[:5], "model-00002-of-00002.safetensors": names[5:]}
    for file, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(tmp_path / file))
    index = {"weight_map": {k: f for f, keys in shards.items() for k in keys}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "config.json").write_text(json.dumps(hf_llama.config_to_hf(MICRO, torch.float32)))
    idx = torch.randint(0, MICRO.vocab_size, (1, 8))
    assert torch.equal(Fox.from_pretrained(tmp_path)(idx), micro(idx))


@pytest.mark.parametrize("corrupt, message", [
    (lambda cfg, t: cfg.pop("hidden_size"), "missing field 'hidden_size'"),
    (lambda cfg, t: cfg.update(hidden_act="gelu"), "'hidden_act'"),
    (lambda cfg, t: cfg.update(intermediate_size=999), "model.layers.0.mlp"),
    (lambda cfg, t: t.pop("model.norm.weight"), "missing tensor 'model.norm.weight'"),
    (lambda cfg, t: t.update({"model.extra.weight": torch.zeros(1)}), "unexpected tensor 'model.extra.weight'"),
])
def test_mismatched_checkpoint_gives_one_clear_error(micro, tmp_path, corrupt, message):
    from safetensors.torch import save_file
    cfg = hf_llama.config_to_hf(MICRO, torch.float32)
    tensors = {k: v.contiguous() for k, v in hf_llama.fox_to_hf(micro.state_dict(), MICRO).items()}
    corrupt(cfg, tensors)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(")) as error:
        Fox.from_pretrained(tmp_path)
    assert "\n" not in str(error.value)


def test_missing_or_corrupt_files_give_clear_errors(micro, tmp_path):
    with pytest.raises(CheckpointError, match="config.json: not found"):
        Fox.from_pretrained(tmp_path)
    micro.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="unreadable safetensors"):
        Fox.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        Fox.from_pretrained(tmp_path)
    config = hf_llama.config_to_hf(MICRO, torch.float32)
    for damage, message in ((lambda c: c.pop("vocab_size"), "missing field 'vocab_size'"),
                            (lambda c: c.update(hidden_size="big"), "invalid literal")):
        damaged = dict(config)
        damage(damaged)
        (tmp_path / "config.json").write_text(json.dumps(damaged))
        with pytest.raises(CheckpointError) as error:
            Fox.from_pretrained(tmp_path)
        assert message in str(error.value) and str(error.value).count("config.json") == 1  # the path once


@pytest.mark.parametrize("content", ["[1, 2]", "null", "12"])
def test_config_json_that_is_not_an_object_is_one_line(micro, tmp_path, content):
    micro.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(CheckpointError, match="config.json: expected a JSON object") as error:
        Fox.from_pretrained(tmp_path)
    assert "\n" not in str(error.value)


def test_export_records_token_ids_for_transformers_and_the_tokenizer_fingerprint(micro, tmp_path):
    ids = {"bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0}
    micro.save_pretrained(tmp_path, token_ids=ids, tokenizer_fingerprint="abc123")
    config = json.loads((tmp_path / "config.json").read_text())
    generation = json.loads((tmp_path / "generation_config.json").read_text())
    assert {k: config[k] for k in ids} == ids and {k: generation[k] for k in ids} == ids
    assert hf_llama.checkpoint_tokens(tmp_path) == hf_llama.CheckpointTokens(2, [1], "abc123")
    umask = os.umask(0)
    os.umask(umask)
    for name in ("model.safetensors", "config.json", "generation_config.json"):  # not tempfile's private 0600
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    (tmp_path / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": [2, 107]}))
    assert hf_llama.checkpoint_tokens(tmp_path) == hf_llama.CheckpointTokens(1, [2, 107], "abc123")  # as Fox-1-Instruct
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": "two"}))
    with pytest.raises(CheckpointError, match="must be integers"):
        hf_llama.checkpoint_tokens(tmp_path)


def test_loading_casts_tensor_by_tensor_to_the_requested_dtype(micro, tmp_path):
    micro.save_pretrained(tmp_path)
    loaded = Fox.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in loaded.parameters())
    for (name, a), (_, b) in zip(micro.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a.to(torch.bfloat16), b), name
