"""Command line: ``stepgraph demo | train | graph | bench`` (also ``python -m stepgraph``).

Errors in the user's input (a missing, empty, truncated or corrupt file, a
missing ``obsm`` key or ``obs`` column, bad coordinates, an ``--out`` that is a
file or cannot be written, a checkpoint that cannot be loaded safely, a full
disk) print one line to stderr and exit with status 2; nothing ever prints a
traceback for them, and the input file is never modified.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path

__all__ = ["main", "build_parser"]

DEFAULT_DEMO_OUT = "stepgraph_out/demo"


class UserError(Exception):
    """An error in the user's input: reported in one line, exit status 2."""


def _fanout(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--fanout must be integers separated by commas, got {text!r}") from None
    if not values or any(v < 1 and v != -1 for v in values):
        raise argparse.ArgumentTypeError(f"--fanout must be positive integers (or -1), got {text!r}")
    return values


def _seeds(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds must be integers separated by commas, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"--seeds must name at least one seed, got {text!r}")
    return values


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _add_graph_options(p: argparse.ArgumentParser, method: str = "knn") -> None:
    p.add_argument("--spatial-key", default="spatial", help="obsm key of the coordinates (default: %(default)s)")
    p.add_argument("--batch-key", default=None,
                   help="obs column of the sections; no edge joins two sections (default: none)")
    p.add_argument("--method", default=method, choices=["knn", "radius", "delaunay", "grid"],
                   help="graph construction (default: %(default)s)")
    p.add_argument("--n-neighbors", type=_positive_int, default=6,
                   help="neighbours per cell for knn, per ring for grid (default: %(default)s)")
    p.add_argument("--radius", type=float, default=None,
                   help="radius for method=radius; prunes longer edges for knn/delaunay (default: none)")


def _add_run_options(p: argparse.ArgumentParser, out: str, seed_help: str) -> None:
    """Options shared by ``demo`` and ``train``."""
    p.add_argument("--epochs", type=_positive_int, default=50, help="maximum epochs (default: %(default)s)")
    p.add_argument("--out", default=out, help="output folder (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help=f"{seed_help} (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``stepgraph`` command."""
    parser = argparse.ArgumentParser(
        prog="stepgraph",
        description="Train graph neural networks on spatial transcriptomics (AnnData + PyG).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,train,graph,bench,info}")

    demo = sub.add_parser("demo", help="run the whole pipeline on the embedded synthetic tissue",
                          description="Generate the embedded synthetic tissue (two sections, known "
                          "domains), build its graph, train the reference model with node sampling, "
                          "validation and early stopping, cluster the embedding into domains and "
                          "report the adjusted Rand index against the truth.")
    demo.add_argument("--n-cells", type=_positive_int, default=20_000, help="cells (default: %(default)s)")
    _add_run_options(demo, DEFAULT_DEMO_OUT, "seed of tissue and training")

    train = sub.add_parser("train", help="the same pipeline on your .h5ad file",
                           description="Build the spatial graph of INPUT, train the reference graph "
                           "autoencoder with node sampling, and write the embedding "
                           "(obsm['X_stepgraph']), domains (obs['stepgraph_domain']), checkpoint, "
                           "loss history and figure to --out. INPUT itself is never modified.")
    train.add_argument("input", help="input .h5ad file (counts in X)")
    _add_graph_options(train, method="radius")
    train.add_argument("--graph-scale", type=float, default=1.2,
                       help="without --radius, method=radius joins cells closer than this times the median "
                       "distance to the --n-neighbors-th nearest neighbour (default: %(default)s)")
    train.add_argument("--n-top-genes", type=_positive_int, default=3000,
                       help="highly variable genes kept when there are more genes (default: %(default)s)")
    train.add_argument("--n-pcs", type=_positive_int, default=20,
                       help="principal components of the model input (default: %(default)s)")
    train.add_argument("--conv", default="gat", choices=["gat", "gcn", "sage"],
                       help="graph convolution of the encoder (default: %(default)s)")
    train.add_argument("--cluster", default="gmm", choices=["gmm", "kmeans"],
                       help="clustering of the embedding into domains (default: %(default)s)")
    train.add_argument("--refine", action="store_true",
                       help="relabel a cell whose neighbours mostly carry another domain")
    train.add_argument("--layer", default=None, help="use this layer of counts instead of X (default: X)")
    train.add_argument("--batch-size", type=_positive_int, default=1024, help="seed cells per batch (default: %(default)s)")
    train.add_argument("--fanout", type=_fanout, default=[10, 5],
                       help="neighbours sampled per hop, comma separated (default: 10,5)")
    train.add_argument("--lr", type=float, default=0.003, help="learning rate (default: %(default)s)")
    train.add_argument("--patience", type=_positive_int, default=5,
                       help="early-stopping patience in epochs (default: %(default)s)")
    train.add_argument("--split-rate", type=float, default=0.1,
                       help="share of cells held out for validation (default: %(default)s)")
    train.add_argument("--n-domains", type=_positive_int, default=None,
                       help="clusters in the domain assignment (default: categories of --truth-key, else 7)")
    train.add_argument("--truth-key", default=None, help="obs column of known domains, to report the ARI")
    train.add_argument("--init-weights", default=None, metavar="CHECKPOINT",
                       help="start from the model weights of this checkpoint (best.pt or last.pt of "
                       "an earlier run); training itself starts afresh (default: none)")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --out from its checkpoints/last.pt, exactly where it "
                       "stopped; pass the same options as that run and the total --epochs")
    train.add_argument("--trust-checkpoint", action="store_true",
                       help="load --init-weights / --resume checkpoints in full, objects other than "
                       "tensors included; a checkpoint can then run code: only for files you trust")
    train.add_argument("--backed", action="store_true",
                       help="keep X on disk (read the file backed) and compute the input features "
                       "from chunks of rows; "
                       "memory then holds the graph, not the expression matrix")
    _add_run_options(train, "stepgraph_out/train", "seed of split, sampling and initialisation")

    graph = sub.add_parser("graph", help="build the spatial graph and write it into an h5ad file",
                           description="Write obsp['<key>_connectivities'], obsp['<key>_distances'] and "
                           "uns['<key>_neighbors'] (squidpy's layout) for INPUT, to --output (a new file) "
                           "or, with --overwrite, into INPUT itself.")
    graph.add_argument("input", help="input .h5ad file")
    _add_graph_options(graph)
    graph.add_argument("--key-added", default="spatial", help="prefix of the written keys (default: %(default)s)")
    graph.add_argument("--output", default=None, help="file to write (default: INPUT with suffix .graph.h5ad)")
    graph.add_argument("--overwrite", action="store_true", help="allow writing over an existing file, INPUT included")
    bench_sub = _add_bench_parser(sub)
    domains = bench_sub.add_parser(
        "domains", help="spatial domains: the pipeline vs training-free baselines on an annotated h5ad",
        description="Run stepgraph's pipeline, the neighbour-mean baseline and the non-spatial baseline "
        "(PCA + k-means) on INPUT with several seeds, each run in a fresh process, and report ARI and NMI "
        "against --truth-key, time and peak memory (median [min, max] over seeds), as a markdown table "
        "and JSON.")
    domains.add_argument("input", help="input .h5ad file (raw counts in X, true domains in obs)")
    domains.add_argument("--truth-key", required=True, help="obs column of the true domains")
    domains.add_argument("--batch-key", default=None, help="obs column of the sections (default: none)")
    domains.add_argument("--spatial-key", default="spatial", help="obsm key of the coordinates (default: %(default)s)")
    domains.add_argument("--seeds", type=_seeds, default=[0, 1, 2], help="seeds, comma separated (default: 0,1,2)")
    domains.add_argument("--methods", default="stepgraph,neighbor_mean,pca_kmeans",
                         help="methods, comma separated (default: %(default)s)")
    domains.add_argument("--epochs", type=_positive_int, default=None,
                         help="maximum epochs of the pipeline (default: the pipeline's)")
    domains.add_argument("--out", default="benchmarks/results/domains",
                         help="results written to OUT.json and OUT.md (default: %(default)s)")
    sub.add_parser("info", help="versions, threads, sampler backend and torch-scatter status",
                   description="Print what a bug report needs: the versions of stepgraph and its "
                   "dependencies, torch's threads, the neighbour sampler backend that 'auto' picks, and "
                   "whether torch-scatter is loaded or, if not, why.")
    return parser


def _add_bench_parser(sub) -> argparse._SubParsersAction:
    """``stepgraph bench [--size ...]``; returns its (optional) sub-commands, so that
    ``stepgraph bench <name>`` commands can be added beside the benchmark suite."""
    from stepgraph.bench.suite import SIZES

    bench = sub.add_parser("bench", help="run every benchmark in benchmarks/ and write one report",
                           description="Run every script of benchmarks/ at one size, each in its own "
                           "process, and write bench.json (environment and results), bench.md (a "
                           "report with the anchors: squidpy, torch-sparse, a bare loop) and bench.png "
                           "(time and memory against size) to --out.")
    bench.add_argument("--size", default="small", choices=list(SIZES),
                       help="small: under 5 minutes; medium; large: the documented 1M-cell figures; "
                       "tiny: seconds, for tests (default: %(default)s)")
    bench.add_argument("--out", default="stepgraph_out/bench", help="output folder (default: %(default)s)")
    bench.add_argument("--threads", type=_positive_int, default=1,
                       help="torch threads of every benchmark (default: %(default)s)")
    bench.add_argument("--only", default=None,
                       help="comma-separated benchmarks to run (default: all), e.g. graph_build,end_to_end")
    bench.add_argument("--bench-dir", default=None,
                       help="the benchmarks/ folder (default: the one of this source checkout)")
    return bench.add_subparsers(dest="bench_command", required=False, metavar="")


def _read_h5ad(path: str, backed: bool = False):
    import anndata as ad

    file = Path(path)
    if not file.exists():
        raise UserError(f"input file {path!r} does not exist")
    if file.is_dir():
        raise UserError(f"input {path!r} is a folder, not an .h5ad file")
    if file.stat().st_size == 0:
        raise UserError(f"input file {path!r} is empty (0 bytes), not an .h5ad file")
    try:
        return ad.read_h5ad(file, backed="r" if backed else None)
    except Exception as err:  # h5py and anndata raise many types for a truncated or corrupt file
        reason = " ".join(str(err).split())[:200]
        raise UserError(f"input file {path!r} is not a readable .h5ad file "
                        f"({type(err).__name__}: {reason})") from None


def _check_out_name(out: Path, input_path: str | None = None) -> None:
    """``--out`` must name a folder (or nothing yet), never the input file."""
    if input_path is not None and out.resolve() == Path(input_path).resolve():
        raise UserError(f"--out {str(out)!r} is the input file itself; choose a folder for the outputs")
    if input_path is not None and (out / "adata.h5ad").resolve() == Path(input_path).resolve():
        raise UserError(f"--out {str(out)!r} would overwrite the input file with its adata.h5ad; "
                        "choose another folder")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} is an existing file, not a folder")


def _prepare_out(out: Path) -> bool:
    """Create ``--out`` when missing and check that files can be written in it;
    return whether it was created."""
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):  # a real write: permissions, read-only mounts
            pass
    except OSError as err:
        raise UserError(f"--out {str(out)!r} is not a writable folder ({err.strerror or err})") from None
    return created


def _check_keys(adata, args, extra_obs=()) -> None:
    if args.spatial_key not in adata.obsm:
        raise UserError(f"--spatial-key {args.spatial_key!r} is not in adata.obsm; keys are {list(adata.obsm)}")
    for option, column in (("--batch-key", args.batch_key), *extra_obs):
        if column is not None and column not in adata.obs.columns:
            raise UserError(f"{option} {column!r} is not a column of adata.obs; "
                            f"columns are {list(adata.obs.columns)}")


def _report(summary: dict) -> None:
    from stepgraph.train.distributed import is_main_process

    if not is_main_process():  # under torchrun, rank 0 reports
        return
    print(f"epochs run: {summary['epochs_run']}" + (" (early stopping)" if summary["early_stopped"] else ""))
    if summary["ari"] is not None:
        print(f"adjusted Rand index vs truth: {summary['ari']:.3f}")
    print(f"time: {summary['seconds']:.1f} s")
    print(f"outputs in {Path(summary['outputs']['adata']).parent}:")
    for name, path in summary["outputs"].items():
        if path:
            print(f"  {name}: {path}")


def _run_demo(args) -> int:
    from stepgraph.pipeline import PipelineConfig, run_pipeline
    from stepgraph.synthetic import synthetic_tissue

    out = Path(args.out)
    _check_out_name(out)
    _prepare_out(out)
    adata = synthetic_tissue(n_cells=args.n_cells, seed=args.seed)
    print(f"synthetic tissue: {adata.n_obs} cells x {adata.n_vars} genes, "
          f"{adata.obs['section'].nunique()} sections, {adata.obs['domain'].nunique()} domains")
    config = PipelineConfig(batch_key="section", truth_key="domain", epochs=args.epochs,
                            batch_size=1024, seed=args.seed, device=args.device, progress=not args.quiet)
    _report(run_pipeline(adata, out, config))
    return 0


def _run_train(args) -> int:
    from stepgraph.pipeline import PipelineConfig, run_pipeline
    from stepgraph.pipeline.stages import StageLog

    out = Path(args.out)
    _check_out_name(out, args.input)
    stages = StageLog()
    with stages.stage("read"):
        adata = _read_h5ad(args.input, backed=args.backed)
    _check_keys(adata, args, extra_obs=[("--truth-key", args.truth_key)])
    if args.layer is not None and args.layer not in adata.layers:
        raise UserError(f"--layer {args.layer!r} is not in adata.layers; layers are {list(adata.layers)}")
    if args.init_weights is not None and args.resume:
        raise UserError("--init-weights and --resume exclude each other: --resume continues a run with "
                        "its own weights, --init-weights starts a new one from given weights")
    if args.init_weights is not None and not Path(args.init_weights).is_file():
        raise UserError(f"--init-weights {args.init_weights!r} is not a file")
    resume_from = out / "checkpoints" / "last.pt"
    if args.resume and not resume_from.is_file():
        raise UserError(f"--resume: {str(resume_from)!r} does not exist; there is no run to continue in "
                        f"--out {str(out)!r} (run without --resume to start one)")
    config = PipelineConfig(
        spatial_key=args.spatial_key, batch_key=args.batch_key, layer_key=args.layer, method=args.method,
        n_neighbors=args.n_neighbors, radius=args.radius, graph_scale=args.graph_scale,
        n_top_genes=args.n_top_genes, n_pcs=args.n_pcs, conv=args.conv, cluster=args.cluster, refine=args.refine,
        epochs=args.epochs, batch_size=args.batch_size, fanout=args.fanout, lr=args.lr,
        split_rate=args.split_rate, patience=args.patience,
        n_domains=args.n_domains, truth_key=args.truth_key, seed=args.seed, device=args.device,
        progress=not args.quiet, init_weights=args.init_weights,
        resume_from=str(resume_from) if args.resume else None, trust_checkpoint=args.trust_checkpoint,
        backed=args.backed)
    created = _prepare_out(out)
    try:
        summary = run_pipeline(adata, out, config, stages=stages)
    except BaseException:
        if created:  # leave no empty folder behind a failed run
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    _report(summary)
    return 0


def _run_graph(args) -> int:
    from stepgraph.graph import spatial_graph

    output = Path(args.output) if args.output else Path(args.input).with_suffix(".graph.h5ad")
    if output.exists() and not args.overwrite:
        raise UserError(f"{str(output)!r} exists; pass --overwrite to replace it")
    adata = _read_h5ad(args.input)
    _check_keys(adata, args)
    spatial_graph(adata, method=args.method, n_neighbors=args.n_neighbors, radius=args.radius,
                  spatial_key=args.spatial_key, batch_key=args.batch_key, key_added=args.key_added)
    adata.write_h5ad(output)
    conn = adata.obsp[f"{args.key_added}_connectivities"]
    print(f"{conn.nnz} edges over {adata.n_obs} cells written to {output}")
    return 0


def _run_bench(args) -> int:
    if args.bench_command == "domains":
        return _run_bench_domains(args)
    from stepgraph.bench.suite import run_benchmarks

    only = [name.strip() for name in args.only.split(",") if name.strip()] if args.only else None
    report = run_benchmarks(args.size, args.out, bench_dir=args.bench_dir, threads=args.threads,
                            only=only, log=lambda line: print(line, flush=True))
    failed = [name for name, runs in report["benchmarks"].items()
              if any(run["status"] != "ok" for run in runs)]
    print(f"report: {Path(args.out) / 'bench.md'} ({report['seconds']:.0f} s)")
    if failed:
        print(f"stepgraph bench: error: failed: {', '.join(failed)} (see bench.md)", file=sys.stderr)
        return 1
    return 0


def _run_bench_domains(args) -> int:
    from stepgraph.bench.domains import (
        DOMAIN_METHODS,
        domain_table,
        run_domain_benchmark,
        write_results,
    )

    if not Path(args.input).is_file():
        raise UserError(f"input file {args.input!r} does not exist")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in DOMAIN_METHODS]
    if unknown or not methods:
        raise UserError(f"--methods {args.methods!r}: expected names among {list(DOMAIN_METHODS)}")
    try:
        result = run_domain_benchmark(args.input, args.truth_key, batch_key=args.batch_key,
                                      spatial_key=args.spatial_key, seeds=args.seeds, methods=methods,
                                      threads=args.threads,
                                      pipeline_options={"epochs": args.epochs} if args.epochs else None)
    except OSError as err:
        raise UserError(f"input file {args.input!r} is not a readable .h5ad file ({err})") from None
    json_path, md_path = write_results(result, args.out)
    print(domain_table(result))
    print(f"results: {json_path} and {md_path}")
    return 0


def _run_info(args) -> int:
    from stepgraph.bench.environment import info_lines

    print("\n".join(info_lines()))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``stepgraph`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    runner = {"demo": _run_demo, "train": _run_train, "graph": _run_graph,
              "bench": _run_bench, "info": _run_info}[args.command]
    try:
        return runner(args)
    except UserError as err:
        return _fail(args.command, err)
    except (ValueError, KeyError, TypeError, OSError, FloatingPointError) as err:
        # bad input detected deeper (coordinates with NaN, sections too small, a
        # checkpoint refused, a non-finite loss) or the system refusing a write (a full disk)
        if isinstance(err, KeyError) and err.args:
            err = err.args[0]
        elif isinstance(err, OSError) and err.strerror:
            err = err.strerror + (f": {err.filename!r}" if err.filename else "")
        return _fail(args.command, err)
    except KeyboardInterrupt:
        hint = ("; rerun with --resume to continue from the last completed epoch"
                if args.command == "train" else "")
        print(f"stepgraph {args.command}: interrupted{hint}", file=sys.stderr)
        return 130


def _fail(command: str, message) -> int:
    """Print ``message`` as one line on stderr; exit status 2."""
    print(f"stepgraph {command}: error: {' '.join(str(message).split())}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
