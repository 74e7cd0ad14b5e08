"""``stepgraph info``: what a bug report needs about this installation."""

from __future__ import annotations

import importlib
import platform
import sys
import warnings
from importlib import metadata

__all__ = ["info_lines", "torch_scatter_status"]

_PACKAGES = ("torch", "torch-geometric", "anndata", "numpy", "scipy", "scikit-learn", "pandas", "matplotlib",
             "torch-scatter", "torch-sparse", "pyg-lib")


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def torch_scatter_status() -> tuple[bool, str]:
    """Whether PyG uses torch-scatter, and why not when it does not.

    torch-scatter is optional (``pip install stepgraph[scatter]``): PyG falls
    back to torch's own scatter operations. A wheel built for another torch
    fails to load, and PyG then disables it with a warning; that warning's
    text is the reason returned.
    """
    if _version("torch-scatter") == "not installed":
        return False, "not installed (optional: pip install 'stepgraph[scatter]'; PyG uses torch's scatter)"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import torch_geometric.typing as pyg_typing
    if pyg_typing.WITH_TORCH_SCATTER:
        return True, "loaded"
    try:
        importlib.import_module("torch_scatter")
    except Exception as err:  # a binary built for another torch raises OSError/ImportError
        return False, f"installed but not loadable: {type(err).__name__}: {str(err).splitlines()[0]}"
    reason = next((str(w.message).splitlines()[0] for w in caught if "scatter" in str(w.message)), None)
    return False, f"installed but disabled by PyG{': ' + reason if reason else ''}"


def info_lines() -> list[str]:
    """The lines ``stepgraph info`` prints: versions, threads, sampler backend, torch-scatter."""
    import torch

    import stepgraph
    from stepgraph.data.sampler import has_native_sampler

    lines = [f"stepgraph {stepgraph.__version__} ({stepgraph.__file__})",
             f"python {sys.version.split()[0]} on {platform.platform()}"]
    lines += [f"{name}: {_version(name)}" for name in _PACKAGES]
    lines.append(f"torch threads: {torch.get_num_threads()} (interop {torch.get_num_interop_threads()})")
    lines.append(f"cuda available: {torch.cuda.is_available()}")
    lines.append("sampler backend (auto): " + ("pyg (pyg-lib or torch-sparse)" if has_native_sampler()
                                               else "builtin (pure torch; pyg-lib and torch-sparse absent)"))
    loaded, why = torch_scatter_status()
    lines.append(f"torch-scatter status: {why}")
    return lines
