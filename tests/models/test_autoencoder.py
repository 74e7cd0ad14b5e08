"""Tests of the reference graph autoencoder."""

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree
from torch_geometric.data import Data
from torch_geometric.loader import NeighborLoader

from stepgraph.data.sampler import BuiltinNeighborSampler
from stepgraph.models import GraphAutoencoder
from stepgraph.models.autoencoder import _aggregates_inputs_first


def tissue(n=400, n_genes=30, n_domains=4, seed=0):
    """Cells on a square in `n_domains` vertical stripes with their own
    expression profile, log1p Poisson counts, and a symmetric 6-NN graph."""
    rng = np.random.default_rng(seed)
    pos = rng.random((n, 2))
    domain = np.minimum((pos[:, 0] * n_domains).astype(int), n_domains - 1)
    profiles = rng.gamma(2.0, 2.0, (n_domains, n_genes))
    x = np.log1p(rng.poisson(profiles[domain]))
    _, idx = cKDTree(pos).query(pos, k=7)
    src = torch.from_numpy(idx[:, 1:].reshape(-1)).long()
    dst = torch.arange(n).repeat_interleave(6)
    edge_index = torch.unique(torch.stack([torch.cat([src, dst]), torch.cat([dst, src])]), dim=1)
    return Data(
        x=torch.tensor(x, dtype=torch.float32),
        edge_index=edge_index,
        edge_weight=torch.rand(edge_index.size(1)) + 0.5,
        section=torch.from_numpy(pos[:, 1] > 0.5).long(),
        num_nodes=n,
    )


@pytest.fixture(scope="module")
def data():
    return tissue()


@pytest.mark.parametrize("conv", ["gcn", "sage", "gat"])
@pytest.mark.parametrize("variational", [False, True])
def test_shapes_and_losses(data, conv, variational):
    torch.manual_seed(0)
    model = GraphAutoencoder(30, hidden_dim=16, latent_dim=4, conv=conv, variational=variational, n_batches=2)
    z = model.encode(data.x, data.edge_index, data.edge_weight)
    assert z.shape == (400, 4)
    assert model(data.x, data.edge_index, batch_label=data.section).shape == (400, 30)

    losses = model.loss(
        data.x, ind=torch.arange(50), edge_index=data.edge_index, edge_weight=data.edge_weight, batch_label=data.section
    )
    assert set(losses) == ({"recon_loss", "kl_loss"} if variational else {"recon_loss"})
    for value in losses.values():
        assert value.dim() == 0 and torch.isfinite(value) and value.requires_grad
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.backbone_parameters())
    assert model.batch_embedding.weight.grad is not None


@pytest.mark.parametrize("variational", [False, True])
def test_loss_over_ind_equals_loss_on_subset_without_graph(data, variational):
    model = GraphAutoencoder(30, hidden_dim=16, latent_dim=4, variational=variational, n_batches=2)
    ind = torch.randperm(400)[:37]
    # Same RNG state: the posterior sample of the subset is drawn the same way.
    torch.manual_seed(1)
    on_ind = model.loss(data.x, ind=ind, batch_label=data.section)
    torch.manual_seed(1)
    on_subset = model.loss(data.x[ind], batch_label=data.section[ind])
    for key in on_subset:
        torch.testing.assert_close(on_ind[key], on_subset[key])
    # A boolean mask selects the same nodes.
    mask = torch.zeros(400, dtype=torch.bool)
    mask[ind] = True
    model.eval()
    torch.testing.assert_close(
        model.loss(data.x, ind=mask, batch_label=data.section)["recon_loss"],
        model.loss(data.x[mask], batch_label=data.section[mask])["recon_loss"],
    )


def test_loss_over_ind_uses_neighbours_and_averages_over_ind(data):
    model = GraphAutoencoder(30, hidden_dim=16, latent_dim=4).eval()
    ind = torch.randperm(400)[:60]
    loss = model.loss(data.x, ind=ind, edge_index=data.edge_index)["recon_loss"]
    recon = model(data.x, data.edge_index)
    expected = ((recon[ind] - data.x[ind]) ** 2).mean()
    torch.testing.assert_close(loss, expected)
    # The neighbours matter: without the graph the same nodes give another loss.
    assert not torch.isclose(loss, model.loss(data.x, ind=ind)["recon_loss"])


def test_no_graph_path_is_per_node(data):
    model = GraphAutoencoder(30, hidden_dim=16, latent_dim=4, conv="gcn").eval()
    z = model.encode(data.x)
    torch.testing.assert_close(z[:10], model.encode(data.x[:10]))


def test_kl_only_when_variational(data):
    plain = GraphAutoencoder(30, hidden_dim=8, latent_dim=4)
    assert "kl_loss" not in plain.loss(data.x, edge_index=data.edge_index)
    vae = GraphAutoencoder(30, hidden_dim=8, latent_dim=4, variational=True)
    kl = vae.loss(data.x, edge_index=data.edge_index)["kl_loss"]
    assert kl >= 0
    # In eval mode the embedding is the posterior mean: deterministic.
    vae.eval()
    torch.testing.assert_close(vae.encode(data.x, data.edge_index), vae.encode(data.x, data.edge_index))


def test_batch_embedding_and_parameter_groups(data):
    model = GraphAutoencoder(30, hidden_dim=8, latent_dim=4, n_batches=3, batch_emb_dim=5)
    assert isinstance(model.batch_embedding, torch.nn.Embedding)
    assert model.batch_embedding.weight.shape == (3, 5)
    names = {n for n, _ in model.named_parameters() if "batch_embedding" in n}
    assert names == {"batch_embedding.weight"}
    backbone = {id(p) for p in model.backbone_parameters()}
    by_name = dict(model.named_parameters())
    assert backbone == {id(p) for n, p in by_name.items() if n.startswith(("convs.", "mu."))}
    assert id(model.batch_embedding.weight) not in backbone
    assert not any(id(p) in backbone for p in model.decoder.parameters())

    z = torch.zeros(2, 4)
    out = model.decode(z, torch.tensor([0, 1]))
    assert not torch.allclose(out[0], out[1])  # the section shifts the decoding
    with pytest.raises(ValueError, match="batch_label"):
        model.loss(data.x)


def test_bad_arguments():
    with pytest.raises(ValueError, match="conv"):
        GraphAutoencoder(10, conv="gin")
    with pytest.raises(ValueError, match="latent_dim"):
        GraphAutoencoder(10, latent_dim=0)
    with pytest.raises(ValueError, match="dropout"):
        GraphAutoencoder(10, dropout=1.5)


@pytest.mark.parametrize("conv,variational", [("gcn", False), ("sage", True), ("gat", False)])
def test_training_reduces_recon_loss(data, conv, variational):
    torch.manual_seed(0)
    model = GraphAutoencoder(30, hidden_dim=32, latent_dim=8, conv=conv, variational=variational)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def recon():
        model.eval()
        with torch.no_grad():
            out = model.loss(data.x, edge_index=data.edge_index)["recon_loss"].item()
        model.train()
        return out

    initial = recon()
    for _ in range(150):
        optimizer.zero_grad()
        sum(model.loss(data.x, edge_index=data.edge_index).values()).backward()
        optimizer.step()
    assert recon() < 0.5 * initial


def test_trains_on_sampled_minibatches(data):
    torch.manual_seed(0)
    model = GraphAutoencoder(30, hidden_dim=32, latent_dim=8, n_layers=2, n_batches=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    sampler = BuiltinNeighborSampler(data, [5, 5])
    loader = NeighborLoader(data, [5, 5], batch_size=64, shuffle=True, neighbor_sampler=sampler)

    def epoch(train):
        total, n = 0.0, 0
        for batch in loader:
            ind = torch.arange(batch.batch_size)
            losses = model.loss(
                batch.x, ind=ind, edge_index=batch.edge_index, edge_weight=batch.edge_weight, batch_label=batch.section
            )
            if train:
                optimizer.zero_grad()
                sum(losses.values()).backward()
                optimizer.step()
            total += losses["recon_loss"].item() * batch.batch_size
            n += batch.batch_size
        return total / n

    with torch.no_grad():
        initial = epoch(train=False)
    for _ in range(8):
        epoch(train=True)
    with torch.no_grad():
        assert epoch(train=False) < 0.5 * initial


def test_seed_embeddings_match_full_graph_with_all_neighbours(data):
    # SAGE on a full-fan-out sampled subgraph is exact for the seed nodes.
    model = GraphAutoencoder(30, hidden_dim=16, latent_dim=4, conv="sage").eval()
    full = model.encode(data.x, data.edge_index)
    loader = NeighborLoader(data, [-1, -1], batch_size=100, neighbor_sampler=BuiltinNeighborSampler(data, [-1, -1]))
    for batch in loader:
        z = model.encode(batch.x, batch.edge_index)[: batch.batch_size]
        torch.testing.assert_close(z, full[batch.n_id[: batch.batch_size]])


# --------------------------------------------------------------------------- #
# Layer-wise trimming: same losses and gradients, less work
# --------------------------------------------------------------------------- #


def _hop_counts(batch):
    return {"num_sampled_nodes_per_hop": batch.num_sampled_nodes, "num_sampled_edges_per_hop": batch.num_sampled_edges}


@pytest.mark.parametrize("conv", ["gcn", "sage", "gat"])
@pytest.mark.parametrize("fanout", [[4, 3], [3, 2, 2]])
@pytest.mark.parametrize("hidden", [16, 48])  # 48 > 30 inputs: GAT's first layer aggregates its inputs first
def test_trimmed_losses_and_gradients_equal_untrimmed(data, conv, fanout, hidden):
    torch.manual_seed(0)
    model = GraphAutoencoder(
        30, hidden_dim=hidden, latent_dim=4, conv=conv, n_layers=2, variational=True, n_batches=2
    ).eval()  # eval: no sampling noise
    loader = NeighborLoader(
        data, fanout, batch_size=64, shuffle=True, neighbor_sampler=BuiltinNeighborSampler(data, fanout)
    )
    assert _aggregates_inputs_first(model.convs[0]) == (conv == "gat" and hidden > 30)
    batch = next(iter(loader))
    ind = torch.arange(batch.batch_size)
    args = dict(ind=ind, edge_index=batch.edge_index, edge_weight=batch.edge_weight, batch_label=batch.section)
    full = model.loss(batch.x, **args)
    trimmed = model.loss(batch.x, **args, **_hop_counts(batch))
    params = list(model.parameters())
    for key in full:
        torch.testing.assert_close(trimmed[key], full[key], rtol=1e-6, atol=1e-7)
    grads_full = torch.autograd.grad(sum(full.values()), params, allow_unused=True)
    grads_trim = torch.autograd.grad(sum(trimmed.values()), params, allow_unused=True)
    for a, b in zip(grads_full, grads_trim, strict=True):
        if a is not None:
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
    # encode: only the seeds, the same embeddings
    seeds = model.encode(batch.x, batch.edge_index, batch.edge_weight, **_hop_counts(batch))
    assert seeds.shape == (batch.batch_size, 4)
    torch.testing.assert_close(seeds, model.encode(batch.x, batch.edge_index, batch.edge_weight)[: batch.batch_size])


def test_trimming_is_skipped_where_it_would_not_be_exact(data):
    torch.manual_seed(0)
    model = GraphAutoencoder(30, hidden_dim=8, latent_dim=4)
    batch = next(
        iter(NeighborLoader(data, [4, 3], batch_size=32, neighbor_sampler=BuiltinNeighborSampler(data, [4, 3])))
    )
    # losses of non-seed nodes: computed untrimmed, so still right
    ind = torch.arange(batch.batch_size + 20)
    loss = model.loss(batch.x, ind=ind, edge_index=batch.edge_index, **_hop_counts(batch))
    torch.testing.assert_close(
        loss["recon_loss"], model.loss(batch.x, ind=ind, edge_index=batch.edge_index)["recon_loss"]
    )
    with pytest.raises(ValueError, match="one entry more"):
        model.loss(
            batch.x,
            ind=ind,
            edge_index=batch.edge_index,
            num_sampled_nodes_per_hop=[32, 10],
            num_sampled_edges_per_hop=[5, 5],
        )


def test_gcn_normalised_once_equals_pyg_gcnconv(data):
    # the reference model normalises once per forward pass: the outputs of
    # PyG's own GCNConv (normalising in every layer) with the same weights
    from torch_geometric.nn import GCNConv

    torch.manual_seed(0)
    model = GraphAutoencoder(30, hidden_dim=16, latent_dim=4, n_layers=2)
    h = data.x
    for conv in model.convs:
        reference = GCNConv(conv.in_channels, conv.out_channels)
        reference.load_state_dict(conv.state_dict())
        h = torch.relu(reference(h, data.edge_index, data.edge_weight))
    torch.testing.assert_close(model.encode(data.x, data.edge_index, data.edge_weight), model.mu(h))
