"""float32 activations are a rational approximation: bounded error against the exact
functions, never outside [-1, 1] (tanh) or [0, 1] (sigmoid), exact limits, odd
symmetry; float64 ones are exact."""

import numpy as np
import pytest
from numba import njit

from charrnn.kernels.activations import sigmoid, tanh


@njit
def apply(out, x, which):
    for i in range(x.size):
        out[i] = tanh(x[i]) if which == 0 else sigmoid(x[i])


@pytest.mark.parametrize("dtype,tol", [(np.float32, 5e-7), (np.float64, 1e-15)])
def test_against_the_exact_functions(dtype, tol):
    x = np.concatenate([np.linspace(-20, 20, 400_001), [-1e30, -100.0, 0.0, 1e-30, 100.0, 1e30]]).astype(dtype)
    out = np.empty_like(x)
    exact = x.astype(np.float64)
    apply(out, x, 0)
    assert np.abs(out - np.tanh(exact)).max() <= tol and np.abs(out).max() <= 1.0
    apply(out, x, 1)
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert np.abs(out - 0.5 * (1 + np.tanh(exact / 2))).max() <= tol


def test_float32_limits_and_symmetry():
    x = np.array([-50.0, -9.0, 0.0, 9.0, 50.0], np.float32)
    t, s = np.empty_like(x), np.empty_like(x)
    apply(t, x, 0)
    apply(s, x, 1)
    assert t[0] == -1.0 and t[-1] == 1.0 and t[2] == 0.0
    assert s[0] == 0.0 and s[-1] == 1.0 and s[2] == 0.5
    y = np.linspace(0, 10, 1001, dtype=np.float32)
    a, b = np.empty_like(y), np.empty_like(y)
    apply(a, y, 0)
    apply(b, -y, 0)
    np.testing.assert_array_equal(a, -b)
