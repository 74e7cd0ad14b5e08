"""Hostile inputs to the CLI and the h5ad reading paths.

Every case ends in exit status 2 with one line on stderr naming the problem
(never a traceback) and leaves the input file byte-identical. The CLI runs
in-process through :func:`stepgraph.cli.main` (fast); two cases run as real
subprocesses. Files are real h5ad files written with anndata (and h5py where
anndata refuses to write the bad thing).
"""

from __future__ import annotations

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
from tests.conftest import disk_full_save

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
    return [str(a) for a in ["train", path, "--out", out, *FAST, *extra]]


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


@pytest.mark.parametrize(
    "target, pattern",
    [
        ("superblock", "not a readable .h5ad file"),  # the HDF5 signature and root pointers
        ("X/indices", "adata.X is a malformed CSR matrix"),  # would index outside the matrix
        ("X/indptr", "adata.X is a malformed CSR matrix"),
        ("obsm/spatial", "adata.obsm['spatial']"),  # garbage float64: NaN or beyond float32
    ],
)
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
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", ""), "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, str(script), str(good_file), str(tmp_path / "f.h5ad"), str(tmp_path / "out"), "12"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
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
        ds = f.create_dataset("X", data=np.full(adata.shape, "1.0", dtype=object), dtype=h5py.string_dtype())
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


@pytest.mark.parametrize(
    "coords, patterns",
    [
        (lambda xy: xy[:, :1], ["shape (n_obs, 2) or (n_obs, 3)", "(200, 1)"]),
        (lambda xy: np.hstack([xy, xy]), ["shape (n_obs, 2) or (n_obs, 3)", "(200, 4)"]),
        (lambda xy: xy.astype(str), ["must hold numbers", "dtype object"]),
        (_nan_at_3, ["NaN or infinite coordinates", "1 of 200"]),
        (_inf_at_5, ["NaN or infinite coordinates", "1 of 200"]),
    ],
    ids=["1-column", "4-columns", "strings", "nan", "inf"],
)
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
    refused(
        train(path, tmp_path / "out", "--batch-key", "section"),
        path,
        capsys,
        "'section'",
        "must have no missing values, got 2 missing",
    )


@pytest.mark.parametrize(
    "shape, pattern", [((0, 20), "no observations (n_obs == 0)"), ((50, 0), "no variables (n_vars == 0)")]
)
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
    refused(
        train(path, tmp_path / "out", "--batch-key", "section", "--method", "knn", "--n-neighbors", "6"),
        path,
        capsys,
        "n_neighbors=6",
        "section 'tiny'",
        "has only 4",
    )


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
    if (
        shutil.which("chattr") is None
        or subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0
    ):
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
    monkeypatch.setattr(torch, "save", disk_full_save(_training_state))
    line = refused(
        options + ["--epochs", "4", "--resume"],
        good_file,
        capsys,
        "could not write checkpoint",
        "the disk is full",
        str(last),
        "previous file is left intact",
    )
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
    result = subprocess.run(
        [sys.executable, "-m", "stepgraph", "train", str(path), "--out", str(tmp_path / "out"), "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a readable .h5ad file" in lines[0] and "Traceback" not in result.stderr
    assert digest(path) == before


# ------------------------------------------------- HDF5 files from strangers
def _copy(good_file, tmp_path, name="stranger.h5ad") -> Path:
    path = tmp_path / name
    shutil.copy(good_file, path)
    return path


def _nothing_written(out: Path) -> None:
    assert not out.exists(), sorted(p.name for p in out.iterdir())


SECRET = b"root:x:0:0:root:/root:/bin/bash\nsecret-token-1234\n"  # stands in for /etc/passwd


def _external_link(path, tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["secret"] = np.frombuffer(SECRET, np.uint8)
    with h5py.File(path, "r+") as f:
        f["uns"]["leak"] = h5py.ExternalLink(str(other), "/secret")
    return ["external link", "other.h5"]


def _external_storage(path, tmp_path):
    secret = tmp_path / "passwd"
    secret.write_bytes(SECRET)
    with h5py.File(path, "r+") as f:
        f["uns"].create_dataset("passwd", shape=(len(SECRET),), dtype="u1", external=[(str(secret), 0, len(SECRET))])
    return ["'/uns/passwd'", "external storage", "passwd"]


def _virtual_dataset(path, tmp_path):
    other = tmp_path / "source.h5"
    with h5py.File(other, "w") as f:
        f["data"] = np.frombuffer(SECRET, np.uint8)
    layout = h5py.VirtualLayout(shape=(len(SECRET),), dtype="u1")
    layout[:] = h5py.VirtualSource(str(other), "data", shape=(len(SECRET),))
    with h5py.File(path, "r+") as f:
        f["uns"].create_virtual_dataset("mirror", layout)
    return ["'/uns/mirror'", "virtual dataset", "source.h5"]


def _gzip_bomb(path, tmp_path):
    """128 MiB of zeros that gzip keeps in about 130 KB."""
    chunk = 1 << 20
    with h5py.File(path, "r+") as f:
        ds = f["uns"].create_dataset(
            "bomb", shape=(32 * chunk,), dtype="f4", chunks=(chunk,), compression="gzip", compression_opts=9
        )
        zeros = np.zeros(chunk, np.float32)
        for i in range(32):
            ds[i * chunk : (i + 1) * chunk] = zeros
    assert path.stat().st_size < 1 << 20
    return ["declares 128.", "'/uns/bomb' alone", "compression bomb", "--max-inflation"]


def _unwritten_giant(path, tmp_path):
    """A dataset that declares 8 GB and stores nothing (HDF5 fills it on read)."""
    with h5py.File(path, "r+") as f:
        f["uns"].create_dataset("giant", shape=(10**9,), dtype="f8", chunks=(10**6,))
    return ["declares 7.5 GB", "'/uns/giant' alone"]


@pytest.mark.parametrize("backed", [False, True], ids=["memory", "backed"])
@pytest.mark.parametrize("build", [_external_link, _external_storage, _virtual_dataset, _gzip_bomb, _unwritten_giant])
def test_files_that_point_outside_or_inflate_are_refused_before_reading(build, backed, good_file, tmp_path, capsys):
    path = _copy(good_file, tmp_path)
    patterns = build(path, tmp_path)
    before = digest(path)
    out = tmp_path / "out"
    line = refused(train(path, out, *(["--backed"] if backed else [])), path, capsys, "refused", *patterns)
    assert "secret-token" not in line
    assert digest(path) == before
    _nothing_written(out)


def test_the_inflation_bound_can_be_raised_for_a_trusted_file(good_file, tmp_path, capsys):
    path = _copy(good_file, tmp_path)
    _gzip_bomb(path, tmp_path)
    out = tmp_path / "out"
    assert main(train(path, out, "--max-inflation", "100000")) == 0
    assert (out / "adata.h5ad").is_file()


def _bad_indices(f):
    f["X/indices"][5] = 10**6


def _indptr_past_the_data(f):
    indptr = f["X/indptr"]
    indptr[-1] = indptr[-1] + 10**6


def _huge_declared_shape(f):
    f["X"].attrs["shape"] = np.array([f["X"].attrs["shape"][0], 10**12])


def _decreasing_indptr(f):
    indptr = f["X/indptr"]
    indptr[10] = indptr[20]


@pytest.mark.parametrize("backed", [False, True], ids=["memory", "backed"])
@pytest.mark.parametrize(
    "damage, pattern",
    [
        (_bad_indices, "its indices must lie in [0, 20), got [0, 1000000]"),
        (_indptr_past_the_data, "not a non-decreasing sequence within the stored values"),
        (_huge_declared_shape, "its shape is (200, 1000000000000), but the file's cells and genes make it (200, 20)"),
        (_decreasing_indptr, "not a non-decreasing sequence"),
    ],
)
def test_malformed_csr_is_one_line_in_memory_and_backed(damage, pattern, backed, good_file, tmp_path, capsys):
    path = _copy(good_file, tmp_path)
    with h5py.File(path, "r+") as f:
        damage(f)
    out = tmp_path / "out"
    refused(
        train(path, out, *(["--backed"] if backed else [])), path, capsys, "adata.X is a malformed CSR matrix", pattern
    )
    _nothing_written(out)


def test_checkpoint_that_inflates_is_refused_before_torch_load(good_file, tmp_path, capsys):
    """A state_dict re-zipped with deflate: 80 MiB of zeros in a file of about 80 KB."""
    import zipfile

    plain = tmp_path / "plain.pt"
    torch.save({"weight": torch.zeros(20 * 2**20)}, plain)
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    assert bomb.stat().st_size < 1 << 20
    out = tmp_path / "out"
    refused(
        train(good_file, out, "--init-weights", bomb),
        good_file,
        capsys,
        "checkpoint path=",
        "bomb.pt",
        "declares 80.0 MB",
        "refused before reading it",
    )
    with pytest.raises(ValueError, match="compression bomb"):
        load_checkpoint(bomb)
    _nothing_written(out)


# ------------------------------------------------------------ bad counts and options
def test_negative_counts_name_how_many_cells(good_file, tmp_path, capsys):
    path = tmp_path / "negative.h5ad"
    adata = tissue()
    adata.X = adata.X.toarray()
    adata.X[[3, 7, 9], 0] = -1.0
    adata.write_h5ad(path)
    for backed in ([], ["--backed"]):
        refused(
            train(path, tmp_path / "out", *backed),
            path,
            capsys,
            "adata.X holds negative values in 3 of 200 cells",
            f"obs {adata.obs_names[3]!r}",
        )
    everything = tmp_path / "all_negative.h5ad"
    adata.X = -np.abs(adata.X) - 1
    adata.write_h5ad(everything)
    refused(train(everything, tmp_path / "out"), everything, capsys, "in 200 of 200 cells")
    _nothing_written(tmp_path / "out")


@pytest.mark.parametrize(
    "option, pattern",
    [
        (["--device", "foo"], "--device 'foo' is not a device"),
        (["--device", "cuda:99"], "--device 'cuda:99'"),
        (["--radius", "0"], "--radius: expected a positive number, got '0'"),
        (["--radius", "-1"], "--radius: expected a positive number"),
        (["--graph-scale", "0"], "--graph-scale: expected a positive number, got '0'"),
        (["--dist-timeout", "0"], "--dist-timeout: expected a positive number"),
    ],
)
def test_bad_options_are_one_line_before_any_work(option, pattern, good_file, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:  # argparse's own errors exit 2 too
        code = main(train(good_file, out, *option))
        raise SystemExit(code)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert pattern in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("stepgraph")
    _nothing_written(out)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_one_line(good_file, tmp_path, capsys):
    refused(
        train(good_file, tmp_path / "out", "--device", "cuda"),
        good_file,
        capsys,
        "--device 'cuda': CUDA is not available on this machine",
        "use --device cpu",
    )
    _nothing_written(tmp_path / "out")


def test_duplicate_coordinates_cannot_make_the_radius_graph_quadratic(tmp_path, capsys):
    path = tmp_path / "stacked.h5ad"
    adata = ad.AnnData(sp.random(15_000, 5, density=0.5, format="csr", dtype=np.float32, random_state=0))
    adata.obsm["spatial"] = np.zeros((15_000, 2))
    adata.obsm["spatial"][:50] = np.random.default_rng(0).random((50, 2)) * 100
    adata.write_h5ad(path)
    output = tmp_path / "graph.h5ad"
    refused(
        ["graph", path, "--method", "radius", "--radius", "1", "--output", output],
        path,
        capsys,
        "2.23e+08 edges",
        "more than the bound of 256",
        "14950 cells share their coordinates",
        "Remove duplicate coordinates",
    )
    assert not output.exists()


def test_a_loss_that_is_not_a_dict_names_its_type():
    from stepgraph import BaseDataset as Dataset
    from stepgraph import Trainer
    from tests.conftest import TinyAutoencoder

    class TensorLoss(TinyAutoencoder):
        def loss(self, x, **kw):
            return super().loss(x, **kw)["recon_loss"]

    ds = Dataset(tissue())
    trainer = Trainer(TensorLoss(ds.n_vars), progress=False)
    with pytest.raises(TypeError, match=r"must return a dict of named losses.*got Tensor"):
        trainer.train_batch(epochs=1, loaders=Trainer.make_loaders(ds, 64, split_rate=0))


# ------------------------------------------------------------ links in --out
def test_input_hard_linked_into_out_is_refused(good_file, tmp_path, capsys):
    path = _copy(good_file, tmp_path, "input.h5ad")
    out = tmp_path / "out"
    out.mkdir()
    for name in ("adata.h5ad", "summary.json"):
        os.link(path, out / name)
        refused(train(path, out), path, capsys, "would overwrite the input file", name, "the same file")
        os.unlink(out / name)
    assert sorted(p.name for p in out.iterdir()) == []


def test_symlinks_planted_in_out_are_replaced_never_followed(good_file, tmp_path, capsys):
    path = _copy(good_file, tmp_path, "input.h5ad")
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    (out / "history.json").symlink_to("../input.h5ad")  # the input: refused
    refused(train(path, out), path, capsys, "would overwrite the input file", "history.json")
    (out / "history.json").unlink()
    for name in ("history.json", "figure.png", "adata.h5ad"):  # any other file: the link is replaced
        (out / name).symlink_to(victim)
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "best.pt").symlink_to(victim)
    before = digest(path)
    assert main(train(path, out)) == 0
    assert victim.read_text() == "keep me" and digest(path) == before
    for name in ("history.json", "figure.png", "adata.h5ad", "checkpoints/best.pt"):
        assert not (out / name).is_symlink() and (out / name).is_file(), name
    json.loads((out / "history.json").read_text())


def test_links_that_lead_out_of_out_are_refused(good_file, tmp_path, capsys):
    path = _copy(good_file, tmp_path, "input.h5ad")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "checkpoints").symlink_to(elsewhere)
    refused(train(path, out), path, capsys, "checkpoints", "is a symbolic link", "only inside --out")
    assert list(elsewhere.iterdir()) == []
    (out / "checkpoints").unlink()
    assert main(train(path, out, "--epochs", "1")) == 0
    capsys.readouterr()
    last = out / "checkpoints" / "last.pt"
    shutil.move(last, elsewhere / "last.pt")
    last.symlink_to(elsewhere / "last.pt")
    refused(
        train(path, out, "--epochs", "2", "--resume"),
        path,
        capsys,
        "last.pt",
        "is a symbolic link",
        "read only from files inside --out",
    )


def test_graph_output_that_is_another_name_for_the_input_is_refused(good_file, tmp_path, capsys):
    path = _copy(good_file, tmp_path, "input.h5ad")
    os.link(path, tmp_path / "hard.h5ad")
    (tmp_path / "soft.h5ad").symlink_to(path)
    for other in ("hard.h5ad", "soft.h5ad"):
        refused(
            ["graph", path, "--output", tmp_path / other, "--overwrite"],
            path,
            capsys,
            "is another name (a hard or symbolic link) for the input",
        )
    assert main(["graph", str(path), "--output", str(path), "--overwrite"]) == 0  # into INPUT, on purpose
    assert "spatial_connectivities" in ad.read_h5ad(path).obsp
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hard.h5ad", "input.h5ad", "soft.h5ad"]


# --------------------------------------------------- tampered training states
@pytest.fixture(scope="module")
def finished_run(good_file, tmp_path_factory):
    """A run of 2 epochs: its --out holds last.pt and best.pt."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(train(good_file, out, "--epochs", "2")) == 0
    return out


def _tampered(finished_run, tmp_path, edit, name="last.pt") -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    path = out / "checkpoints" / name
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)
    return out


def _drop(key):
    return lambda state: state.pop(key)


def _set(key, value):
    return lambda state: state.__setitem__(key, value)


def _progress(epoch):
    return lambda state: state["progress"].__setitem__("epoch", epoch)


@pytest.mark.parametrize(
    "edit, pattern",
    [
        (_drop("model"), "holds no model state"),
        (_drop("optimizer"), "holds no optimizer state"),
        (_set("model", None), "holds no model state"),
        (_set("rng", []), "its RNG state is missing or empty"),
        (_set("rng", [{"python": "garbage"}]), "its RNG state is not valid"),
        (_progress(-5), "is out of range"),
        (_progress(10**9), "is out of range"),
        (_set("early_stopping", "not a state"), "the saved early_stopping state does not fit"),
    ],
)
def test_tampered_training_state_is_one_line_and_changes_nothing(
    edit, pattern, good_file, finished_run, tmp_path, capsys
):
    out = _tampered(finished_run, tmp_path, edit)
    before = {p: digest(p) for p in out.rglob("*") if p.is_file()}
    refused(train(good_file, out, "--epochs", "3", "--resume"), good_file, capsys, "resume_from=", pattern)
    assert {p: digest(p) for p in out.rglob("*") if p.is_file()} == before


def test_wrong_shaped_best_weights_are_one_line(good_file, finished_run, tmp_path, capsys):
    def shrink(state):
        key = next(k for k, v in state.items() if v.ndim == 2)
        state[key] = state[key][:, :1].clone()

    out = _tampered(finished_run, tmp_path, shrink, name="best.pt")
    # no epoch left to run: the end of training restores best.pt
    refused(
        train(good_file, out, "--epochs", "2", "--resume"),
        good_file,
        capsys,
        "best weights in",
        "best.pt",
        "do not fit this model",
    )
    assert not (out / "adata.h5ad").exists() or digest(out / "adata.h5ad") == digest(finished_run / "adata.h5ad")


@pytest.mark.parametrize(
    "change, pattern",
    [
        (["--lr", "0.1"], "lr was 0.003 when it was saved, now 0.1"),
        (["--seed", "4"], "seed was 0 when it was saved, now 4"),
        (["--batch-size", "32"], "batch_size was 64 when it was saved, now 32"),
        (["--fanout", "4"], "fanout was [3] when it was saved, now [4]"),
        (["--n-neighbors", "5"], "n_neighbors was 6 when it was saved, now 5"),
        (["--patience", "9"], "patience was 5 when it was saved, now 9"),
        (["--split-rate", "0.2"], "split_rate was 0.1 when it was saved, now 0.2"),
    ],
)
def test_resume_with_other_settings_names_the_setting(change, pattern, good_file, finished_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    before = {p: digest(p) for p in out.rglob("*") if p.is_file()}
    refused(
        train(good_file, out, "--epochs", "3", "--resume", *change),
        good_file,
        capsys,
        "belongs to another run",
        pattern,
        "only the number of epochs may grow",
    )
    assert {p: digest(p) for p in out.rglob("*") if p.is_file()} == before


def test_resume_on_another_tissue_is_refused(finished_run, tmp_path, capsys):
    other = tmp_path / "other.h5ad"
    tissue(seed=4, n_cells=210).write_h5ad(other)
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    refused(
        train(other, out, "--epochs", "3", "--resume"),
        other,
        capsys,
        "belongs to another run",
        "input_shape was [200, 20] when it was saved, now [210, 20]",
    )
    same_shape = tmp_path / "same_shape.h5ad"
    renamed = tissue()
    renamed.obs_names = [f"other{i}" for i in range(renamed.n_obs)]
    renamed.write_h5ad(same_shape)
    refused(
        train(same_shape, out, "--epochs", "3", "--resume"),
        same_shape,
        capsys,
        "belongs to another run",
        "input_names was",
    )


def test_resume_from_another_working_directory_keeps_this_runs_best_weights(good_file, tmp_path, capsys, monkeypatch):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    monkeypatch.chdir(first)
    assert main(train(good_file, "run", "--epochs", "2")) == 0
    last = load_checkpoint(first / "run" / "checkpoints" / "last.pt")
    assert last["best"]["path"] == "best.pt"  # relative to the checkpoint's folder
    monkeypatch.chdir(second)
    assert main(train(good_file, first / "run", "--epochs", "3", "--resume")) == 0
    summary = json.loads((first / "run" / "summary.json").read_text())
    assert Path(summary["outputs"]["checkpoint"]).resolve() == (first / "run" / "checkpoints" / "best.pt")
    assert list(second.iterdir()) == []  # nothing written in the working directory


def test_a_lock_file_hard_linked_to_another_file_is_refused(tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    os.link(victim, out / ".stepgraph.lock")
    assert main(["demo", "--n-cells", "300", "--epochs", "1", "--out", str(out), "--quiet"]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("stepgraph demo: error:") and "is not a plain file of its own" in line
    assert victim.read_text() == "precious" and sorted(p.name for p in out.iterdir()) == [".stepgraph.lock"]
