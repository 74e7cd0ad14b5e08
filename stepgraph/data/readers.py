"""Reading the files large tissues come in: ``.h5ad``, AnnData ``.zarr`` stores, SpatialData ``.zarr``.

:func:`read_anndata` opens any of them as an :class:`~anndata.AnnData`:

- an ``.h5ad`` file, in memory or backed (``anndata.read_h5ad(path, backed="r")``);
- an AnnData ``.zarr`` store (``AnnData.write_zarr``), in memory or, with
  ``backed=True``, lazily: ``obs``, ``var``, ``obsm``, ``obsp`` and ``uns`` are
  read, while ``X`` and the layers stay in the store (an anndata sparse
  dataset, or a zarr array when dense) and are read by chunks of rows
  (:mod:`stepgraph.data.ondisk`);
- the table of a SpatialData ``.zarr`` store (through the optional
  ``spatialdata`` package, ``pip install "stepgraph[spatial]"``): the table
  ``tables/<table_key>`` (the only table, or the one named ``"table"``, when
  ``table_key`` is ``None``), in memory or lazily as above. Its coordinates are
  ``obsm[spatial_key]`` when the table holds them (spatialdata-io's Xenium,
  MERSCOPE and Visium readers write ``obsm["spatial"]``); otherwise the
  centroids of the shapes or points the table annotates (its
  ``region`` / ``region_key`` / ``instance_key``), in the ``"global"``
  coordinate system, are written to ``obsm[spatial_key]`` of the AnnData
  returned (the store is never modified).

Every failure is a :class:`ValueError` (or :class:`ImportError` for a missing
``spatialdata``) whose message names the path and what was expected.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

__all__ = ["read_anndata", "store_kind", "SPATIALDATA_COORDINATE_SYSTEM"]

#: The coordinate system of the centroids taken from a SpatialData element.
SPATIALDATA_COORDINATE_SYSTEM = "global"

_SPATIAL_HINT = 'reading a SpatialData store needs the optional "spatialdata" package: pip install "stepgraph[spatial]"'


def _attrs(folder: Path) -> dict:
    """The attributes of a zarr group (v2 ``.zattrs`` or v3 ``zarr.json``), ``{}`` if none."""
    for name, pick in ((".zattrs", lambda d: d), ("zarr.json", lambda d: d.get("attributes", {}))):
        file = folder / name
        if file.is_file():
            try:
                return pick(json.loads(file.read_text()))
            except (OSError, ValueError, AttributeError):
                return {}
    return {}


def store_kind(path: str | Path) -> str | None:
    """``"h5ad"`` for a file, ``"anndata-zarr"`` or ``"spatialdata"`` for a zarr
    store of that kind, ``None`` for a folder that is neither.
    """
    path = Path(path)
    if not path.is_dir():
        return "h5ad"
    attrs = _attrs(path)
    if "spatialdata_attrs" in attrs or ((path / "tables").is_dir() and attrs.get("encoding-type") != "anndata"):
        return "spatialdata"
    if attrs.get("encoding-type") == "anndata":
        return "anndata-zarr"
    return None


def read_anndata(path: str | Path, backed: bool = False, *, table_key: str | None = None, spatial_key: str = "spatial"):
    """An AnnData from an ``.h5ad`` file, an AnnData ``.zarr`` store or a SpatialData ``.zarr`` store.

    Parameters
    ----------
    path
        The file or store.
    backed
        Keep ``X`` (and the layers) on disk, read by chunks of rows; in memory otherwise.
    table_key
        The table of a SpatialData store (``tables/<table_key>``); by default its
        only table, or the one named ``"table"``. Ignored for other inputs.
    spatial_key
        Where the coordinates are (or, from a SpatialData table without them,
        are written: the centroids of the region it annotates) in ``obsm``.

    Returns
    -------
    anndata.AnnData
        For a backed ``.h5ad``, ``adata.isbacked`` is true; for a lazily read
        store, ``X`` is an on-disk matrix (:func:`~stepgraph.data.ondisk.is_on_disk`).

    Raises
    ------
    ValueError
        For a folder that is not a zarr store of AnnData or SpatialData, a
        SpatialData store without the table asked for.
    ImportError
        For a SpatialData store without the ``spatialdata`` package.
    """
    import anndata as ad

    path = Path(path)
    kind = store_kind(path)
    if kind == "h5ad":
        return ad.read_h5ad(path, backed="r" if backed else None)
    if kind == "anndata-zarr":
        return _lazy_zarr(path) if backed else _read_zarr(path)
    if kind == "spatialdata":
        return _spatialdata_table(path, backed, table_key, spatial_key)
    raise ValueError(
        f"input {str(path)!r} is a folder but not a zarr store of an AnnData "
        "(AnnData.write_zarr) or of a SpatialData object"
    )


def _read_zarr(path: Path):
    import anndata as ad

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return ad.read_zarr(path)


def _lazy_zarr(path: Path):
    """An AnnData whose ``X`` and layers stay in the zarr store at ``path``."""
    import anndata as ad
    import zarr

    try:
        from anndata.io import read_elem, sparse_dataset
    except ImportError:  # anndata < 0.11
        from anndata.experimental import read_elem, sparse_dataset

    group = zarr.open_group(str(path), mode="r")

    def lazy(elem):
        return sparse_dataset(elem) if isinstance(elem, zarr.Group) else elem

    def mapping(name, read):
        return {key: read(group[name][key]) for key in group[name]} if name in group else {}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return ad.AnnData(
            X=lazy(group["X"]) if "X" in group else None,
            obs=read_elem(group["obs"]),
            var=read_elem(group["var"]),
            obsm=mapping("obsm", read_elem),
            obsp=mapping("obsp", read_elem),
            uns=read_elem(group["uns"]) if "uns" in group else {},
            layers=mapping("layers", lazy),
        )


def _spatialdata_table(path: Path, backed: bool, table_key: str | None, spatial_key: str):
    try:
        import spatialdata
    except ImportError:
        raise ImportError(f"input {str(path)!r} is a SpatialData store; {_SPATIAL_HINT}") from None
    tables = sorted(p.name for p in (path / "tables").iterdir() if p.is_dir()) if (path / "tables").is_dir() else []
    if table_key is None:
        if len(tables) != 1 and "table" not in tables:
            raise ValueError(
                f"input {str(path)!r}: the SpatialData store holds the tables {tables}; name one "
                "with table_key (--table-key)"
            )
        table_key = tables[0] if len(tables) == 1 else "table"
    if table_key not in tables:
        raise ValueError(
            f"table_key={table_key!r} is not a table of the SpatialData store {str(path)!r}; its tables are {tables}"
        )
    folder = path / "tables" / table_key
    adata = _lazy_zarr(folder) if backed else _read_zarr(folder)
    if spatial_key not in adata.obsm:
        adata.obsm[spatial_key] = _centroids(spatialdata, path, adata, _attrs(folder), table_key)
    return adata


def _centroids(spatialdata, path: Path, adata, attrs: dict, table_key: str) -> np.ndarray:
    """The centroids of the instances the table annotates, one row per cell of the table."""
    info = adata.uns.get("spatialdata_attrs") or attrs
    region, region_key, instance_key = (info.get(k) for k in ("region", "region_key", "instance_key"))
    if region is None or instance_key is None:
        raise ValueError(
            f"table {table_key!r} of {str(path)!r} has no coordinates in obsm and annotates no "
            "region (spatialdata_attrs region / instance_key) to take centroids from"
        )
    regions = [region] if isinstance(region, str) else list(region)
    sdata = spatialdata.read_zarr(path, selection=("shapes", "points"))
    coords = np.full((adata.n_obs, 2), np.nan)
    for name in regions:
        if name not in sdata:
            raise ValueError(f"table {table_key!r} of {str(path)!r} annotates {name!r}, which the store lacks")
        centroids = spatialdata.get_centroids(sdata[name], coordinate_system=SPATIALDATA_COORDINATE_SYSTEM)
        centroids = centroids.compute() if hasattr(centroids, "compute") else centroids
        rows = (
            np.ones(adata.n_obs, dtype=bool)
            if len(regions) == 1 or region_key is None
            else (adata.obs[region_key] == name).to_numpy()
        )
        ids = adata.obs[instance_key].to_numpy()[rows]
        missing = ~np.isin(ids, centroids.index.to_numpy())
        if missing.any():
            raise ValueError(
                f"table {table_key!r} of {str(path)!r}: {int(missing.sum())} instance(s) of "
                f"{name!r} (e.g. {ids[missing][0]!r}) are not in the element"
            )
        coords[rows] = centroids.loc[ids, ["x", "y"]].to_numpy()
    return coords
