import math

import numpy as np
import pytest

from charrnn.kernels.optim import adam_update, sum_squares


def reference_adam(p, g, m, v, lr, b1, b2, eps, step, weight_decay=0.0):
    """torch.optim.Adam's update, written out; torch.optim.AdamW's with a weight decay."""
    p = p * (1 - lr * weight_decay)
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    denom = np.sqrt(v) / math.sqrt(1 - b2 ** step) + eps
    return p - lr / (1 - b1 ** step) * m / denom, m, v


@pytest.mark.parametrize("weight_decay", [0.0, 0.5])  # Adam's step; AdamW's
def test_adam_matches_reference_over_several_steps(rng, weight_decay):
    p = rng.standard_normal(20)
    m, v = np.zeros(20), np.zeros(20)
    rp, rm, rv = p.copy(), m.copy(), v.copy()
    for step in range(1, 6):
        g = rng.standard_normal(20)
        adam_update(p, g, m, v, 1e-2, 0.9, 0.999, 1e-8, weight_decay, step, 2)
        rp, rm, rv = reference_adam(rp, g, rm, rv, 1e-2, 0.9, 0.999, 1e-8, step, weight_decay)
    np.testing.assert_allclose(p, rp, rtol=1e-13)
    np.testing.assert_allclose(m, rm, rtol=1e-13)
    np.testing.assert_allclose(v, rv, rtol=1e-13)


def test_weight_decay_alone_shrinks_by_lr_times_decay(rng):
    p = rng.standard_normal(100).astype(np.float32)
    expected = p * np.float32(1 - 1e-2 * 0.5)
    zeros = np.zeros_like(p)
    adam_update(p, zeros, zeros.copy(), zeros.copy(), 1e-2, 0.9, 0.999, 1e-8, 0.5, 1, 2)
    np.testing.assert_array_equal(p, expected)


def test_adam_on_a_scaled_gradient_equals_adam_on_the_scaled_gradient(rng):
    p, g = rng.standard_normal(20), rng.standard_normal(20)
    m, v = rng.standard_normal(20), rng.random(20)
    a = [x.copy() for x in (p, m, v)]
    b = [x.copy() for x in (p, m, v)]
    adam_update(a[0], g, a[1], a[2], 1e-2, 0.9, 0.999, 1e-8, 0.0, 3, 2, 0.25)
    adam_update(b[0], g * 0.25, b[1], b[2], 1e-2, 0.9, 0.999, 1e-8, 0.0, 3, 2)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-13)


def test_sum_squares_squares_and_adds_in_float64(rng):
    x = (rng.standard_normal(1001) * 1e3).astype(np.float32)
    exact = float((x.astype(np.float64) ** 2).sum())
    for nthreads in (1, 2):
        assert sum_squares(x, nthreads) == pytest.approx(exact, rel=1e-13)  # float32 squares: about 1e-8


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_ema_update_is_the_moving_average_op_by_op_on_any_thread_count(rng, dtype):
    """avg = d * avg + (1 - d) * p with d and 1 - d in avg's precision, each operation
    rounded (nothing fused), bit for bit on 1 and 2 threads (1001 weights)."""
    from charrnn.kernels.optim import ema_update

    avg, p = rng.standard_normal(1001).astype(dtype), rng.standard_normal(1001).astype(dtype)
    expected = dtype(0.9) * avg + dtype(1.0 - 0.9) * p
    for nthreads in (1, 2):
        ours = avg.copy()
        ema_update(ours, p, 0.9, nthreads)
        np.testing.assert_array_equal(ours, expected)


@pytest.mark.parametrize("weight_decay", [0.0, 0.3])
def test_adam_in_float32_is_numpys_arithmetic_op_by_op_on_any_thread_count(rng, weight_decay):
    """Each element is rounded after every operation (no fused multiply-adds), the
    same in a vector or in the scalar rest of a thread's part, so 1 and 2 threads
    agree bit for bit with NumPy's float32 arithmetic in the same order (1001
    weights: parts that are no whole number of vectors)."""
    f32 = np.float32
    p, g, m = (rng.standard_normal(1001).astype(f32) for _ in range(3))
    v = rng.random(1001).astype(f32)
    lr, b1, b2, eps, step, scale = 1e-2, 0.9, 0.999, 1e-8, 3, 0.7
    gi = g * f32(scale)
    em = f32(b1) * m + (f32(1) - f32(b1)) * gi
    ev = f32(b2) * v + (f32(1) - f32(b2)) * gi * gi
    update = f32(lr / (1 - b1 ** step)) * em / (np.sqrt(ev) * f32(1 / math.sqrt(1 - b2 ** step)) + f32(eps))
    ep = p - update if weight_decay == 0 else p * f32(1 - lr * weight_decay) - update
    for nthreads in (1, 2):
        ours = [x.copy() for x in (p, m, v)]
        adam_update(ours[0], g, ours[1], ours[2], lr, b1, b2, eps, weight_decay, step, nthreads, scale)
        for x, y in zip(ours, (ep, em, ev)):
            np.testing.assert_array_equal(x, y)
