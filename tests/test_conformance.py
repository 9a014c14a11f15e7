"""The conformance suite: every registered method × task satisfies the method contract.

:class:`Conformance` is run by :class:`TestConformance` over every entry of ``noprop.METHODS`` and by
tests/test_toy_method.py over a method defined in one file of the tests; a new method needs nothing
here beyond (optionally) small options in :data:`FAST_OPTIONS`.

What every method must do, on an image task (1×8×8), a vector task (12 features) and, for the methods
that support it (``Method.tasks``), next-byte prediction on random 8-byte windows:
the loss is finite; predictions have shape (S, B, m); deterministic inference repeats exactly, and
stochastic inference repeats under a fixed seed; a checkpoint round trip (weights-only save/load of the
trainer state into a freshly built method) gives identical predictions; unit, shared and inert
parameters partition all parameters; a step of one unit leaves every other unit bit-identical; and, for
methods whose units train alone (``local_units``), a unit's loss is unchanged when the weights of
every other unit are perturbed (no forward dependence on other blocks, gradient or not).
"""

from __future__ import annotations

import pytest
import torch

from noprop import METHODS, Trainer, build_method, make_config
from noprop.precision import autocast
from noprop.tasks import ClassificationTask, LanguageTask
from noprop.training.checkpoint import load_checkpoint, save_checkpoint

#: options that keep each registered method's test small (a method not listed runs its defaults)
FAST_OPTIONS = {
    "dt": {"T": 3},
    "backprop": {"T": 3},
    "ct": {"inference_steps": 4, "t_samples": 2},
    "fm": {"inference_steps": 4, "t_samples": 2},
    "adjoint": {"inference_steps": 4, "adjoint_steps": 2},
}
CONFORMANCE_TASKS = {"image": (1, 8, 8), "vector": (12,), "text": (8,)}
#: the task (a key of noprop.tasks.TASKS) each conformance case poses; a method runs the cases of
#: the tasks in its ``tasks``
TASK_KIND = {"image": "classification", "vector": "classification", "text": "language"}
CLASSES, N = 4, 24
TEXT_MODEL = {"dataset": "stdlib", "context": 8, "width": 8, "heads": 2}


def make(case, embedding: str = "learned", seed: int = 0, precision: str = "32"):
    """(method, cfg, task, x, y) for a conformance case (``precision``: the run's --precision)."""
    name, task_name = case
    shape = CONFORMANCE_TASKS[task_name]
    g = torch.Generator().manual_seed(seed)
    extra: dict = {}
    if task_name == "text":  # random byte windows: x (N, L) uint8, next-byte labels (N, L)
        task = LanguageTask("stdlib", shape[0])
        x = torch.randint(0, 256, (N, *shape), generator=g, dtype=torch.uint8)
        y = torch.randint(0, 256, (N, *shape), generator=g)
        extra = TEXT_MODEL
    else:
        task = ClassificationTask.from_shape(shape, CLASSES)
        x, y = torch.randn(N, *shape, generator=g), torch.arange(N) % CLASSES
    cfg = make_config(method=name, embedding=embedding, embed_dim=5, seed=seed, precision=precision,
                      **FAST_OPTIONS.get(name, {}), **extra)  # fmt: skip
    return build_method(cfg, task, None, x, y), cfg, task, x, y


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def predictions(method, x, *, deterministic: bool, seed: int = 7) -> torch.Tensor:
    method.eval()
    torch.manual_seed(seed)
    return method.predict_steps(x, deterministic=deterministic)


class Conformance:
    """The method contract (module docstring); subclasses set ``method_names``."""

    method_names: list[str] = []
    #: the --precision every case runs under: the steps take it from the config, and each direct
    #: call of the method (loss, predict_steps) runs inside its own autocast region, as the trainer
    #: and evaluate() do (one region for a whole test would keep autocast's cache of bf16 weight
    #: copies across optimiser steps)
    precision = "32"

    def loss(self, method, x, y, unit):
        with autocast(self.precision, "cpu"):
            return method.loss(x, y, unit)

    def predictions(self, method, x, *, deterministic: bool, seed: int = 7) -> torch.Tensor:
        with autocast(self.precision, "cpu"):
            return predictions(method, x, deterministic=deterministic, seed=seed)

    def test_loss_is_finite_with_named_parts(self, case):
        method, _, _, x, y = make(case, precision=self.precision)
        for unit in range(method.num_units):
            loss, parts = self.loss(method, x, y, unit)
            assert loss.dim() == 0 and torch.isfinite(loss)
            assert loss.dtype == torch.float32  # the cast boundary: losses stay float32
            assert "loss" in parts and all(torch.isfinite(v).all() for v in parts.values())

    def test_prediction_shape(self, case):
        method, _, task, x, _ = make(case, precision=self.precision)
        logits = self.predictions(method, x, deterministic=False)
        y_shape = x.shape[: 1 + task.label_dims]  # one label per example, or per position (text)
        assert logits.shape[1:] == (*y_shape, task.num_classes)
        assert torch.isfinite(logits).all()

    def test_inference_repeats_exactly(self, case):
        method, _, _, x, _ = make(case, precision=self.precision)
        assert torch.equal(
            self.predictions(method, x, deterministic=True),
            self.predictions(method, x, deterministic=True),
        )
        assert torch.equal(
            self.predictions(method, x, deterministic=False, seed=3),
            self.predictions(method, x, deterministic=False, seed=3),
        )

    def test_checkpoint_round_trip_gives_identical_predictions(self, case, tmp_path):
        method, cfg, task, x, y = make(case, precision=self.precision)
        trainer = Trainer(method, cfg, torch.device("cpu"), task=task, progress=False)
        for unit in range(method.num_units):
            trainer.step(x, y, unit)
        path = tmp_path / "checkpoint.pt"
        save_checkpoint(path, {"trainer": trainer.state_dict()})
        fresh, _, _, _, _ = make(
            case, seed=1, precision=self.precision
        )  # other initial weights, same architecture
        other = Trainer(fresh, cfg, torch.device("cpu"), task=task, progress=False)
        other.load_state_dict(load_checkpoint(path)["trainer"])
        for det in (True, False):
            assert torch.equal(self.predictions(method, x, deterministic=det),
                               self.predictions(fresh, x, deterministic=det))  # fmt: skip

    def test_unit_shared_and_inert_parameters_partition_all_parameters(self, case):
        method, _, _, _, _ = make(case, precision=self.precision)
        groups = [method.unit_parameters(u) for u in range(method.num_units)]
        groups += [method.shared_parameters(), method.inert_parameters()]
        ids = [id(p) for g in groups for p in g]
        assert len(ids) == len(set(ids)), "a parameter belongs to two groups"
        assert set(ids) == {id(p) for p in method.parameters()}, "a parameter belongs to no group"

    def test_a_step_of_one_unit_touches_no_other_unit(self, case):
        method, cfg, task, x, y = make(case, precision=self.precision)
        trainer = Trainer(method, cfg, torch.device("cpu"), task=task, progress=False)
        for unit in range(method.num_units):
            before = [snapshot(m) for u in range(method.num_units) for m in method.unit_modules(u)]
            trainer.step(x, y, unit)
            after = [snapshot(m) for u in range(method.num_units) for m in method.unit_modules(u)]
            mods = [u for u in range(method.num_units) for _ in method.unit_modules(u)]
            for u, a, b in zip(mods, before, after, strict=True):
                same = all(torch.equal(a[k], b[k]) for k in a)
                assert same == (u != unit) or method.num_units == 1, (unit, u)

    def test_a_units_loss_does_not_read_other_units(self, case):
        """Perturb every other unit's weights and BN statistics: unit t's loss is unchanged, bit for
        bit, under the same RNG state (catches forward use of other blocks, even without gradient)."""
        method, _, _, x, y = make(case, precision=self.precision)
        if not method.local_units or method.num_units < 2:
            pytest.skip("one network: its unit is every block")
        for unit in range(method.num_units):
            torch.manual_seed(5)
            loss = self.loss(method, x, y, unit)[0]
            saved = snapshot(method)
            with torch.no_grad():
                for u in range(method.num_units):
                    if u != unit:
                        for m in method.unit_modules(u):
                            for t in [*m.parameters(), *m.buffers()]:
                                if t.is_floating_point():
                                    t.add_(torch.randn_like(t) + 1.0)
            torch.manual_seed(5)
            assert torch.equal(self.loss(method, x, y, unit)[0], loss), unit
            method.load_state_dict(saved)


class TestConformance(Conformance):
    """Every registered method."""

    @staticmethod
    def method_names() -> list[str]:
        return list(METHODS)


class TestConformanceBF16(TestConformance):
    """Every registered method under ``--precision bf16-mixed`` (CPU autocast in bfloat16)."""

    precision = "bf16-mixed"
