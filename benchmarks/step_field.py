"""Field test: STEP's own entry points on STEP's trainer and on stepgraph's.

Takes a STEP source tree (github SGGb0nd/step, the ``step-kit`` package),
copies it twice into a temporary folder, and in one copy swaps only
``step/functionality/comps/trainer.py`` for a module that re-exports
stepgraph's ``Trainer``, ``EarlyStopping``, ``train_loop_formatter`` and
``category_random_split``. Then it runs STEP's documented entry points on small
real data, each in its own subprocess, on both copies, from the same seeds:

========================  ==========================================================
``sc_single``             ``scModel`` on one batch (``pbmc68k_reduced``)
``sc_multi``              ``scModel`` with ``batch_key`` (several batches)
``sc_refine``             ``scModel`` with ``batch_key`` and ``class_key``: training, then refine
``sc_early_stop``         ``sc_multi`` after in-place ``lossconfig`` / ``defualt_lcfg`` edits
                          that make early stopping fire at the second epoch
``st_e2e``                ``stModel``, end-to-end, node sampling (DGL's SAINT sampler)
``st_two_stage``          ``stModel``, ``e2e=False``: tensor batches, then stage 2
                          (``init_optimizer(stage=2)``) on sampled subgraphs
``st_full``               ``stModel`` with full neighbourhoods (``train_graph_batch``)
========================  ==========================================================

``pbmc68k_reduced`` ships with scanpy (its log-normalised ``raw`` is turned back
into counts); the spatial entries use a band of ``--n-spots`` spots of the DLPFC
section given by ``--dlpfc``. The report (markdown on stdout and next to the
JSON) gives per entry point and trainer: whether it ran, the epochs run, the
final losses (mean of the last epoch's training steps; validation: STEP's mean
of per-batch means, on both), the wall time of ``run()``, whether the user's
``torch.manual_seed`` was still in force afterwards and the files left behind.

Running it needs, beside stepgraph, what STEP imports: ``scanpy``, ``einops``
and ``dgl==1.1.3`` (dgl 2.x cannot load its graphbolt library on torch 2.13;
1.1.3 runs on the CPU). Keep them in a separate environment::

    python benchmarks/step_field.py --step-src /path/to/step --epochs 3

STEP's code is read from ``--step-src`` and never copied into this repository.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENTRIES = ("sc_single", "sc_multi", "sc_refine", "sc_early_stop", "st_e2e", "st_two_stage", "st_full")
VARIANTS = ("step", "stepgraph")
TRAINER_MODULE = Path("step/functionality/comps/trainer.py")
SHIM = '''"""STEP's trainer module, served by stepgraph: the field test's one change to STEP."""
from stepgraph import EarlyStopping, Trainer, category_random_split, train_loop_formatter  # noqa: F401

__all__ = ["EarlyStopping", "Trainer", "category_random_split", "train_loop_formatter"]
'''
SEED = 0


# ----------------------------------------------------------------------- worker
def _pbmc():
    import anndata as ad
    import numpy as np
    import scanpy as sc
    import scipy.sparse as sp

    pbmc = sc.datasets.pbmc68k_reduced()
    raw = pbmc.raw.X.toarray() if sp.issparse(pbmc.raw.X) else np.asarray(pbmc.raw.X)
    counts = sp.csr_matrix(np.rint(np.expm1(raw)).astype(np.float32))
    return ad.AnnData(X=counts, obs=pbmc.obs[["bulk_labels", "phase"]].copy(), var=pbmc.raw.var.copy())


def _dlpfc(path: str, n_spots: int):
    import anndata as ad
    import numpy as np

    adata = ad.read_h5ad(path)
    order = np.lexsort((adata.obs["array_col"].to_numpy(), adata.obs["array_row"].to_numpy()))
    adata = adata[np.sort(order[:n_spots])].copy()  # a band of rows: neighbourhoods stay whole
    adata.obs = adata.obs[["array_row", "array_col"]].copy()
    return adata


class Recorder:
    """Wraps a STEP functional model's loss hooks and training methods, on the
    instance, to record every loss dict (training or eval mode) and each training call."""

    def __init__(self, functional):
        import functools

        self.events: list[tuple] = []
        self.loss_time = 0.0
        for name in ("handle_input_tuple", "handle_ginput_tuple"):
            method = getattr(functional, name)

            @functools.wraps(method)
            def hook(*args, _method=method, **kwargs):
                start = time.perf_counter()
                out = _method(*args, **kwargs)
                self.loss_time += time.perf_counter() - start
                self.events.append(("loss", functional.model.training, _floats(out)))
                return out

            setattr(functional, name, hook)
        for name in ("train_batch", "train_graph_batch", "train_node_sampler", "train"):
            method = getattr(functional, name)

            @functools.wraps(method)
            def stage(*args, _method=method, _name=name, **kwargs):
                self.events.append(("stage", _name, kwargs.get("epochs", args[0] if args else None)))
                return _method(*args, **kwargs)

            setattr(functional, name, stage)

    def summary(self) -> list[dict]:
        """Per training call: epochs run, the last epoch's mean training losses and
        the last validation pass's mean of per-batch means."""
        stages, current = [], None
        for event in self.events:
            if event[0] == "stage":
                current = {"method": event[1], "epochs": event[2], "train": [], "passes": [], "open": False}
                stages.append(current)
            elif current is not None and event[1]:
                current["train"].append(event[2])
                current["open"] = False
            elif current is not None:
                if not current["open"]:
                    current["passes"].append({"at": len(current["train"]), "losses": []})
                    current["open"] = True
                current["passes"][-1]["losses"].append(event[2])
        out = []
        for s in stages:
            passes = [p for p in s["passes"] if p["at"] > 0]  # validation after training steps
            if passes:
                epochs_run = len(passes)
                start = passes[-2]["at"] if len(passes) > 1 else 0
                last = s["train"][start : passes[-1]["at"]]
            else:
                epochs_run = s["epochs"]
                per_epoch = max(1, len(s["train"]) // max(1, int(s["epochs"] or 1)))
                last = s["train"][-per_epoch:]
            out.append(
                {
                    "method": s["method"],
                    "epochs": s["epochs"],
                    "epochs_run": epochs_run,
                    "steps": len(s["train"]),
                    "train": _mean(last),
                    "valid": _mean(passes[-1]["losses"]) if passes else {},
                }
            )
        return out


def _floats(loss_dict) -> dict:
    import torch

    return {k: float(v.detach()) for k, v in dict(loss_dict).items() if isinstance(v, torch.Tensor) and v.numel() == 1}


def _mean(dicts: list[dict]) -> dict:
    keys = sorted({k for d in dicts for k in d})
    return {k: sum(d[k] for d in dicts if k in d) / max(1, sum(k in d for d in dicts)) for k in keys}


def _run_entry(entry: str, args) -> dict:
    import numpy as np
    import torch
    from step import scModel, stModel

    torch.manual_seed(SEED)
    np.random.seed(SEED)
    epochs = args.epochs
    sc_kwargs = {"n_top_genes": None, "device": "cpu"}
    if entry.startswith("sc"):
        adata = _pbmc()
        keys = {
            "sc_single": {},
            "sc_multi": {"batch_key": "phase"},
            "sc_early_stop": {"batch_key": "phase"},
            "sc_refine": {"batch_key": "phase", "class_key": "bulk_labels"},
        }[entry]
        model = scModel(adata=adata, **keys, **sc_kwargs)
        run_kwargs = {"epochs": epochs, "batch_size": 128, "split_rate": 0.2}
        if entry == "sc_refine":
            run_kwargs["tune_epochs"] = epochs
        if entry == "sc_early_stop":
            functional = model._functional
            for config in functional.lossconfig.values():  # STEP's users edit these dicts in place
                config.update(patience=1, delta=1e9)
            functional.defualt_lcfg.update(patience=1, delta=1e9)
            run_kwargs["epochs"] = 10
    else:
        adata = _dlpfc(args.dlpfc, args.n_spots)
        model = stModel(adata=adata, **sc_kwargs)
        run_kwargs = {
            "epochs": epochs,
            "batch_size": 256,
            "n_samples": 256,
            "n_iterations": args.st_iterations,
            "sampling": "saint",
            "e2e": True,
        }
        if entry == "st_two_stage":
            run_kwargs["e2e"] = False
        if entry == "st_full":
            run_kwargs.update(sampling="fullneighbors", n_samples=512, n_iterations=epochs)
    recorder = Recorder(model._functional)
    tmp_before = set(os.listdir(tempfile.gettempdir()))
    cwd_before = {p for p in Path.cwd().rglob("*")}
    start = time.perf_counter()
    model.run(**run_kwargs)
    wall = time.perf_counter() - start
    left = [
        str(p) for p in Path.cwd().rglob("*") if p not in cwd_before and p.is_file() and "__pycache__" not in p.parts
    ]
    left += [
        os.path.join(tempfile.gettempdir(), name)
        for name in set(os.listdir(tempfile.gettempdir())) - tmp_before
        if name.startswith("stepgraph")
    ]
    embedding = [k for k in ("X_rep", "X_anchord", "X_smoothed") if k in model.adata.obsm]
    finite = all(bool(np.isfinite(np.asarray(model.adata.obsm[k])).all()) for k in embedding)
    return {
        "entry": entry,
        "wall_s": wall,
        "loss_call_s": recorder.loss_time,
        "stages": recorder.summary(),
        "seed_kept": torch.initial_seed() == SEED,
        "files_left": left,
        "embeddings": embedding,
        "embeddings_finite": finite,
        "n_obs": int(model.adata.n_obs),
        "n_vars": int(model.adata.n_vars),
    }


def worker(args) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    sys.path.insert(0, args.src)
    result = _run_entry(args.worker, args)
    Path(args.result).write_text(json.dumps(result, indent=2))


# ----------------------------------------------------------------------- parent
def _copy_trees(step_src: Path, root: Path) -> dict[str, Path]:
    if not (step_src / TRAINER_MODULE).is_file():
        raise SystemExit(f"--step-src must be a STEP source tree holding {TRAINER_MODULE}, got {step_src}")
    trees = {}
    for variant in VARIANTS:
        tree = root / variant
        shutil.copytree(step_src / "step", tree / "step", ignore=shutil.ignore_patterns("__pycache__"))
        trees[variant] = tree
    (trees["stepgraph"] / TRAINER_MODULE).write_text(SHIM)
    return trees


def _total(losses: dict) -> float | None:
    return sum(losses.values()) if losses else None


def _fmt_losses(losses: dict) -> str:
    return ", ".join(f"{k.replace('_loss', '')} {v:.4g}" for k, v in losses.items()) or "-"


def _row(entry: str, variant: str, result: dict) -> dict:
    if "error" in result:
        return {"entry point": entry, "trainer": variant, "ran": "no", "error": result["error"][:160]}
    stages = result["stages"]
    last = stages[-1] if stages else {"train": {}, "valid": {}}
    return {
        "entry point": entry,
        "trainer": variant,
        "ran": "yes",
        "training calls": " + ".join(f"{s['method']}({s['epochs_run']}ep/{s['steps']}st)" for s in stages),
        "final train losses": _fmt_losses(last["train"]),
        "final val losses": _fmt_losses(last["valid"]),
        "time (s)": round(result["wall_s"], 1),
        "seed kept": "yes" if result["seed_kept"] else "no",
        "files left": len(result["files_left"]),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--step-src", type=Path, help="a STEP source tree (holding step/)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per training call")
    parser.add_argument("--st-iterations", type=int, default=20, help="sampled subgraphs per stModel node-sampling run")
    parser.add_argument(
        "--dlpfc",
        default=str(Path(__file__).resolve().parents[1].parent / "shared/data/real/dlpfc151510_drsc500.h5ad"),
        help="the Visium DLPFC section for the stModel entries",
    )
    parser.add_argument("--n-spots", type=int, default=1500, help="spots of the section to keep (a band)")
    parser.add_argument("--entries", nargs="+", choices=ENTRIES, default=list(ENTRIES))
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs each entry point")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per entry point and trainer")
    parser.add_argument("--json", default=None, help="where to write the JSON (default: results/step_field.json)")
    parser.add_argument("--worker", choices=ENTRIES, help=argparse.SUPPRESS)
    parser.add_argument("--src", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    if args.step_src is None:
        parser.error("--step-src is required")

    from _common import RESULTS, markdown_table, write_json

    results: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="step-field-") as root:
        trees = _copy_trees(args.step_src.resolve(), Path(root))
        for entry in args.entries:
            for variant, tree in trees.items():
                out = Path(root) / f"{entry}-{variant}.json"
                cmd = [
                    args.python,
                    str(Path(__file__).resolve()),
                    "--worker",
                    entry,
                    "--src",
                    str(tree),
                    "--result",
                    str(out),
                    "--epochs",
                    str(args.epochs),
                    "--dlpfc",
                    args.dlpfc,
                    "--n-spots",
                    str(args.n_spots),
                    "--st-iterations",
                    str(args.st_iterations),
                ]
                run_dir = Path(root) / f"cwd-{entry}-{variant}"
                run_dir.mkdir()
                start = time.perf_counter()
                try:
                    proc = subprocess.run(cmd, cwd=run_dir, capture_output=True, text=True, timeout=args.timeout)
                    failed = proc.returncode != 0 or not out.exists()
                    log = proc.stderr.strip().splitlines()
                except subprocess.TimeoutExpired:
                    failed, log = True, [f"timed out after {args.timeout} s"]
                if failed:
                    error = next((line for line in reversed(log) if line.strip()), "no output")
                    result = {"error": error, "log_tail": log[-30:]}
                else:
                    result = json.loads(out.read_text())
                results.setdefault(entry, {})[variant] = result
                print(
                    f"{entry:14s} {variant:9s} {'FAILED' if failed else 'ran'} ({time.perf_counter() - start:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )

    rows = [_row(entry, variant, results[entry][variant]) for entry in results for variant in VARIANTS]
    for entry, pair in results.items():
        totals = [
            _total(p["stages"][-1]["train"]) if "stages" in p and p["stages"] else None
            for p in (pair["step"], pair["stepgraph"])
        ]
        if None not in totals and totals[0]:
            for row in rows:
                if row["entry point"] == entry and row["trainer"] == "stepgraph":
                    row["vs STEP"] = f"{100 * (totals[1] - totals[0]) / abs(totals[0]):+.1f}%"
    columns = [
        "entry point",
        "trainer",
        "ran",
        "training calls",
        "final train losses",
        "final val losses",
        "vs STEP",
        "time (s)",
        "seed kept",
        "files left",
        "error",
    ]
    table = markdown_table(rows, columns)
    command = "python benchmarks/step_field.py " + " ".join(sys.argv[1:])
    print(table)
    path = Path(args.json) if args.json else RESULTS / "step_field.json"
    write_json(
        str(path),
        {"command": command, "epochs": args.epochs, "n_spots": args.n_spots, "results": results, "table": rows},
    )
    path.with_suffix(".md").write_text(f"# STEP field test\n\n`{command}`\n\n{table}\n")


if __name__ == "__main__":
    main()
