"""Seeding and capturing every random number generator a training run uses.

The captured states hold tensors, ints, floats, strings, tuples and dicts only,
so a checkpoint that stores them loads with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import random
from typing import Any, cast

import numpy as np
import torch

from stepgraph._validation import check_int

__all__ = ["seed_everything", "get_rng_state", "set_rng_state"]


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and CUDA).

    Parameters
    ----------
    seed
        Any integer; the same seed gives the same initialisation, shuffling
        and neighbour sampling.
    """
    check_int(seed, "seed")
    random.seed(int(seed))
    np.random.seed(int(seed) % 2**32)
    torch.manual_seed(int(seed))


def get_rng_state() -> dict[str, Any]:
    """The states of Python's, NumPy's and torch's global generators.

    Returns
    -------
    dict
        ``"python"``: :func:`random.getstate` (a tuple of ints);
        ``"numpy"``: the legacy global generator's state as a dict (the
        Mersenne-Twister key as an ``int64`` tensor, the position, the cached
        Gaussian); ``"torch"`` and, with CUDA, ``"cuda"``: ``uint8`` tensors.
        Only plain types and tensors, so it loads with ``weights_only=True``.
    """
    # numpy's stubs give the no-argument call the dict form; legacy=True (the default) is this tuple
    name, key, pos, has_gauss, cached = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    state = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": str(name),
            "key": torch.from_numpy(key.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states captured by :func:`get_rng_state`, bitwise.

    Also accepts the NumPy state as :func:`numpy.random.get_state` returns it
    (a tuple holding an array), as older stepgraph checkpoints stored it.
    """
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    np_state = state["numpy"]
    if isinstance(np_state, dict):
        np_state = (
            np_state["bit_generator"],
            np_state["key"],
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    name, key, pos, has_gauss, cached = np_state
    key = key.cpu().numpy() if isinstance(key, torch.Tensor) else np.asarray(key)
    np.random.set_state((str(name), key.astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
