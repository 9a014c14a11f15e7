"""The paper presets and TOML config files (issue 13): ``noprop train --preset/--config``, ``noprop presets``.

Every preset must equal its row of the paper's hyper-parameter table (spec §4: v1 Table 3 = v2 Table 4).
:data:`TABLE` is a literal copy of those rows, so the test runs on a fresh clone; where the spec is
checked out next to the repository (``../shared/spec``, or ``/work/shared/spec``) the copy is compared
with the spec as well.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from noprop.cli import main
from noprop.config import make_config
from noprop.data import datasets as ds
from noprop.errors import ConfigError
from noprop.presets import PRESETS, load_config_file, resolve_flat
from noprop.tasks import task_for

from .test_reliability import assert_one_line_error, snapshot

ROOT = Path(__file__).resolve().parents[1]
SPEC_PATHS = [
    Path("/work/shared/spec/noprop-paper.md"),
    ROOT.parent / "shared/spec/noprop-paper.md",
]

#: spec §4, the rows of "Hyperparameters — v1 Table 3 = v2 Table 4", verbatim
TABLE = """
| MNIST | Backprop | 128 | 100 | AdamW | 0.001 | 0.001 | 10 | – |
| MNIST | NoProp-DT | 128 | 100 | AdamW | 0.001 | 0.001 | 10 | 0.1 |
| MNIST | Adjoint | 128 | 2 | AdamW | 0.001 | 0.001 | 1000 | – |
| MNIST | NoProp-CT | 128 | 100 | Adam | 0.001 | 0.001 | 1000 | 1 |
| MNIST | NoProp-FM | 128 | 100 | Adam | 0.001 | 0.001 | 1000 | – |
| CIFAR-10 | Backprop | 128 | 150 | AdamW | 0.001 | 0.001 | 10 | – |
| CIFAR-10 | NoProp-DT | 128 | 150 | AdamW | 0.001 | 0.001 | 10 | 0.1 |
| CIFAR-10 | Adjoint | 128 | 4 | AdamW | 0.001 | 0.001 | 1000 | – |
| CIFAR-10 | NoProp-CT | 128 | 500 | Adam | 0.001 | 0.001 | 1000 | 1 |
| CIFAR-10 | NoProp-FM | 128 | 500 | Adam | 0.001 | 0.001 | 1000 | – |
| CIFAR-100 | Backprop | 128 | 150 | AdamW | 0.001 | 0.001 | 10 | – |
| CIFAR-100 | NoProp-DT | 128 | 150 | AdamW | 0.001 | 0.001 | 10 | 0.1 |
| CIFAR-100 | Adjoint | 128 | 4 | AdamW | 0.001 | 0.001 | 1000 | – |
| CIFAR-100 | NoProp-CT | 128 | 1000 | Adam | 0.001 | 0.001 | 1000 | 1 |
| CIFAR-100 | NoProp-FM | 128 | 1000 | Adam | 0.001 | 0.001 | 1000 | – |
"""
HEADER = "| Dataset | Method | Batch | Epochs | Optimiser | LR | Weight decay | Timesteps | η |"
DATASETS = {"MNIST": "mnist", "CIFAR-10": "cifar10", "CIFAR-100": "cifar100"}
METHODS = {"Backprop": "backprop", "NoProp-DT": "dt", "Adjoint": "adjoint", "NoProp-CT": "ct",
           "NoProp-FM": "fm"}  # fmt: skip


def rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.strip()]  # fmt: skip


def spec_rows(spec: str) -> list[list[str]]:
    """The rows of the table under the spec's "## 4." heading."""
    section = spec.split("\n## 4.", 1)[1].split("\n## ", 1)[0]
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == HEADER)
    body = []
    for line in lines[start + 2 :]:  # past the header and the |---| line
        if not line.startswith("|"):
            break
        body.append(line)
    return rows("\n".join(body))


def test_the_literal_table_is_the_spec_table():
    spec = next((p for p in SPEC_PATHS if p.is_file()), None)
    if spec is None:
        pytest.skip("the spec is not checked out next to the repository")
    assert spec_rows(spec.read_text()) == rows(TABLE)


@pytest.mark.parametrize("row", rows(TABLE), ids=lambda r: f"{r[0]}-{r[1]}")
def test_every_preset_is_its_table_row(row: list[str]):
    data, label, batch, epochs, optimiser, lr, wd, steps, eta = row
    dataset, method = DATASETS[data], METHODS[label]
    preset = PRESETS[f"paper-{dataset}-{method}"]
    assert preset.source == "spec §4 (v2 Table 4): " + " | ".join(row)
    cfg = make_config(**preset.values)
    assert (cfg.data.dataset, cfg.method.method) == (dataset, method)
    assert cfg.train.batch_size == int(batch)
    assert cfg.train.epochs == int(epochs)
    assert cfg.train.optimizer == optimiser.lower()
    assert cfg.train.lr == float(lr)
    assert cfg.train.weight_decay == float(wd)
    # the paper's learned embedding dimension: the image tasks' default (None = the task's default)
    assert cfg.model.embed_dim is None
    assert task_for(cfg.data).default_embed_dim == 20
    options = cfg.method.to_dict()
    timesteps = {"backprop": ["T"], "dt": ["T"], "ct": ["inference_steps"],
                 "fm": ["inference_steps"], "adjoint": ["adjoint_steps", "inference_steps"]}  # fmt: skip
    for name in timesteps[method]:
        assert options[name] == int(steps), name
        assert preset.values[name] == int(steps), name
    if eta == "–":
        assert "eta" not in preset.values
        assert "eta" not in options  # the method has no η
    else:
        assert options["eta"] == float(eta)
    paper_k = ["t_samples"] if method in ("ct", "fm") else []  # one t per image, as Algorithms 2-3
    assert set(preset.values) == {"dataset", "method", "batch_size", "epochs", "optimizer", "lr",
                                  "weight_decay", *timesteps[method], *(["eta"] if eta != "–" else []),
                                  *paper_k}  # fmt: skip
    if paper_k:
        assert options["t_samples"] == 1


def test_one_preset_per_table_row():
    names = [f"paper-{DATASETS[r[0]]}-{METHODS[r[1]]}" for r in rows(TABLE)]
    assert sorted(PRESETS) == sorted(names) and len(names) == 15


def test_presets_command_lists_every_preset(capsys: pytest.CaptureFixture[str]):
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(PRESETS)
    for line, preset in zip(lines, PRESETS.values(), strict=True):
        assert line.startswith(f"{preset.name}: ")
        assert preset.source in line
        assert all(f"{k}={v}" in line for k, v in preset.values.items())


# ------------------------------------------------------------------------------ resolution


def test_config_file_flat_keys_and_sections(tmp_path: Path):
    path = tmp_path / "c.toml"
    path.write_text(
        'epochs = 3\n[data]\ndataset = "digits"\n[train]\nlr = 1\n'
        '[method]\nmethod = "ct"\ninference_steps = 20\n[model]\nembedding = "learned"\n'
    )
    flat = load_config_file(path)
    assert flat == {"epochs": 3, "method": "ct", "dataset": "digits", "lr": 1.0,
                    "inference_steps": 20, "embedding": "learned"}  # fmt: skip
    assert isinstance(flat["lr"], float)  # a TOML integer for a float field
    cfg = make_config(**flat)
    assert (cfg.train.epochs, cfg.options.inference_steps) == (3, 20)  # type: ignore[attr-defined]


def test_precedence_flags_over_file_over_preset(tmp_path: Path):
    path = tmp_path / "c.toml"
    path.write_text("[train]\nlr = 0.01\nbatch_size = 64\n")
    flat = resolve_flat("paper-mnist-dt", path, {"batch_size": 32})
    assert flat["lr"] == 0.01  # file over preset
    assert flat["batch_size"] == 32  # flag over file
    assert flat["weight_decay"] == 0.001 and flat["T"] == 10  # the preset's
    assert resolve_flat(None, None, {"T": 3}) == {"T": 3}  # no preset, no file: the flags


def test_another_method_drops_the_presets_method_options():
    flat = resolve_flat("paper-mnist-dt", None, {"method": "ct"})
    assert "T" not in flat and "eta" not in flat  # DT's, not CT's (the paper's CT η is 1)
    assert flat["optimizer"] == "adamw" and flat["epochs"] == 100
    make_config(**flat)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("frobnicate = 1\n", "unknown key 'frobnicate'"),
        (
            "[train]\ndataset = 'mnist'\n",
            "section [train] has no key 'dataset' (it belongs in [data])",
        ),
        ("[optim]\nlr = 1\n", "unknown key 'optim'"),
        ("epochs = 'three'\n", "epochs must be an integer"),
        ("epochs = true\n", "epochs must be an integer"),
        ("lr = 'fast'\n", "lr must be a number"),
        ("epochs = 3\n[train]\nepochs = 4\n", "epochs is given twice"),
        (
            "method = 'ct'\nT = 4\n",
            "--method ct has no option T (it applies to --method dt, backprop, diffusionblocks)",
        ),
        ("epochs = [\n", "is not valid TOML"),
    ],
)
def test_bad_config_files(tmp_path: Path, text: str, fragment: str):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        resolve_flat(None, path, {})
    assert fragment in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------------------------ CLI

FAST = ["--epochs", "1", "--dataset", "digits", "--max-train-samples", "100", "--T", "2",
        "--no-progress", "--threads", "1"]  # fmt: skip


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ds.DATA_DIR_ENV, str(tmp_path / "default-cache"))
    monkeypatch.chdir(tmp_path)


def config_json(run: Path) -> dict:
    d = json.loads((run / "config.json").read_text())
    return {k: v for section in d.values() for k, v in section.items()}


def test_train_with_a_preset_and_flags(tmp_path: Path):
    out = tmp_path / "run"
    assert main(["train", "--preset", "paper-mnist-dt", *FAST, "--out", str(out)]) == 0
    c = config_json(out)
    preset = PRESETS["paper-mnist-dt"].values
    for k in ("batch_size", "lr", "weight_decay", "optimizer", "eta", "method"):
        assert c[k] == preset[k], k
    assert (c["epochs"], c["dataset"], c["T"]) == (1, "digits", 2)  # the flags'


def test_train_with_a_preset_a_file_and_flags(tmp_path: Path):
    path = tmp_path / "c.toml"
    path.write_text("[train]\nlr = 0.002\nbatch_size = 64\n[method]\neta = 0.5\n")
    out = tmp_path / "run"
    argv = ["train", "--preset", "paper-mnist-dt", "--config", str(path), *FAST,
            "--batch-size", "32", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    c = config_json(out)
    assert (c["lr"], c["eta"]) == (0.002, 0.5)  # the file over the preset
    assert c["batch_size"] == 32  # the flag over the file
    assert (c["weight_decay"], c["optimizer"]) == (0.001, "adamw")  # the preset's


def _bad(tmp: Path, name: str) -> list[str]:
    run = ["train", *FAST, "--out", str(tmp / "out")]
    if name == "unknown-preset":
        return [*run, "--preset", "paper-mnist-sgd"]
    if name == "missing-file":
        return [*run, "--config", str(tmp / "nowhere.toml")]
    if name == "resume-with-preset":
        return ["train", "--resume", str(tmp / "out"), "--preset", "paper-mnist-dt"]
    if name == "resume-with-config":
        (tmp / "c.toml").write_text("epochs = 2\n")
        return ["train", "--resume", str(tmp / "out"), "--config", str(tmp / "c.toml")]
    text = {"unknown-key": "frobnicate = 1\n", "bad-toml": "epochs = = 3\n",
            "wrong-type": "epochs = 'x'\n", "method-option-of-another-method": "fm_sigma = 0.1\n",
            "not-utf8": b"epochs = '\xff'\n"}[name]  # fmt: skip
    path = tmp / "c.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return [*run, "--config", str(path)]


ERRORS = {
    "unknown-preset": "unknown --preset 'paper-mnist-sgd'",
    "missing-file": "nowhere.toml not found",
    "unknown-key": "unknown key 'frobnicate'",
    "bad-toml": "is not valid TOML",
    "wrong-type": "epochs must be an integer",
    "method-option-of-another-method": "--method dt has no option fm_sigma",
    "not-utf8": "is not UTF-8 text",
    "resume-with-preset": "--resume uses the run's own config.json",
    "resume-with-config": "--resume uses the run's own config.json",
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_bad_preset_or_config_is_one_line(name: str, tmp_path: Path, capsys):
    argv = _bad(tmp_path, name)
    before = snapshot(tmp_path / "out")
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse
        rc = e.code
    out, err = capsys.readouterr()
    assert_one_line_error(rc, err, ERRORS[name])
    assert out == ""
    assert snapshot(tmp_path / "out") == before is None
    assert not (tmp_path / "runs").exists()
