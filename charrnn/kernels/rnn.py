"""Elman RNN layer with tanh, PyTorch's math:  h' = tanh(x @ w_ih.T + b_ih + h @ w_hh.T + b_hh)."""

from charrnn.kernels import kernel
from charrnn.kernels.activations import tanh
from charrnn.kernels.blas import gemm
from charrnn.kernels.recurrent import input_projection, weight_gradients


@kernel
def rnn_forward(hs, x, h0, w_ih, w_hh, b_ih, b_hh):
    """One RNN layer over T steps.  hs: (T, B, H) out; x: (T, B, D); h0: (B, H);
    w_ih: (H, D); w_hh: (H, H); b_ih, b_hh: (H,)."""
    T, B, H = hs.shape
    # hs holds the pre-activations until each step's tanh overwrites them.
    input_projection(hs, x, w_ih, b_ih + b_hh)
    for t in range(T):
        h_prev = h0 if t == 0 else hs[t - 1]
        gemm(False, True, 1.0, h_prev, w_hh, 1.0, hs[t])
        for b in range(B):
            hb = hs[t, b]
            for j in range(H):
                hb[j] = tanh(hb[j])


@kernel
def rnn_backward(dx, dh0, dw_ih, dw_hh, db_ih, db_hh, dpre, dhs, dh_last, x, h0, hs, w_ih, w_hh):
    """Backpropagation through the T steps of rnn_forward.

    dx: (T, B, D) out; dh0: (B, H) out; dw_ih, dw_hh, db_ih, db_hh: accumulated (+=)
    dpre: (T, B, H) workspace, gradient w.r.t. the pre-activations
    dhs: (T, B, H) gradient w.r.t. hs from above; dh_last: (B, H) w.r.t. the final state
    """
    T, B, H = hs.shape
    dh = dh_last.copy()
    for t in range(T - 1, -1, -1):
        for b in range(B):
            hb = hs[t, b]
            for j in range(H):
                dpre[t, b, j] = (dh[b, j] + dhs[t, b, j]) * (1.0 - hb[j] * hb[j])
        gemm(False, False, 1.0, dpre[t], w_hh, 0.0, dh)
    dh0[:] = dh
    weight_gradients(dx, dw_ih, dw_hh, db_ih, db_hh, dpre, dpre, x, h0, hs, w_ih)
