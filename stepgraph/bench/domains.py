"""Spatial-domain benchmark: stepgraph's pipeline against training-free
baselines and other methods, on one annotated ``.h5ad`` or a panel of them,
side by side, over several seeds.

With several sections (``batch_key``) each run is scored three ways: the ARI
of the joint domains over all cells, the ARI within each section (and their
mean), and how well the sections mix in the embedding that was clustered
(:func:`~stepgraph.pipeline.integration.section_mixing`).

Each (tissue, method, seed) runs in a fresh process (``spawn``), so its peak
memory is its own: the reported peak is the resident set of a process that
imported stepgraph, read the file and ran only that method. Time is the
method's wall time, reading excluded. Methods whose package is not installed
(BANKSY, CellCharter: the ``bench`` extra) are skipped with a line saying so.

Used by ``stepgraph bench domains`` and ``benchmarks/domains.py``.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from stepgraph.bench.environment import environment

__all__ = [
    "DOMAIN_METHODS",
    "MANIFEST",
    "run_domain_benchmark",
    "run_panel_benchmark",
    "panel_tissues",
    "domain_table",
    "panel_report",
    "missing_method_packages",
]

#: Method name -> what it is, as printed in the tables.
DOMAIN_METHODS = {
    "stepgraph": "stepgraph train (default pipeline)",
    "untrained": "the pipeline without its model (its input features, same clustering)",
    "neighbor_mean": "neighbour-mean baseline (6-NN, 2 hops, PCA 30, k-means)",
    "pca_kmeans": "non-spatial baseline (PCA 30, k-means)",
    "banksy": "BANKSY (pybanksy; lambda 0.8, 15 neighbours, AGF, PCA 20, Gaussian mixture)",
    "cellcharter": "CellCharter (PCA 10, 3 rings of Delaunay neighbours, its Gaussian mixture)",
}

#: Methods of other packages -> the module they import and the distribution that provides it.
EXTERNAL_METHODS = {"banksy": ("banksy", "pybanksy"), "cellcharter": ("cellcharter", "cellcharter")}

#: The manifest a panel folder may hold: ``{"<file>.h5ad": {"truth_key": ..., "batch_key": ...,
#: "spatial_key": ...}, ...}``; see :func:`panel_tissues`.
MANIFEST = "panel.json"

#: Where a panel file keeps its keys when neither a manifest nor an option names them
#: (the layout of ``shared/data/real``: ``obs["domain"]``, ``obs["section"]``).
FILE_KEYS = {"truth_key": "domain", "batch_key": "section", "spatial_key": "spatial"}


def missing_method_packages(methods) -> dict[str, str]:
    """The methods of ``methods`` whose package is not importable, each with a line saying
    what to install.
    """
    from importlib.util import find_spec

    missing = {}
    for method in methods:
        if method in EXTERNAL_METHODS:
            module, distribution = EXTERNAL_METHODS[method]
            if find_spec(module) is None:
                missing[method] = (
                    f"{method}: skipped ({distribution} is not installed; "
                    f"pip install '{distribution}' or 'stepgraph[bench]')"
                )
    return missing


def _labels_and_embedding(
    method: str, adata, n_domains: int, seed: int, batch_key: str | None, spatial_key: str, pipeline_options: dict
):
    """Run ``method`` on ``adata``: its domain codes, the embedding it clustered and, for the
    pipeline, the mixing score it reported (else ``None``).
    """
    import tempfile

    from stepgraph.pipeline import (
        DOMAIN_KEY,
        EMBEDDING_KEY,
        PipelineConfig,
        baselines,
        run_pipeline,
    )

    if method == "stepgraph":
        with tempfile.TemporaryDirectory() as out:
            config = PipelineConfig(
                spatial_key=spatial_key,
                batch_key=batch_key,
                n_domains=n_domains,
                seed=seed,
                progress=False,
                **pipeline_options,
            )
            summary = run_pipeline(adata, out, config)
        mixing = (summary.get("integration") or {}).get("mixing")  # of the embedding it clustered
        return adata.obs[DOMAIN_KEY].cat.codes.to_numpy(), adata.obsm[EMBEDDING_KEY], mixing
    if method == "untrained":
        config = PipelineConfig(spatial_key=spatial_key, batch_key=batch_key, **pipeline_options)
        return (
            *baselines.untrained_pipeline_domains(adata, n_domains, seed=seed, config=config, return_embedding=True),
            None,
        )
    if method == "neighbor_mean":
        return (
            *baselines.neighbor_mean_domains(
                adata, n_domains, seed=seed, spatial_key=spatial_key, batch_key=batch_key, return_embedding=True
            ),
            None,
        )
    if method == "pca_kmeans":
        return (*baselines.pca_kmeans_domains(adata, n_domains, seed=seed, return_embedding=True), None)
    from stepgraph.bench import external

    run = {"banksy": external.banksy_domains, "cellcharter": external.cellcharter_domains}[method]
    return (*run(adata, n_domains, seed=seed, spatial_key=spatial_key, batch_key=batch_key), None)


def _one_run(
    path: str,
    method: str,
    seed: int,
    truth_key: str,
    batch_key: str | None,
    spatial_key: str,
    threads: int,
    pipeline_options: dict,
) -> dict:
    """Run one method once in this (fresh) process; return its scores."""
    import anndata as ad
    import torch
    from threadpoolctl import threadpool_limits

    from stepgraph.graph.spatial import section_codes
    from stepgraph.pipeline.domains import adjusted_rand_index, normalized_mutual_info
    from stepgraph.pipeline.integration import section_mixing
    from stepgraph.pipeline.stages import peak_rss_mb

    torch.set_num_threads(threads)
    adata = ad.read_h5ad(path)
    truth = adata.obs[truth_key]
    known = truth.notna().to_numpy()
    n_domains = int(truth[known].nunique())
    sections, names = section_codes(adata, batch_key)
    with threadpool_limits(threads):
        start = time.perf_counter()
        labels, embedding, mixing = _labels_and_embedding(
            method, adata, n_domains, seed, batch_key, spatial_key, pipeline_options
        )
        seconds = time.perf_counter() - start
    labels = np.asarray(labels)
    record = {
        "method": method,
        "seed": seed,
        "seconds": seconds,
        "ari": adjusted_rand_index(truth[known], labels[known]),
        "nmi": normalized_mutual_info(truth[known], labels[known]),
        "peak_rss_mib": peak_rss_mb(resettable=False),
    }
    if len(names) > 1:
        each = [
            adjusted_rand_index(truth[part], labels[part])
            for part in ((sections == code) & known for code in range(len(names)))
        ]  # per section
        record.update(
            ari_sections=dict(zip(map(str, names), each, strict=True)),
            ari_per_section=float(np.mean(each)),
            mixing=mixing if mixing is not None else section_mixing(embedding, sections, seed=seed),
        )
    return record


def _summary(runs: list[dict], key: str) -> dict:
    values = np.array([r[key] for r in runs], dtype=np.float64)
    return {"median": float(np.median(values)), "min": float(values.min()), "max": float(values.max())}


def _check_methods(methods) -> list[str]:
    methods = list(DOMAIN_METHODS) if methods is None else list(methods)
    unknown = [m for m in methods if m not in DOMAIN_METHODS]
    if unknown or not methods:
        raise ValueError(f"methods must be among {list(DOMAIN_METHODS)}, got {unknown or methods}")
    return methods


def _check_keys(path, truth_key: str, batch_key: str | None, spatial_key: str) -> tuple[int, int]:
    """The shape of ``path``; a clear error when one of the keys is not in it."""
    import anndata as ad

    adata = ad.read_h5ad(path, backed="r")
    try:
        for option, key, where in (
            ("truth_key", truth_key, adata.obs.columns),
            ("batch_key", batch_key, adata.obs.columns),
            ("spatial_key", spatial_key, list(adata.obsm.keys())),
        ):
            if key is not None and key not in where:
                raise ValueError(f"{option}={key!r} is not in {Path(path).name}; available: {list(where)}")
        return tuple(adata.shape)
    finally:
        adata.file.close()


def _run_all(jobs_list: list[tuple], jobs: int) -> list[dict]:
    """Run every ``_one_run`` argument tuple of ``jobs_list``, each in a fresh process, at most ``jobs``
    at a time; the records in the order of ``jobs_list``.
    """
    from concurrent.futures import ThreadPoolExecutor

    context = get_context("spawn")

    def fresh(args: tuple) -> dict:  # a process of its own for every run: its peak memory is its own
        with ProcessPoolExecutor(1, mp_context=context) as pool:
            return pool.submit(_one_run, *args).result()

    with ThreadPoolExecutor(max(1, jobs)) as threads:
        return list(threads.map(fresh, jobs_list))


def _tissue_result(
    path, shape, truth_key, batch_key, runs: list[dict], methods, seeds, threads, pipeline_options
) -> dict:
    keys = ("ari", "nmi", "seconds", "peak_rss_mib") + (("ari_per_section", "mixing") if "mixing" in runs[0] else ())
    summary = {m: {k: _summary([r for r in runs if r["method"] == m], k) for k in keys} for m in methods}
    return {
        "file": str(path),
        "shape": list(shape),
        "truth_key": truth_key,
        "batch_key": batch_key,
        "seeds": seeds,
        "threads": threads,
        "pipeline_options": pipeline_options or {},
        "runs": runs,
        "summary": summary,
    }


def run_domain_benchmark(
    path: str | Path,
    truth_key: str,
    batch_key: str | None = None,
    spatial_key: str = "spatial",
    seeds=(0, 1, 2),
    methods=None,
    threads: int = 1,
    pipeline_options: dict | None = None,
    jobs: int = 1,
) -> dict:
    """Score methods of :data:`DOMAIN_METHODS` on one annotated file.

    Parameters
    ----------
    path
        An ``.h5ad`` with raw counts in ``X`` and coordinates in ``obsm[spatial_key]``.
    truth_key
        ``obs`` column of the true domains; cells where it is missing are
        left out of the scores; its number of categories is the number of
        clusters asked of every method.
    batch_key
        ``obs`` column of the sections, passed to the spatial methods.
    spatial_key
        ``obsm`` key of the coordinates.
    seeds
        One run per seed and method.
    methods
        Names from :data:`DOMAIN_METHODS` (default: all that are installed). A
        method named here whose package is not installed raises.
    threads
        Torch and BLAS threads of each run.
    pipeline_options
        Extra :class:`~stepgraph.pipeline.PipelineConfig` fields for the
        stepgraph and untrained runs (e.g. ``{"epochs": 20}``).
    jobs
        Runs at a time, each in its own process (``threads`` each).

    Returns
    -------
    dict
        ``runs`` (one record per method and seed), ``summary`` (per method:
        median, min and max of ARI, NMI, seconds and peak RSS; with several
        sections also of ``ari_per_section``, the mean over sections of the
        ARI within each, and ``mixing``, the sections' mixing in the
        clustered embedding), the inputs and the machine. With several
        sections, ``ari`` is the ARI of the joint domains over all cells and
        each run also holds ``ari_sections`` (ARI per section).
    """
    asked = methods
    methods = _check_methods(methods)
    missing = missing_method_packages(methods)
    if missing and asked is not None:
        raise ValueError("; ".join(missing.values()))
    methods = [m for m in methods if m not in missing]
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must hold at least one seed")
    shape = _check_keys(path, truth_key, batch_key, spatial_key)
    runs = _run_all(
        [
            (str(path), m, s, truth_key, batch_key, spatial_key, threads, pipeline_options or {})
            for m in methods
            for s in seeds
        ],
        jobs,
    )
    result = _tissue_result(path, shape, truth_key, batch_key, runs, methods, seeds, threads, pipeline_options)
    result["machine"] = environment(threads)
    return result


def _read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"manifest {str(path)!r} is not a readable JSON file ({err})") from None
    if not isinstance(manifest, dict) or not all(isinstance(v, dict) for v in manifest.values()):
        raise ValueError(
            f"manifest {str(path)!r} must map file names to their keys, e.g. "
            '{"tissue.h5ad": {"truth_key": "domain", "batch_key": "section"}}'
        )
    allowed = set(FILE_KEYS)
    for name, keys in manifest.items():
        if set(keys) - allowed:
            raise ValueError(
                f"manifest {str(path)!r}: {name!r} has unknown keys {sorted(set(keys) - allowed)}; "
                f"expected among {sorted(allowed)}"
            )
    return manifest


def panel_tissues(
    inputs,
    truth_key: str | None = None,
    batch_key: str | None = None,
    spatial_key: str | None = None,
    manifest: str | Path | None = None,
) -> list[dict]:
    """The tissues of a panel and the keys of each.

    Parameters
    ----------
    inputs
        ``.h5ad`` files and folders (a folder gives its ``*.h5ad`` files, sorted by name).
    truth_key, batch_key, spatial_key
        Keys for every file, where the manifest does not name them.
    manifest
        A JSON file mapping file names to their keys (see :data:`MANIFEST`); by
        default the ``panel.json`` of each input folder, when there is one.

    Returns
    -------
    list of dict
        One entry per file: ``path``, ``truth_key``, ``batch_key``, ``spatial_key``.
        A key comes from the manifest, else from the argument, else from the
        file's own layout (:data:`FILE_KEYS`: ``obs["domain"]``, and
        ``obs["section"]`` when the file has that column). An explicit
        ``batch_key`` that a file lacks leaves that file as one section.

    Raises
    ------
    ValueError
        If an input does not exist, a folder holds no ``.h5ad``, or a file's
        truth column cannot be found.
    """
    import anndata as ad

    inputs = [Path(p) for p in ([inputs] if isinstance(inputs, (str, Path)) else inputs)]
    if not inputs:
        raise ValueError("inputs must name at least one .h5ad file or folder")
    entries: list[tuple[Path, dict]] = []
    for item in inputs:
        if item.is_dir():
            files = sorted(item.glob("*.h5ad"))
            if not files:
                raise ValueError(f"input folder {str(item)!r} holds no .h5ad file")
            local = manifest or (item / MANIFEST if (item / MANIFEST).is_file() else None)
            table = _read_manifest(Path(local)) if local else {}
            entries += [(f, table.get(f.name, {})) for f in files]
        elif item.is_file():
            table = _read_manifest(Path(manifest)) if manifest else {}
            entries.append((item, table.get(item.name, {})))
        else:
            raise ValueError(f"input {str(item)!r} does not exist")
    tissues = []
    for path, keys in entries:
        try:
            adata = ad.read_h5ad(path, backed="r")
        except OSError as err:
            raise ValueError(f"input file {str(path)!r} is not a readable .h5ad file ({err})") from None
        try:
            columns = set(adata.obs.columns)
        finally:
            adata.file.close()
        truth = keys.get("truth_key") or truth_key or FILE_KEYS["truth_key"]
        if truth not in columns:
            raise ValueError(
                f"{path.name}: truth column {truth!r} is not in obs (columns: {sorted(columns)}); "
                f"pass --truth-key or name it in a {MANIFEST} manifest"
            )
        batch = keys.get("batch_key") or batch_key or FILE_KEYS["batch_key"]
        tissues.append(
            {
                "path": str(path),
                "truth_key": truth,
                "batch_key": batch if batch in columns else None,
                "spatial_key": keys.get("spatial_key") or spatial_key or FILE_KEYS["spatial_key"],
            }
        )
    return tissues


def run_panel_benchmark(
    inputs,
    truth_key: str | None = None,
    batch_key: str | None = None,
    spatial_key: str | None = None,
    manifest=None,
    seeds=(0, 1, 2),
    methods=None,
    threads: int = 1,
    jobs: int = 1,
    pipeline_options: dict | None = None,
    log=None,
) -> dict:
    """Score methods of :data:`DOMAIN_METHODS` on every tissue of a panel.

    Parameters
    ----------
    inputs, truth_key, batch_key, spatial_key, manifest
        The tissues and their keys, as :func:`panel_tissues` reads them.
    seeds, threads, pipeline_options
        As for :func:`run_domain_benchmark`.
    methods
        Names from :data:`DOMAIN_METHODS` (default: all); those whose package
        is not installed are skipped, and ``skipped`` says why.
    jobs
        Runs at a time, each in its own fresh process.
    log
        Called with a line as each tissue starts and ends (e.g. ``print``).

    Returns
    -------
    dict
        ``tissues`` (one :func:`run_domain_benchmark` result per file),
        ``ranking`` (per method: its mean rank and the contests it leads;
        see :func:`rank_methods`), ``skipped`` (a line per method left out),
        ``seconds`` (wall time of the whole panel) and the machine.
    """
    methods = _check_methods(methods)
    skipped = missing_method_packages(methods)
    methods = [m for m in methods if m not in skipped]
    if not methods:
        raise ValueError("none of the methods can run here: " + "; ".join(skipped.values()))
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must hold at least one seed")
    log = log or (lambda line: None)
    for line in skipped.values():
        log(line)
    tissues = panel_tissues(inputs, truth_key, batch_key, spatial_key, manifest)
    shapes = [_check_keys(t["path"], t["truth_key"], t["batch_key"], t["spatial_key"]) for t in tissues]
    start = time.perf_counter()
    jobs_list = [
        (t["path"], m, s, t["truth_key"], t["batch_key"], t["spatial_key"], threads, pipeline_options or {})
        for t in tissues
        for m in methods
        for s in seeds
    ]
    log(
        f"{len(tissues)} tissue(s) x {len(methods)} method(s) x {len(seeds)} seed(s): {len(jobs_list)} runs, "
        f"{jobs} at a time"
    )
    runs = _run_all(jobs_list, jobs)
    per_tissue = len(methods) * len(seeds)
    results = [
        _tissue_result(
            t["path"],
            shape,
            t["truth_key"],
            t["batch_key"],
            runs[i * per_tissue : (i + 1) * per_tissue],
            methods,
            seeds,
            threads,
            pipeline_options,
        )
        for i, (t, shape) in enumerate(zip(tissues, shapes, strict=True))
    ]
    return {
        "tissues": results,
        "ranking": rank_methods(results),
        "skipped": list(skipped.values()),
        "seeds": seeds,
        "threads": threads,
        "jobs": jobs,
        "seconds": time.perf_counter() - start,
        "machine": environment(threads),
    }


def _contests(result: dict) -> dict[str, dict]:
    """The scores a tissue ranks methods by: the (joint) ARI, and with several sections also the
    per-section ARI; each a median over seeds per method.
    """
    name = Path(result["file"]).stem
    summary = result["summary"]
    if "ari_per_section" in next(iter(summary.values())):
        return {
            f"{name} (joint)": {m: s["ari"]["median"] for m, s in summary.items()},
            f"{name} (per section)": {m: s["ari_per_section"]["median"] for m, s in summary.items()},
        }
    return {name: {m: s["ari"]["median"] for m, s in summary.items()}}


def rank_methods(results: list[dict]) -> dict:
    """Per method, over the contests of every tissue (its ARI; with several sections the joint and
    the per-section ARI, each a median over seeds): ``mean_rank`` (1 is best; ties share the best
    rank), ``leads`` (the contests it wins) and ``margin`` (per contest, its score minus the best
    other method's).
    """
    ranking: dict[str, dict] = {}
    for result in results:
        for contest, scores in _contests(result).items():
            for method, score in scores.items():
                entry = ranking.setdefault(method, {"ranks": [], "leads": [], "margin": {}})
                others = [v for m, v in scores.items() if m != method]
                entry["ranks"].append(1 + sum(v > score for v in others))
                best_other = max(others) if others else score
                entry["margin"][contest] = score - best_other
                if score >= best_other:
                    entry["leads"].append(contest)
    return {
        m: {"mean_rank": float(np.mean(e["ranks"])), "leads": e["leads"], "margin": e["margin"]}
        for m, e in ranking.items()
    }


def domain_table(result: dict) -> str:
    """A tissue's summary as a markdown table (median [min, max] over seeds)."""

    def cell(stats, fmt):
        return f"{stats['median']:{fmt}} [{stats['min']:{fmt}}, {stats['max']:{fmt}}]"

    sections = "mixing" in next(iter(result["summary"].values()))
    if sections:  # several sections: the joint ARI, the ARI within each section, the mixing
        lines = [
            "| method | joint ARI | per-section ARI | mixing | NMI | time (s) | peak RSS (MiB) |",
            "|---|---|---|---|---|---|---|",
        ]
    else:
        lines = ["| method | ARI | NMI | time (s) | peak RSS (MiB) |", "|---|---|---|---|---|"]
    for method, stats in result["summary"].items():
        extra = f" {cell(stats['ari_per_section'], '.3f')} | {cell(stats['mixing'], '.3f')} |" if sections else ""
        lines.append(
            f"| {DOMAIN_METHODS[method]} | {cell(stats['ari'], '.3f')} |{extra} "
            f"{cell(stats['nmi'], '.3f')} | {cell(stats['seconds'], '.1f')} "
            f"| {stats['peak_rss_mib']['median']:.0f} |"
        )
    return "\n".join(lines)


def panel_report(result: dict) -> str:
    """The panel as markdown: one table per tissue, then one line per method (its mean rank and
    the contests it leads), best rank first.
    """
    parts = []
    for line in result.get("skipped", []):
        parts.append(f"- {line}")
    for tissue in result["tissues"]:
        several = "mixing" in next(iter(tissue["summary"].values()))
        sections = f", sections from obs[{tissue['batch_key']!r}]" if several else ", one section"
        parts.append(
            f"\n### {Path(tissue['file']).name}\n\n{tissue['shape'][0]:,} cells x "
            f"{tissue['shape'][1]:,} genes, truth obs[{tissue['truth_key']!r}]{sections}\n\n"
            f"{domain_table(tissue)}"
        )
    parts.append("\n### Summary (median ARI over seeds; rank 1 is best)\n")
    for method, entry in sorted(result["ranking"].items(), key=lambda item: item[1]["mean_rank"]):
        leads = ", ".join(entry["leads"]) or "none"
        parts.append(f"- **{method}**: mean rank {entry['mean_rank']:.2f}; leads on {leads}")
    return "\n".join(parts).strip() + "\n"


def write_results(result: dict, out: str | Path) -> tuple[Path, Path]:
    """Write ``result`` (of one tissue or of a panel) as ``<out>.json`` and its tables as ``<out>.md``;
    return both paths.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out.with_suffix(".json"), out.with_suffix(".md")
    json_path.write_text(json.dumps(result, indent=1))
    if "tissues" in result:
        md = (
            f"{len(result['tissues'])} tissue(s), seeds {result['seeds']}, {result['threads']} thread(s) per run, "
            f"{result['jobs']} run(s) at a time, {result['seconds'] / 60:.1f} min\n\n{panel_report(result)}"
        )
    else:
        md = (
            f"{Path(result['file']).name}, seeds {result['seeds']}, {result['threads']} thread(s) per run\n\n"
            f"{domain_table(result)}\n"
        )
    md_path.write_text(md)
    return json_path, md_path
