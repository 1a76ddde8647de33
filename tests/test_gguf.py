"""fox1/gguf.py: a fox1 export as the GGUF file llama.cpp reads. The file is parsed back here (header, metadata,
tensor table, data); with the `gguf` package installed also by llama.cpp's own reader; and where a llama.cpp build
is named by FOX1_LLAMA_CPP, llama-tokenize must give fox1's ids for standard-library source, with fox1's own
tokenizer and with SentencePiece-style ones as the released Fox-1 has. An export of a SentencePiece-style tokenizer
carries a tokenizer.model: parsed back here, encoded by `sentencepiece` when installed, and converted by llama.cpp's
own converter under FOX1_LLAMA_CPP."""
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fox1 import gguf, llama_cpp
from fox1.files import InputError
from model import Fox, FoxConfig
from texts import stdlib_text
from tokenizer import DEFAULT_PATTERN, Tokenizer, load_tokenizer
from tokenizer_files import fox1_layout, hf_sentencepiece, sentencepiece_spec, write_json

CONFIG = FoxConfig(vocab_size=400, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                   intermediate_size=128, context_len=128)


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> tuple[Path, Fox, Tokenizer]:
    folder = tmp_path_factory.mktemp("export")
    tokenizer = Tokenizer.train(stdlib_text(200_000), 380, workers=1, progress=False)
    torch.manual_seed(0)
    model = Fox(CONFIG)
    model.save_pretrained(folder, token_ids={"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id,
                                             "pad_token_id": tokenizer.pad_id}, stop_ids=[1, 5])
    tokenizer.save_pretrained(folder)
    return folder, model, tokenizer


SPECIALS = "===== <s>x</s><end_of_turn>  after"  # llama-tokenize reads special tokens in the text
MIXED = " 3.14159 ünïcödé 我想在apple工作 \t\n\n  x  \r\n"  # digits, accents, CJK, whitespace runs, a CRLF


def probe_text(tail: str) -> str:
    """400K characters of standard-library source beyond what the tokenizers were trained on, MIXED, then `tail`."""
    return "".join(stdlib_text(600_000))[200_000:] + MIXED + tail


def llama_cpp_ids(model: Path, text: str) -> list[int]:
    """llama-tokenize's ids for `text` (written beside the model file) with the build FOX1_LLAMA_CPP names."""
    text_file = model.with_suffix(".txt")
    text_file.write_bytes(text.encode("utf-8"))
    return llama_cpp.tokenize(Path(os.environ["FOX1_LLAMA_CPP"]), model, text_file)


def read_gguf(path: Path) -> tuple[dict, dict[str, tuple[list[int], int, bytes]]]:
    """(metadata, {tensor name: (shape innermost first, type, bytes)}): a minimal GGUF v3 reader."""
    data = path.read_bytes()
    at = 0

    def take(fmt: str):
        nonlocal at
        values = struct.unpack_from(fmt, data, at)
        at += struct.calcsize(fmt)
        return values if len(values) > 1 else values[0]

    def string() -> str:
        nonlocal at
        size = take("<Q")
        at += size
        return data[at - size:at].decode("utf-8")

    def value(kind: int):
        if kind == 8:
            return string()
        if kind == 9:
            item_kind, count = take("<IQ")
            return [value(item_kind) for _ in range(count)]
        return take({4: "<I", 5: "<i", 6: "<f", 7: "<?"}[kind])

    assert data[:4] == b"GGUF"
    at = 4
    version, tensor_count, kv_count = take("<IQQ")
    assert version == 3
    metadata = {}
    for _ in range(kv_count):
        key = string()
        metadata[key] = value(take("<I"))
    table = []
    for _ in range(tensor_count):
        name = string()
        dims = take("<I")
        shape = list(struct.unpack_from(f"<{dims}Q", data, at))
        at += 8 * dims
        kind, offset = take("<IQ")
        table.append((name, shape, kind, offset))
    start = (at + gguf.ALIGNMENT - 1) // gguf.ALIGNMENT * gguf.ALIGNMENT
    sizes = {0: 4, 30: 2, 1: 2}
    tensors = {name: (shape, kind, data[start + offset:start + offset + sizes[kind] * int(torch.tensor(shape).prod())])
               for name, shape, kind, offset in table}
    return metadata, tensors


def as_tensor(shape: list[int], kind: int, raw: bytes) -> torch.Tensor:
    dtype = {0: torch.float32, 30: torch.bfloat16, 1: torch.float16}[kind]
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype).reshape(shape[::-1])


def test_our_split_pattern_is_one_llama_cpp_implements():
    assert DEFAULT_PATTERN in gguf.LLAMA_CPP_SPLITS["qwen2"]


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_the_file_holds_the_model_and_tokenizer_in_llama_cpp_layout(export, tmp_path, dtype):
    folder, model, tokenizer = export
    gguf.write_gguf(folder, tmp_path / "m.gguf", dtype)
    metadata, tensors = read_gguf(tmp_path / "m.gguf")
    assert metadata["general.architecture"] == "llama" and metadata["tokenizer.ggml.pre"] == "qwen2"
    assert metadata["llama.block_count"] == 2 and metadata["llama.attention.head_count_kv"] == 2
    assert metadata["tokenizer.ggml.bos_token_id"] == tokenizer.bos_id
    assert metadata["tokenizer.ggml.eot_token_id"] == 5  # the second stop id of generation_config.json
    tokens = metadata["tokenizer.ggml.tokens"]
    assert len(tokens) == CONFIG.vocab_size and tokens[:2] == ["<pad>", "<eos>"] and tokens[-1] == "[PAD399]"
    assert metadata["tokenizer.ggml.token_type"][:7] == [3] * 6 + [1] and metadata["tokenizer.ggml.token_type"][-1] == 5
    assert len(tensors) == 2 + 9 * 2 and "output.weight" not in tensors  # tied: llama.cpp reuses token_embd
    cast = torch.float32 if dtype == "f32" else torch.bfloat16
    state = model.state_dict()
    assert torch.equal(as_tensor(*tensors["token_embd.weight"]), state["embed_tokens.weight"].to(cast))
    assert tensors["blk.0.attn_norm.weight"][1] == 0  # norms stay f32
    q_rows = CONFIG.num_heads * CONFIG.head_dim
    q = as_tensor(*tensors["blk.1.attn_q.weight"]).float()
    hf_q = state["layers.1.self_attn.qkv_proj.weight"][:q_rows].to(cast).float()
    # llama.cpp pairs dimensions 2j, 2j+1 of each head; Hugging Face j and j + head_dim/2
    half = CONFIG.head_dim // 2
    head = 3
    assert torch.equal(q[head * CONFIG.head_dim + 2 * 5], hf_q[head * CONFIG.head_dim + 5])
    assert torch.equal(q[head * CONFIG.head_dim + 2 * 5 + 1], hf_q[head * CONFIG.head_dim + 5 + half])


def test_the_gguf_package_reads_it(export, tmp_path):
    reader_module = pytest.importorskip("gguf")
    folder, model, _ = export
    gguf.write_gguf(folder, tmp_path / "m.gguf")
    reader = reader_module.GGUFReader(tmp_path / "m.gguf")
    down = next(t for t in reader.tensors if t.name == "blk.0.ffn_down.weight")
    expected = model.state_dict()["layers.0.mlp.down_proj.weight"]
    assert torch.equal(torch.from_numpy(down.data.copy()).reshape(expected.shape), expected)


def test_tokenizers_llama_cpp_cannot_split_alike_are_refused_in_one_line(export, tmp_path):
    folder, _, _ = export
    spec = json.loads((folder / "tokenizer.json").read_text())
    for name, change in [("split", lambda s: s["pre_tokenizer"]["pretokenizers"][0]["pattern"].update(Regex=r"\w+")),
                         ("no split", lambda s: s.update(pre_tokenizer=None))]:
        copy = tmp_path / name
        copy.mkdir()
        for file in folder.iterdir():
            (copy / file.name).write_bytes(file.read_bytes())
        changed = json.loads(json.dumps(spec))
        change(changed)
        (copy / "tokenizer.json").write_text(json.dumps(changed))
        with pytest.raises(InputError) as refused:
            gguf.write_gguf(copy, tmp_path / f"{name}.gguf")
        assert "\n" not in str(refused.value) and "tokenizer.json" in str(refused.value)
        assert not (tmp_path / f"{name}.gguf").exists()


@pytest.mark.skipif(not os.environ.get("FOX1_LLAMA_CPP"), reason="FOX1_LLAMA_CPP names no llama.cpp build")
def test_llama_cpp_tokenizes_as_fox1(export, tmp_path):
    folder, _, tokenizer = export
    gguf.write_gguf(folder, tmp_path / "m.gguf")
    text = probe_text("'RE we'Ll")
    assert llama_cpp_ids(tmp_path / "m.gguf", text) == tokenizer.encode(text)


def sentencepiece_export(folder: Path, spec: dict) -> Path:
    """A tiny model with a SentencePiece-style tokenizer, as fox1 exports one loaded from a Fox-1 folder."""
    tokenizer = load_tokenizer(write_json(folder / "source" / "tokenizer.json", spec))
    torch.manual_seed(0)
    Fox(FoxConfig(**CONFIG.__dict__ | {"vocab_size": tokenizer.vocab_size})).save_pretrained(
        folder, token_ids={"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id}, stop_ids=[2])
    tokenizer.save_pretrained(folder)
    return folder


def trained_sentencepiece_export(folder: Path, style: str) -> Path:
    """`sentencepiece_export` of a SentencePiece-style tokenizer that `tokenizers` trains on standard-library source."""
    tokenizers = pytest.importorskip("tokenizers")
    return sentencepiece_export(folder, hf_sentencepiece(tokenizers, stdlib_text(300_000), style))


TINY_PIECES = ["▁", "a", "b", "c", "▁a", "ab", "bc", "▁ab", "abc"]
TINY_MERGES = ["▁ a", "a b", "b c", "▁a b", "ab c", "a bc"]  # "abc" twice: it scores by the first


def test_a_sentencepiece_tokenizer_scores_each_token_by_its_first_merge(tmp_path):
    for name, spec, prefix in [("llama2", sentencepiece_spec(TINY_PIECES, TINY_MERGES), True),
                               ("fox1", fox1_layout(sentencepiece_spec(TINY_PIECES, TINY_MERGES)), False)]:
        folder = sentencepiece_export(tmp_path / name, spec)
        gguf.write_gguf(folder, tmp_path / f"{name}.gguf")
        metadata, _ = read_gguf(tmp_path / f"{name}.gguf")
        assert (metadata["tokenizer.ggml.model"], metadata["tokenizer.ggml.pre"]) == ("llama", "default")
        assert metadata["tokenizer.ggml.add_space_prefix"] is prefix
        tokens, types = metadata["tokenizer.ggml.tokens"], metadata["tokenizer.ggml.token_type"]
        scores = dict(zip(tokens, metadata["tokenizer.ggml.scores"]))
        assert [scores[t] for t in ["▁a", "ab", "bc", "▁ab", "abc", "a", "▁"]] == [0, -1, -2, -3, -4, -6, -6]
        assert types[:4] == [2, 3, 3, 6] and tokens[3] == "<0x00>" and types[259:262] == [1, 1, 1]
        assert "tokenizer.ggml.merges" not in metadata


def test_sentencepiece_steps_llama_cpp_lacks_are_refused_in_one_line(tmp_path):
    spec = sentencepiece_spec(TINY_PIECES, TINY_MERGES)
    cases = [("nfkc", spec | {"normalizer": {"type": "NFKC"}}),
             ("raw spaces", spec | {"normalizer": {"type": "Prepend", "prepend": "▁"}})]  # spaces never become "▁"
    for scheme in ("first", "always"):
        metaspace = {"type": "Metaspace", "replacement": "▁", "split": False, "prepend_scheme": scheme}
        cases.append((scheme, spec | {"normalizer": None, "pre_tokenizer": metaspace}))
    for name, changed in cases:
        folder = sentencepiece_export(tmp_path / name, changed)
        with pytest.raises(InputError) as refused:
            gguf.write_gguf(folder, tmp_path / f"{name}.gguf")
        assert "\n" not in str(refused.value) and "tokenizer.json" in str(refused.value)
        assert not (tmp_path / f"{name}.gguf").exists()


@pytest.mark.skipif(not os.environ.get("FOX1_LLAMA_CPP"), reason="FOX1_LLAMA_CPP names no llama.cpp build")
@pytest.mark.parametrize("style", ["gemma", "llama2"])
def test_llama_cpp_tokenizes_as_fox1_with_a_sentencepiece_tokenizer(tmp_path, style):
    folder = trained_sentencepiece_export(tmp_path / "export", style)
    gguf.write_gguf(folder, tmp_path / "m.gguf")
    text = probe_text(SPECIALS)
    assert llama_cpp_ids(tmp_path / "m.gguf", text) == load_tokenizer(folder).encode(text, allow_special=True)


def read_message(data: bytes) -> dict[int, list]:
    """{field number: its values} of one protocol buffer message: varints as signed 64-bit ints, 4-byte fields as
    floats, length-delimited ones as bytes (a minimal reader for SentencePiece's tokenizer.model)."""
    fields: dict[int, list] = {}
    at = 0

    def varint() -> int:
        nonlocal at
        value = shift = 0
        while True:
            byte = data[at]
            at += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    while at < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            value = varint()
            value -= (1 << 64) if value >= 1 << 63 else 0
        elif wire == 5:
            value, at = struct.unpack_from("<f", data, at)[0], at + 4
        else:
            assert wire == 2
            size = varint()
            value, at = data[at:at + size], at + size
        fields.setdefault(number, []).append(value)
    return fields


def test_an_export_carries_its_sentencepiece_scores_in_tokenizer_model(tmp_path):
    for name, spec, prefix in [("llama2", sentencepiece_spec(TINY_PIECES, TINY_MERGES), True),
                               ("fox1", fox1_layout(sentencepiece_spec(TINY_PIECES, TINY_MERGES)), False)]:
        folder = sentencepiece_export(tmp_path / name, spec)
        model = read_message((folder / "tokenizer.model").read_bytes())
        pieces = [read_message(piece) for piece in model[1]]
        gguf.write_gguf(folder, tmp_path / f"{name}.gguf")
        metadata, _ = read_gguf(tmp_path / f"{name}.gguf")  # the GGUF writer's tokens, scores and types
        assert [piece[1][0].decode() for piece in pieces] == metadata["tokenizer.ggml.tokens"]
        assert [piece.get(2, [0.0])[0] for piece in pieces] == metadata["tokenizer.ggml.scores"]
        assert [piece.get(3, [1])[0] for piece in pieces] == metadata["tokenizer.ggml.token_type"]
        trainer, normalizer = read_message(model[2][0]), read_message(model[3][0])
        assert trainer[3] == [2] and trainer[4] == [len(pieces)] and trainer[35] == [1]  # BPE, byte fallback
        assert (trainer[40], trainer[45], trainer[41], trainer[46]) == ([0], [b"<unk>"], [1], [b"<s>"])
        assert trainer[43] == [-1]  # no pad token
        assert normalizer == {1: [b"identity"], 3: [int(prefix)], 4: [0], 5: [1]}
        assert json.loads((folder / "tokenizer_config.json").read_text())["add_prefix_space"] is prefix


def test_tokenizers_sentencepiece_cannot_express_get_no_tokenizer_model(export, tmp_path):
    folder = sentencepiece_export(tmp_path / "nfkc", sentencepiece_spec(TINY_PIECES, TINY_MERGES) |
                                  {"normalizer": {"type": "NFKC"}})
    assert not (folder / "tokenizer.model").exists()
    _, _, byte_level = export  # fox1's own tokenizer, written over an export that had a tokenizer.model
    folder = sentencepiece_export(tmp_path / "reused", sentencepiece_spec(TINY_PIECES, TINY_MERGES))
    byte_level.save_pretrained(folder)
    assert not (folder / "tokenizer.model").exists()
    assert "add_prefix_space" not in json.loads((folder / "tokenizer_config.json").read_text())


@pytest.mark.parametrize("style", ["gemma", "llama2"])
def test_sentencepiece_reads_the_exported_tokenizer_model_and_encodes_as_fox1(tmp_path, style):
    sentencepiece = pytest.importorskip("sentencepiece")
    folder = trained_sentencepiece_export(tmp_path, style)
    processor = sentencepiece.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    text = probe_text("===== after")
    assert processor.encode(text) == load_tokenizer(folder).encode(text)


@pytest.mark.skipif(not os.environ.get("FOX1_LLAMA_CPP"), reason="FOX1_LLAMA_CPP names no llama.cpp build")
@pytest.mark.parametrize("style", ["gemma", "llama2"])
def test_llama_cpps_converter_takes_a_sentencepiece_export_as_it_is(tmp_path, style):
    """convert_hf_to_gguf.py (in the llama.cpp source folder above the build, run with its gguf-py) reads the
    export's tokenizer.model, unpatched, and llama-tokenize then gives fox1's ids."""
    pytest.importorskip("sentencepiece")  # the converter reads tokenizer.model with it
    build = Path(os.environ["FOX1_LLAMA_CPP"])
    source = build.resolve().parent
    if not (source / "convert_hf_to_gguf.py").is_file():
        pytest.skip(f"no convert_hf_to_gguf.py above {build}")
    folder = trained_sentencepiece_export(tmp_path / "export", style)
    path = os.pathsep.join([str(source / "gguf-py"), *sys.path])
    subprocess.run([sys.executable, source / "convert_hf_to_gguf.py", folder, "--outfile", tmp_path / "m.gguf",
                    "--outtype", "f32"], check=True, capture_output=True, env=dict(os.environ, PYTHONPATH=path))
    text = probe_text(SPECIALS)
    assert llama_cpp_ids(tmp_path / "m.gguf", text) == load_tokenizer(folder).encode(text, allow_special=True)


def test_a_folder_without_llama_cpps_tools_is_named_in_one_line(tmp_path):
    with pytest.raises(InputError) as missing:
        llama_cpp.tool(tmp_path, "llama-bench")
    assert str(tmp_path) in str(missing.value) and "\n" not in str(missing.value)
