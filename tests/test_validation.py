"""The shared checks (stepgraph._validation): one helper per kind of check, one wording."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from stepgraph._validation import (
    ArgumentTypeError,
    NonFinite,
    as_index,
    category_codes,
    check_bool,
    check_choice,
    check_finite,
    check_int,
    check_key,
    check_number,
    first_nonfinite,
)


def test_first_nonfinite_is_the_same_for_dense_blocks_and_every_sparse_format():
    x = np.ones((10, 3))
    x[7, 0] = np.nan
    x[4, 1], x[4, 2] = np.inf, -np.inf
    expected = NonFinite(row=4, n_rows=2, n_values=3)
    assert first_nonfinite(x) == expected
    assert first_nonfinite(x, block_rows=3) == expected  # row 4 and row 7 fall in different blocks
    for fmt in ("csr", "csc", "coo", "lil"):
        assert first_nonfinite(sp.csr_matrix(x).asformat(fmt)) == expected, fmt
    assert first_nonfinite(np.ones((5, 2))) is None and first_nonfinite(np.empty((0, 3))) is None
    assert first_nonfinite(np.arange(6).reshape(3, 2)) is None  # integers are always finite


def test_check_finite_names_the_first_cell_in_the_rows_read():
    block = np.ones((3, 2))
    block[2, 1] = np.nan
    names = pd.Index([f"cell{i}" for i in range(10)])
    with pytest.raises(
        ValueError,
        match=r"^adata.X holds 1 NaN or infinite value\(s\) in 1 of 3 cells read; "
        r"the first is in obs 'cell8' \(row 8\)$",
    ):
        check_finite(block, "adata.X", obs_names=names, row_ids=np.array([1, 5, 8]))
    with pytest.raises(
        ValueError,
        match=r"^embedding holds 1 NaN or infinite value\(s\) in 1 of 3 rows; "
        r"the first is in row 2$",
    ):
        check_finite(block, "embedding")
    check_finite(np.ones(3), "fine")


def test_bounds_keys_and_missing_categories_are_worded_alike():
    with pytest.raises(ValueError, match=r"^dropout must be a finite number in \[0, 1\), got dropout=1$"):
        check_number(1, "dropout", minimum=0, below=1)
    with pytest.raises(ValueError, match=r"percentile must be a finite number in \[0, 100\], got percentile=101"):
        check_number(101, "percentile", minimum=0, maximum=100)
    assert check_number(100, "percentile", minimum=0, maximum=100) == 100.0
    with pytest.raises(ArgumentTypeError, match="set_diag must be True or False, got set_diag=1"):
        check_bool(1, "set_diag")
    with pytest.raises(KeyError, match=r"spatial_key='xy' is not in adata.obsm; it has \['spatial'\]"):
        check_key("xy", {"spatial": None}, "spatial_key", "in adata.obsm")
    with pytest.raises(ValueError, match=r"got 1 missing \(the first at obs 'b'\)"):
        category_codes(pd.Series(["x", None, "y"]), "batch_key='s'", obs_names=pd.Index(["a", "b", "c"]))
    codes, cats = category_codes(pd.Categorical(["b", "b"], categories=["a", "b"]), "s")
    assert codes.tolist() == [1, 1] and list(cats) == ["a", "b"]  # unused categories are kept


def test_checks_name_the_argument_the_value_and_what_was_expected():
    with pytest.raises(ArgumentTypeError, match=r"epochs must be an int >= 1, got epochs=1.5"):
        check_int(1.5, "epochs", minimum=1)
    with pytest.raises(ValueError, match=r"patience must be an int >= 1, got patience=0"):
        check_int(0, "patience", minimum=1)
    with pytest.raises(ValueError, match=r"mode must be one of 'min', 'max', got mode='up'"):
        check_choice("up", "mode", ("min", "max"))
    with pytest.raises(IndexError, match=r"train_ind must hold positions in \[0, 5\)"):
        as_index([0, 5], "train_ind", 5)
    assert as_index(np.array([True, False, True]), "ind", 3).tolist() == [0, 2]
    with pytest.raises(ValueError, match="boolean mask of length 4"):
        as_index(np.array([True, False, True]), "ind", 4)
    codes, cats = category_codes(["b", "a", None, "b"], "obs_key='x'", allow_missing=True)
    assert codes.tolist() == [1, 0, -1, 1] and list(cats) == ["a", "b"]
    with pytest.raises(ValueError, match=r"obs_key='x' must have no missing values, got 1 missing"):
        category_codes(["b", "a", None], "obs_key='x'")
