"""
Score a Fox checkpoint on the benchmarks the Fox-1 paper reports (arXiv 2411.05281, Table 3 and the model
card), the way EleutherAI's lm-evaluation-harness scores them, so that a number printed here can be set
beside the paper's. Fox-1's card follows the Open LLM Leaderboard v1 setup: ARC-Challenge 25-shot,
HellaSwag 10-shot, MMLU 5-shot, Winogrande 5-shot, GSM8k 5-shot (36.39% for the base model).

    python eval.py --ckpt out/export --tasks hellaswag,arc_easy,arc_challenge,lambada --data DIR
    python eval.py --tasks arc_challenge,hellaswag,mmlu,winogrande,gsm8k --shots arc_challenge=25,hellaswag=10,winogrande=5 \
        --data DIR --ckpt path/to/Fox-1-1.6B --tokenizer tok.txt --limit 500 --out items.jsonl

Prints a table (task, metric, value, stderr, items, seconds) and, last, one JSON line.

How each task is scored (as lm-evaluation-harness defines it):
  multiple choice  each choice is a continuation of the prompt; its log-likelihood is the sum of its
      tokens' log-probabilities. acc: the most likely choice is the gold one; acc_norm: the same after
      dividing by the choice's length in characters. hellaswag (its ctx/endings preprocessing), arc_easy,
      arc_challenge ("Question: ...\\nAnswer:"), piqa, mmlu (letters A-D after the listed options, 5 shots
      from the dev split, acc only), winogrande (partial scoring: each option fills the blank in its own
      context, and the rest of the sentence, the same for both, is what is scored; acc only).
  lambada  (OpenAI version) the passage without its last word is the context, " " + that word the
      continuation. acc: every token of the word is the greedy choice; perplexity: exp(-mean log-likelihood).
  gsm8k    greedy generation (sample.generate) after 5 worked examples, stopped at "\\n\\n" or "Question:";
      the answer is the number after "####", compared by exact match ("," "$" and a final "." ignored).
Every metric has a standard error: the sample standard deviation over sqrt(items) for means, a seeded
bootstrap for perplexity (as the harness does, with 1,000 resamples instead of its 100,000).

The context/continuation split is the harness's (`encode_pair`): trailing spaces of the context move into
the continuation; the continuation's tokens are those of encode(context + continuation) past the
len(encode(context)) first ones; a pair longer than the model's context is cut from the left. Unlike the
harness's default for Hugging Face models, the context starts with <bos>, as every training document
here does (`--no-bos` for the harness's choice).

Speed: each item is one row, its context followed by all of its choices, with per-row positions and a
mask that lets each choice see the context and itself only (`choice_mask`). The context is computed once
per item instead of once per choice, only the positions that predict a choice token go through the LM
head, and rows of similar length are batched up to 1,024 padded tokens (how much faster: NOTES.md).

Data (--data DIR): one JSONL file per task and split, looked up as DIR/<name>_<split>.jsonl,
DIR/<name>/<split>.jsonl or DIR/<name>.jsonl (`TASKS` lists the names and splits, e.g. hellaswag_val.jsonl,
arc_easy_test.jsonl, lambada_openai_test.jsonl, mmlu_dev.jsonl). Each file is a Hugging Face datasets export
of the task (fields as on the Hub: hellaswag ctx_a/ctx_b or ctx, endings, label; ai2_arc question,
choices{text,label}, answerKey; piqa goal/sol1/sol2/label; winogrande sentence/option1/option2/answer;
cais/mmlu question/subject/choices/answer; lambada text; gsm8k question/answer) or, for the multiple-choice
tasks, the simple {"query", "choices", "gold"} form. Few-shot examples come from --fewshot-from FILE, else
the task's train/dev file when DIR has it, else the scored file itself, never the item being scored.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from model import LOSS_CHUNK_ELEMENTS, CheckpointError, Fox
from sample import SampleError, generate, open_checkpoint, parse_device
from fox1.files import InputError, Number, check_numbers, read_text, write_atomic
from tokenizer import Tokenizer

DEFAULT_CKPT = "out/export"
BOOTSTRAP_RESAMPLES = 1000  # perplexity's stderr: the harness draws 100,000; 1,000 pin it to ~2% of itself
BATCH_TOKENS = 1024  # padded tokens per forward at most (`batches`)
GSM8K_MAX_NEW_TOKENS = 256  # the harness's max_gen_toks
GSM8K_STOPS = ("\n\n", "Question:")  # the few-shot separator and the next question's start


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
    """Rows for the requests: those with the same group and context share one row, unless one of them
    needs the context truncated, in which case each gets its own row, truncated as the harness would."""
    shared: dict[tuple[object, str], list[int]] = defaultdict(list)
    for index, (group, (context, _)) in enumerate(zip(groups, requests)):
        shared[(group, context)].append(index)
    rows = []
    for (group, _), indices in shared.items():
        pairs = [encode_pair(tokenizer, *requests[i], bos=bos) for i in indices]
        # a continuation that BPE merges into the context's last token has no ids of its own: like the
        # harness, it gets log-likelihood 0 (and counts as greedy) without a row
        indices, pairs = [i for i, p in zip(indices, pairs) if p[1]], [p for p in pairs if p[1]]
        if not pairs:
            continue
        context = pairs[0][0]
        if all(truncate_left(context, ids, max_len) == context for _, ids in pairs):
            rows.append(pack_row(context, [(i, ids) for i, (_, ids) in zip(indices, pairs)], group))
        else:
            rows += [pack_row(truncate_left(context, ids, max_len), [(i, ids)], group) for i, (_, ids) in zip(indices, pairs)]
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
    Returns the summary plus "records", one dict per item (log-likelihoods, predictions, acc, acc_norm)."""
    prefixes = prefixes if prefixes is not None else [""] * len(items)
    requests, owners = choice_requests(items, prefixes)
    results = loglikelihoods(model, tokenizer, requests, batch_size, groups=owners, bos=bos, progress=progress)
    lls = defaultdict(list)
    for owner, (ll, _) in zip(owners, results):
        lls[owner].append(ll)
    records = [{"gold": item["gold"], "loglikelihoods": lls[i], **choice_metrics(lls[i], item["choices"], item["gold"])}
               for i, item in enumerate(items)]
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
    return text.strip().lower()


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
    text = tokenizer.decode(new)
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
        records.append({"generation": generation, "answer": strict, "gold": gold,
                        "exact_match": float(normalize_answer(strict) == gold),
                        "exact_match_flexible": float(normalize_answer(flexible) == gold)})
    return {**summarize(records, ["exact_match", "exact_match_flexible"]), "records": records}


# --------------------------------------------------------------------------------------------------
# Data: JSONL records -> items {"query", "choices", "gold"}


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
    return {"query": query, "choices": endings, "gold": as_index(need(record, "label"), len(endings), "label")}


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
    name: str
    files: tuple[str, ...]  # file name stems tried under --data, in order
    split: str  # the harness's evaluation split
    fewshot_split: str | None  # where few-shot examples come from when the file exists
    make_item: Callable[[dict], dict]
    kind: str  # "choice" (multiple choice), "word" (LAMBADA) or "generate" (GSM8k)
    metrics: tuple[str, ...]  # reported, first one first
    shots: int = 0  # default few-shot count
    first_n: bool = False  # few-shot examples are the first n of the split (MMLU), not a random draw
    description: Callable[[dict], str] = lambda item: ""  # text before the examples


def mmlu_description(item: dict) -> str:
    subject = item.get("subject", "").replace("_", " ")
    return f"The following are multiple choice questions (with answers) about {subject}.\n\n" if subject else ""


TASKS: dict[str, Task] = {task.name: task for task in [
    Task("hellaswag", ("hellaswag",), "validation", "train", with_simple_form(hellaswag_item), "choice", ("acc", "acc_norm")),
    Task("arc_easy", ("arc_easy", "ARC-Easy"), "test", "train", arc_item, "choice", ("acc", "acc_norm")),
    Task("arc_challenge", ("arc_challenge", "ARC-Challenge"), "test", "train", arc_item, "choice", ("acc", "acc_norm")),
    Task("piqa", ("piqa",), "validation", "train", with_simple_form(piqa_item), "choice", ("acc", "acc_norm")),
    Task("winogrande", ("winogrande", "winogrande_xl"), "validation", "train", with_simple_form(winogrande_item),
         "choice", ("acc",)),
    Task("mmlu", ("mmlu",), "test", "dev", with_simple_form(mmlu_item), "choice", ("acc",), shots=5, first_n=True,
         description=mmlu_description),
    Task("lambada", ("lambada_openai", "lambada"), "test", None, lambada_item, "word", ("acc", "perplexity")),
    Task("gsm8k", ("gsm8k",), "test", "train", gsm8k_item, "generate", ("exact_match", "exact_match_flexible"), shots=5),
]}
SPLIT_NAMES = {"validation": ("validation", "val"), "test": ("test",), "train": ("train",), "dev": ("dev",)}


def file_names(task: Task, split: str, plain: bool) -> list[str]:
    """<name>_<split>.jsonl, <name>/<split>.jsonl and, with plain (the scored split), <name>.jsonl."""
    return [name for stem in task.files for name in
            [f"{stem}_{s}.jsonl" for s in SPLIT_NAMES[split]] + [f"{stem}/{s}.jsonl" for s in SPLIT_NAMES[split]]
            + ([f"{stem}.jsonl"] if plain else [])]


def find_file(directory: Path, task: Task, split: str, plain: bool) -> Path | None:
    return next((directory / name for name in file_names(task, split, plain) if (directory / name).is_file()), None)


def read_items(path: Path, task: Task) -> list[dict]:
    """Every line of a JSONL file as an item of `task`; any bad line is an EvalError naming file:line."""
    lines = read_text(path).splitlines()
    items = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise EvalError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise EvalError(f"{where}: expected a JSON object, got {type(record).__name__}")
        try:
            items.append(task.make_item(record))
        except MissingField as e:
            raise EvalError(f"{where}: no field {e.args[0]!r}; not a {task.name} layout eval.py knows "
                            f"(fields here: {', '.join(sorted(record))})") from None
        except (TypeError, ValueError, AttributeError) as e:
            raise EvalError(f"{where}: {task.name} record has a field of the wrong kind ({e})") from None
    if not items:
        raise EvalError(f"{path}: no items (the file is empty)")
    return items


# --------------------------------------------------------------------------------------------------
# Few-shot prompts and subsets


def fewshot_prefixes(task: Task, items: Sequence[dict], indices: Sequence[int], pool: Sequence[dict],
                     pool_is_eval: bool, shots: int, seed: int, pool_name: str) -> list[str]:
    """Per scored item: description + `shots` worked examples, each "context + ' ' + gold choice", each
    followed by a blank line (the harness's fewshot_delimiter). Examples are drawn per item from a
    generator seeded with (seed, task, item index), so a --limit subset gets the same prompts; when the
    pool is the scored file itself, the item being scored is never one of its examples (as the harness,
    draw one more and drop it)."""
    by_subject = defaultdict(list)  # MMLU takes the first n examples of the item's own subject
    for i, example in enumerate(pool):
        by_subject[example.get("subject", "")].append(i)
    prefixes = []
    for index in indices:
        item = items[index]
        if task.first_n:
            drawn = by_subject[item.get("subject", "")][:shots + 1]
        else:
            drawn = random.Random(f"{seed}-{task.name}-{index}").sample(range(len(pool)), min(shots + 1, len(pool)))
        chosen = [i for i in drawn if not (pool_is_eval and i == index)][:shots]
        if len(chosen) < shots:
            raise EvalError(f"{pool_name}: only {len(chosen)} few-shot examples for {task.name} (--shots {shots})")
        examples = [item_contexts(pool[i])[pool[i]["gold"]] + " " + pool[i]["choices"][pool[i]["gold"]] for i in chosen]
        prefixes.append(task.description(item) + "".join(example + "\n\n" for example in examples))
    return prefixes


def subset(count: int, limit: int | None, seed: int) -> list[int]:
    """Indices of a fixed seeded random subset of `limit` items (all of them without a limit), in order."""
    if limit is None or limit >= count:
        return list(range(count))
    return sorted(random.Random(seed).sample(range(count), limit))


# --------------------------------------------------------------------------------------------------
# Running tasks


@dataclass
class TaskResult:
    task: str
    shots: int
    items: int
    seconds: float
    metrics: dict[str, float]  # metric and metric_stderr
    records: list[dict]


def run_task(model: Fox, tokenizer: Tokenizer, task: Task, data: Path, *, shots: int, limit: int | None, seed: int,
             batch_size: int, bos: bool | int, eos: Sequence[int], fewshot_from: Path | None,
             max_new_tokens: int) -> TaskResult:
    """Load the task's file under `data`, build the few-shot prompts, score and summarize."""
    path = find_file(data, task, task.split, plain=True)
    if path is None:
        raise EvalError(f"{data}: no {task.name} file (looked for {', '.join(file_names(task, task.split, True))})")
    items = read_items(path, task)
    indices = subset(len(items), limit, seed)
    pool_path = fewshot_from or (find_file(data, task, task.fewshot_split, plain=False) if task.fewshot_split else None)
    pool_path = pool_path if shots else None
    pool = read_items(pool_path, task) if pool_path else items
    prefixes = fewshot_prefixes(task, items, indices, pool, pool_path is None, shots, seed, str(pool_path or path))
    chosen = [items[i] for i in indices]
    start = time.perf_counter()
    if task.kind == "choice":
        scored = score_multiple_choice(model, tokenizer, chosen, prefixes=prefixes, batch_size=batch_size, bos=bos,
                                       progress=task.name)
    elif task.kind == "word":
        scored = score_last_word(model, tokenizer, chosen, prefixes=prefixes, batch_size=batch_size, bos=bos,
                                 progress=task.name)
    else:
        scored = score_generation(model, tokenizer, chosen, prefixes=prefixes, bos=bos, eos=eos,
                                  max_new_tokens=max_new_tokens, progress=task.name)
    seconds = time.perf_counter() - start
    records = [{"task": task.name, "index": i, "query": item_contexts(items[i])[0], **record}
               for i, record in zip(indices, scored.pop("records"))]
    return TaskResult(task.name, shots, len(indices), seconds, scored, records)


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
# Command line


def parse_shots(text: str | None, tasks: Sequence[str]) -> dict[str, int]:
    """--shots N (every task) or task=N,task=N (the rest keep their defaults) -> {task: shots}."""
    shots = {name: TASKS[name].shots for name in tasks}
    if text is None:
        return shots
    for part in text.split(","):
        name, _, count = part.rpartition("=")
        if name and name not in TASKS:
            raise EvalError(f"--shots: unknown task {name!r}")
        if not count.isdigit():
            raise EvalError(f"--shots: {part!r} is not N or task=N")
        shots.update({name: int(count)} if name else dict.fromkeys(shots, int(count)))
    return {name: shots[name] for name in tasks}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Score a Fox checkpoint on benchmarks, as lm-evaluation-harness does.",
                                epilog="Data files: DIR/<name>_<split>.jsonl, e.g. hellaswag_val.jsonl, "
                                       "arc_easy_test.jsonl, lambada_openai_test.jsonl, mmlu_test.jsonl + mmlu_dev.jsonl "
                                       "(see the module docstring).")
    p.add_argument("--ckpt", default=DEFAULT_CKPT, help="our export or a Llama-format directory (default: %(default)s)")
    p.add_argument("--tokenizer", help="tokenizer.txt, tokenizer.json or a folder (default: the checkpoint's own)")
    p.add_argument("--tasks", default="hellaswag,arc_easy,arc_challenge,lambada",
                   help=f"comma-separated, from {', '.join(TASKS)} (default: %(default)s)")
    p.add_argument("--data", required=True, help="directory of the tasks' JSONL files")
    p.add_argument("--shots", help="few-shot examples: N for every task, or task=N,... (default: mmlu and gsm8k 5, others 0)")
    p.add_argument("--fewshot-from", help="JSONL file to draw few-shot examples from (one task only)")
    p.add_argument("--limit", type=int, help="score a fixed random subset of N items per task (seeded)")
    p.add_argument("--seed", type=int, default=1234, help="subset and few-shot draws (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16,
                   help=f"rows (items) per forward at most, and at most {BATCH_TOKENS} padded tokens (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=GSM8K_MAX_NEW_TOKENS, help="gsm8k generation (default: %(default)s)")
    p.add_argument("--no-bos", dest="bos", action="store_false", help="no <bos> before the context (the harness's default)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="(default: %(default)s)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                   help="default: bfloat16 on cuda, float32 on cpu")
    p.add_argument("--out", help="write per-item results here (JSONL)")
    args = p.parse_args(argv)
    check_numbers(p, args, FLAG_RULES)
    return args


FLAG_RULES = {"limit": Number(1), "seed": Number(0), "batch_size": Number(1), "max_new_tokens": Number(1)}


def check_arguments(args: argparse.Namespace) -> list[str]:
    """The task names, after checking every path argument before anything is loaded."""
    tasks = [name.strip() for name in args.tasks.split(",") if name.strip()]
    unknown = [name for name in tasks if name not in TASKS]
    if unknown or not tasks:
        raise EvalError(f"--tasks: unknown task {unknown[0] if unknown else '(none)'!r}; choose from {', '.join(TASKS)}")
    if not Path(args.data).is_dir():
        raise EvalError(f"{args.data}: --data is not a directory")
    if args.fewshot_from and len(tasks) != 1:
        raise EvalError("--fewshot-from FILE serves one task: pass a single --tasks name")
    if args.out and Path(args.out).exists():
        raise EvalError(f"{args.out}: exists already; --out will not overwrite it")
    return tasks


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        tasks = check_arguments(args)
        shots = parse_shots(args.shots, tasks)
        device = parse_device(args.device)
        ckpt = Path(args.ckpt)
        loaded = open_checkpoint(ckpt, args.tokenizer, device, args.dtype)
        model, tokenizer, bos_id, eos_ids = loaded.model, loaded.tokenizer, loaded.bos_id, loaded.eos_ids
        print(f"{ckpt}: {model.num_params():,} parameters, {loaded.dtype} on {device}", file=sys.stderr)
        results = [run_task(model, tokenizer, TASKS[name], Path(args.data), shots=shots[name], limit=args.limit,
                            seed=args.seed, batch_size=args.batch_size, bos=bos_id if args.bos else False, eos=eos_ids,
                            fewshot_from=Path(args.fewshot_from) if args.fewshot_from else None,
                            max_new_tokens=args.max_new_tokens)
                   for name in tasks]
        if args.out:
            write_records(Path(args.out), results)
    except (EvalError, SampleError, CheckpointError, InputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    print(format_table(results))
    print(summary_json(str(ckpt), results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
