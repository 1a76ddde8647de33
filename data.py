"""Data: text -> uint32 token shards -> Fox-1's 3-stage curriculum of packed, shuffled, resumable batches.

Fox-1 (arXiv 2411.05281) is pre-trained on 3T tokens with a 3-stage data curriculum: the sequence length grows
2K -> 4K -> 8K while the data mixture moves toward higher-quality sources, then fine-tuned on conversations. This
file is that pipeline at any scale, top to bottom:

  curriculum  the three stages (sequence length, token budget, source mixture) as a small table of `Stage`s;
  Loader      cuts each source's token stream into windows of seq_len+1 tokens that overlap by one token (every
              next-token pair is trained; no padding), on a grid shifted each epoch, shuffles them per epoch, draws
              the source of every slot by weight, splits each global batch across ranks, resumes from state_dict();
  chat        `encode_chat`: a conversation -> token ids and the loss mask of the assistant's replies, through any
              chat template; ChatLoader packs whole conversations first-fit into windows (the instruct stage).

Preparing text / JSONL / Parquet files (or the built-in corpus, this Python's standard library) into DATA/NAME/
token shards is `python data.py prepare ...` (cli/data.py; every document as <bos> ... <eos>).

Run:
    python data.py prepare --input 'corpus/*.txt' --tokenizer tok.txt --out data --name prose
    python data.py prepare-builtin --tokenizer tok.txt --out data
    python data.py prepare-chat --input 'chats/*.jsonl' --tokenizer tok.txt --out chat --name mychat
    python data.py stats --data data --context-len 1024
"""
from __future__ import annotations

import itertools
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import regex
import torch

from fox1.chat_template import DEFAULT_CHAT_TEMPLATE, ChatTemplateError, render_chat
from fox1.corpus import BUILTIN
from fox1.shards import MASK_DTYPE, DataError, TokenSplit
from model import IGNORE_INDEX

MIX_BLOCK = 4096  # slots per seeded mixture draw; keyed by block number, so a slot's source never depends on
#                   batch size or world size

# Curriculum. What the paper says: 3T tokens in three stages at 2K, 4K and 8K with rising data quality; stage 3 is a
# short high-quality phase at 8K. Its per-stage token counts could not be read from the stored copies of the report
# (only the abstract); from memory they are roughly 39% / 59% / 2% of the data -- unverified. Chosen here: 40% / 45% /
# 15%. Stages 1-2 keep the paper's "bulk at short lengths"; stage 3 gets 15% rather than 2% because at the scale of
# `python train.py` (a few million tokens) 2% is a handful of optimizer steps, too few to adapt to a 4x longer
# context and a new mixture.
STAGE_TOKEN_FRACTIONS = (0.40, 0.45, 0.15)
STAGE_CONTEXT_DIVISORS = (4, 2, 1)  # seq_len = context_len // divisor: 2048/4096/8192 for fox-1.6b
BUILTIN_MIXTURES = (  # stage 1 is near the natural 61/39 byte ratio (all data); later stages favour documented code
    {"stdlib-code": 0.6, "stdlib-docs": 0.4},
    {"stdlib-code": 0.4, "stdlib-docs": 0.6},
    {"stdlib-code": 0.2, "stdlib-docs": 0.8},
)


# ---------------------------------------------------------------------------------------------------------------------
# Curriculum


@dataclass(frozen=True)
class Stage:
    """One curriculum stage: windows of seq_len tokens, a token budget, and source name -> weight (sums to 1)."""

    number: int  # 1, 2, 3
    seq_len: int
    tokens: int
    mixture: dict[str, float]


def curriculum(context_len: int, total_tokens: int, sources: list[str]) -> list[Stage]:
    """Fox-1's three stages: seq_len context_len/4, /2, /1 and STAGE_TOKEN_FRACTIONS of total_tokens (40/45/15%;
    the comment above that constant gives what the paper says and why this split differs from it).

    Mixture: the built-in sources use BUILTIN_MIXTURES. Otherwise sources are listed from broadest to highest
    quality and source i (0-based) gets weight proportional to (i + 1) ** (stage - 1): uniform in stage 1, a linear
    ramp in stage 2, a quadratic ramp in stage 3 (for two sources: 1:1, 1:2, 1:4). A single source gets 1.0.
    """
    if context_len % 4 or context_len < 4:
        raise DataError(f"context_len {context_len}: must be a positive multiple of 4")
    if not sources or len(set(sources)) != len(sources):
        raise DataError(f"sources {sources}: give one or more distinct source names")
    if set(sources) == set(BUILTIN):
        mixtures = [dict(mixture) for mixture in BUILTIN_MIXTURES]
    else:
        mixtures = []
        for stage in range(1, 4):
            raw = {name: float((i + 1) ** (stage - 1)) for i, name in enumerate(sources)}
            mixtures.append({name: weight / sum(raw.values()) for name, weight in raw.items()})
    budgets = [int(total_tokens * fraction) for fraction in STAGE_TOKEN_FRACTIONS[:-1]]
    budgets.append(total_tokens - sum(budgets))
    return [Stage(number, context_len // divisor, budget, mixture)
            for number, divisor, budget, mixture in zip((1, 2, 3), STAGE_CONTEXT_DIVISORS, budgets, mixtures)]


# ---------------------------------------------------------------------------------------------------------------------
# Packing and loading


@dataclass
class Batch:
    """One rank's share of a global batch: B windows of T = seq_len input tokens."""

    inputs: torch.Tensor  # (B, T) int64
    targets: torch.Tensor  # (B, T) int64; IGNORE_INDEX where the target starts another document (<eos> -> <bos>)
    position_ids: torch.Tensor  # (B, T) int64; 0 at the window start and at every document start
    doc_ids: torch.Tensor  # (B, T) int64; document number within the window: 0, 1, 2 ...

    def to(self, device: torch.device) -> Batch:
        """The batch on `device`; non_blocking lets a GPU copy overlap the work still queued before it."""
        return Batch(*(t.to(device, non_blocking=True) for t in (self.inputs, self.targets, self.position_ids,
                                                                  self.doc_ids)))


def pack(windows: np.ndarray, bos_id: int) -> Batch:
    """(B, seq_len+1) token windows -> a Batch for next-token prediction with per-document positions."""
    inputs, targets = windows[:, :-1], windows[:, 1:].copy()
    targets[targets == bos_id] = IGNORE_INDEX
    starts = inputs == bos_id
    doc_ids = np.cumsum(starts, axis=1) - starts[:, :1]
    steps = np.arange(inputs.shape[1])
    position_ids = steps - np.maximum.accumulate(np.where(starts, steps, 0), axis=1)
    return Batch(*(torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))
                   for a in (inputs, targets, position_ids, doc_ids)))


@dataclass(frozen=True)
class PackingStats:
    """How a split packs into windows of seq_len+1 tokens, one every seq_len tokens (neighbours share a token, so
    no next-token pair is lost at a border). Every window is full: there is no padding."""

    windows: int  # windows per epoch: (tokens - 1) // seq_len
    tokens_dropped: int  # tokens outside every window in an epoch (fewer than seq_len; the Loader moves them)
    documents: int
    documents_cut: int  # documents spread over two or more windows (or into the dropped tail)
    docs_per_window: float  # mean number of documents (or document pieces) in a window


def window_count(tokens: int, seq_len: int) -> int:
    """Windows of seq_len+1 tokens, one every seq_len tokens, that fit in a stream of `tokens` tokens."""
    return max(0, (tokens - 1) // seq_len)


def packing_stats(split: TokenSplit, seq_len: int) -> PackingStats:
    windows = window_count(split.tokens, seq_len)
    starts = np.asarray(split.doc_starts, dtype=np.int64)
    ends = np.append(starts[1:], split.tokens)
    cut = int(np.count_nonzero(starts // seq_len != (ends - 1) // seq_len))
    inner_starts = np.count_nonzero((starts < windows * seq_len) & (starts % seq_len != 0))
    return PackingStats(windows, split.tokens - 1 - windows * seq_len, len(starts), cut,
                        (windows + inner_starts) / windows if windows else 0.0)


def _open_mixture(data_root: Path, stage: Stage, split: str, fingerprint: str | None
                  ) -> tuple[list[TokenSplit], np.ndarray]:
    names = sorted(name for name, weight in stage.mixture.items() if weight > 0)
    if not names:
        raise DataError(f"stage {stage.number}: the mixture has no source with a positive weight")
    sources = [TokenSplit(data_root, name, split, fingerprint) for name in names]
    if len({s.meta["tokenizer_fingerprint"] for s in sources}) > 1:
        raise DataError(f"sources {names} were prepared with different tokenizers; prepare them with one")
    for source in sources:
        if window_count(source.tokens, stage.seq_len) < 1:
            raise DataError(f"source {source.name!r}: its {split} split has {source.tokens:,} tokens, fewer than one "
                            f"window of {stage.seq_len + 1:,} (stage {stage.number})")
    weights = np.array([stage.mixture[name] for name in names], dtype=np.float64)
    return sources, weights / weights.sum()


class Loader:
    """Infinite, seeded stream of packed batches of one stage, one rank's share of every global batch.

    The global stream is a sequence of slots. Slot g's source is drawn by weight from an RNG keyed by (seed, stage,
    g // MIX_BLOCK); each source hands out its windows in a seeded per-epoch permutation and starts a new epoch when
    it runs out. Window w of an epoch starts at token offset + w * seq_len, where the epoch's seeded offset (0 up to
    the tokens left over by the grid) moves the grid, so the same tail is not left out of every epoch.
    A global batch is world_size * batch_size consecutive slots and rank r takes the r-th block of batch_size:
    ranks are disjoint and together see every window of a source exactly once per epoch, dropping none.
    State is (slots consumed, each source's epoch and position), so a resumed job -- even with another world size or
    batch size -- continues the same global stream; another stage, seed or data is refused.
    """

    def __init__(self, data_root: Path, stage: Stage, batch_size: int, *, rank: int = 0, world_size: int = 1,
                 seed: int = 0, split: str = "train", fingerprint: str | None = None):
        if not 0 <= rank < world_size or batch_size < 1:
            raise DataError(f"need 0 <= rank < world_size and batch_size >= 1 "
                            f"(got rank {rank}, world_size {world_size}, batch_size {batch_size})")
        self.stage, self.batch_size, self.rank, self.world_size, self.seed = stage, batch_size, rank, world_size, seed
        self.sources, self.weights = _open_mixture(data_root, stage, split, fingerprint)
        self.width = stage.seq_len + 1
        self.windows = [window_count(source.tokens, stage.seq_len) for source in self.sources]
        self.stats = {source.name: packing_stats(source, stage.seq_len) for source in self.sources}
        self._state = {"slot": 0, "epochs": [0] * len(self.sources), "positions": [0] * len(self.sources)}
        self._grids: dict[tuple[int, int], np.ndarray] = {}  # (source, epoch) -> window starts in shuffled order

    def state_dict(self) -> dict:
        """Position after the last batch handed out."""
        return {"stage": self.stage.number, "seq_len": self.stage.seq_len, "seed": self.seed,
                "sources": [s.name for s in self.sources], "windows": list(self.windows),
                "world_size": self.world_size, "batch_size": self.batch_size, **_copy_state(self._state)}

    def load_state_dict(self, state: dict) -> None:
        _check_same(state, self.state_dict(), ("stage", "seq_len", "seed", "sources", "windows"))
        self._state = _copy_state(state)

    def __iter__(self) -> Iterator[Batch]:
        """Batches read on demand: reading and packing memory-mapped shards is tiny next to a training step, so
        reading ahead in a thread buys nothing."""
        while True:
            yield self._next_batch(self._state)

    def _next_batch(self, state: dict) -> Batch:
        """Advance state by one global batch; read and pack this rank's slots."""
        size = self.world_size * self.batch_size
        chosen = self._slot_sources(state["slot"], size)
        picks = [(s, self._next_window_start(state, s)) for s in chosen]
        state["slot"] += size
        mine = picks[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        windows = np.stack([self.sources[s].read(start, start + self.width) for s, start in mine])
        return pack(windows, self.sources[0].bos_id)

    def _slot_sources(self, first: int, count: int) -> np.ndarray:
        """Source index of each global slot in [first, first + count)."""
        blocks = range(first // MIX_BLOCK, (first + count - 1) // MIX_BLOCK + 1)
        rngs = (np.random.default_rng([self.seed, self.stage.number, block]) for block in blocks)
        draws = np.concatenate([rng.choice(len(self.weights), MIX_BLOCK, p=self.weights) for rng in rngs])
        offset = first - blocks[0] * MIX_BLOCK
        return draws[offset:offset + count]

    def _next_window_start(self, state: dict, source: int) -> int:
        """Token offset of the source's next window in this epoch's shuffled, shifted grid; advances state."""
        epoch, position = state["epochs"][source], state["positions"][source]
        grid = self._grids.get((source, epoch))
        if grid is None:
            name_key = zlib.crc32(self.sources[source].name.encode())
            rng = np.random.default_rng([self.seed, name_key, self.stage.seq_len, epoch])
            order = rng.permutation(self.windows[source])
            spare = self.sources[source].tokens - 1 - self.windows[source] * self.stage.seq_len
            grid = int(rng.integers(0, spare + 1)) + order * self.stage.seq_len
            others = {k: v for k, v in self._grids.items() if k[0] != source}  # keep one epoch per source
            self._grids = {**others, (source, epoch): grid}
        if position + 1 == self.windows[source]:
            state["epochs"][source], state["positions"][source] = epoch + 1, 0
        else:
            state["positions"][source] = position + 1
        return int(grid[position])


def _check_same(state: dict, mine: dict, fields: tuple[str, ...]) -> None:
    """Refuse a loader state saved for other data, order or window length."""
    for field in fields:
        if state.get(field) != mine[field]:
            raise DataError(f"loader state is for {field} {state.get(field)!r} but this loader has "
                            f"{mine[field]!r}; start this stage without the old loader state")


def _copy_state(state: dict) -> dict:
    return {"slot": int(state["slot"]), "epochs": [int(e) for e in state["epochs"]],
            "positions": [int(p) for p in state["positions"]]}


def eval_batches(data_root: Path, stage: Stage, batch_size: int, *, rank: int = 0, world_size: int = 1,
                 max_batches: int, fingerprint: str | None = None) -> list[Batch]:
    """Fixed validation batches for a stage: up to max_batches per rank from the val splits of its sources.

    Each source contributes windows in proportion to its weight (as many as its val split holds at most), spread
    evenly over the split; ranks take disjoint blocks of every global batch, and a partial last batch is dropped.
    """
    sources, weights = _open_mixture(data_root, stage, "val", fingerprint)
    seq_len, size = stage.seq_len, world_size * batch_size
    picks = []
    for s, (source, weight) in enumerate(zip(sources, weights)):
        available = window_count(source.tokens, seq_len)
        count = min(available, round(weight * max_batches * size))
        picks += [(s, int(w)) for w in np.unique(np.linspace(0, available - 1, count).round())]
    batches = []
    for first in range(0, len(picks) - size + 1, size):
        mine = picks[first + rank * batch_size:first + (rank + 1) * batch_size]
        windows = np.stack([sources[s].read(w * seq_len, w * seq_len + seq_len + 1) for s, w in mine])
        batches.append(pack(windows, sources[0].bos_id))
    if not batches:
        raise DataError(f"stage {stage.number}: the val splits hold {len(picks)} windows of {seq_len + 1} tokens, fewer "
                        f"than one global batch of {size}; prepare with a larger val fraction")
    return batches[:max_batches]


# ---------------------------------------------------------------------------------------------------------------------
# Chat data for the instruction-tuning stage: whole conversations, loss on the replies only


# Put inside every special token's text found in a message, so the rendered conversation holds special tokens only
# where the template wrote them; taken out again before the text is encoded as text. A Unicode noncharacter.
DEFUSE = "\ufdd0"


def encode_chat(tokenizer, messages: list[dict], template: str = DEFAULT_CHAT_TEMPLATE, *,
                add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
    """A conversation -> (token ids, loss mask): mask 1 exactly on the tokens of every assistant reply, including
    the end-of-turn token the template closes it with; 0 on everything the model reads but must not learn to write.

    Works with any template: reply i spans from the end of the conversation up to i rendered with a generation
    prompt to the end of the conversation through reply i rendered without one, less trailing whitespace
    ("<end_of_turn>\\n": the newline belongs to the next turn's scaffolding, and generation stops before it).
    The text is encoded piece by piece at those boundaries, so a prompt is encoded exactly as sample.py --chat
    encodes it before the model writes its reply. Message content is always text: a "<end_of_turn>" typed in a
    message is encoded as its characters, never as the control token, so no data file can forge a turn. Ids
    always start with <bos> (added when the template has none), where data.py's packing sees a conversation begin."""
    specials = sorted((t for t in tokenizer.special_tokens if len(t) > 1), key=len, reverse=True)
    messages = [{**message, "content": _defuse(message["content"], specials)} for message in messages]
    names = dict(bos_token=tokenizer.decode([tokenizer.bos_id]), eos_token=tokenizer.decode([tokenizer.eos_id]))
    text = render_chat(template, messages, add_generation_prompt=add_generation_prompt, **names)
    cuts, masked = [0], []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render_chat(template, messages[:i], add_generation_prompt=True, **names)
        through = render_chat(template, messages[:i + 1], **names)
        if not (text.startswith(prompt) and text.startswith(through) and len(prompt) <= len(through.rstrip())):
            raise ChatTemplateError(f"chat template renders message {i} differently once later messages follow; "
                                    f"the reply's tokens cannot be located")
        cuts += [len(prompt), len(through.rstrip())]
        masked += [0, 1]
    cuts.append(len(text))
    masked.append(0)
    ids, mask = [], []
    for begin, end, flag in zip(cuts, cuts[1:], masked):
        piece = _encode_rendered(tokenizer, text[begin:end], specials)
        ids += piece
        mask += [flag] * len(piece)
    if not ids or ids[0] != tokenizer.bos_id:
        ids, mask = [tokenizer.bos_id] + ids, [0] + mask
    return ids, mask


def chat_stop_ids(tokenizer, template: str = DEFAULT_CHAT_TEMPLATE) -> list[int]:
    """<eos> and the token this template closes a reply with (<end_of_turn> in ours): the last token encode_chat
    marks as the assistant's in a rendered exchange. Generation of a reply stops at any of them."""
    exchange = [{"role": "user", "content": "?"}, {"role": "assistant", "content": "!"}]
    ids, mask = encode_chat(tokenizer, exchange, template)
    closing = ids[max(i for i, flag in enumerate(mask) if flag)]
    return sorted({closing, tokenizer.eos_id})


def _defuse(content: str, specials: list[str]) -> str:
    for special in specials:
        content = content.replace(special, special[0] + DEFUSE + special[1:])
    return content


def _encode_rendered(tokenizer, text: str, specials: list[str]) -> list[int]:
    """Rendered chat text -> ids: the special tokens the template wrote as tokens, everything else as text."""
    ids = []
    for i, part in enumerate(regex.split("(" + "|".join(map(regex.escape, specials)) + ")", text) if specials
                             else [text]):
        if i % 2:
            ids.append(tokenizer.token_id(part))
        elif part:
            for special in specials:
                part = part.replace(special[0] + DEFUSE + special[1:], special)
            ids += tokenizer.encode(part)
    return ids

class ChatSplit:
    """One split of a chat source: tokens (a TokenSplit), the parallel loss mask, and conversation boundaries."""

    def __init__(self, data_root: Path, name: str, split: str, fingerprint: str | None = None):
        self.tokens = TokenSplit(data_root, name, split, fingerprint)
        if self.tokens.meta.get("kind") != "chat":
            raise DataError(f"source {name!r} holds plain documents, not conversations "
                            f"(prepare chat data with `python data.py prepare-chat`)")
        self.mask = TokenSplit(data_root, name, f"{split}_mask", dtype=MASK_DTYPE)
        self.name, self.bos_id, self.template = name, self.tokens.bos_id, self.tokens.meta["chat_template"]
        self.bounds = np.append(np.asarray(self.tokens.doc_starts, dtype=np.int64), self.tokens.tokens)

    def fitted_lengths(self, width: int) -> tuple[np.ndarray, int]:
        """Each conversation's length in a window of `width` tokens, and how many had to be cut: one longer than
        the window keeps its turns up to the last reply that ends inside it (0 tokens if even the first does not)."""
        lengths = np.diff(self.bounds)
        cut = 0
        for index in np.flatnonzero(lengths > width):
            mask = self.mask.read(self.bounds[index], self.bounds[index] + width + 1)
            reply_ends = np.flatnonzero((mask[:-1] == 1) & (mask[1:] == 0))  # last token of a reply
            lengths[index] = reply_ends[-1] + 1 if len(reply_ends) else 0
            cut += 1
        return lengths, cut


def pack_chat(windows: np.ndarray, masks: np.ndarray, bos_id: int) -> Batch:
    """`pack` for conversations: the same positions and document masking, and a target counts only where the
    mask marks a reply token (padding and every prompt token are IGNORE_INDEX)."""
    batch = pack(windows, bos_id)
    batch.targets[torch.from_numpy(masks[:, 1:] == 0)] = IGNORE_INDEX
    return batch


class ChatLoader:
    """Seeded, resumable stream of packed SFT batches, one rank's share of every global batch.

    Each epoch takes the conversations of all sources in a seeded order (in order when shuffle is off) and packs
    them first-come into windows of seq_len+1 tokens, starting a new window, padded with <pad>, when the next one
    does not fit: a conversation is never split (one longer than a window is cut at a turn boundary,
    `ChatSplit.fitted_lengths`). A global batch is world_size * batch_size consecutive windows, rank r takes the
    r-th block. State is (epoch, windows consumed), so a resumed run continues the same stream."""

    def __init__(self, data_root: Path, sources: list[str], seq_len: int, batch_size: int, *, rank: int = 0,
                 world_size: int = 1, seed: int = 0, split: str = "train", shuffle: bool = True,
                 fingerprint: str | None = None, pad_id: int = 0):
        self.splits = [ChatSplit(data_root, name, split, fingerprint) for name in sources]
        if len({s.template for s in self.splits}) > 1:
            raise DataError(f"chat sources {sources} were rendered with different chat templates; prepare them "
                            f"with one")
        self.seq_len, self.width, self.batch_size, self.seed = seq_len, seq_len + 1, batch_size, seed
        self.rank, self.world_size, self.shuffle, self.pad_id = rank, world_size, shuffle, pad_id
        self.template = self.splits[0].template
        fitted = [s.fitted_lengths(self.width) for s in self.splits]
        self.source_of = np.concatenate([np.full(len(f[0]), i) for i, f in enumerate(fitted)])
        self.start_of = np.concatenate([s.bounds[:-1] for s in self.splits])
        self.length_of = np.concatenate([f[0] for f in fitted])
        if not self.length_of.any():
            raise DataError(f"chat sources {sources}: no {split} conversation fits in a window of {self.width} tokens")
        self._cached_epoch: tuple[int, list[np.ndarray]] | None = None
        windows = len(self._epoch_windows(0))
        total = int(sum(np.diff(s.bounds).sum() for s in self.splits))
        self.stats = {"+".join(sources): PackingStats(windows, total - int(self.length_of.sum()),
                                                      len(self.length_of), sum(f[1] for f in fitted),
                                                      int(np.count_nonzero(self.length_of)) / windows)}
        self._state = {"epoch": 0, "window": 0}

    def state_dict(self) -> dict:
        return {"kind": "chat", "seq_len": self.seq_len, "seed": self.seed, "sources": [s.name for s in self.splits],
                "conversations": len(self.length_of), "epoch": self._state["epoch"], "window": self._state["window"]}

    def load_state_dict(self, state: dict) -> None:
        _check_same(state, self.state_dict(), ("kind", "seq_len", "seed", "sources", "conversations"))
        self._state = {"epoch": int(state["epoch"]), "window": int(state["window"])}

    def __iter__(self) -> Iterator[Batch]:
        while True:
            picks = [self._next_window() for _ in range(self.world_size * self.batch_size)]
            mine = picks[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
            tokens, masks = zip(*(self._read_window(conversations) for conversations in mine))
            yield pack_chat(np.stack(tokens), np.stack(masks), self.splits[0].bos_id)

    def _epoch_windows(self, epoch: int) -> list[np.ndarray]:
        """The conversation indices of every window of an epoch, first-fit in the epoch's order (kept for the
        current epoch: a pass over millions of conversations takes seconds)."""
        if self._cached_epoch is not None and self._cached_epoch[0] == epoch:
            return self._cached_epoch[1]
        order = (np.random.default_rng([self.seed, epoch]).permutation(len(self.length_of)) if self.shuffle
                 else np.arange(len(self.length_of)))
        order = order[self.length_of[order] > 0]
        windows, current, used = [], [], 0
        for index, length in zip(order.tolist(), self.length_of[order].tolist()):
            if used + length > self.width:
                windows.append(np.array(current))
                current, used = [], 0
            current.append(index)
            used += length
        self._cached_epoch = (epoch, windows + [np.array(current)])
        return self._cached_epoch[1]

    def _next_window(self) -> np.ndarray:
        windows = self._epoch_windows(self._state["epoch"])
        window = windows[self._state["window"]]
        self._state["window"] += 1
        if self._state["window"] == len(windows):
            self._state = {"epoch": self._state["epoch"] + 1, "window": 0}
        return window

    def _read_window(self, conversations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tokens, masks = np.full(self.width, self.pad_id, np.int64), np.zeros(self.width, np.int64)
        at = 0
        for index in conversations:
            split, start, length = self.splits[self.source_of[index]], self.start_of[index], self.length_of[index]
            tokens[at:at + length] = split.tokens.read(start, start + length)
            masks[at:at + length] = split.mask.read(start, start + length)
            at += length
        return tokens, masks


def chat_eval_batches(data_root: Path, sources: list[str], seq_len: int, batch_size: int, *, rank: int = 0,
                      world_size: int = 1, max_batches: int, fingerprint: str | None = None) -> list[Batch]:
    """Fixed validation batches for SFT: the val conversations in order, up to max_batches per rank, without
    repeating any (a partial last global batch is dropped)."""
    loader = ChatLoader(data_root, sources, seq_len, batch_size, rank=rank, world_size=world_size, split="val",
                        shuffle=False, fingerprint=fingerprint)
    count = min(max_batches, loader.stats[next(iter(loader.stats))].windows // (world_size * batch_size))
    if count == 0:
        raise DataError(f"chat sources {sources}: the val splits pack into fewer windows of {seq_len + 1} tokens "
                        f"than one global batch of {world_size * batch_size}; prepare with a larger val fraction")
    return list(itertools.islice(loader, count))


if __name__ == "__main__":
    from cli.data import main  # prepare, prepare-builtin, prepare-chat, stats

    sys.exit(main())
