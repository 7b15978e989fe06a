"""LSTM layer, PyTorch's math and gate order (i, f, g, o):

    i, f, g, o = sigma(.), sigma(.), tanh(.), sigma(.) of x @ w_ih.T + b_ih + h @ w_hh.T + b_hh
    c' = f * c + i * g
    h' = o * tanh(c')

The input side of every step is computed before the time loop (recurrent.py);
these kernels run the loop. Each of the nthreads threads computes a share of the
recurrent product (by panels of columns) and a share of the cell (by units),
meeting at a barrier after each.
"""

import numpy as np
from numba import prange

from charrnn.kernels import kernel, parallel_kernel
from charrnn.kernels.activations import sigmoid, tanh
from charrnn.kernels.gemm import gemm_block_n, split, tile_scratch
from charrnn.kernels.simd import BARRIER_SIZE, NR, barrier, prefetch

UNIT_ALIGN = 8  # units per thread start at multiples of 8: whole float32 vectors
LINE = 16  # float32 elements in a 64-byte cache line: one prefetch each


@kernel
def lstm_cell_forward(h, c, a, c_prev, u0, u1):
    """Units u0..u1 of one step.  h, c: (B, H) out; a: (B, 4H) pre-activations in,
    activations out (these units' columns); c_prev: (B, H)."""
    B, H = h.shape
    n = u1 - u0
    for b in range(B):
        # 1-D slices and one output per loop: each loop vectorises.
        ab = a[b]
        i, f, g, o = ab[u0:u1], ab[H + u0:H + u1], ab[2 * H + u0:2 * H + u1], ab[3 * H + u0:3 * H + u1]
        for j in range(n):
            i[j] = sigmoid(i[j])
        for j in range(n):
            f[j] = sigmoid(f[j])
        for j in range(n):
            g[j] = tanh(g[j])
        for j in range(n):
            o[j] = sigmoid(o[j])
        cb, cp, hb = c[b, u0:u1], c_prev[b, u0:u1], h[b, u0:u1]
        for j in range(n):
            cb[j] = f[j] * cp[j] + i[j] * g[j]
        for j in range(n):
            hb[j] = o[j] * tanh(cb[j])


@parallel_kernel
def lstm_recurrence(hs, cs, acts, h0, c0, w_hh_t, nthreads):
    """The time loop of one layer.

    hs, cs: (T, B, H) out; acts: (T, B, 4H) input-side pre-activations (biases
    included) in, gate activations out; h0, c0: (B, H); w_hh_t: w_hh.T packed
    (panels(4H), H, NR)."""
    T, B, H = hs.shape
    npan = w_hh_t.shape[0]
    sync = np.zeros(BARRIER_SIZE, np.int64)
    for worker in prange(nthreads):
        p0, p1 = split(npan, nthreads, worker, 1)
        u0, u1 = split(H, nthreads, worker, UNIT_ALIGN)
        scratch = tile_scratch(hs)
        for t in range(T):
            h_prev = h0 if t == 0 else hs[t - 1]
            c_prev = c0 if t == 0 else cs[t - 1]
            gemm_block_n(h_prev, w_hh_t, acts[t], 0, B, p0, p1, scratch)
            barrier(sync, nthreads)
            lstm_cell_forward(hs[t], cs[t], acts[t], c_prev, u0, u1)
            barrier(sync, nthreads)


@kernel
def lstm_cell_backward(a, dh, dc, dh_out, c, c_prev, u0, u1, tc, dct):
    """Units u0..u1 of one step back.  a: (B, 4H) in, the gate activations; out, the
    gradient w.r.t. the pre-activations, in place: the activations are read for the
    last time here, and rewriting lines already in cache saves the memory traffic
    of a separate output. dh: (B, H), gradient reaching h from the next step.
    dc: (B, H) in: from the next step; out: w.r.t. c_prev. dh_out: (B, H) from the
    layer above. c, c_prev: (B, H). tc, dct: (H,) workspaces."""
    B, H = dh.shape
    n = u1 - u0
    one = a.dtype.type(1.0)
    for b in range(B):
        ab = a[b]
        i, f, g, o = ab[u0:u1], ab[H + u0:H + u1], ab[2 * H + u0:2 * H + u1], ab[3 * H + u0:3 * H + u1]
        cb, cp, dcb = c[b, u0:u1], c_prev[b, u0:u1], dc[b, u0:u1]
        dhb, dho = dh[b, u0:u1], dh_out[b, u0:u1]
        if b + 1 < B:
            _prefetch_row(a, c, c_prev, dh_out, b + 1, u0, u1)
        # Each gate's gradient replaces the gate once nothing else needs it; the
        # gradient of g, needed before i is replaced, waits in tc.
        for j in range(n):
            tc[j] = tanh(cb[j])
        for j in range(n):
            dct[j] = dcb[j] + (dhb[j] + dho[j]) * o[j] * (one - tc[j] * tc[j])
        for j in range(n):
            o[j] = (dhb[j] + dho[j]) * tc[j] * o[j] * (one - o[j])
        for j in range(n):
            dcb[j] = dct[j] * f[j]
        for j in range(n):
            f[j] = dct[j] * cp[j] * f[j] * (one - f[j])
        for j in range(n):
            tc[j] = dct[j] * i[j] * (one - g[j] * g[j])
        for j in range(n):
            i[j] = dct[j] * g[j] * i[j] * (one - i[j])
        for j in range(n):
            g[j] = tc[j]


@kernel
def _prefetch_row(a, c, c_prev, dh_out, b, u0, u1):
    """Prefetch row b of what lstm_cell_backward reads for units u0..u1. These arrays
    were written in the forward pass and are long out of cache, and one row's
    slices are too short for the hardware prefetcher to pick up in time."""
    H = c.shape[1]
    for j in range(u0, u1, LINE):
        for gate in range(4):
            prefetch(a, b, gate * H + j)
        prefetch(c, b, j)
        prefetch(c_prev, b, j)
        prefetch(dh_out, b, j)


@parallel_kernel
def lstm_recurrence_backward(acts, dh, dc, dhs, cs, c0, w_hh, nthreads):
    """Backpropagation through the time loop of lstm_recurrence.

    acts: (T, B, 4H) in, the gate activations from lstm_recurrence; out, in their
    place, the gradient w.r.t. the pre-activations of every step.
    dh, dc: (B, H) in, gradient w.r.t. the final state (zero when truncating);
    out, w.r.t. the initial state. dhs: (T, B, H) gradient w.r.t. hs from above.
    cs: from lstm_recurrence; c0: (B, H); w_hh packed (panels(H), 4H, NR)."""
    T, B, H = dhs.shape
    npan = w_hh.shape[0]
    sync = np.zeros(BARRIER_SIZE, np.int64)
    for worker in prange(nthreads):
        p0, p1 = split(npan, nthreads, worker, 1)
        u0, u1 = split(H, nthreads, worker, UNIT_ALIGN)
        scratch = tile_scratch(dh)
        tc, dct = np.empty(H, dh.dtype), np.empty(H, dh.dtype)
        c_lo, c_hi = p0 * NR, min(H, p1 * NR)  # the columns of dh this thread's panels write
        for t in range(T - 1, -1, -1):
            c_prev = c0 if t == 0 else cs[t - 1]
            lstm_cell_backward(acts[t], dh, dc, dhs[t], cs[t], c_prev, u0, u1, tc, dct)
            barrier(sync, nthreads)
            dh[:, c_lo:c_hi] = 0.0
            gemm_block_n(acts[t], w_hh, dh, 0, B, p0, p1, scratch)
            barrier(sync, nthreads)
