"""tokenizer.json files of the Llama family for the tests: SentencePiece-style ones (Llama-2's layout and its
variants, the released Fox-1's among them) by hand or trained by `tokenizers`."""
import copy
import json
from pathlib import Path

BYTE_TOKENS = [f"<0x{byte:02X}>" for byte in range(256)]


LLAMA2_NORMALIZER = {"type": "Sequence", "normalizers": [
    {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}


LLAMA2_DECODER = {"type": "Sequence", "decoders": [
    {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"},
    {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}


def added(token_id: int, content: str, special: bool = True, **flags) -> dict:
    entry = {"id": token_id, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": not special, "special": special}
    return entry | flags


def sentencepiece_spec(pieces: list[str], merges: list[str], **model) -> dict:
    """A Llama-2 style tokenizer.json: <unk> <s> </s>, 256 byte tokens, then `pieces`."""
    vocab = {token: token_id for token_id, token in enumerate(["<unk>", "<s>", "</s>", *BYTE_TOKENS, *pieces])}
    return {"version": "1.0", "added_tokens": [added(0, "<unk>"), added(1, "<s>"), added(2, "</s>")],
            "normalizer": copy.deepcopy(LLAMA2_NORMALIZER), "pre_tokenizer": None, "post_processor": None,
            "decoder": copy.deepcopy(LLAMA2_DECODER),  # callers change their copy
            "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "fuse_unk": True, "byte_fallback": True,
                      "vocab": vocab, "merges": merges} | model}


def write_json(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def hf_sentencepiece(tokenizers, documents: list[str], style: str) -> dict:
    """A SentencePiece-style BPE trained by `tokenizers`, then given the layout of a converted Llama/Gemma file."""
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=1200, special_tokens=["<unk>", "<s>", "</s>"],
                                             limit_alphabet=120, show_progress=False)  # rare characters: bytes
    model = tokenizers.Tokenizer(tokenizers.models.BPE())
    model.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace()
    model.train_from_iterator(documents, trainer)
    trained_spec = json.loads(model.to_str())["model"]
    in_order = [token for token, _ in sorted(trained_spec["vocab"].items(), key=lambda item: item[1])]
    pieces = [token for token in in_order if token not in ("<unk>", "<s>", "</s>")]
    spec = sentencepiece_spec(pieces, trained_spec["merges"])
    spec["added_tokens"].append(added(len(pieces) + 259, "<end_of_turn>"))
    if style == "metaspace":  # transformers' LlamaConverter with legacy=False
        spec["normalizer"] = None
        spec["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}
    elif style == "gemma":
        spec = fox1_layout(spec)
    return spec


def fox1_layout(spec: dict) -> dict:
    """The released Fox-1's (Gemma's) variant of a SentencePiece-style spec: spaces become "▁" with none
    prepended, no Strip on decoding; a Split on " " that finds none left."""
    decoder = {"type": "Sequence", "decoders": spec["decoder"]["decoders"][:3]}
    return spec | {"normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
                   "pre_tokenizer": {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious",
                                     "invert": False}, "decoder": decoder}
