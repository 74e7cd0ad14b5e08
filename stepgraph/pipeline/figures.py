"""The pipeline's figure: predicted (and true) spatial domains per section."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

__all__ = ["save_domain_figure", "save_embedding_figure"]

_PANEL_INCHES = 4.2


def _pyplot():
    """Matplotlib's pyplot on the file-only Agg backend; ``None`` without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save(fig, path) -> bool:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _matched_colours(truth: pd.Categorical, predicted: pd.Categorical, n_colours: int) -> dict:
    """Colour index per predicted domain: the colour of the true domain it
    overlaps most (Hungarian matching), so agreeing domains share a colour.
    """
    table = pd.crosstab(predicted.codes, truth.codes).reindex(
        index=range(len(predicted.categories)), columns=range(len(truth.categories)), fill_value=0
    )
    rows, cols = linear_sum_assignment(-table.to_numpy())
    colours = dict(zip(rows.tolist(), cols.tolist(), strict=True))
    spare = iter(range(len(truth.categories), n_colours + len(predicted.categories)))
    return {i: colours[i] if i in colours else next(spare) for i in range(len(predicted.categories))}


def domain_palette(predicted, truth=None) -> tuple[list, dict, dict]:
    """The one palette of both figures: ``(palette, colour of each true domain code, colour of each
    predicted domain code)``. With ``truth``, a predicted domain takes the colour of the true domain it
    overlaps most (:func:`_matched_colours`); the rest take colours no true domain uses.
    """
    plt = _pyplot()
    predicted = pd.Categorical(predicted)
    truth = None if truth is None else pd.Categorical(truth)
    n_colours = (len(truth.categories) if truth is not None else 0) + len(predicted.categories)
    palette = list(plt.get_cmap("tab20" if n_colours > 10 else "tab10").colors)
    if truth is None:
        return palette, {}, {i: i for i in range(len(predicted.categories))}
    return (palette, {i: i for i in range(len(truth.categories))}, _matched_colours(truth, predicted, n_colours))


def _draw(ax, xy, codes, categories, colour_of, palette, size, title):
    for code, name in enumerate(categories):
        mask = codes == code
        if mask.any():
            ax.scatter(
                xy[mask, 0],
                xy[mask, 1],
                s=size,
                color=palette[colour_of[code] % len(palette)],
                linewidths=0,
                label=str(name),
            )
    ax.set_title(title, fontsize=10)
    ax.set_aspect("equal")
    ax.invert_yaxis()  # image coordinates, as scanpy and squidpy draw them
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(
        fontsize=7,
        markerscale=max(1.0, 4.0 / np.sqrt(size)),
        frameon=False,
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
    )


def save_domain_figure(
    adata,
    path: str | Path,
    spatial_key: str = "spatial",
    batch_key: str | None = None,
    truth_key: str | None = None,
    domain_key: str = "stepgraph_domain",
    history: list[dict] | None = None,
    ari: float | None = None,
) -> bool:
    """Draw the domains of every section and save the figure to ``path``.

    One row per section (``batch_key``): the true domains (``truth_key``)
    beside the predicted ones (``domain_key``), coloured so that a predicted
    domain takes the colour of the true domain it overlaps most, with a
    legend. Points are sized from the spot or cell spacing (the median
    nearest-neighbour distance), and y points down as in image coordinates.
    With ``history`` (per-epoch losses) a loss panel is added; ``ari`` goes
    in the title.

    Parameters
    ----------
    adata
        Annotated data with coordinates and the predicted domains.
    path
        Where the figure is saved (the format follows the suffix).
    spatial_key
        Key of the coordinates in ``adata.obsm``.
    batch_key
        Column of ``adata.obs`` with the section of each cell; ``None`` draws
        one tissue.
    truth_key
        Column of ``adata.obs`` with the true domains, drawn beside the
        predicted ones; ``None`` draws the predicted domains only.
    domain_key
        Column of ``adata.obs`` with the predicted domains.
    history
        Per-epoch losses (``Trainer.history``) for a loss panel.
    ari
        Adjusted Rand index, written in the title.

    Returns
    -------
    bool
        False when matplotlib is not installed (nothing is written).
    """
    plt = _pyplot()
    if plt is None:
        return False
    from stepgraph.graph.ops import median_neighbor_distance
    from stepgraph.graph.spatial import section_codes

    xy = np.asarray(adata.obsm[spatial_key], dtype=np.float64)[:, :2]
    sections, names = section_codes(adata, batch_key)
    spacing = median_neighbor_distance(xy, sections)
    predicted = pd.Categorical(adata.obs[domain_key])
    truth = pd.Categorical(adata.obs[truth_key]) if truth_key else None
    palette, truth_colours, pred_colours = domain_palette(predicted, truth)

    n_cols = (2 if truth is not None else 1) + (history is not None)
    fig, axes = plt.subplots(
        len(names), n_cols, figsize=(n_cols * (_PANEL_INCHES + 1.4), len(names) * _PANEL_INCHES), squeeze=False
    )
    for row, name in enumerate(names):
        mask = sections == row
        part = xy[mask]
        extent = max(np.ptp(part[:, 0]), np.ptp(part[:, 1]), spacing)
        diameter_pt = 0.9 * spacing / extent * _PANEL_INCHES * 72  # one spot wide, in points
        size = float(np.clip(diameter_pt, 0.5, 40.0) ** 2)
        label = "tissue" if batch_key is None else str(name)
        col = 0
        if truth is not None:
            _draw(
                axes[row, 0],
                part,
                truth.codes[mask],
                truth.categories,
                truth_colours,
                palette,
                size,
                f"{label}: true domains",
            )
            col = 1
        score = f" (ARI {ari:.3f})" if ari is not None else ""
        _draw(
            axes[row, col],
            part,
            predicted.codes[mask],
            predicted.categories,
            pred_colours,
            palette,
            size,
            f"{label}: predicted domains{score}",
        )
        if history is not None:
            ax = axes[row, -1]
            if row == 0 and history:
                epochs = [h["epoch"] for h in history]
                for key in [k for k in history[0] if k not in ("epoch", "lr")]:
                    ax.plot(
                        epochs,
                        [h.get(key, np.nan) for h in history],
                        label=key,
                        linestyle="--" if key.startswith("val_") else "-",
                    )
                ax.set_xlabel("epoch")
                ax.set_ylabel("loss")
                ax.set_title("training", fontsize=10)
                ax.legend(fontsize=7)
            else:
                ax.axis("off")
    return _save(fig, path)


def save_embedding_figure(
    embedding, sections, section_names, domains, path: str | Path, seed: int = 0, truth=None
) -> bool:
    """Draw the embedding of several sections in two dimensions, coloured by
    section (left) and by domain (right), and save it to ``path``.

    The two coordinates are UMAP's when umap-learn is installed, else the
    first two principal components
    (:func:`~stepgraph.pipeline.integration.embedding_2d`; at most 20,000
    cells, drawn at random). Sections that mix well overlap on the left
    while the domains stay apart on the right.

    Parameters
    ----------
    embedding
        Array of shape ``(n_obs, n_dims)``.
    sections
        Section code per cell, indexing ``section_names``.
    section_names
        The name of each section, for the legend.
    domains
        Domain label per cell.
    path
        Where the figure is saved (the format follows the suffix).
    seed
        Seed of the cell subset and of UMAP.
    truth
        The true domain of every cell, when known: the domains then take the
        colours they have in :func:`save_domain_figure` (:func:`domain_palette`).

    Returns
    -------
    bool
        True once written; False without matplotlib (then nothing is written).
    """
    plt = _pyplot()
    if plt is None:
        return False
    from stepgraph.pipeline.integration import embedding_2d

    rows, xy, method = embedding_2d(embedding, seed=seed, max_cells=20_000)
    size = float(np.clip(3e4 / len(rows), 0.5, 12.0))
    fig, axes = plt.subplots(1, 2, figsize=(2 * (_PANEL_INCHES + 1.4), _PANEL_INCHES), squeeze=False)
    domains = pd.Categorical(domains)
    section_palette = list(plt.get_cmap("tab20" if len(section_names) > 10 else "tab10").colors)
    palette, _, domain_colours = domain_palette(domains, truth)
    if method != "UMAP":  # said once, under the panels
        fig.text(0.01, 0.01, "PCA: umap-learn is not installed (pip install 'stepgraph[integration]')", fontsize=8)
    for ax, codes, categories, colours, title, pal in (
        (
            axes[0, 0],
            np.asarray(sections)[rows],
            [str(n) for n in section_names],
            {i: i for i in range(len(section_names))},
            "section",
            section_palette,
        ),
        (axes[0, 1], domains.codes[rows], list(domains.categories), domain_colours, "domain", palette),
    ):
        _draw(ax, xy, codes, categories, colours, pal, size, f"{method} of the embedding, by {title}")
        ax.set_aspect("auto")
        ax.invert_yaxis()  # _draw turns y for images; an embedding has no up or down
    return _save(fig, path)
