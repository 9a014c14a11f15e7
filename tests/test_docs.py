"""The README's reading list and CI command stay true."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_reading_list_files_exist():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Reading the code", 1)[1].split("##", 1)[0]
    paths = re.findall(r"`(src/[^`]+\.py)`", section)
    assert len(paths) >= 4
    for p in paths:
        assert (ROOT / p).is_file(), p


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_cmd = next(line for line in ci.splitlines() if "pytest" in line)
    assert test_cmd.strip() in readme
