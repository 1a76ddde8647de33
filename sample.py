"""
Generate text from a Fox model: a static KV cache, the prompt prefilled in one forward, then one token per
step through a decode step that `torch.compile` can turn into a single graph (gpt-fast style; --compile compiles the
prefill too, for any prompt length).

Fox-1's deployment claim (arXiv 2411.05281) is speed: more than 200 output tokens/s for the 1.6B model,
helped by grouped-query attention, whose KV cache is 4x smaller than full multi-head attention's.
Decoding one token reads every weight once, so a decode step is bound by memory bandwidth; `python bench.py`
compares the tokens/s printed here with that bound.

    python sample.py --prompt "def "                      # the base model train.py exported (out/export)
    python sample.py --ckpt DIR --tokenizer tok.txt       # any Llama-format Hugging Face directory
    python sample.py --prompt @prompt.txt --num-samples 4 --temperature 0.8 --top-p 0.95 --seed 1
    python sample.py --chat --system "Answer in Python."   # talk to the SFT model (Fox-1-Instruct's turn format)
    python sample.py --score-chat 100 --max-new-tokens 256   # the chat model: the instruct-stage table in NOTES.md

Text goes to stdout as it is produced (one sample streams; several are printed when done), speeds to stderr.
Documents in training are wrapped `<bos> ... <eos>`, so the prompt gets a leading `<bos>` and a sample ends
at its first `<eos>`. The prompt's last token is regenerated (token healing, `heal_prompt`): "def " ends in a
lone " " token that training text hardly ever has, and healing lets the model pick " main" instead.

--chat renders the conversation with the checkpoint's chat template through data.encode_chat, the very
function data.py prepares SFT data with, so the model reads a conversation exactly as it was trained on it; a
reply ends at <end_of_turn> (or <eos>), and the conversation stays in the KV cache between turns.

Randomness is per row: row r of a batch draws from its own generator seeded `seed + r`, and draws the same
amount whatever the other rows do, so sample r of `--num-samples N --seed S` is exactly the single sample of
`--seed S+r` (up to the last bits of batched vs unbatched matmuls).
"""
from __future__ import annotations

import codecs
import math
import random
import sys
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

import data
from fox1.corpus import WRITE_FUNCTION
from fox1.machine import timed
from fox1.speed import CPU_DECODE_INDUCTOR, cache_dtype
from model import IGNORE_INDEX, Fox
from data import chat_stop_ids, encode_chat
from tokenizer import Tokenizer

DEFAULT_CKPT = "out/export"  # train.py exports the base model here after each pre-training stage
DEFAULT_CHAT_CKPT = "out/export-sft"  # ... and the chat model here after SFT: the default of --chat


class SampleError(ValueError):
    """A request that cannot be served (prompt too long, missing checkpoint, ...). One-line message."""


@dataclass
class Generation:
    """What `generate` produced, and how fast."""

    tokens: list[list[int]]  # new tokens of each row, cut before the <eos> that ended it
    prompt_tokens: int  # rows x prompt length, all processed by the one prefill forward
    prefill_seconds: float  # the prefill forward and the sampling of the first new token
    decode_steps: int  # timed one-token forwards after the prefill (each produces `rows` tokens)
    decode_seconds: float
    compile_seconds: float = 0.0  # with compile: first calls of the prefill and decode step, which compile them

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / max(self.prefill_seconds, 1e-9)

    @property
    def decode_tokens_per_s(self) -> float:
        return len(self.tokens) * self.decode_steps / max(self.decode_seconds, 1e-9)


# --------------------------------------------------------------------------------------------------
# Choosing the next token


def allowed_tokens(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Boolean mask (B, V) of the tokens top-k and then top-p (nucleus) sampling may pick from.

    top_k keeps the k largest logits (ties with the k-th are kept too); top_p then keeps the smallest set
    of most likely tokens whose probability adds up to at least top_p (always at least the most likely).
    Both see the logits after the temperature, as in Hugging Face transformers."""
    allowed = torch.ones_like(logits, dtype=torch.bool)
    if top_k is not None and top_k < logits.size(-1):
        kth_largest = logits.topk(top_k, dim=-1).values[:, -1:]
        allowed &= logits >= kth_largest
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.masked_fill(~allowed, float("-inf")).sort(dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(dim=-1)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # probability of the more likely tokens
        keep_sorted = mass_before < top_p
        allowed &= torch.zeros_like(allowed).scatter_(-1, order, keep_sorted)
    return allowed


def sample_next(logits: torch.Tensor, generators: Sequence[torch.Generator], temperature: float,
                top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Next token (B,) from the last-position logits (B, V); temperature 0 is greedy (argmax).

    Sampling uses the exponential race: argmax(p / E) with E ~ Exp(1) picks token i with probability p_i.
    Each row draws its V exponentials from its own generator, so a row's sample does not depend on the
    other rows of the batch (see the module docstring)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    probs = logits.masked_fill(~allowed_tokens(logits, top_k, top_p), float("-inf")).softmax(dim=-1)
    race = torch.stack([torch.empty_like(probs[0]).exponential_(generator=g) for g in generators])
    # an Exp(1) draw of exactly 0 would make 0/0 for a disallowed token; the smallest float avoids it
    return (probs / race.clamp_min_(torch.finfo(race.dtype).tiny)).argmax(dim=-1)


# --------------------------------------------------------------------------------------------------
# Generation: prefill the prompt, then decode one token at a time (gpt-fast's shape)


def prefill(model: Fox, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
    """The prompt tokens (B, T) at positions input_pos (T,) in one forward that fills the KV cache ->
    the next-token logits (B, V). Only the last position goes through the LM head (`last_only`)."""
    return model(tokens, input_pos=input_pos, last_only=True)[:, -1]


def decode_one_token(model: Fox, token: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
    """One cached forward: tokens (B, 1) at position input_pos (1,) -> next-token logits (B, V).
    Every shape is fixed (the cache is static), so its compiled version never recompiles."""
    return model(token, input_pos=input_pos, last_only=True)[:, -1]


def compiled_decode_one_token(device: torch.device) -> Callable:
    """decode_one_token through torch.compile. On CUDA "reduce-overhead" also captures it as a CUDA graph,
    which removes the launch overhead of ~10 kernels per layer. On CPU inductor writes its own dot-product
    loops for the one-row matmuls (fox1.speed.linear), which stream the weights faster than MKL does, with the
    elementwise work (norms, RoPE, SiLU) between them (`CPU_DECODE_INDUCTOR`)."""
    if device.type == "cuda":
        return torch.compile(decode_one_token, mode="reduce-overhead", fullgraph=True)
    return torch.compile(decode_one_token, fullgraph=True, options=CPU_DECODE_INDUCTOR)


def compiled_prefill() -> Callable:
    """prefill through torch.compile, for any prompt length (dynamic shapes: one compile, not one per
    length). The matmuls stay MKL's / cuBLAS's; what compiling removes is the ~40 small elementwise kernels
    per layer around them (norms, RoPE, SiLU, residual adds, the cache writes)."""
    return torch.compile(prefill, fullgraph=True, dynamic=True)


def ensure_kv_cache(model: Fox, batch_size: int, min_len: int) -> None:
    """Give the model a static KV cache for batch_size rows of at least min_len positions, reusing the one
    it has when that is long enough: stale entries are harmless (the mask hides every slot past the
    current position), and the same buffers keep a compiled step (or a captured CUDA graph) valid."""
    cache = model.layers[0].self_attn.kv_cache
    dtype = cache_dtype(model.norm.weight.dtype, model.norm.weight.device)
    if cache is None or cache.k.shape[0] != batch_size or cache.k.shape[2] < min_len or cache.k.dtype != dtype:
        model.setup_kv_cache(batch_size, min_len, dtype)


def check_fits(model: Fox, prompt_len: int, max_new_tokens: int) -> None:
    """Raise SampleError unless the prompt and the new tokens fit in the model's context together."""
    context = model.config.context_len
    if max_new_tokens < 1:
        raise SampleError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if prompt_len < 1:
        raise SampleError("the prompt is empty (it needs at least the <bos> token)")
    if prompt_len + max_new_tokens - 1 > context:  # the last new token is never fed back: it needs no position
        raise SampleError(f"prompt of {prompt_len} tokens + {max_new_tokens} new tokens needs "
                          f"{prompt_len + max_new_tokens - 1} positions, more than the model's context of {context}")


# Below this, logits / temperature overflow to inf for ordinary logits and sampling turns into NaNs; 0.01 is
# already indistinguishable from greedy decoding for every model we have.
MIN_TEMPERATURE = 0.01


def check_finite(logits: torch.Tensor) -> torch.Tensor:
    """The logits, or SampleError when any is NaN or inf (damaged weights, or overflow in this dtype)."""
    if not bool(torch.isfinite(logits).all()):
        raise SampleError("the model's logits are not finite (NaN or inf): its weights are damaged, or overflow "
                          "in this dtype (try --dtype float32)")
    return logits


def check_temperature(temperature: float) -> None:
    """Raise SampleError unless temperature is 0 (greedy) or a finite number >= MIN_TEMPERATURE."""
    if not (temperature == 0 or MIN_TEMPERATURE <= temperature < math.inf):
        raise SampleError(f"temperature {temperature}: use 0 (greedy) or a finite value >= {MIN_TEMPERATURE}")


def new_seed() -> int:
    """A fresh random seed, for runs that were not given one (the CLI prints it, so a run can be repeated)."""
    return random.randrange(2**31)


def compiled_steps(model: Fox, prompt: torch.Tensor, positions: torch.Tensor, decoding: bool
                   ) -> tuple[Callable, Callable, float]:
    """(prefill, decode_one_token, seconds spent compiling them) through torch.compile. Each is called once
    here, untimed as generation, so it compiles now (the decode step only when decoding); the calls write the
    cache slots the real calls write again."""
    device = prompt.device
    fill, step = compiled_prefill(), compiled_decode_one_token(device)

    def warm_up() -> None:
        fill(model, prompt, positions)
        if decoding:
            if device.type == "cuda":
                torch.compiler.cudagraph_mark_step_begin()
            step(model, prompt.new_zeros(prompt.size(0))[:, None], positions[-1:] + 1)  # made as `decode`'s are

    _, seconds = timed(warm_up, device)
    return fill, step, seconds


def decode(model: Fox, step: Callable, token: torch.Tensor, input_pos: torch.Tensor, count: int,
           choose: Callable[[torch.Tensor], torch.Tensor], eos_ids: list[int],
           on_token: Callable[[list[int]], None] | None) -> list[torch.Tensor]:
    """Up to count tokens after `token` (B,), one step each, until every row has produced one of eos_ids.
    A finished row keeps emitting eos_ids[0], so the rows stay one batch.

    A compiled step runs here without Dynamo's guards (`skip_guard_eval_unsafe`), which check every weight and
    cache before each call (a few percent of a small model's step). That is safe only because `compiled_steps`
    already ran this step on the same model, cache and shapes, so no guard can fail here."""
    stops = torch.tensor(eos_ids, dtype=torch.long, device=token.device)
    done = torch.isin(token, stops)
    input_pos = input_pos.clone()
    new_tokens = []
    compiled = step is not decode_one_token
    with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True) if compiled else nullcontext():
        while len(new_tokens) < count and not bool(done.all()):
            if token.device.type == "cuda" and compiled:
                torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs are consumed
            token = choose(step(model, token[:, None], input_pos))
            if eos_ids:
                token = token.masked_fill(done, eos_ids[0])
                done |= torch.isin(token, stops)
            new_tokens.append(token)
            input_pos += 1
            if on_token is not None:
                on_token(token.tolist())
    return new_tokens


def prompt_batch(prompt_ids: torch.Tensor | Sequence[int] | Sequence[Sequence[int]],
                 device: torch.device) -> torch.Tensor:
    """(B, T) long tensor of prompts given as a tensor, one list of ids, or equally long lists. Prompts of
    different lengths are refused: a row padded on the left would need its own positions and mask."""
    if not isinstance(prompt_ids, torch.Tensor) and prompt_ids and not isinstance(prompt_ids[0], int):
        lengths = sorted({len(row) for row in prompt_ids})
        if len(lengths) > 1:
            raise SampleError(f"prompts of different lengths ({lengths[0]} to {lengths[-1]} tokens) cannot share a "
                              f"batch here: generate them separately (or pad them yourself)")
    prompt = torch.as_tensor(prompt_ids, dtype=torch.long, device=device)
    return prompt[None] if prompt.dim() == 1 else prompt


def id_mask(ids: Sequence[int], vocab_size: int, device: torch.device) -> torch.Tensor:
    """(vocab_size,) booleans, True at ids."""
    mask = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    mask[torch.as_tensor(ids, dtype=torch.long, device=device)] = True
    return mask


@torch.inference_mode()
def generate(model: Fox, prompt_ids: torch.Tensor | Sequence[int], max_new_tokens: int, *,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             seed: int | None = None, eos_id: int | Sequence[int] | None = None, vocab_limit: int | None = None,
             compile: bool = False, first_allowed: Sequence[int] | None = None,
             on_token: Callable[[list[int]], None] | None = None) -> Generation:
    """Continue every row of prompt_ids (B, T), or one prompt given as a list of ids, by up to
    max_new_tokens tokens: `prefill`, then `decode` with `decode_one_token`.

    temperature 0 is greedy; top_k / top_p restrict sampling (None: off). seed: row r uses a generator
    seeded seed + r (None: `new_seed()`). eos_id: a row stops at it (or at any of a list of ids, as Hugging
    Face's generation_config allows), and generation stops when every row has; finished rows keep emitting
    the (first) eos id in the batch (`prompt_batch`: prompts of one length). vocab_limit: only ids below it
    are generated (a tokenizer smaller than the model's vocabulary cannot decode the rest). first_allowed: the first new
    token is chosen among these ids only (token healing, see `heal_prompt`). on_token(ids) is called after
    each step with the new token of every row. compile: run the prefill and decode step through torch.compile."""
    device = model.embed_tokens.weight.device
    check_temperature(temperature)
    eos_ids = [] if eos_id is None else [eos_id] if isinstance(eos_id, int) else list(eos_id)
    prompt = prompt_batch(prompt_ids, device)
    rows, prompt_len = prompt.shape
    check_fits(model, prompt_len, max_new_tokens)
    seed = new_seed() if seed is None else seed
    generators = [torch.Generator(device).manual_seed(seed + row) for row in range(rows)]

    def choose(logits: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
        if allowed is not None:
            logits = logits.masked_fill(~allowed, float("-inf"))
        return sample_next(logits[:, :vocab_limit], generators, temperature, top_k, top_p)

    ensure_kv_cache(model, rows, prompt_len + max_new_tokens - 1)
    allowed = None if first_allowed is None else id_mask(first_allowed, model.config.vocab_size, device)
    positions = torch.arange(prompt_len, device=device)
    fill, step, compile_seconds = (compiled_steps(model, prompt, positions, decoding=max_new_tokens > 1)
                                   if compile else (prefill, decode_one_token, 0.0))
    first, prefill_seconds = timed(lambda: choose(check_finite(fill(model, prompt, positions)), allowed), device)
    if on_token is not None:
        on_token(first.tolist())
    input_pos = positions[-1:] + 1
    rest, decode_seconds = timed(lambda: decode(model, step, first, input_pos, max_new_tokens - 1, choose, eos_ids,
                                                on_token), device)
    columns = torch.stack([first, *rest], dim=1).tolist()
    tokens = [row[:next((i for i, t in enumerate(row) if t in eos_ids), len(row))] for row in columns]
    return Generation(tokens, rows * prompt_len, prefill_seconds, len(rest), decode_seconds, compile_seconds)


class TextStream:
    """Token ids in, text out, one token at a time. A character whose UTF-8 bytes span several tokens
    (byte-level BPE splits rare characters into their bytes) is held back until its last byte arrives;
    bytes that never form a character become U+FFFD. `already_shown`: bytes the first tokens start with
    that are on screen already (the prompt's tail that token healing regenerates). Special tokens
    (<start_of_turn>, ...) are control, not text: shown only when show_special."""

    def __init__(self, tokenizer: Tokenizer, already_shown: bytes = b"", show_special: bool = False):
        self.tokenizer = tokenizer
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.to_skip = len(already_shown)
        self.hidden = frozenset() if show_special else tokenizer.special_ids
        self.first = True  # no token pushed yet

    def push(self, token_id: int) -> str:
        self.first = False
        if token_id in self.hidden:
            return ""
        data = self.tokenizer.decode_bytes([token_id])
        skipped = min(self.to_skip, len(data))
        self.to_skip -= skipped
        return self.decoder.decode(data[skipped:])

    def finish(self) -> str:
        return self.decoder.decode(b"", final=True)


def heal_prompt(tokenizer: Tokenizer, ids: list[int]) -> tuple[list[int], bytes, list[int] | None]:
    """Token healing: drop the prompt's last token and let the model choose it again, among the tokens
    that begin with its bytes. Returns (shorter ids, the dropped bytes, the ids allowed first).

    Why: BPE pieces carry their leading space (" foo"), so a prompt that ends in a space ends in a lone
    " " token that training text almost never has before a word: after "def " the model is off its
    data and writes noise. Healed, it continues from "def" with " __init__", " main", ... as it has
    learned to. Prompts that end in a special token are left alone."""
    if len(ids) < 2 or ids[-1] in tokenizer.special_ids:
        return ids, b"", None
    tail = tokenizer.decode_bytes(ids[-1:])
    return ids[:-1], tail, tokenizer.ids_starting_with(tail)


# --------------------------------------------------------------------------------------------------
# Chat: turns rendered by the chat template the model was trained with (data.encode_chat, the very
# function data.py prepares SFT data with), the conversation's tokens kept in the KV cache across turns


@dataclass
class ChatSession:
    """A conversation, and the tokens whose keys and values the model's KV cache holds, in order."""

    tokenizer: Tokenizer
    template: str
    messages: list[dict]
    stop_ids: list[int]  # tokens that end a reply
    cached: list[int] = field(default_factory=list)
    prefilled: int = 0  # tokens the last turn had to prefill


def start_chat(model: Fox, tokenizer: Tokenizer, template: str, system: str | None = None) -> ChatSession:
    """A new conversation (with a system message if given) and a KV cache as long as the model's context,
    allocated once so that no turn has to reallocate it (and lose what it holds)."""
    model.setup_kv_cache(1, model.config.context_len)
    messages = [{"role": "system", "content": system}] if system else []
    return ChatSession(tokenizer, template, messages, chat_stop_ids(tokenizer, template))


@torch.inference_mode()
def chat_turn(model: Fox, session: ChatSession, user_text: str, max_new_tokens: int,
              choose: Callable[[torch.Tensor], torch.Tensor],
              on_token: Callable[[list[int]], None] | None = None) -> str:
    """Add a user turn, generate the reply (up to a stop token), add it too and return its text.

    The whole conversation is rendered again, and only the tokens after the longest prefix the cache already
    holds are prefilled: normally the previous reply's closing token, the new user turn and the reply prompt.
    (Where the model wrote a reply in other tokens than encoding its text gives, the cache is refilled from
    there, so the model always reads the conversation exactly as SFT training encoded it.) A turn that fails
    (too long for the context, Ctrl-C during the reply) leaves the session as it was before it."""
    session.messages.append({"role": "user", "content": user_text})
    kept, reused = list(session.messages), len(session.cached)
    try:
        ids = fit_conversation(model, session, max_new_tokens)
        shared = next((i for i, (a, b) in enumerate(zip(session.cached, ids)) if a != b),
                      min(len(session.cached), len(ids)))
        reused = min(shared, len(ids) - 1)  # prefill at least one token: its logits choose the first reply token
        device = model.embed_tokens.weight.device
        positions = torch.arange(reused, len(ids), device=device)
        first = choose(check_finite(prefill(model, torch.tensor([ids[reused:]], device=device), positions)))
        if on_token is not None:
            on_token(first.tolist())
        rest = decode(model, decode_one_token, first, positions[-1:] + 1, max_new_tokens - 1, choose,
                      session.stop_ids, on_token)
    except BaseException:  # SampleError or KeyboardInterrupt: the turn did not happen
        session.messages[:] = kept[:-1]
        session.cached = session.cached[:reused]  # the cache slots from `reused` on were overwritten
        raise
    generated = [int(token) for token in torch.cat([first, *rest])]
    session.cached = ids + generated[:-1]  # the last token sampled was never fed through the model
    session.prefilled = len(ids) - reused
    reply = generated[:next((i for i, t in enumerate(generated) if t in session.stop_ids), len(generated))]
    text = session.tokenizer.decode(reply)
    session.messages.append({"role": "assistant", "content": text})
    return text


def fit_conversation(model: Fox, session: ChatSession, max_new_tokens: int) -> list[int]:
    """The conversation's prompt ids. When they and max_new_tokens outgrow the context, its oldest exchanges
    are dropped (the system message stays) and the user is told; SampleError if even the new turn alone is
    too long."""
    context, dropped = model.config.context_len, 0
    while True:
        ids, _ = encode_chat(session.tokenizer, session.messages, session.template, add_generation_prompt=True)
        if len(ids) + max_new_tokens - 1 <= context:
            break
        first = 1 if session.messages[0]["role"] == "system" else 0
        if len(session.messages) - first <= 1:
            raise SampleError(f"this turn is {len(ids):,} tokens; with {max_new_tokens} new tokens it does not fit "
                              f"the model's context of {context:,}: shorten it or lower --max-new-tokens")
        del session.messages[first:first + 2]  # the oldest user turn and its reply
        dropped += 1
    if dropped:
        print(f"[the conversation outgrew the context of {context:,} tokens: dropped its oldest {dropped} "
              f"exchange(s)]", file=sys.stderr)
    return ids


@dataclass
class ChatScores:
    """How well a model follows the chat format, measured on conversations of one user turn and one reply."""

    conversations: int
    ended: float  # share of greedy replies that end with a stop token within max_new_tokens
    named_def: float  # share of "Write a Python function `name(...)`" replies that start with "def name("
    write_function: int  # how many conversations asked for a function
    reply_loss: float  # mean loss on the reference replies' tokens (the SFT loss mask)


@torch.inference_mode()
def score_chat(model: Fox, tokenizer: Tokenizer, template: str, conversations: list[list[dict]],
               max_new_tokens: int = 256) -> ChatScores:
    """Greedy replies to each conversation's user turn, scored against the format, plus the masked loss of
    the reference replies (the held-out loss SFT minimises)."""
    stop_ids = chat_stop_ids(tokenizer, template)
    device = model.embed_tokens.weight.device
    ended = named = asked = 0
    loss_sum = counted = 0.0
    for conversation in tqdm(conversations, desc="scoring chat", unit="conversation", leave=False):
        prompt, _ = encode_chat(tokenizer, conversation[:-1], template, add_generation_prompt=True)
        reply = generate(model, prompt, max_new_tokens, temperature=0, eos_id=stop_ids,
                         vocab_limit=tokenizer.vocab_size).tokens[0]
        ended += len(reply) < max_new_tokens  # generate cuts a reply before its stop token
        asked_for = WRITE_FUNCTION.match(conversation[-2]["content"])
        if asked_for:
            asked += 1
            named += tokenizer.decode(reply).startswith(f"def {asked_for.group(1)}(")
        ids, mask = encode_chat(tokenizer, conversation, template)
        batch = data.pack_chat(np.array([ids]), np.array([mask]), tokenizer.bos_id).to(device)
        count = int((batch.targets != IGNORE_INDEX).sum())
        loss = model(batch.inputs, batch.targets, position_ids=batch.position_ids, doc_ids=batch.doc_ids)
        loss_sum, counted = loss_sum + loss.item() * count, counted + count
    total = len(conversations)
    return ChatScores(total, ended / total, named / max(asked, 1), asked, loss_sum / max(counted, 1))


if __name__ == "__main__":
    from cli.sample import main  # open a checkpoint, then print samples or hold a chat

    sys.exit(main())
