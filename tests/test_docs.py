"""Every shell block of README.md and docs/*.md runs, and the README's commands are CI's.

How a block is run is said by an HTML comment on the line before its fence:

* none, or ``<!-- doc-test: run -->``: every command runs, in order, in one scratch directory per page
  (so a page's ``eval runs/X`` reads the ``train --out runs/X`` above it). ``noprop ...`` runs in this
  process through ``noprop.cli.main`` in a *cheap form* (the table ``cheap`` below): image data sets
  become the bundled ``digits``, text corpora a small file, one epoch on a few hundred examples,
  a few inference steps, one seed, one method; ``predict``'s inputs are written first.
* ``<!-- doc-test: install -->``: the README's install lines. Their ``pip`` part must be the one CI
  uses (``.ci/run``); the ``noprop`` command that ends the first runs as above.
* ``<!-- doc-test: parse (why) -->``: cannot run here (torchrun, a GPU, hours). Each ``noprop``
  command (also after ``torchrun ... -m noprop``) is parsed by ``noprop.cli.build_parser()``, so a
  renamed flag fails, and each ``bash``/``python`` script must exist.

In every kind of block, ``bash X``/``python X`` lines name a script of the repository that must exist
(the studies take hours), and any other command fails the test: a new kind of line must be classified
here first.
"""

from __future__ import annotations

import gzip
import re
import shlex
import struct
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(
    r"(?:<!-- doc-test: (?P<mark>[^>]*?) -->\n)?```(?P<lang>[a-z]*)\n(?P<body>.*?)```", re.S
)
SHELL = {"bash", "sh", "console", "shell"}
IMAGE_SETS = {"mnist", "cifar10", "cifar100", "digits"}
TEXT_SETS = {"stdlib", "text", "tiny-shakespeare"}
SLOW_INFERENCE = {"ct", "fm", "adjoint"}
#: what makes a text model tiny (the sizes of tests/test_lm_compare.py)
TINY_TEXT = {"--context": "16", "--width": "32", "--heads": "2", "--batch-size": "8"}
TINY_LM = ["--layers", "2", "--width", "32", "--heads", "2", "--context", "16", "--batch-size", "8",
           "--minutes", "0.01", "--eval-windows", "6", "--sample-bytes", "12", "--chains", "2",
           "--no-progress"]  # fmt: skip


def blocks(page: Path) -> list[tuple[str, list[str]]]:
    """(kind, commands) of every shell block; a command's continuation lines are joined."""
    out = []
    for m in FENCE.finditer(page.read_text()):
        if m["lang"] not in SHELL:
            continue
        kind = (m["mark"] or "run").split()[0]
        assert kind in {"run", "install", "parse"}, (
            f"{page.name}: unknown doc-test mark {m['mark']!r}"
        )
        text = m["body"].replace("\\\n", " ")
        cmds = [line for line in text.splitlines() if shlex.split(line, comments=True)]
        out.append((kind, cmds))
    return out


def shell_blocks_of(page: Path) -> list[str]:
    return [m["body"] for m in FENCE.finditer(page.read_text()) if m["lang"] in SHELL]


def noprop_argv(tokens: list[str]) -> list[str] | None:
    """The noprop arguments of ``noprop ...``, ``python -m noprop ...``, ``torchrun ... -m noprop ...``."""
    if tokens[0] == "noprop":
        return tokens[1:]
    if tokens[0] in {"torchrun", "python", "python3"} and "-m" in tokens:
        i = tokens.index("-m")
        if tokens[i + 1] == "noprop":
            return tokens[i + 2 :]
    return None


def _opt(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def _set(argv: list[str], flag: str, value: str | None) -> list[str]:
    """argv with ``flag value`` replaced (or added); value None removes the flag and its value."""
    if flag in argv:
        i = argv.index(flag)
        argv = argv[:i] + argv[i + 2 :]
    return argv if value is None else [*argv, flag, value]


def _first(argv: list[str], flag: str, n: int = 1) -> list[str]:
    value = _opt(argv, flag)
    return argv if value is None else _set(argv, flag, ",".join(value.split(",")[:n]))


def cheap(argv: list[str], fx: dict[str, Path]) -> list[str]:
    """The same command at test size: bundled or tiny data, one epoch, few steps, one seed."""
    argv = [a for a in argv if a != "..."]
    cmd = argv[0] if argv[0] not in {"bench", "lm"} else " ".join(argv[:2])
    dataset = _opt(argv, "--dataset")
    if dataset in IMAGE_SETS:
        argv = _set(_set(argv, "--data-dir", None), "--dataset", "digits")
    elif dataset in TEXT_SETS:
        argv = _set(_set(argv, "--dataset", "text"), "--data-dir", str(fx["corpus"]))
    elif dataset in {"folder", "npy"}:
        argv = _set(argv, "--data-dir", str(fx[dataset]))
    elif cmd == "eval":
        argv = _set(argv, "--data-dir", None)  # the run's own (digits) data
    elif cmd in {"train", "lm compare"} and "--resume" not in argv:
        if _opt(argv, "--preset"):
            argv = _set(_set(argv, "--data-dir", None), "--dataset", "digits")
    method = _opt(argv, "--method") or ""
    preset = _opt(argv, "--preset") or ""
    if cmd == "train":
        if "--resume" in argv:
            return _set(argv, "--epochs", "2")
        argv = _set(argv, "--epochs", "1")
        if _opt(argv, "--dataset") in {None, "digits"}:
            argv = _set(argv, "--max-train-samples", "200")
        if method in SLOW_INFERENCE or preset.endswith(("-ct", "-fm")):
            argv = _set(argv, "--inference-steps", "4")
        if method == "adjoint":
            argv = _set(argv, "--adjoint-steps", "4")
        if _opt(argv, "--dataset") == "text":
            for flag, value in TINY_TEXT.items():
                argv = _set(argv, flag, value)
            argv = _set(argv, "--max-train-samples", "32")
        return argv
    if cmd == "eval":
        argv = [
            a for a in argv if a != "--compile"
        ]  # inductor needs a compiler: tests/test_compile.py
        if "--runs" in argv:
            argv = _set(argv, "--runs", "2")
        return _first(_first(argv, "--chains", 2), "--steps", 2)
    if cmd == "predict":
        return _set(argv, "--chains", "2") if "--chains" in argv else argv
    if cmd == "bench efficiency":
        argv = _set(_first(_set(argv, "--max-batches", "2"), "--methods"), "--eval-samples", "20")
        argv = argv if "--methods" in argv else [*argv, "--methods", "dt"]
        return _first(argv, "--memory-vs-T")
    if cmd == "bench reproduce":
        argv = _first(_first(argv, "--seeds"), "--methods")
        argv = (
            _first(argv, "--embeddings")
            if "--embeddings" in argv
            else [*argv, "--embeddings", "one-hot"]
        )
        return _set(_set(argv, "--epochs", "1"), "--runs", "1")
    if cmd == "lm compare":
        argv = _set(argv, "--dataset", "text") if "--dataset" not in argv else argv
        argv = _set(argv, "--data-dir", str(fx["corpus"]))
        # one model: the default pair at this size is tests/test_lm_compare.py's fixture already
        argv = _first(argv, "--models", 1) if "--models" in argv else [*argv, "--models", "dt"]
        return [*_first(argv, "--layers-per-block"), *TINY_LM]
    return argv


def write_inputs(where: Path) -> dict[str, Path]:
    """The inputs the pages name: digits as .npy, IDX, PNG folders, a config file, a corpus."""
    from sklearn.datasets import load_digits

    from .test_language import _write_corpus

    d = load_digits()
    x = (d.images * 15).astype(np.uint8)[:300]  # raw 8×8 pixels, 0..240
    y = d.target[:300].astype(np.int64)
    np.save(where / "some-digits.npy", x[:20])
    with gzip.open(where / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 0x803, 20, 8, 8) + x[:20].tobytes())
    arrays = where / "arrays"
    arrays.mkdir()
    np.save(arrays / "x_train.npy", x)
    np.save(arrays / "y_train.npy", y)
    folder = where / "pets"
    photos = where / "photos"
    photos.mkdir()
    from PIL import Image

    for i, (img, label) in enumerate(zip(x[:100], y[:100], strict=True)):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / str(label) / f"{i}.png")
        if i < 5:
            Image.fromarray(img).save(photos / f"{i}.png")
    (where / "my.toml").write_text("batch_size = 64\n")
    corpus = _write_corpus(where / "corpus.txt", 12_000)
    (where / "my.txt").write_text(corpus.read_text())
    return {"npy": arrays, "folder": folder, "corpus": corpus}


def check_script(tokens: list[str], where: str) -> None:
    script = next(t for t in tokens[1:] if not t.startswith("-"))
    assert (ROOT / script).is_file(), f"{where}: {script} does not exist"


def parse(argv: list[str], where: str) -> None:
    from noprop.cli import build_parser

    try:
        build_parser().parse_args(argv)
    except SystemExit as e:
        pytest.fail(f"{where}: noprop {' '.join(argv)}: the parser refused it ({e})")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_shell_block_runs(page, tmp_path, monkeypatch):
    from noprop.cli import main

    monkeypatch.chdir(tmp_path)
    fx = None
    for i, (kind, cmds) in enumerate(blocks(page)):
        for cmd in cmds:
            where = f"{page.name}, block {i + 1}: {cmd.strip()}"
            tokens = shlex.split(cmd, comments=True)
            if kind == "install":
                assert tokens[:2] == ["python3", "-m"] and "pip" in tokens, where
                parts = [shlex.split(p) for p in cmd.split("#")[0].split("&&")]
                tokens = parts[-1]
                if tokens[:3] == ["python", "-m", "pytest"]:
                    continue  # the suite itself: test_ci_runs_the_readme_test_command
            argv = noprop_argv(tokens)
            if argv is None:
                assert tokens[0] in {"bash", "python", "python3"}, f"{where}: unclassified command"
                check_script(tokens, where)
            elif kind == "parse" or tokens[0] != "noprop":
                parse(argv, where)
            else:
                fx = fx or write_inputs(tmp_path)
                small = cheap(argv, fx)
                parse(small, where)
                assert main(small) == 0, f"{where}: run as noprop {' '.join(small)}"


def test_ci_runs_the_readme_test_command():
    readme = README.read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_cmd = next(line for line in ci.splitlines() if "pytest" in line)
    assert test_cmd.strip() in shell_blocks_of(README)[1]
    install = shell_blocks_of(README)[0].strip()
    # the quickstart installs the same torch and the same package as CI, then trains
    assert install.startswith(
        "python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0"
    )
    assert "torch==2.13.0" in test_cmd and install.endswith("&& noprop train")
    assert len(readme.splitlines()) <= 150


def test_python_blocks_run(tmp_path, monkeypatch, capsys):
    """docs/api.md's Python block runs, at one epoch instead of three (test size)."""
    page = ROOT / "docs" / "api.md"
    snippets = [m["body"] for m in FENCE.finditer(page.read_text()) if m["lang"] == "python"]
    assert snippets
    monkeypatch.chdir(tmp_path)
    for code in snippets:
        assert "epochs=3" in code
        code = code.replace("epochs=3", "epochs=1")
        exec(compile(code, str(page), "exec"), {"__name__": "__doc__"})
    assert (tmp_path / "exported" / "digits-dt" / "model.safetensors").is_file()
    assert "tensor(" in capsys.readouterr().out


def test_reading_list_files_exist():
    methods = (ROOT / "docs" / "methods.md").read_text()
    section = methods.split("## Reading the code", 1)[1].split("\n## ", 1)[0]
    paths = re.findall(r"`(src/[^`]+\.py)`", section)
    assert len(paths) >= 4
    for p in paths:
        assert (ROOT / p).is_file(), p


def test_paths_the_docs_name_exist():
    """Every ``src/noprop/...`` path, and every path of the choices table, names a file."""
    for page in [*PAGES, ROOT / "BENCHMARKS.md"]:
        for p in re.findall(r"`(src/noprop/[\w/]+\.py)`", page.read_text()):
            assert (ROOT / p).is_file(), f"{page.name}: {p}"
    methods = (ROOT / "docs" / "methods.md").read_text()
    table = methods.split("## Choices the paper leaves open", 1)[1].split("\n## ", 1)[0]
    for p in re.findall(r"`([\w/]+\.py)`", table):
        assert (ROOT / "src" / "noprop" / p).is_file(), p


def test_benchmarks_commands_parse():
    """BENCHMARKS.md's commands take hours: their noprop lines must still parse, their scripts exist."""
    page = ROOT / "BENCHMARKS.md"
    for body in shell_blocks_of(page):
        for cmd in body.replace("\\\n", " ").splitlines():
            tokens = shlex.split(cmd, comments=True)
            if not tokens:
                continue
            argv = noprop_argv(tokens)
            if argv is None:
                check_script(tokens, f"BENCHMARKS.md: {cmd}")
            else:
                parse(argv, f"BENCHMARKS.md: {cmd}")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_links_between_pages_resolve():
    """Every relative link of README.md, docs/ and BENCHMARKS.md names a file, and its #anchor a heading."""
    for page in [*PAGES, ROOT / "BENCHMARKS.md"]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            assert file.exists(), f"{page.name}: {target}"
            if anchor and file.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", file.read_text(), re.M)
                assert anchor in {_slug(h) for h in headings}, f"{page.name}: {target}"


def test_the_readme_quotes_the_recorded_quickstart():
    """The end-of-run line the README shows is the recorded one (tests/golden/summaries.json)."""
    import json

    q = json.loads((ROOT / "tests" / "golden" / "summaries.json").read_text())["quickstart"]
    line = (
        f"val {q['val_accuracy']:.4f} · test {q['test_accuracy']:.4f} "
        f"(deterministic {q['test_accuracy_deterministic']:.4f})"
    )
    assert line in " ".join(README.read_text().split()), line


#: flags the pages name that belong to other programs: pip, torchrun, the scripts they run
OTHER_PROGRAMS = {"--index-url", "--nnodes", "--nproc-per-node", "--rdzv-backend", "--rdzv-endpoint",
                  "--rdzv-id", "--standalone", "--check", "--dry-run"}  # fmt: skip


def test_every_flag_the_pages_name_exists():
    """A flag named in prose (not only in a command block) is one of noprop's, so a rename fails here."""
    import argparse

    from noprop.cli import build_parser

    def options(parser: argparse.ArgumentParser, found: set[str]) -> set[str]:
        for action in parser._actions:
            found.update(action.option_strings)
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    options(sub, found)
        return found

    known = options(build_parser(), set()) | OTHER_PROGRAMS
    for page in PAGES:
        named = set(re.findall(r"(?<![\w-])(--[a-z][A-Za-z0-9-]*)", page.read_text()))
        assert not named - known, f"{page.name}: {sorted(named - known)}"
