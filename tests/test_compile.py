"""``--compile``: CT and FM inference through ``torch.compile`` is exact within tolerance, leaves the weights
and checkpoints alone, and is refused (one line) for the methods where it was measured no faster."""

from __future__ import annotations

import copy
import re

import pytest
import torch

from noprop import build_method, make_config
from noprop.cli import main
from noprop.errors import ConfigError
from noprop.runs import train

pytest.importorskip("torch._inductor")


@pytest.fixture(scope="module")
def ct_run(tmp_path_factory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("compile") / "ct"
    train(make_config(method="ct", epochs=1, max_train_samples=200, inference_steps=8), run,
          progress=False)  # fmt: skip
    yield run
    torch.set_num_threads(n)


def test_compiled_ct_inference_matches_eager_and_keeps_the_weights():
    cfg = make_config(method="ct", inference_steps=6)
    eager = build_method(cfg, (12,), 3).eval()
    compiled = copy.deepcopy(eager)
    keys = list(compiled.state_dict())
    seconds = compiled.compile_inference(batch_size=16)
    assert seconds > 0
    x = torch.randn(16, 12)
    for deterministic in (True, False):
        torch.manual_seed(0)
        a = eager.predict_steps(x, deterministic=deterministic)
        torch.manual_seed(0)
        b = compiled.predict_steps(x, deterministic=deterministic)
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    assert list(compiled.state_dict()) == keys  # checkpoints load with or without --compile
    eager.load_state_dict(compiled.state_dict())
    # the compiled path really runs (a counter around it), and only at inference
    fn, block_id = compiled._compiled_fuse
    calls = []
    compiled._compiled_fuse = (lambda *a: calls.append(1) or fn(*a), block_id)
    compiled.predict_steps(x, deterministic=True)
    assert len(calls) == 6
    # a copy drops it: it must not run the original's block with the copy's weights
    twin = copy.deepcopy(compiled)
    assert twin._compiled_fuse is None
    with torch.no_grad():
        for p in twin.block.parameters():
            p.add_(0.1)
    assert not torch.allclose(twin.predict_steps(x, deterministic=True),
                              compiled.predict_steps(x, deterministic=True))  # fmt: skip
    # training (grad enabled) takes the eager path: the same loss
    compiled.train(), eager.train()
    y = torch.tensor([0, 1, 2] * 5 + [0])
    before = len(calls)
    torch.manual_seed(1)
    la = eager.loss(x, y)[0]
    torch.manual_seed(1)
    lb = compiled.loss(x, y)[0]
    assert torch.equal(la, lb)
    assert len(calls) == before  # the training step did not call the compiled function


def test_compiled_fm_inference_matches_eager():
    eager = build_method(make_config(method="fm", inference_steps=4), (12,), 3).eval()
    compiled = copy.deepcopy(eager)
    compiled.compile_inference(batch_size=8)
    x = torch.randn(8, 12)
    a = eager.predict_steps(x, deterministic=True)
    b = compiled.predict_steps(x, deterministic=True)
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


def test_other_methods_refuse_compile():
    dt = build_method(make_config(method="dt", T=2), (12,), 3)
    with pytest.raises(
        ConfigError, match="--compile is offered for --method ct and fm only, not dt"
    ):
        dt.compile_inference(4)
    adjoint = build_method(make_config(method="adjoint"), (12,), 3)
    with pytest.raises(ConfigError, match="not adjoint"):
        adjoint.compile_inference(4)


def test_eval_compile_cli(ct_run, capsys):
    assert main(["eval", str(ct_run)]) == 0
    plain = capsys.readouterr().out
    assert main(["eval", str(ct_run), "--compile"]) == 0
    out = capsys.readouterr().out
    assert "compiled NoProp-CT inference (torch.compile, inductor) in" in out

    def accuracy(text: str) -> str:
        return re.search(r"runs\): ([0-9.]+ ± [0-9.]+)", text).group(1)

    assert accuracy(out) == accuracy(plain)


def test_eval_compile_refused_for_dt(tmp_path, capsys):
    run = tmp_path / "dt"
    train(make_config(method="dt", T=2, epochs=1, max_train_samples=60), run, progress=False)
    assert main(["eval", str(run), "--compile"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--compile is offered for --method ct and fm only, not dt" in err[0]
