"""The embedded default tissue: a synthetic, deterministic spatial dataset with
known spatial domains.

Each section is a square of cells at random positions (about 10 µm apart) cut
into ``n_domains`` wavy, layered domains, like cortical layers. Every domain
has its own mix of cell types and a few marker genes of its own, so a cell's
own expression is a noisy hint of its domain and its neighbourhood a strong
one: a model that pools neighbours (a GNN) recovers the domains far better than
one that sees single cells. Counts are Poisson, stored as a sparse CSR matrix.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = ["synthetic_tissue"]


def synthetic_tissue(n_cells: int = 20_000, n_sections: int = 2, n_domains: int = 5,
                     n_genes: int = 200, n_cell_types: int = 8, seed: int = 0) -> ad.AnnData:
    """Generate the default synthetic tissue.

    Parameters
    ----------
    n_cells
        Total number of cells, split evenly over the sections.
    n_sections
        Number of tissue sections; ``obs["section"]`` holds ``"section0"``...
    n_domains
        Number of spatial domains (layers); ``obs["domain"]`` holds the truth.
    n_genes
        Number of genes.
    n_cell_types
        Number of cell types mixed within domains (``obs["cell_type"]``).
    seed
        Seed: the same arguments give the same AnnData.

    Returns
    -------
    anndata.AnnData
        Counts in ``X`` (float32 CSR), coordinates in ``obsm["spatial"]``
        (µm), ``obs`` with ``section``, ``domain`` and ``cell_type``
        (categoricals).

    Examples
    --------
    >>> adata = synthetic_tissue(n_cells=1000, seed=1)
    >>> adata.shape
    (1000, 200)
    """
    for name, value, low in (("n_cells", n_cells, 2), ("n_sections", n_sections, 1),
                             ("n_domains", n_domains, 2), ("n_genes", n_genes, 2 * n_domains),
                             ("n_cell_types", n_cell_types, 1)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {name}={value!r}")
    rng = np.random.default_rng(seed)
    section = np.repeat(np.arange(n_sections), -(-n_cells // n_sections))[:n_cells]
    side = np.sqrt(np.bincount(section)) * 10.0  # ~10 µm between neighbours
    xy = rng.uniform(0.0, 1.0, size=(n_cells, 2)) * side[section, None]

    # wavy layers; each section has its own phase, so sections differ
    phase = rng.uniform(0, 2 * np.pi, n_sections)[section]
    u = xy[:, 1] / side[section] + 0.06 * np.sin(2 * np.pi * xy[:, 0] / side[section] * 1.5 + phase)
    domain = np.clip((u * n_domains).astype(np.int64), 0, n_domains - 1)

    # cell types: each domain prefers a few types; expression: type program + domain markers
    type_mix = rng.dirichlet(np.full(n_cell_types, 0.3), size=n_domains)
    cum = type_mix.cumsum(axis=1)[domain]
    cell_type = np.minimum((rng.uniform(size=(n_cells, 1)) > cum).sum(axis=1), n_cell_types - 1)
    base = rng.gamma(0.6, 1.0, size=n_genes) * 0.5
    type_program = base * rng.lognormal(0.0, 0.8, size=(n_cell_types, n_genes))
    domain_shift = np.ones((n_domains, n_genes))
    n_markers = max(2, n_genes // (4 * n_domains))
    markers = rng.permutation(n_genes)[: n_markers * n_domains].reshape(n_domains, n_markers)
    for d in range(n_domains):
        domain_shift[d, markers[d]] = 3.0
    library = rng.lognormal(np.log(300.0), 0.3, size=n_cells)
    rate = type_program[cell_type] * domain_shift[domain]
    rate *= (library / rate.sum(axis=1))[:, None]
    counts = rng.poisson(rate).astype(np.float32)

    obs = pd.DataFrame(
        {
            "section": pd.Categorical([f"section{s}" for s in section]),
            "domain": pd.Categorical([f"domain{d}" for d in domain],
                                     categories=[f"domain{d}" for d in range(n_domains)]),
            "cell_type": pd.Categorical([f"type{t}" for t in cell_type]),
        },
        index=pd.Index([f"cell{i}" for i in range(n_cells)]),
    )
    var = pd.DataFrame(index=pd.Index([f"gene{g}" for g in range(n_genes)]))
    adata = ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=var)
    adata.obsm["spatial"] = xy
    adata.uns["synthetic_tissue"] = {"seed": seed, "n_domains": n_domains,
                                     "marker_genes": markers.tolist()}
    return adata
