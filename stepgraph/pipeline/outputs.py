"""The files of a pipeline run: history, the annotated AnnData, the figure and the summary.

This module names every file a run writes into its output folder; the CLI and
:func:`~stepgraph.pipeline.run_pipeline` take the names from here. Every file
is written atomically (:func:`write_output`): under a temporary name in the
same folder, fsync-ed, then renamed over its final name, so a run killed at any
moment leaves either the previous file or the complete new one, and a link
planted under a final name is replaced, never written through.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stepgraph.train.checkpointing import atomic_write

__all__ = [
    "ADATA",
    "HISTORY_CSV",
    "HISTORY_JSON",
    "FIGURE",
    "EMBEDDING_FIGURE",
    "SUMMARY",
    "CHECKPOINTS",
    "LOCK",
    "OUTPUT_NAMES",
    "write_output",
    "save_history",
    "write_adata",
    "write_summary",
]

#: The annotated AnnData: the input with the graph, embedding and domains written in.
ADATA = "adata.h5ad"
#: The loss history, one row per epoch, as CSV and JSON.
HISTORY_CSV = "history.csv"
HISTORY_JSON = "history.json"
#: The domain figure (and the loss curves).
FIGURE = "figure.png"
#: The embedding of several sections in two dimensions, coloured by section and by domain.
EMBEDDING_FIGURE = "embedding.png"
#: The run's summary: epochs, scores, seconds, output paths, settings and stages.
SUMMARY = "summary.json"
#: The folder of the training checkpoints (their names are set by :mod:`stepgraph.train.checkpointing`).
CHECKPOINTS = "checkpoints"


#: The lock file of a run's output folder: one run at a time writes there (it holds the run's process id).
LOCK = ".stepgraph.lock"
#: Every final name a run writes in its output folder (checkpoints are in :data:`CHECKPOINTS`).
OUTPUT_NAMES = (ADATA, HISTORY_CSV, HISTORY_JSON, FIGURE, EMBEDDING_FIGURE, SUMMARY)


def write_output(path: str | Path, write: Callable[[Path], Any]) -> Path | None:
    """Write one output file atomically: ``write(tmp)`` fills a temporary file
    beside ``path``, which then replaces ``path`` (see
    :func:`~stepgraph.train.checkpointing.atomic_write`); ``write`` returning
    ``False`` writes nothing. Returns the path written, or ``None``.
    """
    return atomic_write(path, write, what="output")


def _write_text(path: Path, text: str) -> None:
    def write(tmp: Path) -> None:
        tmp.write_text(text, encoding="utf-8")

    write_output(path, write)


def save_history(history: list[dict], out_dir: Path) -> None:
    """``history`` (one dict per epoch) as ``out_dir/history.json`` and ``out_dir/history.csv``."""
    _write_text(out_dir / HISTORY_JSON, json.dumps(history, indent=1))
    keys = list(dict.fromkeys(k for row in history for k in row))
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=keys)
    writer.writeheader()
    writer.writerows(history)
    _write_text(out_dir / HISTORY_CSV, table.getvalue())


def write_adata(adata, path: Path) -> None:
    """``adata`` to ``path``, atomically; a backed one without loading ``X``: the
    input file is copied and everything but ``X`` is written into the copy.
    """
    if not adata.isbacked:
        write_output(path, adata.write_h5ad)
        return
    import h5py

    try:
        from anndata.io import write_elem
    except ImportError:  # anndata < 0.11
        from anndata.experimental import write_elem

    def write(tmp: Path) -> None:
        shutil.copyfile(adata.filename, tmp)
        with h5py.File(tmp, "r+") as f:
            for key, value in (
                ("obs", adata.obs),
                ("obsm", dict(adata.obsm)),
                ("obsp", dict(adata.obsp)),
                ("uns", dict(adata.uns)),
            ):
                if key in f:
                    del f[key]
                write_elem(f, key, value)

    write_output(path, write)


def write_summary(summary: dict, out_dir: Path) -> None:
    """``summary`` as ``out_dir/summary.json``."""
    _write_text(out_dir / SUMMARY, json.dumps(summary, indent=1, default=str))
