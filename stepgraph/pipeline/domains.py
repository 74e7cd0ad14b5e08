"""Domains from embeddings: clustering (scikit-learn), neighbour-majority
refinement and agreement scores (ARI, NMI). Smoothing over the graph is in
:mod:`stepgraph.graph.ops`.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from stepgraph._validation import (
    category_codes,
    check_choice,
    check_finite,
    check_int,
    check_number,
)
from stepgraph.graph.ops import adjacency_pattern

__all__ = [
    "CLUSTER_METHODS",
    "cluster_domains",
    "kmeans_domains",
    "gmm_domains",
    "fit_gmm",
    "refine_domains",
    "adjusted_rand_index",
    "normalized_mutual_info",
]

#: The clustering methods :func:`cluster_domains` knows.
CLUSTER_METHODS = ("kmeans", "gmm")


def _check_embedding(embedding, n_clusters) -> np.ndarray:
    check_int(n_clusters, "n_clusters", minimum=1)
    x = np.asarray(embedding, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < n_clusters:
        raise ValueError(f"embedding must be 2-D with at least n_clusters={n_clusters} rows, got shape {x.shape}")
    check_finite(x, "embedding")
    return x


def kmeans_domains(embedding: np.ndarray, n_clusters: int, seed: int = 0, n_init: int = 10) -> np.ndarray:
    """Cluster the rows of ``embedding`` with k-means++ (:class:`sklearn.cluster.KMeans`).

    Parameters
    ----------
    embedding
        Array of shape ``(n_obs, n_dims)``, clustered as it is (not rescaled).
    n_clusters
        Number of clusters (domains).
    seed
        Seed of the initialisations.
    n_init
        Runs with different initialisations; the one with the lowest
        within-cluster sum of squares is kept.

    Returns
    -------
    numpy.ndarray
        Cluster label per row, int64 in ``[0, n_clusters)``.
    """
    from sklearn.cluster import KMeans

    x = _check_embedding(embedding, n_clusters)
    return KMeans(n_clusters, n_init=n_init, random_state=seed).fit_predict(x).astype(np.int64)


def gmm_domains(
    embedding: np.ndarray,
    n_clusters: int,
    seed: int = 0,
    covariance_type: str = "tied",
    n_init: int = 10,
    max_fit_rows: int | None = 100_000,
    tol: float | None = 1e-5,
    screen_rows: int | None = None,
    n_refine: int = 3,
) -> np.ndarray:
    """Cluster the rows of ``embedding`` with a Gaussian mixture
    (:class:`sklearn.mixture.GaussianMixture`, k-means initialisation), as
    mclust does for STAGATE and GraphST.

    Parameters
    ----------
    embedding
        Array of shape ``(n_obs, n_dims)``.
    n_clusters
        Number of mixture components (domains).
    seed
        Seed of the initialisation.
    covariance_type
        ``"tied"`` (one covariance shared by all components: mclust's
        ``"EEE"``, which STAGATE and GraphST use), ``"full"``, ``"diag"`` or
        ``"spherical"``.
    n_init
        Starts from different k-means initialisations, each fitted (on the
        fit rows, or on ``screen_rows`` of them) until its mean log-likelihood
        per row rises by less than scikit-learn's ``1e-3``.
    max_fit_rows
        The mixture is fitted on at most this many rows, drawn at random
        (seeded), and every row is then assigned; 100,000 rows estimate a
        few tens of components well and keep a tissue of millions of cells
        to seconds. ``None`` fits on all rows.
    tol
        The most likely start (the ``n_refine`` most likely, when screened) is
        then run on the fit rows (EM from where it stopped) until its mean
        log-likelihood per row rises by less than ``tol``, and the most likely
        is kept: a change of ``1e-3`` per row can still move hundreds of rows
        between two neighbouring components. ``None`` keeps each as it stopped.
    screen_rows
        Screen the starts on this many random rows (all the fit rows when
        fewer) and refine the best on the fit rows (see :func:`fit_gmm`);
        ``None`` (default): every start is fitted on the fit rows.
    n_refine
        Screened starts refined on the fit rows.

    Returns
    -------
    numpy.ndarray
        Most likely component per row, int64 in ``[0, n_clusters)``.
    """
    x = _check_embedding(embedding, n_clusters)
    gmm = fit_gmm(
        x,
        n_clusters,
        seed=seed,
        covariance_type=covariance_type,
        n_init=n_init,
        max_fit_rows=max_fit_rows,
        tol=tol,
        screen_rows=screen_rows,
        n_refine=n_refine,
    )
    return gmm.predict(x).astype(np.int64)


def fit_gmm(
    embedding: np.ndarray,
    n_clusters: int,
    seed: int = 0,
    covariance_type: str = "tied",
    n_init: int = 10,
    max_fit_rows: int | None = 100_000,
    tol: float | None = 1e-5,
    screen_rows: int | None = None,
    n_refine: int = 3,
    **init,
):
    """The Gaussian mixture that :func:`gmm_domains` fits, as a fitted
    :class:`sklearn.mixture.GaussianMixture` (for its likelihood, means and
    covariances); the arguments are those of :func:`gmm_domains`.

    By default each of the ``n_init`` k-means starts is fitted on the fit rows
    (at most ``max_fit_rows``) to scikit-learn's ``1e-3``, and the most
    likely is run on until its mean log-likelihood per row rises by less than
    ``tol``. With ``screen_rows``, the starts are screened instead: each is
    fitted on the same ``screen_rows`` random rows, the ``n_refine`` most
    likely there are run on the fit rows to ``tol``, and the most likely of
    those is kept. Many cheap starts then find the same fit of a given
    embedding whatever the seed, and a large tissue clusters faster; on the
    development panel this did not lower the pipeline's seed spread, whose
    source is the model's training, and it lost on her2st (see
    ``docs/benchmarks.md``, seed-stable clustering), so it is an option.

    ``init`` is passed on to :class:`~sklearn.mixture.GaussianMixture`
    (``means_init=`` to start from given means instead of k-means: one start,
    no screening).
    """
    from sklearn.mixture import GaussianMixture

    x = _check_embedding(embedding, n_clusters)
    if tol is not None:
        tol = check_number(tol, "tol", positive=True)
    check_int(n_init, "n_init", minimum=1)
    check_int(n_refine, "n_refine", minimum=1)
    check_int(screen_rows, "screen_rows", minimum=n_clusters, allow_none=True)
    rng = np.random.default_rng(seed)
    fit_rows = x
    if max_fit_rows is not None and len(x) > max_fit_rows:
        fit_rows = x[rng.choice(len(x), max_fit_rows, replace=False)]

    def mixture(start_seed: int, **options):
        return GaussianMixture(
            n_clusters, covariance_type=covariance_type, random_state=start_seed, reg_covar=1e-5, **options
        )

    def refined(gmm):
        if tol is not None and tol < gmm.tol:  # warm start: EM goes on from where the start stopped
            gmm.set_params(warm_start=True, n_init=1, tol=tol, max_iter=1000).fit(fit_rows)
        return gmm

    if init:
        return refined(mixture(seed, **init).fit(fit_rows))
    if screen_rows is None:
        return refined(mixture(seed, n_init=n_init).fit(fit_rows))
    screen = fit_rows
    if len(fit_rows) > screen_rows:
        screen = fit_rows[rng.choice(len(fit_rows), screen_rows, replace=False)]
    starts = [mixture(int(s)).fit(screen) for s in rng.integers(0, 2**31 - 1, size=n_init)]  # a loop over starts
    starts.sort(key=lambda g: -g.score(screen))
    best = None
    for start in starts[:n_refine]:
        gmm = mixture(seed, means_init=start.means_, weights_init=start.weights_, precisions_init=start.precisions_)
        gmm = refined(gmm.fit(fit_rows))
        if best is None or gmm.score(fit_rows) > best.score(fit_rows):
            best = gmm
    return best


def cluster_domains(
    embedding: np.ndarray, n_clusters: int, method: str = "kmeans", seed: int = 0, **options
) -> np.ndarray:
    """Cluster the rows of ``embedding`` with ``method`` (one of :data:`CLUSTER_METHODS`).

    Parameters
    ----------
    embedding
        Array of shape ``(n_obs, n_dims)``.
    n_clusters
        Number of clusters (domains).
    method
        ``"kmeans"`` calls :func:`kmeans_domains`, ``"gmm"`` :func:`gmm_domains`.
    seed
        Seed of the clustering.
    **options
        Passed on to that function (e.g. ``n_init``).

    Returns
    -------
    numpy.ndarray
        Cluster label per row, int64 in ``[0, n_clusters)``.
    """
    check_choice(method, "method", CLUSTER_METHODS)
    if method == "gmm":
        return gmm_domains(embedding, n_clusters, seed=seed, **options)
    return kmeans_domains(embedding, n_clusters, seed=seed, **options)


def refine_domains(labels, connectivities) -> np.ndarray:
    """Relabel each cell whose graph neighbours mostly agree on another domain.

    As SpaGCN's and GraphST's refinement: a cell takes the most common label
    of its neighbours when more than half of them carry that label and fewer
    than half carry its own. Isolated cells keep their label. One vectorised
    pass (a sparse product), no loop over cells.

    Parameters
    ----------
    labels
        One label per cell (any hashable values).
    connectivities
        Sparse ``(n_obs, n_obs)`` adjacency, e.g. ``obsp["spatial_connectivities"]``;
        the diagonal is ignored.

    Returns
    -------
    numpy.ndarray
        The refined labels, same values and dtype as ``labels``.
    """
    values = np.asarray(labels)
    n = values.shape[0]
    if np.shape(connectivities) != (n, n):
        raise ValueError(f"connectivities must be ({n}, {n}) for {n} labels, got {np.shape(connectivities)}")
    codes, categories = category_codes(values, "labels")
    onehot = sp.csr_matrix((np.ones(n), (np.arange(n), codes)), shape=(n, len(categories)))
    counts = (adjacency_pattern(connectivities) @ onehot).toarray()
    degree = counts.sum(axis=1)
    best = counts.argmax(axis=1)
    own = counts[np.arange(n), codes]
    switch = (counts[np.arange(n), best] > degree / 2) & (own < degree / 2)
    out = values.copy()
    out[switch] = np.asarray(categories)[best[switch]]
    return out


def _label_codes(labels_true, labels_pred) -> tuple[np.ndarray, np.ndarray]:
    # a missing label is a label of its own (code -1), as before
    a = category_codes(np.asarray(labels_true), "labels_true", allow_missing=True)[0]
    b = category_codes(np.asarray(labels_pred), "labels_pred", allow_missing=True)[0]
    if a.shape != b.shape:
        raise ValueError(f"labellings differ in length: {a.shape[0]} and {b.shape[0]}")
    return a, b


def adjusted_rand_index(labels_true, labels_pred) -> float:
    """Adjusted Rand index between two labellings (1 is identical, ~0 random);
    :func:`sklearn.metrics.adjusted_rand_score` over any hashable labels.

    Parameters
    ----------
    labels_true, labels_pred
        One label per observation (any hashable values).
    """
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(*_label_codes(labels_true, labels_pred)))


def normalized_mutual_info(labels_true, labels_pred) -> float:
    """Normalised mutual information between two labellings (1 is identical,
    0 independent); :func:`sklearn.metrics.normalized_mutual_info_score`.

    Parameters
    ----------
    labels_true, labels_pred
        One label per observation (any hashable values).
    """
    from sklearn.metrics import normalized_mutual_info_score

    return float(normalized_mutual_info_score(*_label_codes(labels_true, labels_pred)))
