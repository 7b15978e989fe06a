"""LSTM layer, PyTorch's math and gate order (i, f, g, o):

    i, f, g, o = sigma(.), sigma(.), tanh(.), sigma(.) of x @ w_ih.T + b_ih + h @ w_hh.T + b_hh
    c' = f * c + i * g
    h' = o * tanh(c')

One step of the cell, for a range of units; recurrence.py runs the time loop.
"""

from charrnn.kernels import kernel
from charrnn.kernels.activations import sigmoid, tanh
from charrnn.kernels.simd import prefetch

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
