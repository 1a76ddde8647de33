"""
Score a Fox checkpoint on the benchmarks the Fox-1 paper reports (arXiv 2411.05281, Table 3 and the model
card), the way EleutherAI's lm-evaluation-harness scores them, so that a number printed here can be set
beside the paper's, and with --match-harness compared with the harness's own item by item. Fox-1's card
follows the Open LLM Leaderboard v1 setup: ARC-Challenge 25-shot, HellaSwag 10-shot, MMLU 5-shot,
Winogrande 5-shot, GSM8k 5-shot (36.39% for the base model).

    python eval.py --ckpt out/export --tasks hellaswag,arc_easy,arc_challenge,lambada_openai --data DIR
    python eval.py --tasks arc_challenge,hellaswag,mmlu,winogrande,gsm8k --shots arc_challenge=25,hellaswag=10,winogrande=5 \
        --hf --ckpt path/to/Fox-1-1.6B --tokenizer tok.txt --limit 500 --out items.jsonl --output-path results/

Prints a table (task, metric, value, stderr, items, seconds) and, last, one JSON line (flags: cli/eval.py).

Tasks carry the harness's names (hellaswag, arc_easy, arc_challenge, piqa, winogrande, mmlu,
lambada_openai, gsm8k; `lambada` still names lambada_openai). How each is scored, as the harness does:
  multiple choice  each choice is a continuation of the prompt; its log-likelihood is the sum of its
      tokens' log-probabilities. acc: the most likely choice is the gold one; acc_norm: the same after
      dividing by the choice's length in characters. hellaswag (ctx_a + " " + ctx_b.capitalize() and its
      bracket cleanup), arc_easy, arc_challenge ("Question: ...\\nAnswer:"), piqa, mmlu (letters A-D after
      the listed options, 5 shots from the dev split, acc only), winogrande (partial scoring: each option
      fills the blank in its own context, and the rest of the sentence, the same for both, is what is
      scored; acc only).
  lambada_openai  the passage without its last word is the context, " " + that word the continuation.
      acc: every token of the word is the greedy choice; perplexity: exp(-mean log-likelihood).
  gsm8k    greedy generation (sample.generate) after 5 worked examples, stopped where the harness stops it:
      at "Question:", "</s>", "<|im_end|>" or <eos>; the answer is the number after "####" (strict) or
      the last number (flexible), compared by exact match ("," "$" and a final "." ignored).
Every metric has a standard error: the sample standard deviation over sqrt(items) for means, a seeded
bootstrap for perplexity (as the harness does, with 1,000 resamples instead of its 100,000).

The context/continuation split is the harness's (`encode_pair`): trailing spaces of the context move into
the continuation; the continuation's tokens are those of encode(context + continuation) past the
len(encode(context)) first ones; a pair longer than the model's context is cut from the left. The
context starts with <bos>, as every training document here does; the harness adds one exactly when the
model's tokenizer.json does (Llama's and Gemma's do; our exports' do not: compare an export with --no-bos).

Few-shot examples and subsets. Examples come, as in the harness, from one random.Random(--seed, 1234
like the harness's) stream drawn for every document in order, so each item gets the examples the
harness gives it in a full run, whatever --limit picks (MMLU takes the first n of its subject's dev
split). Where the harness hands its sampler the scored document (hellaswag, piqa, winogrande), n + 1
are drawn and that document dropped. The harness lets a LAMBADA passage be its own example (its only
pool is the test split); eval.py leaves it out the same way (n + 1 drawn) unless --match-harness.
--limit N scores a fixed seeded random subset, or with --match-harness the first N items (per MMLU
subject), as the harness does.

Speed: each item is one row, its context followed by all of its choices, with per-row positions and a
mask that lets each choice see the context and itself only (`choice_mask`). The context is computed once
per item instead of once per choice (a context cut to fit is shared by the choices cut the same way),
only the positions that predict a choice token go through the LM head, and rows of similar length are
batched up to 1,024 padded tokens (how much faster: NOTES.md).

Data, from --data DIR (JSONL or Parquet; Parquet needs pyarrow) or --hf (the Hugging Face Hub through
`datasets`, each task's dataset as the harness loads it, `Task.hub`). Under DIR a task's split is
DIR/<name>_<split>.jsonl or .parquet, or a Hub dataset repository downloaded as the Hub serves it into
DIR/<name>/ (the layouts looked for: fox1/benchmark_files.py). Records have
the Hub's fields (hellaswag ctx_a/ctx_b or ctx, endings, label; ai2_arc question, choices{text,label},
answerKey; piqa goal/sol1/sol2/label; winogrande sentence/option1/option2/answer; cais/mmlu
question/subject/choices/answer; lambada text; gsm8k question/answer) or, for the multiple-choice tasks,
the simple {"query", "choices", "gold"} form. Few-shot examples come from --fewshot-from FILE, else the
task's train/dev split when there is one, else the scored split itself.

Output: --out FILE, one JSON line per item (prompt, log-likelihoods, predictions); --output-path DIR, the
harness's results_<date>.json (results[task]["acc,none"], "acc_stderr,none", n-shot, n-samples, ...) and
samples_<task>_<date>.jsonl (doc_id, doc, arguments, resps, filtered_resps, target per item), so tools
written for the harness read them.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import re
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from model import LOSS_CHUNK_ELEMENTS, Fox
from sample import generate
from fox1.benchmark_files import file_records, find_split_files, hub_records, split_file_names
from fox1.files import write_atomic
from tokenizer import Tokenizer

DEFAULT_CKPT = "out/export"
BOOTSTRAP_RESAMPLES = 1000  # perplexity's stderr: the harness draws 100,000; 1,000 pin it to ~2% of itself
BATCH_TOKENS = 1024  # padded tokens per forward at most (`batches`)
GSM8K_MAX_NEW_TOKENS = 256  # the harness's max_gen_toks
GSM8K_STOPS = ("Question:", "</s>", "<|im_end|>")  # the harness's gsm8k `until`; <eos> stops generation itself
GSM8K_GENERATION = {"until": list(GSM8K_STOPS), "do_sample": False, "temperature": 0.0}  # its generation_kwargs


class EvalError(ValueError):
    """A data file, field or request eval.py cannot use. One-line message naming the file and field."""


# --------------------------------------------------------------------------------------------------
# Log-likelihoods of continuations, many choices per row


def start_ids(tokenizer: Tokenizer, bos: bool | int) -> list[int]:
    """What every context starts with. bos: True the tokenizer's <bos>, an int that id (a checkpoint's own,
    sample.special_ids), False nothing."""
    if bos is True:
        return [tokenizer.bos_id] if tokenizer.bos_id is not None else []
    return [] if bos is False else [bos]


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str,
                bos: bool | int = True) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) split as lm-evaluation-harness does (`_encode_pair`).

    Trailing spaces of the context belong to the continuation ("Answer: " + "B" is scored as "Answer:" +
    " B"): BPE pieces carry their leading space, so " B" is one token the model knows. The continuation's
    ids are those of the whole string past the context's own ids, so both sides are tokenized as the
    model saw such text in training. bos: see `start_ids`; without one an empty context becomes <eos>,
    as the harness does."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    context_ids = tokenizer.encode(context)
    continuation_ids = tokenizer.encode(context + continuation)[len(context_ids):]
    context_ids = start_ids(tokenizer, bos) + context_ids
    return context_ids or [tokenizer.eos_id], continuation_ids


@dataclass
class Row:
    """One row of a batch: a context once, then each continuation but its last token (which is only a
    target). `scored[i]` = (request index, row positions whose logits predict its tokens, its token ids)."""

    tokens: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)  # RoPE positions: every choice starts after the context
    segments: list[int] = field(default_factory=list)  # 0: the context, i: the i-th continuation
    scored: list[tuple[int, list[int], list[int]]] = field(default_factory=list)
    group: object = None  # the item it belongs to, which the progress bar counts


def pack_row(context: list[int], continuations: list[tuple[int, list[int]]], group: object) -> Row:
    """A row holding `context` once and every (request index, continuation ids) after it."""
    row = Row(list(context), list(range(len(context))), [0] * len(context), group=group)
    for segment, (request, ids) in enumerate(continuations, start=1):
        start = len(row.tokens)
        row.scored.append((request, [len(context) - 1] + list(range(start, start + len(ids) - 1)), ids))
        row.tokens += ids[:-1]
        row.positions += range(len(context), len(context) + len(ids) - 1)
        row.segments += [segment] * (len(ids) - 1)
    return row


def truncate_left(context: list[int], continuation: list[int], max_len: int) -> list[int]:
    """The context cut from the left so that context + continuation[:-1] fits in max_len positions
    (the harness's (context + continuation)[-(max_len + 1):][:-1])."""
    if len(continuation) > max_len:
        raise EvalError(f"a continuation of {len(continuation)} tokens is longer than the model's context of {max_len}")
    return context[max(0, len(context) + len(continuation) - 1 - max_len):]


def build_rows(tokenizer: Tokenizer, requests: Sequence[tuple[str, str]], groups: Sequence[object],
               max_len: int, bos: bool | int) -> list[Row]:
    """Rows for the requests: those with the same group and context share one row. A context too long for
    the model is cut from the left for each continuation as the harness cuts it (`truncate_left`), and the
    continuations it is cut the same way for (those of one length, or all that fit without a cut) still
    share a row: a 25-shot prompt cut to the context costs one row per distinct cut, not per choice."""
    shared: dict[tuple[object, str], list[int]] = defaultdict(list)
    for index, (group, (context, _)) in enumerate(zip(groups, requests)):
        shared[(group, context)].append(index)
    rows = []
    for (group, _), indices in shared.items():
        by_context: dict[tuple[int, ...], list[tuple[int, list[int]]]] = defaultdict(list)
        for index in indices:
            context, continuation = encode_pair(tokenizer, *requests[index], bos=bos)
            # a continuation that BPE merges into the context's last token has no ids of its own: like the
            # harness, it gets log-likelihood 0 (and counts as greedy) without a row
            if continuation:
                by_context[tuple(truncate_left(context, continuation, max_len))].append((index, continuation))
        rows += [pack_row(list(context), continuations, group) for context, continuations in by_context.items()]
    return rows


def choice_mask(segments: torch.Tensor) -> torch.Tensor:
    """(B, T) segment ids -> (B, 1, T, T) attention mask: causal, and a token of continuation i sees the
    context (segment 0) and continuation i, never another continuation. Padding (-1) sees the context and
    the padding before it, so no row of the mask is empty (an empty row would make NaNs in SDPA)."""
    T = segments.size(1)
    causal = torch.ones(T, T, dtype=torch.bool, device=segments.device).tril()
    visible = (segments[:, None, :] == 0) | (segments[:, None, :] == segments[:, :, None])
    return (causal & visible)[:, None]


def score_rows(model: Fox, rows: Sequence[Row]) -> dict[int, tuple[float, bool]]:
    """One forward over the padded batch of rows -> {request index: (log-likelihood, greedy)}."""
    device = model.embed_tokens.weight.device
    T = max(len(row.tokens) for row in rows)

    def padded(values: list[int], pad: int) -> list[int]:
        return values + [pad] * (T - len(values))

    idx = torch.tensor([padded(r.tokens, 0) for r in rows], device=device)
    positions = torch.tensor([padded(r.positions, 0) for r in rows], device=device)
    segments = torch.tensor([padded(r.segments, -1) for r in rows], device=device)
    hidden = model.hidden(idx, positions, choice_mask(segments))  # the LM head only where a choice token is scored
    where = [(b, at, request) for b, row in enumerate(rows) for request, ats, _ in row.scored for at in ats]
    targets = torch.tensor([t for row in rows for _, _, ids in row.scored for t in ids], device=device)
    picked = hidden[torch.tensor([b for b, _, _ in where], device=device), torch.tensor([at for _, at, _ in where], device=device)]
    log_probs, greedy = [], []
    chunk = max(1, LOSS_CHUNK_ELEMENTS // model.config.vocab_size)  # (chunk x vocab) fp32 logits at a time
    for start in range(0, len(targets), chunk):
        logits = model.logits(picked[start:start + chunk]).log_softmax(dim=-1)
        wanted = targets[start:start + chunk]
        log_probs.append(logits.gather(1, wanted[:, None])[:, 0])
        greedy.append(logits.argmax(dim=-1) == wanted)
    log_probs, greedy = torch.cat(log_probs), torch.cat(greedy).tolist()
    if not bool(torch.isfinite(log_probs).all()):
        raise EvalError("the model's log-likelihoods are not finite (NaN or inf): its weights are damaged, or "
                        "overflow in this dtype (try --dtype float32)")
    log_probs = log_probs.tolist()
    results: dict[int, tuple[float, bool]] = {}
    for (_, _, request), lp, g in zip(where, log_probs, greedy):
        total, all_greedy = results.get(request, (0.0, True))
        results[request] = (total + lp, all_greedy and g)
    return results


def batches(rows: Sequence[Row], batch_size: int) -> Iterator[Sequence[Row]]:
    """Rows sorted longest first, cut into batches of at most `batch_size` rows and BATCH_TOKENS padded
    tokens. Every row of a batch is padded to its first (longest) row, and on a CPU a forward costs what its
    padded tokens cost: 64 HellaSwag items (14,602 tokens) pad to 17,872 in batches of 16 rows, to 15,206
    under the cap, and the matmuls stay ~1,000 rows tall."""
    start = 0
    while start < len(rows):
        size = max(1, min(batch_size, BATCH_TOKENS // len(rows[start].tokens)))
        yield rows[start:start + size]
        start += size


@torch.inference_mode()
def loglikelihoods(model: Fox, tokenizer: Tokenizer, requests: Sequence[tuple[str, str]], batch_size: int = 16, *,
                   groups: Sequence[object] | None = None, bos: bool | int = True,
                   progress: str | None = None) -> list[tuple[float, bool]]:
    """(sum of the continuation's log-probabilities, whether every continuation token is the greedy
    choice) for each (context, continuation) request, as lm-evaluation-harness's `loglikelihood`.

    Requests with the same context (and the same `groups` entry, if given) share one row, so the context
    is computed once. Rows are sorted by length and batched (`batches`). bos: what contexts start
    with (`start_ids`). progress: a tqdm bar with this description, counting groups (items) done."""
    groups = list(groups) if groups is not None else [context for context, _ in requests]
    rows = build_rows(tokenizer, requests, groups, model.config.context_len, bos)
    rows.sort(key=lambda row: len(row.tokens), reverse=True)  # similar lengths together: little padding
    rows_left = defaultdict(int)
    for row in rows:
        rows_left[row.group] += 1
    bar = tqdm(total=len(rows_left), desc=progress, unit="item", disable=progress is None, leave=False)
    results: dict[int, tuple[float, bool]] = {}
    for batch in batches(rows, batch_size):
        results.update(score_rows(model, batch))
        for row in batch:
            rows_left[row.group] -= 1
            bar.update(int(rows_left[row.group] == 0))
    bar.close()
    return [results.get(i, (0.0, True)) for i in range(len(requests))]


# --------------------------------------------------------------------------------------------------
# Metrics


def mean_stderr(values: Sequence[float]) -> float:
    """Standard error of the mean: sample standard deviation / sqrt(n) (the harness's mean_stderr)."""
    if len(values) < 2:
        return float("nan")
    return float(np.std(values, ddof=1) / math.sqrt(len(values)))


def perplexity(log_likelihoods: Sequence[float]) -> float:
    return math.exp(-float(np.mean(log_likelihoods)))


def perplexity_stderr(log_likelihoods: Sequence[float], seed: int = 0) -> float:
    """Bootstrap standard error of the perplexity: the spread of exp(-mean) over resampled items."""
    values = np.asarray(log_likelihoods, dtype=np.float64)
    if len(values) < 2:
        return float("nan")
    draws = np.random.default_rng(seed).integers(0, len(values), size=(BOOTSTRAP_RESAMPLES, len(values)))
    return float(np.std(np.exp(-values[draws].mean(axis=1)), ddof=1))


def choice_metrics(lls: Sequence[float], choices: Sequence[str], gold: int) -> dict:
    """acc and acc_norm of one item: argmax of the log-likelihoods, and of the log-likelihoods divided
    by each choice's length in characters (the choice text, without the " " before it, as the harness)."""
    pred = int(np.argmax(lls))
    pred_norm = int(np.argmax(np.asarray(lls) / np.array([float(len(c)) for c in choices])))
    return {"pred": pred, "pred_norm": pred_norm, "acc": float(pred == gold), "acc_norm": float(pred_norm == gold)}


def summarize(records: Sequence[dict], metrics: Sequence[str]) -> dict[str, float]:
    """{metric: mean, metric_stderr: ...} over the per-item records."""
    summary = {}
    for metric in metrics:
        values = [r[metric] for r in records]
        summary[metric], summary[f"{metric}_stderr"] = float(np.mean(values)), mean_stderr(values)
    return summary


# --------------------------------------------------------------------------------------------------
# Multiple choice and LAMBADA


def item_contexts(item: dict) -> list[str]:
    """The context of each choice: the query, or Winogrande's one context per option."""
    query = item["query"]
    return list(query) if isinstance(query, list) else [query] * len(item["choices"])


def choice_requests(items: Sequence[dict], prefixes: Sequence[str]) -> tuple[list[tuple[str, str]], list[int]]:
    """The (prefix + context, " " + choice) requests of every item, and the item each belongs to."""
    requests, owners = [], []
    for index, (item, prefix) in enumerate(zip(items, prefixes)):
        for context, choice in zip(item_contexts(item), item["choices"]):
            requests.append((prefix + context, " " + choice))
            owners.append(index)
    return requests, owners


def score_multiple_choice(model: Fox, tokenizer: Tokenizer, items: Sequence[dict], *, prefixes: Sequence[str] | None = None,
                          batch_size: int = 16, bos: bool | int = True, progress: str | None = None) -> dict:
    """acc and acc_norm (with stderr) of items {"query", "choices", "gold"}: each choice scored as
    query + " " + choice. prefixes: text put before each item's query (its few-shot examples).
    Returns the summary plus "records", one dict per item (log-likelihoods, greedy flags, predictions, acc,
    acc_norm)."""
    prefixes = prefixes if prefixes is not None else [""] * len(items)
    requests, owners = choice_requests(items, prefixes)
    results = loglikelihoods(model, tokenizer, requests, batch_size, groups=owners, bos=bos, progress=progress)
    lls, greedy = defaultdict(list), defaultdict(list)
    for owner, (ll, is_greedy) in zip(owners, results):
        lls[owner].append(ll)
        greedy[owner].append(is_greedy)
    records = [{"gold": item["gold"], "loglikelihoods": lls[i], "greedy": greedy[i],
                **choice_metrics(lls[i], item["choices"], item["gold"])} for i, item in enumerate(items)]
    return {**summarize(records, ["acc", "acc_norm"]), "records": records}


def score_last_word(model: Fox, tokenizer: Tokenizer, items: Sequence[dict], *, prefixes: Sequence[str] | None = None,
                    batch_size: int = 16, bos: bool | int = True, progress: str | None = None) -> dict:
    """LAMBADA: items {"query": passage without its last word, "choices": [that word]}. acc: the whole word
    is the greedy continuation; perplexity: exp(-mean log-likelihood of " " + word)."""
    prefixes = prefixes if prefixes is not None else [""] * len(items)
    requests, _ = choice_requests(items, prefixes)
    results = loglikelihoods(model, tokenizer, requests, batch_size, bos=bos, progress=progress)
    records = [{"word": item["choices"][0], "loglikelihood": ll, "acc": float(greedy)}
               for item, (ll, greedy) in zip(items, results)]
    lls = [r["loglikelihood"] for r in records]
    return {**summarize(records, ["acc"]), "perplexity": perplexity(lls), "perplexity_stderr": perplexity_stderr(lls),
            "records": records}


# --------------------------------------------------------------------------------------------------
# GSM8k: greedy generation, answer after "####"

STRICT_ANSWER = re.compile(r"#### (\-?[0-9\.\,]+)")  # the harness's "strict-match" filter
ANY_NUMBER = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")  # its "flexible-extract": the last number
IGNORED = [re.compile(p) for p in (",", r"\$", r"(?s).*#### ", r"\.$")]  # exact_match's regexes_to_ignore


def normalize_answer(text: str) -> str:
    for pattern in IGNORED:
        text = pattern.sub("", text)
    return text.lower()  # ignore_case; the harness strips nothing else


def extract_answers(generation: str) -> tuple[str, str]:
    """(strict, flexible) answers of a generation: the number after "####", and the last number."""
    strict = STRICT_ANSWER.search(generation)
    numbers = ANY_NUMBER.findall(generation)
    flexible = next((group for group in numbers[-1] if group), "") if numbers else ""
    return (strict.group(1) if strict else "[invalid]"), (flexible or "[invalid]")


def generate_until(model: Fox, tokenizer: Tokenizer, prompt: list[int], stops: Sequence[str], max_new_tokens: int,
                   chunk: int = 64, eos: int | Sequence[int] | None = None) -> str:
    """Greedy text after prompt, cut at the first stop string. sample.generate stops only at a token, so
    it runs `chunk` tokens at a time and the text is checked between chunks (<= 4 prefills for 256 tokens)."""
    room = model.config.context_len - max_new_tokens
    if room < 1:
        raise EvalError(f"--max-new-tokens {max_new_tokens} leaves no room for a prompt in the context of "
                        f"{model.config.context_len}")
    ids, new = prompt[-room:], []  # the harness also cuts the prompt from the left
    while len(new) < max_new_tokens:
        wanted = min(chunk, max_new_tokens - len(new))
        out = generate(model, ids + new, wanted, temperature=0, eos_id=tokenizer.eos_id if eos is None else eos,
                       vocab_limit=tokenizer.vocab_size).tokens[0]
        new += out
        if len(out) < wanted or any(stop in tokenizer.decode(new) for stop in stops):  # <eos>, or a stop string
            break
    text = tokenizer.decode([t for t in new if t not in tokenizer.special_ids])  # as skip_special_tokens
    for stop in stops:
        text = text.split(stop)[0]
    return text


def score_generation(model: Fox, tokenizer: Tokenizer, items: Sequence[dict], *, prefixes: Sequence[str] | None = None,
                     bos: bool | int = True, eos: int | Sequence[int] | None = None,
                     max_new_tokens: int = GSM8K_MAX_NEW_TOKENS, progress: str | None = None) -> dict:
    """GSM8k: items {"query": "Question: ...\\nAnswer:", "choices": [worked answer ending "#### N"]}.
    exact_match compares the number after "####" (strict) and the last number (flexible) with N.
    eos: the id(s) generation stops at (default: the tokenizer's <eos>)."""
    prefixes = prefixes if prefixes is not None else [""] * len(items)
    records = []
    for item, prefix in tqdm(list(zip(items, prefixes)), desc=progress, unit="item", disable=progress is None, leave=False):
        prompt = start_ids(tokenizer, bos) + tokenizer.encode(prefix + item["query"])
        generation = generate_until(model, tokenizer, prompt, GSM8K_STOPS, max_new_tokens, eos=eos)
        strict, flexible = extract_answers(generation)
        gold = normalize_answer(item["choices"][0])
        records.append({"generation": generation, "answer": strict, "answer_flexible": flexible, "gold": gold,
                        "exact_match": float(normalize_answer(strict) == gold),
                        "exact_match_flexible": float(normalize_answer(flexible) == gold)})
    return {**summarize(records, ["exact_match", "exact_match_flexible"]), "records": records}


# --------------------------------------------------------------------------------------------------
# Data: records (JSONL lines, Parquet rows, Hub rows) -> items {"query", "choices", "gold", "doc"}


class MissingField(KeyError):
    """A field a record needs but lacks; read_items turns it into an EvalError naming file, line, field."""


def need(record: dict, name: str):
    if name not in record:
        raise MissingField(name)
    return record[name]


def as_index(value, size: int, name: str) -> int:
    """A gold label as a 0-based index: an int, a digit string, or a letter A-Z."""
    text = str(value).strip()
    index = ord(text) - ord("A") if len(text) == 1 and text.isalpha() else int(text)
    if not 0 <= index < size:
        raise ValueError(f"field {name!r} is {value!r}, not one of the {size} choices")
    return index


def as_choices(value, name: str, count: int = 2) -> list[str]:
    """A list of at least `count` non-empty strings (a string is not a list of its letters)."""
    if not isinstance(value, list) or not all(isinstance(choice, str) for choice in value):
        raise ValueError(f"field {name!r} must be a list of strings, got {type(value).__name__}")
    if len(value) < count:
        raise ValueError(f"field {name!r} has {len(value)} choice(s); a question needs at least {count}")
    if not all(choice.strip() for choice in value):
        raise ValueError(f"field {name!r} has an empty choice")
    return value


def as_text(value, name: str) -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"field {name!r} must be a non-empty string")
    return value


def simple_item(record: dict) -> dict | None:
    """The {"query", "choices", "gold"} form, or None when the record is in another layout."""
    if not {"query", "choices", "gold"} <= record.keys():
        return None
    choices = as_choices(record["choices"], "choices")
    return {"query": as_text(record["query"], "query"), "choices": choices,
            "gold": as_index(record["gold"], len(choices), "gold")}


def hellaswag_preprocess(text: str) -> str:
    """The harness's cleanup: WikiHow's " [title]" becomes ". ", other [tags] go, double spaces halve."""
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def hellaswag_item(record: dict) -> dict:
    """ctx_a + " " + ctx_b.capitalize() as the harness builds it; exports with only "ctx" (= ctx_a + " " +
    ctx_b) use it as it is, so ctx_b's first letter stays lower case there."""
    if "ctx_a" in record:
        context = need(record, "ctx_a") + " " + need(record, "ctx_b").capitalize()
    else:
        context = need(record, "ctx")
    endings = [hellaswag_preprocess(e) for e in as_choices(need(record, "endings"), "endings")]
    query = hellaswag_preprocess(need(record, "activity_label") + ": " + context)
    item = {"query": query, "choices": endings, "gold": as_index(need(record, "label"), len(endings), "label")}
    return {**item, "doc": {**record, **item}}  # the harness's process_docs adds these fields to the record


def arc_item(record: dict) -> dict:
    """ai2_arc: "Question: {question}\\nAnswer:", the choices' texts, gold = index of answerKey. Simple-form
    exports that keep only "Question: ..." get the "\\nAnswer:" cue the harness's prompt ends with."""
    item = simple_item(record)
    if item is not None:
        if not item["query"].rstrip().endswith("Answer:"):
            item["query"] = item["query"].rstrip() + "\nAnswer:"
        return item
    choices = need(record, "choices")
    texts, labels = as_choices(need(choices, "text"), "choices.text"), [str(label) for label in need(choices, "label")]
    answer = str(need(record, "answerKey"))
    if answer not in labels:
        raise ValueError(f"field 'answerKey' is {answer!r}, not one of the labels {labels}")
    return {"query": f"Question: {need(record, 'question')}\nAnswer:", "choices": texts, "gold": labels.index(answer)}


def piqa_item(record: dict) -> dict:
    choices = as_choices([need(record, "sol1"), need(record, "sol2")], "sol1/sol2")
    return {"query": f"Question: {need(record, 'goal')}\nAnswer:", "choices": choices,
            "gold": as_index(need(record, "label"), 2, "label")}


def winogrande_item(record: dict) -> dict:
    """Partial scoring: the option fills the blank "_" in the context; what follows it is the continuation."""
    sentence = need(record, "sentence")
    if "_" not in sentence:
        raise ValueError("field 'sentence' has no blank '_'")
    blank = sentence.index("_")
    rest = sentence[blank + 1:].strip()
    options = as_choices([need(record, "option1"), need(record, "option2")], "option1/option2")
    answer = str(need(record, "answer")).strip()
    if answer not in ("1", "2"):
        raise ValueError(f"field 'answer' is {answer!r}, expected '1' or '2'")
    return {"query": [sentence[:blank] + option for option in options], "choices": [rest, rest],
            "gold": int(answer) - 1}


def mmlu_item(record: dict) -> dict:
    """The harness's default MMLU prompt: the question, the options as "A. ...", then "Answer:"."""
    choices = as_choices(need(record, "choices"), "choices")
    if len(choices) != 4:
        raise ValueError(f"field 'choices' has {len(choices)} options, MMLU has 4")
    letters = "ABCD"
    options = "".join(f"\n{letter}. {choice}" for letter, choice in zip(letters, choices))
    return {"query": f"{need(record, 'question').strip()}{options}\nAnswer:", "choices": list(letters),
            "gold": as_index(need(record, "answer"), 4, "answer"), "subject": record.get("subject", "")}


def lambada_item(record: dict) -> dict:
    """The passage without its last space-separated word, and that word."""
    text = as_text(need(record, "text"), "text")
    if " " not in text.strip():
        raise ValueError("field 'text' has no space to split the last word off")
    context, word = text.rsplit(" ", 1)
    if not word.strip():
        raise ValueError("field 'text' ends in whitespace: its last word is empty")
    return {"query": context, "choices": [word], "gold": 0}


def gsm8k_item(record: dict) -> dict:
    answer = as_text(need(record, "answer"), "answer")
    if "####" not in answer:
        raise ValueError("field 'answer' has no '####' before the final number")
    return {"query": f"Question: {need(record, 'question')}\nAnswer:", "choices": [answer], "gold": 0}


def with_simple_form(make_item: Callable[[dict], dict]) -> Callable[[dict], dict]:
    """A record loader that also accepts the simple {"query", "choices", "gold"} form."""
    return lambda record: simple_item(record) or make_item(record)


@dataclass(frozen=True)
class Task:
    name: str  # the harness's task name
    files: tuple[str, ...]  # file name stems tried under --data, in order
    hub: tuple[str, str | None]  # the Hub dataset and config the harness loads (--hf, and Hub downloads under --data)
    split: str  # the harness's evaluation split
    fewshot_split: str | None  # where few-shot examples come from (None: the evaluation split, as the harness)
    make_item: Callable[[dict], dict]
    kind: str  # "choice" (multiple choice), "word" (LAMBADA) or "generate" (GSM8k)
    metrics: tuple[str, ...]  # reported, first one first
    shots: int = 0  # default few-shot count
    first_n: bool = False  # few-shot examples are the first n of the split (MMLU), not a random draw
    # the harness hands its sampler the scored doc to leave out (where its yaml's fewshot_split equals its
    # test_split: both unset for hellaswag, piqa and winogrande, so it draws n + 1 even from the train split)
    drops_scored: bool = False
    version: float = 1.0  # the harness's task version, for its results file
    description: Callable[[dict], str] = lambda item: ""  # text before the examples


def mmlu_description(item: dict) -> str:
    subject = item.get("subject", "").replace("_", " ")
    return f"The following are multiple choice questions (with answers) about {subject}.\n\n" if subject else ""


TASKS: dict[str, Task] = {task.name: task for task in [
    Task("hellaswag", ("hellaswag",), ("Rowan/hellaswag", None), "validation", "train", with_simple_form(hellaswag_item),
         "choice", ("acc", "acc_norm"), drops_scored=True),
    Task("arc_easy", ("arc_easy", "ARC-Easy"), ("allenai/ai2_arc", "ARC-Easy"), "test", "train", arc_item, "choice",
         ("acc", "acc_norm")),
    Task("arc_challenge", ("arc_challenge", "ARC-Challenge"), ("allenai/ai2_arc", "ARC-Challenge"), "test", "train",
         arc_item, "choice", ("acc", "acc_norm")),
    Task("piqa", ("piqa",), ("baber/piqa", None), "validation", "train", with_simple_form(piqa_item), "choice",
         ("acc", "acc_norm"), drops_scored=True),
    Task("winogrande", ("winogrande", "winogrande_xl"), ("allenai/winogrande", "winogrande_xl"), "validation", "train",
         with_simple_form(winogrande_item), "choice", ("acc",), drops_scored=True),
    Task("mmlu", ("mmlu",), ("cais/mmlu", "all"), "test", "dev", with_simple_form(mmlu_item), "choice", ("acc",),
         shots=5, first_n=True, version=2, description=mmlu_description),
    Task("lambada_openai", ("lambada_openai", "lambada"), ("EleutherAI/lambada_openai", "default"), "test", None,
         lambada_item, "word", ("acc", "perplexity")),
    Task("gsm8k", ("gsm8k",), ("openai/gsm8k", "main"), "test", "train", gsm8k_item, "generate",
         ("exact_match", "exact_match_flexible"), shots=5, version=3.0),
]}
ALIASES = {"lambada": "lambada_openai"}  # eval.py's earlier name


def task_named(name: str) -> Task | None:
    return TASKS.get(ALIASES.get(name, name))


def read_items(records: Iterator[tuple[str, object]], task: Task, name: str) -> list[dict]:
    """Every record as an item of `task` (with the record as its "doc"); a bad one is an EvalError naming
    where it is (file:line, file: row N). name: the source, for the empty-file error."""
    items = []
    for where, record in records:
        if not isinstance(record, dict):
            raise EvalError(f"{where}: expected a JSON object, got {type(record).__name__}")
        try:
            items.append({"doc": record, **task.make_item(record)})
        except MissingField as e:
            raise EvalError(f"{where}: no field {e.args[0]!r}; not a {task.name} layout eval.py knows "
                            f"(fields here: {', '.join(sorted(record))})") from None
        except (TypeError, ValueError, AttributeError) as e:
            raise EvalError(f"{where}: {task.name} record has a field of the wrong kind ({e})") from None
    if not items:
        raise EvalError(f"{name}: no items (the file is empty)")
    return items


def read_files(paths: Sequence[Path], task: Task) -> list[dict]:
    """The items of a split's file(s), JSONL or Parquet by extension."""
    return read_items(file_records(paths), task, str(paths[0]))


# --------------------------------------------------------------------------------------------------
# Few-shot prompts and subsets


def example_text(task: Task, example: dict) -> str:
    """A worked example as the harness writes it: its context, " ", its answer. LAMBADA's answer is
    " " + the word (the continuation it scores), so its examples have two spaces before the word, as there."""
    answer = example["choices"][example["gold"]]
    return item_contexts(example)[example["gold"]] + " " + (" " + answer if task.kind == "word" else answer)


def draw(rng: random.Random, pool: Sequence[dict], shots: int, scored: dict | None) -> list[int]:
    """Pool indices of `shots` examples, drawn as the harness's ContextSampler.sample draws them: without
    `scored`, rng.sample of `shots`; with it (the doc to leave out), `shots` + 1, minus any equal to it, the
    first `shots` of those, and if that leaves too few (it was drawn twice), a new draw from the rest.
    Fewer than `shots` when the pool has too few."""
    count = min(shots + (scored is not None), len(pool))
    drawn = [i for i in rng.sample(range(len(pool)), count) if scored is None or pool[i]["doc"] != scored][:shots]
    if len(drawn) < shots and scored is not None:
        others = [i for i, example in enumerate(pool) if example["doc"] != scored]
        drawn = rng.sample(others, min(shots, len(others)))
    return drawn


def drawn_examples(task: Task, items: Sequence[dict], indices: Sequence[int], pool: Sequence[dict], pool_is_eval: bool,
                   shots: int, seed: int, match_harness: bool) -> dict[int, list[int]]:
    """{scored index: its examples' pool indices}, from one random.Random(seed) stream drawn for every
    document in order, as the harness draws them: an item gets the examples it gets in a full run whatever
    subset is scored. The scored doc is left out where the harness leaves it out (`Task.drops_scored`) and
    wherever the pool is the scored split itself, except, with match_harness, where the harness's own pool
    is that split (LAMBADA), which it does not guard."""
    harness_pool = match_harness and task.fewshot_split is None
    leave_out = task.drops_scored or (pool_is_eval and not harness_pool)
    rng, wanted, chosen = random.Random(seed), set(indices), {}
    for index in range(max(indices) + 1):
        examples = draw(rng, pool, shots, items[index]["doc"] if leave_out else None)
        if index in wanted:
            chosen[index] = examples
    return chosen


def first_examples(items: Sequence[dict], indices: Sequence[int], pool: Sequence[dict], pool_is_eval: bool,
                   shots: int) -> dict[int, list[int]]:
    """{scored index: its examples' pool indices}: the first `shots` of its subject (MMLU, the harness's
    first_n sampler over each subject's dev split), never the item itself when the pool is the scored split."""
    by_subject = defaultdict(list)
    for i, example in enumerate(pool):
        by_subject[example.get("subject", "")].append(i)
    return {index: [i for i in by_subject[items[index].get("subject", "")][:shots + 1]
                    if not (pool_is_eval and i == index)][:shots] for index in indices}


def fewshot_prefixes(task: Task, items: Sequence[dict], indices: Sequence[int], pool: Sequence[dict],
                     pool_is_eval: bool, shots: int, seed: int, pool_name: str, match_harness: bool = False) -> list[str]:
    """Per scored item (indices into items, ascending): the task's description + `shots` worked examples
    (`example_text`), each followed by a blank line (the harness's fewshot_delimiter)."""
    if not shots or not indices:
        return [task.description(items[index]) for index in indices]
    chosen = (first_examples(items, indices, pool, pool_is_eval, shots) if task.first_n else
              drawn_examples(task, items, indices, pool, pool_is_eval, shots, seed, match_harness))
    prefixes = []
    for index in indices:
        if len(chosen[index]) < shots:
            raise EvalError(f"{pool_name}: only {len(chosen[index])} few-shot examples for {task.name} (--shots {shots})")
        examples = "".join(example_text(task, pool[i]) + "\n\n" for i in chosen[index])
        prefixes.append(task.description(items[index]) + examples)
    return prefixes


def subset(count: int, limit: int | None, seed: int) -> list[int]:
    """Indices of a fixed seeded random subset of `limit` items (all of them without a limit), in order."""
    if limit is None or limit >= count:
        return list(range(count))
    return sorted(random.Random(seed).sample(range(count), limit))


def first_items(items: Sequence[dict], limit: int | None, per_subject: bool) -> list[int]:
    """The harness's --limit: the first `limit` items, of each subject for MMLU (one harness task per subject)."""
    taken: dict[str, int] = defaultdict(int)
    chosen = []
    for index, item in enumerate(items):
        key = item.get("subject", "") if per_subject else ""
        if limit is None or taken[key] < limit:
            taken[key] += 1
            chosen.append(index)
    return chosen


# --------------------------------------------------------------------------------------------------
# Per-item records in the harness's samples shape (--output-path)


def harness_sample(doc_id: int, item: dict, target: object, arguments: list[tuple], resps: list, filtered: list,
                   filter_name: str, metrics: dict) -> dict:
    """One line of the harness's samples_<task>_<date>.jsonl as its evaluation tracker writes it: arguments as
    {"gen_args_i": {"arg_j": ...}}, responses as strings, and the hashes it compares runs by."""
    def text(value: object) -> object:
        return [text(v) for v in value] if isinstance(value, (list, tuple)) else str(value)

    def sha256(value: str) -> str:
        return hashlib.sha256(value.encode("utf-8")).hexdigest()

    doc = json.dumps(item["doc"], indent=2, ensure_ascii=False, default=str)
    return {"doc_id": doc_id, "doc": item["doc"], "target": str(target),
            "arguments": {f"gen_args_{i}": {f"arg_{j}": arg for j, arg in enumerate(args)}
                          for i, args in enumerate(arguments)},
            "resps": text(resps), "filtered_resps": text(filtered), "filter": filter_name, "metrics": list(metrics),
            "doc_hash": sha256(doc), "prompt_hash": sha256(arguments[0][0]), "target_hash": sha256(str(target)),
            **metrics}


def harness_samples(task: Task, items: Sequence[dict], indices: Sequence[int], prefixes: Sequence[str],
                    records: Sequence[dict]) -> list[dict]:
    """The harness's per-sample records of a task: its requests (arguments), each request's (log-likelihood,
    greedy) or generation (resps), what its filter kept (filtered_resps), the target and the metrics.
    GSM8k has one per item for each of its two filters, strict-match first, as the harness writes them."""
    scored = [(i, items[i], prefix, record) for i, prefix, record in zip(indices, prefixes, records)]
    if task.kind == "generate":
        return [harness_sample(i, item, item["choices"][0], [(prefix + item["query"], GSM8K_GENERATION)],
                               [[record["generation"]]], [record[answer]], name, {"exact_match": record[metric]})
                for name, answer, metric in (("strict-match", "answer", "exact_match"),
                                             ("flexible-extract", "answer_flexible", "exact_match_flexible"))
                for i, item, prefix, record in scored]
    samples = []
    for i, item, prefix, record in scored:
        arguments = [(prefix + context, " " + choice) for context, choice in zip(item_contexts(item), item["choices"])]
        if task.kind == "word":
            pairs = [(record["loglikelihood"], record["acc"] == 1.0)]
            target, metrics = " " + item["choices"][0], {"perplexity": record["loglikelihood"], "acc": int(record["acc"])}
        else:  # Winogrande's target is the continuation its options share, the others' the gold index
            pairs = list(zip(record["loglikelihoods"], record["greedy"]))
            target = item["choices"][0] if isinstance(item["query"], list) else item["gold"]
            metrics = {metric: record[metric] for metric in task.metrics}
        samples.append(harness_sample(i, item, target, arguments, [[pair] for pair in pairs], pairs, "none", metrics))
    return samples


# --------------------------------------------------------------------------------------------------
# Running tasks


@dataclass
class TaskResult:
    task: str
    shots: int
    items: int  # scored
    total: int  # in the split
    seconds: float
    metrics: dict[str, float]  # metric and metric_stderr
    records: list[dict]  # per item, for --out
    samples: list[dict]  # per item (GSM8k: per item and filter), in the harness's samples shape


def load_split(task: Task, split: str, data: Path | None, plain: bool) -> tuple[list[dict], str] | None:
    """(items, where they come from) of a split: files under `data`, or the Hub (--hf) when data is None;
    None when `data` has no file for it."""
    if data is None:
        return read_items(hub_records(task.hub, split), task, f"--hf {task.hub[0]}"), f"{task.hub[0]} {split}"
    paths = find_split_files(data, task.name, task.files, task.hub, split, plain)
    return (read_files(paths, task), str(paths[0])) if paths else None


def missing_file(data: Path, task: Task) -> EvalError:
    names = [name for name in split_file_names(task.files, task.split, True) if name.endswith(".jsonl")]
    return EvalError(f"{data}: no {task.name} file (looked for {', '.join(names)}, each also .parquet, and a Hub "
                     f"download in {task.files[0]}/)")


def score_items(model: Fox, tokenizer: Tokenizer, task: Task, items: Sequence[dict], prefixes: Sequence[str], *,
                batch_size: int, bos: bool | int, eos: Sequence[int], max_new_tokens: int) -> dict:
    if task.kind == "choice":
        return score_multiple_choice(model, tokenizer, items, prefixes=prefixes, batch_size=batch_size, bos=bos,
                                     progress=task.name)
    if task.kind == "word":
        return score_last_word(model, tokenizer, items, prefixes=prefixes, batch_size=batch_size, bos=bos,
                               progress=task.name)
    return score_generation(model, tokenizer, items, prefixes=prefixes, bos=bos, eos=eos, max_new_tokens=max_new_tokens,
                            progress=task.name)


def run_task(model: Fox, tokenizer: Tokenizer, task: Task, data: Path | None, *, shots: int, limit: int | None,
             seed: int, batch_size: int, bos: bool | int, eos: Sequence[int], fewshot_from: Path | None,
             max_new_tokens: int, match_harness: bool = False) -> TaskResult:
    """Load the task's split (from `data`, or the Hub when None), pick the items, build the few-shot
    prompts, score and summarize. match_harness: --limit takes the first items, and LAMBADA's examples
    follow the harness (`drawn_examples`)."""
    loaded = load_split(task, task.split, data, plain=True)
    if loaded is None:
        raise missing_file(data, task)
    items, name = loaded
    indices = first_items(items, limit, task.first_n) if match_harness else subset(len(items), limit, seed)
    pool, pool_name = items, name
    if shots and fewshot_from:
        pool, pool_name = read_files([fewshot_from], task), str(fewshot_from)
    elif shots and task.fewshot_split:
        pool, pool_name = load_split(task, task.fewshot_split, data, plain=False) or (pool, pool_name)
    prefixes = fewshot_prefixes(task, items, indices, pool, pool is items, shots, seed, pool_name, match_harness)
    start = time.perf_counter()
    scored = score_items(model, tokenizer, task, [items[i] for i in indices], prefixes, batch_size=batch_size, bos=bos,
                         eos=eos, max_new_tokens=max_new_tokens)
    seconds = time.perf_counter() - start
    records = scored.pop("records")
    samples = harness_samples(task, items, indices, prefixes, records)
    records = [{"task": task.name, "index": i, "query": item_contexts(items[i])[0], **record}
               for i, record in zip(indices, records)]
    return TaskResult(task.name, shots, len(indices), len(items), seconds, scored, records, samples)


def format_table(results: Sequence[TaskResult]) -> str:
    lines = [f"{'task':<14} {'shots':>5} {'metric':<21} {'value':>9} {'stderr':>8} {'items':>6} {'seconds':>8} {'items/s':>8}"]
    for result in results:
        for metric in TASKS[result.task].metrics:
            stderr = result.metrics[f"{metric}_stderr"]
            lines.append(f"{result.task:<14} {result.shots:>5} {metric:<21} {result.metrics[metric]:>9.4f} "
                         f"{'n/a' if math.isnan(stderr) else f'{stderr:.4f}':>8} {result.items:>6} "
                         f"{result.seconds:>8.1f} {result.items / max(result.seconds, 1e-9):>8.2f}")
    return "\n".join(lines)


def summary_json(ckpt: str, results: Sequence[TaskResult]) -> str:
    """One line: every task's metrics, stderr (null when undefined), shots, items, seconds."""
    def number(value: float) -> float | None:
        return None if math.isnan(value) else round(value, 6)

    tasks = {r.task: {**{k: number(v) for k, v in r.metrics.items()}, "shots": r.shots, "items": r.items,
                      "seconds": round(r.seconds, 2), "items_per_s": round(r.items / max(r.seconds, 1e-9), 3)}
             for r in results}
    return json.dumps({"ckpt": ckpt, "tasks": tasks})


def write_records(path: Path, results: Sequence[TaskResult]) -> None:
    """Per-item results as JSONL, written whole or not at all (`write_atomic`)."""
    try:
        write_atomic(path, "".join(json.dumps(record, ensure_ascii=False) + "\n"
                                   for result in results for record in result.records))
    except OSError as e:
        raise EvalError(f"{path}: cannot write ({e.strerror})") from None


# --------------------------------------------------------------------------------------------------
# The harness's results file (--output-path)


def harness_metric(metric: str) -> tuple[str, str]:
    """Our metric name -> the harness's (metric, filter): GSM8k's two exact matches are one metric, two filters."""
    return {"exact_match": ("exact_match", "strict-match"),
            "exact_match_flexible": ("exact_match", "flexible-extract")}.get(metric, (metric, "none"))


def harness_task_entry(result: TaskResult) -> dict:
    """results[task] as the harness writes it: "acc,none", "acc_stderr,none" ("N/A" where undefined), ..."""
    entry = {"name": result.task, "alias": result.task, "sample_len": result.items}
    for metric in TASKS[result.task].metrics:
        name, filter_name = harness_metric(metric)
        stderr = result.metrics[f"{metric}_stderr"]
        entry[f"{name},{filter_name}"] = result.metrics[metric]
        entry[f"{name}_stderr,{filter_name}"] = "N/A" if math.isnan(stderr) else stderr
    return entry


def harness_results(results: Sequence[TaskResult], config: dict) -> dict:
    """The harness's results_<date>.json: results, configs, versions, n-shot, higher_is_better, n-samples,
    config (how it was run) and task_hashes."""
    kinds = {"choice": "multiple_choice", "word": "loglikelihood", "generate": "generate_until"}
    tasks = [(result, TASKS[result.task]) for result in results]
    return {
        "results": {r.task: harness_task_entry(r) for r in results},
        "group_subtasks": {r.task: [] for r in results},
        "configs": {r.task: {"task": r.task, "dataset_path": t.hub[0], "dataset_name": t.hub[1], "num_fewshot": r.shots,
                             "output_type": kinds[t.kind], "target_delimiter": " ", "fewshot_delimiter": "\n\n"}
                    for r, t in tasks},
        "versions": {r.task: t.version for r, t in tasks},
        "n-shot": {r.task: r.shots for r in results},
        "higher_is_better": {r.task: {harness_metric(m)[0]: m != "perplexity" for m in t.metrics} for r, t in tasks},
        "n-samples": {r.task: {"original": r.total, "effective": r.items} for r in results},
        "config": config,
        "task_hashes": {r.task: hashlib.sha256("".join(s["doc_hash"] + s["prompt_hash"] + s["target_hash"]
                                                        for s in r.samples).encode()).hexdigest() for r in results},
        "date": time.time(),
    }


def write_harness_output(directory: Path, results: Sequence[TaskResult], config: dict) -> list[Path]:
    """results_<date>.json and samples_<task>_<date>.jsonl in `directory`, named as the harness names them
    (its tools find them by these names), each written whole or not at all."""
    date = datetime.now().isoformat().replace(":", "-")
    paths = [directory / f"samples_{result.task}_{date}.jsonl" for result in results]
    try:
        for path, result in zip(paths, results):
            write_atomic(path, "".join(json.dumps(s, ensure_ascii=False, default=str) + "\n" for s in result.samples))
        paths.append(directory / f"results_{date}.json")
        write_atomic(paths[-1], json.dumps(harness_results(results, config), indent=2, ensure_ascii=False, default=str))
    except OSError as e:
        raise EvalError(f"{directory}: cannot write the harness's results there ({e.strerror})") from None
    return paths


if __name__ == "__main__":
    from cli.eval import main  # open a checkpoint, score the tasks, print the table

    sys.exit(main())
