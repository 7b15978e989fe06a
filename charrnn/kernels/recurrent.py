"""What the three cells share: the input projection of all steps at once, and the
weight gradients of all steps at once.

Only the recurrent product h_{t-1} @ w_hh.T has to stay inside the time loop; the
input side and every weight gradient are single large matrix products over T*B rows.
"""

from charrnn.kernels import kernel
from charrnn.kernels.blas import gemm
from charrnn.kernels.linear import add_column_sums, linear_backward, linear_forward


@kernel
def input_projection(out, x, w_ih, bias):
    """out = x @ w_ih.T + bias for every step.  out: (T, B, G*H); x: (T, B, D); bias: (G*H,)."""
    T, B, GH = out.shape
    linear_forward(out.reshape(T * B, GH), x.reshape(T * B, x.shape[2]), w_ih, bias)


@kernel
def weight_gradients(dx, dw_ih, dw_hh, db_ih, db_hh, dxg, dhg, x, h0, hs, w_ih):
    """Gradients of both weight matrices and biases from the per-step gate gradients.

    dx: (T, B, D) out, gradient w.r.t. the layer input (overwritten)
    dw_ih: (G*H, D), dw_hh: (G*H, H), db_ih, db_hh: (G*H,) accumulated (+=)
    dxg: (T, B, G*H) gradient w.r.t. the input-side pre-activations x @ w_ih.T + b_ih
    dhg: (T, B, G*H) gradient w.r.t. the recurrent-side h_{t-1} @ w_hh.T + b_hh
         (the same array as dxg for LSTM and RNN; GRU's reset gate makes them differ)
    x: (T, B, D); h0: (B, H); hs: (T, B, H), hidden state after each step
    """
    T, B, GH = dxg.shape
    H = hs.shape[2]
    TB = T * B
    linear_backward(dx.reshape(TB, x.shape[2]), dw_ih, db_ih, dxg.reshape(TB, GH),
                    x.reshape(TB, x.shape[2]), w_ih)
    # The state entering step t is h0 for t = 0 and hs[t-1] after that.
    gemm(True, False, 1.0, dhg[0], h0, 1.0, dw_hh)
    if T > 1:
        gemm(True, False, 1.0, dhg[1:].reshape((T - 1) * B, GH), hs[:T - 1].reshape((T - 1) * B, H),
             1.0, dw_hh)
    add_column_sums(db_hh, dhg.reshape(TB, GH))
