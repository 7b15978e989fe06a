"""The whole network: layout, loss against the naive reference, gradients of every
parameter and of the initial state, chunked == whole, and overfitting."""

import numpy as np
import pytest
import reference as ref
from conftest import B, D, H, T, V

from charrnn.errors import CharrnnError
from charrnn.config import ModelConfig
from charrnn.kernels.gemm import NARROW
from charrnn.kernels.simd import MR, NR, ROW_SPAN
from charrnn.model import Parameters, RecurrentState, init_params, parameter_shapes
from charrnn.network import Network

CELLS = ["lstm", "gru", "rnn"]


def make_network(cell, rng, dropout=0.0, layers=2, dtype=np.float64, hidden=H, weight_drop=0.0, locked=False):
    cfg = ModelConfig(vocab_size=V, cell=cell, layers=layers, hidden=hidden, embed=D, dropout=dropout,
                      weight_drop=weight_drop, locked_dropout=locked)
    params = Parameters(cfg, dtype)
    init_params(params, rng)
    return cfg, params, Network(cfg, params)


def random_state(cfg, rng, batch=B, dtype=np.float64):
    state = RecurrentState.zeros(cfg, batch, dtype)
    state.h[:] = rng.standard_normal(state.h.shape)
    if state.c is not None:
        state.c[:] = rng.standard_normal(state.c.shape)
    return state


def test_parameter_names_and_shapes_are_pytorchs():
    cfg = ModelConfig(vocab_size=65, cell="gru", layers=2, hidden=32, embed=8)
    assert parameter_shapes(cfg) == [
        ("embedding.weight", (65, 8)),
        ("rnn.weight_ih_l0", (96, 8)), ("rnn.weight_hh_l0", (96, 32)), ("rnn.bias_ih_l0", (96,)), ("rnn.bias_hh_l0", (96,)),
        ("rnn.weight_ih_l1", (96, 32)), ("rnn.weight_hh_l1", (96, 32)), ("rnn.bias_ih_l1", (96,)), ("rnn.bias_hh_l1", (96,)),
        ("decoder.weight", (65, 32)), ("decoder.bias", (65,)),
    ]


def test_views_share_the_flat_buffer():
    cfg = ModelConfig(vocab_size=V, hidden=H, embed=D)
    params = Parameters(cfg)
    with params.write() as w:
        w["decoder.bias"][:] = 7
    assert params.flat[-V:].tolist() == [7] * V
    assert params.flat.size == sum(np.prod(s) for _, s in params.shapes)


@pytest.mark.parametrize("bad", [dict(cell="lstmx"), dict(layers=0), dict(hidden=0), dict(embed=-1),
                                 dict(dropout=1.0), dict(dropout=-0.1), dict(weight_drop=1.0),
                                 dict(weight_drop=-0.1)])
def test_config_refuses_bad_values(bad):
    with pytest.raises(CharrnnError):
        ModelConfig(vocab_size=V, **bad)


def test_forget_bias_is_added_to_both_forget_blocks(rng):
    cfg = ModelConfig(vocab_size=V, hidden=H, embed=D, layers=1)
    plain, shifted = Parameters(cfg, np.float64), Parameters(cfg, np.float64)
    init_params(plain, np.random.default_rng(0))
    init_params(shifted, np.random.default_rng(0), forget_bias=1.0)
    diff = (shifted["rnn.bias_ih_l0"] - plain["rnn.bias_ih_l0"]) + (shifted["rnn.bias_hh_l0"] - plain["rnn.bias_hh_l0"])
    np.testing.assert_allclose(diff, np.r_[np.zeros(H), np.ones(H), np.zeros(2 * H)])


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dropout, weight_drop, locked", [(0.0, 0.0, False), (0.4, 0.0, False), (0.0, 0.3, False),
                                                   (0.4, 0.3, False), (0.4, 0.0, True)])
def test_loss_matches_naive_reference(rng, cell, dropout, weight_drop, locked):
    """With weight drop, the reference runs on each w_hh times the pass's mask; the
    reference takes the dropout masks the pass drew, locked or not."""
    cfg, params, net = make_network(cell, rng, dropout, weight_drop=weight_drop, locked=locked)
    ids, targets = rng.integers(0, V, (T, B)), rng.integers(0, V, (T, B))
    state = random_state(cfg, rng)
    logits, _ = net.forward(ids, state, dropout_key=99)
    from charrnn.kernels.loss import softmax_xent

    total = softmax_xent(logits, targets.reshape(-1), 2)
    ws, _, _, packed = net._last
    masks = None
    if dropout:
        masks = [buf.mask.copy() for buf in ws.layers]
        kept = np.concatenate([m.ravel() for m in masks])
        assert set(np.unique(kept)) <= {0.0, 1.0 / (1.0 - dropout)}
    views = dict(params.views)
    if weight_drop:
        for layer, mask in enumerate(packed.hh_masks):
            assert set(np.unique(mask)) == {0.0, 1.0 / (1.0 - weight_drop)}
            views[f"rnn.weight_hh_l{layer}"] = views[f"rnn.weight_hh_l{layer}"] * mask
    else:
        assert packed.hh_masks is None
    expected = ref.network_loss(views, cfg, ids, targets, state.h, state.c, masks)
    assert total == pytest.approx(expected, rel=1e-12)


def test_weight_drop_masks_come_from_the_key_and_evaluation_uses_every_weight(rng):
    """The same key draws the same masks, another key others; each layer's mask is its
    own, with about a fraction p of zeros; a pass without a key (evaluation) equals the
    same weights' pass with no weight drop at all."""
    p = 0.3
    cfg, params, net = make_network("lstm", rng, weight_drop=p, hidden=32)
    ids, state = rng.integers(0, V, (T, B)), random_state(cfg, rng)

    def masks(key):
        net.forward(ids, state, dropout_key=key)
        return [m.copy() for m in net._last[3].hh_masks]

    first, again, other = masks(5), masks(5), masks(6)
    for a, b, c in zip(first, again, other):
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)
        assert abs((a == 0).mean() - p) < 0.05
    assert not np.array_equal(first[0], first[1])
    plain = Network(cfg.replace(weight_drop=0.0), params)
    np.testing.assert_array_equal(net.forward(ids, state)[0], plain.forward(ids, state)[0])
    assert not np.allclose(net.forward(ids, state, dropout_key=5)[0], plain.forward(ids, state)[0])


def test_locked_dropout_keeps_one_mask_across_time(rng):
    """Locked: each layer's mask is the same at every time step, differs between streams
    and layers, drops about p of the units, and comes from the key; per character
    (the default), time steps differ."""
    p = 0.3
    cfg, params, net = make_network("lstm", rng, dropout=p, hidden=32, locked=True)
    ids, state = rng.integers(0, V, (T, 16)), random_state(cfg, rng, batch=16)

    def masks(net, key):
        net.forward(ids, state, dropout_key=key)
        return [buf.mask.copy() for buf in net._last[0].layers]

    first, again = masks(net, 5), masks(net, 5)
    for mask, same in zip(first, again):
        np.testing.assert_array_equal(mask, same)
        assert (mask == mask[:1]).all()
        assert not np.array_equal(mask[0, 0], mask[0, 1])
        assert abs((mask[0] == 0).mean() - p) < 0.1
    assert not np.array_equal(first[0], first[1])
    assert not np.array_equal(first[0], masks(net, 6)[0])
    per_character = masks(Network(cfg.replace(locked_dropout=False), params), 5)[0]
    assert not (per_character == per_character[:1]).all()


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("weight_drop, locked", [(0.0, False), (0.3, False), (0.0, True)])
def test_gradients_of_every_parameter_and_the_initial_state(rng, cell, weight_drop, locked):
    """With dropout (per character or locked), and with weight drop or without: a fixed
    key draws the same masks for every evaluation of the loss, so the loss is a smooth
    function of the weights."""
    cfg, params, net = make_network(cell, rng, dropout=0.3, weight_drop=weight_drop, locked=locked)
    ids, targets = rng.integers(0, V, (T, B)), rng.integers(0, V, (T, B))
    state = random_state(cfg, rng)
    key = 12345

    def loss():
        return net.loss_and_grad(ids, targets, state, params.zeros_like(), key)[0]

    grads = params.zeros_like()
    net.loss_and_grad(ids, targets, state, grads, key)
    logits, _ = net.forward(ids, state, key)
    from charrnn.kernels.loss import softmax_xent_backward

    softmax_xent_backward(logits, logits, targets.reshape(-1), 1.0 / targets.size, 2)
    dstate0 = net.backward(logits, params.zeros_like())
    with params.write() as writable:  # the values change in place: the network repacks on every call
        for name, view in writable.views.items():
            numeric = ref.numeric_grad(loss, view)
            np.testing.assert_allclose(grads[name], numeric, rtol=1e-6, atol=1e-9, err_msg=name)
    np.testing.assert_allclose(dstate0.h, ref.numeric_grad(loss, state.h), rtol=1e-6, atol=1e-9)
    if cell == "lstm":
        np.testing.assert_allclose(dstate0.c, ref.numeric_grad(loss, state.c), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("cell", CELLS)
def test_training_in_chunks_with_carried_state_equals_one_long_sequence(rng, cell):
    """Loss and full-BPTT gradient of an 8-step sequence equal those of its two
    4-step chunks with the state carried forward and its gradient carried back."""
    cfg, params, net = make_network(cell, rng)
    steps = 8
    ids, targets = rng.integers(0, V, (steps, B)), rng.integers(0, V, (steps, B))
    state = random_state(cfg, rng)
    from charrnn.kernels.loss import softmax_xent_backward

    def loss_and_dlogits(net, x, y, s):
        logits, new = net.forward(x, s)
        total = softmax_xent_backward(logits, logits, y.reshape(-1), 1.0, 2)
        return total, new

    whole_grads = params.zeros_like()
    whole_loss, whole_state = loss_and_dlogits(net, ids, targets, state)
    net.backward(net._last[0].logits, whole_grads)

    # Two networks so that each keeps its own forward cache for the backward pass.
    first_net, second_net = Network(cfg, params), Network(cfg, params)
    loss1, mid = loss_and_dlogits(first_net, ids[:4], targets[:4], state)
    loss2, end = loss_and_dlogits(second_net, ids[4:], targets[4:], mid)
    assert loss1 + loss2 == pytest.approx(whole_loss, rel=1e-13)
    for a, b in zip(end.arrays(), whole_state.arrays()):
        np.testing.assert_allclose(a, b, rtol=1e-13)
    chunk_grads = params.zeros_like()
    dmid = second_net.backward(second_net._last[0].logits, chunk_grads)
    first_net.backward(first_net._last[0].logits, chunk_grads, dstate_last=dmid)
    np.testing.assert_allclose(chunk_grads.flat, whole_grads.flat, rtol=1e-11, atol=1e-13)


def test_a_network_keeps_the_arrays_of_its_last_few_shapes_only(rng):
    """A server reads prompts and scores texts of every length: a workspace kept for
    each would only add memory. Training's few shapes are all kept. A shape met again
    computes as it did."""
    from charrnn.network import MAX_WORKSPACES

    cfg, _, net = make_network("lstm", rng, layers=1)
    ids = rng.integers(V, size=(40, 1))
    zero = RecurrentState.zeros(cfg, 1, np.float64)
    first = net.forward(ids[:7], zero)[0].copy()
    for t in (8, 16, 24):  # line mode's training: one shape per length step
        net.forward(ids[:t], zero, dropout_key=t)
    for t in range(1, 30):
        net.forward(ids[:t], zero)
        assert len(net._workspaces) <= MAX_WORKSPACES
    assert len(net._workspaces) == MAX_WORKSPACES and (7, 1, False) not in net._workspaces
    assert set(net._training_workspaces) == {(8, 1, False), (16, 1, False), (24, 1, False)}
    assert np.array_equal(net.forward(ids[:7], zero)[0], first)


def test_a_second_backward_without_a_forward_is_refused(rng):
    """The LSTM's backward overwrites the activations its forward saved, so a second
    backward would compute wrong gradients: it raises instead."""
    cfg, params, net = make_network("lstm", rng)
    ids = rng.integers(0, V, (T, B))
    logits, _ = net.forward(ids, random_state(cfg, rng))
    net.backward(logits, params.zeros_like())
    with pytest.raises(RuntimeError, match="forward pass of its own"):
        net.backward(logits, params.zeros_like())


@pytest.mark.parametrize("cell", CELLS)
def test_a_model_overfits_a_short_string(cell):
    """Adam on one repeated 40-character string drives the loss near zero."""
    from charrnn.kernels.optim import adam_update

    text = "the quick brown fox jumps over the lazy dog"
    chars = sorted(set(text))
    ids = np.array([chars.index(c) for c in text])
    cfg = ModelConfig(vocab_size=len(chars), cell=cell, layers=1, hidden=32, embed=8)
    params = Parameters(cfg, np.float32)
    init_params(params, np.random.default_rng(0))
    net = Network(cfg, params)
    m, v = params.zeros_like(), params.zeros_like()
    x, y = ids[:-1].reshape(-1, 1), ids[1:].reshape(-1, 1)
    for step in range(1, 301):
        grads = params.zeros_like()
        loss, _ = net.loss_and_grad(x, y, RecurrentState.zeros(cfg, 1), grads)
        with params.write() as w:
            adam_update(w.flat, grads.flat, m.flat, v.flat, 1e-2, 0.9, 0.999, 1e-8, 0.0, step, 2)
    assert loss < 0.05, loss


# The panel width NR depends on the ISA level. hidden = 5: G*H is one partial panel;
# (NR + NARROW[0]) // 4: for the LSTM a whole panel and a last one as wide as a narrow
# tile, which a group of MR rows takes in that tile and a row alone in scratch, which
# must not change its sums; ROW_SPAN panels and more: a row alone also takes a tile
# ROW_SPAN panels wide; 2 * NR: gate blocks of whole panels, a row alone in wide
# tiles only.
@pytest.mark.parametrize("hidden", [H, (NR + NARROW[0]) // 4, (ROW_SPAN * NR + NR // 2) // 3 + 1, 2 * NR])
@pytest.mark.parametrize("cell", CELLS)
def test_step_matches_forward_and_each_row_is_independent_of_the_batch(rng, cell, hidden):
    cfg, params, net = make_network(cell, rng, layers=2, dtype=np.float32, hidden=hidden)
    batch = MR  # whole tiles of MR rows, as a batch of streams takes
    state = random_state(cfg, rng, batch, np.float32)
    ids = rng.integers(0, V, batch)
    logits, new = net.step(ids, state)
    expected, expected_state = net.forward(ids.reshape(1, batch), state)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)
    for a, b in zip(new.arrays(), expected_state.arrays()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for b in range(batch):  # alone, row b gives bitwise what it gave in the batch
        alone, alone_state = net.step(ids[b:b + 1], state.rows([b]))
        np.testing.assert_array_equal(alone[0], logits[b])
        for a, s in zip(alone_state.arrays(), new.arrays()):
            np.testing.assert_array_equal(a[:, 0], s[:, b])


@pytest.mark.parametrize("hidden", [H, 2 * NR])  # partial panels, or whole ones only
@pytest.mark.parametrize("cell", CELLS)
def test_generate_equals_stepping_and_sampling_and_each_row_alone(rng, cell, hidden):
    from charrnn.kernels.sampling import sample_rows

    cfg, params, net = make_network(cell, rng, dtype=np.float32, hidden=hidden)
    state = random_state(cfg, rng, 3, np.float32)
    ids, uniforms = rng.integers(0, V, 3), rng.random((6, 3))
    out, end = net.generate(ids, state, uniforms, temperature=0.9, top_k=4, top_p=0.95)
    current, s = ids, state
    for k in range(6):
        logits, s = net.step(current, s)
        current = np.empty(3, np.int64)
        sample_rows(current, logits, 0.9, uniforms[k], 4, 0.95)
        np.testing.assert_array_equal(current, out[k])
        if k == 4:
            after_five = s
    for a, b in zip(end.arrays(), s.arrays()):
        np.testing.assert_array_equal(a, b)
    five, end_five = net.generate(ids, state, uniforms[:5], temperature=0.9, top_k=4, top_p=0.95)  # an odd count
    np.testing.assert_array_equal(five, out[:5])
    for a, b in zip(end_five.arrays(), after_five.arrays()):
        np.testing.assert_array_equal(a, b)
    for b in range(3):
        alone, _ = net.generate(ids[b:b + 1], state.rows([b]), uniforms[:, b:b + 1], 0.9, 4, 0.95)
        np.testing.assert_array_equal(alone[:, 0], out[:, b])
    greedy, _ = net.generate(ids, state, np.zeros((6, 3)), argmax=True)
    first, _ = net.step(ids, state)
    np.testing.assert_array_equal(greedy[0], first.argmax(axis=1))


@pytest.mark.parametrize("cell", CELLS)
def test_a_small_layers_stream_steps_on_one_thread_bitwise_as_on_all(rng, cell, monkeypatch):
    """One stream of a small layer is stepped on one thread (engine.SMALL_STEP, which
    conftest lifts for the other tests), a batch of many on all: a stream's characters,
    logits and state must not depend on which."""
    import conftest

    import charrnn.engine as engine

    if engine.threads() < 2:
        pytest.skip("one thread: nothing to compare it with")
    cfg, params, net = make_network(cell, rng, dtype=np.float32, hidden=NR)
    state = random_state(cfg, rng, 1, np.float32)
    ids, uniforms = rng.integers(0, V, 1), rng.random((7, 1))
    runs = []
    for small_step in (0, conftest.ENGINE_SMALL_STEP):
        monkeypatch.setattr(engine, "SMALL_STEP", small_step)
        runs.append((net._step_threads(1), net.generate(ids, state, uniforms, 0.9, 4, 0.95), net.step(ids, state)))
    (threads_all, (out_all, end_all), (logits_all, after_all)), (threads_one, (out, end), (logits, after)) = runs
    assert (threads_all, threads_one) == (engine.threads(), 1)
    np.testing.assert_array_equal(out, out_all)
    np.testing.assert_array_equal(logits, logits_all)
    for a, b in zip([*end.arrays(), *after.arrays()], [*end_all.arrays(), *after_all.arrays()]):
        np.testing.assert_array_equal(a, b)


def test_kernel_cache_folder_is_named_by_the_kernel_sources_and_the_isa_level():
    """Numba keys a cached function on its own file only; the folder name covers all
    kernel files, so changing a helper in one recompiles the kernels that inline it.
    It names the ISA level too, which shapes the tiles, and the bfloat16 unit, which
    decides the block product amx.py compiles, and covers the CPU features charrnn
    sets (isa._full_width)."""
    import hashlib
    from pathlib import Path

    import numba

    import charrnn.kernels as kernels

    digest = hashlib.sha256((kernels.ISA.cpu_features or "").encode())
    for path in sorted(Path(kernels.__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    unit = f"-{kernels.ISA.bf16}" if kernels.ISA.bf16 else ""
    assert Path(numba.config.CACHE_DIR).name == f"{digest.hexdigest()[:16]}-{kernels.ISA.level}{unit}"
