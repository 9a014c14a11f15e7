r"""Output that carries untrusted strings is escaped (issue 28): ``noprop predict``'s tab-separated
lines on stdout escape every field (``\t`` ``\n`` ``\r`` ``\\``, ``\xHH``, ``\uHHHH``), so a class
name or a file name holding a tab and a newline cannot forge rows; the ``.csv`` (the csv module)
and ``.json`` read back the exact names.

The hostile class names are a ``--dataset folder``'s sub-directory names (any byte but ``/`` and
NUL is allowed in a file name), recorded in the run's ``data.json`` as ``predict`` reads them; the
inputs are PNG files whose names are hostile too. Tiny: MLP blocks, T = 2, one epoch, one thread.
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from noprop.cli import main
from noprop.runs.inputs import tsv_field, tsv_line

Image = pytest.importorskip("PIL.Image")  # the extra [image]; in [test]

SMALL = ["--T", "2", "--epochs", "1", "--block", "mlp", "--no-progress", "--threads", "1"]
#: one class per hostile character set: tab + newline (forges a row), CR + backslash, CSV quoting
CLASSES = ("a\tb\nforged\t0\tx\t1.0", "c\rd\\t", 'e,"f"\x1bg\u2028h')
FILES = ("p\tq\nr.png", "back\\slash\r.png", "plain.png")


def unescape(field: str) -> str:
    """The inverse of :func:`tsv_field` (what a reader of the documented format does)."""
    simple = {"t": "\t", "n": "\n", "r": "\r", "\\": "\\"}

    def one(m: re.Match[str]) -> str:
        body = m.group(1)
        return simple[body] if body in simple else chr(int(body[1:], 16))

    return re.sub(r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|[tnr\\])", one, field)


def test_tsv_field_escapes_and_round_trips():
    hostile = "a\tb\nc\rd\\e\\tf\x00g\x7fh\x85i\u2028j\u2029k\udcffl café"
    escaped = tsv_field(hostile)
    assert escaped == ("a\\tb\\nc\\rd\\\\e\\\\tf\\x00g\\x7fh\\x85i\\u2028j\\u2029k\\udcffl café")
    assert escaped.isprintable() and len(escaped.splitlines()) == 1
    assert unescape(escaped) == hostile
    escaped.encode("utf-8")  # a lone surrogate (an undecodable file-name byte) is escaped too
    assert tsv_line(["x\ty", 3, 0.5]) == "x\\ty\t3\t0.5"
    assert tsv_field("plain name") == "plain name"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """(a run whose class names are CLASSES, PNG inputs named FILES)."""
    root = tmp_path_factory.mktemp("hostile")
    rng = np.random.default_rng(0)
    for k, name in enumerate(CLASSES):
        (root / "data" / name).mkdir(parents=True)
        for i in range(8):
            pixels = (rng.integers(0, 50, (8, 8)) + 90 * k).astype(np.uint8)
            Image.fromarray(pixels, "L").save(root / "data" / name / f"{i}.png")
    (root / "inputs").mkdir()
    inputs = []
    for k, name in enumerate(FILES):
        Image.fromarray(np.full((8, 8), 90 * k, np.uint8), "L").save(root / "inputs" / name)
        inputs.append(root / "inputs" / name)
    out = root / "run"
    argv = ["train", "--dataset", "folder", "--data-dir", str(root / "data"), "--out", str(out)]
    assert main([*argv, *SMALL]) == 0
    assert json.loads((out / "data.json").read_text())["class_names"] == sorted(CLASSES)
    return out, sorted(inputs)


def test_tsv_has_one_line_of_four_fields_per_input(hostile, capsys):
    run, inputs = hostile
    capsys.readouterr()
    argv = ["predict", str(run), *map(str, inputs), "--deterministic", "--threads", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()  # splits on \r, \x1c.. and \u2028 too: none may be left raw
    assert len(lines) == len(inputs) and out.count("\n") == len(inputs)  # old code: forged rows
    names = sorted(CLASSES)
    for line, path in zip(lines, inputs, strict=True):
        fields = line.split("\t")
        assert len(fields) == 4, line
        name, k, cls, p = map(unescape, fields)
        assert name == str(path) and cls == names[int(k)] and 0 < float(p) <= 1


def test_csv_and_json_read_back_the_exact_names(hostile, tmp_path, capsys):
    run, inputs = hostile
    names = sorted(CLASSES)
    base = ["predict", str(run), *map(str, inputs), "--deterministic", "--threads", "1", "--out"]
    assert main([*base, str(tmp_path / "p.csv")]) == 0
    assert main([*base, str(tmp_path / "p.json")]) == 0
    with open(tmp_path / "p.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["input"] for r in rows] == [str(p) for p in inputs]
    assert all(r["name"] == names[int(r["class"])] for r in rows)
    assert len(rows) == len(inputs) and set(rows[0]) == {"input", "class", "name", "probability"}
    records = json.loads((tmp_path / "p.json").read_text())
    assert [(r["input"], r["class"], r["name"]) for r in records] == [
        (r["input"], int(r["class"]), r["name"]) for r in rows
    ]


def test_an_undecodable_file_name_is_escaped_not_a_traceback(hostile, tmp_path, capsys):
    run, _ = hostile
    odd = Path(os.fsdecode(bytes(tmp_path) + b"/\xff.png"))  # '\udcff.png'
    Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(odd)
    capsys.readouterr()
    assert main(["predict", str(run), str(odd), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{tmp_path}/\\udcff.png\t") and len(out.splitlines()) == 1
    assert (
        main(["predict", str(run), str(odd), "--threads", "1", "--out", str(tmp_path / "p.csv")])
        == 0
    )
    assert "\\udcff.png" in (tmp_path / "p.csv").read_text(encoding="utf-8")
