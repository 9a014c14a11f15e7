"""Next-byte prediction (issue 11): causality, NoProp-LM locality, the metrics, the CLI end to end.

Causality covers every text method (back-prop, DT, CT, FM with both sources, DiffusionBlocks);
CT/FM on text have their own file, tests/test_text_ctfm.py.

Every model here is tiny (context 16, width 16-32, 2 heads, T 2-3) so the file runs in well under a
minute on two cores. Properties are checked by perturbation, each with a control showing that the
check can fail (a non-causal attention is caught; perturbing block t itself does change its loss).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from noprop.build import build_method
from noprop.cli import main
from noprop.config import make_config
from noprop.data.text import load_text
from noprop.models import transformer as transformer_module
from noprop.models.transformer import TransformerLM
from noprop.tasks import LanguageTask
from noprop.tasks.language import bits, mixture_bits, unigram_bits, windows
from noprop.training.trainer import Trainer, evaluate

from .test_reliability import assert_one_line_error, snapshot

L = 16  # context of every model in this file
LN2 = math.log(2.0)


def _method(name: str, T: int = 2, **extra):
    if name not in ("ct", "fm"):  # one network: no --T
        extra["T"] = T
    cfg = make_config(dataset="stdlib", method=name, width=16, heads=2, context=L, **extra)
    task = LanguageTask("stdlib", L)
    return build_method(cfg, task), cfg, task


def _generic(module: torch.nn.Module, seed: int = 0) -> None:
    """Random weights of a healthy scale: causality is structural and must hold for any weights, and
    a leak through attention is then large enough to see (GPT init's N(0, 0.02) hides it)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def _bytes(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)


def _flip(x: torch.Tensor, j: int) -> torch.Tensor:
    """x with the byte at position j of every window replaced by another byte."""
    x2 = x.clone()
    x2[:, j] = (x2[:, j].long() + 97) % 256
    return x2


# ----------------------------------------------------------------------------- 1. causality

POSITIONS = [0, 1, 7, L - 1]


def _readouts(kind: str, method, x: torch.Tensor) -> torch.Tensor:
    """Logits of every read-out step, (S, B, L, 256)."""
    if kind == "lm":
        return method(x).unsqueeze(0)
    if kind == "stochastic":
        torch.manual_seed(123)  # the same z_0 and ε_t for both inputs
        return method.predict_steps(x, deterministic=False)
    return method.predict_steps(x, deterministic=True)


INFERENCE = ("deterministic", "stochastic")
CONTINUOUS = [f"{n}-{k}" for n in ("ct", "ct-ode", "fm", "fm-current-token") for k in INFERENCE]


def _causal_models():
    lm = TransformerLM(L, 16, 2, 2).eval()
    _generic(lm)
    bp, _, _ = _method("backprop", T=2)
    _generic(bp)
    dt, _, _ = _method("dt", T=2)
    _generic(dt)
    db, _, _ = _method("diffusionblocks", T=2)
    _generic(db)
    continuous = {  # NoProp-CT (ancestral sampler and probability-flow ODE) and NoProp-FM
        "ct": _method("ct", inference_steps=3, t_samples=2)[0],
        "ct-ode": _method("ct", inference_steps=3, solver="heun")[0],
        "fm": _method("fm", inference_steps=3)[0],
        "fm-current-token": _method("fm", inference_steps=3, fm_source="current-token")[0],
    }
    for m in continuous.values():  # CT's schedule keeps its init (γ from 3 to −3): random weights
        _generic(m.block)  # could make its a_k tiny and a leak invisible to the control below
        _generic(m.head)
    return {
        **{f"{n}-{kind}": (kind, m.eval()) for n, m in continuous.items() for kind in INFERENCE},
        "diffusionblocks-deterministic": ("deterministic", db.eval()),
        "diffusionblocks-stochastic": ("stochastic", db.eval()),
        "TransformerLM": ("lm", lm),
        "backprop-lens": ("deterministic", bp.eval()),
        "dt-deterministic": ("deterministic", dt.eval()),
        "dt-stochastic": ("stochastic", dt.eval()),
    }


@pytest.fixture(scope="module")
def causal_models():
    return _causal_models()


def _leaks(kind: str, model, x: torch.Tensor, j: int) -> tuple[float, bool]:
    """(largest change at positions < j, whether position j changed) when byte j changes."""
    a, b = _readouts(kind, model, x), _readouts(kind, model, _flip(x, j))
    before = (a[:, :, :j] - b[:, :, :j]).abs().max().item() if j else 0.0
    return before, not torch.equal(a[:, :, j], b[:, :, j])


@pytest.mark.parametrize(
    "name",
    ["TransformerLM", "backprop-lens", "dt-deterministic", "dt-stochastic"]
    + ["diffusionblocks-deterministic", "diffusionblocks-stochastic", *CONTINUOUS],
)
@pytest.mark.parametrize("j", POSITIONS)
def test_changing_byte_j_changes_nothing_before_j(causal_models, name, j):
    kind, model = causal_models[name]
    x = _bytes(3, L, seed=j)
    before, at_j = _leaks(kind, model, x, j)
    assert before == 0.0, f"{name}: byte {j} changed a prediction before it by {before}"
    assert at_j, f"{name}: byte {j} changed no prediction at position {j}"


def test_causality_check_catches_non_causal_attention(monkeypatch):
    """Control: with attention that sees the future, the check above fails for every model."""
    shim = types.SimpleNamespace(
        scaled_dot_product_attention=lambda q, k, v, is_causal: F.scaled_dot_product_attention(
            q, k, v, is_causal=False
        )
    )
    monkeypatch.setattr(transformer_module, "F", shim)
    x = _bytes(3, L, seed=5)
    for name, (kind, model) in _causal_models().items():
        before, _ = _leaks(kind, model, x, L - 1)
        assert before > 1e-4, f"{name}: a non-causal model went unnoticed ({before})"


# ----------------------------------------------------------------------------- 2. locality


@pytest.mark.parametrize("embedding", ["one-hot", "learned"])
def test_step_of_block_t_leaves_other_blocks_bit_identical(embedding, one_thread):
    extra = {"embedding": embedding, "embed_dim": 8} if embedding == "learned" else {}
    method, cfg, task = _method("dt", T=3, **extra)
    trainer = Trainer(method, cfg, torch.device("cpu"), task=task, progress=False)
    x, y = _bytes(4, L, seed=1), _bytes(4, L, seed=2).long()
    for u in range(method.num_units):  # every block gets optimiser state and moments
        trainer.step(x, y, u)
    for unit in range(method.num_units):
        before = {k: v.clone() for k, v in method.state_dict().items()}
        for p in method.parameters():
            p.grad = None
        trainer.step(x, y, unit)
        for t, block in enumerate(method.blocks):
            for name, v in block.state_dict().items():
                same = torch.equal(v, before[f"blocks.{t}.{name}"])
                if t != unit:
                    assert same, f"block {t + 1}.{name} changed during block {unit + 1}'s step"
                    assert block.get_parameter(name).grad is None
        trained = method.blocks[unit].state_dict()
        assert not all(torch.equal(v, before[f"blocks.{unit}.{k}"]) for k, v in trained.items())
        assert not torch.equal(method.head.f_out.weight, before["head.f_out.weight"])
        if embedding == "learned":
            assert not torch.equal(method.embedding.weight, before["embedding.weight"])


@pytest.mark.parametrize("unit", [0, 1, 2])
def test_block_loss_ignores_other_blocks_weights(unit, one_thread):
    method, _, _ = _method("dt", T=3)
    x, y = _bytes(4, L, seed=3), _bytes(4, L, seed=4).long()

    def loss() -> torch.Tensor:
        torch.manual_seed(0)
        return method.loss(x, y, unit)[0].detach()

    reference = loss()
    with torch.no_grad():
        for t, block in enumerate(method.blocks):
            if t != unit:
                for p in block.parameters():
                    p.add_(torch.randn_like(p))
    assert torch.equal(loss(), reference)
    with torch.no_grad():  # control: block t's own weights do matter
        for p in method.blocks[unit].parameters():
            p.add_(torch.randn_like(p))
    assert not torch.equal(loss(), reference)


def test_backprop_loss_does_depend_on_every_layer(one_thread):
    """Control: the back-prop transformer reads all its layers, so perturbing layer 1 changes it."""
    method, _, _ = _method("backprop", T=2)
    x, y = _bytes(4, L, seed=3), _bytes(4, L, seed=4).long()
    before = method.loss(x, y)[0].detach()
    with torch.no_grad():
        for p in method.lm.encoder.layers[0].parameters():
            p.add_(1.0)
    assert not torch.equal(method.loss(x, y)[0].detach(), before)


# ----------------------------------------------------------------------------- 3. metrics


def test_logit_lens_at_the_last_layer_is_the_output():
    method, _, _ = _method("backprop", T=3)
    _generic(method)
    method.eval()
    x = _bytes(2, L, seed=6)
    steps = method.predict_steps(x)
    assert steps.shape == (4, 2, L, 256)
    torch.testing.assert_close(steps[-1], method.lm(x), rtol=0, atol=1e-6)
    assert not torch.allclose(steps[0], steps[-1])  # the lens does differ earlier in the stream
    torch.testing.assert_close(method.predict_steps(x, deterministic=True), steps, rtol=0, atol=0)


def test_uniform_predictor_scores_8_bits():
    y = _bytes(3, L, seed=7).long()
    b = bits(torch.zeros(3, L, 256), y)
    assert b.shape == (3, L)
    torch.testing.assert_close(b, torch.full((3, L), 8.0), rtol=0, atol=1e-5)
    # several read-outs at once: logits (S, B, L, 256) with labels (B, L)
    assert bits(torch.zeros(2, 3, L, 256), y).shape == (2, 3, L)


def test_bits_is_minus_log2_of_the_softmax():
    g = torch.Generator().manual_seed(8)
    logits, y = torch.randn(2, L, 256, generator=g) * 3, _bytes(2, L, seed=9).long()
    p = logits.double().softmax(-1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(bits(logits, y).double(), -p.log2(), rtol=1e-5, atol=1e-5)


def test_mixture_of_identical_chains_is_one_chain():
    g = torch.Generator().manual_seed(10)
    one, y = torch.randn(2, L, 256, generator=g) * 2, _bytes(2, L, seed=11).long()
    for S in (1, 3):
        mixed = mixture_bits(one.expand(S, *one.shape), y)
        torch.testing.assert_close(mixed, bits(one, y), rtol=1e-5, atol=1e-5)


def _chain(logp_true: float, true: int = 65) -> torch.Tensor:
    """Logits (256,) whose softmax gives log p(true) = logp_true (nats), float32-exactly for large
    |logp_true|: the true byte 0, one rival byte r with log(1 + e^r) = −logp_true, the rest −1e4."""
    logits = torch.full((256,), -1e4)
    logits[true] = 0.0
    rival = -logp_true if logp_true < -30 else math.log(math.expm1(-logp_true))
    logits[(true + 1) % 256] = rival
    return logits


@pytest.mark.parametrize(
    "logps", [(-1000.0, -0.1), (-690.0, -700.0), (-1000.0, -1010.0), (-0.1, -2.0, -1000.0)]
)
def test_mixture_bits_is_exact_in_log_space(logps):
    """A chain putting ~1e-300 (or e^-1000) on the true byte: no inf, no nan, the float64 answer."""
    logits = torch.stack([_chain(lp) for lp in logps]).view(len(logps), 1, 1, 256)
    y = torch.tensor([[65]])
    got = mixture_bits(logits, y)
    assert got.shape == (1, 1) and torch.isfinite(got).all()
    lse = torch.logsumexp(torch.tensor(logps, dtype=torch.float64), 0).item()
    expected = -(lse - math.log(len(logps))) / LN2
    assert got.item() == pytest.approx(expected, rel=1e-6, abs=1e-5)


@pytest.mark.parametrize("S", [2, 4])
def test_mixture_with_one_right_chain_costs_log2_S_bits(S):
    right = _chain(math.log(0.9))
    wrong = _chain(-2000.0)
    logits = torch.stack([right] + [wrong] * (S - 1)).view(S, 1, 1, 256)
    y = torch.tensor([[65]])
    alone = bits(right.view(1, 1, 256), y).item()
    assert alone == pytest.approx(-math.log2(0.9), abs=1e-5)
    assert mixture_bits(logits, y).item() == pytest.approx(alone + math.log2(S), abs=1e-4)


def test_evaluate_bits_per_byte_is_the_mean_over_positions(one_thread):
    """The trainer's aggregation over uneven inference batches equals bits() over all positions."""
    method, _, task = _method("dt", T=2)
    _generic(method)
    x, y = _bytes(5, L, seed=12), _bytes(5, L, seed=13).long()
    out = evaluate(method, x, y, 16, True, 0, task=task)  # 16 // 8 = 2 windows per batch
    steps = method.predict_steps(x, deterministic=True)
    per_step = bits(steps, y).double().mean((1, 2))
    assert out["bits_per_byte"] == pytest.approx(per_step[-1].item(), rel=1e-5)
    assert out["bits_per_byte_per_step"] == pytest.approx(per_step.tolist(), rel=1e-5)
    acc = (steps[-1].argmax(-1) == y).double().mean().item()
    assert out["accuracy"] == pytest.approx(acc)


# ----------------------------------------------------------------------------- 4. data


@pytest.mark.parametrize("n,windows_expected", [(3 * L + 1, 3), (3 * L, 2), (3 * L + 7, 3)])
def test_windows_shapes_and_shift(n, windows_expected):
    data = _bytes(n, seed=n)
    x, y = windows(data, L)
    assert x.shape == y.shape == (windows_expected, L)
    assert x.dtype == torch.uint8 and y.dtype == torch.long
    k = windows_expected * L
    assert torch.equal(x.flatten(), data[:k])  # consecutive, non-overlapping, in order
    assert torch.equal(y.flatten(), data[1 : k + 1].long())  # y is x shifted by one byte
    assert torch.equal(y[:, :-1], x[:, 1:].long())


@pytest.mark.parametrize("n", [0, 1, L - 1, L])
def test_windows_of_a_split_shorter_than_one_window_is_empty(n):
    """Fewer than L + 1 bytes make no window (LanguageTask.load then raises its ConfigError)."""
    x, y = windows(_bytes(n, seed=1), L)
    assert x.shape == y.shape == (0, L)


def test_unigram_bits():
    uniform = torch.arange(256, dtype=torch.uint8).repeat(40)
    assert unigram_bits(uniform, uniform) == pytest.approx(8.0, abs=1e-9)
    noise = _bytes(200_000, seed=14)
    assert unigram_bits(noise, _bytes(20_000, seed=15)) == pytest.approx(8.0, abs=0.01)
    constant = torch.full((10_000,), ord("a"), dtype=torch.uint8)
    small = unigram_bits(constant, constant[:100])
    assert small == pytest.approx(-math.log2(10_001 / 10_256))  # add-one smoothing
    assert small < 0.05
    ab = torch.tensor(list(b"ab" * 500), dtype=torch.uint8)
    assert unigram_bits(ab, ab) == pytest.approx(-math.log2(501 / 1256))


# ----------------------------------------------------------------------------- 5. end to end

SUBJECTS = ["the cat", "a dog", "my friend", "the old man", "her sister", "a small bird"]
VERBS = ["sat on", "looked at", "ran to", "jumped over", "walked past"]
OBJECTS = ["the mat.", "a tree.", "the house.", "the river.", "a red car.", "the wall."]
E2E = ["--context", str(L), "--width", "32", "--heads", "2", "--T", "2", "--batch-size", "16"]
QUIET = ["--no-progress", "--threads", "1"]


def _write_corpus(path: Path, size: int = 24_000) -> Path:
    r = random.Random(0)
    parts, n = [], 0
    while n < size:
        line = f"{r.choice(SUBJECTS)} {r.choice(VERBS)} {r.choice(OBJECTS)}\n"
        parts.append(line)
        n += len(line)
    path.write_text("".join(parts))
    return path


def _cli(*argv: str) -> int:
    before = torch.get_num_threads()  # --threads sets torch's global thread count
    try:
        return main(list(argv))
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def text_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    corpus = _write_corpus(root / "corpus.txt")
    runs = {}
    for method, epochs in (("backprop", 2), ("dt", 2)):
        out = root / method
        argv = ["train", "--dataset", "text", "--data-dir", str(corpus), "--method", method]
        assert _cli(*argv, *E2E, "--epochs", str(epochs), "--out", str(out), *QUIET) == 0
        runs[method] = out
    return corpus, runs


def _unigram_of_test_targets(corpus: Path) -> float:
    c = load_text("text", corpus)
    return unigram_bits(c.train, windows(c.test, L)[1].flatten())


@pytest.mark.parametrize("method", ["backprop", "dt"])
def test_text_run_beats_the_unigram_baseline(text_runs, method):
    corpus, runs = text_runs
    summary = json.loads((runs[method] / "summary.json").read_text())
    unigram = _unigram_of_test_targets(corpus)
    assert 3.0 < unigram < 6.0  # the corpus is what this test thinks it is
    scores = summary["test_scores"]
    assert scores["bits_per_byte"] < unigram, (scores, unigram)
    assert scores["bits_per_byte_deterministic"] < unigram, (scores, unigram)
    assert len(scores["bits_per_byte_per_step"]) == 3  # read-outs after 0, 1, 2 blocks / layers
    assert scores["bits_per_byte_per_step"][-1] == scores["bits_per_byte"]
    assert summary["method"] == method and summary["dataset"] == "text"


@pytest.mark.parametrize("method", ["backprop", "dt"])
def test_text_run_directory(text_runs, method, capsys):
    corpus, runs = text_runs
    run = runs[method]
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt", "summary.json", "data.json"):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["dataset"] == "text" and config["data"]["context"] == L
    assert config["method"]["method"] == method
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert math.isfinite(r["val_bits_per_byte"]) and 0 < r["val_bits_per_byte"] < 64
    data = json.loads((run / "data.json").read_text())
    assert data["sha256"] == hashlib.sha256(corpus.read_bytes()).hexdigest()
    assert data["sha256"] == load_text("text", corpus).sha256
    capsys.readouterr()
    assert _cli("eval", str(run), "--threads", "1") == 0
    assert _cli("eval", str(run), "--deterministic", "--threads", "1") == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    summary = json.loads((run / "summary.json").read_text())
    assert result["test_accuracy"] == pytest.approx(summary["test_accuracy_deterministic"])


def test_text_learned_embedding_defaults_to_64_dimensions():
    """Issue 11: without --embed-dim a text run's learned W_Embed has 64 dimensions (images: 20)."""
    method, _, _ = _method("dt", T=2, embedding="learned")
    assert tuple(method.embedding.weight.shape) == (256, 64)
    method, _, _ = _method("dt", T=2, embedding="learned", embed_dim=8)
    assert tuple(method.embedding.weight.shape) == (256, 8)


def test_text_run_resumes(tmp_path):
    corpus = _write_corpus(tmp_path / "corpus.txt", size=8_000)
    run = tmp_path / "run"
    small = ["--context", str(L), "--width", "16", "--heads", "2", "--T", "2", "--batch-size", "16"]
    argv = ["train", "--dataset", "text", "--data-dir", str(corpus), "--method", "dt", *small]
    assert _cli(*argv, "--epochs", "1", "--out", str(run), *QUIET) == 0
    assert _cli("train", "--resume", str(run), "--epochs", "2", *QUIET) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert all("val_bits_per_byte" in r for r in records)
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2


# ----------------------------------------------------------------------------- 6. clear errors

ERRORS = {
    "adjoint-on-text": (["--method", "adjoint"], "adjoint"),
    "prototype-on-text": (["--embedding", "prototype"], "prototype"),
    "width-not-a-multiple-of-heads": (["--width", "30", "--heads", "4"], "--heads"),
    "no-data-dir": (None, "--data-dir"),
    "context-longer-than-a-split": (["--context", "4096"], "--context"),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_bad_text_options_are_one_line_errors(name, tmp_path, monkeypatch, capsys):
    flags, fragment = ERRORS[name]
    corpus = _write_corpus(tmp_path / "corpus.txt", size=8_000)
    data = [] if flags is None else ["--data-dir", str(corpus), *flags]
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    try:
        rc = _cli("train", "--dataset", "text", *data, "--epochs", "1", "--out", str(out), *QUIET)
    except SystemExit as e:  # argparse
        rc = e.code
    stdout, err = capsys.readouterr()
    assert_one_line_error(rc, err, fragment)
    assert stdout == ""
    assert snapshot(out) is None
    assert not (tmp_path / "runs").exists()  # nor the default --out


# ------------------------------------------------------------ 6. temperature (validation only)
def test_fit_temperatures_finds_an_overconfident_model_and_never_hurts_the_fitted_split(one_thread):
    """Scaling NoProp's head up makes it overconfident: the fitted τ grows with the scale, and on
    the split it was fitted on the calibrated bits are never worse than the raw ones (τ = 1 is in
    the grid); accuracy is untouched."""
    from noprop_lab.bench.lm.language import TEMPERATURES, fit_temperatures, test_scores

    assert (TEMPERATURES == 1.0).any()
    m, _, _ = _method("dt", T=2)
    x, y = _bytes(6, L, seed=3), _bytes(6, L, seed=4).long()
    taus = {}
    for scale in (1.0, 30.0):
        with torch.no_grad():
            m.head.f_out.weight.mul_(scale)
            m.head.f_out.bias.mul_(scale)
        t = fit_temperatures(m, x, y, chains=2, seed=0)
        r = test_scores(m, x, y, chains=2, seed=0, temperatures=t)
        for row in (r, r["deterministic"], r["one_chain"]):
            assert row["bits_per_byte_calibrated"] <= row["bits_per_byte"] + 1e-9
        taus[scale] = t["deterministic"]
        with torch.no_grad():
            m.head.f_out.weight.div_(scale)
            m.head.f_out.bias.div_(scale)
    assert taus[30.0] > taus[1.0]


@pytest.mark.parametrize("name", ["dt", "backprop"])
def test_scores_with_trajectory_are_the_separate_passes_with_one_deterministic_chain(
    name, one_thread, monkeypatch
):
    """``lm compare`` takes the test scores and the trajectory from one pass: the same numbers as
    :func:`test_scores` and :func:`trajectory` called apart, with the deterministic chain run once
    per batch instead of twice (issue 11 follow-up)."""
    from noprop_lab.bench.lm.language import test_scores, trajectory

    m, _, _ = _method(name, T=2)
    _generic(m)
    x, y = _bytes(6, L, seed=3), _bytes(6, L, seed=4).long()
    both = test_scores(m, x, y, chains=2, seed=0, batch=4, with_trajectory=True)
    apart = test_scores(m, x, y, chains=2, seed=0, batch=4)
    traj = both.pop("trajectory")
    assert both == apart
    expected = trajectory(m, x, y, batch=4)
    assert [r["depth"] for r in traj] == [r["depth"] for r in expected]
    for got, want in zip(traj, expected, strict=True):
        assert got == pytest.approx(want, rel=1e-6, abs=1e-9)
    if name == "dt":
        calls = []
        chain = type(m).chain
        monkeypatch.setattr(
            type(m), "chain", lambda self, x, **kw: calls.append(kw) or chain(self, x, **kw)
        )
        test_scores(m, x, y, chains=2, seed=0, batch=4, with_trajectory=True)
        assert sum(kw.get("deterministic", False) for kw in calls) == 2  # 2 batches, once each
