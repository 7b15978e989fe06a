"""LSTM layer, PyTorch's math and gate order (i, f, g, o):

    i, f, g, o = sigma(.), sigma(.), tanh(.), sigma(.) of x @ w_ih.T + b_ih + h @ w_hh.T + b_hh
    c' = f * c + i * g
    h' = o * tanh(c')
"""

from charrnn.kernels import kernel
from charrnn.kernels.activations import sigmoid, tanh
from charrnn.kernels.blas import gemm
from charrnn.kernels.recurrent import input_projection, weight_gradients


@kernel
def lstm_cell_forward(h, c, a, c_prev):
    """One step's nonlinearity.  h, c: (B, H) out; a: (B, 4H) pre-activations in,
    activations out; c_prev: (B, H)."""
    B, H = h.shape
    for b in range(B):
        # One short loop per output array, so each one vectorises.
        ab = a[b]
        for j in range(2 * H):
            ab[j] = sigmoid(ab[j])
        for j in range(2 * H, 3 * H):
            ab[j] = tanh(ab[j])
        for j in range(3 * H, 4 * H):
            ab[j] = sigmoid(ab[j])
        cb = c[b]
        cp = c_prev[b]
        for j in range(H):
            cb[j] = ab[H + j] * cp[j] + ab[j] * ab[2 * H + j]
        hb = h[b]
        for j in range(H):
            hb[j] = ab[3 * H + j] * tanh(cb[j])


@kernel
def lstm_forward(hs, cs, acts, x, h0, c0, w_ih, w_hh, b_ih, b_hh):
    """One LSTM layer over T steps.

    hs, cs: (T, B, H) out, hidden and cell state after each step
    acts: (T, B, 4H) out, gate activations i, f, g, o (the backward pass needs them)
    x: (T, B, D); h0, c0: (B, H); w_ih: (4H, D); w_hh: (4H, H); b_ih, b_hh: (4H,)
    """
    T = hs.shape[0]
    input_projection(acts, x, w_ih, b_ih + b_hh)
    for t in range(T):
        h_prev = h0 if t == 0 else hs[t - 1]
        c_prev = c0 if t == 0 else cs[t - 1]
        gemm(False, True, 1.0, h_prev, w_hh, 1.0, acts[t])
        lstm_cell_forward(hs[t], cs[t], acts[t], c_prev)


@kernel
def lstm_cell_backward(da, dh, dc, dh_out, a, c, c_prev):
    """One step back.  da: (B, 4H) out, gradient w.r.t. the pre-activations.
    dh: (B, H) in, gradient reaching h from the next step. dc: (B, H) in: from the
    next step; out: w.r.t. c_prev. dh_out: (B, H) gradient from the layer above.
    a: (B, 4H) activations; c, c_prev: (B, H)."""
    B, H = dh.shape
    for b in range(B):
        ab = a[b]
        dab = da[b]
        for j in range(H):
            i = ab[j]
            f = ab[H + j]
            g = ab[2 * H + j]
            o = ab[3 * H + j]
            tc = tanh(c[b, j])
            dh_total = dh[b, j] + dh_out[b, j]
            dc_total = dc[b, j] + dh_total * o * (1.0 - tc * tc)
            dab[j] = dc_total * g * i * (1.0 - i)
            dab[H + j] = dc_total * c_prev[b, j] * f * (1.0 - f)
            dab[2 * H + j] = dc_total * i * (1.0 - g * g)
            dab[3 * H + j] = dh_total * tc * o * (1.0 - o)
            dc[b, j] = dc_total * f


@kernel
def lstm_backward(dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dacts,
                  dhs, dh_last, dc_last, x, h0, c0, hs, cs, acts, w_ih, w_hh):
    """Backpropagation through the T steps of lstm_forward.

    dx: (T, B, D) out; dh0, dc0: (B, H) out, gradient w.r.t. the initial state
    dw_ih, dw_hh, db_ih, db_hh: accumulated (+=); dacts: (T, B, 4H) workspace
    dhs: (T, B, H) gradient w.r.t. hs from above
    dh_last, dc_last: (B, H) gradient w.r.t. the final state (zero when truncating)
    the rest: the inputs and outputs of lstm_forward
    """
    T = hs.shape[0]
    dh = dh_last.copy()
    dc = dc_last.copy()
    for t in range(T - 1, -1, -1):
        c_prev = c0 if t == 0 else cs[t - 1]
        lstm_cell_backward(dacts[t], dh, dc, dhs[t], acts[t], cs[t], c_prev)
        gemm(False, False, 1.0, dacts[t], w_hh, 0.0, dh)
    dh0[:] = dh
    dc0[:] = dc
    weight_gradients(dx, dw_ih, dw_hh, db_ih, db_hh, dacts, dacts, x, h0, hs, w_ih)
