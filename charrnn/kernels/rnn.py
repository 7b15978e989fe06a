"""Elman RNN layer with tanh, PyTorch's math:  h' = tanh(x @ w_ih.T + b_ih + h @ w_hh.T + b_hh).

hs holds each step's input-side pre-activation until the step overwrites it.
"""

import numpy as np
from numba import prange

from charrnn.kernels import kernel, parallel_kernel
from charrnn.kernels.activations import tanh
from charrnn.kernels.gemm import gemm_block_n, split, tile_scratch
from charrnn.kernels.lstm import UNIT_ALIGN
from charrnn.kernels.simd import BARRIER_SIZE, NR, barrier


@kernel
def rnn_cell_forward(h, u0, u1):
    """h: (B, H) pre-activations in, tanh of them out, for units u0..u1."""
    for b in range(h.shape[0]):
        hb = h[b, u0:u1]
        for j in range(u1 - u0):
            hb[j] = tanh(hb[j])


@parallel_kernel
def rnn_recurrence(hs, h0, w_hh_t, nthreads):
    """The time loop of one layer.  hs: (T, B, H) input-side pre-activations (both
    biases added) in, hidden states out; h0: (B, H); w_hh_t: w_hh.T packed."""
    T, B, H = hs.shape
    npan = w_hh_t.shape[0]
    sync = np.zeros(BARRIER_SIZE, np.int64)
    for worker in prange(nthreads):
        p0, p1 = split(npan, nthreads, worker, 1)
        u0, u1 = split(H, nthreads, worker, UNIT_ALIGN)
        scratch = tile_scratch(hs)
        for t in range(T):
            h_prev = h0 if t == 0 else hs[t - 1]
            gemm_block_n(h_prev, w_hh_t, hs[t], 0, B, p0, p1, scratch)
            barrier(sync, nthreads)
            rnn_cell_forward(hs[t], u0, u1)
            barrier(sync, nthreads)


@kernel
def rnn_cell_backward(dpre, dh, dh_out, h, u0, u1):
    """dpre: (B, H) out, gradient w.r.t. the pre-activation; dh: (B, H) from the
    next step; dh_out: (B, H) from above; h: (B, H) this step's output."""
    one = h.dtype.type(1.0)
    for b in range(h.shape[0]):
        d, g, go, hb = dpre[b, u0:u1], dh[b, u0:u1], dh_out[b, u0:u1], h[b, u0:u1]
        for j in range(u1 - u0):
            d[j] = (g[j] + go[j]) * (one - hb[j] * hb[j])


@parallel_kernel
def rnn_recurrence_backward(dpre, dh, dhs, hs, w_hh, nthreads):
    """dpre: (T, B, H) out; dh: (B, H) in, w.r.t. the final state, out, w.r.t. the
    initial state; dhs: (T, B, H) from above; hs: (T, B, H); w_hh packed (panels(H), H, NR)."""
    T, B, H = dhs.shape
    npan = w_hh.shape[0]
    sync = np.zeros(BARRIER_SIZE, np.int64)
    for worker in prange(nthreads):
        p0, p1 = split(npan, nthreads, worker, 1)
        u0, u1 = split(H, nthreads, worker, UNIT_ALIGN)
        scratch = tile_scratch(dh)
        c_lo, c_hi = p0 * NR, min(H, p1 * NR)
        for t in range(T - 1, -1, -1):
            rnn_cell_backward(dpre[t], dh, dhs[t], hs[t], u0, u1)
            barrier(sync, nthreads)
            dh[:, c_lo:c_hi] = 0.0
            gemm_block_n(dpre[t], w_hh, dh, 0, B, p0, p1, scratch)
            barrier(sync, nthreads)
