"""NoProp-CT and NoProp-FM on text (issue 22, point 2), and FM's flow from the current byte.

The CLI end to end on a tiny corpus (train, eval, ``eval --steps``, resume); locality (a loss reaches
only the one network and the shared parameters, a position's z reaches only its own output, t is
drawn per position); ``--fm-source current-token`` (the path starts at the current byte's embedding,
refused on images, recorded in and restored from the run directory). Causality of CT and FM on text
is checked with the other text methods in tests/test_language.py; the method contract (finite loss,
shapes, repeatable inference, checkpoint round trip, parameter partition) by the conformance suite's
text cases (tests/test_conformance.py).
"""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter

import pytest
import torch

from noprop.build import build_method
from noprop.config import RunConfig, make_config
from noprop.data.text import load_text
from noprop.errors import ConfigError
from noprop.methods.fm import nearest_embedding_logits
from noprop.tasks.language import windows

from .test_language import QUIET, L, _bytes, _cli, _method, _write_corpus
from .test_reliability import assert_one_line_error, snapshot

SMALL = ["--context", str(L), "--width", "32", "--heads", "2", "--batch-size", "16"]
FAST = ["--inference-steps", "4", "--t-samples", "2"]
RUNS = {
    "ct": ["--method", "ct"],
    "fm": ["--method", "fm"],
    "fm-current-token": ["--method", "fm", "--fm-source", "current-token"],
}


@pytest.fixture(scope="module")
def ctfm_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ctfm")
    corpus = _write_corpus(root / "corpus.txt", size=16_000)
    runs = {}
    for name, flags in RUNS.items():
        out = root / name
        argv = ["train", "--dataset", "text", "--data-dir", str(corpus), *flags, *SMALL, *FAST]
        assert _cli(*argv, "--epochs", "2", "--out", str(out), *QUIET) == 0
        runs[name] = out
    return corpus, runs


def _summary(run):
    return json.loads((run / "summary.json").read_text())


# ----------------------------------------------------------------------------- 1. end to end


@pytest.mark.parametrize("name", list(RUNS))
def test_ct_and_fm_train_on_text_through_the_cli(ctfm_runs, name):
    corpus, runs = ctfm_runs
    run = runs[name]
    summary = _summary(run)
    assert summary["dataset"] == "text" and summary["method"] == name.split("-")[0]
    scores = summary["test_scores"]
    for key in ("bits_per_byte", "bits_per_byte_deterministic"):
        assert math.isfinite(scores[key]) and 0 < scores[key] < 64, scores
    assert len(scores["bits_per_byte_per_step"]) == 5  # t = 0, 1/4, ..., 1 of --inference-steps 4
    assert scores["bits_per_byte_per_step"][-1] == scores["bits_per_byte"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(math.isfinite(r["val_bits_per_byte"]) for r in records)
    assert records[-1]["block_loss"][0] < records[0]["block_loss"][0]  # it trains
    if name == "ct":  # and CT already reads the context: better than always the commonest byte
        targets = windows(load_text("text", corpus).test, L)[1].flatten().tolist()
        majority = Counter(targets).most_common(1)[0][1] / len(targets)
        assert summary["test_accuracy_deterministic"] > majority + 0.05, (summary, majority)


@pytest.mark.parametrize("name", ["ct", "fm-current-token"])
def test_text_run_directory_round_trips(ctfm_runs, name, capsys):
    """config.json records the method's options (``fm_source``); ``noprop eval`` rebuilds the model
    from the directory and reproduces the run's deterministic test accuracy."""
    _, runs = ctfm_runs
    run = runs[name]
    config = json.loads((run / "config.json").read_text())
    cfg = RunConfig.from_dict(config)
    assert cfg.to_dict() == config
    if name == "fm-current-token":
        assert config["method"]["fm_source"] == "current-token"
        assert config["method"]["fm_source_sigma"] == 0.1
    capsys.readouterr()
    assert _cli("eval", str(run), "--deterministic", "--threads", "1") == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    summary = _summary(run)
    assert result["test_accuracy"] == pytest.approx(summary["test_accuracy_deterministic"])
    assert result["test_bits_per_byte"] == pytest.approx(
        summary["test_scores"]["bits_per_byte_deterministic"], rel=1e-5
    )


def test_eval_steps_on_text_reports_bits_per_byte(ctfm_runs, capsys):
    _, runs = ctfm_runs
    capsys.readouterr()
    argv = ["eval", str(runs["ct"]), "--steps", "1,2", "--solver", "ancestral,heun"]
    assert _cli(*argv, "--deterministic", "--threads", "1") == 0
    assert "bits/byte" in capsys.readouterr().out
    rows = json.loads((runs["ct"] / "eval_steps.json").read_text())["rows"]
    assert [(r["solver"], r["steps"]) for r in rows] == [
        ("ancestral", 1),
        ("ancestral", 2),
        ("heun", 1),
        ("heun", 2),
    ]
    assert all(0 < r["test_bits_per_byte"] < 64 for r in rows)


def test_current_token_run_resumes_with_its_source(ctfm_runs, tmp_path, capsys):
    _, runs = ctfm_runs
    run = tmp_path / "run"
    shutil.copytree(runs["fm-current-token"], run)
    assert _cli("train", "--resume", str(run), "--epochs", "3", *QUIET) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["method"]["fm_source"] == "current-token"
    assert _summary(run)["epochs"] == 3
    before = snapshot(run)
    capsys.readouterr()
    rc = _cli("train", "--resume", str(run), "--epochs", "4", "--fm-source", "noise", *QUIET)
    assert_one_line_error(rc, capsys.readouterr().err, "--fm-source")
    assert snapshot(run) == before


# ----------------------------------------------------------------------------- 2. locality


@pytest.mark.parametrize("embedding", ["one-hot", "learned"])
@pytest.mark.parametrize(
    "name,extra", [("ct", {}), ("fm", {}), ("fm", {"fm_source": "current-token"})]
)
def test_loss_reaches_only_the_network_and_the_shared_parameters(name, extra, embedding):
    """One network is CT's and FM's only unit: the loss's gradient reaches it and the shared
    parameters (head, learned W_Embed, CT's schedule), never an inert one (FM's head, one-hot)."""
    if embedding == "learned":
        extra = {**extra, "embedding": "learned", "embed_dim": 8}
    method, _, _ = _method(name, t_samples=2, **extra)
    assert method.num_units == 1
    x, y = _bytes(3, L, seed=1), _bytes(3, L, seed=2).long()
    params = dict(method.named_parameters())
    grads = torch.autograd.grad(method.loss(x, y, 0)[0], list(params.values()), allow_unused=True)
    reached = {n for (n, p), g in zip(params.items(), grads, strict=True) if g is not None}
    unit = {id(p) for p in method.unit_parameters(0)}
    shared = {id(p) for p in method.shared_parameters()}
    inert = {id(p) for p in method.inert_parameters()}
    for n, p in params.items():
        if id(p) in inert:
            assert n not in reached, n
    assert {n for n, p in params.items() if id(p) in unit | shared} <= reached
    if name == "fm" and embedding == "one-hot":
        assert not any(n.startswith("head.") for n in reached)


def _field(method):
    """Per-position output of the one network (or block 0) as a function of z, (B, L, 256)."""
    x = _bytes(2, L, seed=3)
    if method.name == "dt":
        block = method.blocks[0]
        h = block.encode_x(x)
        return lambda z: block.fuse(h, z)
    if method.name == "diffusionblocks":
        h = method.blocks[0].encode_x(x)
        return lambda z: method.block_logits(0, z, torch.tensor(1.0), h_x=h)
    h = method.block.encode_x(x)
    if method.name == "ct":
        return lambda z: method.u_hat(h, z, torch.full(z.shape[:-1], 0.5))
    return lambda z: method.v(h, z, torch.full(z.shape[:-1], 0.5))


@pytest.mark.parametrize("name", ["ct", "fm", "dt", "diffusionblocks"])
@pytest.mark.parametrize("i", [0, 5, L - 1])
def test_a_positions_z_reaches_only_its_own_output(name, i):
    """Positions are separate predictions: the label, time and fusion layers are position-wise, so
    the output at position i reads z at position i only (the context, causally, is the rest)."""
    method, _, _ = _method(name)
    z = torch.randn(2, L, method.embedding.dim, requires_grad=True)
    out = _field(method)(z)[:, i]
    (g,) = torch.autograd.grad((out * torch.randn_like(out)).sum(), z)  # (CT's û sums to 1)
    others = torch.cat([g[:, :i], g[:, i + 1 :]], dim=1)
    assert torch.equal(others, torch.zeros_like(others))
    assert g[:, i].abs().sum() > 0


@pytest.mark.parametrize("name", ["ct", "fm"])
def test_t_is_drawn_per_position(name):
    method, _, _ = _method(name, t_samples=3)
    x, y = _bytes(2, L, seed=4), _bytes(2, L, seed=5).long()
    h, u, t = method.sample_times(method.block.encode_x(x), method.embedding(y))
    assert h.shape[:2] == u.shape[:2] == t.shape == (6, L)
    assert t.unique().numel() == t.numel()
    for k in range(3):  # row k·B + i belongs to window i
        assert torch.equal(u[2 * k : 2 * k + 2], method.embedding(y))


# ----------------------------------------------------------------- 3. --fm-source current-token


def _capture_path(method, monkeypatch, t_value: float) -> list[torch.Tensor]:
    """Make every training t equal ``t_value`` and record the z_t the field is evaluated at."""
    seen: list[torch.Tensor] = []
    sample = method.sample_times

    def fixed_t(h, u):
        h, u, t = sample(h, u)
        return h, u, torch.full_like(t, t_value)

    field = method.block_fuse  # the network, whatever it predicts (--fm-predict)

    def spy(h, z, t):
        seen.append(z.detach().clone())
        return field(h, z, t)

    monkeypatch.setattr(method, "sample_times", fixed_t)
    monkeypatch.setattr(method, "block_fuse", spy)
    return seen


@pytest.mark.parametrize("embedding", ["one-hot", "learned"])
def test_current_token_path_starts_at_the_current_bytes_embedding(embedding, monkeypatch):
    extra = {"embedding": "learned", "embed_dim": 8} if embedding == "learned" else {}
    method, _, _ = _method(  # velocity: the loss's target is the field's own
        "fm",
        fm_source="current-token",
        fm_source_sigma=0.0,
        t_samples=2,
        fm_predict="velocity",
        **extra,
    )
    x, y = _bytes(3, L, seed=6), _bytes(3, L, seed=7).long()
    W = method.embedding.weight.detach()
    for t_value, end in ((0.0, W[x.long()]), (1.0, W[y])):
        seen = _capture_path(method, monkeypatch, t_value)
        method.loss(x, y, 0)
        assert torch.equal(seen[0], torch.cat([end, end]))  # K = 2 draws, both on the same path
        monkeypatch.undo()
    # the regression target is the straight line from the current byte to the next: with v = 0
    # the loss is ‖W[y] − W[x]‖² (one-hot: 2 wherever the next byte differs from the current one)
    monkeypatch.setattr(method, "v", lambda h, z, t: torch.zeros_like(z))
    fm = method.loss(x, y, 0)[1]["fm"]
    want = (W[y] - W[x.long()]).pow(2).sum(-1).mean()
    torch.testing.assert_close(fm, want)


def test_current_token_source_noise_and_inference_start(monkeypatch):
    method, _, _ = _method("fm", fm_source="current-token", inference_steps=3)
    assert method.source_sigma == 0.1  # [I] the default σ_src
    x = _bytes(64, L, seed=8)
    W = method.embedding.weight.detach()
    # deterministic inference starts exactly at the current byte's embedding, stochastic near it
    assert torch.equal(method.initial_z(x, deterministic=True), W[x.long()])
    noise = method.initial_z(x, deterministic=False) - W[x.long()]
    assert noise.std().item() == pytest.approx(0.1, rel=0.05)
    assert noise.mean().abs().item() < 0.01
    # in training, the t = 0 end is the same noisy source
    seen = _capture_path(method, monkeypatch, 0.0)
    method.loss(x, _bytes(64, L, seed=9).long(), 0)
    assert (seen[0][:64] - W[x.long()]).std().item() == pytest.approx(0.1, rel=0.05)
    monkeypatch.undo()
    # the read-out at t = 0 of deterministic inference is the current byte itself
    method.eval()
    steps = method.predict_steps(x[:2], deterministic=True)
    torch.testing.assert_close(steps[0], nearest_embedding_logits(W[x[:2].long()], W))
    assert torch.equal(steps[0].argmax(-1), x[:2].long())


def test_the_noise_source_is_unchanged():
    """The default source is the paper's N(0, I): deterministic inference starts at 0."""
    method, _, _ = _method("fm", inference_steps=3)
    assert method.source == "noise"
    x = _bytes(2, L, seed=10)
    assert torch.equal(method.initial_z(x, deterministic=True), torch.zeros(2, L, 256))


def test_current_token_is_refused_on_images(tmp_path, monkeypatch, capsys):
    with pytest.raises(ConfigError, match="current-token"):
        make_config(dataset="digits", method="fm", fm_source="current-token")
    # built for in-memory image tensors from a text config: refused by the build as well
    cfg = make_config(dataset="stdlib", method="fm", fm_source="current-token", context=L)
    with pytest.raises(ConfigError, match="current-token"):
        build_method(cfg, (1, 8, 8), 4)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    argv = ["train", "--dataset", "digits", "--method", "fm", "--fm-source", "current-token"]
    capsys.readouterr()
    rc = _cli(*argv, "--epochs", "1", "--out", str(out), *QUIET)
    stdout, err = capsys.readouterr()
    assert_one_line_error(rc, err, "--fm-source current-token")
    assert stdout == "" and snapshot(out) is None and not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "flat,fragment",
    [
        ({"fm_source": "previous-token"}, "--fm-source"),
        ({"fm_source_sigma": 0.5}, "--fm-source-sigma"),  # only with current-token
        ({"fm_source": "current-token", "fm_source_sigma": -1.0}, "--fm-source-sigma"),
        ({"method": "ct", "fm_source": "current-token"}, "--fm-source"),  # an fm option
    ],
)
def test_bad_fm_source_options(flat, fragment):
    with pytest.raises(ConfigError, match=fragment):
        make_config(**{"dataset": "stdlib", "method": "fm", **flat})


def test_help_lists_the_fm_source(capsys):
    with pytest.raises(SystemExit):
        _cli("train", "--help")
    out = " ".join(capsys.readouterr().out.split())
    assert "--fm-source FM_SOURCE" in out and "current-token" in out
    assert "--fm-source-sigma" in out
