"""Adam and gradient clipping on the flat parameter and gradient buffers."""

import math

from charrnn.kernels import kernel


@kernel
def sum_squares(x):
    """sum(x ** 2) accumulated in float64.  x: (N,)."""
    s = 0.0
    for i in range(x.shape[0]):
        s += x[i] * x[i]
    return s


@kernel
def scale_inplace(x, factor):
    """x *= factor.  x: (N,)."""
    for i in range(x.shape[0]):
        x[i] *= factor


@kernel
def adam_update(p, g, m, v, lr, beta1, beta2, eps, step):
    """One Adam step as torch.optim.Adam takes it (bias-corrected moments, eps
    added to the corrected root of v).  p, g, m, v: (N,); step counts from 1."""
    step_size = lr / (1.0 - beta1 ** step)
    inv_root_bc2 = 1.0 / math.sqrt(1.0 - beta2 ** step)
    for i in range(p.shape[0]):
        gi = g[i]
        m[i] = beta1 * m[i] + (1.0 - beta1) * gi
        v[i] = beta2 * v[i] + (1.0 - beta2) * gi * gi
        p[i] -= step_size * m[i] / (math.sqrt(v[i]) * inv_root_bc2 + eps)
