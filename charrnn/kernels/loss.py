"""Softmax cross-entropy over the vocabulary, in nats, rows split across threads.

A target below zero marks a padded position (line mode pads lines to a batch's
longest): it adds nothing to the loss and its gradient row is zero.
"""

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
    """Sum over rows of -log softmax(logits)[target] (float64), rows with a negative
    target left out.  logits: (N, V); targets: (N,)."""
    total = 0.0
    for worker in prange(nthreads):
        r0, r1 = split(logits.shape[0], nthreads, worker, 1)
        part = 0.0
        for n in range(r0, r1):
            if targets[n] >= 0:
                part += _row_logsumexp(logits[n]) - logits[n, targets[n]]
        total += part
    return total


@parallel_kernel
def softmax_xent_rows(out, logits, targets, nthreads):
    """out[n] = -log softmax(logits[n])[targets[n]] (float64), 0 for a negative target.
    out: (N,); logits: (N, V); targets: (N,)."""
    for worker in prange(nthreads):
        r0, r1 = split(logits.shape[0], nthreads, worker, 1)
        for n in range(r0, r1):
            out[n] = _row_logsumexp(logits[n]) - logits[n, targets[n]] if targets[n] >= 0 else 0.0


@parallel_kernel
def softmax_xent_backward(dlogits, logits, targets, scale, nthreads):
    """Loss as in softmax_xent, and dlogits = scale * (softmax(logits) - onehot(target)),
    zero for a row with a negative target. dlogits: (N, V) out, may be the same array
    as logits; targets: (N,)."""
    total = 0.0
    for worker in prange(nthreads):
        r0, r1 = split(logits.shape[0], nthreads, worker, 1)
        part = 0.0
        for n in range(r0, r1):
            row, drow = logits[n], dlogits[n]
            if targets[n] < 0:
                for j in range(row.shape[0]):
                    drow[j] = 0.0
                continue
            lse = _row_logsumexp(row)
            part += lse - row[targets[n]]
            for j in range(row.shape[0]):
                drow[j] = scale * math.exp(row[j] - lse)
            drow[targets[n]] -= scale
        total += part
    return total
