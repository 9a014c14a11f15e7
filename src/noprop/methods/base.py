"""The contract every training method implements, and what it is built from.

A method owns its blocks, the class embedding W_Embed and the head p̂_θout. Training is organised in
*units*: groups of parameters that are updated together by one optimiser. NoProp-DT has T units (θ_t,
one per block), which is what makes block-local and block-parallel training possible; end-to-end
methods (back-prop, CT, FM, adjoint) have a single unit. Parameters shared by every unit (the head,
a learned W_Embed, a learned schedule) are listed separately and updated on every step.

A method class describes itself: ``name`` (the ``--method`` value), ``label`` (tables and figures),
``continuous_time``, ``solvers`` (the ``--solver`` values it accepts), its own option dataclass
``Config`` (one docstring per field: the ``--help`` text) and :meth:`Method.from_config`. Adding a
method is one file that defines such a class plus one line in :data:`noprop.methods.METHODS`.

Legend: x input (B, ...), y labels (B,), z noised label embedding (B, d), W = W_Embed (m, d).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..models import build_embedding, build_head
from ..models.config import ModelConfig
from ..models.embeddings import ClassEmbedding
from ..options import at_least, check_choices
from ..solvers import ODE_SOLVERS, STOCHASTIC, check_solver, integrate, record_indices
from ..tasks import BlockFamily, Task


@dataclass(frozen=True, kw_only=True)
class MethodOptions:
    """Base of every method's option dataclass (``Method.Config``)."""

    def __post_init__(self) -> None:
        check_choices(self)


@dataclass(frozen=True, kw_only=True)
class BlockOptions(MethodOptions):
    """Options of the methods made of T blocks (dt, backprop; DiffusionBlocks changes the default)."""

    T: int = 10
    """number of blocks: NoProp-DT's diffusion steps, the back-prop twin's chained blocks, and
    DiffusionBlocks' B (its own default: 3)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least("T", self.T)


@dataclass(frozen=True, kw_only=True)
class ContinuousTimeOptions(MethodOptions):
    """Inference options of the methods that integrate over t ∈ [0, 1] (ct, fm, adjoint)."""

    inference_steps: int = 1000
    """ct/fm/adjoint: ODE/SDE steps at inference (the paper: 1000)"""
    val_inference_steps: int | None = None
    """ct/fm/adjoint: steps of the per-epoch validation only (default: --inference-steps); fewer
    make each epoch's model selection cheaper, the final test keeps --inference-steps"""

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least("inference_steps", self.inference_steps)
        if self.val_inference_steps is not None:
            at_least("val_inference_steps", self.val_inference_steps)


@dataclass(frozen=True, kw_only=True)
class TimeSamplingOptions(ContinuousTimeOptions):
    """ct and fm: the Monte-Carlo estimate of their t-expectation (Eqs. 9 and 11)."""

    t_samples: int = 8
    """ct/fm: independent (t, z_t) draws per image in each training step, sharing its image
    features (the paper: 1; 8 chosen on MNIST validation accuracy, BENCHMARKS.md)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least("t_samples", self.t_samples)


@dataclass(frozen=True)
class BuildContext:
    """Everything a method is built from besides its own options: the task, the model options, the
    seed, and the training tensors (the prototype embedding is initialised from them)."""

    task: Task
    model: ModelConfig
    seed: int = 0
    train_x: Tensor | None = None
    train_y: Tensor | None = None

    def embedding_and_head(self) -> tuple[ClassEmbedding, nn.Module]:
        """W_Embed (seeded by ``seed``) and the head p̂_θout, shared by every method."""
        m = self.model
        emb = build_embedding(
            m.embedding,
            self.task.num_classes,
            embed_dim=m.embed_dim if m.embed_dim is not None else self.task.default_embed_dim,
            train_x=self.train_x,
            train_y=self.train_y,
            seed=self.seed,
        )
        head = build_head(m.head, emb.weight, sigma=m.posterior_sigma, init=m.head_init)
        return emb, head

    def block(self, family: BlockFamily, d: int) -> nn.Module:
        """One block of the task for label embeddings of dimension ``d`` (``--block``)."""
        return self.task.build_block(family, self.model, d)


def repeat_rows(t: Tensor, k: int) -> Tensor:
    """``t`` stacked ``k`` times along dim 0: row j·B + i is row i (any number of dimensions)."""
    return t.repeat(k, *([1] * (t.dim() - 1)))


@dataclass(frozen=True)
class Readout:
    """One read-out along an inference chain, as :meth:`Method.chain` yields it.

    ``name`` is ``kind_index`` — ``head_3`` the head p̂_θout on z_3, ``p_3`` block 3's own softmax on
    its input, ``near_250`` the nearest embedding at grid point 250 — or a bare kind (``output``).
    ``logits`` (C, B[, L], m) for C chains (chain s: rows s·B .. s·B + B − 1 of the inputs repeated);
    ``state`` the z it reads, (C, B[, L], d), or the residual stream h_l (back-prop on text);
    ``position`` where along the chain it reads, in [0, 1] (t/T, or k/N on the solver's grid).
    """

    name: str
    logits: Tensor
    state: Tensor | None
    position: float

    @property
    def kind(self) -> str:
        return kind_of(self.name)


@dataclass(frozen=True)
class ChainSpec:
    """What :meth:`Method.chain` was asked for, as a method's :meth:`Method.walk` reads it."""

    #: C, the number of chains (1 when ``deterministic``)
    chains: int
    deterministic: bool
    #: ``--inference-steps`` / ``--solver`` for this call (None: the method's own)
    steps: int | None = None
    solver: str | None = None
    #: the read-out kinds asked for (None: every one)
    kinds: frozenset[str] | None = None

    def wants(self, kind: str) -> bool:
        return self.kinds is None or kind in self.kinds


def kind_of(name: str) -> str:
    """``head`` of ``head_3``; a name without an index is its own kind (``output``)."""
    return name.rsplit("_", 1)[0] if name.rsplit("_", 1)[-1].isdigit() else name


def chain_features(block: nn.Module, x: Tensor, chains: int) -> Tensor:
    """A two-branch block's input features (``block.encode_x``) for ``chains`` chains: computed once
    per input, then repeated (row s·B + i belongs to input i), instead of encoding x ``chains`` times."""
    h_x = block.encode_x(x)
    return h_x if chains == 1 else repeat_rows(h_x, chains)


def block_logits(block: nn.Module, x: Tensor, z: Tensor, chains: int) -> Tensor:
    """``block(x, z)`` for z of ``chains``·B rows: through :func:`chain_features` when the block has
    the two-branch split (``encode_x``/``fuse``), else on x repeated (any ``forward(x, z)`` block)."""
    if chains == 1:
        return block(x, z)
    if hasattr(block, "encode_x") and hasattr(block, "fuse"):
        return block.fuse(chain_features(block, x, chains), z)
    return block(repeat_rows(x, chains), z)


def by_chain(t: Tensor, chains: int) -> Tensor:
    """(C·B, ...) → (C, B, ...)."""
    return t.view(chains, t.shape[0] // chains, *t.shape[1:])


class Method(nn.Module):
    """Base class: subclasses implement :meth:`from_config`, :meth:`loss`, :meth:`chain` and
    :meth:`readout_names` (inference is :meth:`chain`; the rest is derived from it)."""

    #: the ``--method`` value
    name: ClassVar[str] = "base"
    #: how tables and figures name the method
    label: ClassVar[str] = "base"
    #: the method's options (a frozen :class:`MethodOptions` dataclass)
    Config: ClassVar[type[MethodOptions]] = MethodOptions
    default_optimizer: ClassVar[str] = "adamw"
    #: True for methods integrating over t ∈ [0, 1] (ct, fm, adjoint); their ``predict_steps`` also
    #: takes ``steps`` and ``solver`` (see :class:`ContinuousTimeMethod`). Discrete methods ignore both.
    continuous_time: ClassVar[bool] = False
    #: the ``--solver`` values the method's inference accepts (empty: it has no solver)
    solvers: ClassVar[tuple[str, ...]] = ()
    #: True when every unit's loss reads only its own unit and the shared parameters, so units may
    #: train on different ranks (``--parallel blocks``) or in one vmapped step
    local_units: ClassVar[bool] = False
    #: True when the blocks share one structure and one per-block loss ``block_loss(logits, u_y, y,
    #: eps_T, weight, head)`` over a fixed marginal ``schedule``, so ``--parallel fused`` can vmap
    #: all of them in one step (parallel/fused.py; NoProp-DT)
    fusable: ClassVar[bool] = False
    #: the task names (:data:`noprop.tasks.TASKS`) the method can be built for
    tasks: ClassVar[tuple[str, ...]] = ("classification",)
    #: what ``predict_steps``'s read-outs are, as the x-axis of a per-step figure (discrete methods)
    step_axis: ClassVar[str] = "step t (read-out of z_t; t = 0 is the noise z_0)"
    #: label dimensions per example of the task it was built for (``Task.label_dims``): z has shape
    #: (*x.shape[: 1 + label_dims], d), one noised label embedding per label
    label_dims: int = 0
    #: whether two inference chains on one input differ (False: a network without sampled noise, so
    #: mixtures of chains and the deterministic chain add nothing)
    stochastic: ClassVar[bool] = True

    @classmethod
    def from_config(cls, options: Any, ctx: BuildContext) -> Method:
        """Build the method from its options; the caller has seeded torch's global RNG."""
        raise NotImplementedError

    @classmethod
    def check_task(cls, options: Any, task: str) -> None:
        """A one-line ConfigError for options the task (a key of :data:`noprop.tasks.TASKS`)
        cannot take; called when the run config is made (default: every option fits)."""

    @classmethod
    def units_for(cls, options: Any) -> int:
        """The number of units a method built from ``options`` has (known before building it)."""
        return 1

    def __init__(self, embedding: ClassEmbedding, head: nn.Module) -> None:
        super().__init__()
        self.embedding = embedding
        self.head = head

    @property
    def num_units(self) -> int:
        return 1

    def unit_modules(self, unit: int) -> list[nn.Module]:
        """Modules whose parameters form unit ``unit`` (θ_t for DT)."""
        raise NotImplementedError

    def unit_parameters(self, unit: int) -> list[nn.Parameter]:
        return [p for m in self.unit_modules(unit) for p in m.parameters()]

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters every unit's loss touches: head θ_out and, when learned, W_Embed."""
        params = list(self.head.parameters())
        if self.embedding.learnable:
            params.append(self.embedding.weight)
        return params

    def inert_parameters(self) -> list[nn.Parameter]:
        """Parameters no loss reads and no optimiser updates (e.g. FM's head with a fixed W_Embed)."""
        return []

    def params_per_block(self) -> int:
        """Trainable parameters of one block (v2 Table 5 counts; excludes W_Embed and the head)."""
        return sum(p.numel() for p in self.unit_parameters(0))

    def loss(self, x: Tensor, y: Tensor, unit: int) -> tuple[Tensor, dict[str, Tensor]]:
        """Scalar training loss of ``unit`` on a batch, and named components for logging."""
        raise NotImplementedError

    # ------------------------------------------------------------- inference: the chain protocol
    def chain(
        self,
        x: Tensor,
        *,
        chains: int = 1,
        deterministic: bool = False,
        steps: int | None = None,
        solver: str | None = None,
        kinds: Collection[str] | None = None,
    ) -> Iterator[Readout]:
        """The inference trajectory of ``chains`` chains on inputs x: every read-out the method
        defines (:class:`Readout`), in chain order — the one place a method's sampler is written
        (its :meth:`walk`).

        Everything that runs inference consumes it: :meth:`predict_steps` (training's validation,
        ``eval``, ``eval --steps``), :meth:`final_logits` (``predict``, ``eval --chains``), the fair
        read-outs of text runs (:mod:`noprop.runs.readouts`) and the lab's figures. ``kinds``: yield
        (and compute) only read-outs of these kinds (e.g. ``{self.prediction_kind}``). Lazy: a
        consumer that stops early runs no later block. ``deterministic``: z_0 = its mode and no
        sampled noise (one chain). ``steps``/``solver``: methods with an inference solver only
        (defaults: ``--inference-steps`` / ``--solver``). Chain s draws the random numbers the
        method's inference draws on x repeated ``chains`` times (rows s·B .. s·B + B − 1).
        The arguments are checked here, before the first read-out is asked for.
        """
        if chains < 1:
            raise ConfigError(f"--chains must be >= 1 (got {chains})")
        if (steps is not None or solver is not None) and not self.solvers:
            raise ConfigError(
                f"--method {self.name} has no inference steps or solver (its chain has one step "
                "per block)"
            )
        spec = ChainSpec(1 if deterministic else chains, deterministic, steps, solver,
                         None if kinds is None else frozenset(kinds))  # fmt: skip
        return self.walk(x, spec)

    def walk(self, x: Tensor, spec: ChainSpec) -> Iterator[Readout]:
        """The method's sampler (a generator under ``torch.no_grad()``): the read-outs of
        ``spec.chains`` chains on x, those of the kinds ``spec.wants``; called by :meth:`chain`."""
        raise NotImplementedError

    def readout_names(self) -> list[str]:
        """The names :meth:`chain` yields at the default steps, in order (the candidates of a fair
        read-out); a method may leave some out (back-prop on text: only its ``output``)."""
        raise NotImplementedError

    @property
    def prediction_kind(self) -> str:
        """The kind of read-out that is the method's prediction after each step (the paper's)."""
        return "head"

    def paper_readout(self) -> str:
        """The read-out the paper defines: the last one of :attr:`prediction_kind`."""
        return [n for n in self.readout_names() if kind_of(n) == self.prediction_kind][-1]

    def predict_steps(
        self,
        x: Tensor,
        *,
        deterministic: bool = False,
        steps: int | None = None,
        solver: str | None = None,
    ) -> Tensor:
        """Logits of the prediction read out after every inference step, (S, B[, L], m): the
        :attr:`prediction_kind` read-outs of one :meth:`chain`; the last is the prediction."""
        with torch.no_grad():
            kinds = {self.prediction_kind}
            return torch.stack([
                r.logits[0] for r in self.chain(x, deterministic=deterministic, steps=steps,
                                                solver=solver, kinds=kinds)
            ])  # fmt: skip

    @torch.no_grad()
    def final_logits(self, x: Tensor, *, chains: int = 1, deterministic: bool = False) -> Tensor:
        """The prediction's logits of ``chains`` chains, (C, B[, L], m) (deterministic: C = 1)."""
        last = None
        for r in self.chain(x, chains=1 if deterministic else chains, deterministic=deterministic,
                            kinds={self.prediction_kind}):  # fmt: skip
            last = r
        assert last is not None, f"{self.name}'s chain yields no {self.prediction_kind} read-out"
        return last.logits

    def predict(self, x: Tensor, *, deterministic: bool = False) -> Tensor:
        return self.final_logits(x, deterministic=deterministic)[0]

    @contextlib.contextmanager
    def validating(self) -> Iterator[None]:
        """Inference settings of the per-epoch validation (default: the same as the test's)."""
        yield

    def compile_inference(self, batch_size: int) -> float:
        """Compile the per-step part of inference with ``torch.compile`` (inductor); returns the
        compile seconds. Only where it was measured faster (BENCHMARKS.md, "torch.compile"): the
        weights and ``state_dict`` are untouched, so checkpoints load with or without it."""
        raise ConfigError(
            f"--compile is offered for --method ct and fm only, not {self.name} (torch.compile "
            "measured no faster for the dt block and the back-prop twin: BENCHMARKS.md)"
        )

    def output_embeddings(self) -> Tensor:
        """The output space's class vectors (m, d), which the chain's states move towards: W_Embed
        (DiffusionBlocks: its normalised Ê; back-prop on text: the tied unembedding)."""
        return self.embedding.weight

    def z_shape(self, x: Tensor) -> tuple[int, ...]:
        """Shape of z for inputs ``x``: (B, d) for classification, (B, L, d) for next-token tasks."""
        return (*x.shape[: 1 + self.label_dims], self.embedding.dim)


class BlockwiseMethod(Method):
    """A method whose units are its blocks: ``self.blocks`` (an ``nn.ModuleList``, block t = unit t
    − 1), trained one at a time; ``options.T`` is the number of blocks (DT, DiffusionBlocks)."""

    local_units = True

    @classmethod
    def units_for(cls, options: Any) -> int:
        return options.T

    @property
    def T(self) -> int:
        return len(self.blocks)

    @property
    def num_units(self) -> int:
        return len(self.blocks)

    def unit_modules(self, unit: int) -> list[nn.Module]:
        return [self.blocks[unit]]


class ContinuousTimeMethod(Method):
    """Shared inference plumbing of CT, FM and the adjoint baseline (one network for all t ∈ [0, 1]).

    Built from its options (a :class:`ContinuousTimeOptions` with a ``solver``): ``inference_steps``
    and ``solver`` are the defaults of :meth:`chain`; plain attributes, so an evaluation sweep may set
    them (see runs/sweep.py).
    """

    continuous_time = True
    solvers = ODE_SOLVERS
    #: whether ``--compile`` is offered (where torch.compile was measured; BENCHMARKS.md)
    compilable: ClassVar[bool] = False

    def __init__(
        self, block: nn.Module, embedding: ClassEmbedding, head: nn.Module, options: Any
    ) -> None:
        super().__init__(embedding, head)
        self.block = block  # the one network for every t: the single training unit
        # plain attributes read from the options once: an evaluation sweep may set them
        self.inference_steps: int = options.inference_steps
        self.val_inference_steps: int | None = options.val_inference_steps
        self.solver: str = options.solver
        self.t_samples: int = getattr(options, "t_samples", 1)  # ct/fm (TimeSamplingOptions)
        self._compiled_fuse: tuple[Any, int] | None = None  # compile_inference()

    def block_fuse(self, h_x: Tensor, z: Tensor, t: Tensor | float) -> Tensor:
        """``block.fuse`` (label, time and fusion layers on cached image features), or its
        compiled version at inference once :meth:`compile_inference` ran."""
        compiled = self._compiled_fuse
        # inference only, and only for the block it was compiled from (not a copy's)
        if compiled is not None and compiled[1] == id(self.block) and not torch.is_grad_enabled():
            return compiled[0](h_x, z, t)
        return self.block.fuse(h_x, z, t)

    def compile_inference(self, batch_size: int) -> float:
        """``torch.compile`` ``block.fuse`` for inference; the image branch runs once per input and
        stays eager. Compiled here, in eval mode, on a ``batch_size`` warm-up batch, so the compile
        time is reported apart; another batch shape (a last partial batch, N·B chains) compiles
        once more, with dynamic shapes, inside the evaluation that meets it."""
        if not self.compilable:
            return super().compile_inference(batch_size)
        if self.label_dims:
            raise ConfigError(
                f"--compile was measured for image blocks only; --method {self.name} on text runs eager"
            )
        compiled = torch.compile(self.block.fuse)
        # not a registered attribute: state_dict ignores it; copies and pickles drop it
        self._compiled_fuse = (compiled, id(self.block))
        p = next(self.block.parameters())
        h_x = torch.zeros(batch_size, self.feature_dim, device=p.device)
        z = torch.zeros(batch_size, self.embedding.dim, device=p.device)
        was_training = self.training
        self.eval()
        start = time.perf_counter()
        with torch.no_grad():
            compiled(h_x, z, torch.zeros((), device=p.device))
        seconds = time.perf_counter() - start
        self.train(was_training)
        return seconds

    @property
    def feature_dim(self) -> int:
        """Width of the image features h_x (the CT block's branches are all this wide)."""
        return self.block.time[0].out_features

    def __getstate__(self) -> dict[str, Any]:
        # the compiled function closes over this block: a copy must not run the original's weights
        return {**self.__dict__, "_compiled_fuse": None}

    def unit_modules(self, unit: int) -> list[nn.Module]:
        return [self.block]

    @contextlib.contextmanager
    def validating(self) -> Iterator[None]:
        """``--val-inference-steps`` (when given) replaces ``--inference-steps`` for validation."""
        if self.val_inference_steps is None:
            yield
            return
        test_steps, self.inference_steps = self.inference_steps, self.val_inference_steps
        try:
            yield
        finally:
            self.inference_steps = test_steps

    def inference_options(self, steps: int | None, solver: str | None) -> tuple[int, str]:
        """(steps, solver) with None replaced by the defaults; ConfigError for bad values."""
        steps = self.inference_steps if steps is None else steps
        solver = self.solver if solver is None else solver
        record_indices(steps)  # validates steps >= 1
        check_solver(solver, allowed=self.solvers)
        return steps, solver

    def sample_times(self, h_x: Tensor, u_y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """K = ``t_samples`` independent t ~ U(0, 1) per label; h_x and u_y repeated to match.

        The t-expectation of Eqs. 9 and 11 is estimated with K draws per example instead of one: the
        objective and each t's distribution are unchanged (every row still has t ~ U(0, 1), i.i.d.),
        the estimator's variance drops, and the image branch, which holds most of the block's FLOPs,
        still runs once per image; only the cheap label/time/fusion layers run K times. [I]: the
        paper draws one t per example (Algorithm 2); K = 1 reproduces that exactly.

        On text (a label per position) t is drawn per position ([I]): positions are separate
        predictions — a position's z reaches only its own logits — so each one is its own example of
        Eqs. 9/11, as DiffusionBlocks draws σ per position; the context is still encoded once.

        Args:
            h_x: image features (B, F) or context features (B, L, F); u_y: clean label embeddings
                (B, d) or (B, L, d).

        Returns:
            (h_x, u_y, t) of shapes (K·B, [L,] F), (K·B, [L,] d), (K·B[, L]); row k·B + i belongs
            to example i.
        """
        if self.t_samples > 1:
            h_x, u_y = repeat_rows(h_x, self.t_samples), repeat_rows(u_y, self.t_samples)
        return h_x, u_y, torch.rand(u_y.shape[:-1], device=u_y.device)

    def chain_kinds(self) -> tuple[str, ...]:
        """The read-outs at every recorded grid point, in order (default: the head on z_t)."""
        return ("head",)

    def chain_readout(self, kind: str, h_x: Tensor, z: Tensor, t: Tensor) -> Tensor:
        """Logits of read-out ``kind`` at (z_t, t) from the cached features h_x."""
        if kind == "head":
            return self.read_out(z)
        raise ValueError(f"{self.name} has no read-out kind {kind!r}")

    def readout_names(self) -> list[str]:
        """``kind_k`` for every kind of :meth:`chain_kinds` at every recorded grid point k of the
        default ``--inference-steps`` (:func:`noprop.solvers.record_indices`)."""
        record = record_indices(self.inference_steps)
        return [f"{kind}_{k}" for k in record for kind in self.chain_kinds()]

    @torch.no_grad()
    def walk(self, x: Tensor, spec: ChainSpec) -> Iterator[Readout]:
        """Integrate from z_0 (t = 0) to z_1 with the input features h_x computed once per input
        (and repeated for the chains); read out at ≤ 11 evenly spaced grid points incl. the last
        (text: every position on the one t-grid). See :meth:`Method.chain`."""
        steps, solver = self.inference_options(spec.steps, spec.solver)
        C, deterministic = spec.chains, spec.deterministic
        record = record_indices(steps)
        h_x = chain_features(self.block, x, C)
        x_rows = x if C == 1 else repeat_rows(x, C)
        z_0 = self.initial_z(x_rows, deterministic)
        zs = self.trajectory(h_x, z_0, steps, solver, record, deterministic=deterministic)
        wanted = [k for k in self.chain_kinds() if spec.wants(k)]
        for k, z in zip(record, zs, strict=True):
            t = torch.tensor(k / steps, device=z.device)
            for kind in wanted:
                logits = self.chain_readout(kind, h_x, z, t)
                yield Readout(f"{kind}_{k}", by_chain(logits, C), by_chain(z, C), k / steps)

    def trajectory(
        self,
        h_x: Tensor,
        z_0: Tensor,
        steps: int,
        solver: str,
        record: list[int],
        *,
        deterministic: bool,
    ) -> list[Tensor]:
        """z at the grid indices ``record`` of the ``steps``-step inference over t ∈ [0, 1]: a
        stochastic sampler (:data:`~noprop.solvers.STOCHASTIC`, :meth:`sample`; noise unless
        ``deterministic``) or an ODE solver (:meth:`ode`)."""
        if solver in STOCHASTIC:
            return self.sample(h_x, z_0, steps, record, not deterministic)
        return self.ode(h_x, z_0, steps, solver, record)

    def sample(
        self, h_x: Tensor, z_0: Tensor, steps: int, record: list[int], noise: bool
    ) -> list[Tensor]:
        """A stochastic sampler (CT's ancestral a/b/c steps); the ODE methods have none."""
        raise ConfigError(f"--method {self.name} has no stochastic sampler")

    def ode(
        self, h_x: Tensor, z_0: Tensor, steps: int, solver: str, record: list[int]
    ) -> list[Tensor]:
        """Default (FM, adjoint): dz/dt = :meth:`velocity` on the uniform t-grid."""
        t_grid = torch.linspace(0.0, 1.0, steps + 1, device=z_0.device)
        return integrate(lambda t, z: self.velocity(h_x, z, t), z_0, t_grid, solver, record)

    def velocity(self, h_x: Tensor, z: Tensor, t: Tensor) -> Tensor:
        """dz/dt of the inference ODE from cached image features h_x (FM: v_θ, adjoint: f_θ)."""
        raise NotImplementedError

    def read_out(self, z: Tensor) -> Tensor:
        """Class logits from z_t: the head p̂_θout (CT and adjoint; FM reads the nearest embedding)."""
        return self.head(z, self.embedding.weight)

    def initial_z(self, x: Tensor, deterministic: bool) -> Tensor:
        """z_0 ~ N(0, I), or its mode z_0 = 0 when ``deterministic``; shape :meth:`z_shape`
        ((B, d), or (B, L, d) on text, in W_Embed's dtype: x then holds byte ids)."""
        shape = self.z_shape(x)
        dtype = x.dtype if x.is_floating_point() else self.embedding.weight.dtype
        if deterministic:
            return torch.zeros(shape, device=x.device, dtype=dtype)
        return torch.randn(shape, device=x.device, dtype=dtype)
