"""Softmax cross-entropy over the vocabulary, in nats, rows split across threads."""

import math

from numba import prange

from charrnn.kernels import kernel, parallel_kernel
from charrnn.kernels.gemm import split


@kernel
def _row_logsumexp(row):
    """log(sum(exp(row))) without overflow, accumulated in float64.  row: (V,)."""
    m = row[0]
    for j in range(1, row.shape[0]):
        if row[j] > m:
            m = row[j]
    s = 0.0
    for j in range(row.shape[0]):
        s += math.exp(row[j] - m)
    return m + math.log(s)


@parallel_kernel
def softmax_xent(logits, targets, nthreads):
    """Sum over rows of -log softmax(logits)[target] (float64).
    logits: (N, V); targets: (N,)."""
    total = 0.0
    for worker in prange(nthreads):
        r0, r1 = split(logits.shape[0], nthreads, worker, 1)
        part = 0.0
        for n in range(r0, r1):
            part += _row_logsumexp(logits[n]) - logits[n, targets[n]]
        total += part
    return total


@parallel_kernel
def softmax_xent_backward(dlogits, logits, targets, scale, nthreads):
    """Loss as in softmax_xent, and dlogits = scale * (softmax(logits) - onehot(target)).
    dlogits: (N, V) out, may be the same array as logits; targets: (N,)."""
    total = 0.0
    for worker in prange(nthreads):
        r0, r1 = split(logits.shape[0], nthreads, worker, 1)
        part = 0.0
        for n in range(r0, r1):
            row = logits[n]
            lse = _row_logsumexp(row)
            part += lse - row[targets[n]]
            drow = dlogits[n]
            for j in range(row.shape[0]):
                drow[j] = scale * math.exp(row[j] - lse)
            drow[targets[n]] -= scale
        total += part
    return total
