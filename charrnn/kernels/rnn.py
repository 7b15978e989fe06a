"""Elman RNN layer with tanh, PyTorch's math:  h' = tanh(x @ w_ih.T + b_ih + h @ w_hh.T + b_hh).

hs holds each step's pre-activation until the step overwrites it. One step of the
cell, for a range of units; recurrence.py runs the time loop.
"""

from charrnn.kernels import kernel
from charrnn.kernels.activations import tanh


@kernel
def rnn_cell_forward(h, u0, u1):
    """h: (B, H) pre-activations in, tanh of them out, for units u0..u1."""
    for b in range(h.shape[0]):
        hb = h[b, u0:u1]
        for j in range(u1 - u0):
            hb[j] = tanh(hb[j])


@kernel
def rnn_cell_backward(dpre, dh, dh_out, h, u0, u1):
    """dpre: (B, H) out, gradient w.r.t. the pre-activation; dh: (B, H) from the
    next step; dh_out: (B, H) from above; h: (B, H) this step's output."""
    one = h.dtype.type(1.0)
    for b in range(h.shape[0]):
        d, g, go, hb = dpre[b, u0:u1], dh[b, u0:u1], dh_out[b, u0:u1], h[b, u0:u1]
        for j in range(u1 - u0):
            d[j] = (g[j] + go[j]) * (one - hb[j] * hb[j])
