"""The release artefacts work on their own (issue 29, point 7): ``python -m build`` makes an sdist and,
from it, a wheel whose metadata is valid (what ``twine check`` checks), and the wheel, installed into a
fresh virtual environment, gives a ``noprop`` command whose ``--version`` agrees with the package and
the wheel's name, and which trains.

Cost: a few seconds, not minutes. The build runs without isolation (``--no-isolation``: the test
environment's setuptools, no download) and the fresh environment does not install torch & co.: a
``.pth`` file in its site-packages appends the test environment's site-packages to ``sys.path``
(after its own, so the wheel's ``noprop`` wins). This test checks noprop's own files, metadata and
entry point, not the installers of its dependencies; a plain-path ``.pth`` line does not run the
outer environment's ``.pth`` files, so the repository's editable install (``src/`` on the path)
stays invisible, which ``test_runs_from_the_wheel`` verifies.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

from noprop import __version__

ROOT = Path(__file__).resolve().parents[1]
LAB = ROOT / "src" / "noprop_lab"
TEMPLATE = "report_template.md"  # lm compare's report prose: package data, wherever it lives


def _env() -> dict[str, str]:
    """The environment without anything that would put the repository's src/ on the path."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def _run(*argv: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"{argv} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


class Installed:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        dist = tmp / "dist"
        # sdist, then the wheel built from the unpacked sdist: the sdist must hold all the build needs,
        # and no stale build/ directory of the checkout can slip into the wheel
        _run(sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, ROOT, cwd=tmp)
        (self.wheel,) = dist.glob("*.whl")
        (self.sdist,) = dist.glob("*.tar.gz")
        self.venv = tmp / "venv"
        _run(sys.executable, "-m", "venv", "--without-pip", self.venv, cwd=tmp)
        bin_dir = self.venv / ("Scripts" if os.name == "nt" else "bin")
        self.python = bin_dir / "python"
        self.noprop = bin_dir / "noprop"
        code = "import sysconfig; print(sysconfig.get_path('purelib'))"
        self.site = Path(_run(self.python, "-c", code, cwd=tmp).stdout.strip())
        outer = dict.fromkeys(sysconfig.get_path(k) for k in ("purelib", "platlib"))
        (self.site / "_outer_site_packages.pth").write_text("".join(f"{p}\n" for p in outer))
        # pip comes from the outer site-packages but installs into the running (fresh) interpreter's;
        # --ignore-installed: the outer editable noprop is not this environment's to uninstall
        _run(self.python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed",
             "--disable-pip-version-check", "--quiet", self.wheel, cwd=tmp)  # fmt: skip


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    return Installed(tmp_path_factory.mktemp("wheel"))


def test_wheel_and_sdist_contents(installed: Installed):
    names = zipfile.ZipFile(installed.wheel).namelist()
    assert installed.wheel.name == f"noprop-{__version__}-py3-none-any.whl"
    assert any(n.endswith(f"/{TEMPLATE}") for n in names), f"{TEMPLATE} is not in the wheel"
    assert not any(n.startswith("tests/") for n in names)
    if LAB.is_dir():
        assert any(n.startswith("noprop_lab/") for n in names), "src/noprop_lab is not in the wheel"
    with tarfile.open(installed.sdist) as sdist:
        top = f"noprop-{__version__}/"
        members = {m.name.removeprefix(top) for m in sdist.getmembers()}
    for needed in ("pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "PKG-INFO"):
        assert needed in members, f"{needed} is not in the sdist"
    assert any(m.endswith(f"/{TEMPLATE}") for m in members)


def test_metadata_is_valid(installed: Installed):
    """What ``twine check`` checks, without twine: the metadata parses and validates, and the README
    is the long description with its content type (PyPI renders it as Markdown)."""
    from packaging.metadata import Metadata

    with zipfile.ZipFile(installed.wheel) as whl:
        raw = whl.read(f"noprop-{__version__}.dist-info/METADATA").decode()
        entry_points = whl.read(f"noprop-{__version__}.dist-info/entry_points.txt").decode()
    meta = Metadata.from_email(raw, validate=True)
    assert (meta.name, str(meta.version)) == ("noprop", __version__)
    assert meta.description_content_type == "text/markdown"
    assert meta.description and meta.description.startswith("# ")
    assert str(meta.license_expression) == "MIT"
    assert "noprop = noprop.cli:main" in entry_points
    if LAB.is_dir():
        assert "[noprop.commands]" in entry_points


def test_runs_from_the_wheel(installed: Installed):
    # where `import noprop` finds the package (found, not run: that would import torch, seconds)
    code = "import importlib.util; print(importlib.util.find_spec('noprop').origin)"
    where = Path(_run(installed.python, "-c", code, cwd=installed.tmp).stdout.strip())
    assert where.is_relative_to(installed.site), f"noprop imported from {where}, not the wheel"


def test_version_agrees(installed: Installed):
    out = _run(installed.noprop, "--version", cwd=installed.tmp).stdout
    assert out.strip() == f"noprop {__version__}"


def test_trains(installed: Installed):
    out = installed.tmp / "run"
    _run(installed.noprop, "train", "--dataset", "digits", "--epochs", "1", "--T", "2",
         "--no-progress", "--threads", "1", "--out", out, cwd=installed.tmp)  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary  # the run finished: its summary is written last


def test_lab_subcommand(installed: Installed):
    """``noprop bench`` works from the wheel: with the lab in ``noprop_lab``, through its entry point."""
    _run(installed.noprop, "bench", "--help", cwd=installed.tmp)
