"""The command line under signals, kills and a second run: real child processes.

Every case checks the exit status, the single line on stderr, the input's
sha256 and what ``--out`` holds. A kill at any moment leaves, under every
final name, either the previous good file or a complete new one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import pytest

from stepgraph.cli import main
from stepgraph.synthetic import synthetic_tissue
from stepgraph.train.checkpointing import load_checkpoint

FAST = ["--batch-size", "64", "--fanout", "3", "--quiet"]
ROOT = str(Path(__file__).resolve().parents[2])
ENV = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "PYTHONWARNINGS": "ignore"}


def digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def child(*args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "stepgraph", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def wait_for(condition, timeout=90.0, step=0.005) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(step)
    return False


@pytest.fixture(scope="module")
def tissue_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("reliability") / "tissue.h5ad"
    synthetic_tissue(n_cells=300, n_genes=20, seed=5).write_h5ad(path)
    return path


FINAL = [
    "adata.h5ad",
    "history.csv",
    "history.json",
    "figure.png",
    "summary.json",
    "checkpoints/best.pt",
    "checkpoints/last.pt",
]


def assert_complete(out: Path, n_obs: int) -> None:
    """Every final name in ``out`` holds a whole, readable file."""
    for name in FINAL:
        path = out / name
        assert path.is_file(), name
    assert ad.read_h5ad(out / "adata.h5ad").obsm["X_stepgraph"].shape[0] == n_obs
    assert isinstance(json.loads((out / "history.json").read_text()), list)
    assert json.loads((out / "summary.json").read_text())["n_obs"] == n_obs
    rows = (out / "history.csv").read_text().splitlines()
    assert rows[0].startswith("epoch") and len(rows) >= 2
    assert (out / "figure.png").read_bytes()[-8:] == b"IEND\xaeB`\x82"  # a PNG's last chunk
    assert load_checkpoint(out / "checkpoints" / "last.pt")["format"] == "stepgraph-training-state"
    assert isinstance(load_checkpoint(out / "checkpoints" / "best.pt"), dict)


def test_a_busy_folder_names_its_holder_and_sigterm_saves_a_resumable_state(tissue_file, tmp_path, capsys):
    out = tmp_path / "run"
    options = [*FAST, "--patience", "500"]
    before = digest(tissue_file)
    running = child("train", tissue_file, "--out", out, "--epochs", "500", *options)
    try:
        assert wait_for(lambda: (out / "checkpoints" / "last.pt").is_file()), running.stderr.read()
        # a second run into the same folder: refused, naming the process that holds it
        assert main(["train", str(tissue_file), "--out", str(out), "--epochs", "2", *options]) == 2
        line = one_line(capsys.readouterr().err)
        assert f"is in use by another stepgraph run (process {running.pid})" in line
        running.send_signal(signal.SIGTERM)
        stdout, stderr = running.communicate(timeout=60)
    finally:
        running.kill()
    assert running.returncode == 143
    line = one_line(stderr)
    assert (
        line == "stepgraph train: terminated (SIGTERM); rerun with --resume to continue from the last completed epoch"
    )
    interrupted = load_checkpoint(out / "checkpoints" / "interrupted.pt")
    assert interrupted["format"] == "stepgraph-training-state" and "Interrupted after" in stdout
    assert not (out / "adata.h5ad").exists()  # no outputs of a half-trained model
    done = load_checkpoint(out / "checkpoints" / "last.pt")["progress"]["epoch"]
    assert main(["train", str(tissue_file), "--out", str(out), "--epochs", str(done + 1), "--resume", *options]) == 0
    history = json.loads((out / "history.json").read_text())
    assert [row["epoch"] for row in history] == list(range(1, done + 2))
    assert digest(tissue_file) == before


def _temporary_in(out: Path) -> bool:
    try:
        return any(p.name.startswith(".") and ".tmp" in p.name for p in out.iterdir())
    except OSError:
        return False


@pytest.mark.parametrize("resume", [False, True], ids=["rerun", "resume"])
def test_sigkill_during_the_writes_leaves_whole_files(resume, tissue_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(tissue_file), "--out", str(out), "--epochs", "2", *FAST]) == 0
    assert_complete(out, 300)
    before = digest(tissue_file)
    rng = random.Random(7 + resume)
    again = ["--epochs", "3", "--resume"] if resume else ["--epochs", "2", "--seed", "1"]
    landed = []
    for attempt in range(10):  # until a kill lands inside the write stage (at least twice without resume)
        running = child("train", tissue_file, "--out", out, *again, *FAST)
        try:  # the first temporary file in --out starts the write stage; odd attempts kill a random moment later
            wait_for(lambda running=running: _temporary_in(out) or running.poll() is not None)
            time.sleep(rng.uniform(0, 0.1) if attempt % 2 else 0)
            running.send_signal(signal.SIGKILL)
            running.communicate(timeout=60)
        finally:
            running.kill()
        # a writer killed mid-write leaves its temporary file behind: the evidence that the kill landed
        landed.append(_temporary_in(out))
        assert_complete(out, 300)  # the previous good files, or complete new ones
        if sum(landed) >= (1 if resume else 2):
            break
    assert sum(landed) >= (1 if resume else 2), f"no kill landed in the write stage in {len(landed)} attempts"
    assert digest(tissue_file) == before
    # the next run clears what the killed ones left and ends as usual
    assert main(["train", str(tissue_file), "--out", str(out), *again, *FAST]) == 0
    capsys.readouterr()
    assert_complete(out, 300)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [".stepgraph.lock"]
    assert (
        sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.pt", "interrupted.pt", "last.pt"]
        if (out / "checkpoints" / "interrupted.pt").exists()
        else ["best.pt", "last.pt"]
    )


def test_sigkill_of_graph_overwrite_keeps_the_input(tmp_path):
    path = tmp_path / "big.h5ad"
    synthetic_tissue(n_cells=10_000, n_genes=40, seed=1).write_h5ad(path)
    for _ in range(5):  # until the kill lands inside the write
        original = digest(path)
        running = child("graph", path, "--output", path, "--overwrite")
        try:
            wait_for(lambda running=running: _temporary_in(tmp_path) or running.poll() is not None)
            running.send_signal(signal.SIGKILL)
            running.communicate(timeout=60)
        finally:
            running.kill()
        if _temporary_in(tmp_path):  # the killed writer's temporary file: the kill landed before the rename
            break
    assert _temporary_in(tmp_path), "no kill landed in the write in 5 attempts"
    assert digest(path) == original  # killed before the rename: the input as it was, byte for byte
    finished = subprocess.run(
        [sys.executable, "-m", "stepgraph", "graph", str(path), "--output", str(path), "--overwrite"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert finished.returncode == 0, finished.stderr
    assert "spatial_connectivities" in ad.read_h5ad(path).obsp


def test_ctrl_c_during_start_up_is_one_line(tissue_file, tmp_path):
    out = tmp_path / "run"
    before = digest(tissue_file)
    for delay in (0.2, 1.0):
        running = child("train", tissue_file, "--out", out, *FAST)
        time.sleep(delay)
        running.send_signal(signal.SIGINT)
        _, stderr = running.communicate(timeout=60)
        assert running.returncode == 130
        assert "interrupted" in one_line(stderr)
    assert not out.exists() and digest(tissue_file) == before


def _rank_pid(launcher: int, rank: int) -> int | None:
    """The process of ``rank`` among the workers that ``torchrun`` (``launcher``) started."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == launcher:
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ and any(v.startswith(b"TORCHELASTIC_RUN_ID=") for v in environ):
            return int(entry.name)
    return None


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the ranks through /proc")
def test_a_frozen_rank_ends_the_job_within_dist_timeout(tissue_file, tmp_path):
    """Two real ``torchrun`` ranks; rank 1 is frozen (SIGSTOP) after the first epoch:
    rank 0 ends with one line within ``--dist-timeout`` instead of waiting forever."""
    out = tmp_path / "run"
    env = {**ENV, "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--standalone",
            "-m",
            "stepgraph",
            "train",
            str(tissue_file),
            "--out",
            str(out),
            "--dist-timeout",
            "4",
            "--epochs",
            "500",
            "--patience",
            "500",
            *FAST,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    frozen = None
    try:
        assert wait_for(lambda: (out / "checkpoints" / "last.pt").is_file() or launcher.poll() is not None, timeout=120)
        rank0, frozen = _rank_pid(launcher.pid, 0), _rank_pid(launcher.pid, 1)
        assert rank0 and frozen, "no torchrun workers found"
        os.kill(frozen, signal.SIGSTOP)
        stopped_at = time.monotonic()
        assert wait_for(
            lambda: not Path(f"/proc/{rank0}").exists() or (Path(f"/proc/{rank0}/stat").read_text().split()[2] == "Z"),
            timeout=60,
        )
        waited = time.monotonic() - stopped_at
        os.kill(frozen, signal.SIGKILL)  # torchrun would wait 30 s for a stopped process to end
        _, stderr = launcher.communicate(timeout=60)
    finally:
        if frozen is not None:
            with contextlib.suppress(OSError):
                os.kill(frozen, signal.SIGKILL)
        launcher.kill()
    assert waited < 4 + 20, waited  # the timeout, plus the rest of a training step
    ours = [line for line in stderr.splitlines() if line.startswith("stepgraph train:")]
    assert len(ours) == 1 and "another rank stopped answering within --dist-timeout" in ours[0], stderr[-2000:]
    assert "[rank0]:" not in stderr, stderr[-2000:]  # rank 0 printed no traceback (torchrun prints its own)
    assert launcher.returncode != 0
