"""Several sections, one set of domains: correction of the embedding, domains
per section, and what the integration did (mixing score, domains per section).

A joint embedding of several sections should carry domains, not samples. The
pipeline standardises each section's genes on their own (see
:class:`~stepgraph.pipeline.preprocess.ExpressionFeatures`); on request it
corrects the embedding with Harmony (:func:`harmonize`, through `harmonypy
<https://github.com/slowkow/harmonypy>`_) or clusters each section on its own
(:func:`cluster_per_section`). After clustering it reports how well the
sections mix in the embedding (:func:`section_mixing`), how many cells of each
domain every section holds, and which domains lie in one section only
(:func:`integration_report`).
"""

from __future__ import annotations

import numpy as np

from stepgraph.pipeline.domains import cluster_domains

__all__ = [
    "IntegrationWarning",
    "harmonize",
    "section_mixing",
    "domain_counts",
    "split_domains",
    "integration_report",
    "cluster_per_section",
    "embedding_2d",
]


class IntegrationWarning(UserWarning):
    """The joint domains of several sections may follow the sections rather than the tissue."""


def _section_codes(sections, n_obs: int, name: str = "sections") -> np.ndarray:
    codes = np.asarray(sections)
    if codes.shape != (n_obs,) or codes.dtype.kind not in "iu" or (n_obs and codes.min() < 0):
        raise ValueError(
            f"{name} must hold one non-negative integer code per row ({n_obs}), "
            f"got an array of shape {codes.shape} and dtype {codes.dtype}"
        )
    return codes.astype(np.int64, copy=False)


def harmonize(
    embedding: np.ndarray,
    sections: np.ndarray,
    seed: int = 0,
    theta: float = 2.0,
    max_iter: int = 20,
    threads: int | None = None,
) -> np.ndarray:
    """The embedding with the sections' offsets removed by Harmony (Korsunsky
    et al. 2019), through :func:`harmonypy.run_harmony`.

    Harmony clusters the cells softly with a penalty on clusters that hold
    few sections (``theta``), and removes from each cell the offset of its
    section within its clusters: cells of one domain are moved together
    wherever they came from. Where the sections hold different mixtures of
    domains, the penalty can also pull unlike cells together; the pipeline
    therefore corrects with Harmony only when asked (``harmony=True``).

    Parameters
    ----------
    embedding
        ``(n_obs, n_dims)`` array, e.g. the model's embedding.
    sections
        Section code of every row (``int``, from
        :func:`~stepgraph.graph.spatial.section_codes`).
    seed
        Seed of Harmony's clustering.
    theta
        Harmony's diversity penalty (its default, 2).
    max_iter
        Harmony's rounds at most (it stops earlier when converged).
    threads
        Threads of Harmony's C++ core; ``None`` as many as torch uses.

    Returns
    -------
    numpy.ndarray
        float32 array of the shape of ``embedding``; one section returns a copy.

    Raises
    ------
    ImportError
        If harmonypy is not installed (``pip install harmonypy``).
    """
    x = np.asarray(embedding, dtype=np.float64)
    codes = _section_codes(sections, x.shape[0])
    if x.ndim != 2 or not np.isfinite(x).all():
        raise ValueError(f"embedding must be a finite 2-D array, got shape {x.shape}")
    if np.unique(codes).size < 2:
        return x.astype(np.float32)
    try:
        import harmonypy
    except ImportError:
        raise ImportError(
            "the correction of several sections needs harmonypy: pip install harmonypy "
            "(or pip install 'stepgraph[integration]')"
        ) from None
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    import logging

    level = logging.getLogger("harmonypy").level
    logging.getLogger("harmonypy").setLevel(logging.WARNING)
    try:
        result = harmonypy.run_harmony(
            x,
            {"section": codes},
            "section",
            theta=theta,
            max_iter_harmony=max_iter,
            random_state=seed,
            verbose=False,
            ncores=int(threads),
        )
    finally:
        logging.getLogger("harmonypy").setLevel(level)
    corrected = np.asarray(result.Z_corr)
    if corrected.shape != x.shape:
        corrected = corrected.T
    return corrected.astype(np.float32)


def section_mixing(
    embedding: np.ndarray,
    sections: np.ndarray,
    n_neighbors: int = 30,
    max_cells: int = 20_000,
    max_candidates: int = 200_000,
    seed: int = 0,
) -> float:
    """How well the sections mix in ``embedding``: the normalised entropy of
    the sections among each cell's nearest neighbours, averaged over cells.

    For a cell, the sections of its ``n_neighbors`` nearest neighbours (in
    the embedding, the cell excluded) give proportions ``p_s``; their entropy
    ``-sum p_s log p_s`` is divided by that of the sections' shares of all
    cells, the entropy of perfectly mixed neighbourhoods. 1 is perfect
    mixing, 0 neighbourhoods of one section each. Sections that hold
    different mixtures of domains mix less than 1 even when every domain is
    aligned, so the score compares runs on one tissue, not across tissues.

    Parameters
    ----------
    embedding
        ``(n_obs, n_dims)`` array.
    sections
        Section code of every row (``int``).
    n_neighbors
        Neighbours per cell (as iLISI's perplexity of 30).
    max_cells
        At most this many cells, drawn at random (seeded), are scored.
    max_candidates
        Their neighbours are searched among at most this many cells, drawn at
        random (seeded; the scored cells among them): a uniform sample keeps
        each section's share, and the search stays seconds at millions of cells.
    seed
        Seed of the cells drawn.

    Returns
    -------
    float
        In ``[0, 1]`` (up to sampling); ``nan`` with a single section.
    """
    from sklearn.neighbors import NearestNeighbors

    x = np.asarray(embedding, dtype=np.float32)
    codes = _section_codes(sections, x.shape[0])
    n_obs = x.shape[0]
    share = np.bincount(codes) / max(n_obs, 1)
    share = share[share > 0]
    if share.size < 2:
        return float("nan")
    k = int(min(n_neighbors, n_obs - 1))
    rng = np.random.default_rng(seed)
    pool = np.arange(n_obs)
    if n_obs > max_candidates:
        pool = np.sort(rng.choice(n_obs, max_candidates, replace=False))
    x, codes = x[pool], codes[pool]
    rows = np.arange(len(pool))
    if len(pool) > max_cells:
        rows = np.sort(rng.choice(len(pool), max_cells, replace=False))
    index = NearestNeighbors(n_neighbors=k + 1).fit(x)
    neighbours = index.kneighbors(x[rows], return_distance=False)
    # drop the cell itself (or, among exact duplicates, one of them) from its neighbours
    is_self = neighbours == rows[:, None]
    keep = np.where(is_self.any(axis=1, keepdims=True), ~is_self, np.arange(k + 1) < k)
    neighbours = neighbours[keep].reshape(len(rows), k)
    n_sections = int(codes.max()) + 1
    counts = np.zeros((len(rows), n_sections))
    np.add.at(counts, (np.repeat(np.arange(len(rows)), k), codes[neighbours].ravel()), 1.0)
    p = counts / k
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
    return float(entropy.mean() / -(share * np.log(share)).sum())


def domain_counts(domains, sections, section_names=None) -> dict:
    """Cells of every domain in every section: ``{section: {domain: count}}``.

    Parameters
    ----------
    domains
        One domain label per cell (a :class:`pandas.Categorical` keeps its
        categories' order, zero counts included).
    sections
        One section label per cell, or section codes with ``section_names``.
    section_names
        Names of the section codes, when ``sections`` holds codes.
    """
    import pandas as pd

    sec = np.asarray(sections)
    if section_names is not None:
        sec = np.asarray([str(s) for s in section_names], dtype=object)[sec]
    table = pd.crosstab(pd.Series(np.asarray(sec, dtype=str), name="section"), pd.Categorical(domains), dropna=False)
    return {str(s): {str(d): int(n) for d, n in row.items()} for s, row in table.iterrows()}


def split_domains(counts: dict, share: float = 0.95) -> dict:
    """The domains that lie in one section only, of several: ``{domain: section}``.

    A domain counts as split by section when at least ``share`` of its cells
    are in one section while there are several sections. Joint domains that
    follow the sections instead of the tissue show up this way; so does a
    structure that only one section holds, which the user can tell apart.

    Parameters
    ----------
    counts
        ``{section: {domain: count}}``, as :func:`domain_counts` returns.
    share
        Fraction of a domain's cells in one section above which it counts as
        found in that section only.
    """
    if len(counts) < 2:
        return {}
    names = list(counts)
    domains = {d for row in counts.values() for d in row}
    out = {}
    for domain in sorted(domains):  # a loop over domains, not cells
        per = np.array([counts[s].get(domain, 0) for s in names], dtype=np.float64)
        if per.sum() > 0 and per.max() >= share * per.sum():
            out[domain] = names[int(per.argmax())]
    return out


def integration_report(
    embedding: np.ndarray, domains, sections: np.ndarray, section_names, seed: int = 0, per_section: bool = False
) -> dict:
    """What the integration of several sections did, for ``summary.json``.

    Parameters
    ----------
    embedding
        The embedding that was clustered, ``(n_obs, n_dims)``.
    domains
        The domain of every cell.
    sections
        Section code of every cell (``int``).
    section_names
        The name of each section code.
    seed
        Seed of the cells the mixing score draws.
    per_section
        The domains were found within each section on its own
        (:func:`cluster_per_section`): none is reported as split.

    Returns
    -------
    dict
        ``mixing`` (:func:`section_mixing` of ``embedding``), ``domain_counts``
        (:func:`domain_counts`), ``split_domains`` (:func:`split_domains`)
        and ``warning``: a sentence when some domains lie in one section
        only, else ``None``.
    """
    counts = domain_counts(domains, sections, section_names)
    split = {} if per_section else split_domains(counts)
    warning = None
    if split:
        where = ", ".join(f"{d} ({s})" for d, s in split.items())
        warning = (
            f"{len(split)} of {len(set(np.asarray(domains)))} domains lie in one section only: {where}. "
            "The domains may follow the sections rather than the tissue; look at the mixing score "
            "and the embedding figure, or ask for domains per section (--domains-per-section)."
        )
    return {
        "mixing": section_mixing(embedding, sections, seed=seed),
        "domain_counts": counts,
        "split_domains": split,
        "warning": warning,
    }


def cluster_per_section(embedding: np.ndarray, sections: np.ndarray, n_domains: int, **options) -> np.ndarray:
    """Domains found within each section on its own.

    Each section's rows of ``embedding`` are clustered into ``n_domains``
    (fewer when the section has fewer cells) with
    :func:`~stepgraph.pipeline.domains.cluster_domains` and ``options``.
    Labels of different sections are unrelated: code ``c`` of section ``s``
    is returned as ``s * n_domains + c``.

    Returns
    -------
    numpy.ndarray
        int64 code per row.
    """
    x = np.asarray(embedding)
    codes = _section_codes(sections, x.shape[0])
    out = np.empty(x.shape[0], dtype=np.int64)
    for code in np.unique(codes):  # a loop over sections
        rows = np.flatnonzero(codes == code)
        k = int(min(n_domains, len(rows)))
        out[rows] = code * n_domains + cluster_domains(x[rows], k, **options)
    return out


def embedding_2d(embedding: np.ndarray, seed: int = 0, max_cells: int = 50_000) -> tuple[np.ndarray, np.ndarray, str]:
    """Two coordinates per cell to draw the embedding: UMAP (umap-learn) when
    installed, else its first two principal components.

    At most ``max_cells`` cells, drawn at random (seeded), are placed, so the
    figure stays seconds on a tissue of millions of cells.

    Returns
    -------
    rows : numpy.ndarray
        The cells placed (indices).
    xy : numpy.ndarray
        ``(len(rows), 2)`` coordinates.
    method : str
        ``"UMAP"`` or ``"PCA"``.
    """
    x = np.asarray(embedding, dtype=np.float32)
    rows = np.arange(x.shape[0])
    if x.shape[0] > max_cells:
        rows = np.sort(np.random.default_rng(seed).choice(x.shape[0], max_cells, replace=False))
    x = x[rows]
    try:
        import umap
    except ImportError:
        from sklearn.decomposition import PCA

        return rows, PCA(2, random_state=seed).fit_transform(x), "PCA"
    return rows, umap.UMAP(random_state=seed, n_jobs=1).fit_transform(x), "UMAP"
