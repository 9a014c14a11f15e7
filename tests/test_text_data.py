"""Byte-level text corpora (noprop.data.text): stdlib, text files/directories, tiny-shakespeare.

Everything runs offline: the tiny-shakespeare download is served from 127.0.0.1 with a fake file
and patched checksums; the real file under ../shared is only used when present.
"""

from __future__ import annotations

import hashlib
import json
import os
import sysconfig
from pathlib import Path

import pytest
import torch

from noprop.data import download as dl
from noprop.data import text
from noprop.data.text import (
    STDLIB_MAX_BYTES,
    TEXT_DATASETS,
    TINY_SHAKESPEARE_BYTES,
    TINY_SHAKESPEARE_SHA256,
    TextCorpus,
    file_split,
    load_text,
    stdlib_files,
)
from noprop.errors import DataError

SHARED_TINY = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare"
SPLITS = ("train", "val", "test")

#: keep every test away from the user's cache, mirrors and proxies (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("isolated_download_env")


def one_line(excinfo: pytest.ExceptionInfo[DataError]) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message
    return message


def as_bytes(t: torch.Tensor) -> bytes:
    assert t.dtype == torch.uint8 and t.dim() == 1
    return t.numpy().tobytes()


def check_corpus(c: TextCorpus) -> bytes:
    """Generic invariants; return the concatenated split bytes."""
    info = c.info()
    json.dumps(info)
    assert info["bytes"] == {s: getattr(c, s).numel() for s in SPLITS}
    assert info["total_bytes"] == sum(info["bytes"].values())
    assert set(info["files"]) == set(SPLITS)
    for s in SPLITS:
        assert getattr(c, s).numel() >= text.MIN_SPLIT_BYTES
    return b"".join(as_bytes(getattr(c, s)) for s in SPLITS)


def check_contiguous(c: TextCorpus, data: bytes) -> None:
    n = len(data)
    a, b = int(n * 0.9), int(n * 0.95)
    assert c.split.startswith("contiguous-90/5/5")
    assert as_bytes(c.train) == data[:a]
    assert as_bytes(c.val) == data[a:b]
    assert as_bytes(c.test) == data[b:]
    assert c.sha256 == hashlib.sha256(data).hexdigest()


def test_public_names() -> None:
    assert TEXT_DATASETS == ("stdlib", "text", "tiny-shakespeare")
    assert STDLIB_MAX_BYTES == 4 * 1024 * 1024
    assert TINY_SHAKESPEARE_BYTES == 1115394
    source = dl.SOURCES["tiny-shakespeare"]
    assert source.files[0].filename == "input.txt"
    assert source.files[0].checksums == (dl.Checksum("sha256", TINY_SHAKESPEARE_SHA256),)
    with pytest.raises(DataError, match="unknown text data set"):
        load_text("nope")
    with pytest.raises(DataError, match="max_bytes"):
        load_text("stdlib", max_bytes=0)


def test_file_split_rule() -> None:
    for rel in ("a.py", "email/utils.py", "x/y/z.txt"):
        h = int.from_bytes(hashlib.sha256(rel.encode()).digest()[:8], "big") % 100
        assert file_split(rel) == ("train" if h < 90 else "val" if h < 95 else "test")
    shares = [file_split(f"f{i}.txt") for i in range(2000)]
    assert 0.85 < shares.count("train") / 2000 < 0.95


# ----------------------------------------------------------------------------- stdlib


def test_stdlib_corpus() -> None:
    root = Path(sysconfig.get_paths()["stdlib"])
    c = load_text("stdlib", data_dir="/ignored/for/stdlib")
    data = check_corpus(c)
    assert c.name == "stdlib" and c.split == "by-file"
    assert len(data) <= STDLIB_MAX_BYTES
    assert str(root) in c.source

    files = stdlib_files()
    rels = [rel for rel, _ in files]
    assert rels == sorted(rels) and len(set(rels)) == len(rels)
    assert all(rel.endswith(".py") for rel in rels)
    assert not any(
        part in ("site-packages", "dist-packages", "__pycache__")
        for rel in rels
        for part in rel.split("/")
    )
    # Each split is exactly its files' bytes, in order; no file in two splits.
    contents = {rel: (root / rel).read_bytes() for rel in rels}
    for s in SPLITS:
        mine = [rel for rel, split in files if split == s]
        assert all(file_split(rel) == s for rel in mine)
        assert as_bytes(getattr(c, s)) == b"".join(contents[rel] for rel in mine)
        assert c.files[s] == len(mine)
    whole = b"".join(contents[rel] for rel in rels)
    assert c.sha256 == hashlib.sha256(whole).hexdigest()
    assert c.info()["total_bytes"] == len(whole)

    # The cap is a prefix rule: the next file in sorted order would not have fit.
    every = []
    for d, dirs, fs in os.walk(root):
        dirs[:] = [x for x in dirs if x not in ("site-packages", "dist-packages", "__pycache__")]
        every += [
            Path(d, f).relative_to(root).as_posix()
            for f in fs
            if f.endswith(".py") and Path(d, f).is_file()
        ]
    every.sort()
    assert every[: len(rels)] == rels
    if len(rels) < len(every):
        assert len(whole) + (root / every[len(rels)]).stat().st_size > STDLIB_MAX_BYTES

    # Deterministic.
    again = load_text("stdlib")
    assert again.sha256 == c.sha256
    for s in SPLITS:
        assert torch.equal(getattr(again, s), getattr(c, s))


def test_stdlib_smaller_cap() -> None:
    full = stdlib_files()
    cap = 1 << 20
    c = load_text("stdlib", max_bytes=cap)
    assert c.info()["total_bytes"] <= cap
    small = stdlib_files(cap)
    assert full[: len(small)] == small and len(small) < len(full)
    assert sum(c.files.values()) == len(small)
    tiny = stdlib_files(1)  # the first file alone (an empty __init__ would fit) or nothing
    assert tiny == full[: len(tiny)]
    with pytest.raises(DataError) as excinfo:
        load_text("stdlib", max_bytes=100)
    assert str(Path(sysconfig.get_paths()["stdlib"])) in one_line(excinfo)


# ----------------------------------------------------------------------------- text


def test_text_single_file_contiguous(tmp_path: Path) -> None:
    data = bytes(range(256)) * 7 + b"\xff\xfe not utf-8 \x00"
    path = tmp_path / "corpus.bin"
    path.write_bytes(data)
    c = load_text("text", path)
    check_corpus(c)
    check_contiguous(c, data)
    assert c.split == "contiguous-90/5/5" and c.files == {"train": 1, "val": 1, "test": 1}
    assert c.name == "text" and str(path) in c.source

    capped = load_text("text", str(path), max_bytes=1500)
    check_contiguous(capped, data[:1500])


def _write_txt_dir(root: Path, count: int, size: int = 200) -> dict[str, bytes]:
    files = {}
    for i in range(count):
        rel = f"sub{i % 3}/doc{i:03d}.txt"
        content = (f"document {i}\n".encode() * size)[:size]
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(content)
        files[rel] = content
    (root / "ignored.md").write_bytes(b"not a .txt file" * 100)
    return files


def test_text_directory_by_file(tmp_path: Path) -> None:
    files = _write_txt_dir(tmp_path, 60)
    c = load_text("text", tmp_path)
    check_corpus(c)
    assert c.split == "by-file"
    rels = sorted(files)
    for s in SPLITS:
        mine = [rel for rel in rels if file_split(rel) == s]
        assert mine, "fixture must populate every split"
        assert as_bytes(getattr(c, s)) == b"".join(files[rel] for rel in mine)
        assert c.files[s] == len(mine)
    assert c.sha256 == hashlib.sha256(b"".join(files[rel] for rel in rels)).hexdigest()


def test_text_directory_fallback_contiguous(tmp_path: Path) -> None:
    files = _write_txt_dir(tmp_path, 2, size=5000)
    c = load_text("text", tmp_path)
    check_corpus(c)
    data = b"".join(files[rel] for rel in sorted(files))
    check_contiguous(c, data)
    assert "fallback" in c.split
    assert c.files == {"train": 2, "val": 1, "test": 1}


def test_text_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="--data-dir") as excinfo:
        load_text("text")
    one_line(excinfo)

    cases = {}
    cases["missing"] = tmp_path / "missing"
    (tmp_path / "empty").mkdir()
    cases["empty"] = tmp_path / "empty"
    (tmp_path / "notxt").mkdir()
    (tmp_path / "notxt" / "a.md").write_text("hello " * 100)
    cases["notxt"] = tmp_path / "notxt"
    (tmp_path / "small.txt").write_bytes(b"x" * 500)  # val and test get 25 bytes
    cases["small"] = tmp_path / "small.txt"
    (tmp_path / "zero.txt").write_bytes(b"")
    cases["zero"] = tmp_path / "zero.txt"
    (tmp_path / "smalldir").mkdir()
    (tmp_path / "smalldir" / "a.txt").write_bytes(b"y" * 300)
    cases["smalldir"] = tmp_path / "smalldir"
    (tmp_path / "emptytxt").mkdir()
    (tmp_path / "emptytxt" / "a.txt").write_bytes(b"")
    cases["emptytxt"] = tmp_path / "emptytxt"
    for path in cases.values():
        with pytest.raises(DataError) as excinfo:
            load_text("text", path)
        assert str(path) in one_line(excinfo)


# ----------------------------------------------------------------------------- tiny-shakespeare


def _fake_shakespeare(seed: int = 0) -> bytes:
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randint(32, 127, (TINY_SHAKESPEARE_BYTES,), generator=generator)
        .to(torch.uint8)
        .numpy()
        .tobytes()
    )


@pytest.fixture
def fake_tiny(monkeypatch: pytest.MonkeyPatch) -> bytes:
    """A fake input.txt of the right size; the expected checksums patched to match it."""
    data = _fake_shakespeare()
    digest = hashlib.sha256(data).hexdigest()
    source = dl.SOURCES["tiny-shakespeare"]
    remote = dl.RemoteFile("input.txt", (dl.Checksum("sha256", digest),))
    monkeypatch.setitem(dl.SOURCES, "tiny-shakespeare", dl.RemoteSource(source.base_url, (remote,)))
    monkeypatch.setattr(text, "TINY_SHAKESPEARE_SHA256", digest)
    return data


def test_tiny_shakespeare_download(
    tmp_path: Path, http_root: tuple[Path, str], fake_tiny: bytes
) -> None:
    root, url = http_root
    (root / "input.txt").write_bytes(fake_tiny)
    target = tmp_path / "ts"
    c = load_text("tiny-shakespeare", target, base_url=url)
    check_corpus(c)
    check_contiguous(c, fake_tiny)
    assert (c.train.numel(), c.val.numel(), c.test.numel()) == (1003854, 55770, 55770)
    assert (target / "input.txt").read_bytes() == fake_tiny
    assert c.name == "tiny-shakespeare" and "downloaded" in c.source

    # Present now: no network needed.
    again = load_text("tiny-shakespeare", target, download=False)
    assert again.sha256 == c.sha256 and "read from" in again.source


def test_tiny_shakespeare_default_dir_and_mirror_env(
    tmp_path: Path,
    http_root: tuple[Path, str],
    fake_tiny: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root, url = http_root
    (root / "input.txt").write_bytes(fake_tiny)
    monkeypatch.setenv(dl.MIRROR_ENV, url.rstrip("/"))
    c = load_text("tiny-shakespeare")
    assert c.info()["total_bytes"] == TINY_SHAKESPEARE_BYTES
    assert (tmp_path / "default-cache" / "tiny-shakespeare" / "input.txt").is_file()


def test_tiny_shakespeare_corrupt_download(
    tmp_path: Path, http_root: tuple[Path, str], fake_tiny: bytes
) -> None:
    root, url = http_root
    corrupt = bytearray(fake_tiny)
    corrupt[12345] ^= 1
    (root / "input.txt").write_bytes(bytes(corrupt))
    target = tmp_path / "ts"
    with pytest.raises(DataError) as excinfo:
        load_text("tiny-shakespeare", target, base_url=url)
    message = one_line(excinfo)
    assert "checksum mismatch" in message and "--data-dir" in message
    assert not (target / "input.txt").exists()
    assert not target.exists() or list(target.iterdir()) == []


def test_tiny_shakespeare_missing_no_download(tmp_path: Path, fake_tiny: bytes) -> None:
    with pytest.raises(DataError) as excinfo:
        load_text("tiny-shakespeare", tmp_path / "none", download=False)
    message = one_line(excinfo)
    assert str(tmp_path / "none" / "input.txt") in message and "--data-dir" in message


def test_tiny_shakespeare_wrong_local_file(tmp_path: Path, fake_tiny: bytes) -> None:
    wrong = _fake_shakespeare(seed=1)
    (tmp_path / "input.txt").write_bytes(wrong)
    with pytest.raises(DataError) as excinfo:
        load_text("tiny-shakespeare", tmp_path, base_url="http://127.0.0.1:9/")
    message = one_line(excinfo)
    assert text.TINY_SHAKESPEARE_SHA256 in message
    assert hashlib.sha256(wrong).hexdigest() in message
    assert "not the char-rnn tiny-shakespeare" in message
    assert (tmp_path / "input.txt").read_bytes() == wrong  # never silently replaced


def test_tiny_shakespeare_real_checksum_rejects_other_file(tmp_path: Path) -> None:
    (tmp_path / "input.txt").write_bytes(b"To be, or not to be\n" * 100)
    with pytest.raises(DataError, match=TINY_SHAKESPEARE_SHA256):
        load_text("tiny-shakespeare", tmp_path, download=False)


@pytest.mark.skipif(
    not (SHARED_TINY / "input.txt").is_file(), reason="no shared tiny-shakespeare copy"
)
def test_tiny_shakespeare_shared_copy() -> None:
    c = load_text("tiny-shakespeare", SHARED_TINY, download=False)
    assert c.sha256 == TINY_SHAKESPEARE_SHA256
    assert c.info()["bytes"] == {"train": 1003854, "val": 55770, "test": 55770}
    assert as_bytes(c.train[:9]) == b"First Cit"
