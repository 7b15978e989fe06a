"""Dropout masks from a counter-based generator.

Element i of a mask depends only on (key, i): no generator state to carry, the
same key always gives the same mask, and a resumed run reproduces it exactly.
"""

import numpy as np

from charrnn.kernels import kernel

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@kernel
def _splitmix64(state):
    """The output function of SplitMix64: a well-mixed 64-bit hash of state."""
    z = (state ^ (state >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


@kernel
def dropout_mask(mask, key, p):
    """Fill mask with 0 (probability p) or 1 / (1 - p), so that x * mask keeps the
    expectation of x.  mask: any shape, C-contiguous; key: uint64; 0 <= p < 1."""
    flat = mask.reshape(mask.size)
    keep_scale = 1.0 / (1.0 - p)
    k = np.uint64(key)
    for i in range(flat.size):
        bits = _splitmix64(k + np.uint64(i + 1) * _GOLDEN)
        u = (bits >> np.uint64(40)) * (1.0 / 16777216.0)  # 24 bits -> [0, 1)
        flat[i] = 0.0 if u < p else keep_scale
