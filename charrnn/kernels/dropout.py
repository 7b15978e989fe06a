"""Dropout masks from a counter-based generator.

Element i of a mask depends only on (key, i): no generator state to carry, the
same key always gives the same mask, and a resumed run reproduces it exactly.
"""

import numpy as np
from numba import prange

from charrnn.kernels import kernel, parallel_kernel
from charrnn.kernels.gemm import split

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@kernel
def _splitmix64(state):
    """The output function of SplitMix64: a well-mixed 64-bit hash of state."""
    z = (state ^ (state >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


@parallel_kernel
def dropout_mask(mask, key, p, nthreads):
    """Fill mask with 0 (probability p) or 1 / (1 - p), so that x * mask keeps the
    expectation of x.  mask: any shape, C-contiguous; key: uint64; 0 <= p < 1."""
    flat = mask.reshape(mask.size)
    keep_scale = 1.0 / (1.0 - p)
    k = np.uint64(key)
    for worker in prange(nthreads):
        i0, i1 = split(flat.size, nthreads, worker, 64)
        _mask_part(flat[i0:i1], k + np.uint64(i0) * _GOLDEN, p, keep_scale)


@kernel
def _mask_part(part, base, p, keep_scale):
    """dropout_mask on one thread's part (a slice indexed from 0, so that the loop
    vectorises; see kernels/optim.py), whose element i hashes base + (i + 1) * _GOLDEN."""
    for i in range(part.size):
        bits = _splitmix64(base + np.uint64(i + 1) * _GOLDEN)
        u = (bits >> np.uint64(40)) * (1.0 / 16777216.0)  # 24 bits -> [0, 1)
        part[i] = 0.0 if u < p else keep_scale


@parallel_kernel
def apply_mask(out, x, mask, nthreads):
    """out = x * mask elementwise (out may be x).  All C-contiguous, one shape."""
    o, a, m = out.reshape(out.size), x.reshape(x.size), mask.reshape(mask.size)
    for worker in prange(nthreads):
        i0, i1 = split(o.size, nthreads, worker, 64)
        _multiply_part(o[i0:i1], a[i0:i1], m[i0:i1])


@kernel
def _multiply_part(out, x, mask):
    """out = x * mask on one thread's part (slices indexed from 0, to vectorise)."""
    for i in range(out.size):
        out[i] = x[i] * mask[i]
