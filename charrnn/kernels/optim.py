"""Adam and gradient clipping on the flat parameter and gradient buffers, split
across threads."""

import math

from numba import prange

from charrnn.kernels import parallel_kernel
from charrnn.kernels.gemm import split


@parallel_kernel
def sum_squares(x, nthreads):
    """sum(x ** 2) accumulated in float64.  x: (N,)."""
    total = 0.0
    for worker in prange(nthreads):
        i0, i1 = split(x.shape[0], nthreads, worker, 64)
        part = 0.0
        for i in range(i0, i1):
            part += x[i] * x[i]
        total += part
    return total


@parallel_kernel
def adam_update(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step, nthreads, grad_scale=1.0):
    """One Adam step as torch.optim.AdamW takes it (bias-corrected moments, eps
    added to the corrected root of v; the weights first shrunk by lr * weight_decay,
    which with weight_decay 0 is torch.optim.Adam's step exactly) on the gradient
    grad_scale * g, so that clipping costs no pass of its own.  p, g, m, v: (N,);
    step counts from 1."""
    t = p.dtype.type
    keep = t(1.0 - lr * weight_decay)
    step_size = t(lr / (1.0 - beta1 ** step))
    inv_root_bc2 = t(1.0 / math.sqrt(1.0 - beta2 ** step))
    b1, b2, e, scale = t(beta1), t(beta2), t(eps), t(grad_scale)
    one = t(1.0)
    for worker in prange(nthreads):
        i0, i1 = split(p.shape[0], nthreads, worker, 64)
        for i in range(i0, i1):
            gi = g[i] * scale
            mi = b1 * m[i] + (one - b1) * gi
            vi = b2 * v[i] + (one - b2) * gi * gi
            m[i] = mi
            v[i] = vi
            update = step_size * mi / (math.sqrt(vi) * inv_root_bc2 + e)
            # Two forms, not p * keep with keep = 1: fused multiply-adds may round the
            # product-and-difference differently, and runs without weight decay must
            # stay bit-for-bit what they were.
            if keep == one:
                p[i] -= update
            else:
                p[i] = p[i] * keep - update


@parallel_kernel
def ema_update(avg, p, decay, nthreads):
    """avg = decay * avg + (1 - decay) * p, elementwise: an exponential moving average
    of the weights.  avg, p: (N,)."""
    t = avg.dtype.type
    d, rest = t(decay), t(1.0 - decay)
    for worker in prange(nthreads):
        i0, i1 = split(avg.shape[0], nthreads, worker, 64)
        for i in range(i0, i1):
            avg[i] = d * avg[i] + rest * p[i]
