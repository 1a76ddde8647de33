"""The Hugging Face contenders bench.py times fox1 against, when transformers / tokenizers are installed (they are
not dependencies of fox1: without them these return None and the rows say "not run").
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from fox1.hf_llama import config_to_hf


def hf_llama(config, dtype: torch.dtype, device: torch.device) -> torch.nn.Module | None:
    """transformers.LlamaForCausalLM with our exact config (the released Fox-1 is one), or None."""
    try:
        import transformers
    except ImportError:
        return None
    transformers.logging.set_verbosity_error()
    hf_config = transformers.LlamaConfig(**config_to_hf(config, dtype))
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(hf_config).to(device=device, dtype=dtype)


def hf_loss(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """The same targets as `fox_loss` (token t+1 after tokens <= t, for all T positions), through HF's logits.
    (HF's own `labels=` shifts inside and would score T-1 of them.)"""
    logits = model(input_ids=batch[:, :-1]).logits
    return F.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten())


def hf_generation(hf: torch.nn.Module, prompt: torch.Tensor, new_tokens: int) -> Callable[[], object]:
    """Greedy generation with transformers' generate (its default dynamic cache), exactly new_tokens tokens."""
    return lambda: hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                               min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)


def timed_tokenizer(documents: list[str], train: Callable[[], object],
                    encode: Callable[[object], Sequence]) -> dict[str, float]:
    """MB/s of train() and of encode(trained tokenizer) over the documents, and the bytes per token (encode
    returns one item per document whose len() is its token count)."""
    size = sum(len(d.encode()) for d in documents)
    start = time.perf_counter()
    tokenizer = train()
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    ids = encode(tokenizer)
    encode_seconds = time.perf_counter() - start
    return {"train_mb_per_s": size / 1e6 / train_seconds, "train_s": train_seconds,
            "encode_mb_per_s": size / 1e6 / encode_seconds, "bytes_per_token": size / sum(map(len, ids))}


def hf_tokenizer_speed(documents: list[str], vocab_size: int, pattern: str, special_tokens: tuple[str, ...]
                       ) -> dict[str, float] | None:
    """The same measurements for Hugging Face `tokenizers` (Rust): byte-level BPE with our split pattern."""
    try:
        import tokenizers
        from tokenizers import pre_tokenizers
    except ImportError:
        return None
    tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens),
                                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                             show_progress=False)

    def train() -> tokenizers.Tokenizer:
        tokenizer.train_from_iterator(documents, trainer)
        return tokenizer

    return timed_tokenizer(documents, train, lambda trained: trained.encode_batch(documents))  # len() = tokens
