"""Files from someone else (issue 23, SECURITY.md): an export whose config or safetensors header
lies, a decompression-bomb PNG, a forged .npy — one line, exit code 2, bounded memory."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import noprop
from noprop.build import build_method
from noprop.cli import main
from noprop.config import RunConfig, make_config
from noprop.data.images import read_images
from noprop.errors import CheckpointError, ConfigError, DataError, NoPropError
from noprop.tasks import task_for
from noprop.training.checkpoint import save_checkpoint

SRC = Path(__file__).resolve().parents[1] / "src"


def make_export(out: Path, **flat: object) -> Path:
    """What ``noprop export`` writes, for a freshly initialised digits model (no training)."""
    cfg = make_config(T=2, **flat)
    task = task_for(cfg.data)
    x = torch.zeros(task.num_classes, *task.in_shape)
    method = build_method(cfg, task, None, x, torch.arange(task.num_classes))
    out.mkdir(parents=True)
    state = {k: v.detach().contiguous() for k, v in method.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "noprop"})
    (out / "config.json").write_text(json.dumps(cfg.to_dict()))
    norm = {"mean": [0.3], "std": [0.4], "max_value": 16.0, "in_shape": [1, 8, 8]}
    (out / "normalisation.json").write_text(json.dumps(norm))
    return out


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_export(tmp_path_factory.mktemp("untrusted") / "export")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("inputs") / "x.npy"
    np.save(path, np.zeros((3, 8, 8), np.uint8))
    return path


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], *fragments: str) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("noprop: error:"), lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def edit_config(export: Path, dst: Path, section: str, key: str, value: object) -> Path:
    shutil.copytree(export, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg[section][key] = value
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def png_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """A valid PNG header claiming width × height 8-bit grey pixels, with a few kB of zeros."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * min((width + 1) * 16, 1 << 20), 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# --- acceptance case 1: a config with T = 10^9 ----------------------------------------------


def test_huge_T_is_refused_before_anything_is_built(export, inputs, tmp_path, capsys):
    bad = edit_config(export, tmp_path / "big", "method", "T", 10**9)
    one_line_error(capsys, ["predict", str(bad), str(inputs)], "config.json", "--T must be <= 1000")
    with pytest.raises(ConfigError, match="--T must be <= 1000"):
        noprop.load(bad, device="cpu")


def test_huge_T_under_a_memory_limit_peaks_below_1_GB(export, inputs, tmp_path):
    """In a fresh process limited to 2 GiB of address space (the old code asked for 8 GB): exit 2,
    one line, and a peak resident size under 1 GB."""
    bad = edit_config(export, tmp_path / "big", "method", "T", 10**9)
    script = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
        "from noprop.cli import main\n"
        f"rc = main(['predict', {str(bad)!r}, {str(inputs)!r}, '--threads', '1'])\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
        "sys.exit(rc)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"}
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--T must be <= 1000" in lines[0], lines
    peak_kib = int(proc.stdout.strip().splitlines()[-1])
    assert peak_kib < 1 << 20, f"peak resident size {peak_kib} KiB"


# --- acceptance case 2: a forged safetensors header ------------------------------------------


def forge_offsets(src: Path, dst: Path, end: int = 10**12) -> Path:
    shutil.copytree(src, dst)
    data = (dst / "model.safetensors").read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"] = [0, end]
    raw = json.dumps(header).encode()
    (dst / "model.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n :])
    return dst


def test_forged_safetensors_offsets_are_one_line(export, inputs, tmp_path, capsys):
    bad = forge_offsets(export, tmp_path / "forged")
    one_line_error(capsys, ["predict", str(bad), str(inputs)], "model.safetensors", "forged")
    one_line_error(capsys, ["eval", str(bad), "--chains", "1"], "model.safetensors")


def test_header_must_match_the_config_exactly(export, tmp_path):
    cases = {
        "T": (3, "lacks tensor 'blocks.2."),
        "embedding": ("learned", "embedding.weight"),
    }
    for key, (value, fragment) in cases.items():
        section = "method" if key == "T" else "model"
        bad = edit_config(export, tmp_path / key, section, key, value)
        with pytest.raises(CheckpointError, match=fragment.replace(".", r"\.")):
            noprop.load(bad, device="cpu")
    # a tensor of the right name but another shape or dtype
    state = load_file(export / "model.safetensors")
    name = next(k for k, v in state.items() if v.dim() == 2)
    for swap, fragment in ((state[name].T.contiguous(), "the config implies"),
                           (state[name].double(), "float64")):  # fmt: skip
        bad = tmp_path / f"swap-{fragment[:5]}"
        shutil.copytree(export, bad)
        save_file({**state, name: swap}, str(bad / "model.safetensors"))
        with pytest.raises(CheckpointError, match=fragment):
            noprop.load(bad, device="cpu")
    assert noprop.load(export, device="cpu").predict(np.zeros((2, 8, 8), np.uint8)).shape == (2,)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("ten", "T must be int"),
        (2.5, "T must be int"),
        ([2], "T must be int"),
        (0, "--T must be >= 1"),
    ],
)
def test_config_fields_are_typed(export, tmp_path, value, fragment):
    bad = edit_config(export, tmp_path / "bad", "method", "T", value)
    with pytest.raises(NoPropError, match=fragment):
        noprop.load(bad, device="cpu")


def test_other_config_and_normalisation_damage(export, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(export, bad)
    (bad / "config.json").write_text(json.dumps({"model": 5}))
    with pytest.raises(ConfigError, match="section 'model' must be a JSON object"):
        noprop.load(bad, device="cpu")
    shutil.copy(export / "config.json", bad / "config.json")
    for norm, fragment in (({"mean": [0.1, 0.2], "std": [1, 1], "max_value": 1}, "1 finite"),
                           ({"mean": [0.1], "std": [0], "max_value": 1}, "must be > 0"),
                           ({"mean": "x"}, "cannot read")):  # fmt: skip
        (bad / "normalisation.json").write_text(json.dumps(norm))
        with pytest.raises(CheckpointError, match=fragment):
            noprop.load(bad, device="cpu")


def test_checkpoint_config_and_state_are_checked_too(tmp_path):
    """A run directory: its checkpoint's model state must be the config's model, before build."""
    cfg = make_config(T=2)
    task = task_for(cfg.data)
    x = torch.zeros(task.num_classes, *task.in_shape)
    state = build_method(cfg, task, None, x, torch.arange(10)).state_dict()
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    state.pop(next(iter(state)))
    save_checkpoint(run / "checkpoint.pt", {"config": cfg.to_dict(), "trainer": {"model": state}})
    with pytest.raises(CheckpointError, match="lacks tensor"):
        noprop.load(run, device="cpu")
    assert main(["eval", str(run)]) == 2
    huge = cfg.to_dict()
    huge["method"]["T"] = 10**9
    save_checkpoint(run / "checkpoint.pt", {"config": huge, "trainer": {"model": state}})
    (run / "config.json").write_text(json.dumps(huge))
    with pytest.raises(ConfigError, match="--T must be <= 1000"):
        noprop.load(run, device="cpu")
    RunConfig.from_dict(cfg.to_dict())  # the genuine config still reads


# --- acceptance case 3: a decompression-bomb PNG ---------------------------------------------


def test_decompression_bomb_png_fails_predict_naming_it(export, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "a.png")
    (folder / "bomb.png").write_bytes(png_bomb())
    assert (folder / "bomb.png").stat().st_size < 10_000
    out = tmp_path / "p.csv"
    line = one_line_error(
        capsys, ["predict", str(export), str(folder), "--out", str(out)], "bomb.png"
    )
    assert "decompression bomb" in line
    assert not out.exists()


def test_image_limits_are_overridable(tmp_path, monkeypatch):
    big = tmp_path / "big.png"
    big.write_bytes(png_bomb(5000, 5000))  # 25 MP: over the default 16.7 MP
    with pytest.raises(DataError, match="5000×5000 pixels, more than 16777216"):
        read_images([big], "L", (8, 8))
    monkeypatch.setenv("NOPROP_MAX_IMAGE_PIXELS", str(30_000_000))
    arrays, _, resized = read_images([big], "L", (8, 8))
    assert arrays[0].shape == (8, 8) and resized == 1
    monkeypatch.setenv("NOPROP_MAX_IMAGE_BYTES", "100")
    with pytest.raises(DataError, match="more than 100 .NOPROP_MAX_IMAGE_BYTES"):
        read_images([big], "L", (8, 8))
    monkeypatch.setenv("NOPROP_MAX_IMAGE_BYTES", "lots")
    with pytest.raises(ConfigError, match="NOPROP_MAX_IMAGE_BYTES must be a positive integer"):
        read_images([big], "L", (8, 8))


def test_training_folder_policy_skips_bad_images_with_a_count(tmp_path, capsys):
    """The policy an image-folder data set will use: skip with one warning counting them."""
    from PIL import Image

    good = tmp_path / "good.png"
    Image.fromarray(np.full((8, 8), 7, np.uint8)).save(good)
    (tmp_path / "bomb.png").write_bytes(png_bomb())
    (tmp_path / "junk.png").write_bytes(b"not an image")
    paths = [good, tmp_path / "bomb.png", tmp_path / "junk.png"]
    arrays, kept, _ = read_images(paths, "L", (8, 8), skip_bad=True)
    assert kept == [good] and int(arrays[0][0, 0]) == 7
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "skipped 2 of 3 images" in err[0] and "bomb.png" in err[0]
    with pytest.raises(DataError, match="none of the 2 images"):
        read_images(paths[1:], "L", (8, 8), skip_bad=True)
    with pytest.raises(DataError, match="bomb.png"):
        read_images(paths, "L", (8, 8))


def test_forged_npy_is_refused_before_reading(export, tmp_path, capsys):
    path = tmp_path / "lie.npy"
    header = b"{'descr': '|u1', 'fortran_order': False, 'shape': (1000000000000, 8, 8), }"
    header += b" " * (118 - len(header)) + b"\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\0" * 64)
    one_line_error(capsys, ["predict", str(export), str(path)], "lie.npy", "truncated or forged")
