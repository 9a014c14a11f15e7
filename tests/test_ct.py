"""NoProp-CT, NoProp-FM and the adjoint baseline: learned schedule, blocks, solvers, inference, digits."""

import json
import math

import pytest
import torch

from noprop import build_method
from noprop.config import make_config
from noprop.errors import ConfigError
from noprop.models.blocks import count_parameters
from noprop.models.ct_blocks import build_ct_block
from noprop.runs import sweep_steps, train
from noprop.schedules import LearnedSchedule
from noprop.solvers import ADAPTIVE, SOLVERS, integrate, record_indices

from .problems import tiny_data

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Every model here is tiny: one thread is faster than two and immune to oversubscription."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_schedule(seed: int, **kw) -> LearnedSchedule:
    torch.manual_seed(seed)
    s = LearnedSchedule(**kw)
    with torch.no_grad():
        for p in s.parameters():
            p.copy_(3 * torch.randn_like(p))
    return s


def tiny_ct(method: str, embedding: str = "one-hot", **kw):
    x, y = tiny_data()
    cfg = make_config(method=method, embedding=embedding, block="mlp", embed_dim=6, **kw)
    return build_method(cfg, x.shape[1:], 4, x, y), (x, y)


# ------------------------------------------------------------------ learned schedule (App. B)
@pytest.mark.parametrize("seed", range(5))
def test_gamma_is_decreasing_with_its_endpoints_for_random_parameters(seed):
    s = random_schedule(seed)
    t = torch.linspace(0, 1, 2001, dtype=F64)
    with torch.no_grad():
        gamma = s.gamma(t)
        gamma_0, gamma_1 = s.gamma_endpoints(F64)
        assert gamma_1 > gamma_0
        assert torch.allclose(gamma[0], gamma_1) and torch.allclose(gamma[-1], gamma_0)
        assert bool((gamma[1:] < gamma[:-1]).all())  # strictly decreasing: SNR increases to t = 1
        assert bool((s.snr_prime(t) > 0).all())
        alpha_bar = s.alpha_bar(t)
        assert bool((alpha_bar[1:] > alpha_bar[:-1]).all())
        assert torch.allclose(s.snr(t), alpha_bar / (1 - alpha_bar))  # Eq. 65 vs σ(−γ)


def test_initial_schedule_is_linear_between_the_configured_endpoints():
    s = LearnedSchedule(gamma_min=-5.0, gamma_max=5.0)
    t = torch.linspace(0, 1, 11, dtype=F64)
    with torch.no_grad():
        assert torch.allclose(s.gamma(t), 5.0 - 10.0 * t, atol=0.2)  # γ̄(t) ≈ t at init
    with pytest.raises(ConfigError):
        LearnedSchedule(gamma_min=1.0, gamma_max=1.0)


@pytest.mark.parametrize("seed", range(3))
def test_snr_prime_matches_finite_differences(seed):
    s = random_schedule(seed)
    t, h = torch.linspace(0.01, 0.99, 50, dtype=F64), 1e-6
    with torch.no_grad():
        fd = (s.snr(t + h) - s.snr(t - h)) / (2 * h)
        assert torch.allclose(s.snr_prime(t), fd, rtol=1e-6, atol=1e-9)
        _, dgamma = s.gamma_and_grad(t)
        assert torch.allclose(dgamma, (s.gamma(t + h) - s.gamma(t - h)) / (2 * h), rtol=1e-6)


def test_dt_weights_approach_half_snr_prime_as_T_grows():
    """(T/2)(SNR(t) − SNR(t − 1/T)) → ½ SNR′(t) (Eqs. 59–60) for the same learned schedule, at rate 1/T."""
    s = random_schedule(0, gamma_min=-5.0, gamma_max=5.0)
    t = torch.tensor([0.2, 0.5, 0.8, 1.0], dtype=F64)
    errors = []
    with torch.no_grad():
        target = 0.5 * s.snr_prime(t)
        for T in (10, 100, 1000, 10000):
            dt_weight = T / 2 * (s.snr(t) - s.snr(t - 1 / T))
            errors.append(((dt_weight - target).abs() / target).max().item())
    assert all(b < a / 5 for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] < 1e-2, errors


def test_schedule_trains_jointly_and_is_not_counted_in_the_block():
    method, (x, y) = tiny_ct("ct")
    shared = {id(p) for p in method.shared_parameters()}
    assert all(id(p) in shared for p in method.schedule.parameters())
    assert method.params_per_block() == count_parameters(method.block)
    loss, parts = method.loss(x, y, 0)
    loss.backward()
    assert all(p.grad is not None for p in method.schedule.parameters())
    assert {"loss", "l2", "ce", "kl", "gamma_0", "gamma_1"} <= set(parts)
    assert all(not v.requires_grad for v in parts.values())


# -------------------------------------------------------------------- blocks (Table 5)
TABLE5_CT = {  # (in_shape, m): (one-hot, learned-20, prototype) in millions, v2 Table 5
    ((1, 28, 28), 10): (0.87, 0.87, 1.48),
    ((3, 32, 32), 10): (1.16, 1.17, 2.07),
    ((3, 32, 32), 100): (1.20, 1.18, 2.08),
}


@pytest.mark.parametrize("key", list(TABLE5_CT))
def test_ct_block_parameter_counts_match_table5(key):
    shape, m = key
    for d, expected in zip((m, 20, math.prod(shape)), TABLE5_CT[key], strict=True):
        block = build_ct_block("conv", shape, d, m)
        assert round(count_parameters(block) / 1e6, 2) == expected, (shape, m, d)
        assert not any(isinstance(mod, torch.nn.BatchNorm1d) for mod in block.modules())


@pytest.mark.parametrize("embedding", ["one-hot", "learned", "prototype"])
@pytest.mark.parametrize("method", ["ct", "fm", "adjoint"])
def test_params_per_block_via_method(method, embedding):
    x, y = torch.randn(20, 1, 28, 28), torch.arange(20) % 10
    extra = {"adjoint_steps": 2} if method == "adjoint" else {}
    cfg = make_config(method=method, embedding=embedding, inference_steps=3, **extra)
    model = build_method(cfg, (1, 28, 28), 10, x, y)
    expected = dict(
        zip(("one-hot", "learned", "prototype"), TABLE5_CT[((1, 28, 28), 10)], strict=True)
    )
    assert round(model.params_per_block() / 1e6, 2) == expected[embedding]
    loss, _ = model.loss(x[:4], y[:4], 0)
    assert torch.isfinite(loss)
    assert model.predict_steps(x[:4]).shape == (4, 4, 10)  # steps 0..3 recorded


def test_block_caches_image_features():
    block = build_ct_block("conv", (1, 28, 28), 10, 10).eval()
    x, z, t = torch.randn(3, 1, 28, 28), torch.randn(3, 10), torch.rand(3)
    assert torch.allclose(block(x, z, t), block.fuse(block.encode_x(x), z, t))
    scalar = block.fuse(block.encode_x(x), z, torch.tensor(0.3))
    assert torch.allclose(scalar, block(x, z, torch.full((3,), 0.3)), atol=1e-6)


# ------------------------------------------------------------------------------ solvers
def test_solvers_reach_their_order_on_a_linear_ode():
    grid = torch.linspace(0, 1, 21, dtype=F64)
    exact = math.exp(-2.0)
    errors = {}
    for name in SOLVERS:
        (y1,) = integrate(lambda s, y: -2 * y, torch.ones(1, dtype=F64), grid, name, [20])
        errors[name] = abs(y1.item() - exact)
    assert errors["euler"] > errors["heun"] > errors["rk4"]
    assert errors["rk4"] < 1e-6 and errors["midpoint"] < 1e-3
    (y1,) = integrate(lambda s, y: -2 * y, torch.ones(1), grid.float(), "dopri5", [20])
    assert abs(y1.item() - exact) < 1e-4


def test_record_indices_are_few_evenly_spaced_and_include_both_ends():
    assert record_indices(1000) == list(range(0, 1001, 100))
    assert record_indices(3) == [0, 1, 2, 3]
    with pytest.raises(ConfigError):
        record_indices(0)


# --------------------------------------------------------------------------- flow matching
def test_fm_target_field_is_exact_on_a_toy():
    """One class: the exact field (u − z)/(1 − t) has zero Eq. 11 loss, and Euler lands on u in N steps."""
    method, (x, _) = tiny_ct("fm", inference_steps=3)
    y = torch.zeros(x.shape[0], dtype=torch.long)
    u = method.embedding.weight[0]
    method.v = lambda h, z, t: (u - z) / (1 - torch.as_tensor(t).reshape(-1, 1))
    loss, _ = method.loss(x, y, 0)
    assert loss.item() < 1e-9
    for steps in (1, 2, 7):
        logits = method.predict_steps(x, steps=steps, solver="euler")
        assert logits[-1].max(-1).values.abs().max() < 1e-9  # z_1 == u_0 exactly
        assert (logits[-1].argmax(-1) == 0).all()


def test_fm_anchor_ce_only_with_learned_embeddings():
    fixed, (x, y) = tiny_ct("fm")
    learned, _ = tiny_ct("fm", embedding="learned")
    assert "ce" not in fixed.loss(x, y, 0)[1] and fixed.shared_parameters() == []
    loss, parts = learned.loss(x, y, 0)
    assert "ce" in parts
    loss.backward()
    assert learned.embedding.weight.grad is not None
    assert learned.head.f_out.weight.grad is not None


# ------------------------------------------------------- K (t, z_t) draws per image (t_samples)
@pytest.mark.parametrize("method_name", ["ct", "fm"])
def test_t_samples_share_one_image_pass_and_draw_independent_times(method_name):
    method, (x, y) = tiny_ct(method_name, t_samples=5)
    calls = []
    method.block.image.register_forward_hook(lambda mod, inp, out: calls.append(out.shape[0]))
    h_x, u_y, t = method.sample_times(method.block.encode_x(x), method.embedding(y))
    assert h_x.shape[0] == u_y.shape[0] == t.shape[0] == 5 * x.shape[0]
    B = x.shape[0]
    for k in range(5):  # row k·B + i belongs to example i
        assert torch.equal(u_y[k * B : (k + 1) * B], method.embedding(y))
    assert t.unique().numel() == t.numel() and bool(((t >= 0) & (t < 1)).all())
    calls.clear()
    method.loss(x, y, 0)[0].backward()
    assert calls == [B]  # the image branch ran once per image, not once per draw


@pytest.mark.parametrize("method_name", ["ct", "fm"])
def test_t_samples_keep_the_objective_and_cut_its_variance(method_name):
    """Same expected loss (Eq. 9 / 11) with K = 1 and K = 8 draws; the K = 8 estimate varies less."""
    one, (x, y) = tiny_ct(method_name, t_samples=1)
    eight, _ = tiny_ct(method_name, t_samples=8)
    eight.load_state_dict(one.state_dict())
    torch.manual_seed(0)
    with torch.no_grad():
        l1 = torch.stack([one.loss(x, y, 0)[0] for _ in range(1600)])
        l8 = torch.stack([eight.loss(x, y, 0)[0] for _ in range(200)])
    se = (l1.var() / l1.numel() + l8.var() / l8.numel()).sqrt()
    assert (l1.mean() - l8.mean()).abs() < 4 * se, (l1.mean(), l8.mean(), se)
    assert l8.std() < 0.6 * l1.std()  # 1/sqrt(8) = 0.35 for the t-dependent part


# ------------------------------------------------------------------------ CT inference
def test_ct_euler_step_is_the_ddim_update():
    """One Euler step in (r, y) = the exact DDIM update z_1 = sqrt(ᾱ_1) û + sqrt(1 − ᾱ_1) ε̂."""
    method, (x, _) = tiny_ct("ct")
    method.eval()
    with torch.no_grad():
        h = method.block.encode_x(x)
        z0 = torch.randn(x.shape[0], method.embedding.dim)
        u_hat = method.u_hat(h, z0, torch.tensor(0.0))
        ab = method.schedule.alpha_bar(torch.tensor([0.0, 1.0], dtype=F64))
        eps_hat = (z0 - ab[0].sqrt() * u_hat) / (1 - ab[0]).sqrt()
        z1 = ab[1].sqrt() * u_hat + (1 - ab[1]).sqrt() * eps_hat
        (z1_euler,) = method._probability_flow(
            h, z0, torch.tensor([0.0, 1.0], dtype=F64), [1], "euler"
        )
    assert torch.allclose(z1_euler, z1, atol=1e-5)


def test_ct_probability_flow_solvers_agree_as_steps_grow():
    method, (x, _) = tiny_ct("ct", gamma_min=-5.0, gamma_max=5.0)  # tolerances calibrated at ±5
    method.eval()
    x = x[:16]
    reference = method.predict_steps(x, deterministic=True, steps=100, solver="rk4")[-1]
    errors = {}
    for solver, steps in (("euler", 25), ("euler", 100), ("heun", 100), ("dopri5", 1)):
        out = method.predict_steps(x, deterministic=True, steps=steps, solver=solver)[-1]
        errors[solver, steps] = (out - reference).abs().max().item()
    assert errors["euler", 100] < errors["euler", 25] / 2, errors  # first order
    # (head logits scale with the read-out temperature ln(9(m-1)) ≈ 3.3 for m = 4)
    assert max(errors["heun", 100], errors["dopri5", 1]) < 3e-3, errors


@pytest.mark.parametrize("method_name", ["ct", "fm", "adjoint"])
def test_few_step_inference_stays_finite(method_name):
    """Every solver at 1–5 steps, incl. CT with VDM's extreme range γ ∈ [−13.3, 5] (ᾱ_1 = 1 − 2e-6)."""
    kw = {"gamma_min": -13.3, "gamma_max": 5.0} if method_name == "ct" else {}
    method, (x, _) = tiny_ct(method_name, **kw)
    method.eval()
    solvers = [*SOLVERS] + (["ancestral"] if method_name == "ct" else [])
    for solver in solvers:
        for steps in (1, 2, 3, 5):
            for deterministic in (False, True):
                out = method.predict_steps(
                    x, steps=steps, solver=solver, deterministic=deterministic
                )
                assert out.shape == (len(record_indices(steps)), x.shape[0], 4)
                assert torch.isfinite(out).all(), (solver, steps)
    out = method.predict_steps(x[:8], steps=2, solver=ADAPTIVE[0])  # torchdiffeq passthrough
    assert out.shape == (3, 8, 4) and torch.isfinite(out).all()


def test_deterministic_inference_is_repeatable():
    for name in ("ct", "fm"):
        method, (x, _) = tiny_ct(name, inference_steps=4)
        method.eval()
        assert torch.equal(
            method.predict(x, deterministic=True), method.predict(x, deterministic=True)
        )


# ------------------------------------------------------------------------------ adjoint
def test_adjoint_gradient_matches_direct_backprop():
    """odeint_adjoint's gradients (incl. the image branch, via the carried h_x) equal back-prop through
    the same rk4 solve, up to the solver error of the backward integration."""
    from torchdiffeq import odeint

    method, (x, y) = tiny_ct("adjoint", adjoint_steps=16, solver="rk4", embedding="learned")
    params = list(method.parameters())
    torch.manual_seed(0)
    adj = torch.autograd.grad(method.loss(x, y, 0)[0], params, allow_unused=True)
    torch.manual_seed(0)
    h = method.block.encode_x(x)
    z0 = method.initial_z(x, deterministic=False)
    zs = odeint(lambda t, z: method.velocity(h, z, t), z0, torch.linspace(0, 1, 17), method="rk4")
    loss = torch.nn.functional.cross_entropy(method.head(zs[-1], method.embedding.weight), y)
    direct = torch.autograd.grad(loss, params, allow_unused=True)
    for a, d in zip(adj, direct, strict=True):
        assert (a is None) == (d is None)
        # the adjoint re-solves z backwards: O(h⁴) for smooth fields, but ReLU's field is not smooth
        if a is not None:
            assert (a - d).norm() <= 2e-2 * d.norm() + 1e-8
    assert all(g is not None for g in adj)  # image branch, fusion, head and W_Embed all learn


# ------------------------------------------------------------------------------- config
def test_config_validation_and_eta_defaults():
    assert make_config().options.eta == 0.1 and make_config(method="ct").options.eta == 1.0
    x, y = tiny_data()
    dt = build_method(make_config(method="dt", block="mlp", T=2), x.shape[1:], 4, x, y)
    ct = build_method(make_config(method="ct", block="mlp"), x.shape[1:], 4, x, y)
    assert dt.eta == 0.1 and ct.eta == 1.0 and ct.default_optimizer == "adam"
    assert build_method(make_config(method="ct", eta=0.5), x.shape[1:], 4, x, y).eta == 0.5
    for bad in (
        {"method": "fm", "solver": "ancestral"},
        {"method": "ct", "solver": "leapfrog"},
        {"method": "ct", "inference_steps": 0},
        {"method": "adjoint", "adjoint_steps": 0},
        {"method": "ct", "gamma_min": 5.0, "gamma_max": -5.0},
        {"method": "fm", "fm_sigma": -0.1},
        {"method": "ct", "gamma_width": 0},
        {"method": "fm", "t_samples": 0},
        {"eta": 0.0},
        {"solver": "euler"},  # dt has no solver: a one-line error, not silently dropped
        {"method": "dt", "fm_sigma": 0.5},
    ):
        with pytest.raises(ConfigError):
            make_config(**bad)
    with pytest.raises(ConfigError):
        ct.predict_steps(x, steps=0)


# ------------------------------------------------------------------ end to end on digits
# Measured (1 thread, shared 2-core machine, seeds 0/1/2): ct 0.942/0.939/0.931 in 25–37 s,
# fm 0.953/0.964/0.964 in 4–7 s, adjoint 0.950/0.950/0.950 in 8–11 s (train + evaluation).
E2E = {
    "ct": dict(epochs=30, batch_size=32, inference_steps=20),
    "fm": dict(epochs=40, inference_steps=20),
    "adjoint": dict(epochs=15, adjoint_steps=8, inference_steps=8),
}


@pytest.fixture(scope="module")
def digits_runs(tmp_path_factory):
    cache: dict = {}

    def get(method: str):
        if method not in cache:
            out = tmp_path_factory.mktemp(method) / "run"
            cfg = make_config(method=method, dataset="digits", **E2E[method])
            cache[method] = (out, train(cfg, out, progress=False))
        return cache[method]

    return get


@pytest.mark.parametrize("method", list(E2E))
def test_digits_reaches_090(digits_runs, method):
    _, summary = digits_runs(method)
    assert summary["test_accuracy"] >= 0.90, summary
    assert len(summary["test_accuracy_per_step"]) == len(
        record_indices(E2E[method]["inference_steps"])
    )


def test_ct_few_steps_keep_accuracy_and_sweep_writes_json(digits_runs):
    """The known failure elsewhere: ≤ 20 steps collapse to chance. Here 1–2 steps stay near 20-step accuracy."""
    out, summary = digits_runs("ct")
    rows = sweep_steps(out, [1, 2, 5, 20], ["euler", "rk4", "ancestral"], device="cpu")
    assert summary["test_accuracy"] >= 0.90
    assert [(r["solver"], r["steps"]) for r in rows[:4]] == [("euler", n) for n in (1, 2, 5, 20)]
    acc = {(r["solver"], r["steps"]): r["test_accuracy"] for r in rows}
    # the summary used CT's default sampler (ancestral) at the run's 20 steps: same seed, same draws
    assert acc[("ancestral", 20)] == pytest.approx(summary["test_accuracy"])
    assert min(acc[("euler", 2)], acc[("rk4", 1)], acc[("ancestral", 5)]) >= 0.85, acc
    assert min(acc.values()) >= 0.75, acc  # chance is 0.10
    saved = json.loads((out / "eval_steps.json").read_text())
    assert saved["rows"] == rows and saved["method"] == "ct"


def test_sweep_rejects_discrete_runs_and_bad_solvers(digits_runs, tmp_path):
    out, _ = digits_runs("fm")
    with pytest.raises(ConfigError):
        sweep_steps(out, [2], ["ancestral"], device="cpu")  # CT's sampler
    with pytest.raises(ConfigError):
        sweep_steps(out, [0], ["euler"], device="cpu")
    dt = tmp_path / "dt"
    train(make_config(method="dt", T=2, epochs=1, max_train_samples=100), dt, progress=False)
    with pytest.raises(ConfigError):
        sweep_steps(dt, [2], ["euler"], device="cpu")
