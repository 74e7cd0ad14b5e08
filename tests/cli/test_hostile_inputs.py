"""Hostile inputs to the CLI and the h5ad reading paths.

Every case ends in exit status 2 with one line on stderr naming the problem
(never a traceback) and leaves the input file byte-identical. The CLI runs
in-process through :func:`stepgraph.cli.main` (fast); two cases run as real
subprocesses. Files are real h5ad files written with anndata (and h5py where
anndata refuses to write the bad thing).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from stepgraph import BaseDataset, spatial_graph
from stepgraph.cli import main
from stepgraph.synthetic import synthetic_tissue
from stepgraph.train.checkpointing import load_checkpoint

FAST = ["--epochs", "1", "--batch-size", "64", "--fanout", "3", "--quiet"]


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def tissue(n_cells=200, n_genes=20, seed=3) -> ad.AnnData:
    return synthetic_tissue(n_cells=n_cells, n_genes=n_genes, seed=seed)


@pytest.fixture(scope="module")
def good_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("hostile") / "tissue.h5ad"
    tissue().write_h5ad(path)
    return path


def refused(argv, path, capsys, *patterns) -> str:
    """Run the CLI; check exit 2, one stderr line holding every pattern, input unchanged."""
    before = digest(path) if os.path.isfile(path) else None
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"stepgraph {argv[0]}: error: ") and "Traceback" not in err
    for pattern in patterns:
        assert pattern in lines[0], (pattern, lines[0])
    if before is not None:
        assert digest(path) == before
    return lines[0]


def train(path, out, *extra):
    return ["train", path, "--out", out, *FAST, *extra]


# ------------------------------------------------------------ broken files
def test_truncated_file(good_file, tmp_path, capsys):
    path = tmp_path / "truncated.h5ad"
    data = good_file.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    refused(train(path, tmp_path / "out"), path, capsys, "truncated.h5ad", "not a readable .h5ad file")


def test_empty_file(tmp_path, capsys):
    path = tmp_path / "empty.h5ad"
    path.write_bytes(b"")
    refused(train(path, tmp_path / "out"), path, capsys, "empty (0 bytes)")


def test_directory_instead_of_a_file(tmp_path, capsys):
    folder = tmp_path / "data.h5ad"
    folder.mkdir()
    refused(train(folder, tmp_path / "out"), folder, capsys, "is a folder")
    assert list(folder.iterdir()) == []


def _dataset_offset(path, name) -> tuple[int, int]:
    """Byte offset and size of an HDF5 dataset's stored values (its first chunk
    when chunked)."""
    with h5py.File(path, "r") as f:
        ds = f[name]
        if ds.chunks is None:
            return ds.id.get_offset(), ds.id.get_storage_size()
        chunk = ds.id.get_chunk_info(0)
        return chunk.byte_offset, chunk.size


@pytest.mark.parametrize("target, pattern", [
    ("superblock", "not a readable .h5ad file"),      # the HDF5 signature and root pointers
    ("X/indices", "adata.X is a malformed CSR matrix"),  # would index outside the matrix
    ("X/indptr", "adata.X is a malformed CSR matrix"),
    ("obsm/spatial", "adata.obsm['spatial']"),           # garbage float64: NaN or beyond float32
])
def test_random_byte_range_overwritten(target, pattern, good_file, tmp_path, capsys):
    path = tmp_path / "overwritten.h5ad"
    shutil.copy(good_file, path)
    start, size = (0, 64) if target == "superblock" else _dataset_offset(path, target)
    rng = np.random.default_rng(11)
    length = min(64, size)
    at = start + int(rng.integers(0, size - length + 1))
    with open(path, "r+b") as fh:
        fh.seek(at)
        fh.write(rng.integers(0, 256, length, dtype=np.uint8).tobytes())
    refused(train(path, tmp_path / "out"), path, capsys, pattern)


FUZZ = textwrap.dedent("""
    import contextlib, io, sys
    import numpy as np
    from stepgraph.cli import main
    source, work, out, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    data = open(source, "rb").read()
    rng = np.random.default_rng(2024)
    for trial in range(n):
        at = int(rng.integers(0, len(data) - 64))
        bad = bytearray(data)
        bad[at:at + 64] = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
        open(work, "wb").write(bad)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main(["train", work, "--out", out, "--epochs", "1", "--batch-size", "64",
                       "--fanout", "3", "--quiet"])
        lines = err.getvalue().strip().splitlines()
        same = open(work, "rb").read() == bytes(bad)
        print(at, rc, len(lines), same, lines[-1] if lines else "", sep="\t", flush=True)
""")


def test_random_byte_ranges_anywhere_never_crash(good_file, tmp_path):
    """Anywhere in the file, a garbled range gives exit 2 with one line, or (when it
    only changed expression values, which h5ad cannot detect) a normal run: never a
    traceback or a crash. A real subprocess, so a crash in C code fails this test
    instead of killing pytest."""
    script = tmp_path / "fuzz.py"
    script.write_text(FUZZ)
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([sys.executable, str(script), str(good_file), str(tmp_path / "f.h5ad"),
                             str(tmp_path / "out"), "12"], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert len(rows) == 12, result.stdout
    for at, rc, n_lines, same, message in rows:
        assert same == "True"
        assert (rc, n_lines) in {("0", "0"), ("2", "1")}, (at, rc, message)
        assert rc == "0" or message.startswith("stepgraph train: error:")
    assert sum(rc == "2" for _, rc, *_ in rows) >= 6  # most ranges hit structure, not values


# --------------------------------------------------------- bad contents
def test_string_expression_matrix(tmp_path, capsys):
    path = tmp_path / "strings.h5ad"
    adata = tissue()
    adata.X = adata.X.toarray() if sp.issparse(adata.X) else adata.X
    adata.write_h5ad(path)
    with h5py.File(path, "r+") as f:  # anndata refuses to write a string X; h5py does not
        attrs = dict(f["X"].attrs)
        del f["X"]
        ds = f.create_dataset("X", data=np.full(adata.shape, "1.0", dtype=object),
                              dtype=h5py.string_dtype())
        ds.attrs.update(attrs)
    refused(train(path, tmp_path / "out"), path, capsys, "adata.X must hold numbers", "dtype object")


def _with_coordinates(tmp_path, coords) -> str:
    path = tmp_path / "coords.h5ad"
    adata = tissue()
    adata.obsm["spatial"] = coords(np.asarray(adata.obsm["spatial"], dtype=np.float64))
    adata.write_h5ad(path)
    return path


def _nan_at_3(xy):
    xy[3, 0] = np.nan
    return xy


def _inf_at_5(xy):
    xy[5, 1] = np.inf
    return xy


@pytest.mark.parametrize("coords, patterns", [
    (lambda xy: xy[:, :1], ["shape (n_obs, 2) or (n_obs, 3)", "(200, 1)"]),
    (lambda xy: np.hstack([xy, xy]), ["shape (n_obs, 2) or (n_obs, 3)", "(200, 4)"]),
    (lambda xy: xy.astype(str), ["must hold numbers", "dtype object"]),
    (_nan_at_3, ["NaN or infinite coordinates", "1 of 200"]),
    (_inf_at_5, ["NaN or infinite coordinates", "1 of 200"]),
], ids=["1-column", "4-columns", "strings", "nan", "inf"])
def test_bad_coordinates(coords, patterns, tmp_path, capsys):
    path = _with_coordinates(tmp_path, coords)
    refused(train(path, tmp_path / "out"), path, capsys, "adata.obsm['spatial']", *patterns)
    refused(["graph", path, "--output", tmp_path / "g.h5ad"], path, capsys, "adata.obsm['spatial']")
    assert not (tmp_path / "out").exists() and not (tmp_path / "g.h5ad").exists()


def test_section_column_with_missing_values(tmp_path, capsys):
    path = tmp_path / "sections.h5ad"
    adata = tissue()
    section = adata.obs["section"].astype(object)
    section.iloc[[4, 9]] = np.nan
    adata.obs["section"] = pd.Categorical(section)
    adata.write_h5ad(path)
    refused(train(path, tmp_path / "out", "--batch-key", "section"), path, capsys,
            "'section'", "must have no missing values, got 2 missing")


@pytest.mark.parametrize("shape, pattern", [((0, 20), "no observations (n_obs == 0)"),
                                            ((50, 0), "no variables (n_vars == 0)")])
def test_no_cells_or_no_genes(shape, pattern, tmp_path, capsys):
    path = tmp_path / "empty_matrix.h5ad"
    rng = np.random.default_rng(0)
    adata = ad.AnnData(np.zeros(shape, np.float32))
    adata.obsm["spatial"] = rng.uniform(0, 10, (shape[0], 2))
    adata.write_h5ad(path)
    refused(train(path, tmp_path / "out"), path, capsys, pattern)


def test_section_smaller_than_the_neighbourhood(tmp_path, capsys):
    path = tmp_path / "small_section.h5ad"
    adata = tissue()
    section = np.where(np.arange(adata.n_obs) < 4, "tiny", "big")
    adata.obs["section"] = pd.Categorical(section)
    adata.write_h5ad(path)
    # a radius graph (the default) has room for a small section; k nearest neighbours do not
    refused(train(path, tmp_path / "out", "--batch-key", "section", "--method", "knn", "--n-neighbors", "6"),
            path, capsys,
            "n_neighbors=6", "section 'tiny'", "has only 4")


# --------------------------------------------------------- output folder
def test_out_is_an_existing_file(good_file, tmp_path, capsys):
    other = tmp_path / "notes.txt"
    other.write_text("keep me")
    refused(train(good_file, other), good_file, capsys, "is an existing file, not a folder")
    assert other.read_text() == "keep me"


def test_out_is_the_input_itself(good_file, capsys):
    refused(train(good_file, good_file), good_file, capsys, "is the input file itself")


def test_out_would_overwrite_the_input(tmp_path, capsys):
    path = tmp_path / "adata.h5ad"
    tissue().write_h5ad(path)
    refused(train(path, tmp_path), path, capsys, "would overwrite the input file")


def test_out_below_a_file(good_file, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    refused(train(good_file, blocker / "run"), good_file, capsys, "is not a writable folder")


@pytest.fixture
def unwritable_folder(tmp_path):
    """A folder no file can be created in: chmod for a normal user; as root, whom
    permissions do not stop, the immutable attribute (chattr +i)."""
    folder = tmp_path / "locked"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o500)
        yield folder
        folder.chmod(0o700)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)],
                                                        capture_output=True).returncode != 0:
        pytest.skip("running as root, where chmod does not stop writes, and chattr +i is unavailable")
    try:
        yield folder
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_unwritable_out(good_file, unwritable_folder, capsys):
    with pytest.raises(OSError):  # the fixture really blocks writes
        (unwritable_folder / "probe").write_text("x")
    line = refused(train(good_file, unwritable_folder), good_file, capsys, "is not a writable folder")
    assert "ermission denied" in line or "ot permitted" in line
    refused(train(good_file, unwritable_folder / "run"), good_file, capsys, "is not a writable folder")


# ------------------------------------------------------------- full disk
def _disk_full(when=lambda obj: True):
    """A torch.save that writes part of the file then fails as a full disk does,
    for the objects ``when`` selects."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if when(obj):
            f.write(b"PK\x03\x04 partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    return save


def _training_state(obj) -> bool:
    """last.pt / interrupted.pt, not the best weights (a bare state_dict)."""
    return isinstance(obj, dict) and obj.get("format") == "stepgraph-training-state"


def test_disk_full_during_the_checkpoint_write(good_file, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    options = ["train", str(good_file), "--out", str(out), "--batch-size", "64", "--fanout", "3", "--quiet"]
    assert main(options + ["--epochs", "2"]) == 0
    capsys.readouterr()
    last = out / "checkpoints" / "last.pt"
    before = digest(last)
    monkeypatch.setattr(torch, "save", _disk_full(_training_state))
    line = refused(options + ["--epochs", "4", "--resume"], good_file, capsys,
                   "could not write checkpoint", "the disk is full", str(last), "previous file is left intact")
    assert "No space left" not in line or "disk is full" in line
    monkeypatch.undo()
    assert digest(last) == before
    assert load_checkpoint(last)["format"] == "stepgraph-training-state"  # still whole and loadable
    assert sorted(p.name for p in last.parent.iterdir()) == ["best.pt", "last.pt"]  # no temporary left
    assert main(options + ["--epochs", "3", "--resume"]) == 0  # once there is room, the run goes on
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]


# ------------------------------------------------ construction-time checks
def test_dataset_refuses_no_genes_and_no_cells():
    with pytest.raises(ValueError, match=r"no variables \(n_vars == 0\)"):
        BaseDataset(ad.AnnData(np.zeros((5, 0), np.float32)))
    with pytest.raises(ValueError, match=r"no observations \(n_obs == 0\)"):
        BaseDataset(ad.AnnData(np.zeros((0, 5), np.float32)))


def test_dataset_refuses_a_malformed_sparse_matrix():
    X = sp.csr_matrix(np.eye(4, dtype=np.float32))
    X.indices[2] = 9  # as a corrupt file would give
    adata = ad.AnnData(sp.csr_matrix((4, 4), dtype=np.float32))
    adata.X = X
    with pytest.raises(ValueError, match=r"malformed CSR matrix .*\[0, 4\), got \[0, 9\]"):
        BaseDataset(adata)
    assert X.indices[2] == 9  # the check changed nothing


def test_spatial_graph_refuses_a_section_smaller_than_the_neighbourhood():
    adata = tissue()
    adata.obs["section"] = pd.Categorical(np.where(np.arange(adata.n_obs) < 6, "tiny", "big"))
    with pytest.raises(ValueError, match=r"n_neighbors=6 .*section 'tiny' .*only 6"):
        spatial_graph(adata, n_neighbors=6, batch_key="section")
    assert "spatial_connectivities" not in adata.obsp


def test_coordinates_beyond_float32_are_refused():
    adata = tissue()
    adata.obsm["spatial"] = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    adata.obsm["spatial"][7, 0] = 1e300  # finite in float64, but the graph would overflow
    with pytest.raises(ValueError, match=r"beyond .*float32.*1 cells; the first is obs"):
        spatial_graph(adata)


# ------------------------------------------------------------ subprocess
def test_truncated_file_through_a_subprocess(good_file, tmp_path):
    path = tmp_path / "cut.h5ad"
    path.write_bytes(good_file.read_bytes()[:4096])
    before = digest(path)
    result = subprocess.run([sys.executable, "-m", "stepgraph", "train", str(path), "--out",
                             str(tmp_path / "out"), "--quiet"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a readable .h5ad file" in lines[0] and "Traceback" not in result.stderr
    assert digest(path) == before
