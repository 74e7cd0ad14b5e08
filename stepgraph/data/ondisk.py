"""Expression rows read from disk, one mini-batch at a time.

A backed AnnData (``anndata.read_h5ad(path, backed="r")``) or one whose ``X``
is read lazily from zarr keeps the expression matrix on disk.
:class:`RowReader` reads only the rows a mini-batch needs:

1. the requested rows are sorted and de-duplicated;
2. their extents on disk are grouped into runs of nearby extents, and each
   run is read with one slice (chunked reads); for an uncompressed HDF5
   dataset (what ``anndata`` writes by default) the rows are gathered from a
   read-only memory map of the file instead, with no Python loop at all, and
   the mapping is released after every batch so that the pages read do not
   stay in the process's resident memory;
3. the caller restores the requested order (duplicates included) with the
   returned inverse index.

Of a sparse (CSR) matrix only the row pointer, one integer per cell, is held
in memory; a dense matrix needs nothing in memory.
"""

from __future__ import annotations

import mmap
import os

import numpy as np
import scipy.sparse as sp

__all__ = ["RowReader", "is_on_disk"]

#: Extents closer than this many elements are read with one slice.
DEFAULT_MAX_GAP = 8192


def is_on_disk(matrix) -> bool:
    """Whether ``matrix`` is an on-disk matrix :class:`RowReader` reads from:
    an anndata backed sparse dataset, or a 2-D h5py / zarr array.
    """
    if isinstance(matrix, np.ndarray) or sp.issparse(matrix):
        return False
    if getattr(matrix, "format", None) in ("csr", "csc") and hasattr(matrix, "group"):
        return True  # anndata's CSRDataset / CSCDataset (h5py or zarr group)
    module = type(matrix).__module__.split(".")[0]
    return module in ("h5py", "zarr") and len(getattr(matrix, "shape", ())) == 2


class RowReader:
    """Reads rows of an on-disk expression matrix.

    Parameters
    ----------
    matrix
        ``adata.X`` (or a layer) of a backed or lazily read AnnData: an anndata
        sparse dataset in CSR format, or a dense 2-D h5py / zarr array.
    max_gap
        Extents on disk closer than this many elements are read with one
        slice (ignored where the file is memory-mapped). Defaults to the
        array's chunk length for a chunked array, else ``8192``.

    Attributes
    ----------
    rows_read
        Distinct rows read so far, summed over calls (a diagnostic).
    """

    def __init__(self, matrix, max_gap: int | None = None):
        if not is_on_disk(matrix):
            raise TypeError(f"matrix must be an on-disk matrix (backed h5ad or zarr), got {type(matrix).__name__}")
        self.shape = tuple(int(n) for n in matrix.shape)
        self.rows_read = 0
        fmt = getattr(matrix, "format", None)
        if fmt == "csc":
            raise ValueError(
                "the on-disk expression matrix is CSC (column-compressed): reading a row "
                "means reading every column. Rewrite it as CSR, e.g. "
                "adata.X = adata.X.tocsr() on an in-memory copy before writing the file"
            )
        self.format = "csr" if fmt == "csr" else "dense"
        if self.format == "csr":
            group = matrix.group
            self.dtype = np.dtype(group["data"].dtype)
            self._indptr = np.asarray(group["indptr"][...], dtype=np.int64)
            self._data = _Extents(group["data"], max_gap)
            self._indices = _Extents(group["indices"], max_gap)
        else:
            self.dtype = np.dtype(matrix.dtype)
            self._dense = _Extents(matrix, max_gap)
        if not np.issubdtype(self.dtype, np.number):
            raise TypeError(f"expression matrix must be numeric, got dtype {self.dtype}")

    def read_unique(self, rows) -> tuple[np.ndarray, sp.csr_matrix | np.ndarray, np.ndarray]:
        """The distinct rows of ``rows``, read from disk.

        Parameters
        ----------
        rows
            Integer row positions, in any order, repeats allowed.

        Returns
        -------
        unique, block, inverse
            ``unique`` holds the distinct rows in increasing order, ``block``
            their values (CSR for a sparse matrix, else a dense array) and
            ``inverse`` maps ``rows`` to them: ``block[inverse]`` is the rows
            in the requested order.
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= self.shape[0]):
            raise IndexError(f"rows must lie in [0, {self.shape[0]}), got range [{rows.min()}, {rows.max()}]")
        unique, inverse = np.unique(rows, return_inverse=True)
        self.rows_read += unique.size
        if self.format == "dense":
            n_vars = self.shape[1]
            flat = self._dense.gather(unique * n_vars, np.full(unique.size, n_vars, np.int64))
            return unique, flat.reshape(unique.size, n_vars), inverse
        starts = self._indptr[unique]
        lengths = self._indptr[unique + 1] - starts
        data = self._data.gather(starts, lengths)
        indices = self._indices.gather(starts, lengths)
        indptr = np.zeros(unique.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        block = sp.csr_matrix((data, indices, indptr), shape=(unique.size, self.shape[1]))
        return unique, block, inverse


def _concat_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Positions ``starts[i] .. starts[i] + lengths[i] - 1`` for all ``i``, concatenated."""
    offsets = np.cumsum(lengths) - lengths
    return np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(offsets - starts, lengths)


class _Extents:
    """Reads concatenated extents ``[start, start + length)`` of a flat array on disk.

    A 2-D array is read as its flattened (C-order) elements. An uncompressed
    HDF5 dataset is gathered from a memory map of the file; anything else is
    read run by run, one slice per run of nearby extents.
    """

    def __init__(self, array, max_gap: int | None):
        self.array = array
        self.dtype = np.dtype(array.dtype)
        self.n_cols = int(array.shape[1]) if len(array.shape) == 2 else None
        chunks = getattr(array, "chunks", None)
        if max_gap is None:
            max_gap = int(np.prod(chunks)) if chunks else DEFAULT_MAX_GAP
        self.max_gap = max_gap
        self._map: mmap.mmap | None = None
        self._element_base: np.ndarray | None = None
        self._chunk_len = 0
        self._pid = os.getpid()
        self._h5_source: tuple[str, str] | None = None
        if type(array).__module__.split(".")[0] == "h5py":
            self._h5_source = (array.file.filename, array.name)
            self._map_hdf5(array)

    # --- memory map of an uncompressed HDF5 dataset --------------------------
    def _map_hdf5(self, dset) -> None:
        dcpl = dset.id.get_create_plist()
        if dcpl.get_nfilters() or not self.dtype.isnative or dset.size == 0:
            return
        item = self.dtype.itemsize
        if dset.chunks is None:
            offset = dset.id.get_offset()
            if offset is None or offset % item:
                return
            base = np.array([offset // item], dtype=np.int64)
            chunk_len = int(dset.size)
        else:
            if len(dset.chunks) != 1:
                return  # a chunked 2-D array: read by slices
            n_chunks = dset.id.get_num_chunks()
            chunk_len = int(dset.chunks[0])
            if n_chunks != -(-dset.size // chunk_len):
                return  # chunks not all allocated
            infos = [dset.id.get_chunk_info(i) for i in range(n_chunks)]  # one per chunk
            order = np.argsort([info.chunk_offset[0] for info in infos])
            offsets = np.array([infos[i].byte_offset for i in order], dtype=np.int64)
            if (offsets % item).any():
                return
            base = offsets // item
        with open(dset.file.filename, "rb") as fh:
            self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        if hasattr(mmap, "MADV_RANDOM"):
            # rows are read scattered: no read-ahead and no fault-around, so a
            # batch maps only the pages it touches (and releasing them is cheap)
            self._map.madvise(mmap.MADV_RANDOM)
        self._elements = np.frombuffer(self._map, dtype=self.dtype, count=os.path.getsize(dset.file.filename) // item)
        self._element_base, self._chunk_len = base, chunk_len

    def gather(self, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """The elements of all extents, concatenated, as a new array."""
        if lengths.size == 0 or int(lengths.sum()) == 0:
            return np.empty(0, dtype=self.dtype)
        if self._map is not None:
            assert self._element_base is not None  # set with self._map by _map_hdf5
            pos = _concat_ranges(starts, lengths)
            out = self._elements[self._element_base[pos // self._chunk_len] + pos % self._chunk_len]
            # drop the pages just read from this process's resident set (they
            # stay in the page cache): memory stays that of one batch
            if hasattr(mmap, "MADV_DONTNEED"):
                self._map.madvise(mmap.MADV_DONTNEED)
            return out
        return self._gather_runs(starts, lengths)

    def _gather_runs(self, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        keep = lengths > 0
        starts, lengths = starts[keep], lengths[keep]
        ends = starts + lengths
        new_run = np.ones(starts.size, dtype=bool)
        new_run[1:] = starts[1:] - ends[:-1] > self.max_gap
        first = np.flatnonzero(new_run)
        run_start, run_end = starts[first], np.maximum.reduceat(ends, first)
        buffer = np.concatenate([self._read(a, b) for a, b in zip(run_start, run_end)])  # per run
        run_offset = np.cumsum(run_end - run_start) - (run_end - run_start)
        run_id = np.cumsum(new_run) - 1
        return buffer[_concat_ranges(run_offset[run_id] + starts - run_start[run_id], lengths)]

    def _handle(self):
        """The on-disk array; in a forked process (a loader worker), an HDF5 file is opened
        afresh, as HDF5 handles must not be shared across ``fork``.
        """
        if self._h5_source is not None and os.getpid() != self._pid:
            import h5py

            filename, name = self._h5_source
            self.array = h5py.File(filename, "r")[name]
            self._pid = os.getpid()
        return self.array

    def _read(self, start: int, end: int) -> np.ndarray:
        array = self._handle()
        if self.n_cols is None:
            return np.asarray(array[start:end])
        # a 2-D array is read by whole rows (the extents are whole rows)
        rows = np.asarray(array[start // self.n_cols : -(-end // self.n_cols)])
        return rows.reshape(-1)
