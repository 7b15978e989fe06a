"""Dense layers and the embedding lookup: forward/backward pairs."""

from charrnn.kernels import kernel
from charrnn.kernels.blas import gemm


@kernel
def add_column_sums(out, m):
    """out += m.sum(axis=0).  out: (N,); m: (M, N)."""
    for r in range(m.shape[0]):
        row = m[r]
        for j in range(m.shape[1]):
            out[j] += row[j]


@kernel
def linear_forward(out, x, w, b):
    """out = x @ w.T + b.  out: (N, O); x: (N, I); w: (O, I); b: (O,)."""
    for r in range(out.shape[0]):
        out[r] = b
    gemm(False, True, 1.0, x, w, 1.0, out)


@kernel
def linear_backward(dx, dw, db, dout, x, w):
    """dx = dout @ w (overwritten); dw += dout.T @ x; db += dout summed over rows.

    dx: (N, I); dw: (O, I); db: (O,); dout: (N, O); x: (N, I); w: (O, I).
    """
    gemm(True, False, 1.0, dout, x, 1.0, dw)
    add_column_sums(db, dout)
    gemm(False, False, 1.0, dout, w, 0.0, dx)


@kernel
def embedding_forward(out, ids, weight):
    """out[t, b] = weight[ids[t, b]].  out: (T, B, E); ids: (T, B); weight: (V, E)."""
    for t in range(ids.shape[0]):
        for b in range(ids.shape[1]):
            out[t, b] = weight[ids[t, b]]


@kernel
def embedding_backward(dweight, dout, ids):
    """dweight[ids[t, b]] += dout[t, b].  dweight: (V, E); dout: (T, B, E); ids: (T, B)."""
    for t in range(ids.shape[0]):
        for b in range(ids.shape[1]):
            row = dweight[ids[t, b]]
            src = dout[t, b]
            for e in range(row.shape[0]):
                row[e] += src[e]
