"""Shared helpers of the benchmark scripts: results as JSON and a markdown table.

Versions and peak memory come from stepgraph itself
(:func:`stepgraph.bench.environment.environment`,
:func:`stepgraph.pipeline.stages.peak_rss_mb`), so every report gathers them the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

from stepgraph.bench.environment import environment
from stepgraph.pipeline.stages import peak_rss_mb as _peak_rss_mb

RESULTS = Path(__file__).resolve().parent / "results"


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    return _peak_rss_mb(resettable=False)


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """Rows of dicts as a markdown table with the given columns."""

    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_json(path: str | None, payload: dict) -> None:
    """Write ``payload`` plus the machine description to ``path`` (if given)."""
    if not path:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": environment(), **payload}, indent=2))
    print(f"wrote {path}")


def report_rows(out: str, rows: list[dict], columns: list[str], payload: dict) -> None:
    """Print ``rows`` as a markdown table and write ``<out>.json`` (``payload`` plus the rows and the
    machine) and ``<out>.md`` (the table)."""
    table = markdown_table(rows, columns)
    print(table)
    write_json(out + ".json", {**payload, "rows": rows})
    with open(out + ".md", "w") as handle:
        handle.write(table + "\n")


def ari_scores(truth, labels, codes, n_sections: int) -> dict:
    """``{"ari": ...}`` on the cells with a known truth, and with several sections
    ``"per-section ari"``, the mean of the ARI within each (rounded to 3 places)."""
    import numpy as np

    from stepgraph.pipeline.domains import adjusted_rand_index

    known = truth.notna().to_numpy()
    row = {"ari": round(adjusted_rand_index(truth[known], labels[known]), 3)}
    if n_sections > 1:
        each = [
            adjusted_rand_index(truth[known & (codes == c)], labels[known & (codes == c)]) for c in range(n_sections)
        ]
        row["per-section ari"] = round(float(np.mean(each)), 3)
    return row


def panel_parser(doc: str, out_name: str):
    """An argument parser for a script over a panel of tissues: ``inputs`` (files or
    folders, as ``stepgraph bench domains`` reads them), ``--threads`` and ``--out``."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="annotated .h5ad files or folders (as stepgraph bench domains)")
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads")
    parser.add_argument("--out", default=str(RESULTS / out_name), help="OUT.json and OUT.md")
    return parser


def over_panel(args, tissue_rows, columns: list[str]) -> None:
    """Run ``tissue_rows(tissue)`` on every tissue of ``args.inputs`` with ``args.threads``
    torch and BLAS threads, then print and write the rows (:func:`report_rows`)."""
    import time
    import warnings

    import torch
    from threadpoolctl import threadpool_limits

    from stepgraph.bench.domains import panel_tissues

    warnings.filterwarnings("ignore", category=UserWarning)
    torch.set_num_threads(args.threads)
    rows, start = [], time.perf_counter()
    with threadpool_limits(args.threads):
        for tissue in panel_tissues(args.inputs):
            rows += tissue_rows(tissue)
    report_rows(
        args.out,
        rows,
        columns,
        {"inputs": args.inputs, "threads": args.threads, "seconds": time.perf_counter() - start},
    )
