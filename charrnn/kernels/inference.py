"""Kernels for running the model one character at a time (sampling).

Every row of a batch is computed by exactly the same instructions whatever the
batch size, so sampling N streams together gives bitwise the same result as
sampling each alone. (BLAS makes no such promise, which is why these are not
GEMM calls.)
"""

from charrnn.kernels import kernel


@kernel
def rows_matvec_add(out, w, x):
    """out[b] += w @ x[b] for every row b.  out: (B, N); w: (N, K); x: (B, K)."""
    B, N = out.shape
    K = w.shape[1]
    for j in range(N):  # each weight row is read once and used for every b
        wj = w[j]
        for b in range(B):
            xb = x[b]
            acc = w.dtype.type(0)
            for k in range(K):
                acc += wj[k] * xb[k]
            out[b, j] += acc


@kernel
def rows_set(out, v):
    """out[b] = v for every row b.  out: (B, N); v: (N,)."""
    for b in range(out.shape[0]):
        out[b] = v
