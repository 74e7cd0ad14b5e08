"""The files of a pipeline run: history, the annotated AnnData and the summary."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

__all__ = ["save_history", "write_adata", "write_summary"]


def save_history(history: list[dict], out_dir: Path) -> None:
    (out_dir / "history.json").write_text(json.dumps(history, indent=1))
    keys = list(dict.fromkeys(k for row in history for k in row))
    with open(out_dir / "history.csv", "w", newline="") as fh:
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
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
