import numpy as np
import pytest

from charrnn.kernels.blas import gemm


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm_matches_numpy(rng, dtype, trans_a, trans_b):
    a = rng.standard_normal((5, 3) if trans_a else (3, 5)).astype(dtype)
    b = rng.standard_normal((4, 5) if trans_b else (5, 4)).astype(dtype)
    c = rng.standard_normal((3, 4)).astype(dtype)
    expected = 2.0 * ((a.T if trans_a else a) @ (b.T if trans_b else b)) + 0.5 * c
    gemm(trans_a, trans_b, 2.0, a, b, 0.5, c)
    np.testing.assert_allclose(c, expected, rtol=1e-5 if dtype == np.float32 else 1e-12)


def test_gemm_writes_into_a_strided_view(rng):
    a = rng.standard_normal((3, 5))
    b = rng.standard_normal((5, 4))
    big = np.zeros((3, 10))
    gemm(False, False, 1.0, a, b, 0.0, big[:, 2:6])
    np.testing.assert_allclose(big[:, 2:6], a @ b)
    assert not big[:, :2].any() and not big[:, 6:].any()


def test_gemm_reads_strided_views(rng):
    a = rng.standard_normal((3, 8))[:, 1:6]
    b = rng.standard_normal((9, 4))[2:7]
    c = np.zeros((3, 4))
    gemm(False, False, 1.0, a, b, 0.0, c)
    np.testing.assert_allclose(c, a @ b)


def test_gemm_empty_inner_dimension_scales_c():
    c = np.ones((2, 3))
    gemm(False, False, 1.0, np.ones((2, 0)), np.ones((0, 3)), 0.5, c)
    np.testing.assert_array_equal(c, 0.5)
    gemm(False, False, 1.0, np.ones((2, 0)), np.ones((0, 3)), 0.0, c)
    np.testing.assert_array_equal(c, 0.0)


def test_gemm_refuses_a_non_contiguous_last_axis(rng):
    a = rng.standard_normal((3, 10))[:, ::2]
    with pytest.raises(ValueError):
        gemm(False, False, 1.0, a, np.ones((5, 2)), 0.0, np.zeros((3, 2)))
