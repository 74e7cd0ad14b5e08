"""Benchmark: build spatial graphs with stepgraph and, side by side, with squidpy.

Every case (implementation x method x cells x sections) runs in a fresh
subprocess, so one case's memory cannot leak into the next. Inside it the
coordinates are made first; then the peak-RSS counter is reset
(``/proc/self/clear_refs``, falling back to ``ru_maxrss``) and the graph is
built with the AnnData written in place, as both libraries do by default. We
report the wall time of that call and its peak memory above the resident size
just before it.

Data: each section is its own tissue of ``cells / sections`` cells, uniform
at density 1 in a square (so the radius ``sqrt(6 / pi)`` gives about 6
neighbours per cell), obs ordered section by section. ``grid`` uses a
hexagonal (Visium-like) lattice of spacing 1 per section instead.

squidpy is optional (``pip install .[bench]``); without it only stepgraph is
measured. Example::

    python benchmarks/graph_build.py --sizes 10000,100000,1000000 --sections 1,3 \\
        --methods knn,radius,delaunay,grid --out benchmarks/results/graph_build.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("knn", "radius", "delaunay", "grid")
RADIUS = math.sqrt(6 / math.pi)  # about 6 neighbours at density 1


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "sizes: total cells per case, comma separated (default 10000,100000,1000000: "
            "10k, 100k and 1M cells); each case is split into every --sections count."
        ),
    )
    parser.add_argument(
        "--sizes",
        default="10000,100000,1000000",
        help="comma-separated cell counts (default: %(default)s)",
    )
    parser.add_argument(
        "--sections",
        default="1,3",
        help="comma-separated numbers of sections per case (default: %(default)s)",
    )
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help="comma-separated methods among knn,radius,delaunay,grid (default: %(default)s)",
    )
    parser.add_argument(
        "--impl",
        default="stepgraph,squidpy",
        help="implementations to run; squidpy is skipped when not importable (default: %(default)s)",
    )
    parser.add_argument("--n-neighbors", type=int, default=6, help="k for knn and grid (default: 6)")
    parser.add_argument(
        "--radius",
        type=float,
        default=RADIUS,
        help="radius for the radius method (default: sqrt(6/pi) = %(default).3f)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="fresh processes per case; the fastest time and the largest memory are kept (default: %(default)s)",
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per case (default: 1800)")
    parser.add_argument(
        "--out",
        default=str(ROOT / "benchmarks" / "results" / "graph_build.json"),
        help="JSON output path (default: %(default)s)",
    )
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case
    args = parser.parse_args(argv)

    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return 0

    sizes = [int(s) for s in args.sizes.split(",") if s]
    section_counts = [int(s) for s in args.sections.split(",") if s]
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    impls = [i for i in args.impl.split(",") if i]
    if "squidpy" in impls and not _importable("squidpy"):
        print("squidpy is not importable here: measuring stepgraph only.", file=sys.stderr)
        impls.remove("squidpy")

    results = []
    for n in sizes:
        for n_sections in section_counts:
            for method in methods:
                row = {"method": method, "cells": n, "sections": n_sections}
                for impl in impls:
                    case = {
                        "impl": impl,
                        "method": method,
                        "cells": n,
                        "sections": n_sections,
                        "n_neighbors": args.n_neighbors,
                        "radius": args.radius,
                    }
                    runs = [_spawn(case, args.timeout) for _ in range(args.repeats)]
                    row[impl] = _best(runs)
                    print(_progress(row, impl), file=sys.stderr, flush=True)
                results.append(row)

    table = markdown(results, impls)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine": {
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                },
                "params": {
                    "n_neighbors": args.n_neighbors,
                    "radius": args.radius,
                    "repeats": args.repeats,
                },
                "results": results,
                "table": table,
            },
            indent=2,
        )
    )
    print(f"\nwrote {out}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- #
# One case, in its own process
# --------------------------------------------------------------------------- #


def make_adata(cells, sections, method, seed=0):
    import anndata as ad
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    sizes = [cells // sections + (i < cells % sections) for i in range(sections)]
    coords = []
    for size in sizes:
        if method == "grid":
            n_cols = int(math.ceil(math.sqrt(size)))
            r, c = np.divmod(np.arange(size), n_cols)
            coords.append(np.column_stack([c + 0.5 * (r % 2), r * math.sqrt(3) / 2]))
        else:
            coords.append(rng.uniform(0, math.sqrt(size), size=(size, 2)))
    obs = pd.DataFrame(
        {"section": pd.Categorical(np.repeat([f"s{i}" for i in range(sections)], sizes))},
        index=pd.RangeIndex(cells).astype(str),
    )
    adata = ad.AnnData(obs=obs)
    adata.obsm["spatial"] = np.vstack(coords)
    return adata


def run_case(case):
    import gc
    import warnings

    warnings.filterwarnings("ignore")
    sys.path.insert(0, str(ROOT))
    method, batch_key = case["method"], ("section" if case["sections"] > 1 else None)
    if case["impl"] == "squidpy":
        import squidpy as sq

        kwargs = {
            "knn": {"n_neighs": case["n_neighbors"]},
            "radius": {"radius": case["radius"]},
            "delaunay": {},
            "grid": {"n_neighs": case["n_neighbors"], "n_rings": 1},
        }[method]
        # squidpy >= 1.8 has one function per method and deprecates spatial_neighbors
        new_api = getattr(sq.gr, f"spatial_neighbors_{method}", None)
        if new_api is None:
            kwargs.update(
                {
                    "knn": {"coord_type": "generic"},
                    "radius": {"coord_type": "generic"},
                    "delaunay": {"coord_type": "generic", "delaunay": True},
                    "grid": {"coord_type": "grid"},
                }[method]
            )

        def build(adata):
            (new_api or sq.gr.spatial_neighbors)(adata, library_key=batch_key, **kwargs)
    else:
        from stepgraph.graph import spatial_graph

        kwargs = {
            "knn": {"n_neighbors": case["n_neighbors"]},
            "radius": {"radius": case["radius"]},
            "delaunay": {},
            "grid": {"n_neighbors": case["n_neighbors"]},
        }[method]

        def build(adata):
            spatial_graph(adata, method=method, batch_key=batch_key, **kwargs)

    from stepgraph.pipeline.stages import peak_rss_mb, reset_peak_rss

    adata = make_adata(case["cells"], case["sections"], method)
    gc.collect()
    before = _rss_bytes()
    resettable = reset_peak_rss()
    t0 = time.perf_counter()
    build(adata)
    wall = time.perf_counter() - t0
    peak = peak_rss_mb(resettable) * 2**20
    conn = adata.obsp["spatial_connectivities"]
    return {
        "wall_s": wall,
        "peak_mb": max(peak - before, 0) / 2**20,
        "edges": int(conn.nnz),
        "memory_probe": "VmHWM after clear_refs" if resettable else "ru_maxrss",
    }


def _rss_bytes():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# --------------------------------------------------------------------------- #
# Driver helpers
# --------------------------------------------------------------------------- #


def _importable(module):
    probe = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, check=False)
    return probe.returncode == 0


def _spawn(case, timeout):
    cmd = [sys.executable, str(Path(__file__).resolve()), "--case", json.dumps(case)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        return {"error": f"exit {proc.returncode}: {tail[0][:200]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _best(runs):
    """Fastest wall time and largest peak memory over repeated runs of one case."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[0]
    best = dict(min(ok, key=lambda r: r["wall_s"]))
    best["peak_mb"] = max(r["peak_mb"] for r in ok)
    best["wall_s_all"] = [r["wall_s"] for r in ok]
    return best


def _progress(row, impl):
    res = row[impl]
    what = f"{impl:9s} {row['method']:8s} {row['cells']:>8d} cells {row['sections']} sec"
    if "error" in res:
        return f"{what}: {res['error']}"
    return f"{what}: {res['wall_s']:.2f} s, {res['peak_mb']:.0f} MB, {res['edges']} edges"


def _fmt(res, key, spec):
    if res is None:
        return "-"
    if "error" in res:
        return "error" if key == "wall_s" else "-"
    return format(res[key], spec)


def markdown(results, impls):
    both = "stepgraph" in impls and "squidpy" in impls
    head = ["method", "cells", "sections", "stepgraph s", "stepgraph MB"]
    if both:
        head += ["squidpy s", "squidpy MB", "time ratio (ours/squidpy)", "same edge count"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in results:
        ours, theirs = row.get("stepgraph"), row.get("squidpy")
        cells = [
            row["method"],
            f"{row['cells']:,}",
            str(row["sections"]),
            _fmt(ours, "wall_s", ".2f"),
            _fmt(ours, "peak_mb", ".0f"),
        ]
        if both:
            ok = ours and theirs and "error" not in ours and "error" not in theirs
            cells += [
                _fmt(theirs, "wall_s", ".2f"),
                _fmt(theirs, "peak_mb", ".0f"),
                f"{ours['wall_s'] / theirs['wall_s']:.2f}" if ok else "-",
                ("yes" if ours["edges"] == theirs["edges"] else f"no ({ours['edges']} vs {theirs['edges']})")
                if ok
                else "-",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
