import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from stepgraph import BaseDataset, MaskedDataset, Trainer, category_random_split
from stepgraph.data.split import random_split_indices
from tests.conftest import make_adata


def test_sparse_x_stays_sparse_and_rows_densify_per_batch(adata):
    ds = BaseDataset(adata)
    assert sp.issparse(ds.X) and ds.X is adata.X  # no copy of the user's matrix
    rows = np.array([5, 0, 17])
    (x,) = ds[rows]
    assert x.dtype == torch.float32 and x.shape == (3, adata.n_vars)
    np.testing.assert_allclose(x.numpy(), adata.X[rows].toarray())


def test_modes_labels_and_h5ad_round_trip(tmp_path):
    path = tmp_path / "tissue.h5ad"
    make_adata().write_h5ad(path)
    adata = ad.read_h5ad(path)
    ds = BaseDataset(adata, batch_key="section", class_key="cell_type")
    assert ds.mode == "multi_batches_with_ct"
    x, c, b = ds[np.arange(10)]  # STEP's order: the batch label last
    expected_b = adata.obs["section"].cat.codes.to_numpy()[:10]
    expected_c = adata.obs["cell_type"].cat.codes.to_numpy()[:10]
    assert torch.equal(b, torch.from_numpy(expected_b.astype(np.int64)))
    assert torch.equal(c, torch.from_numpy(expected_c.astype(np.int64)))
    ds.set_mode("multi_batches")
    assert len(ds[np.arange(4)]) == 2
    ds.set_mode("single_batch")
    assert len(ds[np.arange(4)]) == 1
    single = ds[3]
    assert single[0].shape == (adata.n_vars,)


def test_layer_key_reads_the_layer(adata):
    adata.layers["counts"] = adata.X.multiply(2).tocsr()
    (x,) = BaseDataset(adata, layer_key="counts")[np.arange(5)]
    np.testing.assert_allclose(x.numpy(), 2 * adata.X[:5].toarray(), rtol=1e-6)


def test_subset_and_masked_dataset(adata):
    ds = BaseDataset(adata, batch_key="section")
    s1 = ds.subset("s1", col="section", exclude=False)  # STEP's subset(key, col, exclude)
    assert isinstance(s1, MaskedDataset)
    assert set(s1.obs["section"]) == {"s1"} and len(s1) == (adata.obs["section"] == "s1").sum()
    not_t = ds.subset(["T"], col="cell_type")  # exclude=True by default, as in STEP
    assert "T" not in set(not_t.obs["cell_type"])
    nested = not_t.subset("s2", exclude=False)  # col defaults to batch_key
    assert set(nested.obs["section"]) == {"s2"} and "T" not in set(nested.obs["cell_type"])
    x, b = nested[np.arange(len(nested))]
    np.testing.assert_allclose(x.numpy(), adata.X[nested.row_index].toarray())
    assert (b == 1).all()
    # the view's adata is its own rows, as the dataset protocol has it
    assert nested.adata.n_obs == len(nested)
    assert list(nested.adata.obs_names) == list(adata.obs_names[nested.row_index])
    with pytest.raises(KeyError, match="col='nope'"):
        ds.subset("x", col="nope")


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"batch_key": "nope"}, KeyError, "batch_key='nope'"),
        ({"class_key": "nope"}, KeyError, "class_key='nope'"),
        ({"layer_key": "nope"}, KeyError, "layer_key='nope'"),
        ({"mode": "multi_batches"}, ValueError, "needs batch_key"),
        ({"mode": "weird"}, ValueError, "mode must be one of"),
    ],
)
def test_dataset_bad_input(adata, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        BaseDataset(adata, **kwargs)


def test_category_split_proportions_seeding_disjointness(adata):
    obs_before = adata.obs.copy()
    ds = BaseDataset(adata)
    train, valid = category_random_split(ds, 0.25, obs_key="cell_type", seed=3)
    assert not np.intersect1d(train.indices, valid.indices).size
    assert np.array_equal(np.sort(np.concatenate([train.indices, valid.indices])), np.arange(len(ds)))
    counts = adata.obs["cell_type"].value_counts()
    valid_counts = valid.obs["cell_type"].value_counts()
    for cat, n in counts.items():
        assert valid_counts[cat] == round(0.25 * n)
    again = category_random_split(ds, 0.25, obs_key="cell_type", seed=3)[1]
    other = category_random_split(ds, 0.25, obs_key="cell_type", seed=4)[1]
    assert np.array_equal(again.indices, valid.indices)
    assert not np.array_equal(other.indices, valid.indices)
    # nothing written into the user's obs
    assert list(adata.obs.columns) == list(obs_before.columns)
    assert adata.obs.equals(obs_before)


def test_small_categories_land_in_both_sets():
    adata = make_adata(n_obs=60)
    labels = np.array(["big"] * 50 + ["pair"] * 2 + ["trio"] * 3 + ["five"] * 4 + ["solo"])
    adata.obs["label"] = labels
    train, valid = category_random_split(BaseDataset(adata), 0.05, obs_key="label")
    for cat in ["big", "pair", "trio", "five"]:
        assert cat in set(train.obs["label"]) and cat in set(valid.obs["label"])
    assert "solo" in set(train.obs["label"]) and "solo" not in set(valid.obs["label"])


def test_category_split_missing_column(adata):
    with pytest.raises(KeyError, match="obs_key='nope'"):
        category_random_split(BaseDataset(adata), 0.2, obs_key="nope")


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_split_rate_outside_range(rate):
    with pytest.raises(ValueError, match="split_rate"):
        random_split_indices(10, rate)


def test_make_loaders_split_shuffle_and_validation_order(adata):
    ds = BaseDataset(adata, batch_key="section")
    train_loader, valid_loader = Trainer.make_loaders(ds, 32, split_rate=0.2, obs_key="section")
    assert len(train_loader.dataset) + len(valid_loader.dataset) == adata.n_obs
    x, b = next(iter(train_loader))
    assert x.shape == (32, adata.n_vars) and b.shape == (32,)
    # the validation loader does not shuffle: same order twice, in dataset order
    first = torch.cat([batch[0] for batch in valid_loader])
    second = torch.cat([batch[0] for batch in valid_loader])
    assert torch.equal(first, second)
    expected = adata.X[valid_loader.dataset.indices].toarray()
    np.testing.assert_allclose(first.numpy(), expected)
    # the training loader shuffles, reproducibly for a seed
    a = torch.cat([batch[0] for batch in Trainer.make_loaders(ds, 32, seed=1)[0]])
    b2 = torch.cat([batch[0] for batch in Trainer.make_loaders(ds, 32, seed=1)[0]])
    assert torch.equal(a, b2)
    in_order = adata.X[Trainer.make_loaders(ds, 32, seed=1)[0].dataset.indices].toarray()
    assert not np.allclose(a.numpy(), in_order)


def test_make_loaders_without_validation_and_bad_batch_size(adata):
    ds = BaseDataset(adata)
    train_loader, valid_loader = Trainer.make_loaders(ds, 50, split_rate=0)
    assert valid_loader is None and len(train_loader.dataset) == adata.n_obs
    with pytest.raises(ValueError, match="batch_size"):
        Trainer.make_loaders(ds, 0)
