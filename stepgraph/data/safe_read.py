"""Reading ``.h5ad`` files from strangers: nothing outside the file, nothing inflated.

An HDF5 file can name other files: an *external link* opens another HDF5 file,
*external storage* keeps a dataset's bytes in any file (``/etc/passwd``), a
*virtual dataset* maps other files' datasets. h5py follows all three when the
object is read, so a file from a stranger could copy any file the user can
read into stepgraph's outputs. A compressed (or never written) dataset can
also declare far more bytes than the file holds: a 1 MB file that inflates to
gigabytes when read. :func:`check_h5ad` walks the file's objects with h5py's
low-level API *before* anything is read, and refuses all of these with a
one-line :class:`UnsafeFileError`; it also checks the structure of every sparse
matrix (:func:`compressed_problem`, the one check of CSR/CSC index arrays that
in-memory and backed reading share) and that each matrix's shape matches the
cells and genes of the file.

:func:`check_inflation` is the same size bound for other files (checkpoints,
before :func:`torch.load` inflates them), and :func:`negative_rows` finds the
cells with negative counts, in memory or on disk, a block at a time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = [
    "MAX_INFLATION",
    "INFLATION_FLOOR",
    "UnsafeFileError",
    "H5adLayout",
    "check_h5ad",
    "check_zarr",
    "check_inflation",
    "inflation_bound",
    "compressed_problem",
    "negative_rows",
]

#: A file may declare at most this many times its own size in data (compression included).
MAX_INFLATION = 100
#: ... or this many bytes, whichever is larger, so that small files are never refused.
INFLATION_FLOOR = 64 * 2**20
#: Index and value arrays are scanned this many elements at a time.
_BLOCK = 1 << 22
_SPARSE = {"csr_matrix": "csr", "csc_matrix": "csc"}


class UnsafeFileError(ValueError):
    """A file that stepgraph refuses to read: it points outside itself, declares
    far more data than it holds, or its structure is inconsistent.
    """


@dataclass(frozen=True)
class H5adLayout:
    """What :func:`check_h5ad` found: the file's cells and genes and the bytes its
    datasets declare.
    """

    n_obs: int | None
    n_vars: int | None
    declared_bytes: int
    file_bytes: int


def inflation_bound(file_bytes: int, max_inflation: float = MAX_INFLATION) -> int:
    """The most bytes a file of ``file_bytes`` may declare: ``max_inflation`` times
    its size, and at least :data:`INFLATION_FLOOR`.
    """
    return int(max(max_inflation * file_bytes, INFLATION_FLOOR))


def check_inflation(
    declared: int,
    file_bytes: int,
    what: str,
    largest: str = "",
    max_inflation: float = MAX_INFLATION,
    hint: str = "raise the bound with --max-inflation if you trust the file",
) -> None:
    """Raise :class:`UnsafeFileError` when ``declared`` bytes exceed
    :func:`inflation_bound` of a file of ``file_bytes``.

    Parameters
    ----------
    declared
        The bytes the file's contents take once read (uncompressed).
    file_bytes
        The file's size on disk.
    what
        The file, as the message names it (``"input file 'a.h5ad'"``).
    largest
        The largest part, for the message (``" (dataset 'X/data' alone: 400 MB)"``).
    max_inflation
        The bound's factor (see :data:`MAX_INFLATION`).
    hint
        What the user can do, at the end of the message.
    """
    bound = inflation_bound(file_bytes, max_inflation)
    if declared > bound:
        raise UnsafeFileError(
            f"{what} declares {_size(declared)} of data in {_size(file_bytes)} on disk{largest}, more than "
            f"{max_inflation:g} times its size: a compression bomb or a corrupt file; refused before "
            f"reading it ({hint})"
        )


def check_h5ad(path: str | os.PathLike, max_inflation: float = MAX_INFLATION) -> H5adLayout:
    """Check an ``.h5ad`` file before anything of it is read.

    Refused, each with a one-line :class:`UnsafeFileError` naming the object:
    external links; datasets stored in other files (external storage);
    virtual datasets with a source in another file; more declared data than
    :func:`inflation_bound` allows; a sparse matrix whose index arrays are
    inconsistent (:func:`compressed_problem`) or whose shape does not match
    the file's cells and genes.

    Parameters
    ----------
    path
        The ``.h5ad`` file.
    max_inflation
        The factor of the size bound (see :data:`MAX_INFLATION`).

    Returns
    -------
    H5adLayout
        Cells, genes and the declared and stored sizes.

    Raises
    ------
    UnsafeFileError
        For a refused file (a ``ValueError``).
    OSError
        When the file is not an HDF5 file at all (h5py's error; other errors
        of h5py, for a damaged file, pass through as they are).
    """
    import h5py

    path = Path(path)
    file_bytes = path.stat().st_size
    with h5py.File(path, "r") as f:
        _refuse_links(f, h5py)
        declared, largest = _walk_datasets(f, h5py)
        check_inflation(declared, file_bytes, "the file", largest, max_inflation)
        n_obs, n_vars = _axis_length(f, "obs", h5py), _axis_length(f, "var", h5py)
        _check_sparse_groups(f, n_obs, n_vars, h5py)
    return H5adLayout(n_obs, n_vars, declared, file_bytes)


def _refuse_links(f, h5py) -> None:
    found: list[tuple[str, Any]] = []

    def visit(name: str, link) -> bool | None:
        if isinstance(link, h5py.ExternalLink):
            found.append((name, link))
            return True  # stop at the first
        return None

    f.visititems_links(visit)
    if found:
        name, link = found[0]
        raise UnsafeFileError(
            f"'/{name}' is an external link to {link.filename!r} (object {link.path!r}): "
            "an h5ad file must not point to other files"
        )


def _walk_datasets(f, h5py) -> tuple[int, str]:
    """Refuse storage outside the file; return the declared bytes and the largest dataset."""
    total, largest = 0, ("", 0)
    problems: list[str] = []

    def visit(name: str, obj) -> bool | None:
        nonlocal total, largest
        if not isinstance(obj, h5py.Dataset):
            return None
        plist = obj.id.get_create_plist()
        if plist.get_external_count() > 0:
            target = plist.get_external(0)[0]
            target = target.decode(errors="replace") if isinstance(target, bytes) else str(target)
            problems.append(
                f"dataset '/{name}' keeps its values in another file ({target!r}, external "
                "storage): an h5ad file must hold its own data"
            )
            return True
        if plist.get_layout() == h5py.h5d.VIRTUAL:
            for i in range(plist.get_virtual_count()):
                source = plist.get_virtual_filename(i)
                if source != ".":
                    problems.append(
                        f"dataset '/{name}' is a virtual dataset reading from another file "
                        f"({source!r}): an h5ad file must hold its own data"
                    )
                    return True
        size = int(obj.size or 0) * int(obj.dtype.itemsize)
        total += size
        if size > largest[1]:
            largest = (name, size)
        return None

    f.visititems(visit)
    if problems:
        raise UnsafeFileError(problems[0])
    return total, (f" (dataset '/{largest[0]}' alone: {_size(largest[1])})" if largest[0] else "")


def _text(value) -> str | None:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return None if value is None else str(value)


def _axis_length(f, key: str, h5py) -> int | None:
    """Cells (``obs``) or genes (``var``) of the file: the length of the index."""
    node = f.get(key)
    if isinstance(node, h5py.Dataset):  # an old h5ad: a compound table
        return int(node.shape[0]) if node.shape else None
    if not isinstance(node, h5py.Group):
        return None
    index = _text(node.attrs.get("_index"))
    if index is None or not isinstance(node.get(index), h5py.Dataset) or not node[index].shape:
        return None
    return int(node[index].shape[0])


def _source(name: str) -> str:
    """How an error names a matrix of the file: ``adata.X``, ``adata.layers['counts']``."""
    parts = name.strip("/").split("/")
    if parts == ["X"]:
        return "adata.X"
    if len(parts) == 2 and parts[0] in ("layers", "obsm", "varm", "obsp", "varp"):
        return f"adata.{parts[0]}[{parts[1]!r}]"
    return "adata." + ".".join(parts)


def _expected_shape(name: str, n_obs, n_vars) -> tuple[int | None, int | None]:
    parts = name.strip("/").split("/")
    if parts == ["X"] or (len(parts) == 2 and parts[0] == "layers"):
        return n_obs, n_vars
    if len(parts) == 2 and parts[0] == "obsp":
        return n_obs, n_obs
    if len(parts) == 2 and parts[0] == "varp":
        return n_vars, n_vars
    if len(parts) == 2 and parts[0] == "obsm":
        return n_obs, None
    if len(parts) == 2 and parts[0] == "varm":
        return n_vars, None
    return None, None


def _check_sparse_groups(f, n_obs, n_vars, h5py) -> None:
    groups: list[tuple[str, Any, str]] = []

    def visit(name: str, obj) -> None:
        if isinstance(obj, h5py.Group):
            fmt = _SPARSE.get(_text(obj.attrs.get("encoding-type")) or "") or _text(obj.attrs.get("h5sparse_format"))
            if fmt in ("csr", "csc"):
                groups.append((name, obj, fmt))

    f.visititems(visit)
    for name, group, fmt in groups:
        source = _source(name)
        parts = {key: group.get(key) for key in ("data", "indices", "indptr")}
        missing = [key for key, value in parts.items() if not isinstance(value, h5py.Dataset)]
        shape = np.asarray(group.attrs.get("shape", group.attrs.get("h5sparse_shape", [])))
        problem = None
        if missing:
            problem = f"it has no {', '.join(missing)} array"
        elif shape.shape != (2,) or not np.issubdtype(shape.dtype, np.integer) or (shape < 0).any():
            problem = f"its shape attribute must be two non-negative integers, got {shape.tolist()}"
        else:
            rows, cols = (int(v) for v in shape)
            want = _expected_shape(name, n_obs, n_vars)
            if any(w is not None and w != got for w, got in zip(want, (rows, cols))):
                shown = tuple("?" if w is None else w for w in want)
                problem = f"its shape is ({rows}, {cols}), but the file's cells and genes make it {shown}"
            else:
                n_major, n_minor = (rows, cols) if fmt == "csr" else (cols, rows)
                problem = compressed_problem(
                    parts["indptr"],
                    parts["indices"],
                    parts["data"].shape[0] if parts["data"].shape else 0,
                    n_major,
                    n_minor,
                )
        if problem is not None:
            raise UnsafeFileError(f"{source} is a malformed {fmt.upper()} matrix ({problem}); the file may be corrupt")


def compressed_problem(indptr, indices, n_data: int, n_major: int, n_minor: int) -> str | None:
    """What is wrong with the index arrays of a CSR (or CSC) matrix, or ``None``.

    The one structure check of compressed sparse matrices, for arrays in memory
    and on disk alike (NumPy arrays, h5py or zarr datasets): ``indptr`` has
    ``n_major + 1`` integer entries, starts at 0, never decreases and ends
    within the ``n_data`` stored values and the stored indices; every used index
    lies in ``[0, n_minor)``. The indices are read a few million at a time, so
    an on-disk matrix is never loaded whole. Nothing is modified (unlike
    scipy's ``check_format``, which may rewrite the arrays).

    Parameters
    ----------
    indptr, indices
        The matrix's index arrays.
    n_data
        The number of stored values (``len(data)``).
    n_major, n_minor
        Rows and columns of a CSR matrix (columns and rows of a CSC matrix).

    Returns
    -------
    str or None
        The problem in words (``"its indices must lie in [0, 4), got [0, 9]"``).
    """
    pointers = np.asarray(indptr[...])
    n_indices = int(indices.shape[0]) if len(indices.shape) == 1 else -1
    if n_indices < 0 or not np.issubdtype(np.asarray(indices[:0]).dtype, np.integer):
        return "its indices must be a one-dimensional array of integers"
    if (
        pointers.ndim != 1
        or not np.issubdtype(pointers.dtype, np.integer)
        or len(pointers) != n_major + 1
        or pointers[0] != 0
    ):
        return (
            f"its indptr has {len(pointers) if pointers.ndim == 1 else pointers.shape} entries starting at "
            f"{pointers.ravel()[:1].tolist()}, expected {n_major + 1} starting at 0"
        )
    if pointers[-1] > min(n_indices, n_data) or (np.diff(pointers) < 0).any():
        return "its indptr is not a non-decreasing sequence within the stored values"
    low, high = None, None
    for start in range(0, int(pointers[-1]), _BLOCK):
        block = np.asarray(indices[start : min(start + _BLOCK, int(pointers[-1]))])
        low = block.min() if low is None else min(low, block.min())
        high = block.max() if high is None else max(high, block.max())
    if low is not None and high is not None and (low < 0 or high >= n_minor):
        return f"its indices must lie in [0, {n_minor}), got [{low}, {high}]"
    return None


def negative_rows(matrix) -> tuple[int, int] | None:
    """The rows of ``matrix`` holding a negative value: ``(how many, the first)``, or ``None``.

    ``matrix`` is a NumPy array, a SciPy sparse matrix, an anndata backed sparse
    dataset or an h5py / zarr array; on-disk values are read a block at a time.
    """
    group = getattr(matrix, "group", None)
    fmt = getattr(matrix, "format", None)
    if group is not None and fmt in ("csr", "csc"):  # a backed sparse matrix: its arrays on disk
        data, indptr, indices = group["data"], group["indptr"], group["indices"]
    elif sp.issparse(matrix) and fmt in ("csr", "csc"):
        data, indptr, indices = matrix.data, matrix.indptr, matrix.indices
    elif sp.issparse(matrix):
        return negative_rows(matrix.tocsr())
    else:
        first, rows = None, 0
        step = max(1, _BLOCK // max(1, int(np.prod(matrix.shape[1:]))))
        for start in range(0, matrix.shape[0], step):
            block = np.asarray(matrix[start : start + step])
            bad = (block.reshape(len(block), -1) < 0).any(axis=1) if block.dtype.kind in "iuf" else None
            if bad is not None and bad.any():
                first = start + int(np.argmax(bad)) if first is None else first
                rows += int(bad.sum())
        return None if first is None else (rows, first)
    pointers = np.asarray(indptr[...])
    found: list[np.ndarray] = []
    for start in range(0, int(pointers[-1]) if len(pointers) else 0, _BLOCK):
        block = np.asarray(data[start : min(start + _BLOCK, int(pointers[-1]))])
        at = np.flatnonzero(block < 0) if block.dtype.kind in "if" else np.empty(0, np.int64)
        if at.size == 0:
            continue
        if fmt == "csr":
            found.append(np.searchsorted(pointers, start + at, side="right") - 1)
        else:
            found.append(np.asarray(indices[start : start + _BLOCK])[at])
    if not found:
        return None
    hit = np.unique(np.concatenate(found))
    return int(hit.size), int(hit[0])


def _size(n: int) -> str:
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def check_zarr(path: str | os.PathLike, max_inflation: float = MAX_INFLATION) -> int:
    """Check a ``.zarr`` store (a folder) before anything of it is read: no link in
    it may lead outside the store, and its arrays may declare at most
    :func:`inflation_bound` of the bytes the store holds. Returns the declared bytes.

    Raises
    ------
    UnsafeFileError
        For a link that leaves the store or a store that declares too much.
    """
    import json

    root = Path(path).resolve()
    stored = declared = 0
    largest = ("", 0)
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            entry = Path(folder) / name
            if entry.is_symlink():
                target = entry.resolve()
                if target != root and root not in target.parents:
                    raise UnsafeFileError(
                        f"'{entry.relative_to(root)}' in the store is a link to "
                        f"{str(target)!r}, outside the store: a zarr store must hold "
                        "its own data"
                    )
        for name in files:
            entry = Path(folder) / name
            stored += entry.lstat().st_size
            if name not in (".zarray", "zarr.json"):
                continue
            meta = json.loads(entry.read_text())
            if name == "zarr.json" and meta.get("node_type") != "array":
                continue
            dtype = meta.get("dtype") if name == ".zarray" else meta.get("data_type")
            try:
                itemsize = np.dtype(dtype).itemsize if isinstance(dtype, str | list) else 8
            except TypeError:
                itemsize = 8  # zarr v3 names (float32, ...) are NumPy's too; anything else: a pointer
            size = int(np.prod(meta.get("shape", []), dtype=np.float64)) * itemsize
            declared += size
            if size > largest[1]:
                largest = (str(Path(folder).relative_to(root)), size)
    check_inflation(
        declared,
        stored,
        "the store",
        f" (array '{largest[0]}' alone: {_size(largest[1])})" if largest[0] else "",
        max_inflation,
    )
    return declared
