"""Input checks shared by the whole package, with one error wording.

Every error names the argument, the value it got and what was expected, in
the form ``"<name> must be <expected>, got <name>=<value>"`` (scikit-learn's
convention). Nothing here changes the caller's data.

- scalars: :func:`check_int`, :func:`check_number`, :func:`check_bool`,
  :func:`check_choice`, :func:`check_instance`;
- keys and columns: :func:`check_key`, :func:`category_codes`;
- arrays: :func:`as_index` (positions or a mask), :func:`first_nonfinite`
  and :func:`check_finite` (NaN and infinite values, named by row).
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

__all__ = [
    "ArgumentTypeError",
    "check_int",
    "check_number",
    "check_bool",
    "check_choice",
    "check_instance",
    "check_key",
    "as_index",
    "category_codes",
    "NonFinite",
    "first_nonfinite",
    "check_finite",
    "check_counts",
]


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type. It is both a ``TypeError`` and a
    ``ValueError``, so code catching either (as STEP's callers and earlier
    stepgraph versions did) still catches it.
    """


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


def check_number(
    value: Any,
    name: str,
    minimum: float | None = None,
    positive: bool = False,
    allow_none: bool = False,
    *,
    maximum: float | None = None,
    below: float | None = None,
) -> float | None:
    """``value`` as a finite ``float`` within the bounds given.

    Parameters
    ----------
    value
        The argument (a Python or NumPy number, or a one-element tensor).
    name
        The argument's name, for errors.
    minimum
        Smallest value allowed.
    positive
        Require ``value > 0``.
    allow_none
        Accept ``None`` (returned as ``None``).
    maximum
        Largest value allowed.
    below
        ``value`` must be smaller than this.

    Returns
    -------
    float or None
        The value.

    Raises
    ------
    TypeError
        When ``value`` is not a number.
    ValueError
        When it is not finite or out of bounds.
    """
    if value is None and allow_none:
        return None
    low = "(0" if positive else None if minimum is None else f"[{minimum}"
    high = f"{maximum}]" if maximum is not None else None if below is None else f"{below})"
    if low and high:
        bounds = f" in {low}, {high}"
    elif low:
        bounds = " > 0" if positive else f" >= {minimum}"
    else:
        bounds = "" if high is None else f" <= {maximum}" if maximum is not None else f" < {below}"
    expected = "a finite number" + bounds + (" or None" if allow_none else "")
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool):
        _fail(name, expected, value, ArgumentTypeError)
    if (
        not math.isfinite(value)
        or (positive and value <= 0)
        or (minimum is not None and value < minimum)
        or (maximum is not None and value > maximum)
        or (below is not None and value >= below)
    ):
        _fail(name, expected, value)
    return float(value)


def check_bool(value: Any, name: str) -> bool:
    """``value`` when it is ``True`` or ``False`` (a NumPy bool too); a ``TypeError`` otherwise."""
    if not isinstance(value, (bool, np.bool_)):
        _fail(name, "True or False", value, ArgumentTypeError)
    return bool(value)


def check_choice(value: Any, name: str, choices: Collection[Any]) -> Any:
    """``value`` when it is one of ``choices``; a ``ValueError`` listing them otherwise."""
    if value not in choices:
        _fail(name, "one of " + ", ".join(repr(c) for c in choices), value)
    return value


def check_instance(value: Any, name: str, types: type | tuple[type, ...], expected: str) -> Any:
    """``value`` when it is an instance of ``types``; otherwise a ``TypeError``
    saying what was ``expected`` and naming the type that came instead.
    """
    if not isinstance(value, types):
        raise ArgumentTypeError(f"{name} must be {expected}, got {type(value).__name__}")
    return value


def check_key(key: Any, present: Collection[Any], name: str, where: str) -> Any:
    """``key`` when it is in ``present``; otherwise a ``KeyError`` listing what is there.

    Parameters
    ----------
    key
        The key asked for.
    present
        The keys there, e.g. ``adata.obsm`` or ``adata.obs.columns``.
    name
        The argument's name, for errors.
    where
        Where the key was looked for, as the message says it:
        ``"in adata.obsm"``, ``"a column of adata.obs"``.

    Returns
    -------
    object
        ``key``.

    Raises
    ------
    KeyError
        ``"spatial_key='xy' is not in adata.obsm; it has ['spatial', 'X_umap']"``.
    """
    if key not in present:
        raise KeyError(f"{name}={key!r} is not {where}; it has {list(present)}")
    return key


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
            _fail(name, f"a boolean mask of length {n} or integer positions", f"<mask of length {tensor.numel()}>")
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


def category_codes(
    values: Any, name: str, allow_missing: bool = False, obs_names: Any = None
) -> tuple[np.ndarray, pd.Index]:
    """Integer codes and categories of a categorical column (``obs[key]``).

    A categorical column keeps its categories (unused ones included); any
    other column gets its sorted unique values.

    Parameters
    ----------
    values
        The column (a pandas Series, a list or an array).
    name
        How to name the column in errors, e.g. ``"batch_key='section'"``.
    allow_missing
        Give missing values the code ``-1`` instead of raising.
    obs_names
        Names of the rows, to name the first missing one in errors
        (``adata.obs_names``); by default its position is given.

    Returns
    -------
    codes : numpy.ndarray
        ``int64`` codes (``-1`` for a missing value).
    categories : pandas.Index
        The category labels.

    Raises
    ------
    ValueError
        When a value is missing and ``allow_missing`` is false.
    """
    cat = pd.Categorical(values)
    codes = np.asarray(cat.codes, dtype=np.int64)
    missing = codes < 0
    if not allow_missing and missing.any():
        first = int(np.argmax(missing))
        where = f"position {first}" if obs_names is None else f"obs {obs_names[first]!r}"
        raise ValueError(f"{name} must have no missing values, got {int(missing.sum())} missing (the first at {where})")
    return codes, cat.categories


class NonFinite(NamedTuple):
    """Where an array holds NaN or infinite values (see :func:`first_nonfinite`)."""

    #: Position of the first row holding one.
    row: int
    #: Number of rows holding one.
    n_rows: int
    #: Number of NaN or infinite values.
    n_values: int


def first_nonfinite(values: Any, block_rows: int = 65536) -> NonFinite | None:
    """The first row of ``values`` holding a NaN or infinite value, with counts.

    Parameters
    ----------
    values
        A dense array (NumPy, or anything sliceable by rows, such as an
        ``h5py`` dataset) or a SciPy sparse matrix. Rows are its first axis.
    block_rows
        Dense input is checked this many rows at a time, so no temporary
        the size of ``values`` is made.

    Returns
    -------
    NonFinite or None
        ``None`` when every value is finite.
    """
    if sp.issparse(values):
        if values.format not in ("csr", "csc", "coo"):
            values = values.tocsr()
        bad = np.flatnonzero(~np.isfinite(values.data))
        if bad.size == 0:
            return None
        if values.format == "csr":
            rows = np.searchsorted(values.indptr, bad, side="right") - 1
        elif values.format == "csc":
            rows = values.indices[bad]
        else:
            rows = values.row[bad]
        return NonFinite(int(rows.min()), int(np.unique(rows).size), int(bad.size))
    first, n_rows, n_values = None, 0, 0
    for start in range(0, len(values), block_rows):
        block = np.asarray(values[start : start + block_rows])
        bad = ~np.isfinite(block.reshape(len(block), -1))
        if bad.any():
            bad_rows = bad.any(axis=1)
            first = start + int(np.argmax(bad_rows)) if first is None else first
            n_rows, n_values = n_rows + int(bad_rows.sum()), n_values + int(bad.sum())
    return None if first is None else NonFinite(first, n_rows, n_values)


def check_finite(values: Any, name: str, obs_names: Any = None, row_ids: Any = None, what: str = "value(s)") -> None:
    """Raise a ``ValueError`` when ``values`` holds NaN or infinite values.

    The message counts them, and the rows (cells) holding them, and names the
    first: ``"adata.X holds 2 NaN or infinite value(s) in 1 of 300 cells;
    the first is in obs 'cell7' (row 7)"``.

    Parameters
    ----------
    values
        A dense array or a sparse matrix (see :func:`first_nonfinite`).
    name
        How to name ``values``, e.g. ``"adata.X"``.
    obs_names
        Names of the cells, indexed by row id (``adata.obs_names``).
    row_ids
        The row id of each row of ``values`` when they are rows read from a
        larger matrix (a mini-batch); by default row ``i`` is row ``i``.
    what
        What the values are, e.g. ``"coordinates"``.
    """
    found = first_nonfinite(values)
    if found is None:
        return
    row = found.row if row_ids is None else int(row_ids[found.row])
    unit = "rows" if obs_names is None else "cells"
    among = f"{found.n_rows} of {values.shape[0]} {unit}" + ("" if row_ids is None else " read")
    where = f"row {row}" if obs_names is None else f"obs {obs_names[row]!r} (row {row})"
    raise ValueError(f"{name} holds {found.n_values} NaN or infinite {what} in {among}; the first is in {where}")


def check_counts(values: Any, name: str, row_ids: Any = None) -> None:
    """Raise a ``ValueError`` when counts ``values`` (a dense array or a sparse
    matrix, e.g. a block of rows being read) hold a negative value.

    The message names the first row holding one, as ``row_ids[row]`` when the
    rows were read from a larger matrix (see :func:`check_finite`). Raw counts
    are never negative; log-normalised or scaled values often are.
    """
    if sp.issparse(values):
        csr = values.tocsr()
        negative = np.flatnonzero(csr.data < 0)
        if negative.size == 0:
            return
        row = int(np.searchsorted(csr.indptr, negative[0], side="right") - 1)
    else:
        array = np.asarray(values)
        if array.size == 0 or array.dtype.kind not in "iuf" or array.min() >= 0:
            return
        row = int(np.argmax((array.reshape(len(array), -1) < 0).any(axis=1)))
    row = row if row_ids is None else int(row_ids[row])
    raise ValueError(
        f"{name} holds negative values; the first is in row {row}. The pipeline reads raw counts, "
        "which are never negative: pass the layer of counts (layer_key, --layer on the command line)"
    )
