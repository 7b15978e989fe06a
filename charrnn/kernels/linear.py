"""Row-wise helpers around the matrix products: bias rows, the embedding table's
gather and scatter, and column sums (bias gradients). All split across threads."""

from numba import prange

from charrnn.kernels import parallel_kernel
from charrnn.kernels.gemm import split


@parallel_kernel
def set_rows(out, v, nthreads):
    """out[r] = v for every row.  out: (N, M); v: (M,)."""
    for worker in prange(nthreads):
        r0, r1 = split(out.shape[0], nthreads, worker, 1)
        for r in range(r0, r1):
            out[r] = v


@parallel_kernel
def gather_rows(out, table, ids, nthreads):
    """out[r] = table[ids[r]].  out: (N, M); table: (V, M); ids: (N,)."""
    for worker in prange(nthreads):
        r0, r1 = split(out.shape[0], nthreads, worker, 1)
        for r in range(r0, r1):
            out[r] = table[ids[r]]


@parallel_kernel
def scatter_add_rows(out, rows, ids, nthreads):
    """out[ids[r]] += rows[r] for every r.  out: (V, M); rows: (N, M); ids: (N,).
    Threads split the columns, so no two threads ever add to the same element."""
    M = out.shape[1]
    for worker in prange(nthreads):
        c0, c1 = split(M, nthreads, worker, 8)
        for r in range(rows.shape[0]):
            src = rows[r, c0:c1]
            dst = out[ids[r], c0:c1]
            for j in range(c1 - c0):
                dst[j] += src[j]


@parallel_kernel
def add_column_sums(out, m, nthreads):
    """out += m.sum(axis=0).  out: (M,); m: (N, M). Threads split the columns."""
    for worker in prange(nthreads):
        c0, c1 = split(m.shape[1], nthreads, worker, 8)
        acc = out[c0:c1]
        for r in range(m.shape[0]):
            row = m[r, c0:c1]
            for j in range(c1 - c0):
                acc[j] += row[j]
