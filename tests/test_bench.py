"""Tests for bench.py as a user runs it: the command ends with its table and one JSON line of numbers, and
--skip leaves sections out. Smoke runs on the tiny preset, eager only; no number here is a speed claim (those
come from quiet runs of bench.py itself, see NOTES.md)."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cli import bench as bench_cli

ROOT = Path(__file__).resolve().parent.parent
QUICK = ["--preset", "tiny", "--batch-size", "1", "--seq-len", "32", "--repeats", "1", "--prompt-len", "8",
         "--new-tokens", "4", "--no-compile", "--no-bf16", "--skip-reference", "--threads", "1"]


def run_bench(*args: str) -> tuple[str, dict]:
    """(the table bench.py prints, its closing JSON line)."""
    done = subprocess.run([sys.executable, "bench.py", *QUICK, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    table, _, last = done.stdout.rstrip().rpartition("\n")
    return table, json.loads(last)


def test_bench_reports_training_generation_and_int8_rows():
    table, numbers = run_bench("--skip", "loss-memory", "tokenizer", "prepare")
    assert numbers["params"] == 6_557_952  # the tiny preset
    for key in ("train_tok_per_s[fox1 fp32 eager]", "prefill_tok_per_s[fox1 fp32 prefill]",
                "decode_tok_per_s[fox1 fp32 eager]", "int8_perplexity"):
        assert math.isfinite(numbers[key]) and numbers[key] > 0, key
    assert 0.0 <= numbers["int8_top1_agreement"] <= 1.0
    assert numbers["train_errors"] == {} and numbers["generation_errors"] == {}
    for row in ("train step (b=1, T=32, fp32, eager)", "decode (b=1, fp32, eager)", "int8 vs unquantised logits"):
        assert row in table
    assert "HF: not run" in table  # --skip-reference: the rows say so instead of inventing a ratio


def test_bench_skip_leaves_sections_out():
    table, numbers = run_bench("--skip", "training", "generation", "int8", "loss-memory", "tokenizer",
                               "--prepare-mb", "1", "--prepare-repeats", "1")
    assert numbers["params"] == 6_557_952
    assert not any(key.startswith(("train_", "decode_", "int8_")) for key in numbers)
    assert numbers["prepare_same_bytes"] is True and numbers["prepare_x1_mb_per_s"] > 0  # 1 and all cores agree
    assert "data.py prepare, 1 worker(s)" in table
    assert "train step" not in table and "decode" not in table
    assert "machine:" in table  # the machine's peaks are measured whatever is skipped


def test_no_eager_and_no_compile_together_are_refused(capsys):
    with pytest.raises(SystemExit) as done:
        bench_cli.parse_args(["--no-eager", "--no-compile"])
    assert done.value.code == 2 and "--no-eager" in capsys.readouterr().err.strip().splitlines()[-1]


def test_a_llama_cpp_folder_without_its_tools_is_refused_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        bench_cli.parse_args(["--llama-cpp", str(tmp_path)])
    error = capsys.readouterr().err.strip().splitlines()
    assert done.value.code == 2 and "llama-bench" in error[-1] and str(tmp_path) in error[-1]


@pytest.mark.skipif(not os.environ.get("FOX1_LLAMA_CPP"), reason="FOX1_LLAMA_CPP names no llama.cpp build")
def test_llama_cpp_rows_sit_beside_fox1s_compiled_rows():
    quick = [arg for arg in QUICK if arg != "--no-compile"] + ["--no-eager"]
    done = subprocess.run([sys.executable, "bench.py", *quick, "--skip", "training", "int8", "loss-memory",
                           "tokenizer", "prepare", "--llama-cpp", os.environ["FOX1_LLAMA_CPP"]], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    table, _, last = done.stdout.rstrip().rpartition("\n")
    numbers = json.loads(last)
    for kind in ("f32", "bf16", "Q8_0", "Q4_0"):
        assert numbers[f"llama_cpp_decode_tok_per_s[{kind}]"] > 0
        assert numbers[f"llama_cpp_prefill_tok_per_s[{kind}]"] > 0
    for kind in ("f32", "Q8_0", "Q4_0"):  # bf16 has no fox1 row here (--no-bf16)
        assert f"decode vs llama.cpp {kind}" in table and f"prefill vs llama.cpp {kind}" in table
    assert "eager" not in table.split("fox1/ref")[1]  # --no-eager


def test_decode_speed_is_fox1s_own_decode_timing_and_hfs_difference_of_two():
    """fox1's generate times its decode loop (as llama-bench does); a prefill call timed slower than the prefill
    inside the generation cannot inflate it. HF's generations are timed from outside."""
    from bench import decode_speed
    from sample import Generation
    fox1 = Generation([[1] * 16], prompt_tokens=128, prefill_seconds=0.9, decode_steps=15, decode_seconds=1.5)
    assert decode_speed(fox1, seconds=2.4, prefill_seconds=1.2, new_tokens=16) == pytest.approx(10.0)
    assert decode_speed(object(), seconds=2.4, prefill_seconds=0.9, new_tokens=16) == pytest.approx(10.0)
    assert math.isnan(decode_speed(object(), seconds=0.9, prefill_seconds=1.0, new_tokens=16))


def test_weight_bytes_counts_what_a_decode_step_reads():
    """fp32: every parameter. int8: the int8 rows and their scales. int4: the packed weights and their scales (fox1's
    int4 kernel reads them as they are); on a CPU without it PyTorch's kernel's copy only, not the packed table and
    scales kept beside it for the embedding's lookups."""
    from bench import weight_bytes
    from fox1 import cpu_kernels
    from fox1.speed import quantize_int4, quantize_int8
    from model import Fox, FoxConfig

    def model() -> Fox:
        return Fox(FoxConfig.from_preset("tiny", num_layers=2, vocab_size=512)).eval()

    fp32 = model()
    norms = sum(p.numel() * 4 for n, p in fp32.named_parameters() if "norm" in n)
    matrices = sum(p.numel() for n, p in fp32.named_parameters() if "norm" not in n)
    rows = sum(p.size(0) for n, p in fp32.named_parameters() if "norm" not in n)
    assert weight_bytes(fp32) == 4 * matrices + norms
    assert weight_bytes(quantize_int8(model())) == matrices + 4 * rows + norms
    groups = matrices // 32
    int4 = quantize_int4(model())  # loads fox1's kernels where the CPU runs them
    scales = 4 * groups if cpu_kernels.LOADED else 2 * 2 * groups  # fp32 scales, or bf16 scale and zero
    assert weight_bytes(int4) == matrices // 2 + scales + norms


def test_chunked_perplexity_scores_the_second_half_of_each_whole_chunk():
    """As llama-perplexity: ids past the last whole chunk and each chunk's first id (it becomes <bos>) count for
    nothing; the rest of a chunk's first half is context only; every id of its second half is scored once."""
    from fox1.llama_cpp import chunked_perplexity
    from model import Fox, FoxConfig

    torch.manual_seed(0)
    model = Fox(FoxConfig.from_preset("tiny", num_layers=2, vocab_size=64)).eval()
    ids = torch.randint(3, 64, (3 * 16 + 5,)).tolist()
    perplexity = chunked_perplexity(model, ids, 16, bos_id=1)
    unscored = list(ids)
    unscored[16], unscored[-5:] = 7, [8] * 5  # chunk 2's first id, the ids past chunk 3
    assert chunked_perplexity(model, unscored, 16, bos_id=1) == pytest.approx(perplexity, rel=1e-6)
    chunks = torch.tensor(ids[:48]).view(3, 16)
    chunks[:, 0] = 1
    with torch.no_grad():
        log_probs = model(chunks).log_softmax(-1)[:, 8:15].gather(-1, chunks[:, 9:, None])
    assert perplexity == pytest.approx(math.exp(-log_probs.mean().item()), rel=1e-5)
    last = list(ids)
    last[47] = (ids[47] + 1) % 64 or 3  # the last scored id: the number moves
    assert chunked_perplexity(model, last, 16, bos_id=1) != pytest.approx(perplexity, rel=1e-6)


def tiny_export(folder: Path, tokenizer) -> Path:
    """A random 2-layer tiny model with `tokenizer`, exported as train.py exports (the --ckpt of the quantisation
    rows)."""
    from model import Fox, FoxConfig

    torch.manual_seed(0)
    config = FoxConfig.from_preset("tiny", num_layers=2, vocab_size=tokenizer.vocab_size)
    Fox(config).save_pretrained(folder, token_ids={"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id})
    tokenizer.save_pretrained(folder)
    return folder


def test_unreadable_heldout_text_is_one_error_line(tmp_path, tokenizer):
    (tmp_path / "heldout.txt").write_bytes(b"\xff\xfe not UTF-8")
    done = subprocess.run([sys.executable, "bench.py", *QUICK, "--skip", "training", "generation", "loss-memory",
                           "tokenizer", "prepare", "--ckpt", str(tiny_export(tmp_path / "export", tokenizer)),
                           "--heldout", str(tmp_path / "heldout.txt")], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last == f"error: {tmp_path / 'heldout.txt'}: not UTF-8 text (byte 0 is not valid UTF-8)"


@pytest.mark.skipif(not os.environ.get("FOX1_LLAMA_CPP"), reason="FOX1_LLAMA_CPP names no llama.cpp build")
def test_perplexity_rows_against_llama_cpp_score_the_same_ids_alike(tmp_path, tokenizer):
    """A model exported by fox1 scores the same held-out ids in fp32 as llama.cpp does its f32 GGUF, to llama.cpp's
    printed precision; its int8 / int4 and llama.cpp's Q8_0 / Q4_0 stay near their unquantised perplexities."""
    from texts import stdlib_text

    tiny_export(tmp_path / "export", tokenizer)
    (tmp_path / "heldout.txt").write_text("".join(stdlib_text(60_000)), encoding="utf-8")
    table, numbers = run_bench("--skip", "training", "generation", "loss-memory", "tokenizer", "prepare", "--ckpt",
                               str(tmp_path / "export"), "--heldout", str(tmp_path / "heldout.txt"), "--llama-cpp",
                               os.environ["FOX1_LLAMA_CPP"])
    assert numbers["llama_cpp_same_ids"] is True
    assert numbers["chunked_perplexity[fp32]"] == pytest.approx(numbers["llama_cpp_perplexity[f32]"], rel=1e-5)
    for ours, theirs in (("int8", "Q8_0"), ("int4", "Q4_0")):
        assert numbers[f"chunked_perplexity[{ours}]"] == pytest.approx(numbers["chunked_perplexity[fp32]"], rel=0.02)
        assert numbers[f"llama_cpp_perplexity[{theirs}]"] == pytest.approx(numbers["llama_cpp_perplexity[f32]"],
                                                                          rel=0.02)
        assert f"held-out perplexity vs llama.cpp {theirs} ({ours})" in table


def test_ctrl_c_stops_the_bench_without_a_traceback():
    process = subprocess.Popen([sys.executable, "bench.py", *QUICK, "--repeats", "100000", "--skip", "training", "int8",
                                "loss-memory", "tokenizer", "prepare"], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    time.sleep(8)  # past imports, into the generation rounds (which would run for hours)
    assert process.poll() is None, process.communicate()[1][-2000:]
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines()[-1] == "interrupted: no table printed" and out == ""
