"""The files of a pipeline run: history, the annotated AnnData, the figure and the summary.

This module names every file a run writes into its output folder; the CLI and
:func:`~stepgraph.pipeline.run_pipeline` take the names from here.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

__all__ = ["ADATA", "HISTORY_CSV", "HISTORY_JSON", "FIGURE", "SUMMARY", "CHECKPOINTS",
           "save_history", "write_adata", "write_summary"]

#: The annotated AnnData: the input with the graph, embedding and domains written in.
ADATA = "adata.h5ad"
#: The loss history, one row per epoch, as CSV and JSON.
HISTORY_CSV = "history.csv"
HISTORY_JSON = "history.json"
#: The domain figure (and the loss curves).
FIGURE = "figure.png"
#: The run's summary: epochs, scores, seconds, output paths, settings and stages.
SUMMARY = "summary.json"
#: The folder of the training checkpoints (their names are set by :mod:`stepgraph.train.checkpointing`).
CHECKPOINTS = "checkpoints"


def save_history(history: list[dict], out_dir: Path) -> None:
    """``history`` (one dict per epoch) as ``out_dir/history.json`` and ``out_dir/history.csv``."""
    (out_dir / HISTORY_JSON).write_text(json.dumps(history, indent=1))
    keys = list(dict.fromkeys(k for row in history for k in row))
    with open(out_dir / HISTORY_CSV, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)


def write_adata(adata, path: Path) -> None:
    """``adata`` to ``path``; a backed one without loading ``X``: the input
    file is copied and everything but ``X`` is written into the copy."""
    if not adata.isbacked:
        adata.write_h5ad(path)
        return
    import h5py

    try:
        from anndata.io import write_elem
    except ImportError:  # anndata < 0.11
        from anndata.experimental import write_elem
    shutil.copyfile(adata.filename, path)
    with h5py.File(path, "r+") as f:
        for key, value in (("obs", adata.obs), ("obsm", dict(adata.obsm)),
                           ("obsp", dict(adata.obsp)), ("uns", dict(adata.uns))):
            if key in f:
                del f[key]
            write_elem(f, key, value)


def write_summary(summary: dict, out_dir: Path) -> None:
    """``summary`` as ``out_dir/summary.json``."""
    (out_dir / SUMMARY).write_text(json.dumps(summary, indent=1, default=str))
