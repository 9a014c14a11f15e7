"""Keep only the block being trained (and its optimiser state) on the accelerator (``--offload-blocks``).

NoProp-DT's training graph involves one block at a time, so in Algorithm-1 order (blocks outer) the
other T−1 blocks and their Adam moments can wait in host memory: accelerator memory then holds one
block's parameters, gradients, optimiser state and activations plus the head and W_Embed, whatever T
is. Blocks move when the trainer switches to the next block (T moves per epoch, not per step), and
all blocks are gathered on the accelerator for inference, which stores no activations or moments.

On a CPU-only run the home and compute devices coincide and this is a no-op.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from .callbacks import Callback

if TYPE_CHECKING:
    from .order import Step
    from .trainer import Trainer

HOST = torch.device("cpu")


def _move_optimizer_state(opt: torch.optim.Optimizer, device: torch.device) -> None:
    for state in opt.state.values():
        for k, v in state.items():
            if isinstance(v, torch.Tensor) and v.dim() > 0:  # Adam's scalar ``step`` stays put
                state[k] = v.to(device, non_blocking=True)


class BlockOffloader(Callback):
    """Moves units (blocks) between a ``home`` device (host) and the ``compute`` device."""

    def __init__(
        self,
        unit_modules: list[list[nn.Module]],
        optimizers: list[torch.optim.Optimizer],
        compute: torch.device,
        home: torch.device = HOST,
    ) -> None:
        self.unit_modules, self.optimizers = unit_modules, optimizers
        self.compute, self.home = compute, home
        self.active: int | None = None
        self.scatter()

    def _place(self, unit: int, device: torch.device) -> None:
        for m in self.unit_modules[unit]:
            m.to(device)  # keeps Parameter identity, so the optimiser's references stay valid
        _move_optimizer_state(self.optimizers[unit], device)

    def activate(self, unit: int) -> None:
        """Make ``unit`` the only unit on the compute device."""
        if self.active == unit:
            return
        if self.active is not None:
            self._place(self.active, self.home)
        self._place(unit, self.compute)
        self.active = unit

    def scatter(self) -> None:
        """Every unit at home (except the active one)."""
        for u in range(len(self.unit_modules)):
            if u != self.active:
                self._place(u, self.home)

    def gather(self) -> None:
        """Every unit on the compute device (for inference)."""
        for u in range(len(self.unit_modules)):
            for m in self.unit_modules[u]:
                m.to(self.compute)

    # -- callback points
    def on_step(self, trainer: Trainer, step: Step) -> None:
        # --offload-blocks needs --order blocks: one unit per step (none on an idle parallel step)
        for unit in step.units:
            self.activate(unit)

    def before_eval(self, trainer: Trainer) -> None:
        self.gather()

    def after_eval(self, trainer: Trainer) -> None:
        self.scatter()

    def on_fit_end(self, trainer: Trainer) -> None:
        self.gather()  # the caller evaluates and saves the whole model next
