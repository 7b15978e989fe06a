"""Each cell's time loop (forward and backward kernels, as the engine runs them)
against the naive reference, against central differences, and chunked against
whole; with 1 and 2 threads, which must agree bit for bit."""

import numpy as np
import pytest
import reference as ref
from conftest import B, D, H, T, V

from charrnn.engine import LayerBuffers, PackedLayer, Workspace, layer_backward, layer_forward, recurrent_weight_gradients
from charrnn.config import GATES, ModelConfig
from charrnn.kernels.simd import NR

CELLS = ["lstm", "gru", "rnn"]


def make_inputs(rng, cell, dtype=np.float64, steps=T, hidden=H, scale=0.6):
    G = GATES[cell]
    x = rng.standard_normal((steps, B, D)).astype(dtype)
    h0 = rng.standard_normal((B, hidden)).astype(dtype)
    c0 = rng.standard_normal((B, hidden)).astype(dtype)
    shapes = ((G * hidden, D), (G * hidden, hidden), (G * hidden,), (G * hidden,))
    weights = [rng.uniform(-scale, scale, shape).astype(dtype) for shape in shapes]
    return x, h0, c0, weights


class Layer:
    """One layer run through the engine with its input side x @ w_ih.T + bias given."""

    def __init__(self, cell, x, h0, c0, weights, nthreads):
        self.cell, self.x, self.h0, self.c0, self.weights, self.nthreads = cell, x, h0, c0, weights, nthreads
        steps = x.shape[0]
        self.packed = PackedLayer(cell, *weights, nthreads).for_backward(nthreads)
        cfg = ModelConfig(vocab_size=V, cell=cell, layers=1, hidden=h0.shape[1], embed=D)
        self.ws = Workspace(cfg, steps, B, x.dtype, dropout=False)
        self.buf = self.ws.layers[0]
        self.buf.input_side()[:] = x.reshape(steps * B, D) @ weights[0].T + self.packed.bias
        layer_forward(cell, self.buf, self.packed, h0, c0, nthreads)

    @property
    def hs(self):
        return self.buf.hs

    @property
    def c_last(self):
        return self.buf.cs_buf[-1] if self.cell == "lstm" else None

    def backward(self, dhs, dh_last, dc_last):
        """Gradients w.r.t. x, h0, c0 and the four weights."""
        steps = self.x.shape[0]
        dh, dc = dh_last.copy(), dc_last.copy()
        dxg, dhg = layer_backward(self.cell, self.buf, self.ws, self.packed, dhs.copy(), dh, dc, self.nthreads)
        dw = [np.zeros_like(w) for w in self.weights]
        recurrent_weight_gradients(self.ws, self.buf, dxg, dhg, dw[1], dw[2], dw[3], self.nthreads)
        dxg2 = dxg.reshape(steps * B, -1)
        dw[0] += dxg2.T @ self.x.reshape(steps * B, D)
        dx = (dxg2 @ self.weights[0]).reshape(self.x.shape)
        return {"x": dx, "h0": dh, "c0": dc, "w_ih": dw[0], "w_hh": dw[1], "b_ih": dw[2], "b_hh": dw[3]}


def reference_forward(cell, x, h0, c0, weights):
    if cell == "lstm":
        return ref.lstm(x, h0, c0, *weights)
    return (ref.gru if cell == "gru" else ref.rnn)(x, h0, *weights), None


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-6)])
def test_forward_matches_naive_reference_with_any_thread_count(rng, cell, dtype, tol):
    x, h0, c0, weights = make_inputs(rng, cell, dtype)
    runs = [Layer(cell, x, h0, c0, weights, nthreads) for nthreads in (1, 2)]
    args64 = [a.astype(np.float64) for a in (x, h0, c0)] + [w.astype(np.float64) for w in weights]
    expected_hs, expected_cs = reference_forward(cell, *args64[:3], args64[3:])
    np.testing.assert_allclose(runs[0].hs, expected_hs, atol=tol, rtol=tol)
    np.testing.assert_array_equal(runs[0].hs, runs[1].hs)
    if cell == "lstm":
        np.testing.assert_allclose(runs[0].c_last, expected_cs[-1], atol=tol, rtol=tol)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("nthreads", [1, 2])
def test_gradients_match_central_differences(rng, cell, nthreads):
    """Every input, every weight, the initial state, and the gradient arriving at the
    final state: loss = <R, hs> + <Rh, h_T> + <Rc, c_T> for random R."""
    x, h0, c0, weights = make_inputs(rng, cell)
    r_hs = rng.standard_normal((T, B, H))
    r_h, r_c = rng.standard_normal((B, H)), rng.standard_normal((B, H))

    def loss():
        hs, c_last = reference_forward(cell, x, h0, c0, weights)
        total = (r_hs * hs).sum() + (r_h * hs[-1]).sum()
        return total + ((r_c * c_last[-1]).sum() if c_last is not None else 0.0)

    grads = Layer(cell, x, h0, c0, weights, nthreads).backward(r_hs, r_h, r_c)
    checked = {"x": x, "h0": h0, "w_ih": weights[0], "w_hh": weights[1], "b_ih": weights[2], "b_hh": weights[3]}
    if cell == "lstm":
        checked["c0"] = c0
    for name, array in checked.items():
        numeric = ref.numeric_grad(loss, array)
        np.testing.assert_allclose(grads[name], numeric, rtol=1e-6, atol=1e-8, err_msg=name)


# hidden = 2 * NR: the threads split the recurrent products by units, like the cell,
# with one barrier per step (recurrence.unit_panels); hidden = H: by panels, two.
@pytest.mark.parametrize("hidden", [H, 2 * NR])
@pytest.mark.parametrize("cell", CELLS)
def test_backward_is_the_same_with_one_or_two_threads(rng, cell, hidden):
    x, h0, c0, weights = make_inputs(rng, cell, np.float32, steps=6, hidden=hidden)
    dhs = rng.standard_normal((6, B, hidden)).astype(np.float32)
    zero = np.zeros((B, hidden), np.float32)
    one, two = (Layer(cell, x, h0, c0, weights, n).backward(dhs, zero, zero) for n in (1, 2))
    for name in one:
        np.testing.assert_array_equal(one[name], two[name], err_msg=name)


@pytest.mark.parametrize("cell", CELLS)
def test_threads_splitting_by_units_match_the_reference_and_central_differences(rng, cell):
    """hidden = 2 * NR, 2 threads, one barrier per step: the forward pass against the
    naive reference, and the gradient along random directions against central
    differences of the loss (a full check would take a loss per weight)."""
    from charrnn.kernels.recurrence import unit_panels

    hidden = 2 * NR
    assert unit_panels(hidden, 2) and not unit_panels(H, 2)
    x, h0, c0, weights = make_inputs(rng, cell, hidden=hidden, scale=0.3)
    r_hs = rng.standard_normal((T, B, hidden))
    layer = Layer(cell, x, h0, c0, weights, 2)
    expected_hs, _ = reference_forward(cell, x, h0, c0, weights)
    np.testing.assert_allclose(layer.hs, expected_hs, rtol=1e-12, atol=1e-12)
    zero = np.zeros((B, hidden))
    grads = layer.backward(r_hs, zero, zero)
    inputs = {"x": x, "h0": h0, "w_ih": weights[0], "w_hh": weights[1], "b_ih": weights[2], "b_hh": weights[3]}
    if cell == "lstm":
        inputs["c0"] = c0
    for name, array in inputs.items():
        direction = rng.standard_normal(array.shape)
        eps = 1e-6
        losses = []
        for sign in (1, -1):
            array += sign * eps * direction
            losses.append((r_hs * reference_forward(cell, x, h0, c0, weights)[0]).sum())
            array -= sign * eps * direction
        numeric = (losses[0] - losses[1]) / (2 * eps)
        assert (grads[name] * direction).sum() == pytest.approx(numeric, rel=1e-6, abs=1e-8), name


@pytest.mark.parametrize("cell", CELLS)
def test_chunks_with_carried_state_equal_the_whole_sequence(rng, cell):
    """Forward in two chunks with the state carried equals one pass; backward through
    the chunks in reverse, carrying the state gradient, equals one backward pass."""
    steps = 7
    x, h0, c0, weights = make_inputs(rng, cell, steps=steps)
    dhs = rng.standard_normal((steps, B, H))
    zero = np.zeros((B, H))
    whole_layer = Layer(cell, x, h0, c0, weights, 2)
    whole = whole_layer.backward(dhs, zero, zero)

    cut = 3
    first_layer = Layer(cell, x[:cut], h0, c0, weights, 2)
    h1 = first_layer.hs[-1].copy()
    c1 = first_layer.c_last.copy() if cell == "lstm" else c0
    second_layer = Layer(cell, x[cut:], h1, c1, weights, 2)
    np.testing.assert_allclose(np.concatenate([first_layer.hs, second_layer.hs]), whole_layer.hs, rtol=1e-13, atol=1e-14)
    if cell == "lstm":
        np.testing.assert_allclose(second_layer.c_last, whole_layer.c_last, rtol=1e-13, atol=1e-14)

    second = second_layer.backward(dhs[cut:], zero, zero)
    first = first_layer.backward(dhs[:cut], second["h0"], second["c0"])
    np.testing.assert_allclose(np.concatenate([first["x"], second["x"]]), whole["x"], rtol=1e-12, atol=1e-13)
    for name in ("h0", "c0") if cell == "lstm" else ("h0",):
        np.testing.assert_allclose(first[name], whole[name], rtol=1e-12, atol=1e-13, err_msg=name)
    for name in ("w_ih", "w_hh", "b_ih", "b_hh"):
        np.testing.assert_allclose(first[name] + second[name], whole[name], rtol=1e-12, atol=1e-13, err_msg=name)


def test_tiny_time_steps_run_on_one_thread_and_larger_ones_on_all(monkeypatch):
    import conftest

    import charrnn.engine as engine

    monkeypatch.setattr(engine, "SMALL_STEP", conftest.ENGINE_SMALL_STEP)  # the engine's own limit
    by_units = engine.unit_panels  # one barrier a step, else two
    assert engine.loop_threads(1, 64, 4, 2) == 1  # one stream of LSTM 1x64: 16k multiply-adds a step
    # LSTM 1x128: 65k a step; split by panels, 33k a barrier
    assert engine.loop_threads(1, 128, 4, 2) == (2 if by_units(128, 2) else 1)
    assert engine.loop_threads(1, 256, 4, 2) == 2  # LSTM 2x256: 262k
    assert engine.loop_threads(50, 128, 4, 2) == 2  # a training batch
    # many cores: each thread keeps enough work
    assert engine.loop_threads(1, 256, 4, 16) == (8 if by_units(256, 16) else 4)
    assert engine.loop_threads(50, 256, 4, 16) == 16
