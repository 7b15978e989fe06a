"""Adam and gradient clipping on the flat parameter and gradient buffers, split
across threads.

Each thread's part is passed to a loop of its own as slices indexed from 0: indexed
from its start inside the prange loop, Numba cannot show the index is never negative,
and the loop stayed scalar (Adam on 870 k weights took 0.9-1.2 ms on 2 cores of Zen 5;
vectorised 0.1 ms)."""

import math

import numpy as np

from numba import prange

from charrnn.kernels import exact_kernel, kernel, parallel_kernel
from charrnn.kernels.gemm import split


@kernel
def _sum_squares_part(x):
    """sum(x ** 2) over a thread's part (x: (n,)), each square and the sum in float64."""
    part = 0.0
    for i in range(x.shape[0]):
        xi = np.float64(x[i])
        part += xi * xi
    return part


@parallel_kernel
def sum_squares(x, nthreads):
    """sum(x ** 2) in float64.  x: (N,). The parts' sums are added in thread order, and
    a part's in vector lanes, so the last bits depend on the thread count: it only
    scales a clipped gradient, in float32."""
    total = 0.0
    for worker in prange(nthreads):
        i0, i1 = split(x.shape[0], nthreads, worker, 64)
        total += _sum_squares_part(x[i0:i1])
    return total


@parallel_kernel
def adam_update(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step, nthreads, grad_scale=1.0):
    """One Adam step as torch.optim.AdamW takes it (bias-corrected moments, eps
    added to the corrected root of v; the weights first shrunk by lr * weight_decay,
    which with weight_decay 0 is torch.optim.Adam's step) on the gradient
    grad_scale * g, so that clipping costs no pass of its own.  p, g, m, v: (N,);
    step counts from 1."""
    t = p.dtype.type
    keep = t(1.0 - lr * weight_decay)
    step_size = t(lr / (1.0 - beta1 ** step))
    inv_root_bc2 = t(1.0 / math.sqrt(1.0 - beta2 ** step))
    b1, b2, e, scale = t(beta1), t(beta2), t(eps), t(grad_scale)
    for worker in prange(nthreads):
        i0, i1 = split(p.shape[0], nthreads, worker, 64)
        _adam_part(p[i0:i1], g[i0:i1], m[i0:i1], v[i0:i1], step_size, inv_root_bc2, b1, b2, e, scale, keep)


@exact_kernel
def _adam_part(p, g, m, v, step_size, inv_root_bc2, b1, b2, e, scale, keep):
    """adam_update on one thread's part, its constants worked out. Without weight
    decay keep is 1, and p * 1 - update is p - update exactly (nothing is fused)."""
    one = p.dtype.type(1.0)
    for i in range(p.shape[0]):
        gi = g[i] * scale
        mi = b1 * m[i] + (one - b1) * gi
        vi = b2 * v[i] + (one - b2) * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] = p[i] * keep - step_size * mi / (math.sqrt(vi) * inv_root_bc2 + e)


@parallel_kernel
def ema_update(avg, p, decay, nthreads):
    """avg = decay * avg + (1 - decay) * p, elementwise: an exponential moving average
    of the weights.  avg, p: (N,)."""
    t = avg.dtype.type
    d, rest = t(decay), t(1.0 - decay)
    for worker in prange(nthreads):
        i0, i1 = split(avg.shape[0], nthreads, worker, 64)
        _ema_part(avg[i0:i1], p[i0:i1], d, rest)


@exact_kernel
def _ema_part(avg, p, d, rest):
    for i in range(avg.shape[0]):
        avg[i] = d * avg[i] + rest * p[i]
