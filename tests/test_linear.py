"""The row and column helpers around the products, against NumPy, on 1 and 2 threads."""

import numpy as np
import pytest

from charrnn.kernels.linear import add_column_sums, gather_rows, scatter_add_rows, set_rows


@pytest.mark.parametrize("nthreads", [1, 2])
def test_set_and_gather_rows(rng, nthreads):
    out = np.zeros((7, 13))
    v = rng.standard_normal(13)
    set_rows(out, v, nthreads)
    np.testing.assert_array_equal(out, np.tile(v, (7, 1)))
    table, ids = rng.standard_normal((5, 13)), rng.integers(0, 5, 7)
    gather_rows(out, table, ids, nthreads)
    np.testing.assert_array_equal(out, table[ids])


@pytest.mark.parametrize("nthreads", [1, 2])
def test_scatter_add_rows_sums_repeated_ids(rng, nthreads):
    out = rng.standard_normal((5, 19))
    rows, ids = rng.standard_normal((30, 19)), rng.integers(0, 5, 30)
    expected = out.copy()
    np.add.at(expected, ids, rows)
    scatter_add_rows(out, rows, ids, nthreads)
    np.testing.assert_allclose(out, expected, rtol=1e-13)


@pytest.mark.parametrize("nthreads", [1, 2])
def test_add_column_sums(rng, nthreads):
    out, m = rng.standard_normal(21), rng.standard_normal((40, 21))
    expected = out + m.sum(axis=0)
    add_column_sums(out, m, nthreads)
    np.testing.assert_allclose(out, expected, rtol=1e-12)
