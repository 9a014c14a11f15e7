"""Fuzzing every loader of outside files (issue 23, SECURITY.md): whatever the bytes, the only
exception is a NoPropError (a one-line exit 2 from the CLI), the process's peak memory grows by
less than :data:`MEMORY_BOUND`, and ``noprop predict`` writes nothing but its ``--out`` file.

Covered here: an export directory (config.json fields, safetensors headers, truncated or damaged
files), image folders (PNG/JPEG), ``.npy``, JSON, TOML and text corpora. IDX and CIFAR binary files
are fuzzed in tests/test_data.py. The whole file runs in about 20 s.
"""

from __future__ import annotations

import contextlib
import io
import json
import resource
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import noprop
from noprop.cli import main
from noprop.config import RunConfig
from noprop.data.formats import read_npy
from noprop.data.text import load_text
from noprop.errors import NoPropError
from noprop.presets import load_config_file
from noprop.runs.inputs import read_inputs
from noprop.untrusted import read_json

from .test_untrusted import make_export, png_bomb

FUZZ = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
FUZZ_MORE = settings(FUZZ, max_examples=150)  # the cheap parsers
MEMORY_BOUND = 1 << 30  # bytes of peak resident size a fuzz test may add
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@contextlib.contextmanager
def bounded_memory() -> Iterator[None]:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
    assert grown < MEMORY_BOUND, f"peak memory grew by {grown >> 20} MiB"


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_export(tmp_path_factory.mktemp("fuzz") / "export")


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def predict_in(work: Path, export_dir: Path, inputs: Path) -> None:
    """``noprop predict EXPORT INPUTS --out work/out/p.csv``: exit 0, or 2 with one line; nothing
    written anywhere but the --out file."""
    (work / "out").mkdir()
    before = snapshot(work)
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        rc = main(["predict", str(export_dir), str(inputs), "--out", str(work / "out" / "p.csv")])
    lines = err.getvalue().strip().splitlines()
    assert rc in (0, 2), (rc, lines)
    if rc == 2:
        assert len(lines) == 1 and lines[0].startswith("noprop: error:"), lines
    after = snapshot(work)
    assert set(after) - set(before) <= {"out/p.csv"}, set(after) - set(before)
    assert {k: after[k] for k in before} == before, "predict changed a file it only reads"


def expect_only_noprop_errors(fn, *args, **kw):  # type: ignore[no-untyped-def]
    try:
        return fn(*args, **kw)
    except NoPropError as e:
        assert "\n" not in str(e), str(e)
        return None


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
CONFIG = RunConfig().to_dict()
FIELDS = [(s, k) for s, section in CONFIG.items() for k in section]


@FUZZ
@given(
    edits=st.lists(
        st.tuples(st.sampled_from(FIELDS), JSON_VALUES | st.integers(0, 2000)),
        min_size=1,
        max_size=3,
    )
)
def test_fuzz_export_config_fields(export, edits):
    with bounded_memory(), tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        target = work / "export"
        shutil.copytree(export, target)
        cfg = json.loads((target / "config.json").read_text())
        for (section, key), value in edits:
            cfg[section][key] = value
        (target / "config.json").write_text(json.dumps(cfg))
        np.save(work / "x.npy", np.zeros((2, 8, 8), np.uint8))
        predict_in(work, target, work / "x.npy")


DTYPES = st.sampled_from(["F32", "F64", "I64", "U8", "BOOL", "F16", "X9", 7])
TENSOR = st.fixed_dictionaries(
    {
        "dtype": DTYPES,
        "shape": st.lists(st.integers(0, 2**40) | st.integers(0, 40), max_size=4),
        "data_offsets": st.lists(
            st.integers(0, 2**45) | st.integers(0, 4096), min_size=2, max_size=2
        ),
    }
)


def _names(export: Path) -> list[str]:
    data = (export / "model.safetensors").read_bytes()
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    return [k for k in header if k != "__metadata__"]


@FUZZ_MORE
@given(data=st.data(), payload=st.binary(max_size=4096), lie=st.integers(-64, 64))
def test_fuzz_safetensors_header(export, data, payload, lie):
    names = st.sampled_from(_names(export)) | st.text(max_size=8)
    header = data.draw(st.dictionaries(names, TENSOR | JSON_VALUES, max_size=6))
    raw = json.dumps(header).encode()
    length = max(0, len(raw) + lie)  # sometimes the length prefix lies
    with bounded_memory(), tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "export"
        shutil.copytree(export, target)
        (target / "model.safetensors").write_bytes(length.to_bytes(8, "little") + raw + payload)
        expect_only_noprop_errors(noprop.load, target, device="cpu")


@FUZZ
@given(
    name=st.sampled_from(["model.safetensors", "config.json", "normalisation.json"]),
    where=st.floats(0, 1),
    how=st.sampled_from(["truncate", "flip", "delete"]),
)
def test_fuzz_truncated_and_damaged_export_files(export, name, where, how):
    with bounded_memory(), tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        target = work / "export"
        shutil.copytree(export, target)
        data = bytearray((target / name).read_bytes())
        cut = int(where * (len(data) - 1))
        if how == "truncate":
            data = data[:cut]
        elif how == "flip":
            data[cut] ^= 0xFF
        (target / name).write_bytes(bytes(data))
        if how == "delete":
            (target / name).unlink()
        np.save(work / "x.npy", np.zeros((1, 8, 8), np.uint8))
        predict_in(work, target, work / "x.npy")


def _png(size: tuple[int, int] = (8, 8), fmt: str = "PNG") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.arange(size[0] * size[1], dtype=np.uint8).reshape(size)).save(buf, fmt)
    return buf.getvalue()


IMAGE_BYTES = (
    st.binary(max_size=2048)
    | st.binary(max_size=512).map(lambda b: b"\x89PNG\r\n\x1a\n" + b)
    | st.binary(max_size=512).map(lambda b: b"\xff\xd8\xff" + b)
    | st.tuples(st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1)).map(lambda s: png_bomb(*s))
    | st.tuples(st.sampled_from(["PNG", "JPEG"]), st.floats(0, 1)).map(
        lambda t: _png(fmt=t[0])[: max(1, int(t[1] * len(_png(fmt=t[0]))))]
    )
)


@FUZZ_MORE
@given(
    files=st.lists(
        st.tuples(st.sampled_from(["a.png", "b.jpg", "c.JPEG", "d.txt"]), IMAGE_BYTES),
        min_size=1,
        max_size=3,
        unique_by=lambda t: t[0],
    )
)
def test_fuzz_image_folder(files):
    with bounded_memory(), tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for name, data in files:
            (folder / name).write_bytes(data)
        result = expect_only_noprop_errors(read_inputs, [str(folder)], (1, 8, 8))
        if result is not None:
            assert result[0].shape[1:] == (1, 8, 8)


NPY_HEADERS = st.builds(
    lambda descr, shape, fortran: (
        f"{{'descr': {descr!r}, 'fortran_order': {fortran}, 'shape': {shape}, }}"
    ),
    st.sampled_from(["|u1", "<f4", "<f8", "|O", "<U3", "|V8", "<c8", "bogus"]),
    st.lists(st.integers(0, 2**40) | st.integers(0, 8), max_size=4).map(tuple),
    st.booleans(),
) | st.text(max_size=60)


@FUZZ_MORE
@given(header=NPY_HEADERS, payload=st.binary(max_size=600), version=st.sampled_from([1, 2, 3, 9]))
def test_fuzz_npy(header, payload, version):
    raw = header.encode("utf-8", "replace") + b"\n"
    size = len(raw).to_bytes(2 if version == 1 else 4, "little")
    data = b"\x93NUMPY" + bytes([version, 0]) + size + raw + payload
    with bounded_memory(), tempfile.NamedTemporaryFile(suffix=".npy") as f:
        f.write(data)
        f.flush()
        expect_only_noprop_errors(read_npy, f.name)
        expect_only_noprop_errors(read_inputs, [f.name], (1, 8, 8))


@FUZZ_MORE
@given(text=st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_fuzz_json_and_toml(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f"
        path.write_text(text, encoding="utf-8", errors="surrogateescape")
        expect_only_noprop_errors(read_json, path, NoPropError)
        expect_only_noprop_errors(load_config_file, path)
        path.write_text("[" * 100_000)  # deep nesting
        expect_only_noprop_errors(read_json, path, NoPropError)
        expect_only_noprop_errors(load_config_file, path)


@FUZZ_MORE
@given(doc=st.dictionaries(st.sampled_from([*CONFIG, "x"]), JSON_VALUES, max_size=4))
def test_fuzz_run_config_dict(doc):
    expect_only_noprop_errors(RunConfig.from_dict, doc)


@FUZZ_MORE
@given(files=st.dictionaries(st.sampled_from(["a.txt", "b.txt", "s/c.txt", "d.bin"]),
                             st.binary(max_size=3000), max_size=3))  # fmt: skip
def test_fuzz_text_corpus(files):
    with bounded_memory(), tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "corpus"
        root.mkdir()
        for name, data in files.items():
            (root / name).parent.mkdir(exist_ok=True)
            (root / name).write_bytes(data)
        expect_only_noprop_errors(load_text, "text", root, download=False)
        if files:
            first = root / next(iter(files))
            expect_only_noprop_errors(load_text, "text", first, download=False)
