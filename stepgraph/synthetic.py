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

from stepgraph._validation import check_int, check_number

__all__ = ["synthetic_tissue"]


def synthetic_tissue(
    n_cells: int = 20_000,
    n_sections: int = 2,
    n_domains: int = 5,
    n_genes: int = 200,
    n_cell_types: int = 8,
    seed: int = 0,
    section_effect: float = 0.0,
) -> ad.AnnData:
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
    section_effect
        Strength of a sample effect between sections, as between patients
        (0: none, the sections differ only in their layout; 1: strong). Each
        section's log expression is scaled by its own factor
        ``exp(0.3 * section_effect * N(0, 1))`` and every gene shifted by its
        own ``section_effect * N(0, 1)``; its depth by
        ``exp(0.5 * section_effect * N(0, 1))``; and its domains get their own
        widths (proportional to ``exp(section_effect * N(0, 1))``), so the
        sections hold different mixtures of domains. Drawn from a stream of
        their own: the tissue with ``section_effect=0`` is the same as without.

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
    n_cells = check_int(n_cells, "n_cells", minimum=2)
    n_sections = check_int(n_sections, "n_sections", minimum=1)
    n_domains = check_int(n_domains, "n_domains", minimum=2)
    n_genes = check_int(n_genes, "n_genes", minimum=2 * n_domains)
    n_cell_types = check_int(n_cell_types, "n_cell_types", minimum=1)
    effect = check_number(section_effect, "section_effect", minimum=0)
    effect_rng = np.random.default_rng([seed, 20])  # its own stream: effect 0 leaves the tissue as it was
    rng = np.random.default_rng(seed)
    section = np.repeat(np.arange(n_sections), -(-n_cells // n_sections))[:n_cells]
    side = np.sqrt(np.bincount(section)) * 10.0  # ~10 µm between neighbours
    xy = rng.uniform(0.0, 1.0, size=(n_cells, 2)) * side[section, None]

    # wavy layers; each section has its own phase, so sections differ
    phase = rng.uniform(0, 2 * np.pi, n_sections)[section]
    u = xy[:, 1] / side[section] + 0.06 * np.sin(2 * np.pi * xy[:, 0] / side[section] * 1.5 + phase)
    domain = np.clip((u * n_domains).astype(np.int64), 0, n_domains - 1)
    if effect > 0:  # each section its own domain widths: a different mixture of domains
        widths = np.exp(effect * effect_rng.standard_normal((n_sections, n_domains)))
        edges = np.cumsum(widths / widths.sum(axis=1, keepdims=True), axis=1)[:, :-1]
        domain = (u[:, None] > edges[section]).sum(axis=1)

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
    if effect > 0:  # per section: log expression scaled, every gene shifted, depth changed
        scale = np.exp(0.3 * effect * effect_rng.standard_normal(n_sections))
        shift = effect * effect_rng.standard_normal((n_sections, n_genes))
        rate = np.exp(np.log(rate) * scale[section, None] + shift[section])
        library = library * np.exp(0.5 * effect * effect_rng.standard_normal(n_sections))[section]
    rate *= (library / rate.sum(axis=1))[:, None]
    counts = rng.poisson(rate).astype(np.float32)

    obs = pd.DataFrame(
        {
            "section": pd.Categorical([f"section{s}" for s in section]),
            "domain": pd.Categorical(
                [f"domain{d}" for d in domain], categories=[f"domain{d}" for d in range(n_domains)]
            ),
            "cell_type": pd.Categorical([f"type{t}" for t in cell_type]),
        },
        index=pd.Index([f"cell{i}" for i in range(n_cells)]),
    )
    var = pd.DataFrame(index=pd.Index([f"gene{g}" for g in range(n_genes)]))
    adata = ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=var)
    adata.obsm["spatial"] = xy
    adata.uns["synthetic_tissue"] = {
        "seed": seed,
        "n_domains": n_domains,
        "section_effect": effect,
        "marker_genes": markers.tolist(),
    }
    return adata
