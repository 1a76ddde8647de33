"""Tests for train.py: real FSDP2 over `torchrun --nproc_per_node=2` (gloo), checkpoints, exact resume.

Every run trains the `tiny` preset on a small corpus made from standard-library files, with a 512-token
tokenizer and a 1024-token global batch, so one step takes well under a second."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli import data as data_cli
from tokenizer import Tokenizer

REPO = Path(__file__).resolve().parent.parent
STDLIB = Path(os.__file__).parent
SMALL_RUN = ["--tokens-per-step", "1024", "--micro-batch-tokens", "1024", "--eval-batches", "2", "--log-every", "1",
             "--warmup-steps", "2", "--lr", "3e-3", "--no-bf16"]  # fp32 on every CPU; --bf16 is tested on its own


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    """(tokenizer file, data root) built once from ~40 standard-library modules."""
    root = tmp_path_factory.mktemp("corpus")
    files = sorted(STDLIB.glob("[a-m]*.py"))[:40]
    tokenizer = Tokenizer.train((f.read_text(errors="replace") for f in files), 512, workers=1, progress=False)
    tokenizer.save(root / "tok.txt")
    data_cli.prepare([str(f) for f in files], root / "tok.txt", root / "data", "stdlib", workers=1, val_fraction=0.1,
                 progress=False)
    return root / "tok.txt", root / "data"


def train_command(corpus, out: Path, *args: str, nproc: int = 1) -> list[str]:
    tokenizer, data_root = corpus
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return [*(launcher if nproc > 1 else [sys.executable]), str(REPO / "train.py"),
            "--data", str(data_root), "--tokenizer", str(tokenizer), "--out", str(out), *SMALL_RUN, *args]


def run_train(corpus, out: Path, *args: str, nproc: int = 1, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(out.parent / "inductor")}
    result = subprocess.run(train_command(corpus, out, *args, nproc=nproc), capture_output=True, text=True,
                            env=env, timeout=600)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def step_losses(out: Path, stage: int = 1) -> dict[int, float]:
    """step -> training loss from metrics.jsonl; a resumed run rewrites steps, the last record counts."""
    rows = [json.loads(line) for line in (out / f"stage{stage}" / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows if "loss" in row}


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory) -> Path:
    """One process, 10 steps of stage 1, the global batch as two accumulated micro-steps, a checkpoint every
    4 steps. Tests that only read it share it; tests that damage a run copy it first."""
    out = tmp_path_factory.mktemp("reference") / "run"
    run_train(corpus, out, "--stage", "1", "--max-steps", "10", "--micro-batch-tokens", "512", "--save-every", "4")
    return out


def test_two_ranks_match_one_process_and_loss_decreases(corpus, reference, tmp_path):
    out = tmp_path / "two"
    result = run_train(corpus, out, "--stage", "1", "--max-steps", "6", nproc=2)
    assert "2 process(es)" in result.stdout + result.stderr
    two, one = step_losses(out), step_losses(reference)
    assert sorted(two) == list(range(1, 7))
    for step in two:  # 2 ranks x 1 micro-step == 1 process x 2 micro-steps over the same global batch
        assert two[step] == pytest.approx(one[step], rel=1e-4, abs=1e-4), step
    assert one[10] < one[1] - 0.5
    rank1 = [json.loads(line) for line in (out / "stage1" / "metrics.rank1.jsonl").read_text().splitlines()]
    assert {row["step"]: row["loss"] for row in rank1 if "loss" in row} == two  # both ranks: the same loss
    export = out / "export"  # a complete Hugging Face folder
    for name in ("model.safetensors", "tokenizer.txt", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "generation_config.json"):
        assert (export / name).exists(), name
    tokenizer = Tokenizer.load(corpus[0])
    config = json.loads((export / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"]) == (tokenizer.bos_id, tokenizer.eos_id)
    assert config["fox1_tokenizer_fingerprint"] == tokenizer.fingerprint
    assert "<start_of_turn>" in json.loads((export / "tokenizer_config.json").read_text())["chat_template"]


def test_sigkill_then_resume_gives_identical_losses(corpus, reference, tmp_path):
    killed = tmp_path / "killed"
    args = ("--stage", "1", "--max-steps", "10", "--micro-batch-tokens", "512", "--save-every", "4")
    process = subprocess.Popen(train_command(corpus, killed, *args), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    metrics = killed / "stage1" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if metrics.exists() and len(step_losses(killed)) >= 6:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (killed / "stage1" / "latest").read_text().strip() == "step_000004"
    assert len(step_losses(killed)) < 10
    resumed = run_train(corpus, killed, *args)
    assert "resuming at step 4" in resumed.stdout + resumed.stderr
    assert step_losses(killed) == step_losses(reference)  # bitwise: same data, same state, same kernels


def test_stage_two_starts_from_stage_one_with_longer_sequences(corpus, reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    result = run_train(corpus, out, "--stage", "2", "--max-steps", "2")
    text = result.stdout + result.stderr
    assert "stage 2: starting from" in text and "seq_len 512" in text
    assert step_losses(out, 2)[1] < step_losses(out, 1)[10] + 0.5  # trained weights, not ln(512) = 6.2


def test_stage_two_refuses_to_start_without_stage_one(corpus, tmp_path):
    result = run_train(corpus, tmp_path / "run", "--stage", "2", "--max-steps", "2", check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: stage 2 starts from stage 1")


@pytest.mark.parametrize("stop, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_or_ctrl_c_saves_and_exits_128_plus_signal_then_resumes(corpus, tmp_path, stop, status):
    out = tmp_path / "run"
    process = subprocess.Popen(train_command(corpus, out, "--stage", "1", "--max-steps", "40", "--save-every", "100"),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = out / "stage1" / "metrics.jsonl"
    while not (metrics.exists() and len(step_losses(out)) >= 3):
        assert process.poll() is None
        time.sleep(0.05)
    process.send_signal(stop)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == status, output[-2000:]  # so `train.py && eval.py` does not go on
    assert f"stopped by {stop.name}" in output and "stopping when this step ends" in output
    assert "Traceback" not in output
    saved = int((out / "stage1" / "latest").read_text().strip().removeprefix("step_"))
    assert 3 <= saved < 40
    result = run_train(corpus, out, "--stage", "1", "--max-steps", str(saved + 2), "--save-every", "100")
    assert f"resuming at step {saved}" in result.stdout + result.stderr


def test_corrupted_checkpoints_are_detected(corpus, reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    (out / "stage1" / "latest").write_text("step_000099\n")
    result = run_train(corpus, out, "--stage", "1", "--max-steps", "12", check=False)
    assert result.returncode == 1 and "not a complete checkpoint" in result.stderr
    (out / "stage1" / "latest").write_text("step_000010\n")
    for shard in (out / "stage1" / "step_000010").glob("*.distcp"):
        shard.write_bytes(b"corrupt")
    result = run_train(corpus, out, "--stage", "1", "--max-steps", "12", check=False)
    assert result.returncode == 1 and "cannot load checkpoint" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_checkpoint_from_another_preset_is_refused(corpus, reference):
    result = run_train(corpus, reference, "--stage", "1", "--max-steps", "12", "--preset", "small", check=False)
    assert result.returncode == 1
    assert "was trained with preset 'tiny'" in result.stderr


def test_non_finite_loss_stops_with_a_clear_message(corpus, tmp_path):
    result = run_train(corpus, tmp_path / "run", "--stage", "1", "--max-steps", "6", "--lr", "1e9",
                       "--warmup-steps", "1", check=False)
    assert result.returncode == 1
    assert "loss is nan" in result.stderr or "loss is inf" in result.stderr


# --bf16: bf16 matmuls (fp32 master weights) round the loss to ~3 significant digits
@pytest.mark.parametrize("flag, tolerance", [("--compile", 1e-3), ("--activation-checkpointing", 1e-5), ("--bf16", 1e-2)])
def test_compiled_or_checkpointed_blocks_give_the_same_losses(corpus, reference, tmp_path, flag, tolerance):
    run_train(corpus, tmp_path / "run", "--stage", "1", "--max-steps", "2", "--micro-batch-tokens", "512", flag)
    losses, plain = step_losses(tmp_path / "run"), step_losses(reference)
    for step in losses:
        assert losses[step] == pytest.approx(plain[step], rel=tolerance), step


def test_resume_rewrites_metrics_past_the_checkpoint(corpus, reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    (out / "stage1" / "latest").write_text("step_000008\n")  # as if killed after step 10 but before its save
    (out / "stage1" / "step_000010").rename(out / "stage1" / "step_000010.tmp")
    result = run_train(corpus, out, "--stage", "1", "--max-steps", "10", "--micro-batch-tokens", "512",
                       "--save-every", "4")
    assert "resuming at step 8" in result.stdout + result.stderr
    steps = [json.loads(line)["step"] for line in (out / "stage1" / "metrics.jsonl").read_text().splitlines()]
    assert [s for s in steps if s in (9, 10)] == [9, 10, 10]  # losses of 9, 10 once each (+ the final eval row)
    assert step_losses(out) == step_losses(reference)
    assert not list((out / "stage1").glob("*.tmp"))  # the killed save's debris is gone


# --------------------------------------------------------------------------------------------------
# nothing a user made is lost; damage is a one-line error


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    return lines[0]


def test_missing_latest_refuses_to_start_over_and_resume_from_continues(corpus, reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    (out / "stage1" / "latest").unlink()
    args = ("--stage", "1", "--max-steps", "10", "--micro-batch-tokens", "512", "--save-every", "4")
    message = one_line_error(run_train(corpus, out, *args, check=False))
    assert "step_000008, step_000010 but no `latest`" in message and "--resume-from" in message
    assert sorted(p.name for p in (out / "stage1").glob("step_*")) == ["step_000008", "step_000010"]
    run_train(corpus, out, *args, "--resume-from", str(out / "stage1" / "step_000008"))
    assert step_losses(out) == step_losses(reference)
    # the step just saved (10) is kept; only older ones are pruned
    assert (out / "stage1" / "latest").read_text().strip() == "step_000010"
    assert (out / "stage1" / "step_000010" / "meta.json").exists()


def test_torn_last_metrics_line_is_dropped_and_other_damage_is_one_line(corpus, reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    metrics = out / "stage1" / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"stage": 1, "step": 11, "lo')  # power loss mid-write
    (out / "stage1" / "latest").write_text("step_000008\n")
    run_train(corpus, out, "--stage", "1", "--max-steps", "10", "--micro-batch-tokens", "512", "--save-every", "4")
    assert step_losses(out) == step_losses(reference)
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join(lines[:3] + ["garbage"] + lines[3:]) + "\n")
    (out / "stage1" / "latest").write_text("step_000008\n")
    message = one_line_error(run_train(corpus, out, "--stage", "1", "--max-steps", "12", check=False))
    assert "metrics.jsonl:4: damaged metrics row" in message


@pytest.mark.parametrize("damaged", ["rng_rank0.pt", ".metadata"])
def test_truncated_rng_state_or_dcp_metadata_is_one_line(corpus, reference, tmp_path, damaged):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    path = out / "stage1" / "step_000010" / damaged
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    message = one_line_error(run_train(corpus, out, "--stage", "1", "--max-steps", "12", check=False))
    assert str(out / "stage1" / "step_000010") in message


def test_out_that_is_a_file_and_a_tokenizer_of_another_preset_are_refused(corpus, tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("mine")
    message = one_line_error(run_train(corpus, not_a_dir, "--max-steps", "1", check=False))
    assert "is a file, not a directory" in message and not_a_dir.read_text() == "mine"
    out = tmp_path / "out"
    out.mkdir()
    shutil.copyfile(corpus[0], out / "tokenizer.txt")  # 512 tokens, as if left by a run of another preset
    result = subprocess.run([sys.executable, str(REPO / "train.py"), "--out", str(out), "--max-steps", "1"],
                            capture_output=True, text=True, timeout=300)
    assert "has 512 tokens but preset tiny uses 8,192" in one_line_error(result)
    assert not (out / "data").exists()


def test_a_second_run_into_the_same_out_is_refused_while_the_first_runs(corpus, reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    (out / ".lock").write_text(f"{os.getpid()} {socket.gethostname()}\n")  # a live run (this test) holds it
    message = one_line_error(run_train(corpus, out, "--stage", "1", "--max-steps", "12", check=False))
    assert f"--out {out} is in use by process {os.getpid()}" in message
    assert step_losses(out) == step_losses(reference) and (out / ".lock").exists()
    (out / ".lock").write_text("999999999 " + socket.gethostname() + "\n")  # left by a run that was killed
    result = run_train(corpus, out, "--stage", "1", "--max-steps", "10")  # complete already: nothing to train
    assert "taking over the lock" in result.stderr and not (out / ".lock").exists()


def test_resuming_with_another_batch_size_keeps_the_tokens_column_cumulative(corpus, reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    (out / "stage1" / "latest").write_text("step_000008\n")
    run_train(corpus, out, "--stage", "1", "--max-steps", "10", "--micro-batch-tokens", "512",
              "--tokens-per-step", "2048")
    rows = [json.loads(line) for line in (out / "stage1" / "metrics.jsonl").read_text().splitlines()]
    tokens = {row["step"]: row["tokens"] for row in rows if "tokens" in row}
    assert tokens[8] == 8 * 1024 and tokens[9] == 8 * 1024 + 2048 and tokens[10] == 8 * 1024 + 2 * 2048

