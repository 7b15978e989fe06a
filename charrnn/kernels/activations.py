"""Scalar activations, inlined into the cell kernels."""

import math

from numba import njit


@njit(inline="always", error_model="numpy")
def sigmoid(x):
    # exp(-x) overflows to inf for very negative x, giving exactly 0: no NaN.
    return 1.0 / (1.0 + math.exp(-x))


@njit(inline="always", error_model="numpy")
def tanh(x):
    return math.tanh(x)
