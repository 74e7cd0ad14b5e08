"""Expression pre-processing for the reference pipeline: log-normalisation,
highly variable genes, principal components, the model's input features
(:class:`ExpressionFeatures`). The graph operators they use (neighbourhood
means, the data's spacing) are in :mod:`stepgraph.graph.ops`.

Every function returns new arrays; the user's matrices are never modified.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from stepgraph._validation import check_choice, check_counts, check_finite, check_int, check_number
from stepgraph.graph.ops import neighborhood_mean_operator

__all__ = ["log_normalise", "highly_variable_genes", "principal_components", "ExpressionFeatures", "SCALINGS"]

#: How :class:`ExpressionFeatures` weighs the genes (see its ``scaling``).
SCALINGS = ("auto", "zscore", "center")


def log_normalise(matrix, target_sum: float = 1e4) -> sp.csr_matrix | np.ndarray:
    """Counts scaled to ``target_sum`` per cell, then ``log1p``; a new matrix.

    Parameters
    ----------
    matrix
        Counts (cells x genes), dense or sparse. Cells without counts stay 0.
    target_sum
        The total of every cell after scaling.

    Returns
    -------
    scipy.sparse.csr_matrix or numpy.ndarray
        float32; sparse input stays sparse (only its non-zeros are touched).
    """
    if sp.issparse(matrix):
        out = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
        totals = np.asarray(out.sum(axis=1)).ravel()
        scale = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
        out.data *= np.repeat(scale, np.diff(out.indptr)).astype(np.float32)
        np.log1p(out.data, out=out.data)
        return out
    out = np.asarray(matrix, dtype=np.float32)
    totals = out.sum(axis=1, keepdims=True)
    scale = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
    return np.log1p(out * scale)


def _median_total(totals: np.ndarray) -> float:
    """The median count total of the cells that have counts (1 when none has)."""
    totals = totals[totals > 0]
    return float(np.median(totals)) if totals.size else 1.0


def _column_mean_var(matrix) -> tuple[np.ndarray, np.ndarray]:
    if sp.issparse(matrix):
        mean = np.asarray(matrix.mean(axis=0), dtype=np.float64).ravel()
        mean_sq = np.asarray(matrix.multiply(matrix).mean(axis=0), dtype=np.float64).ravel()
        return mean, np.maximum(mean_sq - mean**2, 0.0)
    x = np.asarray(matrix, dtype=np.float64)
    return x.mean(axis=0), x.var(axis=0)


def _normalised_dispersion(log_matrix, n_bins: int) -> np.ndarray:
    """Each gene's dispersion (variance over mean of the de-logged expression),
    z-scored within ``n_bins`` equal-width bins of log mean expression (scanpy's
    ``flavor="seurat"``).
    """
    expm1 = log_matrix.expm1() if sp.issparse(log_matrix) else np.expm1(np.asarray(log_matrix, np.float64))
    mean, var = _column_mean_var(expm1)
    mean = np.where(mean == 0, 1e-12, mean)
    dispersion = np.log(np.where(var == 0, 1e-12, var) / mean)
    log_mean = np.log1p(mean)
    edges = np.linspace(log_mean.min(), log_mean.max(), n_bins + 1)[1:-1]  # equal widths, as scanpy
    bins = np.searchsorted(edges, log_mean)
    norm = np.zeros(log_matrix.shape[1])
    for b in np.unique(bins):  # a loop over <= n_bins bins, not over genes
        in_bin = bins == b
        sd = dispersion[in_bin].std()
        norm[in_bin] = (dispersion[in_bin] - dispersion[in_bin].mean()) / (sd if sd > 0 else 1.0)
    return norm


def highly_variable_genes(log_matrix, n_top: int = 2000, n_bins: int = 20, sections=None) -> np.ndarray:
    """Indices of the ``n_top`` most variable genes, as scanpy's ``flavor="seurat"``.

    The dispersion (variance over mean) of the de-logged expression is
    z-scored within ``n_bins`` equal-width bins of log mean expression, so that variable
    genes are found at every expression level; genes are ranked by that
    normalised dispersion.

    Parameters
    ----------
    log_matrix
        Log-normalised expression (cells x genes), dense or sparse.
    n_top
        Number of genes to keep (all genes when there are fewer).
    n_bins
        Bins of mean expression.
    sections
        Section code of every row (non-negative integers, ``(n_rows,)``). With
        it, genes are selected as scanpy's ``batch_key`` selects them: the
        dispersions are normalised within each section, genes are ranked
        first by the number of sections in whose top ``n_top`` they are, then
        by their median normalised dispersion over the sections. A gene that
        only differs between sections (a sample effect) is then not mistaken
        for one that varies within them.

    Returns
    -------
    numpy.ndarray
        Sorted column indices of the selected genes.
    """
    n_genes = log_matrix.shape[1]
    check_int(n_top, "n_top", minimum=1)
    if n_top >= n_genes:
        return np.arange(n_genes)
    if sections is None:
        return np.sort(np.argsort(-_normalised_dispersion(log_matrix, n_bins), kind="stable")[:n_top])
    codes = _section_codes(sections, log_matrix.shape[0])
    norms = np.stack(
        [_normalised_dispersion(log_matrix[codes == code], n_bins) for code in np.unique(codes)]
    )  # a loop over sections
    ranks = np.argsort(np.argsort(-norms, axis=1, kind="stable"), axis=1)
    in_top = (ranks < n_top).sum(axis=0)
    order = np.lexsort((-np.median(norms, axis=0), -in_top))  # the last key sorts first
    return np.sort(order[:n_top])


def principal_components(matrix, n_components: int = 50, seed: int = 0) -> np.ndarray:
    """The first principal components of ``matrix`` (cells x genes), centred,
    with :class:`sklearn.decomposition.PCA`; sparse input is not densified.

    Parameters
    ----------
    matrix
        Expression (cells x genes), dense or sparse.
    n_components
        Number of components, capped at ``min(n_obs, n_vars) - 1``.
    seed
        Seed of the PCA solver.

    Returns
    -------
    numpy.ndarray
        float32, shape ``(n_obs, n_components)``.
    """
    from sklearn.decomposition import PCA

    check_int(n_components, "n_components", minimum=1)
    k = int(min(n_components, min(matrix.shape) - 1))
    if k < 1:
        raise ValueError(f"principal components need at least 2 cells and 2 genes, got shape {matrix.shape}")
    x = sp.csr_matrix(matrix, dtype=np.float32) if sp.issparse(matrix) else np.asarray(matrix, np.float32)
    # the genes x genes covariance is small for panels and HVG sets; arpack beyond
    solver = "covariance_eigh" if x.shape[1] <= 5000 else ("arpack" if sp.issparse(x) else "auto")
    return PCA(k, svd_solver=solver, random_state=seed).fit_transform(x).astype(np.float32)


def _section_codes(sections, n_rows: int) -> np.ndarray:
    codes = np.asarray(sections)
    if codes.shape != (n_rows,) or codes.dtype.kind not in "iu" or (n_rows and codes.min() < 0):
        raise ValueError(
            f"sections must hold one non-negative integer code per row ({n_rows}), got an "
            f"array of shape {codes.shape} and dtype {codes.dtype}"
        )
    return codes


class ExpressionFeatures:
    """The model's input: counts -> log-CP10k -> highly variable genes ->
    centred (and, for a panel, unit-variance) genes -> principal components.

    Fitted once on (a random subset of) the cells, then applied to any block
    of rows on its own, so the same features come out whether the matrix is
    in memory or read from disk one mini-batch at a time (pass the fitted
    object as ``row_transform`` of :class:`~stepgraph.data.BaseDataset`).

    Why each step, for Visium spots and imaging panels alike:

    - log-CP10k removes the depth of each spot or cell and tames the counts'
      mean-variance relation;
    - highly variable genes (only above ``n_top_genes`` genes) drop genes
      that carry noise only; a panel of tens or hundreds of genes was chosen
      by hand and is kept whole;
    - ``scaling`` sets the weight of each gene in the components. Each
      gene is centred; a panel kept whole is also scaled to unit variance
      (z-scores, clipped at ``clip``: scanpy's ``scale``, BANKSY), because
      each of its genes was chosen and a marker expressed at low level
      counts as much as a highly expressed one. Genes selected from a
      transcriptome keep their own variance on the log scale (as STAGATE,
      SpaGCN and BayesSpace feed them): most of those genes are sparsely
      detected, and unit variance would give their counting noise the weight
      of a marker. With ``sections``, each section is centred and scaled on
      its own, which removes a sample effect (chemistry, permeabilisation,
      patient) before the components are fitted: each gene's own offset in
      the section, and its scale there (z-scores) or the section's overall
      scale of the log values (one number per section for centred genes, so
      that the genes keep their relative variances);
    - principal components keep the shared variation and drop per-gene
      noise; they also make the model's input size independent of the panel.

    Parameters
    ----------
    n_top_genes
        Highly variable genes kept when there are more genes than this.
    n_components
        Principal components (capped at the number of genes minus one and the
        number of fitted cells minus one).
    max_cells
        At most this many cells, drawn at random, are read to fit the genes,
        the centring and scaling and the components; 20,000 cells estimate them
        well and keep the fit small on a tissue of millions of cells.
    clip
        Centred (and scaled) values are clipped to ``[-clip, clip]``.
    seed
        Seed of the cell subset and of the PCA solver.
    target_sum
        Each cell's counts are scaled to this total before the log: a
        number (10,000: log-CP10k), or ``"median"``, the median total of the
        fitted cells (scanpy's ``normalize_total`` default), which keeps a
        single count near 1 on a panel of a few hundred counts per cell
        rather than near 100.
    scaling
        ``"zscore"`` (each gene centred and scaled to unit variance),
        ``"center"`` (centred only: each gene keeps its variance of
        log-CP10k) or ``"auto"``: ``"zscore"`` when the genes are kept whole
        (at most ``n_top_genes`` of them, a panel), ``"center"`` when highly
        variable genes are selected from more.

    Attributes
    ----------
    genes
        Column indices of the genes used.
    zscored_
        Whether the genes were scaled to unit variance (``scaling`` resolved
        by :meth:`fit`).
    n_features_out
        Number of output features (components).
    """

    def __init__(
        self,
        n_top_genes: int = 3000,
        n_components: int = 20,
        max_cells: int = 20_000,
        clip: float = 10.0,
        seed: int = 0,
        scaling: str = "auto",
        target_sum: float | str = 1e4,
    ):
        if isinstance(target_sum, str):
            check_choice(target_sum, "target_sum", ("median",))
        else:
            check_number(target_sum, "target_sum", positive=True)
        self.target_sum = target_sum
        self.target_sum_: float | None = None
        self.n_top_genes = check_int(n_top_genes, "n_top_genes", minimum=1)
        self.scaling = check_choice(scaling, "scaling", SCALINGS)
        self.zscored_ = None
        self.n_components = check_int(n_components, "n_components", minimum=1)
        self.max_cells = check_int(max_cells, "max_cells", minimum=1)
        self.clip, self.seed = float(clip), seed
        self.chunk_rows = 4096  # rows densified at once: 4096 x 3000 genes is 49 MB
        self.genes = None
        self.section_mean_ = self.section_scale_ = None

    def fit(self, matrix, connectivities=None, sections=None) -> ExpressionFeatures:
        """Fit the genes, their centring and scaling, and the components on (a subset of) the cells.

        Parameters
        ----------
        matrix
            Counts (cells x genes): in memory (dense or sparse) or on disk (a
            backed h5ad's or lazy zarr's ``X``, of which only the rows needed
            are read).
        connectivities
            The spatial graph, sparse ``(n_obs, n_obs)``. With it, the
            components are those of the neighbourhood means of the z-scores
            (each cell averaged with its neighbours, as BANKSY's neighbour
            features): the axes of spatially coherent variation, the
            variation between domains, rather than that of spot-to-spot
            noise. The rows of the subset's neighbours are read too.
        sections
            Section code of every cell (non-negative integers, ``(n_obs,)``),
            e.g. from :func:`~stepgraph.graph.spatial.section_codes`. With it,
            the genes are selected within the sections
            (:func:`highly_variable_genes` with ``sections``), each gene's
            mean and scale are those of the cell's own section (the pooled
            ones for a section without cells in the subset), and
            :meth:`transform` needs the codes of its rows too.

        Returns
        -------
        ExpressionFeatures
            ``self``, fitted.

        Raises
        ------
        ValueError
            If the rows read hold NaN or infinite counts (the first row is
            named), or ``connectivities`` has the wrong shape.
        """
        from sklearn.decomposition import PCA

        from stepgraph.data.ondisk import RowReader, is_on_disk

        n_obs, n_vars = matrix.shape
        subset = np.arange(n_obs)
        if n_obs > self.max_cells:
            subset = np.sort(np.random.default_rng(self.seed).choice(n_obs, self.max_cells, replace=False))
        if connectivities is not None:
            if connectivities.shape != (n_obs, n_obs):
                raise ValueError(
                    f"connectivities must be ({n_obs}, {n_obs}) for {n_obs} cells, got {connectivities.shape}"
                )
            op = neighborhood_mean_operator(connectivities, rows=subset).tocsc()
            rows = np.flatnonzero(np.diff(op.indptr))  # the subset and its neighbours
            mean_over = op[:, rows].tocsr()
        else:
            rows, mean_over = subset, None
        block = RowReader(matrix).read_unique(rows)[1] if is_on_disk(matrix) else matrix[rows]
        check_finite(block, "matrix (the counts)", row_ids=rows)
        check_counts(block, "matrix (the counts)", row_ids=rows)
        totals = np.asarray(block.sum(axis=1)).ravel()[np.isin(rows, subset)]
        self.target_sum_ = float(self.target_sum) if not isinstance(self.target_sum, str) else _median_total(totals)
        logged = log_normalise(block, self.target_sum_)
        in_subset = np.isin(rows, subset)
        codes = None if sections is None else _section_codes(sections, n_obs)
        self.genes = highly_variable_genes(  # per section: a sample effect is not a variable gene
            logged[in_subset], self.n_top_genes, sections=None if codes is None else codes[rows[in_subset]]
        )
        logged = logged[:, self.genes]
        self.zscored_ = self.scaling == "zscore" or (self.scaling == "auto" and n_vars <= self.n_top_genes)
        mean, var = _column_mean_var(logged[in_subset])
        self.mean_ = mean.astype(np.float32)
        pooled_var = var
        self.scale_ = self._scale(var, pooled_var)
        self.section_mean_ = self.section_scale_ = None
        if codes is not None:
            self.section_mean_ = np.tile(self.mean_, (int(codes.max()) + 1, 1))
            self.section_scale_ = np.tile(self.scale_, (int(codes.max()) + 1, 1))
            fitted, fitted_codes = logged[in_subset], codes[rows[in_subset]]
            for code in np.unique(fitted_codes):  # a loop over sections
                mean, var = _column_mean_var(fitted[fitted_codes == code])
                self.section_mean_[code] = mean
                self.section_scale_[code] = self._scale(var, pooled_var)
        if mean_over is not None:  # the means over neighbourhoods, one row per cell of the subset
            logged = mean_over @ logged  # neighbours share the section: standardising commutes with the mean
        z = self._standardised(logged, None if sections is None else codes[subset])
        k = int(min(self.n_components, z.shape[0] - 1, z.shape[1] - 1))
        if k < 1:
            raise ValueError(
                f"the input features need at least 2 cells and 2 genes, got {n_obs} cells and {len(self.genes)} genes"
            )
        pca = PCA(k, svd_solver="covariance_eigh", random_state=self.seed).fit(z)
        self.components_ = pca.components_.astype(np.float32)  # (k, genes)
        self.offset_ = (pca.mean_ @ pca.components_.T).astype(np.float32)
        return self

    def _scale(self, var: np.ndarray, pooled_var: np.ndarray) -> np.ndarray:
        """The divisor of each gene, from its variances ``var`` (in a section, or
        pooled) and ``pooled_var`` (over all the fitted cells): its standard
        deviation for z-scores (1 where it is constant); else one number for
        all the genes, the root mean variance of ``var`` over that of
        ``pooled_var`` (1 for the pooled cells), which takes out a section's
        own overall scale of the log values and keeps the genes' relative
        variances.
        """
        if self.zscored_:
            return np.where(var > 0, np.sqrt(var), 1.0).astype(np.float32)
        ratio = np.sqrt(var.mean() / pooled_var.mean()) if var.mean() > 0 and pooled_var.mean() > 0 else 1.0
        return np.full(len(var), ratio, dtype=np.float32)

    @property
    def n_features_out(self) -> int:
        if self.genes is None:
            raise RuntimeError("ExpressionFeatures is not fitted: call fit(matrix) first")
        return self.components_.shape[0]

    def _standardised(self, logged, sections=None) -> np.ndarray:
        # one dense float32 array, updated in place (no temporaries of its size)
        z = logged.toarray() if sp.issparse(logged) else np.array(logged)
        z = z.astype(np.float32, copy=False)
        if self.section_mean_ is None:
            z -= self.mean_
            z /= self.scale_
        else:
            if sections is None:
                raise ValueError("these features were fitted per section: pass sections= (the code of each row)")
            codes = _section_codes(sections, z.shape[0])
            if codes.size and codes.max() >= len(self.section_mean_):
                raise ValueError(
                    f"sections holds code {codes.max()}, but the features were fitted on "
                    f"{len(self.section_mean_)} sections"
                )
            for code in np.unique(codes):  # a loop over sections
                rows = codes == code
                z[rows] = (z[rows] - self.section_mean_[code]) / self.section_scale_[code]
        return np.clip(z, -self.clip, self.clip, out=z)

    def __call__(self, counts, sections=None) -> np.ndarray:
        """The features of a block of count rows (any rows, each on its own):
        a float32 array ``(n_rows, n_features_out)``. Rows are densified
        ``chunk_rows`` at a time, so the block may be large. ``sections``
        (the section code of each row) is needed when fitted with sections.
        """
        if self.genes is None:
            raise RuntimeError("ExpressionFeatures is not fitted: call fit(matrix) first")
        out = np.empty((counts.shape[0], self.n_features_out), dtype=np.float32)
        for start in range(0, counts.shape[0], self.chunk_rows):
            block = counts[start : start + self.chunk_rows]
            check_counts(block, "matrix (the counts)", row_ids=np.arange(start, start + block.shape[0]))
            logged = log_normalise(block, self.target_sum_)[:, self.genes]
            part = None if sections is None else np.asarray(sections)[start : start + self.chunk_rows]
            out[start : start + self.chunk_rows] = self._standardised(logged, part) @ self.components_.T - self.offset_
        return out

    def transform(self, matrix, sections=None) -> np.ndarray:
        """The features of every row of ``matrix``, in memory or on disk (read
        ``chunk_rows`` rows at a time, so the whole matrix is never loaded);
        ``sections`` as in :meth:`fit`.
        """
        from stepgraph.data.ondisk import RowReader, is_on_disk

        if not is_on_disk(matrix):
            return self(matrix, sections)
        reader = RowReader(matrix)
        n_obs = matrix.shape[0]
        chunks = [np.arange(start, min(start + self.chunk_rows, n_obs)) for start in range(0, n_obs, self.chunk_rows)]
        codes = None if sections is None else np.asarray(sections)

        def features(rows):
            block = reader.read_unique(rows)[1]
            check_counts(block, "matrix (the counts)", row_ids=rows)  # naming the row of the whole matrix
            return self(block, None if codes is None else codes[rows])

        return np.concatenate([features(rows) for rows in chunks] or [np.empty((0, self.n_features_out), np.float32)])

    def __repr__(self) -> str:
        fitted = "not fitted" if self.genes is None else f"{len(self.genes)} genes -> {self.n_features_out}"
        return f"ExpressionFeatures({fitted})"
