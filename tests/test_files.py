"""Tests for fox1/files.py: run locks and the flag rules every command checks."""
import math
import os
import socket
import subprocess
import sys

import pytest

from fox1 import files


def test_a_lock_refuses_a_second_holder_and_takes_over_a_dead_ones(tmp_path, capsys):
    lock = tmp_path / "out" / ".lock"
    with files.exclusive(lock, "--out out"):
        assert lock.read_text().split()[0] == str(os.getpid())
        with pytest.raises(files.LockedError, match=rf"--out out is in use by process {os.getpid()} on "):
            with files.exclusive(lock, "--out out"):
                pass
        assert lock.exists()  # the refused second holder did not remove the first one's lock
    assert not lock.exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(f"{dead.stdout.strip()} {socket.gethostname()}\n")  # left by a process that was killed
    with files.exclusive(lock, "--out out"):
        assert "taking over the lock" in capsys.readouterr().err
    lock.write_text("12")  # torn by a kill mid-write
    with files.exclusive(lock, "--out out"):
        pass
    lock.write_text(f"{os.getpid()} another-host\n")  # another machine's lock cannot be judged from here
    with pytest.raises(files.LockedError, match="another-host"):
        with files.exclusive(lock, "--out out"):
            pass


@pytest.mark.parametrize("rule, good, bad", [
    (files.Number(1), [1, 7], [0, -3, math.nan, math.inf]),
    (files.Number(0, above=True), [1e-9, 3.0], [0.0, -1.0, math.nan]),
    (files.Number(0, 1, above=True), [0.5, 1.0], [0.0, 1.01, math.nan, -math.inf]),
])
def test_number_rules(rule, good, bad):
    assert all(rule.problem(value) is None for value in good)
    assert all(rule.problem(value) for value in bad)
