"""Several sections, one set of domains: the integration helpers and the
pipeline on sections that differ (stepgraph.pipeline.integration)."""

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from stepgraph.pipeline.domains import adjusted_rand_index
from stepgraph.pipeline.integration import (
    cluster_per_section,
    domain_counts,
    embedding_2d,
    harmonize,
    integration_report,
    section_mixing,
    split_domains,
)

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
DLPFC4 = SHARED / "data" / "real" / "dlpfc_donor3_4sections.h5ad"


def _blobs(n=300, shift=0.0, seed=0):
    """Three sections of the same two clusters; section s is shifted by s * shift."""
    rng = np.random.default_rng(seed)
    sections = np.repeat(np.arange(3), n)
    cluster = rng.integers(0, 2, 3 * n)
    x = rng.normal(size=(3 * n, 4)) + 6.0 * cluster[:, None]
    x[:, 1] += shift * sections
    return x, sections, cluster


def test_section_mixing_is_one_for_mixed_sections_and_zero_for_separated_ones():
    x, sections, _ = _blobs()
    assert section_mixing(x, sections) > 0.9
    far, _, _ = _blobs(shift=100.0)
    assert section_mixing(far, sections) < 0.05
    # a few cells scored (drawn at random) give about the same
    assert abs(section_mixing(x, sections, max_cells=200) - section_mixing(x, sections)) < 0.05
    assert np.isnan(section_mixing(x, np.zeros(len(x), dtype=int)))
    with pytest.raises(ValueError, match="sections must hold one"):
        section_mixing(x, sections[:-1])


def test_domain_counts_and_split_domains_name_the_domains_of_one_section():
    sections = np.array([0, 0, 0, 1, 1, 1, 1])
    domains = pd.Categorical(["a", "b", "c", "a", "b", "b", "b"], categories=["a", "b", "c", "d"])
    counts = domain_counts(domains, sections, ["s0", "s1"])
    assert counts == {"s0": {"a": 1, "b": 1, "c": 1, "d": 0}, "s1": {"a": 1, "b": 3, "c": 0, "d": 0}}
    assert split_domains(counts) == {"c": "s0"}
    assert split_domains({"s0": counts["s0"]}) == {}  # one section: nothing to split
    report = integration_report(np.random.default_rng(0).normal(size=(7, 2)), domains, sections, ["s0", "s1"])
    assert report["split_domains"] == {"c": "s0"} and "c (s0)" in report["warning"]
    assert "--domains-per-section" in report["warning"]
    joined = integration_report(
        np.zeros((6, 2)) + np.arange(6)[:, None],
        ["a", "b", "a", "b", "a", "b"],
        np.array([0, 0, 0, 1, 1, 1]),
        ["s0", "s1"],
    )
    assert joined["warning"] is None and 0 <= joined["mixing"] <= 1.5


def test_cluster_per_section_keeps_each_section_to_its_own_labels():
    x, sections, cluster = _blobs(shift=50.0)
    labels = cluster_per_section(x, sections, 2, method="kmeans", seed=0)
    for code in range(3):
        part = sections == code
        assert set(np.unique(labels[part])) == {2 * code, 2 * code + 1}
        assert adjusted_rand_index(cluster[part], labels[part]) == 1.0


def test_harmonize_moves_shifted_sections_together_and_keeps_the_clusters():
    pytest.importorskip("harmonypy")
    x, sections, cluster = _blobs(shift=3.0)
    corrected = harmonize(x, sections, seed=0, threads=1)
    assert corrected.shape == x.shape and corrected.dtype == np.float32
    assert section_mixing(corrected, sections) > section_mixing(x, sections) + 0.2
    from stepgraph.pipeline.domains import kmeans_domains

    assert adjusted_rand_index(cluster, kmeans_domains(corrected, 2)) > 0.95
    np.testing.assert_array_equal(harmonize(x[:10], np.zeros(10, dtype=int)), x[:10].astype(np.float32))


def test_embedding_2d_places_at_most_max_cells():
    x, _, _ = _blobs(n=100)
    rows, xy, method = embedding_2d(x, max_cells=120)
    assert len(rows) == 120 and xy.shape == (120, 2) and method in ("UMAP", "PCA")
    assert np.isfinite(xy).all()


def test_features_standardised_per_section_remove_the_sections_offsets(tmp_path):
    """Per-section z-scores: each section's features are centred on their own,
    the same per block of rows and on disk; without the codes they refuse."""
    from stepgraph.graph import spatial_graph
    from stepgraph.graph.spatial import section_codes
    from stepgraph.pipeline.preprocess import ExpressionFeatures
    from stepgraph.synthetic import synthetic_tissue

    adata = synthetic_tissue(n_cells=1500, n_sections=3, n_genes=60, seed=1, section_effect=1.0)
    codes = section_codes(adata, "section")[0]
    conn, _ = spatial_graph(adata, n_neighbors=8, batch_key="section", copy=True)
    pooled = ExpressionFeatures(n_components=8).fit(adata.X, conn).transform(adata.X)
    features = ExpressionFeatures(n_components=8, max_cells=1000).fit(adata.X, conn, codes)
    x = features.transform(adata.X, codes)
    offsets = [np.abs(np.stack([f[codes == c].mean(axis=0) for c in range(3)])).max() for f in (pooled, x)]
    assert offsets[1] < 0.2 < 1.0 < offsets[0], offsets
    rows = np.array([5, 1400, 3, 3])
    np.testing.assert_allclose(features(adata.X[rows], codes[rows]), x[rows], rtol=1e-5, atol=1e-5)
    adata.write_h5ad(tmp_path / "t.h5ad")
    backed = ad.read_h5ad(tmp_path / "t.h5ad", backed="r")
    on_disk = ExpressionFeatures(n_components=8, max_cells=1000).fit(backed.X, conn, codes)
    np.testing.assert_allclose(on_disk.transform(backed.X, codes), x, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="fitted per section: pass sections="):
        features.transform(adata.X)
    with pytest.raises(ValueError, match="sections must hold one"):
        ExpressionFeatures().fit(adata.X, conn, codes[:-1])


def _per_section_ari(adata) -> float:
    sections = adata.obs["section"]
    return float(
        np.mean(
            [
                adjusted_rand_index(
                    adata.obs["domain"][sections == name], adata.obs["stepgraph_domain"][sections == name]
                )
                for name in pd.unique(sections)
            ]
        )
    )


def test_joint_domains_of_sections_that_differ_score_as_well_as_each_section_alone(tmp_path):
    """Sections with a strong sample effect (each its own gene shifts, scale,
    depth and mixture of domains): the joint domains score within each section
    at least as well as the pipeline run on each section alone; without the
    per-section z-scores every domain follows one section, the sections do
    not mix at all, and the warning says so."""
    from stepgraph.pipeline import PipelineConfig, run_pipeline
    from stepgraph.pipeline.integration import IntegrationWarning
    from stepgraph.synthetic import synthetic_tissue

    adata = synthetic_tissue(n_cells=1800, n_sections=3, n_genes=80, seed=5, section_effect=1.0)
    options = {"truth_key": "domain", "epochs": 10, "progress": False}
    summary = run_pipeline(adata, tmp_path / "joint", PipelineConfig(batch_key="section", **options))
    joint = _per_section_ari(adata)
    alone = []
    for name in adata.obs["section"].cat.categories:
        section = adata[(adata.obs["section"] == name).to_numpy()].copy()
        alone.append(run_pipeline(section, tmp_path / name, PipelineConfig(**options))["ari"])
    assert joint >= np.mean(alone), (joint, alone)
    report = summary["integration"]
    assert report["mixing"] > 0.05 and report["split_domains"] == {} and report["warning"] is None
    assert set(report["domain_counts"]) == {"section0", "section1", "section2"}
    assert sum(sum(c.values()) for c in report["domain_counts"].values()) == adata.n_obs

    with pytest.warns(IntegrationWarning, match="lie in one section only"):
        pooled = run_pipeline(
            adata, tmp_path / "pooled", PipelineConfig(batch_key="section", scale_per_section=False, **options)
        )
    assert _per_section_ari(adata) < joint - 0.2
    assert pooled["integration"]["mixing"] < report["mixing"] and pooled["integration"]["split_domains"]


def test_train_prints_the_mixing_and_domains_per_section_on_request(tmp_path, capsys):
    import json

    from stepgraph.cli import main
    from stepgraph.synthetic import synthetic_tissue

    path = tmp_path / "tissue.h5ad"
    synthetic_tissue(n_cells=600, n_sections=2, n_genes=40, seed=2, section_effect=0.5).write_h5ad(path)
    out = tmp_path / "run"
    status = main(
        [
            "train",
            str(path),
            "--batch-key",
            "section",
            "--truth-key",
            "domain",
            "--epochs",
            "2",
            "--domains-per-section",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    printed = capsys.readouterr().out
    assert status == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["domains_per_section"] is True
    assert f"section mixing in the embedding: {summary['integration']['mixing']:.3f}" in printed
    assert "section0: " in printed and "section1: " in printed
    adata = ad.read_h5ad(out / "adata.h5ad")
    labels = adata.obs["stepgraph_domain"].astype(str)
    # domains found within each section: their labels name the section
    assert all(label.startswith(section + ":") for label, section in zip(labels, adata.obs["section"]))
    assert (out / "embedding.png").stat().st_size > 0 and summary["outputs"]["embedding_figure"]


@pytest.mark.skipif(not DLPFC4.is_file(), reason=f"the shared real tissue {DLPFC4} is not in this checkout")
def test_four_dlpfc_sections_keep_their_floor(tmp_path):
    """Regression floor on four real Visium sections of one donor (DLPFC
    151673-151676): over seeds 0, 1 and 2, the median ARI of the joint domains,
    and of those within each section, stays above 0.50 (0.538 and 0.543
    measured, seeds within 0.01 of each other, since the genes keep their own
    variance of log-CP10k; before, with z-scores, 0.499 and 0.504, and one
    seed's Gaussian mixture could land 0.06 below the others, so the floor is
    on the median), and the sections mix."""
    from stepgraph.pipeline import PipelineConfig, run_pipeline

    joint, per_section, mixing = [], [], []
    for seed in range(3):
        adata = ad.read_h5ad(DLPFC4)
        summary = run_pipeline(
            adata,
            tmp_path / str(seed),
            PipelineConfig(batch_key="section", truth_key="domain", seed=seed, progress=False),
        )
        known = adata.obs["domain"].notna().to_numpy()
        joint.append(summary["ari"])
        per_section.append(_per_section_ari(adata[known]))
        mixing.append(summary["integration"]["mixing"])
    assert np.median(joint) >= 0.50 and np.median(per_section) >= 0.50, (joint, per_section)
    assert np.median(mixing) > 0.4, mixing


def test_bench_domains_reports_joint_per_section_and_mixing_side_by_side(tmp_path):
    from stepgraph.bench.domains import domain_table, run_domain_benchmark
    from stepgraph.synthetic import synthetic_tissue

    path = tmp_path / "tissue.h5ad"
    synthetic_tissue(n_cells=600, n_sections=2, n_genes=40, seed=3, section_effect=1.0).write_h5ad(path)
    result = run_domain_benchmark(
        path, "domain", batch_key="section", seeds=(0,), methods=["neighbor_mean", "pca_kmeans", "untrained"]
    )
    for run in result["runs"]:
        assert set(run["ari_sections"]) == {"section0", "section1"}
        assert run["ari_per_section"] == pytest.approx(np.mean(list(run["ari_sections"].values())))
        assert 0.0 <= run["mixing"] <= 1.0
    table = domain_table(result)
    assert "| method | joint ARI | per-section ARI | mixing |" in table
    assert f"{result['summary']['pca_kmeans']['mixing']['median']:.3f}" in table
