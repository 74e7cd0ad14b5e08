"""``stepgraph bench``: every benchmark in ``benchmarks/`` at one size, one report.

Each script runs in its own process (its figures are its own) with
``OMP_NUM_THREADS`` set to the chosen thread count, writes its JSON, and
prints its markdown tables. The harness gathers them into:

- ``bench.json``: the environment (versions, cores, torch threads), and per
  benchmark its command, status, wall time and JSON results;
- ``bench.md``: a markdown report, each benchmark's tables with the anchors
  measured in the same run beside them (squidpy for graph building,
  torch-sparse's sampler for neighbour sampling, a bare PyTorch loop for the
  trainer), or "not installed";
- ``bench.png``: time and memory against size for the scaling benchmarks
  (graph building, neighbour sampling, end to end), when matplotlib is there.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from stepgraph.bench.environment import environment

__all__ = ["SIZES", "run_benchmarks", "installed_benchmarks"]

#: Arguments of each benchmark script per size; a list of argument lists
#: runs the script once per entry (the sizes of a scaling benchmark).
SIZES: dict[str, dict[str, list[list[str]]]] = {
    "tiny": {  # for tests: seconds per script
        "graph_build": [["--sizes", "2000,4000", "--sections", "1", "--methods", "knn"]],
        "node_sampling": [
            ["--n-nodes", str(n), "--phases", "dense", "trim", "--repeats", "1", "--train-epochs", "1"]
            for n in (2000, 4000)
        ],
        "trainer_overhead": [
            ["--n-obs", "1000", "--n-vars", "50", "--batch-size", "128", "--hidden", "32", "--repeats", "1"]
        ],
        "ddp_scaling": [["--n-cells", "2000", "--n-genes", "20", "--batch-size", "256", "--epochs", "1"]],
        "end_to_end": [["--n-cells", str(n), "--n-genes", "50", "--epochs", "1"] for n in (2000, 4000)],
    },
    "small": {  # under 5 minutes on the 2-core development machine
        "graph_build": [["--sizes", "20000,100000", "--sections", "1", "--methods", "knn,radius"]],
        "node_sampling": [
            ["--n-nodes", str(n), "--phases", "dense", "trim", "--repeats", "1", "--train-epochs", "1"]
            for n in (20_000, 100_000)
        ],
        "trainer_overhead": [["--n-obs", "5000", "--repeats", "3"]],
        "ddp_scaling": [["--n-cells", "20000", "--epochs", "2"]],
        "end_to_end": [["--n-cells", str(n), "--n-genes", "500", "--epochs", "1"] for n in (10_000, 30_000)],
    },
    "medium": {
        "graph_build": [["--sizes", "100000,300000,1000000", "--sections", "1,3"]],
        "node_sampling": [
            ["--n-nodes", str(n), "--phases", "dense", "trim", "--repeats", "1", "--train-epochs", "1"]
            for n in (100_000, 300_000, 1_000_000)
        ],
        "trainer_overhead": [["--repeats", "5"]],
        "ddp_scaling": [["--n-cells", "100000", "--epochs", "3"]],
        "end_to_end": [["--n-cells", str(n), "--n-genes", "2000", "--epochs", "1"] for n in (30_000, 100_000, 300_000)],
    },
    "large": {  # the figures of docs/benchmarks.md (issue 21: the 1M-cell rows)
        "graph_build": [["--sizes", "100000,1000000", "--sections", "1,3"]],
        "node_sampling": [
            ["--n-nodes", "1000000", "--train-epochs", "3"],
            # the pipeline's model: GAT, 20 input features, ELU
            [
                "--n-nodes",
                "1000000",
                "--phases",
                "trim",
                "--conv",
                "gat",
                "--dense-dim",
                "20",
                "--activation",
                "elu",
                "--train-epochs",
                "2",
            ],
        ],
        "trainer_overhead": [["--repeats", "7", "--progress"]],
        "ddp_scaling": [["--n-cells", "100000", "--epochs", "3"]],
        "end_to_end": [["--n-cells", str(n), "--n-genes", "2000", "--epochs", "1"] for n in (100_000, 1_000_000)]
        # one epoch at 500 genes (embedding against epoch), then the default length
        + [["--n-cells", "1000000", "--n-genes", "500", "--density", "0.1", "--epochs", str(e)] for e in (1, 0)],
    },
}

#: Anchor of each benchmark: the module measured beside stepgraph, and where.
ANCHORS = {
    "graph_build": ("squidpy", "squidpy", "squidpy's spatial neighbours, same cases"),
    "node_sampling": ("torch-sparse", "torch_sparse", "PyG's compiled sampler (dense phase)"),
    "trainer_overhead": ("bare loop", None, "a hand-written PyTorch loop, same data"),
}


def _tables(stdout: str) -> list[str]:
    """The markdown tables a script printed (runs of lines starting with '|')."""
    tables, current = [], []
    for line in stdout.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append("\n".join(current))
            current = []
    return tables


def _run_one(script: Path, args: list[str], out_json: Path, threads: int, timeout: float) -> dict:
    out_json = out_json.resolve()  # the script runs in its own folder
    cmd = [sys.executable, str(script), *args, "--out", str(out_json)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    root = script.parents[1]
    if (root / "stepgraph").is_dir():  # a source checkout: its stepgraph, not an installed one
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=script.parent, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {
            "command": " ".join(cmd[1:]),
            "status": f"timed out after {timeout:.0f} s",
            "seconds": time.perf_counter() - start,
            "tables": [],
            "results": None,
        }
    seconds = time.perf_counter() - start
    ok = proc.returncode == 0 and out_json.is_file()
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
    return {
        "command": "python " + " ".join([f"benchmarks/{script.name}", *args]),
        "status": "ok" if ok else f"failed (exit {proc.returncode}): {tail[0][:300]}",
        "seconds": seconds,
        "tables": _tables(proc.stdout),
        "results": json.loads(out_json.read_text()) if ok else None,
    }


def installed_benchmarks() -> Path:
    """The ``benchmarks/`` folder: the one installed with the package (``stepgraph._benchmarks``, the
    checkout's own folder in an editable install), else the one beside this source tree.
    """
    from importlib.util import find_spec

    spec = find_spec("stepgraph._benchmarks")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            if (Path(location) / "_common.py").is_file():
                return Path(location)
    return Path(__file__).resolve().parents[2] / "benchmarks"


def run_benchmarks(
    size: str = "small",
    out_dir: str | Path = "stepgraph_out/bench",
    bench_dir: str | Path | None = None,
    threads: int = 1,
    only: list[str] | None = None,
    timeout: float = 3600,
    log=print,
) -> dict:
    """Run every benchmark script at ``size`` and write the JSON, markdown and PNG report.

    Parameters
    ----------
    size
        ``"tiny"`` (seconds; for tests), ``"small"``, ``"medium"`` or
        ``"large"``; see :data:`SIZES` for what each runs.
    out_dir
        Folder for ``bench.json``, ``bench.md``, ``bench.png`` and each
        script's own JSON (``raw/``).
    bench_dir
        The ``benchmarks/`` folder; defaults to the one installed with the
        package (:func:`installed_benchmarks`).
    threads
        Torch threads of every script (``OMP_NUM_THREADS``).
    only
        Names of the benchmarks to run (default: all).
    timeout
        Seconds allowed per script run.
    log
        Called with one line of progress per script run.

    Returns
    -------
    dict
        What ``bench.json`` holds.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {list(SIZES)}, got size={size!r}")
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int, got threads={threads!r}")
    bench_dir = Path(bench_dir) if bench_dir else installed_benchmarks()
    if not (bench_dir / "_common.py").is_file():
        raise FileNotFoundError(
            f"bench_dir={str(bench_dir)!r} is not stepgraph's benchmarks/ folder "
            "(pass the benchmarks/ folder of a source checkout)"
        )
    names = list(SIZES[size])
    if only:
        unknown = sorted(set(only) - set(names))
        if unknown:
            raise ValueError(f"only={only!r}: unknown benchmarks {unknown}; choose from {names}")
        names = [n for n in names if n in only]
    out_dir = Path(out_dir)
    (out_dir / "raw").mkdir(parents=True, exist_ok=True)

    report = {"size": size, "environment": environment(threads), "benchmarks": {}}
    start = time.perf_counter()
    for name in names:
        runs = []
        for i, args in enumerate(SIZES[size][name]):
            run = _run_one(bench_dir / f"{name}.py", args, out_dir / "raw" / f"{name}_{i}.json", threads, timeout)
            log(f"{name} [{i + 1}/{len(SIZES[size][name])}]: {run['status']} in {run['seconds']:.1f} s")
            runs.append(run)
        report["benchmarks"][name] = runs
    report["seconds"] = time.perf_counter() - start
    report["anchors"] = _anchors(report)
    (out_dir / "bench.json").write_text(json.dumps(report, indent=1, default=str))
    plotted = _plot(report, out_dir / "bench.png")
    (out_dir / "bench.md").write_text(_markdown(report, plotted))
    return report


def _anchors(report: dict) -> dict:
    out = {}
    for name, (label, module, what) in ANCHORS.items():
        if name not in report["benchmarks"]:
            continue
        installed = module is None or importlib.util.find_spec(module) is not None
        out[label] = {
            "benchmark": name,
            "what": what,
            "status": "measured in this run" if installed else "not installed",
        }
    return out


def _series(report: dict) -> dict[str, list[tuple[int, float, float]]]:
    """``label -> [(size, seconds, peak MiB)]`` for the scaling benchmarks."""
    series: dict[str, list] = {}
    for run in report["benchmarks"].get("graph_build", []):
        for row in (run["results"] or {}).get("results", []):
            for impl in ("stepgraph", "squidpy"):
                res = row.get(impl)
                if res and "error" not in res and row["sections"] == 1:
                    # graph_build's memory is the growth during the build, not the process's
                    series.setdefault(f"graph {row['method']} ({impl}; memory: growth)", []).append(
                        (row["cells"], res["wall_s"], res["peak_mb"])
                    )
    for run in report["benchmarks"].get("node_sampling", []):
        res = run["results"]
        if res:
            for row in res["rows"]:
                series.setdefault(f"sampling {row['phase']} {row['backend']}", []).append(
                    (res["args"]["n_nodes"], row["s/epoch (best)"], row["peak RSS MiB"])
                )
    for run in report["benchmarks"].get("end_to_end", []):
        res = run["results"]
        if res:
            for mode, r in res["results"].items():
                series.setdefault(f"end to end ({mode})", []).append(
                    (res["args"]["n_cells"], r["wall_s"], r["peak_rss_mb"])
                )
    return {k: sorted(v) for k, v in series.items()}


def _plot(report: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    series = _series(report)
    if not series:
        return False
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 4.8))
    for label, points in series.items():
        sizes, seconds, memory = zip(*points)
        ax_t.plot(sizes, seconds, marker="o", label=label)
        ax_m.plot(sizes, memory, marker="o", label=label)
    for ax, ylabel in ((ax_t, "seconds"), (ax_m, "peak resident memory (MiB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("cells / nodes")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    ax_t.set_title("time against size")
    ax_m.set_title("memory against size")
    ax_m.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.suptitle(f"stepgraph bench --size {report['size']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _markdown(report: dict, plotted: bool) -> str:
    env = report["environment"]
    lines = [
        f"# stepgraph bench --size {report['size']}",
        "",
        f"{env['usable_cores']} usable cores ({env['cpu_count']} CPUs), torch threads "
        f"{env['torch_threads']}, Python {env['python']}, {env['platform']}; "
        f"{report['seconds']:.0f} s in all.",
        "",
        "| package | version |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in env["versions"].items()]
    lines += ["", "## Anchors", "", "| anchor | measured beside | status |", "|---|---|---|"]
    lines += [
        f"| {label} | `{a['benchmark']}`: {a['what']} | {a['status']} |" for label, a in report["anchors"].items()
    ]
    if plotted:
        lines += ["", "![time and memory against size](bench.png)"]
    for name, runs in report["benchmarks"].items():
        lines += ["", f"## {name}"]
        for run in runs:
            lines += ["", f"`{run['command']}`: {run['status']}, {run['seconds']:.1f} s"]
            for table in run["tables"]:
                lines += ["", table]
    return "\n".join(lines) + "\n"
