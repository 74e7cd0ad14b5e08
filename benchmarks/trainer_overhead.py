"""Per-step overhead of ``Trainer.train_batch`` against a bare PyTorch loop.

Both train the same MLP autoencoder on the same sparse AnnData through the same
``DataLoader`` (built by ``Trainer.make_loaders``). Each repeat runs one epoch
of each, alternating which goes first, from identical initial weights; the
figure is the median over repeats of the per-step time ratio
``trainer / bare loop``. The bare loop does what a careful hand-written loop
does: zero_grad, forward, backward, step, and accumulates the epoch's mean loss
with ``loss.item()``.

Run ``python benchmarks/trainer_overhead.py --help`` for the sizes.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import anndata as ad
import numpy as np
import scipy.sparse as sp
import torch
from _common import RESULTS, markdown_table, write_json

from stepgraph import BaseDataset, Trainer


class MLPAutoencoder(torch.nn.Module):
    def __init__(self, n_vars: int, hidden: int, latent: int):
        super().__init__()
        self.encoder = torch.nn.Sequential(
            torch.nn.Linear(n_vars, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, latent)
        )
        self.decoder = torch.nn.Sequential(
            torch.nn.Linear(latent, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, n_vars)
        )

    def loss(self, x, ind=None, **kwargs):
        return {"recon_loss": torch.nn.functional.mse_loss(self.decoder(self.encoder(x)), x)}


def make_dataset(n_obs: int, n_vars: int, density: float, seed: int = 0) -> BaseDataset:
    rng = np.random.default_rng(seed)
    X = sp.random(n_obs, n_vars, density=density, format="csr", dtype=np.float32, random_state=rng)
    X.data = np.log1p(rng.poisson(3.0, X.nnz).astype(np.float32) + 1)
    return BaseDataset(ad.AnnData(X=X))


def bare_epoch(model, optimizer, loader) -> tuple[float, int]:
    model.train()
    total, count, steps = 0.0, 0, 0
    for (x,) in loader:
        optimizer.zero_grad(set_to_none=True)
        loss = model.loss(x)["recon_loss"]
        loss.backward()
        optimizer.step()
        total += loss.item() * x.shape[0]
        count += x.shape[0]
        steps += 1
    return total / count, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-obs", type=int, default=20_000, help="cells (default 20000)")
    parser.add_argument("--n-vars", type=int, default=2_000, help="genes (default 2000)")
    parser.add_argument("--density", type=float, default=0.05, help="non-zero share of X (default 0.05)")
    parser.add_argument("--batch-size", type=int, default=512, help="batch size (default 512)")
    parser.add_argument("--hidden", type=int, default=256, help="hidden width (default 256)")
    parser.add_argument("--repeats", type=int, default=7, help="epochs of each, alternating (default 7)")
    parser.add_argument("--progress", action="store_true", help="also time the trainer with its progress bars on")
    parser.add_argument("--out", default=str(RESULTS / "trainer_overhead.json"), help="JSON output")
    args = parser.parse_args()

    dataset = make_dataset(args.n_obs, args.n_vars, args.density)
    loader, _ = Trainer.make_loaders(dataset, args.batch_size, split_rate=0)
    torch.manual_seed(0)
    init = MLPAutoencoder(args.n_vars, args.hidden, 32)

    bare_model = copy.deepcopy(init)
    bare_opt = torch.optim.Adam(bare_model.parameters(), lr=1e-3)
    variants = {"trainer": False} | ({"trainer+progress": True} if args.progress else {})
    trainers = {}
    for name, progress in variants.items():
        trainer = Trainer(copy.deepcopy(init), progress=progress, trace_func=lambda m: None)
        trainer.init_optimizer(lr=1e-3)
        trainers[name] = trainer

    # warm-up: one epoch each (allocator, first-call costs)
    bare_epoch(bare_model, bare_opt, loader)
    for trainer in trainers.values():
        trainer.train_batch(epochs=1, loaders=(loader, None))

    times = {"bare": [], **{name: [] for name in trainers}}
    steps = len(loader)
    for rep in range(args.repeats):
        order = ["bare", *trainers] if rep % 2 == 0 else [*reversed(trainers), "bare"]
        for name in order:
            start = time.perf_counter()
            if name == "bare":
                bare_epoch(bare_model, bare_opt, loader)
            else:
                trainers[name].train_batch(epochs=1, loaders=(loader, None))
            times[name].append((time.perf_counter() - start) / steps)

    rows = []
    for name, per_step in times.items():
        ratios = [t / b for t, b in zip(per_step, times["bare"])]
        rows.append(
            {
                "loop": name,
                "median step ms": 1e3 * statistics.median(per_step),
                "min step ms": 1e3 * min(per_step),
                "median ratio vs bare": statistics.median(ratios),
            }
        )
    print(
        f"{args.n_obs} cells x {args.n_vars} genes (sparse, density {args.density}), "
        f"batch {args.batch_size}, {steps} steps/epoch, {args.repeats} repeats"
    )
    print(markdown_table(rows, ["loop", "median step ms", "min step ms", "median ratio vs bare"]))
    write_json(args.out, {"args": vars(args), "steps_per_epoch": steps, "rows": rows, "per_step_seconds": times})


if __name__ == "__main__":
    main()
