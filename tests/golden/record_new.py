"""Append golden cases for a method added after the issue-10 redesign (record_v0.py has the rest).

``python tests/golden/record_new.py METHOD EMBEDDING [EMBEDDING ...]`` runs :func:`test_golden.run_case`
(the same tiny config, float32) with the code of the current commit and appends one case per embedding
to tests/golden/golden.json, marked with that commit. Run it once, when the method lands: from then
on the numbers pin its math like the others'. Refuses to replace an existing case.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))

from test_golden import run_case  # noqa: E402


def main(method: str, embeddings: list[str]) -> None:
    path = HERE / "golden.json"
    golden = json.loads(path.read_text())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=True).stdout.strip()  # fmt: skip
    for embedding in embeddings:
        if any(c["method"] == method and c["embedding"] == embedding for c in golden["cases"]):
            raise SystemExit(f"golden.json already has {method} {embedding}")
        torch.set_num_threads(1)
        got = run_case(method, embedding, torch.float32)
        golden["cases"].append({
            "method": method, "embedding": embedding, "dtype": "torch.float32",
            "recorded_with": commit,
            "loss_trace": got["loss_trace"],
            "predict_deterministic": got["predict_deterministic"].tolist(),
            "predict_stochastic": got["predict_stochastic"].tolist(),
        })  # fmt: skip
    path.write_text(json.dumps(golden, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
