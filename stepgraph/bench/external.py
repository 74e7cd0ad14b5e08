"""Other methods' spatial domains, run through their maintained packages (the ``bench`` extra).

- :func:`banksy_domains`: BANKSY (``pybanksy``) with its tutorials' settings for domains;
- :func:`cellcharter_domains`: CellCharter (``cellcharter``) with its tutorials' settings.

Each works on a private copy of the data (the caller's AnnData is not changed), builds its
neighbours within each section, is seeded, keeps the packages' printing off the terminal, and
returns the domain code of every cell and the embedding it clustered. Both are asked for
exactly ``n_domains`` domains, as every method of ``stepgraph bench domains`` is.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

import numpy as np
import scipy.sparse as sp

__all__ = ["banksy_domains", "cellcharter_domains"]


@contextlib.contextmanager
def _quiet():
    """The packages' prints, progress bars, logs and warnings kept off the terminal."""
    for name in ("lightning", "lightning.pytorch", "pytorch_lightning", "torchgmm", "squidpy"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        warnings.simplefilter("ignore")
        yield


def _copy(adata, spatial_key: str, batch_key: str | None, section_column: str):
    """A new AnnData with the counts (CSR float64), the 2-D coordinates in ``obsm["spatial"]`` and the
    sections as a categorical ``obs[section_column]`` (one section when ``batch_key`` is ``None``).
    """
    import anndata as ad
    import pandas as pd

    counts = sp.csr_matrix(adata.X, dtype=np.float64)
    sections = adata.obs[batch_key].astype(str).to_numpy() if batch_key else np.full(adata.n_obs, "section")
    obs = pd.DataFrame({section_column: pd.Categorical(sections)}, index=[str(i) for i in range(adata.n_obs)])
    copy = ad.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=[str(v) for v in adata.var_names]))
    copy.obsm["spatial"] = np.asarray(adata.obsm[spatial_key], dtype=np.float64)[:, :2].copy()
    return copy


def _variable_genes(adata, n_top: int = 2000):
    """``adata`` restricted to scanpy's ``seurat`` highly variable genes of its log-normalised counts
    when it has more than ``n_top`` genes (both packages' tutorials), else ``adata`` itself.
    """
    import scanpy as sc

    if adata.n_vars <= n_top:
        return adata
    logged = sc.pp.log1p(sc.pp.normalize_total(adata, inplace=False)["X"])
    scored = sc.pp.highly_variable_genes(sc.AnnData(logged), flavor="seurat", n_top_genes=n_top, inplace=False)
    return adata[:, scored["highly_variable"].to_numpy()].copy()


def banksy_domains(
    adata,
    n_domains: int,
    seed: int = 0,
    spatial_key: str = "spatial",
    batch_key: str | None = None,
    lam: float = 0.8,
    k_geom: int = 15,
    max_m: int = 1,
    pca_dims: int = 20,
):
    """BANKSY's domains (``pybanksy``), with its domain tutorials' settings.

    Counts are scaled to the median library size of each section (no log, as
    BANKSY's tutorials), 2,000 variable genes are kept from a transcriptome,
    and BANKSY's matrix (``lam`` 0.8 for domains, ``k_geom`` 15 neighbours,
    the azimuthal Gabor filter ``max_m=1``, Gaussian weights) is built per
    section, z-scored within it; the sections are stacked and reduced to
    ``pca_dims`` principal components. The tutorials cluster with mclust's
    ``EEE`` (R) or a Leiden resolution; here the components are clustered by
    the Gaussian mixture with one shared covariance that the pipeline uses
    (mclust's ``EEE``: :func:`~stepgraph.pipeline.domains.cluster_domains`),
    so that exactly ``n_domains`` come out, the same way for every seed.

    Returns
    -------
    tuple
        The domain code of every cell (int64) and the BANKSY components.
    """
    import scanpy as sc
    from sklearn.decomposition import PCA

    from stepgraph.pipeline.domains import cluster_domains

    with _quiet():
        from banksy.embed_banksy import generate_banksy_matrix
        from banksy.initialize_banksy import initialize_banksy

        data = _variable_genes(_copy(adata, spatial_key, batch_key, "section"))
        matrix = np.zeros((data.n_obs, data.n_vars * (max_m + 2)))
        for name in data.obs["section"].cat.categories:
            rows = np.flatnonzero((data.obs["section"] == name).to_numpy())
            part = data[rows].copy()
            sc.pp.normalize_total(part)
            part.X = sp.csr_matrix(part.X)
            part.obs["x"], part.obs["y"] = part.obsm["spatial"][:, 0], part.obsm["spatial"][:, 1]
            banksy = initialize_banksy(
                part,
                ("x", "y", "spatial"),
                k_geom,
                nbr_weight_decay="scaled_gaussian",
                max_m=max_m,
                plt_edge_hist=False,
                plt_nbr_weights=False,
                plt_agf_angles=False,
                plt_theta=False,
            )
            _, block = generate_banksy_matrix(part, banksy, [lam], max_m, verbose=False)
            values = np.asarray(block.X, dtype=np.float64)
            matrix[rows] = np.where(np.isfinite(values), values, 0.0)
        embedding = PCA(
            min(pca_dims, matrix.shape[1], matrix.shape[0] - 1), svd_solver="covariance_eigh", random_state=seed
        ).fit_transform(matrix)
    labels = cluster_domains(embedding, n_domains, method="gmm", seed=seed, covariance_type="tied", tol=1e-5)
    return np.asarray(labels, dtype=np.int64), embedding.astype(np.float32)


def cellcharter_domains(
    adata,
    n_domains: int,
    seed: int = 0,
    spatial_key: str = "spatial",
    batch_key: str | None = None,
    n_components: int = 10,
    n_layers: int = 3,
):
    """CellCharter's domains (``cellcharter``), with its tutorials' settings on a PCA input.

    log-CP10k of the variable genes, ``n_components`` principal components
    (the tutorials' latent size; their scVI latent costs minutes of training
    per tissue here, the PCA seconds), squidpy's Delaunay graph per section
    without its longest links (``remove_long_links``), the mean over
    ``n_layers`` rings of neighbours (``aggregate_neighbors``), then
    CellCharter's Gaussian mixture with ``n_domains`` clusters.

    Returns
    -------
    tuple
        The domain code of every cell (int64) and CellCharter's aggregated features.
    """
    import scanpy as sc
    import torch

    with _quiet():
        import cellcharter as cc
        import squidpy as sq

        data = _variable_genes(_copy(adata, spatial_key, batch_key, "section"))
        sc.pp.normalize_total(data, target_sum=1e4)
        sc.pp.log1p(data)
        sc.pp.pca(data, n_comps=min(n_components, data.n_vars - 1, data.n_obs - 1), random_state=seed)
        sq.gr.spatial_neighbors(data, library_key="section", coord_type="generic", delaunay=True, spatial_key="spatial")
        cc.gr.remove_long_links(data)
        cc.gr.aggregate_neighbors(
            data, n_layers=n_layers, use_rep="X_pca", out_key="X_cellcharter", sample_key="section"
        )
        data.obsm["X_cellcharter"] = np.asarray(data.obsm["X_cellcharter"], dtype=np.float32)  # torchgmm: float32
        torch.manual_seed(seed)  # its mixture reads torch's generator, not random_state
        np.random.seed(seed)
        model = cc.tl.Cluster(
            n_clusters=n_domains,
            random_state=seed,
            trainer_params={
                "accelerator": "cpu",
                "devices": 1,
                "enable_progress_bar": False,
                "enable_model_summary": False,
                "logger": False,
                "enable_checkpointing": False,
            },
        )
        model.fit(data, use_rep="X_cellcharter")
        labels = np.asarray(model.predict(data, use_rep="X_cellcharter"))
    return np.unique(labels, return_inverse=True)[1].astype(np.int64), data.obsm["X_cellcharter"]
