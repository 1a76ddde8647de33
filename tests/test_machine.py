"""Tests for fox1/machine.py: timers include the work they time, A/B rounds take turns, peaks are positive."""
import time

import torch

from fox1.machine import Machine, interleaved_runs, interleaved_seconds, read_bandwidth, timed


def test_timed_returns_the_result_and_the_seconds():
    result, seconds = timed(lambda: time.sleep(0.05) or 42, torch.device("cpu"))
    assert result == 42 and 0.04 < seconds < 1.0


def test_interleaved_rounds_take_turns_after_the_warm_up():
    calls = []
    seconds = interleaved_seconds({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                  torch.device("cpu"), repeats=3, warmup=1)
    assert calls == ["a", "b"] * 4 and {name: len(s) for name, s in seconds.items()} == {"a": 3, "b": 3}


class Compiled:
    compile_seconds = 0.2  # what a compiled generate reports having spent compiling as it started


def test_interleaved_runs_keep_each_result_and_leave_compiling_out():
    runs = interleaved_runs({"slow": lambda: time.sleep(0.25) or Compiled(), "plain": lambda: 7},
                            torch.device("cpu"), repeats=2, warmup=0)
    assert [result for result, _ in runs["plain"]] == [7, 7]
    assert all(isinstance(result, Compiled) and 0.04 < seconds < 0.2 for result, seconds in runs["slow"])


def test_the_machine_measures_and_describes_itself():
    machine = Machine(torch.device("cpu"), [torch.float32]).measure()
    numbers, lines = machine.describe()
    assert numbers["copy_gb_per_s"] > 0 and numbers["matmul_tflops[float32]"] > 0
    assert lines[0].startswith("machine: ") and "best of 1 measurements" in lines[1]
    assert read_bandwidth(torch.device("cpu"), 1 << 20) > 0
