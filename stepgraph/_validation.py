"""Input checks shared by the whole package, with one error wording.

Every error names the argument, the value it got and what was expected, in
the form ``"<name> must be <expected>, got <name>=<value>"`` (scikit-learn's
convention). Nothing here changes the caller's data.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

import numpy as np
import pandas as pd
import torch

__all__ = ["ArgumentTypeError", "check_int", "check_number", "check_choice", "as_index", "category_codes"]


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type. It is both a ``TypeError`` and a
    ``ValueError``, so code catching either (as STEP's callers and earlier
    stepgraph versions did) still catches it."""


def _fail(name: str, expected: str, value: Any, error: type[Exception] = ValueError):
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    raise error(f"{name} must be {expected}, got {name}={shown}")


def check_int(value: Any, name: str, minimum: int | None = None, allow_none: bool = False) -> int | None:
    """``value`` as an ``int`` (a Python or NumPy integer, not a bool) that is at least ``minimum``.

    Raises
    ------
    TypeError
        When ``value`` is not an integer.
    ValueError
        When it is below ``minimum``.
    """
    if value is None and allow_none:
        return None
    expected = "an int" if minimum is None else f"an int >= {minimum}"
    if allow_none:
        expected += " or None"
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        _fail(name, expected, value, ArgumentTypeError)
    if minimum is not None and value < minimum:
        _fail(name, expected, value)
    return int(value)


def check_number(value: Any, name: str, minimum: float | None = None, positive: bool = False,
                 allow_none: bool = False) -> float | None:
    """``value`` as a finite ``float``, at least ``minimum`` (or above 0 when ``positive``)."""
    if value is None and allow_none:
        return None
    expected = "a finite number" + (" > 0" if positive else "" if minimum is None else f" >= {minimum}")
    if allow_none:
        expected += " or None"
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool):
        _fail(name, expected, value, ArgumentTypeError)
    if not math.isfinite(value) or (positive and value <= 0) or (minimum is not None and value < minimum):
        _fail(name, expected, value)
    return float(value)


def check_choice(value: Any, name: str, choices: Collection[Any]) -> Any:
    """``value`` when it is one of ``choices``; a ``ValueError`` listing them otherwise."""
    if value not in choices:
        _fail(name, "one of " + ", ".join(repr(c) for c in choices), value)
    return value


def as_index(ind: Any, name: str, n: int, allow_empty: bool = False) -> torch.Tensor:
    """Positions ``ind`` into ``range(n)`` as a 1-D ``int64`` tensor.

    Accepts integer positions (list, NumPy array or tensor) or a boolean mask of
    length ``n``. Positions must be unique and within ``[0, n)``.

    Parameters
    ----------
    ind
        The positions or the mask.
    name
        The argument's name, for errors.
    n
        Number of rows indexed.
    allow_empty
        Accept an empty index (a rank's share of a small validation set).
    """
    tensor = ind if isinstance(ind, torch.Tensor) else torch.as_tensor(np.asarray(ind))
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bool:
        if tensor.numel() != n:
            _fail(name, f"a boolean mask of length {n} or integer positions",
                  f"<mask of length {tensor.numel()}>")
        tensor = tensor.nonzero().flatten()
    elif tensor.dtype.is_floating_point or tensor.dtype.is_complex:
        _fail(name, "integer positions or a boolean mask", f"<{tensor.dtype} values>", ArgumentTypeError)
    tensor = tensor.long().flatten()
    if tensor.numel() == 0:
        if allow_empty:
            return tensor
        _fail(name, f"a non-empty set of positions in [0, {n})", "<empty>")
    low, high = int(tensor.min()), int(tensor.max())
    if low < 0 or high >= n:
        raise IndexError(f"{name} must hold positions in [0, {n}), got positions from {low} to {high}")
    if torch.unique(tensor).numel() != tensor.numel():
        _fail(name, "unique positions", f"<{tensor.numel() - torch.unique(tensor).numel()} duplicated>")
    return tensor


def category_codes(values: Any, name: str, allow_missing: bool = False) -> tuple[np.ndarray, pd.Index]:
    """Integer codes and categories of a categorical column (``obs[key]``).

    Parameters
    ----------
    values
        The column (a pandas Series, a list or an array).
    name
        How to name the column in errors, e.g. ``"batch_key='section'"``.
    allow_missing
        Give missing values the code ``-1`` instead of raising.

    Returns
    -------
    codes, categories
        ``int64`` codes (``-1`` for a missing value) and the category labels.
    """
    cat = pd.Categorical(values)
    codes = cat.codes.astype(np.int64)
    if not allow_missing and (codes < 0).any():
        raise ValueError(f"{name} must have no missing values, got {int((codes < 0).sum())} missing "
                         f"(first at position {int(np.flatnonzero(codes < 0)[0])})")
    return codes, cat.categories
