"""Each recurrent cell kernel against the naive reference, against central
differences, and chunked against whole."""

import numpy as np
import pytest
import reference as ref
from conftest import B, D, H, T

from charrnn.kernels.gru import gru_backward, gru_forward
from charrnn.kernels.lstm import lstm_backward, lstm_forward
from charrnn.kernels.rnn import rnn_backward, rnn_forward
from charrnn.model import GATES

CELLS = ["lstm", "gru", "rnn"]


def make_inputs(rng, cell, dtype=np.float64, steps=T):
    G = GATES[cell]
    x = rng.standard_normal((steps, B, D)).astype(dtype)
    h0 = rng.standard_normal((B, H)).astype(dtype)
    c0 = rng.standard_normal((B, H)).astype(dtype)
    weights = [rng.uniform(-0.6, 0.6, shape).astype(dtype) for shape in ((G * H, D), (G * H, H), (G * H,), (G * H,))]
    return x, h0, c0, weights


def forward(cell, x, h0, c0, weights):
    """Run a cell kernel: (hs, final c or None, cache for backward)."""
    steps = x.shape[0]
    hs = np.zeros((steps, B, H), x.dtype)
    if cell == "lstm":
        cs, acts = np.zeros_like(hs), np.zeros((steps, B, 4 * H), x.dtype)
        lstm_forward(hs, cs, acts, x, h0, c0, *weights)
        return hs, cs[-1], (cs, acts)
    if cell == "gru":
        acts, hn = np.zeros((steps, B, 3 * H), x.dtype), np.zeros_like(hs)
        gru_forward(hs, acts, hn, x, h0, *weights)
        return hs, None, (acts, hn)
    rnn_forward(hs, x, h0, *weights)
    return hs, None, ()


def backward(cell, dhs, dh_last, dc_last, x, h0, c0, weights, hs, cache):
    """Run a cell's backward kernel: gradients w.r.t. x, h0, c0 and the four weights."""
    steps, G = x.shape[0], GATES[cell]
    dx, dh0, dc0 = np.zeros_like(x), np.zeros_like(h0), np.zeros_like(c0)
    dw = [np.zeros_like(w) for w in weights]
    w_ih, w_hh = weights[0], weights[1]
    dgates = np.zeros((steps, B, G * H), x.dtype)
    if cell == "lstm":
        cs, acts = cache
        lstm_backward(dx, dh0, dc0, *dw, dgates, dhs, dh_last, dc_last, x, h0, c0, hs, cs, acts, w_ih, w_hh)
    elif cell == "gru":
        acts, hn = cache
        gru_backward(dx, dh0, *dw, dgates, np.zeros_like(dgates), dhs, dh_last, x, h0, hs, acts, hn, w_ih, w_hh)
    else:
        rnn_backward(dx, dh0, *dw, dgates, dhs, dh_last, x, h0, hs, w_ih, w_hh)
    return {"x": dx, "h0": dh0, "c0": dc0, "w_ih": dw[0], "w_hh": dw[1], "b_ih": dw[2], "b_hh": dw[3]}


def reference_forward(cell, x, h0, c0, weights):
    if cell == "lstm":
        return ref.lstm(x, h0, c0, *weights)
    return (ref.gru if cell == "gru" else ref.rnn)(x, h0, *weights), None


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-6)])
def test_forward_matches_naive_reference(rng, cell, dtype, tol):
    x, h0, c0, weights = make_inputs(rng, cell, dtype)
    hs, c_last, _ = forward(cell, x, h0, c0, weights)
    args64 = [a.astype(np.float64) for a in (x, h0, c0)] + [w.astype(np.float64) for w in weights]
    expected_hs, expected_cs = reference_forward(cell, args64[0], args64[1], args64[2], args64[3:])
    np.testing.assert_allclose(hs, expected_hs, atol=tol, rtol=tol)
    if cell == "lstm":
        np.testing.assert_allclose(c_last, expected_cs[-1], atol=tol, rtol=tol)


@pytest.mark.parametrize("cell", CELLS)
def test_gradients_match_central_differences(rng, cell):
    """Every input, every weight, the initial state, and the gradient arriving at the
    final state: loss = <R, hs> + <Rh, h_T> + <Rc, c_T> for random R."""
    x, h0, c0, weights = make_inputs(rng, cell)
    r_hs = rng.standard_normal((T, B, H))
    r_h, r_c = rng.standard_normal((B, H)), rng.standard_normal((B, H))

    def loss():
        hs, c_last, _ = forward(cell, x, h0, c0, weights)
        total = (r_hs * hs).sum() + (r_h * hs[-1]).sum()
        return total + ((r_c * c_last).sum() if c_last is not None else 0.0)

    hs, _, cache = forward(cell, x, h0, c0, weights)
    grads = backward(cell, r_hs, r_h, r_c, x, h0, c0, weights, hs, cache)
    checked = {"x": x, "h0": h0, "w_ih": weights[0], "w_hh": weights[1], "b_ih": weights[2], "b_hh": weights[3]}
    if cell == "lstm":
        checked["c0"] = c0
    for name, array in checked.items():
        numeric = ref.numeric_grad(loss, array)
        np.testing.assert_allclose(grads[name], numeric, rtol=1e-6, atol=1e-8, err_msg=name)


@pytest.mark.parametrize("cell", CELLS)
def test_chunks_with_carried_state_equal_the_whole_sequence(rng, cell):
    """Forward in two chunks with the state carried equals one pass; backward through
    the chunks in reverse, carrying the state gradient, equals one backward pass."""
    steps = 7
    x, h0, c0, weights = make_inputs(rng, cell, steps=steps)
    dhs = rng.standard_normal((steps, B, H))
    zero = np.zeros((B, H))
    hs, c_last, cache = forward(cell, x, h0, c0, weights)
    whole = backward(cell, dhs, zero, zero, x, h0, c0, weights, hs, cache)

    cut = 3
    hs1, c1, cache1 = forward(cell, x[:cut], h0, c0, weights)
    h1 = hs1[-1].copy()
    c1 = c1.copy() if c1 is not None else c0
    hs2, c2, cache2 = forward(cell, x[cut:], h1, c1, weights)
    np.testing.assert_allclose(np.concatenate([hs1, hs2]), hs, rtol=1e-13, atol=1e-14)
    if cell == "lstm":
        np.testing.assert_allclose(c2, c_last, rtol=1e-13, atol=1e-14)

    second = backward(cell, dhs[cut:], zero, zero, x[cut:], h1, c1, weights, hs2, cache2)
    first = backward(cell, dhs[:cut], second["h0"], second["c0"], x[:cut], h0, c0, weights, hs1, cache1)
    np.testing.assert_allclose(np.concatenate([first["x"], second["x"]]), whole["x"], rtol=1e-12, atol=1e-13)
    for name in ("h0", "c0") if cell == "lstm" else ("h0",):
        np.testing.assert_allclose(first[name], whole[name], rtol=1e-12, atol=1e-13, err_msg=name)
    for name in ("w_ih", "w_hh", "b_ih", "b_hh"):
        np.testing.assert_allclose(first[name] + second[name], whole[name], rtol=1e-12, atol=1e-13, err_msg=name)
