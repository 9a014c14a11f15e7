"""Test hook: ``$NOPROP_TEST_PAUSE_AT=POINT:EPOCH[:RANK]`` makes training announce itself and wait.

``train`` prints ``NOPROP_PAUSED POINT EPOCH pid PID rank RANK`` on stderr and sleeps (to be killed)
at that point: ``step`` (first step of the last block of that epoch), ``metrics`` (after the epoch's
metrics record, before its checkpoint) or ``checkpoint`` (halfway through writing the checkpoint's
temporary file). With RANK only that rank of a parallel run pauses. The kill-and-resume tests use it.
With ``$NOPROP_TEST_RELEASE=FILE`` the process goes on once FILE exists (the one-writer tests hold a
run mid-training that way and then let it finish).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from ..errors import ConfigError
from ..training.callbacks import Callback
from ..training.order import Step

PAUSE_ENV = "NOPROP_TEST_PAUSE_AT"
RELEASE_ENV = "NOPROP_TEST_RELEASE"
PAUSE_POINTS = ("step", "metrics", "checkpoint")


def pause_point() -> tuple[str, int] | None:
    """Parse ``$NOPROP_TEST_PAUSE_AT`` (``POINT[:EPOCH[:RANK]]``, EPOCH 1-based, default 1).

    With RANK, only that rank of a parallel run pauses (None is returned on the others)."""
    spec = os.environ.get(PAUSE_ENV, "")
    if not spec:
        return None
    point, _, rest = spec.partition(":")
    epoch, _, rank = rest.partition(":")
    if point not in PAUSE_POINTS or not (epoch or "1").isdigit() or not (rank or "0").isdigit():
        raise ConfigError(f"${PAUSE_ENV} must be POINT[:EPOCH[:RANK]] with POINT in {PAUSE_POINTS}")
    if rank and rank != os.environ.get("RANK", "0"):
        return None
    return point, int(epoch or 1)


def pause(point: str, epoch: int) -> None:
    """Announce the point (and this process) and wait to be killed, or released (module docstring)."""
    rank = os.environ.get("RANK", "0")
    print(
        f"NOPROP_PAUSED {point} {epoch} pid {os.getpid()} rank {rank}", file=sys.stderr, flush=True
    )
    release = os.environ.get(RELEASE_ENV)
    while release is None or not os.path.exists(release):
        time.sleep(60 if release is None else 0.05)


class PauseAtStep(Callback):
    """The ``step`` point: before the first step of the last unit in epoch ``epoch``."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_step(self, trainer: Any, step: Step) -> None:
        last = trainer.method.num_units - 1
        if trainer.state.epoch + 1 == self.epoch and last in step.units:
            epoch, self.epoch = self.epoch, -1  # once: a released process goes on
            pause("step", epoch)
