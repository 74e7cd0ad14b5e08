"""Process-group lifecycle under a real ``torchrun``.

A user script that trains with stepgraph under ``torchrun`` and never calls
``destroy_process_group`` must exit cleanly: stepgraph destroys the group it
initialised (at the latest at interpreter exit), and leaves a group the user
initialised alone.
"""

import os
import subprocess
import sys
import textwrap

import pytest

LAUNCHES = 5  # each launch is a real 2-rank torchrun, several seconds even on a quiet machine
TIMEOUT_S = 120

TRAINING = """
import atexit, sys
from pathlib import Path
import numpy as np, anndata as ad, scipy.sparse as sp, torch, torch.distributed as dist

out = Path(sys.argv[1])

def report():  # registered before stepgraph's hook, so it runs after it (atexit is LIFO)
    (out / f"rank{os.environ['RANK']}.txt").write_text(
        "destroyed" if not dist.is_initialized() else "alive")

import os
atexit.register(report)
from stepgraph import BaseDataset, Trainer

torch.set_num_threads(1)
rng = np.random.default_rng(0)
dataset = BaseDataset(ad.AnnData(X=sp.csr_matrix(rng.poisson(1.0, (200, 12)).astype(np.float32))))


class Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(12, 12)

    def loss(self, x, ind=None, **kwargs):
        return {"recon_loss": torch.nn.functional.mse_loss(self.lin(x), x)}

{setup}
trainer = Trainer(Linear(), progress=False, checkpoint_dir=out / "ckpt", trace_func=lambda m: None)
trainer.train_batch(epochs=2, loaders=Trainer.make_loaders(dataset, 32, split_rate=0.2))
assert trainer.distributed
{teardown}
"""


def launch(script, out_dir):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--standalone",
            str(script),
            str(out_dir),
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env=env,
    )


def write_script(tmp_path, setup="", teardown=""):
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent(TRAINING).replace("{setup}", setup).replace("{teardown}", teardown))
    return script


def test_a_torchrun_script_that_never_destroys_the_group_exits_cleanly_every_time(tmp_path):
    script = write_script(tmp_path)
    for launch_no in range(LAUNCHES):
        out = tmp_path / f"run{launch_no}"
        out.mkdir()
        result = launch(script, out)
        assert result.returncode == 0, f"launch {launch_no}: exit {result.returncode}\n{result.stderr[-2000:]}"
        assert "terminate called" not in result.stderr
        # stepgraph initialised the group, so stepgraph destroyed it before the interpreter ended
        assert [(out / f"rank{r}.txt").read_text() for r in (0, 1)] == ["destroyed", "destroyed"]


def test_a_group_the_user_initialised_is_left_to_the_user(tmp_path):
    setup = 'dist.init_process_group("gloo")'
    teardown = (
        "assert dist.is_initialized()\n"
        "from stepgraph.train.distributed import destroy_owned_group\n"
        "assert destroy_owned_group() is False and dist.is_initialized()\n"
        "dist.destroy_process_group()"
    )
    out = tmp_path / "run"
    out.mkdir()
    result = launch(write_script(tmp_path, setup, teardown), out)
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_cli_under_torchrun_exits_cleanly(tmp_path):
    from stepgraph.synthetic import synthetic_tissue

    synthetic_tissue(n_cells=400, n_genes=20, seed=1).write_h5ad(tmp_path / "tissue.h5ad")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
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
            str(tmp_path / "tissue.h5ad"),
            "--batch-key",
            "section",
            "--epochs",
            "2",
            "--batch-size",
            "64",
            "--out",
            str(tmp_path / "out"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "terminate called" not in result.stderr
    assert (tmp_path / "out" / "adata.h5ad").is_file()  # rank 0 wrote the outputs


@pytest.fixture(autouse=True)
def _not_nested():
    if os.environ.get("WORLD_SIZE", "1") != "1":
        pytest.skip("already inside a distributed launch")
