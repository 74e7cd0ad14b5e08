"""Command line: ``stepgraph demo | train | graph | bench`` (also ``python -m stepgraph``).

Errors in the user's input (a missing, empty, truncated or corrupt file, a
missing ``obsm`` key or ``obs`` column, bad coordinates, an ``--out`` that is a
file or cannot be written, a checkpoint that cannot be loaded safely, a full
disk) print one line to stderr and exit with status 2; nothing ever prints a
traceback for them, and the input file is never modified.

Every output is written atomically (a temporary file, fsync, rename), so a run
killed at any moment leaves, under each final name, either the previous file or
the complete new one; a link planted in ``--out`` is replaced, never written
through, and an output that would be the input file itself (the same file by
identity: a hard or symbolic link) is refused. Input files are checked before
they are read (:mod:`stepgraph.data.safe_read`): nothing outside them is read.
One run at a time holds ``--out`` (a lock). Ctrl-C exits with status 130 and
SIGTERM with 143, each with one line; a training run interrupted either way
saves ``checkpoints/interrupted.pt`` and continues with ``--resume``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import os
import re
import signal
import stat
import sys
import tempfile
import types
import typing
import warnings
from pathlib import Path

from stepgraph.data.safe_read import MAX_INFLATION
from stepgraph.pipeline.config import DOMAIN_KEY, EMBEDDING_KEY, PipelineConfig, cli_option
from stepgraph.pipeline.outputs import CHECKPOINTS, LOCK, OUTPUT_NAMES
from stepgraph.train.checkpointing import BEST_CHECKPOINT, INTERRUPTED_CHECKPOINT, LAST_CHECKPOINT

__all__ = ["main", "build_parser", "config_from_args"]

DEFAULT_DEMO_OUT = "stepgraph_out/demo"
DEFAULT_TRAIN_OUT = "stepgraph_out/train"


class UserError(Exception):
    """An error in the user's input: reported in one line, exit status 2."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that it ends as Ctrl-C does (the
    trainer saves ``interrupted.pt``); the exit status is 143.
    """


def _int_list(flag: str):
    """The parser of an option of comma-separated integers, each positive or -1."""

    def parse(text: str) -> list[int]:
        try:
            values = [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be integers separated by commas, got {text!r}") from None
        if not values or any(v < 1 and v != -1 for v in values):
            raise argparse.ArgumentTypeError(f"{flag} must be positive integers (or -1), got {text!r}")
        return values

    return parse


def _seeds(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds must be integers separated by commas, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"--seeds must name at least one seed, got {text!r}")
    return values


#: The settings that ``stepgraph bench domains`` gives every run itself: ``--set`` cannot change them.
BENCH_OWN_FIELDS = ("spatial_key", "batch_key", "n_domains", "truth_key", "seed", "progress", "resume_from")
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _pipeline_setting(text: str) -> tuple[str, object]:
    """One ``--set FIELD=VALUE`` of ``stepgraph bench domains``: a field of
    :class:`~stepgraph.pipeline.PipelineConfig` and its value, read as the field's type
    (``none`` for a field that may be ``None``; ``true``/``false``; integers separated by
    commas for a list; a word where a number or a word is allowed, as ``target_sum=median``).
    """
    import difflib

    name, sep, raw = (part.strip() for part in text.partition("="))
    known = {f.name: f for f in dataclasses.fields(PipelineConfig)}
    if not sep or name not in known:
        close = difflib.get_close_matches(name, list(known), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise argparse.ArgumentTypeError(
            f"--set expects FIELD=VALUE, FIELD a setting of PipelineConfig, got {text!r}{hint}"
        )
    if name in BENCH_OWN_FIELDS:
        raise argparse.ArgumentTypeError(f"--set {name}: the benchmark sets {name} for every run itself")
    hint = typing.get_type_hints(PipelineConfig)[name]
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    meta, kind = known[name].metadata, _value_type(hint)
    if raw.lower() == "none" and type(None) in allowed:
        return name, None
    wrong = argparse.ArgumentTypeError(f"--set {name}: expected {getattr(hint, '__name__', hint)}, got {raw!r}")
    value: object = raw
    if kind is bool:
        if raw.lower() not in _TRUE + _FALSE:
            raise wrong
        value = raw.lower() in _TRUE
    elif kind is list:
        value = _int_list(f"--set {name}")(raw)
    elif kind in (int, float):
        try:
            value = kind(raw)
        except ValueError:
            if str not in allowed:
                raise wrong from None
        if meta["positive"] and not isinstance(value, str) and not value > 0:
            raise argparse.ArgumentTypeError(f"--set {name}: expected a positive number, got {raw!r}")
    if meta["choices"] and value not in meta["choices"]:
        raise argparse.ArgumentTypeError(f"--set {name}: expected one of {list(meta['choices'])}, got {raw!r}")
    return name, value


def _defaults(func) -> dict:
    """The default of every parameter of ``func`` that has one: options mirror them, never retype them."""
    return {
        name: p.default
        for name, p in inspect.signature(func).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def _positive(kind: type, what: str):
    """An argparse ``type`` that parses ``kind`` and accepts finite values above zero only."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {what}, got {text!r}") from None
        if not value > 0 or value == float("inf"):
            raise argparse.ArgumentTypeError(f"expected a positive {what}, got {text!r}")
        return value

    return parse


_positive_int = _positive(int, "integer")
_positive_float = _positive(float, "number")


#: The options that ``stepgraph demo`` shares with ``stepgraph train``.
#: The pipeline settings that ``stepgraph bench domains`` passes to the stepgraph and untrained runs.
BENCH_PIPELINE_FIELDS = ("features", "neighborhood_k", "neighborhood_lambda")
RUN_FIELDS = ("epochs", "seed", "device", "threads", "progress")
#: The options of ``stepgraph graph``: ``train``'s graph options, with the defaults of
#: :func:`~stepgraph.graph.spatial_graph` (squidpy's ``knn``, not the pipeline's radius).
GRAPH_FIELDS = ("spatial_key", "batch_key", "method", "n_neighbors", "radius")


def _value_type(hint) -> type:
    """``int`` for ``int | None``, ``list`` for ``list[int]``, the type itself otherwise."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return typing.get_origin(hint) or hint


def _shown(value) -> str:
    if value is None:
        return "none"
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def _add_config_options(p: argparse.ArgumentParser, names=None, defaults=None, helps=None) -> None:
    """Add one option per field of :class:`~stepgraph.pipeline.PipelineConfig` that
    is on the command line (:func:`~stepgraph.pipeline.config.cli_option`), or
    per field of ``names``: its name, type, default, choices and help all come
    from the field; ``defaults`` and ``helps`` replace some of them by field name.
    A boolean field is a flag that turns its default around (``--quiet`` for
    ``progress``); its value is stored under the field's name.
    """
    hints, config = typing.get_type_hints(PipelineConfig), PipelineConfig()
    for f in dataclasses.fields(PipelineConfig):
        flag = cli_option(f)
        if flag is None or (names is not None and f.name not in names):
            continue
        meta, value = f.metadata, getattr(config, f.name)
        default = (defaults or {}).get(f.name, value)
        text = (helps or {}).get(f.name, meta["help"]).replace("%", "%%")
        kind = _value_type(hints[f.name])
        if kind is bool:
            p.add_argument(
                flag, dest=f.name, action="store_false" if default else "store_true", help=f"{text} (default: off)"
            )
            continue
        shown = (
            meta["shown"].format(**dataclasses.asdict(config))
            if meta["shown"] and default == value
            else _shown(default)
        )
        parse = {
            list: _int_list(flag),
            int: _positive_int if meta["positive"] else int,
            float: _positive_float if meta["positive"] else float,
        }.get(kind)
        choices = meta["choices"]
        metavar = meta["metavar"] or (None if choices else flag[2:].upper().replace("-", "_"))
        p.add_argument(
            flag,
            dest=f.name,
            type=parse,
            default=default,
            choices=choices,
            metavar=metavar,
            help=f"{text} (default: {shown.replace('%', '%%')})",
        )


def config_from_args(args: argparse.Namespace, **overrides) -> PipelineConfig:
    """The :class:`~stepgraph.pipeline.PipelineConfig` of the parsed ``args`` of
    ``stepgraph train`` or ``demo``: every field the command has an option for,
    then ``overrides``; the other fields keep their defaults.
    """
    values = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(PipelineConfig)
        if cli_option(f) and hasattr(args, f.name)
    }
    return PipelineConfig(**{**values, **overrides})


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``stepgraph`` command."""
    from stepgraph.graph import spatial_graph

    parser = argparse.ArgumentParser(
        prog="stepgraph", description="Train graph neural networks on spatial transcriptomics (AnnData + PyG)."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,train,graph,bench,info}")

    demo = sub.add_parser(
        "demo",
        help="run the whole pipeline on the embedded synthetic tissue",
        description="Generate the embedded synthetic tissue (two sections, known "
        "domains), build its graph, train the reference model with node sampling, "
        "validation and early stopping, cluster the embedding into domains and "
        "report the adjusted Rand index against the truth.",
    )
    from stepgraph.synthetic import synthetic_tissue

    demo.add_argument(
        "--n-cells",
        type=_positive_int,
        default=_defaults(synthetic_tissue)["n_cells"],
        help="cells (default: %(default)s)",
    )
    _add_config_options(demo, RUN_FIELDS, helps={"seed": "seed of tissue and training"})
    demo.add_argument("--out", default=DEFAULT_DEMO_OUT, help="output folder (default: %(default)s)")

    train = sub.add_parser(
        "train",
        help="the same pipeline on your .h5ad file",
        description="Build the spatial graph of INPUT, train the reference graph "
        f"autoencoder with node sampling, and write the embedding (obsm['{EMBEDDING_KEY}']), "
        f"domains (obs['{DOMAIN_KEY}']), checkpoint, loss history and figure to --out. "
        "INPUT itself is never modified.",
    )
    train.add_argument("input", help="input .h5ad file, AnnData .zarr store or SpatialData .zarr store (counts in X)")
    _add_config_options(train)
    _add_max_inflation(train)
    train.add_argument(
        "--resume",
        action="store_true",
        help=f"continue the run in --out from its {CHECKPOINTS}/{LAST_CHECKPOINT}, exactly where "
        "it stopped; pass the same options as that run and the total --epochs (default: off)",
    )
    train.add_argument("--out", default=DEFAULT_TRAIN_OUT, help="output folder (default: %(default)s)")

    graph = sub.add_parser(
        "graph",
        help="build the spatial graph and write it into an h5ad file",
        description="Write obsp['<key>_connectivities'], obsp['<key>_distances'] and "
        "uns['<key>_neighbors'] (squidpy's layout) for INPUT, to --output (a new file) "
        "or, with --overwrite, into INPUT itself.",
    )
    graph.add_argument("input", help="input .h5ad file")
    graph_defaults = _defaults(spatial_graph)
    _add_config_options(graph, GRAPH_FIELDS, defaults=graph_defaults)
    _add_max_inflation(graph)
    graph.add_argument(
        "--key-added", default=graph_defaults["key_added"], help="prefix of the written keys (default: %(default)s)"
    )
    graph.add_argument("--output", default=None, help="file to write (default: INPUT with suffix .graph.h5ad)")
    graph.add_argument("--overwrite", action="store_true", help="allow writing over an existing file, INPUT included")
    bench_sub = _add_bench_parser(sub)
    domains = bench_sub.add_parser(
        "domains",
        help="spatial domains: the pipeline vs baselines and other methods on annotated tissues",
        description="Run stepgraph's pipeline, its untrained input, the neighbour-mean and the non-spatial "
        "(PCA + k-means) baselines, and BANKSY and CellCharter where installed (the bench extra), on every "
        "INPUT with several seeds, each run in a fresh process. Each tissue gets a table of the ARI and NMI "
        "against its true domains (with several sections: the joint ARI, the mean ARI within each section "
        "and the sections' mixing score), time and peak memory (median [min, max] over seeds); then one "
        "line per method: the tissues it leads on and its mean rank. Keys come from a panel.json manifest "
        "in the folder, else from the options, else from the file (obs['domain'], obs['section']).",
    )
    domains.add_argument("input", nargs="+", help="annotated .h5ad files or folders of them (raw counts in X)")
    domains.add_argument("--truth-key", default=None, help="obs column of the true domains (default: domain)")
    domains.add_argument(
        "--batch-key", default=None, help="obs column of the sections, where a file has it (default: section)"
    )
    domains.add_argument("--spatial-key", default=None, help="obsm key of the coordinates (default: spatial)")
    domains.add_argument(
        "--manifest",
        default=None,
        metavar="JSON",
        help='keys per file: {"file.h5ad": {"truth_key": ..., "batch_key": ...}} (default: the '
        "panel.json of each input folder)",
    )
    from stepgraph.bench.domains import DOMAIN_METHODS, run_panel_benchmark

    seeds = list(_defaults(run_panel_benchmark)["seeds"])
    domains.add_argument(
        "--seeds", type=_seeds, default=seeds, help=f"seeds, comma separated (default: {','.join(map(str, seeds))})"
    )
    domains.add_argument(
        "--methods",
        default=",".join(DOMAIN_METHODS),
        help="methods, comma separated (default: %(default)s; those not installed are skipped)",
    )
    domains.add_argument(
        "--jobs",
        type=_positive_int,
        default=None,
        help="runs at a time, each in a fresh process with --threads threads (default: the usable "
        "cores divided by --threads; 1 for timings free of each other's load)",
    )
    _add_config_options(domains, BENCH_PIPELINE_FIELDS)  # the pipeline's input, for stepgraph and untrained
    domains.add_argument(
        "--epochs", type=_positive_int, default=None, help="maximum epochs of the pipeline (default: the pipeline's)"
    )
    domains.add_argument(
        "--set",
        dest="settings",
        type=_pipeline_setting,
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="any other setting of the pipeline (a field of PipelineConfig) for the stepgraph and untrained "
        "runs, e.g. --set target_sum=median; repeat it for several (default: the pipeline's defaults)",
    )
    domains.add_argument(
        "--out",
        default="benchmarks/results/domains",
        help="results written to OUT.json and OUT.md (default: %(default)s)",
    )
    sub.add_parser(
        "info",
        help="versions, threads, sampler backend and torch-scatter status",
        description="Print what a bug report needs: the versions of stepgraph and its "
        "dependencies, torch's threads, the neighbour sampler backend that 'auto' picks, and "
        "whether torch-scatter is loaded or, if not, why.",
    )
    return parser


def _add_max_inflation(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-inflation",
        type=_positive_float,
        default=MAX_INFLATION,
        metavar="FACTOR",
        help="refuse an input whose datasets declare more than FACTOR times the file's size "
        "(a compression bomb), before reading it (default: %(default)s)",
    )


def _add_bench_parser(sub) -> argparse._SubParsersAction:
    """``stepgraph bench [--size ...]``; returns its (optional) sub-commands, so that
    ``stepgraph bench <name>`` commands can be added beside the benchmark suite.
    """
    from stepgraph.bench.suite import SIZES

    bench = sub.add_parser(
        "bench",
        help="run every benchmark in benchmarks/ and write one report",
        description="Run every script of benchmarks/ at one size, each in its own "
        "process, and write bench.json (environment and results), bench.md (a "
        "report with the anchors: squidpy, torch-sparse, a bare loop) and bench.png "
        "(time and memory against size) to --out.",
    )
    from stepgraph.bench.suite import run_benchmarks

    bench_defaults = _defaults(run_benchmarks)
    bench.add_argument(
        "--size",
        default=bench_defaults["size"],
        choices=list(SIZES),
        help="small: under 5 minutes; medium; large: the documented 1M-cell figures; "
        "tiny: seconds, for tests (default: %(default)s)",
    )
    bench.add_argument("--out", default=bench_defaults["out_dir"], help="output folder (default: %(default)s)")
    bench.add_argument(
        "--threads",
        type=_positive_int,
        default=bench_defaults["threads"],
        help="torch threads of every benchmark (default: %(default)s)",
    )
    bench.add_argument(
        "--only", default=None, help="comma-separated benchmarks to run (default: all), e.g. graph_build,end_to_end"
    )
    bench.add_argument(
        "--bench-dir", default=None, help="the benchmarks/ folder (default: the one installed with stepgraph)"
    )
    return bench.add_subparsers(dest="bench_command", required=False, metavar="")


def _read_h5ad(
    path: str,
    backed: bool = False,
    table_key: str | None = None,
    spatial_key: str = "spatial",
    max_inflation: float = MAX_INFLATION,
):
    from stepgraph.data.readers import read_anndata, store_kind
    from stepgraph.data.safe_read import UnsafeFileError, check_h5ad, check_zarr

    file = Path(path)
    if not file.exists():
        raise UserError(f"input file {path!r} does not exist")
    kind = store_kind(file)  # .h5ad file, AnnData .zarr or SpatialData .zarr store
    if kind is None:
        raise UserError(f"input {path!r} is a folder, not an .h5ad file nor an AnnData or SpatialData .zarr store")
    if kind == "h5ad" and file.stat().st_size == 0:
        raise UserError(f"input file {path!r} is empty (0 bytes), not an .h5ad file")
    what = "a readable .h5ad file" if kind == "h5ad" else f"a readable {kind} store"
    try:  # before anything is read: nothing outside the file, nothing inflated, sound sparse matrices
        (check_h5ad if kind == "h5ad" else check_zarr)(file, max_inflation=max_inflation)
        return read_anndata(file, backed=backed, table_key=table_key, spatial_key=spatial_key)
    except ImportError as err:  # a SpatialData store without the spatialdata package
        raise UserError(str(err)) from None
    except UnsafeFileError as err:
        raise UserError(f"input file {path!r} refused: {err}") from None
    except Exception as err:  # h5py, zarr and anndata raise many types for a truncated or corrupt file
        reason = " ".join(str(err).split())[:200]
        raise UserError(f"input file {path!r} is not {what} ({type(err).__name__}: {reason})") from None


def _check_out_name(out: Path, input_path: str | None = None) -> None:
    """``--out`` must name a folder (or nothing yet), never the input file."""
    if input_path is not None and _same_file(out, input_path):
        raise UserError(f"--out {str(out)!r} is the input file itself; choose a folder for the outputs")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} is an existing file, not a folder")


def _same_file(a: str | Path, b: str | Path) -> bool:
    """Whether ``a`` and ``b`` are one file by identity (device and inode: a hard
    link, or a symbolic link to it, counts).
    """
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def _check_targets(out: Path, input_path: str | None, reads_checkpoints: bool) -> None:
    """Refuse when a file the run writes in ``out`` is the input by identity, when
    ``out/checkpoints`` is a link (its files would be written outside ``out``), or
    when a checkpoint the run reads is a link (it would be read from outside).
    """
    folder = out / CHECKPOINTS
    if folder.is_symlink():
        raise UserError(
            f"--out {str(out)!r}: {str(folder)!r} is a symbolic link; checkpoints are written only "
            "inside --out (remove the link)"
        )
    targets = [out / name for name in (*OUTPUT_NAMES, LOCK)]
    targets += [folder / name for name in (BEST_CHECKPOINT, LAST_CHECKPOINT, INTERRUPTED_CHECKPOINT)]
    for target in targets:
        if input_path is not None and _same_file(target, input_path):
            raise UserError(
                f"--out {str(out)!r} would overwrite the input file: {str(target)!r} is the input "
                "itself (the same file, or a link to it); choose another folder or remove it"
            )
        if reads_checkpoints and target.parent == folder and target.is_symlink():
            raise UserError(
                f"--resume: {str(target)!r} is a symbolic link; checkpoints are read only from files inside --out"
            )


@contextlib.contextmanager
def _locked(out: Path):
    """Hold an exclusive lock on ``out`` (``fcntl.flock`` on ``out/.stepgraph.lock``)
    for the block; a folder that another run holds is refused, naming its process.
    Under ``torchrun`` rank 0 takes it for the job.
    """
    if int(os.environ.get("RANK", "0") or 0) != 0:
        yield
        return
    import fcntl

    path = out / LOCK
    try:  # O_NOFOLLOW: a link planted as the lock file is not followed
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as err:
        raise UserError(
            f"--out {str(out)!r}: cannot open its lock file {str(path)!r} ({err.strerror or err})"
        ) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:  # a hard link to a file of the user's
            raise UserError(
                f"--out {str(out)!r}: its lock file {str(path)!r} is not a plain file of its own "
                "(a link to another file?); remove it"
            )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise UserError(
                f"--out {str(out)!r} is in use by another stepgraph run (process {holder}); "
                "wait for it to end or choose another folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _remove_temporaries(out)
        yield
    finally:
        os.close(fd)  # releases the lock


def _remove_temporaries(out: Path) -> None:
    """Remove the temporary files that a killed run left beside its outputs and
    checkpoints (``.<name>.<random>.tmp<suffix>``); the final files are untouched.
    """
    names = {*OUTPUT_NAMES, BEST_CHECKPOINT, LAST_CHECKPOINT, INTERRUPTED_CHECKPOINT}
    pattern = re.compile(r"\.(?P<name>.+)\.[A-Za-z0-9_]+\.tmp(\.\w+)?")
    for folder in (out, out / CHECKPOINTS):
        if not folder.is_dir() or folder.is_symlink():
            continue
        for entry in folder.iterdir():
            match = pattern.fullmatch(entry.name)
            if match and match["name"] in names and not entry.is_dir():
                with contextlib.suppress(OSError):
                    entry.unlink()


def _check_device(text: str) -> None:
    """``--device`` must name a device this machine has; checked before any work."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {text!r} is not a device; expected cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return
    if device.type != "cuda":
        raise UserError(f"--device {text!r} is not supported; expected cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        why = "this torch is built without CUDA" if torch.version.cuda is None else "no GPU is visible"
        raise UserError(f"--device {text!r}: CUDA is not available on this machine ({why}); use --device cpu")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(
            f"--device {text!r}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0"
        )


def _check_counts(adata, layer_key: str | None) -> None:
    """The pipeline reads counts: negative values are refused, naming how many cells hold them."""
    from stepgraph.data.safe_read import negative_rows

    matrix = adata.X if layer_key is None else adata.layers[layer_key]
    if matrix is None:
        return
    found = negative_rows(matrix)
    if found is not None:
        source = "adata.X" if layer_key is None else f"adata.layers[{layer_key!r}]"
        n_rows, first = found
        raise UserError(
            f"{source} holds negative values in {n_rows} of {adata.n_obs} cells (the first is obs "
            f"{adata.obs_names[first]!r}); stepgraph train reads raw counts, which are never "
            "negative (pass --layer to name the layer of counts)"
        )


def _prepare_out(out: Path) -> bool:
    """Create ``--out`` when missing and check that files can be written in it;
    return whether it was created.
    """
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
            raise UserError(f"{option} {column!r} is not a column of adata.obs; columns are {list(adata.obs.columns)}")


def _report(summary: dict) -> None:
    from stepgraph.train.distributed import is_main_process

    if not is_main_process():  # under torchrun, rank 0 reports
        return
    print(f"epochs run: {summary['epochs_run']}" + (" (early stopping)" if summary["early_stopped"] else ""))
    if summary["ari"] is not None:
        print(f"adjusted Rand index vs truth: {summary['ari']:.3f}")
    integration = summary.get("integration")
    if integration:  # several sections: how they mix, the domains of each, a split
        print(f"section mixing in the embedding: {integration['mixing']:.3f} (1: perfectly mixed, 0: apart)")
        for section, counts in integration["domain_counts"].items():
            found = {domain: n for domain, n in counts.items() if n}
            print(f"  {section}: {len(found)} domains, " + ", ".join(f"{d} {n}" for d, n in found.items()))
        if integration["warning"]:
            print(f"warning: {integration['warning']}")
    print(f"time: {summary['seconds']:.1f} s")
    print(f"outputs in {Path(summary['outputs']['adata']).parent}:")
    for name, path in summary["outputs"].items():
        if path:
            print(f"  {name}: {path}")


def _run_demo(args) -> int:
    from stepgraph.pipeline import run_pipeline
    from stepgraph.synthetic import synthetic_tissue

    _check_device(args.device)
    out = Path(args.out)
    _check_out_name(out)
    created = _prepare_out(out)
    with _holding(out, None, False, created):
        adata = synthetic_tissue(n_cells=args.n_cells, seed=args.seed)
        print(
            f"synthetic tissue: {adata.n_obs} cells x {adata.n_vars} genes, "
            f"{adata.obs['section'].nunique()} sections, {adata.obs['domain'].nunique()} domains"
        )
        config = config_from_args(args, batch_key="section", truth_key="domain")
        summary = run_pipeline(adata, out, config)
    _report(summary)
    return 0


@contextlib.contextmanager
def _holding(out: Path, input_path: str | None, reads_checkpoints: bool, created: bool):
    """The run's hold on ``out``: its lock, then the checks of what it writes
    (:func:`_check_targets`); a folder this run created is removed again when the
    run fails before writing anything in it.
    """
    try:
        with _locked(out):
            _check_targets(out, input_path, reads_checkpoints)
            yield
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                (out / LOCK).unlink()
                out.rmdir()
        raise


def _run_train(args) -> int:
    from stepgraph.pipeline import run_pipeline
    from stepgraph.pipeline.integration import IntegrationWarning
    from stepgraph.pipeline.stages import StageLog

    _check_device(args.device)
    out = Path(args.out)
    _check_out_name(out, args.input)
    _check_targets(out, args.input, reads_checkpoints=False)  # again under the lock, before any write
    stages = StageLog()
    with stages.stage("read"):
        adata = _read_h5ad(
            args.input,
            backed=args.backed,
            table_key=args.table_key,
            spatial_key=args.spatial_key,
            max_inflation=args.max_inflation,
        )
    _check_keys(adata, args, extra_obs=[("--truth-key", args.truth_key)])
    if args.layer_key is not None and args.layer_key not in adata.layers:
        raise UserError(f"--layer {args.layer_key!r} is not in adata.layers; layers are {list(adata.layers)}")
    _check_counts(adata, args.layer_key)
    if args.init_weights is not None and args.resume:
        raise UserError(
            "--init-weights and --resume exclude each other: --resume continues a run with "
            "its own weights, --init-weights starts a new one from given weights"
        )
    if args.init_weights is not None and not Path(args.init_weights).is_file():
        raise UserError(f"--init-weights {args.init_weights!r} is not a file")
    resume_from = out / CHECKPOINTS / LAST_CHECKPOINT
    if args.resume and not resume_from.is_file():
        raise UserError(
            f"--resume: {str(resume_from)!r} does not exist; there is no run to continue in "
            f"--out {str(out)!r} (run without --resume to start one)"
        )
    config = config_from_args(args, resume_from=str(resume_from) if args.resume else None)
    created = _prepare_out(out)
    with _holding(out, args.input, args.resume, created), warnings.catch_warnings():
        warnings.simplefilter("ignore", IntegrationWarning)  # the report below prints the split warning
        summary = run_pipeline(adata, out, config, stages=stages)
    _report(summary)
    return 0


def _run_graph(args) -> int:
    from stepgraph.graph import spatial_graph
    from stepgraph.pipeline.outputs import write_output

    output = Path(args.output) if args.output else Path(args.input).with_suffix(".graph.h5ad")
    if _same_file(output, args.input) and (
        output.is_symlink() or os.path.realpath(output) != os.path.realpath(args.input)
    ):
        raise UserError(
            f"--output {str(output)!r} is another name (a hard or symbolic link) for the input "
            f"{args.input!r}; to write into the input pass --output {args.input!r} --overwrite, "
            "or choose a new file"
        )
    if os.path.lexists(output) and not args.overwrite:
        raise UserError(f"{str(output)!r} exists; pass --overwrite to replace it")
    if output.is_dir():
        raise UserError(f"--output {str(output)!r} is a folder, not a file")
    adata = _read_h5ad(args.input, max_inflation=args.max_inflation)
    _check_keys(adata, args)
    spatial_graph(
        adata,
        method=args.method,
        n_neighbors=args.n_neighbors,
        radius=args.radius,
        spatial_key=args.spatial_key,
        batch_key=args.batch_key,
        key_added=args.key_added,
    )
    write_output(output, adata.write_h5ad)  # atomic: a killed run leaves the old file, INPUT included
    conn = adata.obsp[f"{args.key_added}_connectivities"]
    print(f"{conn.nnz} edges over {adata.n_obs} cells written to {output}")
    return 0


def _run_bench(args) -> int:
    if args.bench_command == "domains":
        return _run_bench_domains(args)
    from stepgraph.bench.suite import run_benchmarks

    only = [name.strip() for name in args.only.split(",") if name.strip()] if args.only else None
    report = run_benchmarks(
        args.size,
        args.out,
        bench_dir=args.bench_dir,
        threads=args.threads,
        only=only,
        log=lambda line: print(line, flush=True),
    )
    failed = [name for name, runs in report["benchmarks"].items() if any(run["status"] != "ok" for run in runs)]
    print(f"report: {Path(args.out) / 'bench.md'} ({report['seconds']:.0f} s)")
    if failed:
        print(f"stepgraph bench: error: failed: {', '.join(failed)} (see bench.md)", file=sys.stderr)
        return 1
    return 0


def _run_bench_domains(args) -> int:
    from stepgraph.bench.domains import (
        DOMAIN_METHODS,
        panel_report,
        run_panel_benchmark,
        write_results,
    )
    from stepgraph.bench.environment import usable_cores

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in DOMAIN_METHODS]
    if unknown or not methods:
        raise UserError(f"--methods {args.methods!r}: expected names among {list(DOMAIN_METHODS)}")
    try:
        result = run_panel_benchmark(
            args.input,
            truth_key=args.truth_key,
            batch_key=args.batch_key,
            spatial_key=args.spatial_key,
            manifest=args.manifest,
            seeds=args.seeds,
            methods=methods,
            threads=args.threads,
            jobs=args.jobs or max(1, usable_cores() // args.threads),
            pipeline_options={name: getattr(args, name) for name in BENCH_PIPELINE_FIELDS}
            | ({"epochs": args.epochs} if args.epochs else {})
            | dict(args.settings),
            log=lambda line: print(line, flush=True),
        )
    except ValueError as err:
        raise UserError(str(err)) from None
    json_path, md_path = write_results(result, args.out)
    print(panel_report(result))
    print(f"results: {json_path} and {md_path}")
    return 0


def _run_info(args) -> int:
    from stepgraph.bench.environment import info_lines

    print("\n".join(info_lines()))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``stepgraph`` command; returns the exit status.

    2 for an error in the user's input (one line on stderr), 130 for Ctrl-C and
    143 for SIGTERM, at any moment (one line; a training run saves
    ``interrupted.pt`` first).
    """
    command, args, received = None, None, []
    previous = _handle_signals(received)
    try:
        args = build_parser().parse_args(argv)
        command = args.command
        runner = {"demo": _run_demo, "train": _run_train, "graph": _run_graph, "bench": _run_bench, "info": _run_info}[
            args.command
        ]
        if args.command in ("demo", "train"):  # before any torch work: see stepgraph.train.threads
            from stepgraph.train.threads import apply_thread_policy

            apply_thread_policy(args.threads)
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
        except RuntimeError as err:
            if not _lost_rank(err):  # a bug, not the input: its traceback helps
                raise
            detail = " ".join(str(err).split())[:300]
            print(
                f"stepgraph {args.command}: error: another rank stopped answering within --dist-timeout "
                f"({type(err).__name__}: {detail})",
                file=sys.stderr,
            )
            return 1
    except BaseException as err:
        # a signal, or an import that it interrupted (an extension module may report an ImportError)
        if isinstance(err, SystemExit) or not (received or isinstance(err, KeyboardInterrupt)):
            raise
        sigterm = isinstance(err, Terminated) or received[:1] == [signal.SIGTERM]
        what = "terminated (SIGTERM)" if sigterm else "interrupted"
        resumable = command == "train" and (Path(args.out) / CHECKPOINTS / LAST_CHECKPOINT).is_file()
        hint = "; rerun with --resume to continue from the last completed epoch" if resumable else ""
        print(f"stepgraph{' ' + command if command else ''}: {what}{hint}", file=sys.stderr)
        return 143 if sigterm else 130
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _lost_rank(err: RuntimeError) -> bool:
    """Whether ``err`` says that another rank stopped answering (a collective timed
    out, or its connection closed) under ``torchrun``.
    """
    import torch.distributed as dist

    if type(err).__module__ == "torch.distributed":  # DistBackendError, DistNetworkError...
        return True
    text = str(err)
    return (
        dist.is_available()
        and dist.is_initialized()
        and ("Timed out" in text or "timed out" in text or "Connection closed by peer" in text)
    )


def _handle_signals(received: list) -> dict:
    """Ctrl-C raises ``KeyboardInterrupt`` and SIGTERM :class:`Terminated` (one of
    them), so that SIGTERM ends a run as Ctrl-C does; each signal is recorded in
    ``received``. Returns the handlers to restore. Only the main thread can set
    handlers: elsewhere, none are set.
    """
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}

    def on_signal(signum, frame):
        received.append(signum)
        raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt

    previous = {signal.SIGTERM: signal.getsignal(signal.SIGTERM), signal.SIGINT: signal.getsignal(signal.SIGINT)}
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return previous


def _fail(command: str, message) -> int:
    """Print ``message`` as one line on stderr; exit status 2."""
    print(f"stepgraph {command}: error: {' '.join(str(message).split())}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
