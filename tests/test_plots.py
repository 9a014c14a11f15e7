"""``noprop plot``: every figure is written, non-empty, for a tiny digits run (prototype embedding)."""

import json

import pytest
import torch

from noprop.cli import main
from noprop.config import make_config
from noprop.runs import train

pytest.importorskip("matplotlib")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A DT prototype run (with a fake eval_steps.json) and an FM one-hot run without one."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("plots")
    proto, fm = root / "dt-proto", root / "fm-onehot"
    common = dict(epochs=2, max_train_samples=200)
    train(make_config(method="dt", embedding="prototype", T=2, **common), proto, progress=False)
    train(make_config(method="fm", inference_steps=5, **common), fm, progress=False)
    rows = [
        {"solver": s, "steps": k, "test_accuracy": 0.1 + 0.01 * k, "seconds": 0.001 * k}
        for s in ("euler", "heun")
        for k in (1, 2, 5)
    ]
    (proto / "eval_steps.json").write_text(json.dumps({"rows": rows}))
    yield proto, fm
    torch.set_num_threads(n)


def _check_pngs(paths):
    for p in paths:
        data = p.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 2000, p


def test_plot_cli_writes_every_figure(runs, tmp_path, capsys):
    proto, fm = runs
    out = tmp_path / "figs"
    assert main(["plot", str(proto), str(fm), "--out", str(out)]) == 0
    expected = {
        "accuracy_vs_time.png",
        "accuracy_vs_steps.png",
        "per_step-dt-proto.png",
        "block_loss-dt-proto.png",
        "prototypes-dt-proto.png",
        "per_step-fm-onehot.png",
        "block_loss-fm-onehot.png",
        "time_to_accuracy.md",
        "time_to_accuracy.json",
    }
    assert {p.name for p in out.iterdir()} == expected  # no prototypes for one-hot
    _check_pngs(p for p in out.iterdir() if p.suffix == ".png")
    printed = capsys.readouterr().out.split()
    assert sorted(printed) == sorted(str(out / n) for n in expected)


def test_plot_skips_missing_sweep_and_expands_bench_dirs(runs, tmp_path):
    from noprop_lab.plots import plot_runs

    _, fm = runs
    bench = tmp_path / "bench"
    (bench / "cells").mkdir(parents=True)
    (bench / "cells" / "fm-onehot").symlink_to(fm, target_is_directory=True)
    written = plot_runs([bench], tmp_path / "figs")
    assert sorted(p.name for p in written) == [
        "accuracy_vs_time.png",
        "block_loss-fm-onehot.png",
        "per_step-fm-onehot.png",
        "time_to_accuracy.json",
        "time_to_accuracy.md",
    ]
    _check_pngs(p for p in written if p.suffix == ".png")


def test_cells_of_two_tables_are_labelled_by_their_table(runs, tmp_path):
    from noprop_lab.plots import plot_runs

    _, fm = runs
    for table in ("paper", "interleaved"):
        (tmp_path / table / "cells").mkdir(parents=True)
        (tmp_path / table / "cells" / "fm-onehot").symlink_to(fm, target_is_directory=True)
    written = plot_runs([tmp_path / "paper", tmp_path / "interleaved", fm], tmp_path / "figs")
    names = {p.name for p in written}
    assert {"per_step-paper.fm-onehot.png", "per_step-interleaved.fm-onehot.png"} <= names
    assert "per_step-fm-onehot.png" in names  # the run outside a table keeps its own name
    rows = json.loads((tmp_path / "figs" / "time_to_accuracy.json").read_text())
    assert [r["run"] for r in rows["rows"]] == [
        "paper.fm-onehot",
        "interleaved.fm-onehot",
        "fm-onehot",
    ]


def test_plot_errors(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "no such run directory" in capsys.readouterr().err
    assert main(["plot", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "not a noprop run directory" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_prototype_images_are_denormalised():
    from noprop_lab.plots import _to_images

    w = torch.zeros(2, 3 * 4 * 4)
    w[1] = 1.0  # one standard deviation above the mean
    rgb = _to_images(w, (3, 4, 4), (0.5, 0.4, 0.3), (0.1, 0.2, 0.3))
    assert rgb.shape == (2, 4, 4, 3)
    assert rgb[0, 0, 0].tolist() == pytest.approx([0.5, 0.4, 0.3])
    assert rgb[1, 0, 0].tolist() == pytest.approx([0.6, 0.6, 0.6])
    gray = _to_images(torch.full((1, 16), 10.0), (1, 4, 4), (0.5,), (0.5,))
    assert gray.shape == (1, 4, 4) and gray.max() == 1.0  # clipped to pixel range
