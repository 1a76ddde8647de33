"""Tests for eval.py: packed log-likelihoods against plain full forwards, the harness's context/continuation
split, acc vs acc_norm, LAMBADA's multi-token last word, the task loaders, one-line errors, the command line
end to end, and a tiny model that learns a synthetic task and is then scored far above chance."""
import copy
import dataclasses
import json
import math
import os
import random
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import eval as ev
from cli import eval as eval_cli
from fox1.files import InputError
from model import IGNORE_INDEX, Fox, FoxConfig

REPO = Path(__file__).resolve().parent.parent
CONTEXT = 256

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def model(tokenizer) -> Fox:
    """Random weights; init_std 0.3 spreads the logits so that greedy flags and choices are not near-ties."""
    torch.manual_seed(0)
    config = FoxConfig.from_preset("tiny", vocab_size=tokenizer.vocab_size, num_layers=2, context_len=CONTEXT,
                                   init_std=0.3)
    return Fox(config).eval()


@pytest.fixture(scope="module")
def text() -> str:
    return (Path(os.__file__).parent / "textwrap.py").read_text(encoding="utf-8")


def full_forward_loglikelihood(model: Fox, context: list[int], continuation: list[int]) -> tuple[float, bool]:
    """The reference: one plain forward over (context + continuation)[-(context_len + 1):][:-1], the sum of
    the continuation tokens' log-probabilities and whether each is the argmax."""
    if not continuation:  # merged into the context's last token: nothing to score (the harness's 0, greedy)
        return 0.0, True
    ids = (context + continuation)[-(model.config.context_len + 1):]
    with torch.no_grad():
        log_probs = model(torch.tensor([ids[:-1]]))[0, -len(continuation):].log_softmax(dim=-1)
    target = torch.tensor(continuation)
    return log_probs.gather(1, target[:, None]).sum().item(), bool((log_probs.argmax(dim=-1) == target).all())


def random_requests(text: str, count: int, seed: int) -> list[tuple[str, str]]:
    """Contexts and continuations cut from real text; some contexts end in spaces, some are shared."""
    rng = random.Random(seed)
    requests = []
    while len(requests) < count:
        start = rng.randrange(len(text) - 400)
        context = text[start:start + rng.randrange(0, 200)] + rng.choice(["", " ", "  ", "\n"])
        for _ in range(rng.randrange(1, 5)):  # several continuations of the same context share a row
            piece = text[start + 200:start + 200 + rng.randrange(1, 40)].strip() or "x"
            requests.append((context, rng.choice(["", " "]) + piece))
    return requests[:count]


# --------------------------------------------------------------------------------------------------
# Log-likelihoods


def test_each_choice_loglikelihood_equals_a_plain_full_forward(model, tokenizer, text):
    requests = random_requests(text, 40, seed=1)
    requests.append((text[:3000], " and the rest"))  # longer than the context: cut from the left
    got = ev.loglikelihoods(model, tokenizer, requests, batch_size=5)
    for (context, continuation), (ll, greedy) in zip(requests, got):
        want_ll, want_greedy = full_forward_loglikelihood(model, *ev.encode_pair(tokenizer, context, continuation))
        assert ll == pytest.approx(want_ll, abs=1e-4)
        assert greedy == want_greedy


def test_shared_prefix_batching_equals_unbatched(model, tokenizer, text):
    requests = random_requests(text, 30, seed=2)
    contexts = {context for context, _ in requests}
    assert len(contexts) < len(requests)  # some rows really hold several continuations
    packed = ev.loglikelihoods(model, tokenizer, requests, batch_size=8)
    alone = [ev.loglikelihoods(model, tokenizer, [request], batch_size=1)[0] for request in requests]
    for (ll_packed, greedy_packed), (ll_alone, greedy_alone) in zip(packed, alone):
        assert ll_packed == pytest.approx(ll_alone, abs=1e-4)
        assert greedy_packed == greedy_alone


def test_the_context_trailing_whitespace_moves_into_the_continuation(tokenizer):
    context_ids, continuation_ids = ev.encode_pair(tokenizer, "Question: is it?\nAnswer: ", "yes")
    assert context_ids == [tokenizer.bos_id] + tokenizer.encode("Question: is it?\nAnswer:")
    whole = tokenizer.encode("Question: is it?\nAnswer: yes")
    assert continuation_ids == whole[len(tokenizer.encode("Question: is it?\nAnswer:")):]
    assert tokenizer.decode(continuation_ids) == " yes"
    context_ids, continuation_ids = ev.encode_pair(tokenizer, "Answer:\n \n", "B", bos=False)  # any whitespace
    assert context_ids == tokenizer.encode("Answer:")
    assert continuation_ids == tokenizer.encode("Answer:\n \nB")[len(context_ids):]
    assert ev.encode_pair(tokenizer, "", "x", bos=False)[0] == [tokenizer.eos_id]  # the harness's empty context
    assert ev.encode_pair(tokenizer, "a b", " c", bos=False)[0] == tokenizer.encode("a b")


def test_choice_mask_lets_each_continuation_see_the_context_and_itself():
    segments = torch.tensor([[0, 0, 1, 1, 2, -1]])
    mask = ev.choice_mask(segments)[0, 0].int().tolist()
    assert mask == [[1, 0, 0, 0, 0, 0],
                    [1, 1, 0, 0, 0, 0],
                    [1, 1, 1, 0, 0, 0],
                    [1, 1, 1, 1, 0, 0],
                    [1, 1, 0, 0, 1, 0],
                    [1, 1, 0, 0, 0, 1]]


# --------------------------------------------------------------------------------------------------
# Metrics


def test_acc_and_acc_norm_pick_different_choices_when_lengths_differ():
    # raw: the short choice wins (-2 > -3); per character the long one does (-3/8 > -2/2)
    metrics = ev.choice_metrics([-2.0, -3.0], ["ab", "abcdefgh"], gold=1)
    assert (metrics["pred"], metrics["pred_norm"], metrics["acc"], metrics["acc_norm"]) == (0, 1, 0.0, 1.0)
    metrics = ev.choice_metrics([-2.0, -3.0], ["ab", "abcdefgh"], gold=0)
    assert (metrics["acc"], metrics["acc_norm"]) == (1.0, 0.0)
    # the length is the choice's own, without the " " it is scored with: 4 vs 5 characters
    metrics = ev.choice_metrics([-4.0, -4.9], ["abcd", "abcde"], gold=1)
    assert (metrics["pred"], metrics["pred_norm"]) == (0, 1)


def test_standard_errors_follow_the_harness():
    values = [1.0, 0.0, 0.0, 1.0, 1.0]
    assert ev.mean_stderr(values) == pytest.approx(statistics.stdev(values) / math.sqrt(5))
    assert math.isnan(ev.mean_stderr([1.0]))
    lls = [-1.0, -2.0, -3.0, -0.5] * 25
    assert ev.perplexity(lls) == pytest.approx(math.exp(1.625))
    delta_method = ev.perplexity(lls) * statistics.stdev(lls) / math.sqrt(len(lls))  # first-order bootstrap value
    assert ev.perplexity_stderr(lls) == pytest.approx(delta_method, rel=0.15)
    assert ev.perplexity_stderr(lls) == ev.perplexity_stderr(lls)  # seeded


def test_multiple_choice_records_and_summary(model, tokenizer):
    items = [{"query": f"def f{i}(x):\n    return", "choices": [" x", " x + 1", " None", " self.value"], "gold": i % 4}
             for i in range(8)]
    scored = ev.score_multiple_choice(model, tokenizer, items, batch_size=3)
    for item, record in zip(items, scored["records"]):
        requests = [(item["query"], " " + choice) for choice in item["choices"]]
        want = [full_forward_loglikelihood(model, *ev.encode_pair(tokenizer, *r))[0] for r in requests]
        assert record["loglikelihoods"] == pytest.approx(want, abs=1e-4)
        assert record == {**record, **ev.choice_metrics(want, item["choices"], item["gold"])}
    assert scored["acc"] == pytest.approx(sum(r["acc"] for r in scored["records"]) / 8)


def test_lambada_scores_the_whole_multi_token_last_word(model, tokenizer):
    items = [ev.lambada_item({"text": text}) for text in
             ["She opened the door and saw the xylophonequark", "Then he said\n\nthe answer was zymurgical",
              "import os, sys"]]
    assert items[0] == {"query": "She opened the door and saw the", "choices": ["xylophonequark"], "gold": 0}
    assert items[1]["query"] == "Then he said\n\nthe answer was"  # split on the last space only
    scored = ev.score_last_word(model, tokenizer, items)
    for item, record in zip(items, scored["records"]):
        context, continuation = ev.encode_pair(tokenizer, item["query"], " " + item["choices"][0])
        assert len(continuation) > 1 or item["choices"][0] == "sys"
        ll, greedy = full_forward_loglikelihood(model, context, continuation)
        assert record["loglikelihood"] == pytest.approx(ll, abs=1e-4) and record["acc"] == float(greedy)
    assert scored["perplexity"] == pytest.approx(math.exp(-sum(r["loglikelihood"] for r in scored["records"]) / 3))


def test_gsm8k_answers_and_exact_match():
    assert ev.extract_answers("5 + 7 = 12 apples.\n#### 1,234.") == ("1,234.", "1,234.")
    assert ev.extract_answers("so it is 40 then 45") == ("[invalid]", "45")
    assert ev.normalize_answer("1,234.") == ev.normalize_answer("Half is 617 <<617*2=1234>>\n#### $1,234") == "1234"


def test_generation_stops_at_the_stop_strings(model, tokenizer):
    prompt = [tokenizer.bos_id] + tokenizer.encode("def main():\n    ")
    free = ev.generate_until(model, tokenizer, prompt, [], max_new_tokens=40, chunk=16)
    stop = free[len(free) // 2:][:3]
    cut = ev.generate_until(model, tokenizer, prompt, [stop], max_new_tokens=40, chunk=16)
    assert stop and cut == free.split(stop)[0]


# --------------------------------------------------------------------------------------------------
# Data


def test_task_layouts_become_items_as_the_harness_builds_them():
    record = {"activity_label": "Home", "ctx_a": "How to x [title] Do y.", "ctx_b": "then",
              "endings": [" go [step] on ", "stop"], "label": "1"}
    hellaswag = ev.hellaswag_item(record)
    processed = {"query": "Home: How to x. Do y. Then", "choices": ["go on", "stop"], "gold": 1}
    assert hellaswag == {**processed, "doc": {**record, **processed}}  # the doc as the harness's process_docs makes it
    arc = ev.arc_item({"question": "Why?", "choices": {"text": ["a", "b", "c"], "label": ["1", "2", "3"]},
                       "answerKey": "3"})
    assert arc == {"query": "Question: Why?\nAnswer:", "choices": ["a", "b", "c"], "gold": 2}
    assert ev.arc_item({"query": "Question: Why?", "choices": ["a", "b"], "gold": 1})["query"] == "Question: Why?\nAnswer:"
    winogrande = ev.winogrande_item({"sentence": "The cup broke because _ was thin.", "option1": "the cup",
                                     "option2": "the floor", "answer": "2"})
    assert winogrande == {"query": ["The cup broke because the cup", "The cup broke because the floor"],
                          "choices": ["was thin.", "was thin."], "gold": 1}
    mmlu = ev.mmlu_item({"question": " 2+2? ", "subject": "math", "choices": ["1", "2", "3", "4"], "answer": 3})
    assert mmlu["query"] == "2+2?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer:" and mmlu["choices"] == list("ABCD")
    assert ev.mmlu_description(mmlu) == "The following are multiple choice questions (with answers) about math.\n\n"
    assert ev.TASKS["piqa"].make_item({"query": "q", "choices": ["a", "b"], "gold": 0})["query"] == "q"


def test_limit_is_a_fixed_random_subset():
    chosen = ev.subset(1000, 20, seed=3)
    assert chosen == ev.subset(1000, 20, seed=3) and chosen != list(range(20)) and chosen == sorted(set(chosen))
    assert ev.subset(10, 20, seed=3) == list(range(10))


def test_fewshot_examples_never_include_the_scored_item():
    task = ev.TASKS["arc_easy"]
    items = [{"query": f"Question: q{i}\nAnswer:", "choices": [f"a{i}", f"b{i}"], "gold": i % 2} for i in range(6)]
    items = [{**item, "doc": dict(item)} for item in items]  # as read_items keeps each record
    prefixes = ev.fewshot_prefixes(task, items, range(6), items, True, 5, seed=0, pool_name="pool")
    for i, prefix in enumerate(prefixes):
        assert f"q{i}\n" not in prefix and prefix.count("\n\n") == 5
    assert prefixes[0].startswith("Question: q") and f"q1\nAnswer: {'b1'}\n\n" in prefixes[0]
    assert prefixes == ev.fewshot_prefixes(task, items, range(6), items, True, 5, seed=0, pool_name="pool")
    with pytest.raises(ev.EvalError, match="pool: only 5 few-shot examples"):
        ev.fewshot_prefixes(task, items, [0], items, True, 6, seed=0, pool_name="pool")
    mmlu = ev.TASKS["mmlu"]  # the first n dev examples of the item's own subject
    dev = [{"query": f"d{i}", "choices": list("ABCD"), "gold": 0, "subject": s} for i, s in enumerate("xyxyx")]
    prefix = ev.fewshot_prefixes(mmlu, [{"subject": "x"}], [0], dev, False, 2, seed=0, pool_name="dev")[0]
    assert prefix == "The following are multiple choice questions (with answers) about x.\n\nd0 A\n\nd2 A\n\n"


def lettered(prefix: str, count: int, subject: str = "") -> list[dict]:
    """Items whose prompts name them (q0, q1, ...), each with its record as "doc", as read_items makes them."""
    items = [{"query": f"Question: {prefix}{i}\nAnswer:", "choices": [f"a{i}", f"b{i}"], "gold": 0, "subject": subject}
             for i in range(count)]
    return [{**item, "doc": {"id": f"{prefix}{i}"}} for i, item in enumerate(items)]


def examples_in(prefix: str) -> list[int]:
    """Which pool items (t0, t1, ...) a few-shot prefix shows, in order."""
    return [int(i) for i in re.findall(r"Question: t(\d+)\n", prefix)]


def test_fewshot_examples_are_drawn_as_the_harness_draws_them():
    items, pool = lettered("q", 8), lettered("t", 20)
    # one random.Random(1234) stream for every document in order; hellaswag's sampler is handed the scored doc,
    # so it draws n + 1 and keeps the first n that are not it; arc's draws n
    rng_drop, rng_plain = random.Random(1234), random.Random(1234)
    want_drop = [rng_drop.sample(range(20), 4)[:3] for _ in items]
    want_plain = [rng_plain.sample(range(20), 3) for _ in items]
    for name, want in (("hellaswag", want_drop), ("arc_easy", want_plain)):
        prefixes = ev.fewshot_prefixes(ev.TASKS[name], items, range(8), pool, False, 3, 1234, "pool")
        assert [examples_in(prefix) for prefix in prefixes] == want
        subset = ev.fewshot_prefixes(ev.TASKS[name], items, [2, 5], pool, False, 3, 1234, "pool")
        assert subset == [prefixes[2], prefixes[5]]  # an item's examples do not depend on what else is scored
    # a pool holding the scored doc twice: both copies are dropped, and the harness draws again from the rest
    twice = [{**pool[0], "doc": items[0]["doc"]}, {**pool[1], "doc": items[0]["doc"]}] + pool[2:5]
    for seed in range(20):
        prefix = ev.fewshot_prefixes(ev.TASKS["hellaswag"], items, [0], twice, False, 3, seed, "pool")[0]
        assert len(examples_in(prefix)) == 3 and not {0, 1} & set(examples_in(prefix))


def test_lambada_examples_may_be_the_scored_passage_only_when_matching_the_harness():
    task = ev.TASKS["lambada_openai"]
    items = [{**ev.lambada_item({"text": f"passage number {i} ends with word{i}"}), "doc": {"text": str(i)}}
             for i in range(6)]
    own = [f"passage number {i} ends with  word{i}" for i in range(6)]  # " " + target " word": two spaces, as the harness
    harness = ev.fewshot_prefixes(task, items, range(6), items, True, 4, 1234, "test", match_harness=True)
    ours = ev.fewshot_prefixes(task, items, range(6), items, True, 4, 1234, "test")
    assert any(own[i] in prefix for i, prefix in enumerate(harness))
    assert not any(own[i] in prefix for i, prefix in enumerate(ours)) and all(p.count("\n\n") == 4 for p in ours)
    assert all(prefix.count("  word") == 4 for prefix in harness)


def test_the_harness_limit_takes_the_first_items_of_each_mmlu_subject():
    items = lettered("q", 3, "x") + lettered("r", 3, "y") + lettered("s", 1, "x")
    assert ev.first_items(items, 2, per_subject=True) == [0, 1, 3, 4]
    assert ev.first_items(items, 2, per_subject=False) == [0, 1]
    assert ev.first_items(items, None, per_subject=True) == list(range(7))


def test_a_context_cut_to_fit_is_shared_by_the_choices_cut_the_same_way(model, tokenizer, text):
    context = text[:4000]  # longer than the context of 256: every choice needs it cut from the left
    choices = [" return", " import", " return self", " import os", " value"]
    requests = [(context, choice) for choice in choices]
    rows = ev.build_rows(tokenizer, requests, [0] * len(requests), CONTEXT, bos=True)
    cuts = {len(ev.encode_pair(tokenizer, context, choice)[1]) for choice in choices}
    assert len(rows) == len(cuts) < len(choices)
    got = ev.loglikelihoods(model, tokenizer, requests, groups=[0] * len(requests))
    for request, (ll, greedy) in zip(requests, got):
        want_ll, want_greedy = full_forward_loglikelihood(model, *ev.encode_pair(tokenizer, *request))
        assert ll == pytest.approx(want_ll, abs=1e-4) and greedy == want_greedy


# --------------------------------------------------------------------------------------------------
# Command line


WORDS = "apple river stone cloud green quiet table window summer garden violin bright".split()


def task_records(task: str, count: int, rng: random.Random) -> list[dict]:
    """Generated records in each task's Hugging Face layout."""
    def words(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    makers = {
        "hellaswag": lambda: {"activity_label": words(1), "ctx_a": words(6) + ".", "ctx_b": words(2),
                              "endings": [words(4) for _ in range(4)], "label": str(rng.randrange(4))},
        "arc_easy": lambda: {"question": words(6) + "?", "choices": {"text": [words(2) for _ in range(4)],
                                                                    "label": list("ABCD")}, "answerKey": rng.choice("ABCD")},
        "piqa": lambda: {"goal": words(5), "sol1": words(4), "sol2": words(6), "label": rng.randrange(2)},
        "winogrande": lambda: {"sentence": f"{words(4)} _ {words(3)}.", "option1": words(1), "option2": words(1),
                               "answer": rng.choice("12")},
        "mmlu": lambda: {"question": words(6) + "?", "subject": "high_school_biology",
                         "choices": [words(2) for _ in range(4)], "answer": rng.randrange(4)},
        "lambada_openai": lambda: {"text": words(20)},
        "gsm8k": lambda: {"question": words(8) + "?", "answer": f"{words(5)}\n#### {rng.randrange(100)}"},
    }
    return [makers[task]() for _ in range(count)]


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture(scope="module")
def export(tmp_path_factory, model, tokenizer) -> Path:
    directory = tmp_path_factory.mktemp("export")
    model.save_pretrained(directory)
    tokenizer.save(directory / "tokenizer.txt")
    return directory


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("data")
    rng = random.Random(0)
    names = {"hellaswag": ["hellaswag_val"], "arc_easy": ["arc_easy_test", "ARC-Challenge_test"],
             "piqa": ["piqa_validation"], "winogrande": ["winogrande/validation"], "mmlu": ["mmlu_test", "mmlu_dev"],
             "lambada_openai": ["lambada_openai_test"], "gsm8k": ["gsm8k_test", "gsm8k_train"]}
    for task, files in names.items():
        for name in files:
            (directory / name).parent.mkdir(exist_ok=True)
            write_jsonl(directory / f"{name}.jsonl", task_records(task, 12, rng))
    return directory


def test_command_line_end_to_end(export, data, tmp_path):
    out, harness = tmp_path / "items.jsonl", tmp_path / "harness"
    tasks = ",".join(ev.TASKS)
    result = subprocess.run([sys.executable, "eval.py", "--ckpt", str(export), "--data", str(data), "--tasks", tasks,
                             "--limit", "5", "--shots", "2,mmlu=3", "--max-new-tokens", "8", "--out", str(out),
                             "--output-path", str(harness)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    assert lines[0].split()[:3] == ["task", "shots", "metric"]
    assert set(summary["tasks"]) == set(ev.TASKS)
    for name, task in ev.TASKS.items():
        metrics = summary["tasks"][name]
        assert metrics["items"] == 5 and metrics["shots"] == (3 if name == "mmlu" else 2)
        assert all(metric in metrics and f"{metric}_stderr" in metrics for metric in task.metrics)
        assert all(0 <= metrics[m] <= 1 for m in task.metrics if m != "perplexity")
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 5 * len(ev.TASKS) and {r["task"] for r in records} == set(ev.TASKS)
    assert not (tmp_path / "items.jsonl.tmp").exists()
    check_harness_output(harness, summary["tasks"])


def leaves(value: object) -> list:
    return [leaf for item in value for leaf in leaves(item)] if isinstance(value, list) else [value]


def check_harness_output(directory: Path, summary: dict) -> None:
    """results_<date>.json and samples_<task>_<date>.jsonl as lm-evaluation-harness writes them."""
    [results_path] = directory.glob("results_*.json")
    results = json.loads(results_path.read_text())
    date = results_path.stem.removeprefix("results_")
    assert set(results["results"]) == set(summary) and results["n-shot"]["mmlu"] == 3
    for name, metrics in summary.items():
        entry = results["results"][name]
        for metric in ev.TASKS[name].metrics:
            key, filter_name = ev.harness_metric(metric)
            assert entry[f"{key},{filter_name}"] == pytest.approx(metrics[metric], abs=1e-6)
            assert f"{key}_stderr,{filter_name}" in entry
        assert results["n-samples"][name] == {"original": 12, "effective": 5}
        samples = [json.loads(line) for line in (directory / f"samples_{name}_{date}.jsonl").read_text().splitlines()]
        assert len(samples) == (10 if name == "gsm8k" else 5)  # gsm8k: one per item for each of its two filters
        for sample in samples:
            assert isinstance(sample["doc_id"], int) and isinstance(sample["target"], str)
            if name in ("arc_easy", "arc_challenge", "piqa", "mmlu", "gsm8k"):
                assert sample["arguments"]["gen_args_0"]["arg_0"].endswith("Answer:")
            assert len(sample["resps"]) == len(sample["arguments"]) == len(sample["filtered_resps"])
            assert all(isinstance(value, str) for value in leaves(sample["resps"]) + leaves(sample["filtered_resps"]))
    assert [s["filter"] for s in map(json.loads, (directory / f"samples_gsm8k_{date}.jsonl").read_text().splitlines())] \
        == ["strict-match"] * 5 + ["flexible-extract"] * 5


@pytest.mark.parametrize("content, message", [
    ('{"text": "a b"}\n{"text": "a b"\n', "lambada_openai_test.jsonl:2: not valid JSON"),
    ('{"passage": "a b"}\n', "lambada_openai_test.jsonl:1: no field 'text'"),
    ('["a", "b"]\n', "lambada_openai_test.jsonl:1: expected a JSON object"),
    ('{"text": "word"}\n', "lambada_openai_test.jsonl:1: lambada_openai record has a field of the wrong kind"),
    ("", "lambada_openai_test.jsonl: no items"),
    (b'{"text": "caf\xe9 au lait"}\n', "lambada_openai_test.jsonl: not UTF-8 text"),
])
def test_malformed_files_give_one_line_errors(export, tmp_path, capsys, content, message):
    path = tmp_path / "lambada_openai_test.jsonl"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert eval_cli.main(["--ckpt", str(export), "--data", str(tmp_path), "--tasks", "lambada"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1] and "Traceback" not in "".join(err)


@pytest.mark.parametrize("args, message", [
    (["--tasks", "hellaswag"], "no hellaswag file (looked for hellaswag_validation.jsonl"),
    (["--tasks", "squad"], "--tasks: unknown task 'squad'"),
    (["--tasks", "arc_easy", "--shots", "arc=3"], "--shots: unknown task 'arc'"),
    (["--tasks", "hellaswag", "--data", "/nonexistent"], "/nonexistent: --data is not a directory"),
    (["--tasks", "hellaswag", "--hf"], "--data DIR or --hf"),
    (["--tasks", "lambada", "--shots", "lambada=x"], "--shots: 'lambada=x' is not N or task=N"),
])
def test_bad_arguments_give_one_line_errors(export, tmp_path, capsys, args, message):
    assert eval_cli.main(["--ckpt", str(export), "--data", str(tmp_path), *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 2 and err[-1].startswith("error: ") and message in err[-1]


def test_old_task_names_still_work_and_a_source_is_required(export, tmp_path, capsys):
    assert eval_cli.parse_shots("lambada=3", ["lambada_openai"]) == {"lambada_openai": 3}
    args = eval_cli.parse_args(["--data", str(tmp_path), "--tasks", "lambada,lambada_openai,arc_easy"])
    assert eval_cli.check_arguments(args) == ["lambada_openai", "arc_easy"]
    assert eval_cli.main(["--ckpt", str(export), "--tasks", "hellaswag"]) == 1
    assert "--data DIR or --hf" in capsys.readouterr().err


def test_an_unknown_layout_names_the_file_and_the_field(tmp_path):
    path = tmp_path / "hellaswag_val.jsonl"
    write_jsonl(path, [{"ctx": "a", "activity_label": "b", "endings": ["c", "d"], "label": 0}, {"question": "q"}])
    with pytest.raises(ev.EvalError, match=r"hellaswag_val.jsonl:2: no field 'ctx'.*fields here: question"):
        ev.read_files([path], ev.TASKS["hellaswag"])
    write_jsonl(path, [{"ctx": "a", "activity_label": "b", "endings": ["c", "d"], "label": 2}])
    with pytest.raises(ev.EvalError, match="field 'label' is 2, not one of the 2 choices"):
        ev.read_files([path], ev.TASKS["hellaswag"])


@pytest.mark.parametrize("task, record, message", [
    ("hellaswag", {"query": "q", "choices": "abcd", "gold": 0}, "'choices' must be a list of strings"),
    ("arc_easy", {"query": "q", "choices": ["only one"], "gold": 0}, "has 1 choice(s); a question needs at least 2"),
    ("piqa", {"goal": "g", "sol1": "a", "sol2": " ", "label": 0}, "has an empty choice"),
    ("mmlu", {"question": "q", "choices": ["a", "b", "c", "d"], "answer": 7}, "'answer' is 7, not one of the 4"),
    ("lambada_openai", {"text": "the last word is missing "}, "its last word is empty"),
    ("gsm8k", {"question": "q", "answer": ""}, "'answer' must be a non-empty string"),
])
def test_items_of_the_wrong_shape_are_refused_not_scored(tmp_path, task, record, message):
    path = tmp_path / "items.jsonl"
    write_jsonl(path, [record])
    with pytest.raises(ev.EvalError, match=rf"items.jsonl:1: .*{re.escape(message)}"):
        ev.read_files([path], ev.TASKS[task])


def write_parquet(path: Path, records: list[dict], row_group_size: int = 3) -> None:
    import pyarrow
    import pyarrow.parquet

    path.parent.mkdir(parents=True, exist_ok=True)
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(records), path, row_group_size=row_group_size)


def test_hub_downloads_are_read_as_the_hub_serves_them(tmp_path):
    pytest.importorskip("pyarrow")
    rng = random.Random(1)
    easy, challenge = task_records("arc_easy", 10, rng), task_records("arc_easy", 4, rng)
    write_parquet(tmp_path / "ai2_arc/ARC-Easy/test-00000-of-00002.parquet", easy[:6])  # shards, read in order
    write_parquet(tmp_path / "ai2_arc/ARC-Easy/test-00001-of-00002.parquet", easy[6:])
    write_parquet(tmp_path / "ai2_arc/ARC-Challenge/test-00000-of-00001.parquet", challenge)
    lambada, german = task_records("lambada_openai", 5, rng), task_records("lambada_openai", 3, rng)
    (tmp_path / "lambada_openai/data").mkdir(parents=True)
    write_jsonl(tmp_path / "lambada_openai/data/lambada_test.jsonl", lambada)
    write_jsonl(tmp_path / "lambada_openai/data/lambada_test_de.jsonl", german)  # another config beside it
    write_parquet(tmp_path / "hellaswag_validation.parquet", task_records("hellaswag", 4, rng))

    def loaded(task: str) -> list[dict]:
        items, _ = ev.load_split(ev.TASKS[task], ev.TASKS[task].split, tmp_path, plain=True)
        return [item["doc"] for item in items]

    assert loaded("arc_easy") == easy and loaded("arc_challenge") == challenge
    assert loaded("lambada_openai") == lambada
    assert len(loaded("hellaswag")) == 4
    assert ev.load_split(ev.TASKS["arc_easy"], "train", tmp_path, plain=False) is None
    jsonl = tmp_path / "jsonl"
    jsonl.mkdir()
    write_jsonl(jsonl / "arc_easy_test.jsonl", easy)
    assert ev.load_split(ev.TASKS["arc_easy"], "test", jsonl, plain=True)[0] == \
        ev.load_split(ev.TASKS["arc_easy"], "test", tmp_path, plain=True)[0]  # the same items either way


def test_hf_loads_a_dataset_through_datasets(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    pytest.importorskip("pyarrow")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))  # not the user's cache
    records = task_records("arc_easy", 9, random.Random(3))
    write_parquet(tmp_path / "repo/data/test-00000-of-00001.parquet", records)  # a Hub repository's layout, on disk
    task = dataclasses.replace(ev.TASKS["arc_easy"], hub=(str(tmp_path / "repo"), None))
    items, name = ev.load_split(task, "test", None, plain=True)
    assert [item["doc"] for item in items] == records and name.endswith("repo test")
    with pytest.raises(InputError, match=r"--hf: cannot load .*repo train"):
        ev.load_split(task, "train", None, plain=False)


@pytest.mark.parametrize("make, message", [
    (lambda path: path.write_bytes(b"PAR1 not really parquet"), "not a readable Parquet file"),
    (lambda path: write_parquet(path, [{"text": "a b c"}] * 4 + [{"text": "nospace"}]),
     "row 5: lambada_openai record has a field of the wrong kind"),
    (lambda path: write_parquet(path, [{"passage": "a b"}]), "row 1: no field 'text'"),
])
def test_bad_parquet_files_give_one_line_errors(tmp_path, make, message):
    pytest.importorskip("pyarrow")
    path = tmp_path / "lambada_openai_test.parquet"
    make(path)
    with pytest.raises((ev.EvalError, InputError), match=re.escape(message)):
        ev.load_split(ev.TASKS["lambada_openai"], "test", tmp_path, plain=True)


def test_a_split_in_two_folders_is_refused_not_mixed(tmp_path):
    rng = random.Random(2)
    for folder in ("winogrande_xs", "winogrande_debiased"):  # no winogrande_xl/ folder to prefer
        (tmp_path / "winogrande" / folder).mkdir(parents=True)
        write_jsonl(tmp_path / "winogrande" / folder / "validation.jsonl", task_records("winogrande", 3, rng))
    with pytest.raises(InputError, match="winogrande validation files in several folders"):
        ev.load_split(ev.TASKS["winogrande"], "validation", tmp_path, plain=True)


@pytest.mark.parametrize("package, args, message", [
    ("datasets", ["--hf", "--tasks", "arc_easy"], "--hf needs the datasets package (pip install datasets)"),
    ("pyarrow", ["--data", "PARQUET", "--tasks", "lambada"], "to read .parquet files, install the optional package: pip install pyarrow"),
])
def test_a_missing_optional_package_is_named_in_one_line(export, tmp_path, capsys, monkeypatch, package, args, message):
    (tmp_path / "lambada_openai_test.parquet").write_bytes(b"")
    monkeypatch.setitem(sys.modules, package, None)  # as if it were not installed: importing it fails
    args = [str(tmp_path) if arg == "PARQUET" else arg for arg in args]
    assert eval_cli.main(["--ckpt", str(export), *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1] and "Traceback" not in "".join(err)


def test_non_finite_weights_stop_scoring_in_one_line(model, tokenizer):
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.norm.weight.fill_(float("nan"))
    with pytest.raises(ev.EvalError, match="log-likelihoods are not finite"):
        ev.loglikelihoods(broken, tokenizer, [("a context", " and more")])


# --------------------------------------------------------------------------------------------------
# The harness can see learning


ANIMALS = "cat dog fox owl bee ant cow pig hen elk yak eel bat rat emu ape gnu koi ram doe jay cod asp boa".split()
COLORS = ["turquoise", "vermilion", "chartreuse", "magenta"]  # several tokens each with a 512-token vocabulary


def test_a_tiny_model_learns_facts_and_the_harness_sees_it(tokenizer):
    facts = {animal: COLORS[i % 4] for i, animal in enumerate(ANIMALS)}  # each color is gold equally often
    items = [{"query": f"the {animal} is", "choices": COLORS, "gold": COLORS.index(color)} for animal, color in facts.items()]
    words = [ev.lambada_item({"text": f"the {animal} is {color}"}) for animal, color in facts.items()]
    assert all(len(ev.encode_pair(tokenizer, "the cat is", " " + c)[1]) > 1 for c in COLORS)
    torch.manual_seed(0)
    config = FoxConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=1,
                       head_dim=16, intermediate_size=128, context_len=32)
    model = Fox(config)
    before = ev.score_multiple_choice(model.eval(), tokenizer, items)["acc"]
    before_words = ev.score_last_word(model, tokenizer, words)["acc"]

    sequences = [[tokenizer.bos_id] + tokenizer.encode(f"the {animal} is {color}") for animal, color in facts.items()]
    length = max(map(len, sequences))
    idx = torch.tensor([s + [0] * (length - len(s)) for s in sequences])
    targets = torch.tensor([s[1:] + [IGNORE_INDEX] * (length - len(s) + 1) for s in sequences])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    model.train()
    for _ in range(150):
        loss = model(idx, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    after = ev.score_multiple_choice(model, tokenizer, items)["acc"]
    after_words = ev.score_last_word(model, tokenizer, words)["acc"]
    assert before <= 0.5 and before_words <= 0.1, (before, before_words)  # chance is 0.25 and ~0
    assert after >= 0.9 and after_words >= 0.9, (after, after_words, loss.item())


# --------------------------------------------------------------------------------------------------
# Item for item against lm-evaluation-harness itself (where it is installed)


HARNESS_YAMLS = {"hellaswag": "hellaswag/hellaswag.yaml", "arc_easy": "arc/arc_easy.yaml",
                 "lambada_openai": "lambada/lambada_openai.yaml"}
HUB_FILES = {"hellaswag": {"train": "hellaswag/data/train-00000-of-00001.parquet",
                           "validation": "hellaswag/data/validation-00000-of-00001.parquet"},
             "arc_easy": {"train": "arc_easy/ARC-Easy/train-00000-of-00001.parquet",
                          "validation": "arc_easy/ARC-Easy/validation-00000-of-00001.parquet",
                          "test": "arc_easy/ARC-Easy/test-00000-of-00001.parquet"},
             "lambada_openai": {"test": "lambada_openai/data/lambada_test.jsonl"}}


def write_hub_layout(directory: Path, rng: random.Random, count: int) -> None:
    """The three tasks' splits as the Hub serves them: Parquet in config folders, LAMBADA's JSONL."""
    for task, splits in HUB_FILES.items():
        for path in splits.values():
            records = task_records(task, count, rng)
            (directory / path).parent.mkdir(parents=True, exist_ok=True)
            if path.endswith(".jsonl"):
                write_jsonl(directory / path, records)
            else:
                write_parquet(directory / path, records, row_group_size=7)


def harness_task_configs(directory: Path, harness_tasks: Path, shots: int) -> None:
    """YAMLs that include the harness's own task definitions and only point them at local files."""
    import yaml

    for task, yaml_path in HARNESS_YAMLS.items():
        kind = "json" if task == "lambada_openai" else "parquet"
        config = {"include": str(harness_tasks / yaml_path), "task": f"{task}_{shots}shot", "dataset_path": kind,
                  "dataset_name": None, "num_fewshot": shots,
                  "dataset_kwargs": {"data_files": {s: str(directory / p) for s, p in HUB_FILES[task].items()}}}
        (directory / f"{task}_{shots}shot.yaml").write_text(yaml.safe_dump(config))


@pytest.fixture(scope="module")
def trained_export(tmp_path_factory, tokenizer) -> tuple[Fox, Path]:
    """A tiny model trained briefly on the standard library, exported as train.py exports (a Hugging Face folder)."""
    torch.manual_seed(0)
    config = FoxConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=1,
                       head_dim=16, intermediate_size=128, context_len=128)  # 5-shot prompts are cut to fit
    model = Fox(config)
    ids = torch.tensor(tokenizer.encode((Path(os.__file__).parent / "textwrap.py").read_text(encoding="utf-8")))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(30):
        starts = torch.randint(0, len(ids) - 65, (8,), generator=torch.Generator().manual_seed(step))
        batch = torch.stack([ids[s:s + 65] for s in starts.tolist()])
        loss = model(batch[:, :-1], batch[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    directory = tmp_path_factory.mktemp("trained")
    model.eval().save_pretrained(directory, token_ids={"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id,
                                                       "pad_token_id": 0}, tokenizer_fingerprint=tokenizer.fingerprint)
    tokenizer.save(directory / "tokenizer.txt")
    tokenizer.save_pretrained(directory)
    return model, directory


def assert_same_items(ours: ev.TaskResult, theirs: list[dict], doc_ids: list[int]) -> None:
    """Same prompts and continuations, log-likelihoods within 1e-4, same greedy flags and per-item metrics."""
    theirs = {sample["doc_id"]: sample for sample in theirs}
    assert [sample["doc_id"] for sample in ours.samples] == doc_ids
    for sample, record in zip(ours.samples, ours.records):
        their = theirs[sample["doc_id"]]
        assert [tuple(arguments.values()) for arguments in sample["arguments"].values()] == \
            [tuple(arguments) for arguments in their["arguments"]]
        lls = record["loglikelihoods"] if "loglikelihoods" in record else [record["loglikelihood"]]
        greedy = record["greedy"] if "greedy" in record else [record["acc"] == 1.0]
        assert lls == pytest.approx([resp[0][0] for resp in their["resps"]], abs=1e-4)
        assert greedy == [resp[0][1] for resp in their["resps"]]
        assert {m: sample[m] for m in their["metrics"] if m != "perplexity"} == \
               {m: their[m] for m in their["metrics"] if m != "perplexity"}
        assert set(their) <= set(sample)  # every field the harness writes


def test_the_harness_itself_scores_the_same_items_the_same_way(trained_export, tokenizer, tmp_path, monkeypatch):
    lm_eval = pytest.importorskip("lm_eval")
    huggingface = pytest.importorskip("lm_eval.models.huggingface")  # needs transformers and accelerate
    pytest.importorskip("pyarrow")
    monkeypatch.setattr(pytest.importorskip("datasets").config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    from lm_eval.tasks import TaskManager

    model, export = trained_export
    write_hub_layout(tmp_path, random.Random(0), 30)
    harness_tasks = Path(lm_eval.__file__).parent / "tasks"
    for shots in (0, 5):
        harness_task_configs(tmp_path, harness_tasks, shots)
    manager = TaskManager(include_path=str(tmp_path), include_defaults=False)
    lm = huggingface.HFLM(pretrained=str(export), dtype="float32", batch_size=16, device="cpu")
    names = [f"{task}_{shots}shot" for shots in (0, 5) for task in HARNESS_YAMLS]
    theirs = lm_eval.simple_evaluate(model=lm, tasks=names, task_manager=manager, bootstrap_iters=100, log_samples=True)

    def ours(task: str, shots: int, limit: int, match_harness: bool) -> ev.TaskResult:
        return ev.run_task(model, tokenizer, ev.TASKS[task], tmp_path, shots=shots, limit=limit, seed=1234,
                           batch_size=16, bos=False, eos=[tokenizer.eos_id], fewshot_from=None, max_new_tokens=8,
                           match_harness=match_harness)

    for task in HARNESS_YAMLS:
        for shots in (0, 5):
            name = f"{task}_{shots}shot"
            result = ours(task, shots, 24, match_harness=True)  # the harness's --limit: the first 24 of 30
            assert_same_items(result, theirs["samples"][name], list(range(24)))
            assert result.metrics["acc"] == pytest.approx(sum(s["acc"] for s in theirs["samples"][name][:24]) / 24)
        # without --match-harness: a random subset, each item with the prompt the harness gives it (LAMBADA's
        # 5-shot differs on purpose: a passage is never its own example)
        shots = 0 if task == "lambada_openai" else 5
        subset = ours(task, shots, 10, match_harness=False)
        assert [s["doc_id"] for s in subset.samples] != list(range(10))
        assert_same_items(subset, theirs["samples"][f"{task}_{shots}shot"], ev.subset(30, 10, 1234))
    for task in ("hellaswag", "lambada_openai"):  # whole splits: results[task] as the harness writes it
        entry, their = ev.harness_task_entry(ours(task, 0, None, match_harness=True)), theirs["results"][f"{task}_0shot"]
        assert {key for key in entry if "," in key} == {key for key in their if "," in key}
        for key in (key for key in their if "," in key and "perplexity_stderr" not in key):  # ours: 1,000 resamples
            assert entry[key] == pytest.approx(their[key], rel=1e-4), key


def test_gsm8k_stops_filters_and_answer_matching_are_the_harness_task_s():
    lm_eval = pytest.importorskip("lm_eval")
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((Path(lm_eval.__file__).parent / "tasks/gsm8k/gsm8k.yaml").read_text())
    assert config["generation_kwargs"] == ev.GSM8K_GENERATION  # stops at "Question:", never at a blank line
    filters = {f["name"]: f["filter"][0]["regex_pattern"] for f in config["filter_list"]}
    assert filters == {"strict-match": ev.STRICT_ANSWER.pattern, "flexible-extract": ev.ANY_NUMBER.pattern}
    assert config["metric_list"][0]["regexes_to_ignore"] == [pattern.pattern for pattern in ev.IGNORED]
    assert config["doc_to_text"] == "Question: {{question}}\nAnswer:" and config["num_fewshot"] == ev.TASKS["gsm8k"].shots
