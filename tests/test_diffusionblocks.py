"""DiffusionBlocks (``--method diffusionblocks``): the spec's check values, the loss weighting, the Euler
sampler, one embedding table for training and inference, locality, and the CLI end to end.

The conformance suite (tests/test_conformance.py) runs the method contract on images, vectors and
text; tests/test_language.py checks causality on text.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from noprop import build_method, make_config
from noprop.cli import main
from noprop.methods import DiffusionBlocks
from noprop.schedules import EDMNoise, block_of_step
from noprop.solvers import edm_euler_step as euler_step
from noprop.tasks import ClassificationTask

NOISE = EDMNoise()


def tiny(T: int = 3, embedding: str = "one-hot", **extra) -> tuple[DiffusionBlocks, tuple]:
    cfg = make_config(method="diffusionblocks", T=T, embedding=embedding, embed_dim=6, block="mlp",
                      **extra)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 1, 8, 8, generator=g), torch.arange(16) % 4
    return build_method(cfg, ClassificationTask.from_shape((1, 8, 8), 4), None, x, y), (x, y)


# ------------------------------------------------------------------ the partition (spec §2)


@pytest.mark.parametrize(
    "B,want",
    [
        (2, [0.002, 0.301, 80]),
        (3, [0.002, 0.180, 0.505, 80]),
        (4, [0.002, 0.134, 0.301, 0.677, 80]),
    ],
)
def test_partition_matches_the_spec_check_values(B, want):
    got = NOISE.boundaries(B).tolist()
    assert got == pytest.approx(want, abs=5e-4)
    assert got[0] == 0.002 and got[-1] == 80.0  # the ends exactly


def test_partition_has_equal_probability_mass():
    q = NOISE.cdf(NOISE.boundaries(5))
    assert torch.allclose(q.diff(), q.diff()[0].expand(5), rtol=1e-9)


def test_block_zero_owns_the_highest_noise_and_overlap_widens_in_log_space():
    s = NOISE.boundaries(3).tolist()
    assert NOISE.block_range(3, 0) == pytest.approx((s[2], s[3]))
    assert NOISE.block_range(3, 2) == pytest.approx((s[0], s[1]))
    lo, hi = NOISE.block_range(3, 1, overlap=0.1)
    width = math.log(s[2]) - math.log(s[1])
    assert math.log(lo) == pytest.approx(math.log(s[1]) - 0.1 * width)
    assert math.log(hi) == pytest.approx(math.log(s[2]) + 0.1 * width)
    # the outer ends are clamped to the global range
    assert NOISE.block_range(3, 0, overlap=0.1)[1] == pytest.approx(80.0)
    assert NOISE.block_range(3, 2, overlap=0.1)[0] == pytest.approx(0.002)


def test_sampled_sigma_stays_in_range_and_is_uniform_in_cdf_space():
    torch.manual_seed(0)
    lo, hi = NOISE.block_range(3, 1, overlap=0.05)
    sigma = NOISE.sample(lo, hi, (20000,))
    assert sigma.min() >= lo * (1 - 1e-6) and sigma.max() <= hi * (1 + 1e-6)
    u = (NOISE.cdf(sigma.double()) - NOISE.cdf(lo)) / (NOISE.cdf(hi) - NOISE.cdf(lo))
    hist = torch.histc(u.float(), bins=10, min=0, max=1) / u.numel()
    assert torch.allclose(hist, torch.full((10,), 0.1), atol=0.01)


# -------------------------------------------------------- preconditioning and weight (spec §3)


@pytest.mark.parametrize("sigma", [0.002, 0.5, 80.0])
def test_preconditioning_and_weight_by_hand(sigma):
    s, d = torch.tensor(sigma, dtype=torch.float64), 0.5
    assert float(NOISE.c_skip(s)) == pytest.approx(d**2 / (sigma**2 + d**2))
    assert float(NOISE.c_out(s)) == pytest.approx(sigma * d / math.sqrt(sigma**2 + d**2))
    assert float(NOISE.c_in(s)) == pytest.approx(1 / math.sqrt(sigma**2 + d**2))
    assert float(NOISE.c_noise(s)) == pytest.approx(math.log(sigma) / 4)
    w = float(NOISE.weight(s))
    assert w == pytest.approx((sigma**2 + d**2) / (sigma * d) ** 2)
    assert w == pytest.approx(1 / float(NOISE.c_out(s)) ** 2)  # EDM: λ = 1/c_out²
    assert w == pytest.approx({0.002: 2.5e5, 0.5: 8.0, 80.0: 4.0}[sigma], rel=1e-3)  # spec values


# --------------------------------------------------------------------- the loss weighting


def _fixed_sigma(monkeypatch, method: DiffusionBlocks, sigma: torch.Tensor) -> None:
    assert isinstance(method.noise, EDMNoise)
    monkeypatch.setattr(EDMNoise, "sample", lambda self, lo, hi, shape, device=None: sigma.clone())


@pytest.mark.parametrize("weighting", ["per-sample", "block-mean"])
def test_weighting_is_per_example_or_the_authors_block_mean(monkeypatch, weighting):
    """The authors' broadcast bug computes mean(w)·mean(loss); Eq. 6 is mean(w·loss). With σ and the
    per-example losses both varying, the two differ — the test tells them apart."""
    method, (x, y) = tiny(db_weighting=weighting)
    sigma = torch.linspace(0.01, 2.0, 16)
    _fixed_sigma(monkeypatch, method, sigma)
    torch.manual_seed(1)
    total, parts = method.loss(x, y, 1)
    # the same draws by hand: z = ŷ + σε, logits of block 1, per-example CE
    torch.manual_seed(1)
    z = F.one_hot(y, 4).float() + sigma[:, None] * torch.randn(16, 4)
    logits = method.blocks[1](x, NOISE.c_in(sigma)[:, None] * z, NOISE.c_noise(sigma))
    ce = F.cross_entropy(logits, y, reduction="none")
    w = NOISE.weight(sigma)
    per_sample, block_mean = (w * ce).mean(), w.mean() * ce.mean()
    assert not torch.isclose(per_sample, block_mean, rtol=1e-2)
    want = per_sample if weighting == "per-sample" else block_mean
    torch.testing.assert_close(total, want)
    torch.testing.assert_close(parts["ce"], ce.mean())


def test_l2_loss_is_the_edm_denoiser(monkeypatch):
    method, (x, y) = tiny(db_loss="l2", embedding="learned", db_weighting="per-sample")
    sigma = torch.linspace(0.05, 3.0, 16)
    _fixed_sigma(monkeypatch, method, sigma)
    torch.manual_seed(2)
    total, _ = method.loss(x, y, 0)
    torch.manual_seed(2)
    E = F.normalize(method.embedding.weight, dim=-1)
    s = sigma[:, None]
    z = E[y] + s * torch.randn(16, 6)
    logits = method.blocks[0](x, NOISE.c_in(s) * z, NOISE.c_noise(sigma))
    D = NOISE.c_skip(s) * z + NOISE.c_out(s) * (logits @ E)
    want = (NOISE.weight(sigma) * (D - E[y]).pow(2).sum(-1)).mean()
    torch.testing.assert_close(total, want)


# ---------------------------------------------------------------------- inference (spec §4)


def test_euler_step_by_hand():
    z, d = torch.tensor([1.0, -2.0]), torch.tensor([0.2, 0.0])
    # z + (σ_next − σ)(z − D)/σ with σ = 2, σ_next = 1: [1 − 0.4, −2 + 1]
    torch.testing.assert_close(euler_step(z, d, 2.0, 1.0), torch.tensor([0.6, -1.0]))
    torch.testing.assert_close(euler_step(z, d, 2.0, 0.0), d)  # σ_next = 0 lands on D̂


def test_grid_is_equally_spaced_in_cdf_space_and_meets_the_partition():
    g = NOISE.grid(6)
    assert g[0] == 80.0 and g[-1] == 0.002 and bool((g.diff() < 0).all())
    q = NOISE.cdf(g)
    assert torch.allclose(q.diff(), q.diff()[0].expand(6), rtol=1e-9)
    # N = B: the grid points are the partition's boundaries (one block per step)
    torch.testing.assert_close(NOISE.grid(3), NOISE.boundaries(3).flip(0))


@pytest.mark.parametrize("steps,owners", [(3, [0, 1, 2, 2]), (6, [0, 0, 1, 1, 2, 2, 2]),
                                          (1, [0, 2]), (4, [0, 0, 1, 2, 2])])  # fmt: skip
def test_each_step_runs_the_block_that_owns_its_sigma(steps, owners):
    assert [block_of_step(k, steps, 3) for k in range(steps + 1)] == owners
    g, grid = NOISE.boundaries(3), NOISE.grid(steps)
    # a step starts in its block's range, and with N a multiple of B it ends there too
    for k in range(steps):
        b, hi, lo = owners[k], grid[k], grid[k + 1]
        assert g[2 - b] * (1 + 1e-9) < hi <= g[3 - b] * (1 + 1e-9)
        if steps % 3 == 0:
            assert g[2 - b] * (1 - 1e-9) <= lo


def test_predict_steps_is_the_hand_rolled_euler_chain():
    method, (x, _) = tiny(T=3, embedding="learned")
    method.eval()
    torch.manual_seed(4)
    got = method.predict_steps(x, deterministic=False, steps=6)
    torch.manual_seed(4)
    E = F.normalize(method.embedding.weight, dim=-1)
    z = 80.0 * torch.randn(16, 6)
    grid = NOISE.grid(6).tolist()
    want = []
    with torch.no_grad():
        for k, sigma in enumerate(grid):
            b = [0, 0, 1, 1, 2, 2, 2][k]
            s = torch.tensor(sigma)
            logits = method.blocks[b](x, NOISE.c_in(s) * z, NOISE.c_noise(s))
            want.append(logits)
            if k < 6:
                D = logits.softmax(-1) @ E
                z = z + (grid[k + 1] - sigma) * (z - D) / sigma
    torch.testing.assert_close(got, torch.stack(want), rtol=1e-5, atol=1e-5)


def test_training_and_inference_use_one_normalised_embedding_table(monkeypatch):
    """Training targets ŷ and inference's D̂ both come from Ê = rows of W_Embed scaled to norm 1 (the
    authors' code normalised only the targets)."""
    method, (x, y) = tiny(embedding="learned")
    with torch.no_grad():
        method.embedding.weight.mul_(torch.tensor([[3.0], [0.5], [2.0], [7.0]]))
    E = F.normalize(method.embedding.weight, dim=-1)
    # training: with σ → 0 the block sees c_in·ŷ, so ŷ = z / c_in
    seen = {}
    block = method.blocks[2]
    real_fuse = block.fuse

    def fuse(h, z, t):
        seen["z"] = z
        return real_fuse(h, z, t)

    monkeypatch.setattr(block, "fuse", fuse)
    _fixed_sigma(monkeypatch, method, torch.full((16,), 1e-7))
    method.loss(x, y, 2)
    y_hat = seen["z"] / NOISE.c_in(torch.tensor(1e-7))
    torch.testing.assert_close(y_hat, E[y], atol=1e-5, rtol=1e-5)
    # inference: a block sure of class k gives D̂ = Ê[k]
    sure = torch.full((5, 4), -1e4)
    sure[:, 3] = 1e4
    torch.testing.assert_close(
        method.denoise(torch.zeros(5, 6), sure, torch.tensor(1.0)), E[[3] * 5]
    )


# ------------------------------------------------------------------------------- locality


def test_a_blocks_gradient_reaches_only_that_block_and_the_embedding():
    method, (x, y) = tiny(embedding="learned")
    for unit in range(3):
        method.zero_grad(set_to_none=True)
        method.loss(x, y, unit)[0].backward()
        for b, block in enumerate(method.blocks):
            has = [p.grad is not None and bool(p.grad.abs().sum() > 0) for p in block.parameters()]
            assert any(has) == (b == unit), (unit, b)
        assert method.embedding.weight.grad is not None


def test_orders_and_parallel_layouts():
    cfg = make_config(method="diffusionblocks", order="random")
    assert cfg.train.order == "random"
    with pytest.raises(Exception, match="per-block loss"):
        make_config(method="diffusionblocks", parallel="fused", order="interleaved")
    with pytest.raises(Exception, match="--order random"):
        make_config(method="diffusionblocks", parallel="blocks", order="random")


def test_random_order_draws_one_seeded_block_per_batch():
    from noprop.training.order import RandomBlock

    order = RandomBlock(range(3), 10, seed=0)
    a, b = list(order(95, 0)), list(order(95, 0))
    assert len(a) == order.num_steps(95) == 10
    assert [s.units for s in a] == [s.units for s in b]  # reproducible per epoch (exact resume)
    assert all(len(s.units) == 1 for s in a) and {s.units[0] for s in a} == {0, 1, 2}
    assert [s.units for s in a] != [s.units for s in order(95, 1)]


# ------------------------------------------------------------------------- the CLI, digits


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("db") / "run"
    args = ["train", "--method", "diffusionblocks", "--epochs", "5", "--out", str(out),
            "--no-progress"]  # fmt: skip
    assert main(args) == 0
    return out


def test_digits_after_5_epochs(digits_run):
    s = json.loads((digits_run / "summary.json").read_text())
    assert s["test_accuracy"] >= 0.85, s
    assert len(s["test_accuracy_per_step"]) == 4  # B = 3 steps: σ_max, two boundaries, σ_min
    assert s["data_passes"] == 15  # --order blocks: every block passes over the data each epoch


def test_resume_eval_sweep_export_predict(digits_run, tmp_path, capsys):
    import numpy as np

    from noprop.data import load_dataset

    part = tmp_path / "part"
    common = ["--method", "diffusionblocks", "--max-train-samples", "300", "--order", "random",
              "--no-progress"]  # fmt: skip
    assert main(["train", *common, "--epochs", "2", "--out", str(part)]) == 0
    assert main(["train", "--resume", str(part), "--epochs", "3", "--no-progress"]) == 0
    full = tmp_path / "full"
    assert main(["train", *common, "--epochs", "3", "--out", str(full)]) == 0
    a, b = (json.loads((p / "summary.json").read_text()) for p in (part, full))
    assert a["test_accuracy"] == b["test_accuracy"] and a["data_passes"] == 3.0  # exact resume
    capsys.readouterr()
    assert main(["eval", str(digits_run), "--steps", "1,3,6"]) == 0
    rows = json.loads((digits_run / "eval_steps.json").read_text())["rows"]
    assert [r["steps"] for r in rows] == [1, 3, 6] and all(r["solver"] == "euler" for r in rows)
    exported = tmp_path / "export"
    assert main(["export", str(digits_run), "--out", str(exported)]) == 0
    x = load_dataset("digits").test[0][:20].numpy()
    np.save(tmp_path / "x.npy", x)
    for src in (digits_run, exported):
        out = tmp_path / f"pred-{src.name}.json"
        assert main(["predict", str(src), str(tmp_path / "x.npy"), "--deterministic", "--out",
                     str(out)]) == 0  # fmt: skip
    preds = [
        json.loads((tmp_path / f"pred-{s.name}.json").read_text()) for s in (digits_run, exported)
    ]
    assert preds[0] == preds[1]


def test_block_parallel_equals_sequential(tmp_path):
    """``--parallel blocks`` on 2 ranks (one block each) trains the same blocks as one process."""
    from tests.test_parallel import _model, _run_torchrun

    args = ["--dataset", "digits", "--max-train-samples", "200", "--block", "mlp", "--seed", "3",
            "--method", "diffusionblocks", "--T", "2", "--epochs", "1", "--no-progress"]  # fmt: skip
    par, seq = tmp_path / "par", tmp_path / "seq"
    _run_torchrun(*args, "--parallel", "blocks", "--out", str(par))
    torch.set_num_threads(1)
    assert main(["train", *args, "--threads", "1", "--out", str(seq)]) == 0
    a, b = _model(seq)["model"], _model(par)["model"]
    assert a.keys() == b.keys() and any(k.startswith("blocks.1.") for k in a)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)


def test_text_block_reads_the_noise_level_and_encodes_the_context_once():
    """The NoProp-LM block with a c_noise branch: its logits depend on t, a scalar t equals the same t
    given per position, several chains share one encoded context, and x is encoded outside fuse."""
    from noprop.models.transformer import ContinuousLanguageBlock

    torch.manual_seed(0)
    block = ContinuousLanguageBlock(context=8, width=16, heads=2, layers=1, d=5).eval()
    x, z = torch.randint(0, 256, (3, 8)), torch.randn(3, 8, 5)
    h = block.encode_x(x)
    a = block.fuse(h, z, torch.tensor(-1.0))
    torch.testing.assert_close(a, block.fuse(h, z, torch.full((3, 8), -1.0)))
    torch.testing.assert_close(a, block(x, z, -1.0))
    assert not torch.allclose(a, block.fuse(h, z, torch.tensor(1.0)))
    chains = block.fuse(h, torch.stack([z, z]), torch.tensor(-1.0))  # (C, B, L, 256)
    torch.testing.assert_close(chains[1], a)
