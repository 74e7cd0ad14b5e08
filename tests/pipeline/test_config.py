"""PipelineConfig is the one source of the pipeline's defaults: the CLI, the user
guide and the stages the pipeline calls all agree with it."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import numpy as np
import pytest

from stepgraph.cli import build_parser, config_from_args, main
from stepgraph.graph import spatial_graph
from stepgraph.pipeline import PipelineConfig, run_pipeline
from stepgraph.pipeline.config import cli_option, defaults_table
from stepgraph.pipeline.domains import gmm_domains, kmeans_domains
from stepgraph.pipeline.preprocess import ExpressionFeatures
from stepgraph.synthetic import synthetic_tissue

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "user-guide.md"
FIELDS = dataclasses.fields(PipelineConfig)
ON_CLI = [f for f in FIELDS if cli_option(f)]


def help_entries(capsys, monkeypatch, command: str) -> dict[str, str]:
    """``stepgraph COMMAND --help``, one whitespace-normalised entry per option string."""
    monkeypatch.setenv("COLUMNS", "250")
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    entries, current = {}, None
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("  -"):
            current = line.split()[0].rstrip(",")
            entries[current] = line
        elif current and line.startswith("    "):
            entries[current] += " " + line
    return {flag: " ".join(text.split()) for flag, text in entries.items()}


def train_config(*options: str) -> PipelineConfig:
    return config_from_args(build_parser().parse_args(["train", "in.h5ad", *options]))


def test_every_field_has_its_help_and_reason():
    for f in FIELDS:
        assert f.metadata["help"].strip() and f.metadata["reason"].strip(), f.name
        assert f.name in PipelineConfig.__doc__ and f.metadata["reason"] in PipelineConfig.__doc__


def test_parsing_no_options_gives_the_default_config():
    assert train_config() == PipelineConfig()
    assert config_from_args(build_parser().parse_args(["demo"])) == PipelineConfig()


def test_help_shows_every_default_and_passing_it_gives_the_default(capsys, monkeypatch):
    entries = help_entries(capsys, monkeypatch, "train")
    default = PipelineConfig()
    for f in ON_CLI:
        flag, value = cli_option(f), getattr(default, f.name)
        assert flag in entries, flag
        if isinstance(value, bool):  # a flag: off unless given, and giving it turns the default around
            assert entries[flag].endswith("(default: off)"), entries[flag]
            assert getattr(train_config(flag), f.name) is (not value)
            continue
        shown = re.search(r"\(default: ([^()]*)\)$", entries[flag])
        assert shown, entries[flag]
        if value is None:
            assert getattr(train_config(), f.name) is None
        else:  # the default --help shows, passed back, is the config's
            assert getattr(train_config(flag, shown.group(1)), f.name) == value, flag
    hidden = ["--" + f.name.replace("_", "-") for f in FIELDS if not cli_option(f)]
    assert hidden and not set(hidden) & set(entries)


def test_the_command_line_keeps_its_option_names(capsys, monkeypatch):
    options = {
        "--spatial-key",
        "--batch-key",
        "--layer",
        "--backed",
        "--n-top-genes",
        "--n-pcs",
        "--method",
        "--n-neighbors",
        "--radius",
        "--graph-scale",
        "--epochs",
        "--batch-size",
        "--fanout",
        "--conv",
        "--lr",
        "--split-rate",
        "--patience",
        "--cluster",
        "--refine",
        "--n-domains",
        "--truth-key",
        "--seed",
        "--device",
        "--quiet",
        "--init-weights",
        "--trust-checkpoint",
        "--resume",
        "--out",
    }
    assert options <= set(help_entries(capsys, monkeypatch, "train"))  # new fields may add options
    assert set(help_entries(capsys, monkeypatch, "demo")) == {
        "-h",
        "--n-cells",
        "--epochs",
        "--seed",
        "--device",
        "--threads",
        "--quiet",
        "--out",
    }


def test_options_map_to_their_fields():
    config = train_config(
        "--quiet",
        "--layer",
        "raw",
        "--fanout",
        "3,-1",
        "--refine",
        "--n-domains",
        "4",
        "--init-weights",
        "w.pt",
        "--trust-checkpoint",
        "--backed",
        "--method",
        "knn",
    )
    assert (config.progress, config.layer_key, config.fanout, config.refine, config.n_domains) == (
        False,
        "raw",
        [3, -1],
        True,
        4,
    )
    assert (config.init_weights, config.trust_checkpoint, config.backed, config.method) == ("w.pt", True, True, "knn")


@pytest.mark.parametrize(
    "options, message",
    [
        (["--fanout", "10,x"], "--fanout must be integers separated by commas, got '10,x'"),
        (["--fanout", "0"], "--fanout must be positive integers (or -1), got '0'"),
        (["--epochs", "0"], "expected a positive integer, got '0'"),
        (["--n-neighbors", "two"], "expected a positive integer, got 'two'"),
        (["--method", "ring"], "invalid choice: 'ring'"),
        (["--lr", "fast"], "invalid float value: 'fast'"),
    ],
)
def test_bad_options_are_refused_with_their_message(options, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["train", "in.h5ad", *options])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_graph_command_keeps_the_defaults_of_spatial_graph():
    args = build_parser().parse_args(["graph", "in.h5ad"])
    signature = inspect.signature(spatial_graph).parameters
    for name in ("spatial_key", "batch_key", "method", "n_neighbors", "radius", "key_added"):
        assert getattr(args, name) == signature[name].default, name
    assert args.method == "knn" != PipelineConfig().method  # squidpy's default, not the pipeline's


def test_positional_fields_keep_their_order():
    # fields added later are keyword-only, so PipelineConfig(...) by position means what it did
    assert [f.name for f in FIELDS if not f.kw_only] == [
        "spatial_key",
        "batch_key",
        "layer_key",
        "n_top_genes",
        "n_pcs",
        "method",
        "n_neighbors",
        "radius",
        "graph_scale",
        "epochs",
        "batch_size",
        "fanout",
        "hidden_dim",
        "latent_dim",
        "conv",
        "activation",
        "lr",
        "split_rate",
        "patience",
        "smooth",
        "cluster",
        "refine",
        "n_domains",
        "truth_key",
        "seed",
        "device",
        "backend",
        "progress",
        "init_weights",
        "resume_from",
        "trust_checkpoint",
        "backed",
    ]


def _defaulted(function) -> set[str]:
    return {name for name, p in inspect.signature(function).parameters.items() if p.default is not p.empty}


def test_the_pipeline_passes_every_option_of_its_stages_explicitly():
    config = PipelineConfig().resolved(n_genes=500)
    assert set(config.feature_options()) == set(inspect.signature(ExpressionFeatures).parameters)
    ExpressionFeatures(**config.feature_options())  # every value is one it accepts
    for method, function in (("gmm", gmm_domains), ("kmeans", kmeans_domains)):
        options = dataclasses.replace(config, cluster=method).cluster_options()
        assert options.pop("method") == method
        assert set(options) == _defaulted(function), method
    changed = dataclasses.replace(config, feature_clip=3.0, gmm_n_init=2, cluster_max_rows=None)
    assert changed.feature_options()["clip"] == 3.0
    assert changed.cluster_options()["n_init"] == 2 and changed.cluster_options()["max_fit_rows"] is None


def test_the_gene_set_picks_the_input_and_encoder_of_fields_left_unset():
    config = PipelineConfig(n_top_genes=100, features="expression")
    with pytest.raises(
        ValueError, match=r"n_pcs, feature_smooth, fanout, hidden_dim .* left to the gene set.*resolved\(n_genes\)"
    ):
        config.feature_options()
    panel, transcriptome = config.resolved(100), config.resolved(101)
    assert (panel.n_pcs, panel.feature_smooth, panel.fanout, panel.hidden_dim) == (20, 1, [10, 5], 64)
    assert (transcriptome.n_pcs, transcriptome.feature_smooth, transcriptome.fanout, transcriptome.hidden_dim) == (
        200,
        0,
        [10],
        256,
    )
    assert config.n_pcs is None and config.fanout is None  # resolved returns a copy
    transcriptome.fanout.append(3)
    assert config.resolved(101).fanout == [10]  # the recipe's list is not shared
    mine = PipelineConfig(n_top_genes=100, n_pcs=7, fanout=[4], feature_smooth=2, hidden_dim=9).resolved(5000)
    assert (mine.n_pcs, mine.feature_smooth, mine.fanout, mine.hidden_dim) == (7, 2, [4], 9)
    # the default neighbourhood features: 50 per-cell components, not averaged, for either gene set;
    # the encoder still follows the gene set
    panel, transcriptome = PipelineConfig(n_top_genes=100).resolved(100), PipelineConfig(n_top_genes=100).resolved(101)
    assert (panel.n_pcs, panel.feature_smooth, panel.fanout, panel.hidden_dim) == (50, 0, [10, 5], 64)
    assert (transcriptome.n_pcs, transcriptome.feature_smooth, transcriptome.fanout) == (50, 0, [10])
    # ExpressionFeatures' scaling="auto" draws the same line between a panel and a transcriptome
    counts = np.random.default_rng(0).poisson(2.0, size=(60, 120)).astype(np.float32)
    assert ExpressionFeatures(n_top_genes=120, n_components=5).fit(counts).zscored_
    assert not ExpressionFeatures(n_top_genes=119, n_components=5).fit(counts).zscored_


def test_a_transcriptome_run_records_the_recipe_it_used(tmp_path):
    adata = synthetic_tissue(n_cells=300, n_genes=60, seed=2)
    options = {"n_top_genes": 40, "epochs": 1, "batch_size": 128, "progress": False}
    summary = run_pipeline(adata.copy(), tmp_path / "expression", PipelineConfig(features="expression", **options))
    used = summary["config"]
    assert (used["n_pcs"], used["feature_smooth"], used["fanout"], used["hidden_dim"]) == (200, 0, [10], 256)
    # 200 components asked, 39 possible (40 genes kept, minus one)
    assert summary["features"] == {"genes": 40, "components": 39}
    summary = run_pipeline(adata, tmp_path / "neighborhood", PipelineConfig(**options))
    used = summary["config"]
    assert (used["features"], used["n_pcs"], used["fanout"], used["hidden_dim"]) == ("neighborhood", 50, [10], 256)
    # 39 components of the cells, then 30 of their cell, mean and gradient blocks
    assert summary["features"] == {"genes": 40, "components": 30}


def test_run_pipeline_reads_its_fallbacks_from_the_config(tmp_path):
    adata = synthetic_tissue(n_cells=300, n_genes=30, seed=1)
    config = PipelineConfig(
        epochs=1, batch_size=128, progress=False, n_domains_default=3, feature_max_cells=200, cluster_max_rows=150
    )
    summary = run_pipeline(adata, tmp_path, config)
    assert summary["n_domains"] == 3 and len(adata.obs["stepgraph_domain"].cat.categories) == 3
    assert summary["config"]["n_domains_default"] == 3 and summary["config"]["delta"] == config.delta


def test_the_user_guide_shows_the_defaults_table():
    guide = GUIDE.read_text(encoding="utf-8")
    assert defaults_table() in guide, (
        "docs/user-guide.md's defaults table differs from PipelineConfig; paste the output of "
        "python -c 'from stepgraph.pipeline.config import defaults_table; print(defaults_table())'"
    )


def test_no_help_or_reason_narrates_development_history(capsys):
    """What a setting does and when to change it, not which issue or round measured it: the figures
    and their history live in docs/benchmarks.md."""
    history = re.compile(r"\bissue\s*\d+|\b(first|second|third|fourth|fifth|sixth)\s+round\b", re.IGNORECASE)
    for f in dataclasses.fields(PipelineConfig):
        assert not history.search(f.metadata["help"] + " " + f.metadata["reason"]), f.name
    for command in (["train", "--help"], ["bench", "domains", "--help"]):
        with pytest.raises(SystemExit):
            main(command)
        assert not history.search(capsys.readouterr().out), command
