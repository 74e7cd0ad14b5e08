"""End to end: ``stepgraph train`` on a synthetic tissue, in memory and backed.

A synthetic tissue of ``--n-cells`` cells x ``--n-genes`` genes (sparse
counts, ``--sections`` sections of uniform 2-D coordinates) is written as an
h5ad file. ``stepgraph train`` then runs on it twice, each time in a fresh
process: once reading the file into memory, once with ``--backed`` (``X``
stays on disk and is read in chunks of rows to compute the model's input
features). Reported per stage (read, graph, features, each epoch, embedding,
clustering, write): seconds and peak
resident memory, both from the ``summary.json`` the command writes (the
kernel's high-water mark is reset at each stage), and the peak resident
memory of the whole process (the largest of the stages' peaks and of
``wait4``'s, which only sees the peak since the last reset).

Targets (issue 14): backed peak RSS below half of in-memory; backed epoch
time within 1.5x of in-memory. Torch runs with ``--threads`` threads
(``OMP_NUM_THREADS``; 1 by default, the machine is shared).

Example (the figures in docs/benchmarks.md)::

    python benchmarks/end_to_end.py --n-cells 1000000 --n-genes 2000 --epochs 1

With ``--features expression,neighborhood`` each mode runs once per model input, side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import RESULTS, markdown_table, write_json

ROOT = Path(__file__).resolve().parents[1]


def synthetic_counts_h5ad(path: Path, n_cells: int, n_genes: int, sections: int, density: float, seed: int = 0) -> dict:
    """Write a sparse count matrix with coordinates and sections to ``path``."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    per_row = max(1, int(round(density * n_genes)))
    stripe = n_genes // per_row
    # one gene per stripe of the gene axis: distinct, sorted columns by construction
    cols = (
        np.arange(per_row, dtype=np.int32) * stripe + rng.integers(0, stripe, (n_cells, per_row), dtype=np.int32)
    ).reshape(-1)
    counts = (rng.poisson(2.0, n_cells * per_row) + 1).astype(np.float32)
    indptr = np.arange(0, n_cells * per_row + 1, per_row, dtype=np.int64)
    X = sp.csr_matrix((counts, cols, indptr), shape=(n_cells, n_genes))
    sizes = [n_cells // sections + (i < n_cells % sections) for i in range(sections)]
    coords = np.vstack([rng.uniform(0, np.sqrt(s), (s, 2)) for s in sizes])
    obs = pd.DataFrame(
        {"section": pd.Categorical(np.repeat([f"s{i}" for i in range(sections)], sizes))},
        index=pd.RangeIndex(n_cells).astype(str),
    )
    adata = ad.AnnData(X=X, obs=obs)
    adata.obsm["spatial"] = coords
    adata.write_h5ad(path)
    return {"nnz": int(X.nnz), "file_mb": path.stat().st_size / 2**20}


def run_train(path: Path, out: Path, backed: bool, args, features: str | None = None) -> dict:
    """``stepgraph train`` in a fresh process (with ``--features features`` when given); its stages
    and its own peak RSS."""
    cmd = (
        [
            sys.executable,
            "-m",
            "stepgraph",
            "train",
            str(path),
            "--batch-key",
            "section",
            *(["--epochs", str(args.epochs)] if args.epochs else []),
            "--batch-size",
            str(args.batch_size),
            "--quiet",
            "--n-domains",
            "7",
            "--out",
            str(out),
        ]
        + (["--backed"] if backed else [])
        + (["--features", features] if features else [])
    )
    env = dict(
        os.environ,
        OMP_NUM_THREADS=str(args.threads),
        MKL_NUM_THREADS=str(args.threads),
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{output[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    # the stages reset the kernel's high-water mark, which ru_maxrss reads at
    # exit: the process's peak is the largest of the stages' peaks
    peak = max([usage.ru_maxrss / 1024] + [row["peak_rss_mb"] for row in summary["stages"]])
    return {"wall_s": wall, "peak_rss_mb": peak, "stages": summary["stages"], "command": " ".join(cmd[1:])}


def report(results: dict) -> tuple[str, dict]:
    modes = list(results)
    names = list(dict.fromkeys(r["stage"] for m in modes for r in results[m]["stages"]))
    rows = []
    for name in names:
        row = {"stage": name}
        for m in modes:
            hit = next((r for r in results[m]["stages"] if r["stage"] == name), None)
            if hit:
                row[f"{m} s"], row[f"{m} peak MiB"] = hit["seconds"], hit["peak_rss_mb"]
        rows.append(row)
    rows.append(
        {
            "stage": "whole process",
            **{f"{m} s": results[m]["wall_s"] for m in modes},
            **{f"{m} peak MiB": results[m]["peak_rss_mb"] for m in modes},
        }
    )
    cols = ["stage"] + [f"{m} {k}" for m in modes for k in ("s", "peak MiB")]
    verdict = {}
    if {"memory", "backed"} <= set(modes):
        mem = results["memory"]["peak_rss_mb"]
        bak = results["backed"]["peak_rss_mb"]
        epochs = {m: [r["seconds"] for r in results[m]["stages"] if r["stage"].startswith("epoch")] for m in modes}
        epoch_ratio = float(np.median(epochs["backed"]) / np.median(epochs["memory"]))
        verdict = {
            "peak_rss_ratio_backed_over_memory": bak / mem,
            "peak_rss_target_met": bak < mem / 2,
            "epoch_ratio_backed_over_memory": epoch_ratio,
            "epoch_target_met": epoch_ratio <= 1.5,
        }
    return markdown_table(rows, cols), verdict


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--n-cells", type=int, default=1_000_000, help="cells")
    parser.add_argument("--n-genes", type=int, default=2000, help="genes")
    parser.add_argument("--sections", type=int, default=4, help="tissue sections")
    parser.add_argument("--density", type=float, default=0.05, help="non-zero share of the counts")
    parser.add_argument(
        "--epochs", type=int, default=1, help="training epochs per run (0: the pipeline's default, sized to the tissue)"
    )
    parser.add_argument("--batch-size", type=int, default=1024, help="seed cells per batch")
    parser.add_argument("--modes", default="memory,backed", help="comma-separated: memory, backed")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each run")
    parser.add_argument(
        "--features",
        default="",
        help="comma-separated model inputs to run each mode with, side by side (e.g. expression,neighborhood; "
        "default: the pipeline's own)",
    )
    parser.add_argument("--workdir", default=None, help="folder for the h5ad and outputs (default: a temp dir)")
    parser.add_argument("--out", default=str(RESULTS / "end_to_end.json"), help="JSON output ('' to skip)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        data = synthetic_counts_h5ad(tmp / "tissue.h5ad", args.n_cells, args.n_genes, args.sections, args.density)
        print(
            f"tissue: {args.n_cells:,} cells x {args.n_genes:,} genes, {data['nnz']:,} non-zeros, "
            f"{args.sections} sections; h5ad {data['file_mb']:,.0f} MiB written in "
            f"{time.perf_counter() - start:.1f} s",
            flush=True,
        )
        results = {}
        for mode in [m for m in args.modes.split(",") if m]:
            for features in [f for f in args.features.split(",") if f] or [None]:
                name = mode if features is None else f"{mode}/{features}"
                out = tmp / f"out_{mode}_{features or 'default'}"
                results[name] = run_train(tmp / "tissue.h5ad", out, mode == "backed", args, features)
                print(
                    f"{name}: {results[name]['wall_s']:.1f} s, peak RSS {results[name]['peak_rss_mb']:,.0f} MiB",
                    flush=True,
                )
    table, verdict = report(results)
    print(table)
    for key, value in verdict.items():
        print(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")
    payload = {"args": vars(args), "data": data, "results": results, "verdict": verdict, "table": table}
    write_json(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
