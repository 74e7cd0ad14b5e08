"""STEP's own datasets and models on stepgraph: the dataset protocol, torch's
default collation, and STEP's stage-2 optimizer.

The STEP-shaped classes here are written from STEP's ``step/utils/dataset.py``
(``ScDataset`` over an AnnData, its ``MaskedDataset`` views, ``ScMode``) and its
models (a ``smoother`` added for stage 2); they are not stepgraph's.
"""

from enum import Enum

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import Dataset
from torch.utils.data._utils.collate import default_collate

from stepgraph import Trainer, category_random_split, make_loaders
from stepgraph.data.protocol import DatasetSubset, StepDataset
from stepgraph.train.optim import build_optimizer


class ScMode(Enum):
    single_batch = ["gene_expr"]
    multi_batches = ["gene_expr", "batch_label"]
    multi_batches_with_ct = ["gene_expr", "class_label", "batch_label"]


class StepMasked(Dataset):
    """STEP's MaskedDataset: rows of an original dataset; the mode is the original's."""

    def __init__(self, original, mask):
        self.original, self._indices = original, np.nonzero(mask)[0]

    def __len__(self):
        return len(self._indices)

    def __getitem__(self, idx):
        return self.original[self._indices[idx]]

    @property
    def mode(self):
        return self.original.mode

    def set_mode(self, mode=None):
        return self.original.set_mode(mode)

    @property
    def adata(self):
        return self.original.adata[self._indices]

    def subset(self, key=True, col=None, exclude=True):
        ind = self.adata.obs[col].isin(key) if isinstance(key, list) else self.adata.obs[col] == key
        return StepMasked(self, (~ind if exclude else ind).values)


class StepScDataset(Dataset):
    """STEP's ScDataset: dense tensors over an AnnData, items chosen by an ScMode."""

    def __init__(self, adata, batch_key=None, class_key=None):
        self.adata, self.batch_key, self.class_key = adata, batch_key, class_key
        self.gene_expr = torch.from_numpy(adata.X.toarray()).float()
        self.batch_label = (
            torch.tensor(adata.obs[batch_key].cat.codes.to_numpy(), dtype=torch.long)
            if batch_key
            else torch.ones(adata.n_obs)
        )
        self.class_label = (
            torch.tensor(adata.obs[class_key].cat.codes.to_numpy(), dtype=torch.long)
            if class_key
            else torch.ones(adata.n_obs)
        )
        self.mode = ScMode.multi_batches if batch_key else ScMode.single_batch

    def set_mode(self, mode=ScMode.multi_batches_with_ct):
        prev, self.mode = self.mode, getattr(ScMode, mode) if isinstance(mode, str) else mode
        return prev

    def subset(self, key=True, col=None, exclude=True):
        col = self.batch_key if col is None else col
        ind = self.adata.obs[col].isin(key) if isinstance(key, list) else self.adata.obs[col] == key
        return StepMasked(self, (~ind if exclude else ind).values)

    def __len__(self):
        return self.adata.n_obs

    def __getitem__(self, index):
        items = [getattr(self, name) for name in self.mode.value]
        return items[0][index] if len(items) == 1 else tuple(item[index] for item in items)


@pytest.fixture
def step_ds(adata):
    return StepScDataset(adata, batch_key="section", class_key="cell_type")


def test_a_step_dataset_follows_the_protocol_and_loads_as_torch_collates(adata, step_ds):
    obs_before = adata.obs.copy()
    assert isinstance(step_ds, StepDataset)
    train_loader, valid_loader = make_loaders(step_ds, 32, split_rate=0.25, obs_key="section", seed=1)
    train, valid = train_loader.dataset.indices, valid_loader.dataset.indices
    assert len(np.intersect1d(train, valid)) == 0 and len(train) + len(valid) == adata.n_obs
    # each section sends a quarter of its cells to validation
    for section, n in adata.obs["section"].value_counts().items():
        assert (adata.obs["section"].to_numpy()[valid] == section).sum() == round(0.25 * n)
    # a batch is torch's default collate of the items: stacked tensors, (x, batch_label)
    batch = next(iter(valid_loader))
    expected = default_collate([step_ds[int(i)] for i in valid[:32]])
    assert len(batch) == 2 and all(torch.equal(a, b) for a, b in zip(batch, expected))
    assert batch[0].shape == (32, adata.n_vars) and batch[1].shape == (32,)
    assert batch[0].device.type == "cpu" and batch[1].to("cpu").dtype == torch.long  # STEP's X.to(device)
    # STEP writes a "train" column into the user's obs; stepgraph writes nothing
    assert adata.obs.equals(obs_before)


def test_single_batch_items_collate_to_one_tensor_and_a_users_collate_fn_wins(adata):
    ds = StepScDataset(adata)  # ScMode.single_batch: an item is a bare tensor
    (loader, none) = make_loaders(ds, 50, split_rate=0, shuffle=False)
    assert none is None and loader.dataset is ds
    batch = next(iter(loader))
    assert isinstance(batch, torch.Tensor) and torch.equal(batch, ds.gene_expr[:50])
    seen = []
    loader, _ = make_loaders(ds, 50, split_rate=0, shuffle=False, collate_fn=lambda items: seen.append(items))
    next(iter(loader))
    assert len(seen[0]) == 50 and torch.equal(seen[0][3], ds.gene_expr[3])


def test_the_class_key_as_obs_key_puts_class_labels_in_the_batches(adata, step_ds):
    train_loader, valid_loader = make_loaders(step_ds, 400, split_rate=0.2, obs_key="cell_type", seed=0)
    assert step_ds.mode is ScMode.multi_batches_with_ct  # STEP's rule, on the shared mode
    x, class_label, batch_label = next(iter(valid_loader))
    rows = valid_loader.dataset.indices
    assert torch.equal(class_label, step_ds.class_label[rows])
    assert torch.equal(batch_label, step_ds.batch_label[rows])
    assert len(train_loader) == 1  # a batch larger than the data: one batch


def test_a_dataset_missing_an_attribute_gets_a_type_error_naming_it(adata, step_ds):
    class NoSubset(Dataset):  # everything of the protocol but subset
        adata, mode = step_ds.adata, step_ds.mode

        def set_mode(self, mode):
            return self.mode

        def __len__(self):
            return step_ds.adata.n_obs

        def __getitem__(self, i):
            return step_ds[i]

    with pytest.raises(TypeError, match="NoSubset, which has no attribute 'subset'"):
        make_loaders(NoSubset(), 32)
    with pytest.raises(TypeError, match="no attribute 'adata'"):
        category_random_split(torch.utils.data.TensorDataset(torch.ones(10, 2)), 0.2)
    step_ds.adata = adata.X  # not an AnnData
    with pytest.raises(TypeError, match=r"dataset\.adata .* 'obs'"):
        make_loaders(step_ds, 32)


def test_category_random_split_on_a_step_dataset_is_seeded_and_splits_the_unlabelled(adata, step_ds):
    labels = adata.obs["cell_type"].astype(object).to_numpy()
    labels[::4] = np.nan
    adata.obs["label"] = pd.Categorical(labels)
    with pytest.warns(UserWarning, match="no category"):
        train, valid = category_random_split(step_ds, 0.25, obs_key="label", seed=5)
    assert isinstance(train, DatasetSubset) and isinstance(valid, StepDataset)
    missing = np.flatnonzero(pd.isna(labels))
    assert 0 < np.isin(missing, valid.indices).sum() < len(missing)
    with pytest.warns(UserWarning):
        again = category_random_split(step_ds, 0.25, obs_key="label", seed=5)[1]
        other = category_random_split(step_ds, 0.25, obs_key="label", seed=6)[1]
    assert np.array_equal(again.indices, valid.indices) and not np.array_equal(other.indices, valid.indices)
    # the views follow the protocol: their own rows of adata, the parent's mode, nested subsets
    assert list(valid.adata.obs_names) == list(adata.obs_names[valid.indices])
    prev = valid.set_mode("single_batch")
    assert prev is ScMode.multi_batches and step_ds.mode is ScMode.single_batch
    s2 = valid.subset("s2", col="section", exclude=False)
    assert set(s2.adata.obs["section"]) == {"s2"} and np.isin(s2.indices, valid.indices).all()
    assert torch.equal(s2[0], step_ds.gene_expr[s2.indices[0]])


def test_an_unseeded_split_follows_the_users_torch_seed_and_reseeds_nothing(step_ds):
    def valid_rows(s):
        torch.manual_seed(s)
        rows = make_loaders(step_ds, 32, split_rate=0.2)[1].dataset.indices
        assert torch.initial_seed() == s  # the user's seed is still in force
        return rows

    assert np.array_equal(valid_rows(3), valid_rows(3))
    assert not np.array_equal(valid_rows(3), valid_rows(4))


class StepFunctional(Trainer):
    """A STEP functional model: overrides handle_input_tuple and calls X.to(self.device)."""

    def handle_input_tuple(self, input_tuple):
        X, batch_label = input_tuple
        return self.loss(X.to(self.device), batch_label=batch_label.to(self.device))


def test_train_batch_runs_on_a_step_dataset(adata, step_ds):
    from tests.conftest import TinyAutoencoder

    model = TinyAutoencoder(adata.n_vars, n_batches=2)
    trainer = StepFunctional(model, progress=False, trace_func=lambda m: None)
    before = model.encoder.weight.detach().clone()
    trainer.train_batch(epochs=2, loaders=make_loaders(step_ds, 64, split_rate=0.2, obs_key="section"))
    assert len(trainer.history) == 2 and "val_recon_loss" in trainer.history[-1]
    assert not torch.equal(before, model.encoder.weight)


def test_split_x_takes_a_protocol_dataset(step_ds):
    trainer = Trainer(torch.nn.Linear(2, 2), progress=False)
    train_ind, valid_ind = trainer.split_X(step_ds, 0.25)
    assert len(train_ind) + len(valid_ind) == len(step_ds) and len(valid_ind) == 100


class StepSmootherModel(torch.nn.Module):
    """STEP's model after init_smoother_with_builtin(): a pretrained body plus a new smoother."""

    def __init__(self):
        super().__init__()
        self.module = torch.nn.Linear(6, 4)
        self.decoder = torch.nn.Linear(4, 6)
        self.cls_token = torch.nn.Parameter(torch.zeros(4))
        self.batch_embedding = torch.nn.Parameter(torch.zeros(2, 4))
        self.batch_readout = torch.nn.Linear(4, 4)
        self.smoother = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))


def _lrs(optimizer):
    return {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}


def test_stage_two_trains_the_smoother_at_lr_and_the_rest_at_tune_lr():
    model = StepSmootherModel()
    lrs = _lrs(build_optimizer(model, lr=1e-3, tune_lr=1e-5, stage=2))
    smoother = {id(p) for p in model.smoother.parameters()}
    assert len(lrs) == len(list(model.parameters()))  # every parameter trains
    assert {lr for pid, lr in lrs.items() if pid in smoother} == {1e-3}
    assert {lr for pid, lr in lrs.items() if pid not in smoother} == {1e-5}
    assert lrs[id(model.cls_token)] == lrs[id(model.batch_embedding)] == 1e-5  # as in STEP
    # without tuning the batch embedding, it and the batch readout are left out
    lrs = _lrs(build_optimizer(model, lr=1e-3, tune_lr=1e-5, stage=2, tune_batch_embedding=False))
    assert id(model.batch_embedding) not in lrs and id(model.batch_readout.weight) not in lrs
    assert not model.batch_embedding.requires_grad
    assert lrs[id(model.module.weight)] == 1e-5 and lrs[id(model.smoother[0].weight)] == 1e-3


def test_stage_two_prefers_backbone_parameters_and_names_both_options_otherwise():
    class WithBackbone(StepSmootherModel):
        def backbone_parameters(self):
            return self.module.parameters()

    model = WithBackbone()
    lrs = _lrs(Trainer(model, progress=False).init_optimizer(lr=1e-3, tune_lr=1e-5, stage=2))
    assert lrs[id(model.module.weight)] == 1e-5
    assert lrs[id(model.smoother[0].weight)] == lrs[id(model.decoder.weight)] == 1e-3
    with pytest.raises(ValueError, match=r"backbone_parameters\(\).*smoother"):
        build_optimizer(torch.nn.Linear(3, 3), stage=2)


class StepValidation(StepFunctional):
    """The porting guide's recipe: STEP's mean of per-batch validation means."""

    @torch.no_grad()
    def validate_loader(self, loader, call_func=None):
        self.model.eval()
        total = {}
        for i, batch in enumerate(loader):
            total = self.cum_loss((call_func or self.handle_input_tuple)(batch), total, n_batch=i)
        return {f"val_{k}": v for k, v in total.items()}


def test_the_porting_guides_recipe_gives_steps_per_batch_validation_means(adata, step_ds):
    from tests.conftest import TinyAutoencoder

    model = TinyAutoencoder(adata.n_vars, n_batches=2)
    trainer = StepValidation(model, progress=False, trace_func=lambda m: None, restore_best=False)
    train_loader, valid_loader = make_loaders(step_ds, 30, split_rate=0.2, seed=0)  # 80 rows: 30, 30, 20
    trainer.train_batch(epochs=1, loaders=(train_loader, valid_loader))
    with torch.no_grad():
        per_batch = [float(trainer.handle_input_tuple(b)["recon_loss"]) for b in valid_loader]
        sizes = [len(b[0]) for b in valid_loader]
    assert sizes == [30, 30, 20]
    assert trainer.history[-1]["val_recon_loss"] == pytest.approx(np.mean(per_batch), rel=1e-5)
    per_sample = np.average(per_batch, weights=sizes)
    assert abs(np.mean(per_batch) - per_sample) > 1e-6  # the two means do differ here
