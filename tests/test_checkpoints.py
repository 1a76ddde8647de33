"""Tests for fox1/checkpoints.py without a training run (tests/test_train.py kills and resumes real ones): the
`latest` marker, checkpoint metadata against the model's shape, and the metrics log across a resume."""
import json
from dataclasses import asdict

import pytest

from fox1.checkpoints import (MetricsLog, latest_checkpoint, point_latest_at, read_checkpoint_meta, read_metrics,
                              saved_checkpoints)
from fox1.hf_llama import CheckpointError
from model import FoxConfig

TINY = FoxConfig.from_preset("tiny")


def fake_checkpoint(directory, step: int, config=TINY):
    path = directory / f"step_{step:06d}"
    path.mkdir(parents=True)
    (path / ".metadata").write_bytes(b"dcp")
    meta = {"preset": "tiny", "model_config": asdict(config), "step": step, "stage_steps": 10, "complete": False,
            "eval_loss": None, "loader": {}}
    (path / "meta.json").write_text(json.dumps(meta))
    return path


def test_latest_names_the_newest_complete_checkpoint_or_refuses_to_start_over(tmp_path):
    assert latest_checkpoint(tmp_path) is None  # a stage that never saved starts from scratch
    four, eight = fake_checkpoint(tmp_path, 4), fake_checkpoint(tmp_path, 8)
    (tmp_path / "step_000012.tmp").mkdir()  # a save killed half-way is not a checkpoint
    assert saved_checkpoints(tmp_path) == [four, eight]
    with pytest.raises(CheckpointError, match="holds step_000004, step_000008 but no `latest`"):
        latest_checkpoint(tmp_path)
    point_latest_at(four)
    assert latest_checkpoint(tmp_path) == four
    (eight / ".metadata").unlink()
    with pytest.raises(CheckpointError, match="not a complete step_"):
        point_latest_at(eight)


def test_metadata_of_another_model_or_damaged_is_one_line(tmp_path):
    path = fake_checkpoint(tmp_path, 4)
    assert read_checkpoint_meta(path, TINY)["step"] == 4
    with pytest.raises(CheckpointError, match=r"preset 'tiny' and a different model \(num_layers differ\)"):
        read_checkpoint_meta(path, FoxConfig.from_preset("tiny", num_layers=2))
    (path / "meta.json").write_text('{"model_config": {}')
    with pytest.raises(CheckpointError, match="corrupt checkpoint metadata"):
        read_checkpoint_meta(path, TINY)


def test_metrics_rows_past_the_resumed_step_are_dropped_and_a_torn_last_line_forgiven(tmp_path):
    log = MetricsLog(tmp_path, rank=0, resume_step=0)
    for step in range(1, 6):
        log.write(stage=1, step=step, loss=10.0 - step)
    log.close()
    path = tmp_path / "metrics.jsonl"
    path.write_text(path.read_text() + '{"stage": 1, "st')  # a kill mid-write
    log = MetricsLog(tmp_path, rank=0, resume_step=3)  # resumed from the checkpoint of step 3
    log.write(stage=1, step=4, loss=0.5)
    log.close()
    assert [row["step"] for _, row in read_metrics(path)] == [1, 2, 3, 4] and read_metrics(path)[-1][1]["loss"] == 0.5
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(CheckpointError, match="metrics.jsonl:2: damaged metrics row"):
        read_metrics(path)
