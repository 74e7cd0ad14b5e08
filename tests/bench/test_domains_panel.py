"""The domain benchmark over a panel of tissues: keys per file, skipped methods, ranking."""

import json

import pytest

from stepgraph.bench import domains
from stepgraph.bench.domains import panel_report, panel_tissues, rank_methods, run_panel_benchmark
from stepgraph.synthetic import synthetic_tissue


def _write(path, n_sections=1, seed=0, rename=None):
    adata = synthetic_tissue(n_cells=300 * n_sections, n_sections=n_sections, n_genes=30, seed=seed)
    if n_sections == 1:
        del adata.obs["section"]
    if rename:
        adata.obs = adata.obs.rename(columns=rename)
    adata.write_h5ad(path)
    return path


def test_panel_keys_come_from_the_manifest_then_the_options_then_the_file(tmp_path):
    _write(tmp_path / "a.h5ad", n_sections=2)
    _write(tmp_path / "b.h5ad", rename={"domain": "layer"})
    with pytest.raises(ValueError, match="b.h5ad: truth column 'domain'"):
        panel_tissues(tmp_path)
    (tmp_path / "panel.json").write_text(json.dumps({"b.h5ad": {"truth_key": "layer"}}))
    a, b = panel_tissues(tmp_path)
    assert (a["truth_key"], a["batch_key"]) == ("domain", "section")  # the file's own layout
    assert (b["truth_key"], b["batch_key"]) == ("layer", None)  # the manifest; one section
    # an explicit option applies where the manifest is silent, and a file without the column is one section
    (tmp_path / "panel.json").unlink()
    (b,) = panel_tissues([tmp_path / "b.h5ad"], truth_key="layer", batch_key="section")
    assert (b["truth_key"], b["batch_key"]) == ("layer", None)
    (a,) = panel_tissues([tmp_path / "a.h5ad"], batch_key="cell_type")
    assert a["batch_key"] == "cell_type"


@pytest.mark.parametrize(
    "bad, message", [("missing", "does not exist"), ("empty", "holds no .h5ad"), ("manifest", "must map file names")]
)
def test_panel_inputs_are_checked(tmp_path, bad, message):
    (tmp_path / "empty").mkdir()
    _write(tmp_path / "a.h5ad")
    (tmp_path / "m.json").write_text("[1, 2]")
    target = {"missing": tmp_path / "nothing.h5ad", "empty": tmp_path / "empty", "manifest": tmp_path / "a.h5ad"}[bad]
    with pytest.raises(ValueError, match=message):
        panel_tissues([target], manifest=tmp_path / "m.json" if bad == "manifest" else None)


def test_a_method_without_its_package_is_skipped_with_a_line(tmp_path, monkeypatch):
    monkeypatch.setitem(domains.EXTERNAL_METHODS, "banksy", ("no_such_module_here", "pybanksy"))
    missing = domains.missing_method_packages(["banksy", "pca_kmeans"])
    assert list(missing) == ["banksy"] and "pybanksy is not installed" in missing["banksy"]
    with pytest.raises(ValueError, match="pybanksy is not installed"):
        domains.run_domain_benchmark(_write(tmp_path / "a.h5ad"), "domain", methods=["banksy"])


def _result(name, scores, sections=False):
    summary = {}
    for method, value in scores.items():
        joint, per = value if sections else (value, None)
        summary[method] = {"ari": {"median": joint}}
        if sections:
            summary[method]["ari_per_section"] = {"median": per}
    return {"file": f"/x/{name}.h5ad", "summary": summary}


def test_ranking_counts_each_tissue_and_each_way_of_scoring_it():
    results = [
        _result("one", {"a": 0.5, "b": 0.7, "c": 0.5}),
        _result("two", {"a": (0.9, 0.2), "b": (0.1, 0.3), "c": (0.4, 0.1)}, sections=True),
    ]
    ranking = rank_methods(results)
    # ranks: one: b 1, a 2, c 2 (tie); two joint: a 1, c 2, b 3; two per section: b 1, a 2, c 3
    assert ranking["a"]["mean_rank"] == pytest.approx((2 + 1 + 2) / 3)
    assert ranking["b"]["mean_rank"] == pytest.approx((1 + 3 + 1) / 3)
    assert ranking["c"]["mean_rank"] == pytest.approx((2 + 2 + 3) / 3)
    assert ranking["a"]["leads"] == ["two (joint)"]
    assert ranking["b"]["leads"] == ["one", "two (per section)"]
    assert ranking["a"]["margin"]["one"] == pytest.approx(-0.2)


def test_panel_benchmark_writes_one_table_per_tissue_and_a_line_per_method(tmp_path):
    _write(tmp_path / "one.h5ad", seed=1)
    _write(tmp_path / "two.h5ad", n_sections=2, seed=2)
    result = run_panel_benchmark(tmp_path, seeds=(0, 1), methods=["pca_kmeans", "neighbor_mean"], jobs=2)
    assert [t["batch_key"] for t in result["tissues"]] == [None, "section"]
    assert len(result["tissues"][1]["runs"]) == 4 and "ari_per_section" in result["tissues"][1]["runs"][0]
    spatial = result["tissues"][0]["summary"]["neighbor_mean"]["ari"]["median"]
    plain = result["tissues"][0]["summary"]["pca_kmeans"]["ari"]["median"]
    assert spatial > plain  # the synthetic domains are spatial: the neighbour mean must find them better
    report = panel_report(result)
    assert report.count("| method |") == 2 and "### one.h5ad" in report and "### two.h5ad" in report
    assert "- **neighbor_mean**: mean rank 1.00; leads on one, two (joint), two (per section)" in report


def test_set_reads_any_pipeline_setting_as_its_type_and_refuses_the_benchmarks_own(capsys):
    from stepgraph.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(
        ["bench", "domains", "x.h5ad", "--set", "target_sum=median", "--set", "fanout=5,5", "--set", "refine=true"]
        + ["--set", "gmm_screen_rows=none", "--set", "target_sum=5000"]
    )
    assert args.settings == [
        ("target_sum", "median"),
        ("fanout", [5, 5]),
        ("refine", True),
        ("gmm_screen_rows", None),
        ("target_sum", 5000.0),
    ]
    for bad, message in [
        ("seed=3", "the benchmark sets seed"),
        ("n_pc=30", "did you mean n_pcs"),
        ("n_pcs=-2", "positive"),
        ("n_pcs=many", "expected int"),
        ("features=cells", "expected one of"),
        ("refine", "FIELD=VALUE"),
    ]:
        with pytest.raises(SystemExit):
            parser.parse_args(["bench", "domains", "x.h5ad", "--set", bad])
        assert message in capsys.readouterr().err


def test_set_reaches_the_pipelines_runs_and_is_recorded(tmp_path, capsys):
    from stepgraph.cli import main

    path = _write(tmp_path / "a.h5ad")
    out = tmp_path / "res"
    common = ["bench", "--threads", "1", "domains", str(path), "--methods", "untrained", "--seeds", "0", "--jobs", "1"]
    assert main(common + ["--set", "n_pcs=4", "--out", str(out)]) == 0
    tissue = json.loads(out.with_suffix(".json").read_text())["tissues"][0]
    assert tissue["pipeline_options"]["n_pcs"] == 4
    # a setting the file cannot serve fails the run with the pipeline's own error: it reached the run
    assert main(common + ["--set", "layer_key=spliced", "--out", str(out)]) != 0
    assert "spliced" in capsys.readouterr().err
