"""Datasets over an AnnData: expression rows plus optional batch and class labels.

The expression matrix stays as the user stored it (dense or scipy sparse);
rows are densified per batch only, so a million-cell sparse matrix is never
densified whole. A backed AnnData (``anndata.read_h5ad(path, backed="r")``)
or one read lazily from zarr keeps it on disk: each batch reads only its own
rows (see :mod:`stepgraph.data.ondisk`). The AnnData is never modified.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from torch.utils.data import Dataset

from stepgraph._validation import category_codes, check_choice, check_finite, check_key
from stepgraph.data.ondisk import RowReader, is_on_disk
from stepgraph.data.protocol import StepDataset, check_dataset, subset_mask

__all__ = ["BaseDataset", "MaskedDataset", "MODES", "expression_matrix", "StepDataset", "check_dataset"]

#: Output modes, as in STEP: what one item (or batch) holds, in STEP's order
#: (the batch label is always last).
MODES = {
    "single_batch": ("x",),
    "multi_batches": ("x", "batch_label"),
    "multi_batches_with_ct": ("x", "class_label", "batch_label"),
    "with_rep": ("x", "rep", "batch_label"),
    "with_domains": ("x", "rep", "domains", "batch_label"),
}

#: The constructor argument each member of a mode needs.
_NEEDS = {"batch_label": "batch_key", "class_label": "class_key", "rep": "rep_key", "domains": "domain_key"}


def _category_codes(adata, key: str, argname: str) -> tuple[np.ndarray, pd.Index]:
    check_key(key, adata.obs.columns, argname, "a column of adata.obs")
    return category_codes(adata.obs[key], f"{argname}={key!r}", obs_names=adata.obs_names)


def _representation(adata, key: str) -> torch.Tensor:
    rep = adata.obsm[check_key(key, adata.obsm, "rep_key", "in adata.obsm")]
    rep = rep.toarray() if sp.issparse(rep) else np.asarray(rep)
    if rep.ndim != 2 or not np.issubdtype(rep.dtype, np.number):
        raise ValueError(
            f"rep_key={key!r}: adata.obsm[{key!r}] must be a numeric 2-D array, "
            f"got dtype {rep.dtype} and shape {rep.shape}"
        )
    check_finite(rep, f"rep_key={key!r}: adata.obsm[{key!r}]", obs_names=adata.obs_names)
    return torch.from_numpy(np.ascontiguousarray(rep, dtype=np.float32))


class BaseDataset(Dataset):
    """Expression of an AnnData as a map-style torch dataset.

    Parameters
    ----------
    adata
        The annotated data matrix. ``X`` (or ``layers[layer_key]``) may be a
        dense array or any scipy sparse matrix, in memory; or on disk, in a
        backed AnnData (``anndata.read_h5ad(path, backed="r")``, CSR or dense)
        or a zarr store read lazily (an anndata sparse dataset or a zarr
        array as ``X``). On disk, every batch reads only its own rows, and
        NaN or infinite values are detected in the rows read (a
        ``ValueError`` naming the cell) rather than up front.
    layer_key
        Use ``adata.layers[layer_key]`` instead of ``adata.X``.
    batch_key
        Column of ``adata.obs`` with the batch (section, library) of each cell;
        its category codes are :attr:`batch_label`.
    class_key
        Column of ``adata.obs`` with a class (cell type) per cell; codes in
        :attr:`class_label`.
    mode
        What an item holds (:data:`MODES`, STEP's order): ``"single_batch"``
        ``(x,)``, ``"multi_batches"`` ``(x, batch_label)``,
        ``"multi_batches_with_ct"`` ``(x, class_label, batch_label)``,
        ``"with_rep"`` ``(x, rep, batch_label)`` or ``"with_domains"``
        ``(x, rep, domains, batch_label)``. Defaults to the richest mode the
        given keys allow.
    rep_key
        Key of ``adata.obsm`` with a representation per cell (``rep``, float32).
    domain_key
        Column of ``adata.obs`` with a spatial domain per cell; codes in :attr:`domains`.
    row_transform
        A function applied to each batch of rows before they are densified
        (a CSR matrix for sparse data, else a dense array; it must return
        the same kind, one row per row), e.g.
        :func:`stepgraph.pipeline.log_normalise`. It must treat each row on
        its own, so that a row's features do not depend on the batch. Lets
        an on-disk matrix be normalised per batch instead of whole.

    Examples
    --------
    >>> ds = BaseDataset(adata, batch_key="section")   # doctest: +SKIP
    >>> x, batch_label = ds[[0, 1, 2]]                  # doctest: +SKIP
    """

    def __init__(
        self,
        adata,
        layer_key: str | None = None,
        batch_key: str | None = None,
        class_key: str | None = None,
        mode: str | None = None,
        rep_key: str | None = None,
        domain_key: str | None = None,
        row_transform=None,
    ):
        if row_transform is not None and not callable(row_transform):
            raise TypeError(f"row_transform must be callable, got {type(row_transform).__name__}")
        matrix = expression_matrix(adata, layer_key)
        # on disk (backed h5ad, zarr): rows are read, and checked for NaN / inf, per batch
        self.reader = RowReader(matrix) if is_on_disk(matrix) else None
        self.row_transform = row_transform
        self._adata = adata
        self.layer_key = layer_key
        self.batch_key = batch_key
        self.class_key = class_key
        self.X = matrix
        self.batch_label = self.batch_categories = None
        self.class_label = self.class_categories = None
        if batch_key is not None:
            codes, self.batch_categories = _category_codes(adata, batch_key, "batch_key")
            self.batch_label = torch.from_numpy(codes)
        if class_key is not None:
            codes, self.class_categories = _category_codes(adata, class_key, "class_key")
            self.class_label = torch.from_numpy(codes)
        self.rep_key, self.domain_key = rep_key, domain_key
        self.rep = self.domains = self.domain_categories = None
        if rep_key is not None:
            self.rep = _representation(adata, rep_key)
        if domain_key is not None:
            codes, self.domain_categories = _category_codes(adata, domain_key, "domain_key")
            self.domains = torch.from_numpy(codes)
        if mode is None:
            mode = (
                "with_domains"
                if domain_key is not None
                else "with_rep"
                if rep_key is not None
                else "multi_batches_with_ct"
                if class_key is not None
                else "multi_batches"
                if batch_key is not None
                else "single_batch"
            )
        self.set_mode(mode)

    # --- sizes -----------------------------------------------------------
    def __len__(self) -> int:
        return self.X.shape[0]

    @property
    def n_vars(self) -> int:
        """Number of features (genes) per row."""
        return self.X.shape[1]

    @property
    def n_batches(self) -> int:
        """Number of batch categories (0 without ``batch_key``)."""
        return 0 if self.batch_categories is None else len(self.batch_categories)

    @property
    def adata(self):
        """The AnnData of this dataset's rows (the user's, never modified)."""
        return self._adata

    @property
    def obs(self) -> pd.DataFrame:
        """``adata.obs`` rows of this dataset."""
        return self._adata.obs

    @property
    def row_index(self) -> np.ndarray:
        """Positions of this dataset's rows in the original AnnData."""
        return np.arange(len(self))

    # --- modes -----------------------------------------------------------
    def set_mode(self, mode: str) -> str | None:
        """Choose what items hold (see :data:`MODES`); returns the previous mode, as
        STEP's ``set_mode`` does.

        Parameters
        ----------
        mode
            A key of :data:`MODES`, such as ``"multi_batches"``.
        """
        check_choice(mode, "mode", MODES)
        for name in MODES[mode][1:]:
            if getattr(self, name) is None:
                raise ValueError(f"mode={mode!r} needs {_NEEDS[name]}, which was not given")
        previous, self.mode = getattr(self, "mode", None), mode
        return previous

    # --- fetching --------------------------------------------------------
    def features(self, index) -> torch.Tensor:
        """Dense float32 expression of the rows at ``index`` (positions in this dataset).

        Parameters
        ----------
        index
            Integer array or tensor of row positions.
        """
        rows = self._base_rows(index)
        if self.reader is not None:
            return self._read_features(rows)
        block = self.X[rows]
        if self.row_transform is not None:
            block = self.row_transform(block)
        block = block.toarray() if sp.issparse(block) else np.asarray(block)
        return torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32))

    def _read_features(self, rows: np.ndarray) -> torch.Tensor:
        # on disk: read each distinct row once, in file order; check, transform,
        # then put the rows back in the order asked for
        assert self.reader is not None  # only called when the matrix is read from disk
        unique, block, inverse = self.reader.read_unique(rows)
        source = "adata.X" if self.layer_key is None else f"adata.layers[{self.layer_key!r}]"
        check_finite(block, source, obs_names=self._adata.obs_names, row_ids=unique)
        if self.row_transform is not None:
            block = self.row_transform(block)
        block = block[inverse]
        block = block.toarray() if sp.issparse(block) else np.asarray(block)
        return torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32))

    def labels(self, name: str, index) -> torch.Tensor | None:
        """``batch_label``, ``class_label``, ``rep`` or ``domains`` of the rows at ``index``
        (or ``None``).

        Parameters
        ----------
        name
            ``"batch_label"``, ``"class_label"``, ``"rep"`` or ``"domains"``.
        index
            Integer array or tensor of row positions.
        """
        values = getattr(self, name)
        return None if values is None else values[torch.as_tensor(self._base_rows(index))]

    def fetch(self, index) -> tuple[torch.Tensor, ...]:
        """One batch in the current mode (:data:`MODES`), e.g. ``(x, class_label, batch_label)``.

        Parameters
        ----------
        index
            Integer array or tensor of row positions.
        """
        index = _as_index(index)
        out = [self.features(index)]
        for name in MODES[self.mode][1:]:
            # set_mode checked that the mode's labels are given
            out.append(cast(torch.Tensor, self.labels(name, index)))
        return tuple(out)

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return tuple(t[0] for t in self.fetch(np.array([index])))
        return self.fetch(index)

    def __getitems__(self, indices: Sequence[int]):
        # torch's DataLoader calls this with a whole batch of indices: one
        # vectorised gather instead of one __getitem__ per row.
        return self.fetch(indices)

    def _base_rows(self, index) -> np.ndarray:
        return _as_index(index)

    # --- subsets ---------------------------------------------------------
    def subset(self, key=True, col: str | None = None, exclude: bool = True) -> MaskedDataset:
        """Rows whose ``obs[col]`` equals ``key`` (or is in it), or with ``exclude`` the
        other rows: STEP's ``subset``, as the dataset protocol has it.

        Parameters
        ----------
        key
            One value or a list of values of ``obs[col]``.
        col
            Column of ``obs``; :attr:`batch_key` when ``None``.
        exclude
            Keep the rows *not* matching (STEP's default).

        Examples
        --------
        >>> s1 = ds.subset("s1", col="section", exclude=False)   # doctest: +SKIP
        """
        col = self.batch_key if col is None else col
        return MaskedDataset(self, np.flatnonzero(subset_mask(self.obs, key, col, exclude)))

    def __repr__(self) -> str:
        kind = (
            f"on-disk {self.reader.format}"
            if self.reader is not None
            else f"sparse {self.X.format}"
            if sp.issparse(self.X)
            else "dense"
        )
        return f"{type(self).__name__}(n_obs={len(self)}, n_vars={self.n_vars}, X={kind}, mode={self.mode!r})"


class MaskedDataset(BaseDataset):
    """A view of a dataset restricted to some of its rows.

    Parameters
    ----------
    dataset
        A :class:`BaseDataset` (or another :class:`MaskedDataset`).
    indices
        Row positions in ``dataset`` to keep, in order.
    """

    def __init__(self, dataset: BaseDataset, indices):
        indices = _as_index(indices)
        if indices.size and (indices.min() < 0 or indices.max() >= len(dataset)):
            raise IndexError(f"indices must lie in [0, {len(dataset)}), got range [{indices.min()}, {indices.max()}]")
        if isinstance(dataset, MaskedDataset):
            indices = dataset.indices[indices]
            dataset = dataset.dataset
        self.dataset: BaseDataset = dataset
        self.indices: np.ndarray = indices
        # share the parent's arrays; nothing is copied
        for name in (
            "_adata",
            "layer_key",
            "batch_key",
            "class_key",
            "X",
            "batch_label",
            "batch_categories",
            "class_label",
            "class_categories",
            "rep_key",
            "rep",
            "domain_key",
            "domains",
            "domain_categories",
            "mode",
            "reader",
            "row_transform",
        ):
            setattr(self, name, getattr(dataset, name))

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def adata(self):
        """The AnnData of this view's rows (a view of the parent's)."""
        return self._adata[self.indices]

    @property
    def obs(self) -> pd.DataFrame:
        return self._adata.obs.iloc[self.indices]

    @property
    def row_index(self) -> np.ndarray:
        return self.indices

    def _base_rows(self, index) -> np.ndarray:
        return self.indices[_as_index(index)]


def expression_matrix(adata, layer_key: str | None = None):
    """The expression matrix of ``adata``, checked: numeric, finite, not empty.

    Parameters
    ----------
    adata
        The annotated data matrix.
    layer_key
        Use ``adata.layers[layer_key]`` instead of ``adata.X``.

    Returns
    -------
    numpy.ndarray, scipy.sparse.csr_matrix or an on-disk matrix
        The matrix as stored (a dense array, or CSR; other sparse formats are
        converted to CSR). Nothing is copied for a dense array or a CSR matrix.
        An on-disk matrix (backed h5ad, zarr) is returned as it is: its values
        are checked per batch when read.

    Raises
    ------
    ValueError
        When ``adata`` has no cells or no genes, ``X`` is ``None``, a sparse
        matrix is malformed (its index arrays point outside the matrix, as in
        a corrupt file), or the matrix holds NaN or infinite values.
    KeyError
        When ``layer_key`` is not a layer.
    TypeError
        When the matrix does not hold numbers (strings, objects).
    """
    if adata.n_obs == 0:
        raise ValueError("adata has no observations (n_obs == 0): there are no cells to train on")
    if adata.n_vars == 0:
        raise ValueError("adata has no variables (n_vars == 0): there are no genes to train on")
    if layer_key is None:
        matrix = adata.X
    else:
        matrix = adata.layers[check_key(layer_key, adata.layers, "layer_key", "in adata.layers")]
    if matrix is None:
        raise ValueError("adata.X is None; pass layer_key to use a layer")
    source = "adata.X" if layer_key is None else f"adata.layers[{layer_key!r}]"
    if is_on_disk(matrix):  # read per batch: values are checked in the rows read
        if not np.issubdtype(matrix.dtype, np.number):
            raise TypeError(f"{source} must hold numbers (counts or expression values), got dtype {matrix.dtype}")
        return matrix
    if sp.issparse(matrix):
        if matrix.format in ("csr", "csc"):
            _check_compressed(matrix, source)
        matrix = matrix if matrix.format == "csr" else sp.csr_matrix(matrix)
    else:
        matrix = np.asarray(matrix)
    if not np.issubdtype(matrix.dtype, np.number) or np.issubdtype(matrix.dtype, np.complexfloating):
        raise TypeError(f"{source} must hold numbers (counts or expression values), got dtype {matrix.dtype}")
    check_finite(matrix, source, obs_names=adata.obs_names)
    return matrix


def _check_compressed(matrix, source: str) -> None:
    """Raise if a CSR/CSC matrix's index arrays are inconsistent (read-only, unlike
    scipy's ``check_format``, which may rewrite them); the check is
    :func:`~stepgraph.data.safe_read.compressed_problem`, the one that reading a file also uses.
    """
    from stepgraph.data.safe_read import compressed_problem

    n_major, n_minor = matrix.shape if matrix.format == "csr" else matrix.shape[::-1]
    problem = compressed_problem(matrix.indptr, matrix.indices, len(matrix.data), n_major, n_minor)
    if problem is not None:
        raise ValueError(f"{source} is a malformed {matrix.format.upper()} matrix ({problem}); the file may be corrupt")


def _as_index(index) -> np.ndarray:
    if isinstance(index, torch.Tensor):
        index = index.detach().cpu().numpy()
    index = np.asarray(index)
    if index.dtype == bool:
        return np.flatnonzero(index)
    if index.ndim == 0:
        index = index.reshape(1)
    if not np.issubdtype(index.dtype, np.integer):
        raise TypeError(f"index must hold integers, got dtype {index.dtype}")
    return index.astype(np.int64, copy=False)
