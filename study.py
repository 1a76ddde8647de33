"""
The Fox-1 report's open questions as experiments a reader runs on a laptop.

Fox-1 (arXiv 2411.05281) makes three design bets without ablations -- (1) the 3-stage 2K -> 4K -> 8K
curriculum buys long-context ability more cheaply than uniform chunking, (2) a 256K vocabulary suits a small
model, (3) depth (32 layers at width 2048) beats width -- and credits grouped-query attention for its decode
speed. Each bet is one experiment here, run with train.py's training step, data.py's loader, eval.py's
multiple-choice scoring and sample.py's generation:

    python study.py curriculum   # (a) 3 stages (b) uniform at the final length (c) uniform at the first length
                                 # (d) the length schedule with a constant mixture; loss by position in context
    python study.py vocab        # BPE vocabularies 1K..32K, same non-embedding shape, same training bytes
    python study.py depth        # equal non-embedding parameters, 1 to 16 layers; bits/byte, addition, recall
    python study.py gqa          # decode tokens/s and KV-cache bytes at 1K..8K context for 1/2/4/16 KV heads
    python study.py depth --seeds 3 --out out/study --quick     # more seeds; --quick: a tiny smoke run

Each prints a markdown table, writes OUT/EXPERIMENT.json (every number) and OUT/EXPERIMENT.png (when
matplotlib is installed), and ends with one line saying what the numbers support and what they do not.
Each training arm runs once per seed (init and data order); a table cell is "mean (min-max)" over seeds,
and two arms whose seed ranges overlap are reported as "no difference". Defaults are sized to finish in
<= 30 minutes each on a quiet 2-core CPU (estimates from per-step timings in each preset's comment); the
first run also trains a 32K stdlib tokenizer (~10 s) and tokenizes the stdlib once per vocabulary (~7 s).

What each experiment holds fixed, and why:
  * Every training arm uses train.py's pieces (FSDP2 model, AdamW, the WSD schedule over three stages,
    `train_step`) with the three stages of data.curriculum, changed only in the knob under study: the
    stages' lengths and mixtures (curriculum); the tokenizer (vocab); the shape (depth). vocab and depth
    train at one length with the curriculum's token-weighted average mixture, so no second knob moves.
  * Evaluation is on the same text for every arm: the first bytes of each source's val split
    (`val_windows`), scored as bits per byte -- the loss in bits over the UTF-8 bytes the scored tokens
    stand for, the one loss comparable across tokenizers.
  * depth's tasks are synthetic (`synthetic_documents`): lines "417 + 385 = 802" and "the color of
    bakomi is green." make up a third source mixed into training, so the models have seen the formats
    and every fact. Recall asks for the color of each trained fact (memory); addition asks for sums of
    problems never seen in training (composition: carries through digits). Both are 4-way multiple
    choice scored by eval.py; chance is 25%.
These are models of a few million parameters trained on well under a million tokens: evidence about tiny
models, not a verdict on Fox-1's 1.6B.
"""
from __future__ import annotations

import json
import math
import random
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from tqdm import tqdm

from cli import data as data_cli
import data
import eval as evaluation
import sample
import train
from fox1.corpus import BUILTIN, builtin_documents
from fox1.distributed import Dist, init_distributed
from fox1.files import write_atomic
from fox1.machine import synchronize
from fox1.speed import cache_dtype
from model import IGNORE_INDEX, Fox, FoxConfig
from tokenizer import FIRST_MERGE_ID, Tokenizer

BASE_VOCAB = 32768  # one stdlib tokenizer of this size; every smaller vocabulary is its first N tokens
SYNTHETIC = "synthetic"  # the depth experiment's task source, mixed into training
SYNTHETIC_SEED = 20241108  # facts and problems are the same for every arm and seed
POSITION_BUCKETS = 4  # loss by quarter of the context
FOX1_WIDTH_PER_LAYER = 2048 // 32  # Fox-1's hidden size / layers: the depth arm nearest it is marked


class StudyError(ValueError):
    """Settings that cannot be run (an impossible shape, a vocabulary too large). One-line message."""


# --------------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class Training:
    """What every arm of a training experiment shares."""

    model: FoxConfig  # curriculum: the model; vocab / depth: the non-embedding shape they start from
    tokens_per_step: int = 2048  # half train.py's tiny batch: twice the optimizer steps for the same tokens
    seq_len: int = 256  # vocab and depth train at this one length (curriculum uses the model's stages)
    eval_bytes: int = 65536  # of each source's val split: ~40K tokens at 8K vocab
    lr: float = 1e-3  # train.py's tiny
    warmup_steps: int = 10
    seeds: int = 2

    def train_config(self, seed: int) -> train.TrainConfig:
        return replace(train.TRAIN_PRESETS["tiny"], tokens_per_step=self.tokens_per_step,
                       micro_batch_tokens=self.tokens_per_step, lr=self.lr, warmup_steps=self.warmup_steps,
                       seed=seed, compile=False, bf16=False)  # fp32: the tables do not move with the CPU


@dataclass(frozen=True)
class CurriculumSettings:
    training: Training
    tokens: int  # per arm, all three stages


@dataclass(frozen=True)
class VocabSettings:
    training: Training
    vocab_sizes: tuple[int, ...]
    train_bytes: int  # per arm: the token budget is this over the vocabulary's bytes per token
    decode_tokens: int = 64


@dataclass(frozen=True)
class DepthSettings:
    training: Training
    layers: tuple[int, ...]
    tokens: int
    vocab_size: int = 4096
    synthetic_share: float = 0.2  # of the training slots
    facts: int = 128
    digits: int = 3
    synthetic_lines: int = 6400  # in the synthetic source (half facts, half addition problems)
    addition_items: int = 200


@dataclass(frozen=True)
class GqaSettings:
    kv_heads: tuple[int, ...] = (1, 2, 4, 16)
    contexts: tuple[int, ...] = (1024, 2048, 4096, 8192)
    layers: int = 4  # 1/8 of Fox-1's 32 ...
    vocab_size: int = 32000  # ... and 1/8 of its vocabulary: the ratio of weights to KV cache stays Fox-1's
    decode_steps: int = 16
    repeats: int = 3  # the best of these is kept


TINY = FoxConfig.from_preset("tiny")
QUICK_MODEL = FoxConfig(vocab_size=512, hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=32,
                        intermediate_size=128, context_len=128)
QUICK_TRAINING = Training(QUICK_MODEL, tokens_per_step=512, seq_len=128, eval_bytes=8192, warmup_steps=2, seeds=2)

PRESETS = {
    # Each default is sized to finish in about 20 minutes on a quiet 2-core CPU (measured costs: NOTES.md, Study).
    "curriculum": {"default": CurriculumSettings(replace(Training(TINY), eval_bytes=32768), tokens=245_760),
                   "quick": CurriculumSettings(QUICK_TRAINING, tokens=8192)},
    # 4 layers x 256: Fox-1's 64 hidden units per layer.
    "vocab": {"default": VocabSettings(replace(Training(TINY), model=replace(TINY, num_layers=4)),
                                       vocab_sizes=(1024, 2048, 4096, 8192, 16384, 32768), train_bytes=1_000_000),
              "quick": VocabSettings(QUICK_TRAINING, vocab_sizes=(384, 512), train_bytes=24_000, decode_tokens=8)},
    # 2.2M non-embedding parameters (4 x 256 at Fox-1's ratio), 4K vocabulary.
    "depth": {"default": DepthSettings(replace(Training(TINY), model=replace(TINY, num_layers=4, vocab_size=4096)),
                                       layers=(1, 2, 4, 8, 16), tokens=393_216),
              "quick": DepthSettings(replace(QUICK_TRAINING, model=replace(QUICK_MODEL, hidden_size=128, num_heads=4,
                                                                           intermediate_size=256)),
                                     layers=(1, 2, 4), tokens=8192, vocab_size=512, facts=16, synthetic_lines=400,
                                     addition_items=16)},
    "gqa": {"default": GqaSettings(),
            "quick": GqaSettings(kv_heads=(1, 16), contexts=(256, 512), layers=1, vocab_size=2048, decode_steps=4,
                                 repeats=1)},
}


# --------------------------------------------------------------------------------------------------
# Tokenizers and corpora


@dataclass(frozen=True)
class Corpus:
    """A stdlib tokenizer and the built-in sources prepared with it."""

    tokenizer: Tokenizer
    tokenizer_path: Path
    data_root: Path
    byte_lengths: torch.Tensor  # (vocab,) bytes each id stands for; 0 for the special tokens


def truncate_tokenizer(tokenizer: Tokenizer, vocab_size: int) -> Tokenizer:
    """The first vocab_size ids of a BPE tokenizer. BPE learns merges one at a time, greedily and in a fixed
    order (tokenizer.learn_merges), so this is exactly the tokenizer that training to vocab_size gives."""
    if not FIRST_MERGE_ID <= vocab_size <= tokenizer.vocab_size:
        raise StudyError(f"vocabulary {vocab_size}: must be between {FIRST_MERGE_ID} and {tokenizer.vocab_size}")
    return Tokenizer({token: i for token, i in tokenizer.ranks.items() if i < vocab_size}, tokenizer.pattern)


def token_byte_lengths(tokenizer: Tokenizer) -> torch.Tensor:
    """(vocab,) how many UTF-8 bytes each id decodes to; special tokens stand for no text, so 0."""
    lengths = torch.zeros(tokenizer.vocab_size, dtype=torch.long)
    for token, token_id in tokenizer.ranks.items():
        lengths[token_id] = len(token)
    return lengths


def prepare_corpus(out: Path, vocab_size: int) -> Corpus:
    """OUT/corpus/tokenizer-V.txt (cut from one BASE_VOCAB stdlib tokenizer) and the built-in sources under
    OUT/corpus/data-V; both are made on first use and reused after."""
    directory = out / "corpus"
    base_path = directory / f"tokenizer-{BASE_VOCAB}.txt"
    if not base_path.exists():
        tqdm.write(f"training a {BASE_VOCAB}-token BPE tokenizer on the standard library -> {base_path}")
        directory.mkdir(parents=True, exist_ok=True)
        Tokenizer.train(builtin_documents(), BASE_VOCAB, progress=False).save(base_path)
    path = directory / f"tokenizer-{vocab_size}.txt"
    if not path.exists():
        truncate_tokenizer(Tokenizer.load(base_path), vocab_size).save(path)
    tokenizer = Tokenizer.load(path)
    data_cli.prepare_builtin(path, directory / f"data-{vocab_size}", progress=False)
    return Corpus(tokenizer, path, directory / f"data-{vocab_size}", token_byte_lengths(tokenizer))


def bytes_per_token(corpus: Corpus, sources: tuple[str, ...] = BUILTIN) -> float:
    """UTF-8 bytes per ordinary token over the sources' train splits (<bos>/<eos> not counted)."""
    total_bytes = total_tokens = 0
    for name in sources:
        split = data.TokenSplit(corpus.data_root, name, "train")
        lengths = corpus.byte_lengths[torch.from_numpy(split.read(0, split.tokens))]
        total_bytes += int(lengths.sum())
        total_tokens += int((lengths > 0).sum())
    return total_bytes / total_tokens


def val_windows(corpus: Corpus, seq_len: int, bytes_per_source: int, sources: tuple[str, ...] = BUILTIN,
                batch_size: int = 4) -> list[data.Batch]:
    """Evaluation batches of the same text for every tokenizer: each source's val split from its start, cut
    into windows of seq_len+1 tokens, until the windows' targets cover bytes_per_source bytes."""
    windows = []
    width = seq_len + 1
    for name in sources:
        split = data.TokenSplit(corpus.data_root, name, "val")
        count = split.tokens // width
        if count == 0:
            raise StudyError(f"{corpus.data_root / name}: its val split is shorter than one window of {width}")
        stream = torch.from_numpy(split.read(0, count * width)).view(count, width)
        covered = corpus.byte_lengths[stream[:, 1:]].sum(dim=1).cumsum(dim=0)
        windows.append(stream[:int((covered < bytes_per_source).sum()) + 1])
    stacked = torch.cat(windows).numpy()
    return [data.pack(stacked[i:i + batch_size], corpus.tokenizer.bos_id) for i in range(0, len(stacked), batch_size)]


# --------------------------------------------------------------------------------------------------
# Evaluation: per-token losses, bits per byte, loss by position


@torch.no_grad()
def token_losses(model: Fox, batch: data.Batch) -> torch.Tensor:
    """(B, T) loss in nats of each target, NaN where the target is not counted (a <bos> after <eos>).
    One row at a time, so the (T, vocab) logits stay small (8 MB at T=256, V=8K)."""
    device = model.embed_tokens.weight.device
    b = batch.to(device)
    rows = []
    for i in range(b.inputs.size(0)):
        logits = model(b.inputs[i:i + 1], position_ids=b.position_ids[i:i + 1], doc_ids=b.doc_ids[i:i + 1])[0]
        rows.append(F.cross_entropy(logits, b.targets[i], ignore_index=IGNORE_INDEX, reduction="none"))
    return torch.stack(rows).masked_fill(b.targets == IGNORE_INDEX, float("nan")).cpu()


def bits_per_byte(nats: float, num_bytes: int) -> float:
    """A summed loss in nats over the UTF-8 bytes it predicted, in bits: comparable across tokenizers
    (a token covering 4 bytes may cost 4x the nats of a 1-byte token and still be as good)."""
    if num_bytes <= 0:
        raise StudyError("bits per byte of no bytes")
    return nats / math.log(2) / num_bytes


def position_bucket_losses(losses: torch.Tensor, positions: torch.Tensor, seq_len: int,
                           buckets: int = POSITION_BUCKETS) -> list[float | None]:
    """Mean loss of the targets in each of `buckets` equal slices of [0, seq_len), by position: how many
    tokens of its own document precede the input in the window, i.e. the context it attends to (packed
    windows restart positions at every document). NaN losses are skipped; an empty slice gives None."""
    slice_of = (positions * buckets // seq_len).clamp(max=buckets - 1)
    counted = ~losses.isnan()
    means = []
    for bucket in range(buckets):
        chosen = losses[counted & (slice_of == bucket)]
        means.append(float(chosen.mean()) if chosen.numel() else None)
    return means


def evaluate(model: Fox, batches: list[data.Batch], byte_lengths: torch.Tensor) -> dict:
    """Mean loss, bits per byte and loss by position bucket over the evaluation batches."""
    losses = torch.cat([token_losses(model, b).flatten() for b in batches])
    positions = torch.cat([b.position_ids.flatten() for b in batches])
    targets = torch.cat([b.targets.flatten() for b in batches])
    num_bytes = int(byte_lengths[targets[targets != IGNORE_INDEX]].sum())
    return {"loss": float(losses.nanmean()), "bits_per_byte": bits_per_byte(float(losses.nansum()), num_bytes),
            "eval_tokens": int((~losses.isnan()).sum()), "eval_bytes": num_bytes,
            "loss_by_position": position_bucket_losses(losses, positions, batches[0].inputs.size(1))}


# --------------------------------------------------------------------------------------------------
# Training one arm


@contextmanager
def process_group() -> Iterator[Dist]:
    """train.py's 1-process group: its training step is FSDP2's, which needs one."""
    env = init_distributed()
    try:
        yield env
    finally:
        dist.destroy_process_group()


def average_mixture(stages: list[data.Stage]) -> dict[str, float]:
    """The stages' mixtures weighted by their token budgets: the same data in total, with no schedule."""
    total = sum(stage.tokens for stage in stages)
    names = sorted({name for stage in stages for name in stage.mixture})
    return {name: sum(stage.mixture.get(name, 0.0) * stage.tokens for stage in stages) / total for name in names}


def flat_stages(seq_len: int, tokens: int, mixture: dict[str, float] | None = None) -> list[data.Stage]:
    """The curriculum's three stages (so the WSD schedule is unchanged) at one length and one mixture."""
    stages = data.curriculum(4 * seq_len, tokens, list(BUILTIN))
    mixture = mixture or average_mixture(stages)
    return [replace(stage, seq_len=seq_len, mixture=mixture) for stage in stages]


def unshard(model: Fox, config: FoxConfig, device: torch.device) -> Fox:
    """A plain (not FSDP) copy of the trained weights for evaluation and generation."""
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    plain = Fox(config)
    plain.load_state_dict(state)
    return plain.to(device).eval()


def train_arm(label: str, config: FoxConfig, stages: list[data.Stage], training: Training, seed: int,
              env: Dist, corpus: Corpus) -> tuple[Fox, dict]:
    """A fresh model trained through `stages` with train.py's step and schedule, in memory (no checkpoints).
    Returns the plain trained model and {train_seconds, tokens, tokens_per_s, curve: [[tokens, loss]...]}."""
    cfg = training.train_config(seed)
    model = train.build_model(config, cfg, env)
    optimizer = train.build_optimizer(model, cfg)
    curve, tokens, started = [], 0, time.perf_counter()
    for stage in stages:
        plan = train.plan_stage(stage, cfg, env)
        batches = iter(data.Loader(corpus.data_root, stage, plan.micro_batch, seed=seed,
                                   fingerprint=corpus.tokenizer.fingerprint))
        for step in tqdm(range(plan.steps), desc=f"{label} seed {seed} stage {stage.number}", leave=False):
            lr = train.learning_rate(cfg, stage.number, step, plan.steps)
            loss, _ = train.train_step(model, optimizer, [next(batches) for _ in range(plan.accumulation)], lr,
                                       cfg, env)
            tokens += cfg.tokens_per_step
            curve.append([tokens, loss])
        batches.close()
    seconds = time.perf_counter() - started
    plain = unshard(model, config, env.device)
    del model, optimizer
    return plain, {"train_seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds, "curve": curve}


# --------------------------------------------------------------------------------------------------
# Seeds: mean, spread, verdicts


def spread(values: list[float]) -> dict:
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values)}


def seed_mean(values: list[float | None]) -> float:
    """The mean over seeds, NaN (a gap in a plot) when a seed has no value."""
    return math.nan if None in values else spread(values)["mean"]


def verdict(a: list[float], b: list[float]) -> str:
    """'lower' / 'higher' when every seed of a is below / above every seed of b, else 'no difference'
    (a gap smaller than the seed-to-seed spread is not evidence); one seed has no spread to judge by."""
    if min(len(a), len(b)) < 2:
        return "not judged (1 seed)"
    if max(a) < min(b):
        return "lower"
    if min(a) > max(b):
        return "higher"
    return "no difference"


def cell(values: list[float | None], digits: int = 3) -> str:
    """'mean (min-max)' of the seeds; the mean alone for one seed; '-' when a value is missing."""
    if not values or any(v is None for v in values):
        return "-"
    s = spread(values)
    text = f"{s['mean']:,.{digits}f}"
    return text if len(values) == 1 else f"{text} ({s['min']:,.{digits}f}-{s['max']:,.{digits}f})"


def best_arm(values: dict[str, list[float]], lowest: bool) -> str:
    """'ARM (no difference from B, C)' or 'ARM (beyond the seed spread of every other arm)': the arm with the
    best mean, and the arms whose seeds overlap its seeds."""
    means = {label: spread(v)["mean"] for label, v in values.items()}
    winner = (min if lowest else max)(means, key=means.get)
    if min(map(len, values.values())) < 2:
        return f"{winner} (1 seed: not judged against the others)"
    tied = [label for label in values if label != winner and verdict(values[winner], values[label]) == "no difference"]
    return f"{winner} ({'no difference from ' + ', '.join(tied) if tied else 'beyond the seed spread of every other arm'})"


def per_seed(runs: list[dict], key: str) -> list:
    return [run[key] for run in runs]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def mean_curve(runs: list[dict], x_scale: float = 1.0, y_scale: float = 1.0) -> tuple[list[float], list[float]]:
    """The seeds' training-loss curves averaged step by step (every seed has the same steps)."""
    curves = [run["curve"] for run in runs]
    xs = [point[0] * x_scale for point in curves[0]]
    ys = [sum(curve[i][1] for curve in curves) / len(curves) * y_scale for i in range(len(xs))]
    return xs, ys


@dataclass
class Panel:
    """One plot of named lines."""

    title: str
    xlabel: str
    ylabel: str
    lines: dict[str, tuple[list[float], list[float]]]
    logx: bool = False


@dataclass
class Report:
    """What an experiment hands to main: its table, every number (for the JSON), plots, closing line, notes."""

    table: str
    numbers: dict
    panels: list[Panel]
    conclusion: str
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# Experiment 1: the curriculum


def curriculum_arms(context_len: int, tokens: int) -> dict[str, list[data.Stage]]:
    """Four schedules of the same stages, token budgets and total data: only lengths or mixtures differ."""
    stages = data.curriculum(context_len, tokens, list(BUILTIN))
    constant = average_mixture(stages)
    return {"3-stage curriculum": stages,
            "uniform final length": [replace(s, seq_len=context_len) for s in stages],
            "uniform first length": [replace(s, seq_len=stages[0].seq_len) for s in stages],
            "lengths only, constant mixture": [replace(s, mixture=constant) for s in stages]}


def run_curriculum(settings: CurriculumSettings, seeds: int, out: Path) -> Report:
    training = settings.training
    context = training.model.context_len
    corpus = prepare_corpus(out, training.model.vocab_size)
    eval_set = val_windows(corpus, context, training.eval_bytes, batch_size=1)
    schedules = curriculum_arms(context, settings.tokens)
    arms = {}
    with process_group() as env:
        for label, stages in schedules.items():
            arms[label] = []
            for seed in range(seeds):
                model, run = train_arm(label, training.model, stages, training, seed, env, corpus)
                arms[label].append({**run, **evaluate(model, eval_set, corpus.byte_lengths), "seed": seed})
            tqdm.write(f"{label}: eval loss {cell(per_seed(arms[label], 'loss'))}")
    quarters = [f"loss {25 * q}-{25 * q + 25}%" for q in range(POSITION_BUCKETS)]
    rows = [[label, " / ".join(str(s.seq_len) for s in schedules[label]), cell(per_seed(runs, "train_seconds"), 0),
             cell(per_seed(runs, "tokens_per_s"), 0), cell(per_seed(runs, "loss"))]
            + [cell([run["loss_by_position"][q] for run in runs]) for q in range(POSITION_BUCKETS)]
            for label, runs in arms.items()]
    table = markdown_table(["arm", "stage lengths", "wall s", "tokens/s", f"eval loss @{context}", *quarters], rows)
    panels = [Panel("training loss", "tokens", "loss (nats/token)", {k: mean_curve(v) for k, v in arms.items()}),
              Panel(f"eval loss by position in a {context}-token context", "position (% of context)", "loss",
                    {k: ([12.5 + 25 * q for q in range(POSITION_BUCKETS)],
                         [seed_mean([r["loss_by_position"][q] for r in v]) for q in range(POSITION_BUCKETS)])
                     for k, v in arms.items()})]
    numbers = {"settings": asdict(settings), "seeds": seeds, "eval_context": context, "arms": arms}
    return Report(table, numbers, panels, curriculum_conclusion(arms, training.model, settings.tokens))


def curriculum_conclusion(arms: dict[str, list[dict]], model: FoxConfig, tokens: int) -> str:
    """Arm (a) against each other arm on the full-context and last-quarter eval loss, then which of the
    paper's claims that supports: longer training lengths help late positions (a vs c), the curriculum
    matches uniform full-length training for less time (a vs b), the mixture schedule matters (a vs d)."""
    curriculum, final, first, constant = arms.values()

    def compare(other: list[dict], quarter: int | None = None) -> str:
        def value(run: dict) -> float:
            loss = run["loss"] if quarter is None else run["loss_by_position"][quarter]
            return math.nan if loss is None else loss
        return verdict([value(r) for r in curriculum], [value(r) for r in other])

    time_ratio = seed_mean(per_seed(curriculum, "train_seconds")) / seed_mean(per_seed(final, "train_seconds"))
    supported = [claim for claim, holds in (
        ("training at longer lengths lowers the loss late in the context", compare(first, -1) == "lower"),
        (f"the curriculum matches uniform full-length training in {time_ratio:.0%} of its wall time",
         compare(final) in ("lower", "no difference") and time_ratio < 1),
        ("the mixture schedule lowers the loss", compare(constant) == "lower")) if holds]
    names = list(arms)
    results = "; ".join(f"vs {name}: eval loss {compare(other)}, last quarter {compare(other, -1)}"
                        for name, other in zip(names[1:], (final, first, constant)))
    return (f"3-stage curriculum {results}. Supported here: {'; '.join(supported) or 'none of the claims'}. Not "
            f"shown: anything about Fox-1 at 1.6B parameters, 3T tokens and 8K context (this is a "
            f"{Fox(model).num_params() / 1e6:.1f}M-parameter model trained on {tokens:,} tokens).")


# --------------------------------------------------------------------------------------------------
# Experiment 2: the vocabulary


@torch.no_grad()
def decode_tokens_per_s(model: Fox, tokenizer: Tokenizer, tokens: int, repeats: int = 2) -> float:
    """sample.generate's decode speed (eager, batch 1, greedy), best of `repeats`."""
    return max(sample.generate(model, [tokenizer.bos_id], tokens, temperature=0).decode_tokens_per_s
               for _ in range(repeats))


def run_vocab(settings: VocabSettings, seeds: int, out: Path) -> Report:
    training = settings.training
    arms = {}
    with process_group() as env:
        for vocab_size in settings.vocab_sizes:
            corpus = prepare_corpus(out, vocab_size)
            ratio = bytes_per_token(corpus)
            steps = max(3, int(settings.train_bytes / ratio) // training.tokens_per_step)
            config = replace(training.model, vocab_size=vocab_size, context_len=training.seq_len)
            stages = flat_stages(training.seq_len, steps * training.tokens_per_step)
            eval_set = val_windows(corpus, training.seq_len, training.eval_bytes)
            runs = []
            for seed in range(seeds):
                model, run = train_arm(f"vocab {vocab_size}", config, stages, training, seed, env, corpus)
                speed = decode_tokens_per_s(model, corpus.tokenizer, settings.decode_tokens)
                runs.append({**run, **evaluate(model, eval_set, corpus.byte_lengths), "seed": seed,
                             "train_bytes_per_s": run["tokens_per_s"] * ratio, "decode_tokens_per_s": speed,
                             "decode_bytes_per_s": speed * ratio})
            embedding = vocab_size * config.hidden_size
            arms[vocab_size] = {"bytes_per_token": ratio, "parameters": model.num_params(),
                                "embedding_share": embedding / model.num_params(), "runs": runs}
            tqdm.write(f"vocab {vocab_size}: {ratio:.2f} bytes/token, bits/byte {cell(per_seed(runs, 'bits_per_byte'))}")
    rows = [[f"{v:,}", f"{a['bytes_per_token']:.2f}", f"{a['embedding_share']:.0%}", f"{a['parameters']:,}",
             f"{a['runs'][0]['tokens']:,}", cell(per_seed(a["runs"], "bits_per_byte")),
             cell(per_seed(a["runs"], "train_bytes_per_s"), 0), cell(per_seed(a["runs"], "decode_bytes_per_s"), 0)]
            for v, a in arms.items()]
    table = markdown_table(["vocab", "bytes/token", "embedding share", "parameters", "train tokens",
                            "eval bits/byte", "train bytes/s", "decode bytes/s"], rows)
    panels = [Panel("training loss per byte", "training bytes", "bits per byte",
                    {f"V={v:,}": mean_curve(a["runs"], a["bytes_per_token"], 1 / (math.log(2) * a["bytes_per_token"]))
                     for v, a in arms.items()}),
              Panel("eval bits per byte", "vocabulary", "bits per byte",
                    {"mean of seeds": (list(arms), [spread(per_seed(a["runs"], "bits_per_byte"))["mean"]
                                                    for a in arms.values()])}, logx=True)]
    numbers = {"settings": asdict(settings), "seeds": seeds, "arms": {str(v): a for v, a in arms.items()}}
    return Report(table, numbers, panels, vocab_conclusion(arms, settings))


def vocab_conclusion(arms: dict[int, dict], settings: VocabSettings) -> str:
    bpb = {f"{v:,}-token vocabulary": per_seed(a["runs"], "bits_per_byte") for v, a in arms.items()}
    largest = max(arms)
    return (f"At {settings.train_bytes:,} training bytes the lowest eval bits/byte is the {best_arm(bpb, True)}; the "
            f"largest vocabulary spends {arms[largest]['embedding_share']:.0%} of its parameters on the embedding. "
            f"This is evidence about {settings.training.model.num_layers}-layer, "
            f"{settings.training.model.hidden_size}-wide models, not about 256K tokens at width 2048 and 3T tokens.")


# --------------------------------------------------------------------------------------------------
# Experiment 3: depth vs width at equal non-embedding parameters


def non_embedding_params(config: FoxConfig) -> int:
    """Parameters besides the (tied) embedding: per layer q/k/v/o, the SwiGLU's three matrices and two norm
    gains, plus the final norm. Equals Fox(config).num_params() - vocab_size * hidden_size."""
    c = config
    attention = c.hidden_size * (2 * c.num_heads + 2 * c.num_kv_heads) * c.head_dim
    return c.num_layers * (attention + 3 * c.hidden_size * c.intermediate_size + 2 * c.hidden_size) + c.hidden_size


def kv_heads_for(num_heads: int, group: int) -> int:
    """The most KV heads that give each at least `group` query heads (Fox-1: 4), and divide num_heads."""
    return max(d for d in range(1, num_heads + 1) if num_heads % d == 0 and (d == 1 or num_heads // d >= group))


def equal_param_config(base: FoxConfig, num_layers: int, target: int, tolerance: float = 0.02) -> FoxConfig:
    """The num_layers-deep shape whose non-embedding parameters are nearest `target`: hidden = heads x
    base.head_dim, KV heads as in Fox-1 (`kv_heads_for`), and the SwiGLU width (a multiple of 16, between 1x
    and 4x hidden) closing the gap. Among shapes within `tolerance` of the target, the one whose SwiGLU
    width is nearest Fox-1's 2 x hidden wins."""
    group = base.num_heads // base.num_kv_heads
    candidates = []
    for heads in range(1, 129):
        shape = replace(base, num_layers=num_layers, hidden_size=heads * base.head_dim, num_heads=heads,
                        num_kv_heads=kv_heads_for(heads, group), intermediate_size=0)
        missing = target - non_embedding_params(shape)
        intermediate = round(missing / (3 * shape.hidden_size * num_layers) / 16) * 16
        if not shape.hidden_size <= intermediate <= 4 * shape.hidden_size:
            continue
        config = replace(shape, intermediate_size=intermediate)
        if abs(non_embedding_params(config) - target) <= tolerance * target:
            candidates.append(config)
    if not candidates:
        raise StudyError(f"no {num_layers}-layer shape has {target:,} non-embedding parameters within "
                         f"{tolerance:.0%} (with an intermediate size 1-4x hidden); try other --layers")
    return min(candidates, key=lambda c: abs(math.log(c.intermediate_size / (2 * c.hidden_size))))


NAME_SYLLABLES = ("ba", "ko", "mi", "ru", "te", "la", "zo", "fi", "ne", "du", "sa", "vo")
COLORS = ("red", "blue", "green", "yellow", "black", "white", "brown", "purple")


def make_facts(rng: random.Random, count: int) -> list[tuple[str, str]]:
    """count made-up names (three syllables: 1,728 possible) each with a random color."""
    if not 1 <= count <= 1000:
        raise StudyError(f"facts: {count}, must be between 1 and 1000")
    names: set[str] = set()
    while len(names) < count:
        names.add("".join(rng.choice(NAME_SYLLABLES) for _ in range(3)))
    return [(name, rng.choice(COLORS)) for name in sorted(names)]


def fact_line(name: str, color: str) -> str:
    return f"the color of {name} is {color}."


def addition_pair(rng: random.Random, digits: int) -> tuple[int, int]:
    low, high = 10 ** (digits - 1), 10 ** digits
    return rng.randrange(low, high), rng.randrange(low, high)


def synthetic_documents(rng: random.Random, facts: list[tuple[str, str]], lines: int, digits: int,
                        lines_per_document: int = 32) -> tuple[list[str], set[tuple[int, int]]]:
    """Training text for depth's tasks: `lines` lines, each a fact (any of `facts`) or an addition problem
    "a + b = sum" with two digits-digit numbers, half and half at random, 32 lines to a document.
    Returns the documents and the addition pairs they contain (held out of the test problems)."""
    seen, text = set(), []
    for _ in range(lines):
        if rng.random() < 0.5:
            text.append(fact_line(*rng.choice(facts)))
        else:
            a, b = addition_pair(rng, digits)
            seen.add((a, b))
            text.append(f"{a} + {b} = {a + b}")
    documents = ["\n".join(text[i:i + lines_per_document]) for i in range(0, len(text), lines_per_document)]
    return documents, seen


def addition_items(rng: random.Random, count: int, digits: int, seen: set[tuple[int, int]]) -> list[dict]:
    """4-way multiple choice on problems not in `seen`: the sum, and three sums off by 1 or 2 in one digit
    (a missed or extra carry is off by 1) with as many digits, so that no choice wins by being shorter (summed
    log-likelihoods favour short choices: with 4-digit sums against 3-digit ones, untrained models
    scored 12-14%, below chance)."""
    if digits < 2:
        raise StudyError(f"addition digits: {digits}, need at least 2 for three distractors of the sum's length")
    items, used = [], set(seen)
    while len(items) < count:
        a, b = addition_pair(rng, digits)
        if (a, b) in used:
            continue
        used.add((a, b))
        total = a + b
        wrong = sorted({total + step * 10 ** k for k in range(digits) for step in (-2, -1, 1, 2)})
        choices = [total, *rng.sample([w for w in wrong if len(str(w)) == len(str(total))], 3)]
        rng.shuffle(choices)
        items.append({"query": f"{a} + {b} =", "choices": [str(c) for c in choices], "gold": choices.index(total)})
    return items


def recall_items(rng: random.Random, facts: list[tuple[str, str]]) -> list[dict]:
    """4-way multiple choice on every trained fact: its color and three others."""
    items = []
    for name, color in facts:
        choices = [color, *rng.sample([c for c in COLORS if c != color], 3)]
        rng.shuffle(choices)
        items.append({"query": f"the color of {name} is", "choices": choices, "gold": choices.index(color)})
    return items


def prepare_synthetic(corpus: Corpus, settings: DepthSettings) -> tuple[list[dict], list[dict], dict]:
    """Write and prepare the synthetic source (no val split: every fact must be trainable); return the
    addition items, the recall items and how often training sees each."""
    rng = random.Random(SYNTHETIC_SEED)
    facts = make_facts(rng, settings.facts)
    documents, seen = synthetic_documents(rng, facts, settings.synthetic_lines, settings.digits)
    path = corpus.data_root.parent / f"{SYNTHETIC}-{corpus.tokenizer.vocab_size}.jsonl"
    write_atomic(path, "".join(json.dumps({"text": d}) + "\n" for d in documents))
    data_cli.prepare([str(path)], corpus.tokenizer_path, corpus.data_root, SYNTHETIC, val_fraction=0.0, progress=False)
    source_tokens = data.TokenSplit(corpus.data_root, SYNTHETIC, "train").tokens
    epochs = settings.synthetic_share * settings.tokens / source_tokens
    exposure = {"source_tokens": source_tokens, "epochs": epochs,
                "addition_examples": round(epochs * len(seen)),
                "views_per_fact": epochs * sum(d.count("the color of") for d in documents) / len(facts)}
    return addition_items(rng, settings.addition_items, settings.digits, seen), recall_items(rng, facts), exposure


def run_depth(settings: DepthSettings, seeds: int, out: Path) -> Report:
    training = settings.training
    corpus = prepare_corpus(out, settings.vocab_size)
    addition, recall, exposure = prepare_synthetic(corpus, settings)
    base = replace(training.model, vocab_size=settings.vocab_size, context_len=training.seq_len)
    target = non_embedding_params(base)
    shapes = [equal_param_config(base, layers, target) for layers in settings.layers]
    mixture = {name: w * (1 - settings.synthetic_share) for name, w in average_mixture(flat_stages(
        training.seq_len, settings.tokens)).items()} | {SYNTHETIC: settings.synthetic_share}
    stages = flat_stages(training.seq_len, settings.tokens, mixture)
    eval_set = val_windows(corpus, training.seq_len, training.eval_bytes)
    arms = {}
    with process_group() as env:
        for config in shapes:
            label = f"{config.num_layers} x {config.hidden_size}"
            runs = []
            for seed in range(seeds):
                model, run = train_arm(label, config, stages, training, seed, env, corpus)
                scores = {name: evaluation.score_multiple_choice(model, corpus.tokenizer, items)
                          for name, items in (("addition", addition), ("recall", recall))}
                runs.append({**run, **evaluate(model, eval_set, corpus.byte_lengths), "seed": seed,
                             **{f"{name}_acc": s["acc"] for name, s in scores.items()},
                             **{f"{name}_acc_stderr": s["acc_stderr"] for name, s in scores.items()}})
            arms[label] = {"config": asdict(config), "non_embedding_params": non_embedding_params(config),
                           "runs": runs}
            tqdm.write(f"{label}: bits/byte {cell(per_seed(runs, 'bits_per_byte'))}, addition "
                       f"{cell(per_seed(runs, 'addition_acc'), 2)}, recall {cell(per_seed(runs, 'recall_acc'), 2)}")
    fox_like = min(arms, key=lambda k: abs(math.log(arms[k]["config"]["hidden_size"] / arms[k]["config"]["num_layers"]
                                                    / FOX1_WIDTH_PER_LAYER)))
    rows = [[label + (" (Fox-1's ratio)" if label == fox_like else ""),
             f"{a['config']['num_heads']} / {a['config']['num_kv_heads']}", str(a["config"]["intermediate_size"]),
             f"{a['non_embedding_params']:,}", cell(per_seed(a["runs"], "bits_per_byte")),
             cell(per_seed(a["runs"], "train_seconds"), 0), cell(per_seed(a["runs"], "addition_acc"), 2),
             cell(per_seed(a["runs"], "recall_acc"), 2)] for label, a in arms.items()]
    table = markdown_table(["layers x hidden", "heads / KV", "SwiGLU", "non-embedding params", "eval bits/byte",
                            "wall s", f"addition acc ({len(addition)})", f"recall acc ({len(recall)})"], rows)
    layers = [a["config"]["num_layers"] for a in arms.values()]
    panels = [Panel("training loss", "tokens", "loss (nats/token)", {k: mean_curve(a["runs"]) for k, a in arms.items()}),
              Panel("tasks (chance 0.25)", "layers", "accuracy",
                    {task: (layers, [spread(per_seed(a["runs"], f"{task}_acc"))["mean"] for a in arms.values()])
                     for task in ("addition", "recall")}, logx=True)]
    numbers = {"settings": asdict(settings), "seeds": seeds, "target_non_embedding_params": target,
               "synthetic_exposure": exposure, "arms": arms}
    notes = [f"synthetic source: {exposure['source_tokens']:,} tokens, {settings.synthetic_share:.0%} of training "
             f"({exposure['epochs']:.2f} passes): each fact seen ~{exposure['views_per_fact']:.0f} times, "
             f"~{exposure['addition_examples']:,} addition examples; test sums are held out"]
    return Report(table, numbers, panels, depth_conclusion(arms, fox_like, target, settings), notes)


def depth_conclusion(arms: dict[str, dict], fox_like: str, target: int, settings: DepthSettings) -> str:
    def best(key: str, lowest: bool) -> str:
        return best_arm({label: per_seed(a["runs"], key) for label, a in arms.items()}, lowest)

    addition = [seed_mean(per_seed(a["runs"], "addition_acc")) for a in arms.values()]
    return (f"Best eval bits/byte: {best('bits_per_byte', True)}; best addition: {best('addition_acc', False)}"
            + (", but no shape beats chance (25%) on addition (well below it, beyond the items' standard "
               "error, means a systematic preference for a wrong sum one digit off)" if max(addition) <= 0.3 else "")
            + f"; best recall: {best('recall_acc', False)}. Fox-1's ratio is {fox_like}. At "
            f"{settings.tokens:,} tokens and ~{target / 1e6:.1f}M non-embedding parameters this tests depth vs width for tiny models only, not for 1.6B at 3T tokens.")


# --------------------------------------------------------------------------------------------------
# Experiment 4: grouped-query attention at decode time


def matvec_bytes_per_s(dtype: torch.dtype, device: torch.device) -> float:
    """Bytes/s at which one-row matmuls -- a decode step's work -- stream a matrix of Fox-1's SwiGLU shape
    (8192 x 2048), best of 5 rounds of 10."""
    weight = torch.randn(8192, 2048, device=device).to(dtype)
    row = torch.randn(1, 2048, device=device).to(dtype)
    best = math.inf
    for _ in range(5):
        synchronize(device)
        started = time.perf_counter()
        for _ in range(10):
            F.linear(row, weight)
        synchronize(device)
        best = min(best, (time.perf_counter() - started) / 10)
    return weight.nbytes / best


def decode_dtype(device: torch.device) -> tuple[torch.dtype, str]:
    """bf16 (Fox-1's serving dtype) where the hardware runs it well: on CUDA, and on a CPU whose bf16 one-row
    matmul streams bytes at least as fast as fp32's (on some CPUs eager bf16 is so much slower that it loses
    despite half the bytes: measured here, first). Returns (dtype, why)."""
    if device.type == "cuda":
        return torch.bfloat16, "bf16 on CUDA"
    bf16, fp32 = matvec_bytes_per_s(torch.bfloat16, device), matvec_bytes_per_s(torch.float32, device)
    choice = torch.bfloat16 if bf16 >= fp32 else torch.float32
    return choice, f"{str(choice).removeprefix('torch.')}: one-row matmuls stream {bf16 / 1e9:.1f} GB/s in bf16, " \
                   f"{fp32 / 1e9:.1f} GB/s in fp32 on this CPU"


def kv_cache_bytes(model: Fox) -> int:
    return sum(layer.self_attn.kv_cache.k.nbytes + layer.self_attn.kv_cache.v.nbytes for layer in model.layers)


def gqa_measurements(settings: GqaSettings, repeats: int, device: torch.device, dtype: torch.dtype) -> list[dict]:
    """Decode tokens/s and KV-cache bytes of every (KV heads, context) pair, on random weights."""
    rows = []
    for kv_heads in settings.kv_heads:
        config = replace(FoxConfig(), num_layers=settings.layers, vocab_size=settings.vocab_size,
                         num_kv_heads=kv_heads, context_len=max(settings.contexts))
        torch.manual_seed(0)
        model = Fox(config).to(device=device, dtype=dtype).eval()
        for context in tqdm(settings.contexts, desc=f"{kv_heads} KV heads", leave=False):
            # sample.py's cache is static and read whole at every step, whatever the position: a step in a
            # cache of `context` slots costs what a step at position `context` does, so no prefill is needed.
            model.setup_kv_cache(1, context)  # in generation's dtype for it (fox1.speed.cache_dtype)
            speed = max(sample.generate(model, [Tokenizer.bos_id], settings.decode_steps + 1,
                                        temperature=0).decode_tokens_per_s for _ in range(repeats))
            measured, itemsize = kv_cache_bytes(model), model.layers[0].self_attn.kv_cache.k.element_size()
            rows.append({"kv_heads": kv_heads, "context": context, "decode_tokens_per_s": speed,
                         "kv_cache_bytes": measured,  # and scaled to Fox-1: 32 layers, 2-byte bf16
                         "fox1_kv_cache_bytes_bf16": measured // settings.layers * 32 * 2 // itemsize})
        del model
    return rows


def run_gqa(settings: GqaSettings, repeats: int, out: Path) -> Report:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype, dtype_reason = decode_dtype(device)
    rows = gqa_measurements(settings, repeats, device, dtype)
    kv_dtype = cache_dtype(dtype, device)
    by_kv = {kv: {r["context"]: r for r in rows if r["kv_heads"] == kv} for kv in settings.kv_heads}
    contexts, longest = list(settings.contexts), max(settings.contexts)

    def line(key: str, scale: float = 1.0) -> dict[str, tuple[list, list]]:
        return {f"{kv} KV heads": (contexts, [by_kv[kv][c][key] * scale for c in contexts]) for kv in by_kv}

    table = markdown_table(["KV heads", *(f"tok/s @{c:,}" for c in contexts), *(f"KV MB @{c:,}" for c in contexts),
                            f"Fox-1 KV MB @{longest:,}"],
                           [[str(kv), *(f"{r[c]['decode_tokens_per_s']:.1f}" for c in contexts),
                             *(f"{r[c]['kv_cache_bytes'] / 2**20:,.1f}" for c in contexts),
                             f"{r[longest]['fox1_kv_cache_bytes_bf16'] / 2**20:,.0f}"] for kv, r in by_kv.items()])
    panels = [Panel("decode speed", "context (tokens)", "tokens/s", line("decode_tokens_per_s"), logx=True),
              Panel("KV cache", "context (tokens)", "MB", line("kv_cache_bytes", 2**-20), logx=True)]
    note = (f"random weights, Fox-1's width (hidden 2048, 16 query heads of 128, SwiGLU 4096), {settings.layers} of "
            f"its 32 layers and a {settings.vocab_size:,}-token vocabulary, {dtype_reason}; the KV cache in "
            f"{str(kv_dtype).removeprefix('torch.')}; eager decode at batch 1, best of {repeats}; the last column "
            f"scales the cache to Fox-1's 32 layers in bf16")
    numbers = {"settings": asdict(settings), "repeats": repeats, "dtype": str(dtype), "kv_cache_dtype": str(kv_dtype),
               "device": device.type, "rows": rows}
    return Report(table, numbers, panels, gqa_conclusion(by_kv, settings), [note])


def gqa_conclusion(by_kv: dict[int, dict[int, dict]], settings: GqaSettings) -> str:
    longest, fewest, most = max(settings.contexts), min(settings.kv_heads), max(settings.kv_heads)
    speed_ratio = by_kv[fewest][longest]["decode_tokens_per_s"] / by_kv[most][longest]["decode_tokens_per_s"]
    cache_ratio = by_kv[most][longest]["kv_cache_bytes"] / by_kv[fewest][longest]["kv_cache_bytes"]
    speed = ("supports GQA's decode-speed claim" if speed_ratio >= 1.1 else
             "does not show a decode-speed gain (the weights, not the cache, are most of the bytes read)")
    return (f"At {longest:,} tokens {fewest} KV head(s) decode {speed_ratio:.2f}x as fast as {most} with a "
            f"{cache_ratio:.0f}x smaller cache: this {speed} on this machine and its memory claim; with random "
            f"weights it says nothing about what fewer KV heads cost in quality.")


# --------------------------------------------------------------------------------------------------
# The experiments by name (the command line, cli/study.py, runs one)


EXPERIMENTS: dict[str, Callable[..., Report]] = {"curriculum": run_curriculum, "vocab": run_vocab,
                                                 "depth": run_depth, "gqa": run_gqa}


if __name__ == "__main__":
    from cli.study import main  # run one experiment, write its JSON and picture, print the table

    sys.exit(main())
