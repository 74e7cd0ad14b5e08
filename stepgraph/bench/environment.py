"""What a bug report or a benchmark report needs about this installation.

The one place that gathers package versions, cores and threads: ``stepgraph
info`` prints :func:`info_lines`, the benchmark harness records
:func:`environment` beside every figure.
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
import warnings
from importlib import metadata

__all__ = ["environment", "info_lines", "package_version", "torch_scatter_status", "usable_cores"]

#: The distributions whose versions every report names.
PACKAGES = (
    "stepgraph",
    "torch",
    "torch-geometric",
    "anndata",
    "numpy",
    "scipy",
    "scikit-learn",
    "pandas",
    "h5py",
    "matplotlib",
    "torch-scatter",
    "torch-sparse",
    "pyg-lib",
    "squidpy",
)


def package_version(name: str) -> str:
    """The installed version of distribution ``name``, or ``"not installed"``."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def environment(threads: int | None = None) -> dict:
    """Versions, cores and threads of this process, as the benchmark reports record them.

    Parameters
    ----------
    threads
        The torch threads the measured code used; torch's current setting when ``None``.
    """
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores(),
        "torch_threads": threads,
        "versions": {name: package_version(name) for name in PACKAGES},
    }


def torch_scatter_status() -> tuple[bool, str]:
    """Whether PyG uses torch-scatter, and why not when it does not.

    torch-scatter is optional (``pip install stepgraph[scatter]``): PyG falls
    back to torch's own scatter operations. A wheel built for another torch
    fails to load, and PyG then disables it with a warning; that warning's
    text is the reason returned.
    """
    if package_version("torch-scatter") == "not installed":
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
    """The lines ``stepgraph info`` prints: versions, threads, sampler backends, torch-scatter."""
    import torch

    import stepgraph
    from stepgraph.data.sampler import has_native_sampler

    lines = [
        f"stepgraph {stepgraph.__version__} ({stepgraph.__file__})",
        f"python {sys.version.split()[0]} on {platform.platform()}",
    ]
    lines += [f"{name}: {package_version(name)}" for name in PACKAGES if name != "stepgraph"]
    from stepgraph.train.threads import choose_threads

    lines.append(
        f"torch threads: {torch.get_num_threads()} (interop {torch.get_num_interop_threads()}); "
        f"stepgraph's policy would choose {choose_threads()}"
    )
    lines.append(f"cuda available: {torch.cuda.is_available()}")
    # "auto" always picks the built-in sampler; "pyg" needs pyg-lib or torch-sparse
    lines.append(
        "sampler backend (auto): builtin; 'pyg' is "
        + (
            "available (pyg-lib or torch-sparse)"
            if has_native_sampler()
            else "unavailable (pyg-lib and torch-sparse absent)"
        )
    )
    loaded, why = torch_scatter_status()
    lines.append(f"torch-scatter status: {why}")
    return lines
