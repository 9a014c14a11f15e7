"""A run directory is data, not instructions: how a reader of a run loads the run's data set.

A run's ``config.json`` names where its data set lives (``data_dir``; none: the default directory,
``$NOPROP_DATA_DIR/NAME`` or ``~/.cache/noprop/NAME``) and whether training may download it. Training
is the user's own act, so ``noprop train`` (and ``--resume`` of the user's run) may create that
directory and download into it. *Reading* a run — ``noprop eval`` in every mode, ``predict`` and
``export`` of a run directory, ``plot``, the benchmarks' evaluations — must not obey it: a run copied
from someone else could name any directory on the reader's machine, and ``eval`` would create it and
download into it. So a reader loads the data with downloads off, whatever the config says; the
loaders then only look (no directory created, nothing downloaded, no cache written outside the run:
your own images' decoded cache is read from ``RUN/data``). Data that are not where the config (or the
reader's ``--data-dir``) says are one line asking for ``--data-dir DIR``; nothing else changes (data
that are there but wrong are reported as they are).
"""

from __future__ import annotations

from pathlib import Path

from ..config import RunConfig
from ..data import DataSplits
from ..errors import DataNotFound
from ..rundir import RunDir
from ..tasks import Task
from .train import load_data

#: what ``noprop eval`` asks for when the data are not where the run's config says
ASK_DATA_DIR = "give --data-dir DIR holding them"


def reading_config(cfg: RunConfig, data_dir: str | Path | None = None) -> RunConfig:
    """``cfg`` as a reader loads its data: never downloading, and from ``data_dir`` (the reader's
    ``--data-dir``) instead of the directory the run recorded, when given."""
    if data_dir is None:
        return cfg.replace(download=False)
    return cfg.replace(download=False, data_dir=str(Path(data_dir).expanduser()))


def read_data(
    cfg: RunConfig,
    run: RunDir,
    data_dir: str | Path | None = None,
    *,
    ask: str = ASK_DATA_DIR,
) -> tuple[Task, DataSplits]:
    """The run's task and data splits, read where ``data_dir`` or the run's config says, never
    downloaded or created there (module docstring).

    ``ask``: how the message tells the user to point at the data (a command without ``--data-dir``
    says otherwise).

    Raises:
        DataNotFound: one line naming the run, its data set and where they were looked for.
    """
    read = reading_config(cfg, data_dir)
    try:
        return load_data(read, run)
    except DataNotFound as e:
        if data_dir is not None:  # the loader's message names the directory and what it lacks
            raise
        whose = "its config names" if cfg.data.data_dir else "is its default data directory"
        raise DataNotFound(
            f"{run.path}'s data ({cfg.data.dataset}) are not in {e.where}, which {whose}, and "
            f"reading a run never downloads; {ask}",
            e.where,
        ) from None
