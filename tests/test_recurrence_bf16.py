"""The time loops with bfloat16 recurrent products (kernels/recurrence_bf16.py), as
the engine runs them for precision bf16: every step against a float64 reference
given the same rounded operands (teacher-forced: each step from the kernel's own
previous state, since one bfloat16 rounding that falls the other way would
otherwise follow the reference through every later step), the backward product
likewise, 1 and 2 threads bit for bit, by units and by blocks, and chunked ==
whole. (Two threads at most: the loops' threads meet at barriers, so each needs a core
of Numba's pool.) The cells are float32's, which test_cells.py checks by central differences;
the whole network's bf16 gradients are checked against float32's in test_amx.py."""

import numpy as np
import pytest
import reference as ref
from test_amx import needs_bf16, rounded

from charrnn import engine
from charrnn.config import GATES, ModelConfig
from charrnn.engine import PackedLayer, Workspace, layer_backward, layer_forward, recurrent_weight_gradients
from charrnn.kernels.amx import BLOCK
from charrnn.kernels.recurrence_bf16 import round_transposed_columns

CELLS = ["lstm", "gru", "rnn"]
B, D = 37, 5  # 37 rows: a whole block of 32 and a last one of 5
# 2 * BLOCK: split by units with 1 and 2 threads; 40: by blocks of columns
HIDDEN = [2 * BLOCK, 40]


@pytest.fixture(autouse=True)
def exact_threads(monkeypatch):
    """Run the loops with the threads a test names, however small the layer."""
    monkeypatch.setattr(engine, "loop_threads", lambda rows, hidden, gates, nthreads: nthreads)


class Loop:
    """One layer's time loop in bf16 on a given input side (T, B, G*H)."""

    def __init__(self, cell, side, h0, c0, w_hh, b_hn, nthreads):
        T, _, GH = side.shape
        H = h0.shape[1]
        self.cell, self.nthreads = cell, nthreads
        w_ih = np.zeros((GH, D), np.float32)
        b_hh = np.zeros(GH, np.float32)
        if cell == "gru":
            b_hh[2 * H:] = b_hn
        self.layer = PackedLayer(cell, w_ih, w_hh, np.zeros(GH, np.float32), b_hh, nthreads, bf16=True)
        self.layer.for_backward(nthreads)
        cfg = ModelConfig(vocab_size=3, cell=cell, layers=1, hidden=H, embed=D)
        self.ws = Workspace(cfg, T, B, np.float32, dropout=False)
        self.buf = self.ws.layers[0]
        self.buf.input_side()[:] = side.reshape(T * B, GH)
        layer_forward(cell, self.buf, self.layer, h0, c0, nthreads)
        self.hs = self.buf.hs.copy()
        self.cs = self.buf.cs_buf.copy()
        self.acts = self.buf.acts.copy()

    def backward(self, dhs, dh, dc):
        """(recurrent pre-activation gradients (T, B, G*H), dh0, dc0)."""
        return self.backward_all(dhs, dh, dc)[:3]

    def backward_all(self, dhs, dh, dc):
        """backward's, and what it leaves for the weight gradients: the gradients
        transposed and rounded (padded(G*H), padded(T*B)) and their sums (G*H,)."""
        dh, dc = dh.copy(), dc.copy()
        _, dhg = layer_backward(self.cell, self.buf, self.ws, self.layer, dhs.copy(), dh, dc, self.nthreads)
        return dhg.copy(), dh, dc, self.ws.gates_t().copy(), self.ws.gate_sums.copy()


def inputs(rng, cell, hidden, steps):
    G = GATES[cell]
    side = rng.standard_normal((steps, B, G * hidden)).astype(np.float32)
    h0 = rng.standard_normal((B, hidden)).astype(np.float32)
    c0 = rng.standard_normal((B, hidden)).astype(np.float32)
    w_hh = rng.uniform(-0.4, 0.4, (G * hidden, hidden)).astype(np.float32)
    b_hn = rng.standard_normal(hidden).astype(np.float32)
    return side, h0, c0, w_hh, b_hn


def reference_step(cell, side, h_prev, c_prev, w_hh, b_hn):
    """One step in float64: the recurrent product from h_prev and w_hh rounded to
    bfloat16, everything else (the GRU's z * h_prev, the LSTM's c) from the float32
    state as it is. Returns (h, c)."""
    f64 = np.float64
    side, h_prev, c_prev = side.astype(f64), h_prev.astype(f64), c_prev.astype(f64)
    gh = rounded(h_prev.astype(np.float32)).astype(f64) @ rounded(w_hh).astype(f64).T
    H = h_prev.shape[1]
    if cell == "lstm":
        a = side + gh
        i, f, g, o = (ref.sigmoid(a[:, :H]), ref.sigmoid(a[:, H:2 * H]), np.tanh(a[:, 2 * H:3 * H]),
                      ref.sigmoid(a[:, 3 * H:]))
        c = f * c_prev + i * g
        return o * np.tanh(c), c
    if cell == "gru":
        r = ref.sigmoid(side[:, :H] + gh[:, :H])
        z = ref.sigmoid(side[:, H:2 * H] + gh[:, H:2 * H])
        n = np.tanh(side[:, 2 * H:] + r * (gh[:, 2 * H:] + b_hn))
        return (1 - z) * n + z * h_prev, None
    return np.tanh(side + gh), None


@needs_bf16
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("cell", CELLS)
def test_each_step_is_the_rounded_operands_step(rng, cell, hidden):
    side, h0, c0, w_hh, b_hn = inputs(rng, cell, hidden, steps=4)
    runs = [Loop(cell, side, h0, c0, w_hh, b_hn, n) for n in (1, 2)]
    loop = runs[0]
    for t in range(4):
        h_prev = h0 if t == 0 else loop.hs[t - 1]
        h, c = reference_step(cell, side[t], h_prev, loop.cs[t], w_hh, b_hn)
        np.testing.assert_allclose(loop.hs[t], h, rtol=0, atol=2e-5, err_msg=f"step {t}")
        if cell == "lstm":
            np.testing.assert_allclose(loop.cs[t + 1], c, rtol=0, atol=2e-5, err_msg=f"step {t}")
    assert not np.array_equal(loop.hs[0], reference_step(cell, side[0], h0, c0, w_hh * 0, b_hn)[0]), "no product"
    for other in runs[1:]:
        np.testing.assert_array_equal(other.hs, loop.hs)
        np.testing.assert_array_equal(other.cs, loop.cs)


@needs_bf16
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("cell", CELLS)
def test_backward_product_is_the_rounded_operands_product(rng, cell, hidden):
    """One step: the gradient reaching h0 is the rounded recurrent gradients times
    rounded w_hh (plus, for the GRU, z times the gradient arriving at h)."""
    side, h0, c0, w_hh, b_hn = inputs(rng, cell, hidden, steps=1)
    dhs = rng.standard_normal((1, B, hidden)).astype(np.float32)
    dh_last = rng.standard_normal((B, hidden)).astype(np.float32)
    dc_last = rng.standard_normal((B, hidden)).astype(np.float32)
    for nthreads in (1, 2):
        loop = Loop(cell, side, h0, c0, w_hh, b_hn, nthreads)
        dhg, dh0, _ = loop.backward(dhs, dh_last, dc_last)
        expected = rounded(dhg[0]).astype(np.float64) @ rounded(w_hh).astype(np.float64)
        if cell == "gru":
            z = loop.acts[0][:, hidden:2 * hidden].astype(np.float64)
            expected += z * (dhs[0] + dh_last)
        scale = np.abs(expected).max()
        np.testing.assert_allclose(dh0, expected, rtol=0, atol=1e-5 * scale)


@needs_bf16
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("cell", CELLS)
def test_backward_is_the_same_with_any_thread_count(rng, cell, hidden):
    side, h0, c0, w_hh, b_hn = inputs(rng, cell, hidden, steps=5)
    dhs = rng.standard_normal((5, B, hidden)).astype(np.float32)
    zero = np.zeros((B, hidden), np.float32)
    one, two = (Loop(cell, side, h0, c0, w_hh, b_hn, n).backward_all(dhs, zero, zero) for n in (1, 2))
    for a, b in zip(one, two, strict=True):
        np.testing.assert_array_equal(a, b)


@needs_bf16
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("cell", CELLS)
def test_backward_leaves_the_gradients_transposed_and_rounded_and_their_sums(rng, cell, hidden):
    """For w_hh's gradient (engine.recurrent_weight_gradients): gates_t[c, t*B + b] is
    dhg[t, b, c] rounded, zero past them; the sums are float32's, in the order of t
    from the last step down, then b, the same whatever the split (37 rows: three
    16 x 16 blocks transposed in registers, the last overlapping the second). And
    the weight gradients refuse to read them for another layer."""
    steps = 3
    side, h0, c0, w_hh, b_hn = inputs(rng, cell, hidden, steps)
    dhs = rng.standard_normal((steps, B, hidden)).astype(np.float32)
    zero = np.zeros((B, hidden), np.float32)
    for nthreads in (1, 2):
        loop = Loop(cell, side, h0, c0, w_hh, b_hn, nthreads)
        loop.ws.gate_sums[...] = 99.0  # the loop starts the sums from zero
        dhg, _, _, gates_t, sums = loop.backward_all(dhs, zero, zero)
        GH = dhg.shape[2]
        expected = rounded(dhg.reshape(steps * B, GH).T)
        np.testing.assert_array_equal(gates_t[:GH, :steps * B], expected.view(np.uint32) >> 16)
        assert not gates_t[GH:].any() and not gates_t[:, steps * B:].any()
        in_order = np.zeros(GH, np.float32)
        for t in range(steps - 1, -1, -1):
            for b in range(B):
                in_order += dhg[t, b]
        np.testing.assert_array_equal(sums, in_order)
    other = Workspace(ModelConfig(vocab_size=3, cell=cell, layers=1, hidden=hidden, embed=D), steps, B, np.float32,
                      dropout=False).layers[0]
    dw = np.zeros((GH, hidden), np.float32)
    with pytest.raises(RuntimeError, match="layer_backward just before"):
        recurrent_weight_gradients(loop.ws, other, dhg, dhg, dw, sums.copy(), sums.copy(), nthreads, bf16=True)


@needs_bf16
@pytest.mark.parametrize("rows", [5, 16, 37])
@pytest.mark.parametrize("c0,c1", [(0, 7), (3, 40), (16, 48)])
def test_rounding_a_steps_columns_transposed_writes_exactly_its_own_part(rng, rows, c0, c1):
    """round_transposed_columns against a plain transpose: whole blocks, last blocks
    that overlap the one before, and value by value below 16 rows or columns; nothing
    outside rows c0..c1 and the step's columns k0..k0+rows is written."""
    src = rng.standard_normal((rows, 50)).astype(np.float32)
    k0 = 11
    dst = np.full((64, k0 + rows + 9), 7, np.uint16)
    sums = np.ones(50, np.float32)
    round_transposed_columns(dst, k0, sums, src, c0, c1)
    expected = np.full_like(dst, 7)
    expected[c0:c1, k0:k0 + rows] = rounded(src[:, c0:c1].T).view(np.uint32) >> 16
    np.testing.assert_array_equal(dst, expected)
    in_order = np.ones(50, np.float32)
    for r in range(rows):
        in_order[c0:c1] += src[r, c0:c1]
    np.testing.assert_array_equal(sums, in_order)


@needs_bf16
@pytest.mark.parametrize("cell", CELLS)
def test_chunked_equals_whole(rng, cell):
    """Two chunks, the state (forward) and its gradient (backward) carried between
    them, give what one loop over both gives, bit for bit."""
    hidden = 2 * BLOCK
    side, h0, c0, w_hh, b_hn = inputs(rng, cell, hidden, steps=6)
    dhs = rng.standard_normal((6, B, hidden)).astype(np.float32)
    zero = np.zeros((B, hidden), np.float32)
    whole = Loop(cell, side, h0, c0, w_hh, b_hn, 2)
    first = Loop(cell, side[:3], h0, c0, w_hh, b_hn, 2)
    second = Loop(cell, side[3:], first.hs[-1], first.cs[-1], w_hh, b_hn, 2)
    np.testing.assert_array_equal(np.concatenate([first.hs, second.hs]), whole.hs)
    dhg_whole, dh0_whole, dc0_whole = whole.backward(dhs, zero, zero)
    dhg_2, dh_mid, dc_mid = second.backward(dhs[3:], zero, zero)
    dhg_1, dh0, dc0 = first.backward(dhs[:3], dh_mid, dc_mid)
    np.testing.assert_array_equal(np.concatenate([dhg_1, dhg_2]), dhg_whole)
    np.testing.assert_array_equal(dh0, dh0_whole)
    np.testing.assert_array_equal(dc0, dc0_whole)
