"""GRU layer, PyTorch's math and gate order (r, z, n):

    r = sigma(W_ir x + b_ir + W_hr h + b_hr)
    z = sigma(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    h' = (1 - z) * n + z * h
"""

import numpy as np

from charrnn.kernels import kernel
from charrnn.kernels.activations import sigmoid, tanh
from charrnn.kernels.blas import gemm
from charrnn.kernels.recurrent import input_projection, weight_gradients


@kernel
def gru_cell_forward(h, a, hn, hg, h_prev, b_hn):
    """One step's nonlinearity.  h: (B, H) out; a: (B, 3H) input-side pre-activations
    in (b_hr, b_hz already added), activations r, z, n out; hn: (B, H) out, W_hn h + b_hn;
    hg: (B, 3H) recurrent product h_prev @ w_hh.T; h_prev: (B, H); b_hn: (H,)."""
    B, H = h.shape
    for b in range(B):
        ab = a[b]
        hgb = hg[b]
        for j in range(2 * H):
            ab[j] = sigmoid(ab[j] + hgb[j])
        hnb = hn[b]
        for j in range(H):
            hnb[j] = hgb[2 * H + j] + b_hn[j]
        for j in range(H):
            ab[2 * H + j] = tanh(ab[2 * H + j] + ab[j] * hnb[j])
        hb = h[b]
        hp = h_prev[b]
        for j in range(H):
            n = ab[2 * H + j]
            hb[j] = n + ab[H + j] * (hp[j] - n)


@kernel
def gru_forward(hs, acts, hn, x, h0, w_ih, w_hh, b_ih, b_hh):
    """One GRU layer over T steps.

    hs: (T, B, H) out, hidden state after each step
    acts: (T, B, 3H) out, activations r, z, n; hn: (T, B, H) out, W_hn h + b_hn
    (n's gradient w.r.t. r needs it)
    x: (T, B, D); h0: (B, H); w_ih: (3H, D); w_hh: (3H, H); b_ih, b_hh: (3H,)
    """
    T, B, H = hs.shape
    # b_hr and b_hz add like b_ir and b_iz; b_hn sits inside r * (...), so it cannot.
    bias = b_ih.copy()
    bias[:2 * H] += b_hh[:2 * H]
    input_projection(acts, x, w_ih, bias)
    hg = np.empty((B, 3 * H), hs.dtype)
    for t in range(T):
        h_prev = h0 if t == 0 else hs[t - 1]
        gemm(False, True, 1.0, h_prev, w_hh, 0.0, hg)
        gru_cell_forward(hs[t], acts[t], hn[t], hg, h_prev, b_hh[2 * H:])


@kernel
def gru_cell_backward(dxg, dhg, dh, dh_out, a, hn, h_prev):
    """One step back.  dxg, dhg: (B, 3H) out, gradients w.r.t. the input-side and
    recurrent-side pre-activations (they differ in the n block by the factor r).
    dh: (B, H) in, gradient reaching h from the next step; out, the part of the
    gradient w.r.t. h_prev that flows through z * h_prev (the caller adds dhg @ w_hh).
    dh_out: (B, H) from the layer above; a: (B, 3H) activations; hn, h_prev: (B, H)."""
    B, H = dh.shape
    for b in range(B):
        ab = a[b]
        for j in range(H):
            r = ab[j]
            z = ab[H + j]
            n = ab[2 * H + j]
            d = dh[b, j] + dh_out[b, j]
            dn = d * (1.0 - z) * (1.0 - n * n)
            dz = d * (h_prev[b, j] - n) * z * (1.0 - z)
            dr = dn * hn[b, j] * r * (1.0 - r)
            dxg[b, j] = dr
            dxg[b, H + j] = dz
            dxg[b, 2 * H + j] = dn
            dhg[b, j] = dr
            dhg[b, H + j] = dz
            dhg[b, 2 * H + j] = dn * r
            dh[b, j] = d * z


@kernel
def gru_backward(dx, dh0, dw_ih, dw_hh, db_ih, db_hh, dxg, dhg,
                 dhs, dh_last, x, h0, hs, acts, hn, w_ih, w_hh):
    """Backpropagation through the T steps of gru_forward.

    dx: (T, B, D) out; dh0: (B, H) out; dw_ih, dw_hh, db_ih, db_hh: accumulated (+=)
    dxg, dhg: (T, B, 3H) workspaces; dhs: (T, B, H) gradient w.r.t. hs from above
    dh_last: (B, H) gradient w.r.t. the final state; the rest: as in gru_forward
    """
    T = hs.shape[0]
    dh = dh_last.copy()
    for t in range(T - 1, -1, -1):
        h_prev = h0 if t == 0 else hs[t - 1]
        gru_cell_backward(dxg[t], dhg[t], dh, dhs[t], acts[t], hn[t], h_prev)
        gemm(False, False, 1.0, dhg[t], w_hh, 1.0, dh)
    dh0[:] = dh
    weight_gradients(dx, dw_ih, dw_hh, db_ih, db_hh, dxg, dhg, x, h0, hs, w_ih)
