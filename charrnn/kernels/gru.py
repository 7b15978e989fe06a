"""GRU layer, PyTorch's math and gate order (r, z, n):

    r = sigma(W_ir x + b_ir + W_hr h + b_hr)
    z = sigma(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    h' = (1 - z) * n + z * h

One step of the cell, for a range of units; recurrence.py runs the time loop.
"""

from charrnn.kernels import kernel
from charrnn.kernels.activations import sigmoid, tanh


@kernel
def gru_cell_forward(h, a, hn, hg, h_prev, b_hn, u0, u1):
    """Units u0..u1 of one step.  h: (B, H) out; a: (B, 3H) input-side
    pre-activations (b_hr, b_hz already added) in, activations r, z, n out;
    hn: (B, H) out, W_hn h + b_hn; hg: (B, 3H) recurrent product h_prev @ w_hh.T;
    h_prev: (B, H); b_hn: (H,)."""
    B, H = h.shape
    n = u1 - u0
    bn = b_hn[u0:u1]
    for b in range(B):
        ab, hgb = a[b], hg[b]
        r, z, nn = ab[u0:u1], ab[H + u0:H + u1], ab[2 * H + u0:2 * H + u1]
        hr, hz, hnn = hgb[u0:u1], hgb[H + u0:H + u1], hgb[2 * H + u0:2 * H + u1]
        hnb, hp, hb = hn[b, u0:u1], h_prev[b, u0:u1], h[b, u0:u1]
        for j in range(n):
            r[j] = sigmoid(r[j] + hr[j])
        for j in range(n):
            z[j] = sigmoid(z[j] + hz[j])
        for j in range(n):
            hnb[j] = hnn[j] + bn[j]
        for j in range(n):
            nn[j] = tanh(nn[j] + r[j] * hnb[j])
        for j in range(n):
            hb[j] = nn[j] + z[j] * (hp[j] - nn[j])


@kernel
def gru_cell_backward(dxg, dhg, dh, dh_out, a, hn, h_prev, u0, u1):
    """Units u0..u1 of one step back.  dxg, dhg: (B, 3H) out, gradients w.r.t. the
    input-side and recurrent-side pre-activations (they differ in the n block by
    the factor r). dh: (B, H) in, gradient reaching h from the next step; out, the
    part of the gradient w.r.t. h_prev that flows through z * h_prev (the caller
    adds dhg @ w_hh). dh_out: (B, H) from the layer above; a: (B, 3H) activations;
    hn, h_prev: (B, H)."""
    B, H = dh.shape
    n = u1 - u0
    one = a.dtype.type(1.0)
    for b in range(B):
        ab, dxb, dhb_ = a[b], dxg[b], dhg[b]
        r, z, nn = ab[u0:u1], ab[H + u0:H + u1], ab[2 * H + u0:2 * H + u1]
        dxr, dxz, dxn = dxb[u0:u1], dxb[H + u0:H + u1], dxb[2 * H + u0:2 * H + u1]
        dhr, dhz, dhn = dhb_[u0:u1], dhb_[H + u0:H + u1], dhb_[2 * H + u0:2 * H + u1]
        dhb, dho, hnb, hp = dh[b, u0:u1], dh_out[b, u0:u1], hn[b, u0:u1], h_prev[b, u0:u1]
        for j in range(n):
            dhb[j] += dho[j]  # dh now holds the whole gradient reaching h_t
        for j in range(n):
            dxn[j] = dhb[j] * (one - z[j]) * (one - nn[j] * nn[j])
        for j in range(n):
            dxz[j] = dhb[j] * (hp[j] - nn[j]) * z[j] * (one - z[j])
        for j in range(n):
            dxr[j] = dxn[j] * hnb[j] * r[j] * (one - r[j])
        for j in range(n):
            dhr[j] = dxr[j]
        for j in range(n):
            dhz[j] = dxz[j]
        for j in range(n):
            dhn[j] = dxn[j] * r[j]
        for j in range(n):
            dhb[j] = dhb[j] * z[j]
