"""The command line, run as real subprocesses on a small synthetic tissue."""

import json
import os
import subprocess
import sys

import anndata as ad
import numpy as np
import pytest

from stepgraph.cli import main
from stepgraph.pipeline import PipelineConfig
from stepgraph.synthetic import synthetic_tissue


def run_cli(*args, timeout=240):
    env = {**os.environ, "COLUMNS": "250"}  # keep argparse's help on one line per option
    return subprocess.run(
        [sys.executable, "-m", "stepgraph", *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.fixture(scope="module")
def tissue_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "tissue.h5ad"
    synthetic_tissue(n_cells=400, n_genes=40, seed=2).write_h5ad(path)
    return path


def test_train_writes_every_output_and_leaves_the_input_alone(tissue_file, tmp_path):
    before = tissue_file.read_bytes()
    out = tmp_path / "run"
    result = run_cli(
        "train",
        tissue_file,
        "--batch-key",
        "section",
        "--epochs",
        "3",
        "--batch-size",
        "128",
        "--fanout",
        "5,3",
        "--truth-key",
        "domain",
        "--out",
        out,
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    assert "adjusted Rand index" in result.stdout and str(out) in result.stdout
    for name in ["adata.h5ad", "history.csv", "history.json", "figure.png", "summary.json", "checkpoints/best.pt"]:
        assert (out / name).is_file(), name
    adata = ad.read_h5ad(out / "adata.h5ad")
    assert adata.obsm["X_stepgraph"].shape == (400, PipelineConfig().latent_dim)
    assert np.isfinite(adata.obsm["X_stepgraph"]).all()
    assert adata.obs["stepgraph_domain"].nunique() == 5  # one per true domain
    assert "spatial_connectivities" in adata.obsp
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3] and "val_recon_loss" in history[0]
    assert tissue_file.read_bytes() == before


def test_train_starts_from_the_weights_of_a_checkpoint(tissue_file, tmp_path):
    first = tmp_path / "first"
    assert (
        run_cli("train", tissue_file, "--epochs", "2", "--batch-size", "200", "--out", first, "--quiet").returncode == 0
    )
    again = run_cli(
        "train",
        tissue_file,
        "--epochs",
        "1",
        "--batch-size",
        "200",
        "--out",
        tmp_path / "second",
        "--init-weights",
        first / "checkpoints" / "best.pt",
        "--quiet",
    )
    assert again.returncode == 0, again.stderr
    h1 = json.loads((first / "history.json").read_text())
    h2 = json.loads((tmp_path / "second" / "history.json").read_text())
    # starting from trained weights, the first epoch is better than the first run's first epoch
    assert h2[0]["recon_loss"] < h1[0]["recon_loss"]


def test_resume_continues_the_run_exactly(tissue_file, tmp_path, capsys):
    options = [str(tissue_file), "--batch-size", "128", "--fanout", "4,3", "--quiet"]
    assert main(["train", *options, "--epochs", "2", "--out", str(tmp_path / "split")]) == 0
    assert main(["train", *options, "--epochs", "4", "--out", str(tmp_path / "split"), "--resume"]) == 0
    assert main(["train", *options, "--epochs", "4", "--out", str(tmp_path / "straight")]) == 0
    resumed = json.loads((tmp_path / "split" / "history.json").read_text())
    straight = json.loads((tmp_path / "straight" / "history.json").read_text())
    assert [h["epoch"] for h in resumed] == [1, 2, 3, 4]
    assert resumed == straight  # every loss of every epoch, exactly
    emb_resumed = ad.read_h5ad(tmp_path / "split" / "adata.h5ad").obsm["X_stepgraph"]
    emb_straight = ad.read_h5ad(tmp_path / "straight" / "adata.h5ad").obsm["X_stepgraph"]
    np.testing.assert_array_equal(emb_resumed, emb_straight)


def test_interrupted_run_exits_130_and_resumes(tissue_file, tmp_path, capsys, monkeypatch):
    from stepgraph.train.trainer import Trainer

    options = [
        "train",
        str(tissue_file),
        "--batch-size",
        "64",
        "--fanout",
        "3",
        "--quiet",
        "--epochs",
        "3",
        "--out",
        str(tmp_path / "run"),
    ]
    real, calls = Trainer.handle_ginput_tuple, {"n": 0}

    def interrupting(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 10:  # in epoch 2 (7 calls per epoch: 6 training batches, 1 validation)
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "handle_ginput_tuple", interrupting)
    assert main(options) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "--resume" in err
    assert not (tmp_path / "run" / "adata.h5ad").exists()  # no outputs from a half-trained model
    monkeypatch.undo()
    assert main(options + ["--resume"]) == 0
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]


def test_resume_without_an_earlier_run_is_one_line(tissue_file, tmp_path, capsys):
    assert main(["train", str(tissue_file), "--resume", "--out", str(tmp_path / "new"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "last.pt" in err and len(err.strip().splitlines()) == 1


def test_graph_writes_a_new_file_and_never_overwrites_silently(tissue_file, tmp_path):
    output = tmp_path / "with_graph.h5ad"
    result = run_cli("graph", tissue_file, "--batch-key", "section", "--n-neighbors", "4", "--output", output)
    assert result.returncode == 0, result.stderr
    adata = ad.read_h5ad(output)
    assert (np.diff(adata.obsp["spatial_connectivities"].indptr) == 4).all()
    refused = run_cli("graph", tissue_file, "--output", output)
    assert refused.returncode == 2 and "--overwrite" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_help_documents_every_option_with_its_default():
    result = run_cli("train", "--help")
    assert result.returncode == 0
    for option in [
        "--spatial-key",
        "--batch-key",
        "--method",
        "--n-neighbors",
        "--epochs",
        "--batch-size",
        "--fanout",
        "--out",
        "--resume",
        "--init-weights",
        "--trust-checkpoint",
        "--seed",
        "--device",
    ]:
        assert option in result.stdout
    assert "default: 10 for a transcriptome, 10,5 for a panel" in " ".join(result.stdout.split())
    assert "default: 1024" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "{missing}"], "does not exist"),
        (["train", "{not_h5ad}"], "not a readable .h5ad"),
        (["train", "{tissue}", "--spatial-key", "xy"], "--spatial-key 'xy' is not in adata.obsm"),
        (["train", "{tissue}", "--batch-key", "slide"], "--batch-key 'slide' is not a column"),
        (["train", "{tissue}", "--init-weights", "{missing}"], "--init-weights"),
        (["train", "{tissue}", "--init-weights", "{not_h5ad}", "--resume"], "exclude each other"),
        (["graph", "{tissue}", "--spatial-key", "xy", "--output", "{out}"], "--spatial-key 'xy'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, tissue_file, tmp_path, capsys):
    not_h5ad = tmp_path / "notes.h5ad"
    not_h5ad.write_text("not hdf5")
    paths = {
        "missing": tmp_path / "missing.h5ad",
        "not_h5ad": not_h5ad,
        "tissue": tissue_file,
        "out": tmp_path / "o.h5ad",
    }
    argv = [a.format(**paths) for a in args] + (["--quiet", "--out", str(tmp_path)] if args[0] == "train" else [])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_bad_input_through_a_subprocess_has_no_traceback(tmp_path):
    result = run_cli("train", tmp_path / "missing.h5ad")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("stepgraph train: error:") and "Traceback" not in result.stderr
