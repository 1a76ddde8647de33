"""Tests for fox1/distributed.py: how a run is asked to stop (a real torchrun group is tested in test_train.py)."""
import signal

import pytest

from fox1.distributed import StopFlag


@pytest.fixture
def handlers():
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.mark.parametrize("first", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_asks_to_stop_at_the_step_end_and_a_second_ctrl_c_stops_at_once(handlers, capsys, first):
    stop = StopFlag(announce=True)
    assert not stop.requested
    signal.raise_signal(first)
    assert stop.requested and stop.signal == first
    assert "stopping when this step ends" in capsys.readouterr().err
    if first == signal.SIGINT:
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
