"""The steppers of inference, one place for all: ODE integrators, Eq. 3's ancestral step, EDM's Euler step.

Legend: dy/ds = f(s, y); ``grid`` s_0 < s_1 < ... < s_N (any spacing); h = s_{k+1} − s_k.

* :data:`SOLVERS` maps ``euler``, ``heun``, ``midpoint`` and ``rk4`` to one-step functions
  ``step(f, s0, s1, y) -> y1`` on the given grid (1, 2, 2 and 4 evaluations of f per step).
* :data:`ADAPTIVE` names torchdiffeq's adaptive solvers (``dopri5`` ...); they are passed through to
  ``torchdiffeq.odeint``, imported only when used (the optional ``ct`` extra). For them the grid only
  says where the solution is reported; the step sizes are chosen by the solver (rtol = atol = 1e-5).
* ``ancestral`` (:data:`STOCHASTIC`) is not an ODE solver: :func:`ancestral_step`, Eq. 3's posterior
  step z_t = a_t û + b_t z_{t−1} + sqrt(c_t) ε — NoProp-DT's inference, and NoProp-CT's on its t-grid
  (spec §2.4 "CT"). It is listed with the solvers so that one ``--solver`` flag names every scheme.
* :func:`edm_euler_step`: DiffusionBlocks' Euler step in σ from a denoised estimate D̂ (spec §4).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .errors import ConfigError

Field = Callable[[Tensor, Tensor], Tensor]


def euler_step(f: Field, s0: Tensor, s1: Tensor, y: Tensor) -> Tensor:
    """y + h f(s0, y) (first order)."""
    return y + (s1 - s0) * f(s0, y)


def heun_step(f: Field, s0: Tensor, s1: Tensor, y: Tensor) -> Tensor:
    """Explicit trapezoid (Heun / improved Euler, second order)."""
    h = s1 - s0
    k1 = f(s0, y)
    k2 = f(s1, y + h * k1)
    return y + 0.5 * h * (k1 + k2)


def midpoint_step(f: Field, s0: Tensor, s1: Tensor, y: Tensor) -> Tensor:
    """Explicit midpoint (second order)."""
    h = s1 - s0
    return y + h * f(s0 + 0.5 * h, y + 0.5 * h * f(s0, y))


def rk4_step(f: Field, s0: Tensor, s1: Tensor, y: Tensor) -> Tensor:
    """Classical fourth-order Runge–Kutta."""
    h = s1 - s0
    k1 = f(s0, y)
    k2 = f(s0 + 0.5 * h, y + 0.5 * h * k1)
    k3 = f(s0 + 0.5 * h, y + 0.5 * h * k2)
    k4 = f(s1, y + h * k3)
    return y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


def ancestral_step(
    z: Tensor, u_hat: Tensor, a: Tensor, b: Tensor, c: Tensor, *, noise: bool = True
) -> Tensor:
    """Eq. 3: z_t = a_t û_θ(z_{t−1}, x) + b_t z_{t−1} + sqrt(c_t) ε, ε ~ N(0, I) (no ε when
    ``noise`` is False: the posterior-mean path of deterministic inference)."""
    z = a * u_hat + b * z
    return z + c.sqrt() * torch.randn_like(z) if noise else z


def edm_euler_step(
    z: Tensor, denoised: Tensor, sigma: Tensor | float, sigma_next: Tensor | float
) -> Tensor:
    """z ← z + (σ_next − σ)·(z − D̂)/σ (DiffusionBlocks, spec §4; the authors' code, not the
    paper's sign typo). It moves z along the straight line from z to D̂: at σ_next = 0 it returns D̂."""
    return z + (sigma_next - sigma) * (z - denoised) / sigma


SOLVERS: dict[str, Callable[[Field, Tensor, Tensor, Tensor], Tensor]] = {
    "euler": euler_step,
    "heun": heun_step,
    "midpoint": midpoint_step,
    "rk4": rk4_step,
}
ADAPTIVE = ("dopri5", "dopri8", "bosh3", "adaptive_heun", "fehlberg2")
STOCHASTIC = ("ancestral",)
SOLVER_NAMES = (*SOLVERS, *ADAPTIVE, *STOCHASTIC)

#: torchdiffeq's name of each fixed-grid solver (for training the adjoint baseline).
TORCHDIFFEQ_FIXED = {"euler": "euler", "heun": "heun2", "midpoint": "midpoint", "rk4": "rk4"}


ODE_SOLVERS = (*SOLVERS, *ADAPTIVE)


def check_solver(name: str, *, allowed: Sequence[str] = ODE_SOLVERS) -> None:
    """Raise ConfigError (a ValueError) naming the allowed solvers if ``name`` is not one of them."""
    if name not in allowed:
        raise ConfigError(f"unknown --solver {name!r}; choose one of {', '.join(allowed)}")


def record_indices(steps: int, max_points: int = 11) -> list[int]:
    """Grid indices at which inference reports a read-out: ≤ ``max_points`` evenly spaced, incl. 0 and N."""
    if steps < 1:
        raise ConfigError(f"the number of inference steps must be >= 1 (got {steps})")
    n = min(steps, max_points - 1)
    return sorted({round(i * steps / n) for i in range(n + 1)})


def integrate(
    f: Field,
    y0: Tensor,
    grid: Tensor,
    solver: str,
    record: Sequence[int],
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> list[Tensor]:
    """Solve dy/ds = f(s, y) from y(s_0) = y0 along ``grid`` and return y at the ``record`` indices.

    Args:
        f: the vector field; called with a 0-dim ``s`` (grid dtype) and y shaped like ``y0``.
        y0: initial state, any shape.
        grid: s_0..s_N, shape (N+1,), strictly increasing (or decreasing).
        solver: a key of :data:`SOLVERS` (fixed grid) or one of :data:`ADAPTIVE` (torchdiffeq).
        record: sorted grid indices to return (e.g. :func:`record_indices`).

    Returns:
        ``len(record)`` tensors shaped like ``y0``.

    Raises:
        ConfigError: unknown solver.
    """
    check_solver(solver)
    field = f
    # the solver state stays in y0's dtype under --precision *-mixed (the field is a network that
    # autocast may run in bf16/fp16; the cast boundary is described in noprop/precision.py)
    f = lambda s, y: field(s, y).to(y0.dtype)  # noqa: E731
    if solver in ADAPTIVE:
        from torchdiffeq import odeint  # optional dependency (extra "ct")

        t = grid[list(record)].to(y0.dtype)
        if record[0] != 0:
            t = torch.cat([grid[:1].to(y0.dtype), t])
        ys = odeint(lambda s, y: f(s, y), y0, t, method=solver, rtol=rtol, atol=atol)
        return list(ys.unbind(0)[1:] if record[0] != 0 else ys.unbind(0))
    step = SOLVERS[solver]
    wanted = set(record)
    out = [y0] if 0 in wanted else []
    y = y0
    for k in range(grid.numel() - 1):
        y = step(f, grid[k], grid[k + 1], y)
        if k + 1 in wanted:
            out.append(y)
    return out
