"""Inputs large tissues come in: AnnData .zarr (in memory, lazily) and SpatialData .zarr tables."""

import json
import warnings

import numpy as np
import pytest

from stepgraph import BaseDataset, synthetic_tissue
from stepgraph.cli import main
from stepgraph.data.ondisk import is_on_disk
from stepgraph.data.readers import read_anndata, store_kind


def _write_zarr(adata, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr format notices
        adata.write_zarr(path)
    return path


@pytest.fixture(scope="module")
def tissue():
    return synthetic_tissue(n_cells=600, n_genes=40, seed=2)


def test_anndata_zarr_in_memory_and_lazily(tissue, tmp_path):
    path = _write_zarr(tissue, tmp_path / "t.zarr")
    assert store_kind(path) == "anndata-zarr"
    memory = read_anndata(path)
    assert not is_on_disk(memory.X)
    np.testing.assert_array_equal(memory.X.toarray(), tissue.X.toarray())
    lazy = read_anndata(path, backed=True)
    assert is_on_disk(lazy.X)  # X stays in the store
    np.testing.assert_array_equal(lazy.obsm["spatial"], tissue.obsm["spatial"])
    assert list(lazy.obs["domain"]) == list(tissue.obs["domain"])
    rows = np.array([5, 3, 599, 3])
    np.testing.assert_array_equal(BaseDataset(lazy).features(rows).numpy(), tissue.X[rows].toarray().astype(np.float32))


def test_a_dense_zarr_x_is_read_by_rows(tissue, tmp_path):
    dense = tissue.copy()
    dense.X = dense.X.toarray()
    lazy = read_anndata(_write_zarr(dense, tmp_path / "d.zarr"), backed=True)
    assert is_on_disk(lazy.X)
    np.testing.assert_array_equal(BaseDataset(lazy).features([7, 1]).numpy(), dense.X[[7, 1]])


def test_a_folder_that_is_no_store_is_refused(tmp_path):
    (tmp_path / "plain").mkdir()
    assert store_kind(tmp_path / "plain") is None
    with pytest.raises(ValueError, match="not a zarr store"):
        read_anndata(tmp_path / "plain")


@pytest.mark.parametrize("backed", [False, True])
def test_train_reads_a_zarr_store(tissue, tmp_path, backed):
    path = _write_zarr(tissue, tmp_path / "t.zarr")
    out = tmp_path / "out"
    argv = [
        "train",
        str(path),
        "--batch-key",
        "section",
        "--truth-key",
        "domain",
        "--epochs",
        "1",
        "--quiet",
        "--out",
        str(out),
    ] + (["--backed"] if backed else [])
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_obs"] == tissue.n_obs and summary["ari"] is not None


# ------------------------------------------------------------------ SpatialData
def _spatialdata_store(tissue, path, with_coordinates: bool):
    sd = pytest.importorskip("spatialdata")
    import pandas as pd
    from spatialdata.models import ShapesModel, TableModel

    n = tissue.n_obs
    table = tissue.copy()
    # the cells are annotated in reverse order of the shapes: centroids are matched by instance id
    table.obs["region"] = pd.Categorical(["cells"] * n)
    table.obs["cell_id"] = np.arange(n)[::-1]
    xy = tissue.obsm["spatial"][::-1].copy()
    if not with_coordinates:
        del table.obsm["spatial"]
    table = TableModel.parse(table, region="cells", region_key="region", instance_key="cell_id")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        circles = ShapesModel.parse(xy, geometry=0, radius=np.ones(n))
        sd.SpatialData(shapes={"cells": circles}, tables={"table": table}).write(path)
    return path


@pytest.mark.parametrize("with_coordinates", [True, False])
def test_spatialdata_table(tissue, tmp_path, with_coordinates):
    path = _spatialdata_store(tissue, tmp_path / "s.zarr", with_coordinates)
    assert store_kind(path) == "spatialdata"
    for backed in (False, True):
        adata = read_anndata(path, backed=backed)
        assert adata.n_obs == tissue.n_obs and is_on_disk(adata.X) == backed
        # from obsm, or the centroids of the annotated circles, matched by cell_id
        np.testing.assert_allclose(adata.obsm["spatial"], tissue.obsm["spatial"], rtol=1e-6)
    with pytest.raises(ValueError, match="is not a table.*'table'"):
        read_anndata(path, table_key="cells")


def test_train_reads_a_spatialdata_table(tissue, tmp_path):
    path = _spatialdata_store(tissue, tmp_path / "s.zarr", with_coordinates=False)
    out = tmp_path / "out"
    assert (
        main(
            [
                "train",
                str(path),
                "--table-key",
                "table",
                "--batch-key",
                "section",
                "--epochs",
                "1",
                "--quiet",
                "--backed",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert json.loads((out / "summary.json").read_text())["n_obs"] == tissue.n_obs
