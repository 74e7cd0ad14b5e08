"""BANKSY-style neighbourhood features: each block against a direct computation."""

import numpy as np
import pytest
from scipy.spatial import cKDTree

from stepgraph.pipeline.neighborhood import neighborhood_features


def _direct(x, xy, k):
    """The three blocks, computed cell by cell from their definition (before block scaling)."""
    tree = cKDTree(xy)
    own, mean, grad = [], [], []
    for i in range(len(xy)):
        d, j = tree.query(xy[i], k=k + 1)
        d, j = d[1:], j[1:]
        w = np.exp(-((d / np.median(d)) ** 2))
        mean.append((w / w.sum()) @ x[j])
        d2, j2 = tree.query(xy[i], k=2 * k + 1)
        d2, j2 = d2[1:], j2[1:]
        w2 = np.exp(-((d2 / np.median(d2)) ** 2))
        theta = np.arctan2(xy[j2, 1] - xy[i, 1], xy[j2, 0] - xy[i, 0])
        phase = w2 / w2.sum() * np.exp(1j * theta)
        grad.append(np.abs(phase @ (x[j2] - x[j2].mean(axis=0))))
        own.append(x[i])
    return [np.array(b) for b in (own, mean, grad)]


def _unit(block):
    block = block - block.mean(axis=0)
    return block / np.sqrt((block**2).mean())


def test_blocks_match_their_definition_and_lambda_weighs_them():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 10, size=(120, 2))
    x = rng.normal(size=(120, 4)).astype(np.float32)
    x_before = x.copy()
    blocks = neighborhood_features(x, xy, n_neighbors=5, lam=0.6, n_components=None)
    own, mean, grad = _direct(x.astype(np.float64), xy, 5)
    expected = np.hstack([np.sqrt(0.4) * _unit(own), np.sqrt(0.4) * _unit(mean), np.sqrt(0.2) * _unit(grad)])
    np.testing.assert_allclose(blocks, expected, atol=2e-4)
    np.testing.assert_array_equal(x, x_before)  # the input is not changed
    without = neighborhood_features(x, xy, n_neighbors=5, lam=0.6, gradient=False, n_components=None)
    np.testing.assert_allclose(without, np.hstack([np.sqrt(0.4) * _unit(own), np.sqrt(0.6) * _unit(mean)]), atol=2e-4)


def test_the_gradient_block_sees_a_ramp_and_not_a_constant_and_components_are_returned():
    g = np.stack(np.meshgrid(np.arange(20.0), np.arange(20.0)), axis=-1).reshape(-1, 2)
    interior = (g.min(axis=1) >= 4) & (g.max(axis=1) <= 15)
    # a field rising along x, the same field reflected, and a constant one
    x = np.stack([g[:, 0], -g[:, 0], np.full(400, 3.0)], axis=1).astype(np.float32)
    grad = neighborhood_features(x, g, n_neighbors=8, n_components=None)[:, 6:]
    np.testing.assert_allclose(grad[interior, 0], grad[interior, 1], atol=1e-4)  # a modulus: the sign is gone
    assert np.abs(grad[:, 2]).max() < 1e-4  # no change across any neighbourhood
    assert grad[:, 0].std() > 0
    out = neighborhood_features(x[:, :2], g, n_neighbors=8, n_components=3)
    assert out.shape == (400, 3) and out.dtype == np.float32


@pytest.mark.parametrize(
    "kwargs, message",
    [({"lam": 1.0}, "lam"), ({"n_neighbors": 0}, "n_neighbors"), ({"expression": np.zeros((3, 2))}, "expression")],
)
def test_bad_arguments_are_named(kwargs, message):
    args = {"expression": np.zeros((5, 2)), "coordinates": np.random.default_rng(0).normal(size=(5, 2))}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        neighborhood_features(**args)


def test_the_pipeline_and_its_untrained_baseline_read_neighbourhood_features(tmp_path):
    from stepgraph.pipeline import PipelineConfig, run_pipeline
    from stepgraph.pipeline.baselines import pca_kmeans_domains, untrained_pipeline_domains
    from stepgraph.pipeline.domains import adjusted_rand_index
    from stepgraph.synthetic import synthetic_tissue

    adata = synthetic_tissue(n_cells=800, n_sections=2, n_genes=40, seed=4)
    config = PipelineConfig(
        features="neighborhood", batch_key="section", truth_key="domain", epochs=3, batch_size=256, progress=False
    )
    summary = run_pipeline(adata, tmp_path, config)
    used = summary["config"]
    assert (used["features"], used["n_pcs"], used["feature_smooth"]) == ("neighborhood", 50, 0)
    assert summary["features"]["components"] == config.neighborhood_components  # what the model reads
    plain = adjusted_rand_index(adata.obs["domain"], pca_kmeans_domains(adata, 5, seed=0))
    untrained = untrained_pipeline_domains(adata, 5, seed=0, config=config)
    assert adjusted_rand_index(adata.obs["domain"], untrained) > plain + 0.2
    assert summary["ari"] > plain + 0.2


def test_the_features_are_the_same_whatever_the_chunks_of_cells(monkeypatch):
    import stepgraph.graph.ops as ops
    import stepgraph.pipeline.neighborhood as neighborhood

    rng = np.random.default_rng(5)
    xy, x = rng.uniform(0, 20, (400, 2)), rng.normal(size=(400, 6)).astype(np.float32)
    sections = rng.integers(0, 2, 400)
    whole = neighborhood_features(x, xy, sections, n_neighbors=5, n_components=None)
    monkeypatch.setattr(ops, "_KERNEL_CHUNK", 9)
    monkeypatch.setattr(neighborhood, "_ROW_CHUNK", 11)
    chunked = neighborhood_features(x, xy, sections, n_neighbors=5, n_components=None)
    assert np.array_equal(chunked, whole)
    assert np.isfinite(whole).all() and whole[:, 12:].std() > 0  # the gradient block is not empty
