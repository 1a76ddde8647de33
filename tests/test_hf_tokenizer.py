"""Tests for fox1/hf_tokenizer.py: Hugging Face tokenizer.json read exactly as `tokenizers` encodes (checked against
`tokenizers` / `transformers` where installed), and our BPE written as a tokenizer.json."""
import json
import os
import random
from pathlib import Path

import pytest

from cli import tokenizer as tokenizer_cli
import tokenizer as tk
from fox1 import hf_tokenizer
from fox1.files import InputError
from texts import random_text, stdlib_text
from tokenizer_files import BYTE_TOKENS, added, hf_sentencepiece, sentencepiece_spec, write_json
from tokenizer import Tokenizer

STDLIB = Path(os.__file__).parent


TINY_PIECES = ["▁", "a", "b", "c", "h", "i", "▁a", "ab", "bc", "▁ab", "abc", "▁h", "▁hi", "▁▁"]


TINY_MERGES = ["▁ a", "a b", "b c", "▁a b", "ab c", "▁ h", "▁h i", "▁ ▁"]


def test_sentencepiece_json_by_hand(tmp_path):
    path = write_json(tmp_path / "tokenizer.json", sentencepiece_spec(TINY_PIECES, TINY_MERGES))
    hf = tk.load_tokenizer(path)
    ids = {token: token_id for token_id, token in enumerate(["<unk>", "<s>", "</s>", *BYTE_TOKENS, *TINY_PIECES])}
    # "▁abc": ▁ a b c -> ▁a b c (rank 0) -> ▁a bc (rank 2 beats (▁a, b) at rank 3) -> no merge of (▁a, bc)
    assert hf.encode("abc") == [ids["▁a"], ids["bc"]]
    assert hf.encode("hi abc") == [ids["▁hi"], ids["▁a"], ids["bc"]]
    assert hf.encode("  a") == [ids["▁▁"], ids["▁a"]]  # Prepend("▁") then each space is a "▁"
    assert hf.encode("é") == [ids["▁"], ids["<0xC3>"], ids["<0xA9>"]]  # byte fallback for a missing character
    plain = hf.encode("hi<s>hi")  # typed special tokens are plain text by default
    assert 1 not in plain and hf.decode(plain) == "hi<s>hi"
    assert hf.encode("hi<s>hi", allow_special=True) == [ids["▁hi"], 1, ids["▁hi"]]  # Prepend again after <s>
    for text in ["hi abc", "  a b\t", "é😀 x", "", " "]:
        assert hf.decode(hf.encode(text)) == text  # Strip removes the prepended space
    assert hf.decode_bytes([ids["▁hi"], ids["<0xC3>"]]) == b" hi\xc3"
    assert hf.ids_starting_with(b" a") == [ids["▁a"], ids["▁ab"]]
    assert (hf.bos_id, hf.eos_id, hf.pad_id, hf.vocab_size) == (1, 2, None, len(ids))
    assert hf.token_id("</s>") == 2 and hf.token_id("▁hi") == ids["▁hi"] and hf.token_id("zz") is None
    assert hf.special_ids == {0, 1, 2}
    with pytest.raises(ValueError, match="outside the vocabulary"):
        hf.decode([len(ids)])


def test_cli_encode_reads_a_tokenizer_json(tmp_path, capsys):
    write_json(tmp_path / "model" / "tokenizer.json", sentencepiece_spec(TINY_PIECES, TINY_MERGES))
    assert tokenizer_cli.main(["encode", "--tokenizer", str(tmp_path / "model"), "hi abc"]) == 0
    ids, tokens, _ = capsys.readouterr().out.splitlines()
    assert ids == "271 265 267" and tokens == '" hi" " a" "bc"'


def test_merge_rank_is_not_the_rank_of_the_concatenation(tmp_path):
    """Hugging Face merges the pair listed first; tiktoken would merge the pair whose result has the lowest id."""
    pieces = ["▁", "x", "y", "z", "yz", "xy", "xyz"]  # ids: yz < xy, but the merge ("x", "y") is listed first
    path = write_json(tmp_path / "t.json", sentencepiece_spec(pieces, ["x y", "y z", "xy z"]))
    hf = tk.load_tokenizer(path)
    assert [hf.decode_bytes([i]) for i in hf.encode("xyz")] == [b" ", b"xyz"]


def test_cutting_at_spaces_never_changes_ids(tmp_path):
    """Tokens such as "a▁" (SentencePiece without split_by_whitespace) forbid cutting after "a"."""
    pieces = ["▁", "a", "b", "a▁", "a▁b", "▁b", "b▁", "▁▁"]
    spec = sentencepiece_spec(pieces, ["a ▁", "a▁ b", "▁ b", "b ▁", "▁ ▁"])
    hf = tk.load_tokenizer(write_json(tmp_path / "t.json", spec))
    uncut = tk.load_tokenizer(tmp_path / "t.json")
    assert hf._cut is not None
    uncut._cut = None
    rng = random.Random(0)
    for _ in range(300):
        text = "".join(rng.choice(["a", "b", " ", "  ", "é"]) for _ in range(rng.randint(0, 30)))
        assert hf.encode(text) == uncut.encode(text), repr(text)


def test_merge_short_and_merge_all_agree():
    rng = random.Random(2)
    for _ in range(200):
        merges = {}
        for rank in range(40):
            merges.setdefault((rng.randrange(8), rng.randrange(8)), (rank, 8 + rank))
        # merged ids can merge again: let some merges take them
        for rank in range(40, 60):
            merges.setdefault((rng.randrange(48), rng.randrange(48)), (rank, 8 + rank))
        word = [rng.randrange(8) for _ in range(rng.randint(0, 60))]
        assert hf_tokenizer._merge_short(word, merges) == hf_tokenizer._merge_all(word, merges)


def test_added_tokens_flags_and_folder_names(tmp_path):
    spec = sentencepiece_spec(TINY_PIECES, TINY_MERGES)
    word = added(501, "<w>", special=False, single_word=True, normalized=False)
    spec["added_tokens"] += [added(500, "<mask>", lstrip=True), word]
    folder = tmp_path / "model"
    write_json(folder / "tokenizer.json", spec)
    write_json(folder / "tokenizer_config.json", {"bos_token": {"content": "<s>"}, "eos_token": "<mask>"})
    hf = tk.load_tokenizer(folder)
    assert hf.encode("hi  <mask>", allow_special=True) == hf.encode("hi") + [500]  # lstrip takes the spaces
    assert 501 in hf.encode("a <w> b") and 501 not in hf.encode("a<w>b")  # single_word; not special: always on
    assert (hf.bos_id, hf.eos_id, hf.vocab_size) == (1, 500, 502)
    write_json(folder / "tokenizer_config.json", {"eos_token": "<nope>"})
    with pytest.raises(InputError, match="<nope>"):
        tk.load_tokenizer(folder)
    (folder / "tokenizer_config.json").write_text("{", encoding="utf-8")
    with pytest.raises(InputError, match="tokenizer_config.json"):
        tk.load_tokenizer(folder)


@pytest.mark.parametrize("component, change, message", [
    ("normalizer", {"type": "Lowercase"}, "normalizer 'Lowercase'"),
    ("pre_tokenizer", {"type": "Whitespace"}, "pre_tokenizer 'Whitespace'"),
    ("decoder", {"type": "WordPiece"}, "decoder 'WordPiece'"),
    ("model", {"type": "WordPiece", "vocab": {}}, "model 'WordPiece'"),
    ("model", {"dropout": 0.1}, "dropout"),
    ("model", {"merges": ["a zz"]}, "merge"),
])
def test_unsupported_tokenizer_json_is_one_clear_line(tmp_path, component, change, message):
    spec = sentencepiece_spec(TINY_PIECES, TINY_MERGES)
    spec[component] = spec[component] | change if component == "model" else change
    path = write_json(tmp_path / "tokenizer.json", spec)
    with pytest.raises(InputError, match=message) as error:
        tk.load_tokenizer(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    path.write_text('{"model": ', encoding="utf-8")
    with pytest.raises(InputError, match="cannot read"):
        tk.load_tokenizer(path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no tokenizer.json or tokenizer.txt"):
        tk.load_tokenizer(tmp_path / "empty")


def test_save_pretrained_round_trip_and_generic_reader(trained, tmp_path):
    """Our export read back is our Tokenizer (same fingerprint); read as any tokenizer.json (Hugging Face's BPE
    rules, in pure Python) it gives the same ids as tiktoken does with our ranks."""
    trained.save_pretrained(tmp_path / "export", chat_template="{{ bos_token }}")
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == [
        "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    config = json.loads((tmp_path / "export" / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["chat_template"] == "{{ bos_token }}" and config["eos_token"] == "<eos>"
    back = tk.load_tokenizer(tmp_path / "export")
    assert isinstance(back, Tokenizer) and back.fingerprint == trained.fingerprint
    generic = hf_tokenizer.HFTokenizer.load(tmp_path / "export" / "tokenizer.json", hf_tokenizer.special_token_names(tmp_path / "export"))
    assert (generic.bos_id, generic.eos_id, generic.pad_id) == (2, 1, 0)
    rng = random.Random(11)
    texts = [random_text(rng) for _ in range(500)] + stdlib_text(150_000)
    for text in texts:
        for allow in (False, True):
            assert generic.encode(text, allow_special=allow) == trained.encode(text, allow_special=allow), repr(text)
        ids = trained.encode(text)
        assert generic.decode(ids) == trained.decode(ids)
        assert generic.decode_bytes(ids) == trained.decode_bytes(ids)
    assert generic.ids_starting_with(b" de") == trained.ids_starting_with(b" de")


def test_hugging_face_tokenizer_is_saved_byte_for_byte(tmp_path):
    spec = sentencepiece_spec(TINY_PIECES, TINY_MERGES)
    spec["added_tokens"].append(added(400, "<end_of_turn>"))
    write_json(tmp_path / "in" / "tokenizer.json", spec)
    write_json(tmp_path / "in" / "special_tokens_map.json", {"eos_token": {"content": "<end_of_turn>"}})
    original = tk.load_tokenizer(tmp_path / "in")
    assert original.eos_id == 400
    original.save_pretrained(tmp_path / "out", chat_template="{{ messages }}")
    copy = tk.load_tokenizer(tmp_path / "out")
    assert (copy.fingerprint, copy.bos_id, copy.eos_id) == (original.fingerprint, 1, 400)
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == (tmp_path / "in" / "tokenizer.json").read_bytes()
    config = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["chat_template"] == "{{ messages }}" and config["eos_token"] == "<end_of_turn>"
    (tmp_path / "in" / "tokenizer.json").write_text("{}", encoding="utf-8")
    with pytest.raises(InputError, match="changed since it was loaded"):
        original.save_pretrained(tmp_path / "again")


def hf_byte_level(tokenizers, documents: list[str], ignore_merges: bool) -> dict:
    """A Llama-3 style byte-level BPE trained by `tokenizers`, with a special and a non-special added token."""
    llama3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
              r"\s*[\r\n]+|\s+(?!\S)|\s+")
    pre = tokenizers.pre_tokenizers
    model = tokenizers.Tokenizer(tokenizers.models.BPE(ignore_merges=ignore_merges))
    model.normalizer = tokenizers.normalizers.NFC()
    model.pre_tokenizer = pre.Sequence([pre.Split(tokenizers.Regex(llama3), behavior="isolated"),
                                        pre.ByteLevel(add_prefix_space=False, use_regex=False)])
    model.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=1200, special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
                                             initial_alphabet=pre.ByteLevel.alphabet(), show_progress=False)
    model.train_from_iterator(documents, trainer)
    model.add_tokens([tokenizers.AddedToken("<|tool|>", special=False, normalized=False)])
    model.add_special_tokens(["<|eot_id|>"])
    return json.loads(model.to_str())


@pytest.mark.parametrize("style", ["llama2", "metaspace", "gemma", "byte-level", "byte-level-ignore-merges"])
def test_same_ids_and_text_as_hugging_face_tokenizers(tmp_path, style):
    tokenizers = pytest.importorskip("tokenizers")
    documents = stdlib_text(300_000)
    if style.startswith("byte-level"):
        spec = hf_byte_level(tokenizers, documents, ignore_merges=style.endswith("merges"))
    else:
        spec = hf_sentencepiece(tokenizers, documents, style)
    path = write_json(tmp_path / "tokenizer.json", spec)
    reference, ours = tokenizers.Tokenizer.from_file(str(path)), tk.load_tokenizer(path)
    rng = random.Random(3)
    specials = ["<s>", "</s>", "<end_of_turn>", "<|eot_id|>", "<|tool|>", "<|begin_of_text|>"]
    texts = [random_text(rng) + rng.choice(specials) + random_text(rng) for _ in range(400)]
    texts += ["", " ", "  x", "\n\n", "\t\tif x:\n", "a  b   c", "🦊", "日本語", "<s>", " <s> "]
    texts += stdlib_text(100_000) + [text[::-1] for text in stdlib_text(30_000)]
    for allow in (False, True):
        reference.encode_special_tokens = not allow  # tokenizers' switch for typed special tokens
        for text in texts:
            expected = reference.encode(text, add_special_tokens=False).ids
            assert ours.encode(text, allow_special=allow) == expected, repr(text)
            assert ours.decode(expected) == reference.decode(expected, skip_special_tokens=False), repr(text)


def test_every_split_behavior_as_hugging_face_tokenizers(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    pre = tokenizers.pre_tokenizers
    documents, rng = stdlib_text(60_000), random.Random(6)
    texts = [random_text(rng) for _ in range(100)] + stdlib_text(10_000) + ["", " ", "  a  b. ", ".,"]
    for behavior in ["removed", "isolated", "merged_with_previous", "merged_with_next", "contiguous"]:
        for invert in (False, True):
            reference = tokenizers.Tokenizer(tokenizers.models.BPE())
            split = pre.Split(tokenizers.Regex(r"\s+|[.,]"), behavior=behavior, invert=invert)
            reference.pre_tokenizer = pre.Sequence([split, pre.ByteLevel(add_prefix_space=False, use_regex=False)])
            reference.train_from_iterator(documents, tokenizers.trainers.BpeTrainer(
                vocab_size=400, initial_alphabet=pre.ByteLevel.alphabet(), show_progress=False))
            reference.save(str(tmp_path / "tokenizer.json"))
            ours = tk.load_tokenizer(tmp_path / "tokenizer.json")
            for text in texts:
                assert ours.encode(text) == reference.encode(text, add_special_tokens=False).ids, (behavior, text)


def test_transformers_reads_our_export_exactly(trained, tmp_path):
    transformers = pytest.importorskip("transformers")
    trained.save_pretrained(tmp_path, chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}")
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert (theirs.bos_token_id, theirs.eos_token_id, theirs.pad_token_id) == (2, 1, 0)
    assert theirs.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "hi"
    rng = random.Random(4)
    for text in [random_text(rng) for _ in range(300)] + stdlib_text(200_000) + ["<start_of_turn>user\nhi<eos>"]:
        ids = trained.encode(text, allow_special=True)
        assert theirs.encode(text, add_special_tokens=False) == ids, repr(text)
        assert theirs.decode(ids) == trained.decode(ids)
