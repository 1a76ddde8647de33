"""The processes of a run: the torch.distributed process group (NCCL under torchrun on GPUs, gloo on CPUs, a
1-process group for a plain `python train.py`), an all-reduce of a few numbers, and how a run is asked to stop
(SIGTERM or Ctrl-C: save when the step ends).
"""
from __future__ import annotations

import os
import signal
import socket
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Dist:
    """NCCL under torchrun on GPUs, gloo on CPU; a 1-process group when not launched by torchrun, so a
    plain `python train.py` runs the very same FSDP2 code path."""
    if "RANK" not in os.environ:  # not launched by torchrun: be rank 0 of 1 on a free local port
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(free_port()))
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
    else:
        dist.init_process_group("gloo")
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    return Dist(dist.get_rank(), dist.get_world_size(), device)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def global_mean(values: list[float], env: Dist) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=env.device)
    dist.all_reduce(t)
    return (t / env.world_size).tolist()


class StopFlag:
    """SIGTERM (what schedulers send before a kill) or Ctrl-C: the loop saves a checkpoint when the current step
    ends and the run exits with 128 + the signal's number. A second Ctrl-C stops at once, without saving."""

    def __init__(self, announce: bool):
        self.signal: int | None = None
        self.announce = announce
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.signal == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum
        if self.announce:
            print(f"\n{signal.Signals(signum).name}: stopping when this step ends (a step of a large model can take "
                  f"minutes), then saving a checkpoint; Ctrl-C again stops at once without saving", file=sys.stderr)
