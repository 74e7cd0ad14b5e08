"""N concurrent ``stepgraph train`` runs against N sequential ones, side by side.

On a shared machine several jobs run at once. Each run here is a real
``python -m stepgraph train`` process on the same small synthetic tissue,
with stepgraph's default thread policy (``stepgraph.train.threads``) unless
``--threads`` forces a count. The figure is the ratio of the concurrent wall
time to the sequential one: 1.0 means running N jobs at once costs nothing
over running them one after another; the thread fight this policy prevents
gave ratios far above 1.

    python benchmarks/contention.py --n 4 --n-cells 5000 --epochs 5
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, markdown_table, write_json  # noqa: E402


def _command(tissue: Path, out: Path, args) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "stepgraph",
        "train",
        str(tissue),
        "--batch-key",
        "section",
        "--epochs",
        str(args.epochs),
        "--quiet",
        "--out",
        str(out),
    ]
    return cmd + (["--threads", str(args.threads)] if args.threads else [])


def _env(args) -> dict:
    env = dict(os.environ)
    if not args.threads:  # let the policy choose, as a user's shell would
        env.pop("OMP_NUM_THREADS", None)
        env.pop("MKL_NUM_THREADS", None)
    return env


def run(args) -> dict:
    import stepgraph

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tissue = tmp / "tissue.h5ad"
        stepgraph.synthetic_tissue(n_cells=args.n_cells, seed=0).write_h5ad(tissue)
        env = _env(args)
        start = time.perf_counter()
        for i in range(args.n):
            subprocess.run(_command(tissue, tmp / f"seq{i}", args), env=env, check=True, stdout=subprocess.DEVNULL)
        sequential = time.perf_counter() - start
        start = time.perf_counter()
        procs = [
            subprocess.Popen(_command(tissue, tmp / f"con{i}", args), env=env, stdout=subprocess.DEVNULL)
            for i in range(args.n)
        ]
        codes = [p.wait() for p in procs]
        concurrent = time.perf_counter() - start
        if any(codes):
            raise SystemExit(f"a concurrent run failed: exit codes {codes}")
    return {
        "n": args.n,
        "n_cells": args.n_cells,
        "epochs": args.epochs,
        "threads": args.threads or "policy",
        "usable_cpus": len(os.sched_getaffinity(0)),
        "sequential_s": sequential,
        "concurrent_s": concurrent,
        "ratio": concurrent / sequential,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=4, help="concurrent runs (default: %(default)s)")
    parser.add_argument("--n-cells", type=int, default=5000, help="cells of the tissue (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of each run (default: %(default)s)")
    parser.add_argument(
        "--threads", type=int, default=None, help="force this many torch threads per run (default: stepgraph's policy)"
    )
    parser.add_argument("--out", default=str(RESULTS / "contention.json"), help="JSON results")
    args = parser.parse_args()
    row = run(args)
    print(
        markdown_table(
            [row], ["n", "n_cells", "epochs", "threads", "usable_cpus", "sequential_s", "concurrent_s", "ratio"]
        )
    )
    write_json(args.out, {"args": vars(args), "results": [row]})


if __name__ == "__main__":
    main()
