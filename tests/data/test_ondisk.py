"""Features read from disk per batch: backed h5ad, lazily read zarr."""

import warnings

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from stepgraph import BaseDataset
from stepgraph.data.ondisk import RowReader, is_on_disk
from stepgraph.pipeline import PipelineConfig, log_normalise, run_pipeline
from stepgraph.synthetic import synthetic_tissue
from tests.conftest import make_adata

# rows of a batch: unordered, with repeats (a node can be a seed's neighbour twice)
ROWS = np.array([399, 3, 3, 250, 0, 17, 399, 100, 101, 102, 5])


@pytest.fixture
def h5ad_file(tmp_path, adata):
    path = tmp_path / "tissue.h5ad"
    adata.write_h5ad(path)
    return path


def lazy_zarr(adata, path):
    """An AnnData whose X stays in a zarr store (anndata's sparse dataset over zarr)."""
    import zarr
    from anndata.io import sparse_dataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr v2 format notice
        adata.write_zarr(path)
    return ad.AnnData(X=sparse_dataset(zarr.open(path, mode="r")["X"]), obs=adata.obs)


@pytest.mark.parametrize("source", ["h5ad", "h5ad-gzip", "h5ad-dense", "zarr"])
def test_batches_read_from_disk_equal_the_in_memory_rows(tmp_path, adata, source):
    path = tmp_path / "x.h5ad"
    if source == "zarr":
        disk = lazy_zarr(adata, tmp_path / "x.zarr")
    else:
        stored = adata.copy()
        if source == "h5ad-dense":
            stored.X = stored.X.toarray()
        stored.write_h5ad(path, compression="gzip" if source == "h5ad-gzip" else None)
        disk = ad.read_h5ad(path, backed="r")
    memory = BaseDataset(adata, batch_key="section")
    ondisk = BaseDataset(disk, batch_key="section")
    assert ondisk.reader is not None and "on-disk" in repr(ondisk)
    x, labels = ondisk[ROWS]
    expected_x, expected_labels = memory[ROWS]
    assert x.dtype == torch.float32
    assert torch.equal(x, expected_x)
    assert torch.equal(labels, expected_labels)
    # each distinct row is read once
    assert ondisk.reader.rows_read == np.unique(ROWS).size
    # a subset reads through its parent's reader
    sub = ondisk.subset("s2", col="section", exclude=False)
    assert torch.equal(sub.features([0, 5, 0]), memory.subset("s2", col="section", exclude=False).features([0, 5, 0]))


def test_chunked_reads_with_small_gaps_are_exact(h5ad_file, adata):
    # no memory map (max_gap applies to slice reads only): every run is a slice
    backed = ad.read_h5ad(h5ad_file, backed="r")
    reader = RowReader(backed.X, max_gap=0)
    for extents in (reader._data, reader._indices):
        extents._map = None
    unique, block, inverse = reader.read_unique(ROWS)
    assert np.array_equal(unique, np.unique(ROWS))
    assert (block[inverse] != adata.X[ROWS]).nnz == 0


def test_row_transform_normalises_each_batch_like_the_whole_matrix(h5ad_file, adata):
    whole = log_normalise(adata.X)[ROWS].toarray()
    for source in (adata, ad.read_h5ad(h5ad_file, backed="r")):
        ds = BaseDataset(source, row_transform=log_normalise)
        np.testing.assert_array_equal(ds.features(ROWS).numpy(), whole)
    with pytest.raises(TypeError, match="row_transform"):
        BaseDataset(adata, row_transform="log1p")


def test_nan_in_a_batch_names_the_cell(tmp_path, adata):
    bad = adata.copy()
    X = bad.X.toarray()
    X[7, 2] = np.nan
    X[300, 1] = np.inf
    bad.X = sp.csr_matrix(X)
    bad.write_h5ad(tmp_path / "bad.h5ad")
    ds = BaseDataset(ad.read_h5ad(tmp_path / "bad.h5ad", backed="r"))  # no up-front scan
    assert ds.features([1, 2, 3]).shape == (3, adata.n_vars)  # clean rows are fine
    with pytest.raises(ValueError, match=r"2 NaN or infinite.*'cell7' \(row 7\)"):
        ds.features([300, 7, 1])


def test_csc_on_disk_is_refused_with_the_reason(tmp_path, adata):
    csc = adata.copy()
    csc.X = sp.csc_matrix(csc.X)
    csc.write_h5ad(tmp_path / "csc.h5ad")
    with pytest.raises(ValueError, match="CSC"):
        BaseDataset(ad.read_h5ad(tmp_path / "csc.h5ad", backed="r"))
    assert not is_on_disk(adata.X) and not is_on_disk(adata.X.toarray())
    with pytest.raises(TypeError, match="on-disk"):
        RowReader(adata.X)


def test_backed_pipeline_equals_in_memory_and_keeps_x_on_disk(tmp_path):
    tissue = synthetic_tissue(n_cells=600, n_genes=30, seed=3)
    path = tmp_path / "tissue.h5ad"
    tissue.write_h5ad(path)
    summaries = {}
    for backed in (False, True):
        adata = ad.read_h5ad(path, backed="r" if backed else None)
        config = PipelineConfig(
            batch_key="section",
            epochs=2,
            batch_size=128,
            hidden_dim=16,
            latent_dim=4,
            n_domains=3,
            progress=False,
            backed=backed,
        )
        summaries[backed] = run_pipeline(adata, tmp_path / f"out{backed}", config)
        if backed:
            assert adata.isbacked  # X never loaded into the object
    memory, disk = (ad.read_h5ad(tmp_path / f"out{b}" / "adata.h5ad") for b in (False, True))
    np.testing.assert_allclose(disk.obsm["X_stepgraph"], memory.obsm["X_stepgraph"], rtol=1e-5, atol=1e-6)
    assert (disk.X != tissue.X).nnz == 0  # the output holds the input's counts
    assert list(disk.obs["stepgraph_domain"]) == list(memory.obs["stepgraph_domain"])
    assert (disk.obsp["spatial_connectivities"] != memory.obsp["spatial_connectivities"]).nnz == 0
    assert "X_stepgraph" not in ad.read_h5ad(path).obsm  # the input file is untouched
    stages = [row["stage"] for row in summaries[True]["stages"]]
    assert stages == ["graph", "features", "epoch 1", "epoch 2", "embedding", "clustering", "write"]
    assert all(row["seconds"] >= 0 and row["peak_rss_mb"] > 0 for row in summaries[True]["stages"])
    with pytest.raises(ValueError, match="backed AnnData"):
        run_pipeline(tissue, tmp_path / "x", PipelineConfig(backed=True, epochs=1, progress=False))


def test_train_backed_from_the_command_line(tmp_path, capsys):
    from stepgraph.cli import main

    tissue = make_adata(n_obs=300)
    tissue.X = sp.csr_matrix(np.expm1(tissue.X.toarray()).round())  # counts
    tissue.write_h5ad(tmp_path / "in.h5ad")
    status = main(
        [
            "train",
            str(tmp_path / "in.h5ad"),
            "--backed",
            "--epochs",
            "1",
            "--quiet",
            "--batch-key",
            "section",
            "--n-domains",
            "2",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert status == 0, capsys.readouterr().err
    out = ad.read_h5ad(tmp_path / "out" / "adata.h5ad")
    assert out.obsm["X_stepgraph"].shape[0] == 300
    import json

    stages = json.loads((tmp_path / "out" / "summary.json").read_text())["stages"]
    assert stages[0]["stage"] == "read" and stages[-1]["stage"] == "write"


def test_backed_pipeline_names_a_cell_with_nan_counts(tmp_path):
    tissue = synthetic_tissue(n_cells=300, n_genes=20, seed=1)
    x = tissue.X.toarray()
    x[7, 3] = np.nan
    tissue.X = sp.csr_matrix(x)
    tissue.write_h5ad(tmp_path / "nan.h5ad")
    backed = ad.read_h5ad(tmp_path / "nan.h5ad", backed="r")
    with pytest.raises(ValueError, match=r"1 NaN or infinite value\(s\) in 1 of 300 rows read; the first is in row 7"):
        run_pipeline(backed, tmp_path / "out", PipelineConfig(backed=True, epochs=1, progress=False))
